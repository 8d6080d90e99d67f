//! Compact watch-fed stores for the rotator.
//!
//! kube's reflector keeps every watched object whole (`Arc<K>`: a `Secret` with three
//! `BTreeMap`s and its `ObjectMeta` is about 2.8 KB on the heap). The rotator reads only a few
//! fields of key Secrets, of every other Secret and of Deployments, so it watches them into
//! [`CompactStore`]s of small structs ([`KeySecret`], [`SecretVersion`], [`DeploymentMarker`])
//! and rebuilds a full object only while a pass looks at it. Nothing is ever written from a
//! compact copy: writes are patches of the fields they change, with the `resourceVersion` the
//! decision was made on as precondition.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec, Secret, SecretVolumeSource, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::Api;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};

use super::plan::{ANNOTATION_KEY_REVISION, ANNOTATION_RECORDED_COUNT};
use crate::api::ANNOTATION_ROTATED_AT;
use crate::cache::{CacheTask, watch_task};

/// Objects by namespace, then name (lookups borrow both, and each namespace is stored once).
type Objects<T> = HashMap<Box<str>, HashMap<Box<str>, T>>;

#[derive(Debug)]
struct State<T> {
    objects: Objects<T>,
    /// Objects of a list in progress (`Init` .. `InitDone`), swapped in when it completes.
    listing: Option<Objects<T>>,
}

/// A store of compact `T`s kept current by a watch of `K`.
#[derive(Debug)]
pub struct CompactStore<T> {
    state: Arc<RwLock<State<T>>>,
    ready: watch::Receiver<bool>,
}

impl<T> Clone for CompactStore<T> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            ready: self.ready.clone(),
        }
    }
}

fn insert<T>(objects: &mut Objects<T>, namespace: &str, name: &str, value: T) {
    let names = match objects.get_mut(namespace) {
        Some(names) => names,
        None => objects.entry(namespace.into()).or_default(),
    };
    names.insert(name.into(), value);
}

fn remove<T>(objects: &mut Objects<T>, namespace: &str, name: &str) {
    if let Some(names) = objects.get_mut(namespace) {
        names.remove(name);
        if names.is_empty() {
            objects.remove(namespace);
        }
    }
}

impl<T: Send + Sync + 'static> CompactStore<T> {
    /// A new store of `api`'s objects (with `config`), each converted with `compact`, and the
    /// task that keeps it current ([`crate::cache::watch_task`]; `changed` is notified after
    /// every event) until `stop`.
    pub fn watch<K>(
        api: Api<K>,
        config: watcher::Config,
        changed: Arc<Notify>,
        compact: fn(K) -> T,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> (Self, CacheTask)
    where
        K: Resource<DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        let (ready_tx, ready) = watch::channel(false);
        let store = Self {
            state: Arc::new(RwLock::new(State {
                objects: HashMap::new(),
                listing: None,
            })),
            ready,
        };
        let state = store.state.clone();
        let task = watch_task(api, config, stop, changed, move |event| {
            if apply(&state, event, compact) {
                ready_tx.send_replace(true);
            }
        });
        (store, task)
    }

    /// A store holding exactly `objects` (`(namespace, name, value)`), already synced.
    #[cfg(test)]
    pub fn from_objects(objects: impl IntoIterator<Item = (String, String, T)>) -> Self {
        let mut map = HashMap::new();
        for (namespace, name, value) in objects {
            insert(&mut map, &namespace, &name, value);
        }
        let (_, ready) = watch::channel(true);
        Self {
            state: Arc::new(RwLock::new(State {
                objects: map,
                listing: None,
            })),
            ready,
        }
    }

    /// Waits until the first full list has been stored.
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// `f` of the object `namespace/name`, if stored.
    pub fn get<R>(&self, namespace: &str, name: &str, f: impl FnOnce(&T) -> R) -> Option<R> {
        let state = self.state.read().ok()?;
        state.objects.get(namespace)?.get(name).map(f)
    }
}

/// Applies one watch event; returns whether a full list has just completed.
fn apply<K: Resource, T>(
    state: &RwLock<State<T>>,
    event: watcher::Event<K>,
    compact: fn(K) -> T,
) -> bool {
    let Ok(mut state) = state.write() else {
        return false;
    };
    let key = |object: &K| (object.namespace().unwrap_or_default(), object.name_any());
    match event {
        watcher::Event::Init => state.listing = Some(HashMap::new()),
        watcher::Event::InitApply(object) => {
            let (namespace, name) = key(&object);
            let value = compact(object);
            let state = &mut *state;
            let objects = state.listing.as_mut().unwrap_or(&mut state.objects);
            insert(objects, &namespace, &name, value);
        }
        watcher::Event::InitDone => {
            if let Some(listed) = state.listing.take() {
                state.objects = listed;
            }
            return true;
        }
        watcher::Event::Apply(object) => {
            let (namespace, name) = key(&object);
            let value = compact(object);
            insert(&mut state.objects, &namespace, &name, value);
        }
        watcher::Event::Delete(object) => {
            let (namespace, name) = key(&object);
            remove(&mut state.objects, &namespace, &name);
        }
    }
    false
}

fn boxed(s: Option<String>) -> Option<Box<str>> {
    s.map(String::into_boxed_str)
}

/// What the rotator keeps of a key Secret: identity, version, creation time, labels, the
/// `bindy.firestoned.io/` annotations, owner references, type and data. Dropped: managed
/// fields and every other annotation (kubectl's `last-applied-configuration` alone is a second
/// copy of the data).
#[derive(Debug, Clone, PartialEq)]
pub struct KeySecret {
    uid: Option<Box<str>>,
    resource_version: Option<Box<str>>,
    creation_timestamp: Option<Time>,
    labels: Pairs,
    annotations: Pairs,
    owner_references: Box<[OwnerReference]>,
    type_: Option<Box<str>>,
    data: Box<[(Box<str>, Bytes)]>,
}

/// A data value.
type Bytes = Box<[u8]>;

/// String pairs (labels, annotations) in their sorted order.
type Pairs = Box<[(Box<str>, Box<str>)]>;

/// Prefix of the annotations a [`KeySecret`] keeps.
const OWN_ANNOTATIONS: &str = "bindy.firestoned.io/";

impl KeySecret {
    /// The compact copy of `secret`.
    pub fn new(secret: Secret) -> Self {
        let meta = secret.metadata;
        let pairs = |map: Option<std::collections::BTreeMap<String, String>>,
                     keep: fn(&str) -> bool| {
            map.into_iter()
                .flatten()
                .filter(|(k, _)| keep(k))
                .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
                .collect()
        };
        Self {
            uid: boxed(meta.uid),
            resource_version: boxed(meta.resource_version),
            creation_timestamp: meta.creation_timestamp,
            labels: pairs(meta.labels, |_| true),
            annotations: pairs(meta.annotations, |k| k.starts_with(OWN_ANNOTATIONS)),
            owner_references: meta.owner_references.unwrap_or_default().into(),
            type_: boxed(secret.type_),
            data: secret
                .data
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.into_boxed_str(), v.0.into_boxed_slice()))
                .collect(),
        }
    }

    /// The Secret `namespace/name` as far as it is kept (enough for every decision; never for
    /// a whole-object write).
    pub fn to_secret(&self, namespace: &str, name: &str) -> Secret {
        let map = |pairs: &[(Box<str>, Box<str>)]| {
            (!pairs.is_empty()).then(|| {
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
        };
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                uid: self.uid.as_deref().map(str::to_owned),
                resource_version: self.resource_version.as_deref().map(str::to_owned),
                creation_timestamp: self.creation_timestamp.clone(),
                labels: map(&self.labels),
                annotations: map(&self.annotations),
                owner_references: (!self.owner_references.is_empty())
                    .then(|| self.owner_references.to_vec()),
                ..ObjectMeta::default()
            },
            type_: self.type_.as_deref().map(str::to_owned),
            data: Some(
                self.data
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }
}

/// The `resourceVersion` of any Secret (the rotator fetches an unlabelled `secretRef` Secret
/// when it changes).
pub type SecretVersion = Option<Box<str>>;

/// The [`SecretVersion`] of a Secret's metadata.
pub fn secret_version(meta: kube::core::PartialObjectMeta<Secret>) -> SecretVersion {
    boxed(meta.metadata.resource_version)
}

/// What the rotator reads of a Deployment: identity, version, creation time, the rollout
/// marker on its pod template, the Secret its pods mount as their RNDC key
/// ([`super::naming::mounted_rndc_secret`]) and rndc-warden's own record of the key revision
/// (and rotation count) its pods were last rolled or reloaded onto.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentMarker {
    uid: Option<Box<str>>,
    resource_version: Option<Box<str>>,
    creation_timestamp: Option<Time>,
    marker: Option<Box<str>>,
    mounted_secret: Option<Box<str>>,
    record: Pairs,
}

/// The Deployment annotations a [`DeploymentMarker`] keeps.
const RECORD_ANNOTATIONS: [&str; 2] = [ANNOTATION_KEY_REVISION, ANNOTATION_RECORDED_COUNT];

impl DeploymentMarker {
    /// The compact copy of `deployment`.
    pub fn new(deployment: Deployment) -> Self {
        let mounted_secret = super::naming::mounted_rndc_secret(&deployment).map(str::to_owned);
        let marker = deployment
            .spec
            .template
            .metadata
            .and_then(|m| m.annotations)
            .and_then(|mut a| a.remove(ANNOTATION_ROTATED_AT));
        let meta = deployment.metadata;
        let record = meta
            .annotations
            .into_iter()
            .flatten()
            .filter(|(k, _)| RECORD_ANNOTATIONS.contains(&k.as_str()))
            .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
            .collect();
        Self {
            uid: boxed(meta.uid),
            resource_version: boxed(meta.resource_version),
            creation_timestamp: meta.creation_timestamp,
            marker: boxed(marker),
            mounted_secret: boxed(mounted_secret),
            record,
        }
    }

    /// The Secret the pods mount as their RNDC key, if the Deployment has such a volume.
    pub fn mounted_secret(&self) -> Option<&str> {
        self.mounted_secret.as_deref()
    }

    /// The Deployment `namespace/name` with only these fields (for decisions, never written).
    pub fn to_deployment(&self, namespace: &str, name: &str) -> Deployment {
        let annotations = self.marker.as_deref().map(|m| {
            std::collections::BTreeMap::from([(ANNOTATION_ROTATED_AT.to_owned(), m.to_owned())])
        });
        let record = (!self.record.is_empty()).then(|| {
            self.record
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        });
        let pod_spec = self.mounted_secret.as_deref().map(|secret| PodSpec {
            volumes: Some(vec![Volume {
                name: super::naming::RNDC_KEY_VOLUME.to_owned(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.to_owned()),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            }]),
            ..PodSpec::default()
        });
        Deployment {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                uid: self.uid.as_deref().map(str::to_owned),
                resource_version: self.resource_version.as_deref().map(str::to_owned),
                creation_timestamp: self.creation_timestamp.clone(),
                annotations: record,
                ..ObjectMeta::default()
            },
            spec: DeploymentSpec {
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        annotations,
                        ..ObjectMeta::default()
                    }),
                    spec: pod_spec,
                },
                ..DeploymentSpec::default()
            },
            status: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn secret() -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("a-rndc".into()),
                namespace: Some("dns".into()),
                uid: Some("u1".into()),
                resource_version: Some("41".into()),
                labels: Some(BTreeMap::from([("team".to_owned(), "dns".to_owned())])),
                annotations: Some(BTreeMap::from([
                    (
                        "bindy.firestoned.io/rndc-created-at".to_owned(),
                        "2026-03-01T12:00:00Z".to_owned(),
                    ),
                    (
                        crate::cache::LAST_APPLIED_ANNOTATION.to_owned(),
                        "{\"data\":{}}".to_owned(),
                    ),
                ])),
                managed_fields: Some(vec![Default::default()]),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(
                "secret".to_owned(),
                ByteString(b"not a real key".to_vec()),
            )])),
            ..Secret::default()
        }
    }

    #[test]
    fn a_key_secret_keeps_what_decisions_read_and_drops_the_rest() {
        let original = secret();
        let round = KeySecret::new(original.clone()).to_secret("dns", "a-rndc");
        let mut expected = original;
        expected.metadata.managed_fields = None;
        if let Some(a) = expected.metadata.annotations.as_mut() {
            a.remove(crate::cache::LAST_APPLIED_ANNOTATION);
        }
        assert_eq!(round, expected);
    }

    #[test]
    fn a_deployment_keeps_its_marker() {
        let mut deployment = Deployment::default();
        deployment.metadata.resource_version = Some("7".into());
        deployment.spec = DeploymentSpec {
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    annotations: Some(BTreeMap::from([
                        (ANNOTATION_ROTATED_AT.to_owned(), "t1".to_owned()),
                        ("other".to_owned(), "x".to_owned()),
                    ])),
                    ..ObjectMeta::default()
                }),
                spec: None,
            },
            ..DeploymentSpec::default()
        };
        let round = DeploymentMarker::new(deployment).to_deployment("dns", "a");
        assert_eq!(round.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(crate::rotation::plan::marker_of(&round), Some("t1"));
    }

    #[test]
    fn a_list_replaces_the_store_when_it_completes() {
        let store: CompactStore<KeySecret> = CompactStore::from_objects([(
            "dns".to_owned(),
            "gone".to_owned(),
            KeySecret::new(secret()),
        )]);
        let mut listed = secret();
        listed.metadata.resource_version = Some("42".into());
        for event in [
            watcher::Event::Init,
            watcher::Event::InitApply(listed),
            watcher::Event::InitDone,
        ] {
            apply(&store.state, event, KeySecret::new);
        }
        assert_eq!(store.get("dns", "gone", |_| ()), None);
        assert_eq!(
            store.get("dns", "a-rndc", |s| s.resource_version.clone()),
            Some(Some("42".into()))
        );
        apply(
            &store.state,
            watcher::Event::Delete(secret()),
            KeySecret::new,
        );
        assert_eq!(store.get("dns", "a-rndc", |_| ()), None);
    }
}
