//! The batch model: a partition's worker hands a whole poll batch's outputs to the producer
//! under one [`Batch`], and the producer's delivery callback settles that batch's counter.
//! Its acker wakes once per batch, not once per output.
//!
//! - A batch is registered in [`Batches`] when the worker starts it. Every output and dead
//!   letter carries a [`Tag`] as its delivery opaque: the batch's slot, the index of the
//!   record it came from, and whether it is a dead letter. The tag is a plain number, so
//!   handing it to librdkafka allocates nothing.
//! - The counter starts at one, the worker's own hold. Each output adds one before it is
//!   sent, and each delivery report takes one off. Sealing takes off the worker's hold. The
//!   batch is finished when the counter reaches zero.
//! - A delivery that failed is copied into the batch: its message, its error and its tag.
//!   The acker then takes the batch through the slow path
//!   ([`super::ack`]): it sends again, redirects or dead-letters, and holds the batch back
//!   until that is done.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use slab::Slab;
use tokio::sync::Notify;
use tracing::warn;

use crate::processor::Headers;

use super::Stop;

const _: () = assert!(
    usize::BITS == 64,
    "a delivery tag packs a slot and a record index"
);

/// What a delivery was for: a batch's slot, a record's index in the batch, and whether it is
/// the record's dead letter rather than one of its outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tag(usize);

impl Tag {
    pub(super) fn new(slot: usize, record: usize, dead_letter: bool) -> Tag {
        Tag((slot << 32) | ((record & 0x7fff_ffff) << 1) | usize::from(dead_letter))
    }

    /// The number librdkafka carries as the delivery's opaque.
    pub(super) fn into_opaque(self) -> usize {
        self.0
    }

    fn slot(self) -> usize {
        self.0 >> 32
    }

    /// The index of the record in its batch.
    pub(super) fn record(self) -> usize {
        (self.0 >> 1) & 0x7fff_ffff
    }

    /// True for a dead letter, false for an output.
    pub(super) fn dead_letter(self) -> bool {
        self.0 & 1 == 1
    }
}

/// One batch's deliveries, shared by the worker that sends them, the producer's delivery
/// callback that settles them, and the acker that waits for them.
#[derive(Debug)]
pub(super) struct Batch {
    pending: AtomicUsize,
    finished: Notify,
    failed: Mutex<Vec<Failed>>,
}

impl Batch {
    /// Waits until every delivery of the batch is reported and the worker sealed it.
    pub(super) async fn finished(&self) {
        while self.pending.load(Ordering::Acquire) > 0 {
            self.finished.notified().await;
        }
    }

    /// The deliveries that failed, in the order they were reported.
    pub(super) fn take_failed(&self) -> Vec<Failed> {
        match self.failed.lock() {
            Ok(mut f) => std::mem::take(&mut *f),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

/// A delivery that failed, copied from the producer's report.
#[derive(Debug)]
pub(super) struct Failed {
    pub(super) tag: Tag,
    pub(super) error: KafkaError,
    pub(super) topic: Arc<str>,
    pub(super) key: Option<Bytes>,
    pub(super) payload: Option<Bytes>,
    pub(super) headers: Headers,
}

/// The batches with deliveries outstanding, by slot.
#[derive(Debug, Default)]
pub(crate) struct Batches {
    table: Mutex<Slab<Arc<Batch>>>,
}

impl Batches {
    /// Registers a new batch, held by the caller until it is sealed.
    pub(super) fn open(self: &Arc<Self>) -> Outgoing {
        let batch = Arc::new(Batch {
            pending: AtomicUsize::new(1),
            finished: Notify::new(),
            failed: Mutex::new(Vec::new()),
        });
        let slot = match self.table.lock() {
            Ok(mut table) => table.insert(batch.clone()),
            Err(poisoned) => poisoned.into_inner().insert(batch.clone()),
        };
        Outgoing {
            batches: self.clone(),
            slot,
            batch,
            sealed: false,
        }
    }

    /// Takes one off the batch in `slot`, recording `failed` first; the last one finishes it.
    fn settle(&self, slot: usize, failed: Option<Failed>) {
        let finished = {
            let mut table = match self.table.lock() {
                Ok(table) => table,
                Err(poisoned) => poisoned.into_inner(),
            };
            let Some(batch) = table.get(slot) else {
                return;
            };
            if let Some(f) = failed {
                match batch.failed.lock() {
                    Ok(mut list) => list.push(f),
                    Err(poisoned) => poisoned.into_inner().push(f),
                }
            }
            if batch.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                Some(table.remove(slot))
            } else {
                None
            }
        };
        if let Some(batch) = finished {
            batch.finished.notify_one();
        }
    }
}

/// The worker's hold on the batch it is sending. Dropping it unsealed (an abandoned partition)
/// releases the hold, so the batch's slot is freed once its deliveries are reported.
pub(super) struct Outgoing {
    batches: Arc<Batches>,
    slot: usize,
    batch: Arc<Batch>,
    sealed: bool,
}

impl Outgoing {
    /// The tag for a delivery of record `record`; call [`Outgoing::expect`] before sending it.
    pub(super) fn tag(&self, record: usize, dead_letter: bool) -> Tag {
        Tag::new(self.slot, record, dead_letter)
    }

    /// Counts one more delivery to wait for.
    pub(super) fn expect(&self) {
        self.batch.pending.fetch_add(1, Ordering::AcqRel);
    }

    /// Takes back a delivery counted by [`Outgoing::expect`] whose send failed (no report will
    /// come for it).
    pub(super) fn unexpect(&self) {
        self.batches.settle(self.slot, None);
    }

    /// Releases the worker's hold: the batch finishes when its last delivery is reported.
    pub(super) fn seal(mut self) -> Arc<Batch> {
        self.sealed = true;
        self.batches.settle(self.slot, None);
        self.batch.clone()
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        if !self.sealed {
            self.batches.settle(self.slot, None);
        }
    }
}

/// The producer's context: it settles batches from delivery reports and turns librdkafka's
/// fatal errors into a fatal stop.
pub(crate) struct ProducerContext {
    pub(crate) stop: Arc<Stop>,
    pub(crate) batches: Arc<Batches>,
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

impl rdkafka::producer::ProducerContext for ProducerContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: usize) {
        let tag = Tag(tag);
        let failed = match result {
            Ok(_) => None,
            Err((error, message)) => Some(Failed {
                tag,
                error: error.clone(),
                topic: message.topic().into(),
                key: message.key().map(Bytes::copy_from_slice),
                payload: message.payload().map(Bytes::copy_from_slice),
                headers: crate::kafka::headers_of(message),
            }),
        };
        self.batches.settle(tag.slot(), failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_keeps_its_slot_record_and_kind_at_the_edges() {
        for (slot, record, dl) in [
            (0, 0, false),
            (1, 1, true),
            (u32::MAX as usize, 0x7fff_ffff, true),
            (12345, 499, false),
        ] {
            let t = Tag::new(slot, record, dl);
            assert_eq!((t.slot(), t.record(), t.dead_letter()), (slot, record, dl));
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
            .block_on(f)
    }

    #[test]
    fn a_batch_finishes_only_when_sealed_and_every_delivery_is_reported() {
        let batches = Arc::new(Batches::default());
        let out = batches.open();
        let tags: Vec<Tag> = (0..3).map(|i| out.tag(i, false)).collect();
        for _ in &tags {
            out.expect();
        }
        // Two reports arrive before the worker seals, one after.
        batches.settle(tags[0].slot(), None);
        batches.settle(tags[1].slot(), None);
        let batch = out.seal();
        assert_eq!(batch.pending.load(Ordering::Acquire), 1);
        let failed = Failed {
            tag: tags[2],
            error: KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
            topic: "t".into(),
            key: None,
            payload: None,
            headers: Headers::new(),
        };
        batches.settle(tags[2].slot(), Some(failed));
        block_on(batch.finished());
        let failed = batch.take_failed();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].tag.record(), 2);
        assert!(
            batches.table.lock().map(|t| t.is_empty()).unwrap_or(false),
            "the slot is freed"
        );
    }

    #[test]
    fn an_abandoned_batch_frees_its_slot_once_its_deliveries_are_reported() {
        let batches = Arc::new(Batches::default());
        let out = batches.open();
        let tag = out.tag(0, true);
        out.expect();
        drop(out);
        assert_eq!(batches.table.lock().map(|t| t.len()).unwrap_or(0), 1);
        batches.settle(tag.slot(), None);
        assert_eq!(batches.table.lock().map(|t| t.len()).unwrap_or(1), 0);
    }
}
