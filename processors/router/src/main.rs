//! `router`: the content-based router. Settings layer as defaults, then `--config FILE`, then
//! `EIP__*` environment variables; the rules file is `processor.rules`. See docs/router.md.

use std::process::ExitCode;

fn main() -> ExitCode {
    eip_runtime::main_with_extras(eip_router::build)
}
