//! `POST /v1/traces` on axum: protobuf or JSON, gzip/zstd/deflate bodies, bounded sizes.

use std::io::Read;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceResponse};
use prost::Message;
use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentFuture};

use super::config::HttpConfig;
use super::ingest::{Accepted, Ingest, IngestError, Transport};

#[derive(Clone)]
struct AppState {
    ingest: Ingest,
    limit: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Protobuf,
    Json,
}

/// `google.rpc.Status`, the error body OTLP/HTTP servers send.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// Binds the HTTP listener and returns the serving task.
pub async fn serve(cfg: &HttpConfig, ingest: Ingest, auth: &tracepipe_config::AuthConfig, ctx: &ComponentContext) -> Result<ComponentFuture, BuildError> {
    let state = AppState { ingest, limit: cfg.max_request_body_size.get() as usize };
    let app = axum::Router::new().route(&cfg.traces_url_path, axum::routing::post(export)).with_state(state);
    crate::serve::http(&cfg.endpoint, "http", app, cfg.tls.as_ref(), crate::serve::BearerAuth::new(auth, &ctx.name, "http"), ctx).await
}

fn error_response(format: Format, status: StatusCode, grpc_code: i32, message: String) -> Response {
    let (ct, body) = match format {
        Format::Protobuf => ("application/x-protobuf", RpcStatus { code: grpc_code, message }.encode_to_vec()),
        Format::Json => ("application/json", serde_json::json!({ "code": grpc_code, "message": message }).to_string().into_bytes()),
    };
    let mut r = (status, [(header::CONTENT_TYPE, ct)], body).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

fn success(format: Format, acc: Accepted) -> Response {
    let partial_success = (acc.rejected > 0).then(|| ExportTracePartialSuccess { rejected_spans: acc.rejected as i64, error_message: acc.message });
    let resp = ExportTraceServiceResponse { partial_success };
    match format {
        Format::Protobuf => (StatusCode::OK, [(header::CONTENT_TYPE, "application/x-protobuf")], resp.encode_to_vec()).into_response(),
        Format::Json => {
            let body = serde_json::to_vec(&resp).unwrap_or_else(|_| b"{}".to_vec());
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
    }
}

/// Decompresses with a hard cap on the output: a compression bomb stops at `limit + 1` bytes.
fn decompress(encoding: &str, body: Bytes, limit: usize) -> Result<Bytes, (StatusCode, String)> {
    fn read_capped(mut r: impl Read, limit: usize) -> Result<Bytes, (StatusCode, String)> {
        let mut out = Vec::new();
        r.by_ref()
            .take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("cannot decompress the body: {e}")))?;
        if out.len() > limit {
            return Err((StatusCode::PAYLOAD_TOO_LARGE, format!("decompressed body exceeds the limit of {limit} bytes")));
        }
        Ok(out.into())
    }
    match encoding.trim().to_ascii_lowercase().as_str() {
        "" | "identity" => Ok(body),
        "gzip" | "x-gzip" => read_capped(flate2::read::GzDecoder::new(body.as_ref()), limit),
        "deflate" => read_capped(flate2::read::ZlibDecoder::new(body.as_ref()), limit),
        "zstd" => {
            let d = zstd::stream::read::Decoder::new(body.as_ref()).map_err(|e| (StatusCode::BAD_REQUEST, format!("cannot decompress the body: {e}")))?;
            read_capped(d, limit)
        }
        other => Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("unsupported Content-Encoding {other:?}; use gzip, zstd, deflate or none"))),
    }
}

async fn export(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let format = match mime.as_str() {
        "application/x-protobuf" | "application/protobuf" | "application/octet-stream" => Format::Protobuf,
        "application/json" => Format::Json,
        _ => {
            s.ingest.malformed(Transport::Http, "content_type");
            return error_response(
                Format::Json,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                3,
                format!("unsupported Content-Type {ct:?}; use application/x-protobuf or application/json"),
            );
        }
    };
    let raw = match axum::body::to_bytes(body, s.limit).await {
        Ok(b) => b,
        Err(e) => {
            s.ingest.malformed(Transport::Http, "body_too_large");
            let too_large = std::error::Error::source(&e).map(|s| s.is::<http_body_util::LengthLimitError>()).unwrap_or(false)
                || e.to_string().contains("length limit");
            return if too_large {
                error_response(format, StatusCode::PAYLOAD_TOO_LARGE, 8, format!("request body exceeds the limit of {} bytes", s.limit))
            } else {
                error_response(format, StatusCode::BAD_REQUEST, 3, format!("cannot read the request body: {e}"))
            };
        }
    };
    // Above the memory limit: refused before the body is decompressed or decoded (it is read,
    // up to the size limit, so that the client gets the 503 rather than a reset connection).
    if s.ingest.refuse_for_memory(Transport::Http) {
        return error_response(format, StatusCode::SERVICE_UNAVAILABLE, 14, "tracepipe is above its memory limit; retry later".into());
    }
    let encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("");
    let body = match decompress(encoding, raw, s.limit) {
        Ok(b) => b,
        Err((status, msg)) => {
            s.ingest.malformed(Transport::Http, if status == StatusCode::PAYLOAD_TOO_LARGE { "body_too_large" } else { "encoding" });
            return error_response(format, status, if status == StatusCode::PAYLOAD_TOO_LARGE { 8 } else { 3 }, msg);
        }
    };
    let result = match format {
        Format::Protobuf => s.ingest.protobuf(Transport::Http, body).await,
        Format::Json => s.ingest.json(Transport::Http, &body).await,
    };
    match result {
        Ok(acc) => success(format, acc),
        Err(e @ IngestError::Malformed(_)) => error_response(format, StatusCode::BAD_REQUEST, 3, e.to_string()),
        Err(e @ (IngestError::Full | IngestError::ShuttingDown | IngestError::NotDelivered)) => error_response(format, StatusCode::SERVICE_UNAVAILABLE, 14, e.to_string()),
        Err(e @ IngestError::RejectedDownstream) => error_response(format, StatusCode::INTERNAL_SERVER_ERROR, 13, e.to_string()),
    }
}
