//! Admission of RNDC key Secrets: annotation stamping, external-rotation detection, tamper rules
//! and content checks (docs/policy.md, "Validation (denials)"; docs/rotation.md, "Schedule").

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use json_patch::Patch;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};

use super::effective::EffectiveKeyConfig;
use super::key_data::{DataKeys, Findings, KeyDataRules, check_key_values, secret_values};
use super::review::{Decision, Mutation, Validation, add, apply_patch, replace};
use super::schedule::{format_time, parse_time};
use super::settings::PolicyConfig;
use super::shown::{shown, shown_name};
use crate::api::{
    ANNOTATION_CREATED_AT, ANNOTATION_ROTATE_AT, ANNOTATION_ROTATION_COUNT, DATA_ALGORITHM,
    DATA_RNDC_KEY, LABEL_RNDC_KEY, LABEL_RNDC_KEY_VALUE,
};

/// How far in the future a `rndc-created-at` written by a user may lie (clock skew).
pub const MAX_CLOCK_SKEW: TimeDelta = TimeDelta::minutes(5);

/// A write to a key Secret, as the Secret webhook sees it. `Debug` shows names, never data.
#[derive(Clone, Copy)]
pub struct SecretChange<'a> {
    /// The submitted Secret.
    pub new: &'a Secret,
    /// The stored Secret (UPDATE only).
    pub old: Option<&'a Secret>,
    /// `userInfo.username` of the request.
    pub username: &'a str,
    /// Configuration of the instance that uses the Secret, when known.
    pub owner: Option<&'a EffectiveKeyConfig>,
    /// The current time.
    pub now: DateTime<Utc>,
}

impl std::fmt::Debug for SecretChange<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretChange")
            .field("name", &self.new.metadata.name)
            .field("namespace", &self.new.metadata.namespace)
            .field("update", &self.old.is_some())
            .field("username", &self.username)
            .field("owner", &self.owner)
            .field("now", &self.now)
            .finish()
    }
}

impl SecretChange<'_> {
    fn by_rotator(&self, cfg: &PolicyConfig) -> bool {
        self.username == cfg.rotator_username
    }

    fn data_keys(&self) -> DataKeys {
        self.owner.map(|o| o.data_keys.clone()).unwrap_or_default()
    }

    /// Whether this is someone else's rotation computed from an outdated copy: a new key with a
    /// new `rndc-created-at` whose `rndc-rotation-count` does not exceed the stored one. The
    /// Bindy operator rotates with an unconditional PUT (no resourceVersion) of rotation
    /// `read + 1`; when rndc-warden rotated in between, that PUT would replace a minutes-old key
    /// with a second one (two key changes, two rollouts). A rotation of the stored Secret
    /// counts past it; a user's key edit that leaves the annotations alone keeps created-at.
    pub fn is_stale_rotation(&self, cfg: &PolicyConfig) -> bool {
        let Some(old) = self.old else { return false };
        if self.by_rotator(cfg) || !self.key_changed() {
            return false;
        }
        let created = |s: &Secret| annotation(s, ANNOTATION_CREATED_AT).and_then(parse_time);
        let (Some(submitted), Some(stored)) = (created(self.new), created(old)) else {
            return false;
        };
        submitted != stored
            && matches!((count_of(self.new), count_of(old)), (Some(n), Some(o)) if n <= o)
    }

    /// Whether the key material differs between the stored and the submitted Secret.
    pub fn key_changed(&self) -> bool {
        let Some(old) = self.old else { return false };
        let keys = self.data_keys();
        let (old, new) = (secret_values(old), secret_values(self.new));
        [
            DATA_RNDC_KEY,
            keys.secret.as_str(),
            DATA_ALGORITHM,
            keys.algorithm.as_str(),
        ]
        .iter()
        .any(|k| old.get(*k).map(|v| &v.bytes) != new.get(*k).map(|v| &v.bytes))
    }
}

/// Whether a Secret carries the RNDC key label (the Secret webhook's object selector).
pub fn is_rndc_key_secret(secret: &Secret) -> bool {
    secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_RNDC_KEY))
        .is_some_and(|v| v == LABEL_RNDC_KEY_VALUE)
}

fn annotation<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret
        .metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// The digits of a decimal count without leading zeros (`"007"` → `"7"`), of any size.
fn decimal(text: &str) -> Option<&str> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = text.trim_start_matches('0');
    Some(if digits.is_empty() { "0" } else { digits })
}

/// Whether decimal `a` is below decimal `b` (both from [`decimal`]), at any size.
fn is_lower(a: &str, b: &str) -> bool {
    (a.len(), a) < (b.len(), b)
}

fn count_of(secret: &Secret) -> Option<u32> {
    annotation(secret, ANNOTATION_ROTATION_COUNT).and_then(|c| c.trim().parse().ok())
}

/// Stamping of a key Secret: `rndc-created-at` and `rndc-rotation-count` when absent,
/// `rndc-rotate-at` when the owner rotates, and an external rotation (created-at = now, count + 1)
/// when someone other than the rotator changes the key material.
pub fn mutate_secret(change: &SecretChange<'_>, cfg: &PolicyConfig) -> Mutation {
    let new = change.new;
    let old = change.old;
    let mut set: BTreeMap<&str, String> = BTreeMap::new();
    let mut warnings = Vec::new();
    // A stale rotation is left as submitted: validation denies it.
    if change.is_stale_rotation(cfg) {
        return Mutation::default();
    }
    let external_rotation = !change.by_rotator(cfg) && change.key_changed();

    let removed = |key: &str| old.is_some_and(|o| annotation(o, key).is_some());
    let created_at = if external_rotation {
        set.insert(ANNOTATION_CREATED_AT, format_time(change.now));
        warnings.push(format!(
            "the key of Secret {} changed outside rndc-warden; recorded as a rotation at {}",
            shown_name(new.metadata.name.as_deref().unwrap_or_default()),
            format_time(change.now)
        ));
        Some(change.now)
    } else {
        match annotation(new, ANNOTATION_CREATED_AT) {
            Some(value) => parse_time(value),
            // Removing it is denied by validation (unless the rotator does it).
            None if removed(ANNOTATION_CREATED_AT) && !change.by_rotator(cfg) => None,
            None => {
                set.insert(ANNOTATION_CREATED_AT, format_time(change.now));
                Some(change.now)
            }
        }
    };
    if external_rotation {
        let old_count = old.and_then(count_of).unwrap_or(0);
        let count = count_of(new).unwrap_or(0).max(old_count.saturating_add(1));
        set.insert(ANNOTATION_ROTATION_COUNT, count.to_string());
    } else if annotation(new, ANNOTATION_ROTATION_COUNT).is_none()
        && (!removed(ANNOTATION_ROTATION_COUNT) || change.by_rotator(cfg))
    {
        set.insert(ANNOTATION_ROTATION_COUNT, "0".to_owned());
    }
    if let (Some(owner), Some(created_at)) = (change.owner, created_at)
        && owner.rotates()
    {
        let due = created_at + owner.rotate_after.as_time_delta();
        let current = annotation(new, ANNOTATION_ROTATE_AT).and_then(parse_time);
        if current != Some(due) {
            set.insert(ANNOTATION_ROTATE_AT, format_time(due));
        }
    }

    let mut ops = Vec::new();
    if !set.is_empty() {
        if new.metadata.annotations.is_none() {
            let all: serde_json::Map<String, Value> = set
                .into_iter()
                .map(|(k, v)| (k.to_owned(), json!(v)))
                .collect();
            ops.push(add(&["metadata", "annotations"], Value::Object(all)));
        } else {
            for (key, value) in set {
                let tokens = ["metadata", "annotations", key];
                if annotation(new, key).is_some() {
                    ops.push(replace(&tokens, json!(value)));
                } else {
                    ops.push(add(&tokens, json!(value)));
                }
            }
        }
    }
    Mutation {
        patch: Patch(ops),
        warnings,
    }
}

/// Validation of a (stamped) key Secret: content, annotation format and tamper rules.
///
/// The rotator's own writes are never denied for a problem the stored Secret already had: its
/// remediation of a key below policy (a Secret the Bindy operator made with a 32-byte key for
/// hmac-sha512, say) moves the Secret toward policy, and denying it would lock the key below
/// policy for good. Anyone else's update that leaves the key data as stored (annotations such
/// as a back-dated `rndc-created-at`, labels, owners) is not denied for such a problem either:
/// denials apply to what a request changes, and the key became wrong by a configuration edit
/// (the cluster's algorithm), not by this write. Problems a write would add are still denied.
pub fn validate_secret(change: &SecretChange<'_>, cfg: &PolicyConfig) -> Validation {
    let validation = validate_secret_alone(change, cfg);
    let by_rotator = change.by_rotator(cfg);
    let Some(stored) = change
        .old
        .filter(|old| !validation.allowed() && (by_rotator || old.data == change.new.data))
    else {
        return validation;
    };
    let before = validate_secret_alone(
        &SecretChange {
            new: stored,
            old: None,
            ..*change
        },
        cfg,
    );
    let mut findings = Findings::default();
    for denial in validation.denials {
        if before.denials.contains(&denial) {
            findings.warn(if by_rotator {
                format!(
                    "allowed for rndc-warden's own write, which does not make it worse: {denial}"
                )
            } else {
                format!(
                    "allowed because this update leaves the key data as stored, but the key is \
                     below policy: {denial}"
                )
            });
        } else {
            findings.deny(denial);
        }
    }
    for warning in validation.warnings {
        findings.warn(warning);
    }
    findings.into()
}

fn validate_secret_alone(change: &SecretChange<'_>, cfg: &PolicyConfig) -> Validation {
    let new = change.new;
    let mut findings = Findings::default();
    let keys = change.data_keys();
    let expected = change
        .owner
        .filter(|o| o.is_managed())
        .map(|o| (o.algorithm, "the instance's rndcKey.algorithm"));
    let rules = KeyDataRules {
        keys: &keys,
        require_complete: true,
        prefix: "data",
        expected_algorithm: expected,
    };
    check_key_values(&secret_values(new), &rules, cfg, &mut findings);

    let path = |key: &str| format!("metadata.annotations[{key:?}]");
    for key in [ANNOTATION_CREATED_AT, ANNOTATION_ROTATE_AT] {
        if let Some(value) = annotation(new, key)
            && parse_time(value).is_none()
        {
            findings.deny(format!(
                "{}: {} is not an RFC 3339 time; use UTC such as \"2026-01-01T00:00:00Z\"",
                path(key),
                shown(value)
            ));
        }
    }
    if let Some(value) = annotation(new, ANNOTATION_ROTATION_COUNT)
        && count_of(new).is_none()
    {
        findings.deny(format!(
            "{}: {} is not a whole number; leave the rotation count to rndc-warden",
            path(ANNOTATION_ROTATION_COUNT),
            shown(value)
        ));
    }
    let by_rotator = change.by_rotator(cfg);
    if change.is_stale_rotation(cfg) {
        let who = super::shown::cut(change.username, 253);
        findings.deny(format!(
            "{}: this write replaces the key as rotation {} but the stored Secret is already at \
             rotation {} (rotated since it was read; requested by {who}); read the Secret again",
            path(ANNOTATION_ROTATION_COUNT),
            count_of(new).unwrap_or(0),
            change.old.and_then(count_of).unwrap_or(0)
        ));
    }
    if !by_rotator {
        if let Some(created) = annotation(new, ANNOTATION_CREATED_AT).and_then(parse_time)
            && created > change.now + MAX_CLOCK_SKEW
        {
            findings.deny(format!(
                "{}: {} lies in the future; to force a rotation set it to a past time instead",
                path(ANNOTATION_CREATED_AT),
                format_time(created)
            ));
        }
        if let Some(old) = change.old {
            // Set by the apiserver's authenticator, not by the object: shown as it is.
            let who = super::shown::cut(change.username, 253);
            if annotation(old, ANNOTATION_CREATED_AT).is_some()
                && annotation(new, ANNOTATION_CREATED_AT).is_none()
            {
                findings.deny(format!(
                    "{}: only rndc-warden may remove it (requested by {who}); keep it, or \
                     back-date it to force a rotation",
                    path(ANNOTATION_CREATED_AT)
                ));
            }
            let stored = annotation(old, ANNOTATION_ROTATION_COUNT);
            let submitted = annotation(new, ANNOTATION_ROTATION_COUNT);
            match (stored, submitted) {
                (Some(_), None) => findings.deny(format!(
                    "{}: only rndc-warden may remove it (requested by {who}); keep it",
                    path(ANNOTATION_ROTATION_COUNT)
                )),
                (Some(before), Some(after)) if before != after => {
                    match (decimal(before), decimal(after)) {
                        (Some(b), Some(a)) if is_lower(a, b) => findings.deny(format!(
                            "{}: lowering it from {} to {} is not allowed (requested by {who}); \
                             the rotation count only grows",
                            path(ANNOTATION_ROTATION_COUNT),
                            super::shown::cut(b, 24),
                            super::shown::cut(a, 24)
                        )),
                        (None, _) => findings.deny(format!(
                            "{}: the stored value is not a rotation count, so only rndc-warden may \
                             change it (requested by {who}); it writes a valid count at the next \
                             rotation (rndc-warden rotate)",
                            path(ANNOTATION_ROTATION_COUNT)
                        )),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    }
    findings.into()
}

/// Stamping then validation of a key Secret write, as the API server would run them.
pub fn review_secret(change: &SecretChange<'_>, cfg: &PolicyConfig) -> Decision {
    let mutation = mutate_secret(change, cfg);
    match apply_patch(change.new, &mutation.patch) {
        Ok(stamped) => {
            let validation = validate_secret(
                &SecretChange {
                    new: &stamped,
                    ..*change
                },
                cfg,
            );
            Decision::new(mutation, validation)
        }
        Err(error) => Decision {
            denials: vec![format!(
                "internal error: the stamping patch does not apply: {error}"
            )],
            patch: mutation.patch,
            ..Decision::default()
        },
    }
}

#[cfg(test)]
#[path = "stamp_tests.rs"]
mod tests;
