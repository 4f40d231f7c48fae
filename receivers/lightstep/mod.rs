//! `type: lightstep` — a satellite stand-in for LightStep tracers (and Istio's LightStep tracer):
//! the LightStep collector protocol (pipeline/proto/lightstep/collector.proto, compiled with
//! protox and tonic-prost-build).
//!
//! - gRPC `lightstep.collector.CollectorService/Report` on `grpc.endpoint` (default 8282);
//! - HTTP `POST /api/v2/reports` on `http.endpoint` (default 8181), protobuf
//!   (`application/octet-stream`, as the Python tracer sends, or `application/x-protobuf`) or JSON
//!   (the proto3 JSON mapping).
//!
//! The access token (`auth.access_token`, or the `Lightstep-Access-Token` header) is checked
//! against `access_tokens` when that list is not empty: a wrong token gets gRPC
//! `UNAUTHENTICATED` / HTTP 401 with a `ReportResponse` whose `errors` say why, and is counted in
//! `tracepipe_receiver_unauthenticated_requests_total`. Accepted reports are answered with an
//! empty `ReportResponse` (no `commands`, so tracers never disable themselves) carrying receive
//! and transmit timestamps.

mod config;
mod http;
pub mod json;
mod translate;

#[cfg(test)]
mod tests;

/// The protocol's messages (generated in `tracepipe-pipeline`, shared with the satellite sink).
pub use tracepipe_pipeline::lightstep_pb as pb;

pub use config::LightstepConfig;
pub use translate::to_otlp;

use std::sync::Arc;

use metrics::Counter;
use opentelemetry_proto::tonic::trace::v1::TracesData;
use prost::Message;
use tracepipe_pipeline::telemetry::names;
use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentFuture, Output};
use tracepipe_pipeline::Batch;

use crate::serve::Admission;

/// Why a report was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The access token is not in `access_tokens`.
    #[error("invalid access token")]
    Unauthenticated,
    /// The graph had no room in time.
    #[error("the pipeline is full; retry later")]
    Full,
}

/// Shared by both transports.
#[derive(Clone)]
pub(crate) struct Ingest {
    cfg: Arc<LightstepConfig>,
    grpc: Admission,
    http: Admission,
    unauthenticated_grpc: Counter,
    unauthenticated_http: Counter,
}

impl Ingest {
    fn new(cfg: &LightstepConfig, name: &str, output: Output, shutdown: Option<tokio_util::sync::CancellationToken>) -> Self {
        let wait = cfg.admission_timeout.get();
        let stopping = |a: Admission| match &shutdown {
            Some(s) => a.stopping_on(s.clone()),
            None => a,
        };
        let unauth = |t: &'static str| metrics::counter!(names::RECEIVER_UNAUTHENTICATED_REQUESTS, "receiver" => name.to_owned(), "transport" => t);
        Ingest {
            cfg: Arc::new(cfg.clone()),
            grpc: stopping(Admission::new(name, "grpc", output.clone(), wait)),
            http: stopping(Admission::new(name, "http", output, wait)),
            unauthenticated_grpc: unauth("grpc"),
            unauthenticated_http: unauth("http"),
        }
    }

    fn admission(&self, transport: &'static str) -> &Admission {
        if transport == "grpc" { &self.grpc } else { &self.http }
    }

    pub(crate) fn malformed(&self, transport: &'static str, reason: &'static str) {
        self.admission(transport).malformed(reason);
    }

    /// For a protobuf body: the token check on the `auth` field alone (prost skips the spans
    /// without allocating them), so an unauthenticated sender never costs a full decode. `Err`
    /// (counted) when a token list is configured and the request's token is not on it.
    pub(crate) fn check_token_early(&self, body: &[u8], header_token: Option<&str>, transport: &'static str) -> Result<(), ReportError> {
        if self.cfg.access_tokens.is_empty() {
            return Ok(());
        }
        /// `ReportRequest` with only its `auth` field.
        #[derive(Clone, PartialEq, prost::Message)]
        struct AuthOnly {
            #[prost(message, optional, tag = "2")]
            auth: Option<pb::Auth>,
        }
        // A body that does not decode is left to the full decode, which reports it.
        let Ok(peek) = AuthOnly::decode(body) else { return Ok(()) };
        let token = peek.auth.as_ref().map(|a| a.access_token.as_str()).filter(|t| !t.is_empty()).or(header_token).unwrap_or("");
        if self.cfg.token_allowed(token) {
            return Ok(());
        }
        if transport == "grpc" { &self.unauthenticated_grpc } else { &self.unauthenticated_http }.increment(1);
        Err(ReportError::Unauthenticated)
    }

    /// Checks the token, translates and admits a report.
    pub(crate) async fn report(&self, req: &pb::ReportRequest, header_token: Option<&str>, transport: &'static str) -> Result<pb::ReportResponse, ReportError> {
        let received = now();
        let token = req.auth.as_ref().map(|a| a.access_token.as_str()).filter(|t| !t.is_empty()).or(header_token).unwrap_or("");
        if !self.cfg.token_allowed(token) {
            if transport == "grpc" { &self.unauthenticated_grpc } else { &self.unauthenticated_http }.increment(1);
            return Err(ReportError::Unauthenticated);
        }
        let (rs, rejected) = to_otlp(req);
        let adm = self.admission(transport);
        adm.rejected(rejected as u64);
        let n = tracepipe_pipeline::batch::count_spans(&rs);
        if n > 0 {
            let bytes = TracesData { resource_spans: rs }.encode_to_vec();
            adm.admit(Batch::from_encoded(bytes.into(), n)).await.map_err(|_| ReportError::Full)?;
        }
        Ok(pb::ReportResponse { receive_timestamp: Some(received), transmit_timestamp: Some(now()), ..Default::default() })
    }
}

fn now() -> prost_types::Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// `CollectorService/Report` served from the raw request bytes: the access token is checked on
/// the `auth` field alone before the report is decoded (as over HTTP).
#[derive(Clone)]
struct GrpcService {
    ingest: Ingest,
    max_size: usize,
}

const REPORT_PATH: &str = "/lightstep.collector.CollectorService/Report";

/// Requests as bytes, prost responses.
#[derive(Debug, Clone, Copy, Default)]
struct RawReportCodec;

impl tonic::codec::Codec for RawReportCodec {
    type Encode = pb::ReportResponse;
    type Decode = bytes::Bytes;
    type Encoder = RawReportCodec;
    type Decoder = RawReportCodec;
    fn encoder(&mut self) -> Self::Encoder {
        *self
    }
    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl tonic::codec::Encoder for RawReportCodec {
    type Item = pb::ReportResponse;
    type Error = tonic::Status;
    fn encode(&mut self, item: Self::Item, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        item.encode(dst).map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl tonic::codec::Decoder for RawReportCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<bytes::Bytes>, tonic::Status> {
        use bytes::Buf;
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

struct Unary(Ingest);

impl tonic::server::UnaryService<bytes::Bytes> for Unary {
    type Response = pb::ReportResponse;
    type Future = futures::future::BoxFuture<'static, Result<tonic::Response<pb::ReportResponse>, tonic::Status>>;
    fn call(&mut self, request: tonic::Request<bytes::Bytes>) -> Self::Future {
        let ingest = self.0.clone();
        Box::pin(async move {
            let header = request.metadata().get("lightstep-access-token").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let body = request.into_inner();
            if ingest.check_token_early(&body, header.as_deref(), "grpc").is_err() {
                return Err(tonic::Status::unauthenticated("invalid access token"));
            }
            let req = match pb::ReportRequest::decode(body) {
                Ok(r) => r,
                Err(e) => {
                    ingest.malformed("grpc", "protobuf");
                    return Err(tonic::Status::invalid_argument(format!("invalid ReportRequest: {e}")));
                }
            };
            match ingest.report(&req, header.as_deref(), "grpc").await {
                Ok(r) => Ok(tonic::Response::new(r)),
                Err(ReportError::Unauthenticated) => Err(tonic::Status::unauthenticated("invalid access token")),
                Err(e @ ReportError::Full) => Err(tonic::Status::unavailable(e.to_string())),
            }
        })
    }
}

impl<B> tower::Service<::http::Request<B>> for GrpcService
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = ::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, std::convert::Infallible>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), std::convert::Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ::http::Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if req.uri().path() != REPORT_PATH {
                return Ok(tonic::Status::unimplemented(format!("unknown method {}", req.uri().path())).into_http());
            }
            if !crate::otlp::is_grpc(req.headers()) {
                this.ingest.malformed("grpc", "content_type");
                return Ok(crate::otlp::unsupported_media_type());
            }
            let mut grpc = tonic::server::Grpc::new(RawReportCodec)
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
                .max_decoding_message_size(this.max_size);
            Ok(grpc.unary(Unary(this.ingest.clone()), req).await)
        })
    }
}

impl tonic::server::NamedService for GrpcService {
    const NAME: &'static str = "lightstep.collector.CollectorService";
}

/// Binds the configured listeners and returns the task serving them until shutdown.
pub async fn build(cfg: LightstepConfig, mut ctx: ComponentContext) -> Result<ComponentFuture, BuildError> {
    let output = ctx.take_output()?;
    ctx.health.expect_receiver(&ctx.name);
    let ingest = Ingest::new(&cfg, &ctx.name, output, Some(ctx.shutdown.clone()));
    let mut tasks: Vec<ComponentFuture> = Vec::new();
    if let Some(g) = &cfg.grpc {
        let svc = GrpcService { ingest: ingest.clone(), max_size: cfg.max_request_size.get() as usize };
        tasks.push(crate::serve::grpc(&g.endpoint, svc, g.tls.as_ref(), &ctx).await?);
    }
    if let Some(h) = &cfg.http {
        tasks.push(http::serve(&h.endpoint, h.tls.as_ref(), cfg.max_request_size.get() as usize, ingest.clone(), &ctx).await?);
    }
    drop(ingest);
    Ok(crate::serve::listeners(tasks, &ctx))
}
