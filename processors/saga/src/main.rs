//! `eip-saga --role NAME`: one participant of the saga definition. See the crate docs.

use std::process::ExitCode;

use eip_runtime::Extras;
use eip_saga::config::ParticipantConfig;
use eip_saga::participant::Participant;

fn main() -> ExitCode {
    eip_runtime::main_stateful_with::<ParticipantConfig, _>(|config| {
        Participant::new(config).map(|p| (p, Extras::default()))
    })
}
