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
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};

use super::model::{self, JaegerBatch, SpanRef, Tag};

const STRING: i32 = 0;
const DOUBLE: i32 = 1;
const BOOL: i32 = 2;
const LONG: i32 = 3;
const BINARY: i32 = 4;

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(v) }), key_strindex: 0 }
}

/// A tag's value by its declared `vType`; unknown types fall back to the string field.
pub fn tag_value(t: &Tag) -> any_value::Value {
    match t.v_type {
        DOUBLE => any_value::Value::DoubleValue(t.v_double.unwrap_or_default()),
        BOOL => any_value::Value::BoolValue(t.v_bool.unwrap_or_default()),
        LONG => any_value::Value::IntValue(t.v_long.unwrap_or_default()),
        BINARY => any_value::Value::BytesValue(t.v_binary.clone().unwrap_or_default()),
        STRING | _ => any_value::Value::StringValue(t.v_str.clone().unwrap_or_default()),
    }
}

/// A tag's value as text (for tags whose meaning is textual: kind, status, scope).
pub fn tag_text(t: &Tag) -> String {
    match t.v_type {
        DOUBLE => t.v_double.unwrap_or_default().to_string(),
        BOOL => t.v_bool.unwrap_or_default().to_string(),
        LONG => t.v_long.unwrap_or_default().to_string(),
        BINARY => String::new(),
        _ => t.v_str.clone().unwrap_or_default(),
    }
}

fn trace_id(high: i64, low: i64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&high.to_be_bytes());
    v.extend_from_slice(&low.to_be_bytes());
    v
}

/// OTLP kind for a `span.kind` tag value.
pub fn kind_of(s: &str) -> Option<i32> {
    Some(match s.to_ascii_lowercase().as_str() {
        "client" => span::SpanKind::Client as i32,
        "server" => span::SpanKind::Server as i32,
        "producer" => span::SpanKind::Producer as i32,
        "consumer" => span::SpanKind::Consumer as i32,
        "internal" => span::SpanKind::Internal as i32,
        _ => return None,
    })
}

/// `opentracing.ref_type` of a link.
pub fn ref_type_name(ref_type: i32) -> &'static str {
    if ref_type == 1 { "follows_from" } else { "child_of" }
}

/// The log field that names an event: `event`, else `message`.
pub fn event_name_field(fields: &[Tag]) -> &'static str {
    if fields.iter().any(|f| f.key == "event") { "event" } else { "message" }
}

/// The instrumentation scope (name, version) a span's tags declare.
pub fn scope_key(s: &model::Span) -> (String, String) {
    let m = SpanMapping::of(s);
    (m.scope_name, m.scope_version)
}

/// Every mapping decision for one span, shared by [`to_otlp`] and the direct encoder.
pub struct SpanMapping<'a> {
    /// Parent span id (0 = root).
    pub parent: i64,
    /// References that become links.
    pub links: Vec<&'a SpanRef>,
    /// OTLP kind.
    pub kind: i32,
    /// `otel.status_code`.
    pub status_code: Option<String>,
    /// `otel.status_description`.
    pub status_msg: Option<String>,
    /// `error=true` was set.
    pub error: bool,
    /// `w3c.tracestate`.
    pub trace_state: Option<String>,
    /// Scope name.
    pub scope_name: String,
    /// Scope version.
    pub scope_version: String,
    consumed: Vec<bool>,
}

impl<'a> SpanMapping<'a> {
    /// Works out the mapping of a span.
    pub fn of(js: &'a model::Span) -> Self {
        let mut m = SpanMapping {
            parent: js.parent_span_id,
            links: Vec::new(),
            kind: span::SpanKind::Unspecified as i32,
            status_code: None,
            status_msg: None,
            error: false,
            trace_state: None,
            scope_name: String::new(),
            scope_version: String::new(),
            consumed: vec![false; js.tags.len()],
        };
        for r in &js.references {
            let same_trace = r.trace_id_low == js.trace_id_low && r.trace_id_high == js.trace_id_high;
            if m.parent == 0 && r.ref_type == 0 && same_trace {
                m.parent = r.span_id;
                continue;
            }
            if r.ref_type == 0 && r.span_id == m.parent && same_trace {
                continue; // the CHILD_OF reference that duplicates parentSpanId
            }
            m.links.push(r);
        }
        for (i, t) in js.tags.iter().enumerate() {
            let used = match t.key.as_str() {
                "span.kind" => match kind_of(&tag_text(t)) {
                    Some(k) => {
                        m.kind = k;
                        true
                    }
                    None => false,
                },
                "otel.status_code" => {
                    m.status_code = Some(tag_text(t));
                    true
                }
                "otel.status_description" => {
                    m.status_msg = Some(tag_text(t));
                    true
                }
                "error" => match tag_text(t).as_str() {
                    "true" => {
                        m.error = true;
                        true
                    }
                    "false" => true,
                    _ => false,
                },
                "otel.scope.name" | "otel.library.name" => {
                    m.scope_name = tag_text(t);
                    true
                }
                "otel.scope.version" | "otel.library.version" => {
                    m.scope_version = tag_text(t);
                    true
                }
                "w3c.tracestate" => {
                    m.trace_state = Some(tag_text(t));
                    true
                }
                _ => false,
            };
            m.consumed[i] = used;
        }
        m
    }

    /// True when tag `i` was turned into a span field (not an attribute).
    pub fn consumed(&self, i: usize) -> bool {
        self.consumed.get(i).copied().unwrap_or(false)
    }
}

/// The status (code, message) of a span, if it has one.
pub fn status_of(m: &SpanMapping<'_>) -> Option<(i32, String)> {
    let code = match m.status_code.as_deref().map(str::to_ascii_uppercase).as_deref() {
        Some("OK") => 1,
        Some("ERROR") => 2,
        _ if m.error => 2,
        _ => 0,
    };
    (code != 0 || m.status_msg.is_some()).then(|| (code, m.status_msg.clone().unwrap_or_default()))
}

/// Translates one Jaeger batch into OTLP resource spans (one resource; one scope per
/// instrumentation scope found in the tags). Spans keep their ids even when zero; the receiver
/// drops those (see the direct encoder).
pub fn to_otlp(b: &JaegerBatch) -> Vec<ResourceSpans> {
    let mut resource_attrs = vec![kv("service.name", any_value::Value::StringValue(b.process.service_name.clone()))];
    resource_attrs.extend(b.process.tags.iter().map(|t| kv(&t.key, tag_value(t))));
    let mut scopes: Vec<ScopeSpans> = Vec::new();
    let mut scope_index: std::collections::HashMap<(String, String), usize> = Default::default();
    for js in &b.spans {
        let m = SpanMapping::of(js);
        let mut s = Span {
            trace_id: trace_id(js.trace_id_high, js.trace_id_low),
            span_id: js.span_id.to_be_bytes().to_vec(),
            trace_state: m.trace_state.clone().unwrap_or_default(),
            name: js.operation_name.clone(),
            kind: m.kind,
            start_time_unix_nano: (js.start_time as u64).saturating_mul(1000),
            end_time_unix_nano: (js.start_time as u64).saturating_add(js.duration.max(0) as u64).saturating_mul(1000),
            flags: (js.flags as u32) & 0xff,
            ..Default::default()
        };
        if m.parent != 0 {
            s.parent_span_id = m.parent.to_be_bytes().to_vec();
        }
        s.links = m
            .links
            .iter()
            .map(|r| span::Link {
                trace_id: trace_id(r.trace_id_high, r.trace_id_low),
                span_id: r.span_id.to_be_bytes().to_vec(),
                attributes: vec![kv("opentracing.ref_type", any_value::Value::StringValue(ref_type_name(r.ref_type).into()))],
                ..Default::default()
            })
            .collect();
        s.attributes = js.tags.iter().enumerate().filter(|(i, _)| !m.consumed(*i)).map(|(_, t)| kv(&t.key, tag_value(t))).collect();
        s.status = status_of(&m).map(|(code, message)| Status { code, message });
        for l in &js.logs {
            let mut ev = span::Event { time_unix_nano: (l.timestamp as u64).saturating_mul(1000), ..Default::default() };
            let name_field = event_name_field(&l.fields);
            let mut named = false;
            for f in &l.fields {
                if !named && f.key == name_field {
                    ev.name = tag_text(f);
                    named = true;
                } else {
                    ev.attributes.push(kv(&f.key, tag_value(f)));
                }
            }
            s.events.push(ev);
        }
        let idx = *scope_index.entry((m.scope_name.clone(), m.scope_version.clone())).or_insert_with(|| {
            scopes.push(ScopeSpans {
                scope: Some(InstrumentationScope { name: m.scope_name.clone(), version: m.scope_version.clone(), ..Default::default() }),
                ..Default::default()
            });
            scopes.len() - 1
        });
        scopes[idx].spans.push(s);
    }
    vec![ResourceSpans { resource: Some(Resource { attributes: resource_attrs, ..Default::default() }), scope_spans: scopes, schema_url: String::new() }]
}
