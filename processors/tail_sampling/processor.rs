//! The processor: a front task that deals each batch's spans to `shards` deciders by trace id,
//! and the deciders, each the single owner of its traces.
//!
//! A decider holds a trace from its first span until the earliest of: `decision_wait` after the
//! first span, `decision_wait_after_root` after the root span (when set), the trace reaching
//! `max_trace_spans` / `max_trace_bytes`, or memory pressure (`max_bytes` reached with
//! `on_full: decide_oldest`: the oldest traces are decided early). Deadlines are kept in two
//! FIFO queues (first-span deadlines and root deadlines each grow monotonically with arrival), so
//! a decider sleeps exactly until the next deadline: millisecond resolution, no tick, and
//! ingest never delays a due decision by more than one batch.
//!
//! Acknowledgements: a held trace keeps the finalizers of every batch that brought it a span;
//! a kept trace passes them on with its spans, a trace not kept releases them (delivered: the
//! drop is the decision, counted). A Kafka receiver upstream therefore commits a record only
//! once every trace with a span in it was decided and, if kept, delivered.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use metrics::{Counter, Gauge, Histogram};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracepipe_pipeline::clock;
use tracepipe_pipeline::telemetry::names;
use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentError, ComponentFuture, Output};
use tracepipe_pipeline::{Batch, BatchStatus, Finalizer};

use super::cache::{Kept, NotSampledCache, SampledCache};
use super::config::{OnFull, TailSamplingConfig};
use super::policy::{Basis, Decision, Final, Policies};
use super::state::{self, Saved, SavedTrace};
use super::table::TraceTable;
use super::trace::{acks_bytes, Account, PRIOR_DROPPED, PRIOR_KEPT, encode_segments, encode_segments_with, fingerprint, grown, list_growth, put_len, shard_of_fingerprint, split, Acks, Incoming, Segment, Trace, TraceId};

/// Traces decided together have their SQL predicates evaluated on one record batch of about
/// this many spans.
const SQL_CHUNK_SPANS: u64 = 8192;

/// A kept trace's spans are flushed downstream in batches of about this many bytes.
const OUT_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Room reserved per kept span for its marks (policy name, adjusted count, tracestate): a guess
/// that only sizes the reservation; marks longer than it cost one reallocation.
const MARK_BYTES_PER_SPAN: usize = 64;

/// The attribute naming the policy that kept a trace.
pub const POLICY_ATTRIBUTE: &str = "tracepipe.sampling.policy";
/// The attribute with a kept span's adjusted count (1 / keep probability).
pub const ADJUSTED_COUNT_ATTRIBUTE: &str = "sampling.adjusted_count";

/// Why a trace was decided before its wait was over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Early {
    /// `max_bytes` reached.
    Memory,
    /// `max_trace_spans` reached.
    TraceSpans,
    /// `max_trace_bytes` reached.
    TraceBytes,
    /// `num_traces` reached.
    NumTraces,
    /// The processor is stopping.
    Shutdown,
}

impl Early {
    const ALL: [Early; 5] = [Early::Memory, Early::TraceSpans, Early::TraceBytes, Early::NumTraces, Early::Shutdown];
    fn as_str(self) -> &'static str {
        match self {
            Early::Memory => "memory",
            Early::TraceSpans => "trace_spans",
            Early::TraceBytes => "trace_bytes",
            Early::NumTraces => "num_traces",
            Early::Shutdown => "shutdown",
        }
    }
}

/// Metric handles, resolved once.
#[derive(Clone)]
struct Metrics {
    traces: [Counter; 3],
    spans: [Counter; 3],
    early: [Counter; 5],
    late_sampled: Counter,
    late_not_sampled: Counter,
    traces_held: Gauge,
    /// Traces held by every decider (the gauge is set from it once per round, not per trace).
    held_traces: Arc<AtomicI64>,
    bytes_held: Gauge,
    latency: Histogram,
    trace_spans: Histogram,
    dropped_decode: Counter,
    dropped_shutdown: Counter,
    handed_over: Counter,
    #[cfg_attr(not(feature = "archive"), allow(dead_code))]
    sql_errors: Counter,
    /// The process-wide account of this processor (tracepipe_memory_held_bytes) and what it was
    /// last moved to; set by `build` (simulations have none).
    account: Option<(tracepipe_pipeline::memory::Held, Arc<AtomicI64>)>,
}

impl Metrics {
    fn new(p: &str) -> Metrics {
        let fin = |name: &'static str| [Final::Sampled, Final::NotSampled, Final::Dropped].map(|d| metrics::counter!(name, "processor" => p.to_owned(), "decision" => d.as_str()));
        Metrics {
            traces: fin(names::PROCESSOR_TAIL_SAMPLING_TRACES),
            spans: fin(names::PROCESSOR_TAIL_SAMPLING_SPANS),
            early: Early::ALL.map(|r| metrics::counter!(names::PROCESSOR_TAIL_SAMPLING_EARLY_DECISIONS, "processor" => p.to_owned(), "reason" => r.as_str())),
            late_sampled: metrics::counter!(names::PROCESSOR_TAIL_SAMPLING_LATE_SPANS, "processor" => p.to_owned(), "decision" => "sampled"),
            late_not_sampled: metrics::counter!(names::PROCESSOR_TAIL_SAMPLING_LATE_SPANS, "processor" => p.to_owned(), "decision" => "not_sampled"),
            traces_held: metrics::gauge!(names::PROCESSOR_TAIL_SAMPLING_TRACES_HELD, "processor" => p.to_owned()),
            held_traces: Arc::new(AtomicI64::new(0)),
            bytes_held: metrics::gauge!(names::PROCESSOR_TAIL_SAMPLING_BYTES_HELD, "processor" => p.to_owned()),
            latency: metrics::histogram!(names::PROCESSOR_TAIL_SAMPLING_DECISION_LATENCY, "processor" => p.to_owned()),
            trace_spans: metrics::histogram!(names::PROCESSOR_TAIL_SAMPLING_TRACE_SPANS, "processor" => p.to_owned()),
            dropped_decode: metrics::counter!(names::PROCESSOR_DROPPED_SPANS, "processor" => p.to_owned(), "reason" => "decode"),
            dropped_shutdown: metrics::counter!(names::PROCESSOR_DROPPED_SPANS, "processor" => p.to_owned(), "reason" => "shutdown"),
            handed_over: metrics::counter!(names::PROCESSOR_HANDED_OVER_SPANS, "processor" => p.to_owned()),
            sql_errors: metrics::counter!(names::PROCESSOR_TAIL_SAMPLING_POLICY_ERRORS, "processor" => p.to_owned()),
            account: None,
        }
    }
}

/// The decision a trace's replayed context imposes (`tracepipe_pipeline::replay`): kept when a
/// previous owner kept it, not kept when it dropped it; none without context, or with context
/// of both kinds (decided by the policies).
fn prior_decision(prior: u8) -> Option<Decision> {
    let outcome = match prior {
        PRIOR_KEPT => Final::Sampled,
        PRIOR_DROPPED => Final::NotSampled,
        _ => return None,
    };
    Some(Decision { outcome, policy: None, probability: None, basis: Basis::Certain })
}

fn final_index(f: Final) -> usize {
    match f {
        Final::Sampled => 0,
        Final::NotSampled => 1,
        Final::Dropped => 2,
    }
}

/// The adjusted count and new tracestate of one kept span, from its own tracestate (an
/// upstream `ot=th:`) and what the decision rested on.
fn span_marks(ts: &str, basis: Basis) -> (Option<f64>, Option<String>) {
    use super::tracestate::{probability_of, threshold, with_threshold};
    let up = threshold(ts);
    let up_count = 1.0 / probability_of(up.unwrap_or(0));
    match basis {
        Basis::Certain => (Some(up_count), None),
        Basis::Consistent(t) => {
            let eff = up.unwrap_or(0).max(t);
            let ts = (Some(eff) != up && eff > 0).then(|| with_threshold(ts, Some(eff)));
            (Some(1.0 / probability_of(eff)), ts)
        }
        Basis::Independent(p) => (Some(up_count / p), up.map(|_| with_threshold(ts, None))),
        Basis::Unknown => (None, up.map(|_| with_threshold(ts, None))),
    }
}

/// Marks for a kept span: the deciding policy, the adjusted count and (when it changes) the
/// tracestate, as fields appended to the span (protobuf merges repeated attributes; a second
/// `trace_state` replaces the first).
fn span_mark_bytes(policy: &str, span: &[u8], basis: Basis) -> Vec<u8> {
    let ts = std::str::from_utf8(super::policy::trace_state_of(span)).unwrap_or("");
    let (count, new_ts) = span_marks(ts, basis);
    let mut out = mark_bytes(policy, count);
    if let Some(t) = new_ts {
        put_len(&mut out, 0x1a, t.len());
        out.extend_from_slice(t.as_bytes());
    }
    out
}

/// Writes a kept trace's segments with their marks: one set of bytes for every span when no span
/// has a tracestate, else each span's own.
/// Writes one kept segment, marked or not.
fn encode_kept(seg: &Segment, mark: bool, policy: &str, basis: Basis, per_span: bool, out: &mut Vec<u8>) {
    let one = std::slice::from_ref(seg);
    if mark {
        encode_marked(one, policy, basis, per_span, out);
    } else {
        encode_segments(one, None, out);
    }
}

fn encode_marked(segments: &[Segment], policy: &str, basis: Basis, per_span: bool, out: &mut Vec<u8>) {
    if per_span {
        encode_segments_with(segments, &mut |span| span_mark_bytes(policy, span, basis), out);
    } else {
        let (count, ts) = span_marks("", basis);
        let mut m = mark_bytes(policy, count);
        if let Some(t) = ts {
            put_len(&mut m, 0x1a, t.len());
            m.extend_from_slice(t.as_bytes());
        }
        encode_segments(segments, Some(&m), out);
    }
}

/// Encoded `KeyValue` attribute fields (Span field 9) marking kept spans: the policy, and the
/// adjusted count when known.
fn mark_bytes(policy: &str, adjusted_count: Option<f64>) -> Vec<u8> {
    let mut out = Vec::new();
    let kv = |out: &mut Vec<u8>, key: &str, value: &[u8]| {
        let kv_len = super::trace::field_len(key.len()) + super::trace::field_len(value.len());
        put_len(out, 0x4a, kv_len);
        put_len(out, 0x0a, key.len());
        out.extend_from_slice(key.as_bytes());
        put_len(out, 0x12, value.len());
        out.extend_from_slice(value);
    };
    let mut s = Vec::new();
    put_len(&mut s, 0x0a, policy.len());
    s.extend_from_slice(policy.as_bytes());
    kv(&mut out, POLICY_ATTRIBUTE, &s);
    if let Some(c) = adjusted_count.filter(|c| c.is_finite()) {
        let mut d = vec![0x21];
        d.extend_from_slice(&c.to_le_bytes());
        kv(&mut out, ADJUSTED_COUNT_ATTRIBUTE, &d);
    }
    out
}

/// Kept spans waiting to go downstream.
#[derive(Default)]
struct Out {
    buf: Vec<u8>,
    spans: usize,
    finalizers: Vec<Arc<Finalizer>>,
    ready: Vec<Batch>,
}

impl Out {
    fn seal(&mut self) {
        if self.spans == 0 {
            return;
        }
        let mut b = Batch::from_encoded(Bytes::from(std::mem::take(&mut self.buf)), self.spans);
        let mut seen = std::collections::HashSet::new();
        for f in self.finalizers.drain(..) {
            if seen.insert(Arc::as_ptr(&f)) {
                b = b.with_finalizer(f);
            }
        }
        self.spans = 0;
        self.ready.push(b);
    }
    fn maybe_seal(&mut self) {
        if self.buf.len() >= OUT_BATCH_BYTES {
            self.seal();
        }
    }
}

/// A deadline queue's entry: (deadline, trace, the trace's number).
type Deadline = (Instant, TraceId, u64);

/// Bytes of one deadline queue entry.
const DEADLINE: usize = std::mem::size_of::<Deadline>();

/// Shrinks a deadline queue to twice its length once it is under a quarter full, when the smaller
/// copy (allocated before the old one is freed) fits in `room` bytes.
fn shrink_queue(q: &mut VecDeque<Deadline>, room: i64) {
    if q.capacity() > 4096 && q.len() * 4 < q.capacity() && (q.len() * 2 * DEADLINE) as i64 <= room {
        q.shrink_to(q.len() * 2);
    }
}

/// One decider: the single owner of the traces whose ids hash to it.
pub struct Shard {
    cfg: Arc<TailSamplingConfig>,
    policies: Arc<Policies>,
    /// This decider's share of the held-bytes count.
    account: Arc<Account>,
    /// The most bytes it may hold: `max_bytes` over the deciders.
    budget: i64,
    /// `max_trace_bytes`, at most the budget (a trace is one decider's).
    trace_cap: u64,
    traces: TraceTable,
    wait_q: VecDeque<Deadline>,
    root_q: VecDeque<Deadline>,
    seq: u64,
    batches: u64,
    sampled: SampledCache,
    not_sampled: NotSampledCache,
    out: Out,
    m: Metrics,
    /// This shard's share of `num_traces` (0 = none).
    num_traces: usize,
    /// In `tracepipe sample`: what the decisions add up to.
    tally: Option<Box<super::simulate::Tally>>,
    /// Bytes of the index (map slots, deadline queues) currently charged.
    index_charged: i64,
    /// Room made for the batch being taken in and not yet used by its charges.
    reserved: i64,
}

impl Shard {
    fn new(cfg: Arc<TailSamplingConfig>, policies: Arc<Policies>, account: Arc<Account>, shards: usize, m: Metrics) -> Shard {
        let per = |n: usize| n.div_ceil(shards.max(1));
        let share = decider_share(&cfg, shards);
        let expected = (cfg.expected_new_traces_per_sec as usize).saturating_mul(cfg.decision_wait.as_secs().max(1) as usize);
        Shard {
            sampled: SampledCache::new(per(cfg.decision_cache.sampled_cache_size)),
            not_sampled: NotSampledCache::new(per(cfg.decision_cache.non_sampled_cache_size)),
            num_traces: per(cfg.num_traces as usize),
            traces: TraceTable::with_capacity(per(expected).min(1 << 22)),
            budget: share as i64,
            trace_cap: cfg.max_trace_bytes.min(share),
            cfg,
            policies,
            account,
            wait_q: VecDeque::new(),
            root_q: VecDeque::new(),
            seq: 0,
            batches: 0,
            out: Out::default(),
            m,
            tally: None,
            index_charged: 0,
            reserved: 0,
        }
    }

    /// Bytes the index takes, from its allocations' capacities: the trace table and the two
    /// deadline queues.
    fn index_bytes(&self) -> i64 {
        (self.traces.bytes() + (self.wait_q.capacity() + self.root_q.capacity()) * DEADLINE) as i64
    }

    /// Charges the change in the index's size; gives back room after a burst. A shrink
    /// allocates the smaller copy before it frees the old one, so it is done only when that copy
    /// fits the budget beside what is held (else it waits for a later call).
    fn recharge_index(&mut self) {
        if self.account.own() + self.traces.shrink_cost() as i64 <= self.budget {
            self.traces.shrink();
        }
        shrink_queue(&mut self.wait_q, self.budget - self.account.own());
        shrink_queue(&mut self.root_q, self.budget - self.account.own());
        let now = self.index_bytes();
        self.charge(now - self.index_charged);
        self.index_charged = now;
    }

    /// A decider for `tracepipe sample`, with its front (one shard).
    pub(crate) fn simulation(cfg: Arc<TailSamplingConfig>, policies: Arc<Policies>, held: Arc<AtomicI64>, tally: super::simulate::Tally) -> (Shard, Front) {
        let m = Metrics::new("sample");
        let account = Account::new(&held);
        let front = Front { accounts: vec![account.clone()], dropped: m.dropped_decode.clone(), name: "sample".into() };
        let mut shard = Shard::new(cfg, policies, account, 1, m);
        shard.tally = Some(Box::new(tally));
        (shard, front)
    }

    /// Decides every held trace but `open`.
    pub(crate) fn decide_all_but(&mut self, open: Option<&TraceId>, now: Instant) {
        let ids: Vec<TraceId> = self.wait_q.iter().map(|(_, id, _)| *id).filter(|id| Some(id) != open).collect();
        self.wait_q.retain(|(_, id, _)| Some(id) == open);
        self.decide_many(&ids, None, now);
    }

    /// The tally of a simulation.
    pub(crate) fn take_tally(&mut self) -> Option<super::simulate::Tally> {
        self.tally.take().map(|t| *t)
    }

    /// Sets the held gauges.
    fn publish(&self) {
        let now = self.account.total();
        if let Some((account, accounted)) = &self.m.account {
            // Shards publish concurrently: swap, so the deltas add up to `now`.
            let old = accounted.swap(now, Ordering::Relaxed);
            account.set_from(old.max(0) as usize, now.max(0) as usize);
        }
        self.m.bytes_held.set(now as f64);
        self.m.traces_held.set(self.m.held_traces.load(Ordering::Relaxed) as f64);
    }

    /// Adds to the held-bytes count; a charge inside the room made for the batch being taken
    /// in ([`Shard::make_room`]) uses that room instead.
    fn charge(&mut self, n: i64) {
        let from_room = n.clamp(0, self.reserved);
        self.reserved -= from_room;
        if n != from_room {
            self.account.add(n - from_room);
        }
    }

    /// Makes room for `need` more bytes and reserves it: with `on_full: decide_oldest`, decides
    /// this decider's oldest traces until its bytes plus `need` fit its budget (`max_bytes`
    /// over the deciders), then charges `need` at once. Only this decider adds to its account
    /// (others only refund, as chunks and envelopes are dropped downstream), so the check holds
    /// until the add, and the deciders together never pass `max_bytes`, not even while a batch
    /// is being taken in — unless one batch's share is bigger than a whole budget, or with
    /// `on_full: refuse`, where the front stops taking batches once the count is past the bound.
    fn make_room(&mut self, need: i64, now: Instant) {
        debug_assert_eq!(self.reserved, 0);
        if self.cfg.on_full == OnFull::DecideOldest {
            while self.account.own() + need > self.budget && self.decide_oldest(Early::Memory, now) {}
        }
        self.account.add(need);
        self.reserved = need;
    }

    /// Gives back what the batch just taken in did not use of its room.
    fn release_room(&mut self) {
        if self.reserved > 0 {
            self.account.add(-self.reserved);
        }
        self.reserved = 0;
    }

    /// The most the bookkeeping of `inc` can add: the traces' segment and acknowledgement lists
    /// (they grow by doubling, from their inline slot) and the index (new traces' slots and
    /// deadline queue entries), besides its chunks and envelopes.
    /// Also sets `held[g]` for each group whose trace is held now (making room only lets traces
    /// go, so one not held here is not held after it either).
    fn growth_bound(&self, inc: &Incoming, seq_batch: u64, held: &mut Vec<bool>) -> i64 {
        let seg = std::mem::size_of::<Segment>();
        let ack = std::mem::size_of::<Arc<Finalizer>>();
        let acks = inc.finalizers.len();
        let mut bound = 0usize;
        let mut new = 0usize;
        held.clear();
        for g in &inc.groups {
            // Pieces are runs merged, never more than the runs.
            let pieces = g.runs.len();
            let t = self.traces.get(&g.id);
            held.push(t.is_some());
            match t {
                Some(t) => {
                    bound += list_growth(t.segments.len(), t.segments.capacity(), t.segments.spilled(), pieces, seg);
                    if t.last_batch != seq_batch {
                        bound += list_growth(t.finalizers.len(), t.finalizers.capacity(), t.finalizers.spilled(), acks, ack);
                    }
                }
                None => {
                    new += 1;
                    bound += list_growth(0, 1, false, pieces, seg) + list_growth(0, 1, false, acks, ack);
                }
            }
        }
        // A queue that grows reallocates: its old buffer may live until the copy is done.
        let queue = |q: &VecDeque<Deadline>, add: usize| {
            let cap = grown(q.capacity(), q.len() + add);
            (cap + if cap > q.capacity() { q.capacity() } else { 0 }) * DEADLINE
        };
        let index = self.traces.peak_with(new) + queue(&self.wait_q, new) + queue(&self.root_q, inc.groups.len());
        (bound + index.saturating_sub(self.index_charged.max(0) as usize)) as i64
    }

    fn over_memory(&self) -> bool {
        self.account.own() > self.budget
    }

    /// The next deadline.
    fn next_deadline(&self) -> Option<Instant> {
        match (self.wait_q.front(), self.root_q.front()) {
            (Some(a), Some(b)) => Some(a.0.min(b.0)),
            (Some(a), None) => Some(a.0),
            (None, Some(b)) => Some(b.0),
            (None, None) => None,
        }
    }

    /// Takes one batch's share: held, appended, or (late) following the cached decision.
    pub fn ingest(&mut self, inc: Incoming, now: Instant) {
        self.batches += 1;
        let seq_batch = self.batches;
        // Room first, for everything this batch can add, so the count never passes max_bytes.
        let plan = inc.plan_chunks();
        let taken = plan.cost() + inc.envs.iter().map(|e| e.cost()).sum::<i64>();
        let mut held = Vec::with_capacity(inc.groups.len());
        let bound = self.growth_bound(&inc, seq_batch, &mut held);
        self.make_room(taken + bound, now);
        inc.envs.iter().for_each(|e| e.claim());
        self.charge(taken);
        let copied = inc.copy_out(plan, &self.account);
        for (gi, g) in inc.groups.iter().enumerate() {
            let spans = g.summary.spans;
            if let Some(t) = if held[gi] { self.traces.get_mut(&g.id) } else { None } {
                let had_root = t.summary.root;
                let added = t.append(&inc, &copied, gi);
                let mut added = added;
                if t.last_batch != seq_batch {
                    let before = acks_bytes(&t.finalizers);
                    t.finalizers.extend(inc.finalizers.iter().cloned());
                    t.last_batch = seq_batch;
                    let grown = acks_bytes(&t.finalizers) - before;
                    t.bytes += grown;
                    added += grown;
                }
                let (seq, deadline, root) = (t.seq, t.deadline, t.summary.root);
                self.charge(added as i64);
                if !had_root && root {
                    self.root_arrived(g.id, seq, deadline, now);
                }
                self.check_caps(g.id, now);
                continue;
            }
            let fp = fingerprint(&g.id);
            if let Some(k) = self.sampled.get(fp) {
                // Late spans of a kept trace: pass them on now, marked as the trace was.
                self.m.late_sampled.increment(spans);
                let segs: Vec<Segment> = copied.segments(&inc, gi).collect();
                if self.cfg.mark_policy {
                    let name = self.policies.list.get(k.policy as usize).map_or("", |p| p.name.as_str());
                    encode_marked(&segs, name, k.basis(), g.summary.trace_state, &mut self.out.buf);
                } else {
                    encode_segments(&segs, None, &mut self.out.buf);
                }
                self.out.spans += spans as usize;
                self.out.finalizers.extend(inc.finalizers.iter().cloned());
                self.out.maybe_seal();
                continue;
            }
            if self.not_sampled.contains(fp) {
                self.m.late_not_sampled.increment(spans);
                inc.finalizers.iter().for_each(|f| f.mark_decided_out());
                continue;
            }
            self.seq += 1;
            let deadline = now + self.cfg.decision_wait;
            let finalizers: Acks = inc.finalizers.iter().cloned().collect();
            let fin_bytes = acks_bytes(&finalizers);
            let mut t = Trace {
                segments: Default::default(),
                summary: Default::default(),
                bytes: fin_bytes,
                span_bytes: 0,
                first: now,
                seq: self.seq,
                deadline,
                finalizers,
                last_batch: seq_batch,
            };
            let added = t.append(&inc, &copied, gi);
            self.charge((added + fin_bytes) as i64);
            let root = t.summary.root;
            let over_cap = self.cap_reached(&t).is_some();
            self.traces.insert(g.id, t);
            self.m.held_traces.fetch_add(1, Ordering::Relaxed);
            self.wait_q.push_back((deadline, g.id, self.seq));
            if root {
                self.root_arrived(g.id, self.seq, deadline, now);
            }
            if over_cap {
                self.check_caps(g.id, now);
            }
        }
        drop(copied);
        drop(inc);
        self.recharge_index();
        self.release_room();
        // Bounds over all traces (past max_bytes only when make_room could not free enough).
        if self.cfg.on_full == OnFull::DecideOldest {
            while self.over_memory() && self.decide_oldest(Early::Memory, now) {}
        }
        while self.num_traces > 0 && self.traces.len() > self.num_traces && self.decide_oldest(Early::NumTraces, now) {}
        self.publish();
    }

    fn root_arrived(&mut self, id: TraceId, seq: u64, deadline: Instant, now: Instant) {
        if self.cfg.decision_wait_after_root.is_zero() {
            return;
        }
        let d = now + self.cfg.decision_wait_after_root;
        if d < deadline {
            if let Some(t) = self.traces.get_mut(&id) {
                t.deadline = d;
            }
            self.root_q.push_back((d, id, seq));
        }
    }

    fn check_caps(&mut self, id: TraceId, now: Instant) {
        if let Some(why) = self.traces.get(&id).and_then(|t| self.cap_reached(t)) {
            self.decide(id, Some(why), now);
        }
    }

    /// The cap a trace has reached (`max_trace_spans`, else `max_trace_bytes`), if any.
    fn cap_reached(&self, t: &Trace) -> Option<Early> {
        if t.summary.spans >= self.cfg.max_trace_spans {
            Some(Early::TraceSpans)
        } else if t.size() as u64 >= self.trace_cap {
            Some(Early::TraceBytes)
        } else {
            None
        }
    }

    /// Decides the oldest held trace; false when none is held.
    fn decide_oldest(&mut self, why: Early, now: Instant) -> bool {
        while let Some((_, id, seq)) = self.wait_q.pop_front() {
            if self.traces.get(&id).is_some_and(|t| t.seq == seq) {
                self.decide(id, Some(why), now);
                return true;
            }
        }
        false
    }

    /// Decides every trace whose deadline has come.
    pub fn expire(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some(&(d, id, seq)) = self.wait_q.front() {
            if d > now {
                break;
            }
            self.wait_q.pop_front();
            if self.traces.get(&id).is_some_and(|t| t.seq == seq) {
                due.push(id);
            }
        }
        while let Some(&(d, id, seq)) = self.root_q.front() {
            if d > now {
                break;
            }
            self.root_q.pop_front();
            if self.traces.get(&id).is_some_and(|t| t.seq == seq && t.deadline <= now) {
                due.push(id);
            }
        }
        // A trace due on both queues is decided once (the second lookup finds it gone).
        self.decide_many(&due, None, now);
        self.recharge_index();
        self.publish();
    }

    /// Decides one trace and releases it.
    fn decide(&mut self, id: TraceId, early: Option<Early>, now: Instant) {
        self.decide_many(&[id], early, now);
    }

    /// Decides traces and releases them; SQL predicates are evaluated once for all of them, on
    /// one record batch (in chunks of about [`SQL_CHUNK_SPANS`] spans).
    fn decide_many(&mut self, ids: &[TraceId], early: Option<Early>, now: Instant) {
        let mut chunk: Vec<(TraceId, Trace)> = Vec::new();
        let mut spans = 0u64;
        for id in ids {
            let Some(t) = self.traces.remove(id) else { continue };
            self.m.held_traces.fetch_sub(1, Ordering::Relaxed);
            if Finalizer::all_revoked(&t.finalizers) {
                // Its Kafka partition moved away (or the receiver is stopping): the new owner
                // reads the trace again from its first record and decides it whole.
                self.m.handed_over.increment(t.summary.spans);
                self.charge(-(t.bytes as i64));
                t.finalizers.iter().for_each(|f| f.set_status(BatchStatus::Errored));
                continue;
            }
            spans += t.summary.spans;
            chunk.push((*id, t));
            if spans >= SQL_CHUNK_SPANS {
                self.decide_chunk(std::mem::take(&mut chunk), early, now);
                spans = 0;
            }
        }
        if !chunk.is_empty() {
            self.decide_chunk(chunk, early, now);
        }
    }

    /// Each trace's SQL results, `sql.len()` per trace (none without the `archive` feature:
    /// `type: sql` does not validate there).
    #[cfg(not(feature = "archive"))]
    fn sql_bits(&self, traces: &[(TraceId, Trace)]) -> Vec<bool> {
        vec![false; traces.len() * self.policies.sql.len()]
    }

    /// Each trace's SQL results, `sql.len()` per trace.
    #[cfg(feature = "archive")]
    fn sql_bits(&self, traces: &[(TraceId, Trace)]) -> Vec<bool> {
        use datafusion::arrow::array::Array as _;
        let preds = &self.policies.sql;
        let mut bits = vec![false; traces.len() * preds.len()];
        if preds.is_empty() {
            return bits;
        }
        let mut buf = Vec::new();
        let mut spans = 0usize;
        for (_, t) in traces {
            encode_segments(&t.segments, None, &mut buf);
            spans += t.summary.spans as usize;
        }
        // The full conversion, built at most once, for predicates that read columns the
        // projection does not build.
        let mut full: Option<Result<datafusion::arrow::record_batch::RecordBatch, String>> = None;
        for (j, p) in preds.iter().enumerate() {
            let result = match p.evaluate_projected(&buf, spans) {
                Some(r) => r,
                None => {
                    let b = full.get_or_insert_with(|| tracepipe_pipeline::archive::encoded::encoded_to_record_batch([buf.as_slice()], spans).map_err(|e| e.to_string()));
                    match b {
                        Ok(b) => p.evaluate(b),
                        Err(e) => Err(e.clone()),
                    }
                }
            };
            match result {
                Ok(m) => {
                    let mut row = 0usize;
                    for (k, (_, t)) in traces.iter().enumerate() {
                        let n = t.summary.spans as usize;
                        bits[k * preds.len() + j] = (row..row + n).any(|r| r < m.len() && m.is_valid(r) && m.value(r));
                        row += n;
                    }
                }
                Err(error) => {
                    self.m.sql_errors.increment(traces.len() as u64);
                    tracing::warn!(message = "A sql policy failed; its vote is not sampled.", predicate = %p.text, %error);
                }
            }
        }
        bits
    }

    fn decide_chunk(&mut self, traces: Vec<(TraceId, Trace)>, early: Option<Early>, now: Instant) {
        let n = self.policies.sql.len();
        let bits = self.sql_bits(&traces);
        for (k, (id, t)) in traces.into_iter().enumerate() {
            let sql = &bits[k * n..(k + 1) * n];
            if let Some(d) = prior_decision(t.summary.prior) {
                // Replayed context of a previous owner's decision: decided its way, as that
                // owner's caches would have decided the late spans with it.
                self.release(id, t, d, early, now);
                continue;
            }
            let d = match self.tally.as_deref_mut() {
                Some(tally) => {
                    let d = self.policies.decide_votes(&id, &t, now, sql, Some(&mut tally.votes));
                    tally.add(&id, t.summary.spans, d.outcome, d.probability);
                    d
                }
                None => self.policies.decide(&id, &t, now, sql),
            };
            self.release(id, t, d, early, now);
        }
    }

    /// Passes a decided trace on (kept) or forgets it (not kept), and counts.
    fn release(&mut self, id: TraceId, t: Trace, d: Decision, early: Option<Early>, now: Instant) {
        let i = final_index(d.outcome);
        self.m.traces[i].increment(1);
        self.m.spans[i].increment(t.summary.spans);
        self.m.latency.record(now.saturating_duration_since(t.first).as_secs_f64());
        self.m.trace_spans.record(t.summary.spans as f64);
        if let Some(e) = early {
            self.m.early[Early::ALL.iter().position(|x| *x == e).expect("listed")].increment(1);
        }
        let fp = fingerprint(&id);
        if d.outcome == Final::Sampled {
            let policy = d.policy.unwrap_or(usize::from(u16::MAX)).min(usize::from(u16::MAX)) as u16;
            let threshold = match d.basis {
                Basis::Consistent(t) => t,
                _ => 0,
            };
            self.sampled.insert(fp, Kept { policy, probability: d.probability.map_or(f32::NAN, |p| p as f32), threshold });
            let Trace { segments, summary, finalizers, bytes, span_bytes, .. } = t;
            let name = d.policy.and_then(|i| self.policies.list.get(i)).map_or("", |p| p.name.as_str());
            let marks_per_span = if self.cfg.mark_policy { MARK_BYTES_PER_SPAN } else { 0 };
            let framing = |s: &Segment| s.env.resource.len() + s.env.scope.len() + 20;
            if span_bytes + summary.spans as usize * marks_per_span <= OUT_BATCH_BYTES {
                // Room for the whole trace at once (growing by doubling would take up to twice
                // its size beside it).
                let room: usize = segments.iter().map(framing).sum::<usize>() + span_bytes + summary.spans as usize * marks_per_span;
                self.out.buf.reserve(room);
                for seg in segments {
                    encode_kept(&seg, self.cfg.mark_policy, name, d.basis, summary.trace_state, &mut self.out.buf);
                }
                self.out.spans += summary.spans as usize;
                self.out.finalizers.extend(finalizers);
                self.out.maybe_seal();
            } else {
                // A big trace leaves in output batches of about OUT_BATCH_BYTES, each segment freed
                // as soon as it is copied, so the allocator reuses the freed segments for the next
                // batch: the trace never exists twice over (copied whole into one batch, a 40 MB
                // trace took 40 MB more at its decision). Every batch carries the trace's
                // acknowledgements; they are released when the last is delivered.
                let mut pending = 0usize;
                for seg in segments {
                    let n = super::trace::FramedIter { buf: &seg.spans }.count();
                    let size = framing(&seg) + seg.spans.len() + n * marks_per_span;
                    if !self.out.buf.is_empty() && self.out.buf.len() + size > OUT_BATCH_BYTES {
                        self.out.spans += pending;
                        pending = 0;
                        self.out.finalizers.extend(finalizers.iter().cloned());
                        self.out.seal();
                    }
                    if self.out.buf.capacity() - self.out.buf.len() < size {
                        self.out.buf.reserve_exact(size.max(OUT_BATCH_BYTES.saturating_sub(self.out.buf.len())));
                    }
                    encode_kept(&seg, self.cfg.mark_policy, name, d.basis, summary.trace_state, &mut self.out.buf);
                    pending += n;
                }
                self.out.spans += pending;
                self.out.finalizers.extend(finalizers);
                self.out.maybe_seal();
            }
            self.charge(-(bytes as i64));
        } else {
            self.not_sampled.insert(fp);
            t.finalizers.iter().for_each(|f| f.mark_decided_out());
            self.charge(-(t.bytes as i64));
        }
    }

    /// At shutdown: decides (or, with `drop_pending_traces_on_shutdown`, drops) every held trace.
    pub fn finish(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some((_, id, seq)) = self.wait_q.pop_front() {
            if !self.traces.get(&id).is_some_and(|t| t.seq == seq) {
                continue;
            }
            if self.cfg.drop_pending_traces_on_shutdown {
                let t = self.traces.remove(&id).expect("checked");
                self.m.held_traces.fetch_sub(1, Ordering::Relaxed);
                self.m.dropped_shutdown.increment(t.summary.spans);
                t.finalizers.iter().for_each(|f| f.mark_decided_out());
                self.charge(-(t.bytes as i64));
            } else {
                due.push(id);
            }
        }
        self.decide_many(&due, Some(Early::Shutdown), now);
        self.traces.shrink_to_fit();
        self.wait_q.shrink_to_fit();
        self.root_q.shrink_to_fit();
        self.recharge_index();
        self.publish();
    }

    /// At shutdown with `state_dir`: this decider's held traces (oldest first, unmarked) and
    /// caches. The traces stay held until [`Shard::saved`] says the file is written.
    pub fn save(&self, now: Instant) -> Saved {
        let mut out = Saved { policies: self.policies.list.iter().map(|p| p.name.clone()).collect(), ..Saved::default() };
        for (_, id, seq) in &self.wait_q {
            let Some(t) = self.traces.get(id).filter(|t| t.seq == *seq) else { continue };
            let mut data = Vec::new();
            encode_segments(&t.segments, None, &mut data);
            out.traces.push(SavedTrace { id: *id, age_ms: now.saturating_duration_since(t.first).as_millis() as u64, data });
        }
        out.sampled = self.sampled.iter().map(|(fp, k)| (fp, k.policy, k.probability, k.threshold)).collect();
        out.not_sampled = self.not_sampled.iter().collect();
        out
    }

    /// The saved traces are on disk: release them (their acknowledgements report delivered; the
    /// file now holds them).
    pub fn saved(&mut self) {
        for (_, t) in self.traces.drain() {
            self.account.add(-(t.bytes as i64));
            self.m.held_traces.fetch_sub(1, Ordering::Relaxed);
        }
        self.wait_q.clear();
        self.root_q.clear();
        self.recharge_index();
        self.publish();
    }

    /// Takes up a saved trace, held since `first`.
    pub fn restore(&mut self, inc: Incoming, first: Instant) {
        self.ingest(inc, first);
    }

    /// Takes up saved decisions (policy indices already mapped to this configuration).
    pub fn restore_caches(&mut self, sampled: impl Iterator<Item = (u64, Kept)>, not_sampled: impl Iterator<Item = u64>) {
        sampled.for_each(|(fp, k)| self.sampled.insert(fp, k));
        not_sampled.for_each(|fp| self.not_sampled.insert(fp));
    }

    /// Batches ready to go downstream.
    pub fn take_ready(&mut self) -> Vec<Batch> {
        self.out.seal();
        std::mem::take(&mut self.out.ready)
    }

    /// Lets go at once every held trace whose every record's partition was revoked (see
    /// [`Finalizer::announce_revocation`]).
    pub fn hand_over_revoked(&mut self, now: Instant) {
        let ids: Vec<TraceId> = self.traces.iter().filter(|(_, t)| Finalizer::all_revoked(&t.finalizers)).map(|(id, _)| *id).collect();
        if !ids.is_empty() {
            self.decide_many(&ids, None, now);
            self.recharge_index();
            self.publish();
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Incoming>, output: Output, name: String, index: usize) -> Result<(), ComponentError> {
        let mut revocations = Finalizer::revocations();
        loop {
            let next = self.next_deadline();
            let sleep = async move {
                match next {
                    // Deadlines are on the processors' clock, which stands still while an input
                    // is stalled (pipeline::clock): look again now and then meanwhile.
                    Some(_) if clock::stalled() => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                    // (at least 1 ms: while the clock stands still the remainder does not shrink)
                    Some(n) => tokio::time::sleep_until(clock::wall(n).max(Instant::now() + std::time::Duration::from_millis(1))).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                m = rx.recv() => match m {
                    Some(inc) => {
                        let now = clock::now();
                        self.ingest(inc, now);
                        // A busy input never holds back a due decision.
                        self.expire(now);
                    }
                    None => break,
                },
                _ = sleep => self.expire(clock::now()),
                Ok(()) = revocations.changed() => self.hand_over_revoked(clock::now()),
            }
            for b in self.take_ready() {
                output.send(b).await.map_err(|e| ComponentError(format!("processor `{name}`: downstream stopped: {e}")))?;
            }
        }
        let mut saved = false;
        if let Some(dir) = self.cfg.state_dir.clone() {
            let now = Instant::now();
            let state = self.save(now);
            let traces = state.traces.len();
            match tokio::task::spawn_blocking({
                let name = name.clone();
                move || state::write(&dir, &name, index, &state)
            })
            .await
            {
                Ok(Ok(path)) => {
                    tracing::info!(message = "Held traces saved for the next start.", processor = %name, traces, path = %path.display());
                    self.saved();
                    saved = true;
                }
                Ok(Err(error)) => tracing::error!(message = "Cannot save held traces; deciding them now.", processor = %name, %error),
                Err(error) => tracing::error!(message = "Cannot save held traces; deciding them now.", processor = %name, %error),
            }
        }
        if !saved {
            self.finish(Instant::now());
        }
        for b in self.take_ready() {
            output.send(b).await.map_err(|e| ComponentError(format!("processor `{name}`: downstream stopped: {e}")))?;
        }
        Ok(())
    }
}

/// The number of deciders `shards: 0` means.
pub fn shard_count(cfg: &TailSamplingConfig) -> usize {
    if cfg.shards > 0 {
        cfg.shards
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// The bytes one of `shards` deciders may hold: its share of `max_bytes`, less its decision
/// caches (allocated at their full size: see cache.rs).
fn decider_share(cfg: &TailSamplingConfig, shards: usize) -> u64 {
    let per = |n: usize| n.div_ceil(shards.max(1));
    let caches = super::cache::cache_bytes(per(cfg.decision_cache.sampled_cache_size), true) + super::cache::cache_bytes(per(cfg.decision_cache.non_sampled_cache_size), false);
    (cfg.max_bytes / shards.max(1) as u64).saturating_sub(caches).max(64 << 10)
}

/// The front: splits batches by shard.
pub struct Front {
    /// Each decider's account (its envelopes are charged to it).
    accounts: Vec<Arc<Account>>,
    dropped: Counter,
    name: String,
}

impl Front {
    /// Deals one `TracesData` buffer's spans to the shards (a saved trace).
    pub fn split_bytes(&self, buf: &[u8]) -> Result<Vec<Incoming>, tracepipe_pipeline::wire::WireError> {
        let mut parts: Vec<Incoming> = self.accounts.iter().map(|_| Incoming::default()).collect();
        split(&Bytes::copy_from_slice(buf), &self.accounts, &mut parts)?;
        Ok(parts)
    }

    /// Deals a batch's spans to the shards; a batch that does not decode is counted, reported
    /// rejected and dropped.
    pub fn split(&self, batch: &Batch) -> Vec<Incoming> {
        let mut parts: Vec<Incoming> = self.accounts.iter().map(|_| Incoming::default()).collect();
        let buffers: Vec<Bytes> = batch.encoded_chunks().unwrap_or_else(|| vec![batch.to_bytes()]);
        for buf in &buffers {
            if let Err(error) = split(buf, &self.accounts, &mut parts) {
                self.dropped.increment(batch.span_count() as u64);
                batch.set_status(BatchStatus::Rejected);
                tracing::error!(message = "Batch does not decode; spans dropped.", processor = %self.name, spans = batch.span_count(), %error);
                return Vec::new();
            }
        }
        for p in parts.iter_mut().filter(|p| p.spans > 0) {
            p.finalizers = batch.finalizers().to_vec();
        }
        parts
    }
}

/// Takes up what the last run saved in `dir`: traces (oldest first, each held for what remains
/// of its wait) and cached decisions (policies matched by name).
pub fn restore(dir: &std::path::Path, name: &str, front: &Front, policies: &Policies, deciders: &mut [Shard]) {
    let (saved, errors) = state::take_all(dir, name);
    for error in errors {
        tracing::error!(message = "Saved tail-sampling state not read; starting without it.", processor = %name, %error);
    }
    if saved.is_empty() {
        return;
    }
    let now = Instant::now();
    let mut traces: Vec<&SavedTrace> = saved.iter().flat_map(|s| &s.traces).collect();
    traces.sort_by_key(|t| std::cmp::Reverse(t.age_ms));
    let mut restored = 0usize;
    for t in &traces {
        match front.split_bytes(&t.data) {
            Ok(parts) => {
                let first = now.checked_sub(std::time::Duration::from_millis(t.age_ms)).unwrap_or(now);
                for (i, p) in parts.into_iter().enumerate() {
                    if p.spans > 0 {
                        deciders[i].restore(p, first);
                    }
                }
                restored += 1;
            }
            Err(error) => tracing::error!(message = "Saved trace does not decode; skipped.", processor = %name, %error),
        }
    }
    let n = deciders.len();
    for s in &saved {
        let map: Vec<u16> = s.policies.iter().map(|p| policies.list.iter().position(|q| &q.name == p).map_or(u16::MAX, |i| i as u16)).collect();
        for (i, d) in deciders.iter_mut().enumerate() {
            d.restore_caches(
                s.sampled.iter().filter(|(fp, ..)| shard_of_fingerprint(*fp, n) == i).map(|(fp, p, prob, th)| {
                    (*fp, Kept { policy: map.get(*p as usize).copied().unwrap_or(u16::MAX), probability: *prob, threshold: *th })
                }),
                s.not_sampled.iter().copied().filter(|fp| shard_of_fingerprint(*fp, n) == i),
            );
        }
    }
    tracing::info!(message = "Saved traces taken up.", processor = %name, traces = restored);
}

/// Builds the processor task.
pub async fn build(cfg: TailSamplingConfig, mut ctx: ComponentContext) -> Result<ComponentFuture, BuildError> {
    let mut input = ctx.take_input()?;
    let output = ctx.take_output()?;
    let name = ctx.name.clone();
    let shutdown = ctx.shutdown.clone();
    let shards = shard_count(&cfg);
    if cfg.max_trace_bytes > decider_share(&cfg, shards) {
        tracing::warn!(
            message = "max_trace_bytes is above a decider's share of max_bytes; a trace is decided when it reaches the share.",
            processor = %name,
            max_trace_bytes = cfg.max_trace_bytes,
            share = decider_share(&cfg, shards),
            shards,
        );
    }
    let cfg = Arc::new(cfg);
    let held = Arc::new(AtomicI64::new(0));
    let policies = Arc::new(Policies::new(&cfg.policies, &name, cfg.sample_on_first_match));
    let mut m = Metrics::new(&name);
    m.account = Some((tracepipe_pipeline::memory::Held::component(&name), Arc::new(AtomicI64::new(0))));
    let accounts: Vec<Arc<Account>> = (0..shards).map(|_| Account::new(&held)).collect();
    let front = Front { accounts: accounts.clone(), dropped: m.dropped_decode.clone(), name: name.clone() };
    let mut deciders: Vec<Shard> = accounts.into_iter().map(|a| Shard::new(cfg.clone(), policies.clone(), a, shards, m.clone())).collect();
    if let Some(dir) = &cfg.state_dir {
        restore(dir, &name, &front, &policies, &mut deciders);
    }
    let mut senders = Vec::new();
    let mut handles = Vec::new();
    for (i, shard) in deciders.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel::<Incoming>(2);
        handles.push(tokio::spawn(shard.run(rx, output.clone(), name.clone(), i)));
        senders.push(tx);
    }
    Ok(Box::pin(async move {
        let stopped = |e: String| ComponentError(format!("processor `{name}`: {e}"));
        loop {
            if cfg.on_full == OnFull::Refuse && held.load(Ordering::Relaxed) > cfg.max_bytes as i64 && !shutdown.is_cancelled() {
                // Backpressure: leave the input unread until decisions free room. Once the
                // process is stopping the input is drained whatever the bound (the deciders then
                // decide everything held), so shutdown never waits for decision_wait.
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(5)) => {}
                    _ = shutdown.cancelled() => {}
                }
                continue;
            }
            let Some(batch) = input.recv().await else { break };
            let parts = front.split(&batch);
            drop(batch);
            for (i, p) in parts.into_iter().enumerate() {
                if p.spans > 0 && senders[i].send(p).await.is_err() {
                    break;
                }
            }
            if senders.iter().any(|s| s.is_closed()) {
                break;
            }
        }
        drop(senders);
        let mut result = Ok(());
        for h in handles {
            match h.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(e) => result = Err(stopped(format!("a decider failed: {e}"))),
            }
        }
        result
    }))
}

#[cfg(test)]
pub(crate) fn test_shard(cfg: TailSamplingConfig) -> (Shard, Front) {
    let cfg = Arc::new(cfg);
    let held = Arc::new(AtomicI64::new(0));
    let policies = Arc::new(Policies::new(&cfg.policies, "test", cfg.sample_on_first_match));
    let m = Metrics::new("test");
    let account = Account::new(&held);
    let front = Front { accounts: vec![account.clone()], dropped: m.dropped_decode.clone(), name: "test".into() };
    (Shard::new(cfg, policies, account, 1, m), front)
}

#[cfg(test)]
pub(crate) fn test_shards(cfg: TailSamplingConfig) -> (Vec<Shard>, Front) {
    let n = cfg.shards.max(1);
    let cfg = Arc::new(cfg);
    let held = Arc::new(AtomicI64::new(0));
    let policies = Arc::new(Policies::new(&cfg.policies, "test", cfg.sample_on_first_match));
    let m = Metrics::new("test");
    let accounts: Vec<Arc<Account>> = (0..n).map(|_| Account::new(&held)).collect();
    let front = Front { accounts: accounts.clone(), dropped: m.dropped_decode.clone(), name: "test".into() };
    (accounts.into_iter().map(|a| Shard::new(cfg.clone(), policies.clone(), a, n, m.clone())).collect(), front)
}

#[cfg(test)]
impl Shard {
    pub(crate) fn held_traces(&self) -> usize {
        self.traces.len()
    }
    /// Held bytes but the index's.
    pub(crate) fn held_span_bytes(&self) -> i64 {
        self.account.own() - self.index_charged
    }
    pub(crate) fn held_bytes(&self) -> i64 {
        self.account.own()
    }
    /// The processor's count, every decider's bytes.
    pub(crate) fn held_counter(&self) -> Arc<AtomicI64> {
        self.account.total_counter()
    }
}
