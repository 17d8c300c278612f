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

use crate::views::{Row, Sort, Table, Type, Value};

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
    cql_buckets: None,
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
        col("version", Type::Int),
    ],
    partition: 1,
    clustering: &[Sort::Asc, Sort::Asc],
    cql_buckets: None,
};

/// Every saga table.
pub const SAGA_TABLES: [&Table; 4] = [
    &SAGAS,
    &SAGAS_BY_STATUS,
    &SAGAS_BY_CORRELATION,
    &SAGA_EVENTS,
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
}

fn text_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_default()
}

/// The rows of `s` in the saga tables other than its events.
pub fn saga_rows(s: &SagaView) -> Vec<Row> {
    let v = s.version;
    vec![
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
    ]
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
            Value::Int(1),
        ],
    }
}

/// Creates the saga tables (version 1) and their plain-name views, if missing.
pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    for table in SAGA_TABLES {
        conn.execute_batch(&table.sqlite_ddl(1))?;
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

/// The events of saga `id` in time order, from `table`.
pub fn read_events(
    conn: &Connection,
    table: &str,
    id: &str,
) -> rusqlite::Result<Vec<SagaEventView>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT saga_id, occurred_at, event_id, event_type, correlation_id, causation_id, topic,
                kafka_partition, kafka_offset, reason, reason_code, step, actor
         FROM {table} WHERE saga_id = ?1 ORDER BY occurred_at, event_id"
    ))?;
    let rows = stmt.query_map([id], |r| {
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
        })
    })?;
    rows.collect()
}

/// Up to `limit` sagas of `status`, stalest first, after the saga `after` (its updated_at
/// and id) when paging.
pub fn list(
    conn: &Connection,
    status: &str,
    after: Option<(i64, &str)>,
    limit: u32,
) -> rusqlite::Result<Vec<SagaView>> {
    let ids: Vec<String> = match after {
        None => conn
            .prepare_cached(
                "SELECT saga_id FROM sagas_by_status WHERE status = ?1
                 ORDER BY updated_at, saga_id LIMIT ?2",
            )?
            .query_map(params![status, limit], |r| r.get(0))?
            .collect::<Result<_, _>>()?,
        Some((at, id)) => conn
            .prepare_cached(
                "SELECT saga_id FROM sagas_by_status WHERE status = ?1
                 AND (updated_at > ?2 OR (updated_at = ?2 AND saga_id > ?3))
                 ORDER BY updated_at, saga_id LIMIT ?4",
            )?
            .query_map(params![status, at, id, limit], |r| r.get(0))?
            .collect::<Result<_, _>>()?,
    };
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(s) = read_saga(conn, "sagas", &id)? {
            out.push(s);
        }
    }
    Ok(out)
}

/// The ids of the sagas of correlation id `correlation_id`.
pub fn by_correlation(conn: &Connection, correlation_id: &str) -> rusqlite::Result<Vec<String>> {
    conn.prepare_cached(
        "SELECT saga_id FROM sagas_by_correlation WHERE correlation_id = ?1 ORDER BY saga_id",
    )?
    .query_map([correlation_id], |r| r.get(0))?
    .collect()
}

/// How many sagas have each status.
pub fn counts(conn: &Connection) -> rusqlite::Result<Vec<(String, i64)>> {
    conn.prepare_cached("SELECT status, COUNT(*) FROM sagas GROUP BY status ORDER BY status")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

/// Failures grouped by step and code, most frequent first.
pub fn failures(conn: &Connection) -> rusqlite::Result<Vec<(String, String, i64)>> {
    conn.prepare_cached(
        "SELECT failed_step, COALESCE(failure_code, ''), COUNT(*) FROM sagas
         WHERE failed_step IS NOT NULL GROUP BY failed_step, failure_code
         ORDER BY COUNT(*) DESC, failed_step",
    )?
    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
    .collect()
}

/// How many events of each type the sagas hold.
pub fn event_types(conn: &Connection) -> rusqlite::Result<Vec<(String, i64)>> {
    conn.prepare_cached("SELECT event_type, COUNT(*) FROM saga_events GROUP BY event_type")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}
