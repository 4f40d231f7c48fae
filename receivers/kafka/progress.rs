//! `progress_topic`: what each partition's owner has finished past its committed offset, kept in
//! Kafka so that it outlives the owner.
//!
//! A commit covers a prefix of offsets; records behind a tail-sampling or guid-inference wait
//! finish out of order, so at any moment many records past the committable prefix are already
//! delivered (or dropped by a decision). Without this log a replica that takes a partition over
//! (after a kill -9, a broker outage that expired the session, or a rebalance whose hand-over
//! timed out) reads them again: a request whose records straddle the commit is delivered twice,
//! or decided again on the part re-read — kept when it was dropped, or delivered half.
//!
//! Every `commit_interval`, and synchronously before a revoked partition is let go and at
//! shutdown, the owner writes one record per partition whose progress changed: key
//! `{group_id}/{topic}/{partition}`, value `{"next":N,"done":[[a,b],...]}` (JSON, readable with any
//! Kafka tool), to partition `partition % partitions` of the log, in order (one request in
//! flight). A new owner reads the tail of that partition before it fetches a record
//! ([`ProgressLog::read`], from the rebalance callback) and skips what it names. The log only
//! ever names offsets that were finished, so a stale or missing record costs duplicates (the
//! window between two writes), never a loss. The log is created when missing, with as many
//! partitions as the topic read and `cleanup.policy=compact` (only the last record per key
//! matters).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::client::ClientContext;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::offsets::Progress;

/// How many of the log partition's last records a new owner reads looking for its key: every
/// owner writes each of its partitions' progress at least every `commit_interval` while it
/// changes, so the latest for a key is among the last few per partition of the topic read.
const TAIL: i64 = 1024;

/// Progress unchanged this long is written again, so the latest record for every partition owned
/// stays within [`TAIL`] of the log's end.
const REFRESH: Duration = Duration::from_secs(5);

/// How long a read or the topic's setup may block the rebalance callback.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The progress producer's context: its connection errors repeat the receiver's own (same
/// brokers), which logs them; a record it fails to write is logged by `flush`.
pub struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, _: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(message = "librdkafka (progress_topic producer).", fac, log = message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::debug!(message = "progress_topic producer error.", %error, reason);
    }
}

impl ProducerContext for Quiet {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            tracing::debug!(message = "Progress record not written.", error = %e);
        }
    }
}

/// The progress log of one receiver.
pub struct ProgressLog {
    topic: String,
    /// The topic read, whose partitions the keys name.
    source: String,
    /// `{group_id}/{topic}/`.
    prefix: String,
    client: ClientConfig,
    producer: ThreadedProducer<Quiet>,
    /// The log's partition count, once known (the topic exists).
    partitions: Mutex<Option<i32>>,
    /// What was last written per partition, and when: unchanged progress is written again only
    /// after [`REFRESH`].
    written: Mutex<HashMap<i32, (Progress, Instant)>>,
}

impl ProgressLog {
    /// For a receiver with these client properties (brokers, TLS, SASL) reading `source` in
    /// `group`. Nothing connects here.
    pub fn new(properties: &[(String, String)], group: &str, source: &str, topic: &str) -> Result<ProgressLog, String> {
        let mut client = ClientConfig::new();
        for (k, v) in properties {
            // Only what reaches the brokers: consumer-group properties stay with the receiver.
            if k == "bootstrap.servers" || k == "client.id" || k.starts_with("security.") || k.starts_with("ssl.") || k.starts_with("sasl.") {
                client.set(k, v);
            }
        }
        let mut pc = client.clone();
        // In order: a later progress record never lands before an earlier one.
        pc.set("max.in.flight.requests.per.connection", "1").set("linger.ms", "5").set("message.timeout.ms", "30000");
        let producer = pc.create_with_context(Quiet).map_err(|e| format!("cannot create the progress_topic producer: {e}"))?;
        Ok(ProgressLog {
            topic: topic.to_owned(),
            source: source.to_owned(),
            prefix: format!("{group}/{source}/"),
            client,
            producer,
            partitions: Mutex::new(None),
            written: Mutex::new(HashMap::new()),
        })
    }

    /// The log's partition count; creates the topic when it does not exist. Blocks (bounded).
    fn partitions(&self) -> Option<i32> {
        let mut known = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        if known.is_none() {
            match self.setup() {
                Ok(n) => *known = Some(n),
                Err(e) => tracing::warn!(message = "progress_topic not available; a new owner of these partitions may read finished records again.", topic = %self.topic, error = %e),
            }
        }
        *known
    }

    fn setup(&self) -> Result<i32, String> {
        let count = |topic: &str| -> Result<usize, String> {
            let md = self.producer.client().fetch_metadata(Some(topic), READ_TIMEOUT).map_err(|e| e.to_string())?;
            Ok(md.topics().first().filter(|t| t.error().is_none()).map(|t| t.partitions().len()).unwrap_or(0))
        };
        let n = count(&self.topic)?;
        if n > 0 {
            return Ok(n as i32);
        }
        let source = count(&self.source)?.max(1) as i32;
        let admin: AdminClient<DefaultClientContext> = self.client.create().map_err(|e| e.to_string())?;
        let topic = NewTopic::new(&self.topic, source, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
        let opts = AdminOptions::new().operation_timeout(Some(READ_TIMEOUT));
        let created = futures::executor::block_on(admin.create_topics([&topic], &opts)).map_err(|e| e.to_string())?;
        for r in created {
            match r {
                Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, e)) => return Err(format!("cannot create `{t}`: {e}")),
            }
        }
        tracing::info!(message = "progress_topic created.", topic = %self.topic, partitions = source);
        // Metadata follows creation after a moment.
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            let n = count(&self.topic)?;
            if n > 0 {
                return Ok(n as i32);
            }
            if Instant::now() >= deadline {
                return Err(format!("`{}` created but not visible yet", self.topic));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn key(&self, partition: i32) -> String {
        format!("{}{partition}", self.prefix)
    }

    /// Queues a record for each partition whose progress changed since it was last written (or
    /// was written more than [`REFRESH`] ago). Blocks only the first time (the topic's metadata).
    pub fn write(&self, progress: &[(i32, Progress)]) {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let changed: Vec<&(i32, Progress)> =
            progress.iter().filter(|(p, pr)| written.get(p).is_none_or(|(w, at)| w != pr || at.elapsed() >= REFRESH)).collect();
        if changed.is_empty() {
            return;
        }
        let Some(n) = self.partitions() else { return };
        for (p, pr) in changed {
            let key = self.key(*p);
            let value = serde_json::to_vec(pr).expect("plain numbers");
            match self.producer.send(BaseRecord::to(&self.topic).partition(p % n).key(&key).payload(&value)) {
                Ok(()) => {
                    written.insert(*p, (pr.clone(), Instant::now()));
                }
                Err((e, _)) => tracing::debug!(message = "Progress record not queued.", partition = p, error = %e),
            }
        }
    }

    /// Waits (bounded) until every queued record is written.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(message = "Progress records not all written; a new owner may read finished records again.", topic = %self.topic, error = %e);
        }
    }

    /// The latest progress written for each of `partitions` (absent: none found in the log's
    /// tail). Blocks, bounded by a few seconds: call it before the partitions are fetched.
    pub fn read(&self, partitions: &[i32]) -> HashMap<i32, Progress> {
        let mut out = HashMap::new();
        let Some(n) = self.partitions() else { return out };
        let started = Instant::now();
        // This replica may have owned them last (a session lost to a broker outage gives them
        // back to the same replica): what it queued for them lands before it reads.
        self.flush(READ_TIMEOUT);
        let reader: BaseConsumer = match self
            .client
            .clone()
            .set("group.id", format!("{}progress-reader", self.prefix))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(message = "Cannot read progress_topic.", topic = %self.topic, error = %e);
                return out;
            }
        };
        let wanted: HashMap<String, i32> = partitions.iter().map(|&p| (self.key(p), p)).collect();
        let mut log_parts: Vec<i32> = partitions.iter().map(|p| p % n).collect();
        log_parts.sort();
        log_parts.dedup();
        let mut tpl = TopicPartitionList::new();
        let mut ends = HashMap::new();
        for &q in &log_parts {
            match reader.fetch_watermarks(&self.topic, q, READ_TIMEOUT) {
                Ok((low, high)) if high > low => {
                    let _ = tpl.add_partition_offset(&self.topic, q, Offset::Offset((high - TAIL).max(low)));
                    ends.insert(q, high);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(message = "Cannot read progress_topic.", topic = %self.topic, partition = q, error = %e),
            }
        }
        if ends.is_empty() {
            return out;
        }
        if let Err(e) = reader.assign(&tpl) {
            tracing::warn!(message = "Cannot read progress_topic.", topic = %self.topic, error = %e);
            return out;
        }
        let deadline = Instant::now() + READ_TIMEOUT;
        while !ends.is_empty() && Instant::now() < deadline {
            match reader.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    if let Some(&p) = m.key().and_then(|k| std::str::from_utf8(k).ok()).and_then(|k| wanted.get(k)) {
                        match m.payload().map(serde_json::from_slice::<Progress>) {
                            Some(Ok(pr)) => {
                                out.insert(p, pr);
                            }
                            _ => tracing::warn!(message = "Unreadable progress record; ignored.", topic = %self.topic, partition = m.partition(), offset = m.offset()),
                        }
                    }
                    if ends.get(&m.partition()).is_some_and(|&h| m.offset() + 1 >= h) {
                        ends.remove(&m.partition());
                    }
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(q))) => {
                    ends.remove(&q);
                }
                Some(Err(e)) => tracing::debug!(message = "progress_topic read error.", error = %e),
                None => {}
            }
        }
        if !ends.is_empty() {
            tracing::warn!(message = "progress_topic not read to its end in time; finished records may be read again.", topic = %self.topic, partitions = ?ends.keys().collect::<Vec<_>>());
        }
        // Only a record that fits the partition as it is now is used (Progress::check).
        out.retain(|&p, pr| {
            let checked = match reader.fetch_watermarks(&self.source, p, READ_TIMEOUT) {
                Ok((_, high)) => pr.check(high),
                Err(e) => Err(format!("the partition's end is unknown: {e}")),
            };
            if let Err(reason) = &checked {
                tracing::warn!(message = "Progress record not used; its partition's finished records are read again.", topic = %self.topic, source = %self.source, partition = p, %reason);
            }
            checked.is_ok()
        });
        tracing::info!(message = "Progress read.", source = %self.source, partitions = ?partitions, found = out.len(), took = ?started.elapsed());
        // What this replica resumes from is what it last wrote, until it writes anew.
        let now = Instant::now();
        self.written.lock().unwrap_or_else(|e| e.into_inner()).extend(out.iter().map(|(&p, pr)| (p, (pr.clone(), now))));
        out
    }
}
