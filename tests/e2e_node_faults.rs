//! Issue 13, faults on a real node: a pod deleted mid-rollout, the kubelet restarted while a
//! Secret changes, a broken key, rndc-warden SIGKILLed between the Secret write and the rollout.
//! Every case ends with every pod on the current valid key. The tests of this binary run one at
//! a time (one restarts the kubelet every other test depends on).

mod node_support;
mod rotation_support;

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::DeleteParams;
use node_support::*;
use rndc_warden::api::{EVENT_RNDC_SECRET_RELOAD_FAILED, RndcSecretRef};
use rndc_warden::policy::{Algorithm, key_revision, key_secret_from_bytes};
use rndc_warden::rotation::{ReloadStrategy, RotationArgs};
use rndc_warden_testkit::workload::live_pods;
use rotation_support::binary::WardenProcess;
use rotation_support::*;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn fast(t: &RotationEnv) -> RotationArgs {
    RotationArgs {
        resync_period: Duration::from_secs(5),
        reload_debounce: Duration::from_secs(1),
        ..t.args()
    }
}

async fn converged(t: &RotationEnv, name: &str, count_wanted: u32) {
    wait_converged(
        t.client(),
        t.ns(),
        &[name.to_owned()],
        Algorithm::HmacSha256,
        count_wanted,
        POD_WAIT,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_deleted_mid_rollout_ends_on_the_new_key() {
    let _serial = SERIAL.lock().await;
    let (_node, t) = node_env("node-fault-delete", SHORT_SYNC, false).await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let (w, pod0, s0) = managed(&t, "deleted").await;
    let rotator = t.start_with(fast(&t));
    tokio::time::sleep(Duration::from_secs(2)).await;
    back_date(&c, &ns, &w.secret, Utc::now() - TimeDelta::days(400)).await;
    let s1 = wait_secret(&c, &ns, &w.secret, "rotated", |s| count(s) == 1).await;
    // The rollout is under way: delete every pod of the instance, old and new.
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns);
    for pod in live_pods(&c, &ns, &w.selector()).await.expect("pods") {
        let _ = pods
            .delete(
                &pod.metadata.name.unwrap_or_default(),
                &DeleteParams::default(),
            )
            .await;
    }
    wait_new_pod(&c, &ns, &w, &uid(&pod0)).await;
    wait_new_key_only(&w, &s1, &s0).await;
    converged(&t, "deleted", 1).await;
    rotator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelet_restarted_while_the_secret_changes_ends_on_the_new_key() {
    let _serial = SERIAL.lock().await;
    let (node, t) = node_env("node-fault-kubelet", SHORT_SYNC, true).await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let (w, _pod0, s0) = managed(&t, "kubelet").await;
    let rotator = t.start_with(RotationArgs {
        reload_strategy: ReloadStrategy::Signal,
        reload_signal_deadline: Duration::from_secs(60),
        ..fast(&t)
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    node.stop_kubelet().await.expect("stop the kubelet");
    back_date(&c, &ns, &w.secret, Utc::now() - TimeDelta::days(400)).await;
    let s1 = wait_secret(&c, &ns, &w.secret, "rotated", |s| count(s) == 1).await;
    // The kubelet is down while the Secret changes and rndc-warden tries to reload.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(accepts(&w, &s0).await, "named still runs the old key");
    node.restart_kubelet()
        .await
        .expect("start the kubelet again");
    wait_new_key_only(&w, &s1, &s0).await;
    one_ready_pod(&c, &ns, &w).await;
    rotator.stop().await;
}

fn user_key(name: &str, algorithm: Algorithm, byte: u8) -> Secret {
    let data = key_secret_from_bytes(
        "bindy-operator",
        algorithm,
        &vec![byte; algorithm.output_len()],
    )
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_key_is_never_rolled_out_and_a_fixed_one_is() {
    let _serial = SERIAL.lock().await;
    let (_node, t) = node_env("node-fault-broken", SHORT_SYNC, false).await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let secrets: Api<Secret> = Api::namespaced(c.clone(), &ns);
    let good = secrets
        .create(
            &Default::default(),
            &user_key("vault-key", Algorithm::HmacSha256, 7),
        )
        .await
        .expect("secret");
    let mut block = rndc_key(false, "720h", "hmac-sha256");
    block.secret_ref = Some(RndcSecretRef {
        name: "vault-key".into(),
        ..RndcSecretRef::default()
    });
    create_instance(&c, &ns, "broken", standalone(Some(block))).await;
    let (w, pod0) = deploy(&c, &ns, "broken", "vault-key").await;
    let rotator = t.start_with(fast(&t));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A sync writes a key the policy denies (hmac-md5).
    let mut broken = user_key("vault-key", Algorithm::HmacMd5, 8);
    broken.metadata.resource_version = good.metadata.resource_version.clone();
    let broken = secrets
        .replace("vault-key", &Default::default(), &broken)
        .await
        .expect("broken write");
    rndc_warden_testkit::poll_until(
        "the broken key reported",
        WAIT,
        Duration::from_millis(200),
        || async {
            Ok::<_, String>(
                (!events(&c, &ns, "broken", EVENT_RNDC_SECRET_RELOAD_FAILED)
                    .await
                    .is_empty())
                .then_some(()),
            )
        },
    )
    .await
    .expect("RndcSecretReloadFailed");
    // Never rolled out: the same pod keeps serving with the last good key.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pod = one_ready_pod(&c, &ns, &w).await;
    assert_eq!(uid(&pod), uid(&pod0), "no rollout of a broken key");
    assert!(
        accepts(&w, &good).await,
        "named still serves the last good key"
    );
    // The fix is rolled out.
    let mut fixed = user_key("vault-key", Algorithm::HmacSha256, 9);
    fixed.metadata.resource_version = broken.metadata.resource_version.clone();
    let fixed = secrets
        .replace("vault-key", &Default::default(), &fixed)
        .await
        .expect("fixed write");
    wait_new_pod(&c, &ns, &w, &uid(&pod0)).await;
    wait_new_key_only(&w, &fixed, &good).await;
    let status = Api::<rndc_warden::api::Bind9Instance>::namespaced(c.clone(), &ns)
        .get("broken")
        .await
        .expect("instance")
        .status
        .expect("status");
    assert_eq!(status.rndc_secret_version, key_revision(&fixed));
    rotator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rndc_warden_sigkilled_between_the_secret_write_and_the_rollout_rolls_after_restart() {
    let _serial = SERIAL.lock().await;
    let (_node, _) = node_env("node-fault-kill-setup", SHORT_SYNC, false).await;
    let t = RotationEnv::for_binary("node-fault-kill").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let (w, pod0, s0) = managed(&t, "killed").await;
    // The Deployment patch is forbidden, so the process is stopped exactly between the Secret
    // write and the rollout.
    let mut no_patch = rotator_rules();
    for rule in &mut no_patch {
        if rule
            .resources
            .as_ref()
            .is_some_and(|r| r.iter().any(|r| r == "deployments"))
        {
            rule.verbs = vec!["get".into(), "list".into(), "watch".into()];
        }
    }
    t.set_rules(no_patch).await;
    let mut warden = WardenProcess::new(
        "node-kill",
        t.sa_kubeconfig(),
        &ns,
        &["--resync-period", "5s", "--reload-debounce", "1s"],
    );
    warden.start();
    warden.wait_ready(WAIT).await;
    back_date(&c, &ns, &w.secret, Utc::now() - TimeDelta::days(400)).await;
    let s1 = wait_secret(&c, &ns, &w.secret, "rotated", |s| count(s) == 1).await;
    warden.kill();
    let pod = one_ready_pod(&c, &ns, &w).await;
    assert_eq!(uid(&pod), uid(&pod0), "not rolled yet");
    assert!(
        accepts(&w, &s0).await && !accepts(&w, &s1).await,
        "the pod still runs the old key"
    );
    t.set_rules(rotator_rules()).await;
    warden.start();
    wait_new_pod(&c, &ns, &w, &uid(&pod0)).await;
    wait_new_key_only(&w, &s1, &s0).await;
    converged(&t, "killed", 1).await;
}
