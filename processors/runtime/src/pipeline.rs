//! The message loop: consume -> decode -> process -> produce -> commit.
//!
//! ```text
//!  poll thread (owns the consumer)           one pair of tasks per assigned partition
//!  ─────────────────────────────             ──────────────────────────────────────────
//!  poll ─► batch by partition ─► channel ─► worker: decode, process, encode, send ─► acker:
//!    ▲        │ in-flight ≥ max: pause                 (transient: retry in place)    await
//!    │        ▼                                        (poison: send to DLQ)          deliveries
//!  rebalance callbacks: drain revoked partitions,                                    in order,
//!  then commit synchronously                                                          store offset
//! ```
//!
//! - Records of one partition are processed in offset order by one worker; partitions run
//!   concurrently.
//! - The worker hands outputs to the idempotent producer without awaiting them; the acker
//!   awaits each record's deliveries in offset order and only then stores the next offset.
//!   librdkafka commits stored offsets periodically, on revoke and at shutdown. So nothing is
//!   committed before everything it caused is acknowledged.
//! - At most `max_in_flight` records are held between consume and commit by the flowing
//!   partitions. At the budget the poll loop stops taking records, so librdkafka's bounded
//!   prefetch queue fills and its fetcher stops; nothing fetched is discarded. If the budget
//!   stays full for `pause_after`, the partition holding the most records is paused so the
//!   others go on; it resumes once it has drained. The total never passes twice the budget.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use eip_schemas::{Classify, Codec, ErrorClass};
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, warn};

use crate::config::{PipelineConfig, RetryConfig};
use crate::dlq;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::processor::{
    DeliveryFailure, Envelope, Headers, Output, Payload, Position, ProcessError, Processor, Record,
    Redirect,
};
use crate::trace::{CORRELATION_ID, TRACEPARENT, TraceContext};

/// Why the pipeline stopped, or is stopping.
#[derive(Debug, Default)]
pub(crate) struct Stop {
    /// Cancelled when the poll loop should stop taking new records.
    pub(crate) stopping: CancellationToken,
    /// Cancelled on a fatal error: workers take no further records (acknowledgements of what
    /// was already produced are still awaited and committed).
    pub(crate) halt: CancellationToken,
    /// Cancelled when in-flight work must be abandoned (the drain timed out).
    pub(crate) abandon: CancellationToken,
    fatal: Mutex<Option<String>>,
}

impl Stop {
    /// Starts a graceful stop.
    pub(crate) fn request(&self) {
        self.stopping.cancel();
    }

    /// Records a fatal error (the first one wins) and stops everything.
    pub(crate) fn fatal(&self, reason: String) {
        if let Ok(mut f) = self.fatal.lock()
            && f.is_none()
        {
            error!(reason = %reason, "fatal error: draining and exiting");
            *f = Some(reason);
        }
        self.stopping.cancel();
        self.halt.cancel();
    }

    /// The fatal error, if one happened.
    pub(crate) fn fatal_reason(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|f| f.clone())
    }
}

/// Everything a partition's tasks share.
pub(crate) struct Core<P: Processor> {
    pub(crate) processor: P,
    pub(crate) name: String,
    pub(crate) codec: Codec,
    pub(crate) producer: FutureProducer<ProducerContext>,
    pub(crate) metrics: Metrics,
    pub(crate) stop: Arc<Stop>,
    pub(crate) pipeline: PipelineConfig,
    pub(crate) in_flight: Arc<InFlight>,
}

/// The producer's context: turns librdkafka's fatal errors into a fatal stop.
pub(crate) struct ProducerContext {
    pub(crate) stop: Arc<Stop>,
}

impl ClientContext for ProducerContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.stop.fatal(format!("producer: {reason}"));
        } else {
            warn!(error = %error, reason, "producer error");
        }
    }
}

type PartitionKey = (Arc<str>, i32);

/// Records consumed but not yet committed, across all partitions: the backpressure budget.
pub(crate) struct InFlight {
    total: AtomicUsize,
    gauge: prometheus::IntGauge,
}

impl InFlight {
    pub(crate) fn new(gauge: prometheus::IntGauge) -> Arc<InFlight> {
        Arc::new(InFlight {
            total: AtomicUsize::new(0),
            gauge,
        })
    }

    fn add(&self, n: usize) {
        self.total.fetch_add(n, Ordering::AcqRel);
        self.gauge.add(n as i64);
    }

    fn sub(&self, n: usize) {
        self.total.fetch_sub(n, Ordering::AcqRel);
        self.gauge.sub(n as i64);
    }

    fn get(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// The poll thread's handle on one partition's tasks.
struct PartitionHandle {
    tx: mpsc::UnboundedSender<Vec<Record>>,
    in_flight: Arc<AtomicUsize>,
    done: std::sync::mpsc::Receiver<()>,
    cancel: CancellationToken,
    paused: bool,
    stash: Vec<Record>,
}

/// State shared by the poll loop and the rebalance callbacks (both run on the poll thread).
pub(crate) struct PollState {
    partitions: Mutex<HashMap<PartitionKey, PartitionHandle>>,
    in_flight: Arc<InFlight>,
    metrics: Metrics,
    name: String,
    stop: Arc<Stop>,
    health: Arc<Health>,
    drain_timeout: Duration,
}

/// The consumer's context: rebalance handling and lag metrics.
pub(crate) struct ConsumerCtx {
    state: Arc<PollState>,
}

impl ClientContext for ConsumerCtx {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.state
                        .metrics
                        .lag
                        .with_label_values(&[&self.state.name, topic, &partition.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.state.stop.fatal(format!("consumer: {reason}"));
        } else {
            warn!(error = %error, reason, "consumer error");
        }
    }
}

impl ConsumerContext for ConsumerCtx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                self.state
                    .metrics
                    .rebalances
                    .with_label_values(&[&self.state.name, "revoke"])
                    .inc();
                let keys: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                let lost = consumer.assignment_lost();
                self.state.release(
                    consumer,
                    |k| keys.iter().any(|(t, p)| **t == *k.0 && *p == k.1),
                    lost,
                );
                info!(partitions = keys.len(), lost, "partitions revoked");
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                self.state
                    .metrics
                    .rebalances
                    .with_label_values(&[&self.state.name, "error"])
                    .inc();
                warn!(error = %e, "rebalance error");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.state
                .metrics
                .rebalances
                .with_label_values(&[&self.state.name, "assign"])
                .inc();
            // Partitions stay paused across a reassignment in librdkafka: start them fresh.
            if let Err(e) = consumer.resume(tpl) {
                debug!(error = %e, "resume after assign");
            }
        }
        let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        if let Rebalance::Assign(tpl) = rebalance {
            info!(added = tpl.count(), assigned, "partitions assigned");
        }
        self.state.metrics.assigned.set(assigned as i64);
        self.state.health.set_assigned(assigned);
    }
}

impl PollState {
    pub(crate) fn new(
        metrics: Metrics,
        name: String,
        stop: Arc<Stop>,
        health: Arc<Health>,
        drain_timeout: Duration,
        in_flight: Arc<InFlight>,
    ) -> Arc<PollState> {
        Arc::new(PollState {
            partitions: Mutex::new(HashMap::new()),
            in_flight,
            metrics,
            name,
            stop,
            health,
            drain_timeout,
        })
    }

    pub(crate) fn context(self: &Arc<Self>) -> ConsumerCtx {
        ConsumerCtx {
            state: self.clone(),
        }
    }

    /// Finishes the in-flight records of the partitions `which` selects, then commits.
    /// With `lost`, another member already owns them: abandon instead of finishing.
    fn release(
        &self,
        consumer: &BaseConsumer<ConsumerCtx>,
        which: impl Fn(&PartitionKey) -> bool,
        lost: bool,
    ) {
        let handles: Vec<(PartitionKey, PartitionHandle)> = match self.partitions.lock() {
            Ok(mut map) => {
                let keys: Vec<PartitionKey> = map.keys().filter(|k| which(k)).cloned().collect();
                keys.into_iter()
                    .filter_map(|k| map.remove(&k).map(|h| (k, h)))
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        let mut resume = TopicPartitionList::new();
        for (key, h) in &handles {
            if h.paused {
                resume.add_partition(&key.0, key.1);
                self.metrics.paused.dec();
            }
        }
        if resume.count() > 0 {
            let _ = consumer.resume(&resume);
        }
        let deadline = Instant::now() + self.drain_timeout;
        let mut waiting = Vec::new();
        for (key, h) in handles {
            if lost {
                h.cancel.cancel();
            }
            // Dropping the sender lets the worker finish what it has, then stop.
            drop(h.tx);
            self.in_flight.sub(h.stash.len());
            waiting.push((key, h.done, h.cancel, h.in_flight));
        }
        for (key, done, cancel, in_flight) in waiting {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = done.recv_timeout(left) {
                warn!(topic = %key.0, partition = key.1, "drain timed out: abandoning in-flight records, they will be redelivered");
                cancel.cancel();
                let _ = done.recv_timeout(Duration::from_secs(5));
            }
            // Whatever was not acknowledged stays uncommitted; it no longer counts here.
            self.in_flight.sub(in_flight.swap(0, Ordering::AcqRel));
        }
        if !lost {
            // Every record finished above has its offset stored. librdkafka commits stored
            // offsets of partitions it unassigns (auto-commit is on) and waits for that commit
            // before completing the rebalance; this asks for it now as well. Asynchronous on
            // purpose: a synchronous commit has no timeout and would hang a shutdown whose
            // broker is gone.
            match consumer.commit_consumer_state(CommitMode::Async) {
                Ok(()) => {}
                Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => warn!(error = %e, "commit on release failed"),
            }
        }
    }
}

/// Copies a consumed message into an owned record.
fn to_record(m: &BorrowedMessage<'_>, topics: &mut HashMap<String, Arc<str>>) -> Record {
    let topic = match topics.get(m.topic()) {
        Some(t) => t.clone(),
        None => {
            let t: Arc<str> = m.topic().into();
            topics.insert(m.topic().to_string(), t.clone());
            t
        }
    };
    let headers = crate::kafka::headers_of(m);
    Record {
        position: Position {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
        },
        key: m.key().map(Bytes::copy_from_slice),
        payload: m.payload().map(Bytes::copy_from_slice),
        headers,
    }
}

/// The poll loop. Runs on its own OS thread until `stop.stopping` fires, then drains every
/// partition and commits.
/// The poll thread's whole life: [`poll_loop`], then closing the consumer here, where
/// `run_until` bounds how long a close may take, rather than in whichever task happens to drop
/// the last handle. Returns false if the loop panicked (its partitions are then abandoned:
/// uncommitted, so redelivered).
pub(crate) fn poll_thread<P: Processor>(
    consumer: Arc<BaseConsumer<ConsumerCtx>>,
    state: Arc<PollState>,
    core: Arc<Core<P>>,
    runtime: tokio::runtime::Handle,
) -> bool {
    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        poll_loop(consumer.clone(), state.clone(), core.clone(), runtime)
    }));
    if polled.is_err() {
        core.stop.fatal("poll thread panicked".into());
        state.release(&consumer, |_| true, true);
    }
    // Partition workers, ackers and the readiness probe let go of their handles as they stop.
    while Arc::strong_count(&consumer) > 1 {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(consumer);
    polled.is_ok()
}

pub(crate) fn poll_loop<P: Processor>(
    consumer: Arc<BaseConsumer<ConsumerCtx>>,
    state: Arc<PollState>,
    core: Arc<Core<P>>,
    runtime: tokio::runtime::Handle,
) {
    let max_batch = core.pipeline.max_batch;
    let max_in_flight = core.pipeline.max_in_flight;
    let pause_after = core.pipeline.pause_after;
    let mut topics: HashMap<String, Arc<str>> = HashMap::new();
    let mut batches: HashMap<PartitionKey, Vec<Record>> = HashMap::new();
    let mut any_paused = false;
    let mut stalled_since: Option<Instant> = None;
    while !core.stop.stopping.is_cancelled() {
        if any_paused {
            any_paused = resume_ready(&consumer, &state, max_in_flight);
        }
        // Backpressure. While the flowing partitions hold max_in_flight unacknowledged
        // records, take no more: librdkafka's prefetch queue fills and its fetcher stops, and
        // nothing fetched is thrown away. If that lasts pause_after (a stuck partition), pause
        // the partition holding the most records: what it holds stops counting against the
        // others, within a hard ceiling of twice the budget overall.
        let (active, total) = budget_use(&state);
        if active >= max_in_flight || total >= 2 * max_in_flight {
            let since = *stalled_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= pause_after && total < 2 * max_in_flight {
                any_paused |= pause_fullest(&consumer, &state);
                stalled_since = None;
            }
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        stalled_since = None;
        let timeout = if any_paused {
            Duration::from_millis(10)
        } else {
            Duration::from_millis(100)
        };
        let mut taken = 0;
        let mut next = consumer.poll(timeout);
        while let Some(result) = next {
            match result {
                Ok(m) => {
                    let record = to_record(&m, &mut topics);
                    batches
                        .entry((record.position.topic.clone(), record.position.partition))
                        .or_default()
                        .push(record);
                    taken += 1;
                }
                Err(e) => warn!(error = %e, "consume error"),
            }
            if taken >= max_batch {
                break;
            }
            next = consumer.poll(Duration::ZERO);
        }
        if !batches.is_empty() {
            dispatch(&consumer, &state, &core, &runtime, &mut batches);
        }
    }
    info!("stopping: draining in-flight records");
    state.release(&consumer, |_| true, false);
    consumer.unsubscribe();
}

/// Hands batches to their partition workers, spawning workers for new partitions; records of
/// paused partitions wait in the partition's stash.
fn dispatch<P: Processor>(
    consumer: &Arc<BaseConsumer<ConsumerCtx>>,
    state: &Arc<PollState>,
    core: &Arc<Core<P>>,
    runtime: &tokio::runtime::Handle,
    batches: &mut HashMap<PartitionKey, Vec<Record>>,
) {
    let Ok(mut map) = state.partitions.lock() else {
        core.stop.fatal("partition table poisoned".into());
        return;
    };
    for (key, batch) in batches.drain() {
        if batch.is_empty() {
            continue;
        }
        let handle = map
            .entry(key.clone())
            .or_insert_with(|| spawn_partition(key, consumer.clone(), core.clone(), runtime));
        if handle.paused {
            state.in_flight.add(batch.len());
            handle.stash.extend(batch);
            continue;
        }
        let n = batch.len();
        handle.in_flight.fetch_add(n, Ordering::AcqRel);
        state.in_flight.add(n);
        // A failed send means the worker stopped (fatal or abandoned): the records stay
        // uncommitted and are redelivered to whoever owns the partition next.
        let _ = handle.tx.send(batch);
    }
}

/// Records held by unpaused partitions, and by all partitions (stashes included).
fn budget_use(state: &PollState) -> (usize, usize) {
    let total = state.in_flight.get();
    let Ok(map) = state.partitions.lock() else {
        return (total, total);
    };
    let paused: usize = map
        .values()
        .filter(|h| h.paused)
        .map(|h| h.in_flight.load(Ordering::Acquire) + h.stash.len())
        .sum();
    (total.saturating_sub(paused), total)
}

/// Pauses the unpaused partition holding the most unacknowledged records: librdkafka stops
/// fetching it (and drops what it prefetched for it). Returns whether one was paused.
fn pause_fullest(consumer: &BaseConsumer<ConsumerCtx>, state: &PollState) -> bool {
    let Ok(mut map) = state.partitions.lock() else {
        return false;
    };
    let Some((key, h)) = map
        .iter_mut()
        .filter(|(_, h)| !h.paused)
        .max_by_key(|(_, h)| h.in_flight.load(Ordering::Acquire))
    else {
        return false;
    };
    h.paused = true;
    state.metrics.paused.inc();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&key.0, key.1);
    warn!(topic = %key.0, partition = key.1, records = h.in_flight.load(Ordering::Acquire), "nothing acknowledged for a while: pausing the fullest partition");
    if let Err(e) = consumer.pause(&tpl) {
        warn!(error = %e, "pause failed");
    }
    true
}

/// Resumes the paused partitions that have drained to a quarter of the budget, handing them
/// their stash first. Returns whether any partition is still paused.
fn resume_ready(
    consumer: &BaseConsumer<ConsumerCtx>,
    state: &PollState,
    max_in_flight: usize,
) -> bool {
    let Ok(mut map) = state.partitions.lock() else {
        return false;
    };
    let mut resume = TopicPartitionList::new();
    let mut still_paused = false;
    for (key, h) in map.iter_mut() {
        if !h.paused {
            continue;
        }
        if h.in_flight.load(Ordering::Acquire) > max_in_flight / 4 {
            still_paused = true;
            continue;
        }
        let stash = std::mem::take(&mut h.stash);
        if !stash.is_empty() {
            // Already counted in the budget when stashed.
            h.in_flight.fetch_add(stash.len(), Ordering::AcqRel);
            let _ = h.tx.send(stash);
        }
        h.paused = false;
        state.metrics.paused.dec();
        resume.add_partition(&key.0, key.1);
    }
    if resume.count() > 0 {
        debug!(partitions = ?resume.elements().iter().map(|e| e.partition()).collect::<Vec<_>>(), "resuming");
        if let Err(e) = consumer.resume(&resume) {
            warn!(error = %e, "resume failed");
        }
    }
    still_paused
}

/// One record's outputs handed to the producer, awaiting acknowledgement.
struct Ack {
    record: Record,
    deliveries: Vec<(Delivery, DeliveryFuture)>,
}

/// What a delivery was for, so the acker can count it.
enum Delivery {
    Output(Arc<str>),
    DeadLetter(ErrorClass),
}

fn spawn_partition<P: Processor>(
    key: PartitionKey,
    consumer: Arc<BaseConsumer<ConsumerCtx>>,
    core: Arc<Core<P>>,
    runtime: &tokio::runtime::Handle,
) -> PartitionHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let (done_tx, done) = std::sync::mpsc::channel();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let cancel = core.stop.abandon.child_token();
    runtime.spawn(worker(core.clone(), rx, ack_tx, cancel.clone()));
    runtime.spawn(acker(
        core,
        key,
        consumer,
        ack_rx,
        in_flight.clone(),
        cancel.clone(),
        done_tx,
    ));
    PartitionHandle {
        tx,
        in_flight,
        done,
        cancel,
        paused: false,
        stash: Vec::new(),
    }
}

async fn worker<P: Processor>(
    core: Arc<Core<P>>,
    mut rx: mpsc::UnboundedReceiver<Vec<Record>>,
    acks: mpsc::UnboundedSender<Ack>,
    cancel: CancellationToken,
) {
    let mut consumed_topic: Option<(Arc<str>, prometheus::IntCounter, prometheus::Histogram)> =
        None;
    let halt = core.stop.halt.clone();
    while let Some(batch) = rx.recv().await {
        for record in batch {
            if cancel.is_cancelled() || halt.is_cancelled() {
                return;
            }
            let (consumed, latency) = match &consumed_topic {
                Some((t, c, h)) if *t == record.position.topic => (c.clone(), h.clone()),
                _ => {
                    let t = record.position.topic.clone();
                    let c = core
                        .metrics
                        .consumed
                        .with_label_values(&[core.name.as_str(), &t]);
                    let h = core
                        .metrics
                        .processing
                        .with_label_values(&[core.name.as_str(), &t]);
                    consumed_topic = Some((t, c.clone(), h.clone()));
                    (c, h)
                }
            };
            consumed.inc();
            let started = Instant::now();
            let Some(ack) = handle(&core, record, &cancel).await else {
                return;
            };
            latency.observe(started.elapsed().as_secs_f64());
            if acks.send(ack).is_err() {
                return;
            }
        }
    }
}

/// Encoded outputs, ready for the producer.
struct Encoded {
    topic: Arc<str>,
    key: Option<Bytes>,
    payload: Option<Bytes>,
    headers: Headers,
}

async fn encode_outputs(codec: &Codec, outputs: Vec<Output>) -> Result<Vec<Encoded>, ProcessError> {
    let mut encoded = Vec::with_capacity(outputs.len());
    for out in outputs {
        let payload = match out.payload {
            Payload::Bytes(b) => Some(b),
            Payload::Tombstone => None,
            Payload::Record(r) => {
                let compiled = r.compiled().map_err(eip_schemas::CodecError::from)?;
                let id = codec.registry().id_for(compiled).await?;
                Some(Bytes::from(r.encode(id)?))
            }
            Payload::Value { schema, value } => Some(Bytes::from(
                eip_schemas::codec::encode_value(schema.id, &schema.schema, &value)?,
            )),
        };
        encoded.push(Encoded {
            topic: out.topic,
            key: out.key,
            payload,
            headers: out.headers,
        });
    }
    Ok(encoded)
}

/// Backoff before retry `attempt` (1-based): exponential, capped, with jitter in [d/2, d].
pub(crate) fn backoff(retry: &RetryConfig, attempt: u32) -> Duration {
    let exp = retry
        .multiplier
        .powi(attempt.saturating_sub(1).min(64) as i32);
    let base = retry.initial_backoff.as_secs_f64() * exp;
    let capped = base.min(retry.max_backoff.as_secs_f64());
    let jittered = capped * (0.5 + rand::random::<f64>() * 0.5);
    Duration::from_secs_f64(jittered)
}

/// Decodes, processes and hands one record's outputs to the producer. Returns `None` when the
/// partition must stop (fatal error or abandoned); the record is then left uncommitted.
async fn handle<P: Processor>(
    core: &Arc<Core<P>>,
    record: Record,
    cancel: &CancellationToken,
) -> Option<Ack> {
    let trace = record
        .headers
        .get(TRACEPARENT)
        .and_then(TraceContext::parse)
        .unwrap_or_else(TraceContext::new_root);
    let correlation_id: Arc<str> = match record.headers.get_str(CORRELATION_ID) {
        Some(c) if !c.is_empty() => c.into(),
        _ => uuid::Uuid::new_v4().to_string().into(),
    };
    let span = tracing::info_span!(
        "process",
        topic = %record.position.topic,
        partition = record.position.partition,
        offset = record.position.offset,
        trace_id = %trace.trace_id_hex(),
        span_id = %trace.span_id_hex(),
        correlation_id = %correlation_id,
    );
    let mut attempts: u32 = 0;
    let mut first_failure: Option<time::OffsetDateTime> = None;
    let outcome = loop {
        attempts += 1;
        let attempt = async {
            let input = core.processor.decode(&core.codec, &record).await?;
            let envelope = Envelope {
                value: input,
                key: record.key.clone(),
                headers: record.headers.clone(),
                position: record.position.clone(),
                trace,
                correlation_id: correlation_id.clone(),
            };
            let outputs = core.processor.process(envelope).await?;
            encode_outputs(&core.codec, outputs).await
        }
        .instrument(span.clone())
        .await;
        match attempt {
            Ok(encoded) => break Ok(encoded),
            Err(e) => {
                first_failure.get_or_insert_with(time::OffsetDateTime::now_utc);
                match e.class() {
                    ErrorClass::Transient => {
                        core.metrics
                            .retried
                            .with_label_values(&[core.name.as_str(), &record.position.topic])
                            .inc();
                        let delay = backoff(&core.pipeline.retry, attempts);
                        warn!(
                            parent: &span,
                            error = %e.chain(),
                            attempt = attempts,
                            retry_in_ms = delay.as_millis() as u64,
                            "transient error: retrying in place"
                        );
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => continue,
                            _ = cancel.cancelled() => return None,
                            _ = core.stop.halt.cancelled() => return None,
                        }
                    }
                    class => break Err((class, e)),
                }
            }
        }
    };
    let mut deliveries = Vec::new();
    match outcome {
        Ok(encoded) => {
            let child = trace.child().to_header();
            for out in encoded {
                let mut out = out;
                if out.headers.get(TRACEPARENT).is_none() {
                    out.headers.push(TRACEPARENT, child.clone());
                }
                if out.headers.get(CORRELATION_ID).is_none() {
                    out.headers.push(
                        CORRELATION_ID,
                        Bytes::copy_from_slice(correlation_id.as_bytes()),
                    );
                }
                match send_output(core, &record, out, true, cancel).await {
                    Ok((topic, f)) => deliveries.push((Delivery::Output(topic), f)),
                    Err((topic, SendError::Abandoned)) => {
                        let _ = topic;
                        return None;
                    }
                    Err((topic, SendError::Permanent(reason))) => {
                        // The output can't ever be produced (too large, say): the input is poison.
                        deliveries.clear();
                        let reason = format!("producing to {topic} failed: {reason}");
                        return dead_letter(
                            core,
                            record,
                            ErrorClass::Poison,
                            &reason,
                            attempts,
                            first_failure,
                            cancel,
                        )
                        .instrument(span)
                        .await;
                    }
                    Err((topic, SendError::Fatal(reason) | SendError::Refused(reason))) => {
                        core.stop.fatal(format!("producing to {topic}: {reason}"));
                        return None;
                    }
                }
            }
        }
        Err((ErrorClass::Fatal, e)) => {
            core.stop.fatal(format!(
                "{} at {}[{}]@{}: {}",
                core.name,
                record.position.topic,
                record.position.partition,
                record.position.offset,
                e.chain()
            ));
            return None;
        }
        Err((class, e)) => {
            return dead_letter(
                core,
                record,
                class,
                &e.chain(),
                attempts,
                first_failure,
                cancel,
            )
            .instrument(span)
            .await;
        }
    }
    Some(Ack { record, deliveries })
}

async fn dead_letter<P: Processor>(
    core: &Arc<Core<P>>,
    record: Record,
    class: ErrorClass,
    reason: &str,
    attempts: u32,
    first_failure: Option<time::OffsetDateTime>,
    cancel: &CancellationToken,
) -> Option<Ack> {
    let topic = format!("{}{}", record.position.topic, core.pipeline.dlq_suffix);
    let headers = dlq::headers(
        &record,
        &dlq::Failure {
            class,
            reason,
            processor: &core.name,
            attempts,
            first_failure: first_failure.unwrap_or_else(time::OffsetDateTime::now_utc),
        },
    );
    warn!(
        topic = %record.position.topic,
        partition = record.position.partition,
        offset = record.position.offset,
        class = class.as_str(),
        reason,
        dlq = %topic,
        "record dead-lettered"
    );
    match send(
        core,
        &topic,
        record.key.as_deref(),
        record.payload.as_deref(),
        &headers,
        cancel,
    )
    .await
    {
        Ok(f) => Some(Ack {
            record,
            deliveries: vec![(Delivery::DeadLetter(class), f)],
        }),
        Err(SendError::Abandoned) => None,
        Err(SendError::Permanent(r)) | Err(SendError::Fatal(r)) | Err(SendError::Refused(r)) => {
            core.stop.fatal(format!("dead-lettering to {topic}: {r}"));
            None
        }
    }
}

enum SendError {
    Abandoned,
    Permanent(String),
    /// The producer refused the record for now (its topic is not known to exist).
    Refused(String),
    Fatal(String),
}

/// Hands one output to the producer. When the producer refuses it for now (its topic does not
/// exist), the processor decides: try again after a backoff, or produce something else instead.
async fn send_output<P: Processor>(
    core: &Core<P>,
    source: &Record,
    out: Encoded,
    redirectable: bool,
    cancel: &CancellationToken,
) -> Result<(Arc<str>, DeliveryFuture), (Arc<str>, SendError)> {
    let mut out = out;
    let mut attempts: u32 = 0;
    loop {
        let sent = send(
            core,
            &out.topic,
            out.key.as_deref(),
            out.payload.as_deref(),
            &out.headers,
            cancel,
        )
        .await;
        let error = match sent {
            Ok(f) => return Ok((out.topic, f)),
            Err(SendError::Refused(e)) => e,
            Err(other) => return Err((out.topic, other)),
        };
        attempts += 1;
        core.metrics
            .retried
            .with_label_values(&[core.name.as_str(), &source.position.topic])
            .inc();
        let failure = DeliveryFailure {
            source,
            topic: &out.topic,
            key: out.key.as_deref(),
            payload: out.payload.as_deref(),
            headers: out.headers.clone(),
            error: error.clone(),
            attempts,
        };
        let decision = if redirectable {
            core.processor.on_delivery_failure(&failure)
        } else {
            Redirect::Again
        };
        match decision {
            Redirect::Again => {
                let delay = backoff(&core.pipeline.retry, attempts);
                warn!(error = %error, topic = %out.topic, attempt = attempts, retry_in_ms = delay.as_millis() as u64, "producer refused the record: sending again");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return Err((out.topic, SendError::Abandoned)),
                    _ = core.stop.halt.cancelled() => return Err((out.topic, SendError::Abandoned)),
                }
            }
            Redirect::To(redirect) => {
                info!(error = %error, from = %out.topic, to = %redirect.topic, "producer refused the record: redirected");
                out = encode_redirect(&core.codec, &out.topic, redirect).await?;
                attempts = 0;
            }
        }
    }
}

/// Encodes a redirect; a redirect that can't be encoded is a processor bug, so fatal.
async fn encode_redirect(
    codec: &Codec,
    from: &Arc<str>,
    redirect: Output,
) -> Result<Encoded, (Arc<str>, SendError)> {
    let to = redirect.topic.clone();
    let mut encoded = encode_outputs(codec, vec![redirect]).await.map_err(|e| {
        (
            from.clone(),
            SendError::Fatal(format!("redirect to {to} could not be encoded: {e}")),
        )
    })?;
    encoded.pop().ok_or_else(|| {
        (
            from.clone(),
            SendError::Fatal(format!("redirect to {to} produced nothing")),
        )
    })
}

/// Delivery errors that say "this record can never be produced", as opposed to the broker or
/// the producer being in trouble.
fn record_is_unproducible(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::MessageBatchTooLarge
    )
}

/// Hands a record to the producer, waiting while its queue is full (backpressure).
async fn send<P: Processor>(
    core: &Core<P>,
    topic: &str,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: &Headers,
    cancel: &CancellationToken,
) -> Result<DeliveryFuture, SendError> {
    let mut owned = OwnedHeaders::new_with_capacity(headers.len());
    for (k, v) in headers.iter() {
        owned = owned.insert(Header { key: k, value: v });
    }
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(owned);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(p) = payload {
        record = record.payload(p);
    }
    send_record(core, record, cancel).await
}

/// Hands a prepared record to the producer, waiting while its queue is full (backpressure).
async fn send_record<P: Processor>(
    core: &Core<P>,
    mut record: FutureRecord<'_, [u8], [u8]>,
    cancel: &CancellationToken,
) -> Result<DeliveryFuture, SendError> {
    loop {
        match core.producer.send_result(record) {
            Ok(f) => return Ok(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(2)) => {}
                    _ = cancel.cancelled() => return Err(SendError::Abandoned),
                    _ = core.stop.halt.cancelled() => return Err(SendError::Abandoned),
                }
            }
            Err((KafkaError::MessageProduction(code), _)) if record_is_unproducible(code) => {
                return Err(SendError::Permanent(code.to_string()));
            }
            Err((KafkaError::MessageProduction(code), _))
                if matches!(
                    code,
                    RDKafkaErrorCode::UnknownTopic
                        | RDKafkaErrorCode::UnknownPartition
                        | RDKafkaErrorCode::UnknownTopicOrPartition
                ) =>
            {
                return Err(SendError::Refused(code.to_string()));
            }
            Err((e, _)) => return Err(SendError::Fatal(e.to_string())),
        }
    }
}

fn count_dead_letter<P: Processor>(core: &Core<P>, source: &str, class: ErrorClass) {
    core.metrics
        .dlq
        .with_label_values(&[core.name.as_str(), source, class.as_str()])
        .inc();
}

/// A dead letter the broker refuses can't be kept anywhere: stop rather than lose it.
fn refused_dead_letter<P: Processor>(core: &Core<P>, key: &PartitionKey, e: &KafkaError) {
    core.stop.fatal(format!(
        "dead letter from {}[{}] refused by the broker: {e}",
        key.0, key.1
    ));
}

/// How a delivery ended.
enum Settled {
    /// Acknowledged by the broker, by the topic named (a redirect's, if there was one).
    Delivered(Arc<str>),
    /// Refused for good: this record can never be produced.
    Unproducible(KafkaError),
    /// The partition is abandoned or the process is stopping on a fatal error.
    Stop,
}

/// Awaits a delivery. A delivery that failed for a reason that may pass (the broker restarting,
/// a leader moving) is sent again with backoff, in place, until it is acknowledged, unless the
/// processor redirects it (`redirectable`, for outputs; never for dead letters): transient
/// errors never dead-letter good data.
async fn settle<P: Processor>(
    core: &Core<P>,
    source: &Record,
    topic: Arc<str>,
    first: DeliveryFuture,
    redirectable: bool,
    cancel: &CancellationToken,
) -> Settled {
    let mut topic = topic;
    let mut fut = first;
    let mut attempt: u32 = 0;
    loop {
        let result = tokio::select! {
            r = fut => r,
            _ = cancel.cancelled() => return Settled::Stop,
        };
        let (e, msg) = match result {
            Ok(Ok(_)) => return Settled::Delivered(topic),
            Ok(Err(failure)) => failure,
            Err(_) => {
                core.stop
                    .fatal("producer shut down with deliveries pending".into());
                return Settled::Stop;
            }
        };
        if e.rdkafka_error_code().is_some_and(record_is_unproducible) {
            return Settled::Unproducible(e);
        }
        if let Some((code, reason)) = core.producer.client().fatal_error() {
            core.stop
                .fatal(format!("producer fatal error {code:?}: {reason}"));
            return Settled::Stop;
        }
        attempt += 1;
        core.metrics
            .retried
            .with_label_values(&[core.name.as_str(), &source.position.topic])
            .inc();
        let headers = crate::kafka::headers_of(&msg);
        let redirect = if redirectable {
            core.processor.on_delivery_failure(&DeliveryFailure {
                source,
                topic: msg.topic(),
                key: msg.key(),
                payload: msg.payload(),
                headers: headers.clone(),
                error: e.to_string(),
                attempts: attempt,
            })
        } else {
            Redirect::Again
        };
        let next = match redirect {
            Redirect::Again => {
                let delay = backoff(&core.pipeline.retry, attempt);
                warn!(error = %e, topic = msg.topic(), attempt, retry_in_ms = delay.as_millis() as u64, "delivery failed: sending again");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return Settled::Stop,
                }
                Encoded {
                    // The failed message's own topic: a dead letter goes back to the DLQ.
                    topic: msg.topic().into(),
                    key: msg.key().map(Bytes::copy_from_slice),
                    payload: msg.payload().map(Bytes::copy_from_slice),
                    headers,
                }
            }
            Redirect::To(redirect) => {
                info!(error = %e, from = msg.topic(), to = %redirect.topic, "delivery failed: redirected");
                attempt = 0;
                let from: Arc<str> = msg.topic().into();
                match encode_redirect(&core.codec, &from, redirect).await {
                    Ok(encoded) => encoded,
                    Err((_, SendError::Fatal(reason))) => {
                        core.stop.fatal(reason);
                        return Settled::Stop;
                    }
                    Err(_) => return Settled::Stop,
                }
            }
        };
        fut = match send_output(core, source, next, redirectable, cancel).await {
            Ok((sent_to, f)) => {
                topic = sent_to;
                f
            }
            Err((_, SendError::Abandoned)) => return Settled::Stop,
            Err((to, SendError::Permanent(reason)))
            | Err((to, SendError::Fatal(reason)))
            | Err((to, SendError::Refused(reason))) => {
                core.stop.fatal(format!("sending to {to} again: {reason}"));
                return Settled::Stop;
            }
        };
    }
}

async fn acker<P: Processor>(
    core: Arc<Core<P>>,
    key: PartitionKey,
    consumer: Arc<BaseConsumer<ConsumerCtx>>,
    mut rx: mpsc::UnboundedReceiver<Ack>,
    in_flight: Arc<AtomicUsize>,
    cancel: CancellationToken,
    done: std::sync::mpsc::Sender<()>,
) {
    let mut produced: HashMap<Arc<str>, prometheus::IntCounter> = HashMap::new();
    let mut to_store: Option<i64> = None;
    let mut since_store = 0usize;
    'acks: while let Some(ack) = rx.recv().await {
        let offset = ack.record.position.offset;
        let mut failed: Option<(Arc<str>, KafkaError)> = None;
        for (what, fut) in ack.deliveries {
            let (topic, redirectable) = match &what {
                Delivery::Output(topic) => (topic.clone(), true),
                Delivery::DeadLetter(_) => (key.0.clone(), false),
            };
            match settle(&core, &ack.record, topic, fut, redirectable, &cancel).await {
                Settled::Delivered(delivered_to) => match what {
                    Delivery::Output(_) => produced
                        .entry(delivered_to.clone())
                        .or_insert_with(|| {
                            core.metrics
                                .produced
                                .with_label_values(&[core.name.as_str(), &delivered_to])
                        })
                        .inc(),
                    Delivery::DeadLetter(class) => count_dead_letter(&core, &key.0, class),
                },
                Settled::Unproducible(e) => match what {
                    Delivery::Output(topic) => {
                        failed.get_or_insert((topic, e));
                    }
                    Delivery::DeadLetter(_) => {
                        refused_dead_letter(&core, &key, &e);
                        break 'acks;
                    }
                },
                Settled::Stop => break 'acks,
            }
        }
        if let Some((topic, e)) = failed {
            // The broker refused this output for good (too large, invalid): the input is poison.
            let reason = format!("delivery to {topic} failed: {e}");
            let Some(dl) = dead_letter(
                &core,
                ack.record,
                ErrorClass::Poison,
                &reason,
                1,
                None,
                &cancel,
            )
            .await
            else {
                break 'acks;
            };
            for (_, fut) in dl.deliveries {
                match settle(&core, &dl.record, key.0.clone(), fut, false, &cancel).await {
                    Settled::Delivered(_) => count_dead_letter(&core, &key.0, ErrorClass::Poison),
                    Settled::Unproducible(e) => {
                        refused_dead_letter(&core, &key, &e);
                        break 'acks;
                    }
                    Settled::Stop => break 'acks,
                }
            }
        }
        to_store = Some(offset);
        since_store += 1;
        in_flight.fetch_sub(1, Ordering::AcqRel);
        core.in_flight.sub(1);
        if since_store >= 256 || rx.is_empty() {
            store_offset(&consumer, &key, offset);
            to_store = None;
            since_store = 0;
        }
    }
    if let Some(offset) = to_store {
        store_offset(&consumer, &key, offset);
    }
    drop(done);
}

/// Marks everything up to and including `offset` as done; librdkafka commits `offset + 1`.
fn store_offset(consumer: &BaseConsumer<ConsumerCtx>, key: &PartitionKey, offset: i64) {
    if let Err(e) = consumer.store_offset(&key.0, key.1, offset) {
        // The partition was revoked meanwhile; its new owner re-reads from the last commit.
        debug!(topic = %key.0, partition = key.1, offset, error = %e, "offset not stored");
    }
}
