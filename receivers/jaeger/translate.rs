//! Jaeger model -> OTLP, following the OpenTelemetry Collector's Jaeger translator
//! (`pkg/translator/jaeger`, thrift to traces):
//! - trace id = `traceIdHigh` ‖ `traceIdLow` (big-endian, 128 bits); span id = `spanId`;
//! - parent = `parentSpanId`, or else the first `CHILD_OF` reference; every other reference is a
//!   link with `opentracing.ref_type` = `child_of` / `follows_from`;
//! - process `serviceName` -> resource `service.name`, process tags -> resource attributes;
//! - tags become attributes by `vType` (never by which value field is set: some clients
//!   zero-fill them all); `span.kind` -> kind; `otel.status_code` / `otel.status_description` ->
//!   status, else `error=true` -> error status; `otel.scope.name`/`otel.library.name` and
//!   `otel.scope.version`/`otel.library.version` -> the instrumentation scope; `w3c.tracestate` ->
//!   trace state (each consumed tag is removed from the attributes);
//! - logs -> events: time (µs -> ns), name from the `event` field (else `message`, which the
//!   OpenTelemetry Jaeger exporters use), other fields -> event attributes;
//! - start (µs) and duration (µs) exact in ns; the low byte of Jaeger `flags` -> OTLP `flags`.

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, status, ResourceSpans, ScopeSpans, Span, Status};

use super::model::{JaegerBatch, Tag};

const STRING: i32 = 0;
const DOUBLE: i32 = 1;
const BOOL: i32 = 2;
const LONG: i32 = 3;
const BINARY: i32 = 4;

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(v) }), key_strindex: 0 }
}

/// A tag's value by its declared `vType`; unknown types fall back to the string field. Takes
/// the tag apart (no copies).
fn tag_value(t: &mut Tag) -> any_value::Value {
    match t.v_type {
        DOUBLE => any_value::Value::DoubleValue(t.v_double.unwrap_or_default()),
        BOOL => any_value::Value::BoolValue(t.v_bool.unwrap_or_default()),
        LONG => any_value::Value::IntValue(t.v_long.unwrap_or_default()),
        BINARY => any_value::Value::BytesValue(t.v_binary.take().unwrap_or_default()),
        STRING | _ => any_value::Value::StringValue(t.v_str.take().unwrap_or_default()),
    }
}

fn tag_string(t: &mut Tag) -> String {
    match tag_value(t) {
        any_value::Value::StringValue(s) => s,
        any_value::Value::BoolValue(b) => b.to_string(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::DoubleValue(d) => d.to_string(),
        _ => String::new(),
    }
}

fn tag_kv(mut t: Tag) -> KeyValue {
    let v = tag_value(&mut t);
    KeyValue { key: t.key, value: Some(AnyValue { value: Some(v) }), key_strindex: 0 }
}

fn trace_id(high: i64, low: i64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&high.to_be_bytes());
    v.extend_from_slice(&low.to_be_bytes());
    v
}

fn span_kind(s: &str) -> Option<i32> {
    Some(match s.to_ascii_lowercase().as_str() {
        "client" => span::SpanKind::Client as i32,
        "server" => span::SpanKind::Server as i32,
        "producer" => span::SpanKind::Producer as i32,
        "consumer" => span::SpanKind::Consumer as i32,
        "internal" => span::SpanKind::Internal as i32,
        _ => return None,
    })
}

/// Translates one Jaeger batch into OTLP resource spans (one resource; one scope per
/// instrumentation scope found in the tags). Consumes the batch: strings move, not copy.
pub fn to_otlp(b: JaegerBatch) -> Vec<ResourceSpans> {
    let mut resource_attrs = vec![kv("service.name", any_value::Value::StringValue(b.process.service_name))];
    resource_attrs.extend(b.process.tags.into_iter().map(tag_kv));
    let mut scopes: Vec<ScopeSpans> = Vec::new();
    for js in b.spans {
        let mut s = Span {
            trace_id: trace_id(js.trace_id_high, js.trace_id_low),
            span_id: js.span_id.to_be_bytes().to_vec(),
            name: js.operation_name,
            start_time_unix_nano: (js.start_time as u64).saturating_mul(1000),
            end_time_unix_nano: (js.start_time as u64).saturating_add(js.duration.max(0) as u64).saturating_mul(1000),
            flags: (js.flags as u32) & 0xff,
            kind: span::SpanKind::Unspecified as i32,
            ..Default::default()
        };
        let mut parent = js.parent_span_id;
        for r in &js.references {
            let is_parent = parent == 0 && r.ref_type == 0 && r.trace_id_low == js.trace_id_low && r.trace_id_high == js.trace_id_high;
            if is_parent {
                parent = r.span_id;
                continue;
            }
            if r.ref_type == 0 && r.span_id == parent && r.trace_id_low == js.trace_id_low && r.trace_id_high == js.trace_id_high {
                continue; // the CHILD_OF reference that duplicates parentSpanId
            }
            s.links.push(span::Link {
                trace_id: trace_id(r.trace_id_high, r.trace_id_low),
                span_id: r.span_id.to_be_bytes().to_vec(),
                attributes: vec![kv("opentracing.ref_type", any_value::Value::StringValue(if r.ref_type == 1 { "follows_from" } else { "child_of" }.into()))],
                ..Default::default()
            });
        }
        if parent != 0 {
            s.parent_span_id = parent.to_be_bytes().to_vec();
        }
        let (mut scope_name, mut scope_version) = (String::new(), String::new());
        let (mut status_code, mut status_msg, mut error) = (None::<String>, None::<String>, false);
        s.attributes.reserve(js.tags.len());
        for mut t in js.tags {
            match t.key.as_str() {
                "span.kind" => {
                    let v = tag_string(&mut t);
                    match span_kind(&v) {
                        Some(k) => s.kind = k,
                        None => s.attributes.push(kv(&t.key, any_value::Value::StringValue(v))),
                    }
                }
                "otel.status_code" => status_code = Some(tag_string(&mut t)),
                "otel.status_description" => status_msg = Some(tag_string(&mut t)),
                "error" => {
                    let original = t.clone();
                    let v = tag_string(&mut t);
                    if v == "true" {
                        error = true;
                    } else if v != "false" {
                        s.attributes.push(tag_kv(original));
                    }
                }
                "otel.scope.name" | "otel.library.name" => scope_name = tag_string(&mut t),
                "otel.scope.version" | "otel.library.version" => scope_version = tag_string(&mut t),
                "w3c.tracestate" => s.trace_state = tag_string(&mut t),
                _ => s.attributes.push(tag_kv(t)),
            }
        }
        let code = match status_code.as_deref().map(str::to_ascii_uppercase).as_deref() {
            Some("OK") => status::StatusCode::Ok,
            Some("ERROR") => status::StatusCode::Error,
            _ if error => status::StatusCode::Error,
            _ => status::StatusCode::Unset,
        };
        if code != status::StatusCode::Unset || status_msg.is_some() {
            s.status = Some(Status { code: code as i32, message: status_msg.unwrap_or_default() });
        }
        for l in js.logs {
            let mut ev = span::Event { time_unix_nano: (l.timestamp as u64).saturating_mul(1000), ..Default::default() };
            let name_field = if l.fields.iter().any(|f| f.key == "event") { "event" } else { "message" };
            let mut named = false;
            for mut f in l.fields {
                if !named && f.key == name_field {
                    ev.name = tag_string(&mut f);
                    named = true;
                } else {
                    ev.attributes.push(tag_kv(f));
                }
            }
            s.events.push(ev);
        }
        let idx = match scopes.iter().position(|sc| sc.scope.as_ref().map(|x| (&x.name, &x.version)) == Some((&scope_name, &scope_version))) {
            Some(i) => i,
            None => {
                scopes.push(ScopeSpans {
                    scope: Some(InstrumentationScope { name: scope_name, version: scope_version, ..Default::default() }),
                    ..Default::default()
                });
                scopes.len() - 1
            }
        };
        scopes[idx].spans.push(s);
    }
    vec![ResourceSpans { resource: Some(Resource { attributes: resource_attrs, ..Default::default() }), scope_spans: scopes, schema_url: String::new() }]
}
