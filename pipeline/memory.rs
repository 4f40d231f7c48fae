//! The process-wide memory limit (`memory:`), as the OpenTelemetry Collector's `memory_limiter`
//! does it: a sampler reads the process's resident memory every `check_interval`; while it is
//! above the soft limit (`limit × soft_ratio`), receivers refuse new data with the retryable
//! errors they already use (gRPC `UNAVAILABLE`, HTTP 503 + `Retry-After`; OTLP requests before
//! their body is read), UDP datagrams are dropped and counted, Kafka receivers stop reading, and
//! `/readyz` says why. Below 95% of the soft limit they resume. Resident memory counts what the
//! graph holds anywhere (channels, processors, sink queues, librdkafka's buffers) and the
//! allocator's overhead, which no per-component accounting sees.
//!
//! The state is process-wide (one process, one limit), read with one atomic load on every
//! admission.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::telemetry::{names, Health};

/// Above this many bytes of resident memory receivers refuse (0: no limit).
static SOFT_LIMIT: AtomicU64 = AtomicU64::new(0);
/// Set while resident memory is above the soft limit (cleared below 95% of it).
static PRESSURE: AtomicBool = AtomicBool::new(false);

/// True while receivers should refuse new data.
#[inline]
pub fn under_pressure() -> bool {
    PRESSURE.load(Ordering::Relaxed)
}

/// The process's resident memory, from `/proc/self/status` (`VmRSS`).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The memory limit of the cgroup the process runs in (v2 `memory.max`, else v1
/// `memory.limit_in_bytes`), if it has one.
pub fn cgroup_limit() -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
    // "max" (v2) or a huge number (v1's "unlimited") mean no limit.
    read("/sys/fs/cgroup/memory.max").or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes")).filter(|l| *l < 1 << 60)
}

/// The limit in force: `memory.limit`, else 80% of the cgroup's limit, else none.
pub fn effective_limit(cfg: &tracepipe_config::MemoryConfig) -> Option<u64> {
    cfg.limit.map(|l| l.get()).or_else(|| cgroup_limit().map(|l| l / 10 * 8))
}

/// One step of the sampler: the new pressure state for `resident` bytes against `soft`.
pub fn next_pressure(was: bool, resident: u64, soft: u64) -> bool {
    if was { resident > soft / 100 * 95 } else { resident > soft }
}

/// Starts the sampler (when a limit is in force) and returns the limit; the sampler runs until
/// the process ends.
pub fn start(cfg: &tracepipe_config::MemoryConfig, health: Health) -> Option<u64> {
    let limit = effective_limit(cfg)?;
    let soft = (limit as f64 * cfg.soft_ratio) as u64;
    SOFT_LIMIT.store(soft, Ordering::Relaxed);
    metrics::gauge!(names::MEMORY_LIMIT).set(limit as f64);
    metrics::gauge!(names::MEMORY_SOFT_LIMIT).set(soft as f64);
    let resident_gauge = metrics::gauge!(names::PROCESS_RESIDENT_MEMORY);
    let interval = cfg.check_interval.get();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(rss) = resident_bytes() else { continue };
            resident_gauge.set(rss as f64);
            let was = PRESSURE.load(Ordering::Relaxed);
            let now = next_pressure(was, rss, soft);
            if now != was {
                PRESSURE.store(now, Ordering::Relaxed);
                if now {
                    tracing::warn!(message = "Memory above the soft limit; receivers refuse new data until it drops.", resident_bytes = rss, soft_limit_bytes = soft, limit_bytes = limit);
                    health.set_memory_pressure(Some(format!("resident memory {rss} bytes is above the soft limit of {soft} bytes")));
                } else {
                    tracing::info!(message = "Memory back under the soft limit; receivers accept again.", resident_bytes = rss, soft_limit_bytes = soft);
                    health.set_memory_pressure(None);
                }
            }
        }
    });
    Some(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_has_hysteresis() {
        let soft = 1000;
        assert!(!next_pressure(false, 1000, soft));
        assert!(next_pressure(false, 1001, soft));
        // Once refusing, it takes dropping below 95% to accept again (no flapping at the line).
        assert!(next_pressure(true, 990, soft));
        assert!(next_pressure(true, 951, soft));
        assert!(!next_pressure(true, 950, soft));
    }

    #[test]
    fn resident_memory_is_read() {
        let rss = resident_bytes().expect("/proc/self/status");
        assert!(rss > 1 << 20 && rss < 64 << 30, "{rss}");
    }
}
