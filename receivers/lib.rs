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

#[cfg(feature = "archive")]
pub mod archive;
pub mod jaeger;
pub mod kafka;
pub mod lightstep;
pub mod otlp;
mod serve;
pub mod zipkin;

use tracepipe_config::{ComponentDecl, ConfigError, Endpoint, Node, Value};
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
    #[cfg(feature = "archive")]
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
        #[cfg(feature = "archive")]
        "archive" => archive::ArchiveConfig::from_node(&decl.body, file).map(ReceiverConfig::Archive),
        #[cfg(not(feature = "archive"))]
        "archive" => Err(vec![tracepipe_config::not_in_this_build(file, decl.type_pos, "receiver type `archive`")]),
        "" => Err(vec![]), // reported by the loader
        other => Err(vec![ConfigError::new(
            file,
            decl.type_pos,
            format!("unknown receiver type `{other}`; known types: {}", TYPES.join(", ")),
        )]),
    }
}

/// The addresses a receiver whose settings do not validate would listen on, so that a
/// listen-address conflict is reported together with the receiver's own errors: its listener
/// settings alone are validated (every scalar but a valid `endpoint` dropped; a listener whose
/// endpoint is invalid dropped whole), and of the addresses that yields, only those written in the
/// file count (a default filled in for a dropped listener is not one the user asked for).
pub fn declared_listen_addresses(decl: &ComponentDecl, file: &str) -> Vec<(Endpoint, &'static str)> {
    fn endpoint(n: &Node) -> Option<Endpoint> {
        match &n.value {
            Value::Str(s) => s.parse().ok(),
            _ => None,
        }
    }
    fn prune(n: &Node, written: &mut Vec<Endpoint>) -> Node {
        let value = match &n.value {
            Value::Map(kv) => Value::Map(
                kv.iter()
                    .filter(|(k, v)| match &v.value {
                        Value::Map(inner) => inner.iter().all(|(k, v)| k.name != "endpoint" || endpoint(v).is_some()),
                        Value::Null | Value::Bool(_) => true,
                        _ => k.name == "endpoint" && endpoint(v).is_some(),
                    })
                    .map(|(k, v)| {
                        if k.name == "endpoint"
                            && let Some(e) = endpoint(v)
                        {
                            written.push(e);
                        }
                        (k.clone(), prune(v, written))
                    })
                    .collect(),
            ),
            other => other.clone(),
        };
        Node { pos: n.pos, value }
    }
    let mut written = Vec::new();
    let pruned = ComponentDecl { body: prune(&decl.body, &mut written), ..decl.clone() };
    let found = validate(&pruned, file).map(|r| r.listen_addresses()).unwrap_or_default();
    found.into_iter().filter(|(e, _)| written.contains(e)).collect()
}

impl ReceiverConfig {
    /// Addresses this receiver will listen on, with their transport, for conflict checks.
    pub fn listen_addresses(&self) -> Vec<(Endpoint, &'static str)> {
        match self {
            ReceiverConfig::Otlp(c) => c.listen_addresses(),
            ReceiverConfig::Jaeger(c) => c.listen_addresses(),
            ReceiverConfig::Zipkin(c) => c.listen_addresses(),
            ReceiverConfig::Lightstep(c) => c.listen_addresses(),
            ReceiverConfig::Kafka(_) => Vec::new(),
            #[cfg(feature = "archive")]
            ReceiverConfig::Archive(_) => Vec::new(),
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
            #[cfg(feature = "archive")]
            ReceiverConfig::Archive(c) => Box::pin(archive::build(c, ctx)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(yaml: &str) -> Vec<(String, &'static str)> {
        let (cfg, _) = tracepipe_config::load("t.yaml", yaml, &|_| None);
        let decl = &cfg.receivers[0];
        assert!(validate(decl, "t.yaml").is_err(), "the fixture is meant not to validate");
        declared_listen_addresses(decl, "t.yaml").into_iter().map(|(e, t)| (e.to_string(), t)).collect()
    }

    #[test]
    fn listeners_of_a_receiver_that_does_not_validate_still_count() {
        // An unknown field elsewhere: the written endpoint counts.
        assert_eq!(declared("receivers:\n  z: { type: zipkin, endpoint: 127.0.0.1:9411, bogus: 1 }\n"), vec![("127.0.0.1:9411".into(), "tcp")]);
        // One listener's endpoint is invalid: the other still counts, and no default stands in
        // for the invalid one.
        assert_eq!(
            declared("receivers:\n  o: { type: otlp, grpc: { endpoint: 127.0.0.1:4317 }, http: { endpoint: 'localhost:99999' } }\n"),
            vec![("127.0.0.1:4317".into(), "tcp")]
        );
        // UDP listeners keep their transport.
        assert_eq!(
            declared("receivers:\n  j: { type: jaeger, thrift_compact: { endpoint: 127.0.0.1:6831, workers: 0 } }\n"),
            vec![("127.0.0.1:6831".into(), "udp")]
        );
        // Nothing written: nothing claimed (defaults are not what the user asked for).
        assert_eq!(declared("receivers:\n  z: { type: zipkin, bogus: 1 }\n"), vec![]);
    }
}
