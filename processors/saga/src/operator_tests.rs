//! Given a saga's events, when an operator acts, then this plan or this refusal; and the
//! fold's handling of operator records.

use super::*;
use crate::definition::Definition;
use crate::fold::{Status, derive};

use crate::test_support::{T0, def, obs};

/// The start, `done` completions, then (if `fail`) the failure of the next step and the
/// compensations of the last `undone` compensable steps before it.
fn saga(d: &Definition, done: usize, fail: bool, undone: usize) -> Saga {
    let mut s = Saga::default();
    let mut t = T0;
    let mut at = || {
        t += 1_000;
        t
    };
    s.observe(obs(&d.start_event, "start", at()));
    for st in &d.steps[..done] {
        s.observe(obs(&st.completed_by, &format!("{}-done", st.name), at()));
    }
    if fail {
        let f = &d.steps[done];
        s.observe(obs(&f.failed_by, &format!("{}-failed", f.name), at()));
        let compensable = d.steps[..done]
            .iter()
            .rev()
            .filter_map(|st| st.compensated_by.as_ref().map(|c| (st, c)));
        for (st, c) in compensable.take(undone) {
            s.observe(obs(c, &format!("{}-undone", st.name), at()));
        }
    }
    s
}

fn trigger_id(p: Result<Plan, Refused>) -> (String, String) {
    match p {
        Ok(Plan::Reemit { step, trigger }) => (step, trigger.event_id),
        other => panic!("not a re-emit: {other:?}"),
    }
}

#[test]
fn given_a_running_saga_then_reemit_publishes_the_trigger_of_the_step_in_progress() {
    let d = def();
    assert_eq!(
        trigger_id(plan(&d, &saga(&d, 0, false, 0), Kind::Reemit)),
        ("customer_verified".into(), "start".into())
    );
    assert_eq!(
        trigger_id(plan(&d, &saga(&d, 3, false, 0), Kind::Reemit)),
        (
            "payment_authorized".into(),
            "inventory_reserved-done".into()
        )
    );
}

#[test]
fn given_a_running_saga_then_compensate_fails_the_step_in_progress_and_resolve_records_it() {
    let d = def();
    let s = saga(&d, 3, false, 0);
    assert_eq!(
        plan(&d, &s, Kind::Compensate),
        Ok(Plan::Compensate {
            step: "payment_authorized".into()
        })
    );
    assert_eq!(
        plan(&d, &s, Kind::Resolve),
        Ok(Plan::Resolve {
            step: Some("payment_authorized".into())
        })
    );
}

#[test]
fn given_a_compensating_saga_then_reemit_publishes_what_triggers_the_pending_compensation() {
    let d = def();
    // shipment_scheduled (6th) failed: points_redeemed undoes itself on that failure.
    assert_eq!(
        trigger_id(plan(&d, &saga(&d, 5, true, 0), Kind::Reemit)),
        ("points_redeemed".into(), "shipment_scheduled-failed".into())
    );
    // Points restored: the payment is voided on that.
    assert_eq!(
        trigger_id(plan(&d, &saga(&d, 5, true, 1), Kind::Reemit)),
        ("payment_authorized".into(), "points_redeemed-undone".into())
    );
    // Every compensable step undone: the order is cancelled on the first one's undo.
    assert_eq!(
        trigger_id(plan(&d, &saga(&d, 5, true, 3), Kind::Reemit)),
        ("end".into(), "inventory_reserved-undone".into())
    );
    // Nothing to undo before inventory: the end compensation goes on the failure itself.
    assert_eq!(
        trigger_id(plan(&d, &saga(&d, 2, true, 0), Kind::Reemit)),
        ("end".into(), "inventory_reserved-failed".into())
    );
    // order_completed failed: payment_captured's undo goes on it, across customer_notified
    // (nothing to undo).
    assert_eq!(
        trigger_id(plan(&d, &saga(&d, 9, true, 0), Kind::Reemit)),
        ("payment_captured".into(), "order_completed-failed".into())
    );
}

#[test]
fn given_a_compensating_saga_then_compensate_is_refused() {
    let d = def();
    let refused = plan(&d, &saga(&d, 5, true, 0), Kind::Compensate).unwrap_err();
    assert!(refused.0.contains("compensation has started"), "{refused}");
    assert!(refused.0.contains("shipment_scheduled"), "{refused}");
}

#[test]
fn given_a_final_saga_then_every_action_is_refused() {
    let d = def();
    for s in [saga(&d, 10, false, 0), {
        let mut s = saga(&d, 2, true, 0);
        s.observe(obs(&d.end.compensated_by, "end", T0 + 60_000));
        s
    }] {
        let status = derive(&d, &s).status;
        assert!(status.is_final(), "{status:?}");
        for kind in Kind::ALL {
            let refused = plan(&d, &s, kind).unwrap_err();
            assert!(refused.0.contains("nothing more is expected"), "{refused}");
        }
    }
}

#[test]
fn given_a_trigger_the_monitor_never_saw_then_reemit_is_refused() {
    let d = def();
    let mut s = Saga::default();
    let mut timeout = obs(
        crate::definition::TIMED_OUT,
        "o-1:timeout:customer_verified",
        T0,
    );
    timeout.step = Some("customer_verified".into());
    s.observe(timeout);
    let refused = plan(&d, &s, Kind::Reemit).unwrap_err();
    assert!(refused.0.contains("never seen"), "{refused}");
    // A trigger known only by the monitor's own record (no offset) can't be read back either.
    let mut start = obs(&d.start_event, "start", T0 - 1);
    start.offset = -1;
    s.observe(start);
    assert!(plan(&d, &s, Kind::Reemit).is_err());
}

#[test]
fn a_resolved_saga_stops_waiting_until_its_own_events_end_it() {
    let d = def();
    let mut s = saga(&d, 5, true, 1);
    let before = derive(&d, &s);
    assert_eq!(before.status, Status::Compensating);
    let mut mark = obs(RESOLVED, "o-1:operator:1", T0 + 3_600_000);
    mark.actor = Some("ops@example".into());
    s.observe(mark);
    let after = derive(&d, &s);
    assert_eq!(after.status, Status::Resolved);
    assert_eq!((after.deadline, after.expect), (None, None));
    // An operator's record is not progress.
    assert_eq!(after.updated_at, before.updated_at);
    assert!(after.flags.is_empty(), "{:?}", after.flags);
    // The rest of the compensation arrives after all: the saga says compensated.
    let inventory = d.steps[2].compensated_by.clone().unwrap();
    s.observe(obs(&inventory, "inv-undone", T0 + 20_000));
    s.observe(obs(&d.end.compensated_by, "end", T0 + 21_000));
    assert_eq!(derive(&d, &s).status, Status::Resolved);
    let payment = d.steps[3].compensated_by.clone().unwrap();
    s.observe(obs(&payment, "pay-undone", T0 + 19_000));
    assert_eq!(derive(&d, &s).status, Status::Compensated);
}

#[test]
fn a_stuck_saga_resolved_is_no_longer_stuck() {
    let d = def();
    let mut s = saga(&d, 3, false, 0);
    let expect = derive(&d, &s).expect.unwrap().key(&d);
    let mut stuck = obs(crate::fold::STUCK, "stuck", T0 + 100_000);
    stuck.step = Some(expect);
    s.observe(stuck);
    assert_eq!(derive(&d, &s).status, Status::Stuck);
    s.observe(obs(RESOLVED, "resolved", T0 + 200_000));
    assert_eq!(derive(&d, &s).status, Status::Resolved);
    // Re-emitting and starting a compensation are recorded without changing the state.
    let mut other = saga(&d, 3, false, 0);
    let plain = derive(&d, &other);
    other.observe(obs(REEMITTED, "r", T0 + 300_000));
    other.observe(obs(COMPENSATION_STARTED, "c", T0 + 300_001));
    assert_eq!(derive(&d, &other), plain);
}

#[test]
fn a_malformed_request_is_refused_with_its_reason() {
    let req = |action: &str, actor: &str, reason: Option<String>| ActionRequest {
        action: action.into(),
        actor: actor.into(),
        reason,
        if_status: None,
        if_expect: None,
    };
    assert_eq!(req("resolve", " ops ", None).check(), Ok(Kind::Resolve));
    assert_eq!(
        req(
            "reemit",
            &"a".repeat(MAX_ACTOR),
            Some("x".repeat(MAX_REASON))
        )
        .check(),
        Ok(Kind::Reemit)
    );
    for (bad, needle) in [
        (
            req("retry", "ops", None),
            "one of reemit, compensate, resolve",
        ),
        (req("resolve", "  ", None), "actor"),
        (req("resolve", &"a".repeat(MAX_ACTOR + 1), None), "actor"),
        (req("resolve", "ops\n", None), "control"),
        (
            req("resolve", MONITOR_ACTOR, None),
            "the monitor's own name",
        ),
        (
            req("resolve", "ops", Some("a\u{1b}[2Jb".into())),
            "no control characters",
        ),
        (
            req("resolve", "ops", Some("x".repeat(MAX_REASON + 1))),
            "reason",
        ),
    ] {
        let e = bad.check().unwrap_err();
        assert!(e.contains(needle), "{e}");
    }
}

#[test]
fn an_action_with_what_the_caller_saw_is_refused_once_the_saga_moved_on() {
    let d = def();
    let listed = saga(&d, 3, false, 0);
    let seen = derive(&d, &listed);
    let request = ActionRequest {
        action: "compensate".into(),
        actor: "ops".into(),
        reason: Some("line one\nline two".into()),
        if_status: Some(seen.status.as_str().into()),
        if_expect: seen.expect.map(|x| x.key(&d)),
    };
    assert_eq!(request.check(), Ok(Kind::Compensate));
    assert_eq!(request.check_still(&d, &listed), Ok(()));
    // The step completed since: the next one is in progress, and is left alone.
    let moved = saga(&d, 4, false, 0);
    let refused = request.check_still(&d, &moved).unwrap_err();
    assert!(
        refused.0.contains("outcome:points_redeemed") && refused.0.contains("moved on"),
        "{refused}"
    );
    // Completed since: the status differs.
    let refused = request
        .check_still(&d, &saga(&d, 10, false, 0))
        .unwrap_err();
    assert!(refused.0.contains("completed now"), "{refused}");
}
