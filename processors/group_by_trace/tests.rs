//! group_by_trace: config names and checks; a trace's spans from separate batches come out
//! together after `wait`, unmarked; a late span passes at once; shutdown releases what is held.

use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, TracesData};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tracepipe_config::ComponentKind;
use tracepipe_pipeline::telemetry::Health;
use tracepipe_pipeline::topology::{ComponentContext, Input, Output};
use tracepipe_pipeline::Batch;

use super::GroupByTraceConfig;

fn parse(body: &str) -> Result<GroupByTraceConfig, Vec<tracepipe_config::ConfigError>> {
    let text = format!("receivers:\n  a: {{type: otlp}}\nprocessors:\n  g:\n    type: group_by_trace\n    inputs: [a]\n{body}sinks:\n  d: {{type: debug, inputs: [g]}}\n");
    let (cfg, errs) = tracepipe_config::load("t.yaml", &text, &|_| None);
    assert!(errs.is_empty(), "{errs}");
    GroupByTraceConfig::from_node(&cfg.processors[0].body, "t.yaml")
}

#[test]
fn config_names_and_errors() {
    let c = parse("").unwrap();
    assert_eq!(c.wait.get(), Duration::from_secs(1));
    assert_eq!(parse("    wait_duration: 3s\n    num_traces: 10\n").unwrap().wait.get(), Duration::from_secs(3));
    let e = parse("    wait: 0s\n    max_bytes: 1KiB\n").unwrap_err();
    let all: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    assert_eq!(all, vec!["t.yaml:7:11: wait must be above 0".to_owned(), "t.yaml:8:16: max_bytes must be at least 1MiB".to_owned()]);
    let engine = c.engine();
    assert!(!engine.mark_policy && engine.decision_cache.non_sampled_cache_size == 0);
}

fn span(t: u8, id: u8) -> Span {
    Span { trace_id: vec![t; 16], span_id: vec![id; 8], parent_span_id: if id == 1 { vec![] } else { vec![1; 8] }, name: format!("op{id}"), ..Default::default() }
}

fn encode(spans: Vec<Span>) -> Batch {
    let n = spans.len();
    let td = TracesData { resource_spans: vec![ResourceSpans { scope_spans: vec![ScopeSpans { spans, ..Default::default() }], ..Default::default() }] };
    Batch::from_encoded(td.encode_to_vec().into(), n)
}

fn spans(b: &Batch) -> Vec<Span> {
    b.to_resource_spans().unwrap().into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans).collect()
}

#[tokio::test(start_paused = true)]
async fn a_traces_spans_come_out_together_after_the_wait_and_late_spans_pass_at_once() {
    let (tx, input) = Input::channel(8);
    let (otx, mut out) = Input::channel(64);
    let ctx = ComponentContext { name: "g".into(), kind: ComponentKind::Processor, input: Some(input), output: Some(Output::new(vec![otx])), shutdown: CancellationToken::new(), health: Health::default() };
    let cfg = GroupByTraceConfig { wait: tracepipe_config::Duration::from_secs(2), shards: 2, ..Default::default() };
    let h = tokio::spawn(super::build(cfg, ctx).await.unwrap());
    tx.send(encode(vec![span(1, 2), span(2, 1)])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tx.send(encode(vec![span(1, 1), span(1, 3)])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(out.is_empty(), "released before the wait");
    let mut got = Vec::new();
    while got.len() < 4 {
        let b = tokio::time::timeout(Duration::from_millis(300), out.recv()).await.expect("released after the wait").unwrap();
        let s = spans(&b);
        // One trace's spans never straddle two batches.
        let traces: std::collections::BTreeSet<_> = s.iter().map(|s| s.trace_id.clone()).collect();
        for t in &traces {
            assert_eq!(s.iter().filter(|x| &x.trace_id == t).count(), if t[0] == 1 { 3 } else { 1 });
        }
        got.extend(s);
    }
    assert!(got.iter().all(|s| s.attributes.is_empty()), "no sampling marks");
    // A late span of trace 1 passes at once; a new trace is held until shutdown releases it.
    tx.send(encode(vec![span(1, 4), span(3, 1)])).await.unwrap();
    let late = tokio::time::timeout(Duration::from_millis(50), out.recv()).await.expect("late span at once").unwrap();
    assert_eq!(spans(&late).iter().map(|s| s.span_id[0]).collect::<Vec<_>>(), vec![4]);
    drop(tx);
    h.await.unwrap().unwrap();
    let rest = out.recv().await.unwrap();
    assert_eq!(spans(&rest).iter().map(|s| s.trace_id[0]).collect::<Vec<_>>(), vec![3]);
}
