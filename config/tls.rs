//! Listener security settings shared by every TCP receiver and the telemetry endpoint, with the
//! OpenTelemetry Collector's names: `tls:` (a server certificate, mutual TLS with
//! `client_ca_file`, versions, reloading) and `auth:` (bearer tokens, as its `bearertokenauth`).

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::Duration;

/// A TLS protocol version: `"1.2"` or `"1.3"` (rustls speaks no older one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2.
    V1_2,
    /// TLS 1.3.
    V1_3,
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVersion::V1_2 => "1.2",
            TlsVersion::V1_3 => "1.3",
        })
    }
}

impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TlsVersion;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a TLS version, \"1.2\" or \"1.3\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TlsVersion, E> {
                match v.trim() {
                    "1.2" => Ok(TlsVersion::V1_2),
                    "1.3" => Ok(TlsVersion::V1_3),
                    "1.0" | "1.1" => Err(E::custom(format!("TLS {v} is not supported (insecure); use \"1.2\" or \"1.3\""))),
                    _ => Err(E::custom(format!("unknown TLS version {v:?}; use \"1.2\" or \"1.3\""))),
                }
            }
            // YAML reads an unquoted 1.2 as a number.
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<TlsVersion, E> {
                self.visit_str(&format!("{v:.1}"))
            }
        }
        d.deserialize_any(V)
    }
}

fn v12() -> TlsVersion {
    TlsVersion::V1_2
}
fn v13() -> TlsVersion {
    TlsVersion::V1_3
}
fn reload_default() -> Duration {
    Duration::from_secs(10)
}
fn handshake_default() -> Duration {
    Duration::from_secs(10)
}

/// `tls:` on a listener: serve TLS with this certificate; with `client_ca_file`, require a client
/// certificate signed by one of its CAs (mutual TLS).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain, the server's certificate first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA certificates: clients must present a certificate signed by one of them.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Oldest version accepted (default "1.2").
    #[serde(default = "v12")]
    pub min_version: TlsVersion,
    /// Newest version offered (default "1.3").
    #[serde(default = "v13")]
    pub max_version: TlsVersion,
    /// How often the files are checked for changes (cert-manager rotating them); changed files
    /// are read again and used for new connections, open connections keep theirs. 0 = never.
    /// Default 10s.
    #[serde(default = "reload_default")]
    pub reload_interval: Duration,
    /// Longest a client may take to finish its handshake before the connection is closed
    /// (default 10s).
    #[serde(default = "handshake_default")]
    pub handshake_timeout: Duration,
}

impl ServerTlsConfig {
    /// What is wrong with the settings themselves (files are read when the listener starts).
    pub fn problems(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.min_version > self.max_version {
            v.push(format!("tls.min_version {} is above tls.max_version {}", self.min_version, self.max_version));
        }
        if self.handshake_timeout.get().is_zero() {
            v.push("tls.handshake_timeout must be above 0".into());
        }
        v
    }
}

/// `auth:` on a receiver: requests must carry `Authorization: Bearer <token>` with one of these
/// tokens (gRPC: the `authorization` metadata entry).
#[derive(Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Accepted tokens; empty = no check.
    #[serde(default)]
    pub bearer_tokens: Vec<String>,
}

// Tokens never appear in logs or `print-config` debug output.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig").field("bearer_tokens", &format_args!("[{} redacted]", self.bearer_tokens.len())).finish()
    }
}

impl AuthConfig {
    /// What is wrong with the settings.
    pub fn problems(&self) -> Vec<String> {
        if self.bearer_tokens.iter().any(|t| t.trim().is_empty()) {
            vec!["auth.bearer_tokens: a token is empty (is its environment variable set?)".into()]
        } else {
            Vec::new()
        }
    }
}
