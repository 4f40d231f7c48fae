//! The proto3 JSON mapping of `ReportRequest` (lowerCamelCase or original field names; 64-bit
//! integers as strings or numbers; timestamps as RFC 3339 strings), read with serde_json into the
//! generated types.

use serde_json::Value;

use super::pb;

fn u64_of(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

fn i64_of(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

fn get<'a>(o: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    o.get(camel).or_else(|| o.get(snake))
}

fn timestamp(v: Option<&Value>) -> Result<Option<prost_types::Timestamp>, String> {
    let Some(v) = v else { return Ok(None) };
    let s = v.as_str().ok_or("timestamps must be RFC 3339 strings")?;
    s.parse::<prost_types::Timestamp>().map(Some).map_err(|e| format!("invalid timestamp {s:?}: {e}"))
}

fn key_values(v: Option<&Value>) -> Result<Vec<pb::KeyValue>, String> {
    let Some(Value::Array(items)) = v else { return Ok(Vec::new()) };
    items
        .iter()
        .map(|kv| {
            use pb::key_value::Value as V;
            let key = kv.get("key").and_then(Value::as_str).unwrap_or_default().to_owned();
            let value = if let Some(s) = get(kv, "stringValue", "string_value").and_then(Value::as_str) {
                Some(V::StringValue(s.to_owned()))
            } else if let Some(i) = get(kv, "intValue", "int_value").and_then(i64_of) {
                Some(V::IntValue(i))
            } else if let Some(d) = get(kv, "doubleValue", "double_value").and_then(Value::as_f64) {
                Some(V::DoubleValue(d))
            } else if let Some(b) = get(kv, "boolValue", "bool_value").and_then(Value::as_bool) {
                Some(V::BoolValue(b))
            } else {
                get(kv, "jsonValue", "json_value").and_then(Value::as_str).map(|s| V::JsonValue(s.to_owned()))
            };
            Ok(pb::KeyValue { key, value })
        })
        .collect()
}

fn span_context(v: Option<&Value>) -> Option<pb::SpanContext> {
    let v = v?;
    Some(pb::SpanContext {
        trace_id: get(v, "traceId", "trace_id").and_then(u64_of).unwrap_or_default(),
        span_id: get(v, "spanId", "span_id").and_then(u64_of).unwrap_or_default(),
        baggage: Default::default(),
    })
}

/// Parses a JSON `ReportRequest` (serde_json bounds nesting at 128 levels).
pub fn decode(body: &[u8]) -> Result<pb::ReportRequest, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    if !v.is_object() {
        return Err("a ReportRequest must be a JSON object".into());
    }
    let mut req = pb::ReportRequest::default();
    if let Some(r) = v.get("reporter") {
        req.reporter = Some(pb::Reporter { reporter_id: get(r, "reporterId", "reporter_id").and_then(u64_of).unwrap_or_default(), tags: key_values(r.get("tags"))? });
    }
    if let Some(a) = v.get("auth") {
        req.auth = Some(pb::Auth { access_token: get(a, "accessToken", "access_token").and_then(Value::as_str).unwrap_or_default().to_owned() });
    }
    req.timestamp_offset_micros = get(&v, "timestampOffsetMicros", "timestamp_offset_micros").and_then(i64_of).unwrap_or_default();
    if let Some(Value::Array(spans)) = v.get("spans") {
        for s in spans {
            let mut refs = Vec::new();
            if let Some(Value::Array(rs)) = s.get("references") {
                for r in rs {
                    let rel = match r.get("relationship") {
                        Some(Value::String(x)) if x == "FOLLOWS_FROM" => 1,
                        Some(Value::Number(n)) => n.as_i64().unwrap_or(0) as i32,
                        _ => 0,
                    };
                    refs.push(pb::Reference { relationship: rel, span_context: span_context(get(r, "spanContext", "span_context")) });
                }
            }
            let mut logs = Vec::new();
            if let Some(Value::Array(ls)) = s.get("logs") {
                for l in ls {
                    logs.push(pb::Log { timestamp: timestamp(l.get("timestamp"))?, fields: key_values(l.get("fields"))? });
                }
            }
            req.spans.push(pb::Span {
                span_context: span_context(get(s, "spanContext", "span_context")),
                operation_name: get(s, "operationName", "operation_name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                references: refs,
                start_timestamp: timestamp(get(s, "startTimestamp", "start_timestamp"))?,
                duration_micros: get(s, "durationMicros", "duration_micros").and_then(u64_of).unwrap_or_default(),
                tags: key_values(s.get("tags"))?,
                logs,
            });
        }
    }
    Ok(req)
}
