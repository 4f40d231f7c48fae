//! LightStep receiver unit tests: the access token is checked on the `auth` field alone before
//! a report is decoded.

use prost::Message;
use tracepipe_pipeline::topology::{Input, Output};

use super::config::LightstepConfig;
use super::{pb, Ingest};

fn config(tokens: &[&str]) -> LightstepConfig {
    let yaml = format!("receivers:\n  ls:\n    type: lightstep\n    access_tokens: {tokens:?}\nsinks:\n  d: {{ type: debug, inputs: [ls] }}\n");
    let (file, errs) = tracepipe_config::load("t.yaml", &yaml, &|_| None);
    assert!(errs.is_empty(), "{errs}");
    LightstepConfig::from_node(&file.receivers[0].body, "t.yaml").unwrap()
}

fn report(token: &str, spans: usize) -> Vec<u8> {
    let spans = (0..spans).map(|i| pb::Span { operation_name: format!("op-{i}-{}", "x".repeat(100)), ..Default::default() }).collect();
    pb::ReportRequest { auth: Some(pb::Auth { access_token: token.into() }), spans, ..Default::default() }.encode_to_vec()
}

#[test]
fn the_token_is_checked_before_the_report_is_decoded() {
    let (tx, _input) = Input::channel(1);
    let cfg = config(&["good"]);
    let ingest = Ingest::new(&cfg, "ls", Output::new(vec![tx]), None);
    // 50,000 spans behind a wrong token: refused from the auth field, spans skipped unread.
    assert!(ingest.check_token_early(&report("bad", 50_000), None, "http").is_err());
    assert!(ingest.check_token_early(&report("good", 10), None, "http").is_ok());
    // The header counts when the body carries no token; the body's token wins over the header.
    assert!(ingest.check_token_early(&report("", 10), Some("good"), "http").is_ok());
    assert!(ingest.check_token_early(&report("", 10), Some("bad"), "http").is_err());
    assert!(ingest.check_token_early(&report("bad", 10), Some("good"), "http").is_err());
    // A body that does not decode is left to the full decode (which reports it as malformed).
    assert!(ingest.check_token_early(b"\x12\xff\xff\xff\x0f", None, "http").is_ok());
    // No token list: anything goes.
    let (tx, _input) = Input::channel(1);
    let open = Ingest::new(&config(&[]), "ls", Output::new(vec![tx]), None);
    assert!(open.check_token_early(&report("anything", 10), None, "http").is_ok());
}

/// The satellite sink's Report mapping read back by this receiver gives the spans that went in,
/// but for what the protocol cannot carry (documented in README): durations in whole
/// microseconds, link attributes (a link comes back with `opentracing.ref_type`), link trace ids'
/// high halves, non-scalar attributes (JSON strings), dropped counts, flags and trace state.
#[test]
fn the_satellite_report_mapping_reads_back_as_the_spans_that_went_in() {
    use opentelemetry_proto::tonic::common::v1::{any_value::Value as V, AnyValue, ArrayValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
    let kv = |k: &str, v: V| KeyValue { key: k.into(), value: Some(AnyValue { value: Some(v) }), key_strindex: 0 };
    let trace: Vec<u8> = (1..=16).collect();
    let start = 1_700_000_000_123_456_789u64;
    let root = Span {
        trace_id: trace.clone(),
        span_id: vec![1, 2, 3, 4, 5, 6, 7, 8],
        name: "GET /checkout".into(),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 250_000_000,
        attributes: vec![kv("guid:x-request-id", V::StringValue("req-1".into())), kv("http.status_code", V::IntValue(200)), kv("ratio", V::DoubleValue(0.5)), kv("cached", V::BoolValue(false))],
        events: vec![span::Event { time_unix_nano: start + 1_000, name: "cache-miss".into(), attributes: vec![kv("key", V::StringValue("order:1".into()))], dropped_attributes_count: 0 }],
        status: Some(Status { code: 1, message: String::new() }),
        ..Default::default()
    };
    let child = Span {
        trace_id: trace.clone(),
        span_id: vec![9, 9, 9, 9, 9, 9, 9, 9],
        parent_span_id: root.span_id.clone(),
        name: "SELECT orders".into(),
        kind: span::SpanKind::Client as i32,
        start_time_unix_nano: start + 5_000,
        end_time_unix_nano: start + 7_000,
        attributes: vec![kv("tags", V::ArrayValue(ArrayValue { values: vec![AnyValue { value: Some(V::StringValue("a".into())) }] }))],
        links: vec![span::Link { trace_id: vec![0; 8].into_iter().chain([7; 8]).collect(), span_id: vec![3; 8], ..Default::default() }],
        status: Some(Status { code: 2, message: "boom".into() }),
        ..Default::default()
    };
    let rs = ResourceSpans {
        resource: Some(Resource { attributes: vec![kv("service.name", V::StringValue("checkout".into())), kv("env", V::StringValue("prod".into()))], ..Default::default() }),
        scope_spans: vec![ScopeSpans { spans: vec![root.clone(), child.clone()], ..Default::default() }],
        schema_url: String::new(),
    };
    let otlp = ResourceSpans::encode_to_vec(&rs);
    let wire = tracepipe_sinks::satellite::report::report(&otlp, "tok", 7).unwrap();
    let req = pb::ReportRequest::decode(wire.as_slice()).unwrap();
    assert_eq!(req.auth.as_ref().unwrap().access_token, "tok");
    let (back, rejected) = super::translate::to_otlp(&req);
    assert_eq!(rejected, 0);
    let res = &back[0].resource.as_ref().unwrap().attributes;
    let res_of = |k: &str| res.iter().find(|a| a.key == k).and_then(|a| a.value.clone()).and_then(|v| v.value);
    assert_eq!(res_of("service.name"), Some(V::StringValue("checkout".into())));
    assert_eq!(res_of("lightstep.component_name"), Some(V::StringValue("checkout".into())));
    assert_eq!(res_of("env"), Some(V::StringValue("prod".into())));
    let got = &back[0].scope_spans[0].spans;
    // The root: everything, exactly (its duration is in whole microseconds).
    let r = &got[0];
    assert_eq!((&r.trace_id, &r.span_id, &r.parent_span_id, &r.name, r.kind), (&root.trace_id, &root.span_id, &root.parent_span_id, &root.name, root.kind));
    assert_eq!((r.start_time_unix_nano, r.end_time_unix_nano), (root.start_time_unix_nano, root.end_time_unix_nano));
    assert_eq!(r.attributes, root.attributes);
    assert_eq!(r.events, root.events);
    assert_eq!(r.status, root.status);
    // The child: parent, status with message, the link (64-bit trace id, the ref type added),
    // the array attribute as its JSON text.
    let c = &got[1];
    assert_eq!((&c.trace_id, &c.parent_span_id, c.kind), (&trace, &root.span_id, child.kind));
    assert_eq!(c.status, child.status);
    assert_eq!(c.end_time_unix_nano - c.start_time_unix_nano, 2_000);
    assert_eq!(c.links.len(), 1);
    assert_eq!((&c.links[0].trace_id, &c.links[0].span_id), (&child.links[0].trace_id, &child.links[0].span_id));
    assert_eq!(c.attributes, vec![kv("tags", V::StringValue("[\"a\"]".into()))]);
}

mod report_roundtrip {
    //! Any span the OTel data model allows, through the satellite sink's wire-level Report
    //! transcoder and back through this receiver's translation: equal in everything the Report
    //! protocol carries.
    use opentelemetry_proto::tonic::common::v1::{any_value::Value as V, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
    use proptest::prelude::*;
    use prost::Message;

    use super::pb;

    fn value() -> impl Strategy<Value = V> {
        prop_oneof![
            "[ -~]{0,40}".prop_map(V::StringValue),
            any::<i64>().prop_map(V::IntValue),
            // NaN is not equal to itself; every other double goes through bit for bit.
            any::<f64>().prop_filter("not NaN", |d| !d.is_nan()).prop_map(V::DoubleValue),
            any::<bool>().prop_map(V::BoolValue),
        ]
    }

    fn attrs(n: usize) -> impl Strategy<Value = Vec<KeyValue>> {
        // Keys the receiver reads as span fields (`error`, `span.kind`, `otel.*`, `event`) are left out.
        proptest::collection::vec(("a\\.[a-z]{1,8}", value()), 0..n)
            .prop_map(|v| v.into_iter().map(|(key, v)| KeyValue { key, value: Some(AnyValue { value: Some(v) }), key_strindex: 0 }).collect())
    }

    fn id<const N: usize>() -> impl Strategy<Value = Vec<u8>> {
        // The low 8 bytes are never zero (the receiver refuses zero ids).
        (proptest::array::uniform::<_, N>(any::<u8>()), 1u64..).prop_map(|(mut b, low): ([u8; N], u64)| {
            b[N - 8..].copy_from_slice(&low.to_be_bytes());
            b.to_vec()
        })
    }

    fn a_span() -> impl Strategy<Value = Span> {
        let event = (0u64..1 << 62, "[a-z]{0,8}", attrs(3)).prop_map(|(time_unix_nano, name, attributes)| span::Event { time_unix_nano, name, attributes, dropped_attributes_count: 0 });
        let link = (id::<16>(), id::<8>()).prop_map(|(trace_id, span_id)| span::Link { trace_id, span_id, ..Default::default() });
        let status = prop_oneof![
            Just(None),
            (1i32..=2, "[ -~]{0,20}").prop_map(|(code, message)| Some(Status { code, message })),
            "[ -~]{1,20}".prop_map(|message| Some(Status { code: 0, message })),
        ];
        (
            (id::<16>(), id::<8>(), proptest::option::of(id::<8>()), "[ -~]{1,30}", 0i32..6),
            (0u64..1 << 62, 0u64..1 << 30, attrs(8), proptest::collection::vec(event, 0..3), proptest::collection::vec(link, 0..3), status),
        )
            .prop_map(|((trace_id, span_id, parent, name, kind), (start, micros, attributes, events, links, status))| Span {
                trace_id,
                span_id,
                parent_span_id: parent.unwrap_or_default(),
                name,
                kind,
                start_time_unix_nano: start,
                end_time_unix_nano: start + micros * 1000,
                attributes,
                events,
                links,
                status,
                ..Default::default()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn any_span_reads_back_as_it_went_in(spans in proptest::collection::vec(a_span(), 1..6), service in "[a-z]{1,10}", res in attrs(4)) {
            let mut resource = vec![KeyValue { key: "service.name".into(), value: Some(AnyValue { value: Some(V::StringValue(service.clone())) }), key_strindex: 0 }];
            resource.extend(res.clone());
            let rs = ResourceSpans {
                resource: Some(Resource { attributes: resource, ..Default::default() }),
                scope_spans: vec![ScopeSpans { spans: spans.clone(), ..Default::default() }],
                schema_url: String::new(),
            };
            let wire = tracepipe_sinks::satellite::report::report(&rs.encode_to_vec(), "tok", 42).unwrap();
            let req = pb::ReportRequest::decode(wire.as_slice()).unwrap();
            prop_assert_eq!(req.auth.as_ref().map(|a| a.access_token.as_str()), Some("tok"));
            prop_assert_eq!(req.reporter.as_ref().map(|r| r.reporter_id), Some(42));
            let (back, rejected) = super::super::translate::to_otlp(&req);
            prop_assert_eq!(rejected, 0);
            let attrs = &back[0].resource.as_ref().unwrap().attributes;
            let of = |k: &str| attrs.iter().find(|a| a.key == k).and_then(|a| a.value.clone()).and_then(|v| v.value);
            prop_assert_eq!(of("service.name"), Some(V::StringValue(service.clone())));
            prop_assert_eq!(of("lightstep.component_name"), Some(V::StringValue(service)));
            for a in &res {
                prop_assert!(attrs.contains(a), "resource attribute {:?} lost", a);
            }
            let got = &back[0].scope_spans[0].spans;
            prop_assert_eq!(got.len(), spans.len());
            for (g, s) in got.iter().zip(&spans) {
                prop_assert_eq!(&g.trace_id, &s.trace_id);
                prop_assert_eq!(&g.span_id, &s.span_id);
                prop_assert_eq!(&g.parent_span_id, &s.parent_span_id);
                prop_assert_eq!(&g.name, &s.name);
                prop_assert_eq!(g.kind, s.kind);
                prop_assert_eq!((g.start_time_unix_nano, g.end_time_unix_nano), (s.start_time_unix_nano, s.end_time_unix_nano));
                prop_assert_eq!(&g.attributes, &s.attributes);
                prop_assert_eq!(&g.events, &s.events);
                prop_assert_eq!(&g.status, &s.status);
                // Links: 64-bit trace ids (the Report protocol's), span ids exact.
                prop_assert_eq!(g.links.len(), s.links.len());
                for (gl, sl) in g.links.iter().zip(&s.links) {
                    prop_assert_eq!(&gl.trace_id[8..], &sl.trace_id[8..]);
                    prop_assert_eq!(&gl.span_id, &sl.span_id);
                }
            }
        }
    }
}
