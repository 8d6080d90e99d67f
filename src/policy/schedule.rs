//! The rotation schedule (docs/rotation.md, "Schedule"): what the rotator should do with an instance's Secret now, when
//! to look again, and the audit verdict.
//!
//! Scheduling depends only on the Secret's `rndc-created-at` and the current effective
//! `rotateAfter`, never on status or on `rndc-rotate-at` (which is rewritten to match), so a status
//! field pruned by an installed schema cannot cause a rotation loop.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use k8s_openapi::api::core::v1::Secret;
use sha2::{Digest, Sha256};

use super::algorithm::{Algorithm, Strength};
use super::effective::EffectiveKeyConfig;
use super::key_data::{key_facts, secret_values};
use super::settings::PolicyConfig;
use super::stamp::MAX_CLOCK_SKEW;
use crate::api::{
    ANNOTATION_CREATED_AT, ANNOTATION_ROTATE_AT, ANNOTATION_ROTATION_COUNT, DEFAULT_KEY_NAME,
    LABEL_RNDC_KEY, LABEL_RNDC_KEY_VALUE, RndcKeyRotationStatus,
};

/// No rotation within this long of the key's creation.
pub const RATE_LIMIT: TimeDelta = TimeDelta::hours(1);
/// `audit` calls a key overdue once it is this late.
pub const OVERDUE_GRACE: TimeDelta = TimeDelta::hours(1);

/// When the [`RATE_LIMIT`] on rotating a key created at `created_at` ends, while it holds at
/// `now`. A creation time ahead of `now` by no more than [`MAX_CLOCK_SKEW`] is a fresh key
/// (limited); one further ahead is not a real creation time (unknown age, never limited).
pub fn rate_limit_end(created_at: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let end = created_at + RATE_LIMIT;
    (created_at <= now + MAX_CLOCK_SKEW && now < end).then_some(end)
}

/// The `rndc-created-at` that makes a key rotated every `interval` due at `now`: the documented
/// manual trigger, written by `rotate` (one second earlier, so the key is due however `now` is
/// rounded).
pub fn back_dated_created_at(now: DateTime<Utc>, interval: TimeDelta) -> DateTime<Utc> {
    now - interval - TimeDelta::seconds(1)
}

/// Formats a time as rndc-warden writes it: RFC 3339, UTC, `Z`, with the sub-second digits the
/// time has (none for a whole second, else 3, 6 or 9). Keys are told apart by instant: two keys
/// created within one second get different `rndc-created-at` values (and rollout markers), and
/// nothing is rounded, so nothing looks like the future.
pub fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Parses an RFC 3339 time (`Z` or any offset, e.g. upstream's `+00:00`).
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The rotation annotations of a Secret, as far as they parse.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyAnnotations {
    /// `rndc-created-at`.
    pub created_at: Option<DateTime<Utc>>,
    /// `rndc-rotate-at`.
    pub rotate_at: Option<DateTime<Utc>>,
    /// `rndc-rotation-count` (0 when absent or invalid).
    pub rotation_count: u32,
}

impl KeyAnnotations {
    /// Reads the annotations of a Secret.
    pub fn of(secret: &Secret) -> Self {
        let get = |key: &str| {
            secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key))
        };
        Self {
            created_at: get(ANNOTATION_CREATED_AT).and_then(|v| parse_time(v)),
            rotate_at: get(ANNOTATION_ROTATE_AT).and_then(|v| parse_time(v)),
            rotation_count: get(ANNOTATION_ROTATION_COUNT)
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0),
        }
    }
}

/// The three rotation annotations for a key created at `created_at`.
pub fn rotation_annotations(
    created_at: DateTime<Utc>,
    rotation_count: u32,
    rotate_after: Option<TimeDelta>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::from([
        (ANNOTATION_CREATED_AT.to_owned(), format_time(created_at)),
        (
            ANNOTATION_ROTATION_COUNT.to_owned(),
            rotation_count.to_string(),
        ),
    ]);
    if let Some(interval) = rotate_after {
        out.insert(
            ANNOTATION_ROTATE_AT.to_owned(),
            format_time(created_at + interval),
        );
    }
    out
}

/// The status block (`rndcKeyRotationStatus`, and upstream's `rndcKeyRotation`) for a Secret.
pub fn rotation_status(
    secret: &Secret,
    config: &EffectiveKeyConfig,
) -> Option<RndcKeyRotationStatus> {
    let annotations = KeyAnnotations::of(secret);
    let created_at = annotations.created_at?;
    let created = format_time(created_at);
    Some(RndcKeyRotationStatus {
        created_at: created.clone(),
        rotate_at: config
            .rotates()
            .then(|| format_time(created_at + config.rotate_after.as_time_delta())),
        last_rotated_at: (annotations.rotation_count > 0).then_some(created),
        rotation_count: Some(annotations.rotation_count),
    })
}

/// Why a managed key is replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotateReason {
    /// `rotateAfter` has passed since `rndc-created-at`.
    Due,
    /// The configured algorithm differs from the Secret's.
    AlgorithmChanged,
    /// The Secret's key data is missing or invalid.
    Repair,
}

impl fmt::Display for RotateReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RotateReason::Due => "due",
            RotateReason::AlgorithmChanged => "algorithm changed",
            RotateReason::Repair => "key data invalid",
        })
    }
}

/// What to do with the Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretAction {
    /// Nothing.
    Nothing,
    /// Create the managed Secret: generate `algorithm.output_len()` random bytes, build the data
    /// with [`super::key_secret_from_bytes`], set `annotations`, the RNDC key label and an
    /// ownerReference to the instance. For an inline `secret`, also its labels, annotations and
    /// any key material it carries.
    Provision {
        /// Secret name.
        secret_name: String,
        /// Algorithm of the new key.
        algorithm: Algorithm,
        /// Key name of the new key.
        key_name: String,
        /// Rotation annotations to set.
        annotations: BTreeMap<String, String>,
    },
    /// Replace the key in one update (resourceVersion precondition) that also sets `annotations`,
    /// keeping every other label, annotation and data key.
    Rotate {
        /// Secret name.
        secret_name: String,
        /// Why.
        reason: RotateReason,
        /// Algorithm of the new key.
        algorithm: Algorithm,
        /// Key name, kept across rotations.
        key_name: String,
        /// The new rotation count (for the log line `rotation #N`).
        rotation: u32,
        /// Rotation annotations to set.
        annotations: BTreeMap<String, String>,
    },
    /// Rewrite annotations without touching the key (`autoRotate` turned on, `rotateAfter`
    /// changed, a Secret created without annotations).
    Annotate {
        /// Secret name.
        secret_name: String,
        /// Annotations to set.
        set: BTreeMap<String, String>,
        /// Annotations to remove (`rndc-rotate-at` when rotation is off).
        remove: Vec<String>,
    },
}

/// The rotator's plan for one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationPlan {
    /// What to do with the Secret.
    pub action: SecretAction,
    /// The key revision every Deployment using the Secret should carry in its pod-template
    /// annotation `bindy.firestoned.io/rndc-rotated-at` once the action is done.
    pub marker: Option<String>,
    /// When to evaluate again at the latest (the next due time, or the end of the rate limit).
    pub next_wake: Option<DateTime<Utc>>,
    roll_unmarked: bool,
}

impl RotationPlan {
    /// Whether a Deployment with this current marker must be patched.
    ///
    /// A Deployment without a marker is rolled only when the key was ever replaced (or is being
    /// replaced now): installing rndc-warden does not restart servers whose key never changed.
    pub fn needs_roll(&self, current: Option<&str>) -> bool {
        match (&self.marker, current) {
            (None, _) => false,
            (Some(_), None) => self.roll_unmarked,
            (Some(wanted), Some(current)) => !marker_covers(current, wanted),
        }
    }
}

/// Whether two markers name the same key revision (times compare by instant).
pub fn same_revision(a: &str, b: &str) -> bool {
    match (parse_time(a), parse_time(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Whether a Deployment's rollout marker `marker` shows its pods were rolled onto key revision
/// `revision` or later. Both operators write the marker: rndc-warden the key's `rndc-created-at`,
/// the Bindy operator `Utc::now()` (sub-second, `+00:00`) right after its own rotation. So a
/// marker that is a time at or after the revision's creation time covers it (compared as
/// instants, never as strings); fingerprint revisions (user Secrets without annotations) must
/// be equal.
fn marker_covers(marker: &str, revision: &str) -> bool {
    match (parse_time(marker), parse_time(revision)) {
        (Some(marker), Some(created)) => marker >= created,
        _ => marker == revision,
    }
}

/// A fingerprint of a Secret's key data (truncated SHA-256 over every data entry rndc-warden
/// reads): it changes exactly when the key material changes, never with annotations, and reveals
/// nothing about the key. `None` without key data.
fn key_fingerprint(secret: &Secret) -> Option<String> {
    let values = secret_values(secret);
    if values.is_empty() {
        return None;
    }
    let mut hash = Sha256::new();
    for (key, value) in &values {
        hash.update((key.len() as u64).to_be_bytes());
        hash.update(key.as_bytes());
        hash.update((value.bytes.len() as u64).to_be_bytes());
        hash.update(&value.bytes);
    }
    let digest = hash.finalize();
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Some(format!("sha256:{hex}"))
}

/// The marker for a Secret: its `rndc-created-at`, or else a fingerprint of its key data (for user
/// Secrets without annotations). The fingerprint is a truncated SHA-256 and reveals no key.
pub fn key_revision(secret: &Secret) -> Option<String> {
    if let Some(created) = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_CREATED_AT))
    {
        return Some(created.clone());
    }
    key_fingerprint(secret)
}

/// Decides what the rotator does for an instance whose effective configuration is `config` and
/// whose Secret (looked up by `config.secret_name`) is `secret`. The same as
/// [`plan_rotation_continuing`] with no earlier rotation count known.
pub fn plan_rotation(
    config: &EffectiveKeyConfig,
    secret: Option<&Secret>,
    now: DateTime<Utc>,
    cfg: &PolicyConfig,
) -> RotationPlan {
    plan_rotation_continuing(config, secret, now, cfg, None)
}

/// [`plan_rotation`] for a Secret whose earlier rotation count may be known from elsewhere
/// (`known_count`, e.g. the instance status' `rotationCount`). A missing managed Secret that had
/// a key before (a count is known) is re-provisioned as the next rotation (`known_count + 1`)
/// instead of restarting the count at 0, which would erase the audit trail (upstream resets it,
/// `reference/upstream-bindy.md` §9.4). The count never feeds the schedule.
pub fn plan_rotation_continuing(
    config: &EffectiveKeyConfig,
    secret: Option<&Secret>,
    now: DateTime<Utc>,
    cfg: &PolicyConfig,
    known_count: Option<u32>,
) -> RotationPlan {
    let interval = config.rotate_after.as_time_delta();
    let secret_name = config.secret_name.clone();
    let Some(secret) = secret else {
        if !config.is_managed() {
            return RotationPlan {
                action: SecretAction::Nothing,
                marker: None,
                next_wake: None,
                roll_unmarked: false,
            };
        }
        let count = known_count.map_or(0, |c| c.saturating_add(1));
        let annotations = rotation_annotations(now, count, config.rotates().then_some(interval));
        return RotationPlan {
            action: SecretAction::Provision {
                secret_name,
                algorithm: config.algorithm,
                key_name: DEFAULT_KEY_NAME.to_owned(),
                annotations,
            },
            marker: Some(format_time(now)),
            next_wake: config.rotates().then_some(now + interval),
            roll_unmarked: true,
        };
    };
    let annotations = KeyAnnotations::of(secret);
    if !config.is_managed() {
        return RotationPlan {
            action: SecretAction::Nothing,
            marker: key_revision(secret),
            next_wake: None,
            roll_unmarked: annotations.rotation_count > 0,
        };
    }

    let (facts, findings) = key_facts(secret, cfg);
    let key_name = facts
        .name
        .clone()
        .unwrap_or_else(|| DEFAULT_KEY_NAME.to_owned());
    // The count never goes back: a Secret re-created by someone else (the Bindy operator
    // deletes and re-creates on an algorithm change, count 0) continues from the count known
    // from elsewhere (status, the rotator's own record).
    let floor = known_count.unwrap_or(0).max(annotations.rotation_count);
    let rotate = |reason: RotateReason| {
        let rotation = floor.saturating_add(1);
        RotationPlan {
            action: SecretAction::Rotate {
                secret_name: secret_name.clone(),
                reason,
                algorithm: config.algorithm,
                key_name: key_name.clone(),
                rotation,
                annotations: rotation_annotations(
                    now,
                    rotation,
                    config.rotates().then_some(interval),
                ),
            },
            marker: Some(format_time(now)),
            next_wake: config.rotates().then_some(now + interval),
            roll_unmarked: true,
        }
    };
    // Unusable or denied key data is replaced at once: the rate limit protects working keys.
    if !findings.denials.is_empty() {
        return rotate(if facts.algorithm.is_none_or(|a| a == config.algorithm) {
            RotateReason::Repair
        } else {
            RotateReason::AlgorithmChanged
        });
    }
    let algorithm_changed = facts.algorithm.is_some_and(|a| a != config.algorithm);

    // A Secret without (valid) created-at is adopted: its age is its creation time.
    let (created_at, mut set) = match annotations.created_at {
        Some(created) => (created, BTreeMap::new()),
        None => {
            let created = secret
                .metadata
                .creation_timestamp
                .as_ref()
                .and_then(|t| {
                    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond() as u32)
                })
                .filter(|t| *t <= now)
                .unwrap_or(now);
            let set = BTreeMap::from([(ANNOTATION_CREATED_AT.to_owned(), format_time(created))]);
            (created, set)
        }
    };
    // `now` and `created_at` are compared at full precision (a sub-second `rndc-created-at`
    // written by the Bindy operator is not "in the future" because `now` was rounded down). A
    // time ahead of this clock by no more than the tolerated skew is a fresh key (rate-limited);
    // one further ahead is not a real creation time and is treated as unknown age (rotated).
    let future = created_at > now + MAX_CLOCK_SKEW;
    let rate_limited = rate_limit_end(created_at, now).is_some();
    // A valid key of another algorithm is replaced too, but not within the rate limit (an
    // algorithm edit right after a rotation waits for the end of the hour, like any rotation).
    if algorithm_changed && !rate_limited {
        return rotate(RotateReason::AlgorithmChanged);
    }
    let rate_limit_ends = (algorithm_changed && rate_limited).then_some(created_at + RATE_LIMIT);
    if config.rotates() {
        let due_at = created_at + interval;
        if (now >= due_at || future) && !rate_limited {
            return rotate(RotateReason::Due);
        }
        let next_wake = if rate_limited && now >= due_at {
            created_at + RATE_LIMIT
        } else {
            due_at
        };
        let next_wake = rate_limit_ends.map_or(next_wake, |end| end.min(next_wake));
        if annotations.rotate_at != Some(due_at) {
            set.insert(ANNOTATION_ROTATE_AT.to_owned(), format_time(due_at));
        }
        continue_count(secret, &annotations, known_count, &mut set);
        let marker = set
            .get(ANNOTATION_CREATED_AT)
            .cloned()
            .or_else(|| key_revision(secret));
        let action = if set.is_empty() {
            SecretAction::Nothing
        } else {
            SecretAction::Annotate {
                secret_name,
                set,
                remove: Vec::new(),
            }
        };
        return RotationPlan {
            action,
            marker,
            next_wake: Some(next_wake),
            roll_unmarked: annotations.rotation_count > 0,
        };
    }
    continue_count(secret, &annotations, known_count, &mut set);
    let has_rotate_at = secret
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ANNOTATION_ROTATE_AT));
    let remove = if has_rotate_at {
        vec![ANNOTATION_ROTATE_AT.to_owned()]
    } else {
        Vec::new()
    };
    let marker = set
        .get(ANNOTATION_CREATED_AT)
        .cloned()
        .or_else(|| key_revision(secret));
    let action = if set.is_empty() && remove.is_empty() {
        SecretAction::Nothing
    } else {
        SecretAction::Annotate {
            secret_name,
            set,
            remove,
        }
    };
    RotationPlan {
        action,
        marker,
        next_wake: rate_limit_ends,
        roll_unmarked: annotations.rotation_count > 0,
    }
}

/// Adds `rndc-rotation-count` to `set` when the Secret lacks it, or when it is below the count
/// known from elsewhere (`known_count`): a Secret re-created by someone else holds a new key, so
/// it is the next rotation (`known + 1`), never a reset to 0.
fn continue_count(
    secret: &Secret,
    annotations: &KeyAnnotations,
    known_count: Option<u32>,
    set: &mut BTreeMap<String, String>,
) {
    let count_missing = secret
        .metadata
        .annotations
        .as_ref()
        .is_none_or(|a| !a.contains_key(ANNOTATION_ROTATION_COUNT));
    let count = match known_count {
        Some(known) if known > annotations.rotation_count => known.saturating_add(1),
        _ if count_missing => annotations.rotation_count,
        _ => return,
    };
    set.insert(ANNOTATION_ROTATION_COUNT.to_owned(), count.to_string());
}

/// The audit verdict of an instance's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// Rotating and on schedule.
    Ok,
    /// Due for more than [`OVERDUE_GRACE`], or the managed Secret is missing.
    Overdue,
    /// A managed key with `autoRotate` off.
    NotRotating,
    /// The configured or stored algorithm is denied or weak.
    WeakAlgorithm,
    /// A Secret the user manages (`secretRef`).
    UserManaged,
    /// The stored key is below policy (too short, missing or inconsistent data keys, no
    /// rndc-key label on a managed Secret), or its rotation keeps failing.
    Fail,
}

impl Verdict {
    /// Whether an audit may pass with this verdict (`OK` or `USER-MANAGED`).
    pub const fn is_clean(self) -> bool {
        matches!(self, Verdict::Ok | Verdict::UserManaged)
    }

    /// The report spelling: `OK`, `OVERDUE`, `NOT-ROTATING`, `WEAK-ALGORITHM`, `USER-MANAGED`,
    /// `FAIL`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "OK",
            Verdict::Overdue => "OVERDUE",
            Verdict::NotRotating => "NOT-ROTATING",
            Verdict::WeakAlgorithm => "WEAK-ALGORITHM",
            Verdict::UserManaged => "USER-MANAGED",
            Verdict::Fail => "FAIL",
        }
    }
}

impl serde::Serialize for Verdict {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An audit line for one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditFinding {
    /// The verdict.
    pub verdict: Verdict,
    /// When the key is (or was) due, for rotating keys.
    pub due_at: Option<DateTime<Utc>>,
    /// One sentence of detail.
    pub detail: String,
}

/// Why a stored key is below policy (`None`: it is not): key data the key Secret rules deny
/// (too short for its algorithm, missing or disagreeing data keys), a managed key of another
/// algorithm than configured, or a managed Secret without the rndc-key label (so the Secret
/// webhook does not guard it). Names fields and rules, never key material.
fn below_policy(
    config: &EffectiveKeyConfig,
    secret: &Secret,
    cfg: &PolicyConfig,
) -> Option<String> {
    let (facts, findings) = key_facts(secret, cfg);
    if !findings.denials.is_empty() {
        return Some(findings.denials.join("; "));
    }
    if !config.is_managed() {
        return None;
    }
    if let Some(stored) = facts.algorithm.filter(|a| *a != config.algorithm) {
        return Some(format!(
            "the key is {stored}, the configuration asks for {}",
            config.algorithm
        ));
    }
    let labelled = secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_RNDC_KEY))
        .is_some_and(|v| v == LABEL_RNDC_KEY_VALUE);
    (!labelled).then(|| {
        format!(
            "the Secret lacks the label {LABEL_RNDC_KEY}={LABEL_RNDC_KEY_VALUE}, so the Secret \
             webhook does not guard it"
        )
    })
}

/// Audits an instance's key: weak algorithms first, then a key below policy, user-managed, not
/// rotating, overdue.
pub fn audit(
    config: &EffectiveKeyConfig,
    secret: Option<&Secret>,
    now: DateTime<Utc>,
    cfg: &PolicyConfig,
) -> AuditFinding {
    let stored = secret.and_then(|s| key_facts(s, cfg).0.algorithm);
    let weak = |a: Algorithm| cfg.is_denied(a) || a.strength() < Strength::Strong;
    if let Some(algorithm) = [Some(config.algorithm), stored]
        .into_iter()
        .flatten()
        .find(|a| weak(*a))
    {
        return AuditFinding {
            verdict: Verdict::WeakAlgorithm,
            due_at: None,
            detail: format!("the key uses {algorithm}"),
        };
    }
    if let Some(reason) = secret.and_then(|s| below_policy(config, s, cfg)) {
        return AuditFinding {
            verdict: Verdict::Fail,
            due_at: None,
            detail: format!("the key is below policy: {reason}"),
        };
    }
    if !config.is_managed() {
        return AuditFinding {
            verdict: Verdict::UserManaged,
            due_at: None,
            detail: format!("Secret {} is managed by its owner", config.secret_name),
        };
    }
    if !config.auto_rotate {
        return AuditFinding {
            verdict: Verdict::NotRotating,
            due_at: None,
            detail: format!("autoRotate is false in {}", config.source.path()),
        };
    }
    let created = secret.and_then(|s| KeyAnnotations::of(s).created_at);
    let Some(created) = created else {
        let detail = match secret {
            None => format!("Secret {} does not exist", config.secret_name),
            Some(_) => format!(
                "Secret {} has no {ANNOTATION_CREATED_AT}",
                config.secret_name
            ),
        };
        return AuditFinding {
            verdict: Verdict::Overdue,
            due_at: None,
            detail,
        };
    };
    let due_at = created + config.rotate_after.as_time_delta();
    if now >= due_at + OVERDUE_GRACE {
        return AuditFinding {
            verdict: Verdict::Overdue,
            due_at: Some(due_at),
            detail: format!("due since {}", format_time(due_at)),
        };
    }
    AuditFinding {
        verdict: Verdict::Ok,
        due_at: Some(due_at),
        detail: format!("next rotation at {}", format_time(due_at)),
    }
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod tests;
