//! Liveness and readiness, served at `/healthz` and `/readyz` by every eip binary.
//!
//! One module for all of them, with pluggable checks: a binary names its readiness checks when
//! it creates its [`Health`] and reports each one's outcome as it learns it. A processor's
//! checks are `broker`, `registry` and `partitions` ([`PROCESSOR_CHECKS`]); the gateway's are
//! `broker`, `registry`, `topics` and `serving`.
//!
//! - **Live**: no fatal error. After one the process is draining to exit, and `/healthz`
//!   answers 503 with the reason. `/healthz` also counts the panics the process contained
//!   (`"panics"`): a panic in a processor's `decode` or `process` dead-letters that record
//!   and the partition goes on, so the process stays live, but each one is a bug.
//! - **Ready**: live, and every check passed the last time it ran. A check that has not run
//!   yet is not passing. `/readyz` answers 200, or 503 with an `error` naming each failing
//!   check and why, so an SRE reads the cause from the probe itself:
//!   `{"ready":false,"checks":{"broker":true,"partitions":false,"registry":true},"error":"not ready: partitions: none assigned (more replicas than partitions?)"}`.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// A processor's readiness checks: the broker answers a metadata request, the registry
/// answers, and this member has partitions (a replica with none is not ready, which tells an
/// SRE that more replicas than partitions don't help).
pub const PROCESSOR_CHECKS: &[&str] = &["broker", "registry", "partitions"];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    NotYet,
    Pass,
    Fail(String),
}

#[derive(Debug, Default)]
struct State {
    checks: BTreeMap<&'static str, Outcome>,
    fatal: Option<String>,
    panics: u64,
    /// Partitions assigned, once known.
    assigned: Option<usize>,
    /// Partitions whose state is still being opened (loaded, read back).
    opening: usize,
}

impl State {
    /// The `partitions` check: some assigned, none still opening.
    fn partitions(&mut self) {
        let Some(assigned) = self.assigned else {
            return;
        };
        let outcome = if assigned == 0 {
            Outcome::Fail("none assigned (more replicas than partitions?)".into())
        } else if self.opening > 0 {
            Outcome::Fail(format!(
                "{} of {assigned} still opening: their state is loading (eip_partitions_opening)",
                self.opening
            ))
        } else {
            Outcome::Pass
        };
        self.checks.insert("partitions", outcome);
    }
}

/// Shared health state, updated by readiness loops and callbacks, read by the probes.
#[derive(Debug)]
pub struct Health {
    state: Mutex<State>,
}

/// A readiness verdict: each check's outcome, and why when not ready.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Readiness {
    /// Live, and every check passes.
    pub ready: bool,
    /// Each check by name: whether it passed the last time it ran.
    pub checks: BTreeMap<&'static str, bool>,
    /// When not ready: `not ready: ` and each failing check with its reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Readiness {
    /// Whether check `name` passed (false for an unknown name).
    pub fn check(&self, name: &str) -> bool {
        self.checks.get(name).copied().unwrap_or(false)
    }
}

impl Health {
    /// Health with these readiness checks, none of them run yet.
    pub fn new(checks: &[&'static str]) -> Health {
        Health {
            state: Mutex::new(State {
                checks: checks.iter().map(|c| (*c, Outcome::NotYet)).collect(),
                ..State::default()
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A panic while holding this lock can't leave the state half-written: every update is
        // one insert. So a poisoned lock is used as it is.
        let mut guard = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    /// Records that check `name` passed.
    pub fn pass(&self, name: &'static str) {
        self.with(|s| s.checks.insert(name, Outcome::Pass));
    }

    /// Records that check `name` failed, and why.
    pub fn fail(&self, name: &'static str, reason: impl Into<String>) {
        let reason = reason.into();
        self.with(|s| s.checks.insert(name, Outcome::Fail(reason)));
    }

    /// Records check `name`: passed when `ok`, else failed with `reason`.
    pub fn report(&self, name: &'static str, ok: bool, reason: &str) {
        if ok {
            self.pass(name);
        } else {
            self.fail(name, reason);
        }
    }

    /// Records the current number of assigned partitions (the `partitions` check).
    pub fn set_assigned(&self, n: usize) {
        self.with(|s| {
            s.assigned = Some(n);
            s.partitions();
        });
    }

    /// A partition started opening its state (`true`) or finished, either way (`false`). The
    /// `partitions` check fails while any is opening: the member does not serve it yet.
    pub fn opening(&self, started: bool) {
        self.with(|s| {
            s.opening = if started {
                s.opening + 1
            } else {
                s.opening.saturating_sub(1)
            };
            s.partitions();
        });
    }

    /// Marks the process as failed: liveness turns false, with `reason` on `/healthz`.
    pub fn set_fatal(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.with(|s| {
            if s.fatal.is_none() {
                s.fatal = Some(reason);
            }
        });
    }

    /// Counts a panic the process contained (a record that was dead-lettered for it).
    /// `/healthz` reports the count: the process is still live, but a panic is a bug to fix.
    pub fn record_panic(&self) {
        self.with(|s| s.panics += 1);
    }

    /// Panics contained so far.
    pub fn panics(&self) -> u64 {
        self.with(|s| s.panics)
    }

    /// Liveness.
    pub fn live(&self) -> bool {
        self.with(|s| s.fatal.is_none())
    }

    /// Why the process is not live, if it is not.
    pub fn fatal(&self) -> Option<String> {
        self.with(|s| s.fatal.clone())
    }

    /// Readiness and its parts.
    pub fn readiness(&self) -> Readiness {
        self.with(|s| {
            let mut problems: Vec<String> = s
                .checks
                .iter()
                .filter_map(|(name, outcome)| match outcome {
                    Outcome::Pass => None,
                    Outcome::NotYet => Some(format!("{name}: not checked yet")),
                    Outcome::Fail(reason) => Some(format!("{name}: {reason}")),
                })
                .collect();
            if let Some(reason) = &s.fatal {
                problems.push(format!("fatal error: {reason}"));
            }
            Readiness {
                ready: problems.is_empty(),
                checks: s
                    .checks
                    .iter()
                    .map(|(name, outcome)| (*name, *outcome == Outcome::Pass))
                    .collect(),
                error: (!problems.is_empty())
                    .then(|| format!("not ready: {}", problems.join("; "))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_processor_then_ready_needs_broker_registry_and_partitions() {
        let h = Health::new(PROCESSOR_CHECKS);
        let r = h.readiness();
        assert!(!r.ready);
        assert_eq!(
            r.error.as_deref(),
            Some(
                "not ready: broker: not checked yet; partitions: not checked yet; registry: not checked yet"
            )
        );
        h.pass("broker");
        h.pass("registry");
        h.set_assigned(0);
        let r = h.readiness();
        assert!(!r.ready, "no partitions yet");
        assert!(r.check("broker") && r.check("registry") && !r.check("partitions"));
        assert!(
            r.error
                .unwrap_or_default()
                .contains("partitions: none assigned")
        );
        h.set_assigned(2);
        assert!(h.readiness().ready);
        assert_eq!(h.readiness().error, None);
        // A partition still opening its state is not served yet.
        h.opening(true);
        let r = h.readiness();
        assert!(!r.ready);
        assert!(
            r.error
                .unwrap_or_default()
                .contains("partitions: 1 of 2 still opening")
        );
        h.opening(false);
        assert!(h.readiness().ready);
        h.fail("registry", "does not answer");
        assert_eq!(
            h.readiness().error.as_deref(),
            Some("not ready: registry: does not answer")
        );
        h.pass("registry");
        h.set_fatal("the store's schema is newer");
        h.set_fatal("a second reason is not kept");
        assert!(!h.live());
        assert_eq!(h.fatal().as_deref(), Some("the store's schema is newer"));
        assert!(!h.readiness().ready);
    }

    #[test]
    fn given_custom_checks_then_each_is_reported_by_name() {
        let h = Health::new(&["topics", "serving"]);
        h.pass("serving");
        h.fail("topics", "routed topics missing: orders");
        let r = h.readiness();
        let json = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({
                "ready": false,
                "checks": {"serving": true, "topics": false},
                "error": "not ready: topics: routed topics missing: orders"
            })
        );
        assert!(!r.check("no such check"));
    }
}
