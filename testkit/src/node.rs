//! A real Kubernetes node beside a [`ControlPlane`]: kube-controller-manager, kube-scheduler,
//! containerd (+ runc, the loopback CNI plugin) and a kubelet, so Deployments get real pods that
//! run BIND9 (`docs/development.md`, "The node").
//!
//! One node per machine at a time: the kubelet and containerd use host paths that cannot be
//! moved (`/run/containerd`, `/var/lib/kubelet/device-plugins`, `/var/log/containers`), change
//! host sysctls and create cgroups. A [`Node`] holds a file lock for its lifetime, records what it
//! changed in a state file before changing it, and undoes all of it on stop; the next start
//! repairs what a crashed run left behind (processes, containers, mounts, cgroups, sysctls, host
//! paths). Every listener is on 127.0.0.1; the node's address is 127.0.0.1.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node as NodeObject;
use kube::Api;

use crate::bins::{cache_root, workspace_root};
use crate::control_plane::{ControlPlane, spawn_from_keeper_thread, write_file};
use crate::error::{Error, IoContext, Result};
use crate::process::{Lifetime, ManagedProcess, free_ports, log_tail, pid_alive, pid_cmdline};
use crate::wait::POLL_INTERVAL;

/// The Node's name (its kubeconfig is `system:node:<NODE_NAME>`). The kubelet refuses a
/// loopback node IP, so the apiserver reaches it by its Hostname address, which is this name:
/// `localhost` resolves to 127.0.0.1 and the kubelet listens there only.
pub const NODE_NAME: &str = "localhost";
/// The BIND9 image (`scripts/node-images.sh`), imported under this name; pods use
/// `imagePullPolicy: Never`.
pub const BIND9_IMAGE: &str = "rndc-warden.invalid/bind9:1";
/// The sandbox image, pinned in containerd so it is never pulled.
pub const PAUSE_IMAGE: &str = "rndc-warden.invalid/pause:1";
/// Environment variable naming a directory that already holds the node's binaries.
pub const NODE_BIN_DIR_ENV: &str = "NODE_BIN_DIR";
/// Environment variable naming a directory that already holds `pause.tar` and `bind9.tar`.
pub const NODE_IMAGE_DIR_ENV: &str = "NODE_IMAGE_DIR";
/// The kubelet's default `syncFrequency`: how often it refreshes mounted Secret volumes.
pub const DEFAULT_SYNC_FREQUENCY: Duration = Duration::from_secs(60);
/// How long the node gets from the first process to a Ready Node.
pub const NODE_START_TIMEOUT: Duration = Duration::from_secs(180);

/// Host sysctls the kubelet changes while it runs (restored on stop).
const SYSCTLS: [&str; 3] = [
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
];
/// Host paths the kubelet or containerd create whatever their configuration says.
const HOST_PATHS: [&str; 6] = [
    "/run/containerd",
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/run/netns",
    "/opt/containerd",
];
/// Cgroups created in every v1 hierarchy (the kubelet's QoS tree and containerd's namespace).
const CGROUPS: [&str; 2] = ["kubepods", "k8s.io"];
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The node's binaries (`scripts/node-bins.sh`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBinaries {
    /// The directory holding all of them (also the CNI plugin directory).
    pub dir: PathBuf,
}

impl NodeBinaries {
    const NAMES: [&'static str; 10] = [
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
        "containerd",
        "ctr",
        "containerd-shim-runc-v2",
        "runc",
        "loopback",
        "bridge",
        "host-local",
    ];

    /// `$NODE_BIN_DIR`, or the directory `scripts/node-bins.sh` prints (it builds once and caches
    /// by version), under a file lock.
    pub fn locate() -> Result<Self> {
        static FOUND: OnceLock<Result<NodeBinaries, String>> = OnceLock::new();
        FOUND
            .get_or_init(|| {
                let dir = locate_dir(NODE_BIN_DIR_ENV, "scripts/node-bins.sh", "node-bins.lock")?;
                Self::in_dir(dir)
            })
            .clone()
            .map_err(Error::Once)
    }

    fn in_dir(dir: PathBuf) -> std::result::Result<Self, String> {
        for name in Self::NAMES {
            let path = dir.join(name);
            if !path.is_file() {
                return Err(format!(
                    "{} is missing (run scripts/node-bins.sh, or set {NODE_BIN_DIR_ENV})",
                    path.display()
                ));
            }
        }
        Ok(Self { dir })
    }

    /// The path of one binary.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The node's images (`scripts/node-images.sh`): OCI layout tars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeImages {
    /// `pause.tar`.
    pub pause: PathBuf,
    /// `bind9.tar`.
    pub bind9: PathBuf,
}

impl NodeImages {
    /// `$NODE_IMAGE_DIR`, or the directory `scripts/node-images.sh` prints (it assembles the
    /// images once and caches them), under a file lock.
    pub fn locate() -> Result<Self> {
        static FOUND: OnceLock<Result<NodeImages, String>> = OnceLock::new();
        FOUND
            .get_or_init(|| {
                let dir = locate_dir(
                    NODE_IMAGE_DIR_ENV,
                    "scripts/node-images.sh",
                    "node-images.lock",
                )?;
                let images = NodeImages {
                    pause: dir.join("pause.tar"),
                    bind9: dir.join("bind9.tar"),
                };
                for tar in [&images.pause, &images.bind9] {
                    if !tar.is_file() {
                        return Err(format!(
                            "{} is missing (run scripts/node-images.sh as root, or set \
                             {NODE_IMAGE_DIR_ENV})",
                            tar.display()
                        ));
                    }
                }
                Ok(images)
            })
            .clone()
            .map_err(Error::Once)
    }
}

/// Runs `script` (unless `env` names a directory) under a lock in the cache directory and
/// returns the directory it printed on its last line.
fn locate_dir(env: &str, script: &str, lock: &str) -> std::result::Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os(env).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let script = workspace_root().join(script);
    let cache = cache_root();
    fs::create_dir_all(&cache).map_err(|e| format!("creating {}: {e}", cache.display()))?;
    let lock_path = cache.join(lock);
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("opening {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    let _ = lock.unlock();
    if !output.status.success() {
        return Err(format!(
            "{} failed ({}); its output is above. The node tests need Go >= 1.26, gcc, \
             libseccomp-dev and debootstrap, and root: `cargo xtask test` installs them",
            script.display(),
            output.status
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| PathBuf::from(l.trim()))
        .ok_or_else(|| format!("{} printed no directory", script.display()))
}

/// Options of [`Node::start`].
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The kubelet's `syncFrequency` (how often mounted Secrets are refreshed; default 1m).
    pub sync_frequency: Duration,
    /// Whether the processes die with this process or outlive it (`cargo xtask cluster up`).
    pub lifetime: Lifetime,
    /// Directory for the node's state; `None`: a fresh temporary directory, removed on stop.
    pub run_dir: Option<PathBuf>,
    /// Pods get addresses of their own on a bridge ([`crate::pod_network`]) instead of only
    /// loopback (which limits the node to `hostNetwork` pods). Only inside a private network
    /// namespace ([`crate::pod_network::in_private_netns`]), with a control plane started with
    /// [`crate::ControlPlaneOptions::pod_network`].
    pub pod_network: bool,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            sync_frequency: DEFAULT_SYNC_FREQUENCY,
            lifetime: Lifetime::TiedToParent,
            run_dir: None,
            pod_network: false,
        }
    }
}

/// What a node changed on the host, written before the change (`<cache>/node/state.json`), so a
/// crashed run can be repaired by the next one.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct NodeState {
    /// The node's run directory.
    pub run_dir: PathBuf,
    /// Whether the run directory is temporary (removed on cleanup).
    pub temporary: bool,
    /// Whether the node was detached (`cargo xtask cluster up --node`): never repaired while
    /// its processes run.
    pub detached: bool,
    /// The containerd socket (shims are found by it).
    pub containerd_socket: PathBuf,
    /// Sysctls (path under /proc/sys, value) before the node started.
    pub sysctls: Vec<(String, String)>,
    /// Host paths that did not exist before the node started.
    pub created_paths: Vec<PathBuf>,
    /// Pids of the node's processes (containerd, controller-manager, scheduler, kubelet).
    pub pids: Vec<u32>,
}

impl NodeState {
    fn dir() -> PathBuf {
        cache_root().join("node")
    }

    fn path() -> PathBuf {
        Self::dir().join("state.json")
    }

    /// The recorded state, if a node is running or a crashed one left it.
    pub fn load() -> Option<NodeState> {
        let text = fs::read_to_string(Self::path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn save(&self) -> Result<()> {
        fs::create_dir_all(Self::dir()).ctx(|| format!("creating {}", Self::dir().display()))?;
        write_file(&Self::path(), &serde_json::to_string_pretty(self)?, false)
    }

    fn forget() {
        let _ = fs::remove_file(Self::path());
    }

    /// Whether any of the recorded processes still runs.
    fn running(&self) -> bool {
        self.pids.iter().any(|pid| {
            pid_alive(*pid)
                && pid_cmdline(*pid).is_some_and(|c| c.contains(&*self.run_dir.to_string_lossy()))
        })
    }
}

/// A running node. Stopped and cleaned up on [`Node::stop`] or drop.
pub struct Node {
    bins: NodeBinaries,
    dir: PathBuf,
    state: Mutex<NodeState>,
    /// containerd, kube-controller-manager, kube-scheduler.
    processes: Mutex<Vec<ManagedProcess>>,
    kubelet: Mutex<Option<ManagedProcess>>,
    kubelet_args: Vec<String>,
    lifetime: Lifetime,
    kubeconfig: PathBuf,
    sync_frequency: Duration,
    lock: Mutex<Option<File>>,
    cp_config: kube::Config,
    /// The node address and `kubernetes` Service for pods with their own addresses.
    pod_network: Option<crate::pod_network::PodNetwork>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("dir", &self.dir)
            .field("sync_frequency", &self.sync_frequency)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts a node for `cp` (started with [`crate::ControlPlaneOptions::node`]): takes the
    /// machine's node lock, repairs a crashed run, starts containerd and imports the images,
    /// then the controller-manager, the scheduler and the kubelet, and waits for the Node to be
    /// Ready. Fails with a message saying what to install when a prerequisite is missing.
    pub async fn start(cp: &ControlPlane, options: NodeOptions) -> Result<Node> {
        let node_kubeconfig = cp.node_kubeconfig().map(Path::to_path_buf).ok_or_else(|| {
            Error::Once(
                "the control plane was started without node support (ControlPlaneOptions::node)"
                    .into(),
            )
        })?;
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Error::Once(
                "a real node (kubelet, containerd) needs root: run the node tests as root \
                 (`sudo -E cargo xtask test`)"
                    .into(),
            ));
        }
        let (bins, images) = tokio::task::spawn_blocking(|| -> Result<_> {
            Ok((NodeBinaries::locate()?, NodeImages::locate()?))
        })
        .await
        .map_err(|e| Error::Once(format!("locating the node's binaries panicked: {e}")))??;
        let lock = tokio::task::spawn_blocking(take_node_lock)
            .await
            .map_err(|e| Error::Once(format!("taking the node lock panicked: {e}")))??;
        tokio::task::spawn_blocking(repair)
            .await
            .map_err(|e| Error::Once(format!("repairing a previous node panicked: {e}")))??;

        let (dir, temporary) = match &options.run_dir {
            Some(dir) => (dir.clone(), false),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("rndc-warden-node-")
                    .tempdir()
                    .ctx(|| "creating the node's directory".into())?;
                (temp.keep(), true)
            }
        };
        fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let socket = dir.join("containerd/containerd.sock");
        let state = NodeState {
            run_dir: dir.clone(),
            temporary,
            detached: options.lifetime == Lifetime::Detached,
            containerd_socket: socket.clone(),
            sysctls: SYSCTLS
                .iter()
                .filter_map(|s| {
                    fs::read_to_string(Path::new("/proc/sys").join(s))
                        .ok()
                        .map(|v| ((*s).to_owned(), v.trim().to_owned()))
                })
                .collect(),
            created_paths: HOST_PATHS
                .iter()
                .map(PathBuf::from)
                .filter(|p| !p.exists())
                .collect(),
            pids: Vec::new(),
        };
        state.save()?;
        let mut node = Node {
            bins,
            dir: dir.clone(),
            state: Mutex::new(state),
            processes: Mutex::new(Vec::new()),
            kubelet: Mutex::new(None),
            kubelet_args: Vec::new(),
            lifetime: options.lifetime,
            kubeconfig: cp.kubeconfig_path().to_path_buf(),
            sync_frequency: options.sync_frequency,
            lock: Mutex::new(Some(lock)),
            cp_config: cp.config().clone(),
            pod_network: None,
        };
        if options.pod_network {
            node.pod_network = Some(crate::pod_network::PodNetwork::start(cp.api_port())?);
        }
        // From here on, dropping `node` cleans up whatever was started.
        let deadline = Instant::now() + NODE_START_TIMEOUT;
        node.start_containerd(deadline, options.pod_network).await?;
        node.import_image(&images.pause, PAUSE_IMAGE).await?;
        node.import_image(&images.bind9, BIND9_IMAGE).await?;
        node.start_controllers(cp)?;
        node.kubelet_args = node.write_kubelet_config(cp, &node_kubeconfig, &options)?;
        node.start_kubelet().await?;
        node.wait_ready(deadline).await?;
        Ok(node)
    }

    /// The node's run directory (logs: `containerd.log`, `kubelet.log`, ...).
    pub fn run_dir(&self) -> &Path {
        &self.dir
    }

    /// Where the kubelet projects `file` of Secret volume `volume` of pod `pod_uid` on the host:
    /// what a container of that pod reads at the volume's mount path.
    pub fn secret_volume_file(&self, pod_uid: &str, volume: &str, file: &str) -> PathBuf {
        self.dir
            .join("kubelet/pods")
            .join(pod_uid)
            .join("volumes/kubernetes.io~secret")
            .join(volume)
            .join(file)
    }

    /// The kubelet's `syncFrequency`.
    pub fn sync_frequency(&self) -> Duration {
        self.sync_frequency
    }

    /// The admin kubeconfig of the control plane (for kubectl).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The node's binaries.
    pub fn binaries(&self) -> &NodeBinaries {
        &self.bins
    }

    /// The tails of the node's logs (for diagnosing a failed test).
    pub fn logs(&self, max_bytes: u64) -> String {
        [
            "kubelet",
            "containerd",
            "kube-controller-manager",
            "kube-scheduler",
        ]
        .iter()
        .map(|n| log_tail(&self.dir.join(format!("{n}.log")), max_bytes))
        .collect::<Vec<_>>()
        .join("\n")
    }

    /// Stops the kubelet (SIGTERM, then SIGKILL); pods keep running, as in a kubelet outage.
    pub async fn stop_kubelet(&self) -> Result<()> {
        let process = self
            .kubelet
            .lock()
            .map_err(|_| Error::Once("the node's kubelet slot is poisoned".into()))?
            .take();
        if let Some(mut process) = process {
            tokio::task::spawn_blocking(move || process.stop(Duration::from_secs(10)))
                .await
                .map_err(|e| Error::Once(format!("stopping the kubelet panicked: {e}")))?;
        }
        Ok(())
    }

    /// Starts the kubelet again (same configuration) and waits for the Node to be Ready.
    pub async fn restart_kubelet(&self) -> Result<()> {
        self.stop_kubelet().await?;
        self.start_kubelet().await?;
        self.wait_ready(Instant::now() + NODE_START_TIMEOUT).await
    }

    async fn start_kubelet(&self) -> Result<()> {
        let mut command = Command::new(self.bins.bin("kubelet"));
        command.args(&self.kubelet_args);
        let log = self.dir.join("kubelet.log");
        let lifetime = self.lifetime;
        let process = tokio::task::spawn_blocking(move || {
            spawn_from_keeper_thread("kubelet", command, log, lifetime)
        })
        .await
        .map_err(|e| Error::Once(format!("starting the kubelet panicked: {e}")))??;
        self.record_pid(process.pid())?;
        *self
            .kubelet
            .lock()
            .map_err(|_| Error::Once("the node's kubelet slot is poisoned".into()))? =
            Some(process);
        Ok(())
    }

    fn record_pid(&self, pid: u32) -> Result<()> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| Error::Once("the node's state is poisoned".into()))?;
        state.pids.push(pid);
        state.save()
    }

    fn spawn(&self, name: &'static str, command: Command) -> Result<()> {
        let log = self.dir.join(format!("{name}.log"));
        let process = spawn_from_keeper_thread(name, command, log, self.lifetime)?;
        self.record_pid(process.pid())?;
        self.processes
            .lock()
            .map_err(|_| Error::Once("the node's process list is poisoned".into()))?
            .push(process);
        Ok(())
    }

    async fn start_containerd(&self, deadline: Instant, pod_network: bool) -> Result<()> {
        let root = self.dir.join("containerd");
        fs::create_dir_all(root.join("net.d")).ctx(|| format!("creating {}", root.display()))?;
        let (file, conflist) = if pod_network {
            let ipam = self.dir.join("cni-ipam");
            ("10-pods.conflist", crate::pod_network::cni_conflist(&ipam))
        } else {
            (
                "10-loopback.conflist",
                r#"{"cniVersion":"1.0.0","name":"loopback","plugins":[{"type":"loopback"}]}"#
                    .to_owned(),
            )
        };
        write_file(&root.join("net.d").join(file), &conflist, false)?;
        let config = containerd_config(&root, &self.bins);
        let config_path = root.join("config.toml");
        write_file(&config_path, &config, false)?;
        let mut command = Command::new(self.bins.bin("containerd"));
        command.arg("--config").arg(&config_path);
        // The shim is found on PATH.
        let path = std::env::var("PATH").unwrap_or_default();
        command.env("PATH", format!("{}:{path}", self.bins.dir.display()));
        self.spawn("containerd", command)?;
        loop {
            if self.ctr(&["version"]).await.is_ok() {
                return Ok(());
            }
            if self.exited("containerd") || Instant::now() >= deadline {
                return Err(Error::NotReady {
                    what: "containerd".into(),
                    reason: "its socket did not answer".into(),
                    logs: log_tail(&self.dir.join("containerd.log"), 8 * 1024),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn exited(&self, name: &str) -> bool {
        self.processes.lock().is_ok_and(|mut p| {
            p.iter_mut()
                .any(|p| p.name() == name && p.exit_status().is_some())
        })
    }

    /// Runs `ctr -a <socket> -n k8s.io <args>` and returns its stdout.
    pub async fn ctr(&self, args: &[&str]) -> Result<String> {
        let socket = self.dir.join("containerd/containerd.sock");
        ctr(&self.bins, &socket, args).await
    }

    /// Imports an OCI layout tar (`scripts/lib/oci.sh`) into the node's image store and checks
    /// that it is listed as `name` (the name its index annotates), so pods with
    /// `imagePullPolicy: IfNotPresent` or `Never` run it without a registry.
    pub async fn import_image(&self, tar: &Path, name: &str) -> Result<()> {
        let tar = tar.display().to_string();
        self.ctr(&["images", "import", "--local", &tar]).await?;
        let listed = self.ctr(&["images", "ls", "-q"]).await?;
        if !listed.lines().any(|l| l.trim() == name) {
            return Err(Error::Invalid {
                what: "image import",
                reason: format!("{tar} did not import as {name} (images: {listed})"),
            });
        }
        Ok(())
    }

    fn start_controllers(&self, cp: &ControlPlane) -> Result<()> {
        let pki = cp.run_dir().join("pki");
        let ports = free_ports(2)?;
        let kubeconfig = cp.kubeconfig_path().display().to_string();
        let mut kcm = Command::new(self.bins.bin("kube-controller-manager"));
        kcm.arg(format!("--kubeconfig={kubeconfig}"))
            .arg(format!("--authentication-kubeconfig={kubeconfig}"))
            .arg(format!("--authorization-kubeconfig={kubeconfig}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", ports[0]))
            .arg("--leader-elect=false")
            .arg(format!(
                "--service-account-private-key-file={}",
                pki.join("sa.key").display()
            ))
            .arg(format!("--root-ca-file={}", pki.join("ca.crt").display()))
            .arg(format!(
                "--cert-dir={}",
                self.dir.join("kcm-certs").display()
            ))
            .arg("--v=1");
        self.spawn("kube-controller-manager", kcm)?;
        let mut scheduler = Command::new(self.bins.bin("kube-scheduler"));
        scheduler
            .arg(format!("--kubeconfig={kubeconfig}"))
            .arg(format!("--authentication-kubeconfig={kubeconfig}"))
            .arg(format!("--authorization-kubeconfig={kubeconfig}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", ports[1]))
            .arg("--leader-elect=false")
            .arg(format!(
                "--cert-dir={}",
                self.dir.join("scheduler-certs").display()
            ))
            .arg("--v=1");
        self.spawn("kube-scheduler", scheduler)
    }

    fn write_kubelet_config(
        &self,
        cp: &ControlPlane,
        node_kubeconfig: &Path,
        options: &NodeOptions,
    ) -> Result<Vec<String>> {
        let root = self.dir.join("kubelet");
        fs::create_dir_all(root.join("pki")).ctx(|| format!("creating {}", root.display()))?;
        let ports = free_ports(2)?;
        let config = format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: {port}
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
readOnlyPort: 0
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {client_ca}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://{socket}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
oomScoreAdj: 0
syncFrequency: {sync}s
podLogsDir: {logs}
registerNode: true
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "50Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
serializeImagePulls: false
"#,
            port = ports[0],
            healthz = ports[1],
            client_ca = cp.run_dir().join("pki/client-ca.crt").display(),
            socket = self.dir.join("containerd/containerd.sock").display(),
            sync = options.sync_frequency.as_secs().max(1),
            logs = self.dir.join("pod-logs").display(),
        );
        let config_path = self.dir.join("kubelet-config.yaml");
        write_file(&config_path, &config, false)?;
        Ok([
            format!("--config={}", config_path.display()),
            format!("--kubeconfig={}", node_kubeconfig.display()),
            format!("--root-dir={}", root.display()),
            format!("--cert-dir={}", root.join("pki").display()),
            format!("--hostname-override={NODE_NAME}"),
            "--v=2".into(),
        ]
        .into_iter()
        .chain(
            options
                .pod_network
                .then(|| format!("--node-ip={}", crate::pod_network::NODE_IP)),
        )
        .collect())
    }

    async fn wait_ready(&self, deadline: Instant) -> Result<()> {
        let client = kube::Client::try_from(self.cp_config.clone())?;
        let nodes: Api<NodeObject> = Api::all(client);
        let mut last = String::from("no Node object yet");
        loop {
            let exited = self
                .kubelet
                .lock()
                .is_ok_and(|mut k| k.as_mut().is_some_and(|k| k.exit_status().is_some()));
            if exited {
                return Err(Error::NotReady {
                    what: "the kubelet".into(),
                    reason: "it exited".into(),
                    logs: log_tail(&self.dir.join("kubelet.log"), 8 * 1024),
                });
            }
            match nodes.get_opt(NODE_NAME).await {
                Ok(Some(node)) => {
                    let ready = node
                        .status
                        .and_then(|s| s.conditions)
                        .into_iter()
                        .flatten()
                        .find(|c| c.type_ == "Ready");
                    match ready {
                        Some(c) if c.status == "True" => return Ok(()),
                        Some(c) => {
                            last = format!("Ready={}: {}", c.status, c.message.unwrap_or_default())
                        }
                        None => last = "no Ready condition".into(),
                    }
                }
                Ok(None) => {}
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    what: format!("Node {NODE_NAME}"),
                    reason: last,
                    logs: self.logs(6 * 1024),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Stops everything and undoes what the node changed on the host (see the module docs).
    /// Idempotent.
    pub fn stop(&self) {
        let Some(lock) = self.lock.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        if let Ok(mut kubelet) = self.kubelet.lock()
            && let Some(mut k) = kubelet.take()
        {
            k.stop(Duration::from_secs(10));
        }
        let state = self.state.lock().map(|s| s.clone()).unwrap_or_default();
        kill_containers(&state);
        if let Ok(mut processes) = self.processes.lock() {
            while let Some(mut p) = processes.pop() {
                p.stop(Duration::from_secs(10));
            }
        }
        cleanup(&state);
        NodeState::forget();
        let _ = lock.unlock();
    }

    /// Leaves the node running (for `cargo xtask cluster up --node`); `cargo xtask cluster
    /// down` stops it with [`stop_detached`]. Start with [`Lifetime::Detached`].
    pub fn detach(self) -> NodeState {
        if let Ok(mut guard) = self.processes.lock() {
            for process in guard.drain(..) {
                process.into_pid();
            }
        }
        if let Ok(mut guard) = self.kubelet.lock()
            && let Some(k) = guard.take()
        {
            k.into_pid();
        }
        if let Ok(mut guard) = self.lock.lock() {
            guard.take();
        }
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stops a detached node (`cargo xtask cluster down`) and cleans up after it.
pub fn stop_detached() -> Result<()> {
    let lock = take_node_lock()?;
    if let Some(state) = NodeState::load() {
        stop_recorded(&state);
        cleanup(&state);
        NodeState::forget();
    }
    let _ = lock.unlock();
    Ok(())
}

fn take_node_lock() -> Result<File> {
    let dir = NodeState::dir();
    fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
    let path = dir.join("node.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ctx(|| format!("opening {}", path.display()))?;
    lock.lock().ctx(|| format!("locking {}", path.display()))?;
    Ok(lock)
}

/// Repairs what a crashed node left (with the node lock held). A detached node that still runs
/// is not touched: the caller is told to stop it.
fn repair() -> Result<()> {
    let Some(state) = NodeState::load() else {
        return Ok(());
    };
    if state.detached && state.running() {
        return Err(Error::Once(format!(
            "a node started by `cargo xtask cluster up --node` is running ({}): stop it with \
             `cargo xtask cluster down` first",
            state.run_dir.display()
        )));
    }
    tracing::warn!(dir = %state.run_dir.display(), "repairing what a previous node left behind");
    stop_recorded(&state);
    cleanup(&state);
    NodeState::forget();
    Ok(())
}

/// Stops the recorded processes (by pid, checking their command line) and the containers.
fn stop_recorded(state: &NodeState) {
    let dir = state.run_dir.display().to_string();
    // The kubelet first, so it does not restart what is killed below.
    for pid in state.pids.iter().rev() {
        crate::process::stop_pid(*pid, &dir, Duration::from_secs(10));
    }
    kill_containers(state);
}

/// SIGKILLs every process in the node's cgroups and every shim of its containerd, and waits
/// for them to go.
fn kill_containers(state: &NodeState) {
    let socket = state.containerd_socket.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut pids = cgroup_pids();
        pids.extend(shim_pids(&socket));
        pids.sort_unstable();
        pids.dedup();
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        for pid in pids {
            // SAFETY: kill(2) on a process in the node's cgroups or a shim of its containerd.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Processes in the node's cgroups (every v1 hierarchy).
fn cgroup_pids() -> Vec<u32> {
    let mut pids = Vec::new();
    for dir in cgroup_dirs() {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
    }
    pids.into_iter().filter(|p| pid_alive(*p)).collect()
}

/// Every cgroup directory under `kubepods` and `k8s.io` in every hierarchy, deepest first.
fn cgroup_dirs() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&entry.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    let mut out = Vec::new();
    let Ok(hierarchies) = fs::read_dir(CGROUP_ROOT) else {
        return out;
    };
    for hierarchy in hierarchies.flatten() {
        for name in CGROUPS {
            let dir = hierarchy.path().join(name);
            if dir.is_dir() {
                walk(&dir, &mut out);
            }
        }
    }
    out
}

/// Shims started by the containerd listening on `socket`.
fn shim_pids(socket: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            pid_cmdline(*pid).is_some_and(|c| c.contains("containerd-shim") && c.contains(socket))
        })
        .collect()
}

/// Unmounts everything under the run directory (and the containerd host path), removes the
/// cgroups, restores the sysctls, removes created host paths and a temporary run directory.
fn cleanup(state: &NodeState) {
    let mut prefixes = vec![state.run_dir.clone()];
    prefixes.extend(state.created_paths.iter().cloned());
    unmount_under(&prefixes);
    for _ in 0..50 {
        let dirs = cgroup_dirs();
        if dirs.is_empty() {
            break;
        }
        for dir in dirs {
            let _ = fs::remove_dir(&dir);
        }
        if cgroup_dirs().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for (name, value) in &state.sysctls {
        let path = Path::new("/proc/sys").join(name);
        if fs::read_to_string(&path).is_ok_and(|v| v.trim() != value)
            && let Err(e) = fs::write(&path, value)
        {
            tracing::warn!(sysctl = %name, error = %e, "restoring a sysctl");
        }
    }
    for path in &state.created_paths {
        let _ = fs::remove_dir_all(path);
    }
    if state.temporary {
        let _ = fs::remove_dir_all(&state.run_dir);
    }
}

/// Lazily unmounts every mount point under one of `prefixes`, deepest first.
fn unmount_under(prefixes: &[PathBuf]) {
    for _ in 0..5 {
        let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let mut points: Vec<PathBuf> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|p| PathBuf::from(unescape_mount_path(p)))
            .filter(|p| prefixes.iter().any(|prefix| p.starts_with(prefix)))
            .collect();
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        points.dedup();
        for point in points {
            let Ok(c) = std::ffi::CString::new(point.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            // SAFETY: umount2(2) with a valid NUL-terminated path.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

/// Decodes the octal escapes (`\040` for a space) of /proc/self/mountinfo.
fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&raw[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn ctr(bins: &NodeBinaries, socket: &Path, args: &[&str]) -> Result<String> {
    let mut command = tokio::process::Command::new(bins.bin("ctr"));
    command
        .arg("-a")
        .arg(socket)
        .arg("-n")
        .arg("k8s.io")
        .args(args)
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .map_err(|_| Error::Timeout {
            what: format!("ctr {}", args.join(" ")),
            seconds: 120,
            detail: String::new(),
        })?
        .ctx(|| "running ctr".into())?;
    if !output.status.success() {
        return Err(Error::Command {
            command: format!("ctr {}", args.join(" ")),
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// containerd's configuration: everything under `root` (but the shim sockets, which containerd
/// puts in /run/containerd whatever it is told), CRI on cgroupfs with runc from the node's
/// binaries, the loopback CNI plugin, the pinned pause image, streaming on 127.0.0.1.
fn containerd_config(root: &Path, bins: &NodeBinaries) -> String {
    let r = root.display();
    format!(
        r#"version = 3
root = "{r}/root"
state = "{r}/state"
temp = "{r}/tmp"
disabled_plugins = ["io.containerd.nri.v1.nri"]
imports = []

[grpc]
  address = "{r}/containerd.sock"

[ttrpc]
  address = "{r}/containerd.sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = "{r}/opt"
  [plugins.'io.containerd.image-verifier.v1.bindir']
    bin_dir = "{r}/image-verifier"
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "{pause}"
  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true
    enable_selinux = false
    cdi_spec_dirs = []
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "{runc}"
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["{bins}"]
      conf_dir = "{r}/net.d"
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
"#,
        pause = PAUSE_IMAGE,
        runc = bins.bin("runc").display(),
        bins = bins.dir.display(),
    )
}

/// The node shared by all tests of this test binary (with the shared control plane, started
/// with node support), started on first use with `options` (a later call with a different sync
/// frequency is an error). Stopped and cleaned up when the test binary exits.
pub async fn shared_node(options: NodeOptions) -> Result<(&'static ControlPlane, &'static Node)> {
    static SHARED: OnceLock<std::result::Result<Node, String>> = OnceLock::new();

    extern "C" fn stop_shared_at_exit() {
        if let Some(Ok(node)) = SHARED.get() {
            node.stop();
        }
    }

    let cp = crate::control_plane::shared_control_plane_with(true).await?;
    let wanted = options.sync_frequency;
    let shared = tokio::task::spawn_blocking(move || {
        SHARED.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("testkit-node".into())
                .spawn(move || {
                    let result = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| format!("building a runtime: {e}"))
                        .and_then(|rt| {
                            rt.block_on(Node::start(cp, options))
                                .map_err(|e| format!("the shared node failed to start: {e}"))
                        });
                    let ok = result.is_ok();
                    if tx.send(result).is_err() || !ok {
                        return;
                    }
                    loop {
                        std::thread::park();
                    }
                });
            if let Err(e) = spawned {
                return Err(format!("spawning the node thread: {e}"));
            }
            let result = rx.recv().map_err(|_| "the node thread died".to_owned())?;
            if result.is_ok() {
                // SAFETY: registers a plain `extern "C" fn()` that only touches a static.
                unsafe {
                    libc::atexit(stop_shared_at_exit);
                }
            }
            result
        })
    })
    .await
    .map_err(|e| Error::Once(format!("starting the shared node panicked: {e}")))?;
    let node = shared.as_ref().map_err(|e| Error::Once(e.clone()))?;
    if node.sync_frequency != wanted {
        return Err(Error::Once(format!(
            "the shared node runs with syncFrequency {:?}, not {wanted:?}: use one test binary \
             per kubelet configuration",
            node.sync_frequency
        )));
    }
    Ok((cp, node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mount_path("/var/lib/kubelet"), "/var/lib/kubelet");
        assert_eq!(unescape_mount_path(r"/x\"), r"/x\");
    }

    #[test]
    fn containerd_config_keeps_everything_under_its_root() {
        let bins = NodeBinaries {
            dir: PathBuf::from("/cache/bins"),
        };
        let config = containerd_config(Path::new("/t/containerd"), &bins);
        // Every absolute path (a quoted value starting with `/`).
        for line in config.lines().filter(|l| l.contains("\"/")) {
            assert!(
                line.contains("/t/containerd") || line.contains("/cache/bins"),
                "{line}"
            );
        }
        assert!(config.contains("restrict_oom_score_adj = true"));
        assert!(config.contains("SystemdCgroup = false"));
        assert!(config.contains(r#"stream_server_address = "127.0.0.1""#));
    }
}
