//! The collector's `POST /api/traces` endpoint (thrift-binary `jaeger.Batch` bodies).

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentFuture, Output, Refused};

use super::config::HttpConfig;
use super::{admit, model};
use crate::serve::Admission;

const TRANSPORT: &str = "http";

#[derive(Clone)]
struct AppState {
    adm: Admission,
    limit: usize,
}

/// Binds the listener and returns the serving task.
pub async fn serve(cfg: &HttpConfig, auth: &tracepipe_config::AuthConfig, output: Output, wait: Duration, ctx: &ComponentContext) -> Result<ComponentFuture, BuildError> {
    let state = AppState { adm: Admission::new(&ctx.name, TRANSPORT, output, wait).stopping_on(ctx.shutdown.clone()), limit: cfg.max_request_body_size.get() as usize };
    let app = axum::Router::new().route("/api/traces", axum::routing::post(traces)).with_state(state);
    crate::serve::http(&cfg.endpoint, "thrift_http", app, cfg.tls.as_ref(), crate::serve::BearerAuth::new(auth, &ctx.name, TRANSPORT), ctx).await
}

async fn traces(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if !matches!(mime.as_str(), "application/x-thrift" | "application/vnd.apache.thrift.binary") {
        s.adm.malformed("content_type");
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("unsupported content type {ct:?}; use application/x-thrift\n")).into_response();
    }
    // As Jaeger's collector: bodies are not decompressed, so an encoded one is refused rather
    // than read as Thrift.
    if let Some(enc) = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).filter(|e| !e.trim().eq_ignore_ascii_case("identity")) {
        s.adm.malformed("encoding");
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("unsupported Content-Encoding {enc:?}; send the body uncompressed\n")).into_response();
    }
    let body = match axum::body::to_bytes(body, s.limit).await {
        Ok(b) => b,
        Err(e) => {
            s.adm.malformed("body_too_large");
            return if e.to_string().contains("length limit") {
                (StatusCode::PAYLOAD_TOO_LARGE, format!("body exceeds the limit of {} bytes\n", s.limit)).into_response()
            } else {
                (StatusCode::BAD_REQUEST, format!("cannot read the body: {e}\n")).into_response()
            };
        }
    };
    let batch = match model::decode_batch_binary(&body) {
        Ok(b) => b,
        Err(e) => {
            s.adm.malformed("thrift");
            return (StatusCode::BAD_REQUEST, format!("unable to process request body: {e}\n")).into_response();
        }
    };
    match admit(&batch, &s.adm).await {
        Ok(_) => StatusCode::ACCEPTED.into_response(),
        Err(Refused::Full) | Err(Refused::Closed) => {
            let mut r = (StatusCode::SERVICE_UNAVAILABLE, "the pipeline is full; retry later\n").into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
    }
}
