//! The `rndc-warden` binary: parse the command line and hand over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = rndc_warden::cli::Cli::parse();
    rndc_warden::cli::run(cli)
}
