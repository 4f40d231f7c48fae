//! Unit tests: the wire scanner, the batch model and the fan-out.

use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, TracesData};
use prost::Message;

use crate::batch::{Batch, BatchStatus, Finalizer};
use crate::topology::{Input, Output, Refused};
use crate::wire::{scan_traces, SpanProblem, WireError, MAX_ANY_VALUE_DEPTH};

pub(crate) fn span(i: u8) -> Span {
    Span {
        trace_id: vec![1; 16],
        span_id: vec![i.max(1); 8],
        name: format!("span-{i}"),
        attributes: vec![KeyValue { key_strindex: 0, key: "k".into(), value: Some(AnyValue { value: Some(any_value::Value::IntValue(i as i64)) }) }],
        ..Default::default()
    }
}

pub(crate) fn traces(spans_per_scope: &[usize]) -> Vec<ResourceSpans> {
    let mut n = 0u8;
    vec![ResourceSpans {
        scope_spans: spans_per_scope
            .iter()
            .map(|k| ScopeSpans {
                spans: (0..*k)
                    .map(|_| {
                        n += 1;
                        span(n)
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }]
}

fn encode(rs: Vec<ResourceSpans>) -> Bytes {
    TracesData { resource_spans: rs }.encode_to_vec().into()
}

#[test]
fn scan_counts_spans_and_accepts_valid() {
    let b = encode(traces(&[3, 2]));
    let r = scan_traces(&b).unwrap();
    assert_eq!(r.spans, 5);
    assert!(r.invalid.is_empty());
}

#[test]
fn scan_flags_bad_ids() {
    let mut rs = traces(&[4]);
    rs[0].scope_spans[0].spans[1].trace_id = vec![0; 16];
    rs[0].scope_spans[0].spans[2].span_id = vec![1; 4];
    rs[0].scope_spans[0].spans[3].parent_span_id = vec![1; 3];
    let r = scan_traces(&encode(rs)).unwrap();
    assert_eq!(r.invalid, vec![(1, SpanProblem::TraceIdZero), (2, SpanProblem::SpanIdLength), (3, SpanProblem::ParentIdLength)]);
}

/// An attribute value `levels` deep (1: a plain value), alternating arrays and key-value lists.
fn nested_value(levels: usize) -> AnyValue {
    let mut v = AnyValue { value: Some(any_value::Value::IntValue(1)) };
    for i in 1..levels {
        v = if i % 2 == 0 {
            AnyValue { value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![v] })) }
        } else {
            AnyValue {
                value: Some(any_value::Value::KvlistValue(opentelemetry_proto::tonic::common::v1::KeyValueList {
                    values: vec![KeyValue { key_strindex: 0, key: "k".into(), value: Some(v) }],
                })),
            }
        };
    }
    v
}

#[test]
fn nesting_is_accepted_to_32_levels_and_refused_past_them_wherever_attributes_are() {
    for levels in [31, 32, 33] {
        let kv = KeyValue { key_strindex: 0, key: "deep".into(), value: Some(nested_value(levels)) };
        let mut places = Vec::new();
        let mut rs = traces(&[1]);
        rs[0].scope_spans[0].spans[0].attributes.push(kv.clone());
        places.push(("span", rs));
        let mut rs = traces(&[1]);
        rs[0].resource.get_or_insert_with(Default::default).attributes.push(kv.clone());
        places.push(("resource", rs));
        let mut rs = traces(&[1]);
        rs[0].scope_spans[0].spans[0].events.push(opentelemetry_proto::tonic::trace::v1::span::Event { name: "e".into(), attributes: vec![kv.clone()], ..Default::default() });
        places.push(("event", rs));
        for (place, rs) in places {
            let got = scan_traces(&encode(rs));
            if levels <= MAX_ANY_VALUE_DEPTH {
                assert!(got.is_ok(), "{levels} levels in a {place} attribute: {got:?}");
            } else {
                assert_eq!(got, Err(WireError::TooDeep), "{levels} levels in a {place} attribute");
            }
        }
    }
}

#[test]
fn scan_rejects_garbage_truncation_and_deep_nesting() {
    let b = encode(traces(&[2]));
    assert!(matches!(scan_traces(&b[..b.len() - 3]), Err(WireError::Truncated(_))));
    assert!(scan_traces(&[0xff; 40]).is_err());
    assert!(scan_traces(b"{\"resourceSpans\":[]}").is_err());
    // A key above u32::MAX (found by the otlp_scan fuzz target): prost rejects it, so must we.
    assert!(matches!(scan_traces(&[0xca, 0xda, 0xc1, 0xc1, 0x40, 0x01, 0x00]), Err(WireError::BadField(_))));
    // A 10-byte varint overflowing u64 (also from the fuzzer).
    assert!(matches!(scan_traces(&[0x40, 0xff, 0xff, 0xff, 0xff, 0xff, 0xca, 0xff, 0xff, 0xdb, 0x68]), Err(WireError::BadVarint(_))));
    // Wrong wire type for a known field: field 1 as varint.
    assert!(matches!(scan_traces(&[0x08, 0x01]), Err(WireError::BadWireType { .. })));
    // 100 levels of nested arrays.
    let mut v = AnyValue { value: Some(any_value::Value::IntValue(1)) };
    for _ in 0..100 {
        v = AnyValue { value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![v] })) };
    }
    let mut rs = traces(&[1]);
    rs[0].scope_spans[0].spans[0].attributes.push(KeyValue { key_strindex: 0, key: "deep".into(), value: Some(v) });
    assert_eq!(scan_traces(&encode(rs)), Err(WireError::TooDeep));
    // Invalid UTF-8 in the span name.
    let mut rs = traces(&[1]);
    rs[0].scope_spans[0].spans[0].name = "ab".into();
    let mut bytes = encode(rs).to_vec();
    let at = bytes.windows(2).position(|w| w == b"ab").unwrap();
    bytes[at] = 0xff;
    assert_eq!(scan_traces(&bytes), Err(WireError::BadUtf8("Span")));
}

#[test]
fn encoded_batches_merge_without_decoding_and_roundtrip() {
    let a = Batch::from_encoded(encode(traces(&[2])), 2);
    let b = Batch::from_encoded(encode(traces(&[3])), 3);
    let mut m = a.clone();
    m.append(b).unwrap();
    assert!(m.is_encoded());
    assert_eq!(m.span_count(), 5);
    let bytes = m.to_bytes();
    assert_eq!(bytes.len(), m.encoded_len());
    let decoded = TracesData::decode(bytes).unwrap();
    assert_eq!(crate::batch::count_spans(&decoded.resource_spans), 5);
}

#[test]
fn copy_on_write_only_for_the_mutating_copy() {
    let mut a = Batch::from_resource_spans(traces(&[2]));
    let b = a.clone();
    a.resource_spans_mut().unwrap()[0].scope_spans[0].spans[0].name = "changed".into();
    assert_eq!(b.to_resource_spans().unwrap()[0].scope_spans[0].spans[0].name, "span-1");
    assert_eq!(a.to_resource_spans().unwrap()[0].scope_spans[0].spans[0].name, "changed");
}

#[test]
fn split_keeps_every_span_once() {
    let mut m = Batch::from_encoded(encode(traces(&[3, 4])), 7);
    let head = m.split_to(5).unwrap();
    assert_eq!((head.span_count(), m.span_count()), (5, 2));
    let names: Vec<String> = head
        .to_resource_spans()
        .unwrap()
        .iter()
        .chain(m.to_resource_spans().unwrap().iter())
        .flat_map(|r| r.scope_spans.iter().flat_map(|s| s.spans.iter().map(|s| s.name.clone())))
        .collect();
    assert_eq!(names, (1..=7).map(|i| format!("span-{i}")).collect::<Vec<_>>());
}

#[test]
fn encoded_split_between_buffers_does_not_decode() {
    let mut m = Batch::from_encoded(encode(traces(&[3])), 3);
    m.append(Batch::from_encoded(encode(traces(&[4])), 4)).unwrap();
    m.append(Batch::from_encoded(encode(traces(&[2])), 2)).unwrap();
    let head = m.split_to(8).unwrap();
    assert!(head.is_encoded() && m.is_encoded());
    assert_eq!((head.span_count(), m.span_count()), (7, 2));
    assert_eq!(crate::batch::count_spans(&head.to_resource_spans().unwrap()), 7);
    // A first buffer larger than the limit is split exactly (decoded).
    let mut big = Batch::from_encoded(encode(traces(&[5])), 5);
    let h = big.split_to(2).unwrap();
    assert_eq!((h.span_count(), big.span_count()), (2, 3));
}

#[test]
fn finalizer_fires_once_with_worst_status() {
    let (tx, rx) = std::sync::mpsc::channel();
    let f = Finalizer::new(move |s| tx.send(s).unwrap());
    let a = Batch::from_resource_spans(traces(&[1])).with_finalizer(f);
    let b = a.clone();
    a.set_status(BatchStatus::Errored);
    drop(a);
    assert!(rx.try_recv().is_err(), "fired before every copy was done");
    b.set_status(BatchStatus::Delivered);
    drop(b);
    assert_eq!(rx.try_recv().unwrap(), BatchStatus::Errored);
}

#[tokio::test]
async fn channel_bytes_are_held_by_each_consumer_until_taken() {
    use crate::memory::Held;
    let (h1, h2) = (Held::detached(), Held::detached());
    let (r1, r2) = (crate::topology::ByteRoom::new(64 << 20), crate::topology::ByteRoom::new(64 << 20));
    let (tx1, mut in1) = Input::accounted_channel(4, r1.clone(), h1.clone());
    let (tx2, mut in2) = Input::accounted_channel(4, r2.clone(), h2.clone());
    let out = Output::accounted(vec![(tx1, r1, h1.clone()), (tx2, r2, h2.clone())]);
    let encoded = Batch::from_encoded(encode(traces(&[3])), 3);
    let decoded = Batch::from_resource_spans(traces(&[1, 2]));
    let (le, ld) = (encoded.encoded_len(), decoded.encoded_len());
    out.send(encoded).await.unwrap();
    out.send_or_refuse(decoded, std::time::Duration::from_millis(10)).await.unwrap();
    assert_eq!((h1.bytes(), h2.bytes()), ((le + ld) as i64, (le + ld) as i64), "each consumer's channel holds its copy");
    in1.recv().await.unwrap();
    assert_eq!(h1.bytes(), ld as i64);
    in1.try_recv().unwrap();
    in2.recv().await.unwrap();
    in2.recv().await.unwrap();
    assert_eq!((h1.bytes(), h2.bytes()), (0, 0), "taken batches leave the account");
}

#[tokio::test]
async fn fanout_is_all_or_nothing() {
    let (tx1, mut in1) = Input::channel(1);
    let (tx2, in2) = Input::channel(2);
    let out = Output::new(vec![tx1, tx2]);
    let b = || Batch::from_resource_spans(traces(&[1]));
    out.send_or_refuse(b(), std::time::Duration::from_millis(10)).await.unwrap();
    // Consumer 1 is full now: the next batch goes to neither.
    assert_eq!(out.send_or_refuse(b(), std::time::Duration::from_millis(10)).await, Err(Refused::Full));
    assert_eq!(in1.len(), 1);
    assert_eq!(in2.len(), 1);
    in1.recv().await.unwrap();
    out.send_or_refuse(b(), std::time::Duration::from_millis(10)).await.unwrap();
    assert_eq!((in1.len(), in2.len()), (1, 2));
    drop(in2);
    in1.recv().await.unwrap();
    assert_eq!(out.send(b()).await, Err(Refused::Closed));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The scanner never panics and agrees with prost: what it accepts, prost decodes with
        /// the same span count.
        #[test]
        fn scan_agrees_with_prost(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(r) = scan_traces(&bytes) {
                let d = TracesData::decode(bytes.as_slice());
                prop_assert!(d.is_ok(), "scanner accepted what prost rejects: {:?}", d.err());
                prop_assert_eq!(crate::batch::count_spans(&d.unwrap().resource_spans), r.spans);
            }
        }

        /// Mutating valid messages byte by byte never makes the scanner accept what prost rejects.
        #[test]
        fn scan_mutations(flip in 0usize..200, val in any::<u8>()) {
            let mut b = encode(traces(&[2, 1])).to_vec();
            let i = flip % b.len();
            b[i] = val;
            if let Ok(r) = scan_traces(&b) {
                let d = TracesData::decode(b.as_slice());
                prop_assert!(d.is_ok());
                prop_assert_eq!(crate::batch::count_spans(&d.unwrap().resource_spans), r.spans);
            }
        }
    }
}

/// Resources with a service attribute of `res_pad` bytes, scopes, and spans with a name of
/// `span_pad[i]` bytes: the shapes `split_by_bytes` must cut (a huge resource, a huge span).
fn sized_traces(shape: &[(usize, Vec<Vec<usize>>)]) -> Vec<ResourceSpans> {
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    let mut n = 0u32;
    shape
        .iter()
        .enumerate()
        .map(|(r, (res_pad, scopes))| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue { key_strindex: 0, key: "service.name".into(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(format!("{r}{}", "r".repeat(*res_pad)))) }) }],
                ..Default::default()
            }),
            scope_spans: scopes
                .iter()
                .enumerate()
                .map(|(s, spans)| ScopeSpans {
                    scope: Some(InstrumentationScope { name: format!("scope-{s}"), ..Default::default() }),
                    spans: spans
                        .iter()
                        .map(|pad| {
                            n += 1;
                            Span { trace_id: vec![1; 16], span_id: n.to_be_bytes().repeat(2), name: format!("{n}-{}", "s".repeat(*pad)), ..Default::default() }
                        })
                        .collect(),
                    schema_url: String::new(),
                })
                .collect(),
            schema_url: format!("https://r/{r}"),
        })
        .collect()
}

fn span_names(rs: &[ResourceSpans]) -> Vec<String> {
    rs.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans).map(|s| s.name.clone()).collect()
}

/// Every span of `parts`, with its resource and scope, in order.
fn flatten(rs: &[ResourceSpans]) -> Vec<(Option<opentelemetry_proto::tonic::resource::v1::Resource>, String, Span)> {
    rs.iter()
        .flat_map(|r| r.scope_spans.iter().flat_map(move |s| s.spans.iter().map(move |sp| (r.resource.clone(), format!("{:?}{}", s.scope, s.schema_url), sp.clone()))))
        .collect()
}

#[test]
fn split_by_bytes_keeps_fitting_buffers_whole_and_cuts_big_ones() {
    // Three received buffers: two small, one of 10 spans of ~1 KB.
    let small = encode(sized_traces(&[(10, vec![vec![10, 10]])]));
    let big = encode(sized_traces(&[(10, vec![vec![1000; 10]])]));
    let mut b = Batch::from_encoded(small.clone(), 2);
    b.append(Batch::from_encoded(small.clone(), 2)).unwrap();
    b.append(Batch::from_encoded(big.clone(), 10)).unwrap();
    let parts = b.split_by_bytes(3000).unwrap();
    assert!(parts.too_large.is_empty());
    // The two small buffers share the first part untouched; the big one is cut in ~1 KB spans.
    assert_eq!(parts.parts[0].encoded_buffers().unwrap(), vec![&small[..], &small[..]]);
    assert!(parts.parts.iter().all(|p| p.encoded_len() <= 3000));
    assert_eq!(parts.parts.iter().map(|p| p.span_count()).sum::<usize>(), 14);
    // Greedy: each cut part of the big buffer holds two spans (three would not fit).
    assert_eq!(parts.parts[1..].iter().map(|p| p.span_count()).collect::<Vec<_>>(), vec![2; 5]);
    // A limit no span fits: every span of the big buffer is too large alone.
    let parts = Batch::from_encoded(big, 10).split_by_bytes(900).unwrap();
    assert!(parts.parts.is_empty());
    assert_eq!(parts.too_large.len(), 10);
    assert!(parts.too_large.iter().all(|p| p.span_count() == 1 && p.encoded_len() > 900));
}

#[test]
fn split_by_bytes_carries_finalizers() {
    let fired = std::sync::Arc::new(std::sync::Mutex::new(None));
    let f = fired.clone();
    let b = Batch::from_encoded(encode(sized_traces(&[(10, vec![vec![500; 6]])])), 6).with_finalizer(Finalizer::new(move |s| *f.lock().unwrap() = Some(s)));
    let parts = b.split_by_bytes(1200).unwrap();
    drop(b);
    assert!(parts.parts.len() >= 3);
    let mut parts = parts.parts;
    parts.pop().unwrap().set_status(BatchStatus::Errored);
    assert_eq!(*fired.lock().unwrap(), None, "fired while parts are still held");
    drop(parts);
    assert_eq!(*fired.lock().unwrap(), Some(BatchStatus::Errored));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
    /// Any shape, any limit, encoded or decoded: parts fit, and parts plus the too-large spans
    /// are the batch's spans in order, each with its own resource and scope.
    #[test]
    fn split_by_bytes_fits_and_loses_nothing(
        shape in proptest::collection::vec((0usize..600, proptest::collection::vec(proptest::collection::vec(0usize..700, 0..6), 1..4)), 1..4),
        max in 60usize..3000,
        decoded: bool,
    ) {
        let rs = sized_traces(&shape);
        let n = crate::batch::count_spans(&rs);
        let b = if decoded { Batch::from_resource_spans(rs.clone()) } else { Batch::from_encoded(encode(rs.clone()), n) };
        let parts = b.split_by_bytes(max).unwrap();
        let mut got = Vec::new();
        for p in &parts.parts {
            proptest::prop_assert!(p.encoded_len() <= max, "part of {} bytes over {}", p.encoded_len(), max);
            proptest::prop_assert_eq!(p.span_count(), scan_traces(&p.to_bytes()).unwrap().spans);
            got.extend(flatten(&p.to_resource_spans().unwrap()));
        }
        for p in &parts.too_large {
            proptest::prop_assert!(p.encoded_len() > max);
            proptest::prop_assert_eq!(p.span_count(), 1);
            got.extend(flatten(&p.to_resource_spans().unwrap()));
        }
        let mut want = flatten(&rs);
        // Too-large spans come after the parts: compare as sets of names, and in order without them.
        let alone: Vec<String> = parts.too_large.iter().flat_map(|p| span_names(&p.to_resource_spans().unwrap())).collect();
        let key = |v: &Vec<(_, String, Span)>| { let mut k: Vec<String> = v.iter().map(|x| x.2.name.clone()).collect(); k.sort(); k };
        proptest::prop_assert_eq!(key(&got), key(&want));
        want.retain(|w| !alone.contains(&w.2.name));
        got.truncate(got.len() - parts.too_large.len());
        proptest::prop_assert_eq!(got, want);
    }
}

/// A sink that fails (an error, or a panic) while the graph runs is noticed at once: `failed()`
/// resolves, `/readyz` names it, and `stop` returns its error (the process exits non-zero).
#[tokio::test]
async fn a_stage_that_dies_is_noticed_not_hidden_until_shutdown() {
    use crate::topology::{ComponentContext, ComponentError, Planned, RunningTopology};
    use tracepipe_config::ComponentKind;
    for panics in [false, true] {
        let health = crate::telemetry::Health::default();
        let planned = vec![Planned {
            name: "dies".into(),
            kind: ComponentKind::Sink,
            inputs: vec![],
            channel_capacity: 1,
            channel_bytes: 1 << 20,
            build: Box::new(move |mut ctx: ComponentContext| {
                Box::pin(async move {
                    let _input = ctx.take_input()?;
                    let fut: crate::ComponentFuture = Box::pin(async move {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        if panics {
                            panic!("boom");
                        }
                        Err(ComponentError("disk on fire".into()))
                    });
                    Ok(fut)
                })
            }),
        }];
        let topo = RunningTopology::start(planned, health.clone()).await.unwrap();
        assert!(health.readiness().is_ok());
        tokio::time::timeout(std::time::Duration::from_secs(5), topo.failed()).await.expect("failure noticed");
        let why = health.readiness().unwrap_err().join("; ");
        assert!(why.contains("component dies failed") && why.contains(if panics { "panicked: boom" } else { "disk on fire" }), "{why}");
        let e = topo.stop(std::time::Duration::from_secs(5)).await.unwrap_err();
        assert!(e.0.contains(if panics { "boom" } else { "disk on fire" }), "{e}");
    }
}

/// `append` never loses a batch: when one of the two does not decode, it comes back in the error
/// with its finalizers and the other is kept whole.
#[test]
fn append_hands_back_the_batch_that_does_not_decode() {
    let good = Batch::from_resource_spans(traces(&[2]));
    let bad = Batch::from_encoded(Bytes::from_static(b"\x0a\xff\xff\xff\x0f"), 3);
    let mut m = good.clone();
    let e = m.append(bad.clone()).unwrap_err();
    assert_eq!((e.rejected.span_count(), m.span_count()), (3, 2));
    assert_eq!(m.to_resource_spans().unwrap(), traces(&[2]));
    // The other way round: `self` is the bad one; it comes back and `self` holds the good one.
    let mut m = bad;
    let e = m.append(good).unwrap_err();
    assert_eq!((e.rejected.span_count(), m.span_count()), (3, 2));
    assert_eq!(m.to_resource_spans().unwrap(), traces(&[2]));
}

/// `split_to` across whole resources, whole scopes and inside a scope keeps every span in order.
#[test]
fn split_to_cuts_resources_scopes_and_spans_in_order() {
    let mut rs = traces(&[2, 3]);
    rs.extend(traces(&[1, 4]));
    let all = span_names(&rs);
    for cut in 0..=10 {
        let mut b = Batch::from_resource_spans(rs.clone());
        let head = b.split_to(cut).unwrap();
        assert_eq!(head.span_count(), cut);
        assert_eq!(b.span_count(), 10 - cut);
        let mut got = span_names(&head.to_resource_spans().unwrap());
        got.extend(span_names(&b.to_resource_spans().unwrap()));
        assert_eq!(got, all, "cut at {cut}");
    }
}

/// Cutting by resource: encoded batches at the wire (parts share the buffers, counts from the
/// wire), decoded ones by splitting; every part keeps the finalizers, and the parts together are
/// the batch.
#[test]
fn split_by_resource_cuts_at_resource_boundaries_and_keeps_finalizers() {
    let mut rs = traces(&[2, 1]);
    rs.extend(traces(&[3]));
    rs.extend(traces(&[]));
    let (tx, rx) = std::sync::mpsc::channel();
    let encoded = Batch::from_encoded(encode(rs[..2].to_vec()), 6).with_finalizer(Finalizer::new(move |s| tx.send(s).unwrap()));
    let mut both = encoded.clone();
    both.append(Batch::from_encoded(encode(rs[2..].to_vec()), 0)).unwrap();
    let decoded = Batch::from_resource_spans(rs.clone());
    for b in [&both, &decoded] {
        let parts = b.split_by_resource().unwrap();
        assert_eq!(parts.iter().map(Batch::span_count).collect::<Vec<_>>(), vec![3, 3, 0]);
        let back: Vec<ResourceSpans> = parts.iter().flat_map(|p| p.to_resource_spans().unwrap()).collect();
        assert_eq!(back, rs);
    }
    let parts = both.split_by_resource().unwrap();
    assert!(parts.iter().all(|p| p.finalizers().len() == 1));
    drop((encoded, both, decoded));
    assert!(rx.try_recv().is_err(), "the parts still hold the finalizer");
    parts[0].set_status(BatchStatus::Delivered);
    drop(parts);
    assert_eq!(rx.recv().unwrap(), BatchStatus::Delivered);
}

/// A channel is bounded in bytes as well as in batches: with room for 4 KiB, two batches of ~2 KiB
/// fit and a third is refused after the wait (or waits, through `send`) until one is taken; a
/// batch larger than the whole room passes alone; when the consumer is gone, a sender waiting
/// for room is told it is closed.
#[tokio::test]
async fn channels_are_bounded_in_bytes_and_a_batch_larger_than_the_room_passes_alone() {
    use crate::memory::Held;
    use std::time::Duration;
    let padded = |kib: usize| {
        let mut rs = traces(&[1]);
        rs[0].scope_spans[0].spans[0].name = "x".repeat(kib * 1024 - 200);
        Batch::from_resource_spans(rs)
    };
    let room = crate::topology::ByteRoom::new(4096);
    let (tx, mut input) = Input::accounted_channel(64, room.clone(), Held::detached());
    let out = Output::accounted(vec![(tx, room.clone(), Held::detached())]);
    let wait = Duration::from_millis(50);
    out.send_or_refuse(padded(2), wait).await.unwrap();
    out.send_or_refuse(padded(2), wait).await.unwrap();
    assert_eq!(room.available(), 0);
    assert_eq!(out.send_or_refuse(padded(2), wait).await, Err(Refused::Full));
    // `send` waits until a batch is taken.
    let o2 = out.clone();
    let waiting = tokio::spawn(async move { o2.send(padded(2)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished());
    input.recv().await.unwrap();
    waiting.await.unwrap().unwrap();
    input.recv().await.unwrap();
    input.recv().await.unwrap();
    assert_eq!(room.available(), 4096);
    // Larger than the room: alone.
    out.send_or_refuse(padded(10), wait).await.unwrap();
    assert_eq!(room.available(), 0);
    assert_eq!(out.send_or_refuse(padded(1), wait).await, Err(Refused::Full));
    input.recv().await.unwrap();
    assert_eq!(room.available(), 4096);
    // The consumer goes away while a sender waits for room.
    out.send_or_refuse(padded(4), wait).await.unwrap();
    let o3 = out.clone();
    let waiting = tokio::spawn(async move { o3.send(padded(2)).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(input);
    assert_eq!(waiting.await.unwrap(), Err(Refused::Closed));
}

/// The processors' clock stands still while an input is stalled and resumes where it stopped; a
/// deadline on it is as far ahead on the wall.
#[test]
fn the_processors_clock_stands_still_while_an_input_is_stalled() {
    use crate::clock;
    use std::time::Duration;
    let gap = |a: tokio::time::Instant, b: tokio::time::Instant| b.saturating_duration_since(a);
    // Stall: stands still.
    let s = clock::Stall::new();
    let t0 = clock::now();
    s.begin();
    assert!(clock::stalled());
    std::thread::sleep(Duration::from_millis(200));
    let t1 = clock::now();
    assert!(gap(t0, t1) < Duration::from_millis(100), "stood still: {:?}", gap(t0, t1));
    drop(s);
    assert!(!clock::stalled());
    std::thread::sleep(Duration::from_millis(100));
    let t2 = clock::now();
    assert!(gap(t1, t2) >= Duration::from_millis(100), "runs again from where it stopped");
    let w = clock::wall(clock::now() + Duration::from_millis(300));
    let n = tokio::time::Instant::now();
    assert!(w > n + Duration::from_millis(250) && w < n + Duration::from_millis(350), "a deadline 300 ms ahead on the clock is 300 ms ahead on the wall");
}

/// A repeating message passes once per interval per key.
#[test]
fn throttle_lets_one_message_per_key_through_per_interval() {
    use crate::telemetry::Throttle;
    use std::time::Duration;
    let t = Throttle::new(Duration::from_millis(200));
    assert!(t.allow("AllBrokersDown"));
    assert!(!t.allow("AllBrokersDown"), "repeat within the interval");
    assert!(t.allow("BrokerTransportFailure"), "another key");
    std::thread::sleep(Duration::from_millis(250));
    assert!(t.allow("AllBrokersDown"), "after the interval");
}

/// Replayed context (replay.rs): marked on every resource of a batch, read back kept or dropped,
/// removed by a sink's input (after a reader saw it) while the spans beside it pass; a sink's
/// input marks the acknowledgements it takes as having reached a sink, and a finalizer reports
/// that outcome with its status.
#[tokio::test]
async fn a_sink_input_removes_replayed_context_and_marks_what_it_takes() {
    use crate::replay;
    use std::sync::{Arc, Mutex};
    let mut context = Batch::from_resource_spans(traces(&[2]));
    replay::mark(&mut context, true).unwrap();
    let rs = context.to_resource_spans().unwrap();
    assert_eq!(replay::prior(rs[0].resource.as_ref()), Some(true));
    let mut dropped = Batch::from_resource_spans(traces(&[1]));
    replay::mark(&mut dropped, false).unwrap();
    assert_eq!(replay::prior(dropped.to_resource_spans().unwrap()[0].resource.as_ref()), Some(false));
    let envelope = ResourceSpans { scope_spans: vec![], ..rs[0].clone() }.encode_to_vec();
    assert_eq!(replay::prior_of_envelope(&envelope), Some(true));
    assert_eq!(replay::prior_of_envelope(&ResourceSpans::default().encode_to_vec()), None);
    let mut plain = rs[0].resource.clone();
    assert!(replay::unmark(&mut plain));
    assert_eq!(replay::prior(plain.as_ref()), None);
    // A span from outside with the attribute is not context: only this process's marks count.
    let mut foreign = plain.clone().unwrap_or_default();
    foreign.attributes.push(KeyValue { key: replay::ATTRIBUTE.into(), value: Some(AnyValue { value: Some(any_value::Value::StringValue("kept".into())) }), key_strindex: 0 });
    assert_eq!(replay::prior(Some(&foreign)), None);
    foreign.attributes.last_mut().unwrap().value = Some(AnyValue { value: Some(any_value::Value::StringValue("kept:0123456789abcdef".into())) });
    assert_eq!(replay::prior(Some(&foreign)), None);
    let mut outside = Batch::from_resource_spans(vec![ResourceSpans { resource: Some(foreign), scope_spans: traces(&[1])[0].scope_spans.clone(), ..Default::default() }]);
    assert_eq!(replay::strip(&mut outside), 0, "a sink delivers it");

    // Context and two live spans in one batch, encoded as it travels; acknowledged.
    let live = traces(&[3]);
    let mut both = context.to_resource_spans().unwrap();
    both.extend(live);
    let bytes = Bytes::from(TracesData { resource_spans: both }.encode_to_vec());
    let outcome = Arc::new(Mutex::new(None));
    let o = outcome.clone();
    let f = Finalizer::revocable_with_outcome(Arc::new(std::sync::atomic::AtomicBool::new(false)), move |s, out| *o.lock().unwrap() = Some((s, out.kept())));
    let batch = Batch::from_encoded(bytes, 5).with_finalizer(f);
    let (tx, input) = Input::channel(4);
    let mut input = input.for_sink("s");
    let read = Arc::new(Mutex::new(0usize));
    let r = read.clone();
    input.read_context(Box::new(move |c| *r.lock().unwrap() += c.iter().flat_map(|rs| &rs.scope_spans).map(|ss| ss.spans.len()).sum::<usize>()));
    tx.send(batch).await.unwrap();
    let got = input.recv().await.unwrap();
    assert_eq!(got.span_count(), 3, "the context is removed, the live spans pass");
    assert_eq!(*read.lock().unwrap(), 2, "the reader saw the context first");
    assert!(got.to_resource_spans().unwrap().iter().all(|r| replay::prior(r.resource.as_ref()).is_none()));
    drop(got);
    assert_eq!(*outcome.lock().unwrap(), Some((BatchStatus::Delivered, Some(true))), "reached a sink: kept");
    // A batch without context passes untouched (still encoded).
    tx.send(Batch::from_encoded(Bytes::from(TracesData { resource_spans: traces(&[1]) }.encode_to_vec()), 1)).await.unwrap();
    let got = input.recv().await.unwrap();
    assert!(got.is_encoded() && got.span_count() == 1);
}
