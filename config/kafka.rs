//! Checks both Kafka components (the `kafka` receiver and sink) make of their shared settings:
//! broker addresses, the topic name, the client id, and `librdkafka_options` that must not
//! override a setting the component owns; the record [`KafkaEncoding`] both use; and their
//! security settings, named as the OTel Collector's kafka exporter and receiver name them:
//! `tls` ([`KafkaTlsConfig`]) and `auth.sasl` ([`KafkaSaslConfig`]), turned into librdkafka
//! properties by [`kafka_security_properties`].

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

/// `tls:` — the connection to the brokers over TLS (absent: plaintext).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaTlsConfig {
    /// CA bundle (PEM) the brokers' certificates are checked against; absent: the system's
    /// roots, as librdkafka finds them.
    pub ca_file: Option<String>,
    /// Client certificate (PEM), for brokers that require one (with `key_file`).
    pub cert_file: Option<String>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<String>,
    /// Do not check the brokers' certificates or names (testing only).
    pub insecure_skip_verify: bool,
    /// `true`: no TLS at all, as if the block were absent (the OTel Collector's meaning).
    pub insecure: bool,
}

/// A SASL mechanism, as the OTel Collector and Kafka spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    /// Username and password in the clear (use it over TLS).
    #[serde(rename = "PLAIN")]
    Plain,
    /// SCRAM with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// librdkafka's `sasl.mechanism` value.
    pub fn as_rdkafka(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// `auth.sasl:` — SASL authentication to the brokers.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSaslConfig {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: SaslMechanism,
    /// User name.
    pub username: String,
    /// Password (`${env:…}`); never logged.
    pub password: String,
}

// The password never appears in logs or `print-config` debug output.
impl std::fmt::Debug for KafkaSaslConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSaslConfig").field("mechanism", &self.mechanism).field("username", &self.username).field("password", &"[redacted]").finish()
    }
}

/// `auth:` of a Kafka component.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaAuthConfig {
    /// SASL (absent: none).
    pub sasl: Option<KafkaSaslConfig>,
}

/// librdkafka properties the security settings own (`librdkafka_options` may not set them).
pub const KAFKA_SECURITY_KEYS: &[&str] = &[
    "security.protocol",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "enable.ssl.certificate.verification",
    "ssl.endpoint.identification.algorithm",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
];

/// The librdkafka properties for `tls` and `auth`: `security.protocol` (plaintext, ssl,
/// sasl_plaintext or sasl_ssl) and what it needs.
pub fn kafka_security_properties(tls: Option<&KafkaTlsConfig>, auth: &KafkaAuthConfig) -> Vec<(String, String)> {
    let tls = tls.filter(|t| !t.insecure);
    let protocol = match (tls.is_some(), auth.sasl.is_some()) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    let mut p = vec![("security.protocol".to_owned(), protocol.to_owned())];
    if let Some(t) = tls {
        for (key, file) in [("ssl.ca.location", &t.ca_file), ("ssl.certificate.location", &t.cert_file), ("ssl.key.location", &t.key_file)] {
            if let Some(f) = file {
                p.push((key.into(), f.clone()));
            }
        }
        if t.insecure_skip_verify {
            p.push(("enable.ssl.certificate.verification".into(), "false".into()));
            p.push(("ssl.endpoint.identification.algorithm".into(), "none".into()));
        } else {
            // librdkafka's default since 2.0; said here so that no option turns it off unseen.
            p.push(("ssl.endpoint.identification.algorithm".into(), "https".into()));
        }
    }
    if let Some(s) = &auth.sasl {
        p.push(("sasl.mechanism".into(), s.mechanism.as_rdkafka().into()));
        p.push(("sasl.username".into(), s.username.clone()));
        p.push(("sasl.password".into(), s.password.clone()));
    }
    p
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
    /// `tls:`.
    pub tls: Option<&'a KafkaTlsConfig>,
    /// `auth:`.
    pub auth: &'a KafkaAuthConfig,
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
    if let Some(t) = c.tls {
        let pos = node.get("tls").map(|n| n.pos).unwrap_or(node.pos);
        if t.cert_file.is_some() != t.key_file.is_some() {
            errors.push(ConfigError::new(file, pos, "tls: cert_file and key_file go together (a client certificate needs its key)"));
        }
        if t.insecure && (t.ca_file.is_some() || t.cert_file.is_some() || t.insecure_skip_verify) {
            errors.push(ConfigError::new(file, pos, "tls: insecure (plaintext) cannot be combined with ca_file, cert_file or insecure_skip_verify"));
        }
        for (k, f) in [("ca_file", &t.ca_file), ("cert_file", &t.cert_file), ("key_file", &t.key_file)] {
            if f.as_deref().is_some_and(|f| f.trim().is_empty()) {
                errors.push(ConfigError::new(file, pos, format!("tls.{k} is empty (is its environment variable set?)")));
            }
        }
    }
    if let Some(s) = &c.auth.sasl {
        let pos = node.get("auth").map(|n| n.pos).unwrap_or(node.pos);
        if s.username.trim().is_empty() {
            errors.push(ConfigError::new(file, pos, "auth.sasl.username is empty (is its environment variable set?)"));
        }
        if s.password.is_empty() {
            errors.push(ConfigError::new(file, pos, "auth.sasl.password is empty (is its environment variable set?)"));
        }
    }
    for k in c.librdkafka_options.keys() {
        if KAFKA_SECURITY_KEYS.contains(&k.as_str()) {
            errors.push(ConfigError::new(
                file,
                at("librdkafka_options"),
                format!("librdkafka_options: `{k}` is set by the {}'s `tls` and `auth` settings; use those instead", c.kind),
            ));
        }
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
