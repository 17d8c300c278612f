//! What a redrive would do, as a pure function of the records read: which dead letters move
//! where with which headers, and which are refused (loop guard, already in the ledger, no
//! target), and the report of it. No I/O here.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use eip_runtime::dlq as headers;
use serde::Serialize;
use time::OffsetDateTime;

use crate::{OpsError, ReadRecord};

use super::*;

/// How `redrive` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedriveOptions {
    /// Send every selected record here instead of its `eip.dlq.source-topic`.
    pub to: Option<String>,
    /// Refuse records whose `eip.redrive.count` is already at least this.
    pub max_redrives: u32,
    /// Plan and report, but produce nothing and create nothing.
    pub dry_run: bool,
}

impl Default for RedriveOptions {
    fn default() -> RedriveOptions {
        RedriveOptions {
            to: None,
            max_redrives: DEFAULT_MAX_REDRIVES,
            dry_run: false,
        }
    }
}

/// A dead letter the loop guard refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refused {
    /// Partition in the DLQ.
    pub partition: i32,
    /// Offset in the DLQ.
    pub offset: i64,
    /// Its `eip.redrive.count`; `None` when unreadable (which counts as over the limit).
    pub redrive_count: Option<u32>,
}

/// A dead letter to move, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// The dead letter.
    pub record: ReadRecord,
    /// Where it goes.
    pub target: String,
    /// Its new `eip.redrive.count`.
    pub count: u32,
}

/// What redrive will do with each dead letter, decided before anything is produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Records read.
    pub scanned: usize,
    /// Records to move, in (partition, offset) order.
    pub moves: Vec<Move>,
    /// Records the ledger says were redriven already.
    pub already_redriven: Vec<DlqPosition>,
    /// Records refused by the loop guard.
    pub refused: Vec<Refused>,
    /// Records the filter left out.
    pub filtered_out: usize,
}

/// Decides what happens to each of `records`: filtered out, already in the ledger (`done`
/// holds ledger keys), refused by the loop guard, or moved to `--to` or its source topic.
///
/// A selected record with neither a source topic nor `--to` is an error for the whole run
/// (nothing is produced), so no record is silently skipped.
pub fn plan(
    records: &[ReadRecord],
    done: &HashSet<String>,
    filter: &Filter,
    opts: &RedriveOptions,
) -> Result<Plan, OpsError> {
    let mut plan = Plan {
        scanned: records.len(),
        ..Plan::default()
    };
    let mut unroutable = Vec::new();
    for r in records {
        if !filter.matches(r) {
            plan.filtered_out += 1;
            continue;
        }
        if done.contains(&ledger_key(r.partition, r.offset)) {
            plan.already_redriven.push(DlqPosition::of(r));
            continue;
        }
        let count = match redrive_count(r) {
            Ok(n) if n < opts.max_redrives => n,
            Ok(n) => {
                plan.refused.push(Refused {
                    partition: r.partition,
                    offset: r.offset,
                    redrive_count: Some(n),
                });
                continue;
            }
            Err(_) => {
                plan.refused.push(Refused {
                    partition: r.partition,
                    offset: r.offset,
                    redrive_count: None,
                });
                continue;
            }
        };
        // A dead letter from a router whose retries ran out holds the routed output: it goes to
        // the target it could not reach, not back through the rules. Others go to their source.
        let target = opts
            .to
            .as_deref()
            .or_else(|| r.header(TARGET_TOPIC).filter(|t| !t.is_empty()))
            .or_else(|| r.header(headers::SOURCE_TOPIC).filter(|t| !t.is_empty()));
        match target {
            Some(t) => plan.moves.push(Move {
                record: r.clone(),
                target: t.to_string(),
                count: count + 1,
            }),
            None => unroutable.push(DlqPosition::of(r).to_string()),
        }
    }
    if !unroutable.is_empty() {
        return Err(OpsError::Unroutable(format!(
            "{} selected record(s) have no {} header ({}); pass --to or narrow the filter",
            unroutable.len(),
            headers::SOURCE_TOPIC,
            unroutable.join(", ")
        )));
    }
    Ok(plan)
}

/// The headers of a redriven record: the dead letter's headers without any `eip.dlq.*` or
/// earlier `eip.redrive.*` header, then `eip.redrive.count`, `eip.redrive.from` and
/// `eip.redrive.at`.
pub fn redriven_headers(dlq: &str, m: &Move, at: OffsetDateTime) -> Vec<(String, Option<Bytes>)> {
    let mut out: Vec<(String, Option<Bytes>)> = m
        .record
        .headers
        .iter()
        .filter(|(k, _)| {
            !k.starts_with(DLQ_HEADER_PREFIX)
                && ![REDRIVE_COUNT, REDRIVE_FROM, REDRIVE_AT].contains(&k.as_str())
        })
        .cloned()
        .collect();
    out.push((REDRIVE_COUNT.into(), Some(Bytes::from(m.count.to_string()))));
    out.push((
        REDRIVE_FROM.into(),
        Some(Bytes::from(format!(
            "{dlq}/{}/{}",
            m.record.partition, m.record.offset
        ))),
    ));
    out.push((REDRIVE_AT.into(), Some(Bytes::from(rfc3339(at)))));
    out
}

/// One record moved (or, in a dry run, that would move).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Moved {
    /// Partition in the DLQ.
    pub partition: i32,
    /// Offset in the DLQ.
    pub offset: i64,
    /// Where it went.
    pub target: String,
    /// Its new `eip.redrive.count`.
    pub redrive_count: u32,
}

/// What `redrive` did, exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedriveReport {
    /// The DLQ topic.
    pub topic: String,
    /// Its ledger topic.
    pub ledger: String,
    /// True when nothing was produced: `moved` is what would have moved.
    pub dry_run: bool,
    /// Records read from the DLQ.
    pub scanned: usize,
    /// Records moved, by target topic.
    pub moved: BTreeMap<String, usize>,
    /// Every record moved.
    pub moved_records: Vec<Moved>,
    /// Records skipped because the ledger says they were redriven already.
    pub already_redriven: Vec<DlqPosition>,
    /// Records refused by the loop guard.
    pub refused: Vec<Refused>,
    /// The loop guard's limit.
    pub max_redrives: u32,
    /// Records the filter left out.
    pub filtered_out: usize,
}

impl RedriveReport {
    /// Total records moved.
    pub fn moved_total(&self) -> usize {
        self.moved_records.len()
    }

    /// The report for people, one fact per line.
    pub fn lines(&self) -> Vec<String> {
        let verb = if self.dry_run {
            "dry run: would move"
        } else {
            "moved"
        };
        let mut out = vec![format!(
            "redrive from {} ({} records read, ledger {})",
            self.topic, self.scanned, self.ledger
        )];
        let per_topic: Vec<String> = self
            .moved
            .iter()
            .map(|(t, n)| format!("{n} to {t}"))
            .collect();
        out.push(if per_topic.is_empty() {
            format!("{verb} 0")
        } else {
            format!("{verb} {}: {}", self.moved_total(), per_topic.join(", "))
        });
        let positions = |ps: &mut dyn Iterator<Item = String>| ps.collect::<Vec<_>>().join(", ");
        out.push(if self.already_redriven.is_empty() {
            "already redriven 0".into()
        } else {
            format!(
                "already redriven {} (skipped): {}",
                self.already_redriven.len(),
                positions(&mut self.already_redriven.iter().map(|p| p.to_string()))
            )
        });
        out.push(if self.refused.is_empty() {
            format!(
                "refused by the loop guard (--max-redrives {}) 0",
                self.max_redrives
            )
        } else {
            format!(
                "refused by the loop guard (--max-redrives {}) {}: {}",
                self.max_redrives,
                self.refused.len(),
                positions(&mut self.refused.iter().map(|r| format!(
                    "{}@{} (eip.redrive.count {})",
                    r.partition,
                    r.offset,
                    r.redrive_count
                        .map_or_else(|| "unreadable".to_string(), |n| n.to_string())
                )))
            )
        });
        out.push(format!("filtered out {}", self.filtered_out));
        out
    }
}

pub(super) fn report(topic: &str, plan: &Plan, opts: &RedriveOptions) -> RedriveReport {
    let mut moved = BTreeMap::new();
    for m in &plan.moves {
        *moved.entry(m.target.clone()).or_insert(0) += 1;
    }
    RedriveReport {
        topic: topic.to_string(),
        ledger: ledger_topic(topic),
        dry_run: opts.dry_run,
        scanned: plan.scanned,
        moved,
        moved_records: plan
            .moves
            .iter()
            .map(|m| Moved {
                partition: m.record.partition,
                offset: m.record.offset,
                target: m.target.clone(),
                redrive_count: m.count,
            })
            .collect(),
        already_redriven: plan.already_redriven.clone(),
        refused: plan.refused.clone(),
        max_redrives: opts.max_redrives,
        filtered_out: plan.filtered_out,
    }
}
