//! The gateway's readiness loop: every `telemetry.readiness_interval` it checks the broker
//! (metadata of every routed topic), the registry and the producer, and reports them to the
//! runtime's health module, which `/readyz` and `/healthz` serve.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::Producer;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::shared::Shared;

/// Re-checks the broker (metadata of every routed topic) and the registry every `interval`
/// until `stop`.
pub(crate) async fn readiness_loop(s: Arc<Shared>, interval: Duration, stop: CancellationToken) {
    let mut topics: Vec<String> = s.routes.values().map(|r| r.topic.clone()).collect();
    topics.sort();
    topics.dedup();
    let timeout = interval.clamp(Duration::from_millis(500), Duration::from_secs(3));
    loop {
        let producer = s.producer.clone();
        let wanted = topics.clone();
        let broker = tokio::task::spawn_blocking(move || {
            let mut missing = Vec::new();
            for topic in &wanted {
                let metadata = producer
                    .client()
                    .fetch_metadata(Some(topic), timeout)
                    .ok()?;
                let present = metadata.topics().iter().any(|t| {
                    t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                });
                if !present {
                    missing.push(topic.clone());
                }
            }
            Some(missing)
        })
        .await
        .ok()
        .flatten();
        let registry = s.registry.subjects().await.is_ok();
        s.health.report(
            "broker",
            broker.is_some(),
            "does not answer metadata requests",
        );
        s.health.report("registry", registry, "does not answer");
        match broker.as_deref() {
            Some([]) => s.health.pass("topics"),
            Some(missing) => s.health.fail(
                "topics",
                format!("routed topics missing: {}", missing.join(", ")),
            ),
            None => s
                .health
                .fail("topics", "unknown while the broker does not answer"),
        }
        // A producer with a fatal error never recovers: liveness turns false, and the
        // orchestrator restarts the gateway.
        if let Some((code, reason)) = s.producer.client().fatal_error() {
            s.health.set_fatal(format!(
                "the Kafka producer hit a fatal error ({code}): {reason}; restart the gateway"
            ));
        }
        let r = s.health.readiness();
        if !r.ready {
            warn!(error = r.error.as_deref().unwrap_or_default(), "not ready");
        }
        s.metrics.ready.set(i64::from(r.ready));
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop.cancelled() => return,
        }
    }
}
