//! The event log is the source of truth: history topics keep every record, and what depends
//! on replaying them from offset 0 refuses to go on when it can't; a rebuild never switches
//! past a gap, and one that was cancelled can't come back and overtake its successor.
//! Driven from outside: topics made and truncated with Kafka's admin API, `eipctl` run as a
//! child process, the views read with SQLite.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: fail loudly

use eip_runtime::topics::TopicRole;
use eip_store::view_store::SqliteViews;
use eip_tests::cqrs::{
    Pair, eipctl, eipctl_run, eipctl_run_owned, running_pair, stack, start_orders, start_projector,
};
use eip_tests::orders::{WAIT, produce_script};
use eip_tests::views::{caught_up, check_views};
use eip_tests::*;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

fn orders_in(db: &std::path::Path) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM order_summary", [], |r| r.get(0))
        .unwrap()
}

fn query_one<T: rusqlite::types::FromSql>(db: &std::path::Path, sql: &str) -> Option<T> {
    rusqlite::Connection::open(db)
        .ok()?
        .query_row(sql, [], |r| r.get(0))
        .ok()
}

/// Deletes the first half of partition `partition` of `topic` (all of it with `all`), as
/// retention would.
async fn truncate(ep: &Endpoints, topic: &str, partition: i32, all: bool) -> i64 {
    let marks = {
        let (ep, topic) = (ep.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || eipctl::watermarks(&ep, &topic))
            .await
            .unwrap()
            .unwrap()
    };
    let (_, _, high) = marks.into_iter().find(|(p, _, _)| *p == partition).unwrap();
    let cut = if all { high } else { high / 2 };
    assert!(cut > 0, "{topic}[{partition}] holds {high} records");
    let admin: AdminClient<DefaultClientContext> = eip_runtime::kafka::base_config(&ep.kafka())
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(cut))
        .unwrap();
    admin
        .delete_records(&tpl, &AdminOptions::new())
        .await
        .unwrap();
    cut
}

async fn start_error(result: Result<InProcess, eip_runtime::RuntimeError>) -> String {
    match result {
        Ok(running) => match tokio::time::timeout(WAIT, running.join()).await {
            Ok(Err(e)) => eip_schemas::chain(&e),
            other => panic!("it should have stopped with an error: {other:?}"),
        },
        Err(e) => eip_schemas::chain(&e),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_that_cannot_be_replayed_whole_stops_processors_and_rebuilds_with_the_reason() {
    let ep = endpoints();
    let s = stack(&ep, "history").await;
    let codec = codec(&ep);

    // An events topic created as a plain stream keeps the broker's 7 days: eip-orders and the
    // projector refuse to start, naming the topic and the setting.
    let streamed = unique("history-streamed");
    eipctl::create_topics(
        &ep,
        std::slice::from_ref(&streamed),
        3,
        Some(TopicRole::Stream),
    )
    .await
    .unwrap();
    let mut cfg = config(
        &ep,
        &s.names.input,
        &s.names.group,
        eip_orders::OrdersConfig {
            db: s.orders_db.clone(),
            events_topic: streamed.clone(),
            outcomes_topic: s.outcomes.clone(),
            ..Default::default()
        },
    );
    let refused = start_error(
        InProcess::try_start_stateful(cfg.clone(), eip_orders::Orders::new(&cfg).unwrap()).await,
    )
    .await;
    assert!(
        refused.contains(&format!(
            "{streamed}: retention.ms is 604800000 (must be -1)"
        )),
        "{refused}"
    );
    assert!(refused.contains("accept_truncated_history"), "{refused}");
    let (code, out) = eipctl_run(&ep, &["topics", "check", &streamed]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("retention.ms is 604800000"), "{out}");
    // `eipctl topics create` brings the existing topic to its role, and then it starts.
    let (code, out) = eipctl_run(&ep, &["topics", "create", &streamed, "--role", "history"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("changed {streamed}: retention.ms 604800000 -> -1")),
        "{out}"
    );
    let (code, out) = eipctl_run(&ep, &["topics", "check", &streamed]).await;
    assert_eq!(code, Some(0), "{out}");
    let orders = InProcess::try_start_stateful(cfg.clone(), eip_orders::Orders::new(&cfg).unwrap())
        .await
        .unwrap();
    orders.stop().await.unwrap();

    // The pair runs on topics eip created, and the views fill.
    let orders = start_orders(&ep, &s).await;
    let projector = start_projector(&ep, &s).await;
    let script = produce_script(&ep, &codec, &s.names.input, "hist", 300, 0).await;
    eventually("the script in the views", WAIT, || async {
        caught_up(&s.views_db, &[&script]).then_some(())
    })
    .await;
    orders.stop().await.unwrap();
    projector.stop().await.unwrap();
    let before = orders_in(&s.views_db);
    assert!(before > 200, "{before} orders in the views");

    // Retention takes the first half of events partition 0.
    let cut = truncate(&ep, &s.events, 0, false).await;
    // And all of outcomes partition 1: a rebuild must still see that partition as read to its
    // end (it starts at the low watermark, not at offset 0).
    truncate(&ep, &s.outcomes, 1, true).await;
    let gone = format!("{}: partition 0 starts at offset {cut}", s.events);

    // The projector refuses to start.
    let refused = start_error({
        let mut pcfg = config(
            &ep,
            &s.events,
            &unique("g-proj"),
            eip_projector::ProjectorConfig {
                db: s.views_db.clone(),
                ..Default::default()
            },
        );
        pcfg.pipeline.inputs = vec![s.events.clone(), s.outcomes.clone()];
        InProcess::try_start_stateful(pcfg.clone(), eip_projector::Projector::new(&pcfg).unwrap())
            .await
    })
    .await;
    assert!(refused.contains(&gone), "{refused}");

    // A rebuild refuses to start; told to go on, it finds the orders whose first versions are
    // gone and does not switch. The live view keeps every order.
    let rebuild = s.rebuild_args("order_summary");
    let (code, out) = eipctl_run_owned(&ep, &rebuild).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&gone), "{out}");
    assert!(out.contains("--accept-truncated-history"), "{out}");
    let mut told = rebuild.clone();
    told.push("--accept-truncated-history".into());
    let (code, out) = eipctl_run_owned(&ep, &told).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("not switching") && out.contains("versions 1.."),
        "{out}"
    );
    assert_eq!(
        query_one::<i64>(
            &s.views_db,
            "SELECT live FROM view_versions WHERE view = 'order_summary'"
        ),
        Some(1)
    );
    assert_eq!(orders_in(&s.views_db), before, "the live view lost orders");

    // eip-orders with a lost journal can't rebuild those orders: it refuses to start, and
    // even when told to accept the truncation it stops at the partition's read-back rather
    // than accept a reused order id at version 1.
    cfg.processor.events_topic = s.events.clone();
    cfg.processor.db = s.orders_db.with_file_name("lost-journal.db");
    let refused = start_error(
        InProcess::try_start_stateful(cfg.clone(), eip_orders::Orders::new(&cfg).unwrap()).await,
    )
    .await;
    assert!(refused.contains(&gone), "{refused}");
    cfg.pipeline.accept_truncated_history = vec![s.events.clone()];
    let refused = start_error(
        InProcess::try_start_stateful(cfg.clone(), eip_orders::Orders::new(&cfg).unwrap()).await,
    )
    .await;
    assert!(
        refused.contains(&format!("[0] starts at offset {cut}"))
            && refused.contains("the journal needs it from offset 0"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_rebuild_that_wakes_up_can_neither_write_nor_switch_over_its_successor() {
    let ep = endpoints();
    let codec = codec(&ep);
    let Pair {
        stack: s,
        orders,
        projector,
        first,
    } = running_pair(&ep, &codec, "rebuild-zombie", "zb1", 600).await;
    let db = s.views_db.display().to_string();
    let args = |hold: &'static str| {
        let mut args = s.rebuild_args("order_summary");
        args.extend(["--hold-after-begin".to_string(), hold.to_string()]);
        args
    };
    let spawn = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        eipctl(&ep, &refs)
    };
    let building = |generation: i64| {
        query_one::<i64>(
            &s.views_db,
            &format!(
                "SELECT version FROM view_rebuilds WHERE generation = {generation} AND state = \
                 'building'"
            ),
        )
    };

    // Rebuild A claims version 2 and is stopped (SIGSTOP: a hung host, a paused VM).
    let mut a = spawn(args("2s"));
    eventually("rebuild A began", WAIT, || async { building(1) }).await;
    a.signal("STOP");
    // The operator cancels it and starts B, which claims version 2 again.
    let (code, out) =
        eipctl_run(&ep, &["projection", "cancel", "order_summary", "--db", &db]).await;
    assert_eq!(code, Some(0), "{out}");
    let mut b = spawn(args("3s"));
    eventually("rebuild B began", WAIT, || async { building(2) }).await;
    // A wakes while B is still building the same version number: it must fail, and must
    // neither write to B's tables, nor switch, nor drop them.
    a.signal("CONT");
    let status = a.wait(WAIT).await;
    let out = a.log_text();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("was cancelled while it ran"), "{out}");
    assert_eq!(building(2), Some(2), "B must still be building");
    assert_eq!(
        query_one::<i64>(
            &s.views_db,
            "SELECT live FROM view_versions WHERE view = 'order_summary'"
        ),
        Some(1)
    );
    // B switches, and the live projector goes on from the new version: more orders arrive,
    // and every view is exact.
    let status = b.wait(WAIT).await;
    let out = b.log_text();
    assert!(status.success(), "{out}");
    assert!(
        out.contains("switched readers from version 1 to 2"),
        "{out}"
    );
    let second = produce_script(&ep, &codec, &s.names.input, "zb2", 300, 0).await;
    eventually("the second script in the views", WAIT, || async {
        caught_up(&s.views_db, &[&first, &second]).then_some(())
    })
    .await;
    orders.stop().await.unwrap();
    projector.stop().await.unwrap();
    let mut both = first;
    both.absorb(second);
    check_views(&SqliteViews::open(&s.views_db, 2).unwrap(), &both).await;
}
