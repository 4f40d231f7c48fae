//! OTLP/JSON (the protobuf JSON mapping with OTLP's exceptions: hex trace and span ids,
//! lowerCamelCase keys, 64-bit integers as strings, enums as integers), through the serde
//! implementation of `opentelemetry-proto`.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;

/// Why a JSON body was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid OTLP/JSON: {0}")]
pub struct JsonError(#[from] serde_json::Error);

/// Parses an OTLP/JSON `ExportTraceServiceRequest` (`{"resourceSpans": [...]}`).
/// `serde_json` refuses nesting deeper than 128 levels, so hostile input cannot exhaust the stack.
pub fn decode_request(body: &[u8]) -> Result<Vec<ResourceSpans>, JsonError> {
    // serde would read a JSON array as the struct's fields in order: only an object is a request.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(<serde_json::Error as serde::de::Error>::custom("an OTLP/JSON request must be a JSON object").into());
    }
    let req: ExportTraceServiceRequest = serde_json::from_slice(body)?;
    Ok(req.resource_spans)
}

/// `ExportTraceServiceRequest`'s JSON form over borrowed spans (the same `resourceSpans` key), so
/// writing JSON needs no copy of the spans.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestRef<'a> {
    resource_spans: &'a [ResourceSpans],
}

/// Writes resource spans as one OTLP/JSON `ExportTraceServiceRequest` / `TracesData` object.
pub fn encode_request(rs: &[ResourceSpans]) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail.
    serde_json::to_vec(&RequestRef { resource_spans: rs }).unwrap_or_default()
}
