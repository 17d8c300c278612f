//! Stateful processors: per-partition state with `&mut` access, group-committed store writes,
//! durable timers, and fencing. The stateless [`Processor`] is the case with no state
//! ([`Stateless`]); both run on the same partition worker.
//!
//! The contract, in the order the runtime follows it for one partition:
//! 1. **Open.** When the partition is assigned, its worker calls [`Stateful::open`] before the
//!    first record. It returns the state, the timers still pending, and the highest input
//!    offset the state already holds (`applied`). Records at or below `applied` are skipped,
//!    so a crash between a group commit and the offset commit applies nothing twice.
//! 2. **Records and timers**, one at a time, with `&mut` state: [`Stateful::process`] and
//!    [`Stateful::on_timer`]. Each may emit outputs and schedule or cancel timers through
//!    [`Effects`], and may stage store writes in its state. On an error it must leave the
//!    state as it found it: the runtime retries transient errors with the same state.
//! 3. **Group commit.** Every `pipeline.flush_records` records or `pipeline.flush_interval`,
//!    and before the partition is handed back, the runtime first waits until every output
//!    emitted so far is acknowledged, then calls [`Stateful::flush`] with the timer changes
//!    and the highest input offset covered. The processor writes its staged rows, the timer
//!    changes and that offset in one transaction. Only then are those records' offsets stored
//!    for commit. A transient failure retries the same flush, so a transactional flush
//!    applies nothing twice.
//! 4. **Hand back.** On revoke or shutdown the worker finishes what it was given, flushes, and
//!    passes the state to [`Stateful::close`]. If the drain times out, or the assignment is
//!    lost, the worker's futures are dropped instead: it produces and writes nothing more,
//!    and what it had not flushed is redone by the next owner.
//! 5. **Fencing.** A former owner that was frozen past all of that (a GC pause, a stopped
//!    process) may still finish a flush it had started. [`Stateful::open`] should claim the
//!    partition in the store by raising an epoch, and every flush should write only while the
//!    store's epoch is still its own, failing with [`ProcessError::Fenced`] otherwise. The
//!    runtime then drops the partition's worker without committing. `docs/stateful.md` has
//!    the whole argument.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use eip_schemas::Codec;

use crate::processor::{
    DeliveryFailure, Envelope, Output, ProcessError, Processor, Record, Redirect,
};

/// One assigned input partition, as a stateful processor sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartitionId {
    /// Input topic.
    pub topic: Arc<str>,
    /// Partition number.
    pub partition: i32,
}

/// A wake-up for a key at a time, in milliseconds since the Unix epoch (wall-clock time, so it
/// means the same after a restart on another machine).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Timer {
    /// The key the timer is for; one timer per key and partition.
    pub key: Bytes,
    /// When it fires.
    pub at_ms: i64,
}

/// A change to a partition's timers, handed to [`Stateful::flush`] to be made durable with
/// the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerChange {
    /// Set (or move) the timer for a key.
    Set(Timer),
    /// Remove the timer for a key (cancelled, or fired).
    Remove(Bytes),
}

/// What a record or timer handler asks for besides changing its state: outputs to produce and
/// timers to set or cancel.
#[derive(Debug, Default)]
pub struct Effects {
    pub(crate) outputs: Vec<Output>,
    pub(crate) timers: Vec<TimerChange>,
    pub(crate) now_ms: i64,
}

impl Effects {
    /// Empty effects at `now_ms`.
    pub fn at(now_ms: i64) -> Effects {
        Effects {
            outputs: Vec::new(),
            timers: Vec::new(),
            now_ms,
        }
    }

    /// Produces `output` once the handler returns `Ok`.
    pub fn emit(&mut self, output: Output) {
        self.outputs.push(output);
    }

    /// Sets the timer for `key` to fire at `at_ms`, replacing one already set for the key.
    pub fn schedule(&mut self, key: impl Into<Bytes>, at_ms: i64) {
        self.timers.push(TimerChange::Set(Timer {
            key: key.into(),
            at_ms,
        }));
    }

    /// Cancels the timer for `key`, if any.
    pub fn cancel(&mut self, key: impl Into<Bytes>) {
        self.timers.push(TimerChange::Remove(key.into()));
    }

    /// The time the handler runs at, in milliseconds since the Unix epoch: the wall clock in
    /// the pipeline, the kit's clock in tests. Use it rather than reading the clock.
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// The outputs emitted so far.
    pub fn outputs(&self) -> &[Output] {
        &self.outputs
    }

    /// The timer changes asked for so far.
    pub fn timer_changes(&self) -> &[TimerChange] {
        &self.timers
    }
}

/// A partition's state as [`Stateful::open`] found it.
#[derive(Debug)]
pub struct Opened<S> {
    /// The state.
    pub state: S,
    /// Timers still pending for the partition.
    pub timers: Vec<Timer>,
    /// The highest input offset whose effects `state` already holds; the runtime skips
    /// records at or below it.
    pub applied: Option<i64>,
}

impl<S> Opened<S> {
    /// A partition with no history: `state`, no timers, nothing applied.
    pub fn fresh(state: S) -> Opened<S> {
        Opened {
            state,
            timers: Vec::new(),
            applied: None,
        }
    }
}

/// What one group commit covers.
#[derive(Debug)]
pub struct Flush<'a> {
    /// The partition.
    pub partition: &'a PartitionId,
    /// The highest input offset handled since the previous flush, if any record was; store it
    /// with the writes, and return it as [`Opened::applied`].
    pub up_to: Option<i64>,
    /// Timer changes since the previous flush, in order.
    pub timers: &'a [TimerChange],
}

/// The domain logic of a stateful processor. See the [module docs](self) for the contract.
pub trait Stateful: Send + Sync + 'static {
    /// The decoded input type.
    type Input: Send + 'static;
    /// One partition's state.
    type State: Send + 'static;

    /// Short name, used as the `processor` metric label and in DLQ headers.
    fn name(&self) -> &str;

    /// Topics this processor produces to, checked (or created) at startup.
    fn output_topics(&self) -> Vec<String> {
        Vec::new()
    }

    /// Partitions for `topic` when the runtime creates it; `None` for the default.
    fn partitions_for(&self, topic: &str) -> Option<i32> {
        let _ = topic;
        None
    }

    /// What `topic` (an input or an output) is for, which sets how long the broker keeps it
    /// when the runtime creates it. The default is
    /// [`History`](crate::topics::TopicRole::History), the safe choice (kept forever), so a
    /// topic the project creates never loses records by default. Dead-letter topics are
    /// always [`TopicRole::DeadLetters`](crate::topics::TopicRole::DeadLetters).
    fn topic_role(&self, topic: &str) -> crate::topics::TopicRole {
        let _ = topic;
        crate::topics::TopicRole::History
    }

    /// Topics this processor may replay from offset 0 (a lost store rebuilt from them, a new
    /// view filled from them). At startup the runtime refuses to go on when one of them can't
    /// be replayed whole (finite retention, compaction, deleted records), unless
    /// `pipeline.accept_truncated_history` names it.
    fn history_topics(&self) -> Vec<String> {
        Vec::new()
    }

    /// True when `flush` makes staged writes durable, so offsets wait for it; false for a
    /// processor whose only effects are its outputs (offsets then follow acknowledgements).
    fn stages_writes(&self) -> bool {
        true
    }

    /// Decodes a raw record into the input type.
    fn decode(
        &self,
        codec: &Codec,
        record: &Record,
    ) -> impl Future<Output = Result<Self::Input, ProcessError>> + Send;

    /// When the record may be handled, if not at once. The partition's worker waits until then
    /// (and stays cancellable while it waits); a topic used as a delay queue, such as the
    /// router's retry topics, is read this way instead of sleeping inside `process`.
    fn not_before(&self, record: &Record) -> Option<SystemTime> {
        let _ = record;
        None
    }

    /// Loads a partition's state when it is assigned, before its first record. Claim the
    /// partition here (raise its epoch) so a former owner's late writes are refused.
    fn open(
        &self,
        partition: &PartitionId,
    ) -> impl Future<Output = Result<Opened<Self::State>, ProcessError>> + Send;

    /// Handles one record with the partition's state.
    fn process(
        &self,
        state: &mut Self::State,
        input: Envelope<Self::Input>,
        effects: &mut Effects,
    ) -> impl Future<Output = Result<(), ProcessError>> + Send;

    /// Handles a timer that fired; it was removed before this call.
    fn on_timer(
        &self,
        state: &mut Self::State,
        timer: Timer,
        effects: &mut Effects,
    ) -> impl Future<Output = Result<(), ProcessError>> + Send {
        let _ = (state, timer, effects);
        async { Ok(()) }
    }

    /// Makes what was staged since the last flush durable, with `flush.timers` and
    /// `flush.up_to`, all or nothing.
    fn flush(
        &self,
        state: &mut Self::State,
        flush: Flush<'_>,
    ) -> impl Future<Output = Result<(), ProcessError>> + Send;

    /// Receives the state after the partition's last flush, when it is revoked or the process
    /// stops. (An abandoned partition's state is dropped without this call.)
    fn close(
        &self,
        partition: &PartitionId,
        state: Self::State,
    ) -> impl Future<Output = ()> + Send {
        let _ = (partition, state);
        async {}
    }

    /// Decides what happens when an output could not be delivered; see
    /// [`Processor::on_delivery_failure`].
    fn on_delivery_failure(&self, failure: &DeliveryFailure<'_>) -> Redirect {
        let _ = failure;
        Redirect::Again
    }
}

/// A stateless [`Processor`] run as the stateful case with no state and nothing to flush.
#[derive(Debug)]
pub struct Stateless<P>(pub P);

impl<P: Processor> Stateful for Stateless<P> {
    type Input = P::Input;
    type State = ();

    fn name(&self) -> &str {
        self.0.name()
    }

    fn output_topics(&self) -> Vec<String> {
        self.0.output_topics()
    }

    fn partitions_for(&self, topic: &str) -> Option<i32> {
        self.0.partitions_for(topic)
    }

    fn topic_role(&self, topic: &str) -> crate::topics::TopicRole {
        self.0.topic_role(topic)
    }

    fn stages_writes(&self) -> bool {
        false
    }

    fn decode(
        &self,
        codec: &Codec,
        record: &Record,
    ) -> impl Future<Output = Result<Self::Input, ProcessError>> + Send {
        self.0.decode(codec, record)
    }

    fn not_before(&self, record: &Record) -> Option<SystemTime> {
        self.0.not_before(record)
    }

    async fn open(&self, _: &PartitionId) -> Result<Opened<()>, ProcessError> {
        Ok(Opened::fresh(()))
    }

    async fn process(
        &self,
        _: &mut (),
        input: Envelope<Self::Input>,
        effects: &mut Effects,
    ) -> Result<(), ProcessError> {
        let outputs = self.0.process(input).await?;
        if effects.outputs.is_empty() {
            effects.outputs = outputs;
        } else {
            effects.outputs.extend(outputs);
        }
        Ok(())
    }

    async fn flush(&self, _: &mut (), _: Flush<'_>) -> Result<(), ProcessError> {
        Ok(())
    }

    fn on_delivery_failure(&self, failure: &DeliveryFailure<'_>) -> Redirect {
        self.0.on_delivery_failure(failure)
    }
}

/// A partition's pending timers, ordered by due time, one per key.
#[derive(Default)]
pub(crate) struct Timers {
    due: BTreeSet<(i64, Bytes)>,
    by_key: HashMap<Bytes, i64>,
}

impl Timers {
    pub(crate) fn apply(&mut self, change: &TimerChange) {
        match change {
            TimerChange::Set(t) => {
                if let Some(old) = self.by_key.insert(t.key.clone(), t.at_ms) {
                    self.due.remove(&(old, t.key.clone()));
                }
                self.due.insert((t.at_ms, t.key.clone()));
            }
            TimerChange::Remove(key) => {
                if let Some(old) = self.by_key.remove(key) {
                    self.due.remove(&(old, key.clone()));
                }
            }
        }
    }

    /// When the next timer is due.
    pub(crate) fn next_at(&self) -> Option<i64> {
        self.due.first().map(|(at, _)| *at)
    }

    /// Removes and returns the earliest timer due at `now_ms`, if any.
    pub(crate) fn pop_due(&mut self, now_ms: i64) -> Option<Timer> {
        let (at, _) = self.due.first()?;
        if *at > now_ms {
            return None;
        }
        let (at_ms, key) = self.due.pop_first()?;
        self.by_key.remove(&key);
        Some(Timer { key, at_ms })
    }

    pub(crate) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Every pending timer, earliest first.
    pub(crate) fn all(&self) -> Vec<Timer> {
        self.due
            .iter()
            .map(|(at_ms, key)| Timer {
                key: key.clone(),
                at_ms: *at_ms,
            })
            .collect()
    }
}

/// Milliseconds since the Unix epoch for `t` (0 before it).
pub fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The wall clock in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    millis(SystemTime::now())
}
