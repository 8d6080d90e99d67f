//! What the rotator reads ([`Caches`]): admission's instance and cluster stores, and compact
//! stores of key Secrets, Secret versions and Deployments, each kept by the process's one watch
//! loop ([`crate::cache::watch_task`]).

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use tokio::sync::Notify;

use super::store::{CompactStore, DeploymentMarker, KeySecret, SecretVersion, secret_version};
use crate::api::{Bind9Cluster, Bind9Instance, LABEL_RNDC_KEY, LABEL_RNDC_KEY_VALUE};
use crate::cache::{CacheTask, SharedStores};

/// What the rotator reads, kept current by watches in the given namespaces (or all): instances
/// and clusters (reflector stores, shared with admission when it runs in the same process),
/// labelled key Secrets, the version of every Secret and Deployments (compact stores).
#[derive(Clone)]
pub struct Caches {
    instances: Vec<Store<Bind9Instance>>,
    pub(super) clusters: Vec<Store<Bind9Cluster>>,
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

/// The object `namespace/name` in any of `stores`.
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
    /// The rotator's view of the cluster: the instance and cluster stores admission keeps
    /// (`shared`, one copy of each in the process) and compact stores of key Secrets, of every
    /// Secret's version and of Deployments in `namespaces` (all when empty). Returns the tasks
    /// that keep the compact stores current until `stop` resolves; the caller runs them.
    pub fn start(
        client: &Client,
        namespaces: &[String],
        shared: SharedStores,
        stop: impl Fn() -> CacheTask,
    ) -> (Caches, Vec<CacheTask>) {
        let changed = shared.changed;
        let mut tasks = Vec::new();
        let mut watch = |task: CacheTask| tasks.push(task);
        let secret_config =
            watcher::Config::default().labels(&format!("{LABEL_RNDC_KEY}={LABEL_RNDC_KEY_VALUE}"));
        let mut secrets = Vec::new();
        for api in apis(client, namespaces) {
            let (store, task) = CompactStore::watch(
                api,
                secret_config.clone(),
                changed.clone(),
                KeySecret::new,
                stop(),
            );
            secrets.push(store);
            watch(task);
        }
        let mut secret_versions = Vec::new();
        for api in apis::<PartialObjectMeta<Secret>>(client, namespaces) {
            let (store, task) = CompactStore::watch(
                api,
                watcher::Config::default(),
                changed.clone(),
                secret_version,
                stop(),
            );
            secret_versions.push(store);
            watch(task);
        }
        let mut deployments = Vec::new();
        for api in apis(client, namespaces) {
            let (store, task) = CompactStore::watch(
                api,
                watcher::Config::default(),
                changed.clone(),
                DeploymentMarker::new,
                stop(),
            );
            deployments.push(store);
            watch(task);
        }
        let caches = Caches {
            instances: shared.instances,
            clusters: shared.clusters,
            secrets,
            secret_versions,
            deployments,
            changed,
        };
        (caches, tasks)
    }

    /// Caches holding exactly these objects, already synced (unit tests).
    #[cfg(test)]
    pub fn from_objects(
        shared: SharedStores,
        secrets: Vec<Secret>,
        deployments: Vec<Deployment>,
    ) -> Caches {
        let id = |ns: &Option<String>, name: &Option<String>| {
            (
                ns.clone().unwrap_or_default(),
                name.clone().unwrap_or_default(),
            )
        };
        let labelled = secrets.iter().filter(|s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_RNDC_KEY))
                .is_some_and(|v| v == LABEL_RNDC_KEY_VALUE)
        });
        Caches {
            instances: shared.instances,
            clusters: shared.clusters,
            secrets: vec![CompactStore::from_objects(labelled.map(|s| {
                let (ns, name) = id(&s.metadata.namespace, &s.metadata.name);
                (ns, name, KeySecret::new(s.clone()))
            }))],
            secret_versions: vec![CompactStore::from_objects(secrets.iter().map(|s| {
                let (ns, name) = id(&s.metadata.namespace, &s.metadata.name);
                let meta = PartialObjectMeta::<Secret> {
                    metadata: s.metadata.clone(),
                    ..Default::default()
                };
                (ns, name, secret_version(meta))
            }))],
            deployments: vec![CompactStore::from_objects(deployments.into_iter().map(
                |d| {
                    let (ns, name) = id(&d.metadata.namespace, &d.metadata.name);
                    (ns, name, DeploymentMarker::new(d))
                },
            ))],
            changed: shared.changed,
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

    pub(super) fn instances(&self) -> Vec<Arc<Bind9Instance>> {
        self.instances.iter().flat_map(|s| s.state()).collect()
    }
}
