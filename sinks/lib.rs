//! # tracepipe-sinks
//!
//! Components that deliver batches out of the graph. One folder each:
//! - [`otlp`]: OTLP/gRPC, OTLP/HTTP protobuf and JSON, with compression, headers, TLS, retry
//!   and a bounded queue;
//! - [`satellite`]: LightStep satellites and public ingest, OTLP or the Report protocol, a token
//!   per project;
//! - [`parquet`]: the trace archive (Parquet files in the documented schema, partitioned by
//!   hour, rolled, atomically renamed);
//! - [`kafka`]: OTLP protobuf or JSON records to a Kafka topic, one per trace keyed by trace id;
//! - [`debug`]: span counts or whole spans to the log, or OTLP/JSON lines to a file.
//!
//! Every sink counts `tracepipe_sink_sent_spans_total` and, with a reason,
//! `tracepipe_sink_failed_spans_total`, so that accepted = sent + failed in a quiet graph.
//! Registration is the one explicit `match` in [`validate`].

pub mod debug;
pub mod kafka;
pub mod otlp;
#[cfg(feature = "archive")]
pub mod parquet;
pub mod queue;
pub mod satellite;

use tracepipe_config::{ComponentDecl, ConfigError};
use tracepipe_pipeline::topology::{BuildFuture, ComponentContext};

/// Every sink type.
pub const TYPES: &[&str] = &["otlp", "satellite", "kafka", "parquet", "debug"];

/// A sink's validated configuration.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    /// `type: otlp`.
    Otlp(otlp::OtlpSinkConfig),
    /// `type: satellite`.
    Satellite(satellite::SatelliteConfig),
    /// `type: kafka`.
    Kafka(kafka::KafkaSinkConfig),
    /// `type: parquet`.
    #[cfg(feature = "archive")]
    Parquet(parquet::ParquetSinkConfig),
    /// `type: debug`.
    Debug(debug::DebugConfig),
}

/// Checks a sink declaration; no I/O.
pub fn validate(decl: &ComponentDecl, file: &str) -> Result<SinkConfig, Vec<ConfigError>> {
    match decl.type_name.as_str() {
        "otlp" => otlp::OtlpSinkConfig::from_node(&decl.body, file).map(SinkConfig::Otlp),
        "satellite" => satellite::SatelliteConfig::from_node(&decl.body, file).map(SinkConfig::Satellite),
        "kafka" => kafka::KafkaSinkConfig::from_node(&decl.body, file).map(SinkConfig::Kafka),
        #[cfg(feature = "archive")]
        "parquet" => parquet::ParquetSinkConfig::from_node(&decl.body, file).map(SinkConfig::Parquet),
        #[cfg(not(feature = "archive"))]
        "parquet" => Err(vec![tracepipe_config::not_in_this_build(file, decl.type_pos, "sink type `parquet`")]),
        "debug" => debug::DebugConfig::from_node(&decl.body, file).map(SinkConfig::Debug),
        "" => Err(vec![]),
        other => Err(vec![ConfigError::new(file, decl.type_pos, format!("unknown sink type `{other}`; known types: {}", TYPES.join(", ")))]),
    }
}

impl SinkConfig {
    /// Builds the sink task.
    pub fn build(self, ctx: ComponentContext) -> BuildFuture {
        match self {
            SinkConfig::Otlp(c) => Box::pin(otlp::build(c, ctx)),
            SinkConfig::Satellite(c) => Box::pin(satellite::build(c, ctx)),
            SinkConfig::Kafka(c) => Box::pin(kafka::build(c, ctx)),
            #[cfg(feature = "archive")]
            SinkConfig::Parquet(c) => Box::pin(parquet::build(c, ctx)),
            SinkConfig::Debug(c) => Box::pin(debug::build(c, ctx)),
        }
    }
}
