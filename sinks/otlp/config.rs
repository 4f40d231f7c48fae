//! Configuration of the OTLP sink.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use tracepipe_config::{ByteSize, ConfigError, Duration, Node};

/// Wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum Protocol {
    /// OTLP/gRPC.
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// OTLP/HTTP with JSON bodies.
    #[serde(rename = "http/json")]
    HttpJson,
}

/// Body compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Uncompressed.
    None,
    /// gzip (default).
    #[default]
    Gzip,
    /// zstd.
    Zstd,
}

/// `tls:` settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Plaintext, as the OTel Collector's `tls.insecure` (an `http://` endpoint is plaintext
    /// anyway; with `https://` it is an error). The satellite sink, whose endpoint is `host:port`,
    /// is TLS unless this is set.
    pub insecure: bool,
    /// PEM file of CA certificates to trust instead of the built-in roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate (testing only).
    pub insecure_skip_verify: bool,
    /// Server name to verify, when it differs from the endpoint's host.
    pub server_name: Option<String>,
}

/// `retry:` settings (the OTel Collector's `retry_on_failure`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Retry retryable failures at all (default true).
    pub enabled: bool,
    /// First wait (default 5s).
    pub initial_interval: Duration,
    /// Longest wait (default 30s).
    pub max_interval: Duration,
    /// Give up after this long since the first attempt; 0 = never (default 300s).
    pub max_elapsed_time: Duration,
    /// Growth factor of the wait (default 1.5).
    pub multiplier: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            enabled: true,
            initial_interval: Duration::from_secs(5),
            max_interval: Duration::from_secs(30),
            max_elapsed_time: Duration::from_secs(300),
            multiplier: 1.5,
        }
    }
}

/// What the queue does when full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Stop reading input: backpressure reaches the receivers (default).
    #[default]
    Block,
    /// Drop the incoming batch and count it (`reason="queue_full"`).
    DropNewest,
}

/// `queue:` settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Capacity in spans (default 100000).
    pub max_spans: usize,
    /// Capacity in bytes, counted as the batches' encoded size (default 256MiB): whichever of
    /// the two fills first applies `when_full`. A batch larger than this alone is queued alone.
    pub max_bytes: ByteSize,
    /// `block` or `drop_newest`.
    pub when_full: WhenFull,
    /// Concurrent export requests (default 4).
    pub num_consumers: usize,
    /// Keep the queue on disk (absent: in memory).
    pub storage: Option<StorageConfig>,
}

pub use crate::queue::StorageConfig;

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig { max_spans: 100_000, max_bytes: ByteSize::mib(256), when_full: WhenFull::Block, num_consumers: 4, storage: None }
    }
}

/// Smallest `max_request_bytes`: room for one small span with its envelopes.
const MIN_REQUEST_BYTES: u64 = 1024;
/// Largest `max_request_bytes` (protobuf messages are limited to 2 GiB).
const MAX_REQUEST_BYTES: u64 = 2 << 30;

/// The validated sink configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpSinkConfig {
    /// `http://host:port` or `https://host:port` (a path is kept for HTTP protocols).
    pub endpoint: String,
    /// `grpc`, `http/protobuf` or `http/json`.
    pub protocol: Protocol,
    /// `none`, `gzip` or `zstd`.
    pub compression: Compression,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// TLS settings for `https://` endpoints.
    pub tls: TlsConfig,
    /// Per-request timeout (default 10s).
    pub timeout: Duration,
    /// Largest request body, counted uncompressed as servers count it (default 4MiB, the gRPC
    /// default a server accepts). Bigger batches are cut by spans before sending; a request the
    /// server still refuses as too large is halved; a span bigger than this alone is dropped
    /// and counted (`reason="message_too_large"`).
    pub max_request_bytes: ByteSize,
    /// Retry policy.
    pub retry: RetryConfig,
    /// Queue policy.
    pub queue: QueueConfig,
}

impl Default for OtlpSinkConfig {
    fn default() -> Self {
        OtlpSinkConfig {
            endpoint: String::new(),
            protocol: Protocol::Grpc,
            compression: Compression::Gzip,
            headers: BTreeMap::new(),
            tls: TlsConfig::default(),
            timeout: Duration::from_secs(10),
            max_request_bytes: ByteSize::mib(4),
            retry: RetryConfig::default(),
            queue: QueueConfig::default(),
        }
    }
}

impl OtlpSinkConfig {
    /// Reads and checks the settings (no file is opened here; TLS files are read at build).
    pub fn from_node(node: &Node, file: &str) -> Result<OtlpSinkConfig, Vec<ConfigError>> {
        let c: OtlpSinkConfig = node.deserialize_into(file).map_err(|e| vec![e])?;
        let errors = c.check(node, file);
        if errors.is_empty() { Ok(c) } else { Err(errors) }
    }

    /// What is wrong with the settings, placed at their keys in `node` (the satellite sink, which
    /// runs on this configuration, shares the key names).
    pub fn check(&self, node: &Node, file: &str) -> Vec<ConfigError> {
        let c = self;
        let at = |key: &str| node.get(key).map(|n| n.pos).unwrap_or(node.pos);
        let mut errors = Vec::new();
        match c.endpoint.parse::<http::Uri>() {
            _ if c.endpoint.is_empty() => errors.push(ConfigError::new(file, node.pos, "`endpoint` is required, e.g. http://collector:4317")),
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
            _ => errors.push(ConfigError::new(
                file,
                at("endpoint"),
                format!("invalid endpoint {:?}: expected http://host:port or https://host:port", c.endpoint),
            )),
        }
        for (k, v) in &c.headers {
            if http::header::HeaderName::from_bytes(k.as_bytes()).is_err() || http::header::HeaderValue::from_str(v).is_err() {
                errors.push(ConfigError::new(file, at("headers"), format!("invalid header {k:?}")));
            }
        }
        if c.tls.insecure && c.endpoint.starts_with("https://") {
            errors.push(ConfigError::new(file, at("tls"), "tls: insecure (plaintext) with an https:// endpoint"));
        }
        if c.tls.cert_file.is_some() != c.tls.key_file.is_some() {
            errors.push(ConfigError::new(file, at("tls"), "tls: cert_file and key_file must be given together"));
        }
        if c.queue.max_spans == 0 || c.queue.num_consumers == 0 || c.queue.max_bytes.get() < 1024 {
            errors.push(ConfigError::new(file, at("queue"), "queue: max_spans and num_consumers must be above 0, max_bytes at least 1KiB"));
        }
        if let Some(st) = &c.queue.storage {
            st.check(file, at("queue"), &mut errors);
        }
        if !(c.retry.multiplier >= 1.0) {
            errors.push(ConfigError::new(file, at("retry"), "retry: multiplier must be at least 1"));
        }
        if !(MIN_REQUEST_BYTES..=MAX_REQUEST_BYTES).contains(&c.max_request_bytes.get()) {
            errors.push(ConfigError::new(file, at("max_request_bytes"), "max_request_bytes must be between 1KiB and 2GiB"));
        }
        if c.timeout.get().is_zero() {
            errors.push(ConfigError::new(file, at("timeout"), "timeout must be above 0"));
        }
        errors
    }
}
