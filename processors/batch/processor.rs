//! The batch processor's task.

use metrics::{Counter, Histogram};
use tokio::time::Instant;
use tracepipe_pipeline::telemetry::names;
use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentError, ComponentFuture, Output};
use tracepipe_pipeline::{Batch, BatchStatus};

use super::config::BatchConfig;

#[derive(Clone, Copy)]
enum Trigger {
    Size,
    Timeout,
    Shutdown,
}

struct Emitter {
    output: Output,
    max: usize,
    dropped: Counter,
    sizes: Histogram,
    by_size: Counter,
    by_timeout: Counter,
    by_shutdown: Counter,
    name: String,
}

impl Emitter {
    async fn emit(&self, mut pending: Batch, trigger: Trigger) -> Result<(), ComponentError> {
        loop {
            let piece = if self.max > 0 && pending.span_count() > self.max {
                match pending.split_to(self.max) {
                    Ok(piece) => piece,
                    Err(e) => {
                        self.drop_bad(&pending, &e);
                        return Ok(());
                    }
                }
            } else {
                std::mem::replace(&mut pending, Batch::empty())
            };
            if piece.is_empty() {
                return Ok(());
            }
            self.sizes.record(piece.span_count() as f64);
            match trigger {
                Trigger::Size => self.by_size.increment(1),
                Trigger::Timeout => self.by_timeout.increment(1),
                Trigger::Shutdown => self.by_shutdown.increment(1),
            }
            self.output
                .send(piece)
                .await
                .map_err(|e| ComponentError(format!("processor `{}`: downstream stopped: {e}", self.name)))?;
        }
    }

    /// Counts and drops a batch that does not decode (its finalizers report it rejected); the
    /// processor goes on.
    fn drop_bad(&self, batch: &Batch, error: &dyn std::fmt::Display) {
        self.dropped.increment(batch.span_count() as u64);
        batch.set_status(BatchStatus::Rejected);
        tracing::error!(message = "Batch does not decode; spans dropped.", processor = %self.name, spans = batch.span_count(), %error);
    }
}

/// Builds the batch processor task.
pub async fn build(cfg: BatchConfig, mut ctx: ComponentContext) -> Result<ComponentFuture, BuildError> {
    let mut input = ctx.take_input()?;
    let output = ctx.take_output()?;
    let p = ctx.name.clone();
    let em = Emitter {
        output,
        max: cfg.send_batch_max_size,
        dropped: metrics::counter!(names::PROCESSOR_DROPPED_SPANS, "processor" => p.clone(), "reason" => "decode"),
        sizes: metrics::histogram!(names::PROCESSOR_BATCH_SIZE, "processor" => p.clone()),
        by_size: metrics::counter!(names::PROCESSOR_BATCH_SENDS, "processor" => p.clone(), "trigger" => "size"),
        by_timeout: metrics::counter!(names::PROCESSOR_BATCH_SENDS, "processor" => p.clone(), "trigger" => "timeout"),
        by_shutdown: metrics::counter!(names::PROCESSOR_BATCH_SENDS, "processor" => p.clone(), "trigger" => "shutdown"),
        name: p,
    };
    let timeout = cfg.timeout.get();
    let size = cfg.send_batch_size;
    let max_bytes = cfg.send_batch_max_bytes.get() as usize;
    Ok(Box::pin(async move {
        let mut pending = Batch::empty();
        // The pending batch's encoded size, added up per batch as they come (no re-scan).
        let mut pending_bytes = 0usize;
        // What the process-wide account (tracepipe_memory_held_bytes) has for the buffer: moved to
        // `pending_bytes` after each append, and to 0 only once an emitted batch is handed on.
        let held = tracepipe_pipeline::memory::Held::component(&em.name);
        let mut accounted = 0usize;
        let mut account = move |now: usize| {
            held.set_from(accounted, now);
            accounted = now;
        };
        let mut deadline: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                next = input.recv() => match next {
                    Some(b) => {
                        let bytes = b.encoded_len();
                        match pending.append(b) {
                            Ok(()) => pending_bytes += bytes,
                            Err(e) => {
                                em.drop_bad(&e.rejected, &e.error);
                                pending_bytes = pending.encoded_len();
                            }
                        }
                        account(pending_bytes);
                        if pending.span_count() >= size || pending_bytes >= max_bytes || timeout.is_zero() {
                            pending_bytes = 0;
                            let full = std::mem::replace(&mut pending, Batch::empty());
                            em.emit(full, if timeout.is_zero() { Trigger::Timeout } else { Trigger::Size }).await?;
                            account(0);
                            deadline = None;
                        } else if deadline.is_none() && !pending.is_empty() {
                            deadline = Some(Instant::now() + timeout);
                        }
                    }
                    None => {
                        let rest = std::mem::replace(&mut pending, Batch::empty());
                        em.emit(rest, Trigger::Shutdown).await?;
                        account(0);
                        return Ok(());
                    }
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    pending_bytes = 0;
                    let due = std::mem::replace(&mut pending, Batch::empty());
                    em.emit(due, Trigger::Timeout).await?;
                    account(0);
                    deadline = None;
                }
            }
        }
    }))
}
