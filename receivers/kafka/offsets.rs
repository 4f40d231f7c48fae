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
/// inclusive ranges of `done` (sorted, disjoint, all at or above `next`). Of those past `next`,
/// the offsets in `kept` were kept (their spans reached a sink, none was dropped by a decision)
/// and those in `dropped` were dropped by a sampling decision (none reached a sink); for the
/// others (a record of mixed fate, or an owner that did not record it) the outcome is unknown.
/// A next owner replays a finished record as context only when its outcome is known (see
/// `tracepipe_pipeline::replay`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub next: i64,
    pub done: Vec<(i64, i64)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<(i64, i64)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<(i64, i64)>,
}

/// The most ranges one progress record carries per list (`done`, `kept`, `dropped`): the lowest
/// are kept, the rest left out (a new owner then reads those records again — duplicates, never a
/// loss). ~20 bytes each in JSON, so a record stays near 250 KB, inside Kafka's default 1 MB
/// message limit.
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
        for (name, ranges) in [("done", &self.done), ("kept", &self.kept), ("dropped", &self.dropped)] {
            if ranges.len() > MAX_PROGRESS_RANGES {
                return Err(format!("{} {name} ranges, more than {MAX_PROGRESS_RANGES}", ranges.len()));
            }
            let mut floor = self.next;
            for &(a, b) in ranges {
                if a < floor || b < a || b >= end {
                    return Err(format!("{name} range {a}..={b} is out of order, overlapping, below next {} or past the partition's end {end}", self.next));
                }
                floor = b.saturating_add(1);
            }
        }
        for &(a, b) in self.kept.iter().chain(&self.dropped) {
            // Inside one done range (ranges are at or above `next`, checked above).
            let i = self.done.partition_point(|&(_, d)| d < a);
            if !self.done.get(i).is_some_and(|&(c, d)| c <= a && b <= d) {
                return Err(format!("range {a}..={b} has an outcome but is not done"));
            }
        }
        if self.kept.iter().any(|&(a, b)| self.dropped.iter().any(|&(c, d)| a <= d && c <= b)) {
            return Err("an offset is both kept and dropped".to_owned());
        }
        Ok(())
    }

    /// What became of a done offset: `Some(true)` kept, `Some(false)` dropped by a decision,
    /// `None` not known.
    pub fn outcome(&self, offset: i64) -> Option<bool> {
        if in_ranges(&self.kept, offset) {
            Some(true)
        } else if in_ranges(&self.dropped, offset) {
            Some(false)
        } else {
            None
        }
    }

    /// True when `offset` is known done.
    pub fn contains(&self, offset: i64) -> bool {
        offset < self.next || in_ranges(&self.done, offset)
    }
}

/// True when `offset` is in one of the sorted, disjoint inclusive `ranges`.
fn in_ranges(ranges: &[(i64, i64)], offset: i64) -> bool {
    ranges.binary_search_by(|&(a, b)| if b < offset { std::cmp::Ordering::Less } else if a > offset { std::cmp::Ordering::Greater } else { std::cmp::Ordering::Equal }).is_ok()
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
    /// Of those, the ones known kept, and known dropped by a decision.
    kept: Ranges,
    dropped: Ranges,
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

    /// What became of a record a previous owner finished (its progress's `kept` / `dropped`):
    /// `Some(true)` kept, `Some(false)` dropped by a decision, `None` not known.
    pub fn prior_outcome(&mut self, partition: i32, offset: i64, generation: u64) -> Option<bool> {
        self.state(partition, generation).resumed.as_ref().and_then(|r| r.outcome(offset))
    }

    /// The partition's state in `generation`, fresh (with any resumed progress) when that is new.
    fn state(&mut self, partition: i32, generation: u64) -> &mut Partition {
        let p = self.partitions.entry(partition).or_default();
        if p.generation != generation {
            let resumed = self.resumed.remove(&partition);
            let (mut done, mut kept, mut dropped) = (Ranges::default(), Ranges::default(), Ranges::default());
            if let Some(r) = &resumed {
                if r.next > 0 {
                    done.insert_range(0, r.next - 1);
                }
                for &(a, b) in &r.done {
                    done.insert_range(a, b);
                }
                // Reported on with the rest until committed, so a third owner knows them too.
                for &(a, b) in &r.kept {
                    kept.insert_range(a, b);
                }
                for &(a, b) in &r.dropped {
                    dropped.insert_range(a, b);
                }
            }
            *p = Partition { generation, done, kept, dropped, resumed, ..Partition::default() };
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
        self.done_with(partition, offset, generation, None)
    }

    /// As [`OffsetTracker::done`], knowing which way the record went (`Some(true)` kept,
    /// `Some(false)` dropped by a decision): reported in the progress with it.
    pub fn done_with(&mut self, partition: i32, offset: i64, generation: u64, kept: Option<bool>) -> Option<i64> {
        let p = self.partitions.get_mut(&partition).filter(|p| p.generation == generation)?;
        if !p.pending.remove(&offset) {
            return None;
        }
        p.highest_done = Some(p.highest_done.map_or(offset, |h| h.max(offset)));
        p.done.insert(offset);
        match kept {
            Some(true) => p.kept.insert(offset),
            Some(false) => p.dropped.insert(offset),
            None => {}
        }
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
        p.kept.remove_through(committable);
        p.dropped.remove_through(committable);
        Some(committable)
    }

    /// What is done in `partition`'s `generation`: the committable prefix and the offsets done
    /// past it (a previous owner's included). None before anything was read in it.
    pub fn progress(&self, partition: i32, generation: u64) -> Option<Progress> {
        let p = self.partitions.get(&partition).filter(|p| p.generation == generation)?;
        let next = p.reported? + 1;
        let past = |r: &Ranges| -> Vec<(i64, i64)> { r.to_vec().into_iter().filter(|&(_, b)| b >= next).map(|(a, b)| (a.max(next), b)).collect() };
        let (mut done, mut kept, mut dropped) = (past(&p.done), past(&p.kept), past(&p.dropped));
        // At most MAX_PROGRESS_RANGES each, the lowest: past the first range left out of any
        // list, all three stop (an outcome left out would read as unknown, which is safe, but a
        // done range without its outcome would too — so cut them together).
        let cut = [&done, &kept, &dropped].iter().filter_map(|v| v.get(MAX_PROGRESS_RANGES).map(|r| r.0)).min();
        if let Some(cut) = cut {
            for v in [&mut done, &mut kept, &mut dropped] {
                v.retain(|r| r.0 < cut);
                if let Some(last) = v.last_mut() {
                    last.1 = last.1.min(cut - 1);
                }
            }
        }
        Some(Progress { next, done, kept, dropped })
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
