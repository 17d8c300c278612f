//! The projection, pure: an order event folded into the order's view, and a command outcome
//! turned into its status. No I/O and no clock, so the property tests can replay any history
//! any number of times.
//!
//! **Effectively once.** An order's events carry consecutive versions. [`fold`] applies an
//! event only at the view's version + 1, reports one at or below it as a [`Step::Duplicate`]
//! (changing nothing), and one beyond it as a [`Step::Gap`]. Every row of every view is a
//! function of the order's view alone ([`eip_store::views::order_rows`]): product sales are
//! the confirmed order's current contribution, never an increment. So replaying any prefix of
//! the events any number of times, in any order that keeps each order's order, leaves the
//! same rows.

use eip_schemas::order_events::OrderEvent as Event;
use eip_schemas::types::{CommandOutcome, OrderLine};
use eip_store::views::{LineView, OrderView, OutcomeView};

/// What an event did to an order's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The event was the next version: the view after it.
    Applied(OrderView),
    /// The view already holds this version.
    Duplicate,
    /// The event skips versions: the view is at `have`, the event is `got`.
    Gap {
        /// The view's version (0 for an order the view does not hold).
        have: i64,
        /// The event's version.
        got: i64,
    },
}

fn line(l: &OrderLine, version: i64) -> LineView {
    LineView {
        sku: l.sku.clone(),
        quantity: i64::from(l.quantity),
        unit_price_cents: l.unit_price_cents,
        version,
    }
}

/// The UTC day of `ms` (since the Unix epoch) as `YYYY-MM-DD`.
pub fn day(ms: i64) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .date();
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// Folds `event` into `view`, the order's view before it (None when the view does not hold
/// the order).
pub fn fold(view: Option<&OrderView>, event: &Event) -> Step {
    let meta = event.metadata();
    let (have, got) = (view.map_or(0, |v| v.version), meta.aggregate_version);
    if got <= have {
        return Step::Duplicate;
    }
    if got != have + 1 {
        return Step::Gap { have, got };
    }
    let at = meta.occurred_at;
    let mut next = match (view, event) {
        (None, Event::Placed(e)) => {
            let mut lines: Vec<LineView> = e.lines.iter().map(|l| line(l, got)).collect();
            lines.sort_by(|a, b| a.sku.cmp(&b.sku));
            OrderView {
                order_id: meta.aggregate_id.clone(),
                customer_id: e.customer_id.clone(),
                status: "open".into(),
                currency: e.currency.clone(),
                total_cents: e.total_cents,
                units: lines.iter().map(|l| l.quantity).sum(),
                version: 0,
                placed_at: at,
                updated_at: at,
                confirmed_day: None,
                lines,
            }
        }
        // Version 1 is always the placement, so anything else at 1 is a gap before it.
        (None, _) => return Step::Gap { have, got },
        (Some(v), e) => {
            let mut v = v.clone();
            match e {
                Event::Placed(_) => return Step::Gap { have, got },
                // Idempotent on the lines: a line already there (a writer that stopped
                // half-way left it) is replaced, never added twice, and units follow the
                // events, not what the lines read back happen to hold.
                Event::LineAdded(e) => {
                    let added = line(&e.line, got);
                    v.units += added.quantity;
                    // (The summary's units never counted such a line: it is of this
                    // version, which the summary did not reach.)
                    match v.lines.binary_search_by(|l| l.sku.cmp(&added.sku)) {
                        Ok(at) => v.lines[at] = added,
                        Err(at) => v.lines.insert(at, added),
                    }
                    v.total_cents = e.total_cents;
                }
                Event::LineRemoved(e) => {
                    v.lines.retain(|l| l.sku != e.line.sku);
                    v.units -= i64::from(e.line.quantity);
                    v.total_cents = e.total_cents;
                }
                Event::Confirmed(_) => {
                    v.status = "confirmed".into();
                    v.confirmed_day = Some(day(at));
                }
                Event::Cancelled(_) => v.status = "cancelled".into(),
                Event::Completed(_) => v.status = "completed".into(),
            }
            v
        }
    };
    next.version = got;
    next.updated_at = at;
    Step::Applied(next)
}

/// The status row of an outcome; None for a duplicate's report (the original is the status).
pub fn outcome(o: &CommandOutcome) -> Option<OutcomeView> {
    (!o.duplicate).then(|| OutcomeView {
        command_id: o.command_id.clone(),
        correlation_id: o.correlation_id.clone(),
        aggregate_id: o.aggregate_id.clone(),
        command: o.command.clone(),
        accepted: o.accepted,
        version: o.version,
        reason_code: o.reason_code.clone(),
        reason: o.reason.clone(),
        decided_at: o.decided_at,
    })
}
