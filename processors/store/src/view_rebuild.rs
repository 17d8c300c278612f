//! The steps of a zero-downtime view rebuild in SQLite (the driver is
//! `eip_projector::rebuild`): begin (create version n + 1, mark it building), switch (in one
//! transaction, only while still building and caught up: `live` and the plain-name SQL views
//! move to it), cancel (drop what was being built), and drop an old version.

use std::collections::HashMap;

use rusqlite::{Connection, params};

use crate::view_sqlite::versions;
use crate::views::{VIEWS, View};

/// Why a rebuild step was refused.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// No view has that name.
    #[error("no view {0:?}: the views are {1}")]
    UnknownView(String, String),
    /// A rebuild is already under way (or was killed).
    #[error(
        "a rebuild of {view} to version {version} is in progress or was interrupted: run \
         `eipctl projection cancel {view}` to discard it first"
    )]
    InProgress {
        /// The view.
        view: String,
        /// The version being built.
        version: i64,
    },
    /// The version can't be dropped.
    #[error("version {version} of {view} can't be dropped: {why}")]
    NotDroppable {
        /// The view.
        view: String,
        /// The version.
        version: i64,
        /// Why not.
        why: &'static str,
    },
    /// The rebuild was cancelled (or replaced) while it ran.
    #[error(
        "the rebuild of {view} to version {version} was cancelled while it ran (building now: \
         {building:?})"
    )]
    NoLongerBuilding {
        /// The view.
        view: String,
        /// The version this rebuild was filling.
        version: i64,
        /// The version being built now, if any.
        building: Option<i64>,
    },
    /// SQLite failed.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// One rebuild's claim on the version it fills: the version, and a generation that is never
/// reused (SQLite `AUTOINCREMENT`), so a rebuild that was cancelled and replaced by another of
/// the same version number can't write to, switch, or cancel its successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// The version being built.
    pub version: i64,
    /// This rebuild's generation.
    pub generation: i64,
}

/// The rebuilds' history: one row per rebuild started, with its generation, the version it
/// filled, and how it stands (`building`, `switched`, `cancelled`).
pub const REBUILDS_DDL: &str = "CREATE TABLE IF NOT EXISTS view_rebuilds (
    generation INTEGER PRIMARY KEY AUTOINCREMENT,
    view TEXT NOT NULL,
    version INTEGER NOT NULL,
    state TEXT NOT NULL
);";

/// The view named `name`, or the error listing them.
pub fn find_view(name: &str) -> Result<&'static View, RebuildError> {
    crate::views::view(name).ok_or_else(|| {
        let names: Vec<&str> = VIEWS.iter().map(|v| v.name).collect();
        RebuildError::UnknownView(name.to_string(), names.join(", "))
    })
}

/// Starts a rebuild of `view`: creates its tables at the live version + 1, records that
/// version as `building`, and returns the rebuild's [`Token`]. The live version keeps serving.
pub fn begin_rebuild(conn: &mut Connection, view: &View) -> Result<Token, RebuildError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(REBUILDS_DDL)?;
    let v = versions(&tx)?;
    if let Some(version) = v.building.get(view.name) {
        return Err(RebuildError::InProgress {
            view: view.name.to_string(),
            version: *version,
        });
    }
    let next = v.live.get(view.name).copied().unwrap_or(1) + 1;
    for table in view.tables {
        // A version left from an earlier rebuild that was dropped half-way is replaced.
        tx.execute_batch(&format!("DROP TABLE IF EXISTS {};", table.physical(next)))?;
        tx.execute_batch(&table.sqlite_ddl(next))?;
    }
    tx.execute(
        "UPDATE view_versions SET building = ?2 WHERE view = ?1",
        params![view.name, next],
    )?;
    tx.execute(
        "INSERT INTO view_rebuilds (view, version, state) VALUES (?1, ?2, 'building')",
        params![view.name, next],
    )?;
    let generation = tx.last_insert_rowid();
    tx.commit()?;
    Ok(Token {
        version: next,
        generation,
    })
}

/// The applied offset the live projector's ledger holds for each (topic, partition) of
/// `topics`.
pub fn applied(
    conn: &Connection,
    topics: &[String],
) -> rusqlite::Result<HashMap<(String, i32), i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT topic, partition, applied FROM partitions WHERE applied IS NOT NULL",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i32>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut out = HashMap::new();
    for row in rows {
        let (topic, partition, applied) = row?;
        if topics.contains(&topic) {
            out.insert((topic, partition), applied);
        }
    }
    Ok(out)
}

/// Switches readers of `view` to the rebuild's version in one transaction, if `caught_up`
/// says the new version holds everything the live projector has committed (it gets the
/// ledger's applied offsets). Returns false, changing nothing, if not.
pub fn switch(
    conn: &mut Connection,
    view: &View,
    token: Token,
    topics: &[String],
    caught_up: impl FnOnce(&HashMap<(String, i32), i64>) -> bool,
) -> Result<bool, RebuildError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    still_building(&tx, view, token)?;
    if !caught_up(&applied(&tx, topics)?) {
        return Ok(false);
    }
    tx.execute(
        "UPDATE view_versions SET live = ?2, building = NULL WHERE view = ?1",
        params![view.name, token.version],
    )?;
    tx.execute(
        "UPDATE view_rebuilds SET state = 'switched' WHERE generation = ?1",
        params![token.generation],
    )?;
    for table in view.tables {
        tx.execute_batch(&table.sqlite_alias(token.version))?;
    }
    tx.commit()?;
    Ok(true)
}

/// Fails unless the rebuild `token` names is still the one filling `view`: a cancel, and
/// maybe a new rebuild (even of the same version number), may have replaced it.
pub fn still_building(conn: &Connection, view: &View, token: Token) -> Result<(), RebuildError> {
    let building = versions(conn)?.building.get(view.name).copied();
    let current: Option<i64> = conn
        .query_row(
            "SELECT MAX(generation) FROM view_rebuilds WHERE view = ?1 AND state = 'building'",
            params![view.name],
            |r| r.get(0),
        )
        .or_else(|e| match e {
            rusqlite::Error::SqliteFailure(..) => Ok(None),
            e => Err(e),
        })?;
    if building == Some(token.version) && current == Some(token.generation) {
        Ok(())
    } else {
        Err(RebuildError::NoLongerBuilding {
            view: view.name.to_string(),
            version: token.version,
            building,
        })
    }
}

/// Discards a rebuild of `view`: its tables go, the live version stays. With `only` given,
/// only that rebuild is discarded (a failed rebuild cleans up after itself, never after a
/// successor); with None, whichever is under way (`eipctl projection cancel`). Returns the
/// version discarded.
pub fn cancel_rebuild(
    conn: &mut Connection,
    view: &View,
    only: Option<Token>,
) -> Result<Option<i64>, RebuildError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(REBUILDS_DDL)?;
    let building = versions(&tx)?.building.get(view.name).copied();
    if let Some(token) = only
        && still_building(&tx, view, token).is_err()
    {
        tx.execute(
            "UPDATE view_rebuilds SET state = 'cancelled' WHERE generation = ?1 AND state = 'building'",
            params![token.generation],
        )?;
        tx.commit()?;
        return Ok(None);
    }
    if let Some(version) = building {
        for table in view.tables {
            tx.execute_batch(&format!(
                "DROP TABLE IF EXISTS {};",
                table.physical(version)
            ))?;
        }
        tx.execute(
            "UPDATE view_versions SET building = NULL WHERE view = ?1",
            params![view.name],
        )?;
    }
    tx.execute(
        "UPDATE view_rebuilds SET state = 'cancelled' WHERE view = ?1 AND state = 'building'",
        params![view.name],
    )?;
    tx.commit()?;
    Ok(building)
}

/// The versions of `view` whose tables are in the file, ascending.
pub fn stored_versions(conn: &Connection, view: &View) -> rusqlite::Result<Vec<i64>> {
    let first = view.tables[0];
    let prefix = format!("{}_v", first.name);
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND substr(name, 1, ?2) = ?1",
    )?;
    let names = stmt.query_map(params![prefix, prefix.len()], |r| r.get::<_, String>(0))?;
    let mut out: Vec<i64> = Vec::new();
    for name in names {
        if let Ok(v) = name?[prefix.len()..].parse() {
            out.push(v);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Drops version `version` of `view`: never the live one, nor one being built.
pub fn drop_version(conn: &mut Connection, view: &View, version: i64) -> Result<(), RebuildError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let v = versions(&tx)?;
    let refuse = |why| RebuildError::NotDroppable {
        view: view.name.to_string(),
        version,
        why,
    };
    if v.live.get(view.name) == Some(&version) {
        return Err(refuse("it is the live version"));
    }
    if v.building.get(view.name) == Some(&version) {
        return Err(refuse("it is being built; cancel the rebuild instead"));
    }
    if !stored_versions(&tx, view)?.contains(&version) {
        return Err(refuse("the file has no such version"));
    }
    for table in view.tables {
        tx.execute_batch(&format!(
            "DROP TABLE IF EXISTS {};",
            table.physical(version)
        ))?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view_sqlite::migrate;

    #[test]
    fn a_rebuild_switches_only_while_its_version_is_still_the_one_being_built() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::sqlite::LEDGER_DDL).unwrap();
        migrate(&conn).unwrap();
        let view = find_view("order_summary").unwrap();
        let first = begin_rebuild(&mut conn, view).unwrap();
        assert_eq!(first.version, 2);
        assert!(matches!(
            begin_rebuild(&mut conn, view),
            Err(RebuildError::InProgress { version: 2, .. })
        ));
        // Not caught up: nothing changes.
        assert!(!switch(&mut conn, view, first, &[], |_| false).unwrap());
        assert_eq!(
            versions(&conn)
                .unwrap()
                .live_of(&crate::views::ORDER_SUMMARY),
            1
        );
        // Cancelled meanwhile: the switch is refused, and readers keep version 1.
        assert_eq!(cancel_rebuild(&mut conn, view, None).unwrap(), Some(2));
        assert!(matches!(
            switch(&mut conn, view, first, &[], |_| true),
            Err(RebuildError::NoLongerBuilding { building: None, .. })
        ));
        assert_eq!(
            versions(&conn)
                .unwrap()
                .live_of(&crate::views::ORDER_SUMMARY),
            1
        );
        // A new rebuild of the same version number gets a new generation: the cancelled one
        // can neither write, nor switch, nor cancel it.
        let second = begin_rebuild(&mut conn, view).unwrap();
        assert_eq!(second.version, 2);
        assert!(second.generation > first.generation);
        assert!(still_building(&conn, view, first).is_err());
        assert!(matches!(
            switch(&mut conn, view, first, &[], |_| true),
            Err(RebuildError::NoLongerBuilding {
                building: Some(2),
                ..
            })
        ));
        assert_eq!(cancel_rebuild(&mut conn, view, Some(first)).unwrap(), None);
        still_building(&conn, view, second).unwrap();
        // The new rebuild switches, and the old version can then be dropped, never the live one.
        assert!(switch(&mut conn, view, second, &[], |_| true).unwrap());
        assert_eq!(
            versions(&conn)
                .unwrap()
                .live_of(&crate::views::ORDER_SUMMARY),
            2
        );
        assert!(
            conn.query_row("SELECT COUNT(*) FROM order_summary", [], |r| r
                .get::<_, i64>(0))
                .is_ok()
        );
        assert!(matches!(
            drop_version(&mut conn, view, 2),
            Err(RebuildError::NotDroppable { .. })
        ));
        drop_version(&mut conn, view, 1).unwrap();
        assert_eq!(stored_versions(&conn, view).unwrap(), vec![2]);
    }
}
