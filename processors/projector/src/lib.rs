//! # eip-projector
//!
//! The CQRS read side. It reads the order events and the command outcomes that `eip-orders`
//! publishes, and keeps the views of [`eip_store::views`] up to date: order summaries, each
//! customer's orders, product sales per day, and every command's status.
//!
//! Per partition it holds the orders it has seen ([`Projection`]), folds each event into its
//! order's view ([`projection::fold`]), and at each group commit writes, in one SQLite
//! transaction after the epoch check, the difference between each touched order's rows before
//! and after, the outcomes, and the partition's applied offset. A replay after a crash skips
//! what the ledger holds; anything else repeated is skipped by version. docs/cqrs.md has the
//! argument and the tables.

pub mod projection;
pub mod rebuild;
#[cfg(feature = "sample")]
pub mod sample;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use eip_runtime::config::{Config, ConfigError, Section};
use eip_runtime::{Effects, Envelope, Flush, Opened, PartitionId, ProcessError, Record, Stateful};
use eip_schemas::codec::decode_with;
use eip_schemas::order_events::OrderEvent as Event;
use eip_schemas::types::{CommandOutcome, StockLevelChanged};
use eip_schemas::{AvroRecord, Codec, frame};
use eip_store::sqlite::{
    LEDGER_DDL, blocking, check_epoch, claim, classify, connect, write_ledger,
};
use eip_store::view_scylla::{ScyllaSettings, ScyllaViews};
use eip_store::view_sqlite::{self, Versions, load_order};
use eip_store::view_store::ViewStore;
use eip_store::views::{
    INVENTORY_LEVELS, LevelView, ORDER_LINES, ORDER_SUMMARY, ORDERS_BY_CUSTOMER, OrderView,
    OutcomeView, PRODUCT_SALES, Value, Write, diff, level_rows, order_rows, outcome_rows,
};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::projection::{Step, fold};

pub use eip_store::view_any::StoreKind;

/// `[processor]` settings of the projector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectorConfig {
    /// `sqlite` (the default) or `cql`.
    pub store: StoreKind,
    /// The views' SQLite file (created if missing); every replica on one machine shares it,
    /// and the query API reads it.
    pub db: PathBuf,
    /// CQL contact points (`host:port`), for `store = "cql"`.
    pub cql_nodes: Vec<String>,
    /// The views' keyspace, for `store = "cql"` (created with replication factor 1 if
    /// missing; create it yourself for production replication).
    pub keyspace: String,
    /// CQL writes in flight at most, across the partitions of this replica.
    pub cql_max_in_flight: usize,
    /// Orders whose view is kept in memory per partition between group commits; past this,
    /// the cache is emptied after a commit and orders are read from the store again.
    pub cached_orders: usize,
    /// Fault injection only: hold every group commit open this long before committing.
    #[serde(with = "humantime_serde")]
    pub hold_commit_open: std::time::Duration,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        ProjectorConfig {
            store: StoreKind::Sqlite,
            db: PathBuf::from("eip-views.db"),
            cql_nodes: Vec::new(),
            keyspace: "eip".into(),
            cql_max_in_flight: 256,
            cached_orders: 100_000,
            hold_commit_open: std::time::Duration::ZERO,
        }
    }
}

impl Section for ProjectorConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.db.as_os_str().is_empty() {
            return Err(ConfigError::invalid("db", "must name a file"));
        }
        if self.cached_orders == 0 {
            return Err(ConfigError::invalid("cached_orders", "must be at least 1"));
        }
        if self.store == StoreKind::Cql {
            eip_store::view_any::check_cql(
                &self.cql_nodes,
                &self.keyspace,
                self.cql_max_in_flight,
            )?;
        }
        Ok(())
    }
}

/// A decoded input: an order event, a command outcome, or a stock level.
#[derive(Debug, Clone)]
pub enum Input {
    /// An order event.
    Event(Event),
    /// A command's outcome.
    Outcome(CommandOutcome),
    /// A SKU's stock level (`eip.inventory.StockLevelChanged`).
    Levels(Vec<LevelView>),
}

/// Decodes an order event or a command outcome by its writer schema's name; any other record
/// is poison.
pub async fn decode(codec: &Codec, payload: Option<&[u8]>) -> Result<Input, ProcessError> {
    if let Some(event) = eip_schemas::order_events::decode_order_event(codec, payload).await? {
        return Ok(Input::Event(event));
    }
    let (id, body) = frame::split(payload).map_err(|e| ProcessError::Codec(e.into()))?;
    let writer = codec.registry().schema_by_id(id).await?;
    match writer.full_name.as_str() {
        CommandOutcome::FULL_NAME => Ok(Input::Outcome(decode_with(&writer, body)?)),
        StockLevelChanged::FULL_NAME => {
            let e: StockLevelChanged = decode_with(&writer, body)?;
            Ok(Input::Levels(vec![LevelView {
                sku: e.sku,
                available: e.available,
                reserved: e.reserved,
                version: e.sequence,
                updated_at: e.metadata.occurred_at,
            }]))
        }
        other => Err(ProcessError::poison(format!(
            "{other} (schema id {id}) is neither an order event, a command outcome nor a \
             stock level"
        ))),
    }
}

/// What a partition's projection did, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Events applied.
    pub applied: u64,
    /// Events the views already held.
    pub duplicates: u64,
    /// Outcomes staged.
    pub outcomes: u64,
    /// Stock levels staged.
    pub levels: u64,
}

/// One partition's projection: the orders it knows, and what changed since the last commit.
#[derive(Debug, Default)]
pub struct Projection {
    /// True when every order is in `orders` (a rebuild from offset 0): the store is not read.
    in_memory: bool,
    orders: HashMap<String, OrderView>,
    /// Each order touched since the last commit: its view before (None: not stored), and the
    /// keys of every line and sales row any state since then had.
    touched: HashMap<String, Touched>,
    outcomes: Vec<OutcomeView>,
    levels: Vec<LevelView>,
    counts: Counts,
    /// In memory only (a rebuild): each order that met a gap, with the highest version seen
    /// for it. A later copy of the missing events (a redrive) can still fill the gap.
    gapped: std::collections::BTreeMap<String, i64>,
}

impl Projection {
    /// A projection that replays from offset 0 and so knows every order itself: it never reads
    /// the store (whose live version it is not writing) and never empties its cache.
    pub fn in_memory() -> Projection {
        Projection {
            in_memory: true,
            ..Projection::default()
        }
    }

    /// Folds `event` into its order's view, reading the order from the live tables through
    /// `conn` when it is not known yet. A version gap is poison: the event goes to the DLQ
    /// with the versions in its reason, and the view keeps waiting for the missing one.
    pub fn event(
        &mut self,
        conn: &Connection,
        versions: &Versions,
        event: &Event,
    ) -> Result<(), ProcessError> {
        self.fold_with(event, |id| {
            load_order(
                conn,
                &ORDER_SUMMARY.physical(versions.live_of(&ORDER_SUMMARY)),
                &ORDER_LINES.physical(versions.live_of(&ORDER_LINES)),
                id,
            )
            .map_err(|e| classify("reading an order's view", e))
        })
    }

    /// [`Projection::event`] with the views known so far (for an
    /// [`in_memory`](Projection::in_memory) projection, or after [`Projection::remember`]).
    pub fn event_known(&mut self, event: &Event) -> Result<(), ProcessError> {
        self.fold_with(event, |_| Ok(None))
    }

    fn fold_with(
        &mut self,
        event: &Event,
        load: impl FnOnce(&str) -> Result<Option<OrderView>, ProcessError>,
    ) -> Result<(), ProcessError> {
        let id = &event.metadata().aggregate_id;
        if !self.in_memory
            && !self.orders.contains_key(id)
            && let Some(order) = load(id)?
        {
            self.orders.insert(id.clone(), order);
        }
        match fold(self.orders.get(id), event) {
            Step::Applied(next) => {
                check_rows(&next)?;
                let previous = self.orders.get(id);
                let touched = self.touched.entry(id.clone()).or_insert_with(|| Touched {
                    before: previous.cloned(),
                    gone: BTreeSet::new(),
                });
                // Lines and sales rows go only when a line is removed or the order cancelled:
                // note which, so the commit deletes them even if no later state has them.
                if let Some(previous) = previous
                    && matches!(event, Event::LineRemoved(_) | Event::Cancelled(_))
                {
                    let now: BTreeSet<_> = varying_keys(&next).collect();
                    touched
                        .gone
                        .extend(varying_keys(previous).filter(|k| !now.contains(k)));
                }
                self.orders.insert(id.clone(), next);
                self.counts.applied += 1;
                Ok(())
            }
            Step::Duplicate => {
                self.counts.duplicates += 1;
                // The order's view says it is past this event, but the other views may not
                // be: after a rebuild switched one view, its new version can be ahead of the
                // live projector, which then loads orders from it. Write every row of the
                // order as the view has it (newest wins: a row already there is unchanged),
                // and delete the sales rows a cancelled order no longer has, so no view is
                // left behind the one the order was read from.
                if !self.in_memory
                    && !self.touched.contains_key(id)
                    && let Some(order) = self.orders.get(id)
                {
                    let gone = if order.status == "cancelled" {
                        sales_keys(order).collect()
                    } else {
                        BTreeSet::new()
                    };
                    self.touched
                        .insert(id.clone(), Touched { before: None, gone });
                }
                Ok(())
            }
            Step::Gap { have, got } => {
                if self.in_memory {
                    let seen = self.gapped.entry(id.clone()).or_insert(got);
                    *seen = (*seen).max(got);
                }
                Err(ProcessError::poison(format!(
                    "order {id} is at version {have} in the views; this event is version {got}, so \
                 versions {}..{got} are missing",
                    have + 1
                )))
            }
        }
    }

    /// In a rebuild: each order whose history still has a gap (it met a version beyond its
    /// next and never got the ones in between, not even from a later copy), as "order: at
    /// version a, versions a+1..b missing". A rebuild never switches while this is not empty.
    pub fn gaps(&self) -> Vec<String> {
        self.gapped
            .iter()
            .filter_map(|(id, seen)| {
                let have = self.orders.get(id).map_or(0, |o| o.version);
                (have < *seen).then(|| {
                    format!(
                        "{id}: at version {have}, versions {}..{} missing",
                        have + 1,
                        seen - 1
                    )
                })
            })
            .collect()
    }

    /// True when the order's view is known (cached or folded).
    pub fn knows(&self, id: &str) -> bool {
        self.orders.contains_key(id)
    }

    /// Remembers an order's view read from the store.
    pub fn remember(&mut self, order: OrderView) {
        self.orders.insert(order.order_id.clone(), order);
    }

    /// Stages a command's outcome (a duplicate's report changes nothing).
    pub fn outcome(&mut self, outcome: &CommandOutcome) -> Result<(), ProcessError> {
        if let Some(view) = projection::outcome(outcome) {
            check_key("command_status", &view.command_id)?;
            check_key("commands_by_correlation", &view.correlation_id)?;
            self.outcomes.push(view);
            self.counts.outcomes += 1;
        }
        Ok(())
    }

    /// Stages stock levels (a SKU no store could key is refused).
    pub fn levels(&mut self, levels: &[LevelView]) -> Result<(), ProcessError> {
        for l in levels {
            check_key(INVENTORY_LEVELS.name, &l.sku)?;
        }
        self.levels.extend_from_slice(levels);
        self.counts.levels += levels.len() as u64;
        Ok(())
    }

    /// The writes that bring the store from the last commit to now; the staged changes stay
    /// until [`Projection::committed`].
    pub fn writes(&self) -> Vec<Write> {
        self.writes_from(false)
    }

    /// [`Projection::writes`] for a store whose rows this projection did not write: a view
    /// that a rebuild switched to since the last commit. Every row of each touched order is
    /// written (newest wins keeps any the new version holds at a later state), not only those
    /// that changed since the last commit, so a row the new version lacks is not left missing.
    pub fn writes_after_switch(&self) -> Vec<Write> {
        self.writes_from(true)
    }

    fn writes_from(&self, whole: bool) -> Vec<Write> {
        let mut writes = Vec::new();
        for (id, touched) in &self.touched {
            let Some(after) = self.orders.get(id) else {
                continue;
            };
            let before = touched.before.as_ref().map(order_rows).unwrap_or_default();
            let after_rows = order_rows(after);
            if whole {
                writes.extend(
                    diff(&before, &after_rows, after.version)
                        .into_iter()
                        .filter(|w| matches!(w, Write::Delete { .. })),
                );
                writes.extend(diff(&[], &after_rows, after.version));
            } else {
                writes.extend(diff(&before, &after_rows, after.version));
            }
            // A row only a state between `before` and `after` had may be in the store too (a
            // rebuild that read further before the switch, a former CQL owner's late write):
            // delete it as well, or it would outlive the state that had it.
            let kept: BTreeSet<(&'static str, Vec<Value>)> = varying_keys(after)
                .chain(touched.before.iter().flat_map(varying_keys))
                .collect();
            for (table, key) in touched.gone.difference(&kept) {
                writes.push(Write::Delete {
                    table: if *table == ORDER_LINES.name {
                        &ORDER_LINES
                    } else {
                        &PRODUCT_SALES
                    },
                    key: key.clone(),
                    stamp: after.version,
                });
            }
        }
        for outcome in &self.outcomes {
            writes.extend(diff(&[], &outcome_rows(outcome), outcome.version));
        }
        for level in &self.levels {
            writes.extend(diff(&[], &level_rows(level), level.version));
        }
        writes
    }

    /// The writes were committed: start the next batch, emptying the cache past `cap`.
    pub fn committed(&mut self, cap: usize) {
        self.touched.clear();
        self.outcomes.clear();
        self.levels.clear();
        if !self.in_memory && self.orders.len() > cap {
            self.orders.clear();
        }
    }

    /// Forgets the cached orders that are not touched since the last commit: after a view
    /// switched, they are read again from the new version when next needed.
    pub fn forget_untouched(&mut self) {
        let touched = &self.touched;
        self.orders.retain(|id, _| touched.contains_key(id));
    }

    /// Forgets every order (a crash, in tests).
    pub fn forget(&mut self) {
        self.orders.clear();
        self.touched.clear();
        self.outcomes.clear();
        self.levels.clear();
    }

    /// What it did so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }
}

/// An order touched since the last commit.
#[derive(Debug)]
struct Touched {
    /// Its view at the last commit (None: the store does not hold it).
    before: Option<OrderView>,
    /// The keys of the line and sales rows a state folded since had and the next one lost.
    gone: BTreeSet<(&'static str, Vec<Value>)>,
}

/// The keys of an order's rows that come and go with its state: lines, and sales once
/// confirmed. (Its summary and customer rows keep their keys for life.)
fn varying_keys(order: &OrderView) -> impl Iterator<Item = (&'static str, Vec<Value>)> + '_ {
    let lines = order.lines.iter().map(|l| {
        (
            ORDER_LINES.name,
            vec![order.order_id.as_str().into(), l.sku.as_str().into()],
        )
    });
    let sales = sales_keys(order).filter(|_| eip_store::views::sells(&order.status));
    lines.chain(sales)
}

/// The keys of the sales rows an order has while it is confirmed (one per line on its day of
/// confirmation), whatever its status now.
fn sales_keys(order: &OrderView) -> impl Iterator<Item = (&'static str, Vec<Value>)> + '_ {
    order.confirmed_day.iter().flat_map(|day| {
        order.lines.iter().map(|l| {
            (
                PRODUCT_SALES.name,
                vec![
                    day.as_str().into(),
                    l.sku.as_str().into(),
                    order.currency.as_str().into(),
                    order.order_id.as_str().into(),
                ],
            )
        })
    })
}

/// Refuses a key value the store would refuse for good, by the one definition of a valid id
/// that the write side checks commands against too (`eip_schemas::limits`): empty, or longer
/// than `MAX_ID_BYTES`.
fn check_key(table: &str, value: &str) -> Result<(), ProcessError> {
    match eip_schemas::limits::id_problem(value) {
        None => Ok(()),
        Some(why) => Err(ProcessError::poison(format!(
            "the store refuses this row for good: a key of {table} {why}"
        ))),
    }
}

/// Refuses, before anything is staged, a view whose rows the store would refuse for good
/// (an empty or oversized key): the record goes to the DLQ with the reason. It checks the
/// text key columns of `order_rows` directly, without building the rows.
fn check_rows(order: &OrderView) -> Result<(), ProcessError> {
    check_key(ORDER_SUMMARY.name, &order.order_id)?;
    check_key(ORDERS_BY_CUSTOMER.name, &order.customer_id)?;
    for line in &order.lines {
        check_key(ORDER_LINES.name, &line.sku)?;
    }
    if let Some(day) = &order.confirmed_day {
        check_key(PRODUCT_SALES.name, day)?;
        check_key(PRODUCT_SALES.name, &order.currency)?;
    }
    Ok(())
}

/// What one group commit writes, and under which claim.
#[derive(Debug)]
pub struct GroupCommit<'a> {
    /// The partition.
    pub partition: &'a PartitionId,
    /// Its claim: the commit is refused if a newer owner raised it.
    pub epoch: i64,
    /// The view writes, on the live tables.
    pub writes: &'a [Write],
    /// Timer changes.
    pub timers: &'a [eip_runtime::TimerChange],
    /// The partition's applied offset.
    pub up_to: Option<i64>,
    /// Fault injection: hold the transaction open this long.
    pub hold: std::time::Duration,
    /// The view versions `writes` were computed for: if another is live now, the commit is
    /// refused (transient) so they are computed again.
    pub expected: Option<&'a Versions>,
}

/// One group commit: the epoch check, the view writes on the live tables, the ledger.
pub fn commit(conn: &mut Connection, c: &GroupCommit<'_>) -> Result<Versions, ProcessError> {
    let GroupCommit {
        partition,
        epoch,
        writes,
        timers,
        up_to,
        hold,
        expected,
    } = *c;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| classify("group commit", e))?;
    check_epoch(&tx, partition, epoch)?;
    let versions = view_sqlite::versions(&tx).map_err(|e| classify("group commit", e))?;
    if let Some(expected) = expected
        && expected.live != versions.live
    {
        // A rebuild switched a view since the writes were computed: compute them again.
        return Err(ProcessError::transient(
            "a view switched to a rebuilt version during this group commit",
        ));
    }
    view_sqlite::execute(&tx, &versions, writes)?;
    write_ledger(&tx, partition, timers, up_to)?;
    if !hold.is_zero() {
        tracing::info!(topic = %partition.topic, partition = partition.partition, "group commit holding its transaction open (fault injection)");
        std::thread::sleep(hold);
    }
    tx.commit().map_err(|e| classify("group commit", e))?;
    Ok(versions)
}

/// One partition's state.
pub struct Partition {
    store: PartitionStore,
    projection: Projection,
}

/// Where a partition writes.
enum PartitionStore {
    /// The SQLite file: its connection, its claim, the view versions it last read.
    Sqlite {
        conn: Arc<Mutex<Connection>>,
        epoch: i64,
        versions: Versions,
    },
    /// The CQL cluster.
    Cql(Arc<ScyllaViews>),
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("projection", &self.projection.counts())
            .finish()
    }
}

/// The projector. See the crate docs.
#[derive(Debug, Clone)]
pub struct Projector {
    db: Arc<std::path::Path>,
    cached_orders: usize,
    hold_commit_open: std::time::Duration,
    /// The CQL store's settings, and its session once the first partition connects.
    cql: Option<(ScyllaSettings, Arc<tokio::sync::OnceCell<Arc<ScyllaViews>>>)>,
    /// Taken by each SQLite group commit: this process's partitions write one at a time.
    writer: Arc<Mutex<()>>,
    /// The topics it reads (events and outcomes): history, replayed from offset 0 by a new
    /// store or a rebuild.
    inputs: Vec<String>,
}

impl Projector {
    /// The projector for `config`: creates the views' tables if missing.
    pub fn new(config: &Config<ProjectorConfig>) -> Result<Projector, ConfigError> {
        let p = &config.processor;
        let cql = (p.store == StoreKind::Cql).then(|| {
            let settings = ScyllaSettings {
                nodes: p.cql_nodes.clone(),
                keyspace: p.keyspace.clone(),
                max_in_flight: p.cql_max_in_flight,
                ..ScyllaSettings::new(Vec::new())
            };
            (settings, Arc::new(tokio::sync::OnceCell::new()))
        });
        if cql.is_some() {
            return Ok(Projector {
                db: Arc::from(p.db.as_path()),
                cached_orders: p.cached_orders,
                hold_commit_open: p.hold_commit_open,
                cql,
                writer: Arc::default(),
                inputs: config.pipeline.inputs.clone(),
            });
        }
        connect(&p.db)
            .and_then(|c| {
                c.execute_batch(LEDGER_DDL)?;
                view_sqlite::migrate(&c)
            })
            .map_err(|e| ConfigError::invalid("db", format!("{}: {e}", p.db.display())))?;
        Ok(Projector {
            db: Arc::from(p.db.as_path()),
            cached_orders: p.cached_orders,
            hold_commit_open: p.hold_commit_open,
            cql: None,
            writer: Arc::default(),
            inputs: config.pipeline.inputs.clone(),
        })
    }
}

fn locked(conn: &Mutex<Connection>) -> Result<std::sync::MutexGuard<'_, Connection>, ProcessError> {
    conn.lock()
        .map_err(|_| ProcessError::fatal("views connection poisoned"))
}

impl Stateful for Projector {
    type Input = Input;
    type State = Partition;

    fn name(&self) -> &str {
        "projector"
    }

    /// A new views store (or a new replica's group) fills the views from offset 0.
    fn history_topics(&self) -> Vec<String> {
        self.inputs.clone()
    }

    async fn decode(&self, codec: &Codec, record: &Record) -> Result<Input, ProcessError> {
        decode(codec, record.payload.as_deref()).await
    }

    async fn open(&self, partition: &PartitionId) -> Result<Opened<Partition>, ProcessError> {
        if let Some((settings, session)) = &self.cql {
            // No claim: every CQL write is newest-wins by version, so a former owner's late
            // write can only lose, and a replay from the committed offset changes nothing.
            let views = session
                .get_or_try_init(|| async { ScyllaViews::connect(settings).await.map(Arc::new) })
                .await
                .map_err(ProcessError::from)?
                .clone();
            return Ok(Opened::fresh(Partition {
                store: PartitionStore::Cql(views),
                projection: Projection::default(),
            }));
        }
        let db = self.db.clone();
        let part = partition.clone();
        blocking(move || {
            let mut conn = connect(&db).map_err(|e| classify("opening the views", e))?;
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| classify("claiming a partition", e))?;
            let claimed = claim(&tx, &part)?;
            let versions =
                view_sqlite::versions(&tx).map_err(|e| classify("claiming a partition", e))?;
            tx.commit()
                .map_err(|e| classify("claiming a partition", e))?;
            Ok(Opened {
                state: Partition {
                    store: PartitionStore::Sqlite {
                        conn: Arc::new(Mutex::new(conn)),
                        epoch: claimed.epoch,
                        versions,
                    },
                    projection: Projection::default(),
                },
                timers: claimed.timers,
                applied: claimed.applied,
            })
        })
        .await
    }

    async fn process(
        &self,
        state: &mut Partition,
        input: Envelope<Input>,
        _effects: &mut Effects,
    ) -> Result<(), ProcessError> {
        let event = match &input.value {
            Input::Event(event) => event,
            Input::Outcome(outcome) => return state.projection.outcome(outcome),
            Input::Levels(levels) => return state.projection.levels(levels),
        };
        // An id no store could key (empty, oversized) is refused here, before the store is
        // asked for the order: a CQL server refuses such a read outright, which must not
        // stop the projector.
        check_key(ORDER_SUMMARY.name, &event.metadata().aggregate_id)?;
        match &mut state.store {
            PartitionStore::Sqlite { conn, versions, .. } => {
                let conn = locked(conn)?;
                match state.projection.event(&conn, versions, event) {
                    Err(ProcessError::Fatal { .. } | ProcessError::Transient { .. }) => {
                        // A rebuild may have switched the view and dropped the version this
                        // partition last read: read the versions again, and try once more.
                        *versions = view_sqlite::versions(&conn)
                            .map_err(|e| classify("reading the view versions", e))?;
                        state.projection.event(&conn, versions, event)
                    }
                    done => done,
                }
            }
            PartitionStore::Cql(views) => {
                let id = &event.metadata().aggregate_id;
                if !state.projection.knows(id)
                    && let Some(order) = views.order(id).await.map_err(ProcessError::from)?
                {
                    state.projection.remember(order);
                }
                state.projection.event_known(event)
            }
        }
    }

    async fn flush(&self, state: &mut Partition, flush: Flush<'_>) -> Result<(), ProcessError> {
        let (conn, epoch, last) = match &state.store {
            PartitionStore::Sqlite {
                conn,
                epoch,
                versions,
            } => (conn.clone(), *epoch, versions.clone()),
            PartitionStore::Cql(views) => {
                // A transient failure fails the flush, which the runtime retries with the same
                // staged changes; no offset is stored past rows that are not written.
                views
                    .apply(&state.projection.writes())
                    .await
                    .map_err(ProcessError::from)?;
                state.projection.committed(self.cached_orders);
                return Ok(());
            }
        };
        // A rebuild may have switched a view since the last commit. Its new version holds
        // what the rebuild wrote, not what this partition remembers writing: write every row
        // of the touched orders, and read the others from the new version when next needed.
        let now = {
            let c = locked(&conn)?;
            view_sqlite::versions(&c).map_err(|e| classify("reading the view versions", e))?
        };
        let switched = now.live != last.live;
        let writes = if switched {
            state.projection.writes_after_switch()
        } else {
            state.projection.writes()
        };
        let expected = now.clone();
        let partition = flush.partition.clone();
        let timers = flush.timers.to_vec();
        let up_to = flush.up_to;
        let hold = if writes.is_empty() {
            std::time::Duration::ZERO
        } else {
            self.hold_commit_open
        };
        let writer = self.writer.clone();
        let versions = blocking(move || {
            // One group commit at a time per process: SQLite takes one writer anyway, and a
            // partition waiting here queues at once instead of in SQLite's busy handler,
            // which sleeps in steps of up to 100 ms.
            let _turn = writer
                .lock()
                .map_err(|_| ProcessError::fatal("views writer lock poisoned"))?;
            let mut conn = locked(&conn)?;
            commit(
                &mut conn,
                &GroupCommit {
                    partition: &partition,
                    epoch,
                    writes: &writes,
                    timers: &timers,
                    up_to,
                    hold,
                    expected: Some(&expected),
                },
            )
        })
        .await?;
        if let PartitionStore::Sqlite { versions: v, .. } = &mut state.store {
            *v = versions;
        }
        if switched {
            state.projection.forget_untouched();
            tracing::info!(topic = %flush.partition.topic, partition = flush.partition.partition, "a view switched to a rebuilt version: wrote whole orders, cleared the cache");
        }
        state.projection.committed(self.cached_orders);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
