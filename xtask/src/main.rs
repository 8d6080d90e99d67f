//! `cargo xtask`: developer tasks for rndc-warden.
//!
//! - `cargo xtask cluster up|down|env|status`: a local kube-apiserver + etcd (no containers),
//!   with kubectl and helm, for trying rndc-warden by hand.
//! - `cargo xtask bench admission`: a load benchmark of the validating webhook against a floor
//!   server, printed (see `docs/benchmarks.md`).

mod bench;
mod cluster;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Developer tasks for rndc-warden.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// One task. Add new tasks (e.g. `dev`, `bench`) as variants with their own module.
#[derive(Debug, Subcommand)]
enum Command {
    /// A local control plane (etcd + kube-apiserver v1.37, kubectl, helm) on loopback ports.
    Cluster(cluster::ClusterArgs),
    /// Benchmarks on release builds: `bench admission` (the HTTPS admission webhook under load).
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Cluster(args) => cluster::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
