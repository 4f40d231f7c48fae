//! Where archive files go and how they appear: `ROOT/date=YYYY-MM-DD/hour=HH/part-….parquet`
//! (or `date=…/` only, or flat), each written under a hidden temporary name
//! (`.part-….parquet.tmp`) and renamed when closed, so readers never see a half-written file.
//! On start, [`recover`] finishes what a crash interrupted: a temporary file with a complete
//! Parquet footer (closed, not yet renamed) is renamed; one without (killed mid-write) is moved
//! to `ROOT/_quarantine/` and reported, never served.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
use serde::Deserialize;

/// How files are spread over directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Partition {
    /// `date=YYYY-MM-DD/`
    Day,
    /// `date=YYYY-MM-DD/hour=HH/` (default)
    #[default]
    Hour,
    /// All files in the root.
    None,
}

/// The partition directory (relative) of a span starting at `nanos` since the epoch (UTC).
pub fn partition_dir(p: Partition, nanos: u64) -> PathBuf {
    let secs = (nanos / 1_000_000_000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    match p {
        Partition::None => PathBuf::new(),
        Partition::Day => PathBuf::from(format!("date={y:04}-{m:02}-{d:02}")),
        Partition::Hour => PathBuf::from(format!("date={y:04}-{m:02}-{d:02}")).join(format!("hour={:02}", rem / 3600)),
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A new file's final and temporary paths inside `dir`: unique per process and call.
pub fn new_file(dir: &Path) -> (PathBuf, PathBuf) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let stem = format!("part-{}-{}-{}", now.as_micros(), std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
    (dir.join(format!("{stem}.parquet")), dir.join(format!(".{stem}.parquet.tmp")))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, want: &dyn Fn(&str) -> bool) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if e.file_type()?.is_dir() {
            if !name.starts_with('_') && !name.starts_with('.') {
                walk(&e.path(), out, want)?;
            }
        } else if want(&name) {
            out.push(e.path());
        }
    }
    Ok(())
}

/// Closed archive files under `root`, sorted by path.
pub fn closed_files(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    walk(root, &mut out, &|n| n.ends_with(".parquet") && !n.starts_with('.'))?;
    out.sort();
    Ok(out)
}

/// What [`recover`] did with one leftover temporary file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// Complete (footer present): renamed to its final name; holds this many rows.
    Renamed { from: PathBuf, to: PathBuf, rows: i64 },
    /// Incomplete: moved aside, not served.
    Quarantined { from: PathBuf, to: PathBuf, reason: String },
}

/// Finishes or sets aside the temporary files a crash left under `root`.
pub fn recover(root: &Path) -> std::io::Result<Vec<Recovered>> {
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut tmps = Vec::new();
    walk(root, &mut tmps, &|n| n.starts_with('.') && n.ends_with(".parquet.tmp"))?;
    tmps.sort();
    let mut out = Vec::new();
    for from in tmps {
        let name = from.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let check = File::open(&from).map_err(|e| e.to_string()).and_then(|f| SerializedFileReader::new(f).map_err(|e| e.to_string()));
        match check {
            Ok(reader) => {
                let rows = reader.metadata().file_metadata().num_rows();
                let to = from.with_file_name(name.trim_start_matches('.').trim_end_matches(".tmp"));
                std::fs::rename(&from, &to)?;
                out.push(Recovered::Renamed { from, to, rows });
            }
            Err(reason) => {
                let rel = from.strip_prefix(root).unwrap_or(&from).to_path_buf();
                let to = root.join("_quarantine").join(rel);
                if let Some(p) = to.parent() {
                    std::fs::create_dir_all(p)?;
                }
                std::fs::rename(&from, &to)?;
                out.push(Recovered::Quarantined { from, to, reason });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_dirs_are_utc_dates() {
        let t = 1_795_000_000u64 * 1_000_000_000; // 2026-11-18T11:06:40Z
        assert_eq!(partition_dir(Partition::Hour, t), PathBuf::from("date=2026-11-18/hour=11"));
        assert_eq!(partition_dir(Partition::Day, t), PathBuf::from("date=2026-11-18"));
        assert_eq!(partition_dir(Partition::None, t), PathBuf::new());
        assert_eq!(partition_dir(Partition::Hour, 0), PathBuf::from("date=1970-01-01/hour=00"));
        assert_eq!(partition_dir(Partition::Day, 951_782_400 * 1_000_000_000), PathBuf::from("date=2000-02-29"));
    }
}
