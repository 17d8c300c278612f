//! The order-fulfilment saga end to end on the real stack: eip-orders, the nine participants
//! and the monitor, with failures injected at every step. What the test checks it computes
//! itself from the orders it placed and the statuses the monitor reports: stock, points and
//! payments net back exactly to what the completed orders imply, and every order ends
//! completed or cancelled in the order events.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use eip_tests::cqrs::eipctl_run;
use eip_tests::saga::{
    Inject, OPERATOR_TOKEN, ROLES, SagaRig, TestOrder, final_order_events, orders,
    place_and_cancel, place_and_confirm,
};
use eip_tests::*;

const WAIT: Duration = Duration::from_secs(120);

/// Waits until the monitor reports every one of `n` sagas final; panics with the logs if not.
async fn all_final(rig: &SagaRig, n: i64) -> BTreeMap<String, i64> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(c) = rig.counts().await {
            let done = c.get("completed").copied().unwrap_or(0)
                + c.get("compensated").copied().unwrap_or(0);
            if done >= n {
                assert_eq!(done, n, "more sagas than orders confirmed: {c:?}");
                return c;
            }
            if std::time::Instant::now() > deadline {
                panic!("sagas not final in time: {c:?}\n{}", rig.logs());
            }
        } else if std::time::Instant::now() > deadline {
            panic!("the monitor does not answer\n{}", rig.logs());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn rows(db: &std::path::Path, sql: &str) -> Vec<(String, i64, i64)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Checks the participants' resources against the completed orders.
fn resources_net_back(rig: &SagaRig, placed: &[TestOrder], completed: &BTreeSet<String>) {
    // Stock: every SKU holds exactly the units of the completed orders.
    let mut held: BTreeMap<String, i64> = BTreeMap::new();
    for o in placed.iter().filter(|o| completed.contains(&o.id)) {
        for (sku, q, _) in &o.lines {
            *held.entry(sku.clone()).or_default() += i64::from(*q);
        }
    }
    let stock: BTreeMap<String, (i64, i64)> = rows(
        &rig.db("inventory"),
        "SELECT sku, available, reserved FROM stock",
    )
    .into_iter()
    .map(|(sku, available, reserved)| (sku, (available, reserved)))
    .collect();
    for (sku, want) in &held {
        assert_eq!(
            stock.get(sku),
            Some(&(100_000 - want, *want)),
            "stock of {sku}"
        );
    }
    for (sku, (available, reserved)) in &stock {
        if !held.contains_key(sku) {
            assert_eq!((*available, *reserved), (100_000, 0), "stock of {sku}");
        }
    }
    // Points: each customer is down exactly the points of their completed orders.
    let mut spent: BTreeMap<String, i64> = BTreeMap::new();
    for o in placed.iter().filter(|o| completed.contains(&o.id)) {
        *spent.entry(o.customer.clone()).or_default() += o.total() / 1_000;
    }
    let balances: BTreeMap<String, i64> = rows(
        &rig.db("loyalty"),
        "SELECT customer_id, balance, 0 FROM points",
    )
    .into_iter()
    .map(|(customer, balance, _)| (customer, balance))
    .collect();
    for (customer, points) in spent.iter().filter(|(_, p)| **p > 0) {
        assert!(
            balances.contains_key(customer),
            "{customer} redeemed {points} points: no balance row"
        );
    }
    for (customer, balance) in &balances {
        let want = 100_000 - spent.get(customer).copied().unwrap_or(0);
        assert_eq!(*balance, want, "points of {customer}");
    }
    // Payments: a completed order is captured in full and not refunded; any other has
    // nothing charged (refunded in full, or never captured) and its authorization voided.
    let totals: BTreeMap<&str, i64> = placed.iter().map(|o| (o.id.as_str(), o.total())).collect();
    let conn = rusqlite::Connection::open(rig.db("payments")).unwrap();
    let mut stmt = conn
        .prepare("SELECT order_id, authorized_cents, captured_cents, refunded_cents, voided FROM payments")
        .unwrap();
    let payments: Vec<(String, i64, i64, i64, bool)> = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let paid: BTreeSet<&str> = payments.iter().map(|p| p.0.as_str()).collect();
    for id in completed {
        assert!(paid.contains(id.as_str()), "completed {id} has no payment");
    }
    for (id, authorized, captured, refunded, voided) in payments {
        let total = totals[id.as_str()];
        assert_eq!(authorized, total, "{id}");
        if completed.contains(&id) {
            assert_eq!((captured, refunded, voided), (total, 0, false), "{id}");
        } else {
            assert_eq!(captured - refunded, 0, "{id} is charged");
            assert!(voided, "{id}'s authorization is not voided");
        }
    }
}

/// Every one of `placed` ends completed or compensated, none stuck, with failures at
/// several steps; resources net back; the order events end completed or cancelled. Returns
/// the completed ones.
/// The CQRS projector on the rig's orders topics and the stock levels the inventory
/// participant publishes: the inventory-levels view.
async fn levels_projector(ep: &Endpoints, rig: &SagaRig) -> InProcess {
    let inputs = vec![
        rig.stack.events.clone(),
        rig.stack.outcomes.clone(),
        rig.levels.clone(),
    ];
    eip_tests::cqrs::start_projector_on(ep, &rig.stack, inputs).await
}

/// Waits until the inventory-levels view shows, SKU by SKU, what the participant's own store
/// holds; returns those rows.
async fn view_matches_the_stock(rig: &SagaRig) -> Vec<(String, i64, i64)> {
    let sql = "SELECT sku, available, reserved FROM stock ORDER BY sku";
    let stock = rows(&rig.db("inventory"), sql);
    assert!(!stock.is_empty());
    let sql = "SELECT sku, available, reserved FROM inventory_levels ORDER BY sku";
    eventually("the inventory-levels view", WAIT, || async {
        (rows(&rig.stack.views_db, sql) == stock).then_some(())
    })
    .await;
    stock
}

async fn check_outcome(
    rig: &SagaRig,
    ep: &Endpoints,
    placed: &[TestOrder],
    min_failed_steps: usize,
) -> BTreeSet<String> {
    let codec = codec(ep);
    let counts = all_final(rig, placed.len() as i64).await;
    assert_eq!(counts.get("stuck").copied().unwrap_or(0), 0);
    let completed: BTreeSet<String> = rig
        .sagas("completed")
        .await
        .iter()
        .map(|s| s["saga_id"].as_str().unwrap().to_string())
        .collect();
    let compensated = rig.sagas("compensated").await;
    assert_eq!(completed.len() + compensated.len(), placed.len());
    assert!(
        !completed.is_empty() && !compensated.is_empty(),
        "{counts:?}"
    );
    let failed_steps: BTreeSet<&str> = compensated
        .iter()
        .map(|s| s["failed_step"].as_str().unwrap())
        .collect();
    assert!(failed_steps.len() >= min_failed_steps, "{failed_steps:?}");
    for s in &compensated {
        assert_eq!(s["failure_code"], "injected", "{s}");
        assert!(s["flags"].as_array().unwrap().is_empty(), "{s}");
    }
    for s in rig.sagas("completed").await {
        assert!(s["flags"].as_array().unwrap().is_empty(), "{s}");
    }
    totals_match_the_listed_sagas(rig, &compensated, completed.len()).await;
    resources_net_back(rig, placed, &completed);
    let finals = final_order_events(ep, &codec, &rig.stack.events).await;
    for o in placed {
        let want = if completed.contains(&o.id) {
            "completed"
        } else {
            "cancelled"
        };
        assert_eq!(
            finals.get(&o.id).map(String::as_str),
            Some(want),
            "{}",
            o.id
        );
    }
    completed
}

/// The totals the monitor keeps per partition (`/sagas/stats`) against the sagas it lists
/// one by one: the same counts per status, and the same failures by step and code.
async fn totals_match_the_listed_sagas(
    rig: &SagaRig,
    compensated: &[serde_json::Value],
    completed: usize,
) {
    let stats = rig.api("/sagas/stats").await.unwrap();
    assert_eq!(
        stats["counts"]["completed"].as_i64(),
        Some(completed as i64),
        "{stats}"
    );
    assert_eq!(
        stats["counts"]["compensated"].as_i64(),
        Some(compensated.len() as i64),
        "{stats}"
    );
    let mut listed: BTreeMap<(String, String), i64> = BTreeMap::new();
    for s in compensated {
        let key = (
            s["failed_step"].as_str().unwrap().to_string(),
            s["failure_code"].as_str().unwrap_or_default().to_string(),
        );
        *listed.entry(key).or_default() += 1;
    }
    let mut totals: BTreeMap<(String, String), i64> = BTreeMap::new();
    for f in stats["failures"].as_array().unwrap() {
        totals.insert(
            (
                f["step"].as_str().unwrap().to_string(),
                f["code"].as_str().unwrap().to_string(),
            ),
            f["sagas"].as_i64().unwrap(),
        );
    }
    assert_eq!(totals, listed, "{stats}");
}

fn everywhere(fail_rate: f64) -> Vec<Inject> {
    ROLES
        .iter()
        .map(|role| Inject {
            role,
            fail_rate,
            latency: Duration::ZERO,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_saga_ends_completed_or_compensated_and_resources_net_back() {
    init_logs();
    let ep = endpoints();
    register(&ep).await;
    let codec = codec(&ep);
    // Failures injected at every participant, so each step fails somewhere.
    let mut rig = SagaRig::new(&ep, "saga-e2e", "60s", "60s", everywhere(0.06)).await;
    rig.start_participants();
    rig.start_monitor();
    let projector = levels_projector(&ep, &rig).await;
    let placed = orders(&rig.stack.names.input, 120);
    // Orders cancelled before they are confirmed start no saga, though their
    // OrderCancelled is the saga's end event.
    let never = orders(&format!("{}-never", rig.stack.names.input), 10);
    place_and_cancel(&ep, &codec, &rig.stack.names.input, &never).await;
    place_and_confirm(&ep, &codec, &rig.stack.names.input, &placed).await;
    check_outcome(&rig, &ep, &placed, 4).await;
    let stock = view_matches_the_stock(&rig).await;
    projector.stop().await.unwrap();
    let (sku, available, reserved) = &stock[0];
    let views_db = rig.stack.views_db.display().to_string();
    let (code, out) = eipctl_run(&ep, &["query", "inventory", sku, "--db", &views_db]).await;
    assert_eq!(code, Some(0), "{out}");
    let start = out.find('{').unwrap_or_else(|| panic!("no JSON: {out}"));
    let end = out.rfind('}').unwrap_or_else(|| panic!("no JSON: {out}"));
    let level: serde_json::Value = serde_json::from_str(&out[start..=end]).unwrap();
    assert_eq!(
        (&level["sku"], &level["available"], &level["reserved"]),
        (
            &serde_json::json!(sku),
            &serde_json::json!(available),
            &serde_json::json!(reserved)
        ),
        "{out}"
    );
    // A rebuild of the view reads the levels topic alone, and ends where the live one is.
    let (code, out) = eipctl_run(
        &ep,
        &[
            "projection",
            "rebuild",
            "inventory_levels",
            "--db",
            &views_db,
            "--levels-topic",
            &rig.levels,
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("switched readers from version 1 to 2"),
        "{out}"
    );
    view_matches_the_stock(&rig).await;
    for o in &never {
        let (status, _) = http_get(&rig.monitor_addr, &format!("/sagas/{}", o.id))
            .await
            .unwrap();
        assert_eq!(status, 404, "{} never started a saga", o.id);
    }
    api_matches_the_contract(&rig, &compensated_id(&rig).await).await;
    // Bad requests get a 400 with a JSON reason; an unknown saga a 404.
    for (path, status, reason) in [
        ("/sagas?status=lost", 400, "status=\"lost\""),
        ("/sagas?status=running&limit=0", 400, "limit=0"),
        ("/sagas?status=running&after=nope", 400, "not a cursor"),
        ("/sagas?colour=blue", 400, "colour"),
        ("/sagas/no-such-saga", 404, "no saga no-such-saga"),
        ("/sagas/a/b", 404, "no such path"),
    ] {
        let (got, body) = http_get(&rig.monitor_addr, path).await.unwrap();
        assert_eq!(got, status, "{path}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            json["error"].as_str().unwrap().contains(reason),
            "{path}: {body}"
        );
    }
    // Paging: every completed saga once, in pages of 7.
    let mut seen = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/sagas?status=completed&limit=7&after={a}"),
            None => "/sagas?status=completed&limit=7".to_string(),
        };
        let page = rig.api(&path).await.unwrap();
        for s in page["items"].as_array().unwrap() {
            assert!(
                seen.insert(s["saga_id"].as_str().unwrap().to_string()),
                "{s} twice"
            );
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), rig.sagas("completed").await.len());
    // One saga's whole story, in time order, with where each event was read.
    let compensated = rig.sagas("compensated").await;
    let one = compensated[0]["saga_id"].as_str().unwrap();
    let detail = rig.api(&format!("/sagas/{one}")).await.unwrap();
    let events = detail["events"].as_array().unwrap();
    assert_eq!(events[0]["event_type"], "eip.orders.OrderConfirmed");
    assert_eq!(
        events.last().unwrap()["event_type"],
        "eip.orders.OrderCancelled"
    );
    assert!(
        events
            .iter()
            .all(|e| e["topic"].as_str().is_some_and(|t| !t.is_empty()))
    );
    // The story of a saga that failed after the stock was reserved, from the log itself,
    // with the commands and outcomes around it.
    let late = compensated
        .iter()
        .find(|s| {
            [
                "payment_authorized",
                "points_redeemed",
                "shipment_scheduled",
                "invoice_issued",
            ]
            .contains(&s["failed_step"].as_str().unwrap())
        })
        .expect("a saga failed after inventory_reserved");
    let one = late["saga_id"].as_str().unwrap();
    let definition = rig.definition.display().to_string();
    let (code, out) = eipctl_run(
        &ep,
        &[
            "trace",
            &format!("corr-{one}"),
            "--definition",
            &definition,
            "--commands-topic",
            &rig.stack.names.input,
            "--outcomes-topic",
            &rig.stack.outcomes,
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    let order = |ty: &str| {
        out.lines()
            .position(|l| l.contains(ty))
            .unwrap_or_else(|| panic!("{ty} missing from the trace:\n{out}"))
    };
    // In causal order: placed and confirmed (commands, outcomes, events), the first saga
    // step, the failure, and the cancellation the saga asked for.
    assert!(
        order("eip.orders.PlaceOrder") < order("eip.orders.OrderPlaced"),
        "{out}"
    );
    assert!(
        order("eip.orders.ConfirmOrder") < order("eip.orders.OrderConfirmed"),
        "{out}"
    );
    assert!(
        order("eip.orders.OrderConfirmed") < order("eip.customers.CustomerVerified"),
        "{out}"
    );
    assert!(
        order("eip.orders.CancelOrder") < order("eip.orders.OrderCancelled"),
        "{out}"
    );
    assert!(out.contains(":cancel accepted"), "{out}");
    assert!(
        out.contains(&format!("{}[", rig.stack.events)),
        "positions: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_sagas_survive_kill_9_of_participants_and_the_monitor() {
    init_logs();
    let ep = endpoints();
    register(&ep).await;
    let codec = codec(&ep);
    // 20% of sagas fail: 1 - (1 - r)^10 = 0.2 over the ten steps.
    let mut rig = SagaRig::new(&ep, "saga-kill", "60s", "60s", everywhere(0.0221)).await;
    rig.start_participants();
    rig.start_monitor();
    let projector = levels_projector(&ep, &rig).await;
    let placed = orders(&rig.stack.names.input, 2_000);
    place_and_confirm(&ep, &codec, &rig.stack.names.input, &placed).await;
    // Kill -9 a random participant or the monitor every second or so while the sagas run,
    // and start it again.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill seed {seed}");
    let mut next = || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as usize
    };
    let mut killed = Vec::new();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(600 + (next() % 900) as u64)).await;
        let who = match next() % 10 {
            9 => "monitor",
            i => ROLES[i],
        };
        rig.kill(who).await;
        rig.restart(who);
        killed.push(who);
    }
    eprintln!("killed {killed:?}");
    check_outcome(&rig, &ep, &placed, 6).await;
    view_matches_the_stock(&rig).await;
    projector.stop().await.unwrap();
}

/// The monitor's `eip_sagas{status="stuck"}` right now.
async fn stuck_gauge(rig: &SagaRig) -> f64 {
    let Some((200, text)) = http_get(&rig.monitor_addr, "/metrics").await else {
        return -1.0;
    };
    text.lines()
        .filter(|l| l.starts_with("eip_sagas{") && l.contains("status=\"stuck\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_that_never_answers_times_out_then_a_missing_compensation_makes_the_saga_stuck_until_it_comes()
 {
    init_logs();
    let ep = endpoints();
    register(&ep).await;
    let codec = codec(&ep);
    // Shipping takes an hour: its step's 15 s deadline passes first (15 s leaves the test
    // time to see every saga waiting there and stop loyalty before the failure reaches it).
    let slow = vec![Inject {
        role: "shipping",
        fail_rate: 0.0,
        latency: Duration::from_secs(3_600),
    }];
    let mut rig = SagaRig::new(&ep, "saga-timeout", "15s", "4s", slow).await;
    // The shipping topic holds only an aborted transaction until the timeouts: its committed
    // offset stays below its end with nothing readable in between, which must not hold the
    // deadlines (the monitor's catch-up probe finds the end first).
    let shipping = format!("{}-saga-shipping", rig.stack.names.input);
    abort_a_transaction(&ep, &shipping, 3).await;
    rig.start_participants();
    rig.start_monitor();
    let placed = orders(&rig.stack.names.input, 3);
    place_and_confirm(&ep, &codec, &rig.stack.names.input, &placed).await;
    // Every saga reaches shipping and waits there; then the loyalty participant, whose step
    // comes just before, goes away, so nobody restores the points.
    let waiting = eventually("the sagas at shipping", WAIT, || async {
        let running = rig.sagas("running").await;
        (running.len() == 3 && running.iter().all(|s| s["step"] == "shipment_scheduled"))
            .then_some(running)
    })
    .await;
    rig.kill("loyalty").await;
    // An operator starts one saga's compensation before its deadline: shipping fails the step
    // with the operator's reason. Without a valid token nothing happens.
    let chosen = waiting[0]["saga_id"].as_str().unwrap().to_string();
    let ask = serde_json::json!({
        "action": "compensate", "actor": "test-op", "reason": "customer called"
    });
    for token in [None, Some("not-the-token")] {
        let (code, body) = rig.act(&chosen, ask.clone(), token).await;
        assert_eq!(code, 401, "{body}");
    }
    let (code, body) = rig.act(&chosen, ask, Some(OPERATOR_TOKEN)).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["step"], "shipment_scheduled", "{body}");
    assert_eq!(
        body["published"][0]["event_type"], "eip.saga.SagaStepTimedOut",
        "{body}"
    );
    // The deadline passes: the monitor publishes the timeout, shipping fails the step with
    // `timeout`, and the compensation of the points is overdue: stuck, listed, and counted.
    let stuck = eventually("the sagas stuck", WAIT, || async {
        let stuck = rig.sagas("stuck").await;
        (stuck.len() == 3).then_some(stuck)
    })
    .await;
    for s in &stuck {
        assert_eq!(s["failed_step"], "shipment_scheduled", "{s}");
        assert_eq!(s["expect"], "compensation:points_redeemed", "{s}");
        if s["saga_id"] == chosen.as_str() {
            assert_eq!(s["failure_code"], "operator", "{s}");
            assert_eq!(
                s["failure_reason"], "compensation started by test-op: customer called",
                "{s}"
            );
        } else {
            assert_eq!(s["failure_code"], "timeout", "{s}");
        }
    }
    eventually("the stuck gauge", WAIT, || async {
        (stuck_gauge(&rig).await == 3.0).then_some(())
    })
    .await;
    let id = stuck
        .iter()
        .map(|s| s["saga_id"].as_str().unwrap().to_string())
        .find(|s| *s != chosen)
        .unwrap();
    // Operators see the same with eipctl.
    let monitor = rig.monitor_addr.clone();
    let (code, out) = eipctl_run(
        &ep,
        &["saga", "list", "--status", "stuck", "--monitor", &monitor],
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&id) && out.contains("compensation:points_redeemed"),
        "{out}"
    );
    let (code, out) = eipctl_run(&ep, &["saga", "show", &id, "--monitor", &monitor]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(": stuck") && out.contains("eip.saga.SagaStepTimedOut"),
        "{out}"
    );
    assert!(out.contains("failed at shipment_scheduled"), "{out}");
    let (code, out) = eipctl_run(
        &ep,
        &["saga", "list", "--status", "lost", "--monitor", &monitor],
    )
    .await;
    assert_ne!(code, Some(0));
    assert!(
        out.contains("400") && out.contains("status=\"lost\""),
        "{out}"
    );
    dashboard_shows_the_stuck_sagas(&rig, &id).await;
    let detail = rig.api(&format!("/sagas/{id}")).await.unwrap();
    let types: Vec<&str> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert!(types.contains(&"eip.saga.SagaStepTimedOut"), "{types:?}");
    assert!(types.contains(&"eip.saga.monitor.Stuck"), "{types:?}");
    operator_actions_on_stuck_sagas(&rig, &ep, &id).await;
    // Loyalty comes back: the compensations go on, and every saga ends compensated, with the
    // points restored (once, though one trigger was published twice) and nothing charged.
    // The sagas marked resolved end compensated too: their own events end them.
    rig.restart("loyalty");
    let counts = all_final(&rig, 3).await;
    assert_eq!(counts["compensated"], 3, "{counts:?}");
    resources_net_back(&rig, &placed, &BTreeSet::new());
    // A completion of the timed-out step shows up after all (published by someone else):
    // the monitor flags it, the saga stays compensated, and invoicing does not act on it.
    let late = codec
        .encode(&eip_schemas::types::ShipmentScheduled {
            metadata: eip_schemas::types::EventMetadata {
                event_id: format!("{id}:late"),
                correlation_id: format!("corr-{id}"),
                causation_id: None,
                occurred_at: 4_102_444_800_000,
                aggregate_id: id.clone(),
                aggregate_version: 6,
            },
            order_id: id.clone(),
            order: eip_schemas::types::OrderSnapshot {
                customer_id: "c".into(),
                lines: Vec::new(),
                total_cents: 1,
                currency: "EUR".into(),
            },
            reference: "late".into(),
        })
        .await
        .unwrap();
    let shipping = format!("{}-saga-shipping", rig.stack.names.input);
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &ep.brokers)
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    let delivered = producer
        .send(
            rdkafka::producer::FutureRecord::to(&shipping)
                .key(id.as_bytes())
                .payload(&late),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let (partition, offset) = (delivered.partition, delivered.offset);
    let flagged = eventually("the late completion flagged", WAIT, || async {
        let s = rig.api(&format!("/sagas/{id}")).await?;
        let flags = s["saga"]["flags"].as_array()?.clone();
        (!flags.is_empty()).then_some(s)
    })
    .await;
    assert_eq!(flagged["saga"]["status"], "compensated", "{flagged}");
    let flags = flagged["saga"]["flags"].to_string();
    assert!(flags.contains("late: shipment_scheduled"), "{flags}");
    // Invoicing has handled the late completion (committed past it), and published nothing.
    eventually("invoicing handles the late completion", WAIT, || async {
        (rig.committed("invoicing", &shipping, partition) > offset).then_some(())
    })
    .await;
    let invoicing = format!("{}-saga-invoicing", rig.stack.names.input);
    let invoices = read_all(&ep, &invoicing).await;
    assert!(
        invoices.is_empty(),
        "invoicing acted on a step that had failed"
    );
}

/// The operator actions' path.
const ACTIONS: &str = "/sagas/{saga_id}/actions";

/// While loyalty is down: every documented answer of the operator actions (checked against
/// docs/openapi.json), a re-emitted trigger, and two sagas resolved by filter with eipctl.
async fn operator_actions_on_stuck_sagas(rig: &SagaRig, ep: &Endpoints, id: &str) {
    let monitor = rig.monitor_addr.clone();
    let act = |args: &[&str]| {
        let mut all: Vec<String> = vec!["saga".into(), "act".into()];
        all.extend(args.iter().map(|a| a.to_string()));
        all.extend(
            [
                "--actor",
                "test-op",
                "--token",
                OPERATOR_TOKEN,
                "--monitor",
                &monitor,
            ]
            .map(String::from),
        );
        all
    };
    let m = rig.monitor_addr.as_str();
    let mut statuses = BTreeSet::new();
    let mut note = |obs: &eip_tests::contract::Observed| {
        eip_tests::contract::contract().check("post", ACTIONS, obs);
        statuses.insert(obs.status);
    };
    let path = format!("/sagas/{id}/actions");
    let post = eip_tests::contract::post;
    let token = Some(OPERATOR_TOKEN);
    let compensate = serde_json::json!({"action": "compensate", "actor": "test-op"});
    // No token: a 401 with its challenge, and nothing done.
    let obs = post(m, &path, &compensate, None).await;
    assert_eq!(obs.status, 401, "{}", obs.body);
    assert!(
        obs.header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    note(&obs);
    // Its compensation has started: starting it again is refused, with the reason.
    let obs = post(m, &path, &compensate, token).await;
    assert_eq!(obs.status, 409, "{}", obs.body);
    assert!(
        obs.error().contains("compensation has started"),
        "{}",
        obs.body
    );
    note(&obs);
    // Malformed requests and unknown sagas.
    let obs = post(
        m,
        &path,
        &serde_json::json!({"action": "retry", "actor": "x"}),
        token,
    )
    .await;
    assert_eq!(obs.status, 400, "{}", obs.body);
    note(&obs);
    let obs = post(m, "/sagas/none-such/actions", &compensate, token).await;
    assert_eq!(obs.status, 404, "{}", obs.body);
    note(&obs);
    // Re-emit: the shipping failure that triggers the points' compensation is published
    // again, the same record (key, value) on the same partition.
    let reemit = serde_json::json!({
        "action": "reemit", "actor": "test-op", "reason": "loyalty was down"
    });
    let obs = post(m, &path, &reemit, token).await;
    assert_eq!(obs.status, 202, "{}", obs.body);
    note(&obs);
    let done = obs.json();
    assert_eq!(
        done["published"][0]["event_type"], "eip.shipping.ShipmentSchedulingFailed",
        "{done}"
    );
    assert_eq!(done["step"], "points_redeemed", "{done}");
    let detail = eventually("the re-emit in the history", WAIT, || async {
        let d = rig.api(&format!("/sagas/{id}")).await?;
        let events = d["events"].as_array()?.clone();
        events
            .iter()
            .any(|e| e["event_type"] == "eip.saga.operator.TriggerReemitted")
            .then_some(events)
    })
    .await;
    let find = |t: &str| {
        detail
            .iter()
            .find(|e| e["event_type"] == t)
            .unwrap_or_else(|| panic!("no {t} in {detail:?}"))
            .clone()
    };
    let original = find("eip.shipping.ShipmentSchedulingFailed");
    let again = find("eip.saga.operator.TriggerReemitted");
    assert_eq!(again["actor"], "test-op", "{again}");
    assert_eq!(again["reason"], "loyalty was down", "{again}");
    assert_eq!(again["topic"], original["topic"], "{again}");
    assert_eq!(again["partition"], original["partition"], "{again}");
    assert_eq!(again["offset"], done["published"][0]["offset"], "{again}");
    let records = read_all(ep, original["topic"].as_str().unwrap()).await;
    let at = |e: &serde_json::Value| {
        records
            .iter()
            .find(|r| {
                i64::from(r.partition) == e["partition"].as_i64().unwrap()
                    && r.offset == e["offset"].as_i64().unwrap()
            })
            .unwrap_or_else(|| panic!("no record at {e}"))
    };
    let (first, second) = (at(&original), at(&again));
    assert!(second.offset > first.offset);
    assert_eq!(
        (&first.key, &first.payload, &first.headers),
        (&second.key, &second.payload, &second.headers)
    );
    // Operator actions off (no tokens): 403; a store that can't be read: 503.
    let def = std::sync::Arc::new(eip_saga::definition::Definition::load(&rig.definition).unwrap());
    let unreadable = rig.dir.path().join("no-such-dir/monitor.db");
    let off = eip_saga::api::Api::new(
        def.clone(),
        eip_store::saga_store::SagaStore::sqlite(unreadable.clone()),
    );
    let kafka = eip_runtime::config::KafkaConfig {
        brokers: ep.brokers.clone(),
        ..Default::default()
    };
    let operator =
        eip_saga::operate::Operator::new(def.clone(), &kafka, codec(ep), "unused").unwrap();
    let down = eip_saga::api::Api::new(def, eip_store::saga_store::SagaStore::sqlite(unreadable))
        .with_operator(std::sync::Arc::new(operator), &[OPERATOR_TOKEN.to_string()]);
    for (api, status) in [(off, 403), (down, 503)] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            axum::serve(listener, eip_saga::api::routes(api))
                .await
                .unwrap();
        });
        let obs = post(&addr, &path, &reemit, token).await;
        assert_eq!(obs.status, status, "{}", obs.body);
        note(&obs);
        server.abort();
    }
    let documented: BTreeSet<u16> = eip_tests::contract::contract()
        .operations("eip-saga-monitor")
        .into_iter()
        .filter(|(p, method, _)| p == ACTIONS && method == "post")
        .map(|(_, _, status)| status)
        .collect();
    assert_eq!(
        statuses, documented,
        "POST {ACTIONS}: triggered vs documented"
    );
    // Resolve two by filter, with a progress bar: they leave the stuck list.
    let args = act(&[
        "resolve",
        "--status",
        "stuck",
        "--failed-step",
        "shipment_scheduled",
        "--max",
        "2",
        "--reason",
        "handled by hand",
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out) = eipctl_run(ep, &args).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("resolve: 2 done, 0 refused, 0 failed"),
        "{out}"
    );
    assert!(out.contains("100% 2/2 sagas"), "a progress bar: {out}");
    let resolved = eventually("two sagas resolved", WAIT, || async {
        let r = rig.sagas("resolved").await;
        (r.len() == 2).then_some(r)
    })
    .await;
    assert_eq!(rig.sagas("stuck").await.len(), 1);
    eventually("the stuck gauge at 1", WAIT, || async {
        (stuck_gauge(rig).await == 1.0).then_some(())
    })
    .await;
    // A bulk action the state does not allow: counted as refused, with the reason; not an error.
    let args = act(&["compensate", "--status", "stuck"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out) = eipctl_run(ep, &args).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("compensate: 0 done, 1 refused, 0 failed")
            && out.contains("compensation has started"),
        "{out}"
    );
    let rid = resolved[0]["saga_id"].as_str().unwrap();
    let (code, out) = eipctl_run(ep, &["saga", "show", rid, "--monitor", &monitor]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(": resolved")
            && out.contains("eip.saga.operator.Resolved")
            && out.contains("by=test-op"),
        "{out}"
    );
}

async fn compensated_id(rig: &SagaRig) -> String {
    rig.sagas("compensated").await[0]["saga_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Every answer of the monitor's API documented in docs/openapi.json is triggered, against
/// the running monitor (and, for the 503, the same routes over a store that can't be
/// opened), and checked against the document.
async fn api_matches_the_contract(rig: &SagaRig, id: &str) {
    use eip_tests::contract::{contract, get};
    let c = contract();
    let mut observed = BTreeSet::new();
    let mut note = |template: &str, obs: &eip_tests::contract::Observed| {
        c.check("get", template, obs);
        observed.insert((template.to_string(), "get".to_string(), obs.status));
    };
    let long = "x".repeat(1_025);
    let m = rig.monitor_addr.as_str();
    for (template, path) in [
        ("/sagas", "/sagas?status=completed&limit=3".to_string()),
        ("/sagas", "/sagas?status=lost".to_string()),
        ("/sagas/stats", "/sagas/stats".to_string()),
        ("/sagas/{saga_id}", format!("/sagas/{id}")),
        ("/sagas/{saga_id}", format!("/sagas/{long}")),
        ("/sagas/{saga_id}", "/sagas/none-such".to_string()),
        (
            "/sagas/by-correlation/{correlation_id}",
            format!("/sagas/by-correlation/corr-{id}"),
        ),
        (
            "/sagas/by-correlation/{correlation_id}",
            format!("/sagas/by-correlation/{long}"),
        ),
    ] {
        note(template, &get(m, &path).await);
    }
    // The same routes over a store that can't be opened answer 503 with Retry-After.
    let def = eip_saga::definition::Definition::load(&rig.definition).unwrap();
    let api = eip_saga::api::Api::new(
        std::sync::Arc::new(def),
        eip_store::saga_store::SagaStore::sqlite(rig.dir.path().join("no-such-dir/monitor.db")),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        axum::serve(listener, eip_saga::api::routes(api))
            .await
            .unwrap();
    });
    for (template, path) in [
        ("/sagas", "/sagas?status=stuck"),
        ("/sagas/stats", "/sagas/stats"),
        ("/sagas/{saga_id}", "/sagas/o-1"),
        (
            "/sagas/by-correlation/{correlation_id}",
            "/sagas/by-correlation/c-1",
        ),
    ] {
        let obs = get(&addr, path).await;
        assert_eq!(obs.status, 503, "{path}: {}", obs.body);
        note(template, &obs);
    }
    server.abort();
    let documented: BTreeSet<_> = c
        .operations("eip-saga-monitor")
        .into_iter()
        .filter(|(_, method, _)| method == "get")
        .collect();
    let missing: Vec<_> = documented.difference(&observed).collect();
    assert!(
        missing.is_empty(),
        "documented but never triggered: {missing:?}"
    );
    let undocumented: Vec<_> = observed.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "observed but not documented: {undocumented:?}"
    );
}

/// The dashboard in headless Chromium, as a person would see it: the counts, the stuck saga
/// listed, the searched saga's timeline, all live; and a screenshot kept in
/// target/test-artifacts.
async fn dashboard_shows_the_stuck_sagas(rig: &SagaRig, id: &str) {
    let url = format!("http://{}/dashboard?saga={id}", rig.monitor_addr);
    let dir = repo_root().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("saga-dashboard.png");
    let _ = std::fs::remove_file(&shot);
    // Loaded, searched, and live (a server-sent update arrived).
    let dom = eip_tests::saga::browse(
        &url,
        &shot,
        "document.body.dataset.loaded === 'yes' && document.getElementById('live').className === 'on'",
    )
    .await;
    assert!(dom.contains(r#"<b id="count-stuck">3</b>"#), "{dom}");
    assert!(dom.contains(r#"<b id="count-completed">0</b>"#), "{dom}");
    let stuck_table = dom.split(r#"<table id="stuck">"#).nth(1).unwrap();
    let stuck_table = stuck_table.split("</table>").next().unwrap();
    assert!(stuck_table.contains(id), "{stuck_table}");
    assert!(
        stuck_table.contains("compensation:points_redeemed"),
        "{stuck_table}"
    );
    // The searched saga: its status, its failure, its timeline drawn, and its events.
    assert!(dom.contains(r#"<b class="status">stuck</b>"#), "{dom}");
    assert!(
        dom.contains("failed at shipment_scheduled (timeout)"),
        "{dom}"
    );
    assert!(dom.contains(r#"id="timeline-svg""#), "{dom}");
    assert!(dom.contains("eip.saga.SagaStepTimedOut"), "{dom}");
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 20_000, "screenshot {}: {size} bytes", shot.display());
    eprintln!("dashboard screenshot: {}", shot.display());
}

/// The monitor with its views on CQL (`store = "cql"`) moves to another machine: it is
/// killed -9 while sagas wait on a step's deadline, and started again with another state
/// directory (nothing on the first machine's disk is read). Every deadline still fires from
/// the keyspace's deadline rows, every saga ends compensated, and the totals the API serves
/// (kept per monitor partition) agree with the sagas it lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_on_cql_moves_to_another_machine_and_keeps_every_saga_and_deadline() {
    init_logs();
    let ep = endpoints();
    register(&ep).await;
    let codec = codec(&ep);
    let nodes: Vec<String> = std::env::var("EIP_CQL_NODES")
        .unwrap_or_else(|_| "127.0.0.1:19042".into())
        .split(',')
        .map(str::to_string)
        .collect();
    // Some sagas fail early by injection; the rest wait at shipping, which takes an hour,
    // until the step's 20 s deadline.
    let mut inject: Vec<Inject> = ["customers", "fraud", "inventory", "payments"]
        .into_iter()
        .map(|role| Inject {
            role,
            fail_rate: 0.1,
            latency: Duration::ZERO,
        })
        .collect();
    inject.push(Inject {
        role: "shipping",
        fail_rate: 0.0,
        latency: Duration::from_secs(3_600),
    });
    let mut rig = SagaRig::new(&ep, "saga-cql", "20s", "60s", inject).await;
    let keyspace = format!(
        "sagas_{}",
        rig.stack
            .names
            .input
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    let keyspace: String = keyspace.chars().take(48).collect();
    let root = rig.dir.path().to_path_buf();
    let on_machine = |name: &str| {
        vec![
            ("EIP__PROCESSOR__STORE".to_string(), "cql".to_string()),
            (
                "EIP__PROCESSOR__CQL_NODES".to_string(),
                serde_json::to_string(&nodes).unwrap(),
            ),
            ("EIP__PROCESSOR__KEYSPACE".to_string(), keyspace.clone()),
            (
                "EIP__PROCESSOR__DB".to_string(),
                root.join(name).join("monitor.db").display().to_string(),
            ),
        ]
    };
    rig.monitor_env = on_machine("machine-a");
    rig.start_participants();
    rig.start_monitor();
    let placed = orders(&rig.stack.names.input, 40);
    place_and_confirm(&ep, &codec, &rig.stack.names.input, &placed).await;
    // Wait until no saga is before shipping: each waits there, or failed earlier.
    let before_shipping = [
        "customer_verified",
        "fraud_check_passed",
        "inventory_reserved",
        "payment_authorized",
        "points_redeemed",
    ];
    let waiting = eventually(
        "every saga at shipping or failed before it",
        WAIT,
        || async {
            let running = rig.sagas("running").await;
            let mut failed = rig.sagas("compensated").await;
            failed.extend(rig.sagas("compensating").await);
            let early = failed
                .iter()
                .filter(|s| before_shipping.contains(&s["failed_step"].as_str().unwrap_or("")))
                .count();
            (running.len() + early == 40
                && !running.is_empty()
                && running.iter().all(|s| s["step"] == "shipment_scheduled"))
            .then_some(40 - early)
        },
    )
    .await;
    // The first machine goes away with its deadlines pending; the monitor comes back on
    // another one.
    rig.kill("monitor").await;
    rig.monitor_env = on_machine("machine-b");
    rig.start_monitor();
    let counts = all_final(&rig, 40).await;
    assert_eq!(counts.get("compensated"), Some(&40), "{counts:?}");
    for status in ["running", "stuck", "completed", "compensating", "resolved"] {
        assert_eq!(counts.get(status).copied().unwrap_or(0), 0, "{counts:?}");
    }
    let compensated = rig.sagas("compensated").await;
    assert_eq!(compensated.len(), 40);
    let timed_out: Vec<&serde_json::Value> = compensated
        .iter()
        .filter(|s| s["failed_step"] == "shipment_scheduled")
        .collect();
    assert_eq!(
        timed_out.len(),
        waiting,
        "every saga that reached shipping timed out there"
    );
    assert!(timed_out.iter().all(|s| s["failure_code"] == "timeout"));
    // The totals (one row per monitor partition) against the sagas listed one by one.
    totals_match_the_listed_sagas(&rig, &compensated, 0).await;
    let stats = rig.api("/sagas/stats").await.unwrap();
    // Every saga reserved stock before it failed at shipping or released it: the
    // compensations by step count the sagas that got past each step.
    let past_inventory = compensated
        .iter()
        .filter(|s| {
            ![
                "customer_verified",
                "fraud_check_passed",
                "inventory_reserved",
            ]
            .contains(&s["failed_step"].as_str().unwrap())
        })
        .count() as i64;
    assert_eq!(
        stats["compensations"]["inventory_reserved"]
            .as_i64()
            .unwrap_or(0),
        past_inventory,
        "{stats}"
    );
    resources_net_back(&rig, &placed, &BTreeSet::new());
    for machine in ["machine-a", "machine-b"] {
        assert!(
            !rig.dir.path().join(machine).join("monitor.db").exists(),
            "the monitor on CQL keeps nothing on {machine}'s disk"
        );
    }
    // A keyspace that holds nothing, under the group that has read the observations: the
    // monitor refuses to start rather than show only the sagas from here on.
    rig.kill("monitor").await;
    let mut elsewhere = on_machine("machine-c");
    elsewhere.push((
        "EIP__PROCESSOR__KEYSPACE".to_string(),
        format!("{}_lost", &keyspace[..keyspace.len().min(40)]),
    ));
    rig.monitor_env = elsewhere;
    rig.start_monitor();
    the_monitor_refuses_a_store_that_lost_what_its_group_read(&mut rig, "holds nothing of").await;
}

/// Waits for the monitor to stop, and checks it said why (`what`) in one line.
async fn the_monitor_refuses_a_store_that_lost_what_its_group_read(rig: &mut SagaRig, what: &str) {
    let monitor = rig.monitor.as_mut().unwrap();
    let status = monitor.wait(Duration::from_secs(90)).await;
    assert!(!status.success(), "{status:?}");
    let log = monitor.log_text();
    assert!(
        log.contains(what) && log.contains("new kafka.group_id"),
        "{log}"
    );
}

/// A monitor that comes back after an outage acts on no deadline before it has read what was
/// published before it. Shipping takes 6 s and its step's deadline is 12 s; the monitor is
/// killed -9 while every saga waits at shipping and stays down past the deadlines, while the
/// shipments are scheduled. When it comes back, the passed deadlines wait for the backlog,
/// which holds the shipments: no timeout is published, and every saga completes unflagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_back_from_an_outage_reads_the_backlog_before_it_acts_on_a_deadline() {
    init_logs();
    let ep = endpoints();
    register(&ep).await;
    let codec = codec(&ep);
    let slow = vec![Inject {
        role: "shipping",
        fail_rate: 0.0,
        latency: Duration::from_secs(6),
    }];
    let mut rig = SagaRig::new(&ep, "saga-outage", "12s", "60s", slow).await;
    rig.start_participants();
    rig.start_monitor();
    let placed = orders(&rig.stack.names.input, 12);
    place_and_confirm(&ep, &codec, &rig.stack.names.input, &placed).await;
    eventually("every saga at shipping", WAIT, || async {
        let running = rig.sagas("running").await;
        (running.len() == 12 && running.iter().all(|s| s["step"] == "shipment_scheduled"))
            .then_some(())
    })
    .await;
    // A copy of the monitor's file as it is now, to come back later as an old backup.
    let old = rig.dir.path().join("old.db");
    rusqlite::Connection::open(rig.db("monitor"))
        .unwrap()
        .execute("VACUUM INTO ?1", [old.display().to_string()])
        .unwrap();
    rig.kill("monitor").await;
    // Down past every deadline; the shipments are scheduled meanwhile.
    tokio::time::sleep(Duration::from_secs(16)).await;
    rig.restart("monitor");
    let counts = all_final(&rig, 12).await;
    assert_eq!(counts.get("completed"), Some(&12), "{counts:?}");
    for s in rig.sagas("completed").await {
        assert!(s["flags"].as_array().unwrap().is_empty(), "{s}");
    }
    let timeouts_topic = format!("{}-saga-timeouts", rig.stack.names.input);
    let published = read_all(&ep, &timeouts_topic).await;
    assert!(
        published.is_empty(),
        "{} timeouts published for steps decided during the outage",
        published.len()
    );
    // A new file under the group that has read the observations: refused, not half empty.
    rig.kill("monitor").await;
    rig.monitor_env = vec![(
        "EIP__PROCESSOR__DB".to_string(),
        rig.dir.path().join("lost.db").display().to_string(),
    )];
    rig.start_monitor();
    the_monitor_refuses_a_store_that_lost_what_its_group_read(&mut rig, "holds nothing of").await;
    // The copy from before the outage, as a restored backup: behind what the group read.
    rig.monitor_env = vec![("EIP__PROCESSOR__DB".to_string(), old.display().to_string())];
    rig.start_monitor();
    the_monitor_refuses_a_store_that_lost_what_its_group_read(&mut rig, "only up to offset").await;
}

/// A step whose completion event its topic would refuse fails `too_large` before anything is
/// held, instead of stopping the participant. The inventory topic takes records of at most
/// 20,000 bytes; one order has 1,000 lines, so its `OrderConfirmed` (the order once) fits
/// the order events topic but its `InventoryReserved` (the lines twice) would not fit the
/// inventory topic. That saga compensates with the reason; the other sagas complete behind
/// it, and no unit of the big order's SKUs is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_event_its_topic_would_refuse_fails_too_large_and_the_others_go_on() {
    use rdkafka::admin::{AdminOptions, AlterConfig, ResourceSpecifier};
    init_logs();
    let ep = endpoints();
    register(&ep).await;
    let codec = codec(&ep);
    let mut rig = SagaRig::new(&ep, "saga-large", "60s", "60s", Vec::new()).await;
    let inventory_topic = format!("{}-saga-inventory", rig.stack.names.input);
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        eip_runtime::kafka::base_config(&ep.kafka())
            .create()
            .unwrap();
    // The whole set, as a history topic has it: this call resets what it does not name.
    let small = AlterConfig::new(ResourceSpecifier::Topic(&inventory_topic))
        .set("max.message.bytes", "20000")
        .set("retention.ms", "-1")
        .set("retention.bytes", "-1")
        .set("cleanup.policy", "delete");
    for r in admin
        .alter_configs([&small], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
    rig.start_participants();
    rig.start_monitor();
    let big = TestOrder {
        id: format!("{}-big", rig.stack.names.input),
        customer: "c-big".into(),
        lines: (0..1_000)
            .map(|i| (format!("BIG-{i:04}"), 1, 100))
            .collect(),
    };
    let mut placed = vec![big.clone()];
    placed.extend(orders(&rig.stack.names.input, 5));
    place_and_confirm(&ep, &codec, &rig.stack.names.input, &placed).await;
    let counts = all_final(&rig, 6).await;
    assert_eq!(counts.get("completed"), Some(&5), "{counts:?}");
    let detail = rig.api(&format!("/sagas/{}", big.id)).await.unwrap();
    let saga = &detail["saga"];
    assert_eq!(saga["status"], "compensated", "{saga}");
    assert_eq!(saga["failed_step"], "inventory_reserved", "{saga}");
    assert_eq!(saga["failure_code"], "too_large", "{saga}");
    let reason = saga["failure_reason"].as_str().unwrap();
    assert!(
        reason.contains("InventoryReserved would be") && reason.contains("max.message.bytes"),
        "{reason}"
    );
    assert!(
        rig.participants
            .get_mut("inventory")
            .unwrap()
            .exited()
            .is_none(),
        "the inventory participant runs on\n{}",
        rig.logs()
    );
    let completed: BTreeSet<String> = rig
        .sagas("completed")
        .await
        .iter()
        .map(|s| s["saga_id"].as_str().unwrap().to_string())
        .collect();
    resources_net_back(&rig, &placed, &completed);
}
