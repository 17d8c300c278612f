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

/// Holds every record of some partitions until released.
struct StuckPartitions {
    stuck: Vec<i32>,
    release: tokio::sync::watch::Receiver<bool>,
}

impl Hook for StuckPartitions {
    async fn before(&self, input: &Envelope<OrderPlaced>) -> Result<(), ProcessError> {
        if self.stuck.contains(&input.position.partition) {
            let mut release = self.release.clone();
            let _ = release.wait_for(|go| *go).await;
        }
        Ok(())
    }
}

/// The lag of `partition` as the member last reported it.
fn lag_of(p: &InProcess, partition: i32) -> Option<f64> {
    p.running
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("eip_consumer_lag{"))
        .find(|l| l.contains(&format!("partition=\"{partition}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stuck_partitions_keep_the_member_in_its_group_while_the_others_flow_and_lag_updates() {
    let ep = endpoints();
    let names = fresh_topics(&ep, "stuck", 4).await;
    let (input, output) = (names.input.clone(), names.output.clone());
    produce(&ep, &input, 4_000, 0, 0, 0).await;
    let per_partition =
        |records: &[ReadRecord], p: i32| records.iter().filter(|r| r.partition == p).count();
    let inputs = read_all(&ep, &input).await;
    let count = |records: &[ReadRecord], ps: &[i32]| {
        ps.iter().map(|p| per_partition(records, *p)).sum::<usize>()
    };
    assert!(
        (0..4).all(|p| per_partition(&inputs, p) > 300),
        "every partition has records"
    );

    let mut cfg = passthrough_config(&ep, &names);
    // A share of 250 records per partition: the stuck ones hold 250 each.
    cfg.pipeline.max_in_flight = 1_000;
    cfg.pipeline.max_batch = 50;
    cfg.pipeline.drain_timeout = Duration::from_secs(2);
    cfg.kafka.session_timeout = Duration::from_secs(6);
    // The least the runtime accepts; the member must stay past it with its budget full.
    cfg.kafka.max_poll_interval = Duration::from_secs(12);
    let (release, gate) = tokio::sync::watch::channel(false);
    let stuck = StuckPartitions {
        stuck: vec![0, 1],
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
    // Partitions 0 and 1 are stuck: they fill the budget, are held back, and 2 and 3 flow.
    let flowing = count(&inputs, &[2, 3]);
    eventually(
        "partitions 2 and 3 through while 0 and 1 are stuck",
        WAIT,
        || async { (count(&read_all(&ep, &output).await, &[2, 3]) == flowing).then_some(()) },
    )
    .await;
    assert!(
        p.metric("eip_paused_partitions") >= 1.0,
        "a stuck partition that filled the budget is held back"
    );
    let lag_before = eventually("a lag figure for partition 0", WAIT, || async {
        lag_of(&p, 0).filter(|l| *l > 0.0)
    })
    .await;
    // More records, past max.poll.interval: the member keeps polling, so it stays in the
    // group, the flowing partitions take the new records, and the lag keeps being reported.
    produce(&ep, &input, 2_000, 4_000, 0, 0).await;
    let inputs = read_all(&ep, &input).await;
    let flowing = count(&inputs, &[2, 3]);
    let stuck_new = per_partition(&inputs, 0) as f64 - lag_before;
    tokio::time::sleep(Duration::from_secs(14)).await;
    eventually("the new records of 2 and 3 through", WAIT, || async {
        (count(&read_all(&ep, &output).await, &[2, 3]) == flowing).then_some(())
    })
    .await;
    eventually(
        "the lag of partition 0 follows the new records",
        WAIT,
        || async { lag_of(&p, 0).filter(|l| *l >= lag_before + stuck_new * 0.9) },
    )
    .await;
    eventually("both stuck partitions held back", WAIT, || async {
        (p.metric("eip_paused_partitions") >= 2.0).then_some(())
    })
    .await;
    let text = p.running.metrics.render();
    let revokes: f64 = text
        .lines()
        .filter(|l| l.starts_with("eip_rebalances_total") && l.contains("kind=\"revoke\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(revokes, 0.0, "never left the group:\n{text}");
    assert_eq!(p.metric("eip_assigned_partitions"), 4.0);
    assert!(
        p.metric("eip_records_in_flight") <= 2.0 * 1_000.0 + 50.0,
        "the total stays within twice the budget plus a poll batch"
    );
    assert_eq!(count(&read_all(&ep, &output).await, &[0, 1]), 0);
    // Released, partitions 0 and 1 resume and complete.
    release.send(true).unwrap();
    wait_for(&ep, &output, 6_000, WAIT).await;
    eventually("resumed", WAIT, || async {
        Some(()).filter(|_| p.metric("eip_paused_partitions") == 0.0)
    })
    .await;
    p.stop().await.unwrap();
    let out = read_all(&ep, &output).await;
    assert_eq!(out.len(), 6_000);
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
    assert_eq!(dead["trace_id"].as_str().map(str::len), Some(32));
    assert!(dead["correlation_id"].is_string());
    // At `info` the record's span is its batch's, which names where the batch came from.
    assert_eq!(dead["span"]["name"], "batch", "{dead}");
    assert_eq!(dead["span"]["topic"].as_str(), Some(input.as_str()));
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
