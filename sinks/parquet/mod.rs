//! `type: parquet` — archives every span as one row of a Parquet file in the documented schema
//! ([`tracepipe_pipeline::archive::schema`]), under `path/date=YYYY-MM-DD/hour=HH/` by the span's
//! start time. Files roll at `max_rows`, `max_bytes` or `max_age`, are written under a hidden
//! temporary name and renamed when closed (readers never see half a file); SIGTERM closes the
//! open files; on start, leftovers of a crash are renamed (complete) or quarantined and reported
//! (incomplete). `tracepipe query` and the `archive` receiver read what this writes.

mod config;
mod sink;
mod writer;

#[cfg(test)]
mod tests;

pub use config::{Compression, ParquetSinkConfig, Roll};
pub use sink::build;
pub use writer::ArchiveWriter;
