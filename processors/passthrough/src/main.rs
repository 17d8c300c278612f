//! `eip-passthrough`: forwards validated `OrderPlaced` records. See the crate docs.

use std::process::ExitCode;

use eip_passthrough::{Passthrough, PassthroughConfig};

fn main() -> ExitCode {
    eip_runtime::main_with::<PassthroughConfig, _>(|config| Ok(Passthrough::new(&config.processor)))
}
