//! The monitor's SQLite store: the saga views of `eip_store::saga_views` (version 1 tables
//! with plain-name views for readers) beside eip-store's partition ledger. A group commit
//! writes the staged view writes, the timer changes and the applied offset in one
//! transaction, and only while the partition's epoch is still its own.

use std::path::Path;
use std::sync::{Arc, Mutex};

use eip_runtime::{Flush, Opened, PartitionId, ProcessError};
use eip_schemas::types::SagaObservation;
use eip_store::saga_views::{self, SAGA_EVENTS, SagaEventView};
use eip_store::sqlite::{
    Claim, LEDGER_DDL, blocking, check_epoch, claim_partition, classify, connect, write_ledger,
};
use eip_store::view_sqlite::execute_at;
use eip_store::views::Write;

use crate::fold::Saga;

/// One partition's handle: its connection, its epoch, and the writes staged since the last
/// group commit.
#[derive(Debug)]
pub struct Partition {
    conn: Arc<Mutex<rusqlite::Connection>>,
    partition: PartitionId,
    /// The epoch this owner claimed.
    pub epoch: i64,
    /// View writes staged since the last group commit, in order.
    pub staged: Vec<Write>,
    /// Sagas folded since the last group commit (their rows are staged, not yet stored).
    pub sagas: std::collections::HashMap<String, Saga>,
}

impl Partition {
    /// The partition.
    pub fn partition(&self) -> &PartitionId {
        &self.partition
    }
}

/// The monitor's store: a file.
#[derive(Debug, Clone)]
pub struct Store {
    path: Arc<Path>,
}

impl Store {
    /// Opens (creating) the file with its tables.
    pub fn open(path: &Path) -> rusqlite::Result<Store> {
        let conn = connect(path)?;
        saga_views::migrate(&conn)?;
        conn.execute_batch(LEDGER_DDL)?;
        Ok(Store {
            path: Arc::from(path),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A connection for readers (the API, reports).
    pub fn reader(&self) -> rusqlite::Result<rusqlite::Connection> {
        connect(&self.path)
    }

    /// Claims `partition`.
    pub async fn claim(&self, partition: &PartitionId) -> Result<Opened<Partition>, ProcessError> {
        let (
            conn,
            Claim {
                epoch,
                applied,
                timers,
            },
        ) = claim_partition(&self.path, partition).await?;
        Ok(Opened {
            state: Partition {
                conn: Arc::new(Mutex::new(conn)),
                partition: partition.clone(),
                epoch,
                staged: Vec::new(),
                sagas: std::collections::HashMap::new(),
            },
            timers,
            applied,
        })
    }

    /// The events of saga `id` as stored.
    pub async fn load(&self, state: &Partition, id: &str) -> Result<Saga, ProcessError> {
        let conn = state.conn.clone();
        let id = id.to_string();
        let table = SAGA_EVENTS.physical(1);
        blocking(move || {
            let conn = conn
                .lock()
                .map_err(|_| ProcessError::fatal("store connection poisoned"))?;
            let events = saga_views::read_events(&conn, &table, &id)
                .map_err(|e| classify("loading a saga", e))?;
            let mut saga = Saga::default();
            for e in events {
                saga.observe(observation(e));
            }
            Ok(saga)
        })
        .await
    }

    /// The group commit (see the module docs). On success the staged writes are cleared.
    pub async fn commit(
        &self,
        state: &mut Partition,
        flush: &Flush<'_>,
    ) -> Result<(), ProcessError> {
        let conn = state.conn.clone();
        let partition = flush.partition.clone();
        let epoch = state.epoch;
        let writes = state.staged.clone();
        let timers = flush.timers.to_vec();
        let up_to = flush.up_to;
        let result = blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| ProcessError::fatal("store connection poisoned"))?;
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| classify("group commit", e))?;
            check_epoch(&tx, &partition, epoch)?;
            for w in &writes {
                execute_at(&tx, w.table(), 1, w).map_err(|e| classify("writing a saga row", e))?;
            }
            write_ledger(&tx, &partition, &timers, up_to)?;
            tx.commit().map_err(|e| classify("group commit", e))
        })
        .await;
        if result.is_ok() {
            state.staged.clear();
            state.sagas.clear();
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

/// An observed event as the views store it.
pub fn event_view(o: &SagaObservation) -> SagaEventView {
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
    }
}
