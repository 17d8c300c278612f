//! librdkafka client settings and topic administration.
//!
//! The consumer stores offsets explicitly (`enable.auto.offset.store=false`) and lets
//! librdkafka commit the stored ones periodically; the producer is idempotent with `acks=all`
//! and an unbounded local timeout, so a broker outage turns into waiting, not lost records.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Headers as _, Message};

use crate::config::{KafkaConfig, OffsetReset};
use crate::processor::Headers;

/// Errors from topic administration.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The admin client could not be created or the request failed.
    #[error("kafka admin: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A topic could not be created.
    #[error("creating topic {topic}: {reason}")]
    Create {
        /// The topic.
        topic: String,
        /// The broker's answer.
        reason: String,
    },
    /// Topics that should exist don't.
    #[error("missing topics: {}", .0.join(", "))]
    Missing(Vec<String>),
}

/// librdkafka's prefetch bound, in KiB (`queued.max.messages.kbytes`): 16 MiB.
pub const PREFETCH_KBYTES: &str = "16384";

fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

/// A message's headers as the runtime's [`Headers`], copied in order.
pub fn headers_of<M: Message>(m: &M) -> Headers {
    m.headers()
        .map(|hs| hs.iter().map(|h| (h.key, h.value)).collect())
        .unwrap_or_default()
}

/// Settings shared by every client.
pub fn base_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers)
        .set("client.id", &kafka.client_id)
        // Fail fast on a missing broker address rather than resolving forever.
        .set("socket.connection.setup.timeout.ms", "10000");
    for (k, v) in &kafka.properties {
        c.set(k, v);
    }
    c
}

/// Consumer settings: explicit offset storage, periodic commit of stored offsets.
pub fn consumer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = base_config(kafka);
    c.set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", ms(kafka.commit_interval))
        .set(
            "auto.offset.reset",
            match kafka.auto_offset_reset {
                OffsetReset::Earliest => "earliest",
                OffsetReset::Latest => "latest",
            },
        )
        .set("session.timeout.ms", ms(kafka.session_timeout))
        .set("max.poll.interval.ms", ms(kafka.max_poll_interval))
        .set(
            "partition.assignment.strategy",
            &kafka.partition_assignment_strategy,
        )
        .set("enable.partition.eof", "false")
        // librdkafka's prefetch queue is where records wait while the pipeline applies
        // backpressure: bound it to 16 MiB (its default is 64 MiB). The bound is on the whole
        // consumer queue, whatever the number of partitions.
        .set("queued.max.messages.kbytes", PREFETCH_KBYTES)
        .set("statistics.interval.ms", ms(kafka.statistics_interval));
    if let Some(id) = &kafka.group_instance_id {
        c.set("group.instance.id", id);
    }
    for (k, v) in &kafka.consumer_properties {
        c.set(k, v);
    }
    c
}

/// Producer settings: idempotent, `acks=all`, never time a record out locally, and
/// Java-compatible key partitioning so other clients agree on where a key lives.
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = base_config(kafka);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "0")
        .set("linger.ms", ms(kafka.linger))
        .set("partitioner", "murmur2_random")
        .set("queue.buffering.max.messages", "200000");
    for (k, v) in &kafka.producer_properties {
        c.set(k, v);
    }
    c
}

/// Kafka's murmur2 hash of a key, as its Java client (`Utils.murmur2`) and librdkafka's
/// `murmur2_random` partitioner compute it.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, b) in rest.iter().enumerate().rev() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of `partitions` that a keyed record goes to with the producers' partitioner
/// (`murmur2_random`, the Java client's default): the positive murmur2 of the key, modulo the
/// count. Every eip producer uses it, so a key's records share a partition number across
/// topics with the same count.
pub fn partition_for(key: &[u8], partitions: usize) -> i32 {
    if partitions == 0 {
        return 0;
    }
    ((murmur2(key) & 0x7fff_ffff) as u32 % partitions as u32) as i32
}

/// Topics among `names` that the cluster does not have.
pub fn missing_topics(
    kafka: &KafkaConfig,
    names: &[String],
    timeout: Duration,
) -> Result<Vec<String>, AdminError> {
    let consumer: BaseConsumer = base_config(kafka).create()?;
    let metadata = consumer.fetch_metadata(None, timeout)?;
    let present: std::collections::HashSet<&str> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.name())
        .collect();
    Ok(names
        .iter()
        .filter(|n| !present.contains(n.as_str()))
        .cloned()
        .collect())
}

/// Deletes topics (tests and tools clean up after themselves).
pub async fn delete_topics(
    kafka: &KafkaConfig,
    names: &[&str],
    timeout: Duration,
) -> Result<(), AdminError> {
    let admin: AdminClient<DefaultClientContext> = base_config(kafka).create()?;
    let results = admin
        .delete_topics(names, &AdminOptions::new().operation_timeout(Some(timeout)))
        .await?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => {
                return Err(AdminError::Create {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Call after `unsubscribe`, before the consumer is dropped: polls until the unsubscribe's
/// revoke has run and no partition is assigned, for at most 5 s. What it polls is not
/// handled: its offsets are not committed, so it is redelivered. Closing a
/// `cooperative-sticky` consumer while an assignment change is in progress can trip
/// librdkafka's assertion in `rd_kafka_cgrp_terminated` and abort the process (SIGABRT;
/// librdkafka issues 4312 and 4527); it happened once in this project's rebalance tests. This
/// is the workaround named in issue 4527: unsubscribe, wait until nothing is assigned, then
/// close.
pub fn settle_before_close<C: rdkafka::consumer::ConsumerContext>(consumer: &BaseConsumer<C>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut empty_polls = 0;
    while std::time::Instant::now() < deadline && empty_polls < 2 {
        let _ = consumer.poll(Duration::from_millis(50));
        match consumer.assignment() {
            Ok(assigned) if assigned.count() == 0 => empty_polls += 1,
            Ok(_) => empty_polls = 0,
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_java_client() {
        // The vectors of Kafka's own UtilsTest.testMurmur2.
        for (key, hash) in [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ] {
            assert_eq!(murmur2(key.as_bytes()), hash, "{key}");
        }
        assert!((0..3).contains(&partition_for(b"order-1", 3)));
        assert_eq!(partition_for(b"order-1", 0), 0);
    }

    #[test]
    fn given_user_properties_then_the_producer_gets_them_beside_its_guarantees() {
        let mut kafka = KafkaConfig::default();
        kafka
            .properties
            .insert("security.protocol".into(), "ssl".into());
        kafka
            .producer_properties
            .insert("compression.type".into(), "lz4".into());
        let producer = producer_config(&kafka);
        assert_eq!(producer.get("compression.type"), Some("lz4"));
        assert_eq!(producer.get("security.protocol"), Some("ssl"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
    }
}
