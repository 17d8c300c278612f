//! The checks that read the projector's views back: whether they have caught up with a
//! script, and whether every row, page and total is what the script says.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use eip_store::view_store::ViewStore;
use rusqlite::Connection;

use crate::orders::{Script, UNIT_PRICE};

/// True when the views at `db` hold every order of `scripts` at its final version and every
/// command's outcome. (Waiting for the outcomes alone is not enough: the projector reads the
/// events and the outcomes from different partitions, so an order's view may lag its
/// outcome.)
pub fn caught_up(db: &Path, scripts: &[&Script]) -> bool {
    let Ok(conn) = Connection::open(db) else {
        return false;
    };
    let Ok(mut stmt) = conn.prepare("SELECT order_id, version FROM order_summary") else {
        return false;
    };
    let Ok(rows) = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .and_then(|rows| rows.collect::<Result<HashMap<_, _>, _>>())
    else {
        return false;
    };
    let orders = scripts
        .iter()
        .flat_map(|s| &s.versions)
        .all(|(id, v)| *v == 0 || rows.get(id) == Some(v));
    let decided: usize = scripts.iter().map(|s| s.outcomes.len()).sum();
    orders && outcomes_in(db) >= decided
}

/// How many command outcomes the views hold.
pub fn outcomes_in(db: &Path) -> usize {
    let Ok(conn) = Connection::open(db) else {
        return 0;
    };
    conn.query_row("SELECT COUNT(*) FROM command_status", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_or(0, |n| n as usize)
}

/// Checks every view in `store` against what `script` says: each order's summary and lines,
/// each customer's pages, units and revenue per SKU over the days of confirmation, and every
/// command's status.
pub async fn check_views(store: &impl ViewStore, script: &Script) {
    let mut by_customer: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut sold: BTreeMap<String, i64> = BTreeMap::new();
    let mut days = BTreeSet::new();
    for (id, version) in &script.versions {
        let view = store.order(id).await.unwrap();
        let Some(want) = script.finals.get(id) else {
            assert_eq!(view, None, "{id} was never placed");
            continue;
        };
        let view = view.unwrap_or_else(|| panic!("{id} is missing from the views"));
        assert_eq!(view.version, *version, "{id}");
        assert_eq!(view.status, want.status, "{id}");
        let lines: BTreeMap<String, i64> = view
            .lines
            .iter()
            .map(|l| (l.sku.clone(), l.quantity))
            .collect();
        assert_eq!(lines, want.lines, "{id}");
        let units: i64 = want.lines.values().sum();
        assert_eq!((view.units, view.total_cents), (units, units * UNIT_PRICE));
        assert_eq!(view.customer_id, want.customer);
        assert_eq!(
            view.confirmed_day.is_some(),
            want.status == "confirmed",
            "{id}"
        );
        days.extend(view.confirmed_day.clone());
        by_customer
            .entry(want.customer.clone())
            .or_default()
            .insert(id.clone());
        if want.status == "confirmed" {
            for (sku, q) in &want.lines {
                *sold.entry(sku.clone()).or_default() += q;
            }
        }
    }
    for (customer, want) in &by_customer {
        let mut got = BTreeSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = store
                .customer_orders(customer, cursor.as_deref(), 7)
                .await
                .unwrap()
                .unwrap();
            for o in page.items {
                assert!(got.insert(o.order_id), "an order on two pages");
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        // Other tests' orders may share the customer ids: only this script's are compared.
        got.retain(|id| script.versions.contains_key(id));
        assert_eq!(&got, want, "{customer}'s orders");
    }
    let mut stored: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for day in &days {
        let mut cursor: Option<String> = None;
        loop {
            let page = store
                .product_sales(day, cursor.as_deref(), 2)
                .await
                .unwrap()
                .unwrap();
            for s in page.items {
                let e = stored.entry(s.sku).or_default();
                e.0 += s.units;
                e.1 += s.revenue_cents;
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
    }
    let want: BTreeMap<String, (i64, i64)> = sold
        .iter()
        .map(|(s, u)| (s.clone(), (*u, u * UNIT_PRICE)))
        .collect();
    assert_eq!(stored, want, "units and revenue per SKU");
    for (command, expected) in &script.outcomes {
        let status = store
            .command(command)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no status for {command}"));
        match expected {
            Ok(()) => assert!(status.accepted, "{command}: {status:?}"),
            Err(code) => assert_eq!(status.reason_code.as_deref(), Some(*code), "{command}"),
        }
    }
}
