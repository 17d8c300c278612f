//! What each participant does, pure: given the resources an action touches (stock per SKU,
//! a customer's points, an order's payment, ...) and the saga's order, decide the outcome and
//! change the resources. No I/O, no clock: the store loads the resources and saves them with
//! the decision in one transaction (see [`crate::participant_store`]), and the tests here are
//! given/when/then.
//!
//! An action is named by the event it publishes, so a participant's behaviour follows the
//! definition file: the step whose completion is `eip.inventory.InventoryReserved` reserves
//! stock, the compensation `eip.inventory.InventoryReleased` gives it back, and so on.
//!
//! The rules:
//! - **inventory**: every line is reserved or none is (`out_of_stock` names the SKU); a SKU
//!   starts with `initial_stock` units. Release gives back exactly what was held, once.
//! - **payments**: an amount over `payment_limit_cents` is declined (`over_limit`). Capture
//!   takes what was authorized; refund gives back what was captured; void closes an
//!   authorization (nothing is charged after it).
//! - **loyalty**: an order redeems one point per 10.00 of its total (`total_cents / 1000`);
//!   a customer starts with `initial_points`, and a balance too low fails the step
//!   (`insufficient_points`). Restore gives back exactly what was redeemed, once.
//! - **fraud**: an order over `fraud_limit_cents` fails (`fraud_suspected`).
//! - every action first checks the injected failure rate: a saga's step fails with
//!   `injected` when a hash of (saga, step) falls under it, the same way every time, so a
//!   redelivery decides the same.

use std::collections::BTreeMap;

use eip_schemas::types::OrderSnapshot;
use serde::{Deserialize, Serialize};

/// A step a participant performs, by the event it publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Perform {
    /// `eip.customers.CustomerVerified`.
    VerifyCustomer,
    /// `eip.fraud.FraudCheckPassed`.
    CheckFraud,
    /// `eip.inventory.InventoryReserved`.
    ReserveStock,
    /// `eip.payments.PaymentAuthorized`.
    AuthorizePayment,
    /// `eip.loyalty.PointsRedeemed`.
    RedeemPoints,
    /// `eip.shipping.ShipmentScheduled`.
    ScheduleShipment,
    /// `eip.invoicing.InvoiceIssued`.
    IssueInvoice,
    /// `eip.payments.PaymentCaptured`.
    CapturePayment,
    /// `eip.notifications.CustomerNotified`.
    NotifyCustomer,
    /// `eip.orders.OrderCompleted`: a `CompleteOrder` command to the orders aggregate.
    CompleteOrder,
}

impl Perform {
    /// The action that publishes `completed_by`.
    pub fn of(completed_by: &str) -> Option<Perform> {
        Some(match completed_by {
            "eip.customers.CustomerVerified" => Perform::VerifyCustomer,
            "eip.fraud.FraudCheckPassed" => Perform::CheckFraud,
            "eip.inventory.InventoryReserved" => Perform::ReserveStock,
            "eip.payments.PaymentAuthorized" => Perform::AuthorizePayment,
            "eip.loyalty.PointsRedeemed" => Perform::RedeemPoints,
            "eip.shipping.ShipmentScheduled" => Perform::ScheduleShipment,
            "eip.invoicing.InvoiceIssued" => Perform::IssueInvoice,
            "eip.payments.PaymentCaptured" => Perform::CapturePayment,
            "eip.notifications.CustomerNotified" => Perform::NotifyCustomer,
            "eip.orders.OrderCompleted" => Perform::CompleteOrder,
            _ => return None,
        })
    }
}

/// A compensation a participant performs, by the event it publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Undo {
    /// `eip.inventory.InventoryReleased`.
    ReleaseStock,
    /// `eip.payments.PaymentVoided`.
    VoidPayment,
    /// `eip.loyalty.PointsRestored`.
    RestorePoints,
    /// `eip.shipping.ShipmentCancelled`.
    CancelShipment,
    /// `eip.invoicing.InvoiceCredited`.
    CreditInvoice,
    /// `eip.payments.PaymentRefunded`.
    RefundPayment,
    /// `eip.orders.OrderCancelled`: a `CancelOrder` command to the orders aggregate.
    CancelOrder,
}

impl Undo {
    /// The compensation that publishes `compensated_by`.
    pub fn of(compensated_by: &str) -> Option<Undo> {
        Some(match compensated_by {
            "eip.inventory.InventoryReleased" => Undo::ReleaseStock,
            "eip.payments.PaymentVoided" => Undo::VoidPayment,
            "eip.loyalty.PointsRestored" => Undo::RestorePoints,
            "eip.shipping.ShipmentCancelled" => Undo::CancelShipment,
            "eip.invoicing.InvoiceCredited" => Undo::CreditInvoice,
            "eip.payments.PaymentRefunded" => Undo::RefundPayment,
            "eip.orders.OrderCancelled" => Undo::CancelOrder,
            _ => return None,
        })
    }
}

/// The rules' numbers, from the participant's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The share of sagas (0 to 1) whose steps of this participant fail by injection.
    pub fail_rate: f64,
    /// Units of a SKU never seen before.
    pub initial_stock: i64,
    /// Points of a customer never seen before.
    pub initial_points: i64,
    /// The largest amount a payment may be, in minor units.
    pub payment_limit_cents: i64,
    /// Orders above this total fail the fraud check, in minor units.
    pub fraud_limit_cents: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            fail_rate: 0.0,
            initial_stock: 1_000_000,
            initial_points: 1_000_000,
            payment_limit_cents: 100_000_000,
            fraud_limit_cents: 50_000_000,
        }
    }
}

/// One SKU's stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stock {
    /// Units that can be reserved.
    pub available: i64,
    /// Units held for orders.
    pub reserved: i64,
    /// How many decisions changed this SKU's stock: each reservation and each release adds
    /// one, so the newest level of a SKU has the highest, whatever order its events are read
    /// in (the inventory-levels view keeps the highest).
    pub changes: i64,
}

/// An order's payment.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Payment {
    /// Authorized amount.
    pub authorized_cents: i64,
    /// Captured amount.
    pub captured_cents: i64,
    /// Refunded amount.
    pub refunded_cents: i64,
    /// True once the authorization was voided.
    pub voided: bool,
}

/// What an action reads and changes, loaded by the store for the keys it touches.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resources {
    /// Stock of the order's SKUs (missing: never seen, starts at `initial_stock`).
    pub stock: BTreeMap<String, Stock>,
    /// What is held for this order, by SKU (None: nothing).
    pub reservation: Option<BTreeMap<String, i64>>,
    /// The customer's points balance (None: never seen).
    pub balance: Option<i64>,
    /// Points redeemed for this order and not restored (None: none).
    pub redemption: Option<i64>,
    /// This order's payment (None: none).
    pub payment: Option<Payment>,
}

/// An action's outcome: what the participant publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// The step completed.
    Completed {
        /// The participant's reference for it.
        reference: String,
        /// Points redeemed, or the amount authorized or captured (0 when neither).
        amount: i64,
    },
    /// The step failed.
    Failed {
        /// A stable code.
        code: String,
        /// Why, for people.
        reason: String,
    },
    /// The step was undone.
    Compensated {
        /// Why, for people.
        reason: String,
    },
}

fn failed(code: &str, reason: impl Into<String>) -> Decision {
    Decision::Failed {
        code: code.into(),
        reason: reason.into(),
    }
}

/// True when (saga, step) falls under `rate`: a stable hash (FNV-1a) mapped to [0, 1).
pub fn injected(saga: &str, step: &str, rate: f64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in saga.bytes().chain([0]).chain(step.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ((h >> 11) as f64 / (1u64 << 53) as f64) < rate
}

/// The points an order redeems: one per 10.00 of its total.
pub fn points_for(total_cents: i64) -> i64 {
    total_cents.max(0) / 1_000
}

/// Performs `action` for the saga `saga` at step `step`, on `order`.
pub fn perform(
    action: Perform,
    policy: &Policy,
    res: &mut Resources,
    saga: &str,
    step: &str,
    order: &OrderSnapshot,
) -> Decision {
    if injected(saga, step, policy.fail_rate) {
        return failed(
            "injected",
            format!("injected failure (fail_rate {})", policy.fail_rate),
        );
    }
    let done = |reference: String, amount: i64| Decision::Completed { reference, amount };
    match action {
        Action::VerifyCustomer => done(format!("customer {}", order.customer_id), 0),
        Action::CheckFraud => {
            if order.total_cents > policy.fraud_limit_cents {
                failed(
                    "fraud_suspected",
                    format!(
                        "total {} is over the fraud limit {}",
                        order.total_cents, policy.fraud_limit_cents
                    ),
                )
            } else {
                done("score 0".into(), 0)
            }
        }
        Action::ReserveStock => reserve(policy, res, order),
        Action::AuthorizePayment => {
            if order.total_cents > policy.payment_limit_cents {
                return failed(
                    "over_limit",
                    format!(
                        "{} {} is over the payment limit {}",
                        order.total_cents, order.currency, policy.payment_limit_cents
                    ),
                );
            }
            res.payment = Some(Payment {
                authorized_cents: order.total_cents,
                ..Payment::default()
            });
            done(format!("AUTH-{saga}"), order.total_cents)
        }
        Action::RedeemPoints => {
            let want = points_for(order.total_cents);
            let balance = res.balance.unwrap_or(policy.initial_points);
            if balance < want {
                return failed(
                    "insufficient_points",
                    format!(
                        "{} has {balance} points, the order needs {want}",
                        order.customer_id
                    ),
                );
            }
            res.balance = Some(balance - want);
            res.redemption = Some(want);
            done(format!("points {want}"), want)
        }
        Action::ScheduleShipment => done(format!("SHP-{saga}"), 0),
        Action::IssueInvoice => done(format!("INV-{saga}"), 0),
        Action::CapturePayment => match &mut res.payment {
            // An order of 0.00 is authorized for 0 and captured for 0.
            Some(p) if !p.voided => {
                p.captured_cents = p.authorized_cents;
                done(format!("CAP-{saga}"), p.captured_cents)
            }
            _ => failed(
                "not_authorized",
                "there is no open authorization to capture",
            ),
        },
        Action::NotifyCustomer => done(format!("mail to {}", order.customer_id), 0),
        Action::CompleteOrder => done(format!("CompleteOrder {saga}"), 0),
    }
}

use Perform as Action;

fn reserve(policy: &Policy, res: &mut Resources, order: &OrderSnapshot) -> Decision {
    let mut next = res.stock.clone();
    let mut held: BTreeMap<String, i64> = BTreeMap::new();
    for line in &order.lines {
        let want = i64::from(line.quantity.max(0));
        let stock = next.entry(line.sku.clone()).or_insert(Stock {
            available: policy.initial_stock,
            reserved: 0,
            changes: 0,
        });
        if stock.available < want {
            return failed(
                "out_of_stock",
                format!("{}: {} available, {want} wanted", line.sku, stock.available),
            );
        }
        stock.available -= want;
        stock.reserved = stock.reserved.saturating_add(want);
        *held.entry(line.sku.clone()).or_default() += want;
    }
    for sku in held.keys() {
        if let Some(s) = next.get_mut(sku) {
            s.changes = s.changes.saturating_add(1);
        }
    }
    res.stock = next;
    res.reservation = Some(held);
    Decision::Completed {
        reference: format!("{} lines held", order.lines.len()),
        amount: 0,
    }
}

/// Undoes `undo` for the saga `saga`: gives back exactly what is held for it, once (a second
/// call finds nothing held and changes nothing). The decision's text says what was undone.
pub fn compensate(undo: Undo, res: &mut Resources, saga: &str) -> Decision {
    let compensated = |what: String| Decision::Compensated { reason: what };
    match undo {
        Undo::ReleaseStock => match res.reservation.take() {
            Some(held) => {
                for (sku, n) in &held {
                    if let Some(s) = res.stock.get_mut(sku) {
                        s.available = s.available.saturating_add(*n);
                        s.reserved -= n;
                        s.changes = s.changes.saturating_add(1);
                    }
                }
                res.reservation = Some(BTreeMap::new());
                compensated(format!("released {} SKUs", held.len()))
            }
            None => compensated("nothing was held".into()),
        },
        Undo::VoidPayment => match &mut res.payment {
            Some(p) => {
                p.voided = true;
                compensated(format!("authorization AUTH-{saga} voided"))
            }
            None => compensated("nothing was authorized".into()),
        },
        Undo::RefundPayment => match &mut res.payment {
            Some(p) if p.captured_cents > p.refunded_cents => {
                let n = p.captured_cents - p.refunded_cents;
                p.refunded_cents = p.captured_cents;
                compensated(format!("refunded {n}"))
            }
            _ => compensated("nothing was captured".into()),
        },
        Undo::RestorePoints => match res.redemption.take() {
            Some(n) => {
                res.balance = Some(res.balance.unwrap_or(0).saturating_add(n));
                res.redemption = Some(0);
                compensated(format!("restored {n} points"))
            }
            None => compensated("no points were redeemed".into()),
        },
        Undo::CancelShipment => compensated(format!("shipment SHP-{saga} cancelled")),
        Undo::CreditInvoice => compensated(format!("invoice INV-{saga} credited")),
        Undo::CancelOrder => compensated(format!("CancelOrder {saga}")),
    }
}

#[cfg(test)]
#[path = "actions_tests.rs"]
mod tests;

/// Where a saga would fail by injection alone: the index of the first step whose role's
/// `fail_rate` (from `rates`, by role) injects a failure for this saga, or None when every
/// step passes. The demo's expectation uses it, with limits and stock large enough that only
/// injection fails a step.
pub fn injected_failure(
    def: &crate::definition::Definition,
    rates: &std::collections::BTreeMap<String, f64>,
    saga: &str,
) -> Option<usize> {
    def.steps.iter().position(|s| {
        let rate = rates.get(&s.participant).copied().unwrap_or(0.0);
        injected(saga, &s.name, rate)
    })
}
