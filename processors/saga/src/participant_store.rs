//! A participant's SQLite store: its resources (stock per SKU, points per customer, payments,
//! what is held per order) and its decision per (saga, step), beside eip-store's partition
//! ledger. Plain tables an analyst can read with `sqlite3`:
//!
//! ```sql
//! saga_steps(saga_id, step, state, reference, amount, reason, reason_code, order_json,
//!            correlation_id, causation_id, decided_at, compensated_at)
//! stock(sku, available, reserved)         reservations(order_id, sku, quantity)
//! points(customer_id, balance)            redemptions(order_id, customer_id, points)
//! payments(order_id, authorized_cents, captured_cents, refunded_cents, voided)
//! ```
//!
//! Stock and balances are shared by every partition (an order's SKUs are anyone's), so a
//! decision is made and written in one `BEGIN IMMEDIATE` transaction, *before* its event is
//! published: the transaction serializes the partitions' workers, checks the partition's
//! epoch (a former owner is refused), reads the decision row (a redelivered trigger finds it
//! and publishes the same event again), loads the resources, decides with
//! [`crate::actions`], and writes both. A step is decided once, and undone once.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use eip_runtime::{Flush, Opened, PartitionId, ProcessError};
use eip_schemas::types::OrderSnapshot;
use eip_store::sqlite::{
    Claim, LEDGER_DDL, blocking, check_epoch, claim_partition, classify, connect,
};
use rusqlite::{OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use crate::actions::{self, Decision, Payment, Perform, Policy, Resources, Stock, Undo};

const DDL: &str = "
CREATE TABLE IF NOT EXISTS saga_steps (
    saga_id TEXT NOT NULL, step TEXT NOT NULL, state TEXT NOT NULL,
    reference TEXT NOT NULL, amount INTEGER NOT NULL, reason TEXT NOT NULL, reason_code TEXT,
    order_json TEXT NOT NULL, correlation_id TEXT NOT NULL, causation_id TEXT,
    decided_at INTEGER NOT NULL, compensated_at INTEGER, levels_json TEXT,
    PRIMARY KEY (saga_id, step)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stock (
    sku TEXT PRIMARY KEY, available INTEGER NOT NULL, reserved INTEGER NOT NULL,
    changes INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reservations (
    order_id TEXT NOT NULL, sku TEXT NOT NULL, quantity INTEGER NOT NULL,
    PRIMARY KEY (order_id, sku)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS points (
    customer_id TEXT PRIMARY KEY, balance INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS redemptions (
    order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, points INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS payments (
    order_id TEXT PRIMARY KEY, authorized_cents INTEGER NOT NULL, captured_cents INTEGER NOT NULL,
    refunded_cents INTEGER NOT NULL, voided INTEGER NOT NULL) WITHOUT ROWID;
";

/// A step's decision, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRow {
    /// `completed`, `failed`, `compensated`, or `blocked` (never to be performed).
    pub state: String,
    /// A completion's reference.
    pub reference: String,
    /// Points or an amount.
    pub amount: i64,
    /// The failure's or compensation's reason.
    pub reason: String,
    /// A failure's code.
    pub reason_code: Option<String>,
    /// The order as the saga carried it.
    pub order: OrderSnapshot,
    /// The saga's correlation id.
    pub correlation_id: String,
    /// The event that caused the decision.
    pub causation_id: Option<String>,
    /// When it was decided (ms since the Unix epoch).
    pub decided_at: i64,
    /// When it was undone, if it was.
    pub compensated_at: Option<i64>,
    /// The stock levels the decision left, for an inventory step (its reservation, then its
    /// release): published beside the step's event, and again with a repeat.
    pub levels: Option<Vec<StockLevel>>,
}

/// What a participant asks its store to decide.
#[derive(Debug, Clone)]
pub enum Request {
    /// Perform a step.
    Perform {
        /// The action.
        action: Perform,
        /// The order the saga carries.
        order: OrderSnapshot,
    },
    /// The step's deadline passed, or an operator started the compensation: fail it, unless
    /// it was decided.
    TimedOut {
        /// Set when an operator asked (their reason, recorded with code `operator`); None for
        /// the monitor's deadline (code `timeout`).
        operator: Option<String>,
    },
    /// Undo the step.
    Compensate {
        /// The compensation.
        undo: Undo,
        /// Why (the failure that started the compensations).
        reason: String,
    },
    /// The step's trigger step failed: never perform it.
    Block,
    /// The step's completion event would be larger than its topic takes: fail the step
    /// (code `too_large`), unless it was decided.
    TooLarge {
        /// How large, against what.
        reason: String,
    },
    /// The orders aggregate refused the step's command: a completion that was only requested
    /// becomes a failure.
    Refused {
        /// The aggregate's reason.
        reason: String,
    },
}

/// What the store decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Publish the event the row stands for; `fresh` when decided now (false: a repeat).
    Publish {
        /// The row.
        row: Box<StepRow>,
        /// Decided by this request.
        fresh: bool,
    },
    /// Nothing to publish, and why.
    Nothing(&'static str),
}

/// One partition's handle on the store.
#[derive(Debug)]
pub struct Partition {
    conn: Arc<Mutex<rusqlite::Connection>>,
    partition: PartitionId,
    /// The epoch this owner claimed.
    pub epoch: i64,
}

impl Partition {
    /// The partition this state is for.
    pub fn partition(&self) -> &PartitionId {
        &self.partition
    }
}

/// The store: a file.
#[derive(Debug, Clone)]
pub struct Store {
    path: Arc<Path>,
    policy: Policy,
}

/// The stored id of a step of saga `saga` (the end compensation's step is `end`).
#[derive(Debug, Clone)]
pub struct StepId {
    /// The saga (order) id.
    pub saga_id: String,
    /// The step name.
    pub step: String,
    /// The saga's correlation id.
    pub correlation_id: String,
    /// The event that caused the request.
    pub causation_id: Option<String>,
    /// The time of the request (ms since the Unix epoch).
    pub at: i64,
}

impl Store {
    /// Opens (creating) the file with its tables.
    pub fn open(path: &Path, policy: Policy) -> rusqlite::Result<Store> {
        let conn = connect(path)?;
        conn.execute_batch(DDL)?;
        // Files from before stock levels were published lack two columns. One transaction,
        // so two processes opening the same file don't both add them.
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let added = (|| {
            for (table, column, ty) in [
                ("saga_steps", "levels_json", "TEXT"),
                ("stock", "changes", "INTEGER NOT NULL DEFAULT 0"),
            ] {
                let has: bool = conn.query_row(
                    &format!(
                        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1)"
                    ),
                    [column],
                    |r| r.get(0),
                )?;
                if !has {
                    conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))?;
                }
            }
            Ok::<_, rusqlite::Error>(())
        })();
        conn.execute_batch(if added.is_ok() { "COMMIT" } else { "ROLLBACK" })?;
        added?;
        conn.execute_batch(LEDGER_DDL)?;
        Ok(Store {
            path: Arc::from(path),
            policy,
        })
    }

    /// Claims `partition`: raises its epoch; loads its applied offset and timers.
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
            },
            timers,
            applied,
        })
    }

    /// Decides `request` for `id` in one transaction (see the module docs).
    pub async fn decide(
        &self,
        state: &Partition,
        id: StepId,
        request: Request,
    ) -> Result<Verdict, ProcessError> {
        let conn = state.conn.clone();
        let partition = state.partition.clone();
        let epoch = state.epoch;
        let policy = self.policy.clone();
        blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| ProcessError::fatal("store connection poisoned"))?;
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| classify("deciding a saga step", e))?;
            check_epoch(&tx, &partition, epoch)?;
            let verdict = decide_in(&tx, &policy, &id, request)
                .map_err(|e| classify("deciding a saga step", e))?;
            tx.commit()
                .map_err(|e| classify("deciding a saga step", e))?;
            Ok(verdict)
        })
        .await
    }

    /// The group commit: the partition's applied offset and timer changes, if it still owns
    /// the partition.
    pub async fn flush(&self, state: &Partition, flush: &Flush<'_>) -> Result<(), ProcessError> {
        eip_store::sqlite::group_commit(
            state.conn.clone(),
            flush.partition,
            state.epoch,
            flush.timers,
            flush.up_to,
            |_| Ok(()),
        )
        .await
    }

    /// Every SKU's stock, for reports and tests.
    pub fn stock(&self) -> rusqlite::Result<BTreeMap<String, Stock>> {
        let conn = connect(&self.path)?;
        let mut stmt = conn.prepare("SELECT sku, available, reserved, changes FROM stock")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                Stock {
                    available: r.get(1)?,
                    reserved: r.get(2)?,
                    changes: r.get(3)?,
                },
            ))
        })?;
        rows.collect()
    }

    /// Every customer's points balance.
    pub fn balances(&self) -> rusqlite::Result<BTreeMap<String, i64>> {
        let conn = connect(&self.path)?;
        let mut stmt = conn.prepare("SELECT customer_id, balance FROM points")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }

    /// Every order's payment.
    pub fn payments(&self) -> rusqlite::Result<BTreeMap<String, Payment>> {
        let conn = connect(&self.path)?;
        let mut stmt = conn.prepare(
            "SELECT order_id, authorized_cents, captured_cents, refunded_cents, voided FROM payments",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                Payment {
                    authorized_cents: r.get(1)?,
                    captured_cents: r.get(2)?,
                    refunded_cents: r.get(3)?,
                    voided: r.get(4)?,
                },
            ))
        })?;
        rows.collect()
    }
}

fn empty_order() -> OrderSnapshot {
    OrderSnapshot {
        customer_id: String::new(),
        lines: Vec::new(),
        total_cents: 0,
        currency: String::new(),
    }
}

fn load_row(tx: &Transaction<'_>, id: &StepId) -> rusqlite::Result<Option<StepRow>> {
    tx.prepare_cached(
        "SELECT state, reference, amount, reason, reason_code, order_json, correlation_id,
                causation_id, decided_at, compensated_at, levels_json
         FROM saga_steps WHERE saga_id = ?1 AND step = ?2",
    )?
    .query_row(params![id.saga_id, id.step], |r| {
        let json: String = r.get(5)?;
        Ok(StepRow {
            state: r.get(0)?,
            reference: r.get(1)?,
            amount: r.get(2)?,
            reason: r.get(3)?,
            reason_code: r.get(4)?,
            order: serde_json::from_str(&json).unwrap_or_else(|_| empty_order()),
            correlation_id: r.get(6)?,
            causation_id: r.get(7)?,
            decided_at: r.get(8)?,
            compensated_at: r.get(9)?,
            levels: r
                .get::<_, Option<String>>(10)?
                .and_then(|j| serde_json::from_str(&j).ok()),
        })
    })
    .optional()
}

fn save_row(tx: &Transaction<'_>, id: &StepId, row: &StepRow) -> rusqlite::Result<()> {
    let json = serde_json::to_string(&row.order).unwrap_or_default();
    let levels = row
        .levels
        .as_ref()
        .and_then(|l| serde_json::to_string(l).ok());
    tx.prepare_cached(
        "INSERT INTO saga_steps (saga_id, step, state, reference, amount, reason, reason_code,
             order_json, correlation_id, causation_id, decided_at, compensated_at, levels_json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (saga_id, step) DO UPDATE SET state = excluded.state,
             reference = excluded.reference, amount = excluded.amount, reason = excluded.reason,
             reason_code = excluded.reason_code, compensated_at = excluded.compensated_at,
             levels_json = excluded.levels_json",
    )?
    .execute(params![
        id.saga_id,
        id.step,
        row.state,
        row.reference,
        row.amount,
        row.reason,
        row.reason_code,
        json,
        row.correlation_id,
        row.causation_id,
        row.decided_at,
        row.compensated_at,
        levels
    ])?;
    Ok(())
}

fn decide_in(
    tx: &Transaction<'_>,
    policy: &Policy,
    id: &StepId,
    request: Request,
) -> rusqlite::Result<Verdict> {
    let existing = load_row(tx, id)?;
    let fresh = |row: StepRow| -> rusqlite::Result<Verdict> {
        save_row(tx, id, &row)?;
        Ok(Verdict::Publish {
            row: Box::new(row),
            fresh: true,
        })
    };
    let new_row = |state: &str, order: OrderSnapshot| StepRow {
        state: state.into(),
        reference: String::new(),
        amount: 0,
        reason: String::new(),
        reason_code: None,
        order,
        correlation_id: id.correlation_id.clone(),
        causation_id: id.causation_id.clone(),
        decided_at: id.at,
        compensated_at: None,
        levels: None,
    };
    match (request, existing) {
        (Request::Perform { action, order }, None) => {
            let mut res = load_resources(tx, &id.saga_id, &order)?;
            let before = res.stock.clone();
            let decision =
                actions::perform(action, policy, &mut res, &id.saga_id, &id.step, &order);
            save_resources(tx, &id.saga_id, &order, &res)?;
            let levels = changed_levels(&before, &res);
            let mut row = new_row("completed", order);
            row.levels = levels;
            match decision {
                Decision::Completed { reference, amount } => {
                    row.reference = reference;
                    row.amount = amount;
                }
                Decision::Failed { code, reason } => {
                    row.state = "failed".into();
                    row.reason = reason;
                    row.reason_code = Some(code);
                }
                Decision::Compensated { reason } => {
                    row.state = "compensated".into();
                    row.reason = reason;
                }
            }
            fresh(row)
        }
        (Request::Perform { .. }, Some(row)) if row.state == "compensated" => {
            Ok(Verdict::Nothing("the step was undone already"))
        }
        (Request::Perform { .. }, Some(row)) if row.state == "blocked" => {
            Ok(Verdict::Nothing("the step before it failed"))
        }
        (Request::Block, None) => {
            save_row(tx, id, &new_row("blocked", empty_order()))?;
            Ok(Verdict::Nothing("blocked: the step before it failed"))
        }
        (Request::Block, Some(_)) => {
            Ok(Verdict::Nothing("decided before the step before it failed"))
        }
        (Request::Perform { .. }, Some(row)) => Ok(Verdict::Publish {
            row: Box::new(row),
            fresh: false,
        }),
        (Request::TimedOut { operator }, None) => {
            let mut row = new_row("failed", empty_order());
            match operator {
                Some(reason) => {
                    row.reason = reason.clone();
                    row.reason_code = Some("operator".into());
                }
                None => {
                    row.reason =
                        "the saga monitor's deadline passed before the step was performed".into();
                    row.reason_code = Some("timeout".into());
                }
            }
            fresh(row)
        }
        (Request::TooLarge { reason }, None) => {
            let mut row = new_row("failed", empty_order());
            row.reason = reason;
            row.reason_code = Some("too_large".into());
            fresh(row)
        }
        (Request::TooLarge { .. }, Some(row)) if row.state == "compensated" => {
            Ok(Verdict::Nothing("the step was undone already"))
        }
        (Request::TooLarge { .. }, Some(row)) if row.state != "blocked" => Ok(Verdict::Publish {
            row: Box::new(row),
            fresh: false,
        }),
        (Request::TooLarge { .. }, Some(_)) => Ok(Verdict::Nothing("never performed: blocked")),
        // Decided before its timeout: publish that decision again (a repeat, same id), so a
        // decision whose event was lost (killed after the commit, before the ack) goes out
        // when the monitor's timeout comes, instead of leaving the saga waiting.
        (Request::TimedOut { .. }, Some(row)) if row.state != "blocked" => Ok(Verdict::Publish {
            row: Box::new(row),
            fresh: false,
        }),
        (Request::TimedOut { .. }, Some(_)) => Ok(Verdict::Nothing("never performed: blocked")),
        (Request::Compensate { .. }, Some(row)) if row.state == "blocked" => {
            Ok(Verdict::Nothing("it was never performed"))
        }
        (Request::Compensate { undo, reason }, Some(mut row)) if row.state == "completed" => {
            let order = row.order.clone();
            let mut res = load_resources(tx, &id.saga_id, &order)?;
            let before = res.stock.clone();
            let decision = actions::compensate(undo, &mut res, &id.saga_id);
            save_resources(tx, &id.saga_id, &order, &res)?;
            row.levels = changed_levels(&before, &res);
            row.state = "compensated".into();
            // The event says why (the failure that started the wave); what was undone is
            // the row's reference.
            row.reference = match decision {
                Decision::Compensated { reason: done } => done,
                other => format!("{other:?}"),
            };
            row.reason = reason;
            row.compensated_at = Some(id.at);
            fresh(row)
        }
        (Request::Compensate { .. }, Some(row)) if row.state == "compensated" => {
            Ok(Verdict::Publish {
                row: Box::new(row),
                fresh: false,
            })
        }
        (Request::Compensate { .. }, Some(_)) => Ok(Verdict::Nothing("it failed: nothing to undo")),
        (Request::Compensate { undo, reason }, None) => {
            // Undone before it was done (its own trigger has not reached this participant):
            // nothing is held; the compensation is still published so the wave goes on, and
            // the step will not be performed when its trigger comes.
            let mut row = new_row("compensated", empty_order());
            row.reference = format!("nothing was done ({undo:?})");
            row.reason = reason;
            row.compensated_at = Some(id.at);
            fresh(row)
        }
        (Request::Refused { reason }, Some(mut row)) if row.state == "completed" => {
            row.state = "failed".into();
            row.reason = reason;
            row.reason_code = Some("refused".into());
            fresh(row)
        }
        // Refused again (the outcome redelivered): publish the failure again.
        (Request::Refused { .. }, Some(row)) if row.state == "failed" => Ok(Verdict::Publish {
            row: Box::new(row),
            fresh: false,
        }),
        (Request::Refused { .. }, _) => Ok(Verdict::Nothing("no requested step to refuse")),
    }
}

/// One SKU's stock right after a decision: what `eip.inventory.StockLevelChanged` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLevel {
    /// Stock keeping unit.
    pub sku: String,
    /// Units that can still be reserved.
    pub available: i64,
    /// Units held for orders.
    pub reserved: i64,
    /// The SKU's change count after the decision.
    pub sequence: i64,
}

/// The levels of the SKUs whose stock the decision changed (None when it changed none).
fn changed_levels(before: &BTreeMap<String, Stock>, after: &Resources) -> Option<Vec<StockLevel>> {
    let levels: Vec<StockLevel> = after
        .stock
        .iter()
        .filter(|(sku, s)| before.get(*sku) != Some(*s))
        .map(|(sku, s)| StockLevel {
            sku: sku.clone(),
            available: s.available,
            reserved: s.reserved,
            sequence: s.changes,
        })
        .collect();
    (!levels.is_empty()).then_some(levels)
}

fn load_resources(
    tx: &Transaction<'_>,
    saga_id: &str,
    order: &OrderSnapshot,
) -> rusqlite::Result<Resources> {
    let mut res = Resources::default();
    let mut stmt =
        tx.prepare_cached("SELECT available, reserved, changes FROM stock WHERE sku = ?1")?;
    let mut reservation = BTreeMap::new();
    {
        let mut held =
            tx.prepare_cached("SELECT sku, quantity FROM reservations WHERE order_id = ?1")?;
        let rows = held.query_map([saga_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (sku, n) = row?;
            reservation.insert(sku, n);
        }
    }
    let skus = order
        .lines
        .iter()
        .map(|l| l.sku.clone())
        .chain(reservation.keys().cloned());
    for sku in skus {
        if let Some(s) = stmt
            .query_row([&sku], |r| {
                Ok(Stock {
                    available: r.get(0)?,
                    reserved: r.get(1)?,
                    changes: r.get(2)?,
                })
            })
            .optional()?
        {
            res.stock.insert(sku, s);
        }
    }
    if !reservation.is_empty() {
        res.reservation = Some(reservation);
    }
    let redemption: Option<(String, i64)> = tx
        .prepare_cached("SELECT customer_id, points FROM redemptions WHERE order_id = ?1")?
        .query_row([saga_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let customer = redemption
        .as_ref()
        .map_or(order.customer_id.as_str(), |(c, _)| c.as_str())
        .to_string();
    res.redemption = redemption.map(|(_, n)| n).filter(|n| *n > 0);
    res.balance = tx
        .prepare_cached("SELECT balance FROM points WHERE customer_id = ?1")?
        .query_row([&customer], |r| r.get(0))
        .optional()?;
    res.payment = tx
        .prepare_cached(
            "SELECT authorized_cents, captured_cents, refunded_cents, voided FROM payments
             WHERE order_id = ?1",
        )?
        .query_row([saga_id], |r| {
            Ok(Payment {
                authorized_cents: r.get(0)?,
                captured_cents: r.get(1)?,
                refunded_cents: r.get(2)?,
                voided: r.get(3)?,
            })
        })
        .optional()?;
    Ok(res)
}

fn save_resources(
    tx: &Transaction<'_>,
    saga_id: &str,
    order: &OrderSnapshot,
    res: &Resources,
) -> rusqlite::Result<()> {
    for (sku, s) in &res.stock {
        tx.prepare_cached(
            "INSERT INTO stock (sku, available, reserved, changes) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (sku) DO UPDATE SET available = excluded.available,
                 reserved = excluded.reserved, changes = excluded.changes",
        )?
        .execute(params![sku, s.available, s.reserved, s.changes])?;
    }
    if let Some(held) = &res.reservation {
        tx.prepare_cached("DELETE FROM reservations WHERE order_id = ?1")?
            .execute([saga_id])?;
        for (sku, n) in held.iter().filter(|(_, n)| **n > 0) {
            tx.prepare_cached(
                "INSERT INTO reservations (order_id, sku, quantity) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![saga_id, sku, n])?;
        }
    }
    let customer: Option<String> = tx
        .prepare_cached("SELECT customer_id FROM redemptions WHERE order_id = ?1")?
        .query_row([saga_id], |r| r.get(0))
        .optional()?;
    let customer = customer.unwrap_or_else(|| order.customer_id.clone());
    if let Some(balance) = res.balance {
        tx.prepare_cached(
            "INSERT INTO points (customer_id, balance) VALUES (?1, ?2)
             ON CONFLICT (customer_id) DO UPDATE SET balance = excluded.balance",
        )?
        .execute(params![customer, balance])?;
    }
    if let Some(n) = res.redemption {
        tx.prepare_cached(
            "INSERT INTO redemptions (order_id, customer_id, points) VALUES (?1, ?2, ?3)
             ON CONFLICT (order_id) DO UPDATE SET points = excluded.points",
        )?
        .execute(params![saga_id, customer, n])?;
    }
    if let Some(p) = &res.payment {
        tx.prepare_cached(
            "INSERT INTO payments (order_id, authorized_cents, captured_cents, refunded_cents, voided)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (order_id) DO UPDATE SET authorized_cents = excluded.authorized_cents,
                 captured_cents = excluded.captured_cents,
                 refunded_cents = excluded.refunded_cents, voided = excluded.voided",
        )?
        .execute(params![
            saga_id,
            p.authorized_cents,
            p.captured_cents,
            p.refunded_cents,
            p.voided
        ])?;
    }
    Ok(())
}
