//! `type: otlp` — exports batches to any OTLP endpoint (a collector, Rotel, a LightStep
//! satellite, another tracepipe).
//!
//! - `protocol: grpc` (default): `TraceService/Export`; `http/protobuf` and `http/json`:
//!   `POST {endpoint}/v1/traces` (if the endpoint has no path).
//! - `compression`: `gzip` (default, as the OTel Collector), `zstd` or `none`.
//! - `headers`: sent with every request (gRPC metadata or HTTP headers).
//! - `tls`: for `https://` endpoints — `ca_file`, client `cert_file`/`key_file`,
//!   `insecure_skip_verify`; without `ca_file` the Mozilla roots (webpki-roots) are trusted.
//! - The stack per batch: queue (bounded in spans; `when_full: block` applies backpressure,
//!   `drop_newest` drops and counts) → `num_consumers` workers → encode (encoded batches are
//!   written out byte for byte) → per-request `timeout` → retry with exponential backoff on
//!   retryable errors only (gRPC `UNAVAILABLE`, `RESOURCE_EXHAUSTED`, `ABORTED`,
//!   `DEADLINE_EXCEEDED`, `CANCELLED`, `OUT_OF_RANGE`, `DATA_LOSS`; HTTP 429/502/503/504 and
//!   connection errors, honouring `Retry-After`) until `max_elapsed_time`.
//!   Permanent errors are counted (`reason="permanent"`) and not retried.
//! - Request size: every request is at most `max_request_bytes` (default 4 MiB, uncompressed);
//!   bigger batches are cut by spans on the wire before sending. A request the upstream refuses
//!   as too large (tonic `OUT_OF_RANGE`/`RESOURCE_EXHAUSTED` "too large"/"size limit", grpc-go
//!   `RESOURCE_EXHAUSTED` "larger than max", HTTP 413) is cut in half and the halved size kept
//!   for later requests (`tracepipe_sink_split_requests_total`); a span too large on its own is
//!   dropped and counted (`reason="message_too_large"`).

mod client;
mod config;
mod sink;
mod tls;

#[cfg(test)]
mod tests;

pub use config::{Compression, OtlpSinkConfig, Protocol, QueueConfig, RetryConfig, TlsConfig, WhenFull};
pub use client::{ExportError, Exporter};
pub use sink::{build, build_with};
