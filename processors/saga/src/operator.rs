//! Operator actions on one saga, as `POST /sagas/{id}/actions` takes them:
//! - **re-emit** the trigger of what the saga waits for: the very record that started the step
//!   in progress (or the pending compensation), read back from Kafka and published again with
//!   its key, value and headers, so its event id is the same. The participant that missed it
//!   decides now; one that had decided publishes its decision again (a repeat, the same id).
//! - **compensate**: ask the participant of the step in progress to fail it, with a
//!   `SagaStepTimedOut` whose `reason_code` is `operator`. A step the participant has not
//!   decided fails, and the compensation runs as after any failure. A step it decided keeps its
//!   decision (the participant is the one place that decides), which is published again.
//! - **resolve**: mark the saga handled by hand. It leaves every list of work to do (stuck,
//!   running, compensating) for `resolved`, and its deadlines stop. Events that arrive later
//!   still count: a saga that then completes or is compensated shows that status.
//!
//! Every action is recorded in the saga's history as an observation on the monitor's own topic
//! (`eip.saga.operator.*`), with who did it, why, and where its effect was published.
//!
//! [`plan`] is pure: what an action on a saga in a given state does, or why it can't.

use eip_schemas::types::SagaObservation;
use serde::{Deserialize, Serialize};

use crate::definition::{Definition, Role};
use crate::fold::{COMPENSATION_STARTED, Expect, REEMITTED, RESOLVED, Saga, derive};

/// An operator action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Publish the trigger of what the saga waits for again.
    Reemit,
    /// Fail the step in progress, which starts the compensation.
    Compensate,
    /// Mark the saga handled by hand.
    Resolve,
}

impl Kind {
    /// Every action, as the API spells it.
    pub const ALL: [Kind; 3] = [Kind::Reemit, Kind::Compensate, Kind::Resolve];

    /// The action as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Reemit => "reemit",
            Kind::Compensate => "compensate",
            Kind::Resolve => "resolve",
        }
    }

    /// The action spelled `s`.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The event type its record in the history has.
    pub fn event_type(self) -> &'static str {
        match self {
            Kind::Reemit => REEMITTED,
            Kind::Compensate => COMPENSATION_STARTED,
            Kind::Resolve => RESOLVED,
        }
    }
}

/// What an action does to a saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Publish `trigger`'s record again; the saga waits on `step`.
    Reemit {
        /// The step (or `end`) whose trigger it is.
        step: String,
        /// The trigger as observed: its topic, partition and offset say where to read it.
        trigger: Box<SagaObservation>,
    },
    /// Ask step `step`'s participant to fail it.
    Compensate {
        /// The step in progress.
        step: String,
    },
    /// Record the resolution; `step` is where the saga stopped, if anywhere.
    Resolve {
        /// Where it stopped.
        step: Option<String>,
    },
}

impl Plan {
    /// The step the action is about.
    pub fn step(&self) -> Option<&str> {
        match self {
            Plan::Reemit { step, .. } | Plan::Compensate { step } => Some(step),
            Plan::Resolve { step } => step.as_deref(),
        }
    }
}

/// Why an action can't be done on a saga in its state (a 409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// What `kind` does to `saga`, or why it can't.
pub fn plan(def: &Definition, saga: &Saga, kind: Kind) -> Result<Plan, Refused> {
    let summary = derive(def, saga);
    let status = summary.status.as_str();
    let Some(expect) = summary.expect else {
        return Err(Refused(format!(
            "the saga is {status}: nothing more is expected of it"
        )));
    };
    match kind {
        Kind::Resolve => Ok(Plan::Resolve {
            step: summary.step.clone(),
        }),
        Kind::Compensate => match expect {
            Expect::Outcome(i) | Expect::Reaction(i) => Ok(Plan::Compensate {
                step: def.steps[i].name.clone(),
            }),
            Expect::Compensation(_) | Expect::End => Err(Refused(format!(
                "the saga is {status} after {} failed: its compensation has started already \
                 (re-emit the trigger of a compensation that does not come)",
                summary.failure.as_ref().map_or("a step", |f| f.0.as_str())
            ))),
        },
        Kind::Reemit => {
            let (step, wanted) = trigger_of(def, saga, expect);
            let trigger = saga
                .events
                .values()
                .filter(|e| wanted(def.role_of(&e.event_type)) && e.offset >= 0)
                .min_by_key(|e| (e.occurred_at, e.event_id.clone()))
                .ok_or_else(|| {
                    Refused(format!(
                        "the trigger of {step} was never seen by the monitor, so there is no \
                         record to publish again"
                    ))
                })?;
            Ok(Plan::Reemit {
                step,
                trigger: Box::new(trigger.clone()),
            })
        }
    }
}

type Wanted = Box<dyn Fn(Option<Role>) -> bool>;

/// The step (or `end`) that `expect` is about, and which events trigger it.
fn trigger_of(def: &Definition, saga: &Saga, expect: Expect) -> (String, Wanted) {
    match expect {
        Expect::Outcome(i) | Expect::Reaction(i) => (
            def.steps[i].name.clone(),
            Box::new(move |r| match i {
                0 => r == Some(Role::Start),
                _ => r == Some(Role::Completed(i - 1)),
            }),
        ),
        Expect::Compensation(j) => (
            def.steps[j].name.clone(),
            compensation_trigger(def, saga, j + 1),
        ),
        Expect::End => ("end".into(), compensation_trigger(def, saga, 0)),
    }
}

/// What makes the compensation of the steps before `from` go: the compensation of the first
/// compensable step at or after `from` and before the failure, else the failure (the rule in
/// docs/sagas.md, "Who compensates when").
fn compensation_trigger(def: &Definition, saga: &Saga, from: usize) -> Wanted {
    let failed = saga
        .events
        .values()
        .filter_map(|e| match def.role_of(&e.event_type) {
            Some(Role::Failed(f)) => Some(f),
            _ => None,
        })
        .min()
        .unwrap_or(def.steps.len());
    match (from..failed).find(|&k| def.steps[k].compensated_by.is_some()) {
        Some(k) => Box::new(move |r| r == Some(Role::Compensated(k))),
        None => Box::new(move |r| r == Some(Role::Failed(failed))),
    }
}

/// `POST /sagas/{id}/actions`: what the operator asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// `reemit`, `compensate` or `resolve`.
    pub action: String,
    /// Who asks (recorded in the saga's history).
    pub actor: String,
    /// Why (recorded too).
    #[serde(default)]
    pub reason: Option<String>,
    /// Act only if the saga still has this status (what the caller saw); else a 409.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_status: Option<String>,
    /// Act only if the saga still waits for this (its `expect`, as the caller saw it); else a
    /// 409. A bulk action sends both, so a saga that moved on since it was listed is left
    /// alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_expect: Option<String>,
}

/// The longest actor name.
pub const MAX_ACTOR: usize = 200;
/// The longest reason.
pub const MAX_REASON: usize = 1_000;

impl ActionRequest {
    /// The action, or why the request is malformed (a 400).
    pub fn check(&self) -> Result<Kind, String> {
        let kind = Kind::parse(&self.action).ok_or_else(|| {
            format!(
                "action {:?}: one of reemit, compensate, resolve",
                self.action
            )
        })?;
        let actor = self.actor.trim();
        if actor.is_empty() || actor.chars().count() > MAX_ACTOR {
            return Err(format!("actor: who does this, 1 to {MAX_ACTOR} characters"));
        }
        if self.actor.chars().any(char::is_control) {
            return Err("actor: no control characters".into());
        }
        if actor == MONITOR_ACTOR {
            return Err(format!(
                "actor: {MONITOR_ACTOR} is the monitor's own name, not an operator's"
            ));
        }
        if let Some(r) = &self.reason {
            if r.chars().count() > MAX_REASON {
                return Err(format!("reason: at most {MAX_REASON} characters"));
            }
            // It ends up in failure reasons that terminals print: no escape sequences.
            if r.chars().any(|c| c.is_control() && c != '\n') {
                return Err("reason: no control characters but line breaks".into());
            }
        }
        Ok(kind)
    }

    /// Refuses when the saga is no longer what the caller saw (`if_status`, `if_expect`).
    pub fn check_still(&self, def: &Definition, saga: &Saga) -> Result<(), Refused> {
        let summary = derive(def, saga);
        if let Some(want) = &self.if_status
            && want != summary.status.as_str()
        {
            return Err(Refused(format!(
                "the saga is {} now, not {want}: it moved on, so it is left alone",
                summary.status.as_str()
            )));
        }
        let expect = summary.expect.map(|x| x.key(def));
        if let Some(want) = &self.if_expect
            && expect.as_ref() != Some(want)
        {
            return Err(Refused(format!(
                "the saga waits for {} now, not {want}: it moved on, so it is left alone",
                expect.as_deref().unwrap_or("nothing")
            )));
        }
        Ok(())
    }
}

/// The actor name of the monitor's own marks.
pub const MONITOR_ACTOR: &str = "saga-monitor";

/// Where an action's effect was published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The record's event type.
    pub event_type: String,
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
}

/// The answer to an action: what was done and where it is recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionDone {
    /// The saga.
    pub saga_id: String,
    /// The action.
    pub action: String,
    /// The step it was about, if any.
    pub step: Option<String>,
    /// The id of its record in the saga's history.
    pub event_id: String,
    /// What it published besides that record (the re-emitted trigger, the timeout).
    pub published: Vec<Published>,
    /// Where its record went.
    pub recorded: Published,
}

#[cfg(test)]
#[path = "operator_tests.rs"]
mod tests;
