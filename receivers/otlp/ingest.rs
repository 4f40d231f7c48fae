//! What both OTLP transports share: validate a request, admit it into the graph, count it.

use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, TracesData};
use prost::Message;
use tracepipe_pipeline::topology::{Output, Refused};
use tracepipe_pipeline::wire::{scan_traces, SpanProblem};
use tracepipe_pipeline::{otlp_json, Batch};

use crate::serve::Admission;

/// The transports, as metric labels.
#[derive(Debug, Clone, Copy)]
pub enum Transport {
    Grpc,
    Http,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
        }
    }
}

/// The request was admitted; some spans may have been rejected.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Spans dropped because they were invalid.
    pub rejected: u64,
    /// Why, for `partial_success.error_message` (empty when nothing was rejected).
    pub message: String,
}

/// The request was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The body is not a valid OTLP trace request.
    #[error("{0}")]
    Malformed(String),
    /// The graph had no room in time: the client should retry.
    #[error("the pipeline is full; retry later")]
    Full,
    /// The process is shutting down: the client should retry elsewhere or later.
    #[error("tracepipe is shutting down; retry later")]
    ShuttingDown,
}

/// Shared by the gRPC and HTTP servers of one receiver.
#[derive(Clone)]
pub struct Ingest {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    grpc: Admission,
    http: Admission,
}

impl Ingest {
    pub fn new(name: &str, output: Output, wait: Duration) -> Self {
        Ingest {
            inner: std::sync::Arc::new(Inner {
                grpc: Admission::new(name, Transport::Grpc.label(), output.clone(), wait),
                http: Admission::new(name, Transport::Http.label(), output, wait),
            }),
        }
    }

    fn admission(&self, t: Transport) -> &Admission {
        match t {
            Transport::Grpc => &self.inner.grpc,
            Transport::Http => &self.inner.http,
        }
    }

    /// Counts a request that could not be read at all (bad framing, size, encoding…).
    pub fn malformed(&self, t: Transport, reason: &'static str) {
        self.admission(t).malformed(reason);
    }

    /// Validates and admits an encoded `ExportTraceServiceRequest`.
    pub async fn protobuf(&self, t: Transport, body: Bytes) -> Result<Accepted, IngestError> {
        let report = match scan_traces(&body) {
            Ok(r) => r,
            Err(e) => {
                self.malformed(t, "protobuf");
                return Err(IngestError::Malformed(format!("invalid OTLP protobuf: {e}")));
            }
        };
        if report.invalid.is_empty() {
            if report.spans == 0 {
                return Ok(Accepted::default());
            }
            return self.admit(t, Batch::from_encoded(body, report.spans)).await.map(|_| Accepted::default());
        }
        // Slow path: drop the invalid spans.
        let rs = TracesData::decode(body.as_ref())
            .map_err(|e| IngestError::Malformed(format!("invalid OTLP protobuf: {e}")))?
            .resource_spans;
        self.admit_filtered(t, rs, &report.invalid).await
    }

    /// Validates and admits an OTLP/JSON request.
    pub async fn json(&self, t: Transport, body: &[u8]) -> Result<Accepted, IngestError> {
        let rs = match otlp_json::decode_request(body) {
            Ok(rs) => rs,
            Err(e) => {
                self.malformed(t, "json");
                return Err(IngestError::Malformed(e.to_string()));
            }
        };
        // Re-encode once so the batch travels in wire form and the same checks apply.
        let bytes: Bytes = TracesData { resource_spans: rs }.encode_to_vec().into();
        self.protobuf(t, bytes).await
    }

    async fn admit_filtered(&self, t: Transport, mut rs: Vec<ResourceSpans>, invalid: &[(usize, SpanProblem)]) -> Result<Accepted, IngestError> {
        let reasons = drop_invalid(&mut rs, invalid);
        let rejected = invalid.len() as u64;
        self.admission(t).rejected(rejected);
        let message = format!("{rejected} span(s) rejected: {}", reasons.join("; "));
        let batch = Batch::from_resource_spans(rs);
        if !batch.is_empty() {
            // Keep the accepted part in wire form, like every other batch.
            let bytes = batch.to_bytes();
            self.admit(t, Batch::from_encoded(bytes, batch.span_count())).await?;
        }
        Ok(Accepted { rejected, message })
    }

    async fn admit(&self, t: Transport, batch: Batch) -> Result<(), IngestError> {
        self.admission(t).admit(batch).await.map_err(|e| match e {
            Refused::Full => IngestError::Full,
            Refused::Closed => IngestError::ShuttingDown,
        })
    }
}

/// Removes the spans [`scan_traces`] found invalid (by index in message order) and the resource
/// and scope groups left empty; returns the distinct problems, for the sender's message.
pub(crate) fn drop_invalid(rs: &mut Vec<ResourceSpans>, invalid: &[(usize, SpanProblem)]) -> Vec<&'static str> {
    let mut index = 0usize;
    let mut k = 0usize;
    let mut reasons: Vec<&'static str> = Vec::new();
    for r in rs.iter_mut() {
        for ss in &mut r.scope_spans {
            ss.spans.retain(|_| {
                let keep = match invalid.get(k) {
                    Some((i, p)) if *i == index => {
                        k += 1;
                        if !reasons.contains(&p.as_str()) {
                            reasons.push(p.as_str());
                        }
                        false
                    }
                    _ => true,
                };
                index += 1;
                keep
            });
        }
        r.scope_spans.retain(|ss| !ss.spans.is_empty());
    }
    rs.retain(|r| !r.scope_spans.is_empty());
    reasons
}
