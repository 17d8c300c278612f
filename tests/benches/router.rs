//! Router throughput benchmark: the router with 10 and with 100 rules against raw rdkafka
//! pass-through, on the same broker and input topic, in one run.
//!
//! ```text
//! make bench
//! cargo bench -p eip-tests --bench router -- [--records N] [--rounds R] [--partitions P]
//! ```
//!
//! The input is framed `OrderPlaced` records. The rules (see `eip_tests::bench::router_rules`)
//! are a realistic table where only the last rule matches, so every record evaluates every
//! rule (decode through the registry cache, then field predicates, ranges, regexes, nested
//! paths), and is forwarded byte for byte with the router's headers. Each configuration is
//! timed from its first consumed record to its last acknowledged output. Rounds alternate
//! raw, raw adding the router's version header, 10 rules, 100 rules, so broker drift hits all
//! of them; the figures are medians. The second baseline separates the router's own cost from
//! the broker's cost of storing one more header per record.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use eip_router::processor::{RULES_VERSION, RouterConfig};
use eip_tests::bench::*;
use eip_tests::*;

/// Runs the router with `rules` rules over `input` into a fresh topic; returns records/s.
async fn router_run(ep: &Endpoints, input: &str, partitions: i32, n: usize, rules: usize) -> f64 {
    let out = unique("bench-router-out");
    create_topics(ep, &[&out], partitions).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, router_rules(rules, &out)).unwrap();
    let group = unique("bench-router");
    let mut cfg = config(
        ep,
        input,
        &group,
        RouterConfig {
            rules: path.display().to_string(),
            retry_delays: std::env::var("EIP_BENCH_RETRY_DELAYS")
                .map(|v| v.split(',').map(str::to_string).collect())
                .unwrap_or_else(|_| RouterConfig::default().retry_delays),
            ..RouterConfig::default()
        },
    );
    cfg.kafka = eip_runtime::config::KafkaConfig {
        group_id: group.clone(),
        ..bench_kafka(ep)
    };
    cfg.pipeline.create_topics = true;
    quiet(&mut cfg);
    let (router, _extras) = eip_router::build(&mut cfg).unwrap();
    let p = InProcess::start(cfg, router).await;
    let m = &p.running.metrics;
    let consumed = m.consumed.with_label_values(&["router", input]);
    let produced = m.produced.with_label_values(&["router", &out]);
    let mut first = None;
    while (produced.get() as usize) < n {
        if first.is_none() && consumed.get() > 0 {
            first = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = first.unwrap().elapsed();
    p.stop().await.unwrap();
    rate(n, elapsed)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let a = BenchArgs::parse();
    let Opening { ep, input, cpu } = opening("router", "bench-rin", &a).await;

    let (mut raw, mut raw_h, mut r10, mut r100) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=a.rounds {
        let out = unique("bench-raw-out");
        create_topics(&ep, &[&out], a.partitions).await;
        let (ep2, i2, o2) = (ep.clone(), input.clone(), out.clone());
        let before = cpu.sample();
        let r = tokio::task::spawn_blocking(move || raw_passthrough(&ep2, &i2, &o2, a.records))
            .await
            .unwrap();
        println!(
            "round {round}: raw rdkafka pass-through {r:>9.0} records/s; {}",
            cpu.per_record(before, a.records)
        );
        let out = unique("bench-raw-out");
        create_topics(&ep, &[&out], a.partitions).await;
        let (ep2, i2, o2) = (ep.clone(), input.clone(), out.clone());
        let before = cpu.sample();
        let rh = tokio::task::spawn_blocking(move || {
            raw_passthrough_with(&ep2, &i2, &o2, a.records, &[(RULES_VERSION, "bench")])
        })
        .await
        .unwrap();
        println!(
            "round {round}: raw + version header    {rh:>9.0} records/s; {}",
            cpu.per_record(before, a.records)
        );
        let mut by_rules = [0.0; 2];
        for (slot, rules) in by_rules.iter_mut().zip([10, 100]) {
            let before = cpu.sample();
            *slot = router_run(&ep, &input, a.partitions, a.records, rules).await;
            println!(
                "round {round}: router, {rules:<3} rules       {:>9.0} records/s; {} ({:.2}x raw)",
                *slot,
                cpu.per_record(before, a.records),
                *slot / r
            );
        }
        let [t10, t100] = by_rules;
        raw.push(r);
        raw_h.push(rh);
        r10.push(t10);
        r100.push(t100);
    }
    let (r, rh, t10, t100) = (median(raw), median(raw_h), median(r10), median(r100));
    println!("median: raw rdkafka pass-through {r:>9.0} records/s");
    println!("median: raw + version header    {rh:>9.0} records/s");
    println!(
        "median: router, 10 rules        {t10:>9.0} records/s ({:.2}x raw)",
        t10 / r
    );
    println!(
        "median: router, 100 rules       {t100:>9.0} records/s ({:.2}x raw)",
        t100 / r
    );
    println!(
        "router / raw writing the same headers: 10 rules {:.2}, 100 rules {:.2}",
        t10 / rh,
        t100 / rh
    );
}
