//! The views in SQLite, the embedded default: the projector's writes (inside its group
//! commit, with the partition ledger) and the queries the API and `eipctl query` serve.
//!
//! Beside the versioned tables (`order_summary_v1`, …) the file holds:
//! - `view_versions(view, live, building)`: which version of each view serves, and which one
//!   a rebuild is filling;
//! - a SQL view with each table's plain name over its live version (`order_summary`, …),
//!   which readers and analysts use, and which a switch replaces in one transaction;
//! - `product_sales_daily`: the day's sums per SKU and currency, for `sqlite3` users.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use eip_runtime::ProcessError;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, ToSql, Transaction, params};

use crate::sqlite::{classify, connect};
use crate::view_page::{BadCursor, CustomerOrder, Page, Sales, decode_cursor, encode_cursor};
use crate::views::{
    LevelView, LineView, OrderView, OutcomeView, Table, VIEWS, Value, Write, view_of,
};

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Int(n) => ToSqlOutput::from(*n),
            Value::Bool(b) => ToSqlOutput::from(*b),
        })
    }
}

/// The live (and building) version of every view.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Versions {
    /// The version each view serves from, by view name.
    pub live: HashMap<&'static str, i64>,
    /// The version a rebuild is filling, by view name.
    pub building: HashMap<&'static str, i64>,
}

impl Versions {
    /// The live version of the view `table` belongs to.
    pub fn live_of(&self, table: &Table) -> i64 {
        self.live.get(view_of(table).name).copied().unwrap_or(1)
    }
}

/// Creates what is missing: the version table, every view's live tables at version 1 on a new
/// file, the plain-name SQL views, and `product_sales_daily`. Safe to run on every start, and
/// from several processes at once (the projector and the gateway start together): it runs in
/// one `BEGIN IMMEDIATE` transaction, so one process creates and the others find.
pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    if !conn.is_autocommit() {
        return migrate_in(conn);
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let done = migrate_in(conn);
    conn.execute_batch(if done.is_ok() { "COMMIT" } else { "ROLLBACK" })?;
    done
}

fn migrate_in(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS view_versions (
             view TEXT PRIMARY KEY,
             live INTEGER NOT NULL,
             building INTEGER
         ) WITHOUT ROWID;",
    )?;
    for view in &VIEWS {
        conn.execute(
            "INSERT INTO view_versions (view, live) VALUES (?1, 1) ON CONFLICT (view) DO NOTHING",
            params![view.name],
        )?;
    }
    let versions = versions(conn)?;
    for view in &VIEWS {
        let live = versions.live.get(view.name).copied().unwrap_or(1);
        for table in view.tables {
            conn.execute_batch(&table.sqlite_ddl(live))?;
            if let Some(building) = versions.building.get(view.name) {
                conn.execute_batch(&table.sqlite_ddl(*building))?;
            }
            ensure_alias(conn, table, live)?;
        }
    }
    conn.execute_batch(
        "CREATE VIEW IF NOT EXISTS product_sales_daily AS
             SELECT day, sku, currency, SUM(units) AS units,
                    SUM(revenue_cents) AS revenue_cents, COUNT(*) AS orders
             FROM product_sales GROUP BY day, sku, currency;",
    )
}

/// Creates the plain-name SQL view of `table` over `version`, unless it exists already (a
/// switch replaces it; a start never does).
pub fn ensure_alias(conn: &Connection, table: &Table, version: i64) -> rusqlite::Result<()> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'view' AND name = ?1)",
        params![table.name],
        |r| r.get(0),
    )?;
    if !exists {
        conn.execute_batch(&table.sqlite_alias(version))?;
    }
    Ok(())
}

/// Reads `view_versions`.
pub fn versions(conn: &Connection) -> rusqlite::Result<Versions> {
    let mut stmt = conn.prepare_cached("SELECT view, live, building FROM view_versions")?;
    let mut out = Versions::default();
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Option<i64>>(2)?,
        ))
    })?;
    for row in rows {
        let (name, live, building) = row?;
        if let Some(view) = VIEWS.iter().find(|v| v.name == name) {
            out.live.insert(view.name, live);
            if let Some(b) = building {
                out.building.insert(view.name, b);
            }
        }
    }
    Ok(out)
}

/// Executes `writes` inside `tx` on the live version of each table (and on a version being
/// rebuilt, which the rebuild fills from offset 0 itself, not here).
pub fn execute(
    tx: &Transaction<'_>,
    versions: &Versions,
    writes: &[Write],
) -> Result<(), ProcessError> {
    for write in writes {
        let table = write.table();
        let version = versions.live_of(table);
        execute_at(tx, table, version, write).map_err(|e| classify("writing a view row", e))?;
    }
    Ok(())
}

/// Statement texts by (table, version, upsert?).
type SqlCache = HashMap<(&'static str, i64, bool), std::rc::Rc<str>>;

thread_local! {
    /// The statement texts, so a write does not build its SQL again.
    static SQL: std::cell::RefCell<SqlCache> = std::cell::RefCell::new(HashMap::new());
}

/// The SQL text `make` builds for (`table`, `version`, `upsert`), built once per thread.
fn sql(
    table: &'static str,
    version: i64,
    upsert: bool,
    make: impl FnOnce() -> String,
) -> std::rc::Rc<str> {
    SQL.with(|cache| {
        cache
            .borrow_mut()
            .entry((table, version, upsert))
            .or_insert_with(|| std::rc::Rc::from(make()))
            .clone()
    })
}

/// Executes one write on version `version` of its table.
pub fn execute_at(
    tx: &Transaction<'_>,
    table: &'static Table,
    version: i64,
    write: &Write,
) -> rusqlite::Result<()> {
    match write {
        Write::Upsert { row, .. } => {
            let text = sql(table.name, version, true, || table.sqlite_upsert(version));
            let mut stmt = tx.prepare_cached(&text)?;
            stmt.execute(rusqlite::params_from_iter(row.values.iter()))?;
        }
        Write::Delete { key, stamp, .. } => {
            let text = sql(table.name, version, false, || table.sqlite_delete(version));
            let mut stmt = tx.prepare_cached(&text)?;
            let stamp = Value::Int(*stamp);
            stmt.execute(rusqlite::params_from_iter(key.iter().chain([&stamp])))?;
        }
    }
    Ok(())
}

const SUMMARY_COLUMNS: &str = "order_id, customer_id, status, currency, total_cents, units, \
                               version, placed_at, updated_at, confirmed_day";

/// The order `id` from the summary and lines tables named `summary` and `lines` (physical
/// tables for the projector, the plain names for readers).
pub fn load_order(
    conn: &Connection,
    summary: &str,
    lines: &str,
    id: &str,
) -> rusqlite::Result<Option<OrderView>> {
    let order = conn
        .prepare_cached(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM {summary} WHERE order_id = ?1"
        ))?
        .query_row(params![id], |r| {
            Ok(OrderView {
                order_id: r.get(0)?,
                customer_id: r.get(1)?,
                status: r.get(2)?,
                currency: r.get(3)?,
                total_cents: r.get(4)?,
                units: r.get(5)?,
                version: r.get(6)?,
                placed_at: r.get(7)?,
                updated_at: r.get(8)?,
                confirmed_day: r.get(9)?,
                lines: Vec::new(),
            })
        })
        .optional()?;
    let Some(mut order) = order else {
        return Ok(None);
    };
    // The order as of its summary's version: a line row of a later version (written ahead
    // of its summary by a writer that stopped half-way) is not part of it yet.
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT sku, quantity, unit_price_cents, version FROM {lines} WHERE order_id = ?1 \
         AND version <= ?2 ORDER BY sku"
    ))?;
    order.lines = stmt
        .query_map(params![id, order.version], |r| {
            Ok(LineView {
                sku: r.get(0)?,
                quantity: r.get(1)?,
                unit_price_cents: r.get(2)?,
                version: r.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Some(order))
}

/// A customer's first page of orders.
const CUSTOMER_FIRST: &str = "SELECT order_id, placed_at, status, currency, total_cents, version
     FROM orders_by_customer WHERE customer_id = ?1
     ORDER BY placed_at DESC, order_id ASC LIMIT ?2";
/// The orders after a cursor's at the cursor's instant.
const CUSTOMER_SAME_TIME: &str =
    "SELECT order_id, placed_at, status, currency, total_cents, version
     FROM orders_by_customer WHERE customer_id = ?1 AND placed_at = ?2 AND order_id > ?3
     ORDER BY order_id ASC LIMIT ?4";
/// The orders of instants before a cursor's.
const CUSTOMER_OLDER: &str = "SELECT order_id, placed_at, status, currency, total_cents, version
     FROM orders_by_customer WHERE customer_id = ?1 AND placed_at < ?2
     ORDER BY placed_at DESC, order_id ASC LIMIT ?3";

/// The readers' side: a few connections to the file, used in turn on the blocking pool.
#[derive(Debug)]
pub struct Reader {
    conns: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

impl Reader {
    /// Opens `connections` read connections to the views at `path`, creating what is
    /// missing first (so a query API may start before the projector).
    pub fn open(path: &Path, connections: usize) -> rusqlite::Result<Reader> {
        let first = connect(path)?;
        migrate(&first)?;
        let mut conns = vec![Mutex::new(first)];
        for _ in 1..connections.max(1) {
            conns.push(Mutex::new(connect(path)?));
        }
        Ok(Reader {
            conns,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs `f` with a free connection (or the next one in turn, waiting for it).
    pub fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let n = self.conns.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            if let Ok(conn) = self.conns[(start + i) % n].try_lock() {
                return f(&conn);
            }
        }
        let conn = self.conns[start % n]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&conn)
    }

    /// The order `id`, with its lines.
    pub fn order(&self, id: &str) -> rusqlite::Result<Option<OrderView>> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            let order = load_order(&tx, "order_summary", "order_lines", id)?;
            tx.commit()?;
            Ok(order)
        })
    }

    /// Up to `limit` of `customer`'s orders, newest first, after `after` (placed_at, order
    /// id) when given.
    pub fn customer_orders(
        &self,
        customer: &str,
        after: Option<&(i64, String)>,
        limit: u32,
    ) -> rusqlite::Result<Vec<CustomerOrder>> {
        // Keyset paging on the table's key (customer_id, placed_at DESC, order_id): the rest
        // of the cursor's instant, then older instants, each an index range read no further
        // than the page, so page 1,000 costs what page 1 does.
        self.with(|c| {
            let row = |r: &rusqlite::Row<'_>| {
                Ok(CustomerOrder {
                    order_id: r.get(0)?,
                    placed_at: r.get(1)?,
                    status: r.get(2)?,
                    currency: r.get(3)?,
                    total_cents: r.get(4)?,
                    version: r.get(5)?,
                })
            };
            let Some((at, id)) = after else {
                return c
                    .prepare_cached(CUSTOMER_FIRST)?
                    .query_map(params![customer, limit], row)?
                    .collect();
            };
            let mut items: Vec<CustomerOrder> = c
                .prepare_cached(CUSTOMER_SAME_TIME)?
                .query_map(params![customer, at, id, limit], row)?
                .collect::<rusqlite::Result<_>>()?;
            let rest = limit.saturating_sub(u32::try_from(items.len()).unwrap_or(limit));
            if rest > 0 {
                items.extend(
                    c.prepare_cached(CUSTOMER_OLDER)?
                        .query_map(params![customer, at, rest], row)?
                        .collect::<rusqlite::Result<Vec<_>>>()?,
                );
            }
            Ok(items)
        })
    }

    /// Up to `limit` of `day`'s sales per SKU and currency, in that order, after `after`
    /// (sku, currency) when given.
    pub fn product_sales(
        &self,
        day: &str,
        after: Option<&(String, String)>,
        limit: u32,
    ) -> rusqlite::Result<Vec<Sales>> {
        // The first page, or the groups after the cursor's: each an index range on the
        // table's key (day, sku, currency, order_id), never a scan of the day before it.
        self.with(|c| {
            let sql = if after.is_some() {
                "SELECT sku, currency, SUM(units), SUM(revenue_cents), COUNT(*)
                 FROM product_sales WHERE day = ?1 AND (sku, currency) > (?2, ?3)
                 GROUP BY sku, currency ORDER BY sku, currency LIMIT ?4"
            } else {
                "SELECT sku, currency, SUM(units), SUM(revenue_cents), COUNT(*)
                 FROM product_sales WHERE day = ?1 AND ?2 IS NULL AND ?3 IS NULL
                 GROUP BY sku, currency ORDER BY sku, currency LIMIT ?4"
            };
            let mut stmt = c.prepare_cached(sql)?;
            let (sku, cur) =
                after.map_or((None, None), |(s, c)| (Some(s.as_str()), Some(c.as_str())));
            stmt.query_map(params![day, sku, cur, limit], |r| {
                Ok(Sales {
                    sku: r.get(0)?,
                    currency: r.get(1)?,
                    units: r.get(2)?,
                    revenue_cents: r.get(3)?,
                    orders: r.get(4)?,
                })
            })?
            .collect()
        })
    }

    /// The outcome of command `id`.
    pub fn command(&self, id: &str) -> rusqlite::Result<Option<OutcomeView>> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT command_id, correlation_id, aggregate_id, command, accepted, version,
                        reason_code, reason, decided_at
                 FROM command_status WHERE command_id = ?1",
            )?
            .query_row(params![id], outcome)
            .optional()
        })
    }

    /// The stock level of `sku`.
    pub fn inventory(&self, sku: &str) -> rusqlite::Result<Option<LevelView>> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT sku, available, reserved, version, updated_at
                 FROM inventory_levels WHERE sku = ?1",
            )?
            .query_row(params![sku], |r| {
                Ok(LevelView {
                    sku: r.get(0)?,
                    available: r.get(1)?,
                    reserved: r.get(2)?,
                    version: r.get(3)?,
                    updated_at: r.get(4)?,
                })
            })
            .optional()
        })
    }

    /// Up to `limit` outcomes of the commands with correlation id `id`, by command id, after
    /// command id `after` when given.
    pub fn commands_by_correlation(
        &self,
        id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> rusqlite::Result<Vec<OutcomeView>> {
        self.with(|c| {
            let sql = if after.is_some() {
                "SELECT command_id, correlation_id, aggregate_id, command, accepted, version,
                        reason_code, reason, decided_at
                 FROM commands_by_correlation WHERE correlation_id = ?1 AND command_id > ?2
                 ORDER BY command_id LIMIT ?3"
            } else {
                "SELECT command_id, correlation_id, aggregate_id, command, accepted, version,
                        reason_code, reason, decided_at
                 FROM commands_by_correlation WHERE correlation_id = ?1 AND ?2 IS NULL
                 ORDER BY command_id LIMIT ?3"
            };
            c.prepare_cached(sql)?
                .query_map(params![id, after, limit], outcome)?
                .collect()
        })
    }
}

impl Reader {
    /// A page of `customer`'s orders, newest first, after `cursor`.
    pub fn customer_orders_page(
        &self,
        customer: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Result<Page<CustomerOrder>, BadCursor>, rusqlite::Error> {
        let scope = ("customer", customer);
        let after: Option<(i64, String)> = match decode_cursor(scope, cursor) {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        let items = self.customer_orders(customer, after.as_ref(), limit)?;
        let next_cursor = (items.len() == limit as usize)
            .then(|| {
                items
                    .last()
                    .map(|o| encode_cursor(scope, &(o.placed_at, &o.order_id)))
            })
            .flatten();
        Ok(Ok(Page { items, next_cursor }))
    }

    /// A page of `day`'s sales per SKU and currency, after `cursor`.
    pub fn product_sales_page(
        &self,
        day: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Result<Page<Sales>, BadCursor>, rusqlite::Error> {
        let scope = ("sales", day);
        let after: Option<(String, String)> = match decode_cursor(scope, cursor) {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        let items = self.product_sales(day, after.as_ref(), limit)?;
        let next_cursor = (items.len() == limit as usize)
            .then(|| {
                items
                    .last()
                    .map(|i| encode_cursor(scope, &(&i.sku, &i.currency)))
            })
            .flatten();
        Ok(Ok(Page { items, next_cursor }))
    }

    /// A page of the outcomes with correlation id `id`, by command id, after `cursor`.
    pub fn commands_by_correlation_page(
        &self,
        id: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Result<Page<OutcomeView>, BadCursor>, rusqlite::Error> {
        let scope = ("correlation", id);
        let after: Option<String> = match decode_cursor(scope, cursor) {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        let items = self.commands_by_correlation(id, after.as_deref(), limit)?;
        let next_cursor = (items.len() == limit as usize)
            .then(|| items.last().map(|o| encode_cursor(scope, &o.command_id)))
            .flatten();
        Ok(Ok(Page { items, next_cursor }))
    }
}

fn outcome(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutcomeView> {
    Ok(OutcomeView {
        command_id: r.get(0)?,
        correlation_id: r.get(1)?,
        aggregate_id: r.get(2)?,
        command: r.get(3)?,
        accepted: r.get(4)?,
        version: r.get(5)?,
        reason_code: r.get(6)?,
        reason: r.get(7)?,
        decided_at: r.get(8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::{diff, order_rows, outcome_rows};

    fn order(id: &str, customer: &str, placed_at: i64, status: &str) -> OrderView {
        OrderView {
            order_id: id.into(),
            customer_id: customer.into(),
            status: status.into(),
            currency: "EUR".into(),
            total_cents: 250,
            units: 3,
            version: 2,
            placed_at,
            updated_at: placed_at,
            confirmed_day: (status == "confirmed").then(|| "2026-11-30".into()),
            lines: vec![
                LineView {
                    sku: "a".into(),
                    quantity: 2,
                    unit_price_cents: 100,
                    version: 1,
                },
                LineView {
                    sku: "b".into(),
                    quantity: 1,
                    unit_price_cents: 50,
                    version: 2,
                },
            ],
        }
    }

    #[test]
    fn processes_that_start_together_all_migrate_the_same_new_file() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("views.db");
            let start = std::sync::Arc::new(std::sync::Barrier::new(4));
            let all: Vec<_> = (0..4)
                .map(|_| {
                    let (path, start) = (path.clone(), start.clone());
                    std::thread::spawn(move || {
                        let conn = connect(&path).unwrap();
                        start.wait();
                        migrate(&conn)
                    })
                })
                .collect();
            for t in all {
                t.join().unwrap().unwrap();
            }
            let conn = connect(&path).unwrap();
            assert_eq!(versions(&conn).unwrap().live.len(), VIEWS.len());
        }
    }

    #[test]
    fn rows_written_through_the_definitions_read_back_through_the_plain_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("views.db");
        let mut conn = connect(&path).unwrap();
        migrate(&conn).unwrap();
        migrate(&conn).unwrap(); // idempotent
        let versions = versions(&conn).unwrap();
        let orders = [
            order("o-1", "c-1", 10, "confirmed"),
            order("o-2", "c-1", 20, "open"),
            order("o-3", "c-1", 20, "confirmed"),
            order("o-4", "c-2", 5, "confirmed"),
        ];
        let tx = conn.transaction().unwrap();
        for o in &orders {
            execute(&tx, &versions, &diff(&[], &order_rows(o), o.version)).unwrap();
        }
        let outcome = OutcomeView {
            command_id: "cmd-1".into(),
            correlation_id: "corr".into(),
            aggregate_id: "o-1".into(),
            command: "PlaceOrder".into(),
            accepted: true,
            version: 1,
            reason_code: None,
            reason: None,
            decided_at: 7,
        };
        execute(&tx, &versions, &diff(&[], &outcome_rows(&outcome), 1)).unwrap();
        tx.commit().unwrap();

        let reader = Reader::open(&path, 2).unwrap();
        assert_eq!(reader.order("o-2").unwrap().as_ref(), Some(&orders[1]));
        assert_eq!(reader.order("nope").unwrap(), None);
        let page = reader.customer_orders("c-1", None, 2).unwrap();
        let ids: Vec<&str> = page.iter().map(|o| o.order_id.as_str()).collect();
        assert_eq!(ids, ["o-2", "o-3"]);
        let last = page
            .last()
            .map(|o| (o.placed_at, o.order_id.clone()))
            .unwrap();
        let rest = reader.customer_orders("c-1", Some(&last), 2).unwrap();
        let ids: Vec<&str> = rest.iter().map(|o| o.order_id.as_str()).collect();
        assert_eq!(ids, ["o-1"]);
        let sales = reader.product_sales("2026-11-30", None, 10).unwrap();
        assert_eq!(
            sales
                .iter()
                .map(|s| (s.sku.as_str(), s.units, s.revenue_cents, s.orders))
                .collect::<Vec<_>>(),
            vec![("a", 6, 600, 3), ("b", 3, 150, 3)]
        );
        let after = ("a".to_string(), "EUR".to_string());
        assert_eq!(
            reader
                .product_sales("2026-11-30", Some(&after), 10)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(reader.command("cmd-1").unwrap(), Some(outcome.clone()));
        assert_eq!(
            reader.commands_by_correlation("corr", None, 10).unwrap(),
            vec![outcome]
        );
        // The analysts' daily sums agree.
        let units: i64 = conn
            .query_row(
                "SELECT units FROM product_sales_daily WHERE day = '2026-11-30' AND sku = 'a'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(units, 6);
    }

    #[test]
    fn page_1000_of_a_big_customer_reads_no_more_rows_than_page_1() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("views.db");
        let mut conn = crate::sqlite::connect(&path).unwrap();
        migrate(&conn).unwrap();
        let tx = conn.transaction().unwrap();
        {
            let mut insert = tx
                .prepare(
                    "INSERT INTO orders_by_customer_v1 (customer_id, placed_at, order_id, \
                     status, currency, total_cents, version) VALUES (?1, ?2, ?3, 'open', 'EUR', 1, 1)",
                )
                .unwrap();
            for i in 0..60_000_i64 {
                // Three orders per instant, so pages cross instants mid-way.
                insert
                    .execute(params!["big", i / 3, format!("o-{i:06}")])
                    .unwrap();
            }
            insert.execute(params!["small", 5, "s-1"]).unwrap();
        }
        tx.commit().unwrap();
        let reader = Reader::open(&path, 1).unwrap();
        let mut cursor: Option<String> = None;
        let mut seen = 0;
        let mut last_key = None;
        for _ in 0..1_000 {
            let page = reader
                .customer_orders_page("big", cursor.as_deref(), 50)
                .unwrap()
                .unwrap();
            assert_eq!(page.items.len(), 50);
            seen += page.items.len();
            last_key = page.items.last().map(|o| (o.placed_at, o.order_id.clone()));
            cursor = page.next_cursor;
        }
        assert_eq!(seen, 50_000);
        // Newest instant first, order ids ascending within one: 50,000 orders are 16,666
        // instants and two orders of instant 3,333 (o-009999, o-010000); o-010001 is next.
        let next = reader
            .customer_orders_page("big", cursor.as_deref(), 1)
            .unwrap()
            .unwrap();
        assert_eq!(next.items[0].order_id, "o-010001");
        // What SQLite does for the first page and for page 1,001: about the same work.
        let steps = |sql: &str, values: &[&dyn ToSql]| {
            let mut stmt = conn.prepare(sql).unwrap();
            let n = stmt.query_map(values, |_| Ok(())).unwrap().count();
            assert!(n > 0);
            stmt.get_status(rusqlite::StatementStatus::VmStep)
        };
        let first = steps(CUSTOMER_FIRST, &[&"big", &50]);
        let (at, id) = last_key.unwrap();
        let deep = steps(CUSTOMER_SAME_TIME, &[&"big", &at, &id, &50])
            + steps(CUSTOMER_OLDER, &[&"big", &at, &50]);
        assert!(
            deep < 4 * first,
            "page 1,001 took {deep} VM steps, page 1 {first}: it scanned the rows before it"
        );
    }

    #[test]
    fn an_older_write_never_takes_a_row_back() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        let versions = versions(&conn).unwrap();
        let mut newer = order("o-1", "c-1", 10, "confirmed");
        newer.version = 5;
        newer.lines.remove(1); // b removed at 5
        let older = order("o-1", "c-1", 10, "open"); // version 2, with b
        let tx = conn.transaction().unwrap();
        execute(&tx, &versions, &diff(&[], &order_rows(&newer), 5)).unwrap();
        // A late writer replays version 2 over version 5: nothing moves back...
        execute(&tx, &versions, &diff(&[], &order_rows(&older), 2)).unwrap();
        let stored = load_order(&tx, "order_summary_v1", "order_lines_v1", "o-1")
            .unwrap()
            .unwrap();
        assert_eq!((stored.version, stored.status.as_str()), (5, "confirmed"));
        // ...except a row version 5 had deleted, which version 2 brings back until the late
        // writer reaches the delete again; a delete stamped older than the row is refused.
        assert_eq!(stored.lines.len(), 2);
        execute(
            &tx,
            &versions,
            &diff(&order_rows(&older), &order_rows(&newer), 5),
        )
        .unwrap();
        let stored = load_order(&tx, "order_summary_v1", "order_lines_v1", "o-1")
            .unwrap()
            .unwrap();
        assert_eq!(stored, newer);
        let stale_delete = Write::Delete {
            table: &crate::views::ORDER_LINES,
            key: vec!["o-1".into(), "a".into()],
            stamp: 1,
        };
        execute(&tx, &versions, &[stale_delete]).unwrap();
        let stored = load_order(&tx, "order_summary_v1", "order_lines_v1", "o-1")
            .unwrap()
            .unwrap();
        assert_eq!(stored, newer);
    }
}
