//! OTLP protobuf straight to archive rows, without decoding into the OTLP structs first.
//!
//! Batches usually reach the Parquet sink still encoded (see [`crate::batch`]). Decoding them
//! into `Vec<ResourceSpans>` allocates every string and attribute separately, and reading those
//! allocations back scattered over the heap cost more than the Parquet encoding itself (the
//! archive benchmark measured the struct path at ~3 µs per span, mostly cache misses on
//! attribute keys and values). Here the protobuf buffer is walked once, in order, and every
//! string goes from the buffer into the Arrow builders.
//!
//! The common shapes take the fast path; anything unusual — a singular field sent twice (which
//! protobuf merges), array or map attribute values, events, links — is decoded with prost for
//! just that span, event, link or attribute and added through the same builders, so both paths
//! give identical rows (tested on every OTLP field).

use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use super::budget::{attr_bytes, ContextBudget};
use super::schema::{Capacity, Columns, Scalar, SpanFields};
use crate::wire::{str_of, Reader, I32, I64, LEN, VARINT};

fn bad(e: impl std::fmt::Display) -> ArrowError {
    ArrowError::ParseError(format!("OTLP protobuf: {e}"))
}

fn text(b: &[u8]) -> Result<&str, ArrowError> {
    str_of(b).ok_or_else(|| bad("invalid UTF-8"))
}

/// Converts `TracesData` buffers (as received, concatenated or not) holding about `spans` spans
/// into one archive record batch; equal to [`super::schema::to_record_batch`] of their decoding.
pub fn encoded_to_record_batch<'a>(bufs: impl IntoIterator<Item = &'a [u8]>, spans: usize) -> Result<RecordBatch, ArrowError> {
    encoded_to_record_batch_counted(bufs, spans).map(|(b, _)| b)
}

/// [`encoded_to_record_batch`], and how many resource and scope attributes the context budget
/// cut ([`super::budget`]).
pub fn encoded_to_record_batch_counted<'a>(bufs: impl IntoIterator<Item = &'a [u8]>, spans: usize) -> Result<(RecordBatch, u64), ArrowError> {
    let bufs: Vec<&[u8]> = bufs.into_iter().collect();
    let bytes: usize = bufs.iter().map(|b| b.len()).sum();
    // Capacities only; a span takes at least a few bytes, so a wrong count cannot over-allocate.
    let spans = spans.min(bytes / 4);
    let mut cap = Capacity { spans, names: spans * 32, contexts: 8, ..Default::default() };
    cap.attrs.strings = spans * 12;
    cap.attrs.ints = spans * 2;
    cap.attrs.key_bytes = bytes / 4;
    cap.attrs.str_bytes = bytes / 3;
    let mut cols = Columns::new(&cap);
    let truncated = walk(bufs, &mut cols)?;
    Ok((cols.finish()?, truncated))
}

/// Where the walk puts what it reads: Arrow builders ([`Columns`]) or Parquet pages
/// ([`super::pages::RowGroupEncoder`]). A span comes as its attributes (`attr`/`attr_entry`,
/// then `end_attrs`) followed by `span_fields`, or whole (`span`, the slow path).
pub(crate) trait Rows {
    /// The number the next [`Rows::context`] will return: the walk gives it to a `ScopeSpans`'
    /// spans as it meets them, and adds the context after them (its schema URL, field 3, comes
    /// after the spans), so the spans are read in one pass over the buffer.
    fn next_context(&self) -> u32;
    /// Adds the resource and scope of one `ScopeSpans`; returns its number for the spans.
    fn context(&mut self, res: &Resource, res_schema_url: &str, scope: &InstrumentationScope, scope_schema_url: &str) -> u32;
    fn attr(&mut self, key: &str, v: Scalar<'_>);
    fn attr_entry(&mut self, kv: &KeyValue);
    fn end_attrs(&mut self);
    fn span_fields(&mut self, f: &SpanFields<'_>, ctx: u32) -> Result<(), ArrowError>;
    fn span(&mut self, s: &Span, ctx: u32) -> Result<(), ArrowError>;
}

impl Rows for Columns {
    fn next_context(&self) -> u32 {
        self.contexts()
    }
    fn context(&mut self, res: &Resource, res_schema_url: &str, scope: &InstrumentationScope, scope_schema_url: &str) -> u32 {
        self.push_context(res, res_schema_url, scope, scope_schema_url)
    }
    #[inline]
    fn attr(&mut self, key: &str, v: Scalar<'_>) {
        self.attrs.push_scalar(key, v)
    }
    fn attr_entry(&mut self, kv: &KeyValue) {
        self.attrs.push_entry(kv)
    }
    fn end_attrs(&mut self) {
        self.attrs.end_row()
    }
    fn span_fields(&mut self, f: &SpanFields<'_>, ctx: u32) -> Result<(), ArrowError> {
        self.push_span_fields(f, ctx)
    }
    fn span(&mut self, s: &Span, ctx: u32) -> Result<(), ArrowError> {
        self.push_span(s, ctx)
    }
}

/// Walks `TracesData` buffers into `rows`; returns how many resource and scope attributes the
/// context budget cut ([`super::budget`]).
pub(crate) fn walk<'a, R: Rows + ?Sized>(bufs: impl IntoIterator<Item = &'a [u8]>, rows: &mut R) -> Result<u64, ArrowError> {
    let bufs: Vec<&'a [u8]> = bufs.into_iter().collect();
    let bytes: u64 = bufs.iter().map(|b| b.len() as u64).sum();
    let mut w = Walker { cols: rows, kvs: Vec::new(), budget: ContextBudget::new(bytes) };
    for buf in bufs {
        let mut r = Reader::new(buf, 0);
        while !r.done() {
            let (field, wt) = r.tag().map_err(bad)?;
            if field == 1 && wt == LEN {
                let (rs, _) = r.len_delimited().map_err(bad)?;
                w.resource_spans(rs)?;
            } else {
                r.skip(wt, "TracesData", field).map_err(bad)?;
            }
        }
    }
    Ok(w.budget.truncated)
}

struct Walker<'a, 'r, R: Rows + ?Sized> {
    cols: &'r mut R,
    // Reused between spans: a span's attributes, slices of the buffer being walked.
    kvs: Vec<&'a [u8]>,
    budget: ContextBudget,
}

impl<'a, R: Rows + ?Sized> Walker<'a, '_, R> {
    fn resource_spans(&mut self, buf: &'a [u8]) -> Result<(), ArrowError> {
        let (mut resource, mut schema_url) = (Resource::default(), "");
        let mut scope_spans = Vec::new();
        let mut r = Reader::new(buf, 0);
        while !r.done() {
            let (field, wt) = r.tag().map_err(bad)?;
            match (field, wt) {
                (1, LEN) => resource.merge(r.len_delimited().map_err(bad)?.0).map_err(bad)?,
                (2, LEN) => scope_spans.push(r.len_delimited().map_err(bad)?.0),
                (3, LEN) => schema_url = text(r.len_delimited().map_err(bad)?.0)?,
                _ => r.skip(wt, "ResourceSpans", field).map_err(bad)?,
            }
        }
        let res_bytes = attr_bytes(&resource.attributes);
        for ss in scope_spans {
            self.scope_spans_one(ss, &resource, res_bytes, schema_url)?;
        }
        Ok(())
    }

    fn scope_spans_one(&mut self, buf: &'a [u8], resource: &Resource, res_bytes: u64, res_schema_url: &str) -> Result<(), ArrowError> {
        let (mut scope, mut schema_url, mut spans) = (InstrumentationScope::default(), "", 0u64);
        // The spans go in as they come (one pass: each span's bytes are read once, in order); their
        // context is added after them, with the number it was promised.
        let ctx = self.cols.next_context();
        let mut r = Reader::new(buf, 0);
        while !r.done() {
            let (field, wt) = r.tag().map_err(bad)?;
            match (field, wt) {
                (1, LEN) => scope.merge(r.len_delimited().map_err(bad)?.0).map_err(bad)?,
                (2, LEN) => {
                    self.span(r.len_delimited().map_err(bad)?.0, ctx)?;
                    spans += 1;
                }
                (3, LEN) => schema_url = text(r.len_delimited().map_err(bad)?.0)?,
                _ => r.skip(wt, "ScopeSpans", field).map_err(bad)?,
            }
        }
        if spans > 0 {
            let (resource, scope) = self.budget.fit(resource, res_bytes, &scope, spans);
            let added = self.cols.context(&resource, res_schema_url, &scope, schema_url);
            debug_assert_eq!(added, ctx, "the context number promised to the spans");
        }
        Ok(())
    }

    fn span(&mut self, buf: &'a [u8], ctx: u32) -> Result<(), ArrowError> {
        match self.span_fast(buf, ctx)? {
            true => Ok(()),
            // Something the fast path does not take: decode this span with prost (nothing of it
            // was added yet).
            false => self.cols.span(&Span::decode(buf).map_err(bad)?, ctx),
        }
    }

    /// Adds the span if it has the common shape; `Ok(false)` (having added nothing) otherwise.
    fn span_fast(&mut self, buf: &'a [u8], ctx: u32) -> Result<bool, ArrowError> {
        let mut f = SpanFields {
            trace_id: &[],
            span_id: &[],
            trace_state: "",
            parent_span_id: &[],
            flags: 0,
            name: "",
            kind: 0,
            start: 0,
            end: 0,
            dropped_attributes_count: 0,
            dropped_events_count: 0,
            dropped_links_count: 0,
            status_code: 0,
            status_message: "",
        };
        self.kvs.clear();
        // The fields SDKs write first, in order, and the attributes after them: read straight
        // (noted in `seen`, so a field sent again still takes the slow path); the loop reads the rest.
        let (mut seen, at) = span_head(buf, &mut f, &mut self.kvs);
        let mut r = Reader::new(&buf[at..], at);
        while !r.done() {
            let Ok((field, wt)) = r.tag() else { return Ok(false) };
            if field != 9 && field <= 16 {
                // A singular field twice (merged by protobuf), events or links: the slow path.
                if seen & (1 << field) != 0 || field == 11 || field == 13 {
                    return Ok(false);
                }
                seen |= 1 << field;
            }
            // `None`: not the common shape (or not valid): the slow path decides.
            let step = match (field, wt) {
                (1, LEN) => r.len_delimited().ok().map(|(b, _)| f.trace_id = b),
                (2, LEN) => r.len_delimited().ok().map(|(b, _)| f.span_id = b),
                (3, LEN) => r.len_delimited().ok().and_then(|(b, _)| str_of(b)).map(|v| f.trace_state = v),
                (4, LEN) => r.len_delimited().ok().map(|(b, _)| f.parent_span_id = b),
                (5, LEN) => r.len_delimited().ok().and_then(|(b, _)| str_of(b)).map(|v| f.name = v),
                (6, VARINT) => r.varint().ok().map(|v| f.kind = v as i32),
                (7, I64) => r.take(8).ok().map(|b| f.start = u64::from_le_bytes(b.try_into().expect("8 bytes"))),
                (8, I64) => r.take(8).ok().map(|b| f.end = u64::from_le_bytes(b.try_into().expect("8 bytes"))),
                (9, LEN) => r.len_delimited().ok().map(|(b, _)| self.kvs.push(b)),
                (10, VARINT) => r.varint().ok().map(|v| f.dropped_attributes_count = v as u32),
                (12, VARINT) => r.varint().ok().map(|v| f.dropped_events_count = v as u32),
                (14, VARINT) => r.varint().ok().map(|v| f.dropped_links_count = v as u32),
                (15, LEN) => r.len_delimited().ok().and_then(|(b, _)| status(b)).map(|st| (f.status_code, f.status_message) = st),
                (16, I32) => r.take(4).ok().map(|b| f.flags = u32::from_le_bytes(b.try_into().expect("4 bytes"))),
                (1..=16, _) => None,
                _ => r.skip(wt, "Span", field).ok(),
            };
            if step.is_none() {
                return Ok(false);
            }
        }
        let kvs = std::mem::take(&mut self.kvs);
        for kv in &kvs {
            self.key_value(kv)?;
        }
        self.kvs = kvs;
        self.cols.end_attrs();
        self.cols.span_fields(&f, ctx)?;
        Ok(true)
    }

    fn key_value(&mut self, buf: &[u8]) -> Result<(), ArrowError> {
        match key_value_common(buf).or_else(|| key_value_fast(buf)) {
            Some((key, v)) => self.cols.attr(key, v),
            None => self.cols.attr_entry(&KeyValue::decode(buf).map_err(bad)?),
        }
        Ok(())
    }
}

/// Reads the head of a span as SDKs write it: trace id, span id, optional trace state and parent,
/// name, optional kind, start and end, then attributes, each with a one-byte length; stops at the
/// first field that is not next in that order (or not of that shape). Returns the fields read (as
/// `span_fast`'s `seen` bits) and where it stopped.
#[inline(always)]
fn span_head<'a>(buf: &'a [u8], f: &mut SpanFields<'a>, kvs: &mut Vec<&'a [u8]>) -> (u32, usize) {
    // Field `tag` (its first byte) with a one-byte length, at `p`.
    let short = |p: usize, tag: u8| -> Option<&'a [u8]> {
        match buf.get(p..p + 2) {
            Some(&[t, n]) if t == tag && n < 0x80 => buf.get(p + 2..p + 2 + n as usize),
            _ => None,
        }
    };
    let (mut seen, mut p) = (0u32, 0usize);
    'head: {
        let Some(b) = short(p, 0x0a) else { break 'head };
        (f.trace_id, seen, p) = (b, seen | 1 << 1, p + 2 + b.len());
        let Some(b) = short(p, 0x12) else { break 'head };
        (f.span_id, seen, p) = (b, seen | 1 << 2, p + 2 + b.len());
        if let Some(b) = short(p, 0x1a) {
            let Some(v) = str_of(b) else { break 'head };
            (f.trace_state, seen, p) = (v, seen | 1 << 3, p + 2 + b.len());
        }
        if let Some(b) = short(p, 0x22) {
            (f.parent_span_id, seen, p) = (b, seen | 1 << 4, p + 2 + b.len());
        }
        let Some(b) = short(p, 0x2a) else { break 'head };
        let Some(v) = str_of(b) else { break 'head };
        (f.name, seen, p) = (v, seen | 1 << 5, p + 2 + b.len());
        if let Some(&[0x30, k]) = buf.get(p..p + 2)
            && k < 0x80
        {
            (f.kind, seen, p) = (k as i32, seen | 1 << 6, p + 2);
        }
        let Some(&[0x39, ref v @ ..]) = buf.get(p..p + 9) else { break 'head };
        (f.start, seen, p) = (u64::from_le_bytes(v.try_into().expect("8 bytes")), seen | 1 << 7, p + 9);
        let Some(&[0x41, ref v @ ..]) = buf.get(p..p + 9) else { break 'head };
        (f.end, seen, p) = (u64::from_le_bytes(v.try_into().expect("8 bytes")), seen | 1 << 8, p + 9);
        while let Some(b) = short(p, 0x4a) {
            kvs.push(b);
            p += 2 + b.len();
        }
    }
    (seen, p)
}

/// A `Status` with each field at most once: (code, message).
fn status(buf: &[u8]) -> Option<(i32, &str)> {
    let (mut code, mut message, mut seen) = (0, "", 0u8);
    let mut r = Reader::new(buf, 0);
    while !r.done() {
        let (field, wt) = r.tag().ok()?;
        match (field, wt) {
            (2, LEN) if seen & 2 == 0 => {
                seen |= 2;
                message = str_of(r.len_delimited().ok()?.0)?;
            }
            (3, VARINT) if seen & 4 == 0 => {
                seen |= 4;
                code = r.varint().ok()? as i32;
            }
            (2 | 3, _) => return None,
            _ => r.skip(wt, "Status", field).ok()?,
        }
    }
    Some((code, message))
}

/// The `KeyValue` every SDK writes: the key, then a string, int, bool or double value, each
/// length one byte, nothing else; read without the general field loop. Anything else, or
/// anything not valid, is `None` (for [`key_value_fast`] to read, or reject).
#[inline(always)]
fn key_value_common(buf: &[u8]) -> Option<(&str, Scalar<'_>)> {
    let [0x0a, kl, rest @ ..] = buf else { return None };
    let kl = *kl as usize;
    if kl >= 0x80 || rest.len() < kl {
        return None;
    }
    let (key, rest) = rest.split_at(kl);
    let [0x12, vl, any @ ..] = rest else { return None };
    if *vl >= 0x80 || *vl as usize != any.len() {
        return None;
    }
    let v = match any {
        [0x0a, sl, s @ ..] if *sl < 0x80 && *sl as usize == s.len() => {
            // One UTF-8 check over the whole `KeyValue` instead of one per string: the tags and
            // one-byte lengths around the two strings are ASCII, so it is valid exactly when both are.
            let all = str_of(buf)?;
            return Some((&all[2..2 + kl], Scalar::Str(&all[buf.len() - s.len()..])));
        }
        [0x10, b] if *b < 0x80 => Scalar::Bool(*b != 0),
        [0x18, int @ ..] => {
            let mut r = Reader::new(int, 0);
            let v = r.varint().ok()?;
            if !r.done() {
                return None;
            }
            Scalar::Int(v as i64)
        }
        [0x21, d @ ..] => Scalar::Double(f64::from_le_bytes(d.try_into().ok()?)),
        _ => return None,
    };
    Some((str_of(key)?, v))
}

/// A `KeyValue` whose key and value appear once and whose value is a scalar.
#[inline]
fn key_value_fast(buf: &[u8]) -> Option<(&str, Scalar<'_>)> {
    let (mut key, mut value, mut seen) = ("", Scalar::Empty, 0u8);
    let mut r = Reader::new(buf, 0);
    while !r.done() {
        let (field, wt) = r.tag().ok()?;
        match (field, wt) {
            (1, LEN) if seen & 2 == 0 => {
                seen |= 2;
                key = str_of(r.len_delimited().ok()?.0)?;
            }
            (2, LEN) if seen & 4 == 0 => {
                seen |= 4;
                value = any_value_fast(r.len_delimited().ok()?.0)?;
            }
            (1 | 2, _) => return None,
            _ => r.skip(wt, "KeyValue", field).ok()?,
        }
    }
    Some((key, value))
}

/// An `AnyValue` holding at most one field, a scalar one.
#[inline]
fn any_value_fast(buf: &[u8]) -> Option<Scalar<'_>> {
    let mut r = Reader::new(buf, 0);
    let mut v = Scalar::Empty;
    let mut fields = 0;
    while !r.done() {
        let (field, wt) = r.tag().ok()?;
        fields += 1;
        if fields > 1 {
            return None;
        }
        v = match (field, wt) {
            (1, LEN) => Scalar::Str(str_of(r.len_delimited().ok()?.0)?),
            (2, VARINT) => Scalar::Bool(r.varint().ok()? != 0),
            (3, VARINT) => Scalar::Int(r.varint().ok()? as i64),
            (4, I64) => Scalar::Double(f64::from_le_bytes(r.take(8).ok()?.try_into().ok()?)),
            (7, LEN) => Scalar::Bytes(r.len_delimited().ok()?.0),
            (8, VARINT) => Scalar::Strindex(r.varint().ok()? as i32),
            (1..=8, _) => return None,
            _ => {
                r.skip(wt, "AnyValue", field).ok()?;
                fields -= 1;
                v
            }
        };
    }
    Some(v)
}

#[cfg(test)]
pub(crate) mod tests;
