//! The rotator's shared toolbox: [`Context`] (client, flags, policy, caches, clock, metrics and
//! the bookkeeping of its own writes), the one fenced patch, Events, and the pair that names a
//! Secret.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use super::caches::Caches;
use super::exec::PodExec;
use super::keys::{KeySource, QpsLimiter};
use super::plan::SecretUser;
use super::reload::ReloadStrategy;
use super::{Error, FIELD_MANAGER, Parts, RotationArgs};
use crate::api::Bind9Instance;
use crate::clock::Clock;
use crate::metrics::{ApiErrorLabels, Metrics, ReloadLabels};
use crate::policy::PolicyConfig;

/// How long a write we made may take to show up in the watch cache before we stop waiting.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

/// A Secret (or an instance) by namespace and name.
pub(super) type SecretRef = (String, String);

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
    pub(super) keys: Arc<dyn KeySource>,
    pub(super) exec: Arc<dyn PodExec>,
    pub(super) caches: Caches,
    limiter: QpsLimiter,
    recorder: Recorder,
    /// The wall clock.
    clock: Clock,
    /// Objects we wrote, by `kind/ns/name`, with the resourceVersion the write returned: until the
    /// cache shows that version the cached object is stale and must not be planned from.
    written: Mutex<HashMap<String, (String, tokio::time::Instant)>>,
    /// The resourceVersion of our last write of each Secret: a key in a version we did not
    /// write was changed by someone else (the scheduler's `FOREIGN_KEY_GRACE`).
    own_secret_versions: Mutex<HashMap<SecretRef, String>>,
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
        Parts { keys, exec, clock }: Parts,
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
            clock,
            written: Mutex::new(HashMap::new()),
            own_secret_versions: Mutex::new(HashMap::new()),
            own_status_pruned: AtomicBool::new(false),
        }
    }

    /// The time now.
    pub(super) fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// Counts a reload (`bind9_rndc_secret_reloads_total{status}`).
    pub(super) fn count_reload(&self, status: &str) {
        self.metrics
            .secret_reloads
            .get_or_create(&ReloadLabels {
                status: status.to_owned(),
            })
            .inc();
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

/// The reload strategy of an instance (its annotation, else the release-wide flag).
pub(super) fn strategy_of(ctx: &Context, instance: &Bind9Instance) -> ReloadStrategy {
    ReloadStrategy::for_instance(instance.annotations(), ctx.args.reload_strategy)
}

/// Whether the rotator itself rolls this instance's Deployment onto a new key: only for managed
/// Secrets (it made the change) and the `rollout` strategy. Changes to user Secrets, and every
/// reload under `signal`, go through the reloader (validation, debounce, SIGHUP).
pub(super) fn rotator_rolls(ctx: &Context, member: &Member) -> bool {
    member.user.config.is_managed() && strategy_of(ctx, &member.instance) == ReloadStrategy::Rollout
}

/// Merges a status body into an instance: `body(current)` says what to write, or `None` when the
/// status is already right ([`fenced_patch`] on the `status` subresource). `sends_own`: whether
/// the body may carry rndc-warden's own fields (so a reply without them teaches that the
/// schema prunes them).
pub(super) async fn patch_instance_status(
    ctx: &Context,
    instance: &Bind9Instance,
    sends_own: bool,
    body: impl FnMut(&Bind9Instance) -> Option<serde_json::Value>,
) -> Result<(), Error> {
    let namespace = instance.namespace().unwrap_or_default();
    let name = instance.name_any();
    let api: Api<Bind9Instance> = Api::namespaced(ctx.client.clone(), &namespace);
    let cached = ctx
        .caches
        .instance(&namespace, &name)
        .map(Arc::unwrap_or_clone);
    let mut body = body;
    let written = fenced_patch(ctx, &api, &name, Subresource::Status, cached, |current| {
        body(current).map(|status| json!({ "status": status }))
    })
    .await?;
    if let Some(written) = written {
        ctx.learn_status_schema(sends_own, &written);
        ctx.note_written("Bind9Instance", &written);
    }
    Ok(())
}

/// Patch parameters of every rotator write: rndc-warden's field manager.
pub(super) fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

/// What [`fenced_patch`] patches.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Subresource {
    /// The object itself.
    Main,
    /// Its `status`.
    Status,
}

/// The one fenced write of the rotator: a merge patch of `name` decided from the cached object
/// (`cached`; `None`: it does not exist, nothing to do). `decide(current)` returns the patch, or
/// `None` when nothing is to be written; the patch carries the `resourceVersion` it was decided
/// on. A 409 re-reads the object and decides again (three attempts in all), and a 404 means
/// nothing is left to do. Returns the written object (`None`: nothing written).
pub(super) async fn fenced_patch<K>(
    ctx: &Context,
    api: &Api<K>,
    name: &str,
    subresource: Subresource,
    cached: Option<K>,
    mut decide: impl FnMut(&K) -> Option<serde_json::Value>,
) -> Result<Option<K>, Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let namespace = api_namespace(&cached);
    let what = || {
        let suffix = if subresource == Subresource::Status {
            " status"
        } else {
            ""
        };
        format!("{} {namespace}/{name}{suffix}", K::kind(&()))
    };
    let params = patch_params();
    let mut current = cached;
    for _ in 0..3 {
        let Some(object) = current.as_ref() else {
            return Ok(None);
        };
        let Some(mut patch) = decide(object) else {
            return Ok(None);
        };
        patch["metadata"]["resourceVersion"] = json!(object.meta().resource_version);
        let patch = Patch::Merge(&patch);
        let request = match subresource {
            Subresource::Main => api.patch(name, &params, &patch).boxed(),
            Subresource::Status => api.patch_status(name, &params, &patch).boxed(),
        };
        match ctx.call("patch", what, request).await {
            Ok(written) => return Ok(Some(written)),
            Err(e) if is_status(&e, 409) => {
                current = ctx.call("get", what, api.get_opt(name)).await?;
            }
            Err(e) if is_status(&e, 404) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Err(Error::Contended(what()))
}

/// The namespace of a cached object, for messages.
fn api_namespace<K: Resource>(cached: &Option<K>) -> String {
    cached
        .as_ref()
        .and_then(|o| o.meta().namespace.clone())
        .unwrap_or_default()
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

/// Contexts for unit tests of decisions (no API call is made).
#[cfg(test)]
pub(super) mod testing {
    use std::collections::BTreeMap;

    use axum::http::{Request, Response};
    use chrono::{DateTime, TimeZone as _, Utc};
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::client::Body;

    use super::*;
    use crate::api::{
        ANNOTATION_CREATED_AT, ANNOTATION_ROTATE_AT, ANNOTATION_ROTATION_COUNT, Bind9InstanceSpec,
        LABEL_RNDC_KEY, LABEL_RNDC_KEY_VALUE, RndcKeyConfig,
    };
    use crate::cache::ClusterCache;
    use crate::policy::{Algorithm, PolicyConfig, format_time, key_secret_from_bytes};
    use crate::rotation::exec::KubeExec;
    use crate::rotation::keys::OsKeySource;

    /// 2026-03-01 12:00:00 UTC.
    pub fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .single()
            .expect("valid")
    }

    /// A client whose every request fails: decisions must not call the API.
    pub fn offline_client() -> Client {
        let service = tower::service_fn(|_request: Request<Body>| async {
            Err::<Response<Body>, _>(std::io::Error::other("no apiserver in unit tests"))
        });
        Client::new(service, "default")
    }

    /// Instance `dns/name` with `block`.
    pub fn instance(name: &str, block: RndcKeyConfig) -> Bind9Instance {
        let mut i = Bind9Instance::new(
            name,
            Bind9InstanceSpec {
                rndc_key: Some(block),
                ..Bind9InstanceSpec::default()
            },
        );
        i.metadata.namespace = Some("dns".into());
        i.metadata.uid = Some(format!("uid-{name}"));
        i.metadata.resource_version = Some("7".into());
        i
    }

    /// A rotating block: `autoRotate: true`, 720h, hmac-sha256.
    pub fn rotating() -> RndcKeyConfig {
        RndcKeyConfig {
            auto_rotate: Some(true),
            rotate_after: Some("720h".into()),
            algorithm: Some("hmac-sha256".into()),
            ..RndcKeyConfig::default()
        }
    }

    /// A key Secret `dns/name` (key bytes all `byte`), `labelled` as a managed key, created at
    /// `created` (annotation; due 720h later) with rotation `count`, resourceVersion `rv`.
    pub fn key_secret(
        name: &str,
        byte: u8,
        labelled: bool,
        created: Option<DateTime<Utc>>,
        count: u32,
        rv: &str,
    ) -> Secret {
        let data = key_secret_from_bytes("bindy-operator", Algorithm::HmacSha256, &[byte; 32])
            .expect("key")
            .into_data();
        let mut annotations = BTreeMap::new();
        if let Some(created) = created {
            annotations.insert(ANNOTATION_CREATED_AT.to_owned(), format_time(created));
            annotations.insert(ANNOTATION_ROTATION_COUNT.to_owned(), count.to_string());
            let due = created + chrono::TimeDelta::hours(720);
            annotations.insert(ANNOTATION_ROTATE_AT.to_owned(), format_time(due));
        }
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("dns".into()),
                resource_version: Some(rv.into()),
                labels: labelled.then(|| {
                    BTreeMap::from([(LABEL_RNDC_KEY.to_owned(), LABEL_RNDC_KEY_VALUE.to_owned())])
                }),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..Secret::default()
        }
    }

    /// A context over exactly these objects, with the clock at `now`.
    pub fn context(
        args: RotationArgs,
        instances: Vec<Bind9Instance>,
        secrets: Vec<Secret>,
        deployments: Vec<Deployment>,
        now: DateTime<Utc>,
    ) -> Context {
        let client = offline_client();
        let shared = ClusterCache::from_objects(instances, Vec::new(), Vec::new())
            .shared()
            .expect("connected");
        let caches = Caches::from_objects(shared, secrets, deployments);
        Context::new(
            client.clone(),
            args,
            PolicyConfig::default(),
            Metrics::new(),
            Parts {
                keys: Arc::new(OsKeySource),
                exec: Arc::new(KubeExec::new(client)),
                clock: crate::clock::fixed(now),
            },
            caches,
            "unit-test",
        )
    }
}
