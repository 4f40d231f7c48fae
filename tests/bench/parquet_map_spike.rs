//! Experiment (not used by tracepipe): can a hand-written Parquet encoder for the attribute maps
//! beat arrow-rs's `ArrowWriter`? It writes the span attributes' string map (`attributes`,
//! map<utf8, utf8>) both ways from the same Arrow rows: `ArrowWriter` (zstd, no statistics), and
//! pages built here — repetition/definition levels bit-packed, keys dictionary-encoded from a
//! per-position cache (a span's keys usually come in the same order) with a per-row-group table,
//! values PLAIN, zstd — spliced into the row group with `SerializedRowGroupWriter::append_column`.
//! The file is read back with the arrow reader and compared with the input column.
//!
//!   cargo run --profile profiling --example parquet_map_spike -- [SPANS]
//!
//! The standard 10-attribute load, as archive_bench generates it. See README "Trace archives" for
//! what it measured and what it means for the write goal.

use std::time::Instant;

use opentelemetry_proto::tonic::trace::v1::TracesData;
use prost::Message;
use tracepipe_pipeline::archive::encoded::encoded_to_record_batch;

// The binary's allocator, so the figures are the sink's as it runs in `tracepipe`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "mesh_load.rs"]
mod mesh_load;
use mesh_load::{Rng, batch};

use datafusion::arrow::array::{Array, AsArray, MapArray, RecordBatch as RB};
use datafusion::parquet::arrow::{ArrowSchemaConverter, ArrowWriter};
use datafusion::parquet::basic::{Compression, Encoding, ZstdLevel};
use datafusion::parquet::column::page::{CompressedPage, Page, PageWriter};
use datafusion::parquet::column::writer::ColumnCloseResult;
use datafusion::parquet::file::metadata::ColumnChunkMetaData;
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::file::writer::{SerializedFileWriter, SerializedPageWriter, TrackedWrite};
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::bytes::Bytes;

fn bitpack(out: &mut Vec<u8>, vals: &[u32], width: u8) {
    // one bit-packed run covering all values (padded to a multiple of 8)
    let groups = vals.len().div_ceil(8);
    let mut h = ((groups as u64) << 1) | 1;
    loop {
        let b = (h & 0x7f) as u8;
        h >>= 7;
        if h == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    let mut acc: u64 = 0;
    let mut bits = 0u32;
    for g in 0..groups * 8 {
        let v = *vals.get(g).unwrap_or(&0) as u64;
        acc |= v << bits;
        bits += width as u32;
        while bits >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            bits -= 8;
        }
    }
    if bits > 0 {
        out.push(acc as u8);
    }
}

fn levels(out: &mut Vec<u8>, vals: &[u32]) {
    let mut tmp = Vec::new();
    bitpack(&mut tmp, vals, 1);
    out.extend_from_slice(&(tmp.len() as u32).to_le_bytes());
    out.extend_from_slice(&tmp);
}

fn zstd(b: &[u8], c: &mut zstd::bulk::Compressor) -> Vec<u8> {
    c.compress(b).unwrap()
}

fn main() {
    let total: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(400_000);
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let t0 = 1_795_000_000u64 * 1_000_000_000;
    let mut rows = Vec::new();
    let mut spans = 0;
    for b in 0..total.div_ceil(8190) {
        let rs = batch(&mut rng, 8190, t0 + b as u64 * 1_000_000_000, 10);
        let n: usize = rs.iter().map(|r| r.scope_spans[0].spans.len()).sum();
        spans += n;
        let rb = encoded_to_record_batch([TracesData { resource_spans: rs }.encode_to_vec().as_slice()], n).unwrap();
        let idx = rb.schema().index_of("attributes").unwrap();
        rows.push(rb.project(&[idx]).unwrap());
    }
    let sch = rows[0].schema();
    // ArrowWriter
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_statistics_enabled(EnabledStatistics::None)
        .set_max_row_group_row_count(Some(131072))
        .build();
    for _ in 0..2 {
        let t = Instant::now();
        let mut w = ArrowWriter::try_new(std::fs::File::create("/tmp/spike_a.parquet").unwrap(), sch.clone(), Some(props.clone())).unwrap();
        for r in &rows {
            w.write(r).unwrap();
        }
        w.close().unwrap();
        println!(
            "ArrowWriter: {:.3} us/span, {} bytes",
            t.elapsed().as_secs_f64() * 1e6 / spans as f64,
            std::fs::metadata("/tmp/spike_a.parquet").unwrap().len()
        );
    }
    // custom
    let pq = ArrowSchemaConverter::new().convert(&sch).unwrap();
    let descr_key = pq.column(0);
    let descr_val = pq.column(1);
    for _ in 0..2 {
        let t = Instant::now();
        let props2 = Arc::new(WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::default())).build());
        let mut fw = SerializedFileWriter::new(std::fs::File::create("/tmp/spike_b.parquet").unwrap(), pq.root_schema_ptr(), props2).unwrap();
        let mut comp = zstd::bulk::Compressor::new(1).unwrap();
        for group in rows.chunks(16) {
            let mut rg = fw.next_row_group().unwrap();
            let mut dict: Vec<String> = Vec::new();
            let mut lookup: HashMap<String, u32> = HashMap::new();
            let mut cache: Vec<u32> = Vec::new();
            let mut key_pages: Vec<(Vec<u8>, u32)> = Vec::new();
            let mut val_pages: Vec<(Vec<u8>, u32)> = Vec::new();
            let mut nrows = 0u64;
            for r in group {
                let m: &MapArray = r.column(0).as_map();
                let keys = m.keys().as_string::<i32>();
                let vals = m.values().as_string::<i32>();
                let offs = m.value_offsets();
                let mut rep = Vec::with_capacity(keys.len() + m.len());
                let mut def = Vec::with_capacity(rep.capacity());
                let mut idx = Vec::with_capacity(keys.len());
                let mut plain = Vec::with_capacity(vals.value_data().len() + 4 * vals.len());
                for row in 0..m.len() {
                    let (a, b) = (offs[row] as usize, offs[row + 1] as usize);
                    if a == b {
                        rep.push(0);
                        def.push(0);
                        continue;
                    }
                    for (p, e) in (a..b).enumerate() {
                        rep.push(if p == 0 { 0 } else { 1 });
                        def.push(1);
                        let k = keys.value(e);
                        let i = match cache.get(p) {
                            Some(&c) if dict[c as usize] == k => c,
                            _ => {
                                let c = *lookup.entry(k.to_owned()).or_insert_with(|| {
                                    dict.push(k.to_owned());
                                    (dict.len() - 1) as u32
                                });
                                if cache.len() <= p {
                                    cache.resize(p + 1, 0)
                                }
                                cache[p] = c;
                                c
                            }
                        };
                        idx.push(i);
                        let v = vals.value(e).as_bytes();
                        plain.extend_from_slice(&(v.len() as u32).to_le_bytes());
                        plain.extend_from_slice(v);
                    }
                }
                nrows += m.len() as u64;
                let mut lv = Vec::new();
                levels(&mut lv, &rep);
                levels(&mut lv, &def);
                let mut kp = lv.clone();
                kp.push(8);
                bitpack(&mut kp, &idx, 8);
                let n = rep.len() as u32;
                key_pages.push((kp, n));
                let mut vp = lv;
                vp.extend_from_slice(&plain);
                val_pages.push((vp, n));
            }
            for (descr, pages, is_key) in [(descr_key.clone(), key_pages, true), (descr_val.clone(), val_pages, false)] {
                let mut tw = TrackedWrite::new(Vec::new());
                let (mut dict_off, mut data_off, mut unc, mut cmp, mut nv) = (None, 0i64, 0i64, 0i64, 0i64);
                {
                    let mut pw = SerializedPageWriter::new(&mut tw);
                    if is_key {
                        let mut d = Vec::new();
                        for s in &dict {
                            d.extend_from_slice(&(s.len() as u32).to_le_bytes());
                            d.extend_from_slice(s.as_bytes());
                        }
                        let c = zstd(&d, &mut comp);
                        let spec = pw
                            .write_page(CompressedPage::new(
                                Page::DictionaryPage { buf: Bytes::from(c), num_values: dict.len() as u32, encoding: Encoding::PLAIN, is_sorted: false },
                                d.len(),
                            ))
                            .unwrap();
                        dict_off = Some(spec.offset as i64);
                        unc += spec.uncompressed_size as i64;
                        cmp += spec.compressed_size as i64;
                    }
                    let mut first = true;
                    for (buf, n) in pages {
                        let c = zstd(&buf, &mut comp);
                        let spec = pw
                            .write_page(CompressedPage::new(
                                Page::DataPage {
                                    buf: Bytes::from(c),
                                    num_values: n,
                                    encoding: if is_key { Encoding::RLE_DICTIONARY } else { Encoding::PLAIN },
                                    def_level_encoding: Encoding::RLE,
                                    rep_level_encoding: Encoding::RLE,
                                    statistics: None,
                                },
                                buf.len(),
                            ))
                            .unwrap();
                        if first {
                            data_off = spec.offset as i64;
                            first = false;
                        }
                        unc += spec.uncompressed_size as i64;
                        cmp += spec.compressed_size as i64;
                        nv += n as i64;
                    }
                }
                let bytes = Bytes::from(tw.into_inner().unwrap());
                let encs = if is_key { vec![Encoding::PLAIN, Encoding::RLE, Encoding::RLE_DICTIONARY] } else { vec![Encoding::PLAIN, Encoding::RLE] };
                let md = ColumnChunkMetaData::builder(descr)
                    .set_encodings(encs)
                    .set_num_values(nv)
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .set_total_compressed_size(cmp)
                    .set_total_uncompressed_size(unc)
                    .set_data_page_offset(data_off)
                    .set_dictionary_page_offset(dict_off)
                    .build()
                    .unwrap();
                rg.append_column(
                    &bytes,
                    ColumnCloseResult {
                        bytes_written: cmp as u64,
                        rows_written: nrows,
                        metadata: md,
                        bloom_filter: None,
                        column_index: None,
                        offset_index: None,
                    },
                )
                .unwrap();
            }
            rg.close().unwrap();
        }
        fw.close().unwrap();
        println!("custom: {:.3} us/span, {} bytes", t.elapsed().as_secs_f64() * 1e6 / spans as f64, std::fs::metadata("/tmp/spike_b.parquet").unwrap().len());
    }
    // verify
    let rd = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open("/tmp/spike_b.parquet").unwrap())
        .unwrap()
        .with_batch_size(8190)
        .build()
        .unwrap();
    let got: Vec<RB> = rd.map(|b| b.unwrap()).collect();
    let a = datafusion::arrow::compute::concat_batches(&sch, &rows).unwrap();
    let b = datafusion::arrow::compute::concat_batches(&got[0].schema(), &got).unwrap();
    assert_eq!(a.num_rows(), b.num_rows());
    assert_eq!(a.column(0).to_data(), b.column(0).to_data(), "same map column");
    println!("read back equal: {} rows", b.num_rows());
}
