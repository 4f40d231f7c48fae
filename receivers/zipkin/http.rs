//! The Zipkin HTTP API (`/api/v2/spans`, `/api/v1/spans`).

use std::io::Read;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::trace::v1::TracesData;
use prost::Message;
use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentFuture, Output, Refused};
use tracepipe_pipeline::Batch;

use super::config::{EnvoyProtoIds, ZipkinConfig};
use super::{model, translate};
use crate::serve::Admission;

const TRANSPORT: &str = "http";

#[derive(Clone)]
struct AppState {
    adm: Admission,
    limit: usize,
    envoy_ids: EnvoyProtoIds,
}

impl AppState {
    fn malformed(&self, reason: &'static str) {
        self.adm.malformed(reason);
    }
}

/// Binds the listener and returns the serving task.
pub async fn serve(cfg: &ZipkinConfig, output: Output, ctx: &ComponentContext) -> Result<ComponentFuture, BuildError> {
    let state = AppState {
        adm: Admission::new(&ctx.name, TRANSPORT, output, cfg.admission_timeout.get()).stopping_on(ctx.shutdown.clone()),
        limit: cfg.max_request_body_size.get() as usize,
        envoy_ids: cfg.envoy_proto_ids,
    };
    let app = axum::Router::new()
        .route("/api/v2/spans", axum::routing::post(spans))
        .route("/api/v1/spans", axum::routing::post(spans))
        .with_state(state);
    crate::serve::http(&cfg.endpoint, "http", app, cfg.tls.as_ref(), crate::serve::BearerAuth::new(&cfg.auth, &ctx.name, TRANSPORT), ctx).await
}

fn text(status: StatusCode, msg: String) -> Response {
    (status, format!("{msg}\n")).into_response()
}

async fn spans(State(s): State<AppState>, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    let v1 = uri.path().starts_with("/api/v1/");
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let raw = match axum::body::to_bytes(body, s.limit).await {
        Ok(b) => b,
        Err(e) => {
            s.malformed("body_too_large");
            return if e.to_string().contains("length limit") {
                text(StatusCode::PAYLOAD_TOO_LARGE, format!("body exceeds the limit of {} bytes", s.limit))
            } else {
                text(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}"))
            };
        }
    };
    let encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("").trim().to_ascii_lowercase();
    let body = match encoding.as_str() {
        "" | "identity" => raw.to_vec(),
        "gzip" => {
            let mut out = Vec::new();
            match flate2::read::GzDecoder::new(raw.as_ref()).take(s.limit as u64 + 1).read_to_end(&mut out) {
                Ok(_) if out.len() > s.limit => {
                    s.malformed("body_too_large");
                    return text(StatusCode::PAYLOAD_TOO_LARGE, format!("decompressed body exceeds the limit of {} bytes", s.limit));
                }
                Ok(_) => out,
                Err(e) => {
                    s.malformed("encoding");
                    return text(StatusCode::BAD_REQUEST, format!("cannot decompress the body: {e}"));
                }
            }
        }
        other => {
            s.malformed("encoding");
            return text(StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("unsupported Content-Encoding {other:?}; use gzip or none"));
        }
    };
    let from_envoy = headers.contains_key("x-envoy-internal") || headers.contains_key("x-envoy-expected-rq-timeout-ms");
    let decoded = match (v1, mime.as_str()) {
        (false, "application/json") => model::decode_v2_json(&body),
        (false, "application/x-protobuf" | "application/protobuf") => {
            let reverse = match s.envoy_ids {
                EnvoyProtoIds::On => true,
                EnvoyProtoIds::Off => false,
                EnvoyProtoIds::Auto => from_envoy,
            };
            model::decode_v2_proto(&body, reverse)
        }
        (true, "application/json") => model::decode_v1_json(&body),
        (true, "application/x-thrift" | "application/vnd.apache.thrift.binary") => model::decode_v1_thrift(&body),
        _ => {
            s.malformed("content_type");
            let api = if v1 { "v1: application/json or application/x-thrift" } else { "v2: application/json or application/x-protobuf" };
            return text(StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("unsupported Content-Type {ct:?} ({api})"));
        }
    };
    let zspans = match decoded {
        Ok(z) => z,
        Err(e) => {
            s.malformed(if mime.contains("json") { "json" } else if mime.contains("thrift") { "thrift" } else { "protobuf" });
            return text(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    let (rs, rejected) = translate::to_otlp(zspans);
    s.adm.rejected(rejected as u64);
    let n = tracepipe_pipeline::batch::count_spans(&rs);
    if n == 0 {
        return StatusCode::ACCEPTED.into_response();
    }
    let bytes = TracesData { resource_spans: rs }.encode_to_vec();
    match s.adm.admit(Batch::from_encoded(bytes.into(), n)).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(Refused::Full | Refused::Closed) => {
            let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "the pipeline is full; retry later".into());
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
    }
}
