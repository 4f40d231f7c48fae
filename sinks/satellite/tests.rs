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

mod transcoder {
    //! The wire-level OTLP → Report transcoder on inputs the roundtrip property test does not
    //! make: fields out of order and repeated, length prefixes that outgrow or undershoot their
    //! reserve, MB-size values, array/map/bytes values, and every truncation of a valid message.
    use opentelemetry_proto::tonic::common::v1::{any_value::Value as V, AnyValue, ArrayValue, KeyValue, KeyValueList};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status, TracesData};
    use prost::Message;
    use tracepipe_pipeline::lightstep_pb as pb;

    use crate::satellite::report;

    fn kv(k: &str, v: V) -> KeyValue {
        KeyValue { key: k.into(), value: Some(AnyValue { value: Some(v) }), key_strindex: 0 }
    }

    fn rich() -> Span {
        Span {
            trace_id: (1..=16).collect(),
            span_id: vec![7; 8],
            parent_span_id: vec![6; 8],
            name: "GET /".into(),
            kind: 2,
            start_time_unix_nano: 1_700_000_000_000_000_123,
            end_time_unix_nano: 1_700_000_000_500_000_123,
            attributes: vec![kv("a", V::StringValue("x".into())), kv("n", V::IntValue(-3)), kv("d", V::DoubleValue(1.5)), kv("b", V::BoolValue(true))],
            events: vec![span::Event { time_unix_nano: 5, name: "e".into(), attributes: vec![kv("k", V::IntValue(1))], dropped_attributes_count: 0 }],
            links: vec![span::Link { trace_id: vec![9; 16], span_id: vec![8; 8], ..Default::default() }],
            status: Some(Status { code: 2, message: "boom".into() }),
            ..Default::default()
        }
    }

    /// `ResourceSpans` bytes holding one span given as raw bytes.
    fn wrap(span: &[u8], resource: &Resource) -> Vec<u8> {
        let mut scope = Vec::new();
        prost::encoding::bytes::encode(2, &span.to_vec(), &mut scope);
        let mut rs = Vec::new();
        prost::encoding::message::encode(1, resource, &mut rs);
        prost::encoding::bytes::encode(2, &scope, &mut rs);
        rs
    }

    fn decode(wire: &[u8]) -> pb::ReportRequest {
        pb::ReportRequest::decode(wire).expect("the report decodes")
    }

    #[test]
    fn fields_in_any_order_and_repeated_messages_merge_as_protobuf_says() {
        let res = Resource { attributes: vec![kv("service.name", V::StringValue("svc".into()))], ..Default::default() };
        let s = rich();
        let normal = decode(&report::report(&wrap(&s.encode_to_vec(), &res), "t", 1).unwrap());
        // The same span as two messages, high-numbered fields first: concatenated, they merge.
        let ids = Span { trace_id: s.trace_id.clone(), span_id: s.span_id.clone(), parent_span_id: s.parent_span_id.clone(), name: s.name.clone(), kind: s.kind, ..Default::default() };
        let rest = Span { trace_id: vec![], span_id: vec![], start_time_unix_nano: s.start_time_unix_nano, end_time_unix_nano: s.end_time_unix_nano, attributes: s.attributes.clone(), events: s.events.clone(), links: s.links.clone(), status: s.status.clone(), ..Default::default() };
        let mut swapped = rest.encode_to_vec();
        swapped.extend(ids.encode_to_vec());
        assert_eq!(decode(&report::report(&wrap(&swapped, &res), "t", 1).unwrap()), normal);
        // A later scalar wins (a name sent twice), and two status messages merge field by field.
        let mut twice = s.encode_to_vec();
        twice.extend(Span { name: "POST /".into(), status: Some(Status { code: 0, message: "later".into() }), ..Default::default() }.encode_to_vec());
        let got = decode(&report::report(&wrap(&twice, &res), "t", 1).unwrap());
        assert_eq!(got.spans[0].operation_name, "POST /");
        let tags = &got.spans[0].tags;
        assert!(tags.iter().any(|t| t.key == "error"), "status code 2 kept when the second status has none: {tags:?}");
        assert!(tags.iter().any(|t| t.key == report::STATUS_MESSAGE && t.value == Some(pb::key_value::Value::StringValue("later".into()))));
    }

    #[test]
    fn length_prefixes_outgrow_and_undershoot_their_reserve() {
        let res = Resource::default();
        // 1 MiB attribute and a 200 KB event name: lengths of 3 and 4 bytes.
        let big = Span { attributes: vec![kv("blob", V::StringValue("x".repeat(1 << 20)))], events: vec![span::Event { name: "y".repeat(200_000), ..Default::default() }], ..rich() };
        // A span whose OTLP form is long (a trace state the Report protocol drops) but whose
        // report is short: the reserve for 2 bytes shrinks to 1.
        let short = Span { trace_id: vec![1; 16], span_id: vec![2; 8], trace_state: "z".repeat(300), ..Default::default() };
        // A span whose OTLP form is short but whose report is long (kind, status and a full trace
        // id become tags): the reserve for 1 byte grows to 2.
        let grows = Span { trace_id: vec![3; 16], span_id: vec![4; 8], kind: 5, status: Some(Status { code: 1, message: "m".repeat(60) }), ..Default::default() };
        for s in [big, short, grows] {
            let got = decode(&report::report(&wrap(&s.encode_to_vec(), &res), "t", 1).unwrap());
            let g = &got.spans[0];
            assert_eq!(g.span_context.as_ref().map(|c| c.span_id), Some(u64::from_be_bytes(s.span_id[..].try_into().unwrap())));
            for a in &s.attributes {
                let want = match a.value.as_ref().and_then(|v| v.value.clone()) {
                    Some(V::StringValue(x)) => Some(pb::key_value::Value::StringValue(x)),
                    _ => continue,
                };
                assert!(g.tags.iter().any(|t| t.key == a.key && t.value == want), "attribute {} lost", a.key);
            }
            assert_eq!(g.logs.len(), s.events.len());
            for (l, e) in g.logs.iter().zip(&s.events) {
                assert_eq!(l.fields[0].value, Some(pb::key_value::Value::StringValue(e.name.clone())));
            }
        }
    }

    #[test]
    fn arrays_maps_and_bytes_become_json_and_an_empty_value_an_empty_string() {
        let arr = V::ArrayValue(ArrayValue { values: vec![AnyValue { value: Some(V::IntValue(1)) }, AnyValue { value: Some(V::StringValue("b".into())) }] });
        let map = V::KvlistValue(KeyValueList { values: vec![kv("k", V::BoolValue(false))] });
        let s = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            attributes: vec![kv("arr", arr), kv("map", map), kv("raw", V::BytesValue(vec![0xde, 0xad])), KeyValue { key: "none".into(), value: None, key_strindex: 0 }],
            ..Default::default()
        };
        let got = decode(&report::report(&wrap(&s.encode_to_vec(), &Resource::default()), "t", 1).unwrap());
        let of = |k: &str| got.spans[0].tags.iter().find(|t| t.key == k).and_then(|t| t.value.clone());
        use pb::key_value::Value as P;
        assert_eq!(of("arr"), Some(P::JsonValue("[1,\"b\"]".into())));
        assert_eq!(of("map"), Some(P::JsonValue("{\"k\":false}".into())));
        assert_eq!(of("raw"), Some(P::JsonValue("\"dead\"".into())));
        assert_eq!(of("none"), Some(P::StringValue(String::new())));
    }

    #[test]
    fn every_truncation_is_an_error_or_a_report_never_a_panic() {
        let res = Resource { attributes: vec![kv("service.name", V::StringValue("svc".into()))], ..Default::default() };
        let data = TracesData {
            resource_spans: vec![ResourceSpans { resource: Some(res), scope_spans: vec![ScopeSpans { spans: vec![rich(), rich()], ..Default::default() }], schema_url: String::new() }],
        }
        .encode_to_vec();
        let mut out = Vec::new();
        report::reports(&data, "t", 1, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(decode(&out[0]).spans.len(), 2);
        let mut errors = 0;
        for n in 0..data.len() {
            out.clear();
            match report::reports(&data[..n], "t", 1, &mut out) {
                Ok(()) => out.iter().for_each(|r| drop(decode(r))),
                Err(_) => errors += 1,
            }
        }
        // Every cut inside the one ResourceSpans is caught (only the empty prefix is whole).
        assert_eq!(errors, data.len() - 1);
        assert_eq!(report::first_service(&data).unwrap(), Some(&b"svc"[..]));
    }
}

/// With tokens by service, a batch is cut at the wire into one part per token (and, for
/// reports, per resource); every part carries the batch's acknowledgement once, and it fires
/// only when the last part is done.
#[tokio::test]
async fn batches_are_partitioned_by_token_at_the_wire() {
    use opentelemetry_proto::tonic::common::v1::{any_value::Value as V, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, TracesData};
    use prost::Message;
    use tracepipe_pipeline::{Batch, BatchStatus, Finalizer};
    let rs = |service: &str, n: usize| ResourceSpans {
        resource: Some(Resource { attributes: vec![KeyValue { key: "service.name".into(), value: Some(AnyValue { value: Some(V::StringValue(service.into())) }), key_strindex: 0 }], ..Default::default() }),
        scope_spans: vec![ScopeSpans { spans: (0..n).map(|i| Span { trace_id: vec![1; 16], span_id: vec![i as u8 + 1; 8], ..Default::default() }).collect(), ..Default::default() }],
        schema_url: String::new(),
    };
    let data = TracesData { resource_spans: vec![rs("checkout", 1), rs("cart", 2), rs("checkout", 3), rs("web", 4)] }.encode_to_vec();
    let services = |b: &Batch| b.to_resource_spans().unwrap().iter().map(|r| crate::satellite::report::resource_service(&r.encode_to_vec()).unwrap().map(|s| String::from_utf8(s.to_vec()).unwrap())).collect::<Vec<_>>();
    for (protocol, want) in [("otlp_grpc", vec![vec!["checkout", "checkout"], vec!["cart", "web"]]), ("report_grpc", vec![vec!["checkout"], vec!["cart"], vec!["checkout"], vec!["web"]])] {
        let c = parse(&format!("    access_token: t\n    endpoint: 127.0.0.1:1\n    protocol: {protocol}\n    tls: {{ insecure: true }}\n    access_tokens_by_service: {{ checkout: c }}\n")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let batch = Batch::from_encoded(data.clone().into(), 10).with_finalizer(Finalizer::new(move |s| tx.send(s).unwrap()));
        let parts = super::exporter(&c).unwrap().partition(batch).unwrap();
        let got: Vec<Vec<String>> = parts.iter().map(|p| services(p).into_iter().map(Option::unwrap).collect()).collect();
        assert_eq!(got, want, "{protocol}");
        assert_eq!(parts.iter().map(Batch::span_count).sum::<usize>(), 10);
        assert!(parts.iter().all(|p| p.finalizers().len() == 1 && p.is_encoded()), "{protocol}: one acknowledgement per part, still encoded");
        let mut parts = parts;
        let first = parts.remove(0);
        first.set_status(BatchStatus::Errored);
        drop(parts);
        assert!(rx.try_recv().is_err(), "the first part still holds it");
        drop(first);
        assert_eq!(rx.recv().unwrap(), BatchStatus::Errored);
    }
}
