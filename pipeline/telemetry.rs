//! Self-telemetry: metric names (one place, mirroring the OTel Collector's set so dashboards
//! translate), the Prometheus recorder, the health registry and the HTTP server for `/metrics`,
//! `/healthz` and `/readyz`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Metric names. Counters end in `_total`; labels are bounded: `receiver`, `processor`, `sink`,
/// `transport`, `reason` (and a Kafka topic's `topic`, `partition`).
pub mod names {
    /// Spans a receiver accepted into the graph (`receiver`, `transport`).
    pub const RECEIVER_ACCEPTED_SPANS: &str = "tracepipe_receiver_accepted_spans_total";
    /// Spans a receiver refused to its sender with a retryable error, or dropped (UDP) because the
    /// graph was full (`receiver`, `transport`, `reason`).
    pub const RECEIVER_REFUSED_SPANS: &str = "tracepipe_receiver_refused_spans_total";
    /// Requests that could not be decoded or were invalid (`receiver`, `transport`, `reason`).
    pub const RECEIVER_MALFORMED_REQUESTS: &str = "tracepipe_receiver_malformed_requests_total";
    /// Requests refused for a missing or wrong access token (`receiver`, `transport`).
    pub const RECEIVER_UNAUTHENTICATED_REQUESTS: &str = "tracepipe_receiver_unauthenticated_requests_total";
    /// TLS handshakes a listener failed (`receiver`: the receiver, or `telemetry`; `transport`;
    /// `reason`: `not_tls`, `no_client_certificate`, `bad_client_certificate`, `refused_by_client`,
    /// `incompatible`, `timeout`, `closed`, `other`).
    pub const RECEIVER_TLS_HANDSHAKE_FAILURES: &str = "tracepipe_receiver_tls_handshake_failures_total";
    /// Spans rejected individually inside an otherwise valid request (`partial_success`)
    /// (`receiver`, `transport`, `reason`).
    pub const RECEIVER_REJECTED_SPANS: &str = "tracepipe_receiver_rejected_spans_total";
    /// Records of a partition a Kafka receiver's group has not committed yet (gauge, from
    /// librdkafka's statistics; `receiver`, `topic`, `partition`; 0 for partitions it no longer owns).
    pub const RECEIVER_KAFKA_LAG: &str = "tracepipe_receiver_kafka_lag_records";
    /// Records let go undelivered by a processor because their partition was revoked (or the
    /// receiver stopped) while held: left uncommitted for the next owner (`receiver`).
    pub const RECEIVER_KAFKA_HANDED_BACK_RECORDS: &str = "tracepipe_receiver_kafka_handed_back_records_total";
    /// Records not taken (`receiver`): read again after a rebalance gave a partition back though
    /// this process had already taken them (held or delivered), or fetched before their
    /// partition was revoked (its new owner reads them). Skipped, not delivered twice.
    pub const RECEIVER_KAFKA_SKIPPED_RECORDS: &str = "tracepipe_receiver_kafka_skipped_records_total";
    /// Records a previous owner of the partition had finished past its last commit, as its
    /// `progress_topic` says (`receiver`): skipped, not delivered twice nor decided again.
    pub const RECEIVER_KAFKA_ALREADY_DONE_RECORDS: &str = "tracepipe_receiver_kafka_already_done_records_total";
    /// Records a previous owner finished, sent again with a later record of their key that it
    /// had not finished (`receiver`, `as`: `context` — marked with which way they went, decided
    /// that way and not delivered again; `whole` — the previous owner's outcome is not known:
    /// decided again and delivered twice).
    pub const RECEIVER_KAFKA_REPLAYED_RECORDS: &str = "tracepipe_receiver_kafka_replayed_records_total";
    /// Kafka records whose delivery failed with a retryable error and that are delivered again
    /// (`receiver`).
    pub const RECEIVER_KAFKA_REDELIVERED_RECORDS: &str = "tracepipe_receiver_kafka_redelivered_records_total";
    /// Kafka records committed although their delivery failed (`receiver`, `reason`: permanent,
    /// error with `message_marking.on_error`).
    pub const RECEIVER_KAFKA_COMMITTED_FAILED_RECORDS: &str = "tracepipe_receiver_kafka_committed_failed_records_total";
    /// Spans per batch a processor emits (histogram; `processor`).
    pub const PROCESSOR_BATCH_SIZE: &str = "tracepipe_processor_batch_size_spans";
    /// Batches a batch processor emitted, by trigger (`processor`, `trigger` = size|timeout|shutdown).
    pub const PROCESSOR_BATCH_SENDS: &str = "tracepipe_processor_batch_sends_total";
    /// Spans a processor dropped, counted and never passed on (`processor`, `reason`: decode, a
    /// batch whose bytes do not decode although they were scanned valid).
    pub const PROCESSOR_DROPPED_SPANS: &str = "tracepipe_processor_dropped_spans_total";
    /// Held spans let go undecided because their Kafka partition moved to another consumer (or
    /// this one is stopping), which reads them again: not lost (`processor`).
    pub const PROCESSOR_HANDED_OVER_SPANS: &str = "tracepipe_processor_handed_over_spans_total";
    /// Spans a guid-inference processor holds (gauge; `processor`).
    pub const PROCESSOR_GUID_SPANS_HELD: &str = "tracepipe_processor_guid_spans_held";
    /// Guids a guid-inference processor holds (gauge; `processor`).
    pub const PROCESSOR_GUID_GUIDS_HELD: &str = "tracepipe_processor_guid_guids_held";
    /// Approximate bytes held (gauge; `processor`).
    pub const PROCESSOR_GUID_BYTES_HELD: &str = "tracepipe_processor_guid_bytes_held";
    /// Parent edges inferred (`processor`).
    pub const PROCESSOR_GUID_EDGES_INFERRED: &str = "tracepipe_processor_guid_edges_inferred_total";
    /// Orphan spans left alone because two candidate parents were equally tight (`processor`).
    pub const PROCESSOR_GUID_AMBIGUOUS: &str = "tracepipe_processor_guid_ambiguous_total";
    /// Guids with more spans than inference handles, passed on untouched (`processor`).
    pub const PROCESSOR_GUID_TOO_LARGE: &str = "tracepipe_processor_guid_too_large_total";
    /// Spans whose trace id guid inference rewrote to their rebuilt trace's (`processor`, `when` =
    /// `resolved` with their guid's spans, `late` after it, from the remembered rewrites).
    pub const PROCESSOR_GUID_RETRACED_SPANS: &str = "tracepipe_processor_guid_retraced_spans_total";
    /// Guids resolved before their wait because of `max_bytes` (`processor`).
    pub const PROCESSOR_GUID_EVICTED_EARLY: &str = "tracepipe_processor_guid_evicted_early_total";
    /// Traces a tail-sampling policy voted on, by vote (`processor`, `policy`, `decision` =
    /// sampled|not_sampled|dropped|inverted_sampled|inverted_not_sampled), as the OTel
    /// Collector's `count_traces_sampled`.
    pub const PROCESSOR_TAIL_SAMPLING_DECISIONS: &str = "tracepipe_processor_tail_sampling_decisions_total";
    /// Traces decided, by final decision (`processor`, `decision` = sampled|not_sampled|dropped).
    pub const PROCESSOR_TAIL_SAMPLING_TRACES: &str = "tracepipe_processor_tail_sampling_traces_total";
    /// Spans of decided traces, by final decision (`processor`, `decision`).
    pub const PROCESSOR_TAIL_SAMPLING_SPANS: &str = "tracepipe_processor_tail_sampling_spans_total";
    /// Traces held awaiting a decision (gauge; `processor`).
    pub const PROCESSOR_TAIL_SAMPLING_TRACES_HELD: &str = "tracepipe_processor_tail_sampling_traces_held";
    /// Bytes held: encoded spans, their envelopes and the index (gauge; `processor`).
    pub const PROCESSOR_TAIL_SAMPLING_BYTES_HELD: &str = "tracepipe_processor_tail_sampling_bytes_held";
    /// Traces decided before their wait was over (`processor`, `reason` =
    /// memory|trace_spans|trace_bytes|num_traces|shutdown).
    pub const PROCESSOR_TAIL_SAMPLING_EARLY_DECISIONS: &str = "tracepipe_processor_tail_sampling_early_decisions_total";
    /// Spans that arrived after their trace was decided and followed the cached decision
    /// (`processor`, `decision` = sampled|not_sampled).
    pub const PROCESSOR_TAIL_SAMPLING_LATE_SPANS: &str = "tracepipe_processor_tail_sampling_late_spans_total";
    /// Traces for which a policy could not be evaluated (a `sql` predicate that failed at run
    /// time); the policy votes not sampled (`processor`).
    pub const PROCESSOR_TAIL_SAMPLING_POLICY_ERRORS: &str = "tracepipe_processor_tail_sampling_policy_errors_total";
    /// Seconds from a trace's first span to its decision (histogram; `processor`).
    pub const PROCESSOR_TAIL_SAMPLING_DECISION_LATENCY: &str = "tracepipe_processor_tail_sampling_decision_latency_seconds";
    /// Spans per decided trace (histogram; `processor`).
    pub const PROCESSOR_TAIL_SAMPLING_TRACE_SPANS: &str = "tracepipe_processor_tail_sampling_trace_spans";
    /// Replayed context spans a sink removed before delivering (`sink`): spans a previous owner
    /// of their Kafka partition delivered or dropped already, sent again only so that a late
    /// fragment of their request is decided like them (see `pipeline::replay`).
    pub const SINK_REPLAYED_CONTEXT_SPANS: &str = "tracepipe_sink_replayed_context_spans_total";
    /// Spans a sink delivered (`sink`).
    pub const SINK_SENT_SPANS: &str = "tracepipe_sink_sent_spans_total";
    /// Spans a sink gave up on (`sink`, `reason`: permanent, retries_exhausted, queue_full,
    /// shutdown, encode, message_too_large, rejected_by_server).
    pub const SINK_FAILED_SPANS: &str = "tracepipe_sink_failed_spans_total";
    /// Spans waiting in a sink's queue (gauge; `sink`).
    pub const SINK_QUEUE_SPANS: &str = "tracepipe_sink_queue_spans";
    /// Bytes waiting in a sink's queue, as the batches' encoded size (gauge; `sink`).
    pub const SINK_QUEUE_BYTES: &str = "tracepipe_sink_queue_bytes";
    /// Damaged records a sink's disk queue skipped (`sink`): a checksum mismatch, a payload that
    /// is not OTLP, or (1) a file that could not be opened and was moved aside.
    pub const SINK_QUEUE_CORRUPT: &str = "tracepipe_sink_queue_corrupt_total";
    /// Disk-queue writes that failed (`sink`): a full disk or an I/O error. The input is held
    /// (backpressure) and the write retried every second; with `when_full: drop_newest` the
    /// batches are dropped instead and counted as `queue_full`.
    pub const SINK_QUEUE_WRITE_ERRORS: &str = "tracepipe_sink_queue_write_errors_total";
    /// Queue capacity in spans (gauge; `sink`).
    pub const SINK_QUEUE_CAPACITY: &str = "tracepipe_sink_queue_capacity_spans";
    /// Export attempts retried (`sink`): the otlp sink's retries, and records the Kafka sink
    /// offered again after a transient broker error.
    pub const SINK_RETRIES: &str = "tracepipe_sink_retries_total";
    /// Requests a sink cut in half because the upstream refused them as too large (`sink`).
    pub const SINK_SPLIT_REQUESTS: &str = "tracepipe_sink_split_requests_total";
    /// Bytes a sink wrote to the network after compression (`sink`).
    pub const SINK_SENT_BYTES: &str = "tracepipe_sink_sent_bytes_total";
    /// Archive files a Parquet sink closed and renamed into place (`sink`).
    pub const SINK_PARQUET_FILES: &str = "tracepipe_sink_parquet_files_total";
    /// Rows in the archive files a Parquet sink closed (`sink`).
    pub const SINK_PARQUET_ROWS: &str = "tracepipe_sink_parquet_rows_total";
    /// Spans a Parquet sink has written into files not yet closed (gauge; `sink`): counted in
    /// `tracepipe_sink_sent_spans_total` once their file is closed and renamed into place.
    pub const SINK_PARQUET_PENDING_SPANS: &str = "tracepipe_sink_parquet_pending_spans";
    /// Spans a Parquet sink partitioned by their write time because their start time was beyond
    /// `max_clock_skew` (`sink`).
    pub const SINK_PARQUET_CLOCK_SKEWED_SPANS: &str = "tracepipe_sink_parquet_clock_skewed_spans_total";
    /// Resource and scope attributes a sink cut because a batch would have copied more context
    /// than its budget: into every row (Parquet) or every trace's record (Kafka) (`sink`; see
    /// `archive::budget`).
    pub const SINK_TRUNCATED_ATTRIBUTES: &str = "tracepipe_sink_truncated_attributes_total";
    /// Files a Parquet sink has open (gauge; `sink`).
    pub const SINK_PARQUET_OPEN_FILES: &str = "tracepipe_sink_parquet_open_files";
    /// Leftover temporary files found on start (`sink`, `outcome`: renamed, quarantined).
    pub const SINK_PARQUET_RECOVERED_FILES: &str = "tracepipe_sink_parquet_recovered_files_total";
    /// Spans an archive receiver read (`receiver`).
    pub const RECEIVER_ARCHIVE_READ_SPANS: &str = "tracepipe_receiver_archive_read_spans_total";
    /// The memory limit in force (gauge; absent without one).
    pub const MEMORY_LIMIT: &str = "tracepipe_memory_limit_bytes";
    /// Encoded span bytes a component holds: its input channel and what it keeps inside (gauge;
    /// `component`).
    pub const MEMORY_HELD: &str = "tracepipe_memory_held_bytes";
    /// The soft limit, above which receivers refuse (gauge).
    pub const MEMORY_SOFT_LIMIT: &str = "tracepipe_memory_soft_limit_bytes";
    /// The process's resident memory as last sampled (gauge; with a memory limit).
    pub const PROCESS_RESIDENT_MEMORY: &str = "tracepipe_process_resident_memory_bytes";
    /// Requests a receiver refused before reading them (`receiver`, `transport`, `reason`:
    /// memory).
    pub const RECEIVER_REFUSED_REQUESTS: &str = "tracepipe_receiver_refused_requests_total";
    /// Always 1, with `version` and `rustc` labels.
    pub const BUILD_INFO: &str = "tracepipe_build_info";
    /// Spans a processor or sink took from its input channel (`component`, `kind`), as Vector's
    /// `component_received_events_total`.
    pub const COMPONENT_RECEIVED_SPANS: &str = "tracepipe_component_received_spans_total";
    /// Spans a receiver or processor passed downstream (`component`, `kind`; once per batch
    /// however many consumers share it), as Vector's `component_sent_events_total`.
    pub const COMPONENT_SENT_SPANS: &str = "tracepipe_component_sent_spans_total";
}

/// How often histogram samples are folded into their buckets.
///
/// The recorder keeps every histogram sample until it is folded in, which a scrape or an upkeep
/// does; without upkeep a process nobody scraped kept them all (16 bytes a decided trace in a
/// tail-sampling processor: 17 MiB per million traces, growing without bound). So it runs
/// four times a second, and what waits is bounded by a quarter second of samples.
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Folds histogram samples into their buckets every [`UPKEEP_INTERVAL`], until the runtime stops.
pub fn spawn_upkeep(handle: PrometheusHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    })
}

/// Installs the global Prometheus recorder and returns the handle that renders it.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(names::PROCESSOR_BATCH_SIZE.to_owned()),
            &[1.0, 10.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0, 8192.0, 10000.0, 20000.0, 50000.0],
        )
        .map_err(|e| e.to_string())?
        .set_buckets_for_metric(
            Matcher::Full(names::PROCESSOR_TAIL_SAMPLING_DECISION_LATENCY.to_owned()),
            &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0],
        )
        .map_err(|e| e.to_string())?
        .set_buckets_for_metric(
            Matcher::Full(names::PROCESSOR_TAIL_SAMPLING_TRACE_SPANS.to_owned()),
            &[1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 20000.0, 100000.0],
        )
        .map_err(|e| e.to_string())?;
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
    metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

#[derive(Debug, Default)]
struct HealthState {
    /// receiver name -> listening
    receivers: BTreeMap<String, bool>,
    /// sink name -> last permanent failure, if any
    failing_sinks: BTreeMap<String, String>,
    /// component name -> why its task ended while the graph was running
    failed: BTreeMap<String, String>,
    /// why receivers refuse for memory, while they do
    memory: Option<String>,
}

/// What `/readyz` reports: every receiver listening, no sink permanently failing.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<HealthState>>,
}

impl Health {
    /// Declares a receiver that must be listening before the process is ready.
    pub fn expect_receiver(&self, name: &str) {
        self.lock().receivers.entry(name.to_owned()).or_insert(false);
    }
    /// Marks a receiver listening (or not).
    pub fn set_listening(&self, name: &str, listening: bool) {
        self.lock().receivers.insert(name.to_owned(), listening);
    }
    /// Records that a sink's last export failed permanently (`Some(reason)`) or succeeded (`None`).
    pub fn set_sink_failure(&self, name: &str, failure: Option<String>) {
        let mut s = self.lock();
        match failure {
            Some(r) => {
                s.failing_sinks.insert(name.to_owned(), r);
            }
            None => {
                s.failing_sinks.remove(name);
            }
        }
    }
    /// Records that receivers refuse for memory (`Some(why)`) or accept again (`None`).
    pub fn set_memory_pressure(&self, why: Option<String>) {
        self.lock().memory = why;
    }
    /// Records that a component's task died (the process is stopping).
    pub fn set_failed(&self, name: &str, error: &str) {
        self.lock().failed.insert(name.to_owned(), error.to_owned());
    }
    /// `Ok` when ready, otherwise the reasons.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let s = self.lock();
        let mut why: Vec<String> = s.receivers.iter().filter(|(_, l)| !**l).map(|(n, _)| format!("receiver {n} is not listening")).collect();
        why.extend(s.failing_sinks.iter().map(|(n, r)| format!("sink {n} is failing: {r}")));
        why.extend(s.failed.iter().map(|(n, r)| format!("component {n} failed: {r}")));
        why.extend(s.memory.iter().map(|m| format!("refusing data: {m}")));
        if why.is_empty() { Ok(()) } else { Err(why) }
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        // A poisoned lock only means another thread panicked while holding it; the map is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Clone)]
struct ServerState {
    handle: Option<PrometheusHandle>,
    health: Health,
}

/// Binds the telemetry server (over TLS with `tls`). Returns the bound address and the serving
/// future, which ends when `shutdown` fires.
pub async fn serve(
    addr: &str,
    tls: Option<&tracepipe_config::ServerTlsConfig>,
    handle: Option<PrometheusHandle>,
    health: Health,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(SocketAddr, std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>), String> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| e.to_string())?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let app = axum::Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz_handler))
        .with_state(ServerState { handle, health });
    let stop = shutdown.clone().cancelled_owned();
    let fut: std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>> = match tls {
        Some(cfg) => {
            let tls = crate::tls::ServerTls::load(cfg, crate::tls::ALPN_HTTP).map_err(|e| e.to_string())?;
            tls.watch("telemetry", shutdown);
            let incoming = crate::tls::TlsIncoming::new(listener, tls, "telemetry", "http").map_err(|e| e.to_string())?;
            Box::pin(async move { axum::serve(incoming, app).with_graceful_shutdown(stop).await })
        }
        None => Box::pin(async move { axum::serve(listener, app).with_graceful_shutdown(stop).await }),
    };
    Ok((local, fut))
}

async fn metrics_handler(State(s): State<ServerState>) -> impl IntoResponse {
    let body = s.handle.as_ref().map(|h| h.render()).unwrap_or_default();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

async fn readyz_handler(State(s): State<ServerState>) -> impl IntoResponse {
    match s.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", why.join("; "))),
    }
}

/// Lets a repeating message through once per interval per key: librdkafka reports one broker
/// outage from every client, for every reconnect attempt, and a log line per attempt drowns the
/// one that matters.
#[derive(Debug)]
pub struct Throttle {
    every: std::time::Duration,
    last: Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl Throttle {
    pub fn new(every: std::time::Duration) -> Self {
        Throttle { every, last: Mutex::new(Default::default()) }
    }

    /// True when a message under `key` was not let through within the interval (and records
    /// this one).
    pub fn allow(&self, key: &str) -> bool {
        let now = std::time::Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match last.get(key) {
            Some(t) if now.duration_since(*t) < self.every => false,
            _ => {
                last.insert(key.to_owned(), now);
                true
            }
        }
    }
}

/// A librdkafka log line (`severity` is its syslog level, 0 emergency … 7 debug) as a tracing
/// event. Connection failures (`FAIL`) go to debug: the same failure reaches the client's error
/// callback, which logs it once per kind and interval ([`Throttle`]).
pub fn librdkafka_log(severity: i32, facility: &str, message: &str) {
    match severity {
        _ if facility == "FAIL" => tracing::debug!(target: "librdkafka", "{facility} {message}"),
        0..=3 => tracing::error!(target: "librdkafka", "{facility} {message}"),
        4 => tracing::warn!(target: "librdkafka", "{facility} {message}"),
        5 | 6 => tracing::info!(target: "librdkafka", "{facility} {message}"),
        _ => tracing::debug!(target: "librdkafka", "{facility} {message}"),
    }
}
