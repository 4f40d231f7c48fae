//! Configuration of the Zipkin receiver.

use serde::Deserialize;
use tracepipe_config::{AuthConfig, ByteSize, ConfigError, Duration, Endpoint, Node, ServerTlsConfig};

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
    /// Serve TLS (and with `client_ca_file`, require client certificates).
    pub tls: Option<ServerTlsConfig>,
    /// Bearer tokens required of every request.
    pub auth: AuthConfig,
}

impl Default for ZipkinConfig {
    fn default() -> Self {
        ZipkinConfig {
            endpoint: Endpoint::new("0.0.0.0", 9411),
            envoy_proto_ids: EnvoyProtoIds::Auto,
            max_request_body_size: ByteSize::mib(20),
            admission_timeout: Duration::from_millis(500),
            tls: None,
            auth: AuthConfig::default(),
        }
    }
}

impl ZipkinConfig {
    /// Reads and checks the settings.
    pub fn from_node(node: &Node, file: &str) -> Result<ZipkinConfig, Vec<ConfigError>> {
        let c: ZipkinConfig = node.deserialize_into(file).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        if c.max_request_body_size.get() == 0 {
            let pos = node.get("max_request_body_size").map(|n| n.pos).unwrap_or(node.pos);
            errors.push(ConfigError::new(file, pos, "max_request_body_size must be above 0"));
        }
        let at = |k: &str| node.get(k).map(|n| n.pos).unwrap_or(node.pos);
        errors.extend(c.tls.iter().flat_map(|t| t.problems()).map(|p| ConfigError::new(file, at("tls"), p)));
        errors.extend(c.auth.problems().into_iter().map(|p| ConfigError::new(file, at("auth"), p)));
        if errors.is_empty() { Ok(c) } else { Err(errors) }
    }

    /// The listener, for graph-wide conflict checks.
    pub fn listen_addresses(&self) -> Vec<(Endpoint, &'static str)> {
        vec![(self.endpoint.clone(), "tcp")]
    }
}
