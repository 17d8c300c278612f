//! Deadlines are judged on what the monitor has read, so it acts on one only once it has
//! folded everything published before it. The monitor reads in two stages (source topics,
//! then its own observations topic), so "read" takes two steps. About once a second a sampler
//! reads each input partition's end (high watermark) and then the monitor group's committed
//! offsets. For a sample `S` taken at wall-clock time `t`:
//! 1. the source partitions' committed offsets reach `S`'s ends at a later sample `A`: every
//!    source record published before `t` is observed, and since a source offset is stored only
//!    once its observation is acknowledged, those observations are in the observations topic;
//! 2. the observations partitions' committed offsets reach their ends as read at the sample
//!    after `A` (read after `A`'s committed offsets): those observations are folded.
//!
//! Then [`CatchUp::through`] is `t`, and a deadline at `d` acts when `through ≥ d`.
//!
//! A partition whose committed offset stays below its end with nothing readable in between
//! (a transaction's commit marker ends it, or aborted records) is read: a probe at its
//! committed offset finds the end of the partition first. A partition the group never
//! committed is at its low watermark (`auto_offset_reset = earliest`) or at its end (`latest`,
//! where the group never reads what was there before it).
//!
//! Without this, a monitor that comes back after an outage (or a partition that moves) would
//! time out steps and mark sagas stuck whose answers wait in the backlog it has not read yet.
//! In steady state `through` trails the clock by two or three commit intervals. A deadline
//! held longer than `deadline_hold_max` (counted from when its hold began) acts on what has
//! been read.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

/// A partition: topic and number.
pub type Tp = (String, i32);

/// One reading: each input partition's end, then the group's committed offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// When the ends were read (before the first was asked for), ms since the Unix epoch.
    pub at: i64,
    /// Each partition's high watermark.
    pub ends: HashMap<Tp, i64>,
    /// The group's committed offset of each partition, read after the ends (a partition
    /// with nothing readable below its end counts as at its end).
    pub committed: HashMap<Tp, i64>,
}

fn reached(
    committed: &HashMap<Tp, i64>,
    ends: &HashMap<Tp, i64>,
    pick: impl Fn(&Tp) -> bool,
) -> bool {
    ends.iter()
        .filter(|(tp, _)| pick(tp))
        .all(|(tp, end)| committed.get(tp).is_some_and(|c| c >= end))
}

/// The newest sample time through which everything is folded (see the module docs), given
/// the `samples` (oldest first) and the monitor's own topic `observations`. Samples older
/// than the answer are dropped: they will never be needed again.
pub fn caught_up_through(samples: &mut VecDeque<Sample>, observations: &str) -> Option<i64> {
    let source = |tp: &Tp| tp.0 != observations;
    let own = |tp: &Tp| tp.0 == observations;
    let folded = |i: usize| -> bool {
        let s = &samples[i];
        // 1. The first sample at which the sources are read up to S's ends.
        let Some(a) = (i..samples.len()).find(|&j| reached(&samples[j].committed, &s.ends, source))
        else {
            return false;
        };
        // 2. The observations read up to their ends as of the sample after it.
        let Some(after) = samples.get(a + 1) else {
            return false;
        };
        (a + 1..samples.len()).any(|m| reached(&samples[m].committed, &after.ends, own))
    };
    let newest = (0..samples.len()).rev().find(|&i| folded(i))?;
    samples.drain(..newest);
    samples.front().map(|s| s.at)
}

/// How far the monitor has folded, in wall-clock time: see the module docs.
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
    /// Everything published before this time (ms) is folded; None until it is known.
    pub fn through(&self) -> Option<i64> {
        match self.through.load(Ordering::Acquire) {
            i64::MIN => None,
            t => Some(t),
        }
    }

    fn set(&self, t: i64) {
        self.through.fetch_max(t, Ordering::AcqRel);
    }

    /// Whether a deadline at `deadline`, held since `held_since`, may be acted on at `now`:
    /// once everything before it is folded, or once it has been held `max_hold`.
    pub fn may_act(&self, deadline: i64, now: i64, held_since: i64, max_hold: Duration) -> bool {
        let max_ms = i64::try_from(max_hold.as_millis()).unwrap_or(i64::MAX);
        self.through().is_some_and(|t| t >= deadline) || now.saturating_sub(held_since) >= max_ms
    }

    /// Samples the partitions of `topics` about every `every`, until `stop`: `group` reads
    /// the committed offsets (a client of the monitor's group that never joins it nor
    /// commits), `probe` looks for readable records below a partition's end.
    pub fn sample(
        self: Arc<Self>,
        clients: Clients,
        topics: Vec<String>,
        observations: String,
        every: Duration,
        stop: CancellationToken,
    ) {
        let mut samples: VecDeque<Sample> = VecDeque::new();
        let mut probed: Probed = HashMap::new();
        while !stop.is_cancelled() {
            match clients.read(&topics, &mut probed) {
                Ok(sample) => {
                    samples.push_back(sample);
                    if samples.len() > 3_600 {
                        samples.pop_front();
                    }
                    if let Some(t) = caught_up_through(&mut samples, &observations) {
                        self.set(t);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading how far the monitor has read"),
            }
            std::thread::sleep(every);
        }
    }
}

/// Per partition: the committed offset of the last sample, and the last probe's answer for a
/// (committed, end) pair.
#[derive(Debug, Default)]
struct Probe {
    committed: Option<i64>,
    answer: Option<(i64, i64, bool)>,
}

type Probed = HashMap<Tp, Probe>;

/// The sampler's Kafka clients.
pub struct Clients {
    /// A client of the monitor's group: reads its committed offsets, never joins, never
    /// commits.
    pub group: BaseConsumer,
    /// A client of no group with `enable.partition.eof`: reads below a partition's end.
    pub probe: BaseConsumer,
    /// Where the group starts a partition it never committed: true for `latest`.
    pub from_latest: bool,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients").finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

const WAIT: Duration = Duration::from_secs(5);

impl Clients {
    /// One sample: the ends, then the committed offsets, a partition with nothing readable
    /// below its end counted at its end. `probed` remembers each probe's answer for a
    /// (committed, end) pair, so a partition is probed once per change.
    fn read(&self, topics: &[String], probed: &mut Probed) -> Result<Sample, KafkaError> {
        let at = now_ms();
        let mut ends = HashMap::new();
        let mut lows = HashMap::new();
        let mut tpl = TopicPartitionList::new();
        for topic in topics {
            let metadata = self.group.fetch_metadata(Some(topic), WAIT)?;
            for t in metadata.topics() {
                for p in t.partitions() {
                    let (low, high) = self.group.fetch_watermarks(topic, p.id(), WAIT)?;
                    ends.insert((topic.clone(), p.id()), high);
                    lows.insert((topic.clone(), p.id()), low);
                    tpl.add_partition(topic, p.id());
                }
            }
        }
        let stored = self.group.committed_offsets(tpl, WAIT)?;
        let mut committed = HashMap::new();
        for e in stored.elements() {
            let tp = (e.topic().to_string(), e.partition());
            let end = ends.get(&tp).copied().unwrap_or(0);
            let mut offset = match e.offset() {
                Offset::Offset(n) => n,
                _ if self.from_latest => end,
                _ => lows.get(&tp).copied().unwrap_or(0),
            };
            let before = probed.get(&tp).and_then(|p| p.committed);
            let read_to = offset;
            if offset < end {
                // Probed once the committed offset stood still for a sample (one that moves is
                // being read, and a probe of a long backlog costs a fetch), once per
                // (committed, end): the end may keep moving (aborted transactions) while
                // nothing readable arrives.
                let known = probed
                    .get(&tp)
                    .and_then(|p| p.answer)
                    .filter(|(c, e, _)| *c == offset && *e == end)
                    .map(|(_, _, readable)| readable);
                let readable = match known {
                    Some(readable) => readable,
                    None if before == Some(offset) => {
                        let readable = self.readable_below(&tp, offset)?;
                        probed.entry(tp.clone()).or_default().answer =
                            Some((offset, end, readable));
                        readable
                    }
                    None => true,
                };
                if !readable {
                    offset = end;
                }
            }
            probed.entry(tp.clone()).or_default().committed = Some(read_to);
            committed.insert(tp, offset);
        }
        Ok(Sample {
            at,
            ends,
            committed,
        })
    }

    /// Whether a record can be read at or after `offset` of `tp` (before its end): false
    /// when the partition's end comes first (only transaction markers or aborted records
    /// are left).
    fn readable_below(&self, tp: &Tp, offset: i64) -> Result<bool, KafkaError> {
        let mut one = TopicPartitionList::new();
        one.add_partition_offset(&tp.0, tp.1, Offset::Offset(offset))?;
        self.probe.assign(&one)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let answer = loop {
            match self.probe.poll(Duration::from_millis(100)) {
                Some(Ok(_)) => break true,
                Some(Err(KafkaError::PartitionEOF(_))) => break false,
                // Unknown (an error, or no answer in time): count it as unread, the safe side.
                Some(Err(_)) => break true,
                None if std::time::Instant::now() > deadline => break true,
                None => {}
            }
        };
        self.probe.unassign()?;
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, i64)]) -> HashMap<Tp, i64> {
        entries
            .iter()
            .map(|(t, n)| (((*t).into(), 0), *n))
            .collect()
    }

    fn sample(at: i64, ends: &[(&str, i64)], committed: &[(&str, i64)]) -> Sample {
        Sample {
            at,
            ends: map(ends),
            committed: map(committed),
        }
    }

    #[test]
    fn a_time_is_folded_once_the_sources_are_read_past_it_and_then_their_observations() {
        let mut samples = VecDeque::new();
        // t=1000: the sources hold 10 records, 5 of them read.
        samples.push_back(sample(
            1_000,
            &[("src", 10), ("obs", 5)],
            &[("src", 5), ("obs", 5)],
        ));
        assert_eq!(caught_up_through(&mut samples, "obs"), None);
        // The sources are read, and their observations written (the end of obs moved to 8),
        // but not folded yet: the observations topic looked read as of t=1000, which is not
        // enough.
        samples.push_back(sample(
            2_000,
            &[("src", 10), ("obs", 8)],
            &[("src", 10), ("obs", 5)],
        ));
        assert_eq!(caught_up_through(&mut samples, "obs"), None);
        samples.push_back(sample(
            3_000,
            &[("src", 10), ("obs", 9)],
            &[("src", 10), ("obs", 8)],
        ));
        assert_eq!(
            caught_up_through(&mut samples, "obs"),
            None,
            "obs is not read to its end as of the sample after the sources were"
        );
        samples.push_back(sample(
            4_000,
            &[("src", 10), ("obs", 9)],
            &[("src", 10), ("obs", 9)],
        ));
        // t=3000: sources read at that very sample; obs read to its end of t=4000.
        assert_eq!(caught_up_through(&mut samples, "obs"), Some(3_000));
        assert_eq!(samples.len(), 2, "older samples are dropped");
        // Quiet: the newest sample whose successor shows obs read.
        samples.push_back(sample(
            5_000,
            &[("src", 10), ("obs", 9)],
            &[("src", 10), ("obs", 9)],
        ));
        assert_eq!(caught_up_through(&mut samples, "obs"), Some(4_000));
    }

    #[test]
    fn a_partition_the_group_has_no_offset_for_is_not_read() {
        let mut samples: VecDeque<Sample> = [
            sample(1_000, &[("src", 1), ("obs", 0)], &[("obs", 0)]),
            sample(2_000, &[("src", 1), ("obs", 0)], &[("obs", 0)]),
            sample(3_000, &[("src", 1), ("obs", 0)], &[("obs", 0)]),
        ]
        .into();
        assert_eq!(caught_up_through(&mut samples, "obs"), None);
    }

    #[test]
    fn a_deadline_acts_once_everything_before_it_is_folded_or_it_was_held_long_enough() {
        let c = CatchUp::default();
        let hold = Duration::from_secs(300);
        assert!(
            !c.may_act(10_000, 12_000, 11_000, hold),
            "nothing known yet"
        );
        c.set(9_999);
        assert!(!c.may_act(10_000, 12_000, 11_000, hold));
        c.set(10_000);
        assert!(c.may_act(10_000, 12_000, 11_000, hold));
        c.set(5_000);
        assert_eq!(c.through(), Some(10_000), "never goes back");
        // Held since it was first due here, not since the deadline: a monitor back from an
        // outage longer than the cap still waits for the backlog.
        assert!(!c.may_act(400_000, 900_000, 899_000, hold));
        assert!(
            c.may_act(400_000, 1_199_000, 899_000, hold),
            "held the longest it may be"
        );
    }
}
