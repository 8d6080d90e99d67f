use super::*;
use crate::policy::{ConfigSource, DataKeys, Management, RotateAfter, key_secret_from_bytes};
use chrono::TimeZone;
use k8s_openapi::ByteString;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

const CREATED: &str = "bindy.firestoned.io/rndc-created-at";
const ROTATE: &str = "bindy.firestoned.io/rndc-rotate-at";
const COUNT: &str = "bindy.firestoned.io/rndc-rotation-count";

fn at(text: &str) -> DateTime<Utc> {
    parse_time(text).expect("valid test time")
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
        .single()
        .expect("valid time")
}

fn config(auto_rotate: bool, rotate_after: &str) -> EffectiveKeyConfig {
    EffectiveKeyConfig {
        source: ConfigSource::Instance,
        auto_rotate,
        rotate_after: RotateAfter::parse(rotate_after).expect("valid"),
        algorithm: Algorithm::HmacSha256,
        secret_name: "dns-primary-rndc".into(),
        management: Management::Generated,
        data_keys: DataKeys::default(),
    }
}

fn secret(algorithm: Algorithm, annotations: &[(&str, &str)]) -> Secret {
    let data = key_secret_from_bytes("bindy-operator", algorithm, &[5; 64]).expect("enough bytes");
    Secret {
        metadata: ObjectMeta {
            name: Some("dns-primary-rndc".into()),
            labels: Some(BTreeMap::from([(
                "bindy.firestoned.io/rndc-key".to_owned(),
                "true".to_owned(),
            )])),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        data: Some(data.into_data()),
        ..Secret::default()
    }
}

fn annotated(created: &str, count: &str, rotate_at: Option<&str>) -> Secret {
    let mut list = vec![(CREATED, created), (COUNT, count)];
    if let Some(r) = rotate_at {
        list.push((ROTATE, r));
    }
    secret(Algorithm::HmacSha256, &list)
}

fn plan(config: &EffectiveKeyConfig, secret: Option<&Secret>) -> RotationPlan {
    plan_rotation(config, secret, now(), &PolicyConfig::default())
}

#[test]
fn a_missing_managed_secret_is_provisioned_and_rolled_out() {
    let p = plan(&config(true, "30d"), None);
    let SecretAction::Provision {
        secret_name,
        algorithm,
        key_name,
        annotations,
    } = &p.action
    else {
        panic!("expected Provision, got {:?}", p.action);
    };
    assert_eq!(
        (secret_name.as_str(), *algorithm, key_name.as_str()),
        ("dns-primary-rndc", Algorithm::HmacSha256, "bindy-operator")
    );
    assert_eq!(annotations[CREATED], "2026-03-01T12:00:00Z");
    assert_eq!(annotations[COUNT], "0");
    assert_eq!(annotations[ROTATE], "2026-03-31T12:00:00Z");
    assert_eq!(p.next_wake, Some(at("2026-03-31T12:00:00Z")));
    assert!(p.needs_roll(None) && p.needs_roll(Some("2026-01-01T00:00:00Z")));
}

#[test]
fn a_missing_user_managed_secret_is_left_alone() {
    let user = EffectiveKeyConfig {
        management: Management::UserManaged,
        ..config(true, "30d")
    };
    assert_eq!(plan(&user, None).action, SecretAction::Nothing);
    let present = annotated("2026-01-01T00:00:00Z", "0", None);
    let p = plan(&user, Some(&present));
    assert_eq!((p.action, p.next_wake), (SecretAction::Nothing, None));
}

#[test]
fn a_due_key_is_rotated_with_count_plus_one() {
    let s = annotated("2026-01-01T00:00:00Z", "4", Some("2026-01-31T00:00:00Z"));
    let p = plan(&config(true, "30d"), Some(&s));
    let SecretAction::Rotate {
        reason,
        rotation,
        annotations,
        key_name,
        ..
    } = &p.action
    else {
        panic!("expected Rotate, got {:?}", p.action);
    };
    assert_eq!(
        (*reason, *rotation, key_name.as_str()),
        (RotateReason::Due, 5, "bindy-operator")
    );
    assert_eq!(annotations[COUNT], "5");
    assert_eq!(annotations[CREATED], "2026-03-01T12:00:00Z");
    assert_eq!(p.marker.as_deref(), Some("2026-03-01T12:00:00Z"));
    assert!(p.needs_roll(Some("2026-01-01T00:00:00Z")));
}

#[test]
fn a_key_on_schedule_is_left_alone_until_its_due_time() {
    let s = annotated(
        "2026-02-20T00:00:00Z",
        "0",
        Some("2026-03-22T00:00:00+00:00"),
    );
    let p = plan(&config(true, "30d"), Some(&s));
    assert_eq!(p.action, SecretAction::Nothing);
    assert_eq!(p.next_wake, Some(at("2026-03-22T00:00:00Z")));
    assert!(
        !p.needs_roll(Some("2026-02-20T00:00:00+00:00")),
        "same instant, other spelling"
    );
    assert!(
        !p.needs_roll(None),
        "a never-rotated key does not restart unmarked pods"
    );
}

#[test]
fn due_exactly_now_is_due() {
    let s = annotated("2026-02-01T12:00:00Z", "0", None);
    let p = plan(&config(true, "28d"), Some(&s));
    assert!(matches!(
        p.action,
        SecretAction::Rotate {
            reason: RotateReason::Due,
            ..
        }
    ));
}

#[test]
fn turning_auto_rotate_on_after_the_secret_exists_schedules_a_rotation() {
    let s = annotated("2026-02-20T00:00:00Z", "0", None);
    let p = plan(&config(true, "30d"), Some(&s));
    assert_eq!(
        p.action,
        SecretAction::Annotate {
            secret_name: "dns-primary-rndc".into(),
            set: [(ROTATE.to_owned(), "2026-03-22T00:00:00Z".to_owned())].into(),
            remove: Vec::new(),
        }
    );
    let old = annotated("2025-01-01T00:00:00Z", "0", None);
    assert!(matches!(
        plan(&config(true, "30d"), Some(&old)).action,
        SecretAction::Rotate { .. }
    ));
}

#[test]
fn back_dating_created_at_makes_the_key_due() {
    let s = annotated("2020-01-01T00:00:00Z", "2", Some("2026-03-22T00:00:00Z"));
    assert!(matches!(
        plan(&config(true, "30d"), Some(&s)).action,
        SecretAction::Rotate {
            reason: RotateReason::Due,
            ..
        }
    ));
}

#[test]
fn changing_rotate_after_rewrites_rotate_at_or_rotates() {
    let s = annotated("2026-02-20T00:00:00Z", "0", Some("2026-03-22T00:00:00Z"));
    let p = plan(&config(true, "60d"), Some(&s));
    assert!(
        matches!(&p.action, SecretAction::Annotate { set, .. } if set[ROTATE] == "2026-04-21T00:00:00Z")
    );
    let p = plan(&config(true, "7d"), Some(&s));
    assert!(matches!(
        p.action,
        SecretAction::Rotate {
            reason: RotateReason::Due,
            ..
        }
    ));
}

#[test]
fn no_rotation_within_an_hour_of_created_at() {
    let s = annotated("2026-03-01T11:01:00Z", "3", None);
    let p = plan(&config(true, "1h"), Some(&s));
    assert!(matches!(p.action, SecretAction::Annotate { .. }));
    assert_eq!(p.next_wake, Some(at("2026-03-01T12:01:00Z")));
}

#[test]
fn a_created_at_in_the_future_is_treated_as_unknown_age_and_rotated() {
    let s = annotated("2030-01-01T00:00:00Z", "1", None);
    assert!(matches!(
        plan(&config(true, "30d"), Some(&s)).action,
        SecretAction::Rotate {
            reason: RotateReason::Due,
            ..
        }
    ));
}

#[test]
fn a_changed_algorithm_replaces_the_key_even_without_auto_rotate() {
    let s = secret(
        Algorithm::HmacSha512,
        &[(CREATED, "2026-02-20T00:00:00Z"), (COUNT, "0")],
    );
    let p = plan(&config(false, "30d"), Some(&s));
    assert!(matches!(
        p.action,
        SecretAction::Rotate {
            reason: RotateReason::AlgorithmChanged,
            rotation: 1,
            ..
        }
    ));
    assert_eq!(p.next_wake, None);
}

#[test]
fn broken_key_data_is_repaired() {
    let mut s = annotated("2026-02-20T00:00:00Z", "0", None);
    if let Some(data) = s.data.as_mut() {
        data.remove("secret");
        data.insert("rndc.key".into(), ByteString(b"garbage".to_vec()));
    }
    let p = plan(&config(false, "30d"), Some(&s));
    assert!(matches!(
        p.action,
        SecretAction::Rotate {
            reason: RotateReason::Repair,
            ..
        }
    ));
}

#[test]
fn rotate_at_is_removed_when_rotation_is_off() {
    let s = annotated("2026-02-20T00:00:00Z", "1", Some("2026-03-22T00:00:00Z"));
    let p = plan(&config(false, "30d"), Some(&s));
    assert_eq!(
        p.action,
        SecretAction::Annotate {
            secret_name: "dns-primary-rndc".into(),
            set: BTreeMap::new(),
            remove: vec![ROTATE.to_owned()]
        }
    );
    assert!(p.needs_roll(None), "a rotated key rolls unmarked pods");
}

#[test]
fn a_secret_without_annotations_is_adopted_at_its_creation_time() {
    let mut s = secret(Algorithm::HmacSha256, &[]);
    let created = k8s_openapi::jiff::Timestamp::from_second(at("2026-02-25T00:00:00Z").timestamp())
        .expect("valid timestamp");
    s.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        created,
    ));
    let p = plan(&config(true, "30d"), Some(&s));
    let SecretAction::Annotate { set, .. } = &p.action else {
        panic!("{:?}", p.action)
    };
    assert_eq!(set[CREATED], "2026-02-25T00:00:00Z");
    assert_eq!(set[COUNT], "0");
    assert_eq!(set[ROTATE], "2026-03-27T00:00:00Z");
}

#[test]
fn a_failed_rollout_is_retried_because_the_marker_still_differs() {
    let s = annotated("2026-02-20T00:00:00Z", "3", Some("2026-03-22T00:00:00Z"));
    let p = plan(&config(true, "30d"), Some(&s));
    assert_eq!(p.action, SecretAction::Nothing);
    assert!(p.needs_roll(Some("2026-01-21T00:00:00Z")));
    assert!(!p.needs_roll(Some("2026-02-20T00:00:00Z")));
}

#[test]
fn user_secrets_without_annotations_get_a_fingerprint_marker_that_hides_the_key() {
    let s = secret(Algorithm::HmacSha256, &[]);
    let marker = key_revision(&s).expect("has data");
    assert!(
        marker.starts_with("sha256:") && marker.len() == 23,
        "{marker}"
    );
    let other = secret(Algorithm::HmacSha512, &[]);
    assert_ne!(key_revision(&other), Some(marker));
}

#[test]
fn audit_gives_each_verdict() {
    let cfg = PolicyConfig::default();
    let verdict = |c: &EffectiveKeyConfig, s: Option<&Secret>| audit(c, s, now(), &cfg).verdict;
    let fresh = annotated("2026-02-20T00:00:00Z", "0", None);
    let stale = annotated("2025-01-01T00:00:00Z", "0", None);
    assert_eq!(verdict(&config(true, "30d"), Some(&fresh)), Verdict::Ok);
    assert_eq!(
        verdict(&config(true, "30d"), Some(&stale)),
        Verdict::Overdue
    );
    assert_eq!(verdict(&config(true, "30d"), None), Verdict::Overdue);
    assert_eq!(
        verdict(&config(false, "30d"), Some(&fresh)),
        Verdict::NotRotating
    );
    let user = EffectiveKeyConfig {
        management: Management::UserManaged,
        ..config(true, "30d")
    };
    assert_eq!(verdict(&user, Some(&fresh)), Verdict::UserManaged);
    let sha1 = secret(Algorithm::HmacSha1, &[(CREATED, "2026-02-20T00:00:00Z")]);
    assert_eq!(verdict(&user, Some(&sha1)), Verdict::WeakAlgorithm);
    let weak = EffectiveKeyConfig {
        algorithm: Algorithm::HmacSha224,
        ..config(true, "30d")
    };
    assert_eq!(verdict(&weak, Some(&fresh)), Verdict::WeakAlgorithm);
    assert_eq!(Verdict::NotRotating.to_string(), "NOT-ROTATING");
    assert_eq!(Verdict::Fail.to_string(), "FAIL");
}

#[test]
fn a_key_below_policy_is_an_audit_failure_never_ok() {
    let cfg = PolicyConfig::default();
    let finding = |c: &EffectiveKeyConfig, s: &Secret| audit(c, Some(s), now(), &cfg);
    let fresh = annotated("2026-02-20T00:00:00Z", "0", None);
    // What the Bindy operator makes for hmac-sha512: a 32-byte key.
    let short_data = key_secret_from_bytes("bindy-operator", Algorithm::HmacSha512, &[5; 64])
        .expect("key")
        .into_data();
    let mut short = fresh.clone();
    let b64 = "BQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQU=";
    let mut data = short_data;
    data.insert("secret".into(), ByteString(b64.as_bytes().to_vec()));
    data.insert(
        "rndc.key".into(),
        ByteString(
            format!("key \"bindy-operator\" {{\n    algorithm hmac-sha512;\n    secret \"{b64}\";\n}};\n")
                .into_bytes(),
        ),
    );
    short.data = Some(data);
    let sha512 = EffectiveKeyConfig {
        algorithm: Algorithm::HmacSha512,
        ..config(true, "30d")
    };
    let f = finding(&sha512, &short);
    assert_eq!(f.verdict, Verdict::Fail, "{}", f.detail);
    assert!(f.detail.contains("below policy"), "{}", f.detail);
    assert!(!f.detail.contains(b64), "no key material: {}", f.detail);
    // A managed key of another algorithm than configured, or without the label.
    assert_eq!(finding(&sha512, &fresh).verdict, Verdict::Fail);
    let mut unlabelled = fresh.clone();
    unlabelled.metadata.labels = None;
    assert_eq!(
        finding(&config(true, "30d"), &unlabelled).verdict,
        Verdict::Fail
    );
    // A missing data key.
    let mut missing = fresh.clone();
    if let Some(d) = missing.data.as_mut() {
        d.remove("algorithm");
    }
    assert_eq!(
        finding(&config(true, "30d"), &missing).verdict,
        Verdict::Fail
    );
    assert_eq!(finding(&config(true, "30d"), &fresh).verdict, Verdict::Ok);
}

#[test]
fn rotation_status_mirrors_the_annotations() {
    let s = annotated("2026-02-20T00:00:00+00:00", "2", None);
    let status = rotation_status(&s, &config(true, "30d")).expect("annotated");
    assert_eq!(status.created_at, "2026-02-20T00:00:00Z");
    assert_eq!(status.rotate_at.as_deref(), Some("2026-03-22T00:00:00Z"));
    assert_eq!(
        status.last_rotated_at.as_deref(),
        Some("2026-02-20T00:00:00Z")
    );
    assert_eq!(status.rotation_count, Some(2));
    let off = rotation_status(
        &annotated("2026-02-20T00:00:00Z", "0", None),
        &config(false, "30d"),
    )
    .expect("annotated");
    assert_eq!((off.rotate_at, off.last_rotated_at), (None, None));
}

#[test]
fn times_are_written_with_z_and_read_with_any_offset() {
    // docs/rotation.md, "Who rotates when both could": instants are kept, never rounded (a rounded time can look like
    // the future, and two keys of one second would share a revision).
    assert_eq!(
        format_time(at("2026-01-27T15:04:05.123456789+00:00")),
        "2026-01-27T15:04:05.123456789Z"
    );
    assert_eq!(
        format_time(at("2026-01-27T15:04:05.5+00:00")),
        "2026-01-27T15:04:05.500Z"
    );
    assert_eq!(
        format_time(at("2026-01-27T15:04:05+00:00")),
        "2026-01-27T15:04:05Z"
    );
    assert_eq!(at("2026-01-27T16:04:05+01:00"), at("2026-01-27T15:04:05Z"));
    assert_eq!(parse_time("2026-13-01T00:00:00Z"), None);
}

#[test]
fn a_changed_algorithm_waits_for_the_end_of_the_rate_limit() {
    let s = secret(
        Algorithm::HmacSha512,
        &[(CREATED, "2026-03-01T11:30:00Z"), (COUNT, "2")],
    );
    for auto_rotate in [false, true] {
        let p = plan(&config(auto_rotate, "30d"), Some(&s));
        assert!(
            !matches!(p.action, SecretAction::Rotate { .. }),
            "autoRotate {auto_rotate}: {:?}",
            p.action
        );
        assert_eq!(p.next_wake, Some(at("2026-03-01T12:30:00Z")));
        assert!(
            !p.needs_roll(Some("2026-03-01T11:30:00Z")),
            "no rollout while waiting"
        );
    }
    let later = plan_rotation(
        &config(false, "30d"),
        Some(&s),
        at("2026-03-01T12:30:00Z"),
        &PolicyConfig::default(),
    );
    assert!(matches!(
        later.action,
        SecretAction::Rotate {
            reason: RotateReason::AlgorithmChanged,
            rotation: 3,
            ..
        }
    ));
}

#[test]
fn a_denied_stored_algorithm_is_replaced_at_once_even_within_the_hour() {
    let s = secret(
        Algorithm::HmacSha1,
        &[(CREATED, "2026-03-01T11:30:00Z"), (COUNT, "0")],
    );
    assert!(matches!(
        plan(&config(false, "30d"), Some(&s)).action,
        SecretAction::Rotate {
            reason: RotateReason::AlgorithmChanged,
            rotation: 1,
            ..
        }
    ));
}

#[test]
fn a_reprovisioned_secret_continues_the_known_count() {
    let cfg = PolicyConfig::default();
    let provisioned =
        |known| match plan_rotation_continuing(&config(true, "30d"), None, now(), &cfg, known)
            .action
        {
            SecretAction::Provision { annotations, .. } => annotations[COUNT].clone(),
            other => panic!("expected Provision, got {other:?}"),
        };
    assert_eq!(provisioned(None), "0", "a first key starts at 0");
    assert_eq!(
        provisioned(Some(0)),
        "1",
        "replacing the first key is rotation #1"
    );
    assert_eq!(provisioned(Some(4)), "5");
    assert_eq!(provisioned(Some(u32::MAX)), u32::MAX.to_string());
    // A known count at or below the Secret's changes nothing.
    let s = annotated("2026-02-20T00:00:00Z", "2", Some("2026-03-22T00:00:00Z"));
    assert_eq!(
        plan_rotation_continuing(&config(true, "30d"), Some(&s), now(), &cfg, Some(2)),
        plan(&config(true, "30d"), Some(&s))
    );
    // A Secret re-created by someone else with a lower count (the Bindy operator resets it to
    // 0) holds a new key: it is the next rotation, never a reset (docs/rotation.md, "Who rotates when both could").
    let p = plan_rotation_continuing(&config(true, "30d"), Some(&s), now(), &cfg, Some(9));
    let SecretAction::Annotate { set, .. } = &p.action else {
        panic!("{:?}", p.action)
    };
    assert_eq!(set[COUNT], "10");
    // And a repair of such a Secret continues from the known count too.
    let mut broken = s.clone();
    if let Some(d) = broken.data.as_mut() {
        d.remove("secret");
    }
    let p = plan_rotation_continuing(&config(true, "30d"), Some(&broken), now(), &cfg, Some(9));
    assert!(
        matches!(p.action, SecretAction::Rotate { rotation: 10, .. }),
        "{:?}",
        p.action
    );
}

#[test]
fn now_is_compared_at_full_precision_and_a_little_clock_skew_is_a_fresh_key() {
    let cfg = PolicyConfig::default();
    // Created 0.3 s after the whole second of "now" (as the Bindy operator writes it).
    let s = annotated(
        "2026-03-01T12:00:00.3+00:00",
        "0",
        Some("2026-03-31T12:00:00.3+00:00"),
    );
    let at = now() + TimeDelta::milliseconds(800);
    let p = plan_rotation(&config(true, "30d"), Some(&s), at, &cfg);
    assert_eq!(p.action, SecretAction::Nothing, "{:?}", p.action);
    // A key up to the tolerated skew ahead of this clock is rate-limited, not rotated.
    let ahead = annotated("2026-03-01T12:04:00Z", "0", None);
    let p = plan_rotation(&config(true, "1h"), Some(&ahead), now(), &cfg);
    assert!(
        !matches!(p.action, SecretAction::Rotate { .. }),
        "{:?}",
        p.action
    );
}

#[test]
fn the_rate_limit_holds_for_an_hour_and_for_creation_times_within_the_clock_skew() {
    let now = now();
    let end = |created: DateTime<Utc>| rate_limit_end(created, now);
    assert_eq!(
        end(now - TimeDelta::minutes(59)),
        Some(now + TimeDelta::minutes(1))
    );
    assert_eq!(end(now - RATE_LIMIT), None);
    // A clock a little ahead of ours wrote it: a fresh key.
    assert_eq!(
        end(now + TimeDelta::minutes(4)),
        Some(now + TimeDelta::minutes(64))
    );
    // Further ahead is no real creation time: never limited.
    assert_eq!(end(now + MAX_CLOCK_SKEW + TimeDelta::seconds(1)), None);
}

#[test]
fn the_back_dated_creation_time_makes_the_key_due_and_is_not_rate_limited() {
    let cfg = config(true, "30d");
    let created = back_dated_created_at(now(), cfg.rotate_after.as_time_delta());
    assert_eq!(rate_limit_end(created, now()), None);
    let s = annotated(&format_time(created), "2", None);
    assert!(matches!(
        plan(&cfg, Some(&s)).action,
        SecretAction::Rotate {
            reason: RotateReason::Due,
            ..
        }
    ));
}
