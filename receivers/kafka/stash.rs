//! Records a previous owner already finished, kept for a while by key in case a record of the
//! same key that it did *not* finish follows.
//!
//! A request's records can finish apart: one that arrives after the request was decided (a late
//! fragment, which the previous owner's decision caches would have sent after the rest) is left
//! past that owner's progress, while the rest is done. Skipping the done records and reading the
//! late one alone would decide it alone: a request delivered in part, or a fragment of a dropped
//! one kept. So a skipped record's value waits here ([`STASH_WINDOW`], bounded in bytes), and when
//! a record of the same key and partition is read that must be delivered, the stashed ones go
//! into the graph before it: the request is decided again on all it has — as context, decided the
//! way the previous owner went and not delivered again, when its progress said which way that
//! was (`tracepipe_pipeline::replay`); else as ordinary spans (delivered twice, whole, rather
//! than once in part). Pure bookkeeping, tested on its own.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// How long a skipped record is kept for a late record of its key.
pub const STASH_WINDOW: Duration = Duration::from_secs(30);

/// Skipped records by (partition, key), oldest dropped first past the window or the byte bound.
#[derive(Debug)]
pub struct Stash {
    max_bytes: usize,
    bytes: usize,
    seq: u64,
    by_key: HashMap<(i32, Bytes), Vec<(u64, Bytes, Option<bool>)>>,
    /// In arrival order: when, which key, which value.
    order: VecDeque<(Instant, (i32, Bytes), u64)>,
}

impl Stash {
    pub fn new(max_bytes: usize) -> Self {
        Stash { max_bytes, bytes: 0, seq: 0, by_key: HashMap::new(), order: VecDeque::new() }
    }

    /// Keeps a skipped record's value and what became of it at its previous owner (`prior`:
    /// kept, dropped, or not known). One without a key cannot be matched: not kept.
    pub fn keep(&mut self, partition: i32, key: Option<&[u8]>, value: &[u8], prior: Option<bool>, now: Instant) {
        let Some(key) = key.filter(|k| !k.is_empty()) else { return };
        if value.len() > self.max_bytes {
            return;
        }
        let k = (partition, Bytes::copy_from_slice(key));
        self.seq += 1;
        self.bytes += value.len();
        self.by_key.entry(k.clone()).or_default().push((self.seq, Bytes::copy_from_slice(value), prior));
        self.order.push_back((now, k, self.seq));
        self.expire(now);
    }

    /// Drops what is past the window, and the oldest while over the byte bound.
    pub fn expire(&mut self, now: Instant) {
        while let Some((at, _, _)) = self.order.front() {
            if self.bytes <= self.max_bytes && now.saturating_duration_since(*at) < STASH_WINDOW {
                break;
            }
            let (_, k, seq) = self.order.pop_front().expect("front checked");
            // Gone already when `take` handed it out.
            if let Some(v) = self.by_key.get_mut(&k) {
                if let Some(i) = v.iter().position(|(s, _, _)| *s == seq) {
                    self.bytes -= v.remove(i).1.len();
                }
                if v.is_empty() {
                    self.by_key.remove(&k);
                }
            }
        }
    }

    /// The kept values of this key and partition with their prior outcomes, oldest first, no
    /// longer kept.
    pub fn take(&mut self, partition: i32, key: Option<&[u8]>) -> Vec<(Bytes, Option<bool>)> {
        let Some(key) = key.filter(|k| !k.is_empty()) else { return Vec::new() };
        if self.by_key.is_empty() {
            return Vec::new();
        }
        let Some(v) = self.by_key.remove(&(partition, Bytes::copy_from_slice(key))) else { return Vec::new() };
        self.bytes -= v.iter().map(|(_, b, _)| b.len()).sum::<usize>();
        v.into_iter().map(|(_, b, p)| (b, p)).collect()
    }

    /// Bytes kept.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}
