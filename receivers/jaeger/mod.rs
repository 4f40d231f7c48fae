//! `type: jaeger` — stands in for the Jaeger agent and the collector's HTTP endpoint, and serves
//! sampling strategies.
//!
//! - Agent UDP `Agent.emitBatch`: thrift **compact** on `thrift_compact` (6831) and thrift
//!   **binary** (strict and non-strict headers) on `thrift_binary` (6832). Oversized, truncated
//!   and garbage datagrams are counted (`tracepipe_receiver_malformed_requests_total`) and
//!   dropped; when the decode queue is full whole datagrams are dropped and their spans counted
//!   (`tracepipe_receiver_refused_spans_total{transport="udp"}`).
//! - Collector HTTP `POST /api/traces` on `thrift_http` (14268): a bare thrift-binary
//!   `jaeger.Batch` (`Content-Type: application/x-thrift` or
//!   `application/vnd.apache.thrift.binary`), with Content-Length or chunked; answers 202, 400 for
//!   bad bodies, 413 over the size limit, 503 + `Retry-After` when the graph is full.
//! - Remote sampling on `sampling` (5778): see [`sampling`].
//!
//! Spans are translated as the OpenTelemetry Collector's Jaeger translator does (see
//! [`translate`]) and enter the graph encoded as OTLP protobuf.

mod config;
pub mod encode;
mod http;
pub mod model;
pub mod sampling;
pub mod translate;
mod udp;

#[cfg(test)]
mod tests;

pub use config::{HttpConfig, JaegerConfig, SamplingConfig, UdpConfig};

use metrics::Counter;
use tracepipe_pipeline::telemetry::names;
use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentFuture, Output, Refused};
use tracepipe_pipeline::Batch;

/// Per-transport counters, resolved once.
struct Counters {
    accepted: Counter,
    refused_full: Counter,
    refused_shutdown: Counter,
    rejected: Counter,
}

impl Counters {
    fn new(receiver: &str, transport: &'static str) -> Self {
        let r = receiver.to_owned();
        Counters {
            accepted: metrics::counter!(names::RECEIVER_ACCEPTED_SPANS, "receiver" => r.clone(), "transport" => transport),
            refused_full: metrics::counter!(names::RECEIVER_REFUSED_SPANS, "receiver" => r.clone(), "transport" => transport, "reason" => "pipeline_full"),
            refused_shutdown: metrics::counter!(names::RECEIVER_REFUSED_SPANS, "receiver" => r.clone(), "transport" => transport, "reason" => "shutting_down"),
            rejected: metrics::counter!(names::RECEIVER_REJECTED_SPANS, "receiver" => r, "transport" => transport, "reason" => "invalid_span"),
        }
    }
}

fn malformed(receiver: &str, transport: &'static str, reason: &'static str) {
    metrics::counter!(names::RECEIVER_MALFORMED_REQUESTS, "receiver" => receiver.to_owned(), "transport" => transport, "reason" => reason).increment(1);
}

/// Encodes a Jaeger batch as OTLP (dropping spans with all-zero ids, counted as rejected) and
/// admits it into the graph in wire form.
async fn admit(batch: &model::JaegerBatch, output: &Output, wait: std::time::Duration, c: &Counters) -> Result<usize, Refused> {
    let enc = encode::encode_otlp(batch);
    c.rejected.increment(enc.rejected);
    let n = enc.spans;
    if n == 0 {
        return Ok(0);
    }
    match output.send_or_refuse(Batch::from_encoded(enc.bytes.into(), n), wait).await {
        Ok(()) => {
            c.accepted.increment(n as u64);
            Ok(n)
        }
        Err(e) => {
            match e {
                Refused::Full => c.refused_full.increment(n as u64),
                Refused::Closed => c.refused_shutdown.increment(n as u64),
            }
            Err(e)
        }
    }
}

/// Binds every configured transport and returns the task serving them until shutdown.
pub async fn build(cfg: JaegerConfig, mut ctx: ComponentContext) -> Result<ComponentFuture, BuildError> {
    let output = ctx.take_output()?;
    ctx.health.expect_receiver(&ctx.name);
    let wait = cfg.admission_timeout.get();
    let mut tasks: Vec<ComponentFuture> = Vec::new();
    if let Some(u) = &cfg.thrift_compact {
        tasks.push(udp::serve(u, model::Protocol::Compact, output.clone(), wait, &ctx).await?);
    }
    if let Some(u) = &cfg.thrift_binary {
        tasks.push(udp::serve(u, model::Protocol::Binary, output.clone(), wait, &ctx).await?);
    }
    if let Some(h) = &cfg.thrift_http {
        tasks.push(http::serve(h, output.clone(), wait, &ctx).await?);
    }
    if let Some(s) = &cfg.sampling {
        let store = sampling::Store::open(s.strategies_file.clone()).map_err(|e| ctx.error(e))?;
        let watch = tokio::spawn(store.clone().watch(s.reload_interval.get(), ctx.shutdown.clone()));
        let server = crate::serve::http(&s.endpoint, "sampling", sampling::router(store), &ctx).await?;
        tasks.push(Box::pin(async move {
            let r = server.await;
            watch.abort();
            r
        }));
    }
    drop(output);
    Ok(crate::serve::listeners(tasks, &ctx))
}
