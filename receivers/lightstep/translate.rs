//! LightStep `ReportRequest` -> OTLP:
//! - reporter tags -> resource attributes; `lightstep.component_name` -> `service.name` too;
//! - uint64 trace id -> 128-bit id with zero high bits; uint64 span id -> 8 bytes;
//! - the first `CHILD_OF` reference -> parent; `FOLLOWS_FROM` (and further references) -> links
//!   with `opentracing.ref_type`;
//! - `start_timestamp` + `timestamp_offset_micros` -> start, + `duration_micros` -> end;
//! - tags -> typed attributes (`json_value` as a string), except `span.kind` (-> kind) and
//!   `error` (-> error status); `join_ids` style and `guid:*` tags stay attributes;
//! - logs -> events (name from the `event` field, else `message`; time offset applied);
//! - what the satellite sink writes for OTLP spans is restored: `otel.trace_id` (the full 128-bit
//!   id, when its low half is the report's id), `otel.status_code: OK` and
//!   `otel.status_description` (the status).

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};

use super::pb;

fn value(kv: &pb::KeyValue) -> any_value::Value {
    match &kv.value {
        Some(pb::key_value::Value::StringValue(s)) | Some(pb::key_value::Value::JsonValue(s)) => any_value::Value::StringValue(s.clone()),
        Some(pb::key_value::Value::IntValue(i)) => any_value::Value::IntValue(*i),
        Some(pb::key_value::Value::DoubleValue(d)) => any_value::Value::DoubleValue(*d),
        Some(pb::key_value::Value::BoolValue(b)) => any_value::Value::BoolValue(*b),
        None => any_value::Value::StringValue(String::new()),
    }
}

fn text(kv: &pb::KeyValue) -> String {
    match value(kv) {
        any_value::Value::StringValue(s) => s,
        any_value::Value::BoolValue(b) => b.to_string(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::DoubleValue(d) => d.to_string(),
        _ => String::new(),
    }
}

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(v) }), key_strindex: 0 }
}

fn nanos(ts: &Option<prost_types::Timestamp>, offset_micros: i64) -> u64 {
    let Some(t) = ts else { return 0 };
    let n = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos) + i128::from(offset_micros) * 1000;
    u64::try_from(n.max(0)).unwrap_or(u64::MAX)
}

fn trace_id(t: u64) -> Vec<u8> {
    let mut v = vec![0u8; 8];
    v.extend_from_slice(&t.to_be_bytes());
    v
}

/// A full trace id from its 32 hex digits, if its low 64 bits are the report's id.
fn full_trace_id(hex_id: &str, low: u64) -> Option<Vec<u8>> {
    let id = hex::decode(hex_id).ok().filter(|b| b.len() == 16)?;
    (u64::from_be_bytes(id[8..].try_into().ok()?) == low).then_some(id)
}

/// Translates a report; returns the resource spans and how many spans had zero ids (dropped).
pub fn to_otlp(req: &pb::ReportRequest) -> (Vec<ResourceSpans>, usize) {
    let mut attrs: Vec<KeyValue> = Vec::new();
    let mut service = None;
    if let Some(r) = &req.reporter {
        for t in &r.tags {
            if t.key == "lightstep.component_name" {
                service = Some(text(t));
            }
            attrs.push(kv(&t.key, value(t)));
        }
    }
    if let Some(s) = service
        && !attrs.iter().any(|a| a.key == "service.name")
    {
        attrs.insert(0, kv("service.name", any_value::Value::StringValue(s)));
    }
    let offset = req.timestamp_offset_micros;
    let mut spans = Vec::with_capacity(req.spans.len());
    let mut rejected = 0;
    for ls in &req.spans {
        let ctx = ls.span_context.clone().unwrap_or_default();
        if ctx.trace_id == 0 || ctx.span_id == 0 {
            rejected += 1;
            continue;
        }
        let start = nanos(&ls.start_timestamp, offset);
        let mut s = Span {
            trace_id: trace_id(ctx.trace_id),
            span_id: ctx.span_id.to_be_bytes().to_vec(),
            name: ls.operation_name.clone(),
            start_time_unix_nano: start,
            end_time_unix_nano: start.saturating_add(ls.duration_micros.saturating_mul(1000)),
            ..Default::default()
        };
        for r in &ls.references {
            let rc = r.span_context.clone().unwrap_or_default();
            if r.relationship == pb::reference::Relationship::ChildOf as i32 && s.parent_span_id.is_empty() && rc.span_id != 0 {
                s.parent_span_id = rc.span_id.to_be_bytes().to_vec();
            } else {
                s.links.push(span::Link {
                    trace_id: trace_id(rc.trace_id),
                    span_id: rc.span_id.to_be_bytes().to_vec(),
                    attributes: vec![kv("opentracing.ref_type", any_value::Value::StringValue(if r.relationship == 1 { "follows_from" } else { "child_of" }.into()))],
                    ..Default::default()
                });
            }
        }
        let mut error = false;
        let mut ok = false;
        let mut status_message = String::new();
        for t in &ls.tags {
            match t.key.as_str() {
                "otel.trace_id" => match full_trace_id(&text(t), ctx.trace_id) {
                    Some(id) => s.trace_id = id,
                    None => s.attributes.push(kv(&t.key, value(t))),
                },
                "otel.status_code" if text(t) == "OK" => ok = true,
                "otel.status_description" => status_message = text(t),
                "span.kind" => match text(t).to_ascii_lowercase().as_str() {
                    "client" => s.kind = span::SpanKind::Client as i32,
                    "server" => s.kind = span::SpanKind::Server as i32,
                    "producer" => s.kind = span::SpanKind::Producer as i32,
                    "consumer" => s.kind = span::SpanKind::Consumer as i32,
                    "internal" => s.kind = span::SpanKind::Internal as i32,
                    _ => s.attributes.push(kv(&t.key, value(t))),
                },
                // Python tracers send `True`/`False` as strings.
                "error" => match text(t).to_ascii_lowercase().as_str() {
                    "true" => error = true,
                    "false" => {}
                    _ => s.attributes.push(kv(&t.key, value(t))),
                },
                _ => s.attributes.push(kv(&t.key, value(t))),
            }
        }
        if error || ok || !status_message.is_empty() {
            s.status = Some(Status { code: if error { 2 } else if ok { 1 } else { 0 }, message: status_message });
        }
        for l in &ls.logs {
            let name_key = if l.fields.iter().any(|f| f.key == "event") { "event" } else { "message" };
            let mut ev = span::Event { time_unix_nano: nanos(&l.timestamp, offset), ..Default::default() };
            let mut named = false;
            for f in &l.fields {
                if !named && f.key == name_key {
                    ev.name = text(f);
                    named = true;
                } else {
                    ev.attributes.push(kv(&f.key, value(f)));
                }
            }
            s.events.push(ev);
        }
        spans.push(s);
    }
    if spans.is_empty() {
        return (Vec::new(), rejected);
    }
    let rs = ResourceSpans {
        resource: Some(Resource { attributes: attrs, ..Default::default() }),
        scope_spans: vec![ScopeSpans { scope: Some(InstrumentationScope::default()), spans, schema_url: String::new() }],
        schema_url: String::new(),
    };
    (vec![rs], rejected)
}
