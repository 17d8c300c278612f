//! Test helpers the saga crate's unit tests share: the shipped definition and observations.

use eip_schemas::types::SagaObservation;

use crate::definition::Definition;

/// The shipped order-fulfilment definition, as text.
pub const SHIPPED: &str = include_str!("../../../deploy/sagas/order-fulfilment.toml");
/// A time the tests' events happen around, ms since the Unix epoch.
pub const T0: i64 = 1_800_000_000_000;

/// The shipped definition.
pub fn def() -> Definition {
    Definition::parse(SHIPPED, "order-fulfilment.toml").unwrap()
}

/// An observation of saga `o-1` (correlation `corr-1`), read at offset 7 of topic `t`.
pub fn obs(event_type: &str, id: &str, at: i64) -> SagaObservation {
    SagaObservation {
        saga_id: "o-1".into(),
        event_type: event_type.into(),
        event_id: id.into(),
        correlation_id: "corr-1".into(),
        causation_id: None,
        occurred_at: at,
        topic: "t".into(),
        partition: 0,
        offset: 7,
        reason: None,
        reason_code: None,
        step: None,
        actor: None,
    }
}
