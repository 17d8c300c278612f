//! Deadlines are judged on what the monitor has read, so it acts on one only once it has
//! read everything published before it. A sampler notes, about once a second, each input
//! partition's high watermark (the end of the log) at a wall-clock time `t`; once the group's
//! committed offsets reach every watermark of a sample, everything published before `t` is
//! folded, and [`CatchUp::through`] is `t`. A deadline at `d` is acted on when `through ≥ d`.
//!
//! Without it, a monitor that comes back after an outage (or a partition that moves) would
//! time out steps and mark sagas stuck whose completions wait in the backlog it has not read
//! yet. In steady state `through` trails the clock by about the commit interval, so a
//! deadline acts a few seconds after it passes. A group that never catches up (a monitor that
//! can't keep up) holds a deadline at most `deadline_hold_max`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

/// A partition: topic and number.
pub type Tp = (String, i32);

/// The high watermarks of every input partition at a time (ms since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// When the watermarks were read (before the first was asked for).
    pub at: i64,
    /// Each partition's high watermark.
    pub ends: HashMap<Tp, i64>,
}

/// The newest time through which everything is read, given the `samples` (oldest first) and
/// the group's committed offsets (a partition the group never committed is at its low
/// watermark). Samples older than the answer are dropped: they will never be needed again.
pub fn caught_up_through(
    samples: &mut VecDeque<Sample>,
    committed: &HashMap<Tp, i64>,
) -> Option<i64> {
    let read = |s: &Sample| {
        s.ends
            .iter()
            .all(|(tp, end)| committed.get(tp).is_some_and(|c| c >= end))
    };
    let newest = samples.iter().rposition(read)?;
    samples.drain(..newest);
    samples.front().map(|s| s.at)
}

/// How far the monitor's group has read, in wall-clock time: see the module docs.
#[derive(Debug)]
pub struct CatchUp {
    through: AtomicI64,
}

impl Default for CatchUp {
    fn default() -> Self {
        CatchUp {
            through: AtomicI64::new(i64::MIN),
        }
    }
}

impl CatchUp {
    /// Everything published before this time (ms) is read; None until the first sample is.
    pub fn through(&self) -> Option<i64> {
        match self.through.load(Ordering::Relaxed) {
            i64::MIN => None,
            t => Some(t),
        }
    }

    fn set(&self, t: i64) {
        self.through.fetch_max(t, Ordering::Relaxed);
    }

    /// Whether a deadline at `deadline` may be acted on at `now`: once everything before it
    /// is read, or once it has been held `max_hold`.
    pub fn may_act(&self, deadline: i64, now: i64, max_hold: Duration) -> bool {
        let held_ms = i64::try_from(max_hold.as_millis()).unwrap_or(i64::MAX);
        self.through().is_some_and(|t| t >= deadline) || now.saturating_sub(deadline) >= held_ms
    }

    /// Samples the input partitions of `topics` about every `every` with `consumer` (a
    /// client of the monitor's group that never joins it nor commits), until `stop`.
    pub fn sample(
        self: Arc<Self>,
        consumer: BaseConsumer,
        topics: Vec<String>,
        every: Duration,
        stop: CancellationToken,
    ) {
        let mut samples: VecDeque<Sample> = VecDeque::new();
        while !stop.is_cancelled() {
            match read_positions(&consumer, &topics) {
                Ok((sample, committed)) => {
                    samples.push_back(sample);
                    if samples.len() > 3_600 {
                        samples.pop_front();
                    }
                    if let Some(t) = caught_up_through(&mut samples, &committed) {
                        self.set(t);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading how far the monitor has read"),
            }
            std::thread::sleep(every);
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One sample and the group's committed offsets.
fn read_positions(
    consumer: &BaseConsumer,
    topics: &[String],
) -> Result<(Sample, HashMap<Tp, i64>), rdkafka::error::KafkaError> {
    const WAIT: Duration = Duration::from_secs(5);
    let at = now_ms();
    let mut ends = HashMap::new();
    let mut lows = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), WAIT)?;
        for t in metadata.topics() {
            for p in t.partitions() {
                let (low, high) = consumer.fetch_watermarks(topic, p.id(), WAIT)?;
                ends.insert((topic.clone(), p.id()), high);
                lows.insert((topic.clone(), p.id()), low);
                tpl.add_partition(topic, p.id());
            }
        }
    }
    let committed = consumer.committed_offsets(tpl, WAIT)?;
    let mut at_offsets = HashMap::new();
    for e in committed.elements() {
        let tp = (e.topic().to_string(), e.partition());
        let offset = match e.offset() {
            Offset::Offset(n) => n,
            _ => lows.get(&tp).copied().unwrap_or(0),
        };
        at_offsets.insert(tp, offset);
    }
    Ok((Sample { at, ends }, at_offsets))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: i64, ends: &[(&str, i64)]) -> Sample {
        Sample {
            at,
            ends: ends.iter().map(|(t, e)| (((*t).into(), 0), *e)).collect(),
        }
    }

    fn committed(at: &[(&str, i64)]) -> HashMap<Tp, i64> {
        at.iter().map(|(t, c)| (((*t).into(), 0), *c)).collect()
    }

    #[test]
    fn the_newest_sample_whose_ends_are_all_read_is_how_far_the_group_has_read() {
        let mut samples: VecDeque<Sample> = [
            sample(1_000, &[("a", 10), ("b", 5)]),
            sample(2_000, &[("a", 20), ("b", 5)]),
            sample(3_000, &[("a", 30), ("b", 9)]),
        ]
        .into();
        // Nothing read yet of what the first sample saw.
        assert_eq!(
            caught_up_through(&mut samples, &committed(&[("a", 9), ("b", 5)])),
            None
        );
        assert_eq!(samples.len(), 3);
        // a is past the second sample's end, b is not past the third's.
        assert_eq!(
            caught_up_through(&mut samples, &committed(&[("a", 30), ("b", 8)])),
            Some(2_000)
        );
        assert_eq!(samples.len(), 2, "older samples are dropped");
        assert_eq!(
            caught_up_through(&mut samples, &committed(&[("a", 31), ("b", 9)])),
            Some(3_000)
        );
        // A partition the group has no offset for is not read.
        let mut samples: VecDeque<Sample> = [sample(1_000, &[("a", 1)])].into();
        assert_eq!(caught_up_through(&mut samples, &HashMap::new()), None);
    }

    #[test]
    fn a_deadline_acts_once_everything_before_it_is_read_or_it_was_held_long_enough() {
        let c = CatchUp::default();
        let hold = Duration::from_secs(300);
        assert!(!c.may_act(10_000, 12_000, hold), "nothing sampled yet");
        c.set(9_999);
        assert!(!c.may_act(10_000, 12_000, hold));
        c.set(10_000);
        assert!(c.may_act(10_000, 12_000, hold));
        c.set(5_000);
        assert_eq!(c.through(), Some(10_000), "never goes back");
        assert!(
            c.may_act(400_000, 700_000, hold),
            "held the longest it may be"
        );
        assert!(!c.may_act(400_000, 699_999, hold));
    }
}
