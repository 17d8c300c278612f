//! Carrying out an operator action ([`crate::operator`]) on Kafka: reading a trigger back by
//! its topic, partition and offset and publishing it again, publishing the timeout that
//! starts a compensation, and recording the action on the monitor's own topic.
//!
//! The effect is published first and the record second, so the record can say where the
//! effect went. If the record fails after the effect, the answer is a 503 and the action can
//! be repeated: every effect is idempotent for the participants.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eip_runtime::config::KafkaConfig;
use eip_schemas::types::{EventMetadata, SagaObservation, SagaStepTimedOut};
use eip_schemas::{AvroRecord, Codec};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::definition::Definition;
use crate::fold::{Saga, derive};
use crate::operator::{ActionDone, ActionRequest, Kind, Plan, Published, Refused, plan};

/// How long reading a trigger back or publishing may take.
const WAIT: Duration = Duration::from_secs(10);

/// Why an action was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum NotDone {
    /// The saga's state does not allow it (a 409).
    #[error(transparent)]
    Refused(#[from] Refused),
    /// Kafka or the registry failed (a 503; the action can be repeated).
    #[error("{0}")]
    Unavailable(String),
}

/// The monitor's Kafka clients for operator actions.
pub struct Operator {
    def: Arc<Definition>,
    codec: Codec,
    producer: FutureProducer,
    reader: Arc<Mutex<BaseConsumer>>,
    observations: String,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("observations", &self.observations)
            .finish_non_exhaustive()
    }
}

impl Operator {
    /// Clients on `kafka`, encoding with `codec`, recording to `observations`.
    pub fn new(
        def: Arc<Definition>,
        kafka: &KafkaConfig,
        codec: Codec,
        observations: &str,
    ) -> Result<Operator, rdkafka::error::KafkaError> {
        let mut p = eip_runtime::kafka::producer_config(kafka);
        // An operator waits for the answer: a broker that can't take the record within this
        // time gives a 503, not a request that never ends.
        p.set("message.timeout.ms", "15000");
        let producer: FutureProducer = p.create()?;
        let mut c: ClientConfig = eip_runtime::kafka::base_config(kafka);
        c.set("group.id", format!("{}-operator-reads", kafka.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest");
        let reader: BaseConsumer = c.create()?;
        Ok(Operator {
            def,
            codec,
            producer,
            reader: Arc::new(Mutex::new(reader)),
            observations: observations.to_string(),
        })
    }

    /// Carries out `request` (whose action is `kind`) on saga `id`, whose events are `saga`.
    pub async fn act(
        &self,
        id: &str,
        saga: &Saga,
        kind: Kind,
        request: &ActionRequest,
    ) -> Result<ActionDone, NotDone> {
        request.check_still(&self.def, saga)?;
        let (actor, reason) = (request.actor.trim(), request.reason.as_deref());
        let plan = plan(&self.def, saga, kind)?;
        let summary = derive(&self.def, saga);
        let now = now_ms();
        let event_id = format!("{id}:operator:{}", uuid::Uuid::now_v7());
        let mut published = Vec::new();
        match &plan {
            Plan::Reemit { trigger, .. } => {
                let record = self.read_back(trigger).await?;
                let (partition, offset) = self
                    .send(
                        &trigger.topic,
                        Some(trigger.partition),
                        record.key(),
                        record.payload(),
                        record.headers().cloned(),
                    )
                    .await?;
                published.push(Published {
                    event_type: trigger.event_type.clone(),
                    topic: trigger.topic.clone(),
                    partition,
                    offset,
                });
            }
            Plan::Compensate { step } => {
                let (i, _) = self
                    .def
                    .step(step)
                    .ok_or_else(|| NotDone::Unavailable(format!("no step {step}")))?;
                let timeout = SagaStepTimedOut {
                    metadata: EventMetadata {
                        event_id: format!("{event_id}:{step}"),
                        correlation_id: summary.correlation_id.clone(),
                        causation_id: Some(event_id.clone()),
                        occurred_at: now,
                        aggregate_id: id.to_string(),
                        aggregate_version: i64::try_from(i + 1).unwrap_or(i64::MAX),
                    },
                    order_id: id.to_string(),
                    saga: self.def.name.clone(),
                    step: step.clone(),
                    deadline: now,
                    reason: Some(match reason {
                        Some(r) => format!("compensation started by {actor}: {r}"),
                        None => format!("compensation started by {actor}"),
                    }),
                    reason_code: Some("operator".into()),
                };
                let bytes = self.encode(&timeout).await?;
                let topic = self.def.timeouts_topic.clone();
                let (partition, offset) = self
                    .send(&topic, None, Some(id.as_bytes()), Some(&bytes), None)
                    .await?;
                published.push(Published {
                    event_type: SagaStepTimedOut::FULL_NAME.into(),
                    topic,
                    partition,
                    offset,
                });
            }
            Plan::Resolve { .. } => {}
        }
        let first = published.first();
        let mark = SagaObservation {
            saga_id: id.to_string(),
            event_type: kind.event_type().into(),
            event_id: event_id.clone(),
            correlation_id: summary.correlation_id.clone(),
            causation_id: None,
            occurred_at: now,
            topic: first.map_or_else(|| self.observations.clone(), |p| p.topic.clone()),
            partition: first.map_or(-1, |p| p.partition),
            offset: first.map_or(-1, |p| p.offset),
            reason: reason.map(str::to_string),
            reason_code: Some(format!("operator_{}", kind.as_str())),
            step: plan.step().map(str::to_string),
            actor: Some(actor.to_string()),
        };
        let bytes = self.encode(&mark).await?;
        let (partition, offset) = self
            .send(
                &self.observations,
                None,
                Some(id.as_bytes()),
                Some(&bytes),
                None,
            )
            .await?;
        Ok(ActionDone {
            saga_id: id.to_string(),
            action: kind.as_str().into(),
            step: plan.step().map(str::to_string),
            event_id,
            published,
            recorded: Published {
                event_type: kind.event_type().into(),
                topic: self.observations.clone(),
                partition,
                offset,
            },
        })
    }

    async fn encode<T: AvroRecord>(&self, value: &T) -> Result<Vec<u8>, NotDone> {
        self.codec
            .encode(value)
            .await
            .map_err(|e| NotDone::Unavailable(format!("encoding a {}: {e}", T::FULL_NAME)))
    }

    async fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<rdkafka::message::OwnedHeaders>,
    ) -> Result<(i32, i64), NotDone> {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = payload {
            record = record.payload(v);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        let delivery = self
            .producer
            .send(record, WAIT)
            .await
            .map_err(|(e, _)| NotDone::Unavailable(format!("publishing to {topic}: {e}")))?;
        Ok((delivery.partition, delivery.offset))
    }

    /// Reads the record `o` was observed at.
    async fn read_back(&self, o: &SagaObservation) -> Result<OwnedMessage, NotDone> {
        let reader = self.reader.clone();
        let (topic, partition, offset) = (o.topic.clone(), o.partition, o.offset);
        tokio::task::spawn_blocking(move || {
            let reader = reader
                .lock()
                .map_err(|_| NotDone::Unavailable("the trigger reader is poisoned".into()))?;
            read_at(&reader, &topic, partition, offset)
        })
        .await
        .map_err(|e| NotDone::Unavailable(format!("reading the trigger back: {e}")))?
    }
}

fn read_at(
    reader: &BaseConsumer,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<OwnedMessage, NotDone> {
    let at = format!("{topic}/{partition}@{offset}");
    let unavailable = |what: String| NotDone::Unavailable(format!("reading {at}: {what}"));
    // Whatever waits in the queue is from before this read (a broker blip hours ago, a record
    // of an earlier read): drop it.
    let _ = reader.unassign();
    while reader.poll(Duration::ZERO).is_some() {}
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .map_err(|e| unavailable(e.to_string()))?;
    reader
        .assign(&tpl)
        .map_err(|e| unavailable(e.to_string()))?;
    let deadline = std::time::Instant::now() + WAIT;
    let mut last_error = None;
    let found = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break Err(unavailable(match last_error.take() {
                Some(e) => format!("nothing read within {WAIT:?}; last error: {e}"),
                None => format!("nothing read within {WAIT:?}"),
            }));
        }
        match reader.poll(left.min(Duration::from_millis(500))) {
            Some(Ok(m)) if m.topic() != topic || m.partition() != partition => {}
            Some(Ok(m)) if m.offset() == offset => break Ok(m.detach()),
            Some(Ok(m)) if m.offset() > offset => {
                break Err(NotDone::Refused(Refused(format!(
                    "the trigger at {at} is no longer in Kafka (the partition now starts at \
                     offset {}): it can't be published again",
                    m.offset()
                ))));
            }
            Some(Ok(m)) => {
                break Err(NotDone::Refused(Refused(format!(
                    "the trigger at {at} is not in Kafka: the partition was read from offset \
                     {} (was the topic deleted and created again?)",
                    m.offset()
                ))));
            }
            // A broker that is away for a moment: keep trying until the deadline.
            Some(Err(e)) => last_error = Some(e.to_string()),
            None => {}
        }
    };
    let _ = reader.unassign();
    found
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
