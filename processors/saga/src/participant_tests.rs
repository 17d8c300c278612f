//! Given/when/then with the runtime's test kit: a participant on a real SQLite store, fed
//! decoded saga events, publishing what its decisions stand for.

use eip_runtime::config::Config;
use eip_runtime::testkit::TestKit;
use eip_runtime::{Output, Payload};
use eip_schemas::Catalog;
use eip_schemas::types::{CommandOutcome, EventMetadata, OrderLine, OrderSnapshot};

use super::*;
use crate::config::{Injection, ParticipantConfig};
use crate::events::Fields;

const T0: i64 = 1_800_000_000_000;

fn definition() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/sagas/order-fulfilment.toml")
}

fn participant(role: &str, dir: &tempfile::TempDir, latency_ms: u64) -> Participant {
    let mut config: Config<ParticipantConfig> = Config::default();
    config.processor.role = role.into();
    config.processor.definition = definition();
    config.processor.db = dir.path().join(format!("{role}.db"));
    config.processor.initial_stock = 5;
    config.processor.inject.insert(
        role.into(),
        Injection {
            fail_rate: 0.0,
            latency: std::time::Duration::from_millis(latency_ms),
        },
    );
    Participant::new(&mut config)
        .unwrap()
        .with_event_limit(1_000_000 - 4_096)
}

async fn kit(role: &str, dir: &tempfile::TempDir, latency_ms: u64) -> TestKit<Participant> {
    let mut kit = TestKit::new(participant(role, dir, latency_ms), "saga-x", 0);
    kit.set_clock(T0);
    kit.assign().await.unwrap();
    kit
}

fn order() -> OrderSnapshot {
    OrderSnapshot {
        customer_id: "c-1".into(),
        lines: vec![OrderLine {
            sku: "A".into(),
            quantity: 3,
            unit_price_cents: 100,
        }],
        total_cents: 300,
        currency: "EUR".into(),
    }
}

fn event(event_type: &str, id: &str) -> Input {
    Input::Saga(SagaRecord {
        event_type: event_type.into(),
        fields: Fields {
            metadata: Some(EventMetadata {
                event_id: id.into(),
                correlation_id: "corr-1".into(),
                causation_id: None,
                occurred_at: T0,
                aggregate_id: "o-1".into(),
                aggregate_version: 1,
            }),
            order_id: Some("o-1".into()),
            order: Some(order()),
            reason: Some("injected".into()),
            ..Fields::default()
        },
    })
}

fn timeout(step: &str) -> Input {
    let Input::Saga(mut r) = event(TIMED_OUT, &format!("o-1:timeout:{step}")) else {
        unreachable!()
    };
    r.fields.order = None;
    r.fields.step = Some(step.into());
    r.fields.saga = Some("order_fulfilment".into());
    Input::Saga(r)
}

/// (topic, type, fields) of an output, decoded back through its schema.
fn seen(out: &Output) -> (String, String, serde_json::Value) {
    let Payload::Record(record) = &out.payload else {
        panic!("not a record")
    };
    let framed = record.encode(0).unwrap();
    let schema = Catalog::global().unwrap().get(record.full_name()).unwrap();
    let reader = apache_avro::reader::datum::GenericDatumReader::builder(&schema.schema)
        .build()
        .unwrap();
    let value = reader.read_value(&mut &framed[5..]).unwrap();
    let json: serde_json::Value = apache_avro::from_value(&value).unwrap();
    (out.topic.to_string(), record.full_name().to_string(), json)
}

fn types(outs: &[Output]) -> Vec<String> {
    outs.iter().map(|o| seen(o).1).collect()
}

#[tokio::test]
async fn inventory_reserves_once_however_often_its_trigger_comes_and_releases_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut kit = kit("inventory", &dir, 0).await;
    let out = kit
        .record(Some("o-1"), event("eip.fraud.FraudCheckPassed", "f-1"))
        .await
        .unwrap();
    let (topic, ty, json) = seen(&out[0]);
    assert_eq!(
        (topic.as_str(), ty.as_str()),
        ("saga-inventory", "eip.inventory.InventoryReserved")
    );
    assert_eq!(
        json["metadata"]["event_id"],
        "o-1:inventory_reserved:completed"
    );
    assert_eq!(json["metadata"]["causation_id"], "f-1");
    assert_eq!(json["order"]["total_cents"], 300);
    // The stock it left, on its own topic keyed by SKU, numbered by the SKU's changes.
    assert_eq!(out.len(), 2);
    let (topic, ty, level) = seen(&out[1]);
    assert_eq!(
        (topic.as_str(), ty.as_str()),
        ("inventory-levels", "eip.inventory.StockLevelChanged")
    );
    assert_eq!(out[1].key.as_deref(), Some(&b"A"[..]));
    assert_eq!(
        (
            &level["sku"],
            &level["available"],
            &level["reserved"],
            &level["sequence"]
        ),
        (
            &serde_json::json!("A"),
            &serde_json::json!(2),
            &serde_json::json!(3),
            &serde_json::json!(1)
        )
    );
    assert_eq!(
        level["metadata"]["event_id"],
        "o-1:inventory_reserved:completed:A"
    );
    // Redelivered: the same record again, and stock held once.
    let again = kit
        .record(Some("o-1"), event("eip.fraud.FraudCheckPassed", "f-1"))
        .await
        .unwrap();
    assert_eq!(seen(&again[0]).2, json);
    assert_eq!(seen(&again[1]).2, level);
    let stock = kit.processor().store().stock().unwrap();
    assert_eq!((stock["A"].available, stock["A"].reserved), (2, 3));
    // The payment is declined: released, once.
    let out = kit
        .record(Some("o-1"), event("eip.payments.PaymentDeclined", "p-1"))
        .await
        .unwrap();
    let (_, ty, json) = seen(&out[0]);
    assert_eq!(ty, "eip.inventory.InventoryReleased");
    assert_eq!(json["reason"], "payment_authorized failed: injected");
    let released = seen(&out[1]).2;
    assert_eq!(
        (
            &released["available"],
            &released["reserved"],
            &released["sequence"]
        ),
        (
            &serde_json::json!(5),
            &serde_json::json!(0),
            &serde_json::json!(2)
        )
    );
    // Repeats publish the same records, and change nothing.
    let again = kit
        .record(Some("o-1"), event("eip.payments.PaymentDeclined", "p-1"))
        .await
        .unwrap();
    assert_eq!(seen(&again[0]).2, json);
    assert_eq!(seen(&again[1]).2, released);
    kit.record(Some("o-1"), event("eip.payments.PaymentDeclined", "p-1"))
        .await
        .unwrap();
    kit.record(Some("o-1"), event("eip.payments.PaymentVoided", "p-2"))
        .await
        .unwrap();
    let stock = kit.processor().store().stock().unwrap();
    assert_eq!((stock["A"].available, stock["A"].reserved), (5, 0));
    // A second order wants more than there is: nothing held, the failure says why.
    let Input::Saga(mut big) = event("eip.fraud.FraudCheckPassed", "f-2") else {
        unreachable!()
    };
    big.fields.order_id = Some("o-2".into());
    big.fields.order.as_mut().unwrap().lines[0].quantity = 6;
    let out = kit.record(Some("o-2"), Input::Saga(big)).await.unwrap();
    let (_, ty, json) = seen(&out[0]);
    assert_eq!(ty, "eip.inventory.InventoryReservationFailed");
    assert_eq!(json["reason_code"], "out_of_stock");
}

#[tokio::test]
async fn whichever_of_trigger_and_timeout_comes_first_decides_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let mut kit = kit("inventory", &dir, 0).await;
    // The timeout first: the step fails; the trigger after it publishes that failure again,
    // never a completion, and holds nothing.
    let out = kit
        .record(Some("o-1"), timeout("inventory_reserved"))
        .await
        .unwrap();
    let (_, ty, json) = seen(&out[0]);
    assert_eq!(ty, "eip.inventory.InventoryReservationFailed");
    assert_eq!(json["reason_code"], "timeout");
    let out = kit
        .record(Some("o-1"), event("eip.fraud.FraudCheckPassed", "f-1"))
        .await
        .unwrap();
    assert_eq!(types(&out), ["eip.inventory.InventoryReservationFailed"]);
    assert!(kit.processor().store().stock().unwrap().is_empty());
    // Another saga: the trigger first; its timeout afterwards changes nothing.
    let Input::Saga(mut r) = event("eip.fraud.FraudCheckPassed", "f-2") else {
        unreachable!()
    };
    r.fields.order_id = Some("o-2".into());
    let out = kit.record(Some("o-2"), Input::Saga(r)).await.unwrap();
    assert_eq!(
        types(&out),
        [
            "eip.inventory.InventoryReserved",
            "eip.inventory.StockLevelChanged"
        ]
    );
    let Input::Saga(mut t) = timeout("inventory_reserved") else {
        unreachable!()
    };
    t.fields.order_id = Some("o-2".into());
    // The timeout after the decision publishes that decision again (the same record), so a
    // completion lost before its ack still goes out; it never turns into a failure.
    let again = kit.record(Some("o-2"), Input::Saga(t)).await.unwrap();
    assert_eq!(
        types(&again),
        [
            "eip.inventory.InventoryReserved",
            "eip.inventory.StockLevelChanged"
        ]
    );
    assert_eq!(seen(&again[0]).2, seen(&out[0]).2);
}

#[tokio::test]
async fn an_operator_who_starts_the_compensation_fails_the_undecided_step_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut kit = kit("inventory", &dir, 0).await;
    let Input::Saga(mut t) = timeout("inventory_reserved") else {
        unreachable!()
    };
    t.fields.reason = Some("compensation started by ops@example: customer called".into());
    t.fields.reason_code = Some("operator".into());
    let out = kit.record(Some("o-1"), Input::Saga(t)).await.unwrap();
    let (_, ty, json) = seen(&out[0]);
    assert_eq!(ty, "eip.inventory.InventoryReservationFailed");
    assert_eq!(json["reason_code"], "operator");
    assert_eq!(
        json["reason"],
        "compensation started by ops@example: customer called"
    );
    // The trigger after it: the failure again, nothing reserved.
    let out = kit
        .record(Some("o-1"), event("eip.fraud.FraudCheckPassed", "f-1"))
        .await
        .unwrap();
    assert_eq!(types(&out), ["eip.inventory.InventoryReservationFailed"]);
    assert!(kit.processor().store().stock().unwrap().is_empty());
}

#[tokio::test]
async fn a_slow_participant_is_overtaken_by_its_timeout_and_never_completes_late() {
    let dir = tempfile::tempdir().unwrap();
    let mut kit = kit("shipping", &dir, 60_000).await;
    let out = kit
        .record(Some("o-1"), event("eip.loyalty.PointsRedeemed", "l-1"))
        .await
        .unwrap();
    assert!(out.is_empty(), "performed after its latency, on a timer");
    assert_eq!(kit.timers().len(), 1);
    kit.flush().await.unwrap();
    let out = kit
        .record(Some("o-1"), timeout("shipment_scheduled"))
        .await
        .unwrap();
    assert_eq!(types(&out), ["eip.shipping.ShipmentSchedulingFailed"]);
    // The delayed step's timer fires: the failure is repeated, nothing is scheduled.
    let fired = kit.advance_to(T0 + 61_000).await.unwrap();
    assert_eq!(fired.len(), 1);
    assert_eq!(
        types(&fired[0].1),
        ["eip.shipping.ShipmentSchedulingFailed"]
    );
}

#[tokio::test]
async fn a_step_whose_trigger_step_failed_ignores_a_completion_that_shows_up_later() {
    let dir = tempfile::tempdir().unwrap();
    let mut kit = kit("invoicing", &dir, 0).await;
    let out = kit
        .record(
            Some("o-1"),
            event("eip.shipping.ShipmentSchedulingFailed", "s-1"),
        )
        .await
        .unwrap();
    assert!(out.is_empty());
    let out = kit
        .record(Some("o-1"), event("eip.shipping.ShipmentScheduled", "s-2"))
        .await
        .unwrap();
    assert!(out.is_empty(), "{:?}", types(&out));
}

#[tokio::test]
async fn the_orders_role_completes_the_order_and_cancels_it_after_the_compensations() {
    let dir = tempfile::tempdir().unwrap();
    let mut kit = kit("orders", &dir, 0).await;
    let out = kit
        .record(
            Some("o-1"),
            event("eip.notifications.CustomerNotified", "n-1"),
        )
        .await
        .unwrap();
    let (topic, ty, json) = seen(&out[0]);
    assert_eq!(
        (topic.as_str(), ty.as_str()),
        ("order-commands", "eip.orders.CompleteOrder")
    );
    assert_eq!(json["metadata"]["command_id"], "o-1:complete");
    // Refused by the aggregate: the step fails.
    let refused = Input::Outcome(CommandOutcome {
        command_id: "o-1:complete".into(),
        correlation_id: "corr-1".into(),
        aggregate_id: "o-1".into(),
        command: "CompleteOrder".into(),
        accepted: false,
        version: 3,
        reason_code: Some("already_cancelled".into()),
        reason: Some("o-1 is cancelled".into()),
        duplicate: false,
        decided_at: T0,
    });
    let out = kit.record(Some("o-1"), refused.clone()).await.unwrap();
    let (topic, ty, json) = seen(&out[0]);
    assert_eq!(
        (topic.as_str(), ty.as_str()),
        ("saga-orders", "eip.orders.OrderCompletionFailed")
    );
    assert_eq!(json["reason_code"], "refused");
    // The outcome redelivered (a kill after the commit, before the ack): the failure again.
    let again = kit.record(Some("o-1"), refused.clone()).await.unwrap();
    assert_eq!(seen(&again[0]).2, json);
    // The end of a compensation wave: the order is cancelled, with the reason.
    let Input::Saga(mut r) = event("eip.inventory.InventoryReleased", "i-9") else {
        unreachable!()
    };
    r.fields.order_id = Some("o-2".into());
    r.fields.reason = Some("payment_authorized failed: declined".into());
    let out = kit.record(Some("o-2"), Input::Saga(r)).await.unwrap();
    let (_, ty, json) = seen(&out[0]);
    assert_eq!(ty, "eip.orders.CancelOrder");
    assert_eq!(json["metadata"]["command_id"], "o-2:cancel");
    assert_eq!(
        json["reason"],
        "saga order_fulfilment: payment_authorized failed: declined"
    );
}

#[test]
fn a_store_from_before_stock_levels_gains_their_columns_and_keeps_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE saga_steps (
                 saga_id TEXT NOT NULL, step TEXT NOT NULL, state TEXT NOT NULL,
                 reference TEXT NOT NULL, amount INTEGER NOT NULL, reason TEXT NOT NULL,
                 reason_code TEXT, order_json TEXT NOT NULL, correlation_id TEXT NOT NULL,
                 causation_id TEXT, decided_at INTEGER NOT NULL, compensated_at INTEGER,
                 PRIMARY KEY (saga_id, step)) WITHOUT ROWID;
             CREATE TABLE stock (
                 sku TEXT PRIMARY KEY, available INTEGER NOT NULL, reserved INTEGER NOT NULL)
                 WITHOUT ROWID;
             INSERT INTO stock VALUES ('A', 7, 3);",
        )
        .unwrap();
    }
    let store = Store::open(&path, crate::actions::Policy::default()).unwrap();
    let stock = store.stock().unwrap();
    assert_eq!(
        stock["A"],
        crate::actions::Stock {
            available: 7,
            reserved: 3,
            changes: 0
        }
    );
    // Opening again finds the columns there.
    Store::open(&path, crate::actions::Policy::default()).unwrap();
}

#[tokio::test]
async fn a_step_whose_completion_its_topic_would_refuse_fails_too_large_and_holds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The inventory topic takes events of 64 bytes: an InventoryReserved carrying the order
    // (twice: its lines and the order's, 90 bytes here) does not fit.
    let p = participant("inventory", &dir, 0).with_event_limit(64);
    let mut kit = TestKit::new(p, "saga-x", 0);
    kit.set_clock(T0);
    kit.assign().await.unwrap();
    let out = kit
        .record(Some("o-1"), event("eip.fraud.FraudCheckPassed", "f-1"))
        .await
        .unwrap();
    assert_eq!(
        out.len(),
        1,
        "the failure alone: no stock level, nothing was reserved: {:?}",
        types(&out)
    );
    let (topic, ty, json) = seen(&out[0]);
    assert_eq!(
        (topic.as_str(), ty.as_str()),
        ("saga-inventory", "eip.inventory.InventoryReservationFailed")
    );
    assert_eq!(json["reason_code"], "too_large");
    let reason = json["reason"].as_str().unwrap();
    assert!(
        reason.contains("eip.inventory.InventoryReserved would be") && reason.contains("64"),
        "{reason}"
    );
    // The trigger again: the same failure, published again.
    let again = kit
        .record(Some("o-1"), event("eip.fraud.FraudCheckPassed", "f-1"))
        .await
        .unwrap();
    assert_eq!(
        types(&again),
        vec!["eip.inventory.InventoryReservationFailed"]
    );
    let stock = kit.processor().store().stock().unwrap();
    assert!(stock.is_empty(), "no SKU was ever touched: {stock:?}");
}
