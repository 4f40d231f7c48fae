//! Jaeger receiver unit tests: thrift decoding (compact, strict and non-strict binary, bare
//! batch), translation, hostile input, property tests, sampling responses.

use thrift::protocol::{
    TBinaryOutputProtocol, TCompactOutputProtocol, TFieldIdentifier, TListIdentifier, TMessageIdentifier, TMessageType, TOutputProtocol,
    TStructIdentifier, TType,
};

use super::model::{self, JaegerBatch, Log, Process, Protocol, Span, SpanRef, Tag};
use super::sampling::Strategies;
use super::translate::to_otlp;

fn tag_s(k: &str, v: &str) -> Tag {
    Tag { key: k.into(), v_type: 0, v_str: Some(v.into()), ..Default::default() }
}

pub(crate) fn sample_batch() -> JaegerBatch {
    JaegerBatch {
        process: Process {
            service_name: "orders".into(),
            tags: vec![tag_s("hostname", "h1"), Tag { key: "ip.count".into(), v_type: 3, v_long: Some(2), v_str: Some(String::new()), v_double: Some(0.0), v_bool: Some(false), ..Default::default() }],
        },
        spans: vec![
            Span {
                trace_id_low: 0x0102030405060708,
                trace_id_high: 0x1112131415161718,
                span_id: 0x2122232425262728,
                parent_span_id: 0,
                operation_name: "GET /orders".into(),
                references: vec![
                    SpanRef { ref_type: 0, trace_id_low: 0x0102030405060708, trace_id_high: 0x1112131415161718, span_id: 0x3132333435363738 },
                    SpanRef { ref_type: 1, trace_id_low: 7, trace_id_high: 0, span_id: 9 },
                ],
                flags: 1,
                start_time: 1_700_000_000_123_456,
                duration: 2_500,
                tags: vec![
                    tag_s("span.kind", "server"),
                    Tag { key: "http.status_code".into(), v_type: 3, v_long: Some(500), v_str: Some(String::new()), ..Default::default() },
                    Tag { key: "error".into(), v_type: 2, v_bool: Some(true), ..Default::default() },
                    Tag { key: "ratio".into(), v_type: 1, v_double: Some(0.5), v_long: Some(0), ..Default::default() },
                    Tag { key: "blob".into(), v_type: 4, v_binary: Some(vec![1, 2, 3]), ..Default::default() },
                    tag_s("otel.scope.name", "lib"),
                    tag_s("otel.scope.version", "1.0"),
                ],
                logs: vec![Log { timestamp: 1_700_000_000_124_000, fields: vec![tag_s("event", "retry"), tag_s("attempt", "2")] }],
            },
            Span { trace_id_low: 5, span_id: 6, parent_span_id: 7, operation_name: "child".into(), start_time: 10, duration: 1, tags: vec![tag_s("otel.status_code", "OK")], ..Default::default() },
        ],
    }
}

fn write_tag(o: &mut dyn TOutputProtocol, t: &Tag) {
    o.write_struct_begin(&TStructIdentifier::new("Tag")).unwrap();
    o.write_field_begin(&TFieldIdentifier::new("key", TType::String, 1)).unwrap();
    o.write_string(&t.key).unwrap();
    o.write_field_end().unwrap();
    o.write_field_begin(&TFieldIdentifier::new("vType", TType::I32, 2)).unwrap();
    o.write_i32(t.v_type).unwrap();
    o.write_field_end().unwrap();
    if let Some(v) = &t.v_str {
        o.write_field_begin(&TFieldIdentifier::new("vStr", TType::String, 3)).unwrap();
        o.write_string(v).unwrap();
        o.write_field_end().unwrap();
    }
    if let Some(v) = t.v_double {
        o.write_field_begin(&TFieldIdentifier::new("vDouble", TType::Double, 4)).unwrap();
        o.write_double(v).unwrap();
        o.write_field_end().unwrap();
    }
    if let Some(v) = t.v_bool {
        o.write_field_begin(&TFieldIdentifier::new("vBool", TType::Bool, 5)).unwrap();
        o.write_bool(v).unwrap();
        o.write_field_end().unwrap();
    }
    if let Some(v) = t.v_long {
        o.write_field_begin(&TFieldIdentifier::new("vLong", TType::I64, 6)).unwrap();
        o.write_i64(v).unwrap();
        o.write_field_end().unwrap();
    }
    if let Some(v) = &t.v_binary {
        o.write_field_begin(&TFieldIdentifier::new("vBinary", TType::String, 7)).unwrap();
        o.write_bytes(v).unwrap();
        o.write_field_end().unwrap();
    }
    o.write_field_stop().unwrap();
    o.write_struct_end().unwrap();
}

fn i64_field(o: &mut dyn TOutputProtocol, id: i16, v: i64) {
    o.write_field_begin(&TFieldIdentifier::new("f", TType::I64, id)).unwrap();
    o.write_i64(v).unwrap();
    o.write_field_end().unwrap();
}

fn write_tags(o: &mut dyn TOutputProtocol, id: i16, tags: &[Tag]) {
    o.write_field_begin(&TFieldIdentifier::new("tags", TType::List, id)).unwrap();
    o.write_list_begin(&TListIdentifier::new(TType::Struct, tags.len() as i32)).unwrap();
    tags.iter().for_each(|t| write_tag(o, t));
    o.write_list_end().unwrap();
    o.write_field_end().unwrap();
}

pub(crate) fn write_batch(o: &mut dyn TOutputProtocol, b: &JaegerBatch) {
    o.write_struct_begin(&TStructIdentifier::new("Batch")).unwrap();
    o.write_field_begin(&TFieldIdentifier::new("process", TType::Struct, 1)).unwrap();
    o.write_struct_begin(&TStructIdentifier::new("Process")).unwrap();
    o.write_field_begin(&TFieldIdentifier::new("serviceName", TType::String, 1)).unwrap();
    o.write_string(&b.process.service_name).unwrap();
    o.write_field_end().unwrap();
    write_tags(o, 2, &b.process.tags);
    o.write_field_stop().unwrap();
    o.write_struct_end().unwrap();
    o.write_field_end().unwrap();
    o.write_field_begin(&TFieldIdentifier::new("spans", TType::List, 2)).unwrap();
    o.write_list_begin(&TListIdentifier::new(TType::Struct, b.spans.len() as i32)).unwrap();
    for s in &b.spans {
        o.write_struct_begin(&TStructIdentifier::new("Span")).unwrap();
        i64_field(o, 1, s.trace_id_low);
        i64_field(o, 2, s.trace_id_high);
        i64_field(o, 3, s.span_id);
        i64_field(o, 4, s.parent_span_id);
        o.write_field_begin(&TFieldIdentifier::new("operationName", TType::String, 5)).unwrap();
        o.write_string(&s.operation_name).unwrap();
        o.write_field_end().unwrap();
        o.write_field_begin(&TFieldIdentifier::new("references", TType::List, 6)).unwrap();
        o.write_list_begin(&TListIdentifier::new(TType::Struct, s.references.len() as i32)).unwrap();
        for r in &s.references {
            o.write_struct_begin(&TStructIdentifier::new("SpanRef")).unwrap();
            o.write_field_begin(&TFieldIdentifier::new("refType", TType::I32, 1)).unwrap();
            o.write_i32(r.ref_type).unwrap();
            o.write_field_end().unwrap();
            i64_field(o, 2, r.trace_id_low);
            i64_field(o, 3, r.trace_id_high);
            i64_field(o, 4, r.span_id);
            o.write_field_stop().unwrap();
            o.write_struct_end().unwrap();
        }
        o.write_list_end().unwrap();
        o.write_field_end().unwrap();
        o.write_field_begin(&TFieldIdentifier::new("flags", TType::I32, 7)).unwrap();
        o.write_i32(s.flags).unwrap();
        o.write_field_end().unwrap();
        i64_field(o, 8, s.start_time);
        i64_field(o, 9, s.duration);
        write_tags(o, 10, &s.tags);
        o.write_field_begin(&TFieldIdentifier::new("logs", TType::List, 11)).unwrap();
        o.write_list_begin(&TListIdentifier::new(TType::Struct, s.logs.len() as i32)).unwrap();
        for l in &s.logs {
            o.write_struct_begin(&TStructIdentifier::new("Log")).unwrap();
            i64_field(o, 1, l.timestamp);
            write_tags(o, 2, &l.fields);
            o.write_field_stop().unwrap();
            o.write_struct_end().unwrap();
        }
        o.write_list_end().unwrap();
        o.write_field_end().unwrap();
        o.write_field_stop().unwrap();
        o.write_struct_end().unwrap();
    }
    o.write_list_end().unwrap();
    o.write_field_end().unwrap();
    o.write_field_stop().unwrap();
    o.write_struct_end().unwrap();
}

pub(crate) fn emit_batch(b: &JaegerBatch, protocol: Protocol, strict: bool) -> Vec<u8> {
    let mut buf: Vec<u8> = Vec::new();
    {
        let mut o: Box<dyn TOutputProtocol> = match protocol {
            Protocol::Compact => Box::new(TCompactOutputProtocol::new(&mut buf)),
            Protocol::Binary => Box::new(TBinaryOutputProtocol::new(&mut buf, strict)),
        };
        o.write_message_begin(&TMessageIdentifier::new("emitBatch", TMessageType::OneWay, 1)).unwrap();
        o.write_struct_begin(&TStructIdentifier::new("emitBatch_args")).unwrap();
        o.write_field_begin(&TFieldIdentifier::new("batch", TType::Struct, 1)).unwrap();
        write_batch(o.as_mut(), b);
        o.write_field_end().unwrap();
        o.write_field_stop().unwrap();
        o.write_struct_end().unwrap();
        o.write_message_end().unwrap();
        o.flush().unwrap();
    }
    buf
}

#[test]
fn decodes_every_protocol() {
    let b = sample_batch();
    for (p, strict) in [(Protocol::Compact, true), (Protocol::Binary, true), (Protocol::Binary, false)] {
        let bytes = emit_batch(&b, p, strict);
        assert_eq!(model::decode_emit_batch(&bytes, p).unwrap(), b, "{p:?} strict={strict}");
        assert_eq!(model::peek_span_count(&bytes, p), Some(2));
    }
    let mut bare = Vec::new();
    write_batch(&mut TBinaryOutputProtocol::new(&mut bare, true), &b);
    assert_eq!(model::decode_batch_binary(&bare).unwrap(), b);
}

#[test]
fn translation_follows_the_otel_mapping() {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let rs = to_otlp(&sample_batch());
    assert_eq!(rs.len(), 1);
    let res = rs[0].resource.as_ref().unwrap();
    let get = |kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue], k: &str| kvs.iter().find(|kv| kv.key == k).and_then(|kv| kv.value.clone()).and_then(|v| v.value);
    assert_eq!(get(&res.attributes, "service.name"), Some(Value::StringValue("orders".into())));
    assert_eq!(get(&res.attributes, "ip.count"), Some(Value::IntValue(2)), "typed by vType even with every field zero-filled");
    let scope_lib = rs[0].scope_spans.iter().find(|s| s.scope.as_ref().unwrap().name == "lib").unwrap();
    assert_eq!(scope_lib.scope.as_ref().unwrap().version, "1.0");
    let s = &scope_lib.spans[0];
    assert_eq!(s.trace_id, hex("11121314151617180102030405060708"));
    assert_eq!(s.span_id, hex("2122232425262728"));
    assert_eq!(s.parent_span_id, hex("3132333435363738"), "parent from the CHILD_OF reference");
    assert_eq!(s.links.len(), 1);
    assert_eq!(s.links[0].trace_id, hex("00000000000000000000000000000007"));
    assert_eq!(get(&s.links[0].attributes, "opentracing.ref_type"), Some(Value::StringValue("follows_from".into())));
    assert_eq!(s.kind, 2);
    assert_eq!(s.start_time_unix_nano, 1_700_000_000_123_456_000);
    assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 2_500_000);
    assert_eq!(s.flags, 1);
    assert_eq!(s.status.as_ref().unwrap().code, 2, "error=true -> ERROR");
    assert!(get(&s.attributes, "error").is_none() && get(&s.attributes, "span.kind").is_none());
    assert_eq!(get(&s.attributes, "http.status_code"), Some(Value::IntValue(500)));
    assert_eq!(get(&s.attributes, "ratio"), Some(Value::DoubleValue(0.5)));
    assert_eq!(get(&s.attributes, "blob"), Some(Value::BytesValue(vec![1, 2, 3])));
    assert_eq!(s.events[0].name, "retry");
    assert_eq!(s.events[0].time_unix_nano, 1_700_000_000_124_000_000);
    assert_eq!(get(&s.events[0].attributes, "attempt"), Some(Value::StringValue("2".into())));
    let other = rs[0].scope_spans.iter().find(|sc| sc.scope.as_ref().unwrap().name.is_empty()).unwrap();
    assert_eq!(other.spans[0].parent_span_id, 7i64.to_be_bytes().to_vec());
    assert_eq!(other.spans[0].status.as_ref().unwrap().code, 1, "otel.status_code=OK");
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// An `emitBatch` message up to the batch's fields after an empty process: what the hostile
/// payloads below continue with their own spans field.
fn emit_batch_prelude(o: &mut dyn TOutputProtocol) {
        o.write_message_begin(&TMessageIdentifier::new("emitBatch", TMessageType::OneWay, 1)).unwrap();
        o.write_struct_begin(&TStructIdentifier::new("a")).unwrap();
        o.write_field_begin(&TFieldIdentifier::new("batch", TType::Struct, 1)).unwrap();
        o.write_struct_begin(&TStructIdentifier::new("Batch")).unwrap();
        o.write_field_begin(&TFieldIdentifier::new("process", TType::Struct, 1)).unwrap();
        o.write_struct_begin(&TStructIdentifier::new("Process")).unwrap();
        o.write_field_stop().unwrap();
        o.write_struct_end().unwrap();
        o.write_field_end().unwrap();
}

/// Counts, per thread, the largest single allocation asked for (the test harness runs tests on
/// several threads): a decoder that trusted a hostile length would ask for it.
struct LargestAllocation;

thread_local! {
    static LARGEST: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|m| m.set(m.get().max(size)));
}

unsafe impl std::alloc::GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        note(l.size());
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
        note(l.size());
        unsafe { std::alloc::System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        note(new);
        unsafe { std::alloc::System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// Runs `f`; returns its result and the largest single allocation it asked for.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|m| m.set(0));
    let r = f();
    (r, LARGEST.with(|m| m.get()))
}

#[test]
fn hostile_payloads_fail_without_allocating() {
    // Compact: message header, then a list header claiming 2^31-1 elements.
    let b = sample_batch();
    let good = emit_batch(&b, Protocol::Compact, true);
    // Binary strict: emitBatch with a spans list of i32::MAX elements.
    let mut evil: Vec<u8> = Vec::new();
    {
        let mut o = TBinaryOutputProtocol::new(&mut evil, true);
        emit_batch_prelude(&mut o);
        o.write_field_begin(&TFieldIdentifier::new("spans", TType::List, 2)).unwrap();
        o.write_list_begin(&TListIdentifier::new(TType::Struct, i32::MAX)).unwrap();
    }
    let (r, largest) = largest_allocation(|| model::decode_emit_batch(&evil, Protocol::Binary));
    let err = r.unwrap_err().to_string();
    assert!(largest < 64 * 1024, "a list claiming 2^31 elements made a {largest}-byte allocation");
    assert!(err.contains("2147483647") || err.contains("too long") || err.to_lowercase().contains("size"), "{err}");
    // A string claiming 1 GiB.
    let mut s: Vec<u8> = Vec::new();
    {
        let mut o = TBinaryOutputProtocol::new(&mut s, true);
        o.write_message_begin(&TMessageIdentifier::new("emitBatch", TMessageType::OneWay, 1)).unwrap();
    }
    s.extend_from_slice(&[0x0c, 0x00, 0x01, 0x0c, 0x00, 0x01, 0x0b, 0x00, 0x01, 0x40, 0x00, 0x00, 0x00, b'x']);
    let (r, largest) = largest_allocation(|| model::decode_emit_batch(&s, Protocol::Binary));
    assert!(r.is_err());
    assert!(largest < 64 * 1024, "a string claiming 1 GiB made a {largest}-byte allocation");
    // The check can fail: the same decode of a real 1 MiB string allocates it.
    let mut real = s[..s.len() - 5].to_vec();
    real.extend_from_slice(&(1u32 << 20).to_be_bytes());
    real.extend(std::iter::repeat_n(b'x', 1 << 20));
    let (_, largest) = largest_allocation(|| model::decode_emit_batch(&real, Protocol::Binary));
    assert!(largest >= 1 << 20, "{largest}");
    // Truncated, garbage, wrong method.
    assert!(model::decode_emit_batch(&good[..good.len() / 2], Protocol::Compact).is_err());
    assert!(model::decode_emit_batch(&[0xff; 64], Protocol::Compact).is_err());
    assert!(model::decode_emit_batch(b"", Protocol::Binary).is_err());
    // 10,000 nested structs in an unknown field: skipped with a depth limit, no stack overflow.
    let mut deep: Vec<u8> = Vec::new();
    {
        let mut o = TBinaryOutputProtocol::new(&mut deep, true);
        o.write_message_begin(&TMessageIdentifier::new("emitBatch", TMessageType::OneWay, 1)).unwrap();
        o.write_struct_begin(&TStructIdentifier::new("a")).unwrap();
        for _ in 0..10_000 {
            o.write_field_begin(&TFieldIdentifier::new("x", TType::Struct, 9)).unwrap();
        }
    }
    let (r, largest) = largest_allocation(|| model::decode_emit_batch(&deep, Protocol::Binary));
    assert!(r.is_err());
    assert!(largest < 64 * 1024, "{largest}");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = model::decode_emit_batch(&bytes, Protocol::Compact);
            let _ = model::decode_emit_batch(&bytes, Protocol::Binary);
            let _ = model::decode_batch_binary(&bytes);
            let _ = model::peek_span_count(&bytes, Protocol::Compact);
        }

        #[test]
        fn mutated_batches_never_panic(i in 0usize..2000, v in any::<u8>(), compact in any::<bool>()) {
            let p = if compact { Protocol::Compact } else { Protocol::Binary };
            let mut b = emit_batch(&sample_batch(), p, true);
            let k = i % b.len();
            b[k] = v;
            if let Ok(batch) = model::decode_emit_batch(&b, p) {
                let _ = to_otlp(&batch);
                let _ = super::super::encode::encode_otlp(&batch);
            }
        }

        /// Trace ids and times survive translation exactly for any values.
        #[test]
        fn ids_and_times_exact(hi in any::<i64>(), lo in any::<i64>(), sid in any::<i64>(), start in 0i64..(i64::MAX / 2000), dur in 0i64..1_000_000_000) {
            let b = JaegerBatch { process: Process { service_name: "s".into(), tags: vec![] }, spans: vec![Span { trace_id_high: hi, trace_id_low: lo, span_id: sid, start_time: start, duration: dur, ..Default::default() }] };
            let bytes = emit_batch(&b, Protocol::Compact, true);
            let rs = to_otlp(&model::decode_emit_batch(&bytes, Protocol::Compact).unwrap());
            let s = &rs[0].scope_spans[0].spans[0];
            prop_assert_eq!(&s.trace_id[..8], &hi.to_be_bytes()[..]);
            prop_assert_eq!(&s.trace_id[8..], &lo.to_be_bytes()[..]);
            prop_assert_eq!(&s.span_id[..], &sid.to_be_bytes()[..]);
            prop_assert_eq!(s.start_time_unix_nano, start as u64 * 1000);
            prop_assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, dur as u64 * 1000);
        }
    }
}

#[test]
fn sampling_responses() {
    let s = Strategies::parse(r#"{
        "service_strategies": [
            {"service": "foo", "type": "probabilistic", "param": 0.8,
             "operation_strategies": [{"operation": "op1", "type": "probabilistic", "param": 0.2}]},
            {"service": "bar", "type": "ratelimiting", "param": 5}
        ],
        "default_strategy": {"type": "probabilistic", "param": 0.5}
    }"#)
    .unwrap();
    let foo = s.response("foo", false);
    assert_eq!(foo["strategyType"], "PROBABILISTIC");
    assert_eq!(foo["probabilisticSampling"]["samplingRate"], 0.8);
    assert_eq!(foo["operationSampling"]["perOperationStrategies"][0]["operation"], "op1");
    assert_eq!(foo["operationSampling"]["defaultSamplingProbability"], 0.8);
    let bar = s.response("bar", false);
    assert_eq!(bar["strategyType"], "RATE_LIMITING");
    assert_eq!(bar["rateLimitingSampling"]["maxTracesPerSecond"], 5);
    assert_eq!(s.response("bar", true)["strategyType"], 1);
    assert_eq!(s.response("other", false)["probabilisticSampling"]["samplingRate"], 0.5);
    assert_eq!(Strategies::default().response("x", false)["probabilisticSampling"]["samplingRate"], 0.001);
    assert!(Strategies::parse(r#"{"default_strategy": {"type": "probabilistic", "param": 1.5}}"#).is_err());
    assert!(Strategies::parse(r#"{"service_strategies": [{"service": "a", "type": "sometimes", "param": 1}]}"#).is_err());
    assert!(Strategies::parse("not json").is_err());
}

mod encoder_equivalence {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::TracesData;
    use proptest::prelude::*;
    use prost::Message;

    fn tag_strategy() -> impl Strategy<Value = Tag> {
        let keys = prop_oneof![
            Just("span.kind".to_string()),
            Just("error".to_string()),
            Just("otel.status_code".to_string()),
            Just("otel.status_description".to_string()),
            Just("otel.scope.name".to_string()),
            Just("otel.library.version".to_string()),
            Just("w3c.tracestate".to_string()),
            "[a-z.]{0,12}",
            "[a-z]{100,200}",
        ];
        let strs = prop_oneof![Just("server".to_string()), Just("client".to_string()), Just("true".to_string()), Just("OK".to_string()), Just("ERROR".to_string()), ".{0,10}", "x{120,300}"];
        (keys, 0i32..6, proptest::option::of(strs), proptest::option::of(any::<f64>()), proptest::option::of(any::<bool>()), proptest::option::of(any::<i64>()), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)))
            .prop_map(|(key, v_type, v_str, v_double, v_bool, v_long, v_binary)| Tag { key, v_type, v_str, v_double, v_bool, v_long, v_binary })
    }

    fn span_strategy() -> impl Strategy<Value = Span> {
        (
            (prop_oneof![Just(0i64), any::<i64>()], prop_oneof![Just(0i64), any::<i64>()], prop_oneof![Just(0i64), any::<i64>()], prop_oneof![Just(0i64), 1i64..5]),
            ".{0,40}",
            proptest::collection::vec((0i32..3, prop_oneof![Just(0i64), 1i64..3], any::<i64>(), 1i64..5).prop_map(|(ref_type, trace_id_low, trace_id_high, span_id)| SpanRef { ref_type, trace_id_low, trace_id_high, span_id }), 0..3),
            (any::<i32>(), 0i64..i64::MAX / 2000, -5i64..1_000_000),
            proptest::collection::vec(tag_strategy(), 0..8),
            proptest::collection::vec((any::<i64>().prop_map(|t| t.abs() / 2000), proptest::collection::vec(tag_strategy(), 0..4)).prop_map(|(timestamp, fields)| Log { timestamp, fields }), 0..3),
        )
            .prop_map(|((trace_id_low, trace_id_high, span_id, parent_span_id), operation_name, references, (flags, start_time, duration), tags, logs)| Span {
                trace_id_low,
                trace_id_high,
                span_id,
                parent_span_id,
                operation_name,
                references,
                flags,
                start_time,
                duration,
                tags,
                logs,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// The direct encoder writes exactly what the struct translation gives (minus spans with
        /// zero ids, which both the receiver and this test drop).
        #[test]
        fn direct_encoding_equals_translation(service in ".{0,20}", ptags in proptest::collection::vec(tag_strategy(), 0..4), spans in proptest::collection::vec(span_strategy(), 0..6)) {
            let b = JaegerBatch { process: Process { service_name: service, tags: ptags }, spans };
            let enc = crate::jaeger::encode::encode_otlp(&b);
            let valid: Vec<Span> = b.spans.iter().filter(|s| (s.trace_id_high != 0 || s.trace_id_low != 0) && s.span_id != 0).cloned().collect();
            prop_assert_eq!(enc.rejected as usize, b.spans.len() - valid.len());
            prop_assert_eq!(enc.spans, valid.len());
            if valid.is_empty() {
                prop_assert!(enc.bytes.is_empty());
            } else {
                let want = TracesData { resource_spans: to_otlp(&JaegerBatch { process: b.process.clone(), spans: valid }) };
                let got = TracesData::decode(enc.bytes.as_slice()).unwrap();
                // Compare with doubles as bits (NaN != NaN otherwise).
                prop_assert_eq!(format!("{:?}", got).replace("NaN", "nan"), format!("{:?}", want).replace("NaN", "nan"));
                // And it is valid OTLP wire form by the receivers' own scanner.
                prop_assert_eq!(tracepipe_pipeline::wire::scan_traces(&enc.bytes).unwrap().spans, enc.spans);
            }
        }
    }
}

/// A list is checked against the bytes still unread, not the whole payload: a spans list that
/// claims more elements than the bytes after its header, though fewer than the payload's size, is
/// refused at its header (before any span is read or room reserved for it).
#[test]
fn list_lengths_are_checked_against_the_bytes_left() {
    let mut evil: Vec<u8> = Vec::new();
    {
        let mut o = TBinaryOutputProtocol::new(&mut evil, true);
        emit_batch_prelude(&mut o);
        // Padding in an unknown field makes the payload large; the list comes after it.
        o.write_field_begin(&TFieldIdentifier::new("pad", TType::String, 9)).unwrap();
        o.write_string(&"p".repeat(1000)).unwrap();
        o.write_field_end().unwrap();
        o.write_field_begin(&TFieldIdentifier::new("spans", TType::List, 2)).unwrap();
        o.write_list_begin(&TListIdentifier::new(TType::Struct, 900)).unwrap();
    }
    evil.extend_from_slice(&[0; 20]);
    assert!(evil.len() > 900, "the claim fits the payload as a whole");
    let err = model::decode_emit_batch(&evil, Protocol::Binary).unwrap_err();
    assert!(matches!(err, model::ThriftError::ListTooLong(900)), "{err}");
}

/// Jaeger's required fields are required here too: a list of empty structs is refused rather
/// than decoded into a model ~170x its bytes; what a datagram full of the smallest valid spans
/// and tags decodes into stays within a stated factor of its bytes.
#[test]
fn required_fields_bound_what_tiny_structs_cost() {
    // 3,000 empty span structs (one STOP byte each).
    let mut evil: Vec<u8> = Vec::new();
    {
        let mut o = TCompactOutputProtocol::new(&mut evil);
        emit_batch_prelude(&mut o);
        o.write_field_begin(&TFieldIdentifier::new("spans", TType::List, 2)).unwrap();
        o.write_list_begin(&TListIdentifier::new(TType::Struct, 3000)).unwrap();
    }
    evil.extend(std::iter::repeat_n(0u8, 3000));
    evil.extend_from_slice(&[0, 0, 0]);
    let err = model::decode_emit_batch(&evil, Protocol::Compact).unwrap_err();
    assert!(matches!(err, model::ThriftError::Missing("Span.traceIdLow")), "{err}");
    // The smallest valid spans, each with the smallest valid tags, filling a 65,000-byte datagram.
    let tag = Tag { key: String::new(), v_type: 0, v_str: Some(String::new()), ..Default::default() };
    let span = Span { tags: vec![tag; 40], ..Default::default() };
    let mut b = JaegerBatch { process: Process::default(), spans: vec![span; 1] };
    let per_span = emit_batch(&b, Protocol::Compact, true).len() - emit_batch(&JaegerBatch { spans: vec![], ..b.clone() }, Protocol::Compact, true).len();
    b.spans = vec![b.spans[0].clone(); 64_000 / per_span];
    let bytes = emit_batch(&b, Protocol::Compact, true);
    assert!(bytes.len() <= 65_000);
    let got = model::decode_emit_batch(&bytes, Protocol::Compact).unwrap();
    let tags: usize = got.spans.iter().map(|s| s.tags.len()).sum();
    let model_bytes = got.spans.len() * std::mem::size_of::<Span>() + tags * std::mem::size_of::<Tag>();
    let factor = model_bytes as f64 / bytes.len() as f64;
    eprintln!("{} spans, {tags} tags in {} bytes: the model is {factor:.1}x the datagram", got.spans.len(), bytes.len());
    assert!(factor < 30.0, "{} spans, {tags} tags: the model is {factor:.1}x the datagram", got.spans.len());
}
