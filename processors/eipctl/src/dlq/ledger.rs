//! The ledger of a DLQ, `<dlq>.redriven`: which dead letters were redriven already.
//!
//! An entry is keyed by the dead letter's identity, `<partition>/<offset>/<timestamp ms>`:
//! its position in the DLQ plus the DLQ record's timestamp. The timestamp tells a dead letter
//! apart from a later one at the same position, which is what a deleted and recreated DLQ
//! topic holds (Kafka reuses offsets from 0, and rdkafka exposes no topic id to tell the
//! topics apart). A record without a timestamp is keyed `<partition>/<offset>/-`.
//!
//! Entries written before issue 17 are keyed `<partition>/<offset>`. Such an entry still
//! matches the dead letter it was written for, and only that one: a record at that position
//! whose timestamp is after the entry's `at` was dead-lettered after that redrive, so it is a
//! new one. A key or value eipctl never writes is refused with [`OpsError::Ledger`] rather
//! than guessed at.
//!
//! Only entries at or above the DLQ's low watermarks are kept (retention removed the records
//! below them), so the ledger in memory is a few dozen bytes per redriven record still in the
//! DLQ.

use std::collections::{HashMap, HashSet};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{OpsError, ReadRecord};

/// The ledger key of a dead letter at `partition`/`offset` with the DLQ record timestamp
/// `timestamp_ms`.
pub fn ledger_key(partition: i32, offset: i64, timestamp_ms: Option<i64>) -> String {
    match timestamp_ms {
        Some(ts) => format!("{partition}/{offset}/{ts}"),
        None => format!("{partition}/{offset}/-"),
    }
}

/// The ledger key of dead letter `r`.
pub fn ledger_key_of(r: &ReadRecord) -> String {
    ledger_key(r.partition, r.offset, r.timestamp_ms)
}

/// What the ledger says was redriven, as compact positions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    /// (partition, offset, DLQ record timestamp) of each entry.
    exact: HashSet<(i32, i64, Option<i64>)>,
    /// (partition, offset) of each entry written before issue 17, with its `at` in ms.
    legacy: HashMap<(i32, i64), i64>,
    /// Per partition, the DLQ's low watermark: entries below it are dropped.
    lows: HashMap<i32, i64>,
}

impl Ledger {
    /// An empty ledger that will keep only entries at or above `lows` (partition, low
    /// watermark of the DLQ); a partition not in `lows` keeps everything.
    pub fn new(lows: impl IntoIterator<Item = (i32, i64)>) -> Ledger {
        Ledger {
            lows: lows.into_iter().collect(),
            ..Ledger::default()
        }
    }

    /// Adds the ledger record `r` of the ledger topic `topic`.
    pub fn add(&mut self, topic: &str, r: &ReadRecord) -> Result<(), OpsError> {
        let bad = |reason: String| OpsError::Ledger {
            topic: topic.to_string(),
            offset: r.offset,
            reason,
        };
        let key = r
            .key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
            .ok_or_else(|| bad("no UTF-8 key".into()))?;
        let parts: Vec<&str> = key.split('/').collect();
        let int = |s: &str| s.parse::<i64>().ok();
        let (partition, offset) = match parts.as_slice() {
            [p, o] | [p, o, _] => (p.parse::<i32>().ok(), int(o).filter(|o| *o >= 0)),
            _ => (None, None),
        };
        let (Some(partition), Some(offset)) = (partition, offset) else {
            return Err(bad(format!(
                "key {key:?} is not <partition>/<offset>/<timestamp ms>"
            )));
        };
        if self.lows.get(&partition).is_some_and(|low| offset < *low) {
            return Ok(());
        }
        match parts.as_slice() {
            [_, _, "-"] => {
                self.exact.insert((partition, offset, None));
            }
            [_, _, ts] => {
                let ts = int(ts)
                    .ok_or_else(|| bad(format!("key {key:?}: the timestamp is not a number")))?;
                self.exact.insert((partition, offset, Some(ts)));
            }
            _ => {
                let at = legacy_at(r).ok_or_else(|| {
                    bad(format!(
                        "key {key:?} (written before issue 17) has no RFC 3339 \"at\" in its value"
                    ))
                })?;
                let e = self.legacy.entry((partition, offset)).or_insert(at);
                *e = (*e).max(at);
            }
        }
        Ok(())
    }

    /// Whether dead letter `r` was redriven already.
    pub fn contains(&self, r: &ReadRecord) -> bool {
        self.exact
            .contains(&(r.partition, r.offset, r.timestamp_ms))
            || self
                .legacy
                .get(&(r.partition, r.offset))
                .is_some_and(|at| r.timestamp_ms.is_none_or(|ts| ts <= *at))
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.exact.len() + self.legacy.len()
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The `at` of an old ledger entry's JSON value, in ms.
fn legacy_at(r: &ReadRecord) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_slice(r.payload.as_deref()?).ok()?;
    let at = OffsetDateTime::parse(v.get("at")?.as_str()?, &Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}
