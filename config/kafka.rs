//! Checks both Kafka components (the `kafka` receiver and sink) make of their shared settings:
//! broker addresses, the topic name, the client id, and `librdkafka_options` that must not
//! override a setting the component owns; and the record [`KafkaEncoding`] both use.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{ConfigError, Node};

/// The value format of Kafka records (`encoding:`), as the OTel Collector names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KafkaEncoding {
    /// OTLP protobuf: an `ExportTraceServiceRequest` (= `TracesData`) (default; the OTel
    /// Collector's `otlp_proto`, Rotel's `protobuf`).
    #[default]
    OtlpProto,
    /// OTLP/JSON: `{"resourceSpans": [...]}` with hex ids (the OTel Collector's `otlp_json`).
    OtlpJson,
}

/// Kafka's rule for topic names: 1 to 249 of `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub fn valid_kafka_topic(t: &str) -> bool {
    !t.is_empty() && t.len() <= 249 && t != "." && t != ".." && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A Kafka bootstrap address: `host:port` with a numeric port and no scheme.
pub fn valid_kafka_broker(b: &str) -> bool {
    match b.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && !host.contains("://") && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

/// The settings every Kafka component has.
pub struct KafkaCommon<'a> {
    /// Bootstrap `host:port` list; an entry may hold several, comma-separated.
    pub brokers: &'a [String],
    /// Topic name.
    pub topic: &'a str,
    /// `client.id`.
    pub client_id: &'a str,
    /// Extra librdkafka properties.
    pub librdkafka_options: &'a BTreeMap<String, String>,
    /// librdkafka properties the component sets from its own settings.
    pub own_keys: &'a [&'a str],
    /// "sink" or "receiver", for messages.
    pub kind: &'a str,
}

/// Every problem with the shared settings, positioned at the offending key of `node`.
pub fn check_kafka_common(node: &Node, file: &str, c: KafkaCommon<'_>) -> Vec<ConfigError> {
    let at = |k: &str| node.get(k).map(|n| n.pos).unwrap_or(node.pos);
    let mut errors = Vec::new();
    if c.brokers.is_empty() {
        errors.push(ConfigError::new(file, at("brokers"), "brokers must list at least one host:port"));
    }
    // An entry may itself be a comma-separated list (`brokers: ["${env:KAFKA_BROKERS}"]`).
    for b in c.brokers.iter().flat_map(|b| b.split(',')).map(str::trim) {
        if !valid_kafka_broker(b) {
            errors.push(ConfigError::new(file, at("brokers"), format!("invalid broker {b:?}: expected host:port, e.g. kafka-0.kafka:9092")));
        }
    }
    if !valid_kafka_topic(c.topic) {
        errors.push(ConfigError::new(file, at("topic"), format!("invalid topic {:?}: 1 to 249 characters of a-z, A-Z, 0-9, '.', '_' and '-'", c.topic)));
    }
    if c.client_id.is_empty() {
        errors.push(ConfigError::new(file, at("client_id"), "client_id must not be empty"));
    }
    for k in c.librdkafka_options.keys() {
        if c.own_keys.contains(&k.as_str()) {
            errors.push(ConfigError::new(
                file,
                at("librdkafka_options"),
                format!("librdkafka_options: `{k}` is set by the {}'s own settings; use those instead", c.kind),
            ));
        }
    }
    errors
}
