//! The poll thread: it owns the consumer, batches records by partition for their workers,
//! keeps the in-flight budget (pausing the fullest partition when it stays full), and drains
//! revoked partitions in the rebalance callbacks.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers as _, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use tracing::{debug, info, warn};

use crate::health::Health;
use crate::metrics::Metrics;
use crate::processor::{Headers, Position, Record, intern};
use crate::stateful::Stateful;

use super::worker::*;
use super::*;

/// State shared by the poll loop and the rebalance callbacks (both run on the poll thread).
pub(crate) struct PollState {
    /// The partitions this member owns and works on. Only the rebalance callbacks add and
    /// remove entries, so a record of a partition not in here is never handled.
    pub(super) partitions: Mutex<HashMap<PartitionKey, PartitionHandle>>,
    /// Partitions assigned by the last callbacks whose workers the poll loop has yet to start
    /// (a callback can't: it has no handle on the consumer to give the acker).
    pub(super) assigned: Mutex<Vec<PartitionKey>>,
    /// Partitions revoked by a callback since the poll loop last looked: records of theirs
    /// that it polled before the callback ran are dropped, not dispatched.
    pub(super) revoked: Mutex<Vec<PartitionKey>>,
    /// Where this group stands on each assigned partition (its committed offset, or the start
    /// of the log before any commit), from the last statistics: the lag of a paused partition
    /// is measured from it.
    pub(super) starts: Mutex<HashMap<(String, i32), i64>>,
    pub(super) in_flight: Arc<InFlight>,
    pub(crate) metrics: Metrics,
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
        let paused: Vec<PartitionKey> = self.state.paused();
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 || !p.desired {
                    continue;
                }
                let start = if p.committed_offset >= 0 {
                    p.committed_offset
                } else {
                    p.lo_offset
                };
                if start >= 0
                    && let Ok(mut starts) = self.state.starts.lock()
                {
                    starts.insert((topic.clone(), *partition), start);
                }
                // librdkafka stops refreshing the end of a paused partition's log; the
                // readiness loop measures those (see `PollState::paused_lag`).
                if paused.iter().any(|(t, n)| **t == **topic && n == partition) {
                    continue;
                }
                if let Some(lag) = lag_of(p) {
                    self.state
                        .metrics
                        .lag
                        .with_label_values(&[&self.state.name, topic, &partition.to_string()])
                        .set(lag);
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

/// A partition's lag: librdkafka's (the end of the log minus the committed offset), or, while
/// this group has committed nothing on an assigned partition, the whole retained log, so a
/// partition stuck on its first record shows its lag growing instead of nothing.
fn lag_of(p: &rdkafka::statistics::Partition) -> Option<i64> {
    if p.consumer_lag >= 0 {
        return Some(p.consumer_lag);
    }
    let end = if p.ls_offset >= 0 {
        p.ls_offset
    } else {
        p.hi_offset
    };
    (p.desired && end >= 0 && p.lo_offset >= 0 && p.committed_offset < 0).then(|| end - p.lo_offset)
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
                let which = |k: &PartitionKey| keys.iter().any(|(t, p)| **t == *k.0 && *p == k.1);
                if let Ok(mut revoked) = self.state.revoked.lock() {
                    revoked.extend(keys.iter().map(|(t, p)| (Arc::from(t.as_str()), *p)));
                }
                let end = if lost { End::Lost } else { End::Handover };
                self.state.release(consumer, which, end);
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
            if let Ok(mut assigned) = self.state.assigned.lock() {
                assigned.extend(
                    tpl.elements()
                        .iter()
                        .map(|e| (Arc::from(e.topic()), e.partition())),
                );
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

/// How a release ends a partition's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// A rebalance takes the partitions away: finish, then commit synchronously, so the next
    /// owner starts exactly where this member stopped.
    Handover,
    /// Shutdown: finish, then commit synchronously too, so the members that take the
    /// partitions over start where this one stopped. (A broker that stopped answering holds
    /// that commit; `run_until` bounds the whole drain and close, and exits with an error
    /// past `pipeline.close_timeout`.)
    Shutdown,
    /// The assignment is lost (another member already owns the partitions): abandon at once.
    Lost,
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
            assigned: Mutex::new(Vec::new()),
            revoked: Mutex::new(Vec::new()),
            starts: Mutex::new(HashMap::new()),
            in_flight,
            metrics,
            name,
            stop,
            health,
            drain_timeout,
        })
    }

    /// The partitions paused for backpressure.
    pub(super) fn paused(&self) -> Vec<PartitionKey> {
        self.partitions
            .lock()
            .map(|map| {
                map.iter()
                    .filter(|(_, h)| h.pause != Pause::Flowing)
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Measures the lag of the paused partitions, whose end of log librdkafka no longer
    /// refreshes while they are not fetched: the high watermark from the broker, minus where
    /// the group stands. Blocking (one request per paused partition); the readiness loop calls
    /// it off the runtime's threads.
    pub(crate) fn paused_lag(&self, consumer: &BaseConsumer<ConsumerCtx>) {
        for (topic, partition) in self.paused() {
            let start = self
                .starts
                .lock()
                .ok()
                .and_then(|s| s.get(&(topic.to_string(), partition)).copied());
            let Some(start) = start else { continue };
            match consumer.fetch_watermarks(&topic, partition, Duration::from_secs(3)) {
                Ok((_, high)) if high >= start => self
                    .metrics
                    .lag
                    .with_label_values(&[self.name.as_str(), &*topic, &partition.to_string()])
                    .set(high - start),
                Ok(_) => {}
                Err(e) => debug!(%topic, partition, error = %e, "watermarks of a paused partition"),
            }
        }
    }

    pub(crate) fn context(self: &Arc<Self>) -> ConsumerCtx {
        ConsumerCtx {
            state: self.clone(),
        }
    }

    /// Ends the work on the partitions `which` selects: their workers finish what they were
    /// given and flush (within `drain_timeout`, or are abandoned: their futures dropped, so
    /// they produce and write nothing more), then what they finished is committed. Only then
    /// does the callback return and the group hand the partitions to another member.
    fn release(
        &self,
        consumer: &BaseConsumer<ConsumerCtx>,
        which: impl Fn(&PartitionKey) -> bool,
        end: End,
    ) {
        if let Ok(mut assigned) = self.assigned.lock() {
            assigned.retain(|k| !which(k));
        }
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
            if h.pause != Pause::Flowing {
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
            if end == End::Lost {
                h.cancel.cancel();
            }
            // Dropping the sender lets the worker finish what it has, flush, then stop.
            drop(h.tx);
            waiting.push((key, h.done, h.cancel, h.in_flight));
        }
        // Past the deadline every partition still draining is abandoned at once, and all of
        // them get the same 5 s to stop: a revoke holds the poll thread for at most
        // drain_timeout + 5 s, however many partitions it covers.
        let mut late = Vec::new();
        for (key, done, cancel, in_flight) in waiting {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = done.recv_timeout(left) {
                warn!(topic = %key.0, partition = key.1, "drain timed out: abandoning in-flight records, they will be redelivered");
                cancel.cancel();
                late.push((key, done, in_flight));
            } else {
                self.in_flight.sub(take(&in_flight, usize::MAX));
            }
        }
        let grace = Instant::now() + Duration::from_secs(5);
        for (key, done, in_flight) in late {
            let left = grace.saturating_duration_since(Instant::now());
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = done.recv_timeout(left) {
                // Its futures were dropped, so only a processor blocking its thread can hold
                // it. Going on without it could mean two workers on one partition.
                self.stop.fatal(format!(
                    "the worker of {}[{}] did not stop within 5 s of being abandoned (is the \
                     processor blocking a thread?)",
                    key.0, key.1
                ));
            }
            // Whatever was not acknowledged stays uncommitted; it no longer counts here.
            self.in_flight.sub(take(&in_flight, usize::MAX));
        }
        if end == End::Lost {
            return;
        }
        // Every record finished above has its offset stored; commit them now, before the
        // partitions can go to another member.
        self.commit_released(consumer, end);
    }

    /// Commits the offsets a release stored.
    ///
    /// At shutdown the member is still in its group while it drains, and librdkafka rejoins
    /// on its own when another member joins or leaves meanwhile: a commit sent with the
    /// generation the drain started in is then refused (`IllegalGeneration`, or
    /// `RebalanceInProgress` until the new generation is synced), and everything since the
    /// last periodic commit would be redelivered to the next owner. So a shutdown commit
    /// refused for the generation is retried, polling (which lets the rejoin finish; records it
    /// returns are left uncommitted, for the next owner) for up to [`COMMIT_RETRY`]. A
    /// handover commit runs inside the revoke callback, where the group cannot move on without
    /// this member, so it is not retried.
    fn commit_released(&self, consumer: &BaseConsumer<ConsumerCtx>, end: End) {
        let deadline = Instant::now() + COMMIT_RETRY;
        loop {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => return,
                Err(KafkaError::ConsumerCommit(
                    code @ (RDKafkaErrorCode::IllegalGeneration
                    | RDKafkaErrorCode::RebalanceInProgress),
                )) if end == End::Shutdown && Instant::now() < deadline => {
                    debug!(error = %code, "shutdown commit refused while the group rebalances: retrying");
                    let _ = consumer.poll(Duration::from_millis(50));
                }
                Err(e) => {
                    self.metrics
                        .commit_failures
                        .with_label_values(&[&self.name])
                        .inc();
                    warn!(error = %e, "commit on release failed");
                    return;
                }
            }
        }
    }
}

/// How long a shutdown commit refused because the group is rebalancing is retried.
const COMMIT_RETRY: Duration = Duration::from_secs(5);

/// Where a poll batch's payloads are copied: one buffer, sliced, so a record's payload costs
/// no allocation of its own. A buffer is freed once the last payload sliced from it is
/// dropped. Keys and header values get copies of their own: processors keep those (state
/// maps, timers), and a kept slice would pin its whole buffer.
pub(super) struct Arena {
    buf: BytesMut,
}

impl Arena {
    /// How much room a new buffer starts with.
    /// Small, so a partition held back keeps little of the others' payloads alive with its own.
    const CHUNK: usize = 64 * 1024;

    pub(super) fn new() -> Arena {
        Arena {
            buf: BytesMut::new(),
        }
    }

    /// A shared copy of `data`.
    pub(super) fn copy(&mut self, data: &[u8]) -> Bytes {
        if self.buf.capacity() - self.buf.len() < data.len() {
            self.buf = BytesMut::with_capacity(Arena::CHUNK.max(data.len()));
        }
        self.buf.extend_from_slice(data);
        self.buf.split().freeze()
    }
}

/// Copies a consumed message into an owned record: its payload into the poll's [`Arena`], its
/// header names interned, its topic shared with the other records of that topic.
pub(super) fn to_record(
    m: &BorrowedMessage<'_>,
    topics: &mut Vec<Arc<str>>,
    arena: &mut Arena,
) -> Record {
    let topic = match topics.iter().find(|t| ***t == *m.topic()) {
        Some(t) => t.clone(),
        None => {
            let t: Arc<str> = m.topic().into();
            topics.push(t.clone());
            t
        }
    };
    let headers = match m.headers() {
        Some(hs) => {
            let mut headers = Headers::with_capacity(hs.count());
            for h in hs.iter() {
                headers.push_shared(intern(h.key), h.value.map(Bytes::copy_from_slice));
            }
            headers
        }
        None => Headers::new(),
    };
    Record {
        position: Position {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
        },
        key: m.key().map(Bytes::copy_from_slice),
        payload: m.payload().map(|p| arena.copy(p)),
        headers,
    }
}

/// A poll's records, by partition, in the order they came: a handful of partitions, so a
/// list searched from the last one used, not a hash map.
#[derive(Default)]
pub(super) struct Polled {
    batches: Vec<(PartitionKey, Vec<Record>)>,
}

impl Polled {
    fn push(&mut self, record: Record) {
        let same = |(k, _): &(PartitionKey, Vec<Record>)| {
            k.1 == record.position.partition && Arc::ptr_eq(&k.0, &record.position.topic)
        };
        if let Some(at) = self.batches.iter().rposition(same) {
            self.batches[at].1.push(record);
        } else {
            let key = (record.position.topic.clone(), record.position.partition);
            self.batches.push((key, vec![record]));
        }
    }

    fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Forgets the records of `key`; how many there were.
    fn remove(&mut self, key: &PartitionKey) -> usize {
        let mut n = 0;
        self.batches.retain(|(k, records)| {
            let hit = k == key;
            if hit {
                n += records.len();
            }
            !hit
        });
        n
    }
}

/// The poll thread's whole life: [`poll_loop`], then closing the consumer here, where
/// `run_until` bounds how long a close may take, rather than in whichever task happens to drop
/// the last handle. Returns false if the loop panicked (its partitions are then abandoned:
/// uncommitted, so redelivered).
pub(crate) fn poll_thread<S: Stateful>(
    consumer: Arc<BaseConsumer<ConsumerCtx>>,
    state: Arc<PollState>,
    core: Arc<Core<S>>,
    runtime: tokio::runtime::Handle,
) -> bool {
    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        poll_loop(consumer.clone(), state.clone(), core.clone(), runtime)
    }));
    if polled.is_err() {
        core.stop.fatal("poll thread panicked".into());
        state.release(&consumer, |_| true, End::Lost);
    }
    // Partition workers, ackers and the readiness probe let go of their handles as they stop.
    while Arc::strong_count(&consumer) > 1 {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(consumer);
    polled.is_ok()
}

/// How long the budget may stay full before partitions are paused.
const SATURATED: Duration = Duration::from_millis(200);

/// The poll loop: it polls until `stop.stopping` fires, then drains every partition and
/// commits. Backpressure never stops it for long, so rebalances, statistics (the lag metric)
/// and `max.poll.interval.ms` are served:
/// - When the partitions that are not held back hold `max_in_flight` records, the loop takes
///   nothing more for a moment: what was fetched waits in librdkafka's queue, which costs
///   nothing when the workers catch up within [`SATURATED`].
/// - If the budget stays full that long, the partitions holding their share of it (the budget
///   divided by the partitions assigned: slow or stuck ones) are held back, paused until they
///   have drained to half their share, and what they hold stops counting against the others.
///   If the rest still fill the budget, they are paused too until they are back to half of it.
/// - Whatever the budget, a partition holding four times its share is paused at once, so the
///   total never passes four times the budget; with a slow processor or one stuck partition it
///   stays within twice.
///
/// Pausing makes librdkafka drop what it prefetched for those partitions (fetched again on
/// resume), which is also what lets rebalance and statistics events, queued behind fetched
/// records, reach the poll.
pub(crate) fn poll_loop<S: Stateful>(
    consumer: Arc<BaseConsumer<ConsumerCtx>>,
    state: Arc<PollState>,
    core: Arc<Core<S>>,
    runtime: tokio::runtime::Handle,
) {
    let max_batch = core.pipeline.max_batch;
    let max_in_flight = core.pipeline.max_in_flight;
    let mut topics: Vec<Arc<str>> = Vec::new();
    let mut arena = Arena::new();
    let mut batches = Polled::default();
    let mut full_since: Option<Instant> = None;
    while !core.stop.stopping.is_cancelled() {
        start_assigned(&consumer, &state, &core, &runtime);
        let active = apply_backpressure(&consumer, &state, max_in_flight, &mut full_since);
        if active >= max_in_flight && full_since.is_some_and(|t| t.elapsed() < SATURATED) {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let mut taken = 0;
        let mut next = consumer.poll(Duration::from_millis(50));
        loop {
            // A rebalance callback may have run inside that poll: records of a partition it
            // revoked that were polled before it must not be handled here any more.
            drop_revoked(&state, &mut batches);
            let Some(result) = next else { break };
            match result {
                Ok(m) => {
                    batches.push(to_record(&m, &mut topics, &mut arena));
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
            start_assigned(&consumer, &state, &core, &runtime);
            dispatch(&state, &mut batches);
        }
    }
    info!("stopping: draining in-flight records");
    state.release(&consumer, |_| true, End::Shutdown);
    consumer.unsubscribe();
    crate::kafka::settle_before_close(&consumer);
}

/// Forgets polled records of partitions revoked since the last look.
fn drop_revoked(state: &PollState, batches: &mut Polled) {
    let Ok(mut revoked) = state.revoked.lock() else {
        return;
    };
    for key in revoked.drain(..) {
        let dropped = batches.remove(&key);
        if dropped > 0 {
            debug!(topic = %key.0, partition = key.1, records = dropped, "dropping records polled before their partition was revoked");
        }
    }
}

/// Starts a worker for every newly assigned partition: it opens the partition's state at once,
/// before the first record arrives.
fn start_assigned<S: Stateful>(
    consumer: &Arc<BaseConsumer<ConsumerCtx>>,
    state: &PollState,
    core: &Arc<Core<S>>,
    runtime: &tokio::runtime::Handle,
) {
    let new: Vec<PartitionKey> = match state.assigned.lock() {
        Ok(mut assigned) if !assigned.is_empty() => assigned.drain(..).collect(),
        _ => return,
    };
    let Ok(mut map) = state.partitions.lock() else {
        core.stop.fatal("partition table poisoned".into());
        return;
    };
    for key in new {
        if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(key.clone()) {
            slot.insert(spawn_partition(
                key,
                consumer.clone(),
                core.clone(),
                runtime,
            ));
        }
    }
}

/// Hands batches to their partitions' workers. A partition this member does not own (revoked
/// meanwhile) gets nothing: its records are redelivered to its owner. A paused partition still
/// gets what was polled for it before the pause took effect (counted, within one batch).
pub(super) fn dispatch(state: &PollState, batches: &mut Polled) {
    let Ok(mut map) = state.partitions.lock() else {
        state.stop.fatal("partition table poisoned".into());
        return;
    };
    for (key, batch) in batches.batches.drain(..) {
        if batch.is_empty() {
            continue;
        }
        let Some(handle) = map.get_mut(&key) else {
            debug!(topic = %key.0, partition = key.1, records = batch.len(), "records of a partition not owned: dropped");
            continue;
        };
        if handle.fenced.load(Ordering::Acquire) {
            // A newer owner claimed it in the store; the revoke is on its way.
            continue;
        }
        let n = batch.len();
        handle.in_flight.fetch_add(n, Ordering::AcqRel);
        state.in_flight.add(n);
        if handle.tx.send(batch).is_err() {
            // The worker stopped (fatal, fenced or abandoned): the records stay uncommitted and
            // are redelivered to whoever owns the partition next.
            state.in_flight.sub(take(&handle.in_flight, n));
        }
    }
}

/// Pauses and resumes partitions for the budget (see [`poll_loop`]); returns the records
/// held by partitions not held back, which count against the budget.
fn apply_backpressure(
    consumer: &BaseConsumer<ConsumerCtx>,
    state: &PollState,
    max_in_flight: usize,
    full_since: &mut Option<Instant>,
) -> usize {
    let total = state.in_flight.get();
    let Ok(mut map) = state.partitions.lock() else {
        return total;
    };
    let share = (max_in_flight / map.len().max(1)).max(1);
    let held_back: usize = map
        .values()
        .filter(|h| h.pause == Pause::Full)
        .map(|h| h.in_flight.load(Ordering::Acquire))
        .sum();
    let mut active = total.saturating_sub(held_back);
    let saturated = active >= max_in_flight;
    let since = if saturated {
        *full_since.get_or_insert_with(Instant::now)
    } else {
        *full_since = None;
        Instant::now()
    };
    let prolonged = saturated && since.elapsed() >= SATURATED;
    let mut pause = TopicPartitionList::new();
    let mut resume = TopicPartitionList::new();
    // However the budget stands, no partition holds more than four times its share: the shares
    // add up to the budget, so everything together stays within four times it. (Twice was
    // measured: uneven fetches hit it in full flow, and the pauses cost the pass-through 25%.)
    for (key, h) in map.iter_mut().filter(|(_, h)| h.pause == Pause::Flowing) {
        let held = h.in_flight.load(Ordering::Acquire);
        if held >= 4 * share {
            debug!(topic = %key.0, partition = key.1, held, share, "partition holds four times its share: paused");
            h.pause = Pause::Capped;
            pause.add_partition(&key.0, key.1);
            state.metrics.paused.inc();
        }
    }
    if prolonged {
        // Hold back the partitions at their share; then, if the rest still fill the budget,
        // pause them too.
        for (key, h) in map.iter_mut().filter(|(_, h)| h.pause != Pause::Full) {
            let held = h.in_flight.load(Ordering::Acquire);
            if held >= share {
                let was_paused = h.pause != Pause::Flowing;
                warn!(topic = %key.0, partition = key.1, held, share, "the budget stayed full and this partition holds its share of it: held back until it drains to half");
                if !was_paused {
                    pause.add_partition(&key.0, key.1);
                    state.metrics.paused.inc();
                }
                h.pause = Pause::Full;
                active = active.saturating_sub(held);
            }
        }
        if active >= max_in_flight {
            for (key, h) in map.iter_mut().filter(|(_, h)| h.pause == Pause::Flowing) {
                h.pause = Pause::Budget;
                pause.add_partition(&key.0, key.1);
                state.metrics.paused.inc();
            }
        }
        *full_since = None;
    }
    let budget_free = active <= max_in_flight / 2;
    for (key, h) in map.iter_mut() {
        let held = h.in_flight.load(Ordering::Acquire);
        let resumes = match h.pause {
            Pause::Budget => budget_free,
            Pause::Full | Pause::Capped => held <= share / 2,
            Pause::Flowing => false,
        };
        if resumes {
            h.pause = Pause::Flowing;
            resume.add_partition(&key.0, key.1);
            state.metrics.paused.dec();
        }
    }
    drop(map);
    if pause.count() > 0
        && let Err(e) = consumer.pause(&pause)
    {
        warn!(error = %e, "pausing for backpressure failed");
    }
    if resume.count() > 0
        && let Err(e) = consumer.resume(&resume)
    {
        warn!(error = %e, "resuming after backpressure failed");
    }
    active
}
