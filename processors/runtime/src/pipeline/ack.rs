//! A partition's acker: it takes the worker's sealed batches in order and, for each, waits
//! until every delivery is reported, takes failures through the slow path, counts, releases
//! the batch's share of the in-flight budget and stores its offset: after the acknowledgement
//! for a stateless processor, after the group commit for a stateful one.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::processor::Record;
use crate::stateful::Stateful;

use super::batch::{Batch, Failed};
use super::dead_letter::count_dead_letter;
use super::deliver::*;
use super::*;

/// A batch the worker finished handling, handed to the acker in order.
pub(super) struct Sealed {
    /// Its deliveries.
    pub(super) batch: Arc<Batch>,
    /// Its records (one made-up record for a timer), for the slow path.
    pub(super) records: Vec<Record>,
    pub(super) tally: Tally,
    /// The worker's sequence number for it; the acker reports the last one it settled, so a
    /// group commit can wait until every output before it is acknowledged.
    pub(super) seq: u64,
}

/// What a batch handed to the producer and what it owes the budget and the offsets.
#[derive(Default)]
pub(super) struct Tally {
    /// Outputs handed to the producer, by topic.
    pub(super) outputs: Vec<(Arc<str>, u64)>,
    /// Dead letters handed to the producer, by the index of their record.
    pub(super) dead_letters: Vec<(usize, DeadLetterInfo)>,
    /// Records counted against the in-flight budget.
    pub(super) counted: usize,
    /// The offset to store once the batch is acknowledged (stateless processors, and records
    /// the state already held); a stateful processor's records wait for the group commit.
    pub(super) store: Option<i64>,
}

impl Tally {
    /// Counts an output handed to the producer.
    pub(super) fn output(&mut self, topic: Arc<str>) {
        match self.outputs.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, n)) => *n += 1,
            None => self.outputs.push((topic, 1)),
        }
    }

    /// Takes back an output that failed (the slow path counts where it ends).
    fn output_failed(&mut self, topic: &str) {
        if let Some((_, n)) = self.outputs.iter_mut().find(|(t, _)| &**t == topic) {
            *n = n.saturating_sub(1);
        }
    }

    /// Takes out the dead letter of record `index`, which failed.
    fn dead_letter_failed(&mut self, index: usize) -> Option<DeadLetterInfo> {
        let at = self.dead_letters.iter().position(|(i, _)| *i == index)?;
        Some(self.dead_letters.swap_remove(at).1)
    }
}

/// What a worker hands its acker, in order.
pub(super) enum AckItem {
    /// A batch of records, or a timer, handled.
    Batch(Sealed),
    /// A group commit made everything up to this offset durable.
    Durable(i64),
}

/// One partition's acker; see the module docs.
pub(super) struct Acker<S: Stateful> {
    pub(super) core: Arc<Core<S>>,
    pub(super) key: PartitionKey,
    pub(super) consumer: Arc<BaseConsumer<ConsumerCtx>>,
    /// The sequence number of the last batch settled, for group commits.
    pub(super) acked: watch::Sender<u64>,
    /// The partition's share of the in-flight budget.
    pub(super) in_flight: Arc<AtomicUsize>,
    pub(super) cancel: CancellationToken,
    /// The highest offset stored: a stored offset never goes back (a record the state already
    /// held, acknowledged before a group commit stored a later one, must not undo it).
    pub(super) stored: i64,
    pub(super) produced: HashMap<Arc<str>, prometheus::IntCounter>,
}

impl<S: Stateful> Acker<S> {
    /// Settles batches until the worker is gone and everything it sent is settled, or the
    /// partition is abandoned; dropping `done` then tells the poll thread.
    pub(super) async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<AckItem>,
        done: std::sync::mpsc::Sender<()>,
    ) {
        while let Some(item) = rx.recv().await {
            let go_on = match item {
                AckItem::Batch(sealed) => self.settle(sealed).await,
                AckItem::Durable(offset) => self.store(offset),
            };
            if !go_on {
                break;
            }
        }
        drop(done);
    }

    /// One batch, step by step; false when the partition must stop.
    async fn settle(&mut self, mut sealed: Sealed) -> bool {
        if !self.delivered(&sealed.batch).await {
            return false;
        }
        let failed = sealed.batch.take_failed();
        if !failed.is_empty() && !self.slow_path(&mut sealed, failed).await {
            return false;
        }
        self.count(&sealed.tally);
        if self.core.processor.stages_writes() {
            self.acked.send_replace(sealed.seq);
        }
        // After a drain timeout the poll thread already took this partition's records off
        // the global count: only what is still counted here comes off.
        self.core
            .in_flight
            .sub(take(&self.in_flight, sealed.tally.counted));
        match sealed.tally.store {
            Some(offset) => self.store(offset),
            None => true,
        }
    }

    /// Waits until every delivery of the batch is reported; false if the partition is
    /// abandoned first.
    async fn delivered(&self, batch: &Batch) -> bool {
        tokio::select! {
            _ = batch.finished() => true,
            _ = self.cancel.cancelled() => false,
        }
    }

    /// The slow path, in record order: a failed output is sent again or redirected until it
    /// is delivered; one the broker refuses for good makes its input poison (stateless) or
    /// stops the processor (stateful); a failed dead letter is seen through. The batch is
    /// held back until all of it is done.
    async fn slow_path(&mut self, sealed: &mut Sealed, mut failed: Vec<Failed>) -> bool {
        failed.sort_by_key(|f| f.tag.record());
        // A record the worker dead-lettered already (an output refused at send time, after
        // earlier ones were sent) is not dead-lettered again for those earlier outputs.
        let mut poisoned: Vec<usize> = sealed.tally.dead_letters.iter().map(|(i, _)| *i).collect();
        for f in failed {
            let index = f.tag.record();
            let Some(source) = sealed.records.get(index) else {
                self.core.stop.fatal(format!(
                    "a delivery report names record {index} of a batch of {}",
                    sealed.records.len()
                ));
                return false;
            };
            if f.tag.dead_letter() {
                let Some(info) = sealed.tally.dead_letter_failed(index) else {
                    self.core.stop.fatal(format!(
                        "a dead letter of {}[{}] failed and its reason is not known",
                        self.key.0, self.key.1
                    ));
                    return false;
                };
                if !settle_dead_letter(&self.core, &self.key, source, info, f, &self.cancel).await {
                    return false;
                }
                continue;
            }
            sealed.tally.output_failed(&f.topic);
            match settle_failed(&self.core, source, f, true, &self.cancel).await {
                Settled::Delivered(topic) => self.count_produced(&topic, 1),
                Settled::Stop => return false,
                Settled::Unproducible(topic, e) => {
                    if !self
                        .refused_for_good(source, index, &topic, &e, &mut poisoned)
                        .await
                    {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// An output the broker refused for good.
    async fn refused_for_good(
        &self,
        source: &Record,
        index: usize,
        topic: &str,
        e: &rdkafka::error::KafkaError,
        poisoned: &mut Vec<usize>,
    ) -> bool {
        let offset = source.position.offset;
        if self.core.processor.stages_writes() {
            // A stateful processor already changed its state for this record (and may have
            // decided later records on top of it): dead-lettering the input would keep a
            // state change whose output never exists. Stop instead; nothing of this batch is
            // made durable (the group commit waits for this batch's acknowledgement, which
            // never comes), and the record is decided again after the restart. A processor
            // refuses what it can't publish before it changes its state (eip-orders:
            // `too_large`), so this is for the unforeseen.
            self.core.stop.fatal(format!(
                "an output of {}[{}] offset {offset} to {topic} was refused for good ({e}); \
                 its state change is not kept. If the record is too large, raise {topic}'s \
                 max.message.bytes (and keep the producer's batch.size at or below it)",
                self.key.0, self.key.1
            ));
            return false;
        }
        // The input is poison, dead-lettered once however many of its outputs were refused.
        if poisoned.contains(&index) {
            return true;
        }
        poisoned.push(index);
        let reason = format!("delivery to {topic} failed: {e}");
        dead_letter_now(&self.core, &self.key, source, &reason, &self.cancel).await
    }

    /// Counts a settled batch's outputs and dead letters.
    fn count(&mut self, tally: &Tally) {
        for (topic, n) in &tally.outputs {
            self.count_produced(topic, *n);
        }
        for (_, info) in &tally.dead_letters {
            count_dead_letter(&self.core, &self.key.0, info.class);
        }
    }

    fn count_produced(&mut self, topic: &Arc<str>, n: u64) {
        if n == 0 {
            return;
        }
        let core = &self.core;
        self.produced
            .entry(topic.clone())
            .or_insert_with(|| {
                core.metrics
                    .produced
                    .with_label_values(&[core.name.as_str(), topic])
            })
            .inc_by(n);
    }

    /// Stores `offset` unless a later one is stored already; false if the partition is
    /// abandoned.
    fn store(&mut self, offset: i64) -> bool {
        if self.cancel.is_cancelled() {
            return false;
        }
        if offset > self.stored {
            store_offset(&self.consumer, &self.key, offset);
            self.stored = offset;
        }
        true
    }
}

/// Marks everything up to and including `offset` as done; librdkafka commits `offset + 1`.
pub(super) fn store_offset(consumer: &BaseConsumer<ConsumerCtx>, key: &PartitionKey, offset: i64) {
    if let Err(e) = consumer.store_offset(&key.0, key.1, offset) {
        // The partition was revoked meanwhile; its new owner re-reads from the last commit.
        debug!(topic = %key.0, partition = key.1, offset, error = %e, "offset not stored");
    }
}
