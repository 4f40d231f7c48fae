//! Configuration of the Kafka sink. Names follow the OTel Collector's `kafka` exporter
//! (`brokers`, `topic`, `encoding`, `partition_traces_by_id`) and Vector's `librdkafka_options`.

use std::collections::BTreeMap;

use serde::Deserialize;
use tracepipe_config::{ByteSize, ConfigError, Duration, Node};

/// The record value format: `otlp_proto` (default) or `otlp_json`.
pub use tracepipe_config::KafkaEncoding as Encoding;

/// Which replicas must have a record before it counts as delivered (librdkafka's `acks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Acks {
    /// Every in-sync replica (default): nothing acknowledged is lost when a broker dies.
    #[default]
    All,
    /// The partition leader only.
    Leader,
    /// No acknowledgement at all (fire and forget; losses are not seen).
    None,
}

impl Acks {
    /// The librdkafka value.
    pub fn as_rdkafka(self) -> &'static str {
        match self {
            Acks::All => "all",
            Acks::Leader => "1",
            Acks::None => "0",
        }
    }
}

/// Record batch compression on the wire (librdkafka's `compression.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Uncompressed (default, as the OTel Collector).
    #[default]
    None,
    /// gzip.
    Gzip,
    /// snappy.
    Snappy,
    /// lz4.
    Lz4,
}

impl Compression {
    /// The librdkafka value.
    pub fn as_rdkafka(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
        }
    }
}

/// How trace records are keyed (`partition_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PartitionBy {
    /// The trace id in hex (default).
    #[default]
    TraceId,
    /// The request id (`guid_attribute`) when the trace has one, else the trace id.
    GuidOrTraceId,
}

/// `type: kafka` settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, `host:port` (default `["localhost:9092"]`).
    pub brokers: Vec<String>,
    /// Topic (default `otlp_spans`, as the OTel Collector).
    pub topic: String,
    /// `otlp_proto` (default) or `otlp_json`.
    pub encoding: Encoding,
    /// One record per trace, keyed by the trace id in hex, so a trace's spans share a partition
    /// and a consumer (a tail sampler behind Kafka) sees whole traces. Default true (the OTel
    /// Collector's default is false; tracepipe's gateway tier relies on it). When false a batch is
    /// one record without a key, written as received (no decoding).
    pub partition_traces_by_id: bool,
    /// What a trace's records are keyed by, with `partition_traces_by_id`: `trace_id` (default,
    /// hex) or `guid_or_trace_id`: the value of `guid_attribute` when a span of the trace carries
    /// it (the smallest, if several), else the guid this trace id was last seen with, else the
    /// trace id. Fragments of one request that proxies split into several traces then share a
    /// partition, so one consumer rebuilds them (see ARCHITECTURE.md, scale-out).
    pub partition_by: PartitionBy,
    /// The attribute carrying the request id (default `guid:x-request-id`, as Envoy and Istio).
    pub guid_attribute: String,
    /// Trace ids remembered with their guid, for spans of a trace that arrive after its guid was
    /// seen (default 100000; about 100 bytes each).
    pub guid_cache_size: usize,
    /// `all` (default), `leader` or `none`.
    pub acks: Acks,
    /// `none` (default), `gzip`, `snappy` or `lz4`.
    pub compression: Compression,
    /// Largest record (librdkafka `message.max.bytes`, default 1000000 as Kafka's own limit);
    /// bigger batches and traces are split by spans before they are sent.
    pub max_message_bytes: ByteSize,
    /// How long librdkafka keeps retrying a record before it counts as failed
    /// (`message.timeout.ms`, default 300s, as the OTel Collector's `max_elapsed_time`).
    pub message_timeout: Duration,
    /// Memory for records not yet acknowledged (`queue.buffering.max.kbytes`, default 128MiB);
    /// when full the sink stops reading and backpressure reaches the receivers.
    pub max_buffer_bytes: ByteSize,
    /// How long records wait to fill a request (`linger.ms`, default 5ms).
    pub linger: Duration,
    /// `client.id` (default `tracepipe`).
    pub client_id: String,
    /// TLS to the brokers (absent: plaintext).
    pub tls: Option<tracepipe_config::KafkaTlsConfig>,
    /// SASL authentication (`auth.sasl`).
    pub auth: tracepipe_config::KafkaAuthConfig,
    /// Any other librdkafka producer property, applied last.
    pub librdkafka_options: BTreeMap<String, String>,
    /// A disk queue in front of the producer (absent: batches go straight to librdkafka's buffer).
    pub queue: KafkaQueueConfig,
}

/// `queue:` settings of the Kafka sink.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaQueueConfig {
    /// Keep batches on disk until Kafka acknowledged them (see [`crate::queue`]).
    pub storage: Option<crate::queue::StorageConfig>,
    /// With `storage`: `block` (default) or `drop_newest` when it is full.
    pub when_full: crate::otlp::WhenFull,
    /// With `storage`: batches produced at once (default 16).
    pub num_consumers: usize,
}

impl Default for KafkaQueueConfig {
    fn default() -> Self {
        KafkaQueueConfig { storage: None, when_full: crate::otlp::WhenFull::Block, num_consumers: 16 }
    }
}

impl Default for KafkaSinkConfig {
    fn default() -> Self {
        KafkaSinkConfig {
            brokers: vec!["localhost:9092".into()],
            topic: "otlp_spans".into(),
            encoding: Encoding::OtlpProto,
            partition_traces_by_id: true,
            partition_by: PartitionBy::TraceId,
            guid_attribute: "guid:x-request-id".into(),
            guid_cache_size: 100_000,
            acks: Acks::All,
            compression: Compression::None,
            max_message_bytes: ByteSize(1_000_000),
            message_timeout: Duration::from_secs(300),
            max_buffer_bytes: ByteSize::mib(128),
            linger: Duration::from_millis(5),
            client_id: "tracepipe".into(),
            tls: None,
            auth: Default::default(),
            librdkafka_options: BTreeMap::new(),
            queue: KafkaQueueConfig::default(),
        }
    }
}

impl KafkaSinkConfig {
    /// Reads and checks the settings; nothing connects here (librdkafka checks
    /// `librdkafka_options` when the sink is built).
    pub fn from_node(node: &Node, file: &str) -> Result<KafkaSinkConfig, Vec<ConfigError>> {
        let c: KafkaSinkConfig = node.deserialize_into(file).map_err(|e| vec![e])?;
        let at = |k: &str| node.get(k).map(|n| n.pos).unwrap_or(node.pos);
        let mut errors = tracepipe_config::check_kafka_common(
            node,
            file,
            tracepipe_config::KafkaCommon {
                brokers: &c.brokers,
                topic: &c.topic,
                client_id: &c.client_id,
                librdkafka_options: &c.librdkafka_options,
                own_keys: OWN_KEYS,
                kind: "sink",
                tls: c.tls.as_ref(),
                auth: &c.auth,
            },
        );
        if c.queue.num_consumers == 0 {
            errors.push(ConfigError::new(file, at("queue"), "queue: num_consumers must be above 0"));
        }
        if let Some(st) = &c.queue.storage {
            st.check(file, at("queue"), &mut errors);
        }
        // librdkafka's own bounds for message.max.bytes.
        if !(1000..=1_000_000_000).contains(&c.max_message_bytes.get()) {
            errors.push(ConfigError::new(file, at("max_message_bytes"), "max_message_bytes must be between 1000 and 1000000000"));
        }
        if c.partition_by == PartitionBy::GuidOrTraceId && !c.partition_traces_by_id {
            errors.push(ConfigError::new(file, at("partition_by"), "partition_by: guid_or_trace_id needs partition_traces_by_id: true (records are keyed per trace)"));
        }
        if c.guid_attribute.is_empty() {
            errors.push(ConfigError::new(file, at("guid_attribute"), "guid_attribute must not be empty"));
        }
        if c.message_timeout.get().is_zero() {
            errors.push(ConfigError::new(file, at("message_timeout"), "message_timeout must be above 0"));
        }
        if c.max_buffer_bytes.get() < 1024 || c.max_buffer_bytes.get() / 1024 > i32::MAX as u64 {
            errors.push(ConfigError::new(file, at("max_buffer_bytes"), "max_buffer_bytes must be between 1KiB and 2TiB"));
        }
        if c.max_message_bytes.get() > c.max_buffer_bytes.get() {
            // A record that cannot fit librdkafka's buffer would wait for room forever.
            errors.push(ConfigError::new(
                file,
                at("max_message_bytes"),
                format!("max_message_bytes ({}) must not exceed max_buffer_bytes ({})", c.max_message_bytes.get(), c.max_buffer_bytes.get()),
            ));
        }
        if errors.is_empty() { Ok(c) } else { Err(errors) }
    }

    /// The librdkafka producer properties, own settings first, then `librdkafka_options`.
    pub fn rdkafka_properties(&self) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = vec![
            ("bootstrap.servers".into(), self.brokers.join(",")),
            ("client.id".into(), self.client_id.clone()),
            ("acks".into(), self.acks.as_rdkafka().into()),
            ("compression.type".into(), self.compression.as_rdkafka().into()),
            ("message.max.bytes".into(), self.max_message_bytes.get().to_string()),
            ("message.timeout.ms".into(), self.message_timeout.get().as_millis().to_string()),
            ("queue.buffering.max.kbytes".into(), (self.max_buffer_bytes.get() / 1024).to_string()),
            ("linger.ms".into(), self.linger.get().as_millis().to_string()),
        ];
        p.extend(tracepipe_config::kafka_security_properties(self.tls.as_ref(), &self.auth));
        p.extend(self.librdkafka_options.iter().map(|(k, v)| (k.clone(), v.clone())));
        p
    }
}

/// Properties the sink's own settings own; `librdkafka_options` may not set them.
const OWN_KEYS: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "client.id",
    "acks",
    "request.required.acks",
    "compression.type",
    "compression.codec",
    "message.max.bytes",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "queue.buffering.max.kbytes",
    "linger.ms",
    "queue.buffering.max.ms",
];
