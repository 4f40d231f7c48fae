//! The synchronous archive writer: open files per partition, roll rules, atomic close.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use datafusion::arrow::array::{Array, TimestampNanosecondArray, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression as Codec, ZstdLevel};
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::parquet::arrow::ArrowSchemaConverter;
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesBuilder};
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use tracepipe_pipeline::archive::layout::{self, Partition};
use tracepipe_pipeline::archive::encoded::encoded_to_record_batch;
use tracepipe_pipeline::archive::schema;

use super::config::{Compression, ParquetSinkConfig};

/// Why writing failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// File-system error.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// Arrow / Parquet error.
    #[error("{0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    /// Arrow conversion error.
    #[error("{0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
}

struct OpenFile {
    writer: ArrowWriter<File>,
    tmp: PathBuf,
    fin: PathBuf,
    rows: u64,
    opened: Instant,
}

/// A file closed and renamed into place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// Its final path.
    pub path: PathBuf,
    /// Rows in it.
    pub rows: u64,
}

/// At most this many partitions have an open file; a span for another closes the oldest.
const MAX_OPEN: usize = 16;

/// Writes spans into the archive under one root.
pub struct ArchiveWriter {
    cfg: ParquetSinkConfig,
    props: WriterProperties,
    open: BTreeMap<PathBuf, OpenFile>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
    move |source| WriteError::Io { path: path.display().to_string(), source }
}

impl ArchiveWriter {
    /// A writer for `cfg` (no file is opened before the first span).
    pub fn new(cfg: ParquetSinkConfig) -> Self {
        let codec = match cfg.compression {
            Compression::Zstd => Codec::ZSTD(ZstdLevel::default()),
            Compression::Snappy => Codec::SNAPPY,
            Compression::None => Codec::UNCOMPRESSED,
        };
        let props = column_settings(
            WriterProperties::builder()
                .set_compression(codec)
                .set_max_row_group_row_count(Some(cfg.row_group_rows))
                .set_key_value_metadata(Some(vec![KeyValue::new(schema::SCHEMA_VERSION_KEY.to_owned(), schema::SCHEMA_VERSION.to_owned())])),
        )
        .build();
        ArchiveWriter { cfg, props, open: BTreeMap::new() }
    }

    /// Files open now.
    pub fn open_files(&self) -> usize {
        self.open.len()
    }

    /// Writes spans, each into the partition of its start time; returns the files this closed
    /// (rolled by rows or bytes).
    pub fn write(&mut self, rs: &[ResourceSpans], now: Instant) -> Result<Vec<Closed>, WriteError> {
        self.write_rows(schema::to_record_batch(rs)?, now)
    }

    /// As [`ArchiveWriter::write`], from OTLP `TracesData` buffers still encoded (the usual case:
    /// no decoding into OTLP structs, see `tracepipe_pipeline::archive::encoded`).
    pub fn write_encoded<'a>(&mut self, bufs: impl IntoIterator<Item = &'a [u8]>, spans: usize, now: Instant) -> Result<Vec<Closed>, WriteError> {
        self.write_rows(encoded_to_record_batch(bufs, spans)?, now)
    }

    /// Writes archive rows, each into the partition of its start time.
    pub fn write_rows(&mut self, rows: RecordBatch, now: Instant) -> Result<Vec<Closed>, WriteError> {
        let mut closed = Vec::new();
        for (dir, batch) in split(rows, self.cfg.partition)? {
            if !self.open.contains_key(&dir) {
                if self.open.len() >= MAX_OPEN {
                    let oldest = self.open.iter().min_by_key(|(_, f)| f.opened).map(|(k, _)| k.clone()).expect("non-empty");
                    closed.push(self.close(&oldest)?);
                }
                let full = self.cfg.path.join(&dir);
                std::fs::create_dir_all(&full).map_err(io(&full))?;
                let (fin, tmp) = layout::new_file(&full);
                let file = File::create(&tmp).map_err(io(&tmp))?;
                let writer = ArrowWriter::try_new(file, schema::schema(), Some(self.props.clone()))?;
                self.open.insert(dir.clone(), OpenFile { writer, tmp, fin, rows: 0, opened: now });
            }
            let f = self.open.get_mut(&dir).expect("inserted");
            f.writer.write(&batch)?;
            f.rows += batch.num_rows() as u64;
            let bytes = f.writer.bytes_written() + f.writer.in_progress_size();
            if f.rows >= self.cfg.roll.max_rows || bytes as u64 >= self.cfg.roll.max_bytes.get() {
                closed.push(self.close(&dir)?);
            }
        }
        Ok(closed)
    }

    /// Closes the files older than `max_age`.
    pub fn roll_aged(&mut self, now: Instant) -> Result<Vec<Closed>, WriteError> {
        let max_age = self.cfg.roll.max_age.get();
        let due: Vec<PathBuf> = self.open.iter().filter(|(_, f)| now.duration_since(f.opened) >= max_age).map(|(k, _)| k.clone()).collect();
        due.iter().map(|d| self.close(d)).collect()
    }

    /// Closes every open file (shutdown).
    pub fn close_all(&mut self) -> Result<Vec<Closed>, WriteError> {
        let all: Vec<PathBuf> = self.open.keys().cloned().collect();
        all.iter().map(|d| self.close(d)).collect()
    }

    fn close(&mut self, dir: &Path) -> Result<Closed, WriteError> {
        let f = self.open.remove(dir).expect("open");
        let file = f.writer.into_inner()?;
        file.sync_all().map_err(io(&f.tmp))?;
        drop(file);
        std::fs::rename(&f.tmp, &f.fin).map_err(io(&f.fin))?;
        Ok(Closed { path: f.fin, rows: f.rows })
    }
}

/// Columns whose every value is (nearly) unique: a dictionary would only cost hashing until the
/// writer gives up on it at 1 MiB.
const UNIQUE: &[&str] = &["trace_id", "span_id", "parent_span_id", "start_time", "end_time", "duration_ns"];

/// Top-level columns whose statistics a query can prune with (times, durations, who, what,
/// outcome); the others (random ids, trace state, messages, counts, URLs, `*_order`) get none —
/// their min/max prune nothing and cost a comparison per value.
const STATISTICS: &[&str] = &["start_time", "end_time", "duration_ns", "service_name", "name", "kind", "status_code", "scope_name"];

/// Per-column settings: no dictionary for unique ids and times; statistics only for the
/// [`STATISTICS`] columns — never inside maps and lists, where min/max mix every key's or
/// event's values. Those keep page statistics (the page index prunes time and service ranges).
fn column_settings(mut b: WriterPropertiesBuilder) -> WriterPropertiesBuilder {
    let parquet = ArrowSchemaConverter::new().convert(&schema::schema()).expect("the archive schema converts to Parquet");
    for c in parquet.columns() {
        let path = c.path().clone();
        let parts = path.parts();
        let (top, leaf) = (parts[0].as_str(), parts[parts.len() - 1].as_str());
        if UNIQUE.contains(&top) || (top == "links" && (leaf == "trace_id" || leaf == "span_id")) || (top == "events" && leaf == "time") {
            b = b.set_column_dictionary_enabled(path.clone(), false);
        }
        if parts.len() > 1 || !STATISTICS.contains(&top) {
            b = b.set_column_statistics_enabled(path, EnabledStatistics::None);
        }
    }
    b
}

/// Rows grouped by partition directory, in order of first appearance; one batch (not copied)
/// when every row falls in one partition, the common case.
fn split(rows: RecordBatch, p: Partition) -> Result<Vec<(PathBuf, RecordBatch)>, WriteError> {
    let start = rows
        .column_by_name("start_time")
        .and_then(|c| c.as_any().downcast_ref::<TimestampNanosecondArray>())
        .ok_or_else(|| datafusion::arrow::error::ArrowError::SchemaError("archive rows need a timestamp(ns) `start_time` column".into()))?
        .values()
        .clone();
    let bucket = |ns: i64| -> i64 {
        let ns = ns.max(0);
        match p {
            Partition::None => 0,
            Partition::Day => ns / 86_400_000_000_000,
            Partition::Hour => ns / 3_600_000_000_000,
        }
    };
    let Some(&first) = start.first() else { return Ok(Vec::new()) };
    if start.iter().all(|&ns| bucket(ns) == bucket(first)) {
        return Ok(vec![(layout::partition_dir(p, first.max(0) as u64), rows)]);
    }
    let mut groups: Vec<(i64, i64, Vec<u32>)> = Vec::new();
    for (row, &ns) in start.iter().enumerate() {
        let b = bucket(ns);
        match groups.iter_mut().find(|g| g.0 == b) {
            Some(g) => g.2.push(row as u32),
            None => groups.push((b, ns, vec![row as u32])),
        }
    }
    groups
        .into_iter()
        .map(|(_, ns, idx)| Ok((layout::partition_dir(p, ns.max(0) as u64), take_record_batch(&rows, &UInt32Array::from(idx))?)))
        .collect()
}
