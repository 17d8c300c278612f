//! The views behind one trait, [`ViewStore`], with two backends: [`SqliteViews`] (the embedded
//! default) and [`crate::view_scylla::ScyllaViews`]. Both take their tables and statements from
//! [`crate::views`], write newest-wins by each row's `version`, and answer the same queries
//! with the same cursors; [`crate::conformance`] is the suite each must pass.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::view_page::{CustomerOrder, Sales};
use crate::view_sqlite::{self, Reader};
use crate::views::{LevelView, OrderView, OutcomeView, Write};

/// A store failure, classified.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Worth retrying: the store is busy, overloaded, unreachable or timed out.
    #[error("transient store error: {0}")]
    Transient(String),
    /// Never worth retrying: the store refuses the request itself.
    #[error("the store refuses this for good: {0}")]
    Permanent(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        match crate::sqlite::classify("view store", e) {
            eip_runtime::ProcessError::Transient { source, .. } => {
                StoreError::Transient(source.map_or_else(String::new, |s| s.to_string()))
            }
            other => StoreError::Permanent(other.to_string()),
        }
    }
}

/// A store failure as a processor's error: transient stays transient (the runtime retries),
/// a refusal for good is fatal.
impl From<StoreError> for eip_runtime::ProcessError {
    fn from(e: StoreError) -> eip_runtime::ProcessError {
        match e {
            StoreError::Transient(reason) => eip_runtime::ProcessError::Transient {
                reason,
                source: None,
            },
            StoreError::Permanent(reason) => eip_runtime::ProcessError::fatal(reason),
        }
    }
}

/// A query answer that may be refused for its cursor.
pub type Paged<T> =
    Result<Result<crate::view_page::Page<T>, crate::view_page::BadCursor>, StoreError>;

/// The views, whichever store holds them.
pub trait ViewStore: Send + Sync {
    /// Applies `writes`: each replaces its row only if newer (by `version`), so applying any
    /// of them again, or late, changes nothing.
    fn apply(&self, writes: &[Write]) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The order `id` with its lines.
    fn order(&self, id: &str)
    -> impl Future<Output = Result<Option<OrderView>, StoreError>> + Send;
    /// A page of `customer`'s orders, newest first.
    fn customer_orders(
        &self,
        customer: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Paged<CustomerOrder>> + Send;
    /// A page of `day`'s sales per SKU and currency.
    fn product_sales(
        &self,
        day: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Paged<Sales>> + Send;
    /// A command's outcome.
    fn command(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<OutcomeView>, StoreError>> + Send;
    /// A page of the outcomes of the commands with correlation id `id`, by command id.
    fn commands_by_correlation(
        &self,
        id: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Paged<OutcomeView>> + Send;
    /// A SKU's stock level.
    fn inventory(
        &self,
        sku: &str,
    ) -> impl Future<Output = Result<Option<LevelView>, StoreError>> + Send;
}

/// The SQLite backend behind the trait: writes in their own transaction on the live tables,
/// reads through [`Reader`] on tokio's blocking pool.
///
/// [`ViewStore::apply`] here has no epoch check, on purpose: the trait is the write path the
/// two backends share, and ScyllaDB has no partition ledger or epoch to check (its writes are
/// fenced by `USING TIMESTAMP`, newest wins). The projector writes SQLite inside its group
/// commit instead, in one transaction with the epoch check and the partition's applied offset
/// (`eip_projector`'s `commit`), which the trait can't express without giving ScyllaDB a
/// transaction it doesn't have. So this `apply` serves the conformance suite and tools only;
/// it is still newest-wins by version, so a late write never replaces a newer row, but nothing
/// that owns partitions may write through it. See docs/cqrs.md, "Where SQLite fits".
#[derive(Debug, Clone)]
pub struct SqliteViews {
    path: PathBuf,
    reader: Arc<Reader>,
}

impl SqliteViews {
    /// Opens (creating) the views at `path`, with `connections` read connections.
    pub fn open(path: &Path, connections: usize) -> Result<SqliteViews, StoreError> {
        Ok(SqliteViews {
            path: path.to_path_buf(),
            reader: Arc::new(Reader::open(path, connections)?),
        })
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Reader) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || f(&reader))
            .await
            .map_err(|e| StoreError::Permanent(e.to_string()))?
            .map_err(StoreError::from)
    }
}

impl ViewStore for SqliteViews {
    async fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        let (path, writes) = (self.path.clone(), writes.to_vec());
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            let mut conn = crate::sqlite::connect(&path)?;
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let versions = view_sqlite::versions(&tx)?;
            view_sqlite::execute(&tx, &versions, &writes)
                .map_err(|e| StoreError::Transient(e.to_string()))?;
            tx.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Permanent(e.to_string()))?
    }

    async fn order(&self, id: &str) -> Result<Option<OrderView>, StoreError> {
        let id = id.to_string();
        self.read(move |r| r.order(&id)).await
    }

    async fn customer_orders(
        &self,
        customer: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> Paged<CustomerOrder> {
        let (customer, cursor) = (customer.to_string(), cursor.map(String::from));
        self.read(move |r| r.customer_orders_page(&customer, cursor.as_deref(), limit))
            .await
    }

    async fn product_sales(&self, day: &str, cursor: Option<&str>, limit: u32) -> Paged<Sales> {
        let (day, cursor) = (day.to_string(), cursor.map(String::from));
        self.read(move |r| r.product_sales_page(&day, cursor.as_deref(), limit))
            .await
    }

    async fn command(&self, id: &str) -> Result<Option<OutcomeView>, StoreError> {
        let id = id.to_string();
        self.read(move |r| r.command(&id)).await
    }

    async fn commands_by_correlation(
        &self,
        id: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> Paged<OutcomeView> {
        let (id, cursor) = (id.to_string(), cursor.map(str::to_string));
        self.read(move |r| r.commands_by_correlation_page(&id, cursor.as_deref(), limit))
            .await
    }

    async fn inventory(&self, sku: &str) -> Result<Option<LevelView>, StoreError> {
        let sku = sku.to_string();
        self.read(move |r| r.inventory(&sku)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteViews::open(&dir.path().join("views.db"), 2).unwrap();
        crate::conformance::run(&store).await;
    }
}
