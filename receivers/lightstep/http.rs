//! `POST /api/v2/reports`: protobuf or proto3-JSON `ReportRequest`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use prost::Message;
use tracepipe_config::Endpoint;
use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentFuture};

use super::{pb, Ingest, ReportError};

/// Binds the listener and returns the serving task.
pub async fn serve(endpoint: &Endpoint, tls: Option<&tracepipe_config::ServerTlsConfig>, limit: usize, ingest: Ingest, ctx: &ComponentContext) -> Result<ComponentFuture, BuildError> {
    let app = axum::Router::new().route("/api/v2/reports", axum::routing::post(reports)).with_state((ingest, limit));
    crate::serve::http(endpoint, "http", app, tls, None, ctx).await
}

fn respond(status: StatusCode, json: bool, resp: pb::ReportResponse) -> Response {
    if json {
        let body = serde_json::json!({ "errors": resp.errors, "commands": [] });
        (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
    } else {
        (status, [(header::CONTENT_TYPE, "application/octet-stream")], resp.encode_to_vec()).into_response()
    }
}

fn error(status: StatusCode, json: bool, msg: String) -> Response {
    respond(status, json, pb::ReportResponse { errors: vec![msg], ..Default::default() })
}

async fn reports(State((ingest, limit)): State<(Ingest, usize)>, headers: HeaderMap, body: Body) -> Response {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let json = mime == "application/json";
    if !json && !matches!(mime.as_str(), "application/octet-stream" | "application/x-protobuf" | "application/protobuf") {
        ingest.malformed("http", "content_type");
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, false, format!("unsupported Content-Type {ct:?}; use application/octet-stream or application/json"));
    }
    // Bodies are not decompressed: an encoded one is refused rather than read as a report.
    if let Some(enc) = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).filter(|e| !e.trim().eq_ignore_ascii_case("identity")) {
        ingest.malformed("http", "encoding");
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, json, format!("unsupported Content-Encoding {enc:?}; send the body uncompressed"));
    }
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            ingest.malformed("http", "body_too_large");
            return error(StatusCode::PAYLOAD_TOO_LARGE, json, format!("body exceeds the limit of {limit} bytes"));
        }
    };
    let req = if json {
        match super::json::decode(&body) {
            Ok(r) => r,
            Err(e) => {
                ingest.malformed("http", "json");
                return error(StatusCode::BAD_REQUEST, true, e);
            }
        }
    } else {
        let token = headers.get("lightstep-access-token").and_then(|v| v.to_str().ok());
        if let Err(e) = ingest.check_token_early(&body, token, "http") {
            return error(StatusCode::UNAUTHORIZED, false, e.to_string());
        }
        match pb::ReportRequest::decode(body.as_ref()) {
            Ok(r) => r,
            Err(e) => {
                ingest.malformed("http", "protobuf");
                return error(StatusCode::BAD_REQUEST, false, format!("invalid ReportRequest: {e}"));
            }
        }
    };
    let token = headers.get("lightstep-access-token").and_then(|v| v.to_str().ok());
    match ingest.report(&req, token, "http").await {
        Ok(resp) => respond(StatusCode::OK, json, resp),
        Err(e @ ReportError::Unauthenticated) => error(StatusCode::UNAUTHORIZED, json, e.to_string()),
        Err(e @ ReportError::Full) => {
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, json, e.to_string());
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
    }
}
