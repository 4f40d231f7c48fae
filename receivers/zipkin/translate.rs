//! Zipkin v2 -> OTLP, as the OpenTelemetry Collector's Zipkin translator does:
//! - one resource per `localEndpoint.serviceName` (`service.name`);
//! - 64-bit trace ids are left-padded to 128 bits; ids, parent, name exact; kind from `kind`;
//!   start = `timestamp` (µs) and end = start + `duration`, in ns;
//! - tags -> string attributes, except `otel.status_code` / `otel.status_description` and `error`
//!   (-> status; `error`'s value is the description when none is given) and
//!   `otel.scope.name`/`otel.library.name`, `otel.scope.version`/`otel.library.version` (-> scope);
//! - local endpoint ip/port -> `net.host.ip` / `net.host.port`; remote endpoint ->
//!   `net.peer.name`, `net.peer.ip`, `net.peer.port`;
//! - annotations -> events (name = value; the OTel exporters' `{"name": {attributes}}` form is
//!   unfolded into name and attributes);
//! - `shared: true` -> attribute `zipkin.shared = true` (Envoy marks the server half of a span
//!   whose id it shares with the caller; guid inference needs to know); `debug: true` -> the
//!   sampled bit of OTLP `flags`.

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};

use super::model::{Endpoint, ZSpan};

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(v) }), key_strindex: 0 }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.to_owned())
}

fn endpoint_attrs(out: &mut Vec<KeyValue>, e: &Endpoint, peer: bool) {
    if peer && !e.service_name.is_empty() {
        out.push(kv("net.peer.name", s(&e.service_name)));
    }
    let ip_key = if peer { "net.peer.ip" } else { "net.host.ip" };
    if let Some(ip) = e.ipv4.as_ref().or(e.ipv6.as_ref()) {
        out.push(kv(ip_key, s(ip)));
    }
    if let Some(p) = e.port {
        out.push(kv(if peer { "net.peer.port" } else { "net.host.port" }, any_value::Value::IntValue(i64::from(p))));
    }
}

fn otlp_kind(k: i32) -> i32 {
    match k {
        1 => span::SpanKind::Client as i32,
        2 => span::SpanKind::Server as i32,
        3 => span::SpanKind::Producer as i32,
        4 => span::SpanKind::Consumer as i32,
        _ => span::SpanKind::Unspecified as i32,
    }
}

/// An annotation as an event. OpenTelemetry's Zipkin exporters write an event as the JSON object
/// `{"name": {attributes}}`; that form is unfolded back into the event's name and typed
/// attributes, any other value is the event name.
fn event(ts: u64, value: String) -> span::Event {
    let mut ev = span::Event { time_unix_nano: ts.saturating_mul(1000), ..Default::default() };
    if value.starts_with('{')
        && let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(&value)
        && map.len() == 1
        && let Some((name, serde_json::Value::Object(attrs))) = map.into_iter().next()
    {
        ev.name = name;
        for (k, v) in attrs {
            let v = match v {
                serde_json::Value::String(x) => any_value::Value::StringValue(x),
                serde_json::Value::Bool(b) => any_value::Value::BoolValue(b),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => any_value::Value::IntValue(i),
                    None => any_value::Value::DoubleValue(n.as_f64().unwrap_or_default()),
                },
                other => any_value::Value::StringValue(other.to_string()),
            };
            ev.attributes.push(kv(&k, v));
        }
        return ev;
    }
    ev.name = value;
    ev
}

/// Translates spans; spans with all-zero ids are returned separately (the receiver rejects them).
pub fn to_otlp(spans: Vec<ZSpan>) -> (Vec<ResourceSpans>, usize) {
    let mut out: Vec<ResourceSpans> = Vec::new();
    let mut resource_index: std::collections::HashMap<String, usize> = Default::default();
    let mut scope_index: std::collections::HashMap<(usize, String, String), usize> = Default::default();
    let mut rejected = 0;
    for z in spans {
        if z.trace_id.iter().all(|b| *b == 0) || z.id.iter().all(|b| *b == 0) {
            rejected += 1;
            continue;
        }
        let service = z.local.as_ref().map(|e| e.service_name.clone()).unwrap_or_default();
        let mut trace_id = vec![0u8; 16 - z.trace_id.len()];
        trace_id.extend_from_slice(&z.trace_id);
        let mut sp = Span {
            trace_id,
            span_id: z.id,
            parent_span_id: z.parent_id.unwrap_or_default(),
            name: z.name,
            kind: otlp_kind(z.kind),
            start_time_unix_nano: z.timestamp.saturating_mul(1000),
            end_time_unix_nano: z.timestamp.saturating_add(z.duration).saturating_mul(1000),
            ..Default::default()
        };
        let (mut scope_name, mut scope_version) = (String::new(), String::new());
        let (mut code, mut desc, mut error) = (None::<String>, None::<String>, None::<String>);
        for (k, v) in z.tags {
            match k.as_str() {
                "otel.status_code" => code = Some(v),
                "otel.status_description" => desc = Some(v),
                "error" => error = Some(v),
                "otel.scope.name" | "otel.library.name" => scope_name = v,
                "otel.scope.version" | "otel.library.version" => scope_version = v,
                _ => sp.attributes.push(kv(&k, any_value::Value::StringValue(v))),
            }
        }
        let status_code = match code.as_deref().map(str::to_ascii_uppercase).as_deref() {
            Some("OK") => 1,
            Some("ERROR") => 2,
            _ if error.as_deref().is_some_and(|e| e != "false") => 2,
            _ => 0,
        };
        if status_code != 0 || desc.is_some() {
            let message = desc.or_else(|| error.filter(|e| status_code == 2 && e != "true")).unwrap_or_default();
            sp.status = Some(Status { code: status_code, message });
        }
        if let Some(e) = &z.local {
            endpoint_attrs(&mut sp.attributes, e, false);
        }
        if let Some(e) = &z.remote {
            endpoint_attrs(&mut sp.attributes, e, true);
        }
        if z.shared {
            sp.attributes.push(kv("zipkin.shared", any_value::Value::BoolValue(true)));
        }
        if z.debug {
            // Zipkin's debug forces sampling: carried as the W3C sampled flag.
            sp.flags |= 0x01;
        }
        sp.events = z.annotations.into_iter().map(|(ts, value)| event(ts, value)).collect();
        // Resource and scope found by hash (not by a search of what was built: linear in spans).
        let ri = *resource_index.entry(service.clone()).or_insert_with(|| {
            out.push(ResourceSpans { resource: Some(Resource { attributes: vec![kv("service.name", s(&service))], ..Default::default() }), ..Default::default() });
            out.len() - 1
        });
        let scopes = &mut out[ri].scope_spans;
        let si = *scope_index.entry((ri, scope_name.clone(), scope_version.clone())).or_insert_with(|| {
            scopes.push(ScopeSpans { scope: Some(InstrumentationScope { name: scope_name, version: scope_version, ..Default::default() }), ..Default::default() });
            scopes.len() - 1
        });
        scopes[si].spans.push(sp);
    }
    (out, rejected)
}
