//! Rust types for the schemas in `schemas/avro`.
//!
//! Each struct mirrors its `.avsc` file field for field; the test at the bottom encodes a
//! sample of every message type with its compiled schema and decodes it back, so a struct that
//! drifts from its schema fails the build's tests.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use crate::saga_types::*;

use crate::catalog::{Catalog, CompiledSchema};
use crate::error::SchemaError;

/// A Rust type that is one of the compiled-in Avro message schemas.
pub trait AvroRecord: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The full Avro name; with the record-name subject strategy, also the registry subject.
    const FULL_NAME: &'static str;

    /// The compiled-in schema of this type.
    fn compiled() -> Result<&'static CompiledSchema, SchemaError> {
        Catalog::global()?.get(Self::FULL_NAME)
    }
}

/// Envelope every event carries (`eip.common.EventMetadata`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// Unique id of this event (UUID); consumers de-duplicate on it.
    pub event_id: String,
    /// Id shared by every message of one business flow.
    pub correlation_id: String,
    /// Id of the message that caused this one; `None` for a flow's first message.
    pub causation_id: Option<String>,
    /// When the fact happened, in milliseconds since the Unix epoch.
    pub occurred_at: i64,
    /// The aggregate whose history this event belongs to; also the Kafka key.
    pub aggregate_id: String,
    /// The aggregate's version after this event, starting at 1.
    pub aggregate_version: i64,
}

/// Envelope every command carries (`eip.common.CommandMetadata`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandMetadata {
    /// Unique id of this command (UUID); handlers de-duplicate on it.
    pub command_id: String,
    /// Id shared by every message of one business flow.
    pub correlation_id: String,
    /// Id of the message that caused this command, if any.
    pub causation_id: Option<String>,
    /// When the command was issued, in milliseconds since the Unix epoch.
    pub issued_at: i64,
    /// The aggregate the command is addressed to; also the Kafka key.
    pub aggregate_id: String,
    /// Optimistic concurrency: the version the issuer saw, or `None` to skip the check.
    pub expected_version: Option<i64>,
}

/// A postal address (`eip.common.Address`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// Street and number.
    pub street: String,
    /// City or town.
    pub city: String,
    /// Postal code, as written locally.
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 country code.
    pub country: String,
}

/// One product line of an order (`eip.common.OrderLine`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// Stock keeping unit.
    pub sku: String,
    /// Number of units.
    pub quantity: i32,
    /// Price of one unit in minor units.
    pub unit_price_cents: i64,
}

/// Command: place a new order (`eip.orders.PlaceOrder`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceOrder {
    /// Command envelope; `aggregate_id` is the new order's id.
    pub metadata: CommandMetadata,
    /// The ordering customer.
    pub customer_id: String,
    /// What is ordered.
    pub lines: Vec<OrderLine>,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Where to ship.
    pub shipping_address: Address,
}

/// Command: cancel an order (`eip.orders.CancelOrder`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelOrder {
    /// Command envelope.
    pub metadata: CommandMetadata,
    /// Why, for people.
    pub reason: String,
}

/// Command: add a line to an open order (`eip.orders.AddOrderLine`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddOrderLine {
    /// Command envelope.
    pub metadata: CommandMetadata,
    /// The line to add.
    pub line: OrderLine,
}

/// Command: remove a line from an open order (`eip.orders.RemoveOrderLine`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveOrderLine {
    /// Command envelope.
    pub metadata: CommandMetadata,
    /// SKU of the line to remove.
    pub sku: String,
}

/// Command: confirm an open order (`eip.orders.ConfirmOrder`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmOrder {
    /// Command envelope.
    pub metadata: CommandMetadata,
}

/// Command: mark a confirmed order completed (`eip.orders.CompleteOrder`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompleteOrder {
    /// Command envelope.
    pub metadata: CommandMetadata,
}

/// Event: a line was added to an open order (`eip.orders.OrderLineAdded`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLineAdded {
    /// Event envelope.
    pub metadata: EventMetadata,
    /// The line added.
    pub line: OrderLine,
    /// The order's total after the change, in minor units.
    pub total_cents: i64,
}

/// Event: a line was removed from an open order (`eip.orders.OrderLineRemoved`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLineRemoved {
    /// Event envelope.
    pub metadata: EventMetadata,
    /// The line removed, as it was on the order.
    pub line: OrderLine,
    /// The order's total after the change, in minor units.
    pub total_cents: i64,
}

/// What became of one command (`eip.orders.CommandOutcome`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOutcome {
    /// The command's id.
    pub command_id: String,
    /// The command's correlation id.
    pub correlation_id: String,
    /// The aggregate addressed; also the Kafka key.
    pub aggregate_id: String,
    /// The command's type, e.g. `PlaceOrder`.
    pub command: String,
    /// True when the command's event was emitted.
    pub accepted: bool,
    /// Accepted: the version of its event. Rejected: the aggregate's version then (0: none).
    pub version: i64,
    /// Rejected: a stable code.
    pub reason_code: Option<String>,
    /// Rejected: why, for people.
    pub reason: Option<String>,
    /// True when this is a duplicate's repeated outcome.
    pub duplicate: bool,
    /// When the command was first decided, in milliseconds since the Unix epoch.
    pub decided_at: i64,
}

/// Event: an order was accepted (`eip.orders.OrderPlaced`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// Event envelope; `aggregate_id` is the order id.
    pub metadata: EventMetadata,
    /// The ordering customer.
    pub customer_id: String,
    /// What was ordered.
    pub lines: Vec<OrderLine>,
    /// Sum over the lines, in minor units.
    pub total_cents: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Where to ship.
    pub shipping_address: Address,
}

/// Event: the order was fulfilled; final (`eip.orders.OrderCompleted`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCompleted {
    /// Event envelope.
    pub metadata: EventMetadata,
}

/// Event: the order will be fulfilled (`eip.orders.OrderConfirmed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderConfirmed {
    /// Event envelope.
    pub metadata: EventMetadata,
    /// The order as confirmed, which its fulfilment saga carries (None in older records).
    pub order: Option<OrderSnapshot>,
}

/// Event: the order was cancelled (`eip.orders.OrderCancelled`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    /// Event envelope.
    pub metadata: EventMetadata,
    /// Why, for people.
    pub reason: String,
}

/// Event: stock is held for an order (`eip.inventory.InventoryReserved`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryReserved {
    /// Event envelope.
    pub metadata: EventMetadata,
    /// The order the stock is held for.
    pub order_id: String,
    /// The reserved lines.
    pub lines: Vec<OrderLine>,
    /// The order as its saga carries it (None in records from before sagas carried it).
    pub order: Option<OrderSnapshot>,
}

/// Event: a SKU's stock after a reservation or a release
/// (`eip.inventory.StockLevelChanged`), keyed by SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLevelChanged {
    /// Event envelope: its aggregate is the SKU, its version the sequence.
    pub metadata: EventMetadata,
    /// Stock keeping unit.
    pub sku: String,
    /// Units that can still be reserved.
    pub available: i64,
    /// Units held for orders.
    pub reserved: i64,
    /// How many reservations and releases changed the SKU's stock so far.
    pub sequence: i64,
    /// The order whose reservation or release changed it.
    pub order_id: String,
}

/// Event: stock could not be held (`eip.inventory.InventoryReservationFailed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryReservationFailed {
    /// Event envelope.
    pub metadata: EventMetadata,
    /// The order that could not be reserved.
    pub order_id: String,
    /// Why, for people.
    pub reason: String,
    /// A stable code, for grouping (`timeout` after the monitor's deadline).
    pub reason_code: Option<String>,
}

/// Event (compensation): held stock was given back (`eip.inventory.InventoryReleased`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryReleased {
    /// Event envelope.
    pub metadata: EventMetadata,
    /// The order whose reservation was released.
    pub order_id: String,
    /// Why, for people.
    pub reason: String,
}

/// Event: payment authorized (`eip.payments.PaymentAuthorized`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentAuthorized {
    /// Event envelope.
    pub metadata: EventMetadata,
    /// The order being paid.
    pub order_id: String,
    /// Authorized amount in minor units.
    pub amount_cents: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// The provider's reference.
    pub authorization_code: String,
    /// The order as its saga carries it (None in records from before sagas carried it).
    pub order: Option<OrderSnapshot>,
}

/// Event: payment refused (`eip.payments.PaymentDeclined`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentDeclined {
    /// Event envelope.
    pub metadata: EventMetadata,
    /// The order whose payment failed.
    pub order_id: String,
    /// The provider's reason.
    pub reason: String,
    /// A stable code, for grouping (`timeout` after the monitor's deadline).
    pub reason_code: Option<String>,
}

/// Event (compensation): payment refunded (`eip.payments.PaymentRefunded`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    /// Event envelope.
    pub metadata: EventMetadata,
    /// The order whose payment was refunded.
    pub order_id: String,
    /// Refunded amount in minor units.
    pub amount_cents: i64,
    /// ISO 4217 currency code.
    pub currency: String,
}

macro_rules! avro_records {
    ($($ty:ident => $name:literal),* $(,)?) => {
        $(impl AvroRecord for $ty {
            const FULL_NAME: &'static str = $name;
        })*
        /// The full names of every message type that has a Rust struct.
        pub const TYPED_MESSAGES: &[&str] = &[$($name),*];
    };
}

avro_records! {
    PlaceOrder => "eip.orders.PlaceOrder",
    CancelOrder => "eip.orders.CancelOrder",
    AddOrderLine => "eip.orders.AddOrderLine",
    RemoveOrderLine => "eip.orders.RemoveOrderLine",
    ConfirmOrder => "eip.orders.ConfirmOrder",
    CompleteOrder => "eip.orders.CompleteOrder",
    OrderLineAdded => "eip.orders.OrderLineAdded",
    OrderLineRemoved => "eip.orders.OrderLineRemoved",
    CommandOutcome => "eip.orders.CommandOutcome",
    OrderPlaced => "eip.orders.OrderPlaced",
    OrderConfirmed => "eip.orders.OrderConfirmed",
    OrderCancelled => "eip.orders.OrderCancelled",
    OrderCompleted => "eip.orders.OrderCompleted",
    InventoryReserved => "eip.inventory.InventoryReserved",
    InventoryReservationFailed => "eip.inventory.InventoryReservationFailed",
    InventoryReleased => "eip.inventory.InventoryReleased",
    StockLevelChanged => "eip.inventory.StockLevelChanged",
    PaymentAuthorized => "eip.payments.PaymentAuthorized",
    PaymentDeclined => "eip.payments.PaymentDeclined",
    PaymentRefunded => "eip.payments.PaymentRefunded",
    OrderSnapshot => "eip.saga.OrderSnapshot",
    CustomerVerified => "eip.customers.CustomerVerified",
    CustomerVerificationFailed => "eip.customers.CustomerVerificationFailed",
    FraudCheckPassed => "eip.fraud.FraudCheckPassed",
    FraudCheckFailed => "eip.fraud.FraudCheckFailed",
    PointsRedeemed => "eip.loyalty.PointsRedeemed",
    PointsRedemptionFailed => "eip.loyalty.PointsRedemptionFailed",
    PointsRestored => "eip.loyalty.PointsRestored",
    ShipmentScheduled => "eip.shipping.ShipmentScheduled",
    ShipmentSchedulingFailed => "eip.shipping.ShipmentSchedulingFailed",
    ShipmentCancelled => "eip.shipping.ShipmentCancelled",
    InvoiceIssued => "eip.invoicing.InvoiceIssued",
    InvoicingFailed => "eip.invoicing.InvoicingFailed",
    InvoiceCredited => "eip.invoicing.InvoiceCredited",
    PaymentCaptured => "eip.payments.PaymentCaptured",
    PaymentCaptureFailed => "eip.payments.PaymentCaptureFailed",
    PaymentVoided => "eip.payments.PaymentVoided",
    CustomerNotified => "eip.notifications.CustomerNotified",
    CustomerNotificationFailed => "eip.notifications.CustomerNotificationFailed",
    OrderCompletionFailed => "eip.orders.OrderCompletionFailed",
    SagaStepTimedOut => "eip.saga.SagaStepTimedOut",
    SagaObservation => "eip.saga.SagaObservation",
}

/// Realistic sample records, for the demo, tests and benchmarks.
pub mod samples {
    use super::*;

    /// An event envelope for `aggregate_id` at `version`, with deterministic ids.
    pub fn event_metadata(aggregate_id: &str, version: i64, seq: u64) -> EventMetadata {
        EventMetadata {
            event_id: format!("evt-{aggregate_id}-{version}-{seq}"),
            correlation_id: format!("corr-{aggregate_id}"),
            causation_id: (version > 1).then(|| format!("evt-{aggregate_id}-{}", version - 1)),
            occurred_at: 1_767_225_600_000 + seq as i64,
            aggregate_id: aggregate_id.to_string(),
            aggregate_version: version,
        }
    }

    /// The `seq`-th sample order: a few lines, varying countries and totals.
    pub fn order_placed(seq: u64) -> OrderPlaced {
        const COUNTRIES: [&str; 4] = ["NL", "DE", "FR", "US"];
        let order_id = format!("order-{seq:08}");
        let line_count = 1 + (seq % 3) as usize;
        let lines: Vec<OrderLine> = (0..line_count)
            .map(|i| OrderLine {
                sku: format!("SKU-{:04}", (seq as usize * 7 + i) % 1000),
                quantity: 1 + ((seq as usize + i) % 4) as i32,
                unit_price_cents: 199 + ((seq as i64 * 13 + i as i64) % 5000),
            })
            .collect();
        let total_cents = lines
            .iter()
            .map(|l| i64::from(l.quantity) * l.unit_price_cents)
            .sum();
        OrderPlaced {
            metadata: event_metadata(&order_id, 1, seq),
            customer_id: format!("customer-{:05}", seq % 10_000),
            lines,
            total_cents,
            currency: "EUR".to_string(),
            shipping_address: Address {
                street: format!("{} Canal Street", seq % 300 + 1),
                city: "Amsterdam".to_string(),
                postal_code: format!("10{:02}AB", seq % 100),
                country: COUNTRIES[(seq % 4) as usize].to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::samples::*;
    use super::*;
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::writer::datum::GenericDatumWriter;

    fn round_trip<T: AvroRecord + PartialEq + std::fmt::Debug>(value: T) {
        let compiled = T::compiled().unwrap();
        let writer = GenericDatumWriter::builder(&compiled.schema)
            .build()
            .unwrap();
        let bytes = writer.write_ser_to_vec(&value).unwrap();
        // The generic path (Value tree, validated against the schema) must agree.
        let generic = GenericDatumReader::builder(&compiled.schema)
            .build()
            .unwrap()
            .read_value(&mut &bytes[..])
            .unwrap();
        assert!(generic.validate(&compiled.schema), "{}", T::FULL_NAME);
        let back: T = apache_avro::from_value(&generic).unwrap();
        assert_eq!(back, value, "{}", T::FULL_NAME);
        let reader = GenericDatumReader::builder(&compiled.schema)
            .build()
            .unwrap();
        let direct: T = reader.read_deser(&mut &bytes[..]).unwrap();
        assert_eq!(direct, value, "{}", T::FULL_NAME);
    }

    fn cmd(id: &str) -> CommandMetadata {
        CommandMetadata {
            command_id: format!("cmd-{id}"),
            correlation_id: format!("corr-{id}"),
            causation_id: None,
            issued_at: 1_767_225_600_000,
            aggregate_id: id.to_string(),
            expected_version: Some(3),
        }
    }

    #[test]
    fn every_typed_message_matches_its_schema() {
        let order = order_placed(7);
        let meta = event_metadata("order-1", 2, 1);
        round_trip(PlaceOrder {
            metadata: cmd("order-1"),
            customer_id: order.customer_id.clone(),
            lines: order.lines.clone(),
            currency: "EUR".into(),
            shipping_address: order.shipping_address.clone(),
        });
        round_trip(CancelOrder {
            metadata: cmd("order-1"),
            reason: "changed my mind".into(),
        });
        round_trip(order.clone());
        round_trip(AddOrderLine {
            metadata: cmd("order-1"),
            line: order.lines[0].clone(),
        });
        round_trip(RemoveOrderLine {
            metadata: cmd("order-1"),
            sku: "SKU-0001".into(),
        });
        round_trip(ConfirmOrder {
            metadata: cmd("order-1"),
        });
        round_trip(OrderLineAdded {
            metadata: meta.clone(),
            line: order.lines[0].clone(),
            total_cents: 1234,
        });
        round_trip(OrderLineRemoved {
            metadata: meta.clone(),
            line: order.lines[0].clone(),
            total_cents: 0,
        });
        round_trip(CommandOutcome {
            command_id: "cmd-1".into(),
            correlation_id: "corr-1".into(),
            aggregate_id: "order-1".into(),
            command: "AddOrderLine".into(),
            accepted: false,
            version: 3,
            reason_code: Some("not_open".into()),
            reason: Some("order-1 is confirmed".into()),
            duplicate: true,
            decided_at: 1_767_225_600_000,
        });
        round_trip(OrderConfirmed {
            metadata: meta.clone(),
            order: None,
        });
        round_trip(CompleteOrder {
            metadata: cmd("order-1"),
        });
        round_trip(OrderCompleted {
            metadata: meta.clone(),
        });
        round_trip(OrderCancelled {
            metadata: meta.clone(),
            reason: "payment declined".into(),
        });
        round_trip(InventoryReserved {
            metadata: meta.clone(),
            order_id: "order-1".into(),
            lines: order.lines.clone(),
            order: None,
        });
        let snapshot = OrderSnapshot {
            customer_id: order.customer_id.clone(),
            lines: order.lines.clone(),
            total_cents: order.total_cents,
            currency: order.currency.clone(),
        };
        round_trip(InventoryReserved {
            metadata: meta.clone(),
            order_id: "order-1".into(),
            lines: order.lines.clone(),
            order: Some(snapshot.clone()),
        });
        round_trip(StockLevelChanged {
            metadata: meta.clone(),
            sku: "SKU-0001".into(),
            available: i64::MAX,
            reserved: i64::MIN,
            sequence: 0,
            order_id: "order-1".into(),
        });
        round_trip(InventoryReservationFailed {
            metadata: meta.clone(),
            order_id: "order-1".into(),
            reason: "SKU-0001 short".into(),
            reason_code: Some("out_of_stock".into()),
        });
        round_trip(InventoryReleased {
            metadata: meta.clone(),
            order_id: "order-1".into(),
            reason: "payment declined".into(),
        });
        round_trip(PaymentAuthorized {
            metadata: meta.clone(),
            order_id: "order-1".into(),
            amount_cents: 1000,
            currency: "EUR".into(),
            authorization_code: "A1".into(),
            order: Some(snapshot.clone()),
        });
        round_trip(PaymentDeclined {
            metadata: meta.clone(),
            order_id: "order-1".into(),
            reason: "insufficient funds".into(),
            reason_code: None,
        });
        saga_round_trips(&meta, &snapshot);
        round_trip(PaymentRefunded {
            metadata: meta,
            order_id: "order-1".into(),
            amount_cents: 1000,
            currency: "EUR".into(),
        });
    }

    #[test]
    fn every_message_schema_has_a_rust_type() {
        let catalog = Catalog::global().unwrap();
        let mut schemas: Vec<&str> = catalog.messages().map(|s| s.full_name.as_str()).collect();
        let mut typed = TYPED_MESSAGES.to_vec();
        schemas.sort();
        typed.sort();
        assert_eq!(schemas, typed);
    }

    #[test]
    fn sample_totals_add_up() {
        for seq in 0..50 {
            let o = order_placed(seq);
            let sum: i64 = o
                .lines
                .iter()
                .map(|l| i64::from(l.quantity) * l.unit_price_cents)
                .sum();
            assert_eq!(o.total_cents, sum);
            assert!(!o.lines.is_empty());
        }
    }

    fn saga_round_trips(meta: &EventMetadata, snapshot: &OrderSnapshot) {
        let m = || meta.clone();
        let o = || "order-1".to_string();
        let order = || snapshot.clone();
        let reference = || "ref-1".to_string();
        round_trip(snapshot.clone());
        round_trip(CustomerVerified {
            metadata: m(),
            order_id: o(),
            order: order(),
            reference: reference(),
        });
        round_trip(FraudCheckPassed {
            metadata: m(),
            order_id: o(),
            order: order(),
            reference: reference(),
        });
        round_trip(PointsRedeemed {
            metadata: m(),
            order_id: o(),
            order: order(),
            reference: reference(),
            points: 12,
        });
        round_trip(ShipmentScheduled {
            metadata: m(),
            order_id: o(),
            order: order(),
            reference: reference(),
        });
        round_trip(InvoiceIssued {
            metadata: m(),
            order_id: o(),
            order: order(),
            reference: reference(),
        });
        round_trip(PaymentCaptured {
            metadata: m(),
            order_id: o(),
            order: order(),
            reference: reference(),
            amount_cents: i64::MAX,
        });
        round_trip(CustomerNotified {
            metadata: m(),
            order_id: o(),
            order: order(),
            reference: reference(),
        });
        let why = || "injected".to_string();
        let code = || Some("timeout".to_string());
        round_trip(CustomerVerificationFailed {
            metadata: m(),
            order_id: o(),
            reason: why(),
            reason_code: code(),
        });
        round_trip(FraudCheckFailed {
            metadata: m(),
            order_id: o(),
            reason: why(),
            reason_code: None,
        });
        round_trip(PointsRedemptionFailed {
            metadata: m(),
            order_id: o(),
            reason: why(),
            reason_code: code(),
        });
        round_trip(ShipmentSchedulingFailed {
            metadata: m(),
            order_id: o(),
            reason: why(),
            reason_code: code(),
        });
        round_trip(InvoicingFailed {
            metadata: m(),
            order_id: o(),
            reason: why(),
            reason_code: code(),
        });
        round_trip(PaymentCaptureFailed {
            metadata: m(),
            order_id: o(),
            reason: why(),
            reason_code: code(),
        });
        round_trip(CustomerNotificationFailed {
            metadata: m(),
            order_id: o(),
            reason: why(),
            reason_code: code(),
        });
        round_trip(OrderCompletionFailed {
            metadata: m(),
            order_id: o(),
            reason: why(),
            reason_code: code(),
        });
        round_trip(PointsRestored {
            metadata: m(),
            order_id: o(),
            reason: why(),
        });
        round_trip(ShipmentCancelled {
            metadata: m(),
            order_id: o(),
            reason: why(),
        });
        round_trip(InvoiceCredited {
            metadata: m(),
            order_id: o(),
            reason: why(),
        });
        round_trip(PaymentVoided {
            metadata: m(),
            order_id: o(),
            reason: why(),
        });
        round_trip(SagaStepTimedOut {
            metadata: m(),
            order_id: o(),
            saga: "order_fulfilment".into(),
            step: "inventory_reserved".into(),
            deadline: i64::MIN,
            reason: Some("compensation started by ops@example: \u{1F4A5}".into()),
            reason_code: Some("operator".into()),
        });
        round_trip(SagaObservation {
            saga_id: o(),
            event_type: "eip.inventory.InventoryReserved".into(),
            event_id: "e-1".into(),
            correlation_id: "c-1".into(),
            causation_id: None,
            occurred_at: 1,
            topic: "saga-inventory".into(),
            partition: i32::MAX,
            offset: i64::MAX,
            reason: None,
            reason_code: Some("timeout".into()),
            step: Some("inventory_reserved".into()),
            actor: Some("alice".into()),
        });
    }
}
