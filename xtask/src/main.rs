//! `cargo xtask`: developer tasks for rndc-warden.
//!
//! - `cargo xtask test`: every test on a fresh machine (as root): prerequisites installed or
//!   built and cached, then `cargo test --workspace` (what the README and `.ci/run` run).
//! - `cargo xtask cluster up|down|env|status`: a local kube-apiserver + etcd (no containers),
//!   with kubectl and helm, for trying rndc-warden by hand.
//! - `cargo xtask dev [down]`: the whole system locally (chart installed, rndc-warden running as
//!   its Deployment would, examples applied).
//! - `cargo xtask bench admission`: a load benchmark of the validating webhook against a floor
//!   server, printed (see `docs/benchmarks.md`).
//! - `cargo xtask bench attacks`: the resource attacks of issue 11 against the release webhook,
//!   optionally next to a baseline binary, printed (see `docs/benchmarks.md`).
//! - `cargo xtask bench rotation-memory`: RSS of the release binary with 10,000 instances and key
//!   Secrets cached, rotator running, printed (see `docs/benchmarks.md`).
//! - `cargo xtask bench reload`: on a real node, due -> new key accepted by every BIND9 pod and
//!   the management gap per reload strategy and kubelet sync period, printed.

mod bench;
mod cluster;
mod dev;
mod test;

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
    /// The whole system locally: control plane, the Helm chart, rndc-warden running as the
    /// chart's Deployment would, the examples applied (`cargo xtask dev down` stops it).
    Dev(dev::DevArgs),
    /// Benchmarks on release builds: `bench admission` (the HTTPS admission webhook under load),
    /// `bench attacks` (resource attacks on the webhook), `bench rotation-memory` (RSS with 10,000 instances and key Secrets cached).
    Bench(bench::BenchArgs),
    /// Every test on a fresh machine (as root): installs the Debian packages, builds or reuses
    /// the cached Kubernetes, node and Bindy binaries and images, runs `cargo test --workspace`.
    Test(test::TestArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Cluster(args) => cluster::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Dev(args) => dev::run(args),
        Command::Test(args) => test::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
