//! The saga monitor, a stateful processor in two stages inside one consumer group:
//! 1. **Observe.** A record from any topic of the definition becomes a
//!    [`SagaObservation`] (its type, ids, time, reason, and the topic, partition and offset
//!    it was read at), published to the monitor's own topic keyed by saga id. Declared event
//!    types are observed from every topic; undeclared ones only from the steps' own topics
//!    (the start and end topics carry the orders' other events too), where they are flagged.
//! 2. **Fold.** The worker of the observations partition that owns a saga folds its
//!    observations into the saga's state ([`crate::fold`]: a set, so order and duplicates
//!    don't matter), stages the rows of `eip_store::saga_views` the new state stands for,
//!    and sets the saga's one timer to its next deadline.
//!
//! When a deadline passes, the timer publishes the step's timeout to the definition's
//! timeouts topic (its id is `{saga}:timeout:{step}`, the same however often it fires), or
//! marks the saga stuck by publishing a stuck observation to its own topic. Both come back
//! through stage 2, so the monitor's state is always the fold of its own topic: a restart, a
//! rebalance, or a lost store rebuild it from Kafka.

use std::sync::Arc;

use bytes::Bytes;
use eip_runtime::config::{Config, ConfigError};
use eip_runtime::{
    Effects, Envelope, Extras, Flush, Opened, Output, PartitionId, ProcessError, Record, Running,
    Stateful, Timer,
};
use eip_schemas::codec::decode_with;
use eip_schemas::types::{EventMetadata, SagaObservation, SagaStepTimedOut};
use eip_schemas::{AvroRecord, Codec, frame};
use eip_store::saga_views::{SagaView, event_row, saga_rows};
use eip_store::views::{Write, diff};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};

use crate::catch_up::CatchUp;
use crate::config::{MonitorConfig, load_definition};
use crate::definition::{Definition, Role};
use crate::events;
use crate::fold::{Action, STUCK, Saga, Summary, derive};
use crate::monitor_store::{Partition, Store, event_view};

/// When a deadline held for `held_ms` is checked again: after 1 s, then less often the longer
/// it waits (each check is a timer write), at most every 10 s.
fn hold_retry(held_ms: i64) -> i64 {
    (held_ms / 2).clamp(1_000, 10_000)
}

/// `eip_sagas{saga, status}`: sagas per status, from the store.
pub const SAGAS: &str = "eip_sagas";
/// `eip_saga_step_seconds{saga, step}`: from a step's trigger to its completion.
pub const STEP_SECONDS: &str = "eip_saga_step_seconds";
/// `eip_saga_step_failures_total{saga, step}`.
pub const STEP_FAILURES: &str = "eip_saga_step_failures_total";
/// `eip_saga_compensations_total{saga, step}`.
pub const COMPENSATIONS: &str = "eip_saga_compensations_total";
/// `eip_saga_timeouts_total{saga, step}`.
pub const TIMEOUTS: &str = "eip_saga_timeouts_total";

/// The monitor's own metrics (labels: the saga's name and a step of its definition, so
/// bounded by the file).
#[derive(Debug, Clone)]
pub struct SagaMetrics {
    sagas: IntGaugeVec,
    step_seconds: HistogramVec,
    failures: IntCounterVec,
    compensations: IntCounterVec,
    timeouts: IntCounterVec,
}

impl SagaMetrics {
    fn new() -> prometheus::Result<SagaMetrics> {
        let labels = &["saga", "step"];
        Ok(SagaMetrics {
            sagas: IntGaugeVec::new(Opts::new(SAGAS, "Sagas per status."), &["saga", "status"])?,
            step_seconds: HistogramVec::new(
                HistogramOpts::new(STEP_SECONDS, "From a step's trigger to its completion.")
                    .buckets(vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    ]),
                labels,
            )?,
            failures: IntCounterVec::new(Opts::new(STEP_FAILURES, "Steps that failed."), labels)?,
            compensations: IntCounterVec::new(
                Opts::new(COMPENSATIONS, "Steps that were undone."),
                labels,
            )?,
            timeouts: IntCounterVec::new(
                Opts::new(TIMEOUTS, "Step deadlines that passed."),
                labels,
            )?,
        })
    }

    fn register(&self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.sagas.clone()))?;
        registry.register(Box::new(self.step_seconds.clone()))?;
        registry.register(Box::new(self.failures.clone()))?;
        registry.register(Box::new(self.compensations.clone()))?;
        registry.register(Box::new(self.timeouts.clone()))
    }
}

/// What the monitor reads.
#[derive(Debug, Clone)]
pub enum Input {
    /// A saga event from a topic of the definition (stage 1).
    Source(SagaObservation),
    /// An observation from the monitor's own topic (stage 2).
    Observed(SagaObservation),
    /// Not a saga's.
    Skip,
}

/// The saga monitor. See the module docs.
#[derive(Debug, Clone)]
pub struct Monitor {
    def: Arc<Definition>,
    store: Store,
    observations: Arc<str>,
    timeouts: Arc<str>,
    step_topics: Vec<String>,
    metrics: SagaMetrics,
    latencies: Arc<crate::api::Latencies>,
    operator: Arc<crate::operate::Operator>,
    operator_tokens: Arc<Vec<String>>,
    catch_up: Arc<CatchUp>,
    /// The Kafka settings the catch-up sampler connects with.
    kafka: Arc<eip_runtime::config::KafkaConfig>,
    deadline_hold_max: std::time::Duration,
}

impl Monitor {
    /// The monitor of `config.processor.definition`, reading every topic of it and its own
    /// (when `pipeline.inputs` is empty), with its API routes and metrics.
    pub fn new(config: &mut Config<MonitorConfig>) -> Result<(Monitor, Extras), ConfigError> {
        let p = &config.processor;
        let def = load_definition(&p.definition)?;
        if def.topics().contains(&p.observations_topic) {
            return Err(ConfigError::invalid(
                "observations_topic",
                format!(
                    "{} is a topic of the saga definition: the monitor's own topic must be another",
                    p.observations_topic
                ),
            ));
        }
        let store = Store::open(p, &def.name)
            .map_err(|e| ConfigError::invalid("db", format!("{}: {e}", p.db.display())))?
            .with_group(config.kafka.clone());
        let metrics = SagaMetrics::new()
            .map_err(|e| ConfigError::invalid("processor", format!("metrics: {e}")))?;
        let def = Arc::new(def);
        let registry = eip_schemas::Registry::new(config.registry.settings())
            .map_err(|e| ConfigError::invalid("registry", e.to_string()))?;
        let operator = crate::operate::Operator::new(
            def.clone(),
            &config.kafka,
            Codec::new(Arc::new(registry)),
            &p.observations_topic,
        )
        .map_err(|e| ConfigError::invalid("kafka", format!("operator clients: {e}")))?;
        let monitor = Monitor {
            observations: Arc::from(p.observations_topic.as_str()),
            timeouts: Arc::from(def.timeouts_topic.as_str()),
            step_topics: def.steps.iter().map(|s| s.topic.clone()).collect(),
            def,
            store,
            metrics,
            latencies: Arc::new(crate::api::Latencies::default()),
            operator: Arc::new(operator),
            operator_tokens: Arc::new(p.operator_tokens.clone()),
            catch_up: Arc::new(CatchUp::default()),
            kafka: Arc::new(config.kafka.clone()),
            deadline_hold_max: p.deadline_hold_max,
        };
        if config.pipeline.inputs.is_empty() {
            let mut inputs = monitor.def.topics();
            inputs.push(p.observations_topic.clone());
            inputs.sort();
            inputs.dedup();
            config.pipeline.inputs = inputs;
        }
        let inputs = config.pipeline.inputs.clone();
        let extras = Extras {
            routes: crate::api::routes(monitor.api()),
            on_start: Some(Box::new({
                let monitor = monitor.clone();
                move |running: Running| monitor.on_start(running, inputs)
            })),
        };
        Ok((monitor, extras))
    }

    /// The definition.
    pub fn definition(&self) -> &Arc<Definition> {
        &self.def
    }

    /// What the HTTP API reads.
    pub fn api(&self) -> crate::api::Api {
        crate::api::Api::with_latencies(
            self.def.clone(),
            self.store.reads(),
            self.latencies.clone(),
        )
        .with_operator(self.operator.clone(), &self.operator_tokens)
    }

    fn on_start(&self, running: Running, inputs: Vec<String>) {
        if let Err(e) = self.metrics.register(running.metrics.registry()) {
            tracing::error!(error = %e, "saga metrics not registered");
        }
        // A client of the monitor's own group that reads its committed offsets (it never
        // subscribes, so it never joins the group, and it never commits), and one of no
        // group that probes below a partition's end.
        let client = |group: &str, eof: bool| {
            let mut c = eip_runtime::kafka::base_config(&self.kafka);
            c.set("group.id", group)
                .set("enable.auto.commit", "false")
                .set("enable.partition.eof", if eof { "true" } else { "false" })
                // The probe needs one record, not a backlog's worth of prefetch (fetch.max.bytes
                // stays: librdkafka wants it at least message.max.bytes).
                .set("queued.max.messages.kbytes", "1024")
                .set("max.partition.fetch.bytes", "65536");
            c.create::<rdkafka::consumer::BaseConsumer>()
        };
        let probe_group = format!("{}-catch-up-probe", self.kafka.group_id);
        match client(&self.kafka.group_id, false).and_then(|group| {
            Ok(crate::catch_up::Clients {
                group,
                probe: client(&probe_group, true)?,
                from_latest: self.kafka.auto_offset_reset
                    == eip_runtime::config::OffsetReset::Latest,
            })
        }) {
            Ok(clients) => {
                let catch_up = self.catch_up.clone();
                let stop = running.stopping.clone();
                let observations = self.observations.to_string();
                std::thread::spawn(move || {
                    catch_up.sample(
                        clients,
                        inputs,
                        observations,
                        std::time::Duration::from_secs(1),
                        stop,
                    );
                });
            }
            // Deadlines then wait `deadline_hold_max` before they act.
            Err(e) => tracing::error!(error = %e, "the catch-up sampler can't start"),
        }
        let store = self.store.reads();
        let gauge = self.metrics.sagas.clone();
        let saga = self.def.name.clone();
        let stop = running.stopping.clone();
        tokio::spawn(async move {
            loop {
                // The totals every monitor partition keeps, added up: the same figure on
                // every monitor replica, whichever partitions it owns.
                if let Ok(stats) = store.stats(&saga).await {
                    for status in crate::fold::Status::ALL {
                        let n = stats.statuses.get(status.as_str()).copied().unwrap_or(0);
                        gauge
                            .with_label_values(&[saga.as_str(), status.as_str()])
                            .set(n);
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                }
            }
        });
    }

    /// Turns a record of a definition topic into an observation, or None when it is not
    /// one of a saga's.
    async fn observe(
        &self,
        codec: &Codec,
        record: &Record,
    ) -> Result<Option<SagaObservation>, ProcessError> {
        let payload = record.payload.as_deref();
        let event_type = events::type_of(codec, payload).await?;
        let declared = self.def.role_of(&event_type).is_some();
        let step_topic = self
            .step_topics
            .iter()
            .any(|t| **t == *record.position.topic);
        if !declared && !step_topic {
            return Ok(None);
        }
        let r = events::read(codec, payload).await?;
        let Some(saga_id) = r.saga_id().map(str::to_string) else {
            return Err(ProcessError::poison(format!(
                "{event_type} on {} names no saga (no order_id, no metadata.aggregate_id)",
                record.position.topic
            )));
        };
        let pos = &record.position;
        let meta = r.fields.metadata.as_ref();
        let event_id = match meta.map(|m| m.event_id.as_str()) {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => format!("{}:{}:{}", pos.topic, pos.partition, pos.offset),
        };
        Ok(Some(SagaObservation {
            saga_id,
            event_type,
            event_id,
            correlation_id: meta.map(|m| m.correlation_id.clone()).unwrap_or_default(),
            causation_id: meta.and_then(|m| m.causation_id.clone()),
            occurred_at: meta
                .map(|m| m.occurred_at)
                .or(pos.timestamp_ms)
                .unwrap_or_default(),
            topic: pos.topic.to_string(),
            partition: pos.partition,
            offset: pos.offset,
            reason: r.fields.reason.clone(),
            reason_code: r.fields.reason_code.clone(),
            step: r.fields.step.clone(),
            actor: None,
        }))
    }

    /// The saga `id`, from this partition's cache or the store.
    async fn saga<'a>(
        &self,
        state: &'a mut Partition,
        id: &str,
    ) -> Result<&'a mut Saga, ProcessError> {
        if !state.sagas.contains_key(id) {
            let loaded = self.store.load(state, id).await?;
            state.sagas.insert(id.to_string(), loaded);
        }
        state
            .sagas
            .get_mut(id)
            .ok_or_else(|| ProcessError::fatal("a saga just cached is gone"))
    }

    fn view(&self, id: &str, summary: &Summary, version: i64, partition: i32) -> SagaView {
        SagaView {
            saga_id: id.to_string(),
            saga: self.def.name.clone(),
            status: summary.status.as_str().into(),
            step: summary.step.clone(),
            expect: summary.expect.map(|x| x.key(&self.def)),
            remaining: summary.remaining.clone(),
            failed_step: summary.failure.as_ref().map(|f| f.0.clone()),
            failure_reason: summary.failure.as_ref().map(|f| f.1.clone()),
            failure_code: summary.failure.as_ref().and_then(|f| f.2.clone()),
            correlation_id: summary.correlation_id.clone(),
            started_at: summary.started_at,
            updated_at: summary.updated_at,
            deadline_at: summary.deadline.as_ref().map(|d| d.at),
            flags: summary.flags.clone(),
            path: serde_json::to_value(&summary.path).unwrap_or_default(),
            monitor_partition: i64::from(partition),
            version,
        }
    }

    /// Stage 2: folds `o`, read at observation offset `offset`, into its saga, stages the
    /// rows, counts it in the partition's totals, sets the saga's timer.
    async fn fold(
        &self,
        state: &mut Partition,
        o: SagaObservation,
        offset: i64,
        effects: &mut Effects,
    ) -> Result<(), ProcessError> {
        let id = o.saga_id.clone();
        let partition = state.partition().partition;
        let def = self.def.clone();
        let saga = self.saga(state, &id).await?;
        // A saga's rows exist once it is anchored (its start or a step's event seen): an
        // order cancelled without ever being confirmed is kept as an event, not shown as a
        // saga.
        let before = saga
            .anchored(&def)
            .then(|| self.view(&id, &derive(&def, saga), saga.version(), partition));
        if !saga.observe(o.clone()) {
            return Ok(());
        }
        let event = Write::Upsert {
            row: event_row(&event_view(&o, Some(offset))),
            stamp: 1,
        };
        let anchored = saga.anchored(&def);
        let summary = anchored.then(|| (derive(&def, saga), saga.version()));
        // The totals count the events of shown sagas: all of a saga's events when it is first
        // shown, then each new one (what a recount from the store finds too).
        let seen: Vec<String> = match (anchored, before.is_some()) {
            (true, false) => saga.events.values().map(|e| e.event_type.clone()).collect(),
            (true, true) => vec![o.event_type.clone()],
            (false, _) => Vec::new(),
        };
        if anchored {
            self.count(&o, saga);
        }
        for event_type in &seen {
            state.stats.saw(event_type);
        }
        let Some((summary, version)) = summary else {
            state.staged.push(event);
            return Ok(());
        };
        let after = self.view(&id, &summary, version, partition);
        state.stats.moved(before.as_ref(), &after);
        let old_rows = before.as_ref().map(saga_rows).unwrap_or_default();
        let mut writes = diff(&old_rows, &saga_rows(&after), version);
        writes.push(event);
        state.staged.extend(writes);
        state.held.remove(&id);
        match &summary.deadline {
            Some(d) => effects.schedule(Bytes::from(id), d.at),
            None => effects.cancel(Bytes::from(id)),
        }
        Ok(())
    }

    /// The metrics of a new observation.
    fn count(&self, o: &SagaObservation, saga: &Saga) {
        let name = self.def.name.as_str();
        match self.def.role_of(&o.event_type) {
            Some(Role::Completed(i)) => {
                if let Some(ms) = crate::fold::step_latency(&self.def, saga, i)
                    && ms >= 0
                {
                    self.metrics
                        .step_seconds
                        .with_label_values(&[name, &self.def.steps[i].name])
                        .observe(ms as f64 / 1000.0);
                    self.latencies.record(&self.def.steps[i].name, ms);
                }
            }
            Some(Role::Failed(i)) => self
                .metrics
                .failures
                .with_label_values(&[name, &self.def.steps[i].name])
                .inc(),
            Some(Role::Compensated(i)) => self
                .metrics
                .compensations
                .with_label_values(&[name, &self.def.steps[i].name])
                .inc(),
            // An operator's start of a compensation travels as a timeout; it is not one.
            Some(Role::TimedOut) if o.reason_code.as_deref() != Some("operator") => {
                if let Some((_, s)) = o.step.as_deref().and_then(|s| self.def.step(s)) {
                    self.metrics
                        .timeouts
                        .with_label_values(&[name, &s.name])
                        .inc();
                }
            }
            _ => {}
        }
    }
}

impl Stateful for Monitor {
    type Input = Input;
    type State = Partition;

    fn name(&self) -> &str {
        "saga-monitor"
    }

    fn output_topics(&self) -> Vec<String> {
        vec![self.observations.to_string(), self.timeouts.to_string()]
    }

    fn history_topics(&self) -> Vec<String> {
        vec![self.observations.to_string()]
    }

    async fn decode(&self, codec: &Codec, record: &Record) -> Result<Input, ProcessError> {
        if *record.position.topic == *self.observations {
            let (id, body) = frame::split(record.payload.as_deref())
                .map_err(|e| ProcessError::Codec(e.into()))?;
            let writer = codec.registry().schema_by_id(id).await?;
            if writer.full_name != SagaObservation::FULL_NAME {
                return Err(ProcessError::poison(format!(
                    "{} on the observations topic is not a {}",
                    writer.full_name,
                    SagaObservation::FULL_NAME
                )));
            }
            return Ok(Input::Observed(decode_with(&writer, body)?));
        }
        Ok(match self.observe(codec, record).await? {
            Some(o) => Input::Source(o),
            None => Input::Skip,
        })
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
        match input.value {
            Input::Skip => Ok(()),
            Input::Source(o) => {
                let key = Some(Bytes::from(o.saga_id.clone()));
                effects.emit(Output::record(self.observations.clone(), key, o));
                Ok(())
            }
            Input::Observed(o) => self.fold(state, o, input.position.offset, effects).await,
        }
    }

    async fn on_timer(
        &self,
        state: &mut Partition,
        timer: Timer,
        effects: &mut Effects,
    ) -> Result<(), ProcessError> {
        let id = String::from_utf8_lossy(&timer.key).into_owned();
        let now = effects.now_ms();
        // A deadline held for the backlog is checked again without reading the saga.
        if let Some(&(at, since)) = state.held.get(&id) {
            if !self
                .catch_up
                .may_act(at, now, since, self.deadline_hold_max)
            {
                effects.schedule(timer.key, now.saturating_add(hold_retry(now - since)));
                return Ok(());
            }
            state.held.remove(&id);
        }
        let def = self.def.clone();
        let saga = self.saga(state, &id).await?;
        if !saga.anchored(&def) {
            return Ok(());
        }
        let summary = derive(&def, saga);
        let Some(deadline) = summary.deadline else {
            return Ok(());
        };
        if deadline.at > now {
            effects.schedule(timer.key, deadline.at);
            return Ok(());
        }
        if !self
            .catch_up
            .may_act(deadline.at, now, now, self.deadline_hold_max)
        {
            tracing::debug!(saga = %id, deadline = deadline.at, "a passed deadline waits for the backlog");
            state.held.insert(id, (deadline.at, now));
            effects.schedule(timer.key, now.saturating_add(hold_retry(0)));
            return Ok(());
        }
        let key = Some(Bytes::from(id.clone()));
        match deadline.action {
            Action::TimeOut(i) => {
                let step = &def.steps[i].name;
                effects.emit(Output::record(
                    self.timeouts.clone(),
                    key,
                    SagaStepTimedOut {
                        metadata: EventMetadata {
                            event_id: format!("{id}:timeout:{step}"),
                            correlation_id: summary.correlation_id.clone(),
                            causation_id: None,
                            occurred_at: deadline.at,
                            aggregate_id: id.clone(),
                            aggregate_version: i64::try_from(i + 1).unwrap_or(i64::MAX),
                        },
                        order_id: id.clone(),
                        saga: def.name.clone(),
                        step: step.clone(),
                        deadline: deadline.at,
                        reason: None,
                        reason_code: None,
                    },
                ));
            }
            Action::MarkStuck(expect) => {
                effects.emit(Output::record(
                    self.observations.clone(),
                    key,
                    SagaObservation {
                        saga_id: id.clone(),
                        event_type: STUCK.into(),
                        event_id: format!("{id}:stuck:{expect}"),
                        correlation_id: summary.correlation_id.clone(),
                        causation_id: None,
                        occurred_at: deadline.at,
                        topic: self.observations.to_string(),
                        partition: state.partition().partition,
                        offset: -1,
                        reason: Some(format!("no progress on {expect} by its deadline")),
                        reason_code: Some("stuck".into()),
                        step: Some(expect),
                        actor: Some(crate::operator::MONITOR_ACTOR.into()),
                    },
                ));
            }
        }
        Ok(())
    }

    async fn flush(&self, state: &mut Partition, flush: Flush<'_>) -> Result<(), ProcessError> {
        self.store.commit(state, &flush).await
    }
}
