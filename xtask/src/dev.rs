//! `cargo xtask dev`: the whole system on this machine, installed the way users install it.
//!
//! 1. a local control plane with a real node (`cluster up --node`; the node needs root, and is
//!    left out with a note otherwise);
//! 2. the Helm chart, with `webhook.url` pointing the webhook configurations at loopback (the
//!    node runs only hostNetwork pods, so rndc-warden itself runs on the host), and
//!    `rotation.provision=true` (the Bindy operator, which creates the key Secrets, is not run);
//! 3. the `rndc-warden` binary run exactly as the chart's Deployment would run it — its
//!    environment, its ServiceAccount's token — so admission and the rotator work under the
//!    chart's RBAC, with the self-managed certificate injected into the webhook configurations;
//! 4. the examples applied, a BIND9 Deployment shaped like Bindy's for each example instance,
//!    and `rndc status` run against each pod with the key from its Secret;
//! 5. a line telling the user how to point kubectl at it.
//!
//! `cargo xtask dev down` stops the binary and the control plane.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use rndc_warden_testkit::bins::workspace_root;
use rndc_warden_testkit::node::BIND9_IMAGE;
use rndc_warden_testkit::process::{pid_alive, stop_pid};
use rndc_warden_testkit::{Bind9Workload, ControlPlaneInfo};
use serde_json::Value;

use crate::cluster;

/// Arguments of `cargo xtask dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    #[command(subcommand)]
    action: Option<DevAction>,
}

/// Start (default) or stop the local system.
#[derive(Debug, Subcommand)]
enum DevAction {
    /// Start everything (the default).
    Up,
    /// Stop rndc-warden and the control plane.
    Down,
}

const RELEASE: &str = "rndc-warden";
const RELEASE_NAMESPACE: &str = "rndc-warden";

fn dev_dir() -> PathBuf {
    cluster::target_dir().join("xtask-dev")
}

/// Runs `cargo xtask dev [up|down]`.
pub fn run(args: DevArgs) -> Result<ExitCode> {
    match args.action.unwrap_or(DevAction::Up) {
        DevAction::Up => up(),
        DevAction::Down => down(),
    }
}

struct Tools {
    info: ControlPlaneInfo,
    helm_home: PathBuf,
}

impl Tools {
    fn kubectl(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<(bool, String, String)> {
        run_tool(
            &self.info.bin_dir.join("kubectl"),
            &self.info.kubeconfig,
            args,
            stdin,
            &[],
        )
    }

    fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let (ok, stdout, stderr) = self.kubectl(args, None)?;
        if !ok {
            bail!("kubectl {} failed: {stderr}", args.join(" "));
        }
        Ok(stdout)
    }

    fn helm(&self, args: &[&str]) -> Result<String> {
        let homes: Vec<(&str, PathBuf)> = ["cache", "config", "data"]
            .iter()
            .map(|d| (*d, self.helm_home.join(d)))
            .collect();
        let env: Vec<(String, PathBuf)> = homes
            .iter()
            .map(|(d, path)| (format!("HELM_{}_HOME", d.to_uppercase()), path.clone()))
            .collect();
        let (ok, stdout, stderr) = run_tool(
            &self.info.bin_dir.join("helm"),
            &self.info.kubeconfig,
            args,
            None,
            &env,
        )?;
        if !ok {
            bail!("helm {} failed: {stderr}", args.join(" "));
        }
        Ok(stdout)
    }
}

fn run_tool(
    program: &Path,
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(String, PathBuf)],
) -> Result<(bool, String, String)> {
    use std::io::Write as _;
    let mut child = Command::new(program)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", program.display()))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input).context("writing to kubectl")?;
    }
    let output = child.wait_with_output().context("waiting for a tool")?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let started = Instant::now();
    loop {
        if check()? {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn http_ok(port: u16, path: &str) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(stream, "GET {path} HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200")
}

/// The Deployment's container environment, with downward-API fields resolved for a pod.
fn deployment_env(deployment: &Value, pod_name: &str) -> Result<Vec<(String, String)>> {
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut env = Vec::new();
    for var in container["env"]
        .as_array()
        .context("the chart's Deployment has no env")?
    {
        let name = var["name"]
            .as_str()
            .context("env var without a name")?
            .to_owned();
        let value = if let Some(value) = var["value"].as_str() {
            value.to_owned()
        } else {
            match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.namespace") => RELEASE_NAMESPACE.to_owned(),
                Some("metadata.name") => pod_name.to_owned(),
                other => bail!("env {name}: unsupported valueFrom {other:?}"),
            }
        };
        env.push((name, value));
    }
    Ok(env)
}

fn up() -> Result<ExitCode> {
    let dir = dev_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    stop_binary(&dir);

    println!("==> control plane");
    let state_dir = cluster::target_dir().join("xtask-cluster");
    // SAFETY: geteuid(2) has no preconditions.
    let node = unsafe { libc::geteuid() } == 0;
    if !node {
        println!(
            "    not root: starting no node, so no BIND9 pods (run `sudo -E cargo xtask dev` for them)"
        );
    }
    cluster::up_in(&state_dir, node)?;
    let info = cluster::running(&state_dir)?.context("the control plane did not start")?;
    let tools = Tools {
        info,
        helm_home: dir.join("helm"),
    };

    println!("==> building rndc-warden");
    let root = workspace_root();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .args(["build", "--package", "rndc-warden", "--bin", "rndc-warden"])
        .current_dir(&root)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let binary = cluster::target_dir().join("debug/rndc-warden");

    println!("==> helm install (chart charts/rndc-warden, webhooks pointed at loopback)");
    let (port, probe) = (free_port()?, free_port()?);
    let chart = root.join("charts/rndc-warden");
    let url = format!("webhook.url=https://127.0.0.1:{port}");
    tools.helm(&[
        "upgrade",
        "--install",
        RELEASE,
        &chart.display().to_string(),
        "--namespace",
        RELEASE_NAMESPACE,
        "--create-namespace",
        "--set",
        &url,
        "--set",
        "replicaCount=1",
        "--set",
        "rotation.provision=true",
    ])?;

    println!("==> rndc-warden serve, as the chart's Deployment runs it");
    let deployment: Value = serde_json::from_str(&tools.kubectl_ok(&[
        "get",
        "deployment",
        RELEASE,
        "-n",
        RELEASE_NAMESPACE,
        "-o",
        "json",
    ])?)
    .context("parsing the chart's Deployment")?;
    let account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or(RELEASE)
        .to_owned();
    let token = tools.kubectl_ok(&[
        "create",
        "token",
        &account,
        "-n",
        RELEASE_NAMESPACE,
        "--duration",
        "24h",
    ])?;
    let ca = tools.kubectl_ok(&[
        "config",
        "view",
        "--raw",
        "-o",
        "jsonpath={.clusters[0].cluster.certificate-authority-data}",
    ])?;
    let kubeconfig = dir.join("rndc-warden.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: {account}\n  user:\n    token: {}\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: {account}\n    namespace: {RELEASE_NAMESPACE}\ncurrent-context: local\n",
            tools.info.server_url,
            token.trim()
        ),
    )
    .context("writing the ServiceAccount kubeconfig")?;

    let log_path = dir.join("rndc-warden.log");
    let log = std::fs::File::create(&log_path).context("creating the log file")?;
    let mut command = Command::new(&binary);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("RNDC_WARDEN_") {
            command.env_remove(key);
        }
    }
    for (name, value) in deployment_env(&deployment, "rndc-warden-dev")? {
        command.env(name, value);
    }
    {
        use std::os::unix::process::CommandExt as _;
        // Its own process group: it keeps running after this task exits.
        command.process_group(0);
    }
    let child = command
        .arg("serve")
        .env("RNDC_WARDEN_LISTEN", format!("127.0.0.1:{port}"))
        .env("RNDC_WARDEN_PROBE_LISTEN", format!("127.0.0.1:{probe}"))
        .env("RNDC_WARDEN_LOG_FORMAT", "text")
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", RELEASE_NAMESPACE)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("log file")?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    std::fs::write(dir.join("pid"), child.id().to_string()).context("writing the pid file")?;
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_until("rndc-warden /readyz", Duration::from_secs(120), || {
        if !pid_alive(child.id()) {
            bail!("rndc-warden exited:\n{}", logs());
        }
        Ok(http_ok(probe, "/readyz"))
    })?;

    println!("==> waiting for the webhooks to answer (self-managed caBundle injected)");
    for namespace in ["dns-system", "bindy-system"] {
        let (ok, _, stderr) = tools.kubectl(&["create", "namespace", namespace], None)?;
        if !ok && !stderr.contains("AlreadyExists") {
            bail!("creating namespace {namespace}: {stderr}");
        }
    }
    let weak = root.join("examples/bad/instance-weak-algorithm.yaml");
    let weak_path = weak.display().to_string();
    wait_until("the admission webhooks", Duration::from_secs(120), || {
        let (ok, _, stderr) =
            tools.kubectl(&["apply", "--dry-run=server", "-f", &weak_path], None)?;
        Ok(!ok && stderr.contains("is not allowed"))
    })?;

    println!("==> applying examples/good/");
    let good = root.join("examples/good");
    let applied = tools.kubectl_ok(&["apply", "-f", &good.display().to_string()])?;
    print!("{applied}");
    println!("==> a weak example is denied by the webhook:");
    let (_, _, denial) = tools.kubectl(&["apply", "--dry-run=server", "-f", &weak_path], None)?;
    print!("{denial}");
    if node {
        bind9_pods(&tools)?;
    }

    println!();
    println!(
        "rndc-warden is running (pid {}), log: {}",
        child.id(),
        log_path.display()
    );
    println!(
        "  admission https://127.0.0.1:{port}  probes/metrics http://127.0.0.1:{probe}/metrics"
    );
    println!("Point kubectl at the local cluster with:");
    println!("  eval \"$(cargo xtask cluster env)\"");
    println!(
        "then try: kubectl get bind9instances -A; kubectl get secrets -n dns-system -l bindy.firestoned.io/rndc-key=true"
    );
    println!("          rndc-warden audit -A   (target/debug/rndc-warden)");
    println!("Stop everything with: cargo xtask dev down");
    Ok(ExitCode::SUCCESS)
}

/// Stops a previously started binary, if its pid file points at one.
fn stop_binary(dir: &Path) {
    let pid_file = dir.join("pid");
    if let Some(pid) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
    {
        stop_pid(pid, "rndc-warden", Duration::from_secs(30));
    }
    let _ = std::fs::remove_file(pid_file);
}

fn down() -> Result<ExitCode> {
    stop_binary(&dev_dir());
    println!("rndc-warden stopped");
    cluster::down_in(&cluster::target_dir().join("xtask-cluster"))
}

/// The Secret a `Bind9Instance` uses (SPEC §5; managed: `<instance>-rndc-key`).
fn instance_secret(instance: &Value) -> Option<String> {
    let block = &instance["spec"]["rndcKey"];
    let named = block["secretRef"]["name"]
        .as_str()
        .or_else(|| block["secret"]["metadata"]["name"].as_str())
        .map(str::to_owned);
    named.or_else(|| {
        instance["metadata"]["name"]
            .as_str()
            .map(|n| format!("{n}-rndc-key"))
    })
}

/// A BIND9 Deployment shaped like Bindy's for every example instance, then `rndc status` against
/// each pod with the key from its Secret.
fn bind9_pods(tools: &Tools) -> Result<()> {
    println!("==> BIND9 pods for the example instances (image {BIND9_IMAGE}, hostNetwork)");
    let list: Value =
        serde_json::from_str(&tools.kubectl_ok(&["get", "bind9instances", "-A", "-o", "json"])?)
            .context("parsing the instances")?;
    let mut workloads = Vec::new();
    for instance in list["items"].as_array().into_iter().flatten() {
        let (Some(name), Some(namespace), Some(secret)) = (
            instance["metadata"]["name"].as_str(),
            instance["metadata"]["namespace"].as_str(),
            instance_secret(instance),
        ) else {
            continue;
        };
        wait_until(
            &format!("Secret {namespace}/{secret}"),
            Duration::from_secs(60),
            || {
                Ok(tools
                    .kubectl(&["get", "secret", &secret, "-n", namespace], None)?
                    .0)
            },
        )?;
        let workload = Bind9Workload::new(name, &secret)?;
        for object in [
            serde_json::to_string(&workload.config_map()?)?,
            serde_json::to_string(&workload.deployment()?)?,
        ] {
            let (ok, _, stderr) = tools.kubectl(
                &["apply", "-n", namespace, "-f", "-"],
                Some(object.as_bytes()),
            )?;
            if !ok {
                bail!("creating the BIND9 workload of {namespace}/{name}: {stderr}");
            }
        }
        workloads.push((namespace.to_owned(), workload));
    }
    for (namespace, workload) in &workloads {
        tools.kubectl_ok(&[
            "wait",
            "--for=condition=Ready",
            "pod",
            "-l",
            &workload.selector(),
            "-n",
            namespace,
            "--timeout=180s",
        ])?;
        let key = tools.kubectl_ok(&[
            "get",
            "secret",
            &workload.secret,
            "-n",
            namespace,
            "-o",
            "jsonpath={.data.rndc\\.key}",
        ])?;
        let key = base64_decode(key.trim())?;
        println!(
            "==> rndc status against the pod of {namespace}/{} (127.0.0.1:{}, key from Secret {})",
            workload.name, workload.rndc_port, workload.secret
        );
        print!("{}", rndc_status(workload.rndc_port, &key)?);
    }
    Ok(())
}

fn base64_decode(text: &str) -> Result<String> {
    let output = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(text.as_bytes())?;
            }
            child.wait_with_output()
        })
        .context("running base64 -d")?;
    if !output.status.success() {
        bail!("the Secret's rndc.key is not valid base64");
    }
    String::from_utf8(output.stdout).context("the Secret's rndc.key is not UTF-8")
}

/// `rndc status` against 127.0.0.1:`port` with `key` (written to a private temporary file;
/// `rndc`'s output never contains it).
fn rndc_status(port: u16, key: &str) -> Result<String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = rndc_warden_testkit::named::key_name(key)?;
    let dir = tempfile::tempdir().context("a directory for rndc")?;
    let write = |path: &Path, text: &str| -> Result<()> {
        use std::io::Write as _;
        std::fs::File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))
    };
    let key_path = dir.path().join("rndc.key");
    write(&key_path, key)?;
    let conf = dir.path().join("rndc.conf");
    write(
        &conf,
        &format!(
            "include \"{}\";\noptions {{ default-key \"{name}\"; default-server 127.0.0.1; default-port {port}; }};\n",
            key_path.display()
        ),
    )?;
    let rndc = rndc_warden_testkit::bins::which("rndc")
        .context("rndc is not installed: apt-get install bind9-utils")?;
    let output = Command::new(rndc)
        .arg("-c")
        .arg(&conf)
        .arg("status")
        .output()
        .context("running rndc")?;
    if !output.status.success() {
        bail!(
            "rndc status failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
