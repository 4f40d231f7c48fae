//! Configuration of the LightStep receiver.

use serde::Deserialize;
use tracepipe_config::{ByteSize, ConfigError, Duration, Endpoint, Node, ServerTlsConfig};

/// A listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Listen address.
    pub endpoint: Endpoint,
    /// Serve TLS (and with `client_ca_file`, require client certificates).
    pub tls: Option<ServerTlsConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Raw {
    grpc: Option<RawListener>,
    http: Option<RawListener>,
    access_tokens: Vec<String>,
    max_request_size: ByteSize,
    admission_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawListener {
    endpoint: Option<Endpoint>,
    tls: Option<ServerTlsConfig>,
}

impl Default for Raw {
    fn default() -> Self {
        Raw { grpc: None, http: None, access_tokens: Vec::new(), max_request_size: ByteSize::mib(20), admission_timeout: Duration::from_millis(500) }
    }
}

/// `type: lightstep` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LightstepConfig {
    /// `CollectorService/Report` over gRPC (default `0.0.0.0:8282`).
    pub grpc: Option<Listener>,
    /// `POST /api/v2/reports` (default `0.0.0.0:8181`).
    pub http: Option<Listener>,
    /// Accepted access tokens; empty (or only empty strings) accepts any token.
    pub access_tokens: Vec<String>,
    /// Largest request accepted (default 20MiB).
    pub max_request_size: ByteSize,
    /// How long a report waits for room in the graph before it is refused (default 500ms).
    pub admission_timeout: Duration,
}

impl LightstepConfig {
    /// Reads and checks the settings; with neither `grpc` nor `http` named, both are enabled.
    pub fn from_node(node: &Node, file: &str) -> Result<LightstepConfig, Vec<ConfigError>> {
        let mut node = node.clone();
        let named = node.get("grpc").is_some() || node.get("http").is_some();
        node.null_to_empty_map("grpc");
        node.null_to_empty_map("http");
        let raw: Raw = node.deserialize_into(file).map_err(|e| vec![e])?;
        let (grpc, http) = if named { (raw.grpc, raw.http) } else { (Some(RawListener::default()), Some(RawListener::default())) };
        let c = LightstepConfig {
            grpc: grpc.map(|g| Listener { endpoint: g.endpoint.unwrap_or(Endpoint::new("0.0.0.0", 8282)), tls: g.tls }),
            http: http.map(|h| Listener { endpoint: h.endpoint.unwrap_or(Endpoint::new("0.0.0.0", 8181)), tls: h.tls }),
            access_tokens: raw.access_tokens.into_iter().filter(|t| !t.is_empty()).collect(),
            max_request_size: raw.max_request_size,
            admission_timeout: raw.admission_timeout,
        };
        if let (Some(g), Some(h)) = (&c.grpc, &c.http)
            && g.endpoint.conflicts_with(&h.endpoint)
        {
            let pos = node.get("http").map(|n| n.pos).unwrap_or(node.pos);
            return Err(vec![ConfigError::new(file, pos, format!("grpc and http both listen on {}", h.endpoint))]);
        }
        let mut errors = Vec::new();
        for (key, l) in [("grpc", &c.grpc), ("http", &c.http)] {
            if let Some(t) = l.as_ref().and_then(|l| l.tls.as_ref()) {
                let pos = node.get(key).and_then(|n| n.get("tls")).map(|n| n.pos).unwrap_or(node.pos);
                errors.extend(t.problems().into_iter().map(|p| ConfigError::new(file, pos, format!("{key}: {p}"))));
            }
        }
        if errors.is_empty() { Ok(c) } else { Err(errors) }
    }

    /// The listeners, for graph-wide conflict checks.
    pub fn listen_addresses(&self) -> Vec<(Endpoint, &'static str)> {
        [&self.grpc, &self.http].into_iter().flatten().map(|l| (l.endpoint.clone(), "tcp")).collect()
    }

    /// True when `token` may report.
    pub fn token_allowed(&self, token: &str) -> bool {
        self.access_tokens.is_empty() || self.access_tokens.iter().any(|t| t == token)
    }
}
