//! The clock processors' waits run on: wall time minus the time an input was stalled.
//!
//! A processor that holds spans for a wait (guid inference's `wait`, tail sampling's
//! `decision_wait`, `group_by_trace`) assumes that what belongs together arrives within it. When
//! the input itself is stalled — a Kafka receiver whose brokers are all unreachable — the rest of a
//! request is not late, it is stuck upstream; deciding on what arrived before the stall delivers
//! requests in part. So a receiver that knows its source is stalled says so ([`Stall`]), and
//! while any input is stalled this clock stands still: held spans keep waiting, and resume
//! counting when the input flows again (a Kafka receiver's `outage_grace`: that long after records
//! flow again, for a tier whose upstream tier sends what it held only after a wait of its own).
//! Nothing new arrives from a stalled input, so what is held
//! does not grow from it; byte bounds still decide early whatever the clock says. Process-wide:
//! a graph that reads Kafka and live OTLP holds the live spans longer during a Kafka outage.
//!
//! (Following the records' produce time while a replica reads behind was built and measured
//! (2026-12-04): it stands still through a whole backlog, so the bench's burst of 500,000 spans
//! drained in 129 s instead of 35–48 (4,300 spans/s end to end against 13,000–21,000): reverted.)
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

/// The processors' now: wall time minus every stall so far.
pub fn now() -> Instant {
    let wall = Instant::now();
    wall.checked_sub(paused()).unwrap_or(wall)
}

/// The wall time at which this clock reaches `t`, if no further stall happens (what to sleep
/// until).
pub fn wall(t: Instant) -> Instant {
    t + paused()
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
