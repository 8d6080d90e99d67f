//! Watch caches, the scheduler and the worker that executes one Secret's plan.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

use super::exec::PodExec;
use super::keys::{KeySource, QpsLimiter, generate};
use super::plan::{
    SecretUser, annotate_patch, governing, key_status, needs_roll, needs_roll_after_rotation,
    plan_secret, record_of, record_stale, render_provision, rollout_patch, rotation_patch,
    seconds_until, status_in_sync,
};
use super::queue::{Taken, WorkQueue};
use super::reload::ReloadStrategy;
use super::reloader::{self, ReloadMemory};
use super::store::{CompactStore, DeploymentMarker, KeySecret, SecretVersion, secret_version};
use super::{Error, FIELD_MANAGER, RotationArgs};
use crate::api::{
    Bind9Cluster, Bind9Instance, EVENT_RNDC_KEY_ROTATED, EVENT_RNDC_KEY_ROTATION_FAILED,
    LABEL_RNDC_KEY, LABEL_RNDC_KEY_VALUE, RndcKeyRotationStatus,
};
use crate::cache::SharedStores;
use crate::metrics::{ApiErrorLabels, InstanceLabels, Metrics, ResultLabels};
use crate::policy::{
    ConfigSource, PolicyConfig, Role, RotationPlan, SecretAction, audit, effective_config,
    key_revision,
};

/// How long a write we made may take to show up in the watch cache before we stop waiting.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);
/// Events arriving within this window are handled by one pass.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// What the rotator reads, kept current by watches in the given namespaces (or all): instances
/// and clusters (reflector stores, shared with admission when it runs in the same process),
/// labelled key Secrets, the version of every Secret and Deployments (compact stores).
#[derive(Clone)]
pub struct Caches {
    instances: Vec<Store<Bind9Instance>>,
    clusters: Vec<Store<Bind9Cluster>>,
    secrets: Vec<CompactStore<KeySecret>>,
    /// The resourceVersion of every Secret: unlabelled `secretRef` Secrets are fetched when their
    /// version changes.
    secret_versions: Vec<CompactStore<SecretVersion>>,
    deployments: Vec<CompactStore<DeploymentMarker>>,
    /// Woken on every watch event.
    pub changed: Arc<Notify>,
}

fn apis<K>(client: &Client, namespaces: &[String]) -> Vec<Api<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    }
}

/// One reflector of `K` per watched namespace (one for all when `namespaces` is empty).
fn watch_each<K>(
    client: &Client,
    namespaces: &[String],
    changed: &Arc<Notify>,
    strip: fn(&mut K),
) -> Vec<Store<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    <K as Resource>::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    apis(client, namespaces)
        .into_iter()
        .map(|api| spawn_reflector(api, watcher::Config::default(), changed.clone(), strip))
        .collect()
}

fn spawn_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: Arc<Notify>,
    strip: fn(&mut K),
) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    <K as Resource>::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().modify(strip);
    let stream = reflector::reflector(writer, stream);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Err(error) = event {
                tracing::debug!(%error, "rotator watch error (retrying)");
            }
            changed.notify_one();
        }
    });
    reader
}

pub(super) fn lookup<K>(stores: &[Store<K>], namespace: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource + Clone + 'static,
    <K as Resource>::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let key = ObjectRef::<K>::new(name).within(namespace);
    stores.iter().find_map(|s| s.get(&key))
}

fn lookup_compact<T: Send + Sync + 'static, R>(
    stores: &[CompactStore<T>],
    namespace: &str,
    name: &str,
    f: impl Fn(&T) -> R,
) -> Option<R> {
    stores.iter().find_map(|s| s.get(namespace, name, &f))
}

impl Caches {
    /// Starts the watches in the given namespaces (all when empty). Instances and clusters come
    /// from `shared` when admission already watches them in this process; otherwise they are
    /// watched here. The watches keep running, and retrying, for the life of the process.
    pub fn start(client: &Client, namespaces: &[String], shared: Option<SharedStores>) -> Caches {
        let (instances, clusters, changed) = match shared {
            Some(shared) => (shared.instances, shared.clusters, shared.changed),
            None => {
                let changed = Arc::new(Notify::new());
                let instances =
                    watch_each(client, namespaces, &changed, crate::cache::strip_instance);
                let clusters =
                    watch_each(client, namespaces, &changed, crate::cache::strip_cluster);
                (instances, clusters, changed)
            }
        };
        let secret_config =
            watcher::Config::default().labels(&format!("{LABEL_RNDC_KEY}={LABEL_RNDC_KEY_VALUE}"));
        Caches {
            instances,
            clusters,
            secrets: apis(client, namespaces)
                .into_iter()
                .map(|api| {
                    CompactStore::spawn(api, secret_config.clone(), changed.clone(), KeySecret::new)
                })
                .collect(),
            secret_versions: apis::<PartialObjectMeta<Secret>>(client, namespaces)
                .into_iter()
                .map(|api| {
                    CompactStore::spawn(
                        api,
                        watcher::Config::default(),
                        changed.clone(),
                        secret_version,
                    )
                })
                .collect(),
            deployments: apis(client, namespaces)
                .into_iter()
                .map(|api| {
                    CompactStore::spawn(
                        api,
                        watcher::Config::default(),
                        changed.clone(),
                        DeploymentMarker::new,
                    )
                })
                .collect(),
            changed,
        }
    }

    /// Waits until every store has its first full list.
    pub async fn wait_ready(&self) {
        for s in &self.instances {
            let _ = s.wait_until_ready().await;
        }
        for s in &self.clusters {
            let _ = s.wait_until_ready().await;
        }
        for s in &self.secrets {
            s.wait_ready().await;
        }
        for s in &self.secret_versions {
            s.wait_ready().await;
        }
        for s in &self.deployments {
            s.wait_ready().await;
        }
    }

    /// The labelled key Secret from the cache, as far as it is kept ([`KeySecret`]): for
    /// decisions, never for a whole-object write.
    pub(super) fn labelled_secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        lookup_compact(&self.secrets, namespace, name, |s| {
            Arc::new(s.to_secret(namespace, name))
        })
    }

    /// The resourceVersion of any Secret (`None`: it does not exist).
    pub(super) fn secret_version(&self, namespace: &str, name: &str) -> Option<String> {
        lookup_compact(&self.secret_versions, namespace, name, |v| {
            v.as_deref().map(str::to_owned)
        })
        .flatten()
    }

    /// The cached Deployment (identity, version, creation time and rollout marker only).
    pub(super) fn deployment(&self, namespace: &str, name: &str) -> Option<Arc<Deployment>> {
        lookup_compact(&self.deployments, namespace, name, |d| {
            Arc::new(d.to_deployment(namespace, name))
        })
    }

    /// The Secret the cached Deployment's pods mount as their RNDC key.
    pub(super) fn mounted_secret(&self, namespace: &str, name: &str) -> Option<String> {
        lookup_compact(&self.deployments, namespace, name, |d| {
            d.mounted_secret().map(str::to_owned)
        })
        .flatten()
    }

    /// The cached instance.
    pub(super) fn instance(&self, namespace: &str, name: &str) -> Option<Arc<Bind9Instance>> {
        lookup(&self.instances, namespace, name)
    }

    fn instances(&self) -> Vec<Arc<Bind9Instance>> {
        self.instances.iter().flat_map(|s| s.state()).collect()
    }
}

/// A Secret the rotator works on: namespace and name.
pub(super) type SecretKey = (String, String);

/// One instance using a Secret.
#[derive(Clone)]
pub(super) struct Member {
    pub(super) instance: Arc<Bind9Instance>,
    pub(super) user: SecretUser,
}

/// Everything a worker needs.
pub struct Context {
    pub(super) client: Client,
    pub(super) args: RotationArgs,
    pub(super) policy: PolicyConfig,
    pub(super) metrics: Arc<Metrics>,
    keys: Arc<dyn KeySource>,
    pub(super) exec: Arc<dyn PodExec>,
    pub(super) caches: Caches,
    limiter: QpsLimiter,
    recorder: Recorder,
    /// Reload bookkeeping that only lives in this process.
    pub(super) reload_memory: Mutex<ReloadMemory>,
    /// Objects we wrote, by `kind/ns/name`, with the resourceVersion the write returned: until the
    /// cache shows that version the cached object is stale and must not be planned from.
    written: Mutex<HashMap<String, (String, tokio::time::Instant)>>,
    /// The resourceVersion of our last write of each Secret: a key in a version we did not
    /// write was changed by someone else (see [`FOREIGN_KEY_GRACE`]).
    own_secret_versions: Mutex<HashMap<SecretKey, String>>,
    /// Whether the installed schema prunes rndc-warden's own status fields
    /// (`rndcKeyRotationStatus`, `rndcSecretVersion`), as the Bindy operator's CRDs do: learnt
    /// from the first status write, after which they are no longer sent.
    own_status_pruned: AtomicBool,
}

impl Context {
    /// Builds the worker context.
    pub fn new(
        client: Client,
        args: RotationArgs,
        policy: PolicyConfig,
        metrics: Arc<Metrics>,
        (keys, exec): (Arc<dyn KeySource>, Arc<dyn PodExec>),
        caches: Caches,
        identity: &str,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.to_owned(),
                instance: Some(identity.to_owned()),
            },
        );
        Self {
            limiter: QpsLimiter::new(args.client_qps, args.client_burst),
            client,
            args,
            policy,
            metrics,
            keys,
            exec,
            caches,
            recorder,
            reload_memory: Mutex::new(ReloadMemory::default()),
            written: Mutex::new(HashMap::new()),
            own_secret_versions: Mutex::new(HashMap::new()),
            own_status_pruned: AtomicBool::new(false),
        }
    }

    /// Whether the installed schema prunes rndc-warden's own status fields.
    pub(super) fn own_status_pruned(&self) -> bool {
        self.own_status_pruned.load(Ordering::Relaxed)
    }

    /// Records whether a status write that sent rndc-warden's own fields kept them.
    pub(super) fn learn_status_schema(&self, sent_own: bool, written: &Bind9Instance) {
        let status = written.status.as_ref();
        if sent_own
            && status.is_none_or(|s| {
                s.rndc_key_rotation_status.is_none() && s.rndc_secret_version.is_none()
            })
            && !self.own_status_pruned.swap(true, Ordering::Relaxed)
        {
            tracing::info!(
                "the installed Bind9Instance schema prunes status.rndcKeyRotationStatus and \
                 status.rndcSecretVersion (the Bindy operator's CRDs); writing only \
                 status.rndcKeyRotation"
            );
        }
    }

    /// Whether `secret` (its resourceVersion) is what our last write of it returned.
    pub(super) fn wrote_version(&self, namespace: &str, secret: &Secret) -> bool {
        let (Some(name), Some(rv)) = (&secret.metadata.name, &secret.metadata.resource_version)
        else {
            return false;
        };
        self.own_secret_versions.lock().is_ok_and(|v| {
            v.get(&(namespace.to_owned(), name.clone()))
                .is_some_and(|ours| ours == rv)
        })
    }

    pub(super) fn note_written<K: Resource>(&self, kind: &str, object: &K) {
        let meta = object.meta();
        if let (Some(ns), Some(name), Some(rv)) =
            (&meta.namespace, &meta.name, &meta.resource_version)
            && let Ok(mut written) = self.written.lock()
        {
            if kind == "Secret"
                && let Ok(mut own) = self.own_secret_versions.lock()
            {
                own.insert((ns.clone(), name.clone()), rv.clone());
            }
            written.insert(
                format!("{kind}/{ns}/{name}"),
                (rv.clone(), tokio::time::Instant::now()),
            );
        }
    }

    /// Whether the cached object (or its absence) reflects our last write to it.
    pub(super) fn settled(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        cached_rv: Option<&str>,
    ) -> bool {
        let key = format!("{kind}/{namespace}/{name}");
        let Ok(mut written) = self.written.lock() else {
            return true;
        };
        match written.get(&key) {
            None => true,
            Some((rv, at)) => {
                if cached_rv.is_some_and(|cached| at_or_after(cached, rv))
                    || at.elapsed() > SETTLE_TIMEOUT
                {
                    written.remove(&key);
                    true
                } else {
                    false
                }
            }
        }
    }

    pub(super) async fn call<T>(
        &self,
        verb: &'static str,
        what: impl FnOnce() -> String,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, Error> {
        self.limiter.acquire().await;
        request.await.map_err(|source| {
            self.metrics
                .rotator_api_errors
                .get_or_create(&ApiErrorLabels {
                    verb: verb.to_owned(),
                })
                .inc();
            Error::Kube {
                verb,
                what: what(),
                source,
            }
        })
    }
}

use std::future::Future;

/// Whether the cached resourceVersion `cached` shows our write `ours` or a later one. Versions
/// are etcd revisions (decimal); a later write by someone else (e.g. a back-dated created-at
/// right after we provisioned) must not keep the object "unsettled" until the timeout.
fn at_or_after(cached: &str, ours: &str) -> bool {
    match (cached.parse::<u64>(), ours.parse::<u64>()) {
        (Ok(c), Ok(o)) => c >= o,
        _ => cached == ours,
    }
}

pub(super) fn is_status(error: &Error, code: u16) -> bool {
    matches!(error, Error::Kube { source: kube::Error::Api(s), .. } if s.code == code)
}

/// Groups instances by the Secret they use, with their effective configuration. Instances whose
/// configuration cannot be worked out (unknown cluster, invalid value) are skipped and logged.
pub(super) fn group(ctx: &Context) -> BTreeMap<SecretKey, Vec<Member>> {
    let mut groups: BTreeMap<SecretKey, Vec<Member>> = BTreeMap::new();
    for instance in ctx.caches.instances() {
        if let Some((key, member)) = member_of(ctx, instance) {
            groups.entry(key).or_default().push(member);
        }
    }
    groups
}

/// The Secret an instance uses and the instance as its user, from its effective configuration
/// (`None`, logged: the configuration cannot be worked out).
fn member_of(ctx: &Context, instance: Arc<Bind9Instance>) -> Option<(SecretKey, Member)> {
    let namespace = instance.namespace()?;
    if instance.metadata.deletion_timestamp.is_some() {
        // Being deleted: its Secret is neither created, re-created, rotated nor rolled (the
        // operator's finalizer and garbage collection remove it; nothing is left behind).
        return None;
    }
    let cluster = instance
        .spec
        .cluster_ref
        .as_deref()
        .filter(|c| !c.is_empty())
        .and_then(|c| lookup(&ctx.caches.clusters, &namespace, c));
    let config = match effective_config(&instance, cluster.as_deref(), &ctx.policy) {
        Ok(config) => config,
        Err(error) => {
            tracing::debug!(instance = %format!("{namespace}/{}", instance.name_any()), %error, "skipping instance");
            return None;
        }
    };
    let inline = match &config.source {
        ConfigSource::Instance => instance
            .spec
            .rndc_key
            .as_ref()
            .and_then(|b| b.secret.clone()),
        ConfigSource::Role { role, .. } => cluster.as_deref().and_then(|c| {
            Role::block_of(*role, c)
                .and_then(|b| b.rndc_key.as_ref())
                .and_then(|b| b.secret.clone())
        }),
        _ => None,
    };
    let deployment_name = ctx.args.deployment_name(&instance.name_any());
    let mounted = ctx.caches.mounted_secret(&namespace, &deployment_name);
    let config = super::naming::resolve(config, mounted.as_deref());
    let key = (namespace.clone(), config.secret_name.clone());
    let mut user = SecretUser::new(&instance, config, inline);
    let recorded = ctx
        .caches
        .deployment(&namespace, &deployment_name)
        .and_then(|d| record_of(&d).1);
    user.known_count = user.known_count.max(recorded);
    Some((key, Member { instance, user }))
}

/// The users of `key` now: the instances named `users` (its users when it was queued) re-read
/// from the cache, those that still use it.
fn members_now(ctx: &Context, key: &SecretKey, users: &[Box<str>]) -> Vec<Member> {
    users
        .iter()
        .filter_map(|name| ctx.caches.instance(&key.0, name))
        .filter_map(|instance| member_of(ctx, instance))
        .filter(|(k, _)| k == key)
        .map(|(_, member)| member)
        .collect()
}

/// What a pass found for one Secret.
struct Assessment {
    /// Whether anything must be written.
    work: bool,
    /// When to look again.
    next_wake: Option<DateTime<Utc>>,
}

fn assess(ctx: &Context, key: &SecretKey, members: &[Member], now: DateTime<Utc>) -> Assessment {
    let (namespace, name) = key;
    let secret = ctx.caches.labelled_secret(namespace, name);
    let idle = Assessment {
        work: false,
        next_wake: None,
    };
    let secret_rv = secret
        .as_ref()
        .and_then(|s| s.metadata.resource_version.clone());
    if !ctx.settled("Secret", namespace, name, secret_rv.as_deref()) {
        // Look again soon: the watch shows our write within moments.
        return Assessment {
            work: false,
            next_wake: Some(now + chrono::TimeDelta::seconds(1)),
        };
    }
    let users: Vec<SecretUser> = members.iter().map(|m| m.user.clone()).collect();
    if secret.is_none()
        && governing(&users).is_some()
        && ctx.caches.secret_version(namespace, name).is_some()
    {
        // A managed Secret exists without the rndc-key label (the Bindy operator creates it
        // that way): the worker reads it and takes it over (label, annotations, repairs).
        return Assessment {
            work: true,
            next_wake: None,
        };
    }
    let plan = match plan_secret(
        &users,
        secret.as_deref(),
        &ctx.policy,
        now,
        ctx.args.provision,
    ) {
        Ok(plan) => plan,
        Err(reason) => {
            tracing::debug!(secret = %format!("{namespace}/{name}"), %reason, "not acting on Secret");
            return idle;
        }
    };
    for m in members {
        key_gauges(ctx, namespace, m, secret.as_deref(), now);
    }
    let mut work = plan.action != SecretAction::Nothing;
    let mut next_wake = plan.next_wake;
    if !work && let Some(secret) = secret.as_deref() {
        for m in members {
            if rotator_rolls(ctx, m) {
                match rollout_pending(ctx, namespace, &m.user.instance, &plan, secret, now) {
                    Pending::Now => work = true,
                    Pending::At(at) => next_wake = Some(next_wake.map_or(at, |w| w.min(at))),
                    Pending::No => {}
                }
            }
            work = work || status_pending(ctx, m, secret);
        }
    }
    Assessment { work, next_wake }
}

/// The per-instance key gauges: seconds until the key is due (negative when overdue, from the
/// Secret's `rndc-created-at` and the effective `rotateAfter`, whatever the rotator plans; at
/// most 0 for a key below policy, which is due at once), when the key was created, and whether the
/// key is below policy.
fn key_gauges(
    ctx: &Context,
    namespace: &str,
    member: &Member,
    secret: Option<&Secret>,
    now: DateTime<Utc>,
) {
    let labels = InstanceLabels {
        namespace: namespace.to_owned(),
        instance: member.user.instance.clone(),
    };
    let config = &member.user.config;
    let below = secret.is_some_and(|s| {
        audit(config, Some(s), now, &ctx.policy).verdict == crate::policy::Verdict::Fail
    });
    ctx.metrics
        .key_below_policy
        .get_or_create(&labels)
        .set(i64::from(below));
    let created_at = secret.and_then(|s| crate::policy::KeyAnnotations::of(s).created_at);
    match created_at {
        Some(created) => {
            ctx.metrics
                .key_created
                .get_or_create(&labels)
                .set(created.timestamp() as f64);
        }
        None => {
            ctx.metrics.key_created.remove(&labels);
        }
    }
    let due_at = created_at.map(|created| created + config.rotate_after.as_time_delta());
    match due_at.filter(|_| config.rotates()) {
        Some(at) => {
            let mut until = seconds_until(at, now);
            if below {
                until = until.min(0.0);
            }
            ctx.metrics
                .rotation_seconds_until
                .get_or_create(&labels)
                .set(until);
        }
        None if config.rotates() && secret.is_some() => {
            // Rotating, but the Secret has no creation time yet: due now.
            ctx.metrics
                .rotation_seconds_until
                .get_or_create(&labels)
                .set(0.0);
        }
        None => {
            ctx.metrics.rotation_seconds_until.remove(&labels);
        }
    }
}

/// Whether the rotator itself rolls this instance's Deployment onto a new key: only for managed
/// Secrets (it made the change) and the `rollout` strategy. Changes to user Secrets, and every
/// reload under `signal`, go through the reloader (validation, debounce, SIGHUP).
fn rotator_rolls(ctx: &Context, member: &Member) -> bool {
    member.user.config.is_managed() && strategy_of(ctx, &member.instance) == ReloadStrategy::Rollout
}

/// The reload strategy of an instance (its annotation, else the release-wide flag).
pub(super) fn strategy_of(ctx: &Context, instance: &Bind9Instance) -> ReloadStrategy {
    ReloadStrategy::for_instance(instance.annotations(), ctx.args.reload_strategy)
}

/// Whether an instance's Deployment is to be rolled onto the key in `secret`.
enum Pending {
    /// Not needed (the pods run the key, or there is no Deployment).
    No,
    /// Needed now.
    Now,
    /// Needed, but not before this time.
    At(DateTime<Utc>),
}

/// How long a key someone else wrote (the Bindy operator rotating or re-creating) is left to
/// them to roll out: the operator patches its marker right after its own rotation, and that
/// marker covers the key, so there is one rollout per key revision whichever operator acts first.
const FOREIGN_KEY_GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

fn rollout_pending(
    ctx: &Context,
    namespace: &str,
    instance: &str,
    plan: &RotationPlan,
    secret: &Secret,
    now: DateTime<Utc>,
) -> Pending {
    let name = ctx.args.deployment_name(instance);
    let Some(deployment) = ctx.caches.deployment(namespace, &name) else {
        return Pending::No;
    };
    if !ctx.settled(
        "Deployment",
        namespace,
        &name,
        deployment.metadata.resource_version.as_deref(),
    ) {
        return Pending::No;
    }
    if !needs_roll(plan, &deployment, secret) {
        return if record_stale(&deployment, secret) {
            Pending::Now
        } else {
            Pending::No
        };
    }
    let ours = ctx.wrote_version(namespace, secret);
    let created = crate::policy::KeyAnnotations::of(secret).created_at;
    match created.map(|c| c + FOREIGN_KEY_GRACE) {
        Some(until) if !ours && now < until => Pending::At(until),
        _ => Pending::Now,
    }
}

fn status_pending(ctx: &Context, member: &Member, secret: &Secret) -> bool {
    let Some(desired) = key_status(secret, &member.user.config) else {
        return false;
    };
    let instance = &member.instance;
    let ns = instance.namespace().unwrap_or_default();
    ctx.settled(
        "Bind9Instance",
        &ns,
        &instance.name_any(),
        instance.metadata.resource_version.as_deref(),
    ) && !status_in_sync(instance.status.as_ref(), &desired, ctx.own_status_pruned())
}

/// The scheduler: passes over every Secret on watch events, at the earliest due time and every
/// resync period, and queues the Secrets with work for `concurrency` workers ([`WorkQueue`]).
/// Runs until dropped; dropping it stops the workers at once.
pub async fn schedule(ctx: Arc<Context>) -> Result<(), Error> {
    ctx.caches.wait_ready().await;
    tracing::info!("rotator caches synced");
    // Shared with the reloader's tasks: at most `concurrency` Secrets or reloads at once.
    let semaphore = Arc::new(Semaphore::new(ctx.args.concurrency));
    let queue = Arc::new(WorkQueue::new(ctx.args.resync_period));
    let mut workers = JoinSet::new();
    for _ in 0..ctx.args.concurrency {
        workers.spawn(work(ctx.clone(), queue.clone(), semaphore.clone()));
    }
    let mut reloads = reloader::Reloads::new(ctx.args.reload_debounce);
    let resync = ctx.args.resync_period;
    loop {
        let now = Utc::now();
        let mut next_wake = tokio::time::Instant::now() + resync;
        let groups = group(&ctx);
        if let Some(at) = reloads.pass(&ctx, &groups, &semaphore).await {
            next_wake = next_wake.min(at);
        }
        for (key, members) in groups {
            if let Some(until) = queue.backoff_until(&key)
                && until > tokio::time::Instant::now()
            {
                next_wake = next_wake.min(until);
                continue;
            }
            let assessment = assess(&ctx, &key, &members, now);
            if let Some(at) = assessment.next_wake {
                let delay = (at - now).to_std().unwrap_or(Duration::ZERO);
                next_wake = next_wake.min(tokio::time::Instant::now() + delay);
            }
            if assessment.work {
                let users = members
                    .iter()
                    .map(|m| Box::from(m.user.instance.as_str()))
                    .collect();
                queue.push(key, users);
            }
        }
        tokio::select! {
            () = tokio::time::sleep_until(next_wake) => {}
            () = ctx.caches.changed.notified() => {
                tokio::time::sleep(DEBOUNCE).await;
            }
            () = queue.failed() => {}
            Some(joined) = workers.join_next() => {
                // Workers loop for ever and catch panics of their work; keep the pool full anyway.
                tracing::error!(?joined, "a rotation worker stopped; starting another");
                workers.spawn(work(ctx.clone(), queue.clone(), semaphore.clone()));
            }
            Some(joined) = reloads.join_next(), if reloads.busy() => {
                reloads.done(&ctx, joined);
            }
        }
        reloads.reap(&ctx);
    }
}

/// A worker: takes the next queued Secret, re-derives its users and its work from the caches
/// and, when there is still work, reconciles it.
async fn work(ctx: Arc<Context>, queue: Arc<WorkQueue>, semaphore: Arc<Semaphore>) {
    loop {
        let Taken { key, users } = queue.take().await;
        let result = {
            let _permit = semaphore.acquire().await;
            AssertUnwindSafe(work_on(&ctx, &key, &users))
                .catch_unwind()
                .await
        };
        let error = match result {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some("the rotation worker panicked".to_owned()),
        };
        if let Some(retry_in) = queue.finish(&key, error.is_some())
            && let Some(error) = error
        {
            tracing::warn!(
                secret = %format!("{}/{}", key.0, key.1),
                %error,
                retry_in = ?retry_in,
                "RNDC key work failed"
            );
        }
    }
}

/// One Secret taken from the queue: assessed again from the caches (its users, the Secret, the
/// Deployments and statuses may have changed since it was queued), then reconciled.
async fn work_on(ctx: &Context, key: &SecretKey, users: &[Box<str>]) -> Result<(), Error> {
    let members = members_now(ctx, key, users);
    if !assess(ctx, key, &members, Utc::now()).work {
        return Ok(());
    }
    reconcile(ctx, key, &members).await
}

/// What happened to the Secret in one reconcile.
struct Rotated {
    rotation: u32,
    algorithm: crate::policy::Algorithm,
    reason: crate::policy::RotateReason,
}

/// Works on one Secret: its action (create, rotate, annotate) with resourceVersion
/// preconditions, then the Deployments and statuses of every instance using it, then Events.
async fn reconcile(ctx: &Context, key: &SecretKey, members: &[Member]) -> Result<(), Error> {
    let (namespace, name) = key;
    let users: Vec<SecretUser> = members.iter().map(|m| m.user.clone()).collect();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let what = || format!("Secret {namespace}/{name}");
    let post = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let mut secret: Option<Secret> = ctx
        .caches
        .labelled_secret(namespace, name)
        .map(Arc::unwrap_or_clone);
    if secret.is_none() && ctx.caches.secret_version(namespace, name).is_some() {
        // Not labelled (yet): read it whole to take it over.
        secret = ctx.call("get", what, secrets.get_opt(name)).await?;
    }
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let mut rotated: Option<Rotated> = None;
    let mut plan: Option<RotationPlan> = None;
    let mut attempt = 0;
    let result: Result<(), Error> = loop {
        attempt += 1;
        if attempt > 6 {
            break Err(Error::Contended(what()));
        }
        let now = Utc::now();
        let current = match plan_secret(
            &users,
            secret.as_ref(),
            &ctx.policy,
            now,
            ctx.args.provision,
        ) {
            Ok(p) => p,
            Err(reason) => break Err(Error::Refused(reason)),
        };
        let action = current.action.clone();
        plan = Some(current);
        let step = match action {
            SecretAction::Nothing => break Ok(()),
            SecretAction::Provision {
                algorithm,
                key_name,
                annotations,
                ..
            } => {
                let Some(governor) = governing(&users) else {
                    break Ok(());
                };
                let data = match generate(ctx.keys.as_ref(), &key_name, algorithm) {
                    Ok(d) => d,
                    Err(e) => break Err(e),
                };
                let object =
                    render_provision(namespace, name, governor, data, &annotations, &ctx.policy);
                let created = ctx
                    .call("create", what, secrets.create(&post, &object))
                    .await;
                match created {
                    Ok(s) => {
                        tracing::info!(secret = %format!("{namespace}/{name}"), %algorithm, "Provisioned RNDC Secret {namespace}/{name}");
                        Ok(s)
                    }
                    Err(e) if is_status(&e, 409) => {
                        // It exists but our (label-selected) cache does not show it: read it and
                        // decide again (it is taken over: label, annotations, repairs).
                        match ctx.call("get", what, secrets.get_opt(name)).await {
                            Ok(existing) => {
                                secret = existing;
                                continue;
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                }
            }
            SecretAction::Rotate {
                algorithm,
                key_name,
                rotation,
                annotations,
                reason,
                ..
            } => {
                let Some(cur) = secret.as_ref() else {
                    break Ok(());
                };
                if cur.metadata.resource_version.is_none() {
                    break Err(Error::Refused(format!("{} has no resourceVersion", what())));
                }
                let data = match generate(ctx.keys.as_ref(), &key_name, algorithm) {
                    Ok(d) => d,
                    Err(e) => break Err(e),
                };
                tracing::info!(
                    secret = %format!("{namespace}/{name}"), rotation, %reason, %algorithm,
                    "Rotating RNDC Secret {namespace}/{name} (rotation #{rotation})"
                );
                // One write that leaves the Secret valid: the four key entries (a key of the
                // algorithm's length), the annotations and the label, with the version the
                // decision was made on as precondition (the cached copy is not the whole object).
                let patch = rotation_patch(cur, data, &annotations);
                let replaced = ctx
                    .call(
                        "patch",
                        what,
                        secrets.patch(name, &params, &Patch::Merge(&patch)),
                    )
                    .await;
                if replaced.is_ok() {
                    tracing::info!(
                        secret = %format!("{namespace}/{name}"), rotation,
                        "Successfully rotated RNDC Secret {namespace}/{name} (rotation #{rotation})"
                    );
                    rotated = Some(Rotated {
                        rotation,
                        algorithm,
                        reason,
                    });
                }
                replaced
            }
            SecretAction::Annotate { set, remove, .. } => {
                let Some(cur) = secret.as_ref() else {
                    break Ok(());
                };
                if cur.metadata.resource_version.is_none() {
                    break Err(Error::Refused(format!("{} has no resourceVersion", what())));
                }
                let patch = annotate_patch(cur, &set, &remove);
                ctx.call(
                    "patch",
                    what,
                    secrets.patch(name, &params, &Patch::Merge(&patch)),
                )
                .await
            }
        };
        match step {
            Ok(written) => {
                ctx.note_written("Secret", &written);
                secret = Some(written);
            }
            Err(e) if is_status(&e, 409) || is_status(&e, 404) => {
                // Someone else changed (or deleted) it: re-read and decide again.
                secret = match ctx.call("get", what, secrets.get_opt(name)).await {
                    Ok(s) => s,
                    Err(e) => break Err(e),
                };
            }
            Err(e) => break Err(e),
        }
    };

    if let Err(error) = result {
        if rotated.is_none() && !matches!(error, Error::Contended(_)) {
            ctx.metrics
                .rotations
                .get_or_create(&ResultLabels {
                    result: "failure".to_owned(),
                })
                .inc();
            for m in members {
                publish(
                    ctx,
                    &m.instance,
                    EventType::Warning,
                    EVENT_RNDC_KEY_ROTATION_FAILED,
                    format!("RNDC key Secret {namespace}/{name}: {error}"),
                )
                .await;
            }
        }
        return Err(error);
    }
    let (Some(secret), Some(plan)) = (secret, plan) else {
        return Ok(());
    };

    let mut problems = Vec::new();
    for m in members {
        // The revision the pods were rolled onto: `status.rndcSecretVersion` (SPEC §2).
        let mut rolled_onto = None;
        if rotator_rolls(ctx, m) {
            match roll(
                ctx,
                namespace,
                &m.user.instance,
                &plan,
                &secret,
                rotated.is_some(),
            )
            .await
            {
                Ok(()) => rolled_onto = key_revision(&secret),
                Err(e) => problems.push(e.to_string()),
            }
        }
        if let Some(desired) = key_status(&secret, &m.user.config)
            && let Err(e) = write_status(ctx, &m.instance, &desired, rolled_onto.as_deref()).await
        {
            problems.push(e.to_string());
        }
    }
    if let Some(done) = &rotated {
        ctx.metrics
            .rotations
            .get_or_create(&ResultLabels {
                result: "success".to_owned(),
            })
            .inc();
        for m in members {
            publish(
                ctx,
                &m.instance,
                EventType::Normal,
                EVENT_RNDC_KEY_ROTATED,
                format!(
                    "Rotated RNDC key Secret {namespace}/{name} (rotation #{}, {}, {})",
                    done.rotation, done.algorithm, done.reason
                ),
            )
            .await;
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        let message = problems.join("; ");
        for m in members {
            publish(
                ctx,
                &m.instance,
                EventType::Warning,
                EVENT_RNDC_KEY_ROTATION_FAILED,
                format!("RNDC key Secret {namespace}/{name} is current but rollout or status failed: {message}"),
            )
            .await;
        }
        Err(Error::Incomplete(message))
    }
}

/// Rolls the instance's Deployment onto the key in `secret` when its pods do not run it yet
/// ([`needs_roll`]; the marker is the key's `rndc-created-at`), recording the key revision in
/// rndc-warden's own Deployment annotations in the same patch; refreshes a stale record without
/// a rollout ([`record_stale`]).
async fn roll(
    ctx: &Context,
    namespace: &str,
    instance: &str,
    plan: &RotationPlan,
    secret: &Secret,
    after_rotation: bool,
) -> Result<(), Error> {
    let name = ctx.args.deployment_name(instance);
    let Some(marker) = key_revision(secret) else {
        return Ok(());
    };
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    let what = || format!("Deployment {namespace}/{name}");
    let mut current: Option<Deployment> = ctx
        .caches
        .deployment(namespace, &name)
        .map(Arc::unwrap_or_clone);
    for _ in 0..3 {
        let Some(deployment) = current.as_ref() else {
            return Ok(());
        };
        let rolls = if after_rotation {
            needs_roll_after_rotation(deployment, secret)
        } else {
            needs_roll(plan, deployment, secret)
        };
        if !rolls && !record_stale(deployment, secret) {
            return Ok(());
        }
        let patch = rollout_patch(deployment, secret, rolls.then_some(marker.as_str()));
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        match ctx
            .call(
                "patch",
                what,
                api.patch(&name, &params, &Patch::Merge(&patch)),
            )
            .await
        {
            Ok(patched) => {
                ctx.note_written("Deployment", &patched);
                if !rolls {
                    tracing::debug!(
                        "Recorded the RNDC key revision of Deployment {namespace}/{name}"
                    );
                } else if after_rotation {
                    count_reload(ctx, "success");
                    tracing::info!(
                        "Triggered Deployment {namespace}/{name} rollout after RNDC rotation"
                    );
                } else {
                    count_reload(ctx, "success");
                    tracing::info!(marker = %marker, "Triggered Deployment {namespace}/{name} rollout onto the current RNDC key");
                }
                return Ok(());
            }
            Err(e) if is_status(&e, 409) => {
                current = ctx.call("get", what, api.get_opt(&name)).await?;
            }
            Err(e) if is_status(&e, 404) => return Ok(()),
            Err(e) => {
                if rolls {
                    count_reload(ctx, "failed");
                }
                return Err(e);
            }
        }
    }
    Err(Error::Contended(what()))
}

fn count_reload(ctx: &Context, status: &str) {
    ctx.metrics
        .secret_reloads
        .get_or_create(&crate::metrics::ReloadLabels {
            status: status.to_owned(),
        })
        .inc();
}

fn status_value(desired: &RndcKeyRotationStatus) -> serde_json::Value {
    json!({
        "createdAt": desired.created_at,
        "rotateAt": desired.rotate_at,
        "lastRotatedAt": desired.last_rotated_at,
        "rotationCount": desired.rotation_count,
    })
}

/// Writes upstream's `status.rndcKeyRotation` (in the Bindy operator's format, so its writer and
/// ours agree) and rndc-warden's `status.rndcKeyRotationStatus` (unless the schema prunes it)
/// when they do not already say the same; with `rolled_onto`, also `status.rndcSecretVersion`
/// (the key revision the rotator just rolled the pods onto; not where the schema prunes it).
async fn write_status(
    ctx: &Context,
    instance: &Bind9Instance,
    desired: &RndcKeyRotationStatus,
    rolled_onto: Option<&str>,
) -> Result<(), Error> {
    let pruned = ctx.own_status_pruned();
    patch_instance_status(ctx, instance, !pruned, |current| {
        let pruned = ctx.own_status_pruned();
        let status = current.status.as_ref();
        let version = rolled_onto.filter(|v| {
            !pruned && status.and_then(|s| s.rndc_secret_version.as_deref()) != Some(*v)
        });
        if version.is_none() && status_in_sync(status, desired, pruned) {
            return None;
        }
        let value = status_value(desired);
        let mut body = if pruned {
            json!({ "rndcKeyRotation": value })
        } else {
            json!({ "rndcKeyRotationStatus": value, "rndcKeyRotation": value })
        };
        if let Some(v) = version {
            body["rndcSecretVersion"] = json!(v);
        }
        Some(body)
    })
    .await
}

/// Merges a status body into an instance: `body(current)` says what to write, or `None` when the
/// status is already right. The patch carries the resourceVersion it was decided on; a 409
/// re-reads and decides again (three attempts), and a deleted instance needs nothing.
pub(super) async fn patch_instance_status(
    ctx: &Context,
    instance: &Bind9Instance,
    sends_own: bool,
    mut body: impl FnMut(&Bind9Instance) -> Option<serde_json::Value>,
) -> Result<(), Error> {
    let namespace = instance.namespace().unwrap_or_default();
    let name = instance.name_any();
    let api: Api<Bind9Instance> = Api::namespaced(ctx.client.clone(), &namespace);
    let what = || format!("Bind9Instance {namespace}/{name} status");
    let mut current = ctx.caches.instance(&namespace, &name).map(|i| (*i).clone());
    for _ in 0..3 {
        let Some(instance) = current.as_ref() else {
            return Ok(());
        };
        let Some(status) = body(instance) else {
            return Ok(());
        };
        let patch = json!({
            "metadata": { "resourceVersion": instance.metadata.resource_version },
            "status": status,
        });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        match ctx
            .call(
                "patch",
                what,
                api.patch_status(&name, &params, &Patch::Merge(&patch)),
            )
            .await
        {
            Ok(written) => {
                ctx.learn_status_schema(sends_own, &written);
                ctx.note_written("Bind9Instance", &written);
                return Ok(());
            }
            Err(e) if is_status(&e, 409) => {
                current = ctx.call("get", what, api.get_opt(&name)).await?;
            }
            Err(e) if is_status(&e, 404) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Err(Error::Contended(what()))
}

pub(super) async fn publish(
    ctx: &Context,
    instance: &Bind9Instance,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let mut note = note;
    if note.len() > 1000 {
        let mut cut = 1000;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
    }
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: if reason.starts_with("RndcSecretReload") {
            "Reload"
        } else if type_ == EventType::Normal {
            "Rotate"
        } else {
            "Reconcile"
        }
        .to_owned(),
        secondary: None,
    };
    ctx.limiter.acquire().await;
    if let Err(error) = ctx
        .recorder
        .publish(&event, &instance.object_ref(&()))
        .await
    {
        ctx.metrics
            .rotator_api_errors
            .get_or_create(&ApiErrorLabels {
                verb: "create".to_owned(),
            })
            .inc();
        tracing::warn!(%error, instance = %instance.name_any(), "publishing an Event failed");
    }
}
