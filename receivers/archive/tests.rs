//! Archive replay: round trip through the Parquet sink's writer, SQL filters, whole traces, time
//! windows, paced replay and timestamp shifting, and clear errors for missing archives.

use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tokio_util::sync::CancellationToken;
use tracepipe_config::ComponentKind;
use tracepipe_pipeline::telemetry::Health;
use tracepipe_pipeline::topology::{ComponentContext, Input, Output};
use tracepipe_sinks::parquet::{ArchiveWriter, ParquetSinkConfig};

use super::{ArchiveConfig, Speed};

const T0: u64 = 1_795_000_000 * 1_000_000_000; // 2026-11-18T11:06:40Z
const MS: u64 = 1_000_000;

fn svc(name: &str) -> Option<Resource> {
    Some(Resource { attributes: vec![KeyValue { key: "service.name".into(), value: Some(AnyValue { value: Some(Value::StringValue(name.into())) }), key_strindex: 0 }], ..Default::default() })
}

/// Traces 1..=n, each a productpage span and a reviews span (duration 2 ms for even traces,
/// 1 ms otherwise), trace k starting at T0 + k*100ms.
fn archive(n: u8) -> (tempfile::TempDir, Vec<ResourceSpans>) {
    let dir = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    for k in 1..=n {
        let start = T0 + k as u64 * 100 * MS;
        let dur = if k % 2 == 0 { 2 * MS } else { MS };
        for (i, service) in ["productpage", "reviews"].iter().enumerate() {
            let span = Span { trace_id: vec![k; 16], span_id: vec![k, i as u8, 0, 0, 0, 0, 0, 1], name: format!("{service}-{k}"), kind: 2, start_time_unix_nano: start + i as u64 * MS / 10, end_time_unix_nano: start + i as u64 * MS / 10 + dur, ..Default::default() };
            all.push(ResourceSpans { resource: svc(service), scope_spans: vec![ScopeSpans { spans: vec![span], ..Default::default() }], ..Default::default() });
        }
    }
    let mut w = ArchiveWriter::new(ParquetSinkConfig { max_clock_skew: tracepipe_config::Duration::from_secs(0), path: dir.path().to_path_buf(), ..Default::default() });
    // Two files, to make the reader merge them.
    let (a, b) = all.split_at(all.len() / 2);
    w.write(a, std::time::Instant::now()).unwrap();
    w.close_all().unwrap();
    w.write(b, std::time::Instant::now()).unwrap();
    w.close_all().unwrap();
    (dir, all)
}

/// Runs the receiver to the end; returns every span it sent, with the (tokio) time it was sent.
async fn replay(cfg: ArchiveConfig) -> Result<Vec<(tokio::time::Instant, Span, Option<Resource>)>, String> {
    let (tx, mut out) = Input::channel(1024);
    let ctx = ComponentContext { name: "replay".into(), kind: ComponentKind::Receiver, input: None, output: Some(Output::new(vec![tx])), shutdown: CancellationToken::new(), health: Health::default() };
    let task = super::build(cfg, ctx).await.map_err(|e| e.to_string())?;
    let h = tokio::spawn(task);
    let mut got = Vec::new();
    while let Some(b) = out.recv().await {
        let at = tokio::time::Instant::now();
        for r in b.to_resource_spans().unwrap() {
            for ss in r.scope_spans {
                for s in ss.spans {
                    got.push((at, s, r.resource.clone()));
                }
            }
        }
    }
    h.await.unwrap().map_err(|e| e.to_string())?;
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_everything_unchanged_and_ends() {
    let (dir, all) = archive(10);
    let got = replay(ArchiveConfig { path: dir.path().into(), ..Default::default() }).await.unwrap();
    let mut want: Vec<(Vec<u8>, Span, Option<Resource>)> = all.iter().map(|r| (r.scope_spans[0].spans[0].span_id.clone(), r.scope_spans[0].spans[0].clone(), r.resource.clone())).collect();
    let mut have: Vec<(Vec<u8>, Span, Option<Resource>)> = got.into_iter().map(|(_, s, r)| (s.span_id.clone(), s, r)).collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    have.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(have, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_window_and_whole_traces() {
    let (dir, _) = archive(10);
    let base = ArchiveConfig { path: dir.path().into(), ..Default::default() };
    // reviews spans of the even (2 ms) traces: 5 spans.
    let got = replay(ArchiveConfig { filter: Some("service_name = 'reviews' AND duration_ns > 1500000".into()), ..base.clone() }).await.unwrap();
    assert_eq!(got.len(), 5);
    assert!(got.iter().all(|(_, s, _)| s.name.starts_with("reviews-") && s.trace_id[0] % 2 == 0));
    // ... and with whole traces, their productpage spans too.
    let got = replay(ArchiveConfig { filter: Some("service_name = 'reviews' AND duration_ns > 1500000".into()), whole_traces: true, ..base.clone() }).await.unwrap();
    assert_eq!(got.len(), 10);
    assert!(got.iter().all(|(_, s, _)| s.trace_id[0] % 2 == 0));
    // A time window: traces 3..=5 start in [T0+300ms, T0+550ms).
    let at = |ms: u64| std::time::UNIX_EPOCH + Duration::from_nanos(T0 + ms * MS);
    let got = replay(ArchiveConfig { from: Some(at(300)), to: Some(at(550)), ..base.clone() }).await.unwrap();
    let traces: std::collections::BTreeSet<u8> = got.iter().map(|(_, s, _)| s.trace_id[0]).collect();
    assert_eq!(traces.into_iter().collect::<Vec<_>>(), vec![3, 4, 5]);
    // Attribute maps are queryable.
    let got = replay(ArchiveConfig { filter: Some("resource_attributes['service.name'] = 'productpage'".into()), ..base }).await.unwrap();
    assert_eq!(got.len(), 10);
}

// The paused clock: the pacing is checked to the millisecond, not against the scheduler's jitter
// on a loaded machine (the clock only moves by the replay's own sleeps).
#[tokio::test(start_paused = true)]
async fn paced_replay_keeps_the_gaps_and_shift_makes_it_live() {
    let (dir, _) = archive(10);
    // 1x: trace k goes out k*100ms after trace 1 (the spans of one trace are 0.1 ms apart).
    let t = tokio::time::Instant::now();
    let got = replay(ArchiveConfig { path: dir.path().into(), speed: Speed::Factor(1.0), shift_to_now: true, ..Default::default() }).await.unwrap();
    assert_eq!(got.len(), 20);
    let first = got.iter().find(|(_, s, _)| s.trace_id[0] == 1).unwrap().0;
    for (at, s, _) in &got {
        let want = Duration::from_millis((s.trace_id[0] as u64 - 1) * 100);
        let gap = at.duration_since(first);
        // Spans due within 1 ms go out without a sleep.
        assert!(gap.abs_diff(want) <= Duration::from_millis(1), "trace {} sent after {gap:?}, want {want:?}", s.trace_id[0]);
    }
    assert!(t.elapsed() >= Duration::from_millis(900));
    // Shifted: the first span starts about now, durations unchanged.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let s1 = &got.iter().find(|(_, s, _)| s.trace_id[0] == 1).unwrap().1;
    assert!(now.abs_diff(s1.start_time_unix_nano) < 5_000 * MS, "start {} vs now {now}", s1.start_time_unix_nano);
    assert!(got.iter().all(|(_, s, _)| s.end_time_unix_nano - s.start_time_unix_nano == if s.trace_id[0] % 2 == 0 { 2 * MS } else { MS }));
    // 10x: the whole second of traffic in 90 ms (trace 10 is 900 ms after trace 1).
    let t = tokio::time::Instant::now();
    replay(ArchiveConfig { path: dir.path().into(), speed: Speed::Factor(10.0), ..Default::default() }).await.unwrap();
    let took = t.elapsed();
    assert!(took.abs_diff(Duration::from_millis(90)) <= Duration::from_millis(1), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_errors() {
    let missing = replay(ArchiveConfig { path: "/nonexistent/archive".into(), ..Default::default() }).await.unwrap_err();
    assert!(missing.contains("archive `/nonexistent/archive` does not exist"), "{missing}");
    let empty = tempfile::tempdir().unwrap();
    let e = replay(ArchiveConfig { path: empty.path().into(), ..Default::default() }).await.unwrap_err();
    assert!(e.contains("holds no .parquet files"), "{e}");
    let (dir, _) = archive(2);
    let e = replay(ArchiveConfig { path: dir.path().into(), filter: Some("no_such_column = 1".into()), ..Default::default() }).await.unwrap_err();
    assert!(e.contains("no_such_column"), "{e}");
    // A file that is not Parquet (hostile or damaged) fails the replay with an error naming it.
    let (dir, _) = archive(2);
    std::fs::write(dir.path().join("date=2026-11-18/hour=11/part-0-0-0.parquet"), b"PAR1 this is not a parquet file PAR1").unwrap();
    let e = replay(ArchiveConfig { path: dir.path().into(), ..Default::default() }).await.unwrap_err();
    assert!(e.contains("part-0-0-0.parquet` is not a readable Parquet file"), "{e}");
    // A Parquet file of another schema version (or not tracepipe's) is named, not misread.
    let (dir, _) = archive(2);
    {
        use datafusion::arrow::array::Int64Array;
        use datafusion::arrow::record_batch::RecordBatch;
        let b = RecordBatch::try_from_iter([("x", std::sync::Arc::new(Int64Array::from(vec![1])) as _)]).unwrap();
        let f = std::fs::File::create(dir.path().join("date=2026-11-18/hour=11/part-9-9-9.parquet")).unwrap();
        let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(f, b.schema(), None).unwrap();
        w.write(&b).unwrap();
        w.close().unwrap();
    }
    let e = replay(ArchiveConfig { path: dir.path().into(), ..Default::default() }).await.unwrap_err();
    assert!(e.contains("part-9-9-9.parquet` has schema version none (not written by tracepipe); this tracepipe reads version 2"), "{e}");
    // Bad times are caught when the config is read.
    let node = tracepipe_config::Node::parse("t.yaml", "from: yesterday\n").unwrap();
    let errs = ArchiveConfig::from_node(&node, "t.yaml").unwrap_err();
    assert!(errs[0].to_string().contains("invalid time `yesterday`"), "{errs:?}");
    let node = tracepipe_config::Node::parse("t.yaml", "from: 2026-11-22T11:00:00Z\nto: 2026-11-22T10:00:00Z\nbatch_size: 0\n").unwrap();
    let errs: Vec<String> = ArchiveConfig::from_node(&node, "t.yaml").unwrap_err().iter().map(|e| e.to_string()).collect();
    assert_eq!(errs.len(), 2, "{errs:?}");
    // Bad syntax is caught when the config is read, with its position.
    let node = tracepipe_config::Node::parse("t.yaml", "where: \"service_name = = 'x'\"\nspeed: fast\n").unwrap();
    let errs = ArchiveConfig::from_node(&node, "t.yaml").unwrap_err();
    assert!(errs[0].to_string().contains("speed"), "{errs:?}");
    let node = tracepipe_config::Node::parse("t.yaml", "where: \"service_name = = 'x'\"\n").unwrap();
    let errs = ArchiveConfig::from_node(&node, "t.yaml").unwrap_err();
    assert!(errs[0].to_string().contains("t.yaml:1:") && errs[0].to_string().contains("where"), "{errs:?}");
}
