#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use eip_orders::aggregate::{Command, Event, Order, Status, apply, handle};
use eip_runtime::PartitionId;
use eip_schemas::types::{
    AddOrderLine, CancelOrder, CommandMetadata, CompleteOrder, ConfirmOrder, OrderLine, PlaceOrder,
    RemoveOrderLine, samples,
};
use eip_store::sqlite::{LEDGER_DDL, claim};
use eip_store::view_sqlite::{self, migrate};
use eip_store::views::{VIEWS, view_of};
use proptest::prelude::*;
use rusqlite::Connection;

use super::*;
use crate::projection::day;

const DAY_MS: i64 = 86_400_000;
/// 2026-11-30T00:00:00Z.
const T0: i64 = 1_796_000_000_000 - 1_796_000_000_000 % DAY_MS;

fn meta(id: &str, n: usize) -> CommandMetadata {
    CommandMetadata {
        command_id: format!("{id}-{n}"),
        correlation_id: format!("corr-{id}"),
        causation_id: None,
        issued_at: T0,
        aggregate_id: id.into(),
        expected_version: None,
    }
}

fn line(sku: &str, quantity: i32, price: i64) -> OrderLine {
    OrderLine {
        sku: sku.into(),
        quantity,
        unit_price_cents: price,
    }
}

/// A command of kind `kind` for order `id`; `n` makes its id unique.
fn command(id: &str, n: usize, kind: u8, sku: &str, qty: i32, customer: u8) -> Command {
    match kind {
        0 => Command::Place(PlaceOrder {
            metadata: meta(id, n),
            customer_id: format!("c-{customer}"),
            lines: vec![line(sku, qty, 100), line("Z", 1, 5)],
            currency: if customer.is_multiple_of(2) {
                "EUR"
            } else {
                "USD"
            }
            .into(),
            shipping_address: samples::order_placed(1).shipping_address,
        }),
        1 => Command::AddLine(AddOrderLine {
            metadata: meta(id, n),
            line: line(sku, qty, 70),
        }),
        2 => Command::RemoveLine(RemoveOrderLine {
            metadata: meta(id, n),
            sku: sku.into(),
        }),
        3 => Command::Confirm(ConfirmOrder {
            metadata: meta(id, n),
        }),
        4 => Command::Cancel(CancelOrder {
            metadata: meta(id, n),
            reason: "changed my mind".into(),
        }),
        _ => Command::Complete(CompleteOrder {
            metadata: meta(id, n),
        }),
    }
}

/// The events the aggregate accepts from `commands` (each at its own time, over a few days),
/// in command order, and each order's final state.
fn history(commands: &[Command], step_ms: i64) -> (Vec<Event>, HashMap<String, Order>) {
    let mut orders: HashMap<String, Order> = HashMap::new();
    let mut events = Vec::new();
    for (i, c) in commands.iter().enumerate() {
        let id = c.metadata().aggregate_id.clone();
        let now = T0 + i as i64 * step_ms;
        if let Ok(e) = handle(orders.get(&id), c, now) {
            let next = apply(orders.remove(&id), &e);
            orders.insert(id, next);
            events.push(e);
        }
    }
    (events, orders)
}

fn store() -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(LEDGER_DDL).unwrap();
    migrate(&conn).unwrap();
    conn
}

fn part() -> PartitionId {
    PartitionId {
        topic: Arc::from("order-events"),
        partition: 0,
    }
}

/// Every view table's rows, sorted.
fn dump(conn: &Connection) -> BTreeMap<&'static str, Vec<String>> {
    let mut out = BTreeMap::new();
    for view in &VIEWS {
        for table in view.tables {
            let mut stmt = conn
                .prepare(&format!("SELECT * FROM {}", table.physical(1)))
                .unwrap();
            let n = stmt.column_count();
            let mut rows: Vec<String> = stmt
                .query_map([], |r| {
                    let cells: Vec<String> = (0..n)
                        .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                        .collect();
                    Ok(cells.join("|"))
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            rows.sort();
            out.insert(table.name, rows);
        }
    }
    out
}

fn commit_all(conn: &mut Connection, epoch: i64, projection: &mut Projection) {
    let writes = projection.writes();
    commit(
        conn,
        &GroupCommit {
            partition: &part(),
            epoch,
            writes: &writes,
            timers: &[],
            up_to: None,
            hold: std::time::Duration::ZERO,
            expected: None,
        },
    )
    .unwrap();
    projection.committed(usize::MAX);
}

/// The events of order "o" from commands (kind, sku, quantity) as [`command`] makes them,
/// each of which the aggregate accepts.
fn one_order(steps: &[(u8, &str, i32)]) -> Vec<Event> {
    let commands: Vec<Command> = steps
        .iter()
        .enumerate()
        .map(|(n, (kind, sku, qty))| command("o", n, *kind, sku, *qty, 1))
        .collect();
    let (events, _) = history(&commands, 1);
    assert_eq!(events.len(), steps.len(), "every command is accepted");
    events
}

/// Projects `events` once, committing every `every` events.
fn clean(events: &[Event], every: usize) -> BTreeMap<&'static str, Vec<String>> {
    let mut conn = store();
    let tx = conn.transaction().unwrap();
    let epoch = claim(&tx, &part()).unwrap().epoch;
    tx.commit().unwrap();
    let mut p = Projection::default();
    let versions = view_sqlite::versions(&conn).unwrap();
    for (i, e) in events.iter().enumerate() {
        p.event(&conn, &versions, e).unwrap();
        if (i + 1) % every == 0 {
            commit_all(&mut conn, epoch, &mut p);
        }
    }
    commit_all(&mut conn, epoch, &mut p);
    dump(&conn)
}

/// Projects `events` at least once: after each commit point, a crash may lose the cache and
/// the uncommitted batch, and delivery starts again up to `rewind` events before the last
/// commit (a ledger would skip those; the version check alone has to).
fn at_least_once(
    events: &[Event],
    every: usize,
    faults: &[(bool, usize)],
) -> BTreeMap<&'static str, Vec<String>> {
    let mut conn = store();
    let tx = conn.transaction().unwrap();
    let epoch = claim(&tx, &part()).unwrap().epoch;
    tx.commit().unwrap();
    let mut p = Projection::default();
    let versions = view_sqlite::versions(&conn).unwrap();
    let (mut at, mut committed, mut fault) = (0, 0, 0);
    while at < events.len() {
        p.event(&conn, &versions, &events[at]).unwrap();
        at += 1;
        if at % every == 0 || at == events.len() {
            let (crash, rewind) = faults.get(fault).copied().unwrap_or((false, 0));
            fault += 1;
            if crash && rewind % 2 == 0 {
                // Crash before the commit: the batch is lost.
                p.forget();
                at = committed - rewind.min(committed);
                continue;
            }
            commit_all(&mut conn, epoch, &mut p);
            committed = at;
            if crash {
                // Crash after the commit, before the offsets: redelivered from before it.
                p.forget();
                at -= rewind.min(at);
            }
        }
    }
    commit_all(&mut conn, epoch, &mut p);
    dump(&conn)
}

/// Another interleaving of `events` that keeps each order's events in order.
fn interleave(events: &[Event], picks: &[u8]) -> Vec<Event> {
    let mut queues: BTreeMap<String, std::collections::VecDeque<Event>> = BTreeMap::new();
    for e in events {
        queues
            .entry(e.metadata().aggregate_id.clone())
            .or_default()
            .push_back(e.clone());
    }
    let mut out = Vec::new();
    let mut i = 0;
    while !queues.is_empty() {
        let keys: Vec<String> = queues.keys().cloned().collect();
        let key = &keys[usize::from(picks.get(i).copied().unwrap_or(0)) % keys.len()];
        i += 1;
        let q = queues.get_mut(key).unwrap();
        out.extend(q.pop_front());
        if q.is_empty() {
            queues.remove(key);
        }
    }
    out
}

fn arb_command() -> impl Strategy<Value = (u8, u8, u8, i32, u8)> {
    (0..6u8, 0..7u8, 0..3u8, 1..4i32, 0..3u8)
}

fn commands(raw: &[(u8, u8, u8, i32, u8)]) -> Vec<Command> {
    raw.iter()
        .enumerate()
        .map(|(n, (order, kind, sku, qty, customer))| {
            let id = format!("o{order}");
            // Place more often than the rest, so most orders exist.
            let kind = if *kind >= 5 { 0 } else { *kind };
            let sku = ["A", "B", "C"][usize::from(*sku)];
            command(&id, n, kind, sku, *qty, *customer)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any prefix, delivered at least once with crashes before and after commits and
    /// rewinds, in any interleaving that keeps each order's events in order, leaves exactly
    /// the rows of one clean pass over the same events.
    #[test]
    fn replaying_any_prefix_any_number_of_times_gives_identical_views(
        raw in proptest::collection::vec(arb_command(), 1..60),
        picks in proptest::collection::vec(any::<u8>(), 0..60),
        faults in proptest::collection::vec((any::<bool>(), 0usize..12), 0..30),
        cut in 0usize..60,
        every in 1usize..7,
        step_hours in 1i64..30,
    ) {
        let (events, _) = history(&commands(&raw), step_hours * 3_600_000);
        let prefix = &events[..cut.min(events.len())];
        let expected = clean(prefix, every);
        prop_assert_eq!(&at_least_once(prefix, every, &faults), &expected);
        let other = interleave(prefix, &picks);
        prop_assert_eq!(&at_least_once(&other, every + 1, &faults), &expected);
        prop_assert_eq!(&clean(prefix, 1), &expected);
    }
}

/// The views' totals equal what the aggregate's own final states say, computed apart from
/// the projection.
#[test]
fn the_views_agree_with_the_aggregates_final_states() {
    // 23 orders, their commands round-robin: place with A, add B and C, remove B, then
    // confirm, cancel, or confirm and cancel, by order.
    let mut raw: Vec<(u8, u8, u8, i32, u8)> = Vec::new();
    for step in 0..6u8 {
        for order in 0..23u8 {
            let (kind, sku) = match (step, order % 3) {
                (0, _) => (0, 0),
                (1, _) => (1, 1),
                (2, _) => (1, 2),
                (3, _) => (2, 1),
                (4, 1) | (5, 2) => (4, 0),
                (4, _) => (3, 0),
                _ => continue,
            };
            raw.push((order, kind, sku, 1 + i32::from(order % 3), order % 4));
        }
    }
    let (events, orders) = history(&commands(&raw), 5 * 3_600_000);
    let mut conn = store();
    let tx = conn.transaction().unwrap();
    let epoch = claim(&tx, &part()).unwrap().epoch;
    tx.commit().unwrap();
    let versions = view_sqlite::versions(&conn).unwrap();
    let mut p = Projection::default();
    for e in &events {
        p.event(&conn, &versions, e).unwrap();
    }
    commit_all(&mut conn, epoch, &mut p);
    let mut sales: BTreeMap<(String, String, String), (i64, i64)> = BTreeMap::new();
    for order in orders.values() {
        let view = load_order(&conn, "order_summary", "order_lines", &order.id)
            .unwrap()
            .unwrap();
        assert_eq!(view.version, order.version);
        assert_eq!(view.total_cents, order.total_cents);
        assert_eq!(view.status, order.status.as_str());
        assert_eq!(view.lines.len(), order.lines.len());
        if order.status == Status::Confirmed {
            let confirmed_at = events
                .iter()
                .find(|e| e.metadata().aggregate_id == order.id && matches!(e, Event::Confirmed(_)))
                .unwrap()
                .metadata()
                .occurred_at;
            for l in &order.lines {
                let s = sales
                    .entry((day(confirmed_at), l.sku.clone(), order.currency.clone()))
                    .or_default();
                s.0 += i64::from(l.quantity);
                s.1 += i64::from(l.quantity) * l.unit_price_cents;
            }
        }
    }
    let mut stored: BTreeMap<(String, String, String), (i64, i64)> = BTreeMap::new();
    let mut stmt = conn
        .prepare("SELECT day, sku, currency, units, revenue_cents FROM product_sales_daily")
        .unwrap();
    for row in stmt
        .query_map([], |r| {
            Ok(((r.get(0)?, r.get(1)?, r.get(2)?), (r.get(3)?, r.get(4)?)))
        })
        .unwrap()
    {
        let (k, v) = row.unwrap();
        stored.insert(k, v);
    }
    assert!(!sales.is_empty(), "the script confirms some orders");
    assert_eq!(stored, sales);
}

#[test]
fn a_version_gap_is_poison_with_both_versions_and_a_duplicate_changes_nothing() {
    let raw = [(0, 0, 0, 1, 0), (0, 1, 1, 2, 0), (0, 3, 0, 1, 0)];
    let (events, _) = history(&commands(&raw), 1);
    assert_eq!(events.len(), 3);
    let conn = store();
    let versions = view_sqlite::versions(&conn).unwrap();
    let mut p = Projection::default();
    p.event(&conn, &versions, &events[0]).unwrap();
    match p.event(&conn, &versions, &events[2]) {
        Err(ProcessError::Poison { reason, .. }) => {
            assert!(
                reason.contains("version 1") && reason.contains("version 3"),
                "{reason}"
            );
        }
        other => panic!("expected poison, got {other:?}"),
    }
    p.event(&conn, &versions, &events[1]).unwrap();
    p.event(&conn, &versions, &events[0]).unwrap();
    assert_eq!(p.counts().applied, 2);
    assert_eq!(p.counts().duplicates, 1);
}

#[test]
fn a_row_the_store_would_refuse_for_good_is_poison_before_anything_is_staged() {
    let raw = [(0, 0, 0, 1, 0)];
    let (mut events, _) = history(&commands(&raw), 1);
    let Event::Placed(placed) = &mut events[0] else {
        panic!("a placement")
    };
    placed.customer_id = String::new();
    let conn = store();
    let versions = view_sqlite::versions(&conn).unwrap();
    let mut p = Projection::default();
    match p.event(&conn, &versions, &events[0]) {
        Err(ProcessError::Poison { reason, .. }) => {
            assert!(
                reason.contains("orders_by_customer") && reason.contains("empty"),
                "{reason}"
            )
        }
        other => panic!("expected poison, got {other:?}"),
    }
    assert!(p.writes().is_empty());
}

#[test]
fn days_are_utc_calendar_days() {
    assert_eq!(day(0), "1970-01-01");
    assert_eq!(day(T0), "2026-11-30");
    assert_eq!(day(T0 + DAY_MS - 1), "2026-11-30");
    assert_eq!(day(T0 + DAY_MS), "2026-12-01");
}

#[test]
fn bad_settings_are_refused_with_the_key_named() {
    let bad = ProjectorConfig {
        cached_orders: 0,
        ..ProjectorConfig::default()
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("cached_orders")
    );
    let bad = ProjectorConfig {
        db: PathBuf::new(),
        ..ProjectorConfig::default()
    };
    assert!(bad.validate().unwrap_err().to_string().contains("db"));
    assert!(ProjectorConfig::default().validate().is_ok());
    let cql = ProjectorConfig {
        store: StoreKind::Cql,
        ..ProjectorConfig::default()
    };
    assert!(
        cql.validate()
            .unwrap_err()
            .to_string()
            .contains("cql_nodes")
    );
    let bad_keyspace = ProjectorConfig {
        cql_nodes: vec!["127.0.0.1:9042".into()],
        keyspace: "views-1".into(),
        ..cql.clone()
    };
    assert!(
        bad_keyspace
            .validate()
            .unwrap_err()
            .to_string()
            .contains("keyspace")
    );
    let good = ProjectorConfig {
        cql_nodes: vec!["127.0.0.1:9042".into()],
        ..cql
    };
    assert!(good.validate().is_ok());
}

/// The rows a store holds for `id`'s lines and sales.
fn lines_and_sales(conn: &Connection, id: &str) -> (Vec<String>, i64) {
    let mut stmt = conn
        .prepare("SELECT sku FROM order_lines_v1 WHERE order_id = ?1 ORDER BY sku")
        .unwrap();
    let lines = stmt
        .query_map([id], |r| r.get(0))
        .unwrap()
        .collect::<Result<Vec<String>, _>>()
        .unwrap();
    let sales: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM product_sales_v1 WHERE order_id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    (lines, sales)
}

#[test]
fn a_row_only_a_state_between_two_commits_had_is_deleted_even_if_the_store_got_it_elsewhere() {
    // o0: placed with A and Z (v1), B added (v2), B removed (v3); o1: placed (v1), confirmed
    // (v2), cancelled (v3).
    let raw = [
        (0, 0, 0, 1, 0),
        (0, 1, 1, 1, 0),
        (0, 2, 1, 1, 0),
        (1, 0, 0, 1, 0),
        (1, 3, 0, 1, 0),
        (1, 4, 0, 1, 0),
    ];
    let (events, _) = history(&commands(&raw), 1);
    assert_eq!(events.len(), 6);
    let mut conn = store();
    let tx = conn.transaction().unwrap();
    let epoch = claim(&tx, &part()).unwrap().epoch;
    tx.commit().unwrap();
    let versions = view_sqlite::versions(&conn).unwrap();
    let mut p = Projection::default();
    p.event(&conn, &versions, &events[0]).unwrap();
    p.event(&conn, &versions, &events[3]).unwrap();
    commit_all(&mut conn, epoch, &mut p);
    // Another writer (a rebuild that read further before the switch) put version 2 of both
    // orders in the store: line B, and o1's sales.
    let mut ahead = Projection::in_memory();
    for i in [0, 1, 3, 4] {
        ahead.event_known(&events[i]).unwrap();
    }
    let tx = conn.transaction().unwrap();
    view_sqlite::execute(&tx, &versions, &ahead.writes()).unwrap();
    tx.commit().unwrap();
    assert_eq!(lines_and_sales(&conn, "o0").0, ["A", "B", "Z"]);
    assert_eq!(lines_and_sales(&conn, "o1").1, 2);
    // This projector folds versions 2 and 3 in one batch: B and the sales existed only in
    // between, and are gone after its commit.
    for i in [1, 2, 4, 5] {
        p.event(&conn, &versions, &events[i]).unwrap();
    }
    commit_all(&mut conn, epoch, &mut p);
    assert_eq!(
        lines_and_sales(&conn, "o0"),
        (vec!["A".into(), "Z".into()], 0)
    );
    assert_eq!(
        lines_and_sales(&conn, "o1").1,
        0,
        "a cancelled order sells nothing"
    );
}

#[test]
fn a_completed_order_shows_completed_and_still_counts_in_the_sales() {
    // Placed with A×2 and Z×1, confirmed, completed.
    let events = one_order(&[(0, "A", 2), (3, "", 0), (5, "", 0)]);
    let views = clean(&events, 1);
    let summary = &views["order_summary"];
    assert_eq!(summary.len(), 1);
    let completed = format!("{:?}", rusqlite::types::ValueRef::Text(b"completed"));
    assert!(summary[0].contains(&completed), "{summary:?}");
    assert_eq!(views["product_sales"].len(), 2, "{views:?}");
}

#[test]
fn an_order_read_from_a_view_that_is_ahead_of_the_others_brings_every_view_up_to_it() {
    // The order is placed, confirmed, then cancelled.
    let events = one_order(&[(0, "A", 2), (3, "", 0), (4, "", 0)]);
    let mut conn = store();
    let tx = conn.transaction().unwrap();
    let epoch = claim(&tx, &part()).unwrap().epoch;
    tx.commit().unwrap();
    let versions = view_sqlite::versions(&conn).unwrap();
    // The live projector got as far as the confirmation: every view at version 2, with sales.
    let mut live = Projection::default();
    for e in &events[..2] {
        live.event(&conn, &versions, e).unwrap();
    }
    commit_all(&mut conn, epoch, &mut live);
    // A rebuild of order_summary read further (the cancellation) and switched: that view alone
    // is at version 3.
    let mut rebuilt = Projection::in_memory();
    for e in &events {
        rebuilt.event_known(e).unwrap();
    }
    let ahead: Vec<Write> = rebuilt
        .writes()
        .into_iter()
        .filter(|w| view_of(w.table()).name == "order_summary")
        .collect();
    let tx = conn.transaction().unwrap();
    view_sqlite::execute(&tx, &versions, &ahead).unwrap();
    tx.commit().unwrap();
    // The live projector, its cache emptied at the switch, reads the order from order_summary
    // and meets the cancellation as a duplicate. Every view must still end at version 3: the
    // customer's row cancelled, the sales rows gone.
    let mut after_switch = Projection::default();
    after_switch.event(&conn, &versions, &events[2]).unwrap();
    assert_eq!(after_switch.counts().duplicates, 1);
    commit_all(&mut conn, epoch, &mut after_switch);
    assert_eq!(dump(&conn), clean(&events, 1));
}

#[test]
fn a_line_left_ahead_of_its_summary_is_added_once_and_a_missing_one_removed_by_the_event() {
    let events = one_order(&[(0, "A", 2), (1, "C", 5), (2, "C", 0)]);
    let Step::Applied(v1) = fold(None, &events[0]) else {
        panic!("placed")
    };
    // Version 1's view, but holding version 2's line C already (read without the version
    // filter, or left by a writer that stopped half-way).
    let mut ahead = v1.clone();
    let Step::Applied(v2) = fold(Some(&v1), &events[1]) else {
        panic!("added")
    };
    ahead.lines = v2.lines.clone();
    let Step::Applied(again) = fold(Some(&ahead), &events[1]) else {
        panic!("added again")
    };
    assert_eq!(again, v2, "the line is added once, units counted once");
    // The removal of a line the view lost: units still follow the event.
    let mut lost = v2.clone();
    lost.lines.retain(|l| l.sku != "C");
    let Step::Applied(v3) = fold(Some(&v2), &events[2]) else {
        panic!("removed")
    };
    let Step::Applied(v3_lost) = fold(Some(&lost), &events[2]) else {
        panic!("removed from the view that lost it")
    };
    assert_eq!(v3_lost, v3);
}

#[test]
fn a_rebuild_reports_a_gap_only_while_no_later_copy_fills_it() {
    let events = one_order(&[(0, "A", 2), (1, "C", 5), (3, "", 0)]);
    // Version 2 missing: the gap is reported with the versions.
    let mut gapped = Projection::in_memory();
    gapped.event_known(&events[0]).unwrap();
    assert!(gapped.event_known(&events[2]).is_err());
    assert_eq!(
        gapped.gaps(),
        vec!["o: at version 1, versions 2..2 missing".to_string()]
    );
    // A later copy of versions 2 and 3 (a redrive appends them) fills it: nothing to report.
    gapped.event_known(&events[1]).unwrap();
    gapped.event_known(&events[2]).unwrap();
    assert!(gapped.gaps().is_empty(), "{:?}", gapped.gaps());
}

#[test]
fn stock_levels_keep_the_highest_sequence_per_sku_in_any_order_and_a_bad_sku_is_poison() {
    let mut conn = store();
    let tx = conn.transaction().unwrap();
    let epoch = claim(&tx, &part()).unwrap().epoch;
    tx.commit().unwrap();
    let level = |sku: &str, available: i64, version: i64| eip_store::views::LevelView {
        sku: sku.into(),
        available,
        reserved: 10 - available,
        version,
        updated_at: version * 1_000,
    };
    let mut p = Projection::default();
    // Two participants' releases and reservations, read out of order and repeated.
    p.levels(&[level("A", 7, 1), level("B", 9, 1)]).unwrap();
    p.levels(&[level("A", 10, 3)]).unwrap();
    commit_all(&mut conn, epoch, &mut p);
    p.levels(&[level("A", 4, 2), level("B", 9, 1)]).unwrap();
    commit_all(&mut conn, epoch, &mut p);
    let rows = &dump(&conn)["inventory_levels"];
    assert_eq!(
        rows,
        &vec![
            "Text([65])|Integer(10)|Integer(0)|Integer(3)|Integer(3000)".to_string(),
            "Text([66])|Integer(9)|Integer(1)|Integer(1)|Integer(1000)".to_string(),
        ]
    );
    assert_eq!(p.counts().levels, 5);
    match p.levels(&[level("", 1, 1)]) {
        Err(ProcessError::Poison { reason, .. }) => {
            assert!(reason.contains("inventory_levels"), "{reason}")
        }
        other => panic!("expected poison, got {other:?}"),
    }
    assert!(p.writes().is_empty());
}
