//! In-memory watch caches of the Bindy objects, so admission answers without any API call on the
//! request path. Readiness turns true once every cache has listed its objects.
//!
//! The rotator reads the same instance and cluster stores ([`ClusterCache::shared`]) instead of
//! watching and caching those objects a second time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::StreamExt as _;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use tokio::sync::Notify;

use crate::api::{Bind9Cluster, Bind9Instance, ClusterBind9Provider, RoleSpec};
use crate::probe::Readiness;

/// kubectl's copy of the last applied manifest: large, and never read by rndc-warden.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Keeps the cached object small: drops managed fields and kubectl's last-applied copy, which
/// nothing reads.
fn strip<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
}

/// A cached instance keeps metadata (minus [`strip`]), the modelled spec fields and the modelled
/// status (the rotator reads the rotation status, `rndcSecretVersion` and conditions). Fields
/// this version does not model (`extra`: replicas, BIND9 options, upstream status, …) are dropped:
/// admission and the rotator decide from the modelled fields only, and neither ever writes a
/// whole cached object back.
pub(crate) fn strip_instance(instance: &mut Bind9Instance) {
    strip(instance);
    instance.spec.extra.clear();
    if let Some(config) = instance.spec.config.as_mut() {
        config.extra.clear();
    }
    if let Some(status) = instance.status.as_mut() {
        status.extra.clear();
    }
}

fn strip_roles<'a>(roles: impl IntoIterator<Item = &'a mut Option<RoleSpec>>) {
    for role in roles.into_iter().flatten() {
        role.extra.clear();
    }
}

/// A cached cluster keeps its modelled fields (role blocks, references); see [`strip_instance`].
pub(crate) fn strip_cluster(cluster: &mut Bind9Cluster) {
    strip(cluster);
    let spec = &mut cluster.spec;
    spec.extra.clear();
    if let Some(global) = spec.global.as_mut() {
        global.extra.clear();
    }
    strip_roles([&mut spec.primary, &mut spec.secondary]);
}

/// A cached provider keeps its modelled fields; see [`strip_instance`].
fn strip_provider(provider: &mut ClusterBind9Provider) {
    strip(provider);
    let spec = &mut provider.spec;
    spec.extra.clear();
    if let Some(global) = spec.global.as_mut() {
        global.extra.clear();
    }
    strip_roles([&mut spec.primary, &mut spec.secondary]);
}

/// A background task of the cache.
pub type CacheTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a lookup found.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup<T> {
    /// The object exists.
    Found(Arc<T>),
    /// The cache is synced and has no such object.
    Missing,
    /// There is no cache (no cluster connection), so nothing is known.
    Unknown,
}

#[derive(Debug)]
struct Stores {
    instances: Vec<Store<Bind9Instance>>,
    clusters: Vec<Store<Bind9Cluster>>,
    providers: Option<Store<ClusterBind9Provider>>,
    changed: Arc<Notify>,
}

/// The instance and cluster stores of a [`ClusterCache`], for the rotator to read instead of
/// watching the same objects again, and the signal of every change to them. The rotator may
/// wait on their `wait_until_ready`; nothing else in the process does (see [`Synced`]).
#[derive(Debug, Clone)]
pub struct SharedStores {
    /// `Bind9Instance`s, one store per watched namespace (or one for all).
    pub instances: Vec<Store<Bind9Instance>>,
    /// `Bind9Cluster`s, likewise.
    pub clusters: Vec<Store<Bind9Cluster>>,
    /// Notified after every watch event of either.
    pub changed: Arc<Notify>,
}

/// Watch caches of `Bind9Instance`, `Bind9Cluster` and `ClusterBind9Provider`, or nothing when
/// there is no cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterCache {
    stores: Option<Arc<Stores>>,
}

/// The cache and the tasks that keep it current.
pub struct StartedCache {
    /// The cache to read from.
    pub cache: ClusterCache,
    /// Tasks to run until shutdown; each returns only when `stop` resolves.
    pub tasks: Vec<CacheTask>,
}

/// How long one attempt at the initial list may take before the watch is started again.
const INITIAL_LIST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether a watch error is HTTP 410 Gone / `Expired` (the resourceVersion the watch resumes
/// from is older than what the apiserver keeps).
fn is_expired(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::WatchFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::InitialListFailed(kube::Error::Api(status)) => status.code == 410,
        _ => error.to_string().contains("Expired"),
    }
}

/// Whether a store has had its first complete list, for any number of waiters.
///
/// kube's `Store::wait_until_ready` wakes only the task that polled it last (its oneshot
/// receiver keeps a single waker). Admission's readiness and the rotator both waited on the
/// same instance and cluster stores, so whichever had polled first slept until something else
/// polled it again: `serve` stayed unready although every list had answered (issue 12, 11).
/// Admission waits on this signal instead; the rotator is then the stores' only
/// `wait_until_ready` waiter.
#[derive(Debug, Clone)]
pub struct Synced(tokio::sync::watch::Receiver<bool>);

impl Synced {
    fn channel() -> (tokio::sync::watch::Sender<bool>, Synced) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Synced(rx))
    }

    /// Returns once the first complete list has been stored (at once if it has been); never
    /// returns if the watch task ended before that.
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|synced| *synced).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Whether the first complete list has been stored.
    pub fn is_synced(&self) -> bool {
        *self.0.borrow()
    }
}

/// The one watch loop of the process (admission's caches and the rotator's stores): watches
/// `api` with `config` until `stop`, hands every event to `apply` and notifies `changed` after
/// it.
///
/// The initial lists are consistent lists (kube's `any_semantic` does nothing here: with a page
/// limit kube-core drops `resourceVersion=0`). A new CRD's list can be older than what its fresh
/// watch cache then keeps, and the watch from its resourceVersion fails with 410 `Expired`: the
/// watch then starts over with a new list (kube alone would retry a watch that failed to start
/// from the same resourceVersion forever). An attempt whose initial list has not completed
/// within INITIAL_LIST_DEADLINE starts over too. Other errors are retried with backoff.
pub(crate) fn watch_task<K>(
    api: Api<K>,
    config: watcher::Config,
    stop: impl Future<Output = ()> + Send + 'static,
    changed: Arc<Notify>,
    mut apply: impl FnMut(watcher::Event<K>) + Send + 'static,
) -> CacheTask
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    Box::pin(async move {
        let kind = K::kind(&());
        let mut stop = std::pin::pin!(stop);
        loop {
            let stream = watcher(api.clone(), config.clone()).default_backoff();
            let mut stream = std::pin::pin!(stream);
            let deadline = tokio::time::Instant::now() + INITIAL_LIST_DEADLINE;
            let mut listed = false;
            loop {
                let next = tokio::select! {
                    () = &mut stop => return,
                    () = tokio::time::sleep_until(deadline), if !listed => None,
                    next = stream.next() => Some(next),
                };
                let Some(next) = next else {
                    tracing::warn!(%kind, "initial list not complete after {INITIAL_LIST_DEADLINE:?}; listing again");
                    break;
                };
                match next {
                    None => break,
                    Some(Ok(event)) => {
                        listed |= matches!(event, watcher::Event::InitDone);
                        apply(event);
                    }
                    Some(Err(error)) if is_expired(&error) => {
                        tracing::info!(%kind, %error, "watch expired; listing again from the current state");
                        break;
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%kind, %error, "watch failed; retrying with backoff");
                    }
                }
                changed.notify_one();
            }
            changed.notify_one();
        }
    })
}

/// A reflector store of `K` (objects shrunk by `shrink`) kept by [`watch_task`], and its
/// [`Synced`] signal.
fn reflect<K>(
    api: Api<K>,
    stop: impl Future<Output = ()> + Send + 'static,
    shrink: fn(&mut K),
    changed: Arc<Notify>,
) -> (Store<K>, Synced, CacheTask)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, mut writer) = reflector::store();
    let (synced_tx, synced) = Synced::channel();
    let task = watch_task(
        api,
        watcher::Config::default(),
        stop,
        changed,
        move |event| {
            let event = event.modify(shrink);
            writer.apply_watcher_event(&event);
            if matches!(event, watcher::Event::InitDone) {
                synced_tx.send_replace(true);
            }
        },
    );
    (reader, synced, task)
}

/// Waits until `synced`, calling `still` every 10 s meanwhile.
async fn wait_logged(synced: &Synced, still: impl Fn()) {
    let mut ready = std::pin::pin!(synced.wait());
    loop {
        tokio::select! {
            () = &mut ready => return,
            () = tokio::time::sleep(INITIAL_LIST_DEADLINE) => still(),
        }
    }
}

impl ClusterCache {
    /// A cache that knows nothing (admission without a cluster connection).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Starts watching `namespaces` (all when empty). Readiness is set once every store listed.
    /// `ClusterBind9Provider` is watched only when its CRD is installed (clusters that run only
    /// the namespaced kinds must still become ready).
    pub async fn start(
        client: Client,
        namespaces: &[String],
        readiness: Arc<Readiness>,
        stop: &(dyn Fn() -> CacheTask + Sync),
    ) -> StartedCache {
        let changed = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        let mut instances = Vec::new();
        let mut clusters = Vec::new();
        let mut synced: Vec<(&'static str, Synced)> = Vec::new();
        let scopes: Vec<Option<&str>> = if namespaces.is_empty() {
            vec![None]
        } else {
            namespaces.iter().map(|ns| Some(ns.as_str())).collect()
        };
        for scope in scopes {
            let (instance_api, cluster_api) = match scope {
                None => (Api::all(client.clone()), Api::all(client.clone())),
                Some(ns) => (
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                ),
            };
            let (store, signal, task) =
                reflect(instance_api, stop(), strip_instance, changed.clone());
            instances.push(store);
            synced.push(("Bind9Instance", signal));
            tasks.push(task);
            let (store, signal, task) =
                reflect(cluster_api, stop(), strip_cluster, changed.clone());
            clusters.push(store);
            synced.push(("Bind9Cluster", signal));
            tasks.push(task);
        }
        let has_providers = match client
            .list_api_group_resources(crate::api::API_VERSION)
            .await
        {
            Ok(list) => list
                .resources
                .iter()
                .any(|resource| resource.name == "clusterbind9providers"),
            Err(error) => {
                tracing::warn!(%error, "API discovery failed; assuming ClusterBind9Provider is installed");
                true
            }
        };
        let providers = if has_providers {
            let (store, signal, task) =
                reflect(Api::all(client), stop(), strip_provider, changed.clone());
            synced.push(("ClusterBind9Provider", signal));
            tasks.push(task);
            Some(store)
        } else {
            tracing::info!("ClusterBind9Provider is not installed; not watching it");
            None
        };
        let stores = Arc::new(Stores {
            instances,
            clusters,
            providers,
            changed,
        });
        let mut ready_stop = stop();
        tasks.push(Box::pin(async move {
            let synced = async {
                let started = tokio::time::Instant::now();
                let waited = |kind: &'static str| {
                    tracing::warn!(kind, waited = ?started.elapsed(), "watch cache not synced yet");
                };
                for (kind, signal) in &synced {
                    wait_logged(signal, || waited(kind)).await;
                }
                tracing::info!("watch caches synced");
                readiness.set_caches_synced();
            };
            tokio::select! {
                () = synced => {}
                () = &mut ready_stop => return,
            }
            ready_stop.await;
        }));
        StartedCache {
            cache: Self {
                stores: Some(stores),
            },
            tasks,
        }
    }

    /// A synced cache holding exactly these objects (offline use and tests).
    pub fn from_objects(
        instances: Vec<Bind9Instance>,
        clusters: Vec<Bind9Cluster>,
        providers: Vec<ClusterBind9Provider>,
    ) -> Self {
        fn filled<K>(objects: Vec<K>) -> Store<K>
        where
            K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
        {
            let (reader, mut writer) = reflector::store();
            writer.apply_watcher_event(&watcher::Event::Init);
            for object in objects {
                writer.apply_watcher_event(&watcher::Event::InitApply(object));
            }
            writer.apply_watcher_event(&watcher::Event::InitDone);
            reader
        }
        Self {
            stores: Some(Arc::new(Stores {
                instances: vec![filled(instances)],
                clusters: vec![filled(clusters)],
                providers: Some(filled(providers)),
                changed: Arc::new(Notify::new()),
            })),
        }
    }

    /// The instance and cluster stores, to share with the rotator (`None` without a cluster).
    pub fn shared(&self) -> Option<SharedStores> {
        self.stores.as_ref().map(|stores| SharedStores {
            instances: stores.instances.clone(),
            clusters: stores.clusters.clone(),
            changed: stores.changed.clone(),
        })
    }

    /// Whether this cache watches a cluster at all.
    pub fn is_connected(&self) -> bool {
        self.stores.is_some()
    }

    /// The `Bind9Cluster` (or, failing that, the `ClusterBind9Provider`) called `name`, as seen
    /// from `namespace`.
    pub fn cluster(&self, namespace: &str, name: &str) -> Lookup<ClusterRefTarget> {
        let Some(stores) = &self.stores else {
            return Lookup::Unknown;
        };
        let key = ObjectRef::<Bind9Cluster>::new(name).within(namespace);
        if let Some(found) = stores.clusters.iter().find_map(|store| store.get(&key)) {
            return Lookup::Found(Arc::new(ClusterRefTarget::Cluster(found)));
        }
        let key = ObjectRef::<ClusterBind9Provider>::new(name);
        match stores.providers.as_ref().and_then(|store| store.get(&key)) {
            Some(found) => Lookup::Found(Arc::new(ClusterRefTarget::Provider(found))),
            None => Lookup::Missing,
        }
    }

    /// The `Bind9Instance` `namespace/name`.
    pub fn instance(&self, namespace: &str, name: &str) -> Lookup<Bind9Instance> {
        let Some(stores) = &self.stores else {
            return Lookup::Unknown;
        };
        let key = ObjectRef::<Bind9Instance>::new(name).within(namespace);
        match stores.instances.iter().find_map(|store| store.get(&key)) {
            Some(found) => Lookup::Found(found),
            None => Lookup::Missing,
        }
    }

    /// Every cached `Bind9Instance` in `namespace`.
    pub fn instances_in(&self, namespace: &str) -> Vec<Arc<Bind9Instance>> {
        let Some(stores) = &self.stores else {
            return Vec::new();
        };
        stores
            .instances
            .iter()
            .flat_map(|store| {
                store.state_filter(|instance| {
                    instance.metadata.namespace.as_deref() == Some(namespace)
                })
            })
            .collect()
    }
}

/// What an instance's `clusterRef` names.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterRefTarget {
    /// A namespaced `Bind9Cluster`.
    Cluster(Arc<Bind9Cluster>),
    /// A cluster-scoped `ClusterBind9Provider`.
    Provider(Arc<ClusterBind9Provider>),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12 (11): every waiter is woken when the first list completes, whichever polled
    /// first. (The same test with kube's `Store::wait_until_ready` in place of `Synced::wait`
    /// fails: only the last poller is woken.) Time is paused, so a waiter that is never woken
    /// ends the test at once through the timeout rather than after a real wait.
    #[tokio::test(start_paused = true)]
    async fn every_waiter_is_woken_when_the_first_list_completes() {
        let (tx, synced) = Synced::channel();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let synced = synced.clone();
                tokio::spawn(async move { synced.wait().await })
            })
            .collect();
        // Every waiter polls (and parks) before the list completes.
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert!(!synced.is_synced());
        tx.send_replace(true);
        for waiter in waiters {
            tokio::time::timeout(std::time::Duration::from_secs(3600), waiter)
                .await
                .expect("a waiter was never woken")
                .expect("waiter task");
        }
        // A waiter that comes later returns at once.
        tokio::time::timeout(std::time::Duration::from_secs(3600), synced.wait())
            .await
            .expect("a late waiter returns");
    }
}
