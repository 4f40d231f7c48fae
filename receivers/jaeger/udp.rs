//! The agent's UDP ports: one receive loop per socket feeding a bounded queue of datagrams, and
//! `workers` tasks that decode, translate and admit them.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Mutex};
use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentFuture, Output, Refused};

use super::config::UdpConfig;
use super::model::{self, Protocol};
use super::admit;
use crate::serve::Admission;

const TRANSPORT: &str = "udp";

/// Binds the socket and returns the task (receive loop + workers).
pub async fn serve(cfg: &UdpConfig, protocol: Protocol, output: Output, wait: Duration, ctx: &ComponentContext) -> Result<ComponentFuture, BuildError> {
    let addr = cfg.endpoint.as_ref().map(|e| e.to_string()).unwrap_or_default();
    let socket = tokio::net::UdpSocket::bind(&addr).await.map_err(|e| ctx.error(format!("cannot listen on {addr} (udp): {e}")))?;
    let wanted = cfg.socket_buffer_size.get() as usize;
    if let Err(e) = socket2::SockRef::from(&socket).set_recv_buffer_size(wanted) {
        tracing::warn!(message = "Cannot set the UDP receive buffer size.", receiver = %ctx.name, requested = wanted, error = %e);
    }
    let got = socket2::SockRef::from(&socket).recv_buffer_size().unwrap_or(0);
    if got < wanted {
        tracing::info!(message = "UDP receive buffer is smaller than requested (raise net.core.rmem_max).", receiver = %ctx.name, requested = wanted, granted = got);
    }
    tracing::info!(message = "Receiver listening.", receiver = %ctx.name, transport = "udp", protocol = ?protocol, address = %socket.local_addr().map(|a| a.to_string()).unwrap_or_default());
    let (tx, rx) = mpsc::channel::<Bytes>(cfg.queue_packets);
    let rx = Arc::new(Mutex::new(rx));
    let adm = Admission::new(&ctx.name, TRANSPORT, output, wait).stopping_on(ctx.shutdown.clone());
    let name = ctx.name.clone();
    let max = cfg.max_packet_size;
    let shutdown = ctx.shutdown.clone();
    let workers = cfg.workers;
    Ok(Box::pin(async move {
        let mut handles = Vec::new();
        for _ in 0..workers {
            let rx = rx.clone();
            let adm = adm.clone();
            handles.push(tokio::spawn(async move {
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some(packet) = next else { break };
                    match model::decode_emit_batch(&packet, protocol) {
                        Ok(batch) => {
                            let _ = admit(&batch, &adm).await;
                        }
                        Err(e) => {
                            adm.malformed("thrift");
                            tracing::debug!(message = "Malformed datagram dropped.", receiver = %adm.receiver(), error = %e);
                        }
                    }
                }
            }));
        }
        let mut buf = vec![0u8; max + 1];
        loop {
            let n = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = socket.recv_from(&mut buf) => match r {
                    Ok((n, _)) => n,
                    Err(e) => {
                        tracing::warn!(message = "UDP receive failed.", receiver = %name, error = %e);
                        continue;
                    }
                },
            };
            if n > max {
                adm.malformed("oversized");
                continue;
            }
            let packet = Bytes::copy_from_slice(&buf[..n]);
            if let Err(mpsc::error::TrySendError::Full(p)) = tx.try_send(packet) {
                // Count the spans of the dropped datagram from its header alone.
                match model::peek_span_count(&p, protocol) {
                    Some(spans) => adm.refused(Refused::Full, spans as u64),
                    None => adm.malformed("thrift"),
                }
            }
        }
        drop(tx);
        for h in handles {
            let _ = h.await;
        }
        Ok(())
    }))
}
