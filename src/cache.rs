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
/// watching the same objects again, and the signal of every change to them.
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

/// How long one attempt at the initial list may take before the watch is started again with
/// the other list semantic.
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

fn reflect<K>(
    api: Api<K>,
    stop: impl Future<Output = ()> + Send + 'static,
    shrink: fn(&mut K),
    changed: Arc<Notify>,
) -> (Store<K>, CacheTask)
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
    // Readiness must not depend on luck with a CRD installed moments before (issue 12, 11):
    // - the first list is served from the apiserver's watch cache (`any_semantic`): a
    //   consistent list of a brand-new CRD can wait on that cache for minutes;
    // - such a list can be older than what the watch cache then keeps, and the watch from its
    //   resourceVersion fails with 410 `Expired` again and again (every re-list is served the
    //   same stale version). On `Expired` the watch starts over with a consistent list (no
    //   resourceVersion), which the apiserver answers from etcd or a current cache;
    // - an attempt whose initial list has not completed within INITIAL_LIST_DEADLINE starts
    //   over with the other semantic.
    // The store is ready after the first complete list of either kind.
    let task = async move {
        let kind = K::kind(&());
        let mut stop = std::pin::pin!(stop);
        let mut consistent = false;
        loop {
            let config = if consistent {
                watcher::Config::default()
            } else {
                watcher::Config::default().any_semantic()
            };
            let stream = watcher(api.clone(), config)
                .default_backoff()
                .modify(shrink);
            let mut stream = std::pin::pin!(stream);
            let started = tokio::time::Instant::now();
            let mut listed = false;
            let restart = loop {
                let deadline = started + INITIAL_LIST_DEADLINE;
                let next = tokio::select! {
                    () = &mut stop => return,
                    () = tokio::time::sleep_until(deadline), if !listed => None,
                    next = stream.next() => Some(next),
                };
                let Some(next) = next else {
                    tracing::warn!(%kind, consistent, "initial list not complete after {INITIAL_LIST_DEADLINE:?}; listing again");
                    break true;
                };
                match next {
                    None => break true,
                    Some(Ok(event)) => {
                        if matches!(event, watcher::Event::InitDone) {
                            listed = true;
                        }
                        writer.apply_watcher_event(&event);
                    }
                    Some(Err(error)) if is_expired(&error) => {
                        tracing::info!(%kind, %error, "watch expired; listing again from the current state");
                        consistent = true;
                        break false;
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%kind, %error, "watch failed; retrying with backoff");
                    }
                }
                changed.notify_one();
            };
            if restart {
                consistent = !consistent;
            }
            changed.notify_one();
        }
    };
    (reader, Box::pin(task))
}

/// Waits until `store` has its first complete list, calling `still` every 10 s meanwhile.
async fn wait_logged<K>(store: &Store<K>, still: impl Fn())
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let mut ready = std::pin::pin!(store.wait_until_ready());
    loop {
        tokio::select! {
            _ = &mut ready => return,
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
        stop: &dyn Fn() -> CacheTask,
    ) -> StartedCache {
        let changed = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        let mut instances = Vec::new();
        let mut clusters = Vec::new();
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
            let (store, task) = reflect(instance_api, stop(), strip_instance, changed.clone());
            instances.push(store);
            tasks.push(task);
            let (store, task) = reflect(cluster_api, stop(), strip_cluster, changed.clone());
            clusters.push(store);
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
            let (store, task) = reflect(Api::all(client), stop(), strip_provider, changed.clone());
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
        let waiting = stores.clone();
        let mut ready_stop = stop();
        tasks.push(Box::pin(async move {
            let synced = async {
                let started = tokio::time::Instant::now();
                let waited = |kind: &'static str| {
                    tracing::warn!(kind, waited = ?started.elapsed(), "watch cache not synced yet");
                };
                for store in &waiting.instances {
                    wait_logged(store, || waited("Bind9Instance")).await;
                }
                for store in &waiting.clusters {
                    wait_logged(store, || waited("Bind9Cluster")).await;
                }
                if let Some(providers) = &waiting.providers {
                    wait_logged(providers, || waited("ClusterBind9Provider")).await;
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
