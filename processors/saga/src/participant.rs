//! A saga participant: one role of the definition, as a stateful processor. It reads the
//! events its role reacts to (the definition says which, [`Definition::reactions`]), asks its
//! store to decide (one transaction, see [`crate::participant_store`]) and publishes the
//! event the decision stands for, to the topic the definition gives:
//! - the trigger of one of its steps: perform it (after the injected latency, on a durable
//!   timer) and publish its completion or failure;
//! - the monitor's timeout of one of its steps: fail it with `timeout`, unless it was decided
//!   already (the participant decides exactly one outcome per step, so the first of its
//!   trigger and its timeout wins, whatever order they arrive in);
//! - a later step's failure or compensation: undo its step and publish its compensation;
//! - the failure of the step before one of its own: block that step, so a completion that
//!   shows up after the failure (published by someone else) is never acted on;
//! - the orders role turns its step into `CompleteOrder` and the end compensation into
//!   `CancelOrder`, and turns a refused `CompleteOrder` into the step's failure.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use eip_runtime::config::{Config, ConfigError};
use eip_runtime::{
    Effects, Envelope, Flush, Opened, Output, PartitionId, ProcessError, Record, Stateful, Timer,
};
use eip_schemas::Codec;
use eip_schemas::codec::decode_with;
use eip_schemas::types::{CommandOutcome, EventMetadata, OrderSnapshot, StockLevelChanged};
use eip_schemas::{AvroRecord, frame};
use serde::{Deserialize, Serialize};

use crate::actions::{Perform, Undo};
use crate::config::{ParticipantConfig, load_definition};
use crate::definition::{Definition, Reaction, TIMED_OUT};
use crate::events::{self, Publish, SagaRecord};
use crate::participant_store::{Partition, Request, StepId, StepRow, Store, Verdict};

/// The step name the end compensation is stored under.
const END: &str = "end";

/// What a participant reads.
#[derive(Debug, Clone)]
pub enum Input {
    /// A saga event this role reacts to.
    Saga(SagaRecord),
    /// The outcome of a command (the orders role).
    Outcome(CommandOutcome),
    /// A record of another type: not for this role.
    Skip,
}

/// A step performed later (injected latency), carried by its timer's key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Delayed {
    saga_id: String,
    step: usize,
    order: OrderSnapshot,
    correlation_id: String,
    causation_id: Option<String>,
}

/// One participant role. See the module docs.
#[derive(Debug, Clone)]
pub struct Participant {
    role: String,
    def: Arc<Definition>,
    store: Store,
    latency_ms: i64,
    commands_topic: Arc<str>,
    outcomes_topic: String,
    /// Where stock levels go, for a role that reserves stock (None for the others).
    levels_topic: Option<Arc<str>>,
    /// How to reach the cluster, to read the topics' `max.message.bytes`.
    kafka: Arc<eip_runtime::config::KafkaConfig>,
    /// The largest completion event each of the role's completion topics takes, read once.
    max_event_bytes: Arc<tokio::sync::OnceCell<HashMap<String, usize>>>,
}

/// Room left in a record for its key, headers and framing on top of the event (as in
/// eip-orders: ids of at most 1,024 bytes, headers of a few hundred).
const RECORD_ROOM: usize = 4_096;

impl Participant {
    /// The participant `config.processor.role`: loads and checks the definition, checks that
    /// the role is in it and that this build can perform and publish each of its steps, opens
    /// its store, and reads the role's input topics from the definition when
    /// `pipeline.inputs` is empty.
    pub fn new(config: &mut Config<ParticipantConfig>) -> Result<Participant, ConfigError> {
        let p = &config.processor;
        let def = load_definition(&p.definition)?;
        if !def.participants().contains(p.role.as_str()) {
            return Err(ConfigError::invalid(
                "role",
                format!(
                    "{:?} is not a participant of saga {} (its participants: {})",
                    p.role,
                    def.name,
                    def.participants()
                        .into_iter()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        for s in def.steps.iter().filter(|s| s.participant == p.role) {
            let at = format!("steps ({})", s.name);
            if Perform::of(&s.completed_by).is_none() {
                return Err(ConfigError::invalid(
                    "definition",
                    format!(
                        "{at}: eip-saga has no action that publishes {}",
                        s.completed_by
                    ),
                ));
            }
            let mut published = vec![&s.failed_by];
            if Perform::of(&s.completed_by) != Some(Perform::CompleteOrder) {
                published.push(&s.completed_by);
            }
            if let Some(c) = &s.compensated_by {
                if Undo::of(c).is_none() {
                    return Err(ConfigError::invalid(
                        "definition",
                        format!("{at}: eip-saga has no compensation that publishes {c}"),
                    ));
                }
                published.push(c);
            }
            if let Some(e) = published.into_iter().find(|e| !events::can_publish(e)) {
                return Err(ConfigError::invalid(
                    "definition",
                    format!("{at}: eip-saga can't publish {e}"),
                ));
            }
        }
        if def.end.participant == p.role && Undo::of(&def.end.compensated_by).is_none() {
            return Err(ConfigError::invalid(
                "definition",
                format!(
                    "end: eip-saga has no compensation that publishes {}",
                    def.end.compensated_by
                ),
            ));
        }
        let store = Store::open(&p.db, p.policy())
            .map_err(|e| ConfigError::invalid("db", format!("{}: {e}", p.db.display())))?;
        let participant = Participant {
            role: p.role.clone(),
            latency_ms: i64::try_from(p.injection().latency.as_millis()).unwrap_or(i64::MAX),
            commands_topic: Arc::from(p.commands_topic.as_str()),
            outcomes_topic: p.outcomes_topic.clone(),
            levels_topic: def
                .steps
                .iter()
                .any(|s| {
                    s.participant == p.role
                        && Perform::of(&s.completed_by) == Some(Perform::ReserveStock)
                })
                .then(|| Arc::from(p.levels_topic.as_str())),
            def: Arc::new(def),
            store,
            kafka: Arc::new(config.kafka.clone()),
            max_event_bytes: Arc::default(),
        };
        if config.pipeline.inputs.is_empty() {
            config.pipeline.inputs = participant.inputs();
        }
        Ok(participant)
    }

    /// The topics this role reads.
    pub fn inputs(&self) -> Vec<String> {
        let mut topics = self.def.inputs_of(&self.role);
        if self.sends_commands() {
            topics.push(self.outcomes_topic.clone());
        }
        topics.sort();
        topics.dedup();
        topics
    }

    /// The store, for reports and tests.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn sends_commands(&self) -> bool {
        self.def.end.participant == self.role
            || self.def.steps.iter().any(|s| {
                s.participant == self.role
                    && Perform::of(&s.completed_by) == Some(Perform::CompleteOrder)
            })
    }

    fn id(&self, saga_id: &str, step: &str, r: &SagaRecord, at: i64) -> StepId {
        let meta = r.fields.metadata.as_ref();
        StepId {
            saga_id: saga_id.to_string(),
            step: step.to_string(),
            correlation_id: meta.map_or_else(|| saga_id.to_string(), |m| m.correlation_id.clone()),
            causation_id: meta.map(|m| m.event_id.clone()),
            at,
        }
    }

    /// The same participant with `max` as the largest event of each of its completion topics,
    /// instead of reading their `max.message.bytes` from the cluster (the test kit's
    /// participants have no cluster).
    pub fn with_event_limit(self, max: usize) -> Participant {
        let limits = self
            .def
            .steps
            .iter()
            .filter(|s| s.participant == self.role)
            .map(|s| (s.completed_topic.clone(), max))
            .collect();
        Participant {
            max_event_bytes: Arc::new(tokio::sync::OnceCell::new_with(Some(limits))),
            ..self
        }
    }

    /// The largest event each completion topic of this role takes: its `max.message.bytes`
    /// and the producer's `message.max.bytes`, whichever is smaller, less [`RECORD_ROOM`].
    async fn max_event_bytes(&self) -> Result<&HashMap<String, usize>, ProcessError> {
        self.max_event_bytes
            .get_or_try_init(|| async {
                // Once each: a role with two steps on one topic (payments) names it twice.
                let topics: Vec<String> = self
                    .def
                    .steps
                    .iter()
                    .filter(|s| s.participant == self.role)
                    .map(|s| s.completed_topic.clone())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let settings = eip_runtime::topics::topic_setting(
                    &self.kafka,
                    &topics,
                    "max.message.bytes",
                    std::time::Duration::from_secs(10),
                )
                .await
                .unwrap_or_else(|e| {
                    // Not allowed to describe them, or not there yet: the producer's own limit
                    // still applies (and the broker's refusal stops the participant, as before).
                    tracing::warn!(
                        error = %e,
                        "the completion topics' max.message.bytes can't be read; checking \
                         completion events against the producer's message.max.bytes only"
                    );
                    HashMap::new()
                });
                let producer_max = self
                    .kafka
                    .producer_properties
                    .get("message.max.bytes")
                    .or_else(|| self.kafka.properties.get("message.max.bytes"))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(1_000_000);
                Ok::<_, ProcessError>(
                    topics
                        .into_iter()
                        .map(|t| {
                            let topic_max = settings
                                .get(&t)
                                .and_then(|v| v.as_deref()?.parse::<usize>().ok())
                                .unwrap_or(usize::MAX);
                            (t, topic_max.min(producer_max).saturating_sub(RECORD_ROOM))
                        })
                        .collect(),
                )
            })
            .await
    }

    /// Why step `i`'s completion event for `order` would be too large for its topic, if it
    /// would: measured with a reference and amount longer than any the step adds, before
    /// anything is decided, so the step fails instead of holding what it could not announce.
    async fn too_large(
        &self,
        i: usize,
        id: &StepId,
        order: &OrderSnapshot,
    ) -> Result<Option<String>, ProcessError> {
        let s = &self.def.steps[i];
        if Perform::of(&s.completed_by) == Some(Perform::CompleteOrder) {
            return Ok(None);
        }

        let Some(max) = self
            .max_event_bytes()
            .await?
            .get(&s.completed_topic)
            .copied()
        else {
            return Ok(None);
        };
        let probe = events::output(&Publish {
            event_type: s.completed_by.clone(),
            topic: Arc::from(s.completed_topic.as_str()),
            saga_id: id.saga_id.clone(),
            event_id: format!("{}:{}:completed", id.saga_id, s.name),
            correlation_id: id.correlation_id.clone(),
            causation_id: id.causation_id.clone(),
            occurred_at: id.at,
            version: i64::try_from(i + 1).unwrap_or(i64::MAX),
            order: order.clone(),
            // References name the saga or the customer (ids of at most 1,024 bytes).
            reference: "r".repeat(id.saga_id.len().max(order.customer_id.len()) + 256),
            amount: i64::MAX,
            reason: String::new(),
            reason_code: None,
        })?;
        let size = match &probe.payload {
            eip_runtime::Payload::Record(r) => r.encode(0).map_err(ProcessError::Codec)?.len(),
            _ => 0,
        };
        Ok((size > max).then(|| {
            format!(
                "its {} would be {size} bytes, more than the {max} that {} takes \
                 (max.message.bytes, less room for the key and headers)",
                s.completed_by, s.completed_topic
            )
        }))
    }

    /// Asks the store, then emits what the verdict stands for.
    async fn decide(
        &self,
        state: &Partition,
        step: Option<usize>,
        id: StepId,
        request: Request,
        effects: &mut Effects,
    ) -> Result<(), ProcessError> {
        let saga_id = id.saga_id.clone();
        // A step whose completion its topic would refuse fails instead: deciding it would
        // hold resources for an event that can never be published.
        let request = match (step, request) {
            (Some(i), Request::Perform { action, order }) => {
                match self.too_large(i, &id, &order).await? {
                    Some(reason) => Request::TooLarge { reason },
                    None => Request::Perform { action, order },
                }
            }
            (_, request) => request,
        };
        match self.store.decide(state, id, request).await? {
            Verdict::Publish { row, fresh } => {
                if !fresh {
                    tracing::debug!(saga = %saga_id, "repeating a decision already published");
                }
                effects.emit(self.publish(step, &saga_id, &row)?);
                // The stock the decision left, a record per SKU (again with a repeat: the
                // view keeps the highest sequence, so a repeat changes nothing).
                if let (Some(topic), Some(levels), Some(i)) =
                    (&self.levels_topic, &row.levels, step)
                {
                    let cause = format!("{saga_id}:{}:{}", self.def.steps[i].name, row.state);
                    let at = row.compensated_at.unwrap_or(row.decided_at);
                    for l in levels {
                        effects.emit(level_output(
                            topic,
                            &saga_id,
                            &cause,
                            &row.correlation_id,
                            at,
                            l,
                        ));
                    }
                }
                Ok(())
            }
            Verdict::Nothing(why) => {
                tracing::debug!(saga = %saga_id, why, "nothing to publish");
                Ok(())
            }
        }
    }

    /// The record a stored decision stands for.
    fn publish(
        &self,
        step: Option<usize>,
        saga_id: &str,
        row: &StepRow,
    ) -> Result<Output, ProcessError> {
        let Some(i) = step else {
            // The end compensation: the order is cancelled.
            return Ok(events::order_command(
                self.commands_topic.clone(),
                saga_id,
                Some(&row.reason),
                &row.correlation_id,
                row.causation_id.as_deref(),
                row.compensated_at.unwrap_or(row.decided_at),
            ));
        };
        let s = &self.def.steps[i];
        let (event_type, topic, at) = match row.state.as_str() {
            "completed" => {
                if Perform::of(&s.completed_by) == Some(Perform::CompleteOrder) {
                    return Ok(events::order_command(
                        self.commands_topic.clone(),
                        saga_id,
                        None,
                        &row.correlation_id,
                        row.causation_id.as_deref(),
                        row.decided_at,
                    ));
                }
                (&s.completed_by, &s.completed_topic, row.decided_at)
            }
            "failed" => (&s.failed_by, &s.topic, row.decided_at),
            _ => match &s.compensated_by {
                Some(c) => (c, &s.topic, row.compensated_at.unwrap_or(row.decided_at)),
                None => {
                    return Err(ProcessError::fatal(format!(
                        "step {} has no compensation event, yet it was compensated",
                        s.name
                    )));
                }
            },
        };
        events::output(&Publish {
            event_type: event_type.clone(),
            topic: Arc::from(topic.as_str()),
            saga_id: saga_id.to_string(),
            event_id: format!("{saga_id}:{}:{}", s.name, row.state),
            correlation_id: row.correlation_id.clone(),
            causation_id: row.causation_id.clone(),
            occurred_at: at,
            version: i64::try_from(i + 1).unwrap_or(i64::MAX),
            order: row.order.clone(),
            reference: row.reference.clone(),
            amount: row.amount,
            reason: row.reason.clone(),
            reason_code: row.reason_code.clone(),
        })
    }

    /// Why compensations happen, as the trigger says: a failure's reason, or the reason an
    /// earlier compensation carried on.
    fn wave_reason(&self, r: &SagaRecord) -> String {
        let reason = r.fields.reason.clone().unwrap_or_default();
        match self.def.role_of(&r.event_type) {
            Some(crate::definition::Role::Failed(i)) => {
                format!("{} failed: {reason}", self.def.steps[i].name)
            }
            _ => reason,
        }
    }
}

impl Stateful for Participant {
    type Input = Input;
    type State = Partition;

    fn name(&self) -> &str {
        "saga-participant"
    }

    fn output_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = Vec::new();
        for s in self.def.steps.iter().filter(|s| s.participant == self.role) {
            topics.push(s.topic.clone());
            if Perform::of(&s.completed_by) != Some(Perform::CompleteOrder) {
                topics.push(s.completed_topic.clone());
            }
        }
        if self.sends_commands() {
            topics.push(self.commands_topic.to_string());
        }
        if let Some(t) = &self.levels_topic {
            topics.push(t.to_string());
        }
        topics.sort();
        topics.dedup();
        topics
    }

    async fn decode(&self, codec: &Codec, record: &Record) -> Result<Input, ProcessError> {
        let payload = record.payload.as_deref();
        let event_type = events::type_of(codec, payload).await?;
        if event_type == CommandOutcome::FULL_NAME {
            if !self.sends_commands() {
                return Ok(Input::Skip);
            }
            let (id, body) = frame::split(payload).map_err(|e| ProcessError::Codec(e.into()))?;
            let writer = codec.registry().schema_by_id(id).await?;
            return Ok(Input::Outcome(decode_with(&writer, body)?));
        }
        if event_type != TIMED_OUT && self.def.reactions(&self.role, &event_type).is_empty() {
            return Ok(Input::Skip);
        }
        Ok(Input::Saga(events::read(codec, payload).await?))
    }

    async fn open(&self, partition: &PartitionId) -> Result<Opened<Partition>, ProcessError> {
        self.store.claim(partition).await
    }

    async fn process(
        &self,
        state: &mut Partition,
        input: Envelope<Input>,
        effects: &mut Effects,
    ) -> Result<(), ProcessError> {
        let now = effects.now_ms();
        let r = match input.value {
            Input::Skip => return Ok(()),
            Input::Outcome(o) => {
                let Some((i, s)) = self.def.steps.iter().enumerate().find(|(_, s)| {
                    s.participant == self.role
                        && Perform::of(&s.completed_by) == Some(Perform::CompleteOrder)
                }) else {
                    return Ok(());
                };
                if o.command != "CompleteOrder"
                    || o.accepted
                    || o.duplicate
                    || o.command_id != format!("{}:complete", o.aggregate_id)
                {
                    return Ok(());
                }
                let id = StepId {
                    saga_id: o.aggregate_id.clone(),
                    step: s.name.clone(),
                    correlation_id: o.correlation_id.clone(),
                    causation_id: Some(o.command_id.clone()),
                    at: now,
                };
                let reason = format!(
                    "{}: {}",
                    o.reason_code.unwrap_or_default(),
                    o.reason.unwrap_or_default()
                );
                return self
                    .decide(state, Some(i), id, Request::Refused { reason }, effects)
                    .await;
            }
            Input::Saga(r) => r,
        };
        let Some(saga_id) = r.saga_id().map(str::to_string) else {
            return Err(ProcessError::poison(format!(
                "{} names no saga (no order_id, no metadata.aggregate_id)",
                r.event_type
            )));
        };
        if r.event_type == TIMED_OUT {
            let Some((i, s)) = r.fields.step.as_deref().and_then(|n| self.def.step(n)) else {
                return Ok(());
            };
            if s.participant != self.role || r.fields.saga.as_deref() != Some(&self.def.name) {
                return Ok(());
            }
            let id = self.id(&saga_id, &s.name, &r, now);
            let operator = (r.fields.reason_code.as_deref() == Some("operator")).then(|| {
                r.fields
                    .reason
                    .clone()
                    .unwrap_or_else(|| "compensation started by an operator".into())
            });
            return self
                .decide(state, Some(i), id, Request::TimedOut { operator }, effects)
                .await;
        }
        for reaction in self.def.reactions(&self.role, &r.event_type) {
            match reaction {
                Reaction::Perform(i) => {
                    let Some(order) = r.fields.order.clone() else {
                        return Err(ProcessError::poison(format!(
                            "{} of saga {saga_id} carries no order snapshot (`order`), so step {} \
                             can't be performed",
                            r.event_type, self.def.steps[i].name
                        )));
                    };
                    let s = &self.def.steps[i];
                    let Some(action) = Perform::of(&s.completed_by) else {
                        continue;
                    };
                    let id = self.id(&saga_id, &s.name, &r, now);
                    if self.latency_ms > 0 {
                        let delayed = Delayed {
                            saga_id: saga_id.clone(),
                            step: i,
                            order,
                            correlation_id: id.correlation_id,
                            causation_id: id.causation_id,
                        };
                        let key = serde_json::to_vec(&delayed).map_err(|e| {
                            ProcessError::fatal(format!("a delayed step can't be encoded: {e}"))
                        })?;
                        effects.schedule(Bytes::from(key), now.saturating_add(self.latency_ms));
                        continue;
                    }
                    self.decide(
                        state,
                        Some(i),
                        id,
                        Request::Perform { action, order },
                        effects,
                    )
                    .await?;
                }
                Reaction::Compensate(i) => {
                    let s = &self.def.steps[i];
                    let Some(undo) = s.compensated_by.as_deref().and_then(Undo::of) else {
                        continue;
                    };
                    let id = self.id(&saga_id, &s.name, &r, now);
                    let reason = self.wave_reason(&r);
                    self.decide(
                        state,
                        Some(i),
                        id,
                        Request::Compensate { undo, reason },
                        effects,
                    )
                    .await?;
                }
                Reaction::CompensateEnd => {
                    let id = self.id(&saga_id, END, &r, now);
                    let reason = format!("saga {}: {}", self.def.name, self.wave_reason(&r));
                    self.decide(
                        state,
                        None,
                        id,
                        Request::Compensate {
                            undo: Undo::CancelOrder,
                            reason,
                        },
                        effects,
                    )
                    .await?;
                }
                Reaction::Block(i) => {
                    let id = self.id(&saga_id, &self.def.steps[i].name, &r, now);
                    self.decide(state, Some(i), id, Request::Block, effects)
                        .await?;
                }
                Reaction::TimedOut => {}
            }
        }
        Ok(())
    }

    async fn on_timer(
        &self,
        state: &mut Partition,
        timer: Timer,
        effects: &mut Effects,
    ) -> Result<(), ProcessError> {
        let Ok(d) = serde_json::from_slice::<Delayed>(&timer.key) else {
            tracing::warn!("a timer this participant did not set; dropped");
            return Ok(());
        };
        let Some(s) = self.def.steps.get(d.step) else {
            return Ok(());
        };
        let Some(action) = Perform::of(&s.completed_by) else {
            return Ok(());
        };
        let id = StepId {
            saga_id: d.saga_id,
            step: s.name.clone(),
            correlation_id: d.correlation_id,
            causation_id: d.causation_id,
            at: effects.now_ms(),
        };
        let request = Request::Perform {
            action,
            order: d.order,
        };
        self.decide(state, Some(d.step), id, request, effects).await
    }

    async fn flush(&self, state: &mut Partition, flush: Flush<'_>) -> Result<(), ProcessError> {
        self.store.flush(state, &flush).await
    }
}

/// The `StockLevelChanged` record of `level`, caused by the step event `cause` of `saga_id`.
fn level_output(
    topic: &Arc<str>,
    saga_id: &str,
    cause: &str,
    correlation_id: &str,
    at: i64,
    level: &crate::participant_store::StockLevel,
) -> Output {
    Output::record(
        topic.clone(),
        Some(Bytes::from(level.sku.clone())),
        StockLevelChanged {
            metadata: EventMetadata {
                event_id: format!("{cause}:{}", level.sku),
                correlation_id: correlation_id.to_string(),
                causation_id: Some(cause.to_string()),
                occurred_at: at,
                aggregate_id: level.sku.clone(),
                aggregate_version: level.sequence,
            },
            sku: level.sku.clone(),
            available: level.available,
            reserved: level.reserved,
            sequence: level.sequence,
            order_id: saga_id.to_string(),
        },
    )
}

#[cfg(test)]
#[path = "participant_tests.rs"]
mod tests;
