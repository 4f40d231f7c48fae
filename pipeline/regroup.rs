//! Regrouping still-encoded spans by trace id, without decoding them: each span's bytes are
//! copied as they are, inside copies of its own `ResourceSpans` and `ScopeSpans` envelopes (every
//! field but the span list, byte for byte). What a Kafka sink keying records by trace id needs,
//! at the cost of a scan and a copy instead of a decode and an encode.
//!
//! The input must be `TracesData` buffers that passed [`crate::wire::scan_traces`]; anything
//! else is refused with a [`WireError`], never a panic.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::wire::{Reader, WireError, LEN};

/// One span's place: which envelope it sits in, and its bytes.
#[derive(Clone, Copy)]
struct Entry<'a> {
    resource: usize,
    scope: usize,
    span: &'a [u8],
}

/// A `ResourceSpans` or `ScopeSpans` without its list: the other fields, as received (or, for
/// one whose attributes were cut to bound the copies, re-encoded).
struct Envelope<'a> {
    fields: Vec<Cow<'a, [u8]>>,
    len: usize,
}

impl<'a> Envelope<'a> {
    fn push(&mut self, raw: &'a [u8]) {
        self.len += raw.len();
        self.fields.push(Cow::Borrowed(raw));
    }

    /// Cuts the attributes of the message in field 1 (the `Resource` or `InstrumentationScope`)
    /// so the envelope takes about `room` bytes; the cut is added to its dropped count. Returns
    /// how many attributes were cut.
    fn cut(&mut self, room: u64, resource: bool) -> Result<u32, WireError> {
        use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
        use opentelemetry_proto::tonic::resource::v1::Resource;
        use prost::Message;
        let Some(i) = self.fields.iter().position(|f| f.first() == Some(&0x0a)) else { return Ok(0) };
        let others = (self.len - self.fields[i].len()) as u64;
        let mut room = room.saturating_sub(others + MAX_FIELD_HEAD as u64);
        let (_, payload) = {
            let mut r = Reader::new(&self.fields[i], 0);
            r.tag()?;
            ((), r.len_delimited()?.0)
        };
        let bad = |e: prost::DecodeError| WireError::Undecodable(if resource { "Resource" } else { "InstrumentationScope" }, e.to_string());
        let (bytes, cut) = if resource {
            let mut m = Resource::decode(payload).map_err(bad)?;
            let (kept, cut) = crate::archive::budget::cut_attributes(&m.attributes, &mut room, Some("service.name"));
            m.attributes = kept;
            m.dropped_attributes_count = m.dropped_attributes_count.saturating_add(cut);
            (m.encode_to_vec(), cut)
        } else {
            let mut m = InstrumentationScope::decode(payload).map_err(bad)?;
            let (kept, cut) = crate::archive::budget::cut_attributes(&m.attributes, &mut room, None);
            m.attributes = kept;
            m.dropped_attributes_count = m.dropped_attributes_count.saturating_add(cut);
            (m.encode_to_vec(), cut)
        };
        if cut == 0 {
            return Ok(0);
        }
        let mut field = Vec::with_capacity(bytes.len() + MAX_FIELD_HEAD);
        put_field(&mut field, 0x0a, bytes.len());
        field.extend_from_slice(&bytes);
        self.len = self.len - self.fields[i].len() + field.len();
        self.fields[i] = Cow::Owned(field);
        Ok(cut)
    }
}

/// The spans of one trace, ready to encode.
pub struct TraceGroup<'a> {
    /// The trace id as received (16 bytes when valid).
    pub trace_id: &'a [u8],
    entries: Vec<Entry<'a>>,
}

impl TraceGroup<'_> {
    /// Number of spans.
    pub fn spans(&self) -> usize {
        self.entries.len()
    }

    /// Each span's encoding, in order.
    pub fn span_bytes(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.entries.iter().map(|e| e.span)
    }
}

/// Spans of some `TracesData` buffers grouped by trace id, in order of each trace's first span.
pub struct Regrouped<'a> {
    resources: Vec<Envelope<'a>>,
    scopes: Vec<Envelope<'a>>,
    /// The groups.
    pub groups: Vec<TraceGroup<'a>>,
}

fn varint_len(v: usize) -> usize {
    prost::encoding::encoded_len_varint(v as u64)
}

/// Bytes of a LEN field with a one-byte tag holding `n` payload bytes.
pub fn field_len(n: usize) -> usize {
    1 + varint_len(n) + n
}

/// Appends a LEN field's one-byte tag and its length.
pub fn put_field(out: &mut Vec<u8>, tag: u8, n: usize) {
    out.push(tag);
    prost::encoding::encode_varint(n as u64, out);
}

/// Splits a reader's next field off as its raw bytes (tag included).
fn raw_field<'a>(buf: &'a [u8], r: &mut Reader<'a>, start: usize, wire_type: u8, message: &'static str, field: u64) -> Result<&'a [u8], WireError> {
    r.skip(wire_type, message, field)?;
    Ok(&buf[start..r.position()])
}

/// Walks one `ResourceSpans` or `ScopeSpans` message: every field but the list (field 2) is kept
/// raw in `envelope`; each list entry (a `ScopeSpans` or a `Span`) goes to `entry`, in order.
fn walk_envelope<'a>(
    buf: &'a [u8],
    message: &'static str,
    envelope: &mut Envelope<'a>,
    mut entry: impl FnMut(&'a [u8]) -> Result<(), WireError>,
) -> Result<(), WireError> {
    let mut r = Reader::new(buf, 0);
    while !r.done() {
        let start = r.position();
        let (field, wt) = r.tag()?;
        if field == 2 && wt == LEN {
            entry(r.len_delimited()?.0)?;
        } else {
            envelope.push(raw_field(buf, &mut r, start, wt, message, field)?);
        }
    }
    Ok(())
}

/// Groups the spans of scanned `TracesData` buffers by trace id.
pub fn by_trace<'a>(buffers: &[&'a [u8]]) -> Result<Regrouped<'a>, WireError> {
    collect(buffers, trace_id_of)
}

/// Every span of scanned `TracesData` buffers in one group, in received order (trace id empty):
/// for cutting a request into smaller ones by bytes ([`Regrouped::pack`]) without decoding.
pub fn in_order<'a>(buffers: &[&'a [u8]]) -> Result<Regrouped<'a>, WireError> {
    collect(buffers, |_| Ok(&[]))
}

/// Walks the buffers once, putting each span in the group of `key(span)`.
fn collect<'a>(buffers: &[&'a [u8]], key: impl Fn(&'a [u8]) -> Result<&'a [u8], WireError>) -> Result<Regrouped<'a>, WireError> {
    let mut out = Regrouped { resources: Vec::new(), scopes: Vec::new(), groups: Vec::new() };
    let mut index: HashMap<&'a [u8], usize> = HashMap::new();
    for buf in buffers {
        let mut top = Reader::new(buf, 0);
        while !top.done() {
            let (field, wt) = top.tag()?;
            if field != 1 || wt != LEN {
                top.skip(wt, "TracesData", field)?;
                continue;
            }
            let (rs, _) = top.len_delimited()?;
            let resource = out.resources.len();
            let mut resource_env = Envelope { fields: Vec::new(), len: 0 };
            walk_envelope(rs, "ResourceSpans", &mut resource_env, |ss| {
                let scope = out.scopes.len();
                let mut scope_env = Envelope { fields: Vec::new(), len: 0 };
                walk_envelope(ss, "ScopeSpans", &mut scope_env, |span| {
                    let trace_id = key(span)?;
                    let g = *index.entry(trace_id).or_insert_with(|| {
                        out.groups.push(TraceGroup { trace_id, entries: Vec::new() });
                        out.groups.len() - 1
                    });
                    out.groups[g].entries.push(Entry { resource, scope, span });
                    Ok(())
                })?;
                out.scopes.push(scope_env);
                Ok(())
            })?;
            out.resources.push(resource_env);
        }
    }
    Ok(out)
}

/// A scanned `TracesData` buffer without the spans at the ascending, message-order indices
/// `skip` yields, streamed: each `ResourceSpans` is walked twice (sizes, then bytes), so memory is the
/// output plus one length per `ScopeSpans` of the resource being copied; no per-span state.
/// `ScopeSpans` and `ResourceSpans` left without spans are dropped; other fields are copied as
/// received.
pub fn without_spans(buf: &[u8], skip: impl Iterator<Item = usize> + Clone) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(buf.len());
    let mut index = 0usize; // message-order index of the next span
    let mut skip = skip.peekable();
    let mut scope_lens: Vec<Option<usize>> = Vec::new();
    let mut top = Reader::new(buf, 0);
    while !top.done() {
        let (field, wt) = top.tag()?;
        if field != 1 || wt != LEN {
            top.skip(wt, "TracesData", field)?;
            continue;
        }
        let (rs, _) = top.len_delimited()?;
        // Pass 1: the kept length of each ScopeSpans (None: nothing kept) and of the resource.
        scope_lens.clear();
        let (first_index, mut pending_skip) = (index, skip.clone());
        let mut resource_len = 0usize;
        let mut r = Reader::new(rs, 0);
        while !r.done() {
            let start = r.position();
            let (f, w) = r.tag()?;
            if f == 2 && w == LEN {
                let (ss, _) = r.len_delimited()?;
                let len = kept_scope(ss, &mut index, &mut pending_skip, None)?;
                scope_lens.push(len);
                if let Some(len) = len {
                    resource_len += field_len(len);
                }
            } else {
                r.skip(w, "ResourceSpans", f)?;
                resource_len += r.position() - start;
            }
        }
        if scope_lens.iter().all(Option::is_none) {
            skip = pending_skip;
            continue;
        }
        // Pass 2: write what was measured.
        index = first_index;
        put_field(&mut out, 0x0a, resource_len);
        let mut r = Reader::new(rs, 0);
        let mut scopes = scope_lens.iter();
        while !r.done() {
            let start = r.position();
            let (f, w) = r.tag()?;
            if f == 2 && w == LEN {
                let (ss, _) = r.len_delimited()?;
                match scopes.next().copied().flatten() {
                    Some(len) => {
                        put_field(&mut out, 0x12, len);
                        kept_scope(ss, &mut index, &mut skip, Some(&mut out))?;
                    }
                    None => {
                        kept_scope(ss, &mut index, &mut skip, None)?;
                    }
                }
            } else {
                r.skip(w, "ResourceSpans", f)?;
                out.extend_from_slice(&rs[start..r.position()]);
            }
        }
    }
    Ok(out)
}

/// Walks a `ScopeSpans` keeping all but the skipped spans: returns its length with only the kept
/// spans (`None` when it keeps none), and with `out` also writes those fields there. One walker
/// for both passes of [`without_spans`], so the measured length is what is written.
fn kept_scope(ss: &[u8], index: &mut usize, skip: &mut std::iter::Peekable<impl Iterator<Item = usize>>, mut out: Option<&mut Vec<u8>>) -> Result<Option<usize>, WireError> {
    let mut len = 0usize;
    let mut kept = 0usize;
    let mut r = Reader::new(ss, 0);
    while !r.done() {
        let start = r.position();
        let (f, w) = r.tag()?;
        if f == 2 && w == LEN {
            let (span, _) = r.len_delimited()?;
            if skip.peek() == Some(index) {
                skip.next();
            } else {
                len += field_len(span.len());
                kept += 1;
                if let Some(out) = out.as_deref_mut() {
                    put_field(out, 0x12, span.len());
                    out.extend_from_slice(span);
                }
            }
            *index += 1;
        } else {
            r.skip(w, "ScopeSpans", f)?;
            len += r.position() - start;
            if let Some(out) = out.as_deref_mut() {
                out.extend_from_slice(&ss[start..r.position()]);
            }
        }
    }
    Ok((kept > 0).then_some(len))
}

/// A span's `trace_id` (field 1; the last one wins, as in protobuf), empty when absent.
fn trace_id_of(span: &[u8]) -> Result<&[u8], WireError> {
    let mut r = Reader::new(span, 0);
    let mut id: &[u8] = &[];
    while !r.done() {
        let (field, wt) = r.tag()?;
        if field == 1 && wt == LEN {
            id = r.len_delimited()?.0;
        } else {
            r.skip(wt, "Span", field)?;
        }
    }
    Ok(id)
}

/// Most bytes a LEN field's tag and length prefix take for a message under 32 GiB.
const MAX_FIELD_HEAD: usize = 1 + 5;

/// Cuts of one group into consecutive span ranges that each encode to at most a byte limit.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Packed {
    /// Ranges of the group's spans, in order, each encoding (with [`Regrouped::encode`]) to at
    /// most the limit.
    pub fits: Vec<std::ops::Range<usize>>,
    /// Spans (indices into the group) that encode to more than the limit alone, with their
    /// envelopes; not in any range.
    pub alone_too_large: Vec<usize>,
}

impl Regrouped<'_> {
    /// Bounds what encoding every group whole copies: each group (record) carries a copy of the
    /// envelopes of its spans, so one huge resource shared by very many traces would be copied
    /// into every trace's record (K × N). When those copies would exceed `budget` bytes, every
    /// envelope larger than an even share of the budget per copy has its attributes cut
    /// (`service.name` kept; the cut added to its dropped count). Returns the attributes cut.
    pub fn bound_copies(&mut self, budget: u64) -> Result<u64, WireError> {
        // Distinct groups per envelope: linear in the entries.
        let mut res_copies = vec![0u64; self.resources.len()];
        let mut scope_copies = vec![0u64; self.scopes.len()];
        let mut res_last = vec![usize::MAX; self.resources.len()];
        let mut scope_last = vec![usize::MAX; self.scopes.len()];
        for (g, group) in self.groups.iter().enumerate() {
            for e in &group.entries {
                if res_last[e.resource] != g {
                    res_last[e.resource] = g;
                    res_copies[e.resource] += 1;
                }
                if scope_last[e.scope] != g {
                    scope_last[e.scope] = g;
                    scope_copies[e.scope] += 1;
                }
            }
        }
        let total: u64 = self.resources.iter().zip(&res_copies).map(|(r, c)| r.len as u64 * c).sum::<u64>()
            + self.scopes.iter().zip(&scope_copies).map(|(s, c)| s.len as u64 * c).sum::<u64>();
        if total <= budget {
            return Ok(0);
        }
        let copies: u64 = res_copies.iter().sum::<u64>() + scope_copies.iter().sum::<u64>();
        let share = budget / copies.max(1);
        let mut cut = 0u64;
        for (r, c) in self.resources.iter_mut().zip(&res_copies) {
            if *c > 0 && r.len as u64 > share {
                cut += r.cut(share, true)? as u64;
            }
        }
        for (s, c) in self.scopes.iter_mut().zip(&scope_copies) {
            if *c > 0 && s.len as u64 > share {
                cut += s.cut(share, false)? as u64;
            }
        }
        Ok(cut)
    }

    /// Packs `group`'s spans, in order, into as few consecutive ranges as one greedy pass gives,
    /// each encoding to at most `max_bytes`. The pass charges each span its field and each change
    /// of resource or scope that envelope with the longest possible length prefix, so a range's
    /// charge is an upper bound of its encoding (exact up to a few bytes per envelope). Linear in
    /// the spans.
    pub fn pack(&self, group: &TraceGroup<'_>, max_bytes: usize) -> Packed {
        let mut out = Packed::default();
        let entries = &group.entries;
        // The exact encoding of one span with its envelopes.
        let alone = |e: &Entry<'_>| {
            let scope = field_len(e.span.len()) + self.scopes[e.scope].len;
            let resource = field_len(scope) + self.resources[e.resource].len;
            field_len(resource)
        };
        let mut start = 0;
        let mut charged = 0;
        for (i, e) in entries.iter().enumerate() {
            let new_resource = i == start || entries[i - 1].resource != e.resource;
            let new_scope = new_resource || entries[i - 1].scope != e.scope;
            let mut cost = field_len(e.span.len());
            if new_scope {
                cost += MAX_FIELD_HEAD + self.scopes[e.scope].len;
            }
            if new_resource {
                cost += MAX_FIELD_HEAD + self.resources[e.resource].len;
            }
            if i > start && charged + cost > max_bytes {
                out.fits.push(start..i);
                start = i;
                // The span opens a new range: both its envelopes are charged again.
                cost = field_len(e.span.len()) + 2 * MAX_FIELD_HEAD + self.scopes[e.scope].len + self.resources[e.resource].len;
                charged = 0;
            }
            if i == start && cost > max_bytes {
                // The bound is over; the exact size decides whether the span fits on its own.
                if alone(e) > max_bytes {
                    out.alone_too_large.push(i);
                } else {
                    out.fits.push(i..i + 1);
                }
                start = i + 1;
                charged = 0;
                continue;
            }
            charged += cost;
        }
        if start < entries.len() {
            out.fits.push(start..entries.len());
        }
        out
    }

    /// Encodes `group`'s spans `range` as one `TracesData`: consecutive spans that shared a
    /// `ResourceSpans` / `ScopeSpans` share one again.
    pub fn encode(&self, group: &TraceGroup<'_>, range: std::ops::Range<usize>) -> Vec<u8> {
        self.encode_entries(&group.entries[range])
    }

    fn encode_entries(&self, entries: &[Entry<'_>]) -> Vec<u8> {
        // Runs of one resource, and inside them runs of one scope.
        let mut resource_runs: Vec<(usize, Vec<(usize, &[Entry<'_>])>)> = Vec::new();
        let mut i = 0;
        while i < entries.len() {
            let res = entries[i].resource;
            let mut scopes: Vec<(usize, &[Entry<'_>])> = Vec::new();
            while i < entries.len() && entries[i].resource == res {
                let sc = entries[i].scope;
                let start = i;
                while i < entries.len() && entries[i].resource == res && entries[i].scope == sc {
                    i += 1;
                }
                scopes.push((sc, &entries[start..i]));
            }
            resource_runs.push((res, scopes));
        }
        let scope_len = |sc: usize, spans: &[Entry<'_>]| self.scopes[sc].len + spans.iter().map(|e| field_len(e.span.len())).sum::<usize>();
        let resource_len =
            |res: usize, scopes: &[(usize, &[Entry<'_>])]| self.resources[res].len + scopes.iter().map(|(sc, sp)| field_len(scope_len(*sc, sp))).sum::<usize>();
        let total: usize = resource_runs.iter().map(|(res, sc)| field_len(resource_len(*res, sc))).sum();
        let mut out = Vec::with_capacity(total);
        for (res, scopes) in &resource_runs {
            put_field(&mut out, 0x0a, resource_len(*res, scopes)); // TracesData.resource_spans = 1
            self.resources[*res].fields.iter().for_each(|f| out.extend_from_slice(f));
            for (sc, spans) in scopes {
                put_field(&mut out, 0x12, scope_len(*sc, spans)); // ResourceSpans.scope_spans = 2
                self.scopes[*sc].fields.iter().for_each(|f| out.extend_from_slice(f));
                for e in *spans {
                    put_field(&mut out, 0x12, e.span.len()); // ScopeSpans.spans = 2
                    out.extend_from_slice(e.span);
                }
            }
        }
        debug_assert_eq!(out.len(), total);
        out
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, InstrumentationScope, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, TracesData};
    use prost::Message;

    use super::by_trace;
    use crate::batch::push_span;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue { key: k.into(), value: Some(AnyValue { value: Some(Value::StringValue(v.into())) }), key_strindex: 0 }
    }

    /// Two resources, two scopes in the first, spans of three traces interleaved across them.
    fn sample() -> Vec<ResourceSpans> {
        let span = |t: u8, i: u8| Span { trace_id: vec![t; 16], span_id: vec![i; 8], name: format!("s{t}-{i}"), attributes: vec![kv("k", "v")], ..Default::default() };
        let scope = |n: &str| Some(InstrumentationScope { name: n.into(), version: "1".into(), ..Default::default() });
        vec![
            ResourceSpans {
                resource: Some(Resource { attributes: vec![kv("service.name", "a")], ..Default::default() }),
                scope_spans: vec![
                    ScopeSpans { scope: scope("x"), spans: vec![span(1, 1), span(2, 2), span(1, 3)], schema_url: "https://s/1".into() },
                    ScopeSpans { scope: scope("y"), spans: vec![span(3, 4), span(1, 5)], ..Default::default() },
                ],
                schema_url: "https://r/1".into(),
            },
            ResourceSpans {
                resource: Some(Resource { attributes: vec![kv("service.name", "b")], ..Default::default() }),
                scope_spans: vec![ScopeSpans { scope: scope("x"), spans: vec![span(2, 6), span(1, 7)], ..Default::default() }],
                ..Default::default()
            },
        ]
    }

    /// What grouping the decoded structs gives (the reference).
    fn reference(rs: Vec<ResourceSpans>) -> Vec<(Vec<u8>, Vec<ResourceSpans>)> {
        let mut groups: Vec<(Vec<u8>, Vec<ResourceSpans>)> = Vec::new();
        for r in rs {
            for ss in r.scope_spans {
                for sp in ss.spans {
                    let i = match groups.iter().position(|(t, _)| *t == sp.trace_id) {
                        Some(i) => i,
                        None => {
                            groups.push((sp.trace_id.clone(), Vec::new()));
                            groups.len() - 1
                        }
                    };
                    push_span(&mut groups[i].1, &r.resource, &r.schema_url, &ss.scope, &ss.schema_url, sp);
                }
            }
        }
        groups
    }

    #[test]
    fn regrouped_bytes_decode_to_the_struct_grouping() {
        let rs = sample();
        // Two buffers, as a batch of two received requests.
        let a = TracesData { resource_spans: rs[..1].to_vec() }.encode_to_vec();
        let b = TracesData { resource_spans: rs[1..].to_vec() }.encode_to_vec();
        let got = by_trace(&[&a, &b]).unwrap();
        let want = reference(rs);
        assert_eq!(got.groups.len(), 3);
        for (g, (tid, rs)) in got.groups.iter().zip(want) {
            assert_eq!(g.trace_id, &tid[..]);
            let bytes = got.encode(g, 0..g.spans());
            assert_eq!(TracesData::decode(&bytes[..]).unwrap().resource_spans, rs);
        }
        // A sub-range of a group: its first two spans only.
        let g = &got.groups[0];
        let part = TracesData::decode(&got.encode(g, 0..2)[..]).unwrap();
        let names: Vec<String> = part.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans).map(|s| s.name.clone()).collect();
        assert_eq!(names, ["s1-1", "s1-3"]);
    }

    /// `without_spans` drops exactly the spans at the given indices, and the scopes and
    /// resources left empty; it agrees with removing them from the decoded structs.
    #[test]
    fn without_spans_agrees_with_the_structs() {
        let rs = sample(); // 7 spans: resource a (scope x: 3, scope y: 2), resource b (scope x: 2)
        let buf = TracesData { resource_spans: rs.clone() }.encode_to_vec();
        let all: Vec<usize> = (0..7).collect();
        for mask in 0u32..(1 << 7) {
            let skip: Vec<usize> = all.iter().copied().filter(|i| mask & (1 << i) != 0).collect();
            let got = TracesData::decode(&super::without_spans(&buf, skip.iter().copied()).unwrap()[..]).unwrap().resource_spans;
            let mut want = rs.clone();
            let mut k = 0;
            for r in &mut want {
                for ss in &mut r.scope_spans {
                    ss.spans.retain(|_| {
                        let keep = mask & (1 << k) == 0;
                        k += 1;
                        keep
                    });
                }
                r.scope_spans.retain(|ss| !ss.spans.is_empty());
            }
            want.retain(|r| !r.scope_spans.is_empty());
            assert_eq!(got, want, "skip {skip:?}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [&b"\x0a\x05\x12\x03\x12\x09"[..], b"\x0a\xff\xff\xff\xff\x0f", b"\x00"] {
            assert!(by_trace(&[bad]).is_err(), "{bad:?}");
            assert!(super::without_spans(bad, [0].into_iter()).is_err(), "{bad:?}");
        }
    }
}
