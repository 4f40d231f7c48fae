//! The Parquet sink's task: recovers leftovers, then runs `workers` writers that take batches
//! from the one input, each encoding into its own open files, rolling aged ones, and closing
//! everything on shutdown.

use std::sync::Arc;
use std::time::Instant;

use metrics::{Counter, Gauge};

use tracepipe_pipeline::BatchStatus;
use tracepipe_pipeline::archive::layout::{self, Recovered};
use tracepipe_pipeline::telemetry::names;
use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentError, ComponentFuture, Input};

use super::config::ParquetSinkConfig;
use super::writer::{ArchiveWriter, Closed};

/// Creates the archive root, recovers what a crash left, and returns the task.
pub async fn build(cfg: ParquetSinkConfig, mut ctx: ComponentContext) -> Result<ComponentFuture, BuildError> {
    let input = ctx.take_input()?;
    let name = ctx.name.clone();
    std::fs::create_dir_all(&cfg.path).map_err(|e| ctx.error(format!("cannot create {}: {e}", cfg.path.display())))?;
    let recovered = layout::recover(&cfg.path).map_err(|e| ctx.error(format!("cannot check {} for leftovers: {e}", cfg.path.display())))?;
    for r in recovered {
        match r {
            Recovered::Renamed { from, to, rows } => {
                metrics::counter!(names::SINK_PARQUET_RECOVERED_FILES, "sink" => name.clone(), "outcome" => "renamed").increment(1);
                tracing::warn!(message = "Recovered a complete archive file left unrenamed by a crash.", sink = %name, from = %from.display(), to = %to.display(), rows);
            }
            Recovered::Quarantined { from, to, reason } => {
                metrics::counter!(names::SINK_PARQUET_RECOVERED_FILES, "sink" => name.clone(), "outcome" => "quarantined").increment(1);
                tracing::error!(message = "Incomplete archive file left by a crash moved aside; its spans are lost.", sink = %name, from = %from.display(), to = %to.display(), reason = %reason);
            }
        }
    }
    let m = SinkMetrics {
        sent: metrics::counter!(names::SINK_SENT_SPANS, "sink" => name.clone()),
        failed: metrics::counter!(names::SINK_FAILED_SPANS, "sink" => name.clone(), "reason" => "io"),
        files: metrics::counter!(names::SINK_PARQUET_FILES, "sink" => name.clone()),
        rows: metrics::counter!(names::SINK_PARQUET_ROWS, "sink" => name.clone()),
        open: metrics::gauge!(names::SINK_PARQUET_OPEN_FILES, "sink" => name.clone()),
        pending: metrics::gauge!(names::SINK_PARQUET_PENDING_SPANS, "sink" => name.clone()),
        skewed: metrics::counter!(names::SINK_PARQUET_CLOCK_SKEWED_SPANS, "sink" => name.clone()),
        truncated: metrics::counter!(names::SINK_TRUNCATED_ATTRIBUTES, "sink" => name.clone()),
    };
    let tick = (cfg.roll.max_age.get() / 4).clamp(std::time::Duration::from_millis(10), std::time::Duration::from_secs(5));
    let input = Arc::new(tokio::sync::Mutex::new(input));
    let workers = cfg.workers.max(1);
    Ok(Box::pin(async move {
        // Each worker its own task (encoding blocks its thread through `block_in_place`, so
        // workers in one task would take turns), its own writer and open files. A `JoinSet`, so
        // that dropping the sink's task (the topology giving up on it) aborts its workers too.
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..workers {
            set.spawn(work(name.clone(), ArchiveWriter::new(cfg.clone()), input.clone(), m.clone(), tick));
        }
        let mut result = Ok(());
        while let Some(r) = set.join_next().await {
            let r = r.unwrap_or_else(|e| Err(ComponentError(format!("sink `{name}`: a writer failed: {e}"))));
            if result.is_ok() {
                result = r;
            }
        }
        result
    }))
}

/// The sink's metric handles, shared by its workers.
#[derive(Clone)]
struct SinkMetrics {
    sent: Counter,
    failed: Counter,
    files: Counter,
    rows: Counter,
    open: Gauge,
    pending: Gauge,
    skewed: Counter,
    truncated: Counter,
}

/// One writer: takes the next batch from the shared input, encodes it into its own files, rolls
/// them by age, and closes them all once the input ends.
async fn work(
    name: String,
    mut w: ArchiveWriter,
    input: Arc<tokio::sync::Mutex<Input>>,
    m: SinkMetrics,
    tick: std::time::Duration,
) -> Result<(), ComponentError> {
    // This worker's share of the open-files and pending-spans gauges.
    let mut open = 0usize;
    let mut pending = 0u64;
    // Spans count as sent once they are in a closed file; dropping the acknowledgements then
    // reports their batches delivered. Lost rows are counted and their batches reported errored.
    let mut note = |closed: Vec<Closed>, w: &mut ArchiveWriter| {
        for c in closed {
            m.files.increment(1);
            m.rows.increment(c.rows);
            m.sent.increment(c.rows);
            tracing::debug!(message = "Archive file closed.", path = %c.path.display(), rows = c.rows);
        }
        for lost in w.take_lost() {
            m.failed.increment(lost.rows);
            lost.acks.iter().for_each(|a| a.set_status(BatchStatus::Errored));
            tracing::error!(message = "Archive rows lost.", sink = %name, spans = lost.rows, error = %lost.error);
        }
        m.skewed.increment(w.take_skewed());
        m.truncated.increment(w.take_truncated());
        m.open.increment(w.open_files() as f64 - open as f64);
        open = w.open_files();
        m.pending.increment(w.pending_rows() as f64 - pending as f64);
        pending = w.pending_rows();
    };
    let mut timer = tokio::time::interval(tick);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // The lock is held only while waiting for a batch, not while encoding it.
            next = async { input.lock().await.recv().await } => match next {
                Some(batch) => {
                    let n = batch.span_count();
                    w.set_ack(batch.finalizers_only());
                    // Still-encoded batches (the usual case) go from protobuf to Arrow
                    // directly; decoded ones (a processor looked inside) from the structs.
                    let result = match batch.encoded_buffers() {
                        Some(bufs) => tokio::task::block_in_place(|| w.write_encoded(bufs, n, Instant::now())),
                        None => match batch.to_resource_spans() {
                            Ok(rs) => tokio::task::block_in_place(|| w.write(&rs, Instant::now())),
                            Err(e) => {
                                m.failed.increment(n as u64);
                                batch.set_status(BatchStatus::Rejected);
                                tracing::error!(message = "Cannot archive spans: the batch does not decode.", sink = %name, error = %e);
                                continue;
                            }
                        },
                    };
                    drop(batch);
                    match result {
                        Ok(closed) => note(closed, &mut w),
                        Err(e) => {
                            // What the error cost is in `take_lost` (counted by `note`); rows kept
                            // for a retry are not counted yet.
                            tracing::error!(message = "Cannot archive spans.", sink = %name, error = %e);
                            let closed = w.take_closed();
                            note(closed, &mut w);
                        }
                    }
                }
                None => {
                    return match tokio::task::block_in_place(|| w.close_all()) {
                        Ok(closed) => {
                            note(closed, &mut w);
                            Ok(())
                        }
                        Err(e) => {
                            // Whatever did not reach a closed file is lost: counted, reported.
                            w.abandon(&e);
                            let closed = w.take_closed();
                            note(closed, &mut w);
                            Err(ComponentError(format!("sink `{name}`: closing archive files failed: {e}")))
                        }
                    };
                }
            },
            _ = timer.tick() => {
                match tokio::task::block_in_place(|| w.roll_aged(Instant::now())) {
                    Ok(closed) => note(closed, &mut w),
                    Err(e) => {
                        tracing::error!(message = "Cannot close archive file.", sink = %name, error = %e);
                        let closed = w.take_closed();
                        note(closed, &mut w);
                    }
                }
            }
        }
    }
}
