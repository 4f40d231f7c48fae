//! Guid inference: the rule on the Envoy x-request-id-only shape, shared span ids, ambiguity,
//! whole traces untouched, pass-through without holding, windowing under a paused clock, and a
//! property test that fragment order does not change the result.

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tokio_util::sync::CancellationToken;
use tracepipe_config::ComponentKind;
use tracepipe_pipeline::telemetry::Health;
use tracepipe_pipeline::topology::{ComponentContext, Input, Output};
use tracepipe_pipeline::Batch;

use super::infer::{resolve, string_attr, Held, Rules};

fn rules(mark: bool) -> Rules {
    Rules { mark_inferred: mark, ..Rules::default() }
}
use super::GuidInferenceConfig;

fn s(k: &str, v: &str) -> KeyValue {
    KeyValue { key: k.into(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }), key_strindex: 0 }
}

fn span(trace: u8, id: u8, parent: u8, kind: i32, node: &str, guid: &str, start: u64, end: u64) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
        kind,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes: vec![s("guid:x-request-id", guid), s("node_id", node)],
        ..Default::default()
    }
}

/// The xrid-only shape Envoy 1.40 produced: three fragments for one request.
fn xrid_request(guid: &str, base: u8) -> Vec<Span> {
    vec![
        span(base, base + 1, 0, 2, "pp", guid, 100, 900),          // productpage SERVER (trace A, root)
        span(base + 1, base + 2, 0, 3, "pp", guid, 200, 800),      // productpage CLIENT (trace B, root)
        span(base + 1, base + 3, base + 2, 2, "rv", guid, 250, 750), // reviews SERVER (B)
        span(base + 2, base + 4, 0, 3, "rv", guid, 300, 700),      // reviews CLIENT (trace C, root)
        span(base + 2, base + 5, base + 4, 2, "rt", guid, 350, 650), // ratings SERVER (C)
    ]
}

fn held(spans: Vec<Span>) -> Vec<Held> {
    spans.into_iter().map(|span| Held { resource: Default::default(), scope: Default::default(), span, tagged: true }).collect()
}

#[test]
fn rebuilds_the_true_tree() {
    let mut h = held(xrid_request("g1", 10));
    let o = resolve(&mut h, &rules(true));
    assert_eq!((o.edges, o.ambiguous), (2, 0));
    assert!(h.iter().all(|x| x.span.trace_id == vec![10; 16]), "one trace, the root's");
    assert_eq!(h[1].span.parent_span_id, vec![11; 8], "pp CLIENT -> pp SERVER");
    assert_eq!(h[3].span.parent_span_id, vec![13; 8], "rv CLIENT -> rv SERVER");
    assert_eq!(string_attr(&h[4].span, "tracepipe.original_trace_id"), Some("0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c"));
    assert!(h[1].span.attributes.iter().any(|kv| kv.key == "tracepipe.inferred_parent"));
    assert!(string_attr(&h[0].span, "tracepipe.original_trace_id").is_none());
}

#[test]
fn whole_traces_and_other_nodes_are_left_alone() {
    let whole = vec![span(1, 1, 0, 2, "pp", "g", 0, 10), span(1, 2, 1, 3, "pp", "g", 1, 9)];
    let mut h = held(whole.clone());
    assert_eq!(resolve(&mut h, &rules(true)).edges, 0);
    assert_eq!(h.into_iter().map(|x| x.span).collect::<Vec<_>>(), whole);
    // A CLIENT whose only enclosing SERVER is on another node: not linked (forward-nothing control).
    let mut h = held(vec![span(1, 1, 0, 2, "a", "g", 0, 10), span(2, 2, 0, 3, "b", "g", 1, 9)]);
    assert_eq!(resolve(&mut h, &rules(true)).edges, 0);
}

fn candidates(s: &Span) -> Option<Vec<String>> {
    s.attributes.iter().find(|kv| kv.key == "tracepipe.parent_candidates").map(|kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::ArrayValue(a)) => a.values.iter().map(|v| match &v.value {
            Some(any_value::Value::StringValue(x)) => x.clone(),
            other => panic!("candidate {other:?}"),
        }).collect(),
        other => panic!("parent_candidates {other:?}"),
    })
}

#[test]
fn a_client_ending_just_after_its_server_is_still_its_child() {
    // Envoy 1.40 ends the last outbound CLIENT span after its SERVER: 5 us idle, 1.5 ms seen on a
    // loaded CI machine.
    for late in [5_000, 1_500_000] {
        let mut h = held(vec![span(1, 1, 0, 2, "rv", "g", 1_000, 100_000_000), span(2, 2, 0, 3, "rv", "g", 50_000_000, 100_000_000 + late)]);
        assert_eq!(resolve(&mut h, &rules(true)).edges, 1, "ending {late} ns late");
    }
    // ... but not one that ends well after it (a call left running): declined, yet in the trace
    // of its one candidate.
    let mut h = held(vec![span(1, 1, 0, 2, "rv", "g", 1_000, 100_000_000), span(2, 2, 0, 3, "rv", "g", 50_000_000, 150_000_000)]);
    let o = resolve(&mut h, &rules(true));
    assert_eq!((o.edges, o.ambiguous), (0, 1));
    assert!(h[1].span.parent_span_id.is_empty());
    assert_eq!(h[1].span.trace_id, vec![1; 16]);
    assert_eq!(candidates(&h[1].span), Some(vec!["01".repeat(8)]));
    // Envoy's cached event-loop time can make the CLIENT appear to start just after its SERVER
    // ended (0.3 ms measured under load): still its child.
    let mut h = held(vec![span(1, 1, 0, 2, "rv", "g", 1_000, 100_000_000), span(2, 2, 0, 3, "rv", "g", 100_300_000, 101_000_000)]);
    assert_eq!(resolve(&mut h, &rules(true)).edges, 1);
    // A CLIENT that started well after the SERVER ended is not shown as its child; but it is the
    // request's call on that node: declined, in the trace of the node's SERVERs.
    let mut h = held(vec![span(1, 1, 0, 2, "rv", "g", 1_000, 100_000_000), span(2, 2, 0, 3, "rv", "g", 101_500_000, 101_600_000)]);
    let o = resolve(&mut h, &rules(true));
    assert_eq!((o.edges, o.ambiguous), (0, 1));
    assert!(h[1].span.parent_span_id.is_empty());
    assert_eq!(h[1].span.trace_id, vec![1; 16]);
    assert_eq!(candidates(&h[1].span), Some(vec!["01".repeat(8)]));
    // No SERVER of the guid on its node at all: nothing to say.
    let mut h = held(vec![span(1, 1, 0, 2, "pp", "g", 1_000, 100_000_000), span(2, 2, 0, 3, "rv", "g", 101_500_000, 101_600_000)]);
    assert_eq!(resolve(&mut h, &rules(true)).ambiguous, 0);
    // Sequential handlers (1.67 ms apart at the least, measured): the later call has one candidate.
    let mut h = held(vec![
        span(1, 1, 0, 2, "rt", "g", 0, 10_000_000),
        span(3, 3, 0, 2, "rt", "g", 11_000_000, 20_000_000),
        span(4, 4, 0, 3, "rt", "g", 11_670_000, 19_000_000),
    ]);
    let o = resolve(&mut h, &rules(true));
    assert_eq!((o.edges, o.ambiguous), (1, 0));
    assert_eq!(h[2].span.parent_span_id, vec![3; 8]);
}

#[test]
fn concurrent_candidates_are_declined_not_guessed() {
    // Two SERVERs of the node running when the CLIENT started, nested or not, equal or not:
    // which handler made the call is not in the timestamps.
    for (a, b) in [((0, 100), (0, 100)), ((0, 100), (5, 50)), ((0, 100), (5, 150))] {
        let mut h = held(vec![span(1, 1, 0, 2, "a", "g", a.0, a.1), span(2, 2, 0, 2, "a", "g", b.0, b.1), span(3, 3, 0, 3, "a", "g", 10, 20)]);
        let o = resolve(&mut h, &rules(true));
        assert_eq!((o.edges, o.ambiguous, o.ambiguous_same_node), (0, 1, 1), "{a:?} {b:?}");
        assert!(h[2].span.parent_span_id.is_empty());
        assert_eq!(candidates(&h[2].span), Some(vec!["01".repeat(8), "02".repeat(8)]));
        // The candidates are two separate traces: which one the CLIENT belongs to is unknown too.
        assert_eq!(h[2].span.trace_id, vec![3; 16]);
    }
    // One of them had ended when the CLIENT started (by more than the 1 ms slack): the other is the one.
    const MS: u64 = 1_000_000;
    let mut h = held(vec![span(1, 1, 0, 2, "a", "g", 0, 100 * MS), span(2, 2, 0, 2, "a", "g", 5 * MS, 50 * MS), span(3, 3, 0, 3, "a", "g", 60 * MS, 80 * MS)]);
    assert_eq!(resolve(&mut h, &rules(true)).edges, 1);
    assert_eq!(h[2].span.parent_span_id, vec![1; 8]);
    // Both candidates already in one trace (the service called itself): the CLIENT joins that
    // trace, with no parent and both candidates named.
    let mut h = held(vec![span(1, 1, 0, 2, "a", "g", 0, 100), span(1, 2, 1, 2, "a", "g", 5, 50), span(3, 3, 0, 3, "a", "g", 10, 20)]);
    let o = resolve(&mut h, &rules(true));
    assert_eq!((o.edges, o.ambiguous), (0, 1));
    assert!(h[2].span.parent_span_id.is_empty());
    assert_eq!(h[2].span.trace_id, vec![1; 16]);
    assert_eq!(string_attr(&h[2].span, "tracepipe.original_trace_id"), Some("03".repeat(16).as_str()));
    // Without mark_inferred nothing is added to the span.
    let mut h = held(vec![span(1, 1, 0, 2, "a", "g", 0, 100), span(2, 2, 0, 2, "a", "g", 5, 50), span(3, 3, 0, 3, "a", "g", 10, 20)]);
    resolve(&mut h, &rules(false));
    assert_eq!(candidates(&h[2].span), None);
}

#[test]
fn a_hostile_guid_with_too_many_spans_is_left_alone_before_matching() {
    // 20,000 orphan CLIENT spans and SERVER spans sharing one guid on one node: quadratic
    // matching would take minutes; it is refused on the count, before any matching (no edge, no
    // mark, every span as it was).
    let mut spans = Vec::new();
    for i in 0..10_000u32 {
        let b = (i % 250) as u8 + 1;
        spans.push(span(b, b, 0, 2, "n", "g", 0, 100));
        spans.push(span(b.wrapping_add(1).max(1), b, 0, 3, "n", "g", 10, 20));
    }
    let mut h = held(spans.clone());
    let o = resolve(&mut h, &rules(true));
    assert!(o.too_large && o.edges == 0 && o.ambiguous == 0 && o.retraced == 0);
    assert_eq!(h.into_iter().map(|x| x.span).collect::<Vec<_>>(), spans);
}

#[test]
fn shared_span_context_half_gets_the_same_parent() {
    // Envoy default: the callee SERVER reuses the CLIENT id, no parent, marked shared.
    let mut h = held(vec![span(1, 1, 0, 2, "pp", "g", 0, 100), span(2, 7, 0, 3, "pp", "g", 10, 90), span(2, 7, 0, 2, "rv", "g", 12, 88)]);
    assert_eq!(resolve(&mut h, &rules(false)).edges, 1);
    assert_eq!(h[1].span.parent_span_id, vec![1; 8]);
    assert_eq!(h[2].span.parent_span_id, vec![1; 8]);
    assert!(h.iter().all(|x| x.span.trace_id == vec![1; 16]));
}

/// A proxy span of the propagate-nothing shape: its own trace (id = span id), no parent, the
/// resource naming the service, and for CLIENT spans an Istio `upstream_cluster` naming the callee.
/// Times are in milliseconds.
fn lone(id: u8, kind: i32, svc: &str, target: &str, start: u64, end: u64) -> Held {
    let mut sp = span(id, id, 0, kind, svc, "g", start * 1_000_000, end * 1_000_000);
    if kind == 3 {
        sp.attributes.push(s("upstream_cluster", &format!("outbound|9080||{target}.default.svc.cluster.local")));
    }
    let resource = Resource { attributes: vec![s("service.name", &format!("{svc}.default"))], ..Default::default() };
    Held { resource: std::sync::Arc::new(super::infer::Envelope { value: Some(resource), schema_url: String::new() }), scope: Default::default(), span: sp, tagged: true }
}

/// Skew in milliseconds.
fn skew_rules(skew: u64) -> Rules {
    Rules { clock_skew_nanos: skew * 1_000_000, ..Rules::default() }
}

/// productpage -> details || reviews; reviews -> ratings twice; ratings -> db; every span its own
/// trace; the reviews node's clock runs 20 behind (within the skew of 30).
fn bookinfo_all_roots() -> (Vec<Held>, Vec<(u8, u8)>) {
    let spans = vec![
        lone(1, 2, "productpage", "", 0, 1000),
        lone(2, 3, "productpage", "details", 100, 400),
        lone(3, 3, "productpage", "reviews", 100, 900),
        lone(4, 2, "details", "", 110, 390),
        lone(5, 2, "reviews", "", 90, 880),
        lone(6, 3, "reviews", "ratings", 150, 400),
        lone(7, 3, "reviews", "ratings", 450, 800),
        lone(8, 2, "ratings", "", 160, 390),
        lone(9, 2, "ratings", "", 460, 790),
        lone(10, 3, "ratings", "db", 200, 300),
        lone(11, 3, "ratings", "db", 500, 600),
        lone(12, 2, "db", "", 210, 290),
        lone(13, 2, "db", "", 510, 590),
    ];
    let want = vec![(2, 1), (3, 1), (4, 2), (5, 3), (6, 5), (7, 5), (8, 6), (9, 7), (10, 8), (11, 9), (12, 10), (13, 11)];
    (spans, want)
}

fn parents(h: &[Held]) -> Vec<(u8, u8)> {
    let mut v: Vec<(u8, u8)> = h.iter().filter(|x| !x.span.parent_span_id.is_empty()).map(|x| (x.span.span_id[0], x.span.parent_span_id[0])).collect();
    v.sort();
    v
}

#[test]
fn cross_node_tier_rebuilds_fan_out_repeated_calls_and_skew() {
    let (mut h, want) = bookinfo_all_roots();
    let o = resolve(&mut h, &skew_rules(30));
    assert_eq!(parents(&h), want);
    assert_eq!((o.edges, o.cross_node_edges, o.ambiguous), (12, 6, 0));
    assert!(h.iter().all(|x| x.span.trace_id == vec![1; 16]), "one trace, the root's");
    // Without the cross-node tier only same-node edges exist; the trace stays in pieces.
    let (mut h, _) = bookinfo_all_roots();
    let o = resolve(&mut h, &Rules { cross_node: false, ..skew_rules(30) });
    assert_eq!((o.edges, o.cross_node_edges), (6, 0));
    // With a skew below the reviews clock offset, the reviews SERVER is not linked.
    let (mut h, _) = bookinfo_all_roots();
    resolve(&mut h, &skew_rules(5));
    assert!(h[4].span.parent_span_id.is_empty());
}

/// Two calls of one caller at once (the fanout mesh's reviews handling two requests' calls), the
/// CLIENT of one of them missing — its sidecar's spans arrived after the wait. The other CLIENT
/// encloses both SERVERs, each at some clock offset, and nothing else fits the orphan: before,
/// both were taken as attempts of one call and the orphan got a wrong parent. Concurrent SERVERs
/// on one node are two calls, so both are declined (absent, not wrong) and still join the
/// CLIENT's trace; sequential ones stay attempts of one call.
#[test]
fn concurrent_servers_on_one_node_are_not_attempts_of_one_call() {
    let mut h = vec![
        lone(2, 3, "reviews", "ratings", 100, 500), // C2 (C1, 90..480, never arrived)
        lone(3, 2, "ratings", "", 110, 490),        // C2's callee: fits at offset 0
        lone(4, 2, "ratings", "", 95, 470),         // C1's callee: fits C2 only at offsets 5..30
    ];
    let o = resolve(&mut h, &skew_rules(30));
    assert_eq!((o.edges, o.ambiguous, o.ambiguous_same_node), (0, 2, 0));
    assert_eq!(parents(&h), vec![]);
    assert_eq!(candidates(&h[2].span), Some(vec!["02".repeat(8)]));
    assert!(h.iter().all(|x| x.span.trace_id == vec![2; 16]), "both join the CLIENT's trace");
    // The same SERVERs one after the other: a retried call, both hang off the CLIENT.
    let mut h = vec![lone(2, 3, "reviews", "ratings", 100, 500), lone(3, 2, "ratings", "", 110, 250), lone(4, 2, "ratings", "", 260, 490)];
    let o = resolve(&mut h, &skew_rules(30));
    assert_eq!((o.edges, o.ambiguous), (2, 0));
    assert_eq!(parents(&h), vec![(3, 2), (4, 2)]);
    // Overlapping SERVERs of two replicas (two nodes, two clocks): their times do not compare.
    let mut h = vec![lone(2, 3, "reviews", "ratings", 100, 500), lone(3, 2, "ratings", "", 110, 490), {
        let mut x = lone(4, 2, "ratings", "", 120, 480);
        x.span.attributes.retain(|a| a.key != "node_id");
        x.span.attributes.push(s("node_id", "ratings-2"));
        x
    }];
    assert_eq!(resolve(&mut h, &skew_rules(30)).edges, 2);
}

/// A CLIENT and the SERVER it called carry the same request's path (`http.url`): one whose path
/// differs is another call. Measured on the fanout mesh with the reviews sidecar stopped 4 s
/// mid-run: a CLIENT that arrived after the wait left its first (failed) attempt's SERVER to the
/// same node's concurrent call, as if that call had retried (3 wrong edges in one run).
#[test]
fn a_server_with_another_path_is_another_call() {
    let with_url = |mut h: Held, path: &str| {
        h.span.attributes.push(s("http.url", &format!("http://ratings.default.svc.cluster.local:9080{path}")));
        h
    };
    let lone_call = |path: &str| {
        vec![
            with_url(lone(2, 3, "reviews", "ratings", 100, 500), "/ratings/a"), // its call, 110..200 then a retry
            with_url(lone(3, 2, "ratings", "", 110, 200), "/ratings/a"),
            with_url(lone(4, 2, "ratings", "", 210, 300), path), // an attempt of the CLIENT that arrived late, or the retry
        ]
    };
    let mut h = lone_call("/ratings/b");
    let o = resolve(&mut h, &skew_rules(30));
    assert_eq!((o.edges, o.ambiguous), (1, 0));
    assert_eq!(parents(&h), vec![(3, 2)], "the other call's attempt is left alone");
    let mut h = lone_call("/ratings/a");
    assert_eq!(resolve(&mut h, &skew_rules(30)).edges, 2);
    assert_eq!(parents(&h), vec![(3, 2), (4, 2)], "a retry of the same request");
    // With a query string and without a URL on one side, the path still decides only when both have one.
    let mut h = vec![with_url(lone(2, 3, "reviews", "ratings", 100, 500), "/r?id=1"), lone(3, 2, "ratings", "", 110, 200)];
    assert_eq!(resolve(&mut h, &skew_rules(30)).edges, 1);
}

#[test]
fn cross_node_tier_needs_the_callee_name_and_counts_ties() {
    // The CLIENT called details; a reviews SERVER inside its time is not its callee.
    let mut h = vec![lone(1, 3, "productpage", "details", 0, 100), lone(2, 2, "reviews", "", 10, 90)];
    assert_eq!(resolve(&mut h, &skew_rules(30)).edges, 0);
    // Two identical parallel calls to one service: which SERVER answered which is unknowable.
    let mut h = vec![
        lone(1, 3, "reviews", "ratings", 100, 500),
        lone(2, 3, "reviews", "ratings", 100, 500),
        lone(3, 2, "ratings", "", 110, 490),
        lone(4, 2, "ratings", "", 110, 490),
    ];
    let o = resolve(&mut h, &skew_rules(30));
    assert_eq!((o.edges, o.ambiguous, o.ambiguous_same_node), (0, 2, 0));
    assert_eq!(candidates(&h[2].span), Some(vec!["01".repeat(8), "02".repeat(8)]));
    // The same, staggered: the closer CLIENT is not proof either (same offset fits both).
    let mut h = vec![
        lone(1, 3, "reviews", "ratings", 100, 500),
        lone(2, 3, "reviews", "ratings", 120, 520),
        lone(3, 2, "ratings", "", 110, 490),
    ];
    assert_eq!(resolve(&mut h, &skew_rules(30)).edges, 0);
    // Two callers on different nodes: their clocks are independent, so whichever is closer in
    // time proves nothing...
    let mut h = vec![
        lone(1, 3, "productpage", "reviews", 100, 500),
        lone(2, 3, "details", "reviews", 300, 700),
        lone(3, 2, "reviews", "", 110, 490),
    ];
    let o = resolve(&mut h, &skew_rules(300));
    assert_eq!((o.edges, o.ambiguous), (0, 1));
    // ... while one caller's sequential calls fit one clock offset only one way.
    let mut h = vec![
        lone(1, 3, "reviews", "ratings", 100, 300),
        lone(2, 3, "reviews", "ratings", 310, 500),
        lone(3, 2, "ratings", "", 115, 295),
        lone(4, 2, "ratings", "", 315, 495),
    ];
    // (With a skew of 200 each SERVER fits both CLIENTs, at offsets 200 apart.)
    let o = resolve(&mut h, &skew_rules(200));
    assert_eq!(parents(&h), vec![(3, 1), (4, 2)]);
    assert_eq!(o.ambiguous, 0);
    // A CLIENT shorter than the SERVER cannot have made it at any clock offset, however close in
    // time (measured on the fanout mesh: a concurrent call of the same caller was taken).
    let mut h = vec![lone(1, 3, "reviews", "ratings", 268, 1010), lone(2, 3, "reviews", "ratings", 361, 411), lone(3, 2, "ratings", "", 280, 341)];
    assert_eq!(resolve(&mut h, &skew_rules(500)).edges, 1);
    assert_eq!(parents(&h), vec![(3, 1)]);
    // A retried call followed by another call: the second attempt stays with the retried CLIENT,
    // even though another CLIENT is unused and fits at a larger offset.
    let mut h = vec![
        lone(1, 3, "reviews", "ratings", 100, 500),
        lone(2, 2, "ratings", "", 110, 200),
        lone(3, 2, "ratings", "", 300, 490),
        lone(4, 3, "reviews", "ratings", 510, 700),
        lone(5, 2, "ratings", "", 520, 690),
    ];
    let o = resolve(&mut h, &skew_rules(300));
    assert_eq!(parents(&h), vec![(2, 1), (3, 1), (5, 4)]);
    assert_eq!(o.ambiguous, 0);
    // A retried call: one CLIENT, two SERVER attempts; both hang off the CLIENT.
    let mut h = vec![lone(1, 3, "reviews", "ratings", 100, 900), lone(2, 2, "ratings", "", 110, 400), lone(3, 2, "ratings", "", 420, 890)];
    let o = resolve(&mut h, &skew_rules(30));
    assert_eq!(parents(&h), vec![(2, 1), (3, 1)]);
    assert_eq!(o.cross_node_edges, 2);
}

#[test]
fn spans_without_node_id_are_not_linked_on_the_same_node_tier() {
    // README: spans without `node_id` are never re-parented in the same-node tier (nothing says
    // which SERVER shares their clock).
    let strip = |mut sp: Span| {
        sp.attributes.retain(|kv| kv.key != "node_id");
        sp
    };
    for (server, client) in [(true, false), (false, true), (false, false)] {
        let sv = span(1, 1, 0, 2, "a", "g", 0, 100);
        let cl = span(2, 2, 0, 3, "a", "g", 10, 20);
        let mut h = held(vec![if server { sv } else { strip(sv) }, if client { cl } else { strip(cl) }]);
        let o = resolve(&mut h, &rules(true));
        assert_eq!((o.edges, o.ambiguous), (0, 0), "server node {server}, client node {client}");
        assert_eq!(h[1].span.trace_id, vec![2; 16]);
    }
}

#[test]
fn callees_are_matched_by_url_host_and_canonical_service() {
    // No upstream_cluster: the CLIENT's `http.url` host names the callee.
    let by_url = |url: &str| {
        let mut c = lone(1, 3, "productpage", "", 0, 100);
        c.span.attributes.retain(|kv| kv.key != "upstream_cluster");
        c.span.attributes.push(s("http.url", url));
        let mut h = vec![c, lone(2, 2, "reviews", "", 10, 90)];
        resolve(&mut h, &skew_rules(30));
        parents(&h)
    };
    for url in ["http://reviews:9080/x", "http://reviews.default.svc.cluster.local:9080/", "https://user@REVIEWS/", "reviews/api"] {
        assert_eq!(by_url(url), vec![(2, 1)], "{url}");
    }
    for url in ["http://10.0.0.7:9080/reviews", "http://ratings:9080/", ""] {
        assert_eq!(by_url(url), vec![], "{url}");
    }
    // The SERVER's service.name says nothing useful; its `istio.canonical_service` does.
    let mut sv = lone(2, 2, "reviews-v2-7d9f", "", 10, 90);
    let mut h = vec![lone(1, 3, "productpage", "reviews", 0, 100), sv.clone()];
    resolve(&mut h, &skew_rules(30));
    assert_eq!(parents(&h), vec![], "service.name reviews-v2-7d9f is not reviews");
    sv.span.attributes.push(s("istio.canonical_service", "reviews"));
    let mut h = vec![lone(1, 3, "productpage", "reviews", 0, 100), sv];
    resolve(&mut h, &skew_rules(30));
    assert_eq!(parents(&h), vec![(2, 1)]);
}

#[test]
fn no_edge_closes_a_cycle() {
    // Two services calling each other with times equal within the skew: A's CLIENT and B's
    // SERVER enclose each other, and so do B's CLIENT and A's SERVER.
    let mut h = vec![
        lone(1, 2, "a", "", 0, 100),
        lone(2, 3, "a", "b", 0, 100),
        lone(3, 2, "b", "", 0, 100),
        lone(4, 3, "b", "a", 0, 100),
    ];
    resolve(&mut h, &skew_rules(30));
    let p = parents(&h);
    let parent = |c: u8| p.iter().find(|x| x.0 == c).map(|x| x.1);
    for start in 1..=4u8 {
        let mut cur = Some(start);
        for _ in 0..5 {
            cur = cur.and_then(parent);
        }
        assert_eq!(cur, None, "cycle through span {start}: {p:?}");
    }
}

fn batch(spans: Vec<Span>) -> Batch {
    Batch::from_resource_spans(vec![ResourceSpans { resource: Some(Resource::default()), scope_spans: vec![ScopeSpans { spans, ..Default::default() }], ..Default::default() }])
}

fn names(b: &Batch) -> Vec<Vec<u8>> {
    b.to_resource_spans().unwrap().iter().flat_map(|r| r.scope_spans.iter().flat_map(|s| s.spans.iter().map(|s| s.span_id.clone()))).collect()
}

#[tokio::test(start_paused = true)]
async fn windowing_passthrough_and_shutdown() {
    let (tx, input) = Input::channel(8);
    let (otx, mut out) = Input::channel(64);
    let ctx = ComponentContext { name: "g".into(), kind: ComponentKind::Processor, input: Some(input), output: Some(Output::new(vec![otx])), shutdown: CancellationToken::new(), health: Health::default() };
    let cfg = GuidInferenceConfig { wait: tracepipe_config::Duration::from_secs(5), hold_untagged: false, ..Default::default() };
    let h = tokio::spawn(super::build(cfg, ctx).await.unwrap());
    let mut no_guid = span(9, 99, 0, 2, "x", "", 0, 1);
    no_guid.attributes.clear();
    let frags = xrid_request("g1", 10);
    // Fragments arrive in separate batches, seconds apart; a span without guid rides along.
    tx.send(batch(vec![frags[3].clone(), frags[4].clone(), no_guid])).await.unwrap();
    let first = tokio::time::timeout(std::time::Duration::from_millis(50), out.recv()).await.expect("no-guid span held").unwrap();
    assert_eq!(names(&first), vec![vec![99; 8]]);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    tx.send(batch(vec![frags[0].clone(), frags[1].clone(), frags[2].clone()])).await.unwrap();
    assert!(tokio::time::timeout(std::time::Duration::from_secs(2), out.recv()).await.is_err(), "released before the wait");
    let resolved = tokio::time::timeout(std::time::Duration::from_secs(2), out.recv()).await.expect("not released after the wait").unwrap();
    let rs = resolved.to_resource_spans().unwrap();
    let spans: Vec<&Span> = rs.iter().flat_map(|r| r.scope_spans.iter().flat_map(|s| s.spans.iter())).collect();
    assert_eq!(spans.len(), 5);
    assert!(spans.iter().all(|s| s.trace_id == vec![10; 16]));
    // Shutdown flushes what is held.
    tx.send(batch(xrid_request("g2", 50))).await.unwrap();
    drop(tx);
    let flushed = out.recv().await.unwrap();
    assert_eq!(flushed.span_count(), 5);
    h.await.unwrap().unwrap();
}

/// A guid inference processor with `wait_secs` and `hold_untagged`: its input, output and task.
async fn running(wait_secs: u64) -> (tokio::sync::mpsc::Sender<Batch>, Input, tokio::task::JoinHandle<Result<(), tracepipe_pipeline::ComponentError>>) {
    let (tx, input) = Input::channel(8);
    let (otx, out) = Input::channel(64);
    let ctx = ComponentContext { name: "g".into(), kind: ComponentKind::Processor, input: Some(input), output: Some(Output::new(vec![otx])), shutdown: CancellationToken::new(), health: Health::default() };
    let cfg = GuidInferenceConfig { wait: tracepipe_config::Duration::from_secs(wait_secs), ..Default::default() };
    (tx, out, tokio::spawn(super::build(cfg, ctx).await.unwrap()))
}

/// An application's own span (no guid, no node).
fn sdk(trace: u8, id: u8, parent: u8) -> Span {
    Span { trace_id: vec![trace; 16], span_id: vec![id; 8], parent_span_id: vec![parent; 8], kind: 1, ..Default::default() }
}

/// An application's own spans (no guid) share a fragment's trace id: held with `hold_untagged`,
/// they take the rebuilt trace id whether they arrive before the fragment's proxy spans, while
/// the guid is held, or after it was resolved; an unrelated untagged trace comes out unchanged
/// after the wait.
#[tokio::test(start_paused = true)]
async fn application_spans_follow_their_fragment_into_the_rebuilt_trace() {
    let (tx, mut out, h) = running(2).await;
    let frags = xrid_request("g1", 10); // traces 10 (root), 11, 12
    // Before: an SDK span of fragment 12 (under ratings' SERVER 15), and an unrelated trace.
    tx.send(batch(vec![sdk(12, 100, 15), sdk(40, 101, 41)])).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // During: the proxies' spans, and an SDK span of fragment 11.
    tx.send(batch(frags.clone())).await.unwrap();
    tx.send(batch(vec![sdk(11, 102, 13)])).await.unwrap();
    let mut got: Vec<Span> = Vec::new();
    while got.len() < 8 {
        let b = tokio::time::timeout(std::time::Duration::from_secs(5), out.recv()).await.expect("released").unwrap();
        got.extend(b.to_resource_spans().unwrap().into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans));
    }
    let trace_of = |id: u8| got.iter().find(|s| s.span_id == vec![id; 8]).map(|s| s.trace_id.clone()).unwrap();
    for id in [11, 12, 13, 14, 15, 100, 102] {
        assert_eq!(trace_of(id), vec![10; 16], "span {id} is in the rebuilt trace");
    }
    assert_eq!(trace_of(101), vec![40; 16], "an unrelated trace is left alone");
    let sdk100 = got.iter().find(|s| s.span_id == vec![100; 8]).unwrap();
    assert_eq!(string_attr(sdk100, "tracepipe.original_trace_id"), Some("0c".repeat(16).as_str()));
    assert_eq!(sdk100.parent_span_id, vec![15; 8], "an application span's parent is never touched");
    // After: a late SDK span of fragment 11 passes at once, retraced.
    tx.send(batch(vec![sdk(11, 103, 102)])).await.unwrap();
    let late = tokio::time::timeout(std::time::Duration::from_millis(50), out.recv()).await.expect("late span passes at once").unwrap();
    let late = late.to_resource_spans().unwrap();
    assert_eq!(late[0].scope_spans[0].spans[0].trace_id, vec![10; 16]);
    drop(tx);
    h.await.unwrap().unwrap();
}

/// An untagged span is never linked: an orphan SDK CLIENT span on a guid's node, inside its
/// SERVER span's window, keeps no parent (only proxy spans carry the evidence).
#[test]
fn untagged_spans_are_never_linked() {
    let mut spans = held(xrid_request("g", 10));
    let mut orphan = span(60, 61, 0, 3, "pp", "", 300, 400);
    orphan.attributes.retain(|kv| kv.key != "guid:x-request-id");
    spans.push(Held { resource: Default::default(), scope: Default::default(), span: orphan, tagged: false });
    resolve(&mut spans, &rules(true));
    let o = spans.last().unwrap();
    assert!(o.span.parent_span_id.is_empty());
    assert_eq!(o.span.trace_id, vec![60; 16]);
}

#[tokio::test]
async fn batches_without_the_guid_key_pass_undecoded() {
    use prost::Message;
    let (tx, input) = Input::channel(8);
    let (otx, mut out) = Input::channel(8);
    let ctx = ComponentContext { name: "g".into(), kind: ComponentKind::Processor, input: Some(input), output: Some(Output::new(vec![otx])), shutdown: CancellationToken::new(), health: Health::default() };
    let h = tokio::spawn(super::build(GuidInferenceConfig { hold_untagged: false, ..Default::default() }, ctx).await.unwrap());
    let mut plain = span(1, 1, 0, 2, "n", "", 0, 1);
    plain.attributes.clear();
    let bytes = opentelemetry_proto::tonic::trace::v1::TracesData { resource_spans: batch(vec![plain]).to_resource_spans().unwrap() }.encode_to_vec();
    tx.send(Batch::from_encoded(bytes.clone().into(), 1)).await.unwrap();
    let b = out.recv().await.unwrap();
    assert!(b.is_encoded(), "decoded although no span can carry the guid");
    assert_eq!(b.to_bytes().as_ref(), bytes.as_slice());
    drop(tx);
    h.await.unwrap().unwrap();
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any arrival order of a request's spans gives the same tree.
        #[test]
        fn order_does_not_matter(perm in Just((0..10).collect::<Vec<usize>>()).prop_shuffle()) {
            let mut spans = xrid_request("a", 10);
            spans.extend(xrid_request("a", 60).into_iter().map(|mut s| { s.start_time_unix_nano += 1000; s.end_time_unix_nano += 1000; s }));
            let mut reference = held(spans.clone());
            resolve(&mut reference, &rules(true));
            let mut shuffled = held(perm.iter().map(|i| spans[*i].clone()).collect());
            resolve(&mut shuffled, &rules(true));
            let key = |h: &Held| (h.span.span_id.clone(), h.span.trace_id.clone(), h.span.parent_span_id.clone());
            let mut a: Vec<_> = reference.iter().map(key).collect();
            let mut b: Vec<_> = shuffled.iter().map(key).collect();
            a.sort();
            b.sort();
            prop_assert_eq!(a, b);
        }

        /// The propagate-nothing shape too: any arrival order, the same tree.
        #[test]
        fn cross_node_order_does_not_matter(perm in Just((0..13).collect::<Vec<usize>>()).prop_shuffle()) {
            let (spans, want) = bookinfo_all_roots();
            let mut shuffled: Vec<Held> = perm.iter().map(|i| spans[*i].clone()).collect();
            resolve(&mut shuffled, &skew_rules(30));
            prop_assert_eq!(parents(&shuffled), want);
            prop_assert!(shuffled.iter().all(|x| x.span.trace_id == vec![1; 16]));
        }
    }
}

mod acks {
    use super::*;
    use tracepipe_pipeline::{BatchStatus, Finalizer};

    fn tracked(b: Batch) -> (Batch, std::sync::mpsc::Receiver<BatchStatus>) {
        let (tx, rx) = std::sync::mpsc::channel();
        (b.with_finalizer(Finalizer::new(move |s| { let _ = tx.send(s); })), rx)
    }

    fn start(wait_secs: u64) -> (tokio::sync::mpsc::Sender<Batch>, Input, tokio::task::JoinHandle<Result<(), tracepipe_pipeline::ComponentError>>) {
        let (tx, input) = Input::channel(8);
        let (otx, out) = Input::channel(64);
        let ctx = ComponentContext { name: "g".into(), kind: ComponentKind::Processor, input: Some(input), output: Some(Output::new(vec![otx])), shutdown: CancellationToken::new(), health: Health::default() };
        let cfg = GuidInferenceConfig { wait: tracepipe_config::Duration::from_secs(wait_secs), ..Default::default() };
        let h = tokio::spawn(async move { super::super::build(cfg, ctx).await.unwrap().await });
        (tx, out, h)
    }

    /// Held spans keep their batch's acknowledgement: it fires only once every guid it fed has
    /// been released and the released batches are done, with the worst status.
    #[tokio::test(start_paused = true)]
    async fn held_spans_keep_their_batches_finalizers_until_delivered() {
        let (tx, mut out, h) = start(5);
        let g1 = xrid_request("g1", 10);
        let g2 = xrid_request("g2", 50);
        // b0 opens g1; a second later b1 feeds g1 and opens g2 (all its spans are held); b2 feeds g2.
        let (b0, s0) = tracked(batch(vec![g1[0].clone()]));
        tx.send(b0).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let (b1, s1) = tracked(batch(vec![g1[1].clone(), g2[0].clone()]));
        tx.send(b1).await.unwrap();
        let (b2, s2) = tracked(batch(g2[1..].to_vec()));
        tx.send(b2).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(s0.try_recv().is_err() && s1.try_recv().is_err(), "acknowledged while its spans are only held");
        // g1 is released first; b1 still has a span held in g2.
        let first = tokio::time::timeout(std::time::Duration::from_secs(5), out.recv()).await.unwrap().unwrap();
        assert_eq!(first.span_count(), 2);
        drop(first);
        assert_eq!(s0.recv_timeout(std::time::Duration::from_secs(1)).unwrap(), BatchStatus::Delivered);
        assert!(s1.try_recv().is_err(), "acknowledged while a span of it is still held in g2");
        let second = tokio::time::timeout(std::time::Duration::from_secs(5), out.recv()).await.unwrap().unwrap();
        assert_eq!(second.span_count(), 5);
        assert!(s1.try_recv().is_err() && s2.try_recv().is_err(), "acknowledged before the sink was done");
        second.set_status(BatchStatus::Errored);
        drop(second);
        assert_eq!(s1.recv_timeout(std::time::Duration::from_secs(1)).unwrap(), BatchStatus::Errored);
        assert_eq!(s2.recv_timeout(std::time::Duration::from_secs(1)).unwrap(), BatchStatus::Errored);
        drop(tx);
        h.await.unwrap().unwrap();
    }

    /// A guid whose every batch came from a revoked Kafka partition is let go at once, undelivered
    /// (its finalizers see `Errored`), when the revocation is announced; a guid of a partition
    /// still owned is held and resolved as usual.
    #[tokio::test(start_paused = true)]
    async fn guids_of_a_revoked_partition_are_handed_over_at_once() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let (tx, mut out, h) = start(5);
        let (moved, kept) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let revocable = |flag: &Arc<AtomicBool>, b: Batch| {
            let (stx, srx) = std::sync::mpsc::channel();
            (b.with_finalizer(Finalizer::revocable(flag.clone(), move |s| { let _ = stx.send(s); })), srx)
        };
        let (b1, s1) = revocable(&moved, batch(xrid_request("g1", 10)));
        let (b2, s2) = revocable(&kept, batch(xrid_request("g2", 50)));
        tx.send(b1).await.unwrap();
        tx.send(b2).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        moved.store(true, Ordering::Release);
        Finalizer::announce_revocation();
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert_eq!(s1.try_recv(), Ok(BatchStatus::Errored), "handed over 4.5 s before its wait ended");
        assert!(s2.try_recv().is_err());
        let b = tokio::time::timeout(std::time::Duration::from_secs(6), out.recv()).await.unwrap().unwrap();
        assert_eq!(b.span_count(), 5, "only the guid still owned comes out");
        assert!(b.to_resource_spans().unwrap().iter().flat_map(|r| r.scope_spans.iter().flat_map(|s| s.spans.iter())).all(|s| s.trace_id == vec![50; 16]));
        drop(b);
        assert_eq!(s2.recv_timeout(std::time::Duration::from_secs(1)).unwrap(), BatchStatus::Delivered);
        drop(tx);
        h.await.unwrap().unwrap();
    }

    /// Guids read from Kafka partitions leave each in its own batch, carrying only its own
    /// records' acknowledgements: a processor downstream that holds them (tail sampling) attaches
    /// a batch's acknowledgements to every trace in it, and must find a revoked partition's
    /// traces all revoked to hand them over (mixed in one batch, a trace of a partition revoked
    /// while it waited in tail sampling was decided and delivered by the old owner and again by
    /// the new one), and must tell each record's own outcome. Guids of other inputs leave
    /// together.
    #[tokio::test(start_paused = true)]
    async fn guids_of_kafka_records_leave_in_batches_of_their_own() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let (tx, mut out, h) = start(2);
        let (p0, p1) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let revocable = |flag: &Arc<AtomicBool>, b: Batch| b.with_finalizer(Finalizer::revocable(flag.clone(), |_| {}));
        tx.send(revocable(&p0, batch(xrid_request("g1", 10)))).await.unwrap();
        tx.send(revocable(&p1, batch(xrid_request("g2", 50)))).await.unwrap();
        tx.send(revocable(&p0, batch(xrid_request("g3", 90)))).await.unwrap();
        tx.send(batch(xrid_request("g4", 130))).await.unwrap();
        tx.send(batch(xrid_request("g5", 170))).await.unwrap();
        let mut got = Vec::new();
        got.push(tokio::time::timeout(std::time::Duration::from_secs(3), out.recv()).await.unwrap().unwrap());
        while let Ok(Some(b)) = tokio::time::timeout(std::time::Duration::from_millis(10), out.recv()).await {
            got.push(b);
        }
        let mut shape: Vec<(usize, usize)> = got.iter().map(|b| (b.span_count(), b.finalizers().len())).collect();
        shape.sort();
        assert_eq!(shape, vec![(5, 1), (5, 1), (5, 1), (10, 0)], "g1, g2, g3 apart; g4 and g5 (no Kafka) together");
        p0.store(true, Ordering::Release);
        let revoked: Vec<bool> = got.iter().filter(|b| !b.finalizers().is_empty()).map(|b| Finalizer::all_revoked(b.finalizers())).collect();
        assert_eq!(revoked.iter().filter(|r| **r).count(), 2, "g1 and g3 are all revoked, g2 is not");
        drop(tx);
        h.await.unwrap().unwrap();
    }

    /// Released spans of one resource and scope come out in one `ResourceSpans` / `ScopeSpans`
    /// with their schema URLs, not one envelope copy per span.
    #[tokio::test(start_paused = true)]
    async fn released_spans_share_their_envelopes_again() {
        let (tx, mut out, h) = start(1);
        let rs = ResourceSpans {
            resource: Some(Resource { attributes: vec![s("service.name", "pp")], ..Default::default() }),
            scope_spans: vec![ScopeSpans { spans: xrid_request("g", 10), schema_url: "https://scope".into(), ..Default::default() }],
            schema_url: "https://resource".into(),
        };
        tx.send(Batch::from_resource_spans(vec![rs])).await.unwrap();
        let b = tokio::time::timeout(std::time::Duration::from_secs(3), out.recv()).await.unwrap().unwrap();
        let got = b.to_resource_spans().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].schema_url, "https://resource");
        assert_eq!(got[0].scope_spans.len(), 1);
        assert_eq!(got[0].scope_spans[0].schema_url, "https://scope");
        assert_eq!(got[0].scope_spans[0].spans.len(), 5);
        drop(tx);
        h.await.unwrap().unwrap();
    }

    /// A batch that does not decode is counted, reported rejected and dropped; the processor
    /// keeps running and passes the next batch.
    #[tokio::test(start_paused = true)]
    async fn a_batch_that_does_not_decode_does_not_kill_the_processor() {
        let (tx, mut out, h) = start(1);
        let mut garbage = b"\x0a\xff\xff\xff\x0f".to_vec();
        garbage.extend_from_slice(b"guid:x-request-id");
        let (bad, status) = tracked(Batch::from_encoded(garbage.into(), 1));
        tx.send(bad).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert_eq!(status.try_recv().unwrap(), BatchStatus::Rejected);
        tx.send(batch(xrid_request("g", 10))).await.unwrap();
        let b = tokio::time::timeout(std::time::Duration::from_secs(3), out.recv()).await.unwrap().unwrap();
        assert_eq!(b.span_count(), 5);
        drop(tx);
        h.await.unwrap().unwrap();
    }
}

/// The counters README promises for the two bounds: `max_bytes` resolves the oldest guids early
/// (`tracepipe_processor_guid_evicted_early_total`), and a guid with more than 4096 proxy spans is
/// passed on without inference (`tracepipe_processor_guid_too_large_total`), both without waiting.
mod bounds {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

    use super::*;

    fn counter(snap: &Snapshotter, name: &str) -> u64 {
        snap.snapshot().into_vec().into_iter().filter(|(k, ..)| k.key().name() == name).map(|(.., v)| match v {
            DebugValue::Counter(c) => c,
            other => panic!("{name} is {other:?}"),
        }).sum()
    }

    #[tokio::test(start_paused = true)]
    async fn max_bytes_resolves_the_oldest_early_and_too_large_guids_pass_counted() {
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        let (tx, input) = Input::channel(8);
        let (otx, mut out) = Input::channel(64);
        let ctx = ComponentContext { name: "g".into(), kind: ComponentKind::Processor, input: Some(input), output: Some(Output::new(vec![otx])), shutdown: CancellationToken::new(), health: Health::default() };
        let cfg = GuidInferenceConfig { wait: tracepipe_config::Duration::from_secs(60), max_bytes: tracepipe_config::ByteSize(2048), hold_untagged: false, ..Default::default() };
        let task = {
            let _local = metrics::set_default_local_recorder(&recorder);
            super::super::build(cfg, ctx).await.unwrap()
        };
        let h = tokio::spawn(task);
        // Guids of 5 proxy spans (~500 bytes held each): the fifth is over 2 KiB, so the first
        // comes out at once, resolved (one trace), long before its 60 s wait.
        for k in 0..5u8 {
            tx.send(batch(xrid_request(&format!("g{k}"), 10 + k * 10))).await.unwrap();
        }
        let first = tokio::time::timeout(std::time::Duration::from_millis(100), out.recv()).await.expect("evicted early").unwrap();
        let rs = first.to_resource_spans().unwrap();
        let spans: Vec<&Span> = rs.iter().flat_map(|r| r.scope_spans.iter().flat_map(|s| s.spans.iter())).collect();
        assert!(spans.iter().all(|s| s.trace_id == vec![10; 16]), "the evicted guid is still resolved");
        let evicted = counter(&snap, "tracepipe_processor_guid_evicted_early_total");
        assert!((1..5).contains(&evicted), "{evicted} evicted");
        // 4,097 orphan CLIENTs under one guid: passed on as they are, counted once.
        let many: Vec<Span> = (0..4097u32).map(|i| {
            let mut sp = span(1, 1, 0, 3, "n", "huge", 10, 20);
            sp.trace_id = i.to_be_bytes().repeat(4);
            sp
        }).collect();
        tx.send(batch(many.clone())).await.unwrap();
        let mut got = Vec::new();
        while got.len() < 4097 {
            let b = tokio::time::timeout(std::time::Duration::from_millis(100), out.recv()).await.expect("too large guid passed at once (over max_bytes)").unwrap();
            got.extend(b.to_resource_spans().unwrap().into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans).filter(|s| string_attr(s, "guid:x-request-id") == Some("huge")));
        }
        assert_eq!(got.iter().map(|s| s.trace_id.clone()).collect::<Vec<_>>(), many.iter().map(|s| s.trace_id.clone()).collect::<Vec<_>>(), "untouched");
        assert_eq!(counter(&snap, "tracepipe_processor_guid_too_large_total"), 1);
        drop(tx);
        h.await.unwrap().unwrap();
    }
}

/// Replayed context (pipeline::replay) with a late application span (no guid) of one of its
/// fragments: resolved together, the late span takes the rebuilt trace id, and the context keeps
/// its mark (tail sampling decides it the previous owner's way, the sinks remove it). With a late
/// span that carries the guid, the request could rebuild otherwise than it did at the previous
/// owner: the mark is cleared and everything is decided again as ordinary spans.
#[tokio::test(start_paused = true)]
async fn replayed_context_keeps_its_mark_only_when_late_spans_cannot_change_the_rebuild() {
    use tracepipe_pipeline::replay;
    let (tx, mut out, h) = running(2).await;
    let context = |spans: Vec<Span>| {
        let mut b = batch(spans);
        replay::mark(&mut b, true).unwrap();
        b
    };
    let collect = |b: Batch| -> Vec<(Span, Option<bool>)> {
        b.to_resource_spans().unwrap().into_iter().flat_map(|r| {
            let p = replay::prior(r.resource.as_ref());
            r.scope_spans.into_iter().flat_map(|s| s.spans).map(move |s| (s, p)).collect::<Vec<_>>()
        }).collect()
    };
    // g1: context of the whole request, then a late SDK span of fragment 12.
    tx.send(context(xrid_request("g1", 10))).await.unwrap();
    tx.send(batch(vec![sdk(12, 100, 15)])).await.unwrap();
    let got = collect(tokio::time::timeout(std::time::Duration::from_secs(5), out.recv()).await.expect("released").unwrap());
    assert_eq!(got.len(), 6);
    assert!(got.iter().all(|(s, _)| s.trace_id == vec![10; 16]), "one rebuilt trace");
    assert!(got.iter().all(|(s, p)| (*p == Some(true)) == (s.span_id != vec![100; 8])), "the context keeps its mark, the late span has none");
    // g2: context of two fragments, then the third fragment (spans with the guid) late.
    let frags = xrid_request("g2", 50);
    tx.send(context(frags[..3].to_vec())).await.unwrap();
    tx.send(batch(frags[3..].to_vec())).await.unwrap();
    let got = collect(tokio::time::timeout(std::time::Duration::from_secs(5), out.recv()).await.expect("released").unwrap());
    assert_eq!(got.len(), 5);
    assert!(got.iter().all(|(_, p)| p.is_none()), "unmarked: decided again whole");
    assert!(got.iter().all(|(s, _)| s.trace_id == vec![50; 16]));
    drop(tx);
    h.await.unwrap().unwrap();
}
