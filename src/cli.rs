//! The command line: one subcommand per front end, every flag with an `RNDC_WARDEN_*` fallback.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::telemetry::LogArgs;

/// Keeps BIND9 RNDC keys safe on Kubernetes: admission webhook, rotator and offline checks.
#[derive(Debug, Parser)]
#[command(name = "rndc-warden", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check manifests offline and print the decision, warnings and patch for each object.
    Check(crate::check::CheckArgs),
    /// Print the CustomResourceDefinitions rndc-warden understands, as YAML.
    Crdgen,
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let Cli { log, command } = cli;
    match command {
        Command::Check(args) => crate::check::run(&args),
        Command::Crdgen => {
            let _ = log;
            print!("{}", crate::api::crd_yaml());
            ExitCode::SUCCESS
        }
    }
}
