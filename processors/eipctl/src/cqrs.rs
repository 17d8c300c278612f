//! `eipctl projection`, `eipctl query` and `eipctl aggregate`: the CQRS side of the CLI.
//!
//! - `projection rebuild <view>` fills a new version of a view from offset 0 while the live one
//!   serves, with a progress bar, and switches readers to it atomically; Ctrl-C cancels it.
//!   `projection cancel` discards a rebuild that was killed, `projection drop` drops an old
//!   version, `projection status` lists each view's versions.
//! - `query` answers from the views file what the gateway's query API answers, as JSON.
//! - `aggregate history` prints an order's events from the orders journal, and `aggregate
//!   state --at-version N` its state after version N.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use eip_orders::aggregate::{Event, replay};
use eip_projector::rebuild::{Outcome, Plan, Progress, rebuild};
use eip_store::journal::Journal;
use eip_store::sqlite::connect;
use eip_store::view_sqlite::{self, Reader, find_view, stored_versions};
use eip_store::views::VIEWS;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::Endpoints;

/// A progress bar line: bar, percentage, counts, rate and ETA.
pub fn bar(p: &Progress) -> String {
    const WIDTH: usize = 30;
    let fraction = if p.total == 0 {
        1.0
    } else {
        (p.done as f64 / p.total as f64).min(1.0)
    };
    let filled = (fraction * WIDTH as f64).round() as usize;
    let eta = if p.rate > 0.0 {
        let secs = (p.total.saturating_sub(p.done) as f64 / p.rate).ceil() as u64;
        humantime::format_duration(Duration::from_secs(secs)).to_string()
    } else {
        "?".into()
    };
    format!(
        "[{}{}] {:>3.0}% {}/{} records, {:.0}/s, ETA {eta} (version {})",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        fraction * 100.0,
        p.done,
        p.total,
        p.rate,
        p.version
    )
}

/// `eipctl projection rebuild`.
pub async fn rebuild_view(
    ep: &Endpoints,
    db: &Path,
    view: &str,
    topics: Vec<String>,
) -> anyhow::Result<()> {
    let view = find_view(view)?;
    let registry = ep.registry()?;
    let plan = Plan {
        db: db.to_path_buf(),
        view,
        topics,
        kafka: eip_runtime::kafka::base_config(&ep.kafka()),
        codec: eip_schemas::Codec::new(registry),
    };
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let outcome = rebuild(plan, cancel, |p| {
        let line = bar(p);
        let mut err = std::io::stderr();
        // A terminal gets one line redrawn; a log gets a line per update.
        let _ = if tty {
            write!(err, "\r{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    })
    .await;
    if tty {
        eprintln!();
    }
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
    match view_sqlite::cancel_rebuild(&mut conn, view)? {
        Some(v) => println!("{}: discarded the rebuild of version {v}", view.name),
        None => println!("{}: no rebuild under way", view.name),
    }
    Ok(())
}

/// `eipctl projection drop`.
pub fn drop_view_version(db: &Path, view: &str, version: i64) -> anyhow::Result<()> {
    let view = find_view(view)?;
    let mut conn = open(db)?;
    view_sqlite::drop_version(&mut conn, view, version)?;
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
    /// Outcomes by correlation id.
    Correlation(String),
}

/// `eipctl query`: prints the answer as JSON, or fails saying what is missing.
pub fn query(db: &Path, q: Query) -> anyhow::Result<()> {
    if !db.exists() {
        bail!("{} does not exist", db.display());
    }
    let reader = Reader::open(db, 1)?;
    let answer = match q {
        Query::Order(id) => {
            json!(
                reader
                    .order(&id)?
                    .with_context(|| format!("no order {id:?} in the views"))?
            )
        }
        Query::Customer { id, limit, cursor } => {
            let page = reader.customer_orders_page(&id, cursor.as_deref(), limit)??;
            json!({ "customer_id": id, "items": page.items, "next_cursor": page.next_cursor })
        }
        Query::Sales { day, limit, cursor } => {
            let page = reader.product_sales_page(&day, cursor.as_deref(), limit)??;
            json!({ "day": day, "items": page.items, "next_cursor": page.next_cursor })
        }
        Query::Command(id) => json!(reader.command(&id)?.with_context(|| format!(
            "no outcome for command {id:?}: unknown, or not decided and projected yet"
        ))?),
        Query::Correlation(id) => {
            json!({ "correlation_id": id, "items": reader.commands_by_correlation(&id)? })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_shows_share_rate_and_eta() {
        let line = bar(&Progress {
            done: 500,
            total: 1_000,
            rate: 100.0,
            version: 2,
        });
        assert!(
            line.starts_with("[###############---------------]  50% 500/1000"),
            "{line}"
        );
        assert!(line.contains("100/s") && line.contains("ETA 5s") && line.contains("version 2"));
        let done = bar(&Progress {
            done: 10,
            total: 0,
            rate: 0.0,
            version: 3,
        });
        assert!(done.contains("100%") && done.contains("ETA ?"), "{done}");
    }
}
