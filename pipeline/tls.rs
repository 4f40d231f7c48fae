//! TLS on listeners (every TCP receiver and the telemetry endpoint): rustls with the `ring`
//! provider, as the sinks' clients.
//!
//! [`ServerTls::load`] reads `tls:`'s files into a rustls `ServerConfig` (mutual TLS with
//! `client_ca_file`); [`ServerTls::watch`] checks the files every `reload_interval` and, when they
//! changed and read well, swaps the config used for *new* connections (open ones keep theirs; a
//! half-written file is retried at the next check). [`TlsIncoming`] accepts TCP connections and
//! runs each handshake in its own task, bounded in time (`handshake_timeout`) and in number
//! ([`MAX_HANDSHAKES`]), so garbage, slow or never-finishing handshakes cost a task each for a
//! bounded time and never hold up other clients. Failed handshakes are counted by reason in
//! `tracepipe_receiver_tls_handshake_failures_total`. [`TlsIncoming`] serves axum (as a
//! [`axum::serve::Listener`]) and tonic (through [`TlsIncoming::into_stream`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tracepipe_config::{ServerTlsConfig, TlsVersion};

use crate::telemetry::names;

/// Handshakes in progress at once per listener; further connections wait in the kernel's backlog.
pub const MAX_HANDSHAKES: usize = 1024;

/// ALPN for gRPC listeners.
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];
/// ALPN for HTTP listeners (both versions, as the servers speak both).
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// What a listener's TLS failed at, for the error message.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("tls.{field} {path}: {source}")]
    Read { field: &'static str, path: PathBuf, source: std::io::Error },
    /// A file holds no usable item.
    #[error("tls.{field} {path}: {what}")]
    Content { field: &'static str, path: PathBuf, what: String },
    /// rustls refused the combination.
    #[error("tls: {0}")]
    Config(String),
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { field, path: path.to_owned(), source })
}

fn certs(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(field, path)?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Content { field, path: path.to_owned(), what: format!("bad PEM: {e}") })?;
    if certs.is_empty() {
        return Err(TlsError::Content { field, path: path.to_owned(), what: "no certificate (PEM `BEGIN CERTIFICATE`) in the file".into() });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("key_file", path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| TlsError::Content { field: "key_file", path: path.to_owned(), what: format!("bad PEM: {e}") })?
        .ok_or_else(|| TlsError::Content { field: "key_file", path: path.to_owned(), what: "no private key in the file".into() })
}

/// Builds the rustls config from the files.
fn build(cfg: &ServerTlsConfig, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [(TlsVersion::V1_2, &rustls::version::TLS12), (TlsVersion::V1_3, &rustls::version::TLS13)]
        .into_iter()
        .filter(|(v, _)| *v >= cfg.min_version && *v <= cfg.max_version)
        .map(|(_, p)| p)
        .collect();
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(&versions).map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &cfg.client_ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs("client_ca_file", ca)? {
                roots.add(c).map_err(|e| TlsError::Content { field: "client_ca_file", path: ca.clone(), what: e.to_string() })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut sc = builder
        .with_single_cert(certs("cert_file", &cfg.cert_file)?, key(&cfg.key_file)?)
        .map_err(|e| TlsError::Config(format!("cert_file {} and key_file {}: {e}", cfg.cert_file.display(), cfg.key_file.display())))?;
    sc.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(sc)
}

/// The files' modification times and lengths: what a reload compares.
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(cfg: &ServerTlsConfig) -> Stamp {
    [Some(&cfg.cert_file), Some(&cfg.key_file), cfg.client_ca_file.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
        .collect()
}

/// A listener's TLS: the config new connections get, and where it came from.
pub struct ServerTls {
    cfg: ServerTlsConfig,
    alpn: &'static [&'static [u8]],
    current: RwLock<Arc<ServerConfig>>,
    seen: Mutex<Stamp>,
}

impl ServerTls {
    /// Reads the files; an error names the setting and the file.
    pub fn load(cfg: &ServerTlsConfig, alpn: &'static [&'static [u8]]) -> Result<Arc<ServerTls>, TlsError> {
        let seen = stamp(cfg);
        let sc = build(cfg, alpn)?;
        Ok(Arc::new(ServerTls { cfg: cfg.clone(), alpn, current: RwLock::new(Arc::new(sc)), seen: Mutex::new(seen) }))
    }

    /// The config for a new connection.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the files again if they changed since the last good read. `Ok(true)`: swapped in.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.cfg);
        if *self.seen.lock().unwrap_or_else(|e| e.into_inner()) == now {
            return Ok(false);
        }
        let sc = build(&self.cfg, self.alpn)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(sc);
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = now;
        Ok(true)
    }

    /// Checks the files every `reload_interval` until `stop` (nothing with an interval of 0).
    pub fn watch(self: &Arc<Self>, component: &str, stop: tokio_util::sync::CancellationToken) {
        let every = self.cfg.reload_interval.get();
        if every.is_zero() {
            return;
        }
        let me = Arc::downgrade(self);
        let component = component.to_owned();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(tls) = me.upgrade() else { return };
                match tls.reload_if_changed() {
                    Ok(true) => tracing::info!(message = "TLS certificate reloaded; new connections use it.", component = %component, cert_file = %tls.cfg.cert_file.display()),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(message = "TLS files changed but cannot be used; keeping the previous certificate and retrying.", component = %component, error = %e),
                }
            }
        });
    }
}

/// Why a handshake failed, as the metric's `reason`.
fn failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::Error as R;
    match e.get_ref().and_then(|i| i.downcast_ref::<R>()) {
        Some(R::InvalidMessage(_) | R::InappropriateMessage { .. } | R::InappropriateHandshakeMessage { .. }) => "not_tls",
        Some(R::NoCertificatesPresented) => "no_client_certificate",
        Some(R::InvalidCertificate(_)) => "bad_client_certificate",
        Some(R::AlertReceived(_)) => "refused_by_client",
        Some(R::PeerIncompatible(_) | R::NoApplicationProtocol) => "incompatible",
        Some(_) => "other",
        None => "closed",
    }
}

/// Accepted TLS connections of one listener, handshakes done.
pub struct TlsIncoming {
    rx: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsIncoming {
    /// Accepts on `listener` until this is dropped; `component` / `transport` label the metric.
    pub fn new(listener: TcpListener, tls: Arc<ServerTls>, component: &str, transport: &'static str) -> std::io::Result<TlsIncoming> {
        let local = listener.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let timeout = tls.cfg.handshake_timeout.get();
        let component = component.to_owned();
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let permit = tokio::select! {
                    _ = tx.closed() => return,
                    p = permits.clone().acquire_owned() => p.expect("never closed"),
                };
                let (tcp, addr) = tokio::select! {
                    _ = tx.closed() => return,
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            // Out of file descriptors and the like: wait, do not spin.
                            tracing::warn!(message = "Accept failed.", component = %component, error = %e);
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
                let tx = tx.clone();
                let component = component.clone();
                tokio::spawn(async move {
                    let reason = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => {
                            drop(permit);
                            let _ = tx.send((s, addr)).await;
                            return;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(message = "TLS handshake failed.", component = %component, peer = %addr, error = %e);
                            failure_reason(&e)
                        }
                        Err(_) => "timeout",
                    };
                    metrics::counter!(names::RECEIVER_TLS_HANDSHAKE_FAILURES, "receiver" => component, "transport" => transport, "reason" => reason).increment(1);
                });
            }
        });
        Ok(TlsIncoming { rx, local })
    }

    /// The connections as a stream, for tonic's `serve_with_incoming`.
    pub fn into_stream(self) -> impl futures::Stream<Item = std::io::Result<TlsStream<TcpStream>>> + Send + 'static {
        futures::stream::unfold(self.rx, |mut rx| async move { rx.recv().await.map(|(s, _)| (Ok(s), rx)) })
    }
}

impl axum::serve::Listener for TlsIncoming {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task only ends when this is dropped.
            None => std::future::pending().await,
        }
    }
    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
