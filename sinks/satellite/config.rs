//! Configuration of the satellite sink.

use std::collections::BTreeMap;

use serde::Deserialize;
use tracepipe_config::{ByteSize, ConfigError, Duration, Node};

use crate::otlp::{Compression, OtlpSinkConfig, Protocol, QueueConfig, RetryConfig, TlsConfig};

/// The wire protocol to the satellite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SatelliteProtocol {
    /// OTLP over gRPC (default; what current satellites and `ingest.lightstep.com` take).
    #[default]
    OtlpGrpc,
    /// OTLP over HTTP (protobuf), `POST /traces/otlp/v0.9` unless the endpoint has a path.
    OtlpHttp,
    /// LightStep `CollectorService/Report` over gRPC (older satellites).
    ReportGrpc,
    /// LightStep `POST /api/v2/reports` (protobuf) over HTTP.
    ReportHttp,
}

/// `type: satellite` settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SatelliteConfig {
    /// `host:port` of the satellite pool (default `ingest.lightstep.com:443`); a URL with a path
    /// keeps its path for the HTTP protocols.
    pub endpoint: String,
    /// `otlp_grpc` (default), `otlp_http`, `report_grpc`, `report_http`.
    pub protocol: SatelliteProtocol,
    /// The project's access token (required).
    pub access_token: String,
    /// Spans of these services (resource `service.name`) go with their own project's token.
    pub access_tokens_by_service: BTreeMap<String, String>,
    /// TLS to the satellite.
    pub tls: TlsConfig,
    /// `gzip`, `zstd` or `none`; default gzip, but none for `report_http` (LightStep tracers
    /// post reports uncompressed and satellites need not decompress them). Report requests:
    /// gzip or none.
    pub compression: Option<Compression>,
    /// Per-request timeout (default 10s).
    pub timeout: Duration,
    /// Largest request, uncompressed (default 4MiB).
    pub max_request_bytes: ByteSize,
    /// As the otlp sink's.
    pub retry: RetryConfig,
    /// As the otlp sink's (in memory or on disk).
    pub queue: QueueConfig,
}

impl Default for SatelliteConfig {
    fn default() -> Self {
        let o = OtlpSinkConfig::default();
        SatelliteConfig {
            endpoint: "ingest.lightstep.com:443".into(),
            protocol: SatelliteProtocol::OtlpGrpc,
            access_token: String::new(),
            access_tokens_by_service: BTreeMap::new(),
            tls: TlsConfig::default(),
            compression: None,
            timeout: o.timeout,
            max_request_bytes: o.max_request_bytes,
            retry: o.retry,
            queue: o.queue,
        }
    }
}

/// LightStep's OTLP/HTTP path on its public ingest and satellites.
const OTLP_HTTP_PATH: &str = "/traces/otlp/v0.9";

impl SatelliteConfig {
    /// Reads and checks the settings (no file is opened here).
    pub fn from_node(node: &Node, file: &str) -> Result<SatelliteConfig, Vec<ConfigError>> {
        let c: SatelliteConfig = node.deserialize_into(file).map_err(|e| vec![e])?;
        let at = |key: &str| node.get(key).map(|n| n.pos).unwrap_or(node.pos);
        let mut errors = Vec::new();
        if c.access_token.trim().is_empty() {
            errors.push(ConfigError::new(file, at("access_token"), "access_token is required (the LightStep project's token; is its environment variable set?)"));
        }
        for (service, token) in &c.access_tokens_by_service {
            if token.trim().is_empty() {
                errors.push(ConfigError::new(file, at("access_tokens_by_service"), format!("access_tokens_by_service.{service}: the token is empty")));
            }
        }
        if c.tls.insecure && (c.tls.ca_file.is_some() || c.tls.cert_file.is_some()) {
            errors.push(ConfigError::new(file, at("tls"), "tls: insecure (plaintext) cannot be combined with ca_file or cert_file"));
        }
        if matches!(c.protocol, SatelliteProtocol::ReportGrpc | SatelliteProtocol::ReportHttp) && c.compression == Some(Compression::Zstd) {
            errors.push(ConfigError::new(file, at("compression"), "compression: zstd is not spoken by LightStep satellites' Report endpoints; use gzip or none"));
        }
        // The rest (endpoint, headers, queue, retry, sizes) is checked as the otlp sink checks it.
        for token in std::iter::once(&c.access_token).chain(c.access_tokens_by_service.values()) {
            match c.to_otlp(token) {
                Ok(o) => errors.extend(o.check(node, file)),
                Err(e) => errors.push(ConfigError::new(file, at("endpoint"), e)),
            }
        }
        let mut seen = std::collections::HashSet::new();
        errors.retain(|e| seen.insert(e.to_string()));
        if errors.is_empty() { Ok(c) } else { Err(errors) }
    }

    /// The otlp sink configuration this sink runs with for one `token`.
    pub fn to_otlp(&self, token: &str) -> Result<OtlpSinkConfig, String> {
        let e = self.endpoint.trim();
        let (scheme, rest) = match e.split_once("://") {
            Some((s, r)) => (Some(s), r),
            None => (None, e),
        };
        if rest.is_empty() || rest.starts_with(['/', ':']) {
            return Err(format!("invalid endpoint {e:?}: expected host:port, e.g. lightstep-satellite.lightstep:9292"));
        }
        let tls = match scheme {
            Some("https") => true,
            Some("http") => false,
            None => !self.tls.insecure,
            Some(other) => return Err(format!("invalid endpoint {e:?}: scheme {other}:// (use host:port, http:// or https://)")),
        };
        if scheme == Some("https") && self.tls.insecure {
            return Err("tls.insecure with an https:// endpoint".into());
        }
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, format!("/{p}")),
            None => (rest, String::new()),
        };
        let path = match (self.protocol, path.as_str()) {
            (SatelliteProtocol::OtlpHttp, "" | "/") => OTLP_HTTP_PATH.to_owned(),
            (SatelliteProtocol::ReportHttp, "" | "/") => "/api/v2/reports".to_owned(),
            _ => path,
        };
        let protocol = match self.protocol {
            SatelliteProtocol::OtlpGrpc | SatelliteProtocol::ReportGrpc => Protocol::Grpc,
            SatelliteProtocol::OtlpHttp | SatelliteProtocol::ReportHttp => Protocol::HttpProtobuf,
        };
        Ok(OtlpSinkConfig {
            endpoint: format!("{}://{authority}{path}", if tls { "https" } else { "http" }),
            protocol,
            compression: self.compression.unwrap_or(if self.protocol == SatelliteProtocol::ReportHttp { Compression::None } else { Compression::Gzip }),
            headers: BTreeMap::from([("lightstep-access-token".to_owned(), token.to_owned())]),
            // The scheme carries the choice; the otlp sink does not see `insecure`.
            tls: TlsConfig { insecure: false, ..self.tls.clone() },
            timeout: self.timeout,
            max_request_bytes: self.max_request_bytes,
            retry: self.retry.clone(),
            queue: self.queue.clone(),
        })
    }
}
