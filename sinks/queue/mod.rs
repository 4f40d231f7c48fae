//! A sink's durable queue: batches kept on disk between the sink's input and its export workers,
//! so that what a sink accepted survives a restart, a kill -9 or an upstream outage longer than
//! memory can hold (`queue.storage` on the `otlp` sink).
//!
//! The store is [`redb`] (pure Rust, copy-on-write B-trees, checksummed commits, crash-safe by
//! design) rather than a hand-written segment log. One table maps a record id (ascending, so ids
//! are the delivery order) to a record: a CRC-32 of the rest, the span count, and the batch as one
//! `TracesData` message. Appends are grouped (one durable commit for every batch that is waiting
//! when the writer gets to them); removals after delivery are cheap, non-durable commits made
//! durable by the next append or by [`DiskQueue::sync`] at shutdown, so a crash can deliver a
//! record twice, never lose one.
//!
//! Damage never blocks a start: a record whose CRC does not match is counted and deleted, and the
//! records after it are delivered; a file redb cannot open at all (truncated, overwritten) is
//! counted as one corrupt record and replaced by a new one holding every intact record found in
//! it (each record starts with a magic and carries its id, length and CRC, so it is found and
//! checked without redb).

pub mod driver;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
/// Marks a record's start, so records can be salvaged from a file redb cannot open.
const MAGIC: &[u8; 8] = b"TPQREC01";
/// Magic, CRC-32 of what follows it, id, span count and payload length before the payload.
const HEADER: usize = 8 + 4 + 8 + 4 + 4;
/// redb's page cache. Each record is written once and read back once, so a cache buys little;
/// redb's default (1 GiB) would let the queue's memory grow with its backlog.
const CACHE_BYTES: usize = 16 << 20;

fn create(path: &Path) -> Result<Database, redb::DatabaseError> {
    Database::builder().set_cache_size(CACHE_BYTES).create(path)
}

/// The file inside the storage directory.
pub const FILE_NAME: &str = "queue.redb";
/// A ballast file beside it: given back to the filesystem when the disk fills, so that removing
/// delivered records (a copy-on-write commit needs a few fresh pages) can still make room.
pub const RESERVE_NAME: &str = "queue.reserve";
const RESERVE_BYTES: usize = 1 << 20;

/// `storage:` settings of a sink's durable queue.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Directory of the queue file (created if missing); one per sink.
    pub path: std::path::PathBuf,
    /// Capacity: the records' encoded size (default 1GiB). The sink's `when_full` applies beyond
    /// it (block, or drop and count).
    #[serde(default = "default_storage_bytes")]
    pub max_bytes: tracepipe_config::ByteSize,
}

impl StorageConfig {
    /// The checks both sinks make (`at`: where the sink's `queue:` is).
    pub fn check(&self, file: &str, at: tracepipe_config::Pos, errors: &mut Vec<tracepipe_config::ConfigError>) {
        if self.path.as_os_str().is_empty() {
            errors.push(tracepipe_config::ConfigError::new(file, at, "queue.storage: path is required"));
        }
        if self.max_bytes.get() < 1024 * 1024 {
            errors.push(tracepipe_config::ConfigError::new(file, at, "queue.storage: max_bytes must be at least 1MiB"));
        }
    }

    /// Opens the queue off the reactor, at build time (so a bad path fails the start), with the
    /// driver settings for sink `name`.
    pub async fn open(&self, name: &str, drop_newest: bool, consumers: usize) -> Result<(Opened, driver::Settings), String> {
        let dir = self.path.clone();
        let opened = tokio::task::spawn_blocking(move || DiskQueue::open(&dir)).await.map_err(|e| format!("disk queue: {e}"))?.map_err(|e| e.to_string())?;
        Ok((opened, driver::Settings { name: name.to_owned(), max_bytes: self.max_bytes.get(), drop_newest, consumers }))
    }
}

fn default_storage_bytes() -> tracepipe_config::ByteSize {
    tracepipe_config::ByteSize::mib(1024)
}

/// A queue operation that failed (disk full, I/O error, a file that is not a queue).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// redb reported an error.
    #[error("queue storage: {0}")]
    Store(#[from] redb::Error),
    /// The directory could not be created or the damaged file moved aside.
    #[error("queue storage {path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn store<E: Into<redb::Error>>(e: E) -> QueueError {
    QueueError::Store(e.into())
}

/// A record waiting to be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// Its id (delivery order).
    pub id: u64,
    /// Spans in it.
    pub spans: u32,
    /// Its payload size in bytes.
    pub bytes: u64,
}

/// What reading a record found.
#[derive(Debug, PartialEq)]
pub enum Read {
    /// The record, intact: span count and payload.
    Record(u32, Bytes),
    /// The record's CRC does not match (counted by the caller, then removed).
    Corrupt,
    /// No such record.
    Missing,
}

/// What [`DiskQueue::open`] found.
pub struct Opened {
    /// The queue.
    pub queue: DiskQueue,
    /// Records left by an earlier run, in delivery order.
    pub pending: Vec<Pending>,
    /// Damaged records deleted (or 1 for a file moved aside).
    pub corrupt: u64,
    /// The id for the next append.
    pub next_id: u64,
}

/// The on-disk queue. Every method does blocking I/O: call from `spawn_blocking`.
pub struct DiskQueue {
    /// `None` only between dropping a database that saw an I/O error and opening it again.
    db: std::sync::RwLock<Option<Database>>,
    path: PathBuf,
    /// Set by an I/O error, cleared once the ballast file can be written again. While set,
    /// removals are durable commits: redb frees pages only at durable commits, so on a full disk
    /// the non-durable removals would never make room for the append that waits.
    low_space: std::sync::atomic::AtomicBool,
    /// The ballast file ([`RESERVE_NAME`]).
    reserve: PathBuf,
    /// Ids removed by non-durable commits since the last durable one. Reopening after an I/O
    /// error goes back to that durable commit and brings them back; the driver has forgotten
    /// them, so they would sit in the file (on a full disk: for good, and every append fails).
    /// They are removed again, durably, right after the reopen.
    unsynced: std::sync::Mutex<Vec<u64>>,
}

fn encode(id: u64, spans: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + payload.len());
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(&spans.to_le_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    v.extend_from_slice(payload);
    let crc = crc32fast::hash(&v[12..]);
    v[8..12].copy_from_slice(&crc.to_le_bytes());
    v
}

/// A record's (id, spans, payload) if `v` starts with an intact one.
fn decode(v: &[u8]) -> Option<(u64, u32, &[u8])> {
    if v.len() < HEADER || &v[..8] != MAGIC {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes(v[i..i + 4].try_into().expect("4 bytes"));
    let len = u32_at(24) as usize;
    let end = HEADER.checked_add(len)?;
    if v.len() < end || crc32fast::hash(&v[12..end]) != u32_at(8) {
        return None;
    }
    Some((u64::from_le_bytes(v[12..20].try_into().expect("8 bytes")), u32_at(20), &v[HEADER..end]))
}

/// The intact records found anywhere in `bytes` (a file redb cannot open), by id.
fn salvage(bytes: &[u8]) -> std::collections::BTreeMap<u64, (u32, Bytes)> {
    let mut found = std::collections::BTreeMap::new();
    let mut at = 0;
    while let Some(k) = bytes[at..].windows(MAGIC.len()).position(|w| w == MAGIC) {
        let start = at + k;
        if let Some((id, spans, payload)) = decode(&bytes[start..]) {
            found.insert(id, (spans, Bytes::copy_from_slice(payload)));
            at = start + HEADER + payload.len();
        } else {
            at = start + 1;
        }
    }
    found
}

impl DiskQueue {
    /// Opens (or creates) the queue in directory `dir`, checks every record left in it, deletes
    /// the damaged ones, and returns the rest in delivery order.
    pub fn open(dir: &Path) -> Result<Opened, QueueError> {
        std::fs::create_dir_all(dir).map_err(|source| QueueError::Io { path: dir.to_owned(), source })?;
        let path = dir.join(FILE_NAME);
        let mut corrupt = 0;
        let mut salvaged = std::collections::BTreeMap::new();
        let db = match create(&path) {
            Ok(db) => db,
            Err(e) => {
                // Not a queue redb can open (torn, truncated, overwritten): keep every intact
                // record it still holds, in a new file.
                let aside = dir.join(format!("{FILE_NAME}.corrupt-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)));
                std::fs::rename(&path, &aside).map_err(|source| QueueError::Io { path: path.clone(), source })?;
                let old = std::fs::read(&aside).map_err(|source| QueueError::Io { path: aside.clone(), source })?;
                salvaged = salvage(&old);
                corrupt += 1;
                tracing::error!(message = "Queue file cannot be opened; its intact records are kept in a new file.", path = %path.display(), error = %e, salvaged = salvaged.len());
                let _ = std::fs::remove_file(&aside);
                create(&path).map_err(store)?
            }
        };
        let q = DiskQueue { db: std::sync::RwLock::new(Some(db)), path, low_space: false.into(), reserve: dir.join(RESERVE_NAME), unsynced: Default::default() };
        q.refill_reserve();
        if !salvaged.is_empty() {
            let db = q.db.read().expect("queue db");
            let tx = db.as_ref().expect("open").begin_write().map_err(store)?;
            {
                let mut table = tx.open_table(RECORDS).map_err(store)?;
                for (id, (spans, payload)) in &salvaged {
                    table.insert(*id, encode(*id, *spans, payload).as_slice()).map_err(store)?;
                }
            }
            tx.commit().map_err(store)?;
        }
        let mut pending = Vec::new();
        let mut bad = Vec::new();
        {
            let db = q.db.read().expect("queue db");
            let tx = db.as_ref().expect("open").begin_write().map_err(store)?;
            {
                let table = tx.open_table(RECORDS).map_err(store)?;
                for entry in table.iter().map_err(store)? {
                    let (k, v) = match entry {
                        Ok(kv) => kv,
                        Err(e) => {
                            // A page redb cannot read: what it held is lost; count it once.
                            tracing::error!(message = "Queue file damaged; unreadable records skipped.", path = %q.path.display(), error = %e);
                            corrupt += 1;
                            break;
                        }
                    };
                    match decode(v.value()) {
                        Some((id, spans, payload)) if id == k.value() => pending.push(Pending { id, spans, bytes: payload.len() as u64 }),
                        _ => bad.push(k.value()),
                    }
                }
            }
            tx.commit().map_err(store)?;
        }
        corrupt += bad.len() as u64;
        if !bad.is_empty() {
            tracing::error!(message = "Damaged queue records deleted.", path = %q.path.display(), records = bad.len());
            q.remove(&bad)?;
            q.sync()?;
        }
        let next_id = pending.last().map(|p| p.id + 1).unwrap_or(0).max(bad.iter().max().map(|b| b + 1).unwrap_or(0));
        Ok(Opened { queue: q, pending, corrupt, next_id })
    }

    /// Runs `f` on the database. After an I/O error (a full disk, most often) redb refuses every
    /// later operation until the file is opened again, so the database is reopened (its last
    /// durable commit is intact) and the error returned; the caller retries.
    fn with_db<T>(&self, f: impl FnOnce(&Database) -> Result<T, QueueError>) -> Result<T, QueueError> {
        let result = {
            let db = self.db.read().expect("queue db");
            match db.as_ref() {
                Some(db) => f(db),
                None => Err(QueueError::Store(redb::Error::PreviousIo)),
            }
        };
        if let Err(QueueError::Store(redb::Error::Io(_) | redb::Error::PreviousIo)) = &result {
            self.low_space.store(true, std::sync::atomic::Ordering::Relaxed);
            // Room for the removals that will make room (no-op once it is gone).
            if std::fs::remove_file(&self.reserve).is_ok() {
                tracing::warn!(message = "Disk queue write failed; its reserve file is given back so delivered batches can still be removed.", path = %self.reserve.display());
            }
            let mut db = self.db.write().expect("queue db");
            // Another caller may have reopened it already; a second reopen costs a little, no harm.
            drop(db.take());
            match create(&self.path) {
                Ok(fresh) => {
                    let mut lost = self.unsynced.lock().expect("unsynced");
                    if !lost.is_empty() {
                        // Kept for the next reopen when this fails too (the database then needs
                        // one, and this runs again).
                        match Self::remove_in(&fresh, &lost, true) {
                            Ok(()) => lost.clear(),
                            Err(e) => tracing::warn!(message = "Disk queue could not remove again what the reopen brought back; will retry.", records = lost.len(), error = %e),
                        }
                    }
                    *db = Some(fresh);
                }
                Err(e) => tracing::warn!(message = "Disk queue reopen after an I/O error failed; will retry.", path = %self.path.display(), error = %e),
            }
        }
        result
    }

    /// Appends records with ids `first_id..`, durably (one commit, synced to disk).
    pub fn append(&self, first_id: u64, records: &[(u32, Bytes)]) -> Result<(), QueueError> {
        let r = self.with_db(|db| Self::append_in(db, first_id, records));
        if r.is_ok() {
            self.synced();
        }
        r
    }

    /// A durable commit went through: every earlier removal is on disk.
    fn synced(&self) {
        self.unsynced.lock().expect("unsynced").clear();
    }

    /// True from a failed write until the ballast file could be written again: removals are
    /// durable, and the driver appends only into room removals made (keeping a margin for them).
    pub fn low_space(&self) -> bool {
        self.low_space.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Tries to write the ballast again; leaves low-space mode when it is there.
    pub fn try_leave_low_space(&self) -> bool {
        self.refill_reserve();
        if self.reserve.exists() {
            self.low_space.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        !self.low_space()
    }

    /// Writes the ballast file if it is missing (best effort: on a full disk it is left out).
    fn refill_reserve(&self) {
        if self.reserve.exists() {
            return;
        }
        let written = std::fs::File::create(&self.reserve).and_then(|mut f| {
            use std::io::Write;
            f.write_all(&vec![0u8; RESERVE_BYTES])?;
            f.sync_all()
        });
        if written.is_err() {
            let _ = std::fs::remove_file(&self.reserve);
        }
    }

    fn append_in(db: &Database, first_id: u64, records: &[(u32, Bytes)]) -> Result<(), QueueError> {
        let tx = db.begin_write().map_err(store)?;
        {
            let mut table = tx.open_table(RECORDS).map_err(store)?;
            for (k, (spans, payload)) in records.iter().enumerate() {
                let id = first_id + k as u64;
                table.insert(id, encode(id, *spans, payload).as_slice()).map_err(store)?;
            }
        }
        tx.commit().map_err(store)
    }

    /// Reads one record.
    pub fn read(&self, id: u64) -> Result<Read, QueueError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(store)?;
            let table = tx.open_table(RECORDS).map_err(store)?;
            let Some(v) = table.get(id).map_err(store)? else { return Ok(Read::Missing) };
            Ok(match decode(v.value()) {
                Some((got, spans, payload)) if got == id => Read::Record(spans, Bytes::copy_from_slice(payload)),
                _ => Read::Corrupt,
            })
        })
    }

    /// Removes delivered (or counted) records. Not synced (unless a write failed since the last
    /// append): a crash before the next durable commit delivers them again.
    pub fn remove(&self, ids: &[u64]) -> Result<(), QueueError> {
        let durable = self.low_space.load(std::sync::atomic::Ordering::Relaxed);
        if !durable {
            // Noted before the commit: removing them again after a reopen is right whether or
            // not this commit went through (they are delivered either way).
            self.unsynced.lock().expect("unsynced").extend_from_slice(ids);
        }
        let r = self.with_db(|db| Self::remove_in(db, ids, durable));
        if r.is_ok() && durable {
            self.synced();
        }
        r
    }

    fn remove_in(db: &Database, ids: &[u64], durable: bool) -> Result<(), QueueError> {
        let mut tx = db.begin_write().map_err(store)?;
        if !durable {
            tx.set_durability(Durability::None).map_err(store)?;
        }
        {
            let mut table = tx.open_table(RECORDS).map_err(store)?;
            for id in ids {
                table.remove(id).map_err(store)?;
            }
        }
        tx.commit().map_err(store)
    }

    /// Makes every earlier commit durable.
    pub fn sync(&self) -> Result<(), QueueError> {
        let r = self.with_db(|db| {
            let tx = db.begin_write().map_err(store)?;
            tx.commit().map_err(store)
        });
        if r.is_ok() {
            self.synced();
        }
        r
    }

    /// The queue file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
