//! Jaeger model -> OTLP protobuf bytes in one pass, without building `opentelemetry-proto`
//! structs: the hot path of the UDP and HTTP transports. It applies exactly the mapping of
//! [`super::translate`] (which builds structs, for readers and tests); a property test checks
//! that decoding these bytes gives what `translate::to_otlp` gives.
//!
//! Nested messages are written in place behind a one-byte length placeholder; the rare message
//! longer than 127 bytes moves its content right to make room for a longer varint, so lengths are
//! computed once (prost computes nested lengths once per nesting level).

use super::model::{JaegerBatch, Span, Tag};
use super::translate::{event_name_field, ref_type_name, scope_key, status_of};

const LEN: u8 = 2;
const VARINT: u8 = 0;
const I64: u8 = 1;
const I32: u8 = 5;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, u64::from(field << 3 | u32::from(wire)));
}

fn bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(out, field, LEN);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Writes a length-delimited field whose content `f` writes.
fn nested(out: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    key(out, field, LEN);
    let at = out.len();
    out.push(0);
    f(out);
    let len = out.len() - at - 1;
    if len < 0x80 {
        out[at] = len as u8;
    } else {
        let mut v = Vec::with_capacity(5);
        varint(&mut v, len as u64);
        out[at] = v[0];
        // Make room for the rest of the varint.
        let extra = v.len() - 1;
        out.splice(at + 1..at + 1, v[1..].iter().copied());
        debug_assert_eq!(out.len(), at + 1 + extra + len);
    }
}

fn any_value(out: &mut Vec<u8>, t: &Tag) {
    match t.v_type {
        1 => {
            key(out, 4, I64);
            out.extend_from_slice(&t.v_double.unwrap_or_default().to_le_bytes());
        }
        2 => {
            key(out, 2, VARINT);
            varint(out, u64::from(t.v_bool.unwrap_or_default()));
        }
        3 => {
            key(out, 3, VARINT);
            varint(out, t.v_long.unwrap_or_default() as u64);
        }
        4 => bytes_field(out, 7, t.v_binary.as_deref().unwrap_or_default()),
        _ => bytes_field(out, 1, t.v_str.as_deref().unwrap_or_default().as_bytes()),
    }
}

fn key_value(out: &mut Vec<u8>, field: u32, k: &str, t: &Tag) {
    nested(out, field, |o| {
        if !k.is_empty() {
            bytes_field(o, 1, k.as_bytes());
        }
        nested(o, 2, |o| any_value(o, t));
    });
}

fn string_kv(out: &mut Vec<u8>, field: u32, k: &str, v: &str) {
    nested(out, field, |o| {
        bytes_field(o, 1, k.as_bytes());
        nested(o, 2, |o| bytes_field(o, 1, v.as_bytes()));
    });
}

fn trace_id(high: i64, low: i64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&high.to_be_bytes());
    id[8..].copy_from_slice(&low.to_be_bytes());
    id
}

fn span(out: &mut Vec<u8>, js: &Span) {
    nested(out, 2, |o| {
        bytes_field(o, 1, &trace_id(js.trace_id_high, js.trace_id_low));
        bytes_field(o, 2, &js.span_id.to_be_bytes());
        let m = super::translate::SpanMapping::of(js);
        if let Some(ts) = &m.trace_state {
            if !ts.is_empty() {
                bytes_field(o, 3, ts.as_bytes());
            }
        }
        if m.parent != 0 {
            bytes_field(o, 4, &m.parent.to_be_bytes());
        }
        if !js.operation_name.is_empty() {
            bytes_field(o, 5, js.operation_name.as_bytes());
        }
        if m.kind != 0 {
            key(o, 6, VARINT);
            varint(o, m.kind as u64);
        }
        let start = (js.start_time as u64).saturating_mul(1000);
        let end = (js.start_time as u64).saturating_add(js.duration.max(0) as u64).saturating_mul(1000);
        if start != 0 {
            key(o, 7, I64);
            o.extend_from_slice(&start.to_le_bytes());
        }
        if end != 0 {
            key(o, 8, I64);
            o.extend_from_slice(&end.to_le_bytes());
        }
        for (i, t) in js.tags.iter().enumerate() {
            if m.consumed(i) {
                continue;
            }
            key_value(o, 9, &t.key, t);
        }
        for l in &js.logs {
            nested(o, 11, |o| {
                let ts = (l.timestamp as u64).saturating_mul(1000);
                if ts != 0 {
                    key(o, 1, I64);
                    o.extend_from_slice(&ts.to_le_bytes());
                }
                let name_field = event_name_field(&l.fields);
                let mut named = false;
                let mut attrs = Vec::new();
                for f in &l.fields {
                    if !named && f.key == name_field {
                        let n = super::translate::tag_text(f);
                        if !n.is_empty() {
                            bytes_field(o, 2, n.as_bytes());
                        }
                        named = true;
                    } else {
                        attrs.push(f);
                    }
                }
                for f in attrs {
                    key_value(o, 3, &f.key, f);
                }
            });
        }
        for r in &m.links {
            nested(o, 13, |o| {
                bytes_field(o, 1, &trace_id(r.trace_id_high, r.trace_id_low));
                bytes_field(o, 2, &r.span_id.to_be_bytes());
                string_kv(o, 4, "opentracing.ref_type", ref_type_name(r.ref_type));
            });
        }
        if let Some((code, msg)) = status_of(&m) {
            nested(o, 15, |o| {
                if !msg.is_empty() {
                    bytes_field(o, 2, msg.as_bytes());
                }
                if code != 0 {
                    key(o, 3, VARINT);
                    varint(o, code as u64);
                }
            });
        }
        let flags = (js.flags as u32) & 0xff;
        if flags != 0 {
            key(o, 16, I32);
            o.extend_from_slice(&flags.to_le_bytes());
        }
    });
}

/// The encoded `TracesData`, its span count, and how many spans were dropped for all-zero ids.
pub struct Encoded {
    /// OTLP `TracesData` bytes (empty when no span is left).
    pub bytes: Vec<u8>,
    /// Spans written.
    pub spans: usize,
    /// Spans dropped because their trace or span id is zero.
    pub rejected: u64,
}

/// Encodes a Jaeger batch as OTLP `TracesData`, dropping spans whose ids are zero.
pub fn encode_otlp(b: &JaegerBatch) -> Encoded {
    let valid: Vec<&Span> = b.spans.iter().filter(|s| (s.trace_id_high != 0 || s.trace_id_low != 0) && s.span_id != 0).collect();
    let rejected = (b.spans.len() - valid.len()) as u64;
    if valid.is_empty() {
        return Encoded { bytes: Vec::new(), spans: 0, rejected };
    }
    // Group by instrumentation scope, in order of first appearance.
    let mut groups: Vec<((String, String), Vec<&Span>)> = Vec::new();
    let mut index: std::collections::HashMap<(String, String), usize> = Default::default();
    for s in &valid {
        let k = scope_key(s);
        let i = *index.entry(k.clone()).or_insert_with(|| {
            groups.push((k, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(s);
    }
    let mut out = Vec::with_capacity(512 * valid.len());
    nested(&mut out, 1, |o| {
        nested(o, 1, |o| {
            string_kv(o, 1, "service.name", &b.process.service_name);
            for t in &b.process.tags {
                key_value(o, 1, &t.key, t);
            }
        });
        for ((name, version), spans) in &groups {
            nested(o, 2, |o| {
                nested(o, 1, |o| {
                    if !name.is_empty() {
                        bytes_field(o, 1, name.as_bytes());
                    }
                    if !version.is_empty() {
                        bytes_field(o, 2, version.as_bytes());
                    }
                });
                for s in spans {
                    span(o, s);
                }
            });
        }
    });
    Encoded { bytes: out, spans: valid.len(), rejected }
}
