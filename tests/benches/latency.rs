//! Command-to-view latency: how long from sending a command until its order is visible in the
//! views, at a steady rate the local broker sustains.
//!
//! ```text
//! cargo bench -p eip-tests --bench latency -- [--rate R] [--seconds S] [--flush-ms F]
//! ```
//!
//! `eip-orders` and `eip-projector` run in this process on fresh topics, the projector with
//! `pipeline.flush_interval` = `--flush-ms` (default 10 ms: a view is visible only after the
//! group commit that writes it, so this interval is the floor of the latency; the default
//! 100 ms trades latency for bigger batches). Commands (`PlaceOrder`, one per new order) are
//! produced at `--rate` per second (default 200) for `--seconds` (default 20), each timed from
//! when it was due; a watcher reads the SQLite views every millisecond and notes when each
//! order appears. It prints p50, p99 and max. Target: p99 < 50 ms.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eip_orders::{Orders, OrdersConfig};
use eip_projector::{Projector, ProjectorConfig};
use eip_tests::bench::*;
use eip_tests::*;
use rdkafka::producer::{FutureProducer, FutureRecord};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = BenchArgs::parse();
    println!("log level {}", eip_tests::bench::default_logging());
    let rate = a.usize("--rate", 200) as f64;
    let seconds = a.usize("--seconds", 20) as f64;
    let flush_ms = a.usize("--flush-ms", 10) as u64;
    let n = (rate * seconds) as usize;
    let ep = endpoints();
    register(&ep).await;
    let commands = unique("lat-commands");
    let (events, outcomes) = (format!("{commands}-events"), format!("{commands}-outcomes"));
    let dlqs: Vec<String> = [&commands, &events, &outcomes]
        .iter()
        .map(|t| format!("{t}.dlq"))
        .collect();
    let mut topics: Vec<&str> = vec![&commands, &events, &outcomes];
    topics.extend(dlqs.iter().map(String::as_str));
    create_topics(&ep, &topics, a.partitions).await;
    let dir = tempfile::tempdir().unwrap();
    let views = dir.path().join("views.db");

    let mut ocfg = config(
        &ep,
        &commands,
        &unique("lat-orders"),
        OrdersConfig {
            db: dir.path().join("orders.db"),
            events_topic: events.clone(),
            outcomes_topic: outcomes.clone(),
            ..OrdersConfig::default()
        },
    );
    quiet(&mut ocfg);
    let orders = InProcess::start_stateful(ocfg.clone(), Orders::new(&ocfg).unwrap()).await;
    let mut pcfg = config(
        &ep,
        &events,
        &unique("lat-proj"),
        ProjectorConfig {
            db: views.clone(),
            ..ProjectorConfig::default()
        },
    );
    pcfg.pipeline.inputs = vec![events.clone(), outcomes.clone()];
    pcfg.pipeline.flush_interval = Duration::from_millis(flush_ms);
    quiet(&mut pcfg);
    let projector = InProcess::start_stateful(pcfg.clone(), Projector::new(&pcfg).unwrap()).await;
    println!(
        "command to view: {n} PlaceOrder commands at {rate:.0}/s, {} partitions, projector flush \
         interval {flush_ms} ms",
        a.partitions
    );

    // The watcher: when each pending order first shows in order_summary.
    let pending: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (pending, seen, stop, views) =
            (pending.clone(), seen.clone(), stop.clone(), views.clone());
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&views).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let ids: Vec<(String, Instant)> = pending
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                for (id, due) in ids {
                    let found = conn
                        .prepare_cached("SELECT 1 FROM order_summary WHERE order_id = ?1")
                        .and_then(|mut s| s.exists([&id]))
                        .unwrap_or(false);
                    if found {
                        let took = due.elapsed();
                        pending.lock().unwrap().remove(&id);
                        seen.lock().unwrap().push(took);
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };

    let codec = codec(&ep);
    let producer: FutureProducer = eip_runtime::kafka::producer_config(&ep.kafka())
        .create()
        .unwrap();
    let start = Instant::now() + Duration::from_millis(200);
    let mut sends = Vec::new();
    for i in 0..n {
        let (id, steps, _, _) = eipctl::orders::story("lat", i as u64 * 6);
        let payload = steps[0].record.avro(&codec).await.unwrap();
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        pending.lock().unwrap().insert(id.clone(), due);
        let record = FutureRecord::to(&commands)
            .key(id.as_bytes())
            .payload(&payload);
        sends.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for s in sends {
        s.await.unwrap().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().unwrap().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().unwrap();
    orders.stop().await.unwrap();
    projector.stop().await.unwrap();
    let mut lat = seen.lock().unwrap().clone();
    assert_eq!(lat.len(), n, "every order became visible");
    lat.sort();
    let p99 = percentile(&lat, 0.99);
    println!(
        "command to visible view: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {n} commands; target p99 < 50 ms: {}",
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3,
        if p99 < Duration::from_millis(50) {
            "met"
        } else {
            "NOT met"
        }
    );
}
