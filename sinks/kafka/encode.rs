//! Batches to Kafka records: one record per trace (keyed by the trace id in hex) or one per
//! batch, each split by spans until it fits `max_message_bytes`.

use bytes::Bytes;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use std::collections::HashMap;
use tracepipe_pipeline::batch::{DecodeError, push_span};
use tracepipe_pipeline::archive::budget::{attr_bytes, cut_attributes, replay_budget};
use tracepipe_pipeline::regroup::{self, Regrouped, TraceGroup};
use tracepipe_pipeline::wire::WireError;
use tracepipe_pipeline::{Batch, otlp_json};

use super::config::Encoding;

/// One Kafka record to produce.
#[derive(Debug)]
pub struct Record {
    /// The trace id in lowercase hex (as the OTel Collector keys records), or none.
    pub key: Option<String>,
    /// The encoded spans.
    pub payload: Bytes,
    /// How many spans the payload holds.
    pub spans: usize,
}

/// A batch's records, and the spans that cannot be sent because one span alone is bigger than
/// `max_message_bytes`.
#[derive(Debug, Default)]
pub struct Records {
    /// Records to produce, in batch order.
    pub records: Vec<Record>,
    /// Spans dropped because a single span exceeds the record size limit.
    pub oversized_spans: usize,
    /// Resource and scope attributes cut because copying them into every trace's record would
    /// have exceeded the batch's budget (`archive::budget::replay_budget`).
    pub truncated_attributes: u64,
}

/// Why a batch could not be turned into records (its bytes are not the OTLP they were scanned as).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// Decoding to structs failed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The wire regrouping failed.
    #[error("invalid OTLP protobuf: {0}")]
    Wire(#[from] WireError),
}

/// Trace id → the request id (guid) its spans were seen with: keys records of `partition_by:
/// guid_or_trace_id`. Two generations of at most `capacity / 2` entries each.
#[derive(Debug, Default)]
pub struct GuidKeys {
    /// The attribute carrying the guid.
    pub attribute: String,
    current: HashMap<Vec<u8>, String>,
    previous: HashMap<Vec<u8>, String>,
    capacity: usize,
    /// Traces whose spans carried more than one guid (keyed by the smallest).
    pub conflicts: u64,
}

impl GuidKeys {
    /// Empty, remembering up to `capacity` traces.
    pub fn new(attribute: &str, capacity: usize) -> Self {
        GuidKeys { attribute: attribute.to_owned(), capacity, ..Default::default() }
    }

    /// The key of a trace's record: the smallest guid among `guids` (remembered for the trace),
    /// else the guid remembered for it, else the trace id in hex.
    pub fn key<'g>(&mut self, trace_id: &[u8], guids: impl Iterator<Item = &'g str>) -> String {
        let mut best: Option<&str> = None;
        let mut several = false;
        for g in guids {
            match best {
                Some(b) if b == g => {}
                Some(b) => {
                    several = true;
                    best = Some(b.min(g));
                }
                None => best = Some(g),
            }
        }
        self.conflicts += several as u64;
        if let Some(g) = best {
            if self.current.get(trace_id).map(String::as_str) != Some(g) && self.capacity > 0 {
                if self.current.len() >= self.capacity.div_ceil(2) {
                    self.previous = std::mem::take(&mut self.current);
                }
                self.current.insert(trace_id.to_vec(), g.to_owned());
            }
            return g.to_owned();
        }
        match self.current.get(trace_id).or_else(|| self.previous.get(trace_id)) {
            Some(g) => g.clone(),
            None => hex::encode(trace_id),
        }
    }
}

/// Remembers the request ids that replayed context carries for its trace ids (the context itself
/// is not written: see `tracepipe_pipeline::replay`), so late spans of those traces beside it are
/// keyed by their request like on the previous owner.
pub fn learn_guids(keys: &mut GuidKeys, context: &[&ResourceSpans]) {
    let attribute = keys.attribute.clone();
    for rs in context {
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                let guid = span.attributes.iter().find(|a| a.key == attribute).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(v) => Some(v.as_str()),
                    _ => None,
                });
                if let Some(g) = guid {
                    keys.key(&span.trace_id, std::iter::once(g));
                }
            }
        }
    }
}

/// How to turn batches into records.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Value format.
    pub encoding: Encoding,
    /// One record per trace, keyed by trace id.
    pub by_trace: bool,
    /// Largest record payload.
    pub max_bytes: usize,
}

impl Layout {
    /// True unless the batch's received bytes go out unchanged as one record: the caller moves
    /// the work (regrouping, decoding, splitting, encoding) off the async reactor.
    pub fn rebuilds(&self, batch: &Batch) -> bool {
        self.by_trace || self.encoding != Encoding::OtlpProto || !batch.is_encoded() || batch.encoded_len() > self.max_bytes
    }

    /// Splits and encodes a batch; with `guids`, trace records are keyed by their request id
    /// where known.
    pub fn records(&self, batch: &Batch, mut guids: Option<&mut GuidKeys>) -> Result<Records, EncodeError> {
        let mut out = Records::default();
        if batch.is_empty() {
            return Ok(out);
        }
        if !self.by_trace {
            // One record (split if too large); an encoded batch that fits goes out as received.
            self.fit(None, batch.clone(), &mut out)?;
            return Ok(out);
        }
        if self.encoding == Encoding::OtlpProto
            && let Some(buffers) = batch.encoded_buffers()
        {
            // Protobuf in, protobuf out: regroup the received bytes, no decode or encode.
            let mut rg = regroup::by_trace(&buffers)?;
            let bytes: u64 = buffers.iter().map(|b| b.len() as u64).sum();
            out.truncated_attributes += rg.bound_copies(replay_budget(bytes))?;
            for g in &rg.groups {
                let key = match (&mut guids, g.trace_id.is_empty()) {
                    (_, true) => None,
                    (None, false) => Some(hex::encode(g.trace_id)),
                    (Some(keys), false) => {
                        let mut found: Vec<&str> = Vec::new();
                        for span in g.span_bytes() {
                            if let Some(v) = tracepipe_pipeline::wire::span_string_attribute(span, keys.attribute.as_bytes())?.and_then(tracepipe_pipeline::wire::str_of) {
                                found.push(v);
                            }
                        }
                        Some(keys.key(g.trace_id, found.into_iter()))
                    }
                };
                self.fit_raw(&rg, g, key, 0..g.spans(), &mut out);
            }
            return Ok(out);
        }
        let mut rs = batch.to_resource_spans()?;
        out.truncated_attributes += bound_resource_copies(&mut rs);
        for (trace_id, group) in group_by_trace(rs) {
            let key = match (&mut guids, trace_id.is_empty()) {
                (_, true) => None,
                (None, false) => Some(hex::encode(&trace_id)),
                (Some(keys), false) => {
                    let attribute = keys.attribute.clone();
                    let found = group.iter().flat_map(|r| &r.scope_spans).flat_map(|ss| &ss.spans).flat_map(|s| {
                        s.attributes.iter().filter(|kv| kv.key == attribute).filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                            opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(v) => Some(v.as_str()),
                            _ => None,
                        })
                    });
                    Some(keys.key(&trace_id, found))
                }
            };
            self.fit(key, Batch::from_resource_spans(group), &mut out)?;
        }
        Ok(out)
    }

    /// Encodes spans `range` of a regrouped trace as one record, or halves the range until
    /// every part fits.
    fn fit_raw(&self, rg: &Regrouped<'_>, g: &TraceGroup<'_>, key: Option<String>, range: std::ops::Range<usize>, out: &mut Records) {
        let payload = rg.encode(g, range.clone());
        if payload.len() <= self.max_bytes {
            out.records.push(Record { key, payload: Bytes::from(payload), spans: range.len() });
            return;
        }
        if range.len() == 1 {
            out.oversized_spans += 1;
            return;
        }
        let mid = range.start + range.len() / 2;
        self.fit_raw(rg, g, key.clone(), range.start..mid, out);
        self.fit_raw(rg, g, key, mid..range.end, out);
    }

    /// Encodes `b` as one record, or halves it by spans until every part fits. An encoded batch
    /// is split between its received buffers where possible (no decoding).
    fn fit(&self, key: Option<String>, mut b: Batch, out: &mut Records) -> Result<(), DecodeError> {
        let spans = b.span_count();
        if spans == 0 {
            return Ok(());
        }
        let payload = match self.encoding {
            Encoding::OtlpProto => (b.encoded_len() <= self.max_bytes).then(|| b.to_bytes()),
            Encoding::OtlpJson => Some(Bytes::from(otlp_json::encode_request(b.resource_spans_mut()?))).filter(|p| p.len() <= self.max_bytes),
        };
        if let Some(payload) = payload {
            out.records.push(Record { key, payload, spans });
            return Ok(());
        }
        if spans == 1 {
            out.oversized_spans += 1;
            return Ok(());
        }
        let head = b.split_to(spans / 2)?;
        self.fit(key.clone(), head, out)?;
        self.fit(key, b, out)
    }
}

/// Cuts the attributes of resources that would be copied into so many per-trace records that the
/// copies exceed the batch's budget (the struct path of `Regrouped::bound_copies`); returns the
/// attributes cut.
fn bound_resource_copies(rs: &mut [ResourceSpans]) -> u64 {
    let bytes: u64 = rs.iter().map(|r| prost::encoding::message::encoded_len(1, r) as u64).sum();
    let budget = replay_budget(bytes);
    let copies: Vec<u64> = rs
        .iter()
        .map(|r| r.scope_spans.iter().flat_map(|ss| &ss.spans).map(|s| s.trace_id.as_slice()).collect::<std::collections::HashSet<_>>().len() as u64)
        .collect();
    let sizes: Vec<u64> = rs.iter().map(|r| r.resource.as_ref().map_or(0, |x| attr_bytes(&x.attributes))).collect();
    if sizes.iter().zip(&copies).map(|(s, c)| s * c).sum::<u64>() <= budget {
        return 0;
    }
    let share = budget / copies.iter().sum::<u64>().max(1);
    let mut cut = 0u64;
    for (r, size) in rs.iter_mut().zip(sizes) {
        if let Some(res) = r.resource.as_mut()
            && size > share
        {
            let mut room = share;
            let (kept, n) = cut_attributes(&res.attributes, &mut room, Some("service.name"));
            res.attributes = kept;
            res.dropped_attributes_count = res.dropped_attributes_count.saturating_add(n);
            cut += n as u64;
        }
    }
    cut
}

/// Regroups spans by trace id, in order of each trace's first span, keeping each span's
/// resource and scope.
pub fn group_by_trace(rs: Vec<ResourceSpans>) -> Vec<(Vec<u8>, Vec<ResourceSpans>)> {
    let mut groups: Vec<(Vec<u8>, Vec<ResourceSpans>)> = Vec::new();
    let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
    for r in rs {
        for ss in r.scope_spans {
            for span in ss.spans {
                let i = *index.entry(span.trace_id.clone()).or_insert_with(|| {
                    groups.push((span.trace_id.clone(), Vec::new()));
                    groups.len() - 1
                });
                push_span(&mut groups[i].1, &r.resource, &r.schema_url, &ss.scope, &ss.schema_url, span);
            }
        }
    }
    groups
}
