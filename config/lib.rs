//! # tracepipe-config
//!
//! Turns one YAML file into a typed, validated description of the component graph — and does
//! nothing else: no sockets are opened and no files are written here.
//!
//! The YAML is read by `serde-saphyr` into a [`Node`] tree where every value keeps its line and
//! column. `${env:NAME}` and `${env:NAME:-default}` are expanded inside string values. Each
//! component's own settings are later deserialized from its [`Node`] with [`Node::deserialize_into`],
//! so an error in any field points at that field. [`load`] collects *every* error it finds (syntax,
//! unknown keys, unknown or missing inputs, cycles, unreachable components) and returns them
//! together, each with `file:line:column`.
//!
//! Component crates (receivers, processors, sinks) own their config structs; this crate gives them
//! the shared value types: [`Duration`], [`ByteSize`], [`Endpoint`], a listener's [`ServerTlsConfig`]
//! and [`AuthConfig`], and the checks both
//! Kafka components make of their shared settings ([`check_kafka_common`]).

mod error;
mod graph;
mod kafka;
mod node;
mod tls;
mod types;

#[cfg(test)]
mod tests;

pub use error::{not_in_this_build, not_in_this_build_message, ConfigError, ConfigErrors, Pos};
pub use graph::{load, ComponentDecl, ComponentKind, ConfigFile, LogFormat, LogsConfig, MemoryConfig, MetricsConfig, TelemetryConfig};
pub use node::{Key, Node, Value};
pub use kafka::{
    check_kafka_common, kafka_security_properties, valid_kafka_broker, valid_kafka_topic, KafkaAuthConfig, KafkaCommon, KafkaEncoding, KafkaSaslConfig, KafkaTlsConfig, SaslMechanism,
    KAFKA_SECURITY_KEYS,
};
pub use tls::{AuthConfig, ServerTlsConfig, TlsVersion};
pub use types::{ByteSize, Duration, Endpoint};
