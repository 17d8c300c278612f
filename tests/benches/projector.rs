//! Projector benchmark, end to end through the broker: order events from a topic into the
//! SQLite views, against raw rdkafka consuming the same topic and against the projector's own
//! write path with no broker (the store's bound), all in the same run.
//!
//! ```text
//! cargo bench -p eip-tests --bench projector -- [--orders N] [--rounds R] [--partitions P]
//! ```
//!
//! It produces the histories of `--orders` orders (default 50,000; four events each: placed,
//! a line added, a line removed, confirmed) to an events topic, Avro-framed and keyed by order
//! id, then per round: raw consume of every record; the projector's write path on the same
//! events without a broker; and `eip-projector` in this process, timed from its first record
//! until every order is durable at version 4 in a fresh SQLite file. The target is the
//! projector at 0.9x the raw consume; the line also gives the ratio to the write path and says
//! which bound binds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use eip_projector::{Projector, ProjectorConfig, sample};
use eip_tests::bench::*;
use eip_tests::*;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

async fn fill(ep: &Endpoints, topic: &str, events: &[eip_orders::aggregate::Event]) {
    let codec = codec(ep);
    let producer: BaseProducer = eip_runtime::kafka::producer_config(&bench_kafka(ep))
        .create()
        .unwrap();
    use eip_orders::aggregate::Event;
    for e in events {
        let payload = match e {
            Event::Placed(x) => codec.encode(x).await,
            Event::LineAdded(x) => codec.encode(x).await,
            Event::LineRemoved(x) => codec.encode(x).await,
            Event::Confirmed(x) => codec.encode(x).await,
            Event::Cancelled(x) => codec.encode(x).await,
            Event::Completed(x) => codec.encode(x).await,
        }
        .unwrap();
        let key = e.metadata().aggregate_id.as_bytes();
        send_blocking(
            &producer,
            BaseRecord::to(topic).key(key).payload(payload.as_ref()),
        );
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// Runs the projector over `events_topic` into a fresh file: events/s from its first record
/// until every one of `orders` orders is at version 4.
async fn projector(
    ep: &Endpoints,
    events_topic: &str,
    outcomes_topic: &str,
    orders: usize,
    n: usize,
    dir: &std::path::Path,
) -> f64 {
    let group = unique("bench-proj");
    let db = dir.join(format!("{group}.db"));
    let mut cfg = config(
        ep,
        events_topic,
        &group,
        ProjectorConfig {
            db: db.clone(),
            ..Default::default()
        },
    );
    cfg.kafka = eip_runtime::config::KafkaConfig {
        group_id: group.clone(),
        ..bench_kafka(ep)
    };
    cfg.pipeline.inputs = vec![events_topic.to_string(), outcomes_topic.to_string()];
    quiet(&mut cfg);
    let p = InProcess::start_stateful(cfg.clone(), Projector::new(&cfg).unwrap()).await;
    let first = loop {
        if p.metric("eip_records_consumed_total") > 0.0 {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    // Done when the ledger's applied offsets cover every event (the topic is fresh, so its
    // offsets are 0..n): a read of a few rows, not a scan of the views that would take CPU
    // from the projector on these two cores. The views are checked once at the end.
    let conn = rusqlite::Connection::open(&db).unwrap();
    loop {
        let applied: i64 = conn
            .query_row(
                "SELECT COALESCE(SUM(applied + 1), 0) FROM partitions WHERE topic = ?1",
                [events_topic],
                |r| r.get(0),
            )
            .unwrap_or(0);
        if applied as usize >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = first.elapsed();
    p.stop().await.unwrap();
    let done: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM order_summary WHERE version = 4",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(done as usize, orders, "every order at version 4");
    rate(n, took)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = BenchArgs::parse();
    println!("log level {}", eip_tests::bench::default_logging());
    let orders = args.usize("--orders", 50_000);
    let events = sample::histories(orders);
    let n = events.len();
    let ep = endpoints();
    register(&ep).await;
    let topic = unique("bench-events");
    let outcomes = format!("{topic}-outcomes");
    let dlqs = (format!("{topic}.dlq"), format!("{outcomes}.dlq"));
    create_topics(&ep, &[&topic, &outcomes, &dlqs.0, &dlqs.1], args.partitions).await;
    fill(&ep, &topic, &events).await;
    println!(
        "projector end to end: {n} order events ({orders} orders), {} partitions, {} rounds",
        args.partitions, args.rounds
    );
    let dir = tempfile::tempdir().unwrap();
    let (mut raw, mut path, mut proj) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let r = raw_consume(&ep, &topic, args.partitions, n);
        let (w, _) = sample::write_path(&dir.path().join(format!("w{round}.db")), &events);
        let p = projector(&ep, &topic, &outcomes, orders, n, dir.path()).await;
        println!(
            "round {round}: raw consume {r:>9.0}/s | write path, no broker {w:>9.0}/s | projector {p:>9.0}/s | projector/raw {:.2}, projector/write path {:.2}",
            p / r,
            p / w
        );
        raw.push(r);
        path.push(w);
        proj.push(p);
    }
    let (r, w, p) = (median(raw), median(path), median(proj));
    let bound = if w < r {
        "the SQLite write path"
    } else {
        "the broker consume"
    };
    println!(
        "median: projector {p:.0} events/s; {:.2}x raw consume (target >= 0.9x: {}), {:.2}x its own write path with no broker; the binding limit is {bound} ({:.0}/s), and the projector reaches {:.2}x of it",
        p / r,
        if p / r >= 0.9 { "met" } else { "NOT met" },
        p / w,
        r.min(w),
        p / r.min(w),
    );
}
