//! The archive's page encoder alone: OTLP protobuf batches (the benchmarks' mesh load) through
//! [`RowGroupEncoder`] into zstd column chunks, no file, one thread. Prints CPU per span and,
//! for the first run, the raw and compressed bytes per span of the biggest leaf columns.
//!
//! `cargo run --profile profiling -p tracepipe-pipeline --example pages_bench -- [SPANS] [RUNS]`
//! (defaults 1,000,000 and 3). It links only the pipeline crate, so a change to the encoder
//! rebuilds in under a minute, where `archive_bench` (the whole binary) takes several; the first
//! build with `-p tracepipe-pipeline` compiles DataFusion once more (other features unify).
//! `archive_bench` stays the figure of record: it adds the file writing and the Arrow A/B run.

#[path = "../../tests/bench/mesh_load.rs"]
mod mesh_load;

use datafusion::parquet::basic::{Compression, ZstdLevel};
use mesh_load::{Rng, batch, cpu_seconds};
use opentelemetry_proto::tonic::trace::v1::TracesData;
use prost::Message;
use tracepipe_pipeline::archive::pages::{RowGroupEncoder, parquet_schema};
use tracepipe_pipeline::archive::schema;

/// The sink's row group size (`row_group_rows` default).
const ROW_GROUP: u64 = 128 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let total: usize = args.get(1).and_then(|x| x.parse().ok()).unwrap_or(1_000_000);
    let runs: usize = args.get(2).and_then(|x| x.parse().ok()).unwrap_or(3);
    let per_batch = 8190;
    let mut rng = Rng(0x2545f4914f6cdd1d);
    let t0 = 1_795_000_000u64 * 1_000_000_000;
    let bufs: Vec<Vec<u8>> = (0..total.div_ceil(per_batch))
        .map(|b| TracesData { resource_spans: batch(&mut rng, per_batch, t0 + b as u64 * 1_000_000_000, 10) }.encode_to_vec())
        .collect();
    // Per leaf column: its path, raw and compressed bytes (first run).
    let mut leaves: Vec<(String, i64, i64)> = Vec::new();
    for run in 0..runs {
        let zstd = Compression::ZSTD(ZstdLevel::try_new(1).expect("zstd level 1"));
        let mut enc = RowGroupEncoder::new(&parquet_schema(), zstd, None, schema::dictionary, schema::statistics).expect("the archive schema");
        let (c0, mut rows, mut bytes) = (cpu_seconds(), 0u64, 0usize);
        let mut close = |enc: &mut RowGroupEncoder, rows: &mut u64, bytes: &mut usize| {
            *rows += enc.rows();
            let chunks = enc.finish().expect("finish");
            *bytes += chunks.iter().map(|c| c.0.len()).sum::<usize>();
            if run == 0 {
                if leaves.is_empty() {
                    leaves = chunks.iter().map(|c| (c.1.metadata.column_path().string(), 0, 0)).collect();
                }
                for (l, c) in leaves.iter_mut().zip(&chunks) {
                    (l.1, l.2) = (l.1 + c.1.metadata.uncompressed_size(), l.2 + c.1.metadata.compressed_size());
                }
            }
        };
        for b in &bufs {
            enc.push_encoded(&[b.as_slice()]).expect("push");
            if enc.rows() >= ROW_GROUP {
                close(&mut enc, &mut rows, &mut bytes);
            }
        }
        close(&mut enc, &mut rows, &mut bytes);
        let cpu = cpu_seconds() - c0;
        if run == 0 {
            leaves.sort_by_key(|l| -l.1);
            println!("biggest leaf columns (bytes per span: raw pages, zstd):");
            for l in leaves.iter().take(8) {
                println!("  {:40} {:6.1} {:6.1}", l.0, l.1 as f64 / rows as f64, l.2 as f64 / rows as f64);
            }
        }
        println!("{rows} spans: {:.2} CPU-µs/span ({:.0} spans/s), {:.1} bytes/span", cpu * 1e6 / rows as f64, rows as f64 / cpu, bytes as f64 / rows as f64);
    }
}
