//! The views in ScyllaDB (or any CQL server), written to ScyllaDB's best practice:
//!
//! - every statement is **prepared** once, at connect;
//! - every write is `USING TIMESTAMP` the row's state version, so the newest state wins
//!   whatever order writes land in, and a replay changes nothing;
//! - every statement names its full partition key, so the driver's default policy routes it
//!   **token-aware** to a replica, and **no batch ever spans partitions** (there are no
//!   batches: each row is its own statement);
//! - writes in flight are **bounded** by a semaphore: a caller past the bound waits, which is
//!   the projector's backpressure;
//! - reads are **paged** with the same opaque cursors as SQLite (the last row's key), each
//!   page one single-partition slice;
//! - **migrations** are `CREATE … IF NOT EXISTS`, and the version table's first rows are
//!   lightweight-transaction inserts (`IF NOT EXISTS`), so every replica may run them at
//!   start.
//!
//! Errors are classified: the server refusing the request itself (invalid, syntax,
//! unauthorized) is permanent; everything else (timeouts, unavailable, overloaded, a lost
//! connection) is transient.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;
use tokio::sync::Semaphore;

use crate::saga_views::{SAGA_STATS, SAGA_TABLES};
use crate::view_page::{BadCursor, CustomerOrder, Page, Sales, decode_cursor, encode_cursor};
use crate::view_store::{Paged, StoreError, ViewStore};
use crate::views::{
    COMMAND_STATUS, COMMANDS_BY_CORRELATION, INVENTORY_LEVELS, LevelView, LineView, ORDER_LINES,
    ORDER_SUMMARY, ORDERS_BY_CUSTOMER, OrderView, OutcomeView, PRODUCT_SALES, Table, VIEWS, Value,
    Write, view_of,
};

/// How to reach the cluster.
#[derive(Debug, Clone)]
pub struct ScyllaSettings {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// The keyspace of the views (created if missing).
    pub keyspace: String,
    /// Its replication, as CQL (used only when the keyspace is created).
    pub replication: String,
    /// Writes in flight at most; more wait.
    pub max_in_flight: usize,
    /// How long connecting to a node may take.
    pub connect_timeout: Duration,
    /// For readers: refuse a keyspace that does not exist instead of creating it (a reader
    /// with a mistyped keyspace must not leave an empty one behind).
    pub must_exist: bool,
}

impl ScyllaSettings {
    /// Settings for `nodes` with keyspace `eip`, replication factor 1 and 256 writes in flight.
    pub fn new(nodes: Vec<String>) -> ScyllaSettings {
        ScyllaSettings {
            nodes,
            keyspace: "eip".into(),
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
            max_in_flight: 256,
            connect_timeout: Duration::from_secs(10),
            must_exist: false,
        }
    }
}

pub(crate) fn classify(what: &str, e: impl Into<ExecutionErrorish>) -> StoreError {
    let e = e.into();
    let permanent = matches!(
        &e.0,
        Some(ExecutionError::BadQuery(_))
            | Some(ExecutionError::LastAttemptError(
                RequestAttemptError::DbError(
                    DbError::Invalid
                        | DbError::SyntaxError
                        | DbError::Unauthorized
                        | DbError::ConfigError
                        | DbError::AlreadyExists { .. },
                    _
                )
            ))
    );
    let text = format!("{what}: {}", e.1);
    if permanent {
        StoreError::Permanent(text)
    } else {
        StoreError::Transient(text)
    }
}

/// An error with its execution error when it has one (prepare and schema errors are
/// classified by their text alone, as transient).
pub(crate) struct ExecutionErrorish(Option<ExecutionError>, String);

impl From<ExecutionError> for ExecutionErrorish {
    fn from(e: ExecutionError) -> Self {
        let text = e.to_string();
        ExecutionErrorish(Some(e), text)
    }
}

impl From<String> for ExecutionErrorish {
    fn from(text: String) -> Self {
        ExecutionErrorish(None, text)
    }
}

fn cql(v: &Value) -> Option<CqlValue> {
    match v {
        Value::Null => None,
        Value::Text(s) => Some(CqlValue::Text(s.clone())),
        Value::Int(n) => Some(CqlValue::BigInt(*n)),
        Value::Bool(b) => Some(CqlValue::Boolean(*b)),
    }
}

/// The prepared reads.
#[derive(Debug)]
struct Reads {
    summary: PreparedStatement,
    lines: PreparedStatement,
    customer_first: PreparedStatement,
    customer_same_time: PreparedStatement,
    customer_older: PreparedStatement,
    sales_first: PreparedStatement,
    sales_after: PreparedStatement,
    command: PreparedStatement,
    correlation: PreparedStatement,
    correlation_after: PreparedStatement,
    inventory: PreparedStatement,
}

/// The views in a CQL keyspace. See the module docs.
#[derive(Debug)]
pub struct ScyllaViews {
    pub(crate) session: Session,
    keyspace: String,
    /// Upsert and delete per table name, at the live version.
    writes: HashMap<(&'static str, bool), PreparedStatement>,
    reads: Reads,
    pub(crate) sagas: crate::saga_scylla::SagaReads,
    in_flight: Arc<Semaphore>,
}

impl ScyllaViews {
    /// Connects, runs the migrations and prepares every statement.
    pub async fn connect(settings: &ScyllaSettings) -> Result<ScyllaViews, StoreError> {
        let session = SessionBuilder::new()
            .known_nodes(&settings.nodes)
            .connection_timeout(settings.connect_timeout)
            .build()
            .await
            .map_err(|e| {
                StoreError::Transient(format!("no CQL server at {:?}: {e}", settings.nodes))
            })?;
        let ks = settings.keyspace.clone();
        if settings.must_exist {
            let found = session
                .query_unpaged(
                    "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?",
                    (ks.as_str(),),
                )
                .await
                .map_err(|e| classify("reading the keyspaces", e))?
                .into_rows_result()
                .map_err(|e| StoreError::Permanent(e.to_string()))?
                .rows_num();
            if found == 0 {
                return Err(StoreError::Permanent(format!(
                    "the cluster at {:?} has no keyspace {ks:?}; the projector creates it when                      it first runs with that keyspace",
                    settings.nodes
                )));
            }
        }
        let ddl = |cql: String| {
            let session = &session;
            async move {
                session
                    .query_unpaged(cql.as_str(), ())
                    .await
                    .map_err(|e| classify("migration", e))
            }
        };
        ddl(format!(
            "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}",
            settings.replication
        ))
        .await?;
        ddl(format!(
            "CREATE TABLE IF NOT EXISTS {ks}.view_versions (view_name text PRIMARY KEY, live \
             bigint, building bigint)"
        ))
        .await?;
        let seed = session
            .prepare(format!(
                "INSERT INTO {ks}.view_versions (view_name, live) VALUES (?, 1) IF NOT EXISTS"
            ))
            .await
            .map_err(|e| classify("migration", e.to_string()))?;
        for view in &VIEWS {
            session
                .execute_unpaged(&seed, (view.name,))
                .await
                .map_err(|e| classify("migration", e))?;
        }
        let rows = session
            .query_unpaged(
                format!("SELECT view_name, live FROM {ks}.view_versions"),
                (),
            )
            .await
            .map_err(|e| classify("reading the view versions", e))?
            .into_rows_result()
            .map_err(|e| StoreError::Permanent(e.to_string()))?;
        let mut live: HashMap<String, i64> = HashMap::new();
        for row in rows
            .rows::<(String, Option<i64>)>()
            .map_err(|e| StoreError::Permanent(e.to_string()))?
        {
            let (view, version) = row.map_err(|e| StoreError::Permanent(e.to_string()))?;
            live.insert(view, version.unwrap_or(1));
        }
        let version_of = |t: &Table| live.get(view_of(t).name).copied().unwrap_or(1);
        for view in &VIEWS {
            for table in view.tables {
                ddl(table.cql_ddl(&ks, version_of(table))).await?;
            }
        }
        // The saga monitor's tables: one version, never rebuilt (the monitor refolds its
        // own topic instead).
        for table in SAGA_TABLES {
            ddl(table.cql_ddl(&ks, 1)).await?;
        }
        session
            .await_schema_agreement()
            .await
            .map_err(|e| StoreError::Transient(format!("schema agreement: {e}")))?;
        let prepare = |cql: String| {
            let session = &session;
            async move {
                session
                    .prepare(cql)
                    .await
                    .map_err(|e| classify("preparing", e.to_string()))
            }
        };
        let mut writes = HashMap::new();
        for view in &VIEWS {
            for table in view.tables {
                let v = version_of(table);
                writes.insert((table.name, true), prepare(table.cql_insert(&ks, v)).await?);
                writes.insert(
                    (table.name, false),
                    prepare(table.cql_delete(&ks, v)).await?,
                );
            }
        }
        for table in SAGA_TABLES {
            writes.insert((table.name, true), prepare(table.cql_insert(&ks, 1)).await?);
            writes.insert(
                (table.name, false),
                prepare(table.cql_delete(&ks, 1)).await?,
            );
        }
        let sagas = crate::saga_scylla::SagaReads::prepare(&session, &ks).await?;
        let t = |table: &Table| format!("{ks}.{}", table.cql_physical(version_of(table)));
        let customer_columns = "order_id, placed_at, status, currency, total_cents, version";
        let outcome_columns = "command_id, correlation_id, aggregate_id, command, accepted, \
                               version, reason_code, reason, decided_at";
        let sales_columns = "sku, currency, SUM(units), SUM(revenue_cents), COUNT(*)";
        let reads = Reads {
            summary: prepare(format!(
                "SELECT order_id, customer_id, status, currency, total_cents, units, version, \
                 placed_at, updated_at, confirmed_day FROM {} WHERE order_id = ?",
                t(&ORDER_SUMMARY)
            ))
            .await?,
            lines: prepare(format!(
                "SELECT sku, quantity, unit_price_cents, version FROM {} WHERE order_id = ?",
                t(&ORDER_LINES)
            ))
            .await?,
            customer_first: prepare(format!(
                "SELECT {customer_columns} FROM {} WHERE customer_id = ? LIMIT ?",
                t(&ORDERS_BY_CUSTOMER)
            ))
            .await?,
            customer_same_time: prepare(format!(
                "SELECT {customer_columns} FROM {} WHERE customer_id = ? AND placed_at = ? \
                 AND order_id > ? LIMIT ?",
                t(&ORDERS_BY_CUSTOMER)
            ))
            .await?,
            customer_older: prepare(format!(
                "SELECT {customer_columns} FROM {} WHERE customer_id = ? AND placed_at < ? \
                 LIMIT ?",
                t(&ORDERS_BY_CUSTOMER)
            ))
            .await?,
            sales_first: prepare(format!(
                "SELECT {sales_columns} FROM {} WHERE day = ? AND bucket = ? \
                 GROUP BY sku, currency LIMIT ?",
                t(&PRODUCT_SALES)
            ))
            .await?,
            sales_after: prepare(format!(
                "SELECT {sales_columns} FROM {} WHERE day = ? AND bucket = ? \
                 AND (sku, currency) > (?, ?) GROUP BY sku, currency LIMIT ?",
                t(&PRODUCT_SALES)
            ))
            .await?,
            command: prepare(format!(
                "SELECT {outcome_columns} FROM {} WHERE command_id = ?",
                t(&COMMAND_STATUS)
            ))
            .await?,
            inventory: prepare(format!(
                "SELECT sku, available, reserved, version, updated_at FROM {} WHERE sku = ?",
                t(&INVENTORY_LEVELS)
            ))
            .await?,
            correlation: prepare(format!(
                "SELECT {outcome_columns} FROM {} WHERE correlation_id = ? LIMIT ?",
                t(&COMMANDS_BY_CORRELATION)
            ))
            .await?,
            correlation_after: prepare(format!(
                "SELECT {outcome_columns} FROM {} WHERE correlation_id = ? AND command_id > ? \
                 LIMIT ?",
                t(&COMMANDS_BY_CORRELATION)
            ))
            .await?,
        };
        Ok(ScyllaViews {
            session,
            keyspace: ks,
            writes,
            reads,
            sagas,
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
        })
    }

    /// The keyspace.
    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// Drops the keyspace (tests).
    pub async fn drop_keyspace(&self) -> Result<(), StoreError> {
        self.session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", self.keyspace), ())
            .await
            .map_err(|e| classify("dropping the keyspace", e))?;
        Ok(())
    }

    /// The rows of `statement` with `values`, deserialized as `R`.
    pub(crate) async fn rows<R>(
        &self,
        what: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| classify(what, e))?
            .into_rows_result()
            .map_err(|e| StoreError::Permanent(format!("{what}: {e}")))?;
        result
            .rows::<R>()
            .map_err(|e| StoreError::Permanent(format!("{what}: {e}")))?
            .collect::<Result<Vec<R>, _>>()
            .map_err(|e| StoreError::Permanent(format!("{what}: {e}")))
    }

    async fn write(&self, w: &Write) -> Result<(), StoreError> {
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|e| StoreError::Permanent(e.to_string()))?;
        let (table, upsert) = (w.table().name, matches!(w, Write::Upsert { .. }));
        let statement = self
            .writes
            .get(&(table, upsert))
            .ok_or_else(|| StoreError::Permanent(format!("no statement for {table}")))?;
        let table_def = w.table();
        let values: Vec<Option<CqlValue>> = match w {
            Write::Upsert { row, stamp } => row
                .values
                .iter()
                .map(cql)
                .chain(
                    table_def
                        .bucket_of(&row.values)
                        .map(|b| Some(CqlValue::Int(b))),
                )
                .chain([Some(CqlValue::BigInt(*stamp))])
                .collect(),
            Write::Delete { key, stamp, .. } => [Some(CqlValue::BigInt(*stamp))]
                .into_iter()
                .chain(key.iter().map(cql))
                .chain(table_def.bucket_of(key).map(|b| Some(CqlValue::Int(b))))
                .collect(),
        };
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| classify(&format!("writing {table}"), e))?;
        Ok(())
    }
}

/// Where a page of `n` rows of the query `scope` starts (the cursor's key), or its answer at
/// once: a cursor this API did not give out, or the empty page of `n` = 0.
#[allow(clippy::type_complexity)]
fn page_start<K: serde::de::DeserializeOwned, T>(
    scope: (&str, &str),
    cursor: Option<&str>,
    n: u32,
) -> Result<Option<K>, Result<Page<T>, BadCursor>> {
    let after = decode_cursor(scope, cursor).map_err(Err)?;
    if n == 0 {
        return Err(Ok(Page {
            items: Vec::new(),
            next_cursor: None,
        }));
    }
    Ok(after)
}

type OutcomeRow = (
    String,
    String,
    String,
    String,
    bool,
    i64,
    Option<String>,
    Option<String>,
    i64,
);

fn outcome(r: OutcomeRow) -> OutcomeView {
    OutcomeView {
        command_id: r.0,
        correlation_id: r.1,
        aggregate_id: r.2,
        command: r.3,
        accepted: r.4,
        version: r.5,
        reason_code: r.6,
        reason: r.7,
        decided_at: r.8,
    }
}

type CustomerRow = (String, i64, String, String, i64, i64);

fn customer_order(r: CustomerRow) -> CustomerOrder {
    CustomerOrder {
        order_id: r.0,
        placed_at: r.1,
        status: r.2,
        currency: r.3,
        total_cents: r.4,
        version: r.5,
    }
}

fn limit(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl ViewStore for ScyllaViews {
    async fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        // Each row is its own single-partition statement; the semaphore bounds how many are
        // in flight, across every caller. An order's summary goes last, once every other row
        // of the batch is written: whoever reads a summary at version v (a new owner loading
        // the order) then finds every row of version v too. A saga monitor partition's totals
        // go last for the same reason: they say which observations every row counts.
        let (summaries, rest): (Vec<&Write>, Vec<&Write>) = writes
            .iter()
            .partition(|w| [ORDER_SUMMARY.name, SAGA_STATS.name].contains(&w.table().name));
        for phase in [rest, summaries] {
            let mut pending = futures_util::stream::FuturesUnordered::new();
            for w in phase {
                pending.push(self.write(w));
                if pending.len() >= 64
                    && let Some(done) = pending.next().await
                {
                    done?;
                }
            }
            while let Some(done) = pending.next().await {
                done?;
            }
        }
        Ok(())
    }

    async fn order(&self, id: &str) -> Result<Option<OrderView>, StoreError> {
        type SummaryRow = (
            String,
            String,
            String,
            String,
            i64,
            i64,
            i64,
            i64,
            i64,
            Option<String>,
        );
        let rows: Vec<SummaryRow> = self
            .rows("reading an order", &self.reads.summary, (id,))
            .await?;
        let Some(r) = rows.into_iter().next() else {
            return Ok(None);
        };
        let lines: Vec<(String, i64, i64, i64)> = self
            .rows("reading an order's lines", &self.reads.lines, (id,))
            .await?;
        Ok(Some(OrderView {
            order_id: r.0,
            customer_id: r.1,
            status: r.2,
            currency: r.3,
            total_cents: r.4,
            units: r.5,
            version: r.6,
            placed_at: r.7,
            updated_at: r.8,
            confirmed_day: r.9,
            // The order as of its summary's version: the summary is written last, so a
            // writer that stopped half-way may have left line rows of a later version.
            lines: lines
                .into_iter()
                .filter(|l| l.3 <= r.6)
                .map(|l| LineView {
                    sku: l.0,
                    quantity: l.1,
                    unit_price_cents: l.2,
                    version: l.3,
                })
                .collect(),
        }))
    }

    async fn customer_orders(
        &self,
        customer: &str,
        cursor: Option<&str>,
        n: u32,
    ) -> Paged<CustomerOrder> {
        let scope = ("customer", customer);
        let after: Option<(i64, String)> = match page_start(scope, cursor, n) {
            Ok(after) => after,
            Err(answer) => return Ok(answer),
        };
        let what = "reading a customer's orders";
        let mut items: Vec<CustomerOrder> = match &after {
            None => {
                let rows: Vec<CustomerRow> = self
                    .rows(what, &self.reads.customer_first, (customer, limit(n)))
                    .await?;
                rows.into_iter().map(customer_order).collect()
            }
            Some((at, id)) => {
                // The rest of the same instant, then older ones: two single-partition slices.
                let rows: Vec<CustomerRow> = self
                    .rows(
                        what,
                        &self.reads.customer_same_time,
                        (customer, *at, id.as_str(), limit(n)),
                    )
                    .await?;
                rows.into_iter().map(customer_order).collect()
            }
        };
        if let Some((at, _)) = &after
            && items.len() < n as usize
        {
            let rest = limit(n) - limit(u32::try_from(items.len()).unwrap_or(n));
            let rows: Vec<CustomerRow> = self
                .rows(what, &self.reads.customer_older, (customer, *at, rest))
                .await?;
            items.extend(rows.into_iter().map(customer_order));
        }
        let next_cursor = (items.len() == n as usize)
            .then(|| {
                items
                    .last()
                    .map(|o| encode_cursor(scope, &(o.placed_at, &o.order_id)))
            })
            .flatten();
        Ok(Ok(Page { items, next_cursor }))
    }

    async fn product_sales(&self, day: &str, cursor: Option<&str>, n: u32) -> Paged<Sales> {
        let scope = ("sales", day);
        let after: Option<(String, String)> = match page_start(scope, cursor, n) {
            Ok(after) => after,
            Err(answer) => return Ok(answer),
        };
        let what = "reading a day's sales";
        // A day is spread over buckets: each bucket gives its first `n` groups after the
        // cursor, in (sku, currency) order, and their sums are added up. The first `n` keys
        // over all buckets are each among the first `n` of every bucket that has them, so
        // their sums are whole.
        let count = PRODUCT_SALES.cql_buckets.as_ref().map_or(1, |b| b.count);
        let after = &after;
        let reads = (0..count).map(|bucket| {
            let bucket = i32::try_from(bucket).unwrap_or(0);
            async move {
                let rows: Vec<(String, String, i64, i64, i64)> = match after {
                    None => {
                        self.rows(what, &self.reads.sales_first, (day, bucket, limit(n)))
                            .await?
                    }
                    Some((sku, currency)) => {
                        self.rows(
                            what,
                            &self.reads.sales_after,
                            (day, bucket, sku.as_str(), currency.as_str(), limit(n)),
                        )
                        .await?
                    }
                };
                Ok::<_, StoreError>(rows)
            }
        });
        let mut merged: std::collections::BTreeMap<(String, String), Sales> =
            std::collections::BTreeMap::new();
        for rows in futures_util::future::join_all(reads).await {
            for r in rows? {
                let s = merged.entry((r.0.clone(), r.1.clone())).or_insert(Sales {
                    sku: r.0,
                    currency: r.1,
                    units: 0,
                    revenue_cents: 0,
                    orders: 0,
                });
                let sum = |a: i64, b: i64| {
                    a.checked_add(b).ok_or_else(|| {
                        StoreError::Permanent(format!(
                            "the sales of {day} pass the 64-bit limit when its buckets are \
                             added up"
                        ))
                    })
                };
                s.units = sum(s.units, r.2)?;
                s.revenue_cents = sum(s.revenue_cents, r.3)?;
                s.orders = sum(s.orders, r.4)?;
            }
        }
        let items: Vec<Sales> = merged.into_values().take(n as usize).collect();
        let next_cursor = (items.len() == n as usize)
            .then(|| {
                items
                    .last()
                    .map(|s| encode_cursor(scope, &(&s.sku, &s.currency)))
            })
            .flatten();
        Ok(Ok(Page { items, next_cursor }))
    }

    async fn command(&self, id: &str) -> Result<Option<OutcomeView>, StoreError> {
        let rows: Vec<OutcomeRow> = self
            .rows("reading a command's status", &self.reads.command, (id,))
            .await?;
        Ok(rows.into_iter().next().map(outcome))
    }

    async fn inventory(&self, sku: &str) -> Result<Option<LevelView>, StoreError> {
        let rows: Vec<(String, i64, i64, i64, i64)> = self
            .rows("reading a stock level", &self.reads.inventory, (sku,))
            .await?;
        Ok(rows.into_iter().next().map(|r| LevelView {
            sku: r.0,
            available: r.1,
            reserved: r.2,
            version: r.3,
            updated_at: r.4,
        }))
    }

    async fn commands_by_correlation(
        &self,
        id: &str,
        cursor: Option<&str>,
        n: u32,
    ) -> Paged<OutcomeView> {
        let scope = ("correlation", id);
        let after: Option<String> = match page_start(scope, cursor, n) {
            Ok(after) => after,
            Err(answer) => return Ok(answer),
        };
        let what = "reading commands";
        let rows: Vec<OutcomeRow> = match &after {
            None => {
                self.rows(what, &self.reads.correlation, (id, limit(n)))
                    .await?
            }
            Some(last) => {
                self.rows(
                    what,
                    &self.reads.correlation_after,
                    (id, last.as_str(), limit(n)),
                )
                .await?
            }
        };
        let items: Vec<OutcomeView> = rows.into_iter().map(outcome).collect();
        let next_cursor = (items.len() == n as usize)
            .then(|| items.last().map(|o| encode_cursor(scope, &o.command_id)))
            .flatten();
        Ok(Ok(Page { items, next_cursor }))
    }
}
