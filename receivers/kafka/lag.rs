//! The consumer's context: consumer lag as a Prometheus gauge — librdkafka's statistics (every
//! `statistics.interval.ms`, 5 s by default here) give each assigned partition's lag behind its
//! high watermark, counted from the committed offset — and a log line for every partition
//! assignment and revocation, so an operator sees which replica reads what — and the
//! assignments themselves: each partition read gets a generation and a revocation flag that its
//! records' finalizers carry ([`tracepipe_pipeline::Finalizer::revocable`]), set when the
//! partition is revoked so processors let what they hold of it go undecided. A revocation waits
//! (bounded by `revoke_timeout`) until every record read from the partitions it takes is done or
//! handed back, and commits, before librdkafka lets them go: the new owner starts where this one
//! finished, so nothing decided here is decided again there.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use tracepipe_pipeline::telemetry::names;
use tracepipe_pipeline::Finalizer;

use super::offsets::{OffsetTracker, Progress};
use super::progress::ProgressLog;

/// The consumer's context: turns statistics into `tracepipe_receiver_kafka_lag_records`.
pub struct LagContext {
    receiver: String,
    topic: String,
    /// Partitions given a value last time, so one no longer owned can be set back to 0.
    reported: Mutex<HashSet<i32>>,
    /// Partitions read in the current assignment: generation and revocation flag.
    owned: Mutex<Owned>,
    /// The receiver's offset bookkeeping, to wait for revoked partitions' records.
    tracker: Arc<Mutex<OffsetTracker>>,
    /// How long a revocation waits for them.
    revoke_timeout: Duration,
    /// Set once the receiver stops reading: its own drain waits instead.
    closing: AtomicBool,
    /// `progress_topic`, when set: read at an assignment, written before a revocation commits.
    progress: Option<Arc<ProgressLog>>,
    /// On while every broker is unreachable: the processors' waits stand still meanwhile
    /// (pipeline::clock), so nothing is decided on the part of a request read before the outage.
    pub stall: tracepipe_pipeline::clock::Stall,
    /// Outages seen (every broker unreachable), so an `outage_grace` that began before another
    /// outage does not end the new one's stall.
    pub outages: std::sync::atomic::AtomicU64,
    /// Since when statistics have shown a broker up during a stall.
    up_since: Mutex<Option<Instant>>,
    /// One warning per error kind per 30 s.
    throttle: tracepipe_pipeline::telemetry::Throttle,
}

/// How long a broker must be back, with no record read, before a stall ends anyway.
const STALL_IDLE_END: Duration = Duration::from_secs(30);

/// What this consumer owns.
#[derive(Default)]
struct Owned {
    /// The last generation given out.
    next: u64,
    /// Partitions assigned and not revoked since.
    assigned: HashSet<i32>,
    /// Partitions read in their current assignment.
    read: HashMap<i32, (u64, Arc<AtomicBool>)>,
}

impl LagContext {
    /// For `receiver` reading `topic`.
    pub fn new(receiver: &str, topic: &str, tracker: Arc<Mutex<OffsetTracker>>, revoke_timeout: Duration, progress: Option<Arc<ProgressLog>>) -> Self {
        LagContext {
            receiver: receiver.to_owned(),
            topic: topic.to_owned(),
            reported: Mutex::new(HashSet::new()),
            owned: Mutex::new(Owned::default()),
            tracker,
            revoke_timeout,
            closing: AtomicBool::new(false),
            progress,
            stall: Default::default(),
            outages: Default::default(),
            up_since: Mutex::new(None),
            throttle: tracepipe_pipeline::telemetry::Throttle::new(Duration::from_secs(30)),
        }
    }

    /// Partitions read in their current assignment, with its generation (`of`: only these).
    pub fn generations(&self, of: Option<&[i32]>) -> Vec<(i32, u64)> {
        let g = self.owned.lock().unwrap_or_else(|e| e.into_inner());
        g.read.iter().filter(|(p, _)| of.is_none_or(|o| o.contains(p))).map(|(&p, (generation, _))| (p, *generation)).collect()
    }

    /// The tracker's progress for these assignments.
    pub fn progress_of(&self, gens: &[(i32, u64)]) -> Vec<(i32, Progress)> {
        let t = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
        gens.iter().filter_map(|&(p, g)| t.progress(p, g).map(|pr| (p, pr))).collect()
    }

    /// Writes the progress of these assignments to `progress_topic`; with `wait`, waits
    /// (bounded) until it is written.
    pub fn write_progress(&self, gens: &[(i32, u64)], wait: Option<Duration>) {
        if let Some(log) = &self.progress {
            log.write(&self.progress_of(gens));
            if let Some(timeout) = wait {
                log.flush(timeout);
            }
        }
    }

    /// The receiver stopped reading and drains on its own: revocations no longer wait.
    pub fn closing(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Waits (bounded by `revoke_timeout`) until every record read from `partitions` is done or
    /// handed back; returns how many are not. Blocks the polling thread, which is the point: the
    /// partitions move only after it returns.
    fn settle(&self, partitions: &[i32]) -> usize {
        let deadline = Instant::now() + self.revoke_timeout;
        let pending = || self.tracker.lock().unwrap_or_else(|e| e.into_inner()).pending_in(partitions);
        let wait = || loop {
            let left = pending();
            if left == 0 || Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        blocking(wait)
    }

    /// The generation and revocation flag of `partition`'s current assignment (a new one the
    /// first time a record of it is read after an assignment), or None when the partition is not
    /// assigned to this consumer: a record fetched before its partition was revoked, which the new
    /// owner reads.
    pub fn generation(&self, partition: i32) -> Option<(u64, Arc<AtomicBool>)> {
        let mut g = self.owned.lock().unwrap_or_else(|e| e.into_inner());
        let Owned { next, assigned, read } = &mut *g;
        if !assigned.contains(&partition) {
            return None;
        }
        Some(
            read.entry(partition)
                .or_insert_with(|| {
                    *next += 1;
                    (*next, Arc::new(AtomicBool::new(false)))
                })
                .clone(),
        )
    }

    /// Marks partitions assigned (before librdkafka starts fetching them).
    pub fn assign(&self, partitions: &[i32]) {
        let mut g = self.owned.lock().unwrap_or_else(|e| e.into_inner());
        g.assigned.extend(partitions.iter().copied());
    }

    /// Revokes every partition this consumer owns (it is leaving the group): what processors
    /// hold of them is handed back undecided, and the next owner reads it whole.
    pub fn revoke_all(&self) {
        let all: Vec<i32> = self.owned.lock().unwrap_or_else(|e| e.into_inner()).assigned.iter().copied().collect();
        self.revoke(&all);
    }

    /// Marks partitions revoked: what was read of them is flagged, and records of them still
    /// arriving are not taken.
    pub fn revoke(&self, partitions: &[i32]) {
        let mut g = self.owned.lock().unwrap_or_else(|e| e.into_inner());
        let mut any = false;
        for &p in partitions {
            g.assigned.remove(&p);
            if let Some((_, flag)) = g.read.remove(&p) {
                flag.store(true, Ordering::Release);
                any = true;
            }
        }
        drop(g);
        if any {
            Finalizer::announce_revocation();
        }
    }

    fn set(&self, partition: i32, lag: i64) {
        metrics::gauge!(names::RECEIVER_KAFKA_LAG, "receiver" => self.receiver.clone(), "topic" => self.topic.clone(), "partition" => partition.to_string())
            .set(lag as f64);
    }
}

/// Runs `f`, which blocks the polling thread. The rebalance callback runs inside the receiver's
/// task: let the runtime move other tasks off this worker meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl ClientContext for LagContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        tracepipe_pipeline::telemetry::librdkafka_log(level as i32, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
            if !self.stall.is_on() {
                tracing::warn!(message = "All Kafka brokers unreachable; held spans keep waiting (processors' waits paused) until records flow again.", receiver = %self.receiver, reason);
            }
            self.stall.begin();
            self.outages.fetch_add(1, Ordering::AcqRel);
        } else if self.throttle.allow(&format!("{:?}", error.rdkafka_error_code())) {
            tracing::warn!(message = "Kafka client error (repeats of it are logged at debug for 30 s).", receiver = %self.receiver, %error, reason);
        } else {
            tracing::debug!(message = "Kafka client error.", receiver = %self.receiver, %error, reason);
        }
    }

    fn stats(&self, statistics: Statistics) {
        // A stall ends with the first record read (receiver.rs): a broker being back is not
        // enough — the group has to settle and upstream tiers to send what they held, and waits
        // resumed before that decide requests on their first fragments. An idle topic brings no
        // record, so a broker up for STALL_IDLE_END ends it too.
        if self.stall.is_on() {
            let up = statistics.brokers.values().any(|b| b.nodeid >= 0 && b.state == "UP");
            let mut since = self.up_since.lock().unwrap_or_else(|e| e.into_inner());
            match (*since, up) {
                (_, false) => *since = None,
                (None, true) => *since = Some(Instant::now()),
                (Some(t), true) if t.elapsed() >= STALL_IDLE_END => {
                    *since = None;
                    self.stall.end();
                }
                _ => {}
            }
        }
        let mut now = HashSet::new();
        tracing::debug!(message = "Kafka statistics.", receiver = %self.receiver, topics = ?statistics.topics.keys().collect::<Vec<_>>(),
            partitions = ?statistics.topics.get(&self.topic).map(|t| t.partitions.values().map(|p| (p.partition, p.desired, p.consumer_lag, p.committed_offset, p.hi_offset)).collect::<Vec<_>>()));
        if let Some(t) = statistics.topics.get(&self.topic) {
            for (&id, p) in &t.partitions {
                // -1 is librdkafka's internal "unassigned" partition; a lag of -1 is "not known yet".
                if id >= 0 && p.desired && p.consumer_lag >= 0 {
                    self.set(id, p.consumer_lag);
                    now.insert(id);
                }
            }
        }
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        for &gone in reported.difference(&now) {
            self.set(gone, 0);
        }
        *reported = now;
    }
}

impl ConsumerContext for LagContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let ours = |tpl: &rdkafka::TopicPartitionList| -> Vec<i32> { tpl.elements().iter().filter(|e| e.topic() == self.topic).map(|e| e.partition()).collect() };
        match rebalance {
            Rebalance::Assign(tpl) => {
                let p = ours(tpl);
                // What earlier owners finished past their commits, before a record is fetched.
                if let Some(log) = &self.progress {
                    let found = blocking(|| log.read(&p));
                    let mut t = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
                    for (partition, progress) in found {
                        t.resume(partition, progress);
                    }
                }
                self.assign(&p);
            }
            Rebalance::Revoke(tpl) => {
                let p = ours(tpl);
                let gens = self.generations(Some(&p));
                self.revoke(&p);
                if self.closing.load(Ordering::Acquire) {
                    return;
                }
                // Let what was read of them finish (held spans are handed back at once), record
                // what finished past the commit, commit, and only then let the partitions go: the
                // new owner starts after it and skips what was finished.
                let started = Instant::now();
                let left = self.settle(&p);
                blocking(|| self.write_progress(&gens, Some(self.revoke_timeout.max(Duration::from_secs(1)))));
                use rdkafka::consumer::Consumer as _;
                let committed = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
                tracing::info!(message = "Revoked partitions settled.", receiver = %self.receiver, partitions = ?p, waited = ?started.elapsed(), not_done = left,
                    committed = committed.is_ok());
            }
            Rebalance::Error(_) => {}
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        use rdkafka::consumer::Consumer as _;
        let partitions = |tpl: &rdkafka::TopicPartitionList| {
            let mut p = tpl.elements().iter().map(|e| e.partition()).collect::<Vec<_>>();
            p.sort();
            p
        };
        // With the cooperative protocol a rebalance names only what moved: log the whole
        // assignment too.
        let owned = consumer.assignment().map(|a| partitions(&a)).unwrap_or_default();
        match rebalance {
            Rebalance::Assign(tpl) => tracing::info!(message = "Kafka partitions assigned.", receiver = %self.receiver, topic = %self.topic, added = ?partitions(tpl), partitions = ?owned),
            Rebalance::Revoke(tpl) => tracing::info!(message = "Kafka partitions revoked.", receiver = %self.receiver, topic = %self.topic, revoked = ?partitions(tpl), partitions = ?owned),
            Rebalance::Error(e) => tracing::warn!(message = "Kafka rebalance failed.", receiver = %self.receiver, error = %e),
        }
    }
}
