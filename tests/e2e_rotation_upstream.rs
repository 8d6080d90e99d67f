//! The rotator with the Bindy operator's own CRDs installed (SPEC §11), through the real binary
//! as the chart's ServiceAccount. Upstream's schema has no `status.rndcKeyRotationStatus` (it is
//! pruned); the rotator writes upstream's `status.rndcKeyRotation` so `kubectl get` shows the
//! truth, and since it never schedules from status the pruned field cannot cause a rotation (or
//! status-write) loop. A test binary of its own, because CRDs are cluster-wide.

mod rotation_support;

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use kube::{Api, ResourceExt};
use rndc_warden::api::{ANNOTATION_CREATED_AT, Bind9Instance, Bind9InstanceSpec};
use rndc_warden::policy::parse_time;
use rndc_warden_testkit::poll_until;
use rotation_support::binary::WardenProcess;
use rotation_support::*;

fn upstream_crds() -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/upstream-crds");
    ["bind9instances.crd.yaml", "bind9clusters.crd.yaml"]
        .iter()
        .map(|file| std::fs::read_to_string(format!("{dir}/{file}")).expect("upstream CRD"))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// `status.rndcKeyRotation` as `kubectl get -o yaml` shows it.
async fn kubectl_status(t: &RotationEnv, name: &str) -> serde_yaml_ng::Value {
    let out = t
        .env
        .cp
        .kubectl(["get", "bind9instance", name, "-n", t.ns(), "-o", "yaml"])
        .await
        .expect("kubectl")
        .ok()
        .expect("kubectl get");
    let object: serde_yaml_ng::Value = serde_yaml_ng::from_str(&out.stdout).expect("yaml");
    object["status"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_upstream_crds_keys_are_provisioned_rotated_once_and_status_shows_through_kubectl() {
    let t = RotationEnv::for_binary_with_crds("rot-upstream", &upstream_crds()).await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    create_deployment(&c, &ns, "up").await;
    // Upstream's schema requires `clusterRef`; empty means a standalone instance.
    let spec = Bind9InstanceSpec {
        cluster_ref: Some(String::new()),
        ..standalone(Some(rndc_key(true, "24h", "hmac-sha384")))
    };
    create_instance(&c, &ns, "up", spec).await;
    let resync = Duration::from_secs(2);
    let mut warden = WardenProcess::new(
        "upstream-replica",
        t.sa_kubeconfig(),
        &ns,
        &["--resync-period", "2s"],
    );
    warden.start();

    // Provisioning.
    let first = wait_secret(&c, &ns, "up-rndc-key", "provisioned", |s| {
        created_at(s).is_some()
    })
    .await;
    assert_eq!(count(&first), 0);
    assert_eq!(key_bytes(&first).len(), 48, "hmac-sha384 keys are 48 bytes");

    // Rotation (the manual trigger).
    back_date(&c, &ns, "up-rndc-key", Utc::now() - TimeDelta::hours(25)).await;
    let rotated = wait_secret(&c, &ns, "up-rndc-key", "rotated", |s| count(s) == 1).await;
    let created = annotation(&rotated, ANNOTATION_CREATED_AT)
        .expect("created-at")
        .to_owned();
    wait_marker(&c, &ns, "up", &created).await;
    let instances: Api<Bind9Instance> = Api::namespaced(c.clone(), &ns);
    let settled = poll_until("upstream status", WAIT, Duration::from_millis(200), || {
        let instances = instances.clone();
        let created = created.clone();
        async move {
            let i = instances.get("up").await?;
            let ok = i
                .status
                .as_ref()
                .and_then(|s| s.rndc_key_rotation.as_ref())
                .is_some_and(|r| {
                    parse_time(&r.created_at) == parse_time(&created) && r.rotation_count == Some(1)
                });
            Ok::<_, kube::Error>(ok.then_some(i))
        }
    })
    .await
    .expect("status.rndcKeyRotation");
    assert!(
        settled
            .status
            .as_ref()
            .is_some_and(|s| s.rndc_key_rotation_status.is_none()),
        "upstream's schema prunes rndcKeyRotationStatus: {:?}",
        settled.status
    );

    // What `kubectl get -o yaml` shows.
    let status = kubectl_status(&t, "up").await;
    let shown = &status["rndcKeyRotation"];
    assert_eq!(
        shown["createdAt"].as_str().and_then(parse_time),
        parse_time(&created),
        "{status:?}"
    );
    assert_eq!(shown["rotationCount"].as_u64(), Some(1), "{status:?}");
    assert_eq!(
        shown["lastRotatedAt"].as_str().and_then(parse_time),
        parse_time(&created),
        "{status:?}"
    );
    assert!(shown["rotateAt"].as_str().is_some(), "{status:?}");
    assert!(status.get("rndcKeyRotationStatus").is_none(), "{status:?}");

    // No loop: over several resync periods the key stays rotated once and neither the Secret
    // nor the instance is written again. Progress of the passes is visible in the gauge the
    // rotator recomputes on every pass.
    let secret_rv = rotated.resource_version();
    let instance_rv = settled.resource_version();
    let start = poll_until("seconds_until", WAIT, Duration::from_millis(200), || {
        let warden = &warden;
        async move { Ok::<_, kube::Error>(warden.seconds_until("up").await) }
    })
    .await
    .expect("gauge");
    poll_until(
        "several resync passes",
        WAIT,
        Duration::from_millis(200),
        || {
            let warden = &warden;
            async move {
                let now = warden.seconds_until("up").await.unwrap_or(start);
                Ok::<_, kube::Error>((start - now >= 3.0 * resync.as_secs_f64()).then_some(()))
            }
        },
    )
    .await
    .expect("passes");
    warden.assert_running();
    let after = get_secret(&c, &ns, "up-rndc-key").await.expect("secret");
    assert_eq!(count(&after), 1, "rotated exactly once");
    assert_eq!(
        after.resource_version(),
        secret_rv,
        "the Secret was not rewritten"
    );
    assert_eq!(
        instances
            .get("up")
            .await
            .expect("instance")
            .resource_version(),
        instance_rv,
        "the status was not rewritten"
    );
    assert_eq!(warden.count_lines("Successfully rotated RNDC Secret"), 1);
}
