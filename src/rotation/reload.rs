//! Change detection and reload (docs/reload.md), the pure part: which key revision an instance's pods
//! should run, whether they already do, whether the Secret may be rolled out at all, how rapid
//! changes are debounced, and the status condition that reports it.
//!
//! The revision of a Secret is [`key_revision`]: its `rndc-created-at` (stamped by the Secret
//! webhook on every key change) or else a truncated SHA-256 of its key data. The revision the pods
//! were last reloaded onto is what this process did itself, else `status.rndcSecretVersion`
//! (which survives restarts and leader changes), else the Deployment's pod-template marker (when
//! an installed schema prunes the status field). Nothing here talks to Kubernetes or reads a
//! clock.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use sha2::{Digest, Sha256};

use super::plan::{key_fingerprint, marker_covers};
use crate::api::{CONDITION_RNDC_SECRET_RELOADED, Condition, DATA_RNDC_KEY};
use crate::policy::{
    EffectiveKeyConfig, PolicyConfig, SecretChange, format_time, key_revision, same_revision,
    validate_secret,
};

/// Instance annotation that overrides the release-wide reload strategy (`rollout` or `signal`).
pub const ANNOTATION_RELOAD_STRATEGY: &str = "rndc-warden/reload-strategy";

/// Condition reason: the pods run the current key.
pub const REASON_RELOADED: &str = "Reloaded";
/// Condition reason: the Secret's content fails the key Secret rules.
pub const REASON_INVALID: &str = "InvalidSecret";
/// Condition reason: the Secret does not exist.
pub const REASON_NOT_FOUND: &str = "SecretNotFound";
/// Condition reason: the reload itself (patch, exec) failed.
pub const REASON_FAILED: &str = "ReloadFailed";

/// How BIND9 is made to pick up a changed key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum ReloadStrategy {
    /// Patch the Deployment's pod-template marker: a rolling restart onto the new key.
    #[default]
    Rollout,
    /// SIGHUP to named (PID 1 of the `bind9` container) in each pod once it sees the new key
    /// file; needs `pods/exec`. Falls back to a rollout when a pod never sees the file.
    Signal,
}

impl ReloadStrategy {
    /// The flag and annotation spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadStrategy::Rollout => "rollout",
            ReloadStrategy::Signal => "signal",
        }
    }

    /// The strategy of an instance: its [`ANNOTATION_RELOAD_STRATEGY`] when valid, else the
    /// release-wide default.
    pub fn for_instance(
        annotations: &std::collections::BTreeMap<String, String>,
        default: ReloadStrategy,
    ) -> ReloadStrategy {
        annotations
            .get(ANNOTATION_RELOAD_STRATEGY)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }
}

impl fmt::Display for ReloadStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReloadStrategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rollout" => Ok(ReloadStrategy::Rollout),
            "signal" => Ok(ReloadStrategy::Signal),
            other => Err(format!(
                "unknown reload strategy {other:?}; use rollout or signal"
            )),
        }
    }
}

/// What an instance's pods were last reloaded onto, from the most to the least authoritative
/// record.
#[derive(Clone, Copy, Debug, Default)]
pub struct Loaded<'a> {
    /// What this process did or recorded itself (newer than a cached status, and kept when an
    /// installed schema prunes the status field).
    pub remembered: Option<&'a str>,
    /// `status.rndcSecretVersion` (survives restarts and leader changes).
    pub status: Option<&'a str>,
    /// The Deployment's pod-template marker `bindy.firestoned.io/rndc-rotated-at`.
    pub marker: Option<&'a str>,
    /// rndc-warden's record on the Deployment (`rndc-warden/key-revision`: the key fingerprint
    /// the pods were last rolled or reloaded onto); kept where status fields are pruned.
    pub record: Option<&'a str>,
}

impl<'a> Loaded<'a> {
    /// The best record available.
    pub fn revision(&self) -> Option<&'a str> {
        self.remembered
            .or(self.status)
            .or(self.record)
            .or(self.marker)
    }

    /// Whether any record shows the pods run the key of revision `revision` and fingerprint
    /// `fingerprint`: a record naming it, or a marker that covers it (a time at or after the
    /// key's creation, compared as instants: whichever operator rolled, rolled onto this key).
    pub fn covers(&self, revision: &str, fingerprint: Option<&str>) -> bool {
        let names = |r: Option<&str>| {
            r.is_some_and(|r| same_revision(r, revision) || Some(r) == fingerprint)
        };
        names(self.remembered)
            || names(self.status)
            || names(self.record)
            || self
                .marker
                .is_some_and(|m| marker_covers(m, revision) || Some(m) == fingerprint)
    }
}

/// What to do about one instance's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReloadAction {
    /// The pods run the current revision.
    Current,
    /// Nothing records what the pods run (first sight): record the current revision without
    /// reloading, so installing rndc-warden restarts nothing.
    Adopt {
        /// The Secret's revision.
        revision: String,
    },
    /// The key changed: reload the pods onto `revision`.
    Reload {
        /// The Secret's revision.
        revision: String,
        /// What the pods run now.
        previous: String,
    },
    /// The Secret fails the key Secret rules: do not roll it out.
    Invalid {
        /// The Secret's revision (a fingerprint when it has no usable data).
        revision: String,
        /// Why (names fields and rules, never key material).
        reason: String,
    },
    /// A user-managed Secret does not exist.
    Missing,
    /// A managed Secret is missing or invalid: the rotator provisions or repairs it, and the
    /// result is reloaded like any other change.
    LeaveToRotator,
}

impl ReloadAction {
    /// The revision the decision is about, for debouncing (`None`: nothing to debounce).
    pub fn pending_revision(&self) -> Option<&str> {
        match self {
            ReloadAction::Reload { revision, .. } | ReloadAction::Invalid { revision, .. } => {
                Some(revision)
            }
            ReloadAction::Missing => Some(""),
            _ => None,
        }
    }
}

/// Checks a Secret against the key Secret rules (docs/policy.md, "Validation (denials)") (the Secret webhook's validation, as if
/// the Secret were created now by someone other than the rotator). `Err` lists the denials.
pub fn validate_key_secret(
    secret: &Secret,
    config: &EffectiveKeyConfig,
    cfg: &PolicyConfig,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let change = SecretChange {
        new: secret,
        old: None,
        username: "",
        owner: Some(config),
        now,
    };
    let validation = validate_secret(&change, cfg);
    match validation.denial_message() {
        None => Ok(()),
        Some(message) => Err(message),
    }
}

/// Decides what to do about an instance whose effective configuration is `config`, whose Secret
/// (looked up by `config.secret_name`) is `secret`, and whose pods were last reloaded onto
/// `loaded`.
pub fn decide(
    config: &EffectiveKeyConfig,
    secret: Option<&Secret>,
    loaded: Loaded<'_>,
    cfg: &PolicyConfig,
    now: DateTime<Utc>,
) -> ReloadAction {
    let Some(secret) = secret else {
        return if config.is_managed() {
            ReloadAction::LeaveToRotator
        } else {
            ReloadAction::Missing
        };
    };
    let revision = key_revision(secret);
    let valid = validate_key_secret(secret, config, cfg, now);
    let (revision, reason) = match (revision, valid) {
        (Some(revision), Ok(())) => (revision, None),
        (Some(revision), Err(reason)) => (revision, Some(reason)),
        (None, Err(reason)) => ("empty".to_owned(), Some(reason)),
        (None, Ok(())) => (
            "empty".to_owned(),
            Some("the Secret has no key data".to_owned()),
        ),
    };
    if let Some(reason) = reason {
        return if config.is_managed() {
            ReloadAction::LeaveToRotator
        } else {
            ReloadAction::Invalid { revision, reason }
        };
    }
    let fingerprint = key_fingerprint(secret);
    if loaded.covers(&revision, fingerprint.as_deref()) {
        return ReloadAction::Current;
    }
    match loaded.revision() {
        Some(current) => ReloadAction::Reload {
            revision,
            previous: current.to_owned(),
        },
        None => ReloadAction::Adopt { revision },
    }
}

/// SHA-256 (lower-case hex) of the `rndc.key` the Secret mounts: what a pod that sees the new key
/// file computes over it. Reveals nothing about the key.
pub fn expected_key_digest(secret: &Secret) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(DATA_RNDC_KEY)?;
    Some(hex_sha256(&bytes.0))
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Trailing-edge debounce of revision changes per key: a change is acted on once its revision
/// has been stable for `window` (or, for a Secret that never settles, `6 × window` after the first
/// change of the burst), so several writes within the window cause one reload.
#[derive(Debug)]
pub struct Debouncer<K> {
    window: Duration,
    seen: HashMap<K, Pending>,
}

#[derive(Debug)]
struct Pending {
    revision: String,
    first: tokio::time::Instant,
    last: tokio::time::Instant,
}

/// The answer of [`Debouncer::observe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Act now.
    Ready,
    /// Look again at this instant.
    WaitUntil(tokio::time::Instant),
}

impl<K: std::hash::Hash + Eq + Clone> Debouncer<K> {
    /// A debouncer with the given window (zero: act at once).
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            seen: HashMap::new(),
        }
    }

    /// Records that `key` wants to act on `revision` at `now`.
    pub fn observe(&mut self, key: &K, revision: &str, now: tokio::time::Instant) -> Settled {
        if self.window.is_zero() {
            return Settled::Ready;
        }
        let entry = self.seen.entry(key.clone()).or_insert_with(|| Pending {
            revision: revision.to_owned(),
            first: now,
            last: now,
        });
        if entry.revision != revision {
            entry.revision = revision.to_owned();
            entry.last = now;
        }
        let due = (entry.last + self.window).min(entry.first + self.window * 6);
        if now >= due {
            Settled::Ready
        } else {
            Settled::WaitUntil(due)
        }
    }

    /// Forgets `key` (acted on, or nothing pending any more).
    pub fn clear(&mut self, key: &K) {
        self.seen.remove(key);
    }

    /// Forgets every key for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.seen.retain(|k, _| keep(k));
    }
}

/// The `RndcSecretReloaded` condition to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredCondition {
    /// `True` or `False`.
    pub status: &'static str,
    /// One of the `REASON_*` constants.
    pub reason: &'static str,
    /// Detail (names and revisions, never key material).
    pub message: String,
}

impl DesiredCondition {
    /// Whether `conditions` already carry this condition (ignoring the transition time).
    pub fn is_in(&self, conditions: Option<&[Condition]>) -> bool {
        conditions
            .into_iter()
            .flatten()
            .find(|c| c.type_ == CONDITION_RNDC_SECRET_RELOADED)
            .is_some_and(|c| {
                c.status == self.status
                    && c.reason.as_deref() == Some(self.reason)
                    && c.message.as_deref() == Some(self.message.as_str())
            })
    }

    /// `conditions` with this condition replacing any previous `RndcSecretReloaded`; the
    /// transition time moves only when the status changes.
    pub fn merged_into(
        &self,
        conditions: Option<&[Condition]>,
        generation: Option<i64>,
        now: DateTime<Utc>,
    ) -> Vec<Condition> {
        let mut out: Vec<Condition> = conditions.map(<[Condition]>::to_vec).unwrap_or_default();
        let previous = out
            .iter()
            .position(|c| c.type_ == CONDITION_RNDC_SECRET_RELOADED)
            .map(|i| out.remove(i));
        let transition = match &previous {
            Some(p) if p.status == self.status => p
                .last_transition_time
                .clone()
                .unwrap_or_else(|| format_time(now)),
            _ => format_time(now),
        };
        out.push(Condition {
            type_: CONDITION_RNDC_SECRET_RELOADED.to_owned(),
            status: self.status.to_owned(),
            reason: Some(self.reason.to_owned()),
            message: Some(self.message.clone()),
            last_transition_time: Some(transition),
            observed_generation: generation,
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Bind9Instance, Bind9InstanceSpec, RndcKeyConfig, RndcSecretRef};
    use crate::policy::{Algorithm, effective_config, key_secret_from_bytes};
    use chrono::TimeZone;
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .single()
            .expect("valid")
    }

    fn config(secret_ref: bool) -> EffectiveKeyConfig {
        let block = RndcKeyConfig {
            secret_ref: secret_ref.then(|| RndcSecretRef {
                name: "vault-rndc".into(),
                ..RndcSecretRef::default()
            }),
            ..RndcKeyConfig::default()
        };
        let mut i = Bind9Instance::new(
            "dns-a",
            Bind9InstanceSpec {
                rndc_key: Some(block),
                ..Bind9InstanceSpec::default()
            },
        );
        i.metadata.namespace = Some("dns".into());
        effective_config(&i, None, &PolicyConfig::default()).expect("config")
    }

    fn secret(byte: u8) -> Secret {
        let data = key_secret_from_bytes("bindy-operator", Algorithm::HmacSha256, &[byte; 32])
            .expect("key")
            .into_data();
        Secret {
            metadata: ObjectMeta {
                name: Some("vault-rndc".into()),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..Secret::default()
        }
    }

    fn decide_with(secret: Option<&Secret>, status: Option<&str>) -> ReloadAction {
        decide(
            &config(true),
            secret,
            Loaded {
                status,
                ..Loaded::default()
            },
            &PolicyConfig::default(),
            now(),
        )
    }

    #[test]
    fn test_secret_version_change_triggers_reload() {
        let before = secret(1);
        let after = secret(2);
        let old = key_revision(&before).expect("revision");
        let new = key_revision(&after).expect("revision");
        assert_ne!(old, new, "a key change is a new revision");
        assert_eq!(
            decide_with(Some(&after), Some(&old)),
            ReloadAction::Reload {
                revision: new.clone(),
                previous: old.clone()
            }
        );
        // The status wins over an older marker, and the marker is used when status is pruned.
        let loaded = Loaded {
            status: None,
            remembered: None,
            marker: Some(&old),
            record: None,
        };
        assert!(matches!(
            decide(
                &config(true),
                Some(&after),
                loaded,
                &PolicyConfig::default(),
                now()
            ),
            ReloadAction::Reload { .. }
        ));
    }

    #[test]
    fn test_no_reload_when_version_unchanged() {
        let s = secret(1);
        let rev = key_revision(&s).expect("revision");
        assert_eq!(decide_with(Some(&s), Some(&rev)), ReloadAction::Current);
        // Metadata-only writes (labels, unrelated annotations) keep the revision.
        let mut relabelled = s.clone();
        relabelled.metadata.labels = Some([("team".to_owned(), "dns".to_owned())].into());
        relabelled.metadata.resource_version = Some("99".into());
        assert_eq!(
            decide_with(Some(&relabelled), Some(&rev)),
            ReloadAction::Current
        );
        // First sight: adopt, do not reload.
        assert_eq!(
            decide_with(Some(&s), None),
            ReloadAction::Adopt { revision: rev }
        );
    }

    #[test]
    fn invalid_secrets_are_not_reloaded_and_name_the_problem_without_key_material() {
        let good = secret(1);
        let old = key_revision(&good).expect("revision");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("secret", b"%%%not base64%%%".to_vec()),
            ("algorithm", b"hmac-md5".to_vec()),
            ("rndc.key", b"key \"x\" { algorithm".to_vec()),
        ];
        for (key, value) in cases {
            let mut bad = good.clone();
            bad.data
                .as_mut()
                .expect("data")
                .insert(key.to_owned(), ByteString(value));
            match decide_with(Some(&bad), Some(&old)) {
                ReloadAction::Invalid { reason, revision } => {
                    assert_ne!(revision, old);
                    let material =
                        String::from_utf8(good.data.as_ref().expect("data")["secret"].0.clone())
                            .expect("utf8");
                    assert!(!reason.contains(material.trim()), "{reason}");
                }
                other => panic!("{key}: {other:?}"),
            }
        }
        // A managed Secret is repaired by the rotator instead.
        let mut bad = good.clone();
        bad.data
            .as_mut()
            .expect("data")
            .insert("secret".into(), ByteString(b"!!".to_vec()));
        assert_eq!(
            decide(
                &config(false),
                Some(&bad),
                Loaded::default(),
                &PolicyConfig::default(),
                now()
            ),
            ReloadAction::LeaveToRotator
        );
    }

    #[test]
    fn a_missing_user_secret_is_reported_and_a_managed_one_left_to_the_rotator() {
        assert_eq!(decide_with(None, Some("x")), ReloadAction::Missing);
        assert_eq!(
            decide(
                &config(false),
                None,
                Loaded::default(),
                &PolicyConfig::default(),
                now()
            ),
            ReloadAction::LeaveToRotator
        );
    }

    #[test]
    fn strategy_comes_from_the_annotation_else_the_default() {
        let mut a = std::collections::BTreeMap::new();
        assert_eq!(
            ReloadStrategy::for_instance(&a, ReloadStrategy::Rollout),
            ReloadStrategy::Rollout
        );
        a.insert(ANNOTATION_RELOAD_STRATEGY.to_owned(), "Signal".to_owned());
        assert_eq!(
            ReloadStrategy::for_instance(&a, ReloadStrategy::Rollout),
            ReloadStrategy::Signal
        );
        a.insert(ANNOTATION_RELOAD_STRATEGY.to_owned(), "bogus".to_owned());
        assert_eq!(
            ReloadStrategy::for_instance(&a, ReloadStrategy::Signal),
            ReloadStrategy::Signal
        );
    }

    #[test]
    fn several_changes_within_the_window_settle_once() {
        let mut d = Debouncer::new(Duration::from_secs(10));
        let t0 = tokio::time::Instant::now();
        let key = "dns/a";
        assert!(matches!(d.observe(&key, "r1", t0), Settled::WaitUntil(_)));
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(
            d.observe(&key, "r2", t1),
            Settled::WaitUntil(t1 + Duration::from_secs(10))
        );
        assert!(matches!(
            d.observe(&key, "r2", t1 + Duration::from_secs(5)),
            Settled::WaitUntil(_)
        ));
        assert_eq!(
            d.observe(&key, "r2", t1 + Duration::from_secs(10)),
            Settled::Ready
        );
        // A Secret that never settles is acted on after six windows.
        let mut d = Debouncer::new(Duration::from_secs(1));
        let mut t = t0;
        let mut ready = false;
        for i in 0..100 {
            t += Duration::from_millis(500);
            if d.observe(&key, &format!("r{i}"), t) == Settled::Ready {
                ready = true;
                break;
            }
        }
        assert!(ready && t <= t0 + Duration::from_secs(7));
        assert_eq!(
            Debouncer::new(Duration::ZERO).observe(&key, "r", t0),
            Settled::Ready
        );
    }

    #[test]
    fn the_condition_keeps_its_transition_time_while_the_status_holds() {
        let first = DesiredCondition {
            status: "False",
            reason: REASON_INVALID,
            message: "m1".into(),
        };
        let c1 = first.merged_into(None, Some(3), now());
        assert!(first.is_in(Some(&c1)));
        let later = now() + chrono::TimeDelta::minutes(5);
        let second = DesiredCondition {
            message: "m2".into(),
            ..first.clone()
        };
        let c2 = second.merged_into(Some(&c1), Some(3), later);
        assert_eq!(c2.len(), 1);
        assert_eq!(c2[0].last_transition_time, c1[0].last_transition_time);
        let ok = DesiredCondition {
            status: "True",
            reason: REASON_RELOADED,
            message: "ok".into(),
        };
        let c3 = ok.merged_into(Some(&c2), Some(3), later);
        assert_eq!(c3[0].last_transition_time, Some(format_time(later)));
        assert!(!first.is_in(Some(&c3)));
    }

    #[test]
    fn the_expected_digest_is_the_sha256_of_the_mounted_file() {
        let s = secret(4);
        let file = &s.data.as_ref().expect("data")[DATA_RNDC_KEY].0;
        assert_eq!(expected_key_digest(&s), Some(hex_sha256(file)));
        assert_eq!(
            hex_sha256(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
