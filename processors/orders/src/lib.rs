//! # eip-orders
//!
//! The CQRS write side. Commands for orders arrive on a topic keyed by order id; each is
//! decided by the pure [`aggregate`] against the order's current state, and:
//! - an accepted command publishes its one event to the events topic (keyed by order id, the
//!   order's next version) and an accepted [`CommandOutcome`] to the outcomes topic;
//! - a rejected one publishes a rejected outcome with its reason code and reason;
//! - a command id seen before publishes its original outcome again, marked `duplicate`, and
//!   changes nothing (except the record that caused an adopted event: see [`readback`]).
//!
//! State lives in the partition's journal ([`eip_store::journal`], SQLite): each order's
//! events, a snapshot every `snapshot_every` versions, and every command's outcome, written
//! by the runtime's group commit after the published records are acknowledged and after an
//! epoch check (see `eip_runtime::stateful`). A new owner of a partition claims it, then
//! [`readback`] adopts events a killed owner published but did not journal, and loads each
//! order on first use as its snapshot plus the events after it. docs/cqrs.md has the whole
//! argument.

pub mod aggregate;
pub mod codec;
pub mod readback;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use eip_runtime::config::{Config, ConfigError, Section};
use eip_runtime::{
    Effects, Envelope, Flush, Opened, Output, PartitionId, ProcessError, Record, Stateful, kafka,
};
use eip_schemas::types::CommandOutcome;
use eip_schemas::{Codec, Registry};
use eip_store::journal::{
    JOURNAL_DDL, Journal, JournalEvent, JournalRows, Publication, Snapshot, StoredOutcome,
};
use eip_store::sqlite::{
    LEDGER_DDL, blocking, check_epoch, claim, classify, connect, write_ledger,
};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::aggregate::{Command, Event, Order, apply, handle, replay};
use crate::readback::Reader;

/// The schema version of [`Order`] snapshots. Raise it when `Order` changes shape: older
/// snapshots are then ignored and their orders replayed from version 1, never misread.
pub const SNAPSHOT_SCHEMA: i64 = 1;

/// Room left in a record for its key, headers and the batch's framing, on top of the event:
/// an order id and a correlation id are at most 1,024 bytes each, the headers a few hundred.
pub const RECORD_ROOM: usize = 4_096;

/// The header of every published event that carries the input offset of the command that
/// caused it: the read-back learns from it which commands were decided before a crash.
pub const COMMAND_OFFSET: &str = "eip-command-offset";

/// `[processor]` settings of the orders processor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrdersConfig {
    /// The journal's SQLite file (created if missing); every replica on one machine shares it.
    pub db: PathBuf,
    /// Where accepted commands' events go, keyed by order id. It must have as many
    /// partitions as the commands topic.
    pub events_topic: String,
    /// Where every command's outcome goes, keyed by order id.
    pub outcomes_topic: String,
    /// A snapshot is written every this many versions of an order.
    pub snapshot_every: u32,
    /// Orders kept in memory per partition between group commits; past this, the cache is
    /// emptied after a commit and each order is loaded again (snapshot + tail) on its next
    /// command. Bounds memory on a long-lived partition.
    pub cached_orders: usize,
    /// Events read back per chunk when a partition opens (each chunk is adopted and
    /// journaled, with how far the read-back got, before the next): the memory a read-back
    /// holds, whatever the length of the tail.
    pub read_back_chunk: usize,
    /// Fault injection only: hold every group commit that journals events open this long
    /// before committing, so a test's kill lands between publishing and journaling.
    #[serde(with = "humantime_serde")]
    pub hold_commit_open: std::time::Duration,
}

impl Default for OrdersConfig {
    fn default() -> Self {
        OrdersConfig {
            db: PathBuf::from("eip-orders.db"),
            events_topic: "order-events".into(),
            outcomes_topic: "order-outcomes".into(),
            snapshot_every: 100,
            cached_orders: 100_000,
            read_back_chunk: 5_000,
            hold_commit_open: std::time::Duration::ZERO,
        }
    }
}

impl Section for OrdersConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.db.as_os_str().is_empty() {
            return Err(ConfigError::invalid("db", "must name a file"));
        }
        for (key, topic) in [
            ("events_topic", &self.events_topic),
            ("outcomes_topic", &self.outcomes_topic),
        ] {
            if topic.trim().is_empty() {
                return Err(ConfigError::invalid(key, "must name a topic"));
            }
        }
        if self.events_topic == self.outcomes_topic {
            return Err(ConfigError::invalid(
                "outcomes_topic",
                "must differ from events_topic",
            ));
        }
        if self.snapshot_every == 0 {
            return Err(ConfigError::invalid("snapshot_every", "must be at least 1"));
        }
        if self.cached_orders == 0 {
            return Err(ConfigError::invalid("cached_orders", "must be at least 1"));
        }
        if self.read_back_chunk == 0 {
            return Err(ConfigError::invalid(
                "read_back_chunk",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// One partition's state: its journal connection, its claim, the orders it has loaded, and
/// what it staged since the last group commit.
pub struct Partition {
    conn: Arc<Mutex<Connection>>,
    epoch: i64,
    orders: HashMap<String, Order>,
    /// Outcomes decided since the last group commit, by command id.
    decided: HashMap<String, CommandOutcome>,
    staged: JournalRows,
    /// True when events were published since the last group commit.
    published: bool,
    /// The highest input offset whose event was published. A record up to it that is met
    /// undecided (a replay after a crash) was decided before, against the state of its time.
    caused_until: Option<i64>,
    /// The partition count of the commands topic: a command's key must hash to this
    /// partition, as the producers' murmur2 partitioner puts it.
    partitions: usize,
    /// The largest event the events topic takes (its `max.message.bytes`, and the
    /// producer's `message.max.bytes`), less room for the key and headers: a command whose
    /// event would be larger is rejected `too_large` before anything changes.
    max_event_bytes: usize,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("epoch", &self.epoch)
            .field("orders", &self.orders.len())
            .field("decided", &self.decided.len())
            .finish()
    }
}

/// The orders processor. See the crate docs.
#[derive(Clone)]
pub struct Orders {
    db: Arc<std::path::Path>,
    events: Arc<str>,
    outcomes: Arc<str>,
    snapshot_every: i64,
    cached_orders: usize,
    read_back_chunk: usize,
    hold_commit_open: std::time::Duration,
    codec: Codec,
    kafka: ClientConfigSource,
    /// The cluster settings, for DescribeConfigs of the output topics at open.
    cluster: eip_runtime::config::KafkaConfig,
    watermarks: Arc<Reader>,
}

/// How to make a read-back client.
#[derive(Clone)]
struct ClientConfigSource(rdkafka::config::ClientConfig);

impl std::fmt::Debug for Orders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orders")
            .field("db", &self.db)
            .field("events", &self.events)
            .finish()
    }
}

impl Orders {
    /// The processor for `config`: opens (creating) the journal, and makes the read-back's
    /// clients. No network call is made here.
    pub fn new(config: &Config<OrdersConfig>) -> Result<Orders, ConfigError> {
        let p = &config.processor;
        if config.pipeline.inputs.len() != 1 {
            return Err(ConfigError::invalid(
                "pipeline.inputs",
                "the orders processor reads exactly one commands topic (an order's commands \
                 must be ordered on one partition)",
            ));
        }
        connect(&p.db)
            .and_then(|c| c.execute_batch(&format!("{LEDGER_DDL}{JOURNAL_DDL}")))
            .map_err(|e| ConfigError::invalid("db", format!("{}: {e}", p.db.display())))?;
        let mut client = kafka::base_config(&config.kafka);
        client.set("group.id", format!("{}-readback", config.kafka.group_id));
        let watermarks = Reader::new(client.clone())
            .map_err(|e| ConfigError::invalid("kafka", format!("read-back client: {e}")))?;
        let registry = Registry::new(config.registry.settings())
            .map_err(|e| ConfigError::invalid("registry", e.to_string()))?;
        Ok(Orders {
            db: Arc::from(p.db.as_path()),
            events: Arc::from(p.events_topic.as_str()),
            outcomes: Arc::from(p.outcomes_topic.as_str()),
            snapshot_every: i64::from(p.snapshot_every),
            cached_orders: p.cached_orders,
            read_back_chunk: p.read_back_chunk,
            hold_commit_open: p.hold_commit_open,
            codec: Codec::new(Arc::new(registry)),
            kafka: ClientConfigSource(client),
            cluster: config.kafka.clone(),
            watermarks: Arc::new(watermarks),
        })
    }

    /// The journal file.
    pub fn db(&self) -> &std::path::Path {
        &self.db
    }

    /// The largest event worth publishing: the events topic's `max.message.bytes` and the
    /// producer's `message.max.bytes`, whichever is smaller, less [`RECORD_ROOM`].
    async fn max_event_bytes(&self) -> Result<usize, ProcessError> {
        let topic = self.events.to_string();
        let settings = eip_runtime::topics::topic_setting(
            &self.cluster,
            std::slice::from_ref(&topic),
            "max.message.bytes",
            std::time::Duration::from_secs(10),
        )
        .await
        .map_err(|e| ProcessError::Transient {
            reason: format!("reading {topic}'s max.message.bytes"),
            source: Some(Arc::new(e)),
        })?;
        let topic_max = settings
            .get(&topic)
            .and_then(|v| v.as_deref()?.parse::<usize>().ok())
            .unwrap_or(usize::MAX);
        let producer_max = self
            .cluster
            .producer_properties
            .get("message.max.bytes")
            .or_else(|| self.cluster.properties.get("message.max.bytes"))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1_000_000);
        Ok(topic_max.min(producer_max).saturating_sub(RECORD_ROOM))
    }

    /// The JSON of `event` for the journal, or `too_large` when the event would not fit in
    /// the events topic: a rejection made before anything changes, so the state never holds
    /// a version the topic can't have.
    fn fits(&self, event: &Event, max: usize) -> Result<Option<String>, aggregate::Rejection> {
        let json = serde_json::to_string(event).ok();
        // Avro is never longer than this JSON (no field names, no quotes, varints), so an
        // event whose JSON fits is not encoded twice.
        if json.as_ref().is_some_and(|j| j.len() <= max) {
            return Ok(json);
        }
        let avro = codec::encoded_len(event).unwrap_or(usize::MAX);
        if avro <= max {
            return Ok(json);
        }
        Err(aggregate::Rejection {
            code: "too_large",
            reason: format!(
                "its event would be {avro} bytes, more than the {max} that {} takes \
                 (max.message.bytes, less room for the key and headers)",
                self.events
            ),
        })
    }

    /// Loads an order as its snapshot plus the events after it (None: it does not exist).
    fn load(conn: &Connection, id: &str) -> Result<Option<Order>, ProcessError> {
        let (snapshot, tail) = Journal::load(conn, id, SNAPSHOT_SCHEMA)?;
        let mut order = match snapshot {
            Some(s) => Some(serde_json::from_str::<Order>(&s.state).map_err(|e| {
                ProcessError::fatal_from(format!("snapshot of {id} does not parse"), e)
            })?),
            None => None,
        };
        for json in tail {
            let event: Event = serde_json::from_str(&json).map_err(|e| {
                ProcessError::fatal_from(format!("a journaled event of {id} does not parse"), e)
            })?;
            order = Some(apply(order, &event));
        }
        Ok(order)
    }

    /// Records `event` as decided in `state` (applied, staged for the journal, snapshotted
    /// when due) and returns its outcome.
    fn record(
        &self,
        state: &mut Partition,
        event: &Event,
        json: Option<String>,
        command: &str,
        at: i64,
        source_offset: Option<i64>,
    ) -> CommandOutcome {
        let meta = event.metadata();
        let id = meta.aggregate_id.clone();
        let order = apply(state.orders.remove(&id), event);
        let version = order.version;
        let command_id = meta.causation_id.clone().unwrap_or_default();
        if let Some(json) = json.or_else(|| serde_json::to_string(event).ok()) {
            state.staged.events.push(JournalEvent {
                aggregate_id: id.clone(),
                version,
                command_id: meta.causation_id.clone(),
                source_offset,
                event: json,
            });
        }
        if version % self.snapshot_every == 0
            && let Ok(json) = serde_json::to_string(&order)
        {
            state.staged.snapshots.push((
                id.clone(),
                Snapshot {
                    version,
                    schema_version: SNAPSHOT_SCHEMA,
                    state: json,
                },
            ));
        }
        state.orders.insert(id.clone(), order);
        state.caused_until = state.caused_until.max(source_offset);
        let outcome = CommandOutcome {
            command_id: command_id.clone(),
            correlation_id: meta.correlation_id.clone(),
            aggregate_id: id,
            command: command.to_string(),
            accepted: true,
            version,
            reason_code: None,
            reason: None,
            duplicate: false,
            decided_at: at,
        };
        self.stage_outcome(state, &outcome);
        outcome
    }

    fn stage_outcome(&self, state: &mut Partition, outcome: &CommandOutcome) {
        if let Ok(json) = serde_json::to_string(outcome) {
            state.staged.outcomes.push((
                outcome.command_id.clone(),
                StoredOutcome {
                    aggregate_id: outcome.aggregate_id.clone(),
                    outcome: json,
                },
            ));
        }
        state
            .decided
            .insert(outcome.command_id.clone(), outcome.clone());
    }

    fn outcome_output(&self, outcome: CommandOutcome) -> Output {
        let key = Some(Bytes::from(outcome.aggregate_id.clone()));
        Output::record(self.outcomes.clone(), key, outcome)
    }

    /// Adopts what the read-back found: events after the journal's last version of their
    /// order, in order. Returns how many were adopted.
    fn adopt(
        &self,
        conn: &Connection,
        state: &mut Partition,
        events: Vec<(Event, Option<i64>)>,
    ) -> Result<usize, ProcessError> {
        let mut adopted = 0;
        for (event, source_offset) in events {
            let id = event.metadata().aggregate_id.clone();
            if !state.orders.contains_key(&id)
                && let Some(order) = Self::load(conn, &id)?
            {
                state.orders.insert(id.clone(), order);
            }
            let current = state.orders.get(&id).map_or(0, |o| o.version);
            if event.version() <= current {
                // Journaled already.
                continue;
            }
            if event.version() > current + 1 {
                // A version is missing from the log itself: deciding on would publish a second
                // history for this order. An operator must look (the event, the journal).
                return Err(ProcessError::fatal(format!(
                    "read-back: {} holds version {} of order {id}, but the journal has it at \
                     version {current} and no event in between was published",
                    self.events,
                    event.version()
                )));
            }
            let kind = match &event {
                Event::Placed(_) => "PlaceOrder",
                Event::LineAdded(_) => "AddOrderLine",
                Event::LineRemoved(_) => "RemoveOrderLine",
                Event::Confirmed(_) => "ConfirmOrder",
                Event::Cancelled(_) => "CancelOrder",
                Event::Completed(_) => "CompleteOrder",
            };
            let at = event.metadata().occurred_at;
            self.record(state, &event, None, kind, at, source_offset);
            adopted += 1;
        }
        Ok(adopted)
    }
}

impl Stateful for Orders {
    type Input = Command;
    type State = Partition;

    fn name(&self) -> &str {
        "orders"
    }

    fn output_topics(&self) -> Vec<String> {
        vec![self.events.to_string(), self.outcomes.to_string()]
    }

    /// A lost journal is rebuilt from offset 0 of the events topic.
    fn history_topics(&self) -> Vec<String> {
        vec![self.events.to_string()]
    }

    async fn decode(&self, codec: &Codec, record: &Record) -> Result<Command, ProcessError> {
        let command = codec::command(codec, record.payload.as_deref()).await?;
        // Its outcome is found by command id and correlation id: a command that can't be
        // answered by them is refused here, with the reason, rather than decided unseen.
        for (name, value) in [
            ("command_id", &command.metadata().command_id),
            ("correlation_id", &command.metadata().correlation_id),
        ] {
            if let Some(problem) = eip_schemas::limits::id_problem(value) {
                return Err(ProcessError::poison(format!(
                    "the command's {name} {problem}: its outcome could not be looked up"
                )));
            }
        }
        let id = command.metadata().aggregate_id.as_bytes();
        if record.key.as_deref() != Some(id) {
            // One order's commands must share a partition, which only the key ensures.
            return Err(ProcessError::poison(format!(
                "the record key {:?} is not the command's aggregate id {:?}",
                record.key.as_deref().map(String::from_utf8_lossy),
                command.metadata().aggregate_id
            )));
        }
        Ok(command)
    }

    async fn open(&self, partition: &PartitionId) -> Result<Opened<Partition>, ProcessError> {
        let max_event_bytes = self.max_event_bytes().await?;
        let db = self.db.clone();
        let events_topic = self.events.clone();
        let client = self.kafka.0.clone();
        let part = partition.clone();
        // Claim and check the partition alignment in one blocking call.
        let (mut state, applied, timers, reader, mut from) = blocking(move || {
            let mut conn = connect(&db).map_err(|e| classify("opening the journal", e))?;
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| classify("claiming a partition", e))?;
            let claimed = claim(&tx, &part)?;
            tx.commit()
                .map_err(|e| classify("claiming a partition", e))?;
            let reader = Reader::new(client).map_err(|e| {
                ProcessError::fatal_from("creating the read-back client".to_string(), e)
            })?;
            let (commands, events) = (
                reader.partitions(&part.topic)?,
                reader.partitions(&events_topic)?,
            );
            if commands != events {
                return Err(ProcessError::fatal(format!(
                    "{} has {commands} partitions and {events_topic} has {events}: an order's \
                     commands and events must share a partition number, so give both topics \
                     the same count",
                    part.topic
                )));
            }
            let published = Journal::publication(&conn, &events_topic, part.partition)?;
            let state = Partition {
                conn: Arc::new(Mutex::new(conn)),
                epoch: claimed.epoch,
                partitions: commands,
                max_event_bytes,
                orders: HashMap::new(),
                decided: HashMap::new(),
                staged: JournalRows::default(),
                published: false,
                caused_until: published.as_ref().and_then(|p| p.caused_until),
            };
            let from = published.map(|p| p.next_offset);
            Ok((
                state,
                claimed.applied,
                claimed.timers,
                Arc::new(reader),
                from,
            ))
        })
        .await?;
        // Read back to the end as it is now, a chunk at a time: each chunk's events are
        // adopted and journaled with how far the read-back got, before the next is read.
        let mut until = None;
        let mut adopted = 0;
        loop {
            let (r, topic, number) = (reader.clone(), self.events.clone(), partition.partition);
            let chunk = self.read_back_chunk;
            let (payloads, next, end) =
                blocking(move || r.read_chunk(&topic, number, from, until, chunk, COMMAND_OFFSET))
                    .await?;
            until = Some(end);
            let mut events = Vec::with_capacity(payloads.len());
            for r in payloads {
                if let Some(e) = codec::event(&self.codec, r.payload.as_deref()).await? {
                    events.push((e, r.header));
                }
            }
            let conn = state.conn.clone();
            adopted += {
                let conn = conn
                    .lock()
                    .map_err(|_| ProcessError::fatal("journal connection poisoned"))?;
                self.adopt(&conn, &mut state, events)?
            };
            // Journal what was adopted, and where publication stands, before going on.
            state.staged.publications.push(Publication {
                topic: self.events.to_string(),
                partition: partition.partition,
                next_offset: next,
                caused_until: state.caused_until,
            });
            if next >= end {
                break;
            }
            let flush = Flush {
                partition,
                up_to: None,
                timers: &[],
            };
            self.flush(&mut state, flush).await?;
            tracing::info!(topic = %partition.topic, partition = partition.partition, read_back_to = next, end, "read-back in progress");
            from = Some(next);
        }
        if adopted > 0 {
            tracing::warn!(topic = %partition.topic, partition = partition.partition, adopted, "adopted events a previous owner published but did not journal");
        }
        let flush = Flush {
            partition,
            up_to: None,
            timers: &[],
        };
        self.flush(&mut state, flush).await?;
        Ok(Opened {
            state,
            timers,
            applied,
        })
    }

    async fn process(
        &self,
        state: &mut Partition,
        input: Envelope<Command>,
        effects: &mut Effects,
    ) -> Result<(), ProcessError> {
        // An order's commands and events share a partition number only when every producer
        // partitions by murmur2, as the gateway and Kafka's Java client do. A command on
        // another partition would be decided against another owner's view of its order.
        let belongs = kafka::partition_for(
            input.value.metadata().aggregate_id.as_bytes(),
            state.partitions,
        );
        if belongs != input.position.partition {
            return Err(ProcessError::poison(format!(
                "the command for order {:?} arrived on partition {} of {}, but its key belongs \
                 to partition {belongs} (murmur2 of the key, as the gateway and Kafka's Java \
                 client partition; with librdkafka set partitioner=murmur2_random)",
                input.value.metadata().aggregate_id,
                input.position.partition,
                input.position.topic
            )));
        }
        let command = input.value;
        let meta = command.metadata();
        let id = meta.aggregate_id.clone();
        let command_id = meta.command_id.clone();
        // A command is decided at the time of its record in the commands topic, not at the
        // wall clock's now: a command decided again after a crash (its outcome published, not
        // yet journaled) gets the same outcome, decision time included, so its outcome is one
        // fact wherever it is read.
        let now = input
            .position
            .timestamp_ms
            .filter(|t| *t > 0)
            .unwrap_or_else(|| effects.now_ms());
        let offset = input.position.offset;
        if let Some(previous) = state.decided.get(&command_id) {
            let mut again = previous.clone();
            again.duplicate = true;
            effects.emit(self.outcome_output(again));
            return Ok(());
        }
        {
            let conn = state
                .conn
                .lock()
                .map_err(|_| ProcessError::fatal("journal connection poisoned"))?;
            if let Some(stored) = Journal::outcome(&conn, &command_id)? {
                let mut again: CommandOutcome =
                    serde_json::from_str(&stored.outcome).map_err(|e| {
                        ProcessError::fatal_from(
                            format!("outcome of {command_id} does not parse"),
                            e,
                        )
                    })?;
                // The very record that caused an adopted event, delivered again after its
                // owner was killed, is no duplicate: that owner may have died before its
                // outcome was sent, so this is the original outcome, reported once more. (The
                // offset is of this order's partition only when the order is this record's.)
                again.duplicate = !(again.accepted
                    && stored.aggregate_id == id
                    && Journal::caused_at(&conn, &id, &command_id)? == Some(offset));
                drop(conn);
                effects.emit(self.outcome_output(again));
                return Ok(());
            }
            if !state.orders.contains_key(&id)
                && let Some(order) = Self::load(&conn, &id)?
            {
                state.orders.insert(id.clone(), order);
            }
        }
        // A record met undecided at or below `caused_until` is being replayed after a crash:
        // it was decided before, against the order as it was then, which may be older than
        // what later commands' published (and adopted) events made it.
        let then = if state.caused_until.is_some_and(|c| offset <= c) {
            let conn = state
                .conn
                .lock()
                .map_err(|_| ProcessError::fatal("journal connection poisoned"))?;
            let events = Journal::load_before(&conn, &id, offset)?
                .iter()
                .map(|json| serde_json::from_str::<Event>(json))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    ProcessError::fatal_from(format!("a journaled event of {id} does not parse"), e)
                })?;
            let then = replay(None, &events);
            let now_version = state.orders.get(&id).map_or(0, |o| o.version);
            (then.as_ref().map_or(0, |o| o.version) != now_version).then_some(then)
        } else {
            None
        };
        let decided = match &then {
            Some(then) => handle(then.as_ref(), &command, now),
            None => handle(state.orders.get(&id), &command, now),
        };
        // An accepted command whose event the events topic could not take is refused here,
        // on replay too (it was refused the first time for the same reason).
        let max = state.max_event_bytes;
        let decided = decided.and_then(|event| self.fits(&event, max).map(|json| (event, json)));
        match decided {
            Ok((event, _)) if then.is_some() => {
                // Accepted then, its event would have been published before the later ones.
                return Err(ProcessError::fatal(format!(
                    "{command_id} at offset {offset} is accepted on replay but published no \
                     event ({} is at version {})",
                    id,
                    event.version() - 1
                )));
            }
            Ok((event, json)) => {
                let outcome = self.record(state, &event, json, command.kind(), now, Some(offset));
                state.published = true;
                let mut output = codec::publish(&self.events, &event);
                output
                    .headers
                    .push(COMMAND_OFFSET, Bytes::from(offset.to_string()));
                effects.emit(output);
                effects.emit(self.outcome_output(outcome));
            }
            Err(rejection) => {
                let outcome = CommandOutcome {
                    command_id,
                    correlation_id: meta.correlation_id.clone(),
                    aggregate_id: id.clone(),
                    command: command.kind().to_string(),
                    accepted: false,
                    version: match &then {
                        Some(then) => then.as_ref().map_or(0, |o| o.version),
                        None => state.orders.get(&id).map_or(0, |o| o.version),
                    },
                    reason_code: Some(rejection.code.to_string()),
                    reason: Some(rejection.reason),
                    duplicate: false,
                    decided_at: now,
                };
                self.stage_outcome(state, &outcome);
                effects.emit(self.outcome_output(outcome));
            }
        }
        Ok(())
    }

    async fn flush(&self, state: &mut Partition, flush: Flush<'_>) -> Result<(), ProcessError> {
        if state.published {
            // Every event published so far is acknowledged (the runtime waits for that before
            // a flush), and only this partition's owner writes to this events partition: its
            // end now is where the next read-back starts.
            let reader = self.watermarks.clone();
            let (topic, number) = (self.events.clone(), flush.partition.partition);
            let end = blocking(move || reader.end(&topic, number)).await?;
            state.staged.publications.push(Publication {
                topic: self.events.to_string(),
                partition: number,
                next_offset: end,
                caused_until: state.caused_until,
            });
        }
        let conn = state.conn.clone();
        let rows = std::mem::take(&mut state.staged);
        let partition = flush.partition.clone();
        let epoch = state.epoch;
        let timers = flush.timers.to_vec();
        let up_to = flush.up_to;
        let hold = if rows.events.is_empty() {
            std::time::Duration::ZERO
        } else {
            self.hold_commit_open
        };
        let (rows, written) = blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| ProcessError::fatal("journal connection poisoned"))?;
            let written = group_commit(&mut conn, &partition, epoch, &rows, &timers, up_to, hold);
            Ok((rows, written))
        })
        .await?;
        match written {
            Ok(()) => {
                state.decided.clear();
                state.published = false;
                if state.orders.len() > self.cached_orders {
                    state.orders.clear();
                }
                Ok(())
            }
            Err(e) => {
                // Nothing was written: keep the rows for the retry.
                state.staged = rows;
                Err(e)
            }
        }
    }
}

/// One transaction: the epoch check, the journal rows, the timers and the applied offset.
fn group_commit(
    conn: &mut Connection,
    partition: &PartitionId,
    epoch: i64,
    rows: &JournalRows,
    timers: &[eip_runtime::TimerChange],
    up_to: Option<i64>,
    hold: std::time::Duration,
) -> Result<(), ProcessError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| classify("group commit", e))?;
    check_epoch(&tx, partition, epoch)?;
    Journal::write(&tx, rows)?;
    write_ledger(&tx, partition, timers, up_to)?;
    if !hold.is_zero() {
        tracing::info!(topic = %partition.topic, partition = partition.partition, "group commit holding its transaction open (fault injection)");
        std::thread::sleep(hold);
    }
    tx.commit().map_err(|e| classify("group commit", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_refused_with_the_key_named() {
        let ok = OrdersConfig::default();
        assert!(ok.validate().is_ok());
        for (bad, key) in [
            (
                OrdersConfig {
                    snapshot_every: 0,
                    ..ok.clone()
                },
                "snapshot_every",
            ),
            (
                OrdersConfig {
                    cached_orders: 0,
                    ..ok.clone()
                },
                "cached_orders",
            ),
            (
                OrdersConfig {
                    outcomes_topic: ok.events_topic.clone(),
                    ..ok.clone()
                },
                "outcomes_topic",
            ),
            (
                OrdersConfig {
                    events_topic: " ".into(),
                    ..ok.clone()
                },
                "events_topic",
            ),
        ] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::<OrdersConfig>::default();
        config.processor.db = dir.path().join("o.db");
        config.pipeline.inputs = vec!["a".into(), "b".into()];
        let e = Orders::new(&config).unwrap_err().to_string();
        assert!(e.contains("pipeline.inputs"), "{e}");
    }

    #[test]
    fn a_snapshot_of_another_schema_version_is_ignored_and_the_events_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = connect(&dir.path().join("o.db")).unwrap();
        conn.execute_batch(&format!("{LEDGER_DDL}{JOURNAL_DDL}"))
            .unwrap();
        let sample = eip_schemas::types::samples::order_placed(3);
        let placed = Event::Placed(sample.clone());
        let id = sample.metadata.aggregate_id.clone();
        let tx = conn.transaction().unwrap();
        let rows = JournalRows {
            events: vec![JournalEvent {
                aggregate_id: id.clone(),
                version: 1,
                command_id: None,
                source_offset: Some(0),
                event: serde_json::to_string(&placed).unwrap(),
            }],
            // Written by an older build, in a shape this one can't read.
            snapshots: vec![(
                id.clone(),
                Snapshot {
                    version: 1,
                    schema_version: SNAPSHOT_SCHEMA - 1,
                    state: "{\"order\":\"old shape\"}".into(),
                },
            )],
            ..JournalRows::default()
        };
        Journal::write(&tx, &rows).unwrap();
        tx.commit().unwrap();
        let order = Orders::load(&conn, &id).unwrap().unwrap();
        assert_eq!(order, apply(None, &placed));
    }
}
