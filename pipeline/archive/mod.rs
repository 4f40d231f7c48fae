//! Trace archives: spans kept as Parquet files under one directory, written by the `parquet`
//! sink, queried by `tracepipe query` and replayed by the `archive` receiver.
//!
//! - [`schema`]: the documented, stable Arrow schema (one row per span, nothing in OTLP lost)
//!   and the conversions both ways;
//! - [`encoded`]: OTLP protobuf walked once, straight into Arrow rows or ([`pages`]) straight
//!   into Parquet column chunks, which is how the sink writes;
//! - [`budget`]: how much resource and scope context a batch may replay into its rows (a huge
//!   resource over very many tiny spans is cut, counted, instead of growing K × N);
//! - [`layout`]: where files go (`date=YYYY-MM-DD/hour=HH/part-….parquet`), how they appear
//!   atomically (written as hidden `.….parquet.tmp`, renamed when closed) and how leftovers of a
//!   crash are recovered or quarantined on start;
//! - [`register`]: the archive as the DataFusion table `spans` (partition columns `date` and
//!   `hour` when the layout has them), with clear errors for missing, empty and damaged archives.
//!
//! Arrow, Parquet and DataFusion are used through DataFusion's re-exports, so one Arrow version
//! is built. Everything but [`budget`] (which the Kafka sink uses too) needs the `archive`
//! feature.

pub mod budget;
#[cfg(feature = "archive")]
pub mod layout;
#[cfg(feature = "archive")]
pub mod encoded;
#[cfg(feature = "archive")]
pub mod pages;
#[cfg(feature = "archive")]
pub mod schema;

#[cfg(feature = "archive")]
use std::path::Path;
#[cfg(feature = "archive")]
use std::sync::Arc;

#[cfg(feature = "archive")]
use datafusion::arrow::datatypes::DataType;
#[cfg(feature = "archive")]
use datafusion::datasource::file_format::parquet::ParquetFormat;
#[cfg(feature = "archive")]
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
#[cfg(feature = "archive")]
use datafusion::prelude::SessionContext;

/// Why an archive cannot be opened.
#[cfg(feature = "archive")]
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The directory does not exist.
    #[error("archive `{0}` does not exist")]
    Missing(String),
    /// The directory holds no closed `.parquet` file.
    #[error("archive `{0}` holds no .parquet files (nothing archived yet?)")]
    Empty(String),
    /// A file is not a readable Parquet file (damaged, truncated, or not Parquet at all).
    #[error("archive file `{0}` is not a readable Parquet file: {1}")]
    Corrupt(String, String),
    /// A file was written with another schema version (by an older or newer tracepipe).
    #[error("archive file `{0}` has schema version {1}; this tracepipe reads version {2} (re-archive it with the tracepipe that wrote it, or keep the versions in separate directories)")]
    Version(String, String, &'static str),
    /// Reading the directory failed.
    #[error("archive `{0}`: {1}")]
    Io(String, std::io::Error),
    /// DataFusion refused the table.
    #[error("archive `{0}`: {1}")]
    DataFusion(String, datafusion::error::DataFusionError),
}

/// Registers the archive under `root` as the table `name` in `ctx`.
#[cfg(feature = "archive")]
pub async fn register(ctx: &SessionContext, name: &str, root: &Path) -> Result<(), ArchiveError> {
    let shown = root.display().to_string();
    if !root.is_dir() {
        return Err(ArchiveError::Missing(shown));
    }
    let files = layout::closed_files(root).map_err(|e| ArchiveError::Io(shown.clone(), e))?;
    let Some(first) = files.first() else { return Err(ArchiveError::Empty(shown)) };
    // Check every footer first: the async Parquet reader DataFusion uses panics on some hostile
    // files (seen: a 36-byte file with PAR1 magic), the footer parser returns an error.
    for f in &files {
        use datafusion::parquet::file::reader::SerializedFileReader;
        use datafusion::parquet::file::reader::FileReader;
        let check = std::fs::File::open(f).map_err(|e| e.to_string()).and_then(|h| SerializedFileReader::new(h).map_err(|e| e.to_string()));
        let reader = check.map_err(|reason| ArchiveError::Corrupt(f.display().to_string(), reason))?;
        let version = reader
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .and_then(|kvs| kvs.iter().find(|kv| kv.key == schema::SCHEMA_VERSION_KEY).and_then(|kv| kv.value.clone()))
            .unwrap_or_else(|| "none (not written by tracepipe)".to_owned());
        if version != schema::SCHEMA_VERSION {
            return Err(ArchiveError::Version(f.display().to_string(), version, schema::SCHEMA_VERSION));
        }
    }
    // Partition columns from the first file's path (every file of one archive has the same).
    let rel = first.strip_prefix(root).unwrap_or(first);
    let cols: Vec<(String, DataType)> = rel
        .parent()
        .into_iter()
        .flat_map(|p| p.components())
        .filter_map(|c| c.as_os_str().to_str().and_then(|s| s.split_once('=')).map(|(k, _)| (k.to_owned(), DataType::Utf8)))
        .collect();
    let abs = std::fs::canonicalize(root).map_err(|e| ArchiveError::Io(shown.clone(), e))?;
    let url = ListingTableUrl::parse(format!("{}/", abs.display())).map_err(|e| ArchiveError::DataFusion(shown.clone(), e))?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet").with_table_partition_cols(cols);
    let config = ListingTableConfig::new(url).with_listing_options(options).with_schema(schema::schema());
    let table = ListingTable::try_new(config).map_err(|e| ArchiveError::DataFusion(shown.clone(), e))?;
    ctx.register_table(name, Arc::new(table)).map_err(|e| ArchiveError::DataFusion(shown, e))?;
    Ok(())
}
