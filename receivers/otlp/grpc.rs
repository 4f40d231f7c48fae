//! The gRPC `TraceService/Export` server, on tonic, with a codec that keeps the request as bytes.

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures::future::BoxFuture;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceResponse};
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};
use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentFuture};

use super::config::GrpcConfig;
use super::ingest::{Ingest, IngestError, Transport};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Decodes requests as raw bytes, encodes prost responses.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RawRequestCodec;

impl Codec for RawRequestCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = RawRequestCodec;
    type Decoder = RawRequestCodec;
    fn encoder(&mut self) -> Self::Encoder {
        *self
    }
    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for RawRequestCodec {
    type Item = ExportTraceServiceResponse;
    type Error = Status;
    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst).map_err(|e| Status::internal(e.to_string()))
    }
}

impl Decoder for RawRequestCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

#[derive(Clone)]
pub(super) struct ExportService {
    pub(super) ingest: Ingest,
    pub(super) max_size: usize,
    pub(super) auth: Option<crate::serve::BearerAuth>,
}

struct Unary(Ingest);

impl tonic::server::UnaryService<Bytes> for Unary {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<'static, Result<tonic::Response<ExportTraceServiceResponse>, Status>>;
    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let ingest = self.0.clone();
        Box::pin(async move {
            match ingest.protobuf(Transport::Grpc, request.into_inner()).await {
                Ok(acc) => {
                    let partial_success = (acc.rejected > 0).then(|| ExportTracePartialSuccess { rejected_spans: acc.rejected as i64, error_message: acc.message });
                    Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success }))
                }
                Err(e @ IngestError::Malformed(_)) => Err(Status::new(Code::InvalidArgument, e.to_string())),
                Err(e @ (IngestError::Full | IngestError::ShuttingDown | IngestError::NotDelivered)) => Err(Status::new(Code::Unavailable, e.to_string())),
                Err(e @ IngestError::RejectedDownstream) => Err(Status::new(Code::Internal, e.to_string())),
            }
        })
    }
}

impl<B> tower::Service<http::Request<B>> for ExportService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            // Before anything is read or decompressed.
            if let Some(refused) = crate::serve::grpc_unauthenticated(this.auth.as_ref(), req.headers()) {
                return Ok(refused);
            }
            if req.uri().path() != EXPORT_PATH {
                return Ok(Status::unimplemented(format!("unknown method {}", req.uri().path())).into_http());
            }
            if !is_grpc(req.headers()) {
                this.ingest.malformed(Transport::Grpc, "content_type");
                return Ok(unsupported_media_type());
            }
            if this.ingest.refuse_for_memory(Transport::Grpc) {
                // Refused before the message is read or decompressed.
                return Ok(Status::unavailable("tracepipe is above its memory limit; retry later").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(RawRequestCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .send_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(this.max_size);
            let resp = grpc.unary(Unary(this.ingest.clone()), req).await;
            // Count framing, size and decompression failures (the handler never ran).
            if let Some(code) = resp.headers().get("grpc-status")
                && code != "0"
                && code != "14"
                && code != "3"
            {
                this.ingest.malformed(Transport::Grpc, "grpc_framing_or_size");
            }
            Ok(resp)
        })
    }
}

impl tonic::server::NamedService for ExportService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

/// True when the request says it is gRPC (`content-type: application/grpc[+proto]`).
pub(crate) fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// What the gRPC spec says a server answers to a request that is not gRPC: HTTP 415.
pub(crate) fn unsupported_media_type() -> http::Response<tonic::body::Body> {
    let mut r = http::Response::new(tonic::body::Body::empty());
    *r.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
    r
}

/// Binds the gRPC listener and returns the serving task.
pub async fn serve(cfg: &GrpcConfig, ingest: Ingest, auth: &tracepipe_config::AuthConfig, ctx: &ComponentContext) -> Result<ComponentFuture, BuildError> {
    let svc = ExportService { ingest, max_size: cfg.max_recv_msg_size.get() as usize, auth: crate::serve::BearerAuth::new(auth, &ctx.name, "grpc") };
    crate::serve::grpc(&cfg.endpoint, svc, cfg.tls.as_ref(), ctx).await
}
