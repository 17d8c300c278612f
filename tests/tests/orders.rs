//! The orders write side against the real local stack: commands in, events and outcomes out,
//! every outcome and version as the scripts say; duplicates applied once across a restart;
//! and a kill -9 mid-run that neither repeats nor skips a version.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: fail loudly

use std::path::Path;
use std::time::Duration;

use eip_orders::aggregate::{Command, Event, handle};
use eip_orders::{COMMAND_OFFSET, Orders, OrdersConfig};
use eip_runtime::config::Config;
use eip_tests::orders::{WAIT, check_script, event_versions, outcomes, produce_script};
use eip_tests::*;
use eipctl::orders::CommandRecord;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

struct Topics {
    names: Names,
    events: String,
    outcomes: String,
}

async fn topics(ep: &Endpoints, prefix: &str, partitions: i32) -> Topics {
    let names = fresh_topics(ep, prefix, partitions).await;
    let events = format!("{}-events", names.input);
    let outcomes = format!("{}-outcomes", names.input);
    create_topics(ep, &[&events, &outcomes], partitions).await;
    Topics {
        names,
        events,
        outcomes,
    }
}

fn orders_config(ep: &Endpoints, t: &Topics, db: &Path) -> Config<OrdersConfig> {
    config(
        ep,
        &t.names.input,
        &t.names.group,
        OrdersConfig {
            db: db.to_path_buf(),
            events_topic: t.events.clone(),
            outcomes_topic: t.outcomes.clone(),
            snapshot_every: 2,
            // Small, so orders are often loaded again from the journal (snapshot + tail).
            cached_orders: 10,
            ..OrdersConfig::default()
        },
    )
}

async fn start(cfg: &Config<OrdersConfig>) -> InProcess {
    InProcess::start_stateful(cfg.clone(), Orders::new(cfg).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_decided_once_with_consecutive_versions_even_when_sent_again_after_a_restart()
{
    let ep = endpoints();
    let t = topics(&ep, "orders", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = orders_config(&ep, &t, &dir.path().join("orders.db"));
    let codec = codec(&ep);
    let member = start(&cfg).await;
    let script = produce_script(&ep, &codec, &t.names.input, "ord", 600, 6).await;
    let decided = script.records - script.poison;
    wait_for(&ep, &t.outcomes, decided, WAIT).await;
    wait_for(&ep, &t.names.dlq, script.poison, WAIT).await;
    member.stop().await.unwrap();
    let first = outcomes(&ep, &codec, &t.outcomes).await;
    let events = event_versions(&ep, &codec, &t.events).await;
    check_script(&script, &first, &events);
    assert_eq!(
        first.values().map(Vec::len).sum::<usize>() as u64,
        decided,
        "one outcome per command record"
    );
    assert_eq!(
        read_all(&ep, &t.names.dlq).await.len() as u64,
        script.poison
    );

    // The same commands again, to a restarted member: every one is a duplicate by now.
    let member = start(&cfg).await;
    let again = produce_script(&ep, &codec, &t.names.input, "ord", 600, 0).await;
    wait_for(&ep, &t.outcomes, decided + again.records, WAIT).await;
    member.stop().await.unwrap();
    let second = outcomes(&ep, &codec, &t.outcomes).await;
    for (command, seen) in &second {
        let before = first[command].len();
        assert!(seen.len() > before, "{command} was decided again");
        assert!(
            seen[before..].iter().all(|o| o.duplicate),
            "{command}: {seen:?}"
        );
    }
    assert_eq!(
        event_versions(&ep, &codec, &t.events).await,
        events,
        "no event for a duplicate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_then_restart_publishes_every_version_once() {
    let ep = endpoints();
    let t = topics(&ep, "orders-kill", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orders.db");
    let codec = codec(&ep);
    let script = produce_script(&ep, &codec, &t.names.input, "kill", 3_000, 0).await;
    let env: Vec<(String, String)> = [
        ("EIP__KAFKA__BROKERS", ep.brokers.clone()),
        ("EIP__KAFKA__GROUP_ID", t.names.group.clone()),
        ("EIP__KAFKA__CLIENT_ID", t.names.group.clone()),
        ("EIP__REGISTRY__URL", ep.registry.clone()),
        ("EIP__PIPELINE__INPUTS", format!("[\"{}\"]", t.names.input)),
        ("EIP__PROCESSOR__DB", db.display().to_string()),
        ("EIP__PROCESSOR__EVENTS_TOPIC", t.events.clone()),
        ("EIP__PROCESSOR__OUTCOMES_TOPIC", t.outcomes.clone()),
        ("EIP__PROCESSOR__SNAPSHOT_EVERY", "2".to_string()),
        ("EIP__PROCESSOR__HOLD_COMMIT_OPEN", "200ms".to_string()),
        (
            "EIP__TELEMETRY__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    // Kill it three times inside a group commit: its events are published and acknowledged,
    // and not yet journaled.
    let marker = "group commit holding its transaction open";
    let mut logs = String::new();
    for round in 0..3 {
        let mut member = ChildProcess::spawn(&bin("eip-orders"), &[], &env);
        eventually("a group commit in progress", WAIT, || async {
            (member.log_text().matches(marker).count() >= 2 + round).then_some(())
        })
        .await;
        member.signal("KILL");
        assert!(!member.wait(Duration::from_secs(30)).await.success());
        logs.push_str(&member.log_text());
    }
    let mut last = ChildProcess::spawn(&bin("eip-orders"), &[], &env);
    let ids = script.outcomes.len() as u64;
    eventually("an outcome for every command", WAIT, || async {
        let seen = outcomes(&ep, &codec, &t.outcomes).await;
        (seen.len() as u64 >= ids).then_some(())
    })
    .await;
    last.signal("TERM");
    assert!(
        last.wait(Duration::from_secs(60)).await.success(),
        "{}",
        last.log_text()
    );
    logs.push_str(&last.log_text());
    println!(
        "{} commands; owners adopted unjournaled events {} times after the kills",
        script.records,
        logs.matches("adopted events a previous owner published")
            .count()
    );
    let seen = outcomes(&ep, &codec, &t.outcomes).await;
    let events = event_versions(&ep, &codec, &t.events).await;
    check_script(&script, &seen, &events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_journal_is_rebuilt_from_offset_0_of_the_events_topic() {
    let ep = endpoints();
    let t = topics(&ep, "orders-replay", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let codec = codec(&ep);
    let first = orders_config(&ep, &t, &dir.path().join("first.db"));
    let member = start(&first).await;
    let script = produce_script(&ep, &codec, &t.names.input, "replay", 120, 0).await;
    wait_for(&ep, &t.outcomes, script.records, WAIT).await;
    member.stop().await.unwrap();

    // The journal is gone: a new file, the same group (its offsets are at the end). The new
    // owner of each partition reads the events topic from offset 0 and adopts every event.
    let rebuilt = dir.path().join("rebuilt.db");
    let mut second = orders_config(&ep, &t, &rebuilt);
    // Small chunks: each partition's tail is read back and journaled in many of them.
    second.processor.read_back_chunk = 16;
    let member = start(&second).await;
    // New commands, decided against the rebuilt state: confirm every open order (story 4, at
    // version 2) with expected_version 2, and add a line to every confirmed one (story 0).
    let producer: rdkafka::producer::FutureProducer =
        eip_runtime::kafka::producer_config(&ep.kafka())
            .create()
            .unwrap();
    let mut expected = std::collections::HashMap::new();
    for (id, fin) in &script.finals {
        let meta = |n: u32, v: Option<i64>| eip_schemas::types::CommandMetadata {
            command_id: format!("{id}/after-{n}"),
            correlation_id: format!("after-{id}"),
            causation_id: None,
            issued_at: 1,
            aggregate_id: id.clone(),
            expected_version: v,
        };
        let payload = match (fin.status, script.versions[id]) {
            ("open", 2) => {
                expected.insert(format!("{id}/after-1"), (true, 3));
                codec
                    .encode(&eip_schemas::types::ConfirmOrder {
                        metadata: meta(1, Some(2)),
                    })
                    .await
                    .unwrap()
            }
            ("confirmed", 4) => {
                expected.insert(format!("{id}/after-2"), (false, 4));
                codec
                    .encode(&eip_schemas::types::AddOrderLine {
                        metadata: meta(2, None),
                        line: eip_schemas::types::OrderLine {
                            sku: "Z".into(),
                            quantity: 1,
                            unit_price_cents: 1,
                        },
                    })
                    .await
                    .unwrap()
            }
            _ => continue,
        };
        let record = rdkafka::producer::FutureRecord::to(&t.names.input)
            .key(id.as_bytes())
            .payload(&payload);
        producer
            .send(record, Duration::from_secs(30))
            .await
            .unwrap();
    }
    assert!(
        expected.len() >= 30,
        "both kinds of order are in the script"
    );
    // A command produced to a partition its key does not hash to (a producer with librdkafka's
    // default partitioner, say) is dead-lettered with the reason, never decided.
    let (stray_id, _) = script.finals.iter().next().unwrap();
    let wrong = (eip_runtime::kafka::partition_for(stray_id.as_bytes(), 3) + 1) % 3;
    let stray = codec
        .encode(&eip_schemas::types::ConfirmOrder {
            metadata: eip_schemas::types::CommandMetadata {
                command_id: format!("{stray_id}/stray"),
                correlation_id: format!("stray-{stray_id}"),
                causation_id: None,
                issued_at: 1,
                aggregate_id: stray_id.clone(),
                expected_version: None,
            },
        })
        .await
        .unwrap();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&t.names.input)
                .key(stray_id.as_bytes())
                .partition(wrong)
                .payload(&stray),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    wait_for(&ep, &t.names.dlq, 1, WAIT).await;
    let dead = read_all(&ep, &t.names.dlq).await;
    let reason = dead[0]
        .headers
        .iter()
        .find(|(k, _)| k == eip_runtime::dlq::REASON)
        .and_then(|(_, v)| v.as_ref())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    assert!(
        reason.contains(&format!("arrived on partition {wrong}")) && reason.contains("murmur2"),
        "{reason}"
    );
    wait_for(
        &ep,
        &t.outcomes,
        script.records + expected.len() as u64,
        WAIT,
    )
    .await;
    member.stop().await.unwrap();
    let seen = outcomes(&ep, &codec, &t.outcomes).await;
    assert!(
        !seen.contains_key(&format!("{stray_id}/stray")),
        "a command on the wrong partition was decided"
    );
    for (command, (accepted, version)) in &expected {
        let o = &seen[command][0];
        assert_eq!(
            (o.accepted, o.version),
            (*accepted, *version),
            "{command}: {o:?}"
        );
        if !accepted {
            assert_eq!(o.reason_code.as_deref(), Some("not_open"), "{command}");
        }
    }
    // The rebuilt journal holds every order's whole history.
    let conn = rusqlite::Connection::open(&rebuilt).unwrap();
    for (id, version) in &script.versions {
        let history = eip_store::journal::Journal::history(&conn, id).unwrap();
        let after = expected
            .iter()
            .filter(|(c, (ok, _))| *ok && c.starts_with(&format!("{id}/")))
            .count() as i64;
        assert_eq!(history.len() as i64, version + after, "{id}");
    }
}

/// What an owner killed after its event was acknowledged and before its outcome was sent
/// leaves: the event on the events topic, no outcome, nothing journaled. The next owner adopts
/// the event, and when the command's record comes again it reports the original outcome, not
/// a duplicate; a client's resend of the command stays a duplicate; nothing is published twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_owner_died_before_its_outcome_gets_its_original_outcome() {
    let ep = endpoints();
    let t = topics(&ep, "orders-adopt", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = orders_config(&ep, &t, &dir.path().join("orders.db"));
    let codec = codec(&ep);
    let (id, steps, _, _) = eipctl::orders::story("adopt", 0);
    let CommandRecord::Place(place) = steps[0].record.clone() else {
        panic!("a story starts with its placement")
    };
    let command_id = place.metadata.command_id.clone();
    let producer: rdkafka::producer::FutureProducer =
        eip_runtime::kafka::producer_config(&ep.kafka())
            .create()
            .unwrap();
    let command = steps[0].record.avro(&codec).await.unwrap();
    let Ok(Event::Placed(placed)) = handle(None, &Command::Place(place), 1_000) else {
        panic!("a placement of a new order is accepted")
    };
    let event = codec.encode(&placed).await.unwrap();
    // The command's record at offset 0 and a client's resend at offset 1; the event the
    // killed owner published for offset 0.
    for _ in 0..2 {
        let record = FutureRecord::to(&t.names.input)
            .key(id.as_bytes())
            .payload(&command);
        producer.send(record, WAIT).await.unwrap();
    }
    let headers = OwnedHeaders::new().insert(Header {
        key: COMMAND_OFFSET,
        value: Some("0"),
    });
    let record = FutureRecord::to(&t.events)
        .key(id.as_bytes())
        .payload(&event)
        .headers(headers);
    producer.send(record, WAIT).await.unwrap();

    let member = start(&cfg).await;
    wait_for(&ep, &t.outcomes, 2, WAIT).await;
    member.stop().await.unwrap();
    let seen = &outcomes(&ep, &codec, &t.outcomes).await[&command_id];
    let reported: Vec<(bool, i64, bool)> = seen
        .iter()
        .map(|o| (o.accepted, o.version, o.duplicate))
        .collect();
    assert_eq!(
        reported,
        [(true, 1, false), (true, 1, true)],
        "the record's original outcome, then the resend's duplicate: {seen:?}"
    );
    let versions = event_versions(&ep, &codec, &t.events).await;
    assert_eq!(
        versions[&id],
        [1],
        "the adopted event is not published again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_handed_over_under_load_never_decide_on_stale_state() {
    let ep = endpoints();
    let t = topics(&ep, "orders-handover", 6).await;
    let dir = tempfile::tempdir().unwrap();
    let codec = codec(&ep);
    // Every member shares one journal file, as replicas on one machine do.
    let cfg = orders_config(&ep, &t, &dir.path().join("orders.db"));
    // Commands keep coming while members join and leave: 40 batches of 60 orders, 100 ms
    // apart, each order's commands in order on its partition.
    let load = {
        let (ep, codec, topic) = (ep.clone(), codec.clone(), t.names.input.clone());
        tokio::spawn(async move {
            let mut script = eipctl::orders::Script::default();
            for batch in 0..40 {
                let part =
                    produce_script(&ep, &codec, &topic, &format!("ho{batch:02}"), 60, 0).await;
                script.absorb(part);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            script
        })
    };
    let a = start(&cfg).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let b = start(&cfg).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let c = start(&cfg).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    a.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let d = start(&cfg).await;
    b.stop().await.unwrap();
    let script = load.await.unwrap();
    wait_for(&ep, &t.outcomes, script.records, WAIT).await;
    c.stop().await.unwrap();
    d.stop().await.unwrap();
    // A member deciding on stale state would accept what must be refused (or the reverse),
    // or publish a version twice: every outcome and every order's versions are as scripted.
    let seen = outcomes(&ep, &codec, &t.outcomes).await;
    let events = event_versions(&ep, &codec, &t.events).await;
    check_script(&script, &seen, &events);
}

/// Fresh topics of one partition, the events topic (`events_small`) or the outcomes topic
/// taking records of at most `max_bytes` (`max.message.bytes`), and an admin client.
async fn topics_with_a_small_one(
    ep: &Endpoints,
    prefix: &str,
    events_small: bool,
    max_bytes: &str,
) -> (
    Topics,
    rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
) {
    use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
    let names = fresh_topics(ep, prefix, 1).await;
    let t = Topics {
        events: format!("{}-events", names.input),
        outcomes: format!("{}-outcomes", names.input),
        names,
    };
    let (small, other) = if events_small {
        (&t.events, &t.outcomes)
    } else {
        (&t.outcomes, &t.events)
    };
    create_topics(ep, &[other], 1).await;
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        eip_runtime::kafka::base_config(&ep.kafka())
            .create()
            .unwrap();
    let topic = NewTopic::new(small, 1, TopicReplication::Fixed(1))
        .set("retention.ms", "-1")
        .set("retention.bytes", "-1")
        .set("max.message.bytes", max_bytes);
    for r in admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
    (t, admin)
}

/// A command whose event the events topic can't take (its `max.message.bytes` is smaller) is
/// rejected `too_large` before anything changes: the order does not exist afterwards, so the
/// journal never holds a version the topic never got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_too_large_for_its_topic_is_rejected_and_changes_nothing() {
    let ep = endpoints();
    let (t, _admin) = topics_with_a_small_one(&ep, "orders-large", true, "16384").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = orders_config(&ep, &t, &dir.path().join("orders.db"));
    // Batches no larger than the topic takes, as its operator must set them.
    cfg.kafka
        .producer_properties
        .insert("batch.size".into(), "8192".into());
    let member = start(&cfg).await;
    let codec = codec(&ep);
    let sample = eip_schemas::types::samples::order_placed(1);
    let meta = |n: u32| eip_schemas::types::CommandMetadata {
        command_id: format!("big/c{n}"),
        correlation_id: "big".into(),
        causation_id: None,
        issued_at: 1,
        aggregate_id: "big".into(),
        expected_version: None,
    };
    let line = |i: usize| eip_schemas::types::OrderLine {
        sku: format!("sku-{i:040}"),
        quantity: 1,
        unit_price_cents: 100,
    };
    let place = |n: u32, lines: usize| {
        CommandRecord::Place(eip_schemas::types::PlaceOrder {
            metadata: meta(n),
            customer_id: "c-big".into(),
            lines: (0..lines).map(line).collect(),
            currency: "EUR".into(),
            shipping_address: sample.shipping_address.clone(),
        })
    };
    let commands = [
        place(1, 400),
        CommandRecord::AddLine(eip_schemas::types::AddOrderLine {
            metadata: meta(2),
            line: line(999),
        }),
        place(3, 2),
    ];
    let producer: rdkafka::producer::FutureProducer =
        eip_runtime::kafka::producer_config(&ep.kafka())
            .create()
            .unwrap();
    for c in &commands {
        let payload = c.avro(&codec).await.unwrap();
        producer
            .send(
                FutureRecord::to(&t.names.input)
                    .key("big")
                    .payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
    }
    wait_for(&ep, &t.outcomes, 3, WAIT).await;
    member.stop().await.unwrap();
    let seen = outcomes(&ep, &codec, &t.outcomes).await;
    let first = &seen["big/c1"][0];
    assert_eq!(first.reason_code.as_deref(), Some("too_large"), "{first:?}");
    assert!(
        first
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("max.message.bytes")),
        "{first:?}"
    );
    assert_eq!(
        seen["big/c2"][0].reason_code.as_deref(),
        Some("unknown_order"),
        "the refused placement changed nothing"
    );
    let third = &seen["big/c3"][0];
    assert!(third.accepted && third.version == 1, "{third:?}");
    assert_eq!(
        event_versions(&ep, &codec, &t.events).await["big"],
        vec![1],
        "one event, of the small placement"
    );
    assert!(read_all(&ep, &t.names.dlq).await.is_empty());
}

/// An output refused for good that the processor could not foresee (here an outcome larger
/// than its topic takes) stops eip-orders with the reason instead of keeping a state change
/// whose output never exists; once the topic is fixed, a restart publishes the outcome and the
/// journal and the topics agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_refused_for_good_stops_the_processor_and_keeps_no_state_change() {
    use rdkafka::admin::{AdminOptions, AlterConfig, ResourceSpecifier};
    let ep = endpoints();
    let (t, admin) = topics_with_a_small_one(&ep, "orders-refused", false, "2048").await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orders.db");
    let mut cfg = orders_config(&ep, &t, &db);
    cfg.kafka
        .producer_properties
        .insert("batch.size".into(), "1024".into());
    let codec = codec(&ep);
    // Ids of 1,000 bytes each are valid, and their outcome is over 2 KiB.
    let long = |c: char| c.to_string().repeat(1_000);
    let place = CommandRecord::Place(eip_schemas::types::PlaceOrder {
        metadata: eip_schemas::types::CommandMetadata {
            command_id: long('k'),
            correlation_id: long('r'),
            causation_id: None,
            issued_at: 1,
            aggregate_id: "o-1".into(),
            expected_version: None,
        },
        customer_id: "c-1".into(),
        lines: vec![eip_schemas::types::OrderLine {
            sku: "A".into(),
            quantity: 1,
            unit_price_cents: 1,
        }],
        currency: "EUR".into(),
        shipping_address: eip_schemas::types::samples::order_placed(1).shipping_address,
    });
    let producer: rdkafka::producer::FutureProducer =
        eip_runtime::kafka::producer_config(&ep.kafka())
            .create()
            .unwrap();
    let payload = place.avro(&codec).await.unwrap();
    producer
        .send(
            FutureRecord::to(&t.names.input)
                .key("o-1")
                .payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let member = start(&cfg).await;
    let stopped = tokio::time::timeout(WAIT, member.join()).await.unwrap();
    let reason = eip_schemas::chain(&stopped.unwrap_err());
    assert!(
        reason.contains("refused for good") && reason.contains("max.message.bytes"),
        "{reason}"
    );
    // Nothing of it was journaled, and nothing was dead-lettered.
    let conn = rusqlite::Connection::open(&db).unwrap();
    assert!(
        eip_store::journal::Journal::history(&conn, "o-1")
            .unwrap()
            .is_empty()
    );
    assert!(read_all(&ep, &t.names.dlq).await.is_empty());
    // The operator raises the topic's limit: a restart adopts the published event and sends
    // the command's outcome, and the journal holds the order.
    let alter = AlterConfig::new(ResourceSpecifier::Topic(&t.outcomes))
        .set("retention.ms", "-1")
        .set("retention.bytes", "-1")
        .set("max.message.bytes", "1048576");
    for r in admin
        .alter_configs([&alter], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
    cfg.kafka.producer_properties.remove("batch.size");
    let member = start(&cfg).await;
    wait_for(&ep, &t.outcomes, 1, WAIT).await;
    member.stop().await.unwrap();
    let seen = outcomes(&ep, &codec, &t.outcomes).await;
    assert!(seen[&long('k')].iter().any(|o| o.accepted && !o.duplicate));
    assert_eq!(event_versions(&ep, &codec, &t.events).await["o-1"], vec![1]);
    assert_eq!(
        eip_store::journal::Journal::history(&conn, "o-1")
            .unwrap()
            .len(),
        1
    );
}
