//! `tracepipe sample`: a processor's policies over traces read back from an archive, to see what
//! they would keep before going live.
//!
//! Traces are fed whole (the archive is read ordered by trace id) to one decider with no caps and
//! no time limits, and every trace is decided on all its spans, as a live processor decides a
//! trace whose spans all arrived within `decision_wait`. The report gives, per policy, the traces
//! and spans it voted to sample; overall, the traces and spans kept; and the sum of the kept
//! spans' adjusted counts against the true total, which checks the adjusted counts. Rate-based
//! policies (`rate_limiting`, `bytes_limiting`, `composite`) depend on live arrival rates: here
//! every trace is decided within one simulated second, so their figures are a lower bound.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use serde::Serialize;
use tokio::time::Instant;

use super::config::TailSamplingConfig;
use super::policy::{Final, Policies, Vote};
use super::processor::{Front, Shard};
use super::trace::TraceId;

/// One policy's votes.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct PolicyReport {
    /// The policy.
    pub name: String,
    /// Traces it voted to sample (including inverted-sampled votes).
    pub traces: u64,
    /// Their spans.
    pub spans: u64,
}

/// What the policies would do to the archived traces.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Report {
    /// Per top-level policy, in order.
    pub policies: Vec<PolicyReport>,
    /// Traces read.
    pub traces: u64,
    /// Spans read.
    pub spans: u64,
    /// Traces kept.
    pub kept_traces: u64,
    /// Spans kept.
    pub kept_spans: u64,
    /// Σ over kept spans of their adjusted count (1/p), for those whose p is known.
    pub adjusted_spans: f64,
    /// Kept spans whose adjusted count is unknown (kept by a rate-based policy only).
    pub unknown_adjusted_spans: u64,
    /// Ids of the kept traces (hex), when asked for.
    pub kept_trace_ids: Vec<String>,
}

/// Tallies decisions (held by the decider in simulation mode).
pub(crate) struct Tally {
    pub(crate) report: Report,
    pub(crate) list_kept: bool,
    pub(crate) votes: Vec<Option<Vote>>,
}

impl Tally {
    pub(crate) fn add(&mut self, id: &TraceId, spans: u64, outcome: Final, probability: Option<f64>) {
        let r = &mut self.report;
        r.traces += 1;
        r.spans += spans;
        for (p, v) in r.policies.iter_mut().zip(&self.votes) {
            if matches!(v, Some(Vote::Sampled | Vote::InvertSampled)) {
                p.traces += 1;
                p.spans += spans;
            }
        }
        if outcome == Final::Sampled {
            r.kept_traces += 1;
            r.kept_spans += spans;
            match probability {
                Some(p) if p > 0.0 => r.adjusted_spans += spans as f64 / p,
                _ => r.unknown_adjusted_spans += spans,
            }
            if self.list_kept {
                r.kept_trace_ids.push(id.iter().map(|b| format!("{b:02x}")).collect());
            }
        }
    }
}

/// A simulation run.
pub struct Simulation {
    front: Front,
    shard: Shard,
    now: Instant,
}

impl Simulation {
    /// A simulation of a processor's policies (`list_kept`: also list the kept trace ids).
    pub fn new(mut cfg: TailSamplingConfig, list_kept: bool) -> Simulation {
        cfg.max_trace_spans = u64::MAX;
        cfg.max_trace_bytes = u64::MAX;
        cfg.max_bytes = u64::MAX;
        cfg.num_traces = 0;
        cfg.mark_policy = false;
        cfg.decision_cache.sampled_cache_size = 0;
        cfg.decision_cache.non_sampled_cache_size = 0;
        cfg.shards = 1;
        cfg.state_dir = None;
        cfg.decision_wait_after_root = std::time::Duration::ZERO;
        let cfg = Arc::new(cfg);
        let held = Arc::new(AtomicI64::new(0));
        let policies = Arc::new(Policies::new(&cfg.policies, "sample", cfg.sample_on_first_match));
        let report = Report { policies: policies.list.iter().map(|p| PolicyReport { name: p.name.clone(), ..Default::default() }).collect(), ..Default::default() };
        let (shard, front) = Shard::simulation(cfg, policies, held, Tally { report, list_kept, votes: Vec::new() });
        Simulation { front, shard, now: Instant::now() }
    }

    /// Takes the spans of one `TracesData` (from the archive, ordered by trace id).
    pub fn feed(&mut self, traces_data: &[u8]) -> Result<(), tracepipe_pipeline::wire::WireError> {
        for p in self.front.split_bytes(traces_data)? {
            if p.spans > 0 {
                self.shard.ingest(p, self.now);
            }
        }
        Ok(())
    }

    /// Decides every trace held but `open` (whose spans may continue in the next batch).
    pub fn decide_all_but(&mut self, open: Option<&TraceId>) {
        self.shard.decide_all_but(open, self.now);
        drop(self.shard.take_ready());
    }

    /// Decides what is left and returns the report.
    pub fn finish(mut self) -> Report {
        self.decide_all_but(None);
        self.shard.take_tally().map(|t| t.report).unwrap_or_default()
    }
}
