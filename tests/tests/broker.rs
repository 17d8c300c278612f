//! What the pipeline relies on from the broker, checked against the one the tests run on.
//!
//! A consumer resumes inside a producer batch after every restart, rebalance or pause, so a
//! broker that answered such a fetch from the next batch would lose records. Tansu 0.6's
//! `memory://` storage did (docs/local-stack.md); Apache Kafka, the local broker now, passes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use eip_runtime::kafka;
use eip_tests::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// Produces `n` records to partition 0 in one burst, so they share a few large batches.
async fn burst(ep: &Endpoints, topic: &str, n: usize) {
    let producer: FutureProducer = kafka::producer_config(&ep.kafka()).create().unwrap();
    let mut pending = Vec::new();
    for i in 0..n {
        let value = format!("record-{i}");
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "seq",
                value: Some(&i.to_string()),
            })
            .insert(Header {
                key: "empty",
                value: None::<&[u8]>,
            });
        let record = FutureRecord::to(topic)
            .partition(0)
            .key("k")
            .payload(value.as_bytes())
            .headers(headers);
        pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for p in pending {
        p.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// Header names and values as read back.
type ReadHeaders = Vec<(String, Option<Vec<u8>>)>;

fn first_from(ep: &Endpoints, topic: &str, offset: i64) -> (i64, ReadHeaders) {
    let mut c = kafka::base_config(&ep.kafka());
    c.set("group.id", unique("conformance"))
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = c.create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(offset))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "nothing fetched from offset {offset}"
        );
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            let headers = m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default();
            return (m.offset(), headers);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_from_inside_a_batch_starts_at_that_offset_with_headers_intact() {
    let ep = endpoints();
    let topic = unique("conformance");
    create_topics(&ep, &[&topic], 1).await;
    burst(&ep, &topic, 5_000).await;
    for offset in [0, 1, 777, 2_500, 4_999] {
        let (got, headers) = first_from(&ep, &topic, offset);
        assert_eq!(got, offset, "a fetch from {offset} must start at {offset}");
        assert_eq!(
            headers[0],
            ("seq".to_string(), Some(offset.to_string().into_bytes()))
        );
        assert_eq!(headers[1], ("empty".to_string(), None));
    }
}
