//! A decider's held traces: a map from trace id to a slot, and the traces in fixed pages of
//! slots.
//!
//! A map of whole `Trace`s (about 200 bytes each) grows by doubling: for a moment the old and
//! the new table are both alive, and between growths up to half the slots are empty. For a
//! million one-span traces of ~130 bytes that index was the weight, and its growth the peak.
//! Here the index holds 4-byte slot numbers (20 bytes an entry, without tombstones: see
//! [`SlotIndex`]), and traces live in pages of [`PAGE`] slots that are added one at a time and
//! never moved; freed slots are reused. So the index grows in small steps, and what is charged
//! for it is what is allocated.

use super::trace::{fingerprint, grown, Trace, TraceId};

/// Slots per page.
pub const PAGE: usize = 1024;

type Slot = Option<(TraceId, Trace)>;

/// An index entry: a trace id and its slot number plus one (0: an empty entry).
type Entry = (TraceId, u32);

/// Bytes of one index entry.
const ENTRY: usize = std::mem::size_of::<Entry>();

/// Trace id → slot number: open addressing with linear probing, and removal by shifting the
/// entries after the removed one back (no tombstones).
///
/// A decider takes traces in and decides them as fast: with hashbrown the removals left
/// tombstones that used up the map's room, and past half full it then grew (a doubling, the
/// old and new allocations alive together) although the traces held had not increased. The
/// decider had to make room for that growth by deciding traces early — up to half the traces
/// of a budget full of one-span traces, every few seconds — and the copies made the peak. This
/// index grows only when the traces held pass three quarters of its entries.
#[derive(Default)]
struct SlotIndex {
    entries: Box<[Entry]>,
    len: usize,
}

impl SlotIndex {
    /// Entries for `items` (at most three quarters full; a power of two).
    fn entries_for(items: usize) -> usize {
        if items == 0 {
            0
        } else {
            (items * 4).div_ceil(3).next_power_of_two().max(8)
        }
    }

    /// Its allocation for `items`.
    fn allocation_for(items: usize) -> usize {
        Self::entries_for(items) * ENTRY
    }

    fn with_capacity(items: usize) -> Self {
        SlotIndex { entries: vec![([0u8; 16], 0u32); Self::entries_for(items)].into_boxed_slice(), len: 0 }
    }

    /// Items it takes before it grows.
    fn capacity(&self) -> usize {
        self.entries.len() / 4 * 3
    }

    fn allocation_size(&self) -> usize {
        self.entries.len() * ENTRY
    }

    fn mask(&self) -> usize {
        self.entries.len() - 1
    }

    fn home(&self, id: &TraceId) -> usize {
        // The low half: the high half picks the shard (trace.rs, shard_of_fingerprint).
        fingerprint(id) as usize & self.mask()
    }

    /// The entry holding `id`.
    fn find(&self, id: &TraceId) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mut i = self.home(id);
        loop {
            let (k, s) = &self.entries[i];
            if *s == 0 {
                return None;
            }
            if k == id {
                return Some(i);
            }
            i = (i + 1) & self.mask();
        }
    }

    fn get(&self, id: &TraceId) -> Option<u32> {
        self.find(id).map(|i| self.entries[i].1 - 1)
    }

    /// Sets the slot of an `id` it does not hold.
    fn insert_new(&mut self, id: TraceId, slot: u32) {
        debug_assert!(slot < u32::MAX && self.find(&id).is_none());
        if self.len + 1 > self.capacity() {
            self.grow(self.len + 1);
        }
        let mut i = self.home(&id);
        while self.entries[i].1 != 0 {
            i = (i + 1) & self.mask();
        }
        self.entries[i] = (id, slot + 1);
        self.len += 1;
    }

    /// Takes `id` out; the entries after it in its run move back where their probe allows.
    fn remove(&mut self, id: &TraceId) -> Option<u32> {
        let mut hole = self.find(id)?;
        let slot = self.entries[hole].1 - 1;
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            if self.entries[j].1 == 0 {
                break;
            }
            let home = self.home(&self.entries[j].0);
            // Entry j may fill the hole when the hole lies on its probe path (home ..= j).
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.entries[hole] = self.entries[j];
                hole = j;
            }
        }
        self.entries[hole].1 = 0;
        self.len -= 1;
        Some(slot)
    }

    fn grow(&mut self, items: usize) {
        let n = Self::entries_for(items).max(self.entries.len() * 2);
        let old = std::mem::replace(&mut self.entries, vec![([0u8; 16], 0u32); n].into_boxed_slice());
        self.len = 0;
        for (id, s) in old.iter() {
            if *s != 0 {
                let mut i = self.home(id);
                while self.entries[i].1 != 0 {
                    i = (i + 1) & self.mask();
                }
                self.entries[i] = (*id, *s);
                self.len += 1;
            }
        }
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// Held traces by id.
#[derive(Default)]
pub struct TraceTable {
    index: SlotIndex,
    pages: Vec<Box<[Slot]>>,
    free: Vec<u32>,
}

impl TraceTable {
    /// A table with room for about `n` traces before its first growth.
    pub fn with_capacity(n: usize) -> Self {
        TraceTable { index: SlotIndex::with_capacity(n), ..Default::default() }
    }

    fn slot(&self, i: u32) -> &Slot {
        &self.pages[i as usize / PAGE][i as usize % PAGE]
    }

    fn slot_mut(&mut self, i: u32) -> &mut Slot {
        &mut self.pages[i as usize / PAGE][i as usize % PAGE]
    }

    /// The trace with this id.
    pub fn get(&self, id: &TraceId) -> Option<&Trace> {
        let i = self.index.get(id)?;
        self.slot(i).as_ref().map(|(_, t)| t)
    }

    /// The trace with this id, to change.
    pub fn get_mut(&mut self, id: &TraceId) -> Option<&mut Trace> {
        let i = self.index.get(id)?;
        self.slot_mut(i).as_mut().map(|(_, t)| t)
    }

    /// Holds a trace (replacing one with the same id).
    pub fn insert(&mut self, id: TraceId, t: Trace) {
        if let Some(i) = self.index.get(&id) {
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
        self.index.insert_new(id, i);
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
        self.index.len() == 0
    }

    /// Every held trace.
    pub fn iter(&self) -> impl Iterator<Item = (&TraceId, &Trace)> {
        self.pages.iter().flat_map(|p| p.iter()).filter_map(|s| s.as_ref().map(|(id, t)| (id, t)))
    }

    /// Takes every held trace out, and lets go of the table's memory.
    pub fn drain(&mut self) -> Vec<(TraceId, Trace)> {
        self.index = SlotIndex::default();
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
        self.growth(new).0
    }

    /// The most the table takes while `new` more traces go in: [`TraceTable::bytes_with`], plus
    /// the allocations a growth replaces, alive until it is done (a map rehashes into its new
    /// allocation from the old one; a list's reallocation may copy).
    pub fn peak_with(&self, new: usize) -> usize {
        self.growth(new).1
    }

    /// (bytes after, peak on the way) for `new` more traces.
    fn growth(&self, new: usize) -> (usize, usize) {
        if new == 0 {
            return (self.bytes(), self.bytes());
        }
        let need = self.len() + new;
        let alloc = self.index.allocation_size();
        let map = if need <= self.index.capacity() { alloc } else { SlotIndex::allocation_for(need).max(alloc * 2) };
        let pages_added = new.saturating_sub(self.free.len()).div_ceil(PAGE);
        let pages = self.pages.len() + pages_added;
        let free = if pages_added > 0 { grown(self.free.capacity(), self.free.len() + pages_added * PAGE) } else { self.free.capacity() };
        let pages_cap = grown(self.pages.capacity(), pages);
        let after = Self::bytes_of(map, pages, pages_cap, free);
        let replaced = |before: usize, after: usize| if after > before { before } else { 0 };
        let old_lists = replaced(self.free.capacity(), free) * 4 + replaced(self.pages.capacity(), pages_cap) * std::mem::size_of::<Box<[Slot]>>();
        (after, after + replaced(alloc, map) + old_lists)
    }

    /// What [`TraceTable::shrink`] would allocate before it lets go of the old map: the new map
    /// and one page (pages are moved one at a time). 0 when it would not shrink.
    pub fn shrink_cost(&self) -> usize {
        if !self.wants_shrink() {
            return 0;
        }
        let items = self.len();
        let map = SlotIndex::allocation_for(items);
        map + PAGE * std::mem::size_of::<Slot>() + grown(0, items.div_ceil(PAGE)) * std::mem::size_of::<Box<[Slot]>>()
    }

    fn wants_shrink(&self) -> bool {
        self.pages.len() > 2 && self.len() * 4 <= self.pages.len() * PAGE
    }

    /// Gives back room after a burst: when a quarter or less of the slots are used, the traces
    /// move into as few pages as they need (page by page, so the table never exists twice).
    pub fn shrink(&mut self) {
        if self.wants_shrink() {
            self.shrink_to_fit();
        }
    }

    /// Moves the traces into as few pages as they need (none when the table is empty).
    pub fn shrink_to_fit(&mut self) {
        let old = std::mem::take(&mut self.pages);
        self.free = Vec::new();
        self.index = SlotIndex::with_capacity(self.len());
        for page in old {
            for (id, t) in page.into_vec().into_iter().flatten() {
                self.insert(id, t);
            }
        }
    }
}
