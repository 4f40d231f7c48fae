//! The inference itself, a pure function over the spans of one guid (so it is testable without
//! time or channels).
//!
//! Two tiers of rules (measured on Envoy 1.40, see the module docs). Both make an edge only when
//! the evidence names one parent; otherwise the orphan is *declined*: it keeps no parent, carries
//! `tracepipe.parent_candidates` (the candidates' span ids, with `mark_inferred`), is counted as
//! ambiguous, and still joins the rebuilt trace when all its candidates are in the same one.
//!
//! 1. **Same node.** When apps forward only `x-request-id`, every outbound sidecar starts a new
//!    trace whose root is its CLIENT span. Its candidate parents are the SERVER spans with the same
//!    guid **on the same node** (one clock) that were running when it started
//!    (`start <= client.start <= end`, with [`START_SLACK_NANOS`] either side). Exactly one candidate whose end is no earlier than the
//!    CLIENT's end minus [`END_SLACK_NANOS`] is its parent. Two or more (the service was handling
//!    two calls of the request at once) are declined, however the windows nest: which of two
//!    concurrent handlers made an outbound call is not in the timestamps (measured: picking the
//!    tightest was right 185 times and wrong 135 times). None (a clock that jumped: seen once in
//!    CI, a CLIENT stamped 1.7 ms after its handler ended) is declined too, with every SERVER of
//!    the guid on the node as candidates. With Envoy's default
//!    `shared_span_context: true`, the SERVER half that reuses the CLIENT's span id gets the
//!    same parent.
//! 2. **Across nodes** (`cross_node`). Where nothing propagates at all, the callee's SERVER span
//!    is an orphan root too. Its candidates are the CLIENT spans of the same guid on *other*
//!    nodes whose target (`upstream_cluster` host, else the `http.url` host) names the SERVER's
//!    service (`service.name` or `istio.canonical_service`, whole or first DNS label) and whose
//!    window encloses it at some clock offset between the two nodes within `clock_skew` (so never
//!    a CLIENT shorter than the SERVER) and whose `http.url` path, when both carry one, is the
//!    SERVER's (another path is another request). The candidate needing the least offset is taken only if
//!    every other candidate is on the same node as it and fits only at another, larger offset
//!    (the same caller's earlier or later call: one offset holds for all calls between two
//!    nodes). A candidate on another node (clocks independent), one that fits at an offset the
//!    first fits at too (calls in parallel) or needs as little offset declines it. A CLIENT may
//!    take several SERVERs (a call its proxy retried), one after the other: SERVERs on one node
//!    that overlap in time and took the same CLIENT are two calls, one of them matched to a
//!    concurrent call of its caller because its own CLIENT did not arrive in time; both are
//!    declined.
//!
//! No edge is added that would close a cycle. Every fragment linked this way takes the trace id
//! of the fragment holding the true root; `tracepipe.original_trace_id` keeps the old one.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;

const SERVER: i32 = 2;

/// A cross-node candidate CLIENT of one SERVER: (clock offset it needs, time gap, span index).
type Candidate = (i128, i128, usize);
const CLIENT: i32 = 3;

/// How [`resolve`] links spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Attribute naming the proxy (node) that emitted a span.
    pub node_attribute: String,
    /// Mark re-parented spans with `tracepipe.inferred_parent=true`.
    pub mark_inferred: bool,
    /// Link orphan SERVER roots to CLIENT spans on other nodes (tier 2).
    pub cross_node: bool,
    /// Clock skew tolerated between nodes in tier 2, in nanoseconds.
    pub clock_skew_nanos: u64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules { node_attribute: "node_id".into(), mark_inferred: true, cross_node: true, clock_skew_nanos: 50_000_000 }
    }
}

/// A `ResourceSpans` or `ScopeSpans` without its spans: what every span that arrived in it
/// shares (one copy, behind an `Arc`, however many spans are held).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Envelope<T> {
    /// The resource or scope.
    pub value: Option<T>,
    /// Its schema URL.
    pub schema_url: String,
}

/// A span held with its resource and scope.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    /// The span's resource.
    pub resource: Arc<Envelope<Resource>>,
    /// The span's instrumentation scope.
    pub scope: Arc<Envelope<InstrumentationScope>>,
    /// The span.
    pub span: Span,
    /// The span carries the guid. Spans without it (an application's own spans that share a
    /// fragment's trace id) are never linked, only moved with their fragment's trace id.
    pub tagged: bool,
}

/// Guids with more spans than this are passed on without inference (counted as `too_large`):
/// matching is quadratic in the spans of one guid, and no real request has this many proxy spans.
pub const MAX_SPANS_PER_GUID: usize = 4096;

/// How far an orphan CLIENT may end after the SERVER enclosing it on the same node. Envoy
/// finishes the inbound SERVER span when the response is written and the outbound CLIENT span
/// when its stream is torn down, so a CLIENT that is the last thing its SERVER did ends a little
/// after it: 5 µs on an idle machine, 1.5 ms seen on a loaded 2-core CI machine (Envoy 1.40).
/// Only a CLIENT that started while its one candidate was running gets this slack, so it can
/// not pick another parent; it only keeps a late-closed last call from being declined.
pub const END_SLACK_NANOS: u64 = 20_000_000;

/// How far outside a SERVER's window a CLIENT may start and still count as started while it
/// ran. Envoy stamps spans with its event loop's cached time, so on a loaded machine a CLIENT the
/// handler made can appear to start after the handler ended: up to 0.3 ms measured (2-core CI,
/// 10,488 proxy CLIENT spans). The same node's previous handler had ended at least 1.67 ms before
/// a later call started (the smallest gap measured), so 1 ms widens no sequential call into a
/// second candidate.
pub const START_SLACK_NANOS: u64 = 1_000_000;

/// What resolving one guid did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Parent edges added.
    pub edges: u64,
    /// Of those, edges added across nodes (tier 2).
    pub cross_node_edges: u64,
    /// Orphan spans declined: more than one candidate parent, or one that does not enclose them
    /// (left without a parent, marked with `tracepipe.parent_candidates`), or an edge that would
    /// close a cycle.
    pub ambiguous: u64,
    /// Of those, declined in the same-node tier.
    pub ambiguous_same_node: u64,
    /// Spans whose trace id was rewritten.
    pub retraced: u64,
    /// The guid had more than [`MAX_SPANS_PER_GUID`] spans and was left alone.
    pub too_large: bool,
}

/// A string attribute of a span.
pub fn string_attr<'a>(s: &'a Span, key: &str) -> Option<&'a str> {
    s.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| match &v.value {
        Some(any_value::Value::StringValue(x)) => Some(x.as_str()),
        _ => None,
    })
}

fn find(parent: &mut HashMap<Vec<u8>, Vec<u8>>, t: &[u8]) -> Vec<u8> {
    let mut cur = t.to_vec();
    while let Some(p) = parent.get(&cur) {
        if *p == cur {
            break;
        }
        cur = p.clone();
    }
    cur
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The lowercase names a SERVER span's service goes by: `service.name` and
/// `istio.canonical_service`, whole and up to the first dot.
fn service_names(h: &Held) -> Vec<String> {
    let mut out = Vec::new();
    let mut add = |v: &str| {
        let v = v.to_ascii_lowercase();
        if let Some((first, _)) = v.split_once('.') {
            out.push(first.to_owned());
        }
        out.push(v);
    };
    if let Some(r) = &h.resource.value {
        for kv in &r.attributes {
            if kv.key == "service.name"
                && let Some(any_value::Value::StringValue(v)) = kv.value.as_ref().and_then(|v| v.value.as_ref())
            {
                add(v);
            }
        }
    }
    if let Some(v) = string_attr(&h.span, "istio.canonical_service") {
        add(v);
    }
    out
}

/// The path (and query) of a span's `http.url` (or `url.full`), when it has one: a CLIENT and the
/// SERVER it called see the same request, so the same path (unless a route rewrites it).
fn url_path(s: &Span) -> Option<&str> {
    let url = string_attr(s, "http.url").or_else(|| string_attr(s, "url.full"))?;
    let rest = url.split_once("://").map_or(url, |x| x.1);
    Some(rest.find('/').map_or("/", |i| &rest[i..]))
}

/// The host a CLIENT span called: the host of an Istio-style `upstream_cluster`
/// (`outbound|9080||reviews.default.svc.cluster.local`), else of `http.url`; whole and up to
/// the first dot.
fn client_targets(s: &Span) -> Vec<String> {
    let mut out = Vec::new();
    let mut add = |host: &str| {
        let host = host.to_ascii_lowercase();
        if host.is_empty() {
            return;
        }
        if let Some((first, _)) = host.split_once('.') {
            out.push(first.to_owned());
        }
        out.push(host);
    };
    for key in ["upstream_cluster", "upstream_cluster.name"] {
        if let Some(c) = string_attr(s, key)
            && c.contains('|')
        {
            add(c.rsplit('|').next().unwrap_or(""));
        }
    }
    if let Some(url) = string_attr(s, "http.url").or_else(|| string_attr(s, "url.full")) {
        let rest = url.split_once("://").map(|x| x.1).unwrap_or(url);
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = authority.rsplit('@').next().unwrap_or("");
        let host = if host.starts_with('[') { host } else { host.split(':').next().unwrap_or("") };
        add(host);
    }
    out
}

/// Whether walking up from `from` reaches `target` (adding `target -> from` would close a cycle).
fn reaches(parent_of: &[Option<usize>], from: usize, target: usize) -> bool {
    let mut cur = Some(from);
    let mut steps = 0;
    while let Some(c) = cur {
        if c == target {
            return true;
        }
        steps += 1;
        if steps > parent_of.len() {
            return true; // already cyclic input: never add to it
        }
        cur = parent_of[c];
    }
    false
}

/// Gives a span the trace id of its rebuilt trace, keeping the old one as
/// `tracepipe.original_trace_id`.
pub fn retrace(s: &mut Span, new: Vec<u8>) {
    let old = std::mem::replace(&mut s.trace_id, new);
    s.attributes.push(KeyValue {
        key: "tracepipe.original_trace_id".into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(hex(&old))) }),
        key_strindex: 0,
    });
}

/// Rebuilds the tree of one guid's spans in place (spans without the guid, `tagged: false`, only
/// follow their fragment's new trace id).
pub fn resolve(spans: &mut [Held], rules: &Rules) -> Outcome {
    let mut out = Outcome::default();
    if spans.iter().filter(|h| h.tagged).count() > MAX_SPANS_PER_GUID {
        out.too_large = true;
        return out;
    }
    let traces: std::collections::BTreeSet<&Vec<u8>> = spans.iter().filter(|h| h.tagged).map(|h| &h.span.trace_id).collect();
    if traces.len() < 2 {
        return out; // already one trace: touch nothing
    }
    let n = spans.len();
    // Known parents within the guid. A SERVER root that shares its id with a CLIENT of the same
    // trace is that CLIENT's shared half (Envoy's shared_span_context): it hangs off the CLIENT.
    let mut by_id: HashMap<(&[u8], &[u8]), Vec<usize>> = HashMap::new();
    for (i, h) in spans.iter().enumerate() {
        by_id.entry((&h.span.trace_id, &h.span.span_id)).or_default().push(i);
    }
    let twin = |i: usize| -> Option<usize> {
        let s = &spans[i].span;
        by_id.get(&(&s.trace_id[..], &s.span_id[..]))?.iter().copied().find(|&j| j != i && spans[j].span.kind == CLIENT)
    };
    let mut parent_of: Vec<Option<usize>> = vec![None; n];
    let mut shared_half = vec![false; n];
    for (i, h) in spans.iter().enumerate() {
        let s = &h.span;
        if s.parent_span_id.is_empty() {
            if s.kind == SERVER && let Some(c) = twin(i) {
                parent_of[i] = Some(c);
                shared_half[i] = true;
            }
        } else if let Some(c) = by_id.get(&(&s.trace_id[..], &s.parent_span_id[..])) {
            // Children of a shared id belong to the callee side: prefer the SERVER half.
            parent_of[i] = c.iter().copied().find(|&j| spans[j].span.kind == SERVER).or(c.first().copied());
        }
    }
    let nodes: Vec<Option<&str>> = spans.iter().map(|h| string_attr(&h.span, &rules.node_attribute)).collect();
    let orphan = |i: usize| spans[i].span.parent_span_id.is_empty() && !shared_half[i];
    let mut edges: Vec<(usize, usize)> = Vec::new(); // (child, parent)
    // Orphans declined with more than one candidate parent (or one that does not enclose them):
    // (span, candidate parents). They get no parent, but join the rebuilt trace when every
    // candidate ends up in the same one.
    let mut declined: Vec<(usize, Vec<usize>)> = Vec::new();

    // Tier 1: orphan CLIENT roots -> the one SERVER on the same node that was running when the
    // CLIENT started.
    for i in 0..n {
        let s = &spans[i].span;
        if s.kind != CLIENT || !spans[i].tagged || !orphan(i) {
            continue;
        }
        let Some(node) = nodes[i] else { continue };
        let candidates: Vec<usize> = (0..n)
            .filter(|&j| {
                let (c, p) = (&spans[j], &spans[j].span);
                j != i && p.kind == SERVER && c.tagged && p.trace_id != s.trace_id && nodes[j] == Some(node)
                    && p.start_time_unix_nano <= s.start_time_unix_nano.saturating_add(START_SLACK_NANOS)
                    && s.start_time_unix_nano <= p.end_time_unix_nano.saturating_add(START_SLACK_NANOS)
            })
            .collect();
        match candidates[..] {
            [] => {
                // No handler ran when it started (a clock that jumped, or a call its app made
                // after answering): no parent, but it is this request's call on this node, so it
                // joins the trace holding every SERVER of the guid there, if they share one.
                let on_node: Vec<usize> = (0..n)
                    .filter(|&j| j != i && spans[j].span.kind == SERVER && spans[j].tagged && spans[j].span.trace_id != s.trace_id && nodes[j] == Some(node))
                    .collect();
                if !on_node.is_empty() {
                    out.ambiguous += 1;
                    declined.push((i, on_node));
                }
            }
            [j] if s.end_time_unix_nano <= spans[j].span.end_time_unix_nano.saturating_add(END_SLACK_NANOS) => edges.push((i, j)),
            _ => {
                out.ambiguous += 1;
                declined.push((i, candidates));
            }
        }
    }
    let same_node_edges = edges.len();
    out.ambiguous_same_node = out.ambiguous;

    // Tier 2: orphan SERVER roots -> the CLIENT on another node that called their service.
    if rules.cross_node {
        let skew = rules.clock_skew_nanos as i128;
        let targets: Vec<Vec<String>> = spans.iter().map(|h| if h.span.kind == CLIENT { client_targets(&h.span) } else { Vec::new() }).collect();
        let paths: Vec<Option<&str>> = spans.iter().map(|h| url_path(&h.span)).collect();
        // The clock offsets (server clock minus client clock, within the skew) at which CLIENT j
        // encloses SERVER i: empty when the SERVER lasted longer than the CLIENT.
        let offsets = |i: usize, j: usize| -> (i128, i128) {
            let (s, c) = (&spans[i].span, &spans[j].span);
            let lo = (c.start_time_unix_nano as i128 - s.start_time_unix_nano as i128).max(-skew);
            let hi = (c.end_time_unix_nano as i128 - s.end_time_unix_nano as i128).min(skew);
            (lo, hi)
        };
        // Per orphan SERVER, its candidate CLIENTs: (clock offset needed, time gap, client), the
        // one needing the least offset first.
        let mut cands: Vec<(usize, Vec<Candidate>)> = Vec::new();
        for i in 0..n {
            let s = &spans[i].span;
            if s.kind != SERVER || !spans[i].tagged || !orphan(i) {
                continue;
            }
            let names = service_names(&spans[i]);
            if names.is_empty() {
                continue;
            }
            let (ss, se) = (s.start_time_unix_nano as i128, s.end_time_unix_nano as i128);
            let mut mine = Vec::new();
            for j in 0..n {
                let c = &spans[j].span;
                if c.kind != CLIENT || !spans[j].tagged || c.trace_id == s.trace_id || (nodes[i].is_some() && nodes[j] == nodes[i]) {
                    continue;
                }
                if !targets[j].iter().any(|t| names.contains(t)) {
                    continue;
                }
                // Another path is another request (a CLIENT whose own SERVER did not arrive within
                // the wait is otherwise the only fit for a concurrent call's SERVER).
                if let (Some(a), Some(b)) = (paths[j], paths[i])
                    && a != b
                {
                    continue;
                }
                let (lo, hi) = offsets(i, j);
                if lo <= hi {
                    let (cs, ce) = (c.start_time_unix_nano as i128, c.end_time_unix_nano as i128);
                    mine.push((lo.max(0) - hi.min(0), (ss - cs).abs() + (ce - se).abs(), j));
                }
            }
            if !mine.is_empty() {
                mine.sort();
                cands.push((i, mine));
            }
        }
        // Each SERVER takes the CLIENT that needs the least clock offset, if no rival casts a
        // doubt on it: a rival on another node (the two nodes' offsets are independent, so time
        // cannot tell them apart), one that fits at an offset the chosen one fits at too (calls
        // in parallel), or one needing as little offset. A rival on the same node that fits only
        // at another offset is the same caller's earlier or later call (one offset holds for all
        // calls between two nodes): not a doubt. A CLIENT may take several SERVERs (a call its
        // proxy retried).
        for (i, m) in &cands {
            let i = *i;
            let (need, _, j) = m[0];
            let doubt = |r: usize, rneed: i128| {
                if nodes[r] != nodes[j] || nodes[j].is_none() || rneed == need {
                    return true;
                }
                let ((a, b), (c, d)) = (offsets(i, j), offsets(i, r));
                a.max(c) <= b.min(d)
            };
            if m[1..].iter().any(|&(rneed, _, r)| doubt(r, rneed)) {
                out.ambiguous += 1;
                declined.push((i, m.iter().map(|&(_, _, r)| r).collect()));
                continue;
            }
            edges.push((i, j));
        }
        // A CLIENT's several SERVERs are attempts of one call (its proxy retried), one after the
        // other: two that overlap in time on one node (one clock) are two calls, so one of them
        // took a CLIENT that is not its caller — its own caller missing from what arrived (a
        // sidecar's spans after the wait), leaving a concurrent call of the same caller as the only
        // fit. Which one is not in the timestamps: both are declined.
        let cross = edges.split_off(same_node_edges);
        let overlapping = |a: usize, b: usize| {
            let (x, y) = (&spans[a].span, &spans[b].span);
            nodes[a].is_some() && nodes[a] == nodes[b] && x.start_time_unix_nano < y.end_time_unix_nano && y.start_time_unix_nano < x.end_time_unix_nano
        };
        for &(i, j) in &cross {
            if cross.iter().any(|&(k, l)| l == j && k != i && overlapping(i, k)) {
                out.ambiguous += 1;
                // `cands` is in span order.
                let m = &cands[cands.binary_search_by_key(&i, |(s, _)| *s).expect("an edge comes from a candidate list")].1;
                declined.push((i, m.iter().map(|&(_, _, r)| r).collect()));
            } else {
                edges.push((i, j));
            }
        }
    }

    // Commit edges that keep the graph acyclic; union the fragments they join.
    let mut uf: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut committed: Vec<(usize, usize, bool)> = Vec::new();
    for (k, &(i, j)) in edges.iter().enumerate() {
        if reaches(&parent_of, j, i) {
            out.ambiguous += 1;
            out.ambiguous_same_node += (k < same_node_edges) as u64;
            continue;
        }
        parent_of[i] = Some(j);
        let (rc, rp) = (find(&mut uf, &spans[i].span.trace_id), find(&mut uf, &spans[j].span.trace_id));
        if rc != rp {
            uf.insert(rc, rp);
        }
        committed.push((i, j, k >= same_node_edges));
    }
    for (i, j, cross) in committed {
        out.edges += 1;
        out.cross_node_edges += cross as u64;
        let pspan = spans[j].span.span_id.clone();
        let (ct, cid) = (spans[i].span.trace_id.clone(), spans[i].span.span_id.clone());
        // The child, and (tier 1) a shared SERVER half that reuses its id in the same trace.
        for (k, h) in spans.iter_mut().enumerate() {
            let s = &mut h.span;
            let is_child = k == i;
            let is_shared_half = shared_half[k] && s.trace_id == ct && s.span_id == cid && s.parent_span_id.is_empty();
            if (is_child || is_shared_half) && s.parent_span_id.is_empty() {
                s.parent_span_id = pspan.clone();
                if rules.mark_inferred {
                    s.attributes.push(KeyValue { key: "tracepipe.inferred_parent".into(), value: Some(AnyValue { value: Some(any_value::Value::BoolValue(true)) }), key_strindex: 0 });
                }
            }
        }
    }
    // Declined orphans join the trace that holds all their candidates (right about the trace, silent
    // about the parent), until nothing more joins.
    let mut joined = false;
    loop {
        let mut changed = false;
        for (i, cs) in &declined {
            let roots: std::collections::BTreeSet<Vec<u8>> = cs.iter().map(|&j| find(&mut uf, &spans[j].span.trace_id)).collect();
            let mine = find(&mut uf, &spans[*i].span.trace_id);
            if roots.len() == 1 && let Some(r) = roots.into_iter().next() && r != mine {
                uf.insert(mine, r);
                changed = true;
                joined = true;
            }
        }
        if !changed {
            break;
        }
    }
    if rules.mark_inferred {
        for (i, cs) in &declined {
            let ids = cs.iter().map(|&j| AnyValue { value: Some(any_value::Value::StringValue(hex(&spans[j].span.span_id))) }).collect();
            spans[*i].span.attributes.push(KeyValue {
                key: "tracepipe.parent_candidates".into(),
                value: Some(AnyValue { value: Some(any_value::Value::ArrayValue(ArrayValue { values: ids })) }),
                key_strindex: 0,
            });
        }
    }
    if out.edges == 0 && !joined {
        return out;
    }
    // Every span takes the trace id of its component's root fragment.
    for h in spans.iter_mut() {
        let root = find(&mut uf, &h.span.trace_id);
        if root != h.span.trace_id {
            retrace(&mut h.span, root);
            out.retraced += 1;
        }
    }
    out
}
