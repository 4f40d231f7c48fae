//! The processor task: a single owner of the held guids.
//!
//! Held spans keep their batches' acknowledgements: each guid's group holds the finalizers of
//! every batch that brought it a span, and the batch that releases the group carries them on, so
//! a Kafka receiver commits a record only once every span of it has been delivered downstream.
//! A span's resource and scope are shared by every span held from the same `ResourceSpans` /
//! `ScopeSpans` (counted in the held bytes once per guid that holds them).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use metrics::{Counter, Gauge};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use prost::Message;
use tokio::time::Instant;
use tracepipe_pipeline::clock;
use tracepipe_pipeline::telemetry::names;
use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentError, ComponentFuture, Output};
use tracepipe_pipeline::{Batch, BatchStatus, Finalizer};

use super::config::GuidInferenceConfig;
use super::infer::{resolve, retrace, string_attr, Envelope, Held, Rules};

/// Bytes charged per held span on top of its encoding (the `Held` and map entries).
const SPAN_OVERHEAD: usize = 64;

struct Group {
    spans: Vec<Held>,
    bytes: usize,
    /// Acknowledgements of the batches that brought spans, each once.
    finalizers: Vec<Arc<Finalizer>>,
    /// The batch (by arrival number) that last added its finalizers.
    last_batch: u64,
    /// The addresses of the resource and scope envelopes last charged to this group (only
    /// compared, while the group holds both alive).
    last_envelopes: (usize, usize),
    /// Which opening of this key the group is (an `order` entry of an earlier one is stale).
    generation: u64,
}

/// What a group is held by: a guid, or (spans without one, `hold_untagged`) a trace id not yet
/// seen on a guid's span.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Guid(String),
    Trace(Vec<u8>),
}

/// Spans to pass on, with the acknowledgements they carry. Guids read from revocable inputs (Kafka
/// partitions) leave each in its own batch, with only its own records' acknowledgements: a
/// processor downstream that holds them (tail sampling) attaches a batch's acknowledgements to
/// every trace in it, so (1) a trace of a revoked partition must not carry another partition's
/// — it would not be handed over, but decided after the partition moved and delivered by both
/// owners — and (2) a record must not ride with other requests' traces, or what became of it
/// (kept or dropped, written to `progress_topic` for the next owner: pipeline::replay) reads as
/// mixed. Guids of other inputs leave together.
#[derive(Default)]
struct Released {
    parts: Vec<Part>,
    /// Parts of non-revocable inputs, by their inputs' ids ([`Finalizer::input_id`], sorted,
    /// each once).
    shared: HashMap<Vec<usize>, usize>,
}

#[derive(Default)]
struct Part {
    spans: Vec<Held>,
    finalizers: Vec<Arc<Finalizer>>,
}

impl Released {
    fn is_empty(&self) -> bool {
        self.parts.iter().all(|p| p.spans.is_empty())
    }

    fn add(&mut self, spans: Vec<Held>, finalizers: Vec<Arc<Finalizer>>) {
        let mut inputs: Vec<usize> = finalizers.iter().map(|f| f.input_id()).collect();
        inputs.sort_unstable();
        inputs.dedup();
        // A guid of Kafka records: a part of its own, without looking at the others (a tick may
        // release many thousands). Other inputs: the few merged parts.
        let revocable = inputs.iter().any(|&i| i != 0);
        let found = if revocable { None } else { self.shared.get(&inputs).copied() };
        match found {
            Some(i) => {
                self.parts[i].spans.extend(spans);
                self.parts[i].finalizers.extend(finalizers);
            }
            None => {
                if !revocable {
                    self.shared.insert(inputs, self.parts.len());
                }
                self.parts.push(Part { spans, finalizers });
            }
        }
    }

    /// One batch per part.
    fn into_batches(self) -> Vec<Batch> {
        self.parts.into_iter().filter(|p| !p.spans.is_empty()).map(to_batch).collect()
    }
}

struct Metrics {
    spans_held: Gauge,
    guids_held: Gauge,
    bytes_held: Gauge,
    /// The process-wide account (tracepipe_memory_held_bytes) and the bytes last moved to it.
    account: tracepipe_pipeline::memory::Held,
    accounted: std::sync::atomic::AtomicUsize,
    edges: Counter,
    cross_node_edges: Counter,
    ambiguous: Counter,
    cross_node_ambiguous: Counter,
    evicted: Counter,
    too_large: Counter,
    dropped: Counter,
    retraced: Counter,
    retraced_late: Counter,
    handed_over: Counter,
}

/// Trace ids rewritten by resolutions, old → new, so spans of a fragment that arrive after its
/// guid was resolved take the same new id. Two generations of at most `capacity / 2` entries:
/// the oldest half is forgotten at once.
#[derive(Default)]
struct Rewrites {
    current: HashMap<Vec<u8>, Vec<u8>>,
    previous: HashMap<Vec<u8>, Vec<u8>>,
    capacity: usize,
}

impl Rewrites {
    fn get(&self, old: &[u8]) -> Option<&Vec<u8>> {
        self.current.get(old).or_else(|| self.previous.get(old))
    }

    fn insert(&mut self, old: Vec<u8>, new: Vec<u8>) {
        if self.capacity == 0 {
            return;
        }
        if self.current.len() >= self.capacity.div_ceil(2) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(old, new);
    }
}

struct State {
    cfg: GuidInferenceConfig,
    rules: Rules,
    groups: HashMap<Key, Group>,
    order: VecDeque<(Instant, Key, u64)>,
    /// Trace id → the held guid whose spans carry it: spans without the guid join that group.
    traces: HashMap<Vec<u8>, String>,
    rewrites: Rewrites,
    bytes: usize,
    spans: usize,
    guids: usize,
    generations: u64,
    m: Metrics,
    name: String,
    /// Batches ingested so far.
    batches: u64,
}

/// Replayed context (`tracepipe_pipeline::replay`: spans a previous owner of their Kafka
/// partition finished, sent again with a late record of their request) is resolved with the late
/// spans and decided the previous owner's way without being delivered again. That is right only
/// if the request rebuilds as it did there: late spans without the guid (an application's own
/// spans, following their fragment's trace id) change nothing of it, but a late span *with* the
/// guid can (another root, another trace id for the same spans). Then the mark is cleared: the
/// context becomes ordinary spans, the request is decided again whole and delivered twice rather
/// than in two inconsistent parts.
fn unmark_unsure_context(spans: &mut [Held]) {
    use tracepipe_pipeline::replay;
    if !replay::seen() || !spans.iter().any(|h| h.tagged && replay::prior(h.resource.value.as_ref()).is_none()) {
        return;
    }
    let mut replaced: Vec<(*const Envelope<_>, Arc<Envelope<_>>)> = Vec::new();
    for h in spans.iter_mut() {
        if replay::prior(h.resource.value.as_ref()).is_none() {
            continue;
        }
        let ptr = Arc::as_ptr(&h.resource);
        let new = match replaced.iter().find(|(p, _)| *p == ptr) {
            Some((_, n)) => n.clone(),
            None => {
                let mut value = h.resource.value.clone();
                replay::unmark(&mut value);
                let n = Arc::new(Envelope { value, schema_url: h.resource.schema_url.clone() });
                replaced.push((ptr, n.clone()));
                n
            }
        };
        h.resource = new;
    }
}

/// Regroups released spans: consecutive spans that share a resource (and scope) envelope share
/// one `ResourceSpans` (`ScopeSpans`) again; the batch carries the finalizers, each once.
fn to_batch(released: Part) -> Batch {
    let mut rs: Vec<ResourceSpans> = Vec::new();
    let mut last: Option<(Arc<Envelope<_>>, Arc<Envelope<_>>)> = None;
    for h in released.spans {
        let same_resource = last.as_ref().is_some_and(|(r, _)| Arc::ptr_eq(r, &h.resource));
        let same_scope = same_resource && last.as_ref().is_some_and(|(_, s)| Arc::ptr_eq(s, &h.scope));
        if !same_resource {
            rs.push(ResourceSpans { resource: h.resource.value.clone(), scope_spans: Vec::new(), schema_url: h.resource.schema_url.clone() });
        }
        let r = rs.last_mut().expect("pushed");
        if !same_scope {
            r.scope_spans.push(ScopeSpans { scope: h.scope.value.clone(), spans: Vec::new(), schema_url: h.scope.schema_url.clone() });
        }
        r.scope_spans.last_mut().expect("pushed").spans.push(h.span);
        last = Some((h.resource, h.scope));
    }
    let mut seen = HashSet::new();
    let mut b = Batch::from_resource_spans(rs);
    for f in released.finalizers {
        if seen.insert(Arc::as_ptr(&f)) {
            b = b.with_finalizer(f);
        }
    }
    b
}

impl State {
    fn gauges(&self) {
        self.m.spans_held.set(self.spans as f64);
        self.m.guids_held.set(self.guids as f64);
        self.m.bytes_held.set(self.bytes as f64);
        let old = self.m.accounted.swap(self.bytes, std::sync::atomic::Ordering::Relaxed);
        self.m.account.set_from(old, self.bytes);
    }

    /// The group of `key`, opened (and queued for its wait) if not held.
    fn group(&mut self, key: Key, now: Instant) -> &mut Group {
        let (order, generations, guids) = (&mut self.order, &mut self.generations, &mut self.guids);
        self.groups.entry(key).or_insert_with_key(|k| {
            *generations += 1;
            order.push_back((now, k.clone(), *generations));
            *guids += matches!(k, Key::Guid(_)) as usize;
            Group { spans: Vec::new(), bytes: 0, finalizers: Vec::new(), last_batch: 0, last_envelopes: (0, 0), generation: *generations }
        })
    }

    /// Takes a batch apart: spans with a guid are held by it; spans without one are held by
    /// their trace id (joining the guid group that holds that trace, or later joined by it) with
    /// `hold_untagged`, else come back at once. A span of a trace that an earlier resolution
    /// rewrote takes the new trace id first. A batch still in wire form whose bytes do not
    /// contain the guid key passes untouched, without being decoded, unless untagged spans are
    /// held. A batch that does not decode is counted, reported rejected and dropped; the
    /// processor goes on.
    fn ingest(&mut self, mut batch: Batch, now: Instant) -> Batch {
        let key = self.cfg.guid_attribute.clone();
        let hold_untagged = self.cfg.hold_untagged;
        if !hold_untagged && batch.encoded_contains(key.as_bytes()) == Some(false) && self.rewrites.current.is_empty() && self.rewrites.previous.is_empty() {
            return batch;
        }
        self.batches += 1;
        let seq = self.batches;
        let finalizers = batch.finalizers().to_vec();
        let rs = match batch.resource_spans_mut() {
            Ok(rs) => rs,
            Err(error) => {
                self.m.dropped.increment(batch.span_count() as u64);
                batch.set_status(BatchStatus::Rejected);
                tracing::error!(message = "Batch does not decode; spans dropped.", processor = %self.name, spans = batch.span_count(), %error);
                return Batch::empty();
            }
        };
        for r in rs.iter_mut() {
            let mut resource: Option<Arc<Envelope<_>>> = None;
            for ss in r.scope_spans.iter_mut() {
                let mut scope: Option<Arc<Envelope<_>>> = None;
                let spans = std::mem::take(&mut ss.spans);
                for mut s in spans {
                    let guid = string_attr(&s, &key).map(str::to_owned);
                    if let Some(new) = self.rewrites.get(&s.trace_id) {
                        let new = new.clone();
                        retrace(&mut s, new);
                        self.m.retraced_late.increment(1);
                        if guid.is_none() {
                            ss.spans.push(s); // its fragment is already resolved
                            continue;
                        }
                    }
                    let tagged = guid.is_some();
                    let group_key = match guid {
                        Some(g) => {
                            if !self.traces.contains_key(&s.trace_id) {
                                self.traces.insert(s.trace_id.clone(), g.clone());
                                // Untagged spans held for this trace join the guid.
                                if let Some(t) = self.groups.remove(&Key::Trace(s.trace_id.clone())) {
                                    let target = self.group(Key::Guid(g.clone()), now);
                                    target.spans.extend(t.spans);
                                    target.bytes += t.bytes;
                                    target.finalizers.extend(t.finalizers);
                                    target.last_envelopes = (0, 0);
                                }
                            }
                            Key::Guid(g)
                        }
                        None if !hold_untagged => {
                            ss.spans.push(s);
                            continue;
                        }
                        None => match self.traces.get(&s.trace_id) {
                            Some(g) => Key::Guid(g.clone()),
                            None => Key::Trace(s.trace_id.clone()),
                        },
                    };
                    let resource = resource.get_or_insert_with(|| Arc::new(Envelope { value: r.resource.clone(), schema_url: r.schema_url.clone() }));
                    let scope = scope.get_or_insert_with(|| Arc::new(Envelope { value: ss.scope.clone(), schema_url: ss.schema_url.clone() }));
                    let g = self.group(group_key, now);
                    let mut bytes = s.encoded_len() + SPAN_OVERHEAD;
                    let envelopes = (Arc::as_ptr(resource) as usize, Arc::as_ptr(scope) as usize);
                    if g.last_envelopes != envelopes {
                        // The first span of these envelopes in this group: charge them (they stay
                        // alive while the group holds it). An upper bound of the memory shared.
                        bytes += r.resource.as_ref().map_or(0, |x| x.encoded_len()) + ss.scope.as_ref().map_or(0, |x| x.encoded_len()) + SPAN_OVERHEAD;
                        g.last_envelopes = envelopes;
                    }
                    if g.last_batch != seq {
                        g.finalizers.extend(finalizers.iter().cloned());
                        g.last_batch = seq;
                    }
                    g.bytes += bytes;
                    g.spans.push(Held { resource: resource.clone(), scope: scope.clone(), span: s, tagged });
                    self.bytes += bytes;
                    self.spans += 1;
                }
            }
            r.scope_spans.retain(|ss| !ss.spans.is_empty());
        }
        rs.retain(|r| !r.scope_spans.is_empty());
        batch.recount();
        self.gauges();
        batch
    }

    /// Passes a group on: a guid's spans resolved together (trace ids rewritten are remembered
    /// for late spans), a trace's untagged spans as they are.
    fn release(&mut self, key: &Key, out: &mut Released) {
        let Some(g) = self.groups.remove(key) else { return };
        self.bytes -= g.bytes;
        self.spans -= g.spans.len();
        if Finalizer::all_revoked(&g.finalizers) {
            // Its Kafka partition moved away (or the receiver is stopping): the new owner reads
            // these spans again and rebuilds the request whole.
            self.m.handed_over.increment(g.spans.len() as u64);
            g.finalizers.iter().for_each(|f| f.set_status(BatchStatus::Errored));
            if let Key::Guid(guid) = key {
                self.guids -= 1;
                self.traces.retain(|_, g| g != guid);
            }
            return;
        }
        let mut spans = g.spans;
        if let Key::Guid(guid) = key {
            self.guids -= 1;
            unmark_unsure_context(&mut spans);
            let before: Vec<Vec<u8>> = spans.iter().map(|h| h.span.trace_id.clone()).collect();
            for t in &before {
                if self.traces.get(t).is_some_and(|x| x == guid) {
                    self.traces.remove(t);
                }
            }
            let o = resolve(&mut spans, &self.rules);
            self.m.edges.increment(o.edges - o.cross_node_edges);
            self.m.cross_node_edges.increment(o.cross_node_edges);
            self.m.ambiguous.increment(o.ambiguous_same_node);
            self.m.cross_node_ambiguous.increment(o.ambiguous - o.ambiguous_same_node);
            self.m.retraced.increment(o.retraced);
            if o.too_large {
                self.m.too_large.increment(1);
                tracing::warn!(message = "Guid with too many spans passed on without inference.", processor = %self.name, spans = spans.len());
            }
            if o.retraced > 0 {
                for (old, h) in before.into_iter().zip(&spans) {
                    if old != h.span.trace_id && self.rewrites.get(&old) != Some(&h.span.trace_id) {
                        self.rewrites.insert(old, h.span.trace_id.clone());
                    }
                }
            }
        }
        out.add(spans, g.finalizers);
    }

    /// Groups whose wait is over, and the oldest ones while over the memory bound.
    /// Lets go at once every group whose every record's partition was revoked (see
    /// [`Finalizer::announce_revocation`]).
    fn hand_over_revoked(&mut self) {
        let keys: Vec<Key> = self.groups.iter().filter(|(_, g)| Finalizer::all_revoked(&g.finalizers)).map(|(k, _)| k.clone()).collect();
        let mut out = Released::default();
        for k in &keys {
            self.release(k, &mut out);
        }
        debug_assert!(out.is_empty());
        self.gauges();
    }

    fn due(&mut self, now: Instant, all: bool) -> Released {
        let mut out = Released::default();
        while let Some((t, key, generation)) = self.order.front().cloned() {
            let expired = all || t + self.cfg.wait.get() <= now;
            let over = self.bytes > self.cfg.max_bytes.get() as usize;
            if !expired && !over {
                break;
            }
            self.order.pop_front();
            if self.groups.get(&key).is_none_or(|g| g.generation != generation) {
                continue; // merged into a guid, or a later opening of the key
            }
            if !expired && matches!(key, Key::Guid(_)) {
                self.m.evicted.increment(1);
            }
            self.release(&key, &mut out);
        }
        self.gauges();
        out
    }
}

async fn send(output: &Output, b: Batch, name: &str) -> Result<(), ComponentError> {
    if b.is_empty() {
        return Ok(());
    }
    output.send(b).await.map_err(|e| ComponentError(format!("processor `{name}`: downstream stopped: {e}")))
}

/// Builds the processor task.
pub async fn build(cfg: GuidInferenceConfig, mut ctx: ComponentContext) -> Result<ComponentFuture, BuildError> {
    let mut input = ctx.take_input()?;
    let output = ctx.take_output()?;
    let p = ctx.name.clone();
    let m = Metrics {
        spans_held: metrics::gauge!(names::PROCESSOR_GUID_SPANS_HELD, "processor" => p.clone()),
        guids_held: metrics::gauge!(names::PROCESSOR_GUID_GUIDS_HELD, "processor" => p.clone()),
        bytes_held: metrics::gauge!(names::PROCESSOR_GUID_BYTES_HELD, "processor" => p.clone()),
        account: tracepipe_pipeline::memory::Held::component(&p),
        accounted: Default::default(),
        edges: metrics::counter!(names::PROCESSOR_GUID_EDGES_INFERRED, "processor" => p.clone(), "tier" => "same_node"),
        cross_node_edges: metrics::counter!(names::PROCESSOR_GUID_EDGES_INFERRED, "processor" => p.clone(), "tier" => "cross_node"),
        ambiguous: metrics::counter!(names::PROCESSOR_GUID_AMBIGUOUS, "processor" => p.clone(), "tier" => "same_node"),
        cross_node_ambiguous: metrics::counter!(names::PROCESSOR_GUID_AMBIGUOUS, "processor" => p.clone(), "tier" => "cross_node"),
        evicted: metrics::counter!(names::PROCESSOR_GUID_EVICTED_EARLY, "processor" => p.clone()),
        too_large: metrics::counter!(names::PROCESSOR_GUID_TOO_LARGE, "processor" => p.clone()),
        dropped: metrics::counter!(names::PROCESSOR_DROPPED_SPANS, "processor" => p.clone(), "reason" => "decode"),
        retraced: metrics::counter!(names::PROCESSOR_GUID_RETRACED_SPANS, "processor" => p.clone(), "when" => "resolved"),
        retraced_late: metrics::counter!(names::PROCESSOR_GUID_RETRACED_SPANS, "processor" => p.clone(), "when" => "late"),
        handed_over: metrics::counter!(names::PROCESSOR_HANDED_OVER_SPANS, "processor" => p.clone()),
    };
    let tick = (cfg.wait.get() / 4).clamp(std::time::Duration::from_millis(10), std::time::Duration::from_millis(250));
    let rewrites = Rewrites { capacity: cfg.rewrite_cache_size, ..Default::default() };
    let mut st = State {
        rules: cfg.rules(),
        cfg,
        groups: HashMap::new(),
        order: VecDeque::new(),
        traces: HashMap::new(),
        rewrites,
        bytes: 0,
        spans: 0,
        guids: 0,
        generations: 0,
        m,
        name: p.clone(),
        batches: 0,
    };
    Ok(Box::pin(async move {
        let mut revocations = Finalizer::revocations();
        let mut timer = tokio::time::interval(tick);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                next = input.recv() => match next {
                    Some(b) => {
                        // Waits run on the processors' clock, which stands still while an input
                        // is stalled (pipeline::clock).
                        let now = clock::now();
                        let pass = st.ingest(b, now);
                        send(&output, pass, &p).await?;
                        let early = st.due(now, false);
                        for b in early.into_batches() {
                            send(&output, b, &p).await?;
                        }
                    }
                    None => {
                        let rest = st.due(clock::now(), true);
                        for b in rest.into_batches() {
                            send(&output, b, &p).await?;
                        }
                        return Ok(());
                    }
                },
                Ok(()) = revocations.changed() => st.hand_over_revoked(),
                _ = timer.tick() => {
                    for b in st.due(clock::now(), false).into_batches() {
                        send(&output, b, &p).await?;
                    }
                }
            }
        }
    }))
}
