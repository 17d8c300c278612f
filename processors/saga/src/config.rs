//! `[processor]` settings of the saga binaries: `eip-saga` (a participant, `--role NAME`) and
//! `eip-saga-monitor`. Both read the saga definition file named here, check it against the
//! schema catalog, and take their input topics from it when `pipeline.inputs` is empty.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use eip_runtime::config::{ConfigError, Section};
use eip_store::view_any::{StoreKind, check_cql};
use serde::{Deserialize, Serialize};

use crate::actions::Policy;
use crate::definition::{Definition, DefinitionError};

/// What is injected into one participant's steps, for the demo and the tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Injection {
    /// The share of sagas (0 to 1) whose steps of this participant fail (`injected`).
    pub fail_rate: f64,
    /// How long the participant takes to perform a step (a durable timer, not a sleep). Past
    /// the step's timeout, the monitor's timeout reaches it first.
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
}

impl Default for Injection {
    fn default() -> Self {
        Injection {
            fail_rate: 0.0,
            latency: Duration::ZERO,
        }
    }
}

/// `[processor]` of `eip-saga`: one participant role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParticipantConfig {
    /// The participant role this instance plays (a `participant` of the definition); `--role`
    /// sets it.
    pub role: String,
    /// The saga definition file.
    pub definition: PathBuf,
    /// The SQLite file holding the role's state (stock, balances, payments, its decisions).
    /// Instances of one role on one machine share it.
    pub db: PathBuf,
    /// Failures and latency injected per role, by role name (`[processor.inject.payments]`).
    pub inject: BTreeMap<String, Injection>,
    /// Units of a SKU the inventory has when it first sees it.
    pub initial_stock: i64,
    /// Points a customer has when the loyalty participant first sees them.
    pub initial_points: i64,
    /// The largest payment the payments participant authorizes, in minor units.
    pub payment_limit_cents: i64,
    /// Orders above this total fail the fraud check, in minor units.
    pub fraud_limit_cents: i64,
    /// Where the orders participant sends `CompleteOrder` and `CancelOrder`.
    pub commands_topic: String,
    /// Where the orders participant reads the outcomes of those commands.
    pub outcomes_topic: String,
    /// Where a role that reserves stock publishes each SKU's level after a reservation or a
    /// release (`eip.inventory.StockLevelChanged`, keyed by SKU): the CQRS projector's
    /// inventory-levels view reads it.
    pub levels_topic: String,
}

impl Default for ParticipantConfig {
    fn default() -> Self {
        let policy = Policy::default();
        ParticipantConfig {
            role: String::new(),
            definition: PathBuf::from("deploy/sagas/order-fulfilment.toml"),
            db: PathBuf::from("eip-saga.db"),
            inject: BTreeMap::new(),
            initial_stock: policy.initial_stock,
            initial_points: policy.initial_points,
            payment_limit_cents: policy.payment_limit_cents,
            fraud_limit_cents: policy.fraud_limit_cents,
            commands_topic: "order-commands".into(),
            outcomes_topic: "order-outcomes".into(),
            levels_topic: "inventory-levels".into(),
        }
    }
}

impl ParticipantConfig {
    /// The policy of this role: the shared numbers and its own injected failure rate.
    pub fn policy(&self) -> Policy {
        Policy {
            fail_rate: self.injection().fail_rate,
            initial_stock: self.initial_stock,
            initial_points: self.initial_points,
            payment_limit_cents: self.payment_limit_cents,
            fraud_limit_cents: self.fraud_limit_cents,
        }
    }

    /// What is injected into this role.
    pub fn injection(&self) -> Injection {
        self.inject.get(&self.role).cloned().unwrap_or_default()
    }
}

impl Section for ParticipantConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.role.trim().is_empty() {
            return Err(ConfigError::invalid(
                "role",
                "must name a participant of the saga definition (use --role NAME)",
            ));
        }
        if self.db.as_os_str().is_empty() {
            return Err(ConfigError::invalid("db", "must name a file"));
        }
        for (role, i) in &self.inject {
            if !(0.0..=1.0).contains(&i.fail_rate) || i.fail_rate.is_nan() {
                return Err(ConfigError::invalid(
                    format!("inject.{role}.fail_rate"),
                    format!("{} is not between 0 and 1", i.fail_rate),
                ));
            }
        }
        for (key, n) in [
            ("initial_stock", self.initial_stock),
            ("initial_points", self.initial_points),
            ("payment_limit_cents", self.payment_limit_cents),
            ("fraud_limit_cents", self.fraud_limit_cents),
        ] {
            if n < 0 {
                return Err(ConfigError::invalid(key, format!("{n} is negative")));
            }
        }
        for (key, topic) in [
            ("commands_topic", &self.commands_topic),
            ("outcomes_topic", &self.outcomes_topic),
            ("levels_topic", &self.levels_topic),
        ] {
            if topic.trim().is_empty() {
                return Err(ConfigError::invalid(key, "must name a topic"));
            }
        }
        Ok(())
    }
}

/// `[processor]` of `eip-saga-monitor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// The saga definition file.
    pub definition: PathBuf,
    /// Where the saga views live: `sqlite` (the default: the file `db`, monitors on one
    /// machine) or `cql` (the keyspace `keyspace` on `cql_nodes`: monitors on many machines;
    /// `db` is then unused).
    pub store: StoreKind,
    /// The SQLite file holding every saga's state (the saga views), for `store = "sqlite"`.
    pub db: PathBuf,
    /// CQL contact points (`host:port`), for `store = "cql"`.
    pub cql_nodes: Vec<String>,
    /// The saga views' keyspace, for `store = "cql"` (created with replication factor 1 if
    /// missing; create it yourself for production replication).
    pub keyspace: String,
    /// CQL writes in flight at most, across the partitions of this monitor.
    pub cql_max_in_flight: usize,
    /// The monitor's own topic: every saga event re-keyed by saga id, so one partition owns
    /// each saga whatever topic its events came from.
    pub observations_topic: String,
    /// Bearer tokens that may carry out operator actions (`POST /sagas/{id}/actions`). With
    /// none, operator actions are off (a 403 says so); reading is open on the telemetry port.
    pub operator_tokens: Vec<String>,
    /// The longest a passed deadline waits for the monitor to read everything published
    /// before it (see docs/sagas.md, "Deadlines wait for the backlog"); past it, the
    /// deadline acts on what has been read.
    #[serde(with = "humantime_serde")]
    pub deadline_hold_max: Duration,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            definition: PathBuf::from("deploy/sagas/order-fulfilment.toml"),
            store: StoreKind::Sqlite,
            db: PathBuf::from("eip-saga-monitor.db"),
            cql_nodes: Vec::new(),
            keyspace: "eip".into(),
            cql_max_in_flight: 256,
            observations_topic: "saga-observations".into(),
            operator_tokens: Vec::new(),
            deadline_hold_max: Duration::from_secs(300),
        }
    }
}

impl Section for MonitorConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.db.as_os_str().is_empty() {
            return Err(ConfigError::invalid("db", "must name a file"));
        }
        if self.store == StoreKind::Cql {
            check_cql(&self.cql_nodes, &self.keyspace, self.cql_max_in_flight)?;
        }
        if self.observations_topic.trim().is_empty() {
            return Err(ConfigError::invalid(
                "observations_topic",
                "must name a topic",
            ));
        }
        for (i, t) in self.operator_tokens.iter().enumerate() {
            if t.is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ConfigError::invalid(
                    format!("operator_tokens[{i}]"),
                    "a token is one or more characters, none of them blank",
                ));
            }
        }
        Ok(())
    }
}

/// Loads the definition at `path` and checks its event names against the schema catalog;
/// a problem is a configuration error on `processor.definition`, naming the step and field.
pub fn load_definition(path: &std::path::Path) -> Result<Definition, ConfigError> {
    let bad = |e: DefinitionError| ConfigError::invalid("definition", e.to_string());
    let def = Definition::load(path).map_err(bad)?;
    let catalog = eip_schemas::Catalog::global()
        .map_err(|e| ConfigError::invalid("definition", format!("schema catalog: {e}")))?;
    def.check_types(|name| catalog.get(name).is_ok())
        .map_err(|e| {
            bad(DefinitionError {
                file: path.display().to_string(),
                ..e
            })
        })?;
    Ok(def)
}
