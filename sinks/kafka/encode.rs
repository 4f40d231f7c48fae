//! Batches to Kafka records: one record per trace (keyed by the trace id in hex) or one per
//! batch, each split by spans until it fits `max_message_bytes`.

use bytes::Bytes;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, TracesData};
use prost::Message;
use std::collections::HashMap;
use tracepipe_pipeline::batch::{DecodeError, count_spans, push_span};
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
    /// True when [`Layout::records`] must decode `batch` (so the caller may move it off the
    /// async reactor).
    pub fn needs_decode(&self, batch: &Batch) -> bool {
        self.by_trace || self.encoding != Encoding::OtlpProto || !batch.is_encoded() || batch.encoded_len() > self.max_bytes
    }

    /// Splits and encodes a batch.
    pub fn records(&self, batch: &Batch) -> Result<Records, EncodeError> {
        let mut out = Records::default();
        if batch.is_empty() {
            return Ok(out);
        }
        if !self.needs_decode(batch) {
            // The fast path: the received bytes are already one `TracesData` message.
            out.records.push(Record { key: None, payload: batch.to_bytes(), spans: batch.span_count() });
            return Ok(out);
        }
        if self.by_trace
            && self.encoding == Encoding::OtlpProto
            && let Some(buffers) = batch.encoded_buffers()
        {
            // Protobuf in, protobuf out: regroup the received bytes, no decode or encode.
            let rg = regroup::by_trace(&buffers)?;
            for g in &rg.groups {
                let key = if g.trace_id.is_empty() { None } else { Some(hex::encode(g.trace_id)) };
                self.fit_raw(&rg, g, key, 0..g.spans(), &mut out);
            }
            return Ok(out);
        }
        let rs = batch.to_resource_spans()?;
        if self.by_trace {
            for (trace_id, group) in group_by_trace(rs) {
                let key = if trace_id.is_empty() { None } else { Some(hex::encode(&trace_id)) };
                self.encode_fitting(key, group, &mut out);
            }
        } else {
            self.encode_fitting(None, rs, &mut out);
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

    fn encode(&self, rs: Vec<ResourceSpans>) -> Vec<u8> {
        match self.encoding {
            Encoding::OtlpProto => TracesData { resource_spans: rs }.encode_to_vec(),
            Encoding::OtlpJson => otlp_json::encode_request(rs),
        }
    }

    /// Encodes `rs` as one record, or halves it by spans until every part fits.
    fn encode_fitting(&self, key: Option<String>, rs: Vec<ResourceSpans>, out: &mut Records) {
        let spans = count_spans(&rs);
        if spans == 0 {
            return;
        }
        let size = match self.encoding {
            Encoding::OtlpProto => rs.iter().map(|r| prost::encoding::message::encoded_len(1, r)).sum(),
            // JSON is only measured by writing it.
            Encoding::OtlpJson => 0,
        };
        if size <= self.max_bytes {
            let payload = self.encode(rs.clone());
            if payload.len() <= self.max_bytes {
                out.records.push(Record { key, payload: Bytes::from(payload), spans });
                return;
            }
        }
        if spans == 1 {
            out.oversized_spans += 1;
            return;
        }
        let mut rest = Batch::from_resource_spans(rs);
        // Both halves are already decoded: these cannot fail.
        let head = rest.split_to(spans / 2).and_then(|h| h.to_resource_spans()).unwrap_or_default();
        let tail = rest.to_resource_spans().unwrap_or_default();
        self.encode_fitting(key.clone(), head, out);
        self.encode_fitting(key, tail, out);
    }
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
