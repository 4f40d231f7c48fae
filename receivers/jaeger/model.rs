//! The Jaeger Thrift model (`jaeger.thrift`, `agent.thrift`) read with the `thrift` crate's
//! protocols. Readers are hand-written (no generated code, no thrift compiler): each struct reads
//! its known fields and skips the rest. Every list length is checked against the bytes left
//! before anything is allocated, and `TConfiguration` caps strings and containers, so hostile
//! lengths (2^31 elements, huge strings) fail fast without allocating them.

use std::cell::Cell;
use std::rc::Rc;

use thrift::protocol::{TInputProtocol, TType};

/// Why a payload could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ThriftError {
    /// The protocol layer failed (truncated, bad type, size limit...).
    #[error("invalid thrift: {0}")]
    Protocol(#[from] thrift::Error),
    /// The message is not `Agent.emitBatch` (or `emitZipkinBatch`).
    #[error("unsupported thrift method {0:?}; expected emitBatch")]
    Method(String),
    /// A list claims more elements than the payload could hold.
    #[error("list of {0} elements does not fit in the payload")]
    ListTooLong(i32),
    /// A required field is missing.
    #[error("missing required field {0}")]
    Missing(&'static str),
}

/// `jaeger.Tag`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tag {
    pub key: String,
    pub v_type: i32,
    pub v_str: Option<String>,
    pub v_double: Option<f64>,
    pub v_bool: Option<bool>,
    pub v_long: Option<i64>,
    pub v_binary: Option<Vec<u8>>,
}

/// `jaeger.Log`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Log {
    pub timestamp: i64,
    pub fields: Vec<Tag>,
}

/// `jaeger.SpanRef`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SpanRef {
    pub ref_type: i32,
    pub trace_id_low: i64,
    pub trace_id_high: i64,
    pub span_id: i64,
}

/// `jaeger.Span`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Span {
    pub trace_id_low: i64,
    pub trace_id_high: i64,
    pub span_id: i64,
    pub parent_span_id: i64,
    pub operation_name: String,
    pub references: Vec<SpanRef>,
    pub flags: i32,
    pub start_time: i64,
    pub duration: i64,
    pub tags: Vec<Tag>,
    pub logs: Vec<Log>,
}

/// `jaeger.Process`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Process {
    pub service_name: String,
    pub tags: Vec<Tag>,
}

/// `jaeger.Batch`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JaegerBatch {
    pub process: Process,
    pub spans: Vec<Span>,
}

/// Reads a thrift struct: calls `f` with each field id and type until STOP; `f` returns false
/// for fields it does not know, which are skipped.
fn read_struct(p: &mut dyn TInputProtocol, f: impl FnMut(&mut dyn TInputProtocol, i16, TType) -> Result<bool, ThriftError>) -> Result<(), ThriftError> {
    read_struct_required(p, &[], f)
}

/// [`read_struct`], and then every field id of `required` must have been read (as Jaeger's
/// generated readers insist), else `Missing` naming the first one absent. Besides matching
/// Jaeger, this bounds what a hostile list of empty structs costs: each element must carry its
/// required fields on the wire (a span at least 17 bytes, a tag 5), so the decoded model is at
/// most ~25x the payload.
fn read_struct_required(
    p: &mut dyn TInputProtocol,
    required: &[(i16, &'static str)],
    mut f: impl FnMut(&mut dyn TInputProtocol, i16, TType) -> Result<bool, ThriftError>,
) -> Result<(), ThriftError> {
    let mut seen = 0u64;
    read_struct_fields(p, |p, id, ty| {
        let known = f(p, id, ty)?;
        if known && (0..64).contains(&id) {
            seen |= 1 << id;
        }
        Ok(known)
    })?;
    match required.iter().find(|(id, _)| seen & (1 << id) == 0) {
        Some((_, field)) => Err(ThriftError::Missing(field)),
        None => Ok(()),
    }
}

fn read_struct_fields(p: &mut dyn TInputProtocol, mut f: impl FnMut(&mut dyn TInputProtocol, i16, TType) -> Result<bool, ThriftError>) -> Result<(), ThriftError> {
    p.read_struct_begin()?;
    loop {
        let fi = p.read_field_begin()?;
        if fi.field_type == TType::Stop {
            break;
        }
        let id = fi.id.unwrap_or(0);
        if !f(p, id, fi.field_type)? {
            p.skip(fi.field_type)?;
        }
        p.read_field_end()?;
    }
    p.read_struct_end()?;
    Ok(())
}

/// Most elements a list reserves room for before they are read; beyond it the list grows with
/// what is actually read (so lists in progress, nested or one after another, never hold more
/// than the elements the payload really carried).
const LIST_RESERVE: usize = 1024;

/// A payload reader that keeps count of the bytes not yet read, for [`read_list`].
struct Counted<'a> {
    buf: &'a [u8],
    left: Rc<Cell<usize>>,
}

impl std::io::Read for Counted<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.buf.read(out)?;
        self.left.set(self.buf.len());
        Ok(n)
    }
}

/// A reader over `payload` and its count of bytes left.
fn counted(payload: &[u8]) -> (Counted<'_>, Rc<Cell<usize>>) {
    let left = Rc::new(Cell::new(payload.len()));
    (Counted { buf: payload, left: left.clone() }, left)
}

/// Reads a list of structs, refusing lengths the bytes still unread cannot hold.
fn read_list<T>(p: &mut dyn TInputProtocol, left: &Cell<usize>, mut item: impl FnMut(&mut dyn TInputProtocol) -> Result<T, ThriftError>) -> Result<Vec<T>, ThriftError> {
    let li = p.read_list_begin()?;
    let n = li.size;
    // Every element takes at least one byte (a struct at least its STOP).
    if n < 0 || n as usize > left.get() {
        return Err(ThriftError::ListTooLong(n));
    }
    let mut out = Vec::with_capacity((n as usize).min(LIST_RESERVE));
    for _ in 0..n {
        if li.element_type != TType::Struct {
            p.skip(li.element_type)?;
            continue;
        }
        out.push(item(p)?);
    }
    p.read_list_end()?;
    Ok(out)
}

fn read_tag(p: &mut dyn TInputProtocol) -> Result<Tag, ThriftError> {
    let mut t = Tag::default();
    read_struct_required(p, &[(1, "Tag.key"), (2, "Tag.vType")], |p, id, ty| {
        Ok(match (id, ty) {
            (1, TType::String) => {
                t.key = p.read_string()?;
                true
            }
            (2, TType::I32) => {
                t.v_type = p.read_i32()?;
                true
            }
            (3, TType::String) => {
                t.v_str = Some(p.read_string()?);
                true
            }
            (4, TType::Double) => {
                t.v_double = Some(p.read_double()?);
                true
            }
            (5, TType::Bool) => {
                t.v_bool = Some(p.read_bool()?);
                true
            }
            (6, TType::I64) => {
                t.v_long = Some(p.read_i64()?);
                true
            }
            (7, TType::String) => {
                t.v_binary = Some(p.read_bytes()?);
                true
            }
            _ => false,
        })
    })?;
    Ok(t)
}

/// Reads a `jaeger.Batch` struct. `remaining` (the bytes not yet read) bounds list lengths.
fn read_batch(p: &mut dyn TInputProtocol, remaining: &Cell<usize>) -> Result<JaegerBatch, ThriftError> {
    let mut b = JaegerBatch::default();
    let mut have_process = false;
    read_struct(p, |p, id, ty| {
        Ok(match (id, ty) {
            (1, TType::Struct) => {
                have_process = true;
                read_struct(p, |p, id, ty| {
                    Ok(match (id, ty) {
                        (1, TType::String) => {
                            b.process.service_name = p.read_string()?;
                            true
                        }
                        (2, TType::List) => {
                            b.process.tags = read_list(p, remaining, read_tag)?;
                            true
                        }
                        _ => false,
                    })
                })?;
                true
            }
            (2, TType::List) => {
                b.spans = read_list(p, remaining, |p| read_span(p, remaining))?;
                true
            }
            _ => false,
        })
    })?;
    if !have_process {
        return Err(ThriftError::Missing("Batch.process"));
    }
    Ok(b)
}

/// `jaeger.Span`'s required fields.
const SPAN_REQUIRED: &[(i16, &str)] = &[
    (1, "Span.traceIdLow"),
    (2, "Span.traceIdHigh"),
    (3, "Span.spanId"),
    (4, "Span.parentSpanId"),
    (5, "Span.operationName"),
    (7, "Span.flags"),
    (8, "Span.startTime"),
    (9, "Span.duration"),
];

fn read_span(p: &mut dyn TInputProtocol, remaining: &Cell<usize>) -> Result<Span, ThriftError> {
    let mut s = Span::default();
    read_struct_required(p, SPAN_REQUIRED, |p, id, ty| {
        Ok(match (id, ty) {
            (1, TType::I64) => {
                s.trace_id_low = p.read_i64()?;
                true
            }
            (2, TType::I64) => {
                s.trace_id_high = p.read_i64()?;
                true
            }
            (3, TType::I64) => {
                s.span_id = p.read_i64()?;
                true
            }
            (4, TType::I64) => {
                s.parent_span_id = p.read_i64()?;
                true
            }
            (5, TType::String) => {
                s.operation_name = p.read_string()?;
                true
            }
            (6, TType::List) => {
                s.references = read_list(p, remaining, |p| {
                    let mut r = SpanRef::default();
                    let required = [(1, "SpanRef.refType"), (2, "SpanRef.traceIdLow"), (3, "SpanRef.traceIdHigh"), (4, "SpanRef.spanId")];
                    read_struct_required(p, &required, |p, id, ty| {
                        Ok(match (id, ty) {
                            (1, TType::I32) => {
                                r.ref_type = p.read_i32()?;
                                true
                            }
                            (2, TType::I64) => {
                                r.trace_id_low = p.read_i64()?;
                                true
                            }
                            (3, TType::I64) => {
                                r.trace_id_high = p.read_i64()?;
                                true
                            }
                            (4, TType::I64) => {
                                r.span_id = p.read_i64()?;
                                true
                            }
                            _ => false,
                        })
                    })?;
                    Ok(r)
                })?;
                true
            }
            (7, TType::I32) => {
                s.flags = p.read_i32()?;
                true
            }
            (8, TType::I64) => {
                s.start_time = p.read_i64()?;
                true
            }
            (9, TType::I64) => {
                s.duration = p.read_i64()?;
                true
            }
            (10, TType::List) => {
                s.tags = read_list(p, remaining, read_tag)?;
                true
            }
            (11, TType::List) => {
                s.logs = read_list(p, remaining, |p| {
                    let mut l = Log::default();
                    read_struct_required(p, &[(1, "Log.timestamp"), (2, "Log.fields")], |p, id, ty| {
                        Ok(match (id, ty) {
                            (1, TType::I64) => {
                                l.timestamp = p.read_i64()?;
                                true
                            }
                            (2, TType::List) => {
                                l.fields = read_list(p, remaining, read_tag)?;
                                true
                            }
                            _ => false,
                        })
                    })?;
                    Ok(l)
                })?;
                true
            }
            _ => false,
        })
    })?;
    Ok(s)
}

/// Which thrift protocol a UDP payload uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Compact (agent port 6831).
    Compact,
    /// Binary, strict or not (agent port 6832).
    Binary,
}

fn config(limit: usize) -> thrift::TConfiguration {
    thrift::TConfiguration::builder()
        .max_message_size(Some(limit))
        .max_string_size(Some(limit))
        .max_container_size(Some(limit))
        .max_recursion_depth(Some(32))
        .build()
        .unwrap_or_default()
}

/// Decodes an `Agent.emitBatch` message (a UDP datagram).
pub fn decode_emit_batch(payload: &[u8], protocol: Protocol) -> Result<JaegerBatch, ThriftError> {
    let limit = payload.len();
    let (transport, left) = counted(payload);
    let mut p: Box<dyn TInputProtocol + '_> = match protocol {
        Protocol::Compact => Box::new(thrift::protocol::TCompactInputProtocol::with_config(transport, config(limit))),
        Protocol::Binary => Box::new(thrift::protocol::TBinaryInputProtocol::with_config(transport, false, config(limit))),
    };
    let msg = p.read_message_begin()?;
    if msg.name != "emitBatch" {
        return Err(ThriftError::Method(msg.name));
    }
    let mut batch = None;
    read_struct(p.as_mut(), |p, id, ty| {
        Ok(match (id, ty) {
            (1, TType::Struct) => {
                batch = Some(read_batch(p, &left)?);
                true
            }
            _ => false,
        })
    })?;
    p.read_message_end()?;
    batch.ok_or(ThriftError::Missing("emitBatch.batch"))
}

/// Decodes a bare binary-protocol `jaeger.Batch` (the collector's `POST /api/traces` body).
pub fn decode_batch_binary(payload: &[u8]) -> Result<JaegerBatch, ThriftError> {
    let limit = payload.len();
    let (transport, left) = counted(payload);
    let mut p = thrift::protocol::TBinaryInputProtocol::with_config(transport, true, config(limit));
    read_batch(&mut p, &left)
}

/// The span count of an `emitBatch` datagram, reading only up to the span list header (for
/// counting what a full queue drops without decoding it).
pub fn peek_span_count(payload: &[u8], protocol: Protocol) -> Option<usize> {
    let limit = payload.len();
    let mut transport = payload;
    let mut p: Box<dyn TInputProtocol + '_> = match protocol {
        Protocol::Compact => Box::new(thrift::protocol::TCompactInputProtocol::with_config(&mut transport, config(limit))),
        Protocol::Binary => Box::new(thrift::protocol::TBinaryInputProtocol::with_config(&mut transport, false, config(limit))),
    };
    p.read_message_begin().ok()?;
    p.read_struct_begin().ok()?;
    let f = p.read_field_begin().ok()?;
    if f.field_type != TType::Struct {
        return None;
    }
    p.read_struct_begin().ok()?;
    loop {
        let f = p.read_field_begin().ok()?;
        match (f.id, f.field_type) {
            (_, TType::Stop) => return None,
            (Some(2), TType::List) => {
                let n = p.read_list_begin().ok()?.size;
                return usize::try_from(n).ok().filter(|n| *n <= limit);
            }
            (_, t) => p.skip(t).ok()?,
        }
    }
}
