//! `type: otlp` — the OpenTelemetry Protocol receiver.
//!
//! - gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export` on `grpc.endpoint`
//!   (default `0.0.0.0:4317`), gzip and zstd message compression.
//! - HTTP: `POST /v1/traces` on `http.endpoint` (default `0.0.0.0:4318`) with
//!   `application/x-protobuf` or `application/json` (OTLP/JSON), `Content-Encoding` gzip, zstd,
//!   deflate or identity; HTTP/1.1 and h2c.
//!
//! Both take `tls:` (TLS, mutual TLS with `client_ca_file`, certificates reloaded when their
//! files change); `auth.bearer_tokens` makes both require `Authorization: Bearer <token>`
//! (`UNAUTHENTICATED` / 401 before the body is read).
//!
//! Protobuf requests are scanned, not decoded ([`tracepipe_pipeline::wire`]): valid bytes enter
//! the graph as they came. Spans with bad ids are dropped and reported in `partial_success`;
//! malformed requests get `INVALID_ARGUMENT` / 400; bodies over the size limit (also after
//! decompression) get `RESOURCE_EXHAUSTED`/`OUT_OF_RANGE` / 413; when the graph has no room within
//! `admission_timeout` the request is refused with `UNAVAILABLE` / 503 + `Retry-After`, which every
//! OTLP exporter retries.

mod config;
mod grpc;
mod http;
mod ingest;

#[cfg(test)]
mod tests;

pub use config::{GrpcConfig, HttpConfig, OtlpConfig};
pub(crate) use grpc::{is_grpc, unsupported_media_type};
pub(crate) use ingest::without_invalid;

use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentFuture};

/// Binds the configured listeners and returns the task that serves them until shutdown.
pub async fn build(config: OtlpConfig, mut ctx: ComponentContext) -> Result<ComponentFuture, BuildError> {
    let output = ctx.take_output()?;
    let ack = config.acknowledgements.enabled.then(|| config.acknowledgements.timeout.get());
    let ingest = ingest::Ingest::with_acknowledgements(&ctx.name, output, config.admission_timeout.get(), ack, Some(ctx.shutdown.clone()));
    ctx.health.expect_receiver(&ctx.name);
    let mut servers: Vec<ComponentFuture> = Vec::new();
    if let Some(g) = &config.grpc {
        servers.push(grpc::serve(g, ingest.clone(), &config.auth, &ctx).await?);
    }
    if let Some(h) = &config.http {
        servers.push(http::serve(h, ingest.clone(), &config.auth, &ctx).await?);
    }
    drop(ingest);
    Ok(crate::serve::listeners(servers, &ctx))
}
