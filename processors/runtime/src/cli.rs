//! The command line and process setup every eip binary shares: `--config FILE`,
//! `--check-config`, `--help`, and the async runtime.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::{EXIT_CONFIG, EXIT_FATAL};

/// What the command line asked for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Args {
    /// `--config FILE` / `-c FILE`.
    pub config: Option<PathBuf>,
    /// `--check-config`: validate the configuration, then exit.
    pub check_only: bool,
    /// `--role NAME`: the role of a binary that plays one of several (the saga participants);
    /// it sets `processor.role` over every other layer.
    pub role: Option<String>,
}

/// Why the command line does not lead to a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgsError {
    /// `--help` / `-h`.
    Help,
    /// A bad argument, and why.
    Invalid(String),
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, ArgsError> {
    let mut parsed = Args::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => match args.next() {
                Some(p) => parsed.config = Some(PathBuf::from(p)),
                None => return Err(ArgsError::Invalid("--config needs a file".into())),
            },
            "--check-config" => parsed.check_only = true,
            "--role" => match args.next() {
                Some(r) if !r.trim().is_empty() => parsed.role = Some(r),
                _ => return Err(ArgsError::Invalid("--role needs a name".into())),
            },
            "--help" | "-h" => return Err(ArgsError::Help),
            other => {
                return Err(ArgsError::Invalid(format!(
                    "unknown argument `{other}` (try --help)"
                )));
            }
        }
    }
    Ok(parsed)
}

/// This process's arguments, or the exit code when they don't lead to a run: `--help`
/// prints `program`'s usage and exits 0; a bad argument prints one line and exits 2.
pub fn args(program: &str, docs: &str) -> Result<Args, ExitCode> {
    match parse(std::env::args().skip(1)) {
        Ok(a) => Ok(a),
        Err(ArgsError::Help) => {
            // A closed pipe (`--help | head -1`) is not an error worth a panic.
            let _ = writeln!(
                std::io::stdout(),
                "usage: {program} [--config FILE] [--check-config] [--role NAME]\n--role sets processor.role, for a binary that plays one of several roles.\nSettings layer as defaults, then FILE, then EIP__SECTION__KEY environment variables. See {docs}."
            );
            Err(ExitCode::SUCCESS)
        }
        Err(ArgsError::Invalid(reason)) => {
            eprintln!("invalid arguments: {reason}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

/// The multi-threaded async runtime, or exit 1 with one line saying why not.
pub fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("startup: tokio runtime: {e}");
            ExitCode::from(EXIT_FATAL)
        })
}

/// A loaded configuration, or the exit code for a bad one: its one-line message is printed and
/// the process exits 2 ([`EXIT_CONFIG`]), before any network call.
pub fn config_or_exit<T>(loaded: Result<T, crate::config::ConfigError>) -> Result<T, ExitCode> {
    loaded.map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

/// With `--check-config`, prints that the configuration is fine and gives the exit code 0;
/// otherwise `None`, and the binary goes on to run.
pub fn check_only_exit(args: &Args) -> Option<ExitCode> {
    args.check_only.then(|| {
        println!("configuration ok");
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(args: &[&str]) -> Result<Args, ArgsError> {
        parse(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn given_flags_then_they_are_parsed() {
        assert_eq!(of(&[]), Ok(Args::default()));
        assert_eq!(
            of(&["-c", "a.toml", "--check-config"]),
            Ok(Args {
                config: Some("a.toml".into()),
                check_only: true,
                role: None,
            })
        );
        assert_eq!(
            of(&["--role", "inventory"]).map(|a| a.role),
            Ok(Some("inventory".into()))
        );
        assert_eq!(of(&["--help"]), Err(ArgsError::Help));
    }

    #[test]
    fn given_bad_arguments_then_the_reason_says_which() {
        assert_eq!(
            of(&["--config"]),
            Err(ArgsError::Invalid("--config needs a file".into()))
        );
        assert_eq!(
            of(&["--role", " "]),
            Err(ArgsError::Invalid("--role needs a name".into()))
        );
        assert_eq!(
            of(&["--verbose"]),
            Err(ArgsError::Invalid(
                "unknown argument `--verbose` (try --help)".into()
            ))
        );
    }
}
