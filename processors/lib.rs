//! # tracepipe-processors
//!
//! Components that read batches, change or regroup them, and pass them on. One folder each:
//! - [`batch`]: the OpenTelemetry Collector's batch processor (size trigger, timeout trigger,
//!   maximum-size split);
//! - [`group_by_trace`]: holds each trace's spans for a while and passes them on together (the
//!   OTel Collector's `groupbytrace`), on the tail-sampling engine;
//! - [`guid_inference`]: rebuilds traces broken apart by proxies from `guid:x-request-id`;
//! - [`tail_sampling`]: decides on whole traces with the OTel Collector's policies, inside a
//!   byte budget.
//!
//! Registration is the one explicit `match` in [`validate`].

pub mod batch;
pub mod group_by_trace;
pub mod guid_inference;
pub mod tail_sampling;

use tracepipe_config::{ComponentDecl, ConfigError};
use tracepipe_pipeline::topology::{BuildFuture, ComponentContext};

/// Every processor type.
pub const TYPES: &[&str] = &["batch", "group_by_trace", "guid_inference", "tail_sampling"];

/// A processor's validated configuration.
#[derive(Debug, Clone)]
pub enum ProcessorConfig {
    /// `type: batch`.
    Batch(batch::BatchConfig),
    /// `type: group_by_trace`.
    GroupByTrace(group_by_trace::GroupByTraceConfig),
    /// `type: guid_inference`.
    GuidInference(guid_inference::GuidInferenceConfig),
    /// `type: tail_sampling`.
    TailSampling(tail_sampling::TailSamplingConfig),
}

/// Checks a processor declaration; no I/O.
pub fn validate(decl: &ComponentDecl, file: &str) -> Result<ProcessorConfig, Vec<ConfigError>> {
    match decl.type_name.as_str() {
        "batch" => batch::BatchConfig::from_node(&decl.body, file).map(ProcessorConfig::Batch),
        "group_by_trace" => group_by_trace::GroupByTraceConfig::from_node(&decl.body, file).map(ProcessorConfig::GroupByTrace),
        "guid_inference" => guid_inference::GuidInferenceConfig::from_node(&decl.body, file).map(ProcessorConfig::GuidInference),
        "tail_sampling" => tail_sampling::TailSamplingConfig::from_node(&decl.body, file).map(ProcessorConfig::TailSampling),
        "" => Err(vec![]),
        other => Err(vec![ConfigError::new(
            file,
            decl.type_pos,
            format!("unknown processor type `{other}`; known types: {}", TYPES.join(", ")),
        )]),
    }
}

impl ProcessorConfig {
    /// Builds the processor task.
    pub fn build(self, ctx: ComponentContext) -> BuildFuture {
        match self {
            ProcessorConfig::Batch(c) => Box::pin(batch::build(c, ctx)),
            ProcessorConfig::GroupByTrace(c) => Box::pin(group_by_trace::build(c, ctx)),
            ProcessorConfig::GuidInference(c) => Box::pin(guid_inference::build(c, ctx)),
            ProcessorConfig::TailSampling(c) => Box::pin(tail_sampling::build(c, ctx)),
        }
    }
}
