//! Liveness and readiness state, served at `/healthz` and `/readyz`.
//!
//! - Live: the process has not hit a fatal error (it is draining to exit).
//! - Ready: the broker answered a metadata request, the registry answered, and this member has
//!   partitions assigned. A replica with no partitions (more replicas than partitions) is not
//!   ready, which tells an SRE that scaling further does not help.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Shared health flags, updated by the readiness checker and the rebalance callbacks.
#[derive(Debug, Default)]
pub struct Health {
    broker: AtomicBool,
    registry: AtomicBool,
    assigned: AtomicUsize,
    fatal: AtomicBool,
}

/// A readiness verdict with the reasons when not ready.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Readiness {
    /// All checks pass.
    pub ready: bool,
    /// The broker answered the last metadata request.
    pub broker: bool,
    /// The registry answered the last probe.
    pub registry: bool,
    /// Partitions assigned to this member.
    pub assigned_partitions: usize,
}

impl Health {
    /// Records the result of the last broker check.
    pub fn set_broker(&self, ok: bool) {
        self.broker.store(ok, Ordering::Release);
    }

    /// Records the result of the last registry check.
    pub fn set_registry(&self, ok: bool) {
        self.registry.store(ok, Ordering::Release);
    }

    /// Records the current number of assigned partitions.
    pub fn set_assigned(&self, n: usize) {
        self.assigned.store(n, Ordering::Release);
    }

    /// Marks the process as failed: liveness turns false.
    pub fn set_fatal(&self) {
        self.fatal.store(true, Ordering::Release);
    }

    /// Liveness.
    pub fn live(&self) -> bool {
        !self.fatal.load(Ordering::Acquire)
    }

    /// Readiness and its parts.
    pub fn readiness(&self) -> Readiness {
        let broker = self.broker.load(Ordering::Acquire);
        let registry = self.registry.load(Ordering::Acquire);
        let assigned_partitions = self.assigned.load(Ordering::Acquire);
        Readiness {
            ready: broker && registry && assigned_partitions > 0 && self.live(),
            broker,
            registry,
            assigned_partitions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_broker_registry_and_partitions() {
        let h = Health::default();
        assert!(!h.readiness().ready);
        h.set_broker(true);
        h.set_registry(true);
        assert!(!h.readiness().ready, "no partitions yet");
        h.set_assigned(2);
        assert!(h.readiness().ready);
        h.set_registry(false);
        assert!(!h.readiness().ready);
        h.set_registry(true);
        h.set_fatal();
        assert!(!h.live());
        assert!(!h.readiness().ready);
    }
}
