//! The real Bindy operator (firestoned/bindy 0.6.0, commit ac9ea2a), run out of cluster against
//! the local control plane exactly as its Deployment runs it: `bindy run` acting as its own
//! ServiceAccount (upstream's RBAC from `deploy/operator/rbac`), with leader election and the
//! env of `deploy/operator/deployment.yaml`.
//!
//! ```no_run
//! # async fn example() -> rndc_warden_testkit::Result<()> {
//! use std::time::Duration;
//! use rndc_warden_testkit::{TestEnv, TestNamespace};
//! use rndc_warden_testkit::bindy::{BindyCrds, BindyOperator, BindyOptions, LEADER_LOG, OperatorSlot};
//!
//! let env = TestEnv::new("with-bindy").await?;
//! // One operator at a time per test binary (it watches every namespace), with Bindy's CRDs.
//! let slot = OperatorSlot::acquire(&env.client, BindyCrds::Upstream).await?;
//! let operator_ns = TestNamespace::create(&env.client, "bindy-system").await?;
//! let options = BindyOptions::new(operator_ns.name(), [env.ns.name()]);
//! let mut bindy = BindyOperator::start(&slot, env.cp, &env.client, options).await?;
//! bindy.wait_for_log(LEADER_LOG, Duration::from_secs(60)).await?;
//! bindy.restart().await?; // e.g. in the middle of a rotation
//! # Ok(()) }
//! ```
//!
//! The binary comes from `$BINDY_BIN`, or `scripts/bindy-bin.sh` builds it once (about 14 min on
//! 2 cores) into `${XDG_CACHE_HOME:-$HOME/.cache}/rndc-warden/bindy-ac9ea2a/`. That build changes
//! one thing: the metrics listener binds 127.0.0.1 on the port in `BINDY_METRICS_PORT`
//! (upstream: `0.0.0.0:8080`); [`BindyOperator`] gives every start a free port.
//!
//! Facts that shape this module:
//! - `bindy run` always watches every namespace (its `BINDY_WATCH_NAMESPACES` parser exists but is
//!   never used at ac9ea2a), and an operator per test would fight over every test's objects. So
//!   the tests of one binary take turns: [`OperatorSlot`] is a process-wide lock, and acquiring it
//!   removes every Bindy object left by the previous holder (finalizers included) and installs the
//!   CRD set the next test wants (CRDs are cluster-wide too).
//! - Upstream grants Secret writes per namespace (Role `bindy-secrets-writer`); the operator can
//!   write Secrets only in [`BindyOptions::managed_namespaces`] and its own namespace.
//! - There is no kubelet: the operator's Deployments never get pods.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::{Api, Client};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::bins::workspace_root;
use crate::control_plane::{ControlPlane, spawn_from_keeper_thread};
use crate::crd::{FIELD_MANAGER, apply_crds};
use crate::error::{Error, IoContext, Result};
use crate::namespace::{Identity, mint_token};
use crate::process::{Lifetime, ManagedProcess, free_ports, log_tail};

/// Environment variable naming a ready `bindy` binary (skips the build script).
pub const BIN_ENV: &str = "BINDY_BIN";
/// Environment variable naming the Bindy source tree (default `../shared/upstream/bindy` beside
/// the workspace).
pub const SRC_ENV: &str = "BINDY_SRC";
/// The upstream commit the binary is built from.
pub const UPSTREAM_COMMIT: &str = "ac9ea2a";
/// The upstream version.
pub const UPSTREAM_VERSION: &str = "0.6.0";
/// The environment variable the test build of the operator reads its metrics port from.
pub const METRICS_PORT_ENV: &str = "BINDY_METRICS_PORT";
/// Upstream's ServiceAccount name (`deploy/operator/rbac/serviceaccount.yaml`).
pub const SERVICE_ACCOUNT: &str = "bindy";
/// Upstream's namespaced Secret writer Role (`deploy/operator/rbac/secrets-role.yaml`).
pub const SECRETS_WRITER_ROLE: &str = "bindy-secrets-writer";
/// A log line the operator prints once it holds its Lease and starts its controllers.
pub const LEADER_LOG: &str = "Leadership acquired! Starting controllers";
/// The prefix of the log line the operator prints when it reconciles an instance
/// (`Reconciling Bind9Instance: <namespace>/<name>`).
pub const RECONCILE_INSTANCE_LOG: &str = "Reconciling Bind9Instance: ";
/// Set (to anything but `0`) to keep the operator's logs of passing tests too (their directory
/// is printed on drop); failing tests always keep them.
pub const KEEP_LOGS_ENV: &str = "BINDY_KEEP_LOGS";
/// How long [`BindyOperator::stop`] waits between SIGTERM and SIGKILL (the Deployment's
/// `terminationGracePeriodSeconds` is the Kubernetes default, 30 s; the operator releases its
/// Lease in well under that).
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// The Bindy source tree: `$BINDY_SRC`, else `../shared/upstream/bindy` beside the workspace.
pub fn source_dir() -> PathBuf {
    std::env::var_os(SRC_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/upstream/bindy"))
}

/// Finds the operator binary once per process: `$BINDY_BIN` if set, otherwise runs
/// `scripts/bindy-bin.sh` (which builds it on first use, caches it outside the work tree keyed
/// by the upstream commit, and serialises concurrent builds with a file lock). Its progress goes
/// to stderr. An error says what is missing and how to get it; tests that need the operator fail
/// with it, they never skip.
pub fn locate() -> Result<PathBuf> {
    static FOUND: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| locate_uncached().map_err(|e| e.to_string()))
        .clone()
        .map_err(Error::Once)
}

fn locate_uncached() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os(BIN_ENV).filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        return if is_executable(&bin) {
            Ok(bin)
        } else {
            Err(Error::Once(format!(
                "{BIN_ENV}={} is not an executable file; unset it to build the Bindy operator \
                 with scripts/bindy-bin.sh, or point it at that script's output",
                bin.display()
            )))
        };
    }
    let script = workspace_root().join("scripts/bindy-bin.sh");
    let output = Command::new("bash")
        .arg(&script)
        .env(SRC_ENV, source_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .ctx(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        return Err(Error::Once(format!(
            "building the Bindy operator {UPSTREAM_VERSION} ({UPSTREAM_COMMIT}) with {} failed \
             ({}); its messages are above. It needs cargo (stable >= 1.95) and the source in {} \
             (set {SRC_ENV}), or set {BIN_ENV} to a built binary",
            script.display(),
            output.status,
            source_dir().display()
        )));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let bin = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| {
            Error::Once(format!(
                "{} printed no binary path on its last line",
                script.display()
            ))
        })?;
    if !is_executable(&bin) {
        return Err(Error::Once(format!(
            "{} printed {}, which is not an executable file",
            script.display(),
            bin.display()
        )));
    }
    Ok(bin)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Which CustomResourceDefinitions the operator runs against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindyCrds {
    /// All twelve of Bindy's CRDs (`deploy/operator/crds/`), as a cluster that installed the
    /// operator has them.
    Upstream,
    /// These CRDs (YAML, e.g. rndc-warden's own three) for the kinds they define and Bindy's for
    /// the others: the operator watches all twelve kinds and needs each one served.
    Replacing(String),
    /// Leave whatever is installed alone (the test installs them itself).
    AsInstalled,
}

/// One of Bindy's kinds, from its CRD.
#[derive(Debug, Clone)]
pub struct BindyKind {
    /// The CRD's name (`<plural>.<group>`).
    pub crd_name: String,
    /// The kind's API resource (group, version, kind, plural).
    pub resource: ApiResource,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
}

/// Bindy's CRDs (`deploy/operator/crds/*.crd.yaml`) as YAML documents, in file-name order.
pub fn upstream_crd_documents() -> Result<Vec<String>> {
    let dir = source_dir().join("deploy/operator/crds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ctx(|| {
            format!(
                "reading Bindy's CRDs in {} (set {SRC_ENV} to the Bindy source)",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).ctx(|| format!("reading {}", f.display())))
        .collect()
}

/// Bindy's twelve kinds, from its CRDs.
pub fn upstream_kinds() -> Result<Vec<BindyKind>> {
    let mut kinds = Vec::new();
    for document in upstream_crd_documents()? {
        let crd: serde_json::Value = serde_yaml_ng::from_str(&document)?;
        let text = |pointer: &str| {
            crd.pointer(pointer)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| Error::Invalid {
                    what: "Bindy CRD",
                    reason: format!("no {pointer}"),
                })
        };
        let gvk = GroupVersionKind::gvk(
            &text("/spec/group")?,
            &text("/spec/versions/0/name")?,
            &text("/spec/names/kind")?,
        );
        kinds.push(BindyKind {
            crd_name: text("/metadata/name")?,
            resource: ApiResource::from_gvk_with_plural(&gvk, &text("/spec/names/plural")?),
            namespaced: text("/spec/scope")? == "Namespaced",
        });
    }
    Ok(kinds)
}

/// The CRD YAML that [`BindyCrds`] stands for (`None` for [`BindyCrds::AsInstalled`]).
pub fn crd_yaml(crds: &BindyCrds) -> Result<Option<String>> {
    let upstream = upstream_crd_documents()?;
    let yaml = match crds {
        BindyCrds::AsInstalled => return Ok(None),
        BindyCrds::Upstream => upstream.join("\n---\n"),
        BindyCrds::Replacing(own) => {
            let mut replaced = BTreeSet::new();
            for document in serde_yaml_ng::Deserializer::from_str(own) {
                let value = serde_yaml_ng::Value::deserialize(document)?;
                if let Some(name) = value["metadata"]["name"].as_str() {
                    replaced.insert(name.to_owned());
                }
            }
            let mut documents = vec![own.clone()];
            for document in upstream {
                let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&document)?;
                let name = value["metadata"]["name"].as_str().unwrap_or_default();
                if !replaced.contains(name) {
                    documents.push(document);
                }
            }
            documents.join("\n---\n")
        }
    };
    Ok(Some(yaml))
}

/// The right to run a Bindy operator in this test binary (a process-wide lock, held until drop).
///
/// `bindy run` watches every namespace, so two operators in one control plane would both
/// reconcile every test's objects. Acquiring the slot (1) waits for the previous holder to drop
/// its slot, (2) deletes every Bindy object it left behind, removing finalizers that no operator
/// will process any more, and (3) installs the requested CRDs. Take it first in a test and drop
/// it last (declare it before whatever uses the operator): the previous test's objects, webhook
/// configurations and processes are then gone.
pub struct OperatorSlot {
    /// `None` for [`OperatorSlot::private`].
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    kinds: Vec<BindyKind>,
    crds: Vec<String>,
    waited: Duration,
}

impl std::fmt::Debug for OperatorSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorSlot")
            .field("crds", &self.crds)
            .field("waited", &self.waited)
            .finish_non_exhaustive()
    }
}

impl OperatorSlot {
    /// Waits for the slot, cleans up after the previous holder and installs `crds` (waiting until
    /// they are `Established`). `client` must be an admin client.
    pub async fn acquire(client: &Client, crds: BindyCrds) -> Result<OperatorSlot> {
        static SLOT: OnceLock<Arc<tokio::sync::Mutex<()>>> = OnceLock::new();
        let started = Instant::now();
        let guard = SLOT
            .get_or_init(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone()
            .lock_owned()
            .await;
        let waited = started.elapsed();
        Self::install(client, crds, Some(guard), waited).await
    }

    /// The slot of a control plane of the caller's own, which no other operator uses (e.g. one
    /// started with [`ControlPlane::start`] for a long test that runs beside the others): no
    /// lock, the same clean-up and CRDs as [`OperatorSlot::acquire`].
    pub async fn private(client: &Client, crds: BindyCrds) -> Result<OperatorSlot> {
        Self::install(client, crds, None, Duration::ZERO).await
    }

    async fn install(
        client: &Client,
        crds: BindyCrds,
        guard: Option<tokio::sync::OwnedMutexGuard<()>>,
        waited: Duration,
    ) -> Result<OperatorSlot> {
        let kinds = upstream_kinds()?;
        sweep(client, &kinds).await;
        let names = match crd_yaml(&crds)? {
            Some(yaml) => apply_crds(client, &yaml, Duration::from_secs(60)).await?,
            None => Vec::new(),
        };
        Ok(OperatorSlot {
            _guard: guard,
            kinds,
            crds: names,
            waited,
        })
    }

    /// Bindy's kinds (all twelve, whichever CRDs serve them).
    pub fn kinds(&self) -> &[BindyKind] {
        &self.kinds
    }

    /// The CRDs this slot installed.
    pub fn crds(&self) -> &[String] {
        &self.crds
    }

    /// How long acquiring waited for earlier holders.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

/// Deletes every Bindy object in the cluster, removing finalizers first (no operator runs while
/// the slot changes hands). Failures are reported on stderr and otherwise ignored: a leftover
/// object makes the next operator log about it but is no reason to fail a test.
async fn sweep(client: &Client, kinds: &[BindyKind]) {
    let mut removed = 0usize;
    for kind in kinds {
        let all: Api<DynamicObject> = Api::all_with(client.clone(), &kind.resource);
        let objects = match all.list(&ListParams::default()).await {
            Ok(list) => list.items,
            // The CRD is not installed (yet): nothing to sweep.
            Err(kube::Error::Api(status)) if status.code == 404 => continue,
            Err(e) => {
                eprintln!(
                    "bindy: listing leftover {} failed: {e}",
                    kind.resource.plural
                );
                continue;
            }
        };
        for object in objects {
            let Some(name) = object.metadata.name.clone() else {
                continue;
            };
            let api: Api<DynamicObject> = match (&object.metadata.namespace, kind.namespaced) {
                (Some(ns), true) => Api::namespaced_with(client.clone(), ns, &kind.resource),
                _ => Api::all_with(client.clone(), &kind.resource),
            };
            if object
                .metadata
                .finalizers
                .as_ref()
                .is_some_and(|f| !f.is_empty())
            {
                let patch = serde_json::json!({"metadata": {"finalizers": null}});
                if let Err(e) = api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    eprintln!(
                        "bindy: removing the finalizers of leftover {} {name} failed: {e}",
                        kind.resource.kind
                    );
                }
            }
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => removed += 1,
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => eprintln!(
                    "bindy: deleting leftover {} {name} failed: {e}",
                    kind.resource.kind
                ),
            }
        }
    }
    if removed > 0 {
        tracing::info!(removed, "removed Bindy objects left by an earlier test");
    }
}

/// How the operator is started.
#[derive(Debug, Clone)]
pub struct BindyOptions {
    /// The operator's own namespace (its ServiceAccount, Lease and `POD_NAMESPACE`; upstream:
    /// `bindy-system`). It must exist.
    pub operator_namespace: String,
    /// Namespaces whose Secrets it may write (upstream's `bindy-secrets-writer` Role is bound in
    /// each, and in the operator's namespace).
    pub managed_namespaces: Vec<String>,
    /// `POD_NAME`, its Lease identity.
    pub pod_name: String,
    /// `BINDY_LEASE_NAME` (upstream: `bindy-leader`).
    pub lease_name: String,
    /// `BINDY_LEASE_DURATION_SECONDS` (upstream: 15).
    pub lease_duration_seconds: u32,
    /// `BINDY_LEASE_RENEW_DEADLINE_SECONDS` (upstream: 10).
    pub lease_renew_deadline_seconds: u32,
    /// `BINDY_LEASE_RETRY_PERIOD_SECONDS` (upstream: 2).
    pub lease_retry_period_seconds: u32,
    /// `RUST_LOG` (upstream: `info`).
    pub rust_log: String,
    /// `RUST_LOG_FORMAT`: `json` by default (upstream: `text`, which forces ANSI colours into
    /// the log file); `text` is the other choice.
    pub log_format: String,
    /// More environment variables (set last).
    pub env: Vec<(String, String)>,
    /// Where the logs go (one file per start); `None`: a temporary directory, kept (and its path
    /// printed) when the test fails or [`KEEP_LOGS_ENV`] is set.
    pub log_dir: Option<PathBuf>,
}

impl BindyOptions {
    /// Upstream's Deployment settings for an operator in `operator_namespace` managing
    /// `managed_namespaces`.
    pub fn new<I, S>(operator_namespace: &str, managed_namespaces: I) -> BindyOptions
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        BindyOptions {
            operator_namespace: operator_namespace.to_owned(),
            managed_namespaces: managed_namespaces.into_iter().map(Into::into).collect(),
            pod_name: "bindy-0".to_owned(),
            lease_name: "bindy-leader".to_owned(),
            lease_duration_seconds: 15,
            lease_renew_deadline_seconds: 10,
            lease_retry_period_seconds: 2,
            rust_log: "info".to_owned(),
            log_format: "json".to_owned(),
            env: Vec::new(),
            log_dir: None,
        }
    }
}

enum LogDir {
    Temp(Option<tempfile::TempDir>),
    Given(PathBuf),
}

impl LogDir {
    fn path(&self) -> &Path {
        match self {
            LogDir::Temp(Some(dir)) => dir.path(),
            LogDir::Temp(None) => Path::new(""),
            LogDir::Given(path) => path,
        }
    }
}

/// A running (or stopped, restartable) `bindy run`, acting as upstream's ServiceAccount. Stopped
/// on drop (SIGTERM, SIGKILL after [`STOP_GRACE`]); it also dies with the test binary
/// (`PR_SET_PDEATHSIG`).
pub struct BindyOperator {
    binary: PathBuf,
    options: BindyOptions,
    username: String,
    kubeconfig: PathBuf,
    logs: LogDir,
    process: Option<ManagedProcess>,
    starts: u32,
    started_at: Instant,
    metrics_port: u16,
}

impl std::fmt::Debug for BindyOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BindyOperator")
            .field("username", &self.username)
            .field("log", &self.log_path())
            .field("starts", &self.starts)
            .finish_non_exhaustive()
    }
}

impl BindyOperator {
    /// Locates (or builds) the binary, installs upstream's ServiceAccount and RBAC for this
    /// operator, mints its token, writes a kubeconfig holding only that token, and starts
    /// `bindy run`. Returns once the process is spawned; wait for [`LEADER_LOG`] with
    /// [`BindyOperator::wait_for_log`] when the test needs the controllers running.
    pub async fn start(
        _slot: &OperatorSlot,
        cp: &ControlPlane,
        client: &Client,
        options: BindyOptions,
    ) -> Result<BindyOperator> {
        let binary = tokio::task::spawn_blocking(locate)
            .await
            .map_err(|e| Error::Once(format!("locating the Bindy operator panicked: {e}")))??;
        install_rbac(client, &options).await?;
        let ns = &options.operator_namespace;
        let token = mint_token(client, ns, SERVICE_ACCOUNT, 24 * 3600).await?;
        let username = format!("system:serviceaccount:{ns}:{SERVICE_ACCOUNT}");
        let identity = Identity::from_token(cp, &format!("{ns}-bindy"), &username, &token).await?;
        let logs = match &options.log_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
                LogDir::Given(dir.clone())
            }
            None => LogDir::Temp(Some(
                tempfile::Builder::new()
                    .prefix("bindy-operator-")
                    .tempdir()
                    .ctx(|| "creating the operator's log directory".into())?,
            )),
        };
        let mut operator = BindyOperator {
            binary,
            options,
            username,
            kubeconfig: identity.kubeconfig_path.clone(),
            logs,
            process: None,
            starts: 0,
            started_at: Instant::now(),
            metrics_port: 0,
        };
        operator.spawn().await?;
        Ok(operator)
    }

    async fn spawn(&mut self) -> Result<()> {
        if self.is_running() {
            return Err(Error::Once(format!(
                "the Bindy operator is already running (pid {})",
                self.pid().unwrap_or(0)
            )));
        }
        self.starts += 1;
        self.metrics_port = free_ports(1)?[0];
        let log = self.log_path();
        let o = &self.options;
        let mut command = Command::new(&self.binary);
        // A clean environment: nothing of the developer's (proxies, KUBECONFIG, RUST_LOG, an
        // in-cluster KUBERNETES_SERVICE_HOST) reaches it.
        command.env_clear().arg("run");
        let envs: Vec<(OsString, OsString)> = [
            ("KUBECONFIG", self.kubeconfig.clone().into_os_string()),
            ("POD_NAME", o.pod_name.clone().into()),
            ("POD_NAMESPACE", o.operator_namespace.clone().into()),
            ("BINDY_ENABLE_LEADER_ELECTION", "true".into()),
            ("BINDY_LEASE_NAME", o.lease_name.clone().into()),
            (
                "BINDY_LEASE_DURATION_SECONDS",
                o.lease_duration_seconds.to_string().into(),
            ),
            (
                "BINDY_LEASE_RENEW_DEADLINE_SECONDS",
                o.lease_renew_deadline_seconds.to_string().into(),
            ),
            (
                "BINDY_LEASE_RETRY_PERIOD_SECONDS",
                o.lease_retry_period_seconds.to_string().into(),
            ),
            ("RUST_LOG", o.rust_log.clone().into()),
            ("RUST_LOG_FORMAT", o.log_format.clone().into()),
            (METRICS_PORT_ENV, self.metrics_port.to_string().into()),
            ("HOME", self.logs.path().as_os_str().to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (OsString::from(k), v))
        .chain(o.env.iter().map(|(k, v)| (k.into(), v.into())))
        .collect();
        command.envs(envs);
        let process = tokio::task::spawn_blocking(move || {
            spawn_from_keeper_thread("bindy", command, log, Lifetime::TiedToParent)
        })
        .await
        .map_err(|e| Error::Once(format!("starting the Bindy operator panicked: {e}")))??;
        self.started_at = Instant::now();
        self.process = Some(process);
        Ok(())
    }

    /// Starts the operator again after [`BindyOperator::stop`] or [`BindyOperator::kill`] (same
    /// identity, token and Lease; a new log file and metrics port).
    pub async fn start_again(&mut self) -> Result<()> {
        self.spawn().await
    }

    /// Stops it gracefully (SIGTERM: it releases its Lease), SIGKILL after [`STOP_GRACE`].
    pub async fn stop(&mut self) -> Option<ExitStatus> {
        let mut process = self.process.take()?;
        tokio::task::spawn_blocking(move || process.stop(STOP_GRACE))
            .await
            .ok()
            .flatten()
    }

    /// SIGKILL (a crash: the Lease is not released and expires after its duration).
    pub async fn kill(&mut self) -> Option<ExitStatus> {
        let mut process = self.process.take()?;
        tokio::task::spawn_blocking(move || {
            process.signal(libc::SIGKILL);
            process.stop(Duration::from_secs(5))
        })
        .await
        .ok()
        .flatten()
    }

    /// [`BindyOperator::stop`] then [`BindyOperator::start_again`].
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await;
        self.spawn().await
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|p| p.exit_status().is_none())
    }

    /// `Ok` while the process runs; otherwise an error with how it ended, the log path and the
    /// log's tail.
    pub fn check_running(&mut self) -> Result<()> {
        let status = match self.process.as_mut() {
            None => "it is stopped".to_owned(),
            Some(p) => match p.exit_status() {
                None => return Ok(()),
                Some(status) => format!("it exited ({status})"),
            },
        };
        Err(Error::NotReady {
            what: "the Bindy operator".into(),
            reason: format!("{status}; log: {}", self.log_path().display()),
            logs: self.log_tail(8 * 1024),
        })
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ManagedProcess::pid)
    }

    /// When the current (last) start happened.
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    /// How many times it has been started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// Its Kubernetes user (`system:serviceaccount:<operator namespace>:bindy`).
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The kubeconfig it runs with (only its ServiceAccount token).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The options it was started with.
    pub fn options(&self) -> &BindyOptions {
        &self.options
    }

    /// The directory holding the log files.
    pub fn log_dir(&self) -> &Path {
        self.logs.path()
    }

    /// The log file of the current (last) start.
    pub fn log_path(&self) -> PathBuf {
        self.log_path_of(self.starts)
    }

    fn log_path_of(&self, start: u32) -> PathBuf {
        self.logs.path().join(format!("bindy-{start}.log"))
    }

    /// The log of the current start.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The logs of every start, in order.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.log_path_of(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("")
    }

    /// The last `max_bytes` of the current log, headed by its path.
    pub fn log_tail(&self, max_bytes: u64) -> String {
        log_tail(&self.log_path(), max_bytes)
    }

    /// Lines of the current start's log that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until the current start's log has a line containing `needle`; returns the time from
    /// the start to when it was seen (within the polling interval). Fails early, with the log,
    /// when the process exits.
    pub async fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return Ok(self.started_at.elapsed());
            }
            self.check_running()?;
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("the Bindy operator to log {needle:?}"),
                    seconds: timeout.as_secs(),
                    detail: format!(
                        "; log: {}\n{}",
                        self.log_path().display(),
                        self.log_tail(4 * 1024)
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The metrics port of the current start (127.0.0.1).
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    /// Its Prometheus exposition (`GET http://127.0.0.1:<port>/metrics`).
    pub async fn metrics(&self) -> Result<String> {
        http_get(self.metrics_port, "/metrics").await
    }
}

impl Drop for BindyOperator {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop(STOP_GRACE);
        }
        let keep = std::env::var_os(KEEP_LOGS_ENV).is_some_and(|v| !v.is_empty() && v != "0");
        if std::thread::panicking() || keep {
            let (dir, last) = (self.log_dir().to_owned(), self.log_path());
            if let LogDir::Temp(temp) = &mut self.logs
                && let Some(temp) = temp.take()
            {
                let _ = temp.keep();
            }
            eprintln!(
                "bindy: the operator's logs are kept in {} (last: {})",
                dir.display(),
                last.display()
            );
        }
    }
}

/// Reads one of upstream's RBAC manifests.
fn rbac_manifest<T: DeserializeOwned>(file: &str) -> Result<T> {
    let path = source_dir().join("deploy/operator/rbac").join(file);
    let text = std::fs::read_to_string(&path).ctx(|| format!("reading {}", path.display()))?;
    Ok(serde_yaml_ng::from_str(&text)?)
}

/// Upstream's RBAC for one operator: ServiceAccount `bindy` in the operator namespace,
/// ClusterRole `bindy-role` (shared, as upstream ships it), a ClusterRoleBinding of it named
/// `bindy-rolebinding-<operator namespace>`, and Role + RoleBinding `bindy-secrets-writer` in
/// the operator namespace and each managed namespace. Namespace references are rewritten to the
/// test's; rules are upstream's, unchanged.
async fn install_rbac(client: &Client, options: &BindyOptions) -> Result<()> {
    let ns = options.operator_namespace.as_str();
    let apply = PatchParams::apply(FIELD_MANAGER).force();

    let mut account: ServiceAccount = rbac_manifest("serviceaccount.yaml")?;
    account.metadata.namespace = Some(ns.to_owned());
    let name = account.metadata.name.clone().unwrap_or_default();
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .patch(&name, &apply, &Patch::Apply(&account))
        .await?;

    let role: ClusterRole = rbac_manifest("role.yaml")?;
    let name = role.metadata.name.clone().unwrap_or_default();
    Api::<ClusterRole>::all(client.clone())
        .patch(&name, &apply, &Patch::Apply(&role))
        .await?;

    let mut binding: ClusterRoleBinding = rbac_manifest("rolebinding.yaml")?;
    let name = format!(
        "{}-{ns}",
        binding
            .metadata
            .name
            .as_deref()
            .unwrap_or("bindy-rolebinding")
    );
    binding.metadata.name = Some(name.clone());
    for subject in binding.subjects.iter_mut().flatten() {
        subject.namespace = Some(ns.to_owned());
    }
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(&name, &apply, &Patch::Apply(&binding))
        .await?;

    let mut namespaces = vec![ns.to_owned()];
    for managed in &options.managed_namespaces {
        if !namespaces.contains(managed) {
            namespaces.push(managed.clone());
        }
    }
    for target in &namespaces {
        let mut role: Role = rbac_manifest("secrets-role.yaml")?;
        role.metadata.namespace = Some(target.clone());
        let name = role.metadata.name.clone().unwrap_or_default();
        Api::<Role>::namespaced(client.clone(), target)
            .patch(&name, &apply, &Patch::Apply(&role))
            .await?;
        let mut binding: RoleBinding = rbac_manifest("secrets-rolebinding.yaml")?;
        binding.metadata.namespace = Some(target.clone());
        for subject in binding.subjects.iter_mut().flatten() {
            subject.namespace = Some(ns.to_owned());
        }
        let name = binding.metadata.name.clone().unwrap_or_default();
        Api::<RoleBinding>::namespaced(client.clone(), target)
            .patch(&name, &apply, &Patch::Apply(&binding))
            .await?;
    }
    Ok(())
}

/// A plain HTTP/1.0 GET on 127.0.0.1; the body of a 200 answer.
async fn http_get(port: u16, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let what = || format!("GET http://127.0.0.1:{port}{path}");
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ctx(what)?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .ctx(what)?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .map_err(|_| Error::io(what(), std::io::ErrorKind::TimedOut.into()))?
        .ctx(what)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(Error::Invalid {
            what: "metrics answer",
            reason: format!("{}: {}", what(), head.lines().next().unwrap_or_default()),
        });
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_kinds_are_the_twelve_of_bindy() {
        let kinds = upstream_kinds().expect("Bindy's CRDs");
        assert_eq!(kinds.len(), 12, "{kinds:?}");
        let provider = kinds
            .iter()
            .find(|k| k.resource.kind == "ClusterBind9Provider")
            .expect("ClusterBind9Provider");
        assert!(!provider.namespaced);
        assert_eq!(provider.resource.plural, "clusterbind9providers");
        let instance = kinds
            .iter()
            .find(|k| k.resource.kind == "Bind9Instance")
            .expect("Bind9Instance");
        assert!(instance.namespaced);
        assert_eq!(instance.resource.api_version, "bindy.firestoned.io/v1beta1");
    }

    #[test]
    fn replacing_keeps_bindy_crds_for_the_other_kinds() {
        let own = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: bind9instances.bindy.firestoned.io\n";
        let yaml = crd_yaml(&BindyCrds::Replacing(own.to_owned()))
            .expect("yaml")
            .expect("some");
        let names: Vec<String> = serde_yaml_ng::Deserializer::from_str(&yaml)
            .filter_map(|d| {
                serde_yaml_ng::Value::deserialize(d).ok()?["metadata"]["name"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(names.len(), 12, "{names:?}");
        assert_eq!(
            names
                .iter()
                .filter(|n| *n == "bind9instances.bindy.firestoned.io")
                .count(),
            1
        );
        assert_eq!(names[0], "bind9instances.bindy.firestoned.io", "ours first");
        assert!(
            crd_yaml(&BindyCrds::AsInstalled)
                .expect("as installed")
                .is_none()
        );
    }

    #[test]
    fn upstream_rbac_parses_into_the_objects_installed() {
        let account: ServiceAccount = rbac_manifest("serviceaccount.yaml").expect("sa");
        assert_eq!(account.metadata.name.as_deref(), Some(SERVICE_ACCOUNT));
        let role: Role = rbac_manifest("secrets-role.yaml").expect("role");
        assert_eq!(role.metadata.name.as_deref(), Some(SECRETS_WRITER_ROLE));
        let binding: ClusterRoleBinding = rbac_manifest("rolebinding.yaml").expect("binding");
        assert_eq!(binding.role_ref.name, "bindy-role");
        let _: ClusterRole = rbac_manifest("role.yaml").expect("cluster role");
        let _: RoleBinding = rbac_manifest("secrets-rolebinding.yaml").expect("role binding");
    }
}
