//! Finished records replayed as context: spans that take part in decisions but are not
//! delivered again.
//!
//! A Kafka receiver that takes a partition over skips the records its previous owner finished
//! (`progress_topic`). When a record of the same key that was *not* finished follows — a
//! request's late fragment, which the previous owner's caches would have rewritten and decided
//! like the rest — the finished records of that key go into the graph again just before it, so
//! that guid inference rebuilds the request on all its fragments and tail sampling decides it as
//! one trace. Sent as they were, they would be delivered twice. When the previous owner recorded
//! which way they went (kept: they reached a sink; dropped by a sampling decision; see
//! [`crate::batch::Outcome`]), they are sent as **context** instead: every resource of theirs
//! carries the attribute [`ATTRIBUTE`] = `kept` or `dropped`. Tail sampling then decides their
//! trace that way (what the previous owner decided, which its caches would have applied to the
//! late fragment), guid inference uses them to rebuild the tree, and every sink removes them
//! before it delivers ([`strip`]; the Kafka sink first learns their request ids, to key the late
//! spans like their request). So the late fragment is delivered once, joined to its request, and
//! nothing is delivered twice.
//!
//! Where the context could be wrong — the late record also brings spans that carry the guid
//! (guid inference could rebuild the request another way than the previous owner did) — guid
//! inference clears the mark ([`unmark`]) and the context becomes ordinary spans again: the
//! request is decided again whole and delivered twice, as without it, never in part.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use prost::Message;

use crate::batch::{Batch, DecodeError};

/// The resource attribute that marks replayed context: `kept:<nonce>` or `dropped:<nonce>`.
pub const ATTRIBUTE: &str = "tracepipe.replayed";

/// Set once this process has sent context: until then nothing needs looking at.
static SEEN: AtomicBool = AtomicBool::new(false);

/// A random value of this process that every mark carries: context is made and removed inside
/// one process, and a span that arrives from outside with the attribute (a client's, or one a
/// misconfigured upstream tracepipe forgot to remove) is not taken for context — not decided
/// another owner's way, not removed by a sink.
fn nonce() -> &'static str {
    static NONCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NONCE.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        h.write_u32(std::process::id());
        format!("{:016x}", h.finish())
    })
}

/// True once any context was sent in this process (sinks look for it only then).
pub fn seen() -> bool {
    SEEN.load(Ordering::Relaxed)
}

/// Marks every resource of `batch` as context that the previous owner `kept` (or dropped).
pub fn mark(batch: &mut Batch, kept: bool) -> Result<(), DecodeError> {
    SEEN.store(true, Ordering::Relaxed);
    let value = format!("{}:{}", if kept { "kept" } else { "dropped" }, nonce());
    for rs in batch.resource_spans_mut()? {
        let r = rs.resource.get_or_insert_with(Resource::default);
        r.attributes.retain(|a| a.key != ATTRIBUTE);
        r.attributes.push(KeyValue { key: ATTRIBUTE.to_owned(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.clone())) }), key_strindex: 0 });
    }
    Ok(())
}

/// The mark of a resource: `Some(true)` kept, `Some(false)` dropped, `None` not context (no
/// mark, or one this process did not make).
pub fn prior(resource: Option<&Resource>) -> Option<bool> {
    let a = resource?.attributes.iter().find(|a| a.key == ATTRIBUTE)?;
    let any_value::Value::StringValue(v) = a.value.as_ref()?.value.as_ref()? else { return None };
    let (outcome, n) = v.split_once(':')?;
    if n != nonce() {
        return None;
    }
    match outcome {
        "kept" => Some(true),
        "dropped" => Some(false),
        _ => None,
    }
}

/// The mark of a `ResourceSpans` given as its encoded fields without the spans (what tail
/// sampling keeps of an envelope). Only decodes when the bytes name [`ATTRIBUTE`].
pub fn prior_of_envelope(fields: &[u8]) -> Option<bool> {
    if !seen() {
        return None;
    }
    memchr::memmem::find(fields, ATTRIBUTE.as_bytes())?;
    let rs = ResourceSpans::decode(fields).ok()?;
    prior(rs.resource.as_ref())
}

/// Clears the mark: the spans become ordinary spans again (delivered like any other).
pub fn unmark(resource: &mut Option<Resource>) -> bool {
    let Some(r) = resource else { return false };
    let before = r.attributes.len();
    r.attributes.retain(|a| a.key != ATTRIBUTE);
    r.attributes.len() != before
}

/// Removes the context spans from `batch`; returns how many. Nothing is looked at before this
/// process sent context ([`seen`]), nor in a batch still in wire form whose bytes do not name
/// [`ATTRIBUTE`].
pub fn strip(batch: &mut Batch) -> usize {
    strip_after(batch, |_| {})
}

/// As [`strip`], first showing `read` the batch's context (the Kafka sink learns the request ids
/// its late spans are keyed by).
pub fn strip_after(batch: &mut Batch, read: impl FnOnce(&[&ResourceSpans])) -> usize {
    if !seen() || batch.is_empty() || batch.encoded_contains(ATTRIBUTE.as_bytes()) == Some(false) {
        return 0;
    }
    let before = batch.span_count();
    let Ok(rs) = batch.resource_spans_mut() else { return 0 };
    let context: Vec<&ResourceSpans> = rs.iter().filter(|r| prior(r.resource.as_ref()).is_some()).collect();
    if context.is_empty() {
        return 0;
    }
    read(&context);
    rs.retain(|r| prior(r.resource.as_ref()).is_none());
    batch.recount();
    before - batch.span_count()
}
