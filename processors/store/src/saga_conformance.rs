//! The conformance suite of the saga views: the same writes through [`SagaStore::apply`]
//! give the same answers on the monitor's SQLite file and on CQL. `eip-store`'s tests run it
//! on SQLite, `tests/tests/cql.rs` on the CQL server. It panics with the failed expectation.

#![allow(clippy::expect_used)] // a test suite: a failed expectation panics, naming it

use crate::saga_store::SagaStore;
use crate::saga_views::{SagaEventView, SagaStats, SagaView, event_row, saga_rows, stats_row};
use crate::views::{Write, diff};

fn saga(id: &str, status: &str, updated_at: i64, version: i64, partition: i64) -> SagaView {
    let running = status == "running";
    SagaView {
        saga_id: id.into(),
        saga: "conformance".into(),
        status: status.into(),
        step: Some("reserve".into()),
        expect: running.then(|| "outcome:reserve".into()),
        remaining: vec!["pay".into(), "ship".into()],
        failed_step: (status == "compensating").then(|| "pay".into()),
        failure_reason: (status == "compensating").then(|| "card declined".into()),
        failure_code: (status == "compensating").then(|| "declined".into()),
        correlation_id: format!("corr-{}", &id[..id.len().min(6)]),
        started_at: Some(1_000),
        updated_at,
        deadline_at: running.then_some(updated_at + 15_000),
        flags: if running {
            Vec::new()
        } else {
            vec!["late:ship".into()]
        },
        path: serde_json::json!([{ "step": "reserve", "state": status }]),
        monitor_partition: partition,
        version,
    }
}

fn event(id: &str, at: i64, n: i64, folded_at: i64) -> SagaEventView {
    SagaEventView {
        saga_id: id.into(),
        occurred_at: at,
        event_id: format!("{id}:e{n}"),
        event_type: "eip.test.Reserved".into(),
        correlation_id: "corr".into(),
        causation_id: (n > 1).then(|| format!("{id}:e{}", n - 1)),
        topic: "inventory".into(),
        partition: 3,
        offset: 100 + n,
        reason: None,
        reason_code: None,
        step: Some("reserve".into()),
        actor: None,
        folded_at: Some(folded_at),
    }
}

fn upserts(s: &SagaView) -> Vec<Write> {
    diff(&[], &saga_rows(s), s.version)
}

/// Runs the suite on `store`, whose saga tables are empty.
pub async fn run(store: &SagaStore) {
    // Thirty running sagas over two monitor partitions, some updated at the same instant,
    // so a page boundary falls inside a tie and the buckets of CQL are all used.
    let mut running = Vec::new();
    for i in 0..30i64 {
        let id = format!("saga-{i:03}");
        let s = saga(&id, "running", 10_000 + (i / 3) * 10, 1, i % 2);
        store.apply(&upserts(&s)).await.expect("write a saga");
        running.push(s);
    }
    let one = &running[7];
    assert_eq!(
        store.saga(&one.saga_id).await.expect("read"),
        Some(one.clone()),
        "a saga reads back as written"
    );
    assert_eq!(store.saga("saga-none").await.expect("read"), None);

    // Paging: stalest first, ties by id, every saga once.
    let mut expected: Vec<(i64, String)> = running
        .iter()
        .map(|s| (s.updated_at, s.saga_id.clone()))
        .collect();
    expected.sort();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let (page, next) = store.list("running", after.clone(), 7).await.expect("list");
        seen.extend(page.iter().map(|s| (s.updated_at, s.saga_id.clone())));
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(
        seen, expected,
        "the pages list every running saga once, stalest first"
    );

    // Events in time order; as of an observation offset, only those folded by then.
    let events = [
        event("saga-007", 2_000, 2, 41),
        event("saga-007", 1_000, 1, 40),
    ];
    let rows: Vec<Write> = events
        .iter()
        .map(|e| Write::Upsert {
            row: event_row(e),
            stamp: 1,
        })
        .collect();
    store.apply(&rows).await.expect("write events");
    let all = store.events("saga-007", None).await.expect("events");
    assert_eq!(
        all,
        vec![events[1].clone(), events[0].clone()],
        "in time order"
    );
    let as_of = store.events("saga-007", Some(40)).await.expect("events");
    assert_eq!(
        as_of,
        vec![events[1].clone()],
        "only what was folded by offset 40"
    );

    // The saga moves on: its rows follow, its deadline goes, and a late write of the older
    // state changes nothing.
    let moved = saga("saga-007", "compensating", 20_000, 2, one.monitor_partition);
    store
        .apply(&diff(&saga_rows(one), &saga_rows(&moved), 2))
        .await
        .expect("move");
    // (Only the saga's own row: a SQLite delete leaves no tombstone to refuse a late upsert
    // of a deleted row, and the monitor's SQLite commits are fenced by its epoch instead.)
    let late: Vec<Write> = upserts(one)
        .into_iter()
        .filter(|w| w.table().name == crate::saga_views::SAGAS.name)
        .collect();
    store.apply(&late).await.expect("a late write");
    assert_eq!(
        store.saga("saga-007").await.expect("read"),
        Some(moved.clone())
    );
    let (compensating, next) = store.list("compensating", None, 10).await.expect("list");
    assert_eq!(compensating, vec![moved.clone()]);
    assert_eq!(next, None, "a page that is not full is the last");
    let deadlines = store
        .deadlines(one.monitor_partition)
        .await
        .expect("deadlines");
    assert!(
        !deadlines.iter().any(|(id, _)| id == "saga-007"),
        "a saga with no deadline has no deadline row: {deadlines:?}"
    );
    let mut want: Vec<(String, i64)> = running
        .iter()
        .filter(|s| s.monitor_partition == 1 && s.saga_id != "saga-007")
        .map(|s| (s.saga_id.clone(), s.deadline_at.expect("running")))
        .collect();
    let mut got = deadlines;
    want.sort();
    got.sort();
    assert_eq!(got, want, "partition 1's deadlines");

    let by_corr = store
        .by_correlation("corr-saga-0")
        .await
        .expect("by correlation");
    assert_eq!(by_corr.len(), 30, "every saga of the correlation id");
    assert!(by_corr.windows(2).all(|w| w[0].saga_id < w[1].saga_id));

    // Totals: each partition's row, newest wins by the offset it counts through.
    let mut p0 = SagaStats::default();
    p0.moved(None, &running[0]);
    p0.saw("eip.test.Reserved");
    let mut p1 = SagaStats::default();
    p1.moved(None, &running[1]);
    p1.moved(Some(&running[1]), &moved);
    let rows = vec![
        Write::Upsert {
            row: stats_row("conformance", 0, &p0, 50),
            stamp: 51,
        },
        Write::Upsert {
            row: stats_row("conformance", 1, &p1, 70),
            stamp: 71,
        },
    ];
    store.apply(&rows).await.expect("totals");
    let stale = SagaStats::default();
    store
        .apply(&[Write::Upsert {
            row: stats_row("conformance", 0, &stale, 20),
            stamp: 21,
        }])
        .await
        .expect("a late total");
    let total = store.stats("conformance").await.expect("totals");
    assert_eq!(
        total.counts(),
        vec![("compensating".into(), 1), ("running".into(), 1)]
    );
    assert_eq!(
        total.failure_groups(),
        vec![("pay".into(), "declined".into(), 1)]
    );
    assert_eq!(total.events.get("eip.test.Reserved"), Some(&1));
    assert_eq!(
        store
            .partition_stats("conformance", 0)
            .await
            .expect("totals"),
        Some((p0, 50)),
        "the late total lost"
    );
    assert_eq!(
        store
            .partition_stats("conformance", 9)
            .await
            .expect("totals"),
        None
    );
}
