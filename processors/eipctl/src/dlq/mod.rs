//! Dead-letter tooling: list, show and redrive the records of a DLQ topic.
//!
//! A dead letter is the original record (key, value, headers) plus the `eip.dlq.*` headers
//! written by [`eip_runtime::dlq::headers`] (and any further `eip.dlq.*` header a processor adds,
//! such as the router's `eip.dlq.target-topic`, which is shown generically).
//!
//! - [`list`] reads a DLQ and returns one [`Entry`] per record that passes a [`Filter`], with
//!   counts by error class.
//! - [`show`] reads one record and renders every header, the key and the payload (decoded
//!   through the registry when it is Confluent-framed Avro).
//! - [`redrive`] sends filtered records back to their source topic (or another one), without
//!   their `eip.dlq.*` headers and with `eip.redrive.*` headers; a loop guard refuses records
//!   redriven too often, and a ledger topic `<dlq>.redriven` makes it idempotent.
//!
//! Planning is kept apart from effects: [`plan`] and [`summarize`] are pure functions of the
//! records read, tested without a broker; [`list`], [`show`] and [`redrive`] do the I/O. One
//! module each: `list`, `show`, `plan` (what a redrive would move or refuse), `ledger` (what
//! was redriven, keyed so that a recreated DLQ is not mistaken for the old one) and `redrive`
//! (one Kafka transaction per chunk, which also fences a concurrent redrive of the same DLQ).
//! `list` and `redrive` read a DLQ a bounded chunk at a time ([`crate::Scan`]), so their
//! memory does not grow with the DLQ. The decisions behind redrive are written down in
//! `docs/dlq.md`.

use std::time::Duration;

use eip_runtime::dlq as headers;
use eip_schemas::ErrorClass;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{OpsError, ReadRecord, Scan};

pub use regex::Regex;

mod ledger;
mod list;
mod plan;
mod redrive;
mod show;

#[cfg(test)]
mod tests;

pub use ledger::{Ledger, ledger_key, ledger_key_of};
pub use list::{Entry, ListLine, Listing, list, summarize};
pub use plan::{Move, Plan, RedriveOptions, RedriveReport, Refused, plan, redriven_headers};
pub use redrive::redrive;
pub use show::{Shown, ShownHeader, ShownRecord, render, render_payload, show};

/// Every dead-letter header starts with this; redrive drops all of them.
pub const DLQ_HEADER_PREFIX: &str = "eip.dlq.";
/// Header the router adds: the topic it failed to produce to. Shown like any other
/// `eip.dlq.*` header; named here so operators can find it in the docs.
pub const TARGET_TOPIC: &str = eip_runtime::dlq::TARGET_TOPIC;
/// Header on a redriven record: how many times it has been redriven, decimal. The loop guard
/// reads it back when the record dead-letters again.
pub const REDRIVE_COUNT: &str = "eip.redrive.count";
/// Header on a redriven record: the dead letter it came from, `<dlq>/<partition>/<offset>`.
pub const REDRIVE_FROM: &str = "eip.redrive.from";
/// Header on a redriven record: when it was redriven, RFC 3339 UTC.
pub const REDRIVE_AT: &str = "eip.redrive.at";
/// The ledger of a DLQ is `<dlq><LEDGER_SUFFIX>`.
pub const LEDGER_SUFFIX: &str = ".redriven";
/// Default of `--max-redrives`: a record that failed again after three redrives needs a fix,
/// not a fourth try.
pub const DEFAULT_MAX_REDRIVES: u32 = 3;
/// How long reading a DLQ or its ledger may go without a record before the tool gives up.
pub const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one redriven record may wait for its acknowledgement. The pipeline's producer
/// waits forever (`message.timeout.ms=0`); an operator's command should end with an error.
/// A transactional producer needs it below [`TRANSACTION_TIMEOUT`].
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(50);
/// How long one chunk's transaction may stay open. A redrive that dies mid-chunk holds back
/// `read_committed` consumers of its target topics for at most this long (or until the next
/// redrive of the DLQ aborts it), so it is kept short.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Default of `--chunk-records`: how many dead letters `list` and `redrive` hold, plan and
/// (for redrive) move in one transaction at a time.
pub const DEFAULT_CHUNK_RECORDS: usize = 1000;
/// A chunk also ends once its keys and payloads pass this many bytes (it holds at least one
/// record), so that large dead letters don't make a chunk large.
pub const CHUNK_BYTES: usize = 16 * 1024 * 1024;
/// A redrive report lists at most this many positions of each kind (moved, already redriven,
/// refused), the first ones in (partition, offset) order; its counts are always whole.
pub const REPORT_LIMIT: usize = 1000;
/// Bytes of a binary payload shown as hex.
pub const HEX_PREVIEW_BYTES: usize = 64;

/// The ledger topic of `dlq`.
pub fn ledger_topic(dlq: &str) -> String {
    format!("{dlq}{LEDGER_SUFFIX}")
}

/// Parses a `--since`/`--until` argument: an RFC 3339 time, or a humantime duration meaning
/// that long before `now` (`2h`, `30m`, `1day 2h`).
pub fn parse_time(s: &str, now: OffsetDateTime) -> Result<OffsetDateTime, OpsError> {
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let invalid = |why: String| OpsError::Invalid {
        what: "time".into(),
        reason: format!(
            "{s:?}: expected an RFC 3339 time (2026-03-01T12:00:00Z) or a duration ago (2h, 30m){why}"
        ),
    };
    let d = humantime::parse_duration(s).map_err(|_| invalid(String::new()))?;
    let d = time::Duration::try_from(d).map_err(|e| invalid(format!(": {e}")))?;
    now.checked_sub(d)
        .ok_or_else(|| invalid(": too far back".into()))
}

/// Parses an error class label (`poison`, `transient`, `fatal`).
pub fn parse_class(s: &str) -> Result<ErrorClass, OpsError> {
    [ErrorClass::Poison, ErrorClass::Transient, ErrorClass::Fatal]
        .into_iter()
        .find(|c| c.as_str() == s)
        .ok_or_else(|| OpsError::Invalid {
            what: "class".into(),
            reason: format!("{s:?}: expected poison, transient or fatal"),
        })
}

/// Which dead letters an operation applies to. Every criterion set must hold; an empty filter
/// selects everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Matched (unanchored) against `eip.dlq.reason`; a record without one never matches.
    pub reason: Option<Regex>,
    /// Equal to `eip.dlq.source-topic`.
    pub source_topic: Option<String>,
    /// Equal to `eip.dlq.error-class`.
    pub class: Option<ErrorClass>,
    /// First failure at or after this time (see [`failed_at`]).
    pub since: Option<OffsetDateTime>,
    /// First failure at or before this time (see [`failed_at`]).
    pub until: Option<OffsetDateTime>,
}

impl Filter {
    /// Rejects a filter that can match nothing because `since` is after `until`.
    pub fn validate(&self) -> Result<(), OpsError> {
        match (self.since, self.until) {
            (Some(s), Some(u)) if s > u => Err(OpsError::Invalid {
                what: "--since/--until".into(),
                reason: format!("--since {} is after --until {}", rfc3339(s), rfc3339(u)),
            }),
            _ => Ok(()),
        }
    }

    /// Whether `r` passes every criterion.
    pub fn matches(&self, r: &ReadRecord) -> bool {
        if let Some(re) = &self.reason
            && !r.header(headers::REASON).is_some_and(|v| re.is_match(v))
        {
            return false;
        }
        if let Some(t) = &self.source_topic
            && r.header(headers::SOURCE_TOPIC) != Some(t.as_str())
        {
            return false;
        }
        if let Some(c) = self.class
            && r.header(headers::ERROR_CLASS) != Some(c.as_str())
        {
            return false;
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(at) = failed_at(r) else {
                return false;
            };
            if self.since.is_some_and(|s| at < s) || self.until.is_some_and(|u| at > u) {
                return false;
            }
        }
        true
    }

    /// True when no criterion is set.
    pub fn is_empty(&self) -> bool {
        self.reason.is_none()
            && self.source_topic.is_none()
            && self.class.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }
}

/// When the record first failed: `eip.dlq.first-failure`, or the record's timestamp when that
/// header is missing or not RFC 3339. The time filters use this.
pub fn failed_at(r: &ReadRecord) -> Option<OffsetDateTime> {
    r.header(headers::FIRST_FAILURE)
        .and_then(|v| OffsetDateTime::parse(v, &Rfc3339).ok())
        .or_else(|| {
            r.timestamp_ms.and_then(|ms| {
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
            })
        })
}

/// The record's `eip.redrive.count`: 0 when absent, `Err(raw value)` when unreadable.
pub fn redrive_count(r: &ReadRecord) -> Result<u32, String> {
    match r.headers.iter().rev().find(|(k, _)| k == REDRIVE_COUNT) {
        None => Ok(0),
        Some((_, v)) => {
            let raw = v
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            raw.trim().parse().map_err(|_| raw.into_owned())
        }
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// A position in the DLQ topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct DlqPosition {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

impl DlqPosition {
    /// The position of `r`.
    pub fn of(r: &ReadRecord) -> DlqPosition {
        DlqPosition {
            partition: r.partition,
            offset: r.offset,
        }
    }
}

impl std::fmt::Display for DlqPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.partition, self.offset)
    }
}

/// The next chunk of `scan` (at most `records` records, about [`CHUNK_BYTES`]), read off the
/// async runtime; the scan comes back with it.
pub(crate) async fn next_chunk(
    scan: Scan,
    records: usize,
) -> Result<(Scan, Option<Vec<ReadRecord>>), OpsError> {
    crate::blocking(move || {
        let mut scan = scan;
        let chunk = scan.next_chunk(records.max(1), CHUNK_BYTES)?;
        Ok((scan, chunk))
    })
    .await
}
