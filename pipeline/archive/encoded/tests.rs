//! The protobuf path gives exactly the rows of the struct path, on every OTLP field and on the
//! odd encodings protobuf allows (fields out of order, singular fields sent twice).

use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status, TracesData};
use prost::Message;

use super::{encoded_to_record_batch, key_value_common, key_value_fast};
use crate::archive::schema::to_record_batch;

pub(crate) fn kv(k: &str, v: Option<Value>) -> KeyValue {
    KeyValue { key: k.into(), value: v.map(|v| AnyValue { value: Some(v) }), key_strindex: 0 }
}

pub(crate) fn every_field() -> Vec<ResourceSpans> {
    let attrs = vec![
        kv("s", Some(Value::StringValue("str".into()))),
        kv("i", Some(Value::IntValue(-42))),
        kv("d", Some(Value::DoubleValue(1.5))),
        kv("b", Some(Value::BoolValue(true))),
        kv("y", Some(Value::BytesValue(vec![0, 1, 255]))),
        kv("x", Some(Value::StringValueStrindex(7))),
        kv("a", Some(Value::ArrayValue(ArrayValue { values: vec![AnyValue { value: Some(Value::IntValue(1)) }] }))),
        kv("m", Some(Value::KvlistValue(KeyValueList { values: vec![kv("inner", Some(Value::BoolValue(false)))] }))),
        kv("empty", None),
        kv("naïve", Some(Value::StringValue("grüße ✓".into()))), // not ASCII: the full UTF-8 check
    ];
    let span = |i: u8, events: bool| Span {
        trace_id: vec![i; 16],
        span_id: vec![i + 1; 8],
        parent_span_id: if i % 2 == 0 { vec![] } else { vec![9; 8] },
        trace_state: if i % 3 == 0 { "k=v".into() } else { String::new() },
        flags: u32::from(i),
        name: format!("op-{i}"),
        kind: i32::from(i % 7),
        start_time_unix_nano: 1_795_000_000_000_000_000 + u64::from(i),
        end_time_unix_nano: 1_795_000_000_000_000_500 + u64::from(i),
        attributes: {
            let mut a = attrs[..(i as usize % attrs.len()) + 1].to_vec();
            if i % 2 == 1 {
                a.reverse();
            }
            a
        },
        dropped_attributes_count: u32::from(i),
        events: if events { vec![span::Event { time_unix_nano: 5, name: "ev".into(), attributes: attrs[..3].to_vec(), dropped_attributes_count: 2 }] } else { vec![] },
        dropped_events_count: 3,
        links: if events { vec![span::Link { trace_id: vec![5; 16], span_id: vec![6; 8], trace_state: "l".into(), attributes: attrs[5..7].to_vec(), dropped_attributes_count: 4, flags: 1 }] } else { vec![] },
        dropped_links_count: 5,
        status: match i % 3 {
            0 => None,
            1 => Some(Status { code: 1, message: String::new() }),
            _ => Some(Status { code: 2, message: "boom".into() }),
        },
    };
    vec![
        ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", Some(Value::StringValue("reviews".into()))), kv("k", Some(Value::IntValue(7)))],
                dropped_attributes_count: 1,
                entity_refs: vec![opentelemetry_proto::tonic::common::v1::EntityRef {
                    schema_url: "https://e/1".into(),
                    r#type: "service".into(),
                    id_keys: vec!["service.name".into()],
                    description_keys: vec!["k".into()],
                }],
            }),
            scope_spans: vec![
                ScopeSpans { scope: Some(InstrumentationScope { name: "sc".into(), version: "1".into(), attributes: attrs[..2].to_vec(), dropped_attributes_count: 1 }), spans: (0..20).map(|i| span(i, i % 5 == 0)).collect(), schema_url: "https://s/1".into() },
                ScopeSpans { scope: None, spans: vec![], schema_url: String::new() },
                ScopeSpans { scope: None, spans: vec![span(40, false)], schema_url: String::new() },
            ],
            schema_url: "https://r/1".into(),
        },
        ResourceSpans { resource: None, scope_spans: vec![ScopeSpans { scope: None, spans: vec![span(50, true), span(51, false)], schema_url: String::new() }], schema_url: String::new() },
    ]
}

#[test]
fn same_rows_as_the_struct_path_on_every_field() {
    let rs = every_field();
    let bytes = TracesData { resource_spans: rs.clone() }.encode_to_vec();
    let want = to_record_batch(&rs).unwrap();
    let got = encoded_to_record_batch([bytes.as_slice()], 23).unwrap();
    assert_eq!(got, want);
    // Several received buffers in one batch (the batch processor appends them).
    let mut more = rs.clone();
    more.extend(rs.clone());
    let got = encoded_to_record_batch([bytes.as_slice(), bytes.as_slice()], 1).unwrap();
    assert_eq!(got, to_record_batch(&more).unwrap());
}

/// Field `f` of wire type LEN.
fn len_field(f: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(f, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

/// `TracesData` with odd but valid encodings: a span whose name comes twice (protobuf: the last
/// wins), whose status comes twice (merged), and a ScopeSpans whose scope comes after its spans;
/// a KeyValue with its value twice.
pub(crate) fn odd_encodings() -> Vec<u8> {
    let base = Span { trace_id: vec![1; 16], span_id: vec![2; 8], name: "first".into(), ..Default::default() };
    let mut span = base.encode_to_vec();
    span.extend(len_field(5, b"second"));
    span.extend(len_field(15, &Status { code: 2, message: String::new() }.encode_to_vec()));
    span.extend(len_field(15, &Status { code: 0, message: "m".into() }.encode_to_vec()));
    let mut kv_twice = kv("k", Some(Value::StringValue("a".into()))).encode_to_vec();
    kv_twice.extend(len_field(2, &AnyValue { value: Some(Value::IntValue(3)) }.encode_to_vec()));
    let mut span2 = Span { trace_id: vec![3; 16], span_id: vec![4; 8], ..Default::default() }.encode_to_vec();
    span2.extend(len_field(9, &kv_twice));
    let mut scope_spans = len_field(2, &span);
    scope_spans.extend(len_field(2, &span2));
    scope_spans.extend(len_field(1, &InstrumentationScope { name: "late".into(), ..Default::default() }.encode_to_vec()));
    len_field(1, &len_field(2, &scope_spans))
}

#[test]
fn odd_but_valid_encodings_match_prost() {
    let traces = odd_encodings();
    let decoded = TracesData::decode(traces.as_slice()).unwrap().resource_spans;
    assert_eq!(decoded[0].scope_spans[0].spans[0].name, "second");
    assert_eq!(decoded[0].scope_spans[0].spans[0].status, Some(Status { code: 2, message: "m".into() }), "merged");
    assert_eq!(encoded_to_record_batch([traces.as_slice()], 2).unwrap(), to_record_batch(&decoded).unwrap());
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let bytes = TracesData { resource_spans: every_field() }.encode_to_vec();
    for cut in [1, 7, bytes.len() / 2, bytes.len() - 1] {
        let _ = encoded_to_record_batch([&bytes[..cut]], 1);
    }
    assert!(encoded_to_record_batch([&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f][..]], 1).is_err());
    // A hostile span count only sizes capacities: no huge allocation, same rows.
    let want = encoded_to_record_batch([bytes.as_slice()], 23).unwrap();
    assert_eq!(encoded_to_record_batch([bytes.as_slice()], usize::MAX).unwrap(), want);
    // Invalid UTF-8 in a span name.
    let span = len_field(5, &[0xff, 0xfe]);
    let traces = len_field(1, &len_field(2, &len_field(2, &span)));
    assert!(encoded_to_record_batch([traces.as_slice()], 1).is_err());
}

#[test]
fn the_common_key_value_shape_takes_the_short_read() {
    for (kv, want) in [
        (kv("http.method", Some(Value::StringValue("GET".into()))), "Some((\"http.method\", Str(\"GET\")))"),
        (kv("k", Some(Value::StringValue(String::new()))), "Some((\"k\", Str(\"\")))"),
        (kv("status", Some(Value::IntValue(-1))), "Some((\"status\", Int(-1)))"),
        (kv("n", Some(Value::IntValue(300))), "Some((\"n\", Int(300)))"),
        (kv("cached", Some(Value::BoolValue(true))), "Some((\"cached\", Bool(true)))"),
        (kv("ratio", Some(Value::DoubleValue(0.25))), "Some((\"ratio\", Double(0.25)))"),
        (kv("naïve", Some(Value::StringValue("grüße".into()))), "Some((\"naïve\", Str(\"grüße\")))"),
        // Non-ASCII in only one of them (the one-check-for-both read must not take these).
        (kv("naïve", Some(Value::StringValue("plain".into()))), "Some((\"naïve\", Str(\"plain\")))"),
        (kv("plain", Some(Value::StringValue("grüße".into()))), "Some((\"plain\", Str(\"grüße\")))"),
        (kv("naïve", Some(Value::IntValue(7))), "Some((\"naïve\", Int(7)))"),
        // Not the common shape: the general read (or prost) takes them.
        (kv("long", Some(Value::StringValue("x".repeat(200)))), "None"),
        (kv("bytes", Some(Value::BytesValue(vec![1, 2]))), "None"),
        (kv("empty", None), "None"),
        // (An empty key is not on the wire at all: the value comes first.)
        (kv("", Some(Value::StringValue("v".into()))), "None"),
    ] {
        let buf = kv.encode_to_vec();
        assert_eq!(format!("{:?}", key_value_common(&buf)), want, "{kv:?}");
    }
    // Invalid UTF-8 in the key or the value: not read (prost rejects it later).
    assert!(key_value_common(&[0x0a, 1, 0xff, 0x12, 3, 0x0a, 1, b'a']).is_none());
    assert!(key_value_common(&[0x0a, 1, b'k', 0x12, 3, 0x0a, 1, 0xff]).is_none());
    assert!(key_value_common(&[0x0a, 2, 0xc3, b'k', 0x12, 4, 0x0a, 2, 0xc3, 0xa9]).is_none());
    assert!(key_value_common(&[0x0a, 2, 0xc3, 0xa9, 0x12, 4, 0x0a, 2, 0xc3, b'v']).is_none());
    assert!(key_value_common(&[0x0a, 1, 0xff, 0x12, 2, 0x18, 7]).is_none());
}

/// Protobuf's `KeyValue` with any scalar value, and odd but valid encodings of it.
fn any_key_value() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let value = prop_oneof![
        ".{0,150}".prop_map(|s| Some(Value::StringValue(s))),
        any::<i64>().prop_map(|i| Some(Value::IntValue(i))),
        any::<f64>().prop_map(|d| Some(Value::DoubleValue(d))),
        any::<bool>().prop_map(|b| Some(Value::BoolValue(b))),
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(|b| Some(Value::BytesValue(b))),
        Just(None),
    ];
    (".{0,140}", value, 0u8..4).prop_map(|(k, v, odd)| {
        let mut buf = kv(&k, v).encode_to_vec();
        match odd {
            // The key again (protobuf keeps the last), or an unknown field, or a key_strindex.
            1 => buf.extend_from_slice(&[0x0a, 1, b'z']),
            2 => buf.extend_from_slice(&[0x28, 5]),
            3 => buf.splice(0..0, [0x18, 2]).for_each(drop),
            _ => {}
        }
        buf
    })
}

proptest::proptest! {
    /// The short read gives what the general read gives, or leaves the buffer to it.
    #[test]
    fn the_short_key_value_read_agrees_with_the_general_one(buf in any_key_value(), cut in 0usize..200, garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
        for b in [&buf[..], &buf[..cut.min(buf.len())], &garbage[..]] {
            if let Some(short) = key_value_common(b) {
                proptest::prop_assert_eq!(format!("{:?}", Some(short)), format!("{:?}", key_value_fast(b)));
            }
        }
    }
}

/// A span as any SDK might write it (fields of any length, so some lengths take two bytes), with
/// one field sent again at the end (`again`: none, name, trace id, kind, start, attribute).
fn any_span() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::collection::vec;
    use proptest::prelude::*;
    let ids = (vec(any::<u8>(), 0..20), vec(any::<u8>(), 0..10), vec(any::<u8>(), 0..10));
    let text = (".{0,3}", ".{0,150}", prop_oneof![0i32..6, Just(200)]);
    let attrs = vec((".{0,20}", ".{0,140}"), 0..4);
    (ids, text, (any::<u64>(), any::<u64>()), attrs, (any::<bool>(), 0u8..6)).prop_map(
        |((trace_id, span_id, parent_span_id), (trace_state, name, kind), (start, end), attrs, (status, again))| {
            let span = Span {
                trace_id,
                span_id,
                trace_state,
                parent_span_id,
                name,
                kind,
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                attributes: attrs.into_iter().map(|(k, v)| kv(&k, Some(Value::StringValue(v)))).collect(),
                status: status.then(|| Status { code: 2, message: "bad".into() }),
                ..Default::default()
            };
            let mut buf = span.encode_to_vec();
            match again {
                1 => buf.extend(len_field(5, b"again")),
                2 => buf.extend(len_field(1, &[7; 16])),
                3 => buf.extend([0x30, 1]),
                4 => buf.extend([0x39, 1, 0, 0, 0, 0, 0, 0, 0]),
                5 => buf.extend(len_field(9, &kv("late", Some(Value::IntValue(1))).encode_to_vec())),
                _ => {}
            }
            buf
        },
    )
}

proptest::proptest! {
    /// The straight read of a span's head gives the rows prost's decoding gives, whatever the
    /// field lengths and with a field sent twice.
    #[test]
    fn span_heads_read_as_prost_decodes_them(span in any_span()) {
        let traces = len_field(1, &len_field(2, &len_field(2, &span)));
        let decoded = TracesData::decode(traces.as_slice()).unwrap().resource_spans;
        proptest::prop_assert_eq!(encoded_to_record_batch([traces.as_slice()], 1).unwrap(), to_record_batch(&decoded).unwrap());
    }
}
