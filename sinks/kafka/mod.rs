//! `type: kafka` — writes spans to a Kafka topic, as the OTel Collector's `kafka` exporter
//! does, for a gateway tier that scales out behind Kafka or for replaying archives into Kafka.
//!
//! - Records: `encoding: otlp_proto` (default; the value is an `ExportTraceServiceRequest`,
//!   wire-identical to `TracesData`) or `otlp_json`. With `partition_traces_by_id: true`
//!   (default) each trace is one record keyed by its trace id in hex, so a trace stays in one
//!   partition; otherwise a batch is one unkeyed record, its received bytes sent unchanged.
//!   Records above `max_message_bytes` are split by spans; a single span above it is dropped
//!   and counted (`reason="message_too_large"`).
//! - Delivery: librdkafka (rdkafka, bundled) with `acks: all`, retrying until `message_timeout`.
//!   A batch is settled when every record of it is acknowledged: `tracepipe_sink_sent_spans_total`,
//!   or `tracepipe_sink_failed_spans_total` with `reason` = `retries_exhausted`, `permanent`,
//!   `message_too_large`, `shutdown` or `decode`.
//! - Backpressure: when librdkafka's buffer (`max_buffer_bytes`) is full the sink stops reading
//!   its input. On shutdown it waits for acknowledgements, then after 20 s purges and counts
//!   what is left.

mod config;
mod encode;
mod sink;

#[cfg(test)]
mod tests;

pub use config::{Acks, Compression, Encoding, KafkaSinkConfig, PartitionBy};
pub use encode::{EncodeError, GuidKeys, Layout, Record, Records, group_by_trace, learn_guids};
pub use sink::build;
