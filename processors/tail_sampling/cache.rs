//! Decision caches: trace ids remembered after their decision, so late spans follow it.
//!
//! Both caches keep 64-bit fingerprints of trace ids in two generations: inserts go to the
//! current one; when it holds half the capacity it becomes the old one and the previous old one
//! is forgotten. So between capacity/2 and capacity of the latest decisions are remembered, at
//! about 16 bytes per id (not-sampled) and 32 bytes (sampled, with the deciding policy and its
//! probability) — a million not-sampled ids take about 16 MiB, where a map of full ids and
//! decisions takes several times that.
//!
//! False positives: an id that was never decided matches a fingerprint with probability
//! n / 2^64 (n ids remembered): about 5 × 10^-14 for a million. Such a trace would be treated as
//! late; at that rate it does not happen in practice.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;

/// Fingerprints hash as trace ids do.
type FpBuild = BuildHasherDefault<super::trace::IdHasher>;

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
}

/// Sampled trace ids.
pub struct SampledCache {
    half: usize,
    cur: HashMap<u64, Kept, FpBuild>,
    old: HashMap<u64, Kept, FpBuild>,
}

impl SampledCache {
    /// A cache of about `capacity` ids (0 = off).
    pub fn new(capacity: usize) -> Self {
        SampledCache { half: capacity.div_ceil(2), cur: HashMap::default(), old: HashMap::default() }
    }
    /// The decision on a fingerprint, if remembered.
    pub fn get(&self, fp: u64) -> Option<Kept> {
        self.cur.get(&fp).or_else(|| self.old.get(&fp)).copied()
    }
    /// Remembers a decision.
    pub fn insert(&mut self, fp: u64, k: Kept) {
        if self.half == 0 {
            return;
        }
        if self.cur.len() >= self.half {
            self.old = std::mem::take(&mut self.cur);
        }
        self.cur.insert(fp, k);
    }
    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.cur.len() + self.old.len()
    }
    /// Every entry, oldest generation first.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Kept)> + '_ {
        self.old.iter().chain(self.cur.iter()).map(|(k, v)| (*k, *v))
    }
}

/// Not-sampled (and dropped) trace ids.
pub struct NotSampledCache {
    half: usize,
    cur: HashSet<u64, FpBuild>,
    old: HashSet<u64, FpBuild>,
}

impl NotSampledCache {
    /// A cache of about `capacity` ids (0 = off).
    pub fn new(capacity: usize) -> Self {
        NotSampledCache { half: capacity.div_ceil(2), cur: HashSet::default(), old: HashSet::default() }
    }
    /// True when the fingerprint is remembered.
    pub fn contains(&self, fp: u64) -> bool {
        self.cur.contains(&fp) || self.old.contains(&fp)
    }
    /// Remembers an id.
    pub fn insert(&mut self, fp: u64) {
        if self.half == 0 {
            return;
        }
        if self.cur.len() >= self.half {
            self.old = std::mem::take(&mut self.cur);
        }
        self.cur.insert(fp);
    }
    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.cur.len() + self.old.len()
    }
    /// Every fingerprint, oldest generation first.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.old.iter().chain(self.cur.iter()).copied()
    }
}
