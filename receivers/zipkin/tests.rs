//! Zipkin receiver unit tests: the three decoders, Envoy id repair, mapping, hostile input.

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;

use super::model::{self, proto};
use super::translate::to_otlp;

fn attr<'a>(kvs: &'a [KeyValue], k: &str) -> Option<&'a Value> {
    kvs.iter().find(|kv| kv.key == k).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
}

// The shape the OpenTelemetry Zipkin JSON exporter sends (kind null for INTERNAL, debug on
// sampled spans, resource attributes and status in tags).
const OTEL_JSON: &str = r#"[{"traceId": "173cbfe24f8b3ba319256230e6998df6", "id": "92b4334da8b00b68", "name": "load-order",
  "timestamp": 1795350912251272, "duration": 10379, "localEndpoint": {"serviceName": "orders", "ipv4": "10.0.0.7", "port": 8080},
  "kind": null, "tags": {"otel.scope.name": "lib", "otel.scope.version": "0.1", "otel.status_code": "ERROR", "error": "boom", "n": 5},
  "annotations": [{"timestamp": 1795350912251296, "value": "cache-miss"}, {"timestamp": 1795350912251297, "value": "{\"retry\": {\"attempt\": 2, \"why\": \"timeout\"}}"}],
  "debug": true, "parentId": "0000000000000001"},
 {"traceId": "b2c3", "id": "02", "name": "call", "kind": "CLIENT", "timestamp": 10, "duration": 5, "shared": true,
  "localEndpoint": {"serviceName": "billing"}, "remoteEndpoint": {"serviceName": "db", "ipv6": "::1", "port": 5432}}]"#;

#[test]
fn v2_json_maps_like_the_otel_translator() {
    let z = model::decode_v2_json(OTEL_JSON.as_bytes()).unwrap();
    assert_eq!(z[1].trace_id, vec![0, 0, 0, 0, 0, 0, 0xb2, 0xc3], "short ids are left-padded");
    let (rs, rejected) = to_otlp(z);
    assert_eq!(rejected, 0);
    assert_eq!(rs.len(), 2, "one resource per local service");
    let orders = &rs[0];
    assert_eq!(attr(&orders.resource.as_ref().unwrap().attributes, "service.name"), Some(&Value::StringValue("orders".into())));
    let sc = &orders.scope_spans[0];
    assert_eq!((sc.scope.as_ref().unwrap().name.as_str(), sc.scope.as_ref().unwrap().version.as_str()), ("lib", "0.1"));
    let s = &sc.spans[0];
    assert_eq!(s.trace_id.len(), 16);
    assert_eq!(s.parent_span_id, vec![0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(s.kind, 0);
    assert_eq!(s.flags, 1, "debug -> sampled flag");
    assert_eq!(s.start_time_unix_nano, 1795350912251272000);
    assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 10_379_000);
    assert_eq!(s.status.as_ref().map(|st| (st.code, st.message.as_str())), Some((2, "boom")));
    assert_eq!(attr(&s.attributes, "n"), Some(&Value::StringValue("5".into())));
    assert_eq!(attr(&s.attributes, "net.host.ip"), Some(&Value::StringValue("10.0.0.7".into())));
    assert_eq!(attr(&s.attributes, "net.host.port"), Some(&Value::IntValue(8080)));
    assert!(attr(&s.attributes, "error").is_none() && attr(&s.attributes, "otel.status_code").is_none());
    assert_eq!(s.events[0].name, "cache-miss");
    assert_eq!(s.events[0].time_unix_nano, 1795350912251296000);
    assert_eq!(s.events[1].name, "retry");
    assert_eq!(attr(&s.events[1].attributes, "attempt"), Some(&Value::IntValue(2)));
    assert_eq!(attr(&s.events[1].attributes, "why"), Some(&Value::StringValue("timeout".into())));
    let c = &rs[1].scope_spans[0].spans[0];
    assert_eq!(c.kind, 3);
    assert_eq!(trace_hex(&c.trace_id), "0000000000000000000000000000b2c3");
    assert_eq!(attr(&c.attributes, "net.peer.name"), Some(&Value::StringValue("db".into())));
    assert_eq!(attr(&c.attributes, "net.peer.ip"), Some(&Value::StringValue("::1".into())));
    assert_eq!(attr(&c.attributes, "net.peer.port"), Some(&Value::IntValue(5432)));
    assert_eq!(attr(&c.attributes, "zipkin.shared"), Some(&Value::BoolValue(true)));
}

fn trace_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn envoy_proto_ids_are_restored() {
    // What Envoy 1.40 wrote for a span whose x-b3-spanid was 7fda91d274ce45f1.
    let list = proto::ListOfSpans {
        spans: vec![proto::Span {
            trace_id: vec![0x3b, 0xef, 0xd4, 0x01, 0x91, 0x55, 0xd8, 0x25, 0xd1, 0xa3, 0x7b, 0x91, 0xaf, 0xc1, 0x8f, 0x19],
            id: vec![0xf1, 0x45, 0xce, 0x74, 0xd2, 0x91, 0xda, 0x7f],
            parent_id: vec![1, 2, 3, 4, 5, 6, 7, 8],
            kind: 2,
            name: "reviews".into(),
            timestamp: 5,
            duration: 1,
            local_endpoint: Some(proto::Endpoint { service_name: "reviews".into(), ipv4: vec![192, 0, 2, 2], ..Default::default() }),
            tags: [("guid:x-request-id".to_string(), "abc".to_string())].into_iter().collect(),
            shared: true,
            ..Default::default()
        }],
    };
    let bytes = list.encode_to_vec();
    let fixed = model::decode_v2_proto(&bytes, true).unwrap();
    assert_eq!(trace_hex(&fixed[0].id), "7fda91d274ce45f1");
    assert_eq!(trace_hex(fixed[0].parent_id.as_ref().unwrap()), "0807060504030201");
    assert_eq!(trace_hex(&fixed[0].trace_id), "3befd4019155d825d1a37b91afc18f19", "trace ids are not reversed");
    assert_eq!(fixed[0].local.as_ref().unwrap().ipv4.as_deref(), Some("192.0.2.2"));
    let raw = model::decode_v2_proto(&bytes, false).unwrap();
    assert_eq!(trace_hex(&raw[0].id), "f145ce74d291da7f");
}

#[test]
fn v1_json_converts_to_v2() {
    let v1 = r#"[{"traceId": "0000000000000abc", "id": "0000000000000def", "name": "select", "timestamp": 100, "duration": 0,
      "annotations": [{"timestamp": 100, "value": "cs", "endpoint": {"serviceName": "pyz", "ipv4": "127.0.0.1", "port": 8080}},
                      {"timestamp": 150, "value": "cr", "endpoint": {"serviceName": "pyz"}},
                      {"timestamp": 120, "value": "cache-miss"}],
      "binaryAnnotations": [{"key": "db.type", "value": "sql", "endpoint": {"serviceName": "pyz"}},
                            {"key": "sa", "value": true, "endpoint": {"serviceName": "postgres", "ipv4": "127.0.0.5", "port": 5432}}]}]"#;
    let z = model::decode_v1_json(v1.as_bytes()).unwrap();
    assert_eq!(z[0].kind, 1);
    assert_eq!((z[0].timestamp, z[0].duration), (100, 50));
    assert_eq!(z[0].local.as_ref().unwrap().service_name, "pyz");
    assert_eq!(z[0].remote.as_ref().unwrap().service_name, "postgres");
    assert_eq!(z[0].annotations, vec![(120, "cache-miss".to_string())]);
    assert_eq!(z[0].tags, vec![("db.type".to_string(), "sql".to_string())]);
}

#[test]
fn bad_and_hostile_input_is_refused() {
    assert!(model::decode_v2_json(b"{").is_err());
    assert!(model::decode_v2_json(br#"[{"traceId": "xyz", "id": "01"}]"#).is_err());
    assert!(model::decode_v2_json(br#"[{"traceId": "01", "id": "0123456789abcdef0"}]"#).is_err(), "17-digit span id");
    assert!(model::decode_v2_json(br#"[{"traceId": "0123456789abcdef0123456789abcdef0", "id": "01"}]"#).is_err(), "33-digit trace id");
    let deep = format!("[{}]", "[".repeat(100_000));
    assert!(model::decode_v2_json(deep.as_bytes()).is_err(), "deep nesting stops at serde_json's limit");
    assert!(model::decode_v2_proto(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f], false).is_err());
    let short = proto::ListOfSpans { spans: vec![proto::Span { trace_id: vec![1; 16], id: vec![1; 4], ..Default::default() }] }.encode_to_vec();
    assert!(model::decode_v2_proto(&short, false).is_err());
    assert!(model::decode_v1_json(br#"[{"traceId": "01"}]"#).is_err());
    // All-zero ids are rejected span by span, not the whole request.
    let z = model::decode_v2_json(br#"[{"traceId": "00", "id": "01"}, {"traceId": "01", "id": "00"}, {"traceId": "01", "id": "02"}]"#).unwrap();
    let (rs, rejected) = to_otlp(z);
    assert_eq!((rejected, tracepipe_pipeline::batch::count_spans(&rs)), (2, 1));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = model::decode_v2_json(&bytes).map(to_otlp);
            let _ = model::decode_v1_json(&bytes).map(to_otlp);
            let _ = model::decode_v2_proto(&bytes, true).map(to_otlp);
            let _ = model::decode_v1_thrift(&bytes).map(to_otlp);
        }

        /// Ids and times survive proto decoding and translation exactly.
        #[test]
        fn proto_ids_and_times_exact(tid in proptest::collection::vec(any::<u8>(), 16), sid in proptest::collection::vec(any::<u8>(), 8), ts in 1u64..u64::MAX / 2000, d in 0u64..1_000_000_000) {
            prop_assume!(tid.iter().any(|b| *b != 0) && sid.iter().any(|b| *b != 0));
            let bytes = proto::ListOfSpans { spans: vec![proto::Span { trace_id: tid.clone(), id: sid.clone(), timestamp: ts, duration: d, ..Default::default() }] }.encode_to_vec();
            let (rs, _) = to_otlp(model::decode_v2_proto(&bytes, false).unwrap());
            let s = &rs[0].scope_spans[0].spans[0];
            prop_assert_eq!(&s.trace_id, &tid);
            prop_assert_eq!(&s.span_id, &sid);
            prop_assert_eq!(s.start_time_unix_nano, ts * 1000);
            prop_assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, d * 1000);
        }
    }
}

#[test]
fn v1_thrift_decodes_and_refuses_hostile_lengths() {
    use thrift::protocol::{TBinaryOutputProtocol, TFieldIdentifier, TListIdentifier, TOutputProtocol, TStructIdentifier, TType};
    let mut buf: Vec<u8> = Vec::new();
    {
        let mut o = TBinaryOutputProtocol::new(&mut buf, true);
        let f = |o: &mut TBinaryOutputProtocol<&mut Vec<u8>>, id: i16, t: TType| o.write_field_begin(&TFieldIdentifier::new("f", t, id)).unwrap();
        o.write_list_begin(&TListIdentifier::new(TType::Struct, 1)).unwrap();
        o.write_struct_begin(&TStructIdentifier::new("Span")).unwrap();
        f(&mut o, 1, TType::I64);
        o.write_i64(0x0abc).unwrap();
        f(&mut o, 3, TType::String);
        o.write_string("get").unwrap();
        f(&mut o, 4, TType::I64);
        o.write_i64(0x0def).unwrap();
        f(&mut o, 6, TType::List);
        o.write_list_begin(&TListIdentifier::new(TType::Struct, 2)).unwrap();
        for (ts, v) in [(100i64, "sr"), (180, "ss")] {
            o.write_struct_begin(&TStructIdentifier::new("A")).unwrap();
            f(&mut o, 1, TType::I64);
            o.write_i64(ts).unwrap();
            f(&mut o, 2, TType::String);
            o.write_string(v).unwrap();
            f(&mut o, 3, TType::Struct);
            o.write_struct_begin(&TStructIdentifier::new("E")).unwrap();
            f(&mut o, 1, TType::I32);
            o.write_i32(0x7f000001).unwrap();
            f(&mut o, 2, TType::I16);
            o.write_i16(8080).unwrap();
            f(&mut o, 3, TType::String);
            o.write_string("old").unwrap();
            o.write_field_stop().unwrap();
            o.write_struct_end().unwrap();
            o.write_field_stop().unwrap();
            o.write_struct_end().unwrap();
        }
        f(&mut o, 8, TType::List);
        o.write_list_begin(&TListIdentifier::new(TType::Struct, 1)).unwrap();
        o.write_struct_begin(&TStructIdentifier::new("B")).unwrap();
        f(&mut o, 1, TType::String);
        o.write_string("http.status_code").unwrap();
        f(&mut o, 2, TType::String);
        o.write_bytes(&200i32.to_be_bytes()).unwrap();
        f(&mut o, 3, TType::I32);
        o.write_i32(3).unwrap();
        o.write_field_stop().unwrap();
        o.write_struct_end().unwrap();
        o.write_field_stop().unwrap();
        o.write_struct_end().unwrap();
    }
    let z = model::decode_v1_thrift(&buf).unwrap();
    assert_eq!(z.len(), 1);
    assert_eq!((z[0].kind, z[0].timestamp, z[0].duration), (2, 100, 80));
    assert_eq!(trace_hex(&z[0].id), "0000000000000def");
    let l = z[0].local.as_ref().unwrap();
    assert_eq!((l.service_name.as_str(), l.ipv4.as_deref(), l.port), ("old", Some("127.0.0.1"), Some(8080)));
    assert_eq!(z[0].tags, vec![("http.status_code".to_string(), "200".to_string())]);
    // A list of 2^31-1 spans in a 5-byte body, and truncations.
    assert!(model::decode_v1_thrift(&[0x0c, 0x7f, 0xff, 0xff, 0xff]).is_err());
    for cut in 1..buf.len() {
        assert!(model::decode_v1_thrift(&buf[..cut]).is_err());
    }
}
