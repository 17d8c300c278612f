//! The read side's views, each defined once. A [`Table`] names its columns, partition key and
//! clustering order; both backends take their DDL and their statements from it:
//! [`Table::sqlite_ddl`] and [`Table::cql_ddl`], [`Table::sqlite_upsert`] and
//! [`Table::cql_insert`], and so on. A projection never writes SQL: it computes the rows a
//! state stands for ([`order_rows`], [`outcome_rows`]), and [`diff`] turns two states' rows
//! into the upserts and deletes that take a store from one to the other, which either backend
//! executes.
//!
//! Every table has a version (`order_summary_v1`, …), so a rebuild can fill version 2 while
//! version 1 serves. SQLite readers and analysts use the plain name (`order_summary`), a SQL
//! view over the live version, which a switch replaces in one transaction. docs/cqrs.md gives
//! the tables and the queries an analyst runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A column's type, as both backends spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// UTF-8 text: SQLite `TEXT`, CQL `text`.
    Text,
    /// 64-bit integer: SQLite `INTEGER`, CQL `bigint`.
    Int,
    /// Boolean: SQLite `INTEGER` (0 or 1), CQL `boolean`.
    Bool,
}

impl Type {
    fn sqlite(self) -> &'static str {
        match self {
            Type::Text => "TEXT",
            Type::Int | Type::Bool => "INTEGER",
        }
    }

    fn cql(self) -> &'static str {
        match self {
            Type::Text => "text",
            Type::Int => "bigint",
            Type::Bool => "boolean",
        }
    }
}

/// A column of a view table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// Its name, the same in both backends.
    pub name: &'static str,
    /// Its type.
    pub ty: Type,
}

const fn col(name: &'static str, ty: Type) -> Column {
    Column { name, ty }
}

/// Clustering order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Ascending.
    Asc,
    /// Descending (newest first).
    Desc,
}

impl Sort {
    fn word(self) -> &'static str {
        match self {
            Sort::Asc => "ASC",
            Sort::Desc => "DESC",
        }
    }
}

/// A table of a view, defined once for both backends. The key columns come first in
/// `columns`, partition key then clustering columns, in that order. Every table has a
/// `version` column, the version of the state the row was written from: a write replaces a
/// row only if it is newer, in both backends (a conditional upsert in SQLite, `USING
/// TIMESTAMP` in CQL), so a late or repeated write never takes a row back.
#[derive(Debug, PartialEq, Eq)]
pub struct Table {
    /// The plain name; a version's table is `{name}_v{version}`.
    pub name: &'static str,
    /// Every column, key columns first.
    pub columns: &'static [Column],
    /// How many leading columns form the partition key.
    pub partition: usize,
    /// The clustering columns' order, for the columns after the partition key.
    pub clustering: &'static [Sort],
    /// On CQL only: the partition spread over buckets, so no partition grows without bound.
    pub cql_buckets: Option<Buckets>,
}

/// A CQL table whose partition key gets a `bucket` column: `hash(by) % count` of each row's
/// `by` column (a key column), so one partition key value (one day of sales) spreads over
/// `count` partitions, and so over the cluster, instead of growing into one hot partition. A
/// read of one key value reads every bucket and combines them.
#[derive(Debug, PartialEq, Eq)]
pub struct Buckets {
    /// The key column the bucket is computed from.
    pub by: &'static str,
    /// How many buckets.
    pub count: u32,
}

impl Buckets {
    /// The bucket of a row whose `by` column is `value`: FNV-1a, stable across builds.
    pub fn of(&self, value: &str) -> i32 {
        let mut h: u32 = 0x811c_9dc5;
        for b in value.as_bytes() {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
        (h % self.count.max(1)) as i32
    }
}

impl Table {
    /// The number of key columns (partition and clustering).
    pub fn key_len(&self) -> usize {
        self.partition + self.clustering.len()
    }

    /// The table's name at `version`.
    pub fn physical(&self, version: i64) -> String {
        format!("{}_v{version}", self.name)
    }

    /// The CQL table's name at `version`: a bucketed table's name says its bucket count, so
    /// a table of another shape is never written by mistake.
    pub fn cql_physical(&self, version: i64) -> String {
        match &self.cql_buckets {
            Some(b) => format!("{}_b{}_v{version}", self.name, b.count),
            None => self.physical(version),
        }
    }

    /// The CQL bucket of a row or key whose values are in column order, if the table has
    /// buckets.
    pub fn bucket_of(&self, values: &[Value]) -> Option<i32> {
        let b = self.cql_buckets.as_ref()?;
        match values.get(self.index(b.by)) {
            Some(Value::Text(s)) => Some(b.of(s)),
            _ => Some(0),
        }
    }

    fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.columns.iter().map(|c| c.name)
    }

    fn key_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.names().take(self.key_len())
    }

    /// `CREATE TABLE IF NOT EXISTS` for SQLite, keyed in clustering order.
    pub fn sqlite_ddl(&self, version: i64) -> String {
        let columns: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let not_null = if i < self.key_len() { " NOT NULL" } else { "" };
                format!("{} {}{not_null}", c.name, c.ty.sqlite())
            })
            .collect();
        let key: Vec<String> = self
            .key_names()
            .enumerate()
            .map(|(i, name)| match i.checked_sub(self.partition) {
                Some(c) => format!("{name} {}", self.clustering[c].word()),
                None => name.to_string(),
            })
            .collect();
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({})) WITHOUT ROWID;",
            self.physical(version),
            columns.join(", "),
            key.join(", ")
        )
    }

    /// `CREATE TABLE IF NOT EXISTS` for CQL in `keyspace`, with its clustering order.
    pub fn cql_ddl(&self, keyspace: &str, version: i64) -> String {
        let mut columns: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{} {}", c.name, c.ty.cql()))
            .collect();
        let names: Vec<&str> = self.key_names().collect();
        let (partition, clustering) = names.split_at(self.partition);
        let mut partition = partition.to_vec();
        if self.cql_buckets.is_some() {
            columns.push("bucket int".into());
            partition.push("bucket");
        }
        let mut key = format!("({})", partition.join(", "));
        for c in clustering {
            key.push_str(", ");
            key.push_str(c);
        }
        let mut ddl = format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.{} ({}, PRIMARY KEY ({key}))",
            self.cql_physical(version),
            columns.join(", ")
        );
        if !clustering.is_empty() {
            let order: Vec<String> = clustering
                .iter()
                .zip(self.clustering)
                .map(|(c, s)| format!("{c} {}", s.word()))
                .collect();
            ddl.push_str(&format!(" WITH CLUSTERING ORDER BY ({})", order.join(", ")));
        }
        ddl
    }

    /// SQLite: insert a whole row, or replace the stored one if this one's `version` is
    /// newer (what `USING TIMESTAMP` does in CQL); parameters are the columns in order.
    pub fn sqlite_upsert(&self, version: i64) -> String {
        let names: Vec<&str> = self.names().collect();
        let params: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
        let key: Vec<&str> = self.key_names().collect();
        let set: Vec<String> = names[key.len()..]
            .iter()
            .map(|n| format!("{n} = excluded.{n}"))
            .collect();
        format!(
            "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {} \
             WHERE excluded.version > {table}.version",
            names.join(", "),
            params.join(", "),
            key.join(", "),
            set.join(", "),
            table = self.physical(version),
        )
    }

    /// SQLite: delete a row by its key if it is older than the delete's stamp; parameters are
    /// the key columns in order, then the stamp.
    pub fn sqlite_delete(&self, version: i64) -> String {
        let filter: Vec<String> = self
            .key_names()
            .enumerate()
            .map(|(i, n)| format!("{n} = ?{}", i + 1))
            .collect();
        format!(
            "DELETE FROM {} WHERE {} AND version < ?{}",
            self.physical(version),
            filter.join(" AND "),
            self.key_len() + 1
        )
    }

    /// CQL: insert a whole row `USING TIMESTAMP ?`; parameters are the columns in order, then
    /// the timestamp (the order's version, so an older write never overwrites a newer one).
    pub fn cql_insert(&self, keyspace: &str, version: i64) -> String {
        let mut names: Vec<&str> = self.names().collect();
        if self.cql_buckets.is_some() {
            // The bucket goes after the columns (see `bucket_of`).
            names.push("bucket");
        }
        let marks = vec!["?"; names.len()].join(", ");
        format!(
            "INSERT INTO {keyspace}.{} ({}) VALUES ({marks}) USING TIMESTAMP ?",
            self.cql_physical(version),
            names.join(", ")
        )
    }

    /// CQL: delete a row `USING TIMESTAMP ?` by its key; parameters are the timestamp, then
    /// the key columns in order.
    pub fn cql_delete(&self, keyspace: &str, version: i64) -> String {
        let mut filter: Vec<String> = self.key_names().map(|n| format!("{n} = ?")).collect();
        if self.cql_buckets.is_some() {
            filter.push("bucket = ?".into());
        }
        format!(
            "DELETE FROM {keyspace}.{} USING TIMESTAMP ? WHERE {}",
            self.cql_physical(version),
            filter.join(" AND ")
        )
    }

    /// The SQL view with the plain name over version `version`, replacing an older one.
    pub fn sqlite_alias(&self, version: i64) -> String {
        format!(
            "DROP VIEW IF EXISTS {name}; CREATE VIEW {name} AS SELECT * FROM {};",
            self.physical(version),
            name = self.name
        )
    }

    /// The position of column `name`. Panics on a name the table does not have: the tables
    /// are constants, and a typo is a bug caught by the first test.
    pub fn index(&self, name: &str) -> usize {
        self.names()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("{} has no column {name}", self.name))
    }
}

/// A view: what a query API serves and a rebuild builds, over one or more tables.
#[derive(Debug, PartialEq, Eq)]
pub struct View {
    /// Its name, as `eipctl projection rebuild` and the API take it.
    pub name: &'static str,
    /// What it answers.
    pub doc: &'static str,
    /// Its tables.
    pub tables: &'static [&'static Table],
}

/// True when an order in `status` counts in the product sales: confirmed, and still when it
/// is completed (fulfilled); never open or cancelled.
pub fn sells(status: &str) -> bool {
    matches!(status, "confirmed" | "completed")
}

/// Order summaries by order id.
pub const ORDER_SUMMARY: Table = Table {
    name: "order_summary",
    columns: &[
        col("order_id", Type::Text),
        col("customer_id", Type::Text),
        col("status", Type::Text),
        col("currency", Type::Text),
        col("total_cents", Type::Int),
        col("line_count", Type::Int),
        col("units", Type::Int),
        col("version", Type::Int),
        col("placed_at", Type::Int),
        col("updated_at", Type::Int),
        col("confirmed_day", Type::Text),
    ],
    partition: 1,
    clustering: &[],
    cql_buckets: None,
};

/// An order's lines, by SKU, beside its summary.
pub const ORDER_LINES: Table = Table {
    name: "order_lines",
    columns: &[
        col("order_id", Type::Text),
        col("sku", Type::Text),
        col("quantity", Type::Int),
        col("unit_price_cents", Type::Int),
        col("version", Type::Int),
    ],
    partition: 1,
    clustering: &[Sort::Asc],
    cql_buckets: None,
};

/// Each customer's orders, newest first.
pub const ORDERS_BY_CUSTOMER: Table = Table {
    name: "orders_by_customer",
    columns: &[
        col("customer_id", Type::Text),
        col("placed_at", Type::Int),
        col("order_id", Type::Text),
        col("status", Type::Text),
        col("currency", Type::Text),
        col("total_cents", Type::Int),
        col("version", Type::Int),
    ],
    partition: 1,
    clustering: &[Sort::Desc, Sort::Asc],
    cql_buckets: None,
};

/// What each confirmed order sold, per day (UTC, of the confirmation), SKU and currency. The
/// day's sales are the sums over its rows: one row per order makes the projection a write of
/// the order's current contribution, never an increment, so replaying it changes nothing.
pub const PRODUCT_SALES: Table = Table {
    name: "product_sales",
    columns: &[
        col("day", Type::Text),
        col("sku", Type::Text),
        col("currency", Type::Text),
        col("order_id", Type::Text),
        col("units", Type::Int),
        col("revenue_cents", Type::Int),
        col("version", Type::Int),
    ],
    partition: 1,
    clustering: &[Sort::Asc, Sort::Asc, Sort::Asc],
    cql_buckets: Some(Buckets {
        by: "order_id",
        count: 16,
    }),
};

/// Every command's outcome by command id.
pub const COMMAND_STATUS: Table = Table {
    name: "command_status",
    columns: &[
        col("command_id", Type::Text),
        col("correlation_id", Type::Text),
        col("aggregate_id", Type::Text),
        col("command", Type::Text),
        col("accepted", Type::Bool),
        col("version", Type::Int),
        col("reason_code", Type::Text),
        col("reason", Type::Text),
        col("decided_at", Type::Int),
    ],
    partition: 1,
    clustering: &[],
    cql_buckets: None,
};

/// The same outcomes by correlation id.
pub const COMMANDS_BY_CORRELATION: Table = Table {
    name: "commands_by_correlation",
    columns: &[
        col("correlation_id", Type::Text),
        col("command_id", Type::Text),
        col("aggregate_id", Type::Text),
        col("command", Type::Text),
        col("accepted", Type::Bool),
        col("version", Type::Int),
        col("reason_code", Type::Text),
        col("reason", Type::Text),
        col("decided_at", Type::Int),
    ],
    partition: 1,
    clustering: &[Sort::Asc],
    cql_buckets: None,
};

/// Each SKU's stock as the inventory participant last left it. The row's version is the SKU's
/// change sequence, so of two levels read in any order the later one stays.
pub const INVENTORY_LEVELS: Table = Table {
    name: "inventory_levels",
    columns: &[
        col("sku", Type::Text),
        col("available", Type::Int),
        col("reserved", Type::Int),
        col("version", Type::Int),
        col("updated_at", Type::Int),
    ],
    partition: 1,
    clustering: &[],
    cql_buckets: None,
};

/// Every view.
pub const VIEWS: [View; 5] = [
    View {
        name: "order_summary",
        doc: "an order's status, lines, total and version, by order id",
        tables: &[&ORDER_SUMMARY, &ORDER_LINES],
    },
    View {
        name: "orders_by_customer",
        doc: "a customer's orders, newest first, paged",
        tables: &[&ORDERS_BY_CUSTOMER],
    },
    View {
        name: "product_sales",
        doc: "units and revenue per SKU and currency, per day of confirmation",
        tables: &[&PRODUCT_SALES],
    },
    View {
        name: "command_status",
        doc: "each command's outcome, by command id and by correlation id",
        tables: &[&COMMAND_STATUS, &COMMANDS_BY_CORRELATION],
    },
    View {
        name: "inventory_levels",
        doc: "each SKU's available and reserved units, as the inventory participant left them",
        tables: &[&INVENTORY_LEVELS],
    },
];

/// The view named `name`.
pub fn view(name: &str) -> Option<&'static View> {
    VIEWS.iter().find(|v| v.name == name)
}

/// The view a table belongs to.
pub fn view_of(table: &Table) -> &'static View {
    VIEWS
        .iter()
        .find(|v| v.tables.iter().any(|t| t.name == table.name))
        .unwrap_or_else(|| panic!("{} belongs to no view", table.name))
}

/// A cell.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    /// No value.
    Null,
    /// Text.
    Text(String),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Int(n)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// One row of a table: every column's value, key columns first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The table.
    pub table: &'static Table,
    /// The values, in the table's column order.
    pub values: Vec<Value>,
}

impl Row {
    /// The key columns' values.
    pub fn key(&self) -> &[Value] {
        &self.values[..self.table.key_len()]
    }
}

/// A change to a view table, stamped with the version of the state it comes from (the CQL
/// write timestamp).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Insert or replace the row.
    Upsert {
        /// The row.
        row: Row,
        /// The state's version.
        stamp: i64,
    },
    /// Delete the row with this key.
    Delete {
        /// The table.
        table: &'static Table,
        /// The key columns' values.
        key: Vec<Value>,
        /// The state's version.
        stamp: i64,
    },
}

impl Write {
    /// The table written.
    pub fn table(&self) -> &'static Table {
        match self {
            Write::Upsert { row, .. } => row.table,
            Write::Delete { table, .. } => table,
        }
    }
}

/// The writes that take a store holding `before`'s rows to `after`'s: a delete for each key
/// only `before` has, an upsert for each row that is new or changed. Both are stamped `stamp`.
pub fn diff(before: &[Row], after: &[Row], stamp: i64) -> Vec<Write> {
    type Keyed<'a> = BTreeMap<(&'static str, &'a [Value]), &'a Row>;
    fn index<'a>(rows: &'a [Row]) -> Keyed<'a> {
        rows.iter().map(|r| ((r.table.name, r.key()), r)).collect()
    }
    let (old, new) = (index(before), index(after));
    let mut writes = Vec::new();
    for (key, row) in &old {
        if !new.contains_key(key) {
            writes.push(Write::Delete {
                table: row.table,
                key: row.key().to_vec(),
                stamp,
            });
        }
    }
    for (key, row) in &new {
        if old.get(key) != Some(row) {
            writes.push(Write::Upsert {
                row: (*row).clone(),
                stamp,
            });
        }
    }
    writes
}

/// A line of an order, as the views hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineView {
    /// The product.
    pub sku: String,
    /// Units ordered.
    pub quantity: i64,
    /// Price per unit, in minor units.
    pub unit_price_cents: i64,
    /// The order's version that added the line (its rows' `version`, so they are written
    /// once, not again with every later event of the order).
    pub version: i64,
}

/// An order as the read side holds it: the order summary view's row and lines. It is also the
/// projector's state for the order, from which every other view's rows follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    /// The order id.
    pub order_id: String,
    /// The customer.
    pub customer_id: String,
    /// `open`, `confirmed` or `cancelled`.
    pub status: String,
    /// ISO 4217 currency of every amount.
    pub currency: String,
    /// Sum over the lines, in minor units.
    pub total_cents: i64,
    /// Units over the lines.
    pub units: i64,
    /// The order's aggregate version: the last event applied.
    pub version: i64,
    /// When it was placed, in ms since the Unix epoch.
    pub placed_at: i64,
    /// When its last event happened, in ms since the Unix epoch.
    pub updated_at: i64,
    /// The UTC day it was confirmed (`YYYY-MM-DD`); kept after a cancel, to find its sales.
    pub confirmed_day: Option<String>,
    /// The lines, by SKU.
    pub lines: Vec<LineView>,
}

/// The rows `order` stands for, in every order view: its summary and lines, its customer's
/// entry, and its sales if it is confirmed.
pub fn order_rows(order: &OrderView) -> Vec<Row> {
    let o = order;
    let mut rows = vec![
        Row {
            table: &ORDER_SUMMARY,
            values: vec![
                o.order_id.as_str().into(),
                o.customer_id.as_str().into(),
                o.status.as_str().into(),
                o.currency.as_str().into(),
                o.total_cents.into(),
                i64::try_from(o.lines.len()).unwrap_or(i64::MAX).into(),
                o.units.into(),
                o.version.into(),
                o.placed_at.into(),
                o.updated_at.into(),
                o.confirmed_day.clone().into(),
            ],
        },
        Row {
            table: &ORDERS_BY_CUSTOMER,
            values: vec![
                o.customer_id.as_str().into(),
                o.placed_at.into(),
                o.order_id.as_str().into(),
                o.status.as_str().into(),
                o.currency.as_str().into(),
                o.total_cents.into(),
                o.version.into(),
            ],
        },
    ];
    for line in &o.lines {
        rows.push(Row {
            table: &ORDER_LINES,
            values: vec![
                o.order_id.as_str().into(),
                line.sku.as_str().into(),
                line.quantity.into(),
                line.unit_price_cents.into(),
                line.version.into(),
            ],
        });
    }
    if sells(&o.status)
        && let Some(day) = &o.confirmed_day
    {
        for line in &o.lines {
            rows.push(Row {
                table: &PRODUCT_SALES,
                values: vec![
                    day.as_str().into(),
                    line.sku.as_str().into(),
                    o.currency.as_str().into(),
                    o.order_id.as_str().into(),
                    line.quantity.into(),
                    line.quantity.saturating_mul(line.unit_price_cents).into(),
                    line.version.into(),
                ],
            });
        }
    }
    rows
}

/// A SKU's stock as the inventory-levels view holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LevelView {
    /// Stock keeping unit.
    pub sku: String,
    /// Units that can still be reserved.
    pub available: i64,
    /// Units held for orders (kept by completed ones).
    pub reserved: i64,
    /// The SKU's change sequence at this level.
    pub version: i64,
    /// When the decision that left it happened, in ms since the Unix epoch.
    pub updated_at: i64,
}

/// The row a level stands for.
pub fn level_rows(l: &LevelView) -> Vec<Row> {
    vec![Row {
        table: &INVENTORY_LEVELS,
        values: vec![
            l.sku.as_str().into(),
            l.available.into(),
            l.reserved.into(),
            l.version.into(),
            l.updated_at.into(),
        ],
    }]
}

/// A command's outcome as the command status view holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeView {
    /// The command id.
    pub command_id: String,
    /// The caller's correlation id.
    pub correlation_id: String,
    /// The order it addressed.
    pub aggregate_id: String,
    /// The command type.
    pub command: String,
    /// Accepted or rejected.
    pub accepted: bool,
    /// The order's version after it (accepted) or when it was refused (rejected).
    pub version: i64,
    /// The rejection's code.
    pub reason_code: Option<String>,
    /// The rejection's reason.
    pub reason: Option<String>,
    /// When it was decided, in ms since the Unix epoch.
    pub decided_at: i64,
}

/// The rows an outcome stands for: by command id and by correlation id.
pub fn outcome_rows(o: &OutcomeView) -> Vec<Row> {
    let rest = |first: &str, second: &str| -> Vec<Value> {
        vec![
            first.into(),
            second.into(),
            o.aggregate_id.as_str().into(),
            o.command.as_str().into(),
            o.accepted.into(),
            o.version.into(),
            o.reason_code.clone().into(),
            o.reason.clone().into(),
            o.decided_at.into(),
        ]
    };
    vec![
        Row {
            table: &COMMAND_STATUS,
            values: rest(&o.command_id, &o.correlation_id),
        },
        Row {
            table: &COMMANDS_BY_CORRELATION,
            values: rest(&o.correlation_id, &o.command_id),
        },
    ]
}

#[cfg(test)]
#[path = "views_tests.rs"]
mod tests;
