//! Tests of the OTLP receiver: the gRPC service refuses what is not gRPC, and the wire filter
//! that drops invalid spans.

use tower::ServiceExt;
use tracepipe_pipeline::topology::{Input, Output};
use tracepipe_pipeline::wire::scan_traces;

use super::grpc::ExportService;
use super::ingest::{without_invalid, Ingest};

/// As the gRPC spec says: a request whose content-type is not `application/grpc…` gets HTTP
/// 415, not an OK with an empty response.
#[tokio::test]
async fn a_request_that_is_not_grpc_gets_415() {
    let (tx, _input) = Input::channel(1);
    let svc = ExportService { ingest: Ingest::new("in", Output::new(vec![tx]), std::time::Duration::ZERO), max_size: 4 << 20, auth: None };
    let path = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    let req = |ct: &str| http::Request::post(path).header("content-type", ct).body(http_body_util::Full::new(bytes::Bytes::from_static(b"\0\0\0\0\0"))).unwrap();
    for ct in ["application/json", "text/plain", ""] {
        let resp = svc.clone().oneshot(req(ct)).await.unwrap();
        assert_eq!(resp.status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}");
    }
    // A real (empty) gRPC message is answered OK.
    let resp = svc.clone().oneshot(req("application/grpc")).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::OK);
    assert_eq!(resp.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_owned()), None, "trailers carry the status");
}

/// Invalid spans are dropped on the wire; the rest decode as the valid ones, with their envelopes.
#[test]
fn invalid_spans_are_dropped_on_the_wire() {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, TracesData};
    use prost::Message;
    let span = |id: u8, trace_len: usize| Span { trace_id: vec![7; trace_len], span_id: vec![id; 8], name: format!("s{id}"), ..Default::default() };
    let rs = vec![ResourceSpans {
        scope_spans: vec![ScopeSpans { spans: vec![span(1, 16), span(2, 3), span(3, 16)], schema_url: "u".into(), ..Default::default() }, ScopeSpans { spans: vec![span(4, 0)], ..Default::default() }],
        ..Default::default()
    }];
    let body = TracesData { resource_spans: rs }.encode_to_vec();
    let report = scan_traces(&body).unwrap();
    let (bytes, kept, reasons) = without_invalid(&body, &report).unwrap();
    assert_eq!(kept, 2);
    assert_eq!(reasons, vec!["trace_id must be 16 bytes"]);
    let got = TracesData::decode(bytes.as_ref()).unwrap().resource_spans;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].scope_spans.len(), 1, "the scope left empty is dropped");
    assert_eq!(got[0].scope_spans[0].schema_url, "u");
    let names: Vec<&str> = got[0].scope_spans[0].spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["s1", "s3"]);
}

/// With acknowledgements the answer follows what the sinks did with the batch: delivered (or on
/// disk) is OK, a retryable failure or no answer in time is retryable, a permanent refusal is not.
#[tokio::test(start_paused = true)]
async fn acknowledgements_answer_what_the_sinks_did() {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, TracesData};
    use prost::Message;
    use tracepipe_pipeline::BatchStatus;

    use super::ingest::IngestError;
    use super::ingest::Transport;

    let body = bytes::Bytes::from(
        TracesData {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans: vec![Span { trace_id: vec![1; 16], span_id: vec![2; 8], ..Default::default() }], ..Default::default() }],
                ..Default::default()
            }],
        }
        .encode_to_vec(),
    );
    let (tx, mut input) = Input::channel(4);
    let ingest = Ingest::with_acknowledgements("in", Output::new(vec![tx]), std::time::Duration::from_millis(100), Some(std::time::Duration::from_secs(5)), None);
    // The "sink": marks each batch as told, after a moment, or holds it past the timeout.
    let sink = tokio::spawn(async move {
        for what in [Some(BatchStatus::Delivered), Some(BatchStatus::Errored), Some(BatchStatus::Rejected), None] {
            let b = input.recv().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            match what {
                Some(s) => b.set_status(s),
                None => tokio::time::sleep(std::time::Duration::from_secs(10)).await,
            }
        }
    });
    let answer = |r: Result<super::ingest::Accepted, IngestError>| match r {
        Ok(_) => "ok",
        Err(IngestError::NotDelivered) => "retry",
        Err(IngestError::RejectedDownstream) => "rejected",
        Err(e) => panic!("{e}"),
    };
    let t0 = tokio::time::Instant::now();
    assert_eq!(answer(ingest.protobuf(Transport::Http, body.clone()).await), "ok");
    assert!(t0.elapsed() >= std::time::Duration::from_secs(1), "the answer waited for the sink");
    assert_eq!(answer(ingest.protobuf(Transport::Http, body.clone()).await), "retry");
    assert_eq!(answer(ingest.protobuf(Transport::Grpc, body.clone()).await), "rejected");
    let t1 = tokio::time::Instant::now();
    assert_eq!(answer(ingest.protobuf(Transport::Grpc, body.clone()).await), "retry", "no answer within the timeout");
    // (paused clock: exactly the 5 s timeout, not a wall-clock guess)
    assert!(t1.elapsed() >= std::time::Duration::from_secs(5) && t1.elapsed() < std::time::Duration::from_millis(5_010), "{:?}", t1.elapsed());
    sink.await.unwrap();
}

/// With `auth.bearer_tokens`, a request without one of them is answered `UNAUTHENTICATED` before
/// anything else is looked at (even a body that is not gRPC), and counted; the scheme is
/// case-insensitive, the token exact.
#[tokio::test]
async fn grpc_requests_need_a_bearer_token_when_tokens_are_configured() {
    let (tx, _input) = Input::channel(4);
    let auth = tracepipe_config::AuthConfig { bearer_tokens: vec!["tok-1".into(), "tok-2".into()] };
    let svc = ExportService {
        ingest: Ingest::new("in", Output::new(vec![tx]), std::time::Duration::ZERO),
        max_size: 4 << 20,
        auth: crate::serve::BearerAuth::new(&auth, "in", "grpc"),
    };
    let path = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    let req = |authz: Option<&str>| {
        let mut b = http::Request::post(path).header("content-type", "application/grpc");
        if let Some(a) = authz {
            b = b.header("authorization", a);
        }
        b.body(http_body_util::Full::new(bytes::Bytes::from_static(b"\0\0\0\0\0"))).unwrap()
    };
    let status = |r: &http::Response<tonic::body::Body>| r.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_owned());
    for bad in [None, Some("Bearer tok-3"), Some("Basic tok-1"), Some("Bearer"), Some("Bearer tok-1x"), Some("tok-1")] {
        let resp = svc.clone().oneshot(req(bad)).await.unwrap();
        assert_eq!(status(&resp).as_deref(), Some("16"), "{bad:?}");
    }
    for good in ["Bearer tok-1", "bearer tok-2", "BEARER  tok-1 "] {
        let resp = svc.clone().oneshot(req(Some(good))).await.unwrap();
        assert_eq!(resp.status(), http::StatusCode::OK, "{good:?}");
        assert_ne!(status(&resp).as_deref(), Some("16"), "{good:?}");
    }
}
