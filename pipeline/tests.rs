//! Unit tests: the wire scanner, the batch model and the fan-out.

use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, TracesData};
use prost::Message;

use crate::batch::{Batch, BatchStatus, Finalizer};
use crate::topology::{Input, Output, Refused};
use crate::wire::{scan_traces, SpanProblem, WireError};

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
