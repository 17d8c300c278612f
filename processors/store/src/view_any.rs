//! The dispatch over the view backends: [`AnyViews`] is whichever one the configuration
//! names, behind the same [`ViewStore`] trait. It is the one module that knows both.

use crate::view_page::{CustomerOrder, Sales};
use crate::view_scylla::ScyllaViews;
use crate::view_store::{Paged, SqliteViews, StoreError, ViewStore};
use crate::views::{LevelView, OrderView, OutcomeView, Write};

/// Either backend, chosen by configuration.
#[derive(Debug)]
pub enum AnyViews {
    /// The SQLite file.
    Sqlite(SqliteViews),
    /// The CQL cluster.
    Cql(Box<ScyllaViews>),
}

impl ViewStore for AnyViews {
    async fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        match self {
            AnyViews::Sqlite(s) => s.apply(writes).await,
            AnyViews::Cql(s) => s.apply(writes).await,
        }
    }

    async fn order(&self, id: &str) -> Result<Option<OrderView>, StoreError> {
        match self {
            AnyViews::Sqlite(s) => s.order(id).await,
            AnyViews::Cql(s) => s.order(id).await,
        }
    }

    async fn customer_orders(
        &self,
        customer: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> Paged<CustomerOrder> {
        match self {
            AnyViews::Sqlite(s) => s.customer_orders(customer, cursor, limit).await,
            AnyViews::Cql(s) => s.customer_orders(customer, cursor, limit).await,
        }
    }

    async fn product_sales(&self, day: &str, cursor: Option<&str>, limit: u32) -> Paged<Sales> {
        match self {
            AnyViews::Sqlite(s) => s.product_sales(day, cursor, limit).await,
            AnyViews::Cql(s) => s.product_sales(day, cursor, limit).await,
        }
    }

    async fn command(&self, id: &str) -> Result<Option<OutcomeView>, StoreError> {
        match self {
            AnyViews::Sqlite(s) => s.command(id).await,
            AnyViews::Cql(s) => s.command(id).await,
        }
    }

    async fn commands_by_correlation(
        &self,
        id: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> Paged<OutcomeView> {
        match self {
            AnyViews::Sqlite(s) => s.commands_by_correlation(id, cursor, limit).await,
            AnyViews::Cql(s) => s.commands_by_correlation(id, cursor, limit).await,
        }
    }

    async fn inventory(&self, sku: &str) -> Result<Option<LevelView>, StoreError> {
        match self {
            AnyViews::Sqlite(s) => s.inventory(sku).await,
            AnyViews::Cql(s) => s.inventory(sku).await,
        }
    }
}

/// Where a processor keeps its views: `store = "sqlite"` or `"cql"` in its `[processor]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The SQLite file `db`: every replica on one machine.
    Sqlite,
    /// The CQL cluster `cql_nodes` (ScyllaDB in production): replicas on many machines.
    Cql,
}

/// Checks the CQL settings of a `[processor]` section with `store = "cql"`: contact points,
/// a keyspace name CQL takes unquoted, and a bound on writes in flight.
pub fn check_cql(
    nodes: &[String],
    keyspace: &str,
    max_in_flight: usize,
) -> Result<(), eip_runtime::config::ConfigError> {
    use eip_runtime::config::ConfigError;
    if nodes.is_empty() {
        return Err(ConfigError::invalid(
            "cql_nodes",
            "store = \"cql\" needs at least one contact point, e.g. [\"10.0.0.1:9042\"]",
        ));
    }
    let ok = !keyspace.is_empty()
        && keyspace.len() <= 48
        && keyspace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        return Err(ConfigError::invalid(
            "keyspace",
            "must be 1 to 48 letters, digits or underscores",
        ));
    }
    if max_in_flight == 0 {
        return Err(ConfigError::invalid(
            "cql_max_in_flight",
            "must be at least 1",
        ));
    }
    Ok(())
}
