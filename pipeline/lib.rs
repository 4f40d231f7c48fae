//! # tracepipe-pipeline
//!
//! The core every component builds on:
//! - [`batch`]: the [`Batch`] of spans that travels every channel (encoded OTLP bytes or decoded
//!   OTLP structs, converted lazily and copy-on-write);
//! - [`wire`]: the zero-copy OTLP protobuf scanner receivers use to validate and count spans;
//! - [`regroup`]: still-encoded spans regrouped by trace id without decoding (Kafka records per trace);
//! - [`otlp_json`]: OTLP/JSON decoding and encoding with the spec's conventions;
//! - [`topology`]: component contexts ([`Input`], [`Output`]), bounded channels, fan-out with
//!   all-or-nothing admission, and the running graph (start in reverse topological order, stop in
//!   topological order, drain on shutdown);
//! - [`archive`]: the Parquet trace-archive schema, file layout and DataFusion table;
//! - [`memory`]: the process-wide memory limit (resident memory sampled; receivers refuse above
//!   the soft limit);
//! - [`telemetry`]: metric names, the Prometheus `/metrics`, `/healthz`, `/readyz` server and the
//!   health registry;
//! - [`tls`]: TLS on listeners (certificates reloaded when their files change, bounded handshakes).
//!
//! Receivers, processors and sinks depend on this crate; it depends on `tracepipe-config` and (for archives) DataFusion.

pub mod archive;
pub mod batch;
pub mod clock;
/// The LightStep collector protocol (`lightstep.collector`, from proto/lightstep/collector.proto):
/// what the LightStep receiver reads and the satellite sink writes.
#[allow(missing_docs, clippy::all)]
pub mod lightstep_pb {
    include!(concat!(env!("OUT_DIR"), "/lightstep.collector.rs"));
}
pub mod memory;
pub mod otlp_json;
pub mod regroup;
pub mod replay;
pub mod telemetry;
pub mod tls;
pub mod topology;
pub mod wire;

#[cfg(test)]
mod tests;

pub use batch::{Batch, BatchStatus, Finalizer};
pub use topology::{
    BuildError, ComponentContext, ComponentError, ComponentFuture, Input, Output, Planned, Refused, RunningTopology,
};
