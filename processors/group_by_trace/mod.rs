//! `type: group_by_trace` — holds each trace's spans for `wait` after its first span and passes
//! them on together (the OpenTelemetry Collector's `groupbytrace` processor, bounded in bytes).
//!
//! It is the tail-sampling engine with one policy that keeps everything: held spans stay encoded
//! inside `max_bytes`, `on_full` decides (here: releases) the oldest traces early or pushes back,
//! spans that arrive after their trace was released pass on at once (remembered for
//! `late_cache_size` traces), held batches' acknowledgements wait until the trace was delivered,
//! and shutdown releases everything. Its metrics are the tail-sampling family
//! (`tracepipe_processor_tail_sampling_*`) with this processor's name.
//!
//! Used in front of a Kafka sink with `partition_by: guid_or_trace_id` (deploy/scale-out): a
//! trace's application spans are keyed with the request id its proxy spans carry, so every
//! fragment of one request reaches one gateway.

mod config;

#[cfg(test)]
mod tests;

pub use config::GroupByTraceConfig;

use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentFuture};

/// Builds the processor task.
pub async fn build(cfg: GroupByTraceConfig, ctx: ComponentContext) -> Result<ComponentFuture, BuildError> {
    crate::tail_sampling::build(cfg.engine(), ctx).await
}
