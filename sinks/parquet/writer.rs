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
use tracepipe_pipeline::archive::encoded::encoded_to_record_batch_counted;
use tracepipe_pipeline::archive::pages::{parquet_schema, Pushed, RowGroupEncoder};
use tracepipe_pipeline::archive::schema;
use tracepipe_pipeline::Batch;

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
    /// Acknowledgements of the batches with rows in this file.
    acks: Vec<Batch>,
}

/// A file closed and renamed into place.
#[derive(Debug, Clone)]
pub struct Closed {
    /// Its final path.
    pub path: PathBuf,
    /// Rows in it.
    pub rows: u64,
    /// Acknowledgements (finalizer-only batches) of the batches whose rows it holds: dropping
    /// them reports those batches delivered (unless another of their parts was lost).
    pub acks: Vec<Batch>,
}

/// Rows that will never reach a closed file (a file that could not be written or closed, rows
/// discarded to keep memory bounded while a directory cannot be written, a malformed batch).
#[derive(Debug)]
pub struct Lost {
    /// How many.
    pub rows: u64,
    /// The acknowledgements of the batches they came from.
    pub acks: Vec<Batch>,
    /// Why.
    pub error: String,
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
    /// Acknowledgements of the batches with rows in the encoder.
    encoder_acks: Vec<Batch>,
    /// The acknowledgement of the batch being written (see [`ArchiveWriter::set_ack`]).
    ack: Option<Batch>,
    /// Files closed since the last successful call returned them.
    closed: Vec<Closed>,
    /// Rows lost since [`ArchiveWriter::take_lost`] last took them.
    lost: Vec<Lost>,
    /// Spans partitioned by their write time (start time beyond `max_clock_skew`), not yet taken.
    skewed: u64,
    /// Resource and scope attributes cut to a batch's context budget, not yet taken.
    truncated: u64,
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
        ArchiveWriter {
            cfg,
            props,
            open: BTreeMap::new(),
            encoder,
            encoder_dir: None,
            encoder_acks: Vec::new(),
            ack: None,
            closed: Vec::new(),
            lost: Vec::new(),
            skewed: 0,
            truncated: 0,
        }
    }

    /// `(lo, hi, now)` in Unix nanoseconds: start times outside `[lo, hi]` are partitioned as
    /// `now` (`max_clock_skew`), or `None` when the setting is 0.
    fn window(&self) -> Option<(i64, i64, i64)> {
        let skew = i64::try_from(self.cfg.max_clock_skew.get().as_nanos()).unwrap_or(i64::MAX);
        if skew == 0 {
            return None;
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
        Some((now.saturating_sub(skew), now.saturating_add(skew), now))
    }

    /// Resource and scope attributes cut since the last call: a batch may replay at most a
    /// bounded multiple of its bytes as context into its rows
    /// (`tracepipe_pipeline::archive::budget`).
    pub fn take_truncated(&mut self) -> u64 {
        std::mem::take(&mut self.truncated)
    }

    /// Spans partitioned by their write time since the last call (`max_clock_skew`).
    pub fn take_skewed(&mut self) -> u64 {
        std::mem::take(&mut self.skewed)
    }

    /// Files open now.
    pub fn open_files(&self) -> usize {
        self.open.len()
    }

    /// Rows written but not yet in a closed file (in open files and the encoder).
    pub fn pending_rows(&self) -> u64 {
        self.open.values().map(|f| f.rows).sum::<u64>() + self.encoder.rows()
    }

    /// The acknowledgement (a finalizer-only batch, [`Batch::finalizers_only`]) of the batch the
    /// next write takes: held with the batch's rows until they are in a closed file
    /// ([`Closed::acks`]) or lost ([`ArchiveWriter::take_lost`]).
    pub fn set_ack(&mut self, ack: Batch) {
        self.ack = Some(ack);
    }

    /// Rows lost since the last call, with their acknowledgements (to report them failed).
    pub fn take_lost(&mut self) -> Vec<Lost> {
        std::mem::take(&mut self.lost)
    }

    fn lose(&mut self, rows: u64, acks: Vec<Batch>, error: &dyn std::fmt::Display) {
        if rows > 0 || !acks.is_empty() {
            self.lost.push(Lost { rows, acks, error: error.to_string() });
        }
    }

    /// The files closed and not yet returned (a call that failed may have closed some).
    pub fn take_closed(&mut self) -> Vec<Closed> {
        std::mem::take(&mut self.closed)
    }

    /// Writes spans, each into the partition of its start time; returns the files this closed
    /// (rolled by rows or bytes).
    pub fn write(&mut self, rs: &[ResourceSpans], now: Instant) -> Result<Vec<Closed>, WriteError> {
        let ack = self.ack.take().unwrap_or_else(Batch::empty);
        let rows = match schema::to_record_batch_counted(rs) {
            Ok((r, truncated)) => {
                self.truncated += truncated;
                r
            }
            Err(e) => {
                self.lose(tracepipe_pipeline::batch::count_spans(rs) as u64, vec![ack], &e);
                return Err(e.into());
            }
        };
        self.ack = Some(ack);
        self.write_rows(rows, now)
    }

    /// As [`ArchiveWriter::write`], from OTLP `TracesData` buffers still encoded (the usual case:
    /// straight to Parquet pages, see `tracepipe_pipeline::archive::pages`). An error leaves the
    /// batch's rows either with the encoder (its file could not be opened yet: tried again at the
    /// next flush or close, up to one row group) or lost ([`ArchiveWriter::take_lost`]).
    pub fn write_encoded<'a>(&mut self, bufs: impl IntoIterator<Item = &'a [u8]>, spans: usize, now: Instant) -> Result<Vec<Closed>, WriteError> {
        let ack = self.ack.take().unwrap_or_else(Batch::empty);
        let bufs: Vec<&[u8]> = bufs.into_iter().collect();
        let window = self.window();
        self.encoder.set_window(window);
        let mut pushed = match self.encoder.push_encoded(&bufs) {
            Ok(p) => p,
            Err(e) => {
                self.lose(spans as u64, vec![ack], &e);
                return Err(e.into());
            }
        };
        if pushed == Pushed::OtherPartition && self.encoder.rows() > 0 {
            // A new partition (the hour turned): the row group so far goes to its file first.
            let flushed = self.flush_encoder(now).map(|_| ()).and_then(|()| self.encoder.push_encoded(&bufs).map_err(WriteError::from));
            match flushed {
                Ok(p) => pushed = p,
                Err(e) => {
                    self.lose(spans as u64, vec![ack], &e);
                    return Err(e);
                }
            }
        }
        match pushed {
            Pushed::Rows(0) => {}
            Pushed::Rows(_) => {
                self.skewed += self.encoder.skewed();
                self.truncated += self.encoder.truncated();
                self.encoder_acks.push(ack);
                let bucket = self.encoder.bucket().unwrap_or(0);
                let ns = match self.cfg.partition {
                    Partition::None => 0,
                    Partition::Day => bucket * DAY_NS,
                    Partition::Hour => bucket * HOUR_NS,
                };
                let dir = layout::partition_dir(self.cfg.partition, ns as u64);
                // Bound first: if the file cannot be opened now, the rows stay with their
                // partition and the next flush or close tries again (and reports the error);
                // a full row group that still has no file is dropped (counted), so memory stays
                // bounded while the directory cannot be written.
                self.encoder_dir = Some(dir.clone());
                if let Err(e) = self.ensure_open(&dir, now) {
                    self.discard_full_encoder(&e);
                    return Err(e);
                }
                if self.full(&dir) {
                    self.close(&dir)?;
                } else if self.encoder.rows() >= self.cfg.row_group_rows as u64 {
                    self.flush_encoder(now)?;
                }
            }
            // Spans of two partitions in one batch: split by the Arrow path.
            Pushed::OtherPartition => {
                let rows = match encoded_to_record_batch_counted(bufs, spans) {
                    Ok((r, truncated)) => {
                        self.truncated += truncated;
                        r
                    }
                    Err(e) => {
                        self.lose(spans as u64, vec![ack], &e);
                        return Err(e.into());
                    }
                };
                self.ack = Some(ack);
                self.write_rows_inner(rows, now)?;
            }
        }
        Ok(self.take_closed())
    }

    /// Drops the encoder's rows (counted lost) once they fill a row group without a file to go to.
    fn discard_full_encoder(&mut self, error: &WriteError) {
        if self.encoder.rows() < self.cfg.row_group_rows as u64 {
            return;
        }
        let rows = self.encoder.rows();
        let _ = self.encoder.finish();
        self.encoder_dir = None;
        let acks = std::mem::take(&mut self.encoder_acks);
        self.lose(rows, acks, error);
    }

    /// A file that failed mid-write: its rows are lost (counted), its temporary file removed.
    fn fail_file(&mut self, dir: &Path, error: &dyn std::fmt::Display) {
        if let Some(f) = self.open.remove(dir) {
            let _ = std::fs::remove_file(&f.tmp);
            self.lose(f.rows, f.acks, error);
        }
    }

    /// Opens the file of partition `dir` if it is not open (closing the oldest at the limit).
    fn ensure_open(&mut self, dir: &Path, now: Instant) -> Result<(), WriteError> {
        if self.open.contains_key(dir) {
            return Ok(());
        }
        if self.open.len() >= MAX_OPEN {
            let oldest = self.open.iter().filter(|(k, _)| k.as_path() != dir).min_by_key(|(_, f)| f.opened).map(|(k, _)| k.clone()).expect("non-empty");
            self.close(&oldest)?;
        }
        let full = self.cfg.path.join(dir);
        std::fs::create_dir_all(&full).map_err(io(&full))?;
        let (fin, tmp) = layout::new_file(&full);
        let file = File::create(&tmp).map_err(io(&tmp))?;
        // ArrowWriter sets the file up (schema, the Arrow schema in the metadata, properties);
        // row groups are then added column chunk by column chunk.
        let (writer, factory) = ArrowWriter::try_new(file, schema::schema(), Some(self.props.clone()))?.into_serialized_writer()?;
        self.open.insert(dir.to_path_buf(), OpenFile { writer, factory, tmp, fin, rows: 0, opened: now, acks: Vec::new() });
        Ok(())
    }

    /// Whether the open file of `dir` reached `max_rows` or `max_bytes`, counting the encoder's
    /// rows and bytes when they are for that file.
    fn full(&self, dir: &Path) -> bool {
        let f = &self.open[dir];
        let (rows, bytes) = if self.encoder_dir.as_deref() == Some(dir) { (self.encoder.rows(), self.encoder.buffered_bytes()) } else { (0, 0) };
        f.rows + rows >= self.cfg.roll.max_rows || (f.writer.bytes_written() + bytes) as u64 >= self.cfg.roll.max_bytes.get()
    }

    /// Splices the encoder's row group into its partition's file. If the file cannot be opened,
    /// the rows stay (up to a row group) for the next try; if writing fails, the rows and the
    /// file are lost (counted).
    fn flush_encoder(&mut self, now: Instant) -> Result<(), WriteError> {
        let Some(dir) = self.encoder_dir.clone() else { return Ok(()) };
        if self.encoder.rows() == 0 {
            self.encoder_dir = None;
            return Ok(());
        }
        // The binding stays until the rows are in the file, so a failure here is retried.
        if let Err(e) = self.ensure_open(&dir, now) {
            self.discard_full_encoder(&e);
            return Err(e);
        }
        self.encoder_dir = None;
        let rows = self.encoder.rows();
        let acks = std::mem::take(&mut self.encoder_acks);
        let f = self.open.get_mut(&dir).expect("opened");
        let written = (|| -> Result<(), WriteError> {
            let chunks = self.encoder.finish()?;
            let mut rg = f.writer.next_row_group()?;
            for (bytes, close) in chunks {
                rg.append_column(&bytes, close)?;
            }
            rg.close()?;
            Ok(())
        })();
        match written {
            Ok(()) => {
                f.rows += rows;
                f.acks.extend(acks);
                Ok(())
            }
            Err(e) => {
                self.lose(rows, acks, &e);
                self.fail_file(&dir, &e);
                Err(e)
            }
        }
    }

    /// Writes archive rows, each into the partition of its start time.
    pub fn write_rows(&mut self, rows: RecordBatch, now: Instant) -> Result<Vec<Closed>, WriteError> {
        self.write_rows_inner(rows, now)?;
        Ok(self.take_closed())
    }

    fn write_rows_inner(&mut self, rows: RecordBatch, now: Instant) -> Result<(), WriteError> {
        let ack = self.ack.take().unwrap_or_else(Batch::empty);
        let n = rows.num_rows() as u64;
        let window = self.window();
        let parts = match split(rows, self.cfg.partition, window, &mut self.skewed) {
            Ok(p) => p,
            Err(e) => {
                self.lose(n, vec![ack], &e);
                return Err(e);
            }
        };
        let mut first_error = None;
        for (dir, batch) in parts {
            let rows = batch.num_rows() as u64;
            if let Err(e) = self.ensure_open(&dir, now) {
                self.lose(rows, vec![ack.clone()], &e);
                first_error.get_or_insert(e);
                continue;
            }
            if let Err(e) = self.write_row_group(&dir, &batch) {
                self.lose(rows, vec![ack.clone()], &e);
                self.fail_file(&dir, &e);
                first_error.get_or_insert(e);
                continue;
            }
            let f = self.open.get_mut(&dir).expect("opened");
            f.rows += rows;
            f.acks.push(ack.clone());
            if self.full(&dir)
                && let Err(e) = self.close(&dir)
            {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// One row group in `dir`'s open file: each column's leaves through its own
    /// `ArrowColumnWriter`.
    fn write_row_group(&mut self, dir: &Path, batch: &RecordBatch) -> Result<(), WriteError> {
        let arrow_schema = schema::schema();
        let f = self.open.get_mut(dir).expect("opened");
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
        Ok(())
    }

    /// Closes the files older than `max_age`.
    pub fn roll_aged(&mut self, now: Instant) -> Result<Vec<Closed>, WriteError> {
        let max_age = self.cfg.roll.max_age.get();
        let due: Vec<PathBuf> = self.open.iter().filter(|(_, f)| now.duration_since(f.opened) >= max_age).map(|(k, _)| k.clone()).collect();
        for d in due {
            self.close(&d)?;
        }
        Ok(self.take_closed())
    }

    /// Closes every open file (shutdown); every file is tried, the first error is returned.
    pub fn close_all(&mut self) -> Result<Vec<Closed>, WriteError> {
        // Pending rows first, even for a partition whose file could not be opened before.
        let mut first = self.flush_encoder(Instant::now()).err();
        let all: Vec<PathBuf> = self.open.keys().cloned().collect();
        for d in all {
            if let Err(e) = self.close(&d) {
                first.get_or_insert(e);
            }
        }
        match first {
            None => Ok(self.take_closed()),
            Some(e) => Err(e),
        }
    }

    /// Gives up on everything not in a closed file (the sink is stopping after a failed
    /// close): those rows are lost ([`ArchiveWriter::take_lost`]), temporary files removed.
    pub fn abandon(&mut self, error: &dyn std::fmt::Display) {
        let rows = self.encoder.rows();
        if rows > 0 {
            let _ = self.encoder.finish();
            let acks = std::mem::take(&mut self.encoder_acks);
            self.lose(rows, acks, error);
        }
        self.encoder_dir = None;
        let all: Vec<PathBuf> = self.open.keys().cloned().collect();
        for d in all {
            self.fail_file(&d, error);
        }
    }

    /// Closes `dir`'s file and renames it into place ([`ArchiveWriter::closed`]); on failure its
    /// rows are lost (counted) and the temporary file removed.
    fn close(&mut self, dir: &Path) -> Result<(), WriteError> {
        if self.encoder_dir.as_deref() == Some(dir) {
            self.flush_encoder(Instant::now())?;
        }
        let Some(f) = self.open.remove(dir) else { return Ok(()) };
        let (tmp, fin, rows, acks) = (f.tmp.clone(), f.fin.clone(), f.rows, f.acks);
        let done = (|| -> Result<(), WriteError> {
            let file = f.writer.into_inner()?;
            file.sync_all().map_err(io(&tmp))?;
            drop(file);
            std::fs::rename(&tmp, &fin).map_err(io(&fin))
        })();
        match done {
            Ok(()) => {
                self.closed.push(Closed { path: fin, rows, acks });
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                self.lose(rows, acks, &e);
                Err(e)
            }
        }
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
/// when every row falls in one partition, the common case. A start time outside the window
/// `(lo, hi, now)` is partitioned as `now` (counted in `skewed`).
fn split(rows: RecordBatch, p: Partition, window: Option<(i64, i64, i64)>, skewed: &mut u64) -> Result<Vec<(PathBuf, RecordBatch)>, WriteError> {
    let start = rows
        .column_by_name("start_time")
        .and_then(|c| c.as_any().downcast_ref::<TimestampNanosecondArray>())
        .ok_or_else(|| datafusion::arrow::error::ArrowError::SchemaError("archive rows need a timestamp(ns) `start_time` column".into()))?
        .values()
        .clone();
    let place = |ns: i64| -> i64 {
        match window {
            Some((lo, hi, now)) if ns < lo || ns > hi => now,
            _ => ns,
        }
        .max(0)
    };
    let bucket = |ns: i64| -> i64 {
        match p {
            Partition::None => 0,
            Partition::Day => ns / 86_400_000_000_000,
            Partition::Hour => ns / 3_600_000_000_000,
        }
    };
    if p != Partition::None {
        *skewed += start.iter().filter(|&&ns| place(ns) != ns.max(0)).count() as u64;
    }
    let Some(&first) = start.first() else { return Ok(Vec::new()) };
    let first = place(first);
    if start.iter().all(|&ns| bucket(place(ns)) == bucket(first)) {
        return Ok(vec![(layout::partition_dir(p, first as u64), rows)]);
    }
    let mut groups: Vec<(i64, i64, Vec<u32>)> = Vec::new();
    let mut index: std::collections::HashMap<i64, usize> = Default::default();
    for (row, &ns) in start.iter().enumerate() {
        let t = place(ns);
        let g = *index.entry(bucket(t)).or_insert_with(|| {
            groups.push((bucket(t), t, Vec::new()));
            groups.len() - 1
        });
        groups[g].2.push(row as u32);
    }
    groups
        .into_iter()
        .map(|(_, ns, idx)| Ok((layout::partition_dir(p, ns as u64), take_record_batch(&rows, &UInt32Array::from(idx))?)))
        .collect()
}
