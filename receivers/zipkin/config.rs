//! Configuration of the Zipkin receiver.

use serde::Deserialize;
use tracepipe_config::{ByteSize, ConfigError, Duration, Endpoint, Node};

/// When to byte-reverse span and parent ids of proto3 payloads (Envoy's encoder writes them in
/// host byte order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EnvoyProtoIds {
    /// Only for requests Envoy sent (it adds `x-envoy-internal` / `x-envoy-expected-rq-timeout-ms`).
    #[default]
    Auto,
    /// For every proto3 request.
    On,
    /// Never.
    Off,
}

/// `type: zipkin` settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZipkinConfig {
    /// Listen address (default `0.0.0.0:9411`).
    pub endpoint: Endpoint,
    /// Envoy proto3 id repair: `auto` (default), `on`, `off`.
    pub envoy_proto_ids: EnvoyProtoIds,
    /// Largest body accepted, compressed or decompressed (default 20MiB).
    pub max_request_body_size: ByteSize,
    /// How long a request waits for room in the graph before 503 (default 500ms).
    pub admission_timeout: Duration,
}

impl Default for ZipkinConfig {
    fn default() -> Self {
        ZipkinConfig {
            endpoint: Endpoint::new("0.0.0.0", 9411),
            envoy_proto_ids: EnvoyProtoIds::Auto,
            max_request_body_size: ByteSize::mib(20),
            admission_timeout: Duration::from_millis(500),
        }
    }
}

impl ZipkinConfig {
    /// Reads and checks the settings.
    pub fn from_node(node: &Node, file: &str) -> Result<ZipkinConfig, Vec<ConfigError>> {
        let c: ZipkinConfig = node.deserialize_into(file).map_err(|e| vec![e])?;
        if c.max_request_body_size.get() == 0 {
            let pos = node.get("max_request_body_size").map(|n| n.pos).unwrap_or(node.pos);
            return Err(vec![ConfigError::new(file, pos, "max_request_body_size must be above 0")]);
        }
        Ok(c)
    }

    /// The listener, for graph-wide conflict checks.
    pub fn listen_addresses(&self) -> Vec<(Endpoint, &'static str)> {
        vec![(self.endpoint.clone(), "tcp")]
    }
}
