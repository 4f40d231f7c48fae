//! A zero-copy scanner for OTLP trace protobuf (`TracesData` / `ExportTraceServiceRequest`,
//! which share one wire format).
//!
//! Receivers run it once on every request: it proves the bytes are well-formed protobuf that
//! `prost` will decode later (same wire types for known fields, valid UTF-8 strings, bounded
//! nesting), counts spans, and finds spans with bad ids — without allocating per span. A batch
//! whose bytes passed the scan can then travel the graph and leave through an OTLP sink
//! untouched. Only requests with invalid spans take the slow path (decode, drop, re-encode).

/// Deepest `AnyValue` nesting (arrays and key-value lists inside attributes) accepted.
pub const MAX_ANY_VALUE_DEPTH: usize = 32;

/// Why the bytes are not a valid OTLP trace message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer ended inside a field.
    #[error("truncated protobuf at byte {0}")]
    Truncated(usize),
    /// A varint longer than 10 bytes.
    #[error("invalid varint at byte {0}")]
    BadVarint(usize),
    /// A field with wire type 3, 4, 6 or 7, or a known field with the wrong wire type.
    #[error("invalid wire type {wire_type} for field {field} of {message} at byte {offset}")]
    BadWireType {
        /// Message being read.
        message: &'static str,
        /// Field number.
        field: u64,
        /// Wire type found.
        wire_type: u8,
        /// Byte offset.
        offset: usize,
    },
    /// Field number 0, or a key above u32::MAX.
    #[error("invalid field key at byte {0}")]
    BadField(usize),
    /// A message the scanner passed that prost still refuses (re-encoding an envelope).
    #[error("cannot decode {0}: {1}")]
    Undecodable(&'static str, String),
    /// A string field that is not UTF-8.
    #[error("invalid UTF-8 in a string field of {0}")]
    BadUtf8(&'static str),
    /// Attributes nested deeper than [`MAX_ANY_VALUE_DEPTH`].
    #[error("attribute values nested deeper than {MAX_ANY_VALUE_DEPTH} levels")]
    TooDeep,
}

/// Why a single span is refused (the rest of the request may still be accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpanProblem {
    /// `trace_id` is not 16 bytes.
    TraceIdLength,
    /// `trace_id` is all zero.
    TraceIdZero,
    /// `span_id` is not 8 bytes.
    SpanIdLength,
    /// `span_id` is all zero.
    SpanIdZero,
    /// `parent_span_id` is neither empty nor 8 bytes.
    ParentIdLength,
    /// A link's trace or span id has the wrong length.
    LinkIdLength,
}

impl SpanProblem {
    /// A short reason, used in `partial_success.error_message` and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanProblem::TraceIdLength => "trace_id must be 16 bytes",
            SpanProblem::TraceIdZero => "trace_id must not be all zero",
            SpanProblem::SpanIdLength => "span_id must be 8 bytes",
            SpanProblem::SpanIdZero => "span_id must not be all zero",
            SpanProblem::ParentIdLength => "parent_span_id must be empty or 8 bytes",
            SpanProblem::LinkIdLength => "link ids must be 16 and 8 bytes",
        }
    }
}

/// What a scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Number of spans in the message.
    pub spans: usize,
    /// Invalid spans: (index in message order, problem). Empty in the common case; 8 bytes per
    /// invalid span (a span takes at least 2 bytes on the wire, so at most 4x the message).
    pub invalid: Vec<(u32, SpanProblem)>,
}

/// Wire type of a varint field.
pub const VARINT: u8 = 0;
/// Wire type of an 8-byte field.
pub const I64: u8 = 1;
/// Wire type of a length-delimited field.
pub const LEN: u8 = 2;
/// Wire type of a 4-byte field.
pub const I32: u8 = 5;

/// A zero-copy protobuf field reader over one message's bytes (errors carry absolute offsets
/// from `base`). Public for processors that read a few fields of still-encoded spans.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`, which sits at offset `base` of the whole message.
    pub fn new(buf: &'a [u8], base: usize) -> Self {
        Reader { buf, pos: 0, base }
    }
    /// True when every byte was read.
    pub fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }
    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }
    /// Reads a varint.
    #[inline(always)]
    pub fn varint(&mut self) -> Result<u64, WireError> {
        // Fast path: most tags and lengths are one byte.
        if let Some(&b) = self.buf.get(self.pos)
            && b < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(b));
        }
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(WireError::Truncated(self.base + self.pos));
            };
            self.pos += 1;
            // The tenth byte may only hold the top bit of a u64 (prost rejects anything else).
            if i == 9 && b > 1 {
                return Err(WireError::BadVarint(self.base + self.pos));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(WireError::BadVarint(self.base + self.pos))
    }
    /// Reads a tag: (field number, wire type).
    #[inline(always)]
    pub fn tag(&mut self) -> Result<(u64, u8), WireError> {
        let at = self.base + self.pos;
        let t = self.varint()?;
        let field = t >> 3;
        // As prost: a key is a u32 and field 0 does not exist.
        if field == 0 || t > u64::from(u32::MAX) {
            return Err(WireError::BadField(at));
        }
        Ok((field, (t & 7) as u8))
    }
    /// Takes the next `n` bytes.
    #[inline(always)]
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or(WireError::Truncated(self.base + self.buf.len()))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    /// Reads the payload of a LEN field; returns it and its absolute offset.
    #[inline(always)]
    pub fn len_delimited(&mut self) -> Result<(&'a [u8], usize), WireError> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| WireError::Truncated(self.base + self.pos))?;
        let at = self.base + self.pos;
        Ok((self.take(n)?, at))
    }
    /// Skips a field's value of the given wire type.
    pub fn skip(&mut self, wire_type: u8, message: &'static str, field: u64) -> Result<(), WireError> {
        match wire_type {
            VARINT => self.varint().map(|_| ()),
            I64 => self.take(8).map(|_| ()),
            I32 => self.take(4).map(|_| ()),
            LEN => self.len_delimited().map(|_| ()),
            w => Err(WireError::BadWireType { message, field, wire_type: w, offset: self.base + self.pos }),
        }
    }
    fn expect(&self, message: &'static str, field: u64, got: u8, want: u8) -> Result<(), WireError> {
        if got == want {
            Ok(())
        } else {
            Err(WireError::BadWireType { message, field, wire_type: got, offset: self.base + self.pos })
        }
    }
}

/// Calls `f` with the payload of every LEN field number `field` of one encoded message (named
/// `message` in errors), in order, skipping the other fields.
pub fn each_len<'a>(buf: &'a [u8], field: u64, message: &'static str, mut f: impl FnMut(&'a [u8]) -> Result<(), WireError>) -> Result<(), WireError> {
    let mut r = Reader::new(buf, 0);
    while !r.done() {
        let (got, wt) = r.tag()?;
        if (got, wt) == (field, LEN) {
            f(r.len_delimited()?.0)?;
        } else {
            r.skip(wt, message, got)?;
        }
    }
    Ok(())
}

/// The string value of attribute `key` of one encoded `Span` (field 9, `KeyValue` 1/2,
/// `AnyValue.string_value` 1), without decoding the span; the first one when repeated.
pub fn span_string_attribute<'a>(span: &'a [u8], key: &[u8]) -> Result<Option<&'a [u8]>, WireError> {
    let mut r = Reader::new(span, 0);
    while !r.done() {
        let (field, wt) = r.tag()?;
        if field != 9 || wt != LEN {
            r.skip(wt, "Span", field)?;
            continue;
        }
        let (kv, _) = r.len_delimited()?;
        let mut kr = Reader::new(kv, 0);
        let (mut k, mut v) = (None, None);
        while !kr.done() {
            let (f, w) = kr.tag()?;
            match (f, w) {
                (1, LEN) => k = Some(kr.len_delimited()?.0),
                (2, LEN) => v = Some(kr.len_delimited()?.0),
                _ => kr.skip(w, "KeyValue", f)?,
            }
        }
        if k != Some(key) {
            continue;
        }
        let Some(v) = v else { return Ok(None) };
        let mut vr = Reader::new(v, 0);
        let mut found = None;
        while !vr.done() {
            let (f, w) = vr.tag()?;
            match (f, w) {
                (1, LEN) => found = Some(vr.len_delimited()?.0),
                _ => {
                    vr.skip(w, "AnyValue", f)?;
                    found = None;
                }
            }
        }
        return Ok(found);
    }
    Ok(None)
}

/// `bytes` as a `str` when they are valid UTF-8. Nearly every trace string is ASCII: `is_ascii`
/// checks a word at a time, where `std::str::from_utf8` walks short strings byte by byte (it was
/// a quarter of the archive's protobuf -> Arrow conversion); the full validation runs only on
/// the rest.
#[inline(always)]
pub fn str_of(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        // SAFETY: ASCII bytes are valid UTF-8.
        return Some(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes).ok()
}

#[inline(always)]
fn utf8(s: &[u8], message: &'static str) -> Result<(), WireError> {
    // Nearly every attribute string is ASCII: check that first (word at a time), and run the full
    // UTF-8 validation only on the rest.
    if s.is_ascii() {
        return Ok(());
    }
    std::str::from_utf8(s).map(|_| ()).map_err(|_| WireError::BadUtf8(message))
}

/// Field types the walker checks (the wire type `prost` expects, plus UTF-8 for strings).
#[derive(Clone, Copy)]
enum F {
    Str,
    Bytes,
    Varint,
    I64,
    I32,
    Msg(M),
}

/// The messages of the OTLP trace schema.
#[derive(Clone, Copy, PartialEq, Eq)]
enum M {
    TracesData,
    ResourceSpans,
    Resource,
    EntityRef,
    ScopeSpans,
    Scope,
    Span,
    Event,
    Link,
    Status,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
}

impl M {
    fn name(self) -> &'static str {
        match self {
            M::TracesData => "TracesData",
            M::ResourceSpans => "ResourceSpans",
            M::Resource => "Resource",
            M::EntityRef => "EntityRef",
            M::ScopeSpans => "ScopeSpans",
            M::Scope => "InstrumentationScope",
            M::Span => "Span",
            M::Event => "Span.Event",
            M::Link => "Span.Link",
            M::Status => "Status",
            M::KeyValue => "KeyValue",
            M::AnyValue => "AnyValue",
            M::ArrayValue => "ArrayValue",
            M::KeyValueList => "KeyValueList",
        }
    }

    /// The schema: what each known field of each message is (from opentelemetry-proto 1.x).
    #[inline(always)]
    fn field(self, n: u64) -> Option<F> {
        use F::*;
        Some(match (self, n) {
            (M::TracesData, 1) => Msg(M::ResourceSpans),
            (M::ResourceSpans, 1) => Msg(M::Resource),
            (M::ResourceSpans, 2) => Msg(M::ScopeSpans),
            (M::ResourceSpans, 3) => Str,
            (M::Resource, 1) => Msg(M::KeyValue),
            (M::Resource, 2) => Varint,
            (M::Resource, 3) => Msg(M::EntityRef),
            (M::EntityRef, 1 | 2 | 3 | 4) => Str,
            (M::ScopeSpans, 1) => Msg(M::Scope),
            (M::ScopeSpans, 2) => Msg(M::Span),
            (M::ScopeSpans, 3) => Str,
            (M::Scope, 1 | 2) => Str,
            (M::Scope, 3) => Msg(M::KeyValue),
            (M::Scope, 4) => Varint,
            (M::Span, 1 | 2 | 4) => Bytes,
            (M::Span, 3 | 5) => Str,
            (M::Span, 6 | 10 | 12 | 14) => Varint,
            (M::Span, 7 | 8) => I64,
            (M::Span, 9) => Msg(M::KeyValue),
            (M::Span, 11) => Msg(M::Event),
            (M::Span, 13) => Msg(M::Link),
            (M::Span, 15) => Msg(M::Status),
            (M::Span, 16) => I32,
            (M::Event, 1) => I64,
            (M::Event, 2) => Str,
            (M::Event, 3) => Msg(M::KeyValue),
            (M::Event, 4) => Varint,
            (M::Link, 1 | 2) => Bytes,
            (M::Link, 3) => Str,
            (M::Link, 4) => Msg(M::KeyValue),
            (M::Link, 5) => Varint,
            (M::Link, 6) => I32,
            (M::Status, 2) => Str,
            (M::Status, 3) => Varint,
            (M::KeyValue, 1) => Str,
            (M::KeyValue, 2) => Msg(M::AnyValue),
            (M::KeyValue, 3) => Varint,
            (M::AnyValue, 1) => Str,
            (M::AnyValue, 2 | 3 | 8) => Varint,
            (M::AnyValue, 4) => I64,
            (M::AnyValue, 5) => Msg(M::ArrayValue),
            (M::AnyValue, 6) => Msg(M::KeyValueList),
            (M::AnyValue, 7) => Bytes,
            (M::ArrayValue, 1) => Msg(M::AnyValue),
            (M::KeyValueList, 1) => Msg(M::KeyValue),
            _ => return None,
        })
    }
}

/// Per-span facts collected while walking a `Span`.
#[derive(Default)]
struct SpanFacts<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    problem: Option<SpanProblem>,
}

/// Scans an encoded `TracesData` / `ExportTraceServiceRequest`.
pub fn scan_traces(buf: &[u8]) -> Result<ScanReport, WireError> {
    let mut report = ScanReport::default();
    walk(M::TracesData, buf, 0, 0, 0, &mut report, &mut None)?;
    Ok(report)
}

/// `values` counts the `AnyValue`s from the attribute down to `msg` (a plain attribute value is
/// 1; each array or key-value list around it one more), held to [`MAX_ANY_VALUE_DEPTH`]. `depth`
/// counts every message level and bounds the recursion whatever the schema (the fixed part above
/// the first `AnyValue` is at most 6 levels; each `AnyValue` level adds at most 3).
fn walk<'a>(
    msg: M,
    buf: &'a [u8],
    base: usize,
    depth: usize,
    values: usize,
    report: &mut ScanReport,
    span: &mut Option<SpanFacts<'a>>,
) -> Result<(), WireError> {
    if depth > MAX_ANY_VALUE_DEPTH * 3 + 8 {
        return Err(WireError::TooDeep);
    }
    let mut r = Reader::new(buf, base);
    while !r.done() {
        let (field, wt) = r.tag()?;
        let Some(kind) = msg.field(field) else {
            r.skip(wt, msg.name(), field)?;
            continue;
        };
        match kind {
            F::Varint => {
                r.expect(msg.name(), field, wt, VARINT)?;
                r.varint()?;
            }
            F::I64 => {
                r.expect(msg.name(), field, wt, I64)?;
                r.take(8)?;
            }
            F::I32 => {
                r.expect(msg.name(), field, wt, I32)?;
                r.take(4)?;
            }
            F::Str => {
                r.expect(msg.name(), field, wt, LEN)?;
                utf8(r.len_delimited()?.0, msg.name())?;
            }
            F::Bytes => {
                r.expect(msg.name(), field, wt, LEN)?;
                let b = r.len_delimited()?.0;
                if let Some(f) = span.as_mut() {
                    match (msg, field) {
                        (M::Span, 1) => f.trace_id = b,
                        (M::Span, 2) => f.span_id = b,
                        (M::Span, 4) if !b.is_empty() && b.len() != 8 => {
                            f.problem.get_or_insert(SpanProblem::ParentIdLength);
                        }
                        (M::Link, 1) if b.len() != 16 => {
                            f.problem.get_or_insert(SpanProblem::LinkIdLength);
                        }
                        (M::Link, 2) if b.len() != 8 => {
                            f.problem.get_or_insert(SpanProblem::LinkIdLength);
                        }
                        _ => {}
                    }
                }
            }
            F::Msg(sub) => {
                r.expect(msg.name(), field, wt, LEN)?;
                let (inner, at) = r.len_delimited()?;
                let deeper = depth + 1;
                let values = values + usize::from(sub == M::AnyValue);
                if values > MAX_ANY_VALUE_DEPTH {
                    return Err(WireError::TooDeep);
                }
                if sub == M::Span {
                    let mut facts = Some(SpanFacts::default());
                    walk(sub, inner, at, deeper, values, report, &mut facts)?;
                    let f = facts.unwrap_or_default();
                    let index = report.spans;
                    report.spans += 1;
                    if let Some(p) = span_problem(&f) {
                        // A span takes 2+ bytes and messages are under 4 GiB (every receiver's limit
                        // is far lower), so the index fits.
                        report.invalid.push((index as u32, p));
                    }
                } else {
                    walk(sub, inner, at, deeper, values, report, span)?;
                }
            }
        }
    }
    Ok(())
}

fn span_problem(f: &SpanFacts<'_>) -> Option<SpanProblem> {
    if f.trace_id.len() != 16 {
        Some(SpanProblem::TraceIdLength)
    } else if f.trace_id.iter().all(|b| *b == 0) {
        Some(SpanProblem::TraceIdZero)
    } else if f.span_id.len() != 8 {
        Some(SpanProblem::SpanIdLength)
    } else if f.span_id.iter().all(|b| *b == 0) {
        Some(SpanProblem::SpanIdZero)
    } else {
        f.problem
    }
}
