//! Gateway benchmark: HTTP requests answered after the broker's acknowledgement, against the
//! same records produced straight to Kafka with rdkafka, each awaited for its ack.
//!
//! ```text
//! cargo bench -p eip-tests --bench gateway
//! EIP_BENCH_CONCURRENCY=64 EIP_BENCH_REQUESTS=20000 cargo bench -p eip-tests --bench gateway
//! ```
//!
//! Against the stack at `EIP_KAFKA_BROKERS` / `EIP_REGISTRY_URL` (default: the dev ports). It
//! starts the gateway in this process, registers the schemas, creates one topic per side, and
//! then, with a fixed number of concurrent clients (each sends one request, waits for the
//! answer, sends the next):
//! 1. **gateway**: POSTs JSON `PlaceOrder` bodies with reqwest; every answer must be 202;
//! 2. **baseline**: produces the same records, already Confluent-framed, with an idempotent
//!    rdkafka `FutureProducer` and awaits each delivery.
//!
//! It prints requests/s, p50 and p99 latency for both and the gateway/baseline ratio. The
//! client, the gateway and the broker share the machine's cores.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use eip_gateway::GatewayConfig;
use eip_runtime::config::LogFormat;
use eip_schemas::codec::encode_with_id;
use eip_schemas::convert::to_json;
use eip_schemas::types::samples::order_placed;
use eip_schemas::types::{CommandMetadata, PlaceOrder};
use eip_schemas::{AvroRecord, Catalog};
use eip_tests::*;
use rdkafka::producer::{FutureProducer, FutureRecord};

const PLACE_ORDER: &str = "eip.orders.PlaceOrder";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

fn place_order(n: usize) -> PlaceOrder {
    let order = order_placed(n as u64);
    PlaceOrder {
        metadata: CommandMetadata {
            command_id: format!("cmd-{n}"),
            correlation_id: format!("corr-{n}"),
            causation_id: None,
            issued_at: 1_767_225_600_000 + n as i64,
            aggregate_id: format!("order-{n:08}"),
            expected_version: None,
        },
        customer_id: order.customer_id,
        lines: order.lines,
        currency: "EUR".into(),
        shipping_address: order.shipping_address,
    }
}

struct Figures {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

fn figures(mut latencies: Vec<Duration>, elapsed: Duration) -> Figures {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Figures {
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// Runs `count` operations on `concurrency` workers; each worker takes the next index and
/// awaits `op(index)` before taking another. Returns every latency and the wall time.
async fn closed_loop<F, Fut>(count: usize, concurrency: usize, op: F) -> (Vec<Duration>, Duration)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (op, next) = (op.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return latencies;
                }
                let t = Instant::now();
                op(i).await;
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::with_capacity(count);
    for w in workers {
        all.extend(w.await.unwrap());
    }
    (all, started.elapsed())
}

fn main() {
    let concurrency = env_usize("EIP_BENCH_CONCURRENCY", 32);
    let requests = env_usize("EIP_BENCH_REQUESTS", 5000);
    let warmup = env_usize("EIP_BENCH_WARMUP", 500);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let level = eip_tests::bench::default_logging();
        let ep = endpoints();
        register(&ep).await;
        let gw_topic = unique("bench-gw");
        let raw_topic = unique("bench-raw");
        create_topics(&ep, &[&gw_topic, &raw_topic], 4).await;

        let mut cfg = GatewayConfig::default();
        cfg.kafka.brokers = ep.brokers.clone();
        cfg.registry.url = ep.registry.clone();
        cfg.telemetry.log_format = LogFormat::Text;
        cfg.gateway.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        cfg.gateway.routes = [(PLACE_ORDER.to_string(), gw_topic.clone())].into();
        cfg.gateway.max_in_flight = concurrency.max(1) * 4;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr, task) = eip_gateway::serve(cfg, async {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();

        let total = warmup + requests;
        println!(
            "gateway benchmark: {requests} requests (+{warmup} warm-up), {concurrency} concurrent clients, log level {level}, brokers {}",
            ep.brokers
        );
        // Bodies and framed records are prepared before timing starts.
        let compiled = PlaceOrder::compiled().unwrap();
        let schema_id = codec(&ep).registry().id_for(compiled).await.unwrap();
        let mut bodies = Vec::with_capacity(total);
        let mut framed = Vec::with_capacity(total);
        for n in 0..total {
            let record = place_order(n);
            let bytes = encode_with_id(schema_id, &record).unwrap();
            let value = eip_schemas::codec::decode_value_with(
                &eip_schemas::registry::WriterSchema {
                    id: schema_id,
                    schema: compiled.schema.clone(),
                    full_name: compiled.full_name.clone(),
                    fingerprint: compiled.fingerprint,
                },
                &bytes[5..],
            )
            .unwrap();
            bodies.push(bytes::Bytes::from(to_json(&value).to_string()));
            framed.push((record.metadata.aggregate_id, bytes));
        }
        let body_bytes: usize = bodies.iter().map(bytes::Bytes::len).sum::<usize>() / total;
        println!(
            "  JSON body {body_bytes} B on average, framed Avro {} B",
            framed.iter().map(|(_, b)| b.len()).sum::<usize>() / total
        );
        let _ = Catalog::global().unwrap();

        let cpu = eip_tests::bench::Cpu {
            broker: eip_tests::bench::broker_pid(&ep.brokers),
        };
        // 1. Through the gateway (server and HTTP clients share this process).
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(concurrency)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let url = format!("http://{addr}/v1/records/{PLACE_ORDER}");
        let bodies = Arc::new(bodies);
        let post = {
            let (client, url, bodies) = (client.clone(), url.clone(), bodies.clone());
            move |i: usize| {
                let (client, url, body) = (client.clone(), url.clone(), bodies[i].clone());
                async move {
                    let resp = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    let status = resp.status();
                    let text = resp.text().await.unwrap();
                    assert_eq!(status.as_u16(), 202, "{text}");
                }
            }
        };
        let post = Arc::new(post);
        {
            let post = post.clone();
            closed_loop(warmup, concurrency, move |i| post(i)).await;
        }
        let before = cpu.sample();
        let (latencies, elapsed) = {
            let post = post.clone();
            closed_loop(requests, concurrency, move |i| post(warmup + i)).await
        };
        let gateway = figures(latencies, elapsed);
        let gateway_cpu = cpu.per_record(before, requests);

        // 2. Baseline: the same records straight to Kafka, each ack awaited.
        let producer: FutureProducer = eip_runtime::kafka::producer_config(&ep.kafka())
            .create()
            .unwrap();
        let framed = Arc::new(framed);
        let produce = {
            let (producer, framed, topic) = (producer.clone(), framed.clone(), raw_topic.clone());
            move |i: usize| {
                let (producer, framed, topic) = (producer.clone(), framed.clone(), topic.clone());
                async move {
                    let (key, payload) = &framed[i];
                    let record = FutureRecord::to(&topic).key(key.as_bytes()).payload(payload);
                    let delivery = producer.send_result(record).map_err(|(e, _)| e).unwrap();
                    delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
                }
            }
        };
        let produce = Arc::new(produce);
        {
            let produce = produce.clone();
            closed_loop(warmup, concurrency, move |i| produce(i)).await;
        }
        let before = cpu.sample();
        let (latencies, elapsed) = {
            let produce = produce.clone();
            closed_loop(requests, concurrency, move |i| produce(warmup + i)).await
        };
        let baseline = figures(latencies, elapsed);
        let baseline_cpu = cpu.per_record(before, requests);

        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "  gateway  (HTTP JSON -> Avro -> Kafka, 202 after ack): {:>8.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms; {gateway_cpu} (HTTP clients included)",
            gateway.rate,
            ms(gateway.p50),
            ms(gateway.p99)
        );
        println!(
            "  baseline (rdkafka produce, ack awaited):             {:>8.0} rec/s   p50 {:>6.2} ms   p99 {:>6.2} ms; {baseline_cpu}",
            baseline.rate,
            ms(baseline.p50),
            ms(baseline.p99)
        );
        println!(
            "  ratio gateway/baseline: throughput {:.2}, p50 {:.2}x, p99 {:.2}x",
            gateway.rate / baseline.rate,
            ms(gateway.p50) / ms(baseline.p50),
            ms(gateway.p99) / ms(baseline.p99)
        );

        let _ = stop_tx.send(());
        task.await.unwrap().unwrap();
        let _ = eip_runtime::kafka::delete_topics(
            &ep.kafka(),
            &[gw_topic.as_str(), raw_topic.as_str()],
            Duration::from_secs(10),
        )
        .await;
    });
}
