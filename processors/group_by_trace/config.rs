//! Configuration of `group_by_trace`. Names follow the OTel Collector's `groupbytrace`
//! (`wait_duration`, `num_traces`) and tracepipe's tail sampling (`max_bytes`, `on_full`).

use serde::Deserialize;
use tracepipe_config::{ByteSize, ConfigError, Duration, Node};

use crate::tail_sampling::{DecisionCacheConfig, OnFull, PolicyConfig, PolicyKind, TailSamplingConfig};

/// `type: group_by_trace` settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupByTraceConfig {
    /// How long a trace's spans are held after its first span (default 1s, as the Collector).
    #[serde(alias = "wait_duration")]
    pub wait: Duration,
    /// All held spans, in encoded bytes with their index (default 256MiB).
    pub max_bytes: ByteSize,
    /// Cap on traces held in addition to `max_bytes` (the Collector's `num_traces`; 0 = none).
    pub num_traces: u64,
    /// A trace with this many spans is released at once (default 20000).
    pub max_trace_spans: u64,
    /// `decide_oldest` (default: the oldest traces are released early, counted) or `refuse`.
    pub on_full: OnFull,
    /// Independent groupers by trace id; 0 = one per core.
    pub shards: usize,
    /// Released traces remembered, so their late spans pass at once (default 100000).
    pub late_cache_size: usize,
}

impl Default for GroupByTraceConfig {
    fn default() -> Self {
        GroupByTraceConfig {
            wait: Duration::from_secs(1),
            max_bytes: ByteSize::mib(256),
            num_traces: 0,
            max_trace_spans: 20_000,
            on_full: OnFull::DecideOldest,
            shards: 0,
            late_cache_size: 100_000,
        }
    }
}

impl GroupByTraceConfig {
    /// Reads and checks the settings.
    pub fn from_node(node: &Node, file: &str) -> Result<GroupByTraceConfig, Vec<ConfigError>> {
        let c: GroupByTraceConfig = node.deserialize_into(file).map_err(|e| vec![e])?;
        let at = |k: &str| node.get(k).or_else(|| node.get("wait_duration").filter(|_| k == "wait")).map(|n| n.pos).unwrap_or(node.pos);
        let mut errors = Vec::new();
        if c.wait.get().is_zero() {
            errors.push(ConfigError::new(file, at("wait"), "wait must be above 0"));
        }
        if c.max_bytes.get() < 1024 * 1024 {
            errors.push(ConfigError::new(file, at("max_bytes"), "max_bytes must be at least 1MiB"));
        }
        if c.max_trace_spans == 0 {
            errors.push(ConfigError::new(file, at("max_trace_spans"), "max_trace_spans must be above 0"));
        }
        if c.shards > 256 {
            errors.push(ConfigError::new(file, at("shards"), "shards must be at most 256 (0 = one per core)"));
        }
        if errors.is_empty() { Ok(c) } else { Err(errors) }
    }

    /// The tail-sampling engine configured to keep every trace, unmarked.
    pub fn engine(&self) -> TailSamplingConfig {
        TailSamplingConfig {
            decision_wait: self.wait.get(),
            decision_wait_after_root: std::time::Duration::ZERO,
            max_bytes: self.max_bytes.get(),
            max_trace_spans: self.max_trace_spans,
            max_trace_bytes: self.max_bytes.get().min(16 * 1024 * 1024),
            num_traces: self.num_traces,
            on_full: self.on_full,
            shards: self.shards,
            decision_cache: DecisionCacheConfig { sampled_cache_size: self.late_cache_size, non_sampled_cache_size: 0 },
            mark_policy: false,
            policies: vec![PolicyConfig { name: "group".into(), kind: PolicyKind::AlwaysSample }],
            ..TailSamplingConfig::default()
        }
    }
}
