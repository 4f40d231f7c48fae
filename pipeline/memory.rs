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
//!
//! Beside the resident total, [`Held`] accounts what each component holds, in encoded span
//! bytes: its input channel (counted by the topology), and what it keeps inside (the `batch`
//! buffer, guid inference and tail sampling's held traces, a sink's memory queue, the Kafka
//! producer's unacknowledged records). Exposed as `tracepipe_memory_held_bytes{component}`; when
//! the soft limit is crossed, the log line and `/readyz` name the largest holders.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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

/// Bytes one component holds (encoded span bytes), shared by the topology (its input channel)
/// and the component (what it keeps inside). Cheap to clone; adding and subtracting are two
/// atomic operations.
#[derive(Clone, Debug)]
pub struct Held(Arc<HeldInner>);

#[derive(Debug)]
struct HeldInner {
    bytes: AtomicI64,
    gauge: Option<metrics::Gauge>,
}

fn registry() -> &'static Mutex<HashMap<String, Held>> {
    static R: OnceLock<Mutex<HashMap<String, Held>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

impl Held {
    /// The account of component `name` (the same one for every caller), exported as
    /// `tracepipe_memory_held_bytes{component=name}`.
    pub fn component(name: &str) -> Held {
        let mut r = registry().lock().expect("held registry");
        r.entry(name.to_owned())
            .or_insert_with(|| Held(Arc::new(HeldInner { bytes: AtomicI64::new(0), gauge: Some(metrics::gauge!(names::MEMORY_HELD, "component" => name.to_owned())) })))
            .clone()
    }

    /// An account outside the registry (tests, components built without a topology).
    pub fn detached() -> Held {
        Held(Arc::new(HeldInner { bytes: AtomicI64::new(0), gauge: None }))
    }

    /// `n` more bytes held.
    #[inline]
    pub fn add(&self, n: usize) {
        self.0.bytes.fetch_add(n as i64, Ordering::Relaxed);
        if let Some(g) = &self.0.gauge {
            g.increment(n as f64);
        }
    }

    /// `n` bytes released.
    #[inline]
    pub fn sub(&self, n: usize) {
        self.0.bytes.fetch_sub(n as i64, Ordering::Relaxed);
        if let Some(g) = &self.0.gauge {
            g.decrement(n as f64);
        }
    }

    /// Moves the account from `old` to `new` bytes (for holders that know their total).
    #[inline]
    pub fn set_from(&self, old: usize, new: usize) {
        if new >= old {
            self.add(new - old)
        } else {
            self.sub(old - new)
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> i64 {
        self.0.bytes.load(Ordering::Relaxed)
    }
}

/// The largest holders, largest first: `component=bytes` for the `n` largest that hold any.
pub fn largest_holders(n: usize) -> String {
    let r = registry().lock().expect("held registry");
    let mut v: Vec<(String, i64)> = r.iter().map(|(k, h)| (k.clone(), h.bytes())).filter(|(_, b)| *b > 0).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(n);
    if v.is_empty() {
        return "no component holds span bytes (allocator or buffers outside the graph)".into();
    }
    v.into_iter().map(|(k, b)| format!("{k}={b}")).collect::<Vec<_>>().join(", ")
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
                    let holders = largest_holders(3);
                    tracing::warn!(message = "Memory above the soft limit; receivers refuse new data until it drops.", resident_bytes = rss, soft_limit_bytes = soft, limit_bytes = limit, largest_holders = %holders);
                    health.set_memory_pressure(Some(format!("resident memory {rss} bytes is above the soft limit of {soft} bytes (largest holders of span bytes: {holders})")));
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
    fn held_accounts_are_shared_by_name_and_ranked() {
        let a = Held::component("held-test-a");
        let a2 = Held::component("held-test-a");
        let b = Held::component("held-test-b");
        a.add(700);
        a2.sub(200);
        b.add(900);
        assert_eq!(a.bytes(), 500, "one account per component name");
        b.set_from(900, 100);
        assert_eq!(b.bytes(), 100);
        let ranked = largest_holders(usize::MAX);
        let pa = ranked.find("held-test-a=500").expect(&ranked);
        let pb = ranked.find("held-test-b=100").expect(&ranked);
        assert!(pa < pb, "largest first: {ranked}");
        let d = Held::detached();
        d.add(5);
        assert!(!largest_holders(usize::MAX).contains("=5,"), "detached accounts are not registered");
    }

    #[test]
    fn resident_memory_is_read() {
        let rss = resident_bytes().expect("/proc/self/status");
        assert!(rss > 1 << 20 && rss < 64 << 30, "{rss}");
    }
}
