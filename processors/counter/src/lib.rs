//! # eip-counter
//!
//! The runtime's reference stateful processor: it counts the records of its inputs per key
//! into a SQLite file, and can report each key's count a while after the key is first seen
//! (a durable timer). It exercises every part of the stateful contract (see
//! `eip_runtime::stateful` and docs/stateful.md):
//! - **open**: claims the partition by raising its epoch, and loads the partition's applied
//!   offset and pending timers;
//! - **process**: adds 1 to the key's staged delta, with `&mut` state and no I/O;
//! - **flush**: one SQLite transaction per group commit, which checks the epoch first (a
//!   former owner is refused), adds the deltas, applies the timer changes and records the
//!   applied offset, so a replay after a crash skips what is already counted.
//!
//! It is the subject of the rebalance, kill -9 and fencing tests and of the stateful
//! benchmark. Its SQLite plumbing and partition ledger come from eip-store.

pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use eip_runtime::config::{ConfigError, Section};
use eip_runtime::processor::decode_raw;
use eip_runtime::{
    Effects, Envelope, Flush, Opened, Output, PartitionId, Payload, ProcessError, Raw, Record,
    Stateful, Timer,
};
use eip_schemas::Codec;
use serde::{Deserialize, Serialize};

pub use store::{Gate, Partition, Store};

/// `[processor]` settings of the counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CounterConfig {
    /// The SQLite file (created if missing). Every replica on one machine shares it, in WAL
    /// mode.
    pub db: PathBuf,
    /// Where reports go: one record per key, `report_after` after the key was first seen,
    /// with the key's count as text. None for no reports.
    pub report_topic: Option<String>,
    /// How long after a key is first seen its report is due.
    #[serde(with = "humantime_serde")]
    pub report_after: Duration,
    /// Fault injection only: hold every group commit's transaction open this long before
    /// committing, so a test's kill lands inside one.
    #[serde(with = "humantime_serde")]
    pub hold_commit_open: Duration,
}

impl Default for CounterConfig {
    fn default() -> Self {
        CounterConfig {
            db: PathBuf::from("eip-counter.db"),
            report_topic: None,
            report_after: Duration::from_secs(10),
            hold_commit_open: Duration::ZERO,
        }
    }
}

impl Section for CounterConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.db.as_os_str().is_empty() {
            return Err(ConfigError::invalid("db", "must name a file"));
        }
        if self
            .report_topic
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(ConfigError::invalid(
                "report_topic",
                "must name a topic, or be left out",
            ));
        }
        if self.report_after.is_zero() {
            return Err(ConfigError::invalid("report_after", "must be more than 0"));
        }
        Ok(())
    }
}

/// Counts records per key into SQLite. See the crate docs.
#[derive(Debug, Clone)]
pub struct Counter {
    store: Store,
    report: Option<(Arc<str>, i64)>,
}

impl Counter {
    /// A counter over the file `config.db`, created with its tables if missing.
    pub fn new(config: &CounterConfig) -> Result<Counter, ConfigError> {
        let store = Store::open(&config.db, config.hold_commit_open)
            .map_err(|e| ConfigError::invalid("db", format!("{}: {e}", config.db.display())))?;
        Ok(Counter {
            store,
            report: config.report_topic.as_deref().map(|t| {
                (
                    Arc::from(t),
                    i64::try_from(config.report_after.as_millis()).unwrap_or(i64::MAX),
                )
            }),
        })
    }

    /// The store, for tests to read counts and to freeze group commits.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

impl Stateful for Counter {
    type Input = Raw;
    type State = Partition;

    fn name(&self) -> &str {
        "counter"
    }

    fn output_topics(&self) -> Vec<String> {
        self.report
            .iter()
            .map(|(topic, _)| topic.to_string())
            .collect()
    }

    async fn decode(&self, _: &Codec, record: &Record) -> Result<Raw, ProcessError> {
        Ok(decode_raw(record))
    }

    async fn open(&self, partition: &PartitionId) -> Result<Opened<Partition>, ProcessError> {
        self.store.claim(partition).await
    }

    async fn process(
        &self,
        state: &mut Partition,
        input: Envelope<Raw>,
        effects: &mut Effects,
    ) -> Result<(), ProcessError> {
        let key = key_text(input.key.as_deref());
        if let Some((_, after)) = &self.report
            && state.timer_keys.insert(key.clone())
        {
            effects.schedule(Bytes::from(key.clone()), effects.now_ms() + after);
        }
        *state.staged.entry(key).or_default() += 1;
        Ok(())
    }

    async fn on_timer(
        &self,
        state: &mut Partition,
        timer: Timer,
        effects: &mut Effects,
    ) -> Result<(), ProcessError> {
        let key = key_text(Some(&timer.key));
        state.timer_keys.remove(&key);
        let Some((topic, _)) = &self.report else {
            return Ok(());
        };
        let count = self.store.count(&key).await? + state.staged.get(&key).copied().unwrap_or(0);
        effects.emit(Output::new(
            topic.clone(),
            Some(timer.key),
            Payload::Bytes(Bytes::from(count.to_string())),
        ));
        Ok(())
    }

    async fn flush(&self, state: &mut Partition, flush: Flush<'_>) -> Result<(), ProcessError> {
        self.store.commit(state, &flush).await
    }
}

/// A key as the text the counts table holds (lossy for non-UTF-8 keys; empty for none).
pub fn key_text(key: Option<&[u8]>) -> String {
    String::from_utf8_lossy(key.unwrap_or_default()).into_owned()
}

#[cfg(test)]
mod tests;
