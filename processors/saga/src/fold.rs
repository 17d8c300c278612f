//! The saga monitor's state machine, pure. A saga's state is the *set* of its events (by event
//! id), and everything the monitor shows is derived from that set and the definition by
//! [`derive`]: the status, the step in progress, the remaining steps, the deadline and what
//! happens at it, the flags, and the history in time order. Because a set has no arrival
//! order, any interleaving of a saga's events across topics, with any duplicates, reaches the
//! same state: that is how the monitor copes with Kafka giving no order across topics (the
//! property test at the bottom checks it).
//!
//! The rules, in the order [`derive`] applies them:
//! - a step's failure event beats its completion event (the participant decides exactly one;
//!   seeing both means someone else published one, which is flagged as a conflict);
//! - with no failure: completed when the last step completed, else running at the first step
//!   not completed;
//! - after the first failure (step `f`): compensating until every step before `f` that has a
//!   compensation event has it and the end compensation is seen, then compensated;
//! - stuck when the monitor marked the expectation now pending as overdue (see
//!   [`Action::MarkStuck`]); stuck lasts until that expectation is met.
//!
//! Deadlines come from the events' own times (`occurred_at`), so they are the same after a
//! restart on another machine: the step in progress is due `timeout` after the event that
//! started it; once its timeout is seen, its participant has `compensation_timeout` to react;
//! each compensation has its step's `compensation_timeout` after the latest progress, and the
//! end compensation the end's.

use std::collections::BTreeMap;

use eip_schemas::types::SagaObservation;
use serde::Serialize;

use crate::definition::{Definition, Role};

/// The event type of the monitor's own mark that an expectation is overdue (never published;
/// kept in the saga's history).
pub const STUCK: &str = "eip.saga.monitor.Stuck";

/// The prefix of the event types of operator actions (never published to a saga's topics;
/// kept in the saga's history with who did them). They are not progress: the saga's
/// `updated_at` ignores them.
pub const OPERATOR: &str = "eip.saga.operator.";
/// An operator re-emitted the trigger of what the saga waits for.
pub const REEMITTED: &str = "eip.saga.operator.TriggerReemitted";
/// An operator asked the participant of the step in progress to fail it, which starts the
/// compensation.
pub const COMPENSATION_STARTED: &str = "eip.saga.operator.CompensationStarted";
/// An operator marked the saga resolved: handled by hand, nothing more is expected.
pub const RESOLVED: &str = "eip.saga.operator.Resolved";

/// True for the monitor's own marks and operator actions: kept in the history, but not events
/// of the saga.
pub fn is_mark(event_type: &str) -> bool {
    event_type == STUCK || event_type.starts_with(OPERATOR)
}

/// Where a saga stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Steps are being performed.
    Running,
    /// Every step completed.
    Completed,
    /// A step failed; earlier steps are being undone.
    Compensating,
    /// A step failed and everything was undone.
    Compensated,
    /// An expectation is overdue (a participant did not react in time).
    Stuck,
    /// An operator marked it resolved before it reached completed or compensated: handled by
    /// hand, nothing more is expected (no deadline, not stuck). Events that arrive later still
    /// count: a saga that then completes or is compensated shows that status.
    Resolved,
}

impl Status {
    /// The status as the store, the API and the metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Compensating => "compensating",
            Status::Compensated => "compensated",
            Status::Stuck => "stuck",
            Status::Resolved => "resolved",
        }
    }

    /// Every status, in display order.
    pub const ALL: [Status; 6] = [
        Status::Running,
        Status::Completed,
        Status::Compensating,
        Status::Compensated,
        Status::Stuck,
        Status::Resolved,
    ];

    /// The status spelled `s`.
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// True for completed, compensated and resolved: nothing more is expected.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Compensated | Status::Resolved
        )
    }
}

/// What the saga waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Step `i`'s completion or failure.
    Outcome(usize),
    /// Step `i`'s participant's reaction to its timeout (its failure, or a completion).
    Reaction(usize),
    /// Step `i`'s compensation.
    Compensation(usize),
    /// The end compensation.
    End,
}

impl Expect {
    /// A stable key for the expectation, as stuck marks name it.
    pub fn key(self, def: &Definition) -> String {
        match self {
            Expect::Outcome(i) => format!("outcome:{}", def.steps[i].name),
            Expect::Reaction(i) => format!("reaction:{}", def.steps[i].name),
            Expect::Compensation(i) => format!("compensation:{}", def.steps[i].name),
            Expect::End => "end".into(),
        }
    }
}

/// What the monitor does when a deadline passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Publish step `i`'s timeout.
    TimeOut(usize),
    /// Mark the expectation with this key overdue: the saga is stuck.
    MarkStuck(String),
}

/// A deadline and what happens at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadline {
    /// When, in ms since the Unix epoch.
    pub at: i64,
    /// What then.
    pub action: Action,
}

/// A saga's events, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Saga {
    /// Every event seen, by event id.
    pub events: BTreeMap<String, SagaObservation>,
}

impl Saga {
    /// Adds `event`; false when an event with its id was seen already (a duplicate changes
    /// nothing).
    pub fn observe(&mut self, event: SagaObservation) -> bool {
        if self.events.contains_key(&event.event_id) {
            return false;
        }
        self.events.insert(event.event_id.clone(), event);
        true
    }

    /// True once the saga has an event that only a saga has: its start, or any event of a
    /// step (or a timeout). The end compensation alone (an order cancelled, which happens to
    /// orders that never started a saga too) does not make a saga.
    pub fn anchored(&self, def: &Definition) -> bool {
        self.events.values().any(|e| {
            !is_mark(&e.event_type)
                && !matches!(def.role_of(&e.event_type), Some(Role::EndCompensated))
        })
    }

    /// How many distinct events: the saga's version in the store (it only grows).
    pub fn version(&self) -> i64 {
        i64::try_from(self.events.len()).unwrap_or(i64::MAX)
    }
}

/// How a step stands on the saga's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Not reached.
    Pending,
    /// In progress.
    Active,
    /// Completed.
    Completed,
    /// Failed.
    Failed,
    /// Completed, then undone.
    Compensated,
    /// Completed; being (or to be) undone.
    Compensating,
    /// Completed before a failure, with nothing to undo.
    Kept,
}

/// One step of the expected path, as it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathStep {
    /// The step.
    pub step: String,
    /// How it stands.
    pub state: StepState,
    /// When it started (its trigger's time), if seen.
    pub started_at: Option<i64>,
    /// When it was decided (completed or failed), if it was.
    pub decided_at: Option<i64>,
    /// When it was undone, if it was.
    pub compensated_at: Option<i64>,
}

/// Everything the monitor shows about a saga, derived from its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Where it stands.
    pub status: Status,
    /// The step in progress, failed, or being undone; None when final.
    pub step: Option<String>,
    /// What it waits for; None when final.
    pub expect: Option<Expect>,
    /// The steps not reached yet (running), in order.
    pub remaining: Vec<String>,
    /// The step that failed, its reason and code.
    pub failure: Option<(String, String, Option<String>)>,
    /// The correlation id: the start event's, else the earliest event's.
    pub correlation_id: String,
    /// When the start event happened, if seen.
    pub started_at: Option<i64>,
    /// The latest time of any event (not counting the monitor's marks).
    pub updated_at: i64,
    /// The next deadline and what happens at it; None when final or stuck.
    pub deadline: Option<Deadline>,
    /// Oddities: undeclared events, conflicts, events out of order.
    pub flags: Vec<String>,
    /// The expected path, step by step.
    pub path: Vec<PathStep>,
}

/// The events in history order: by time, then by their place in the saga, then by id.
pub fn history<'a>(def: &Definition, saga: &'a Saga) -> Vec<&'a SagaObservation> {
    let mut all: Vec<&SagaObservation> = saga.events.values().collect();
    all.sort_by(|a, b| {
        (a.occurred_at, rank(def, a), &a.event_id).cmp(&(b.occurred_at, rank(def, b), &b.event_id))
    });
    all
}

fn rank(def: &Definition, e: &SagaObservation) -> (u8, usize) {
    match def.role_of(&e.event_type) {
        Some(Role::Start) => (0, 0),
        Some(Role::Completed(i)) | Some(Role::Failed(i)) => (1, i),
        Some(Role::TimedOut) => (2, 0),
        Some(Role::Compensated(i)) => (3, usize::MAX - i),
        Some(Role::EndCompensated) => (4, 0),
        None => (5, 0),
    }
}

/// What one step's events say, earliest of each kind.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    completed: Option<i64>,
    failed: Option<i64>,
    compensated: Option<i64>,
    timed_out: Option<i64>,
}

fn earliest(slot: &mut Option<i64>, at: i64) {
    *slot = Some(slot.map_or(at, |t| t.min(at)));
}

/// Derives everything about `saga` from its events. Pure: the same set gives the same summary.
pub fn derive(def: &Definition, saga: &Saga) -> Summary {
    let n = def.steps.len();
    let mut seen = vec![Seen::default(); n];
    let mut start: Option<(i64, &str)> = None;
    let mut end: Option<i64> = None;
    let mut failure_of: Vec<Option<&SagaObservation>> = vec![None; n];
    let mut stuck_marks: Vec<&str> = Vec::new();
    let mut resolved = false;
    let mut flags = Vec::new();
    let mut updated_at = i64::MIN;
    let mut first: Option<&SagaObservation> = None;
    for e in saga.events.values() {
        if e.event_type == STUCK {
            stuck_marks.push(e.step.as_deref().unwrap_or_default());
            continue;
        }
        if is_mark(&e.event_type) {
            resolved |= e.event_type == RESOLVED;
            continue;
        }
        updated_at = updated_at.max(e.occurred_at);
        if first.is_none_or(|f| (e.occurred_at, &e.event_id) < (f.occurred_at, &f.event_id)) {
            first = Some(e);
        }
        match def.role_of(&e.event_type) {
            Some(Role::Start) => {
                if start.is_none_or(|(t, _)| e.occurred_at < t) {
                    start = Some((e.occurred_at, e.correlation_id.as_str()));
                }
            }
            Some(Role::Completed(i)) => earliest(&mut seen[i].completed, e.occurred_at),
            Some(Role::Failed(i)) => {
                earliest(&mut seen[i].failed, e.occurred_at);
                if failure_of[i].is_none_or(|f| e.occurred_at < f.occurred_at) {
                    failure_of[i] = Some(e);
                }
            }
            Some(Role::Compensated(i)) => earliest(&mut seen[i].compensated, e.occurred_at),
            Some(Role::EndCompensated) => earliest(&mut end, e.occurred_at),
            Some(Role::TimedOut) => match e.step.as_deref().and_then(|s| def.step(s)) {
                Some((i, _)) => earliest(&mut seen[i].timed_out, e.occurred_at),
                None => flags.push(format!(
                    "timeout for a step this saga does not have: {}",
                    e.step.as_deref().unwrap_or("(none)")
                )),
            },
            None => flags.push(format!("undeclared event: {}", e.event_type)),
        }
    }
    if updated_at == i64::MIN {
        updated_at = 0;
    }
    // The time each step started: its trigger's time.
    let started: Vec<Option<i64>> = (0..n)
        .map(|i| {
            if i == 0 {
                start.map(|(t, _)| t)
            } else {
                seen[i - 1].completed
            }
        })
        .collect();
    if start.is_none() && !saga.events.is_empty() {
        flags.push("no start event seen".into());
    }
    let failed = (0..n).find(|&i| seen[i].failed.is_some());
    for i in 0..n {
        let s = seen[i];
        if s.completed.is_some() && s.failed.is_some() {
            flags.push(format!(
                "conflict: {} both completed and failed (the failure counts)",
                def.steps[i].name
            ));
        }
        if let (Some(done), Some(t)) = (s.completed.or(s.failed), started[i])
            && done < t
        {
            flags.push(format!(
                "out of order: {} was decided before it started",
                def.steps[i].name
            ));
        }
        if let (Some(done), Some(out)) = (s.completed, s.timed_out)
            && done > out
        {
            flags.push(format!(
                "late: {} completed after its timeout",
                def.steps[i].name
            ));
        }
        if let Some(f) = failed {
            if i > f && (s.completed.is_some() || s.failed.is_some()) {
                flags.push(format!(
                    "after the failure: {} was decided after {} failed",
                    def.steps[i].name, def.steps[f].name
                ));
            }
            if s.compensated.is_some() && i >= f {
                flags.push(format!(
                    "compensated without having completed: {}",
                    def.steps[i].name
                ));
            }
        } else if s.compensated.is_some() {
            flags.push(format!(
                "compensated without a failure: {}",
                def.steps[i].name
            ));
        }
    }
    if end.is_some() && failed.is_none() {
        flags.push(format!("{} without a failure", def.end.compensated_by));
    }
    let (status, expect, step, remaining) = match failed {
        None => match (0..n).find(|&i| seen[i].completed.is_none()) {
            None => (Status::Completed, None, None, Vec::new()),
            Some(i) => {
                let expect = if seen[i].timed_out.is_some() {
                    Expect::Reaction(i)
                } else {
                    Expect::Outcome(i)
                };
                let remaining = def.steps[i + 1..].iter().map(|s| s.name.clone()).collect();
                (
                    Status::Running,
                    Some(expect),
                    Some(def.steps[i].name.clone()),
                    remaining,
                )
            }
        },
        Some(f) => {
            let pending = (0..f)
                .rev()
                .find(|&j| def.steps[j].compensated_by.is_some() && seen[j].compensated.is_none());
            match (pending, end) {
                (None, Some(_)) => (Status::Compensated, None, None, Vec::new()),
                (Some(j), _) => (
                    Status::Compensating,
                    Some(Expect::Compensation(j)),
                    Some(def.steps[j].name.clone()),
                    Vec::new(),
                ),
                (None, None) => (
                    Status::Compensating,
                    Some(Expect::End),
                    Some(def.steps[f].name.clone()),
                    Vec::new(),
                ),
            }
        }
    };
    // Resolved by an operator: nothing more is expected, unless the saga reached its end.
    let (status, expect) = if resolved && expect.is_some() {
        (Status::Resolved, None)
    } else {
        (status, expect)
    };
    let stuck = expect.is_some_and(|x| stuck_marks.contains(&x.key(def).as_str()));
    let status = if stuck { Status::Stuck } else { status };
    let deadline = match expect {
        _ if stuck => None,
        None => None,
        Some(Expect::Outcome(i)) => Some(Deadline {
            at: started[i]
                .unwrap_or(updated_at)
                .saturating_add(millis(def.steps[i].timeout)),
            action: Action::TimeOut(i),
        }),
        Some(x @ Expect::Reaction(i)) => Some(Deadline {
            at: seen[i]
                .timed_out
                .unwrap_or(updated_at)
                .saturating_add(millis(def.steps[i].compensation_timeout)),
            action: Action::MarkStuck(x.key(def)),
        }),
        Some(x @ Expect::Compensation(j)) => Some(Deadline {
            at: updated_at.saturating_add(millis(def.steps[j].compensation_timeout)),
            action: Action::MarkStuck(x.key(def)),
        }),
        Some(x @ Expect::End) => Some(Deadline {
            at: updated_at.saturating_add(millis(def.end.compensation_timeout)),
            action: Action::MarkStuck(x.key(def)),
        }),
    };
    let path = (0..n)
        .map(|i| {
            let s = seen[i];
            let state = match failed {
                Some(f) if i == f => StepState::Failed,
                Some(f) if i < f => match (&def.steps[i].compensated_by, s.compensated) {
                    (None, _) => StepState::Kept,
                    (Some(_), Some(_)) => StepState::Compensated,
                    (Some(_), None) => StepState::Compensating,
                },
                Some(_) => StepState::Pending,
                None if s.completed.is_some() => StepState::Completed,
                None if started[i].is_some() || expect == Some(Expect::Outcome(i)) => {
                    StepState::Active
                }
                None => StepState::Pending,
            };
            PathStep {
                step: def.steps[i].name.clone(),
                state,
                started_at: started[i],
                decided_at: s.failed.or(s.completed),
                compensated_at: s.compensated,
            }
        })
        .collect();
    flags.sort();
    flags.dedup();
    Summary {
        status,
        step,
        expect,
        remaining,
        failure: failed.and_then(|f| {
            failure_of[f].map(|e| {
                (
                    def.steps[f].name.clone(),
                    e.reason.clone().unwrap_or_default(),
                    e.reason_code.clone(),
                )
            })
        }),
        correlation_id: start
            .map(|(_, c)| c.to_string())
            .or_else(|| first.map(|e| e.correlation_id.clone()))
            .unwrap_or_default(),
        started_at: start.map(|(t, _)| t),
        updated_at,
        deadline,
        flags,
        path,
    }
}

/// How long step `i` took (from its trigger to its completion), if both were seen.
pub fn step_latency(def: &Definition, saga: &Saga, i: usize) -> Option<i64> {
    let summary = derive(def, saga);
    let p = summary.path.get(i)?;
    Some(p.decided_at? - p.started_at?)
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
#[path = "fold_tests.rs"]
mod tests;
