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
    Claim, LEDGER_DDL, blocking, check_epoch, claim_partition, classify, connect, write_ledger,
};
use eip_store::view_any::StoreKind;
use eip_store::view_scylla::ScyllaSettings;
use eip_store::view_sqlite::execute_at;
use eip_store::view_store::{StoreError, ViewStore};
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
    /// The observation offset the stored totals count through.
    through: Option<i64>,
    /// The last observation offset folded since the last group commit.
    folded: Option<i64>,
}

impl Partition {
    /// The partition.
    pub fn partition(&self) -> &PartitionId {
        &self.partition
    }

    /// An observation at `offset` was folded.
    pub fn folded(&mut self, offset: i64) {
        self.folded = Some(offset);
    }

    fn new(backend: Backend, partition: &PartitionId) -> Partition {
        Partition {
            backend,
            partition: partition.clone(),
            staged: Vec::new(),
            sagas: HashMap::new(),
            stats: SagaStats::default(),
            through: None,
            folded: None,
        }
    }
}

fn store_error(e: StoreError) -> ProcessError {
    match e {
        StoreError::Transient(reason) => ProcessError::Transient {
            reason,
            source: None,
        },
        StoreError::Permanent(reason) => ProcessError::fatal(reason),
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
            saga: Arc::from(saga),
            observations: Arc::from(config.observations_topic.as_str()),
        })
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
        let conn = Arc::new(Mutex::new(conn));
        let mut state = Partition::new(
            Backend::Sqlite {
                conn: conn.clone(),
                epoch,
            },
            partition,
        );
        if observations {
            let saga = self.saga.clone();
            let (stats, through) = blocking(move || {
                let conn = conn
                    .lock()
                    .map_err(|_| ProcessError::fatal("store connection poisoned"))?;
                let stored = saga_views::partition_stats(&conn, &SAGA_STATS.physical(1), &saga, p)
                    .map_err(|e| classify("reading the saga totals", e))?;
                match stored {
                    Some((stats, through)) => Ok((stats, Some(through))),
                    // A file from before the totals were kept: count them once.
                    None => saga_views::count_partition(&conn, p)
                        .map(|stats| (stats, None))
                        .map_err(|e| classify("counting the saga totals", e)),
                }
            })
            .await?;
            state.stats = stats;
            state.through = through;
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
        let views = cql.get().await.map_err(store_error)?;
        let mut state = Partition::new(Backend::Cql(cql.clone()), partition);
        if !observations {
            return Ok(Opened::fresh(state));
        }
        if let Some((stats, through)) = views
            .saga_partition_stats(&self.saga, p)
            .await
            .map_err(store_error)?
        {
            state.stats = stats;
            state.through = Some(through);
        }
        let timers = views
            .saga_deadlines(p)
            .await
            .map_err(store_error)?
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
                .map_err(store_error)?
                .saga_events(id, Some(state.through.unwrap_or(-1)))
                .await
                .map_err(store_error)?,
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
        if let Some(through) = state.folded {
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
                let views = cql.get().await.map_err(store_error)?;
                views.apply(&writes).await.map_err(store_error)
            }
            Backend::Sqlite { conn, epoch } => {
                let conn = conn.clone();
                let partition = flush.partition.clone();
                let epoch = *epoch;
                let timers = flush.timers.to_vec();
                let up_to = flush.up_to;
                blocking(move || {
                    let mut conn = conn
                        .lock()
                        .map_err(|_| ProcessError::fatal("store connection poisoned"))?;
                    let tx = conn
                        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                        .map_err(|e| classify("group commit", e))?;
                    check_epoch(&tx, &partition, epoch)?;
                    for w in &writes {
                        execute_at(&tx, w.table(), 1, w)
                            .map_err(|e| classify("writing a saga row", e))?;
                    }
                    write_ledger(&tx, &partition, &timers, up_to)?;
                    tx.commit().map_err(|e| classify("group commit", e))
                })
                .await
            }
        };
        if result.is_ok() {
            state.staged.clear();
            state.sagas.clear();
            if state.folded.is_some() {
                state.through = state.folded.take();
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
