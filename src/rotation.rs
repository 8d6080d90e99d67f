//! The rotator (docs/rotation.md): a leader-elected loop that provisions missing managed key Secrets,
//! rotates keys when they are due, rolls the Deployments that use them, and mirrors the state into
//! the instance status, Events and metrics.
//!
//! ```text
//!  watch caches (every replica)        leader only
//!  Bind9Instance ─┐
//!  Bind9Cluster  ─┼─► pass: group instances by Secret ─► policy::plan_rotation ─► queue of
//!  key Secrets   ─┤         (plan::governing)                      Secret keys (deduplicated)
//!  Deployments   ─┘   sleep until the earliest due time,                  │
//!                     a watch event or the resync period     `--rotation-concurrency` workers:
//!                                                            re-derive from the caches, write (QPS)
//! ```
//!
//! Every pass re-derives what to do from the cluster: the key revision in the Secret
//! (`rndc-created-at`), the marker on each Deployment's pod template and the instance status are
//! compared level by level, so a crash, a lost lease or a failed patch at any step converges on the
//! next pass. Every write carries a `resourceVersion` precondition; a 409 re-reads and re-decides,
//! so a second leader racing by accident cannot rotate a key twice.

mod caches;
mod context;
pub mod exec;
mod keys;
pub mod naming;
pub mod plan;
mod queue;
mod reconcile;
pub mod reload;
mod reloader;
mod scheduler;
mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgAction, Args};

pub use exec::{KubeExec, PodExec};
pub use keys::{KeySource, OsKeySource, QpsLimiter};
pub use reload::ReloadStrategy;

use caches::Caches;
use context::Context;

use crate::cache::{CacheTask, SharedStores};
use crate::clock::Clock;
use crate::config::parse_duration;
use crate::metrics::Metrics;
use crate::policy::PolicyConfig;

/// The default name of the Lease the replicas compete for.
pub const DEFAULT_LEASE_NAME: &str = "rndc-warden-rotator";
/// Field manager and Event reporter of every write the rotator makes.
pub const FIELD_MANAGER: &str = "rndc-warden";

/// Flags of the rotator (part of `serve`); every flag has an `RNDC_WARDEN_*` fallback.
#[derive(Debug, Clone, Args)]
pub struct RotationArgs {
    /// Run the rotator (when cluster credentials are found). `false`: admission only.
    #[arg(long = "rotation", env = "RNDC_WARDEN_ROTATION", default_value_t = true, action = ArgAction::Set)]
    pub enabled: bool,
    /// Elect one rotating replica with a coordination.k8s.io Lease. Turn off only for a single
    /// replica (every write is still fenced by resourceVersion).
    #[arg(long, env = "RNDC_WARDEN_LEADER_ELECTION", default_value_t = true, action = ArgAction::Set)]
    pub leader_election: bool,
    /// Namespace of the Lease; empty means `POD_NAMESPACE`, else the client's default namespace.
    #[arg(long, env = "RNDC_WARDEN_LEASE_NAMESPACE", default_value = "")]
    pub lease_namespace: String,
    /// Name of the Lease.
    #[arg(long, env = "RNDC_WARDEN_LEASE_NAME", default_value = DEFAULT_LEASE_NAME)]
    pub lease_name: String,
    /// How long a Lease holds without renewal (whole seconds, at least 2s).
    #[arg(long, env = "RNDC_WARDEN_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// How long before expiry the holder renews (also the clock skew tolerated).
    #[arg(long, env = "RNDC_WARDEN_LEASE_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub lease_grace: Duration,
    /// This replica's identity in the Lease and in Events (default: `$HOSTNAME` plus a random suffix).
    #[arg(long, env = "RNDC_WARDEN_IDENTITY")]
    pub identity: Option<String>,
    /// Create missing managed key Secrets. Off by default: beside the Bindy operator (the normal
    /// case) the operator creates every managed Secret (generated and inline) and rndc-warden
    /// takes it over. Turn on only for standalone use without the operator.
    #[arg(long, env = "RNDC_WARDEN_PROVISION", default_value_t = false, action = ArgAction::Set)]
    pub provision: bool,
    /// Full re-evaluation period, on top of watch events and due times.
    #[arg(long, env = "RNDC_WARDEN_RESYNC_PERIOD", default_value = "5m", value_parser = parse_duration)]
    pub resync_period: Duration,
    /// Secrets worked on at once.
    #[arg(
        long = "rotation-concurrency",
        env = "RNDC_WARDEN_ROTATION_CONCURRENCY",
        default_value_t = 8
    )]
    pub concurrency: usize,
    /// Client-side limit of rotator API requests per second (watches excluded).
    #[arg(long, env = "RNDC_WARDEN_CLIENT_QPS", default_value_t = 50.0)]
    pub client_qps: f64,
    /// Burst above the QPS limit.
    #[arg(long, env = "RNDC_WARDEN_CLIENT_BURST", default_value_t = 100)]
    pub client_burst: u32,
    /// Name of the Deployment an instance runs in; `{instance}` is replaced by the instance name.
    #[arg(
        long,
        env = "RNDC_WARDEN_DEPLOYMENT_NAME_TEMPLATE",
        default_value = "{instance}"
    )]
    pub deployment_name_template: String,
    /// How pods pick up a changed key: `rollout` (pod-template marker) or `signal` (SIGHUP to
    /// named after the pod sees the new file; needs `pods/exec`). An instance annotation
    /// `rndc-warden/reload-strategy` overrides it.
    #[arg(
        long,
        env = "RNDC_WARDEN_RELOAD_STRATEGY",
        value_enum,
        default_value_t = ReloadStrategy::Rollout
    )]
    pub reload_strategy: ReloadStrategy,
    /// Changes of a Secret within this window cause one reload.
    #[arg(long, env = "RNDC_WARDEN_RELOAD_DEBOUNCE", default_value = "10s", value_parser = parse_duration)]
    pub reload_debounce: Duration,
    /// signal: label selector of an instance's pods; `{instance}` is replaced by its name.
    #[arg(
        long,
        env = "RNDC_WARDEN_RELOAD_POD_SELECTOR",
        default_value = DEFAULT_POD_SELECTOR
    )]
    pub reload_pod_selector: String,
    /// signal: the container that runs named.
    #[arg(long, env = "RNDC_WARDEN_RELOAD_CONTAINER", default_value = "bind9")]
    pub reload_container: String,
    /// signal: path of the mounted rndc.key in that container.
    #[arg(
        long,
        env = "RNDC_WARDEN_RELOAD_KEY_PATH",
        default_value = DEFAULT_KEY_PATH
    )]
    pub reload_key_path: String,
    /// signal: how long pods may take to see the new key file before falling back to a rollout.
    #[arg(long, env = "RNDC_WARDEN_RELOAD_SIGNAL_DEADLINE", default_value = "2m", value_parser = parse_duration)]
    pub reload_signal_deadline: Duration,
    /// Namespaces to watch; all when empty. Set from `serve --watch-namespace`.
    #[arg(skip)]
    pub namespaces: Vec<String>,
}

/// Default label selector of an instance's pods (the Bindy operator's labels).
pub const DEFAULT_POD_SELECTOR: &str = "app=bind9,instance={instance}";
/// Default path of the mounted `rndc.key` in the `bind9` container.
pub const DEFAULT_KEY_PATH: &str = "/etc/bind/keys/rndc.key";

impl Default for RotationArgs {
    fn default() -> Self {
        Self {
            enabled: true,
            leader_election: true,
            lease_namespace: String::new(),
            lease_name: DEFAULT_LEASE_NAME.to_owned(),
            lease_duration: Duration::from_secs(15),
            lease_grace: Duration::from_secs(5),
            identity: None,
            provision: false,
            resync_period: Duration::from_secs(300),
            concurrency: 8,
            client_qps: 50.0,
            client_burst: 100,
            deployment_name_template: "{instance}".to_owned(),
            reload_strategy: ReloadStrategy::Rollout,
            reload_debounce: Duration::from_secs(10),
            reload_pod_selector: DEFAULT_POD_SELECTOR.to_owned(),
            reload_container: "bind9".to_owned(),
            reload_key_path: DEFAULT_KEY_PATH.to_owned(),
            reload_signal_deadline: Duration::from_secs(120),
            namespaces: Vec::new(),
        }
    }
}

impl RotationArgs {
    /// Checks the flags against each other.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        if self.lease_duration.as_secs() < 2 || self.lease_grace >= self.lease_duration {
            return bad(format!(
                "--lease-duration ({:?}) must be at least 2s and longer than --lease-grace ({:?}), e.g. 15s and 5s",
                self.lease_duration, self.lease_grace
            ));
        }
        if self.concurrency == 0 {
            return bad("--rotation-concurrency must be at least 1, e.g. 8".to_owned());
        }
        if !(self.client_qps.is_finite() && self.client_qps > 0.0) {
            return bad("--client-qps must be a positive number, e.g. 50".to_owned());
        }
        if self.resync_period < Duration::from_secs(1) {
            return bad("--resync-period must be at least 1s, e.g. 5m".to_owned());
        }
        if self.deployment_name_template.matches("{instance}").count() != 1 {
            return bad(format!(
                "--deployment-name-template {:?} must contain {{instance}} once, e.g. \"{{instance}}\"",
                self.deployment_name_template
            ));
        }
        if self.reload_pod_selector.trim().is_empty() || self.reload_container.trim().is_empty() {
            return bad(
                "--reload-pod-selector and --reload-container must not be empty, e.g. \"app=bind9,instance={instance}\" and bind9"
                    .to_owned(),
            );
        }
        if !self.reload_key_path.starts_with('/') {
            return bad(format!(
                "--reload-key-path {:?} must be absolute, e.g. {DEFAULT_KEY_PATH}",
                self.reload_key_path
            ));
        }
        Ok(())
    }

    /// The label selector of an instance's pods.
    pub fn pod_selector(&self, instance: &str) -> String {
        self.reload_pod_selector.replace("{instance}", instance)
    }

    /// The Deployment name of an instance.
    pub fn deployment_name(&self, instance: &str) -> String {
        self.deployment_name_template
            .replace("{instance}", instance)
    }

    /// Fills in what the flags leave to the environment, once, at startup: the Lease namespace
    /// (`pod_namespace`, else `default_namespace`) and the identity (`host` plus `suffix`).
    pub fn resolve(
        &mut self,
        pod_namespace: Option<String>,
        default_namespace: &str,
        host: Option<String>,
        suffix: u32,
    ) {
        if self.lease_namespace.is_empty() {
            self.lease_namespace = pod_namespace
                .filter(|ns| !ns.is_empty())
                .unwrap_or_else(|| default_namespace.to_owned());
        }
        if self.identity.is_none() {
            let host = host.filter(|h| !h.is_empty());
            let host = host.as_deref().unwrap_or("rndc-warden");
            self.identity = Some(format!("{host}-{suffix:08x}"));
        }
    }
}

/// Why the rotator stopped or a step failed. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Inconsistent flags.
    #[error("rotator configuration: {0}")]
    Config(String),
    /// A Kubernetes API call failed.
    #[error("{verb} {what}: {source}")]
    Kube {
        /// `get`, `create`, `update`, `patch`, …
        verb: &'static str,
        /// The object, e.g. `Secret dns/a-rndc`.
        what: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// Leader election failed for good.
    #[error("leader election on Lease {namespace}/{name}: {source}")]
    Lease {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// The error.
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    /// The lease watcher ended while the rotator was running.
    #[error("the Lease watcher on {0} stopped")]
    LeaseWatcherStopped(String),
    /// A watch of the rotator's caches ended before shutdown.
    #[error("a rotator watch stopped before shutdown")]
    WatchStopped,
    /// The OS random number generator failed.
    #[error("the OS random number generator failed: {0}")]
    Random(String),
    /// The policy refuses to act on a Secret (e.g. a denied algorithm).
    #[error("{0}")]
    Refused(String),
    /// A Secret changed under every attempt to update it.
    #[error("Secret {0} kept changing while it was being updated; will retry")]
    Contended(String),
    /// Some Deployments or statuses could not be updated (listed).
    #[error("{0}")]
    Incomplete(String),
}

impl Error {
    /// Whether the error is an HTTP 409 Conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube { source: kube::Error::Api(s), .. } if s.code == 409)
    }
}

/// The parts of a rotator that tests replace: the key source, the pod exec and the clock.
pub struct Parts {
    /// Where key bytes come from.
    pub keys: Arc<dyn KeySource>,
    /// How commands run in pods (the `signal` strategy).
    pub exec: Arc<dyn PodExec>,
    /// The wall clock.
    pub clock: Clock,
}

impl Parts {
    /// The OS CSPRNG, `pods/exec` through `client`, the system clock.
    pub fn real(client: &kube::Client) -> Parts {
        Parts {
            keys: Arc::new(OsKeySource),
            exec: Arc::new(KubeExec::new(client.clone())),
            clock: crate::clock::system(),
        }
    }
}

/// Runs the rotator until `shutdown` completes: starts its watches, competes for the Lease and,
/// while it holds the Lease, runs the scheduler. Returns `Ok(())` on shutdown and an error if the
/// rotator cannot go on (the caller should exit non-zero). `shared`: the instance and cluster
/// stores of the process's [`crate::cache::ClusterCache`]. `args` must be resolved
/// ([`RotationArgs::resolve`]): the identity is set.
pub async fn run(
    client: kube::Client,
    args: RotationArgs,
    policy: PolicyConfig,
    metrics: Arc<Metrics>,
    parts: Parts,
    shared: SharedStores,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let mut args = args;
    if args.lease_namespace.is_empty() {
        args.lease_namespace = client.default_namespace().to_owned();
    }
    args.validate()?;
    let identity = args
        .identity
        .clone()
        .ok_or_else(|| Error::Config("the rotator has no identity (set --identity)".to_owned()))?;
    // Every watch task runs in this set: stopped when the rotator returns.
    let mut watches = tokio::task::JoinSet::new();
    let never = || -> CacheTask { Box::pin(std::future::pending()) };
    let (caches, tasks) = Caches::start(&client, &args.namespaces, shared, never);
    for task in tasks {
        watches.spawn(task);
    }
    let ctx = Arc::new(Context::new(
        client.clone(),
        args.clone(),
        policy,
        metrics.clone(),
        parts,
        caches,
        &identity,
    ));
    let shutdown = async move {
        tokio::select! {
            () = shutdown => Ok(()),
            Some(_) = watches.join_next() => Err(Error::WatchStopped),
        }
    };
    tokio::pin!(shutdown);
    let mut stopped: Option<Result<(), Error>> = None;

    if !args.leader_election {
        tracing::info!(%identity, "rotator starting without leader election");
        metrics.rotator_leader.set(1);
        let result = tokio::select! {
            r = &mut shutdown => r,
            r = scheduler::schedule(ctx.clone()) => r,
        };
        metrics.rotator_leader.set(0);
        return result;
    }

    let lease_error = |source| Error::Lease {
        namespace: args.lease_namespace.clone(),
        name: args.lease_name.clone(),
        source,
    };
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&identity)
        .with_duration(args.lease_duration.as_secs())
        .with_grace(args.lease_grace.as_secs())
        // Server-side apply detects the race for the Lease only between different field managers.
        .with_field_manager(format!("{FIELD_MANAGER}-lease-{identity}"))
        .build()
        .await
        .map_err(lease_error)?;
    let (mut leader, lease_task) = manager.watch().await;
    tracing::info!(
        %identity,
        lease = %format!("{}/{}", args.lease_namespace, args.lease_name),
        "rotator waiting for the Lease"
    );
    let lease_name = format!("{}/{}", args.lease_namespace, args.lease_name);
    let result = loop {
        // Follower: wait for the Lease.
        while stopped.is_none() && !*leader.borrow_and_update() {
            tokio::select! {
                r = &mut shutdown => stopped = Some(r),
                changed = leader.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        if let Some(r) = stopped.take() {
            break r;
        }
        if !*leader.borrow() {
            // The watcher ended.
            break if leader.has_changed().is_err() {
                Err(Error::LeaseWatcherStopped(lease_name.clone()))
            } else {
                Ok(())
            };
        }
        tracing::info!(%identity, lease = %lease_name, "acquired the Lease; rotating");
        metrics.rotator_leader.set(1);
        let outcome = tokio::select! {
            r = &mut shutdown => Some(r),
            lost = wait_lost(&mut leader) => {
                if lost {
                    tracing::warn!(%identity, lease = %lease_name, "lost the Lease; rotation stopped");
                    None
                } else {
                    Some(Err(Error::LeaseWatcherStopped(lease_name.clone())))
                }
            }
            r = scheduler::schedule(ctx.clone()) => Some(r),
        };
        metrics.rotator_leader.set(0);
        if let Some(outcome) = outcome {
            break outcome;
        }
    };
    // Dropping the receiver makes the lease task release the Lease; give it a moment.
    drop(leader);
    let _ = tokio::time::timeout(Duration::from_secs(5), lease_task).await;
    result
}

/// Waits until leadership is lost (`true`) or the lease watcher ends (`false`).
async fn wait_lost(leader: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    loop {
        if leader.changed().await.is_err() {
            return false;
        }
        if !*leader.borrow_and_update() {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RotationArgs,
    }

    #[test]
    fn default_is_what_the_flags_default_to() {
        // Only meaningful without RNDC_WARDEN_* in the environment (the flags read it).
        if std::env::vars().any(|(name, _)| name.starts_with("RNDC_WARDEN_")) {
            panic!("unset the RNDC_WARDEN_* environment variables to run this test");
        }
        let parsed = Cli::try_parse_from(["x"]).expect("parses").args;
        assert_eq!(
            format!("{:?}", RotationArgs::default()),
            format!("{parsed:?}")
        );
    }

    #[test]
    fn defaults_parse_and_validate() {
        let cli = Cli::try_parse_from(["x"]).expect("parses");
        assert!(cli.args.validate().is_ok());
        assert_eq!(cli.args.lease_duration, Duration::from_secs(15));
        assert!(!cli.args.provision && cli.args.leader_election);
        assert_eq!(cli.args.deployment_name("dns-1"), "dns-1");
    }

    #[test]
    fn reload_flags_parse_with_their_defaults() {
        let cli = Cli::try_parse_from(["x"]).expect("parses");
        assert_eq!(cli.args.reload_strategy, ReloadStrategy::Rollout);
        assert_eq!(cli.args.reload_debounce, Duration::from_secs(10));
        assert_eq!(cli.args.pod_selector("dns-1"), "app=bind9,instance=dns-1");
        assert_eq!(cli.args.reload_container, "bind9");
        assert_eq!(cli.args.reload_key_path, DEFAULT_KEY_PATH);
        let cli = Cli::try_parse_from([
            "x",
            "--reload-strategy",
            "signal",
            "--reload-debounce",
            "500ms",
            "--reload-pod-selector",
            "app.kubernetes.io/instance={instance}",
        ])
        .expect("parses");
        assert_eq!(cli.args.reload_strategy, ReloadStrategy::Signal);
        assert_eq!(cli.args.reload_debounce, Duration::from_millis(500));
        assert_eq!(cli.args.pod_selector("a"), "app.kubernetes.io/instance=a");
        assert!(Cli::try_parse_from(["x", "--reload-strategy", "restart"]).is_err());
        let cli = Cli::try_parse_from(["x", "--reload-key-path", "rndc.key"]).expect("parses");
        assert!(cli.args.validate().is_err());
    }

    #[test]
    fn bad_flags_are_reported_with_an_example() {
        let cli = Cli::try_parse_from(["x", "--lease-duration", "3s", "--lease-grace", "5s"])
            .expect("parses");
        let err = cli.args.validate().unwrap_err().to_string();
        assert!(
            err.contains("--lease-duration") && err.contains("e.g."),
            "{err}"
        );
        let cli = Cli::try_parse_from(["x", "--deployment-name-template", "bind"]).expect("parses");
        assert!(cli.args.validate().is_err());
        assert!(Cli::try_parse_from(["x", "--resync-period", "5"]).is_err());
        let cli = Cli::try_parse_from([
            "x",
            "--provision",
            "true",
            "--deployment-name-template",
            "{instance}-bind",
        ])
        .expect("parses");
        assert!(cli.args.provision);
        assert_eq!(cli.args.deployment_name("a"), "a-bind");
    }
}
