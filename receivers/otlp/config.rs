//! Configuration of the OTLP receiver.

use serde::Deserialize;
use tracepipe_config::{AuthConfig, ByteSize, ConfigError, Duration, Endpoint, Node, ServerTlsConfig};

/// `grpc:` settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Listen address (default `0.0.0.0:4317`).
    pub endpoint: Endpoint,
    /// Largest request message accepted, after decompression (default 4MiB, as gRPC and the
    /// OTel Collector).
    pub max_recv_msg_size: ByteSize,
    /// Serve TLS (and with `client_ca_file`, require client certificates).
    pub tls: Option<ServerTlsConfig>,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig { endpoint: Endpoint::new("0.0.0.0", 4317), max_recv_msg_size: ByteSize::mib(4), tls: None }
    }
}

/// `http:` settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address (default `0.0.0.0:4318`).
    pub endpoint: Endpoint,
    /// Largest request body accepted, compressed or decompressed (default 20MiB, as the OTel
    /// Collector's `max_request_body_size`).
    pub max_request_body_size: ByteSize,
    /// Path for traces (default `/v1/traces`).
    pub traces_url_path: String,
    /// Serve TLS (and with `client_ca_file`, require client certificates).
    pub tls: Option<ServerTlsConfig>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { endpoint: Endpoint::new("0.0.0.0", 4318), max_request_body_size: ByteSize::mib(20), traces_url_path: "/v1/traces".into(), tls: None }
    }
}

/// `acknowledgements:` end-to-end acknowledgements (as Vector's): the client's answer waits until
/// every sink has the request's spans — delivered, or written to a disk queue — so an answered
/// request survives a crash when the sinks have `queue.storage`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcknowledgementsConfig {
    /// Wait for the sinks before answering (default false: answer once the graph has room).
    pub enabled: bool,
    /// Longest wait; past it the client gets a retryable error (the spans may still be
    /// delivered: a retry then duplicates them). Default 10s.
    pub timeout: Duration,
}

impl Default for AcknowledgementsConfig {
    fn default() -> Self {
        AcknowledgementsConfig { enabled: false, timeout: Duration::from_secs(10) }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Raw {
    grpc: Option<GrpcConfig>,
    http: Option<HttpConfig>,
    admission_timeout: Duration,
    acknowledgements: AcknowledgementsConfig,
    auth: AuthConfig,
}

impl Default for Raw {
    fn default() -> Self {
        Raw { grpc: None, http: None, admission_timeout: Duration::from_millis(500), acknowledgements: AcknowledgementsConfig::default(), auth: AuthConfig::default() }
    }
}

/// The validated receiver configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// gRPC transport, if enabled.
    pub grpc: Option<GrpcConfig>,
    /// HTTP transport, if enabled.
    pub http: Option<HttpConfig>,
    /// How long a request waits for room in the graph before it is refused with a retryable
    /// error (default 500ms).
    pub admission_timeout: Duration,
    /// End-to-end acknowledgements.
    pub acknowledgements: AcknowledgementsConfig,
    /// Bearer tokens both transports require.
    pub auth: AuthConfig,
}

impl OtlpConfig {
    /// Reads and checks the settings. `grpc:` or `http:` with no value enables that transport
    /// with its defaults; with neither key both are enabled.
    pub fn from_node(node: &Node, file: &str) -> Result<OtlpConfig, Vec<ConfigError>> {
        let mut node = node.clone();
        let mut named = false;
        for key in ["grpc", "http"] {
            named |= node.get(key).is_some();
            node.null_to_empty_map(key);
        }
        let raw: Raw = node.deserialize_into(file).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        let (grpc, http) = if named { (raw.grpc, raw.http) } else { (Some(GrpcConfig::default()), Some(HttpConfig::default())) };
        if let Some(h) = &http
            && !h.traces_url_path.starts_with('/')
        {
            let pos = node.get("http").and_then(|h| h.get("traces_url_path")).map(|n| n.pos).unwrap_or(node.pos);
            errors.push(ConfigError::new(file, pos, "traces_url_path must start with `/`"));
        }
        for (key, size) in [("grpc", grpc.as_ref().map(|g| g.max_recv_msg_size)), ("http", http.as_ref().map(|h| h.max_request_body_size))] {
            if size == Some(ByteSize(0)) {
                let pos = node.get(key).map(|n| n.pos).unwrap_or(node.pos);
                errors.push(ConfigError::new(file, pos, format!("{key}: the size limit must be above 0")));
            }
        }
        if let (Some(g), Some(h)) = (&grpc, &http)
            && g.endpoint.conflicts_with(&h.endpoint)
        {
            let pos = node.get("http").map(|n| n.pos).unwrap_or(node.pos);
            errors.push(ConfigError::new(file, pos, format!("grpc and http both listen on {}", h.endpoint)));
        }
        if raw.acknowledgements.enabled && raw.acknowledgements.timeout.get().is_zero() {
            let pos = node.get("acknowledgements").map(|n| n.pos).unwrap_or(node.pos);
            errors.push(ConfigError::new(file, pos, "acknowledgements: timeout must be above 0"));
        }
        for (key, tls) in [("grpc", grpc.as_ref().and_then(|g| g.tls.as_ref())), ("http", http.as_ref().and_then(|h| h.tls.as_ref()))] {
            if let Some(t) = tls {
                let pos = node.get(key).and_then(|n| n.get("tls")).map(|n| n.pos).unwrap_or(node.pos);
                errors.extend(t.problems().into_iter().map(|p| ConfigError::new(file, pos, format!("{key}: {p}"))));
            }
        }
        let pos = node.get("auth").map(|n| n.pos).unwrap_or(node.pos);
        errors.extend(raw.auth.problems().into_iter().map(|p| ConfigError::new(file, pos, p)));
        if errors.is_empty() { Ok(OtlpConfig { grpc, http, admission_timeout: raw.admission_timeout, acknowledgements: raw.acknowledgements, auth: raw.auth }) } else { Err(errors) }
    }

    /// The listeners, for graph-wide conflict checks.
    pub fn listen_addresses(&self) -> Vec<(Endpoint, &'static str)> {
        let mut v = Vec::new();
        if let Some(g) = &self.grpc {
            v.push((g.endpoint.clone(), "tcp"));
        }
        if let Some(h) = &self.http {
            v.push((h.endpoint.clone(), "tcp"));
        }
        v
    }
}
