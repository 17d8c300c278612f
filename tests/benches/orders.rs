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
//! Target: orders at 0.8x the pass-through or better.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use eip_orders::{Orders, OrdersConfig};
use eip_tests::bench::*;
use eip_tests::*;
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
    let consumed = p
        .running
        .metrics
        .consumed
        .with_label_values(&["orders", commands]);
    let produced = p
        .running
        .metrics
        .produced
        .with_label_values(&["orders", &outcomes]);
    let mut first = None;
    while (produced.get() as usize) < n {
        if first.is_none() && consumed.get() > 0 {
            first = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = first.unwrap_or_else(Instant::now).elapsed();
    p.stop().await.unwrap();
    rate(n, elapsed)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let a = BenchArgs::parse();
    let Opening { ep, input, cpu } = opening("orders", "bench-ord", &a).await;
    let commands = unique("bench-commands");
    create_topics(&ep, &[&commands, &format!("{commands}.dlq")], a.partitions).await;
    let n = fill(&ep, &commands, a.records / 4).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut pt, mut ord) = (Vec::new(), Vec::new());
    for round in 1..=a.rounds {
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
    let (t, o) = (median(pt), median(ord));
    println!(
        "median: eip-orders {o:.0} commands/s against the pass-through's {t:.0} records/s: {:.2}x (target >= 0.8x: {})",
        o / t,
        if o / t >= 0.8 { "met" } else { "NOT met" }
    );
}
