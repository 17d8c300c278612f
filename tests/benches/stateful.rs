//! Stateful benchmark: the per-key counter (`eip-counter`, group commits into SQLite) against
//! the stateless pass-through and raw rdkafka, on the same broker and input topic.
//!
//! ```text
//! make bench            # starts the local stack, runs this, stops the stack
//! cargo bench -p eip-tests --bench stateful -- [--records N] [--rounds R] [--partitions P] [--keys K]
//! ```
//!
//! In one run, on one input topic of framed `OrderPlaced` records with `--keys` distinct keys
//! (default 1,000):
//! 1. the broker's ceilings: raw idempotent produce, and raw consume;
//! 2. the store's ceiling: a raw rusqlite loop doing the counter's writes (per-key deltas,
//!    one transaction per 5,000 records) with nothing else;
//! 3. per round, alternating: raw rdkafka consume -> produce, the runtime's stateless
//!    pass-through, and the stateful counter, each timed from its first record to its last
//!    one done (acknowledged, or durable in SQLite).
//!
//! The target is the counter at 0.9x the stateless pass-through or better. The counter is
//! also compared with the raw consume ceiling and with the SQLite loop, and the line says
//! which of those binds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use eip_counter::{Counter, CounterConfig};
use eip_runtime::{Envelope, Raw};
use eip_tests::bench::*;
use eip_tests::*;

/// Notes when the counter took its first record.
struct FirstRecord(Arc<OnceLock<Instant>>);

impl CounterHook for FirstRecord {
    async fn before(&self, _: &Envelope<Raw>) {
        self.0.get_or_init(Instant::now);
    }
}

/// The counter over a fresh SQLite file: records/s until all `n` are durable.
async fn counter(ep: &Endpoints, input: &str, n: usize, dir: &std::path::Path) -> f64 {
    let group = unique("bench-count");
    let settings = CounterConfig {
        db: dir.join(format!("{group}.db")),
        ..Default::default()
    };
    let mut cfg = config(ep, input, &group, settings);
    cfg.kafka = eip_runtime::config::KafkaConfig {
        group_id: group.clone(),
        ..bench_kafka(ep)
    };
    quiet(&mut cfg);
    let inner = Counter::new(&cfg.processor).unwrap();
    let store = inner.clone();
    let first = Arc::new(OnceLock::new());
    let p = InProcess::start_stateful(
        cfg,
        HookedCounter {
            name: "counter",
            inner,
            hook: FirstRecord(first.clone()),
        },
    )
    .await;
    while (store.store().total().unwrap() as usize) < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = first.get().unwrap().elapsed();
    p.stop().await.unwrap();
    assert_eq!(
        store.store().total().unwrap() as usize,
        n,
        "counted exactly"
    );
    rate(n, elapsed)
}

/// The store's ceiling: the counter's writes for `n` records over `keys` keys, with nothing
/// else, through rusqlite: deltas per key, one transaction per 5,000 records.
fn sqlite_loop(dir: &std::path::Path, n: usize, keys: usize) -> f64 {
    let path = dir.join(format!("{}.db", unique("bench-sqlite")));
    let store = eip_counter::Store::open(&path, Duration::ZERO).unwrap();
    drop(store);
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    let names: Vec<String> = (0..keys.max(1)).map(|k| format!("order-{k:08}")).collect();
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let chunk = (n - done).min(5_000);
        let mut deltas: HashMap<&str, u64> = HashMap::new();
        for i in done..done + chunk {
            *deltas.entry(names[i % names.len()].as_str()).or_default() += 1;
        }
        let tx = conn.transaction().unwrap();
        {
            let mut add = tx
                .prepare_cached(
                    "INSERT INTO counts (key, n) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET n = n + excluded.n",
                )
                .unwrap();
            for (k, d) in &deltas {
                add.execute(rusqlite::params![k, *d as i64]).unwrap();
            }
        }
        tx.commit().unwrap();
        done += chunk;
    }
    rate(n, started.elapsed())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut a = BenchArgs::parse();
    if a.keys == 0 {
        a.keys = 1_000;
    }
    let Opening { ep, input, cpu } = opening("stateful", "bench-state", &a).await;
    let dir = tempfile::tempdir().unwrap();
    let (ep2, t2) = (ep.clone(), input.clone());
    let before = cpu.sample();
    let consume =
        tokio::task::spawn_blocking(move || raw_consume(&ep2, &t2, a.partitions, a.records))
            .await
            .unwrap();
    println!(
        "broker ceiling: raw consume {consume:>9.0} records/s; {}",
        cpu.per_record(before, a.records)
    );
    let before = cpu.sample();
    let sqlite = sqlite_loop(dir.path(), a.records, a.keys);
    println!(
        "store ceiling: raw rusqlite group commits {sqlite:>9.0} records/s; {}",
        cpu.per_record(before, a.records)
    );

    let (mut raw, mut rt, mut st) = (Vec::new(), Vec::new(), Vec::new());
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
        let out = unique("bench-rt-out");
        create_topics(&ep, &[&out], a.partitions).await;
        let before = cpu.sample();
        let t = stateless_passthrough(&ep, &input, &out, a.records).await;
        println!(
            "round {round}: stateless pass-through   {t:>9.0} records/s; {} ({:.2}x raw)",
            cpu.per_record(before, a.records),
            t / r
        );
        let before = cpu.sample();
        let c = counter(&ep, &input, a.records, dir.path()).await;
        println!(
            "round {round}: stateful counter (SQLite) {c:>8.0} records/s; {} ({:.2}x stateless)",
            cpu.per_record(before, a.records),
            c / t
        );
        raw.push(r);
        rt.push(t);
        st.push(c);
    }
    let (r, t, c) = (median(raw), median(rt), median(st));
    println!("median: raw rdkafka pass-through {r:>9.0} records/s");
    println!("median: stateless pass-through   {t:>9.0} records/s");
    println!("median: stateful counter         {c:>9.0} records/s");
    let (ceiling, name) = if sqlite < consume {
        (sqlite, "the SQLite loop")
    } else {
        (consume, "raw consume")
    };
    let binds = if c >= 0.8 * ceiling {
        format!("{name} binds")
    } else {
        format!(
            "neither ceiling binds (the lower, {name}, is {:.0}x the counter): the counter is bound by the runtime's per-record work",
            ceiling / c
        )
    };
    println!(
        "ratio counter / stateless: {:.2} (target >= 0.9); counter / raw consume: {:.2}; counter / SQLite loop: {:.3}; {binds}",
        c / t,
        c / consume,
        c / sqlite
    );
}
