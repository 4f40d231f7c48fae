//! The OTLP sink's task: a span-bounded queue feeding `num_consumers` export workers that retry
//! with exponential backoff.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::sync::{Mutex, Semaphore};
use tracepipe_pipeline::telemetry::{names, Health};
use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentError, ComponentFuture};
use tracepipe_pipeline::{Batch, BatchStatus};

use super::client::{ExportError, Exporter};
use super::config::{OtlpSinkConfig, RetryConfig, WhenFull};

struct Metrics {
    sent: Counter,
    bytes: Counter,
    permanent: Counter,
    exhausted: Counter,
    shutdown: Counter,
    rejected: Counter,
    queue_full: Counter,
    too_large: Counter,
    retries: Counter,
    splits: Counter,
    queue: Gauge,
    queue_bytes: Gauge,
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
            rejected: failed("rejected_by_server"),
            queue_full: failed("queue_full"),
            too_large: failed("message_too_large"),
            retries: metrics::counter!(names::SINK_RETRIES, "sink" => s.clone()),
            splits: metrics::counter!(names::SINK_SPLIT_REQUESTS, "sink" => s.clone()),
            queue: metrics::gauge!(names::SINK_QUEUE_SPANS, "sink" => s.clone()),
            queue_bytes: metrics::gauge!(names::SINK_QUEUE_BYTES, "sink" => s),
        }
    }
}

struct Worker {
    name: String,
    exporter: Exporter,
    timeout: Duration,
    retry: RetryConfig,
    m: Arc<Metrics>,
    health: Health,
    /// Fires when the process is stopping.
    shutdown: tokio_util::sync::CancellationToken,
    /// When the first retry after shutdown began happened: the shutdown retry budget runs from it.
    stopping_since: std::sync::OnceLock<tokio::time::Instant>,
    /// `max_request_bytes`: no request is larger.
    max_request_bytes: usize,
    /// The size requests are cut to: `max_request_bytes`, or less once the upstream refused a
    /// request as too large (half that request's size), shared by the workers.
    limit: AtomicUsize,
    /// The queue is on disk: once shutdown has begun, a batch that cannot be sent stays queued
    /// for the next start instead of being retried and then dropped.
    durable: bool,
    /// The last permanent failure logged (the same one again is only counted).
    last_permanent: std::sync::Mutex<Option<String>>,
}

/// How one request ended.
enum Attempt {
    /// Delivered, or failed and counted.
    Done,
    /// The server (or, for JSON, the size check) refused it as too large: cut it smaller.
    TooLarge(String),
    /// Not sent, shutting down with a durable queue: it stays on disk.
    Kept,
}

/// Once shutdown has begun, a batch that still fails after this long is dropped and counted
/// (`reason="shutdown"`) instead of retried, so the process stops within the topology's 60 s
/// drain deadline and nothing is lost uncounted.
const SHUTDOWN_RETRY_BUDGET: Duration = Duration::from_secs(20);

impl Worker {
    /// Exports one batch as requests of at most `limit` bytes, in order; a request refused as too
    /// large is cut in half (and the limit lowered for the requests after it), a single span
    /// refused as too large, or bigger than `max_request_bytes`, is dropped and counted. Returns
    /// true when the batch was not (wholly) sent and stays in the durable queue.
    async fn deliver(&self, batch: Batch) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        // A stack of requests, the next on top; parts that must not share a request (another
        // token, another reporter) are cut apart first.
        let mut todo: Vec<Batch> = Vec::new();
        let parts = match self.exporter.partition(batch.clone()) {
            Ok(p) => p,
            Err(e) => {
                self.m.permanent.increment(batch.span_count() as u64);
                tracing::error!(message = "Batch is not valid OTLP; spans dropped.", sink = %self.name, spans = batch.span_count(), error = %e);
                batch.set_status(BatchStatus::Rejected);
                return false;
            }
        };
        drop(batch);
        for part in parts.iter().rev() {
            let mut cut = Vec::new();
            self.cut(part, limit, &mut cut);
            todo.extend(cut);
        }
        drop(parts);
        while let Some(part) = todo.pop() {
            let limit = self.limit.load(Ordering::Relaxed);
            if part.span_count() > 1 && part.encoded_len() > limit {
                // Cut before the limit was lowered (by a sibling's refusal): cut it again.
                self.cut(&part, limit, &mut todo);
                continue;
            }
            let message = match self.attempt(&part).await {
                Attempt::Done => continue,
                Attempt::Kept => return true,
                Attempt::TooLarge(message) => message,
            };
            let n = part.span_count();
            if n <= 1 {
                self.m.too_large.increment(n as u64);
                tracing::error!(message = "Upstream refused a single span as too large; dropped.", sink = %self.name, bytes = part.encoded_len(), error = %message);
                part.set_status(BatchStatus::Rejected);
                continue;
            }
            let half = (part.encoded_len() / 2).max(1);
            if self.limit.fetch_min(half, Ordering::Relaxed) > half {
                tracing::warn!(
                    message = "Upstream refused a request as too large; requests are now cut smaller. Set max_request_bytes to the upstream's limit.",
                    sink = %self.name, refused_bytes = part.encoded_len(), new_limit = half, error = %message
                );
            }
            self.m.splits.increment(1);
            self.cut(&part, half, &mut todo);
        }
        false
    }

    /// Pushes `batch` cut to `limit` bytes onto `todo`, so that its first part is popped first.
    /// A span that alone exceeds `limit` but not `max_request_bytes` is tried on its own (the
    /// upstream's real limit may lie between).
    fn cut(&self, batch: &Batch, limit: usize, todo: &mut Vec<Batch>) {
        let parts = match batch.split_by_bytes(limit) {
            Ok(p) => p,
            Err(e) => {
                self.m.permanent.increment(batch.span_count() as u64);
                tracing::error!(message = "Batch is not valid OTLP; spans dropped.", sink = %self.name, spans = batch.span_count(), error = %e);
                batch.set_status(BatchStatus::Rejected);
                return;
            }
        };
        let mut ordered = parts.parts;
        for single in parts.too_large {
            if single.encoded_len() > self.max_request_bytes {
                self.m.too_large.increment(1);
                tracing::error!(message = "Span larger than max_request_bytes on its own; dropped.", sink = %self.name, bytes = single.encoded_len(), max_request_bytes = self.max_request_bytes);
                single.set_status(BatchStatus::Rejected);
            } else {
                ordered.push(single);
            }
        }
        todo.extend(ordered.into_iter().rev());
    }

    /// Sends one request, retrying retryable failures; counts the outcome unless it is too large.
    async fn attempt(&self, batch: &Batch) -> Attempt {
        let n = batch.span_count() as u64;
        let start = tokio::time::Instant::now();
        let mut wait = self.retry.initial_interval.get();
        loop {
            match self.exporter.export(batch, self.timeout).await {
                Ok(done) => {
                    let ok = n.saturating_sub(done.rejected);
                    self.m.sent.increment(ok);
                    self.m.bytes.increment(done.bytes);
                    if done.rejected > 0 {
                        self.m.rejected.increment(done.rejected);
                        tracing::warn!(message = "Server rejected part of a batch.", sink = %self.name, rejected = done.rejected);
                    }
                    self.health.set_sink_failure(&self.name, None);
                    batch.set_status(BatchStatus::Delivered);
                    return Attempt::Done;
                }
                Err(ExportError::TooLarge(message)) => return Attempt::TooLarge(message),
                Err(ExportError::Permanent(msg)) => {
                    self.m.permanent.increment(n);
                    // Once per distinct cause (a wrong token fails every batch the same way).
                    let new = self.last_permanent.lock().map(|mut last| last.replace(msg.clone()).as_ref() != Some(&msg)).unwrap_or(true);
                    if new {
                        tracing::error!(message = "Export failed permanently; spans dropped (further failures for the same reason are counted, not logged).", sink = %self.name, spans = n, error = %msg);
                    } else {
                        tracing::debug!(message = "Export failed permanently; spans dropped.", sink = %self.name, spans = n, error = %msg);
                    }
                    self.health.set_sink_failure(&self.name, Some(msg));
                    batch.set_status(BatchStatus::Rejected);
                    return Attempt::Done;
                }
                Err(ExportError::Retryable { message, retry_after }) => {
                    if self.durable && self.shutdown.is_cancelled() {
                        tracing::info!(message = "Shutting down; batch stays in the disk queue for the next start.", sink = %self.name, spans = n, error = %message);
                        return Attempt::Kept;
                    }
                    let max_elapsed = self.retry.max_elapsed_time.get();
                    let delay = retry_after.unwrap_or(wait).min(self.retry.max_interval.get().max(retry_after.unwrap_or_default()));
                    let give_up = !self.retry.enabled || (!max_elapsed.is_zero() && start.elapsed() + delay > max_elapsed);
                    if give_up {
                        self.m.exhausted.increment(n);
                        tracing::error!(message = "Export failed; retries exhausted, spans dropped.", sink = %self.name, spans = n, error = %message);
                        batch.set_status(BatchStatus::Errored);
                        return Attempt::Done;
                    }
                    self.m.retries.increment(1);
                    tracing::warn!(message = "Export failed; will retry.", sink = %self.name, spans = n, error = %message, delay = ?delay);
                    if self.shutdown.is_cancelled() {
                        // One budget for the whole sink, from the first retry after shutdown began
                        // (not one per batch: a full queue would take its length times 20 s).
                        let since = *self.stopping_since.get_or_init(tokio::time::Instant::now);
                        if since.elapsed() >= SHUTDOWN_RETRY_BUDGET {
                            self.m.shutdown.increment(n);
                            tracing::error!(message = "Shutting down; undeliverable spans dropped.", sink = %self.name, spans = n, error = %message);
                            batch.set_status(BatchStatus::Errored);
                            return Attempt::Done;
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(jitter(delay)) => {}
                        _ = self.shutdown.cancelled(), if self.stopping_since.get().is_none() => {}
                    }
                    wait = Duration::from_secs_f64((wait.as_secs_f64() * self.retry.multiplier).min(self.retry.max_interval.get().as_secs_f64()));
                }
            }
        }
    }
}

impl crate::queue::driver::Deliver for Worker {
    fn deliver(&self, batch: Batch) -> impl std::future::Future<Output = bool> + Send {
        Worker::deliver(self, batch)
    }
}

/// ±20% jitter so many sinks do not retry in lockstep.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|t| t.subsec_nanos()).unwrap_or(0);
    let f = 0.8 + (nanos % 1000) as f64 / 1000.0 * 0.4;
    d.mul_f64(f)
}

/// Builds the exporter (reads TLS files) and returns the task.
pub async fn build(cfg: OtlpSinkConfig, ctx: ComponentContext) -> Result<ComponentFuture, BuildError> {
    let exporter = Exporter::new(&cfg).map_err(|e| ctx.error(e))?;
    build_with(cfg, exporter, ctx).await
}

/// The sink's task around a given exporter (the satellite sink's routed or report exporters):
/// `cfg` gives the queue, retry, timeout and request size.
pub async fn build_with(cfg: OtlpSinkConfig, exporter: Exporter, mut ctx: ComponentContext) -> Result<ComponentFuture, BuildError> {
    let mut input = ctx.take_input()?;
    let m = Arc::new(Metrics::new(&ctx.name));
    metrics::gauge!(names::SINK_QUEUE_CAPACITY, "sink" => ctx.name.clone()).set(cfg.queue.max_spans as f64);
    let worker = Arc::new(Worker {
        name: ctx.name.clone(),
        exporter,
        timeout: cfg.timeout.get(),
        retry: cfg.retry.clone(),
        m: m.clone(),
        health: ctx.health.clone(),
        shutdown: ctx.shutdown.clone(),
        stopping_since: std::sync::OnceLock::new(),
        max_request_bytes: cfg.max_request_bytes.get() as usize,
        limit: AtomicUsize::new(cfg.max_request_bytes.get() as usize),
        durable: cfg.queue.storage.is_some(),
        last_permanent: std::sync::Mutex::new(None),
    });
    if let Some(st) = &cfg.queue.storage {
        let (opened, settings) = st.open(&ctx.name, cfg.queue.when_full == WhenFull::DropNewest, cfg.queue.num_consumers).await.map_err(|e| ctx.error(e))?;
        tracing::info!(message = "Sink ready.", sink = %ctx.name, endpoint = %cfg.endpoint, protocol = ?cfg.protocol, queue = %opened.queue.path().display());
        let shutdown = ctx.shutdown.clone();
        return Ok(Box::pin(crate::queue::driver::run(opened, input, worker, settings, shutdown)));
    }
    let capacity = cfg.queue.max_spans;
    let byte_capacity = (cfg.queue.max_bytes.get() / 1024).clamp(1, u32::MAX as u64) as usize;
    let policy = cfg.queue.when_full;
    let consumers = cfg.queue.num_consumers;
    let name = ctx.name.clone();
    tracing::info!(message = "Sink ready.", sink = %name, endpoint = %cfg.endpoint, protocol = ?cfg.protocol);
    Ok(Box::pin(async move {
        // The queue: permits are spans; a batch holds its permits until exported.
        let room = Arc::new(Semaphore::new(capacity));
        // And in bytes (KiB permits, the batch's encoded size rounded up): spans alone do not
        // bound memory when a span may be a few hundred bytes or a few megabytes.
        let bytes_room = Arc::new(Semaphore::new(byte_capacity));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(Batch, (tokio::sync::OwnedSemaphorePermit, tokio::sync::OwnedSemaphorePermit), usize)>();
        // The queue's bytes in the process-wide account (tracepipe_memory_held_bytes).
        let held = tracepipe_pipeline::memory::Held::component(&name);
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::new();
        for _ in 0..consumers {
            let rx = rx.clone();
            let w = worker.clone();
            let room = room.clone();
            let bytes_room = bytes_room.clone();
            let m = m.clone();
            let held = held.clone();
            workers.push(tokio::spawn(async move {
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some((batch, permit, len)) = next else { break };
                    w.deliver(batch).await;
                    held.sub(len);
                    drop(permit);
                    m.queue.set((capacity - room.available_permits()) as f64);
                    m.queue_bytes.set(((byte_capacity - bytes_room.available_permits()) * 1024) as f64);
                }
            }));
        }
        while let Some(batch) = input.recv().await {
            let n = batch.span_count().clamp(1, capacity) as u32;
            let len = batch.encoded_len();
            let kib = len.div_ceil(1024).clamp(1, byte_capacity) as u32;
            let permit = match policy {
                WhenFull::Block => match (room.clone().acquire_many_owned(n).await, bytes_room.clone().acquire_many_owned(kib).await) {
                    (Ok(a), Ok(b)) => (a, b),
                    _ => break,
                },
                WhenFull::DropNewest => match (room.clone().try_acquire_many_owned(n), bytes_room.clone().try_acquire_many_owned(kib)) {
                    (Ok(a), Ok(b)) => (a, b),
                    _ => {
                        m.queue_full.increment(batch.span_count() as u64);
                        batch.set_status(BatchStatus::Errored);
                        continue;
                    }
                },
            };
            m.queue.set((capacity - room.available_permits()) as f64);
            m.queue_bytes.set(((byte_capacity - bytes_room.available_permits()) * 1024) as f64);
            held.add(len);
            if tx.send((batch, permit, len)).is_err() {
                held.sub(len);
                break;
            }
        }
        // Input closed: let the workers drain the queue, then stop.
        drop(tx);
        for w in workers {
            w.await.map_err(|e| ComponentError(format!("sink `{name}`: worker failed: {e}")))?;
        }
        m.queue.set(0.0);
        m.queue_bytes.set(0.0);
        Ok(())
    }))
}
