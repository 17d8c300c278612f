//! The saga definition file: a choreographed saga's steps, declared once, for the monitor and
//! for the participants. Nothing about a particular saga is written in code: the monitor folds
//! any saga a file describes, and a participant learns from it which events start its steps,
//! which ones make it compensate, and where to publish.
//!
//! A saga is a chain. The start event begins it; each step is started by the step before it
//! completing (the first by the start event), and completes or fails with its own events. When
//! step `f` fails, every earlier step that has a compensation event compensates, latest first,
//! and then the saga's own end compensation happens (for the order-fulfilment saga: the order
//! is cancelled). A step with no compensation event has nothing to undo (a check, a message)
//! and the wave of compensations passes it by.
//!
//! ```toml
//! name = "order_fulfilment"
//! timeouts_topic = "saga-timeouts"
//!
//! [start]
//! event = "eip.orders.OrderConfirmed"
//! topic = "order-events"
//!
//! [end]
//! participant = "orders"
//! compensated_by = "eip.orders.OrderCancelled"
//! topic = "order-events"
//! compensation_timeout = "60s"
//!
//! [[steps]]
//! name = "customer_verified"
//! participant = "customers"
//! topic = "saga-customers"
//! started_by = "eip.orders.OrderConfirmed"
//! completed_by = "eip.customers.CustomerVerified"
//! failed_by = "eip.customers.CustomerVerificationFailed"
//! timeout = "30s"
//! compensation_timeout = "60s"
//! ```
//!
//! [`Definition::parse`] checks every rule and names the step and field of the first it finds
//! broken; [`Definition::check_types`] checks the event names against a schema catalog.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Why a definition file can't be used; the message names the file, the step and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("saga definition {file}: {at}: {reason}")]
pub struct DefinitionError {
    /// The file (or `<inline>`).
    pub file: String,
    /// Where: `steps[3] (inventory_reserved).timeout`, `start.event`, ...
    pub at: String,
    /// What is wrong.
    pub reason: String,
}

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: String,
    timeouts_topic: String,
    start: StartFile,
    end: EndFile,
    steps: Vec<StepFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartFile {
    event: String,
    topic: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndFile {
    participant: String,
    compensated_by: String,
    topic: String,
    #[serde(with = "humantime_serde")]
    compensation_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    name: String,
    participant: String,
    topic: String,
    #[serde(default)]
    completed_topic: Option<String>,
    started_by: String,
    completed_by: String,
    failed_by: String,
    #[serde(default)]
    compensated_by: Option<String>,
    #[serde(with = "humantime_serde")]
    timeout: Duration,
    #[serde(with = "humantime_serde")]
    compensation_timeout: Duration,
}

/// One step of a saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Its name, unique in the saga (`inventory_reserved`).
    pub name: String,
    /// The participant role that performs it.
    pub participant: String,
    /// Where its participant publishes its failure and compensation events (and its
    /// completion, unless `completed_topic` says otherwise).
    pub topic: String,
    /// Where its completion event is published.
    pub completed_topic: String,
    /// The event that starts it: the previous step's completion, or the saga's start.
    pub started_by: String,
    /// The event that completes it.
    pub completed_by: String,
    /// The event that fails it.
    pub failed_by: String,
    /// The event that undoes it, if it has anything to undo.
    pub compensated_by: Option<String>,
    /// How long after it starts its outcome is due.
    pub timeout: Duration,
    /// How long its participant has to react (to a timeout, or to compensate) before the saga
    /// is stuck.
    pub compensation_timeout: Duration,
}

/// The saga's end compensation, after every step's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    /// The participant that performs it.
    pub participant: String,
    /// The event that says it happened.
    pub compensated_by: String,
    /// Where that event is published.
    pub topic: String,
    /// How long it may take once the last step compensation is seen.
    pub compensation_timeout: Duration,
}

/// What an event is to a saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The saga's start.
    Start,
    /// Step `i` (0-based) completed.
    Completed(usize),
    /// Step `i` failed.
    Failed(usize),
    /// Step `i` was compensated.
    Compensated(usize),
    /// The saga's end compensation happened.
    EndCompensated,
    /// The monitor saw a step's deadline pass (which step is in the event).
    TimedOut,
}

/// What a participant does when an event reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaction {
    /// Perform step `i`.
    Perform(usize),
    /// Undo step `i`.
    Compensate(usize),
    /// Perform the saga's end compensation.
    CompensateEnd,
    /// A timeout, for one of this participant's steps if the event says so.
    TimedOut,
    /// Step `i`'s trigger step failed: step `i` must never be performed, even if a
    /// completion of that step shows up later (someone else published it).
    Block(usize),
}

/// Step names the records' ids use for themselves (`{saga}:timeout:{step}`,
/// `{saga}:stuck:{expectation}`, the end compensation's decision `end`, and a step's state):
/// a step can't be called that.
pub const RESERVED: [&str; 7] = [
    "end",
    "timeout",
    "stuck",
    "completed",
    "failed",
    "compensated",
    "blocked",
];

/// The full Avro name of the monitor's timeout event.
pub const TIMED_OUT: &str = "eip.saga.SagaStepTimedOut";

/// A parsed, checked saga definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    /// The saga's name.
    pub name: String,
    /// Where the monitor publishes timeouts.
    pub timeouts_topic: String,
    /// The start event.
    pub start_event: String,
    /// Where the start event is published.
    pub start_topic: String,
    /// The end compensation.
    pub end: End,
    /// The steps, in order.
    pub steps: Vec<Step>,
    roles: HashMap<String, Role>,
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn is_topic(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 249
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn is_avro_name(s: &str) -> bool {
    s.contains('.')
        && s.split('.').all(|part| {
            part.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

impl Definition {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Definition, DefinitionError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| DefinitionError {
            file: file.clone(),
            at: "file".into(),
            reason: format!("can't be read: {e}"),
        })?;
        Definition::parse(&text, &file)
    }

    /// Parses and checks a definition; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Definition, DefinitionError> {
        let err = |at: String, reason: String| DefinitionError {
            file: file.to_string(),
            at,
            reason,
        };
        let raw: File = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].lines().count().max(1);
                    format!("line {line}")
                })
                .unwrap_or_else(|| "file".into());
            err(at, e.message().to_string())
        })?;
        if !is_name(&raw.name) {
            return Err(err(
                "name".into(),
                format!("{:?} must be lowercase letters, digits and _", raw.name),
            ));
        }
        for (at, topic) in [
            ("timeouts_topic", &raw.timeouts_topic),
            ("start.topic", &raw.start.topic),
            ("end.topic", &raw.end.topic),
        ] {
            if !is_topic(topic) {
                return Err(err(at.into(), format!("{topic:?} is not a topic name")));
            }
        }
        for (at, event) in [
            ("start.event", &raw.start.event),
            ("end.compensated_by", &raw.end.compensated_by),
        ] {
            if !is_avro_name(event) {
                return Err(err(
                    at.into(),
                    format!("{event:?} is not a full Avro name (namespace.Name)"),
                ));
            }
        }
        if !is_name(&raw.end.participant) {
            return Err(err(
                "end.participant".into(),
                format!(
                    "{:?} must be lowercase letters, digits and _",
                    raw.end.participant
                ),
            ));
        }
        if raw.end.compensation_timeout.is_zero() {
            return Err(err(
                "end.compensation_timeout".into(),
                "must be more than 0".into(),
            ));
        }
        if raw.steps.is_empty() {
            return Err(err("steps".into(), "a saga needs at least one step".into()));
        }
        let mut roles: HashMap<String, Role> = HashMap::new();
        let mut claim = |event: &str, role: Role, at: String| -> Result<(), DefinitionError> {
            if event == TIMED_OUT {
                return Err(err(at, format!("{TIMED_OUT} is the monitor's own event")));
            }
            if roles.insert(event.to_string(), role).is_some() {
                return Err(err(
                    at,
                    format!(
                        "{event} has another role in this saga already: each event means one thing"
                    ),
                ));
            }
            Ok(())
        };
        claim(&raw.start.event, Role::Start, "start.event".into())?;
        claim(
            &raw.end.compensated_by,
            Role::EndCompensated,
            "end.compensated_by".into(),
        )?;
        let mut names = BTreeSet::new();
        let mut steps = Vec::with_capacity(raw.steps.len());
        for (i, s) in raw.steps.iter().enumerate() {
            let at = |field: &str| format!("steps[{i}] ({}).{field}", s.name);
            if !is_name(&s.name) {
                return Err(err(
                    format!("steps[{i}].name"),
                    format!("{:?} must be lowercase letters, digits and _", s.name),
                ));
            }
            if !names.insert(s.name.clone()) {
                return Err(err(at("name"), "another step has this name".into()));
            }
            if RESERVED.contains(&s.name.as_str()) {
                return Err(err(
                    at("name"),
                    format!(
                        "{:?} is reserved (the end compensation's and the monitor's own records use {})",
                        s.name,
                        RESERVED.join(", ")
                    ),
                ));
            }
            if !is_name(&s.participant) {
                return Err(err(
                    at("participant"),
                    format!(
                        "{:?} must be lowercase letters, digits and _",
                        s.participant
                    ),
                ));
            }
            if !is_topic(&s.topic) {
                return Err(err(
                    at("topic"),
                    format!("{:?} is not a topic name", s.topic),
                ));
            }
            if let Some(t) = &s.completed_topic
                && !is_topic(t)
            {
                return Err(err(
                    at("completed_topic"),
                    format!("{t:?} is not a topic name"),
                ));
            }
            let mut events = vec![
                ("started_by", Some(&s.started_by)),
                ("completed_by", Some(&s.completed_by)),
                ("failed_by", Some(&s.failed_by)),
                ("compensated_by", s.compensated_by.as_ref()),
            ];
            for (field, event) in events.drain(..) {
                if let Some(event) = event
                    && !is_avro_name(event)
                {
                    return Err(err(
                        at(field),
                        format!("{event:?} is not a full Avro name (namespace.Name)"),
                    ));
                }
            }
            let expected = if i == 0 {
                raw.start.event.as_str()
            } else {
                raw.steps[i - 1].completed_by.as_str()
            };
            if s.started_by != expected {
                return Err(err(
                    at("started_by"),
                    format!(
                        "is {}, but a step starts when the one before it completes ({expected}): \
                         steps form a chain",
                        s.started_by
                    ),
                ));
            }
            if s.timeout.is_zero() {
                return Err(err(at("timeout"), "must be more than 0".into()));
            }
            if s.compensation_timeout.is_zero() {
                return Err(err(
                    at("compensation_timeout"),
                    "must be more than 0".into(),
                ));
            }
            claim(&s.completed_by, Role::Completed(i), at("completed_by"))?;
            claim(&s.failed_by, Role::Failed(i), at("failed_by"))?;
            if let Some(c) = &s.compensated_by {
                claim(c, Role::Compensated(i), at("compensated_by"))?;
            }
            steps.push(Step {
                name: s.name.clone(),
                participant: s.participant.clone(),
                topic: s.topic.clone(),
                completed_topic: s.completed_topic.clone().unwrap_or_else(|| s.topic.clone()),
                started_by: s.started_by.clone(),
                completed_by: s.completed_by.clone(),
                failed_by: s.failed_by.clone(),
                compensated_by: s.compensated_by.clone(),
                timeout: s.timeout,
                compensation_timeout: s.compensation_timeout,
            });
        }
        Ok(Definition {
            name: raw.name,
            timeouts_topic: raw.timeouts_topic,
            start_event: raw.start.event,
            start_topic: raw.start.topic,
            end: End {
                participant: raw.end.participant,
                compensated_by: raw.end.compensated_by,
                topic: raw.end.topic,
                compensation_timeout: raw.end.compensation_timeout,
            },
            steps,
            roles,
        })
    }

    /// Checks that every event the definition names is a record type `known` accepts (the
    /// schema catalog's names), so a typo is an error at startup rather than a saga that
    /// never moves.
    pub fn check_types(&self, known: impl Fn(&str) -> bool) -> Result<(), DefinitionError> {
        let mut events: Vec<(&String, &Role)> = self.roles.iter().collect();
        events.sort_by_key(|(_, role)| **role);
        for (event, role) in events {
            if !known(event) {
                let at = match role {
                    Role::Start => "start.event".to_string(),
                    Role::EndCompensated => "end.compensated_by".to_string(),
                    Role::Completed(i) => {
                        format!("steps[{i}] ({}).completed_by", self.steps[*i].name)
                    }
                    Role::Failed(i) => format!("steps[{i}] ({}).failed_by", self.steps[*i].name),
                    Role::Compensated(i) => {
                        format!("steps[{i}] ({}).compensated_by", self.steps[*i].name)
                    }
                    Role::TimedOut => "timeouts_topic".to_string(),
                };
                return Err(DefinitionError {
                    file: self.name.clone(),
                    at,
                    reason: format!("{event} is not a record type of the schema catalog"),
                });
            }
        }
        Ok(())
    }

    /// What `event_type` is to this saga; None for an event it does not declare.
    pub fn role_of(&self, event_type: &str) -> Option<Role> {
        if event_type == TIMED_OUT {
            return Some(Role::TimedOut);
        }
        self.roles.get(event_type).copied()
    }

    /// The step named `name`, with its index.
    pub fn step(&self, name: &str) -> Option<(usize, &Step)> {
        self.steps.iter().enumerate().find(|(_, s)| s.name == name)
    }

    /// Every topic the saga's events are published to: what the monitor reads.
    pub fn topics(&self) -> Vec<String> {
        let mut topics = BTreeSet::new();
        topics.insert(self.start_topic.clone());
        topics.insert(self.end.topic.clone());
        topics.insert(self.timeouts_topic.clone());
        for s in &self.steps {
            topics.insert(s.topic.clone());
            topics.insert(s.completed_topic.clone());
        }
        topics.into_iter().collect()
    }

    /// The topic `event_type` is published to.
    pub fn topic_of(&self, event_type: &str) -> Option<&str> {
        Some(match self.role_of(event_type)? {
            Role::Start => &self.start_topic,
            Role::EndCompensated => &self.end.topic,
            Role::TimedOut => &self.timeouts_topic,
            Role::Completed(i) => &self.steps[i].completed_topic,
            Role::Failed(i) | Role::Compensated(i) => &self.steps[i].topic,
        })
    }

    /// The index of the first step after `after` (None: from the start) that has a
    /// compensation event.
    fn next_compensable(&self, after: Option<usize>) -> Option<usize> {
        let from = after.map_or(0, |a| a + 1);
        (from..self.steps.len()).find(|&i| self.steps[i].compensated_by.is_some())
    }

    /// The events that make the compensation of step `step` (None: the end compensation)
    /// due: a failure of any later step up to the next compensable one (the steps in between
    /// have nothing to undo), or that next step's own compensation.
    pub fn compensation_triggers(&self, step: Option<usize>) -> Vec<&str> {
        let next = self.next_compensable(step);
        let from = step.map_or(0, |s| s + 1);
        let to = next.unwrap_or(self.steps.len() - 1);
        let mut triggers: Vec<&str> = (from..=to)
            .map(|i| self.steps[i].failed_by.as_str())
            .collect();
        if let Some(n) = next
            && let Some(c) = &self.steps[n].compensated_by
        {
            triggers.push(c);
        }
        triggers
    }

    /// What `participant` does on `event_type`, if anything: perform a step it starts,
    /// compensate one of its steps (or the end), or look at a timeout.
    pub fn reactions(&self, participant: &str, event_type: &str) -> Vec<Reaction> {
        let mut out = Vec::new();
        if event_type == TIMED_OUT {
            if self.steps.iter().any(|s| s.participant == participant) {
                out.push(Reaction::TimedOut);
            }
            return out;
        }
        for (i, s) in self.steps.iter().enumerate() {
            if s.participant != participant {
                continue;
            }
            if s.started_by == event_type {
                out.push(Reaction::Perform(i));
            }
            if i > 0 && self.steps[i - 1].failed_by == event_type {
                out.push(Reaction::Block(i));
            }
            if s.compensated_by.is_some()
                && self.compensation_triggers(Some(i)).contains(&event_type)
            {
                out.push(Reaction::Compensate(i));
            }
        }
        if self.end.participant == participant
            && self.compensation_triggers(None).contains(&event_type)
        {
            out.push(Reaction::CompensateEnd);
        }
        out
    }

    /// The topics `participant` reads: those of every event it reacts to, and the timeouts.
    pub fn inputs_of(&self, participant: &str) -> Vec<String> {
        let mut topics = BTreeSet::new();
        for event in self.roles.keys() {
            if !self.reactions(participant, event).is_empty()
                && let Some(t) = self.topic_of(event)
            {
                topics.insert(t.to_string());
            }
        }
        if self.steps.iter().any(|s| s.participant == participant) {
            topics.insert(self.timeouts_topic.clone());
        }
        topics.into_iter().collect()
    }

    /// Every participant role named in the file.
    pub fn participants(&self) -> BTreeSet<&str> {
        let mut all: BTreeSet<&str> = self.steps.iter().map(|s| s.participant.as_str()).collect();
        all.insert(&self.end.participant);
        all
    }

    /// Every event type the saga declares (not the monitor's timeout).
    pub fn events(&self) -> impl Iterator<Item = &str> {
        self.roles.keys().map(String::as_str)
    }
}

#[cfg(test)]
#[path = "definition_tests.rs"]
mod tests;
