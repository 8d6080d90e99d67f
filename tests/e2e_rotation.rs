//! The rotator against a real kube-apiserver, running as a ServiceAccount with exactly the chart's
//! RBAC. Back-dated `rndc-created-at` annotations stand in for days.

mod rotation_support;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use rndc_warden::api::{
    ANNOTATION_CREATED_AT, ANNOTATION_ROTATE_AT, Bind9Cluster, Bind9ClusterSpec, Bind9Instance,
    Bind9InstanceSpec, EVENT_RNDC_KEY_ROTATED, EVENT_RNDC_KEY_ROTATION_FAILED, InlineSecret,
    InlineSecretMetadata, LABEL_RNDC_KEY, RndcSecretRef, RoleSpec,
};
use rndc_warden::policy::{
    Algorithm, PolicyConfig, format_time, key_secret_from_bytes, parse_time,
};
use rndc_warden::rotate::{RotateError, request};
use rndc_warden_testkit::{Named, poll_until, wait_for};
use rotation_support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mode_provisions_then_rotates_with_the_algorithm_length_and_rolls_the_deployment() {
    let t = RotationEnv::new("rot-auto").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    create_deployment(&c, &ns, "dns-a").await;
    let instance = create_instance(
        &c,
        &ns,
        "dns-a",
        standalone(Some(rndc_key(true, "1h", "hmac-sha512"))),
    )
    .await;
    let rotator = t.start();

    let first = wait_secret(&c, &ns, "dns-a-rndc-key", "provisioned", |s| {
        created_at(s).is_some()
    })
    .await;
    assert_eq!(
        first.labels().get(LABEL_RNDC_KEY).map(String::as_str),
        Some("true")
    );
    let owner = first
        .owner_references()
        .first()
        .cloned()
        .expect("owner reference");
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Bind9Instance", instance.uid().unwrap_or_default().as_str())
    );
    assert_eq!(key_bytes(&first).len(), 64, "hmac-sha512 keys are 64 bytes");
    assert_eq!(count(&first), 0);
    let created = created_at(&first).expect("created-at");
    assert_eq!(
        annotation(&first, ANNOTATION_ROTATE_AT),
        Some(format_time(created + TimeDelta::hours(1)).as_str())
    );

    // The manual trigger: back-date created-at past rotateAfter.
    back_date(&c, &ns, "dns-a-rndc-key", Utc::now() - TimeDelta::hours(2)).await;
    let rotated = wait_secret(&c, &ns, "dns-a-rndc-key", "rotated", |s| count(s) == 1).await;
    assert_eq!(key_bytes(&rotated).len(), 64);
    assert_ne!(
        key_bytes(&rotated),
        key_bytes(&first),
        "the old key is gone"
    );
    assert!(!rndc_key_file(&rotated).contains(&rndc_key_file(&first)));
    let new_created = annotation(&rotated, ANNOTATION_CREATED_AT)
        .expect("created-at")
        .to_owned();
    assert!(parse_time(&new_created).expect("time") >= created);
    wait_marker(&c, &ns, "dns-a", &new_created).await;
    wait_status(&c, &ns, "dns-a", &new_created, 1).await;
    poll_until(
        "RndcKeyRotated event",
        WAIT,
        Duration::from_millis(200),
        || {
            let c = c.clone();
            let ns = ns.clone();
            async move {
                Ok::<_, kube::Error>(
                    (!events(&c, &ns, "dns-a", EVENT_RNDC_KEY_ROTATED)
                        .await
                        .is_empty())
                    .then_some(()),
                )
            }
        },
    )
    .await
    .expect("event");
    let text = rotator.metrics.encode();
    assert!(
        text.contains("rndc_warden_rotations_total{result=\"success\"} 1"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l == "rndc_warden_rotator_leader 1"),
        "{text}"
    );
    assert!(
        text.contains("rndc_warden_rotation_seconds_until{namespace="),
        "{text}"
    );
    rotator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_accepts_the_rotated_key_and_refuses_the_previous_one() {
    let t = RotationEnv::new("rot-named").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    create_instance(
        &c,
        &ns,
        "dns-n",
        standalone(Some(rndc_key(true, "24h", "hmac-sha256"))),
    )
    .await;
    let rotator = t.start();
    let first = wait_secret(&c, &ns, "dns-n-rndc-key", "provisioned", |s| {
        created_at(s).is_some()
    })
    .await;
    let old_key = rndc_key_file(&first);
    let mut named = Named::start(&old_key)
        .await
        .expect("named with the provisioned key");
    assert!(named.rndc_status_with(&old_key).await.expect("rndc"));

    back_date(&c, &ns, "dns-n-rndc-key", Utc::now() - TimeDelta::hours(25)).await;
    let rotated = wait_secret(&c, &ns, "dns-n-rndc-key", "rotated", |s| count(s) == 1).await;
    let new_key = rndc_key_file(&rotated);
    // What the rollout does for a pod: named starts (here: reloads) with the Secret's rndc.key.
    named.swap_key(&new_key).expect("swap");
    named.reload().await.expect("reload onto the rotated key");
    assert!(
        named.rndc_status_with(&new_key).await.expect("rndc"),
        "the rotated key is accepted"
    );
    assert!(
        !named.rndc_status_with(&old_key).await.expect("rndc"),
        "the previous key is refused"
    );
    named.stop();
    rotator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_mode_keeps_its_name_labels_and_other_metadata_across_rotation() {
    let t = RotationEnv::new("rot-inline").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let mut block = rndc_key(true, "2h", "hmac-sha384");
    block.secret = Some(InlineSecret {
        metadata: InlineSecretMetadata {
            name: "custom-rndc".into(),
            labels: Some(BTreeMap::from([("team".into(), "dns".into())])),
            annotations: Some(BTreeMap::from([("owner".into(), "netops".into())])),
            ..InlineSecretMetadata::default()
        },
        ..InlineSecret::default()
    });
    create_instance(&c, &ns, "dns-i", standalone(Some(block))).await;
    let rotator = t.start();
    let first = wait_secret(&c, &ns, "custom-rndc", "provisioned", |s| {
        created_at(s).is_some()
    })
    .await;
    assert_eq!(key_bytes(&first).len(), 48);
    // Someone adds their own label and data key; rotation must keep them.
    let patch = json!({"metadata": {"labels": {"extra": "yes"}}, "stringData": {"notes": "hello"}});
    Api::<Secret>::namespaced(c.clone(), &ns)
        .patch(
            "custom-rndc",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .expect("user edit");
    back_date(&c, &ns, "custom-rndc", Utc::now() - TimeDelta::hours(3)).await;
    let rotated = wait_secret(&c, &ns, "custom-rndc", "rotated", |s| count(s) == 1).await;
    assert_eq!(
        rotated.labels().get("team").map(String::as_str),
        Some("dns")
    );
    assert_eq!(
        rotated.labels().get("extra").map(String::as_str),
        Some("yes")
    );
    assert_eq!(
        rotated.labels().get(LABEL_RNDC_KEY).map(String::as_str),
        Some("true")
    );
    assert_eq!(annotation(&rotated, "owner"), Some("netops"));
    assert!(
        rotated
            .data
            .as_ref()
            .is_some_and(|d| d.contains_key("notes"))
    );
    assert_eq!(key_bytes(&rotated).len(), 48);
    assert_ne!(key_bytes(&rotated), key_bytes(&first));
    assert!(
        get_secret(&c, &ns, "dns-i-rndc-key").await.is_none(),
        "no generated Secret in inline mode"
    );
    rotator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_ref_mode_is_never_rotated() {
    let t = RotationEnv::new("rot-ref").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let key = key_secret_from_bytes("mine", Algorithm::HmacSha256, &[5u8; 32]).expect("key");
    let long_ago = Utc::now() - TimeDelta::days(400);
    let user_secret = Secret {
        metadata: ObjectMeta {
            name: Some("vault-rndc".into()),
            labels: Some(BTreeMap::from([(LABEL_RNDC_KEY.into(), "true".into())])),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_CREATED_AT.into(),
                format_time(long_ago),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(key.into_data()),
        ..Secret::default()
    };
    let secrets: Api<Secret> = Api::namespaced(c.clone(), &ns);
    let before = secrets
        .create(&PostParams::default(), &user_secret)
        .await
        .expect("user secret");
    let mut block = rndc_key(true, "1h", "hmac-sha256");
    block.secret_ref = Some(RndcSecretRef {
        name: "vault-rndc".into(),
        ..RndcSecretRef::default()
    });
    create_instance(&c, &ns, "dns-r", standalone(Some(block))).await;
    let rotator = t.start();
    // The rotator mirrors the user Secret into status (proof that it looked at it) ...
    wait_status(&c, &ns, "dns-r", &format_time(long_ago), 0).await;
    // ... and an auto one next to it rotates, so the loop has run passes.
    create_instance(
        &c,
        &ns,
        "dns-r2",
        standalone(Some(rndc_key(true, "1h", "hmac-sha256"))),
    )
    .await;
    wait_secret(&c, &ns, "dns-r2-rndc-key", "provisioned", |s| {
        created_at(s).is_some()
    })
    .await;
    back_date(&c, &ns, "dns-r2-rndc-key", Utc::now() - TimeDelta::hours(2)).await;
    wait_secret(&c, &ns, "dns-r2-rndc-key", "rotated", |s| count(s) == 1).await;
    let after = secrets.get("vault-rndc").await.expect("user secret");
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "never written"
    );
    assert!(get_secret(&c, &ns, "dns-r-rndc-key").await.is_none());
    rotator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precedence_instance_over_role_over_default_picks_interval_and_algorithm() {
    let t = RotationEnv::new("rot-prec").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let cluster = Bind9Cluster::new(
        "prod",
        Bind9ClusterSpec {
            primary: Some(RoleSpec {
                rndc_key: Some(rndc_key(true, "720h", "hmac-sha384")),
                ..RoleSpec::default()
            }),
            ..Bind9ClusterSpec::default()
        },
    );
    Api::<Bind9Cluster>::namespaced(c.clone(), &ns)
        .create(&PostParams::default(), &cluster)
        .await
        .expect("cluster");
    let member = |role: &str, block| Bind9InstanceSpec {
        cluster_ref: Some("prod".into()),
        role: Some(role.into()),
        rndc_key: block,
        ..Bind9InstanceSpec::default()
    };
    create_instance(&c, &ns, "role-p", member("primary", None)).await;
    create_instance(
        &c,
        &ns,
        "own-p",
        member("primary", Some(rndc_key(true, "360h", "hmac-sha512"))),
    )
    .await;
    create_instance(&c, &ns, "default-s", member("secondary", None)).await;
    let rotator = t.start();
    let expect = [
        ("role-p", 48, Some(720)),
        ("own-p", 64, Some(360)),
        ("default-s", 32, None),
    ];
    for (name, len, hours) in expect {
        let s = wait_secret(&c, &ns, &format!("{name}-rndc-key"), "provisioned", |s| {
            created_at(s).is_some()
        })
        .await;
        assert_eq!(key_bytes(&s).len(), len, "{name}");
        let created = created_at(&s).expect("created");
        let rotate_at = annotation(&s, ANNOTATION_ROTATE_AT).and_then(parse_time);
        assert_eq!(
            rotate_at,
            hours.map(|h| created + TimeDelta::hours(h)),
            "{name}"
        );
    }
    rotator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_becomes_due_is_rotated_within_two_seconds() {
    let t = RotationEnv::new("rot-punct").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    create_instance(
        &c,
        &ns,
        "dns-p",
        standalone(Some(rndc_key(true, "1h", "hmac-sha256"))),
    )
    .await;
    let rotator = t.start();
    wait_secret(&c, &ns, "dns-p-rndc-key", "provisioned", |s| {
        created_at(s).is_some()
    })
    .await;
    // Due in 6 seconds.
    let due = chrono::DateTime::from_timestamp(Utc::now().timestamp() + 6, 0).expect("time");
    back_date(&c, &ns, "dns-p-rndc-key", due - TimeDelta::hours(1)).await;
    let rotated = wait_secret(&c, &ns, "dns-p-rndc-key", "rotated", |s| count(s) == 1).await;
    let observed = Utc::now();
    let rotated_at = created_at(&rotated).expect("created-at");
    assert!(
        rotated_at >= due,
        "rotated before it was due: {rotated_at} < {due}"
    );
    assert!(
        rotated_at - due <= TimeDelta::seconds(2),
        "rotated at {rotated_at}, due {due}"
    );
    assert!(
        observed - due <= TimeDelta::seconds(3),
        "visible at {observed}, due {due}"
    );
    rotator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_auto_rotate_on_later_schedules_and_rotates() {
    let t = RotationEnv::new("rot-later").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    create_instance(&c, &ns, "dns-l", standalone(None)).await;
    let rotator = t.start();
    let first = wait_secret(&c, &ns, "dns-l-rndc-key", "provisioned", |s| {
        created_at(s).is_some()
    })
    .await;
    assert_eq!(
        annotation(&first, ANNOTATION_ROTATE_AT),
        None,
        "autoRotate defaults to false"
    );
    back_date(&c, &ns, "dns-l-rndc-key", Utc::now() - TimeDelta::hours(10)).await;
    let back_dated = get_secret(&c, &ns, "dns-l-rndc-key").await.expect("secret");
    let created = created_at(&back_dated).expect("created");
    let patch = json!({"spec": {"rndcKey": {"autoRotate": true, "rotateAfter": "24h", "algorithm": "hmac-sha256"}}});
    Api::<Bind9Instance>::namespaced(c.clone(), &ns)
        .patch("dns-l", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("turn autoRotate on");
    let due = format_time(created + TimeDelta::hours(24));
    let s = wait_secret(&c, &ns, "dns-l-rndc-key", "rotate-at written", |s| {
        annotation(s, ANNOTATION_ROTATE_AT) == Some(due.as_str())
    })
    .await;
    assert_eq!(count(&s), 0);
    back_date(&c, &ns, "dns-l-rndc-key", Utc::now() - TimeDelta::hours(25)).await;
    wait_secret(&c, &ns, "dns-l-rndc-key", "rotated", |s| count(s) == 1).await;
    rotator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_rotate_after_takes_effect_at_once() {
    let t = RotationEnv::new("rot-change").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    create_instance(
        &c,
        &ns,
        "dns-c",
        standalone(Some(rndc_key(true, "720h", "hmac-sha256"))),
    )
    .await;
    let rotator = t.start();
    wait_secret(&c, &ns, "dns-c-rndc-key", "provisioned", |s| {
        created_at(s).is_some()
    })
    .await;
    back_date(&c, &ns, "dns-c-rndc-key", Utc::now() - TimeDelta::hours(48)).await;
    let s = get_secret(&c, &ns, "dns-c-rndc-key").await.expect("secret");
    let created = created_at(&s).expect("created");
    let want = format_time(created + TimeDelta::hours(720));
    wait_secret(
        &c,
        &ns,
        "dns-c-rndc-key",
        "rotate-at follows created-at",
        |s| annotation(s, ANNOTATION_ROTATE_AT) == Some(want.as_str()),
    )
    .await;
    assert_eq!(
        count(&get_secret(&c, &ns, "dns-c-rndc-key").await.expect("secret")),
        0,
        "not due under 720h"
    );
    let patch = json!({"spec": {"rndcKey": {"rotateAfter": "24h"}}});
    Api::<Bind9Instance>::namespaced(c.clone(), &ns)
        .patch("dns-c", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("shorten rotateAfter");
    let rotated = wait_secret(&c, &ns, "dns-c-rndc-key", "rotated under 24h", |s| {
        count(s) == 1
    })
    .await;
    let new_created = created_at(&rotated).expect("created");
    assert_eq!(
        annotation(&rotated, ANNOTATION_ROTATE_AT),
        Some(format_time(new_created + TimeDelta::hours(24)).as_str())
    );
    rotator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_recreated_secret_is_reprovisioned_and_the_pods_rolled() {
    let t = RotationEnv::new("rot-delete").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    create_deployment(&c, &ns, "dns-d").await;
    create_instance(
        &c,
        &ns,
        "dns-d",
        standalone(Some(rndc_key(true, "24h", "hmac-sha256"))),
    )
    .await;
    let rotator = t.start();
    let first = wait_secret(&c, &ns, "dns-d-rndc-key", "provisioned", |s| {
        created_at(s).is_some()
    })
    .await;
    let first_created = annotation(&first, ANNOTATION_CREATED_AT)
        .expect("created")
        .to_owned();
    wait_marker(&c, &ns, "dns-d", &first_created).await;
    // Key revisions are whole seconds: let the clock pass the first one before deleting.
    let first_second = created_at(&first).expect("created").timestamp();
    wait_for("the next second", WAIT, || async move {
        Utc::now().timestamp() > first_second
    })
    .await
    .expect("clock");

    let secrets: Api<Secret> = Api::namespaced(c.clone(), &ns);
    secrets
        .delete("dns-d-rndc-key", &DeleteParams::default())
        .await
        .expect("delete");
    let again = wait_secret(&c, &ns, "dns-d-rndc-key", "re-provisioned", |s| {
        s.uid() != first.uid() && created_at(s).is_some()
    })
    .await;
    assert_ne!(key_bytes(&again), key_bytes(&first));
    let again_created = annotation(&again, ANNOTATION_CREATED_AT)
        .expect("created")
        .to_owned();
    wait_marker(&c, &ns, "dns-d", &again_created).await;

    // Recreated by hand with a new key and no annotations: adopted, annotated, pods rolled.
    let second_second = created_at(&again).expect("created").timestamp();
    wait_for("the next second", WAIT, || async move {
        Utc::now().timestamp() > second_second
    })
    .await
    .expect("clock");
    secrets
        .delete("dns-d-rndc-key", &DeleteParams::default())
        .await
        .expect("delete");
    let key =
        key_secret_from_bytes("bindy-operator", Algorithm::HmacSha256, &[8u8; 32]).expect("key");
    let by_hand = Secret {
        metadata: ObjectMeta {
            name: Some("dns-d-rndc-key".into()),
            labels: Some(BTreeMap::from([(LABEL_RNDC_KEY.into(), "true".into())])),
            ..ObjectMeta::default()
        },
        data: Some(key.into_data()),
        ..Secret::default()
    };
    // The rotator may win the race and re-provision first; either way the pods must follow.
    let _ = secrets.create(&PostParams::default(), &by_hand).await;
    let third = wait_secret(&c, &ns, "dns-d-rndc-key", "annotated", |s| {
        s.uid() != again.uid() && created_at(s).is_some()
    })
    .await;
    let third_created = annotation(&third, ANNOTATION_CREATED_AT)
        .expect("created")
        .to_owned();
    wait_marker(&c, &ns, "dns-d", &third_created).await;
    rotator.stop().await;
}

/// SPEC §6/§11 (changed): a Deployment created after its key mounts that key from the start, so
/// it is not rolled (it used to be, which restarted every new Bindy instance once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_created_after_its_key_is_not_rolled() {
    let t = RotationEnv::new("rot-late-deploy").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    create_instance(
        &c,
        &ns,
        "dns-m",
        standalone(Some(rndc_key(true, "1h", "hmac-sha256"))),
    )
    .await;
    let rotator = t.start();
    wait_secret(&c, &ns, "dns-m-rndc-key", "provisioned", |s| {
        created_at(s).is_some()
    })
    .await;
    back_date(&c, &ns, "dns-m-rndc-key", Utc::now() - TimeDelta::hours(2)).await;
    wait_secret(&c, &ns, "dns-m-rndc-key", "rotated", |s| count(s) == 1).await;
    create_deployment(&c, &ns, "dns-m").await;
    // Several passes (each watch event is one) go by; the new Deployment is left alone.
    let until = Utc::now() + TimeDelta::seconds(8);
    wait_for("a few passes", WAIT, || async move { Utc::now() >= until })
        .await
        .expect("clock");
    assert_eq!(
        marker(&c, &ns, "dns-m").await,
        None,
        "no rollout of a new Deployment"
    );
    rotator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_deployment_patch_is_retried_until_rbac_allows_it() {
    let mut rules = rotator_rules();
    for rule in &mut rules {
        if rule.api_groups.as_deref() == Some(&["apps".to_owned()][..]) {
            rule.verbs.retain(|v| v != "patch");
        }
    }
    let t = RotationEnv::with_rules("rot-rbac", rules).await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    create_deployment(&c, &ns, "dns-b").await;
    create_instance(
        &c,
        &ns,
        "dns-b",
        standalone(Some(rndc_key(true, "1h", "hmac-sha256"))),
    )
    .await;
    let rotator = t.start();
    wait_secret(&c, &ns, "dns-b-rndc-key", "provisioned", |s| {
        created_at(s).is_some()
    })
    .await;
    back_date(&c, &ns, "dns-b-rndc-key", Utc::now() - TimeDelta::hours(2)).await;
    let rotated = wait_secret(&c, &ns, "dns-b-rndc-key", "rotated", |s| count(s) == 1).await;
    let created = annotation(&rotated, ANNOTATION_CREATED_AT)
        .expect("created")
        .to_owned();
    poll_until(
        "RndcKeyRotationFailed event",
        WAIT,
        Duration::from_millis(200),
        || {
            let c = c.clone();
            let ns = ns.clone();
            async move {
                Ok::<_, kube::Error>(
                    (!events(&c, &ns, "dns-b", EVENT_RNDC_KEY_ROTATION_FAILED)
                        .await
                        .is_empty())
                    .then_some(()),
                )
            }
        },
    )
    .await
    .expect("failure event");
    assert_ne!(
        marker(&c, &ns, "dns-b").await.as_deref(),
        Some(created.as_str())
    );
    t.set_rules(rotator_rules()).await;
    wait_marker(&c, &ns, "dns-b", &created).await;
    assert_eq!(
        count(&get_secret(&c, &ns, "dns-b-rndc-key").await.expect("secret")),
        1,
        "no extra rotation"
    );
    rotator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_secret_rotates_once_and_rolls_every_instance_using_it() {
    let t = RotationEnv::new("rot-shared").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let mut block = rndc_key(true, "1h", "hmac-sha256");
    block.secret = Some(InlineSecret {
        metadata: InlineSecretMetadata {
            name: "shared-rndc".into(),
            ..InlineSecretMetadata::default()
        },
        ..InlineSecret::default()
    });
    let cluster = Bind9Cluster::new(
        "pair",
        Bind9ClusterSpec {
            primary: Some(RoleSpec {
                rndc_key: Some(block),
                ..RoleSpec::default()
            }),
            ..Bind9ClusterSpec::default()
        },
    );
    Api::<Bind9Cluster>::namespaced(c.clone(), &ns)
        .create(&PostParams::default(), &cluster)
        .await
        .expect("cluster");
    for name in ["pair-primary-0", "pair-primary-1"] {
        create_deployment(&c, &ns, name).await;
        let spec = Bind9InstanceSpec {
            cluster_ref: Some("pair".into()),
            role: Some("primary".into()),
            ..Bind9InstanceSpec::default()
        };
        create_instance(&c, &ns, name, spec).await;
    }
    let rotator = t.start();
    wait_secret(&c, &ns, "shared-rndc", "provisioned", |s| {
        created_at(s).is_some()
    })
    .await;
    back_date(&c, &ns, "shared-rndc", Utc::now() - TimeDelta::hours(2)).await;
    let rotated = wait_secret(&c, &ns, "shared-rndc", "rotated", |s| count(s) == 1).await;
    let created = annotation(&rotated, ANNOTATION_CREATED_AT)
        .expect("created")
        .to_owned();
    for name in ["pair-primary-0", "pair-primary-1"] {
        wait_marker(&c, &ns, name, &created).await;
        wait_status(&c, &ns, name, &created, 1).await;
    }
    assert_eq!(
        count(&get_secret(&c, &ns, "shared-rndc").await.expect("secret")),
        1
    );
    rotator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rotate_command_honours_the_hourly_rate_limit_unless_forced() {
    let t = RotationEnv::new("rot-cli").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    create_instance(
        &c,
        &ns,
        "dns-q",
        standalone(Some(rndc_key(true, "720h", "hmac-sha256"))),
    )
    .await;
    let rotator = t.start();
    let first = wait_secret(&c, &ns, "dns-q-rndc-key", "provisioned", |s| {
        created_at(s).is_some()
    })
    .await;
    let policy = PolicyConfig::default();
    // A fresh key: refused, nothing written.
    let refused = request(&c, &ns, "dns-q", false, &policy, Utc::now()).await;
    assert!(
        matches!(refused, Err(RotateError::RateLimited { .. })),
        "{refused:?}"
    );
    assert_eq!(
        get_secret(&c, &ns, "dns-q-rndc-key")
            .await
            .expect("s")
            .resource_version(),
        first.resource_version()
    );
    // 61 minutes later (back-dated by an operator): accepted, rotated by the rotator.
    back_date(
        &c,
        &ns,
        "dns-q-rndc-key",
        Utc::now() - TimeDelta::minutes(61),
    )
    .await;
    request(&c, &ns, "dns-q", false, &policy, Utc::now())
        .await
        .expect("accepted after an hour");
    let rotated = wait_secret(&c, &ns, "dns-q-rndc-key", "rotated", |s| count(s) == 1).await;
    // Right after a rotation: refused again, and the count stays at 1.
    let again = request(&c, &ns, "dns-q", false, &policy, Utc::now()).await;
    assert!(
        matches!(again, Err(RotateError::RateLimited { .. })),
        "{again:?}"
    );
    // --force overrides the rate limit.
    request(&c, &ns, "dns-q", true, &policy, Utc::now())
        .await
        .expect("forced");
    let forced = wait_secret(&c, &ns, "dns-q-rndc-key", "forced rotation", |s| {
        count(s) == 2
    })
    .await;
    assert_ne!(key_bytes(&forced), key_bytes(&rotated));
    rotator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rotators_at_once_rotate_each_due_key_exactly_once() {
    let t = RotationEnv::new("rot-two").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let names: Vec<String> = (0..20).map(|i| format!("twin-{i}")).collect();
    for name in &names {
        create_deployment(&c, &ns, name).await;
        create_instance(
            &c,
            &ns,
            name,
            standalone(Some(rndc_key(true, "1h", "hmac-sha256"))),
        )
        .await;
    }
    // Leader election off for both: only the resourceVersion fencing keeps them apart.
    let mut a = t.args();
    a.leader_election = false;
    let mut b = a.clone();
    b.identity = Some("rotator-b".into());
    let ra = t.start_with(a);
    let rb = t.start_with(b);
    for name in &names {
        wait_secret(&c, &ns, &format!("{name}-rndc-key"), "provisioned", |s| {
            created_at(s).is_some()
        })
        .await;
    }
    let past = Utc::now() - TimeDelta::hours(2);
    for name in &names {
        back_date(&c, &ns, &format!("{name}-rndc-key"), past).await;
    }
    for name in &names {
        let s = wait_secret(&c, &ns, &format!("{name}-rndc-key"), "rotated", |s| {
            count(s) >= 1
        })
        .await;
        wait_marker(
            &c,
            &ns,
            name,
            annotation(&s, ANNOTATION_CREATED_AT).expect("created"),
        )
        .await;
    }
    // Both keep running through a few more passes; nothing may rotate twice.
    let settle_until = Utc::now().timestamp() + 3;
    wait_for("a few passes", WAIT, || async move {
        Utc::now().timestamp() >= settle_until
    })
    .await
    .expect("clock");
    for name in &names {
        let s = get_secret(&c, &ns, &format!("{name}-rndc-key"))
            .await
            .expect("secret");
        assert_eq!(count(&s), 1, "{name} rotated more than once");
    }
    let total: f64 = [&ra, &rb]
        .iter()
        .map(|r| {
            r.metrics
                .encode()
                .lines()
                .find(|l| l.starts_with("rndc_warden_rotations_total{result=\"success\"}"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        })
        .sum();
    assert_eq!(total, 20.0, "20 rotations across both replicas");
    ra.stop().await;
    rb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_rotates_and_a_successor_takes_over() {
    let t = RotationEnv::new("rot-lease").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    create_instance(
        &c,
        &ns,
        "dns-e",
        standalone(Some(rndc_key(true, "1h", "hmac-sha256"))),
    )
    .await;
    let mut a = t.args();
    a.lease_duration = Duration::from_secs(4);
    a.lease_grace = Duration::from_secs(1);
    let mut b = a.clone();
    b.identity = Some("rotator-b".into());
    let ra = t.start_with(a);
    wait_secret(&c, &ns, "dns-e-rndc-key", "provisioned", |s| {
        created_at(s).is_some()
    })
    .await;
    let rb = t.start_with(b);
    let leaders = |r: &Rotator| {
        r.metrics
            .encode()
            .lines()
            .any(|l| l == "rndc_warden_rotator_leader 1")
    };
    assert!(
        leaders(&ra) && !leaders(&rb),
        "one leader: a={} b={}",
        leaders(&ra),
        leaders(&rb)
    );
    ra.stop().await;
    poll_until("b to take over", WAIT, Duration::from_millis(200), || {
        let ok = leaders(&rb);
        async move { Ok::<_, kube::Error>(ok.then_some(())) }
    })
    .await
    .expect("takeover");
    back_date(&c, &ns, "dns-e-rndc-key", Utc::now() - TimeDelta::hours(2)).await;
    wait_secret(&c, &ns, "dns-e-rndc-key", "rotated by the successor", |s| {
        count(s) == 1
    })
    .await;
    rb.stop().await;
}
