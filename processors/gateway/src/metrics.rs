//! Every metric the gateway exports, named in one place.
//!
//! Labels are bounded: `type` is a routed record type or `unrouted` (never whatever a client
//! put in the URL), `status` is an HTTP status code.

use eip_runtime::metrics::counter;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Registry};

/// Requests to `/v1/records/{type}`, by type and answered status.
pub const REQUESTS: &str = "eip_gateway_requests_total";
/// Time from receiving a request to answering it (after the broker's acknowledgement for 202).
pub const REQUEST_SECONDS: &str = "eip_gateway_request_seconds";
/// Request body bytes read, by type.
pub const REQUEST_BYTES: &str = "eip_gateway_request_bytes_total";
/// Records accepted and not yet answered (waiting for conversion, the registry or the broker).
pub const IN_FLIGHT: &str = "eip_gateway_in_flight";
/// 1 when the last readiness check passed.
pub const READY: &str = "eip_gateway_ready";

/// The label used for record types that are not routed.
pub const UNROUTED: &str = "unrouted";

/// The gateway's metric handles, in their own registry.
#[derive(Clone)]
pub struct GatewayMetrics {
    registry: Registry,
    /// See [`REQUESTS`]; labels: type, status.
    pub requests: IntCounterVec,
    /// See [`REQUEST_SECONDS`]; labels: type.
    pub latency: HistogramVec,
    /// See [`REQUEST_BYTES`]; labels: type.
    pub bytes: IntCounterVec,
    /// See [`IN_FLIGHT`].
    pub in_flight: IntGauge,
    /// See [`READY`].
    pub ready: IntGauge,
}

impl std::fmt::Debug for GatewayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GatewayMetrics")
    }
}

impl GatewayMetrics {
    /// Creates and registers every metric.
    pub fn new() -> prometheus::Result<GatewayMetrics> {
        let registry = Registry::new();
        let requests = counter(
            &registry,
            REQUESTS,
            "Record requests by type and HTTP status.",
            &["type", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                REQUEST_SECONDS,
                "Time to answer a record request (202 answers wait for the broker's ack).",
            )
            .buckets(vec![
                0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["type"],
        )?;
        let bytes = counter(
            &registry,
            REQUEST_BYTES,
            "Request body bytes read, by type.",
            &["type"],
        )?;
        let in_flight = IntGauge::new(IN_FLIGHT, "Record requests being handled.")?;
        let ready = IntGauge::new(READY, "1 when the last readiness check passed.")?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(ready.clone()))?;
        Ok(GatewayMetrics {
            registry,
            requests,
            latency,
            bytes,
            in_flight,
            ready,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        eip_runtime::metrics::render(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_with_its_name() {
        let m = GatewayMetrics::new().unwrap();
        m.requests
            .with_label_values(&["eip.orders.PlaceOrder", "202"])
            .inc();
        m.latency
            .with_label_values(&["eip.orders.PlaceOrder"])
            .observe(0.01);
        m.bytes
            .with_label_values(&["eip.orders.PlaceOrder"])
            .inc_by(10);
        m.in_flight.set(2);
        let text = m.render();
        for name in [REQUESTS, REQUEST_SECONDS, REQUEST_BYTES, IN_FLIGHT, READY] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(text.contains(
            "eip_gateway_requests_total{status=\"202\",type=\"eip.orders.PlaceOrder\"} 1"
        ));
    }
}
