//! The Zipkin span model and its four decoders: v2 JSON, v2 proto3 (`zipkin.proto3.ListOfSpans`),
//! v1 Thrift and v1 JSON (converted to v2 as Zipkin's `V1SpanConverter` does: `cs`/`cr` -> CLIENT, `sr`/`ss`
//! -> SERVER, `ms`/`mr` -> PRODUCER/CONSUMER, `sa`/`ca` -> remote endpoint, binary annotations ->
//! tags). All JSON is read by serde_json (nesting limit 128); ids are hex, 16 or 32 digits.

use serde::Deserialize;

/// A decode failure (the whole request is refused with 400, as Zipkin does).
#[derive(Debug, thiserror::Error)]
pub enum ZipkinError {
    /// Not valid JSON for this API version.
    #[error("invalid Zipkin JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Not a valid `ListOfSpans`.
    #[error("invalid Zipkin protobuf: {0}")]
    Proto(#[from] prost::DecodeError),
    /// Not a valid thrift `list<Span>`.
    #[error("invalid Zipkin thrift: {0}")]
    Thrift(String),
    /// An id of the wrong length or not hex.
    #[error("invalid {what} {value:?}: expected {digits} hex digits")]
    Id {
        /// Which id.
        what: &'static str,
        /// The value.
        value: String,
        /// Expected digits.
        digits: &'static str,
    },
}

/// An endpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Endpoint {
    pub service_name: String,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    pub port: Option<u16>,
}

/// A Zipkin v2 span (ids as bytes: trace 8 or 16, span 8).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ZSpan {
    pub trace_id: Vec<u8>,
    pub id: Vec<u8>,
    pub parent_id: Option<Vec<u8>>,
    /// 0 unspecified, 1 CLIENT, 2 SERVER, 3 PRODUCER, 4 CONSUMER (proto3 numbering).
    pub kind: i32,
    pub name: String,
    pub timestamp: u64,
    pub duration: u64,
    pub local: Option<Endpoint>,
    pub remote: Option<Endpoint>,
    pub annotations: Vec<(u64, String)>,
    pub tags: Vec<(String, String)>,
    pub debug: bool,
    pub shared: bool,
}

fn hex_id(s: &str, what: &'static str, trace: bool) -> Result<Vec<u8>, ZipkinError> {
    let err = || ZipkinError::Id { what, value: s.to_owned(), digits: if trace { "16 or 32" } else { "16" } };
    let ok_len = if trace { s.len() <= 32 } else { s.len() <= 16 };
    if s.is_empty() || !ok_len || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(err());
    }
    // Zipkin accepts ids without leading zeros; pad to 16 or 32 digits.
    let width = if s.len() > 16 { 32 } else { 16 };
    let padded = format!("{s:0>width$}");
    (0..width).step_by(2).map(|i| u8::from_str_radix(&padded[i..i + 2], 16).map_err(|_| err())).collect()
}

fn kind_from_name(k: Option<&str>) -> i32 {
    match k {
        Some("CLIENT") => 1,
        Some("SERVER") => 2,
        Some("PRODUCER") => 3,
        Some("CONSUMER") => 4,
        _ => 0,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonEndpoint {
    service_name: Option<String>,
    ipv4: Option<String>,
    ipv6: Option<String>,
    port: Option<i64>,
}

impl From<JsonEndpoint> for Endpoint {
    fn from(e: JsonEndpoint) -> Self {
        Endpoint { service_name: e.service_name.unwrap_or_default(), ipv4: e.ipv4, ipv6: e.ipv6, port: e.port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0) }
    }
}

#[derive(Deserialize)]
struct JsonAnnotation {
    timestamp: Option<u64>,
    value: Option<String>,
    endpoint: Option<JsonEndpoint>,
}

/// A tag value: Zipkin v2 tags are strings, but some clients send numbers or booleans.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    S(String),
    B(bool),
    I(i64),
    F(f64),
}

impl Scalar {
    fn text(self) -> String {
        match self {
            Scalar::S(s) => s,
            Scalar::B(b) => b.to_string(),
            Scalar::I(i) => i.to_string(),
            Scalar::F(f) => f.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonSpanV2 {
    trace_id: String,
    id: String,
    parent_id: Option<String>,
    kind: Option<String>,
    name: Option<String>,
    timestamp: Option<u64>,
    duration: Option<u64>,
    local_endpoint: Option<JsonEndpoint>,
    remote_endpoint: Option<JsonEndpoint>,
    #[serde(default)]
    annotations: Option<Vec<JsonAnnotation>>,
    #[serde(default)]
    tags: Option<std::collections::BTreeMap<String, Scalar>>,
    debug: Option<bool>,
    shared: Option<bool>,
}

/// Decodes a v2 JSON array of spans.
pub fn decode_v2_json(body: &[u8]) -> Result<Vec<ZSpan>, ZipkinError> {
    let spans: Vec<JsonSpanV2> = serde_json::from_slice(body)?;
    spans
        .into_iter()
        .map(|s| {
            Ok(ZSpan {
                trace_id: hex_id(&s.trace_id, "traceId", true)?,
                id: hex_id(&s.id, "id", false)?,
                parent_id: s.parent_id.filter(|p| !p.is_empty()).map(|p| hex_id(&p, "parentId", false)).transpose()?,
                kind: kind_from_name(s.kind.as_deref()),
                name: s.name.unwrap_or_default(),
                timestamp: s.timestamp.unwrap_or_default(),
                duration: s.duration.unwrap_or_default(),
                local: s.local_endpoint.map(Into::into),
                remote: s.remote_endpoint.map(Into::into),
                annotations: s.annotations.unwrap_or_default().into_iter().map(|a| (a.timestamp.unwrap_or_default(), a.value.unwrap_or_default())).collect(),
                tags: s.tags.unwrap_or_default().into_iter().map(|(k, v)| (k, v.text())).collect(),
                debug: s.debug.unwrap_or(false),
                shared: s.shared.unwrap_or(false),
            })
        })
        .collect()
}

#[derive(Deserialize)]
struct JsonBinaryAnnotation {
    key: String,
    value: Scalar,
    endpoint: Option<JsonEndpoint>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonSpanV1 {
    trace_id: String,
    id: String,
    parent_id: Option<String>,
    name: Option<String>,
    timestamp: Option<u64>,
    duration: Option<u64>,
    #[serde(default)]
    annotations: Vec<JsonAnnotation>,
    #[serde(default)]
    binary_annotations: Vec<JsonBinaryAnnotation>,
    debug: Option<bool>,
}

/// Decodes a v1 JSON array of spans, converting each to v2.
pub fn decode_v1_json(body: &[u8]) -> Result<Vec<ZSpan>, ZipkinError> {
    let spans: Vec<JsonSpanV1> = serde_json::from_slice(body)?;
    spans.into_iter().map(convert_v1).collect()
}

fn convert_v1(s: JsonSpanV1) -> Result<ZSpan, ZipkinError> {
    let mut out = ZSpan {
        trace_id: hex_id(&s.trace_id, "traceId", true)?,
        id: hex_id(&s.id, "id", false)?,
        parent_id: s.parent_id.filter(|p| !p.is_empty()).map(|p| hex_id(&p, "parentId", false)).transpose()?,
        name: s.name.unwrap_or_default(),
        timestamp: s.timestamp.unwrap_or_default(),
        duration: s.duration.unwrap_or_default(),
        debug: s.debug.unwrap_or(false),
        ..Default::default()
    };
    let find = |v: &str| s.annotations.iter().find(|a| a.value.as_deref() == Some(v));
    let (begin, end, kind) = if find("cs").is_some() || find("cr").is_some() {
        ("cs", "cr", 1)
    } else if find("sr").is_some() || find("ss").is_some() {
        ("sr", "ss", 2)
    } else if find("ms").is_some() {
        ("ms", "", 3)
    } else if find("mr").is_some() {
        ("mr", "", 4)
    } else {
        ("", "", 0)
    };
    out.kind = kind;
    let mut local: Option<Endpoint> = None;
    for a in &s.annotations {
        let v = a.value.as_deref().unwrap_or_default();
        let ts = a.timestamp.unwrap_or_default();
        if kind != 0 && (v == begin || v == end) {
            if v == begin {
                if out.timestamp == 0 {
                    out.timestamp = ts;
                }
                if local.is_none() {
                    local = a.endpoint.as_ref().map(|e| Endpoint { service_name: e.service_name.clone().unwrap_or_default(), ipv4: e.ipv4.clone(), ipv6: e.ipv6.clone(), port: e.port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0) });
                }
            } else if out.duration == 0 && ts >= out.timestamp && out.timestamp != 0 {
                out.duration = ts - out.timestamp;
            }
            continue;
        }
        if kind == 2 && (v == "cs" || v == "cr") {
            continue;
        }
        out.annotations.push((ts, v.to_owned()));
    }
    for b in s.binary_annotations {
        match b.key.as_str() {
            "sa" | "ca" | "ma" => {
                if let Some(e) = b.endpoint {
                    out.remote = Some(e.into());
                }
            }
            _ => {
                if local.is_none() {
                    local = b.endpoint.map(Into::into);
                }
                out.tags.push((b.key, b.value.text()));
            }
        }
    }
    out.local = local;
    Ok(out)
}

/// `zipkin.proto3` messages.
pub mod proto {
    /// `zipkin.proto3.Endpoint`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Endpoint {
        #[prost(string, tag = "1")]
        pub service_name: String,
        #[prost(bytes = "vec", tag = "2")]
        pub ipv4: Vec<u8>,
        #[prost(bytes = "vec", tag = "3")]
        pub ipv6: Vec<u8>,
        #[prost(int32, tag = "4")]
        pub port: i32,
    }
    /// `zipkin.proto3.Annotation`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Annotation {
        #[prost(fixed64, tag = "1")]
        pub timestamp: u64,
        #[prost(string, tag = "2")]
        pub value: String,
    }
    /// `zipkin.proto3.Span`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub parent_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "3")]
        pub id: Vec<u8>,
        #[prost(int32, tag = "4")]
        pub kind: i32,
        #[prost(string, tag = "5")]
        pub name: String,
        #[prost(fixed64, tag = "6")]
        pub timestamp: u64,
        #[prost(uint64, tag = "7")]
        pub duration: u64,
        #[prost(message, optional, tag = "8")]
        pub local_endpoint: Option<Endpoint>,
        #[prost(message, optional, tag = "9")]
        pub remote_endpoint: Option<Endpoint>,
        #[prost(message, repeated, tag = "10")]
        pub annotations: Vec<Annotation>,
        #[prost(btree_map = "string, string", tag = "11")]
        pub tags: std::collections::BTreeMap<String, String>,
        #[prost(bool, tag = "12")]
        pub debug: bool,
        #[prost(bool, tag = "13")]
        pub shared: bool,
    }
    /// `zipkin.proto3.ListOfSpans`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListOfSpans {
        #[prost(message, repeated, tag = "1")]
        pub spans: Vec<Span>,
    }
}

fn ip_text(b: &[u8]) -> Option<String> {
    match b.len() {
        4 => Some(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
        16 => <[u8; 16]>::try_from(b).ok().map(|a| std::net::Ipv6Addr::from(a).to_string()),
        _ => None,
    }
}

fn proto_endpoint(e: proto::Endpoint) -> Endpoint {
    Endpoint { service_name: e.service_name, ipv4: ip_text(&e.ipv4), ipv6: ip_text(&e.ipv6), port: u16::try_from(e.port).ok().filter(|p| *p != 0) }
}

/// Decodes a proto3 `ListOfSpans`. With `reverse_ids`, span and parent ids are byte-reversed
/// (Envoy's proto encoder writes them in host byte order).
pub fn decode_v2_proto(body: &[u8], reverse_ids: bool) -> Result<Vec<ZSpan>, ZipkinError> {
    use prost::Message;
    let list = proto::ListOfSpans::decode(body)?;
    list.spans
        .into_iter()
        .map(|s| {
            let bad = |what: &'static str, v: &[u8], digits: &'static str| ZipkinError::Id { what, value: v.iter().map(|b| format!("{b:02x}")).collect(), digits };
            if s.trace_id.len() != 8 && s.trace_id.len() != 16 {
                return Err(bad("trace_id", &s.trace_id, "16 or 32"));
            }
            if s.id.len() != 8 {
                return Err(bad("id", &s.id, "16"));
            }
            if !s.parent_id.is_empty() && s.parent_id.len() != 8 {
                return Err(bad("parent_id", &s.parent_id, "16"));
            }
            let fix = |mut v: Vec<u8>| {
                if reverse_ids {
                    v.reverse();
                }
                v
            };
            Ok(ZSpan {
                trace_id: s.trace_id,
                id: fix(s.id),
                parent_id: (!s.parent_id.is_empty()).then(|| fix(s.parent_id)),
                kind: s.kind,
                name: s.name,
                timestamp: s.timestamp,
                duration: s.duration,
                local: s.local_endpoint.map(proto_endpoint),
                remote: s.remote_endpoint.map(proto_endpoint),
                annotations: s.annotations.into_iter().map(|a| (a.timestamp, a.value)).collect(),
                tags: s.tags.into_iter().collect(),
                debug: s.debug,
                shared: s.shared,
            })
        })
        .collect()
}

/// Decodes a v1 Thrift body: a thrift-binary `list<zipkincore.Span>` (what `py_zipkin` < 1.0 and
/// old Zipkin tracers POST as `application/x-thrift`), converting each span to v2. Lengths are
/// bounded by the body size, as for Jaeger.
pub fn decode_v1_thrift(body: &[u8]) -> Result<Vec<ZSpan>, ZipkinError> {
    use thrift::protocol::{TBinaryInputProtocol, TInputProtocol, TType};
    let limit = body.len();
    let conf = thrift::TConfiguration::builder()
        .max_message_size(Some(limit))
        .max_string_size(Some(limit))
        .max_container_size(Some(limit))
        .max_recursion_depth(Some(32))
        .build()
        .unwrap_or_default();
    let mut transport = body;
    let mut p = TBinaryInputProtocol::with_config(&mut transport, true, conf);
    let terr = |e: thrift::Error| ZipkinError::Thrift(e.to_string());
    fn list_len(p: &mut dyn TInputProtocol, limit: usize) -> Result<(TType, usize), ZipkinError> {
        let li = p.read_list_begin().map_err(|e| ZipkinError::Thrift(e.to_string()))?;
        let n = usize::try_from(li.size).ok().filter(|n| *n <= limit).ok_or_else(|| ZipkinError::Thrift(format!("list of {} elements does not fit in the body", li.size)))?;
        Ok((li.element_type, n))
    }
    fn endpoint(p: &mut dyn TInputProtocol) -> Result<JsonEndpoint, ZipkinError> {
        let terr = |e: thrift::Error| ZipkinError::Thrift(e.to_string());
        let mut e = JsonEndpoint { service_name: None, ipv4: None, ipv6: None, port: None };
        p.read_struct_begin().map_err(terr)?;
        loop {
            let f = p.read_field_begin().map_err(terr)?;
            match (f.id, f.field_type) {
                (_, TType::Stop) => break,
                (Some(1), TType::I32) => {
                    let v = p.read_i32().map_err(terr)? as u32;
                    e.ipv4 = Some(std::net::Ipv4Addr::from(v).to_string());
                }
                (Some(2), TType::I16) => e.port = Some(i64::from(p.read_i16().map_err(terr)? as u16)),
                (Some(3), TType::String) => e.service_name = Some(p.read_string().map_err(terr)?),
                (Some(4), TType::String) => e.ipv6 = ip_text(&p.read_bytes().map_err(terr)?),
                (_, t) => p.skip(t).map_err(terr)?,
            }
            p.read_field_end().map_err(terr)?;
        }
        p.read_struct_end().map_err(terr)?;
        Ok(e)
    }
    let (ty, n) = list_len(&mut p, limit)?;
    if ty != TType::Struct {
        return Err(ZipkinError::Thrift("expected a list of spans".into()));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = JsonSpanV1 { trace_id: String::new(), id: String::new(), parent_id: None, name: None, timestamp: None, duration: None, annotations: Vec::new(), binary_annotations: Vec::new(), debug: None };
        let (mut tid, mut tid_high, mut id) = (None::<i64>, 0i64, None::<i64>);
        p.read_struct_begin().map_err(terr)?;
        loop {
            let f = p.read_field_begin().map_err(terr)?;
            match (f.id, f.field_type) {
                (_, TType::Stop) => break,
                (Some(1), TType::I64) => tid = Some(p.read_i64().map_err(terr)?),
                (Some(3), TType::String) => s.name = Some(p.read_string().map_err(terr)?),
                (Some(4), TType::I64) => id = Some(p.read_i64().map_err(terr)?),
                (Some(5), TType::I64) => s.parent_id = Some(format!("{:016x}", p.read_i64().map_err(terr)?)),
                (Some(6), TType::List) => {
                    let (_, k) = list_len(&mut p, limit)?;
                    for _ in 0..k {
                        let mut a = JsonAnnotation { timestamp: None, value: None, endpoint: None };
                        p.read_struct_begin().map_err(terr)?;
                        loop {
                            let f = p.read_field_begin().map_err(terr)?;
                            match (f.id, f.field_type) {
                                (_, TType::Stop) => break,
                                (Some(1), TType::I64) => a.timestamp = Some(p.read_i64().map_err(terr)? as u64),
                                (Some(2), TType::String) => a.value = Some(p.read_string().map_err(terr)?),
                                (Some(3), TType::Struct) => a.endpoint = Some(endpoint(&mut p)?),
                                (_, t) => p.skip(t).map_err(terr)?,
                            }
                            p.read_field_end().map_err(terr)?;
                        }
                        p.read_struct_end().map_err(terr)?;
                        s.annotations.push(a);
                    }
                    p.read_list_end().map_err(terr)?;
                }
                (Some(8), TType::List) => {
                    let (_, k) = list_len(&mut p, limit)?;
                    for _ in 0..k {
                        let (mut key, mut value, mut ty, mut host) = (String::new(), Vec::new(), 6i32, None);
                        p.read_struct_begin().map_err(terr)?;
                        loop {
                            let f = p.read_field_begin().map_err(terr)?;
                            match (f.id, f.field_type) {
                                (_, TType::Stop) => break,
                                (Some(1), TType::String) => key = p.read_string().map_err(terr)?,
                                (Some(2), TType::String) => value = p.read_bytes().map_err(terr)?,
                                (Some(3), TType::I32) => ty = p.read_i32().map_err(terr)?,
                                (Some(4), TType::Struct) => host = Some(endpoint(&mut p)?),
                                (_, t) => p.skip(t).map_err(terr)?,
                            }
                            p.read_field_end().map_err(terr)?;
                        }
                        p.read_struct_end().map_err(terr)?;
                        let be = |n: usize| value.get(..n).map(|b| b.iter().fold(0i64, |acc, x| (acc << 8) | i64::from(*x)));
                        let v = match ty {
                            0 => Scalar::B(value.first().is_some_and(|b| *b != 0)),
                            2 => Scalar::I(be(2).map(|v| v as i16 as i64).unwrap_or_default()),
                            3 => Scalar::I(be(4).map(|v| v as i32 as i64).unwrap_or_default()),
                            4 => Scalar::I(be(8).unwrap_or_default()),
                            5 => Scalar::F(be(8).map(|v| f64::from_bits(v as u64)).unwrap_or_default()),
                            _ => Scalar::S(String::from_utf8_lossy(&value).into_owned()),
                        };
                        s.binary_annotations.push(JsonBinaryAnnotation { key, value: v, endpoint: host });
                    }
                    p.read_list_end().map_err(terr)?;
                }
                (Some(9), TType::Bool) => s.debug = Some(p.read_bool().map_err(terr)?),
                (Some(10), TType::I64) => s.timestamp = Some(p.read_i64().map_err(terr)? as u64),
                (Some(11), TType::I64) => s.duration = Some(p.read_i64().map_err(terr)? as u64),
                (Some(12), TType::I64) => tid_high = p.read_i64().map_err(terr)?,
                (_, t) => p.skip(t).map_err(terr)?,
            }
            p.read_field_end().map_err(terr)?;
        }
        p.read_struct_end().map_err(terr)?;
        let (Some(tid), Some(id)) = (tid, id) else {
            return Err(ZipkinError::Thrift("span without trace_id or id".into()));
        };
        s.trace_id = if tid_high != 0 { format!("{tid_high:016x}{tid:016x}") } else { format!("{tid:016x}") };
        s.id = format!("{id:016x}");
        out.push(convert_v1(s)?);
    }
    p.read_list_end().map_err(terr)?;
    Ok(out)
}
