//! `type: satellite` — delivers to LightStep satellites (a satellite pool such as
//! `lightstep-satellite.lightstep:9292`) and LightStep's public ingest (`ingest.lightstep.com:443`).
//!
//! - `protocol: otlp_grpc` (default) or `otlp_http`: OTLP with the `lightstep-access-token` header;
//!   `report_grpc` (`lightstep.collector.CollectorService/Report`) or `report_http`
//!   (`POST /api/v2/reports`, protobuf): the LightStep Report protocol older satellites speak,
//!   written as the exact inverse of the LightStep receiver's mapping ([`report`]), with the token
//!   both in `auth.access_token` and in the header.
//! - `access_tokens_by_service`: spans of those services (resource `service.name`) go with their
//!   own project's token; no request mixes tokens (nor, for reports, resources).
//! - TLS by default (system roots, or `tls.ca_file`); `tls.insecure: true` for plaintext inside a
//!   cluster.
//! - Everything else is the otlp sink's: the queue (memory or disk), retry with backoff on
//!   retryable answers only (gRPC `UNAVAILABLE`…, HTTP 429/5xx), request size limits. A wrong
//!   token (gRPC `UNAUTHENTICATED`/`PERMISSION_DENIED`, HTTP 401/403, or errors in the
//!   `ReportResponse`) is permanent: counted (`reason="permanent"`), logged once with the sink and
//!   the service, shown by `/readyz`, never retried.

mod config;
pub mod report;

#[cfg(test)]
mod tests;

pub use config::{SatelliteConfig, SatelliteProtocol};

use std::collections::HashMap;
use std::sync::Arc;

use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentFuture};

use crate::otlp::Exporter;

/// A reporter id for this process (LightStep tracers pick a random one per process).
fn reporter_id() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    // splitmix64's finalizer over the time and the pid.
    let mut z = t ^ (u64::from(std::process::id()) << 32);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)).max(1)
}

/// The exporter for the configuration: one per token, routed by service.
pub fn exporter(cfg: &SatelliteConfig) -> Result<Exporter, String> {
    let report = matches!(cfg.protocol, SatelliteProtocol::ReportGrpc | SatelliteProtocol::ReportHttp);
    let id = reporter_id();
    let make = |token: &str| -> Result<Exporter, String> {
        let e = Exporter::new(&cfg.to_otlp(token)?)?;
        if report { e.into_report(token, id) } else { Ok(e) }
    };
    let default = make(&cfg.access_token)?;
    let by_service = cfg.access_tokens_by_service.iter().map(|(s, t)| Ok((s.clone(), make(t)?))).collect::<Result<HashMap<_, _>, String>>()?;
    // Routed even with one token, so that a refusal names the service.
    Ok(Exporter::Routed { default: Box::new(default), by_service: Arc::new(by_service), per_resource: report })
}

/// Builds the exporters (reads TLS files) and returns the task.
pub async fn build(cfg: SatelliteConfig, ctx: ComponentContext) -> Result<ComponentFuture, BuildError> {
    let exporter = exporter(&cfg).map_err(|e| ctx.error(e))?;
    let otlp = cfg.to_otlp(&cfg.access_token).map_err(|e| ctx.error(e))?;
    tracing::info!(message = "Satellite sink.", sink = %ctx.name, protocol = ?cfg.protocol, projects = 1 + cfg.access_tokens_by_service.len());
    crate::otlp::build_with(otlp, exporter, ctx).await
}
