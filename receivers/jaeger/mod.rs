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

use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentFuture, Refused};
use tracepipe_pipeline::Batch;

use crate::serve::Admission;

/// Encodes a Jaeger batch as OTLP (dropping spans with all-zero ids, counted as rejected) and
/// admits it into the graph in wire form.
async fn admit(batch: &model::JaegerBatch, adm: &Admission) -> Result<usize, Refused> {
    let enc = encode::encode_otlp(batch);
    adm.rejected(enc.rejected);
    if enc.spans == 0 {
        return Ok(0);
    }
    adm.admit(Batch::from_encoded(enc.bytes.into(), enc.spans)).await.map(|()| enc.spans)
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
        tasks.push(http::serve(h, &cfg.auth, output.clone(), wait, &ctx).await?);
    }
    if let Some(s) = &cfg.sampling {
        let store = sampling::Store::open(s.strategies_file.clone()).map_err(|e| ctx.error(e))?;
        let watch = tokio::spawn(store.clone().watch(s.reload_interval.get(), ctx.shutdown.clone()));
        let server = crate::serve::http(&s.endpoint, "sampling", sampling::router(store), s.tls.as_ref(), None, &ctx).await?;
        tasks.push(Box::pin(async move {
            let r = server.await;
            watch.abort();
            r
        }));
    }
    drop(output);
    Ok(crate::serve::listeners(tasks, &ctx))
}
