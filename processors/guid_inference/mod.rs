//! `type: guid_inference` — rebuilds whole traces from the `guid:x-request-id` tag that Envoy and
//! Istio put on every proxy span, for meshes whose apps forward only `x-request-id` (not B3 or
//! traceparent) and so break one request into several traces.
//!
//! Spans with the guid attribute are held per guid for `wait` after the guid's first span (and,
//! with `hold_untagged`, spans without it by trace id, to follow their fragment), then resolved
//! together (see [`infer`]) and sent on: an orphan CLIENT root gets as parent the one SERVER span
//! of the same guid on the same node that was running when it started, an orphan SERVER root the
//! one CLIENT on another node that called its service (cross-node tier); where the timestamps
//! leave more than one candidate the span is declined (no parent, `tracepipe.parent_candidates`,
//! counted). Linked fragments take the trace id of the fragment with the true root
//! (`tracepipe.original_trace_id` keeps the old id; `tracepipe.inferred_parent=true` marks the
//! re-parented spans). Guids that are already one trace are sent on untouched. Beyond
//! `max_bytes`, the oldest guids are resolved early (counted). Shutdown resolves and flushes
//! everything held; a revoked Kafka partition's guids are handed back undecided.

mod config;
pub mod infer;
mod processor;

#[cfg(test)]
mod tests;

pub use config::GuidInferenceConfig;
pub use processor::build;
