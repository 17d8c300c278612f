//! The event-sourcing journal: every aggregate's events by version, its latest snapshot, each
//! command's outcome, and where the read-back of each published events partition starts.
//! Rows hold JSON text, so the journal knows nothing of any aggregate and an analyst can read
//! it with `sqlite3`:
//!
//! ```sql
//! events(aggregate_id TEXT, version INTEGER, command_id TEXT, source_offset INTEGER, event TEXT)
//! snapshots(aggregate_id TEXT, version INTEGER, schema_version INTEGER, state TEXT)
//! commands(command_id TEXT, aggregate_id TEXT, outcome TEXT)
//! publications(topic TEXT, partition INTEGER, next_offset INTEGER, caused_until INTEGER)
//! ```
//!
//! Loading an aggregate reads its snapshot, if one was written with the schema version the
//! caller reads, and the events after it: never the whole history once a snapshot exists. A
//! snapshot of another schema version is ignored (the events are replayed from version 1),
//! never misread. Writes go in the group commit's transaction, after the epoch check; an
//! event's version is its primary key with the aggregate id, so a second event at one
//! version fails the commit instead of forking a history.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use eip_runtime::ProcessError;

use crate::sqlite::classify;

/// The journal's tables, created if missing.
pub const JOURNAL_DDL: &str = "
    CREATE TABLE IF NOT EXISTS events (
        aggregate_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        command_id TEXT,
        source_offset INTEGER,
        event TEXT NOT NULL,
        PRIMARY KEY (aggregate_id, version)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS snapshots (
        aggregate_id TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        schema_version INTEGER NOT NULL,
        state TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS commands (
        command_id TEXT PRIMARY KEY,
        aggregate_id TEXT NOT NULL,
        outcome TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS publications (
        topic TEXT NOT NULL,
        partition INTEGER NOT NULL,
        next_offset INTEGER NOT NULL,
        caused_until INTEGER,
        PRIMARY KEY (topic, partition)
    ) WITHOUT ROWID;";

/// A snapshot row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The aggregate version the state is at.
    pub version: i64,
    /// The schema version the state was written with.
    pub schema_version: i64,
    /// The state, as JSON.
    pub state: String,
}

/// A command's recorded outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOutcome {
    /// The aggregate the command addressed.
    pub aggregate_id: String,
    /// The outcome, as JSON.
    pub outcome: String,
}

/// One journaled event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEvent {
    /// The aggregate.
    pub aggregate_id: String,
    /// Its version after the event.
    pub version: i64,
    /// The command that caused it.
    pub command_id: Option<String>,
    /// The input offset of that command, on the processor's one commands partition.
    pub source_offset: Option<i64>,
    /// The event, as JSON.
    pub event: String,
}

/// Where publication to one partition stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The topic published to.
    pub topic: String,
    /// The partition number.
    pub partition: i32,
    /// The next offset to read back from.
    pub next_offset: i64,
    /// The highest input offset whose event was published: input records up to it that a
    /// replay meets undecided were decided before a crash, against an earlier state.
    pub caused_until: Option<i64>,
}

/// What one group commit adds to the journal.
#[derive(Debug, Default, Clone)]
pub struct JournalRows {
    /// The events, in order.
    pub events: Vec<JournalEvent>,
    /// (aggregate id, snapshot), replacing the aggregate's previous one.
    pub snapshots: Vec<(String, Snapshot)>,
    /// (command id, outcome).
    pub outcomes: Vec<(String, StoredOutcome)>,
    /// Where the next read-back of a published partition starts.
    pub publications: Vec<Publication>,
}

impl JournalRows {
    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.snapshots.is_empty()
            && self.outcomes.is_empty()
            && self.publications.is_empty()
    }

    /// Forgets everything (after a successful commit).
    pub fn clear(&mut self) {
        self.events.clear();
        self.snapshots.clear();
        self.outcomes.clear();
        self.publications.clear();
    }
}

/// The journal's queries, over a connection or a transaction.
#[derive(Debug, Clone, Copy)]
pub struct Journal;

impl Journal {
    /// An aggregate as stored: the snapshot, if it has `schema_version`, and the events after
    /// it (after version 0 otherwise), in order.
    pub fn load(
        conn: &Connection,
        aggregate_id: &str,
        schema_version: i64,
    ) -> Result<(Option<Snapshot>, Vec<String>), ProcessError> {
        let snapshot = conn
            .prepare_cached(
                "SELECT version, schema_version, state FROM snapshots WHERE aggregate_id = ?1",
            )
            .and_then(|mut s| {
                s.query_row(params![aggregate_id], |row| {
                    Ok(Snapshot {
                        version: row.get(0)?,
                        schema_version: row.get(1)?,
                        state: row.get(2)?,
                    })
                })
                .optional()
            })
            .map_err(|e| classify("loading a snapshot", e))?;
        let snapshot = snapshot.filter(|s| s.schema_version == schema_version);
        let after = snapshot.as_ref().map_or(0, |s| s.version);
        let events = conn
            .prepare_cached(
                "SELECT event FROM events WHERE aggregate_id = ?1 AND version > ?2 ORDER BY version",
            )
            .and_then(|mut s| {
                s.query_map(params![aggregate_id, after], |row| row.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| classify("loading events", e))?;
        Ok((snapshot, events))
    }

    /// An aggregate's events caused by input records before `offset`, from version 1: its
    /// state as it was when the record at `offset` was first decided.
    pub fn load_before(
        conn: &Connection,
        aggregate_id: &str,
        offset: i64,
    ) -> Result<Vec<String>, ProcessError> {
        conn.prepare_cached(
            "SELECT event FROM events WHERE aggregate_id = ?1 AND source_offset < ?2 ORDER BY version",
        )
        .and_then(|mut s| {
            s.query_map(params![aggregate_id, offset], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| classify("loading events", e))
    }

    /// Every event of an aggregate from version 1, for history and replay tools.
    pub fn history(conn: &Connection, aggregate_id: &str) -> Result<Vec<String>, ProcessError> {
        Ok(Self::load(conn, aggregate_id, i64::MIN)?.1)
    }

    /// The highest version stored for an aggregate (0 for none).
    pub fn last_version(conn: &Connection, aggregate_id: &str) -> Result<i64, ProcessError> {
        conn.prepare_cached("SELECT COALESCE(MAX(version), 0) FROM events WHERE aggregate_id = ?1")
            .and_then(|mut s| s.query_row(params![aggregate_id], |row| row.get(0)))
            .map_err(|e| classify("reading a version", e))
    }

    /// A command's outcome, if it was decided.
    pub fn outcome(
        conn: &Connection,
        command_id: &str,
    ) -> Result<Option<StoredOutcome>, ProcessError> {
        conn.prepare_cached("SELECT aggregate_id, outcome FROM commands WHERE command_id = ?1")
            .and_then(|mut s| {
                s.query_row(params![command_id], |row| {
                    Ok(StoredOutcome {
                        aggregate_id: row.get(0)?,
                        outcome: row.get(1)?,
                    })
                })
                .optional()
            })
            .map_err(|e| classify("reading a command outcome", e))
    }

    /// The input offset of the command whose accepted event is in `aggregate_id`'s journal
    /// (None: no event of that command, or one adopted without its offset).
    pub fn caused_at(
        conn: &Connection,
        aggregate_id: &str,
        command_id: &str,
    ) -> Result<Option<i64>, ProcessError> {
        conn.prepare_cached(
            "SELECT source_offset FROM events WHERE aggregate_id = ?1 AND command_id = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![aggregate_id, command_id], |row| row.get(0))
                .optional()
        })
        .map(Option::flatten)
        .map_err(|e| classify("reading a command's offset", e))
    }

    /// Where publication to `topic[partition]` stood at the last group commit (None: nothing
    /// recorded, so a read-back starts at the partition's beginning).
    pub fn publication(
        conn: &Connection,
        topic: &str,
        partition: i32,
    ) -> Result<Option<Publication>, ProcessError> {
        conn.prepare_cached(
            "SELECT next_offset, caused_until FROM publications WHERE topic = ?1 AND partition = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![topic, partition], |row| {
                Ok(Publication {
                    topic: topic.to_string(),
                    partition,
                    next_offset: row.get(0)?,
                    caused_until: row.get(1)?,
                })
            })
            .optional()
        })
        .map_err(|e| classify("reading a publication offset", e))
    }

    /// Writes `rows` inside `tx` (after the caller's epoch check).
    pub fn write(tx: &Transaction<'_>, rows: &JournalRows) -> Result<(), ProcessError> {
        let fail = |e| classify("writing the journal", e);
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO events (aggregate_id, version, command_id, source_offset, event)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(fail)?;
            for e in &rows.events {
                insert
                    .execute(params![
                        e.aggregate_id,
                        e.version,
                        e.command_id,
                        e.source_offset,
                        e.event
                    ])
                    .map_err(fail)?;
            }
        }
        {
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO snapshots (aggregate_id, version, schema_version, state) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (aggregate_id) DO UPDATE SET version = excluded.version,
                         schema_version = excluded.schema_version, state = excluded.state
                     WHERE excluded.version >= snapshots.version",
                )
                .map_err(fail)?;
            for (id, s) in &rows.snapshots {
                upsert
                    .execute(params![id, s.version, s.schema_version, s.state])
                    .map_err(fail)?;
            }
        }
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO commands (command_id, aggregate_id, outcome) VALUES (?1, ?2, ?3)",
                )
                .map_err(fail)?;
            for (command, o) in &rows.outcomes {
                insert
                    .execute(params![command, o.aggregate_id, o.outcome])
                    .map_err(fail)?;
            }
        }
        for p in &rows.publications {
            tx.execute(
                "INSERT INTO publications (topic, partition, next_offset, caused_until)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset,
                     caused_until = MAX(COALESCE(caused_until, -1), COALESCE(excluded.caused_until, -1))",
                params![p.topic, p.partition, p.next_offset, p.caused_until],
            )
            .map_err(fail)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::connect;

    fn rows_for(id: &str, versions: std::ops::RangeInclusive<i64>) -> JournalRows {
        JournalRows {
            events: versions
                .map(|v| JournalEvent {
                    aggregate_id: id.to_string(),
                    version: v,
                    command_id: Some(format!("c{v}")),
                    source_offset: Some(v * 10),
                    event: format!("{{\"v\":{v}}}"),
                })
                .collect(),
            ..JournalRows::default()
        }
    }

    #[test]
    fn load_is_the_snapshot_and_the_events_after_it_and_ignores_other_schema_versions() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = connect(&dir.path().join("j.db")).unwrap();
        conn.execute_batch(JOURNAL_DDL).unwrap();
        let tx = conn.transaction().unwrap();
        let mut rows = rows_for("a", 1..=5);
        rows.snapshots.push((
            "a".into(),
            Snapshot {
                version: 3,
                schema_version: 2,
                state: "{\"at\":3}".into(),
            },
        ));
        rows.outcomes.push((
            "c1".into(),
            StoredOutcome {
                aggregate_id: "a".into(),
                outcome: "{}".into(),
            },
        ));
        rows.publications.push(Publication {
            topic: "ev".into(),
            partition: 0,
            next_offset: 99,
            caused_until: Some(50),
        });
        Journal::write(&tx, &rows).unwrap();
        tx.commit().unwrap();

        let (snap, tail) = Journal::load(&conn, "a", 2).unwrap();
        assert_eq!(snap.map(|s| s.version), Some(3));
        assert_eq!(tail, vec!["{\"v\":4}", "{\"v\":5}"]);
        // Read with another schema version, the snapshot is ignored and everything replays.
        let (snap, all) = Journal::load(&conn, "a", 3).unwrap();
        assert!(snap.is_none());
        assert_eq!(all.len(), 5);
        assert_eq!(Journal::history(&conn, "a").unwrap().len(), 5);
        assert_eq!(Journal::last_version(&conn, "a").unwrap(), 5);
        assert_eq!(Journal::last_version(&conn, "b").unwrap(), 0);
        assert!(Journal::outcome(&conn, "c1").unwrap().is_some());
        assert!(Journal::outcome(&conn, "c9").unwrap().is_none());
        let p = Journal::publication(&conn, "ev", 0).unwrap().unwrap();
        assert_eq!((p.next_offset, p.caused_until), (99, Some(50)));
        // The state as of input offset 25: the events caused before it (offsets 10 and 20).
        assert_eq!(Journal::load_before(&conn, "a", 25).unwrap().len(), 2);
        assert_eq!(Journal::publication(&conn, "ev", 1).unwrap(), None);
    }

    #[test]
    fn a_second_event_at_one_version_fails_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = connect(&dir.path().join("j.db")).unwrap();
        conn.execute_batch(JOURNAL_DDL).unwrap();
        let tx = conn.transaction().unwrap();
        Journal::write(&tx, &rows_for("a", 1..=2)).unwrap();
        tx.commit().unwrap();
        let tx = conn.transaction().unwrap();
        assert!(Journal::write(&tx, &rows_for("a", 2..=3)).is_err());
    }
}
