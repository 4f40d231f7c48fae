//! The transports: a tonic gRPC client with a bytes-in codec, and a hyper HTTP client.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};
use tracepipe_pipeline::{otlp_json, Batch};

use super::config::{Compression, OtlpSinkConfig, Protocol};
use super::tls;

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// LightStep's `CollectorService/Report` (the satellite sink's `report_grpc`).
const REPORT_PATH: &str = "/lightstep.collector.CollectorService/Report";

/// Why an export failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExportError {
    /// May succeed later; `retry_after` is the server's hint.
    #[error("{message}")]
    Retryable {
        /// What happened.
        message: String,
        /// Server-requested delay.
        retry_after: Option<Duration>,
    },
    /// Will never succeed (bad request, unauthenticated, not found…).
    #[error("{0}")]
    Permanent(String),
    /// The request is larger than the server (or, for JSON bodies, `max_request_bytes`) takes:
    /// resending it unchanged cannot succeed, a smaller one may.
    #[error("{0}")]
    TooLarge(String),
}

/// What a successful export reports.
#[derive(Debug, Default)]
pub struct Exported {
    /// Bytes of the request body as sent (after compression, for HTTP; before, for gRPC).
    pub bytes: u64,
    /// Spans the server rejected in `partial_success`.
    pub rejected: u64,
}

/// Bytes in, bytes out (the response is decoded by what was sent).
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        *self
    }
    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

/// What a request carries.
#[derive(Clone, Debug)]
pub enum Payload {
    /// An OTLP `ExportTraceServiceRequest`.
    Otlp,
    /// A LightStep `ReportRequest` per resource, authenticated with `token`.
    Report {
        /// The access token (also in the headers).
        token: String,
        /// This sink's reporter id.
        reporter_id: u64,
    },
}

/// The answer to a request, by what it carried: spans the server rejected, or why it failed.
fn read_response(payload: &Payload, body: Bytes, json: bool) -> Result<u64, ExportError> {
    match payload {
        Payload::Otlp => Ok(if json { serde_json::from_slice::<ExportTraceServiceResponse>(&body).ok() } else { ExportTraceServiceResponse::decode(body).ok() }
            .and_then(|r| r.partial_success)
            .map(|p| p.rejected_spans.max(0) as u64)
            .unwrap_or(0)),
        Payload::Report { .. } => {
            // A satellite answers errors in the response (a wrong token, a malformed report);
            // LightStep tracers drop such a report, and so does the sink: it is permanent.
            let resp = tracepipe_pipeline::lightstep_pb::ReportResponse::decode(body).map_err(|e| ExportError::Permanent(format!("unreadable ReportResponse: {e}")))?;
            if resp.errors.is_empty() { Ok(0) } else { Err(ExportError::Permanent(format!("the satellite refused the report: {}", resp.errors.join("; ")))) }
        }
    }
}

/// The request bodies for a batch: one OTLP request, or one report per resource (transcoded at
/// the wire, [`crate::satellite::report::reports`]).
fn bodies(payload: &Payload, batch: &Batch) -> Result<Vec<Bytes>, ExportError> {
    match payload {
        Payload::Otlp => Ok(vec![batch.to_bytes()]),
        Payload::Report { token, reporter_id } => {
            let mut out = Vec::new();
            let bad = |e: tracepipe_pipeline::wire::WireError| ExportError::Permanent(format!("cannot convert the batch to a report: {e}"));
            match batch.encoded_buffers() {
                Some(bufs) => {
                    for b in bufs {
                        crate::satellite::report::reports(b, token, *reporter_id, &mut out).map_err(bad)?;
                    }
                }
                None => crate::satellite::report::reports(&batch.to_bytes(), token, *reporter_id, &mut out).map_err(bad)?,
            }
            Ok(out)
        }
    }
}

/// The `service.name` of a batch's first resource, read at the wire.
fn first_service(batch: &Batch) -> Option<String> {
    let name = |b: &[u8]| crate::satellite::report::first_service(b).ok().flatten().and_then(|s| std::str::from_utf8(s).ok()).map(str::to_owned);
    match batch.encoded_buffers() {
        Some(bufs) => bufs.first().and_then(|b| name(b)),
        None => name(&batch.to_bytes()),
    }
}

type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A connected (lazily) exporter for one sink.
#[derive(Clone)]
pub enum Exporter {
    /// OTLP/gRPC.
    Grpc {
        /// The channel.
        channel: tonic::transport::Channel,
        /// Metadata sent with every call.
        headers: tonic::metadata::MetadataMap,
        /// Message compression.
        compression: Option<CompressionEncoding>,
        /// OTLP or LightStep reports.
        payload: Payload,
    },
    /// OTLP/HTTP.
    Http {
        /// The client.
        client: Client<HttpsConnector, Full<Bytes>>,
        /// Full URL of the traces endpoint.
        uri: Uri,
        /// Headers for every request.
        headers: HeaderMap,
        /// JSON instead of protobuf.
        json: bool,
        /// Body compression.
        compression: Compression,
        /// Largest body before compression (JSON bodies are checked here; protobuf ones are
        /// cut to size before they reach the exporter).
        max_body: usize,
        /// OTLP or LightStep reports.
        payload: Payload,
    },
    /// Batches sent by the exporter of their resource's `service.name` (the satellite sink's
    /// per-project tokens), `default` for the rest; [`Exporter::partition`] first cuts a batch so
    /// that no request mixes them (and, for reports, so that each holds one resource).
    Routed {
        /// For services without their own.
        default: Box<Exporter>,
        /// By service name.
        by_service: Arc<std::collections::HashMap<String, Exporter>>,
        /// One resource per request (reports carry one reporter).
        per_resource: bool,
    },
}

/// Most bytes of an upstream's response body read (an OTLP response is a few bytes; a
/// misbehaving server must not make the sink buffer without bound).
const MAX_RESPONSE_BYTES: usize = 64 << 10;

fn https_connector(cfg: &OtlpSinkConfig, http2_only: bool) -> Result<HttpsConnector, String> {
    let tls = tls::client_config(&cfg.tls)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let b = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
    let b = match &cfg.tls.server_name {
        Some(n) => {
            let name = rustls::pki_types::ServerName::try_from(n.clone()).map_err(|e| format!("invalid tls.server_name {n:?}: {e}"))?;
            b.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => b,
    };
    Ok(if http2_only { b.enable_http2().wrap_connector(http) } else { b.enable_all_versions().wrap_connector(http) })
}

impl Exporter {
    /// Builds the client; nothing connects until the first export.
    pub fn new(cfg: &OtlpSinkConfig) -> Result<Exporter, String> {
        let uri = Uri::from_str(&cfg.endpoint).map_err(|e| format!("invalid endpoint: {e}"))?;
        let https = uri.scheme_str() == Some("https");
        match cfg.protocol {
            Protocol::Grpc => {
                // tonic refuses https URIs without its own TLS; we give it an http:// origin and a
                // connector that speaks TLS when the configured endpoint is https.
                let plain = format!("http://{}", uri.authority().map(|a| a.as_str()).unwrap_or_default());
                let endpoint = tonic::transport::Endpoint::from_shared(plain)
                    .map_err(|e| e.to_string())?
                    .timeout(cfg.timeout.get())
                    .connect_timeout(Duration::from_secs(5))
                    .tcp_nodelay(true);
                let channel = if https {
                    let connector = https_connector(cfg, true)?;
                    let connector = tower::ServiceExt::map_request(connector, |u: Uri| {
                        let mut parts = u.into_parts();
                        parts.scheme = Some(http::uri::Scheme::HTTPS);
                        Uri::from_parts(parts).unwrap_or_default()
                    });
                    endpoint.connect_with_connector_lazy(connector)
                } else {
                    endpoint.connect_lazy()
                };
                let mut headers = tonic::metadata::MetadataMap::new();
                for (k, v) in &cfg.headers {
                    let key = tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()).map_err(|e| e.to_string())?;
                    headers.insert(key, v.parse().map_err(|_| format!("invalid header value for {k}"))?);
                }
                let compression = match cfg.compression {
                    Compression::None => None,
                    Compression::Gzip => Some(CompressionEncoding::Gzip),
                    Compression::Zstd => Some(CompressionEncoding::Zstd),
                };
                Ok(Exporter::Grpc { channel, headers, compression, payload: Payload::Otlp })
            }
            Protocol::HttpProtobuf | Protocol::HttpJson => {
                let uri = if uri.path() == "/" || uri.path().is_empty() {
                    Uri::from_str(&format!("{}/v1/traces", cfg.endpoint.trim_end_matches('/'))).map_err(|e| e.to_string())?
                } else {
                    uri
                };
                let connector = https_connector(cfg, false)?;
                let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
                let mut headers = HeaderMap::new();
                for (k, v) in &cfg.headers {
                    headers.insert(HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?, HeaderValue::from_str(v).map_err(|e| e.to_string())?);
                }
                Ok(Exporter::Http {
                    client,
                    uri,
                    headers,
                    json: cfg.protocol == Protocol::HttpJson,
                    compression: cfg.compression,
                    max_body: cfg.max_request_bytes.get() as usize,
                    payload: Payload::Otlp,
                })
            }
        }
    }

    /// This exporter sending LightStep reports with `token` instead of OTLP requests (gRPC
    /// `CollectorService/Report`; HTTP: a POST to the endpoint's URL).
    pub fn into_report(self, token: &str, reporter_id: u64) -> Result<Exporter, String> {
        let payload = Payload::Report { token: token.to_owned(), reporter_id };
        match self {
            Exporter::Grpc { channel, headers, compression, .. } => Ok(Exporter::Grpc { channel, headers, compression, payload }),
            // The satellite config gives the report path (`/api/v2/reports` by default).
            Exporter::Http { client, uri, headers, compression, max_body, .. } => Ok(Exporter::Http { client, uri, headers, json: false, compression, max_body, payload }),
            Exporter::Routed { .. } => Err("a routed exporter is made of report exporters, not turned into one".into()),
        }
    }

    /// The exporter for a batch (a routed one picks by the first resource's `service.name`).
    fn pick(&self, batch: &Batch) -> &Exporter {
        match self {
            Exporter::Routed { default, by_service, .. } => {
                if by_service.is_empty() {
                    return default;
                }
                first_service(batch).and_then(|s| by_service.get(&s)).unwrap_or(default)
            }
            other => other,
        }
    }

    /// Cuts a batch into the parts that must go in separate requests: for a routed exporter, by
    /// the exporter of each resource's service (and one resource per part for reports); else
    /// the batch whole. Cut at the wire: the parts share the batch's buffers, nothing is
    /// decoded. Every part keeps the batch's finalizers.
    pub fn partition(&self, batch: Batch) -> Result<Vec<Batch>, String> {
        let Exporter::Routed { by_service, per_resource, .. } = self else { return Ok(vec![batch]) };
        if by_service.is_empty() && !per_resource {
            return Ok(vec![batch]);
        }
        let parts = batch.split_by_resource().map_err(|e| e.to_string())?;
        if *per_resource || parts.len() <= 1 {
            return Ok(parts);
        }
        let mut groups: Vec<(Option<String>, Batch)> = Vec::new();
        for p in parts {
            let key = first_service(&p).filter(|s| by_service.contains_key(s));
            match groups.iter_mut().find(|(k, _)| *k == key) {
                // The part's finalizers are the group's already.
                Some((_, g)) => g.append(p.without_finalizers()).map_err(|e| e.error.to_string())?,
                None => groups.push((key, p)),
            }
        }
        Ok(groups.into_iter().map(|(_, g)| g).collect())
    }

    /// Sends one batch.
    pub async fn export(&self, batch: &Batch, timeout: Duration) -> Result<Exported, ExportError> {
        let r = self.pick(batch).export_one(batch, timeout).await;
        match (r, self) {
            // A routed exporter's refusals name the service (a wrong project token, typically);
            // the batch is decoded only then.
            (Err(ExportError::Permanent(m)), Exporter::Routed { .. }) => {
                let service = first_service(batch);
                Err(ExportError::Permanent(format!("{m} (spans of service `{}`)", service.as_deref().unwrap_or("unknown"))))
            }
            (r, _) => r,
        }
    }

    async fn export_one(&self, batch: &Batch, timeout: Duration) -> Result<Exported, ExportError> {
        match self {
            Exporter::Routed { .. } => Err(ExportError::Permanent("routed exporters do not nest".into())),
            Exporter::Grpc { channel, headers, compression, payload } => {
                let mut sent = Exported::default();
                for body in bodies(payload, batch)? {
                    let len = body.len() as u64;
                    let mut grpc = tonic::client::Grpc::new(channel.clone());
                    if let Some(c) = compression {
                        grpc = grpc.send_compressed(*c);
                    }
                    grpc = grpc.accept_compressed(CompressionEncoding::Gzip).max_decoding_message_size(16 << 20);
                    grpc.ready().await.map_err(|e| ExportError::Retryable { message: format!("connection failed: {e}"), retry_after: None })?;
                    let mut req = tonic::Request::new(body);
                    *req.metadata_mut() = headers.clone();
                    req.set_timeout(timeout);
                    let path = http::uri::PathAndQuery::from_static(if matches!(payload, Payload::Otlp) { EXPORT_PATH } else { REPORT_PATH });
                    match grpc.unary(req, path, RawCodec).await {
                        Ok(resp) => {
                            sent.rejected += read_response(payload, resp.into_inner(), false)?;
                            sent.bytes += len;
                        }
                        Err(s) => return Err(classify_grpc(&s)),
                    }
                }
                Ok(sent)
            }
            Exporter::Http { payload: payload @ Payload::Report { .. }, client, uri, headers, compression, max_body, .. } => {
                let mut sent = Exported::default();
                for body in bodies(payload, batch)? {
                    let done = http_post(client, uri, headers, "application/octet-stream", *compression, *max_body, body, timeout).await?;
                    sent.rejected += read_response(payload, done.1, false)?;
                    sent.bytes += done.0;
                }
                Ok(sent)
            }
            Exporter::Http { client, uri, headers, json, compression, max_body, payload } => {
                let raw: Bytes = if *json {
                    let rs = batch.to_resource_spans().map_err(|e| ExportError::Permanent(e.to_string()))?;
                    otlp_json::encode_request(&rs).into()
                } else {
                    batch.to_bytes()
                };
                let ct = if *json { "application/json" } else { "application/x-protobuf" };
                let (len, body) = http_post(client, uri, headers, ct, *compression, *max_body, raw, timeout).await?;
                Ok(Exported { bytes: len, rejected: read_response(payload, body, *json)? })
            }
        }
    }
}

/// POSTs one body (compressed as configured); returns the bytes sent and the response body of
/// a 2xx answer, or the classified failure.
#[allow(clippy::too_many_arguments)]
async fn http_post(
    client: &Client<HttpsConnector, Full<Bytes>>,
    uri: &Uri,
    headers: &HeaderMap,
    content_type: &'static str,
    compression: Compression,
    max_body: usize,
    raw: Bytes,
    timeout: Duration,
) -> Result<(u64, Bytes), ExportError> {
    if raw.len() > max_body {
        return Err(ExportError::TooLarge(format!("request body of {} bytes exceeds max_request_bytes ({max_body})", raw.len())));
    }
    let body: Bytes = match compression {
        Compression::None => raw,
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(BytesMut::with_capacity(raw.len() / 4).writer(), flate2::Compression::fast());
            std::io::Write::write_all(&mut enc, &raw).map_err(|e| ExportError::Permanent(e.to_string()))?;
            enc.finish().map_err(|e| ExportError::Permanent(e.to_string()))?.into_inner().freeze()
        }
        Compression::Zstd => zstd::bulk::compress(&raw, 1).map_err(|e| ExportError::Permanent(e.to_string()))?.into(),
    };
    let len = body.len() as u64;
    let mut req = http::Request::post(uri.clone())
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body))
        .map_err(|e| ExportError::Permanent(e.to_string()))?;
    req.headers_mut().extend(headers.clone());
    match compression {
        Compression::None => {}
        Compression::Gzip => {
            req.headers_mut().insert(http::header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        Compression::Zstd => {
            req.headers_mut().insert(http::header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
        }
    }
    let resp = match tokio::time::timeout(timeout, client.request(req)).await {
        Err(_) => return Err(ExportError::Retryable { message: format!("request timed out after {timeout:?}"), retry_after: None }),
        Ok(Err(e)) => return Err(ExportError::Retryable { message: format!("request failed: {e}"), retry_after: None }),
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let limited = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE_BYTES);
    let body = match tokio::time::timeout(timeout, limited.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        _ => Bytes::new(),
    };
    if status.is_success() {
        return Ok((len, body));
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(256)]).into_owned();
    let message = format!("HTTP {status}: {text}");
    Err(classify_http(status.as_u16(), message, retry_after))
}

/// The OTLP/HTTP retry rules: 429, 502, 503 and 504 are retried (honouring `Retry-After`), 413
/// means the body was too large, anything else is permanent.
pub(crate) fn classify_http(status: u16, message: String, retry_after: Option<Duration>) -> ExportError {
    match status {
        429 | 502 | 503 | 504 => ExportError::Retryable { message, retry_after },
        413 => ExportError::TooLarge(message),
        _ => ExportError::Permanent(message),
    }
}

/// True when a status says the request message was larger than the server takes: tonic servers
/// (tracepipe, Rotel) answer `OUT_OF_RANGE` "decoded message length too large" or, for a
/// compressed message, `RESOURCE_EXHAUSTED` "size limit, of N bytes, exceeded while
/// decompressing"; grpc-go servers (the OTel Collector) `RESOURCE_EXHAUSTED` "received message
/// larger than max".
fn says_too_large(s: &Status) -> bool {
    let m = s.message();
    matches!(s.code(), Code::OutOfRange | Code::ResourceExhausted)
        && (m.contains("too large") || m.contains("larger than max") || m.contains("size limit"))
}

/// The OTel retry rules for gRPC codes, and a too-large message told apart from the rest.
pub(crate) fn classify_grpc(s: &Status) -> ExportError {
    let message = format!("gRPC {:?}: {}", s.code(), s.message());
    if says_too_large(s) {
        return ExportError::TooLarge(message);
    }
    // A status the server never sent: tonic made it from a local transport error (a connection
    // reset or a GOAWAY while the request was in flight: "h2 protocol error" as INTERNAL, a
    // refused connection as UNKNOWN). It carries that error as its source; a status read from the
    // server's trailers has none. The server never judged the request: retry it. (Seen: an
    // upstream stopped with SIGTERM mid-export made 500 queued spans "fail permanently".)
    if std::error::Error::source(s).is_some() {
        return ExportError::Retryable { message, retry_after: None };
    }
    match s.code() {
        Code::Unavailable | Code::Aborted | Code::DeadlineExceeded | Code::Cancelled | Code::OutOfRange | Code::DataLoss => {
            ExportError::Retryable { message, retry_after: None }
        }
        // As the OTel Go exporter: RESOURCE_EXHAUSTED is retried only when the server says when
        // (RetryInfo details or grpc-retry-pushback-ms); otherwise it is a hard limit that
        // retrying cannot fix (a too-large message is told apart above).
        Code::ResourceExhausted => {
            let pushback = s.metadata().get("grpc-retry-pushback-ms").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
            if pushback.is_some() || !s.details().is_empty() {
                ExportError::Retryable { message, retry_after: pushback.map(Duration::from_millis) }
            } else {
                ExportError::Permanent(message)
            }
        }
        // Transport failures surface as Unknown with a connection error message.
        Code::Unknown if s.message().contains("transport") || s.message().contains("connect") => ExportError::Retryable { message, retry_after: None },
        _ => ExportError::Permanent(message),
    }
}
