//! `cargo xtask bench reload`: on a real node (kubelet, containerd, runc; `testkit::node`), for
//! the `rollout` and `signal` strategies and for the kubelet's default (1m) and a short (10 s)
//! Secret sync period: the time from a key falling due to the new key being accepted by every
//! BIND9 pod (p50/p99), and the management gap seen by a client running `rndc status` every
//! 100 ms with the key mounted in the pod. Runs `tests/e2e_node_bench.rs` once per sync period;
//! printed, not asserted (`docs/benchmarks.md`).

use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result};
use clap::Args;

/// Arguments of `cargo xtask bench reload`.
#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// Rotations per strategy and sync period.
    #[arg(long, default_value_t = 20)]
    rounds: u32,
    /// Kubelet `syncFrequency` values to measure, in seconds.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 60])]
    sync_seconds: Vec<u64>,
}

/// Runs the benchmark test once per sync period and prints its RESULT lines at the end.
pub fn run(args: ReloadArgs) -> Result<ExitCode> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = rndc_warden_testkit::bins::workspace_root();
    let mut results = Vec::new();
    for sync in &args.sync_seconds {
        println!(
            "==> cargo test --locked --test e2e_node_bench -- --nocapture (RELOAD_BENCH_ROUNDS={}, RELOAD_BENCH_SYNC_SECONDS={sync})",
            args.rounds
        );
        let output = Command::new(&cargo)
            .args([
                "test",
                "--locked",
                "--test",
                "e2e_node_bench",
                "--",
                "--nocapture",
            ])
            .current_dir(&root)
            .env("RELOAD_BENCH_ROUNDS", args.rounds.to_string())
            .env("RELOAD_BENCH_SYNC_SECONDS", sync.to_string())
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("running the reload benchmark")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        print!("{stdout}");
        if !output.status.success() {
            anyhow::bail!("the benchmark failed with syncFrequency {sync}s");
        }
        results.extend(
            stdout
                .lines()
                .filter(|l| l.starts_with("reload-bench RESULT"))
                .map(str::to_owned),
        );
    }
    println!("\n==> results");
    for line in results {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}
