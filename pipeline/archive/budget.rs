//! How much resource and scope context the archive writes per batch.
//!
//! The archive has one row per span, and each row repeats its resource's and scope's
//! attributes. A request with one huge resource (or scope) and very many tiny spans would turn a
//! few MiB into gigabytes of rows (K attributes × N spans). The context written for a batch is
//! therefore limited to [`REPLAY_FACTOR`] times the batch's bytes (at least [`REPLAY_FLOOR`], at
//! most [`REPLAY_CAP`]); past it, a context's attributes are cut (`service.name` is always kept)
//! and the cut is recorded in the row's `resource_dropped_attributes_count` /
//! `scope_dropped_attributes_count`, as OpenTelemetry records attributes dropped by limits, and
//! counted. Real batches stay far below the limit: even a 2 KiB resource over spans of 100 bytes
//! each replays 20x the batch's bytes.

use std::borrow::Cow;

use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;

/// Context bytes replayed into rows per byte of the batch.
pub const REPLAY_FACTOR: u64 = 32;
/// Context bytes any batch may replay, however small.
pub const REPLAY_FLOOR: u64 = 4 << 20;
/// Context bytes no batch replays beyond (Arrow's 32-bit offsets stay far from wrapping).
pub const REPLAY_CAP: u64 = 1 << 30;

/// The context budget of one batch.
#[derive(Debug)]
pub struct ContextBudget {
    left: u64,
    /// Attributes cut so far (counted once per context, not per row).
    pub truncated: u64,
}

/// Bytes of a list of attributes as protobuf fields.
pub fn attr_bytes(kvs: &[KeyValue]) -> u64 {
    kvs.iter().map(|kv| prost::encoding::message::encoded_len(1, kv) as u64).sum()
}

/// Context bytes a batch of `batch_bytes` may replay (into rows, or into records per trace).
pub fn replay_budget(batch_bytes: u64) -> u64 {
    batch_bytes.saturating_mul(REPLAY_FACTOR).clamp(REPLAY_FLOOR, REPLAY_CAP)
}

/// The attributes that fit in `room` bytes (as protobuf fields), `pin` first whatever its size,
/// then the others in order while they fit; `room` shrinks by what was kept. Returns the kept
/// attributes and how many were cut.
pub fn cut_attributes(attrs: &[KeyValue], room: &mut u64, pin: Option<&str>) -> (Vec<KeyValue>, u32) {
    let mut kept = Vec::new();
    let mut dropped = 0u32;
    let pinned = pin.and_then(|k| attrs.iter().position(|kv| kv.key == k));
    let order = pinned.into_iter().chain((0..attrs.len()).filter(|i| Some(*i) != pinned));
    for i in order {
        let n = prost::encoding::message::encoded_len(1, &attrs[i]) as u64;
        if n <= *room || Some(i) == pinned {
            *room = room.saturating_sub(n);
            kept.push(attrs[i].clone());
        } else {
            dropped += 1;
        }
    }
    (kept, dropped)
}

impl ContextBudget {
    /// A budget for a batch of `batch_bytes` bytes.
    pub fn new(batch_bytes: u64) -> Self {
        ContextBudget { left: replay_budget(batch_bytes), truncated: 0 }
    }

    /// The resource and scope to write for `rows` rows (one context): as they are while the
    /// budget lasts; otherwise with their attributes cut so that what is replayed fits what is
    /// left (`service.name` first, then in order while they fit), the cut added to their dropped
    /// counts. `res_attr_bytes` is [`attr_bytes`] of the resource (computed once per resource).
    pub fn fit<'a>(&mut self, res: &'a Resource, res_attr_bytes: u64, scope: &'a InstrumentationScope, rows: u64) -> (Cow<'a, Resource>, Cow<'a, InstrumentationScope>) {
        // Rows, plus the context's own recording.
        let times = rows.saturating_add(1);
        let scope_bytes = attr_bytes(&scope.attributes);
        let cost = (res_attr_bytes + scope_bytes).saturating_mul(times);
        if cost <= self.left {
            self.left -= cost;
            return (Cow::Borrowed(res), Cow::Borrowed(scope));
        }
        let mut per_row = self.left / times;
        let (res_kept, res_dropped) = cut_attributes(&res.attributes, &mut per_row, Some("service.name"));
        let (scope_kept, scope_dropped) = cut_attributes(&scope.attributes, &mut per_row, None);
        let res = Resource { attributes: res_kept, dropped_attributes_count: res.dropped_attributes_count.saturating_add(res_dropped), entity_refs: res.entity_refs.clone() };
        let scope = InstrumentationScope {
            attributes: scope_kept,
            dropped_attributes_count: scope.dropped_attributes_count.saturating_add(scope_dropped),
            name: scope.name.clone(),
            version: scope.version.clone(),
        };
        self.truncated += (res_dropped + scope_dropped) as u64;
        let cost = (attr_bytes(&res.attributes) + attr_bytes(&scope.attributes)).saturating_mul(times);
        self.left = self.left.saturating_sub(cost);
        (Cow::Owned(res), Cow::Owned(scope))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue};

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue { key: k.into(), value: Some(AnyValue { value: Some(Value::StringValue(v.into())) }), key_strindex: 0 }
    }

    #[test]
    fn contexts_fit_while_the_budget_lasts_then_are_cut_and_counted() {
        let mut attrs = vec![kv("host.name", &"h".repeat(100))];
        attrs.extend((0..1000).map(|i| kv(&format!("k{i}"), &"v".repeat(1000))));
        attrs.push(kv("service.name", "checkout"));
        let res = Resource { attributes: attrs, ..Default::default() };
        let scope = InstrumentationScope { name: "s".into(), attributes: vec![kv("a", "b")], ..Default::default() };
        let rb = attr_bytes(&res.attributes);
        // A batch of 1 MB: a 1 MB resource over 10 rows fits the 32 MB budget as is.
        let mut b = ContextBudget::new(1 << 20);
        let (r, s) = b.fit(&res, rb, &scope, 10);
        assert!(matches!((&r, &s), (Cow::Borrowed(_), Cow::Borrowed(_))));
        assert_eq!(b.truncated, 0);
        // 100,000 rows of it would replay 100 GB: cut to fit, service.name kept, counted.
        let (r, s) = b.fit(&res, rb, &scope, 100_000);
        assert_eq!(r.attributes[0].key, "service.name");
        assert!(r.attributes.len() < 100);
        assert_eq!(r.dropped_attributes_count as usize + r.attributes.len(), 1002);
        assert_eq!(s.name, "s");
        assert_eq!(b.truncated as u32, r.dropped_attributes_count + s.dropped_attributes_count);
        assert!((attr_bytes(&r.attributes) + attr_bytes(&s.attributes)) * 100_001 <= 32 << 20);
    }
}
