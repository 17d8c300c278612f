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
use serde::{Deserialize, Serialize};

use crate::sqlite::{classify, connect};
use crate::views::{LineView, OrderView, OutcomeView, Table, VIEWS, Value, Write, view_of};

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
/// file, the plain-name SQL views, and `product_sales_daily`. Safe to run on every start.
pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
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
            let exists: bool = conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'view' AND name = ?1)",
                params![table.name],
                |r| r.get(0),
            )?;
            if !exists {
                conn.execute_batch(&table.sqlite_alias(live))?;
            }
        }
    }
    conn.execute_batch(
        "CREATE VIEW IF NOT EXISTS product_sales_daily AS
             SELECT day, sku, currency, SUM(units) AS units,
                    SUM(revenue_cents) AS revenue_cents, COUNT(*) AS orders
             FROM product_sales GROUP BY day, sku, currency;",
    )
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

/// One entry of a customer's orders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerOrder {
    /// The order.
    pub order_id: String,
    /// When it was placed, ms since the Unix epoch.
    pub placed_at: i64,
    /// Its status.
    pub status: String,
    /// Its currency.
    pub currency: String,
    /// Its total in minor units.
    pub total_cents: i64,
    /// Its version.
    pub version: i64,
}

/// One SKU's sales in one currency on one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sales {
    /// The product.
    pub sku: String,
    /// The currency of `revenue_cents`.
    pub currency: String,
    /// Units sold.
    pub units: i64,
    /// Revenue in minor units.
    pub revenue_cents: i64,
    /// Confirmed orders that sold it.
    pub orders: i64,
}

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
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT order_id, placed_at, status, currency, total_cents, version
                 FROM orders_by_customer
                 WHERE customer_id = ?1 AND (?2 IS NULL OR placed_at < ?2
                       OR (placed_at = ?2 AND order_id > ?3))
                 ORDER BY placed_at DESC, order_id ASC LIMIT ?4",
            )?;
            let (at, id) = after.map_or((None, None), |(a, i)| (Some(*a), Some(i.as_str())));
            stmt.query_map(params![customer, at, id, limit], |r| {
                Ok(CustomerOrder {
                    order_id: r.get(0)?,
                    placed_at: r.get(1)?,
                    status: r.get(2)?,
                    currency: r.get(3)?,
                    total_cents: r.get(4)?,
                    version: r.get(5)?,
                })
            })?
            .collect()
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
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT sku, currency, SUM(units), SUM(revenue_cents), COUNT(*)
                 FROM product_sales
                 WHERE day = ?1 AND (?2 IS NULL OR (sku, currency) > (?2, ?3))
                 GROUP BY sku, currency ORDER BY sku, currency LIMIT ?4",
            )?;
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

    /// The outcomes of every command with correlation id `id`, by command id.
    pub fn commands_by_correlation(&self, id: &str) -> rusqlite::Result<Vec<OutcomeView>> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT command_id, correlation_id, aggregate_id, command, accepted, version,
                        reason_code, reason, decided_at
                 FROM commands_by_correlation WHERE correlation_id = ?1 ORDER BY command_id",
            )?
            .query_map(params![id], outcome)?
            .collect()
        })
    }
}

/// One page of a paged query, as the query API and `eipctl query` give it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page<T> {
    /// The rows.
    pub items: Vec<T>,
    /// The cursor of the next page; None on the last one.
    pub next_cursor: Option<String>,
}

/// A cursor this API did not give out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the cursor is not one this API gave out: pass next_cursor from the previous page unchanged"
)]
pub struct BadCursor;

/// An opaque cursor: the last row's key, as URL-safe base64 of JSON.
pub fn encode_cursor<T: Serialize>(key: &T) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(key).unwrap_or_default())
}

/// The key in a cursor of [`encode_cursor`].
pub fn decode_cursor<T: serde::de::DeserializeOwned>(
    cursor: Option<&str>,
) -> Result<Option<T>, BadCursor> {
    use base64::Engine;
    let Some(text) = cursor else {
        return Ok(None);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| BadCursor)?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|_| BadCursor)
}

impl Reader {
    /// A page of `customer`'s orders, newest first, after `cursor`.
    pub fn customer_orders_page(
        &self,
        customer: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Result<Page<CustomerOrder>, BadCursor>, rusqlite::Error> {
        let after: Option<(i64, String)> = match decode_cursor(cursor) {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        let items = self.customer_orders(customer, after.as_ref(), limit)?;
        let next_cursor = (items.len() == limit as usize)
            .then(|| {
                items
                    .last()
                    .map(|o| encode_cursor(&(o.placed_at, &o.order_id)))
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
        let after: Option<(String, String)> = match decode_cursor(cursor) {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        let items = self.product_sales(day, after.as_ref(), limit)?;
        let next_cursor = (items.len() == limit as usize)
            .then(|| items.last().map(|i| encode_cursor(&(&i.sku, &i.currency))))
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
            reader.commands_by_correlation("corr").unwrap(),
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
    fn cursors_round_trip_and_anything_else_is_refused() {
        let c = encode_cursor(&(17_i64, "o-1"));
        let back: Option<(i64, String)> = decode_cursor(Some(&c)).unwrap();
        assert_eq!(back, Some((17, "o-1".to_string())));
        assert!(decode_cursor::<(i64, String)>(Some("%%%")).is_err());
        let other = encode_cursor(&("a", "b"));
        assert!(decode_cursor::<(i64, String)>(Some(&other)).is_err());
        assert!(decode_cursor::<(i64, String)>(None).unwrap().is_none());
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
