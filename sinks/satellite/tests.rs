//! Tests of the satellite sink: settings, and the Report mapping read back by the LightStep
//! receiver's own translation.

use super::{SatelliteConfig, SatelliteProtocol};
use crate::otlp::Protocol;

fn parse(body: &str) -> Result<SatelliteConfig, Vec<String>> {
    let yaml = format!("receivers:\n  r: {{ type: otlp }}\nsinks:\n  ls:\n    type: satellite\n    inputs: [r]\n{body}");
    let (file, errs) = tracepipe_config::load("t.yaml", &yaml, &|v| (v == "LS_TOKEN").then(|| "env-token".to_owned()));
    assert!(errs.is_empty(), "{errs}");
    SatelliteConfig::from_node(&file.sinks[0].body, "t.yaml").map_err(|e| e.iter().map(|e| e.to_string()).collect())
}

#[test]
fn endpoints_become_the_otlp_sinks_urls_with_the_token_header() {
    let c = parse("    access_token: ${env:LS_TOKEN}\n").unwrap();
    let o = c.to_otlp(&c.access_token).unwrap();
    assert_eq!((o.endpoint.as_str(), o.protocol), ("https://ingest.lightstep.com:443", Protocol::Grpc));
    assert_eq!(o.headers.get("lightstep-access-token").map(String::as_str), Some("env-token"));
    let c = parse("    access_token: t\n    endpoint: sat.lightstep:9292\n    protocol: otlp_http\n    tls: { insecure: true }\n").unwrap();
    assert_eq!(c.to_otlp("t").unwrap().endpoint, "http://sat.lightstep:9292/traces/otlp/v0.9");
    let c = parse("    access_token: t\n    endpoint: sat:8181\n    protocol: report_http\n").unwrap();
    assert_eq!(c.protocol, SatelliteProtocol::ReportHttp);
    assert_eq!(c.to_otlp("t").unwrap().endpoint, "https://sat:8181/api/v2/reports");
    let c = parse("    access_token: t\n    endpoint: http://sat:8181/custom\n    protocol: report_http\n").unwrap();
    assert_eq!(c.to_otlp("t").unwrap().endpoint, "http://sat:8181/custom");
}

#[test]
fn bad_settings_are_reported_all_at_once_at_their_keys() {
    let errs = parse("    endpoint: \"://x\"\n    access_tokens_by_service: { checkout: \"\" }\n    protocol: report_grpc\n    compression: zstd\n    tls: { insecure: true, ca_file: ca.pem }\n").unwrap_err();
    let joined = errs.join("\n");
    for want in ["access_token is required", "access_tokens_by_service.checkout: the token is empty", "insecure (plaintext) cannot be combined", "zstd is not spoken", "invalid endpoint"] {
        assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
    }
    assert!(errs.iter().all(|e| e.starts_with("t.yaml:")), "{joined}");
    let errs = parse("    access_token: t\n    protocol: thrift\n").unwrap_err();
    assert!(errs[0].contains("protocol") || errs[0].contains("thrift"), "{errs:?}");
}

/// An HTTP/2 server that resets every stream (`reset`), or answers every call with a gRPC
/// message that is not a `ReportResponse`.
async fn h2_server(reset: bool) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(s).await else { return };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    drop(req);
                    if reset {
                        respond.send_reset(h2::Reason::INTERNAL_ERROR);
                        continue;
                    }
                    let resp = http::Response::builder().header("content-type", "application/grpc").body(()).unwrap();
                    let mut send = respond.send_response(resp, false).unwrap();
                    // One uncompressed message of 3 bytes that no protobuf decoder reads.
                    send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 3, 0xff, 0xff, 0xff]), false).unwrap();
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    send.send_trailers(trailers).unwrap();
                }
            });
        }
    });
    format!("127.0.0.1:{port}")
}

/// A reset stream is retried (a satellite restarting); an answer that is not a `ReportResponse`
/// is permanent (resending the report cannot change it), with a message that says so.
#[tokio::test]
async fn reset_streams_are_retryable_and_garbage_answers_permanent() {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    let batch = tracepipe_pipeline::Batch::from_resource_spans(vec![ResourceSpans {
        scope_spans: vec![ScopeSpans { spans: vec![Span { trace_id: vec![1; 16], span_id: vec![2; 8], name: "op".into(), ..Default::default() }], ..Default::default() }],
        ..Default::default()
    }]);
    for reset in [true, false] {
        let ep = h2_server(reset).await;
        let c = parse(&format!("    access_token: t\n    endpoint: {ep}\n    protocol: report_grpc\n    tls: {{ insecure: true }}\n")).unwrap();
        let r = super::exporter(&c).unwrap().export(&batch, std::time::Duration::from_secs(5)).await;
        match (reset, r) {
            (true, Err(crate::otlp::ExportError::Retryable { .. })) => {}
            (false, Err(crate::otlp::ExportError::Permanent(m))) => assert!(m.contains("unreadable ReportResponse"), "{m}"),
            (reset, other) => panic!("reset={reset}: {other:?}"),
        }
    }
}
