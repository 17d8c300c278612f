//! The order command scripts of [`eipctl::orders`] (outcomes known by construction, not by
//! running the aggregate), and the checks that read the events and outcomes topics back.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use eip_schemas::Codec;
use eip_schemas::types::CommandOutcome;

use crate::{Endpoints, read_all};

pub use eipctl::orders::{Expected, Final, Script, UNIT_PRICE};

/// Produces the stories of `orders` orders to `topic` as Avro (see
/// [`eipctl::orders::produce_script`]).
pub async fn produce_script(
    ep: &Endpoints,
    codec: &Codec,
    topic: &str,
    prefix: &str,
    orders: u64,
    poison: u64,
) -> Script {
    eipctl::orders::produce_script(ep, codec, topic, prefix, orders, poison)
        .await
        .unwrap()
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
        assert!(
            seen.iter().any(|o| !o.duplicate),
            "{command}: its original outcome was never published, only repeats: {seen:?}"
        );
        let first = &seen[0];
        match expected {
            Ok(()) => assert!(first.accepted, "{command}: {first:?}"),
            Err(code) => {
                assert!(!first.accepted, "{command}: {first:?}");
                assert_eq!(first.reason_code.as_deref(), Some(*code), "{command}");
                assert!(first.reason.as_deref().is_some_and(|r| !r.is_empty()));
            }
        }
        // A command's outcome is one fact: every report of it, a duplicate's or a decision
        // made again after a crash, says the same, decision time included.
        for again in &seen[1..] {
            assert_eq!(
                (
                    again.accepted,
                    again.version,
                    &again.reason_code,
                    again.decided_at
                ),
                (
                    first.accepted,
                    first.version,
                    &first.reason_code,
                    first.decided_at
                ),
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
