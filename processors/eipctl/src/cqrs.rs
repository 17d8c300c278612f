//! `eipctl projection`, `eipctl query` and `eipctl aggregate`: the CQRS side of the CLI.
//!
//! - `projection rebuild <view>` fills a new version of a view from offset 0 while the live one
//!   serves, with a progress bar, and switches readers to it atomically; Ctrl-C cancels it.
//!   `projection cancel` discards a rebuild that was killed, `projection drop` drops an old
//!   version, `projection status` lists each view's versions.
//! - `query` answers from the views (the SQLite file, or the CQL cluster the projector writes
//!   with `store = "cql"`) what the gateway's query API answers, as JSON.
//! - `aggregate history` prints an order's events from the orders journal, and `aggregate
//!   state --at-version N` its state after version N.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use eip_orders::aggregate::{Event, replay};
use eip_projector::rebuild::{Outcome, Plan, rebuild};
use eip_store::journal::Journal;
use eip_store::sqlite::connect;
use eip_store::view_any::AnyViews;
use eip_store::view_rebuild::{self, find_view, stored_versions};
use eip_store::view_scylla::{ScyllaSettings, ScyllaViews};
use eip_store::view_sqlite::{self, Reader};
use eip_store::view_store::{SqliteViews, ViewStore};
use eip_store::views::VIEWS;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::Endpoints;

/// `eipctl projection rebuild`.
pub async fn rebuild_view(
    ep: &Endpoints,
    db: &Path,
    view: &str,
    topics: Vec<String>,
    accept_truncated_history: bool,
    hold_after_begin: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let view = find_view(view)?;
    let registry = ep.registry()?;
    let plan = Plan {
        db: db.to_path_buf(),
        view,
        topics,
        kafka: ep.kafka(),
        accept_truncated_history,
        hold_after_begin: hold_after_begin.unwrap_or_default(),
        codec: eip_schemas::Codec::new(registry),
    };
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    let bar = crate::progress::bar(0);
    bar.set_prefix("records");
    let outcome = rebuild(plan, cancel, |p| {
        bar.set_length(p.total);
        bar.set_position(p.done);
        bar.set_message(format!("(version {})", p.version));
    })
    .await;
    bar.abandon();
    match outcome? {
        Outcome::Switched {
            from,
            to,
            records,
            skipped,
        } => {
            println!(
                "{}: switched readers from version {from} to {to} after {records} records \
                 ({skipped} skipped: the live projector dead-letters them too); version {from} \
                 is kept: `eipctl projection drop {} --version {from}` drops it",
                view.name, view.name
            );
        }
        Outcome::Cancelled { live } => {
            println!(
                "{}: rebuild cancelled; its tables are dropped and version {live} kept serving",
                view.name
            );
        }
    }
    Ok(())
}

/// `eipctl projection cancel`.
pub fn cancel_view(db: &Path, view: &str) -> anyhow::Result<()> {
    let view = find_view(view)?;
    let mut conn = open(db)?;
    match view_rebuild::cancel_rebuild(&mut conn, view, None)? {
        Some(v) => println!("{}: discarded the rebuild of version {v}", view.name),
        None => println!("{}: no rebuild under way", view.name),
    }
    Ok(())
}

/// `eipctl projection drop`.
pub fn drop_view_version(db: &Path, view: &str, version: i64) -> anyhow::Result<()> {
    let view = find_view(view)?;
    let mut conn = open(db)?;
    view_rebuild::drop_version(&mut conn, view, version)?;
    println!("{}: dropped version {version}", view.name);
    Ok(())
}

/// `eipctl projection status`.
pub fn status(db: &Path) -> anyhow::Result<()> {
    let conn = open(db)?;
    let v = view_sqlite::versions(&conn)?;
    for view in &VIEWS {
        let stored = stored_versions(&conn, view)?;
        println!(
            "{:<20} live {} building {} stored {:?}",
            view.name,
            v.live.get(view.name).copied().unwrap_or(1),
            v.building
                .get(view.name)
                .map_or("-".to_string(), i64::to_string),
            stored
        );
    }
    Ok(())
}

fn open(db: &Path) -> anyhow::Result<rusqlite::Connection> {
    if !db.exists() {
        bail!("{} does not exist", db.display());
    }
    let conn = connect(db).with_context(|| format!("opening {}", db.display()))?;
    view_sqlite::migrate(&conn)?;
    Ok(conn)
}

/// What `eipctl query` asks.
#[derive(Debug, Clone)]
pub enum Query {
    /// An order by id.
    Order(String),
    /// A customer's orders.
    Customer {
        /// The customer.
        id: String,
        /// Page size.
        limit: u32,
        /// The previous page's cursor.
        cursor: Option<String>,
    },
    /// A day's sales.
    Sales {
        /// YYYY-MM-DD.
        day: String,
        /// Page size.
        limit: u32,
        /// The previous page's cursor.
        cursor: Option<String>,
    },
    /// A command's outcome.
    Command(String),
    /// A SKU's stock level.
    Inventory(String),
    /// Outcomes by correlation id, a page at a time.
    Correlation {
        /// The correlation id.
        id: String,
        /// Page size.
        limit: u32,
        /// The previous page's cursor.
        cursor: Option<String>,
    },
}

/// Where `eipctl query` reads the views.
#[derive(Debug, Clone)]
pub enum Views {
    /// The projector's SQLite file.
    Sqlite(PathBuf),
    /// The CQL cluster the projector writes with `store = "cql"`: contact points, keyspace.
    Cql {
        /// `host:port` of some nodes.
        nodes: Vec<String>,
        /// The views' keyspace (it must exist; a query never creates one).
        keyspace: String,
    },
}

impl Views {
    /// Opens the store, or fails saying which one could not be opened.
    pub async fn open(&self) -> anyhow::Result<AnyViews> {
        Ok(match self {
            Views::Sqlite(db) => {
                if !db.exists() {
                    bail!("{} does not exist", db.display());
                }
                AnyViews::Sqlite(SqliteViews::open(db, 1)?)
            }
            Views::Cql { nodes, keyspace } => {
                let settings = ScyllaSettings {
                    keyspace: keyspace.clone(),
                    connect_timeout: Duration::from_secs(5),
                    must_exist: true,
                    ..ScyllaSettings::new(nodes.clone())
                };
                let views = ScyllaViews::connect(&settings)
                    .await
                    .with_context(|| format!("reading the views from the CQL cluster {nodes:?}"))?;
                AnyViews::Cql(Box::new(views))
            }
        })
    }
}

/// `eipctl query`: prints the answer as JSON, or fails saying what is missing.
pub async fn query(views: &Views, q: Query) -> anyhow::Result<()> {
    let store = views.open().await?;
    let answer = match q {
        Query::Order(id) => {
            json!(
                store
                    .order(&id)
                    .await?
                    .with_context(|| format!("no order {id:?} in the views"))?
            )
        }
        Query::Customer { id, limit, cursor } => {
            let page = store
                .customer_orders(&id, cursor.as_deref(), limit)
                .await??;
            json!({ "customer_id": id, "items": page.items, "next_cursor": page.next_cursor })
        }
        Query::Sales { day, limit, cursor } => {
            let page = store
                .product_sales(&day, cursor.as_deref(), limit)
                .await??;
            json!({ "day": day, "items": page.items, "next_cursor": page.next_cursor })
        }
        Query::Command(id) => json!(store.command(&id).await?.with_context(|| format!(
            "no outcome for command {id:?}: unknown, or not decided and projected yet"
        ))?),
        Query::Inventory(sku) => json!(store.inventory(&sku).await?.with_context(|| format!(
            "no stock level for SKU {sku:?}: no reservation or release of it projected yet"
        ))?),
        Query::Correlation { id, limit, cursor } => {
            let page = store
                .commands_by_correlation(&id, cursor.as_deref(), limit)
                .await??;
            json!({ "correlation_id": id, "items": page.items, "next_cursor": page.next_cursor })
        }
    };
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

/// An order's events from the orders journal at `db`.
fn history(db: &Path, id: &str) -> anyhow::Result<Vec<Event>> {
    if !db.exists() {
        bail!("{} does not exist", db.display());
    }
    let conn = connect(db)?;
    let events = Journal::history(&conn, id)?
        .iter()
        .map(|json| serde_json::from_str::<Event>(json))
        .collect::<Result<Vec<_>, _>>()
        .context("a journaled event does not parse")?;
    if events.is_empty() {
        bail!("no order {id:?} in the journal");
    }
    Ok(events)
}

/// `eipctl aggregate history`: one JSON line per event, oldest first.
pub fn aggregate_history(db: &Path, id: &str) -> anyhow::Result<()> {
    for event in history(db, id)? {
        println!("{}", serde_json::to_string(&event)?);
    }
    Ok(())
}

/// `eipctl aggregate state`: the order after version `at` (the latest when None).
pub fn aggregate_state(db: &Path, id: &str, at: Option<i64>) -> anyhow::Result<()> {
    let events = history(db, id)?;
    let last = events.last().map_or(0, Event::version);
    let at = at.unwrap_or(last);
    if !(1..=last).contains(&at) {
        bail!("{id} has versions 1 to {last}; there is no version {at}");
    }
    let order = replay(None, events.iter().take_while(|e| e.version() <= at))
        .with_context(|| format!("{id} has no state at version {at}"))?;
    println!("{}", serde_json::to_string_pretty(&order)?);
    Ok(())
}

/// What a demo run expects the views to hold, as `eipctl orders send --report` writes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Expectation {
    /// Distinct command ids sent.
    pub commands: u64,
    /// Commands to be accepted.
    pub accepted: u64,
    /// Commands to be rejected, by reason code.
    pub rejected: std::collections::BTreeMap<String, u64>,
    /// Orders by final status.
    pub statuses: std::collections::BTreeMap<String, u64>,
    /// Poison records sent to the commands topic.
    pub poison: u64,
    /// Commands sent per way in.
    pub per_channel: std::collections::BTreeMap<String, u64>,
    /// Requests the gateway refused on purpose: status and reason.
    pub refused: Vec<(u16, String)>,
    /// An order to show.
    pub sample_order: Option<String>,
    /// What the sagas of the confirmed orders should end as, when they run.
    #[serde(default)]
    pub sagas: Option<SagaExpectation>,
}

/// What the sagas should end as: computed from the injected failure rates with the same
/// hash the participants use (`eip_saga::actions::injected_failure`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct SagaExpectation {
    /// Sagas by final status.
    pub statuses: std::collections::BTreeMap<String, u64>,
    /// Failed sagas by the step that failed.
    pub failed_steps: std::collections::BTreeMap<String, u64>,
}

impl Expectation {
    /// Adds the sagas: every confirmed order starts one, which ends completed (a
    /// `CompleteOrder` accepted, the order `completed`) or compensated (a `CancelOrder`
    /// accepted, the order `cancelled`), by the injected rates of `participants`.
    pub fn with_sagas(
        mut self,
        report: &crate::orders::SendReport,
        def: &eip_saga::definition::Definition,
        rates: &std::collections::BTreeMap<String, f64>,
    ) -> Expectation {
        let mut sagas = SagaExpectation::default();
        for (id, f) in &report.script.finals {
            if f.status != "confirmed" {
                continue;
            }
            let (status, order) = match eip_saga::actions::injected_failure(def, rates, id) {
                None => ("completed", "completed"),
                Some(i) => {
                    *sagas
                        .failed_steps
                        .entry(def.steps[i].name.clone())
                        .or_default() += 1;
                    ("compensated", "cancelled")
                }
            };
            *sagas.statuses.entry(status.into()).or_default() += 1;
            if let Some(n) = self.statuses.get_mut("confirmed") {
                *n -= 1;
            }
            *self.statuses.entry(order.into()).or_default() += 1;
            // The saga's own command to the aggregate, accepted.
            self.commands += 1;
            self.accepted += 1;
        }
        self.statuses.retain(|_, n| *n > 0);
        self.sagas = Some(sagas);
        self
    }
}

impl Expectation {
    /// The expectation of a sent script.
    pub fn of(report: &crate::orders::SendReport) -> Expectation {
        let script = &report.script;
        let (accepted, rejected) = script.expected_tally();
        let mut statuses = std::collections::BTreeMap::new();
        for f in script.finals.values() {
            *statuses.entry(f.status.to_string()).or_default() += 1;
        }
        Expectation {
            commands: script.outcomes.len() as u64,
            accepted,
            rejected: rejected
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            statuses,
            poison: script.poison,
            per_channel: report
                .per_channel
                .iter()
                .map(|(c, n)| (c.label().to_string(), *n))
                .collect(),
            refused: report.refused.clone(),
            sample_order: script
                .finals
                .iter()
                .find(|(_, f)| f.status == "confirmed")
                .map(|(id, _)| id.clone()),
            sagas: None,
        }
    }
}

/// What the views hold, counted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Tally {
    commands: u64,
    accepted: u64,
    rejected: std::collections::BTreeMap<String, u64>,
    statuses: std::collections::BTreeMap<String, u64>,
}

fn tally(conn: &rusqlite::Connection) -> rusqlite::Result<Tally> {
    let mut t = Tally::default();
    let mut stmt = conn.prepare(
        "SELECT accepted, COALESCE(reason_code, ''), COUNT(*) FROM command_status GROUP BY 1, 2",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, bool>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (accepted, code, n) = row?;
        let n = n as u64;
        t.commands += n;
        if accepted {
            t.accepted += n;
        } else {
            *t.rejected.entry(code).or_default() += n;
        }
    }
    let mut stmt = conn.prepare("SELECT status, COUNT(*) FROM order_summary GROUP BY status")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (status, n) = row?;
        t.statuses.insert(status, n as u64);
    }
    Ok(t)
}

/// `eipctl query summary`: waits until the views hold what `expect` says (or `wait` runs
/// out), then prints what they hold, samples of each view, and where to query next. Fails
/// when they differ.
pub async fn summary(
    db: &Path,
    expect: &Expectation,
    wait: Duration,
    gateway: &str,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + wait;
    let want = Tally {
        commands: expect.commands,
        accepted: expect.accepted,
        rejected: expect.rejected.clone(),
        statuses: expect.statuses.clone(),
    };
    let got = loop {
        let got = if db.exists() {
            let conn = connect(db)?;
            view_sqlite::migrate(&conn)?;
            tally(&conn)?
        } else {
            Tally::default()
        };
        if got == want || std::time::Instant::now() >= deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!("commands sent, by way in:");
    for (channel, n) in &expect.per_channel {
        println!("  {channel:<36} {n:>7}");
    }
    println!("refused at the HTTP edge (never forwarded):");
    for (status, reason) in &expect.refused {
        println!("  {status} {reason}");
    }
    println!(
        "commands decided: {} of {} (accepted {}, rejected {})",
        got.commands,
        expect.commands,
        got.accepted,
        got.rejected.values().sum::<u64>()
    );
    for (code, n) in &got.rejected {
        let e = expect.rejected.get(code).copied().unwrap_or(0);
        println!("  rejected {code:<18} {n:>6}   (expected {e})");
    }
    println!("orders by status:");
    for (status, n) in &got.statuses {
        let e = expect.statuses.get(status).copied().unwrap_or(0);
        println!("  {status:<10} {n:>6}   (expected {e})");
    }
    let reader = Reader::open(db, 1)?;
    if let Some(id) = &expect.sample_order
        && let Some(order) = reader.order(id)?
    {
        println!(
            "order_summary   {}: {} {} lines, {} units, {} {} cents, version {}, confirmed {}",
            order.order_id,
            order.status,
            order.lines.len(),
            order.units,
            order.total_cents,
            order.currency,
            order.version,
            order.confirmed_day.as_deref().unwrap_or("-")
        );
        let page = reader.customer_orders_page(&order.customer_id, None, 3)??;
        println!(
            "orders_by_customer {}: {} shown, newest first: {}{}",
            order.customer_id,
            page.items.len(),
            page.items
                .iter()
                .map(|o| format!("{} ({})", o.order_id, o.status))
                .collect::<Vec<_>>()
                .join(", "),
            if page.next_cursor.is_some() {
                ", more…"
            } else {
                ""
            }
        );
        if let Some(day) = &order.confirmed_day {
            let sales = reader.product_sales(day, None, 500)?;
            let (units, revenue): (i64, i64) = sales
                .iter()
                .fold((0, 0), |(u, r), s| (u + s.units, r + s.revenue_cents));
            println!("product_sales {day}: {units} units, {revenue} cents in total");
            for s in sales.iter().take(5) {
                println!(
                    "  {:<6} {:>6} units {:>9} {} cents over {} orders",
                    s.sku, s.units, s.revenue_cents, s.currency, s.orders
                );
            }
            println!("try:");
            println!("  curl {gateway}/v1/orders/{}", order.order_id);
            println!(
                "  curl '{gateway}/v1/customers/{}/orders?limit=5'",
                order.customer_id
            );
            println!("  curl {gateway}/v1/sales/{day}");
            println!(
                "  curl {gateway}/v1/commands/{}",
                format!("{}/c1", order.order_id).replace('/', "%2F")
            );
            println!(
                "  curl '{gateway}/v1/commands?correlation_id=corr-{}'",
                order.order_id
            );
            println!(
                "  eipctl query order {} --db {}",
                order.order_id,
                db.display()
            );
        }
    }
    if got != want {
        bail!(
            "the views differ from what was sent: decided {} of {} commands; accepted {} (expected \
             {}); rejected {:?} (expected {:?}); orders {:?} (expected {:?})",
            got.commands,
            expect.commands,
            got.accepted,
            expect.accepted,
            got.rejected,
            expect.rejected,
            got.statuses,
            expect.statuses
        );
    }
    Ok(())
}
