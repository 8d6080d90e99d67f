//! The offline `check` command (being written).

use std::process::ExitCode;

use clap::Args;

use crate::config::PolicyArgs;

/// Arguments of `rndc-warden check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Files or directories to check; `-` reads stdin.
    pub paths: Vec<std::path::PathBuf>,
    /// Policy settings.
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Runs `check`.
pub fn run(args: &CheckArgs) -> ExitCode {
    match args.policy.to_config() {
        Ok(_) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(2),
    }
}
