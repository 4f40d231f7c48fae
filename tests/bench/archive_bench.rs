//! The trace-archive benchmark (issue "Trace archives"): Parquet write throughput per core,
//! bytes per span on disk against OTLP protobuf bytes, replay (read + decode) throughput, and a
//! GROUP BY over the archive.
//!
//!   cargo run --profile profiling --example archive_bench -- [SPANS] [DIR] [ATTRS] [WORKERS]
//!
//! `ARCHIVE_BENCH=parallel` runs only the pre-generated write section (1 worker, then WORKERS),
//! which is what to run under `perf` to see the writer alone.
//!
//! ATTRS (default 10, the standard load) keeps the first N span attributes, to see how the write
//! cost scales with span size. WORKERS (default 2) is the parallel-writers run: the sink's
//! `workers` setting, N writers on N threads sharing the batches, each with its own files.
//!
//! Spans look like mesh proxy spans (5 per trace, 10 attributes: method, URL, status, user agent,
//! peer IP, component, node id, request guid, response size, cached; 6 services), generated with
//! unique ids and varied values so compression is not flattered. Writing is single-threaded (one
//! core, as the sink does it; only the writer's calls are timed); the query uses every core, as
//! `tracepipe query` does.

use std::time::Instant;

use futures::StreamExt;
use opentelemetry_proto::tonic::trace::v1::TracesData;
use prost::Message;
use tracepipe_pipeline::archive::encoded::encoded_to_record_batch;
use tracepipe_pipeline::archive::{layout, schema};
use tracepipe_receivers::archive::{query_sql, session, ArchiveConfig};
use tracepipe_sinks::parquet::{ArchiveWriter, ParquetSinkConfig};

// The binary's allocator, so the figures are the sink's as it runs in `tracepipe`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "mesh_load.rs"]
mod mesh_load;
use mesh_load::{batch, cpu_seconds, Rng};

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let total: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000_000);
    let dir = std::path::PathBuf::from(args.get(2).cloned().unwrap_or_else(|| std::env::temp_dir().join("tracepipe-archive-bench").display().to_string()));
    // Span attributes per span (the first N of the 10); 10 is the standard load.
    let attrs: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10).min(10);
    let workers: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(2).max(1);
    let _ = std::fs::remove_dir_all(&dir);
    // `ARCHIVE_BENCH=parallel`: only the pre-generated write runs (to profile the writer alone);
    // `ARCHIVE_BENCH=pages`: only the page encoder's runs (no Arrow path run), for perf.
    let mode = std::env::var("ARCHIVE_BENCH").unwrap_or_default();
    if mode == "parallel" || mode == "pages" {
        parallel(&dir, total, attrs, workers, mode == "parallel");
        return;
    }
    let per_batch = 8190; // a multiple of 5 close to the batch processor's 8192
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let t0 = 1_795_000_000u64 * 1_000_000_000;

    // Generated batch by batch (10M spans would not fit in memory at once); only the writer's
    // calls are timed, so the figure is conversion + Parquet encoding + file writes on one core.
    let mut w = ArchiveWriter::new(ParquetSinkConfig { max_clock_skew: tracepipe_config::Duration::from_secs(0), path: dir.clone(), ..Default::default() });
    let (mut spans, mut otlp_bytes, mut write_s, mut convert_s) = (0usize, 0usize, 0.0f64, 0.0f64);
    for b in 0..total.div_ceil(per_batch) {
        let rs = batch(&mut rng, per_batch, t0 + b as u64 * 1_000_000_000, attrs);
        let spans_before = spans;
        spans += rs.iter().map(|r| r.scope_spans[0].spans.len()).sum::<usize>();
        // As the sink gets it from an OTLP receiver: the received protobuf, still encoded.
        let bytes = TracesData { resource_spans: rs }.encode_to_vec();
        otlp_bytes += bytes.len();
        let n = spans - spans_before;
        // For comparison: the protobuf -> Arrow step alone, which the Arrow path (decoded spans,
        // batches across partitions) starts with; encoded batches skip it (straight to pages).
        let t = Instant::now();
        std::hint::black_box(encoded_to_record_batch([bytes.as_slice()], n).expect("convert"));
        convert_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        w.write_encoded([bytes.as_slice()], n, std::time::Instant::now()).expect("write");
        write_s += t.elapsed().as_secs_f64();
    }
    let t = Instant::now();
    w.close_all().expect("close");
    write_s += t.elapsed().as_secs_f64();
    let disk: u64 = layout::closed_files(&dir).unwrap().iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
    println!("spans: {spans} ({attrs} span attributes each)");
    println!("write (one thread): {:.2} s -> {:.0} spans/s per core ({:.2} µs/span)", write_s, spans as f64 / write_s, write_s * 1e6 / spans as f64);
    println!("  (protobuf -> Parquet pages, the sink's path; the Arrow path's protobuf -> Arrow step alone takes {:.2} µs/span)", convert_s * 1e6 / spans as f64);
    println!("size: {:.1} bytes/span on disk (zstd) vs {:.1} bytes/span OTLP protobuf -> {:.2}x", disk as f64 / spans as f64, otlp_bytes as f64 / spans as f64, disk as f64 / otlp_bytes as f64);

    // Replay at max: the archive receiver's query + conversion back to OTLP, without a sink.
    let ctx = session(&dir, 8192).await.unwrap();
    let (c0, t) = (cpu_seconds(), Instant::now());
    let df = ctx.sql(&query_sql(&ArchiveConfig { path: dir.clone(), ..Default::default() })).await.unwrap();
    let mut stream = df.execute_stream().await.unwrap();
    let mut n = 0usize;
    while let Some(b) = stream.next().await {
        let rs = schema::from_record_batch(&b.unwrap()).unwrap();
        n += rs.iter().map(|r| r.scope_spans.iter().map(|s| s.spans.len()).sum::<usize>()).sum::<usize>();
    }
    let (rs_s, rs_cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - c0);
    assert_eq!(n, spans);
    println!("replay (read + decode to OTLP): {:.2} s wall, {:.2} s CPU -> {:.0} spans/s", rs_s, rs_cpu, n as f64 / rs_s);

    parallel(&dir, total.min(2_000_000), attrs, workers, true);
    breakdown(total.min(500_000), attrs);

    for sql in [
        "SELECT service_name, count(*) AS spans, avg(duration_ns) AS avg_ns FROM spans GROUP BY service_name",
        "SELECT attributes_int['http.status_code'] AS status, count(*) FROM spans GROUP BY 1",
    ] {
        let t = Instant::now();
        let rows = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        println!("query {:.3} s ({} result rows): {sql}", t.elapsed().as_secs_f64(), rows.iter().map(|b| b.num_rows()).sum::<usize>());
    }
}

/// The sink's `workers`: `workers` writers on as many threads take the next batch from a shared
/// queue, each writing its own files (as `sinks/parquet/sink.rs` runs them). Batches are generated
/// and encoded first, so the wall time and the process CPU time are the writers' alone.
fn parallel(dir: &std::path::Path, total: usize, attrs: usize, workers: usize, arrow_run: bool) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let per_batch = 8190;
    let mut rng = Rng(0x2545f4914f6cdd1d);
    let t0 = 1_795_000_000u64 * 1_000_000_000;
    let bufs: Vec<(Vec<u8>, usize)> = (0..total.div_ceil(per_batch))
        .map(|b| {
            let rs = batch(&mut rng, per_batch, t0 + b as u64 * 1_000_000_000, attrs);
            let n = rs.iter().map(|r| r.scope_spans[0].spans.len()).sum();
            (TracesData { resource_spans: rs }.encode_to_vec(), n)
        })
        .collect();
    let spans: usize = bufs.iter().map(|b| b.1).sum();
    let mut runs = vec![(1, false), (workers, false)];
    runs.dedup();
    // The Arrow path (protobuf -> Arrow rows -> ArrowColumnWriters) on the same batches, one
    // worker: what the page encoder replaced.
    if arrow_run {
        runs.push((1, true));
    }
    for (n, arrow) in runs {
        let out = dir.join(format!("parallel-{n}{}", if arrow { "-arrow" } else { "" }));
        let next = AtomicUsize::new(0);
        let (c0, t) = (cpu_seconds(), Instant::now());
        std::thread::scope(|s| {
            for _ in 0..n {
                s.spawn(|| {
                    let mut w = ArchiveWriter::new(ParquetSinkConfig { max_clock_skew: tracepipe_config::Duration::from_secs(0), path: out.clone(), ..Default::default() });
                    while let Some((b, k)) = bufs.get(next.fetch_add(1, Ordering::Relaxed)) {
                        if arrow {
                            w.write_rows(encoded_to_record_batch([b.as_slice()], *k).expect("convert"), Instant::now()).expect("write");
                        } else {
                            w.write_encoded([b.as_slice()], *k, Instant::now()).expect("write");
                        }
                    }
                    w.close_all().expect("close");
                });
            }
        });
        let (wall, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - c0);
        let files = layout::closed_files(&out).unwrap();
        let rows: i64 = files
            .iter()
            .map(|f| {
                use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
                SerializedFileReader::new(std::fs::File::open(f).unwrap()).unwrap().metadata().file_metadata().num_rows()
            })
            .sum();
        assert_eq!(rows as usize, spans, "every span written once");
        println!(
            "write, {n} worker(s){}: {spans} spans in {:.2} s wall, {:.2} s CPU -> {:.0} spans/s ({:.2} CPU-µs/span, {} files, {:.1} bytes/span)",
            if arrow { ", Arrow path" } else { "" },
            wall,
            cpu,
            spans as f64 / wall,
            cpu * 1e6 / spans as f64,
            files.len(),
            files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum::<u64>() as f64 / spans as f64
        );
    }
}

/// Where the Parquet time went on the Arrow path: the same Arrow rows written by arrow-rs's
/// `ArrowWriter` (zstd, as the sink) with only some columns kept. Each figure is that column group's encoding cost alone,
/// so the list shows which columns a faster encoder would have to take over.
fn breakdown(total: usize, attrs: usize) {
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::basic::{Compression, ZstdLevel};
    use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
    let per_batch = 8190;
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let t0 = 1_795_000_000u64 * 1_000_000_000;
    let mut rows = Vec::new();
    let mut spans = 0;
    for b in 0..total.div_ceil(per_batch) {
        let rs = batch(&mut rng, per_batch, t0 + b as u64 * 1_000_000_000, attrs);
        let n: usize = rs.iter().map(|r| r.scope_spans[0].spans.len()).sum();
        spans += n;
        rows.push(encoded_to_record_batch([TracesData { resource_spans: rs }.encode_to_vec().as_slice()], n).expect("convert"));
    }
    let ids = ["trace_id", "span_id", "parent_span_id", "start_time", "end_time", "duration_ns"];
    let groups: [(&str, &dyn Fn(&str) -> bool); 6] = [
        ("every column", &|_| true),
        ("span attributes (7 columns)", &|c| c.starts_with("attributes")),
        ("resource attributes (7 columns)", &|c| c.starts_with("resource_attributes")),
        ("ids and times (6 columns)", &|c| ids.contains(&c)),
        ("name, kind, status, service_name", &|c| ["name", "kind", "status_code", "status_message", "trace_state", "service_name"].contains(&c)),
        ("events, links (empty here)", &|c| c == "events" || c == "links"),
    ];
    let full = schema::schema();
    println!("Parquet encoding by column group ({spans} spans, ArrowWriter, zstd, no statistics):");
    for (label, keep) in groups {
        let idx: Vec<usize> = full.fields().iter().enumerate().filter(|(_, f)| keep(f.name())).map(|(i, _)| i).collect();
        let projected = std::sync::Arc::new(full.project(&idx).expect("project"));
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some(128 * 1024))
            .set_statistics_enabled(EnabledStatistics::None);
        for c in ids {
            props = props.set_column_dictionary_enabled(c.into(), false);
        }
        let mut w = ArrowWriter::try_new(std::io::sink(), projected, Some(props.build())).expect("writer");
        let t = Instant::now();
        for b in &rows {
            w.write(&b.project(&idx).expect("project")).expect("write");
        }
        w.close().expect("close");
        println!("  {label:36} {:.2} µs/span", t.elapsed().as_secs_f64() * 1e6 / spans as f64);
    }
}
