//! Rust types for the saga's messages (`schemas/avro/{saga,customers,fraud,loyalty,shipping,
//! invoicing,payments,notifications,orders}`): each participant's step events, the monitor's
//! timeout and its observation. Like [`crate::types`], each struct mirrors its `.avsc` file,
//! and the round-trip test in `types.rs` checks every one against its schema.

use serde::{Deserialize, Serialize};

use crate::types::{EventMetadata, OrderLine};

/// The order as its saga carries it (`eip.saga.OrderSnapshot`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSnapshot {
    /// The ordering customer.
    pub customer_id: String,
    /// What was ordered.
    pub lines: Vec<OrderLine>,
    /// Sum over the lines, in minor units.
    pub total_cents: i64,
    /// ISO 4217 currency code.
    pub currency: String,
}

macro_rules! step_done {
    ($($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident: $ty:ty),* })*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        pub struct $name {
            /// Event envelope.
            pub metadata: EventMetadata,
            /// The order (also the saga id).
            pub order_id: String,
            /// The order, carried along the saga.
            pub order: OrderSnapshot,
            /// The participant's reference for what it did.
            pub reference: String,
            $($(#[$fdoc])* pub $field: $ty,)*
        }
    )*};
}

step_done! {
    /// Event: the customer may order (`eip.customers.CustomerVerified`).
    CustomerVerified {}
    /// Event: the order passed the fraud check (`eip.fraud.FraudCheckPassed`).
    FraudCheckPassed {}
    /// Event: points were taken from the customer's balance (`eip.loyalty.PointsRedeemed`).
    PointsRedeemed {
        /// Points taken from the balance.
        points: i64
    }
    /// Event: a shipment was booked (`eip.shipping.ShipmentScheduled`).
    ShipmentScheduled {}
    /// Event: an invoice was issued (`eip.invoicing.InvoiceIssued`).
    InvoiceIssued {}
    /// Event: the authorized payment was captured (`eip.payments.PaymentCaptured`).
    PaymentCaptured {
        /// Captured amount in minor units.
        amount_cents: i64
    }
    /// Event: the customer was told (`eip.notifications.CustomerNotified`).
    CustomerNotified {}
}

macro_rules! step_failed {
    ($($(#[$doc:meta])* $name:ident)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        pub struct $name {
            /// Event envelope.
            pub metadata: EventMetadata,
            /// The order (also the saga id).
            pub order_id: String,
            /// Why, for people.
            pub reason: String,
            /// A stable code, for grouping (`timeout` after the monitor's deadline).
            pub reason_code: Option<String>,
        }
    )*};
}

step_failed! {
    /// Event: the customer could not be verified (`eip.customers.CustomerVerificationFailed`).
    CustomerVerificationFailed
    /// Event: the order failed the fraud check (`eip.fraud.FraudCheckFailed`).
    FraudCheckFailed
    /// Event: the points could not be redeemed (`eip.loyalty.PointsRedemptionFailed`).
    PointsRedemptionFailed
    /// Event: no shipment could be booked (`eip.shipping.ShipmentSchedulingFailed`).
    ShipmentSchedulingFailed
    /// Event: no invoice could be issued (`eip.invoicing.InvoicingFailed`).
    InvoicingFailed
    /// Event: the payment could not be captured (`eip.payments.PaymentCaptureFailed`).
    PaymentCaptureFailed
    /// Event: the customer could not be told (`eip.notifications.CustomerNotificationFailed`).
    CustomerNotificationFailed
    /// Event: the order could not be completed (`eip.orders.OrderCompletionFailed`).
    OrderCompletionFailed
}

macro_rules! step_undone {
    ($($(#[$doc:meta])* $name:ident)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        pub struct $name {
            /// Event envelope.
            pub metadata: EventMetadata,
            /// The order (also the saga id).
            pub order_id: String,
            /// Why, for people.
            pub reason: String,
        }
    )*};
}

step_undone! {
    /// Compensation: the points are back on the balance (`eip.loyalty.PointsRestored`).
    PointsRestored
    /// Compensation: the shipment booking was cancelled (`eip.shipping.ShipmentCancelled`).
    ShipmentCancelled
    /// Compensation: the invoice was credited (`eip.invoicing.InvoiceCredited`).
    InvoiceCredited
    /// Compensation: the authorization was voided (`eip.payments.PaymentVoided`).
    PaymentVoided
}

/// The monitor saw a step's deadline pass (`eip.saga.SagaStepTimedOut`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaStepTimedOut {
    /// Event envelope; its id is the same however often the deadline is seen to pass.
    pub metadata: EventMetadata,
    /// The order (also the saga id).
    pub order_id: String,
    /// The saga definition's name.
    pub saga: String,
    /// The step whose deadline passed.
    pub step: String,
    /// The deadline, in milliseconds since the Unix epoch.
    pub deadline: i64,
    /// Why, when an operator asked for the step to fail (start compensation); None for a
    /// deadline.
    pub reason: Option<String>,
    /// `operator` when an operator started the compensation; None for a deadline.
    pub reason_code: Option<String>,
}

/// An event of a saga as the monitor saw it, re-keyed by saga id
/// (`eip.saga.SagaObservation`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaObservation {
    /// The saga (the order id).
    pub saga_id: String,
    /// The event's full Avro name.
    pub event_type: String,
    /// The event's id; the monitor de-duplicates on it.
    pub event_id: String,
    /// The event's correlation id.
    pub correlation_id: String,
    /// What caused the event, if it says.
    pub causation_id: Option<String>,
    /// When the event happened, ms since the Unix epoch.
    pub occurred_at: i64,
    /// Where it was published.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// A failure's or compensation's reason.
    pub reason: Option<String>,
    /// A failure's stable code.
    pub reason_code: Option<String>,
    /// For a timeout or an operator action: the step it is about.
    pub step: Option<String>,
    /// For an operator action: who did it.
    pub actor: Option<String>,
}
