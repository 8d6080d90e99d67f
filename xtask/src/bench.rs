//! `cargo xtask bench admission`: a load benchmark of the validating webhook over TLS, next to a
//! floor server (the cheapest possible axum + rustls webhook) measured in the same run.
//! `cargo xtask bench attacks`: the resource attacks of issue 11 (a 520k-entry denial, 32
//! parallel 7 MiB uploads, 4,000 idle connections, a client that never reads) against the release
//! `rndc-warden serve --no-cluster`, optionally next to a baseline binary.
//! `cargo xtask bench rotation-memory`: RSS of the release binary with 10,000 instances and key
//! Secrets cached and the rotator running (`tests/e2e_rotation_memory.rs`).
//! `cargo xtask bench reload`: on a real node, due -> new key accepted by every BIND9 pod and
//! the management gap, per reload strategy and kubelet sync period (`tests/e2e_node_bench.rs`).
//!
//! The orchestrating command builds release binaries and then runs the floor server and the load
//! generator as hidden subcommands of the release `xtask` binary, so nothing measured is a debug
//! build. Figures are printed, not asserted.

mod admission;
mod attacks;
mod cpu;
mod floor;
mod load;
mod reload;
mod report;
mod review;
mod rotation_memory;
mod tls;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

/// Arguments of `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    target: BenchTarget,
}

/// What to benchmark.
#[derive(Debug, Subcommand)]
enum BenchTarget {
    /// Drive `rndc-warden serve`'s /validate over TLS and compare it with a floor server:
    /// peak requests/s, latency at half the floor's peak rate, RSS.
    Admission(admission::AdmissionArgs),
    /// Replay resource attacks (huge denial, parallel 7 MiB uploads, idle TLS connections, a
    /// non-reading client) against `rndc-warden serve --no-cluster`, each on a fresh process;
    /// peak RSS, CPU per request and the p99 of small reviews sent alongside, optionally next to
    /// a baseline binary.
    Attacks(attacks::AttacksArgs),
    /// RSS of the release `rndc-warden serve` with N instances and N key Secrets cached, the
    /// rotator running (builds `--release`, then runs `tests/e2e_rotation_memory.rs` against it).
    RotationMemory(rotation_memory::RotationMemoryArgs),
    /// On a real node (root): due -> new key accepted by every BIND9 pod and the management gap
    /// of a client running `rndc status` every 100 ms, for `rollout` and `signal`, with the
    /// kubelet's default and a short Secret sync period (runs `tests/e2e_node_bench.rs`).
    Reload(reload::ReloadArgs),
    /// Internal: the floor server (run from the release binary by `bench admission`).
    #[command(hide = true)]
    FloorServer(floor::FloorArgs),
    /// Internal: the load generator (run from the release binary by `bench admission`); prints a
    /// JSON report.
    #[command(hide = true)]
    Load(load::LoadArgs),
    /// Internal: one attack scenario against a running server (run from the release binary by
    /// `bench attacks`); writes a JSON report.
    #[command(hide = true)]
    Attack(attacks::AttackRunArgs),
}

/// Runs one benchmark command.
pub fn run(args: BenchArgs) -> Result<ExitCode> {
    match args.target {
        BenchTarget::Admission(args) => admission::run(args),
        BenchTarget::Attacks(args) => attacks::run(args),
        BenchTarget::Attack(args) => attacks::run_attack(args),
        BenchTarget::RotationMemory(args) => rotation_memory::run(args),
        BenchTarget::Reload(args) => reload::run(args),
        BenchTarget::FloorServer(args) => floor::run(args),
        BenchTarget::Load(args) => load::run(args),
    }
}

/// A multi-threaded tokio runtime with one worker per CPU, as `rndc-warden serve` uses.
fn runtime() -> Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building a tokio runtime")
}
