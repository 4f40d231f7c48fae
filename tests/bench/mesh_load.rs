//! The benchmarks' span load: mesh-proxy-like spans (5 per trace, up to 10 attributes: method,
//! URL, status, user agent, peer IP, component, node id, request guid, response size, cached; 6
//! services), unique ids and varied values so compression is not flattered; and how the Rust
//! benchmarks measure CPU.

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

/// xorshift64: the same spans on every run.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn s(k: &str, v: String) -> KeyValue {
    KeyValue { key: k.into(), value: Some(AnyValue { value: Some(Value::StringValue(v)) }), key_strindex: 0 }
}
fn i(k: &str, v: i64) -> KeyValue {
    KeyValue { key: k.into(), value: Some(AnyValue { value: Some(Value::IntValue(v)) }), key_strindex: 0 }
}

/// CPU seconds of this process (user + system), from /proc.
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0) + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

const SERVICES: [&str; 6] = ["productpage", "details", "reviews", "ratings", "db", "inventory"];

/// One batch of `n` spans (n a multiple of 5), one ResourceSpans per service.
pub fn batch(rng: &mut Rng, n: usize, t0: u64, attrs: usize) -> Vec<ResourceSpans> {
    let mut per: Vec<Vec<Span>> = vec![Vec::new(); SERVICES.len()];
    for t in 0..n / 5 {
        let trace = [rng.next().to_be_bytes(), rng.next().to_be_bytes()].concat();
        let guid = format!("{:016x}-{:04x}", rng.next(), t);
        let start = t0 + t as u64 * 200_000 + rng.next() % 1000;
        let mut parent = Vec::new();
        for k in 0..5 {
            let svc = (rng.next() % SERVICES.len() as u64) as usize;
            let id = rng.next().to_be_bytes().to_vec();
            let dur = 100_000 + rng.next() % 20_000_000;
            per[svc].push(Span {
                trace_id: trace.clone(),
                span_id: id.clone(),
                parent_span_id: parent.clone(),
                name: format!("{}.default.svc.cluster.local:9080/*", SERVICES[svc]),
                kind: if k % 2 == 0 { 2 } else { 3 },
                start_time_unix_nano: start + k * 1000,
                end_time_unix_nano: start + k * 1000 + dur,
                attributes: vec![
                    s("http.method", if rng.next() % 10 == 0 { "POST" } else { "GET" }.into()),
                    s("http.url", format!("http://{}.default.svc.cluster.local:9080/api/{}", SERVICES[svc], rng.next() % 5000)),
                    i("http.status_code", if rng.next() % 50 == 0 { 503 } else { 200 }),
                    s("http.user_agent", "python-requests/2.34.2".into()),
                    s("net.peer.ip", format!("10.12.{}.{}", rng.next() % 8, rng.next() % 250)),
                    s("component", "proxy".into()),
                    s("node_id", format!("sidecar~10.12.4.{}~{}-v1-1.default~default.svc.cluster.local", svc, SERVICES[svc])),
                    s("guid:x-request-id", guid.clone()),
                    i("response_size", (rng.next() % 20_000) as i64),
                    KeyValue { key: "cached".into(), value: Some(AnyValue { value: Some(Value::BoolValue(rng.next() % 3 == 0)) }), key_strindex: 0 },
                ]
                .into_iter()
                .take(attrs)
                .collect(),
                ..Default::default()
            });
            parent = id;
        }
    }
    per.into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, spans)| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![s("service.name", SERVICES[k].into()), s("k8s.namespace.name", "default".into())],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            schema_url: String::new(),
        })
        .collect()
}
