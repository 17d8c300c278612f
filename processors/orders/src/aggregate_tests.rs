//! Given/when/then: given a history, when a command arrives, then this event or this
//! rejection. One test per rule and per rejection code.

use super::*;
use eip_schemas::types::samples;
use std::collections::HashMap;

const NOW: i64 = 1_767_225_600_000;

fn meta(id: &str, command_id: &str, expected: Option<i64>) -> CommandMetadata {
    CommandMetadata {
        command_id: command_id.into(),
        correlation_id: format!("corr-{id}"),
        causation_id: None,
        issued_at: NOW,
        aggregate_id: id.into(),
        expected_version: expected,
    }
}

fn line(sku: &str, quantity: i32, price: i64) -> OrderLine {
    OrderLine {
        sku: sku.into(),
        quantity,
        unit_price_cents: price,
    }
}

fn place(id: &str, lines: Vec<OrderLine>) -> Command {
    let sample = samples::order_placed(1);
    Command::Place(PlaceOrder {
        metadata: meta(id, &format!("{id}-place"), None),
        customer_id: "customer-1".into(),
        lines,
        currency: "EUR".into(),
        shipping_address: sample.shipping_address,
    })
}

fn add(id: &str, l: OrderLine) -> Command {
    Command::AddLine(AddOrderLine {
        metadata: meta(id, &format!("{id}-add-{}", l.sku), None),
        line: l,
    })
}

fn remove(id: &str, sku: &str) -> Command {
    Command::RemoveLine(RemoveOrderLine {
        metadata: meta(id, &format!("{id}-remove-{sku}"), None),
        sku: sku.into(),
    })
}

fn confirm(id: &str) -> Command {
    Command::Confirm(ConfirmOrder {
        metadata: meta(id, &format!("{id}-confirm"), None),
    })
}

fn cancel(id: &str, reason: &str) -> Command {
    Command::Cancel(CancelOrder {
        metadata: meta(id, &format!("{id}-cancel"), None),
        reason: reason.into(),
    })
}

fn complete(id: &str) -> Command {
    Command::Complete(CompleteOrder {
        metadata: meta(id, &format!("{id}-complete"), None),
    })
}

/// Runs `given` through handle + apply (each must be accepted), then handles `when`.
fn given_when(given: &[Command], when: &Command) -> (Option<Order>, Result<Event, Rejection>) {
    let mut order = None;
    for (i, c) in given.iter().enumerate() {
        let event = handle(order.as_ref(), c, NOW + i as i64)
            .unwrap_or_else(|r| panic!("given command {i} was rejected: {r:?}"));
        order = Some(apply(order, &event));
    }
    let outcome = handle(order.as_ref(), when, NOW + 100);
    (order, outcome)
}

fn rejected(given: &[Command], when: Command, code: &str) {
    let (_, outcome) = given_when(given, &when);
    match outcome {
        Err(r) => {
            assert_eq!(r.code, code, "{}: {}", when.kind(), r.reason);
            // Docs and outcomes name codes from the one published list.
            assert!(
                REJECTION_CODES.contains(&r.code),
                "{} is not listed",
                r.code
            );
            assert!(!r.reason.is_empty());
        }
        Ok(e) => panic!("{} was accepted as {e:?}, expected {code}", when.kind()),
    }
}

fn two_lines(id: &str) -> Command {
    place(id, vec![line("A", 2, 150), line("B", 1, 1000)])
}

#[test]
fn placing_an_order_emits_placed_at_version_1_with_its_total() {
    let (_, outcome) = given_when(&[], &two_lines("o1"));
    let Ok(Event::Placed(e)) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(e.total_cents, 1300);
    assert_eq!(e.metadata.aggregate_version, 1);
    assert_eq!(e.metadata.event_id, "o1@1");
    assert_eq!(e.metadata.causation_id.as_deref(), Some("o1-place"));
    assert_eq!(e.metadata.correlation_id, "corr-o1");
    assert_eq!(e.metadata.occurred_at, NOW + 100);
    let order = apply(None, &Event::Placed(e));
    assert_eq!(order.status, Status::Open);
    assert_eq!(order.version, 1);
    assert_eq!(order.lines.len(), 2);
}

#[test]
fn placing_an_existing_order_is_refused() {
    rejected(&[two_lines("o1")], two_lines("o1"), "already_exists");
}

#[test]
fn placing_an_empty_order_is_refused() {
    rejected(&[], place("o1", vec![]), "empty_order");
}

#[test]
fn quantities_must_be_more_than_zero() {
    rejected(&[], place("o1", vec![line("A", 0, 100)]), "bad_quantity");
    rejected(&[], place("o1", vec![line("A", -2, 100)]), "bad_quantity");
    rejected(
        &[two_lines("o1")],
        add("o1", line("C", 0, 5)),
        "bad_quantity",
    );
}

#[test]
fn prices_must_not_be_negative() {
    rejected(&[], place("o1", vec![line("A", 1, -1)]), "bad_price");
    rejected(&[two_lines("o1")], add("o1", line("C", 1, -5)), "bad_price");
}

#[test]
fn a_sku_appears_on_one_line_only() {
    rejected(
        &[],
        place("o1", vec![line("A", 1, 1), line("A", 2, 1)]),
        "duplicate_sku",
    );
    rejected(
        &[two_lines("o1")],
        add("o1", line("A", 1, 1)),
        "duplicate_sku",
    );
}

#[test]
fn the_customer_and_currency_must_be_given() {
    let Command::Place(mut p) = two_lines("o1") else {
        unreachable!()
    };
    p.customer_id = " ".into();
    rejected(&[], Command::Place(p.clone()), "bad_customer");
    p.customer_id = "c".into();
    p.currency = "euro".into();
    rejected(&[], Command::Place(p), "bad_currency");
}

#[test]
fn a_total_past_the_64_bit_limit_is_refused_never_capped() {
    let max = i64::MAX;
    // One line whose quantity × price overflows.
    rejected(
        &[],
        place("o1", vec![line("A", 2, max / 2 + 1)]),
        "amount_too_large",
    );
    // Two lines of 2^62 each: each fits, the sum does not.
    let big = 1i64 << 62;
    rejected(
        &[],
        place("o1", vec![line("A", 1, big), line("B", 1, big)]),
        "amount_too_large",
    );
    // An added line that takes the total past the limit.
    rejected(
        &[place("o1", vec![line("A", 1, big)])],
        add("o1", line("B", 1, big)),
        "amount_too_large",
    );
    // Right at the limit is fine, and the total is exact.
    let (_, outcome) = given_when(
        &[],
        &place("o1", vec![line("A", 1, max - 1), line("B", 1, 1)]),
    );
    let Ok(Event::Placed(e)) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(e.total_cents, max);
}

#[test]
fn ids_are_valid_by_the_definition_the_read_side_shares() {
    use eip_schemas::limits::MAX_ID_BYTES;
    let long = "x".repeat(MAX_ID_BYTES + 1);
    rejected(&[], two_lines(""), "bad_order_id");
    rejected(&[], two_lines(&long), "bad_order_id");
    rejected(&[], place("o1", vec![line("", 1, 100)]), "bad_sku");
    rejected(&[], place("o1", vec![line(&long, 1, 100)]), "bad_sku");
    rejected(&[two_lines("o1")], add("o1", line(&long, 1, 5)), "bad_sku");
    let Command::Place(mut c) = two_lines("o1") else {
        unreachable!()
    };
    c.customer_id = long.clone();
    rejected(&[], Command::Place(c), "bad_customer");
    // The longest valid id is accepted.
    let longest = "y".repeat(MAX_ID_BYTES);
    let (_, outcome) = given_when(&[], &place(&longest, vec![line(&longest, 1, 1)]));
    assert!(outcome.is_ok(), "{outcome:?}");
}

#[test]
fn adding_a_line_changes_the_total_and_the_version() {
    let (order, outcome) = given_when(&[two_lines("o1")], &add("o1", line("C", 3, 10)));
    let Ok(event @ Event::LineAdded(_)) = outcome else {
        panic!("{outcome:?}")
    };
    let order = apply(order, &event);
    assert_eq!(order.total_cents, 1330);
    assert_eq!(order.version, 2);
    assert_eq!(order.lines.last().map(|l| l.sku.as_str()), Some("C"));
}

#[test]
fn removing_a_line_reports_the_line_and_the_new_total() {
    let (order, outcome) = given_when(&[two_lines("o1")], &remove("o1", "A"));
    let Ok(Event::LineRemoved(e)) = &outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(e.line, line("A", 2, 150));
    assert_eq!(e.total_cents, 1000);
    let order = apply(order, &outcome.unwrap_or_else(|r| panic!("{r:?}")));
    assert_eq!(order.lines, vec![line("B", 1, 1000)]);
}

#[test]
fn removing_an_unknown_line_is_refused() {
    rejected(&[two_lines("o1")], remove("o1", "Z"), "unknown_line");
}

#[test]
fn the_last_line_cannot_be_removed() {
    rejected(
        &[place("o1", vec![line("A", 1, 1)])],
        remove("o1", "A"),
        "last_line",
    );
}

#[test]
fn commands_to_a_missing_order_are_refused() {
    rejected(&[], add("o9", line("A", 1, 1)), "unknown_order");
    rejected(&[], remove("o9", "A"), "unknown_order");
    rejected(&[], confirm("o9"), "unknown_order");
    rejected(&[], cancel("o9", "why"), "unknown_order");
    rejected(&[], complete("o9"), "unknown_order");
}

#[test]
fn a_confirmed_order_completes_once_and_is_then_final() {
    let given = [two_lines("o1"), confirm("o1")];
    let (order, outcome) = given_when(&given, &complete("o1"));
    let event = outcome.unwrap_or_else(|r| panic!("{r:?}"));
    assert!(matches!(event, Event::Completed(_)), "{event:?}");
    assert_eq!(event.version(), 3);
    assert_eq!(event.command_id(), Some("o1-complete"));
    let order = apply(order, &event);
    assert_eq!(
        (order.status, order.status.as_str()),
        (Status::Completed, "completed")
    );
    let completed = [two_lines("o1"), confirm("o1"), complete("o1")];
    rejected(&completed, complete("o1"), "already_completed");
    // Completed is final: no cancellation (a saga compensates before its last step, never
    // after it), and no change to the lines.
    rejected(&completed, cancel("o1", "too late"), "already_completed");
    rejected(&completed, add("o1", line("C", 1, 1)), "not_open");
    rejected(&completed, confirm("o1"), "not_open");
}

#[test]
fn only_a_confirmed_order_completes() {
    rejected(&[two_lines("o1")], complete("o1"), "not_confirmed");
    rejected(
        &[two_lines("o1"), confirm("o1"), cancel("o1", "declined")],
        complete("o1"),
        "already_cancelled",
    );
}

#[test]
fn a_confirmed_or_cancelled_order_does_not_change_its_lines() {
    let confirmed = [two_lines("o1"), confirm("o1")];
    rejected(&confirmed, add("o1", line("C", 1, 1)), "not_open");
    rejected(&confirmed, remove("o1", "A"), "not_open");
    rejected(&confirmed, confirm("o1"), "not_open");
    let cancelled = [two_lines("o1"), cancel("o1", "changed my mind")];
    rejected(&cancelled, add("o1", line("C", 1, 1)), "not_open");
    rejected(&cancelled, remove("o1", "A"), "not_open");
    rejected(&cancelled, confirm("o1"), "not_open");
}

#[test]
fn confirming_and_cancelling_move_the_status() {
    let (order, outcome) = given_when(&[two_lines("o1")], &confirm("o1"));
    let event = outcome.unwrap_or_else(|r| panic!("{r:?}"));
    // The confirmation carries the order as confirmed, for its fulfilment saga.
    let Event::Confirmed(confirmed) = &event else {
        panic!("{event:?}")
    };
    let before = order.clone().unwrap();
    let carried = confirmed.order.clone().unwrap();
    assert_eq!(
        (
            carried.customer_id,
            carried.lines,
            carried.total_cents,
            carried.currency
        ),
        (
            before.customer_id,
            before.lines,
            before.total_cents,
            before.currency
        )
    );
    let order = apply(order, &event);
    assert_eq!(order.status, Status::Confirmed);
    // A confirmed order can still be cancelled (a saga's compensation does that).
    let outcome = handle(Some(&order), &cancel("o1", "payment declined"), NOW);
    let order = apply(Some(order), &outcome.unwrap_or_else(|r| panic!("{r:?}")));
    assert_eq!(order.status, Status::Cancelled);
    assert_eq!(order.version, 3);
}

#[test]
fn an_order_is_cancelled_once() {
    rejected(
        &[two_lines("o1"), cancel("o1", "first")],
        cancel("o1", "again"),
        "already_cancelled",
    );
}

#[test]
fn a_cancellation_needs_a_reason() {
    rejected(&[two_lines("o1")], cancel("o1", "  "), "missing_reason");
}

#[test]
fn a_stale_expected_version_is_a_conflict_and_a_current_one_passes() {
    let mut c = confirm("o1");
    if let Command::Confirm(x) = &mut c {
        x.metadata.expected_version = Some(3);
    }
    rejected(&[two_lines("o1")], c.clone(), "version_conflict");
    if let Command::Confirm(x) = &mut c {
        x.metadata.expected_version = Some(1);
    }
    let (_, outcome) = given_when(&[two_lines("o1")], &c);
    assert!(matches!(outcome, Ok(Event::Confirmed(_))), "{outcome:?}");
    // Placing expects version 0: the order does not exist yet.
    let Command::Place(mut p) = two_lines("o2") else {
        unreachable!()
    };
    p.metadata.expected_version = Some(0);
    assert!(handle(None, &Command::Place(p.clone()), NOW).is_ok());
    p.metadata.expected_version = Some(1);
    rejected(&[], Command::Place(p), "version_conflict");
}

#[test]
fn replay_folds_a_history_in_order() {
    let commands = [
        two_lines("o1"),
        add("o1", line("C", 1, 7)),
        remove("o1", "A"),
        confirm("o1"),
    ];
    let mut order = None;
    let mut events = Vec::new();
    for c in &commands {
        let e = handle(order.as_ref(), c, NOW).unwrap_or_else(|r| panic!("{r:?}"));
        order = Some(apply(order, &e));
        events.push(e);
    }
    assert_eq!(replay(None, &events), order);
    let versions: Vec<i64> = events.iter().map(Event::version).collect();
    assert_eq!(versions, vec![1, 2, 3, 4]);
}

mod snapshots {
    use super::*;
    use proptest::prelude::*;

    /// A random command for one of three orders.
    fn command() -> impl Strategy<Value = Command> {
        let id = prop_oneof![Just("o1"), Just("o2"), Just("o3")];
        let sku = prop_oneof![Just("A"), Just("B"), Just("C")];
        (id, sku, 0..7u8, -1..4i32, 0..4u32).prop_map(|(id, sku, kind, qty, n)| match kind {
            0 => place(id, vec![line(sku, qty, 100), line("Z", 1, 5)]),
            1 => add(id, line(sku, qty, 70)),
            2 => remove(id, sku),
            3 => confirm(id),
            4 => cancel(id, if n == 0 { "" } else { "why" }),
            5 => complete(id),
            _ => place(id, vec![]),
        })
    }

    proptest! {
        /// For every history and every cut: the state serialized as a snapshot at the cut
        /// (through JSON, as the journal stores it), plus the events after it, equals the
        /// whole history replayed.
        #[test]
        fn snapshot_plus_tail_equals_a_full_replay(commands in proptest::collection::vec(command(), 0..40), cut in 0usize..40) {
            let mut orders: HashMap<String, Option<Order>> = HashMap::new();
            let mut events: Vec<Event> = Vec::new();
            for c in &commands {
                let id = c.metadata().aggregate_id.clone();
                let current = orders.entry(id).or_default();
                if let Ok(e) = handle(current.as_ref(), c, NOW) {
                    *current = Some(apply(current.take(), &e));
                    events.push(e);
                }
            }
            for id in ["o1", "o2", "o3"] {
                let mine: Vec<&Event> = events.iter().filter(|e| e.metadata().aggregate_id == id).collect();
                let full = replay(None, mine.iter().copied());
                prop_assert_eq!(&full, orders.get(id).unwrap_or(&None));
                let k = cut.min(mine.len());
                let snapshot = replay(None, mine[..k].iter().copied())
                    .map(|o| serde_json::to_string(&o).unwrap());
                let restored: Option<Order> = snapshot.map(|s| serde_json::from_str(&s).unwrap());
                prop_assert_eq!(replay(restored, mine[k..].iter().copied()), full);
                let versions: Vec<i64> = mine.iter().map(|e| e.version()).collect();
                prop_assert_eq!(versions, (1..=mine.len() as i64).collect::<Vec<_>>());
            }
        }
    }
}
