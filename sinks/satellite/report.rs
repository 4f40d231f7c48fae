//! OTLP → LightStep `ReportRequest`: the inverse of the LightStep receiver's mapping
//! (receivers/lightstep/translate.rs), so that a report read back by that receiver gives the
//! spans that went in, up to what the Report protocol cannot carry (listed in README):
//! - resource attributes → reporter tags; `service.name` also as `lightstep.component_name`
//!   (unless present), which LightStep shows as the service;
//! - 128-bit trace ids → their low 64 bits, as LightStep tracers did; when the high half is not
//!   zero the full id goes in the tag [`FULL_TRACE_ID`] (the receiver restores it);
//! - parent → a `CHILD_OF` reference; links → `FOLLOWS_FROM` references (their attributes and
//!   trace state are not carried);
//! - kind → `span.kind`; status error → `error: true`, status ok → [`STATUS_CODE`] `OK`, the
//!   status message → [`STATUS_MESSAGE`] (the receiver restores both);
//! - attributes → tags (string, int, double, bool; arrays, maps and bytes as `json_value`);
//!   `guid:*` tags are attributes and pass as they are;
//! - events → logs (`event` = the name, then the attributes);
//! - times: start to the nanosecond (a `Timestamp`), duration in whole microseconds.

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans};
use tracepipe_pipeline::lightstep_pb as pb;

/// Tag holding the full 128-bit trace id (32 hex digits) when its high half is not zero.
pub const FULL_TRACE_ID: &str = "otel.trace_id";
/// Tag holding an `OK` status (LightStep has only `error`).
pub const STATUS_CODE: &str = "otel.status_code";
/// Tag holding the status message.
pub const STATUS_MESSAGE: &str = "otel.status_description";

fn u64_of(id: &[u8]) -> u64 {
    let n = id.len().min(8);
    let mut b = [0u8; 8];
    b[8 - n..].copy_from_slice(&id[id.len() - n..]);
    u64::from_be_bytes(b)
}

fn json_of(v: &AnyValue) -> serde_json::Value {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => serde_json::Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => serde_json::Value::from(*d),
        Some(any_value::Value::ArrayValue(a)) => serde_json::Value::Array(a.values.iter().map(json_of).collect()),
        Some(any_value::Value::KvlistValue(l)) => {
            serde_json::Value::Object(l.values.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(json_of).unwrap_or_default())).collect())
        }
        Some(any_value::Value::BytesValue(b)) => serde_json::Value::String(hex::encode(b)),
        // A string-table index (profiles only): no string to write.
        Some(any_value::Value::StringValueStrindex(i)) => serde_json::Value::from(*i),
        None => serde_json::Value::Null,
    }
}

fn tag(kv: KeyValue) -> pb::KeyValue {
    use pb::key_value::Value as V;
    let value = match kv.value.and_then(|v| v.value) {
        Some(any_value::Value::StringValue(s)) => V::StringValue(s),
        Some(any_value::Value::BoolValue(b)) => V::BoolValue(b),
        Some(any_value::Value::IntValue(i)) => V::IntValue(i),
        Some(any_value::Value::DoubleValue(d)) => V::DoubleValue(d),
        Some(other) => V::JsonValue(json_of(&AnyValue { value: Some(other) }).to_string()),
        None => V::StringValue(String::new()),
    };
    pb::KeyValue { key: kv.key, value: Some(value) }
}

fn string_tag(key: &str, v: &str) -> pb::KeyValue {
    pb::KeyValue { key: key.to_owned(), value: Some(pb::key_value::Value::StringValue(v.to_owned())) }
}

fn timestamp(nanos: u64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: (nanos / 1_000_000_000) as i64, nanos: (nanos % 1_000_000_000) as i32 }
}

/// The `service.name` of a resource, if any.
pub fn service_of(rs: &ResourceSpans) -> Option<&str> {
    rs.resource.as_ref()?.attributes.iter().find(|a| a.key == "service.name").and_then(|a| match a.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.as_str()),
        _ => None,
    })
}

/// One report for one resource's spans (taken apart, not copied), authenticated with `token`;
/// `reporter_id` names this sink (LightStep tracers use a random id per process).
pub fn report(rs: ResourceSpans, token: &str, reporter_id: u64) -> pb::ReportRequest {
    let service = service_of(&rs).map(str::to_owned);
    let mut tags: Vec<pb::KeyValue> = rs.resource.into_iter().flat_map(|r| r.attributes).map(tag).collect();
    if let Some(s) = service
        && !tags.iter().any(|t| t.key == "lightstep.component_name")
    {
        tags.push(string_tag("lightstep.component_name", &s));
    }
    let mut spans = Vec::with_capacity(rs.scope_spans.iter().map(|ss| ss.spans.len()).sum());
    for ss in rs.scope_spans {
        for s in ss.spans {
            spans.push(span(s));
        }
    }
    pb::ReportRequest {
        reporter: Some(pb::Reporter { reporter_id, tags }),
        auth: Some(pb::Auth { access_token: token.to_owned() }),
        spans,
        timestamp_offset_micros: 0,
        internal_metrics: None,
    }
}

fn span(s: opentelemetry_proto::tonic::trace::v1::Span) -> pb::Span {
    let trace = u64_of(&s.trace_id);
    let mut tags: Vec<pb::KeyValue> = Vec::with_capacity(s.attributes.len() + 3);
    tags.extend(s.attributes.into_iter().map(tag));
    if s.trace_id.len() == 16 && s.trace_id[..8].iter().any(|b| *b != 0) {
        tags.push(string_tag(FULL_TRACE_ID, &hex::encode(&s.trace_id)));
    }
    let kind = match span::SpanKind::try_from(s.kind).unwrap_or(span::SpanKind::Unspecified) {
        span::SpanKind::Client => Some("client"),
        span::SpanKind::Server => Some("server"),
        span::SpanKind::Producer => Some("producer"),
        span::SpanKind::Consumer => Some("consumer"),
        span::SpanKind::Internal => Some("internal"),
        span::SpanKind::Unspecified => None,
    };
    if let Some(k) = kind {
        tags.push(string_tag("span.kind", k));
    }
    if let Some(st) = &s.status {
        match st.code {
            2 => tags.push(pb::KeyValue { key: "error".into(), value: Some(pb::key_value::Value::BoolValue(true)) }),
            1 => tags.push(string_tag(STATUS_CODE, "OK")),
            _ => {}
        }
        if !st.message.is_empty() {
            tags.push(string_tag(STATUS_MESSAGE, &st.message));
        }
    }
    let mut references = Vec::new();
    if !s.parent_span_id.is_empty() {
        references.push(pb::Reference {
            relationship: pb::reference::Relationship::ChildOf as i32,
            span_context: Some(pb::SpanContext { trace_id: trace, span_id: u64_of(&s.parent_span_id), baggage: Default::default() }),
        });
    }
    for l in &s.links {
        references.push(pb::Reference {
            relationship: pb::reference::Relationship::FollowsFrom as i32,
            span_context: Some(pb::SpanContext { trace_id: u64_of(&l.trace_id), span_id: u64_of(&l.span_id), baggage: Default::default() }),
        });
    }
    let logs = s
        .events
        .into_iter()
        .map(|e| {
            let mut fields = Vec::with_capacity(e.attributes.len() + 1);
            fields.push(pb::KeyValue { key: "event".into(), value: Some(pb::key_value::Value::StringValue(e.name)) });
            fields.extend(e.attributes.into_iter().map(tag));
            pb::Log { timestamp: Some(timestamp(e.time_unix_nano)), fields }
        })
        .collect();
    pb::Span {
        span_context: Some(pb::SpanContext { trace_id: trace, span_id: u64_of(&s.span_id), baggage: Default::default() }),
        operation_name: s.name,
        references,
        start_timestamp: Some(timestamp(s.start_time_unix_nano)),
        duration_micros: s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano) / 1000,
        tags,
        logs,
    }
}
