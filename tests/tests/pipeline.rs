//! The runtime end to end on the shared local stack: throughput without loss or duplicates,
//! dead-lettering, trace propagation, telemetry, backpressure, rebalances and configuration.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use eip_runtime::dlq;
use eip_runtime::trace::{CORRELATION_ID, TRACEPARENT, TraceContext};
use eip_runtime::{Envelope, ProcessError};
use eip_schemas::types::OrderPlaced;
use eip_tests::*;

const WAIT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_moves_50000_records_with_none_lost_or_duplicated() {
    let ep = endpoints();
    let (input, output, group) = fresh_topics(&ep, "pt50k", 4).await.io();
    produce(&ep, &input, 50_000, 0, 0, 0).await;

    let p = passthrough(&ep, &input, &output, &group).await;
    wait_for(&ep, &output, 50_000, WAIT).await;
    let produced = eventually("every acknowledgement counted", WAIT, || async {
        Some(p.metric("eip_records_produced_total")).filter(|n| *n >= 50_000.0)
    })
    .await;
    p.stop().await.unwrap();

    let inputs = read_all(&ep, &input).await;
    let outputs = read_all(&ep, &output).await;
    assert_eq!(outputs.len(), 50_000, "output count");
    assert_eq!(produced, 50_000.0);
    let codec = codec(&ep);
    let decoded_in = decode_orders(&codec, &inputs).await;
    let decoded_out = decode_orders(&codec, &outputs).await;
    let ids: HashSet<&str> = decoded_out
        .iter()
        .map(|o| o.metadata.event_id.as_str())
        .collect();
    assert_eq!(ids.len(), 50_000, "no duplicates");
    // Every record arrives unchanged, under its key, with its correlation id and a child span
    // of its trace.
    let by_id: HashMap<&str, (&ReadRecord, &OrderPlaced)> = inputs
        .iter()
        .zip(decoded_in.iter())
        .map(|(r, o)| (o.metadata.event_id.as_str(), (r, o)))
        .collect();
    for (out_rec, out_order) in outputs.iter().zip(decoded_out.iter()) {
        let (in_rec, in_order) = by_id[out_order.metadata.event_id.as_str()];
        assert_eq!(out_order, in_order);
        assert_eq!(out_rec.key, in_rec.key);
        assert_eq!(
            out_rec.header(CORRELATION_ID),
            in_rec.header(CORRELATION_ID)
        );
        let tin = TraceContext::parse(in_rec.header(TRACEPARENT).unwrap().as_bytes()).unwrap();
        let tout = TraceContext::parse(out_rec.header(TRACEPARENT).unwrap().as_bytes()).unwrap();
        assert_eq!(tout.trace_id, tin.trace_id, "same trace");
        assert_ne!(tout.span_id, tin.span_id, "a child span");
    }
    assert_eq!(read_all(&ep, &format!("{input}.dlq")).await.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_lands_in_the_dlq_with_its_reason_while_the_rest_flow() {
    let ep = endpoints();
    let names = fresh_topics(&ep, "poison", 3).await;
    let dlq_topic = names.dlq.clone();
    let (input, output, group) = names.io();
    produce(&ep, &input, 3_000, 0, 8, 0).await;

    let p = passthrough(&ep, &input, &output, &group).await;
    wait_for(&ep, &output, 3_000, WAIT).await;
    wait_for(&ep, &dlq_topic, 8, WAIT).await;
    eventually("dlq metric", WAIT, || async {
        Some(()).filter(|_| p.metric("eip_records_dlq_total") == 8.0)
    })
    .await;
    p.stop().await.unwrap();

    let inputs = read_all(&ep, &input).await;
    let dead = read_all(&ep, &dlq_topic).await;
    assert_eq!(read_all(&ep, &output).await.len(), 3_000);
    assert_eq!(dead.len(), 8);
    let by_key: HashMap<_, _> = inputs.iter().map(|r| (r.key.clone(), r)).collect();
    let mut reasons = Vec::new();
    for d in &dead {
        let original = by_key[&d.key];
        // The original record, byte for byte, with headers that say where it came from and why.
        assert_eq!(d.payload, original.payload);
        assert_eq!(d.header(dlq::SOURCE_TOPIC), Some(input.as_str()));
        assert_eq!(
            d.header(dlq::SOURCE_PARTITION).unwrap(),
            original.partition.to_string()
        );
        assert_eq!(
            d.header(dlq::SOURCE_OFFSET).unwrap(),
            original.offset.to_string()
        );
        assert_eq!(d.header(dlq::ERROR_CLASS), Some("poison"));
        assert_eq!(d.header(dlq::ATTEMPTS), Some("1"));
        assert_eq!(d.header(dlq::PROCESSOR), Some("passthrough"));
        let first = d.header(dlq::FIRST_FAILURE).unwrap();
        time::OffsetDateTime::parse(first, &time::format_description::well_known::Rfc3339).unwrap();
        reasons.push(d.header(dlq::REASON).unwrap().to_string());
    }
    reasons.sort();
    for expected in [
        "not the Confluent magic byte",
        "shorter than the 5-byte",
        "is not in the registry",
        "avro decode with schema id",
    ] {
        assert_eq!(
            reasons.iter().filter(|r| r.contains(expected)).count(),
            2,
            "two records fail with `{expected}`: {reasons:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_serves_metrics_health_and_readiness() {
    let ep = endpoints();
    let (input, output, group) = fresh_topics(&ep, "tel", 2).await.io();
    produce(&ep, &input, 100, 0, 1, 0).await;
    let p = passthrough(&ep, &input, &output, &group).await;
    let addr = p.running.telemetry.to_string();
    let body = eventually("ready", WAIT, || {
        let addr = addr.clone();
        async move {
            http_get(&addr, "/readyz")
                .await
                .filter(|(s, _)| *s == 200)
                .map(|(_, b)| b)
        }
    })
    .await;
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        ready,
        serde_json::json!({"ready": true, "checks": {"broker": true, "partitions": true, "registry": true}})
    );
    assert_eq!(http_get(&addr, "/healthz").await.unwrap().0, 200);
    wait_for(&ep, &output, 100, WAIT).await;
    let text = eventually("lag reported", WAIT, || {
        let addr = addr.clone();
        async move {
            let (_, text) = http_get(&addr, "/metrics").await?;
            text.contains("eip_consumer_lag{").then_some(text)
        }
    })
    .await;
    for name in [
        "eip_records_consumed_total",
        "eip_records_produced_total",
        "eip_records_dlq_total",
        "eip_processing_seconds_bucket",
        "eip_records_in_flight",
        "eip_consumer_lag",
        "eip_assigned_partitions",
        "eip_ready",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    assert_eq!(metric_sum(&text, "eip_records_consumed_total"), 101.0);
    p.stop().await.unwrap();
}

/// Takes `delay` per record: a slow downstream.
struct Slow {
    delay: Duration,
    seen: Arc<AtomicUsize>,
}

impl Hook for Slow {
    async fn before(&self, _: &Envelope<OrderPlaced>) -> Result<(), ProcessError> {
        tokio::time::sleep(self.delay).await;
        self.seen.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_processor_is_backpressure_not_memory_growth() {
    let ep = endpoints();
    let names = fresh_topics(&ep, "slow", 2).await;
    let (input, output) = (names.input.clone(), names.output.clone());
    produce(&ep, &input, 3_000, 0, 0, 0).await;
    let mut cfg = passthrough_config(&ep, &names);
    cfg.pipeline.max_in_flight = 50;
    cfg.pipeline.max_batch = 20;
    let seen = Arc::new(AtomicUsize::new(0));
    let slow = Slow {
        delay: Duration::from_micros(500),
        seen: seen.clone(),
    };
    let p = InProcess::start(
        cfg,
        Hooked {
            name: "slow",
            output: output.as_str().into(),
            hook: slow,
        },
    )
    .await;
    // Sample the in-flight gauge while the backlog drains.
    let mut max_in_flight = 0.0f64;
    let mut samples = 0;
    while seen.load(Ordering::Relaxed) < 3_000 {
        max_in_flight = max_in_flight.max(p.metric("eip_records_in_flight"));
        samples += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_for(&ep, &output, 3_000, WAIT).await;
    assert_eq!(
        p.metric("eip_paused_partitions"),
        0.0,
        "a slow but moving pipeline is not paused"
    );
    p.stop().await.unwrap();
    // The budget, plus at most one poll batch taken just before reaching it.
    assert!(samples > 50, "sampled while draining");
    assert!(
        max_in_flight >= 40.0,
        "the budget was reached: {max_in_flight}"
    );
    assert!(
        max_in_flight <= 50.0 + 20.0,
        "in flight reached {max_in_flight}"
    );
    assert_eq!(read_all(&ep, &output).await.len(), 3_000);
}

/// Holds every record of one partition until released.
struct StuckPartition {
    stuck: i32,
    release: tokio::sync::watch::Receiver<bool>,
}

impl Hook for StuckPartition {
    async fn before(&self, input: &Envelope<OrderPlaced>) -> Result<(), ProcessError> {
        if input.position.partition == self.stuck {
            let mut release = self.release.clone();
            let _ = release.wait_for(|go| *go).await;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_partition_is_paused_and_the_others_keep_flowing() {
    let ep = endpoints();
    let names = fresh_topics(&ep, "stuck", 2).await;
    let (input, output) = (names.input.clone(), names.output.clone());
    produce(&ep, &input, 4_000, 0, 0, 0).await;
    let per_partition =
        |records: &[ReadRecord], p: i32| records.iter().filter(|r| r.partition == p).count();
    let inputs = read_all(&ep, &input).await;
    let (n0, n1) = (per_partition(&inputs, 0), per_partition(&inputs, 1));
    assert!(
        n0 > 500 && n1 > 500,
        "both partitions have records: {n0}/{n1}"
    );

    let mut cfg = passthrough_config(&ep, &names);
    cfg.pipeline.max_in_flight = 200;
    cfg.pipeline.max_batch = 50;
    cfg.pipeline.pause_after = Duration::from_millis(300);
    let (release, gate) = tokio::sync::watch::channel(false);
    let stuck = StuckPartition {
        stuck: 0,
        release: gate,
    };
    let p = InProcess::start(
        cfg,
        Hooked {
            name: "stuck",
            output: output.as_str().into(),
            hook: stuck,
        },
    )
    .await;
    // Partition 0 is stuck, so it fills the budget; it gets paused and partition 1 drains.
    eventually(
        "partition 1 fully through while partition 0 is stuck",
        WAIT,
        || async {
            let out = read_all(&ep, &output).await;
            (per_partition(&out, 1) == n1).then_some(())
        },
    )
    .await;
    assert!(
        p.metric("eip_paused_partitions") >= 1.0,
        "the stuck partition was paused"
    );
    // The flowing partitions keep the budget; the paused one keeps what it held; the total
    // never passes twice the budget plus a poll batch.
    assert!(p.metric("eip_records_in_flight") <= 2.0 * 200.0 + 50.0);
    assert_eq!(per_partition(&read_all(&ep, &output).await, 0), 0);
    // Released, partition 0 resumes and completes.
    release.send(true).unwrap();
    wait_for(&ep, &output, 4_000, WAIT).await;
    eventually("resumed", WAIT, || async {
        Some(()).filter(|_| p.metric("eip_paused_partitions") == 0.0)
    })
    .await;
    p.stop().await.unwrap();
    let out = read_all(&ep, &output).await;
    assert_eq!(out.len(), 4_000);
    assert_eq!(per_partition(&out, 0), n0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_hands_partitions_over_without_loss_or_duplicates() {
    let ep = endpoints();
    let (input, output, group) = fresh_topics(&ep, "rebal", 4).await.io();
    produce(&ep, &input, 6_000, 0, 0, 50).await;

    let a = passthrough(&ep, &input, &output, &group).await;
    wait_for(&ep, &output, 1_000, WAIT).await;
    // A second member joins: partitions move from A to B; A drains and commits what it gives up.
    let b = passthrough(&ep, &input, &output, &group).await;
    eventually("B gets partitions", WAIT, || async {
        Some(()).filter(|_| b.metric("eip_assigned_partitions") > 0.0)
    })
    .await;
    produce(&ep, &input, 6_000, 6_000, 0, 50).await;
    // A leaves gracefully: B takes everything over from A's commits.
    a.stop().await.unwrap();
    wait_for(&ep, &output, 12_000, WAIT).await;
    b.stop().await.unwrap();

    let codec = codec(&ep);
    let inputs = decode_orders(&codec, &read_all(&ep, &input).await).await;
    let outputs = decode_orders(&codec, &read_all(&ep, &output).await).await;
    let key_seq = |o: &OrderPlaced| (o.metadata.aggregate_id.clone(), seq_of(o));
    let inputs: Vec<_> = inputs.iter().map(key_seq).collect();
    let outputs: Vec<_> = outputs.iter().map(key_seq).collect();
    let duplicates = assert_in_order_per_key(&inputs, &outputs);
    assert_eq!(
        duplicates, 0,
        "graceful handovers commit before giving partitions up"
    );
    assert_eq!(outputs.len(), 12_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_commits_and_exits_zero() {
    let ep = endpoints();
    let names = fresh_topics(&ep, "term", 4).await;
    let dlq_topic = names.dlq.clone();
    let (input, output, group) = names.io();
    produce(&ep, &input, 20_000, 0, 1, 0).await;
    let port = free_port();
    let env = passthrough_env(&ep, &input, &output, &group, port);
    let mut child = ChildProcess::spawn(&bin("eip-passthrough"), &[], &env);
    wait_for(&ep, &output, 2_000, WAIT).await;
    child.signal("TERM");
    let status = child.wait(Duration::from_secs(60)).await;
    assert!(
        status.success(),
        "exit {status:?}; log:\n{}",
        child.log_text()
    );
    // A restart continues from the commits: nothing twice, nothing missing.
    let mut again = ChildProcess::spawn(&bin("eip-passthrough"), &[], &env);
    wait_for(&ep, &output, 20_000, WAIT).await;
    wait_for(&ep, &dlq_topic, 1, WAIT).await;
    again.signal("TERM");
    assert!(again.wait(Duration::from_secs(60)).await.success());
    let outputs = decode_orders(&codec(&ep), &read_all(&ep, &output).await).await;
    let ids: HashSet<_> = outputs
        .iter()
        .map(|o| o.metadata.event_id.clone())
        .collect();
    assert_eq!(ids.len(), 20_000);
    assert_eq!(
        outputs.len(),
        20_000,
        "a graceful stop leaves no duplicates"
    );

    // Logs are JSON lines; the dead-letter warning carries the record's trace and correlation.
    let logs = format!("{}{}", child.log_text(), again.log_text());
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["message"] == "stopped cleanly")
            .count(),
        2,
        "both runs stopped cleanly"
    );
    let dead = lines
        .iter()
        .find(|l| l["message"] == "record dead-lettered")
        .expect("the poison record was logged");
    assert_eq!(dead["level"], "WARN");
    assert_eq!(dead["span"]["trace_id"].as_str().map(str::len), Some(32));
    assert!(dead["span"]["correlation_id"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_fails_fast_with_one_line_naming_the_key() {
    // Brokers point at a port nothing listens on: a network call would hang, not fail fast.
    let dead = format!("127.0.0.1:{}", free_port());
    let cases: [(&str, &str, &str); 4] = [
        (
            "EIP__PIPELINE__MAX_IN_FLIGHT",
            "lots",
            "pipeline.max_in_flight",
        ),
        (
            "EIP__KAFKA__SESSION_TIMEOUT",
            "soon",
            "kafka.session_timeout",
        ),
        ("EIP__PIPELINE__INPUTS", "[]", "pipeline.inputs"),
        ("EIP__PROCESSOR__OUTPUTZ", "x", "processor.outputz"),
    ];
    for (var, value, key) in cases {
        let mut env = vec![
            ("EIP__KAFKA__BROKERS".to_string(), dead.clone()),
            (
                "EIP__PIPELINE__INPUTS".to_string(),
                "[\"orders\"]".to_string(),
            ),
        ];
        env.retain(|(k, _)| k != var);
        env.push((var.to_string(), value.to_string()));
        let started = std::time::Instant::now();
        let mut child = ChildProcess::spawn(&bin("eip-passthrough"), &[], &env);
        let status = child.wait(Duration::from_secs(10)).await;
        assert_eq!(
            status.code(),
            Some(2),
            "{var}={value}: {}",
            child.log_text()
        );
        assert!(started.elapsed() < Duration::from_secs(5), "failed fast");
        let log = child.log_text();
        assert_eq!(log.trim().lines().count(), 1, "one line: {log}");
        assert!(
            log.starts_with(&format!("invalid configuration: {key}:")),
            "{log}"
        );
    }
    let mut child = ChildProcess::spawn(
        &bin("eip-passthrough"),
        &["--config", "/nonexistent.toml"],
        &[],
    );
    assert_eq!(child.wait(Duration::from_secs(10)).await.code(), Some(2));
    assert!(
        child
            .log_text()
            .contains("/nonexistent.toml does not exist")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_output_topic_stops_startup_with_its_name() {
    let ep = endpoints();
    let input = unique("miss");
    create_topics(&ep, &[&input, &format!("{input}.dlq")], 1).await;
    let missing = unique("nowhere");
    let mut child = ChildProcess::spawn(
        &bin("eip-passthrough"),
        &[],
        &passthrough_env(&ep, &input, &missing, &unique("g"), free_port()),
    );
    let status = child.wait(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(1));
    assert!(
        child
            .log_text()
            .contains(&format!("missing topics: {missing}")),
        "{}",
        child.log_text()
    );
}
