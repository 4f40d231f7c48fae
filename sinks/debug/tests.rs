//! The debug sink writes every span as OTLP/JSON and flushes on shutdown.

use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tokio_util::sync::CancellationToken;
use tracepipe_config::ComponentKind;
use tracepipe_pipeline::telemetry::Health;
use tracepipe_pipeline::topology::{ComponentContext, Input};
use tracepipe_pipeline::Batch;

use super::{DebugConfig, Verbosity};

#[tokio::test]
async fn writes_otlp_json_lines() {
    let dir = std::env::temp_dir().join(format!("tp-debug-{}", std::process::id()));
    let path = dir.join("out/spans.jsonl");
    let (tx, input) = Input::channel(4);
    let ctx = ComponentContext {
        name: "d".into(),
        kind: ComponentKind::Sink,
        input: Some(input),
        output: None,
        shutdown: CancellationToken::new(),
        health: Health::default(),
    };
    let task = super::build(DebugConfig { verbosity: Verbosity::Detailed, path: Some(path.clone()) }, ctx).await.unwrap();
    let h = tokio::spawn(task);
    for i in 1..=2u8 {
        let span = Span { trace_id: vec![i; 16], span_id: vec![i; 8], name: format!("op{i}"), ..Default::default() };
        tx.send(Batch::from_resource_spans(vec![ResourceSpans { scope_spans: vec![ScopeSpans { spans: vec![span], ..Default::default() }], ..Default::default() }]))
            .await
            .unwrap();
    }
    drop(tx);
    h.await.unwrap().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    let span = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    assert_eq!(span["traceId"], "02020202020202020202020202020202");
    assert_eq!(span["name"], "op2");
    std::fs::remove_dir_all(dir).ok();
}
