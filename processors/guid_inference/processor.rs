//! The processor task: a single owner of the held guids.

use std::collections::{HashMap, VecDeque};

use metrics::{Counter, Gauge};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use prost::Message;
use tokio::time::Instant;
use tracepipe_pipeline::telemetry::names;
use tracepipe_pipeline::topology::{BuildError, ComponentContext, ComponentError, ComponentFuture, Output};
use tracepipe_pipeline::Batch;

use super::config::GuidInferenceConfig;
use super::infer::{resolve, string_attr, Held, Rules};

struct Group {
    spans: Vec<Held>,
    bytes: usize,
}

struct Metrics {
    spans_held: Gauge,
    guids_held: Gauge,
    bytes_held: Gauge,
    edges: Counter,
    cross_node_edges: Counter,
    ambiguous: Counter,
    evicted: Counter,
    too_large: Counter,
}

struct State {
    cfg: GuidInferenceConfig,
    rules: Rules,
    groups: HashMap<String, Group>,
    order: VecDeque<(Instant, String)>,
    bytes: usize,
    spans: usize,
    m: Metrics,
    name: String,
}

fn to_batch(held: Vec<Held>) -> Batch {
    let rs: Vec<ResourceSpans> = held
        .into_iter()
        .map(|h| ResourceSpans { resource: h.resource, scope_spans: vec![ScopeSpans { scope: h.scope, spans: vec![h.span], schema_url: String::new() }], schema_url: String::new() })
        .collect();
    Batch::from_resource_spans(rs)
}

impl State {
    fn gauges(&self) {
        self.m.spans_held.set(self.spans as f64);
        self.m.guids_held.set(self.groups.len() as f64);
        self.m.bytes_held.set(self.bytes as f64);
    }

    /// Takes a batch apart: spans without a guid come back at once, the rest are held. A batch
    /// still in wire form whose bytes do not contain the guid key at all passes untouched,
    /// without being decoded.
    fn ingest(&mut self, mut batch: Batch, now: Instant) -> Result<Batch, ComponentError> {
        let key = self.cfg.guid_attribute.clone();
        if batch.encoded_contains(key.as_bytes()) == Some(false) {
            return Ok(batch);
        }
        let rs = batch.resource_spans_mut().map_err(|e| ComponentError(format!("processor `{}`: {e}", self.name)))?;
        for r in rs.iter_mut() {
            for ss in r.scope_spans.iter_mut() {
                let spans = std::mem::take(&mut ss.spans);
                for s in spans {
                    match string_attr(&s, &key).map(str::to_owned) {
                        None => ss.spans.push(s),
                        Some(guid) => {
                            let bytes = s.encoded_len() + 64;
                            let g = self.groups.entry(guid.clone()).or_insert_with(|| {
                                self.order.push_back((now, guid));
                                Group { spans: Vec::new(), bytes: 0 }
                            });
                            g.bytes += bytes;
                            g.spans.push(Held { resource: r.resource.clone(), scope: ss.scope.clone(), span: s });
                            self.bytes += bytes;
                            self.spans += 1;
                        }
                    }
                }
            }
            r.scope_spans.retain(|ss| !ss.spans.is_empty());
        }
        rs.retain(|r| !r.scope_spans.is_empty());
        batch.recount();
        self.gauges();
        Ok(batch)
    }

    fn release(&mut self, guid: &str) -> Option<Vec<Held>> {
        let g = self.groups.remove(guid)?;
        self.bytes -= g.bytes;
        self.spans -= g.spans.len();
        let mut spans = g.spans;
        let o = resolve(&mut spans, &self.rules);
        self.m.edges.increment(o.edges - o.cross_node_edges);
        self.m.cross_node_edges.increment(o.cross_node_edges);
        self.m.ambiguous.increment(o.ambiguous);
        if o.too_large {
            self.m.too_large.increment(1);
            tracing::warn!(message = "Guid with too many spans passed on without inference.", processor = %self.name, spans = spans.len());
        }
        Some(spans)
    }

    /// Guids whose wait is over, and the oldest ones while over the memory bound.
    fn due(&mut self, now: Instant, all: bool) -> Vec<Held> {
        let mut out = Vec::new();
        while let Some((t, guid)) = self.order.front().cloned() {
            let expired = all || t + self.cfg.wait.get() <= now;
            let over = self.bytes > self.cfg.max_bytes.get() as usize;
            if !expired && !over {
                break;
            }
            self.order.pop_front();
            if !expired {
                self.m.evicted.increment(1);
            }
            if let Some(spans) = self.release(&guid) {
                out.extend(spans);
            }
        }
        self.gauges();
        out
    }
}

async fn send(output: &Output, b: Batch, name: &str) -> Result<(), ComponentError> {
    if b.is_empty() {
        return Ok(());
    }
    output.send(b).await.map_err(|e| ComponentError(format!("processor `{name}`: downstream stopped: {e}")))
}

/// Builds the processor task.
pub async fn build(cfg: GuidInferenceConfig, mut ctx: ComponentContext) -> Result<ComponentFuture, BuildError> {
    let mut input = ctx.take_input()?;
    let output = ctx.take_output()?;
    let p = ctx.name.clone();
    let m = Metrics {
        spans_held: metrics::gauge!(names::PROCESSOR_GUID_SPANS_HELD, "processor" => p.clone()),
        guids_held: metrics::gauge!(names::PROCESSOR_GUID_GUIDS_HELD, "processor" => p.clone()),
        bytes_held: metrics::gauge!(names::PROCESSOR_GUID_BYTES_HELD, "processor" => p.clone()),
        edges: metrics::counter!(names::PROCESSOR_GUID_EDGES_INFERRED, "processor" => p.clone(), "tier" => "same_node"),
        cross_node_edges: metrics::counter!(names::PROCESSOR_GUID_EDGES_INFERRED, "processor" => p.clone(), "tier" => "cross_node"),
        ambiguous: metrics::counter!(names::PROCESSOR_GUID_AMBIGUOUS, "processor" => p.clone()),
        evicted: metrics::counter!(names::PROCESSOR_GUID_EVICTED_EARLY, "processor" => p.clone()),
        too_large: metrics::counter!(names::PROCESSOR_GUID_TOO_LARGE, "processor" => p.clone()),
    };
    let tick = (cfg.wait.get() / 4).clamp(std::time::Duration::from_millis(10), std::time::Duration::from_millis(250));
    let mut st = State { rules: cfg.rules(), cfg, groups: HashMap::new(), order: VecDeque::new(), bytes: 0, spans: 0, m, name: p.clone() };
    Ok(Box::pin(async move {
        let mut timer = tokio::time::interval(tick);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                next = input.recv() => match next {
                    Some(b) => {
                        let now = Instant::now();
                        let pass = st.ingest(b, now)?;
                        send(&output, pass, &p).await?;
                        let early = st.due(now, false);
                        if !early.is_empty() {
                            send(&output, to_batch(early), &p).await?;
                        }
                    }
                    None => {
                        let rest = st.due(Instant::now(), true);
                        send(&output, to_batch(rest), &p).await?;
                        return Ok(());
                    }
                },
                _ = timer.tick() => {
                    let due = st.due(Instant::now(), false);
                    if !due.is_empty() {
                        send(&output, to_batch(due), &p).await?;
                    }
                }
            }
        }
    }))
}
