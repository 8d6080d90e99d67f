//! Issue 12, rotator side: each defect reproduced by writing exactly what the Bindy operator 0.6.0
//! writes (`reference/upstream-bindy.md`): its CRDs, its Secret (no label, a 32-byte key whatever
//! the algorithm, `+00:00` annotations with nanoseconds, count 0 after a re-create), its
//! Deployment (the `rndc-key` volume at /etc/bind/keys), its rollout marker (`Utc::now()`, sub-
//! second) and its status writer (replaces `status.conditions`). The rotator runs in-process with
//! the default flags (beside Bindy: no provisioning). A test binary of its own: CRDs are
//! cluster-wide.

mod rotation_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, PodSpec, PodTemplateSpec, Secret, SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, Client, ResourceExt};
use rndc_warden::api::{
    ANNOTATION_CREATED_AT, ANNOTATION_ROTATE_AT, ANNOTATION_ROTATED_AT, ANNOTATION_ROTATION_COUNT,
    Bind9Instance, Bind9InstanceSpec, InlineSecret, InlineSecretMetadata, LABEL_RNDC_KEY,
};
use rndc_warden::policy::{Algorithm, PolicyConfig, Verdict, parse_time};
use rndc_warden::rotate::{RotateError, request};
use rndc_warden_testkit::{poll_until, wait_for};
use rotation_support::*;
use serde_json::json;

fn upstream_crds() -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/upstream-crds");
    ["bind9instances.crd.yaml", "bind9clusters.crd.yaml"]
        .iter()
        .map(|file| std::fs::read_to_string(format!("{dir}/{file}")).expect("upstream CRD"))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

async fn env(name: &str) -> RotationEnv {
    RotationEnv::with_crds_and_rules(name, &upstream_crds(), rotator_rules()).await
}

/// The rotator with the default flags (beside Bindy) and a short resync.
fn start(t: &RotationEnv) -> Rotator {
    let mut args = t.args_beside_bindy();
    args.resync_period = Duration::from_secs(2);
    t.start_with(args)
}

/// Bindy's `to_rfc3339()`: `+00:00` and the time's own sub-second digits.
fn bindy_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339()
}

/// The data of a key as Bindy builds it: 32 random bytes for every algorithm.
fn bindy_data(algorithm: Algorithm) -> BTreeMap<String, ByteString> {
    let bytes: [u8; 32] = rand::random();
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let alg = algorithm.name();
    BTreeMap::from([
        ("algorithm".to_owned(), ByteString(alg.as_bytes().to_vec())),
        (
            "key-name".to_owned(),
            ByteString(b"bindy-operator".to_vec()),
        ),
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
}

/// Bindy's annotations for a key created at `created`.
fn bindy_annotations(
    created: DateTime<Utc>,
    count: u32,
    rotate_after: Option<TimeDelta>,
) -> BTreeMap<String, String> {
    let mut a = BTreeMap::from([
        (ANNOTATION_CREATED_AT.to_owned(), bindy_time(created)),
        (ANNOTATION_ROTATION_COUNT.to_owned(), count.to_string()),
    ]);
    if let Some(after) = rotate_after {
        a.insert(ANNOTATION_ROTATE_AT.to_owned(), bindy_time(created + after));
    }
    a
}

/// Creates `<instance>-rndc-key` exactly as Bindy does (POST, no label, no type).
async fn bindy_create_secret(
    c: &Client,
    ns: &str,
    name: &str,
    algorithm: Algorithm,
    count: u32,
    rotate_after: Option<TimeDelta>,
) -> Secret {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            annotations: Some(bindy_annotations(Utc::now(), count, rotate_after)),
            ..ObjectMeta::default()
        },
        data: Some(bindy_data(algorithm)),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("Bindy's Secret")
}

/// Bindy's rotation: an unconditional PUT of a fresh Secret (labels and other annotations
/// dropped), then the marker merge patch with `Utc::now().to_rfc3339()`.
async fn bindy_rotate(c: &Client, ns: &str, secret: &str, deployment: &str, count: u32) {
    let api: Api<Secret> = Api::namespaced(c.clone(), ns);
    let mut current = api.get(secret).await.expect("secret");
    current.metadata.labels = None;
    current.metadata.resource_version = None;
    current.metadata.managed_fields = None;
    current.metadata.annotations = Some(bindy_annotations(
        Utc::now(),
        count,
        Some(TimeDelta::hours(720)),
    ));
    current.data = Some(bindy_data(Algorithm::HmacSha256));
    api.replace(secret, &PostParams::default(), &current)
        .await
        .expect("Bindy's PUT");
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {
        ANNOTATION_ROTATED_AT: Utc::now().to_rfc3339()
    }}}}});
    Api::<Deployment>::namespaced(c.clone(), ns)
        .patch(deployment, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("Bindy's marker");
}

/// Bindy's Deployment `<instance>`: the RNDC Secret as volume `rndc-key` at /etc/bind/keys.
async fn bindy_deployment(c: &Client, ns: &str, name: &str, secret: &str) -> Deployment {
    let labels = BTreeMap::from([
        ("app".to_owned(), "bind9".to_owned()),
        ("instance".to_owned(), name.to_owned()),
    ]);
    let mount = VolumeMount {
        name: "rndc-key".into(),
        mount_path: "/etc/bind/keys".into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    let deployment = Deployment {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        spec: DeploymentSpec {
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: ["bind9", "api"]
                        .iter()
                        .map(|n| Container {
                            name: (*n).into(),
                            image: Some("bind9:test".into()),
                            volume_mounts: Some(vec![mount.clone()]),
                            ..Container::default()
                        })
                        .collect(),
                    volumes: Some(vec![Volume {
                        name: "rndc-key".into(),
                        secret: Some(SecretVolumeSource {
                            secret_name: Some(secret.to_owned()),
                            ..SecretVolumeSource::default()
                        }),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    };
    Api::<Deployment>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &deployment)
        .await
        .expect("Bindy's Deployment")
}

/// A Bindy-style instance (upstream's schema wants `clusterRef`; empty = standalone).
async fn instance(c: &Client, ns: &str, name: &str, algorithm: &str) -> Bind9Instance {
    let spec = Bind9InstanceSpec {
        cluster_ref: Some(String::new()),
        ..standalone(Some(rndc_key(true, "720h", algorithm)))
    };
    create_instance(c, ns, name, spec).await
}

/// Bindy's status writer: `rndcKeyRotation` from the Secret and `conditions` replaced wholesale.
async fn bindy_status_write(c: &Client, ns: &str, name: &str, secret: &Secret) {
    let created = created_at(secret).expect("created");
    let count = count(secret);
    let mut rotation = json!({
        "createdAt": bindy_time(created),
        "rotationCount": count,
    });
    if let Some(r) = annotation(secret, ANNOTATION_ROTATE_AT).and_then(parse_time) {
        rotation["rotateAt"] = json!(bindy_time(r));
    }
    if count > 0 {
        rotation["lastRotatedAt"] = json!(bindy_time(created));
    }
    let patch = json!({"status": {
        "rndcKeyRotation": rotation,
        "conditions": [{"type": "Ready", "status": "True", "reason": "AllReady",
                        "message": "ok", "lastTransitionTime": bindy_time(Utc::now())}],
    }});
    Api::<Bind9Instance>::namespaced(c.clone(), ns)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("Bindy's status write");
}

async fn generation(c: &Client, ns: &str, name: &str) -> i64 {
    Api::<Deployment>::namespaced(c.clone(), ns)
        .get(name)
        .await
        .expect("deployment")
        .metadata
        .generation
        .unwrap_or_default()
}

/// Counts the writes (MODIFIED events) to one Secret from now on.
fn count_writes(c: &Client, ns: &str, name: &str, from: &str) -> Arc<AtomicUsize> {
    let writes = Arc::new(AtomicUsize::new(0));
    let counter = writes.clone();
    let api: Api<Secret> = Api::namespaced(c.clone(), ns);
    let params = WatchParams::default().fields(&format!("metadata.name={name}"));
    let from = from.to_owned();
    tokio::spawn(async move {
        let Ok(stream) = api.watch(&params, &from).await else {
            return;
        };
        let mut stream = std::pin::pin!(stream);
        while let Some(Ok(event)) = stream.next().await {
            if matches!(event, WatchEvent::Modified(_)) {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    writes
}

async fn pause(seconds: i64) {
    let until = Utc::now() + TimeDelta::seconds(seconds);
    wait_for("time to pass", WAIT, || async move { Utc::now() >= until })
        .await
        .expect("clock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindy_recreated_short_key_is_remediated_in_one_write() {
    let t = env("bindy-short").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    instance(&c, &ns, "dns-a", "hmac-sha512").await;
    bindy_deployment(&c, &ns, "dns-a", "dns-a-rndc-key").await;
    // The count Bindy's status showed before its delete-and-create (algorithm change).
    let patch = json!({"status": {"rndcKeyRotation": {
        "createdAt": bindy_time(Utc::now() - TimeDelta::days(3)), "rotationCount": 3}}});
    Api::<Bind9Instance>::namespaced(c.clone(), &ns)
        .patch_status("dns-a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("status");
    pause(1).await;
    let bindy = bindy_create_secret(
        &c,
        &ns,
        "dns-a-rndc-key",
        Algorithm::HmacSha512,
        0,
        Some(TimeDelta::hours(720)),
    )
    .await;
    let writes = count_writes(
        &c,
        &ns,
        "dns-a-rndc-key",
        &bindy.resource_version().unwrap_or_default(),
    );
    let g0 = generation(&c, &ns, "dns-a").await;
    let rotator = start(&t);

    let fixed = wait_secret(&c, &ns, "dns-a-rndc-key", "remediated", |s| {
        key_bytes(s).len() == 64
    })
    .await;
    assert_eq!(
        fixed.labels().get(LABEL_RNDC_KEY).map(String::as_str),
        Some("true")
    );
    assert_eq!(count(&fixed), 4, "the count continues from the status (3)");
    assert!(rndc_key_file(&fixed).contains("hmac-sha512"));
    let created = annotation(&fixed, ANNOTATION_CREATED_AT)
        .expect("created")
        .to_owned();
    assert!(annotation(&fixed, ANNOTATION_ROTATE_AT).is_some());
    wait_marker(&c, &ns, "dns-a", &created).await;
    pause(4).await;
    assert_eq!(
        writes.load(Ordering::SeqCst),
        1,
        "one write took the Secret from below policy to valid"
    );
    assert_eq!(generation(&c, &ns, "dns-a").await, g0 + 1, "one rollout");
    assert!(
        get_secret(&c, &ns, "dns-a-rndc").await.is_none(),
        "no Secret nobody mounts"
    );
    let text = rotator.metrics.encode();
    assert!(
        text.contains("rndc_warden_key_below_policy{namespace=")
            && !text
                .lines()
                .any(|l| l.starts_with("rndc_warden_key_below_policy") && l.ends_with(" 1")),
        "{text}"
    );
    rotator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindy_keys_are_not_rotated_again_and_each_key_revision_rolls_once() {
    let t = env("bindy-once").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    instance(&c, &ns, "dns-b", "hmac-sha256").await;
    // Bindy's order: the Secret, then the Deployment that mounts it (same second).
    let first = bindy_create_secret(
        &c,
        &ns,
        "dns-b-rndc-key",
        Algorithm::HmacSha256,
        0,
        Some(TimeDelta::hours(720)),
    )
    .await;
    bindy_deployment(&c, &ns, "dns-b", "dns-b-rndc-key").await;
    let g0 = generation(&c, &ns, "dns-b").await;
    let rotator = start(&t);

    // (3) A sub-second creation time is not the future: no extra rotation; (7) the new
    // Deployment already mounts the key: no rollout.
    wait_secret(&c, &ns, "dns-b-rndc-key", "taken over", |s| {
        s.labels().contains_key(LABEL_RNDC_KEY)
    })
    .await;
    pause(6).await;
    let s = get_secret(&c, &ns, "dns-b-rndc-key").await.expect("secret");
    assert_eq!(count(&s), 0, "not rotated again");
    assert_eq!(key_bytes(&s), key_bytes(&first));
    assert_eq!(
        generation(&c, &ns, "dns-b").await,
        g0,
        "no rollout of a new Deployment"
    );

    // (7) Bindy rotates and rolls: its marker covers the key, rndc-warden does not roll again.
    bindy_rotate(&c, &ns, "dns-b-rndc-key", "dns-b", 1).await;
    let g1 = generation(&c, &ns, "dns-b").await;
    assert_eq!(g1, g0 + 1);
    wait_secret(&c, &ns, "dns-b-rndc-key", "labelled again", |s| {
        s.labels().contains_key(LABEL_RNDC_KEY) && count(s) == 1
    })
    .await;
    pause(8).await;
    assert_eq!(
        generation(&c, &ns, "dns-b").await,
        g1,
        "Bindy's rollout is not repeated"
    );

    // The manual trigger: one rotation, one rollout.
    back_date(
        &c,
        &ns,
        "dns-b-rndc-key",
        Utc::now() - TimeDelta::hours(721),
    )
    .await;
    let rotated = wait_secret(&c, &ns, "dns-b-rndc-key", "rotated", |s| count(s) == 2).await;
    let created = annotation(&rotated, ANNOTATION_CREATED_AT)
        .expect("created")
        .to_owned();
    wait_marker(&c, &ns, "dns-b", &created).await;
    pause(4).await;
    assert_eq!(generation(&c, &ns, "dns-b").await, g1 + 1, "one rollout");
    assert_eq!(
        count(&get_secret(&c, &ns, "dns-b-rndc-key").await.expect("s")),
        2
    );

    // Editing only rndc-created-at (no key change) rolls nothing.
    let edited = parse_time(&created).expect("time") - TimeDelta::minutes(10);
    back_date(&c, &ns, "dns-b-rndc-key", edited).await;
    pause(8).await;
    assert_eq!(
        generation(&c, &ns, "dns-b").await,
        g1 + 1,
        "no rollout without a key change"
    );
    assert_eq!(
        count(&get_secret(&c, &ns, "dns-b-rndc-key").await.expect("s")),
        2
    );
    rotator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_false_creates_nothing_and_a_deleting_instance_leaves_no_orphan() {
    let t = env("bindy-provision").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    instance(&c, &ns, "dns-g", "hmac-sha256").await;
    let mut inline = rndc_key(true, "720h", "hmac-sha256");
    inline.secret = Some(InlineSecret {
        metadata: InlineSecretMetadata {
            name: "inline-rndc".into(),
            ..InlineSecretMetadata::default()
        },
        ..InlineSecret::default()
    });
    let spec = Bind9InstanceSpec {
        cluster_ref: Some(String::new()),
        ..standalone(Some(inline))
    };
    create_instance(&c, &ns, "dns-i", spec).await;
    let rotator = start(&t);
    pause(6).await;
    let secrets = Api::<Secret>::namespaced(c.clone(), &ns)
        .list(&Default::default())
        .await
        .expect("list")
        .items;
    assert!(
        secrets.iter().all(|s| !s.name_any().contains("rndc")),
        "the operator creates these Secrets, not rndc-warden: {:?}",
        secrets
            .iter()
            .map(ResourceExt::name_any)
            .collect::<Vec<_>>()
    );
    rotator.stop().await;

    // Even standalone (--provision true), an instance being deleted gets no Secret back.
    let standalone_rotator = t.start();
    wait_secret(&c, &ns, "dns-g-rndc-key", "provisioned standalone", |s| {
        created_at(s).is_some()
    })
    .await;
    let instances: Api<Bind9Instance> = Api::namespaced(c.clone(), &ns);
    let patch =
        json!({"metadata": {"finalizers": ["bindy.firestoned.io/bind9instance-finalizer"]}});
    instances
        .patch("dns-g", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("finalizer");
    instances
        .delete("dns-g", &DeleteParams::default())
        .await
        .expect("delete");
    poll_until("Terminating", WAIT, Duration::from_millis(100), || {
        let instances = instances.clone();
        async move {
            let i = instances.get("dns-g").await?;
            Ok::<_, kube::Error>(i.metadata.deletion_timestamp.is_some().then_some(()))
        }
    })
    .await
    .expect("terminating");
    // The operator's finalizer deletes the Secret.
    Api::<Secret>::namespaced(c.clone(), &ns)
        .delete("dns-g-rndc-key", &DeleteParams::default())
        .await
        .expect("delete Secret");
    pause(6).await;
    assert!(
        get_secret(&c, &ns, "dns-g-rndc-key").await.is_none(),
        "re-created while the instance is being deleted"
    );
    let patch = json!({"metadata": {"finalizers": null}});
    instances
        .patch("dns-g", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("finalizer removed");
    standalone_rotator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindy_status_writer_and_crds_cause_no_status_write_loop() {
    let t = env("bindy-status").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    instance(&c, &ns, "dns-s", "hmac-sha256").await;
    bindy_create_secret(
        &c,
        &ns,
        "dns-s-rndc-key",
        Algorithm::HmacSha256,
        2,
        Some(TimeDelta::hours(720)),
    )
    .await;
    bindy_deployment(&c, &ns, "dns-s", "dns-s-rndc-key").await;
    let rotator = start(&t);
    let secret = wait_secret(&c, &ns, "dns-s-rndc-key", "taken over", |s| {
        s.labels().contains_key(LABEL_RNDC_KEY)
    })
    .await;
    let instances: Api<Bind9Instance> = Api::namespaced(c.clone(), &ns);
    let shown = poll_until("status", WAIT, Duration::from_millis(100), || {
        let instances = instances.clone();
        async move {
            let i = instances.get("dns-s").await?;
            Ok::<_, kube::Error>(
                i.status
                    .as_ref()
                    .and_then(|s| s.rndc_key_rotation.clone())
                    .filter(|r| r.rotation_count == Some(2)),
            )
        }
    })
    .await
    .expect("status.rndcKeyRotation");
    // Bindy's exact format, so its writer and ours write the same value.
    assert_eq!(
        Some(shown.created_at.as_str()),
        annotation(&secret, ANNOTATION_CREATED_AT),
        "createdAt as Bindy serialises it"
    );
    assert!(shown.created_at.ends_with("+00:00"), "{shown:?}");
    // Bindy's status writer: same rotation block, conditions replaced wholesale.
    bindy_status_write(&c, &ns, "dns-s", &secret).await;
    let rv = instances
        .get("dns-s")
        .await
        .expect("instance")
        .resource_version();
    pause(8).await;
    let after = instances.get("dns-s").await.expect("instance");
    assert_eq!(
        after.resource_version(),
        rv,
        "no status write after Bindy's"
    );
    let status = after.status.expect("status");
    assert!(
        status.rndc_key_rotation_status.is_none(),
        "pruned, not written again"
    );
    assert!(status.rndc_secret_version.is_none());
    rotator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_and_rotate_find_bindy_secrets_and_a_stuck_key_is_a_failure() {
    let t = env("bindy-cli").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    instance(&c, &ns, "dns-c", "hmac-sha384").await;
    bindy_create_secret(
        &c,
        &ns,
        "dns-c-rndc-key",
        Algorithm::HmacSha384,
        0,
        Some(TimeDelta::hours(720)),
    )
    .await;
    bindy_deployment(&c, &ns, "dns-c", "dns-c-rndc-key").await;
    // A Deployment that mounts another Secret: that one is the key.
    instance(&c, &ns, "dns-m", "hmac-sha256").await;
    bindy_create_secret(&c, &ns, "mounted-key", Algorithm::HmacSha256, 0, None).await;
    bindy_deployment(&c, &ns, "dns-m", "mounted-key").await;
    let policy = PolicyConfig::default();
    let rows = rndc_warden::audit::collect(&c, Some(&ns), &policy, "{instance}")
        .await
        .expect("audit");
    let row = |name: &str| {
        rows.iter()
            .find(|r| r.instance == name)
            .expect("row")
            .clone()
    };
    assert_eq!(row("dns-c").secret, "dns-c-rndc-key");
    assert_eq!(row("dns-c").verdict, Verdict::Fail, "{:?}", row("dns-c"));
    assert!(
        row("dns-c").detail.contains("below policy"),
        "{:?}",
        row("dns-c")
    );
    assert_eq!(row("dns-m").secret, "mounted-key");
    let refused = request(&c, &ns, "dns-c", true, &policy, Utc::now()).await;
    assert!(
        matches!(refused, Err(RotateError::BelowPolicy { .. })),
        "--force on a stuck key says why: {refused:?}"
    );
}
