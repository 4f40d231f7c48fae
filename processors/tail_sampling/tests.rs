//! Tail sampling: the configuration (the OTel Collector's own example validates), every policy
//! and combinator against the Collector's documented semantics, the final-decision precedence,
//! `sample_on_first_match`, waits and caps on the decider, late spans, memory, marks,
//! acknowledgements, the running task under a paused clock, and a property test that arrival
//! order and sharding do not change a decision.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{status, ResourceSpans, ScopeSpans, Span, Status, TracesData};
use prost::Message;
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracepipe_config::{ComponentKind, Node};
use tracepipe_pipeline::telemetry::Health;
use tracepipe_pipeline::topology::{ComponentContext, Input, Output};
use tracepipe_pipeline::{Batch, Finalizer};

use super::config::{OnFull, TailSamplingConfig};
use super::policy::fnv1a;
use super::processor::{test_shard, test_shards};
use super::trace::{shard_of, trace_id};

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue { key: k.into(), value: Some(AnyValue { value: Some(v) }), key_strindex: 0 }
}
fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

/// A span of trace `t` (16 bytes of `t`), id `id`, parent `parent` (0 = root), from `start_ms` to
/// `end_ms`.
fn span(t: u64, id: u8, parent: u8, start_ms: u64, end_ms: u64) -> Span {
    let mut tid = [0u8; 16];
    tid[..8].copy_from_slice(&t.to_be_bytes());
    tid[8..].copy_from_slice(&t.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    Span {
        trace_id: tid.to_vec(),
        span_id: vec![id; 8],
        parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
        name: format!("op{id}"),
        start_time_unix_nano: 1_700_000_000_000_000_000 + start_ms * 1_000_000,
        end_time_unix_nano: 1_700_000_000_000_000_000 + end_ms * 1_000_000,
        ..Default::default()
    }
}

fn tid_of(t: u64) -> [u8; 16] {
    trace_id(&span(t, 1, 0, 0, 1).trace_id)
}

fn with_status(mut sp: Span, code: status::StatusCode) -> Span {
    sp.status = Some(Status { message: String::new(), code: code as i32 });
    sp
}

fn with_attr(mut sp: Span, a: KeyValue) -> Span {
    sp.attributes.push(a);
    sp
}

fn encode(spans: Vec<Span>, resource: Vec<KeyValue>) -> Batch {
    let n = spans.len();
    let td = TracesData {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource { attributes: resource, ..Default::default() }),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            schema_url: String::new(),
        }],
    };
    Batch::from_encoded(td.encode_to_vec().into(), n)
}

fn svc(name: &str) -> Vec<KeyValue> {
    vec![kv("service.name", s(name))]
}

fn cfg(yaml: &str) -> TailSamplingConfig {
    let node = Node::parse("t.yaml", yaml).unwrap();
    TailSamplingConfig::from_node(&node, "t.yaml").unwrap_or_else(|e| panic!("{e:?}"))
}

fn errors(yaml: &str) -> Vec<String> {
    let node = Node::parse("t.yaml", yaml).unwrap();
    TailSamplingConfig::from_node(&node, "t.yaml").err().expect("errors").iter().map(|e| format!("{}:{}: {}", e.pos.line, e.pos.column, e.message)).collect()
}

/// Spans out, decoded: (trace id, span id, attributes).
fn decoded(batches: Vec<Batch>) -> Vec<(Vec<u8>, Vec<u8>, Vec<KeyValue>, Vec<KeyValue>)> {
    let mut out = Vec::new();
    for b in batches {
        for rs in b.to_resource_spans().expect("output decodes") {
            let res = rs.resource.clone().unwrap_or_default().attributes;
            for ss in rs.scope_spans {
                for sp in ss.spans {
                    out.push((sp.trace_id, sp.span_id, sp.attributes, res.clone()));
                }
            }
        }
    }
    out
}

/// Feeds batches to one decider at `t0`, then decides everything due at `t0 + after`; returns
/// the trace ids kept (each once, in order) and the spans out.
fn run(c: TailSamplingConfig, batches: Vec<Batch>, after: Duration) -> (Vec<[u8; 16]>, usize) {
    let (mut shards, front) = test_shards(c);
    let t0 = Instant::now();
    for b in batches {
        for (i, p) in front.split(&b).into_iter().enumerate() {
            shards[i].ingest(p, t0);
        }
    }
    let mut out = Vec::new();
    for sh in shards.iter_mut() {
        sh.expire(t0 + after);
        out.extend(sh.take_ready());
    }
    let spans = decoded(out);
    let mut ids: Vec<[u8; 16]> = Vec::new();
    for (t, ..) in &spans {
        let t = trace_id(t);
        if !ids.contains(&t) {
            ids.push(t);
        }
    }
    (ids, spans.len())
}

fn kept(policies: &str, traces: Vec<Batch>) -> Vec<[u8; 16]> {
    run(cfg(&format!("decision_wait: 1s\npolicies:\n{policies}")), traces, Duration::from_secs(2)).0
}

// ------------------------------------------------------------------------------------------
// Configuration

#[test]
fn the_collectors_readme_example_validates_unchanged() {
    let c = cfg(r#"
decision_wait: 10s
num_traces: 100
expected_new_traces_per_sec: 10
decision_cache:
  sampled_cache_size: 100_000
  non_sampled_cache_size: 100_000
policies:
  [
    { name: test-policy-1, type: always_sample },
    { name: test-policy-2, type: latency, latency: {threshold_ms: 5000, upper_threshold_ms: 10000} },
    { name: test-policy-3, type: numeric_attribute, numeric_attribute: {key: key1, min_value: 50, max_value: 100} },
    { name: test-policy-4, type: probabilistic, probabilistic: {sampling_percentage: 10} },
    { name: test-policy-5, type: status_code, status_code: {status_codes: [ERROR, UNSET]} },
    { name: test-policy-6, type: string_attribute, string_attribute: {key: key2, values: [value1, value2]} },
    { name: test-policy-7, type: string_attribute, string_attribute: {key: key2, values: [value1, val*], enabled_regex_matching: true, cache_max_size: 10} },
    { name: test-policy-8, type: rate_limiting, rate_limiting: {spans_per_second: 35} },
    { name: test-policy-9, type: bytes_limiting, bytes_limiting: {bytes_per_second: 1024000, burst_capacity: 2048000} },
    { name: test-policy-10, type: span_count, span_count: {min_spans: 2, max_spans: 20} },
    { name: test-policy-11, type: trace_state, trace_state: { key: key3, values: [value1, value2] } },
    { name: test-policy-12, type: boolean_attribute, boolean_attribute: {key: key4, value: true} },
    { name: and-policy-1, type: and, and: { and_sub_policy: [
        { name: test-and-policy-1, type: numeric_attribute, numeric_attribute: { key: key1, min_value: 50, max_value: 100 } },
        { name: test-and-policy-2, type: string_attribute, string_attribute: { key: key2, values: [ value1, value2 ] } } ] } },
    { name: drop-policy-1, type: drop, drop: { drop_sub_policy: [
        { name: test-drop-policy-1, type: string_attribute, string_attribute: {key: url.path, values: [\/health, \/metrics], enabled_regex_matching: true} } ] } },
    { name: composite-policy-1, type: composite, composite: {
        max_total_spans_per_second: 1000,
        policy_order: [test-composite-policy-1, test-composite-policy-2, test-composite-policy-3],
        composite_sub_policy: [
          { name: test-composite-policy-1, type: numeric_attribute, numeric_attribute: {key: key1, min_value: 50} },
          { name: test-composite-policy-2, type: string_attribute, string_attribute: {key: key2, values: [value1, value2]} },
          { name: test-composite-policy-3, type: always_sample } ],
        rate_allocation: [ { policy: test-composite-policy-1, percent: 50 }, { policy: test-composite-policy-2, percent: 25 } ] } },
  ]
"#);
    assert_eq!(c.policies.len(), 15);
    assert_eq!(c.decision_wait, Duration::from_secs(10));
    assert_eq!(c.num_traces, 100);
    assert_eq!(c.decision_cache.non_sampled_cache_size, 100_000);
    match &c.policies[14].kind {
        super::PolicyKind::Composite { max_total_spans_per_second, subs } => {
            assert_eq!(*max_total_spans_per_second, 1000);
            let alloc: Vec<u64> = subs.iter().map(|(_, a)| *a).collect();
            // 50%, 25%, and the always_sample fills the remaining 25%.
            assert_eq!(alloc, vec![500, 250, 250]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn flat_policies_and_the_collectors_processor_settings_map_onto_ours() {
    let c = cfg(r#"
decision_wait: 5s
decision_wait_after_root_received: 1s
maximum_trace_size_bytes: 1MiB
block_on_overflow: true
drop_pending_traces_on_shutdown: true
sample_on_first_match: true
policies:
  - { name: errors, type: status_code, status_codes: [ERROR] }
  - { name: slow, type: latency, threshold_ms: 500 }
"#);
    assert_eq!(c.decision_wait_after_root, Duration::from_secs(1));
    assert_eq!(c.max_trace_bytes, 1024 * 1024);
    assert_eq!(c.on_full, OnFull::Refuse);
    assert!(c.drop_pending_traces_on_shutdown && c.sample_on_first_match);
    assert_eq!(c.policies.len(), 2);
}

#[test]
fn every_error_at_once_with_positions_and_ottl_names_an_alternative() {
    let e = errors(
        r#"
decision_wait: 0s
max_bytes: 10
policies:
  - { name: a, type: ottl_condition, ottl_condition: { span: ["x"] } }
  - { name: b, type: latency, latency: { threshold_ms: 5, bogus: 1 } }
  - { name: c, type: nope }
  - { name: d, type: string_attribute, string_attribute: { key: k, values: ["("], enabled_regex_matching: true } }
  - { name: e, type: probabilistic, sampling_percentage: 120 }
  - { name: f, type: composite, composite: { max_total_spans_per_second: 10, policy_order: [x], composite_sub_policy: [ { name: g, type: always_sample } ] } }
"#,
    );
    let joined = e.join("\n");
    for want in [
        "2:16: decision_wait must be above 0",
        "3:12: max_bytes must be at least 1MiB",
        "5:22: policy `a`: `ottl_condition` is not supported",
        "unknown field `bogus`",
        "7:22: unknown policy type `nope`",
        "invalid regex \"(\"",
        "sampling_percentage must be between 0 and 100",
        "policy_order names `x`",
        "composite_sub_policy `g` is missing from policy_order",
    ] {
        assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
    }
    assert!(errors("policies: [{name: a, type: always_sample}, {name: a, type: trace_flags}]\n").join("").contains("duplicate policy name `a`"));
    assert!(errors("policies: []\n").join("").contains("at least one policy"));
    assert!(errors("decision_wait: 1s\n").join("").contains("needs `policies`"));
    assert!(errors("block_on_overflow: false\non_full: refuse\npolicies: [{name: a, type: always_sample}]\n").join("").contains("contradicts"));
}

// ------------------------------------------------------------------------------------------
// Policies, one by one (the Collector's documented behaviour)

#[test]
fn latency_is_latest_end_minus_earliest_start_with_optional_upper_bound() {
    // Trace 1: two spans, each 100 ms, 450 ms apart end to start → 550 ms overall.
    let t1 = encode(vec![span(1, 1, 0, 0, 100), span(1, 2, 1, 450, 550)], svc("a"));
    let t2 = encode(vec![span(2, 1, 0, 0, 499)], svc("a"));
    let t3 = encode(vec![span(3, 1, 0, 0, 2000)], svc("a"));
    let p = "  - { name: slow, type: latency, threshold_ms: 500 }\n";
    assert_eq!(kept(p, vec![t1.clone(), t2.clone(), t3.clone()]), vec![tid_of(1), tid_of(3)]);
    let p = "  - { name: slow, type: latency, threshold_ms: 500, upper_threshold_ms: 1000 }\n";
    assert_eq!(kept(p, vec![t1, t2, t3]), vec![tid_of(1)]);
}

#[test]
fn status_code_matches_any_span() {
    let t1 = encode(vec![span(1, 1, 0, 0, 1), with_status(span(1, 2, 1, 0, 1), status::StatusCode::Error)], svc("a"));
    let t2 = encode(vec![with_status(span(2, 1, 0, 0, 1), status::StatusCode::Ok)], svc("a"));
    let t3 = encode(vec![span(3, 1, 0, 0, 1)], svc("a"));
    assert_eq!(kept("  - { name: e, type: status_code, status_codes: [ERROR] }\n", vec![t1.clone(), t2.clone(), t3.clone()]), vec![tid_of(1)]);
    assert_eq!(kept("  - { name: e, type: status_code, status_codes: [OK, UNSET] }\n", vec![t1, t2, t3]), vec![tid_of(1), tid_of(2), tid_of(3)]);
}

#[test]
fn string_attribute_exact_regex_resource_and_inverted() {
    let t1 = encode(vec![with_attr(span(1, 1, 0, 0, 1), kv("http.route", s("/checkout")))], svc("a"));
    let t2 = encode(vec![with_attr(span(2, 1, 0, 0, 1), kv("http.route", s("/cart")))], svc("a"));
    let t3 = encode(vec![span(3, 1, 0, 0, 1)], svc("checkout"));
    let t4 = encode(vec![with_attr(span(4, 1, 0, 0, 1), kv("http.route", any_value::Value::IntValue(7)))], svc("a"));
    let all = || vec![t1.clone(), t2.clone(), t3.clone(), t4.clone()];
    assert_eq!(kept("  - { name: r, type: string_attribute, key: http.route, values: [/checkout] }\n", all()), vec![tid_of(1)]);
    // Regex: unanchored search, as Go's MatchString.
    assert_eq!(kept("  - { name: r, type: string_attribute, key: http.route, values: [\"ca.t\"], enabled_regex_matching: true }\n", all()), vec![tid_of(2)]);
    // Resource attributes count.
    assert_eq!(kept("  - { name: r, type: string_attribute, key: service.name, values: [checkout] }\n", all()), vec![tid_of(3)]);
    // invert_match: every trace without a match is kept (an absent key counts as no match).
    assert_eq!(
        kept("  - { name: r, type: string_attribute, key: http.route, values: [/checkout], invert_match: true }\n", all()),
        vec![tid_of(2), tid_of(3), tid_of(4)]
    );
}

#[test]
fn numeric_and_boolean_attributes() {
    let t1 = encode(vec![with_attr(span(1, 1, 0, 0, 1), kv("n", any_value::Value::IntValue(75)))], svc("a"));
    let t2 = encode(vec![with_attr(span(2, 1, 0, 0, 1), kv("n", any_value::Value::DoubleValue(150.5)))], svc("a"));
    let t3 = encode(vec![with_attr(span(3, 1, 0, 0, 1), kv("b", any_value::Value::BoolValue(true)))], svc("a"));
    let t4 = encode(vec![with_attr(span(4, 1, 0, 0, 1), kv("n", s("75")))], svc("a"));
    let all = || vec![t1.clone(), t2.clone(), t3.clone(), t4.clone()];
    assert_eq!(kept("  - { name: n, type: numeric_attribute, key: n, min_value: 50, max_value: 100 }\n", all()), vec![tid_of(1)]);
    assert_eq!(kept("  - { name: n, type: numeric_attribute, key: n, min_value: 100 }\n", all()), vec![tid_of(2)]);
    assert_eq!(kept("  - { name: n, type: numeric_attribute, key: n, max_value: 100, invert_match: true }\n", all()), vec![tid_of(2), tid_of(3), tid_of(4)]);
    assert_eq!(kept("  - { name: b, type: boolean_attribute, key: b, value: true }\n", all()), vec![tid_of(3)]);
    assert_eq!(kept("  - { name: b, type: boolean_attribute, key: b, value: false }\n", all()), Vec::<[u8; 16]>::new());
}

#[test]
fn probabilistic_is_fnv1a_of_salt_and_trace_id_as_the_collector() {
    // FNV-1a 64 reference vectors.
    assert_eq!(fnv1a(b"", b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a(b"", b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a(b"foo", b"bar"), fnv1a(b"", b"foobar"));
    let traces: Vec<Batch> = (0..10_000u64).map(|t| encode(vec![span(t + 1, 1, 0, 0, 1)], svc("a"))).collect();
    let p = "  - { name: p, type: probabilistic, sampling_percentage: 10 }\n";
    let k = kept(p, traces.clone());
    assert!((900..1100).contains(&k.len()), "kept {}", k.len());
    // Exactly the ids whose hash is under the threshold, with the default salt.
    let threshold = (0.10 * u64::MAX as f64) as u64;
    let expect: Vec<[u8; 16]> = (0..10_000u64).map(|t| tid_of(t + 1)).filter(|id| fnv1a(b"default-hash-seed", id) <= threshold).collect();
    assert_eq!(k, expect);
    // Another salt picks another set.
    let k2 = kept("  - { name: p, type: probabilistic, sampling_percentage: 10, hash_salt: other }\n", traces);
    assert_ne!(k, k2);
}

#[test]
fn span_count_trace_state_and_trace_flags() {
    let t1 = encode((1..=3).map(|i| span(1, i, if i == 1 { 0 } else { 1 }, 0, 1)).collect(), svc("a"));
    let mut sp = span(2, 1, 0, 0, 1);
    sp.trace_state = "ot=th:8,key3=value2".into();
    let t2 = encode(vec![sp], svc("a"));
    let mut sp = span(3, 1, 0, 0, 1);
    sp.flags = 0x101;
    let t3 = encode(vec![sp], svc("a"));
    let all = || vec![t1.clone(), t2.clone(), t3.clone()];
    assert_eq!(kept("  - { name: c, type: span_count, min_spans: 2 }\n", all()), vec![tid_of(1)]);
    assert_eq!(kept("  - { name: c, type: span_count, min_spans: 1, max_spans: 1 }\n", all()), vec![tid_of(2), tid_of(3)]);
    assert_eq!(kept("  - { name: ts, type: trace_state, key: key3, values: [value1, value2] }\n", all()), vec![tid_of(2)]);
    assert_eq!(kept("  - { name: f, type: trace_flags }\n", all()), vec![tid_of(3)]);
}

#[test]
fn rate_limiting_counts_spans_per_second_strictly_below_the_limit() {
    // Ten 3-span traces decided in the same second with 9 spans/s: two fit (3, 6 < 9; 9 is not
    // below 9, as the Collector's `<`).
    let traces: Vec<Batch> = (1..=10u64).map(|t| encode((1..=3).map(|i| span(t, i, 0, 0, 1)).collect(), svc("a"))).collect();
    assert_eq!(kept("  - { name: r, type: rate_limiting, spans_per_second: 9 }\n", traces).len(), 2);
}

#[test]
fn bytes_limiting_is_a_token_bucket_over_encoded_size() {
    let big = |t: u64| encode(vec![with_attr(span(t, 1, 0, 0, 1), kv("pad", s(&"x".repeat(1000))))], svc("a"));
    // The bucket starts full at the burst (3000 bytes): two traces of ~1.1 KB fit, the third not.
    let k = kept("  - { name: b, type: bytes_limiting, bytes_per_second: 100, burst_capacity: 3000 }\n", (1..=5).map(big).collect());
    assert_eq!(k.len(), 2);
}

// ------------------------------------------------------------------------------------------
// Combinators and the final decision

#[test]
fn and_not_drop_and_precedence() {
    let err = |t: u64, route: &str| encode(vec![with_attr(with_status(span(t, 1, 0, 0, 1), status::StatusCode::Error), kv("url.path", s(route)))], svc("a"));
    let ok = |t: u64, route: &str| encode(vec![with_attr(span(t, 1, 0, 0, 1), kv("url.path", s(route)))], svc("a"));
    let all = || vec![err(1, "/api"), err(2, "/health"), ok(3, "/api"), ok(4, "/health")];
    let and = "  - { name: a, type: and, and: { and_sub_policy: [ { name: e, type: status_code, status_codes: [ERROR] }, { name: r, type: string_attribute, key: url.path, values: [/api] } ] } }\n";
    assert_eq!(kept(and, all()), vec![tid_of(1)]);
    let not = "  - { name: n, type: not, not: { not_sub_policy: { name: e, type: status_code, status_codes: [ERROR] } } }\n";
    assert_eq!(kept(not, all()), vec![tid_of(3), tid_of(4)]);
    // drop wins over a sampled vote, whatever the order.
    let drop = "  - { name: all, type: always_sample }\n  - { name: d, type: drop, drop: { drop_sub_policy: [ { name: h, type: string_attribute, key: url.path, values: [/health] } ] } }\n";
    assert_eq!(kept(drop, all()), vec![tid_of(1), tid_of(3)]);
    // An inverted not-sampled vote wins over sampled; an inverted sampled vote loses to not sampled.
    let inv = "  - { name: all, type: always_sample }\n  - { name: i, type: string_attribute, key: url.path, values: [/health], invert_match: true }\n";
    assert_eq!(kept(inv, all()), vec![tid_of(1), tid_of(3)]);
    let inv2 = "  - { name: e, type: status_code, status_codes: [ERROR] }\n  - { name: i, type: string_attribute, key: url.path, values: [/health], invert_match: true }\n";
    // Trace 3 (/api, ok): inverted-sampled, but `e` voted not sampled → not kept.
    assert_eq!(kept(inv2, all()), vec![tid_of(1)]);
}

#[test]
fn composite_gives_each_sub_policy_its_share_in_order() {
    // 20 error traces and 20 ok traces of 1 span; total 10/s: errors get 50% (5), the rest 5.
    let mut traces = Vec::new();
    for t in 1..=20u64 {
        traces.push(encode(vec![with_status(span(t, 1, 0, 0, 1), status::StatusCode::Error)], svc("a")));
        traces.push(encode(vec![span(100 + t, 1, 0, 0, 1)], svc("a")));
    }
    let p = "  - { name: c, type: composite, composite: { max_total_spans_per_second: 10, policy_order: [e, all], composite_sub_policy: [ { name: e, type: status_code, status_codes: [ERROR] }, { name: all, type: always_sample } ], rate_allocation: [ { policy: e, percent: 50 } ] } }\n";
    let k = kept(p, traces);
    let errs = k.iter().filter(|id| (1..=20u64).any(|t| tid_of(t) == **id)).count();
    assert_eq!((errs, k.len() - errs), (5, 5));
}

#[test]
fn sample_on_first_match_stops_and_names_the_first_policy() {
    let t = || vec![encode(vec![with_status(span(1, 1, 0, 0, 600), status::StatusCode::Error)], svc("a"))];
    let p = "  - { name: slow, type: latency, threshold_ms: 500 }\n  - { name: errors, type: status_code, status_codes: [ERROR] }\n  - { name: r, type: rate_limiting, spans_per_second: 1 }\n";
    for first in [false, true] {
        let c = cfg(&format!("decision_wait: 1s\nsample_on_first_match: {first}\npolicies:\n{p}"));
        let (mut shard, front) = test_shard(c);
        let t0 = Instant::now();
        for b in t() {
            for part in front.split(&b) {
                shard.ingest(part, t0);
            }
        }
        shard.expire(t0 + Duration::from_secs(1));
        let out = decoded(shard.take_ready());
        let attrs = &out[0].2;
        let policy = attrs.iter().find(|a| a.key == super::POLICY_ATTRIBUTE).expect("marked");
        assert_eq!(policy.value, Some(AnyValue { value: Some(s("slow")) }));
        // Without first-match the rate limiter (1 span/s, strictly below) also votes: a span of
        // 1 never fits, so the decision stays sampled by `slow` either way. The count is known (1).
        let adj = attrs.iter().find(|a| a.key == super::ADJUSTED_COUNT_ATTRIBUTE).expect("adjusted count");
        assert_eq!(adj.value, Some(AnyValue { value: Some(any_value::Value::DoubleValue(1.0)) }));
    }
}

#[test]
fn kept_by_probability_alone_carries_the_inverse_as_adjusted_count() {
    let traces: Vec<Batch> = (1..=200u64).map(|t| encode(vec![span(t, 1, 0, 0, 1)], svc("a"))).collect();
    let (mut shard, front) = test_shard(cfg("decision_wait: 1s\npolicies:\n  - { name: p, type: probabilistic, sampling_percentage: 25 }\n"));
    let t0 = Instant::now();
    for b in traces {
        for part in front.split(&b) {
            shard.ingest(part, t0);
        }
    }
    shard.expire(t0 + Duration::from_secs(1));
    let out = decoded(shard.take_ready());
    assert!(!out.is_empty());
    for (.., attrs, _) in &out {
        let adj = attrs.iter().find(|a| a.key == super::ADJUSTED_COUNT_ATTRIBUTE).expect("adjusted count");
        assert_eq!(adj.value, Some(AnyValue { value: Some(any_value::Value::DoubleValue(4.0)) }));
    }
}

// ------------------------------------------------------------------------------------------
// The decider: waits, caps, late spans, memory, output, acknowledgements

#[test]
fn a_trace_waits_for_decision_wait_then_leaves_whole_and_byte_for_byte() {
    let c = cfg("decision_wait: 10s\nmark_policy: false\npolicies:\n  - { name: all, type: always_sample }\n");
    let (mut shard, front) = test_shard(c);
    let t0 = Instant::now();
    let a = encode(vec![span(1, 1, 0, 0, 5), span(2, 1, 0, 0, 5)], svc("a"));
    let b = encode(vec![span(1, 2, 1, 1, 2)], svc("b"));
    for p in front.split(&a) {
        shard.ingest(p, t0);
    }
    for p in front.split(&b) {
        shard.ingest(p, t0 + Duration::from_secs(3));
    }
    shard.expire(t0 + Duration::from_millis(9_999));
    assert!(shard.take_ready().is_empty(), "decided before decision_wait");
    shard.expire(t0 + Duration::from_secs(10));
    let out = shard.take_ready();
    let spans = decoded(out.clone());
    assert_eq!(spans.len(), 3);
    // Trace 1 whole (both spans with their own resources), then trace 2.
    assert_eq!(trace_id(&spans[0].0), tid_of(1));
    assert_eq!(trace_id(&spans[1].0), tid_of(1));
    assert_eq!(spans[1].3, svc("b"));
    assert_eq!(trace_id(&spans[2].0), tid_of(2));
    // Unmarked output re-encodes to exactly the input spans.
    let rs = out[0].to_resource_spans().unwrap();
    let orig = a.to_resource_spans().unwrap();
    assert_eq!(rs[0].scope_spans[0].spans[0], orig[0].scope_spans[0].spans[0]);
    assert_eq!(shard.held_span_bytes(), 0, "everything charged for spans, envelopes and traces was refunded");
}

#[test]
fn decision_wait_after_root_decides_sooner_once_the_root_is_in() {
    let c = cfg("decision_wait: 10s\ndecision_wait_after_root: 1s\npolicies:\n  - { name: all, type: always_sample }\n");
    let (mut shard, front) = test_shard(c);
    let t0 = Instant::now();
    for p in front.split(&encode(vec![span(1, 2, 1, 0, 5)], svc("a"))) {
        shard.ingest(p, t0);
    }
    for p in front.split(&encode(vec![span(2, 2, 1, 0, 5)], svc("a"))) {
        shard.ingest(p, t0);
    }
    // The root of trace 1 arrives at 2 s: decided at 3 s; trace 2 waits its 10 s.
    for p in front.split(&encode(vec![span(1, 1, 0, 0, 5)], svc("a"))) {
        shard.ingest(p, t0 + Duration::from_secs(2));
    }
    shard.expire(t0 + Duration::from_millis(2_999));
    assert!(shard.take_ready().is_empty());
    shard.expire(t0 + Duration::from_secs(3));
    let spans = decoded(shard.take_ready());
    assert_eq!(spans.len(), 2);
    assert!(spans.iter().all(|s| trace_id(&s.0) == tid_of(1)));
    shard.expire(t0 + Duration::from_secs(10));
    assert_eq!(decoded(shard.take_ready()).len(), 1);
}

#[test]
fn late_spans_follow_the_first_decision_both_ways() {
    let c = cfg("decision_wait: 1s\npolicies:\n  - { name: errors, type: status_code, status_codes: [ERROR] }\n");
    let (mut shard, front) = test_shard(c);
    let t0 = Instant::now();
    let feed = |shard: &mut super::processor::Shard, b: Batch, at: Instant| {
        for p in front.split(&b) {
            shard.ingest(p, at);
        }
    };
    feed(&mut shard, encode(vec![with_status(span(1, 1, 0, 0, 1), status::StatusCode::Error), span(2, 1, 0, 0, 1)], svc("a")), t0);
    shard.expire(t0 + Duration::from_secs(1));
    assert_eq!(decoded(shard.take_ready()).len(), 1);
    // A late error span for trace 2 does not make it kept; a late ok span of trace 1 is kept.
    let later = t0 + Duration::from_secs(5);
    feed(&mut shard, encode(vec![span(1, 2, 1, 0, 1), with_status(span(2, 2, 1, 0, 1), status::StatusCode::Error)], svc("a")), later);
    let out = decoded(shard.take_ready());
    assert_eq!(out.len(), 1);
    assert_eq!((trace_id(&out[0].0), out[0].1.clone()), (tid_of(1), vec![2u8; 8]));
    let policy = out[0].2.iter().find(|a| a.key == super::POLICY_ATTRIBUTE).expect("late span marked");
    assert_eq!(policy.value, Some(AnyValue { value: Some(s("errors")) }));
    shard.expire(later + Duration::from_secs(5));
    assert!(shard.take_ready().is_empty(), "no new trace was opened for late spans");
    assert_eq!(shard.held_traces(), 0);
}

#[test]
fn caps_decide_a_trace_now_and_the_rest_follows_as_late_spans() {
    let c = cfg("decision_wait: 30s\nmax_trace_spans: 100\npolicies:\n  - { name: all, type: always_sample }\n");
    let (mut shard, front) = test_shard(c);
    let t0 = Instant::now();
    let mut total = 0;
    for chunk in 0..5u8 {
        let spans: Vec<Span> = (0..60u8).map(|i| span(1, i.wrapping_add(chunk * 60), 0, 0, 1)).collect();
        for p in front.split(&encode(spans, svc("a"))) {
            shard.ingest(p, t0);
        }
        total += decoded(shard.take_ready()).len();
    }
    // Decided at 120 spans (the second batch), the next 180 went straight through.
    assert_eq!(total, 300);
    assert_eq!(shard.held_traces(), 0);
}

#[test]
fn over_max_bytes_the_oldest_traces_are_decided_early_and_the_bound_holds() {
    let c = cfg("decision_wait: 30s\nmax_bytes: 1MiB\nmax_trace_bytes: 1MiB\npolicies:\n  - { name: all, type: always_sample }\n");
    let (mut shard, front) = test_shard(c);
    let t0 = Instant::now();
    let mut out = 0;
    for t in 1..=400u64 {
        // ~10 KB per trace: 4 MB in all through a 1 MiB bound.
        let b = encode(vec![with_attr(span(t, 1, 0, 0, 1), kv("pad", s(&"y".repeat(10_000))))], svc("a"));
        for p in front.split(&b) {
            shard.ingest(p, t0);
        }
        assert!(shard.held_bytes() <= 1024 * 1024, "held {} over the bound", shard.held_bytes());
        out += decoded(shard.take_ready()).len();
    }
    assert!(out >= 300, "the oldest were decided early ({out})");
    shard.finish(t0);
    out += decoded(shard.take_ready()).len();
    assert_eq!(out, 400, "every trace decided (always_sample): none lost");
}

#[test]
fn deciders_taking_batches_in_at_once_never_pass_max_bytes_even_for_a_moment() {
    // Two deciders on two threads share the count, as in the running processor; a third thread
    // watches it. Batches of one-span traces (chunks, envelopes, new slots and queue entries)
    // and spans of 64 long traces that come back batch after batch (their lists grow).
    let c = cfg("decision_wait: 30s\nmax_bytes: 1MiB\nmax_trace_bytes: 256KiB\nshards: 2\npolicies:\n  - { name: all, type: always_sample }\n");
    let (shards, front) = test_shards(c);
    let held = shards[0].held_counter();
    let front = Arc::new(front);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (held, done) = (held.clone(), done.clone());
        std::thread::spawn(move || {
            let mut peak = 0i64;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(held.load(Ordering::Relaxed));
            }
            peak
        })
    };
    let t0 = Instant::now();
    let workers: Vec<_> = shards
        .into_iter()
        .enumerate()
        .map(|(i, mut shard)| {
            let front = front.clone();
            std::thread::spawn(move || {
                let mut out = 0usize;
                for b in 0..300u64 {
                    let spans = (0..200u64)
                        .map(|k| {
                            let t = if k % 4 == 0 { 1 + (k / 4) % 64 } else { 1_000 + b * 200 + k };
                            with_attr(span(t, (b % 250) as u8 + 1, 0, 0, 1), kv("pad", s(&"z".repeat(40 + (k as usize % 7) * 30))))
                        })
                        .collect();
                    let part = front.split(&encode(spans, svc(&format!("svc{}", b % 3)))).into_iter().nth(i).expect("a part per shard");
                    shard.ingest(part, t0);
                    out += decoded(shard.take_ready()).len();
                }
                shard.finish(t0);
                out + decoded(shard.take_ready()).len()
            })
        })
        .collect();
    let out: usize = workers.into_iter().map(|w| w.join().expect("decider thread")).sum();
    done.store(true, Ordering::Relaxed);
    let peak = watcher.join().expect("watcher");
    assert_eq!(out, 300 * 200, "every span decided and kept (always_sample): none lost");
    assert!(peak > 512 * 1024, "the bound was reached (peak {peak})");
    assert!(peak <= 1024 * 1024, "the count passed max_bytes: {peak}");
    assert!(held.load(Ordering::Relaxed) <= 64 * 1024, "room reserved and not given back: {}", held.load(Ordering::Relaxed));
}

#[test]
fn a_trace_is_decided_within_its_deciders_share_of_max_bytes() {
    // max_trace_bytes equals max_bytes, but a trace is one decider's: with two, it goes by 1 MiB.
    let c = cfg("decision_wait: 30s\nmax_bytes: 2MiB\nmax_trace_bytes: 2MiB\nshards: 2\npolicies:\n  - { name: all, type: always_sample }\n");
    let (mut shards, front) = test_shards(c);
    let t0 = Instant::now();
    let mine = shard_of(&tid_of(5), 2);
    let mut batches_in = 0;
    while shards[mine].held_traces() == 1 || batches_in == 0 {
        let b = encode(vec![with_attr(span(5, batches_in as u8 + 1, 0, 0, 1), kv("pad", s(&"p".repeat(100_000))))], svc("a"));
        let part = front.split(&b).into_iter().nth(mine).expect("its decider's part");
        shards[mine].ingest(part, t0);
        batches_in += 1;
        assert!(batches_in <= 12, "still held after {batches_in} spans of 100 KB");
    }
    // Its spans (100 KB each, in chunks of 112 KiB) and the decider's index share the 1 MiB, less
    // the decider's decision caches (the defaults shrunk to an eighth of max_bytes: 128 KiB each).
    assert!((6..=9).contains(&batches_in), "decided within its decider's 896 KiB share, not at 2 MiB: {batches_in} spans of 100 KB");
    assert_eq!(decoded(shards[mine].take_ready()).len(), batches_in, "kept whole");
    assert!(shards[mine].held_bytes() <= 1024 * 1024);
}

#[test]
fn acknowledgements_wait_for_the_decision_and_follow_kept_spans() {
    let c = cfg("decision_wait: 1s\npolicies:\n  - { name: errors, type: status_code, status_codes: [ERROR] }\n");
    let (mut shard, front) = test_shard(c);
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    let fin = Finalizer::new(move |_| {
        d.fetch_add(1, Ordering::SeqCst);
    });
    let b = encode(vec![with_status(span(1, 1, 0, 0, 1), status::StatusCode::Error), span(2, 1, 0, 0, 1)], svc("a")).with_finalizer(fin);
    let t0 = Instant::now();
    for p in front.split(&b) {
        shard.ingest(p, t0);
    }
    drop(b);
    assert_eq!(done.load(Ordering::SeqCst), 0, "acknowledged before any decision");
    shard.expire(t0 + Duration::from_secs(1));
    let out = shard.take_ready();
    assert_eq!(done.load(Ordering::SeqCst), 0, "the kept trace's batch still carries it");
    assert_eq!(out[0].finalizers().len(), 1);
    drop(out);
    assert_eq!(done.load(Ordering::SeqCst), 1);
}

#[test]
fn a_big_kept_trace_leaves_in_batches_of_about_four_mib_each_carrying_its_acknowledgement() {
    // 30 requests of 500 spans of ~1 KB: one trace of ~15 MB in 30 segments.
    let c = cfg("decision_wait: 1s\nmax_trace_bytes: 64MiB\nmark_policy: true\npolicies:\n  - { name: all, type: always_sample }\n");
    let (mut shard, front) = test_shard(c);
    let done = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    for r in 0..30u8 {
        let d = done.clone();
        let fin = Finalizer::new(move |_| {
            d.fetch_add(1, Ordering::SeqCst);
        });
        let spans = (0..500u32).map(|i| with_attr(span(7, ((r as u32 * 500 + i) % 250) as u8, 0, 0, 1), kv("pad", s(&"x".repeat(1000))))).collect();
        let b = encode(spans, svc("big")).with_finalizer(fin);
        for p in front.split(&b) {
            shard.ingest(p, t0);
        }
    }
    shard.expire(t0 + Duration::from_secs(1));
    let out = shard.take_ready();
    assert!(out.len() >= 4, "{} batches", out.len());
    for b in &out {
        assert!(b.encoded_len() <= 4 * 1024 * 1024 + 600 * 1024, "a batch of {} bytes", b.encoded_len());
        assert_eq!(b.finalizers().len(), 30, "every batch of the trace carries all its acknowledgements");
    }
    assert_eq!(done.load(Ordering::SeqCst), 0, "acknowledged before the batches were delivered");
    let total: usize = out.iter().map(|b| b.span_count()).sum();
    assert_eq!(total, 15_000);
    let spans = decoded(out);
    assert_eq!(spans.len(), 15_000);
    assert!(spans.iter().all(|(t, _, attrs, res)| trace_id(t) == tid_of(7)
        && attrs.iter().any(|a| a.key == "tracepipe.sampling.policy")
        && res.iter().any(|a| a.key == "service.name")));
    assert_eq!(done.load(Ordering::SeqCst), 30, "released once every batch carrying them is dropped");
    assert_eq!(shard.held_span_bytes(), 0);
}

#[test]
fn shutdown_decides_on_what_it_has_or_drops_when_asked() {
    for drop_pending in [false, true] {
        let c = cfg(&format!("decision_wait: 30s\ndrop_pending_traces_on_shutdown: {drop_pending}\npolicies:\n  - {{ name: all, type: always_sample }}\n"));
        let (mut shard, front) = test_shard(c);
        for p in front.split(&encode(vec![span(1, 1, 0, 0, 1), span(2, 1, 0, 0, 1)], svc("a"))) {
            shard.ingest(p, Instant::now());
        }
        shard.finish(Instant::now());
        assert_eq!(decoded(shard.take_ready()).len(), if drop_pending { 0 } else { 2 });
        assert_eq!(shard.held_bytes(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn the_running_processor_decides_on_time_and_flushes_on_shutdown() {
    let (tx, input) = Input::channel(8);
    let (otx, mut out) = Input::channel(64);
    let ctx = ComponentContext { name: "ts".into(), kind: ComponentKind::Processor, input: Some(input), output: Some(Output::new(vec![otx])), shutdown: CancellationToken::new(), health: Health::default() };
    let c = cfg("decision_wait: 5s\nshards: 2\npolicies:\n  - { name: errors, type: status_code, status_codes: [ERROR] }\n  - { name: v, type: string_attribute, key: tier, values: [gold] }\n");
    let h = tokio::spawn(super::build(c, ctx).await.unwrap());
    let t0 = Instant::now();
    let mut spans = Vec::new();
    for t in 1..=50u64 {
        let mut sp = span(t, 1, 0, 0, 1);
        if t % 10 == 0 {
            sp = with_status(sp, status::StatusCode::Error);
        }
        spans.push(sp);
        spans.push(span(t, 2, 1, 0, 1));
    }
    tx.send(encode(spans, svc("a"))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(4_900)).await;
    assert!(out.is_empty(), "decided before decision_wait");
    let first = out.recv().await.unwrap();
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_secs(5) && waited < Duration::from_millis(5_050), "decided after {waited:?}");
    let mut got = decoded(vec![first]);
    // A trace held at shutdown is decided on what it has.
    tx.send(encode(vec![with_attr(span(99, 1, 0, 0, 1), kv("tier", s("gold")))], svc("a"))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(tx);
    h.await.unwrap().unwrap();
    while let Some(b) = out.recv().await {
        got.extend(decoded(vec![b]));
    }
    let mut ids: Vec<[u8; 16]> = got.iter().map(|s| trace_id(&s.0)).collect();
    ids.dedup();
    ids.sort();
    let mut want: Vec<[u8; 16]> = [10u64, 20, 30, 40, 50, 99].iter().map(|t| tid_of(*t)).collect();
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(got.len(), 11, "each kept trace whole");
}

/// A held trace whose Kafka partition was revoked is let go undecided: nothing is sent, its
/// record's acknowledgement reports a retryable failure (the receiver leaves it uncommitted for
/// the partition's next owner); a trace of a partition still owned is decided as usual.
#[tokio::test(start_paused = true)]
async fn traces_of_a_revoked_partition_are_handed_over_not_decided() {
    use std::sync::atomic::AtomicBool;
    let (tx, input) = Input::channel(8);
    let (otx, mut out) = Input::channel(64);
    let ctx = ComponentContext { name: "ts".into(), kind: ComponentKind::Processor, input: Some(input), output: Some(Output::new(vec![otx])), shutdown: CancellationToken::new(), health: Health::default() };
    let h = tokio::spawn(super::build(cfg("decision_wait: 2s\npolicies: [ { name: all, type: always_sample } ]\n"), ctx).await.unwrap());
    let (moved, kept) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let (stx, srx) = std::sync::mpsc::channel();
    let tracked = |flag: &Arc<AtomicBool>, t: u64| {
        let stx = stx.clone();
        encode(vec![span(t, 1, 0, 0, 1), span(t, 2, 1, 0, 1)], svc("a")).with_finalizer(Finalizer::revocable(flag.clone(), move |st| stx.send((t, st)).unwrap()))
    };
    tx.send(tracked(&moved, 1)).await.unwrap();
    tx.send(tracked(&kept, 2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    moved.store(true, std::sync::atomic::Ordering::Release);
    Finalizer::announce_revocation();
    // Let go at once, not at its decision time 1.5 s later.
    let handed = tokio::task::spawn_blocking(move || (srx.recv_timeout(std::time::Duration::from_millis(500)), srx)).await.unwrap();
    let srx = handed.1;
    assert_eq!(handed.0.unwrap(), (1, tracepipe_pipeline::BatchStatus::Errored), "handed over on the announcement");
    let b = tokio::time::timeout(Duration::from_secs(3), out.recv()).await.unwrap().unwrap();
    let got = decoded(vec![b]);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|s| trace_id(&s.0) == tid_of(2)), "only the trace still owned is decided");
    drop(tx);
    h.await.unwrap().unwrap();
    assert_eq!(srx.recv_timeout(std::time::Duration::from_secs(1)).unwrap(), (2, tracepipe_pipeline::BatchStatus::Delivered));
}

use proptest::strategy::Strategy as _;

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    /// Any arrival order of a trace's spans, over any number of batches and shards, gives the
    /// same decision and the same spans out.
    #[test]
    fn arrival_order_and_sharding_do_not_change_a_decision(order in proptest::strategy::Just((0u8..12).collect::<Vec<_>>()).prop_shuffle(), cuts in proptest::collection::vec(0usize..12, 0..4), shards in 1usize..4) {
        let make = |i: u8| {
            let t = u64::from(i % 3) + 1;
            let mut sp = span(t, i + 1, if i < 3 { 0 } else { (i % 3) + 1 }, u64::from(i) * 10, u64::from(i) * 10 + if t == 2 { 900 } else { 5 });
            if i == 8 { sp = with_status(sp, status::StatusCode::Error); }
            sp
        };
        let mut cuts = cuts.clone();
        cuts.sort();
        let mut batches = Vec::new();
        let mut last = 0;
        for c in cuts.into_iter().chain([order.len()]) {
            if c > last && c <= order.len() {
                batches.push(encode(order[last..c].iter().map(|i| make(*i)).collect(), svc("a")));
                last = c;
            }
        }
        let c = cfg(&format!("decision_wait: 1s\nshards: {shards}\npolicies:\n  - {{ name: e, type: status_code, status_codes: [ERROR] }}\n  - {{ name: slow, type: latency, threshold_ms: 500 }}\n"));
        let (ids, spans) = run(c, batches, Duration::from_secs(2));
        let mut ids = ids;
        ids.sort();
        // Trace 2 is slow (900 ms spans), trace 3 has the error span; trace 1 is neither.
        let mut want = vec![tid_of(2), tid_of(3)];
        want.sort();
        proptest::prop_assert_eq!(ids, want);
        proptest::prop_assert_eq!(spans, 8);
        // Shard assignment is by trace id only.
        proptest::prop_assert_eq!(shard_of(&tid_of(2), shards), shard_of(&tid_of(2), shards));
    }
}

#[test]
fn size_classes_are_four_to_a_power_of_two() {
    use super::trace::size_class;
    assert_eq!(size_class(1), 8);
    assert_eq!(size_class(64), 64);
    assert_eq!(size_class(65), 80);
    assert_eq!(size_class(8192), 8192);
    assert_eq!(size_class(8500), 10240);
    assert_eq!(size_class(1 << 20 | 1), (1 << 20) + (1 << 18));
}

// ------------------------------------------------------------------------------------------
// state_dir

#[test]
fn saved_state_round_trips_and_any_damage_is_refused() {
    use super::state::{Saved, SavedTrace};
    let s = Saved {
        policies: vec!["errors".into(), "baseline".into()],
        traces: vec![SavedTrace { id: [7; 16], age_ms: 1234, data: vec![1, 2, 3] }, SavedTrace { id: [8; 16], age_ms: 5, data: vec![] }],
        sampled: vec![(42, 1, 0.25, 0), (43, u16::MAX, f32::NAN, 1 << 55)],
        not_sampled: vec![9, 10, 11],
    };
    let b = s.encode();
    let d = Saved::decode(&b).unwrap();
    assert_eq!((d.policies.clone(), d.traces.clone(), d.not_sampled.clone()), (s.policies.clone(), s.traces.clone(), s.not_sampled.clone()));
    assert_eq!(d.sampled[0], (42, 1, 0.25, 0));
    assert!(d.sampled[1].2.is_nan() && d.sampled[1].3 == 1 << 55);
    for cut in 0..b.len() {
        assert!(Saved::decode(&b[..cut]).is_err(), "a file cut at {cut} bytes was accepted");
    }
    for i in 0..b.len() {
        let mut x = b.clone();
        x[i] ^= 0x40;
        assert!(Saved::decode(&x).is_err(), "a flipped byte at {i} was accepted");
    }
    // A hostile count with a valid checksum cannot make it allocate.
    let mut h = b"TPTS\x02".to_vec();
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&u64::MAX.to_le_bytes());
    let sum = fnv1a(&[], &h);
    h.extend_from_slice(&sum.to_le_bytes());
    assert_eq!(Saved::decode(&h).unwrap_err(), "record count beyond the file");
}

#[test]
fn held_traces_and_caches_survive_a_restart_with_another_shard_count() {
    let dir = std::env::temp_dir().join(format!("ts-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let yaml = |shards: usize| format!("decision_wait: 10s\nshards: {shards}\nstate_dir: {}\npolicies:\n  - {{ name: errors, type: status_code, status_codes: [ERROR] }}\n", dir.display());
    // Run 1 (2 shards): trace 1 (error) and 2 decided; traces 3 (error) and 4 held 4 s, saved.
    let (mut shards, front) = test_shards(cfg(&yaml(2)));
    let t0 = Instant::now();
    let feed = |shards: &mut Vec<super::processor::Shard>, front: &super::processor::Front, b: Batch, at: Instant| {
        for (i, p) in front.split(&b).into_iter().enumerate() {
            shards[i].ingest(p, at);
        }
    };
    feed(&mut shards, &front, encode(vec![with_status(span(1, 1, 0, 0, 1), status::StatusCode::Error), span(2, 1, 0, 0, 1)], svc("a")), t0);
    for sh in shards.iter_mut() {
        sh.expire(t0 + Duration::from_secs(10));
        assert_eq!(decoded(sh.take_ready()).iter().filter(|s| trace_id(&s.0) != tid_of(1)).count(), 0);
    }
    let t1 = t0 + Duration::from_secs(10);
    feed(&mut shards, &front, encode(vec![with_status(span(3, 1, 0, 0, 1), status::StatusCode::Error), span(4, 1, 0, 0, 1)], svc("a")), t1);
    for (i, sh) in shards.iter_mut().enumerate() {
        let saved = sh.save(t1 + Duration::from_secs(4));
        super::state::write(&dir, "sample", i, &saved).unwrap();
        sh.saved();
        assert_eq!(sh.held_traces(), 0);
        assert!(sh.take_ready().is_empty(), "saved traces are not decided");
    }
    // Run 2 (3 shards): the traces come back with 6 s left; the caches too.
    let c = cfg(&yaml(3));
    let (mut shards, front) = test_shards(c);
    let policies = super::policy::Policies::new(&cfg(&yaml(3)).policies, "sample", false);
    super::processor::restore(&dir, "sample", &front, &policies, &mut shards);
    assert_eq!(shards.iter().map(|s| s.held_traces()).sum::<usize>(), 2);
    let t2 = Instant::now();
    for sh in shards.iter_mut() {
        sh.expire(t2 + Duration::from_millis(5_900));
        assert!(sh.take_ready().is_empty(), "decided before the rest of its wait");
    }
    let mut out = Vec::new();
    for sh in shards.iter_mut() {
        sh.expire(t2 + Duration::from_secs(6));
        out.extend(decoded(sh.take_ready()));
    }
    assert_eq!(out.iter().map(|s| trace_id(&s.0)).collect::<Vec<_>>(), vec![tid_of(3)]);
    // Late spans of traces decided in run 1 follow the saved decisions.
    feed(&mut shards, &front, encode(vec![span(1, 2, 1, 0, 1), with_status(span(2, 2, 1, 0, 1), status::StatusCode::Error)], svc("a")), t2);
    let late: Vec<_> = shards.iter_mut().flat_map(|s| decoded(s.take_ready())).collect();
    assert_eq!(late.len(), 1);
    assert_eq!(trace_id(&late[0].0), tid_of(1));
    assert_eq!(shards.iter().map(|s| s.held_traces()).sum::<usize>(), 0);
    // The files were taken: a second start finds nothing.
    let (again, errs) = super::state::take_all(&dir, "sample");
    assert!(again.is_empty() && errs.is_empty());
    // A corrupt file is moved aside and reported.
    std::fs::write(super::state::path(&dir, "sample", 0), b"TPTS\x02garbage").unwrap();
    let (again, errs) = super::state::take_all(&dir, "sample");
    assert!(again.is_empty() && errs.len() == 1);
    assert!(dir.join("sample.shard-0.tailsampling.corrupt").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

// ------------------------------------------------------------------------------------------
// sql

#[test]
fn sql_predicates_plan_at_validation_and_bad_ones_are_config_errors() {
    let c = cfg("policies:\n  - { name: checkout, type: sql, where: \"attributes['http.route'] = '/checkout' AND duration_ns > 2e8\" }\n");
    assert!(matches!(c.policies[0].kind, super::PolicyKind::Sql(_)));
    let e = errors(
        "policies:\n  - { name: a, type: sql, where: \"duration_ns > > 3\" }\n  - { name: b, type: sql, where: \"no_such_column = 1\" }\n  - { name: c, type: sql, where: \"duration_ns + 1\" }\n",
    )
    .join("\n");
    assert!(e.contains("2:34: policy `a`: invalid SQL predicate (at line 1, column 15 of the predicate)"), "{e}");
    assert!(e.contains("3:34: policy `b`: invalid SQL predicate") && e.contains("no_such_column"), "{e}");
    assert!(e.contains("policy `c`: invalid SQL predicate: the predicate is Int64, not a boolean"), "{e}");
    let o = errors("policies:\n  - { name: o, type: ottl_condition, ottl_condition: { span: [x] } }\n").join("");
    assert!(o.contains("write the condition as a `sql` policy"), "{o}");
}

#[test]
fn sql_keeps_traces_with_any_matching_span_evaluated_in_bulk() {
    // 60 traces of 1 to 5 spans decided at once: trace t has a /checkout span only when t % 7
    // == 3, as its last span; durations vary so the row-to-trace mapping is exercised.
    let mut batches = Vec::new();
    let mut want = Vec::new();
    for t in 1..=60u64 {
        let n = (t % 5 + 1) as u8;
        let spans: Vec<Span> = (1..=n)
            .map(|i| {
                let sp = span(t, i, if i == 1 { 0 } else { 1 }, 0, 300);
                if t % 7 == 3 && i == n { with_attr(sp, kv("http.route", s("/checkout"))) } else { with_attr(sp, kv("http.route", s("/cart"))) }
            })
            .collect();
        if t % 7 == 3 {
            want.push(tid_of(t));
        }
        batches.push(encode(spans, svc(if t == 50 { "billing" } else { "shop" })));
    }
    let p = "  - { name: checkout, type: sql, where: \"attributes['http.route'] = '/checkout' AND duration_ns > 2e8\" }\n";
    assert_eq!(kept(p, batches.clone()), want);
    let p = "  - { name: svc, type: sql, where: \"service_name = 'billing'\" }\n";
    assert_eq!(kept(p, batches.clone()), vec![tid_of(50)]);
    // Inside a combinator, with another policy.
    let p = "  - { name: a, type: and, and_sub_policy: [ { name: q, type: sql, where: \"kind = 'UNSPECIFIED' OR true\" }, { name: c, type: span_count, min_spans: 5 } ] }\n";
    assert_eq!(kept(p, batches).len(), 12);
}

// ------------------------------------------------------------------------------------------
// Adaptive samplers

/// Feeds `first` then, one window later, `second`; returns the spans kept in the second window.
fn two_windows(policy: &str, first: Vec<Batch>, second: Vec<Batch>) -> Vec<(Vec<u8>, Vec<u8>, Vec<KeyValue>, Vec<KeyValue>)> {
    let (mut shard, front) = test_shard(cfg(&format!("decision_wait: 100ms\npolicies:\n{policy}")));
    let t0 = Instant::now();
    for b in first {
        for p in front.split(&b) {
            shard.ingest(p, t0);
        }
    }
    shard.expire(t0 + Duration::from_millis(200));
    drop(shard.take_ready());
    let t1 = t0 + Duration::from_millis(1_100);
    for b in second {
        for p in front.split(&b) {
            shard.ingest(p, t1);
        }
    }
    shard.expire(t1 + Duration::from_millis(200));
    decoded(shard.take_ready())
}

#[test]
fn dynamic_keeps_rare_keys_and_thins_common_ones_to_the_goal() {
    assert_eq!(super::policy::dynamic_rates(&[("a".to_owned(), 1000u64), ("b".to_owned(), 10)].into_iter().collect(), 10), [("a".to_owned(), 11u64), ("b".to_owned(), 1)].into_iter().collect());
    let mix = |base: u64| -> Vec<Batch> {
        (0..1010u64).map(|i| encode(vec![with_attr(span(base + i, 1, 0, 0, 1), kv("http.route", s(if i < 10 { "/rare" } else { "/common" })))], svc("shop"))).collect()
    };
    let out = two_windows("  - { name: d, type: dynamic, key_fields: [service.name, http.route], goal_sample_rate: 10, adjustment_interval: 1s }\n", mix(0), mix(10_000));
    let route = |a: &[KeyValue]| a.iter().find(|k| k.key == "http.route").and_then(|k| k.value.clone());
    let rare = out.iter().filter(|x| route(&x.2) == Some(AnyValue { value: Some(s("/rare")) })).count();
    let common: Vec<_> = out.iter().filter(|x| route(&x.2) == Some(AnyValue { value: Some(s("/common")) })).collect();
    assert_eq!(rare, 10, "every trace of the rare key kept");
    assert!((60..125).contains(&common.len()), "about 1000/11 of the common key kept, got {}", common.len());
    let adj = common[0].2.iter().find(|a| a.key == super::ADJUSTED_COUNT_ATTRIBUTE).expect("adjusted count").value.clone();
    assert_eq!(adj, Some(AnyValue { value: Some(any_value::Value::DoubleValue(11.0)) }));
}

#[test]
fn throughput_holds_the_kept_rate_near_its_target() {
    let batch = |base: u64| -> Vec<Batch> { (0..1000u64).map(|i| encode(vec![span(base + i, 1, 0, 0, 1)], svc("shop"))).collect() };
    let out = two_windows("  - { name: t, type: throughput, target_spans_per_second: 100, adjustment_interval: 1s }\n", batch(0), batch(10_000));
    // 1000 spans in the last 1 s window against 100/s: 1 in 10.
    assert!((65..140).contains(&out.len()), "kept {}", out.len());
    let adj = out[0].2.iter().find(|a| a.key == super::ADJUSTED_COUNT_ATTRIBUTE).expect("adjusted count").value.clone();
    assert_eq!(adj, Some(AnyValue { value: Some(any_value::Value::DoubleValue(10.0)) }));
}

// ------------------------------------------------------------------------------------------
// Consistent probability sampling (tracestate ot=th:/rv:)

#[test]
fn tracestate_thresholds_parse_encode_and_rewrite_as_the_spec_says() {
    use super::tracestate::*;
    assert_eq!(threshold("ot=th:c"), Some(0xc0_0000_0000_0000));
    assert_eq!(threshold("ot=th:0"), Some(0));
    assert_eq!(threshold("vendor=x, ot=rv:abcdefabcdefab;th:08"), Some(0x08 << 48));
    for bad in ["ot=th:g", "ot=th:", "ot=th:C", "ot=th:123456789abcdef", "th:8", "other=th:8"] {
        assert_eq!(threshold(bad), None, "{bad}");
    }
    assert_eq!(randomness("ot=th:8;rv:abcdefabcdefab"), Some(0xab_cdef_abcd_efab));
    assert_eq!(randomness("ot=rv:abc"), None);
    assert_eq!(encode_threshold(threshold_for(0.25)), "c");
    assert_eq!(encode_threshold(threshold_for(0.5)), "8");
    assert_eq!(encode_threshold(0), "0");
    assert!((probability_of(threshold_for(0.1)) - 0.1).abs() < 1e-15, "56-bit thresholds round p by under 2^-56");
    assert_eq!(with_threshold("vendor=x,ot=th:8;rv:abcdefabcdefab", Some(0xc0_0000_0000_0000)), "ot=th:c;rv:abcdefabcdefab,vendor=x");
    assert_eq!(with_threshold("ot=th:8", None), "");
    assert_eq!(with_threshold("", Some(1 << 55)), "ot=th:8");
    let mut id = [0u8; 16];
    id[9..].copy_from_slice(&[0xff, 1, 2, 3, 4, 5, 6]);
    assert_eq!(id_randomness(&id), 0xff_0102_0304_0506);
}

/// Kept spans: (trace id, tracestate, adjusted count).
fn kept_marks(policies: &str, traces: Vec<Batch>) -> Vec<([u8; 16], String, Option<f64>)> {
    let (mut shard, front) = test_shard(cfg(&format!("decision_wait: 1s\npolicies:\n{policies}")));
    let t0 = Instant::now();
    for b in traces {
        for p in front.split(&b) {
            shard.ingest(p, t0);
        }
    }
    shard.expire(t0 + Duration::from_secs(1));
    let mut out = Vec::new();
    for b in shard.take_ready() {
        for rs in b.to_resource_spans().unwrap() {
            for sp in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                let adj = sp.attributes.iter().find(|a| a.key == super::ADJUSTED_COUNT_ATTRIBUTE).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    any_value::Value::DoubleValue(d) => Some(*d),
                    _ => None,
                });
                out.push((trace_id(&sp.trace_id), sp.trace_state, adj));
            }
        }
    }
    out
}

fn with_ts(mut sp: Span, ts: &str) -> Span {
    sp.trace_state = ts.into();
    sp
}

#[test]
fn equalizing_keeps_by_the_traces_randomness_and_writes_the_threshold() {
    use super::tracestate::{id_randomness, threshold_for};
    let traces: Vec<Batch> = (1..=400u64).map(|t| encode(vec![span(t, 1, 0, 0, 1)], svc("a"))).collect();
    let out = kept_marks("  - { name: p, type: probabilistic, sampling_percentage: 25, mode: equalizing }\n", traces);
    let want: Vec<[u8; 16]> = (1..=400u64).map(tid_of).filter(|id| id_randomness(id) >= threshold_for(0.25)).collect();
    assert_eq!(out.iter().map(|o| o.0).collect::<Vec<_>>(), want);
    assert!((60..140).contains(&want.len()));
    assert!(out.iter().all(|o| o.1 == "ot=th:c" && o.2 == Some(4.0)), "{:?}", &out[..2]);
    // An explicit rv decides instead of the id: rv below the threshold is not kept.
    let rv_low = with_ts(span(9999, 1, 0, 0, 1), "ot=rv:00000000000001");
    let rv_high = with_ts(span(9998, 1, 0, 0, 1), "ot=rv:ffffffffffffff");
    let out = kept_marks("  - { name: p, type: probabilistic, sampling_percentage: 25, mode: equalizing }\n", vec![encode(vec![rv_low, rv_high], svc("a"))]);
    assert_eq!(out.iter().map(|o| (o.0, o.1.as_str())).collect::<Vec<_>>(), vec![(tid_of(9998), "ot=th:c;rv:ffffffffffffff")]);
}

#[test]
fn upstream_thresholds_are_honoured_in_counts_and_tracestate() {
    // Head-sampled at 50% upstream (th:8); kept here by a predicate: counts 2, tracestate as is.
    let errs = |t: u64, ts: &str| encode(vec![with_ts(with_status(span(t, 1, 0, 0, 1), status::StatusCode::Error), ts)], svc("a"));
    let out = kept_marks("  - { name: e, type: status_code, status_codes: [ERROR] }\n", vec![errs(1, "ot=th:8,vendor=x")]);
    assert_eq!(out, vec![(tid_of(1), "ot=th:8,vendor=x".to_owned(), Some(2.0))]);
    // Upstream 1/8 (th:e) and equalizing 25% here: the upstream threshold is the higher one and
    // stands (the spans that reached us all have R >= e).
    let mut id_hi = None;
    for t in 1..2000u64 {
        if super::tracestate::id_randomness(&tid_of(t)) >= 0xe0_0000_0000_0000 {
            id_hi = Some(t);
            break;
        }
    }
    let t = id_hi.expect("an id with high randomness");
    let out = kept_marks("  - { name: p, type: probabilistic, sampling_percentage: 25, mode: equalizing }\n", vec![encode(vec![with_ts(span(t, 1, 0, 0, 1), "ot=th:e")], svc("a"))]);
    assert_eq!(out, vec![(tid_of(t), "ot=th:e".to_owned(), Some(8.0))]);
    // Upstream 50% and the Collector's hash-seed 10% here: independent, so the counts multiply
    // (20) and the upstream threshold no longer holds: th is removed.
    let traces: Vec<Batch> = (1..=300u64).map(|t| encode(vec![with_ts(span(t, 1, 0, 0, 1), "ot=th:8;rv:00000000000000,k=v")], svc("a"))).collect();
    let out = kept_marks("  - { name: p, type: probabilistic, sampling_percentage: 10 }\n", traces);
    assert!(!out.is_empty());
    assert!(out.iter().all(|o| o.1 == "ot=rv:00000000000000,k=v" && o.2 == Some(20.0)), "{:?}", &out[..1]);
    // A mode that does not exist, and a salt with equalizing, are configuration errors.
    let e = errors("policies: [{ name: p, type: probabilistic, sampling_percentage: 5, mode: proportional }, { name: q, type: probabilistic, sampling_percentage: 5, mode: equalizing, hash_salt: s }]\n").join("\n");
    assert!(e.contains("unknown mode `proportional`") && e.contains("hash_salt has no effect with mode: equalizing"), "{e}");
}

#[cfg(feature = "archive")]
#[test]
fn sql_projection_gives_the_same_rows_as_the_full_conversion() {
    use super::sql::SqlPredicate;
    let mut spans = Vec::new();
    for i in 0..60u64 {
        let mut sp = span(i + 1, 1, if i % 3 == 0 { 0 } else { 7 }, i * 10, i * 10 + i * 7);
        sp.kind = (i % 6) as i32;
        sp.flags = (i % 2) as u32;
        if i % 4 == 0 {
            sp = with_status(sp, status::StatusCode::Error);
        }
        sp.trace_state = if i % 5 == 0 { "ot=th:8".into() } else { String::new() };
        sp = with_attr(sp, kv("http.route", s(if i % 7 == 3 { "/checkout" } else { "/cart" })));
        sp = with_attr(sp, kv("http.status_code", any_value::Value::IntValue(if i % 9 == 0 { 503 } else { 200 })));
        sp = with_attr(sp, kv("ratio", any_value::Value::DoubleValue(i as f64 / 10.0)));
        sp = with_attr(sp, kv("cached", any_value::Value::BoolValue(i % 2 == 0)));
        spans.push(sp);
    }
    let mut buf = Vec::new();
    let n = spans.len();
    let (a, b) = spans.split_at(30);
    for (part, svc_name) in [(a, "shop"), (b, "billing")] {
        let td = TracesData {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource { attributes: vec![kv("service.name", s(svc_name)), kv("k8s.pod.count", any_value::Value::IntValue(3))], ..Default::default() }),
                scope_spans: vec![ScopeSpans { spans: part.to_vec(), ..Default::default() }],
                schema_url: String::new(),
            }],
        };
        buf.extend(td.encode_to_vec());
    }
    let full = tracepipe_pipeline::archive::encoded::encoded_to_record_batch([buf.as_slice()], n).unwrap();
    for q in [
        "attributes['http.route'] = '/checkout' AND duration_ns > 2e8",
        "attributes_int['http.status_code'] >= 500 OR status_code = 'ERROR'",
        "attributes_double['ratio'] > 2.5 AND attributes_bool['cached']",
        "service_name = 'billing' AND kind = 'SERVER'",
        "resource_attributes_int['k8s.pod.count'] = 3 AND name LIKE 'op%' AND flags = 1",
        "trace_state LIKE 'ot=%' AND start_time > TIMESTAMP '2023-11-14T22:13:20Z'",
        "resource_attributes['service.name'] = 'shop' AND end_time > start_time",
    ] {
        let p = SqlPredicate::plan(q).unwrap();
        assert!(p.is_projected(), "{q} reads only columns the projection builds");
        let got = p.evaluate_projected(&buf, n).unwrap().unwrap();
        let want = p.evaluate(&full).unwrap();
        assert_eq!(got, want, "{q}");
        assert!(want.true_count() > 0 && want.true_count() < n, "{q} selects a strict subset ({})", want.true_count());
    }
    // Columns the projection does not build fall back to the full conversion.
    let p = SqlPredicate::plan("scope_name = 'x' OR cardinality(events) > 0").unwrap();
    assert!(!p.is_projected() && p.evaluate_projected(&buf, n).is_none());
}

#[test]
fn a_batch_that_does_not_decode_is_dropped_counted_and_reported_rejected() {
    let (mut shard, front) = test_shard(cfg("policies: [{ name: all, type: always_sample }]\n"));
    let status = Arc::new(std::sync::Mutex::new(None));
    let st = status.clone();
    let fin = Finalizer::new(move |s| *st.lock().unwrap() = Some(s));
    // A ResourceSpans field whose length runs past the end, then a hostile varint.
    for bytes in [vec![0x0a, 0xff, 0xff, 0x03, 0x12], vec![0x0a, 0x02, 0x12, 0xff], vec![0xff; 11]] {
        let b = Batch::from_encoded(bytes.into(), 1).with_finalizer(fin.clone());
        assert!(front.split(&b).is_empty(), "nothing dealt out of a batch that does not decode");
    }
    drop(fin);
    assert_eq!(*status.lock().unwrap(), Some(tracepipe_pipeline::BatchStatus::Rejected));
    shard.expire(Instant::now() + Duration::from_secs(60));
    assert!(shard.take_ready().is_empty());
    assert_eq!(shard.held_span_bytes(), 0, "envelopes of a half-walked batch are refunded");
}

#[test]
fn traces_of_one_batch_share_its_chunk_which_is_refunded_with_the_last_of_them() {
    let c = cfg("decision_wait: 30s\npolicies:\n  - { name: all, type: always_sample }\n");
    let (mut shard, front) = test_shard(c);
    let now = Instant::now();
    for p in front.split(&encode(vec![span(1, 1, 0, 0, 1), span(2, 1, 0, 0, 1), span(3, 1, 0, 0, 1)], svc("a"))) {
        shard.ingest(p, now);
    }
    let all = shard.held_span_bytes();
    assert!(all > 0);
    // Two of three decided: the chunk (and the envelope) stay charged, the third still holds them.
    shard.decide_all_but(Some(&tid_of(3)), now);
    assert_eq!(shard.held_traces(), 1);
    assert_eq!(shard.held_span_bytes(), all, "a chunk is charged whole while any trace in it is held");
    assert_eq!(decoded(shard.take_ready()).len(), 2);
    shard.finish(now);
    assert_eq!(decoded(shard.take_ready()).len(), 1);
    assert_eq!(shard.held_bytes(), 0, "the chunk, the envelope and the index are refunded");
}

fn table_trace(seq: u64) -> super::trace::Trace {
    super::trace::Trace {
        segments: Default::default(),
        summary: Default::default(),
        bytes: 0,
        span_bytes: 0,
        first: Instant::now(),
        seq,
        deadline: Instant::now(),
        finalizers: Default::default(),
        last_batch: 0,
    }
}

/// Under steady churn (one trace decided for each one taken in, as a full budget runs) the
/// table's memory does not move: its index has no tombstones to use up its room (with hashbrown
/// it grew every few seconds, and the decider decided traces early to make room for that).
#[test]
fn the_trace_table_does_not_grow_under_churn() {
    use super::table::TraceTable;
    let mut table = TraceTable::default();
    let held = 50_000u64;
    for i in 0..held {
        table.insert(tid_of(i), table_trace(i));
    }
    let bytes = table.bytes();
    assert_eq!(table.bytes_with(0), bytes);
    for i in held..20 * held {
        assert!(table.remove(&tid_of(i - held)).is_some());
        assert!(table.peak_with(1) == bytes, "a trace in for a trace out needs no more room");
        table.insert(tid_of(i), table_trace(i));
        assert_eq!(table.bytes(), bytes, "after {} churns", i - held);
    }
    assert_eq!(table.len(), held as usize);
    for i in 19 * held..20 * held {
        assert_eq!(table.get(&tid_of(i)).map(|t| t.seq), Some(i));
    }
    // Growth is foretold: the peak counts the old index beside the new one.
    let full = table.bytes();
    let mut n = 0u64;
    while table.bytes() == full {
        let (after, peak) = (table.bytes_with(1), table.peak_with(1));
        table.insert(tid_of(100 * held + n), table_trace(n));
        n += 1;
        if table.bytes() != full {
            assert!(table.bytes() <= after && table.bytes() + 8192 > after, "bytes_with bounds the growth: {} of {after}", table.bytes());
            assert!(peak > after, "the old allocation is counted while the new one fills");
        }
    }
}

proptest::proptest! {
    /// The trace table's index against a map, over any sequence of inserts, replacements and
    /// removals of ids from a small space (long probe runs; removals shift entries back).
    #[test]
    fn the_trace_table_index_matches_a_map(ops in proptest::collection::vec((0u8..3, 0u64..300), 0..3000)) {
        use super::table::TraceTable;
        let mut table = TraceTable::default();
        let mut model = std::collections::HashMap::new();
        for (op, k) in ops {
            // Ids that differ in one byte only, as sequential ids would.
            let id = { let mut b = [0u8; 16]; b[15] = (k % 256) as u8; b[14] = (k / 256) as u8; b };
            match op {
                0 | 1 => {
                    let seq = model.len() as u64 * 1000 + k;
                    table.insert(id, table_trace(seq));
                    model.insert(id, seq);
                }
                _ => {
                    proptest::prop_assert_eq!(table.remove(&id).map(|t| t.seq), model.remove(&id));
                }
            }
            proptest::prop_assert_eq!(table.len(), model.len());
        }
        for k in 0u64..300 {
            let id = { let mut b = [0u8; 16]; b[15] = (k % 256) as u8; b[14] = (k / 256) as u8; b };
            proptest::prop_assert_eq!(table.get(&id).map(|t| t.seq), model.get(&id).copied());
        }
        proptest::prop_assert_eq!(table.iter().count(), model.len());
    }
}

#[test]
fn the_trace_table_reuses_slots_and_shrinks_after_a_burst() {
    use super::table::{TraceTable, PAGE};
    let t = table_trace;
    let mut table = TraceTable::default();
    assert_eq!(table.bytes(), 0);
    let n = 10 * PAGE;
    for i in 0..n as u64 {
        table.insert(tid_of(i), t(i));
    }
    assert_eq!(table.len(), n);
    let full = table.bytes();
    assert!(full >= n * std::mem::size_of::<super::trace::Trace>(), "pages are charged: {full}");
    assert_eq!(table.get(&tid_of(77)).map(|x| x.seq), Some(77));
    table.get_mut(&tid_of(77)).expect("held").seq = 1077;
    assert_eq!(table.get(&tid_of(77)).map(|x| x.seq), Some(1077));
    // Freed slots are reused: the table does not grow for a trace that replaces another.
    assert_eq!(table.remove(&tid_of(5)).map(|x| x.seq), Some(5));
    assert!(table.get(&tid_of(5)).is_none() && table.remove(&tid_of(5)).is_none());
    table.insert(tid_of(n as u64), t(n as u64));
    assert_eq!(table.bytes(), full);
    // Down to a tenth: shrink moves the rest into as few pages as they need, and keeps them.
    for i in 0..n as u64 {
        if i % 10 != 0 {
            table.remove(&tid_of(i));
        }
    }
    table.shrink();
    assert!(table.bytes() * 4 < full, "{} of {full}", table.bytes());
    for i in (0..n as u64).step_by(10) {
        assert_eq!(table.get(&tid_of(i)).map(|x| x.seq), Some(if i == 77 { 1077 } else { i }), "trace {i}");
    }
    assert_eq!(table.iter().count(), table.len());
    let drained = table.drain();
    assert_eq!(drained.len(), n / 10 + 1);
    assert!(table.is_empty() && table.bytes() < full / 100);
}

/// The decision caches are fixed tables: an id is remembered until WAYS newer ones land in its
/// bucket (the latest half of the capacity nearly always, the oldest of twice the capacity
/// never), a sampled entry gives back its decision, iteration gives every entry once, and the
/// memory is what `cache_bytes` says (10 / 8 bytes an id), whatever was inserted.
#[test]
fn decision_caches_are_fixed_tables_that_forget_the_oldest() {
    use super::cache::{cache_bytes, Kept, NotSampledCache, SampledCache, WAYS};
    let fp = |i: u64| super::trace::fingerprint(&trace_id(&tid_of(i)));
    let mut ns = NotSampledCache::new(10_000);
    for i in 0..10_000u64 {
        ns.insert(fp(i));
    }
    // The latest 5,000 (half the capacity): ≥ 90% remembered (Poisson(4) ≥ 8 evicts ~5%).
    let recent = (5_000..10_000u64).filter(|&i| ns.contains(fp(i))).count();
    assert!(recent >= 4_500, "{recent} of the latest 5,000");
    // Filled once, buckets hold what hashing gave them (E[min(Poisson(8), 8)] / 8 ≈ 86%).
    assert!(ns.len() <= 10_000 && ns.len() > 8_000, "{}", ns.len());
    for i in 10_000..40_000u64 {
        ns.insert(fp(i));
    }
    assert_eq!((0..5_000u64).filter(|&i| ns.contains(fp(i))).count(), 0, "the oldest are gone after 3x the capacity");
    assert!((0..100u64).all(|i| !ns.contains(fp(1_000_000 + i))), "never inserted: not found");
    assert_eq!(ns.iter().count(), ns.len());
    // Sampled: each id's own decision comes back; re-inserting keeps one entry.
    let mut sc = SampledCache::new(1_000);
    let k = |p: u16| Kept { policy: p, probability: if p == 3 { f32::NAN } else { 0.25 }, threshold: u64::from(p) * 7 };
    for i in 0..800u64 {
        sc.insert(fp(i), k((i % 5) as u16));
    }
    sc.insert(fp(0), k(0));
    let back: Vec<_> = (700..800u64).filter_map(|i| sc.get(fp(i)).map(|got| (i, got))).collect();
    assert!(back.len() >= 90, "{}", back.len());
    for (i, got) in back {
        let want = k((i % 5) as u16);
        assert_eq!((got.policy, got.threshold, got.probability.to_bits()), (want.policy, want.threshold, want.probability.to_bits()));
    }
    assert_eq!(sc.iter().count(), sc.len());
    assert!(sc.len() <= 800);
    // Memory: fixed by the capacity (buckets of WAYS, rounded up), 10 B / 8 B per slot + a cursor.
    assert_eq!(cache_bytes(1_000_000, false), (1_000_000 / WAYS * (WAYS * 8 + 1)) as u64);
    assert_eq!(cache_bytes(100_000, true), (100_000 / WAYS * (WAYS * 10 + 1)) as u64);
    assert_eq!(cache_bytes(0, true), 0);
    let off = SampledCache::new(0);
    assert!(off.get(fp(1)).is_none());
}

/// The caches are reserved from max_bytes: defaults shrink to an eighth of a small max_bytes;
/// sizes set by hand that take more than half of it are an error at their key.
#[test]
fn decision_caches_are_reserved_from_max_bytes() {
    use super::cache::cache_bytes;
    let reserved = |c: &TailSamplingConfig| cache_bytes(c.decision_cache.sampled_cache_size, true) + cache_bytes(c.decision_cache.non_sampled_cache_size, false);
    let big = cfg("policies:\n  - { name: all, type: always_sample }\n");
    assert_eq!((big.decision_cache.sampled_cache_size, big.decision_cache.non_sampled_cache_size), (100_000, 1_000_000));
    assert!(reserved(&big) < 10_000_000);
    let small = cfg("max_bytes: 16MiB\nmax_trace_bytes: 1MiB\npolicies:\n  - { name: all, type: always_sample }\n");
    assert!(reserved(&small) <= (2 << 20) + 64, "{}", reserved(&small));
    assert!(small.decision_cache.non_sampled_cache_size > 100_000, "shrunk in proportion, not off");
    let e = errors("max_bytes: 16MiB\nmax_trace_bytes: 1MiB\ndecision_cache: { non_sampled_cache_size: 2000000 }\npolicies:\n  - { name: all, type: always_sample }\n");
    assert!(e.iter().any(|e| e.starts_with("3:") && e.contains("the decision caches take") && e.contains("more than half")), "{e:?}");
}

/// Replayed context (pipeline::replay): a previous owner's finished spans sent again with a late
/// span of their trace decide the trace the previous owner's way, whatever the policies say — a
/// trace it kept stays kept (the late span is passed on, with the context for the sinks to
/// remove), one it dropped stays dropped — and a trace a policy does not keep has its records'
/// acknowledgements told so (`decided_out`), which is what a Kafka receiver writes in its
/// progress for the next owner.
#[test]
fn replayed_context_decides_a_trace_the_way_its_previous_owner_did() {
    use tracepipe_pipeline::replay;
    let context = |t: u64, kept: bool| {
        let mut b = encode(vec![span(t, 1, 0, 0, 1)], svc("a"));
        replay::mark(&mut b, kept).unwrap();
        b
    };
    let late = |t: u64| encode(vec![with_status(span(t, 2, 1, 0, 1), status::StatusCode::Error)], svc("a"));
    // Policies keep only errors: trace 1 (context kept, late span without error) is kept anyway;
    // trace 2 (context dropped, late span with an error) is dropped anyway; trace 3 (no context)
    // follows the policies.
    let quiet = |t: u64| encode(vec![span(t, 2, 1, 0, 1)], svc("a"));
    let (ids, spans) = run(
        cfg("decision_wait: 1s\npolicies: [ { name: errors, type: status_code, status_codes: [ERROR] } ]\n"),
        vec![context(1, true), quiet(1), context(2, false), late(2), late(3), quiet(4)],
        Duration::from_secs(2),
    );
    let mut ids = ids;
    ids.sort();
    let mut want = vec![tid_of(1), tid_of(3)];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(spans, 3, "trace 1 with its context (the sinks remove it) and trace 3");
    // The outcome a record's acknowledgement reports.
    let (stx, srx) = std::sync::mpsc::channel();
    let tracked = |b: Batch, t: u64| {
        let stx = stx.clone();
        b.with_finalizer(Finalizer::revocable_with_outcome(Arc::new(std::sync::atomic::AtomicBool::new(false)), move |_, o| stx.send((t, o.kept())).unwrap()))
    };
    let (mut shards, front) = test_shards(cfg("decision_wait: 1s\npolicies: [ { name: errors, type: status_code, status_codes: [ERROR] } ]\n"));
    let t0 = Instant::now();
    for b in [tracked(quiet(5), 5), tracked(late(6), 6)] {
        for (i, p) in front.split(&b).into_iter().enumerate() {
            shards[i].ingest(p, t0);
        }
    }
    let mut out = Vec::new();
    for sh in shards.iter_mut() {
        sh.expire(t0 + Duration::from_secs(2));
        out.extend(sh.take_ready());
    }
    // The kept trace's acknowledgement reaches a sink (the topology marks it there).
    out.iter().flat_map(|b| b.finalizers()).for_each(|f| f.mark_reached_sink());
    drop(out);
    drop(shards);
    let mut got: Vec<_> = srx.try_iter().collect();
    got.sort();
    assert_eq!(got, vec![(5, Some(false)), (6, Some(true))]);
}
