//! `eip-counter`: counts records per key into SQLite. See the crate docs.

use std::process::ExitCode;

use eip_counter::{Counter, CounterConfig};

fn main() -> ExitCode {
    eip_runtime::main_stateful::<CounterConfig, _>(|config| Counter::new(&config.processor))
}
