//! Zero-downtime rebuild of one view: a new version of its tables is filled from offset 0 of
//! the events and outcomes topics while the live version keeps serving, then readers switch to
//! it in one transaction.
//!
//! 1. **Begin.** The view's tables are created at the live version + 1, which is recorded as
//!    `building`. A second rebuild of the same view is refused until this one ends.
//! 2. **Fill.** The topics are read from their first offset by a consumer outside any group.
//!    Every order is folded in memory ([`Projection::in_memory`]: the store is never read),
//!    and every 5,000 records the rows of this view's tables are written to the new version
//!    in one transaction. Records the live projector dead-letters (undecodable, a version gap)
//!    are skipped and counted.
//! 3. **Switch.** Once the rebuild has read every partition to its end, it switches in one
//!    `BEGIN IMMEDIATE` transaction, and only if it has read past everything the live
//!    projector has committed (the ledger's applied offsets): `live` becomes the new version
//!    and the plain-name SQL views point at it. Otherwise it reads on and tries again. The
//!    live projector reads the versions in each group commit and writes to the new version
//!    from its next one; its rows are newest-wins, so what both wrote agrees.
//! 4. **Cancel** (Ctrl-C, or [`cancel_rebuild`](eip_store::view_rebuild::cancel_rebuild) after
//!    a kill): the new tables are dropped; the live version was never touched.
//!
//! The old version is kept until `eipctl projection drop` is asked to drop it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use eip_runtime::config::KafkaConfig;
use eip_runtime::topics;
use eip_schemas::{Classify, Codec, ErrorClass};
use eip_store::sqlite::connect;
use eip_store::view_rebuild::{self, RebuildError};
use eip_store::view_sqlite;
use eip_store::views::{View, view_of};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::{Input, Projection, decode};

/// Records per write transaction.
const BATCH: u64 = 5_000;

/// What to rebuild, from where.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The views file.
    pub db: PathBuf,
    /// The view.
    pub view: &'static View,
    /// The topics the projector reads: events and outcomes.
    pub topics: Vec<String>,
    /// Kafka client settings (brokers); the consumer joins no group.
    pub kafka: KafkaConfig,
    /// True when the operator accepts that the topics can't be replayed whole (finite
    /// retention, deleted records). Without it the rebuild refuses to start then. Either way
    /// it never switches past a version gap.
    pub accept_truncated_history: bool,
    /// Fault injection only: wait this long after claiming the new version, before reading,
    /// so a test can stop the rebuild at that point.
    pub hold_after_begin: Duration,
    /// The codec.
    pub codec: Codec,
}

/// Where a rebuild stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Records read.
    pub done: u64,
    /// Records to read before the first switch attempt (grows while the topics grow).
    pub total: u64,
    /// Records per second so far.
    pub rate: f64,
    /// The version being built.
    pub version: i64,
}

/// How a rebuild ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Readers now use `to`; `from` is kept until dropped.
    Switched {
        /// The version readers used before.
        from: i64,
        /// The version readers use now.
        to: i64,
        /// Records read.
        records: u64,
        /// Records skipped because the live projector dead-letters them too.
        skipped: u64,
    },
    /// Cancelled: the new version's tables are gone; readers kept `live` throughout.
    Cancelled {
        /// The version that keeps serving.
        live: i64,
    },
}

/// A failed rebuild (its new tables are dropped before this is returned).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A store step was refused or failed.
    #[error(transparent)]
    Store(#[from] RebuildError),
    /// Kafka failed.
    #[error("reading the topics: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The store's blocking task failed.
    #[error("the store task failed: {0}")]
    Task(String),
    /// A record could not be read for a reason other than poison (the registry stayed
    /// unreachable, say): the rebuild stops rather than skip it.
    #[error("a record could not be rebuilt: {0}")]
    Record(String),
    /// The topics can't be replayed whole from offset 0.
    #[error("{0}")]
    History(String),
    /// Orders whose history has a gap: switching would lose them from the view.
    #[error(
        "not switching: {} order(s) have versions missing from the topics, so the new version \
         would lose or misstate them: {}{}",
        .count, .sample.join("; "), if *.count > .sample.len() { "; …" } else { "" }
    )]
    Gaps {
        /// How many orders.
        count: usize,
        /// The first of them, with the versions missing.
        sample: Vec<String>,
    },
}

type Positions = HashMap<(String, i32), i64>;

/// Each partition's (low, high) watermarks.
type Marks = HashMap<(String, i32), (i64, i64)>;

/// Each partition's (low, high) watermarks: the first offset held and the next to be written.
fn targets(consumer: &StreamConsumer, topics: &[String]) -> Result<Marks, Error> {
    let mut out = HashMap::new();
    for topic in topics {
        let meta = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        for t in meta.topics() {
            for p in t.partitions() {
                let marks = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
                out.insert((topic.clone(), p.id()), marks);
            }
        }
    }
    Ok(out)
}

/// Raises `next` to the consumer's positions: past a transaction marker or records the broker
/// skipped, which no message reports.
fn advance_to_positions(consumer: &StreamConsumer, next: &mut Positions) -> Result<(), Error> {
    for e in consumer.position()?.elements() {
        if let Offset::Offset(o) = e.offset()
            && let Some(n) = next.get_mut(&(e.topic().to_string(), e.partition()))
        {
            *n = (*n).max(o);
        }
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RebuildError> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task(e.to_string()))?
        .map_err(Error::from)
}

/// Rebuilds `plan.view`, calling `progress` about every 200 ms, until it switches or `cancel`
/// fires.
pub async fn rebuild(
    plan: Plan,
    cancel: CancellationToken,
    mut progress: impl FnMut(&Progress),
) -> Result<Outcome, Error> {
    let view = plan.view;
    if !plan.accept_truncated_history {
        let problems = topics::history_problems(&plan.kafka, &plan.topics, Duration::from_secs(10))
            .await
            .map_err(|e| Error::History(format!("checking the topics: {e}")))?;
        if !problems.is_empty() {
            return Err(Error::History(topics::refusal(
                &problems,
                "--accept-truncated-history (the rebuild still never switches past a gap)",
            )));
        }
    }
    let db = plan.db.clone();
    let (token, live) = blocking(move || {
        let mut conn = connect(&db)?;
        view_sqlite::migrate(&conn)?;
        let live = view_sqlite::versions(&conn)?.live_of(view.tables[0]);
        Ok((view_rebuild::begin_rebuild(&mut conn, view)?, live))
    })
    .await?;
    if !plan.hold_after_begin.is_zero() {
        tracing::info!(
            view = view.name,
            version = token.version,
            generation = token.generation,
            "rebuild holding after its begin (fault injection)"
        );
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(plan.hold_after_begin) => {}
        }
    }
    let result = fill_and_switch(&plan, token, live, &cancel, &mut progress).await;
    if !matches!(result, Ok(Outcome::Switched { .. })) {
        // Only this rebuild's own tables: a successor that replaced it is left alone.
        let db = plan.db.clone();
        blocking(move || {
            let mut conn = connect(&db)?;
            view_rebuild::cancel_rebuild(&mut conn, view, Some(token))?;
            Ok(())
        })
        .await?;
    }
    result
}

async fn fill_and_switch(
    plan: &Plan,
    token: view_rebuild::Token,
    live: i64,
    cancel: &CancellationToken,
    progress: &mut impl FnMut(&Progress),
) -> Result<Outcome, Error> {
    let version = token.version;
    let mut client = eip_runtime::kafka::base_config(&plan.kafka);
    client
        .set("group.id", "eipctl-rebuild")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest");
    let consumer: StreamConsumer = client.create()?;
    let mut want = targets(&consumer, &plan.topics)?;
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in want.keys() {
        tpl.add_partition_offset(topic, *partition, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    // Where each partition stands: from its first offset still held (never plain 0, which a
    // partition emptied by retention never reaches again).
    let mut next: Positions = want.iter().map(|(k, (low, _))| (k.clone(), *low)).collect();
    let mut conn = connect(&plan.db).map_err(RebuildError::from)?;
    let mut projection = Projection::in_memory();
    let (mut records, mut skipped, mut staged) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    let mut shown = Instant::now();
    let total = |want: &Marks| {
        want.values()
            .map(|(low, high)| (high - low) as u64)
            .sum::<u64>()
    };
    let at_end = |want: &Marks, next: &Positions| {
        want.iter()
            .all(|(k, (_, end))| next.get(k).copied().unwrap_or(0) >= *end)
    };
    loop {
        if at_end(&want, &next) {
            write(&mut conn, &mut projection, plan.view, token)?;
            staged = 0;
            let gaps = projection.gaps();
            if !gaps.is_empty() {
                return Err(Error::Gaps {
                    count: gaps.len(),
                    sample: gaps.into_iter().take(20).collect(),
                });
            }
            let read = next.clone();
            let switched =
                view_rebuild::switch(&mut conn, plan.view, token, &plan.topics, |applied| {
                    applied
                        .iter()
                        .all(|(k, a)| read.get(k).copied().unwrap_or(0) > *a)
                })?;
            if switched {
                progress(&Progress {
                    done: records,
                    total: records,
                    rate: records as f64 / started.elapsed().as_secs_f64().max(1e-9),
                    version,
                });
                return Ok(Outcome::Switched {
                    from: live,
                    to: version,
                    records,
                    skipped,
                });
            }
            // The live projector is ahead of what the topics held when we looked: read on,
            // from partitions added since too.
            want = targets(&consumer, &plan.topics)?;
            let mut added = TopicPartitionList::new();
            for ((topic, partition), (low, _)) in &want {
                if let std::collections::hash_map::Entry::Vacant(v) =
                    next.entry((topic.clone(), *partition))
                {
                    added.add_partition_offset(topic, *partition, Offset::Beginning)?;
                    v.insert(*low);
                }
            }
            if added.count() > 0 {
                consumer.incremental_assign(&added)?;
            }
            if at_end(&want, &next) {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(Outcome::Cancelled { live }),
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                continue;
            }
        }
        let message = tokio::select! {
            _ = cancel.cancelled() => return Ok(Outcome::Cancelled { live }),
            m = tokio::time::timeout(Duration::from_millis(200), consumer.recv()) => m,
        };
        let Ok(message) = message else {
            // Nothing came for a while: a partition may end in a transaction marker or in
            // records the broker no longer serves, which no message reports. Its position does.
            advance_to_positions(&consumer, &mut next)?;
            continue;
        };
        {
            let m = message?;
            next.insert((m.topic().to_string(), m.partition()), m.offset() + 1);
            records += 1;
            staged += 1;
            let read = decode_retrying(&plan.codec, m.payload(), cancel).await?;
            let applied = match read {
                Read::Input(input) => match *input {
                    Input::Event(e) => projection.event_known(&e),
                    Input::Outcome(o) => projection.outcome(&o),
                    Input::Levels(l) => projection.levels(&l),
                },
                Read::Poison => {
                    skipped += 1;
                    Ok(())
                }
                Read::Cancelled => return Ok(Outcome::Cancelled { live }),
            };
            match applied {
                Ok(()) => {}
                // Poison (undecodable, a version gap): the live projector dead-letters it too.
                Err(e) if e.class() == ErrorClass::Poison => skipped += 1,
                Err(e) => return Err(Error::Record(e.to_string())),
            }
            if staged >= BATCH {
                write(&mut conn, &mut projection, plan.view, token)?;
                staged = 0;
            }
        }
        if shown.elapsed() >= Duration::from_millis(200) {
            shown = Instant::now();
            progress(&Progress {
                done: records,
                total: total(&want).max(records),
                rate: records as f64 / started.elapsed().as_secs_f64().max(1e-9),
                version,
            });
        }
    }
}

/// A record as the rebuild reads it.
enum Read {
    /// Decoded.
    Input(Box<Input>),
    /// Poison: the live projector dead-letters it too.
    Poison,
    /// Cancelled while waiting for the registry.
    Cancelled,
}

/// Decodes a record; a transient failure (the registry unreachable) is retried for up to a
/// minute, never counted as skipped.
async fn decode_retrying(
    codec: &Codec,
    payload: Option<&[u8]>,
    cancel: &CancellationToken,
) -> Result<Read, Error> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match decode(codec, payload).await {
            Ok(input) => return Ok(Read::Input(Box::new(input))),
            Err(e) if e.class() == ErrorClass::Transient && Instant::now() < deadline => {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(Read::Cancelled),
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
            Err(e) if e.class() == ErrorClass::Poison => return Ok(Read::Poison),
            Err(e) => return Err(Error::Record(e.to_string())),
        }
    }
}

/// Writes the rows of `view`'s tables that changed since the last write, at `version`.
fn write(
    conn: &mut rusqlite::Connection,
    projection: &mut Projection,
    view: &View,
    token: view_rebuild::Token,
) -> Result<(), Error> {
    let version = token.version;
    let writes = projection.writes();
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(RebuildError::from)?;
    view_rebuild::still_building(&tx, view, token)?;
    for w in writes
        .iter()
        .filter(|w| view_of(w.table()).name == view.name)
    {
        view_sqlite::execute_at(&tx, w.table(), version, w).map_err(RebuildError::from)?;
    }
    tx.commit().map_err(RebuildError::from)?;
    projection.committed(usize::MAX);
    Ok(())
}
