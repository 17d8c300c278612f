//! Pass-through benchmark: the runtime against raw rdkafka, on the same broker and topic.
//!
//! ```text
//! make bench            # starts the local stack, runs this, stops the stack
//! cargo bench -p eip-tests --bench passthrough -- [--records N] [--rounds R] [--partitions P]
//! ```
//!
//! In one run it measures, on one input topic of framed `OrderPlaced` records:
//! 1. the broker's own ceiling: raw idempotent produce, and raw consume, in records/s;
//! 2. raw rdkafka consume -> produce (BaseConsumer + BaseProducer, auto-commit, no decoding);
//! 3. the runtime's pass-through (`eip-passthrough`): Avro decode through the registry cache,
//!    encode, produce idempotently, and commit only after acknowledgement.
//!
//! Pass-throughs alternate (raw, runtime, raw, runtime, ...) so broker drift hits both; each
//! is timed from its first consumed record to its last acknowledged output, excluding group
//! join time. The figures printed are medians over the rounds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use eip_passthrough::PassthroughConfig;
use eip_runtime::{Envelope, ProcessError};
use eip_schemas::types::OrderPlaced;
use eip_tests::bench::*;
use eip_tests::*;

struct Args {
    records: usize,
    rounds: usize,
    partitions: i32,
    max_in_flight: usize,
    /// Skip the raw pass-through (profiling the runtime alone).
    runtime_only: bool,
    /// Skip the runtime pass-through (profiling raw rdkafka alone).
    raw_only: bool,
}

fn args() -> Args {
    let mut a = Args {
        records: 100_000,
        rounds: 3,
        partitions: 4,
        max_in_flight: eip_runtime::config::PipelineConfig::default().max_in_flight,
        runtime_only: false,
        raw_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .and_then(|v| v.parse::<usize>().ok())
                .expect("a number")
        };
        match arg.as_str() {
            "--records" => a.records = value(),
            "--rounds" => a.rounds = value(),
            "--partitions" => a.partitions = value() as i32,
            "--max-in-flight" => a.max_in_flight = value(),
            "--runtime-only" => a.runtime_only = true,
            "--raw-only" => a.raw_only = true,
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

/// Notes when the runtime took its first record.
struct FirstRecord(Arc<OnceLock<Instant>>);

impl Hook for FirstRecord {
    async fn before(&self, _: &Envelope<OrderPlaced>) -> Result<(), ProcessError> {
        self.0.get_or_init(Instant::now);
        Ok(())
    }
}

/// Returns records/s and the peak number of records in flight.
async fn runtime_passthrough(
    ep: &Endpoints,
    input: &str,
    output: &str,
    n: usize,
    max_in_flight: usize,
) -> (f64, i64) {
    let group = unique("bench-rt");
    let mut cfg = config(
        ep,
        input,
        &group,
        PassthroughConfig {
            output: output.to_string(),
        },
    );
    cfg.kafka = eip_runtime::config::KafkaConfig {
        group_id: group.clone(),
        ..bench_kafka(ep)
    };
    cfg.telemetry.readiness_interval = Duration::from_secs(5);
    cfg.kafka.statistics_interval = Duration::from_secs(5);
    cfg.telemetry.log_filter = "warn".into();
    cfg.pipeline.max_in_flight = max_in_flight;
    let first = Arc::new(OnceLock::new());
    let timed = Hooked {
        name: "passthrough",
        output: output.into(),
        hook: FirstRecord(first.clone()),
    };
    let p = InProcess::start(cfg, timed).await;
    let produced = p
        .running
        .metrics
        .produced
        .with_label_values(&["passthrough", output]);
    let in_flight = p
        .running
        .metrics
        .in_flight
        .with_label_values(&["passthrough"]);
    let mut peak = 0;
    while (produced.get() as usize) < n {
        peak = peak.max(in_flight.get());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = first.get().unwrap().elapsed();
    p.stop().await.unwrap();
    (rate(n, elapsed), peak)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let a = args();
    let ep = endpoints();
    let (input, payload) = bench_input(&ep, "bench-in", a.partitions).await;

    println!(
        "pass-through benchmark: {} records of {} bytes, {} partitions, {} rounds, broker {}",
        a.records,
        payload.len(),
        a.partitions,
        a.rounds,
        ep.brokers
    );
    let cpu = Cpu {
        broker: broker_pid(&ep.brokers),
    };
    let (ep2, t2, p2) = (ep.clone(), input.clone(), payload.clone());
    let before = cpu.sample();
    let produce = tokio::task::spawn_blocking(move || raw_produce(&ep2, &t2, a.records, &p2))
        .await
        .unwrap();
    println!(
        "broker ceiling: raw produce {produce:>9.0} records/s; {}",
        cpu.per_record(before, a.records)
    );
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

    let (mut raw, mut rt, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=a.rounds {
        let out = unique("bench-raw-out");
        create_topics(&ep, &[&out], a.partitions).await;
        let (ep2, i2, o2) = (ep.clone(), input.clone(), out.clone());
        let before = cpu.sample();
        let r = if a.runtime_only {
            f64::NAN
        } else {
            tokio::task::spawn_blocking(move || raw_passthrough(&ep2, &i2, &o2, a.records))
                .await
                .unwrap()
        };
        println!(
            "round {round}: raw rdkafka pass-through {r:>9.0} records/s; {}",
            cpu.per_record(before, a.records)
        );
        if a.raw_only {
            raw.push(r);
            continue;
        }
        let out = unique("bench-rt-out");
        create_topics(&ep, &[&out], a.partitions).await;
        let before = cpu.sample();
        let (t, peak) = runtime_passthrough(&ep, &input, &out, a.records, a.max_in_flight).await;
        println!(
            "round {round}: runtime pass-through     {t:>9.0} records/s; {} ({:.2}x raw, peak {peak} records in flight)",
            cpu.per_record(before, a.records),
            t / r
        );
        raw.push(r);
        rt.push(t);
        ratios.push(t / r);
    }
    if rt.is_empty() {
        return;
    }
    let (r, t) = (median(raw), median(rt));
    println!("median: raw rdkafka pass-through {r:>9.0} records/s");
    println!(
        "median: runtime pass-through     {t:>9.0} records/s (Avro decode + encode, commit after ack)"
    );
    println!(
        "ratio runtime / raw: {:.2} (of medians); median of per-round ratios {:.2}",
        t / r,
        median(ratios)
    );
}
