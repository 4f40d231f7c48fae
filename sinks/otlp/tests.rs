//! OTLP sink tests: config checks, the retry classification of every gRPC code and HTTP status,
//! and the task against an in-process OTLP/HTTP endpoint that refuses large bodies (cut, halved,
//! dropped and counted, never resent whole).

use super::OtlpSinkConfig;

fn parse(body: &str) -> Result<OtlpSinkConfig, Vec<tracepipe_config::ConfigError>> {
    let text = format!("receivers:\n  a: {{type: otlp}}\nsinks:\n  s:\n    type: otlp\n    inputs: [a]\n{body}");
    let (cfg, errs) = tracepipe_config::load("t.yaml", &text, &|_| None);
    assert!(errs.is_empty(), "{errs}");
    OtlpSinkConfig::from_node(&cfg.sinks[0].body, "t.yaml")
}

#[test]
fn config_defaults_and_errors() {
    let c = parse("    endpoint: http://127.0.0.1:4317\n").unwrap();
    assert_eq!(c.protocol, super::Protocol::Grpc);
    assert_eq!(c.compression, super::Compression::Gzip);
    assert_eq!(c.queue.max_spans, 100_000);
    let e = parse("    endpoint: 127.0.0.1:4317\n    protocol: http/xml\n").unwrap_err();
    assert!(e[0].to_string().starts_with("t.yaml:8:15:"), "{}", e[0]);
    let e = parse("    endpoint: ftp://x:1\n    tls: { cert_file: a.pem }\n").unwrap_err();
    let all: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    assert!(all[0].contains("t.yaml:7:15: invalid endpoint \"ftp://x:1\""), "{all:?}");
    assert!(all[1].contains("cert_file and key_file must be given together"), "{all:?}");
    let e = parse("").unwrap_err();
    assert!(e[0].message.contains("`endpoint` is required"), "{}", e[0]);
}

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, TracesData};
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tracepipe_config::{ByteSize, ComponentKind};
use tracepipe_pipeline::telemetry::Health;
use tracepipe_pipeline::topology::{ComponentContext, Input};
use tracepipe_pipeline::{Batch, BatchStatus, Finalizer};

use super::client::{classify_grpc, classify_http, ExportError};

fn kind(e: &ExportError) -> &'static str {
    match e {
        ExportError::Retryable { .. } => "retryable",
        ExportError::Permanent(_) => "permanent",
        ExportError::TooLarge(_) => "too_large",
    }
}

#[test]
fn grpc_codes_classified_as_the_otel_exporters_do() {
    for code in [Code::Unavailable, Code::Aborted, Code::DeadlineExceeded, Code::Cancelled, Code::OutOfRange, Code::DataLoss] {
        assert_eq!(kind(&classify_grpc(&Status::new(code, "x"))), "retryable", "{code:?}");
    }
    for code in [Code::InvalidArgument, Code::Unauthenticated, Code::PermissionDenied, Code::NotFound, Code::Unimplemented, Code::Internal, Code::FailedPrecondition] {
        assert_eq!(kind(&classify_grpc(&Status::new(code, "x"))), "permanent", "{code:?}");
    }
    // RESOURCE_EXHAUSTED: retried only when the server says when.
    assert_eq!(kind(&classify_grpc(&Status::new(Code::ResourceExhausted, "quota"))), "permanent");
    let mut md = tonic::metadata::MetadataMap::new();
    md.insert("grpc-retry-pushback-ms", "250".parse().unwrap());
    match classify_grpc(&Status::with_metadata(Code::ResourceExhausted, "busy", md)) {
        ExportError::Retryable { retry_after, .. } => assert_eq!(retry_after, Some(Duration::from_millis(250))),
        e => panic!("{e:?}"),
    }
    let with_details = Status::with_details(Code::ResourceExhausted, "busy", bytes::Bytes::from_static(b"\x0a\x00"));
    assert_eq!(kind(&classify_grpc(&with_details)), "retryable");
    // Too large, as tonic servers (tracepipe, Rotel) and grpc-go servers (the OTel Collector) say it.
    let tonic_says = Status::new(Code::OutOfRange, "Error, decoded message length too large: found 5242880 bytes, the limit is: 4194304 bytes");
    let go_says = Status::new(Code::ResourceExhausted, "grpc: received message larger than max (5242880 vs. 4194304)");
    let go_after_decompression = Status::new(Code::ResourceExhausted, "grpc: received message after decompression larger than max (5242880 vs. 4194304)");
    let tonic_decompressing = Status::new(Code::ResourceExhausted, "Error decompressing: size limit, of 1048576 bytes, exceeded while decompressing message");
    for s in [tonic_says, tonic_decompressing, go_says, go_after_decompression] {
        assert_eq!(kind(&classify_grpc(&s)), "too_large", "{s:?}");
    }
    // Transport failures reported as UNKNOWN are retried.
    assert_eq!(kind(&classify_grpc(&Status::new(Code::Unknown, "transport error"))), "retryable");
    // Statuses tonic makes from local h2 errors (the connection torn down mid-request): INTERNAL
    // "h2 protocol error", RESOURCE_EXHAUSTED for ENHANCE_YOUR_CALM; the same codes from the
    // server stay permanent (above).
    for reason in [h2::Reason::PROTOCOL_ERROR, h2::Reason::INTERNAL_ERROR, h2::Reason::ENHANCE_YOUR_CALM] {
        let local = Status::from_error(Box::new(h2::Error::from(reason)));
        assert!(matches!(local.code(), Code::Internal | Code::ResourceExhausted), "{local:?}");
        assert_eq!(kind(&classify_grpc(&local)), "retryable", "{local:?}");
    }
    assert_eq!(kind(&classify_grpc(&Status::from_error(Box::new(std::io::Error::other("connection reset"))))), "retryable");
}

#[test]
fn http_statuses_classified() {
    for s in [429, 502, 503, 504] {
        match classify_http(s, "m".into(), Some(Duration::from_secs(3))) {
            ExportError::Retryable { retry_after, .. } => assert_eq!(retry_after, Some(Duration::from_secs(3)), "{s}"),
            e => panic!("{s}: {e:?}"),
        }
    }
    for s in [400, 401, 403, 404, 405, 415, 500, 501] {
        assert_eq!(kind(&classify_http(s, "m".into(), None)), "permanent", "{s}");
    }
    assert_eq!(kind(&classify_http(413, "m".into(), None)), "too_large");
}

#[test]
fn max_request_bytes_default_and_bounds() {
    assert_eq!(parse("    endpoint: http://127.0.0.1:4317\n").unwrap().max_request_bytes, ByteSize::mib(4));
    assert_eq!(parse("    endpoint: http://127.0.0.1:4317\n    max_request_bytes: 1MiB\n").unwrap().max_request_bytes, ByteSize::mib(1));
    let e = parse("    endpoint: http://127.0.0.1:4317\n    queue: { max_bytes: 100 }\n").unwrap_err();
    assert!(e[0].to_string().contains("max_bytes at least 1KiB"), "{}", e[0]);
    assert_eq!(parse("    endpoint: http://127.0.0.1:4317\n").unwrap().queue.max_bytes, ByteSize::mib(256));
    let e = parse("    endpoint: http://127.0.0.1:4317\n    max_request_bytes: 100\n").unwrap_err();
    assert!(e[0].to_string().starts_with("t.yaml:8:24: max_request_bytes must be between"), "{}", e[0]);
}

/// What the scripted OTLP/HTTP server saw.
#[derive(Default)]
struct Seen {
    /// Span names of accepted requests, in arrival order.
    names: Vec<String>,
    /// Accepted body sizes.
    accepted: Vec<usize>,
    /// Body sizes refused with 413.
    refused: Vec<usize>,
}

/// Serves `app` on a free loopback port; returns its base URL.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// An OTLP/HTTP endpoint that refuses bodies over `limit` with 413 (as a collector with a body
/// limit does) and records the rest.
async fn limited_server(limit: usize, json: bool) -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let s = s.clone();
            async move {
                let mut seen = s.lock().unwrap();
                if body.len() > limit {
                    seen.refused.push(body.len());
                    return (axum::http::StatusCode::PAYLOAD_TOO_LARGE, axum::body::Bytes::new());
                }
                let req: ExportTraceServiceRequest = if json {
                    let rs = tracepipe_pipeline::otlp_json::decode_request(&body).expect("valid OTLP/JSON");
                    ExportTraceServiceRequest { resource_spans: rs }
                } else {
                    ExportTraceServiceRequest::decode(body.clone()).expect("valid OTLP protobuf")
                };
                seen.accepted.push(body.len());
                seen.names.extend(req.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans).map(|s| s.name.clone()));
                (axum::http::StatusCode::OK, axum::body::Bytes::new())
            }
        }),
    ).layer(axum::extract::DefaultBodyLimit::disable());
    let url = serve(app).await;
    (url, seen)
}

/// One received buffer: spans named `{tag}-{i}` whose names are padded to `sizes[i]` bytes.
fn buffer(tag: &str, sizes: &[usize]) -> Batch {
    let spans = sizes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let name = format!("{tag}-{i}-");
            let pad = n.saturating_sub(name.len());
            Span { trace_id: vec![7; 16], span_id: vec![(i % 250) as u8 + 1; 8], name: format!("{name}{}", "x".repeat(pad)), ..Default::default() }
        })
        .collect();
    let rs = ResourceSpans {
        resource: Some(Resource {
            attributes: vec![KeyValue { key: "service.name".into(), value: Some(AnyValue { value: Some(any_value::Value::StringValue("big".into())) }), key_strindex: 0 }],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
        ..Default::default()
    };
    Batch::from_encoded(TracesData { resource_spans: vec![rs] }.encode_to_vec().into(), sizes.len())
}

fn names(tag: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{tag}-{i}-")).collect()
}

fn tracked(b: Batch) -> (Batch, mpsc::UnboundedReceiver<BatchStatus>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (b.with_finalizer(Finalizer::new(move |s| { let _ = tx.send(s); })), rx)
}

fn http_sink(url: &str, protocol: super::Protocol, max_request_bytes: u64) -> OtlpSinkConfig {
    let mut c = OtlpSinkConfig { endpoint: url.to_owned(), protocol, compression: super::Compression::None, max_request_bytes: ByteSize(max_request_bytes), ..Default::default() };
    c.retry.initial_interval = tracepipe_config::Duration::from_millis(10);
    c.queue.num_consumers = 1;
    c
}

async fn run_sink(cfg: OtlpSinkConfig, batches: Vec<Batch>) {
    let (tx, input) = Input::channel(4);
    let ctx = ComponentContext { name: "up".into(), kind: ComponentKind::Sink, input: Some(input), output: None, shutdown: CancellationToken::new(), health: Health::default() };
    let task = tokio::spawn(super::build(cfg, ctx).await.unwrap());
    for b in batches {
        tx.send(b).await.unwrap();
    }
    drop(tx);
    tokio::time::timeout(Duration::from_secs(30), task).await.expect("sink drained").unwrap().unwrap();
}

/// The stall of issue 18: a batch bigger than the upstream takes. It is cut before sending,
/// halved when refused (and later requests cut to the learned size, so refusals stay few), a
/// span the upstream refuses alone and one over `max_request_bytes` are dropped; the rest
/// arrives in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_batches_are_cut_and_halved_never_resent_whole() {
    let (url, seen) = limited_server(64 << 10, false).await;
    // 1,000 spans of ~300 bytes (~330 KB), then a 100 KB span (under max_request_bytes, over the
    // server's 64 KiB) and a 5 MiB one (over max_request_bytes).
    let mut sizes = vec![300; 1000];
    sizes.push(100_000);
    sizes.push(5 << 20);
    let (first, mut status1) = tracked(buffer("a", &sizes));
    let (second, mut status2) = tracked(buffer("b", &[300; 1000]));
    run_sink(http_sink(&url, super::Protocol::HttpProtobuf, 4 << 20), vec![first, second]).await;
    let seen = seen.lock().unwrap();
    let mut want = names("a", 0..1000);
    want.extend(names("b", 0..1000));
    let got: Vec<String> = seen.names.iter().map(|n| n.trim_end_matches('x').to_owned()).collect();
    assert_eq!(got, want, "every span that fits arrives, once, in order");
    assert!(seen.accepted.iter().all(|n| *n <= 64 << 10));
    // 330 KB -> 165 -> 82 -> 41 KB: three halvings for the first batch, one refusal of the 100 KB
    // span alone; the second batch is cut to the learned size and never refused.
    assert!(seen.refused.iter().all(|n| *n <= 4 << 20), "nothing over max_request_bytes was sent: {:?}", seen.refused);
    assert!(seen.refused.len() <= 5, "refusals stay few: {:?}", seen.refused);
    assert!(seen.refused.iter().any(|n| (100_000..100_200).contains(n)), "the 100 KB span was tried alone: {:?}", seen.refused);
    assert_eq!(status1.recv().await, Some(BatchStatus::Rejected), "two spans dropped: a permanent outcome");
    assert_eq!(status2.recv().await, Some(BatchStatus::Delivered));
}

/// OTLP/JSON bodies are bigger than the protobuf the batch was cut by: a JSON body over
/// `max_request_bytes` is halved before it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_bodies_stay_under_max_request_bytes() {
    let (url, seen) = limited_server(usize::MAX, true).await;
    let (b, mut status) = tracked(buffer("j", &[200; 2000]));
    run_sink(http_sink(&url, super::Protocol::HttpJson, 64 << 10), vec![b]).await;
    let seen = seen.lock().unwrap();
    let got: Vec<String> = seen.names.iter().map(|n| n.trim_end_matches('x').to_owned()).collect();
    assert_eq!(got, names("j", 0..2000));
    assert!(seen.accepted.iter().all(|n| *n <= 64 << 10), "{:?}", seen.accepted);
    assert!(seen.accepted.len() >= 6, "cut into several bodies: {:?}", seen.accepted);
    assert_eq!(status.recv().await, Some(BatchStatus::Delivered));
}

/// An OTLP/HTTP endpoint that takes 300 ms per request and records each request's span count.
async fn slow_server() -> (String, Arc<Mutex<Vec<usize>>>) {
    let seen = Arc::new(Mutex::new(Vec::<usize>::new()));
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let s = s.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let req = ExportTraceServiceRequest::decode(body).unwrap();
                s.lock().unwrap().push(req.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|x| x.spans.len()).sum());
                (axum::http::StatusCode::OK, axum::body::Bytes::new())
            }
        }),
    );
    let url = serve(app).await;
    (url, seen)
}

/// `when_full: drop_newest`: a batch that does not fit the queue's room — in spans, or in bytes
/// although its spans fit — is dropped at once (reported errored; counted `queue_full`), never
/// waited for, while the queued one is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_newest_drops_what_does_not_fit_the_queue() {
    // (queue spans, queue bytes, span size): 8 + 5 spans over 10; then 2 x ~8 KB over 12 KiB.
    for (max_spans, max_bytes, size) in [(10, 256 << 20, 100), (1000, 12 << 10, 1000)] {
        let (url, seen) = slow_server().await;
        let mut cfg = http_sink(&url, super::Protocol::HttpProtobuf, 4 << 20);
        cfg.queue = super::QueueConfig { max_spans, max_bytes: ByteSize(max_bytes), when_full: super::WhenFull::DropNewest, num_consumers: 1, storage: None };
        let (a, mut sa) = tracked(buffer("a", &vec![size; 8]));
        let (b, mut sb) = tracked(buffer("b", &vec![size; 5]));
        run_sink(cfg, vec![a, b]).await;
        assert_eq!(sb.recv().await, Some(BatchStatus::Errored), "queue {max_spans} spans / {max_bytes} bytes: the second batch does not fit");
        assert_eq!(sa.recv().await, Some(BatchStatus::Delivered));
        assert_eq!(*seen.lock().unwrap(), vec![8]);
    }
}

#[test]
fn queue_storage_settings_are_checked() {
    let ok = parse("    endpoint: http://127.0.0.1:4317\n    queue: { storage: { path: /tmp/q } }\n").unwrap();
    assert_eq!(ok.queue.storage.unwrap().max_bytes, ByteSize::mib(1024), "default 1GiB");
    let e = parse("    endpoint: http://127.0.0.1:4317\n    queue: { storage: { path: '', max_bytes: 10KiB } }\n").unwrap_err();
    let msgs: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    assert!(msgs.iter().any(|m| m.contains("queue.storage: path is required")), "{msgs:?}");
    assert!(msgs.iter().any(|m| m.contains("queue.storage: max_bytes must be at least 1MiB")), "{msgs:?}");
    assert!(parse("    endpoint: http://127.0.0.1:4317\n    queue: { storage: { path: /q, sync: always } }\n").is_err(), "unknown field");
    assert!(parse("    endpoint: http://127.0.0.1:4317\n    queue: { storage: { max_bytes: 1GiB } }\n").is_err(), "path missing");
}
