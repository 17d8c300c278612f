//! The read side against the real local stack: `eip-orders` and `eip-projector` as separate
//! processes, each killed with SIGKILL mid-run and restarted, and the views checked row by row
//! against what the command scripts say, then served by the gateway's query API.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: fail loudly

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use eip_store::view_sqlite::Reader;
use eip_tests::orders::{UNIT_PRICE, WAIT, check_script, event_versions, outcomes, produce_script};
use eip_tests::*;
use rusqlite::Connection;
use serde_json::Value as Json;

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// How many command outcomes the views hold.
fn outcomes_in(db: &Path) -> usize {
    let Ok(conn) = Connection::open(db) else {
        return 0;
    };
    conn.query_row("SELECT COUNT(*) FROM command_status", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_or(0, |n| n as usize)
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
    eventually("every outcome in the views", WAIT, || async {
        (outcomes_in(&views_db) >= decided).then_some(())
    })
    .await;
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
    let reader = Reader::open(&views_db, 1).unwrap();
    let mut by_customer: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut sold: BTreeMap<String, i64> = BTreeMap::new();
    for (id, version) in &script.versions {
        let view = reader.order(id).unwrap();
        let Some(want) = script.finals.get(id) else {
            assert_eq!(view, None, "{id} was never placed");
            continue;
        };
        let view = view.unwrap_or_else(|| panic!("{id} is missing from the views"));
        assert_eq!(view.version, *version, "{id}");
        assert_eq!(view.status, want.status, "{id}");
        let lines: BTreeMap<String, i64> = view
            .lines
            .iter()
            .map(|l| (l.sku.clone(), l.quantity))
            .collect();
        assert_eq!(lines, want.lines, "{id}");
        let units: i64 = want.lines.values().sum();
        assert_eq!((view.units, view.total_cents), (units, units * UNIT_PRICE));
        assert_eq!(view.customer_id, want.customer);
        assert_eq!(
            view.confirmed_day.is_some(),
            want.status == "confirmed",
            "{id}"
        );
        by_customer
            .entry(want.customer.clone())
            .or_default()
            .insert(id.clone());
        if want.status == "confirmed" {
            for (sku, q) in &want.lines {
                *sold.entry(sku.clone()).or_default() += q;
            }
        }
    }
    for (customer, want) in &by_customer {
        let mut got = BTreeSet::new();
        let mut after = None;
        loop {
            let page = reader.customer_orders(customer, after.as_ref(), 7).unwrap();
            let Some(last) = page.last() else { break };
            after = Some((last.placed_at, last.order_id.clone()));
            for o in page {
                assert!(got.insert(o.order_id), "an order on two pages");
            }
        }
        assert_eq!(&got, want, "{customer}'s orders");
    }
    let conn = Connection::open(&views_db).unwrap();
    let mut stmt = conn
        .prepare("SELECT sku, SUM(units), SUM(revenue_cents) FROM product_sales_daily GROUP BY sku")
        .unwrap();
    let stored: BTreeMap<String, (i64, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let want: BTreeMap<String, (i64, i64)> = sold
        .iter()
        .map(|(s, u)| (s.clone(), (*u, u * UNIT_PRICE)))
        .collect();
    assert_eq!(stored, want, "units and revenue per SKU");
    for (command, expected) in &script.outcomes {
        let status = reader
            .command(command)
            .unwrap()
            .unwrap_or_else(|| panic!("no status for {command}"));
        match expected {
            Ok(()) => assert!(status.accepted, "{command}: {status:?}"),
            Err(code) => assert_eq!(status.reason_code.as_deref(), Some(*code), "{command}"),
        }
    }
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
