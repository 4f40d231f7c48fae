//! The Kafka receiver's task: consume, validate, admit (waiting for room: Kafka holds what we
//! have not read), and store each record's offset for commit only when the graph is done with
//! it, so a crash or restart re-reads what was not delivered (at least once).

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
use tracepipe_pipeline::{otlp_json, Batch, Finalizer};

use super::config::{Encoding, KafkaReceiverConfig};
use super::lag::LagContext;
use super::offsets::OffsetTracker;
use crate::serve::Admission;

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
    let mut rs = match TracesData::decode(bytes.as_ref()) {
        Ok(t) => t.resource_spans,
        Err(e) => return Decoded::Malformed("protobuf", format!("invalid OTLP protobuf: {e}")),
    };
    crate::otlp::drop_invalid(&mut rs, &report.invalid);
    let b = Batch::from_resource_spans(rs);
    let kept = b.span_count();
    if kept == 0 {
        return Decoded::Empty;
    }
    Decoded::Spans(Batch::from_encoded(b.to_bytes(), kept), report.invalid.len() as u64)
}

/// Creates the consumer and subscribes (librdkafka checks every property here); returns the task.
pub async fn build(cfg: KafkaReceiverConfig, mut ctx: ComponentContext) -> Result<ComponentFuture, BuildError> {
    let output = ctx.take_output()?;
    let mut cc = ClientConfig::new();
    for (k, v) in cfg.rdkafka_properties() {
        cc.set(k, v);
    }
    let consumer: StreamConsumer<LagContext> =
        cc.create_with_context(LagContext::new(&ctx.name, &cfg.topic)).map_err(|e| ctx.error(format!("cannot create the Kafka consumer: {e}")))?;
    consumer.subscribe(&[&cfg.topic]).map_err(|e| ctx.error(format!("cannot subscribe to `{}`: {e}", cfg.topic)))?;
    let consumer = Arc::new(consumer);
    let admission = Admission::new(&ctx.name, TRANSPORT, output, Duration::ZERO);
    let name = ctx.name.clone();
    let shutdown = ctx.shutdown.clone();
    let health = ctx.health.clone();
    health.expect_receiver(&name);
    tracing::info!(message = "Receiver ready.", receiver = %name, brokers = %cfg.brokers.join(","), topic = %cfg.topic, group_id = %cfg.group_id);
    Ok(Box::pin(async move {
        health.set_listening(&name, true);
        let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
        let topic = cfg.topic.clone();
        // Consumer errors repeat while a broker is down: warn once per ERROR_LOG_INTERVAL.
        let mut last_warning: Option<tokio::time::Instant> = None;
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = consumer.recv() => m,
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
            let (partition, offset) = (m.partition(), m.offset());
            let done = {
                let tracker = tracker.clone();
                let consumer = consumer.clone();
                let topic = topic.clone();
                move || {
                    let commit = tracker.lock().unwrap_or_else(|e| e.into_inner()).done(partition, offset);
                    if let Some(last) = commit {
                        // Stores last + 1 for the next auto-commit; fails only if the partition was
                        // revoked meanwhile (its new owner re-reads from the last commit).
                        if let Err(e) = consumer.store_offset(&topic, partition, last) {
                            tracing::debug!(message = "Offset not stored.", partition, offset = last, error = %e);
                        }
                    }
                }
            };
            tracker.lock().unwrap_or_else(|e| e.into_inner()).begin(partition, offset);
            match decode(m.payload().unwrap_or_default(), cfg.encoding, cfg.max_record_bytes.get() as usize) {
                Decoded::Spans(batch, rejected) => {
                    if rejected > 0 {
                        admission.rejected(rejected);
                    }
                    let fin = Finalizer::new(move |_status| done());
                    drop(m);
                    if admission.admit_waiting(batch.with_finalizer(fin)).await.is_err() {
                        break;
                    }
                }
                Decoded::Empty => done(),
                Decoded::Malformed(reason, error) => {
                    // A record that can never be read: counted, logged, and committed past.
                    admission.malformed(reason);
                    tracing::warn!(message = "Kafka record is not valid OTLP; skipped.", receiver = %name, partition, offset, error = %error);
                    done();
                }
            }
        }
        health.set_listening(&name, false);
        // Close the output so the stages downstream drain, wait (bounded) until every record
        // consumed has been delivered, then commit what was stored.
        drop(admission);
        let deadline = tokio::time::Instant::now() + cfg.shutdown_timeout.get();
        while tracker.lock().unwrap_or_else(|e| e.into_inner()).pending() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = tracker.lock().unwrap_or_else(|e| e.into_inner()).pending();
        if left > 0 {
            tracing::warn!(message = "Records not delivered by shutdown; they will be read again.", receiver = %name, records = left);
        }
        let c = consumer.clone();
        let committed = tokio::task::spawn_blocking(move || c.commit_consumer_state(CommitMode::Sync)).await;
        match committed {
            Ok(Ok(())) | Ok(Err(rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset))) => {}
            Ok(Err(e)) => tracing::warn!(message = "Final offset commit failed; some records may be read again.", receiver = %name, error = %e),
            Err(e) => tracing::warn!(message = "Final offset commit failed.", receiver = %name, error = %e),
        }
        Ok(())
    }))
}
