//! Every metric a processor exports, named in one place.
//!
//! Labels are bounded: `processor`, `topic` (configured inputs and outputs), `partition`
//! (bounded by the topic's partition count), `class` and `outcome`. Never a key or an id.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Records consumed from input topics.
pub const CONSUMED: &str = "eip_records_consumed_total";
/// Records produced to output topics (acknowledged by the broker).
pub const PRODUCED: &str = "eip_records_produced_total";
/// Records sent to a dead-letter topic.
pub const DLQ: &str = "eip_records_dlq_total";
/// Retries of a record after a transient error.
pub const RETRIED: &str = "eip_records_retried_total";
/// Time per record to handle a poll batch (decode, process, encode, hand the outputs to the
/// producer; before acknowledgement, and with any wait for a record not yet due): the batch's
/// time divided by its records, observed once per batch, so `_count` counts batches.
pub const PROCESSING_SECONDS: &str = "eip_processing_seconds";
/// Records consumed but not yet committed.
pub const IN_FLIGHT: &str = "eip_records_in_flight";
/// Consumer lag per partition, from librdkafka statistics.
pub const CONSUMER_LAG: &str = "eip_consumer_lag";
/// Partitions currently assigned to this member.
pub const ASSIGNED_PARTITIONS: &str = "eip_assigned_partitions";
/// Partitions currently paused for backpressure.
pub const PAUSED_PARTITIONS: &str = "eip_paused_partitions";
/// Rebalance events by kind (`assign`, `revoke`, `error`).
pub const REBALANCES: &str = "eip_rebalances_total";
/// 1 when the last readiness check passed.
pub const READY: &str = "eip_ready";
/// Panics in a processor's `decode` or `process`, by stage: each one dead-letters its record.
pub const PANICS: &str = "eip_panics_total";
/// Timers pending across the assigned partitions of a stateful processor.
pub const TIMERS: &str = "eip_timers_pending";
/// Partitions whose state is still being opened (loaded, read back): assigned, not served yet.
pub const OPENING: &str = "eip_partitions_opening";
/// Group commits of a stateful processor by outcome (`durable`, `retried`, `fenced`, `failed`).
pub const GROUP_COMMITS: &str = "eip_group_commits_total";
/// How long a stateful processor's group commit took, from its first attempt to durable.
pub const GROUP_COMMIT_SECONDS: &str = "eip_group_commit_seconds";
/// Offset commits the broker refused or that failed to reach it; the records are redelivered
/// after a restart or rebalance, so a rising count means duplicates are coming.
pub const COMMIT_FAILURES: &str = "eip_commit_failures_total";

/// The metric handles of one processor, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// See [`CONSUMED`]; labels: processor, topic.
    pub consumed: IntCounterVec,
    /// See [`PRODUCED`]; labels: processor, topic.
    pub produced: IntCounterVec,
    /// See [`DLQ`]; labels: processor, topic (the source), class.
    pub dlq: IntCounterVec,
    /// See [`RETRIED`]; labels: processor, topic.
    pub retried: IntCounterVec,
    /// See [`PROCESSING_SECONDS`]; labels: processor, topic.
    pub processing: HistogramVec,
    /// See [`IN_FLIGHT`]; labels: processor.
    pub in_flight: IntGaugeVec,
    /// See [`CONSUMER_LAG`]; labels: processor, topic, partition.
    pub lag: IntGaugeVec,
    /// See [`ASSIGNED_PARTITIONS`].
    pub assigned: IntGauge,
    /// See [`PAUSED_PARTITIONS`].
    pub paused: IntGauge,
    /// See [`REBALANCES`]; labels: processor, kind.
    pub rebalances: IntCounterVec,
    /// See [`READY`].
    pub ready: IntGauge,
    /// See [`COMMIT_FAILURES`]; labels: processor.
    pub commit_failures: IntCounterVec,
    /// See [`PANICS`]; labels: processor, stage (`decode`, `process`, `timer`, `open`, `flush`).
    pub panics: IntCounterVec,
    /// See [`TIMERS`].
    pub timers: IntGauge,
    /// See [`OPENING`].
    pub opening: IntGauge,
    /// See [`GROUP_COMMITS`]; labels: processor, outcome.
    pub group_commits: IntCounterVec,
    /// See [`GROUP_COMMIT_SECONDS`]; labels: processor.
    pub group_commit_seconds: HistogramVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Creates a counter vector and registers it in `registry`.
pub fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

impl Metrics {
    /// Creates and registers every metric; `processor` becomes a constant label on the gauges
    /// that have no other labels.
    pub fn new(processor: &str) -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let plain_gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::with_opts(Opts::new(name, help).const_label("processor", processor))?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let assigned = plain_gauge(ASSIGNED_PARTITIONS, "Partitions assigned to this member.")?;
        let paused = plain_gauge(PAUSED_PARTITIONS, "Partitions paused for backpressure.")?;
        let ready = plain_gauge(READY, "1 when the last readiness check passed.")?;
        let timers = plain_gauge(TIMERS, "Timers pending on the assigned partitions.")?;
        let opening = plain_gauge(
            OPENING,
            "Partitions whose state is still being opened: assigned, not served yet.",
        )?;
        let group_commit_seconds = HistogramVec::new(
            HistogramOpts::new(
                GROUP_COMMIT_SECONDS,
                "Time a group commit took, from its first attempt to durable.",
            )
            .buckets(vec![
                0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["processor"],
        )?;
        registry.register(Box::new(group_commit_seconds.clone()))?;
        let processing = HistogramVec::new(
            HistogramOpts::new(
                PROCESSING_SECONDS,
                "Time per record to handle a batch (to handing its outputs to the producer), observed once per batch.",
            )
            .buckets(vec![
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["processor", "topic"],
        )?;
        registry.register(Box::new(processing.clone()))?;
        Ok(Metrics {
            timers,
            opening,
            group_commits: counter(
                &registry,
                GROUP_COMMITS,
                "Group commits of a stateful processor by outcome.",
                &["processor", "outcome"],
            )?,
            group_commit_seconds,
            panics: counter(
                &registry,
                PANICS,
                "Panics in decode or process; each one dead-letters its record.",
                &["processor", "stage"],
            )?,
            commit_failures: counter(
                &registry,
                COMMIT_FAILURES,
                "Offset commits that failed (the records will be redelivered).",
                &["processor"],
            )?,
            consumed: counter(
                &registry,
                CONSUMED,
                "Records consumed from input topics.",
                &["processor", "topic"],
            )?,
            produced: counter(
                &registry,
                PRODUCED,
                "Records produced and acknowledged.",
                &["processor", "topic"],
            )?,
            dlq: counter(
                &registry,
                DLQ,
                "Records dead-lettered, by source topic and error class.",
                &["processor", "topic", "class"],
            )?,
            retried: counter(
                &registry,
                RETRIED,
                "Retries after transient errors.",
                &["processor", "topic"],
            )?,
            processing,
            in_flight: gauge_vec(
                &registry,
                IN_FLIGHT,
                "Records consumed but not yet committed.",
                &["processor"],
            )?,
            lag: gauge_vec(
                &registry,
                CONSUMER_LAG,
                "Consumer lag per partition (librdkafka statistics).",
                &["processor", "topic", "partition"],
            )?,
            rebalances: counter(
                &registry,
                REBALANCES,
                "Rebalance events by kind.",
                &["processor", "kind"],
            )?,
            assigned,
            paused,
            ready,
            registry,
        })
    }

    /// The registry, for processors that add metrics of their own.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

/// The Prometheus text exposition of every metric in `registry`.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut buf) {
        return format!("# encoding metrics failed: {e}\n");
    }
    String::from_utf8(buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_with_its_name() {
        let m = Metrics::new("test").unwrap();
        m.consumed.with_label_values(&["test", "orders"]).inc();
        m.produced.with_label_values(&["test", "out"]).inc();
        m.dlq.with_label_values(&["test", "orders", "poison"]).inc();
        m.retried.with_label_values(&["test", "orders"]).inc();
        m.processing
            .with_label_values(&["test", "orders"])
            .observe(0.001);
        m.in_flight.with_label_values(&["test"]).set(3);
        m.lag.with_label_values(&["test", "orders", "0"]).set(7);
        m.rebalances.with_label_values(&["test", "assign"]).inc();
        m.assigned.set(4);
        let text = m.render();
        for name in [
            CONSUMED,
            PRODUCED,
            DLQ,
            RETRIED,
            PROCESSING_SECONDS,
            IN_FLIGHT,
            CONSUMER_LAG,
            ASSIGNED_PARTITIONS,
            PAUSED_PARTITIONS,
            REBALANCES,
            READY,
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(
            text.contains(
                "eip_consumer_lag{partition=\"0\",processor=\"test\",topic=\"orders\"} 7"
            )
        );
    }
}
