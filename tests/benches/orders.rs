//! Orders benchmark: `eip-orders` deciding commands (journal in SQLite, an event and an outcome
//! published per command) against the runtime's stateless pass-through on the same broker,
//! in the same run.
//!
//! ```text
//! cargo bench -p eip-tests --bench orders -- [--records N] [--rounds R] [--partitions P]
//! ```
//!
//! The pass-through reads `--records` framed `OrderPlaced` records (the shared opening); the
//! orders processor reads as many commands: the first story of the scripts (place with two
//! lines, add a line, remove one, confirm), all accepted, for N/4 orders. Each is timed from
//! its first record until every output is acknowledged (the orders processor: every outcome).
//! Target: orders at 0.8x the pass-through or better. In the same run, the store's ceiling: a
//! raw rusqlite loop doing the journal's reads and writes for the same commands, and nothing
//! else.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use eip_orders::aggregate::{Command, apply, handle};
use eip_orders::{Orders, OrdersConfig};
use eip_schemas::types::CommandOutcome;
use eip_tests::bench::*;
use eip_tests::*;
use eipctl::orders::CommandRecord;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// Produces the commands of `orders` orders (story 0, four accepted commands each).
async fn fill(ep: &Endpoints, topic: &str, orders: usize) -> usize {
    let codec = codec(ep);
    let producer: BaseProducer = eip_runtime::kafka::producer_config(&bench_kafka(ep))
        .create()
        .unwrap();
    let mut n = 0;
    for i in 0..orders {
        let (id, steps, _, _) = eipctl::orders::story("bench", i as u64 * 6);
        for s in steps {
            let payload = s.record.avro(&codec).await.unwrap();
            send_blocking(
                &producer,
                BaseRecord::to(topic).key(id.as_bytes()).payload(&payload),
            );
            n += 1;
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    n
}

/// `eip-orders` over `commands` with a fresh journal and fresh events and outcomes topics:
/// commands/s from its first record until all `n` outcomes are acknowledged.
async fn orders(
    ep: &Endpoints,
    commands: &str,
    partitions: i32,
    n: usize,
    dir: &std::path::Path,
) -> f64 {
    let group = unique("bench-orders");
    let (events, outcomes) = (format!("{group}-events"), format!("{group}-outcomes"));
    create_topics(ep, &[&events, &outcomes], partitions).await;
    let mut cfg = config(
        ep,
        commands,
        &group,
        OrdersConfig {
            db: dir.join(format!("{group}.db")),
            events_topic: events.clone(),
            outcomes_topic: outcomes.clone(),
            ..OrdersConfig::default()
        },
    );
    cfg.kafka = eip_runtime::config::KafkaConfig {
        group_id: group.clone(),
        ..bench_kafka(ep)
    };
    quiet(&mut cfg);
    let p = InProcess::start_stateful(cfg.clone(), Orders::new(&cfg).unwrap()).await;
    time_to_outputs(p, "orders", commands, &outcomes, n).await
}

/// One command's journal rows, as `eip-orders` writes them: its order, its event's version
/// and JSON, and its outcome's JSON.
struct JournalRow {
    order: String,
    command_id: String,
    version: i64,
    event: String,
    outcome: String,
}

/// The journal rows of the commands [`fill`] produces, decided by the aggregate beforehand
/// (not timed).
fn journal_rows(orders: usize) -> Vec<JournalRow> {
    let mut rows = Vec::new();
    for i in 0..orders {
        let (id, steps, _, _) = eipctl::orders::story("bench", i as u64 * 6);
        let mut order = None;
        for s in steps {
            let command = match s.record {
                CommandRecord::Place(c) => Command::Place(c),
                CommandRecord::AddLine(c) => Command::AddLine(c),
                CommandRecord::RemoveLine(c) => Command::RemoveLine(c),
                CommandRecord::Confirm(c) => Command::Confirm(c),
                CommandRecord::Cancel(c) => Command::Cancel(c),
            };
            let event = handle(order.as_ref(), &command, 1_000).expect("story 0 is all accepted");
            let next = apply(order, &event);
            let outcome = CommandOutcome {
                command_id: s.command_id.clone(),
                correlation_id: command.metadata().correlation_id.clone(),
                aggregate_id: id.clone(),
                command: command.kind().to_string(),
                accepted: true,
                version: next.version,
                reason_code: None,
                reason: None,
                duplicate: false,
                decided_at: 1_000,
            };
            rows.push(JournalRow {
                order: id.clone(),
                command_id: s.command_id,
                version: next.version,
                event: serde_json::to_string(&event).unwrap(),
                outcome: serde_json::to_string(&outcome).unwrap(),
            });
            order = Some(next);
        }
    }
    rows
}

/// The store's ceiling: the journal's reads and writes for `rows` with nothing else, through
/// rusqlite on the same tables and settings: per command, the lookup of its id; per new
/// order, the snapshot and event reads; per 5,000 commands, one transaction inserting the
/// events and outcomes.
fn journal_loop(dir: &std::path::Path, rows: &[JournalRow]) -> f64 {
    let path = dir.join(format!("{}.db", unique("bench-journal")));
    let mut conn = eip_store::sqlite::connect(&path).unwrap();
    conn.execute_batch(eip_store::journal::JOURNAL_DDL).unwrap();
    let started = Instant::now();
    for (n, chunk) in rows.chunks(5_000).enumerate() {
        for r in chunk {
            let mut known = conn
                .prepare_cached("SELECT outcome FROM commands WHERE command_id = ?1")
                .unwrap();
            assert!(!known.exists([&r.command_id]).unwrap());
            if r.version == 1 {
                let mut snapshot = conn
                    .prepare_cached("SELECT state FROM snapshots WHERE aggregate_id = ?1")
                    .unwrap();
                assert!(!snapshot.exists([&r.order]).unwrap());
                let mut events = conn
                    .prepare_cached(
                        "SELECT event FROM events WHERE aggregate_id = ?1 AND version > 0",
                    )
                    .unwrap();
                assert!(!events.exists([&r.order]).unwrap());
            }
        }
        let tx = conn.transaction().unwrap();
        {
            let mut event = tx
                .prepare_cached(
                    "INSERT INTO events (aggregate_id, version, command_id, source_offset, event)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .unwrap();
            let mut outcome = tx
                .prepare_cached(
                    "INSERT INTO commands (command_id, aggregate_id, outcome) VALUES (?1, ?2, ?3)",
                )
                .unwrap();
            for (i, r) in chunk.iter().enumerate() {
                let offset = (n * 5_000 + i) as i64;
                event
                    .execute(rusqlite::params![
                        r.order,
                        r.version,
                        r.command_id,
                        offset,
                        r.event
                    ])
                    .unwrap();
                outcome
                    .execute(rusqlite::params![r.command_id, r.order, r.outcome])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    rate(rows.len(), started.elapsed())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let a = BenchArgs::parse();
    let Opening { ep, input, cpu } = opening("orders", "bench-ord", &a).await;
    let commands = unique("bench-commands");
    create_topics(&ep, &[&commands, &format!("{commands}.dlq")], a.partitions).await;
    let n = fill(&ep, &commands, a.records / 4).await;
    let dir = tempfile::tempdir().unwrap();
    let rows = journal_rows(a.records / 4);
    let (mut pt, mut ord, mut store) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=a.rounds {
        let before = cpu.sample();
        let s = journal_loop(dir.path(), &rows);
        println!(
            "round {round}: store ceiling: raw rusqlite journal loop {s:>9.0} commands/s; {}",
            cpu.per_record(before, rows.len())
        );
        store.push(s);
        let out = unique("bench-rt-out");
        create_topics(&ep, &[&out], a.partitions).await;
        let before = cpu.sample();
        let t = stateless_passthrough(&ep, &input, &out, a.records).await;
        println!(
            "round {round}: stateless pass-through {t:>9.0} records/s; {}",
            cpu.per_record(before, a.records)
        );
        let before = cpu.sample();
        let o = orders(&ep, &commands, a.partitions, n, dir.path()).await;
        println!(
            "round {round}: eip-orders             {o:>9.0} commands/s; {} ({:.2}x the pass-through)",
            cpu.per_record(before, n),
            o / t
        );
        pt.push(t);
        ord.push(o);
    }
    let (t, o, s) = (median(pt), median(ord), median(store));
    println!(
        "median: eip-orders {o:.0} commands/s against the pass-through's {t:.0} records/s: {:.2}x (target >= 0.8x: {})",
        o / t,
        if o / t >= 0.8 { "met" } else { "NOT met" }
    );
    println!(
        "median: eip-orders against the journal loop's {s:.0} commands/s: {:.2}x; the lower bound is {}",
        o / s,
        if s < t {
            "the store's (the journal loop is below the pass-through)"
        } else {
            "the runtime's (the pass-through is below the journal loop)"
        }
    );
}
