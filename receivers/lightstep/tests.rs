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
    let wire = tracepipe_sinks::satellite::report::report(rs.clone(), "tok", 7).encode_to_vec();
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
