//! Attribute sets: one map per value type, the original order kept, damaged orders survived.

use std::sync::Arc;

use datafusion::arrow::array::{Array, MapArray, StringArray};
use datafusion::arrow::record_batch::RecordBatch;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, ArrayValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use super::{from_record_batch, to_record_batch};

fn kv(k: &str, v: Option<Value>) -> KeyValue {
    KeyValue { key: k.into(), value: v.map(|v| AnyValue { value: Some(v) }), key_strindex: 0 }
}

/// One span; resource and scope empty (what the archive gives back for missing ones).
fn one_span(attributes: Vec<KeyValue>) -> Vec<ResourceSpans> {
    let span = Span { trace_id: vec![1; 16], span_id: vec![2; 8], name: "op".into(), attributes, ..Default::default() };
    vec![ResourceSpans { resource: Some(Default::default()), scope_spans: vec![ScopeSpans { scope: Some(Default::default()), spans: vec![span], schema_url: String::new() }], schema_url: String::new() }]
}

fn column<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name).unwrap_or_else(|| panic!("no column {name}")).as_any().downcast_ref::<T>().unwrap()
}

#[test]
fn each_type_goes_to_its_own_map_and_the_order_comes_back() {
    let attrs = vec![
        kv("status", Some(Value::IntValue(503))),
        kv("method", Some(Value::StringValue("GET".into()))),
        kv("tags", Some(Value::ArrayValue(ArrayValue { values: vec![AnyValue { value: Some(Value::IntValue(1)) }] }))),
        kv("ratio", Some(Value::DoubleValue(0.5))),
        kv("cached", Some(Value::BoolValue(true))),
        kv("blob", Some(Value::BytesValue(vec![0, 255]))),
        kv("none", None),
        kv("url", Some(Value::StringValue("/x".into()))),
    ];
    let spans = one_span(attrs);
    let b = to_record_batch(&spans).unwrap();
    let strings = column::<MapArray>(&b, "attributes");
    assert_eq!(strings.value_length(0), 2);
    let keys = strings.keys().as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!((keys.value(0), keys.value(1)), ("method", "url"));
    assert_eq!(column::<MapArray>(&b, "attributes_int").value_length(0), 1);
    assert_eq!(column::<MapArray>(&b, "attributes_double").value_length(0), 1);
    assert_eq!(column::<MapArray>(&b, "attributes_bool").value_length(0), 1);
    assert_eq!(column::<MapArray>(&b, "attributes_bytes").value_length(0), 1);
    let json = column::<MapArray>(&b, "attributes_json");
    let values = json.values().as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!(json.value_length(0), 2);
    assert!(values.value(0).contains("arrayValue"), "{}", values.value(0));
    assert_eq!(column::<StringArray>(&b, "attributes_order").value(0), "isjdbyjs");
    assert_eq!(from_record_batch(&b).unwrap(), spans, "the original order comes back");
}

#[test]
fn attributes_already_grouped_by_type_store_no_order() {
    let spans = one_span(vec![kv("a", Some(Value::StringValue("x".into()))), kv("b", Some(Value::StringValue("y".into()))), kv("c", Some(Value::IntValue(1)))]);
    let b = to_record_batch(&spans).unwrap();
    assert!(column::<StringArray>(&b, "attributes_order").is_null(0));
    assert!(column::<StringArray>(&b, "resource_attributes_order").is_null(0), "no attributes: nothing to order");
    assert_eq!(from_record_batch(&b).unwrap(), spans);
}

#[test]
fn a_damaged_order_loses_no_attribute() {
    let spans = one_span(vec![kv("i", Some(Value::IntValue(1))), kv("s", Some(Value::StringValue("x".into()))), kv("t", Some(Value::StringValue("y".into())))]);
    let b = to_record_batch(&spans).unwrap();
    for damaged in ["", "zzz", "i", "iiiiss", "s"] {
        let idx = b.schema().index_of("attributes_order").unwrap();
        let mut cols = b.columns().to_vec();
        cols[idx] = Arc::new(StringArray::from(vec![Some(damaged)]));
        let bad = RecordBatch::try_new(b.schema(), cols).unwrap();
        let got = from_record_batch(&bad).unwrap();
        let mut keys: Vec<&str> = got[0].scope_spans[0].spans[0].attributes.iter().map(|kv| kv.key.as_str()).collect();
        keys.sort();
        assert_eq!(keys, ["i", "s", "t"], "order {damaged:?}");
    }
}

#[test]
fn an_unreadable_json_value_keeps_its_key_without_a_value() {
    let spans = one_span(vec![kv("tags", Some(Value::ArrayValue(ArrayValue { values: vec![] }))), kv("s", Some(Value::StringValue("x".into())))]);
    let b = to_record_batch(&spans).unwrap();
    let idx = b.schema().index_of("attributes_json").unwrap();
    let json = b.column(idx).as_any().downcast_ref::<MapArray>().unwrap();
    // The same map with a value that is not OTLP/JSON (a damaged or hostile file).
    let garbage = Arc::new(StringArray::from(vec!["{\"arrayValue\": [1, 2"]));
    let entries = datafusion::arrow::array::StructArray::new(json.entries().fields().clone(), vec![json.keys().clone(), garbage], None);
    let bad_map = MapArray::new(match json.data_type() {
        datafusion::arrow::datatypes::DataType::Map(f, _) => f.clone(),
        _ => unreachable!(),
    }, json.offsets().clone(), entries, None, false);
    let mut cols = b.columns().to_vec();
    cols[idx] = Arc::new(bad_map);
    let got = from_record_batch(&RecordBatch::try_new(b.schema(), cols).unwrap()).unwrap();
    let attrs = &got[0].scope_spans[0].spans[0].attributes;
    assert_eq!(attrs.len(), 2);
    assert_eq!((attrs[0].key.as_str(), attrs[0].value.is_none()), ("tags", true));
    assert_eq!(attrs[1], kv("s", Some(Value::StringValue("x".into()))));
}

#[test]
fn entity_refs_schema_urls_flags_and_dropped_counts_come_back() {
    use opentelemetry_proto::tonic::common::v1::{EntityRef, InstrumentationScope};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::span;
    let refs = vec![
        EntityRef { schema_url: "https://e/1".into(), r#type: "k8s.pod".into(), id_keys: vec!["k8s.pod.uid".into()], description_keys: vec!["k8s.pod.name".into()] },
        EntityRef { schema_url: String::new(), r#type: "service".into(), id_keys: vec!["service.name".into(), "service.namespace".into()], description_keys: vec![] },
    ];
    let mut spans = one_span(vec![kv("a", Some(Value::StringValue("x".into())))]);
    spans[0].resource = Some(Resource { attributes: vec![kv("service.name", Some(Value::StringValue("s".into())))], dropped_attributes_count: 2, entity_refs: refs });
    spans[0].schema_url = "https://r/1".into();
    spans[0].scope_spans[0].schema_url = "https://s/1".into();
    spans[0].scope_spans[0].scope = Some(InstrumentationScope { name: "sc".into(), version: "1".into(), attributes: vec![kv("t", Some(Value::IntValue(1)))], dropped_attributes_count: 3 });
    let sp = &mut spans[0].scope_spans[0].spans[0];
    sp.flags = 0x301;
    sp.trace_state = "ot=th:8,vendor=abc".into();
    sp.dropped_attributes_count = 4;
    sp.dropped_events_count = 5;
    sp.dropped_links_count = 6;
    sp.links = vec![span::Link { trace_id: vec![7; 16], span_id: vec![8; 8], trace_state: "x=y".into(), attributes: vec![], dropped_attributes_count: 1, flags: 0x100 }];
    let b = to_record_batch(&spans).unwrap();
    assert!(!column::<StringArray>(&b, "resource_entity_refs").is_null(0));
    assert_eq!(from_record_batch(&b).unwrap(), spans);
}
