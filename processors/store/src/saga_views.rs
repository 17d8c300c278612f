//! The saga monitor's views, defined once with [`crate::views::Table`] like the order views:
//! every saga's state by id, the sagas of each status stalest first (the stuck list), the
//! sagas of a correlation id, and each saga's events in time order. The monitor computes the
//! rows a saga's state stands for ([`saga_rows`], [`event_row`]) and [`crate::views::diff`]
//! turns two states' rows into writes, as the projector does.
//!
//! The SQLite side ([`migrate`], [`read_saga`], [`list`], ...) is what `eipctl saga`, the
//! monitor's HTTP API and its dashboard read: plain tables an analyst can query too.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::views::{Buckets, Row, Sort, Table, Type, Value};

const fn col(name: &'static str, ty: Type) -> crate::views::Column {
    crate::views::Column { name, ty }
}

/// Every saga's state, by saga id.
pub const SAGAS: Table = Table {
    name: "sagas",
    columns: &[
        col("saga_id", Type::Text),
        col("saga", Type::Text),
        col("status", Type::Text),
        col("step", Type::Text),
        col("expect", Type::Text),
        col("remaining", Type::Text),
        col("failed_step", Type::Text),
        col("failure_reason", Type::Text),
        col("failure_code", Type::Text),
        col("correlation_id", Type::Text),
        col("started_at", Type::Int),
        col("updated_at", Type::Int),
        col("deadline_at", Type::Int),
        col("flags", Type::Text),
        col("path", Type::Text),
        col("monitor_partition", Type::Int),
        col("version", Type::Int),
    ],
    partition: 1,
    clustering: &[],
    cql_buckets: None,
};

/// The sagas of each status, stalest (least recently changed) first.
pub const SAGAS_BY_STATUS: Table = Table {
    name: "sagas_by_status",
    columns: &[
        col("status", Type::Text),
        col("updated_at", Type::Int),
        col("saga_id", Type::Text),
        col("step", Type::Text),
        col("version", Type::Int),
    ],
    partition: 1,
    clustering: &[Sort::Asc, Sort::Asc],
    // On CQL one status (`completed`) would grow into one unbounded partition: it is spread
    // over buckets by saga id, and a page merges them.
    cql_buckets: Some(Buckets {
        by: "saga_id",
        count: 16,
    }),
};

/// The sagas of each correlation id.
pub const SAGAS_BY_CORRELATION: Table = Table {
    name: "sagas_by_correlation",
    columns: &[
        col("correlation_id", Type::Text),
        col("saga_id", Type::Text),
        col("version", Type::Int),
    ],
    partition: 1,
    clustering: &[Sort::Asc],
    cql_buckets: None,
};

/// Each saga's events, in time order.
pub const SAGA_EVENTS: Table = Table {
    name: "saga_events",
    columns: &[
        col("saga_id", Type::Text),
        col("occurred_at", Type::Int),
        col("event_id", Type::Text),
        col("event_type", Type::Text),
        col("correlation_id", Type::Text),
        col("causation_id", Type::Text),
        col("topic", Type::Text),
        col("kafka_partition", Type::Int),
        col("kafka_offset", Type::Int),
        col("reason", Type::Text),
        col("reason_code", Type::Text),
        col("step", Type::Text),
        col("actor", Type::Text),
        col("folded_at", Type::Int),
        col("version", Type::Int),
    ],
    partition: 1,
    clustering: &[Sort::Asc, Sort::Asc],
    cql_buckets: None,
};

/// The next deadline of each saga that has one, by the monitor partition that owns the
/// saga: what a new owner of the partition restores its timers from, on whichever machine.
pub const SAGA_DEADLINES: Table = Table {
    name: "saga_deadlines",
    columns: &[
        col("monitor_partition", Type::Int),
        col("saga_id", Type::Text),
        col("deadline_at", Type::Int),
        col("version", Type::Int),
    ],
    partition: 1,
    clustering: &[Sort::Asc],
    cql_buckets: None,
};

/// Each monitor partition's running totals ([`SagaStats`]) and the last observation offset
/// they count: the counts per status, the failures by step and code, and the step events
/// seen. A reader adds up one small partition of rows instead of counting every saga.
pub const SAGA_STATS: Table = Table {
    name: "saga_stats",
    columns: &[
        col("saga", Type::Text),
        col("monitor_partition", Type::Int),
        col("stats", Type::Text),
        col("through", Type::Int),
        col("version", Type::Int),
    ],
    partition: 1,
    clustering: &[Sort::Asc],
    cql_buckets: None,
};

/// Every saga table.
pub const SAGA_TABLES: [&Table; 6] = [
    &SAGAS,
    &SAGAS_BY_STATUS,
    &SAGAS_BY_CORRELATION,
    &SAGA_EVENTS,
    &SAGA_DEADLINES,
    &SAGA_STATS,
];

/// A saga as the views hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaView {
    /// The saga (order) id.
    pub saga_id: String,
    /// The definition's name.
    pub saga: String,
    /// running, completed, compensating, compensated or stuck.
    pub status: String,
    /// The step in progress, failed or being undone.
    pub step: Option<String>,
    /// What it waits for (`outcome:step`, `compensation:step`, `end`, ...).
    pub expect: Option<String>,
    /// The steps not reached yet, in order.
    pub remaining: Vec<String>,
    /// The step that failed.
    pub failed_step: Option<String>,
    /// Its reason.
    pub failure_reason: Option<String>,
    /// Its code.
    pub failure_code: Option<String>,
    /// The correlation id.
    pub correlation_id: String,
    /// When it started (ms since the Unix epoch).
    pub started_at: Option<i64>,
    /// When it last moved.
    pub updated_at: i64,
    /// Its next deadline.
    pub deadline_at: Option<i64>,
    /// Oddities the monitor noticed.
    pub flags: Vec<String>,
    /// The expected path as it went, as JSON (steps with their states and times).
    pub path: serde_json::Value,
    /// The monitor partition that owns it.
    pub monitor_partition: i64,
    /// How many events it has: only grows.
    pub version: i64,
}

/// One event of a saga as the views hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaEventView {
    /// The saga.
    pub saga_id: String,
    /// When it happened.
    pub occurred_at: i64,
    /// Its id.
    pub event_id: String,
    /// Its full Avro name (or the monitor's own mark).
    pub event_type: String,
    /// Its correlation id.
    pub correlation_id: String,
    /// What caused it.
    pub causation_id: Option<String>,
    /// Where it was published.
    pub topic: String,
    /// Its partition.
    pub partition: i64,
    /// Its offset.
    pub offset: i64,
    /// A failure's or compensation's reason.
    pub reason: Option<String>,
    /// A failure's code.
    pub reason_code: Option<String>,
    /// The step a timeout or an operator action is about.
    pub step: Option<String>,
    /// Who did an operator action.
    pub actor: Option<String>,
    /// The offset of the observation that first folded it into the saga, on the monitor
    /// partition that owns the saga (None in files from before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folded_at: Option<i64>,
}

fn text_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_default()
}

/// The rows of `s` in the saga tables other than its events.
pub fn saga_rows(s: &SagaView) -> Vec<Row> {
    let v = s.version;
    let mut rows = vec![
        Row {
            table: &SAGAS,
            values: vec![
                s.saga_id.as_str().into(),
                s.saga.as_str().into(),
                s.status.as_str().into(),
                s.step.clone().into(),
                s.expect.clone().into(),
                text_list(&s.remaining).into(),
                s.failed_step.clone().into(),
                s.failure_reason.clone().into(),
                s.failure_code.clone().into(),
                s.correlation_id.as_str().into(),
                s.started_at.into(),
                s.updated_at.into(),
                s.deadline_at.into(),
                text_list(&s.flags).into(),
                s.path.to_string().into(),
                s.monitor_partition.into(),
                v.into(),
            ],
        },
        Row {
            table: &SAGAS_BY_STATUS,
            values: vec![
                s.status.as_str().into(),
                s.updated_at.into(),
                s.saga_id.as_str().into(),
                s.step.clone().into(),
                v.into(),
            ],
        },
        Row {
            table: &SAGAS_BY_CORRELATION,
            values: vec![
                s.correlation_id.as_str().into(),
                s.saga_id.as_str().into(),
                v.into(),
            ],
        },
    ];
    if let Some(at) = s.deadline_at {
        rows.push(Row {
            table: &SAGA_DEADLINES,
            values: vec![
                s.monitor_partition.into(),
                s.saga_id.as_str().into(),
                at.into(),
                v.into(),
            ],
        });
    }
    rows
}

/// The row of one event (immutable: version 1).
pub fn event_row(e: &SagaEventView) -> Row {
    Row {
        table: &SAGA_EVENTS,
        values: vec![
            e.saga_id.as_str().into(),
            e.occurred_at.into(),
            e.event_id.as_str().into(),
            e.event_type.as_str().into(),
            e.correlation_id.as_str().into(),
            e.causation_id.clone().into(),
            e.topic.as_str().into(),
            e.partition.into(),
            e.offset.into(),
            e.reason.clone().into(),
            e.reason_code.clone().into(),
            e.step.clone().into(),
            e.actor.clone().into(),
            e.folded_at.into(),
            Value::Int(1),
        ],
    }
}

/// Creates the saga tables (version 1) and their plain-name views, if missing.
pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    // One transaction: monitors that open a file together (or one from before `folded_at`)
    // must not both add the column.
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let migrated = migrate_in_transaction(conn);
    match migrated {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn migrate_in_transaction(conn: &Connection) -> rusqlite::Result<()> {
    for table in SAGA_TABLES {
        conn.execute_batch(&table.sqlite_ddl(1))?;
    }
    // Files from before the fold offset was kept: the column is added (NULL: folded).
    let events = SAGA_EVENTS.physical(1);
    let has_folded_at = conn
        .prepare(&format!(
            "SELECT 1 FROM pragma_table_info('{events}') WHERE name = 'folded_at'"
        ))?
        .exists([])?;
    if !has_folded_at {
        conn.execute_batch(&format!(
            "ALTER TABLE {events} ADD COLUMN folded_at INTEGER"
        ))?;
    }
    for table in SAGA_TABLES {
        crate::view_sqlite::ensure_alias(conn, table, 1)?;
    }
    Ok(())
}

const SAGA_COLUMNS: &str = "saga_id, saga, status, step, expect, remaining, failed_step, \
     failure_reason, failure_code, correlation_id, started_at, updated_at, deadline_at, flags, \
     path, monitor_partition, version";

fn saga_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<SagaView> {
    let list = |s: String| serde_json::from_str::<Vec<String>>(&s).unwrap_or_default();
    Ok(SagaView {
        saga_id: r.get(0)?,
        saga: r.get(1)?,
        status: r.get(2)?,
        step: r.get(3)?,
        expect: r.get(4)?,
        remaining: list(r.get(5)?),
        failed_step: r.get(6)?,
        failure_reason: r.get(7)?,
        failure_code: r.get(8)?,
        correlation_id: r.get(9)?,
        started_at: r.get(10)?,
        updated_at: r.get(11)?,
        deadline_at: r.get(12)?,
        flags: list(r.get(13)?),
        path: serde_json::from_str(&r.get::<_, String>(14)?).unwrap_or_default(),
        monitor_partition: r.get(15)?,
        version: r.get(16)?,
    })
}

/// The saga `id`, from the table `table` (the physical one for the monitor, `sagas` for
/// readers).
pub fn read_saga(conn: &Connection, table: &str, id: &str) -> rusqlite::Result<Option<SagaView>> {
    conn.prepare_cached(&format!(
        "SELECT {SAGA_COLUMNS} FROM {table} WHERE saga_id = ?1"
    ))?
    .query_row([id], saga_of)
    .optional()
}

/// The events of saga `id` in time order, from `table`; with `through`, only those folded
/// at or before that observation offset (see [`SagaStats`]).
pub fn read_events(
    conn: &Connection,
    table: &str,
    id: &str,
    through: Option<i64>,
) -> rusqlite::Result<Vec<SagaEventView>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT saga_id, occurred_at, event_id, event_type, correlation_id, causation_id, topic,
                kafka_partition, kafka_offset, reason, reason_code, step, actor, folded_at
         FROM {table} WHERE saga_id = ?1
           AND (?2 IS NULL OR folded_at IS NULL OR folded_at <= ?2)
         ORDER BY occurred_at, event_id"
    ))?;
    let rows = stmt.query_map(params![id, through], |r| {
        Ok(SagaEventView {
            saga_id: r.get(0)?,
            occurred_at: r.get(1)?,
            event_id: r.get(2)?,
            event_type: r.get(3)?,
            correlation_id: r.get(4)?,
            causation_id: r.get(5)?,
            topic: r.get(6)?,
            partition: r.get(7)?,
            offset: r.get(8)?,
            reason: r.get(9)?,
            reason_code: r.get(10)?,
            step: r.get(11)?,
            actor: r.get(12)?,
            folded_at: r.get(13)?,
        })
    })?;
    rows.collect()
}

/// A page of sagas, and the key (updated_at, saga id) the next page starts after, when the
/// page is full.
pub type SagaPage = (Vec<SagaView>, Option<(i64, String)>);

/// Up to `limit` sagas of `status`, stalest first, after the saga `after` (its updated_at
/// and id) when paging, and the key of the page's last entry when the page is full (the next
/// page starts after it).
pub fn list(
    conn: &Connection,
    status: &str,
    after: Option<(i64, &str)>,
    limit: u32,
) -> rusqlite::Result<SagaPage> {
    let keys: Vec<(i64, String)> = match after {
        None => conn
            .prepare_cached(
                "SELECT updated_at, saga_id FROM sagas_by_status WHERE status = ?1
                 ORDER BY updated_at, saga_id LIMIT ?2",
            )?
            .query_map(params![status, limit], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?,
        Some((at, id)) => conn
            .prepare_cached(
                "SELECT updated_at, saga_id FROM sagas_by_status WHERE status = ?1
                 AND (updated_at > ?2 OR (updated_at = ?2 AND saga_id > ?3))
                 ORDER BY updated_at, saga_id LIMIT ?4",
            )?
            .query_map(params![status, at, id, limit], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?,
    };
    let next = (keys.len() == limit as usize)
        .then(|| keys.last().cloned())
        .flatten();
    let mut out = Vec::with_capacity(keys.len());
    for (_, id) in keys {
        if let Some(s) = read_saga(conn, "sagas", &id)? {
            out.push(s);
        }
    }
    Ok((out, next))
}

/// The ids of the sagas of correlation id `correlation_id`.
pub fn by_correlation(conn: &Connection, correlation_id: &str) -> rusqlite::Result<Vec<String>> {
    conn.prepare_cached(
        "SELECT saga_id FROM sagas_by_correlation WHERE correlation_id = ?1 ORDER BY saga_id",
    )?
    .query_map([correlation_id], |r| r.get(0))?
    .collect()
}

/// The deadlines of monitor partition `partition`'s sagas: (saga id, when).
pub fn deadlines(conn: &Connection, partition: i64) -> rusqlite::Result<Vec<(String, i64)>> {
    conn.prepare_cached(
        "SELECT saga_id, deadline_at FROM saga_deadlines WHERE monitor_partition = ?1
         ORDER BY saga_id",
    )?
    .query_map([partition], |r| Ok((r.get(0)?, r.get(1)?)))?
    .collect()
}

fn bad_stats(reason: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        Box::new(std::io::Error::other(reason)),
    )
}

/// The totals of every monitor partition of saga `saga`, added up.
pub fn stats(conn: &Connection, saga: &str) -> rusqlite::Result<SagaStats> {
    let mut total = SagaStats::default();
    let mut stmt = conn.prepare_cached("SELECT stats FROM saga_stats WHERE saga = ?1")?;
    for json in stmt.query_map([saga], |r| r.get::<_, String>(0))? {
        total.add(&SagaStats::parse(&json?).map_err(bad_stats)?);
    }
    Ok(total)
}

/// One monitor partition's totals and the observation offset they count through, from
/// `table` (the physical one for the monitor).
pub fn partition_stats(
    conn: &Connection,
    table: &str,
    saga: &str,
    partition: i64,
) -> rusqlite::Result<Option<(SagaStats, i64)>> {
    conn.prepare_cached(&format!(
        "SELECT stats, through FROM {table} WHERE saga = ?1 AND monitor_partition = ?2"
    ))?
    .query_row(params![saga, partition], |r| {
        Ok((
            SagaStats::parse(&r.get::<_, String>(0)?).map_err(bad_stats)?,
            r.get(1)?,
        ))
    })
    .optional()
}

/// One monitor partition's totals counted from its sagas, for a file written before the
/// totals were kept: the statuses and failures of its sagas, and their events by type.
pub fn count_partition(conn: &Connection, partition: i64) -> rusqlite::Result<SagaStats> {
    let (sagas, events) = (SAGAS.physical(1), SAGA_EVENTS.physical(1));
    let mut stats = SagaStats::default();
    let mut stmt = conn.prepare(&format!(
        "SELECT status, COUNT(*) FROM {sagas} WHERE monitor_partition = ?1 GROUP BY status"
    ))?;
    for row in stmt.query_map([partition], |r| Ok((r.get(0)?, r.get(1)?)))? {
        let (status, n): (String, i64) = row?;
        stats.statuses.insert(status, n);
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT failed_step, COALESCE(failure_code, ''), COUNT(*) FROM {sagas}
         WHERE monitor_partition = ?1 AND failed_step IS NOT NULL
         GROUP BY failed_step, failure_code"
    ))?;
    for row in stmt.query_map([partition], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))? {
        let (step, code, n): (String, String, i64) = row?;
        *stats
            .failures
            .entry(step)
            .or_default()
            .entry(code)
            .or_default() += n;
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT e.event_type, COUNT(*) FROM {events} e JOIN {sagas} s USING (saga_id)
         WHERE s.monitor_partition = ?1 GROUP BY e.event_type"
    ))?;
    for row in stmt.query_map([partition], |r| Ok((r.get(0)?, r.get(1)?)))? {
        let (event_type, n): (String, i64) = row?;
        stats.events.insert(event_type, n);
    }
    Ok(stats)
}

/// The running totals of the sagas of one monitor partition (or, added up, of all): kept by
/// the monitor as it folds, in the same commit as the rows they count, with the offset of
/// the last observation they count (`through`). On a store with no transaction (CQL), a
/// commit that stopped half-way leaves rows of observations after `through`: the monitor
/// reads a saga as of `through` (its events folded at or before it), so folding those
/// observations again counts each exactly once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaStats {
    /// Sagas per status.
    #[serde(default)]
    pub statuses: std::collections::BTreeMap<String, i64>,
    /// Sagas that failed, by failed step and failure code (`""` for none).
    #[serde(default)]
    pub failures: std::collections::BTreeMap<String, std::collections::BTreeMap<String, i64>>,
    /// Events seen, by type: the declared step events.
    #[serde(default)]
    pub events: std::collections::BTreeMap<String, i64>,
}

fn bump(map: &mut std::collections::BTreeMap<String, i64>, key: &str, by: i64) {
    let n = map.entry(key.to_string()).or_default();
    *n += by;
    if *n == 0 {
        map.remove(key);
    }
}

impl SagaStats {
    /// Totals from their stored JSON.
    pub fn parse(json: &str) -> Result<SagaStats, String> {
        serde_json::from_str(json).map_err(|e| format!("unreadable saga totals {json:?}: {e}"))
    }

    /// The stored JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Adds `other` in.
    pub fn add(&mut self, other: &SagaStats) {
        for (k, n) in &other.statuses {
            bump(&mut self.statuses, k, *n);
        }
        for (step, codes) in &other.failures {
            let mine = self.failures.entry(step.clone()).or_default();
            for (code, n) in codes {
                bump(mine, code, *n);
            }
            if mine.is_empty() {
                self.failures.remove(step);
            }
        }
        for (k, n) in &other.events {
            bump(&mut self.events, k, *n);
        }
    }

    /// A saga moved from `before` (None: not shown yet) to `after`.
    pub fn moved(&mut self, before: Option<&SagaView>, after: &SagaView) {
        let failure = |s: &SagaView| {
            s.failed_step
                .clone()
                .map(|step| (step, s.failure_code.clone().unwrap_or_default()))
        };
        if let Some(b) = before {
            bump(&mut self.statuses, &b.status, -1);
            if let Some((step, code)) = failure(b) {
                self.fail(&step, &code, -1);
            }
        }
        bump(&mut self.statuses, &after.status, 1);
        if let Some((step, code)) = failure(after) {
            self.fail(&step, &code, 1);
        }
    }

    fn fail(&mut self, step: &str, code: &str, by: i64) {
        let codes = self.failures.entry(step.to_string()).or_default();
        bump(codes, code, by);
        if codes.is_empty() {
            self.failures.remove(step);
        }
    }

    /// An event of type `event_type` was seen.
    pub fn saw(&mut self, event_type: &str) {
        bump(&mut self.events, event_type, 1);
    }

    /// Sagas per status, by status.
    pub fn counts(&self) -> Vec<(String, i64)> {
        self.statuses.iter().map(|(k, n)| (k.clone(), *n)).collect()
    }

    /// Failures grouped by step and code, most frequent first.
    pub fn failure_groups(&self) -> Vec<(String, String, i64)> {
        let mut out: Vec<(String, String, i64)> = self
            .failures
            .iter()
            .flat_map(|(step, codes)| {
                codes
                    .iter()
                    .map(move |(code, n)| (step.clone(), code.clone(), *n))
            })
            .collect();
        out.sort_by(|a, b| {
            b.2.cmp(&a.2)
                .then_with(|| a.0.cmp(&b.0))
                .then_with(|| a.1.cmp(&b.1))
        });
        out
    }
}

/// The row of one monitor partition's totals, counting through observation offset
/// `through` (its version: a later commit's row replaces an earlier one, never the reverse).
pub fn stats_row(saga: &str, partition: i64, stats: &SagaStats, through: i64) -> Row {
    Row {
        table: &SAGA_STATS,
        values: vec![
            saga.into(),
            partition.into(),
            stats.to_json().into(),
            through.into(),
            through.saturating_add(1).into(),
        ],
    }
}
