//! What every receiver does around its listeners: bind an HTTP router with graceful shutdown,
//! and run several listeners as one task that keeps `/readyz` informed.

use tracepipe_config::Endpoint;
use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentError, ComponentFuture};

/// Binds `endpoint` now (so a busy port fails the build) and returns the task serving `app`
/// until shutdown.
pub(crate) async fn http(endpoint: &Endpoint, transport: &'static str, app: axum::Router, ctx: &ComponentContext) -> Result<ComponentFuture, BuildError> {
    let addr = endpoint.to_string();
    let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| ctx.error(format!("cannot listen on {addr} ({transport}): {e}")))?;
    tracing::info!(message = "Receiver listening.", receiver = %ctx.name, transport, address = %listener.local_addr().map(|a| a.to_string()).unwrap_or(addr));
    let shutdown = ctx.shutdown.clone();
    let name = ctx.name.clone();
    Ok(Box::pin(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .map_err(|e| ComponentError(format!("receiver `{name}` {transport} server failed: {e}")))
    }))
}

/// Marks the receiver listening and returns one task running all its listeners; it reports
/// "not listening" when they have stopped, and the first error.
pub(crate) fn listeners(tasks: Vec<ComponentFuture>, ctx: &ComponentContext) -> ComponentFuture {
    ctx.health.set_listening(&ctx.name, true);
    let health = ctx.health.clone();
    let name = ctx.name.clone();
    Box::pin(async move {
        let results = futures::future::join_all(tasks).await;
        health.set_listening(&name, false);
        results.into_iter().collect::<Result<Vec<()>, _>>().map(|_| ())
    })
}
