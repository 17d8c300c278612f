//! Produce failures the local broker can't be made to return on demand, injected with
//! librdkafka's in-process mock cluster. Everything else is real: the registry, the codec, the
//! runtime and its clients.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashSet;
use std::time::Duration;

use eip_passthrough::{Passthrough, PassthroughConfig};
use eip_tests::*;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const WAIT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_produce_requests_are_sent_again_not_dead_lettered() {
    let cluster = MockCluster::new(1).unwrap();
    let shared = endpoints();
    let ep = Endpoints {
        brokers: cluster.bootstrap_servers(),
        registry: shared.registry.clone(),
    };
    register(&ep).await;
    let (input, output, group) = ("orders", "orders.out", unique("g"));
    for t in [input, "orders.dlq", output] {
        cluster.create_topic(t, 2, 1).unwrap();
    }
    produce(&ep, input, 2_000, 0, 0, 0).await;

    // The next produce requests fail with UNKNOWN_SERVER_ERROR, which librdkafka does not retry
    // by itself (a broker can answer it for a request it failed internally).
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN; 3],
    );
    let mut cfg = config(
        &ep,
        input,
        &group,
        PassthroughConfig {
            output: output.to_string(),
        },
    );
    cfg.pipeline.retry.initial_backoff = Duration::from_millis(20);
    let p = InProcess::start(cfg.clone(), Passthrough::new(&cfg.processor)).await;
    eventually("every record produced", WAIT, || async {
        Some(()).filter(|_| p.metric("eip_records_produced_total") >= 2_000.0)
    })
    .await;
    let retried = p.metric("eip_records_retried_total");
    assert_eq!(
        p.metric("eip_records_dlq_total"),
        0.0,
        "nothing dead-lettered"
    );
    p.stop().await.expect("no fatal error");
    assert!(
        retried >= 1.0,
        "the failed deliveries were sent again ({retried})"
    );
    let out = read_all(&ep, output).await;
    let orders = decode_orders(&codec(&ep), &out).await;
    let ids: HashSet<_> = orders.iter().map(|o| o.metadata.event_id.clone()).collect();
    assert_eq!(ids.len(), 2_000, "every record arrived");
}
