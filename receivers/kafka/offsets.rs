//! Which offsets may be committed: a record's offset is committable only when it and every
//! earlier record of its partition have been delivered (or given up on and counted) by the
//! graph, however out of order the sinks finish. Pure bookkeeping, tested on its own.
//!
//! Each partition's state belongs to one assignment (a generation): when a partition comes back
//! after a revocation, its bookkeeping starts afresh. A record handed back undelivered (its
//! partition was revoked, or the receiver is stopping, while a processor held it) is forgotten
//! but bars every later offset from commit, so the next owner reads it again.

use std::collections::{BTreeSet, HashMap};

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
}

/// Per-partition bookkeeping of consumed and finished records.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<i32, Partition>,
}

impl OffsetTracker {
    /// True when this consumer already took the record: a partition that was revoked and given
    /// back restarts from the last commit, and what this process still holds or already
    /// delivered must not enter the graph twice.
    pub fn taken(&self, partition: i32, offset: i64, generation: u64) -> bool {
        self.partitions.get(&partition).filter(|p| p.generation == generation).and_then(|p| p.highest_begun).is_some_and(|h| offset <= h)
    }

    /// A record was consumed and handed to the graph, in assignment `generation`.
    pub fn begin(&mut self, partition: i32, offset: i64, generation: u64) {
        let p = self.partitions.entry(partition).or_default();
        if p.generation != generation {
            *p = Partition { generation, ..Partition::default() };
        }
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
        let committable = match p.pending.first() {
            Some(&first) => first - 1,
            None => p.highest_done?,
        };
        let committable = p.barrier.map_or(committable, |b| committable.min(b - 1));
        if p.reported.is_some_and(|r| r >= committable) {
            return None;
        }
        p.reported = Some(committable);
        Some(committable)
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
