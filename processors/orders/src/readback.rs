//! The read-back: what a previous owner published to an events partition but did not live to
//! record in the journal.
//!
//! An event is published (and acknowledged) before the group commit that journals it. A
//! process killed between the two has published events its journal lacks; the next owner
//! reads the events partition from where the last group commit said publication stood, and
//! adopts what it finds: the events go into the journal and their commands count as decided.
//! It reads a chunk at a time and journals each chunk with how far it got, so memory stays
//! bounded, a tail of any length is read, and a retried open goes on from there. So no
//! version is published twice. A command redelivered in the very record that caused an
//! adopted event gets its original outcome (the killed owner may not have sent it); any other
//! record with a decided command id is a duplicate.
//!
//! This works because an order's commands and events live on partitions with the same number:
//! both topics are keyed by order id with the same partitioner and partition count (checked
//! at open), and only the owner of command partition p publishes to events partition p.

use std::time::{Duration, Instant};

use eip_runtime::ProcessError;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// How long the read-back may go without a record before the open fails (and is retried):
/// it times out on lack of progress, never on the length of the tail.
const STALLED: Duration = Duration::from_secs(30);
const META: Duration = Duration::from_secs(10);

fn transient(what: &str, e: rdkafka::error::KafkaError) -> ProcessError {
    ProcessError::Transient {
        reason: what.to_string(),
        source: Some(std::sync::Arc::new(e)),
    }
}

/// One record read back.
#[derive(Debug)]
pub struct ReadBack {
    /// Its value.
    pub payload: Option<Vec<u8>>,
    /// The header asked for, as a number.
    pub header: Option<i64>,
}

/// A blocking client for the read-back and for publication watermarks.
pub struct Reader {
    consumer: BaseConsumer,
}

impl Reader {
    /// A consumer that reads by assignment (no group membership, no commits).
    pub fn new(mut config: ClientConfig) -> Result<Reader, rdkafka::error::KafkaError> {
        config
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("isolation.level", "read_committed");
        Ok(Reader {
            consumer: config.create()?,
        })
    }

    /// The partition count of `topic`.
    pub fn partitions(&self, topic: &str) -> Result<usize, ProcessError> {
        let md = self
            .consumer
            .fetch_metadata(Some(topic), META)
            .map_err(|e| transient("reading topic metadata", e))?;
        Ok(md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len()))
    }

    /// The next offset to be written to `topic[partition]`.
    pub fn end(&self, topic: &str, partition: i32) -> Result<i64, ProcessError> {
        self.consumer
            .fetch_watermarks(topic, partition, META)
            .map(|(_, high)| high)
            .map_err(|e| transient("reading a high watermark", e))
    }

    /// Up to `max` records of `topic[partition]` from `from` (its start when None), stopping
    /// at `until` (the end when it was first asked, when None): as (payload, the value of
    /// header `header` as a number), with the offset to read from next and the end aimed at.
    /// Fails (transient) only when no record comes for [`STALLED`]; fatal when records the
    /// journal needs were deleted.
    pub fn read_chunk(
        &self,
        topic: &str,
        partition: i32,
        from: Option<i64>,
        until: Option<i64>,
        max: usize,
        header: &str,
    ) -> Result<(Vec<ReadBack>, i64, i64), ProcessError> {
        let (low, high) = self
            .consumer
            .fetch_watermarks(topic, partition, META)
            .map_err(|e| transient("reading watermarks", e))?;
        let end = until.unwrap_or(high).min(high);
        // Records the journal never saw were deleted (retention, DeleteRecords): adopting what
        // is left would skip versions, and an order whose events are all gone would be
        // accepted again at version 1. Nothing can be decided safely on this partition.
        let start = from.unwrap_or(0);
        if start < low {
            return Err(ProcessError::fatal(format!(
                "{topic}[{partition}] starts at offset {low}, but the journal needs it from \
                 offset {start} ({}): the events in between were deleted before they were \
                 journaled, so orders whose history they hold can't be rebuilt. Restore the \
                 journal, or the topic's records, before starting again",
                if from.is_none() {
                    "it has no record of this partition"
                } else {
                    "where publication stood at its last group commit"
                }
            )));
        }
        if start >= end {
            return Ok((Vec::new(), start, end));
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(start))
            .map_err(|e| transient("assigning the read-back", e))?;
        self.consumer
            .assign(&tpl)
            .map_err(|e| transient("assigning the read-back", e))?;
        let mut last_progress = Instant::now();
        let mut payloads = Vec::new();
        let mut next = start;
        while next < end && payloads.len() < max {
            if last_progress.elapsed() > STALLED {
                let _ = self.consumer.unassign();
                return Err(ProcessError::transient(format!(
                    "read-back of {topic}[{partition}] made no progress for {STALLED:?} at \
                     offset {next} of {end}"
                )));
            }
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    last_progress = Instant::now();
                    next = m.offset() + 1;
                    let number = m.headers().and_then(|hs| {
                        hs.iter()
                            .find(|h| h.key == header)
                            .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
                    });
                    payloads.push(ReadBack {
                        payload: m.payload().map(<[u8]>::to_vec),
                        header: number,
                    });
                }
                Some(Err(e)) => {
                    let _ = self.consumer.unassign();
                    return Err(transient("reading back published events", e));
                }
                None => {
                    // A transaction marker or a compacted gap ends the partition without a
                    // record: the position says how far the fetch got.
                    if let Ok(pos) = self.consumer.position()
                        && let Some(e) = pos.find_partition(topic, partition)
                        && let Offset::Offset(o) = e.offset()
                        && o > next
                    {
                        next = o;
                        last_progress = Instant::now();
                    }
                }
            }
        }
        let _ = self.consumer.unassign();
        Ok((payloads, next, end))
    }
}
