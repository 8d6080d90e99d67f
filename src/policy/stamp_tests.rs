use super::*;
use crate::policy::{
    Algorithm, ConfigSource, EffectiveKeyConfig, Management, RotateAfter, key_secret_from_bytes,
};
use chrono::TimeZone;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

const ROTATOR: &str = "system:serviceaccount:rndc-warden:rndc-warden";

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
        .single()
        .expect("valid time")
}

fn key_secret(fill: u8, annotations: &[(&str, &str)]) -> Secret {
    let data = key_secret_from_bytes("bindy-operator", Algorithm::HmacSha256, &[fill; 32])
        .expect("enough bytes");
    Secret {
        metadata: ObjectMeta {
            name: Some("dns-primary-rndc".into()),
            annotations: (!annotations.is_empty()).then(|| {
                annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            }),
            ..ObjectMeta::default()
        },
        data: Some(data.into_data()),
        ..Secret::default()
    }
}

fn owner(auto_rotate: bool) -> EffectiveKeyConfig {
    EffectiveKeyConfig {
        source: ConfigSource::Instance,
        auto_rotate,
        rotate_after: RotateAfter::parse("30d").expect("valid"),
        algorithm: Algorithm::HmacSha256,
        secret_name: "dns-primary-rndc".into(),
        management: Management::Generated,
        data_keys: DataKeys::default(),
    }
}

fn change<'a>(
    new: &'a Secret,
    old: Option<&'a Secret>,
    user: &'a str,
    owner: Option<&'a EffectiveKeyConfig>,
) -> SecretChange<'a> {
    SecretChange {
        new,
        old,
        username: user,
        owner,
        now: now(),
    }
}

fn stamped(decision: &Decision, secret: &Secret) -> BTreeMap<String, String> {
    apply_patch(secret, &decision.patch)
        .expect("patch applies")
        .metadata
        .annotations
        .unwrap_or_default()
}

const CREATED: &str = "bindy.firestoned.io/rndc-created-at";
const ROTATE: &str = "bindy.firestoned.io/rndc-rotate-at";
const COUNT: &str = "bindy.firestoned.io/rndc-rotation-count";

#[test]
fn a_new_secret_is_stamped_with_created_at_count_and_rotate_at() {
    let secret = key_secret(1, &[]);
    let o = owner(true);
    let d = review_secret(
        &change(&secret, None, "alice", Some(&o)),
        &PolicyConfig::default(),
    );
    assert!(d.allowed(), "{:?}", d.denials);
    let annotations = stamped(&d, &secret);
    assert_eq!(annotations[CREATED], "2026-03-01T12:00:00Z");
    assert_eq!(annotations[COUNT], "0");
    assert_eq!(annotations[ROTATE], "2026-03-31T12:00:00Z");
}

#[test]
fn existing_annotations_are_kept_and_only_missing_ones_added() {
    let secret = key_secret(1, &[(CREATED, "2026-01-01T00:00:00+00:00")]);
    let d = review_secret(
        &change(&secret, None, "alice", None),
        &PolicyConfig::default(),
    );
    let ops: Vec<String> = d.patch.0.iter().map(|op| op.path().to_string()).collect();
    assert_eq!(
        ops,
        ["/metadata/annotations/bindy.firestoned.io~1rndc-rotation-count"]
    );
}

#[test]
fn a_key_change_by_someone_else_is_recorded_as_an_external_rotation() {
    let old = key_secret(1, &[(CREATED, "2026-01-01T00:00:00Z"), (COUNT, "4")]);
    let new = key_secret(2, &[(CREATED, "2026-01-01T00:00:00Z"), (COUNT, "4")]);
    let o = owner(true);
    let d = review_secret(
        &change(&new, Some(&old), "vault-sync", Some(&o)),
        &PolicyConfig::default(),
    );
    assert!(d.allowed(), "{:?}", d.denials);
    let annotations = stamped(&d, &new);
    assert_eq!(annotations[CREATED], "2026-03-01T12:00:00Z");
    assert_eq!(annotations[COUNT], "5");
    assert_eq!(annotations[ROTATE], "2026-03-31T12:00:00Z");
    assert_eq!(
        d.warnings,
        [
            "the key of Secret dns-primary-rndc changed outside rndc-warden; recorded as a rotation at \
          2026-03-01T12:00:00Z"
        ]
    );
}

#[test]
fn the_rotators_own_key_change_is_not_counted_twice() {
    let old = key_secret(1, &[(CREATED, "2026-01-01T00:00:00Z"), (COUNT, "4")]);
    let new = key_secret(
        2,
        &[
            (CREATED, "2026-03-01T11:59:59Z"),
            (COUNT, "5"),
            (ROTATE, "2026-03-31T11:59:59Z"),
        ],
    );
    let o = owner(true);
    let d = review_secret(
        &change(&new, Some(&old), ROTATOR, Some(&o)),
        &PolicyConfig::default(),
    );
    assert!(
        d.allowed() && d.patch.0.is_empty(),
        "{:?} {:?}",
        d.denials,
        d.patch
    );
}

#[test]
fn removing_or_lowering_the_annotations_is_denied_except_for_the_rotator() {
    let old = key_secret(1, &[(CREATED, "2026-01-01T00:00:00Z"), (COUNT, "4")]);
    let removed = key_secret(1, &[]);
    let d = review_secret(
        &change(&removed, Some(&old), "mallory", None),
        &PolicyConfig::default(),
    );
    assert_eq!(
        d.denials,
        [
            "metadata.annotations[\"bindy.firestoned.io/rndc-created-at\"]: only rndc-warden may \
             remove it (requested by mallory); keep it, or back-date it to force a rotation",
            "metadata.annotations[\"bindy.firestoned.io/rndc-rotation-count\"]: only rndc-warden \
             may remove it (requested by mallory); keep it",
        ]
    );
    let lowered = key_secret(1, &[(CREATED, "2026-01-01T00:00:00Z"), (COUNT, "1")]);
    let d = review_secret(
        &change(&lowered, Some(&old), "mallory", None),
        &PolicyConfig::default(),
    );
    assert_eq!(
        d.denials,
        [
            "metadata.annotations[\"bindy.firestoned.io/rndc-rotation-count\"]: lowering it from 4 to \
          1 is not allowed (requested by mallory); the rotation count only grows"
        ]
    );
    let d = review_secret(
        &change(&lowered, Some(&old), ROTATOR, None),
        &PolicyConfig::default(),
    );
    assert!(d.allowed());
    let raised = key_secret(1, &[(CREATED, "2026-01-01T00:00:00Z"), (COUNT, "9")]);
    assert!(
        review_secret(
            &change(&raised, Some(&old), "alice", None),
            &PolicyConfig::default()
        )
        .allowed()
    );
}

#[test]
fn back_dating_created_at_is_allowed_and_moves_rotate_at() {
    let old = key_secret(
        1,
        &[
            (CREATED, "2026-02-20T00:00:00Z"),
            (COUNT, "0"),
            (ROTATE, "2026-03-22T00:00:00Z"),
        ],
    );
    let new = key_secret(
        1,
        &[
            (CREATED, "2020-01-01T00:00:00Z"),
            (COUNT, "0"),
            (ROTATE, "2026-03-22T00:00:00Z"),
        ],
    );
    let o = owner(true);
    let d = review_secret(
        &change(&new, Some(&old), "alice", Some(&o)),
        &PolicyConfig::default(),
    );
    assert!(d.allowed());
    assert_eq!(stamped(&d, &new)[ROTATE], "2020-01-31T00:00:00Z");
}

#[test]
fn a_created_at_in_the_future_is_denied() {
    let new = key_secret(1, &[(CREATED, "2027-01-01T00:00:00Z"), (COUNT, "0")]);
    let d = review_secret(&change(&new, None, "alice", None), &PolicyConfig::default());
    assert_eq!(
        d.denials,
        [
            "metadata.annotations[\"bindy.firestoned.io/rndc-created-at\"]: 2027-01-01T00:00:00Z lies \
          in the future; to force a rotation set it to a past time instead"
        ]
    );
}

#[test]
fn malformed_annotations_are_denied() {
    let new = key_secret(1, &[(CREATED, "yesterday"), (COUNT, "-1")]);
    let d = review_secret(&change(&new, None, "alice", None), &PolicyConfig::default());
    assert_eq!(
        d.denials,
        [
            "metadata.annotations[\"bindy.firestoned.io/rndc-created-at\"]: \"yesterday\" is not \
             an RFC 3339 time; use UTC such as \"2026-01-01T00:00:00Z\"",
            "metadata.annotations[\"bindy.firestoned.io/rndc-rotation-count\"]: \"-1\" is not a \
             whole number; leave the rotation count to rndc-warden",
        ]
    );
}

#[test]
fn key_content_is_validated_against_the_owner_algorithm() {
    let secret = key_secret(1, &[]);
    let o = EffectiveKeyConfig {
        algorithm: Algorithm::HmacSha512,
        ..owner(true)
    };
    let d = review_secret(
        &change(&secret, None, "alice", Some(&o)),
        &PolicyConfig::default(),
    );
    assert_eq!(
        d.denials,
        [
            "data[\"rndc.key\"]: hmac-sha256 disagrees with the instance's rndcKey.algorithm \
          (hmac-sha512); make them the same"
        ]
    );
}

#[test]
fn the_label_selects_rndc_key_secrets() {
    let mut secret = key_secret(1, &[]);
    assert!(!is_rndc_key_secret(&secret));
    secret.metadata.labels =
        Some([("bindy.firestoned.io/rndc-key".to_owned(), "true".to_owned())].into());
    assert!(is_rndc_key_secret(&secret));
}

#[test]
fn debug_output_of_a_change_never_shows_key_data() {
    let secret = key_secret(7, &[]);
    let shown = format!("{:?}", change(&secret, None, "alice", None));
    assert!(
        shown.contains("dns-primary-rndc") && shown.contains("alice"),
        "{shown}"
    );
    assert!(
        !shown.contains("BwcH") && !shown.contains("[7, 7"),
        "{shown}"
    );
}

#[test]
fn a_stored_count_that_is_not_a_count_can_only_be_changed_by_the_rotator() {
    for stored in ["abc", "99999999999", "-1"] {
        let old = key_secret(1, &[(CREATED, "2026-01-01T00:00:00Z"), (COUNT, stored)]);
        let lowered = key_secret(1, &[(CREATED, "2026-01-01T00:00:00Z"), (COUNT, "0")]);
        let d = review_secret(
            &change(&lowered, Some(&old), "mallory", None),
            &PolicyConfig::default(),
        );
        assert!(
            d.denials.iter().any(|m| m.contains("lowering it")
                || m.contains("the stored value is not a rotation count")),
            "{stored}: {:?}",
            d.denials
        );
        let d = review_secret(
            &change(&lowered, Some(&old), ROTATOR, None),
            &PolicyConfig::default(),
        );
        assert!(d.allowed(), "{stored}: {:?}", d.denials);
    }
    // Counts compare as numbers of any size: raising a huge stored count is not lowering it.
    let old = key_secret(
        1,
        &[(CREATED, "2026-01-01T00:00:00Z"), (COUNT, "99999999999")],
    );
    let raised = key_secret(
        1,
        &[(CREATED, "2026-01-01T00:00:00Z"), (COUNT, "100000000000")],
    );
    let d = review_secret(
        &change(&raised, Some(&old), "mallory", None),
        &PolicyConfig::default(),
    );
    assert!(
        !d.denials.iter().any(|m| m.contains("lowering")),
        "{:?}",
        d.denials
    );
}

#[test]
fn writes_that_do_not_make_a_below_policy_key_worse_are_not_denied_for_it() {
    // Bindy's Secret: a 32-byte key, and the owner wants hmac-sha512 (64 bytes).
    let owner = EffectiveKeyConfig {
        algorithm: Algorithm::HmacSha512,
        ..owner(true)
    };
    let stored = key_secret(1, &[(CREATED, "2026-01-01T00:00:00Z"), (COUNT, "0")]);
    let mut relabelled = stored.clone();
    relabelled
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("bindy.firestoned.io/rndc-key".into(), "true".into());
    let by = |user: &str| {
        validate_secret(
            &change(&relabelled, Some(&stored), user, Some(&owner)),
            &PolicyConfig::default(),
        )
    };
    // A user's write that leaves the key data as stored (a label here; a back-dated
    // created-at alike) is not denied for what the stored key already had, but is told.
    let v = by("mallory");
    assert!(v.allowed(), "{:?}", v.denials);
    assert!(
        v.warnings
            .iter()
            .any(|w| w.contains("leaves the key data as stored")),
        "{:?}",
        v.warnings
    );
    // A user's write of key data that is still below policy keeps the rules.
    let rekeyed = key_secret(2, &[(CREATED, "2026-01-01T00:00:00Z"), (COUNT, "0")]);
    let v = validate_secret(
        &change(&rekeyed, Some(&stored), "mallory", Some(&owner)),
        &PolicyConfig::default(),
    );
    assert!(!v.allowed(), "new key data below policy is denied");
    let v = by(ROTATOR);
    assert!(v.allowed(), "{:?}", v.denials);
    assert!(
        v.warnings
            .iter()
            .any(|w| w.contains("does not make it worse")),
        "{:?}",
        v.warnings
    );
    // A problem the rotator's write would add is still denied.
    let mut broken = relabelled.clone();
    broken
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(CREATED.into(), "yesterday".into());
    let v = validate_secret(
        &change(&broken, Some(&stored), ROTATOR, Some(&owner)),
        &PolicyConfig::default(),
    );
    assert!(!v.allowed());
}

#[test]
fn a_rotation_computed_from_an_outdated_copy_is_denied_and_left_unstamped() {
    // rndc-warden rotated (count 1, created now); the Bindy operator's PUT was computed from
    // the copy before that: a new key, its own created-at, rotation 1 again.
    let stored = key_secret(1, &[(CREATED, "2026-03-01T12:00:00.100Z"), (COUNT, "1")]);
    let stale = key_secret(
        2,
        &[(CREATED, "2026-03-01T12:00:00.300+00:00"), (COUNT, "1")],
    );
    let cfg = PolicyConfig::default();
    let owner = owner(true);
    let c = change(
        &stale,
        Some(&stored),
        "system:serviceaccount:bindy:bindy",
        Some(&owner),
    );
    assert!(c.is_stale_rotation(&cfg));
    assert_eq!(
        mutate_secret(&c, &cfg),
        Mutation::default(),
        "left as submitted"
    );
    let v = validate_secret(&c, &cfg);
    assert!(
        v.denials
            .iter()
            .any(|d| d.contains("already at rotation 1")),
        "{:?}",
        v.denials
    );
    // A rotation of the stored Secret counts past it: allowed.
    let next = key_secret(
        2,
        &[(CREATED, "2026-03-01T12:00:00.300+00:00"), (COUNT, "2")],
    );
    let c = change(
        &next,
        Some(&stored),
        "system:serviceaccount:bindy:bindy",
        Some(&owner),
    );
    assert!(!c.is_stale_rotation(&cfg));
    assert!(validate_secret(&c, &cfg).allowed());
    // A user's new key that leaves the annotations as stored is an external rotation, as before.
    let edited = key_secret(3, &[(CREATED, "2026-03-01T12:00:00.100Z"), (COUNT, "1")]);
    let c = change(&edited, Some(&stored), "alice", Some(&owner));
    assert!(!c.is_stale_rotation(&cfg));
    assert_ne!(mutate_secret(&c, &cfg), Mutation::default());
}
