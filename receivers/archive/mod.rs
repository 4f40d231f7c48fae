//! `type: archive` — replays a trace archive written by the `parquet` sink: selects spans with
//! any DataFusion predicate (`where`) and an optional time window, optionally whole traces,
//! in start-time order, at the original pace scaled by `speed` (or as fast as the graph takes
//! them), optionally shifted so the replay looks live. The receiver ends when the archive is
//! exhausted; a graph whose receivers have all ended drains and exits 0.

mod config;
mod replay;

#[cfg(test)]
mod tests;

pub use config::{ArchiveConfig, Speed};
pub use replay::{build, progress, query_sql, session};
