//! Configuration of the Jaeger receiver.

use std::path::PathBuf;

use serde::Deserialize;
use tracepipe_config::{AuthConfig, ByteSize, ConfigError, Duration, Endpoint, Node, ServerTlsConfig};

/// One agent UDP port (`thrift_compact` or `thrift_binary`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UdpConfig {
    /// Listen address (default `0.0.0.0:6831` compact, `0.0.0.0:6832` binary, as the Jaeger agent).
    pub endpoint: Option<Endpoint>,
    /// Datagrams larger than this are counted as malformed and dropped (default 65000, the
    /// Jaeger agent's limit).
    pub max_packet_size: usize,
    /// Decoding tasks (default 2).
    pub workers: usize,
    /// Datagrams waiting for a worker; when full, whole datagrams are dropped and their spans
    /// counted as refused (default 1000).
    pub queue_packets: usize,
    /// Kernel receive buffer (`SO_RCVBUF`) asked for the socket (default 8MiB; Linux caps it at
    /// `net.core.rmem_max`). A larger buffer absorbs bursts the receive loop has not read yet.
    pub socket_buffer_size: ByteSize,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig { endpoint: None, max_packet_size: 65000, workers: 2, queue_packets: 1000, socket_buffer_size: ByteSize::mib(8) }
    }
}

/// The collector HTTP endpoint (`POST /api/traces`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address (default `0.0.0.0:14268`).
    pub endpoint: Endpoint,
    /// Largest body accepted (default 20MiB).
    pub max_request_body_size: ByteSize,
    /// Serve TLS (and with `client_ca_file`, require client certificates).
    pub tls: Option<ServerTlsConfig>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { endpoint: Endpoint::new("0.0.0.0", 14268), max_request_body_size: ByteSize::mib(20), tls: None }
    }
}

/// The remote-sampling endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Listen address (default `0.0.0.0:5778`).
    pub endpoint: Endpoint,
    /// A Jaeger strategies file (`--sampling.strategies-file` format); without one every service
    /// gets probabilistic 0.001.
    pub strategies_file: Option<PathBuf>,
    /// How often the file is checked for changes; 0 = never (default 30s).
    pub reload_interval: Duration,
    /// Serve TLS (and with `client_ca_file`, require client certificates).
    pub tls: Option<ServerTlsConfig>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig { endpoint: Endpoint::new("0.0.0.0", 5778), strategies_file: None, reload_interval: Duration::from_secs(30), tls: None }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Raw {
    thrift_compact: Option<UdpConfig>,
    thrift_binary: Option<UdpConfig>,
    thrift_http: Option<HttpConfig>,
    sampling: Option<SamplingConfig>,
    admission_timeout: Duration,
    auth: AuthConfig,
}

impl Default for Raw {
    fn default() -> Self {
        Raw { thrift_compact: None, thrift_binary: None, thrift_http: None, sampling: None, admission_timeout: Duration::from_millis(200), auth: AuthConfig::default() }
    }
}

/// The validated receiver configuration; each transport is optional.
#[derive(Debug, Clone, PartialEq)]
pub struct JaegerConfig {
    /// Agent UDP, thrift compact.
    pub thrift_compact: Option<UdpConfig>,
    /// Agent UDP, thrift binary.
    pub thrift_binary: Option<UdpConfig>,
    /// Collector HTTP.
    pub thrift_http: Option<HttpConfig>,
    /// Remote sampling.
    pub sampling: Option<SamplingConfig>,
    /// How long a batch waits for room in the graph before it is refused (HTTP 503) or dropped
    /// and counted (UDP) (default 200ms).
    pub admission_timeout: Duration,
    /// Bearer tokens required of every `thrift_http` request (the sampling endpoint, which Jaeger
    /// clients poll without credentials, is not checked).
    pub auth: AuthConfig,
}

const TRANSPORTS: [&str; 4] = ["thrift_compact", "thrift_binary", "thrift_http", "sampling"];

impl JaegerConfig {
    /// Reads and checks the settings. A transport named without settings gets its defaults;
    /// with none named, all four are enabled on their standard ports.
    pub fn from_node(node: &Node, file: &str) -> Result<JaegerConfig, Vec<ConfigError>> {
        let mut node = node.clone();
        let named = TRANSPORTS.iter().any(|k| node.get(k).is_some());
        for k in TRANSPORTS {
            node.null_to_empty_map(k);
        }
        let raw: Raw = node.deserialize_into(file).map_err(|e| vec![e])?;
        let mut c = if named {
            JaegerConfig { thrift_compact: raw.thrift_compact, thrift_binary: raw.thrift_binary, thrift_http: raw.thrift_http, sampling: raw.sampling, admission_timeout: raw.admission_timeout, auth: raw.auth }
        } else {
            JaegerConfig {
                thrift_compact: Some(UdpConfig::default()),
                thrift_binary: Some(UdpConfig::default()),
                thrift_http: Some(HttpConfig::default()),
                sampling: Some(SamplingConfig::default()),
                admission_timeout: raw.admission_timeout,
                auth: raw.auth,
            }
        };
        if let Some(u) = &mut c.thrift_compact {
            u.endpoint.get_or_insert(Endpoint::new("0.0.0.0", 6831));
        }
        if let Some(u) = &mut c.thrift_binary {
            u.endpoint.get_or_insert(Endpoint::new("0.0.0.0", 6832));
        }
        let mut errors = Vec::new();
        for (key, u) in [("thrift_compact", &c.thrift_compact), ("thrift_binary", &c.thrift_binary)] {
            if let Some(u) = u {
                let pos = node.get(key).map(|n| n.pos).unwrap_or(node.pos);
                if u.max_packet_size == 0 || u.max_packet_size > 65507 {
                    errors.push(ConfigError::new(file, pos, format!("{key}: max_packet_size must be from 1 to 65507 (the largest UDP payload)")));
                }
                if u.workers == 0 || u.queue_packets == 0 {
                    errors.push(ConfigError::new(file, pos, format!("{key}: workers and queue_packets must be above 0")));
                }
            }
        }
        for (key, tls) in [("thrift_http", c.thrift_http.as_ref().and_then(|h| h.tls.as_ref())), ("sampling", c.sampling.as_ref().and_then(|s| s.tls.as_ref()))] {
            if let Some(t) = tls {
                let pos = node.get(key).and_then(|n| n.get("tls")).map(|n| n.pos).unwrap_or(node.pos);
                errors.extend(t.problems().into_iter().map(|p| ConfigError::new(file, pos, format!("{key}: {p}"))));
            }
        }
        let pos = node.get("auth").map(|n| n.pos).unwrap_or(node.pos);
        errors.extend(c.auth.problems().into_iter().map(|p| ConfigError::new(file, pos, p)));
        if errors.is_empty() { Ok(c) } else { Err(errors) }
    }

    /// The listeners, for graph-wide conflict checks.
    pub fn listen_addresses(&self) -> Vec<(Endpoint, &'static str)> {
        let mut v = Vec::new();
        for u in [&self.thrift_compact, &self.thrift_binary].into_iter().flatten() {
            if let Some(e) = &u.endpoint {
                v.push((e.clone(), "udp"));
            }
        }
        if let Some(h) = &self.thrift_http {
            v.push((h.endpoint.clone(), "tcp"));
        }
        if let Some(s) = &self.sampling {
            v.push((s.endpoint.clone(), "tcp"));
        }
        v
    }
}
