//! The page encoder's files read back (with arrow-rs's Parquet reader, an independent decoder)
//! as exactly the rows the Arrow path builds from the same protobuf, on every OTLP field.

use bytes::Bytes;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::basic::{Compression, Encoding, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, TracesData};
use prost::Message;

use super::delta::delta_binary_packed;
use super::levels::{Hybrid, Levels};
use super::{Pushed, RowGroupEncoder, parquet_schema};
use crate::archive::encoded::encoded_to_record_batch;
use crate::archive::encoded::tests::{every_field, kv, odd_encodings};
use crate::archive::schema::schema;

const HOUR: i64 = 3_600_000_000_000;

fn encoder(c: Compression, bucket: Option<i64>) -> RowGroupEncoder {
    RowGroupEncoder::new(
        &parquet_schema(),
        c,
        bucket,
        |p| p[0] != "trace_id" && !p[p.len() - 1].ends_with("span_id"),
        |p| p.len() == 1 && ["start_time", "name", "service_name"].contains(&p[0].as_str()),
    )
    .unwrap()
}

/// Row groups of encoded batches (`groups[g]` = the batches of row group g), as a Parquet file.
fn file(enc: &mut RowGroupEncoder, c: Compression, groups: &[Vec<Vec<u8>>]) -> Bytes {
    let props = WriterProperties::builder().set_compression(c).build();
    let (mut fw, _) = ArrowWriter::try_new(Vec::new(), schema(), Some(props)).unwrap().into_serialized_writer().unwrap();
    for g in groups {
        for b in g {
            assert!(matches!(enc.push_encoded(&[b.as_slice()]).unwrap(), Pushed::Rows(_)));
        }
        let mut rg = fw.next_row_group().unwrap();
        for (bytes, close) in enc.finish().unwrap() {
            rg.append_column(&bytes, close).unwrap();
        }
        rg.close().unwrap();
    }
    Bytes::from(fw.into_inner().unwrap())
}

fn read(b: Bytes) -> RecordBatch {
    let batches: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(b).unwrap().build().unwrap().map(|b| b.unwrap()).collect();
    concat_batches(&batches[0].schema(), &batches).unwrap()
}

fn want(groups: &[Vec<Vec<u8>>]) -> RecordBatch {
    let all: Vec<&[u8]> = groups.iter().flatten().map(|b| b.as_slice()).collect();
    encoded_to_record_batch(all, 1).unwrap()
}

fn enc(rs: Vec<ResourceSpans>) -> Vec<u8> {
    TracesData { resource_spans: rs }.encode_to_vec()
}

#[test]
fn every_otlp_field_reads_back_as_the_arrow_path_builds_it() {
    let b = enc(every_field());
    for c in [Compression::ZSTD(ZstdLevel::default()), Compression::SNAPPY, Compression::UNCOMPRESSED] {
        let groups = vec![vec![b.clone(), b.clone()], vec![b.clone()]];
        let mut e = encoder(c, None);
        let got = read(file(&mut e, c, &groups));
        assert_eq!(got.num_rows(), 69);
        assert_eq!(got, want(&groups), "{c}");
    }
    // A ScopeSpans whose scope comes after its spans (their context is added after them), between
    // ordinary ones.
    let groups = vec![vec![b.clone(), odd_encodings(), b.clone()]];
    let c = Compression::ZSTD(ZstdLevel::default());
    let got = read(file(&mut encoder(c, None), c, &groups));
    assert_eq!(got.num_rows(), 23 + 2 + 23);
    assert_eq!(got, want(&groups));
}

/// `n` mesh-like spans from `seed`: unique ids and URLs (so the value dictionary overflows), two
/// services, attributes in a fixed order, one start hour.
fn mesh(seed: u64, n: usize, t0: u64) -> Vec<u8> {
    let spans = |svc: u64| -> Vec<Span> {
        (0..n as u64)
            .map(|i| Span {
                trace_id: (seed * 1_000_003 + i).to_be_bytes().repeat(2),
                span_id: (i ^ seed).to_be_bytes().to_vec(),
                parent_span_id: if i % 3 == 0 { vec![] } else { (i + 1).to_be_bytes().to_vec() },
                name: format!("svc{svc}.default:9080/*"),
                kind: 2,
                start_time_unix_nano: t0 + i * 1000,
                end_time_unix_nano: t0 + i * 1000 + 77,
                attributes: vec![
                    kv("http.method", Some(Value::StringValue("GET".into()))),
                    kv("http.url", Some(Value::StringValue(format!("http://svc{svc}/api/{seed}/{i}/{}", "x".repeat((i % 40) as usize))))),
                    kv("http.status_code", Some(Value::IntValue(200 + (i % 3) as i64))),
                    kv("cached", Some(Value::BoolValue(i % 2 == 0))),
                    kv("guid:x-request-id", Some(Value::StringValue(format!("{seed:08x}-{i:08x}")))),
                ],
                ..Default::default()
            })
            .collect()
    };
    enc((0..2)
        .map(|svc| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", Some(Value::StringValue(format!("svc{svc}")))),
                    kv("k8s.namespace.name", Some(Value::StringValue("default".into()))),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans { spans: spans(svc), ..Default::default() }],
            schema_url: String::new(),
        })
        .collect())
}

#[test]
fn big_row_groups_cut_pages_and_fall_back_from_a_full_dictionary() {
    let t0 = 1_795_000_000_000_000_000;
    let groups = vec![(0..6).map(|s| mesh(s, 8000, t0)).collect::<Vec<_>>()];
    let mut e = encoder(Compression::ZSTD(ZstdLevel::default()), Some(HOUR));
    let bytes = file(&mut e, Compression::ZSTD(ZstdLevel::default()), &groups);
    let reader = datafusion::parquet::file::reader::SerializedFileReader::new(bytes.clone()).unwrap();
    use datafusion::parquet::file::reader::FileReader;
    let rg = reader.metadata().row_group(0);
    let values = rg.columns().iter().find(|c| c.column_path().string() == "attributes.entries.value").unwrap();
    assert!(
        values.encodings().any(|e| e == Encoding::RLE_DICTIONARY) && values.encodings().any(|e| e == Encoding::DELTA_LENGTH_BYTE_ARRAY),
        "dictionary then DELTA_LENGTH_BYTE_ARRAY: {:?}",
        values.encodings().collect::<Vec<_>>()
    );
    let start = rg.columns().iter().find(|c| c.column_path().string() == "start_time").unwrap();
    assert!(start.statistics().is_some_and(|s| s.min_bytes_opt().is_some()), "start_time keeps min/max");
    let got = read(bytes);
    assert_eq!(got.num_rows(), 96_000);
    assert_eq!(got, want(&groups));
}

/// Spans whose one string attribute is unique and long: its dictionary fills within the first
/// ~1,300 rows.
fn unique_values(seed: u64, n: usize, t0: u64) -> Vec<u8> {
    let spans = (0..n as u64)
        .map(|i| Span {
            trace_id: (seed * 1_000_003 + i).to_be_bytes().repeat(2),
            span_id: (i ^ seed).to_be_bytes().to_vec(),
            name: "op".into(),
            start_time_unix_nano: t0 + i,
            end_time_unix_nano: t0 + i + 5,
            attributes: vec![
                kv("http.method", Some(Value::StringValue("GET".into()))),
                kv("blob", Some(Value::StringValue(format!("{seed}/{i}/{}", "y".repeat(800))))),
            ],
            ..Default::default()
        })
        .collect();
    enc(vec![ResourceSpans { scope_spans: vec![ScopeSpans { spans, ..Default::default() }], ..Default::default() }])
}

#[test]
fn a_dictionary_that_fills_early_is_skipped_for_the_next_row_groups() {
    let t0 = 1_795_000_000_000_000_000;
    // Row group g: 10 batches of 800 spans (a full dictionary is noticed between batches); the
    // first and the ninth try a dictionary for the unique values.
    let groups: Vec<Vec<Vec<u8>>> = (0..10).map(|g| (0..10).map(|b| unique_values(g * 10 + b, 800, t0)).collect()).collect();
    let mut e = encoder(Compression::SNAPPY, Some(HOUR));
    let bytes = file(&mut e, Compression::SNAPPY, &groups);
    let reader = datafusion::parquet::file::reader::SerializedFileReader::new(bytes.clone()).unwrap();
    use datafusion::parquet::file::reader::FileReader;
    let dict = |path: &str| -> Vec<bool> {
        reader
            .metadata()
            .row_groups()
            .iter()
            .map(|rg| rg.columns().iter().find(|c| c.column_path().string() == path).unwrap().dictionary_page_offset().is_some())
            .collect()
    };
    let skipped = [true, false, false, false, false, false, false, false, true, false];
    assert_eq!(dict("attributes.entries.value"), skipped, "the values' dictionary: tried, skipped for 7 row groups, tried again");
    assert_eq!(dict("attributes.entries.key"), [true; 10], "the keys' dictionary never fills");
    assert_eq!(dict("name"), [true; 10]);
    let got = read(bytes);
    assert_eq!(got.num_rows(), 80_000);
    assert_eq!(got, want(&groups));
}

#[test]
fn a_batch_in_two_partitions_goes_in_whole_or_not_at_all() {
    let t0 = 1_795_000_000_000_000_000u64;
    let next_hour = t0 + HOUR as u64;
    let first = mesh(1, 100, t0);
    // The same hour as `first`, then a span in the next hour: all of it is rewound.
    let mut mixed = TracesData::decode(mesh(2, 50, t0).as_slice()).unwrap();
    mixed.resource_spans.extend(TracesData::decode(mesh(3, 50, next_hour).as_slice()).unwrap().resource_spans);
    let mixed = mixed.encode_to_vec();
    let mut e = encoder(Compression::SNAPPY, Some(HOUR));
    assert_eq!(e.push_encoded(&[first.as_slice()]).unwrap(), Pushed::Rows(200));
    assert_eq!(e.push_encoded(&[mixed.as_slice()]).unwrap(), Pushed::OtherPartition);
    // A batch of the next hour alone does not fit this row group either.
    assert_eq!(e.push_encoded(&[mesh(4, 10, next_hour).as_slice()]).unwrap(), Pushed::OtherPartition);
    assert_eq!(e.rows(), 200);
    let garbage = [0x0a, 0x03, 0x12, 0x01, 0xff];
    assert!(e.push_encoded(&[&first[..first.len() / 2], &garbage[..]]).is_err(), "malformed protobuf is an error");
    assert_eq!(e.rows(), 200, "and leaves nothing behind");
    let more = mesh(5, 30, t0);
    assert_eq!(e.push_encoded(&[more.as_slice()]).unwrap(), Pushed::Rows(60));
    let (mut fw, _) = ArrowWriter::try_new(Vec::new(), schema(), None).unwrap().into_serialized_writer().unwrap();
    let mut rg = fw.next_row_group().unwrap();
    for (bytes, close) in e.finish().unwrap() {
        rg.append_column(&bytes, close).unwrap();
    }
    rg.close().unwrap();
    let got = read(Bytes::from(fw.into_inner().unwrap()));
    assert_eq!(got, want(&[vec![first, more]]), "exactly the batches that went in");
    assert_eq!(e.rows(), 0);
    assert_eq!(e.push_encoded(&[mixed.as_slice()]).unwrap(), Pushed::OtherPartition, "an empty encoder takes a batch of one partition only");
}

#[test]
fn hybrid_runs_and_bit_packing() {
    // 10 zeros at width 1: one RLE run (header 10 << 1, value in one byte).
    let mut l = Levels::default();
    l.push(0, 10);
    let mut out = Vec::new();
    l.write_v1(&mut out, 1);
    assert_eq!(out, [2, 0, 0, 0, 20, 0]);
    // 0,1,1 then 9 ones: the short start is topped up to 8 from the run, bit-packed, then the
    // remaining 4 ones are pending and packed too (one more group).
    let mut out = Vec::new();
    let mut h = Hybrid::new(&mut out, 1);
    h.run(0, 1);
    h.run(1, 11);
    h.finish();
    assert_eq!(out, [0b101, 0b1111_1110, 0b0000_1111]);
    // Rewinding a run part-way.
    let mut l = Levels::default();
    l.push(1, 5);
    l.push(0, 3);
    l.truncate(6);
    assert_eq!(l.len(), 6);
    let mut out = Vec::new();
    l.write_v1(&mut out, 1);
    assert_eq!(out, [2, 0, 0, 0, 0b11, 0b0001_1111]);
}

/// Decodes `n` values of the RLE / bit-packing hybrid at `width` bits (a reference reader).
fn unhybrid(mut b: &[u8], width: u8, n: usize) -> Vec<u32> {
    let mut out = Vec::new();
    while out.len() < n {
        let (mut header, mut shift) = (0u64, 0);
        loop {
            let byte = b[0];
            b = &b[1..];
            header |= ((byte & 0x7f) as u64) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        if header & 1 == 1 {
            let bytes = (header >> 1) as usize * width as usize;
            let (packed, rest) = b.split_at(bytes);
            for k in 0..(header >> 1) as usize * 8 {
                let v = (0..width as usize).fold(0u32, |v, bit| {
                    let at = k * width as usize + bit;
                    v | ((((packed[at / 8] >> (at % 8)) & 1) as u32) << bit)
                });
                out.push(v);
            }
            b = rest;
        } else {
            let w = width.div_ceil(8) as usize;
            let mut v = [0u8; 4];
            v[..w].copy_from_slice(&b[..w]);
            b = &b[w..];
            out.extend(std::iter::repeat_n(u32::from_le_bytes(v), (header >> 1) as usize));
        }
    }
    assert!(b.is_empty(), "nothing after the last run");
    out.truncate(n);
    out
}

/// Reads one ULEB128 off the front of `b`.
fn uleb_of(b: &mut &[u8]) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let byte = b[0];
        *b = &b[1..];
        v |= ((byte & 0x7f) as u64) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return v;
        }
    }
}

/// Decodes DELTA_BINARY_PACKED as the Parquet spec describes it (a reference reader); every
/// byte must be used.
fn undelta(mut b: &[u8]) -> Vec<i64> {
    let unzigzag = |v: u64| (v >> 1) as i64 ^ -((v & 1) as i64);
    let (block, minis, n) = (uleb_of(&mut b) as usize, uleb_of(&mut b) as usize, uleb_of(&mut b) as usize);
    let mut out = vec![unzigzag(uleb_of(&mut b))];
    while out.len() < n {
        let min = unzigzag(uleb_of(&mut b));
        let (widths, rest) = b.split_at(minis);
        b = rest;
        for &w in widths {
            if out.len() >= n {
                break;
            }
            let (packed, rest) = b.split_at(block / minis * w as usize / 8);
            b = rest;
            for k in 0..block / minis {
                let d = (0..w as usize).fold(0u64, |v, bit| {
                    let at = k * w as usize + bit;
                    v | ((((packed[at / 8] >> (at % 8)) & 1) as u64) << bit)
                });
                if out.len() < n {
                    out.push(out[out.len() - 1] + min + d as i64);
                }
            }
        }
    }
    assert!(b.is_empty(), "nothing after the last miniblock");
    out.truncate(n);
    out
}

#[test]
fn delta_binary_packed_small_cases() {
    // One value: the header alone (block 128, 4 miniblocks, 1 value, first 5 zigzag = 10).
    let mut out = Vec::new();
    delta_binary_packed(&mut out, &[5]);
    assert_eq!(out, [128, 1, 4, 1, 10]);
    // Equal values: min delta 0, one miniblock of width 0, no packed bytes.
    out.clear();
    delta_binary_packed(&mut out, &[7, 7, 7]);
    assert_eq!(out, [128, 1, 4, 3, 14, 0, 0, 0, 0, 0]);
    // 3, 50, 22: deltas 47, -28: min -28 (zigzag 55), then 75 and 0 at width 7 (padded to 32 values).
    out.clear();
    delta_binary_packed(&mut out, &[3, 50, 22]);
    assert_eq!(&out[..10], [128, 1, 4, 3, 6, 55, 7, 0, 0, 0]);
    assert_eq!(out.len(), 10 + 4 * 7);
    assert_eq!(undelta(&out), [3, 50, 22]);
}

proptest::proptest! {
    /// Lengths (any count: empty, one block, a partial last block or miniblock; up to 2^31 - 1,
    /// so 32-bit deltas) read back as written.
    #[test]
    fn delta_binary_packed_reads_back(vals in proptest::collection::vec(proptest::prop_oneof![0u32..64, 0u32..(1 << 31)], 0..600)) {
        let mut out = Vec::new();
        delta_binary_packed(&mut out, &vals);
        proptest::prop_assert_eq!(undelta(&out), vals.iter().map(|&v| v as i64).collect::<Vec<_>>());
    }

    /// Dictionary indices (random, with runs of any length) read back as written, at every width.
    #[test]
    fn hybrid_values_read_back(width in 1u8..=20, runs in proptest::collection::vec((0u32..1 << 20, 1usize..20), 0..60), lead in 0usize..8) {
        let mask = (1u64 << width) as u32 - 1;
        let vals: Vec<u32> = runs.iter().flat_map(|&(v, n)| std::iter::repeat_n(v & mask, n)).collect();
        let mut out = Vec::new();
        let mut h = Hybrid::new(&mut out, width);
        // Levels-style runs first (`lead` single values), so `values` starts off a group boundary.
        vals.iter().take(lead).for_each(|&v| h.run(v, 1));
        h.values(&vals[lead.min(vals.len())..]);
        h.finish();
        proptest::prop_assert_eq!(unhybrid(&out, width, vals.len()), vals);
    }

    /// Levels-style runs (`Hybrid::run`, any count) read back as written, at every width.
    #[test]
    fn hybrid_runs_read_back(width in 1u8..=20, runs in proptest::collection::vec((0u32..1 << 20, 1u64..80), 0..40)) {
        let mask = (1u64 << width) as u32 - 1;
        let mut out = Vec::new();
        let mut h = Hybrid::new(&mut out, width);
        runs.iter().for_each(|&(v, n)| h.run(v & mask, n));
        h.finish();
        let want: Vec<u32> = runs.iter().flat_map(|&(v, n)| std::iter::repeat_n(v & mask, n as usize)).collect();
        proptest::prop_assert_eq!(unhybrid(&out, width, want.len()), want);
    }
}

#[test]
fn short_string_comparison_matches_slice_equality() {
    let words: Vec<Vec<u8>> = (0..40usize).map(|n| (0..n).map(|i| b'a' + (i % 26) as u8).collect()).collect();
    for a in &words {
        for b in &words {
            assert_eq!(super::leaf::same(a, b), a == b);
            // One byte changed anywhere.
            for i in 0..b.len() {
                let mut c = b.clone();
                c[i] ^= 1;
                assert_eq!(super::leaf::same(a, &c), *a == c, "{a:?} vs {c:?}");
            }
        }
    }
}

/// Malformed and hostile protobuf (every truncation of a real batch, a length prefix far past the
/// buffer, invalid UTF-8): an error or the spans that are complete, never a panic; a failed
/// batch leaves nothing behind, and the encoder still writes a correct file afterwards.
#[test]
fn malformed_batches_are_errors_and_leave_nothing_behind() {
    let good = enc(every_field());
    let mut e = encoder(Compression::SNAPPY, None);
    let mut kept = Vec::new();
    for cut in (1..good.len()).step_by(7) {
        let before = e.rows();
        match e.push_encoded(&[&good[..cut]]) {
            Ok(Pushed::Rows(n)) => {
                assert_eq!(e.rows(), before + n as u64);
                kept.push(good[..cut].to_vec());
            }
            Ok(Pushed::OtherPartition) => unreachable!("no partitions"),
            Err(_) => assert_eq!(e.rows(), before, "a failed batch added rows"),
        }
    }
    // A TracesData field 1 declaring 2^35 bytes, and a span name that is not UTF-8.
    let hostile = [0x0a, 0x80, 0x80, 0x80, 0x80, 0x01, 0x12];
    assert!(e.push_encoded(&[&hostile[..]]).is_err());
    let span = [0x2a, 0x02, 0xff, 0xfe]; // Span.name = ff fe
    let scope_spans = [&[0x12, span.len() as u8][..], &span].concat();
    let resource_spans = [&[0x12, scope_spans.len() as u8][..], &scope_spans].concat();
    let traces = [&[0x0a, resource_spans.len() as u8][..], &resource_spans].concat();
    assert!(e.push_encoded(&[traces.as_slice()]).is_err(), "invalid UTF-8 in a span name");
    kept.push(good.clone());
    assert!(matches!(e.push_encoded(&[good.as_slice()]).unwrap(), Pushed::Rows(23)));
    let (mut fw, _) = ArrowWriter::try_new(Vec::new(), schema(), None).unwrap().into_serialized_writer().unwrap();
    let mut rg = fw.next_row_group().unwrap();
    for (bytes, close) in e.finish().unwrap() {
        rg.append_column(&bytes, close).unwrap();
    }
    rg.close().unwrap();
    assert_eq!(read(Bytes::from(fw.into_inner().unwrap())), want(&[kept]), "exactly the batches that went in");
}
