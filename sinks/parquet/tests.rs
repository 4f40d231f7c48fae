//! Parquet sink: schema round trip of every OTLP field, partitions, rolling, atomic files,
//! crash leftovers, and the task's shutdown close.

use std::fs::File;
use std::time::{Duration as StdDuration, Instant};

use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use tracepipe_pipeline::archive::{layout, schema};

use super::{ArchiveWriter, ParquetSinkConfig, Roll};

fn kv(k: &str, v: Value) -> KeyValue {
    KeyValue { key: k.into(), value: Some(AnyValue { value: Some(v) }), key_strindex: 0 }
}

/// Spans using every OTLP field and every attribute type, nested arrays and maps included.
pub(crate) fn rich(n: usize, start: u64) -> Vec<ResourceSpans> {
    let attrs = vec![
        kv("s", Value::StringValue("str".into())),
        kv("i", Value::IntValue(-42)),
        kv("d", Value::DoubleValue(1.5)),
        kv("b", Value::BoolValue(true)),
        kv("y", Value::BytesValue(vec![0, 1, 255])),
        kv("a", Value::ArrayValue(ArrayValue { values: vec![AnyValue { value: Some(Value::IntValue(1)) }, AnyValue { value: Some(Value::StringValue("x".into())) }] })),
        kv("m", Value::KvlistValue(KeyValueList { values: vec![kv("inner", Value::ArrayValue(ArrayValue { values: vec![AnyValue { value: Some(Value::BoolValue(false)) }] }))] })),
        KeyValue { key: "empty".into(), value: None, key_strindex: 0 },
    ];
    let spans = (0..n)
        .map(|i| Span {
            trace_id: vec![1 + (i % 7) as u8; 16],
            span_id: (i as u64 + 1).to_be_bytes().to_vec(),
            trace_state: if i % 2 == 0 { "k=v".into() } else { String::new() },
            parent_span_id: if i % 3 == 0 { Vec::new() } else { vec![9; 8] },
            flags: 0x301,
            name: format!("op-{i}"),
            kind: (i % 6) as i32,
            start_time_unix_nano: start + i as u64 * 1000,
            end_time_unix_nano: start + i as u64 * 1000 + 500,
            // Every order of types: the archive keeps it (`attributes_order`).
            attributes: {
                let mut a = attrs.clone();
                a.rotate_left(i % attrs.len());
                a
            },
            dropped_attributes_count: 1,
            events: vec![span::Event { time_unix_nano: start + 7, name: "ev".into(), attributes: attrs[..3].to_vec(), dropped_attributes_count: 2 }],
            dropped_events_count: 3,
            links: vec![span::Link { trace_id: vec![5; 16], span_id: vec![6; 8], trace_state: "l=1".into(), attributes: attrs[5..7].to_vec(), dropped_attributes_count: 4, flags: 1 }],
            dropped_links_count: 5,
            status: match i % 3 {
                0 => None,
                1 => Some(Status { code: 1, message: String::new() }),
                _ => Some(Status { code: 2, message: "boom".into() }),
            },
        })
        .collect();
    vec![
        ResourceSpans {
            resource: Some(Resource { attributes: vec![kv("service.name", Value::StringValue("reviews".into())), kv("k8s.pod.uid", Value::IntValue(7))], dropped_attributes_count: 1, entity_refs: vec![] }),
            scope_spans: vec![ScopeSpans { scope: Some(InstrumentationScope { name: "sc".into(), version: "1.0".into(), attributes: attrs[..2].to_vec(), dropped_attributes_count: 1 }), spans, schema_url: "https://s/1".into() }],
            schema_url: "https://r/1".into(),
        },
        ResourceSpans {
            resource: Some(Resource::default()),
            scope_spans: vec![ScopeSpans { scope: Some(InstrumentationScope::default()), spans: vec![Span { trace_id: vec![3; 16], span_id: vec![4; 8], start_time_unix_nano: start, end_time_unix_nano: start, ..Default::default() }], schema_url: String::new() }],
            schema_url: String::new(),
        },
    ]
}

fn read_all(path: &std::path::Path) -> Vec<ResourceSpans> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap().build().unwrap();
    reader.flat_map(|b| schema::from_record_batch(&b.unwrap()).unwrap()).collect()
}

const T0: u64 = 1_795_000_000 * 1_000_000_000; // 2026-11-18T11:06:40Z

#[test]
fn every_otlp_field_survives_the_round_trip() {
    let spans = rich(50, T0);
    let b = schema::to_record_batch(&spans).unwrap();
    assert_eq!(b.schema(), schema::schema());
    assert_eq!(schema::from_record_batch(&b).unwrap(), spans);
    // service_name is derived (not read back by from_record_batch): check it on its own.
    let svc = datafusion::arrow::compute::cast(b.column_by_name("service_name").unwrap(), &datafusion::arrow::datatypes::DataType::Utf8).unwrap();
    let svc = svc.as_any().downcast_ref::<datafusion::arrow::array::StringArray>().unwrap();
    let mut want: Vec<Option<&str>> = vec![Some("reviews"); 50];
    want.push(None);
    assert_eq!(svc.iter().collect::<Vec<_>>(), want);
}

#[test]
fn files_appear_atomically_in_hour_partitions_and_roll() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ParquetSinkConfig { max_clock_skew: tracepipe_config::Duration::from_secs(0), path: dir.path().to_path_buf(), roll: Roll { max_rows: 120, ..Roll::default() }, ..Default::default() };
    let mut w = ArchiveWriter::new(cfg);
    let now = Instant::now();
    assert!(w.write(&rich(50, T0), now).unwrap().is_empty());
    // Open, not closed: only a hidden temporary file exists; nothing a reader would list.
    assert!(layout::closed_files(dir.path()).unwrap().is_empty());
    let part = dir.path().join("date=2026-11-18/hour=11");
    assert_eq!(std::fs::read_dir(&part).unwrap().count(), 1);
    // One batch straddling the hour: rows go to both partitions.
    let mut late = rich(10, T0 + 3600 * 1_000_000_000);
    late.extend(rich(80, T0));
    let closed = w.write(&late, now).unwrap();
    assert_eq!(closed.len(), 1, "the 11h file reached max_rows");
    assert_eq!(closed[0].rows, 50 + 1 + 80 + 1);
    let rest = w.close_all().unwrap();
    assert_eq!(rest.len(), 1);
    let files = layout::closed_files(dir.path()).unwrap();
    assert_eq!(files.len(), 2);
    assert!(files[1].starts_with(dir.path().join("date=2026-11-18/hour=12")));
    let mut want = rich(50, T0);
    want.extend(rich(80, T0));
    assert_eq!(read_all(&files[0]), want);
    assert_eq!(read_all(&files[1]), rich(10, T0 + 3600 * 1_000_000_000));
}

#[test]
fn at_most_sixteen_files_are_open_and_a_seventeenth_partition_closes_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ParquetSinkConfig { max_clock_skew: tracepipe_config::Duration::from_secs(0), path: dir.path().to_path_buf(), ..Default::default() };
    let mut w = ArchiveWriter::new(cfg);
    let now = Instant::now();
    // Spans of 16 different hours: 16 partitions, 16 open files, nothing closed yet.
    for h in 0..16u64 {
        assert!(w.write(&rich(3, T0 + h * 3600 * 1_000_000_000), now + std::time::Duration::from_millis(h)).unwrap().is_empty(), "hour {h}");
    }
    assert_eq!(w.open_files(), 16);
    assert!(layout::closed_files(dir.path()).unwrap().is_empty());
    // A 17th hour closes the file opened first (hour 11 of T0's day), and only it.
    let closed = w.write(&rich(3, T0 + 16 * 3600 * 1_000_000_000), now + std::time::Duration::from_millis(20)).unwrap();
    assert_eq!(closed.len(), 1);
    assert_eq!(w.open_files(), 16);
    let files = layout::closed_files(dir.path()).unwrap();
    assert_eq!(files.len(), 1);
    assert!(files[0].starts_with(dir.path().join("date=2026-11-18/hour=11")), "{:?}", files[0]);
    assert_eq!(w.close_all().unwrap().len(), 16);
    assert_eq!(layout::closed_files(dir.path()).unwrap().len(), 17);
}

#[test]
fn a_file_rolls_at_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ParquetSinkConfig {
        max_clock_skew: tracepipe_config::Duration::from_secs(0),
        path: dir.path().to_path_buf(),
        roll: Roll { max_bytes: tracepipe_config::ByteSize(64 * 1024), ..Roll::default() },
        ..Default::default()
    };
    let mut w = ArchiveWriter::new(cfg);
    let now = Instant::now();
    let mut closed = Vec::new();
    for k in 0..40u64 {
        closed.extend(w.write(&rich(50, T0 + k), now).unwrap());
    }
    closed.extend(w.close_all().unwrap());
    assert!(closed.len() >= 2, "{} files: never rolled at 64 KiB", closed.len());
    let files = layout::closed_files(dir.path()).unwrap();
    assert_eq!(files.len(), closed.len());
    // Each file but the last stopped at the first write that took it to the bound.
    let rows: usize = files.iter().map(|f| read_all(f).iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum::<usize>()).sum();
    assert_eq!(rows, 40 * 51);
    for f in &files {
        assert!(std::fs::metadata(f).unwrap().len() < 4 * 64 * 1024, "{f:?} is {} bytes", std::fs::metadata(f).unwrap().len());
    }
}

/// The usual case, encoded batches (straight to Parquet pages): the same files and rows as
/// decoded spans, including a batch across the hour (the Arrow path splits it into the same
/// files) and row groups cut by `row_group_rows`.
#[test]
fn encoded_batches_go_to_the_same_partitions_and_read_back_the_same() {
    use prost::Message;
    let enc = |rs: Vec<ResourceSpans>| opentelemetry_proto::tonic::trace::v1::TracesData { resource_spans: rs }.encode_to_vec();
    let dir = tempfile::tempdir().unwrap();
    let cfg = ParquetSinkConfig { max_clock_skew: tracepipe_config::Duration::from_secs(0), path: dir.path().to_path_buf(), roll: Roll { max_rows: 120, ..Roll::default() }, row_group_rows: 40, ..Default::default() };
    let mut w = ArchiveWriter::new(cfg);
    let now = Instant::now();
    assert!(w.write_encoded([enc(rich(50, T0)).as_slice()], 51, now).unwrap().is_empty());
    assert!(layout::closed_files(dir.path()).unwrap().is_empty(), "open files are not listed");
    assert_eq!(w.open_files(), 1);
    let mut late = rich(10, T0 + 3600 * 1_000_000_000);
    late.extend(rich(80, T0));
    let closed = w.write_encoded([enc(late).as_slice()], 92, now).unwrap();
    assert_eq!(closed.len(), 1, "the 11h file reached max_rows");
    assert_eq!(closed[0].rows, 50 + 1 + 80 + 1);
    // More for the 12h partition, encoded: pending in the encoder until the file closes.
    w.write_encoded([enc(rich(5, T0 + 3600 * 1_000_000_000 + 1)).as_slice()], 6, now).unwrap();
    assert_eq!(w.close_all().unwrap().len(), 1);
    let files = layout::closed_files(dir.path()).unwrap();
    assert_eq!(files.len(), 2);
    let mut want = rich(50, T0);
    want.extend(rich(80, T0));
    assert_eq!(read_all(&files[0]), want);
    let mut want = rich(10, T0 + 3600 * 1_000_000_000);
    want.extend(rich(5, T0 + 3600 * 1_000_000_000 + 1));
    assert_eq!(read_all(&files[1]), want);
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    let groups: Vec<i64> = SerializedFileReader::new(File::open(&files[0]).unwrap()).unwrap().metadata().row_groups().iter().map(|g| g.num_rows()).collect();
    assert_eq!(groups, [51, 81], "the encoder's row group, then the split batch's");
}

/// A partition whose file cannot be created: the batch is an error, its rows stay with the
/// encoder, and they reach the file once it can be created (nothing dropped silently).
#[test]
fn rows_whose_file_cannot_be_opened_are_kept_and_written_once_it_can() {
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive");
    std::fs::write(&root, b"a file where the archive directory should be").unwrap();
    let mut w = ArchiveWriter::new(ParquetSinkConfig { max_clock_skew: tracepipe_config::Duration::from_secs(0), path: root.clone(), ..Default::default() });
    let bytes = opentelemetry_proto::tonic::trace::v1::TracesData { resource_spans: rich(20, T0) }.encode_to_vec();
    assert!(w.write_encoded([bytes.as_slice()], 21, Instant::now()).is_err());
    assert!(w.close_all().is_err(), "still blocked at close: an error, not a silent drop");
    std::fs::remove_file(&root).unwrap();
    let closed = w.close_all().unwrap();
    assert_eq!(closed.len(), 1);
    assert_eq!(read_all(&closed[0].path), rich(20, T0));
}

#[test]
fn aged_files_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ParquetSinkConfig { max_clock_skew: tracepipe_config::Duration::from_secs(0), path: dir.path().to_path_buf(), partition: layout::Partition::None, ..Default::default() };
    let mut w = ArchiveWriter::new(cfg);
    let t = Instant::now();
    w.write(&rich(5, T0), t).unwrap();
    assert!(w.roll_aged(t + StdDuration::from_secs(59)).unwrap().is_empty());
    assert_eq!(w.roll_aged(t + StdDuration::from_secs(60)).unwrap().len(), 1);
    assert_eq!(layout::closed_files(dir.path()).unwrap().len(), 1);
}

#[test]
fn crash_leftovers_are_renamed_when_complete_and_quarantined_when_not() {
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join("date=2026-11-18/hour=11");
    std::fs::create_dir_all(&part).unwrap();
    // A complete file that was closed but not renamed (crash between the two).
    let complete = tempfile::tempdir().unwrap();
    let mut w = ArchiveWriter::new(ParquetSinkConfig { max_clock_skew: tracepipe_config::Duration::from_secs(0), path: complete.path().to_path_buf(), partition: layout::Partition::None, ..Default::default() });
    w.write(&rich(5, T0), Instant::now()).unwrap();
    let good = w.close_all().unwrap().remove(0).path;
    std::fs::copy(&good, part.join(".part-1-1-1.parquet.tmp")).unwrap();
    // A file cut mid-write (no footer).
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(part.join(".part-2-2-2.parquet.tmp"), &bytes[..bytes.len() / 2]).unwrap();
    let out = layout::recover(dir.path()).unwrap();
    assert!(matches!(&out[0], layout::Recovered::Renamed { rows: 6, .. }), "{out:?}");
    assert!(matches!(&out[1], layout::Recovered::Quarantined { .. }), "{out:?}");
    let files = layout::closed_files(dir.path()).unwrap();
    assert_eq!(files, vec![part.join("part-1-1-1.parquet")]);
    assert!(dir.path().join("_quarantine/date=2026-11-18/hour=11/.part-2-2-2.parquet.tmp").exists());
}

#[test]
fn config_errors_point_at_fields() {
    let doc = tracepipe_config::Node::parse("t.yaml", "path: ''\nroll: { max_rows: 0, max_age: 0s }\ncompression: lz9\n");
    let err = ParquetSinkConfig::from_node(&doc.unwrap(), "t.yaml").unwrap_err();
    assert!(err[0].to_string().contains("lz9"), "{err:?}");
    let doc = tracepipe_config::Node::parse("t.yaml", "path: ''\nroll: { max_rows: 0, max_age: 0s }\n").unwrap();
    let err: Vec<String> = ParquetSinkConfig::from_node(&doc, "t.yaml").unwrap_err().iter().map(|e| e.to_string()).collect();
    assert_eq!(err.len(), 3, "{err:?}");
    assert!(err.iter().any(|e| e.contains("t.yaml:2:") && e.contains("max_rows")), "{err:?}");
}

#[test]
fn unique_columns_skip_the_dictionary_and_nested_and_id_ones_the_statistics() {
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    let dir = tempfile::tempdir().unwrap();
    let mut w = ArchiveWriter::new(ParquetSinkConfig { max_clock_skew: tracepipe_config::Duration::from_secs(0), path: dir.path().to_path_buf(), ..Default::default() });
    w.write(&rich(50, T0), Instant::now()).unwrap();
    let closed = w.close_all().unwrap();
    let reader = SerializedFileReader::new(File::open(&closed[0].path).unwrap()).unwrap();
    let rg = reader.metadata().row_group(0);
    let chunk = |p: &str| rg.columns().iter().find(|c| c.column_path().string() == p).unwrap_or_else(|| panic!("no column {p}"));
    for unique in ["trace_id", "span_id", "start_time", "duration_ns"] {
        assert!(chunk(unique).dictionary_page_offset().is_none(), "{unique} has a dictionary");
    }
    assert!(chunk("name").dictionary_page_offset().is_some(), "name keeps its dictionary");
    assert!(chunk("attributes.entries.key").dictionary_page_offset().is_some(), "attribute keys keep their dictionary");
    assert!(chunk("attributes.entries.key").statistics().is_none(), "nested columns have no statistics");
    assert!(chunk("attributes_int.entries.value").statistics().is_none());
    assert!(chunk("events.list.item.attributes.entries.value").statistics().is_none());
    assert!(chunk("trace_id").statistics().is_none(), "random ids have no statistics");
    assert!(chunk("attributes_order").statistics().is_none());
    assert!(chunk("status_message").statistics().is_none(), "only columns queries prune with keep statistics");
    assert!(chunk("start_time").statistics().is_some(), "top-level columns keep statistics");
    assert!(chunk("service_name").statistics().is_some());
}

#[test]
fn rows_without_the_archive_schema_are_an_error_not_a_panic() {
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::record_batch::RecordBatch;
    let dir = tempfile::tempdir().unwrap();
    let mut w = ArchiveWriter::new(ParquetSinkConfig { max_clock_skew: tracepipe_config::Duration::from_secs(0), path: dir.path().to_path_buf(), ..Default::default() });
    let b = RecordBatch::try_from_iter([("x", std::sync::Arc::new(Int64Array::from(vec![1])) as _)]).unwrap();
    let e = w.write_rows(b, Instant::now()).unwrap_err();
    assert!(e.to_string().contains("start_time"), "{e}");
    assert!(layout::closed_files(dir.path()).unwrap().is_empty());
}

fn task_ctx(input: tracepipe_pipeline::topology::Input) -> tracepipe_pipeline::topology::ComponentContext {
    tracepipe_pipeline::topology::ComponentContext {
        name: "archive".into(),
        kind: tracepipe_config::ComponentKind::Sink,
        input: Some(input),
        output: None,
        shutdown: tokio_util::sync::CancellationToken::new(),
        health: tracepipe_pipeline::telemetry::Health::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_workers_write_every_span_once_and_close_their_files_at_the_end() {
    use prost::Message;
    use tracepipe_pipeline::Batch;
    let dir = tempfile::tempdir().unwrap();
    let cfg = ParquetSinkConfig { max_clock_skew: tracepipe_config::Duration::from_secs(0), path: dir.path().to_path_buf(), partition: layout::Partition::None, workers: 3, ..Default::default() };
    let (tx, input) = tracepipe_pipeline::topology::Input::channel(64);
    // Batch k: spans whose span ids start at k * 1000; encoded (the usual case) and decoded.
    let mut want = Vec::new();
    for k in 0..40u64 {
        let mut rs = rich(25, T0 + k * 1_000_000);
        for s in &mut rs[0].scope_spans[0].spans {
            s.span_id = (u64::from_be_bytes(s.span_id.clone().try_into().unwrap()) + k * 1000).to_be_bytes().to_vec();
        }
        rs.truncate(1);
        want.extend(rs[0].scope_spans[0].spans.iter().map(|s| s.span_id.clone()));
        let b = if k % 2 == 0 {
            Batch::from_encoded(opentelemetry_proto::tonic::trace::v1::TracesData { resource_spans: rs }.encode_to_vec().into(), 25)
        } else {
            Batch::from_resource_spans(rs)
        };
        tx.send(b).await.unwrap();
    }
    drop(tx);
    let task = super::build(cfg, task_ctx(input)).await.unwrap();
    tokio::time::timeout(StdDuration::from_secs(30), task).await.expect("the sink ends when its input does").unwrap();
    let files = layout::closed_files(dir.path()).unwrap();
    assert!(!files.is_empty() && files.len() <= 3, "one file per worker that got a batch: {files:?}");
    let mut got: Vec<Vec<u8>> = files.iter().flat_map(|f| read_all(f)).flat_map(|r| r.scope_spans.into_iter().flat_map(|s| s.spans.into_iter().map(|s| s.span_id))).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "every span exactly once");
    // Nothing left half-written.
    let tmp: Vec<_> = walk_all(dir.path()).into_iter().filter(|p| p.to_string_lossy().ends_with(".tmp")).collect();
    assert!(tmp.is_empty(), "{tmp:?}");
}

fn walk_all(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk_all(&p)) } else { out.push(p) }
    }
    out
}

#[test]
fn workers_are_bounded() {
    for (yaml, ok) in [("workers: 0\n", false), ("workers: 65\n", false), ("workers: 4\n", true)] {
        let doc = tracepipe_config::Node::parse("t.yaml", yaml).unwrap();
        match ParquetSinkConfig::from_node(&doc, "t.yaml") {
            Ok(c) => assert!(ok && c.workers == 4, "{yaml}"),
            Err(e) => assert!(!ok && e[0].to_string().contains("t.yaml:1:") && e[0].to_string().contains("workers must be between 1 and 64"), "{yaml}: {e:?}"),
        }
    }
}

mod acks {
    use super::*;
    use std::sync::mpsc;
    use tracepipe_pipeline::{Batch, BatchStatus, Finalizer};

    fn ack() -> (Batch, mpsc::Receiver<BatchStatus>) {
        let (tx, rx) = mpsc::channel();
        (Batch::empty().with_finalizer(Finalizer::new(move |s| {
            let _ = tx.send(s);
        })), rx)
    }

    fn enc(rs: Vec<ResourceSpans>) -> Vec<u8> {
        use prost::Message;
        opentelemetry_proto::tonic::trace::v1::TracesData { resource_spans: rs }.encode_to_vec()
    }

    /// A batch counts as delivered only once its rows are in a closed file: not when they are
    /// buffered in the encoder or an open file.
    #[test]
    fn a_batch_is_acknowledged_when_its_file_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ArchiveWriter::new(ParquetSinkConfig { max_clock_skew: tracepipe_config::Duration::from_secs(0), path: dir.path().to_path_buf(), row_group_rows: 10, ..Default::default() });
        let (a1, s1) = ack();
        w.set_ack(a1);
        assert!(w.write_encoded([enc(rich(20, T0)).as_slice()], 21, Instant::now()).unwrap().is_empty());
        let (a2, s2) = ack();
        w.set_ack(a2);
        assert!(w.write(&rich(5, T0), Instant::now()).unwrap().is_empty());
        assert_eq!(w.pending_rows(), 21 + 6);
        assert!(s1.try_recv().is_err() && s2.try_recv().is_err(), "acknowledged while only in an open file");
        let closed = w.close_all().unwrap();
        assert_eq!((closed.len(), closed[0].rows), (1, 27));
        assert!(s1.try_recv().is_err(), "the Closed still holds the acknowledgement until the sink has counted it");
        drop(closed);
        assert_eq!(s1.try_recv().unwrap(), BatchStatus::Delivered);
        assert_eq!(s2.try_recv().unwrap(), BatchStatus::Delivered);
        assert!(w.take_lost().is_empty());
    }

    /// While the directory cannot be written, the encoder keeps at most one row group: beyond it
    /// the rows are dropped, counted lost and their batches told so; memory stays bounded.
    #[test]
    fn an_unwritable_directory_keeps_memory_bounded_and_counts_what_it_drops() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("archive");
        std::fs::write(&root, b"a file where the archive directory should be").unwrap();
        let mut w = ArchiveWriter::new(ParquetSinkConfig { max_clock_skew: tracepipe_config::Duration::from_secs(0), path: root.clone(), row_group_rows: 50, ..Default::default() });
        let mut statuses = Vec::new();
        let mut lost = 0;
        for _ in 0..20 {
            let (a, s) = ack();
            statuses.push(s);
            w.set_ack(a);
            assert!(w.write_encoded([enc(rich(20, T0)).as_slice()], 21, Instant::now()).is_err());
            assert!(w.pending_rows() < 50 + 21, "{} rows held", w.pending_rows());
            for l in w.take_lost() {
                lost += l.rows;
                l.acks.iter().for_each(|a| a.set_status(BatchStatus::Errored));
            }
        }
        let held = w.pending_rows();
        assert_eq!(lost + held, 20 * 21, "every row is held or counted lost");
        assert!(lost >= 20 * 21 - 70);
        // The batches whose rows were dropped are reported errored; the held ones not yet.
        let errored = statuses.iter().filter(|s| s.try_recv() == Ok(BatchStatus::Errored)).count() as u64;
        assert_eq!(errored * 21, lost);
        // The directory comes back: what is held reaches a file.
        std::fs::remove_file(&root).unwrap();
        let closed = w.close_all().unwrap();
        assert_eq!(closed.iter().map(|c| c.rows).sum::<u64>(), held);
    }
}

/// A sender's clock far off (or a zero start time) does not make a partition per span: spans
/// beyond `max_clock_skew` go to the partition of the write time, counted, keeping their own
/// start time in the row; both the page path and the Arrow path.
#[test]
fn absurd_start_times_go_to_the_write_time_partition() {
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let mut w = ArchiveWriter::new(ParquetSinkConfig { path: dir.path().to_path_buf(), ..Default::default() });
    let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    // Encoded: 20 spans two weeks ago (beyond the default 24h) -> today's partition.
    let old = opentelemetry_proto::tonic::trace::v1::TracesData { resource_spans: rich(20, T0) }.encode_to_vec();
    w.write_encoded([old.as_slice()], 21, Instant::now()).unwrap();
    assert_eq!(w.take_skewed(), 21);
    // Decoded, mixed: one at 0, one in the far future, one now: all in today's partition.
    let mut mixed = rich(1, 0);
    mixed.extend(rich(1, u64::MAX / 2));
    mixed.extend(rich(1, now_ns));
    w.write(&mixed, Instant::now()).unwrap();
    assert_eq!(w.take_skewed(), 4);
    let closed = w.close_all().unwrap();
    assert_eq!(closed.len(), 1, "one partition, not one per absurd hour");
    let today = layout::partition_dir(layout::Partition::Hour, now_ns);
    assert!(closed[0].path.starts_with(dir.path().join(&today)), "{:?} not under {today:?}", closed[0].path);
    let rows = read_all(&closed[0].path);
    assert!(rows.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans).any(|s| s.start_time_unix_nano == T0), "rows keep their own start time");
}

/// One huge resource over very many tiny spans (K attributes × N rows) does not turn a few MiB
/// into gigabytes of rows: the context a batch replays is bounded (archive::budget), the cut is
/// counted and recorded in `resource_dropped_attributes_count`, `service.name` kept. Both the
/// page path (encoded) and the Arrow path (decoded).
#[test]
fn a_huge_resource_over_many_tiny_spans_is_cut_not_replayed_k_times_n() {
    use prost::Message;
    let mut attrs: Vec<KeyValue> = (0..1000).map(|i| KeyValue { key: format!("k{i}"), value: Some(AnyValue { value: Some(Value::StringValue("v".repeat(1000))) }), key_strindex: 0 }).collect();
    attrs.push(KeyValue { key: "service.name".into(), value: Some(AnyValue { value: Some(Value::StringValue("big".into())) }), key_strindex: 0 });
    let spans: Vec<Span> = (0..20_000u32)
        .map(|i| Span { trace_id: vec![1; 16], span_id: (i + 1).to_be_bytes().repeat(2), start_time_unix_nano: T0, end_time_unix_nano: T0 + 1, ..Default::default() })
        .collect();
    let rs = vec![ResourceSpans { resource: Some(Resource { attributes: attrs, ..Default::default() }), scope_spans: vec![ScopeSpans { spans, ..Default::default() }], ..Default::default() }];
    let bytes = opentelemetry_proto::tonic::trace::v1::TracesData { resource_spans: rs.clone() }.encode_to_vec();
    // ~1 MB of resource, 20,000 spans: 20 GB of attribute values if every row repeated it.
    assert!(bytes.len() < 2 << 20);
    for encoded in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ArchiveWriter::new(ParquetSinkConfig { max_clock_skew: tracepipe_config::Duration::from_secs(0), path: dir.path().to_path_buf(), ..Default::default() });
        if encoded {
            w.write_encoded([bytes.as_slice()], 20_000, Instant::now()).unwrap();
        } else {
            w.write(&rs, Instant::now()).unwrap();
        }
        let truncated = w.take_truncated();
        assert!(truncated > 900, "{truncated} attributes cut (encoded: {encoded})");
        let closed = w.close_all().unwrap();
        assert_eq!(closed[0].rows, 20_000);
        let size = std::fs::metadata(&closed[0].path).unwrap().len();
        let back = read_all(&closed[0].path);
        let res = back[0].resource.as_ref().unwrap();
        assert!(res.attributes.iter().any(|kv| kv.key == "service.name"), "service.name kept");
        assert_eq!(res.attributes.len() as u64 + res.dropped_attributes_count as u64, 1001, "the cut is recorded in the row");
        let written: usize = back.iter().flat_map(|r| r.resource.iter()).map(|r| r.attributes.iter().map(|kv| kv.encoded_len()).sum::<usize>()).sum();
        assert!(written as u64 <= 32 * bytes.len() as u64 + (4 << 20), "replayed {written} bytes of context for a {}-byte batch (encoded: {encoded})", bytes.len());
        eprintln!("encoded={encoded}: {truncated} attributes cut, file {size} bytes");
    }
}
