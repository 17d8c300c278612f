//! The shipped definition parses, wires each participant as the saga needs, and every
//! broken rule is refused with the step and field named.

use super::*;

const SHIPPED: &str = include_str!("../../../deploy/sagas/order-fulfilment.toml");

fn shipped() -> Definition {
    Definition::parse(SHIPPED, "order-fulfilment.toml").unwrap()
}

#[test]
fn the_shipped_saga_has_ten_steps_in_a_chain_and_knows_only_catalog_types() {
    let d = shipped();
    assert_eq!(d.steps.len(), 10);
    assert_eq!(d.steps[0].started_by, "eip.orders.OrderConfirmed");
    for pair in d.steps.windows(2) {
        assert_eq!(pair[1].started_by, pair[0].completed_by);
    }
    let catalog = eip_schemas::Catalog::global().unwrap();
    d.check_types(|name| catalog.get(name).is_ok()).unwrap();
    assert_eq!(
        d.participants().into_iter().collect::<Vec<_>>(),
        [
            "customers",
            "fraud",
            "inventory",
            "invoicing",
            "loyalty",
            "notifications",
            "orders",
            "payments",
            "shipping"
        ]
    );
    assert_eq!(
        d.topic_of("eip.orders.OrderCompleted"),
        Some("order-events")
    );
    assert!(d.topics().contains(&"saga-timeouts".to_string()));
}

#[test]
fn a_failure_makes_the_nearest_earlier_compensable_step_compensate_then_the_next() {
    let d = shipped();
    // Payment declined (step 3): inventory (step 2) releases; the checks before it have
    // nothing to undo, so after the release the order is cancelled.
    assert_eq!(
        d.reactions("inventory", "eip.payments.PaymentDeclined"),
        [Reaction::Compensate(2)]
    );
    assert_eq!(
        d.reactions("orders", "eip.inventory.InventoryReleased"),
        [Reaction::CompensateEnd]
    );
    // The fraud check failing (step 1) cancels the order at once.
    assert_eq!(
        d.reactions("orders", "eip.fraud.FraudCheckFailed"),
        [Reaction::CompensateEnd]
    );
    // Capture failing (step 7): the invoice is credited, then the shipment cancelled, ...
    assert_eq!(
        d.reactions("invoicing", "eip.payments.PaymentCaptureFailed"),
        [Reaction::Compensate(6)]
    );
    assert_eq!(
        d.reactions("shipping", "eip.invoicing.InvoiceCredited"),
        [Reaction::Compensate(5)]
    );
    // Completion refused (step 9): the notification has nothing to undo, so the capture is
    // refunded first.
    assert_eq!(
        d.reactions("payments", "eip.orders.OrderCompletionFailed"),
        [Reaction::Compensate(7)]
    );
    // The payments participant both refunds and voids, in that order.
    assert_eq!(
        d.reactions("payments", "eip.loyalty.PointsRestored"),
        [Reaction::Compensate(3)]
    );
    // Steps are performed on the previous completion only.
    assert_eq!(
        d.reactions("payments", "eip.inventory.InventoryReserved"),
        [Reaction::Perform(3)]
    );
    assert_eq!(
        d.reactions("orders", "eip.notifications.CustomerNotified"),
        [Reaction::Perform(9)]
    );
    assert!(
        d.reactions("fraud", "eip.payments.PaymentDeclined")
            .is_empty()
    );
    assert_eq!(d.reactions("fraud", TIMED_OUT), [Reaction::TimedOut]);
    let inputs = d.inputs_of("inventory");
    // The fraud check starts it; the payments participant fails or voids after it.
    assert_eq!(inputs, ["saga-fraud", "saga-payments", "saga-timeouts"]);
}

fn broken(from: &str, to: &str) -> String {
    assert!(SHIPPED.contains(from), "{from}");
    let text = SHIPPED.replacen(from, to, 1);
    Definition::parse(&text, "f.toml").unwrap_err().to_string()
}

#[test]
fn every_broken_rule_names_the_file_the_step_and_the_field() {
    let cases = [
        (
            "timeout = \"30s\"",
            "timeout = \"0s\"",
            "saga definition f.toml: steps[0] (customer_verified).timeout: must be more than 0",
        ),
        (
            "started_by = \"eip.customers.CustomerVerified\"",
            "started_by = \"eip.orders.OrderConfirmed\"",
            "steps[1] (fraud_check_passed).started_by: is eip.orders.OrderConfirmed, but a step starts when the one before it completes (eip.customers.CustomerVerified)",
        ),
        (
            "name = \"fraud_check_passed\"",
            "name = \"customer_verified\"",
            "steps[1] (customer_verified).name: another step has this name",
        ),
        (
            "failed_by = \"eip.fraud.FraudCheckFailed\"",
            "failed_by = \"eip.customers.CustomerVerificationFailed\"",
            "steps[1] (fraud_check_passed).failed_by: eip.customers.CustomerVerificationFailed has another role",
        ),
        (
            "topic = \"saga-fraud\"",
            "topic = \"saga fraud\"",
            "steps[1] (fraud_check_passed).topic: \"saga fraud\" is not a topic name",
        ),
        (
            "compensated_by = \"eip.inventory.InventoryReleased\"",
            "compensated_by = \"InventoryReleased\"",
            "steps[2] (inventory_reserved).compensated_by: \"InventoryReleased\" is not a full Avro name",
        ),
        (
            "name = \"customer_notified\"",
            "name = \"end\"",
            "steps[8] (end).name: \"end\" is reserved",
        ),
        (
            "name = \"order_fulfilment\"",
            "name = \"Order Fulfilment\"",
            "saga definition f.toml: name:",
        ),
        (
            "timeouts_topic = \"saga-timeouts\"",
            "timeouts_topic = \"saga-timeouts\"\nretries = 3",
            "unknown field `retries`",
        ),
        (
            "compensation_timeout = \"60s\"",
            "compensation_timeout = \"soon\"",
            "saga definition f.toml: line",
        ),
    ];
    for (from, to, want) in cases {
        let got = broken(from, to);
        assert!(got.contains(want), "{to}: got {got}");
    }
    let none = Definition::parse(
        "name = \"s\"\ntimeouts_topic = \"t\"\nsteps = []\n[start]\nevent = \"a.B\"\ntopic = \"x\"\n[end]\nparticipant = \"p\"\ncompensated_by = \"a.C\"\ntopic = \"x\"\ncompensation_timeout = \"1s\"\n",
        "f.toml",
    )
    .unwrap_err();
    assert_eq!(none.at, "steps");
    let d = shipped();
    let typo = d
        .check_types(|name| name != "eip.loyalty.PointsRestored")
        .unwrap_err();
    assert_eq!(typo.at, "steps[4] (points_redeemed).compensated_by");
}
