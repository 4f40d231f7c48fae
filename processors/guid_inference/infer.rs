//! The inference itself, a pure function over the spans of one guid (so it is testable without
//! time or channels).
//!
//! Rule (measured on Envoy 1.40, see the module docs): when apps forward only `x-request-id`,
//! every outbound sidecar starts a new trace whose root is its CLIENT span. The true parent of
//! such an orphan CLIENT span is the SERVER span with the same guid **on the same node** (same
//! clock) whose `[start, end]` encloses it; the tightest enclosing one wins, and a tie is counted
//! as ambiguous and left alone rather than guessed. With Envoy's default
//! `shared_span_context: true`, the SERVER half that reuses the CLIENT's span id gets the same
//! parent. Every fragment linked this way takes the trace id of the fragment holding the true
//! root; `tracepipe.original_trace_id` keeps the old one.

use std::collections::HashMap;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// A span held with its resource and scope.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    /// The span's resource.
    pub resource: Option<Resource>,
    /// The span's instrumentation scope.
    pub scope: Option<InstrumentationScope>,
    /// The span.
    pub span: Span,
}

/// Guids with more spans than this are passed on without inference (counted as `too_large`):
/// matching is quadratic in the spans of one guid, and no real request has this many proxy spans.
pub const MAX_SPANS_PER_GUID: usize = 4096;

/// What resolving one guid did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Parent edges added.
    pub edges: u64,
    /// Orphan CLIENT spans with more than one equally tight candidate parent (left alone).
    pub ambiguous: u64,
    /// Spans whose trace id was rewritten.
    pub retraced: u64,
    /// The guid had more than [`MAX_SPANS_PER_GUID`] spans and was left alone.
    pub too_large: bool,
}

/// A string attribute of a span.
pub fn string_attr<'a>(s: &'a Span, key: &str) -> Option<&'a str> {
    s.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| match &v.value {
        Some(any_value::Value::StringValue(x)) => Some(x.as_str()),
        _ => None,
    })
}

fn find(parent: &mut HashMap<Vec<u8>, Vec<u8>>, t: &[u8]) -> Vec<u8> {
    let mut cur = t.to_vec();
    while let Some(p) = parent.get(&cur) {
        if *p == cur {
            break;
        }
        cur = p.clone();
    }
    cur
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Rebuilds the tree of one guid's spans in place.
pub fn resolve(spans: &mut [Held], node_attr: &str, mark: bool) -> Outcome {
    let mut out = Outcome::default();
    if spans.len() > MAX_SPANS_PER_GUID {
        out.too_large = true;
        return out;
    }
    let traces: std::collections::BTreeSet<&Vec<u8>> = spans.iter().map(|h| &h.span.trace_id).collect();
    if traces.len() < 2 {
        return out; // already one trace: touch nothing
    }
    // Orphan CLIENT roots and their tightest enclosing SERVER on the same node.
    let mut edges: Vec<(usize, Vec<u8>, Vec<u8>)> = Vec::new(); // (client index, parent span id, parent trace)
    for (i, h) in spans.iter().enumerate() {
        let s = &h.span;
        if s.kind != CLIENT || !s.parent_span_id.is_empty() {
            continue;
        }
        let Some(node) = string_attr(s, node_attr) else { continue };
        let mut best: Option<(u64, usize)> = None;
        let mut tie = false;
        for (j, c) in spans.iter().enumerate() {
            let p = &c.span;
            if j == i || p.kind != SERVER || p.trace_id == s.trace_id || string_attr(p, node_attr) != Some(node) {
                continue;
            }
            if p.start_time_unix_nano <= s.start_time_unix_nano && p.end_time_unix_nano >= s.end_time_unix_nano {
                let d = p.end_time_unix_nano - p.start_time_unix_nano;
                match best {
                    Some((bd, _)) if d > bd => {}
                    Some((bd, _)) if d == bd => tie = true,
                    _ => {
                        best = Some((d, j));
                        tie = false;
                    }
                }
            }
        }
        match (best, tie) {
            (Some(_), true) => out.ambiguous += 1,
            (Some((_, j)), false) => edges.push((i, spans[j].span.span_id.clone(), spans[j].span.trace_id.clone())),
            (None, _) => {}
        }
    }
    if edges.is_empty() {
        return out;
    }
    // Union the fragments along the new edges: child trace -> parent trace.
    let mut uf: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for (i, pspan, ptrace) in &edges {
        let ct = spans[*i].span.trace_id.clone();
        let cspan = spans[*i].span.span_id.clone();
        let (rc, rp) = (find(&mut uf, &ct), find(&mut uf, ptrace));
        if rc != rp {
            uf.insert(rc, rp);
        }
        out.edges += 1;
        // The CLIENT, and a shared SERVER half that reuses its id in the same trace.
        for h in spans.iter_mut() {
            let s = &mut h.span;
            let is_client = s.trace_id == ct && s.span_id == cspan && s.kind == CLIENT;
            let is_shared_half = s.trace_id == ct && s.span_id == cspan && s.kind == SERVER && s.parent_span_id.is_empty();
            if (is_client || is_shared_half) && s.parent_span_id.is_empty() {
                s.parent_span_id = pspan.clone();
                if mark {
                    s.attributes.push(KeyValue { key: "tracepipe.inferred_parent".into(), value: Some(AnyValue { value: Some(any_value::Value::BoolValue(true)) }), key_strindex: 0 });
                }
            }
        }
    }
    // Every span takes the trace id of its component's root fragment.
    for h in spans.iter_mut() {
        let root = find(&mut uf, &h.span.trace_id);
        if root != h.span.trace_id {
            let old = std::mem::replace(&mut h.span.trace_id, root);
            h.span.attributes.push(KeyValue {
                key: "tracepipe.original_trace_id".into(),
                value: Some(AnyValue { value: Some(any_value::Value::StringValue(hex(&old))) }),
                key_strindex: 0,
            });
            out.retraced += 1;
        }
    }
    out
}
