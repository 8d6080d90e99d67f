//! Issue 13: rotation and reload really reach `named`. A real node (kubelet, containerd, runc;
//! `testkit::node`) runs BIND9 pods shaped like the Bindy operator's; `rndc` on the host checks
//! which key `named` in a pod accepts. The kubelet here refreshes Secret volumes every 10 s
//! (`e2e_node_default_sync.rs` runs the signal strategy with the default 1m).

mod node_support;
mod rotation_support;

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{Api, ResourceExt};
use node_support::*;
use rndc_warden::api::{
    ANNOTATION_CREATED_AT, EVENT_RNDC_KEY_ROTATED, EVENT_RNDC_SECRET_RELOAD_FAILED, RndcSecretRef,
};
use rndc_warden::policy::{Algorithm, key_secret_from_bytes};
use rndc_warden::rotation::reload::ANNOTATION_RELOAD_STRATEGY;
use rndc_warden::rotation::{ReloadStrategy, RotationArgs};
use rndc_warden_testkit::Bind9Workload;
use rotation_support::binary::run_cli;
use rotation_support::*;

fn owner_replica_set(pod: &Pod) -> String {
    pod.owner_references()
        .iter()
        .find(|o| o.kind == "ReplicaSet")
        .map(|o| o.name.clone())
        .unwrap_or_default()
}

fn fast(t: &RotationEnv) -> RotationArgs {
    RotationArgs {
        resync_period: Duration::from_secs(5),
        reload_debounce: Duration::from_secs(1),
        ..t.args()
    }
}

fn metric(rotator: &Rotator, series: &str) -> u64 {
    rotator_metric(rotator, series)
}

/// Checks the end state of one rotation with the rollout strategy: a new ReplicaSet and pod,
/// the new key accepted and the old refused, status and Events.
async fn assert_rolled(
    t: &RotationEnv,
    w: &Bind9Workload,
    before: &Pod,
    old: &Secret,
    count_wanted: u32,
) -> (Pod, Secret) {
    let (c, ns) = (t.client(), t.ns());
    let new = wait_secret(c, ns, &w.secret, "the rotated Secret", |s| {
        count(s) == count_wanted
    })
    .await;
    let pod = wait_new_pod(c, ns, w, &uid(before)).await;
    assert_ne!(
        owner_replica_set(&pod),
        owner_replica_set(before),
        "a new ReplicaSet"
    );
    wait_new_key_only(w, &new, old).await;
    wait_converged(
        c,
        ns,
        std::slice::from_ref(&w.name),
        Algorithm::HmacSha256,
        count_wanted,
        WAIT,
    )
    .await;
    (pod, new)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_a_due_key_back_dating_and_rotate_reach_named_in_a_new_pod() {
    let (_node, t) = node_env("node-rollout", SHORT_SYNC, false).await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let name = "rollout";
    let secret_name = format!("{name}-rndc-key");
    // A managed key that falls due five seconds from now.
    let created = Utc::now() - TimeDelta::hours(1) + TimeDelta::seconds(5);
    let s0 = create_key_secret(
        &c,
        &ns,
        &secret_name,
        Algorithm::HmacSha256,
        created,
        TimeDelta::hours(1),
    )
    .await;
    create_instance(
        &c,
        &ns,
        name,
        standalone(Some(rndc_key(true, "1h", "hmac-sha256"))),
    )
    .await;
    let (w, pod0) = deploy(&c, &ns, name, &secret_name).await;
    assert!(
        accepts(&w, &s0).await,
        "named in the pod takes its Secret's key"
    );

    let rotator = t.start_with(fast(&t));
    // 1. It falls due.
    let (pod1, s1) = assert_rolled(&t, &w, &pod0, &s0, 1).await;
    assert!(
        !events(&c, &ns, name, EVENT_RNDC_KEY_ROTATED)
            .await
            .is_empty()
    );
    assert_eq!(
        metric(&rotator, "rndc_warden_rotations_total{result=\"success\"} "),
        1
    );

    // 2. Back-dating rndc-created-at (the documented manual trigger).
    back_date(&c, &ns, &secret_name, Utc::now() - TimeDelta::days(400)).await;
    let (pod2, s2) = assert_rolled(&t, &w, &pod1, &s1, 2).await;

    // 3. `rndc-warden rotate` (under an hour after the last rotation: --force).
    let kubeconfig = t.env.cp.kubeconfig_path().to_path_buf();
    let (code, out, err) = run_cli(&kubeconfig, &["rotate", name, "-n", &ns, "--force"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (_pod3, s3) = assert_rolled(&t, &w, &pod2, &s2, 3).await;
    assert!(
        !accepts(&w, &s0).await && !accepts(&w, &s1).await,
        "no old key works"
    );
    assert_eq!(
        metric(&rotator, "rndc_warden_rotations_total{result=\"success\"} "),
        3
    );
    // status.rndcSecretVersion names the key revision the pods run.
    wait_instance_version(
        &t,
        name,
        annotation(&s3, ANNOTATION_CREATED_AT).expect("created-at"),
    )
    .await;
    rotator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_reloads_named_in_the_same_pod_after_the_kubelet_projects_the_key() {
    let (_node, t) = node_env("node-signal", SHORT_SYNC, true).await;
    signal_round(&t, "signal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_falls_back_to_a_rollout_when_the_pod_never_sees_the_new_file() {
    let (_node, t) = node_env("node-deadline", SHORT_SYNC, true).await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let name = "subpath";
    let secret_name = format!("{name}-rndc-key");
    let s0 = create_key_secret(
        &c,
        &ns,
        &secret_name,
        Algorithm::HmacSha256,
        Utc::now() - TimeDelta::days(2),
        TimeDelta::days(30),
    )
    .await;
    let mut instance = rndc_warden::api::Bind9Instance::new(
        name,
        standalone(Some(rndc_key(true, "720h", "hmac-sha256"))),
    );
    instance.metadata.annotations = Some(
        [(ANNOTATION_RELOAD_STRATEGY.to_owned(), "signal".to_owned())]
            .into_iter()
            .collect(),
    );
    Api::<rndc_warden::api::Bind9Instance>::namespaced(c.clone(), &ns)
        .create(&Default::default(), &instance)
        .await
        .expect("instance");
    // rndc.key mounted with subPath: the kubelet never updates it in the running pod.
    let mut w = Bind9Workload::new(name, &secret_name).expect("workload");
    w.key_sub_path = true;
    let (w, pod0) = deploy_workload(&c, &ns, &w).await;
    let rotator = t.start_with(RotationArgs {
        reload_signal_deadline: Duration::from_secs(20),
        ..fast(&t)
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    back_date(&c, &ns, &secret_name, Utc::now() - TimeDelta::days(400)).await;
    let s1 = wait_secret(&c, &ns, &secret_name, "rotated", |s| count(s) == 1).await;
    let pod1 = wait_new_pod(&c, &ns, &w, &uid(&pod0)).await;
    wait_new_key_only(&w, &s1, &s0).await;
    assert_ne!(owner_replica_set(&pod1), owner_replica_set(&pod0));
    let failed = events(&c, &ns, name, EVENT_RNDC_SECRET_RELOAD_FAILED).await;
    assert!(
        failed.iter().any(|e| {
            let note = e.note.as_deref().unwrap_or_default();
            note.contains("did not see the new key file")
                && note.contains("falling back to a rollout")
        }),
        "{failed:?}"
    );
    rotator.stop().await;
}

fn user_key(name: &str, byte: u8) -> Secret {
    let data = key_secret_from_bytes("bindy-operator", Algorithm::HmacSha256, &[byte; 32])
        .expect("key")
        .into_data();
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        data: Some(data),
        ..Secret::default()
    }
}

async fn instance_with_secret_ref(c: &kube::Client, ns: &str, name: &str, secret: &str) {
    let mut block = rndc_key(false, "720h", "hmac-sha256");
    block.secret_ref = Some(RndcSecretRef {
        name: secret.to_owned(),
        ..RndcSecretRef::default()
    });
    create_instance(c, ns, name, standalone(Some(block))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_secret_ref_change_reloads_exactly_the_pods_using_it() {
    let (_node, t) = node_env("node-external", SHORT_SYNC, false).await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let secrets: Api<Secret> = Api::namespaced(c.clone(), &ns);
    let shared0 = secrets
        .create(&Default::default(), &user_key("shared-key", 1))
        .await
        .expect("shared");
    let other = secrets
        .create(&Default::default(), &user_key("other-key", 2))
        .await
        .expect("other");
    let mut deployed = Vec::new();
    for (name, secret) in [
        ("ext-a", "shared-key"),
        ("ext-b", "shared-key"),
        ("ext-c", "other-key"),
    ] {
        instance_with_secret_ref(&c, &ns, name, secret).await;
        deployed.push(deploy(&c, &ns, name, secret).await);
    }
    let rotator = t.start_with(fast(&t));
    for (w, _) in &deployed {
        let secret = if w.secret == "shared-key" {
            &shared0
        } else {
            &other
        };
        let revision = rndc_warden::policy::key_revision(secret).expect("revision");
        wait_instance_version(&t, &w.name, &revision).await;
    }
    // Vault or ESO writes a new key into the Secret (all data keys in one update).
    let mut next = user_key("shared-key", 3);
    next.metadata.resource_version = shared0.metadata.resource_version.clone();
    let shared1 = secrets
        .replace("shared-key", &Default::default(), &next)
        .await
        .expect("external update");
    for (w, pod) in &deployed[..2] {
        wait_new_pod(&c, &ns, w, &uid(pod)).await;
        wait_new_key_only(w, &shared1, &shared0).await;
        let revision = rndc_warden::policy::key_revision(&shared1).expect("revision");
        wait_instance_version(&t, &w.name, &revision).await;
    }
    let (w, pod) = &deployed[2];
    let now = current_pod(&c, &ns, w).await;
    assert_eq!(
        uid(&now),
        uid(pod),
        "the instance on the other Secret kept its pod"
    );
    assert!(accepts(w, &other).await);
    assert_eq!(
        metric(
            &rotator,
            "bind9_rndc_secret_reloads_total{status=\"success\"} "
        ),
        2
    );
    rotator.stop().await;
}

async fn wait_instance_version(t: &RotationEnv, name: &str, version: &str) {
    let api: Api<rndc_warden::api::Bind9Instance> = Api::namespaced(t.client().clone(), t.ns());
    rndc_warden_testkit::poll_until(
        &format!("{name} status.rndcSecretVersion {version}"),
        WAIT,
        Duration::from_millis(200),
        || {
            let api = api.clone();
            async move {
                let i = api.get(name).await?;
                let v = i.status.and_then(|s| s.rndc_secret_version);
                Ok::<_, kube::Error>((v.as_deref() == Some(version)).then_some(()))
            }
        },
    )
    .await
    .expect("rndcSecretVersion");
}

/// The seed's integration test (seed 000, "Testing Plan"), step by step with kubectl; the
/// `sleep 10` is a wait, and `kubectl wait --for=condition=Ready` waits for the instance's pod
/// (the Ready condition of a Bind9Instance is the Bindy operator's, which does not run here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_integration_test_deleting_the_secret_reprovisions_and_reloads() {
    let (_node, t) = node_env("node-seed", SHORT_SYNC, true).await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let cp = t.env.cp;
    let kubectl = |args: Vec<String>| async move {
        cp.kubectl(args)
            .await
            .expect("kubectl runs")
            .ok()
            .expect("kubectl succeeds")
    };
    let rotator = t.start_with(RotationArgs {
        reload_strategy: ReloadStrategy::Signal,
        ..fast(&t)
    });
    // kubectl apply -f examples/bind9instance.yaml
    let w = Bind9Workload::new("test-instance", "test-instance-rndc-key").expect("workload");
    let manifest = format!(
        "apiVersion: bindy.firestoned.io/v1beta1
kind: Bind9Instance
metadata:
  name: test-instance
  namespace: {ns}
spec:
  role: primary
  rndcKey:
    autoRotate: true
    rotateAfter: 720h
    algorithm: hmac-sha256
"
    );
    cp.kubectl_apply(&manifest)
        .await
        .expect("kubectl")
        .ok()
        .expect("apply");
    let s0 = wait_secret(&c, &ns, &w.secret, "provisioned", |_| true).await;
    w.apply(&c, &ns).await.expect("workload");
    kubectl(
        [
            "wait",
            "--for=condition=Ready",
            "pod",
            "-l",
            "app=bind9,instance=test-instance",
            "-n",
            &ns,
            "--timeout=150s",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(accepts(&w, &s0).await);
    // The rotator has seen the pods on this key before it changes.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // kubectl delete secret test-instance-rndc-key
    kubectl(
        ["delete", "secret", "test-instance-rndc-key", "-n", &ns]
            .map(String::from)
            .to_vec(),
    )
    .await;
    let s1 = wait_secret(&c, &ns, &w.secret, "re-provisioned", |s| {
        s.metadata.uid != s0.metadata.uid
    })
    .await;
    // kubectl logs -l app=bind9,instance=test-instance | grep "reloading configuration"
    rndc_warden_testkit::poll_until(
        "reloading configuration in the pod logs",
        POD_WAIT,
        Duration::from_secs(1),
        || async {
            let out = cp
                .kubectl(["logs", "-l", "app=bind9,instance=test-instance", "-n", &ns])
                .await?
                .ok()?;
            Ok::<_, rndc_warden_testkit::Error>(
                out.stdout.contains("reloading configuration").then_some(()),
            )
        },
    )
    .await
    .expect("BIND9 reloaded");
    // rndc -s test-instance status  # Should succeed with new key
    wait_new_key_only(&w, &s1, &s0).await;
    // kubectl get bind9instance test-instance -o jsonpath='{.status.rndcSecretVersion}'
    let revision1 = rndc_warden::policy::key_revision(&s1).expect("revision");
    wait_instance_version(&t, "test-instance", &revision1).await;
    let out = kubectl(
        [
            "get",
            "bind9instance",
            "test-instance",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.rndcSecretVersion}",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(out.stdout.trim(), revision1);
    rotator.stop().await;
}
