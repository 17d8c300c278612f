//! The tables' DDL and statements for both stores, and the rows a state makes.

use super::*;

fn order(status: &str, lines: &[(&str, i64, i64)]) -> OrderView {
    OrderView {
        order_id: "o-1".into(),
        customer_id: "c-1".into(),
        status: status.into(),
        currency: "EUR".into(),
        total_cents: lines.iter().map(|l| l.1 * l.2).sum(),
        units: lines.iter().map(|l| l.1).sum(),
        version: 3,
        placed_at: 1_000,
        updated_at: 2_000,
        confirmed_day: (status != "open").then(|| "2026-11-30".to_string()),
        lines: lines
            .iter()
            .map(|(sku, q, p)| LineView {
                sku: sku.to_string(),
                quantity: *q,
                unit_price_cents: *p,
                version: 1,
            })
            .collect(),
    }
}

#[test]
fn ddl_comes_from_the_one_definition_for_both_backends() {
    assert_eq!(
        ORDERS_BY_CUSTOMER.sqlite_ddl(1),
        "CREATE TABLE IF NOT EXISTS orders_by_customer_v1 (customer_id TEXT NOT NULL, \
         placed_at INTEGER NOT NULL, order_id TEXT NOT NULL, status TEXT, currency TEXT, \
         total_cents INTEGER, version INTEGER, PRIMARY KEY (customer_id, placed_at DESC, \
         order_id ASC)) WITHOUT ROWID;"
    );
    assert_eq!(
        ORDERS_BY_CUSTOMER.cql_ddl("eip", 2),
        "CREATE TABLE IF NOT EXISTS eip.orders_by_customer_v2 (customer_id text, placed_at \
         bigint, order_id text, status text, currency text, total_cents bigint, version \
         bigint, PRIMARY KEY ((customer_id), placed_at, order_id)) WITH CLUSTERING ORDER BY \
         (placed_at DESC, order_id ASC)"
    );
    assert_eq!(
        ORDER_SUMMARY.cql_ddl("eip", 1),
        "CREATE TABLE IF NOT EXISTS eip.order_summary_v1 (order_id text, customer_id text, \
         status text, currency text, total_cents bigint, line_count bigint, units bigint, \
         version bigint, placed_at bigint, updated_at bigint, confirmed_day text, PRIMARY \
         KEY ((order_id)))"
    );
    assert_eq!(
        PRODUCT_SALES.cql_delete("eip", 1),
        "DELETE FROM eip.product_sales_b16_v1 USING TIMESTAMP ? WHERE day = ? AND sku = ? \
         AND currency = ? AND order_id = ? AND bucket = ?"
    );
    assert_eq!(
        PRODUCT_SALES.cql_ddl("eip", 1),
        "CREATE TABLE IF NOT EXISTS eip.product_sales_b16_v1 (day text, sku text, currency \
         text, order_id text, units bigint, revenue_cents bigint, version bigint, bucket \
         int, PRIMARY KEY ((day, bucket), sku, currency, order_id)) WITH CLUSTERING ORDER \
         BY (sku ASC, currency ASC, order_id ASC)"
    );
    // Buckets spread a day's orders and are stable.
    let buckets = PRODUCT_SALES.cql_buckets.as_ref().unwrap();
    let used: std::collections::BTreeSet<i32> = (0..1_000)
        .map(|i| buckets.of(&format!("order-{i}")))
        .collect();
    assert_eq!(used.len(), 16);
    assert_eq!(buckets.of("order-1"), buckets.of("order-1"));
    assert_eq!(
        PRODUCT_SALES.sqlite_delete(1),
        "DELETE FROM product_sales_v1 WHERE day = ?1 AND sku = ?2 AND currency = ?3 AND \
         order_id = ?4 AND version < ?5"
    );
    assert_eq!(
        ORDER_LINES.sqlite_upsert(3),
        "INSERT INTO order_lines_v3 (order_id, sku, quantity, unit_price_cents, version) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (order_id, sku) DO UPDATE SET quantity = \
         excluded.quantity, unit_price_cents = excluded.unit_price_cents, version = \
         excluded.version WHERE excluded.version > order_lines_v3.version"
    );
    // Every row a projection makes has exactly its table's columns.
    for row in order_rows(&order("confirmed", &[("a", 2, 100), ("b", 1, 5)]))
        .into_iter()
        .chain(outcome_rows(&OutcomeView {
            command_id: "c".into(),
            correlation_id: "r".into(),
            aggregate_id: "o".into(),
            command: "PlaceOrder".into(),
            accepted: false,
            version: 0,
            reason_code: Some("empty_order".into()),
            reason: None,
            decided_at: 1,
        }))
    {
        assert_eq!(
            row.values.len(),
            row.table.columns.len(),
            "{}",
            row.table.name
        );
        for (value, column) in row.values.iter().zip(row.table.columns) {
            let fits = matches!(
                (value, column.ty),
                (Value::Null, _)
                    | (Value::Text(_), Type::Text)
                    | (Value::Int(_), Type::Int)
                    | (Value::Bool(_), Type::Bool)
            );
            assert!(fits, "{}.{} gets {value:?}", row.table.name, column.name);
        }
    }
}

#[test]
fn a_diff_deletes_what_went_and_upserts_only_what_changed() {
    let open = order("open", &[("a", 2, 100), ("b", 1, 5)]);
    let mut confirmed = order("confirmed", &[("a", 2, 100)]);
    confirmed.version = 5;
    let writes = diff(&order_rows(&open), &order_rows(&confirmed), 5);
    let mut seen: Vec<(&str, bool)> = writes
        .iter()
        .map(|w| (w.table().name, matches!(w, Write::Upsert { .. })))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("order_lines", false), // line b went; line a is unchanged
            ("order_summary", true),
            ("orders_by_customer", true),
            ("product_sales", true), // confirmed: line a sold
        ]
    );
    assert!(writes.iter().all(|w| match w {
        Write::Upsert { stamp, .. } | Write::Delete { stamp, .. } => *stamp == 5,
    }));
    // Cancelled after the confirmation: its sales go, nothing else is deleted.
    let mut cancelled = confirmed.clone();
    cancelled.status = "cancelled".into();
    let writes = diff(&order_rows(&confirmed), &order_rows(&cancelled), 6);
    let deletes: Vec<&str> = writes
        .iter()
        .filter(|w| matches!(w, Write::Delete { .. }))
        .map(|w| w.table().name)
        .collect();
    assert_eq!(deletes, vec!["product_sales"]);
    assert!(diff(&order_rows(&open), &order_rows(&open), 3).is_empty());
}

#[test]
fn every_table_belongs_to_exactly_one_view() {
    let mut names: Vec<&str> = VIEWS
        .iter()
        .flat_map(|v| v.tables.iter().map(|t| t.name))
        .collect();
    let all = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), all);
    assert_eq!(view_of(&PRODUCT_SALES).name, "product_sales");
    assert_eq!(view("order_summary").map(|v| v.tables.len()), Some(2));
    assert!(view("nope").is_none());
    assert_eq!(ORDER_SUMMARY.index("version"), 7);
}
