//! The saga monitor's views on CQL: the reads of [`crate::saga_views`]' tables, prepared
//! once at connect like the order views' (its writes are [`crate::view_store::ViewStore::apply`]'s,
//! newest wins by version). Every read names one partition, except a status page, which
//! reads the status's buckets and merges them.

use futures_util::StreamExt;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};

use crate::saga_views::{
    SAGA_DEADLINES, SAGA_EVENTS, SAGA_STATS, SAGAS, SAGAS_BY_CORRELATION, SAGAS_BY_STATUS,
    SagaEventView, SagaPage, SagaStats, SagaView,
};
use crate::view_scylla::{ScyllaViews, classify};
use crate::view_store::StoreError;

/// The prepared saga reads.
#[derive(Debug)]
pub(crate) struct SagaReads {
    saga: PreparedStatement,
    events: PreparedStatement,
    status_first: PreparedStatement,
    status_after: PreparedStatement,
    correlation: PreparedStatement,
    stats: PreparedStatement,
    partition_stats: PreparedStatement,
    all_stats: PreparedStatement,
    deadlines: PreparedStatement,
}

const SAGA_COLUMNS: &str = "saga_id, saga, status, step, expect, remaining, failed_step, \
     failure_reason, failure_code, correlation_id, started_at, updated_at, deadline_at, flags, \
     path, monitor_partition, version";

type EventRow = (
    String,
    i64,
    String,
    String,
    String,
    Option<String>,
    String,
    i64,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

fn text(v: Option<&Option<CqlValue>>) -> Option<String> {
    match v {
        Some(Some(CqlValue::Text(s) | CqlValue::Ascii(s))) => Some(s.clone()),
        _ => None,
    }
}

fn int(v: Option<&Option<CqlValue>>) -> Option<i64> {
    match v {
        Some(Some(CqlValue::BigInt(n))) => Some(*n),
        _ => None,
    }
}

fn saga_of(row: &Row) -> SagaView {
    let c = |i: usize| row.columns.get(i);
    let list = |s: Option<String>| {
        s.and_then(|s| serde_json::from_str::<Vec<String>>(&s).ok())
            .unwrap_or_default()
    };
    SagaView {
        saga_id: text(c(0)).unwrap_or_default(),
        saga: text(c(1)).unwrap_or_default(),
        status: text(c(2)).unwrap_or_default(),
        step: text(c(3)),
        expect: text(c(4)),
        remaining: list(text(c(5))),
        failed_step: text(c(6)),
        failure_reason: text(c(7)),
        failure_code: text(c(8)),
        correlation_id: text(c(9)).unwrap_or_default(),
        started_at: int(c(10)),
        updated_at: int(c(11)).unwrap_or_default(),
        deadline_at: int(c(12)),
        flags: list(text(c(13))),
        path: text(c(14))
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default(),
        monitor_partition: int(c(15)).unwrap_or_default(),
        version: int(c(16)).unwrap_or_default(),
    }
}

fn event_of(r: EventRow) -> SagaEventView {
    SagaEventView {
        saga_id: r.0,
        occurred_at: r.1,
        event_id: r.2,
        event_type: r.3,
        correlation_id: r.4,
        causation_id: r.5,
        topic: r.6,
        partition: r.7,
        offset: r.8,
        reason: r.9,
        reason_code: r.10,
        step: r.11,
        actor: r.12,
        folded_at: r.13,
    }
}

impl SagaReads {
    pub(crate) async fn prepare(session: &Session, ks: &str) -> Result<SagaReads, StoreError> {
        let t = |table: &crate::views::Table| format!("{ks}.{}", table.cql_physical(1));
        let prepare = |cql: String| async move {
            session
                .prepare(cql)
                .await
                .map_err(|e| classify("preparing", e.to_string()))
        };
        Ok(SagaReads {
            saga: prepare(format!(
                "SELECT {SAGA_COLUMNS} FROM {} WHERE saga_id = ?",
                t(&SAGAS)
            ))
            .await?,
            events: prepare(format!(
                "SELECT saga_id, occurred_at, event_id, event_type, correlation_id, \
                 causation_id, topic, kafka_partition, kafka_offset, reason, reason_code, step, \
                 actor, folded_at FROM {} WHERE saga_id = ?",
                t(&SAGA_EVENTS)
            ))
            .await?,
            status_first: prepare(format!(
                "SELECT updated_at, saga_id FROM {} WHERE status = ? AND bucket = ? LIMIT ?",
                t(&SAGAS_BY_STATUS)
            ))
            .await?,
            status_after: prepare(format!(
                "SELECT updated_at, saga_id FROM {} WHERE status = ? AND bucket = ? \
                 AND (updated_at, saga_id) > (?, ?) LIMIT ?",
                t(&SAGAS_BY_STATUS)
            ))
            .await?,
            correlation: prepare(format!(
                "SELECT saga_id FROM {} WHERE correlation_id = ?",
                t(&SAGAS_BY_CORRELATION)
            ))
            .await?,
            stats: prepare(format!(
                "SELECT stats FROM {} WHERE saga = ?",
                t(&SAGA_STATS)
            ))
            .await?,
            partition_stats: prepare(format!(
                "SELECT stats, through FROM {} WHERE saga = ? AND monitor_partition = ?",
                t(&SAGA_STATS)
            ))
            .await?,
            // The whole table: one row per saga definition and monitor partition.
            all_stats: prepare(format!(
                "SELECT saga, monitor_partition FROM {}",
                t(&SAGA_STATS)
            ))
            .await?,
            deadlines: prepare(format!(
                "SELECT saga_id, deadline_at FROM {} WHERE monitor_partition = ?",
                t(&SAGA_DEADLINES)
            ))
            .await?,
        })
    }
}

fn limit(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl ScyllaViews {
    /// The saga `id`.
    pub async fn saga(&self, id: &str) -> Result<Option<SagaView>, StoreError> {
        let rows: Vec<Row> = self.rows("reading a saga", &self.sagas.saga, (id,)).await?;
        Ok(rows.first().map(saga_of))
    }

    /// The events of saga `id` in time order; with `through`, only those folded at or
    /// before that observation offset.
    pub async fn saga_events(
        &self,
        id: &str,
        through: Option<i64>,
    ) -> Result<Vec<SagaEventView>, StoreError> {
        let rows: Vec<EventRow> = self
            .rows("reading a saga's events", &self.sagas.events, (id,))
            .await?;
        Ok(rows
            .into_iter()
            .map(event_of)
            .filter(|e| match (through, e.folded_at) {
                (Some(t), Some(at)) => at <= t,
                _ => true,
            })
            .collect())
    }

    /// Up to `n` sagas of `status`, stalest first, after `after` (updated_at and id), and
    /// the key of the page's last entry when the page is full. Each bucket of the status
    /// gives its first `n` after the cursor; the first `n` of all of them are the page.
    pub async fn sagas_by_status(
        &self,
        status: &str,
        after: Option<(i64, &str)>,
        n: u32,
    ) -> Result<SagaPage, StoreError> {
        let what = "reading sagas by status";
        let count = SAGAS_BY_STATUS.cql_buckets.as_ref().map_or(1, |b| b.count);
        let reads = (0..count).map(|bucket| {
            let bucket = i32::try_from(bucket).unwrap_or(0);
            async move {
                let rows: Vec<(i64, String)> = match after {
                    None => {
                        self.rows(what, &self.sagas.status_first, (status, bucket, limit(n)))
                            .await?
                    }
                    Some((at, id)) => {
                        self.rows(
                            what,
                            &self.sagas.status_after,
                            (status, bucket, at, id, limit(n)),
                        )
                        .await?
                    }
                };
                Ok::<_, StoreError>(rows)
            }
        });
        let mut keys = Vec::new();
        for rows in futures_util::future::join_all(reads).await {
            keys.extend(rows?);
        }
        keys.sort();
        keys.truncate(n as usize);
        let next = (keys.len() == n as usize)
            .then(|| keys.last().cloned())
            .flatten();
        let sagas = futures_util::future::join_all(keys.iter().map(|(_, id)| self.saga(id))).await;
        let mut out = Vec::with_capacity(sagas.len());
        for s in sagas {
            out.extend(s?);
        }
        Ok((out, next))
    }

    /// The ids of the sagas of correlation id `id`.
    pub async fn sagas_by_correlation(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = self
            .rows(
                "reading sagas by correlation id",
                &self.sagas.correlation,
                (id,),
            )
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// The totals of every monitor partition of saga `saga`, added up.
    pub async fn saga_stats(&self, saga: &str) -> Result<SagaStats, StoreError> {
        let rows: Vec<(Option<String>,)> = self
            .rows("reading the saga totals", &self.sagas.stats, (saga,))
            .await?;
        let mut total = SagaStats::default();
        for (json,) in rows {
            total.add(
                &SagaStats::parse(json.as_deref().unwrap_or_default())
                    .map_err(StoreError::Permanent)?,
            );
        }
        Ok(total)
    }

    /// One monitor partition's totals and the offset they count through.
    pub async fn saga_partition_stats(
        &self,
        saga: &str,
        partition: i64,
    ) -> Result<Option<(SagaStats, i64)>, StoreError> {
        let rows: Vec<(Option<String>, i64)> = self
            .rows(
                "reading a partition's saga totals",
                &self.sagas.partition_stats,
                (saga, partition),
            )
            .await?;
        match rows.into_iter().next() {
            None => Ok(None),
            Some((json, through)) => Ok(Some((
                SagaStats::parse(json.as_deref().unwrap_or_default())
                    .map_err(StoreError::Permanent)?,
                through,
            ))),
        }
    }

    /// The saga definitions that have totals of monitor partition `partition` (the table is
    /// small: a row per definition and partition).
    pub async fn saga_names_with_totals(&self, partition: i64) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String, i64)> = self
            .rows("reading the saga totals", &self.sagas.all_stats, ())
            .await?;
        Ok(rows
            .into_iter()
            .filter(|(_, p)| *p == partition)
            .map(|(saga, _)| saga)
            .collect())
    }

    /// The deadlines of the sagas of monitor partition `partition` (saga id, when), read a
    /// page at a time.
    pub async fn saga_deadlines(&self, partition: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let what = "reading the saga deadlines";
        let pager = self
            .session
            .execute_iter(self.sagas.deadlines.clone(), (partition,))
            .await
            .map_err(|e| classify(what, e.to_string()))?;
        let mut stream = pager
            .rows_stream::<(String, i64)>()
            .map_err(|e| StoreError::Permanent(format!("{what}: {e}")))?;
        let mut out = Vec::new();
        while let Some(row) = stream.next().await {
            out.push(row.map_err(|e| classify(what, e.to_string()))?);
        }
        Ok(out)
    }
}
