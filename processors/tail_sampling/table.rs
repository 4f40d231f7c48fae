//! A decider's held traces: a map from trace id to a slot, and the traces in fixed pages of
//! slots.
//!
//! A map of whole `Trace`s (about 200 bytes each) grows by doubling: for a moment the old and
//! the new table are both alive, and between growths up to half the slots are empty. For a
//! million one-span traces of ~130 bytes that index was the weight, and its growth the peak.
//! Here the map holds 4-byte slot numbers (~21 bytes a slot), and traces live in pages of
//! [`PAGE`] slots that are added one at a time and never moved; freed slots are reused. So the
//! index grows in small steps, and what is charged for it is what is allocated.

use super::trace::{grown, IdMap, Trace, TraceId};

/// Slots per page.
pub const PAGE: usize = 1024;

type Slot = Option<(TraceId, Trace)>;

/// The map's entries, and its control-byte group (hashbrown's allocation is the entries,
/// padded to the group, then one control byte per bucket and a group more).
const ENTRY: usize = std::mem::size_of::<(TraceId, u32)>();
const GROUP: usize = 16;

/// hashbrown's allocation for `buckets` buckets.
fn map_allocation(buckets: usize) -> usize {
    (ENTRY * buckets).next_multiple_of(GROUP) + buckets + GROUP
}

/// The buckets behind an allocation of `alloc` bytes (its inverse: padding is under a group).
fn map_buckets(alloc: usize) -> usize {
    alloc.saturating_sub(GROUP) / (ENTRY + 1)
}

/// hashbrown's bucket count for `items` items: a power of two, 7/8 of them usable.
fn buckets_for(items: usize) -> usize {
    if items < 4 {
        4
    } else if items < 8 {
        8
    } else {
        (items * 8).div_ceil(7).next_power_of_two()
    }
}

/// Held traces by id.
#[derive(Default)]
pub struct TraceTable {
    index: IdMap<u32>,
    pages: Vec<Box<[Slot]>>,
    free: Vec<u32>,
}

impl TraceTable {
    /// A table with room for about `n` traces before its first growth.
    pub fn with_capacity(n: usize) -> Self {
        TraceTable { index: IdMap::with_capacity_and_hasher(n, Default::default()), ..Default::default() }
    }

    fn slot(&self, i: u32) -> &Slot {
        &self.pages[i as usize / PAGE][i as usize % PAGE]
    }

    fn slot_mut(&mut self, i: u32) -> &mut Slot {
        &mut self.pages[i as usize / PAGE][i as usize % PAGE]
    }

    /// The trace with this id.
    pub fn get(&self, id: &TraceId) -> Option<&Trace> {
        let i = *self.index.get(id)?;
        self.slot(i).as_ref().map(|(_, t)| t)
    }

    /// The trace with this id, to change.
    pub fn get_mut(&mut self, id: &TraceId) -> Option<&mut Trace> {
        let i = *self.index.get(id)?;
        self.slot_mut(i).as_mut().map(|(_, t)| t)
    }

    /// Holds a trace (replacing one with the same id).
    pub fn insert(&mut self, id: TraceId, t: Trace) {
        if let Some(&i) = self.index.get(&id) {
            *self.slot_mut(i) = Some((id, t));
            return;
        }
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = self.pages.len() * PAGE;
                self.pages.push((0..PAGE).map(|_| None).collect());
                self.free.extend((i as u32 + 1..(i + PAGE) as u32).rev());
                i as u32
            }
        };
        *self.slot_mut(i) = Some((id, t));
        self.index.insert(id, i);
    }

    /// Lets go of a trace.
    pub fn remove(&mut self, id: &TraceId) -> Option<Trace> {
        let i = self.index.remove(id)?;
        self.free.push(i);
        self.slot_mut(i).take().map(|(_, t)| t)
    }

    /// Traces held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Every held trace.
    pub fn iter(&self) -> impl Iterator<Item = (&TraceId, &Trace)> {
        self.pages.iter().flat_map(|p| p.iter()).filter_map(|s| s.as_ref().map(|(id, t)| (id, t)))
    }

    /// Takes every held trace out, and lets go of the table's memory.
    pub fn drain(&mut self) -> Vec<(TraceId, Trace)> {
        self.index = IdMap::default();
        self.free = Vec::new();
        std::mem::take(&mut self.pages).into_iter().flat_map(|p| p.into_vec().into_iter().flatten()).collect()
    }

    /// Bytes the table takes, from its allocations: the map's (slots of key and slot number, a
    /// control byte each), the pages, the free list.
    pub fn bytes(&self) -> usize {
        Self::bytes_of(self.index.allocation_size(), self.pages.len(), self.pages.capacity(), self.free.capacity())
    }

    /// The table's bytes for a map allocation of `map` bytes, `pages` pages in a list of
    /// capacity `pages_cap`, and a free list of capacity `free_cap`.
    fn bytes_of(map: usize, pages: usize, pages_cap: usize, free_cap: usize) -> usize {
        map + pages * PAGE * std::mem::size_of::<Slot>() + pages_cap * std::mem::size_of::<Box<[Slot]>>() + free_cap * 4
    }

    /// An upper bound on [`TraceTable::bytes`] once `new` more traces are held: the map grows
    /// when its room (`capacity()`, less any tombstones) runs out, to at least twice its buckets;
    /// pages are added when the freed slots run out; the lists grow by doubling.
    pub fn bytes_with(&self, new: usize) -> usize {
        if new == 0 {
            return self.bytes();
        }
        let need = self.len() + new;
        let alloc = self.index.allocation_size();
        let map = if need <= self.index.capacity() {
            alloc
        } else {
            let buckets = map_buckets(alloc);
            let full = if buckets < 8 { buckets.saturating_sub(1) } else { buckets / 8 * 7 };
            alloc.max(map_allocation(buckets_for(need.max(full + 1))))
        };
        let pages_added = new.saturating_sub(self.free.len()).div_ceil(PAGE);
        let pages = self.pages.len() + pages_added;
        let free = if pages_added > 0 { grown(self.free.capacity(), self.free.len() + pages_added * PAGE) } else { self.free.capacity() };
        Self::bytes_of(map, pages, grown(self.pages.capacity(), pages), free)
    }

    /// Gives back room after a burst: when a quarter or less of the slots are used, the traces
    /// move into as few pages as they need (page by page, so the table never exists twice).
    pub fn shrink(&mut self) {
        let slots = self.pages.len() * PAGE;
        if self.pages.len() > 2 && self.len() * 4 <= slots {
            self.shrink_to_fit();
        }
    }

    /// Moves the traces into as few pages as they need (none when the table is empty).
    pub fn shrink_to_fit(&mut self) {
        let old = std::mem::take(&mut self.pages);
        self.free = Vec::new();
        self.index = IdMap::with_capacity_and_hasher(self.len(), Default::default());
        for page in old {
            for (id, t) in page.into_vec().into_iter().flatten() {
                self.insert(id, t);
            }
        }
    }
}
