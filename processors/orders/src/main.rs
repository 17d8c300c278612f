//! `eip-orders`: the CQRS write side. See the crate docs.

use std::process::ExitCode;

use eip_orders::{Orders, OrdersConfig};

fn main() -> ExitCode {
    eip_runtime::main_stateful::<OrdersConfig, _>(Orders::new)
}
