//! What a redrive would do, as a pure function of the records read: which dead letters move
//! where with which headers, and which are refused (loop guard, already in the ledger, no
//! target), and the report of it. No I/O here.

use std::collections::BTreeMap;

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
    /// Dead letters read, planned and moved (in one transaction) at a time; see
    /// [`DEFAULT_CHUNK_RECORDS`].
    pub chunk_records: usize,
}

impl Default for RedriveOptions {
    fn default() -> RedriveOptions {
        RedriveOptions {
            to: None,
            max_redrives: DEFAULT_MAX_REDRIVES,
            dry_run: false,
            chunk_records: DEFAULT_CHUNK_RECORDS,
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

/// Decides what happens to each of `records` (one chunk of the DLQ): filtered out, already
/// in the `ledger`, refused by the loop guard, or moved to `--to` or its source topic.
///
/// A selected record with neither a source topic nor `--to` is an error for the whole run
/// (redrive plans every chunk before it produces anything), so no record is silently skipped.
pub fn plan(
    records: &[ReadRecord],
    ledger: &Ledger,
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
        if ledger.contains(r) {
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
        let more = unroutable.len().saturating_sub(SHOWN_POSITIONS);
        unroutable.truncate(SHOWN_POSITIONS);
        return Err(OpsError::Unroutable(format!(
            "{} selected record(s) have no {} header ({}{}); pass --to or narrow the filter",
            unroutable.len() + more,
            headers::SOURCE_TOPIC,
            unroutable.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
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

/// Positions a report's text line or an error names, at most; the rest are counted.
const SHOWN_POSITIONS: usize = 20;

/// What `redrive` did, exactly. The lists hold at most [`REPORT_LIMIT`] positions each (the
/// first in (partition, offset) order); the counts are always whole.
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
    /// How many records moved.
    pub moved_total: usize,
    /// The first records moved.
    pub moved_records: Vec<Moved>,
    /// How many records were skipped because the ledger says they were redriven already.
    pub already_redriven_total: usize,
    /// The first of them.
    pub already_redriven: Vec<DlqPosition>,
    /// How many records the loop guard refused.
    pub refused_total: usize,
    /// The first of them.
    pub refused: Vec<Refused>,
    /// The loop guard's limit.
    pub max_redrives: u32,
    /// Records the filter left out.
    pub filtered_out: usize,
    /// Chunks moved, one Kafka transaction each (0 in a dry run).
    pub chunks: usize,
}

/// Appends `more` to `list`, keeping the first [`REPORT_LIMIT`] by `key`.
fn keep_first<T, K: Ord>(list: &mut Vec<T>, more: impl IntoIterator<Item = T>, key: fn(&T) -> K) {
    list.extend(more);
    list.sort_by_key(key);
    list.truncate(REPORT_LIMIT);
}

impl RedriveReport {
    /// An empty report of a redrive of `topic` run with `opts`.
    pub fn new(topic: &str, opts: &RedriveOptions) -> RedriveReport {
        RedriveReport {
            topic: topic.to_string(),
            ledger: ledger_topic(topic),
            dry_run: opts.dry_run,
            scanned: 0,
            moved: BTreeMap::new(),
            moved_total: 0,
            moved_records: Vec::new(),
            already_redriven_total: 0,
            already_redriven: Vec::new(),
            refused_total: 0,
            refused: Vec::new(),
            max_redrives: opts.max_redrives,
            filtered_out: 0,
            chunks: 0,
        }
    }

    /// Adds what the plan of one chunk does.
    pub fn add(&mut self, plan: &Plan) {
        self.scanned += plan.scanned;
        self.filtered_out += plan.filtered_out;
        for m in &plan.moves {
            *self.moved.entry(m.target.clone()).or_insert(0) += 1;
        }
        self.moved_total += plan.moves.len();
        keep_first(
            &mut self.moved_records,
            plan.moves.iter().map(|m| Moved {
                partition: m.record.partition,
                offset: m.record.offset,
                target: m.target.clone(),
                redrive_count: m.count,
            }),
            |m| (m.partition, m.offset),
        );
        self.already_redriven_total += plan.already_redriven.len();
        keep_first(
            &mut self.already_redriven,
            plan.already_redriven.iter().copied(),
            |p| *p,
        );
        self.refused_total += plan.refused.len();
        keep_first(&mut self.refused, plan.refused.iter().cloned(), |r| {
            (r.partition, r.offset)
        });
    }

    /// Total records moved.
    pub fn moved_total(&self) -> usize {
        self.moved_total
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
            format!("{verb} {}: {}", self.moved_total, per_topic.join(", "))
        });
        let positions = |total: usize, ps: &mut dyn Iterator<Item = String>| {
            let shown: Vec<String> = ps.take(SHOWN_POSITIONS).collect();
            let more = total.saturating_sub(shown.len());
            if more > 0 {
                format!("{} and {more} more", shown.join(", "))
            } else {
                shown.join(", ")
            }
        };
        out.push(if self.already_redriven_total == 0 {
            "already redriven 0".into()
        } else {
            format!(
                "already redriven {} (skipped): {}",
                self.already_redriven_total,
                positions(
                    self.already_redriven_total,
                    &mut self.already_redriven.iter().map(|p| p.to_string())
                )
            )
        });
        out.push(if self.refused_total == 0 {
            format!(
                "refused by the loop guard (--max-redrives {}) 0",
                self.max_redrives
            )
        } else {
            format!(
                "refused by the loop guard (--max-redrives {}) {}: {}",
                self.max_redrives,
                self.refused_total,
                positions(
                    self.refused_total,
                    &mut self.refused.iter().map(|r| format!(
                        "{}@{} (eip.redrive.count {})",
                        r.partition,
                        r.offset,
                        r.redrive_count
                            .map_or_else(|| "unreadable".to_string(), |n| n.to_string())
                    ))
                )
            )
        });
        out.push(format!("filtered out {}", self.filtered_out));
        out
    }
}
