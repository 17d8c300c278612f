//! A partition's worker: it opens the partition's state, then handles each poll batch, record
//! by record in offset order (decode, wait until due, process, encode, hand outputs to the
//! producer under the batch's tag), seals the batch and hands it to the acker; it fires due
//! timers, group-commits staged writes, and hands the state back when the partition is
//! revoked.
//!
//! Per batch: one span at `info`, one cancellation registration, one metrics update. Per
//! record: its trace context and correlation id, a span only at `debug`, the processor's
//! work, and its outputs' headers.
//!
//! Everything it does is raced against the partition's cancel token: when a drain times out
//! or the assignment is lost, its futures are dropped where they stand, so an abandoned
//! partition produces and writes nothing more.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use eip_schemas::{Classify, ErrorClass};
use futures_util::FutureExt as _;
use rdkafka::consumer::BaseConsumer;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, warn};

use crate::processor::{Headers, Position, ProcessError, Record};
use crate::stateful::{Flush, PartitionId, Stateful, Timer, TimerChange, Timers, now_ms};

use super::ack::{AckItem, Acker, Sealed, Tally};
use super::record::{Step, handle};
use super::*;

/// Starts a partition's worker and acker; called when the partition is assigned.
pub(super) fn spawn_partition<S: Stateful>(
    key: PartitionKey,
    consumer: Arc<BaseConsumer<ConsumerCtx>>,
    core: Arc<Core<S>>,
    runtime: &tokio::runtime::Handle,
) -> PartitionHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let (acked_tx, acked_rx) = watch::channel(0u64);
    let (done_tx, done) = std::sync::mpsc::channel();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let fenced = Arc::new(AtomicBool::new(false));
    let cancel = core.stop.abandon.child_token();
    let labels = [core.name.as_str(), &key.0];
    let worker = Worker {
        core: core.clone(),
        id: PartitionId {
            topic: key.0.clone(),
            partition: key.1,
        },
        acks: ack_tx,
        acked: acked_rx,
        cancel: cancel.clone(),
        fenced: fenced.clone(),
        _done: done_tx.clone(),
        seq: 0,
        timers: Timers::default(),
        changes: Vec::new(),
        pending: 0,
        up_to: None,
        since: None,
        applied: None,
        consumed: core.metrics.consumed.with_label_values(&labels),
        processing: core.metrics.processing.with_label_values(&labels),
    };
    runtime.spawn(worker.run(rx));
    let acker = Acker {
        core,
        key,
        consumer,
        acked: acked_tx,
        in_flight: in_flight.clone(),
        cancel: cancel.clone(),
        stored: -1,
        produced: Default::default(),
    };
    runtime.spawn(acker.run(ack_rx, done_tx));
    PartitionHandle {
        tx,
        in_flight,
        done,
        cancel,
        fenced,
        pause: Pause::Flowing,
    }
}

/// One partition's worker. It owns the partition's state while it runs; see the module docs.
pub(super) struct Worker<S: Stateful> {
    core: Arc<Core<S>>,
    id: PartitionId,
    acks: mpsc::UnboundedSender<AckItem>,
    /// The sequence number of the last record or timer whose deliveries the acker settled.
    acked: watch::Receiver<u64>,
    cancel: CancellationToken,
    fenced: Arc<AtomicBool>,
    /// Dropped when the worker ends: the poll thread's `done` fires only once both the worker
    /// and the acker have ended.
    _done: std::sync::mpsc::Sender<()>,
    /// Sequence number of the last record or timer handed to the acker.
    seq: u64,
    timers: Timers,
    /// Timer changes since the last flush.
    changes: Vec<TimerChange>,
    /// Records handled since the last flush.
    pending: usize,
    /// The highest offset handled since the last flush.
    up_to: Option<i64>,
    /// When the oldest unflushed change was made.
    since: Option<Instant>,
    /// Records at or below this offset are already in the state.
    applied: Option<i64>,
    consumed: prometheus::IntCounter,
    processing: prometheus::Histogram,
}

impl<S: Stateful> Drop for Worker<S> {
    /// The partition's timers leave this member with its worker.
    fn drop(&mut self) {
        self.core.metrics.timers.sub(self.timers.len() as i64);
    }
}

/// What a worker is handling: a record, or a timer that fired.
pub(super) enum Work {
    Record,
    Timer(Timer),
}

impl<S: Stateful> Worker<S> {
    /// The worker's whole life: open, then records and timers until the partition is revoked
    /// (flush and close) or abandoned (drop everything).
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Vec<Record>>) {
        let Some(mut state) = self.open().await else {
            return;
        };
        let halt = self.core.stop.halt.clone();
        let cancel = self.cancel.clone();
        loop {
            if self.flush_due() && !self.flush(&mut state).await {
                return;
            }
            // Due timers go before more records, so a backlog can't hold them back.
            if self.timers.next_at().is_some_and(|at| at <= now_ms())
                && !self.fire_due(&mut state).await
            {
                return;
            }
            let wake = self.next_wake();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = halt.cancelled() => return,
                batch = rx.recv() => match batch {
                    Some(records) => {
                        if !self.batch(&mut state, records).await {
                            return;
                        }
                    }
                    None => {
                        // Revoked or stopping: everything handed over was handled.
                        if self.flush(&mut state).await {
                            let close = self.core.processor.close(&self.id, state);
                            tokio::select! {
                                _ = close => {}
                                _ = cancel.cancelled() => {}
                            }
                        }
                        return;
                    }
                },
                _ = tokio::time::sleep(wake.unwrap_or_default()), if wake.is_some() => {
                    if !self.fire_due(&mut state).await {
                        return;
                    }
                }
            }
        }
    }

    /// Opens the partition's state, retrying transient errors; `None` if it can't be opened
    /// (a fatal error, recorded) or the partition was abandoned meanwhile.
    async fn open(&mut self) -> Option<S::State> {
        // Until this returns, the partition is assigned but not served: readiness and
        // `eip_partitions_opening` say so, however it ends.
        struct Opening<'a>(&'a crate::health::Health, &'a prometheus::IntGauge);
        impl Drop for Opening<'_> {
            fn drop(&mut self) {
                self.0.opening(false);
                self.1.dec();
            }
        }
        self.core.health.opening(true);
        self.core.metrics.opening.inc();
        let core = self.core.clone();
        let _opening = Opening(&core.health, &core.metrics.opening);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let opened = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return None,
                r = contained(&self.core, "open", self.core.processor.open(&self.id)) => r,
            };
            match opened {
                Ok(opened) => {
                    for t in opened.timers {
                        self.timers.apply(&TimerChange::Set(t));
                    }
                    self.applied = opened.applied;
                    self.core.metrics.timers.add(self.timers.len() as i64);
                    return Some(opened.state);
                }
                Err(e) if e.class() == ErrorClass::Transient => {
                    let delay = backoff(&self.core.pipeline.retry, attempts);
                    warn!(topic = %self.id.topic, partition = self.id.partition, error = %e.chain(), "opening the partition's state failed: retrying");
                    if !self.wait(delay).await {
                        return None;
                    }
                }
                Err(e) => {
                    self.core.stop.fatal(format!(
                        "opening {}[{}]: {}",
                        self.id.topic,
                        self.id.partition,
                        e.chain()
                    ));
                    return None;
                }
            }
        }
    }

    /// Sleeps for `delay` unless the partition is abandoned or the process halts first.
    async fn wait(&self, delay: Duration) -> bool {
        wait_or_stop(delay, &self.cancel, Some(&self.core.stop.halt)).await
    }

    fn flush_due(&self) -> bool {
        self.since.is_some_and(|since| {
            self.pending >= self.core.pipeline.flush_records
                || since.elapsed() >= self.core.pipeline.flush_interval
        })
    }

    /// How long until the next timer or the next flush is due.
    fn next_wake(&self) -> Option<Duration> {
        let timer = self
            .timers
            .next_at()
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms()).max(0) as u64));
        let flush = self.since.map(|since| {
            self.core
                .pipeline
                .flush_interval
                .saturating_sub(since.elapsed())
        });
        match (timer, flush) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Handles one poll batch of the partition and hands it to the acker; false when the
    /// worker must stop. One span, one cancellation registration and one metrics update per
    /// batch, unless the batch is cut (see [`Worker::handle_segment`]).
    async fn batch(&mut self, state: &mut S::State, records: Vec<Record>) -> bool {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return true;
        };
        let span = tracing::info_span!(
            "batch",
            topic = %self.id.topic,
            partition = self.id.partition,
            first = first.position.offset,
            last = last.position.offset,
        );
        let n = records.len();
        self.consumed.inc_by(n as u64);
        let started = Instant::now();
        let cancel = self.cancel.clone();
        let mut rest = records;
        let mut go_on = true;
        while go_on && !rest.is_empty() {
            let handled = unless_cancelled(
                &cancel,
                self.handle_segment(state, &mut rest)
                    .instrument(span.clone()),
            )
            .await;
            let Some((sealed, more)) = handled else {
                return false;
            };
            // Handed over even when the worker stops: what it produced is seen through.
            let handed = self.hand_over(sealed);
            go_on = more && handed;
        }
        self.processing
            .observe(started.elapsed().as_secs_f64() / n as f64);
        go_on
    }

    /// Handles records from the front of `rest` in offset order, under one [`Outgoing`] batch
    /// of deliveries, and returns them sealed, with whether to go on. A segment ends early,
    /// so what it handled is acknowledged and committed without waiting: before a record that
    /// is not due yet (a retry topic's), and when the process halts (what was produced is
    /// still seen through). `None` when nothing was handled and the worker must stop.
    async fn handle_segment(
        &mut self,
        state: &mut S::State,
        rest: &mut Vec<Record>,
    ) -> Option<(Sealed, bool)> {
        let core = self.core.clone();
        let outgoing = core.batches.open();
        let mut tally = Tally::default();
        let mut go_on = true;
        let mut index = 0;
        while index < rest.len() {
            if core.stop.halt.is_cancelled() {
                go_on = false;
                break;
            }
            let record = &rest[index];
            let offset = record.position.offset;
            if self.applied.is_some_and(|applied| offset <= applied) {
                // The state already holds this record's effects (flushed before a crash or a
                // handover, not yet committed): acknowledge it without handling it again.
                tally.counted += 1;
                tally.store = Some(offset);
                index += 1;
                continue;
            }
            if let Some(due) = core.processor.not_before(record) {
                let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
                if !wait.is_zero() {
                    if index > 0 {
                        break;
                    }
                    if !self.wait(wait).await {
                        return None;
                    }
                }
            }
            let step = Step {
                core: &core,
                record,
                index,
                outgoing: &outgoing,
                cancel: &self.cancel,
            };
            let Some(changes) = handle(step, state, &Work::Record, &mut tally).await else {
                // Fatal: what came before this record is still seen through and committed.
                go_on = false;
                break;
            };
            self.apply(changes);
            tally.counted += 1;
            if core.processor.stages_writes() {
                self.pending += 1;
                self.up_to = Some(offset);
                self.since.get_or_insert_with(Instant::now);
            } else {
                tally.store = Some(offset);
            }
            index += 1;
        }
        if index == 0 {
            return None;
        }
        let remaining = rest.split_off(index);
        let records = std::mem::replace(rest, remaining);
        let sealed = Sealed {
            batch: outgoing.seal(),
            records,
            tally,
            seq: 0,
        };
        Some((sealed, go_on))
    }

    /// Fires every timer that is due, each as a batch of its own; false when the worker must
    /// stop.
    async fn fire_due(&mut self, state: &mut S::State) -> bool {
        while let Some(timer) = self.timers.pop_due(now_ms()) {
            self.core.metrics.timers.dec();
            self.changes.push(TimerChange::Remove(timer.key.clone()));
            self.since.get_or_insert_with(Instant::now);
            let cancel = self.cancel.clone();
            let handled = unless_cancelled(&cancel, self.handle_timer(state, timer)).await;
            let Some(sealed) = handled else {
                return false;
            };
            if !self.hand_over(sealed) {
                return false;
            }
        }
        true
    }

    async fn handle_timer(&mut self, state: &mut S::State, timer: Timer) -> Option<Sealed> {
        let core = self.core.clone();
        // A timer has no record: its outputs and dead letter are told apart by offset -1, and
        // it has no offset to store.
        let record = Record {
            position: Position {
                topic: self.id.topic.clone(),
                partition: self.id.partition,
                offset: -1,
                timestamp_ms: Some(timer.at_ms),
            },
            key: Some(timer.key.clone()),
            payload: None,
            headers: Headers::new(),
        };
        let outgoing = core.batches.open();
        let mut tally = Tally::default();
        let step = Step {
            core: &core,
            record: &record,
            index: 0,
            outgoing: &outgoing,
            cancel: &self.cancel,
        };
        let changes = handle(step, state, &Work::Timer(timer), &mut tally).await?;
        self.apply(changes);
        Some(Sealed {
            batch: outgoing.seal(),
            records: vec![record],
            tally,
            seq: 0,
        })
    }

    /// Applies a record's or timer's timer changes.
    fn apply(&mut self, changes: Vec<TimerChange>) {
        if changes.is_empty() {
            return;
        }
        for change in &changes {
            let before = self.timers.len();
            self.timers.apply(change);
            self.core
                .metrics
                .timers
                .add(self.timers.len() as i64 - before as i64);
        }
        self.changes.extend(changes);
        self.since.get_or_insert_with(Instant::now);
    }

    /// Hands a sealed batch to the acker, numbered.
    fn hand_over(&mut self, mut sealed: Sealed) -> bool {
        self.seq += 1;
        sealed.seq = self.seq;
        self.acks.send(AckItem::Batch(sealed)).is_ok()
    }

    /// The group commit: waits until every output so far is acknowledged, then has the
    /// processor make its staged writes, the timer changes and the offset durable together,
    /// retrying transient failures; then lets the acker store the offset. False when the
    /// worker must stop (fenced, fatal or abandoned).
    async fn flush(&mut self, state: &mut S::State) -> bool {
        if self.since.is_none() {
            return true;
        }
        if !self.core.processor.stages_writes() {
            self.since = None;
            self.changes.clear();
            return true;
        }
        let target = self.seq;
        let mut acked = self.acked.clone();
        let outputs_acked = tokio::select! {
            r = acked.wait_for(|s| *s >= target) => r.is_ok(),
            _ = self.cancel.cancelled() => false,
        };
        if !outputs_acked {
            return false;
        }
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let flush = Flush {
                partition: &self.id,
                up_to: self.up_to,
                timers: &self.changes,
            };
            let result = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return false,
                r = contained(&self.core, "flush", self.core.processor.flush(state, flush)) => r,
            };
            let outcome = match &result {
                Ok(()) => "durable",
                Err(ProcessError::Fenced { .. }) => "fenced",
                Err(e) if e.class() == ErrorClass::Transient => "retried",
                Err(_) => "failed",
            };
            self.core
                .metrics
                .group_commits
                .with_label_values(&[self.core.name.as_str(), outcome])
                .inc();
            match result {
                Ok(()) => break,
                Err(ProcessError::Fenced { reason }) => {
                    // A claim newer than ours exists while the group still has this member
                    // working on the partition: a former owner's late claim, or our own from
                    // an abandoned open. What this worker handled since its last flush can't
                    // be handled again without rewinding the consumer, so the member stops;
                    // the restart reopens every partition from the store.
                    self.fenced.store(true, Ordering::Release);
                    self.core.stop.fatal(format!(
                        "fenced on {}[{}]: {reason}; restarting reopens it from the store",
                        self.id.topic, self.id.partition
                    ));
                    return false;
                }
                Err(e) if e.class() == ErrorClass::Transient => {
                    let delay = backoff(&self.core.pipeline.retry, attempts);
                    warn!(topic = %self.id.topic, partition = self.id.partition, error = %e.chain(), attempt = attempts, "group commit failed: retrying it");
                    if !self.wait(delay).await {
                        return false;
                    }
                }
                Err(e) => {
                    self.core.stop.fatal(format!(
                        "group commit of {}[{}]: {}",
                        self.id.topic,
                        self.id.partition,
                        e.chain()
                    ));
                    return false;
                }
            }
        }
        self.core
            .metrics
            .group_commit_seconds
            .with_label_values(&[self.core.name.as_str()])
            .observe(started.elapsed().as_secs_f64());
        if let Some(offset) = self.up_to.take()
            && self.acks.send(AckItem::Durable(offset)).is_err()
        {
            return false;
        }
        self.pending = 0;
        self.since = None;
        self.changes.clear();
        true
    }
}

/// Runs `work` unless the partition is abandoned first, in which case `work` is dropped where
/// it stands and the result is `None`. (Polling `work` once before registering with the token,
/// to save that registration, was measured: it made the pass-through 40% slower.)
async fn unless_cancelled<T>(
    cancel: &CancellationToken,
    work: impl Future<Output = Option<T>>,
) -> Option<T> {
    if cancel.is_cancelled() {
        return None;
    }
    tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        r = work => r,
    }
}

/// Runs one stage of a record (`decode`, `process`, `open`, `flush`) and contains a panic in it.
/// A stateless processor has nothing a panic could leave half-changed: its record becomes
/// poison (dead-lettered with the panic's message) and the partition goes on. A stateful
/// processor's state may be half-changed: the panic is fatal, and the partition is reopened
/// from the store after the restart. Either way it is counted in `eip_panics_total` and in
/// `/healthz`.
pub(super) async fn contained<S: Stateful, T>(
    core: &Core<S>,
    stage: &'static str,
    run: impl Future<Output = Result<T, ProcessError>>,
) -> Result<T, ProcessError> {
    match std::panic::AssertUnwindSafe(run).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-text panic payload".into());
            core.metrics
                .panics
                .with_label_values(&[core.name.as_str(), stage])
                .inc();
            core.health.record_panic();
            let reason = format!("{stage} panicked: {message}");
            if core.processor.stages_writes() {
                error!(stage, panic = %message, "the processor panicked: its state may be half-changed, stopping");
                Err(ProcessError::fatal(reason))
            } else {
                error!(stage, panic = %message, "the processor panicked: dead-lettering the record");
                Err(ProcessError::poison(reason))
            }
        }
    }
}
