//! A real etcd + kube-apiserver pair on free loopback ports, like controller-runtime's envtest.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bins::Binaries;
use crate::error::{Error, IoContext, Result};
use crate::pki::{TestCa, signing_key_pair};
use crate::process::{Lifetime, ManagedProcess, free_ports, log_tail};
use crate::wait::POLL_INTERVAL;

/// How long the two processes get to become ready (2 busy cores can be slow).
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// The admin user's name (its client certificate also carries the group `system:masters`).
pub const ADMIN_USER: &str = "e2e-admin";

/// Options of [`ControlPlane::start_with`].
#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    /// Directory for certificates, the etcd data, logs and kubeconfigs. `None`: a fresh temporary
    /// directory that is removed on stop. A given directory is created, reused and kept.
    pub run_dir: Option<PathBuf>,
    /// Whether the processes die with this process or outlive it.
    pub lifetime: Lifetime,
    /// Readiness deadline for etcd and the apiserver together.
    pub start_timeout: Duration,
    /// The binaries; `None`: [`Binaries::locate`].
    pub binaries: Option<Binaries>,
    /// Prepare the apiserver for a real node ([`crate::node::Node`]): `Node,RBAC` authorization,
    /// the `NodeRestriction` admission plugin, a client certificate for its calls to the kubelet
    /// (`pki/kubelet-client.*`, group `system:masters`) and the node's kubeconfig
    /// (`node.kubeconfig`, `system:node:<name>` in `system:nodes`). Off by default: nothing
    /// else changes for clients without it.
    pub node: bool,
    /// Pods have addresses of their own (a node started with
    /// [`crate::node::NodeOptions::pod_network`]) and there is no kube-proxy: the apiserver calls
    /// a Service (a webhook's `service` reference) at its endpoints' addresses
    /// (`--enable-aggregator-routing`) rather than at its ClusterIP.
    pub pod_network: bool,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        Self {
            run_dir: None,
            lifetime: Lifetime::TiedToParent,
            start_timeout: DEFAULT_START_TIMEOUT,
            binaries: None,
            node: false,
            pod_network: false,
        }
    }
}

/// Where a started control plane lives (what `cargo xtask cluster` records).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ControlPlaneInfo {
    /// The run directory.
    pub run_dir: PathBuf,
    /// The binaries' directory.
    pub bin_dir: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub server_url: String,
    /// The apiserver's secure port.
    pub api_port: u16,
    /// etcd's client port.
    pub etcd_port: u16,
    /// etcd's peer port.
    pub etcd_peer_port: u16,
    /// etcd's pid.
    pub etcd_pid: u32,
    /// kube-apiserver's pid.
    pub apiserver_pid: u32,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The node's kubeconfig when started with [`ControlPlaneOptions::node`].
    #[serde(default)]
    pub node_kubeconfig: Option<PathBuf>,
}

/// A running etcd + kube-apiserver. Stopped (SIGTERM, then SIGKILL) on [`ControlPlane::stop`]
/// or drop; a temporary run directory is removed then.
pub struct ControlPlane {
    bins: Binaries,
    run_dir: PathBuf,
    temp_dir: Mutex<Option<tempfile::TempDir>>,
    api_port: u16,
    etcd_port: u16,
    etcd_peer_port: u16,
    server_url: String,
    ca_pem: String,
    kubeconfig_path: PathBuf,
    kubeconfig_yaml: String,
    config: kube::Config,
    /// `[etcd, kube-apiserver]` while running.
    processes: Mutex<Vec<ManagedProcess>>,
    startup_time: Duration,
    lifetime: Lifetime,
    start_timeout: Duration,
    node_kubeconfig: Option<PathBuf>,
    features: ApiserverFeatures,
}

/// What the apiserver is started for, beyond a bare control plane (the same on every restart).
#[derive(Debug, Clone, Copy)]
struct ApiserverFeatures {
    node: bool,
    pod_network: bool,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server_url", &self.server_url)
            .field("run_dir", &self.run_dir)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Starts a control plane with default options (temporary directory, tied to this thread).
    pub async fn start() -> Result<ControlPlane> {
        Self::start_with(ControlPlaneOptions::default()).await
    }

    /// Starts etcd, waits for `/health`, starts kube-apiserver, waits for `/readyz`, and writes
    /// `admin.kubeconfig`. On failure the processes are stopped and the error carries their logs.
    pub async fn start_with(options: ControlPlaneOptions) -> Result<ControlPlane> {
        let bins = match options.binaries {
            Some(b) => b,
            None => tokio::task::spawn_blocking(Binaries::locate)
                .await
                .map_err(|e| Error::Once(format!("locating the binaries panicked: {e}")))??,
        };
        let started = Instant::now();
        let (run_dir, temp_dir) = match options.run_dir {
            Some(dir) => {
                fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
                (dir, None)
            }
            None => {
                remove_abandoned_run_dirs();
                let temp = tempfile::Builder::new()
                    .prefix(TEMP_PREFIX)
                    .tempdir()
                    .ctx(|| "creating the control plane's temporary directory".into())?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        write_file(
            &run_dir.join(OWNER_FILE),
            &std::process::id().to_string(),
            false,
        )?;
        let ports = free_ports(3)?;
        let (api_port, etcd_port, etcd_peer_port) = (ports[0], ports[1], ports[2]);
        let server_url = format!("https://127.0.0.1:{api_port}");

        let pki = run_dir.join("pki");
        fs::create_dir_all(&pki).ctx(|| format!("creating {}", pki.display()))?;
        write_file(
            &run_dir.join(crate::audit::POLICY_FILE),
            crate::audit::POLICY,
            false,
        )?;
        let serving_ca = TestCa::new("e2e-apiserver-ca")?;
        // The `kubernetes` Service's address too: pods with their own network reach the
        // apiserver there (crate::node::NodeOptions::pod_network).
        let serving = serving_ca.server_cert(&[
            crate::pod_network::KUBERNETES_SERVICE_IP,
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
        ])?;
        let client_ca = TestCa::new("e2e-client-ca")?;
        let admin = client_ca.client_cert(ADMIN_USER, &["system:masters"])?;
        let sa = signing_key_pair()?;
        let ca_pem = serving_ca.cert_pem();
        write_file(&pki.join("ca.crt"), &ca_pem, false)?;
        write_file(&pki.join("apiserver.crt"), &serving.cert, false)?;
        write_file(&pki.join("apiserver.key"), &serving.key, true)?;
        write_file(&pki.join("client-ca.crt"), &client_ca.cert_pem(), false)?;
        write_file(&pki.join("admin.crt"), &admin.cert, false)?;
        write_file(&pki.join("admin.key"), &admin.key, true)?;
        write_file(&pki.join("sa.key"), &sa.private, true)?;
        write_file(&pki.join("sa.pub"), &sa.public, false)?;
        let node_kubeconfig = if options.node {
            let kubelet_client =
                client_ca.client_cert("kube-apiserver-kubelet-client", &["system:masters"])?;
            write_file(&pki.join("kubelet-client.crt"), &kubelet_client.cert, false)?;
            write_file(&pki.join("kubelet-client.key"), &kubelet_client.key, true)?;
            let node = client_ca.client_cert(
                &format!("system:node:{}", crate::node::NODE_NAME),
                &["system:nodes"],
            )?;
            let yaml = kubeconfig_yaml(
                &server_url,
                &ca_pem,
                "node",
                &format!(
                    "client-certificate-data: {}\n    client-key-data: {}",
                    B64.encode(&node.cert),
                    B64.encode(&node.key)
                ),
            );
            let path = run_dir.join("node.kubeconfig");
            write_file(&path, &yaml, true)?;
            Some(path)
        } else {
            None
        };

        let kubeconfig_yaml = kubeconfig_yaml(
            &server_url,
            &ca_pem,
            "admin",
            &format!(
                "client-certificate-data: {}\n    client-key-data: {}",
                B64.encode(&admin.cert),
                B64.encode(&admin.key)
            ),
        );
        let kubeconfig_path = run_dir.join("admin.kubeconfig");
        write_file(&kubeconfig_path, &kubeconfig_yaml, true)?;
        let config = config_from_yaml(&kubeconfig_yaml).await?;

        let mut processes = Vec::with_capacity(2);
        let deadline = Instant::now() + options.start_timeout;

        let etcd_log = run_dir.join("etcd.log");
        let mut etcd = Command::new(&bins.etcd);
        let peer = format!("http://127.0.0.1:{etcd_peer_port}");
        let client_url = format!("http://127.0.0.1:{etcd_port}");
        etcd.arg("--name=e2e")
            .arg(format!("--data-dir={}", run_dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=e2e={peer}"))
            .arg("--unsafe-no-fsync=true")
            .arg("--log-level=warn");
        processes.push(ManagedProcess::spawn(
            "etcd",
            etcd,
            &etcd_log,
            options.lifetime,
        )?);
        if let Err(reason) = wait_etcd(&mut processes[0], etcd_port, deadline).await {
            return Err(not_ready("etcd", reason, &[&etcd_log]));
        }

        let api_log = run_dir.join("kube-apiserver.log");
        let features = ApiserverFeatures {
            node: options.node,
            pod_network: options.pod_network,
        };
        let api = apiserver_command(&bins, &pki, &server_url, etcd_port, api_port, features);
        processes.push(ManagedProcess::spawn(
            "kube-apiserver",
            api,
            &api_log,
            options.lifetime,
        )?);
        let readyz = wait_apiserver(&config, &mut processes, deadline).await;
        if let Err(reason) = readyz {
            // Dropping `processes` stops both; read the logs first.
            return Err(not_ready("kube-apiserver", reason, &[&api_log, &etcd_log]));
        }
        tracing::info!(
            url = %server_url,
            dir = %run_dir.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "control plane ready"
        );
        Ok(ControlPlane {
            bins,
            run_dir,
            temp_dir: Mutex::new(temp_dir),
            api_port,
            etcd_port,
            etcd_peer_port,
            server_url,
            ca_pem,
            kubeconfig_path,
            kubeconfig_yaml,
            config,
            processes: Mutex::new(processes),
            startup_time: started.elapsed(),
            lifetime: options.lifetime,
            start_timeout: options.start_timeout,
            node_kubeconfig,
            features,
        })
    }

    /// A new admin client (`system:masters`). Call it from the runtime that will use the client:
    /// a `kube::Client` is bound to the tokio runtime it was created on.
    pub fn client(&self) -> Result<kube::Client> {
        Ok(kube::Client::try_from(self.config.clone())?)
    }

    /// The admin `kube::Config`.
    pub fn config(&self) -> &kube::Config {
        &self.config
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The apiserver's secure port.
    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    /// etcd's client port.
    pub fn etcd_port(&self) -> u16 {
        self.etcd_port
    }

    /// The run directory (certificates in `pki/`, logs, kubeconfigs).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The admin kubeconfig file.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The admin kubeconfig's contents.
    pub fn kubeconfig_yaml(&self) -> &str {
        &self.kubeconfig_yaml
    }

    /// The CA (PEM) that signed the apiserver's serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// How long [`ControlPlane::start_with`] took, from certificates to `/readyz` (not counting
    /// locating or building the binaries).
    pub fn startup_time(&self) -> Duration {
        self.startup_time
    }

    /// The node's kubeconfig, when started with [`ControlPlaneOptions::node`].
    pub fn node_kubeconfig(&self) -> Option<&Path> {
        self.node_kubeconfig.as_deref()
    }

    /// The binaries in use.
    pub fn binaries(&self) -> &Binaries {
        &self.bins
    }

    /// A description of the running control plane (pids are 0 once stopped).
    pub fn info(&self) -> ControlPlaneInfo {
        let pids: Vec<u32> = self
            .processes
            .lock()
            .map(|p| p.iter().map(ManagedProcess::pid).collect())
            .unwrap_or_default();
        ControlPlaneInfo {
            run_dir: self.run_dir.clone(),
            bin_dir: self.bins.dir.clone(),
            server_url: self.server_url.clone(),
            api_port: self.api_port,
            etcd_port: self.etcd_port,
            etcd_peer_port: self.etcd_peer_port,
            etcd_pid: pids.first().copied().unwrap_or(0),
            apiserver_pid: pids.get(1).copied().unwrap_or(0),
            kubeconfig: self.kubeconfig_path.clone(),
            node_kubeconfig: self.node_kubeconfig.clone(),
        }
    }

    /// Builds a kubeconfig (YAML) for the same server that authenticates with a bearer token.
    pub fn token_kubeconfig_yaml(&self, user: &str, token: &str) -> String {
        kubeconfig_yaml(
            &self.server_url,
            &self.ca_pem,
            user,
            &format!("token: {}", serde_json::Value::from(token)),
        )
    }

    /// Stops kube-apiserver (SIGTERM, SIGKILL after [`STOP_GRACE`]) and leaves etcd running, as
    /// an apiserver outage would. Clients see connection errors until
    /// [`ControlPlane::start_apiserver`]. Every test sharing this control plane sees the outage:
    /// use it only in a test binary of its own. Idempotent.
    pub async fn stop_apiserver(&self) -> Result<()> {
        let process = match self.processes.lock() {
            Ok(mut guard) if guard.len() == 2 => guard.pop(),
            Ok(_) => None,
            Err(_) => {
                return Err(Error::Once(
                    "the control plane's process list is poisoned".into(),
                ));
            }
        };
        if let Some(mut process) = process {
            tokio::task::spawn_blocking(move || process.stop(STOP_GRACE))
                .await
                .map_err(|e| Error::Once(format!("stopping kube-apiserver panicked: {e}")))?;
        }
        Ok(())
    }

    /// Starts kube-apiserver again after [`ControlPlane::stop_apiserver`], on the same port with
    /// the same certificates, service-account keys and etcd (so every object, kubeconfig and
    /// token stays valid), and waits for `/readyz`. Does nothing when it is running.
    pub async fn start_apiserver(&self) -> Result<()> {
        let running = self
            .processes
            .lock()
            .map_err(|_| Error::Once("the control plane's process list is poisoned".into()))?
            .len();
        match running {
            1 => {}
            2 => return Ok(()),
            _ => return Err(Error::Once("the control plane is stopped".into())),
        }
        let command = apiserver_command(
            &self.bins,
            &self.run_dir.join("pki"),
            &self.server_url,
            self.etcd_port,
            self.api_port,
            self.features,
        );
        let api_log = self.run_dir.join("kube-apiserver.log");
        let lifetime = self.lifetime;
        let log = api_log.clone();
        let process = tokio::task::spawn_blocking(move || {
            spawn_from_keeper_thread("kube-apiserver", command, log, lifetime)
        })
        .await
        .map_err(|e| Error::Once(format!("starting kube-apiserver panicked: {e}")))??;
        let mut started = [process];
        let deadline = Instant::now() + self.start_timeout;
        if let Err(reason) = wait_apiserver(&self.config, &mut started, deadline).await {
            let [mut process] = started;
            process.stop(STOP_GRACE);
            let etcd_log = self.run_dir.join("etcd.log");
            return Err(not_ready("kube-apiserver", reason, &[&api_log, &etcd_log]));
        }
        let [process] = started;
        match self.processes.lock() {
            Ok(mut guard) if guard.len() == 1 => {
                guard.push(process);
                Ok(())
            }
            _ => Err(Error::Once(
                "the control plane changed while kube-apiserver was restarting".into(),
            )),
        }
    }

    /// Restarts kube-apiserver: [`ControlPlane::stop_apiserver`] then
    /// [`ControlPlane::start_apiserver`]. Returns once `/readyz` answers again.
    pub async fn restart_apiserver(&self) -> Result<()> {
        self.stop_apiserver().await?;
        self.start_apiserver().await
    }

    /// Stops kube-apiserver, then etcd (SIGTERM, SIGKILL after [`STOP_GRACE`]), waits for both,
    /// and removes a temporary run directory. Idempotent.
    pub fn stop(&self) {
        let mut processes = match self.processes.lock() {
            Ok(mut guard) => std::mem::take(&mut *guard),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        while let Some(mut process) = processes.pop() {
            process.stop(STOP_GRACE);
        }
        let temp = match self.temp_dir.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(temp) = temp
            && let Err(e) = temp.close()
        {
            tracing::warn!(error = %e, "removing the control plane's directory");
        }
    }

    /// Leaves the processes running and the run directory in place (for `cargo xtask cluster
    /// up`) and returns where they are. Start with [`Lifetime::Detached`] and a `run_dir`.
    pub fn detach(self) -> ControlPlaneInfo {
        let info = self.info();
        if let Ok(mut guard) = self.processes.lock() {
            for process in guard.drain(..) {
                process.into_pid();
            }
        }
        if let Ok(mut guard) = self.temp_dir.lock()
            && let Some(temp) = guard.take()
        {
            let _ = temp.keep();
        }
        info
    }

    /// Whether both processes are still running.
    pub fn is_running(&self) -> bool {
        self.processes.lock().is_ok_and(|mut p| {
            p.len() == 2 && p.iter_mut().all(|proc| proc.exit_status().is_none())
        })
    }

    /// The tails of the etcd and apiserver logs (for diagnosing a failed test).
    pub fn logs(&self, max_bytes: u64) -> String {
        [
            log_tail(&self.run_dir.join("kube-apiserver.log"), max_bytes),
            log_tail(&self.run_dir.join("etcd.log"), max_bytes),
        ]
        .join("\n")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The control plane shared by all tests of this test binary, started on first use.
///
/// It is started on a dedicated thread that lives as long as the process, so `PR_SET_PDEATHSIG`
/// kills etcd and kube-apiserver if the test binary dies, and an `atexit` hook stops them
/// gracefully (and removes the directory) when it exits normally. A start failure is remembered
/// and returned to every later caller. Create clients per test with [`ControlPlane::client`].
pub async fn shared_control_plane() -> Result<&'static ControlPlane> {
    shared_control_plane_with(false).await
}

/// [`shared_control_plane`], started with [`ControlPlaneOptions::node`] when `node` is set by
/// the first caller; a later caller asking for node support from one started without it gets an
/// error (start the node first in such a test binary).
pub(crate) async fn shared_control_plane_with(node: bool) -> Result<&'static ControlPlane> {
    static SHARED: OnceLock<std::result::Result<ControlPlane, String>> = OnceLock::new();

    extern "C" fn stop_shared_at_exit() {
        if let Some(Ok(cp)) = SHARED.get() {
            cp.stop();
        }
    }

    fn start_on_dedicated_thread(node: bool) -> std::result::Result<ControlPlane, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("testkit-control-plane".into())
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("building a runtime: {e}"))
                    .and_then(|rt| {
                        rt.block_on(ControlPlane::start_with(ControlPlaneOptions {
                            node,
                            ..ControlPlaneOptions::default()
                        }))
                        .map_err(|e| format!("the shared control plane failed to start: {e}"))
                    });
                let ok = result.is_ok();
                if tx.send(result).is_err() || !ok {
                    return;
                }
                // The children's PDEATHSIG fires when this thread ends: keep it for the process
                // lifetime.
                loop {
                    std::thread::park();
                }
            });
        if let Err(e) = spawned {
            return Err(format!("spawning the control-plane thread: {e}"));
        }
        let result = rx
            .recv()
            .map_err(|_| "the control-plane thread died".to_owned())?;
        if result.is_ok() {
            // SAFETY: registers a plain `extern "C" fn()` that only touches a static.
            unsafe {
                libc::atexit(stop_shared_at_exit);
            }
        }
        result
    }

    let shared =
        tokio::task::spawn_blocking(move || SHARED.get_or_init(|| start_on_dedicated_thread(node)))
            .await
            .map_err(|e| Error::Once(format!("starting the shared control plane panicked: {e}")))?;
    let cp = shared.as_ref().map_err(|e| Error::Once(e.clone()))?;
    if node && cp.node_kubeconfig().is_none() {
        return Err(Error::Once(
            "the shared control plane was started without node support: call \
             node::shared_node before anything else starts it in this test binary"
                .into(),
        ));
    }
    Ok(cp)
}

/// File in a run directory naming the pid of the process that owns it.
const OWNER_FILE: &str = "owner.pid";
/// Prefix of temporary run directories.
const TEMP_PREFIX: &str = "rndc-warden-cp-";

/// Removes temporary run directories left behind by test processes that were killed (their
/// etcd WAL alone preallocates tens of MB). A directory is abandoned when its owner pid is gone.
fn remove_abandoned_run_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        let dir = entry.path();
        let owner = fs::read_to_string(dir.join(OWNER_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if let Some(pid) = owner
            && !crate::process::pid_alive(pid)
        {
            tracing::info!(dir = %dir.display(), pid, "removing an abandoned control-plane directory");
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

/// The kube-apiserver command line (the same on every start, so a restart keeps port, certificates
/// and etcd).
fn apiserver_command(
    bins: &Binaries,
    pki: &Path,
    server_url: &str,
    etcd_port: u16,
    api_port: u16,
    features: ApiserverFeatures,
) -> Command {
    let mut api = Command::new(&bins.kube_apiserver);
    let p = |name: &str| pki.join(name).display().to_string();
    api.arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
        .arg("--bind-address=127.0.0.1")
        .arg("--advertise-address=127.0.0.1")
        .arg("--endpoint-reconciler-type=none")
        .arg(format!("--secure-port={api_port}"))
        .arg(format!("--cert-dir={}", pki.display()))
        .arg(format!("--tls-cert-file={}", p("apiserver.crt")))
        .arg(format!("--tls-private-key-file={}", p("apiserver.key")))
        .arg(format!("--client-ca-file={}", p("client-ca.crt")))
        .arg(format!("--service-account-issuer={server_url}"))
        .arg(format!("--service-account-key-file={}", p("sa.pub")))
        .arg(format!(
            "--service-account-signing-key-file={}",
            p("sa.key")
        ))
        .arg("--service-cluster-ip-range=10.0.0.0/24")
        .arg("--allow-privileged=true")
        .arg("--v=1");
    if !features.pod_network {
        // Pods run with a token only where pods talk to the apiserver; elsewhere a pod needs no
        // ServiceAccount to exist.
        api.arg("--disable-admission-plugins=ServiceAccount");
    }
    // Writes are audited (crate::audit), from the run directory that holds `pki`.
    if let Some(run_dir) = pki.parent() {
        api.args(crate::audit::apiserver_args(run_dir));
    }
    if features.pod_network {
        // No kube-proxy: webhook and aggregated-API Services are called at their endpoints.
        api.arg("--enable-aggregator-routing=true");
    }
    if features.node {
        // The kubelet is reached by its Hostname address, `localhost` (never the host's eth0
        // address, the node's InternalIP).
        api.arg("--authorization-mode=Node,RBAC")
            .arg("--enable-admission-plugins=NodeRestriction")
            .arg(format!(
                "--kubelet-client-certificate={}",
                p("kubelet-client.crt")
            ))
            .arg(format!("--kubelet-client-key={}", p("kubelet-client.key")))
            .arg("--kubelet-preferred-address-types=Hostname");
    } else {
        api.arg("--authorization-mode=RBAC");
    }
    api
}

/// Spawns a process from a thread that lives as long as this process, so that
/// `PR_SET_PDEATHSIG` (tied to the spawning *thread*) does not kill it when the caller's thread
/// (e.g. a test runtime's worker) ends.
pub(crate) fn spawn_from_keeper_thread(
    name: &'static str,
    command: Command,
    log: PathBuf,
    lifetime: Lifetime,
) -> Result<ManagedProcess> {
    if lifetime == Lifetime::Detached {
        return ManagedProcess::spawn(name, command, &log, lifetime);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("testkit-{name}-keeper"))
        .spawn(move || {
            let spawned = ManagedProcess::spawn(name, command, &log, lifetime);
            let ok = spawned.is_ok();
            if tx.send(spawned).is_err() || !ok {
                return;
            }
            // The child's PDEATHSIG fires when this thread ends: keep it for the process lifetime.
            loop {
                std::thread::park();
            }
        })
        .ctx(|| format!("spawning the {name} keeper thread"))?;
    rx.recv()
        .map_err(|_| Error::Once(format!("the {name} keeper thread died")))?
}

fn not_ready(what: &str, reason: String, logs: &[&Path]) -> Error {
    Error::NotReady {
        what: what.to_owned(),
        reason,
        logs: logs
            .iter()
            .map(|l| log_tail(l, 8 * 1024))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

async fn wait_etcd(
    etcd: &mut ManagedProcess,
    port: u16,
    deadline: Instant,
) -> std::result::Result<(), String> {
    let mut last;
    loop {
        if let Some(status) = etcd.exit_status() {
            return Err(format!("etcd exited early ({status})"));
        }
        match http_get_plain(port, "/health").await {
            Ok(body) if body.contains(r#""health":"true""#) => return Ok(()),
            Ok(body) => last = format!("/health said {body}"),
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out waiting for etcd /health ({last})"));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn wait_apiserver(
    config: &kube::Config,
    processes: &mut [ManagedProcess],
    deadline: Instant,
) -> std::result::Result<(), String> {
    let client = kube::Client::try_from(config.clone()).map_err(|e| e.to_string())?;
    let mut last;
    loop {
        for p in processes.iter_mut() {
            if let Some(status) = p.exit_status() {
                return Err(format!("{} exited early ({status})", p.name()));
            }
        }
        let request = http::Request::get("/readyz")
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        match client.request_text(request).await {
            Ok(body) if body.trim() == "ok" => return Ok(()),
            Ok(body) => last = format!("/readyz said {body}"),
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out waiting for /readyz ({last})"));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A minimal HTTP/1.0 GET on 127.0.0.1 (etcd's plain-HTTP health endpoint); returns the body.
async fn http_get_plain(port: u16, path: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "reading /health"))??;
    let text = String::from_utf8_lossy(&response);
    Ok(text
        .split_once("\r\n\r\n")
        .map_or(text.as_ref(), |(_, body)| body)
        .to_owned())
}

/// A one-cluster, one-user kubeconfig; `user_fields` are the YAML lines of the user entry.
fn kubeconfig_yaml(server: &str, ca_pem: &str, user: &str, user_fields: &str) -> String {
    let ca = B64.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    {user_fields}
contexts:
- name: e2e
  context:
    cluster: e2e
    user: {user}
    namespace: default
current-context: e2e
"
    )
}

/// Loads a `kube::Config` from kubeconfig YAML.
pub async fn config_from_yaml(yaml: &str) -> Result<kube::Config> {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(yaml)?;
    Ok(kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?)
}

/// Writes a file; `private` files get mode 0600.
pub(crate) fn write_file(path: &Path, contents: &str, private: bool) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = fs::File::options();
    options.write(true).create(true).truncate(true);
    if private {
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .ctx(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .ctx(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of stand-in binaries: etcd prints a marker and exits at once.
    fn failing_binaries(dir: &Path) -> Binaries {
        use std::os::unix::fs::PermissionsExt as _;
        for (name, body) in [
            ("etcd", "echo 'etcd: boom, cannot start' >&2; exit 3"),
            ("kube-apiserver", "exit 1"),
            ("kubectl", "exit 1"),
            ("helm", "exit 1"),
        ] {
            let path = dir.join(name);
            fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write stand-in");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        Binaries::in_dir(dir).expect("stand-in binaries")
    }

    #[tokio::test]
    async fn a_failed_start_reports_the_logs_and_cleans_up() {
        let bins_dir = tempfile::tempdir().expect("bins dir");
        let run_dir = tempfile::tempdir().expect("run dir");
        let err = ControlPlane::start_with(ControlPlaneOptions {
            run_dir: Some(run_dir.path().join("cp")),
            binaries: Some(failing_binaries(bins_dir.path())),
            start_timeout: Duration::from_secs(20),
            ..ControlPlaneOptions::default()
        })
        .await
        .expect_err("etcd exits, so the start must fail");
        let message = err.to_string();
        assert!(message.contains("etcd exited early"), "{message}");
        assert!(message.contains("etcd: boom, cannot start"), "{message}");
    }
}
