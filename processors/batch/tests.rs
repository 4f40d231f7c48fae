//! Batch processor semantics under a paused clock.

use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tokio_util::sync::CancellationToken;
use tracepipe_config::ComponentKind;
use tracepipe_pipeline::telemetry::Health;
use tracepipe_pipeline::topology::{ComponentContext, Input, Output};
use tracepipe_pipeline::Batch;

use super::BatchConfig;

fn batch(n: usize, tag: u8) -> Batch {
    let spans = (0..n)
        .map(|i| Span { trace_id: vec![tag; 16], span_id: (i as u64 + 1).to_be_bytes().to_vec(), name: format!("{tag}-{i}"), ..Default::default() })
        .collect();
    Batch::from_resource_spans(vec![ResourceSpans { scope_spans: vec![ScopeSpans { spans, ..Default::default() }], ..Default::default() }])
}

async fn start(cfg: BatchConfig) -> (tokio::sync::mpsc::Sender<Batch>, Input, tokio::task::JoinHandle<Result<(), tracepipe_pipeline::ComponentError>>) {
    let (tx_in, input) = Input::channel(16);
    let (tx_out, out) = Input::channel(64);
    let ctx = ComponentContext {
        name: "b".into(),
        kind: ComponentKind::Processor,
        input: Some(input),
        output: Some(Output::new(vec![tx_out])),
        shutdown: CancellationToken::new(),
        health: Health::default(),
    };
    let fut = super::build(cfg, ctx).await.unwrap();
    (tx_in, out, tokio::spawn(fut))
}

fn names(b: &Batch) -> Vec<String> {
    b.to_resource_spans().unwrap().iter().flat_map(|r| r.scope_spans.iter().flat_map(|s| s.spans.iter().map(|s| s.name.clone()))).collect()
}

#[tokio::test(start_paused = true)]
async fn size_trigger_sends_at_once() {
    let (tx, mut out, _h) = start(BatchConfig { send_batch_size: 5, send_batch_max_size: 0, timeout: tracepipe_config::Duration::from_secs(10), ..Default::default() }).await;
    tx.send(batch(3, 1)).await.unwrap();
    tx.send(batch(3, 2)).await.unwrap();
    let b = tokio::time::timeout(Duration::from_millis(1), out.recv()).await.expect("size trigger fired late").unwrap();
    assert_eq!(b.span_count(), 6);
    assert_eq!(names(&b), ["1-0", "1-1", "1-2", "2-0", "2-1", "2-2"]);
}

#[tokio::test(start_paused = true)]
async fn timeout_trigger_after_first_span() {
    let (tx, mut out, _h) = start(BatchConfig { send_batch_size: 100, send_batch_max_size: 0, timeout: tracepipe_config::Duration::from_millis(200), ..Default::default() }).await;
    tx.send(batch(2, 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    tx.send(batch(1, 2)).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(40), out.recv()).await.is_err(), "sent before the timeout");
    let b = tokio::time::timeout(Duration::from_millis(20), out.recv()).await.expect("timeout trigger did not fire").unwrap();
    assert_eq!(b.span_count(), 3);
}

#[tokio::test(start_paused = true)]
async fn max_size_splits_and_shutdown_flushes() {
    let (tx, mut out, h) = start(BatchConfig { send_batch_size: 4, send_batch_max_size: 4, timeout: tracepipe_config::Duration::from_secs(60), ..Default::default() }).await;
    tx.send(batch(10, 1)).await.unwrap();
    let sizes: Vec<usize> = vec![out.recv().await.unwrap().span_count(), out.recv().await.unwrap().span_count(), out.recv().await.unwrap().span_count()];
    assert_eq!(sizes, [4, 4, 2]);
    tx.send(batch(1, 2)).await.unwrap();
    drop(tx);
    let last = out.recv().await.unwrap();
    assert_eq!(names(&last), ["2-0"]);
    h.await.unwrap().unwrap();
    assert!(out.recv().await.is_none());
}

#[test]
fn config_checks() {
    let (cfg, errs) = tracepipe_config::load("t.yaml", "receivers:\n  a: {type: otlp}\nprocessors:\n  b:\n    type: batch\n    inputs: [a]\n    send_batch_size: 100\n    send_batch_max_size: 10\nsinks:\n  s: {type: debug, inputs: [b]}\n", &|_| None);
    assert!(errs.is_empty(), "{errs}");
    let e = BatchConfig::from_node(&cfg.processors[0].body, "t.yaml").unwrap_err();
    assert_eq!(e[0].to_string(), "t.yaml:8:26: send_batch_max_size (10) must be 0 or at least send_batch_size (100)");
    let (cfg, errs) = tracepipe_config::load("t.yaml", "receivers:\n  a: {type: otlp}\nprocessors:\n  b:\n    type: batch\n    inputs: [a]\n    send_batch_max_bytes: 10\nsinks:\n  s: {type: debug, inputs: [b]}\n", &|_| None);
    assert!(errs.is_empty(), "{errs}");
    let e = BatchConfig::from_node(&cfg.processors[0].body, "t.yaml").unwrap_err();
    assert_eq!(e[0].to_string(), "t.yaml:7:27: send_batch_max_bytes must be at least 1KiB");
    assert_eq!(BatchConfig::default().send_batch_max_bytes, tracepipe_config::ByteSize::mib(8));
}

/// A batch that does not decode (it cannot join a decoded one) is dropped, reported rejected to
/// its finalizer and counted; the processor keeps running and batches the rest.
#[tokio::test(start_paused = true)]
async fn a_batch_that_does_not_decode_is_dropped_not_fatal() {
    use tracepipe_pipeline::{BatchStatus, Finalizer};
    let (tx, mut out, h) = start(BatchConfig { send_batch_size: 5, send_batch_max_size: 0, timeout: tracepipe_config::Duration::from_secs(10), ..Default::default() }).await;
    tx.send(batch(2, 1)).await.unwrap();
    let (stx, srx) = std::sync::mpsc::channel();
    let bad = Batch::from_encoded(b"\x0a\xff\xff\xff\x0f".to_vec().into(), 3).with_finalizer(Finalizer::new(move |s| {
        let _ = stx.send(s);
    }));
    tx.send(bad).await.unwrap();
    tx.send(batch(3, 2)).await.unwrap();
    let b = tokio::time::timeout(Duration::from_millis(1), out.recv()).await.expect("the processor stopped").unwrap();
    assert_eq!(names(&b), ["1-0", "1-1", "2-0", "2-1", "2-2"]);
    assert_eq!(srx.try_recv().unwrap(), BatchStatus::Rejected);
    drop(tx);
    h.await.unwrap().unwrap();
}

/// Big spans: the pending batch is sent once it holds `send_batch_max_bytes`, however few spans,
/// so what the processor holds is bounded in bytes too.
#[tokio::test(start_paused = true)]
async fn byte_trigger_sends_big_spans_early() {
    let big = |tag: u8| {
        let spans = (0..3).map(|i| Span { trace_id: vec![tag; 16], span_id: vec![i + 1; 8], name: format!("{tag}-{i}-{}", "x".repeat(100_000)), ..Default::default() }).collect();
        Batch::from_resource_spans(vec![ResourceSpans { scope_spans: vec![ScopeSpans { spans, ..Default::default() }], ..Default::default() }])
    };
    let cfg = BatchConfig { send_batch_size: 8192, timeout: tracepipe_config::Duration::from_secs(10), send_batch_max_bytes: tracepipe_config::ByteSize(500_000), ..Default::default() };
    let (tx, mut out, _h) = start(cfg).await;
    tx.send(big(1)).await.unwrap(); // ~300 KB: held
    assert!(tokio::time::timeout(Duration::from_millis(1), out.recv()).await.is_err(), "sent before either trigger");
    tx.send(big(2)).await.unwrap(); // ~600 KB pending: over 500 KB
    let b = tokio::time::timeout(Duration::from_millis(1), out.recv()).await.expect("byte trigger did not fire").unwrap();
    assert_eq!(b.span_count(), 6);
}
