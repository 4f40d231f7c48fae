//! Configuration of the Kafka receiver. Names follow the OTel Collector's `kafka` receiver
//! (`brokers`, `topic`, `group_id`, `encoding`, `initial_offset`, `session_timeout`,
//! `heartbeat_interval`) and Vector's `librdkafka_options`.

use std::collections::BTreeMap;

use serde::Deserialize;
use tracepipe_config::{ByteSize, ConfigError, Duration, Node};

/// The record value format: `otlp_proto` (default) or `otlp_json`.
pub use tracepipe_config::KafkaEncoding as Encoding;

/// Where a new consumer group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InitialOffset {
    /// Only records produced from now on (default, as the OTel Collector).
    #[default]
    Latest,
    /// Everything the topic still holds.
    Earliest,
}

/// `message_marking:` — when a record's offset is stored for commit (the OTel Collector's kafka
/// receiver setting of the same name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessageMarking {
    /// `true` (default): once every sink that got the record's spans is done with them (at least
    /// once); `false`: as soon as the record is read (at most once: a crash loses what is in
    /// flight).
    pub after: bool,
    /// With `after`, what happens to a record whose delivery failed with a retryable error (a
    /// sink gave up after `max_elapsed_time`): `false` (default) keeps it uncommitted and delivers
    /// it again, with backoff, before reading further; `true` commits past it (counted). A
    /// permanent failure (the upstream refused the spans) is always committed past, counted and
    /// logged.
    pub on_error: bool,
}

impl Default for MessageMarking {
    fn default() -> Self {
        MessageMarking { after: true, on_error: false }
    }
}

/// `type: kafka` receiver settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaReceiverConfig {
    /// Bootstrap brokers, `host:port` (default `["localhost:9092"]`).
    pub brokers: Vec<String>,
    /// Topic (default `otlp_spans`).
    pub topic: String,
    /// Consumer group (default `tracepipe`): replicas in one group share the partitions.
    pub group_id: String,
    /// `client.id` (default `tracepipe`).
    pub client_id: String,
    /// `otlp_proto` (default) or `otlp_json`.
    pub encoding: Encoding,
    /// `latest` (default) or `earliest`, for a group without committed offsets.
    pub initial_offset: InitialOffset,
    /// Group session timeout (default 10s).
    pub session_timeout: Duration,
    /// Group heartbeat interval (default 3s).
    pub heartbeat_interval: Duration,
    /// Largest record value read (default 20MiB, as the OTLP HTTP receiver's body limit); a
    /// bigger record is counted as malformed (`body_too_large`) and skipped.
    pub max_record_bytes: ByteSize,
    /// How long shutdown waits for the graph to deliver what was consumed before committing
    /// (default 30s); records not delivered by then are read again after a restart.
    pub shutdown_timeout: Duration,
    /// When offsets are stored for commit, and what a failed delivery does.
    pub message_marking: MessageMarking,
    /// How often delivered offsets are committed (default 1s, as the OTel Collector's
    /// `autocommit.interval`). After a crash, what was delivered since the last commit is read
    /// and delivered again: this bounds the duplicate window.
    pub commit_interval: Duration,
    /// How long a rebalance that takes partitions away waits for the records already read from
    /// them and decided to finish delivering (what processors hold of them is handed back at
    /// once), then commits, before the partitions move (default 500ms). It pauses this replica's
    /// reading meanwhile, so keep it well under the processors' waits; what is not done by then is
    /// read again by the new owner (delivered twice).
    pub revoke_timeout: Duration,
    /// After an outage (every broker unreachable, during which the processors' waits stand
    /// still), how long the waits stay paused once records flow again (default 0s: they resume
    /// with the first record). For a tier fed by another tier that holds spans for a wait of its
    /// own (deploy/scale-out's gateway-2, behind gateway-1's `group_by_trace`): the upstream tier
    /// resumes at the same moment and sends what it held only after its wait, so the rest of a
    /// request read before the outage arrives that much later. At most 5m.
    pub outage_grace: Duration,
    /// A topic where each partition's owner records, every `commit_interval` and before it lets
    /// a partition go, which offsets past its commit it has already finished (delivered, or
    /// dropped by a decision); a replica taking the partition over skips them (absent: none, a new
    /// owner reads everything after the commit again). Created when missing (compacted, as many
    /// partitions as `topic`); one per consumer group and topic read is clearest, though keys
    /// (`group_id/topic/partition`) keep several apart. See receivers/kafka/progress.rs.
    pub progress_topic: Option<String>,
    /// TLS to the brokers (absent: plaintext).
    pub tls: Option<tracepipe_config::KafkaTlsConfig>,
    /// SASL authentication (`auth.sasl`).
    pub auth: tracepipe_config::KafkaAuthConfig,
    /// Any other librdkafka consumer property, applied last.
    pub librdkafka_options: BTreeMap<String, String>,
}

impl Default for KafkaReceiverConfig {
    fn default() -> Self {
        KafkaReceiverConfig {
            brokers: vec!["localhost:9092".into()],
            topic: "otlp_spans".into(),
            group_id: "tracepipe".into(),
            client_id: "tracepipe".into(),
            encoding: Encoding::OtlpProto,
            initial_offset: InitialOffset::Latest,
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(3),
            shutdown_timeout: Duration::from_secs(30),
            max_record_bytes: ByteSize::mib(20),
            message_marking: MessageMarking::default(),
            commit_interval: Duration::from_secs(1),
            revoke_timeout: Duration::from_millis(500),
            outage_grace: Duration::from_secs(0),
            progress_topic: None,
            tls: None,
            auth: Default::default(),
            librdkafka_options: BTreeMap::new(),
        }
    }
}

/// Properties the receiver sets itself; `librdkafka_options` may not set them.
const OWN_KEYS: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "client.id",
    "auto.offset.reset",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.commit.interval.ms",
];

impl KafkaReceiverConfig {
    /// Reads and checks the settings; nothing connects here.
    pub fn from_node(node: &Node, file: &str) -> Result<KafkaReceiverConfig, Vec<ConfigError>> {
        let c: KafkaReceiverConfig = node.deserialize_into(file).map_err(|e| vec![e])?;
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
                kind: "receiver",
                tls: c.tls.as_ref(),
                auth: &c.auth,
            },
        );
        if c.group_id.is_empty() {
            errors.push(ConfigError::new(file, at("group_id"), "group_id must not be empty"));
        }
        if c.heartbeat_interval.get().is_zero() || c.heartbeat_interval.get() >= c.session_timeout.get() {
            errors.push(ConfigError::new(file, at("heartbeat_interval"), "heartbeat_interval must be above 0 and below session_timeout"));
        }
        if c.commit_interval.get().is_zero() {
            errors.push(ConfigError::new(file, at("commit_interval"), "commit_interval must be above 0"));
        }
        if c.outage_grace.get() > std::time::Duration::from_secs(300) {
            errors.push(ConfigError::new(file, at("outage_grace"), "outage_grace must be at most 5m"));
        }
        if let Some(t) = &c.progress_topic {
            if !tracepipe_config::valid_kafka_topic(t) {
                errors.push(ConfigError::new(file, at("progress_topic"), format!("invalid topic {t:?}: 1 to 249 characters of a-z, A-Z, 0-9, '.', '_' and '-'")));
            } else if *t == c.topic {
                errors.push(ConfigError::new(file, at("progress_topic"), "progress_topic must not be the topic read"));
            }
        }
        if c.max_record_bytes.get() == 0 {
            errors.push(ConfigError::new(file, at("max_record_bytes"), "max_record_bytes must be above 0"));
        }
        if errors.is_empty() { Ok(c) } else { Err(errors) }
    }

    /// The librdkafka consumer properties. Offsets are stored by the receiver only once the graph
    /// has delivered a record, and auto-committed from the store.
    pub fn rdkafka_properties(&self) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = vec![
            ("bootstrap.servers".into(), self.brokers.join(",")),
            ("group.id".into(), self.group_id.clone()),
            ("client.id".into(), self.client_id.clone()),
            ("auto.offset.reset".into(), match self.initial_offset { InitialOffset::Latest => "latest", InitialOffset::Earliest => "earliest" }.into()),
            ("session.timeout.ms".into(), self.session_timeout.get().as_millis().to_string()),
            ("heartbeat.interval.ms".into(), self.heartbeat_interval.get().as_millis().to_string()),
            // Incremental rebalancing: a replica joining or leaving moves only the partitions
            // that must move; the others keep reading (and keep what they hold) undisturbed.
            ("partition.assignment.strategy".into(), "cooperative-sticky".into()),
            ("enable.auto.commit".into(), "true".into()),
            ("auto.commit.interval.ms".into(), self.commit_interval.get().as_millis().to_string()),
            ("enable.auto.offset.store".into(), "false".into()),
            // Statistics feed the lag gauge (receivers/kafka/lag.rs).
            ("statistics.interval.ms".into(), "5000".into()),
        ];
        p.extend(tracepipe_config::kafka_security_properties(self.tls.as_ref(), &self.auth));
        p.extend(self.librdkafka_options.iter().map(|(k, v)| (k.clone(), v.clone())));
        p
    }
}
