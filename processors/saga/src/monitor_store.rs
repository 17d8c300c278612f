//! The monitor's store: the saga views of `eip_store::saga_views`, in one of two places.
//!
//! - **SQLite** (`store = "sqlite"`, the default): version 1 tables with plain-name views for
//!   readers, beside eip-store's partition ledger. A group commit writes the staged view
//!   writes, the partition's totals, the timer changes and the applied offset in one
//!   transaction, and only while the partition's epoch is still its own.
//! - **CQL** (`store = "cql"`): the same tables in a keyspace, so a monitor partition can move
//!   to any machine. There is no transaction: a group commit writes every row (each newest
//!   wins by the saga's version), then the partition's totals with the offset of the last
//!   observation they count (`through`). A new owner starts after `through`, reads each saga
//!   as of it (events folded later are left out, and folded again), and restores its timers
//!   from the deadline rows. A former owner's late write can only lose to a newer version.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use eip_runtime::{Flush, Opened, PartitionId, ProcessError, Timer};
use eip_schemas::types::SagaObservation;
use eip_store::saga_store::{LazyCql, SagaStore};
use eip_store::saga_views::{self, SAGA_EVENTS, SAGA_STATS, SagaEventView, SagaStats, stats_row};
use eip_store::sqlite::{
    Claim, LEDGER_DDL, blocking, check_epoch, claim_partition, classify, connect,
};
use eip_store::view_any::StoreKind;
use eip_store::view_scylla::ScyllaSettings;
use eip_store::view_sqlite::execute_at;
use eip_store::view_store::ViewStore;
use eip_store::views::Write;

use crate::config::MonitorConfig;
use crate::fold::Saga;

/// Where one partition writes.
#[derive(Debug)]
enum Backend {
    /// Its SQLite connection and the epoch it claimed.
    Sqlite {
        conn: Arc<Mutex<rusqlite::Connection>>,
        epoch: i64,
    },
    /// The CQL keyspace.
    Cql(Arc<LazyCql>),
}

/// One partition's handle: where it writes, the writes staged since the last group commit,
/// and (on an observations partition) its running totals.
#[derive(Debug)]
pub struct Partition {
    backend: Backend,
    partition: PartitionId,
    /// View writes staged since the last group commit, in order.
    pub staged: Vec<Write>,
    /// Sagas folded since the last group commit (their rows are staged, not yet stored).
    pub sagas: HashMap<String, Saga>,
    /// This partition's totals, with every observation folded so far.
    pub stats: SagaStats,
    /// Whether this is a partition of the observations topic (the only ones that fold).
    observations: bool,
    /// The observation offset the stored totals count through: the partition's applied
    /// offset, written with it.
    through: Option<i64>,
    /// Sagas whose passed deadline waits for the backlog: the deadline and since when it is
    /// held (in memory: a new owner derives them again).
    pub held: HashMap<String, (i64, i64)>,
}

impl Partition {
    /// The partition.
    pub fn partition(&self) -> &PartitionId {
        &self.partition
    }

    fn new(backend: Backend, partition: &PartitionId, observations: bool) -> Partition {
        Partition {
            backend,
            partition: partition.clone(),
            staged: Vec::new(),
            sagas: HashMap::new(),
            stats: SagaStats::default(),
            observations,
            through: None,
            held: HashMap::new(),
        }
    }
}

/// Where the store is.
#[derive(Debug, Clone)]
enum StoreAt {
    Sqlite(Arc<Path>),
    Cql(Arc<LazyCql>),
}

/// The monitor's store: a file or a keyspace.
#[derive(Debug, Clone)]
pub struct Store {
    at: StoreAt,
    /// The monitor's group, to tell a new store from a lost one (None: not checked).
    group: Option<Arc<eip_runtime::config::KafkaConfig>>,
    saga: Arc<str>,
    observations: Arc<str>,
}

impl Store {
    /// The store `config` names, for the saga definition `saga`: a SQLite file is opened
    /// (created with its tables); a CQL keyspace is connected when the first partition opens.
    pub fn open(config: &MonitorConfig, saga: &str) -> Result<Store, String> {
        let at = match config.store {
            StoreKind::Sqlite => {
                let conn = connect(&config.db).map_err(|e| e.to_string())?;
                saga_views::migrate(&conn).map_err(|e| e.to_string())?;
                conn.execute_batch(LEDGER_DDL).map_err(|e| e.to_string())?;
                StoreAt::Sqlite(Arc::from(config.db.as_path()))
            }
            StoreKind::Cql => {
                let settings = ScyllaSettings {
                    nodes: config.cql_nodes.clone(),
                    keyspace: config.keyspace.clone(),
                    max_in_flight: config.cql_max_in_flight,
                    ..ScyllaSettings::new(Vec::new())
                };
                StoreAt::Cql(Arc::new(LazyCql::new(settings)))
            }
        };
        Ok(Store {
            at,
            group: None,
            saga: Arc::from(saga),
            observations: Arc::from(config.observations_topic.as_str()),
        })
    }

    /// The same store, refusing to start an observations partition it holds nothing of while
    /// the monitor's group (`kafka.group_id`) has read past its start: the sagas before that
    /// point would be missing for good.
    pub fn with_group(self, kafka: eip_runtime::config::KafkaConfig) -> Store {
        Store {
            group: Some(Arc::new(kafka)),
            ..self
        }
    }

    /// Fails when the group has read partition `partition` of the observations topic past
    /// what this store holds of it (`held`: the last offset it applied, None for nothing):
    /// a store that is new, or restored from an older copy (see [`Store::with_group`]).
    /// A healthy store is never behind: the group commits an offset only after the store
    /// holds it.
    async fn check_not_lost(
        &self,
        partition: &PartitionId,
        held: Option<i64>,
    ) -> Result<(), ProcessError> {
        let Some(kafka) = self.group.clone() else {
            return Ok(());
        };
        let (topic, p) = (partition.topic.to_string(), partition.partition);
        let read = blocking(move || {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            let wait = std::time::Duration::from_secs(10);
            let transient = |e: rdkafka::error::KafkaError| ProcessError::Transient {
                reason: "reading the monitor group's committed offsets".into(),
                source: Some(Arc::new(e)),
            };
            let mut c = eip_runtime::kafka::base_config(&kafka);
            c.set("group.id", &kafka.group_id)
                .set("enable.auto.commit", "false");
            let consumer: BaseConsumer = c.create().map_err(transient)?;
            let mut tpl = rdkafka::TopicPartitionList::new();
            tpl.add_partition(&topic, p);
            let committed = consumer.committed_offsets(tpl, wait).map_err(transient)?;
            let (low, _) = consumer
                .fetch_watermarks(&topic, p, wait)
                .map_err(transient)?;
            let from = held.map_or(low, |h| low.max(h.saturating_add(1)));
            Ok(committed
                .elements()
                .first()
                .and_then(|e| match e.offset() {
                    rdkafka::Offset::Offset(n) if n > from => Some(n),
                    _ => None,
                })
                .map(|n| (kafka.clone(), n)))
        })
        .await?;
        match read {
            None => Ok(()),
            Some((kafka, n)) => {
                let at = match &self.at {
                    StoreAt::Sqlite(path) => format!("the file {}", path.display()),
                    StoreAt::Cql(_) => "the CQL keyspace".to_string(),
                };
                let holds = match held {
                    None => format!(
                        "holds nothing of {}[{}]",
                        partition.topic, partition.partition
                    ),
                    Some(h) => format!(
                        "holds {}[{}] only up to offset {h}",
                        partition.topic, partition.partition
                    ),
                };
                // A new group starts at the topics' start only with auto_offset_reset =
                // earliest.
                let new_group = match kafka.auto_offset_reset {
                    eip_runtime::config::OffsetReset::Earliest => {
                        "start this store with a new kafka.group_id (it reads every topic from \
                         its start), or "
                    }
                    eip_runtime::config::OffsetReset::Latest => "",
                };
                Err(ProcessError::fatal(format!(
                    "the saga store ({at}) {holds}, but group {:?} has read it up to offset \
                     {n}: the sagas in between would be missing; {new_group}reset the group's \
                     offsets on {} to the earliest",
                    kafka.group_id, partition.topic
                )))
            }
        }
    }

    /// What readers (the API, the dashboard, reports) read.
    pub fn reads(&self) -> SagaStore {
        match &self.at {
            StoreAt::Cql(cql) => SagaStore::Cql(cql.clone()),
            StoreAt::Sqlite(path) => SagaStore::sqlite(path.to_path_buf()),
        }
    }

    /// Opens `partition`: on SQLite claims it (raising its epoch); on CQL restores its timers
    /// from the deadline rows. An observations partition also reads its totals.
    pub async fn claim(&self, partition: &PartitionId) -> Result<Opened<Partition>, ProcessError> {
        let observations = *partition.topic == *self.observations;
        let p = i64::from(partition.partition);
        let path = match &self.at {
            StoreAt::Sqlite(path) => path.clone(),
            StoreAt::Cql(cql) => return self.claim_cql(cql, partition, observations).await,
        };
        let (
            conn,
            Claim {
                epoch,
                applied,
                timers,
            },
        ) = claim_partition(&path, partition).await?;
        if observations {
            self.check_not_lost(partition, applied).await?;
        }
        let conn = Arc::new(Mutex::new(conn));
        let mut state = Partition::new(
            Backend::Sqlite {
                conn: conn.clone(),
                epoch,
            },
            partition,
            observations,
        );
        if observations {
            let saga = self.saga.clone();
            let part = partition.clone();
            let (stats, through) = blocking(move || {
                let mut conn = conn
                    .lock()
                    .map_err(|_| ProcessError::fatal("store connection poisoned"))?;
                let table = SAGA_STATS.physical(1);
                let stored = saga_views::partition_stats(&conn, &table, &saga, p)
                    .map_err(|e| classify("reading the saga totals", e))?;
                let through = applied.unwrap_or(-1);
                match stored {
                    Some((stats, at)) if at == through => Ok((stats, through)),
                    // None (a file from before the totals were kept), or behind the ledger
                    // (an older monitor folded after them): count them from the sagas once,
                    // and keep them with the applied offset.
                    _ => {
                        let what = "counting the saga totals";
                        let tx = conn
                            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                            .map_err(|e| classify(what, e))?;
                        check_epoch(&tx, &part, epoch)?;
                        let stats =
                            saga_views::count_partition(&tx, p).map_err(|e| classify(what, e))?;
                        tx.execute(
                            &format!(
                                "INSERT OR REPLACE INTO {table} \
                                 (saga, monitor_partition, stats, through, version) \
                                 VALUES (?1, ?2, ?3, ?4, ?5)"
                            ),
                            rusqlite::params![
                                saga.as_ref(),
                                p,
                                stats.to_json(),
                                through,
                                through.saturating_add(1)
                            ],
                        )
                        .map_err(|e| classify(what, e))?;
                        tx.commit().map_err(|e| classify(what, e))?;
                        Ok((stats, through))
                    }
                }
            })
            .await?;
            state.stats = stats;
            state.through = Some(through);
        }
        Ok(Opened {
            state,
            timers,
            applied,
        })
    }

    async fn claim_cql(
        &self,
        cql: &Arc<LazyCql>,
        partition: &PartitionId,
        observations: bool,
    ) -> Result<Opened<Partition>, ProcessError> {
        let p = i64::from(partition.partition);
        let views = cql.get().await.map_err(ProcessError::from)?;
        let mut state = Partition::new(Backend::Cql(cql.clone()), partition, observations);
        if !observations {
            return Ok(Opened::fresh(state));
        }
        let deadlines = views.saga_deadlines(p).await.map_err(ProcessError::from)?;
        match views
            .saga_partition_stats(&self.saga, p)
            .await
            .map_err(ProcessError::from)?
        {
            Some((stats, through)) => {
                self.check_not_lost(partition, Some(through)).await?;
                state.stats = stats;
                state.through = Some(through);
            }
            None => {
                // Rows of this partition kept under another definition's name (a renamed
                // definition, or another sharing the keyspace), or deadlines with no totals at
                // all: refolding into them would start the totals at zero and read every saga
                // as empty.
                let others = views
                    .saga_names_with_totals(p)
                    .await
                    .map_err(ProcessError::from)?;
                if !others.is_empty() || !deadlines.is_empty() {
                    return Err(ProcessError::fatal(format!(
                        "keyspace holds monitor partition {p} of saga definition(s) {others:?} \
                         ({} deadline(s)) but no totals of {:?}: one keyspace serves one saga \
                         definition (a renamed definition needs a new keyspace)",
                        deadlines.len(),
                        self.saga
                    )));
                }
                self.check_not_lost(partition, None).await?;
                // A new partition: its totals row goes first, so a first commit that stops
                // half-way is read as of it (nothing) and folded again.
                let first = stats_row(&self.saga, p, &SagaStats::default(), -1);
                views
                    .apply(&[Write::Upsert {
                        row: first,
                        stamp: 0,
                    }])
                    .await
                    .map_err(ProcessError::from)?;
                state.through = Some(-1);
            }
        }
        let timers = deadlines
            .into_iter()
            .map(|(id, at_ms)| Timer {
                key: bytes::Bytes::from(id),
                at_ms,
            })
            .collect();
        let applied = state.through;
        Ok(Opened {
            state,
            timers,
            applied,
        })
    }

    /// The events of saga `id` as stored: on CQL, as of the offset the stored totals count
    /// through (see the module docs).
    pub async fn load(&self, state: &Partition, id: &str) -> Result<Saga, ProcessError> {
        let events = match &state.backend {
            Backend::Cql(cql) => cql
                .get()
                .await
                .map_err(ProcessError::from)?
                .saga_events(id, Some(state.through.unwrap_or(-1)))
                .await
                .map_err(ProcessError::from)?,
            Backend::Sqlite { conn, .. } => {
                let conn = conn.clone();
                let id = id.to_string();
                let table = SAGA_EVENTS.physical(1);
                blocking(move || {
                    let conn = conn
                        .lock()
                        .map_err(|_| ProcessError::fatal("store connection poisoned"))?;
                    saga_views::read_events(&conn, &table, &id, None)
                        .map_err(|e| classify("loading a saga", e))
                })
                .await?
            }
        };
        let mut saga = Saga::default();
        for e in events {
            saga.observe(observation(e));
        }
        Ok(saga)
    }

    /// The group commit (see the module docs). On success the staged writes are cleared.
    pub async fn commit(
        &self,
        state: &mut Partition,
        flush: &Flush<'_>,
    ) -> Result<(), ProcessError> {
        let mut writes = state.staged.clone();
        // An observations partition's totals go with the offset the commit covers.
        let through = flush.up_to.filter(|_| state.observations);
        if let Some(through) = through {
            let p = i64::from(state.partition.partition);
            writes.push(Write::Upsert {
                row: stats_row(&self.saga, p, &state.stats, through),
                stamp: through.saturating_add(1),
            });
        }
        let result = match &state.backend {
            Backend::Cql(cql) => {
                // Every row, then the totals (ScyllaViews::apply writes them last); the
                // timers are the deadline rows.
                let views = cql.get().await.map_err(ProcessError::from)?;
                views.apply(&writes).await.map_err(ProcessError::from)
            }
            Backend::Sqlite { conn, epoch } => {
                eip_store::sqlite::group_commit(
                    conn.clone(),
                    flush.partition,
                    *epoch,
                    flush.timers,
                    flush.up_to,
                    move |tx| {
                        for w in &writes {
                            execute_at(tx, w.table(), 1, w)
                                .map_err(|e| classify("writing a saga row", e))?;
                        }
                        Ok(())
                    },
                )
                .await
            }
        };
        if result.is_ok() {
            state.staged.clear();
            state.sagas.clear();
            if through.is_some() {
                state.through = through;
            }
        }
        result
    }
}

/// A stored event as the fold sees it.
pub fn observation(e: SagaEventView) -> SagaObservation {
    SagaObservation {
        saga_id: e.saga_id,
        event_type: e.event_type,
        event_id: e.event_id,
        correlation_id: e.correlation_id,
        causation_id: e.causation_id,
        occurred_at: e.occurred_at,
        topic: e.topic,
        partition: i32::try_from(e.partition).unwrap_or(-1),
        offset: e.offset,
        reason: e.reason,
        reason_code: e.reason_code,
        step: e.step,
        actor: e.actor,
    }
}

/// An observed event as the views store it, folded by the observation at `folded_at`.
pub fn event_view(o: &SagaObservation, folded_at: Option<i64>) -> SagaEventView {
    SagaEventView {
        saga_id: o.saga_id.clone(),
        occurred_at: o.occurred_at,
        event_id: o.event_id.clone(),
        event_type: o.event_type.clone(),
        correlation_id: o.correlation_id.clone(),
        causation_id: o.causation_id.clone(),
        topic: o.topic.clone(),
        partition: i64::from(o.partition),
        offset: o.offset,
        reason: o.reason.clone(),
        reason_code: o.reason_code.clone(),
        step: o.step.clone(),
        actor: o.actor.clone(),
        folded_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eip_store::saga_views::{SagaView, saga_rows};
    use eip_store::views::diff;

    fn view(id: &str, status: &str, failed: Option<&str>) -> SagaView {
        SagaView {
            saga_id: id.into(),
            saga: "s".into(),
            status: status.into(),
            step: None,
            expect: None,
            remaining: Vec::new(),
            failed_step: failed.map(str::to_string),
            failure_reason: None,
            failure_code: failed.map(|_| "injected".to_string()),
            correlation_id: "c".into(),
            started_at: None,
            updated_at: 1,
            deadline_at: None,
            flags: Vec::new(),
            path: serde_json::json!([]),
            monitor_partition: 0,
            version: 1,
        }
    }

    #[tokio::test]
    async fn a_file_from_before_the_totals_is_counted_once_when_its_partition_is_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let config = MonitorConfig {
            db: dir.path().join("monitor.db"),
            observations_topic: "obs".into(),
            ..MonitorConfig::default()
        };
        let store = Store::open(&config, "s").unwrap();
        // Sagas written with no totals row, as a monitor before the totals did.
        let sagas = [
            view("a", "completed", None),
            view("b", "compensated", Some("pay")),
            view("c", "compensated", Some("pay")),
        ];
        let writes: Vec<Write> = sagas
            .iter()
            .flat_map(|s| diff(&[], &saga_rows(s), 1))
            .collect();
        store.reads().apply(&writes).await.unwrap();
        let pid = PartitionId {
            topic: "obs".into(),
            partition: 0,
        };
        let opened = store.claim(&pid).await.unwrap();
        let want = [("compensated".to_string(), 2), ("completed".to_string(), 1)];
        assert_eq!(opened.state.stats.counts(), want);
        // Kept at once, so readers see them before the partition folds anything.
        let read = store.reads().stats("s").await.unwrap();
        assert_eq!(read.counts(), want);
        assert_eq!(
            read.failure_groups(),
            vec![("pay".into(), "injected".into(), 2)]
        );
        // Another partition of the file holds none of them.
        let other = PartitionId {
            topic: "obs".into(),
            partition: 1,
        };
        assert!(
            store
                .claim(&other)
                .await
                .unwrap()
                .state
                .stats
                .counts()
                .is_empty()
        );
    }
}
