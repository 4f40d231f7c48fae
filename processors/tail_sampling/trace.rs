//! Held traces, in their encoded form.
//!
//! An incoming batch is walked once on the wire ([`split`]): each span's bytes are copied, framed
//! as a `ScopeSpans.spans` field, next to the other spans of its trace from the same batch (into
//! a [`Chunk`] shared with other traces of that batch, see [`Incoming::copy_out`]), and
//! the few fields a decision needs (parent, times, status, flags) are folded into the trace's
//! [`Summary`]. A span's `ResourceSpans` / `ScopeSpans` envelope (every field but the list) is
//! kept once per batch in an [`Env`], shared by every trace holding one of its spans. Nothing is
//! decoded into structs: a decided trace is written out by concatenating bytes, so a kept span
//! leaves byte for byte as it came (plus the marks, appended as extra attribute fields, which
//! protobuf merges into the span's attribute list).
//!
//! Memory: every byte held is charged to one counter: chunks at their allocator size class while
//! any trace holds a slice of them, envelopes while alive (both charged on creation, refunded on
//! drop), a trace's own lists once they outgrow their inline slot, and the index (the trace
//! table, [`super::table`], and the deadline queues) from its allocations' capacities. A
//! counting allocator measured the live heap equal to this count.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use tracepipe_pipeline::wire::{Reader, WireError, I32, I64, LEN, VARINT};
use tracepipe_pipeline::Finalizer;

/// A trace id (16 bytes; shorter ids are zero-padded).
pub type TraceId = [u8; 16];

/// The size an allocator really hands out for `n` bytes: general-purpose allocators (mimalloc,
/// jemalloc) serve sizes in classes four to a power of two, so 8.5 KB takes a 10 KB block.
/// Buffers are grown to their class and charged at it, so the count matches what is allocated
/// (and the slack serves later spans of the trace).
pub fn size_class(n: usize) -> usize {
    if n <= 64 {
        return n.next_multiple_of(8);
    }
    let step = (1usize << (usize::BITS - 1 - n.leading_zeros())) / 4;
    n.next_multiple_of(step)
}

/// Hashes trace ids (already random in practice) with a cheap 128→64 mix.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = mix(self.0 ^ u64::from_le_bytes(b));
        }
    }
    fn write_usize(&mut self, _: usize) {}
}

/// splitmix64's finalizer.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A 64-bit fingerprint of a trace id.
pub fn fingerprint(id: &TraceId) -> u64 {
    let a = u64::from_le_bytes(id[..8].try_into().expect("8 bytes"));
    let b = u64::from_le_bytes(id[8..].try_into().expect("8 bytes"));
    mix(a ^ mix(b).rotate_left(17))
}

/// A map keyed by trace id.
pub type IdMap<V> = hashbrown::HashMap<TraceId, V, BuildHasherDefault<IdHasher>>;

/// One decider's share of the held-bytes count: its own bytes, bounded by its budget (see
/// `Shard::make_room`), and the processor's total (the gauge), moved together.
pub struct Account {
    own: AtomicI64,
    total: Arc<AtomicI64>,
}

impl Account {
    /// A decider's account, adding into `total`.
    pub fn new(total: &Arc<AtomicI64>) -> Arc<Account> {
        Arc::new(Account { own: AtomicI64::new(0), total: total.clone() })
    }
    /// Charges (or, negative, refunds) `n` bytes.
    pub fn add(&self, n: i64) {
        self.own.fetch_add(n, Ordering::Relaxed);
        self.total.fetch_add(n, Ordering::Relaxed);
    }
    /// This decider's bytes.
    pub fn own(&self) -> i64 {
        self.own.load(Ordering::Relaxed)
    }
    /// Every decider's bytes.
    pub fn total(&self) -> i64 {
        self.total.load(Ordering::Relaxed)
    }
    /// The processor's count.
    #[cfg(test)]
    pub fn total_counter(&self) -> Arc<AtomicI64> {
        self.total.clone()
    }
}

/// A `ResourceSpans` and `ScopeSpans` without their lists: their other fields, raw. Each decider
/// that gets spans of it has its own copy (a few hundred bytes per batch), charged to that
/// decider's account when it takes the batch in, inside the room it made ([`Env::claim`]), until
/// dropped: one decider's bytes are never held alive by another's traces.
pub struct Env {
    /// `ResourceSpans` fields but `scope_spans` (resource, schema_url), as received.
    pub resource: Box<[u8]>,
    /// `ScopeSpans` fields but `spans` (scope, schema_url), as received.
    pub scope: Box<[u8]>,
    held: Arc<Account>,
    charged: AtomicBool,
}

impl Env {
    fn new(resource: &[u8], scope: &[u8], held: &Arc<Account>) -> Env {
        Env { resource: resource.into(), scope: scope.into(), held: held.clone(), charged: AtomicBool::new(false) }
    }
    /// The two boxes at their size classes, and the `Arc` with its counts.
    pub fn cost(&self) -> i64 {
        (size_class(self.resource.len()) + size_class(self.scope.len()) + 64) as i64
    }
    /// Marks it charged (its decider charged [`Env::cost`]): it refunds that when dropped. An
    /// envelope dropped before its decider took it in was never charged and refunds nothing.
    pub fn claim(&self) {
        self.charged.store(true, Ordering::Relaxed);
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if *self.charged.get_mut() {
            self.held.add(-self.cost());
        }
    }
}

/// What a decision needs to know of a trace's spans, folded as they arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Spans.
    pub spans: u64,
    /// Earliest start (ns since the epoch; `u64::MAX` with no span).
    pub min_start: u64,
    /// Latest end.
    pub max_end: u64,
    /// A span without a parent is in.
    pub root: bool,
    /// Status codes seen, as bits `1 << code` (0 unset, 1 ok, 2 error).
    pub status: u8,
    /// A span has the W3C sampled flag.
    pub sampled_flag: bool,
    /// A span has a tracestate.
    pub trace_state: bool,
    /// Replayed context among the spans (`tracepipe_pipeline::replay`), as bits: [`PRIOR_KEPT`]
    /// (a previous owner kept them), [`PRIOR_DROPPED`] (it dropped them).
    pub prior: u8,
}

/// [`Summary::prior`]: context a previous owner kept.
pub const PRIOR_KEPT: u8 = 1;
/// [`Summary::prior`]: context a previous owner dropped by its decision.
pub const PRIOR_DROPPED: u8 = 2;

impl Default for Summary {
    fn default() -> Self {
        Summary { spans: 0, min_start: u64::MAX, max_end: 0, root: false, status: 0, sampled_flag: false, trace_state: false, prior: 0 }
    }
}

impl Summary {
    /// Adds another summary's spans.
    pub fn merge(&mut self, o: &Summary) {
        self.spans += o.spans;
        self.min_start = self.min_start.min(o.min_start);
        self.max_end = self.max_end.max(o.max_end);
        self.root |= o.root;
        self.status |= o.status;
        self.sampled_flag |= o.sampled_flag;
        self.trace_state |= o.trace_state;
        self.prior |= o.prior;
    }

    /// Latest end − earliest start, in nanoseconds.
    pub fn duration_nanos(&self) -> u64 {
        self.max_end.saturating_sub(self.min_start)
    }
}

/// The fields of one span a summary reads.
struct SpanInfo<'a> {
    trace_id: &'a [u8],
    summary: Summary,
}

fn fixed64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().expect("8 bytes"))
}

/// Reads a span's summary fields.
fn read_span(span: &[u8]) -> Result<SpanInfo<'_>, WireError> {
    let mut r = Reader::new(span, 0);
    let mut s = Summary { spans: 1, root: true, ..Summary::default() };
    let mut start = 0;
    let mut trace_id: &[u8] = &[];
    let mut status = 0u8;
    while !r.done() {
        let (field, wt) = r.tag()?;
        match (field, wt) {
            (1, LEN) => trace_id = r.len_delimited()?.0,
            (3, LEN) => s.trace_state = !r.len_delimited()?.0.is_empty(),
            (4, LEN) => s.root = r.len_delimited()?.0.is_empty(),
            (7, I64) => start = fixed64(r.take(8)?),
            (8, I64) => s.max_end = fixed64(r.take(8)?),
            (15, LEN) => {
                let st = r.len_delimited()?.0;
                let mut sr = Reader::new(st, 0);
                while !sr.done() {
                    let (f, w) = sr.tag()?;
                    if (f, w) == (3, VARINT) {
                        status = sr.varint()?.min(2) as u8;
                    } else {
                        sr.skip(w, "Status", f)?;
                    }
                }
            }
            (16, I32) => s.sampled_flag = r.take(4)?[0] & 1 == 1,
            _ => r.skip(wt, "Span", field)?,
        }
    }
    s.min_start = start;
    s.status = 1 << status;
    Ok(SpanInfo { trace_id, summary: s })
}

/// The id of a trace, from a span's `trace_id` bytes.
pub fn trace_id(bytes: &[u8]) -> TraceId {
    let mut id = [0u8; 16];
    let n = bytes.len().min(16);
    id[..n].copy_from_slice(&bytes[..n]);
    id
}

pub use tracepipe_pipeline::regroup::{field_len, put_field as put_len};

/// Spans of one trace from one batch: runs of framed spans (consecutive `ScopeSpans.spans`
/// fields, tag and length included, exactly as received) that share an envelope.
pub struct Group {
    /// The trace.
    pub id: TraceId,
    /// (envelope index, buffer index, byte range of framed spans in that buffer).
    pub runs: smallvec::SmallVec<[(u32, u32, std::ops::Range<usize>); 1]>,
    /// Its spans' summary.
    pub summary: Summary,
}

/// One shard's share of one batch. The received buffers are shared, not copied: a decider
/// copies each run of its traces' spans once, straight into the trace.
#[derive(Default)]
pub struct Incoming {
    /// Envelopes the runs refer to.
    pub envs: Vec<Arc<Env>>,
    /// The batch's `TracesData` buffers.
    pub bufs: Vec<bytes::Bytes>,
    /// Per trace.
    pub groups: Vec<Group>,
    /// The batch's acknowledgements (each shard that got spans holds them).
    pub finalizers: Vec<Arc<Finalizer>>,
    /// Spans.
    pub spans: usize,
}

impl Incoming {
    /// The framed bytes of a run.
    pub fn run(&self, buf: u32, range: &std::ops::Range<usize>) -> &[u8] {
        &self.bufs[buf as usize][range.clone()]
    }
}

/// Which shard owns a trace.
pub fn shard_of(id: &TraceId, shards: usize) -> usize {
    shard_of_fingerprint(fingerprint(id), shards)
}

/// Which shard owns the trace with this fingerprint.
pub fn shard_of_fingerprint(fp: u64, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    ((fp >> 32) % shards as u64) as usize
}

/// Offset of `inner` inside `outer` (a subslice of it).
fn offset_in(outer: &[u8], inner: &[u8]) -> usize {
    inner.as_ptr() as usize - outer.as_ptr() as usize
}

/// Walks one `TracesData` buffer (scanned valid) and deals its spans to `shards`, grouped by
/// trace, as references into the buffer. Each shard's envelopes are its own (`accounts[shard]`
/// pays for them once the decider takes them in, [`Env::claim`]).
pub fn split(buf: &bytes::Bytes, accounts: &[Arc<Account>], out: &mut [Incoming]) -> Result<(), WireError> {
    debug_assert_eq!(out.len(), accounts.len());
    let mut index: Vec<IdMap<usize>> = (0..out.len()).map(|_| IdMap::default()).collect();
    // This buffer's index in each shard's list, once it has a span there.
    let mut buf_at: Vec<Option<u32>> = vec![None; out.len()];
    let whole: &[u8] = buf;
    let mut top = Reader::new(whole, 0);
    let mut resource: Vec<u8> = Vec::new();
    let mut scope: Vec<u8> = Vec::new();
    while !top.done() {
        let (field, wt) = top.tag()?;
        if field != 1 || wt != LEN {
            top.skip(wt, "TracesData", field)?;
            continue;
        }
        let rs = top.len_delimited()?.0;
        resource.clear();
        let mut scopes: Vec<&[u8]> = Vec::new();
        let mut r = Reader::new(rs, 0);
        while !r.done() {
            let start = r.position();
            let (f, w) = r.tag()?;
            if (f, w) == (2, LEN) {
                scopes.push(r.len_delimited()?.0);
            } else {
                r.skip(w, "ResourceSpans", f)?;
                resource.extend_from_slice(&rs[start..r.position()]);
            }
        }
        for ss in scopes {
            scope.clear();
            // (framed range in the whole buffer, span payload)
            let mut spans: Vec<(std::ops::Range<usize>, &[u8])> = Vec::new();
            let base = offset_in(whole, ss);
            let mut r = Reader::new(ss, 0);
            while !r.done() {
                let start = r.position();
                let (f, w) = r.tag()?;
                if (f, w) == (2, LEN) {
                    let span = r.len_delimited()?.0;
                    spans.push((base + start..base + r.position(), span));
                } else {
                    r.skip(w, "ScopeSpans", f)?;
                    scope.extend_from_slice(&ss[start..r.position()]);
                }
            }
            if spans.is_empty() {
                continue;
            }
            let prior = match tracepipe_pipeline::replay::prior_of_envelope(&resource) {
                Some(true) => PRIOR_KEPT,
                Some(false) => PRIOR_DROPPED,
                None => 0,
            };
            // This envelope's index in each shard's list, once it has a span there.
            let mut env_at: Vec<Option<u32>> = vec![None; out.len()];
            for (framed, span) in spans {
                let mut info = read_span(span)?;
                info.summary.prior = prior;
                let id = trace_id(info.trace_id);
                let sh = shard_of(&id, out.len());
                let inc = &mut out[sh];
                let e = *env_at[sh].get_or_insert_with(|| {
                    inc.envs.push(Arc::new(Env::new(&resource, &scope, &accounts[sh])));
                    (inc.envs.len() - 1) as u32
                });
                let b = *buf_at[sh].get_or_insert_with(|| {
                    inc.bufs.push(buf.clone());
                    (inc.bufs.len() - 1) as u32
                });
                inc.spans += 1;
                let g = *index[sh].entry(id).or_insert_with(|| {
                    inc.groups.push(Group { id, runs: Default::default(), summary: Summary::default() });
                    inc.groups.len() - 1
                });
                let g = &mut inc.groups[g];
                g.summary.merge(&info.summary);
                match g.runs.last_mut() {
                    Some((le, lb, range)) if *le == e && *lb == b && range.end == framed.start => range.end = framed.end,
                    _ => g.runs.push((e, b, framed)),
                }
            }
        }
    }
    Ok(())
}

/// Spans of a trace that share an envelope, framed, in arrival order: a slice of the [`Chunk`]
/// its batch's spans were copied into.
pub struct Segment {
    /// The envelope.
    pub env: Arc<Env>,
    /// Framed spans.
    pub spans: bytes::Bytes,
}

/// The spans one batch brought one decider, copied into one allocation that the segments of
/// every trace holding some of them share. Charged to the held-bytes counter (at its allocator
/// size class) from its creation until the last segment in it is released.
///
/// One allocation per batch rather than one per trace: a million one-span traces are a few
/// hundred chunks, not a million small blocks freed in another order than they were allocated
/// (which left allocator pages partly used: peak RSS was 3x `max_bytes` for that shape). Traces
/// that share a chunk arrived together and are decided at about the same time (deadlines run
/// from the first span; a later batch's spans of an older trace are in a later chunk and leave
/// with that trace), so a chunk outlives its first released trace by at most the spread of
/// their waits, and that is charged: the count is what is allocated.
struct Chunk {
    buf: Vec<u8>,
    held: Arc<Account>,
    cost: i64,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.held.add(-self.cost);
    }
}

/// Bytes charged per chunk beyond its buffer: the shared `Bytes` owner block.
const CHUNK_OVERHEAD: usize = 64;

/// The most bytes of several traces' spans one chunk takes (a group larger than this has a
/// chunk of its own). Measured with the memory e2e test (tests/e2e/test_tail_sampling.py):
/// one chunk per batch (~400 KB) left more memory with the allocator than a block per trace for
/// traces of 8 KB; 64 KiB chunks stay in the allocator's pages of reusable blocks.
pub const CHUNK_BYTES: usize = 64 << 10;

/// One batch's spans for one decider, copied into [`Chunk`]s, with where each group's went.
pub struct Copied {
    /// The chunks.
    chunks: Vec<bytes::Bytes>,
    /// (envelope index, chunk index, byte range in the chunk), consecutive runs of one envelope
    /// merged.
    pieces: Vec<(u32, u32, std::ops::Range<usize>)>,
    /// Group `g`'s pieces are `pieces[at[g]..at[g + 1]]`.
    at: Vec<u32>,
}

impl Copied {
    /// Group `g`'s segments, sharing their chunk.
    pub fn segments<'a>(&'a self, inc: &'a Incoming, g: usize) -> impl Iterator<Item = Segment> + 'a {
        self.pieces[self.at[g] as usize..self.at[g + 1] as usize]
            .iter()
            .map(move |(e, c, r)| Segment { env: inc.envs[*e as usize].clone(), spans: self.chunks[*c as usize].slice(r.clone()) })
    }
}

/// Where [`Incoming::copy_out`] will put each group: chunk capacities, decided before anything
/// is allocated so a decider can make room for exactly [`ChunkPlan::cost`] first.
pub struct ChunkPlan {
    /// Each chunk's capacity (a whole size class).
    caps: Vec<usize>,
    /// Group `g` goes into chunk `chunk_of[g]` (`u32::MAX` for a group without bytes).
    chunk_of: Vec<u32>,
}

impl ChunkPlan {
    /// Bytes the chunks will be charged, together.
    pub fn cost(&self) -> i64 {
        self.caps.iter().map(|c| chunk_cost(*c)).sum()
    }
}

/// What a chunk of capacity `cap` is charged: its buffer at its size class and the owner block.
fn chunk_cost(cap: usize) -> i64 {
    (size_class(cap) + CHUNK_OVERHEAD) as i64
}

impl Incoming {
    fn group_bytes(g: &Group) -> usize {
        g.runs.iter().map(|(_, _, r)| r.len()).sum::<usize>()
    }

    /// Lays the groups out in chunks of at most [`CHUNK_BYTES`] (a group is never split; a
    /// larger group has a chunk of its own).
    pub fn plan_chunks(&self) -> ChunkPlan {
        // What is left to place: a chunk is sized for it (up to CHUNK_BYTES), so the last one of
        // a batch is not a whole CHUNK_BYTES for a few spans.
        let mut left: usize = self.groups.iter().map(Self::group_bytes).sum();
        let mut caps: Vec<usize> = Vec::with_capacity(left.div_ceil(CHUNK_BYTES));
        let mut chunk_of = Vec::with_capacity(self.groups.len());
        let mut free = 0usize;
        for g in &self.groups {
            let n = Self::group_bytes(g);
            if n == 0 {
                chunk_of.push(u32::MAX);
                continue;
            }
            if free < n {
                // A chunk at a whole size class: freed chunks serve the next ones exactly.
                caps.push(size_class(left.min(CHUNK_BYTES).max(n)));
                free = *caps.last().expect("pushed");
            }
            free -= n;
            left -= n;
            chunk_of.push((caps.len() - 1) as u32);
        }
        ChunkPlan { caps, chunk_of }
    }

    /// Copies every group's spans into the chunks `plan` laid out. The caller charges
    /// [`ChunkPlan::cost`] to `held`; each chunk refunds its share when its last segment goes.
    pub fn copy_out(&self, plan: ChunkPlan, held: &Arc<Account>) -> Copied {
        let mut bufs: Vec<Vec<u8>> = plan.caps.iter().map(|c| Vec::with_capacity(*c)).collect();
        let mut pieces: Vec<(u32, u32, std::ops::Range<usize>)> = Vec::with_capacity(self.groups.len());
        let mut at = Vec::with_capacity(self.groups.len() + 1);
        for (g, c) in self.groups.iter().zip(&plan.chunk_of) {
            at.push(pieces.len() as u32);
            if *c == u32::MAX {
                continue;
            }
            let buf = &mut bufs[*c as usize];
            let first = pieces.len();
            for (e, b, range) in &g.runs {
                let start = buf.len();
                buf.extend_from_slice(self.run(*b, range));
                let mine = pieces.len() > first;
                match pieces.last_mut() {
                    Some((pe, _, pr)) if mine && *pe == *e && pr.end == start => pr.end = buf.len(),
                    _ => pieces.push((*e, *c, start..buf.len())),
                }
            }
        }
        at.push(pieces.len() as u32);
        let chunks = bufs
            .into_iter()
            .map(|buf| {
                debug_assert!(buf.len() <= buf.capacity() && buf.capacity() == size_class(buf.capacity()));
                let cost = chunk_cost(buf.capacity());
                bytes::Bytes::from_owner(Chunk { buf, held: held.clone(), cost })
            })
            .collect();
        Copied { chunks, pieces, at }
    }
}

/// An upper bound on the capacity a growable list (`Vec`, `VecDeque`, `SmallVec`, a hash map's
/// item capacity) of capacity `cap` reaches holding `need` items: each growth at least doubles.
pub fn grown(cap: usize, need: usize) -> usize {
    let mut c = cap;
    while c < need {
        c = (c * 2).max(4);
    }
    c
}

/// The most heap bytes a `SmallVec` of `len` items (capacity `cap`, on the heap when `spilled`)
/// of `elem` bytes each gains when `add` items are pushed: it spills or grows to the next power
/// of two, charged at its size class.
pub fn list_growth(len: usize, cap: usize, spilled: bool, add: usize, elem: usize) -> usize {
    if len + add <= cap {
        return 0;
    }
    let before = if spilled { size_class(cap * elem) } else { 0 };
    size_class((len + add).next_power_of_two() * elem).saturating_sub(before)
}

/// A trace's segments: most traces have one, kept inline (no allocation of its own).
pub type Segments = smallvec::SmallVec<[Segment; 1]>;

/// The heap a trace's segment list takes once it outgrows its inline slot, at the allocator's
/// size class.
fn segments_bytes(segments: &Segments) -> usize {
    if segments.spilled() { size_class(segments.capacity() * std::mem::size_of::<Segment>()) } else { 0 }
}

/// A trace's acknowledgements: most traces come in one batch with one, kept inline.
pub type Acks = smallvec::SmallVec<[Arc<Finalizer>; 1]>;

/// The heap an acknowledgement list takes once it outgrows its inline slot.
pub fn acks_bytes(a: &Acks) -> usize {
    if a.spilled() { size_class(a.capacity() * std::mem::size_of::<Arc<Finalizer>>()) } else { 0 }
}

/// A trace awaiting its decision.
pub struct Trace {
    /// Spans by envelope.
    pub segments: Segments,
    /// What a decision reads.
    pub summary: Summary,
    /// Bytes charged for it alone (its segment list once spilled, its acknowledgement list);
    /// its spans are charged with their chunks, its envelopes apart.
    pub bytes: usize,
    /// Bytes of its framed spans.
    pub span_bytes: usize,
    /// When its first span arrived.
    pub first: tokio::time::Instant,
    /// Its number in this shard (timer entries of a trace decided and seen again are stale).
    pub seq: u64,
    /// When it is decided, unless a cap decides it sooner.
    pub deadline: tokio::time::Instant,
    /// Acknowledgements of the batches that brought its spans.
    pub finalizers: Acks,
    /// The batch (by number) whose finalizers were last added.
    pub last_batch: u64,
}

impl Trace {
    /// Appends one batch's group `g` of spans (copied into `copied`); returns the bytes newly
    /// charged to the trace itself.
    pub fn append(&mut self, inc: &Incoming, copied: &Copied, g: usize) -> usize {
        let before = segments_bytes(&self.segments);
        for seg in copied.segments(inc, g) {
            self.span_bytes += seg.spans.len();
            self.segments.push(seg);
        }
        self.summary.merge(&inc.groups[g].summary);
        let added = segments_bytes(&self.segments) - before;
        self.bytes += added;
        added
    }

    /// Its size against `max_trace_bytes`: spans and what it holds alone.
    pub fn size(&self) -> usize {
        self.span_bytes + self.bytes
    }

    /// Every framed span, with its envelope.
    pub fn spans(&self) -> impl Iterator<Item = (&Env, &[u8])> {
        self.segments.iter().flat_map(|s| FramedIter { buf: &s.spans }.map(move |sp| (&*s.env, sp)))
    }
}

/// Iterates the span payloads of framed spans.
pub struct FramedIter<'a> {
    /// What is left.
    pub buf: &'a [u8],
}

impl<'a> Iterator for FramedIter<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.buf.is_empty() {
            return None;
        }
        let mut r = Reader::new(self.buf, 0);
        // Framed by `split` itself: a tag and a length that fit.
        let _ = r.tag().ok()?;
        let (span, _) = r.len_delimited().ok()?;
        self.buf = &self.buf[r.position()..];
        Some(span)
    }
}

/// Writes segments as `ResourceSpans` fields of a `TracesData`; `mark` (encoded attribute
/// fields) is appended to every span when given.
pub fn encode_segments(segments: &[Segment], mark: Option<&[u8]>, out: &mut Vec<u8>) {
    match mark {
        None => encode(segments, None, out),
        Some(m) => encode(segments, Some(&mut |_| std::borrow::Cow::Borrowed(m)), out),
    }
}

/// Writes segments as `ResourceSpans` fields of a `TracesData`, appending to every span the
/// bytes `mark(span)` gives it.
pub fn encode_segments_with(segments: &[Segment], mark: &mut dyn FnMut(&[u8]) -> Vec<u8>, out: &mut Vec<u8>) {
    encode(segments, Some(&mut |sp| std::borrow::Cow::Owned(mark(sp))), out);
}

/// The one encoder: unmarked segments are copied as they are, marked ones span by span.
fn encode<'m>(segments: &[Segment], mut mark: Option<&mut dyn FnMut(&[u8]) -> std::borrow::Cow<'m, [u8]>>, out: &mut Vec<u8>) {
    for s in segments {
        let marks: Vec<std::borrow::Cow<'m, [u8]>> = match mark.as_deref_mut() {
            Some(f) => FramedIter { buf: &s.spans }.map(|sp| f(sp)).collect(),
            None => Vec::new(),
        };
        let spans_len = if mark.is_some() { FramedIter { buf: &s.spans }.zip(&marks).map(|(sp, m)| field_len(sp.len() + m.len())).sum() } else { s.spans.len() };
        let scope_len = s.env.scope.len() + spans_len;
        let rs_len = s.env.resource.len() + field_len(scope_len);
        put_len(out, 0x0a, rs_len);
        out.extend_from_slice(&s.env.resource);
        put_len(out, 0x12, scope_len);
        out.extend_from_slice(&s.env.scope);
        if mark.is_none() {
            out.extend_from_slice(&s.spans);
            continue;
        }
        for (sp, m) in (FramedIter { buf: &s.spans }).zip(&marks) {
            put_len(out, 0x12, sp.len() + m.len());
            out.extend_from_slice(sp);
            out.extend_from_slice(m);
        }
    }
}

