//! Fault injection: kill -9 the processor, freeze the registry, restart the broker, hit a fatal
//! error. Each fault test runs alone (they start servers of their own and stop them).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashSet;
use std::time::Duration;

use eip_passthrough::Passthrough;
use eip_runtime::{Envelope, ProcessError, RuntimeError};
use eip_schemas::types::OrderPlaced;
use eip_tests::*;

const WAIT: Duration = Duration::from_secs(300);

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// (key, seq) of every order in `topic`.
async fn key_seqs(ep: &Endpoints, topic: &str) -> Vec<(String, u64)> {
    let orders = decode_orders(&codec(ep), &read_all(ep, topic).await).await;
    orders
        .iter()
        .map(|o| (o.metadata.aggregate_id.clone(), seq_of(o)))
        .collect()
}

/// Waits until every input (key, seq) appears in `output`; returns the output.
async fn until_complete(
    ep: &Endpoints,
    inputs: &[(String, u64)],
    output: &str,
) -> Vec<(String, u64)> {
    let want: HashSet<&(String, u64)> = inputs.iter().collect();
    eventually("every input in the output", WAIT, || async {
        let got = key_seqs(ep, output).await;
        let have: HashSet<&(String, u64)> = got.iter().collect();
        want.is_subset(&have).then_some(got.clone())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_loses_nothing_and_keeps_key_order() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let ep = endpoints();
    let (input, output, group) = fresh_topics(&ep, "kill", 4).await.io();
    // 100 keys, 300 records each: per-key order is checkable.
    produce(&ep, &input, 30_000, 0, 0, 100).await;
    let port = free_port();
    let mut env = passthrough_env(&ep, &input, &output, &group, port);
    // Static membership, as the Kubernetes StatefulSet sets it: the restarted replica takes its
    // partitions back at once, without waiting out the dead member's session (docs/consumer-groups.md).
    env.push(("EIP__KAFKA__GROUP_INSTANCE_ID".into(), format!("{group}-0")));

    let mut first = ChildProcess::spawn(&bin("eip-passthrough"), &[], &env);
    wait_for(&ep, &output, 8_000, WAIT).await;
    first.signal("KILL");
    let status = first.wait(Duration::from_secs(30)).await;
    assert!(!status.success(), "killed");

    let mut second = ChildProcess::spawn(&bin("eip-passthrough"), &[], &env);
    let inputs = key_seqs(&ep, &input).await;
    let outputs = until_complete(&ep, &inputs, &output).await;
    second.signal("TERM");
    assert!(
        second.wait(Duration::from_secs(60)).await.success(),
        "{}",
        second.log_text()
    );

    let duplicates = assert_in_order_per_key(&inputs, &outputs);
    // Redelivery is bounded by what was in flight and not yet committed when killed.
    assert!(duplicates < 30_000, "duplicates: {duplicates}");
    eprintln!(
        "kill -9: {} outputs for 30000 inputs ({duplicates} redelivered)",
        outputs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_registry_means_retries_in_place_not_dead_letters() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let registry = PrivateRegistry::start().await;
    let shared = endpoints();
    let ep = Endpoints {
        brokers: shared.brokers.clone(),
        registry: registry.url(),
    };
    let names = fresh_topics(&ep, "reg", 2).await;
    let (input, output, dlq_topic) = (names.input.clone(), names.output.clone(), names.dlq.clone());
    produce(&ep, &input, 2_000, 0, 0, 0).await;

    // The processor starts with an empty schema cache while the registry is frozen.
    registry.pause();
    let mut cfg = passthrough_config(&ep, &names);
    cfg.registry.timeout = Duration::from_millis(300);
    cfg.pipeline.retry.initial_backoff = Duration::from_millis(50);
    cfg.pipeline.retry.max_backoff = Duration::from_millis(500);
    let p = InProcess::start(cfg.clone(), Passthrough::new(&cfg.processor)).await;
    eventually("retries while the registry is frozen", WAIT, || async {
        Some(()).filter(|_| p.metric("eip_records_retried_total") >= 6.0)
    })
    .await;
    let addr = p.running.telemetry.to_string();
    let (status, body) = eventually("not ready while the registry is frozen", WAIT, || {
        let addr = addr.clone();
        async move {
            http_get(&addr, "/readyz")
                .await
                .filter(|(_, b)| b.contains("\"registry\":false"))
        }
    })
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(p.metric("eip_records_produced_total"), 0.0);
    assert_eq!(
        p.metric("eip_records_dlq_total"),
        0.0,
        "nothing dead-lettered during the outage"
    );

    registry.resume();
    wait_for(&ep, &output, 2_000, WAIT).await;
    eventually("ready again", WAIT, || {
        let addr = addr.clone();
        async move { http_get(&addr, "/readyz").await.filter(|(s, _)| *s == 200) }
    })
    .await;
    p.stop().await.unwrap();
    assert!(
        read_all(&ep, &dlq_topic).await.is_empty(),
        "no dead letters"
    );
    let ids: HashSet<_> = key_seqs(&ep, &output).await.into_iter().collect();
    assert_eq!(ids.len(), 2_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_is_survived_without_loss() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let broker = PrivateBroker::start();
    let ep = broker.endpoints();
    let names = fresh_topics(&ep, "bounce", 2).await;
    let (input, output) = (names.input.clone(), names.output.clone());
    produce(&ep, &input, 10_000, 0, 0, 0).await;

    let cfg = passthrough_config(&ep, &names);
    let p = InProcess::start(cfg.clone(), Passthrough::new(&cfg.processor)).await;
    wait_for(&ep, &output, 2_000, WAIT).await;
    broker.stop();
    eventually("broker seen as down", WAIT, || async {
        Some(()).filter(|_| !p.running.health.readiness().check("broker"))
    })
    .await;
    broker.restart();
    // More records after the restart flow too.
    produce(&ep, &input, 5_000, 10_000, 0, 0).await;
    let inputs = key_seqs(&ep, &input).await;
    assert_eq!(inputs.len(), 15_000);
    let outputs = until_complete(&ep, &inputs, &output).await;
    eventually("ready again", WAIT, || async {
        Some(()).filter(|_| p.running.health.readiness().ready)
    })
    .await;
    p.stop()
        .await
        .expect("the processor recovered by itself, without a fatal error");
    assert_in_order_per_key(&inputs, &outputs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_while_the_broker_is_frozen_ends_within_its_bounds() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let broker = PrivateBroker::start();
    let ep = broker.endpoints();
    let names = fresh_topics(&ep, "frozen", 2).await;
    produce(&ep, &names.input, 2_000, 0, 0, 0).await;
    let mut cfg = passthrough_config(&ep, &names);
    cfg.pipeline.drain_timeout = Duration::from_secs(2);
    cfg.pipeline.close_timeout = Duration::from_secs(3);
    let p = InProcess::start(cfg.clone(), Passthrough::new(&cfg.processor)).await;
    wait_for(&ep, &names.output, 2_000, WAIT).await;

    // The broker stops answering (a hung host, a partition of the network): nothing it owes
    // the consumer's close (the commit, leaving the group) ever comes.
    broker.freeze();
    let asked = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(60), p.stop())
        .await
        .expect("the shutdown is bounded by drain_timeout + 5 s + close_timeout");
    let took = asked.elapsed();
    broker.thaw();
    match ended {
        Err(RuntimeError::Fatal(reason)) => assert!(
            reason.contains("did not close within pipeline.close_timeout (3s)"),
            "{reason}"
        ),
        other => panic!("expected the unfinished close to be an error, got {other:?}"),
    }
    // drain (2 s) + abandon grace (5 s) + close (3 s) + producer flush (at most 10 s), and
    // slack for a loaded machine; an unbounded close would hit the 60 s timeout above.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    eprintln!("shutdown with a frozen broker took {took:?}");
}

/// Fails fatally on one sequence number.
struct FatalOn(u64);

impl Hook for FatalOn {
    async fn before(&self, input: &Envelope<OrderPlaced>) -> Result<(), ProcessError> {
        if seq_of(&input.value) == self.0 {
            return Err(ProcessError::fatal(
                "the store's schema is newer than this binary",
            ));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_error_drains_exits_with_an_error_and_leaves_the_record_uncommitted() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let ep = endpoints();
    let names = fresh_topics(&ep, "fatal", 1).await;
    let (input, output, group) = (
        names.input.clone(),
        names.output.clone(),
        names.group.clone(),
    );
    produce(&ep, &input, 1_000, 0, 0, 0).await;
    let cfg = passthrough_config(&ep, &names);
    let fatal = Hooked {
        name: "fatal-on",
        output: output.as_str().into(),
        hook: FatalOn(500),
    };
    let p = InProcess::start(cfg, fatal).await;
    let ended = tokio::time::timeout(WAIT, p.join()).await.unwrap();
    match ended {
        Err(RuntimeError::Fatal(reason)) => assert!(reason.contains("schema is newer"), "{reason}"),
        other => panic!("expected a fatal error, got {other:?}"),
    }
    let before = key_seqs(&ep, &output).await;
    assert!(
        before.iter().all(|(_, s)| *s < 500),
        "nothing at or after the fatal record is produced"
    );
    assert_eq!(before.len(), 500, "everything before it is produced");

    // A fixed binary resumes at the fatal record: it was never committed, so it is not lost.
    let p = passthrough(&ep, &input, &output, &group).await;
    wait_for(&ep, &output, 1_000, WAIT).await;
    p.stop().await.unwrap();
    let after = key_seqs(&ep, &output).await;
    let seqs: HashSet<u64> = after.iter().map(|(_, s)| *s).collect();
    assert_eq!(seqs.len(), 1_000);
    assert_eq!(
        after.len(),
        1_000,
        "resumed exactly at the uncommitted record"
    );
}

/// Panics on one sequence number: a bug in a processor.
struct PanicOn(u64);

impl Hook for PanicOn {
    async fn before(&self, input: &Envelope<OrderPlaced>) -> Result<(), ProcessError> {
        assert_ne!(
            seq_of(&input.value),
            self.0,
            "a bug in the processor at this record"
        );
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_process_dead_letters_the_record_is_counted_and_the_rest_flow() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let ep = endpoints();
    let names = fresh_topics(&ep, "panic", 2).await;
    produce(&ep, &names.input, 1_000, 0, 0, 0).await;
    let cfg = passthrough_config(&ep, &names);
    let hooked = Hooked {
        name: "panic-on",
        output: names.output.as_str().into(),
        hook: PanicOn(500),
    };
    let p = InProcess::start(cfg, hooked).await;
    wait_for(&ep, &names.output, 999, WAIT).await;
    wait_for(&ep, &names.dlq, 1, WAIT).await;

    let dead = read_all(&ep, &names.dlq).await;
    assert_eq!(
        dead.len(),
        1,
        "only the record that panicked is dead-lettered"
    );
    let reason = dead[0].header(eip_runtime::dlq::REASON).unwrap_or_default();
    assert!(
        reason.starts_with("process panicked: ") && reason.contains("a bug in the processor"),
        "{reason}"
    );
    assert_eq!(
        dead[0].header(eip_runtime::dlq::ERROR_CLASS),
        Some("poison")
    );
    assert_eq!(p.metric("eip_panics_total"), 1.0);
    let addr = p.running.telemetry.to_string();
    let (status, body) = http_get(&addr, "/healthz").await.unwrap_or_default();
    assert_eq!(
        status, 200,
        "a contained panic leaves the process live: {body}"
    );
    let health: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    assert_eq!(health["panics"], 1, "{body}");
    p.stop()
        .await
        .expect("the processor went on after the panic");

    let seqs: HashSet<u64> = key_seqs(&ep, &names.output)
        .await
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(seqs.len(), 999);
    assert!(!seqs.contains(&500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_too_large_for_its_topic_is_sent_without_its_payload_and_the_rest_flow() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let _serial = ONE_AT_A_TIME.lock().await;
    let ep = endpoints();
    register(&ep).await;
    let names = Names {
        input: unique("huge"),
        dlq: String::new(),
        output: unique("huge-out"),
        group: unique("g"),
    };
    let dlq = format!("{}.dlq", names.input);
    create_topics(&ep, &[&names.input, &names.output], 1).await;
    // The dead-letter topic takes records of at most 2 KiB: the input's own 8 KiB poison
    // record can't go there whole.
    let admin: AdminClient<DefaultClientContext> = eip_runtime::kafka::base_config(&ep.kafka())
        .create()
        .unwrap();
    let small = NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "2048");
    for result in admin
        .create_topics([&small], &AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap();
    }
    let producer: FutureProducer = eip_runtime::kafka::producer_config(&ep.kafka())
        .create()
        .unwrap();
    let garbage = vec![b'x'; 8 * 1024];
    producer
        .send(
            FutureRecord::to(&names.input).key("k").payload(&garbage),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    produce(&ep, &names.input, 100, 0, 0, 0).await;

    let cfg = passthrough_config(&ep, &names);
    let p = InProcess::start(cfg.clone(), Passthrough::new(&cfg.processor)).await;
    wait_for(&ep, &names.output, 100, WAIT).await;
    wait_for(&ep, &dlq, 1, WAIT).await;
    p.stop()
        .await
        .expect("a dead letter that does not fit is not fatal");

    let dead = read_all(&ep, &dlq).await;
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].payload.as_ref().is_none_or(|p| p.is_empty()),
        "sent without its payload"
    );
    let truncated = dead[0]
        .header(eip_runtime::dlq::TRUNCATED)
        .unwrap_or_default();
    assert!(
        truncated.contains("8192 bytes") && truncated.contains("refused"),
        "{truncated}"
    );
    assert_eq!(dead[0].header(eip_runtime::dlq::SOURCE_OFFSET), Some("0"));
    assert!(dead[0].header(eip_runtime::dlq::REASON).is_some());
    assert_eq!(
        dead[0].header(eip_runtime::dlq::ERROR_CLASS),
        Some("poison")
    );
}
