//! The Kafka receiver's task: consume, validate, admit (waiting for room: Kafka holds what we
//! have not read), and store each record's offset for commit only when the graph is done with
//! it, so a crash or restart re-reads what was not delivered (at least once).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::trace::v1::TracesData;
use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::Message;
use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentFuture};
use tracepipe_pipeline::wire::scan_traces;
use tracepipe_pipeline::telemetry::names;
use tracepipe_pipeline::{otlp_json, Batch, BatchStatus, Finalizer};

use super::config::{Encoding, KafkaReceiverConfig};
use super::lag::LagContext;
use super::offsets::OffsetTracker;
use super::progress::ProgressLog;
use super::stash::Stash;
use crate::serve::Admission;

/// The most a receiver keeps of records skipped as finished (stash.rs).
const STASH_BYTES: usize = 64 << 20;

/// The metric `transport` label.
const TRANSPORT: &str = "kafka";

/// How often a repeating consumer error is logged at warn level.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// A record's value turned into an admissible batch, or why not.
pub(super) enum Decoded {
    Spans(Batch, u64),
    Empty,
    Malformed(&'static str, String),
}

/// Validates one record value as the OTLP receiver validates a request body: the wire scan, and
/// invalid spans (bad ids) dropped and counted.
pub(super) fn decode(value: &[u8], encoding: Encoding, max_bytes: usize) -> Decoded {
    if value.len() > max_bytes {
        return Decoded::Malformed("body_too_large", format!("record of {} bytes is over max_record_bytes ({max_bytes})", value.len()));
    }
    let bytes: Bytes = match encoding {
        Encoding::OtlpProto => Bytes::copy_from_slice(value),
        Encoding::OtlpJson => match otlp_json::decode_request(value) {
            Ok(rs) => TracesData { resource_spans: rs }.encode_to_vec().into(),
            Err(e) => return Decoded::Malformed("json", e.to_string()),
        },
    };
    let report = match scan_traces(&bytes) {
        Ok(r) => r,
        Err(e) => return Decoded::Malformed("protobuf", format!("invalid OTLP protobuf: {e}")),
    };
    if report.spans == 0 {
        return Decoded::Empty;
    }
    if report.invalid.is_empty() {
        return Decoded::Spans(Batch::from_encoded(bytes, report.spans), 0);
    }
    match crate::otlp::without_invalid(&bytes, &report) {
        Ok((_, 0, _)) => Decoded::Empty,
        Ok((kept_bytes, kept, _)) => Decoded::Spans(Batch::from_encoded(kept_bytes, kept), report.invalid.len() as u64),
        Err(e) => Decoded::Malformed("protobuf", format!("invalid OTLP protobuf: {e}")),
    }
}

/// A record whose delivery failed with a retryable error, to be admitted again.
struct Redelivery {
    partition: i32,
    offset: i64,
    /// The partition's assignment the record was read in, and its revocation flag.
    generation: u64,
    revoked: Arc<AtomicBool>,
    payload: Bytes,
    spans: usize,
    /// Deliveries tried so far.
    attempts: u32,
}

/// First wait before a failed record is delivered again; doubles per attempt up to the max.
const REDELIVERY_BACKOFF: Duration = Duration::from_secs(1);
const REDELIVERY_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the per-record finalizers share.
struct Marking {
    tracker: Arc<Mutex<OffsetTracker>>,
    consumer: Arc<StreamConsumer<LagContext>>,
    topic: String,
    name: String,
    on_error: bool,
    redeliver: tokio::sync::mpsc::UnboundedSender<Redelivery>,
    redelivered: metrics::Counter,
    committed_permanent: metrics::Counter,
    committed_error: metrics::Counter,
    handed_back: metrics::Counter,
}

impl Marking {
    fn tracker(&self) -> std::sync::MutexGuard<'_, OffsetTracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The record is done with: store the highest offset now committable.
    fn done(&self, partition: i32, offset: i64, generation: u64) {
        self.done_with(partition, offset, generation, None);
    }

    /// As [`Marking::done`], knowing which way its spans went (kept, dropped by a decision).
    fn done_with(&self, partition: i32, offset: i64, generation: u64, kept: Option<bool>) {
        tracing::trace!(message = "Record done.", partition, offset, generation, ?kept);
        if let Some(last) = self.tracker().done_with(partition, offset, generation, kept) {
            // Stores last + 1 for the next auto-commit; fails only if the partition was revoked
            // meanwhile (its new owner re-reads from the last commit).
            if let Err(e) = self.consumer.store_offset(&self.topic, partition, last) {
                tracing::debug!(message = "Offset not stored.", partition, offset = last, error = %e);
            }
        }
    }

    /// The finalizer of a record's batch: marks the record done, or sends it back for another
    /// delivery.
    fn finalizer(self: &Arc<Self>, r: Redelivery) -> Arc<Finalizer> {
        let this = self.clone();
        Finalizer::revocable_with_outcome(r.revoked.clone(), move |status, outcome| match status {
            BatchStatus::Delivered => this.done_with(r.partition, r.offset, r.generation, outcome.kept()),
            BatchStatus::Errored if r.revoked.load(Ordering::Acquire) => {
                // Let go undelivered because the partition was revoked (or the receiver is
                // stopping): the next owner reads it again; nothing from it on is committed.
                this.handed_back.increment(1);
                tracing::debug!(message = "Record handed back.", partition = r.partition, offset = r.offset, generation = r.generation);
                this.tracker().handed_back(r.partition, r.offset, r.generation);
            }
            BatchStatus::Rejected => {
                this.committed_permanent.increment(1);
                tracing::warn!(message = "Record's spans refused permanently downstream; committed past.", receiver = %this.name, partition = r.partition, offset = r.offset);
                this.done_with(r.partition, r.offset, r.generation, outcome.kept());
            }
            BatchStatus::Errored if this.on_error => {
                this.committed_error.increment(1);
                tracing::warn!(message = "Record's delivery failed; committed past (message_marking.on_error).", receiver = %this.name, partition = r.partition, offset = r.offset);
                this.done_with(r.partition, r.offset, r.generation, outcome.kept());
            }
            BatchStatus::Errored => {
                this.redelivered.increment(1);
                // If the receiver has stopped, the record stays uncommitted: read again after a restart.
                let _ = this.redeliver.send(Redelivery { attempts: r.attempts + 1, ..r });
            }
        })
    }
}

/// Creates the consumer and subscribes (librdkafka checks every property here); returns the task.
pub async fn build(cfg: KafkaReceiverConfig, mut ctx: ComponentContext) -> Result<ComponentFuture, BuildError> {
    let output = ctx.take_output()?;
    let mut cc = ClientConfig::new();
    for (k, v) in cfg.rdkafka_properties() {
        cc.set(k, v);
    }
    let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
    let progress = match &cfg.progress_topic {
        Some(t) => Some(Arc::new(ProgressLog::new(&cfg.rdkafka_properties(), &cfg.group_id, &cfg.topic, t).map_err(|e| ctx.error(e))?)),
        None => None,
    };
    let consumer: StreamConsumer<LagContext> = cc
        .create_with_context(LagContext::new(&ctx.name, &cfg.topic, tracker.clone(), cfg.revoke_timeout.get(), progress.clone()))
        .map_err(|e| ctx.error(format!("cannot create the Kafka consumer: {e}")))?;
    consumer.subscribe(&[&cfg.topic]).map_err(|e| ctx.error(format!("cannot subscribe to `{}`: {e}", cfg.topic)))?;
    let consumer = Arc::new(consumer);
    let admission = Admission::new(&ctx.name, TRANSPORT, output, Duration::ZERO);
    let name = ctx.name.clone();
    let shutdown = ctx.shutdown.clone();
    let health = ctx.health.clone();
    health.expect_receiver(&name);
    let (redeliver, mut redeliveries) = tokio::sync::mpsc::unbounded_channel::<Redelivery>();
    let committed = |reason: &'static str| metrics::counter!(names::RECEIVER_KAFKA_COMMITTED_FAILED_RECORDS, "receiver" => name.clone(), "reason" => reason);
    let marking = Arc::new(Marking {
        tracker,
        consumer: consumer.clone(),
        topic: cfg.topic.clone(),
        name: name.clone(),
        on_error: cfg.message_marking.on_error,
        redeliver,
        redelivered: metrics::counter!(names::RECEIVER_KAFKA_REDELIVERED_RECORDS, "receiver" => name.clone()),
        committed_permanent: committed("permanent"),
        committed_error: committed("error"),
        handed_back: metrics::counter!(names::RECEIVER_KAFKA_HANDED_BACK_RECORDS, "receiver" => name.clone()),
    });
    let mark_after = cfg.message_marking.after;
    let skipped = metrics::counter!(names::RECEIVER_KAFKA_SKIPPED_RECORDS, "receiver" => name.clone());
    let already = metrics::counter!(names::RECEIVER_KAFKA_ALREADY_DONE_RECORDS, "receiver" => name.clone());
    let replayed_context = metrics::counter!(names::RECEIVER_KAFKA_REPLAYED_RECORDS, "receiver" => name.clone(), "as" => "context");
    let replayed_whole = metrics::counter!(names::RECEIVER_KAFKA_REPLAYED_RECORDS, "receiver" => name.clone(), "as" => "whole");
    let mut stash = Stash::new(STASH_BYTES);
    // Progress past the commit, written every commit_interval (what changed) to progress_topic.
    let writer = progress.as_ref().map(|_| {
        let (consumer, every, shutdown) = (consumer.clone(), cfg.commit_interval.get(), ctx.shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let c = consumer.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let ctx = c.context();
                    ctx.write_progress(&ctx.generations(None), None);
                })
                .await;
            }
        })
    });
    tracing::info!(message = "Receiver ready.", receiver = %name, brokers = %cfg.brokers.join(","), topic = %cfg.topic, group_id = %cfg.group_id);
    Ok(Box::pin(async move {
        health.set_listening(&name, true);
        // Consumer errors repeat while a broker is down: warn once per ERROR_LOG_INTERVAL.
        let mut last_warning: Option<tokio::time::Instant> = None;
        // Records to deliver again, oldest first; while any wait, no new record is read (what
        // is held stays bounded by what was in flight).
        let mut again: std::collections::VecDeque<(tokio::time::Instant, Redelivery)> = Default::default();
        // After an outage, when `outage_grace` ends (and the outage count it began at).
        let grace = cfg.outage_grace.get();
        let mut grace_end: Option<(tokio::time::Instant, u64)> = None;
        'read: loop {
            let next_again = again.front().map(|(t, _)| *t);
            let msg = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                r = redeliveries.recv() => {
                    if let Some(r) = r {
                        let wait = REDELIVERY_BACKOFF.saturating_mul(1 << r.attempts.saturating_sub(1).min(5)).min(REDELIVERY_BACKOFF_MAX);
                        tracing::warn!(message = "Record's delivery failed; it will be delivered again.", receiver = %name, partition = r.partition, offset = r.offset, attempt = r.attempts, delay = ?wait);
                        again.push_back((tokio::time::Instant::now() + wait, r));
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(next_again.unwrap_or_else(tokio::time::Instant::now)), if next_again.is_some() => {
                    let (_, r) = again.pop_front().expect("front checked");
                    let batch = Batch::from_encoded(r.payload.clone(), r.spans).with_finalizer(marking.finalizer(r));
                    if admission.admit_waiting(batch).await.is_err() {
                        break;
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(grace_end.map_or_else(tokio::time::Instant::now, |(t, _)| t)), if grace_end.is_some() => {
                    let (_, at) = grace_end.take().expect("checked");
                    // Another outage since the grace began keeps the stall on (the next record
                    // read after it starts a new grace).
                    if consumer.context().outages.load(std::sync::atomic::Ordering::Acquire) == at {
                        tracing::info!(message = "Outage grace over; the processors' waits resume.", receiver = %name, grace = ?grace);
                        consumer.context().stall.end();
                    }
                    continue;
                }
                // Above the memory limit's soft line: stop reading (Kafka keeps the records).
                _ = tokio::time::sleep(Duration::from_millis(50)), if again.is_empty() && tracepipe_pipeline::memory::under_pressure() => continue,
                m = consumer.recv(), if again.is_empty() && !tracepipe_pipeline::memory::under_pressure() => m,
            };
            let m = match msg {
                Ok(m) => m,
                Err(e) => {
                    // Broker down, group rebalancing...: librdkafka keeps trying.
                    if last_warning.is_none_or(|t| t.elapsed() >= ERROR_LOG_INTERVAL) {
                        tracing::warn!(message = "Kafka consumer error; retrying.", receiver = %name, error = %e);
                        last_warning = Some(tokio::time::Instant::now());
                    } else {
                        tracing::debug!(message = "Kafka consumer error; retrying.", receiver = %name, error = %e);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            // Records flow: the brokers are back if they were away (pipeline::clock); the waits
            // resume now, or `outage_grace` from now.
            if consumer.context().stall.is_on() {
                if grace.is_zero() {
                    consumer.context().stall.end();
                } else if grace_end.is_none() {
                    tracing::info!(message = "Records flow again after an outage; the processors' waits resume after outage_grace.", receiver = %name, grace = ?grace);
                    grace_end = Some((tokio::time::Instant::now() + grace, consumer.context().outages.load(std::sync::atomic::Ordering::Acquire)));
                }
            }
            let (partition, offset) = (m.partition(), m.offset());
            let Some((generation, revoked)) = consumer.context().generation(partition) else {
                // Fetched before its partition was revoked: the new owner reads it.
                tracing::debug!(message = "Record of a partition not assigned here; skipped.", receiver = %name, partition, offset);
                skipped.increment(1);
                continue;
            };
            if marking.tracker().taken(partition, offset, generation) {
                // Read again after a rebalance gave the partition back: already in the graph or
                // delivered by this process.
                tracing::debug!(message = "Record already taken; skipped.", receiver = %name, partition, offset);
                skipped.increment(1);
                continue;
            }
            let now = std::time::Instant::now();
            if marking.tracker().already_done(partition, offset, generation) {
                // A previous owner finished it past its last commit (progress_topic): skipped, and
                // kept a while in case a record of its key that was not finished follows.
                tracing::trace!(message = "Record already done by a previous owner; skipped.", receiver = %name, partition, offset);
                already.increment(1);
                let prior = marking.tracker().prior_outcome(partition, offset, generation);
                stash.keep(partition, m.key(), m.payload().unwrap_or_default(), prior, now);
                marking.tracker().begin(partition, offset, generation);
                marking.done_with(partition, offset, generation, prior);
                continue;
            }
            stash.expire(now);
            // Finished records of this record's key go into the graph before it, so what they and
            // it belong to is decided again whole rather than this part alone. They were
            // delivered (or dropped) once already and are committed past: no acknowledgement.
            // When the previous owner recorded which way they all went, they go as context
            // (pipeline::replay): decided that way, not delivered again; else as they are.
            let earlier = stash.take(partition, m.key());
            let prior = earlier.first().and_then(|(_, p)| *p).filter(|p| earlier.iter().all(|(_, q)| *q == Some(*p)));
            for (value, _) in earlier {
                if let Decoded::Spans(mut batch, _) = decode(&value, cfg.encoding, cfg.max_record_bytes.get() as usize) {
                    let context = prior.is_some_and(|kept| tracepipe_pipeline::replay::mark(&mut batch, kept).is_ok());
                    if context { &replayed_context } else { &replayed_whole }.increment(1);
                    tracing::debug!(message = "Finished record sent again with a later record of its key.", receiver = %name, partition, offset, spans = batch.span_count(), context, kept = ?prior);
                    if admission.admit_waiting(batch).await.is_err() {
                        break 'read;
                    }
                }
            }
            marking.tracker().begin(partition, offset, generation);
            tracing::trace!(message = "Record read.", receiver = %name, partition, offset, generation);
            match decode(m.payload().unwrap_or_default(), cfg.encoding, cfg.max_record_bytes.get() as usize) {
                Decoded::Spans(batch, rejected) => {
                    if rejected > 0 {
                        admission.rejected(rejected);
                    }
                    drop(m);
                    let batch = if mark_after {
                        let r = Redelivery { partition, offset, generation, revoked, payload: batch.to_bytes(), spans: batch.span_count(), attempts: 0 };
                        batch.with_finalizer(marking.finalizer(r))
                    } else {
                        marking.done(partition, offset, generation);
                        batch
                    };
                    if admission.admit_waiting(batch).await.is_err() {
                        break;
                    }
                }
                Decoded::Empty => marking.done(partition, offset, generation),
                Decoded::Malformed(reason, error) => {
                    // A record that can never be read: counted, logged, and committed past.
                    admission.malformed(reason);
                    tracing::warn!(message = "Kafka record is not valid OTLP; skipped.", receiver = %name, partition, offset, error = %error);
                    marking.done(partition, offset, generation);
                }
            }
        }
        health.set_listening(&name, false);
        // Partitions revoked from here on (the consumer leaving the group) need no waiting:
        // everything read is drained below.
        consumer.context().closing();
        let generations = consumer.context().generations(None);
        // Leaving the group is a revocation of everything: traces held undecided go back to
        // Kafka (uncommitted) rather than being decided on what arrived so far, because the rest
        // of them may be in records not read yet, which the partition's next owner reads.
        consumer.context().revoke_all();
        // Close the output so the stages downstream drain, wait (bounded) until every record
        // consumed has been delivered or has come back for another delivery, then commit what
        // was stored. Records waiting for another delivery stay uncommitted.
        drop(admission);
        let deadline = tokio::time::Instant::now() + cfg.shutdown_timeout.get();
        loop {
            while let Ok(r) = redeliveries.try_recv() {
                again.push_back((tokio::time::Instant::now(), r));
            }
            if marking.tracker().pending() <= again.len() || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = marking.tracker().pending();
        if left > 0 {
            tracing::warn!(message = "Records not delivered by shutdown; they will be read again.", receiver = %name, records = left);
        }
        if let Some(w) = writer {
            let _ = w.await;
        }
        let c = consumer.clone();
        let committed = tokio::task::spawn_blocking(move || {
            // What finished past the commit, for the partitions' next owners.
            c.context().write_progress(&generations, Some(Duration::from_secs(5)));
            c.commit_consumer_state(CommitMode::Sync)
        })
        .await;
        match committed {
            Ok(Ok(())) | Ok(Err(rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset))) => {}
            Ok(Err(e)) => tracing::warn!(message = "Final offset commit failed; some records may be read again.", receiver = %name, error = %e),
            Err(e) => tracing::warn!(message = "Final offset commit failed.", receiver = %name, error = %e),
        }
        Ok(())
    }))
}
