//! `cargo xtask bench rotation-memory`: RSS of the release `rndc-warden serve` (what the image
//! ships) with N instances and N key Secrets cached and the rotator running.
//!
//! It builds the binary as the Dockerfile does (`cargo build --release --locked --bin
//! rndc-warden`) and runs `tests/e2e_rotation_memory.rs` with `ROTATION_MEMORY_BINARY` naming
//! that build. The test starts a local kube-apiserver (`E2E_BIN_DIR` or the downloaded
//! binaries), creates the objects and prints `VmRSS`/`VmHWM` from `/proc/<pid>/status`; nothing
//! is asserted against a size.

use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::Args;

/// Arguments of `cargo xtask bench rotation-memory`.
#[derive(Debug, Args)]
pub struct RotationMemoryArgs {
    /// Instances (and key Secrets) to create.
    #[arg(long, default_value_t = 10_000)]
    instances: usize,
    /// Also create a Deployment per instance.
    #[arg(long)]
    deployments: bool,
}

/// Builds the release binary and runs the memory test against it.
pub fn run(args: RotationMemoryArgs) -> Result<ExitCode> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = rndc_warden_testkit::bins::workspace_root();
    println!("==> cargo build --release --locked --bin rndc-warden");
    let status = Command::new(&cargo)
        .args(["build", "--release", "--locked", "--bin", "rndc-warden"])
        .current_dir(&root)
        .status()
        .context("running cargo build --release")?;
    if !status.success() {
        bail!("cargo build --release failed ({status})");
    }
    let binary = crate::cluster::target_dir()
        .join("release")
        .join("rndc-warden");
    anyhow::ensure!(
        binary.is_file(),
        "{} is missing after the build",
        binary.display()
    );
    println!(
        "==> cargo test --locked --test e2e_rotation_memory -- --nocapture (ROTATION_MEMORY_BINARY={}, ROTATION_MEMORY_N={})",
        binary.display(),
        args.instances
    );
    let status = Command::new(&cargo)
        .args([
            "test",
            "--locked",
            "--test",
            "e2e_rotation_memory",
            "--",
            "--nocapture",
        ])
        .current_dir(&root)
        .env("ROTATION_MEMORY_BINARY", &binary)
        .env("ROTATION_MEMORY_N", args.instances.to_string())
        .env(
            "ROTATION_MEMORY_DEPLOYMENTS",
            if args.deployments { "1" } else { "0" },
        )
        .status()
        .context("running the memory test")?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
