//! SQLite plumbing shared by the stateful processors, and the partition ledger.
//!
//! The ledger is two plain tables in the processor's file:
//!
//! ```sql
//! partitions(topic TEXT, partition INTEGER, epoch INTEGER, applied INTEGER)
//! timers(topic TEXT, partition INTEGER, key BLOB, at_ms INTEGER)
//! ```
//!
//! - [`claim`] raises a partition's epoch and reads its applied offset and pending timers: the
//!   new owner's `open`.
//! - [`check_epoch`] is the first statement of every group commit (inside a `BEGIN
//!   IMMEDIATE` transaction, so no claim can slip in between): a former owner whose epoch was
//!   raised is refused with [`ProcessError::Fenced`] before it writes anything.
//! - [`write_ledger`] records the timer changes and the applied offset in that same
//!   transaction, so a replay after a crash skips exactly what is already written.
//!
//! Connections run in WAL mode with `synchronous=FULL`: a committed transaction is on disk
//! before the commit returns (offsets are committed after it), and replicas on one machine
//! share the file. Blocking calls belong on tokio's blocking pool ([`blocking`]); a
//! transaction started there finishes even if its worker is dropped, and the epoch check is
//! what keeps such a late write out.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use eip_runtime::{PartitionId, ProcessError, Timer, TimerChange};
use rusqlite::{Connection, ErrorCode, OptionalExtension, Transaction, params};

/// The ledger's tables, created if missing.
pub const LEDGER_DDL: &str = "
    CREATE TABLE IF NOT EXISTS partitions (
        topic TEXT NOT NULL,
        partition INTEGER NOT NULL,
        epoch INTEGER NOT NULL,
        applied INTEGER,
        PRIMARY KEY (topic, partition)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS timers (
        topic TEXT NOT NULL,
        partition INTEGER NOT NULL,
        key BLOB NOT NULL,
        at_ms INTEGER NOT NULL,
        PRIMARY KEY (topic, partition, key)
    ) WITHOUT ROWID;";

/// Opens `path` (creating it) in WAL mode with `synchronous=FULL` and a 10 s busy timeout.
pub fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // Switching a new file to WAL takes an exclusive lock and answers "busy" at once, without
    // the busy timeout, while another process opens the same file: try again for a while.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => break other?,
        }
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// A SQLite error as the runtime classifies it: busy, locked, I/O, full disk, can't open and
/// out of memory are transient (retried in place); anything else is fatal.
pub fn classify(what: &str, e: rusqlite::Error) -> ProcessError {
    let transient = matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::CannotOpen
                | ErrorCode::OutOfMemory
        )
    );
    if transient {
        ProcessError::Transient {
            reason: what.to_string(),
            source: Some(Arc::new(e)),
        }
    } else {
        ProcessError::fatal_from(what.to_string(), e)
    }
}

/// Runs `f` on tokio's blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ProcessError> + Send + 'static,
) -> Result<T, ProcessError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProcessError::fatal_from("store task", e))?
}

/// A partition's group commit on its own connection, on the blocking pool: in one
/// `BEGIN IMMEDIATE` transaction, the epoch check (a former owner is refused with
/// [`ProcessError::Fenced`]), the processor's `rows`, then the timer changes and the applied
/// offset `up_to`.
pub async fn group_commit(
    conn: Arc<std::sync::Mutex<Connection>>,
    partition: &PartitionId,
    epoch: i64,
    timers: &[TimerChange],
    up_to: Option<i64>,
    rows: impl FnOnce(&Transaction<'_>) -> Result<(), ProcessError> + Send + 'static,
) -> Result<(), ProcessError> {
    let (partition, timers) = (partition.clone(), timers.to_vec());
    blocking(move || {
        let mut conn = conn
            .lock()
            .map_err(|_| ProcessError::fatal("store connection poisoned"))?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| classify("group commit", e))?;
        check_epoch(&tx, &partition, epoch)?;
        rows(&tx)?;
        write_ledger(&tx, &partition, &timers, up_to)?;
        tx.commit().map_err(|e| classify("group commit", e))
    })
    .await
}

/// Opens its own connection to the file at `path` and claims `partition` on it in one
/// `BEGIN IMMEDIATE` transaction (see [`claim`]), on the blocking pool: what every
/// processor's `open` does first. Returns the connection, for the partition's worker to keep.
pub async fn claim_partition(
    path: &Path,
    partition: &PartitionId,
) -> Result<(Connection, Claim), ProcessError> {
    let (path, partition) = (path.to_path_buf(), partition.clone());
    blocking(move || {
        let mut conn = connect(&path).map_err(|e| classify("opening the store", e))?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| classify("claiming a partition", e))?;
        let found = claim(&tx, &partition)?;
        tx.commit()
            .map_err(|e| classify("claiming a partition", e))?;
        Ok((conn, found))
    })
    .await
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The epoch this owner now holds.
    pub epoch: i64,
    /// The highest input offset the store holds the effects of.
    pub applied: Option<i64>,
    /// The partition's pending timers.
    pub timers: Vec<Timer>,
}

/// Claims `partition` inside `tx`: raises its epoch and reads its applied offset and timers.
pub fn claim(tx: &Transaction<'_>, partition: &PartitionId) -> Result<Claim, ProcessError> {
    let (topic, number) = (partition.topic.as_ref(), partition.partition);
    let (epoch, applied): (i64, Option<i64>) = tx
        .query_row(
            "INSERT INTO partitions (topic, partition, epoch, applied) VALUES (?1, ?2, 1, NULL)
             ON CONFLICT (topic, partition) DO UPDATE SET epoch = epoch + 1
             RETURNING epoch, applied",
            params![topic, number],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .map_err(|e| classify("claiming a partition", e))?;
    let mut stmt = tx
        .prepare_cached("SELECT key, at_ms FROM timers WHERE topic = ?1 AND partition = ?2")
        .map_err(|e| classify("loading timers", e))?;
    let timers = stmt
        .query_map(params![topic, number], |row| {
            Ok(Timer {
                key: row.get::<_, Vec<u8>>(0)?.into(),
                at_ms: row.get(1)?,
            })
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| classify("loading timers", e))?;
    Ok(Claim {
        epoch,
        applied,
        timers,
    })
}

/// Refuses the write unless `partition` is still at `epoch`: the first statement of a group
/// commit.
pub fn check_epoch(
    tx: &Transaction<'_>,
    partition: &PartitionId,
    epoch: i64,
) -> Result<(), ProcessError> {
    let (topic, number) = (partition.topic.as_ref(), partition.partition);
    let current: Option<i64> = tx
        .query_row(
            "SELECT epoch FROM partitions WHERE topic = ?1 AND partition = ?2",
            params![topic, number],
            |row| row.get(0),
        )
        .optional()
        .map_err(|e| classify("group commit", e))?;
    if current == Some(epoch) {
        Ok(())
    } else {
        Err(ProcessError::Fenced {
            reason: format!(
                "{topic}[{number}] is at epoch {current:?}, this owner claimed {epoch}"
            ),
        })
    }
}

/// Writes `timers` and the applied offset `up_to` for `partition` inside `tx`.
pub fn write_ledger(
    tx: &Transaction<'_>,
    partition: &PartitionId,
    timers: &[TimerChange],
    up_to: Option<i64>,
) -> Result<(), ProcessError> {
    let (topic, number) = (partition.topic.as_ref(), partition.partition);
    for change in timers {
        match change {
            TimerChange::Set(t) => tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO timers (topic, partition, key, at_ms) VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut s| s.execute(params![topic, number, t.key.as_ref(), t.at_ms])),
            TimerChange::Remove(key) => tx
                .prepare_cached("DELETE FROM timers WHERE topic = ?1 AND partition = ?2 AND key = ?3")
                .and_then(|mut s| s.execute(params![topic, number, key.as_ref()])),
        }
        .map_err(|e| classify("group commit", e))?;
    }
    if let Some(offset) = up_to {
        tx.execute(
            "UPDATE partitions SET applied = ?3 WHERE topic = ?1 AND partition = ?2",
            params![topic, number, offset],
        )
        .map_err(|e| classify("group commit", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::TransactionBehavior;

    fn part(n: i32) -> PartitionId {
        PartitionId {
            topic: Arc::from("t"),
            partition: n,
        }
    }

    #[test]
    fn a_claim_fences_the_former_owner_and_keeps_applied_and_timers() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = connect(&dir.path().join("s.db")).unwrap();
        conn.execute_batch(LEDGER_DDL).unwrap();
        let p = part(3);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        let first = claim(&tx, &p).unwrap();
        assert_eq!((first.epoch, first.applied), (1, None));
        check_epoch(&tx, &p, 1).unwrap();
        let timer = Timer {
            key: "k".into(),
            at_ms: 42,
        };
        write_ledger(&tx, &p, &[TimerChange::Set(timer.clone())], Some(17)).unwrap();
        tx.commit().unwrap();

        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        let second = claim(&tx, &p).unwrap();
        assert_eq!(second.epoch, 2);
        assert_eq!(second.applied, Some(17));
        assert_eq!(second.timers, vec![timer]);
        assert!(matches!(
            check_epoch(&tx, &p, 1),
            Err(ProcessError::Fenced { .. })
        ));
        check_epoch(&tx, &p, 2).unwrap();
        // Another partition is untouched.
        assert!(matches!(
            check_epoch(&tx, &part(4), 1),
            Err(ProcessError::Fenced { .. })
        ));
        write_ledger(&tx, &p, &[TimerChange::Remove("k".into())], None).unwrap();
        tx.commit().unwrap();
        let tx = conn.transaction().unwrap();
        let third = claim(&tx, &p).unwrap();
        assert!(third.timers.is_empty());
        assert_eq!(third.applied, Some(17));
    }
}
