//! Which offsets may be committed: a record's offset is committable only when it and every
//! earlier record of its partition have been delivered (or given up on and counted) by the
//! graph, however out of order the sinks finish. Pure bookkeeping, tested on its own.
//!
//! Each partition's state belongs to one assignment (a generation): when a partition comes back
//! after a revocation, its bookkeeping starts afresh. A record handed back undelivered (its
//! partition was revoked, or the receiver is stopping, while a processor held it) is forgotten
//! but bars every later offset from commit, so the next owner reads it again.
//!
//! A Kafka commit is a prefix: everything before one offset. Records finish out of order (a
//! tail-sampling processor holds some for seconds while later ones are decided and delivered),
//! so the tracker also keeps the offsets done *past* the committable prefix, as ranges
//! ([`Progress`]). With `progress_topic` the receiver writes them out, and a replica taking the
//! partition over after a crash or rebalance skips them ([`OffsetTracker::resume`]) instead of
//! reading them again — which would deliver them twice, or decide a request whose other records
//! were already delivered on the part it re-read.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

/// A partition's progress: every offset below `next` is done, and so is every offset in the
/// inclusive ranges of `done` (sorted, disjoint, all at or above `next`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub next: i64,
    pub done: Vec<(i64, i64)>,
}

/// The most ranges one progress record carries: the lowest are kept, the rest left out (a new
/// owner then reads those records again — duplicates, never a loss). ~20 bytes each in JSON, so
/// a record stays near 80 KB, well inside Kafka's default 1 MB message limit.
pub const MAX_PROGRESS_RANGES: usize = 4096;

impl Progress {
    /// Checks a progress record read back: `next` not negative and not past `end` (the
    /// partition's high watermark: records not yet written cannot be done — a record from an
    /// earlier topic of the same name would otherwise skip new records), ranges sorted,
    /// disjoint, at or above `next` and below `end`, at most [`MAX_PROGRESS_RANGES`]. A record
    /// that fails is not used: skipping on a wrong record loses spans; not skipping only
    /// delivers again.
    pub fn check(&self, end: i64) -> Result<(), String> {
        if self.next < 0 || self.next > end {
            return Err(format!("next {} is outside the partition's offsets 0..={end}", self.next));
        }
        if self.done.len() > MAX_PROGRESS_RANGES {
            return Err(format!("{} ranges, more than {MAX_PROGRESS_RANGES}", self.done.len()));
        }
        let mut floor = self.next;
        for &(a, b) in &self.done {
            if a < floor || b < a || b >= end {
                return Err(format!("range {a}..={b} is out of order, overlapping, below next {} or past the partition's end {end}", self.next));
            }
            floor = b.saturating_add(1);
        }
        Ok(())
    }

    /// True when `offset` is known done.
    pub fn contains(&self, offset: i64) -> bool {
        offset < self.next || self.done.binary_search_by(|&(a, b)| if b < offset { std::cmp::Ordering::Less } else if a > offset { std::cmp::Ordering::Greater } else { std::cmp::Ordering::Equal }).is_ok()
    }
}

/// Disjoint inclusive ranges of offsets, merged as they are added.
#[derive(Debug, Default, Clone)]
struct Ranges(BTreeMap<i64, i64>);

impl Ranges {
    fn insert(&mut self, offset: i64) {
        self.insert_range(offset, offset);
    }

    fn insert_range(&mut self, mut start: i64, mut end: i64) {
        // Merge with a range that ends at or just before `start`...
        if let Some((&a, &b)) = self.0.range(..=start).next_back()
            && b >= start - 1
        {
            if b >= end {
                return;
            }
            start = a;
            self.0.remove(&a);
        }
        // ...and with every range that starts inside or just after it.
        while let Some((&a, &b)) = self.0.range(start..=end.saturating_add(1)).next() {
            end = end.max(b);
            self.0.remove(&a);
        }
        self.0.insert(start, end);
    }

    /// Forgets every offset at or below `offset`.
    fn remove_through(&mut self, offset: i64) {
        while let Some((&a, &b)) = self.0.first_key_value() {
            if a > offset {
                break;
            }
            self.0.remove(&a);
            if b > offset {
                self.0.insert(offset + 1, b);
                break;
            }
        }
    }

    fn to_vec(&self) -> Vec<(i64, i64)> {
        self.0.iter().map(|(&a, &b)| (a, b)).collect()
    }
}

#[derive(Debug, Default)]
struct Partition {
    /// Consumed, not yet done.
    pending: BTreeSet<i64>,
    /// Highest offset done so far.
    highest_done: Option<i64>,
    /// Last offset reported as committable; starts just before the first offset consumed.
    reported: Option<i64>,
    /// Highest offset consumed.
    highest_begun: Option<i64>,
    /// The assignment this state belongs to.
    generation: u64,
    /// Lowest offset handed back undelivered: nothing at or after it is committed.
    barrier: Option<i64>,
    /// Offsets done (here, or by a previous owner) past `reported`.
    done: Ranges,
    /// A previous owner's progress, for the skip check before anything is read here.
    resumed: Option<Progress>,
}

/// Per-partition bookkeeping of consumed and finished records.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<i32, Partition>,
    /// Progress read from `progress_topic` at an assignment, applied to the partition's next
    /// generation.
    resumed: HashMap<i32, Progress>,
}

impl OffsetTracker {
    /// True when this consumer already took the record: a partition that was revoked and given
    /// back restarts from the last commit, and what this process still holds or already
    /// delivered must not enter the graph twice.
    pub fn taken(&self, partition: i32, offset: i64, generation: u64) -> bool {
        self.partitions.get(&partition).filter(|p| p.generation == generation).and_then(|p| p.highest_begun).is_some_and(|h| offset <= h)
    }

    /// The partition was just assigned and a previous owner had done `progress`: its next
    /// generation skips those offsets (see [`OffsetTracker::already_done`]) and reports them
    /// done in its own progress until they are committed.
    pub fn resume(&mut self, partition: i32, progress: Progress) {
        self.resumed.insert(partition, progress);
    }

    /// True when a previous owner already finished this record (delivered it, or dropped it by a
    /// decision): the caller skips it and reports it done here ([`OffsetTracker::begin`] then
    /// [`OffsetTracker::done`]), so the commit moves past it.
    pub fn already_done(&mut self, partition: i32, offset: i64, generation: u64) -> bool {
        self.state(partition, generation).resumed.as_ref().is_some_and(|r| r.contains(offset))
    }

    /// The partition's state in `generation`, fresh (with any resumed progress) when that is new.
    fn state(&mut self, partition: i32, generation: u64) -> &mut Partition {
        let p = self.partitions.entry(partition).or_default();
        if p.generation != generation {
            let resumed = self.resumed.remove(&partition);
            let mut done = Ranges::default();
            if let Some(r) = &resumed {
                if r.next > 0 {
                    done.insert_range(0, r.next - 1);
                }
                for &(a, b) in &r.done {
                    done.insert_range(a, b);
                }
            }
            *p = Partition { generation, done, resumed, ..Partition::default() };
        }
        p
    }

    /// A record was consumed and handed to the graph, in assignment `generation`.
    pub fn begin(&mut self, partition: i32, offset: i64, generation: u64) {
        let p = self.state(partition, generation);
        if p.reported.is_none() && p.pending.is_empty() {
            // Nothing before the first record consumed here is ours to commit.
            p.reported = Some(offset - 1);
        }
        p.pending.insert(offset);
        p.highest_begun = Some(p.highest_begun.map_or(offset, |h| h.max(offset)));
    }

    /// A record is done. Returns the highest offset that may now be committed (every offset up
    /// to it is done) when that moved forward.
    pub fn done(&mut self, partition: i32, offset: i64, generation: u64) -> Option<i64> {
        let p = self.partitions.get_mut(&partition).filter(|p| p.generation == generation)?;
        if !p.pending.remove(&offset) {
            return None;
        }
        p.highest_done = Some(p.highest_done.map_or(offset, |h| h.max(offset)));
        p.done.insert(offset);
        let committable = match p.pending.first() {
            Some(&first) => first - 1,
            None => p.highest_done?,
        };
        let committable = p.barrier.map_or(committable, |b| committable.min(b - 1));
        if p.reported.is_some_and(|r| r >= committable) {
            return None;
        }
        p.reported = Some(committable);
        p.done.remove_through(committable);
        Some(committable)
    }

    /// What is done in `partition`'s `generation`: the committable prefix and the offsets done
    /// past it (a previous owner's included). None before anything was read in it.
    pub fn progress(&self, partition: i32, generation: u64) -> Option<Progress> {
        let p = self.partitions.get(&partition).filter(|p| p.generation == generation)?;
        let next = p.reported? + 1;
        let done = p.done.to_vec().into_iter().filter(|&(_, b)| b >= next).map(|(a, b)| (a.max(next), b)).take(MAX_PROGRESS_RANGES).collect();
        Some(Progress { next, done })
    }

    /// A record was handed back undelivered: it no longer counts as pending, and neither it nor
    /// anything after it is committed in this generation.
    pub fn handed_back(&mut self, partition: i32, offset: i64, generation: u64) {
        if let Some(p) = self.partitions.get_mut(&partition).filter(|p| p.generation == generation)
            && p.pending.remove(&offset)
        {
            p.barrier = Some(p.barrier.map_or(offset, |b| b.min(offset)));
        }
    }

    /// Records consumed and not yet done (nor handed back) in `partitions`.
    pub fn pending_in(&self, partitions: &[i32]) -> usize {
        partitions.iter().filter_map(|p| self.partitions.get(p)).map(|p| p.pending.len()).sum()
    }

    /// Records consumed and not yet done, over all partitions.
    pub fn pending(&self) -> usize {
        self.partitions.values().map(|p| p.pending.len()).sum()
    }
}
