//! `cargo xtask test`: everything the test suite needs on a fresh Debian/Ubuntu machine, then
//! every test. As root it installs the missing Debian packages (BIND9 for the host and pod
//! tests, gcc/libseccomp-dev for runc, debootstrap for the BIND9 image, `time`), builds or reuses
//! the cached Kubernetes binaries, the node's binaries and images, the Bindy operator, promtool,
//! cert-manager and the rndc-warden image (the one release build), and
//! runs `cargo test --workspace --locked --no-fail-fast` with their locations in the
//! environment. Not root: it says why it needs root and stops.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use rndc_warden_testkit::bins::workspace_root;

/// Arguments of `cargo xtask test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Arguments passed on to `cargo test` after the defaults (e.g. `--test e2e_node`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    cargo_args: Vec<String>,
}

/// Debian packages the tests need: (package, a file it installs).
const PACKAGES: &[(&str, &str)] = &[
    ("bind9", "/usr/sbin/named"),
    ("bind9-utils", "/usr/sbin/rndc"),
    ("build-essential", "/usr/bin/cc"),
    ("libseccomp-dev", "/usr/include/seccomp.h"),
    ("debootstrap", "/usr/sbin/debootstrap"),
    ("time", "/usr/bin/time"),
    ("iproute2", "/usr/sbin/ip"),
];

/// The build scripts, the variable each result goes into, and what they build.
const BUILDS: &[(&str, &str, &str)] = &[
    (
        "scripts/e2e-bins.sh",
        "E2E_BIN_DIR",
        "kube-apiserver, kubectl, etcd, helm",
    ),
    (
        "scripts/node-bins.sh",
        "NODE_BIN_DIR",
        "kubelet, kube-controller-manager, kube-scheduler, containerd, runc, CNI loopback",
    ),
    (
        "scripts/node-images.sh",
        "NODE_IMAGE_DIR",
        "the pause and bind9 images",
    ),
    ("scripts/bindy-bin.sh", "BINDY_BIN", "the Bindy operator"),
    ("scripts/promtool-bin.sh", "PROMTOOL", "promtool"),
    (
        "scripts/cert-manager-bins.sh",
        "CERT_MANAGER_BIN_DIR",
        "cert-manager's controller and cainjector",
    ),
    (
        "scripts/warden-image.sh",
        "WARDEN_IMAGE_DIR",
        "the rndc-warden image (the static release binary)",
    ),
];

/// Installs, builds, then runs every test.
pub fn run(args: TestArgs) -> Result<ExitCode> {
    let started = Instant::now();
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "cargo xtask test must run as root: it installs Debian packages (apt-get) and the node \
             tests run a kubelet and containerd, which need root. Run `sudo -E env PATH=$PATH \
             cargo xtask test`"
        );
    }
    let root = workspace_root();
    install_packages()?;
    let path = with_go_on_path()?;
    let mut envs: Vec<(String, String)> = vec![("PATH".into(), path.clone())];
    for (script, var, what) in BUILDS {
        let step = Instant::now();
        println!("==> {what} ({script}; cached by version, cold builds take minutes)");
        let dir = match std::env::var(var).ok().filter(|v| !v.is_empty()) {
            Some(dir) => dir,
            None => run_script(&root.join(script), &path)?,
        };
        println!("    {var}={dir} ({:.0} s)", step.elapsed().as_secs_f64());
        envs.push(((*var).to_owned(), dir));
    }
    println!("==> cargo test --workspace --locked --no-fail-fast");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["test", "--workspace", "--locked", "--no-fail-fast"])
        .args(&args.cargo_args)
        .current_dir(&root)
        .envs(envs)
        .status()
        .context("running cargo test")?;
    println!(
        "==> cargo xtask test finished in {:.0} s ({status})",
        started.elapsed().as_secs_f64()
    );
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn install_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, file)| !Path::new(file).exists())
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("==> apt-get install {}", missing.join(" "));
    let apt = |args: &[&str]| -> Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get (the tests need a Debian or Ubuntu machine)")?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    apt(&install)
}

/// PATH with /usr/local/go/bin when Go is installed there but not on PATH; an error saying how
/// to install Go when it is nowhere.
fn with_go_on_path() -> Result<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&path).any(|d| d.join("go").is_file());
    if on_path {
        return Ok(path);
    }
    if Path::new("/usr/local/go/bin/go").is_file() {
        return Ok(format!("/usr/local/go/bin:{path}"));
    }
    bail!(
        "Go >= 1.26 is required to build the Kubernetes binaries, containerd and runc from the Go \
         module proxy: install it from https://go.dev/doc/install (into /usr/local/go), then run \
         cargo xtask test again"
    )
}

/// Runs a build script (its progress on our stderr) and returns the last line it printed.
fn run_script(script: &PathBuf, path: &str) -> Result<String> {
    let output = Command::new("bash")
        .arg(script)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!("{} failed ({})", script.display(), output.status);
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
        .with_context(|| format!("{} printed nothing", script.display()))
}
