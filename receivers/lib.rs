//! # tracepipe-receivers
//!
//! Components that bring spans into the graph. One folder per receiver:
//! - [`otlp`]: OTLP over gRPC (4317) and HTTP (4318), protobuf and JSON;
//! - [`jaeger`]: Jaeger agent UDP (6831 compact, 6832 binary), collector HTTP (14268) and the
//!   remote-sampling endpoint (5778);
//! - [`zipkin`]: Zipkin v1/v2 over HTTP (9411), JSON, proto3 and Thrift, with Envoy's proto id repair;
//! - [`lightstep`]: the LightStep collector protocol (gRPC 8282, HTTP 8181), a satellite stand-in;
//! - [`kafka`]: OTLP records from a Kafka topic, as a consumer group, committing only what was delivered;
//! - [`archive`]: replay of a Parquet trace archive, filtered with SQL, paced, ending when done.
//!
//! Every receiver validates input before admitting it, answers its sender with a retryable
//! error when the graph is full, and counts what it accepted, refused and could not decode
//! (see `tracepipe_pipeline::telemetry::names`).
//!
//! Registration is the one explicit `match` in [`validate`], from the YAML `type` to a config.

pub mod archive;
pub mod jaeger;
pub mod kafka;
pub mod lightstep;
pub mod otlp;
mod serve;
pub mod zipkin;

use tracepipe_config::{ComponentDecl, ConfigError, Endpoint};
use tracepipe_pipeline::topology::{BuildFuture, ComponentContext};

/// Every receiver type, for messages and `--help`.
pub const TYPES: &[&str] = &["otlp", "jaeger", "zipkin", "lightstep", "kafka", "archive"];

/// A receiver's validated configuration.
#[derive(Debug, Clone)]
pub enum ReceiverConfig {
    /// `type: otlp`.
    Otlp(otlp::OtlpConfig),
    /// `type: jaeger`.
    Jaeger(jaeger::JaegerConfig),
    /// `type: zipkin`.
    Zipkin(zipkin::ZipkinConfig),
    /// `type: lightstep`.
    Lightstep(lightstep::LightstepConfig),
    /// `type: kafka`.
    Kafka(kafka::KafkaReceiverConfig),
    /// `type: archive`.
    Archive(archive::ArchiveConfig),
}

/// Checks a receiver declaration; no I/O.
pub fn validate(decl: &ComponentDecl, file: &str) -> Result<ReceiverConfig, Vec<ConfigError>> {
    match decl.type_name.as_str() {
        "otlp" => otlp::OtlpConfig::from_node(&decl.body, file).map(ReceiverConfig::Otlp),
        "jaeger" => jaeger::JaegerConfig::from_node(&decl.body, file).map(ReceiverConfig::Jaeger),
        "zipkin" => zipkin::ZipkinConfig::from_node(&decl.body, file).map(ReceiverConfig::Zipkin),
        "lightstep" => lightstep::LightstepConfig::from_node(&decl.body, file).map(ReceiverConfig::Lightstep),
        "kafka" => kafka::KafkaReceiverConfig::from_node(&decl.body, file).map(ReceiverConfig::Kafka),
        "archive" => archive::ArchiveConfig::from_node(&decl.body, file).map(ReceiverConfig::Archive),
        "" => Err(vec![]), // reported by the loader
        other => Err(vec![ConfigError::new(
            file,
            decl.type_pos,
            format!("unknown receiver type `{other}`; known types: {}", TYPES.join(", ")),
        )]),
    }
}

impl ReceiverConfig {
    /// Addresses this receiver will listen on, with their transport, for conflict checks.
    pub fn listen_addresses(&self) -> Vec<(Endpoint, &'static str)> {
        match self {
            ReceiverConfig::Otlp(c) => c.listen_addresses(),
            ReceiverConfig::Jaeger(c) => c.listen_addresses(),
            ReceiverConfig::Zipkin(c) => c.listen_addresses(),
            ReceiverConfig::Lightstep(c) => c.listen_addresses(),
            ReceiverConfig::Kafka(_) | ReceiverConfig::Archive(_) => Vec::new(),
        }
    }

    /// Builds the receiver: binds its sockets, then returns its task.
    pub fn build(self, ctx: ComponentContext) -> BuildFuture {
        match self {
            ReceiverConfig::Otlp(c) => Box::pin(otlp::build(c, ctx)),
            ReceiverConfig::Jaeger(c) => Box::pin(jaeger::build(c, ctx)),
            ReceiverConfig::Zipkin(c) => Box::pin(zipkin::build(c, ctx)),
            ReceiverConfig::Lightstep(c) => Box::pin(lightstep::build(c, ctx)),
            ReceiverConfig::Kafka(c) => Box::pin(kafka::build(c, ctx)),
            ReceiverConfig::Archive(c) => Box::pin(archive::build(c, ctx)),
        }
    }
}
