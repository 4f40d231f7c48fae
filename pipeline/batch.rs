//! The unit that travels every channel: a batch of spans.
//!
//! A [`Batch`] holds its spans in one of two forms and converts lazily:
//! - **encoded**: one or more OTLP `TracesData` protobuf buffers (reference-counted [`Bytes`], each
//!   with its span count),
//!   exactly as a receiver got them after [`crate::wire::scan_traces`] proved them valid. Merging
//!   two encoded batches appends buffer handles (protobuf concatenation of `TracesData` is itself a
//!   valid `TracesData`); an OTLP sink writes the buffers out without decoding them.
//! - **decoded**: `Arc<Vec<ResourceSpans>>` (the OTLP model from `opentelemetry-proto`), for
//!   components that look inside spans. [`Batch::resource_spans_mut`] decodes on first use and is
//!   copy-on-write: a batch fanned out to several consumers is deep-copied only if one of them
//!   mutates it, and then only by that one.
//!
//! The span count is known in both forms without decoding, so telemetry counts per batch.
//! A batch may carry [`Finalizer`]s: shared acknowledgements that fire when every copy of the
//! batch has been delivered or dropped (a Kafka receiver commits offsets from them).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, TracesData};
use prost::Message;

/// How a batch ended, as reported to its [`Finalizer`]s. Later, worse statuses win.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum BatchStatus {
    /// Every consumer delivered it.
    Delivered = 0,
    /// A consumer failed with an error that may succeed on retry.
    Errored = 1,
    /// A consumer refused it permanently.
    Rejected = 2,
}

/// A shared acknowledgement: `on_done` runs once, when the last handle is dropped, with the worst
/// status any holder recorded.
pub struct Finalizer {
    status: AtomicU8,
    /// What became of the batch's spans ([`Outcome`] bits): some reached a sink, some were
    /// dropped by a sampling decision.
    outcome: AtomicU8,
    on_done: std::sync::Mutex<Option<Box<dyn FnOnce(BatchStatus, Outcome) + Send>>>,
    /// Set by the source when it no longer owns the batch's input (a Kafka partition revoked
    /// from this consumer): components that hold such batches undecided let them go without
    /// delivering them, because the input's next owner reads them again.
    revoked: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// What became of a finished batch's spans, beside its [`BatchStatus`]: whether some reached a
/// sink (the topology marks every batch a sink takes) and whether some were dropped by a
/// sampling decision (tail sampling marks the traces it does not keep). A Kafka receiver writes
/// it into its progress records, so that a partition's next owner, replaying a finished record
/// as context for a late one of the same key, knows which way it went (see [`crate::replay`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Some spans reached a sink.
    pub reached_sink: bool,
    /// Some spans were dropped by a sampling decision.
    pub decided_out: bool,
}

impl Outcome {
    /// `Some(true)` when the batch was kept (reached a sink, nothing dropped), `Some(false)` when
    /// it was dropped by a decision (nothing reached a sink), `None` when mixed or neither.
    pub fn kept(self) -> Option<bool> {
        match (self.reached_sink, self.decided_out) {
            (true, false) => Some(true),
            (false, true) => Some(false),
            _ => None,
        }
    }
}

const REACHED_SINK: u8 = 1;
const DECIDED_OUT: u8 = 2;

/// Process-wide: bumped on every revocation (see [`Finalizer::announce_revocation`]).
static REVOCATIONS: std::sync::OnceLock<tokio::sync::watch::Sender<u64>> = std::sync::OnceLock::new();

fn revocations_sender() -> &'static tokio::sync::watch::Sender<u64> {
    REVOCATIONS.get_or_init(|| tokio::sync::watch::channel(0).0)
}

impl Finalizer {
    /// A finalizer that calls `on_done` when the batch (and every copy) is done.
    pub fn new(on_done: impl FnOnce(BatchStatus) + Send + 'static) -> Arc<Self> {
        Arc::new(Finalizer { status: AtomicU8::new(0), outcome: AtomicU8::new(0), on_done: std::sync::Mutex::new(Some(Box::new(move |s, _| on_done(s)))), revoked: None })
    }

    /// As [`Finalizer::new`], for a batch whose source may hand it to another consumer: once
    /// `revoked` is set, [`Finalizer::is_revoked`] says so.
    pub fn revocable(revoked: Arc<std::sync::atomic::AtomicBool>, on_done: impl FnOnce(BatchStatus) + Send + 'static) -> Arc<Self> {
        Finalizer::revocable_with_outcome(revoked, move |s, _| on_done(s))
    }

    /// As [`Finalizer::revocable`], and `on_done` also learns the spans' [`Outcome`].
    pub fn revocable_with_outcome(revoked: Arc<std::sync::atomic::AtomicBool>, on_done: impl FnOnce(BatchStatus, Outcome) + Send + 'static) -> Arc<Self> {
        Arc::new(Finalizer { status: AtomicU8::new(0), outcome: AtomicU8::new(0), on_done: std::sync::Mutex::new(Some(Box::new(on_done))), revoked: Some(revoked) })
    }

    /// Some of the batch's spans reached a sink (the topology calls this for every batch a sink
    /// takes).
    pub fn mark_reached_sink(&self) {
        self.outcome.fetch_or(REACHED_SINK, Ordering::Relaxed);
    }

    /// Some of the batch's spans were dropped by a sampling decision.
    pub fn mark_decided_out(&self) {
        self.outcome.fetch_or(DECIDED_OUT, Ordering::Relaxed);
    }

    /// Records an outcome for the batch (the worst one recorded wins), for a holder that ends it
    /// without a `Batch` (a processor letting held spans go).
    pub fn set_status(&self, s: BatchStatus) {
        self.update(s);
    }

    /// True when the source handed the batch's input to another consumer, which reads it again.
    pub fn is_revoked(&self) -> bool {
        self.revoked.as_ref().is_some_and(|r| r.load(Ordering::Acquire))
    }

    /// Tells every component holding batches that some source just revoked inputs: they look
    /// for what they hold that is now [`Finalizer::all_revoked`] and let it go at once (the
    /// source waits for that before the input moves, so its new owner starts after it).
    pub fn announce_revocation() {
        revocations_sender().send_modify(|n| *n += 1);
    }

    /// A receiver that wakes on each [`Finalizer::announce_revocation`].
    pub fn revocations() -> tokio::sync::watch::Receiver<u64> {
        revocations_sender().subscribe()
    }

    /// Which revocable input the batch came from (a Kafka partition in one assignment), as an
    /// opaque id; 0 for a batch that cannot be revoked. Components that merge held batches keep
    /// those of different inputs apart, so that a revocation finds everything of its input
    /// [`Finalizer::all_revoked`].
    pub fn input_id(&self) -> usize {
        self.revoked.as_ref().map_or(0, |r| Arc::as_ptr(r) as usize)
    }

    /// True when every one of `finalizers` (at least one) is revoked: what they acknowledge
    /// will be read again elsewhere, so holding or delivering it here would only duplicate it.
    pub fn all_revoked(finalizers: &[Arc<Finalizer>]) -> bool {
        !finalizers.is_empty() && finalizers.iter().all(|f| f.is_revoked())
    }
    fn update(&self, s: BatchStatus) {
        self.status.fetch_max(s as u8, Ordering::AcqRel);
    }
}

impl Drop for Finalizer {
    fn drop(&mut self) {
        let status = match self.status.load(Ordering::Acquire) {
            0 => BatchStatus::Delivered,
            1 => BatchStatus::Errored,
            _ => BatchStatus::Rejected,
        };
        let bits = self.outcome.load(Ordering::Acquire);
        let outcome = Outcome { reached_sink: bits & REACHED_SINK != 0, decided_out: bits & DECIDED_OUT != 0 };
        if let Some(f) = self.on_done.get_mut().ok().and_then(|f| f.take()) {
            f(status, outcome);
        }
    }
}

impl std::fmt::Debug for Finalizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finalizer").field("status", &self.status.load(Ordering::Relaxed)).finish()
    }
}

/// One received `TracesData` buffer and its span count.
#[derive(Debug, Clone)]
struct Chunk {
    bytes: Bytes,
    spans: usize,
}

#[derive(Debug, Clone)]
enum Payload {
    Encoded(Vec<Chunk>),
    Decoded(Arc<Vec<ResourceSpans>>),
}

/// A batch of spans; see the module docs.
#[derive(Debug, Clone)]
pub struct Batch {
    payload: Payload,
    spans: usize,
    finalizers: Vec<Arc<Finalizer>>,
}

/// Decoding an encoded batch failed (the bytes were not scanned, or were corrupted).
#[derive(Debug, thiserror::Error)]
#[error("batch payload is not valid OTLP protobuf: {0}")]
pub struct DecodeError(#[from] prost::DecodeError);

/// [`Batch::append`] failed: one of the two batches does not decode.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct AppendError {
    /// Why.
    pub error: DecodeError,
    /// The batch that did not decode, with its finalizers (the caller counts and drops it).
    pub rejected: Batch,
}

/// Appends `span` to `out`, reusing the last `ResourceSpans` / `ScopeSpans` when its resource and
/// scope (and schema URLs) are the same, so that spans taken apart in order regroup compactly.
pub fn push_span(
    out: &mut Vec<ResourceSpans>,
    resource: &Option<opentelemetry_proto::tonic::resource::v1::Resource>,
    resource_schema_url: &str,
    scope: &Option<opentelemetry_proto::tonic::common::v1::InstrumentationScope>,
    scope_schema_url: &str,
    span: opentelemetry_proto::tonic::trace::v1::Span,
) {
    use opentelemetry_proto::tonic::trace::v1::ScopeSpans;
    if !out.last().is_some_and(|r| r.resource == *resource && r.schema_url == resource_schema_url) {
        out.push(ResourceSpans { resource: resource.clone(), scope_spans: Vec::new(), schema_url: resource_schema_url.to_owned() });
    }
    let r = out.last_mut().expect("pushed");
    if !r.scope_spans.last().is_some_and(|s| s.scope == *scope && s.schema_url == scope_schema_url) {
        r.scope_spans.push(ScopeSpans { scope: scope.clone(), spans: Vec::new(), schema_url: scope_schema_url.to_owned() });
    }
    r.scope_spans.last_mut().expect("pushed").spans.push(span);
}

/// Number of spans in decoded resource spans.
pub fn count_spans(rs: &[ResourceSpans]) -> usize {
    rs.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum()
}

impl Batch {
    /// An empty batch.
    pub fn empty() -> Self {
        Batch { payload: Payload::Encoded(Vec::new()), spans: 0, finalizers: Vec::new() }
    }

    /// A batch from encoded `TracesData` bytes holding `spans` spans. The bytes must have passed
    /// [`crate::wire::scan_traces`] (which also gives the count).
    pub fn from_encoded(bytes: Bytes, spans: usize) -> Self {
        Batch { payload: Payload::Encoded(vec![Chunk { bytes, spans }]), spans, finalizers: Vec::new() }
    }

    /// A batch from decoded resource spans.
    pub fn from_resource_spans(rs: Vec<ResourceSpans>) -> Self {
        let spans = count_spans(&rs);
        Batch { payload: Payload::Decoded(Arc::new(rs)), spans, finalizers: Vec::new() }
    }

    /// Attaches an acknowledgement.
    pub fn with_finalizer(mut self, f: Arc<Finalizer>) -> Self {
        self.finalizers.push(f);
        self
    }

    /// An empty batch carrying this batch's finalizers: for a sink that has handed the spans on
    /// (copied into a client library's buffer) and only needs to report the outcome later, so the
    /// span memory is freed now.
    pub fn finalizers_only(&self) -> Batch {
        Batch { finalizers: self.finalizers.clone(), ..Batch::empty() }
    }

    /// This batch without its acknowledgements: for merging a part back into a batch that
    /// already carries them (see [`Batch::split_by_resource`]).
    pub fn without_finalizers(mut self) -> Batch {
        self.finalizers.clear();
        self
    }

    /// The acknowledgements this batch carries.
    pub fn finalizers(&self) -> &[Arc<Finalizer>] {
        &self.finalizers
    }

    /// Records how this batch (copy) ended; the finalizers fire when all copies are dropped.
    pub fn set_status(&self, s: BatchStatus) {
        for f in &self.finalizers {
            f.update(s);
        }
    }

    /// Number of spans.
    pub fn span_count(&self) -> usize {
        self.spans
    }

    /// True when the batch holds no spans.
    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }

    /// True while the batch is still in its received wire form.
    pub fn is_encoded(&self) -> bool {
        matches!(self.payload, Payload::Encoded(_))
    }

    /// For an encoded batch, whether `needle` occurs anywhere in its bytes (`None` once decoded).
    /// A processor that only cares about spans carrying some attribute can pass a batch on
    /// without decoding it when the attribute's key is not in the bytes at all.
    pub fn encoded_contains(&self, needle: &[u8]) -> Option<bool> {
        match &self.payload {
            Payload::Encoded(chunks) => Some(chunks.iter().any(|c| memchr::memmem::find(&c.bytes, needle).is_some())),
            Payload::Decoded(_) => None,
        }
    }

    /// The received `TracesData` buffers, while the batch is still encoded (each scanned valid).
    pub fn encoded_buffers(&self) -> Option<Vec<&[u8]>> {
        match &self.payload {
            Payload::Encoded(chunks) => Some(chunks.iter().map(|c| c.bytes.as_ref()).collect()),
            Payload::Decoded(_) => None,
        }
    }

    /// The received `TracesData` buffers, shared (cheap clones), while the batch is still
    /// encoded: for a processor that keeps parts of them beyond the batch's life.
    pub fn encoded_chunks(&self) -> Option<Vec<Bytes>> {
        match &self.payload {
            Payload::Encoded(chunks) => Some(chunks.iter().map(|c| c.bytes.clone()).collect()),
            Payload::Decoded(_) => None,
        }
    }

    /// One batch per `ResourceSpans`, each with this batch's finalizers. Encoded batches are cut
    /// at the wire (the parts share the received buffers); decoded ones are split.
    pub fn split_by_resource(&self) -> Result<Vec<Batch>, crate::wire::WireError> {
        use crate::wire::{Reader, LEN};
        let mut parts = Vec::new();
        match &self.payload {
            Payload::Encoded(chunks) => {
                for c in chunks {
                    let mut r = Reader::new(&c.bytes, 0);
                    while !r.done() {
                        let start = r.position();
                        let (field, wt) = r.tag()?;
                        if field != 1 || wt != LEN {
                            r.skip(wt, "TracesData", field)?;
                            continue;
                        }
                        let (rs, _) = r.len_delimited()?;
                        let spans = count_resource_spans(rs)?;
                        parts.push(Batch { payload: Payload::Encoded(vec![Chunk { bytes: c.bytes.slice(start..r.position()), spans }]), spans, finalizers: self.finalizers.clone() });
                    }
                }
            }
            Payload::Decoded(rs) => {
                for r in rs.iter() {
                    parts.push(Batch { spans: count_spans(std::slice::from_ref(r)), payload: Payload::Decoded(Arc::new(vec![r.clone()])), finalizers: self.finalizers.clone() });
                }
            }
        }
        Ok(parts)
    }

    /// Size of the batch as one `TracesData` message.
    pub fn encoded_len(&self) -> usize {
        match &self.payload {
            Payload::Encoded(chunks) => chunks.iter().map(|c| c.bytes.len()).sum(),
            Payload::Decoded(rs) => rs.iter().map(|r| prost::encoding::message::encoded_len(1, r)).sum(),
        }
    }

    /// Writes the batch as one `TracesData` (= `ExportTraceServiceRequest`) message.
    pub fn encode_into(&self, buf: &mut impl BufMut) {
        match &self.payload {
            Payload::Encoded(chunks) => chunks.iter().for_each(|c| buf.put_slice(&c.bytes)),
            Payload::Decoded(rs) => rs.iter().for_each(|r| prost::encoding::message::encode(1, r, buf)),
        }
    }

    /// The batch as one contiguous `TracesData` message. Free for a single encoded chunk.
    pub fn to_bytes(&self) -> Bytes {
        if let Payload::Encoded(chunks) = &self.payload
            && chunks.len() == 1
        {
            return chunks[0].bytes.clone();
        }
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        self.encode_into(&mut buf);
        buf.freeze()
    }

    /// The spans, decoded (a copy; the batch is unchanged).
    pub fn to_resource_spans(&self) -> Result<Vec<ResourceSpans>, DecodeError> {
        match &self.payload {
            Payload::Encoded(chunks) => decode_chunks(chunks),
            Payload::Decoded(rs) => Ok(rs.as_ref().clone()),
        }
    }

    /// The spans for reading or rewriting: decodes an encoded batch once; deep-copies only if
    /// another copy of this batch shares the decoded spans. Call [`Batch::recount`] after adding
    /// or removing spans.
    pub fn resource_spans_mut(&mut self) -> Result<&mut Vec<ResourceSpans>, DecodeError> {
        if let Payload::Encoded(chunks) = &self.payload {
            let rs = decode_chunks(chunks)?;
            self.payload = Payload::Decoded(Arc::new(rs));
        }
        match &mut self.payload {
            Payload::Decoded(rs) => Ok(Arc::make_mut(rs)),
            Payload::Encoded(_) => unreachable!("decoded above"),
        }
    }

    /// Recomputes the span count after [`Batch::resource_spans_mut`] changed the spans.
    pub fn recount(&mut self) {
        if let Payload::Decoded(rs) = &self.payload {
            self.spans = count_spans(rs);
        }
    }

    /// Appends another batch. Two encoded batches merge by appending buffer handles; otherwise
    /// both are decoded. On a decode error nothing is lost: the batch that did not decode comes
    /// back in the error (with its finalizers) and `self` holds the other one.
    pub fn append(&mut self, mut other: Batch) -> Result<(), AppendError> {
        if let (Payload::Encoded(_), Payload::Encoded(_)) = (&self.payload, &other.payload) {
            let Payload::Encoded(b) = std::mem::replace(&mut other.payload, Payload::Encoded(Vec::new())) else { unreachable!() };
            if let Payload::Encoded(a) = &mut self.payload {
                a.extend(b);
            }
            self.spans += other.spans;
            self.finalizers.append(&mut other.finalizers);
            return Ok(());
        }
        let extra = match &other.payload {
            Payload::Encoded(chunks) => match decode_chunks(chunks) {
                Ok(rs) => rs,
                Err(error) => return Err(AppendError { error, rejected: other }),
            },
            Payload::Decoded(_) => match std::mem::replace(&mut other.payload, Payload::Encoded(Vec::new())) {
                Payload::Decoded(rs) => Arc::try_unwrap(rs).unwrap_or_else(|a| a.as_ref().clone()),
                Payload::Encoded(_) => unreachable!("matched above"),
            },
        };
        if let Err(error) = self.resource_spans_mut() {
            // `self` is the one that does not decode: hand it back, keep `other`.
            other.payload = Payload::Decoded(Arc::new(extra));
            let rejected = std::mem::replace(self, other);
            return Err(AppendError { error, rejected });
        }
        let spans = self.spans + other.spans;
        self.resource_spans_mut().expect("decoded above").extend(extra);
        self.spans = spans;
        self.finalizers.append(&mut other.finalizers);
        Ok(())
    }

    /// Splits off at most `max_spans` spans into a new batch; `self` keeps the rest. An encoded
    /// batch is split between its received buffers when the first buffer fits (no decoding);
    /// otherwise it is decoded and split at exactly `max_spans`. Finalizers go with both halves.
    pub fn split_to(&mut self, max_spans: usize) -> Result<Batch, DecodeError> {
        if max_spans >= self.spans {
            return Ok(std::mem::replace(self, Batch { finalizers: self.finalizers.clone(), ..Batch::empty() }));
        }
        // Encoded: split between received buffers when the first one fits, without decoding.
        if let Payload::Encoded(chunks) = &mut self.payload {
            let mut take = 0;
            let mut spans = 0;
            while take < chunks.len() && spans + chunks[take].spans <= max_spans {
                spans += chunks[take].spans;
                take += 1;
            }
            if take > 0 {
                let rest = chunks.split_off(take);
                let head = std::mem::replace(chunks, rest);
                self.spans -= spans;
                return Ok(Batch { payload: Payload::Encoded(head), spans, finalizers: self.finalizers.clone() });
            }
        }
        // Whole `ResourceSpans` first, then a part of the next one: drained once (linear).
        let rs = self.resource_spans_mut()?;
        let mut need = max_spans;
        let mut whole = 0;
        while whole < rs.len() {
            let n = count_spans(&rs[whole..=whole]);
            if n > need {
                break;
            }
            need -= n;
            whole += 1;
        }
        let mut head: Vec<ResourceSpans> = rs.drain(..whole).collect();
        if need > 0
            && let Some(first) = rs.first_mut()
        {
            let mut scopes = 0;
            while scopes < first.scope_spans.len() && first.scope_spans[scopes].spans.len() <= need {
                need -= first.scope_spans[scopes].spans.len();
                scopes += 1;
            }
            let mut part = ResourceSpans { resource: first.resource.clone(), scope_spans: first.scope_spans.drain(..scopes).collect(), schema_url: first.schema_url.clone() };
            if need > 0
                && let Some(ss) = first.scope_spans.first_mut()
            {
                part.scope_spans.push(opentelemetry_proto::tonic::trace::v1::ScopeSpans {
                    scope: ss.scope.clone(),
                    spans: ss.spans.drain(..need).collect(),
                    schema_url: ss.schema_url.clone(),
                });
            }
            head.push(part);
        }
        self.recount();
        let mut out = Batch::from_resource_spans(head);
        out.finalizers = self.finalizers.clone();
        Ok(out)
    }
}

/// A batch cut by [`Batch::split_by_bytes`].
#[derive(Debug, Default)]
pub struct SizedParts {
    /// Parts in order, each encoding to at most the limit; each carries the batch's finalizers.
    pub parts: Vec<Batch>,
    /// Single spans that alone (with their resource and scope) encode to more than the limit,
    /// each as a one-span batch with the finalizers.
    pub too_large: Vec<Batch>,
}

impl Batch {
    /// Cuts the batch into parts that each encode (as one `TracesData` /
    /// `ExportTraceServiceRequest`) to at most `max_bytes`, keeping span order. Received buffers
    /// that fit go into parts whole (no copy); a larger buffer is cut between its spans on the wire
    /// (each part a copy of its spans inside copies of their resource and scope envelopes, no
    /// decoding); a decoded batch is encoded once and cut the same way. Linear in the bytes.
    pub fn split_by_bytes(&self, max_bytes: usize) -> Result<SizedParts, crate::wire::WireError> {
        let mut out = SizedParts::default();
        if self.encoded_len() <= max_bytes {
            out.parts.push(self.clone());
            return Ok(out);
        }
        let encoded;
        let chunks: &[Chunk] = match &self.payload {
            Payload::Encoded(chunks) => chunks,
            Payload::Decoded(_) => {
                encoded = [Chunk { bytes: self.to_bytes(), spans: self.spans }];
                &encoded
            }
        };
        let part = |chunks: Vec<Chunk>| {
            let spans = chunks.iter().map(|c| c.spans).sum();
            Batch { payload: Payload::Encoded(chunks), spans, finalizers: self.finalizers.clone() }
        };
        let mut current: Vec<Chunk> = Vec::new();
        let mut current_len = 0;
        for c in chunks {
            if c.bytes.len() <= max_bytes {
                if current_len + c.bytes.len() > max_bytes {
                    out.parts.push(part(std::mem::take(&mut current)));
                    current_len = 0;
                }
                current_len += c.bytes.len();
                current.push(c.clone());
                continue;
            }
            if !current.is_empty() {
                out.parts.push(part(std::mem::take(&mut current)));
                current_len = 0;
            }
            let rg = crate::regroup::in_order(&[&c.bytes])?;
            let Some(group) = rg.groups.first() else { continue };
            let packed = rg.pack(group, max_bytes);
            for range in packed.fits {
                let spans = range.len();
                out.parts.push(part(vec![Chunk { bytes: rg.encode(group, range).into(), spans }]));
            }
            for i in packed.alone_too_large {
                out.too_large.push(part(vec![Chunk { bytes: rg.encode(group, i..i + 1).into(), spans: 1 }]));
            }
        }
        if !current.is_empty() {
            out.parts.push(part(current));
        }
        Ok(out)
    }
}

/// Spans in an encoded `ResourceSpans` (its `scope_spans`' `spans` fields), without decoding them.
fn count_resource_spans(rs: &[u8]) -> Result<usize, crate::wire::WireError> {
    use crate::wire::{Reader, LEN};
    let mut n = 0;
    let mut r = Reader::new(rs, 0);
    while !r.done() {
        let (field, wt) = r.tag()?;
        if field != 2 || wt != LEN {
            r.skip(wt, "ResourceSpans", field)?;
            continue;
        }
        let (ss, _) = r.len_delimited()?;
        let mut s = Reader::new(ss, 0);
        while !s.done() {
            let (f, w) = s.tag()?;
            if f == 2 && w == LEN {
                n += 1;
            }
            s.skip(w, "ScopeSpans", f)?;
        }
    }
    Ok(n)
}

fn decode_chunks(chunks: &[Chunk]) -> Result<Vec<ResourceSpans>, DecodeError> {
    let mut out = Vec::new();
    for c in chunks {
        out.extend(TracesData::decode(c.bytes.as_ref())?.resource_spans);
    }
    Ok(out)
}
