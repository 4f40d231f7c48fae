//! `type: kafka` — consumes OTLP spans from a Kafka topic as a consumer group, as the OTel
//! Collector's `kafka` receiver does: the second tier of a gateway scaled out behind Kafka (the
//! Kafka sink keys each trace by its id, so one consumer sees a whole trace).
//!
//! - Records: `encoding: otlp_proto` (default) or `otlp_json`, validated like OTLP requests
//!   (the wire scan; spans with bad ids dropped and counted `rejected`); a record that does not
//!   decode is counted in `tracepipe_receiver_malformed_requests_total{transport="kafka"}`,
//!   logged with its partition and offset, and skipped.
//! - At least once: offsets are stored for commit (auto-commit from the store) only when every
//!   record up to them has been delivered by the graph (or counted as failed by a sink), in order
//!   per partition whatever order sinks finish in. When the graph is full the receiver waits
//!   (Kafka keeps what is not read). On shutdown it stops reading, gives up every partition (held
//!   traces go back undecided), lets the graph drain (up to `shutdown_timeout`) and commits;
//!   anything undelivered is read again after a restart.
//! - Rebalancing (cooperative-sticky by default): partitions taken away are handed over — what
//!   processors hold of them is let go undecided and left uncommitted, decided records get up to
//!   `revoke_timeout` to be acknowledged, then a synchronous commit — before they move (lag.rs).
//! - `message_marking` (the OTel Collector's setting): by default a record whose delivery failed
//!   with a retryable error (a sink gave up after its `max_elapsed_time`) stays uncommitted and is
//!   delivered again with backoff (1 s doubling to 30 s; no new record is read meanwhile), counted
//!   in `tracepipe_receiver_kafka_redelivered_records_total`; `on_error: true` commits past it
//!   instead. A permanent failure is committed past, logged and counted in
//!   `tracepipe_receiver_kafka_committed_failed_records_total{reason}`. `after: false` commits on
//!   read (at most once).
//! - `progress_topic`: what each owner finished past its commit outlives it; a replica taking a
//!   partition over skips those records (`tracepipe_receiver_kafka_already_done_records_total`)
//!   instead of delivering them twice or deciding a request on the part it re-read (progress.rs);
//!   a skipped record whose key comes again in a record that was not finished is sent with it, so
//!   the two are decided together (stash.rs).
//! - Lag: `tracepipe_receiver_kafka_lag_records{topic, partition}` from librdkafka's statistics.

mod config;
mod lag;
mod offsets;
mod progress;
mod receiver;
mod stash;

#[cfg(test)]
mod tests;

pub use config::{Encoding, InitialOffset, KafkaReceiverConfig, MessageMarking};
pub use offsets::{OffsetTracker, Progress};
pub use receiver::build;
