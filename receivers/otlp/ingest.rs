//! What both OTLP transports share: validate a request, admit it into the graph, count it.

use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::trace::v1::TracesData;
use prost::Message;
use tracepipe_pipeline::regroup;
use tracepipe_pipeline::topology::{Output, Refused};
use tracepipe_pipeline::wire::{scan_traces, ScanReport, WireError};
use tracepipe_pipeline::{otlp_json, Batch, BatchStatus};

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
    /// Acknowledgements: a sink could not take the spans in time (retryable).
    #[error("the spans were not delivered in time; retry later")]
    NotDelivered,
    /// Acknowledgements: a sink refused the spans permanently.
    #[error("a sink refused the spans permanently")]
    RejectedDownstream,
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
    #[cfg(test)]
    pub fn new(name: &str, output: Output, wait: Duration) -> Self {
        Self::with_acknowledgements(name, output, wait, None, None)
    }

    /// With `ack`, each request's answer waits (at most that long) until the sinks have it.
    /// With `shutdown`, a request still waiting for room when it is cancelled is refused.
    pub fn with_acknowledgements(name: &str, output: Output, wait: Duration, ack: Option<Duration>, shutdown: Option<tokio_util::sync::CancellationToken>) -> Self {
        let adm = |t: Transport, o: Output| {
            let mut a = Admission::new(name, t.label(), o, wait);
            if let Some(s) = &shutdown {
                a = a.stopping_on(s.clone());
            }
            match ack {
                Some(d) => a.with_acknowledgements(d),
                None => a,
            }
        };
        Ingest { inner: std::sync::Arc::new(Inner { grpc: adm(Transport::Grpc, output.clone()), http: adm(Transport::Http, output) }) }
    }

    fn admission(&self, t: Transport) -> &Admission {
        match t {
            Transport::Grpc => &self.inner.grpc,
            Transport::Http => &self.inner.http,
        }
    }

    /// `true` (counted) when a request must be refused unread because memory is above the soft
    /// limit: its body is neither read nor decompressed.
    pub fn refuse_for_memory(&self, t: Transport) -> bool {
        self.admission(t).refuse_request_for_memory()
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
        // Slow path: drop the invalid spans on the wire (a copy of the valid ones inside their
        // envelopes; no decoding, so memory stays proportional to the request's bytes).
        let (bytes, kept, reasons) = match without_invalid(&body, &report) {
            Ok(r) => r,
            Err(e) => {
                self.malformed(t, "protobuf");
                return Err(IngestError::Malformed(format!("invalid OTLP protobuf: {e}")));
            }
        };
        let rejected = report.invalid.len() as u64;
        self.admission(t).rejected(rejected);
        if kept > 0 {
            self.admit(t, Batch::from_encoded(bytes, kept)).await?;
        }
        Ok(Accepted { rejected, message: format!("{rejected} span(s) rejected: {}", reasons.join("; ")) })
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

    async fn admit(&self, t: Transport, batch: Batch) -> Result<(), IngestError> {
        match self.admission(t).admit_acknowledged(batch).await {
            Ok(None) => Ok(()),
            Ok(Some(BatchStatus::Rejected)) => Err(IngestError::RejectedDownstream),
            Ok(Some(_)) => Err(IngestError::NotDelivered),
            Err(Refused::Full) => Err(IngestError::Full),
            Err(Refused::Closed) => Err(IngestError::ShuttingDown),
        }
    }
}

/// The request without the spans [`scan_traces`] found invalid (by index in message order), as
/// wire bytes, with the number of spans kept and the distinct problems (for the sender's message).
/// Resource and scope groups left empty are dropped.
pub(crate) fn without_invalid(body: &[u8], report: &ScanReport) -> Result<(Bytes, usize, Vec<&'static str>), WireError> {
    let bytes = regroup::without_spans(body, report.invalid.iter().map(|(i, _)| *i as usize))?;
    let mut reasons: Vec<&'static str> = Vec::new();
    for (_, p) in &report.invalid {
        if !reasons.contains(&p.as_str()) {
            reasons.push(p.as_str());
        }
    }
    Ok((bytes.into(), report.spans - report.invalid.len(), reasons))
}
