//! The poll thread: it owns the consumer, batches records by partition for their workers,
//! keeps the in-flight budget (pausing the fullest partition when it stays full), and drains
//! revoked partitions in the rebalance callbacks.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use tracing::{debug, info, warn};

use crate::health::Health;
use crate::metrics::Metrics;
use crate::processor::{Position, Processor, Record};

use super::worker::*;
use super::*;

/// State shared by the poll loop and the rebalance callbacks (both run on the poll thread).
pub(crate) struct PollState {
    pub(super) partitions: Mutex<HashMap<PartitionKey, PartitionHandle>>,
    pub(super) in_flight: Arc<InFlight>,
    pub(super) metrics: Metrics,
    pub(super) name: String,
    pub(super) stop: Arc<Stop>,
    pub(super) health: Arc<Health>,
    pub(super) drain_timeout: Duration,
}

/// The consumer's context: rebalance handling and lag metrics.
pub(crate) struct ConsumerCtx {
    pub(super) state: Arc<PollState>,
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
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                self.state
                    .metrics
                    .commit_failures
                    .with_label_values(&[&self.state.name])
                    .inc();
                warn!(
                    error = %e,
                    partitions = offsets.count(),
                    "offset commit failed: these records will be redelivered"
                );
            }
        }
    }

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
            self.in_flight.sub(take(&in_flight, usize::MAX));
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
                Err(e) => {
                    self.metrics
                        .commit_failures
                        .with_label_values(&[&self.name])
                        .inc();
                    warn!(error = %e, "commit on release failed");
                }
            }
        }
    }
}

/// Copies a consumed message into an owned record.
pub(super) fn to_record(m: &BorrowedMessage<'_>, topics: &mut HashMap<String, Arc<str>>) -> Record {
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
pub(super) fn dispatch<P: Processor>(
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
pub(super) fn budget_use(state: &PollState) -> (usize, usize) {
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
pub(super) fn pause_fullest(consumer: &BaseConsumer<ConsumerCtx>, state: &PollState) -> bool {
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
pub(super) fn resume_ready(
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
