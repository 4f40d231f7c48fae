//! Decision caches: trace ids remembered after their decision, so late spans follow it.
//!
//! Both caches are fixed tables allocated once at their configured size, never grown, never
//! swapped: 64-bit fingerprints of trace ids in buckets of [`WAYS`] slots; a new id takes the
//! oldest slot of its bucket. A sampled entry also keeps the decision (the deciding policy, its
//! probability, the consistent-sampling threshold) as a 2-byte index into the few distinct
//! decisions seen. So an entry costs 8 bytes (not sampled) or 10 (sampled), and the memory is
//! known up front: [`cache_bytes`] is reserved from `max_bytes` (a million not-sampled ids take
//! 8 MB; a map of full ids and decisions, or two generations of hash sets as before, several times
//! that, growing by doublings). The table is zeroed memory: its pages are resident only once used.
//!
//! What is remembered: about the latest `capacity` decisions. An id leaves when [`WAYS`] newer
//! ones have landed in its bucket, which takes `capacity` inserts on average; after
//! `capacity / 2` newer decisions an id is still there with probability ~95% (a bucket receives
//! ≥ 8 of them with Poisson(4) odds).
//!
//! False positives: an id that was never decided matches a fingerprint of its bucket with
//! probability about [`WAYS`] / 2^64 per lookup: such a trace would be treated as late; at that
//! rate it does not happen in practice.

use std::collections::HashMap;

/// Slots per bucket.
pub const WAYS: usize = 8;

/// Bytes a cache of `capacity` ids takes (`sampled` adds the decision index), as reserved from
/// `max_bytes`.
pub fn cache_bytes(capacity: usize, sampled: bool) -> u64 {
    let slots = Table::buckets_for(capacity) * WAYS;
    (slots * (8 + if sampled { 2 } else { 0 }) + slots / WAYS) as u64
}

/// What a sampled trace's late spans carry: the deciding policy and the keep probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kept {
    /// Index of the deciding top-level policy (`u16::MAX`: none recorded).
    pub policy: u16,
    /// Keep probability, NaN when unknown.
    pub probability: f32,
    /// The consistent-sampling threshold it was kept under (0: not consistent sampling).
    pub threshold: u64,
}

impl Kept {
    /// What the decision rested on.
    pub fn basis(&self) -> super::policy::Basis {
        use super::policy::Basis;
        if self.threshold > 0 {
            Basis::Consistent(self.threshold)
        } else if self.probability.is_nan() {
            Basis::Unknown
        } else if self.probability >= 1.0 {
            Basis::Certain
        } else {
            Basis::Independent(f64::from(self.probability))
        }
    }
    fn key(&self) -> (u16, u32, u64) {
        (self.policy, self.probability.to_bits(), self.threshold)
    }
}

/// Fingerprint slots in buckets; 0 marks an empty slot (a fingerprint of 0 is stored as 1).
struct Table {
    fps: Box<[u64]>,
    /// Per bucket: the slot the next new id takes (the oldest).
    next: Box<[u8]>,
    len: usize,
}

impl Table {
    fn buckets_for(capacity: usize) -> usize {
        capacity.div_ceil(WAYS)
    }
    fn new(capacity: usize) -> Table {
        let buckets = Table::buckets_for(capacity);
        // vec![0; n] is calloc'ed: untouched pages cost no memory until ids land there.
        Table { fps: vec![0u64; buckets * WAYS].into_boxed_slice(), next: vec![0u8; buckets].into_boxed_slice(), len: 0 }
    }
    #[inline]
    fn bucket(&self, fp: u64) -> usize {
        // The low half: the high half picks the shard (trace.rs, shard_of_fingerprint).
        (((fp & 0xffff_ffff) * self.next.len() as u64) >> 32) as usize
    }
    #[inline]
    fn find(&self, fp: u64) -> Option<usize> {
        if self.next.is_empty() {
            return None;
        }
        let fp = fp.max(1);
        let b = self.bucket(fp) * WAYS;
        self.fps[b..b + WAYS].iter().position(|&s| s == fp).map(|i| b + i)
    }
    /// The slot of `fp`, taking the bucket's oldest one when it is new; None when off.
    fn insert(&mut self, fp: u64) -> Option<usize> {
        if self.next.is_empty() {
            return None;
        }
        if let Some(i) = self.find(fp) {
            return Some(i);
        }
        let bucket = self.bucket(fp.max(1));
        let slot = usize::from(self.next[bucket]);
        self.next[bucket] = ((slot + 1) % WAYS) as u8;
        let i = bucket * WAYS + slot;
        if self.fps[i] == 0 {
            self.len += 1;
        }
        self.fps[i] = fp.max(1);
        Some(i)
    }
    /// Occupied slots, oldest first within each bucket.
    fn slots(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.next.len()).flat_map(move |b| (0..WAYS).map(move |k| b * WAYS + (usize::from(self.next[b]) + k) % WAYS)).filter(|&i| self.fps[i] != 0)
    }
}

/// Sampled trace ids, with their decision.
pub struct SampledCache {
    table: Table,
    /// Per slot: index into `kept`.
    which: Box<[u16]>,
    /// The distinct decisions (a policy and its probability and threshold), at most 65,535.
    kept: Vec<Kept>,
    index: HashMap<(u16, u32, u64), u16>,
}

impl SampledCache {
    /// A cache of about `capacity` ids (0 = off).
    pub fn new(capacity: usize) -> Self {
        let table = Table::new(capacity);
        let which = vec![0u16; table.fps.len()].into_boxed_slice();
        SampledCache { table, which, kept: Vec::new(), index: HashMap::new() }
    }
    /// The decision on a fingerprint, if remembered.
    pub fn get(&self, fp: u64) -> Option<Kept> {
        self.table.find(fp).map(|i| self.kept[usize::from(self.which[i])])
    }
    /// Remembers a decision. One of more than 65,535 distinct decisions is not remembered (its
    /// late spans are decided as a new trace would be); policies make a handful.
    pub fn insert(&mut self, fp: u64, k: Kept) {
        let idx = match self.index.get(&k.key()) {
            Some(&i) => i,
            None if self.kept.len() < usize::from(u16::MAX) => {
                let i = self.kept.len() as u16;
                self.kept.push(k);
                self.index.insert(k.key(), i);
                i
            }
            None => return,
        };
        if let Some(slot) = self.table.insert(fp) {
            self.which[slot] = idx;
        }
    }
    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.table.len
    }
    /// Every entry, oldest first within each bucket.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Kept)> + '_ {
        self.table.slots().map(|i| (self.table.fps[i], self.kept[usize::from(self.which[i])]))
    }
}

/// Not-sampled (and dropped) trace ids.
pub struct NotSampledCache {
    table: Table,
}

impl NotSampledCache {
    /// A cache of about `capacity` ids (0 = off).
    pub fn new(capacity: usize) -> Self {
        NotSampledCache { table: Table::new(capacity) }
    }
    /// True when the fingerprint is remembered.
    pub fn contains(&self, fp: u64) -> bool {
        self.table.find(fp).is_some()
    }
    /// Remembers an id.
    pub fn insert(&mut self, fp: u64) {
        self.table.insert(fp);
    }
    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.table.len
    }
    /// Every fingerprint, oldest first within each bucket.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.table.slots().map(|i| self.table.fps[i])
    }
}
