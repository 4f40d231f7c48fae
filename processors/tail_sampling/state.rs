//! `state_dir`: held traces and decision caches written at shutdown, read at the next start.
//!
//! One file per decider, `<state_dir>/<processor>.shard-<n>.tailsampling`, written to a
//! temporary name, synced, then renamed, so a reader sees a whole file or none (a decider whose
//! file cannot be written decides its traces instead). The next start reads every file of the
//! processor, whatever its number of shards then, and deals traces and cached decisions to its
//! deciders by trace id. Layout (little-endian):
//!
//! ```text
//! "TPTS" 0x02
//! u32 policies, then each name (u16 length, bytes)   -- so cached decisions keep their policy by name
//! u64 traces,   then each: id [16], age_ms u64, len u32, TracesData [len]
//! u64 sampled,  then each: fingerprint u64, policy u16 (index in the list above, or 0xffff), probability f32, threshold u64
//! u64 not-sampled, then each: fingerprint u64
//! u64 FNV-1a of everything before it
//! ```
//!
//! A file that is truncated, corrupt or fails its checksum is moved aside (`.corrupt`), counted
//! in the log, and the processor starts empty: never a panic, never half a state. The file is
//! removed once read, so a second start does not take the same traces twice.

use std::path::{Path, PathBuf};

use super::policy::fnv1a;
use super::trace::TraceId;

const MAGIC: &[u8; 5] = b"TPTS\x02";

/// A held trace, as saved.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedTrace {
    /// Its id.
    pub id: TraceId,
    /// How long it had been held, in milliseconds.
    pub age_ms: u64,
    /// Its spans as one `TracesData`.
    pub data: Vec<u8>,
}

/// Everything a processor saves.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Saved {
    /// Names of the policies when saved.
    pub policies: Vec<String>,
    /// Held traces.
    pub traces: Vec<SavedTrace>,
    /// Sampled cache: fingerprint, policy index (into `policies`), probability, consistent
    /// threshold (0: none).
    pub sampled: Vec<(u64, u16, f32, u64)>,
    /// Not-sampled cache.
    pub not_sampled: Vec<u64>,
}

/// Why a state file was not read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing failed.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a whole state file.
    #[error("state file {path} is corrupt: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
}

fn prefix(name: &str) -> String {
    let safe: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    format!("{safe}.shard-")
}

/// The state file of decider `shard` of processor `name` in `dir`.
pub fn path(dir: &Path, name: &str, shard: usize) -> PathBuf {
    dir.join(format!("{}{shard}.tailsampling", prefix(name)))
}

impl Saved {
    /// Encodes the state.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.policies.len() as u32).to_le_bytes());
        for p in &self.policies {
            let b = &p.as_bytes()[..p.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(b.len() as u16).to_le_bytes());
            out.extend_from_slice(b);
        }
        out.extend_from_slice(&(self.traces.len() as u64).to_le_bytes());
        for t in &self.traces {
            out.extend_from_slice(&t.id);
            out.extend_from_slice(&t.age_ms.to_le_bytes());
            out.extend_from_slice(&(t.data.len() as u32).to_le_bytes());
            out.extend_from_slice(&t.data);
        }
        out.extend_from_slice(&(self.sampled.len() as u64).to_le_bytes());
        for (fp, p, prob, th) in &self.sampled {
            out.extend_from_slice(&fp.to_le_bytes());
            out.extend_from_slice(&p.to_le_bytes());
            out.extend_from_slice(&prob.to_le_bytes());
            out.extend_from_slice(&th.to_le_bytes());
        }
        out.extend_from_slice(&(self.not_sampled.len() as u64).to_le_bytes());
        for fp in &self.not_sampled {
            out.extend_from_slice(&fp.to_le_bytes());
        }
        let sum = fnv1a(&[], &out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Decodes a state; `None` with what is wrong when the bytes are not a whole state.
    pub fn decode(b: &[u8]) -> Result<Saved, &'static str> {
        if b.len() < MAGIC.len() + 8 || &b[..MAGIC.len()] != MAGIC {
            return Err("not a tail-sampling state file (bad magic)");
        }
        let (body, sum) = b.split_at(b.len() - 8);
        if fnv1a(&[], body) != u64::from_le_bytes(sum.try_into().expect("8 bytes")) {
            return Err("checksum mismatch (torn or altered)");
        }
        let mut r = Cursor { b: body, at: MAGIC.len() };
        let mut s = Saved::default();
        let n = r.u32()? as usize;
        for _ in 0..n {
            let len = r.u16()? as usize;
            s.policies.push(String::from_utf8(r.take(len)?.to_vec()).map_err(|_| "policy name not UTF-8")?);
        }
        let n = r.count(16 + 8 + 4)?;
        for _ in 0..n {
            let id: TraceId = r.take(16)?.try_into().expect("16 bytes");
            let age_ms = r.u64()?;
            let len = r.u32()? as usize;
            s.traces.push(SavedTrace { id, age_ms, data: r.take(len)?.to_vec() });
        }
        let n = r.count(22)?;
        for _ in 0..n {
            let (fp, p) = (r.u64()?, r.u16()?);
            let prob = f32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes"));
            s.sampled.push((fp, p, prob, r.u64()?));
        }
        let n = r.count(8)?;
        for _ in 0..n {
            s.not_sampled.push(r.u64()?);
        }
        if r.at != body.len() {
            return Err("trailing bytes");
        }
        Ok(s)
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len()).ok_or("truncated")?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, &'static str> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    /// A count of records of at least `min` bytes each, checked against what is left (a
    /// hostile count cannot make us allocate).
    fn count(&mut self, min: usize) -> Result<usize, &'static str> {
        let n = self.u64()?;
        if n > ((self.b.len() - self.at) / min) as u64 {
            return Err("record count beyond the file");
        }
        Ok(n as usize)
    }
}

/// Writes a decider's state atomically (temporary file, fsync, rename).
pub fn write(dir: &Path, name: &str, shard: usize, s: &Saved) -> Result<PathBuf, StateError> {
    let p = path(dir, name, shard);
    let io = |source| StateError::Io { path: p.clone(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = p.with_extension("tailsampling.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(|source| StateError::Io { path: tmp.clone(), source })?;
        f.write_all(&s.encode()).map_err(|source| StateError::Io { path: tmp.clone(), source })?;
        f.sync_all().map_err(|source| StateError::Io { path: tmp.clone(), source })?;
    }
    std::fs::rename(&tmp, &p).map_err(io)?;
    Ok(p)
}

/// Reads and removes every state file of processor `name`. A corrupt file is moved aside and
/// reported; the others are still read.
pub fn take_all(dir: &Path, name: &str) -> (Vec<Saved>, Vec<StateError>) {
    let (mut out, mut errors) = (Vec::new(), Vec::new());
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (out, errors),
        Err(source) => {
            errors.push(StateError::Io { path: dir.to_owned(), source });
            return (out, errors);
        }
    };
    let prefix = prefix(name);
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|f| f.to_str()).is_some_and(|f| f.starts_with(&prefix) && f.ends_with(".tailsampling")))
        .collect();
    files.sort();
    for p in files {
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(source) => {
                errors.push(StateError::Io { path: p, source });
                continue;
            }
        };
        match Saved::decode(&bytes) {
            Ok(s) => match std::fs::remove_file(&p) {
                Ok(()) => out.push(s),
                Err(source) => errors.push(StateError::Io { path: p, source }),
            },
            Err(why) => {
                let _ = std::fs::rename(&p, p.with_extension("tailsampling.corrupt"));
                errors.push(StateError::Corrupt { path: p, why });
            }
        }
    }
    (out, errors)
}
