//! The `rndc-warden` binary: parse the command line and hand over to the library.

use clap::Parser;

/// mimalloc: the admission path allocates many small objects per request (JSON trees), where
/// glibc's allocator showed up as about a quarter of the CPU profile under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = rndc_warden::cli::Cli::parse();
    rndc_warden::cli::run(cli)
}
