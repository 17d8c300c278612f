//! # eip-saga
//!
//! Choreographed sagas, driven by a saga definition file ([`definition`]):
//! - the monitor folds every saga's events, from whatever topic and in whatever order they
//!   arrive, into its state, drives its timeouts and flags stuck sagas;
//! - the participants of the order-fulfilment saga, one role per instance, each a stateful
//!   processor whose decisions are pure functions of its state and the event.
//!
//! docs/sagas.md describes the saga, the file, the guarantees and the operator surface.

pub mod actions;
pub mod api;
pub mod catch_up;
pub mod config;
pub mod definition;
pub mod events;
pub mod fold;
pub mod monitor;
pub mod monitor_store;
pub mod operate;
pub mod operator;
pub mod participant;
pub mod participant_store;
#[cfg(test)]
#[allow(clippy::unwrap_used, missing_docs)]
mod test_support;
