//! The counter's SQLite store: counts per key, beside eip-store's partition ledger (each
//! partition's owner epoch and applied offset, and pending timers). Plain tables an analyst
//! can read with `sqlite3`:
//!
//! ```sql
//! counts(key TEXT PRIMARY KEY, n INTEGER)
//! partitions(topic TEXT, partition INTEGER, epoch INTEGER, applied INTEGER)
//! timers(topic TEXT, partition INTEGER, key BLOB, at_ms INTEGER)
//! ```
//!
//! WAL mode with `synchronous=FULL`: a committed transaction is on disk before the commit
//! returns, so it survives a killed process and a host crash (offsets are committed after it),
//! and replicas on one machine share the file. Group commits make the fsync cheap per record. Every blocking call runs on
//! tokio's blocking pool, so a partition's worker never blocks a runtime thread, and a
//! transaction that was started finishes even if its worker is dropped: the epoch check is
//! what keeps such a late write out.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use eip_runtime::{Flush, Opened, PartitionId, ProcessError};
use eip_store::sqlite::{
    Claim, LEDGER_DDL, blocking, check_epoch, claim_partition, classify, connect, write_ledger,
};
use rusqlite::{Connection, OptionalExtension, params};

/// One partition's state: the epoch it was claimed with, and what it has staged since the last
/// group commit.
#[derive(Debug)]
pub struct Partition {
    /// The partition's own connection (used on the blocking pool, one call at a time).
    conn: Arc<Mutex<Connection>>,
    /// The epoch this owner claimed; a flush is refused once the store holds a newer one.
    pub epoch: i64,
    /// Count deltas per key since the last group commit.
    pub staged: HashMap<String, u64>,
    /// Keys with a report timer pending.
    pub timer_keys: HashSet<String>,
}

/// A switch that holds group commits before they start, for fault tests: it plays a former
/// owner frozen by a GC pause.
#[derive(Debug, Default)]
pub struct Gate {
    frozen: Mutex<bool>,
    thawed: Condvar,
    waiting: AtomicU64,
}

impl Gate {
    /// Holds every group commit that starts from now on.
    pub fn freeze(&self) {
        if let Ok(mut f) = self.frozen.lock() {
            *f = true;
        }
    }

    /// Lets held and later group commits go.
    pub fn thaw(&self) {
        if let Ok(mut f) = self.frozen.lock() {
            *f = false;
        }
        self.thawed.notify_all();
    }

    /// Group commits held right now.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Acquire)
    }

    fn pass(&self) {
        let Ok(mut frozen) = self.frozen.lock() else {
            return;
        };
        if *frozen {
            self.waiting.fetch_add(1, Ordering::AcqRel);
            while *frozen {
                frozen = match self.thawed.wait(frozen) {
                    Ok(f) => f,
                    Err(_) => return,
                };
            }
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The store: a path, opened once per partition claim (each partition's worker has its own
/// connection).
#[derive(Debug, Clone)]
pub struct Store {
    path: Arc<Path>,
    hold_commit_open: Duration,
    gate: Arc<Gate>,
    fenced: Arc<AtomicU64>,
}

impl Store {
    /// Opens (creating if missing) the file at `path` with its tables.
    pub fn open(path: &Path, hold_commit_open: Duration) -> rusqlite::Result<Store> {
        let conn = connect(path)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS counts (
                 key TEXT PRIMARY KEY,
                 n INTEGER NOT NULL
             ) WITHOUT ROWID;",
        )?;
        conn.execute_batch(LEDGER_DDL)?;
        Ok(Store {
            path: Arc::from(path),
            hold_commit_open,
            gate: Arc::new(Gate::default()),
            fenced: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The gate group commits pass before they start.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// Group commits refused because a newer owner had claimed the partition.
    pub fn fenced(&self) -> u64 {
        self.fenced.load(Ordering::Acquire)
    }

    /// Claims `partition`: raises its epoch, and loads its applied offset and pending timers,
    /// in one transaction.
    pub async fn claim(&self, partition: &PartitionId) -> Result<Opened<Partition>, ProcessError> {
        let (
            conn,
            Claim {
                epoch,
                applied,
                timers,
            },
        ) = claim_partition(&self.path, partition).await?;
        let timer_keys = timers
            .iter()
            .map(|t| crate::key_text(Some(&t.key)))
            .collect();
        Ok(Opened {
            state: Partition {
                conn: Arc::new(Mutex::new(conn)),
                epoch,
                staged: HashMap::new(),
                timer_keys,
            },
            timers,
            applied,
        })
    }

    /// The group commit: one transaction that checks the epoch, adds the staged deltas,
    /// applies the timer changes and records the applied offset. On success the staged deltas
    /// are cleared; on failure nothing was written and they stay for the retry.
    pub async fn commit(
        &self,
        state: &mut Partition,
        flush: &Flush<'_>,
    ) -> Result<(), ProcessError> {
        let conn = state.conn.clone();
        let partition = flush.partition.clone();
        let epoch = state.epoch;
        let deltas: Vec<(String, u64)> =
            state.staged.iter().map(|(k, n)| (k.clone(), *n)).collect();
        let timers = flush.timers.to_vec();
        let up_to = flush.up_to;
        let hold = self.hold_commit_open;
        let gate = self.gate.clone();
        let fenced = self.fenced.clone();
        blocking(move || {
            gate.pass();
            let mut conn = conn
                .lock()
                .map_err(|_| ProcessError::fatal("store connection poisoned"))?;
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| classify("group commit", e))?;
            if let Err(e) = check_epoch(&tx, &partition, epoch) {
                fenced.fetch_add(1, Ordering::AcqRel);
                return Err(e);
            }
            {
                let mut add = tx
                    .prepare_cached(
                        "INSERT INTO counts (key, n) VALUES (?1, ?2)
                         ON CONFLICT (key) DO UPDATE SET n = n + excluded.n",
                    )
                    .map_err(|e| classify("group commit", e))?;
                for (key, n) in &deltas {
                    add.execute(params![key, *n as i64])
                        .map_err(|e| classify("group commit", e))?;
                }
            }
            write_ledger(&tx, &partition, &timers, up_to)?;
            if !hold.is_zero() {
                tracing::info!(topic = %partition.topic, partition = partition.partition, "group commit holding its transaction open (fault injection)");
                std::thread::sleep(hold);
            }
            tx.commit().map_err(|e| classify("group commit", e))
        })
        .await?;
        state.staged.clear();
        Ok(())
    }

    /// The durable count of `key`.
    pub async fn count(&self, key: &str) -> Result<u64, ProcessError> {
        let path = self.path.clone();
        let key = key.to_string();
        blocking(move || {
            let conn = connect(&path).map_err(|e| classify("opening the store", e))?;
            let n: Option<i64> = conn
                .query_row("SELECT n FROM counts WHERE key = ?1", params![key], |row| {
                    row.get(0)
                })
                .optional()
                .map_err(|e| classify("reading a count", e))?;
            Ok(n.unwrap_or(0).max(0) as u64)
        })
        .await
    }

    /// The sum of every durable count: how many records are counted.
    pub fn total(&self) -> rusqlite::Result<u64> {
        let conn = connect(&self.path)?;
        let n: i64 = conn.query_row("SELECT COALESCE(SUM(n), 0) FROM counts", [], |row| {
            row.get(0)
        })?;
        Ok(n.max(0) as u64)
    }

    /// Every durable count, for tests and reports.
    pub fn counts(&self) -> rusqlite::Result<HashMap<String, u64>> {
        let conn = connect(&self.path)?;
        let mut stmt = conn.prepare("SELECT key, n FROM counts")?;
        let rows = stmt.query_map([], |row| {
            Ok((row.get(0)?, row.get::<_, i64>(1)?.max(0) as u64))
        })?;
        rows.collect()
    }
}
