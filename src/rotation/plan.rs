//! Pure glue between the policy core and the rotator: which instances share a Secret and whose
//! configuration governs it, and the Secret objects a [`RotationPlan`] turns into.
//!
//! Every decision (due time, rate limit, provisioning, repair, markers, status values) is the
//! policy's ([`plan_rotation_continuing`], [`rotation_status`]); nothing here talks to Kubernetes,
//! reads a clock or draws random bytes, so every pass re-derives the whole decision from the
//! cluster.

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt;

use crate::api::{
    ANNOTATION_CREATED_AT, ANNOTATION_ROTATE_AT, ANNOTATION_ROTATED_AT, ANNOTATION_ROTATION_COUNT,
    API_VERSION, Bind9Instance, Bind9InstanceStatus, DATA_ALGORITHM, DATA_KEY_NAME, DATA_RNDC_KEY,
    DATA_SECRET, InlineSecret, LABEL_RNDC_KEY, LABEL_RNDC_KEY_VALUE, RndcKeyRotationStatus,
};
use crate::policy::{
    EffectiveKeyConfig, KeySecretData, Management, PolicyConfig, RotationPlan, SecretAction,
    key_facts, key_revision, parse_time, plan_rotation_continuing,
};

/// Deployment annotation (metadata, not the pod template: writing it rolls nothing) where
/// rndc-warden records the key revision ([`key_fingerprint`]) its pods were last rolled or
/// reloaded onto. It survives the Bindy operator's status writer and CRDs, and it tells a key
/// change from an edit of `rndc-created-at` alone.
pub const ANNOTATION_KEY_REVISION: &str = "rndc-warden/key-revision";
/// Deployment annotation next to [`ANNOTATION_KEY_REVISION`]: the rotation count of that key, so
/// a Secret re-created with count 0 continues the count.
pub const ANNOTATION_RECORDED_COUNT: &str = "rndc-warden/rotation-count";

/// A fingerprint of a Secret's key data: a truncated SHA-256 over the data entries rndc-warden
/// reads, so it changes exactly when the key material changes (never with annotations or
/// labels) and reveals nothing about the key. `None` without key data.
pub fn key_fingerprint(secret: &Secret) -> Option<String> {
    let data_only = Secret {
        data: secret.data.clone(),
        string_data: secret.string_data.clone(),
        ..Secret::default()
    };
    key_revision(&data_only)
}

/// Whether a rollout marker shows the pods were rolled onto key revision `revision` or later:
/// rndc-warden writes the key's `rndc-created-at`, the Bindy operator `Utc::now()` (sub-second,
/// `+00:00`) right after its own rotation, so a marker that is a time at or after the revision's
/// creation covers it. Times are compared as instants, never as strings; fingerprint revisions
/// must be equal. (The same rule as [`RotationPlan::needs_roll`].)
pub fn marker_covers(marker: &str, revision: &str) -> bool {
    match (parse_time(marker), parse_time(revision)) {
        (Some(marker), Some(created)) => marker >= created,
        _ => marker == revision,
    }
}

/// rndc-warden's own record on a Deployment: the key revision and count its pods were last
/// rolled or reloaded onto.
pub fn record_of(deployment: &Deployment) -> (Option<&str>, Option<u32>) {
    let annotations = deployment.metadata.annotations.as_ref();
    let get = |k: &str| annotations.and_then(|a| a.get(k)).map(String::as_str);
    (
        get(ANNOTATION_KEY_REVISION),
        get(ANNOTATION_RECORDED_COUNT).and_then(|c| c.trim().parse().ok()),
    )
}

/// Whether the pods of `deployment` run the key in `secret`:
/// - rndc-warden's record names this key's fingerprint; or
/// - the rollout marker covers the key's `rndc-created-at` ([`marker_covers`]: whoever rolled,
///   rolled at or after the key was created); or
/// - there is no marker and the Deployment was created in the second of the key's creation or
///   later (its pods mounted this key from the start; `creationTimestamp` has whole seconds, so
///   the same second counts as "after").
///
/// A Secret without `rndc-created-at` (a user Secret) is covered by a marker equal to its
/// fingerprint.
pub fn pods_on_key(deployment: &Deployment, secret: &Secret) -> bool {
    pods_on_key_given(deployment, secret, false)
}

/// [`pods_on_key`] for a Deployment known to have existed before the key was created
/// (`existed_before`: the rotator saw it before it replaced the key), so its creation time
/// cannot show that it mounted the key from the start.
pub fn pods_on_key_given(deployment: &Deployment, secret: &Secret, existed_before: bool) -> bool {
    let fingerprint = key_fingerprint(secret);
    let (recorded, _) = record_of(deployment);
    if recorded.is_some() && recorded == fingerprint.as_deref() {
        return true;
    }
    let marker = marker_of(deployment);
    let created = crate::policy::KeyAnnotations::of(secret).created_at;
    // A record naming another key contradicts a marker equal to this key's creation time (two
    // keys created at the same instant); a marker written after the key (the Bindy operator's
    // `now()`) still covers it.
    let contradicted = recorded.is_some() && recorded != fingerprint.as_deref();
    match (marker, created) {
        (Some(marker), Some(created)) => {
            parse_time(marker).is_some_and(|m| m > created || (m == created && !contradicted))
                || fingerprint.as_deref() == Some(marker)
        }
        (Some(marker), None) => fingerprint.as_deref() == Some(marker),
        (None, Some(created)) => {
            !existed_before
                && deployment
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .is_some_and(|t| t.0.as_second() >= created.timestamp())
        }
        (None, None) => true,
    }
}

/// Whether rndc-warden's record on a Deployment whose pods run the current key is stale (it
/// names an older key: the other operator rolled the pods since). Refreshing it (a metadata
/// write, no rollout) keeps a later edit of `rndc-created-at` alone from looking like a key
/// change. A Deployment without a record is left alone: the instant rule covers it.
pub fn record_stale(deployment: &Deployment, secret: &Secret) -> bool {
    let (recorded, _) = record_of(deployment);
    recorded.is_some_and(|r| Some(r) != key_fingerprint(secret).as_deref())
        && pods_on_key(deployment, secret)
}

/// The JSON merge patch of a Deployment that rolls its pods onto `secret`'s key (`marker` on
/// the pod template) and records the key revision and count in rndc-warden's own annotations;
/// with `marker: None` only the record is written (no rollout). Carries the Deployment's
/// resourceVersion as precondition.
pub fn rollout_patch(
    deployment: &Deployment,
    secret: &Secret,
    marker: Option<&str>,
) -> serde_json::Value {
    let count = crate::policy::KeyAnnotations::of(secret).rotation_count;
    let mut patch = serde_json::json!({
        "metadata": {
            "resourceVersion": deployment.metadata.resource_version,
            "annotations": {
                ANNOTATION_KEY_REVISION: key_fingerprint(secret),
                ANNOTATION_RECORDED_COUNT: count.to_string(),
            },
        },
    });
    if let Some(marker) = marker {
        patch["spec"] = serde_json::json!({
            "template": { "metadata": { "annotations": { ANNOTATION_ROTATED_AT: marker } } }
        });
    }
    patch
}

/// One instance that uses a Secret, with its effective configuration.
#[derive(Clone, Debug)]
pub struct SecretUser {
    /// Instance name.
    pub instance: String,
    /// Instance uid (for the ownerReference of a created Secret).
    pub uid: Option<String>,
    /// The instance's effective key configuration.
    pub config: EffectiveKeyConfig,
    /// The inline Secret spec, when the mode is inline.
    pub inline: Option<InlineSecret>,
    /// The rotation count the instance status last recorded (the larger of
    /// `rndcKeyRotationStatus` and upstream's `rndcKeyRotation`): a re-provisioned Secret
    /// continues from it. Never used for scheduling.
    pub known_count: Option<u32>,
}

impl SecretUser {
    /// Builds the user from an instance, its effective configuration and, for the inline mode,
    /// the winning inline block (`inline`, from the instance or its cluster role).
    pub fn new(
        instance: &Bind9Instance,
        config: EffectiveKeyConfig,
        inline: Option<InlineSecret>,
    ) -> Self {
        let inline = match config.management {
            Management::Inline => inline,
            _ => None,
        };
        let known_count = instance.status.as_ref().and_then(|s| {
            [&s.rndc_key_rotation_status, &s.rndc_key_rotation]
                .into_iter()
                .filter_map(|block| block.as_ref().and_then(|b| b.rotation_count))
                .max()
        });
        Self {
            instance: instance.name_any(),
            uid: instance.metadata.uid.clone(),
            config,
            inline,
            known_count,
        }
    }
}

/// The governing user of a Secret: the alphabetically first managing instance that rotates,
/// else the alphabetically first managing instance. A Secret shared by several instances follows
/// one configuration, so two instances with different intervals cannot rewrite its
/// `rndc-rotate-at` back and forth. `None` when no user manages the Secret.
pub fn governing(users: &[SecretUser]) -> Option<&SecretUser> {
    let mut managing: Vec<&SecretUser> = users.iter().filter(|u| u.config.is_managed()).collect();
    managing.sort_by(|a, b| a.instance.cmp(&b.instance));
    managing
        .iter()
        .find(|u| u.config.rotates())
        .or_else(|| managing.first())
        .copied()
}

/// Plans one Secret from the instances that use it, with the policy's
/// [`plan_rotation_continuing`] on the governing user's configuration. `Err` carries a reason why
/// nothing may be done (never key material): the governing configuration asks for an algorithm
/// the policy denies, which would otherwise be generated and then "repaired" on every pass.
///
/// `now` is used at full precision: a key created a fraction of a second ago (the Bindy operator
/// writes nanoseconds) is not in the future. With `provision` off (the default beside the Bindy
/// operator, which creates every managed Secret) a missing Secret is left to the operator. A
/// managed Secret that lacks the rndc-key label gets it (an annotation patch carries it), so the
/// Secret webhook guards the Secret from then on.
pub fn plan_secret(
    users: &[SecretUser],
    secret: Option<&Secret>,
    cfg: &PolicyConfig,
    now: DateTime<Utc>,
    provision: bool,
) -> Result<RotationPlan, String> {
    let mut plan = plan_secret_with(users, secret, cfg, now)?;
    if !provision
        && matches!(plan.action, SecretAction::Provision { .. })
        && let Some(governor) = governing(users)
    {
        // The same decision as for a missing Secret nobody here creates: nothing to do, no
        // marker, no wake-up (the watch reports the Secret when the operator creates it).
        let mut left_to_operator = governor.config.clone();
        left_to_operator.management = Management::UserManaged;
        plan = crate::policy::plan_rotation(&left_to_operator, None, now, cfg);
    }
    if let (SecretAction::Nothing, Some(secret)) = (&plan.action, secret)
        && governing(users).is_some()
        && lacks_label(secret)
    {
        plan.action = SecretAction::Annotate {
            secret_name: secret.metadata.name.clone().unwrap_or_default(),
            set: BTreeMap::new(),
            remove: Vec::new(),
        };
    }
    Ok(plan)
}

fn plan_secret_with(
    users: &[SecretUser],
    secret: Option<&Secret>,
    cfg: &PolicyConfig,
    now: DateTime<Utc>,
) -> Result<RotationPlan, String> {
    let Some(governor) = governing(users).or_else(|| users.first()) else {
        return Err("no instance uses the Secret".to_owned());
    };
    let algorithm = governor.config.algorithm;
    if governor.config.is_managed() && cfg.is_denied(algorithm) {
        return Err(format!(
            "instance {} asks for {algorithm}, which the policy denies; use {}",
            governor.instance,
            cfg.allowed_algorithms_hint()
        ));
    }
    let known_count = users.iter().filter_map(|u| u.known_count).max();
    Ok(plan_rotation_continuing(
        &governor.config,
        secret,
        now,
        cfg,
        known_count,
    ))
}

/// The Secret to create for a [`crate::policy::SecretAction::Provision`]: the policy's
/// annotations, the rndc-key label, an ownerReference to the governing instance and, in the
/// inline mode, the inline labels, annotations, type and data. Inline data that already holds a
/// valid key of the configured algorithm is kept as given; otherwise the generated `key` fills the
/// four key data entries.
pub fn render_provision(
    namespace: &str,
    name: &str,
    governor: &SecretUser,
    key: KeySecretData,
    annotations: &BTreeMap<String, String>,
    cfg: &PolicyConfig,
) -> Secret {
    let mut labels = BTreeMap::new();
    let mut extra_annotations = BTreeMap::new();
    let mut data = BTreeMap::new();
    let mut type_ = "Opaque".to_owned();
    if let Some(inline) = &governor.inline {
        labels.extend(inline.metadata.labels.clone().unwrap_or_default());
        extra_annotations.extend(inline.metadata.annotations.clone().unwrap_or_default());
        if let Some(t) = inline.type_.as_ref().filter(|t| !t.is_empty()) {
            type_ = t.clone();
        }
        for (k, v) in inline.data.iter().flatten() {
            if let Some(bytes) = crate::policy::KeyMaterial::from_base64(v) {
                data.insert(k.clone(), ByteString(bytes.as_bytes().to_vec()));
            }
        }
        for (k, v) in inline.string_data.iter().flatten() {
            data.insert(k.clone(), ByteString(v.clone().into_bytes()));
        }
    }
    let supplied_is_valid = !data.is_empty() && {
        let probe = Secret {
            data: Some(data.clone()),
            ..Secret::default()
        };
        let (facts, findings) = key_facts(&probe, cfg);
        findings.denials.is_empty()
            && facts.algorithm == Some(governor.config.algorithm)
            && facts.secret.is_some()
    };
    if !supplied_is_valid {
        for k in [DATA_ALGORITHM, DATA_KEY_NAME, DATA_RNDC_KEY, DATA_SECRET] {
            data.remove(k);
        }
        data.extend(key.into_data());
    }
    for k in [
        ANNOTATION_CREATED_AT,
        ANNOTATION_ROTATE_AT,
        ANNOTATION_ROTATION_COUNT,
    ] {
        extra_annotations.remove(k);
    }
    extra_annotations.extend(annotations.clone());
    labels.insert(LABEL_RNDC_KEY.to_owned(), LABEL_RNDC_KEY_VALUE.to_owned());
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            annotations: Some(extra_annotations),
            owner_references: owner_of(governor).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some(type_),
        data: Some(data),
        ..Secret::default()
    }
}

fn owner_of(user: &SecretUser) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: API_VERSION.to_owned(),
        kind: "Bind9Instance".to_owned(),
        name: user.instance.clone(),
        uid: user.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: None,
    })
}

/// The JSON merge patch that rotates the Secret as read: the four key data entries and the
/// policy's annotations change (a `rndc-rotate-at` the policy no longer sets is removed) and the
/// rndc-key label is ensured; every other label, annotation and data key is left as the server
/// has it. The patch carries `metadata.resourceVersion` of `current`, so the server applies it
/// only to that version (409 otherwise): one write, key and annotations together, with a
/// precondition, so an update never overwrites a write it has not seen.
pub fn rotation_patch(
    current: &Secret,
    key: KeySecretData,
    annotations: &BTreeMap<String, String>,
) -> serde_json::Value {
    let data = key.into_data();
    let mut data_patch = serde_json::Map::new();
    for k in [DATA_ALGORITHM, DATA_KEY_NAME, DATA_RNDC_KEY, DATA_SECRET] {
        if !data.contains_key(k) && current.data.as_ref().is_some_and(|d| d.contains_key(k)) {
            data_patch.insert(k.to_owned(), serde_json::Value::Null);
        }
    }
    for (k, v) in data {
        data_patch.insert(
            k,
            serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(v.0)),
        );
    }
    let remove: Vec<String> = (!annotations.contains_key(ANNOTATION_ROTATE_AT))
        .then(|| ANNOTATION_ROTATE_AT.to_owned())
        .into_iter()
        .collect();
    let mut patch = annotate_patch(current, annotations, &remove);
    patch["data"] = serde_json::Value::Object(data_patch);
    patch
}

/// The JSON merge patch that sets and removes annotations of the Secret as read and ensures the
/// rndc-key label, with `current`'s `resourceVersion` as precondition (see [`rotation_patch`]).
pub fn annotate_patch(
    current: &Secret,
    set: &BTreeMap<String, String>,
    remove: &[String],
) -> serde_json::Value {
    let mut annotations = serde_json::Map::new();
    for k in remove {
        if current.annotations().contains_key(k) {
            annotations.insert(k.clone(), serde_json::Value::Null);
        }
    }
    for (k, v) in set {
        annotations.insert(k.clone(), serde_json::Value::String(v.clone()));
    }
    serde_json::json!({
        "metadata": {
            "resourceVersion": current.metadata.resource_version,
            "labels": { LABEL_RNDC_KEY: LABEL_RNDC_KEY_VALUE },
            "annotations": annotations,
        }
    })
}

/// Applies an annotation change (and the rndc-key label) to the Secret as read, keeping the rest.
pub fn render_annotate(
    current: &Secret,
    set: &BTreeMap<String, String>,
    remove: &[String],
) -> Secret {
    let mut secret = current.clone();
    secret.metadata.managed_fields = None;
    let annotations = secret.annotations_mut();
    for k in remove {
        annotations.remove(k);
    }
    annotations.extend(set.clone());
    secret
        .labels_mut()
        .insert(LABEL_RNDC_KEY.to_owned(), LABEL_RNDC_KEY_VALUE.to_owned());
    secret
}

/// Whether a Secret lacks the rndc-key label (the rotator's Secret watch selects on it).
pub fn lacks_label(secret: &Secret) -> bool {
    secret.labels().get(LABEL_RNDC_KEY).map(String::as_str) != Some(LABEL_RNDC_KEY_VALUE)
}

/// The rollout marker on a Deployment's pod template.
pub fn marker_of(deployment: &Deployment) -> Option<&str> {
    deployment
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(ANNOTATION_ROTATED_AT))
        .map(String::as_str)
}

/// Whether a Deployment must be rolled onto the key in `secret` (the Secret as it is after the
/// plan's action): the plan has a key revision and the pods do not run it ([`pods_on_key`]).
/// One rollout per key revision, whichever operator rolls first: a marker the Bindy operator
/// wrote after its own rotation covers the key, an edit of `rndc-created-at` alone changes no
/// key revision, and a Deployment created after the key is left alone, so installing
/// rndc-warden restarts nothing.
pub fn needs_roll(plan: &RotationPlan, deployment: &Deployment, secret: &Secret) -> bool {
    plan.marker.is_some() && !pods_on_key(deployment, secret)
}

/// [`needs_roll`] right after the rotator replaced the key itself: every Deployment it saw
/// before the write is older than the new key, even one created in the same second.
pub fn needs_roll_after_rotation(deployment: &Deployment, secret: &Secret) -> bool {
    !pods_on_key_given(deployment, secret, true)
}

/// The status block rndc-warden shows for a Secret, in the Bindy operator's exact format
/// (`reference/upstream-bindy.md` §4.10: chrono's `to_rfc3339()`, i.e. `+00:00` and as many
/// sub-second digits as the time has) so both writers write the same value: `createdAt` from
/// `rndc-created-at`, `rotateAt` from `rndc-rotate-at` while the key rotates, `lastRotatedAt`
/// = `createdAt` once the count is above 0, `rotationCount` from the annotation. `None` when
/// the Secret has no (valid) `rndc-created-at`.
pub fn key_status(secret: &Secret, config: &EffectiveKeyConfig) -> Option<RndcKeyRotationStatus> {
    let annotations = crate::policy::KeyAnnotations::of(secret);
    let created = annotations.created_at?.to_rfc3339();
    Some(RndcKeyRotationStatus {
        created_at: created.clone(),
        rotate_at: annotations
            .rotate_at
            .filter(|_| config.rotates())
            .map(|t| t.to_rfc3339()),
        last_rotated_at: (annotations.rotation_count > 0).then_some(created),
        rotation_count: Some(annotations.rotation_count),
    })
}

/// Whether two status blocks say the same (times compared as instants, whatever their format).
pub fn same_status(a: &RndcKeyRotationStatus, b: &RndcKeyRotationStatus) -> bool {
    fn same(a: Option<&str>, b: Option<&str>) -> bool {
        match (a, b) {
            (Some(a), Some(b)) => match (parse_time(a), parse_time(b)) {
                (Some(x), Some(y)) => x == y,
                _ => a == b,
            },
            (a, b) => a == b,
        }
    }
    same(Some(&a.created_at), Some(&b.created_at))
        && same(a.rotate_at.as_deref(), b.rotate_at.as_deref())
        && same(a.last_rotated_at.as_deref(), b.last_rotated_at.as_deref())
        && a.rotation_count.unwrap_or(0) == b.rotation_count.unwrap_or(0)
}

/// Whether the status already shows `desired`: upstream's `rndcKeyRotation` (which the Bindy
/// operator writes too) says the same, and so does rndc-warden's own `rndcKeyRotationStatus`
/// unless the installed schema prunes it (`own_pruned`, the Bindy operator's CRDs).
pub fn status_in_sync(
    status: Option<&Bind9InstanceStatus>,
    desired: &RndcKeyRotationStatus,
    own_pruned: bool,
) -> bool {
    let Some(status) = status else {
        return false;
    };
    let upstream_ok = status
        .rndc_key_rotation
        .as_ref()
        .is_some_and(|s| same_status(s, desired));
    let ours_ok = own_pruned
        || status
            .rndc_key_rotation_status
            .as_ref()
            .is_some_and(|s| same_status(s, desired));
    upstream_ok && ours_ok
}

/// Seconds from `now` until `at` (negative when past).
pub fn seconds_until(at: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
    (at - now).num_milliseconds() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Bind9InstanceSpec, InlineSecretMetadata, RndcKeyConfig, RndcSecretRef};
    use crate::policy::{
        Algorithm, SecretAction, effective_config, format_time, key_secret_from_bytes,
    };
    use chrono::{TimeDelta, TimeZone};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .single()
            .expect("valid")
    }

    fn instance(name: &str, block: Option<RndcKeyConfig>) -> Bind9Instance {
        let mut i = Bind9Instance::new(
            name,
            Bind9InstanceSpec {
                rndc_key: block,
                ..Bind9InstanceSpec::default()
            },
        );
        i.metadata.namespace = Some("dns".into());
        i.metadata.uid = Some(format!("uid-{name}"));
        i
    }

    fn rotating(after: &str, algorithm: &str) -> RndcKeyConfig {
        RndcKeyConfig {
            auto_rotate: Some(true),
            rotate_after: Some(after.into()),
            algorithm: Some(algorithm.into()),
            ..RndcKeyConfig::default()
        }
    }

    fn user(i: &Bind9Instance) -> SecretUser {
        let cfg = PolicyConfig::default();
        let inline = i.spec.rndc_key.as_ref().and_then(|b| b.secret.clone());
        SecretUser::new(i, effective_config(i, None, &cfg).expect("config"), inline)
    }

    fn key(algorithm: Algorithm, byte: u8) -> KeySecretData {
        key_secret_from_bytes(
            "bindy-operator",
            algorithm,
            &vec![byte; algorithm.output_len()],
        )
        .expect("long enough")
    }

    fn key_secret(created: DateTime<Utc>, count: u32) -> Secret {
        let mut data = key(Algorithm::HmacSha256, 7).into_data();
        data.insert("extra".into(), ByteString(b"x".to_vec()));
        Secret {
            metadata: ObjectMeta {
                name: Some("a-rndc".into()),
                namespace: Some("dns".into()),
                resource_version: Some("41".into()),
                labels: Some(BTreeMap::from([("team".to_owned(), "dns".to_owned())])),
                annotations: Some(BTreeMap::from([
                    (ANNOTATION_CREATED_AT.to_owned(), format_time(created)),
                    (ANNOTATION_ROTATION_COUNT.to_owned(), count.to_string()),
                    ("note".to_owned(), "keep me".to_owned()),
                ])),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..Secret::default()
        }
    }

    #[test]
    fn a_shared_secret_is_governed_by_the_first_rotating_managing_instance() {
        let a = instance("a", None);
        let b = instance("b", Some(rotating("30d", "hmac-sha256")));
        let c = instance("c", Some(rotating("7d", "hmac-sha256")));
        let users = [user(&c), user(&a), user(&b)];
        assert_eq!(governing(&users).map(|u| u.instance.as_str()), Some("b"));
        let not_rotating = [user(&a)];
        assert_eq!(
            governing(&not_rotating).map(|u| u.instance.as_str()),
            Some("a")
        );
        let mut by_ref = rotating("1h", "hmac-sha256");
        by_ref.secret_ref = Some(RndcSecretRef {
            name: "mine".into(),
            ..Default::default()
        });
        let user_managed = [user(&instance("d", Some(by_ref)))];
        assert!(governing(&user_managed).is_none());
    }

    #[test]
    fn a_shared_secret_follows_one_interval_so_rotate_at_cannot_flap() {
        let b = instance("b", Some(rotating("30d", "hmac-sha256")));
        let c = instance("c", Some(rotating("7d", "hmac-sha256")));
        let created = now() - TimeDelta::days(8);
        let secret = key_secret(created, 0);
        let plan = plan_secret(
            &[user(&c), user(&b)],
            Some(&secret),
            &PolicyConfig::default(),
            now(),
            true,
        )
        .expect("plans");
        assert_eq!(plan.next_wake, Some(created + TimeDelta::days(30)));
    }

    #[test]
    fn a_reprovisioned_secret_continues_the_count_recorded_in_the_status() {
        let mut a = instance("a", Some(rotating("30d", "hmac-sha256")));
        let b = instance("b", Some(rotating("30d", "hmac-sha256")));
        let provisioned_count = |users: &[SecretUser]| match plan_secret(
            users,
            None,
            &PolicyConfig::default(),
            now(),
            true,
        )
        .expect("plans")
        .action
        {
            crate::policy::SecretAction::Provision { annotations, .. } => {
                annotations[ANNOTATION_ROTATION_COUNT].clone()
            }
            other => panic!("expected Provision, got {other:?}"),
        };
        assert_eq!(provisioned_count(&[user(&a)]), "0");
        let block = |count| RndcKeyRotationStatus {
            created_at: format_time(now()),
            rotation_count: Some(count),
            ..RndcKeyRotationStatus::default()
        };
        a.status = Some(Bind9InstanceStatus {
            rndc_key_rotation_status: Some(block(2)),
            rndc_key_rotation: Some(block(3)),
            ..Bind9InstanceStatus::default()
        });
        assert_eq!(user(&a).known_count, Some(3));
        assert_eq!(provisioned_count(&[user(&b), user(&a)]), "4");
    }

    #[test]
    fn a_denied_algorithm_is_blocked_rather_than_generated_and_repaired_forever() {
        let i = instance("a", Some(rotating("1h", "hmac-sha1")));
        let err =
            plan_secret(&[user(&i)], None, &PolicyConfig::default(), now(), true).unwrap_err();
        assert!(err.contains("hmac-sha1"), "{err}");
    }

    #[test]
    fn the_rate_limit_is_judged_at_full_precision() {
        let i = instance("a", Some(rotating("1h", "hmac-sha256")));
        let created = now() - TimeDelta::hours(1) + TimeDelta::seconds(1);
        let secret = key_secret(created, 0);
        let almost = now() + TimeDelta::milliseconds(999);
        let plan = plan_secret(
            &[user(&i)],
            Some(&secret),
            &PolicyConfig::default(),
            almost,
            true,
        )
        .expect("plans");
        assert!(
            !matches!(plan.action, SecretAction::Rotate { .. }),
            "{:?}",
            plan.action
        );
    }

    #[test]
    fn a_provisioned_secret_carries_label_owner_and_the_policy_annotations() {
        let i = instance("a", Some(rotating("720h", "hmac-sha512")));
        let annotations = BTreeMap::from([(ANNOTATION_CREATED_AT.to_owned(), format_time(now()))]);
        let s = render_provision(
            "dns",
            "a-rndc",
            &user(&i),
            key(Algorithm::HmacSha512, 1),
            &annotations,
            &PolicyConfig::default(),
        );
        assert_eq!(
            s.labels().get(LABEL_RNDC_KEY).map(String::as_str),
            Some("true")
        );
        assert_eq!(
            s.metadata
                .owner_references
                .as_ref()
                .and_then(|o| o.first())
                .map(|o| o.uid.as_str()),
            Some("uid-a")
        );
        assert_eq!(
            s.annotations().get(ANNOTATION_CREATED_AT),
            annotations.get(ANNOTATION_CREATED_AT)
        );
        let data = s.data.as_ref().expect("data");
        assert_eq!(data.len(), 4);
        assert_eq!(
            data.get(DATA_ALGORITHM).map(|b| b.0.as_slice()),
            Some(&b"hmac-sha512"[..])
        );
    }

    #[test]
    fn an_inline_secret_keeps_its_labels_and_a_valid_supplied_key() {
        let supplied = key(Algorithm::HmacSha256, 3);
        let string_data = supplied
            .data()
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8(v.0.clone()).expect("utf8")))
            .collect();
        let mut block = rotating("30d", "hmac-sha256");
        block.secret = Some(InlineSecret {
            metadata: InlineSecretMetadata {
                name: "custom-rndc".into(),
                labels: Some(BTreeMap::from([("app".into(), "dns".into())])),
                annotations: Some(BTreeMap::from([(
                    ANNOTATION_ROTATION_COUNT.into(),
                    "99".into(),
                )])),
                ..Default::default()
            },
            string_data: Some(string_data),
            ..Default::default()
        });
        let i = instance("a", Some(block));
        let u = user(&i);
        assert_eq!(u.config.secret_name, "custom-rndc");
        let s = render_provision(
            "dns",
            "custom-rndc",
            &u,
            key(Algorithm::HmacSha256, 9),
            &BTreeMap::new(),
            &PolicyConfig::default(),
        );
        assert_eq!(s.labels().get("app").map(String::as_str), Some("dns"));
        assert_eq!(
            s.annotations().get(ANNOTATION_ROTATION_COUNT),
            None,
            "reserved annotations dropped"
        );
        assert_eq!(
            s.data.as_ref().and_then(|d| d.get(DATA_SECRET)),
            supplied.data().get(DATA_SECRET)
        );
    }

    #[test]
    fn an_inline_secret_without_key_material_gets_a_generated_key() {
        let mut block = rotating("30d", "hmac-sha384");
        block.secret = Some(InlineSecret {
            metadata: InlineSecretMetadata {
                name: "custom-rndc".into(),
                ..Default::default()
            },
            ..Default::default()
        });
        let i = instance("a", Some(block));
        let generated = key(Algorithm::HmacSha384, 5);
        let s = render_provision(
            "dns",
            "custom-rndc",
            &user(&i),
            generated.clone(),
            &BTreeMap::new(),
            &PolicyConfig::default(),
        );
        assert_eq!(
            s.data.as_ref().and_then(|d| d.get(DATA_SECRET)),
            generated.data().get(DATA_SECRET)
        );
    }

    /// `current` with a merge patch applied, as the API server would (without the precondition).
    fn patched(current: &Secret, patch: &serde_json::Value) -> Secret {
        let mut value = serde_json::to_value(current).expect("serialises");
        json_patch::merge(&mut value, patch);
        serde_json::from_value(value).expect("still a Secret")
    }

    #[test]
    fn rotation_preserves_every_other_label_annotation_and_data_key() {
        let mut old = key_secret(now() - TimeDelta::days(91), 2);
        old.annotations_mut()
            .insert(ANNOTATION_ROTATE_AT.into(), "x".into());
        let annotations = BTreeMap::from([
            (ANNOTATION_CREATED_AT.to_owned(), format_time(now())),
            (ANNOTATION_ROTATION_COUNT.to_owned(), "3".to_owned()),
        ]);
        let patch = rotation_patch(&old, key(Algorithm::HmacSha384, 9), &annotations);
        assert_eq!(patch["metadata"]["resourceVersion"], "41", "precondition");
        let new = patched(&old, &patch);
        assert_eq!(new.labels().get("team").map(String::as_str), Some("dns"));
        assert_eq!(
            new.labels().get(LABEL_RNDC_KEY).map(String::as_str),
            Some("true")
        );
        assert_eq!(
            new.annotations().get("note").map(String::as_str),
            Some("keep me")
        );
        assert_eq!(
            new.annotations()
                .get(ANNOTATION_ROTATION_COUNT)
                .map(String::as_str),
            Some("3")
        );
        assert!(!new.annotations().contains_key(ANNOTATION_ROTATE_AT));
        let data = new.data.as_ref().expect("data");
        assert!(data.contains_key("extra"));
        assert_eq!(
            data.get(DATA_ALGORITHM).map(|b| b.0.as_slice()),
            Some(&b"hmac-sha384"[..])
        );
        assert_eq!(
            data.get(DATA_SECRET),
            key(Algorithm::HmacSha384, 9).data().get(DATA_SECRET)
        );
        assert_ne!(
            data.get(DATA_SECRET),
            old.data.as_ref().and_then(|d| d.get(DATA_SECRET))
        );
    }

    #[test]
    fn annotating_sets_and_removes_only_the_named_annotations() {
        let mut old = key_secret(now(), 0);
        old.annotations_mut()
            .insert(ANNOTATION_ROTATE_AT.into(), "x".into());
        old.labels_mut().remove(LABEL_RNDC_KEY);
        let set = BTreeMap::from([(ANNOTATION_ROTATION_COUNT.to_owned(), "0".to_owned())]);
        let remove = [ANNOTATION_ROTATE_AT.to_owned()];
        let patch = annotate_patch(&old, &set, &remove);
        assert_eq!(patch["metadata"]["resourceVersion"], "41", "precondition");
        assert!(patch.get("data").is_none(), "the data is not sent");
        for new in [patched(&old, &patch), render_annotate(&old, &set, &remove)] {
            assert!(!new.annotations().contains_key(ANNOTATION_ROTATE_AT));
            assert_eq!(
                new.annotations().get("note").map(String::as_str),
                Some("keep me")
            );
            assert_eq!(new.data, old.data);
            assert!(lacks_label(&old) && !lacks_label(&new));
        }
    }

    #[test]
    fn status_is_in_sync_when_both_fields_say_the_same_in_any_time_format() {
        let desired = RndcKeyRotationStatus {
            created_at: "2026-03-01T12:00:00+00:00".into(),
            rotate_at: None,
            last_rotated_at: Some("2026-03-01T12:00:00+00:00".into()),
            rotation_count: Some(2),
        };
        let in_z = RndcKeyRotationStatus {
            created_at: "2026-03-01T12:00:00Z".into(),
            last_rotated_at: Some("2026-03-01T12:00:00.000Z".into()),
            ..desired.clone()
        };
        let upstream_only = Bind9InstanceStatus {
            rndc_key_rotation: Some(in_z.clone()),
            ..Default::default()
        };
        assert!(status_in_sync(Some(&upstream_only), &desired, true));
        assert!(
            !status_in_sync(Some(&upstream_only), &desired, false),
            "our own field is written where the schema keeps it"
        );
        let stale = Bind9InstanceStatus {
            rndc_key_rotation: Some(desired.clone()),
            rndc_key_rotation_status: Some(RndcKeyRotationStatus {
                rotation_count: Some(1),
                ..desired.clone()
            }),
            ..Default::default()
        };
        assert!(!status_in_sync(Some(&stale), &desired, false));
        assert!(!status_in_sync(None, &desired, true));
    }

    /// A Secret exactly as the Bindy operator 0.6.0 writes it: no label, a 32-byte key whatever
    /// the algorithm, `+00:00` annotations with nanoseconds, `rndc-rotate-at` only with
    /// autoRotate.
    fn bindy_secret(
        algorithm: Algorithm,
        created: &str,
        count: u32,
        rotate_at: Option<&str>,
    ) -> Secret {
        let data = key_secret_from_bytes("bindy-operator", algorithm, &[9u8; 32])
            .map(KeySecretData::into_data)
            .unwrap_or_else(|_| {
                // 32 bytes are below sha384/512's output: build the data the way Bindy does.
                let b64 = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
                let alg = algorithm.name();
                BTreeMap::from([
                    ("algorithm".to_owned(), ByteString(alg.as_bytes().to_vec())),
                    ("key-name".to_owned(), ByteString(b"bindy-operator".to_vec())),
                    (
                        "rndc.key".to_owned(),
                        ByteString(
                            format!(
                                "key \"bindy-operator\" {{\n    algorithm {alg};\n    secret \"{b64}\";\n}};\n"
                            )
                            .into_bytes(),
                        ),
                    ),
                    ("secret".to_owned(), ByteString(b64.into_bytes())),
                ])
            });
        let mut annotations = BTreeMap::from([
            (ANNOTATION_CREATED_AT.to_owned(), created.to_owned()),
            (ANNOTATION_ROTATION_COUNT.to_owned(), count.to_string()),
        ]);
        if let Some(r) = rotate_at {
            annotations.insert(ANNOTATION_ROTATE_AT.to_owned(), r.to_owned());
        }
        Secret {
            metadata: ObjectMeta {
                name: Some("a-rndc-key".into()),
                namespace: Some("dns".into()),
                resource_version: Some("7".into()),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..Secret::default()
        }
    }

    fn deployment(created_second: i64, marker: Option<&str>) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.resource_version = Some("3".into());
        d.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(created_second).expect("time"),
        ));
        if let Some(m) = marker {
            d.spec.template.metadata = Some(ObjectMeta {
                annotations: Some(BTreeMap::from([(
                    ANNOTATION_ROTATED_AT.to_owned(),
                    m.to_owned(),
                )])),
                ..ObjectMeta::default()
            });
        }
        d
    }

    #[test]
    fn bindy_recreated_short_key_is_remediated_in_one_write_that_continues_the_count() {
        let mut i = instance("a", Some(rotating("720h", "hmac-sha512")));
        i.status = Some(Bind9InstanceStatus {
            rndc_key_rotation: Some(RndcKeyRotationStatus {
                created_at: "2026-02-01T00:00:00+00:00".into(),
                rotation_count: Some(3),
                ..RndcKeyRotationStatus::default()
            }),
            ..Bind9InstanceStatus::default()
        });
        let bindy = bindy_secret(
            Algorithm::HmacSha512,
            "2026-03-01T11:59:59.123456789+00:00",
            0,
            Some("2026-03-31T11:59:59.123456789+00:00"),
        );
        let plan = plan_secret(
            &[user(&i)],
            Some(&bindy),
            &PolicyConfig::default(),
            now(),
            false,
        )
        .expect("plans");
        let SecretAction::Rotate {
            reason,
            rotation,
            algorithm,
            annotations,
            ..
        } = &plan.action
        else {
            panic!("expected Rotate, got {:?}", plan.action);
        };
        assert_eq!(
            *reason,
            crate::policy::RotateReason::Repair,
            "within the hour"
        );
        assert_eq!((*rotation, *algorithm), (4, Algorithm::HmacSha512));
        // The one write: key, annotations and label together, with the precondition.
        let patch = rotation_patch(&bindy, key(Algorithm::HmacSha512, 4), annotations);
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
        let after = patched(&bindy, &patch);
        let (facts, findings) = key_facts(&after, &PolicyConfig::default());
        assert!(findings.denials.is_empty(), "{:?}", findings.denials);
        assert_eq!(facts.algorithm, Some(Algorithm::HmacSha512));
        assert!(!lacks_label(&after));
        assert_eq!(
            after
                .annotations()
                .get(ANNOTATION_ROTATION_COUNT)
                .map(String::as_str),
            Some("4")
        );
        assert!(after.annotations().contains_key(ANNOTATION_ROTATE_AT));
    }

    #[test]
    fn bindy_recreated_valid_key_is_labelled_and_continues_the_count() {
        let mut i = instance("a", Some(rotating("720h", "hmac-sha256")));
        i.status = Some(Bind9InstanceStatus {
            rndc_key_rotation: Some(RndcKeyRotationStatus {
                created_at: "2026-02-01T00:00:00+00:00".into(),
                rotation_count: Some(3),
                ..RndcKeyRotationStatus::default()
            }),
            ..Bind9InstanceStatus::default()
        });
        let bindy = bindy_secret(
            Algorithm::HmacSha256,
            "2026-03-01T11:59:59.5+00:00",
            0,
            Some("2026-03-31T11:59:59.5+00:00"),
        );
        let plan = plan_secret(
            &[user(&i)],
            Some(&bindy),
            &PolicyConfig::default(),
            now(),
            false,
        )
        .expect("plans");
        let SecretAction::Annotate { set, remove, .. } = &plan.action else {
            panic!("expected Annotate, got {:?}", plan.action);
        };
        assert_eq!(
            set.get(ANNOTATION_ROTATION_COUNT).map(String::as_str),
            Some("4")
        );
        assert!(
            !set.contains_key(ANNOTATION_CREATED_AT),
            "the key is not new to us"
        );
        let after = patched(&bindy, &annotate_patch(&bindy, set, remove));
        assert!(!lacks_label(&after));
        // Labelled and counted: nothing more to do.
        let mut labelled = after.clone();
        labelled.metadata.resource_version = Some("8".into());
        let again = plan_secret(
            &[user(&i)],
            Some(&labelled),
            &PolicyConfig::default(),
            now(),
            false,
        )
        .expect("plans");
        assert_eq!(again.action, SecretAction::Nothing);
    }

    #[test]
    fn a_sub_second_creation_time_is_not_the_future_and_is_rate_limited() {
        // Bindy created the key 0.4 s before "now" (now has 0.9 s; rounding it down made the
        // key look like the future, which rotated it at once).
        let i = instance("a", Some(rotating("720h", "hmac-sha256")));
        let labelled = |s: Secret| {
            let mut s = s;
            s.labels_mut()
                .insert(LABEL_RNDC_KEY.into(), LABEL_RNDC_KEY_VALUE.into());
            s
        };
        let bindy = labelled(bindy_secret(
            Algorithm::HmacSha256,
            "2026-03-01T12:00:00.5+00:00",
            0,
            Some("2026-03-31T12:00:00.5+00:00"),
        ));
        let at = now() + TimeDelta::milliseconds(900);
        let plan = plan_secret(
            &[user(&i)],
            Some(&bindy),
            &PolicyConfig::default(),
            at,
            false,
        )
        .expect("plans");
        assert_eq!(plan.action, SecretAction::Nothing, "{:?}", plan.action);
        // Even a key a little ahead of our clock (skew) is fresh, not of unknown age.
        let ahead = labelled(bindy_secret(
            Algorithm::HmacSha256,
            "2026-03-01T12:00:02.5+00:00",
            0,
            Some("2026-03-31T12:00:02.5+00:00"),
        ));
        let plan = plan_secret(
            &[user(&i)],
            Some(&ahead),
            &PolicyConfig::default(),
            at,
            false,
        )
        .expect("plans");
        assert!(
            !matches!(plan.action, SecretAction::Rotate { .. }),
            "{:?}",
            plan.action
        );
    }

    #[test]
    fn without_provision_a_missing_secret_is_left_to_the_operator() {
        let i = instance("a", Some(rotating("720h", "hmac-sha256")));
        let plan =
            plan_secret(&[user(&i)], None, &PolicyConfig::default(), now(), false).expect("plans");
        assert_eq!(
            (plan.action, plan.marker, plan.next_wake),
            (SecretAction::Nothing, None, None)
        );
        let plan =
            plan_secret(&[user(&i)], None, &PolicyConfig::default(), now(), true).expect("plans");
        assert!(matches!(plan.action, SecretAction::Provision { .. }));
    }

    #[test]
    fn bindy_marker_at_or_after_the_key_means_already_rolled() {
        let created = "2026-03-01T12:00:00.123456789+00:00";
        let s = bindy_secret(Algorithm::HmacSha256, created, 1, None);
        let old = now().timestamp() - 86_400;
        // Bindy's marker, written right after its rotation: sub-second, +00:00.
        assert!(pods_on_key(
            &deployment(old, Some("2026-03-01T12:00:00.200311+00:00")),
            &s
        ));
        // Our own marker is the created-at itself.
        assert!(pods_on_key(&deployment(old, Some(created)), &s));
        assert!(pods_on_key(
            &deployment(old, Some("2026-03-01T12:00:00.123456789Z")),
            &s
        ));
        // A marker from before the key: roll.
        assert!(!pods_on_key(
            &deployment(old, Some("2026-03-01T12:00:00.1+00:00")),
            &s
        ));
        assert!(!pods_on_key(
            &deployment(old, Some("2026-02-01T00:00:00Z")),
            &s
        ));
        // String comparison would get this wrong ("12:00:00Z" > "12:00:00.1..." as text).
        assert!(marker_covers("2026-03-01T12:00:01Z", created));
        assert!(!marker_covers("2026-03-01T12:00:00Z", created));
    }

    #[test]
    fn a_brand_new_deployment_in_the_second_of_its_key_is_not_rolled() {
        let s = bindy_secret(
            Algorithm::HmacSha256,
            "2026-03-01T12:00:00.7+00:00",
            0,
            None,
        );
        // creationTimestamp has whole seconds: 12:00:00 is "the same second", not "before".
        assert!(pods_on_key(&deployment(now().timestamp(), None), &s));
        assert!(pods_on_key(&deployment(now().timestamp() + 3, None), &s));
        assert!(!pods_on_key(&deployment(now().timestamp() - 1, None), &s));
        // ... unless the rotator replaced the key after it saw the Deployment.
        assert!(needs_roll_after_rotation(
            &deployment(now().timestamp(), None),
            &s
        ));
    }

    #[test]
    fn editing_created_at_alone_never_rolls_once_the_revision_is_recorded() {
        let s = bindy_secret(Algorithm::HmacSha256, "2026-03-01T12:00:00Z", 2, None);
        let mut d = deployment(now().timestamp() - 86_400, Some("2026-03-01T12:00:00Z"));
        let patch = rollout_patch(&d, &s, None);
        let mut value = serde_json::to_value(&d).expect("json");
        json_patch::merge(&mut value, &patch);
        d = serde_json::from_value(value).expect("deployment");
        assert_eq!(record_of(&d).1, Some(2));
        // Back-dating (the manual trigger) and moving created-at forward: the key is the same.
        for edited in ["2026-01-01T00:00:00Z", "2026-03-02T00:00:00Z"] {
            let mut e = s.clone();
            e.annotations_mut()
                .insert(ANNOTATION_CREATED_AT.into(), edited.into());
            assert!(pods_on_key(&d, &e), "{edited}");
            assert!(!record_stale(&d, &e));
        }
        // A new key created at the same instant as the recorded one: the record decides.
        let mut same_instant = s.clone();
        same_instant.data = Some(key(Algorithm::HmacSha256, 2).into_data());
        assert!(!pods_on_key(&d, &same_instant));
        // A new key (same created-at): roll.
        let mut new_key = s.clone();
        new_key.data = Some(key(Algorithm::HmacSha256, 1).into_data());
        new_key
            .annotations_mut()
            .insert(ANNOTATION_CREATED_AT.into(), "2026-03-02T00:00:00Z".into());
        assert!(!pods_on_key(&d, &new_key));
        // The other operator rolled onto a newer key: covered, and the stale record is refreshed.
        let mut bindy_rolled = d.clone();
        if let Some(m) = bindy_rolled.spec.template.metadata.as_mut() {
            m.annotations = Some(BTreeMap::from([(
                ANNOTATION_ROTATED_AT.to_owned(),
                "2026-03-02T00:00:00.01+00:00".to_owned(),
            )]));
        }
        assert!(pods_on_key(&bindy_rolled, &new_key));
        assert!(record_stale(&bindy_rolled, &new_key));
    }

    #[test]
    fn the_status_is_written_in_the_operators_format() {
        let i = instance("a", Some(rotating("720h", "hmac-sha256")));
        let s = bindy_secret(
            Algorithm::HmacSha256,
            "2026-03-01T12:00:00.123456789+00:00",
            2,
            Some("2026-03-31T12:00:00.123456789+00:00"),
        );
        let status = key_status(&s, &user(&i).config).expect("status");
        assert_eq!(status.created_at, "2026-03-01T12:00:00.123456789+00:00");
        assert_eq!(
            status.rotate_at.as_deref(),
            Some("2026-03-31T12:00:00.123456789+00:00")
        );
        assert_eq!(status.last_rotated_at, Some(status.created_at.clone()));
        let ours = key_status(&key_secret(now(), 0), &user(&i).config).expect("status");
        assert_eq!(ours.created_at, "2026-03-01T12:00:00+00:00");
        assert_eq!(ours.last_rotated_at, None);
    }

    #[test]
    fn the_marker_is_read_from_the_pod_template() {
        let mut d = Deployment::default();
        assert_eq!(marker_of(&d), None);
        d.spec.template.metadata = Some(ObjectMeta {
            annotations: Some(BTreeMap::from([(
                ANNOTATION_ROTATED_AT.to_owned(),
                "t".to_owned(),
            )])),
            ..ObjectMeta::default()
        });
        assert_eq!(marker_of(&d), Some("t"));
    }
}
