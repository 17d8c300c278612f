//! The conformance suite every [`ViewStore`] backend passes: the same writes, the same
//! answers. `eip-store`'s tests run it on SQLite; `tests/tests/cql.rs` runs it on the CQL
//! server `make test` starts (Apache Cassandra), or on the ScyllaDB cluster `SCYLLA_NODES`
//! names.
//!
//! It panics with the failed expectation, like a test.

#![allow(clippy::expect_used)] // a test suite: a failed expectation panics, naming it

use crate::view_store::ViewStore;
use crate::views::{
    LevelView, LineView, OrderView, OutcomeView, Write, diff, level_rows, order_rows, outcome_rows,
};

fn line(sku: &str, quantity: i64, version: i64) -> LineView {
    LineView {
        sku: sku.into(),
        quantity,
        unit_price_cents: 250,
        version,
    }
}

fn order(id: &str, placed_at: i64, status: &str, version: i64, lines: Vec<LineView>) -> OrderView {
    let units = lines.iter().map(|l| l.quantity).sum::<i64>();
    OrderView {
        order_id: id.into(),
        customer_id: "c-1".into(),
        status: status.into(),
        currency: "EUR".into(),
        total_cents: units * 250,
        units,
        version,
        placed_at,
        updated_at: placed_at + version,
        confirmed_day: (status != "open").then(|| "2026-11-30".into()),
        lines,
    }
}

fn outcome(command: &str, correlation: &str, accepted: bool) -> OutcomeView {
    OutcomeView {
        command_id: command.into(),
        correlation_id: correlation.into(),
        aggregate_id: "o-1".into(),
        command: "AddOrderLine".into(),
        accepted,
        version: 2,
        reason_code: (!accepted).then(|| "duplicate_sku".into()),
        reason: (!accepted).then(|| "A is already on o-1".into()),
        decided_at: 7,
    }
}

fn writes(before: Option<&OrderView>, after: &OrderView) -> Vec<Write> {
    let before = before.map(order_rows).unwrap_or_default();
    diff(&before, &order_rows(after), after.version)
}

/// Runs the suite on `store`, which must hold no views yet.
pub async fn run<S: ViewStore>(store: &S) {
    // Three orders of one customer: o-1 open; o-2 confirmed (B added, A removed on the way);
    // o-3 confirmed, then cancelled (its sales go). o-2 and o-3 were placed at the same time.
    let o1 = order("o-1", 10, "open", 1, vec![line("A", 1, 1)]);
    let o2_v1 = order("o-2", 20, "open", 1, vec![line("A", 2, 1)]);
    let o2_v2 = order("o-2", 20, "open", 2, vec![line("A", 2, 1), line("B", 3, 2)]);
    let o2 = order("o-2", 20, "confirmed", 4, vec![line("B", 3, 2)]);
    let o3_v1 = order("o-3", 20, "confirmed", 2, vec![line("A", 1, 1)]);
    let o3 = order("o-3", 20, "cancelled", 3, vec![line("A", 1, 1)]);
    let batches = [
        writes(None, &o1),
        writes(None, &o2_v1),
        writes(Some(&o2_v1), &o2_v2),
        writes(Some(&o2_v2), &o2),
        writes(None, &o3_v1),
        writes(Some(&o3_v1), &o3),
        diff(&[], &outcome_rows(&outcome("k-2", "r-1", false)), 2),
        diff(&[], &outcome_rows(&outcome("k-1", "r-1", true)), 2),
    ];
    for batch in &batches {
        store.apply(batch).await.expect("applying a batch");
    }
    // Every batch again (a replay): nothing changes.
    for batch in &batches {
        store.apply(batch).await.expect("replaying a batch");
    }
    let check = |got: Option<OrderView>, want: &OrderView| {
        assert_eq!(got.as_ref(), Some(want), "order {}", want.order_id);
    };
    check(store.order("o-1").await.expect("order"), &o1);
    check(store.order("o-2").await.expect("order"), &o2);
    check(store.order("o-3").await.expect("order"), &o3);
    assert_eq!(store.order("o-404").await.expect("order"), None);

    // Newest wins: o-2's version 2 written late leaves its summary at version 4.
    store
        .apply(&writes(None, &o2_v2))
        .await
        .expect("a late write");
    let late = store.order("o-2").await.expect("order").expect("o-2");
    assert_eq!((late.version, late.status.as_str()), (4, "confirmed"));
    // Once the late writer reaches version 4 again, everything is as before.
    store
        .apply(&writes(Some(&o2_v2), &o2))
        .await
        .expect("the newest write again");
    check(store.order("o-2").await.expect("order"), &o2);

    // Stock levels: the highest sequence stays, whatever order the levels arrive in, and a
    // level at the edge of its type is kept as it is.
    let level = |sku: &str, available: i64, version: i64| LevelView {
        sku: sku.into(),
        available,
        reserved: 100_i64.saturating_sub(available),
        version,
        updated_at: 1_000_i64.saturating_add(version),
    };
    for l in [level("A", 90, 2), level("A", 95, 1), level("A", 90, 2)] {
        store
            .apply(&diff(&[], &level_rows(&l), l.version))
            .await
            .expect("a level");
    }
    assert_eq!(
        store.inventory("A").await.expect("inventory"),
        Some(level("A", 90, 2))
    );
    let edge = LevelView {
        available: i64::MAX,
        reserved: i64::MIN,
        ..level("B", 0, i64::MAX)
    };
    store
        .apply(&diff(&[], &level_rows(&edge), edge.version))
        .await
        .expect("a level at the edge");
    assert_eq!(store.inventory("B").await.expect("inventory"), Some(edge));
    assert_eq!(store.inventory("none").await.expect("inventory"), None);

    // A customer's orders, newest first (same instant: by order id), one per page.
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .customer_orders("c-1", cursor.as_deref(), 1)
            .await
            .expect("customer orders")
            .expect("a good cursor");
        ids.extend(page.items.iter().map(|o| o.order_id.clone()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
        assert!(ids.len() <= 3, "paging does not end: {ids:?}");
    }
    assert_eq!(ids, ["o-2", "o-3", "o-1"]);
    let all = store
        .customer_orders("c-1", None, 10)
        .await
        .expect("customer orders")
        .expect("no cursor");
    assert_eq!(all.items.len(), 3);
    assert_eq!(all.next_cursor, None, "a short page is the last");
    assert_eq!(all.items[0].status, "confirmed");
    assert!(
        store
            .customer_orders("c-1", Some("not-a-cursor"), 1)
            .await
            .expect("customer orders")
            .is_err(),
        "a cursor this API did not give out is refused"
    );

    // Sales on the day: only o-2's B (o-3 was cancelled, o-1 is open).
    let sales = store
        .product_sales("2026-11-30", None, 10)
        .await
        .expect("sales")
        .expect("no cursor");
    let got: Vec<(String, i64, i64, i64)> = sales
        .items
        .iter()
        .map(|s| (s.sku.clone(), s.units, s.revenue_cents, s.orders))
        .collect();
    assert_eq!(got, vec![("B".to_string(), 3, 750, 1)]);
    // A second confirmed order selling A and B: two SKUs, paged one at a time.
    let o4 = order(
        "o-4",
        30,
        "confirmed",
        2,
        vec![line("A", 1, 1), line("B", 1, 1)],
    );
    store.apply(&writes(None, &o4)).await.expect("o-4");
    let first = store
        .product_sales("2026-11-30", None, 1)
        .await
        .expect("sales")
        .expect("no cursor");
    assert_eq!(first.items.len(), 1);
    assert_eq!(first.items[0].sku, "A");
    let second = store
        .product_sales("2026-11-30", first.next_cursor.as_deref(), 1)
        .await
        .expect("sales")
        .expect("its own cursor");
    assert_eq!(
        second
            .items
            .iter()
            .map(|s| (s.sku.as_str(), s.units, s.orders))
            .collect::<Vec<_>>(),
        vec![("B", 4, 2)]
    );
    let empty = store
        .product_sales("2026-12-01", None, 10)
        .await
        .expect("sales")
        .expect("no cursor");
    assert!(empty.items.is_empty() && empty.next_cursor.is_none());

    // An order is read as of its summary: a writer that stopped half-way through version 2
    // of o-half (ScyllaDB writes the summary last) left a line of version 2 behind. Read at
    // version 1, the order does not have that line yet; a fold of version 2 then adds it once.
    let o4_v1 = order("o-half", 30, "open", 1, vec![line("A", 1, 1)]);
    let o4_v2 = order(
        "o-half",
        30,
        "open",
        2,
        vec![line("A", 1, 1), line("C", 5, 2)],
    );
    store
        .apply(&writes(None, &o4_v1))
        .await
        .expect("o-half at version 1");
    let half: Vec<Write> = writes(Some(&o4_v1), &o4_v2)
        .into_iter()
        .filter(|w| w.table().name == "order_lines")
        .collect();
    assert!(!half.is_empty());
    store.apply(&half).await.expect("half of version 2");
    check(store.order("o-half").await.expect("order"), &o4_v1);

    // Command status by id and by correlation id (by command id).
    let k1 = store.command("k-1").await.expect("command").expect("k-1");
    assert!(k1.accepted);
    let k2 = store.command("k-2").await.expect("command").expect("k-2");
    assert_eq!(k2.reason_code.as_deref(), Some("duplicate_sku"));
    assert_eq!(store.command("k-404").await.expect("command"), None);
    let by = store
        .commands_by_correlation("r-1", None, 10)
        .await
        .expect("by correlation")
        .expect("no cursor");
    assert_eq!(
        by.items
            .iter()
            .map(|o| o.command_id.as_str())
            .collect::<Vec<_>>(),
        ["k-1", "k-2"]
    );
    assert_eq!(by.next_cursor, None);
    // A page at a time, each with the cursor the last one gave; a cursor of another
    // correlation id is refused.
    let first = store
        .commands_by_correlation("r-1", None, 1)
        .await
        .expect("by correlation")
        .expect("no cursor");
    assert_eq!(first.items[0].command_id, "k-1");
    let cursor = first.next_cursor.expect("a second page");
    let second = store
        .commands_by_correlation("r-1", Some(&cursor), 1)
        .await
        .expect("by correlation")
        .expect("its own cursor");
    assert_eq!(second.items[0].command_id, "k-2");
    assert!(
        store
            .commands_by_correlation("r-2", Some(&cursor), 1)
            .await
            .expect("by correlation")
            .is_err(),
        "another query's cursor"
    );
}
