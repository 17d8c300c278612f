//! `eip-projector`: the CQRS read side. See the crate docs.

use std::process::ExitCode;

use eip_projector::{Projector, ProjectorConfig};

fn main() -> ExitCode {
    eip_runtime::main_stateful::<ProjectorConfig, _>(Projector::new)
}
