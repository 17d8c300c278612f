//! The order aggregate, pure: [`handle`] decides a command against the current state and
//! returns the one event it causes or a [`Rejection`]; [`apply`] folds an event into the
//! state. Neither does I/O or reads a clock (the time comes in with the command), so a state
//! rebuilt from a snapshot plus its tail equals one rebuilt from the whole history, and every
//! rule is tested given/when/then.
//!
//! The rules:
//! - `PlaceOrder` creates an order: it must not exist yet, has at least one line, every
//!   quantity is more than 0, no price is negative, no SKU appears twice, the customer is
//!   named and the currency is a three-letter code.
//! - `AddOrderLine` and `RemoveOrderLine` change an open order (placed, neither confirmed nor
//!   cancelled). An added SKU must be new to the order; a removed one must be on it, and the
//!   last line can't be removed.
//! - `ConfirmOrder` confirms an open order. `CancelOrder` cancels an open or confirmed order,
//!   with a reason (a completed one can't be: `already_completed`).
//! - `CompleteOrder` marks a confirmed order completed once it is fulfilled (its saga's last
//!   step): an open order is `not_confirmed`, a cancelled one `already_cancelled`, and a
//!   completed one `already_completed`. Completed is final.
//! - A command's `expected_version`, when given, must be the order's version (0 when the
//!   order does not exist): otherwise it is a `version_conflict`.
//! - Every id (order, customer, SKU) is valid by `eip_schemas::limits`, the definition the
//!   read side shares: not empty, at most `MAX_ID_BYTES` bytes (`bad_order_id`,
//!   `bad_customer`, `bad_sku`).
//! - No amount passes the 64-bit limit: a line's quantity × unit price and the order's total
//!   are computed with checked arithmetic, and a command that would overflow either is
//!   `amount_too_large`, never capped.

use eip_schemas::limits::id_problem;
use eip_schemas::types::{
    AddOrderLine, Address, CancelOrder, CommandMetadata, CompleteOrder, ConfirmOrder,
    EventMetadata, OrderCancelled, OrderCompleted, OrderConfirmed, OrderLine, OrderLineAdded,
    OrderLineRemoved, OrderPlaced, OrderSnapshot, PlaceOrder, RemoveOrderLine,
};
use serde::{Deserialize, Serialize};

/// A command addressed to an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Create the order.
    Place(PlaceOrder),
    /// Add a line.
    AddLine(AddOrderLine),
    /// Remove a line.
    RemoveLine(RemoveOrderLine),
    /// Confirm.
    Confirm(ConfirmOrder),
    /// Cancel.
    Cancel(CancelOrder),
    /// Mark completed.
    Complete(CompleteOrder),
}

impl Command {
    /// The command's envelope.
    pub fn metadata(&self) -> &CommandMetadata {
        match self {
            Command::Place(c) => &c.metadata,
            Command::AddLine(c) => &c.metadata,
            Command::RemoveLine(c) => &c.metadata,
            Command::Confirm(c) => &c.metadata,
            Command::Cancel(c) => &c.metadata,
            Command::Complete(c) => &c.metadata,
        }
    }

    /// The command's type name, as outcomes report it.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Place(_) => "PlaceOrder",
            Command::AddLine(_) => "AddOrderLine",
            Command::RemoveLine(_) => "RemoveOrderLine",
            Command::Confirm(_) => "ConfirmOrder",
            Command::Cancel(_) => "CancelOrder",
            Command::Complete(_) => "CompleteOrder",
        }
    }
}

/// An event in an order's history: the message type of `eip_schemas::order_events`, which
/// every reader of order events shares.
pub use eip_schemas::order_events::OrderEvent as Event;

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Placed: lines may still change.
    Open,
    /// Confirmed: it will be fulfilled.
    Confirmed,
    /// Cancelled: final.
    Cancelled,
    /// Completed (fulfilled): final.
    Completed,
}

impl Status {
    /// The status as views and outcomes spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Confirmed => "confirmed",
            Status::Cancelled => "cancelled",
            Status::Completed => "completed",
        }
    }
}

/// An order's state: everything its events say, folded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The order id (the aggregate id).
    pub id: String,
    /// The ordering customer.
    pub customer_id: String,
    /// ISO 4217 currency of every price.
    pub currency: String,
    /// Where to ship.
    pub shipping_address: Address,
    /// The lines, in the order they were added.
    pub lines: Vec<OrderLine>,
    /// Sum over the lines, in minor units.
    pub total_cents: i64,
    /// Where the order stands.
    pub status: Status,
    /// The version of the last event applied; the first event is version 1.
    pub version: i64,
    /// When the order was placed (ms since the Unix epoch).
    pub placed_at: i64,
    /// When the last event happened (ms since the Unix epoch).
    pub updated_at: i64,
}

/// Why a command was refused: a stable code for programs and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// A stable code, e.g. `version_conflict`.
    pub code: &'static str,
    /// Why, for people.
    pub reason: String,
}

fn reject(code: &'static str, reason: impl Into<String>) -> Rejection {
    Rejection {
        code,
        reason: reason.into(),
    }
}

/// Every rejection code [`handle`] can return.
pub const REJECTION_CODES: &[&str] = &[
    "already_exists",
    "unknown_order",
    "version_conflict",
    "empty_order",
    "bad_quantity",
    "bad_price",
    "duplicate_sku",
    "unknown_line",
    "last_line",
    "bad_customer",
    "bad_currency",
    "not_open",
    "already_cancelled",
    "already_completed",
    "not_confirmed",
    "missing_reason",
    "bad_order_id",
    "bad_sku",
    "amount_too_large",
    // Given by the processor, not by `handle`: the event would not fit in its topic.
    "too_large",
];

/// The sum over `lines` of quantity × unit price, or `amount_too_large` when a product or the
/// sum passes `i64::MAX` minor units.
fn total(lines: &[OrderLine]) -> Result<i64, Rejection> {
    lines.iter().try_fold(0i64, |sum, l| {
        i64::from(l.quantity)
            .checked_mul(l.unit_price_cents)
            .and_then(|amount| sum.checked_add(amount))
            .ok_or_else(|| {
                reject(
                    "amount_too_large",
                    format!(
                        "with {} × {} for {}, the order's total would pass {} minor units",
                        l.quantity,
                        l.unit_price_cents,
                        l.sku,
                        i64::MAX
                    ),
                )
            })
    })
}

fn check_line(line: &OrderLine) -> Result<(), Rejection> {
    if let Some(problem) = id_problem(&line.sku) {
        return Err(reject("bad_sku", format!("a line's sku {problem}")));
    }
    if line.quantity <= 0 {
        return Err(reject(
            "bad_quantity",
            format!(
                "{}: quantity {} is not more than 0",
                line.sku, line.quantity
            ),
        ));
    }
    if line.unit_price_cents < 0 {
        return Err(reject(
            "bad_price",
            format!(
                "{}: unit price {} is negative",
                line.sku, line.unit_price_cents
            ),
        ));
    }
    Ok(())
}

fn open(order: Option<&Order>, id: &str) -> Result<Order, Rejection> {
    let order = order.ok_or_else(|| reject("unknown_order", format!("no order {id}")))?;
    if order.status != Status::Open {
        return Err(reject(
            "not_open",
            format!("{id} is {}: its lines can't change", order.status.as_str()),
        ));
    }
    Ok(order.clone())
}

/// Decides `command` against `order` (None when it does not exist yet): the event it causes,
/// stamped with `now_ms`, or why it is refused.
pub fn handle(order: Option<&Order>, command: &Command, now_ms: i64) -> Result<Event, Rejection> {
    let meta = command.metadata();
    let id = meta.aggregate_id.as_str();
    if let Some(problem) = id_problem(id) {
        return Err(reject("bad_order_id", format!("the order id {problem}")));
    }
    let current = order.map_or(0, |o| o.version);
    if let Some(expected) = meta.expected_version
        && expected != current
    {
        return Err(reject(
            "version_conflict",
            format!("{id} is at version {current}, the command expected {expected}"),
        ));
    }
    let event_meta = EventMetadata {
        event_id: format!("{id}@{}", current + 1),
        correlation_id: meta.correlation_id.clone(),
        causation_id: Some(meta.command_id.clone()),
        occurred_at: now_ms,
        aggregate_id: id.to_string(),
        aggregate_version: current + 1,
    };
    match command {
        Command::Place(c) => {
            if order.is_some() {
                return Err(reject("already_exists", format!("{id} exists")));
            }
            if c.customer_id.trim().is_empty() {
                return Err(reject("bad_customer", "no customer id"));
            }
            if let Some(problem) = id_problem(&c.customer_id) {
                return Err(reject("bad_customer", format!("the customer id {problem}")));
            }
            if c.currency.len() != 3 || !c.currency.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(reject(
                    "bad_currency",
                    format!("{:?} is not an ISO 4217 code", c.currency),
                ));
            }
            if c.lines.is_empty() {
                return Err(reject("empty_order", "an order needs at least one line"));
            }
            for (i, line) in c.lines.iter().enumerate() {
                check_line(line)?;
                if c.lines[..i].iter().any(|l| l.sku == line.sku) {
                    return Err(reject(
                        "duplicate_sku",
                        format!("{} is on two lines", line.sku),
                    ));
                }
            }
            Ok(Event::Placed(OrderPlaced {
                metadata: event_meta,
                customer_id: c.customer_id.clone(),
                lines: c.lines.clone(),
                total_cents: total(&c.lines)?,
                currency: c.currency.clone(),
                shipping_address: c.shipping_address.clone(),
            }))
        }
        Command::AddLine(c) => {
            let mut o = open(order, id)?;
            check_line(&c.line)?;
            if o.lines.iter().any(|l| l.sku == c.line.sku) {
                return Err(reject(
                    "duplicate_sku",
                    format!("{} is already on {id}", c.line.sku),
                ));
            }
            o.lines.push(c.line.clone());
            Ok(Event::LineAdded(OrderLineAdded {
                metadata: event_meta,
                line: c.line.clone(),
                total_cents: total(&o.lines)?,
            }))
        }
        Command::RemoveLine(c) => {
            let mut o = open(order, id)?;
            let Some(at) = o.lines.iter().position(|l| l.sku == c.sku) else {
                return Err(reject("unknown_line", format!("{} is not on {id}", c.sku)));
            };
            if o.lines.len() == 1 {
                return Err(reject(
                    "last_line",
                    format!(
                        "{} is the last line of {id}: cancel the order instead",
                        c.sku
                    ),
                ));
            }
            let line = o.lines.remove(at);
            // The rest of an order whose total fit still fits.
            let total_cents = total(&o.lines)?;
            Ok(Event::LineRemoved(OrderLineRemoved {
                metadata: event_meta,
                line,
                total_cents,
            }))
        }
        Command::Confirm(_) => {
            let o = open(order, id)?;
            Ok(Event::Confirmed(OrderConfirmed {
                metadata: event_meta,
                order: Some(OrderSnapshot {
                    customer_id: o.customer_id,
                    lines: o.lines,
                    total_cents: o.total_cents,
                    currency: o.currency,
                }),
            }))
        }
        Command::Cancel(c) => {
            let o = order.ok_or_else(|| reject("unknown_order", format!("no order {id}")))?;
            if o.status == Status::Cancelled {
                return Err(reject("already_cancelled", format!("{id} is cancelled")));
            }
            if o.status == Status::Completed {
                return Err(reject(
                    "already_completed",
                    format!("{id} is completed: it can't be cancelled"),
                ));
            }
            if c.reason.trim().is_empty() {
                return Err(reject("missing_reason", "a cancellation needs a reason"));
            }
            Ok(Event::Cancelled(OrderCancelled {
                metadata: event_meta,
                reason: c.reason.clone(),
            }))
        }
        Command::Complete(_) => {
            let o = order.ok_or_else(|| reject("unknown_order", format!("no order {id}")))?;
            match o.status {
                Status::Confirmed => Ok(Event::Completed(OrderCompleted {
                    metadata: event_meta,
                })),
                Status::Open => Err(reject(
                    "not_confirmed",
                    format!("{id} is open: only a confirmed order can be completed"),
                )),
                Status::Cancelled => Err(reject("already_cancelled", format!("{id} is cancelled"))),
                Status::Completed => Err(reject("already_completed", format!("{id} is completed"))),
            }
        }
    }
}

/// Folds `event` into `order`. Events are facts: this never refuses one. An event that does
/// not follow the order's version is a caller's bug, which [`crate::store`] rules out by
/// applying only version + 1.
pub fn apply(order: Option<Order>, event: &Event) -> Order {
    let meta = event.metadata();
    let mut o = match (order, event) {
        (_, Event::Placed(e)) => Order {
            id: meta.aggregate_id.clone(),
            customer_id: e.customer_id.clone(),
            currency: e.currency.clone(),
            shipping_address: e.shipping_address.clone(),
            lines: e.lines.clone(),
            total_cents: e.total_cents,
            status: Status::Open,
            version: 0,
            placed_at: meta.occurred_at,
            updated_at: meta.occurred_at,
        },
        (Some(o), _) => o,
        // A change to an order never placed: keep what the event says, so nothing is lost.
        (None, _) => Order {
            id: meta.aggregate_id.clone(),
            customer_id: String::new(),
            currency: String::new(),
            shipping_address: Address {
                street: String::new(),
                city: String::new(),
                postal_code: String::new(),
                country: String::new(),
            },
            lines: Vec::new(),
            total_cents: 0,
            status: Status::Open,
            version: 0,
            placed_at: meta.occurred_at,
            updated_at: meta.occurred_at,
        },
    };
    match event {
        Event::Placed(_) => {}
        Event::LineAdded(e) => {
            o.lines.push(e.line.clone());
            o.total_cents = e.total_cents;
        }
        Event::LineRemoved(e) => {
            o.lines.retain(|l| l.sku != e.line.sku);
            o.total_cents = e.total_cents;
        }
        Event::Confirmed(_) => o.status = Status::Confirmed,
        Event::Cancelled(_) => o.status = Status::Cancelled,
        Event::Completed(_) => o.status = Status::Completed,
    }
    o.version = meta.aggregate_version;
    o.updated_at = meta.occurred_at;
    o
}

/// Folds a whole history, in order.
pub fn replay<'a>(
    from: Option<Order>,
    events: impl IntoIterator<Item = &'a Event>,
) -> Option<Order> {
    events.into_iter().fold(from, |o, e| Some(apply(o, e)))
}

#[cfg(test)]
#[path = "aggregate_tests.rs"]
mod tests;
