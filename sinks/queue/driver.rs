//! Runs a sink over its [`DiskQueue`]: the input side writes each batch to disk (grouped commits)
//! before acknowledging it, export workers read records in id order, deliver them, and remove
//! them once delivered or counted as failed. At shutdown the workers stop at the first batch that
//! cannot be sent (it stays on disk), or after [`SHUTDOWN_BUDGET`], and what is left is synced.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use metrics::{Counter, Gauge};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracepipe_pipeline::telemetry::names;
use tracepipe_pipeline::topology::{ComponentError, Input};
use tracepipe_pipeline::{Batch, BatchStatus};

use super::{DiskQueue, Opened, Pending, Read};

/// Delivers one batch read back from the queue; true when it was not sent and must stay queued
/// (shutting down with the upstream unreachable). Every other outcome (delivered, or failed and
/// counted with a reason) removes it.
pub trait Deliver: Send + Sync + 'static {
    /// Sends the batch.
    fn deliver(&self, batch: Batch) -> impl Future<Output = bool> + Send;
}

/// How the driver runs.
pub struct Settings {
    /// The sink's name (labels, logs).
    pub name: String,
    /// Capacity in record bytes.
    pub max_bytes: u64,
    /// Drop (count `queue_full`) instead of waiting when the queue is full.
    pub drop_newest: bool,
    /// Export workers.
    pub consumers: usize,
}

/// After input closed, how long workers keep sending what is on disk before leaving the rest
/// for the next start.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_secs(20);
/// In low-space mode, room left unused by appends so that removals (copy-on-write commits that
/// need a few fresh pages) can always go on.
const LOW_SPACE_MARGIN: i64 = 1 << 20;
/// Most bytes written in one commit.
const COMMIT_BYTES: usize = 8 << 20;
/// Most batches written in one commit.
const COMMIT_BATCHES: usize = 256;

struct Index {
    /// Records not yet taken by a worker, in id order.
    waiting: VecDeque<Pending>,
    /// Spans and bytes on disk (waiting or being sent).
    spans: u64,
    bytes: u64,
    /// Input closed and the shutdown budget spent, or a batch could not be sent at shutdown:
    /// workers take nothing more.
    stop: bool,
    input_closed: bool,
}

struct Shared {
    q: DiskQueue,
    /// Record bytes removed since the last failed write: in low-space mode, the room appends
    /// may use (less [`LOW_SPACE_MARGIN`], kept for the removals' own commits).
    freed: std::sync::atomic::AtomicI64,
    index: Mutex<Index>,
    /// A record was appended, or workers must stop.
    work: Notify,
    /// A record was removed.
    room: Notify,
    m: Metrics,
}

struct Metrics {
    queue_full: Counter,
    corrupt: Counter,
    write_errors: Counter,
    spans: Gauge,
    bytes: Gauge,
}

impl Shared {
    fn gauges(&self, i: &Index) {
        self.m.spans.set(i.spans as f64);
        self.m.bytes.set(i.bytes as f64);
    }

    fn forget(&self, p: Pending) {
        let mut i = self.index.lock().expect("queue index");
        i.spans -= p.spans as u64;
        i.bytes -= p.bytes;
        self.gauges(&i);
        drop(i);
        self.room.notify_waiters();
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("queue I/O task panicked")
}

/// Runs until the input closes and the workers have stopped.
pub async fn run<D: Deliver>(opened: Opened, mut input: Input, deliver: Arc<D>, settings: Settings, shutdown: CancellationToken) -> Result<(), ComponentError> {
    let name = settings.name.clone();
    let m = Metrics {
        queue_full: metrics::counter!(names::SINK_FAILED_SPANS, "sink" => name.clone(), "reason" => "queue_full"),
        corrupt: metrics::counter!(names::SINK_QUEUE_CORRUPT, "sink" => name.clone()),
        write_errors: metrics::counter!(names::SINK_QUEUE_WRITE_ERRORS, "sink" => name.clone()),
        spans: metrics::gauge!(names::SINK_QUEUE_SPANS, "sink" => name.clone()),
        bytes: metrics::gauge!(names::SINK_QUEUE_BYTES, "sink" => name.clone()),
    };
    m.corrupt.increment(opened.corrupt);
    let (spans, bytes) = opened.pending.iter().fold((0, 0), |(s, b), p| (s + p.spans as u64, b + p.bytes));
    if !opened.pending.is_empty() {
        tracing::info!(message = "Disk queue holds batches from an earlier run; delivering them first.", sink = %name, batches = opened.pending.len(), spans, bytes);
    }
    let mut next_id = opened.next_id;
    let shared = Arc::new(Shared {
        freed: Default::default(),
        q: opened.queue,
        index: Mutex::new(Index { waiting: opened.pending.into(), spans, bytes, stop: false, input_closed: false }),
        work: Notify::new(),
        room: Notify::new(),
        m,
    });
    shared.gauges(&shared.index.lock().expect("queue index"));

    let mut workers = Vec::new();
    for _ in 0..settings.consumers.max(1) {
        let sh = shared.clone();
        let d = deliver.clone();
        let name = name.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let notified = sh.work.notified();
                let next = {
                    let mut i = sh.index.lock().expect("queue index");
                    if i.stop || (i.input_closed && i.waiting.is_empty()) {
                        break;
                    }
                    i.waiting.pop_front()
                };
                let Some(p) = next else {
                    notified.await;
                    continue;
                };
                let q = sh.clone();
                let read = blocking(move || q.q.read(p.id)).await;
                let batch = match read {
                    Ok(Read::Record(spans, payload)) => match checked(payload, spans) {
                        Some(b) => b,
                        None => {
                            sh.m.corrupt.increment(1);
                            tracing::error!(message = "Queued batch is not valid OTLP; removed.", sink = %name, id = p.id);
                            remove(&sh, p).await;
                            continue;
                        }
                    },
                    Ok(Read::Corrupt) => {
                        sh.m.corrupt.increment(1);
                        tracing::error!(message = "Queued batch damaged on disk (checksum); removed.", sink = %name, id = p.id);
                        remove(&sh, p).await;
                        continue;
                    }
                    Ok(Read::Missing) => {
                        sh.forget(p);
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(message = "Disk queue read failed; will retry.", sink = %name, error = %e);
                        sh.index.lock().expect("queue index").waiting.push_front(p);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if d.deliver(batch).await {
                    // Not sent, shutting down: it stays; so does everything after it.
                    let mut i = sh.index.lock().expect("queue index");
                    i.waiting.push_front(p);
                    i.stop = true;
                    drop(i);
                    sh.work.notify_waiters();
                    break;
                }
                remove(&sh, p).await;
            }
        }));
    }

    // Input: write to disk, then acknowledge.
    while let Some(first) = input.recv().await {
        let mut group = vec![first];
        let mut size = group[0].encoded_len();
        while size < COMMIT_BYTES && group.len() < COMMIT_BATCHES {
            let Some(b) = input.try_recv() else { break };
            size += b.encoded_len();
            group.push(b);
        }
        let mut records: Vec<(Batch, u32, Bytes)> = Vec::with_capacity(group.len());
        for b in group {
            let payload = b.to_bytes();
            let len = payload.len() as u64;
            loop {
                let room = shared.room.notified();
                let used = shared.index.lock().expect("queue index").bytes + records.iter().map(|(_, _, p)| p.len() as u64).sum::<u64>();
                // A batch larger than the whole queue goes in alone rather than never.
                if used + len <= settings.max_bytes || used == 0 {
                    records.push((b, 0, payload));
                    break;
                }
                if settings.drop_newest {
                    shared.m.queue_full.increment(b.span_count() as u64);
                    b.set_status(BatchStatus::Errored);
                    break;
                }
                if !records.is_empty() {
                    // Commit what fits; this one waits for room after it.
                    commit(&shared, &mut next_id, std::mem::take(&mut records), &settings, &shutdown).await;
                    continue;
                }
                room.await;
            }
        }
        commit(&shared, &mut next_id, records, &settings, &shutdown).await;
    }

    // Input closed: workers send what is on disk for at most the budget, then stop.
    shared.index.lock().expect("queue index").input_closed = true;
    shared.work.notify_waiters();
    let all = futures::future::join_all(workers);
    tokio::pin!(all);
    let results = tokio::select! {
        r = &mut all => r,
        _ = tokio::time::sleep(SHUTDOWN_BUDGET) => {
            shared.index.lock().expect("queue index").stop = true;
            shared.work.notify_waiters();
            all.await
        }
    };
    for r in results {
        r.map_err(|e| ComponentError(format!("sink `{name}`: queue worker failed: {e}")))?;
    }
    let sh = shared.clone();
    if let Err(e) = blocking(move || sh.q.sync()).await {
        tracing::error!(message = "Disk queue sync at shutdown failed; delivered batches may be sent again.", sink = %name, error = %e);
    }
    let i = shared.index.lock().expect("queue index");
    if i.bytes > 0 {
        tracing::info!(message = "Stopped with batches in the disk queue; they are sent at the next start.", sink = %name, spans = i.spans, bytes = i.bytes);
    }
    Ok(())
}

/// With `drop_newest`, or once shutting down, refuses batches that cannot be written now (counted
/// `queue_full`, status `Errored`) and says so; otherwise the caller keeps waiting.
fn refused(shared: &Shared, records: &[(Batch, u32, Bytes)], settings: &Settings, shutdown: &CancellationToken) -> bool {
    if !(settings.drop_newest || shutdown.is_cancelled()) {
        return false;
    }
    let n: usize = records.iter().map(|(b, ..)| b.span_count()).sum();
    shared.m.queue_full.increment(n as u64);
    records.iter().for_each(|(b, ..)| b.set_status(BatchStatus::Errored));
    true
}

/// Writes `records` in one durable commit, then acknowledges them and hands them to the workers.
/// A failed write (disk full, I/O) is retried every second, holding the input (backpressure);
/// with `drop_newest`, or once shutting down, the batches are refused instead (counted
/// `queue_full`, status `Errored`).
async fn commit(shared: &Arc<Shared>, next_id: &mut u64, mut records: Vec<(Batch, u32, Bytes)>, settings: &Settings, shutdown: &CancellationToken) {
    if records.is_empty() {
        return;
    }
    for r in records.iter_mut() {
        r.1 = r.0.span_count() as u32;
    }
    let items: Arc<Vec<(u32, Bytes)>> = Arc::new(records.iter().map(|(_, s, p)| (*s, p.clone())).collect());
    let mut warned = false;
    let size: i64 = items.iter().map(|(_, p)| p.len() as i64).sum();
    use std::sync::atomic::Ordering::Relaxed;
    loop {
        // After a full disk: append only into room that removals made, keeping a margin for the
        // removals themselves (an append that took the last free page would leave delivered
        // batches impossible to remove, and the queue stuck). An empty queue has nothing to
        // protect, so it may try whenever it is woken.
        let low = {
            let sh = shared.clone();
            blocking(move || sh.q.low_space() && !sh.q.try_leave_low_space()).await
        };
        if low && shared.index.lock().expect("queue index").bytes > 0 && shared.freed.load(Relaxed) < size + LOW_SPACE_MARGIN {
            if refused(shared, &records, settings, shutdown) {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), shared.room.notified()).await;
            continue;
        }
        let sh = shared.clone();
        let it = items.clone();
        let id = *next_id;
        match blocking(move || sh.q.append(id, &it)).await {
            Ok(()) => {
                if low {
                    shared.freed.fetch_sub(size, Relaxed);
                }
                if warned {
                    tracing::info!(message = "Disk queue writes succeed again.", sink = %settings.name);
                }
                break;
            }
            Err(e) => {
                shared.freed.store(0, Relaxed);
                shared.m.write_errors.increment(1);
                if !warned {
                    tracing::error!(message = "Disk queue write failed; holding input until it succeeds.", sink = %settings.name, error = %e);
                    warned = true;
                }
                if refused(shared, &records, settings, shutdown) {
                    return;
                }
                // Retry once a delivered batch was removed (it made room), or after a while
                // (someone else may free the disk); retrying sooner would eat the room the
                // removals need.
                let _ = tokio::time::timeout(Duration::from_secs(10), shared.room.notified()).await;
            }
        }
    }
    let mut i = shared.index.lock().expect("queue index");
    for (b, spans, payload) in records {
        let p = Pending { id: *next_id, spans, bytes: payload.len() as u64 };
        *next_id += 1;
        i.spans += spans as u64;
        i.bytes += p.bytes;
        i.waiting.push_back(p);
        // On disk: the sink has it; its sources may move on.
        b.set_status(BatchStatus::Delivered);
    }
    shared.gauges(&i);
    drop(i);
    shared.work.notify_waiters();
}

/// The payload as a batch, if it is valid OTLP with the span count recorded.
fn checked(payload: Bytes, spans: u32) -> Option<Batch> {
    let report = tracepipe_pipeline::wire::scan_traces(&payload).ok()?;
    (report.spans == spans as usize).then(|| Batch::from_encoded(payload, report.spans))
}

/// Removes a delivered (or counted) record. A failed removal (a full disk: even a removal needs
/// fresh pages) is retried, since the room it makes is what a full queue waits for; once the
/// workers must stop it is left on disk (sent again after a restart: a duplicate, never a loss).
async fn remove(sh: &Arc<Shared>, p: Pending) {
    let mut warned = false;
    loop {
        let s = sh.clone();
        match blocking(move || s.q.remove(&[p.id])).await {
            Ok(()) => {
                sh.freed.fetch_add(p.bytes as i64, std::sync::atomic::Ordering::Relaxed);
                break;
            }
            Err(e) => {
                sh.m.write_errors.increment(1);
                if !warned {
                    tracing::warn!(message = "Disk queue remove failed; retrying.", error = %e);
                    warned = true;
                }
                if sh.index.lock().expect("queue index").stop {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    sh.forget(p);
}
