//! `type: zipkin` — receives what Zipkin tracers and service-mesh proxies (Envoy, Istio) send.
//!
//! On `endpoint` (default `0.0.0.0:9411`): `POST /api/v2/spans` with `application/json` (a JSON
//! array) or `application/x-protobuf` (`zipkin.proto3.ListOfSpans`), and `POST /api/v1/spans`
//! with `application/json` or `application/x-thrift` (a thrift-binary `list<Span>`; v1 spans
//! are converted to v2 first). Bodies may be gzip-compressed
//! and chunked. Answers 202; 400 for bodies that do not decode; 413 over the size limit
//! (decompressed too); 415 for other content types; 503 +
//! `Retry-After` when the graph is full.
//!
//! **Envoy proto3 ids**: Envoy's Zipkin proto encoder writes span and parent ids byte-reversed
//! (host byte order); trace ids are right. With `envoy_proto_ids: auto` (default) tracepipe
//! restores them for requests that come from Envoy (which adds `x-envoy-internal` and
//! `x-envoy-expected-rq-timeout-ms`), so Envoy-proto spans link with spans from any other source.

mod config;
mod http;
pub mod model;
pub mod translate;

#[cfg(test)]
mod tests;

pub use config::{EnvoyProtoIds, ZipkinConfig};

use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentFuture};

/// Binds the listener and returns the task serving it until shutdown.
pub async fn build(cfg: ZipkinConfig, mut ctx: ComponentContext) -> Result<ComponentFuture, BuildError> {
    let output = ctx.take_output()?;
    ctx.health.expect_receiver(&ctx.name);
    let task = http::serve(&cfg, output, &ctx).await?;
    Ok(crate::serve::listeners(vec![task], &ctx))
}
