//! Policies, evaluated on a held trace in its encoded form, with the OpenTelemetry Collector's
//! semantics.
//!
//! Each policy votes (`Sampled`, `NotSampled`, `Dropped`, or for `invert_match` the deprecated
//! `InvertSampled` / `InvertNotSampled`). The final decision, as the Collector's README states it:
//! a `Dropped` vote drops the trace; else an `InvertNotSampled` vote does not sample it; else a
//! `Sampled` vote samples it; else an `InvertSampled` vote with no `NotSampled` vote samples it;
//! in every other case it is not sampled. Evaluation stops at a `Dropped` vote, and with
//! `sample_on_first_match` at the first `Sampled` vote. The deciding policy is the first that
//! cast the winning vote.
//!
//! Attribute policies read resource attributes, then span attributes, straight from the bytes.
//! Rate-based policies (`rate_limiting`, `bytes_limiting`, `composite`) keep their state behind a
//! mutex shared by every shard, so their limits hold for the processor as a whole.

use std::sync::Mutex;

use metrics::Counter;
use tokio::time::Instant;
use tracepipe_pipeline::telemetry::names;
use tracepipe_pipeline::wire::{Reader, I64, LEN, VARINT};

use super::config::{PolicyConfig, PolicyKind};
use super::trace::{Env, Trace, TraceId};

/// One policy's vote on one trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vote {
    /// Keep.
    Sampled,
    /// Do not keep (another policy may).
    NotSampled,
    /// Drop, whatever the others say.
    Dropped,
    /// `invert_match` found no match: keep unless another policy votes `NotSampled`.
    InvertSampled,
    /// `invert_match` found a match: do not keep, whatever `Sampled` votes say.
    InvertNotSampled,
}

impl Vote {
    /// The `decision` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Vote::Sampled => "sampled",
            Vote::NotSampled => "not_sampled",
            Vote::Dropped => "dropped",
            Vote::InvertSampled => "inverted_sampled",
            Vote::InvertNotSampled => "inverted_not_sampled",
        }
    }
    const ALL: [Vote; 5] = [Vote::Sampled, Vote::NotSampled, Vote::Dropped, Vote::InvertSampled, Vote::InvertNotSampled];
    fn index(self) -> usize {
        self as usize
    }
    fn samples(self) -> bool {
        matches!(self, Vote::Sampled | Vote::InvertSampled)
    }
}

/// The final decision on a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Final {
    /// Kept.
    Sampled,
    /// Not kept.
    NotSampled,
    /// Dropped by a `drop` policy.
    Dropped,
}

impl Final {
    /// The `decision` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Final::Sampled => "sampled",
            Final::NotSampled => "not_sampled",
            Final::Dropped => "dropped",
        }
    }
}

/// What a kept trace's probability rests on, for its spans' adjusted counts and tracestate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Basis {
    /// A predicate kept it: this stage kept it for sure (upstream thresholds stand).
    Certain,
    /// Consistent sampling with this threshold (`ot=th:`): spans get max(theirs, it).
    Consistent(u64),
    /// Kept with probability p independently of the trace's randomness (hash-seed
    /// probabilistic): counts multiply, upstream thresholds no longer hold.
    Independent(f64),
    /// Kept by a rate-based policy: the probability is not known.
    Unknown,
}

/// A decision with why.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// The outcome.
    pub outcome: Final,
    /// Index of the deciding top-level policy, for a kept trace.
    pub policy: Option<usize>,
    /// The probability with which a trace like this one is kept, when the deciding policies
    /// make it known (1 for predicates, p for `probabilistic`): its adjusted count is 1/p.
    pub probability: Option<f64>,
    /// What that probability rests on (kept traces).
    pub basis: Basis,
}

/// A value of an attribute, read in place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AnyRef<'a> {
    /// `string_value`.
    Str(&'a [u8]),
    /// `bool_value`.
    Bool(bool),
    /// `int_value`.
    Int(i64),
    /// `double_value`.
    Double(f64),
    /// Arrays, maps, bytes, empty.
    Other,
}

fn any_value(b: &[u8]) -> AnyRef<'_> {
    let mut r = Reader::new(b, 0);
    let mut v = AnyRef::Other;
    while !r.done() {
        let Ok((f, w)) = r.tag() else { return AnyRef::Other };
        let next = match (f, w) {
            (1, LEN) => r.len_delimited().map(|(s, _)| AnyRef::Str(s)),
            (2, VARINT) => r.varint().map(|x| AnyRef::Bool(x != 0)),
            (3, VARINT) => r.varint().map(|x| AnyRef::Int(x as i64)),
            (4, I64) => r.take(8).map(|x| AnyRef::Double(f64::from_le_bytes(x.try_into().expect("8 bytes")))),
            _ => r.skip(w, "AnyValue", f).map(|_| AnyRef::Other),
        };
        match next {
            Ok(x) => v = x,
            Err(_) => return AnyRef::Other,
        }
    }
    v
}

/// Calls `f` with the value of every `key` attribute in a list of `KeyValue` fields numbered
/// `field` inside `msg`; true as soon as `f` is.
fn attrs_in(msg: &[u8], field: u64, key: &[u8], f: &mut dyn FnMut(AnyRef<'_>) -> bool) -> bool {
    let mut r = Reader::new(msg, 0);
    while !r.done() {
        let Ok((fi, w)) = r.tag() else { return false };
        if (fi, w) != (field, LEN) {
            if r.skip(w, "message", fi).is_err() {
                return false;
            }
            continue;
        }
        let Ok((kv, _)) = r.len_delimited() else { return false };
        let mut kr = Reader::new(kv, 0);
        let mut k: &[u8] = &[];
        let mut val: &[u8] = &[];
        while !kr.done() {
            let Ok((kf, kw)) = kr.tag() else { break };
            match (kf, kw) {
                (1, LEN) => k = kr.len_delimited().map(|x| x.0).unwrap_or(&[]),
                (2, LEN) => val = kr.len_delimited().map(|x| x.0).unwrap_or(&[]),
                _ => {
                    if kr.skip(kw, "KeyValue", kf).is_err() {
                        break;
                    }
                }
            }
        }
        if k == key && f(any_value(val)) {
            return true;
        }
    }
    false
}

/// The `Resource` message inside an envelope's raw `ResourceSpans` fields.
fn resource_of(env: &Env) -> &[u8] {
    let mut r = Reader::new(&env.resource, 0);
    while !r.done() {
        let Ok((f, w)) = r.tag() else { return &[] };
        if (f, w) == (1, LEN) {
            return r.len_delimited().map(|x| x.0).unwrap_or(&[]);
        }
        if r.skip(w, "ResourceSpans", f).is_err() {
            return &[];
        }
    }
    &[]
}

/// True when `f` holds for a value of attribute `key` on a resource or a span of the trace.
/// Segments whose bytes do not contain the key at all are not parsed.
pub fn any_attr(trace: &Trace, key: &str, f: &mut dyn FnMut(AnyRef<'_>) -> bool) -> bool {
    any_attr_with(trace, &memchr::memmem::Finder::new(key.as_bytes()), f)
}

/// [`any_attr`] with a prepared search for the key.
pub fn any_attr_with(trace: &Trace, key: &memchr::memmem::Finder<'_>, f: &mut dyn FnMut(AnyRef<'_>) -> bool) -> bool {
    let k = key.needle();
    let mut last: *const Env = std::ptr::null();
    for s in &trace.segments {
        let env: *const Env = &*s.env;
        if env != last && key.find(&s.env.resource).is_some() && attrs_in(resource_of(&s.env), 1, k, f) {
            return true;
        }
        last = env;
    }
    trace
        .segments
        .iter()
        .filter(|s| key.find(&s.spans).is_some())
        .any(|s| super::trace::FramedIter { buf: &s.spans }.any(|span| attrs_in(span, 9, k, f)))
}

/// A trace's 56-bit randomness: an explicit `rv` in a span's tracestate, else the trace id's.
pub fn trace_randomness(id: &TraceId, t: &Trace) -> u64 {
    if t.summary.trace_state
        && let Some(rv) = t.spans().find_map(|(_, span)| std::str::from_utf8(trace_state_of(span)).ok().and_then(super::tracestate::randomness))
    {
        return rv;
    }
    super::tracestate::id_randomness(id)
}

/// A span's tracestate.
pub fn trace_state_of(span: &[u8]) -> &[u8] {
    let mut r = Reader::new(span, 0);
    let mut out: &[u8] = &[];
    while !r.done() {
        let Ok((f, w)) = r.tag() else { break };
        if (f, w) == (3, LEN) {
            out = r.len_delimited().map(|x| x.0).unwrap_or(&[]);
        } else if r.skip(w, "Span", f).is_err() {
            break;
        }
    }
    out
}

/// FNV-1a 64 of the salt then the id, as the Collector's probabilistic policy.
pub fn fnv1a(salt: &[u8], id: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in salt.iter().chain(id) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Encoded size of a trace as one request (spans and envelopes).
pub fn encoded_size(trace: &Trace) -> u64 {
    trace.segments.iter().map(|s| (s.spans.len() + s.env.resource.len() + s.env.scope.len() + 12) as u64).sum()
}

fn finder(key: &str) -> memchr::memmem::Finder<'static> {
    memchr::memmem::Finder::new(key.as_bytes()).into_owned()
}

enum Kind {
    Always,
    Latency { min_ms: u64, max_ms: u64 },
    Status(u8),
    Str { key: memchr::memmem::Finder<'static>, values: Vec<String>, regex: Option<Vec<regex::Regex>>, invert: bool },
    Num { key: memchr::memmem::Finder<'static>, min: f64, max: f64, invert: bool },
    Bool { key: memchr::memmem::Finder<'static>, value: bool, invert: bool },
    Prob { salt: Vec<u8>, threshold: u64, p: f64 },
    /// Consistent probability: keep when the trace's randomness ≥ `threshold` (56-bit).
    Consistent { threshold: u64, p: f64 },
    Rate { sps: u64, state: Mutex<(u64, u64)> },
    Bytes { rate: f64, burst: f64, state: Mutex<Option<(f64, Instant)>> },
    SpanCount { min: u64, max: u64 },
    TraceState { key: String, values: Vec<String> },
    TraceFlags,
    And(Vec<Policy>),
    Not(Box<Policy>),
    Drop(Vec<Policy>),
    Composite { total: u64, subs: Vec<(Policy, u64)>, state: Mutex<(u64, Vec<u64>)> },
    /// Evaluated in bulk beforehand; the result is at this index of the trace's SQL bits.
    Sql(usize),
    Dynamic { fields: Vec<String>, goal: u64, window: std::time::Duration, state: Mutex<Windowed> },
    Throughput { target: u64, window: std::time::Duration, state: Mutex<Windowed> },
}

/// The state of a windowed adaptive sampler: counts of the window being filled, and the rates
/// the last full window gave.
#[derive(Default)]
pub struct Windowed {
    /// Index of the window being filled (time since the epoch / window).
    window: u64,
    /// Traces (dynamic) or spans (throughput) per key in this window.
    counts: std::collections::HashMap<String, u64>,
    /// Rates from the last window, 1 in N.
    rates: std::collections::HashMap<String, u64>,
    /// Throughput: the rate in force.
    rate: u64,
}

impl Windowed {
    /// Rolls the window when `now` is past it.
    fn roll(&mut self, now: Instant, epoch: Instant, window: std::time::Duration, recompute: impl FnOnce(&mut Windowed)) {
        let w = (now.saturating_duration_since(epoch).as_nanos() / window.as_nanos().max(1)) as u64;
        if w != self.window {
            if w == self.window + 1 {
                recompute(self);
            } else {
                // A window with nothing in it: no traffic, no information.
                self.rates.clear();
                self.rate = 1;
            }
            self.counts.clear();
            self.window = w;
        }
    }
}

/// Per-key rates that average `goal` over the counts, keeping rare keys (dynsampler-go's
/// AvgSampleRate): each key's share of the kept budget grows with the log of its count.
pub fn dynamic_rates(counts: &std::collections::HashMap<String, u64>, goal: u64) -> std::collections::HashMap<String, u64> {
    let mut out = std::collections::HashMap::new();
    let total: u64 = counts.values().sum();
    if total == 0 {
        return out;
    }
    let goal_count = total as f64 / goal.max(1) as f64;
    let log_sum: f64 = counts.values().map(|c| (*c as f64).log10()).sum();
    let ratio = if log_sum > 0.0 { goal_count / log_sum } else { goal_count };
    let mut keys: Vec<(&String, u64)> = counts.iter().map(|(k, c)| (k, *c)).collect();
    keys.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(b.0)));
    let mut remaining = keys.len() as f64;
    let mut extra = 0.0;
    for (k, c) in keys {
        let c = c as f64;
        let mut goal_for_key = (c.log10() * ratio).max(1.0);
        let extra_for_key = extra / remaining;
        goal_for_key += extra_for_key;
        extra -= extra_for_key;
        remaining -= 1.0;
        let rate = if c <= goal_for_key {
            extra += goal_for_key - c;
            1
        } else {
            let r = (c / goal_for_key).ceil();
            extra += goal_for_key - c / r;
            r as u64
        };
        out.insert(k.clone(), rate.max(1));
    }
    out
}

/// A trace's key: the first value of each field (resource attributes, then spans), joined.
fn key_of(t: &Trace, fields: &[String]) -> String {
    let mut key = String::new();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            key.push('\u{1f}');
        }
        any_attr(t, f, &mut |v| {
            match v {
                AnyRef::Str(s) => key.push_str(&String::from_utf8_lossy(s)),
                AnyRef::Int(n) => key.push_str(&n.to_string()),
                AnyRef::Bool(b) => key.push_str(if b { "true" } else { "false" }),
                AnyRef::Double(d) => key.push_str(&d.to_string()),
                AnyRef::Other => return false,
            }
            true
        });
    }
    key
}

/// Keeps 1 in `rate` traces, by trace id (the same hash as `probabilistic`, with its own salt).
fn one_in(id: &TraceId, rate: u64) -> bool {
    rate <= 1 || fnv1a(b"tracepipe-adaptive", id) <= u64::MAX / rate
}

/// A built policy.
pub struct Policy {
    /// Its name.
    pub name: String,
    kind: Kind,
}

impl Policy {
    /// Builds a policy (and its sub-policies) from its configuration; `sql` collects the SQL
    /// predicates, each policy keeping its index.
    pub fn build(c: &PolicyConfig, sql: &mut Vec<std::sync::Arc<super::sql::SqlPredicate>>) -> Policy {
        let kind = match &c.kind {
            PolicyKind::AlwaysSample => Kind::Always,
            PolicyKind::Latency { threshold_ms, upper_threshold_ms } => Kind::Latency { min_ms: *threshold_ms as u64, max_ms: *upper_threshold_ms as u64 },
            PolicyKind::StatusCode(codes) => Kind::Status(codes.iter().fold(0, |m, c| m | (1 << (*c as u8)))),
            PolicyKind::StringAttribute { key, values, regex, invert_match } => {
                Kind::Str { key: finder(key), values: values.clone(), regex: regex.clone(), invert: *invert_match }
            }
            PolicyKind::NumericAttribute { key, min_value, max_value, invert_match } => Kind::Num {
                key: finder(key),
                min: min_value.unwrap_or(f64::NEG_INFINITY),
                max: max_value.unwrap_or(f64::INFINITY),
                invert: *invert_match,
            },
            PolicyKind::BooleanAttribute { key, value, invert_match } => Kind::Bool { key: finder(key), value: *value, invert: *invert_match },
            PolicyKind::Probabilistic { hash_salt, sampling_percentage, consistent } => {
                let p = sampling_percentage / 100.0;
                if *consistent {
                    Kind::Consistent { threshold: super::tracestate::threshold_for(p), p }
                } else {
                    Kind::Prob { salt: hash_salt.as_bytes().to_vec(), threshold: (p * u64::MAX as f64) as u64, p }
                }
            }
            PolicyKind::RateLimiting { spans_per_second } => Kind::Rate { sps: *spans_per_second, state: Mutex::new((u64::MAX, 0)) },
            PolicyKind::BytesLimiting { bytes_per_second, burst_capacity } => {
                Kind::Bytes { rate: *bytes_per_second as f64, burst: *burst_capacity as f64, state: Mutex::new(None) }
            }
            PolicyKind::SpanCount { min_spans, max_spans } => Kind::SpanCount { min: *min_spans, max: *max_spans },
            PolicyKind::TraceState { key, values } => Kind::TraceState { key: key.clone(), values: values.clone() },
            PolicyKind::TraceFlags => Kind::TraceFlags,
            PolicyKind::And(subs) => Kind::And(subs.iter().map(|p| Policy::build(p, sql)).collect()),
            PolicyKind::Not(sub) => Kind::Not(Box::new(Policy::build(sub, sql))),
            PolicyKind::Drop(subs) => Kind::Drop(subs.iter().map(|p| Policy::build(p, sql)).collect()),
            PolicyKind::Composite { max_total_spans_per_second, subs } => Kind::Composite {
                total: *max_total_spans_per_second,
                state: Mutex::new((u64::MAX, vec![0; subs.len()])),
                subs: subs.iter().map(|(p, sps)| (Policy::build(p, sql), *sps)).collect(),
            },
            PolicyKind::Dynamic { key_fields, goal_sample_rate, adjustment_interval } => {
                Kind::Dynamic { fields: key_fields.clone(), goal: *goal_sample_rate, window: *adjustment_interval, state: Mutex::new(Windowed { rate: 1, ..Default::default() }) }
            }
            PolicyKind::Throughput { target_spans_per_second, adjustment_interval } => {
                Kind::Throughput { target: *target_spans_per_second, window: *adjustment_interval, state: Mutex::new(Windowed { rate: 1, ..Default::default() }) }
            }
            PolicyKind::Sql(pred) => {
                sql.push(pred.clone());
                Kind::Sql(sql.len() - 1)
            }
        };
        Policy { name: c.name.clone(), kind }
    }

    /// The probability that a trace this policy samples was kept by it: 1 for predicates, p for
    /// `probabilistic`, unknown (None) for rate-based policies.
    fn probability(&self) -> Option<f64> {
        match &self.kind {
            Kind::Prob { p, .. } | Kind::Consistent { p, .. } => Some(*p),
            Kind::Rate { .. } | Kind::Bytes { .. } | Kind::Composite { .. } => None,
            // Known per decision (1 / the rate in force); recorded by `evaluate_p`.
            Kind::Dynamic { .. } | Kind::Throughput { .. } => None,
            Kind::And(subs) => subs.iter().try_fold(1.0, |acc, s| s.probability().map(|p| acc * p)),
            Kind::Not(sub) => sub.probability().filter(|p| *p == 1.0),
            _ => Some(1.0),
        }
    }

    /// Votes on a trace; `sql` holds the results of the SQL predicates for it.
    pub fn evaluate(&self, id: &TraceId, t: &Trace, now: Instant, epoch: Instant, sql: &[bool]) -> Vote {
        let yes = |b: bool| if b { Vote::Sampled } else { Vote::NotSampled };
        let inverted = |matched: bool| if matched { Vote::InvertNotSampled } else { Vote::InvertSampled };
        match &self.kind {
            Kind::Always => Vote::Sampled,
            Kind::Latency { min_ms, max_ms } => {
                let ms = t.summary.duration_nanos() / 1_000_000;
                yes(ms >= *min_ms && (*max_ms == 0 || ms <= *max_ms))
            }
            Kind::Status(mask) => yes(t.summary.status & mask != 0),
            Kind::Str { key, values, regex, invert } => {
                let mut m = |v: AnyRef<'_>| match v {
                    AnyRef::Str(s) => match regex {
                        Some(rs) => std::str::from_utf8(s).is_ok_and(|s| rs.iter().any(|r| r.is_match(s))),
                        None => values.iter().any(|x| x.as_bytes() == s),
                    },
                    _ => false,
                };
                let matched = any_attr_with(t, key, &mut m);
                if *invert { inverted(matched) } else { yes(matched) }
            }
            Kind::Num { key, min, max, invert } => {
                let mut m = |v: AnyRef<'_>| match v {
                    AnyRef::Int(i) => (i as f64) >= *min && (i as f64) <= *max,
                    AnyRef::Double(d) => d >= *min && d <= *max,
                    _ => false,
                };
                let matched = any_attr_with(t, key, &mut m);
                if *invert { inverted(matched) } else { yes(matched) }
            }
            Kind::Bool { key, value, invert } => {
                let matched = any_attr_with(t, key, &mut |v| v == AnyRef::Bool(*value));
                if *invert { inverted(matched) } else { yes(matched) }
            }
            Kind::Prob { salt, threshold, .. } => yes(fnv1a(salt, id) <= *threshold),
            Kind::Consistent { threshold, .. } => yes(trace_randomness(id, t) >= *threshold),
            Kind::Rate { sps, state } => {
                let second = now.saturating_duration_since(epoch).as_secs();
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                if s.0 != second {
                    *s = (second, 0);
                }
                let if_sampled = s.1 + t.summary.spans;
                if if_sampled < *sps {
                    s.1 = if_sampled;
                    Vote::Sampled
                } else {
                    Vote::NotSampled
                }
            }
            Kind::Bytes { rate, burst, state } => {
                let size = encoded_size(t) as f64;
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                let (tokens, last) = s.get_or_insert((*burst, now));
                *tokens = (*tokens + now.saturating_duration_since(*last).as_secs_f64() * rate).min(*burst);
                *last = now;
                if *tokens >= size {
                    *tokens -= size;
                    Vote::Sampled
                } else {
                    Vote::NotSampled
                }
            }
            Kind::SpanCount { min, max } => {
                let n = t.summary.spans;
                yes(n >= *min && (*max == 0 || n <= *max))
            }
            Kind::TraceState { key, values } => {
                if !t.summary.trace_state {
                    return Vote::NotSampled;
                }
                yes(t.spans().any(|(_, span)| {
                    let ts = trace_state_of(span);
                    std::str::from_utf8(ts).is_ok_and(|ts| {
                        ts.split(',').filter_map(|kv| kv.trim().split_once('=')).any(|(k, v)| k == key && values.iter().any(|x| x == v))
                    })
                }))
            }
            Kind::TraceFlags => yes(t.summary.sampled_flag),
            Kind::And(subs) => {
                for s in subs {
                    if matches!(s.evaluate(id, t, now, epoch, sql), Vote::NotSampled | Vote::InvertNotSampled) {
                        return Vote::NotSampled;
                    }
                }
                Vote::Sampled
            }
            Kind::Not(sub) => {
                if sub.evaluate(id, t, now, epoch, sql).samples() {
                    Vote::NotSampled
                } else {
                    Vote::Sampled
                }
            }
            Kind::Drop(subs) => {
                for s in subs {
                    if matches!(s.evaluate(id, t, now, epoch, sql), Vote::NotSampled | Vote::InvertNotSampled) {
                        return Vote::NotSampled;
                    }
                }
                Vote::Dropped
            }
            Kind::Sql(i) => yes(sql.get(*i).copied().unwrap_or(false)),
            Kind::Dynamic { fields, goal, window, state } => {
                let key = key_of(t, fields);
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                s.roll(now, epoch, *window, |w| w.rates = dynamic_rates(&w.counts, *goal));
                *s.counts.entry(key.clone()).or_default() += 1;
                let rate = s.rates.get(&key).copied().unwrap_or(1);
                LAST_RATE.with(|r| r.set(rate));
                yes(one_in(id, rate))
            }
            Kind::Throughput { target, window, state } => {
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                s.roll(now, epoch, *window, |w| {
                    let spans: u64 = w.counts.values().sum();
                    let per_sec = spans as f64 / window.as_secs_f64();
                    w.rate = (per_sec / *target as f64).ceil().max(1.0) as u64;
                });
                *s.counts.entry(String::new()).or_default() += t.summary.spans;
                let rate = s.rate.max(1);
                LAST_RATE.with(|r| r.set(rate));
                yes(one_in(id, rate))
            }
            Kind::Composite { total, subs, state } => {
                let second = now.saturating_duration_since(epoch).as_secs();
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                if s.0 != second {
                    s.0 = second;
                    s.1.iter_mut().for_each(|c| *c = 0);
                }
                for (i, (sub, allocated)) in subs.iter().enumerate() {
                    if sub.evaluate(id, t, now, epoch, sql).samples() {
                        let if_sampled = s.1[i] + t.summary.spans;
                        if if_sampled <= *allocated && if_sampled <= *total {
                            s.1[i] = if_sampled;
                            return Vote::Sampled;
                        }
                        return Vote::NotSampled;
                    }
                }
                Vote::NotSampled
            }
        }
    }
}

thread_local! {
    /// The rate an adaptive sampler used in its last vote on this thread (its keep probability
    /// is 1 / rate).
    static LAST_RATE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The top-level policies, with their vote counters.
pub struct Policies {
    /// In order.
    pub list: Vec<Policy>,
    votes: Vec<[Counter; 5]>,
    /// Stop at the first `Sampled` vote.
    pub sample_on_first_match: bool,
    /// Origin of the rate windows.
    pub epoch: Instant,
    /// The SQL predicates anywhere in the tree, by index.
    pub sql: Vec<std::sync::Arc<super::sql::SqlPredicate>>,
}

impl Policies {
    /// Builds the policies; vote counters are labelled with `processor`.
    pub fn new(cfgs: &[PolicyConfig], processor: &str, sample_on_first_match: bool) -> Policies {
        let mut sql = Vec::new();
        let list: Vec<Policy> = cfgs.iter().map(|c| Policy::build(c, &mut sql)).collect();
        let votes = list
            .iter()
            .map(|p| {
                Vote::ALL.map(|v| {
                    metrics::counter!(names::PROCESSOR_TAIL_SAMPLING_DECISIONS, "processor" => processor.to_owned(), "policy" => p.name.clone(), "decision" => v.as_str())
                })
            })
            .collect();
        Policies { list, votes, sample_on_first_match, epoch: Instant::now(), sql }
    }

    /// Decides a trace; `sql` holds the results of [`Policies::sql`] for it.
    pub fn decide(&self, id: &TraceId, t: &Trace, now: Instant, sql: &[bool]) -> Decision {
        self.decide_votes(id, t, now, sql, None)
    }

    /// [`Policies::decide`], also recording each top-level policy's vote (`None` for policies
    /// not evaluated: after a `Dropped` vote or, with `sample_on_first_match`, a `Sampled` one).
    pub fn decide_votes(&self, id: &TraceId, t: &Trace, now: Instant, sql: &[bool], mut record: Option<&mut Vec<Option<Vote>>>) -> Decision {
        if let Some(r) = record.as_deref_mut() {
            r.clear();
            r.resize(self.list.len(), None);
        }
        let mut first: [Option<usize>; 5] = [None; 5];
        let mut probability: Option<f64> = None;
        let mut unknown = false;
        // The consistent threshold of the sampled vote with the highest probability, if that vote
        // was a consistent one.
        let mut consistent: Option<u64> = None;
        for (i, p) in self.list.iter().enumerate() {
            let v = p.evaluate(id, t, now, self.epoch, sql);
            self.votes[i][v.index()].increment(1);
            if let Some(r) = record.as_deref_mut() {
                r[i] = Some(v);
            }
            first[v.index()].get_or_insert(i);
            if v.samples() {
                let adaptive = matches!(p.kind, Kind::Dynamic { .. } | Kind::Throughput { .. });
                let known = if adaptive { Some(1.0 / LAST_RATE.with(|r| r.get()).max(1) as f64) } else { p.probability() };
                match known {
                    Some(x) => {
                        if probability.is_none_or(|q| x > q) {
                            consistent = match &p.kind {
                                Kind::Consistent { threshold, .. } => Some(*threshold),
                                _ => None,
                            };
                        }
                        probability = Some(probability.map_or(x, |q: f64| q.max(x)));
                    }
                    None => unknown = true,
                }
            }
            if v == Vote::Dropped || (self.sample_on_first_match && v == Vote::Sampled) {
                break;
            }
        }
        let (outcome, policy) = if first[Vote::Dropped.index()].is_some() {
            (Final::Dropped, None)
        } else if first[Vote::InvertNotSampled.index()].is_some() {
            (Final::NotSampled, None)
        } else if let Some(i) = first[Vote::Sampled.index()] {
            (Final::Sampled, Some(i))
        } else if let (Some(i), None) = (first[Vote::InvertSampled.index()], first[Vote::NotSampled.index()]) {
            (Final::Sampled, Some(i))
        } else {
            (Final::NotSampled, None)
        };
        // A certain keep (p = 1) settles it; otherwise an unknown rate makes the count unknown.
        let probability = match probability {
            Some(p) if p >= 1.0 => Some(1.0),
            Some(p) if !unknown && p > 0.0 => Some(p),
            _ => None,
        };
        let basis = match (probability, consistent) {
            (Some(p), _) if p >= 1.0 => Basis::Certain,
            (Some(_), Some(t)) => Basis::Consistent(t),
            (Some(p), None) if p > 0.0 => Basis::Independent(p),
            _ => Basis::Unknown,
        };
        Decision { outcome, policy, probability: if outcome == Final::Sampled { probability } else { None }, basis }
    }
}
