//! What eip's ScyllaDB view store relies on from the CQL server, checked against the one the
//! tests run on: the local Apache Cassandra node that `make test` starts, or the ScyllaDB
//! cluster `SCYLLA_NODES` names (`EIP_CQL_NODES` carries either to the tests).
//!
//! Each test makes a keyspace of its own and drops it at the end. Cassandra is not ScyllaDB:
//! what these checks can't show here (shard-aware routing, tablets) is listed in
//! docs/local-stack.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::ops::ControlFlow;
use std::time::Duration;

use eip_tests::unique;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::response::PagingState;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::unprepared::Statement;
use scylla::value::{CqlValue, Row};

/// The CQL contact points: `EIP_CQL_NODES` (comma-separated `host:port`), as `make test` sets it.
fn nodes() -> Vec<String> {
    std::env::var("EIP_CQL_NODES")
        .unwrap_or_else(|_| "127.0.0.1:19042".into())
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect()
}

/// A session with a fresh keyspace of this test's own, created the way a migration does it.
async fn keyspace(prefix: &str) -> (Session, String) {
    let session = SessionBuilder::new()
        .known_nodes(nodes())
        .connection_timeout(Duration::from_secs(10))
        .build()
        .await
        .unwrap_or_else(|e| panic!("no CQL server at {:?}: {e}", nodes()));
    let ks = unique(prefix).replace(['-', '.'], "_");
    let create = format!(
        "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = \
         {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
    );
    session.query_unpaged(create.as_str(), ()).await.unwrap();
    // A migration runs again on every start: IF NOT EXISTS makes the second run a no-op.
    session.query_unpaged(create.as_str(), ()).await.unwrap();
    session.use_keyspace(&ks, false).await.unwrap();
    (session, ks)
}

async fn drop_keyspace(session: &Session, ks: &str) {
    session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), ())
        .await
        .unwrap();
}

/// The one row a prepared query returns, as `T`.
async fn one_row<T>(s: &Session, statement: &PreparedStatement, values: impl SerializeRow) -> T
where
    T: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
{
    s.execute_unpaged(statement, values)
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row()
        .unwrap()
}

async fn ddl(session: &Session, cql: &str) {
    session.query_unpaged(cql, ()).await.unwrap();
    session.query_unpaged(cql, ()).await.unwrap();
    session.await_schema_agreement().await.unwrap();
}

#[tokio::test]
async fn a_write_with_an_older_timestamp_never_overwrites_a_newer_one() {
    let (s, ks) = keyspace("cql_ts").await;
    ddl(
        &s,
        "CREATE TABLE IF NOT EXISTS summary (order_id text PRIMARY KEY, status text, version bigint)",
    )
    .await;
    // The view store writes each row with USING TIMESTAMP = the event's aggregate version, so
    // a replayed or reordered older event loses to the newer one already written.
    let write = s
        .prepare(
            "INSERT INTO summary (order_id, status, version) VALUES (?, ?, ?) USING TIMESTAMP ?",
        )
        .await
        .unwrap();
    assert!(
        write.is_token_aware(),
        "the partition key is known, so writes are routed to its replica"
    );
    s.execute_unpaged(&write, ("o-1", "confirmed", 3_i64, 3_i64))
        .await
        .unwrap();
    s.execute_unpaged(&write, ("o-1", "placed", 1_i64, 1_i64))
        .await
        .unwrap();
    let read = s
        .prepare("SELECT status, version FROM summary WHERE order_id = ?")
        .await
        .unwrap();
    let row: (String, i64) = one_row(&s, &read, ("o-1",)).await;
    assert_eq!(row, ("confirmed".to_string(), 3));

    // A newer one does win.
    s.execute_unpaged(&write, ("o-1", "shipped", 4_i64, 4_i64))
        .await
        .unwrap();
    let row: (String, i64) = one_row(&s, &read, ("o-1",)).await;
    assert_eq!(row, ("shipped".to_string(), 4));
    drop_keyspace(&s, &ks).await;
}

/// The outcome of a lightweight transaction: whether it applied, and the current row's columns
/// by name. Read by name because the servers differ: Cassandra returns only `[applied]` when a
/// write applied, ScyllaDB returns the previous row with it too.
struct Lwt {
    applied: bool,
    columns: std::collections::HashMap<String, CqlValue>,
}

async fn lwt(s: &Session, statement: &PreparedStatement, values: impl SerializeRow) -> Lwt {
    let result = s
        .execute_unpaged(statement, values)
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let names: Vec<String> = result
        .column_specs()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let row: Row = result.single_row().unwrap();
    let mut columns: std::collections::HashMap<String, CqlValue> = names
        .into_iter()
        .zip(row.columns)
        .filter_map(|(name, value)| Some((name, value?)))
        .collect();
    let applied = columns
        .remove("[applied]")
        .and_then(|v| v.as_boolean())
        .expect("an [applied] column");
    Lwt { applied, columns }
}

#[tokio::test]
async fn lightweight_transactions_apply_once_and_refuse_a_stale_epoch() {
    let (s, ks) = keyspace("cql_lwt").await;
    ddl(
        &s,
        "CREATE TABLE IF NOT EXISTS owners (partition int PRIMARY KEY, epoch bigint, owner text)",
    )
    .await;
    let claim = s
        .prepare("INSERT INTO owners (partition, epoch, owner) VALUES (?, ?, ?) IF NOT EXISTS")
        .await
        .unwrap();
    assert!(
        lwt(&s, &claim, (0_i32, 1_i64, "a")).await.applied,
        "the first claim is applied"
    );
    let second = lwt(&s, &claim, (0_i32, 1_i64, "b")).await;
    assert!(
        !second.applied,
        "the second claim of the same row is refused"
    );
    assert_eq!(
        (
            second.columns.get("epoch").and_then(CqlValue::as_bigint),
            second
                .columns
                .get("owner")
                .and_then(|v| v.as_text().cloned()),
        ),
        (Some(1), Some("a".to_string())),
        "and shows the row that won"
    );

    // Fencing: a write conditioned on the epoch it was assigned with is refused once a newer
    // owner has moved the epoch on.
    let hand_over = s
        .prepare("UPDATE owners SET epoch = ?, owner = ? WHERE partition = ? IF epoch = ?")
        .await
        .unwrap();
    assert!(
        lwt(&s, &hand_over, (2_i64, "b", 0_i32, 1_i64))
            .await
            .applied,
        "the new owner moves the epoch from 1 to 2"
    );
    let stale = lwt(&s, &hand_over, (2_i64, "a", 0_i32, 1_i64)).await;
    assert!(
        !stale.applied,
        "the former owner, still at epoch 1, is refused"
    );
    assert_eq!(
        stale.columns.get("epoch").and_then(CqlValue::as_bigint),
        Some(2)
    );
    let read = s
        .prepare("SELECT epoch, owner FROM owners WHERE partition = ?")
        .await
        .unwrap();
    let row: (i64, String) = one_row(&s, &read, (0_i32,)).await;
    assert_eq!(
        row,
        (2, "b".to_string()),
        "the refused write changed nothing"
    );
    drop_keyspace(&s, &ks).await;
}

#[tokio::test]
async fn clustering_order_and_paging_give_newest_first_pages() {
    let (s, ks) = keyspace("cql_page").await;
    ddl(
        &s,
        "CREATE TABLE IF NOT EXISTS orders_by_customer (customer_id text, placed_at bigint, \
         order_id text, total bigint, PRIMARY KEY (customer_id, placed_at, order_id)) \
         WITH CLUSTERING ORDER BY (placed_at DESC, order_id ASC)",
    )
    .await;
    let insert = s
        .prepare(
            "INSERT INTO orders_by_customer (customer_id, placed_at, order_id, total) \
             VALUES (?, ?, ?, ?)",
        )
        .await
        .unwrap();
    // Written in a scrambled order; a second customer's rows must never show up.
    let n = 250_i64;
    for i in 0..n {
        let at = (i * 97) % n;
        s.execute_unpaged(&insert, ("c-1", at, format!("o-{at}"), at * 10))
            .await
            .unwrap();
        s.execute_unpaged(&insert, ("c-2", at, format!("x-{at}"), 0_i64))
            .await
            .unwrap();
    }
    let select = s
        .prepare(
            Statement::new(
                "SELECT placed_at, order_id FROM orders_by_customer WHERE customer_id = ?",
            )
            .with_page_size(100),
        )
        .await
        .unwrap();

    // Page by page, as the query API serves them, resuming from each paging state.
    let mut pages = Vec::new();
    let mut state = PagingState::start();
    loop {
        let (result, next) = s
            .execute_single_page(&select, ("c-1",), state)
            .await
            .unwrap();
        let page: Vec<(i64, String)> = result
            .into_rows_result()
            .unwrap()
            .rows::<(i64, String)>()
            .unwrap()
            .map(Result::unwrap)
            .collect();
        pages.push(page);
        match next.into_paging_control_flow() {
            ControlFlow::Break(()) => break,
            ControlFlow::Continue(s) => state = s,
        }
    }
    // A server may end a page early (ScyllaDB does under load), never make one larger.
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert!(
        sizes.len() >= 3 && sizes.iter().all(|n| *n <= 100),
        "pages of at most 100 rows: {sizes:?}"
    );
    let all: Vec<(i64, String)> = pages.into_iter().flatten().collect();
    let expected: Vec<(i64, String)> = (0..n).rev().map(|at| (at, format!("o-{at}"))).collect();
    assert_eq!(all, expected, "newest first, every row once");
    drop_keyspace(&s, &ks).await;
}

/// The ScyllaDB view store against the CQL server: the same conformance suite SQLite passes.
#[tokio::test]
async fn the_cql_view_store_passes_the_conformance_suite_and_refuses_an_oversized_key_for_good() {
    use eip_store::view_scylla::{ScyllaSettings, ScyllaViews};
    use eip_store::view_store::{StoreError, ViewStore};
    use eip_store::views::{OutcomeView, diff, outcome_rows};
    let mut settings = ScyllaSettings::new(nodes());
    settings.keyspace = unique("views").replace(['-', '.'], "_");
    let store = ScyllaViews::connect(&settings).await.unwrap();
    // Connecting again runs the migrations again: they are idempotent.
    let again = ScyllaViews::connect(&settings).await.unwrap();
    drop(again);
    eip_store::conformance::run(&store).await;

    // A partition key over 64 KiB is refused by the server itself: a permanent error, which
    // the projector dead-letters instead of retrying.
    let huge = OutcomeView {
        command_id: "k".repeat(70_000),
        correlation_id: "r".into(),
        aggregate_id: "o".into(),
        command: "PlaceOrder".into(),
        accepted: true,
        version: 1,
        reason_code: None,
        reason: None,
        decided_at: 1,
    };
    match store.apply(&diff(&[], &outcome_rows(&huge), 1)).await {
        Err(StoreError::Permanent(reason)) => assert!(!reason.is_empty()),
        other => panic!("expected a permanent refusal, got {other:?}"),
    }
    store.drop_keyspace().await.unwrap();
}

/// The saga monitor's views on the CQL server: the same saga conformance suite the monitor's
/// SQLite file passes (bucketed status pages, events as of an observation offset, deadlines
/// by monitor partition, per-partition totals, newest wins).
#[tokio::test]
async fn the_saga_views_on_cql_pass_the_saga_conformance_suite() {
    use eip_store::saga_store::{LazyCql, SagaStore};
    use eip_store::view_scylla::{ScyllaSettings, ScyllaViews};
    let mut settings = ScyllaSettings::new(nodes());
    settings.keyspace = unique("sagas").replace(['-', '.'], "_");
    let views = std::sync::Arc::new(ScyllaViews::connect(&settings).await.unwrap());
    let store = SagaStore::Cql(std::sync::Arc::new(LazyCql::connected(views.clone())));
    eip_store::saga_conformance::run(&store).await;
    views.drop_keyspace().await.unwrap();
}

/// The saga monitor's group commit on CQL, cut half-way: the rows of a second commit land but
/// not its totals. A new owner of the partition starts after the first commit's offset, reads
/// the saga as of it (without the second commit's event, which it folds again), keeps the
/// first commit's totals, and restores the saga's timer from its deadline row.
#[tokio::test]
async fn a_monitor_commit_cut_half_way_on_cql_is_read_as_of_the_last_totals() {
    use eip_runtime::{Flush, PartitionId};
    use eip_saga::config::MonitorConfig;
    use eip_saga::monitor_store::{Store, event_view};
    use eip_schemas::types::SagaObservation;
    use eip_store::saga_views::{SagaView, event_row, saga_rows};
    use eip_store::view_any::StoreKind;
    use eip_store::views::{Write, diff};
    let keyspace = unique("monitor").replace(['-', '.'], "_");
    let config = MonitorConfig {
        store: StoreKind::Cql,
        cql_nodes: nodes(),
        keyspace: keyspace.clone(),
        observations_topic: "observations".into(),
        ..MonitorConfig::default()
    };
    let store = Store::open(&config, "cut").unwrap();
    let pid = PartitionId {
        topic: "observations".into(),
        partition: 0,
    };
    let observation = |n: i64| SagaObservation {
        saga_id: "order-1".into(),
        event_type: format!("eip.test.Step{n}"),
        event_id: format!("e{n}"),
        correlation_id: "corr".into(),
        causation_id: None,
        occurred_at: 1_000 * n,
        topic: "steps".into(),
        partition: 0,
        offset: n,
        reason: None,
        reason_code: None,
        step: None,
        actor: None,
    };
    let view = |version: i64, deadline: i64| SagaView {
        saga_id: "order-1".into(),
        saga: "cut".into(),
        status: "running".into(),
        step: Some(format!("step{version}")),
        expect: None,
        remaining: Vec::new(),
        failed_step: None,
        failure_reason: None,
        failure_code: None,
        correlation_id: "corr".into(),
        started_at: Some(1_000),
        updated_at: 1_000 * version,
        deadline_at: Some(deadline),
        flags: Vec::new(),
        path: serde_json::json!([]),
        monitor_partition: 0,
        version,
    };
    // A new partition: nothing applied, no timers.
    let opened = store.claim(&pid).await.unwrap();
    assert_eq!(opened.applied, Some(-1));
    assert!(opened.timers.is_empty());
    let mut state = opened.state;
    // First commit: the saga's first event, folded at offset 5.
    let first = view(1, 50_000);
    state.staged = diff(&[], &saga_rows(&first), 1);
    state.staged.push(Write::Upsert {
        row: event_row(&event_view(&observation(1), Some(5))),
        stamp: 1,
    });
    state.stats.moved(None, &first);
    state.stats.saw("eip.test.Step1");
    let committed = state.stats.clone();
    let flush = Flush {
        partition: &pid,
        up_to: Some(5),
        timers: &[],
    };
    store.commit(&mut state, &flush).await.unwrap();
    // Second commit, cut after its rows: the event folded at 6 and the saga at version 2
    // are written, its totals are not.
    let second = view(2, 90_000);
    let reads = store.reads();
    let mut rows = diff(&saga_rows(&first), &saga_rows(&second), 2);
    rows.push(Write::Upsert {
        row: event_row(&event_view(&observation(2), Some(6))),
        stamp: 1,
    });
    reads.apply(&rows).await.unwrap();
    assert_eq!(reads.events("order-1", None).await.unwrap().len(), 2);
    // The new owner.
    let opened = store.claim(&pid).await.unwrap();
    assert_eq!(
        opened.applied,
        Some(5),
        "starts after the last totals' offset"
    );
    assert_eq!(
        opened.state.stats, committed,
        "the totals of the first commit"
    );
    let saga = store.load(&opened.state, "order-1").await.unwrap();
    assert_eq!(
        saga.events.keys().cloned().collect::<Vec<_>>(),
        vec!["e1".to_string()],
        "read as of offset 5: the event folded at 6 is folded again"
    );
    // The timer comes from the deadline row (the cut commit's: the refold sets it again).
    assert_eq!(
        opened
            .timers
            .iter()
            .map(|t| (String::from_utf8_lossy(&t.key).into_owned(), t.at_ms))
            .collect::<Vec<_>>(),
        vec![("order-1".to_string(), 90_000)]
    );
    let eip_store::saga_store::SagaStore::Cql(cql) = &reads else {
        panic!("a CQL store")
    };
    cql.get().await.unwrap().drop_keyspace().await.unwrap();
}
