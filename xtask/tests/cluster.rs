//! `cargo xtask cluster up` then `down` leaves no process and no listening port behind.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};

use rndc_warden_testkit::ControlPlaneInfo;
use rndc_warden_testkit::process::{pid_alive, pid_cmdline};

fn xtask(state_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("cluster")
        .args(args)
        .arg("--state-dir")
        .arg(state_dir)
        .output()
        .expect("run xtask")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| pid_alive(*pid))
        .filter_map(|pid| Some((pid, pid_cmdline(pid)?)))
        .filter(|(_, cmdline)| cmdline.contains(needle))
        .collect()
}

#[test]
fn cluster_up_then_down_leaves_nothing_behind() {
    let state = tempfile::tempdir().expect("state dir");

    let status = xtask(state.path(), &["status"]);
    assert!(
        !status.status.success(),
        "status before up must say not running"
    );
    assert!(text(&status.stdout).contains("not running"));

    let up = xtask(state.path(), &["up"]);
    assert!(
        up.status.success(),
        "up failed:\n{}\n{}",
        text(&up.stdout),
        text(&up.stderr)
    );
    eprintln!("{}", text(&up.stdout).trim());
    let info: ControlPlaneInfo = serde_json::from_str(
        &std::fs::read_to_string(state.path().join("state.json")).expect("state file"),
    )
    .expect("state JSON");
    let run_dir = info.run_dir.to_str().expect("utf-8 run dir").to_owned();
    assert!(pid_alive(info.etcd_pid) && pid_alive(info.apiserver_pid));
    assert_eq!(processes_mentioning(&run_dir).len(), 2);
    for port in [info.api_port, info.etcd_port, info.etcd_peer_port] {
        TcpStream::connect(("127.0.0.1", port)).expect("port listening while up");
    }

    let status = xtask(state.path(), &["status"]);
    assert!(status.status.success());
    assert!(
        text(&status.stdout).starts_with("running"),
        "{}",
        text(&status.stdout)
    );

    // The env lines work in a shell: kubectl from PATH, the admin kubeconfig from KUBECONFIG.
    let env = xtask(state.path(), &["env"]);
    assert!(env.status.success(), "{}", text(&env.stderr));
    let script = format!(
        "{}\nkubectl get --raw /readyz && command -v helm",
        text(&env.stdout)
    );
    let shell = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("run sh");
    assert!(
        shell.status.success(),
        "{script}\n{}\n{}",
        text(&shell.stdout),
        text(&shell.stderr)
    );
    let shell_out = text(&shell.stdout);
    assert!(shell_out.starts_with("ok"), "{shell_out}");
    assert!(shell_out.contains(&info.bin_dir.display().to_string()));

    // `up` again is a no-op while running.
    let again = xtask(state.path(), &["up"]);
    assert!(again.status.success());
    assert!(text(&again.stdout).contains("already running"));

    let down = xtask(state.path(), &["down"]);
    assert!(
        down.status.success(),
        "down failed:\n{}\n{}",
        text(&down.stdout),
        text(&down.stderr)
    );
    assert!(!pid_alive(info.etcd_pid), "etcd survived down");
    assert!(
        !pid_alive(info.apiserver_pid),
        "kube-apiserver survived down"
    );
    assert_eq!(processes_mentioning(&run_dir), Vec::new());
    for port in [info.api_port, info.etcd_port, info.etcd_peer_port] {
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still listening after down"
        );
    }
    assert!(!info.run_dir.exists(), "run dir left behind");
    assert!(!state.path().join("state.json").exists());

    let status = xtask(state.path(), &["status"]);
    assert!(!status.status.success());
    let env = xtask(state.path(), &["env"]);
    assert!(!env.status.success(), "env must fail when not running");
}

/// Cgroups of the node in any v1 hierarchy.
fn node_cgroups() -> Vec<String> {
    std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|h| ["kubepods", "k8s.io"].map(|c| h.path().join(c)))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect()
}

/// `cluster up --node` runs a Ready node whose pods get a real BIND9 container; `down` stops
/// every process (containers included) and leaves no mount, cgroup or node directory behind.
#[test]
fn cluster_up_with_a_node_then_down_leaves_nothing_behind() {
    let state = tempfile::tempdir().expect("state dir");
    let host_paths = ["/var/lib/kubelet", "/run/containerd", "/var/log/containers"];
    let existed: Vec<bool> = host_paths.iter().map(|p| Path::new(p).exists()).collect();
    let cgroups_before = node_cgroups();
    let up = xtask(state.path(), &["up", "--node", "--sync-seconds", "10"]);
    assert!(
        up.status.success(),
        "up --node failed (it needs root and the node's binaries; see docs/development.md):\n{}\n{}",
        text(&up.stdout),
        text(&up.stderr)
    );
    eprintln!("{}", text(&up.stdout).trim());
    assert!(
        text(&up.stdout).contains("Ready in"),
        "{}",
        text(&up.stdout)
    );
    let env = text(&xtask(state.path(), &["env"]).stdout);
    let script = format!(
        "{env}\nkubectl get nodes localhost -o jsonpath='{{.status.conditions[?(@.type==\"Ready\")].status}}'"
    );
    let shell = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("sh");
    assert_eq!(
        text(&shell.stdout).trim(),
        "True",
        "{}",
        text(&shell.stderr)
    );
    let node_dir = state.path().join("node");
    assert!(!processes_mentioning(&node_dir.display().to_string()).is_empty());

    let down = xtask(state.path(), &["down"]);
    assert!(
        down.status.success(),
        "down failed:\n{}\n{}",
        text(&down.stdout),
        text(&down.stderr)
    );
    let node = node_dir.display().to_string();
    assert_eq!(processes_mentioning(&node), Vec::new());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&node), "mounts left under {node}");
    assert_eq!(node_cgroups(), cgroups_before, "cgroups left behind");
    let exist: Vec<bool> = host_paths.iter().map(|p| Path::new(p).exists()).collect();
    assert_eq!(
        exist, existed,
        "host paths {host_paths:?} created and left behind"
    );
}
