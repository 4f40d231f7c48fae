//! Kafka sink tests: config checks; records per trace, split to fit; and the task against
//! librdkafka's mock cluster (a real Kafka protocol server inside librdkafka): delivery with keys
//! and partitions, broker errors retried, a dead broker counted, purge at shutdown.

use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, TracesData};
use prost::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracepipe_config::{ByteSize, ComponentKind, Duration as CfgDuration};
use tracepipe_pipeline::telemetry::Health;
use tracepipe_pipeline::topology::{ComponentContext, Input};
use tracepipe_pipeline::{Batch, BatchStatus, Finalizer};

use super::{Encoding, KafkaSinkConfig, Layout};

fn parse(body: &str) -> Result<KafkaSinkConfig, Vec<tracepipe_config::ConfigError>> {
    let text = format!("receivers:\n  a: {{type: otlp}}\nsinks:\n  k:\n    type: kafka\n    inputs: [a]\n{body}");
    let (cfg, errs) = tracepipe_config::load("t.yaml", &text, &|_| None);
    assert!(errs.is_empty(), "{errs}");
    KafkaSinkConfig::from_node(&cfg.sinks[0].body, "t.yaml")
}

/// `tls` and `auth.sasl` become librdkafka's security properties (the protocol from which of
/// them are set); mistakes are reported at their keys, all at once; the password never shows in
/// debug output; `librdkafka_options` may not set what they own.
#[test]
fn tls_and_sasl_settings_become_security_properties() {
    let get = |c: &KafkaSinkConfig, k: &str| c.rdkafka_properties().into_iter().rev().find(|(key, _)| key == k).map(|(_, v)| v);
    let c = parse("").unwrap();
    assert_eq!(get(&c, "security.protocol").as_deref(), Some("plaintext"));
    assert_eq!(get(&c, "sasl.mechanism"), None);
    let c = parse("    tls: { ca_file: /ca.pem, cert_file: /c.pem, key_file: /c.key }\n").unwrap();
    assert_eq!(get(&c, "security.protocol").as_deref(), Some("ssl"));
    assert_eq!(get(&c, "ssl.ca.location").as_deref(), Some("/ca.pem"));
    assert_eq!(get(&c, "ssl.certificate.location").as_deref(), Some("/c.pem"));
    assert_eq!(get(&c, "ssl.key.location").as_deref(), Some("/c.key"));
    assert_eq!(get(&c, "ssl.endpoint.identification.algorithm").as_deref(), Some("https"));
    let c = parse("    tls: { insecure_skip_verify: true }\n    auth: { sasl: { mechanism: SCRAM-SHA-512, username: u, password: s3cret } }\n").unwrap();
    assert_eq!(get(&c, "security.protocol").as_deref(), Some("sasl_ssl"));
    assert_eq!(get(&c, "enable.ssl.certificate.verification").as_deref(), Some("false"));
    assert_eq!(get(&c, "ssl.endpoint.identification.algorithm").as_deref(), Some("none"));
    assert_eq!((get(&c, "sasl.mechanism").as_deref(), get(&c, "sasl.username").as_deref(), get(&c, "sasl.password").as_deref()), (Some("SCRAM-SHA-512"), Some("u"), Some("s3cret")));
    assert!(!format!("{c:?}").contains("s3cret"), "the password is redacted");
    let c = parse("    auth: { sasl: { mechanism: PLAIN, username: u, password: p } }\n").unwrap();
    assert_eq!(get(&c, "security.protocol").as_deref(), Some("sasl_plaintext"));
    let c = parse("    tls: { insecure: true }\n    auth: { sasl: { mechanism: SCRAM-SHA-256, username: u, password: p } }\n").unwrap();
    assert_eq!((get(&c, "security.protocol").as_deref(), get(&c, "sasl.mechanism").as_deref()), (Some("sasl_plaintext"), Some("SCRAM-SHA-256")));
    // Every mistake at once, at its key.
    let e = parse("    tls: { cert_file: /c.pem, insecure: true }\n    auth: { sasl: { mechanism: PLAIN, username: \"\", password: \"\" } }\n    librdkafka_options: { security.protocol: ssl, sasl.password: x }\n").unwrap_err();
    let all: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    for want in ["cert_file and key_file go together", "insecure (plaintext) cannot be combined", "auth.sasl.username is empty", "auth.sasl.password is empty", "`security.protocol` is set by the sink's `tls` and `auth`", "`sasl.password` is set by the sink's `tls` and `auth`"] {
        assert!(all.iter().any(|e| e.contains(want)), "missing {want:?} in {all:#?}");
    }
    assert!(all.iter().all(|e| e.starts_with("t.yaml:")), "{all:?}");
    let e = parse("    auth: { sasl: { mechanism: GSSAPI, username: u, password: p } }\n").unwrap_err();
    assert!(e[0].to_string().contains("GSSAPI") || e[0].to_string().contains("mechanism"), "{e:?}");
    // A librdkafka client made from the properties: OpenSSL and SASL are built in.
    let c = parse("    tls: { insecure_skip_verify: true }\n    auth: { sasl: { mechanism: SCRAM-SHA-256, username: u, password: p } }\n").unwrap();
    let mut cc = ClientConfig::new();
    for (k, v) in c.rdkafka_properties() {
        cc.set(k, v);
    }
    let made: Result<rdkafka::producer::BaseProducer, _> = cc.create();
    assert!(made.is_ok(), "{:?}", made.err());
}

#[test]
fn config_defaults_and_errors() {
    let c = parse("").unwrap();
    assert_eq!(c.brokers, vec!["localhost:9092".to_owned()]);
    assert_eq!(c.topic, "otlp_spans");
    assert_eq!(c.encoding, Encoding::OtlpProto);
    assert!(c.partition_traces_by_id);
    let props = c.rdkafka_properties();
    assert!(props.contains(&("acks".into(), "all".into())), "{props:?}");
    assert!(props.contains(&("message.timeout.ms".into(), "300000".into())), "{props:?}");
    let e = parse("    brokers: [\"kafka://x:9092\", \"k:port\"]\n    topic: \"bad topic\"\n    encoding: avro\n").unwrap_err();
    assert!(e[0].to_string().starts_with("t.yaml:9:15:"), "{}", e[0]);
    let e = parse("    brokers: [\"kafka://x:9092\", \"k:port\"]\n    topic: \"bad topic\"\n    librdkafka_options: { acks: \"0\" }\n").unwrap_err();
    let all: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(all[0].starts_with("t.yaml:7:14: invalid broker \"kafka://x:9092\""), "{all:?}");
    assert!(all[1].contains("invalid broker \"k:port\""), "{all:?}");
    assert!(all[2].starts_with("t.yaml:8:12: invalid topic \"bad topic\""), "{all:?}");
    assert!(all[3].contains("`acks` is set by the sink's own settings"), "{all:?}");
    // Bounds, each reported at its own key.
    let e = parse("    max_message_bytes: 10\n    message_timeout: 0s\n    max_buffer_bytes: 10\n    client_id: \"\"\n    linger: soon\n").unwrap_err();
    assert!(e[0].to_string().starts_with("t.yaml:11:13:"), "{}", e[0]);
    let e = parse("    max_message_bytes: 10\n    message_timeout: 0s\n    max_buffer_bytes: 10\n    client_id: \"\"\n").unwrap_err();
    let all: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(all.iter().any(|m| m.starts_with("t.yaml:7:24: max_message_bytes must be between 1000")), "{all:?}");
    assert!(all.iter().any(|m| m.starts_with("t.yaml:8:22: message_timeout must be above 0")), "{all:?}");
    assert!(all.iter().any(|m| m.starts_with("t.yaml:9:23: max_buffer_bytes must be between 1KiB")), "{all:?}");
    assert!(all.iter().any(|m| m.starts_with("t.yaml:10:16: client_id must not be empty")), "{all:?}");
    // A record that could never fit librdkafka's buffer would wait for room forever.
    let e = parse("    max_message_bytes: 2000000
    max_buffer_bytes: 1MiB
").unwrap_err();
    assert_eq!(e.len(), 1);
    assert!(e[0].to_string().starts_with("t.yaml:7:24: max_message_bytes (2000000) must not exceed max_buffer_bytes (1048576)"), "{}", e[0]);
}

fn span(trace: u8, i: u8, attr_len: usize) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![trace, i, 0, 0, 0, 0, 0, 1],
        name: format!("op-{trace}-{i}"),
        attributes: vec![opentelemetry_proto::tonic::common::v1::KeyValue {
            key: "pad".into(),
            value: Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                value: Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue("x".repeat(attr_len))),
            }),
            key_strindex: 0,
        }],
        ..Default::default()
    }
}

/// `traces` traces of `per` spans each, interleaved, in two resources.
fn batch(traces: u8, per: u8, attr_len: usize) -> Batch {
    let mut rs = Vec::new();
    for r in 0..2u8 {
        let mut spans = Vec::new();
        for i in 0..per {
            for t in 1..=traces {
                if (i + t) % 2 == r {
                    spans.push(span(t, i, attr_len));
                }
            }
        }
        rs.push(ResourceSpans {
            resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                attributes: vec![opentelemetry_proto::tonic::common::v1::KeyValue {
                    key: "service.name".into(),
                    value: Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                        value: Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(format!("svc{r}"))),
                    }),
                    key_strindex: 0,
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        });
    }
    let bytes = TracesData { resource_spans: rs }.encode_to_vec();
    Batch::from_encoded(bytes.into(), traces as usize * per as usize)
}

fn spans_of(payload: &[u8]) -> Vec<(Vec<u8>, String, String)> {
    let td = TracesData::decode(payload).unwrap();
    let mut out = Vec::new();
    for r in td.resource_spans {
        let svc = r.resource.as_ref().map(|res| format!("{:?}", res.attributes[0].value)).unwrap_or_default();
        for ss in r.scope_spans {
            for s in ss.spans {
                out.push((s.trace_id, s.name, svc.clone()));
            }
        }
    }
    out
}

#[test]
fn one_record_per_trace_keyed_by_hex_trace_id() {
    let b = batch(3, 4, 10);
    let layout = Layout { encoding: Encoding::OtlpProto, by_trace: true, max_bytes: 1_000_000 };
    let r = layout.records(&b, None).unwrap();
    assert_eq!(r.records.len(), 3);
    assert_eq!(r.oversized_spans, 0);
    for rec in &r.records {
        let spans = spans_of(&rec.payload);
        assert_eq!(spans.len(), 4);
        assert_eq!(rec.spans, 4);
        let key = rec.key.as_deref().unwrap();
        assert_eq!(key, hex::encode(&spans[0].0));
        assert!(spans.iter().all(|s| hex::encode(&s.0) == key));
        // Each span keeps its own resource: spans of one trace came from both resources.
        assert!(spans.iter().any(|s| s.2.contains("svc0")) && spans.iter().any(|s| s.2.contains("svc1")), "{spans:?}");
    }
}

/// `partition_by: guid_or_trace_id`: a trace whose spans carry a request id is keyed by it (the
/// smallest when several, counted), a later record of the same trace without it by the
/// remembered guid, an unrelated trace by its hex id; the wire path and the struct path agree.
#[test]
fn guid_or_trace_id_keys_fragments_of_one_request_together() {
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    let kv = |k: &str, v: &str| KeyValue { key: k.into(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }), key_strindex: 0 };
    let span = |trace: u8, id: u8, guid: Option<&str>| Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        attributes: guid.map(|g| vec![kv("http.method", "GET"), kv("guid:x-request-id", g)]).unwrap_or_default(),
        ..Default::default()
    };
    let encode = |spans: Vec<Span>| {
        let n = spans.len();
        let td = TracesData { resource_spans: vec![ResourceSpans { scope_spans: vec![ScopeSpans { spans, ..Default::default() }], ..Default::default() }] };
        Batch::from_encoded(td.encode_to_vec().into(), n)
    };
    let layout = Layout { encoding: Encoding::OtlpProto, by_trace: true, max_bytes: 1_000_000 };
    for decoded in [false, true] {
        let prep = |b: Batch| if decoded { Batch::from_resource_spans(b.to_resource_spans().unwrap()) } else { b };
        let mut keys = super::GuidKeys::new("guid:x-request-id", 100);
        // Trace 1: an SDK span and a proxy span with guid "r1"; trace 2: guid "r1"; trace 3: none;
        // trace 4: two guids.
        let first = prep(encode(vec![span(1, 1, None), span(1, 2, Some("r1")), span(2, 3, Some("r1")), span(3, 4, None), span(4, 5, Some("zz")), span(4, 6, Some("aa"))]));
        let r = layout.records(&first, Some(&mut keys)).unwrap();
        let got: Vec<(String, usize)> = r.records.iter().map(|r| (r.key.clone().unwrap(), r.spans)).collect();
        assert_eq!(got, vec![("r1".into(), 2), ("r1".into(), 1), (hex::encode([3u8; 16]), 1), ("aa".into(), 2)], "decoded={decoded}");
        assert_eq!(keys.conflicts, 1);
        // A late SDK span of trace 1 alone: keyed by the guid its trace was seen with.
        let late = prep(encode(vec![span(1, 7, None)]));
        let r = layout.records(&late, Some(&mut keys)).unwrap();
        assert_eq!(r.records[0].key.as_deref(), Some("r1"), "decoded={decoded}");
        // Without the keying, trace ids as before.
        let r = layout.records(&late, None).unwrap();
        assert_eq!(r.records[0].key, Some(hex::encode([1u8; 16])));
    }
    // Replayed context (pipeline::replay; a sink's input removes it before the sink sees the
    // batch) teaches the request id of its traces: a late SDK span beside it, on a replica that
    // never saw the request, is keyed like on the previous owner.
    let mut keys = super::GuidKeys::new("guid:x-request-id", 100);
    let context = ResourceSpans { scope_spans: vec![ScopeSpans { spans: vec![span(5, 1, Some("r5")), span(5, 2, None)], ..Default::default() }], ..Default::default() };
    super::learn_guids(&mut keys, &[&context]);
    let r = layout.records(&encode(vec![span(5, 3, None)]), Some(&mut keys)).unwrap();
    assert_eq!(r.records[0].key.as_deref(), Some("r5"));
    // The cache forgets its oldest half at the bound.
    let mut keys = super::GuidKeys::new("g", 4);
    for t in 0..10u8 {
        keys.key(&[t; 16], std::iter::once(format!("g{t}").as_str()));
    }
    assert_eq!(keys.key(&[9; 16], std::iter::empty()), "g9");
    assert_eq!(keys.key(&[0; 16], std::iter::empty()), hex::encode([0u8; 16]));
}

#[test]
fn partition_by_guid_needs_per_trace_records() {
    let c = parse("    partition_by: guid_or_trace_id\n").unwrap();
    assert_eq!(c.partition_by, super::PartitionBy::GuidOrTraceId);
    let e = parse("    partition_by: guid_or_trace_id\n    partition_traces_by_id: false\n").unwrap_err();
    assert!(e[0].to_string().starts_with("t.yaml:7:19: partition_by: guid_or_trace_id needs partition_traces_by_id: true"), "{}", e[0]);
    assert!(parse("    partition_by: guid\n").unwrap_err()[0].to_string().contains("trace_id"));
}

#[test]
fn regrouped_bytes_and_decoded_structs_give_the_same_records() {
    let encoded = batch(4, 5, 10);
    let decoded = Batch::from_resource_spans(encoded.to_resource_spans().unwrap());
    let layout = Layout { encoding: Encoding::OtlpProto, by_trace: true, max_bytes: 1_000_000 };
    let (a, b) = (layout.records(&encoded, None).unwrap(), layout.records(&decoded, None).unwrap());
    assert_eq!(a.records.len(), 4);
    for (x, y) in a.records.iter().zip(&b.records) {
        assert_eq!((&x.key, x.spans), (&y.key, y.spans));
        assert_eq!(TracesData::decode(&x.payload[..]).unwrap(), TracesData::decode(&y.payload[..]).unwrap());
    }
}

#[test]
fn unkeyed_encoded_batch_is_sent_as_received() {
    let b = batch(3, 4, 10);
    let layout = Layout { encoding: Encoding::OtlpProto, by_trace: false, max_bytes: 1_000_000 };
    assert!(!layout.rebuilds(&b));
    let r = layout.records(&b, None).unwrap();
    assert_eq!(r.records.len(), 1);
    assert!(r.records[0].key.is_none());
    assert_eq!(r.records[0].payload, b.to_bytes());
}

#[test]
fn records_are_split_to_fit_and_a_lone_giant_span_is_counted() {
    // 3 traces x 8 spans of ~1 KiB each; records of at most 3000 bytes.
    let b = batch(3, 8, 1000);
    for (by_trace, encoding) in [(true, Encoding::OtlpProto), (false, Encoding::OtlpProto), (true, Encoding::OtlpJson)] {
        let layout = Layout { encoding, by_trace, max_bytes: 3000 };
        let r = layout.records(&b, None).unwrap();
        assert_eq!(r.oversized_spans, 0);
        assert!(r.records.len() >= 8, "{by_trace} {encoding:?}: {}", r.records.len());
        assert!(r.records.iter().all(|x| x.payload.len() <= 3000));
        assert_eq!(r.records.iter().map(|x| x.spans).sum::<usize>(), 24);
        if encoding == Encoding::OtlpJson {
            let v: serde_json::Value = serde_json::from_slice(&r.records[0].payload).unwrap();
            assert!(v["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"].as_str().unwrap().len() == 32);
        }
    }
    let giant = batch(1, 2, 5000);
    let r = Layout { encoding: Encoding::OtlpProto, by_trace: true, max_bytes: 3000 }.records(&giant, None).unwrap();
    assert_eq!(r.oversized_spans, 2);
    assert!(r.records.is_empty());
}

fn ctx(input: Input, shutdown: CancellationToken) -> ComponentContext {
    ComponentContext { name: "k".into(), kind: ComponentKind::Sink, input: Some(input), output: None, shutdown, health: Health::default() }
}

fn sink_config(brokers: &str, topic: &str) -> KafkaSinkConfig {
    KafkaSinkConfig { brokers: vec![brokers.to_owned()], topic: topic.to_owned(), linger: CfgDuration::from_millis(1), ..Default::default() }
}

/// A batch whose finalizer reports its status on the returned channel.
fn tracked(b: Batch) -> (Batch, mpsc::UnboundedReceiver<BatchStatus>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        b.with_finalizer(Finalizer::new(move |s| {
            let _ = tx.send(s);
        })),
        rx,
    )
}

/// Reads every record of `topic` (all partitions) until `want` arrived or 20 s passed.
fn consume(bootstrap: &str, topic: &str, partitions: i32, want: usize) -> Vec<(i32, Option<String>, Vec<u8>)> {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", "t").create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while out.len() < want && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push((m.partition(), m.key().map(|k| String::from_utf8_lossy(k).into_owned()), m.payload().unwrap_or_default().to_vec()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_every_trace_to_one_partition_through_broker_errors() {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("spans", 4, 1).unwrap();
    // The first produce requests fail with retryable errors; librdkafka retries them.
    mock.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS, RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT]);
    let bootstrap = mock.bootstrap_servers();
    let (tx, input) = Input::channel(4);
    let task = super::build(sink_config(&bootstrap, "spans"), ctx(input, CancellationToken::new())).await.unwrap();
    let h = tokio::spawn(task);
    let (b1, mut s1) = tracked(batch(10, 3, 10));
    let (b2, mut s2) = tracked(batch(5, 2, 10));
    tx.send(b1).await.unwrap();
    tx.send(b2).await.unwrap();
    drop(tx);
    h.await.unwrap().unwrap();
    assert_eq!(s1.recv().await, Some(BatchStatus::Delivered));
    assert_eq!(s2.recv().await, Some(BatchStatus::Delivered));
    let bs = bootstrap.clone();
    let recs = tokio::task::spawn_blocking(move || consume(&bs, "spans", 4, 15)).await.unwrap();
    assert_eq!(recs.len(), 15, "10 + 5 traces, one record each");
    let mut partition_of = std::collections::HashMap::new();
    let mut spans = 0;
    for (p, key, payload) in &recs {
        let key = key.clone().expect("keyed by trace id");
        for (tid, _, _) in spans_of(payload) {
            assert_eq!(hex::encode(tid), key);
            spans += 1;
        }
        // Batches 1 and 2 reuse trace ids 1..=5: the same key lands on the same partition.
        assert_eq!(*partition_of.entry(key).or_insert(*p), *p);
    }
    assert_eq!(spans, 30 + 10);
    assert!(partition_of.values().collect::<std::collections::HashSet<_>>().len() > 1, "traces spread over partitions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_broker_ends_in_retries_exhausted() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("spans", 1, 1).unwrap();
    mock.broker_down(1).unwrap();
    let cfg = KafkaSinkConfig { message_timeout: CfgDuration::from_millis(1500), ..sink_config(&mock.bootstrap_servers(), "spans") };
    let (tx, input) = Input::channel(4);
    let health = Health::default();
    let mut c = ctx(input, CancellationToken::new());
    c.health = health.clone();
    let h = tokio::spawn(super::build(cfg, c).await.unwrap());
    let (b, mut s) = tracked(batch(2, 2, 10));
    tx.send(b).await.unwrap();
    drop(tx);
    tokio::time::timeout(Duration::from_secs(30), h).await.expect("ends after message_timeout").unwrap().unwrap();
    assert_eq!(s.recv().await, Some(BatchStatus::Errored));
    let why = health.readiness().unwrap_err().join(" ");
    assert!(why.contains("timed out"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_purges_what_kafka_never_acknowledged() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("spans", 1, 1).unwrap();
    mock.broker_down(1).unwrap();
    // message_timeout is long: only the shutdown purge can end this batch.
    let cfg = KafkaSinkConfig { partition_traces_by_id: false, ..sink_config(&mock.bootstrap_servers(), "spans") };
    let shutdown = CancellationToken::new();
    let (tx, input) = Input::channel(4);
    let h = tokio::spawn(super::build(cfg, ctx(input, shutdown.clone())).await.unwrap());
    let (b, mut s) = tracked(batch(2, 2, 10));
    tx.send(b).await.unwrap();
    drop(tx);
    let started = std::time::Instant::now();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(40), h).await.expect("purged after the shutdown budget").unwrap().unwrap();
    assert!(started.elapsed() >= Duration::from_secs(19), "waited for acknowledgements first");
    assert_eq!(s.recv().await, Some(BatchStatus::Errored));
}

#[tokio::test]
async fn bad_librdkafka_option_fails_the_build_with_its_name() {
    let (_tx, input) = Input::channel(1);
    let mut cfg = sink_config("127.0.0.1:9", "spans");
    cfg.librdkafka_options.insert("no.such.property".into(), "1".into());
    cfg.max_buffer_bytes = ByteSize::mib(1);
    let err = match super::build(cfg, ctx(input, CancellationToken::new())).await {
        Ok(_) => panic!("built with an unknown property"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("no.such.property"), "{err}");
}

/// One huge resource shared by very many traces is not copied whole into every trace's record
/// (K × N): past the batch's budget its attributes are cut (service.name kept, the cut in the
/// resource's dropped count) and counted. Encoded and decoded batches alike.
#[test]
fn a_huge_resource_over_many_traces_is_cut_not_copied_into_every_record() {
    use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    let mut attrs: Vec<KeyValue> = (0..500).map(|i| KeyValue { key: format!("k{i}"), value: Some(AnyValue { value: Some(Value::StringValue("v".repeat(1000))) }), key_strindex: 0 }).collect();
    attrs.push(KeyValue { key: "service.name".into(), value: Some(AnyValue { value: Some(Value::StringValue("big".into())) }), key_strindex: 0 });
    let spans: Vec<Span> = (0..20_000u32).map(|i| Span { trace_id: [i.to_be_bytes(); 4].concat(), span_id: vec![1; 8], ..Default::default() }).collect();
    let rs = vec![ResourceSpans { resource: Some(Resource { attributes: attrs, ..Default::default() }), scope_spans: vec![ScopeSpans { spans, ..Default::default() }], ..Default::default() }];
    let bytes = TracesData { resource_spans: rs.clone() }.encode_to_vec();
    let layout = Layout { encoding: Encoding::OtlpProto, by_trace: true, max_bytes: 1_000_000 };
    for b in [Batch::from_encoded(bytes.clone().into(), 20_000), Batch::from_resource_spans(rs.clone())] {
        let r = layout.records(&b, None).unwrap();
        assert_eq!(r.records.len(), 20_000, "still one record per trace");
        assert!(r.truncated_attributes >= 450, "{}", r.truncated_attributes);
        let total: usize = r.records.iter().map(|x| x.payload.len()).sum();
        // 20,000 copies of a 500 KB resource would be 10 GB.
        assert!(total as u64 <= 32 * bytes.len() as u64 + (4 << 20) + 20_000 * 64, "{total} bytes of records for a {}-byte batch", bytes.len());
        let first = TracesData::decode(&r.records[0].payload[..]).unwrap();
        let res = first.resource_spans[0].resource.as_ref().unwrap();
        assert!(res.attributes.iter().any(|kv| kv.key == "service.name"));
        assert_eq!(res.attributes.len() as u32 + res.dropped_attributes_count, 501);
    }
    // A batch within its budget is left alone.
    let small = batch(4, 5, 10);
    assert_eq!(layout.records(&small, None).unwrap().truncated_attributes, 0);
}

/// The sink's counters, read from a local recorder installed while it is built.
mod counted {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

    use super::*;

    fn failed(snap: &Snapshotter, reason: &str) -> u64 {
        snap.snapshot()
            .into_vec()
            .into_iter()
            .filter(|(k, ..)| k.key().name() == "tracepipe_sink_failed_spans_total" && k.key().labels().any(|l| l.key() == "reason" && l.value() == reason))
            .map(|(.., v)| match v {
                DebugValue::Counter(c) => c,
                other => panic!("{other:?}"),
            })
            .sum()
    }

    async fn run(cfg: KafkaSinkConfig, batches: Vec<Batch>) -> (Snapshotter, Vec<BatchStatus>) {
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        let (tx, input) = Input::channel(4);
        let task = {
            let _local = metrics::set_default_local_recorder(&recorder);
            super::super::build(cfg, ctx(input, CancellationToken::new())).await.unwrap()
        };
        let h = tokio::spawn(task);
        let mut statuses = Vec::new();
        for b in batches {
            let (b, s) = tracked(b);
            tx.send(b).await.unwrap();
            statuses.push(s);
        }
        drop(tx);
        tokio::time::timeout(Duration::from_secs(30), h).await.expect("the sink ends").unwrap().unwrap();
        let mut out = Vec::new();
        for mut s in statuses {
            out.push(s.recv().await.expect("a status"));
        }
        (snap, out)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broker_refusal_for_good_is_permanent_rejected_and_counted() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("spans", 1, 1).unwrap();
        // Not retriable: librdkafka fails the record at once.
        mock.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 4]);
        let cfg = KafkaSinkConfig { partition_traces_by_id: false, ..sink_config(&mock.bootstrap_servers(), "spans") };
        let (snap, statuses) = run(cfg, vec![batch(2, 2, 10)]).await;
        assert_eq!(statuses, vec![BatchStatus::Rejected]);
        assert_eq!(failed(&snap, "permanent"), 4);
        assert_eq!(failed(&snap, "retries_exhausted"), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_span_larger_than_max_message_bytes_is_counted_the_rest_delivered() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("spans", 1, 1).unwrap();
        let cfg = KafkaSinkConfig { max_message_bytes: ByteSize(4000), ..sink_config(&mock.bootstrap_servers(), "spans") };
        // Trace 1: two spans of ~5 kB (each alone over the limit); the other batch fits.
        let (snap, statuses) = run(cfg, vec![batch(1, 2, 5000), batch(3, 2, 10)]).await;
        assert_eq!(failed(&snap, "message_too_large"), 2);
        assert_eq!(statuses[1], BatchStatus::Delivered);
        assert_ne!(statuses[0], BatchStatus::Delivered, "a batch with a dropped span is not reported delivered");
        let bs = mock.bootstrap_servers();
        let recs = tokio::task::spawn_blocking(move || consume(&bs, "spans", 1, 3)).await.unwrap();
        assert_eq!(recs.len(), 3, "the three traces that fit, one record each");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_librdkafka_buffer_stops_the_input_until_the_broker_takes_it() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("spans", 1, 1).unwrap();
        mock.broker_down(1).unwrap();
        let mut cfg = KafkaSinkConfig { partition_traces_by_id: false, max_message_bytes: ByteSize(64 * 1024), ..sink_config(&mock.bootstrap_servers(), "spans") };
        cfg.max_buffer_bytes = ByteSize(256 * 1024);
        cfg.message_timeout = CfgDuration::from_secs(60);
        let (tx, input) = Input::channel(1);
        let h = tokio::spawn(super::super::build(cfg, ctx(input, CancellationToken::new())).await.unwrap());
        // Batches of ~40 kB: the 256 KiB buffer takes about six, the channel one more; then
        // sends wait.
        let mut sent = 0usize;
        let mut statuses = Vec::new();
        loop {
            let (b, s) = tracked(batch(4, 10, 1000));
            match tokio::time::timeout(Duration::from_millis(500), tx.send(b)).await {
                Ok(r) => {
                    r.unwrap();
                    statuses.push(s);
                    sent += 1;
                    assert!(sent < 50, "the input never stopped: the buffer is not bounded");
                }
                Err(_) => break,
            }
        }
        assert!(sent >= 3, "stopped after {sent} batches");
        // The broker comes back: everything waiting is delivered and the input moves again.
        mock.broker_up(1).unwrap();
        let (b, s) = tracked(batch(4, 10, 1000));
        tokio::time::timeout(Duration::from_secs(30), tx.send(b)).await.expect("input moves again").unwrap();
        statuses.push(s);
        drop(tx);
        tokio::time::timeout(Duration::from_secs(60), h).await.expect("drains").unwrap().unwrap();
        for mut s in statuses {
            assert_eq!(s.recv().await, Some(BatchStatus::Delivered));
        }
    }
}
