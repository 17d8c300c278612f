//! The saga views, whichever store holds them: [`SagaStore`] reads them from the monitor's
//! SQLite file or from the CQL keyspace, with the same answers (checked by
//! [`crate::conformance::sagas`] on both). The CQL cluster is connected on first use, so a
//! reader starts while it is down and answers 503 until it is up.

use std::path::PathBuf;
use std::sync::Arc;

use crate::saga_views::{self, SagaEventView, SagaPage, SagaStats, SagaView};
use crate::view_scylla::{ScyllaSettings, ScyllaViews};
use crate::view_store::{StoreError, ViewStore};
use crate::views::Write;

/// Where the saga views are.
#[derive(Debug, Clone)]
pub enum SagaStore {
    /// The monitor's SQLite file.
    Sqlite(Arc<PathBuf>),
    /// A CQL keyspace, connected on first use.
    Cql(Arc<LazyCql>),
}

/// A CQL store connected on first use.
#[derive(Debug)]
pub struct LazyCql {
    settings: ScyllaSettings,
    views: tokio::sync::OnceCell<Arc<ScyllaViews>>,
}

impl LazyCql {
    /// The store `settings` name, not connected yet.
    pub fn new(settings: ScyllaSettings) -> LazyCql {
        LazyCql {
            settings,
            views: tokio::sync::OnceCell::new(),
        }
    }

    /// The connected store (connecting now if it is not yet).
    pub async fn get(&self) -> Result<&Arc<ScyllaViews>, StoreError> {
        self.views
            .get_or_try_init(|| async { ScyllaViews::connect(&self.settings).await.map(Arc::new) })
            .await
    }

    /// A store that is connected already.
    pub fn connected(views: Arc<ScyllaViews>) -> LazyCql {
        let settings = ScyllaSettings::new(Vec::new());
        LazyCql {
            settings,
            views: tokio::sync::OnceCell::new_with(Some(views)),
        }
    }
}

impl SagaStore {
    /// The SQLite file at `path`.
    pub fn sqlite(path: PathBuf) -> SagaStore {
        SagaStore::Sqlite(Arc::new(path))
    }

    /// The CQL keyspace `settings` name.
    pub fn cql(settings: ScyllaSettings) -> SagaStore {
        SagaStore::Cql(Arc::new(LazyCql::new(settings)))
    }

    async fn on_file<T: Send + 'static>(
        path: &Arc<PathBuf>,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = crate::sqlite::connect(&path)?;
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Permanent(e.to_string()))?
        .map_err(StoreError::from)
    }

    /// The saga `id`.
    pub async fn saga(&self, id: &str) -> Result<Option<SagaView>, StoreError> {
        match self {
            SagaStore::Sqlite(p) => {
                let id = id.to_string();
                Self::on_file(p, move |c| saga_views::read_saga(c, "sagas", &id)).await
            }
            SagaStore::Cql(c) => c.get().await?.saga(id).await,
        }
    }

    /// The events of saga `id` in time order; with `through`, only those folded at or
    /// before that observation offset.
    pub async fn events(
        &self,
        id: &str,
        through: Option<i64>,
    ) -> Result<Vec<SagaEventView>, StoreError> {
        match self {
            SagaStore::Sqlite(p) => {
                let id = id.to_string();
                Self::on_file(p, move |c| {
                    saga_views::read_events(c, "saga_events", &id, through)
                })
                .await
            }
            SagaStore::Cql(c) => c.get().await?.saga_events(id, through).await,
        }
    }

    /// Up to `limit` sagas of `status`, stalest first, after `after` (updated_at and id),
    /// and where the next page starts when this one is full. The next page is decided by the
    /// status rows, not by the sagas read: a status row whose saga row is not written yet
    /// (CQL writes them one by one) neither ends the paging early nor moves its cursor.
    pub async fn list(
        &self,
        status: &str,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<SagaPage, StoreError> {
        match self {
            SagaStore::Sqlite(p) => {
                let status = status.to_string();
                Self::on_file(p, move |c| {
                    saga_views::list(
                        c,
                        &status,
                        after.as_ref().map(|(at, id)| (*at, id.as_str())),
                        limit,
                    )
                })
                .await
            }
            SagaStore::Cql(c) => {
                c.get()
                    .await?
                    .sagas_by_status(
                        status,
                        after.as_ref().map(|(at, id)| (*at, id.as_str())),
                        limit,
                    )
                    .await
            }
        }
    }

    /// The sagas of correlation id `id`, by saga id.
    pub async fn by_correlation(&self, id: &str) -> Result<Vec<SagaView>, StoreError> {
        let mut ids = match self {
            SagaStore::Sqlite(p) => {
                let id = id.to_string();
                Self::on_file(p, move |c| saga_views::by_correlation(c, &id)).await?
            }
            SagaStore::Cql(c) => c.get().await?.sagas_by_correlation(id).await?,
        };
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.saga(&id).await?);
        }
        Ok(out)
    }

    /// The totals of saga `saga`, over every monitor partition.
    pub async fn stats(&self, saga: &str) -> Result<SagaStats, StoreError> {
        match self {
            SagaStore::Sqlite(p) => {
                let saga = saga.to_string();
                Self::on_file(p, move |c| saga_views::stats(c, &saga)).await
            }
            SagaStore::Cql(c) => c.get().await?.saga_stats(saga).await,
        }
    }

    /// One monitor partition's totals and the observation offset they count through.
    pub async fn partition_stats(
        &self,
        saga: &str,
        partition: i64,
    ) -> Result<Option<(SagaStats, i64)>, StoreError> {
        match self {
            SagaStore::Sqlite(p) => {
                let saga = saga.to_string();
                Self::on_file(p, move |c| {
                    saga_views::partition_stats(c, "saga_stats", &saga, partition)
                })
                .await
            }
            SagaStore::Cql(c) => c.get().await?.saga_partition_stats(saga, partition).await,
        }
    }

    /// The deadlines of monitor partition `partition`'s sagas: (saga id, when).
    pub async fn deadlines(&self, partition: i64) -> Result<Vec<(String, i64)>, StoreError> {
        match self {
            SagaStore::Sqlite(p) => {
                Self::on_file(p, move |c| saga_views::deadlines(c, partition)).await
            }
            SagaStore::Cql(c) => c.get().await?.saga_deadlines(partition).await,
        }
    }

    /// Applies `writes`, newest wins by version (the conformance suite's and tools' path;
    /// the monitor commits its SQLite file in its own transaction).
    pub async fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        match self {
            SagaStore::Sqlite(p) => {
                let writes = writes.to_vec();
                Self::on_file(p, move |c| {
                    let tx = c.unchecked_transaction()?;
                    for w in &writes {
                        crate::view_sqlite::execute_at(&tx, w.table(), 1, w)?;
                    }
                    tx.commit()
                })
                .await
            }
            SagaStore::Cql(c) => c.get().await?.apply(writes).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_saga_views_on_sqlite_pass_the_saga_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("monitor.db");
        let conn = crate::sqlite::connect(&path).unwrap();
        saga_views::migrate(&conn).unwrap();
        crate::saga_conformance::run(&SagaStore::sqlite(path)).await;
    }
}
