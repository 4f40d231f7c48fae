//! The replay task: one DataFusion query over the archive, streamed, paced and sent on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use tokio::time::Instant;
use tracepipe_pipeline::archive::{self, schema};
use tracepipe_pipeline::telemetry::names;
use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentError, ComponentFuture};
use tracepipe_pipeline::batch::push_span;
use tracepipe_pipeline::Batch;

use super::config::{ArchiveConfig, Speed};

static REPLAYED: AtomicU64 = AtomicU64::new(0);

/// Spans every archive receiver of this process has sent on so far (for `tracepipe replay`'s
/// progress line).
pub fn progress() -> u64 {
    REPLAYED.load(Ordering::Relaxed)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

/// The SQL a receiver with these settings runs against the `spans` table.
pub fn query_sql(cfg: &ArchiveConfig) -> String {
    let mut conds = Vec::new();
    if let Some(w) = &cfg.filter {
        conds.push(format!("({w})"));
    }
    if let Some(f) = cfg.from {
        conds.push(format!("start_time >= TIMESTAMP '{}'", rfc3339(f)));
    }
    if let Some(t) = cfg.to {
        conds.push(format!("start_time < TIMESTAMP '{}'", rfc3339(t)));
    }
    let cond = if conds.is_empty() { "TRUE".to_owned() } else { conds.join(" AND ") };
    let select = if cfg.whole_traces {
        format!("SELECT * FROM spans WHERE trace_id IN (SELECT trace_id FROM spans WHERE {cond})")
    } else {
        format!("SELECT * FROM spans WHERE {cond}")
    };
    // Timed replays need start order; `max` streams in file order (no sort to hold in memory).
    match cfg.speed {
        Speed::Max => select,
        Speed::Factor(_) => format!("{select} ORDER BY start_time"),
    }
}

/// A DataFusion session over the archive at `path` (table `spans`), with a memory limit so
/// that sorts spill instead of growing without bound.
pub async fn session(path: &std::path::Path, batch_size: usize) -> Result<SessionContext, String> {
    let runtime = RuntimeEnvBuilder::new().with_memory_limit(512 * 1024 * 1024, 1.0).build_arc().map_err(|e| e.to_string())?;
    let ctx = SessionContext::new_with_config_rt(SessionConfig::new().with_batch_size(batch_size), runtime);
    archive::register(&ctx, "spans", path).await.map_err(|e| e.to_string())?;
    Ok(ctx)
}

/// The longest a paced replay waits between two spans (wall time, after `speed`): a longer gap
/// in the archive's start times (a span with a zero or absurd start time sorted first, a day
/// with no traffic) is skipped, logged, and pacing goes on from the span after it.
pub const MAX_PACED_WAIT: Duration = Duration::from_secs(60);

/// Decides when each span goes out and how its timestamps move.
struct Pacer {
    speed: Speed,
    shift: bool,
    /// The archive time the wall clock was anchored to.
    first: Option<u64>,
    /// The start time of the span before (spans come in start order when paced).
    prev: u64,
    wall: Instant,
    wall_unix: u64,
    /// Gaps skipped so far.
    skipped: u64,
}

impl Pacer {
    fn new(speed: Speed, shift: bool) -> Self {
        let wall_unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        Pacer { speed, shift, first: None, prev: 0, wall: Instant::now(), wall_unix, skipped: 0 }
    }

    fn anchor(&mut self, start: u64) {
        self.first = Some(start);
        self.wall = Instant::now();
        self.wall_unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    }

    /// (when the span is due, how far its timestamps move)
    fn place(&mut self, start: u64) -> (Option<Instant>, i128) {
        let factor = match self.speed {
            Speed::Max => 1.0,
            Speed::Factor(f) => f,
        };
        match self.first {
            // The clock starts at the first span, not when the query was planned.
            None => self.anchor(start),
            Some(_) if matches!(self.speed, Speed::Factor(_)) => {
                let gap = Duration::from_nanos((start.saturating_sub(self.prev) as f64 / factor).min(u64::MAX as f64) as u64);
                if gap > MAX_PACED_WAIT {
                    self.skipped += 1;
                    tracing::warn!(message = "Paced replay skips a gap in the archive's start times.", gap = ?gap, from_ns = self.prev, to_ns = start, max_wait = ?MAX_PACED_WAIT);
                    self.anchor(start);
                }
            }
            Some(_) => {}
        }
        self.prev = start;
        let first = self.first.unwrap_or(start);
        let since = Duration::from_nanos(((start.saturating_sub(first)) as f64 / factor).min(u64::MAX as f64) as u64);
        let due = matches!(self.speed, Speed::Factor(_)).then(|| self.wall + since);
        let delta = if self.shift { (self.wall_unix + since.as_nanos() as u64) as i128 - start as i128 } else { 0 };
        (due, delta)
    }
}

fn shift(t: u64, delta: i128) -> u64 {
    (t as i128 + delta).clamp(0, u64::MAX as i128) as u64
}

/// Opens the archive and plans the query (so a missing archive or a `where` naming an unknown
/// column fails at start), then returns the task.
pub async fn build(cfg: ArchiveConfig, mut ctx: ComponentContext) -> Result<ComponentFuture, BuildError> {
    let output = ctx.take_output()?;
    let session = session(&cfg.path, cfg.batch_size).await.map_err(|e| ctx.error(e))?;
    let sql = query_sql(&cfg);
    let df = session.sql(&sql).await.map_err(|e| ctx.error(format!("cannot plan the replay query: {e}")))?;
    let name = ctx.name.clone();
    let shutdown = ctx.shutdown.clone();
    let accepted = metrics::counter!(names::RECEIVER_ACCEPTED_SPANS, "receiver" => name.clone(), "transport" => "archive");
    let read = metrics::counter!(names::RECEIVER_ARCHIVE_READ_SPANS, "receiver" => name.clone());
    tracing::info!(message = "Replaying archive.", receiver = %name, path = %cfg.path.display(), query = %sql);
    Ok(Box::pin(async move {
        let err = |e: String| ComponentError(format!("receiver `{name}`: {e}"));
        let mut stream = df.execute_stream().await.map_err(|e| err(e.to_string()))?;
        let mut pacer = Pacer::new(cfg.speed, cfg.shift_to_now);
        let mut total = 0u64;
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                n = stream.next() => n,
            };
            let Some(rb) = next else { break };
            let rb = rb.map_err(|e| err(e.to_string()))?;
            let rs = schema::from_record_batch(&rb).map_err(|e| err(e.to_string()))?;
            read.increment(rb.num_rows() as u64);
            // Walk the spans in row order; send what is due before waiting for a later span.
            let mut group: Vec<ResourceSpans> = Vec::new();
            let mut in_group = 0usize;
            for r in rs {
                for ss in r.scope_spans {
                    for mut s in ss.spans {
                        let (due, delta) = pacer.place(s.start_time_unix_nano);
                        if let Some(due) = due
                            && due > Instant::now() + Duration::from_millis(1)
                        {
                            if in_group > 0 {
                                output.send(Batch::from_resource_spans(std::mem::take(&mut group))).await.map_err(|e| err(e.to_string()))?;
                                accepted.increment(in_group as u64);
                                REPLAYED.fetch_add(in_group as u64, Ordering::Relaxed);
                                in_group = 0;
                            }
                            tokio::select! {
                                _ = shutdown.cancelled() => return Ok(()),
                                _ = tokio::time::sleep_until(due) => {}
                            }
                        }
                        if delta != 0 {
                            s.start_time_unix_nano = shift(s.start_time_unix_nano, delta);
                            s.end_time_unix_nano = shift(s.end_time_unix_nano, delta);
                            for e in &mut s.events {
                                e.time_unix_nano = shift(e.time_unix_nano, delta);
                            }
                        }
                        push_span(&mut group, &r.resource, &r.schema_url, &ss.scope, &ss.schema_url, s);
                        in_group += 1;
                    }
                }
            }
            if in_group > 0 {
                output.send(Batch::from_resource_spans(group)).await.map_err(|e| err(e.to_string()))?;
                accepted.increment(in_group as u64);
                REPLAYED.fetch_add(in_group as u64, Ordering::Relaxed);
            }
            total += rb.num_rows() as u64;
        }
        tracing::info!(message = "Archive replay finished.", receiver = %name, spans = total, gaps_skipped = pacer.skipped);
        Ok(())
    }))
}


#[cfg(test)]
mod pacing_tests {
    use super::*;

    /// A first span at time 0 (or any outlier) does not make a paced replay sleep for decades:
    /// the gap after it is skipped and pacing goes on from the next span.
    #[tokio::test]
    async fn an_outlier_start_time_does_not_stall_a_paced_replay() {
        let mut p = Pacer::new(Speed::Factor(1.0), true);
        let t = 1_795_000_000_000_000_000u64;
        let (due0, _) = p.place(0);
        let (due1, delta1) = p.place(t);
        let (due2, _) = p.place(t + 500_000_000);
        let now = Instant::now();
        assert!(due0.unwrap() <= now + Duration::from_millis(5));
        assert!(due1.unwrap() <= now + Duration::from_millis(5), "the 56-year gap is skipped");
        let wait = due2.unwrap().saturating_duration_since(now);
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(505), "pacing resumes: {wait:?}");
        assert_eq!(p.skipped, 1);
        // Shifted to now from the new anchor.
        let now_unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i128;
        assert!((t as i128 + delta1 - now_unix).abs() < 1_000_000_000);
        // A gap under the limit is waited for, not skipped.
        let mut p = Pacer::new(Speed::Factor(10.0), false);
        p.place(t);
        let (due, _) = p.place(t + 300_000_000_000); // 5 min of archive time at 10x = 30 s
        assert!(due.unwrap().saturating_duration_since(Instant::now()) > Duration::from_secs(29));
        assert_eq!(p.skipped, 0);
    }
}
