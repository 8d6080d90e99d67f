//! The worker's reconcile of one Secret: one action on the Secret (provision, rotate, annotate),
//! each a write with a `resourceVersion` precondition; then the Deployments and statuses of every
//! instance using it; then one report (metrics and Events) of what happened.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PostParams};
use kube::runtime::events::EventType;
use serde_json::json;

use super::context::{
    Context, Member, SecretRef, Subresource, fenced_patch, is_status, patch_instance_status,
    patch_params, publish, rotator_rolls,
};
use super::keys::generate;
use super::plan::{
    SecretUser, annotate_patch, governing, key_status, needs_roll, needs_roll_after_rotation,
    plan_secret, record_stale, render_provision, rollout_patch, rotation_patch, status_in_sync,
};
use super::{Error, FIELD_MANAGER};
use crate::api::{
    Bind9Instance, EVENT_RNDC_KEY_ROTATED, EVENT_RNDC_KEY_ROTATION_FAILED, RndcKeyRotationStatus,
};
use crate::metrics::ResultLabels;
use crate::policy::{Algorithm, RotateReason, RotationPlan, SecretAction, key_revision};

/// A rotation that was written.
struct Rotated {
    rotation: u32,
    algorithm: Algorithm,
    reason: RotateReason,
}

/// The Secret after its action: the object, the plan it was written on, and the rotation if
/// there was one.
struct Settled {
    secret: Secret,
    plan: RotationPlan,
    rotated: Option<Rotated>,
}

/// How a Secret action ended when it did not fail.
enum Attempt {
    /// Written: the object the apiserver returned.
    Wrote(Box<Secret>),
    /// Someone else changed or deleted it (409/404): read it again and decide again.
    Changed,
}

/// What one reconcile did, for [`report`].
enum Outcome {
    /// The Secret action failed; `rotated`: after a rotation was written (the next pass rolls
    /// and records it, so nothing is reported now).
    Failed { error: Error, rotated: bool },
    /// The Secret is right; `problems` lists Deployments or statuses that could not be updated.
    Done {
        rotated: Option<Rotated>,
        problems: Vec<String>,
    },
}

/// Works on one Secret: its action with resourceVersion preconditions, then the Deployments and
/// statuses of every instance using it, then Events and metrics.
pub(super) async fn reconcile(
    ctx: &Context,
    key: &SecretRef,
    members: &[Member],
) -> Result<(), Error> {
    let users: Vec<SecretUser> = members.iter().map(|m| m.user.clone()).collect();
    let outcome = match settle_secret(ctx, key, &users).await {
        Ok(None) => return Ok(()),
        Ok(Some(settled)) => {
            let problems = roll_and_record(ctx, key, members, &settled).await;
            Outcome::Done {
                rotated: settled.rotated,
                problems,
            }
        }
        Err((error, rotated)) => Outcome::Failed { error, rotated },
    };
    report(ctx, key, members, outcome).await
}

/// Plans and writes the Secret until its plan says nothing is left to do (at most six
/// attempts). `Ok(None)`: nothing to roll or record. `Err((error, rotated))`.
async fn settle_secret(
    ctx: &Context,
    key: &SecretRef,
    users: &[SecretUser],
) -> Result<Option<Settled>, (Error, bool)> {
    let (namespace, name) = key;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let what = || format!("Secret {namespace}/{name}");
    let mut secret: Option<Secret> = ctx
        .caches
        .labelled_secret(namespace, name)
        .map(Arc::unwrap_or_clone);
    if secret.is_none() && ctx.caches.secret_version(namespace, name).is_some() {
        // Not labelled (yet): read it whole to take it over.
        secret = ctx
            .call("get", what, secrets.get_opt(name))
            .await
            .map_err(|e| (e, false))?;
    }
    let mut rotated: Option<Rotated> = None;
    let failed = |e: Error, rotated: &Option<Rotated>| (e, rotated.is_some());
    for _ in 0..6 {
        let plan = plan_secret(
            users,
            secret.as_ref(),
            &ctx.policy,
            ctx.now(),
            ctx.args.provision,
        )
        .map_err(|reason| failed(Error::Refused(reason), &rotated))?;
        let attempt = match plan.action.clone() {
            SecretAction::Nothing => {
                return Ok(secret.map(|secret| Settled {
                    secret,
                    plan,
                    rotated,
                }));
            }
            SecretAction::Provision {
                algorithm,
                key_name,
                annotations,
                ..
            } => {
                let Some(governor) = governing(users) else {
                    return Ok(None);
                };
                let data = generate(ctx.keys.as_ref(), &key_name, algorithm)
                    .map_err(|e| failed(e, &rotated))?;
                let object =
                    render_provision(namespace, name, governor, data, &annotations, &ctx.policy);
                provision(ctx, key, &object, algorithm).await
            }
            SecretAction::Rotate {
                algorithm,
                key_name,
                rotation,
                annotations,
                reason,
                ..
            } => {
                let Some(current) = secret.as_ref() else {
                    return Ok(None);
                };
                let data = generate(ctx.keys.as_ref(), &key_name, algorithm)
                    .map_err(|e| failed(e, &rotated))?;
                tracing::info!(
                    secret = %format!("{namespace}/{name}"), rotation, %reason, %algorithm,
                    "Rotating RNDC Secret {namespace}/{name} (rotation #{rotation})"
                );
                // One write that leaves the Secret valid: the four key entries (a key of the
                // algorithm's length), the annotations and the label, with the version the
                // decision was made on as precondition (the cached copy is not the whole object).
                let attempt = patch_secret(
                    ctx,
                    key,
                    current,
                    rotation_patch(current, data, &annotations),
                )
                .await;
                if matches!(attempt, Ok(Attempt::Wrote(_))) {
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
                attempt
            }
            SecretAction::Annotate { set, remove, .. } => {
                let Some(current) = secret.as_ref() else {
                    return Ok(None);
                };
                patch_secret(ctx, key, current, annotate_patch(current, &set, &remove)).await
            }
        };
        match attempt.map_err(|e| failed(e, &rotated))? {
            Attempt::Wrote(written) => {
                ctx.note_written("Secret", written.as_ref());
                secret = Some(*written);
            }
            Attempt::Changed => {
                secret = ctx
                    .call("get", what, secrets.get_opt(name))
                    .await
                    .map_err(|e| failed(e, &rotated))?;
            }
        }
    }
    Err(failed(Error::Contended(what()), &rotated))
}

/// Creates the Secret; a 409 (it exists, but the label-selected cache does not show it) reads it
/// and decides again (it is taken over: label, annotations, repairs).
async fn provision(
    ctx: &Context,
    (namespace, name): &SecretRef,
    object: &Secret,
    algorithm: Algorithm,
) -> Result<Attempt, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let post = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let what = || format!("Secret {namespace}/{name}");
    match ctx
        .call("create", what, secrets.create(&post, object))
        .await
    {
        Ok(created) => {
            tracing::info!(secret = %format!("{namespace}/{name}"), %algorithm, "Provisioned RNDC Secret {namespace}/{name}");
            Ok(Attempt::Wrote(Box::new(created)))
        }
        Err(e) if is_status(&e, 409) => Ok(Attempt::Changed),
        Err(e) => Err(e),
    }
}

/// A merge patch of the Secret (which carries `current`'s resourceVersion as precondition).
async fn patch_secret(
    ctx: &Context,
    (namespace, name): &SecretRef,
    current: &Secret,
    patch: serde_json::Value,
) -> Result<Attempt, Error> {
    let what = || format!("Secret {namespace}/{name}");
    if current.metadata.resource_version.is_none() {
        return Err(Error::Refused(format!("{} has no resourceVersion", what())));
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let params = patch_params();
    match ctx
        .call(
            "patch",
            what,
            secrets.patch(name, &params, &Patch::Merge(&patch)),
        )
        .await
    {
        Ok(written) => Ok(Attempt::Wrote(Box::new(written))),
        Err(e) if is_status(&e, 409) || is_status(&e, 404) => Ok(Attempt::Changed),
        Err(e) => Err(e),
    }
}

/// Rolls each member's Deployment (where the rotator rolls it) and writes its status; returns
/// what could not be updated.
async fn roll_and_record(
    ctx: &Context,
    (namespace, _): &SecretRef,
    members: &[Member],
    settled: &Settled,
) -> Vec<String> {
    let Settled {
        secret,
        plan,
        rotated,
    } = settled;
    let mut problems = Vec::new();
    for m in members {
        // The revision the pods were rolled onto, for `status.rndcSecretVersion`
        // (docs/rotation.md, "Status").
        let mut rolled_onto = None;
        if rotator_rolls(ctx, m) {
            match roll(
                ctx,
                namespace,
                &m.user.instance,
                plan,
                secret,
                rotated.is_some(),
            )
            .await
            {
                Ok(()) => rolled_onto = key_revision(secret),
                Err(e) => problems.push(e.to_string()),
            }
        }
        if let Some(desired) = key_status(secret, &m.user.config)
            && let Err(e) = write_status(ctx, &m.instance, &desired, rolled_onto.as_deref()).await
        {
            problems.push(e.to_string());
        }
    }
    problems
}

/// The one place a reconcile reports: the rotation counter and the instances' Events.
async fn report(
    ctx: &Context,
    (namespace, name): &SecretRef,
    members: &[Member],
    outcome: Outcome,
) -> Result<(), Error> {
    let count = |result: &str| {
        ctx.metrics
            .rotations
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    };
    let publish_all = async |type_: EventType, reason: &str, note: String| {
        for m in members {
            publish(ctx, &m.instance, type_, reason, note.clone()).await;
        }
    };
    match outcome {
        Outcome::Failed { error, rotated } => {
            if !rotated && !matches!(error, Error::Contended(_)) {
                count("failure");
                publish_all(
                    EventType::Warning,
                    EVENT_RNDC_KEY_ROTATION_FAILED,
                    format!("RNDC key Secret {namespace}/{name}: {error}"),
                )
                .await;
            }
            Err(error)
        }
        Outcome::Done { rotated, problems } => {
            if let Some(done) = &rotated {
                count("success");
                publish_all(
                    EventType::Normal,
                    EVENT_RNDC_KEY_ROTATED,
                    format!(
                        "Rotated RNDC key Secret {namespace}/{name} (rotation #{}, {}, {})",
                        done.rotation, done.algorithm, done.reason
                    ),
                )
                .await;
            }
            if problems.is_empty() {
                return Ok(());
            }
            let message = problems.join("; ");
            publish_all(
                EventType::Warning,
                EVENT_RNDC_KEY_ROTATION_FAILED,
                format!("RNDC key Secret {namespace}/{name} is current but rollout or status failed: {message}"),
            )
            .await;
            Err(Error::Incomplete(message))
        }
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
    let cached = ctx
        .caches
        .deployment(namespace, &name)
        .map(Arc::unwrap_or_clone);
    let mut rolls = false;
    let written = fenced_patch(ctx, &api, &name, Subresource::Main, cached, |deployment| {
        rolls = if after_rotation {
            needs_roll_after_rotation(deployment, secret)
        } else {
            needs_roll(plan, deployment, secret)
        };
        (rolls || record_stale(deployment, secret))
            .then(|| rollout_patch(deployment, secret, rolls.then_some(marker.as_str())))
    })
    .await
    .inspect_err(|_| {
        if rolls {
            ctx.count_reload("failed");
        }
    })?;
    let Some(patched) = written else {
        return Ok(());
    };
    ctx.note_written("Deployment", &patched);
    if !rolls {
        tracing::debug!("Recorded the RNDC key revision of Deployment {namespace}/{name}");
    } else if after_rotation {
        ctx.count_reload("success");
        tracing::info!("Triggered Deployment {namespace}/{name} rollout after RNDC rotation");
    } else {
        ctx.count_reload("success");
        tracing::info!(marker = %marker, "Triggered Deployment {namespace}/{name} rollout onto the current RNDC key");
    }
    Ok(())
}

/// Upstream's `status.rndcKeyRotation` (and rndc-warden's copy) as written.
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
