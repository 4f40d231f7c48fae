//! `type: guid_inference` — rebuilds whole traces from the `guid:x-request-id` tag that Envoy and
//! Istio put on every proxy span, for meshes whose apps forward only `x-request-id` (not B3 or
//! traceparent) and so break one request into several traces.
//!
//! Spans without the guid attribute pass straight through. Spans with it are held per guid for
//! `wait` after the guid's first span, then resolved together (see [`infer`]) and sent on: an
//! orphan CLIENT root gets as parent the tightest enclosing SERVER span of the same guid on the
//! same node, and all linked fragments take the trace id of the fragment with the true root
//! (`tracepipe.original_trace_id` keeps the old id; `tracepipe.inferred_parent=true` marks the
//! re-parented spans). Guids that are already one trace are sent on untouched. Beyond
//! `max_bytes`, the oldest guids are resolved early (counted). Shutdown resolves and flushes
//! everything held.
//!
//! Not done yet: the cross-node tier (every proxy span its own trace, linked by the client's
//! `upstream_cluster` / `http.url` and the callee's service, with clock-skew tolerance).

mod config;
pub mod infer;
mod processor;

#[cfg(test)]
mod tests;

pub use config::GuidInferenceConfig;
pub use processor::build;
