//! Dead-lettering a record that can never be handled: the original record, with its reason
//! headers, to `<topic><dlq_suffix>`, counted by class.

use eip_schemas::ErrorClass;
use rdkafka::error::KafkaError;

use crate::stateful::Stateful;

use super::*;

pub(super) fn count_dead_letter<S: Stateful>(core: &Core<S>, source: &str, class: ErrorClass) {
    core.metrics
        .dlq
        .with_label_values(&[core.name.as_str(), source, class.as_str()])
        .inc();
}

/// A dead letter the broker refuses can't be kept anywhere: stop rather than lose it.
pub(super) fn refused_dead_letter<S: Stateful>(core: &Core<S>, key: &PartitionKey, e: &KafkaError) {
    core.stop.fatal(format!(
        "dead letter from {}[{}] refused by the broker: {e}",
        key.0, key.1
    ));
}
