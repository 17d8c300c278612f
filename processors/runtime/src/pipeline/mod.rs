//! The message loop: consume -> decode -> process -> produce -> commit, one batch at a time.
//!
//! ```text
//!  poll thread (owns the consumer)           one pair of tasks per assigned partition
//!  ─────────────────────────────             ──────────────────────────────────────────
//!  poll ─► batch by partition ─► channel ─► worker: per batch: decode, process, encode,
//!    ▲        │ in-flight ≥ max: pause        send each output tagged with the batch ─┐
//!    │        ▼                               (transient: retry in place;             │
//!  rebalance callbacks: drain revoked          poison: send to DLQ), seal the batch   │
//!  partitions, then commit synchronously                                              ▼
//!                          producer's delivery callback ─► settles the batch's counter
//!                          acker: per batch, in order: wait for the counter, slow path
//!                          for failures, count, release the budget, store the offset
//! ```
//!
//! One module per role: [`poll`] (the poll thread, batching, the in-flight budget, pausing,
//! rebalance callbacks), [`worker`] (a partition's worker: its batches, timers and group
//! commits), [`record`] (one record's steps: decode, process, encode, hand to the producer),
//! [`batch`] (a batch's deliveries and the producer's delivery callback),
//! [`ack`] (the acker, which settles batches in order and stores offsets), [`deliver`]
//! (sending, and the slow path that sends again, redirects or dead-letters) and
//! [`dead_letter`].
//!
//! - Records of one partition are processed in offset order by one worker; partitions run
//!   concurrently.
//! - The worker hands a poll batch's outputs to the idempotent producer without awaiting them,
//!   each tagged with the batch; the delivery callback counts the batch down, and the acker
//!   wakes once per batch, in batch order, and only then stores the batch's last offset.
//!   librdkafka commits stored offsets periodically, on revoke and at shutdown. So nothing is
//!   committed before everything it caused is acknowledged. A failed delivery holds its
//!   batch, and every later one, back until the slow path has seen it through.
//! - At most `max_in_flight` records are held between consume and commit by the partitions
//!   that are not held back. When the budget stays full, the partitions holding their share
//!   of it (slow or stuck ones) are held back (paused) so the others go on. The poll loop keeps
//!   polling throughout, so rebalances, statistics and `max.poll.interval.ms` are served (see
//!   [`poll::poll_loop`]).
//! - Stateful processors ([`crate::stateful`]) get their state opened when a partition is
//!   assigned and handed back when it is revoked; their offsets wait for group commits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use eip_schemas::{Codec, ErrorClass};
use rdkafka::producer::ThreadedProducer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::config::{PipelineConfig, RetryConfig};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::processor::{Headers, Record};
use crate::stateful::Stateful;

mod ack;
mod batch;
mod dead_letter;
mod deliver;
mod poll;
mod record;
mod worker;

pub(crate) use batch::{Batches, ProducerContext};
pub(crate) use poll::{ConsumerCtx, PollState, poll_thread};

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
    pub(super) fatal: Mutex<Option<String>>,
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
pub(crate) struct Core<S: Stateful> {
    pub(crate) processor: S,
    pub(crate) name: String,
    pub(crate) codec: Codec,
    pub(crate) producer: ThreadedProducer<ProducerContext>,
    /// The batches with deliveries outstanding, which the producer's context settles.
    pub(crate) batches: Arc<Batches>,
    pub(crate) metrics: Metrics,
    pub(crate) stop: Arc<Stop>,
    pub(crate) pipeline: PipelineConfig,
    pub(crate) in_flight: Arc<InFlight>,
    /// Liveness and readiness, where contained panics are counted.
    pub(crate) health: Arc<Health>,
}

pub(super) type PartitionKey = (Arc<str>, i32);

/// Records consumed but not yet committed, across all partitions: the backpressure budget.
pub(crate) struct InFlight {
    pub(super) total: AtomicUsize,
    pub(super) gauge: prometheus::IntGauge,
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

    /// Subtracts `n`, never below zero: a count that wrapped would read as a full budget
    /// forever and stop the poll loop.
    fn sub(&self, n: usize) {
        let taken = take(&self.total, n);
        self.gauge.sub(taken as i64);
    }

    fn get(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// Takes up to `n` from `count` and returns how much it took. A partition's count is shared by
/// its acker (one per acknowledged record) and the poll thread (everything left, when it
/// releases the partition after a drain timeout): whichever comes second finds the records
/// already taken, so the global count is never subtracted twice.
pub(super) fn take(count: &AtomicUsize, n: usize) -> usize {
    let mut taken = 0;
    let _ = count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
        taken = n.min(current);
        Some(current - taken)
    });
    taken
}

/// What a dead letter says, kept until the broker acknowledges it, so that a refused one can
/// be sent again in a form that fits.
pub(super) struct DeadLetterInfo {
    pub(super) class: ErrorClass,
    pub(super) reason: String,
    pub(super) attempts: u32,
    pub(super) first_failure: time::OffsetDateTime,
    /// Already sent without its payload and original headers.
    pub(super) reduced: bool,
}

impl DeadLetterInfo {
    pub(super) fn failure<'a>(&'a self, processor: &'a str) -> crate::dlq::Failure<'a> {
        crate::dlq::Failure {
            class: self.class,
            reason: &self.reason,
            processor,
            attempts: self.attempts,
            first_failure: self.first_failure,
        }
    }
}

/// An encoded record, ready for the producer.
pub(super) struct Encoded {
    pub(super) topic: Arc<str>,
    pub(super) key: Option<Bytes>,
    pub(super) payload: Option<Bytes>,
    pub(super) headers: Headers,
}

/// Sleeps for `delay` unless `cancel` fires first, or `halt` when given (a fatal error
/// elsewhere); true when the whole delay passed. Every backoff, retry and due-time wait of the
/// pipeline goes through it, so none outlives an abandoned partition.
pub(super) async fn wait_or_stop(
    delay: Duration,
    cancel: &CancellationToken,
    halt: Option<&CancellationToken>,
) -> bool {
    let halted = async {
        match halt {
            Some(h) => h.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = cancel.cancelled() => false,
        _ = halted => false,
    }
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

/// Whether a partition is being fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pause {
    /// Fetched and dispatched.
    Flowing,
    /// Paused while the budget stays full; resumed when it is back to half.
    Budget,
    /// Paused because it holds four times its share of the budget; it still counts against the
    /// budget. Resumed once it has drained to half its share.
    Capped,
    /// Held back: it held its share of the budget while the budget stayed full (a slow or
    /// stuck partition). Paused, and what it holds stops counting against the others' budget,
    /// until it has drained to half its share.
    Full,
}

/// The poll thread's handle on one partition's tasks.
pub(super) struct PartitionHandle {
    pub(super) tx: mpsc::UnboundedSender<Vec<Record>>,
    pub(super) in_flight: Arc<AtomicUsize>,
    pub(super) done: std::sync::mpsc::Receiver<()>,
    pub(super) cancel: CancellationToken,
    /// Set by the worker when the store refused its group commit because a newer owner
    /// claimed the partition: its records are dropped, uncommitted, until the revoke.
    pub(super) fenced: Arc<std::sync::atomic::AtomicBool>,
    pub(super) pause: Pause,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_released_partition_when_its_acker_finishes_late_then_the_budget_is_not_subtracted_twice()
     {
        let gauge = prometheus::IntGauge::new("t", "t").unwrap_or_else(|e| panic!("{e}"));
        let global = InFlight::new(gauge.clone());
        let partition = AtomicUsize::new(0);
        // The poll thread hands 3 records to a partition, and 2 to another.
        global.add(5);
        partition.fetch_add(3, Ordering::AcqRel);
        // The drain timed out: the poll thread takes what the partition still holds.
        global.sub(take(&partition, usize::MAX));
        assert_eq!(global.get(), 2);
        // The uncancellable process returns and the acker acknowledges one more record.
        global.sub(take(&partition, 1));
        assert_eq!(global.get(), 2, "nothing subtracted twice, nothing wrapped");
        assert_eq!(gauge.get(), 2);
        // Even a subtraction past zero stops at zero.
        global.sub(10);
        assert_eq!(global.get(), 0);
        assert_eq!(gauge.get(), 0);
    }
}
