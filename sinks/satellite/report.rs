//! OTLP → LightStep `ReportRequest`: the inverse of the LightStep receiver's mapping
//! (receivers/lightstep/translate.rs), so that a report read back by that receiver gives the
//! spans that went in, up to what the Report protocol cannot carry (listed in README):
//! - resource attributes → reporter tags; `service.name` also as `lightstep.component_name`
//!   (unless present), which LightStep shows as the service;
//! - 128-bit trace ids → their low 64 bits, as LightStep tracers did; when the high half is not
//!   zero the full id goes in the tag [`FULL_TRACE_ID`] (the receiver restores it);
//! - parent → a `CHILD_OF` reference; links → `FOLLOWS_FROM` references (their attributes and
//!   trace state are not carried);
//! - kind → `span.kind`; status error → `error: true`, status ok → [`STATUS_CODE`] `OK`, the
//!   status message → [`STATUS_MESSAGE`] (the receiver restores both);
//! - attributes → tags (string, int, double, bool; arrays, maps and bytes as `json_value`);
//!   `guid:*` tags are attributes and pass as they are;
//! - events → logs (`event` = the name, then the attributes);
//! - times: start to the nanosecond (a `Timestamp`), duration in whole microseconds.
//!
//! The conversion works on the wire, OTLP protobuf bytes in, Report protobuf bytes out, without
//! decoding either into structs: strings and scalar values are copied as they are (they passed the
//! receivers' scan, [`tracepipe_pipeline::wire::scan_traces`]); only array, map and bytes values
//! are decoded, to write their JSON. Nested lengths are reserved from the input's size and the
//! body is moved when the guess was wrong (rare: a Report span is about as long as its OTLP span).
//! Fields may come in any order and repeat, as protobuf allows (the last scalar wins).

use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue};
use prost::Message;
use tracepipe_pipeline::wire::{each_len, Reader, WireError, I64, LEN, VARINT};

/// Tag holding the full 128-bit trace id (32 hex digits) when its high half is not zero.
pub const FULL_TRACE_ID: &str = "otel.trace_id";
/// Tag holding an `OK` status (LightStep has only `error`).
pub const STATUS_CODE: &str = "otel.status_code";
/// Tag holding the status message.
pub const STATUS_MESSAGE: &str = "otel.status_description";

fn u64_of(id: &[u8]) -> u64 {
    let n = id.len().min(8);
    let mut b = [0u8; 8];
    b[8 - n..].copy_from_slice(&id[id.len() - n..]);
    u64::from_be_bytes(b)
}

fn json_of(v: &AnyValue) -> serde_json::Value {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => serde_json::Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => serde_json::Value::from(*d),
        Some(any_value::Value::ArrayValue(a)) => serde_json::Value::Array(a.values.iter().map(json_of).collect()),
        Some(any_value::Value::KvlistValue(l)) => {
            serde_json::Value::Object(l.values.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(json_of).unwrap_or_default())).collect())
        }
        Some(any_value::Value::BytesValue(b)) => serde_json::Value::String(hex::encode(b)),
        // A string-table index (profiles only): no string to write.
        Some(any_value::Value::StringValueStrindex(i)) => serde_json::Value::from(*i),
        None => serde_json::Value::Null,
    }
}

fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// A protobuf writer: fields appended to one buffer, nested messages length-prefixed in place.
struct W {
    buf: Vec<u8>,
}

/// A nested message begun by [`W::begin`]: where its length goes and how many bytes it has.
struct Open {
    at: usize,
    reserved: usize,
}

impl W {
    #[inline(always)]
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }
    #[inline(always)]
    fn key(&mut self, field: u32, wire_type: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire_type));
    }
    /// A LEN field (string or bytes), written even when empty (oneof members are).
    #[inline(always)]
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, LEN);
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }
    /// A varint field, left out when zero (proto3).
    #[inline(always)]
    fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, VARINT);
            self.varint(v);
        }
    }
    #[inline(always)]
    fn fixed64(&mut self, field: u32, v: u64) {
        self.key(field, I64);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Starts a nested message in `field`, reserving a length prefix for about `hint` bytes.
    #[inline(always)]
    fn begin(&mut self, field: u32, hint: usize) -> Open {
        self.key(field, LEN);
        let reserved = varint_len(hint as u64);
        let at = self.buf.len();
        self.buf.resize(at + reserved, 0);
        Open { at, reserved }
    }
    /// Ends a nested message: writes its length, moving the body when the reserve was wrong.
    #[inline(always)]
    fn end(&mut self, o: Open) {
        let body = self.buf.len() - o.at - o.reserved;
        let need = varint_len(body as u64);
        if need != o.reserved {
            let len = self.buf.len();
            if need > o.reserved {
                self.buf.resize(len + need - o.reserved, 0);
                self.buf.copy_within(o.at + o.reserved..len, o.at + need);
            } else {
                self.buf.copy_within(o.at + o.reserved..len, o.at + need);
                self.buf.truncate(len - (o.reserved - need));
            }
        }
        let mut v = body as u64;
        for i in 0..need {
            self.buf[o.at + i] = if i + 1 < need { (v as u8) | 0x80 } else { v as u8 };
            v >>= 7;
        }
    }
    /// A `KeyValue` tag with a string value in `field`.
    fn str_tag(&mut self, field: u32, key: &[u8], value: &[u8]) {
        let o = self.begin(field, key.len() + value.len() + 4);
        self.bytes(1, key);
        self.bytes(2, value);
        self.end(o);
    }
}

/// The key and value (an encoded `AnyValue`) of an encoded OTLP `KeyValue`.
fn key_value(kv: &[u8]) -> Result<(&[u8], Option<&[u8]>), WireError> {
    let mut r = Reader::new(kv, 0);
    let (mut key, mut value): (&[u8], Option<&[u8]>) = (b"", None);
    while !r.done() {
        let (f, wt) = r.tag()?;
        match (f, wt) {
            (1, LEN) => key = r.len_delimited()?.0,
            (2, LEN) => value = Some(r.len_delimited()?.0),
            _ => r.skip(wt, "KeyValue", f)?,
        }
    }
    Ok((key, value))
}

/// The string of an encoded `AnyValue`, when a string is what it holds.
fn any_string(v: &[u8]) -> Result<Option<&[u8]>, WireError> {
    let mut r = Reader::new(v, 0);
    let mut found = None;
    while !r.done() {
        let (f, wt) = r.tag()?;
        match (f, wt) {
            (1, LEN) => found = Some(r.len_delimited()?.0),
            _ => {
                r.skip(wt, "AnyValue", f)?;
                found = None;
            }
        }
    }
    Ok(found)
}

/// One OTLP attribute (`KeyValue` bytes) as a LightStep `KeyValue` in `field`; returns its key.
fn tag<'a>(w: &mut W, field: u32, kv: &'a [u8]) -> Result<&'a [u8], WireError> {
    let (key, value) = key_value(kv)?;
    let o = w.begin(field, kv.len() + 2);
    w.bytes(1, key);
    // The oneof's last member wins, as when prost decodes it.
    enum V<'v> {
        None,
        Str(&'v [u8]),
        Bool(u64),
        Int(u64),
        Double(u64),
        Other,
    }
    let mut v = V::None;
    if let Some(value) = value {
        let mut r = Reader::new(value, 0);
        while !r.done() {
            let (f, wt) = r.tag()?;
            v = match (f, wt) {
                (1, LEN) => V::Str(r.len_delimited()?.0),
                (2, VARINT) => V::Bool(r.varint()?),
                (3, VARINT) => V::Int(r.varint()?),
                (4, I64) => V::Double(u64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"))),
                (5..=8, _) => {
                    r.skip(wt, "AnyValue", f)?;
                    V::Other
                }
                _ => {
                    r.skip(wt, "AnyValue", f)?;
                    continue;
                }
            };
        }
    }
    match v {
        V::None => w.bytes(2, b""),
        V::Str(s) => w.bytes(2, s),
        V::Int(i) => {
            w.key(3, VARINT);
            w.varint(i);
        }
        V::Double(d) => w.fixed64(4, d),
        V::Bool(b) => {
            w.key(5, VARINT);
            w.varint(u64::from(b != 0));
        }
        V::Other => {
            // Arrays, maps, bytes: their JSON text. Rare; decoded here only.
            let any = AnyValue::decode(value.unwrap_or_default()).map_err(|e| WireError::Undecodable("AnyValue", e.to_string()))?;
            w.bytes(6, json_of(&any).to_string().as_bytes());
        }
    }
    w.end(o);
    Ok(key)
}

fn timestamp(w: &mut W, field: u32, nanos: u64) {
    let o = w.begin(field, 12);
    w.uint(1, nanos / 1_000_000_000);
    w.uint(2, nanos % 1_000_000_000);
    w.end(o);
}

fn span_context(w: &mut W, field: u32, trace: u64, span: u64) {
    let o = w.begin(field, 22);
    w.uint(1, trace);
    w.uint(2, span);
    w.end(o);
}

/// Calls `f` with every attribute (an encoded `KeyValue`) of an encoded `ResourceSpans`'s resource.
fn each_resource_attribute<'a>(resource_spans: &'a [u8], mut f: impl FnMut(&'a [u8]) -> Result<(), WireError>) -> Result<(), WireError> {
    each_len(resource_spans, 1, "ResourceSpans", |res| each_len(res, 1, "Resource", &mut f))
}

/// The `service.name` of an encoded `ResourceSpans`, if it has a string one.
pub fn resource_service(resource_spans: &[u8]) -> Result<Option<&[u8]>, WireError> {
    let mut found = None;
    each_resource_attribute(resource_spans, |kv| {
        if found.is_none()
            && let (b"service.name", Some(v)) = key_value(kv)?
        {
            found = any_string(v)?;
        }
        Ok(())
    })?;
    Ok(found)
}

/// The `service.name` of the first resource of an encoded `TracesData`.
pub fn first_service(traces: &[u8]) -> Result<Option<&[u8]>, WireError> {
    let mut r = Reader::new(traces, 0);
    while !r.done() {
        let (f, wt) = r.tag()?;
        if (f, wt) == (1, LEN) {
            return resource_service(r.len_delimited()?.0);
        }
        r.skip(wt, "TracesData", f)?;
    }
    Ok(None)
}

/// One report per resource of an encoded `TracesData` (= `ExportTraceServiceRequest`),
/// authenticated with `token`; `reporter_id` names this sink (LightStep tracers use a random id
/// per process). Appended to `out`.
pub fn reports(traces: &[u8], token: &str, reporter_id: u64, out: &mut Vec<Bytes>) -> Result<(), WireError> {
    each_len(traces, 1, "TracesData", |rs| {
        out.push(report(rs, token, reporter_id)?.into());
        Ok(())
    })
}

/// The report for one encoded `ResourceSpans`.
pub fn report(resource_spans: &[u8], token: &str, reporter_id: u64) -> Result<Vec<u8>, WireError> {
    let mut w = W { buf: Vec::with_capacity(resource_spans.len() + resource_spans.len() / 8 + 64) };
    // The reporter: id, the resource's attributes, the service as LightStep's component name.
    let rep = w.begin(1, 256);
    w.uint(1, reporter_id);
    let (mut service, mut has_component) = (None, false);
    each_resource_attribute(resource_spans, |kv| {
        match tag(&mut w, 4, kv)? {
            b"service.name" if service.is_none() => service = key_value(kv)?.1.map(any_string).transpose()?.flatten(),
            b"lightstep.component_name" => has_component = true,
            _ => {}
        }
        Ok(())
    })?;
    if let Some(s) = service
        && !has_component
    {
        w.str_tag(4, b"lightstep.component_name", s);
    }
    w.end(rep);
    let auth = w.begin(2, token.len() + 2);
    if !token.is_empty() {
        w.bytes(1, token.as_bytes());
    }
    w.end(auth);
    each_len(resource_spans, 2, "ResourceSpans", |scope| each_len(scope, 2, "ScopeSpans", |s| span(&mut w, s)))?;
    Ok(w.buf)
}

/// The scalar fields of an encoded OTLP span (first pass).
#[derive(Default)]
struct Facts<'a> {
    trace: &'a [u8],
    span: &'a [u8],
    parent: &'a [u8],
    name: &'a [u8],
    kind: u64,
    start: u64,
    end: u64,
    status_code: u64,
    status_message: &'a [u8],
}

fn facts(s: &[u8]) -> Result<Facts<'_>, WireError> {
    let mut f = Facts::default();
    let mut r = Reader::new(s, 0);
    while !r.done() {
        let (field, wt) = r.tag()?;
        match (field, wt) {
            (1, LEN) => f.trace = r.len_delimited()?.0,
            (2, LEN) => f.span = r.len_delimited()?.0,
            (4, LEN) => f.parent = r.len_delimited()?.0,
            (5, LEN) => f.name = r.len_delimited()?.0,
            (6, VARINT) => f.kind = r.varint()?,
            (7, I64) => f.start = u64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes")),
            (8, I64) => f.end = u64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes")),
            (15, LEN) => {
                // A repeated message field merges: later fields win, one by one.
                let mut st = Reader::new(r.len_delimited()?.0, 0);
                while !st.done() {
                    let (sf, swt) = st.tag()?;
                    match (sf, swt) {
                        (2, LEN) => f.status_message = st.len_delimited()?.0,
                        (3, VARINT) => f.status_code = st.varint()?,
                        _ => st.skip(swt, "Status", sf)?,
                    }
                }
            }
            _ => r.skip(wt, "Span", field)?,
        }
    }
    Ok(f)
}

/// One encoded OTLP span as a report's span (field 3).
fn span(w: &mut W, s: &[u8]) -> Result<(), WireError> {
    let f = facts(s)?;
    let trace = u64_of(f.trace);
    let o = w.begin(3, s.len() + s.len() / 8 + 16);
    span_context(w, 1, trace, u64_of(f.span));
    if !f.name.is_empty() {
        w.bytes(2, f.name);
    }
    if !f.parent.is_empty() {
        // CHILD_OF is 0: the relationship field is left out.
        let rf = w.begin(3, 24);
        span_context(w, 2, trace, u64_of(f.parent));
        w.end(rf);
    }
    each_len(s, 13, "Span", |link| {
        let mut lr = Reader::new(link, 0);
        let (mut lt, mut ls): (&[u8], &[u8]) = (b"", b"");
        while !lr.done() {
            let (lf, lwt) = lr.tag()?;
            match (lf, lwt) {
                (1, LEN) => lt = lr.len_delimited()?.0,
                (2, LEN) => ls = lr.len_delimited()?.0,
                _ => lr.skip(lwt, "Link", lf)?,
            }
        }
        let rf = w.begin(3, 26);
        w.uint(1, 1); // FOLLOWS_FROM
        span_context(w, 2, u64_of(lt), u64_of(ls));
        w.end(rf);
        Ok(())
    })?;
    timestamp(w, 4, f.start);
    w.uint(5, f.end.saturating_sub(f.start) / 1000);
    // Tags: the attributes, then what the span's own fields become.
    each_len(s, 9, "Span", |kv| tag(w, 6, kv).map(|_| ()))?;
    if f.trace.len() == 16 && f.trace[..8].iter().any(|b| *b != 0) {
        let mut hex = [0u8; 32];
        hex::encode_to_slice(f.trace, &mut hex).expect("32 hex digits for 16 bytes");
        w.str_tag(6, FULL_TRACE_ID.as_bytes(), &hex);
    }
    let kind: &[u8] = match f.kind {
        1 => b"internal",
        2 => b"server",
        3 => b"client",
        4 => b"producer",
        5 => b"consumer",
        _ => b"",
    };
    if !kind.is_empty() {
        w.str_tag(6, b"span.kind", kind);
    }
    match f.status_code {
        2 => {
            let o = w.begin(6, 10);
            w.bytes(1, b"error");
            w.key(5, VARINT);
            w.varint(1);
            w.end(o);
        }
        1 => w.str_tag(6, STATUS_CODE.as_bytes(), b"OK"),
        _ => {}
    }
    if !f.status_message.is_empty() {
        w.str_tag(6, STATUS_MESSAGE.as_bytes(), f.status_message);
    }
    // Logs: one per event, `event` = its name first, then its attributes.
    each_len(s, 11, "Span", |e| {
        let (mut time, mut name): (u64, &[u8]) = (0, b"");
        let mut er = Reader::new(e, 0);
        while !er.done() {
            let (ef, ewt) = er.tag()?;
            match (ef, ewt) {
                (1, I64) => time = u64::from_le_bytes(er.take(8)?.try_into().expect("8 bytes")),
                (2, LEN) => name = er.len_delimited()?.0,
                _ => er.skip(ewt, "Event", ef)?,
            }
        }
        let lo = w.begin(7, e.len() + 24);
        timestamp(w, 1, time);
        w.str_tag(2, b"event", name);
        each_len(e, 3, "Event", |kv| tag(w, 2, kv).map(|_| ()))?;
        w.end(lo);
        Ok(())
    })?;
    w.end(o);
    Ok(())
}
