//! The Kafka sink's task: batches become records (see [`super::encode`]), librdkafka delivers
//! and retries them, and each batch is settled when every record of it is acknowledged.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use metrics::{Counter, Gauge};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer, PurgeConfig};
use tracepipe_pipeline::telemetry::{Health, names};
use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentFuture};
use tracepipe_pipeline::{Batch, BatchStatus};

use super::config::{KafkaSinkConfig, PartitionBy};
use super::encode::{learn_guids, GuidKeys, Layout};

/// Batches whose records may be awaiting acknowledgement at once; librdkafka's own buffer
/// (`max_buffer_bytes`) bounds the memory.
const MAX_IN_FLIGHT_BATCHES: usize = 64;

/// Once shutdown has begun, records still unacknowledged after this long are purged and
/// counted (`reason="shutdown"`), so the process stops within the topology's drain deadline.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(20);

/// How long to wait before offering a record again when librdkafka's buffer is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(5);

struct Metrics {
    sent: Counter,
    bytes: Counter,
    permanent: Counter,
    exhausted: Counter,
    shutdown: Counter,
    too_large: Counter,
    decode: Counter,
    truncated: Counter,
    in_flight: Gauge,
    /// Records offered again after a transient broker error.
    retries: Counter,
}

impl Metrics {
    fn new(sink: &str) -> Self {
        let s = sink.to_owned();
        let failed = |reason: &'static str| metrics::counter!(names::SINK_FAILED_SPANS, "sink" => s.clone(), "reason" => reason);
        Metrics {
            sent: metrics::counter!(names::SINK_SENT_SPANS, "sink" => s.clone()),
            bytes: metrics::counter!(names::SINK_SENT_BYTES, "sink" => s.clone()),
            permanent: failed("permanent"),
            exhausted: failed("retries_exhausted"),
            shutdown: failed("shutdown"),
            too_large: failed("message_too_large"),
            decode: failed("decode"),
            truncated: metrics::counter!(names::SINK_TRUNCATED_ATTRIBUTES, "sink" => s.clone()),
            retries: metrics::counter!(names::SINK_RETRIES, "sink" => s.clone()),
            in_flight: metrics::gauge!(names::SINK_QUEUE_SPANS, "sink" => s),
        }
    }
}

/// How a record ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    /// librdkafka retried until `message_timeout`.
    Exhausted,
    /// Purged or abandoned at shutdown.
    Shutdown,
    /// The broker refused it for good (too large, not authorized, invalid topic, ...).
    Permanent,
    /// A span larger than `max_message_bytes` on its own: dropped before sending.
    TooLarge,
}

fn classify(e: &KafkaError) -> Outcome {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut) => Outcome::Exhausted,
        Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight) => Outcome::Shutdown,
        _ if transient(e) => Outcome::Exhausted,
        _ => Outcome::Permanent,
    }
}

/// Errors a broker answers while it is going away or moving leadership, which librdkafka reports
/// rather than retries: the record may well be taken by the broker a moment later (seen: tansu
/// answers in-flight produce requests `UNKNOWN_SERVER_ERROR` when stopped with SIGTERM, which
/// made every record in flight "fail for good" and the Kafka receiver upstream commit past them).
/// The sink offers such a record again until `message_timeout` from its first send.
fn transient(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::Unknown
                | C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::NetworkException
                | C::RequestTimedOut
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
                | C::NotEnoughReplicas
                | C::NotEnoughReplicasAfterAppend
                | C::KafkaStorageError
                | C::NotCoordinator
                | C::CoordinatorNotAvailable
                | C::UnknownTopicOrPartition
        )
    )
}

/// Waits between offers of a record after a transient error.
const TRANSIENT_RETRY_WAIT: Duration = Duration::from_millis(500);

/// One batch's records awaiting acknowledgement.
struct Pending {
    batch: Batch,
    records: Vec<(DeliveryFuture, usize, usize)>,
    /// Spans already settled as failed when enqueued.
    failed: Vec<(Outcome, usize, String)>,
}

/// The producer's context: librdkafka's log lines and error callbacks as tracing events, each
/// kind of client error warned about once per 30 s (an outage is reported by every connection
/// attempt; the delivery errors that matter are logged per record by the settler).
pub struct Logs {
    sink: String,
    throttle: tracepipe_pipeline::telemetry::Throttle,
}

impl rdkafka::client::ClientContext for Logs {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        tracepipe_pipeline::telemetry::librdkafka_log(level as i32, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if self.throttle.allow(&format!("{:?}", error.rdkafka_error_code())) {
            tracing::warn!(message = "Kafka client error (repeats of it are logged at debug for 30 s).", sink = %self.sink, %error, reason);
        } else {
            tracing::debug!(message = "Kafka client error.", sink = %self.sink, %error, reason);
        }
    }
}

struct Settler {
    name: String,
    /// Offers records again after transient errors.
    producer: Arc<FutureProducer<Logs>>,
    /// `message_timeout`: how long a record is offered again, from its first send.
    message_timeout: Duration,
    shutdown: tokio_util::sync::CancellationToken,
    m: Arc<Metrics>,
    health: Health,
    /// Record bytes handed to librdkafka and not yet acknowledged, in the process-wide account
    /// (tracepipe_memory_held_bytes): librdkafka copies each record.
    account: tracepipe_pipeline::memory::Held,
}

impl Settler {
    fn count(&self, outcome: Outcome, spans: usize) {
        let n = spans as u64;
        match outcome {
            Outcome::Delivered => self.m.sent.increment(n),
            Outcome::Exhausted => self.m.exhausted.increment(n),
            Outcome::Shutdown => self.m.shutdown.increment(n),
            Outcome::Permanent => self.m.permanent.increment(n),
            Outcome::TooLarge => self.m.too_large.increment(n),
        }
    }

    /// A record's final answer: offered again after transient errors until `message_timeout` from
    /// its first send (or shutdown).
    async fn answer(&self, fut: DeliveryFuture) -> Result<rdkafka::producer::future_producer::OwnedDeliveryResult, futures::channel::oneshot::Canceled> {
        use rdkafka::Message as _;
        let started = tokio::time::Instant::now();
        let mut fut = fut;
        loop {
            let answer = fut.await;
            let Ok(Err((e, msg))) = &answer else { return answer };
            if !transient(e) || self.shutdown.is_cancelled() || started.elapsed() + TRANSIENT_RETRY_WAIT >= self.message_timeout {
                return answer;
            }
            self.m.retries.increment(1);
            tokio::time::sleep(TRANSIENT_RETRY_WAIT).await;
            let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(msg.topic()).payload(msg.payload().unwrap_or_default());
            if let Some(k) = msg.key() {
                rec = rec.key(k);
            }
            if msg.partition() >= 0 {
                rec = rec.partition(msg.partition());
            }
            fut = loop {
                match self.producer.send_result(rec) {
                    Ok(f) => break f,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) if !self.shutdown.is_cancelled() => {
                        rec = r;
                        tokio::time::sleep(QUEUE_FULL_WAIT).await;
                    }
                    Err(_) => return answer,
                }
            };
        }
    }

    /// Awaits every record of a batch, counts each, and records the batch's status.
    async fn settle(&self, p: Pending) -> usize {
        let mut worst = BatchStatus::Delivered;
        let mut error: Option<String> = None;
        let mut spans_total = 0;
        let mut note = |outcome: Outcome, msg: String, worst: &mut BatchStatus| {
            let status = match outcome {
                Outcome::Delivered => BatchStatus::Delivered,
                // A span dropped for its size fails the batch for good: with acknowledgements the
                // sender is told (not retried: it would be dropped again).
                Outcome::Permanent | Outcome::TooLarge => BatchStatus::Rejected,
                Outcome::Exhausted | Outcome::Shutdown => BatchStatus::Errored,
            };
            *worst = (*worst).max(status);
            if outcome != Outcome::Delivered {
                error.get_or_insert(msg);
            }
        };
        for (outcome, spans, msg) in p.failed {
            self.count(outcome, spans);
            spans_total += spans;
            note(outcome, msg, &mut worst);
        }
        for (fut, spans, bytes) in p.records {
            spans_total += spans;
            let answer = self.answer(fut).await;
            self.account.sub(bytes);
            let (outcome, msg) = match answer {
                Ok(Ok(_delivery)) => {
                    self.m.bytes.increment(bytes as u64);
                    (Outcome::Delivered, String::new())
                }
                Ok(Err((e, _msg))) => (classify(&e), e.to_string()),
                // The producer went away before answering.
                Err(_canceled) => (Outcome::Shutdown, "producer closed before the record was acknowledged".to_owned()),
            };
            self.count(outcome, spans);
            note(outcome, msg, &mut worst);
        }
        match &error {
            None => self.health.set_sink_failure(&self.name, None),
            Some(e) => {
                tracing::error!(message = "Kafka delivery failed; spans dropped.", sink = %self.name, error = %e);
                self.health.set_sink_failure(&self.name, Some(e.clone()));
            }
        }
        p.batch.set_status(worst);
        spans_total
    }
}

/// Creates the producer (librdkafka checks every property here) and returns the task.
pub async fn build(cfg: KafkaSinkConfig, mut ctx: ComponentContext) -> Result<ComponentFuture, BuildError> {
    let mut input = ctx.take_input()?;
    let mut cc = ClientConfig::new();
    for (k, v) in cfg.rdkafka_properties() {
        cc.set(k, v);
    }
    let producer: FutureProducer<Logs> = cc
        .create_with_context(Logs { sink: ctx.name.clone(), throttle: tracepipe_pipeline::telemetry::Throttle::new(Duration::from_secs(30)) })
        .map_err(|e| ctx.error(format!("cannot create the Kafka producer: {e}")))?;
    let producer = Arc::new(producer);
    let layout = Layout { encoding: cfg.encoding, by_trace: cfg.partition_traces_by_id, max_bytes: cfg.max_message_bytes.get() as usize };
    let guid_keys = (cfg.partition_by == PartitionBy::GuidOrTraceId).then(|| Arc::new(std::sync::Mutex::new(GuidKeys::new(&cfg.guid_attribute, cfg.guid_cache_size))));
    if let Some(keys) = &guid_keys {
        // Replayed context (pipeline::replay) is removed before a batch gets here; the request
        // ids its spans carry key the late spans beside it, as on the previous owner.
        let keys = keys.clone();
        input.read_context(Box::new(move |context| learn_guids(&mut keys.lock().unwrap_or_else(|e| e.into_inner()), context)));
    }
    let m = Arc::new(Metrics::new(&ctx.name));
    let settler = Arc::new(Settler {
        name: ctx.name.clone(),
        producer: producer.clone(),
        message_timeout: cfg.message_timeout.get(),
        shutdown: ctx.shutdown.clone(),
        m: m.clone(),
        health: ctx.health.clone(),
        account: tracepipe_pipeline::memory::Held::component(&ctx.name),
    });
    let name = ctx.name.clone();
    let topic = cfg.topic.clone();
    let shutdown = ctx.shutdown.clone();
    if let Some(st) = &cfg.queue.storage {
        let (opened, settings) = st.open(&ctx.name, cfg.queue.when_full == crate::otlp::WhenFull::DropNewest, cfg.queue.num_consumers).await.map_err(|e| ctx.error(e))?;
        tracing::info!(message = "Sink ready.", sink = %name, brokers = %cfg.brokers.join(","), topic = %topic, encoding = ?cfg.encoding, queue = %opened.queue.path().display());
        healthcheck(producer.clone(), name.clone(), topic.clone());
        // At shutdown, records Kafka has not acknowledged within the budget are purged: their
        // batches stay on disk for the next start.
        let (p, sd) = (producer.clone(), shutdown.clone());
        tokio::spawn(async move {
            sd.cancelled().await;
            tokio::time::sleep(SHUTDOWN_BUDGET).await;
            p.purge(PurgeConfig::default().queue().inflight());
        });
        let d = Arc::new(DurableKafka { producer, layout, guid_keys, topic, settler, shutdown: shutdown.clone() });
        return Ok(Box::pin(crate::queue::driver::run(opened, input, d, settings, shutdown)));
    }
    tracing::info!(message = "Sink ready.", sink = %name, brokers = %cfg.brokers.join(","), topic = %topic, encoding = ?cfg.encoding);
    Ok(Box::pin(async move {
        healthcheck(producer.clone(), name.clone(), topic.clone());
        let mut in_flight = FuturesUnordered::new();
        let mut held = 0usize;
        let mut stopping_since: Option<tokio::time::Instant> = None;
        loop {
            let batch = tokio::select! {
                b = input.recv() => match b { Some(b) => b, None => break },
                Some(spans) = in_flight.next(), if !in_flight.is_empty() => {
                    held -= spans;
                    m.in_flight.set(held as f64);
                    continue;
                }
            };
            let n = batch.span_count();
            let records = {
                let mut keys = guid_keys.as_ref().map(|k| k.lock().unwrap_or_else(|e| e.into_inner()));
                if layout.rebuilds(&batch) {
                    tokio::task::block_in_place(|| layout.records(&batch, keys.as_deref_mut()))
                } else {
                    layout.records(&batch, keys.as_deref_mut())
                }
            };
            let records = match records {
                Ok(r) => r,
                Err(e) => {
                    m.decode.increment(n as u64);
                    tracing::error!(message = "Cannot decode a batch for Kafka; spans dropped.", sink = %name, error = %e);
                    batch.set_status(BatchStatus::Rejected);
                    continue;
                }
            };
            // librdkafka copies each record: keep only the finalizers until the acknowledgements.
            let mut p = Pending { batch: batch.finalizers_only(), records: Vec::with_capacity(records.records.len()), failed: Vec::new() };
            if records.truncated_attributes > 0 {
                m.truncated.increment(records.truncated_attributes);
                tracing::warn!(message = "Resource attributes cut: copying them into every trace's record would exceed the batch's budget.", sink = %name, attributes = records.truncated_attributes);
            }
            if records.oversized_spans > 0 {
                tracing::error!(message = "Span larger than max_message_bytes on its own; dropped.", sink = %name, spans = records.oversized_spans, max_message_bytes = layout.max_bytes);
                p.failed.push((Outcome::TooLarge, records.oversized_spans, format!("span larger than max_message_bytes ({})", layout.max_bytes)));
            }
            for r in records.records {
                loop {
                    let mut rec = FutureRecord::<str, [u8]>::to(&topic).payload(&r.payload[..]);
                    if let Some(k) = &r.key {
                        rec = rec.key(k.as_str());
                    }
                    match producer.send_result(rec) {
                        Ok(fut) => {
                            settler.account.add(r.payload.len());
                            p.records.push((fut, r.spans, r.payload.len()));
                            break;
                        }
                        // librdkafka's buffer is full: wait (backpressure) rather than drop; once
                        // shutdown has gone on for SHUTDOWN_BUDGET, give up on it (counted).
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                            if shutdown.is_cancelled() && stopping_since.get_or_insert_with(tokio::time::Instant::now).elapsed() >= SHUTDOWN_BUDGET {
                                p.failed.push((Outcome::Shutdown, r.spans, "librdkafka's queue stayed full through shutdown".into()));
                                break;
                            }
                            tokio::time::sleep(QUEUE_FULL_WAIT).await
                        }
                        Err((e, _)) => {
                            p.failed.push((classify(&e), r.spans, e.to_string()));
                            break;
                        }
                    }
                }
            }
            held += n;
            m.in_flight.set(held as f64);
            let s = settler.clone();
            in_flight.push(async move { s.settle(p).await });
            while in_flight.len() >= MAX_IN_FLIGHT_BATCHES {
                if let Some(spans) = in_flight.next().await {
                    held -= spans;
                    m.in_flight.set(held as f64);
                }
            }
        }
        // Input closed: wait for every acknowledgement; once shutdown has gone on for
        // SHUTDOWN_BUDGET, purge what is left so it is counted and the process can stop.
        let drain = async {
            while let Some(spans) = in_flight.next().await {
                held -= spans;
                m.in_flight.set(held as f64);
            }
        };
        tokio::pin!(drain);
        let purged = tokio::select! {
            _ = &mut drain => false,
            _ = async { shutdown.cancelled().await; tokio::time::sleep(SHUTDOWN_BUDGET).await } => true,
        };
        if purged {
            tracing::error!(message = "Shutting down; purging records Kafka has not acknowledged.", sink = %name);
            producer.purge(PurgeConfig::default().queue().inflight());
            drain.await;
        }
        m.in_flight.set(0.0);
        Ok(())
    }))
}

/// The Kafka sink behind a disk queue: one batch read back from disk at a time per worker,
/// produced, and awaited until Kafka acknowledged every record of it.
struct DurableKafka {
    producer: Arc<FutureProducer<Logs>>,
    layout: Layout,
    guid_keys: Option<Arc<std::sync::Mutex<GuidKeys>>>,
    topic: String,
    settler: Arc<Settler>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl crate::queue::driver::Deliver for DurableKafka {
    async fn deliver(&self, batch: Batch) -> bool {
        let m = &self.settler.m;
        let records = {
            let mut keys = self.guid_keys.as_ref().map(|k| k.lock().unwrap_or_else(|e| e.into_inner()));
            if self.layout.rebuilds(&batch) {
                tokio::task::block_in_place(|| self.layout.records(&batch, keys.as_deref_mut()))
            } else {
                self.layout.records(&batch, keys.as_deref_mut())
            }
        };
        let records = match records {
            Ok(r) => r,
            Err(e) => {
                m.decode.increment(batch.span_count() as u64);
                tracing::error!(message = "Cannot decode a batch for Kafka; spans dropped.", sink = %self.settler.name, error = %e);
                return false;
            }
        };
        if records.truncated_attributes > 0 {
            m.truncated.increment(records.truncated_attributes);
        }
        let mut futs = Vec::with_capacity(records.records.len());
        let mut failed: Vec<(Outcome, usize, String)> = Vec::new();
        if records.oversized_spans > 0 {
            tracing::error!(message = "Span larger than max_message_bytes on its own; dropped.", sink = %self.settler.name, spans = records.oversized_spans, max_message_bytes = self.layout.max_bytes);
            failed.push((Outcome::TooLarge, records.oversized_spans, format!("span larger than max_message_bytes ({})", self.layout.max_bytes)));
        }
        for r in records.records {
            loop {
                let mut rec = FutureRecord::<str, [u8]>::to(&self.topic).payload(&r.payload[..]);
                if let Some(k) = &r.key {
                    rec = rec.key(k.as_str());
                }
                match self.producer.send_result(rec) {
                    Ok(fut) => {
                        self.settler.account.add(r.payload.len());
                        futs.push((fut, r.spans, r.payload.len()));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        if self.shutdown.is_cancelled() {
                            // Not produced, shutting down: the batch stays on disk.
                            failed.push((Outcome::Shutdown, r.spans, String::new()));
                            break;
                        }
                        tokio::time::sleep(QUEUE_FULL_WAIT).await
                    }
                    Err((e, _)) => {
                        failed.push((classify(&e), r.spans, e.to_string()));
                        break;
                    }
                }
            }
        }
        let mut outcomes = failed;
        for (fut, spans, bytes) in futs {
            let answer = fut.await;
            self.settler.account.sub(bytes);
            outcomes.push(match answer {
                Ok(Ok(_)) => {
                    m.bytes.increment(bytes as u64);
                    (Outcome::Delivered, spans, String::new())
                }
                Ok(Err((e, _))) => (classify(&e), spans, e.to_string()),
                Err(_canceled) => (Outcome::Shutdown, spans, String::new()),
            });
        }
        if self.shutdown.is_cancelled() && outcomes.iter().any(|(o, ..)| *o == Outcome::Shutdown) {
            // Purged or never produced at shutdown: kept whole for the next start (the records
            // Kafka did take are sent again then: duplicates, never a loss).
            return true;
        }
        let mut error = None;
        for (o, spans, msg) in outcomes {
            self.settler.count(o, spans);
            if o != Outcome::Delivered {
                error.get_or_insert(msg);
            }
        }
        match error {
            None => self.settler.health.set_sink_failure(&self.settler.name, None),
            Some(e) => {
                tracing::error!(message = "Kafka delivery failed; spans dropped.", sink = %self.settler.name, error = %e);
                self.settler.health.set_sink_failure(&self.settler.name, Some(e));
            }
        }
        false
    }
}

/// Asks the brokers for the topic's metadata once, off the reactor, and logs whether they answer
/// (Vector's healthcheck). Never fatal: librdkafka keeps reconnecting.
fn healthcheck(producer: Arc<FutureProducer<Logs>>, name: String, topic: String) {
    tokio::task::spawn_blocking(move || match producer.client().fetch_metadata(Some(&topic), Duration::from_secs(10)) {
        Ok(md) => {
            let partitions = md.topics().first().map(|t| t.partitions().len()).unwrap_or(0);
            tracing::info!(message = "Kafka brokers reachable.", sink = %name, topic = %topic, brokers = md.brokers().len(), partitions);
        }
        Err(e) => {
            tracing::warn!(message = "Kafka brokers not reachable yet; records wait in the buffer and are retried.", sink = %name, error = %e)
        }
    });
}
