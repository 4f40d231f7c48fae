//! Configuration of the guid-inference processor.

use serde::Deserialize;
use tracepipe_config::{ByteSize, ConfigError, Duration, Node};

/// `type: guid_inference` settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuidInferenceConfig {
    /// The attribute every proxy span carries with the request id (default `guid:x-request-id`,
    /// as Envoy and Istio set it).
    pub guid_attribute: String,
    /// The attribute naming the proxy that emitted a span (default `node_id`); same node means
    /// same clock, so time containment is trustworthy.
    pub node_attribute: String,
    /// How long a guid's spans are held for siblings, from its first span (default 5s).
    pub wait: Duration,
    /// Bound on held spans, counted as their encoded size (the heap they take is about 4x:
    /// measured 1.9 KiB per 497 encoded bytes); beyond it the oldest guids are resolved early
    /// (default 256MiB).
    pub max_bytes: ByteSize,
    /// Mark re-parented spans with `tracepipe.inferred_parent=true` (default true).
    pub mark_inferred: bool,
    /// Link orphan SERVER spans to the CLIENT span on another node that called their service,
    /// for proxies that propagate nothing (default true).
    pub cross_node: bool,
    /// Clock skew tolerated between nodes when linking across them (default 50ms).
    pub clock_skew: Duration,
    /// Hold spans without the guid too, by trace id, for `wait` (default true): an application's
    /// own spans (an OTel SDK behind the sidecar) share a fragment's trace id but carry no guid,
    /// and must take the rebuilt trace id with the fragment. `false` passes them on at once
    /// (lower latency and memory when no application spans share the proxies' traces).
    pub hold_untagged: bool,
    /// Trace-id rewrites remembered after a guid is resolved, so spans of its fragments that
    /// arrive later take the rebuilt trace id too (default 100000; 0 = none). About 100 bytes
    /// each.
    pub rewrite_cache_size: usize,
}

impl Default for GuidInferenceConfig {
    fn default() -> Self {
        GuidInferenceConfig {
            guid_attribute: "guid:x-request-id".into(),
            node_attribute: "node_id".into(),
            wait: Duration::from_secs(5),
            max_bytes: ByteSize::mib(256),
            mark_inferred: true,
            cross_node: true,
            clock_skew: Duration::from_millis(50),
            hold_untagged: true,
            rewrite_cache_size: 100_000,
        }
    }
}

impl GuidInferenceConfig {
    /// Reads and checks the settings.
    pub fn from_node(node: &Node, file: &str) -> Result<GuidInferenceConfig, Vec<ConfigError>> {
        let c: GuidInferenceConfig = node.deserialize_into(file).map_err(|e| vec![e])?;
        let at = |k: &str| node.get(k).map(|n| n.pos).unwrap_or(node.pos);
        let mut errors = Vec::new();
        if c.guid_attribute.is_empty() {
            errors.push(ConfigError::new(file, at("guid_attribute"), "guid_attribute must not be empty"));
        }
        if c.wait.get().is_zero() {
            errors.push(ConfigError::new(file, at("wait"), "wait must be above 0"));
        }
        if c.max_bytes.get() == 0 {
            errors.push(ConfigError::new(file, at("max_bytes"), "max_bytes must be above 0"));
        }
        if c.clock_skew.get() > c.wait.get() {
            errors.push(ConfigError::new(file, at("clock_skew"), "clock_skew must not be longer than wait"));
        }
        if errors.is_empty() { Ok(c) } else { Err(errors) }
    }

    /// The linking rules these settings ask for.
    pub fn rules(&self) -> super::infer::Rules {
        super::infer::Rules {
            node_attribute: self.node_attribute.clone(),
            mark_inferred: self.mark_inferred,
            cross_node: self.cross_node,
            clock_skew_nanos: self.clock_skew.get().as_nanos().min(u64::MAX as u128) as u64,
        }
    }
}
