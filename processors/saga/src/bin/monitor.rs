//! `eip-saga-monitor`: the saga monitor. See `eip_saga::monitor`.

use std::process::ExitCode;

use eip_saga::config::MonitorConfig;
use eip_saga::monitor::Monitor;

fn main() -> ExitCode {
    eip_runtime::main_stateful_with::<MonitorConfig, _>(Monitor::new)
}
