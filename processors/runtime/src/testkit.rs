//! The test kit: drives a [`Stateful`] (or, through [`Stateless`](crate::Stateless), a
//! stateless) processor given/when/then, without a broker, as the runtime would: open on
//! assign, records in offset order with `&mut` state, timers firing when the kit's clock passes
//! them, group commits with the timer changes and the offset covered, and close on revoke.
//!
//! ```text
//! let mut kit = TestKit::new(Counter::new(db), "orders", 0);
//! kit.assign().await?;
//! kit.record(Some("k1"), input).await?;   // when
//! kit.flush().await?;
//! assert_eq!(kit.state().unwrap().count("k1"), 1);   // then
//! ```

use std::sync::Arc;

use bytes::Bytes;

use crate::processor::{Envelope, Headers, Output, Position, ProcessError};
use crate::stateful::{Effects, Flush, PartitionId, Stateful, Timer, TimerChange, Timers};
use crate::trace::TraceContext;

/// One partition of a processor under test.
pub struct TestKit<S: Stateful> {
    processor: S,
    partition: PartitionId,
    state: Option<S::State>,
    timers: Timers,
    changes: Vec<TimerChange>,
    now_ms: i64,
    next_offset: i64,
    up_to: Option<i64>,
    applied: Option<i64>,
}

impl<S: Stateful> std::fmt::Debug for TestKit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKit")
            .field("partition", &self.partition)
            .field("now_ms", &self.now_ms)
            .field("next_offset", &self.next_offset)
            .finish_non_exhaustive()
    }
}

impl<S: Stateful> TestKit<S> {
    /// A kit for partition `partition` of `topic`, with its clock at 0 and nothing assigned.
    pub fn new(processor: S, topic: &str, partition: i32) -> TestKit<S> {
        TestKit {
            processor,
            partition: PartitionId {
                topic: topic.into(),
                partition,
            },
            state: None,
            timers: Timers::default(),
            changes: Vec::new(),
            now_ms: 0,
            next_offset: 0,
            up_to: None,
            applied: None,
        }
    }

    /// The processor.
    pub fn processor(&self) -> &S {
        &self.processor
    }

    /// The partition's state while assigned.
    pub fn state(&self) -> Option<&S::State> {
        self.state.as_ref()
    }

    /// The partition's state, mutably (to simulate a store that changed under it).
    pub fn state_mut(&mut self) -> Option<&mut S::State> {
        self.state.as_mut()
    }

    /// The kit's clock, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// Sets the clock without firing timers (see [`TestKit::advance_to`]).
    pub fn set_clock(&mut self, now_ms: i64) {
        self.now_ms = now_ms;
    }

    /// The offset the next record gets.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Sets the offset of the next record (to replay from a position).
    pub fn seek(&mut self, offset: i64) {
        self.next_offset = offset;
    }

    /// Pending timers, earliest first.
    pub fn timers(&self) -> Vec<Timer> {
        self.timers.all()
    }

    /// Assigns the partition: opens its state, its timers and its applied offset.
    pub async fn assign(&mut self) -> Result<(), ProcessError> {
        let opened = self.processor.open(&self.partition).await?;
        self.timers = Timers::default();
        for t in opened.timers {
            self.timers.apply(&TimerChange::Set(t));
        }
        self.applied = opened.applied;
        self.changes.clear();
        self.up_to = None;
        self.state = Some(opened.state);
        Ok(())
    }

    /// Drops the state without flushing, as an abandoned or crashed owner does.
    pub fn crash(&mut self) {
        self.state = None;
        self.changes.clear();
        self.up_to = None;
    }

    /// Flushes, then closes the state, as a revoke does.
    pub async fn revoke(&mut self) -> Result<(), ProcessError> {
        self.flush().await?;
        if let Some(state) = self.state.take() {
            self.processor.close(&self.partition, state).await;
        }
        Ok(())
    }

    /// A record with `key` and `value` at the next offset, with no headers; returns its
    /// outputs. A record the state already holds (at or below the applied offset) is skipped
    /// with no outputs, as the runtime skips it.
    pub async fn record(
        &mut self,
        key: Option<&str>,
        value: S::Input,
    ) -> Result<Vec<Output>, ProcessError> {
        self.record_with(
            key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            Headers::new(),
            value,
        )
        .await
    }

    /// [`TestKit::record`] with raw key bytes and headers.
    pub async fn record_with(
        &mut self,
        key: Option<Bytes>,
        headers: Headers,
        value: S::Input,
    ) -> Result<Vec<Output>, ProcessError> {
        let offset = self.next_offset;
        self.next_offset += 1;
        if self.applied.is_some_and(|a| offset <= a) {
            return Ok(Vec::new());
        }
        let state = self
            .state
            .as_mut()
            .ok_or_else(|| ProcessError::fatal("test kit: record before assign"))?;
        let envelope = Envelope {
            value,
            key,
            headers,
            position: Position {
                topic: self.partition.topic.clone(),
                partition: self.partition.partition,
                offset,
                timestamp_ms: Some(self.now_ms),
            },
            trace: TraceContext::new_root(),
            correlation_id: Arc::from(format!("kit-{offset}")),
        };
        let mut effects = Effects::at(self.now_ms);
        self.processor
            .process(state, envelope, &mut effects)
            .await?;
        self.up_to = Some(offset);
        Ok(self.take(effects))
    }

    /// Moves the clock to `now_ms`, firing every timer due by then, earliest first; returns
    /// each fired timer with its outputs.
    pub async fn advance_to(
        &mut self,
        now_ms: i64,
    ) -> Result<Vec<(Timer, Vec<Output>)>, ProcessError> {
        let mut fired = Vec::new();
        while let Some(timer) = self.timers.pop_due(now_ms) {
            self.now_ms = self.now_ms.max(timer.at_ms);
            self.changes.push(TimerChange::Remove(timer.key.clone()));
            let state = self
                .state
                .as_mut()
                .ok_or_else(|| ProcessError::fatal("test kit: timer before assign"))?;
            let mut effects = Effects::at(self.now_ms);
            self.processor
                .on_timer(state, timer.clone(), &mut effects)
                .await?;
            fired.push((timer, self.take(effects)));
        }
        self.now_ms = now_ms;
        Ok(fired)
    }

    /// A group commit: the staged writes, the timer changes and the offset covered.
    pub async fn flush(&mut self) -> Result<(), ProcessError> {
        let Some(state) = self.state.as_mut() else {
            return Ok(());
        };
        if self.up_to.is_none() && self.changes.is_empty() {
            return Ok(());
        }
        self.processor
            .flush(
                state,
                Flush {
                    partition: &self.partition,
                    up_to: self.up_to,
                    timers: &self.changes,
                },
            )
            .await?;
        self.up_to = None;
        self.changes.clear();
        Ok(())
    }

    fn take(&mut self, effects: Effects) -> Vec<Output> {
        for change in &effects.timers {
            self.timers.apply(change);
        }
        self.changes.extend(effects.timers);
        effects.outputs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stateful::Opened;
    use eip_schemas::Codec;

    /// Counts records per key; a timer per key reports the count. Fails a flush when told to.
    struct Counting {
        fail_next_flush: std::sync::atomic::AtomicBool,
    }

    #[derive(Default)]
    struct Counts {
        staged: std::collections::HashMap<String, u64>,
        durable: std::collections::HashMap<String, u64>,
    }

    impl Stateful for Counting {
        type Input = ();
        type State = Counts;

        fn name(&self) -> &str {
            "counting"
        }

        async fn decode(&self, _: &Codec, _: &crate::Record) -> Result<(), ProcessError> {
            Ok(())
        }

        async fn open(&self, _: &PartitionId) -> Result<Opened<Counts>, ProcessError> {
            Ok(Opened::fresh(Counts::default()))
        }

        async fn process(
            &self,
            state: &mut Counts,
            input: Envelope<()>,
            effects: &mut Effects,
        ) -> Result<(), ProcessError> {
            let key = String::from_utf8_lossy(input.key.as_deref().unwrap_or_default()).to_string();
            *state.staged.entry(key.clone()).or_default() += 1;
            effects.schedule(key, effects.now_ms() + 1_000);
            Ok(())
        }

        async fn on_timer(
            &self,
            state: &mut Counts,
            timer: Timer,
            effects: &mut Effects,
        ) -> Result<(), ProcessError> {
            let key = String::from_utf8_lossy(&timer.key).to_string();
            let n = state.durable.get(&key).copied().unwrap_or(0)
                + state.staged.get(&key).copied().unwrap_or(0);
            effects.emit(Output::new(
                "report",
                Some(timer.key),
                crate::Payload::Bytes(Bytes::from(n.to_string())),
            ));
            Ok(())
        }

        async fn flush(&self, state: &mut Counts, _: Flush<'_>) -> Result<(), ProcessError> {
            if self
                .fail_next_flush
                .swap(false, std::sync::atomic::Ordering::AcqRel)
            {
                return Err(ProcessError::transient("store busy"));
            }
            for (k, n) in state.staged.drain() {
                *state.durable.entry(k).or_default() += n;
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn given_records_when_the_clock_passes_their_timers_then_each_key_reports_once_with_its_count()
     {
        let mut kit = TestKit::new(
            Counting {
                fail_next_flush: false.into(),
            },
            "t",
            0,
        );
        kit.assign().await.unwrap();
        kit.record(Some("a"), ()).await.unwrap();
        kit.set_clock(500);
        kit.record(Some("a"), ()).await.unwrap();
        kit.record(Some("b"), ()).await.unwrap();
        // a's timer moved to 1500 with its second record; b's is at 1500 too.
        assert_eq!(kit.timers().len(), 2);
        assert!(kit.advance_to(1_499).await.unwrap().is_empty());
        let fired = kit.advance_to(1_500).await.unwrap();
        let reports: Vec<(String, String)> = fired
            .iter()
            .map(|(t, outs)| {
                let Payload::Bytes(b) = &outs[0].payload else {
                    panic!("bytes")
                };
                (
                    String::from_utf8_lossy(&t.key).to_string(),
                    String::from_utf8_lossy(b).to_string(),
                )
            })
            .collect();
        assert_eq!(
            reports,
            vec![("a".into(), "2".into()), ("b".into(), "1".into())]
        );
        assert!(kit.timers().is_empty());
    }

    #[tokio::test]
    async fn given_a_failed_group_commit_when_it_is_retried_then_nothing_is_applied_twice() {
        let mut kit = TestKit::new(
            Counting {
                fail_next_flush: true.into(),
            },
            "t",
            0,
        );
        kit.assign().await.unwrap();
        kit.record(Some("a"), ()).await.unwrap();
        kit.record(Some("a"), ()).await.unwrap();
        assert!(kit.flush().await.is_err(), "the first flush fails");
        kit.flush().await.unwrap();
        assert_eq!(kit.state().unwrap().durable.get("a"), Some(&2));
        assert!(kit.state().unwrap().staged.is_empty());
    }

    use crate::processor::Payload;
}
