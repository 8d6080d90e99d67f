//! The reloader (docs/reload.md), the I/O part: on every scheduler pass, compare each instance's key
//! revision with the revision its pods were last reloaded onto ([`super::reload::decide`]),
//! debounce, and run reloads (rollout or SIGHUP), status, Events and metrics in bounded tasks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::Patch;
use kube::runtime::events::EventType;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::Error;
use super::context::{
    Context, Member, SecretRef, Subresource, fenced_patch, is_status, patch_instance_status,
    patch_params, publish, strategy_of,
};
use super::exec::{SignalOutcome, SignalRequest, signal_pods};
use super::plan::{key_fingerprint, marker_covers, marker_of, record_of, rollout_patch};
use super::reload::{
    Debouncer, DesiredCondition, Loaded, REASON_FAILED, REASON_INVALID, REASON_NOT_FOUND,
    REASON_RELOADED, ReloadAction, ReloadStrategy, Settled, decide, expected_key_digest,
};
use super::store::KeySecret;
use crate::api::{Bind9Instance, EVENT_RNDC_SECRET_RELOAD_FAILED, EVENT_RNDC_SECRET_RELOADED};
use crate::policy::key_revision;

/// An instance: namespace and name.
type InstanceKey = (String, String);

/// First retry delay after a failed reload; doubled up to the resync period.
const RETRY_BASE: Duration = Duration::from_secs(2);
/// How often a pod that still shows the old key file is checked again (an exec of `sha256sum`):
/// the management gap of `signal` is at most about this long (docs/reload.md).
const SIGNAL_RETRY: Duration = Duration::from_millis(500);

/// What the reloader knows only in this process.
#[derive(Default)]
struct ReloadMemory {
    /// The revision each instance's pods were reloaded onto (or adopted at first sight).
    loaded: HashMap<InstanceKey, String>,
    /// The failure last reported per instance, so it is reported once.
    reported: HashMap<InstanceKey, String>,
    /// Unlabelled (`secretRef`) Secrets, fetched when their resourceVersion changes.
    fetched: HashMap<SecretRef, Arc<Secret>>,
}

/// One unit of reload work for an instance.
enum Job {
    /// Record the revision the pods run (first sight of a user Secret): status only.
    Adopt { revision: String },
    /// The pods run the current revision but the condition says otherwise (e.g. a broken key
    /// was reverted): set the condition.
    Condition(DesiredCondition),
    /// Reload the pods onto `revision`.
    Reload {
        revision: String,
        previous: String,
        strategy: ReloadStrategy,
        secret: Arc<Secret>,
    },
    /// Report a Secret that must not be rolled out (invalid or missing).
    Report {
        fingerprint: String,
        condition: DesiredCondition,
    },
}

/// The reloader's state inside the scheduler.
pub struct Reloads {
    /// Shared with the reload tasks.
    memory: Arc<Mutex<ReloadMemory>>,
    debouncer: Debouncer<InstanceKey>,
    tasks: JoinSet<(InstanceKey, Result<(), Error>)>,
    in_flight: HashSet<InstanceKey>,
    backoff: HashMap<InstanceKey, (u32, Instant)>,
}

impl Reloads {
    /// A reloader that debounces changes over `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            memory: Arc::default(),
            debouncer: Debouncer::new(window),
            tasks: JoinSet::new(),
            in_flight: HashSet::new(),
            backoff: HashMap::new(),
        }
    }

    /// Whether reload tasks are running.
    pub fn busy(&self) -> bool {
        !self.tasks.is_empty()
    }

    /// Waits for the next reload task to finish.
    pub async fn join_next(
        &mut self,
    ) -> Option<Result<(InstanceKey, Result<(), Error>), tokio::task::JoinError>> {
        self.tasks.join_next().await
    }

    /// Collects finished tasks without waiting.
    pub fn reap(&mut self, ctx: &Context) {
        while let Some(joined) = self.tasks.try_join_next() {
            self.done(ctx, joined);
        }
    }

    /// Bookkeeping of a finished task: clear or extend its backoff.
    pub fn done(
        &mut self,
        ctx: &Context,
        joined: Result<(InstanceKey, Result<(), Error>), tokio::task::JoinError>,
    ) {
        let (key, result) = match joined {
            Ok(done) => done,
            Err(error) => {
                tracing::error!(%error, "a reload worker panicked");
                return;
            }
        };
        self.in_flight.remove(&key);
        match result {
            Ok(()) => {
                self.backoff.remove(&key);
            }
            Err(error) => {
                let attempts = self.backoff.get(&key).map_or(0, |b| b.0) + 1;
                let delay = RETRY_BASE
                    .saturating_mul(1u32 << attempts.min(16).saturating_sub(1))
                    .min(ctx.args.resync_period);
                self.backoff
                    .insert(key.clone(), (attempts, Instant::now() + delay));
                tracing::warn!(
                    instance = %format!("{}/{}", key.0, key.1),
                    %error,
                    retry_in = ?delay,
                    "RNDC Secret reload failed"
                );
            }
        }
    }

    /// One pass over every instance: decide, debounce and start the reload tasks. Returns when
    /// the scheduler should look again at the latest (a debounce window or backoff ending).
    pub async fn pass(
        &mut self,
        ctx: &Arc<Context>,
        groups: &BTreeMap<SecretRef, Vec<Member>>,
        semaphore: &Arc<Semaphore>,
    ) -> Option<Instant> {
        let now = ctx.now();
        let mut wake: Option<Instant> = None;
        let mut wake_at = |at: Instant| wake = Some(wake.map_or(at, |w: Instant| w.min(at)));
        let mut present: HashSet<InstanceKey> = HashSet::new();
        for ((namespace, secret_name), members) in groups {
            let Ok(secret) = current_secret(ctx, &self.memory, namespace, secret_name).await else {
                continue;
            };
            for member in members {
                let key: InstanceKey = (namespace.clone(), member.user.instance.clone());
                present.insert(key.clone());
                if self.in_flight.contains(&key) {
                    continue;
                }
                if let Some((_, until)) = self.backoff.get(&key)
                    && *until > Instant::now()
                {
                    wake_at(*until);
                    continue;
                }
                let Some(job) = self.plan_job(ctx, &key, member, secret.as_ref(), now) else {
                    continue;
                };
                let job = match job {
                    Planned::Now(job) => job,
                    Planned::Later(at) => {
                        wake_at(at);
                        continue;
                    }
                };
                self.in_flight.insert(key.clone());
                let ctx = ctx.clone();
                let semaphore = semaphore.clone();
                let member = member.clone();
                let memory = self.memory.clone();
                let secret_key = (namespace.clone(), secret_name.clone());
                self.tasks.spawn(async move {
                    let _permit = semaphore.acquire_owned().await;
                    let result = run_job(&ctx, &memory, &secret_key, &member, job).await;
                    (key, result)
                });
            }
        }
        self.debouncer.retain(|k| present.contains(k));
        self.backoff.retain(|k, _| present.contains(k));
        if let Ok(mut memory) = self.memory.lock() {
            memory.loaded.retain(|k, _| present.contains(k));
            memory.reported.retain(|k, _| present.contains(k));
            let used: HashSet<&SecretRef> = groups.keys().collect();
            memory.fetched.retain(|k, _| used.contains(k));
        }
        wake
    }

    fn plan_job(
        &mut self,
        ctx: &Context,
        key: &InstanceKey,
        member: &Member,
        secret: Option<&Arc<Secret>>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<Planned> {
        let (namespace, name) = key;
        let instance = &member.instance;
        if member.user.config.is_managed() && strategy_of(ctx, instance) == ReloadStrategy::Rollout
        {
            // The rotator rolls managed Secrets itself (one rule for both, see
            // `plan::pods_on_key`), so there is exactly one rollout per key revision.
            self.debouncer.clear(key);
            return None;
        }
        if !ctx.settled(
            "Bind9Instance",
            namespace,
            name,
            instance.metadata.resource_version.as_deref(),
        ) {
            return None;
        }
        let deployment_name = ctx.args.deployment_name(name);
        let deployment = ctx.caches.deployment(namespace, &deployment_name);
        if let Some(d) = &deployment
            && !ctx.settled(
                "Deployment",
                namespace,
                &deployment_name,
                d.metadata.resource_version.as_deref(),
            )
        {
            return None;
        }
        let status = instance.status.as_ref();
        let status_version = status.and_then(|s| s.rndc_secret_version.clone());
        let conditions = status.and_then(|s| s.conditions.as_deref());
        let (remembered, reported) = {
            let memory = self.memory.lock().ok()?;
            (
                memory.loaded.get(key).cloned(),
                memory.reported.get(key).cloned(),
            )
        };
        let loaded = Loaded {
            remembered: remembered.as_deref(),
            status: status_version.as_deref(),
            marker: deployment.as_deref().and_then(marker_of),
            record: deployment.as_deref().and_then(|d| record_of(d).0),
        };
        // The Deployment's marker or record is a durable record of what the pods run.
        let recorded_on_deployment = loaded.marker.is_some() || loaded.record.is_some();
        let config = &member.user.config;
        let action = decide(config, secret.map(|s| s.as_ref()), loaded, &ctx.policy, now);
        let secret_name = &config.secret_name;
        let settle = |this: &mut Self, revision: &str, job: Job| match this.debouncer.observe(
            key,
            revision,
            Instant::now(),
        ) {
            Settled::Ready => {
                this.debouncer.clear(key);
                Some(Planned::Now(job))
            }
            Settled::WaitUntil(at) => Some(Planned::Later(at)),
        };
        match action {
            ReloadAction::Current => {
                self.debouncer.clear(key);
                let revision = secret.and_then(|s| key_revision(s))?;
                if let Ok(mut memory) = self.memory.lock() {
                    memory.reported.remove(key);
                }
                let condition = conditions
                    .into_iter()
                    .flatten()
                    .find(|c| c.type_ == crate::api::CONDITION_RNDC_SECRET_RELOADED);
                if condition.is_some_and(|c| c.status != "True") {
                    return Some(Planned::Now(Job::Condition(DesiredCondition {
                        status: "True",
                        reason: REASON_RELOADED,
                        message: format!(
                            "The pods run the current key of Secret {namespace}/{secret_name} (revision {revision})"
                        ),
                    })));
                }
                if status_version.is_none()
                    && remembered.is_none()
                    && !recorded_on_deployment
                    && !config.is_managed()
                    && !ctx.own_status_pruned()
                {
                    return Some(Planned::Now(Job::Adopt { revision }));
                }
                None
            }
            ReloadAction::Adopt { revision } => {
                self.debouncer.clear(key);
                if config.is_managed() {
                    // The pod-template marker and the Secret's created-at are a durable record.
                    if let Ok(mut memory) = self.memory.lock() {
                        memory.loaded.insert(key.clone(), revision);
                    }
                    return None;
                }
                if ctx.own_status_pruned() {
                    // Nowhere durable to write it without a write per instance: remember it.
                    if let Ok(mut memory) = self.memory.lock() {
                        memory.loaded.insert(key.clone(), revision);
                    }
                    return None;
                }
                Some(Planned::Now(Job::Adopt { revision }))
            }
            ReloadAction::LeaveToRotator => {
                self.debouncer.clear(key);
                None
            }
            ReloadAction::Reload { revision, previous } => {
                let secret = secret?.clone();
                let strategy = strategy_of(ctx, instance);
                let pending = revision.clone();
                let job = Job::Reload {
                    revision,
                    previous,
                    strategy,
                    secret: secret.clone(),
                };
                if ctx.wrote_version(namespace, &secret) {
                    // The rotator's own write carries the whole key in one update: nothing to
                    // wait for (the debounce joins tools that write data keys one by one), and
                    // every second of waiting is a second in which the kubelet may already have
                    // projected a key named does not accept yet.
                    self.debouncer.clear(key);
                    return Some(Planned::Now(job));
                }
                settle(self, &pending, job)
            }
            ReloadAction::Invalid { revision, reason } => {
                let condition = DesiredCondition {
                    status: "False",
                    reason: REASON_INVALID,
                    message: format!(
                        "Secret {namespace}/{secret_name} is not rolled out (revision {revision}): {reason}"
                    ),
                };
                let fingerprint = format!("invalid {revision}");
                if reported.as_deref() == Some(fingerprint.as_str()) || condition.is_in(conditions)
                {
                    return None;
                }
                settle(
                    self,
                    &revision,
                    Job::Report {
                        fingerprint,
                        condition,
                    },
                )
            }
            ReloadAction::Missing => {
                let condition = DesiredCondition {
                    status: "False",
                    reason: REASON_NOT_FOUND,
                    message: format!(
                        "Secret {namespace}/{secret_name} does not exist; the pods keep the key they loaded"
                    ),
                };
                let fingerprint = "missing".to_owned();
                if reported.as_deref() == Some(fingerprint.as_str()) || condition.is_in(conditions)
                {
                    return None;
                }
                settle(
                    self,
                    "",
                    Job::Report {
                        fingerprint,
                        condition,
                    },
                )
            }
        }
    }
}

enum Planned {
    Now(Job),
    Later(Instant),
}

/// The Secret an instance uses: the labelled cache, else (a `secretRef` Secret without the label)
/// fetched once per resourceVersion. `Ok(None)`: it does not exist; `Err`: unknown this pass.
async fn current_secret(
    ctx: &Context,
    memory: &Mutex<ReloadMemory>,
    namespace: &str,
    name: &str,
) -> Result<Option<Arc<Secret>>, ()> {
    if let Some(secret) = ctx.caches.labelled_secret(namespace, name) {
        return Ok(Some(secret));
    }
    let Some(version) = ctx.caches.secret_version(namespace, name) else {
        return Ok(None);
    };
    let key: SecretRef = (namespace.to_owned(), name.to_owned());
    if let Ok(cache) = memory.lock()
        && let Some(cached) = cache.fetched.get(&key)
        && cached.metadata.resource_version.as_deref() == Some(version.as_str())
    {
        return Ok(Some(cached.clone()));
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    match ctx
        .call(
            "get",
            || format!("Secret {namespace}/{name}"),
            api.get_opt(name),
        )
        .await
    {
        Ok(Some(secret)) => {
            // Kept as small as the labelled cache keeps key Secrets.
            let secret = Arc::new(KeySecret::new(secret).to_secret(namespace, name));
            if let Ok(mut cache) = memory.lock() {
                cache.fetched.insert(key, secret.clone());
            }
            Ok(Some(secret))
        }
        Ok(None) => Ok(None),
        Err(error) => {
            tracing::warn!(%error, "reading a key Secret failed; will retry");
            Err(())
        }
    }
}

fn remember(memory: &Mutex<ReloadMemory>, key: &InstanceKey, revision: &str) {
    if let Ok(mut memory) = memory.lock() {
        memory.loaded.insert(key.clone(), revision.to_owned());
        memory.reported.remove(key);
    }
}

async fn run_job(
    ctx: &Context,
    memory: &Mutex<ReloadMemory>,
    secret_key: &SecretRef,
    member: &Member,
    job: Job,
) -> Result<(), Error> {
    let (namespace, secret_name) = secret_key;
    let instance = &member.instance;
    let name = member.user.instance.clone();
    let key: InstanceKey = (namespace.clone(), name.clone());
    match job {
        Job::Adopt { revision } => {
            write_status(ctx, instance, Some(&revision), None).await?;
            remember(memory, &key, &revision);
            tracing::debug!(instance = %format!("{namespace}/{name}"), %revision, "recorded the RNDC key revision the pods run");
            Ok(())
        }
        Job::Condition(condition) => write_status(ctx, instance, None, Some(&condition)).await,
        Job::Report {
            fingerprint,
            condition,
        } => {
            tracing::warn!(
                instance = %format!("{namespace}/{name}"),
                reason = condition.reason,
                "Not reloading RNDC Secret {namespace}/{secret_name}: {}",
                condition.message
            );
            ctx.count_reload("failed");
            publish(
                ctx,
                instance,
                EventType::Warning,
                EVENT_RNDC_SECRET_RELOAD_FAILED,
                condition.message.clone(),
            )
            .await;
            if let Ok(mut memory) = memory.lock() {
                memory.reported.insert(key.clone(), fingerprint);
            }
            write_status(ctx, instance, None, Some(&condition)).await
        }
        Job::Reload {
            revision,
            previous,
            strategy,
            secret,
        } => {
            tracing::info!(
                instance = %format!("{namespace}/{name}"), %strategy, %previous, %revision,
                "RNDC Secret {namespace}/{secret_name} changed; reloading instance {namespace}/{name}"
            );
            let how = match strategy {
                ReloadStrategy::Rollout => rollout(ctx, namespace, &name, &revision, &secret).await,
                ReloadStrategy::Signal => {
                    let how = signal(ctx, instance, namespace, &name, &revision, &secret).await;
                    if how.is_ok()
                        && let Err(error) = record(ctx, namespace, &name, &secret).await
                    {
                        tracing::warn!(%error, "recording the reloaded RNDC key revision failed");
                    }
                    how
                }
            };
            match how {
                Ok(how) => {
                    remember(memory, &key, &revision);
                    ctx.count_reload("success");
                    let message = format!(
                        "Reloaded RNDC key Secret {namespace}/{secret_name} (revision {revision}) by {how}"
                    );
                    tracing::info!(instance = %format!("{namespace}/{name}"), %revision, "{message}");
                    publish(
                        ctx,
                        instance,
                        EventType::Normal,
                        EVENT_RNDC_SECRET_RELOADED,
                        message.clone(),
                    )
                    .await;
                    let condition = DesiredCondition {
                        status: "True",
                        reason: REASON_RELOADED,
                        message,
                    };
                    write_status(ctx, instance, Some(&revision), Some(&condition)).await
                }
                Err(error) => {
                    ctx.count_reload("failed");
                    let message = format!(
                        "Reloading RNDC key Secret {namespace}/{secret_name} (revision {revision}) failed: {error}"
                    );
                    publish(
                        ctx,
                        instance,
                        EventType::Warning,
                        EVENT_RNDC_SECRET_RELOAD_FAILED,
                        message.clone(),
                    )
                    .await;
                    let condition = DesiredCondition {
                        status: "False",
                        reason: REASON_FAILED,
                        message,
                    };
                    if let Err(e) = write_status(ctx, instance, None, Some(&condition)).await {
                        tracing::warn!(error = %e, "writing the reload condition failed");
                    }
                    Err(error)
                }
            }
        }
    }
}

/// Sets the pod-template marker of the instance's Deployment to `revision` (a no-op when it is
/// already there). Returns how the reload was done, for the Event.
async fn rollout(
    ctx: &Context,
    namespace: &str,
    instance: &str,
    revision: &str,
    secret: &Secret,
) -> Result<String, Error> {
    let name = ctx.args.deployment_name(instance);
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(cached) = ctx
        .caches
        .deployment(namespace, &name)
        .map(Arc::unwrap_or_clone)
    else {
        return Ok(format!(
            "no rollout (Deployment {namespace}/{name} does not exist; pods that start read the current key)"
        ));
    };
    let written = fenced_patch(
        ctx,
        &api,
        &name,
        Subresource::Main,
        Some(cached),
        |deployment| {
            (!marker_of(deployment).is_some_and(|m| marker_covers(m, revision)))
                .then(|| rollout_patch(deployment, secret, Some(revision)))
        },
    )
    .await?;
    if let Some(patched) = written {
        ctx.note_written("Deployment", &patched);
        tracing::info!(
            marker = %revision,
            "Triggered Deployment {namespace}/{name} rollout after RNDC Secret change"
        );
    }
    Ok(format!("rollout of Deployment {namespace}/{name}"))
}

/// SIGHUP to named in every pod of the instance once it sees the new key file; falls back to a
/// rollout (and says so) when that cannot be done.
async fn signal(
    ctx: &Context,
    instance: &Bind9Instance,
    namespace: &str,
    name: &str,
    revision: &str,
    secret: &Secret,
) -> Result<String, Error> {
    let selector = ctx.args.pod_selector(name);
    let why = match expected_key_digest(secret) {
        None => "the Secret has no rndc.key to compare the mounted file with".to_owned(),
        Some(digest) => {
            let request = SignalRequest {
                namespace: namespace.to_owned(),
                selector: selector.clone(),
                container: ctx.args.reload_container.clone(),
                key_path: ctx.args.reload_key_path.clone(),
                digest,
                deadline: ctx.args.reload_signal_deadline,
                retry: SIGNAL_RETRY,
            };
            match signal_pods(ctx.exec.as_ref(), &request).await {
                SignalOutcome::Reloaded { pods, stale_checks } => {
                    return Ok(format!(
                        "SIGHUP to {} pod(s) matching {selector} ({stale_checks} early check(s) retried)",
                        pods.len()
                    ));
                }
                SignalOutcome::NoPods => format!("no running pod matches {selector}"),
                SignalOutcome::TimedOut { stale, reloaded } => format!(
                    "pod(s) {} did not see the new key file within {:?} ({} signalled)",
                    stale.join(", "),
                    ctx.args.reload_signal_deadline,
                    reloaded.len()
                ),
                SignalOutcome::Failed { pod, error } => {
                    tracing::warn!("Failed to send SIGHUP to {namespace}/{pod}: {error}");
                    if pod.is_empty() {
                        error
                    } else {
                        format!("pod {pod}: {error}")
                    }
                }
            }
        }
    };
    tracing::warn!(
        instance = %format!("{namespace}/{name}"),
        "signal reload of instance {namespace}/{name} not possible ({why}); falling back to a rollout"
    );
    publish(
        ctx,
        instance,
        EventType::Warning,
        EVENT_RNDC_SECRET_RELOAD_FAILED,
        format!(
            "SIGHUP reload onto revision {revision} not possible ({why}); falling back to a rollout"
        ),
    )
    .await;
    rollout(ctx, namespace, name, revision, secret)
        .await
        .map(|how| format!("{how} (fallback from signal: {why})"))
}

/// Records on the instance's Deployment (metadata only: no rollout) the key revision its pods
/// were reloaded onto, where no status field can prune or replace it.
async fn record(
    ctx: &Context,
    namespace: &str,
    instance: &str,
    secret: &Secret,
) -> Result<(), Error> {
    let name = ctx.args.deployment_name(instance);
    let Some(deployment) = ctx.caches.deployment(namespace, &name) else {
        return Ok(());
    };
    if record_of(&deployment).0.is_some()
        && record_of(&deployment).0 == key_fingerprint(secret).as_deref()
    {
        return Ok(());
    }
    let mut patch = rollout_patch(&deployment, secret, None);
    // A metadata-only merge; no precondition needed (it touches only rndc-warden's keys).
    if let Some(meta) = patch.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.remove("resourceVersion");
    }
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    let params = patch_params();
    match ctx
        .call(
            "patch",
            || format!("Deployment {namespace}/{name}"),
            api.patch(&name, &params, &Patch::Merge(&patch)),
        )
        .await
    {
        Ok(patched) => {
            ctx.note_written("Deployment", &patched);
            Ok(())
        }
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes `status.rndcSecretVersion` and/or the `RndcSecretReloaded` condition when they differ.
async fn write_status(
    ctx: &Context,
    instance: &Bind9Instance,
    version: Option<&str>,
    condition: Option<&DesiredCondition>,
) -> Result<(), Error> {
    let version = version.filter(|_| !ctx.own_status_pruned());
    if version.is_none() && condition.is_none() {
        return Ok(());
    }
    patch_instance_status(ctx, instance, version.is_some(), |current| {
        let status = current.status.as_ref();
        let conditions = status.and_then(|s| s.conditions.as_deref());
        let version_ok = version
            .is_none_or(|v| status.and_then(|s| s.rndc_secret_version.as_deref()) == Some(v));
        let condition_ok = condition.is_none_or(|c| c.is_in(conditions));
        if version_ok && condition_ok {
            return None;
        }
        let mut body = serde_json::Map::new();
        if let Some(v) = version {
            body.insert("rndcSecretVersion".into(), json!(v));
        }
        if let Some(c) = condition {
            let merged = c.merged_into(conditions, current.metadata.generation, ctx.now());
            body.insert("conditions".into(), json!(merged));
        }
        Some(serde_json::Value::Object(body))
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::api::{ANNOTATION_ROTATED_AT, RndcKeyConfig, RndcSecretRef};
    use crate::rotation::RotationArgs;
    use crate::rotation::context::testing::{context, instance, key_secret, rotating, t0};
    use crate::rotation::scheduler::group;

    const WINDOW: Duration = Duration::from_secs(10);

    fn user_block() -> RndcKeyConfig {
        RndcKeyConfig {
            secret_ref: Some(RndcSecretRef {
                name: "user-key".into(),
                algorithm: Some("hmac-sha256".into()),
                ..RndcSecretRef::default()
            }),
            ..RndcKeyConfig::default()
        }
    }

    /// Deployment `dns/a` with pod-template marker `marker`, if any.
    fn deployment(marker: Option<&str>) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.name = Some("a".into());
        d.metadata.namespace = Some("dns".into());
        d.metadata.resource_version = Some("3".into());
        d.spec.template.metadata = marker.map(|m| ObjectMeta {
            annotations: Some(BTreeMap::from([(
                ANNOTATION_ROTATED_AT.to_owned(),
                m.to_owned(),
            )])),
            ..ObjectMeta::default()
        });
        d
    }

    /// The reloader's plan for instance `a` using `secret`.
    fn plan(ctx: &Context, reloads: &mut Reloads, secret: &Secret) -> Option<Planned> {
        let groups = group(ctx);
        let member = groups.values().flatten().next().expect("instance a");
        let key: InstanceKey = ("dns".into(), "a".into());
        reloads.plan_job(
            ctx,
            &key,
            member,
            Some(&Arc::new(secret.clone())),
            ctx.now(),
        )
    }

    fn user_context(secret: &Secret, marker: Option<&str>) -> Context {
        context(
            RotationArgs::default(),
            vec![instance("a", user_block())],
            vec![secret.clone()],
            vec![deployment(marker)],
            t0(),
        )
    }

    #[tokio::test]
    async fn a_changed_user_key_is_reloaded_once_the_debounce_window_is_quiet() {
        let old = key_secret("user-key", 1, false, None, 0, "10");
        let new = key_secret("user-key", 2, false, None, 0, "11");
        let loaded = key_revision(&old).expect("revision");
        let ctx = user_context(&new, Some(&loaded));
        let mut debounced = Reloads::new(WINDOW);
        assert!(matches!(
            plan(&ctx, &mut debounced, &new),
            Some(Planned::Later(at)) if at > Instant::now() + WINDOW / 2
        ));
        let mut at_once = Reloads::new(Duration::ZERO);
        match plan(&ctx, &mut at_once, &new) {
            Some(Planned::Now(Job::Reload {
                revision,
                previous,
                strategy,
                ..
            })) => {
                assert_eq!(revision, key_revision(&new).expect("revision"));
                assert_eq!(previous, loaded);
                assert_eq!(strategy, ReloadStrategy::Rollout);
            }
            _ => panic!("expected a reload now"),
        }
    }

    #[tokio::test]
    async fn the_rotators_own_write_is_reloaded_without_waiting_for_the_window() {
        let old = key_secret("user-key", 1, false, None, 0, "10");
        let new = key_secret("user-key", 2, false, None, 0, "11");
        let ctx = user_context(&new, Some(&key_revision(&old).expect("revision")));
        ctx.note_written("Secret", &new);
        assert!(matches!(
            plan(&ctx, &mut Reloads::new(WINDOW), &new),
            Some(Planned::Now(Job::Reload { .. }))
        ));
    }

    #[tokio::test]
    async fn pods_on_the_current_key_need_no_write_when_the_deployment_records_it() {
        let current = key_secret("user-key", 1, false, None, 0, "10");
        let revision = key_revision(&current).expect("revision");
        // Recorded on the Deployment (its marker): nothing to write, whatever the status says
        // (the operator's writer may have replaced it).
        let ctx = user_context(&current, Some(&revision));
        assert!(plan(&ctx, &mut Reloads::new(WINDOW), &current).is_none());
        // Recorded nowhere (first sight, no rollout yet): the revision is adopted, no reload.
        let ctx = user_context(&current, None);
        assert!(matches!(
            plan(&ctx, &mut Reloads::new(WINDOW), &current),
            Some(Planned::Now(Job::Adopt { revision: adopted })) if adopted == revision
        ));
    }

    #[tokio::test]
    async fn an_invalid_user_key_is_reported_once_and_never_rolled_out() {
        let good = key_secret("user-key", 1, false, None, 0, "10");
        let mut bad = key_secret("user-key", 1, false, None, 0, "11");
        if let Some(data) = bad.data.as_mut() {
            data.insert("secret".into(), ByteString(b"%%% not base64 %%%".to_vec()));
        }
        let ctx = user_context(&bad, Some(&key_revision(&good).expect("revision")));
        let mut reloads = Reloads::new(Duration::ZERO);
        let fingerprint = match plan(&ctx, &mut reloads, &bad) {
            Some(Planned::Now(Job::Report {
                fingerprint,
                condition,
            })) => {
                assert_eq!(condition.status, "False");
                assert_eq!(condition.reason, REASON_INVALID);
                fingerprint
            }
            _ => panic!("expected a report"),
        };
        reloads
            .memory
            .lock()
            .expect("memory")
            .reported
            .insert(("dns".into(), "a".into()), fingerprint);
        assert!(plan(&ctx, &mut reloads, &bad).is_none(), "reported once");
    }

    #[tokio::test]
    async fn managed_keys_under_rollout_are_left_to_the_rotator() {
        let created = t0() - chrono::TimeDelta::hours(800);
        let secret = key_secret("a-rndc-key", 1, true, Some(created), 0, "10");
        let ctx = context(
            RotationArgs::default(),
            vec![instance("a", rotating())],
            vec![secret.clone()],
            vec![deployment(None)],
            t0(),
        );
        assert!(plan(&ctx, &mut Reloads::new(Duration::ZERO), &secret).is_none());
    }
}
