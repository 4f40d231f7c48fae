//! The graph runtime: channels between components, fan-out, and the running topology.
//!
//! Every processor and sink owns one bounded channel (its [`Input`]); all of its upstreams hold a
//! sender to it (fan-in). A channel is bounded twice: in batches, and in bytes (the batches'
//! encoded size, [`ByteRoom`]), since a batch may hold a few spans or a few hundred megabytes. A receiver or processor sends through an [`Output`], which fans a batch
//! out to every consumer: it first reserves room in *every* consumer's channel, then delivers —
//! clones of the (cheap, reference-counted) batch to all but the last consumer, the original to
//! the last. A receiver uses [`Output::send_or_refuse`], which waits a bounded time for room and
//! otherwise refuses the whole batch, so the receiver can answer its client with a retryable error
//! and nothing is half-delivered. Processors use [`Output::send`], which waits: backpressure
//! travels upstream stage by stage until it reaches a receiver.
//!
//! Shutdown: receivers watch a cancellation token; when it fires they stop accepting and return,
//! which drops their senders. Each processor sees its input close once every upstream is gone,
//! flushes, and returns; each sink drains its input and flushes. So stopping the receivers drains
//! the graph in topological order, and [`RunningTopology::stop`] waits for it in that order.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracepipe_config::ComponentKind;

use crate::batch::Batch;
use crate::memory::Held;
use crate::telemetry::{names, Health};

/// The task a built component runs until its input closes or shutdown is signalled.
pub type ComponentFuture = Pin<Box<dyn Future<Output = Result<(), ComponentError>> + Send>>;

/// A component failed while running.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ComponentError(pub String);

/// A component could not be built (a port in use, a file that cannot be opened, bad TLS files…).
#[derive(Debug, thiserror::Error)]
#[error("{kind} `{name}`: {message}")]
pub struct BuildError {
    /// receiver, processor or sink.
    pub kind: &'static str,
    /// The component's name.
    pub name: String,
    /// What went wrong.
    pub message: String,
}

/// A channel's room in bytes: KiB permits of the batches' encoded size, taken when a batch is
/// sent and given back when it is received. A batch larger than the whole room takes all of it
/// (so it passes alone, rather than never).
#[derive(Debug, Clone)]
pub struct ByteRoom {
    sem: Arc<tokio::sync::Semaphore>,
    capacity: u32,
}

impl ByteRoom {
    /// Room for `bytes` bytes (at least 1 KiB).
    pub fn new(bytes: usize) -> Self {
        let capacity = (bytes / 1024).clamp(1, tokio::sync::Semaphore::MAX_PERMITS.min(u32::MAX as usize)) as u32;
        ByteRoom { sem: Arc::new(tokio::sync::Semaphore::new(capacity as usize)), capacity }
    }
    /// Permits for a batch of `len` encoded bytes.
    fn cost(&self, len: usize) -> u32 {
        len.div_ceil(1024).clamp(1, self.capacity as usize) as u32
    }
    /// Bytes free now.
    pub fn available(&self) -> usize {
        self.sem.available_permits() * 1024
    }
}

/// The receiving end of a component's bounded channel.
#[derive(Debug)]
pub struct Input {
    rx: mpsc::Receiver<Batch>,
    /// The component's account: a batch's bytes leave it when the batch is taken.
    held: Option<Held>,
    /// The channel's room in bytes.
    room: Option<ByteRoom>,
    /// Spans taken (the topology's inputs).
    received: Option<metrics::Counter>,
    /// A sink's input: marks every batch's acknowledgements as having reached a sink and, unless
    /// the sink removes them itself, removes replayed context spans (counted here).
    sink: Option<SinkInput>,
}

/// Reads a batch's replayed context before it is removed (see [`Input::read_context`]).
pub type ContextReader = Box<dyn Fn(&[&opentelemetry_proto::tonic::trace::v1::ResourceSpans]) + Send + Sync>;

struct SinkInput {
    context: metrics::Counter,
    reader: Option<ContextReader>,
}

impl std::fmt::Debug for SinkInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkInput").field("reader", &self.reader.is_some()).finish()
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        // Senders waiting for room in a channel nobody reads any more are told it is closed.
        if let Some(r) = &self.room {
            r.sem.close();
        }
    }
}

impl Input {
    /// The next batch, or `None` once every upstream has stopped and the channel is drained.
    pub async fn recv(&mut self) -> Option<Batch> {
        let b = self.rx.recv().await;
        self.taken(b)
    }
    /// The next batch if one is waiting now.
    pub fn try_recv(&mut self) -> Option<Batch> {
        let b = self.rx.try_recv().ok();
        self.taken(b)
    }
    #[inline]
    fn taken(&self, mut b: Option<Batch>) -> Option<Batch> {
        if let Some(b) = &b
            && (self.held.is_some() || self.room.is_some())
        {
            // What was charged when it was sent.
            let n = b.encoded_len();
            if let Some(h) = &self.held {
                h.sub(n);
            }
            if let Some(r) = &self.room {
                r.sem.add_permits(r.cost(n) as usize);
            }
        }
        if let (Some(b), Some(s)) = (&mut b, &self.sink) {
            b.finalizers().iter().for_each(|f| f.mark_reached_sink());
            let n = match &s.reader {
                Some(read) => crate::replay::strip_after(b, |c| read(c)),
                None => crate::replay::strip(b),
            };
            if n > 0 {
                s.context.increment(n as u64);
            }
        }
        if let (Some(b), Some(c)) = (&b, &self.received) {
            c.increment(b.span_count() as u64);
        }
        b
    }
    /// Batches waiting in the channel.
    pub fn len(&self) -> usize {
        self.rx.len()
    }
    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
    /// A channel for tests: returns the sender side and the input.
    pub fn channel(capacity: usize) -> (mpsc::Sender<Batch>, Input) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (tx, Input { rx, held: None, room: None, received: None, sink: None })
    }
    /// A channel bounded in batches and in bytes (`room`), whose batches count in `held` from
    /// being sent until taken. Its senders must go through an [`Output`] built with the same
    /// `room` ([`Output::accounted`]).
    pub(crate) fn accounted_channel(capacity: usize, room: ByteRoom, held: Held) -> (mpsc::Sender<Batch>, Input) {
        let (tx, mut input) = Input::channel(capacity);
        input.held = Some(held);
        input.room = Some(room);
        (tx, input)
    }
    /// Makes this a sink's input: every batch taken has its acknowledgements marked as having
    /// reached a sink ([`crate::batch::Finalizer::mark_reached_sink`]) and its replayed context
    /// spans removed ([`crate::replay::strip`], counted in [`names::SINK_REPLAYED_CONTEXT_SPANS`]).
    pub fn for_sink(mut self, name: &str) -> Input {
        self.sink = Some(SinkInput { context: metrics::counter!(names::SINK_REPLAYED_CONTEXT_SPANS, "sink" => name.to_owned()), reader: None });
        self
    }
    /// A sink's input shows `reader` each batch's replayed context before removing it (the Kafka
    /// sink learns which request ids the late spans beside it belong to). No-op on a test channel.
    pub fn read_context(&mut self, reader: ContextReader) {
        if let Some(s) = self.sink.as_mut() {
            s.reader = Some(reader);
        }
    }
    /// Counts the spans taken in `received` ([`names::COMPONENT_RECEIVED_SPANS`]).
    pub(crate) fn counting(mut self, received: metrics::Counter) -> Input {
        self.received = Some(received);
        self
    }
}

/// A batch was not admitted: the graph is full (retryable) or is shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Every consumer did not have room within the admission timeout.
    #[error("the pipeline is full")]
    Full,
    /// A consumer has stopped (shutdown in progress).
    #[error("the pipeline is shutting down")]
    Closed,
}

/// The fan-out to a component's consumers.
#[derive(Debug, Clone)]
pub struct Output {
    consumers: Arc<[mpsc::Sender<Batch>]>,
    /// Each consumer's account (the topology's outputs; empty for outputs built in tests).
    held: Arc<[Held]>,
    /// Each consumer's room in bytes (as `held`).
    rooms: Arc<[ByteRoom]>,
    /// Spans delivered (the topology's outputs).
    sent: Option<metrics::Counter>,
}

impl Output {
    /// An output over the given consumer channels.
    pub fn new(consumers: Vec<mpsc::Sender<Batch>>) -> Self {
        Output { consumers: consumers.into(), held: Arc::new([]), rooms: Arc::new([]), sent: None }
    }

    /// An output whose consumers' channels are bounded in bytes by `room` and count what they
    /// hold in `held` (one each per consumer).
    pub(crate) fn accounted(consumers: Vec<(mpsc::Sender<Batch>, ByteRoom, Held)>) -> Self {
        let mut c = Vec::new();
        let mut r = Vec::new();
        let mut h = Vec::new();
        for (tx, room, held) in consumers {
            c.push(tx);
            r.push(room);
            h.push(held);
        }
        Output { consumers: c.into(), held: h.into(), rooms: r.into(), sent: None }
    }

    /// Counts the spans delivered in `sent` ([`names::COMPONENT_SENT_SPANS`]).
    pub(crate) fn counting(mut self, sent: metrics::Counter) -> Output {
        self.sent = Some(sent);
        self
    }

    /// Number of consumers.
    pub fn consumer_count(&self) -> usize {
        self.consumers.len()
    }

    /// The batch's encoded size, when something counts it.
    fn len_of(&self, batch: &Batch) -> usize {
        if self.held.is_empty() && self.rooms.is_empty() { 0 } else { batch.encoded_len() }
    }

    /// Delivers the batch to every consumer, waiting for room. Errors only if a consumer is gone.
    pub async fn send(&self, batch: Batch) -> Result<(), Refused> {
        let len = self.len_of(&batch);
        let mut bytes = Vec::with_capacity(self.rooms.len());
        for r in self.rooms.iter() {
            bytes.push(r.sem.acquire_many(r.cost(len)).await.map_err(|_| Refused::Closed)?);
        }
        let mut permits = Vec::with_capacity(self.consumers.len());
        for c in self.consumers.iter() {
            permits.push(c.reserve().await.map_err(|_| Refused::Closed)?);
        }
        bytes.into_iter().for_each(|p| p.forget());
        self.deliver(permits, batch, len);
        Ok(())
    }

    /// Delivers the batch to every consumer if all of them have room within `wait`; otherwise
    /// delivers it to none and returns why.
    pub async fn send_or_refuse(&self, batch: Batch, wait: Duration) -> Result<(), Refused> {
        let len = self.len_of(&batch);
        // Room in bytes first (released again if the batch is refused).
        let mut bytes = Vec::with_capacity(self.rooms.len());
        for r in self.rooms.iter() {
            match r.sem.try_acquire_many(r.cost(len)) {
                Ok(p) => bytes.push(p),
                Err(tokio::sync::TryAcquireError::Closed) => return Err(Refused::Closed),
                Err(tokio::sync::TryAcquireError::NoPermits) => break,
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        if bytes.len() < self.rooms.len() {
            let start = bytes.len();
            let rest = async {
                let mut more = Vec::new();
                for r in self.rooms[start..].iter() {
                    more.push(r.sem.acquire_many(r.cost(len)).await.map_err(|_| Refused::Closed)?);
                }
                Ok::<_, Refused>(more)
            };
            match tokio::time::timeout_at(deadline, rest).await {
                Ok(Ok(more)) => bytes.extend(more),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(Refused::Full),
            }
        }
        let mut permits = Vec::with_capacity(self.consumers.len());
        // Fast path: no waiting when there is room.
        for c in self.consumers.iter() {
            match c.try_reserve() {
                Ok(p) => permits.push(p),
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(Refused::Closed),
                Err(mpsc::error::TrySendError::Full(_)) => break,
            }
        }
        if permits.len() < self.consumers.len() {
            let start = permits.len();
            let rest = async {
                let mut more = Vec::new();
                for c in self.consumers[start..].iter() {
                    more.push(c.reserve().await.map_err(|_| Refused::Closed)?);
                }
                Ok::<_, Refused>(more)
            };
            match tokio::time::timeout_at(deadline, rest).await {
                Ok(Ok(more)) => permits.extend(more),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(Refused::Full),
            }
        }
        bytes.into_iter().for_each(|p| p.forget());
        self.deliver(permits, batch, len);
        Ok(())
    }

    fn deliver(&self, permits: Vec<mpsc::Permit<'_, Batch>>, batch: Batch, len: usize) {
        self.held.iter().for_each(|h| h.add(len));
        if let Some(c) = &self.sent {
            c.increment(batch.span_count() as u64);
        }
        deliver(permits, batch);
    }
}

fn deliver(permits: Vec<mpsc::Permit<'_, Batch>>, batch: Batch) {
    let n = permits.len();
    let mut batch = Some(batch);
    for (i, p) in permits.into_iter().enumerate() {
        if i + 1 == n {
            if let Some(b) = batch.take() {
                p.send(b);
            }
        } else if let Some(b) = &batch {
            p.send(b.clone());
        }
    }
}

/// What a component gets when it is built.
pub struct ComponentContext {
    /// Its name in the config.
    pub name: String,
    /// Receiver, processor or sink.
    pub kind: ComponentKind,
    /// Its input channel (processors and sinks).
    pub input: Option<Input>,
    /// Its fan-out (receivers and processors).
    pub output: Option<Output>,
    /// Fires when the process is stopping; receivers stop accepting when it does.
    pub shutdown: CancellationToken,
    /// Readiness registry.
    pub health: Health,
}

impl ComponentContext {
    /// The input; processors and sinks always have one.
    pub fn take_input(&mut self) -> Result<Input, BuildError> {
        self.input.take().ok_or_else(|| self.error("has no input channel"))
    }
    /// The output; receivers and processors always have one.
    pub fn take_output(&mut self) -> Result<Output, BuildError> {
        self.output.take().ok_or_else(|| self.error("has no output"))
    }
    /// A build error for this component.
    pub fn error(&self, message: impl Into<String>) -> BuildError {
        BuildError { kind: self.kind.as_str(), name: self.name.clone(), message: message.into() }
    }
}

/// A future that builds a component (binds its sockets, opens its files) and yields its task.
pub type BuildFuture = Pin<Box<dyn Future<Output = Result<ComponentFuture, BuildError>> + Send>>;

/// One component ready to be wired: its place in the graph and its builder.
pub struct Planned {
    /// Name.
    pub name: String,
    /// Section.
    pub kind: ComponentKind,
    /// Names of its inputs.
    pub inputs: Vec<String>,
    /// Capacity of its input channel, in batches.
    pub channel_capacity: usize,
    /// And in bytes (the batches' encoded size; a larger batch passes alone).
    pub channel_bytes: usize,
    /// Builds it.
    pub build: Box<dyn FnOnce(ComponentContext) -> BuildFuture + Send>,
}

/// A started graph.
pub struct RunningTopology {
    tasks: Vec<(String, ComponentKind, JoinHandle<Result<(), ComponentError>>)>,
    remaining: tokio::sync::watch::Receiver<usize>,
    shutdown: CancellationToken,
    /// Fires when a component failed (returned an error or panicked) before shutdown.
    failed: CancellationToken,
    /// Readiness registry shared with the telemetry server.
    pub health: Health,
}

impl RunningTopology {
    /// Wires and starts the components. `planned` must be in topological order; components are
    /// built and started in reverse order, so every consumer runs before its producers.
    pub async fn start(planned: Vec<Planned>, health: Health) -> Result<RunningTopology, BuildError> {
        let shutdown = CancellationToken::new();
        let failed = CancellationToken::new();
        let mut senders: std::collections::HashMap<String, (mpsc::Sender<Batch>, ByteRoom, Held)> = Default::default();
        let mut inputs: std::collections::HashMap<String, Input> = Default::default();
        for p in &planned {
            if p.kind != ComponentKind::Receiver {
                let held = Held::component(&p.name);
                let room = ByteRoom::new(p.channel_bytes);
                let (tx, input) = Input::accounted_channel(p.channel_capacity, room.clone(), held.clone());
                let mut input = input.counting(metrics::counter!(names::COMPONENT_RECEIVED_SPANS, "component" => p.name.clone(), "kind" => p.kind.as_str()));
                if p.kind == ComponentKind::Sink {
                    input = input.for_sink(&p.name);
                }
                senders.insert(p.name.clone(), (tx, room, held));
                inputs.insert(p.name.clone(), input);
            }
        }
        // Consumers of each component, in config order.
        let mut consumers: std::collections::HashMap<String, Vec<(mpsc::Sender<Batch>, ByteRoom, Held)>> = Default::default();
        for p in &planned {
            for i in &p.inputs {
                if let Some(tx) = senders.get(&p.name) {
                    consumers.entry(i.clone()).or_default().push(tx.clone());
                }
            }
        }
        drop(senders);
        let (done_tx, remaining) = tokio::sync::watch::channel(planned.len());
        let done_tx = std::sync::Arc::new(done_tx);
        let mut tasks: Vec<(String, ComponentKind, JoinHandle<Result<(), ComponentError>>)> = Vec::new();
        for p in planned.into_iter().rev() {
            let output = match p.kind {
                ComponentKind::Sink => None,
                _ => Some(
                    Output::accounted(consumers.remove(&p.name).unwrap_or_default())
                        .counting(metrics::counter!(names::COMPONENT_SENT_SPANS, "component" => p.name.clone(), "kind" => p.kind.as_str())),
                ),
            };
            let ctx = ComponentContext {
                name: p.name.clone(),
                kind: p.kind,
                input: inputs.remove(&p.name),
                output,
                shutdown: shutdown.clone(),
                health: health.clone(),
            };
            let fut = match (p.build)(ctx).await {
                Ok(f) => f,
                Err(e) => {
                    // Stop what already started before reporting.
                    shutdown.cancel();
                    for (_, _, t) in tasks {
                        t.abort();
                    }
                    return Err(e);
                }
            };
            tracing::debug!(message = "Component started.", kind = p.kind.as_str(), name = %p.name);
            let done = done_tx.clone();
            let watch = Watch { name: p.name.clone(), kind: p.kind, shutdown: shutdown.clone(), failed: failed.clone(), health: health.clone() };
            let fut = async move {
                let r = match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
                    Ok(r) => r,
                    Err(panic) => Err(ComponentError(format!("{} `{}` panicked: {}", watch.kind.as_str(), watch.name, panic_message(&panic)))),
                };
                watch.ended(&r);
                done.send_modify(|n| *n -= 1);
                r
            };
            tasks.push((p.name, p.kind, tokio::spawn(fut)));
        }
        tasks.reverse();
        Ok(RunningTopology { tasks, remaining, shutdown, failed, health })
    }

    /// A token that fires when the topology is asked to stop.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Resolves when a component has failed (returned an error or panicked) while the graph was
    /// running: the process should stop and exit non-zero rather than go on refusing traffic.
    pub async fn failed(&self) {
        self.failed.cancelled().await
    }

    /// Resolves once every component has ended by itself (every receiver finished, as a replay
    /// does, and the rest drained); never while a listening receiver runs.
    pub async fn finished(&self) {
        let mut rx = self.remaining.clone();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Waits until every component has finished by itself (for graphs whose receivers end, such
    /// as a replay) and returns the first error.
    pub async fn wait(self) -> Result<(), ComponentError> {
        let mut first = Ok(());
        for (name, kind, t) in self.tasks {
            let r = flatten(&name, kind, t.await);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// Stops accepting, drains every stage in topological order, flushes the sinks. Components
    /// still running after `deadline` are aborted and reported.
    pub async fn stop(self, deadline: Duration) -> Result<(), ComponentError> {
        self.shutdown.cancel();
        let until = tokio::time::Instant::now() + deadline;
        let mut first: Result<(), ComponentError> = Ok(());
        for (name, kind, mut t) in self.tasks {
            let r = match tokio::time::timeout_at(until, &mut t).await {
                Ok(joined) => flatten(&name, kind, joined),
                Err(_) => {
                    t.abort();
                    Err(ComponentError(format!("{} `{name}` did not finish draining within {deadline:?}", kind.as_str())))
                }
            };
            if let Err(e) = &r {
                tracing::error!(message = "Component stopped with an error.", kind = kind.as_str(), name = %name, error = %e);
            } else {
                tracing::debug!(message = "Component stopped.", kind = kind.as_str(), name = %name);
            }
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

/// What a component's task reports when it ends.
struct Watch {
    name: String,
    kind: ComponentKind,
    shutdown: CancellationToken,
    failed: CancellationToken,
    health: Health,
}

impl Watch {
    /// A component that ends with an error before shutdown was asked for has died: log it, make
    /// `/readyz` fail, and tell the process.
    fn ended(&self, r: &Result<(), ComponentError>) {
        if let Err(e) = r
            && !self.shutdown.is_cancelled()
        {
            tracing::error!(message = "Component failed; tracepipe is stopping.", kind = self.kind.as_str(), name = %self.name, error = %e);
            self.health.set_failed(&self.name, &e.0);
            self.failed.cancel();
        }
    }
}

/// The text of a panic payload.
fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>().map(|s| (*s).to_owned()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "non-string panic payload".into())
}

fn flatten(
    name: &str,
    kind: ComponentKind,
    joined: Result<Result<(), ComponentError>, tokio::task::JoinError>,
) -> Result<(), ComponentError> {
    match joined {
        Ok(r) => r,
        Err(e) => Err(ComponentError(format!("{} `{name}` panicked or was cancelled: {e}", kind.as_str()))),
    }
}
