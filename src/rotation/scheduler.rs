//! The scheduler: passes over every Secret on watch events, at the earliest due time and every
//! resync period; groups instances by the Secret they use, assesses each Secret from the caches
//! (key gauges, due rotations, pending rollouts and statuses) and queues those with work for
//! the workers, which re-assess and reconcile them ([`super::reconcile`]).

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::Error;
use super::caches::lookup;
use super::context::{Context, Member, SecretRef, rotator_rolls};
use super::plan::{
    SecretUser, governing, key_status, needs_roll, plan_secret, record_of, record_stale,
    seconds_until, status_in_sync,
};
use super::queue::{Taken, WorkQueue};
use super::reconcile::reconcile;
use super::reloader::Reloads;
use crate::api::Bind9Instance;
use crate::metrics::InstanceLabels;
use crate::policy::{ConfigSource, Role, RotationPlan, SecretAction, audit, effective_config};

/// Events arriving within this window are handled by one pass.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Groups instances by the Secret they use, with their effective configuration. Instances whose
/// configuration cannot be worked out (unknown cluster, invalid value) are skipped and logged.
pub(super) fn group(ctx: &Context) -> BTreeMap<SecretRef, Vec<Member>> {
    let mut groups: BTreeMap<SecretRef, Vec<Member>> = BTreeMap::new();
    for instance in ctx.caches.instances() {
        if let Some((key, member)) = member_of(ctx, instance) {
            groups.entry(key).or_default().push(member);
        }
    }
    groups
}

/// The Secret an instance uses and the instance as its user, from its effective configuration
/// (`None`, logged: the configuration cannot be worked out).
fn member_of(ctx: &Context, instance: Arc<Bind9Instance>) -> Option<(SecretRef, Member)> {
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
fn members_now(ctx: &Context, key: &SecretRef, users: &[Box<str>]) -> Vec<Member> {
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

fn assess(ctx: &Context, key: &SecretRef, members: &[Member], now: DateTime<Utc>) -> Assessment {
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
    let mut reloads = Reloads::new(ctx.args.reload_debounce);
    let resync = ctx.args.resync_period;
    loop {
        let now = ctx.now();
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
async fn work_on(ctx: &Context, key: &SecretRef, users: &[Box<str>]) -> Result<(), Error> {
    let members = members_now(ctx, key, users);
    if !assess(ctx, key, &members, ctx.now()).work {
        return Ok(());
    }
    reconcile(ctx, key, &members).await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeDelta;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::api::{ANNOTATION_ROTATED_AT, Bind9InstanceStatus};
    use crate::policy::format_time;
    use crate::rotation::RotationArgs;
    use crate::rotation::context::testing::{context, instance, key_secret, rotating, t0};

    const SECRET: &str = "a-rndc-key";

    /// Deployment `dns/a` whose pods were last rolled onto the key created at `marker`.
    fn deployment(marker: DateTime<Utc>) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.name = Some("a".into());
        d.metadata.namespace = Some("dns".into());
        d.metadata.resource_version = Some("3".into());
        d.spec.template.metadata = Some(ObjectMeta {
            annotations: Some(BTreeMap::from([(
                ANNOTATION_ROTATED_AT.to_owned(),
                format_time(marker),
            )])),
            ..ObjectMeta::default()
        });
        d
    }

    /// `instance` with the status the rotator writes for `secret` (no status write pending).
    fn in_sync(instance: Bind9Instance, secret: &Secret) -> Bind9Instance {
        let ctx = context(
            RotationArgs::default(),
            vec![instance.clone()],
            vec![secret.clone()],
            Vec::new(),
            t0(),
        );
        let groups = group(&ctx);
        let member = groups.values().flatten().next().expect("member");
        let desired = key_status(secret, &member.user.config).expect("status");
        let mut instance = instance;
        instance.status = Some(Bind9InstanceStatus {
            rndc_key_rotation_status: Some(desired.clone()),
            rndc_key_rotation: Some(desired),
            ..Bind9InstanceStatus::default()
        });
        instance
    }

    /// Assesses the one Secret of instance `a` at `now`.
    fn assess_at(ctx: &Context, now: DateTime<Utc>) -> Assessment {
        let groups = group(ctx);
        let (key, members) = groups.iter().next().expect("one Secret");
        assert_eq!(key, &("dns".to_owned(), SECRET.to_owned()));
        assess(ctx, key, members, now)
    }

    #[tokio::test]
    async fn a_key_past_its_rotate_after_is_work_now() {
        let created = t0() - TimeDelta::hours(800);
        let ctx = context(
            RotationArgs::default(),
            vec![instance("a", rotating())],
            vec![key_secret(SECRET, 1, true, Some(created), 0, "41")],
            vec![deployment(created)],
            t0(),
        );
        assert!(assess_at(&ctx, t0()).work);
    }

    #[tokio::test]
    async fn a_key_not_yet_due_wakes_the_scheduler_at_its_due_time() {
        let created = t0() - TimeDelta::hours(1);
        let secret = key_secret(SECRET, 1, true, Some(created), 0, "41");
        let ctx = context(
            RotationArgs::default(),
            vec![in_sync(instance("a", rotating()), &secret)],
            vec![secret],
            vec![deployment(created)],
            t0(),
        );
        let assessment = assess_at(&ctx, t0());
        assert!(!assessment.work);
        assert_eq!(assessment.next_wake, Some(created + TimeDelta::hours(720)));
    }

    #[tokio::test]
    async fn a_secret_whose_cache_does_not_show_our_write_yet_is_looked_at_in_a_second() {
        let created = t0() - TimeDelta::hours(800);
        let cached = key_secret(SECRET, 1, true, Some(created), 0, "41");
        let ctx = context(
            RotationArgs::default(),
            vec![instance("a", rotating())],
            vec![cached.clone()],
            vec![deployment(created)],
            t0(),
        );
        let mut ours = cached;
        ours.metadata.resource_version = Some("50".into());
        ctx.note_written("Secret", &ours);
        let assessment = assess_at(&ctx, t0());
        assert!(!assessment.work, "not planned from a stale copy");
        assert_eq!(assessment.next_wake, Some(t0() + TimeDelta::seconds(1)));
    }

    #[tokio::test]
    async fn a_key_the_operator_just_rotated_is_left_to_its_own_rollout_for_the_grace() {
        // Bindy rotated 2 s ago (count 1) and has not rolled yet: its marker comes within the
        // grace, and one rollout per key revision is what users get.
        let created = t0() - TimeDelta::seconds(2);
        let secret = key_secret(SECRET, 2, true, Some(created), 1, "41");
        let old = deployment(created - TimeDelta::hours(800));
        let at = |now| {
            let ctx = context(
                RotationArgs::default(),
                vec![in_sync(instance("a", rotating()), &secret)],
                vec![secret.clone()],
                vec![old.clone()],
                now,
            );
            assess_at(&ctx, now)
        };
        let within = at(t0());
        assert!(!within.work);
        assert_eq!(within.next_wake, Some(created + FOREIGN_KEY_GRACE));
        let after = at(created + FOREIGN_KEY_GRACE + TimeDelta::seconds(1));
        assert!(after.work, "rolled once the grace is over");
    }

    #[tokio::test]
    async fn instances_being_deleted_use_no_secret() {
        let mut leaving = instance("a", rotating());
        leaving.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let ctx = context(
            RotationArgs::default(),
            vec![leaving, instance("b", rotating())],
            Vec::new(),
            Vec::new(),
            t0(),
        );
        let groups = group(&ctx);
        let users: Vec<_> = groups
            .values()
            .flatten()
            .map(|m| m.user.instance.as_str())
            .collect();
        assert_eq!(users, ["b"]);
    }

    #[tokio::test]
    async fn the_reload_strategy_annotation_overrides_the_flag_and_decides_who_rolls() {
        let mut signalled = instance("a", rotating());
        signalled.metadata.annotations = Some(BTreeMap::from([(
            crate::rotation::reload::ANNOTATION_RELOAD_STRATEGY.to_owned(),
            "signal".to_owned(),
        )]));
        let ctx = context(
            RotationArgs::default(),
            vec![signalled, instance("b", rotating())],
            Vec::new(),
            Vec::new(),
            t0(),
        );
        let groups = group(&ctx);
        let rolls: BTreeMap<&str, bool> = groups
            .values()
            .flatten()
            .map(|m| (m.user.instance.as_str(), rotator_rolls(&ctx, m)))
            .collect();
        assert_eq!(rolls, BTreeMap::from([("a", false), ("b", true)]));
    }
}
