//! Pass-through benchmark: the runtime against raw rdkafka, on the same broker and topic.
//!
//! ```text
//! make bench            # starts the local stack, runs this, stops the stack
//! cargo bench -p eip-tests --bench passthrough -- [--records N] [--rounds R] [--partitions P]
//!     [--max-in-flight N] [--max-batch N] [--runtime-only | --raw-only]
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
    max_batch: Option<usize>,
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
    quiet(&mut cfg);
    cfg.pipeline.max_in_flight = max_in_flight;
    if let Some(b) = max_batch {
        cfg.pipeline.max_batch = b;
    }
    let first = Arc::new(OnceLock::new());
    let timed = Hooked {
        name: "passthrough",
        output: output.into(),
        hook: FirstRecord(first.clone()),
    };
    let p = InProcess::start(cfg, timed).await;
    let m = &p.running.metrics;
    let produced = m.produced.with_label_values(&["passthrough", output]);
    let in_flight = m.in_flight.with_label_values(&["passthrough"]);
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
    let a = BenchArgs::parse();
    let Opening { ep, input, cpu } = opening("pass-through", "bench-in", &a).await;
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
        let r = if a.has("--runtime-only") {
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
        if a.has("--raw-only") {
            raw.push(r);
            continue;
        }
        let out = unique("bench-rt-out");
        create_topics(&ep, &[&out], a.partitions).await;
        let before = cpu.sample();
        let (t, peak) = runtime_passthrough(
            &ep,
            &input,
            &out,
            a.records,
            a.max_in_flight
                .unwrap_or(eip_runtime::config::PipelineConfig::default().max_in_flight),
            a.has("--max-batch").then(|| a.usize("--max-batch", 500)),
        )
        .await;
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
