//! Configuration of the Parquet sink.

use std::path::PathBuf;

use serde::Deserialize;
use tracepipe_config::{ByteSize, ConfigError, Duration, Node};
use tracepipe_pipeline::archive::layout::Partition;

/// Column compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd (default): the smallest files.
    #[default]
    Zstd,
    /// snappy: faster, larger.
    Snappy,
    /// No compression.
    None,
}

/// When an open file is closed and a new one started.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Roll {
    /// Rows per file (default 1,000,000).
    pub max_rows: u64,
    /// Bytes per file, written plus buffered (default 256MiB).
    pub max_bytes: ByteSize,
    /// Age of a file, from its first row (default 60s): how stale the archive may be.
    pub max_age: Duration,
}

impl Default for Roll {
    fn default() -> Self {
        Roll { max_rows: 1_000_000, max_bytes: ByteSize::mib(256), max_age: Duration::from_secs(60) }
    }
}

/// `type: parquet` settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParquetSinkConfig {
    /// Archive root (default `./tracepipe-data/traces`).
    pub path: PathBuf,
    /// `hour` (default), `day` or `none`.
    pub partition: Partition,
    /// Roll rules.
    pub roll: Roll,
    /// `zstd` (default), `snappy` or `none`.
    pub compression: Compression,
    /// Rows per row group (default 131072); smaller groups use less memory while writing.
    pub row_group_rows: usize,
    /// Writers encoding batches in parallel, each on its own thread with its own open files
    /// (default 1). Encoding takes about one core per 250–300k spans/s; raise this when the sink
    /// falls behind. Each worker keeps its own file per partition, so a partition gets up to
    /// `workers` files per roll.
    pub workers: usize,
    /// Spans whose start time is further than this from the time they are written (a sender's
    /// clock far off, or a zero timestamp) go to the partition of the write time instead, counted
    /// in `tracepipe_sink_parquet_clock_skewed_spans_total`; their rows keep their own start
    /// time. Default 24h; `0s` partitions every span by its start time.
    pub max_clock_skew: Duration,
}

/// At most this many [`ParquetSinkConfig::workers`].
pub const MAX_WORKERS: usize = 64;

impl Default for ParquetSinkConfig {
    fn default() -> Self {
        ParquetSinkConfig {
            path: PathBuf::from("./tracepipe-data/traces"),
            partition: Partition::Hour,
            roll: Roll::default(),
            compression: Compression::Zstd,
            row_group_rows: 128 * 1024,
            workers: 1,
            max_clock_skew: Duration::from_secs(24 * 3600),
        }
    }
}

impl ParquetSinkConfig {
    /// Reads and checks the settings.
    pub fn from_node(node: &Node, file: &str) -> Result<ParquetSinkConfig, Vec<ConfigError>> {
        let c: ParquetSinkConfig = node.deserialize_into(file).map_err(|e| vec![e])?;
        let at = |k: &str| node.get(k).map(|n| n.pos).unwrap_or(node.pos);
        let roll_at = |k: &str| node.get("roll").and_then(|r| r.get(k)).map(|n| n.pos).unwrap_or_else(|| at("roll"));
        let mut errors = Vec::new();
        if c.path.as_os_str().is_empty() {
            errors.push(ConfigError::new(file, at("path"), "path must not be empty"));
        }
        if c.roll.max_rows == 0 {
            errors.push(ConfigError::new(file, roll_at("max_rows"), "roll.max_rows must be above 0"));
        }
        if c.roll.max_bytes.get() == 0 {
            errors.push(ConfigError::new(file, roll_at("max_bytes"), "roll.max_bytes must be above 0"));
        }
        if c.roll.max_age.get().is_zero() {
            errors.push(ConfigError::new(file, roll_at("max_age"), "roll.max_age must be above 0"));
        }
        if c.row_group_rows == 0 {
            errors.push(ConfigError::new(file, at("row_group_rows"), "row_group_rows must be above 0"));
        }
        if c.workers == 0 || c.workers > MAX_WORKERS {
            errors.push(ConfigError::new(file, at("workers"), format!("workers must be between 1 and {MAX_WORKERS}")));
        }
        if errors.is_empty() { Ok(c) } else { Err(errors) }
    }
}
