//! `cargo xtask cluster up [--node]|down|env|status`: a detached local control plane (and, with
//! `--node`, a real node: kubelet, containerd, runc) whose pids, ports and files are recorded in
//! state files, so later invocations can find and stop it.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use rndc_warden_testkit::bins::workspace_root;
use rndc_warden_testkit::node::{BIND9_IMAGE, NODE_NAME, NodeState};
use rndc_warden_testkit::process::{pid_alive, stop_pid};
use rndc_warden_testkit::{
    ControlPlane, ControlPlaneInfo, ControlPlaneOptions, Lifetime, Node, NodeOptions,
};

/// Arguments of `cargo xtask cluster`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Where the state file and the run directory (certificates, etcd data, logs, kubeconfig)
    /// live. Default: `<workspace>/target/xtask-cluster`.
    #[arg(long, global = true, env = "RNDC_WARDEN_CLUSTER_DIR")]
    state_dir: Option<PathBuf>,

    #[command(subcommand)]
    action: ClusterAction,
}

/// What to do with the cluster.
#[derive(Debug, Subcommand)]
enum ClusterAction {
    /// Start etcd and kube-apiserver in the background (builds the binaries on first use).
    Up(UpArgs),
    /// Stop them (SIGTERM, then SIGKILL) and remove the run directory.
    Down,
    /// Print shell lines putting kubectl/helm on PATH and setting KUBECONFIG:
    /// `eval "$(cargo xtask cluster env)"`.
    Env,
    /// Say whether it is running (exit status 0) or not (1).
    Status,
}

/// Arguments of `cargo xtask cluster up`.
#[derive(Debug, Args, Default)]
pub struct UpArgs {
    /// Also start a real node (kubelet, containerd, runc, controller-manager, scheduler; needs
    /// root) so Deployments get pods, e.g. BIND9 (`docs/development.md`, "The node").
    #[arg(long)]
    pub node: bool,
    /// The node kubelet's Secret volume sync period, in seconds (the kubelet's default: 60).
    #[arg(long, default_value_t = 60)]
    pub sync_seconds: u64,
}

const STATE_FILE: &str = "state.json";
const GRACE: Duration = Duration::from_secs(10);

/// Runs one cluster action.
pub fn run(args: ClusterArgs) -> Result<ExitCode> {
    let state_dir = args
        .state_dir
        .unwrap_or_else(|| target_dir().join("xtask-cluster"));
    match args.action {
        ClusterAction::Up(up_args) => up(&state_dir, &up_args),
        ClusterAction::Down => down(&state_dir),
        ClusterAction::Env => env(&state_dir),
        ClusterAction::Status => status(&state_dir),
    }
}

/// The cargo target directory (`CARGO_TARGET_DIR` or `<workspace>/target`).
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn read_state(state_dir: &Path) -> Result<Option<ControlPlaneInfo>> {
    let path = state_dir.join(STATE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn is_running(info: &ControlPlaneInfo) -> bool {
    pid_alive(info.etcd_pid) && pid_alive(info.apiserver_pid)
}

fn up(state_dir: &Path, args: &UpArgs) -> Result<ExitCode> {
    if let Some(info) = read_state(state_dir)? {
        if is_running(&info) && args.node && !node_running(state_dir) {
            bail!(
                "a cluster without a node is running: stop it with `cargo xtask cluster down`, \
                 then `cargo xtask cluster up --node`"
            );
        }
        if is_running(&info) {
            println!("cluster already running at {}", info.server_url);
            println!("use it with: eval \"$(cargo xtask cluster env)\"");
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("removing a stale cluster state (processes gone)");
        stop(&info)?;
        std::fs::remove_file(state_dir.join(STATE_FILE)).ok();
    }
    let run_dir = state_dir.join("run");
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir)
            .with_context(|| format!("removing {}", run_dir.display()))?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a tokio runtime")?;
    let cp = runtime.block_on(ControlPlane::start_with(ControlPlaneOptions {
        run_dir: Some(run_dir),
        lifetime: Lifetime::Detached,
        node: args.node,
        ..ControlPlaneOptions::default()
    }))?;
    let startup = cp.startup_time();
    let node = if args.node {
        let started = Instant::now();
        let options = NodeOptions {
            sync_frequency: Duration::from_secs(args.sync_seconds),
            lifetime: Lifetime::Detached,
            run_dir: Some(state_dir.join("node")),
            ..NodeOptions::default()
        };
        match runtime.block_on(Node::start(&cp, options)) {
            Ok(node) => Some((node.detach(), started.elapsed())),
            Err(e) => {
                cp.stop();
                return Err(e).context("starting the node");
            }
        }
    } else {
        None
    };
    let info = cp.detach();
    let state_path = state_dir.join(STATE_FILE);
    std::fs::write(&state_path, serde_json::to_string_pretty(&info)?)
        .with_context(|| format!("writing {}", state_path.display()))?;
    println!(
        "cluster up in {:.1} s: {} (etcd pid {}, kube-apiserver pid {})",
        startup.as_secs_f64(),
        info.server_url,
        info.etcd_pid,
        info.apiserver_pid
    );
    println!("logs and certificates: {}", info.run_dir.display());
    if let Some((state, took)) = node {
        println!(
            "node {NODE_NAME} Ready in {:.1} s (kubelet, containerd, runc; image {BIND9_IMAGE}); logs: {}",
            took.as_secs_f64(),
            state.run_dir.display()
        );
    }
    println!(
        "use it with: eval \"$(cargo xtask cluster env)\"; stop it with: cargo xtask cluster down"
    );
    Ok(ExitCode::SUCCESS)
}

/// Stops the recorded processes (apiserver first) and waits until their ports are closed.
fn stop(info: &ControlPlaneInfo) -> Result<()> {
    for (pid, binary) in [
        (info.apiserver_pid, "kube-apiserver"),
        (info.etcd_pid, "etcd"),
    ] {
        if !stop_pid(pid, binary, GRACE) {
            bail!("{binary} (pid {pid}) did not exit after SIGKILL");
        }
    }
    let deadline = Instant::now() + GRACE;
    for port in [info.api_port, info.etcd_port, info.etcd_peer_port] {
        while TcpStream::connect(("127.0.0.1", port)).is_ok() {
            if Instant::now() >= deadline {
                bail!("port {port} is still open after stopping the cluster");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if info.run_dir.exists() {
        std::fs::remove_dir_all(&info.run_dir)
            .with_context(|| format!("removing {}", info.run_dir.display()))?;
    }
    Ok(())
}

/// Whether a detached node recorded by the testkit belongs to this cluster.
fn node_running(state_dir: &Path) -> bool {
    NodeState::load().is_some_and(|s| s.detached && s.run_dir.starts_with(state_dir))
}

fn down(state_dir: &Path) -> Result<ExitCode> {
    if node_running(state_dir) {
        rndc_warden_testkit::node::stop_detached().context("stopping the node")?;
        println!("node stopped and cleaned up");
    }
    let Some(info) = read_state(state_dir)? else {
        println!("cluster not running (no state in {})", state_dir.display());
        return Ok(ExitCode::SUCCESS);
    };
    stop(&info)?;
    std::fs::remove_file(state_dir.join(STATE_FILE)).context("removing the state file")?;
    println!("cluster stopped");
    Ok(ExitCode::SUCCESS)
}

/// Single-quotes a value for POSIX shells.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

fn env(state_dir: &Path) -> Result<ExitCode> {
    match read_state(state_dir)? {
        Some(info) if is_running(&info) => {
            println!("export PATH={}:\"$PATH\"", shell_quote(&info.bin_dir));
            println!("export KUBECONFIG={}", shell_quote(&info.kubeconfig));
            Ok(ExitCode::SUCCESS)
        }
        _ => bail!("cluster not running: start it with `cargo xtask cluster up`"),
    }
}

fn status(state_dir: &Path) -> Result<ExitCode> {
    match read_state(state_dir)? {
        Some(info) if is_running(&info) => {
            let ready = TcpStream::connect(("127.0.0.1", info.api_port)).is_ok();
            println!(
                "running: {} (etcd pid {}, kube-apiserver pid {}{})",
                info.server_url,
                info.etcd_pid,
                info.apiserver_pid,
                if ready { "" } else { ", port not open yet" }
            );
            if node_running(state_dir) {
                println!("node {NODE_NAME}: started (`kubectl get nodes`)");
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(_) => {
            println!("not running (stale state: run `cargo xtask cluster down` to clean up)");
            Ok(ExitCode::FAILURE)
        }
        None => {
            println!("not running");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Starts the control plane recorded in `state_dir` (with a node when `node`) unless it already
/// runs (`cargo xtask dev`).
pub(crate) fn up_in(state_dir: &Path, node: bool) -> Result<()> {
    up(
        state_dir,
        &UpArgs {
            node,
            sync_seconds: 60,
        },
    )
    .map(|_| ())
}

/// The running control plane recorded in `state_dir`, if any.
pub(crate) fn running(state_dir: &Path) -> Result<Option<ControlPlaneInfo>> {
    Ok(read_state(state_dir)?.filter(is_running))
}

/// Stops the control plane recorded in `state_dir`.
pub(crate) fn down_in(state_dir: &Path) -> Result<ExitCode> {
    down(state_dir)
}
