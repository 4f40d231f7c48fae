//! Configuration of the tail-sampling processor.
//!
//! Settings and policies take the OpenTelemetry Collector's names, so a `tail_sampling` block
//! written for the Collector validates here unchanged: its policy settings may sit under a key
//! named after the type (`latency: {threshold_ms: 500}`, as the Collector writes them) or
//! directly in the policy (`{name: slow, type: latency, threshold_ms: 500}`). The Collector's
//! processor settings map onto ours: `decision_wait_after_root_received` is
//! `decision_wait_after_root`, `maximum_trace_size_bytes` is `max_trace_bytes`,
//! `block_on_overflow: true` is `on_full: refuse`, `num_traces` caps the traces held in addition
//! to `max_bytes`, `expected_new_traces_per_sec` sizes the index up front.

use std::collections::HashSet;

use serde::Deserialize;
use tracepipe_config::{ByteSize, ConfigError, Duration, Node, Pos};

/// What to do when the held spans reach `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Decide the oldest traces now, on what they have (counted, reason `memory`).
    #[default]
    DecideOldest,
    /// Stop taking input until decisions free room: the receivers upstream answer with
    /// retryable errors.
    Refuse,
}

/// `decision_cache` settings: trace ids remembered after their decision, so late spans follow it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionCacheConfig {
    /// Sampled trace ids remembered, with the deciding policy (default 100000; 0 = off).
    pub sampled_cache_size: usize,
    /// Not-sampled trace ids remembered, as 8-byte fingerprints (default 1000000; 0 = off).
    pub non_sampled_cache_size: usize,
}

impl Default for DecisionCacheConfig {
    fn default() -> Self {
        DecisionCacheConfig { sampled_cache_size: 100_000, non_sampled_cache_size: 1_000_000 }
    }
}

/// The processor's settings, as read (policies apart).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    decision_wait: Duration,
    #[serde(alias = "decision_wait_after_root_received")]
    decision_wait_after_root: Duration,
    max_bytes: ByteSize,
    max_trace_spans: u64,
    #[serde(alias = "maximum_trace_size_bytes")]
    max_trace_bytes: ByteSize,
    num_traces: u64,
    expected_new_traces_per_sec: u64,
    on_full: Option<OnFull>,
    block_on_overflow: Option<bool>,
    shards: usize,
    decision_cache: DecisionCacheConfig,
    mark_policy: bool,
    sample_on_first_match: bool,
    drop_pending_traces_on_shutdown: bool,
    state_dir: Option<String>,
    /// Read apart.
    policies: serde::de::IgnoredAny,
}

impl Settings {
    fn into_config(self, on_full: OnFull, policies: Vec<PolicyConfig>) -> TailSamplingConfig {
        TailSamplingConfig {
            decision_wait: self.decision_wait.get(),
            decision_wait_after_root: self.decision_wait_after_root.get(),
            max_bytes: self.max_bytes.get(),
            max_trace_spans: self.max_trace_spans,
            max_trace_bytes: self.max_trace_bytes.get(),
            num_traces: self.num_traces,
            expected_new_traces_per_sec: self.expected_new_traces_per_sec,
            on_full,
            shards: self.shards,
            decision_cache: self.decision_cache,
            mark_policy: self.mark_policy,
            sample_on_first_match: self.sample_on_first_match,
            drop_pending_traces_on_shutdown: self.drop_pending_traces_on_shutdown,
            state_dir: self.state_dir.map(std::path::PathBuf::from),
            policies,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            decision_wait: Duration::from_secs(30),
            decision_wait_after_root: Duration::from_secs(0),
            max_bytes: ByteSize::mib(512),
            max_trace_spans: 20_000,
            max_trace_bytes: ByteSize::mib(16),
            num_traces: 0,
            expected_new_traces_per_sec: 0,
            on_full: None,
            block_on_overflow: None,
            shards: 0,
            decision_cache: DecisionCacheConfig::default(),
            mark_policy: true,
            sample_on_first_match: false,
            drop_pending_traces_on_shutdown: false,
            state_dir: None,
            policies: serde::de::IgnoredAny,
        }
    }
}

/// `type: tail_sampling` settings, validated.
#[derive(Debug, Clone)]
pub struct TailSamplingConfig {
    /// Longest a trace is held after its first span (default 30s, as the OTel Collector).
    pub decision_wait: std::time::Duration,
    /// Once a root span (no parent) is in, decide this much later if that is sooner; 0 = off
    /// (the default, as the Collector: SDKs export children up to their batch delay after the root).
    pub decision_wait_after_root: std::time::Duration,
    /// All held spans, counted in encoded bytes with their envelopes and index (default 512MiB).
    pub max_bytes: u64,
    /// A trace with this many spans is decided now (default 20000).
    pub max_trace_spans: u64,
    /// A trace with this many bytes is decided now (default 16MiB).
    pub max_trace_bytes: u64,
    /// Cap on traces held, in addition to `max_bytes` (the Collector's `num_traces`; 0 = none).
    pub num_traces: u64,
    /// Expected new traces per second: sizes the index up front.
    pub expected_new_traces_per_sec: u64,
    /// What happens at `max_bytes`.
    pub on_full: OnFull,
    /// Independent deciders by trace id; 0 = one per core.
    pub shards: usize,
    /// Decision caches for late spans.
    pub decision_cache: DecisionCacheConfig,
    /// Kept spans carry `tracepipe.sampling.policy` and, when known, `sampling.adjusted_count`.
    pub mark_policy: bool,
    /// Stop evaluating at the first policy that samples.
    pub sample_on_first_match: bool,
    /// On shutdown, drop held traces (counted) instead of deciding them on what they have.
    pub drop_pending_traces_on_shutdown: bool,
    /// Where held traces and decision caches are written at shutdown and read at the next
    /// start (instead of deciding held traces on what they have).
    pub state_dir: Option<std::path::PathBuf>,
    /// The policies, in order.
    pub policies: Vec<PolicyConfig>,
}

impl Default for TailSamplingConfig {
    fn default() -> Self {
        Settings::default().into_config(OnFull::DecideOldest, Vec::new())
    }
}

/// A W3C / OTLP span status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusCode {
    /// `STATUS_CODE_UNSET` (0).
    Unset = 0,
    /// `STATUS_CODE_OK` (1).
    Ok = 1,
    /// `STATUS_CODE_ERROR` (2).
    Error = 2,
}

/// One policy.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Its name (unique among its siblings): the `policy` label and the mark on kept spans.
    pub name: String,
    /// What it checks.
    pub kind: PolicyKind,
}

/// The policy types, with the OTel Collector's settings.
#[derive(Debug, Clone)]
pub enum PolicyKind {
    /// Samples every trace.
    AlwaysSample,
    /// Trace duration (latest end − earliest start) ≥ `threshold_ms`, and ≤ `upper_threshold_ms`
    /// when that is above 0.
    Latency {
        /// Lower bound, milliseconds.
        threshold_ms: i64,
        /// Upper bound, milliseconds; 0 = none.
        upper_threshold_ms: i64,
    },
    /// Any span's status code is one of these.
    StatusCode(Vec<StatusCode>),
    /// A resource or span attribute's string value is one of `values` (or matches one, as
    /// regexes).
    StringAttribute {
        /// Attribute key.
        key: String,
        /// Values (anchored regexes when `regex`).
        values: Vec<String>,
        /// Compiled regexes, when `enabled_regex_matching`.
        regex: Option<Vec<regex::Regex>>,
        /// Sample traces that do NOT match (an "inverted" decision).
        invert_match: bool,
    },
    /// A resource or span attribute's number is within [`min_value`, `max_value`].
    NumericAttribute {
        /// Attribute key.
        key: String,
        /// Lower bound, inclusive.
        min_value: Option<f64>,
        /// Upper bound, inclusive.
        max_value: Option<f64>,
        /// Sample traces that do NOT match.
        invert_match: bool,
    },
    /// A resource or span attribute's boolean equals `value`.
    BooleanAttribute {
        /// Attribute key.
        key: String,
        /// The value that samples.
        value: bool,
        /// Sample traces that do NOT match.
        invert_match: bool,
    },
    /// FNV-1a(`hash_salt` ‖ trace id) under `sampling_percentage`: every instance with the same
    /// salt decides a trace the same way. With `mode: equalizing`, OpenTelemetry's consistent
    /// probability sampling instead: kept when the trace's randomness (tracestate `rv`, else the
    /// trace id's low 56 bits) reaches the threshold, which is written on kept spans (`ot=th:`),
    /// never lowering an upstream one.
    Probabilistic {
        /// Salt (default `default-hash-seed`, as the Collector).
        hash_salt: String,
        /// Percentage of traces sampled.
        sampling_percentage: f64,
        /// `mode: equalizing`.
        consistent: bool,
    },
    /// Samples while the spans sampled this second (with this trace's) stay within the rate.
    RateLimiting {
        /// Spans per second.
        spans_per_second: u64,
    },
    /// Token bucket over the trace's encoded bytes.
    BytesLimiting {
        /// Sustained rate.
        bytes_per_second: u64,
        /// Bucket size (default 2 × `bytes_per_second`).
        burst_capacity: u64,
    },
    /// Span count within [`min_spans`, `max_spans`] (`max_spans` 0 = no upper bound).
    SpanCount {
        /// Lower bound, inclusive.
        min_spans: u64,
        /// Upper bound, inclusive; 0 = none.
        max_spans: u64,
    },
    /// Any span's W3C tracestate has `key` with one of `values`.
    TraceState {
        /// Tracestate key.
        key: String,
        /// Values.
        values: Vec<String>,
    },
    /// Any span has the W3C sampled flag set.
    TraceFlags,
    /// Every sub-policy samples.
    And(Vec<PolicyConfig>),
    /// The sub-policy does not sample.
    Not(Box<PolicyConfig>),
    /// Every sub-policy samples: the trace is dropped, whatever the other policies say.
    Drop(Vec<PolicyConfig>),
    /// A DataFusion predicate over the trace's spans in the archive schema; any span matches.
    Sql(std::sync::Arc<super::sql::SqlPredicate>),
    /// Refinery's dynamic sampler: per key (the values of `key_fields`), a sample rate from the
    /// last window's counts, so rare keys are kept and common ones thinned, averaging
    /// `goal_sample_rate`.
    Dynamic {
        /// Attribute keys (resource or span) whose values make a trace's key.
        key_fields: Vec<String>,
        /// The average rate, 1 in N traces.
        goal_sample_rate: u64,
        /// How often rates are recomputed from the counts.
        adjustment_interval: std::time::Duration,
    },
    /// Keeps about `target_spans_per_second` spans per second: each window's rate is the last
    /// window's spans per second over the target.
    Throughput {
        /// Spans per second to keep.
        target_spans_per_second: u64,
        /// How often the rate is recomputed.
        adjustment_interval: std::time::Duration,
    },
    /// Sub-policies in order, each within its share of `max_total_spans_per_second`.
    Composite {
        /// Total spans per second sampled by the composite.
        max_total_spans_per_second: u64,
        /// Sub-policies in evaluation order, each with its spans-per-second allocation.
        subs: Vec<(PolicyConfig, u64)>,
    },
}

/// Every policy type.
pub const POLICY_TYPES: &[&str] = &[
    "always_sample",
    "latency",
    "status_code",
    "string_attribute",
    "numeric_attribute",
    "boolean_attribute",
    "probabilistic",
    "rate_limiting",
    "bytes_limiting",
    "span_count",
    "trace_state",
    "trace_flags",
    "and",
    "not",
    "drop",
    "composite",
    "sql",
    "dynamic",
    "throughput",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyCfg {
    threshold_ms: i64,
    #[serde(default)]
    upper_threshold_ms: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusCodeCfg {
    status_codes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StringAttributeCfg {
    key: String,
    values: Vec<String>,
    #[serde(default)]
    enabled_regex_matching: bool,
    /// Accepted for compatibility (the Collector's regex result cache); regexes here match
    /// without a cache.
    #[serde(default)]
    #[allow(dead_code)]
    cache_max_size: usize,
    #[serde(default)]
    invert_match: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NumericAttributeCfg {
    key: String,
    min_value: Option<f64>,
    max_value: Option<f64>,
    #[serde(default)]
    invert_match: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BooleanAttributeCfg {
    key: String,
    value: bool,
    #[serde(default)]
    invert_match: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbabilisticCfg {
    #[serde(default)]
    hash_salt: String,
    sampling_percentage: f64,
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitingCfg {
    spans_per_second: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BytesLimitingCfg {
    bytes_per_second: i64,
    #[serde(default)]
    burst_capacity: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpanCountCfg {
    #[serde(default)]
    min_spans: i64,
    #[serde(default)]
    max_spans: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceStateCfg {
    key: String,
    values: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DynamicCfg {
    key_fields: Vec<String>,
    goal_sample_rate: u64,
    #[serde(default = "default_adjustment")]
    adjustment_interval: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThroughputCfg {
    target_spans_per_second: u64,
    #[serde(default = "default_adjustment")]
    adjustment_interval: Duration,
}

fn default_adjustment() -> Duration {
    Duration::from_secs(15)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlCfg {
    #[serde(rename = "where")]
    #[cfg_attr(not(feature = "archive"), allow(dead_code))]
    predicate: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateAllocation {
    policy: String,
    percent: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompositeCfg {
    max_total_spans_per_second: i64,
    #[serde(default)]
    policy_order: Vec<String>,
    #[serde(default)]
    rate_allocation: Vec<RateAllocation>,
    /// Read apart.
    #[allow(dead_code)]
    composite_sub_policy: serde::de::IgnoredAny,
}

#[cfg_attr(not(feature = "archive"), allow(dead_code))]
fn at_key(s: &Node, k: &str) -> Pos {
    s.get(k).map_or(s.pos, |n| n.pos)
}

/// Collects the errors of one policy tree.
struct Reader<'a> {
    file: &'a str,
    errors: Vec<ConfigError>,
}

impl Reader<'_> {
    fn err(&mut self, pos: Pos, msg: impl Into<String>) {
        self.errors.push(ConfigError::new(self.file, pos, msg));
    }

    fn de<T: serde::de::DeserializeOwned>(&mut self, node: &Node) -> Option<T> {
        match node.deserialize_into(self.file) {
            Ok(v) => Some(v),
            Err(e) => {
                self.errors.push(e);
                None
            }
        }
    }

    /// A list of policies (`policies`, `and_sub_policy`, …), names unique among them.
    fn policies(&mut self, node: &Node, depth: usize) -> Vec<PolicyConfig> {
        let tracepipe_config::Value::Seq(items) = &node.value else {
            self.err(node.pos, format!("expected a sequence of policies, found {}", node.type_name()));
            return Vec::new();
        };
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for item in items {
            if let Some(p) = self.policy(item, depth) {
                if !seen.insert(p.name.clone()) {
                    self.err(item.get("name").map_or(item.pos, |n| n.pos), format!("duplicate policy name `{}`", p.name));
                }
                out.push(p);
            }
        }
        out
    }

    fn policy(&mut self, node: &Node, depth: usize) -> Option<PolicyConfig> {
        if depth > 8 {
            self.err(node.pos, "policies nested deeper than 8 levels");
            return None;
        }
        if !matches!(node.value, tracepipe_config::Value::Map(_)) {
            self.err(node.pos, format!("expected a policy (a mapping with `name` and `type`), found {}", node.type_name()));
            return None;
        }
        let name = match node.get("name").map(|n| &n.value) {
            Some(tracepipe_config::Value::Str(s)) if !s.is_empty() => s.clone(),
            _ => {
                self.err(node.get("name").map_or(node.pos, |n| n.pos), "a policy needs a `name` (a non-empty string)");
                String::new()
            }
        };
        let (ty, ty_pos) = match node.get("type") {
            Some(n) => match &n.value {
                tracepipe_config::Value::Str(s) => (s.clone(), n.pos),
                _ => {
                    self.err(n.pos, "`type` must be a string");
                    return None;
                }
            },
            None => {
                self.err(node.pos, format!("policy `{name}` needs a `type`; known types: {}", POLICY_TYPES.join(", ")));
                return None;
            }
        };
        // The Collector nests a policy's settings under a key named after its type.
        let settings = match node.get(&ty) {
            Some(nested) => {
                for (k, _) in node.entries() {
                    if k.name != "name" && k.name != "type" && k.name != ty {
                        self.err(k.pos, format!("unknown field `{}` in policy `{name}` (its settings are under `{ty}`)", k.name));
                    }
                }
                let mut n = nested.clone();
                if n.value == tracepipe_config::Value::Null {
                    n.value = tracepipe_config::Value::Map(Vec::new());
                }
                n
            }
            None => node.without_keys(&["name", "type"]),
        };
        let kind = self.kind(&ty, ty_pos, &name, &settings, depth)?;
        if name.is_empty() {
            return None;
        }
        Some(PolicyConfig { name, kind })
    }

    fn sub_list(&mut self, settings: &Node, key: &str, ty: &str, depth: usize) -> Option<Vec<PolicyConfig>> {
        let Some(list) = settings.get(key).or_else(|| settings.get("policies")) else {
            self.err(settings.pos, format!("a `{ty}` policy needs `{key}` (its sub-policies)"));
            return None;
        };
        let subs = self.policies(list, depth + 1);
        if subs.is_empty() {
            self.err(list.pos, format!("`{key}` must list at least one policy"));
            return None;
        }
        Some(subs)
    }

    fn kind(&mut self, ty: &str, ty_pos: Pos, name: &str, s: &Node, depth: usize) -> Option<PolicyKind> {
        let at = |k: &str| s.get(k).map_or(s.pos, |n| n.pos);
        Some(match ty {
            "always_sample" | "trace_flags" => {
                self.de::<Empty>(s)?;
                if ty == "always_sample" { PolicyKind::AlwaysSample } else { PolicyKind::TraceFlags }
            }
            "latency" => {
                let c: LatencyCfg = self.de(s)?;
                if c.threshold_ms < 0 || c.upper_threshold_ms < 0 {
                    self.err(at("threshold_ms"), "latency thresholds must not be negative");
                }
                if c.upper_threshold_ms > 0 && c.upper_threshold_ms < c.threshold_ms {
                    self.err(at("upper_threshold_ms"), "upper_threshold_ms must be 0 or at least threshold_ms");
                }
                PolicyKind::Latency { threshold_ms: c.threshold_ms, upper_threshold_ms: c.upper_threshold_ms }
            }
            "status_code" => {
                let c: StatusCodeCfg = self.de(s)?;
                let mut codes = Vec::new();
                for v in &c.status_codes {
                    match v.as_str() {
                        "OK" => codes.push(StatusCode::Ok),
                        "ERROR" => codes.push(StatusCode::Error),
                        "UNSET" => codes.push(StatusCode::Unset),
                        other => self.err(at("status_codes"), format!("unknown status code `{other}`; use OK, ERROR or UNSET")),
                    }
                }
                if c.status_codes.is_empty() {
                    self.err(at("status_codes"), "status_codes must list at least one of OK, ERROR, UNSET");
                }
                PolicyKind::StatusCode(codes)
            }
            "string_attribute" => {
                let c: StringAttributeCfg = self.de(s)?;
                if c.key.is_empty() {
                    self.err(at("key"), "key must not be empty");
                }
                if c.values.is_empty() {
                    self.err(at("values"), "values must list at least one value");
                }
                let regex = if c.enabled_regex_matching {
                    let mut out = Vec::new();
                    for v in &c.values {
                        // Unanchored, as the Collector's Go `regexp.MatchString`.
                        match regex::Regex::new(v) {
                            Ok(r) => out.push(r),
                            Err(e) => self.err(at("values"), format!("invalid regex {v:?}: {e}")),
                        }
                    }
                    Some(out)
                } else {
                    None
                };
                PolicyKind::StringAttribute { key: c.key, values: c.values, regex, invert_match: c.invert_match }
            }
            "numeric_attribute" => {
                let c: NumericAttributeCfg = self.de(s)?;
                if c.key.is_empty() {
                    self.err(at("key"), "key must not be empty");
                }
                if c.min_value.is_none() && c.max_value.is_none() {
                    self.err(s.pos, "a numeric_attribute policy needs min_value, max_value or both");
                }
                if let (Some(a), Some(b)) = (c.min_value, c.max_value)
                    && a > b
                {
                    self.err(at("max_value"), "max_value must be at least min_value");
                }
                PolicyKind::NumericAttribute { key: c.key, min_value: c.min_value, max_value: c.max_value, invert_match: c.invert_match }
            }
            "boolean_attribute" => {
                let c: BooleanAttributeCfg = self.de(s)?;
                if c.key.is_empty() {
                    self.err(at("key"), "key must not be empty");
                }
                PolicyKind::BooleanAttribute { key: c.key, value: c.value, invert_match: c.invert_match }
            }
            "probabilistic" => {
                let c: ProbabilisticCfg = self.de(s)?;
                if !(0.0..=100.0).contains(&c.sampling_percentage) {
                    self.err(at("sampling_percentage"), "sampling_percentage must be between 0 and 100");
                }
                let consistent = match c.mode.as_deref() {
                    None | Some("hash_seed") => false,
                    Some("equalizing") => {
                        if !c.hash_salt.is_empty() {
                            self.err(at("hash_salt"), "hash_salt has no effect with mode: equalizing (the trace's randomness decides)");
                        }
                        true
                    }
                    Some(other) => {
                        self.err(at("mode"), format!("unknown mode `{other}`; use hash_seed (the default, the Collector's) or equalizing (consistent probability, tracestate th)"));
                        false
                    }
                };
                let hash_salt = if c.hash_salt.is_empty() { "default-hash-seed".to_owned() } else { c.hash_salt };
                PolicyKind::Probabilistic { hash_salt, sampling_percentage: c.sampling_percentage, consistent }
            }
            "rate_limiting" => {
                let c: RateLimitingCfg = self.de(s)?;
                if c.spans_per_second <= 0 {
                    self.err(at("spans_per_second"), "spans_per_second must be above 0");
                }
                PolicyKind::RateLimiting { spans_per_second: c.spans_per_second.max(0) as u64 }
            }
            "bytes_limiting" => {
                let c: BytesLimitingCfg = self.de(s)?;
                if c.bytes_per_second <= 0 {
                    self.err(at("bytes_per_second"), "bytes_per_second must be above 0");
                }
                if c.burst_capacity < 0 {
                    self.err(at("burst_capacity"), "burst_capacity must not be negative");
                }
                let rate = c.bytes_per_second.max(0) as u64;
                let burst = if c.burst_capacity > 0 { c.burst_capacity as u64 } else { rate.saturating_mul(2) };
                PolicyKind::BytesLimiting { bytes_per_second: rate, burst_capacity: burst }
            }
            "span_count" => {
                let c: SpanCountCfg = self.de(s)?;
                if c.min_spans < 0 || c.max_spans < 0 {
                    self.err(s.pos, "min_spans and max_spans must not be negative");
                }
                if c.max_spans > 0 && c.max_spans < c.min_spans {
                    self.err(at("max_spans"), "max_spans must be 0 or at least min_spans");
                }
                PolicyKind::SpanCount { min_spans: c.min_spans.max(0) as u64, max_spans: c.max_spans.max(0) as u64 }
            }
            "trace_state" => {
                let c: TraceStateCfg = self.de(s)?;
                if c.key.is_empty() || c.key.len() > 256 {
                    self.err(at("key"), "key must be 1 to 256 characters (W3C tracestate)");
                }
                if c.values.is_empty() {
                    self.err(at("values"), "values must list at least one value");
                }
                PolicyKind::TraceState { key: c.key, values: c.values }
            }
            "and" => PolicyKind::And(self.sub_list(s, "and_sub_policy", ty, depth)?),
            "drop" => PolicyKind::Drop(self.sub_list(s, "drop_sub_policy", ty, depth)?),
            "not" => {
                let Some(sub) = s.get("not_sub_policy").or_else(|| s.get("policy")) else {
                    self.err(s.pos, "a `not` policy needs `not_sub_policy` (one policy)");
                    return None;
                };
                let sub = match &sub.value {
                    tracepipe_config::Value::Seq(items) if items.len() == 1 => &items[0],
                    tracepipe_config::Value::Seq(_) => {
                        self.err(sub.pos, "`not_sub_policy` takes exactly one policy");
                        return None;
                    }
                    _ => sub,
                };
                PolicyKind::Not(Box::new(self.policy(sub, depth + 1)?))
            }
            "composite" => {
                let c: CompositeCfg = self.de(s)?;
                let subs = self.sub_list(s, "composite_sub_policy", ty, depth)?;
                if c.max_total_spans_per_second <= 0 {
                    self.err(at("max_total_spans_per_second"), "max_total_spans_per_second must be above 0");
                }
                let total = c.max_total_spans_per_second.max(0) as u64;
                let mut order: Vec<PolicyConfig> = Vec::new();
                if c.policy_order.is_empty() {
                    order = subs.clone();
                } else {
                    for n in &c.policy_order {
                        match subs.iter().find(|p| &p.name == n) {
                            Some(p) => order.push(p.clone()),
                            None => self.err(at("policy_order"), format!("policy_order names `{n}`, which is not in composite_sub_policy")),
                        }
                    }
                    for p in &subs {
                        if !c.policy_order.contains(&p.name) {
                            self.err(at("policy_order"), format!("composite_sub_policy `{}` is missing from policy_order", p.name));
                        }
                    }
                }
                let mut allocated = 0.0;
                for a in &c.rate_allocation {
                    if !subs.iter().any(|p| p.name == a.policy) {
                        self.err(at("rate_allocation"), format!("rate_allocation names `{}`, which is not in composite_sub_policy", a.policy));
                    }
                    if !(0.0..=100.0).contains(&a.percent) {
                        self.err(at("rate_allocation"), "rate_allocation percent must be between 0 and 100");
                    }
                    allocated += a.percent;
                }
                if allocated > 100.0 + 1e-9 {
                    self.err(at("rate_allocation"), format!("rate_allocation percents add up to {allocated}, over 100"));
                }
                // Sub-policies without an allocation share what is left equally (the Collector's
                // README: "to ensure remaining capacity is filled use always_sample").
                let unallocated = order.iter().filter(|p| !c.rate_allocation.iter().any(|a| a.policy == p.name)).count();
                let rest = (total as f64 * (100.0 - allocated).max(0.0) / 100.0) / unallocated.max(1) as f64;
                let subs = order
                    .into_iter()
                    .map(|p| {
                        let sps = match c.rate_allocation.iter().find(|a| a.policy == p.name) {
                            Some(a) => total as f64 * a.percent / 100.0,
                            None => rest,
                        };
                        (p, sps as u64)
                    })
                    .collect();
                PolicyKind::Composite { max_total_spans_per_second: total, subs }
            }
            "sql" => {
                let c: SqlCfg = self.de(s)?;
                #[cfg(not(feature = "archive"))]
                {
                    drop(c); // the settings are still checked (unknown keys, a missing `where`)
                    self.err(at("type"), format!("policy `{name}`: {}", tracepipe_config::not_in_this_build_message("the `sql` policy")));
                    return None;
                }
                #[cfg(feature = "archive")]
                match super::sql::SqlPredicate::plan(&c.predicate) {
                    Ok(p) => PolicyKind::Sql(std::sync::Arc::new(p)),
                    Err(e) => {
                        let at = match e.at {
                            Some((l, c)) => format!(" (at line {l}, column {c} of the predicate)"),
                            None => String::new(),
                        };
                        self.err(at_key(s, "where"), format!("policy `{name}`: invalid SQL predicate{at}: {}", e.message));
                        return None;
                    }
                }
            }
            "dynamic" => {
                let c: DynamicCfg = self.de(s)?;
                if c.key_fields.is_empty() || c.key_fields.iter().any(|k| k.is_empty()) {
                    self.err(at("key_fields"), "key_fields must list at least one attribute key, none empty");
                }
                if c.goal_sample_rate == 0 {
                    self.err(at("goal_sample_rate"), "goal_sample_rate must be at least 1 (1 = keep everything)");
                }
                if c.adjustment_interval.get() < std::time::Duration::from_millis(100) {
                    self.err(at("adjustment_interval"), "adjustment_interval must be at least 100ms");
                }
                PolicyKind::Dynamic { key_fields: c.key_fields, goal_sample_rate: c.goal_sample_rate.max(1), adjustment_interval: c.adjustment_interval.get() }
            }
            "throughput" => {
                let c: ThroughputCfg = self.de(s)?;
                if c.target_spans_per_second == 0 {
                    self.err(at("target_spans_per_second"), "target_spans_per_second must be above 0");
                }
                if c.adjustment_interval.get() < std::time::Duration::from_millis(100) {
                    self.err(at("adjustment_interval"), "adjustment_interval must be at least 100ms");
                }
                PolicyKind::Throughput { target_spans_per_second: c.target_spans_per_second.max(1), adjustment_interval: c.adjustment_interval.get() }
            }
            "ottl_condition" => {
                self.err(
                    ty_pos,
                    format!("policy `{name}`: `ottl_condition` is not supported (tracepipe does not evaluate OTTL); write the condition as a `sql` policy, a DataFusion predicate over the trace archive's columns: {{ type: sql, where: \"attributes['http.route'] = '/checkout' AND duration_ns > 2e8\" }}"),
                );
                return None;
            }
            other => {
                self.err(ty_pos, format!("unknown policy type `{other}`; known types: {}", POLICY_TYPES.join(", ")));
                return None;
            }
        })
    }
}

impl TailSamplingConfig {
    /// Reads and checks the settings; every error at once, with positions.
    pub fn from_node(node: &Node, file: &str) -> Result<TailSamplingConfig, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let s: Settings = match node.deserialize_into(file) {
            Ok(s) => s,
            Err(e) => {
                errors.push(e);
                Settings::default()
            }
        };
        let at = |k: &str| node.get(k).map(|n| n.pos).unwrap_or(node.pos);
        if s.decision_wait.get().is_zero() {
            errors.push(ConfigError::new(file, at("decision_wait"), "decision_wait must be above 0"));
        }
        if s.decision_wait_after_root.get() > s.decision_wait.get() {
            errors.push(ConfigError::new(file, at("decision_wait_after_root"), "decision_wait_after_root must not be longer than decision_wait"));
        }
        if s.max_bytes.get() < 1024 * 1024 {
            errors.push(ConfigError::new(file, at("max_bytes"), "max_bytes must be at least 1MiB"));
        }
        if s.max_trace_bytes.get() == 0 || (s.max_bytes.get() >= 1024 * 1024 && s.max_trace_bytes.get() > s.max_bytes.get()) {
            errors.push(ConfigError::new(file, at("max_trace_bytes"), "max_trace_bytes must be above 0 and at most max_bytes"));
        }
        if s.max_trace_spans == 0 {
            errors.push(ConfigError::new(file, at("max_trace_spans"), "max_trace_spans must be above 0"));
        }
        // The decision caches are allocated at their full size and reserved from max_bytes. Left
        // at their defaults (100,000 + 1,000,000 ids, ~9 MB), they shrink to an eighth of a small
        // max_bytes; sizes set by hand must leave at least half of it to the spans.
        let cache_bytes = |c: &DecisionCacheConfig| super::cache::cache_bytes(c.sampled_cache_size, true) + super::cache::cache_bytes(c.non_sampled_cache_size, false);
        let mut s = s;
        if node.get("decision_cache").is_none() && cache_bytes(&s.decision_cache) > s.max_bytes.get() / 8 {
            let f = (s.max_bytes.get() / 8) as f64 / cache_bytes(&s.decision_cache) as f64;
            let d = &mut s.decision_cache;
            (d.sampled_cache_size, d.non_sampled_cache_size) = ((d.sampled_cache_size as f64 * f) as usize, (d.non_sampled_cache_size as f64 * f) as usize);
        }
        let caches = cache_bytes(&s.decision_cache);
        if s.max_bytes.get() >= 1024 * 1024 && caches > s.max_bytes.get() / 2 {
            errors.push(ConfigError::new(
                file,
                at("decision_cache"),
                format!(
                    "the decision caches take {caches} bytes of max_bytes ({}), more than half: lower their sizes or raise max_bytes",
                    s.max_bytes.get()
                ),
            ));
        }
        if s.shards > 256 {
            errors.push(ConfigError::new(file, at("shards"), "shards must be at most 256 (0 = one per core)"));
        }
        let on_full = match (s.on_full, s.block_on_overflow) {
            (Some(a), Some(b)) if (a == OnFull::Refuse) != b => {
                errors.push(ConfigError::new(file, at("block_on_overflow"), "block_on_overflow contradicts on_full; set one of them"));
                a
            }
            (Some(a), _) => a,
            (None, Some(true)) => OnFull::Refuse,
            (None, _) => OnFull::DecideOldest,
        };
        if s.state_dir.as_deref() == Some("") {
            errors.push(ConfigError::new(file, at("state_dir"), "state_dir must not be empty (leave it out to decide held traces at shutdown)"));
        }
        if s.state_dir.is_some() && s.drop_pending_traces_on_shutdown {
            errors.push(ConfigError::new(file, at("drop_pending_traces_on_shutdown"), "drop_pending_traces_on_shutdown and state_dir exclude each other"));
        }
        let mut r = Reader { file, errors: Vec::new() };
        let policies = match node.get("policies") {
            Some(p) => r.policies(p, 0),
            None => {
                r.err(node.pos, "tail_sampling needs `policies` (at least one)");
                Vec::new()
            }
        };
        if policies.is_empty() && r.errors.is_empty() {
            r.err(at("policies"), "policies must list at least one policy");
        }
        errors.extend(r.errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(s.into_config(on_full, policies))
    }
}
