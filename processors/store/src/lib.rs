//! # eip-store
//!
//! The stores of eip's stateful processors, one module per concern:
//! - [`sqlite`]: the SQLite plumbing every processor shares: connections in WAL mode with
//!   `synchronous=FULL`, error classification (busy or I/O is transient, the rest fatal), the
//!   blocking pool, and the **partition ledger**: claiming a partition raises its epoch, a
//!   group commit writes only while the epoch is still its own, and the applied offset and the
//!   durable timers are written in the same transaction.
//! - [`views`]: the read side's views, each defined once (columns, keys, clustering), from
//!   which both backends take their DDL and statements; [`view_store::ViewStore`] is the
//!   trait, [`view_sqlite`] the SQLite backend (with [`view_rebuild`], the steps of a
//!   zero-downtime rebuild), [`view_scylla`] the ScyllaDB one, and [`conformance`] the suite
//!   both pass.
//! - [`saga_views`]: the saga monitor's views, defined the same way; [`saga_store::SagaStore`]
//!   reads them from SQLite or CQL ([`saga_scylla`]), and [`saga_conformance`] is the suite
//!   both pass.
//! - [`journal`]: event sourcing: each aggregate's events by version, its snapshots with the
//!   schema version they were written with, and each command's outcome by command id.
//!
//! SQLite is the embedded default: one file an analyst opens with `sqlite3`, shared by every
//! replica on one machine. docs/cqrs.md says where ScyllaDB takes over.

pub mod conformance;
pub mod journal;
pub mod saga_conformance;
pub mod saga_scylla;
pub mod saga_store;
pub mod saga_views;
pub mod sqlite;
pub mod view_any;
pub mod view_page;
pub mod view_rebuild;
pub mod view_scylla;
pub mod view_sqlite;
pub mod view_store;
pub mod views;

pub use journal::{
    JOURNAL_DDL, Journal, JournalEvent, JournalRows, Publication, Snapshot, StoredOutcome,
};
pub use sqlite::{
    Claim, LEDGER_DDL, blocking, check_epoch, claim, classify, connect, write_ledger,
};
