//! # eipctl
//!
//! Operator operations behind the `eipctl` CLI, also used by the end-to-end tests and the
//! benchmarks so that what they exercise is what operators run.
//!
//! Dead-letter tooling (list, show, redrive) lives in [`dlq`].

pub mod cqrs;
pub mod dlq;
pub mod orders;
pub mod progress;
pub mod saga;
pub mod saga_act;
pub mod trace;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use eip_runtime::config::KafkaConfig;
use eip_runtime::kafka;
use eip_runtime::topics::{self, TopicRole, TopicSpec};
use eip_runtime::trace::{CORRELATION_ID, TRACEPARENT, TraceContext};
use eip_schemas::types::OrderPlaced;
use eip_schemas::types::samples::order_placed;
use eip_schemas::{AvroRecord, Catalog, Codec, Registered, Registry};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// Errors of operator operations.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// Kafka client or broker error.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Topic administration error.
    #[error(transparent)]
    Admin(#[from] kafka::AdminError),
    /// Registry or codec error.
    #[error("registry: {0}")]
    Codec(#[from] eip_schemas::CodecError),
    /// Local schema files are broken.
    #[error(transparent)]
    Schema(#[from] eip_schemas::SchemaError),
    /// A wait ran out of time.
    #[error("timed out after {after:?}: {what}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// How long.
        after: Duration,
    },
    /// The topic does not exist.
    #[error("topic {0} does not exist")]
    NoSuchTopic(String),
    /// No record at that position.
    #[error("no record at {topic} partition {partition} offset {offset}")]
    NoSuchRecord {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
    },
    /// An operator's argument is unusable; says which and why.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The argument, e.g. `--since`.
        what: String,
        /// Why, and what would be accepted.
        reason: String,
    },
    /// A dead-letter record can't be redriven as asked; nothing was produced.
    #[error("cannot redrive: {0}")]
    Unroutable(String),
    /// A redrive stopped part-way; the message says what was and wasn't done.
    #[error("redrive incomplete: {0}")]
    Incomplete(String),
    /// Another redrive of the same DLQ started and fenced this one; the message says what
    /// this one had done.
    #[error("{0}")]
    Superseded(String),
    /// A ledger record eipctl can't read; nothing was done.
    #[error("ledger {topic} offset {offset}: {reason}")]
    Ledger {
        /// The ledger topic.
        topic: String,
        /// The unreadable record's offset.
        offset: i64,
        /// What is wrong with it.
        reason: String,
    },
    /// A blocking task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
    /// An HTTP request failed or was answered unexpectedly.
    #[error("http: {0}")]
    Http(String),
}

/// Where the broker and the registry are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Registry base URL.
    pub registry: String,
}

impl Endpoints {
    /// Kafka settings for tool clients (group id unused by most tools).
    pub fn kafka(&self) -> KafkaConfig {
        KafkaConfig {
            brokers: self.brokers.clone(),
            client_id: "eipctl".into(),
            group_id: "eipctl".into(),
            ..KafkaConfig::default()
        }
    }

    /// A registry client (auto-registering: tools run the bootstrap).
    pub fn registry(&self) -> Result<Arc<Registry>, OpsError> {
        let config = eip_runtime::config::RegistryConfig {
            url: self.registry.clone(),
            auto_register: true,
            ..Default::default()
        };
        Ok(Arc::new(Registry::new(config.settings())?))
    }
}

/// Registers every message schema under its record-name subject (idempotent).
pub async fn register_schemas(ep: &Endpoints) -> Result<Vec<Registered>, OpsError> {
    let registry = ep.registry()?;
    Ok(registry.register_all(Catalog::global()?).await?)
}

/// Creates topics that don't exist yet, and brings existing ones to their role's settings
/// (a history topic created elsewhere with the broker's 7-day retention is made to keep its
/// records). `role` None gives each name its role by name: dead letters for a `.dlq` name,
/// history otherwise. Returns the settings changed on existing topics, one line each.
pub async fn create_topics(
    ep: &Endpoints,
    names: &[String],
    partitions: i32,
    role: Option<TopicRole>,
) -> Result<Vec<String>, OpsError> {
    let specs: Vec<TopicSpec> = names
        .iter()
        .map(|n| TopicSpec {
            name: n.clone(),
            partitions,
            role: role.unwrap_or_else(|| TopicRole::by_name(n, ".dlq")),
        })
        .collect();
    topics::ensure_topics(&ep.kafka(), &specs, Duration::from_secs(15)).await?;
    Ok(topics::conform(&ep.kafka(), &specs, Duration::from_secs(15)).await?)
}

/// Kinds of deliberately broken records, for demos and tests of the DLQ path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoisonKind {
    /// A JSON document where a framed Avro record belongs (bad magic byte).
    NotFramed,
    /// Only three bytes: shorter than the Confluent header.
    Truncated,
    /// A well-formed frame naming a schema id the registry doesn't have.
    UnknownSchema,
    /// A valid frame and schema id, with a body cut short.
    BadBody,
}

impl PoisonKind {
    /// The kinds in rotation order.
    pub const ALL: [PoisonKind; 4] = [
        PoisonKind::NotFramed,
        PoisonKind::Truncated,
        PoisonKind::UnknownSchema,
        PoisonKind::BadBody,
    ];

    /// The bytes of a poison record of this kind; `good` is a valid framed record to damage.
    pub fn payload(self, good: &[u8]) -> Vec<u8> {
        match self {
            PoisonKind::NotFramed => br#"{"order_id":"legacy-1","total":12.5}"#.to_vec(),
            PoisonKind::Truncated => vec![0, 0, 1],
            PoisonKind::UnknownSchema => vec![0, 0x7f, 0xff, 0xff, 0xf0, 2, 4],
            PoisonKind::BadBody => good[..good.len().min(12)].to_vec(),
        }
    }
}

/// What to produce.
#[derive(Debug, Clone)]
pub struct ProduceSpec {
    /// Topic.
    pub topic: String,
    /// Valid `OrderPlaced` records.
    pub count: u64,
    /// Sequence number of the first record (records are `order_placed(seq)`).
    pub start: u64,
    /// Poison records spread evenly among the valid ones.
    pub poison: u64,
    /// Number of distinct keys the valid records cycle through; 0 means one key per record.
    pub keys: u64,
}

/// What was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceReport {
    /// Valid records acknowledged.
    pub valid: u64,
    /// Poison records acknowledged.
    pub poison: u64,
    /// Wall time from first send to last acknowledgement.
    pub elapsed: Duration,
}

/// The key of the `seq`-th sample record under `spec`.
pub fn sample_key(spec: &ProduceSpec, seq: u64) -> String {
    if spec.keys == 0 {
        order_placed(seq).metadata.aggregate_id
    } else {
        format!("order-{:08}", seq % spec.keys)
    }
}

/// Produces sample `OrderPlaced` records (and optional poison), idempotently, and waits for
/// every acknowledgement. Each valid record carries a `correlation-id` and a new `traceparent`.
pub async fn produce_orders(ep: &Endpoints, spec: &ProduceSpec) -> Result<ProduceReport, OpsError> {
    let codec = Codec::new(ep.registry()?);
    let id = codec.id_of::<OrderPlaced>().await?;
    let producer: FutureProducer = kafka::producer_config(&ep.kafka()).create()?;
    let started = Instant::now();
    let total = spec.count + spec.poison;
    let poison_every = total
        .checked_div(spec.poison)
        .map_or(u64::MAX, |n| n.max(1));
    let mut pending = Vec::with_capacity(10_000);
    let (mut valid, mut poison, mut seq) = (0u64, 0u64, spec.start);
    let mut last_good: Vec<u8> = Vec::new();
    for i in 0..total {
        let is_poison = poison < spec.poison && (i + 1) % poison_every == 0 || valid == spec.count;
        let (key, payload, headers) = if is_poison {
            let kind = PoisonKind::ALL[(poison % PoisonKind::ALL.len() as u64) as usize];
            if last_good.is_empty() {
                last_good = eip_schemas::codec::encode_with_id(id, &order_placed(0))?;
            }
            poison += 1;
            (
                format!("poison-{poison}"),
                kind.payload(&last_good),
                OwnedHeaders::new(),
            )
        } else {
            let mut order = order_placed(seq);
            let key = sample_key(spec, seq);
            order.metadata.aggregate_id = key.clone();
            let bytes = eip_schemas::codec::encode_with_id(id, &order)?;
            last_good.clone_from(&bytes);
            let trace = TraceContext::new_root().to_header();
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header {
                    key: CORRELATION_ID,
                    value: Some(order.metadata.correlation_id.as_str()),
                })
                .insert(Header {
                    key: TRACEPARENT,
                    value: Some(trace.as_str()),
                });
            seq += 1;
            valid += 1;
            (key, bytes, headers)
        };
        pending.push(
            send(
                &producer,
                &spec.topic,
                Some(key.as_bytes()),
                Some(&payload),
                headers,
            )
            .await?,
        );
        if pending.len() >= 10_000 {
            for f in pending.drain(..) {
                await_delivery(f).await?;
            }
        }
    }
    for f in pending {
        await_delivery(f).await?;
    }
    Ok(ProduceReport {
        valid,
        poison,
        elapsed: started.elapsed(),
    })
}

async fn await_delivery(f: rdkafka::producer::DeliveryFuture) -> Result<(), OpsError> {
    match f.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e.into()),
        Err(_) => Err(OpsError::Kafka(rdkafka::error::KafkaError::Canceled)),
    }
}

fn reader(ep: &Endpoints) -> Result<BaseConsumer, OpsError> {
    reader_with(ep, false)
}

/// A reader that commits nothing and, where `eof` is set, reports reaching the end of each
/// partition. A position that retention removed while reading restarts at the earliest record.
fn reader_with(ep: &Endpoints, eof: bool) -> Result<BaseConsumer, OpsError> {
    let mut c: ClientConfig = kafka::base_config(&ep.kafka());
    c.set(
        "group.id",
        format!("eipctl-reader-{}", uuid::Uuid::new_v4()),
    )
    .set("enable.auto.commit", "false")
    .set("auto.offset.reset", "earliest")
    // Only committed records: an aborted redrive chunk was never moved.
    .set("isolation.level", "read_committed")
    // The prefetch queue is part of a reader's memory: bound it (librdkafka's default is 64 MiB).
    .set("queued.max.messages.kbytes", READER_PREFETCH_KBYTES)
    .set("enable.partition.eof", if eof { "true" } else { "false" });
    Ok(c.create()?)
}

/// (low, high) watermarks of every partition of `topic`.
pub fn watermarks(ep: &Endpoints, topic: &str) -> Result<Vec<(i32, i64, i64)>, OpsError> {
    let consumer = reader(ep)?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .ok_or_else(|| OpsError::NoSuchTopic(topic.to_string()))?;
    let mut out = Vec::new();
    for p in t.partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        out.push((p.id(), low, high));
    }
    out.sort();
    Ok(out)
}

/// Records currently in `topic`, counted by reading them (see [`read_all`] for why).
pub fn count(ep: &Endpoints, topic: &str) -> Result<u64, OpsError> {
    Ok(read_all(ep, topic, Duration::from_secs(120))?.len() as u64)
}

/// Consumes `topic` from the beginning until at least `n` records were seen; returns how many.
pub async fn wait_for_count(
    ep: &Endpoints,
    topic: &str,
    n: u64,
    timeout: Duration,
) -> Result<u64, OpsError> {
    let ep = ep.clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer = reader(&ep)?;
        let tpl = beginning(&ep, topic.as_str())?;
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + timeout;
        let mut seen = 0u64;
        while seen < n {
            if Instant::now() >= deadline {
                return Err(OpsError::Timeout {
                    what: format!("{topic} has {seen} of {n} records"),
                    after: timeout,
                });
            }
            if let Some(result) = consumer.poll(Duration::from_millis(200)) {
                result?;
                seen += 1;
            }
        }
        Ok(seen)
    })
    .await
    .map_err(|e| OpsError::Timeout {
        what: e.to_string(),
        after: timeout,
    })?
}

fn beginning(ep: &Endpoints, topic: &str) -> Result<TopicPartitionList, OpsError> {
    let mut tpl = TopicPartitionList::new();
    for (p, _, _) in watermarks(ep, topic)? {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    Ok(tpl)
}

/// One record read back from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub payload: Option<Bytes>,
    /// Headers, in order.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Timestamp in ms, if any.
    pub timestamp_ms: Option<i64>,
}

impl ReadRecord {
    /// Copies a consumed message.
    pub fn from_message<M: Message>(m: &M) -> ReadRecord {
        let headers = m
            .headers()
            .map(|hs| {
                (0..hs.count())
                    .filter_map(|i| hs.try_get(i))
                    .map(|h| (h.key.to_string(), h.value.map(Bytes::copy_from_slice)))
                    .collect()
            })
            .unwrap_or_default();
        ReadRecord {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(Bytes::copy_from_slice),
            payload: m.payload().map(Bytes::copy_from_slice),
            headers,
            timestamp_ms: m.timestamp().to_millis(),
        }
    }

    /// The last value of header `name` as UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// Kilobytes of records a reader prefetches, at most.
const READER_PREFETCH_KBYTES: &str = "16384";

/// A read of `topic` from its beginning to the ends it had when the read started, handed out a
/// bounded chunk at a time, so that reading a topic of any size takes bounded memory.
///
/// The end is each partition's high watermark, taken when the scan starts: records that
/// arrive later are left for the next read. A partition also ends where the reader reaches its
/// end before that offset (the last offsets held transaction markers, say), so a read never
/// waits for a record that can't come. Only committed records are read.
pub struct Scan {
    consumer: BaseConsumer,
    topic: String,
    ends: Vec<(i32, i64, i64)>,
    behind: HashMap<i32, i64>,
    idle: Duration,
    read: usize,
}

impl Scan {
    /// Starts reading `topic`; a read that gets no record for `idle` fails with
    /// [`OpsError::Timeout`].
    pub fn start(ep: &Endpoints, topic: &str, idle: Duration) -> Result<Scan, OpsError> {
        let ends = watermarks(ep, topic)?;
        Scan::until(ep, topic, &ends, idle)
    }

    /// Reads `topic` again from its beginning, up to the same `ends` (as [`Scan::ends`] gave
    /// them), so that a second pass sees the records the first one saw.
    pub fn until(
        ep: &Endpoints,
        topic: &str,
        ends: &[(i32, i64, i64)],
        idle: Duration,
    ) -> Result<Scan, OpsError> {
        let consumer = reader_with(ep, true)?;
        let mut tpl = TopicPartitionList::new();
        for (p, _, _) in ends {
            tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        Ok(Scan {
            consumer,
            topic: topic.to_string(),
            ends: ends.to_vec(),
            behind: ends
                .iter()
                .filter(|(_, low, high)| high > low)
                .map(|(p, _, high)| (*p, *high))
                .collect(),
            idle,
            read: 0,
        })
    }

    /// (partition, low, high) of every partition when the scan started.
    pub fn ends(&self) -> &[(i32, i64, i64)] {
        &self.ends
    }

    /// The next records, at most `max_records` of them and, past the first, at most about
    /// `max_bytes` of keys and payloads, sorted by (partition, offset); `None` at the end.
    pub fn next_chunk(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Option<Vec<ReadRecord>>, OpsError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut deadline = Instant::now() + self.idle;
        while !self.behind.is_empty() && out.len() < max_records && bytes < max_bytes {
            if Instant::now() >= deadline {
                return Err(OpsError::Timeout {
                    what: format!(
                        "reading {}: no record for {:?} after {} records",
                        self.topic, self.idle, self.read
                    ),
                    after: self.idle,
                });
            }
            let Some(result) = self.consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = match result {
                Ok(m) => m,
                // The broker restarting or a connection dropping: keep reading until the deadline.
                Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure,
                )) => continue,
                Err(KafkaError::PartitionEOF(partition)) => {
                    self.behind.remove(&partition);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            deadline = Instant::now() + self.idle;
            let Some(&high) = self.behind.get(&m.partition()) else {
                continue;
            };
            if m.offset() >= high {
                continue;
            }
            if m.offset() + 1 >= high {
                self.behind.remove(&m.partition());
            }
            let r = ReadRecord::from_message(&m);
            bytes +=
                r.key.as_ref().map_or(0, Bytes::len) + r.payload.as_ref().map_or(0, Bytes::len);
            self.read += 1;
            out.push(r);
        }
        if out.is_empty() {
            return Ok(None);
        }
        out.sort_by_key(|r| (r.partition, r.offset));
        Ok(Some(out))
    }
}

/// Reads every record currently in `topic`, in offset order per partition, into memory (see
/// [`Scan`] for where the read ends; use it directly to read a large topic in chunks).
pub fn read_all(
    ep: &Endpoints,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<ReadRecord>, OpsError> {
    let mut scan = Scan::start(ep, topic, timeout)?;
    let mut out = Vec::new();
    while let Some(chunk) = scan.next_chunk(usize::MAX, usize::MAX)? {
        out.extend(chunk);
    }
    Ok(out)
}

/// Reads the one record at `offset` of `partition` in `topic`, without reading the rest.
///
/// An offset below the low watermark, one at or past the high watermark (it does not exist
/// yet), and one the partition skips (compacted, or a transaction marker) are
/// [`OpsError::NoSuchRecord`]. A record that doesn't arrive within `timeout` is
/// [`OpsError::Timeout`].
pub fn read_one(
    ep: &Endpoints,
    topic: &str,
    partition: i32,
    offset: i64,
    timeout: Duration,
) -> Result<ReadRecord, OpsError> {
    let missing = || OpsError::NoSuchRecord {
        topic: topic.to_string(),
        partition,
        offset,
    };
    let marks = watermarks(ep, topic)?;
    let Some(&(_, low, high)) = marks.iter().find(|(p, _, _)| *p == partition) else {
        return Err(OpsError::Invalid {
            what: "partition".into(),
            reason: format!(
                "{topic} has partitions 0..{}, not {partition}",
                marks.len().saturating_sub(1)
            ),
        });
    };
    if offset < low.max(0) || offset >= high {
        return Err(missing());
    }
    let consumer = reader(ep)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = result?;
        if m.partition() != partition || m.offset() < offset {
            continue;
        }
        if m.offset() > offset {
            // Compacted or deleted: the partition moved on past it.
            return Err(missing());
        }
        return Ok(ReadRecord::from_message(&m));
    }
    Err(OpsError::Timeout {
        what: format!("reading {topic} partition {partition} offset {offset}"),
        after: timeout,
    })
}

/// Runs blocking client work (the `BaseConsumer` readers) off the async runtime.
pub async fn blocking<T, F>(f: F) -> Result<T, OpsError>
where
    F: FnOnce() -> Result<T, OpsError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| OpsError::Task(e.to_string()))?
}

/// The full name this binary would decode a framed payload as, or why it can't.
pub async fn describe_payload(codec: &Codec, payload: Option<&[u8]>) -> String {
    match codec.decode_value(payload).await {
        Ok(d) => d.writer.full_name.clone(),
        Err(e) => format!("undecodable: {e}"),
    }
}

/// The subject and full name of the sample record type, for messages.
pub fn sample_type() -> &'static str {
    OrderPlaced::FULL_NAME
}

/// Hands one record to `producer`, waiting while its local queue is full.
pub(crate) async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: OwnedHeaders,
) -> Result<DeliveryFuture, OpsError> {
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(p) = payload {
        record = record.payload(p);
    }
    loop {
        match producer.send_result(record) {
            Ok(f) => return Ok(f),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                r,
            )) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}
