//! `type: tail_sampling` — decides on whole traces: holds each trace's spans until its decision,
//! evaluates the policies (the OpenTelemetry Collector's policy types, names and semantics),
//! passes kept traces on whole and drops the rest, counted per policy and decision.
//!
//! - Held spans stay encoded ([`trace`]), copied per batch into shared chunks; traces live in a
//!   paged table ([`table`]): the bound `max_bytes` counts chunks, envelopes and the index; at the bound the oldest traces are decided early (`on_full:
//!   decide_oldest`, counted) or the input is left unread so receivers refuse (`on_full: refuse`).
//! - `shards` deciders own disjoint trace ids ([`processor`]); each sleeps until its next
//!   deadline (`decision_wait` after the first span, `decision_wait_after_root` after the root).
//! - Late spans follow the cached decision ([`cache`]); kept spans carry the deciding policy and
//!   their adjusted count (`mark_policy`).
//! - Shutdown decides every held trace on what it has (or drops them with
//!   `drop_pending_traces_on_shutdown`), and flushes; with `state_dir` it writes them and the
//!   decision caches instead, and the next start takes them up ([`state`]).
//!
//! - [`simulate`] runs the policies over archived traces (`tracepipe sample`).
//! - [`tracestate`]: OpenTelemetry's consistent probability sampling (`ot=th:`/`rv:`): upstream
//!   thresholds are honoured in adjusted counts, and `probabilistic` with `mode: equalizing`
//!   keeps by the trace's randomness and writes the effective threshold.

pub mod cache;
mod config;
pub mod policy;
mod processor;
pub mod simulate;
#[cfg(feature = "archive")]
pub mod sql;
#[cfg(not(feature = "archive"))]
#[path = "sql_absent.rs"]
pub mod sql;
pub mod state;
pub mod table;
pub mod trace;
pub mod tracestate;

#[cfg(test)]
mod tests;

pub use config::{DecisionCacheConfig, OnFull, PolicyConfig, PolicyKind, StatusCode, TailSamplingConfig, POLICY_TYPES};
pub use processor::{build, ADJUSTED_COUNT_ATTRIBUTE, POLICY_ATTRIBUTE};
