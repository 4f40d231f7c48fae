//! The Parquet sink's task: recovers leftovers, writes batches, rolls aged files, closes
//! everything on shutdown.

use std::time::Instant;

use tracepipe_pipeline::archive::layout::{self, Recovered};
use tracepipe_pipeline::telemetry::names;
use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentError, ComponentFuture};
use tracepipe_pipeline::BatchStatus;

use super::config::ParquetSinkConfig;
use super::writer::{ArchiveWriter, Closed};

/// Creates the archive root, recovers what a crash left, and returns the task.
pub async fn build(cfg: ParquetSinkConfig, mut ctx: ComponentContext) -> Result<ComponentFuture, BuildError> {
    let mut input = ctx.take_input()?;
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
    let sent = metrics::counter!(names::SINK_SENT_SPANS, "sink" => name.clone());
    let failed = metrics::counter!(names::SINK_FAILED_SPANS, "sink" => name.clone(), "reason" => "io");
    let files = metrics::counter!(names::SINK_PARQUET_FILES, "sink" => name.clone());
    let rows = metrics::counter!(names::SINK_PARQUET_ROWS, "sink" => name.clone());
    let open = metrics::gauge!(names::SINK_PARQUET_OPEN_FILES, "sink" => name.clone());
    let tick = (cfg.roll.max_age.get() / 4).clamp(std::time::Duration::from_millis(10), std::time::Duration::from_secs(5));
    let mut w = ArchiveWriter::new(cfg);
    let note = move |closed: Vec<Closed>, w: &ArchiveWriter| {
        for c in closed {
            files.increment(1);
            rows.increment(c.rows);
            tracing::debug!(message = "Archive file closed.", path = %c.path.display(), rows = c.rows);
        }
        open.set(w.open_files() as f64);
    };
    Ok(Box::pin(async move {
        let mut timer = tokio::time::interval(tick);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                next = input.recv() => match next {
                    Some(batch) => {
                        let n = batch.span_count();
                        // Still-encoded batches (the usual case) go from protobuf to Arrow
                        // directly; decoded ones (a processor looked inside) from the structs.
                        let result = match batch.encoded_buffers() {
                            Some(bufs) => tokio::task::block_in_place(|| w.write_encoded(bufs, n, Instant::now())).map_err(|e| e.to_string()),
                            None => batch
                                .to_resource_spans()
                                .map_err(|e| e.to_string())
                                .and_then(|rs| tokio::task::block_in_place(|| w.write(&rs, Instant::now())).map_err(|e| e.to_string())),
                        };
                        match result {
                            Ok(closed) => {
                                sent.increment(n as u64);
                                note(closed, &w);
                            }
                            Err(e) => {
                                failed.increment(n as u64);
                                batch.set_status(BatchStatus::Errored);
                                tracing::error!(message = "Cannot archive spans.", sink = %name, error = %e);
                            }
                        }
                    }
                    None => {
                        let closed = tokio::task::block_in_place(|| w.close_all()).map_err(|e| ComponentError(format!("sink `{name}`: closing archive files failed: {e}")))?;
                        note(closed, &w);
                        return Ok(());
                    }
                },
                _ = timer.tick() => {
                    match tokio::task::block_in_place(|| w.roll_aged(Instant::now())) {
                        Ok(closed) => note(closed, &w),
                        Err(e) => tracing::error!(message = "Cannot close archive file.", sink = %name, error = %e),
                    }
                }
            }
        }
    }))
}
