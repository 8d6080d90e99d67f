//! Pure glue between the policy core and the rotator: which instances share a Secret and whose
//! configuration governs it, and the Secret objects a [`RotationPlan`] turns into.
//!
//! Every decision (due time, rate limit, provisioning, repair, markers, status values) is the
//! policy's ([`plan_rotation_continuing`], [`rotation_status`]); nothing here talks to Kubernetes,
//! reads a clock or draws random bytes, so every pass re-derives the whole decision from the
//! cluster.

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::{DateTime, SubsecRound, Utc};
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
    EffectiveKeyConfig, KeySecretData, Management, PolicyConfig, RotationPlan, key_facts,
    plan_rotation_continuing,
};

/// `now` truncated to whole seconds: times are stored and compared at the precision they are
/// written (cert-manager's truncation bug, rotation-practices §2.2).
pub fn whole_seconds(now: DateTime<Utc>) -> DateTime<Utc> {
    now.trunc_subsecs(0)
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

/// Plans one Secret from the instances that use it, with the policy's [`plan_rotation_continuing`] on the
/// governing user's configuration. `Err` carries a reason why nothing may be done (never key
/// material): the governing configuration asks for an algorithm the policy denies, which would
/// otherwise be generated and then "repaired" on every pass.
pub fn plan_secret(
    users: &[SecretUser],
    secret: Option<&Secret>,
    cfg: &PolicyConfig,
    now: DateTime<Utc>,
) -> Result<RotationPlan, String> {
    let now = whole_seconds(now);
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
/// precondition, which is what SPEC §7 asks of an update.
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

/// Whether a Deployment must be patched onto the plan's key revision: the policy's
/// [`RotationPlan::needs_roll`], and also a Deployment without a marker that is older than the
/// key in the Secret (its pods cannot have started on that key: the Secret was deleted and
/// re-created, or a crash came between provisioning and the rollout). A Deployment created after
/// the key is left alone, so installing rndc-warden restarts nothing.
pub fn needs_roll(plan: &RotationPlan, deployment: &Deployment, secret: &Secret) -> bool {
    let marker = marker_of(deployment);
    if plan.needs_roll(marker) {
        return true;
    }
    if marker.is_some() || plan.marker.is_none() {
        return false;
    }
    let key_created = crate::policy::KeyAnnotations::of(secret).created_at;
    let deployment_created = deployment
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| DateTime::<Utc>::from_timestamp(t.0.as_second(), 0));
    matches!((key_created, deployment_created), (Some(k), Some(d)) if d < k)
}

/// Whether the status already shows `desired`. rndc-warden writes both its own
/// `rndcKeyRotationStatus` and upstream's `rndcKeyRotation`; the installed schema may prune the
/// former, so only the latter is required (status never drives scheduling either way).
pub fn status_in_sync(
    status: Option<&Bind9InstanceStatus>,
    desired: &RndcKeyRotationStatus,
) -> bool {
    let Some(status) = status else {
        return false;
    };
    let upstream_ok = status.rndc_key_rotation.as_ref() == Some(desired);
    let ours_ok = status
        .rndc_key_rotation_status
        .as_ref()
        .is_none_or(|s| s == desired);
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
        )
        .expect("plans");
        assert_eq!(plan.next_wake, Some(created + TimeDelta::days(30)));
    }

    #[test]
    fn a_reprovisioned_secret_continues_the_count_recorded_in_the_status() {
        let mut a = instance("a", Some(rotating("30d", "hmac-sha256")));
        let b = instance("b", Some(rotating("30d", "hmac-sha256")));
        let provisioned_count =
            |users: &[SecretUser]| match plan_secret(users, None, &PolicyConfig::default(), now())
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
        let err = plan_secret(&[user(&i)], None, &PolicyConfig::default(), now()).unwrap_err();
        assert!(err.contains("hmac-sha1"), "{err}");
    }

    #[test]
    fn plans_use_whole_seconds() {
        let i = instance("a", Some(rotating("1h", "hmac-sha256")));
        let created = now() - TimeDelta::hours(1) + TimeDelta::seconds(1);
        let secret = key_secret(created, 0);
        let almost = now() + TimeDelta::milliseconds(999);
        let plan = plan_secret(&[user(&i)], Some(&secret), &PolicyConfig::default(), almost)
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
    fn status_is_in_sync_when_upstream_field_matches_and_ours_is_equal_or_pruned() {
        let desired = RndcKeyRotationStatus {
            created_at: format_time(now()),
            rotate_at: None,
            last_rotated_at: Some(format_time(now())),
            rotation_count: Some(2),
        };
        let upstream_only = Bind9InstanceStatus {
            rndc_key_rotation: Some(desired.clone()),
            ..Default::default()
        };
        assert!(status_in_sync(Some(&upstream_only), &desired));
        let stale = Bind9InstanceStatus {
            rndc_key_rotation: Some(desired.clone()),
            rndc_key_rotation_status: Some(RndcKeyRotationStatus {
                rotation_count: Some(1),
                ..desired.clone()
            }),
            ..Default::default()
        };
        assert!(!status_in_sync(Some(&stale), &desired));
        assert!(!status_in_sync(None, &desired));
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
