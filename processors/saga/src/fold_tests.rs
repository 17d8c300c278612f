//! Given a saga's events, then this status, step, deadline and history; and, for any
//! interleaving with duplicates, the same state.

use super::*;
use proptest::prelude::*;

use crate::test_support::{T0, def, obs};

/// The events of a saga that completes `done` steps, then (if `fail`) fails the next one and
/// compensates; each event a second after the one before.
fn path(d: &Definition, done: usize, fail: bool) -> Vec<SagaObservation> {
    let mut t = T0;
    let mut next = || {
        t += 1_000;
        t
    };
    let mut out = vec![obs(&d.start_event, "start", next())];
    for s in &d.steps[..done] {
        out.push(obs(&s.completed_by, &format!("{}-done", s.name), next()));
    }
    if fail {
        let f = &d.steps[done];
        let mut e = obs(&f.failed_by, &format!("{}-failed", f.name), next());
        e.reason = Some("injected".into());
        e.reason_code = Some("injected".into());
        out.push(e);
        for s in d.steps[..done].iter().rev() {
            if let Some(c) = &s.compensated_by {
                out.push(obs(c, &format!("{}-undone", s.name), next()));
            }
        }
        out.push(obs(&d.end.compensated_by, "end", next()));
    }
    out
}

fn fold(d: &Definition, events: &[SagaObservation]) -> (Saga, Summary) {
    let mut saga = Saga::default();
    for e in events {
        saga.observe(e.clone());
    }
    let summary = derive(d, &saga);
    (saga, summary)
}

#[test]
fn a_saga_that_completes_every_step_is_completed_with_no_deadline() {
    let d = def();
    let (saga, s) = fold(&d, &path(&d, 10, false));
    assert_eq!(s.status, Status::Completed);
    assert_eq!((s.step, s.deadline, s.flags.len()), (None, None, 0));
    assert!(s.path.iter().all(|p| p.state == StepState::Completed));
    assert_eq!(saga.version(), 11);
    assert_eq!(s.correlation_id, "corr-1");
    assert_eq!(step_latency(&d, &saga, 2), Some(1_000));
}

#[test]
fn a_running_saga_waits_for_its_step_until_the_step_timeout_after_its_trigger() {
    let d = def();
    let events = path(&d, 3, false);
    let (_, s) = fold(&d, &events);
    assert_eq!(s.status, Status::Running);
    assert_eq!(s.step.as_deref(), Some("payment_authorized"));
    assert_eq!(s.remaining.len(), 6);
    assert_eq!(s.remaining[0], "points_redeemed");
    let trigger = events.last().unwrap().occurred_at;
    assert_eq!(
        s.deadline,
        Some(Deadline {
            at: trigger + 30_000,
            action: Action::TimeOut(3)
        })
    );
    assert_eq!(s.path[3].state, StepState::Active);
    assert_eq!(s.path[4].state, StepState::Pending);
}

#[test]
fn after_a_timeout_the_participant_has_its_reaction_time_then_the_saga_is_stuck() {
    let d = def();
    let mut events = path(&d, 3, false);
    let mut timeout = obs(TIMED_OUT_TYPE, "timeout-payment", T0 + 40_000);
    timeout.step = Some("payment_authorized".into());
    events.push(timeout);
    let (mut saga, s) = fold(&d, &events);
    assert_eq!(s.status, Status::Running);
    assert_eq!(s.expect, Some(Expect::Reaction(3)));
    let Some(Deadline {
        at,
        action: Action::MarkStuck(key),
    }) = s.deadline
    else {
        panic!("{:?}", s.deadline)
    };
    assert_eq!(
        (at, key.as_str()),
        (T0 + 100_000, "reaction:payment_authorized")
    );
    let mut mark = obs(STUCK, "stuck-1", at);
    mark.step = Some(key);
    saga.observe(mark);
    let stuck = derive(&d, &saga);
    assert_eq!((stuck.status, stuck.deadline), (Status::Stuck, None));
    // The participant answers late with the failure: the saga compensates, not stuck.
    let mut failed = obs(&d.steps[3].failed_by, "declined", T0 + 120_000);
    failed.reason_code = Some("timeout".into());
    saga.observe(failed);
    let moving = derive(&d, &saga);
    assert_eq!(moving.status, Status::Compensating);
    assert_eq!(moving.expect, Some(Expect::Compensation(2)));
    assert_eq!(moving.step.as_deref(), Some("inventory_reserved"));
}

#[test]
fn a_failure_compensates_every_earlier_step_latest_first_then_the_end() {
    let d = def();
    let all = path(&d, 7, true);
    // Up to the failure and the first two compensations: invoice, shipment credited and
    // cancelled; the points are next.
    let (_, s) = fold(&d, &all[..11]);
    assert_eq!(s.status, Status::Compensating);
    assert_eq!(s.expect, Some(Expect::Compensation(4)));
    assert_eq!(
        s.failure,
        Some((
            "payment_captured".into(),
            "injected".into(),
            Some("injected".into())
        ))
    );
    let states: Vec<StepState> = s.path.iter().map(|p| p.state).collect();
    use StepState::*;
    assert_eq!(
        states,
        [
            Kept,
            Kept,
            Compensating,
            Compensating,
            Compensating,
            Compensated,
            Compensated,
            Failed,
            Pending,
            Pending
        ]
    );
    let (_, before_end) = fold(&d, &all[..all.len() - 1]);
    assert_eq!(before_end.expect, Some(Expect::End));
    let (_, s) = fold(&d, &all);
    assert_eq!((s.status, s.flags.len()), (Status::Compensated, 0));
}

#[test]
fn oddities_are_flagged_not_dropped() {
    let d = def();
    let mut events = path(&d, 2, false);
    events.push(obs("eip.other.Thing", "odd", T0 + 5_000));
    // The inventory reserved *and* failed: the failure counts.
    events.push(obs(&d.steps[2].completed_by, "r", T0 + 6_000));
    events.push(obs(&d.steps[2].failed_by, "f", T0 + 7_000));
    let (_, s) = fold(&d, &events);
    assert_eq!(s.status, Status::Compensating);
    assert!(
        s.flags
            .iter()
            .any(|f| f == "undeclared event: eip.other.Thing"),
        "{:?}",
        s.flags
    );
    assert!(
        s.flags
            .iter()
            .any(|f| f.starts_with("conflict: inventory_reserved")),
        "{:?}",
        s.flags
    );
    // No start seen: flagged until it arrives.
    let (_, s) = fold(&d, &events[1..]);
    assert!(s.flags.contains(&"no start event seen".to_string()));
}

const TIMED_OUT_TYPE: &str = crate::definition::TIMED_OUT;

/// A saga's events: any path the definition allows, with a timeout and a stuck mark for good
/// measure.
fn any_saga() -> impl Strategy<Value = Vec<SagaObservation>> {
    (0usize..10, any::<bool>(), any::<bool>()).prop_map(|(done, fail, with_timeout)| {
        let d = def();
        let mut events = path(&d, done, fail);
        if with_timeout {
            let mut t = obs(TIMED_OUT_TYPE, "timeout", T0 + 500);
            t.step = Some(d.steps[done].name.clone());
            events.push(t);
            let mut m = obs(STUCK, "stuck", T0 + 600);
            m.step = Some(format!("reaction:{}", d.steps[done].name));
            events.push(m);
        }
        events
    })
}

proptest! {
    /// Any interleaving, with any duplicates, reaches the same state and the same history as
    /// the events in their own order.
    #[test]
    fn any_arrival_order_with_duplicates_reaches_the_same_state(
        events in any_saga(),
        order in proptest::collection::vec(any::<prop::sample::Index>(), 1..60),
    ) {
        let d = def();
        let (reference, expected) = fold(&d, &events);
        let mut shuffled: Vec<SagaObservation> = order.iter().map(|i| i.get(&events).clone()).collect();
        // Every event at least once, somewhere.
        for (i, e) in events.iter().enumerate() {
            let at = order.get(i).map_or(0, |ix| ix.index(shuffled.len() + 1));
            shuffled.insert(at, e.clone());
        }
        let (saga, got) = fold(&d, &shuffled);
        prop_assert_eq!(&got, &expected);
        prop_assert_eq!(saga.version(), reference.version());
        let h1: Vec<&str> = history(&d, &saga).iter().map(|e| e.event_id.as_str()).collect();
        let h2: Vec<&str> = history(&d, &reference).iter().map(|e| e.event_id.as_str()).collect();
        prop_assert_eq!(h1, h2);
    }
}

#[test]
fn an_order_cancelled_without_a_saga_is_not_a_saga_until_a_saga_event_comes() {
    let d = def();
    let mut saga = Saga::default();
    saga.observe(obs(&d.end.compensated_by, "cancelled", T0));
    assert!(!saga.anchored(&d));
    saga.observe(obs(&d.start_event, "start", T0 - 5));
    assert!(saga.anchored(&d));
    let mut marked = Saga::default();
    let mut m = obs(STUCK, "stuck", T0);
    m.step = Some("end".into());
    marked.observe(m);
    assert!(!marked.anchored(&d));
}
