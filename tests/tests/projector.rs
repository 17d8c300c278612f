//! The read side against the real local stack: `eip-orders` and `eip-projector` as separate
//! processes, each killed with SIGKILL mid-run and restarted, and the views checked row by row
//! against what the command scripts say, then served by the gateway's query API.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: fail loudly

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use eip_store::view_sqlite::Reader;
use eip_store::view_store::{SqliteViews, ViewStore};
use eip_tests::cqrs::{Pair, eipctl_run, eipctl_run_owned, env, running_pair, stack, start_orders};
use eip_tests::orders::{WAIT, check_script, event_versions, outcomes, produce_script};
use eip_tests::views::{caught_up, check_views, outcomes_in};
use eip_tests::*;
use serde_json::Value as Json;

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_are_exact_after_kill_9s_of_both_processors_and_the_query_api_serves_them() {
    let ep = endpoints();
    let names = fresh_topics(&ep, "views", 3).await;
    let events = format!("{}-events", names.input);
    let outcomes_topic = format!("{}-outcomes", names.input);
    let (events_dlq, outcomes_dlq) = (format!("{events}.dlq"), format!("{outcomes_topic}.dlq"));
    create_topics(
        &ep,
        &[&events, &outcomes_topic, &events_dlq, &outcomes_dlq],
        3,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (orders_db, views_db) = (dir.path().join("orders.db"), dir.path().join("views.db"));
    let codec = codec(&ep);
    let script = produce_script(&ep, &codec, &names.input, "view", 2_400, 4).await;

    let common = |group: &str| {
        vec![
            ("EIP__KAFKA__BROKERS", ep.brokers.clone()),
            ("EIP__KAFKA__GROUP_ID", group.to_string()),
            ("EIP__KAFKA__CLIENT_ID", group.to_string()),
            ("EIP__REGISTRY__URL", ep.registry.clone()),
            (
                "EIP__TELEMETRY__LISTEN",
                format!("127.0.0.1:{}", free_port()),
            ),
            ("EIP__PROCESSOR__HOLD_COMMIT_OPEN", "150ms".to_string()),
        ]
    };
    let mut orders_env = common(&names.group);
    orders_env.extend([
        ("EIP__PIPELINE__INPUTS", format!("[\"{}\"]", names.input)),
        ("EIP__PROCESSOR__DB", orders_db.display().to_string()),
        ("EIP__PROCESSOR__EVENTS_TOPIC", events.clone()),
        ("EIP__PROCESSOR__OUTCOMES_TOPIC", outcomes_topic.clone()),
        ("EIP__PROCESSOR__SNAPSHOT_EVERY", "2".to_string()),
    ]);
    let projector_group = unique("g-views");
    let mut projector_env = common(&projector_group);
    projector_env.extend([
        (
            "EIP__PIPELINE__INPUTS",
            format!("[\"{events}\", \"{outcomes_topic}\"]"),
        ),
        ("EIP__PROCESSOR__DB", views_db.display().to_string()),
    ]);
    let (orders_env, projector_env) = (env(&orders_env), env(&projector_env));

    // Both run; the projector is killed twice inside a group commit (its rows written, not
    // committed), the orders processor once, and each restarts.
    let marker = "group commit holding its transaction open";
    let mut orders = ChildProcess::spawn(&bin("eip-orders"), &[], &orders_env);
    let mut projector = ChildProcess::spawn(&bin("eip-projector"), &[], &projector_env);
    let mut logs = String::new();
    for round in 0..2 {
        eventually("a projector group commit in progress", WAIT, || async {
            (projector.log_text().matches(marker).count() >= 2).then_some(())
        })
        .await;
        projector.signal("KILL");
        assert!(!projector.wait(Duration::from_secs(30)).await.success());
        logs.push_str(&projector.log_text());
        if round == 0 {
            orders.signal("KILL");
            assert!(!orders.wait(Duration::from_secs(30)).await.success());
            logs.push_str(&orders.log_text());
            orders = ChildProcess::spawn(&bin("eip-orders"), &[], &orders_env);
        }
        projector = ChildProcess::spawn(&bin("eip-projector"), &[], &projector_env);
    }
    let decided = script.outcomes.len();
    let deadline = Instant::now() + WAIT;
    while !caught_up(&views_db, &[&script]) {
        assert!(
            Instant::now() < deadline,
            "the views are not caught up after {WAIT:?}: {} of {decided} outcomes\n\
             projector log tail:\n{}\norders log tail:\n{}",
            outcomes_in(&views_db),
            tail(&projector.log_text(), 40),
            tail(&orders.log_text(), 40),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Dead letters are at least once: a kill between the DLQ write and the offset commit
    // sends a poison command again. Each source record is there, and nothing else.
    let header = |r: &ReadRecord, name: &str| {
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_ref())
            .map(|v| String::from_utf8_lossy(v).to_string())
            .unwrap_or_default()
    };
    let poison: BTreeSet<(String, String)> = read_all(&ep, &names.dlq)
        .await
        .iter()
        .map(|r| {
            (
                header(r, eip_runtime::dlq::SOURCE_PARTITION),
                header(r, eip_runtime::dlq::SOURCE_OFFSET),
            )
        })
        .collect();
    assert_eq!(
        poison.len() as u64,
        script.poison,
        "the poison commands went to the DLQ"
    );

    // The write side published every version once...
    let published = outcomes(&ep, &codec, &outcomes_topic).await;
    let versions = event_versions(&ep, &codec, &events).await;
    check_script(&script, &published, &versions);

    // ...and the views say exactly what the scripts say.
    check_views(&SqliteViews::open(&views_db, 2).unwrap(), &script).await;
    assert_eq!(outcomes_in(&views_db), decided, "one status per command id");
    assert!(
        logs.matches(marker).count() >= 4,
        "the kills landed inside held group commits"
    );

    // The gateway's query API serves the same views.
    let listen = format!("127.0.0.1:{}", free_port());
    let gateway_env = env(&[
        ("EIP__KAFKA__BROKERS", ep.brokers.clone()),
        ("EIP__REGISTRY__URL", ep.registry.clone()),
        ("EIP__GATEWAY__LISTEN", listen.clone()),
        (
            "EIP__GATEWAY__ROUTES",
            format!("{{\"eip.orders.PlaceOrder\"=\"{}\"}}", names.input),
        ),
        ("EIP__GATEWAY__VIEWS_DB", views_db.display().to_string()),
    ]);
    let mut gateway = ChildProcess::spawn(&bin("gateway"), &[], &gateway_env);
    let (id, want) = script
        .finals
        .iter()
        .find(|(_, f)| f.status == "confirmed")
        .unwrap();
    let (status, body) = eventually("the gateway to answer", WAIT, || async {
        http_get(&listen, &format!("/v1/orders/{id}")).await
    })
    .await;
    assert_eq!(status, 200, "{body}");
    let order: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(order["status"], "confirmed");
    assert_eq!(order["customer_id"], want.customer.as_str());
    let command = format!("{id}/c1");
    let path = format!("/v1/commands/{}", command.replace('/', "%2F"));
    let (status, body) = http_get(&listen, &path).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Json>(&body).unwrap()["accepted"],
        true
    );
    let (status, _) = http_get(&listen, "/v1/orders/no-such-order").await.unwrap();
    assert_eq!(status, 404);
    gateway.signal("TERM");
    gateway.wait(Duration::from_secs(30)).await;
    orders.signal("TERM");
    projector.signal("TERM");
    assert!(orders.wait(Duration::from_secs(60)).await.success());
    assert!(projector.wait(Duration::from_secs(60)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_under_load_switches_atomically_and_no_query_fails_or_sees_a_half_built_view() {
    let ep = endpoints();
    let codec = codec(&ep);
    let Pair {
        stack: s,
        orders,
        projector,
        first,
    } = running_pair(&ep, &codec, "rebuild", "rb1", 1_200).await;
    let db = s.views_db.display().to_string();

    // A rebuild that was killed leaves its version marked as building: a new one is refused
    // with the way out named, and `projection cancel` discards it.
    {
        let mut conn = eip_store::sqlite::connect(&s.views_db).unwrap();
        let view = eip_store::view_rebuild::find_view("order_summary").unwrap();
        assert_eq!(
            eip_store::view_rebuild::begin_rebuild(&mut conn, view)
                .unwrap()
                .version,
            2
        );
    }
    let (code, out) = eipctl_run_owned(&ep, &s.rebuild_args("order_summary")).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("eipctl projection cancel order_summary"),
        "{out}"
    );
    let (code, out) =
        eipctl_run(&ep, &["projection", "cancel", "order_summary", "--db", &db]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("discarded the rebuild of version 2"), "{out}");

    // Queries run all along: none fails, and the number of orders they see never drops (a
    // half-built view would show fewer).
    let stop = tokio_util::sync::CancellationToken::new();
    let readers = {
        let (stop, path) = (stop.clone(), s.views_db.clone());
        let sample: Vec<String> = first.finals.keys().take(50).cloned().collect();
        tokio::task::spawn_blocking(move || {
            let reader = Reader::open(&path, 2).unwrap();
            let (mut queries, mut last) = (0u64, 0i64);
            while !stop.is_cancelled() {
                let seen: i64 = reader
                    .with(|c| c.query_row("SELECT COUNT(*) FROM order_summary", [], |r| r.get(0)))
                    .expect("a query failed during the rebuild");
                assert!(seen >= last, "the view went from {last} orders to {seen}");
                last = seen;
                let id = &sample[queries as usize % sample.len()];
                let order = reader.order(id).expect("a query failed during the rebuild");
                assert!(order.is_some(), "{id} vanished during the rebuild");
                queries += 2;
            }
            queries
        })
    };
    // Load: more commands while the rebuild runs.
    let load = {
        let (ep, codec, topic) = (ep.clone(), codec.clone(), s.names.input.clone());
        tokio::spawn(async move { produce_script(&ep, &codec, &topic, "rb2", 1_200, 0).await })
    };
    let (code, out) = eipctl_run_owned(&ep, &s.rebuild_args("order_summary")).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("switched readers from version 1 to 2"),
        "{out}"
    );
    assert!(
        out.contains("% ") && out.contains("/s, ETA"),
        "a progress bar: {out}"
    );
    let second = load.await.unwrap();
    eventually("the second script in the views", WAIT, || async {
        caught_up(&s.views_db, &[&first, &second]).then_some(())
    })
    .await;
    stop.cancel();
    let queries = readers.await.unwrap();
    assert!(queries > 100, "queries ran during the rebuild: {queries}");

    // The projector writes to version 2 since the switch: every view is exact.
    let mut both = first;
    both.absorb(second);
    check_views(&SqliteViews::open(&s.views_db, 2).unwrap(), &both).await;
    let (_, out) = eipctl_run(&ep, &["projection", "status", "--db", &db]).await;
    assert!(
        out.contains("order_summary        live 2 building - stored [1, 2]"),
        "{out}"
    );
    let (code, out) = eipctl_run(
        &ep,
        &[
            "projection",
            "drop",
            "order_summary",
            "--version",
            "2",
            "--db",
            &db,
        ],
    )
    .await;
    assert_eq!(code, Some(1), "the live version is never dropped: {out}");
    assert!(out.contains("it is the live version"), "{out}");
    let (code, out) = eipctl_run(
        &ep,
        &[
            "projection",
            "drop",
            "order_summary",
            "--version",
            "1",
            "--db",
            &db,
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{out}");

    // eipctl answers what the API answers, and shows an order at any version.
    let (code, out) = eipctl_run(&ep, &["query", "order", "rb2-000000", "--db", &db]).await;
    assert_eq!(code, Some(0), "{out}");
    let json: Json = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (json["status"].as_str(), json["version"].as_i64()),
        (Some("confirmed"), Some(4))
    );
    let (code, out) = eipctl_run(&ep, &["query", "order", "nope", "--db", &db]).await;
    assert_eq!(code, Some(1));
    assert!(out.contains("no order \"nope\" in the views"), "{out}");
    let orders_db = s.orders_db.display().to_string();
    let (code, out) = eipctl_run(
        &ep,
        &[
            "aggregate",
            "state",
            "rb2-000000",
            "--at-version",
            "2",
            "--db",
            &orders_db,
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    let state: Json = serde_json::from_str(out.trim()).unwrap();
    // Story 0: placed with A and B, then C added: three lines at version 2, still open.
    assert_eq!(state["version"], 2);
    assert_eq!(state["status"], "Open");
    assert_eq!(state["lines"].as_array().map(Vec::len), Some(3));
    let (code, out) = eipctl_run(
        &ep,
        &["aggregate", "history", "rb2-000000", "--db", &orders_db],
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with('{')).count(),
        4,
        "{out}"
    );
    orders.stop().await.unwrap();
    projector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_cql_store_the_projector_fills_the_same_views() {
    use eip_store::view_scylla::{ScyllaSettings, ScyllaViews};
    let ep = endpoints();
    let s = stack(&ep, "cqlviews").await;
    let codec = codec(&ep);
    let nodes: Vec<String> = std::env::var("EIP_CQL_NODES")
        .unwrap_or_else(|_| "127.0.0.1:19042".into())
        .split(',')
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    let keyspace = unique("views").replace(['-', '.'], "_");
    let orders = start_orders(&ep, &s).await;
    let mut cfg = config(
        &ep,
        &s.events,
        &unique("g-cql"),
        eip_projector::ProjectorConfig {
            store: eip_projector::StoreKind::Cql,
            cql_nodes: nodes.clone(),
            keyspace: keyspace.clone(),
            ..Default::default()
        },
    );
    cfg.pipeline.inputs = vec![s.events.clone(), s.outcomes.clone()];
    let projector =
        InProcess::start_stateful(cfg.clone(), eip_projector::Projector::new(&cfg).unwrap()).await;
    // An event whose order id no store can key (produced by something other than eip-orders,
    // which refuses such a command): the CQL server refuses even to read it, and that must
    // dead-letter the event, not stop the projector at every start.
    let mut keyless = eip_schemas::types::samples::order_placed(1);
    keyless.metadata.aggregate_id = String::new();
    keyless.metadata.aggregate_version = 1;
    let producer: rdkafka::producer::FutureProducer =
        eip_runtime::kafka::producer_config(&ep.kafka())
            .create()
            .unwrap();
    let payload = codec.encode(&keyless).await.unwrap();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&s.events)
                .key("")
                .payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let script = produce_script(&ep, &codec, &s.names.input, "cql", 600, 0).await;
    let views = ScyllaViews::connect(&ScyllaSettings {
        keyspace: keyspace.clone(),
        ..ScyllaSettings::new(nodes.clone())
    })
    .await
    .unwrap();
    eventually("every order and command in the views", WAIT, || async {
        for (id, v) in &script.versions {
            let seen = views
                .order(id)
                .await
                .ok()
                .flatten()
                .map_or(0, |o| o.version);
            if seen != *v {
                return None;
            }
        }
        for c in script.outcomes.keys() {
            views.command(c).await.ok().flatten()?;
        }
        Some(())
    })
    .await;
    let events_dlq = format!("{}.dlq", s.events);
    wait_for(&ep, &events_dlq, 1, WAIT).await;
    let reasons: Vec<String> = read_all(&ep, &events_dlq)
        .await
        .iter()
        .flat_map(|r| r.headers.iter())
        .filter(|(k, _)| k == eip_runtime::dlq::REASON)
        .filter_map(|(_, v)| v.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()))
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("a key of order_summary is empty")),
        "{reasons:?}"
    );
    orders.stop().await.unwrap();
    projector.stop().await.unwrap();
    check_views(&views, &script).await;

    // The gateway's query API serves the same views from the CQL cluster.
    let mut gw = eip_gateway::GatewayConfig::default();
    gw.kafka.brokers = ep.brokers.clone();
    gw.registry.url = ep.registry.clone();
    gw.gateway.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    gw.gateway.routes = [("eip.orders.PlaceOrder".to_string(), s.names.input.clone())].into();
    gw.gateway.views_cql_nodes = nodes.clone();
    gw.gateway.views_keyspace = keyspace.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, task) = eip_gateway::serve(gw, async {
        let _ = rx.await;
    })
    .await
    .unwrap();
    let addr = addr.to_string();
    let (id, want) = script
        .finals
        .iter()
        .find(|(_, f)| f.status == "confirmed")
        .unwrap();
    let (status, body) = http_get(&addr, &format!("/v1/orders/{id}")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let order: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(order["status"], "confirmed");
    assert_eq!(order["version"], script.versions[id]);
    let (status, body) = http_get(
        &addr,
        &format!("/v1/customers/{}/orders?limit=1", want.customer),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let page: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    let path = format!("/v1/commands/{}", format!("{id}/c1").replace('/', "%2F"));
    let (status, body) = http_get(&addr, &path).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Json>(&body).unwrap()["accepted"],
        true
    );
    let (status, _) = http_get(&addr, "/v1/orders/no-such-order").await.unwrap();
    assert_eq!(status, 404);
    let _ = tx.send(());
    let _ = task.await;

    // So does `eipctl query`; a keyspace that does not exist is refused, never created.
    let cql_nodes = nodes.join(",");
    let query = |args: Vec<&str>, keyspace: &str| {
        let mut all = vec!["query"];
        all.extend(args);
        let keyspace = keyspace.to_string();
        let (ep, cql_nodes) = (ep.clone(), cql_nodes.clone());
        let all: Vec<String> = all.into_iter().map(String::from).collect();
        async move {
            let mut args: Vec<&str> = all.iter().map(String::as_str).collect();
            args.extend(["--cql-nodes", &cql_nodes, "--keyspace", &keyspace]);
            eipctl_run(&ep, &args).await
        }
    };
    let (code, out) = query(vec!["order", id], &keyspace).await;
    assert_eq!(code, Some(0), "{out}");
    let order: Json = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (order["status"].as_str(), order["version"].as_i64()),
        (Some("confirmed"), Some(script.versions[id]))
    );
    let (code, out) = query(vec!["customer", &want.customer, "--limit", "1"], &keyspace).await;
    assert_eq!(code, Some(0), "{out}");
    let page: Json = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{out}");
    let missing = unique("nokeyspace").replace(['-', '.'], "_");
    let (code, out) = query(vec!["order", id], &missing).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("has no keyspace \"{missing}\"")),
        "{out}"
    );
    views.drop_keyspace().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_orders_through_the_gateway_the_router_and_avro_producers_give_exact_views() {
    let ep = endpoints();
    let s = stack(&ep, "e2e").await;
    let legacy = format!("{}-legacy.xml", s.names.input);
    let fulfilment = format!("{}-fulfilment", s.names.input);
    let cancelled = format!("{}-cancelled", s.names.input);
    create_topics(
        &ep,
        &[&legacy, &format!("{legacy}.dlq"), &fulfilment, &cancelled],
        3,
    )
    .await;
    let rules = s.views_db.with_file_name("rules.toml");
    std::fs::write(
        &rules,
        format!(
            r#"version = "e2e"
mode = "first-match"
[[sources]]
topic = "{legacy}"
format = "xml"
type = "eip.orders.PlaceOrder"
[[rules]]
name = "legacy-placements"
match.types = ["eip.orders.PlaceOrder"]
then.to = ["{commands}"]
[[rules]]
name = "confirmed"
match.types = ["eip.orders.OrderConfirmed"]
then.to = ["{fulfilment}"]
[[rules]]
name = "cancelled"
match.types = ["eip.orders.OrderCancelled"]
then.to = ["{cancelled}"]
"#,
            commands = s.names.input
        ),
    )
    .unwrap();
    let base = |group: &str| {
        vec![
            ("EIP__KAFKA__BROKERS", ep.brokers.clone()),
            ("EIP__KAFKA__GROUP_ID", group.to_string()),
            ("EIP__KAFKA__CLIENT_ID", group.to_string()),
            ("EIP__REGISTRY__URL", ep.registry.clone()),
            (
                "EIP__TELEMETRY__LISTEN",
                format!("127.0.0.1:{}", free_port()),
            ),
        ]
    };
    let mut orders_env = base(&s.names.group);
    orders_env.extend([
        ("EIP__PIPELINE__INPUTS", format!("[\"{}\"]", s.names.input)),
        ("EIP__PROCESSOR__DB", s.orders_db.display().to_string()),
        ("EIP__PROCESSOR__EVENTS_TOPIC", s.events.clone()),
        ("EIP__PROCESSOR__OUTCOMES_TOPIC", s.outcomes.clone()),
    ]);
    let mut projector_env = base(&unique("g-e2e-proj"));
    projector_env.extend([
        (
            "EIP__PIPELINE__INPUTS",
            format!("[\"{}\", \"{}\"]", s.events, s.outcomes),
        ),
        ("EIP__PROCESSOR__DB", s.views_db.display().to_string()),
    ]);
    let mut router_env = base(&unique("g-e2e-router"));
    router_env.extend([
        (
            "EIP__PIPELINE__INPUTS",
            format!("[\"{legacy}\", \"{}\"]", s.events),
        ),
        ("EIP__PIPELINE__CREATE_TOPICS", "true".to_string()),
        ("EIP__PROCESSOR__RULES", rules.display().to_string()),
    ]);
    let listen = format!("127.0.0.1:{}", free_port());
    let routes: Vec<String> = [
        "PlaceOrder",
        "AddOrderLine",
        "RemoveOrderLine",
        "ConfirmOrder",
        "CancelOrder",
    ]
    .iter()
    .map(|t| format!("\"eip.orders.{t}\"=\"{}\"", s.names.input))
    .collect();
    let gateway_env = vec![
        ("EIP__KAFKA__BROKERS", ep.brokers.clone()),
        ("EIP__REGISTRY__URL", ep.registry.clone()),
        ("EIP__GATEWAY__LISTEN", listen.clone()),
        ("EIP__GATEWAY__ROUTES", format!("{{{}}}", routes.join(","))),
        ("EIP__GATEWAY__VIEWS_DB", s.views_db.display().to_string()),
    ];
    let mut children = vec![
        ChildProcess::spawn(&bin("eip-orders"), &[], &env(&orders_env)),
        ChildProcess::spawn(&bin("eip-projector"), &[], &env(&projector_env)),
        ChildProcess::spawn(&bin("router"), &[], &env(&router_env)),
        ChildProcess::spawn(&bin("gateway"), &[], &env(&gateway_env)),
    ];
    eventually("the gateway to be ready", WAIT, || async {
        http_get(&listen, "/readyz")
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;

    let codec = codec(&ep);
    let targets = eipctl::orders::Targets {
        gateway: format!("http://{listen}"),
        commands: s.names.input.clone(),
        legacy_xml: legacy.clone(),
    };
    let sent = eipctl::orders::send(&ep, &codec, &targets, "e2e", 10_000, 5)
        .await
        .unwrap();
    let script = &sent.script;
    // Every way in carried a share, and the edge refused the malformed requests with reasons.
    assert_eq!(sent.per_channel.len(), 4, "{:?}", sent.per_channel);
    let statuses: Vec<u16> = sent.refused.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [400, 400, 400, 404], "{:?}", sent.refused);
    assert!(sent.refused.iter().all(|(_, reason)| !reason.is_empty()));
    // Past the wait, the row-by-row check below says exactly what is missing or wrong.
    let deadline = Instant::now() + WAIT;
    while !caught_up(&s.views_db, &[script]) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check_views(&SqliteViews::open(&s.views_db, 2).unwrap(), script).await;
    assert_eq!(outcomes_in(&s.views_db), script.outcomes.len());
    // The router routed the events: one record per confirmed and per cancelled order.
    let count = |status: &str| {
        script
            .finals
            .values()
            .filter(|f| f.status == status)
            .count()
    };
    let confirmed = count("confirmed") as u64;
    let cancelled_n = count("cancelled") as u64;
    wait_for(&ep, &fulfilment, confirmed, WAIT).await;
    wait_for(&ep, &cancelled, cancelled_n, WAIT).await;
    assert_eq!(read_all(&ep, &fulfilment).await.len() as u64, confirmed);
    assert_eq!(read_all(&ep, &cancelled).await.len() as u64, cancelled_n);
    assert!(read_all(&ep, &s.names.dlq).await.len() as u64 >= script.poison);
    for child in &mut children {
        child.signal("TERM");
    }
    for mut child in children {
        assert!(
            child.wait(Duration::from_secs(60)).await.success(),
            "{}",
            child.log_text()
        );
    }
}
