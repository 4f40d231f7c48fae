//! What every receiver does around its listeners: bind an HTTP router or a gRPC service with
//! graceful shutdown, over TLS when the listener has `tls:` ([`tracepipe_pipeline::tls`]), with
//! bearer-token checks when the receiver has `auth:` ([`BearerAuth`]), and run several listeners
//! as one task that keeps `/readyz` informed.

use std::sync::Arc;

use tracepipe_config::{AuthConfig, Endpoint, ServerTlsConfig};
use tracepipe_pipeline::tls::{ServerTls, TlsIncoming, ALPN_GRPC, ALPN_HTTP};
use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentError, ComponentFuture};

/// Reads a listener's TLS files and starts watching them for changes.
fn load_tls(cfg: &ServerTlsConfig, alpn: &'static [&'static [u8]], transport: &str, ctx: &ComponentContext) -> Result<Arc<ServerTls>, BuildError> {
    let tls = ServerTls::load(cfg, alpn).map_err(|e| ctx.error(format!("{transport} listener: {e}")))?;
    tls.watch(&ctx.name, ctx.shutdown.clone());
    Ok(tls)
}

async fn bind(endpoint: &Endpoint, transport: &'static str, tls: bool, ctx: &ComponentContext) -> Result<tokio::net::TcpListener, BuildError> {
    let addr = endpoint.to_string();
    let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| ctx.error(format!("cannot listen on {addr} ({transport}): {e}")))?;
    tracing::info!(message = "Receiver listening.", receiver = %ctx.name, transport, tls, address = %listener.local_addr().map(|a| a.to_string()).unwrap_or(addr));
    Ok(listener)
}

/// Binds `endpoint` now (so a busy port fails the build) and returns the task serving `app`
/// until shutdown: over TLS with `tls`, and with `auth` every request without one of its bearer
/// tokens answered 401 before its body is read.
pub(crate) async fn http(
    endpoint: &Endpoint,
    transport: &'static str,
    app: axum::Router,
    tls: Option<&ServerTlsConfig>,
    auth: Option<BearerAuth>,
    ctx: &ComponentContext,
) -> Result<ComponentFuture, BuildError> {
    let listener = bind(endpoint, transport, tls.is_some(), ctx).await?;
    let app = match auth {
        Some(auth) => app.layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
            let allowed = auth.allows(req.headers());
            async move {
                if allowed {
                    next.run(req).await
                } else {
                    use axum::response::IntoResponse;
                    (http::StatusCode::UNAUTHORIZED, [(http::header::WWW_AUTHENTICATE, "Bearer")], "missing or invalid bearer token\n").into_response()
                }
            }
        })),
        None => app,
    };
    let stop = ctx.shutdown.clone().cancelled_owned();
    let name = ctx.name.clone();
    let failed = move |e: std::io::Error| ComponentError(format!("receiver `{name}` {transport} server failed: {e}"));
    Ok(match tls {
        Some(cfg) => {
            let incoming = TlsIncoming::new(listener, load_tls(cfg, ALPN_HTTP, transport, ctx)?, &ctx.name, transport).map_err(|e| ctx.error(e.to_string()))?;
            Box::pin(async move { axum::serve(incoming, app).with_graceful_shutdown(stop).await.map_err(failed) })
        }
        None => Box::pin(async move { axum::serve(listener, app).with_graceful_shutdown(stop).await.map_err(failed) }),
    })
}

/// Binds `endpoint` now and returns the task serving the gRPC service `svc` until shutdown, over
/// TLS with `tls` (the service checks its own [`BearerAuth`], see [`grpc_unauthenticated`]).
pub(crate) async fn grpc<S>(endpoint: &Endpoint, svc: S, tls: Option<&ServerTlsConfig>, ctx: &ComponentContext) -> Result<ComponentFuture, BuildError>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>, Error = std::convert::Infallible>
        + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let listener = bind(endpoint, "grpc", tls.is_some(), ctx).await?;
    let stop = ctx.shutdown.clone().cancelled_owned();
    let name = ctx.name.clone();
    let failed = move |e: tonic::transport::Error| ComponentError(format!("receiver `{name}` grpc server failed: {e}"));
    Ok(match tls {
        Some(cfg) => {
            let incoming = TlsIncoming::new(listener, load_tls(cfg, ALPN_GRPC, "grpc", ctx)?, &ctx.name, "grpc").map_err(|e| ctx.error(e.to_string()))?;
            Box::pin(async move { tonic::transport::Server::builder().add_service(svc).serve_with_incoming_shutdown(incoming.into_stream(), stop).await.map_err(failed) })
        }
        None => Box::pin(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            tonic::transport::Server::builder().add_service(svc).serve_with_incoming_shutdown(incoming, stop).await.map_err(failed)
        }),
    })
}

/// `auth.bearer_tokens` for one receiver transport: requests must carry
/// `Authorization: Bearer <token>` (gRPC: the `authorization` metadata entry) with one of them.
/// Tokens are compared in constant time and never logged; refusals are counted in
/// `tracepipe_receiver_unauthenticated_requests_total`.
#[derive(Clone)]
pub(crate) struct BearerAuth {
    tokens: Arc<[Box<[u8]>]>,
    refused: metrics::Counter,
}

impl BearerAuth {
    /// The check for `receiver` / `transport`, or none when `cfg` has no tokens.
    pub(crate) fn new(cfg: &AuthConfig, receiver: &str, transport: &'static str) -> Option<BearerAuth> {
        use tracepipe_pipeline::telemetry::names;
        if cfg.bearer_tokens.is_empty() {
            return None;
        }
        Some(BearerAuth {
            tokens: cfg.bearer_tokens.iter().map(|t| t.trim().as_bytes().into()).collect(),
            refused: metrics::counter!(names::RECEIVER_UNAUTHENTICATED_REQUESTS, "receiver" => receiver.to_owned(), "transport" => transport),
        })
    }

    /// True when the request carries an accepted token; counts it otherwise.
    pub(crate) fn allows(&self, headers: &http::HeaderMap) -> bool {
        let given = headers.get(http::header::AUTHORIZATION).and_then(|v| bearer_token(v.as_bytes()));
        // Every token is compared, in time independent of where they differ.
        let ok = given.is_some_and(|g| self.tokens.iter().fold(false, |hit, t| hit | constant_time_eq(t, g)));
        if !ok {
            self.refused.increment(1);
        }
        ok
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme in any case).
fn bearer_token(v: &[u8]) -> Option<&[u8]> {
    let rest = v.get(..7).filter(|p| p.eq_ignore_ascii_case(b"bearer "))?;
    let t = v[rest.len()..].trim_ascii();
    (!t.is_empty()).then_some(t)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// For a gRPC service: the `UNAUTHENTICATED` answer when `auth` refuses the request's metadata.
pub(crate) fn grpc_unauthenticated(auth: Option<&BearerAuth>, headers: &http::HeaderMap) -> Option<http::Response<tonic::body::Body>> {
    let auth = auth?;
    (!auth.allows(headers)).then(|| tonic::Status::unauthenticated("missing or invalid bearer token").into_http())
}

/// Marks the receiver listening and returns one task running all its listeners; it reports
/// "not listening" when they have stopped, and the first error.
pub(crate) fn listeners(tasks: Vec<ComponentFuture>, ctx: &ComponentContext) -> ComponentFuture {
    ctx.health.set_listening(&ctx.name, true);
    let health = ctx.health.clone();
    let name = ctx.name.clone();
    Box::pin(async move {
        let results = futures::future::join_all(tasks).await;
        health.set_listening(&name, false);
        results.into_iter().collect::<Result<Vec<()>, _>>().map(|_| ())
    })
}

/// One receiver transport's way into the graph: admits batches through the receiver's output
/// with its bounded wait, and counts accepted, refused (with reason), rejected and malformed,
/// with metric handles resolved once.
#[derive(Clone)]
pub(crate) struct Admission {
    inner: std::sync::Arc<AdmissionInner>,
}

struct AdmissionInner {
    receiver: String,
    transport: &'static str,
    output: tracepipe_pipeline::Output,
    wait: std::time::Duration,
    /// End-to-end acknowledgements: how long to wait for the sinks (None: do not wait).
    ack: Option<std::time::Duration>,
    /// The receiver's shutdown: a batch still waiting for room when it comes is refused
    /// (`shutting_down`, retryable) rather than admitted into a graph that is draining.
    shutdown: Option<tokio_util::sync::CancellationToken>,
    accepted: metrics::Counter,
    refused_full: metrics::Counter,
    refused_shutdown: metrics::Counter,
    refused_memory: metrics::Counter,
    refused_requests_memory: metrics::Counter,
    rejected: metrics::Counter,
}

impl Admission {
    /// Resolves the metric handles for `receiver` / `transport`.
    pub(crate) fn new(receiver: &str, transport: &'static str, output: tracepipe_pipeline::Output, wait: std::time::Duration) -> Self {
        use tracepipe_pipeline::telemetry::names;
        let r = receiver.to_owned();
        Admission {
            inner: std::sync::Arc::new(AdmissionInner {
                accepted: metrics::counter!(names::RECEIVER_ACCEPTED_SPANS, "receiver" => r.clone(), "transport" => transport),
                refused_full: metrics::counter!(names::RECEIVER_REFUSED_SPANS, "receiver" => r.clone(), "transport" => transport, "reason" => "pipeline_full"),
                refused_shutdown: metrics::counter!(names::RECEIVER_REFUSED_SPANS, "receiver" => r.clone(), "transport" => transport, "reason" => "shutting_down"),
                refused_memory: metrics::counter!(names::RECEIVER_REFUSED_SPANS, "receiver" => r.clone(), "transport" => transport, "reason" => "memory"),
                refused_requests_memory: metrics::counter!(names::RECEIVER_REFUSED_REQUESTS, "receiver" => r.clone(), "transport" => transport, "reason" => "memory"),
                rejected: metrics::counter!(names::RECEIVER_REJECTED_SPANS, "receiver" => r.clone(), "transport" => transport, "reason" => "invalid_span"),
                receiver: r,
                transport,
                output,
                wait,
                ack: None,
                shutdown: None,
            }),
        }
    }

    /// Waits, after admitting, until the sinks have each batch (end-to-end acknowledgements).
    pub(crate) fn with_acknowledgements(self, timeout: std::time::Duration) -> Self {
        let mut inner = std::sync::Arc::try_unwrap(self.inner).unwrap_or_else(|_| unreachable!("configured before it is shared"));
        inner.ack = Some(timeout);
        Admission { inner: std::sync::Arc::new(inner) }
    }

    /// Refuses batches that are waiting for room once `shutdown` is cancelled (a batch with room
    /// is still admitted: it is drained with the rest).
    pub(crate) fn stopping_on(self, shutdown: tokio_util::sync::CancellationToken) -> Self {
        let mut inner = std::sync::Arc::try_unwrap(self.inner).unwrap_or_else(|_| unreachable!("configured before it is shared"));
        inner.shutdown = Some(shutdown);
        Admission { inner: std::sync::Arc::new(inner) }
    }

    /// Admits a batch like [`Admission::admit`], then, with acknowledgements, waits for the sinks:
    /// `Ok(None)` once they have it (or without acknowledgements), `Ok(Some(status))` when a sink
    /// failed it (`Errored`: retryable; `Rejected`: permanent) or the wait timed out (`Errored`).
    pub(crate) async fn admit_acknowledged(&self, batch: tracepipe_pipeline::Batch) -> Result<Option<tracepipe_pipeline::BatchStatus>, tracepipe_pipeline::Refused> {
        let Some(timeout) = self.inner.ack else { return self.admit(batch).await.map(|_| None) };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let batch = batch.with_finalizer(tracepipe_pipeline::Finalizer::new(move |status| {
            let _ = tx.send(status);
        }));
        self.admit(batch).await?;
        Ok(match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(tracepipe_pipeline::BatchStatus::Delivered)) => None,
            Ok(Ok(status)) => Some(status),
            // Timed out, or the finalizer was dropped without running (cannot happen): retryable.
            _ => Some(tracepipe_pipeline::BatchStatus::Errored),
        })
    }

    /// Admits a batch if every consumer has room within the wait and memory is under the soft
    /// limit; counts the outcome.
    pub(crate) async fn admit(&self, batch: tracepipe_pipeline::Batch) -> Result<(), tracepipe_pipeline::Refused> {
        let n = batch.span_count() as u64;
        if tracepipe_pipeline::memory::under_pressure() {
            self.inner.refused_memory.increment(n);
            return Err(tracepipe_pipeline::Refused::Full);
        }
        let send = self.inner.output.send_or_refuse(batch, self.inner.wait);
        let r = match &self.inner.shutdown {
            // Biased: a batch that finds room at once is admitted even while stopping.
            Some(stop) => tokio::select! {
                biased;
                r = send => r,
                _ = stop.cancelled() => Err(tracepipe_pipeline::Refused::Closed),
            },
            None => send.await,
        };
        self.counted(r, n)
    }

    /// Admits a batch, waiting as long as it takes (a source that can hold data itself, such as
    /// Kafka, simply stops reading); refused only when the graph is shutting down.
    pub(crate) async fn admit_waiting(&self, batch: tracepipe_pipeline::Batch) -> Result<(), tracepipe_pipeline::Refused> {
        let n = batch.span_count() as u64;
        let r = self.inner.output.send(batch).await;
        self.counted(r, n)
    }

    /// Counts `n` spans as accepted or refused by the outcome of a send.
    fn counted(&self, r: Result<(), tracepipe_pipeline::Refused>, n: u64) -> Result<(), tracepipe_pipeline::Refused> {
        match r {
            Ok(()) => self.inner.accepted.increment(n),
            Err(e) => self.refused(e, n),
        }
        r
    }

    /// Counts spans refused without trying to admit them (a UDP datagram dropped from a full queue).
    pub(crate) fn refused(&self, why: tracepipe_pipeline::Refused, spans: u64) {
        match why {
            tracepipe_pipeline::Refused::Full => self.inner.refused_full.increment(spans),
            tracepipe_pipeline::Refused::Closed => self.inner.refused_shutdown.increment(spans),
        }
    }

    /// For a request not read yet: `true` (and counted) when it must be refused for memory, so
    /// that its body is neither read nor decompressed.
    pub(crate) fn refuse_request_for_memory(&self) -> bool {
        let refuse = tracepipe_pipeline::memory::under_pressure();
        if refuse {
            self.inner.refused_requests_memory.increment(1);
        }
        refuse
    }

    /// Counts spans dropped individually as invalid.
    pub(crate) fn rejected(&self, spans: u64) {
        self.inner.rejected.increment(spans);
    }

    /// Counts a request that could not be read.
    pub(crate) fn malformed(&self, reason: &'static str) {
        use tracepipe_pipeline::telemetry::names;
        metrics::counter!(names::RECEIVER_MALFORMED_REQUESTS, "receiver" => self.inner.receiver.clone(), "transport" => self.inner.transport, "reason" => reason).increment(1);
    }

    /// The receiver's name.
    pub(crate) fn receiver(&self) -> &str {
        &self.inner.receiver
    }
}
