//! Order command scripts whose outcomes are known by construction, not by running the
//! aggregate: each order follows one of six stories, and the story says what each command's
//! outcome and the order's final version must be. Then the checks that read the events and
//! outcomes topics back.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use eip_schemas::Codec;
use eip_schemas::types::{
    AddOrderLine, CancelOrder, CommandMetadata, CommandOutcome, ConfirmOrder, OrderLine,
    PlaceOrder, RemoveOrderLine, samples,
};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::{Endpoints, read_all};

/// What a command must come to: accepted, or rejected with this code.
pub type Expected = Result<(), &'static str>;

/// A produced script: the commands' expected outcomes by command id, and each order's final
/// version (0: never placed).
#[derive(Debug, Default)]
pub struct Script {
    /// Expected outcome of every command id.
    pub outcomes: HashMap<String, Expected>,
    /// Command ids sent twice.
    pub duplicates: Vec<String>,
    /// Each order's final version.
    pub versions: BTreeMap<String, i64>,
    /// Records produced (commands, duplicates and poison).
    pub records: u64,
    /// Poison records among them.
    pub poison: u64,
    /// Each placed order's final state, by its story.
    pub finals: BTreeMap<String, Final>,
}

/// An order's final state as its story says (every unit price is 250 cents).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Final {
    /// The customer.
    pub customer: String,
    /// `open`, `confirmed` or `cancelled`.
    pub status: &'static str,
    /// Units per SKU.
    pub lines: BTreeMap<String, i64>,
}

/// The price of every line of the scripts.
pub const UNIT_PRICE: i64 = 250;

/// The final state of order `i`'s story; None for one never placed.
fn final_state(i: u64) -> Option<Final> {
    let (status, lines): (&'static str, &[(&str, i64)]) = match i % 6 {
        0 => ("confirmed", &[("B", 1), ("C", 3)]),
        1 => ("cancelled", &[("A", 1)]),
        2 => return None,
        3 => ("confirmed", &[("A", 1)]),
        4 => ("open", &[("A", 1), ("B", 2)]),
        _ => ("cancelled", &[("A", 1)]),
    };
    Some(Final {
        customer: samples::order_placed(i).customer_id,
        status,
        lines: lines.iter().map(|(s, q)| (s.to_string(), *q)).collect(),
    })
}

fn meta(order: &str, n: u32, expected: Option<i64>) -> CommandMetadata {
    CommandMetadata {
        command_id: format!("{order}/c{n}"),
        correlation_id: format!("corr-{order}"),
        causation_id: None,
        issued_at: 1_767_225_600_000,
        aggregate_id: order.to_string(),
        expected_version: expected,
    }
}

fn line(sku: &str, quantity: i32) -> OrderLine {
    OrderLine {
        sku: sku.to_string(),
        quantity,
        unit_price_cents: 250,
    }
}

/// One framed command to send, with its expected outcome.
struct Step {
    payload: Vec<u8>,
    command_id: String,
    expected: Expected,
}

async fn step<T: eip_schemas::AvroRecord>(
    codec: &Codec,
    value: &T,
    command_id: &str,
    expected: Expected,
) -> Step {
    Step {
        payload: codec.encode(value).await.unwrap(),
        command_id: command_id.to_string(),
        expected,
    }
}

/// The story of order `i` (its id is `{prefix}-{i}`): its commands, and its final version.
async fn story(codec: &Codec, prefix: &str, i: u64) -> (String, Vec<Step>, i64) {
    let id = format!("{prefix}-{i:06}");
    let sample = samples::order_placed(i);
    let place = |n: u32, lines: Vec<OrderLine>| PlaceOrder {
        metadata: meta(&id, n, None),
        customer_id: sample.customer_id.clone(),
        lines,
        currency: "EUR".into(),
        shipping_address: sample.shipping_address.clone(),
    };
    let add = |n: u32, l: OrderLine| AddOrderLine {
        metadata: meta(&id, n, None),
        line: l,
    };
    let confirm = |n: u32, expected: Option<i64>| ConfirmOrder {
        metadata: meta(&id, n, expected),
    };
    let cancel = |n: u32, reason: &str| CancelOrder {
        metadata: meta(&id, n, None),
        reason: reason.into(),
    };
    let c = |n: u32| format!("{id}/c{n}");
    let mut steps = Vec::new();
    let version = match i % 6 {
        0 => {
            steps.push(
                step(
                    codec,
                    &place(1, vec![line("A", 2), line("B", 1)]),
                    &c(1),
                    Ok(()),
                )
                .await,
            );
            steps.push(step(codec, &add(2, line("C", 3)), &c(2), Ok(())).await);
            let remove = RemoveOrderLine {
                metadata: meta(&id, 3, None),
                sku: "A".into(),
            };
            steps.push(step(codec, &remove, &c(3), Ok(())).await);
            steps.push(step(codec, &confirm(4, None), &c(4), Ok(())).await);
            4
        }
        1 => {
            steps.push(step(codec, &place(1, vec![line("A", 1)]), &c(1), Ok(())).await);
            steps.push(step(codec, &cancel(2, "changed my mind"), &c(2), Ok(())).await);
            steps.push(step(codec, &confirm(3, None), &c(3), Err("not_open")).await);
            2
        }
        2 => {
            steps.push(step(codec, &place(1, vec![]), &c(1), Err("empty_order")).await);
            steps.push(step(codec, &add(2, line("A", 1)), &c(2), Err("unknown_order")).await);
            0
        }
        3 => {
            steps.push(step(codec, &place(1, vec![line("A", 1)]), &c(1), Ok(())).await);
            steps.push(step(codec, &add(2, line("B", 0)), &c(2), Err("bad_quantity")).await);
            steps.push(step(codec, &confirm(3, Some(5)), &c(3), Err("version_conflict")).await);
            steps.push(step(codec, &confirm(4, Some(1)), &c(4), Ok(())).await);
            2
        }
        4 => {
            steps.push(step(codec, &place(1, vec![line("A", 1)]), &c(1), Ok(())).await);
            let remove = RemoveOrderLine {
                metadata: meta(&id, 2, None),
                sku: "A".into(),
            };
            steps.push(step(codec, &remove, &c(2), Err("last_line")).await);
            steps.push(step(codec, &add(3, line("B", 2)), &c(3), Ok(())).await);
            // The same command again: a duplicate, applied once.
            steps.push(step(codec, &add(3, line("B", 2)), &c(3), Ok(())).await);
            2
        }
        _ => {
            steps.push(step(codec, &place(1, vec![line("A", 1)]), &c(1), Ok(())).await);
            steps.push(
                step(
                    codec,
                    &place(2, vec![line("A", 1)]),
                    &c(2),
                    Err("already_exists"),
                )
                .await,
            );
            steps.push(step(codec, &cancel(3, " "), &c(3), Err("missing_reason")).await);
            steps.push(step(codec, &cancel(4, "out of stock"), &c(4), Ok(())).await);
            2
        }
    };
    (id, steps, version)
}

/// Produces the stories of `orders` orders to `topic`, keyed by order id, each order's
/// commands in order, with `poison` undecodable records among them.
pub async fn produce_script(
    ep: &Endpoints,
    codec: &Codec,
    topic: &str,
    prefix: &str,
    orders: u64,
    poison: u64,
) -> Script {
    let producer: FutureProducer = eip_runtime::kafka::producer_config(&ep.kafka())
        .create()
        .unwrap();
    let mut script = Script::default();
    let mut pending = Vec::new();
    for i in 0..orders {
        let (id, steps, version) = story(codec, prefix, i).await;
        script.versions.insert(id.clone(), version);
        if let Some(f) = final_state(i) {
            script.finals.insert(id.clone(), f);
        }
        for s in steps {
            if script
                .outcomes
                .insert(s.command_id.clone(), s.expected)
                .is_some()
            {
                script.duplicates.push(s.command_id.clone());
            }
            let record = FutureRecord::to(topic)
                .key(id.as_bytes())
                .payload(&s.payload);
            pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
            script.records += 1;
        }
        if poison > 0 && i % (orders / poison).max(1) == 0 && script.poison < poison {
            let record = FutureRecord::to(topic)
                .key(id.as_bytes())
                .payload(b"not avro at all".as_slice());
            pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
            script.records += 1;
            script.poison += 1;
        }
        if pending.len() >= 5_000 {
            for f in pending.drain(..) {
                f.await.unwrap().unwrap();
            }
        }
    }
    for f in pending {
        f.await.unwrap().unwrap();
    }
    script
}

/// Every outcome on `topic`, by command id, in the order published.
pub async fn outcomes(
    ep: &Endpoints,
    codec: &Codec,
    topic: &str,
) -> HashMap<String, Vec<CommandOutcome>> {
    let mut by_id: HashMap<String, Vec<CommandOutcome>> = HashMap::new();
    for r in read_all(ep, topic).await {
        let o: CommandOutcome = codec.decode(r.payload.as_deref()).await.unwrap();
        by_id.entry(o.command_id.clone()).or_default().push(o);
    }
    by_id
}

/// Every order event on `topic`: the versions published per order, in topic order.
pub async fn event_versions(
    ep: &Endpoints,
    codec: &Codec,
    topic: &str,
) -> BTreeMap<String, Vec<i64>> {
    let mut versions: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in read_all(ep, topic).await {
        let event = eip_orders::codec::event(codec, r.payload.as_deref())
            .await
            .unwrap()
            .expect("an order event");
        versions
            .entry(event.metadata().aggregate_id.clone())
            .or_default()
            .push(event.version());
    }
    versions
}

/// Checks what the orders processor published against `script`:
/// - every command has an outcome, and its first one that is not marked duplicate is the
///   expected one; every repeat agrees with it;
/// - each order's events carry the versions 1, 2, … up to its final version, each once, in
///   order;
/// - a command sent twice was decided once, and its second outcome is marked duplicate.
pub fn check_script(
    script: &Script,
    outcomes: &HashMap<String, Vec<CommandOutcome>>,
    events: &BTreeMap<String, Vec<i64>>,
) {
    for (command, expected) in &script.outcomes {
        let seen = outcomes
            .get(command)
            .unwrap_or_else(|| panic!("no outcome for {command}"));
        let first = &seen[0];
        match expected {
            Ok(()) => assert!(first.accepted, "{command}: {first:?}"),
            Err(code) => {
                assert!(!first.accepted, "{command}: {first:?}");
                assert_eq!(first.reason_code.as_deref(), Some(*code), "{command}");
                assert!(first.reason.as_deref().is_some_and(|r| !r.is_empty()));
            }
        }
        for again in &seen[1..] {
            assert_eq!(
                (again.accepted, again.version, &again.reason_code),
                (first.accepted, first.version, &first.reason_code),
                "{command}: a repeated outcome differs"
            );
        }
    }
    for command in &script.duplicates {
        let seen = &outcomes[command];
        // Its second send comes after the first on the same partition, so it is decided as a
        // duplicate, also when a restart replays both.
        assert!(seen.len() >= 2, "{command} was sent twice");
        assert!(
            seen.last().is_some_and(|o| o.duplicate),
            "{command}: {seen:?}"
        );
    }
    for (order, last) in &script.versions {
        let got = events.get(order).cloned().unwrap_or_default();
        let want: Vec<i64> = (1..=*last).collect();
        assert_eq!(got, want, "{order}: versions published");
    }
    assert_eq!(
        events.len(),
        script.versions.values().filter(|v| **v > 0).count(),
        "no events for orders never placed"
    );
}

/// How long the orders tests wait for the processor.
pub const WAIT: Duration = Duration::from_secs(240);
