//! The debug sink's task.

use std::io::Write;

use opentelemetry_proto::tonic::common::v1::any_value;
use tracepipe_pipeline::telemetry::names;
use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentError, ComponentFuture};
use tracepipe_pipeline::{otlp_json, BatchStatus};

use super::config::{DebugConfig, Verbosity};

/// Opens the output file (if any) and returns the task.
pub async fn build(cfg: DebugConfig, mut ctx: ComponentContext) -> Result<ComponentFuture, BuildError> {
    let mut input = ctx.take_input()?;
    let mut file = match &cfg.path {
        Some(p) => {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| ctx.error(format!("cannot create {}: {e}", dir.display())))?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| ctx.error(format!("cannot open {}: {e}", p.display())))?;
            Some(std::io::BufWriter::new(f))
        }
        None => None,
    };
    let name = ctx.name.clone();
    let sent = metrics::counter!(names::SINK_SENT_SPANS, "sink" => name.clone());
    let failed = metrics::counter!(names::SINK_FAILED_SPANS, "sink" => name.clone(), "reason" => "io");
    Ok(Box::pin(async move {
        while let Some(batch) = input.recv().await {
            let n = batch.span_count();
            let needs_spans = file.is_some() || cfg.verbosity == Verbosity::Detailed;
            let rs = if needs_spans {
                match batch.to_resource_spans() {
                    Ok(rs) => rs,
                    Err(e) => {
                        failed.increment(n as u64);
                        batch.set_status(BatchStatus::Rejected);
                        tracing::error!(message = "Cannot decode batch.", sink = %name, error = %e);
                        continue;
                    }
                }
            } else {
                Vec::new()
            };
            match cfg.verbosity {
                Verbosity::None => {}
                Verbosity::Basic => tracing::info!(message = "Spans received.", sink = %name, spans = n),
                Verbosity::Detailed => {
                    for r in &rs {
                        let service = r
                            .resource
                            .as_ref()
                            .and_then(|res| res.attributes.iter().find(|kv| kv.key == "service.name"))
                            .and_then(|kv| kv.value.as_ref())
                            .and_then(|v| match &v.value {
                                Some(any_value::Value::StringValue(s)) => Some(s.as_str()),
                                _ => None,
                            })
                            .unwrap_or("");
                        for s in r.scope_spans.iter().flat_map(|ss| &ss.spans) {
                            tracing::info!(
                                message = "Span.",
                                sink = %name,
                                service,
                                trace_id = %hex(&s.trace_id),
                                span_id = %hex(&s.span_id),
                                parent_span_id = %hex(&s.parent_span_id),
                                name = %s.name,
                                kind = s.kind,
                                start_time_unix_nano = s.start_time_unix_nano,
                                duration_ns = s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano),
                                attributes = s.attributes.len(),
                            );
                        }
                    }
                }
            }
            if let Some(f) = file.as_mut() {
                let mut line = otlp_json::encode_request(&rs);
                line.push(b'\n');
                if let Err(e) = f.write_all(&line).and_then(|_| f.flush()) {
                    failed.increment(n as u64);
                    batch.set_status(BatchStatus::Errored);
                    tracing::error!(message = "Cannot write spans.", sink = %name, error = %e);
                    continue;
                }
            }
            sent.increment(n as u64);
        }
        if let Some(mut f) = file {
            f.flush().map_err(|e| ComponentError(format!("sink `{name}`: flush failed: {e}")))?;
        }
        Ok(())
    }))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
