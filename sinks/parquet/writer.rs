//! The synchronous archive writer: open files per partition, roll rules, atomic close.
//!
//! Encoded OTLP batches (the usual case) go straight to Parquet pages through one
//! [`RowGroupEncoder`], which fills a row group of one partition across batches; when it is full,
//! or a batch is for another partition, or the file closes, its column chunks are spliced into
//! that partition's file. Decoded spans, and the rare batch that straddles two partitions, take
//! the Arrow path (rows → `ArrowColumnWriter`s), written as their own row groups of the same
//! files. Both give the same rows (tested).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use datafusion::arrow::array::{Array, TimestampNanosecondArray, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::arrow_writer::{compute_leaves, ArrowRowGroupWriterFactory};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::writer::SerializedFileWriter;
use datafusion::parquet::basic::{Compression as Codec, ZstdLevel};
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::parquet::arrow::ArrowSchemaConverter;
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesBuilder};
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use tracepipe_pipeline::archive::layout::{self, Partition};
use tracepipe_pipeline::archive::encoded::encoded_to_record_batch;
use tracepipe_pipeline::archive::pages::{parquet_schema, Pushed, RowGroupEncoder};
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
    writer: SerializedFileWriter<File>,
    factory: ArrowRowGroupWriterFactory,
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
    /// The row group being built from encoded batches, and the partition directory it is for.
    encoder: RowGroupEncoder,
    encoder_dir: Option<PathBuf>,
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
        let bucket_ns = match cfg.partition {
            Partition::None => None,
            Partition::Day => Some(DAY_NS),
            Partition::Hour => Some(HOUR_NS),
        };
        let encoder = RowGroupEncoder::new(&parquet_schema(), codec, bucket_ns, schema::dictionary, schema::statistics)
            .expect("the page encoder takes the archive schema (tested)");
        ArchiveWriter { cfg, props, open: BTreeMap::new(), encoder, encoder_dir: None }
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
    /// straight to Parquet pages, see `tracepipe_pipeline::archive::pages`).
    pub fn write_encoded<'a>(&mut self, bufs: impl IntoIterator<Item = &'a [u8]>, spans: usize, now: Instant) -> Result<Vec<Closed>, WriteError> {
        let bufs: Vec<&[u8]> = bufs.into_iter().collect();
        let mut closed = Vec::new();
        let mut pushed = self.encoder.push_encoded(&bufs)?;
        if pushed == Pushed::OtherPartition && self.encoder.rows() > 0 {
            // A new partition (the hour turned): the row group so far goes to its file first.
            closed.extend(self.flush_encoder(now)?);
            pushed = self.encoder.push_encoded(&bufs)?;
        }
        match pushed {
            Pushed::Rows(0) => {}
            Pushed::Rows(_) => {
                let bucket = self.encoder.bucket().unwrap_or(0);
                let ns = match self.cfg.partition {
                    Partition::None => 0,
                    Partition::Day => bucket * DAY_NS,
                    Partition::Hour => bucket * HOUR_NS,
                };
                let dir = layout::partition_dir(self.cfg.partition, ns as u64);
                // Bound first: if the file cannot be opened now, the rows stay with their
                // partition and the next flush or close tries again (and reports the error).
                self.encoder_dir = Some(dir.clone());
                closed.extend(self.ensure_open(&dir, now)?);
                if self.full(&dir) {
                    closed.push(self.close(&dir)?);
                } else if self.encoder.rows() >= self.cfg.row_group_rows as u64 {
                    closed.extend(self.flush_encoder(now)?);
                }
            }
            // Spans of two partitions in one batch: split by the Arrow path.
            Pushed::OtherPartition => closed.extend(self.write_rows(encoded_to_record_batch(bufs, spans)?, now)?),
        }
        Ok(closed)
    }

    /// Opens the file of partition `dir` if it is not open (closing the oldest at the limit).
    fn ensure_open(&mut self, dir: &Path, now: Instant) -> Result<Option<Closed>, WriteError> {
        if self.open.contains_key(dir) {
            return Ok(None);
        }
        let mut closed = None;
        if self.open.len() >= MAX_OPEN {
            let oldest = self.open.iter().filter(|(k, _)| k.as_path() != dir).min_by_key(|(_, f)| f.opened).map(|(k, _)| k.clone()).expect("non-empty");
            closed = Some(self.close(&oldest)?);
        }
        let full = self.cfg.path.join(dir);
        std::fs::create_dir_all(&full).map_err(io(&full))?;
        let (fin, tmp) = layout::new_file(&full);
        let file = File::create(&tmp).map_err(io(&tmp))?;
        // ArrowWriter sets the file up (schema, the Arrow schema in the metadata, properties);
        // row groups are then added column chunk by column chunk.
        let (writer, factory) = ArrowWriter::try_new(file, schema::schema(), Some(self.props.clone()))?.into_serialized_writer()?;
        self.open.insert(dir.to_path_buf(), OpenFile { writer, factory, tmp, fin, rows: 0, opened: now });
        Ok(closed)
    }

    /// Whether the open file of `dir` reached `max_rows` or `max_bytes`, counting the encoder's
    /// rows and bytes when they are for that file.
    fn full(&self, dir: &Path) -> bool {
        let f = &self.open[dir];
        let (rows, bytes) = if self.encoder_dir.as_deref() == Some(dir) { (self.encoder.rows(), self.encoder.buffered_bytes()) } else { (0, 0) };
        f.rows + rows >= self.cfg.roll.max_rows || (f.writer.bytes_written() + bytes) as u64 >= self.cfg.roll.max_bytes.get()
    }

    /// Splices the encoder's row group into its partition's file.
    fn flush_encoder(&mut self, now: Instant) -> Result<Option<Closed>, WriteError> {
        let Some(dir) = self.encoder_dir.clone() else { return Ok(None) };
        if self.encoder.rows() == 0 {
            self.encoder_dir = None;
            return Ok(None);
        }
        // The binding stays until the rows are in the file, so a failure here is retried.
        let closed = self.ensure_open(&dir, now)?;
        self.encoder_dir = None;
        let rows = self.encoder.rows();
        let chunks = self.encoder.finish()?;
        let f = self.open.get_mut(&dir).expect("opened");
        let mut rg = f.writer.next_row_group()?;
        for (bytes, close) in chunks {
            rg.append_column(&bytes, close)?;
        }
        rg.close()?;
        f.rows += rows;
        Ok(closed)
    }

    /// Writes archive rows, each into the partition of its start time.
    pub fn write_rows(&mut self, rows: RecordBatch, now: Instant) -> Result<Vec<Closed>, WriteError> {
        let mut closed = Vec::new();
        let arrow_schema = schema::schema();
        for (dir, batch) in split(rows, self.cfg.partition)? {
            closed.extend(self.ensure_open(&dir, now)?);
            let f = self.open.get_mut(&dir).expect("opened");
            // One row group: each column's leaves through its own ArrowColumnWriter.
            let mut writers = f.factory.create_column_writers(f.writer.flushed_row_groups().len())?.into_iter();
            let mut chunks = Vec::new();
            for (field, column) in arrow_schema.fields().iter().zip(batch.columns()) {
                for leaf in compute_leaves(field, column)? {
                    let mut w = writers.next().ok_or_else(|| WriteError::Parquet(datafusion::parquet::errors::ParquetError::General("more leaves than column writers".into())))?;
                    w.write(&leaf)?;
                    chunks.push(w.close()?);
                }
            }
            let mut rg = f.writer.next_row_group()?;
            for c in chunks {
                c.append_to_row_group(&mut rg)?;
            }
            rg.close()?;
            f.rows += batch.num_rows() as u64;
            if self.full(&dir) {
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
        // Pending rows first, even for a partition whose file could not be opened before.
        let mut closed: Vec<Closed> = self.flush_encoder(Instant::now())?.into_iter().collect();
        let all: Vec<PathBuf> = self.open.keys().cloned().collect();
        for d in all {
            closed.push(self.close(&d)?);
        }
        Ok(closed)
    }

    fn close(&mut self, dir: &Path) -> Result<Closed, WriteError> {
        if self.encoder_dir.as_deref() == Some(dir) {
            self.flush_encoder(Instant::now())?;
        }
        let f = self.open.remove(dir).expect("open");
        let file = f.writer.into_inner()?;
        file.sync_all().map_err(io(&f.tmp))?;
        drop(file);
        std::fs::rename(&f.tmp, &f.fin).map_err(io(&f.fin))?;
        Ok(Closed { path: f.fin, rows: f.rows })
    }
}

const HOUR_NS: i64 = 3_600_000_000_000;
const DAY_NS: i64 = 24 * HOUR_NS;

/// Per-column settings of the Arrow path (the page encoder takes the same
/// [`schema::dictionary`] and [`schema::statistics`] rules).
fn column_settings(mut b: WriterPropertiesBuilder) -> WriterPropertiesBuilder {
    let parquet = ArrowSchemaConverter::new().convert(&schema::schema()).expect("the archive schema converts to Parquet");
    for c in parquet.columns() {
        let path = c.path();
        if !schema::dictionary(path.parts()) {
            b = b.set_column_dictionary_enabled(path.clone(), false);
        }
        if !schema::statistics(path.parts()) {
            b = b.set_column_statistics_enabled(path.clone(), EnabledStatistics::None);
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
