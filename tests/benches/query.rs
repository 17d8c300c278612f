//! Query API benchmark: p50 and p99 latency at a steady request rate against the embedded
//! SQLite views, through the gateway's HTTP server, and the same queries made straight on the
//! store's reader in the same run (the store's own latency, the floor).
//!
//! ```text
//! cargo bench -p eip-tests --bench query -- [--orders N] [--rate R] [--seconds S]
//! ```
//!
//! It writes `--orders` orders (default 20,000, over 2,000 customers, most confirmed on one
//! day) and their command outcomes through the store's own definitions, starts the gateway in
//! this process with `gateway.views_db`, and sends an open-loop load: one request every
//! 1/R seconds (default 1,000/s) for S seconds (default 10), each timed from when it was due,
//! so a slow answer delays no later request's clock. The mix: 60% an order by id, 20% a
//! customer's first page of 20, 10% a day's sales page, 10% a command's status. Every answer
//! must be 200. Target: p99 < 5 ms.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eip_gateway::GatewayConfig;
use eip_runtime::config::LogFormat;
use eip_store::view_sqlite::{Reader, execute, migrate, versions};
use eip_store::views::{LineView, OrderView, OutcomeView, diff, order_rows, outcome_rows};
use eip_tests::bench::BenchArgs;
use eip_tests::*;

fn write_views(path: &std::path::Path, orders: usize) {
    let mut conn = eip_store::sqlite::connect(path).unwrap();
    migrate(&conn).unwrap();
    let v = versions(&conn).unwrap();
    let tx = conn.transaction().unwrap();
    for i in 0..orders {
        let id = format!("order-{i:08}");
        let confirmed = i % 4 != 0;
        let order = OrderView {
            order_id: id.clone(),
            customer_id: format!("customer-{}", i % 2_000),
            status: if confirmed { "confirmed" } else { "open" }.into(),
            currency: "EUR".into(),
            total_cents: 1_000,
            units: 4,
            version: 4,
            placed_at: 1_796_000_000_000 + i as i64,
            updated_at: 1_796_000_000_000 + i as i64,
            confirmed_day: confirmed.then(|| "2026-11-30".into()),
            lines: (0..2)
                .map(|l| LineView {
                    sku: format!("sku-{}", (i + l * 7) % 150),
                    quantity: 2,
                    unit_price_cents: 250,
                    version: 1,
                })
                .collect(),
        };
        execute(&tx, &v, &diff(&[], &order_rows(&order), 4)).unwrap();
        let outcome = OutcomeView {
            command_id: format!("{id}/c1"),
            correlation_id: format!("corr-{id}"),
            aggregate_id: id,
            command: "PlaceOrder".into(),
            accepted: true,
            version: 1,
            reason_code: None,
            reason: None,
            decided_at: 1,
        };
        execute(&tx, &v, &diff(&[], &outcome_rows(&outcome), 1)).unwrap();
    }
    tx.commit().unwrap();
}

/// The `k`-th request of the mix: its path.
fn path(k: usize, orders: usize) -> String {
    let i = (k * 7_919) % orders;
    match k % 10 {
        0..=5 => format!("/v1/orders/order-{i:08}"),
        6 | 7 => format!("/v1/customers/customer-{}/orders?limit=20", i % 2_000),
        8 => "/v1/sales/2026-11-30?limit=50".to_string(),
        _ => format!("/v1/commands/order-{i:08}%2Fc1"),
    }
}

/// The same query on the reader.
fn direct(reader: &Reader, k: usize, orders: usize) {
    let i = (k * 7_919) % orders;
    match k % 10 {
        0..=5 => assert!(reader.order(&format!("order-{i:08}")).unwrap().is_some()),
        6 | 7 => {
            reader
                .customer_orders_page(&format!("customer-{}", i % 2_000), None, 20)
                .unwrap()
                .unwrap();
        }
        8 => {
            reader
                .product_sales_page("2026-11-30", None, 50)
                .unwrap()
                .unwrap();
        }
        _ => assert!(
            reader
                .command(&format!("order-{i:08}/c1"))
                .unwrap()
                .is_some()
        ),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn report(what: &str, mut lat: Vec<Duration>, seconds: f64) -> Duration {
    lat.sort();
    let p99 = percentile(&lat, 0.99);
    println!(
        "{what:<34} {:>6} requests {:>7.0}/s  p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms",
        lat.len(),
        lat.len() as f64 / seconds,
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3,
    );
    p99
}

/// Runs `n` requests at `rate` per second, each timed from when it was due.
async fn open_loop<F, Fut>(n: usize, rate: f64, call: F) -> Vec<Duration>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let call = Arc::new(call);
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(n);
    for k in 0..n {
        let due = start + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            call(k).await;
            due.elapsed()
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = BenchArgs::parse();
    println!("log level {}", eip_tests::bench::default_logging());
    let orders = args.usize("--orders", 20_000);
    let rate = args.usize("--rate", 1_000) as f64;
    let seconds = args.usize("--seconds", 10) as f64;
    let n = (rate * seconds) as usize;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("views.db");
    write_views(&db, orders);
    let ep = endpoints();
    let mut c = GatewayConfig::default();
    c.kafka.brokers = ep.brokers.clone();
    c.registry.url = ep.registry.clone();
    c.telemetry.log_format = LogFormat::Text;
    c.telemetry.log_filter = "warn".into();
    c.gateway.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.gateway.routes = [("eip.orders.PlaceOrder".to_string(), "unused".to_string())].into();
    c.gateway.views_db = Some(db.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, task) = eip_gateway::serve(c, async {
        let _ = rx.await;
    })
    .await
    .unwrap();
    println!(
        "query API: {orders} orders in SQLite, {rate:.0} requests/s for {seconds:.0} s, open loop \
         (60% order, 20% customer page, 10% day's sales, 10% command status)"
    );
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    // Warm up the connections and the statements.
    for k in 0..200 {
        client
            .get(format!("http://{addr}{}", path(k, orders)))
            .send()
            .await
            .unwrap();
    }
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let http = {
        let (client, errors) = (client.clone(), errors.clone());
        open_loop(n, rate, move |k| {
            let (client, errors) = (client.clone(), errors.clone());
            async move {
                let r = client
                    .get(format!("http://{addr}{}", path(k, orders)))
                    .send()
                    .await;
                let ok = match r {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if !ok {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
        .await
    };
    let reader = Arc::new(Reader::open(&db, 4).unwrap());
    let store = {
        let reader = reader.clone();
        open_loop(n, rate, move |k| {
            let reader = reader.clone();
            async move {
                tokio::task::spawn_blocking(move || direct(&reader, k, orders))
                    .await
                    .unwrap();
            }
        })
        .await
    };
    let p99 = report("gateway HTTP (GET, JSON)", http, seconds);
    report("store reader, same queries", store, seconds);
    let errors = errors.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "errors: {errors}; p99 {:.3} ms against the target of < 5 ms: {}",
        p99.as_secs_f64() * 1e3,
        if p99 < Duration::from_millis(5) && errors == 0 {
            "met"
        } else {
            "NOT met"
        }
    );
    let _ = tx.send(());
    let _ = task.await;
}
