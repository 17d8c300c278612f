//! Saga benchmark: the order-fulfilment saga end to end (eip-orders and the nine participants,
//! in this process) against the runtime's stateless pass-through on the same broker, in the
//! same run; then the saga monitor folding what the sagas published.
//!
//! ```text
//! cargo bench -p eip-tests --bench saga -- [--sagas N] [--rounds R] [--partitions P]
//! ```
//!
//! Each round places and confirms N orders (the commands are produced before the pipeline
//! starts), then starts eip-orders and the participants with no injected faults, and times
//! from the first command consumed until every order's `OrderCompleted` is acknowledged.
//! Printed: completed 10-step sagas per second; the records the pipeline moved per saga
//! (every record every processor produced, and the two commands), so the pipeline's
//! records/s (target: at least 0.5x the pass-through's records/s); and the p50 and p99 saga
//! duration, from `OrderConfirmed` to `OrderCompleted` (the events' own times). Then a fresh
//! saga monitor folds the round's saga topics: events/s, from its first record until every
//! saga is completed in its store.
//!
//! `--monitor-sagas N` (for example 100000) instead measures the monitor alone with N sagas
//! tracked: N completed sagas' observations (the start and ten completions each) are
//! produced to a fresh observations topic, the monitor folds them, and the resident memory of
//! the process (VmRSS, and its peak VmHWM) is printed with the fold rate (target: under
//! 200 MB).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use eip_runtime::config::Config;
use eip_saga::config::{MonitorConfig, ParticipantConfig};
use eip_saga::definition::Definition;
use eip_saga::monitor::Monitor;
use eip_saga::participant::Participant;
use eip_tests::bench::*;
use eip_tests::saga::{ROLES, SHIPPED, orders, place_and_confirm};
use eip_tests::*;

struct Run {
    sagas_per_s: f64,
    records_per_saga: f64,
    p50_ms: i64,
    p99_ms: i64,
    monitor_events_per_s: f64,
}

fn kafka(ep: &Endpoints, group: &str) -> eip_runtime::config::KafkaConfig {
    eip_runtime::config::KafkaConfig {
        group_id: group.to_string(),
        client_id: group.to_string(),
        ..bench_kafka(ep)
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn saga_round(ep: &Endpoints, n: usize, partitions: i32, dir: &std::path::Path) -> Run {
    let codec = codec(ep);
    let prefix = unique("bench-saga");
    let (commands, events, outcomes) = (
        format!("{prefix}-commands"),
        format!("{prefix}-events"),
        format!("{prefix}-outcomes"),
    );
    let text = SHIPPED
        .replace("\"saga-", &format!("\"{prefix}-saga-"))
        .replace("\"order-events\"", &format!("\"{events}\""));
    let def_path = dir.join(format!("{prefix}.toml"));
    std::fs::write(&def_path, &text).unwrap();
    let def = Definition::parse(&text, "saga.toml").unwrap();
    let observations = format!("{prefix}-saga-observations");
    let levels = format!("{prefix}-inventory-levels");
    let mut topics: Vec<String> = def.topics();
    topics.extend([
        commands.clone(),
        outcomes.clone(),
        observations.clone(),
        levels.clone(),
    ]);
    topics.sort();
    topics.dedup();
    let dlqs: Vec<String> = topics.iter().map(|t| format!("{t}.dlq")).collect();
    topics.extend(dlqs);
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    create_topics(ep, &refs, partitions).await;
    let placed = orders(&prefix, n);
    place_and_confirm(ep, &codec, &commands, &placed).await;

    // eip-orders and the nine participants, no faults injected.
    let mut cfg = config(
        ep,
        &commands,
        &format!("{prefix}-orders"),
        eip_orders::OrdersConfig {
            db: dir.join(format!("{prefix}-orders.db")),
            events_topic: events.clone(),
            outcomes_topic: outcomes.clone(),
            ..Default::default()
        },
    );
    cfg.kafka = kafka(ep, &format!("{prefix}-orders"));
    quiet(&mut cfg);
    let orders_p =
        InProcess::start_stateful(cfg.clone(), eip_orders::Orders::new(&cfg).unwrap()).await;
    let mut participants = Vec::new();
    for role in ROLES {
        let group = format!("{prefix}-{role}");
        let mut cfg: Config<ParticipantConfig> = config(
            ep,
            "(from the definition)",
            &group,
            ParticipantConfig {
                role: role.to_string(),
                definition: def_path.clone(),
                db: dir.join(format!("{group}.db")),
                commands_topic: commands.clone(),
                outcomes_topic: outcomes.clone(),
                levels_topic: levels.clone(),
                ..ParticipantConfig::default()
            },
        );
        cfg.pipeline.inputs.clear();
        cfg.kafka = kafka(ep, &group);
        quiet(&mut cfg);
        let p = Participant::new(&mut cfg).unwrap();
        participants.push(InProcess::start_stateful(cfg, p).await);
    }
    // Completed when eip-orders has published every order's third event (placed,
    // confirmed, completed).
    let consumed = orders_p
        .running
        .metrics
        .consumed
        .with_label_values(&["orders", &commands]);
    let produced = orders_p
        .running
        .metrics
        .produced
        .with_label_values(&["orders", &events]);
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while (produced.get() as usize) < 3 * n {
        if first.is_none() && consumed.get() > 0 {
            first = Some(Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "the sagas did not complete in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = first.unwrap_or_else(Instant::now).elapsed();
    let sum = |p: &InProcess| -> f64 {
        eip_tests::metric_sum(&p.running.metrics.render(), "eip_records_produced_total")
    };
    let mut records = 2.0 * n as f64 + sum(&orders_p);
    for p in &participants {
        records += sum(p);
    }
    orders_p.stop().await.unwrap();
    for p in participants {
        p.stop().await.unwrap();
    }
    // Saga durations, from the events' own times.
    let mut confirmed = std::collections::HashMap::new();
    let mut durations = Vec::new();
    for r in read_all(ep, &events).await {
        match eip_schemas::order_events::decode_order_event(&codec, r.payload.as_deref())
            .await
            .unwrap()
        {
            Some(eip_schemas::order_events::OrderEvent::Confirmed(e)) => {
                confirmed.insert(e.metadata.aggregate_id.clone(), e.metadata.occurred_at);
            }
            Some(eip_schemas::order_events::OrderEvent::Completed(e)) => {
                if let Some(t) = confirmed.get(&e.metadata.aggregate_id) {
                    durations.push(e.metadata.occurred_at - t);
                }
            }
            _ => {}
        }
    }
    durations.sort_unstable();
    assert_eq!(durations.len(), n, "every saga completed");
    // The monitor over everything the sagas published.
    let group = format!("{prefix}-monitor");
    let mut mcfg: Config<MonitorConfig> = config(
        ep,
        "(from the definition)",
        &group,
        MonitorConfig {
            definition: def_path.clone(),
            db: dir.join(format!("{group}.db")),
            observations_topic: observations.clone(),
            operator_tokens: Vec::new(),
            ..MonitorConfig::default()
        },
    );
    mcfg.pipeline.inputs.clear();
    mcfg.kafka = kafka(ep, &group);
    quiet(&mut mcfg);
    let (monitor, _extras) = Monitor::new(&mut mcfg).unwrap();
    let m = InProcess::start_stateful(mcfg.clone(), monitor).await;
    let db = mcfg.processor.db.clone();
    let started = Instant::now();
    let mut first = None;
    let folded = m
        .running
        .metrics
        .consumed
        .with_label_values(&["saga-monitor", &observations]);
    loop {
        if first.is_none() && folded.get() > 0 {
            first = Some(Instant::now());
        }
        let done = rusqlite::Connection::open(&db)
            .ok()
            .and_then(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM sagas WHERE status = 'completed'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .ok()
            })
            .unwrap_or(0);
        if done as usize == n {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the monitor did not fold every saga"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let monitor_elapsed = first.unwrap_or(started).elapsed();
    let observed = folded.get() as f64;
    m.stop().await.unwrap();
    Run {
        sagas_per_s: rate(n, elapsed),
        records_per_saga: records / n as f64,
        p50_ms: percentile(&durations, 50.0),
        p99_ms: percentile(&durations, 99.0),
        monitor_events_per_s: observed / monitor_elapsed.as_secs_f64(),
    }
}

/// The participants' ceiling: one durable SQLite transaction per decision (the store's
/// settings: WAL, `synchronous=FULL`), with a decision row written in each, and nothing else.
fn decision_ceiling(dir: &std::path::Path, n: usize) -> f64 {
    let path = dir.join(format!("{}.db", unique("bench-decisions")));
    let mut conn = eip_store::sqlite::connect(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE d (saga_id TEXT NOT NULL, step TEXT NOT NULL, state TEXT NOT NULL,
         PRIMARY KEY (saga_id, step)) WITHOUT ROWID",
    )
    .unwrap();
    let started = Instant::now();
    for i in 0..n {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        tx.execute(
            "INSERT INTO d (saga_id, step, state) VALUES (?1, 'inventory_reserved', 'completed')",
            [format!("o-{i}")],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    rate(n, started.elapsed())
}

/// `VmRSS` and `VmHWM` of this process, in MB.
fn memory_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

/// The monitor alone with `n` completed sagas to fold (see the module docs).
async fn monitor_memory(ep: &Endpoints, n: usize, partitions: i32, dir: &std::path::Path) {
    use eip_schemas::types::SagaObservation;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    register(ep).await;
    let prefix = unique("bench-monitor");
    let text = SHIPPED.replace("\"saga-", &format!("\"{prefix}-saga-"));
    let def_path = dir.join(format!("{prefix}.toml"));
    std::fs::write(&def_path, &text).unwrap();
    let def = Definition::parse(&text, "saga.toml").unwrap();
    let observations = format!("{prefix}-observations");
    create_topics(
        ep,
        &[
            &observations,
            &format!("{observations}.dlq"),
            &def.timeouts_topic,
        ],
        partitions,
    )
    .await;
    let codec = codec(ep);
    let producer: BaseProducer = eip_runtime::kafka::producer_config(&bench_kafka(ep))
        .create()
        .unwrap();
    let t0 = 1_800_000_000_000i64;
    let mut types = vec![def.start_event.clone()];
    types.extend(def.steps.iter().map(|s| s.completed_by.clone()));
    let mut produced = 0usize;
    for i in 0..n {
        let saga = format!("order-{i:07}");
        for (k, ty) in types.iter().enumerate() {
            let o = SagaObservation {
                saga_id: saga.clone(),
                event_type: ty.clone(),
                event_id: format!("{saga}:{k}"),
                correlation_id: format!("corr-{saga}"),
                causation_id: None,
                occurred_at: t0 + (i as i64) + 10 * k as i64,
                topic: "synthetic".into(),
                partition: 0,
                offset: produced as i64,
                reason: None,
                reason_code: None,
                step: None,
                actor: None,
            };
            let payload = codec.encode(&o).await.unwrap();
            send_blocking(
                &producer,
                BaseRecord::to(&observations)
                    .key(saga.as_bytes())
                    .payload(&payload),
            );
            produced += 1;
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    let group = format!("{prefix}-monitor");
    let mut mcfg: Config<MonitorConfig> = config(
        ep,
        &observations,
        &group,
        MonitorConfig {
            definition: def_path,
            db: dir.join(format!("{group}.db")),
            observations_topic: observations.clone(),
            operator_tokens: Vec::new(),
            ..MonitorConfig::default()
        },
    );
    mcfg.kafka = kafka(ep, &group);
    quiet(&mut mcfg);
    let before = memory_mb();
    let (monitor, _extras) = Monitor::new(&mut mcfg).unwrap();
    let m = InProcess::start_stateful(mcfg.clone(), monitor).await;
    let folded = m
        .running
        .metrics
        .consumed
        .with_label_values(&["saga-monitor", &observations]);
    let started = Instant::now();
    let mut first = None;
    while (folded.get() as usize) < produced {
        if first.is_none() && folded.get() > 0 {
            first = Some(Instant::now());
        }
        assert!(
            started.elapsed() < Duration::from_secs(1_800),
            "the monitor did not fold"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = first.unwrap_or(started).elapsed();
    // Wait for the last group commit, then count what the store tracks.
    let db = mcfg.processor.db.clone();
    let tracked = loop {
        let done = rusqlite::Connection::open(&db)
            .ok()
            .and_then(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM sagas WHERE status = 'completed'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .ok()
            })
            .unwrap_or(0);
        if done as usize >= n || started.elapsed() > Duration::from_secs(1_800) {
            break done;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let after = memory_mb();
    m.stop().await.unwrap();
    println!(
        "monitor: {tracked} sagas tracked ({produced} observations folded at {:.0} events/s); resident memory of the process {:.0} MB (peak {:.0} MB; {:.0} MB before the monitor started); target under 200 MB: {}",
        produced as f64 / elapsed.as_secs_f64(),
        after.0,
        after.1,
        before.0,
        if after.1 < 200.0 { "met" } else { "NOT met" }
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let a = BenchArgs::parse();
    let monitor_sagas = a.usize("--monitor-sagas", 0);
    if monitor_sagas > 0 {
        let ep = endpoints();
        let dir = tempfile::tempdir().unwrap();
        monitor_memory(&ep, monitor_sagas, a.partitions, dir.path()).await;
        return;
    }
    let sagas = a.usize("--sagas", 2_000);
    let Opening { ep, input, cpu } = opening("saga", "bench-saga-in", &a).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut pts, mut runs) = (Vec::new(), Vec::new());
    let mut ceilings = Vec::new();
    for round in 1..=a.rounds {
        let c = decision_ceiling(dir.path(), 2_000);
        println!(
            "round {round}: store ceiling: {c:>7.0} durable decisions/s (one SQLite transaction each, synchronous=FULL), so at most {:.0} sagas/s (payments decides twice per saga)",
            c / 2.0
        );
        ceilings.push(c);
        let out = unique("bench-rt-out");
        create_topics(&ep, &[&out], a.partitions).await;
        let before = cpu.sample();
        let t = stateless_passthrough(&ep, &input, &out, a.records).await;
        println!(
            "round {round}: stateless pass-through {t:>9.0} records/s; {}",
            cpu.per_record(before, a.records)
        );
        let r = saga_round(&ep, sagas, a.partitions, dir.path()).await;
        let moved = r.sagas_per_s * r.records_per_saga;
        println!(
            "round {round}: sagas {:>7.0} completed 10-step sagas/s, {:.1} records per saga = {moved:.0} records/s ({:.2}x the pass-through); duration p50 {} ms, p99 {} ms; monitor {:.0} events/s",
            r.sagas_per_s,
            r.records_per_saga,
            moved / t,
            r.p50_ms,
            r.p99_ms,
            r.monitor_events_per_s
        );
        pts.push(t);
        runs.push(r);
    }
    let t = median(pts);
    let s = median(runs.iter().map(|r| r.sagas_per_s).collect());
    let per = median(runs.iter().map(|r| r.records_per_saga).collect());
    let p50 = median(runs.iter().map(|r| r.p50_ms as f64).collect());
    let p99 = median(runs.iter().map(|r| r.p99_ms as f64).collect());
    let m = median(runs.iter().map(|r| r.monitor_events_per_s).collect());
    let ratio = s * per / t;
    let c = median(ceilings);
    println!(
        "median: store ceiling {c:.0} decisions/s = {:.0} sagas/s; the sagas reach {:.2}x of it; the bound that binds is {}",
        c / 2.0,
        s / (c / 2.0),
        if c / 2.0 * per < t {
            "the store's (one durable commit per decision), not the runtime's"
        } else {
            "the runtime's"
        }
    );
    println!(
        "median: {s:.0} sagas/s x {per:.1} records = {:.0} records/s against the pass-through's {t:.0}: {ratio:.2}x (target >= 0.5x: {}); saga p50 {p50:.0} ms, p99 {p99:.0} ms; monitor {m:.0} events/s",
        s * per,
        if ratio >= 0.5 { "met" } else { "NOT met" }
    );
}
