//! `rndc-warden check`: the admission decision for manifests, offline, for CI and GitOps pipelines.
//!
//! Reads YAML or JSON files, directories (recursively) and stdin, every document of every stream,
//! in any order: all clusters are read before any instance is judged, so a `Bind9Cluster` later in
//! the input still informs the instances before it. For every object it prints whether the webhook
//! would allow it, why not, the warnings and the patch. Objects that are not rndc-warden's are
//! skipped and counted. Exit code: 0 all allowed, 1 any denial, 2 usage or unreadable input.

mod eval;
mod input;
mod render;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};

use crate::config::PolicyArgs;
use crate::policy;

pub use input::InputError;

/// Output format of `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// One block per object, then a summary line.
    Text,
    /// One JSON document with every object, skipped object and error.
    Json,
}

/// When to color text output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// Color when stdout is a terminal and `NO_COLOR` is unset.
    Auto,
    /// Always color.
    Always,
    /// Never color.
    Never,
}

/// Arguments of `rndc-warden check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Files or directories to check (directories recursively: *.yaml, *.yml, *.json); `-` reads
    /// stdin.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Output format.
    #[arg(
        long,
        short,
        value_enum,
        env = "RNDC_WARDEN_OUTPUT",
        default_value = "text"
    )]
    pub output: OutputFormat,
    /// Color text output.
    #[arg(long, value_enum, env = "RNDC_WARDEN_COLOR", default_value = "auto")]
    pub color: ColorChoice,
    /// Judge Secrets as of this time (RFC 3339) instead of now, for reproducible output.
    #[arg(long, env = "RNDC_WARDEN_CHECK_NOW", value_parser = parse_now, value_name = "TIME")]
    pub now: Option<DateTime<Utc>>,
    /// Policy settings (the same flags `serve` takes).
    #[command(flatten)]
    pub policy: PolicyArgs,
}

fn parse_now(value: &str) -> Result<DateTime<Utc>, String> {
    policy::parse_time(value)
        .ok_or_else(|| format!("{value:?} is not an RFC 3339 time, e.g. 2026-01-01T00:00:00Z"))
}

/// Runs `check` and returns the exit code (0 all allowed, 1 any denial, 2 usage or input error).
pub fn run(args: &CheckArgs) -> ExitCode {
    let cfg = match args.policy.to_config() {
        Ok(cfg) => cfg,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for path in &args.paths {
        input::read_path(path, &mut documents, &mut errors);
    }
    let now = args.now.unwrap_or_else(Utc::now);
    let mut report = eval::evaluate(&documents, &cfg, now);
    report.errors = errors;

    let color = match args.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
        }
    };
    let rendered = match args.output {
        OutputFormat::Text => render::render_text(&report, color),
        OutputFormat::Json => match serde_json::to_string_pretty(&render::report_json(&report)) {
            Ok(json) => json + "\n",
            Err(error) => {
                eprintln!("error: cannot encode the report: {error}");
                return ExitCode::from(2);
            }
        },
    };
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(rendered.as_bytes())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::from(2);
    }
    for error in &report.errors {
        eprintln!("error: {error}");
    }
    report.exit_code()
}
