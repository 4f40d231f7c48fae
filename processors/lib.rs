//! # tracepipe-processors
//!
//! Components that read batches, change or regroup them, and pass them on. One folder each:
//! - [`batch`]: the OpenTelemetry Collector's batch processor (size trigger, timeout trigger,
//!   maximum-size split).
//!
//! Registration is the one explicit `match` in [`validate`].

pub mod batch;

use tracepipe_config::{ComponentDecl, ConfigError};
use tracepipe_pipeline::topology::{BuildFuture, ComponentContext};

/// Every processor type.
pub const TYPES: &[&str] = &["batch"];

/// A processor's validated configuration.
#[derive(Debug, Clone)]
pub enum ProcessorConfig {
    /// `type: batch`.
    Batch(batch::BatchConfig),
}

/// Checks a processor declaration; no I/O.
pub fn validate(decl: &ComponentDecl, file: &str) -> Result<ProcessorConfig, Vec<ConfigError>> {
    match decl.type_name.as_str() {
        "batch" => batch::BatchConfig::from_node(&decl.body, file).map(ProcessorConfig::Batch),
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
        }
    }
}
