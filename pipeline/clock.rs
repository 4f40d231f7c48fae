//! The clock processors' waits run on: the time of the stream they read, not only the wall.
//!
//! A processor that holds spans for a wait (guid inference's `wait`, tail sampling's
//! `decision_wait`, `group_by_trace`) assumes that what belongs together arrives within it. Two
//! things break that when the input is a Kafka topic, and both deliver requests in part:
//! - **A stall**: the brokers are unreachable. The rest of a request is not late, it is stuck
//!   upstream. A receiver that knows says so ([`Stall`]), and while any input is stalled this
//!   clock stands still.
//! - **Catching up**: after a rebalance, a restart or an outage, a replica reads a backlog at
//!   whatever pace the broker serves it — records produced 1 s apart may be read 3 s apart, or
//!   100 ms apart. A receiver reports each record's produce time ([`observe`]); while the records
//!   it reads are older than [`TOLERANCE`], this clock runs that far behind the wall (never
//!   backwards: it stands still while the distance grows), so a wait measures the stream's time.
//!   Once records are current again, or none came for [`IDLE`], it is the wall clock again (what
//!   came due meanwhile is released at once).
//!
//! Nothing new arrives from a stalled input, so what is held does not grow from it; byte bounds
//! still decide early whatever the clock says. Process-wide: a graph that reads Kafka and live
//! OTLP holds the live spans longer while Kafka is behind.
//!
//! Built on `tokio::time::Instant`, so tests with a paused runtime clock drive it too.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Inputs stalled right now.
static STALLED: AtomicU64 = AtomicU64::new(0);

/// Stall time accumulated by finished stalls (nanoseconds), and when the current one began.
static PAUSED: Mutex<(u64, Option<Instant>)> = Mutex::new((0, None));

fn paused() -> Duration {
    let g = PAUSED.lock().unwrap_or_else(|e| e.into_inner());
    Duration::from_nanos(g.0) + g.1.map_or(Duration::ZERO, |since| since.elapsed())
}

/// Records produced less than this long before they are read count as current: normal latency
/// between tiers (and clock skew between hosts) does not slow the clock.
pub const TOLERANCE: Duration = Duration::from_secs(1);

/// The most the clock runs behind for old records: a topic whose producers stamp records with
/// old times (or a backlog of days) must not hold decisions for that long; past this, waits
/// measure the wall again.
pub const MAX_BEHIND: Duration = Duration::from_secs(60);

/// With no record observed for this long, the input is idle, not behind.
pub const IDLE: Duration = Duration::from_secs(1);

/// How far behind the wall the stream is: the distance, when it was last set, when a record was
/// last observed.
struct Behind {
    by: Duration,
    at: std::time::Instant,
    observed: Option<std::time::Instant>,
}

static BEHIND: Mutex<Option<Behind>> = Mutex::new(None);

/// A record produced at `produced` (its Kafka timestamp) was just read.
pub fn observe(produced: std::time::SystemTime) {
    let age = std::time::SystemTime::now().duration_since(produced).unwrap_or_default();
    let target = age.saturating_sub(TOLERANCE).min(MAX_BEHIND);
    let now = std::time::Instant::now();
    let mut g = BEHIND.lock().unwrap_or_else(|e| e.into_inner());
    let b = g.get_or_insert(Behind { by: Duration::ZERO, at: now, observed: None });
    let current = current_by(b, now);
    // The distance grows no faster than the wall (the clock stands still, never goes back);
    // it shrinks at once (the clock jumps ahead to the stream).
    let by = target.min(current + now.saturating_duration_since(b.at));
    *b = Behind { by, at: now, observed: Some(now) };
}

fn current_by(b: &Behind, now: std::time::Instant) -> Duration {
    match b.observed {
        Some(t) if now.saturating_duration_since(t) < IDLE => b.by,
        _ => Duration::ZERO,
    }
}

fn behind() -> Duration {
    let g = BEHIND.lock().unwrap_or_else(|e| e.into_inner());
    g.as_ref().map_or(Duration::ZERO, |b| current_by(b, std::time::Instant::now()))
}

/// The processors' now: wall time minus every stall so far and minus how far behind the stream
/// read is.
pub fn now() -> Instant {
    let wall = Instant::now();
    wall.checked_sub(paused() + behind()).unwrap_or(wall)
}

/// The wall time at which this clock reaches `t`, if nothing changes meanwhile (what to sleep
/// until).
pub fn wall(t: Instant) -> Instant {
    t + paused() + behind()
}

/// True while some input is stalled (the clock stands still).
pub fn stalled() -> bool {
    STALLED.load(Ordering::Acquire) > 0
}

/// One input's stall state; the clock stands still while any is stalled. Dropping it ends its
/// stall.
#[derive(Debug, Default)]
pub struct Stall {
    on: AtomicBool,
}

impl Stall {
    pub fn new() -> Self {
        Stall::default()
    }

    /// The input's source is unreachable (idempotent).
    pub fn begin(&self) {
        if !self.on.swap(true, Ordering::AcqRel) {
            let mut g = PAUSED.lock().unwrap_or_else(|e| e.into_inner());
            if STALLED.fetch_add(1, Ordering::AcqRel) == 0 {
                g.1 = Some(Instant::now());
            }
        }
    }

    /// The input flows again (idempotent).
    pub fn end(&self) {
        if self.on.swap(false, Ordering::AcqRel) {
            let mut g = PAUSED.lock().unwrap_or_else(|e| e.into_inner());
            if STALLED.fetch_sub(1, Ordering::AcqRel) == 1
                && let Some(since) = g.1.take()
            {
                g.0 += since.elapsed().as_nanos() as u64;
            }
        }
    }

    /// True while this input is stalled.
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        self.end();
    }
}
