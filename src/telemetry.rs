//! Logging: human or JSON lines through `tracing`, filtered by `--log-level` or `RUST_LOG`.

use clap::{Args, ValueEnum};
use tracing_subscriber::{EnvFilter, fmt};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logging flags shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(
        long,
        global = true,
        env = "RNDC_WARDEN_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `rndc_warden=debug,kube=info` (RUST_LOG syntax).
    #[arg(
        long,
        global = true,
        env = "RNDC_WARDEN_LOG_LEVEL",
        default_value = "info",
        value_parser = parse_log_filter
    )]
    pub log_level: String,
}

/// Accepts a log filter only if it parses, so a typo is an error naming the flag, never a
/// silent fall-back to `info`.
fn parse_log_filter(text: &str) -> Result<String, String> {
    EnvFilter::try_new(text)
        .map(|_| text.to_owned())
        .map_err(|error| {
            format!("{error}; use a level (error, warn, info, debug, trace) or RUST_LOG syntax, e.g. rndc_warden=debug,kube=info")
        })
}

/// Installs the global subscriber. Logs go to stderr so command output on stdout stays clean.
pub fn init(args: &LogArgs) {
    // Checked when the flag was parsed; the fall-back only serves callers that built `LogArgs`
    // by hand.
    let filter = EnvFilter::try_new(&args.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::Cli;

    #[test]
    fn a_bad_log_filter_is_an_error_that_names_the_flag() {
        let error =
            Cli::try_parse_from(["rndc-warden", "--log-level", "rndc_warden=loud", "crdgen"])
                .expect_err("a bad level is refused");
        let message = error.to_string();
        assert!(message.contains("--log-level"), "{message}");
        assert!(message.contains("RUST_LOG syntax"), "{message}");
        for good in ["info", "rndc_warden=debug,kube=info", "warn"] {
            let cli = Cli::try_parse_from(["rndc-warden", "--log-level", good, "crdgen"]);
            assert!(cli.is_ok(), "{good}: {:?}", cli.err());
        }
    }
}
