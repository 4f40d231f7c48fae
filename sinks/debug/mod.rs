//! `type: debug` — shows what flows through the graph, like the OTel Collector's debug exporter.
//! `verbosity: basic` logs one line per batch (span count); `detailed` logs every span (trace
//! id, span id, parent, name, kind, service). With `path`, every batch is also appended to that
//! file as one OTLP/JSON line (`{"resourceSpans":[…]}`, the OTel file exporter's format).

mod config;
mod sink;

#[cfg(test)]
mod tests;

pub use config::{DebugConfig, Verbosity};
pub use sink::build;
