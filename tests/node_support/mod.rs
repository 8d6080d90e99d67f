//! Shared setup of the node end-to-end tests: a real node (kubelet + containerd + runc) beside
//! the control plane, BIND9 pods shaped like Bindy's, and checks of which key `named` in a pod
//! accepts (with `rndc` on the host: the pods use the host's network, on 127.0.0.1).
#![allow(dead_code)]

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{Api, Client};
use rndc_warden_testkit::node::NodeOptions;
use rndc_warden_testkit::workload::{bind9_logs, live_pods, pod_ready};
use rndc_warden_testkit::{Bind9Workload, Node, poll_until, rndc_status_at, shared_node};

use chrono::{TimeDelta, Utc};
use rndc_warden::api::{EVENT_RNDC_SECRET_RELOAD_FAILED, EVENT_RNDC_SECRET_RELOADED};
use rndc_warden::policy::Algorithm;
use rndc_warden::rotation::{ReloadStrategy, RotationArgs};

use crate::rotation_support::*;

/// How long a pod may take to come up or to change (image import and a rollout take seconds;
/// the kubelet's default Secret sync takes up to ~75 s).
pub const POD_WAIT: Duration = Duration::from_secs(150);

/// The kubelet's short sync period of these tests (the default is 1m).
pub const SHORT_SYNC: Duration = Duration::from_secs(10);

/// Starts (once per test binary) the node with `sync` and a rotation environment on it.
pub async fn node_env(
    name: &str,
    sync: Duration,
    signal_rbac: bool,
) -> (&'static Node, RotationEnv) {
    let (_, node) = shared_node(NodeOptions {
        sync_frequency: sync,
        ..NodeOptions::default()
    })
    .await
    .expect("a real node (see docs/development.md, \"The node\")");
    let rules = if signal_rbac {
        signal_rules()
    } else {
        rotator_rules()
    };
    let t = RotationEnv::with_rules(name, rules).await;
    (node, t)
}

/// The chart's rules with `reload.strategy=signal`.
pub fn signal_rules() -> Vec<k8s_openapi::api::rbac::v1::PolicyRule> {
    let mut rules = rotator_rules();
    rules.push(rule(&[""], &["pods"], &["get", "list"]));
    rules.push(rule(&[""], &["pods/exec"], &["get", "create"]));
    rules
}

/// Creates the workload of instance `name` mounting `secret` and waits for its pod.
pub async fn deploy(c: &Client, ns: &str, name: &str, secret: &str) -> (Bind9Workload, Pod) {
    let w = Bind9Workload::new(name, secret).expect("workload");
    deploy_workload(c, ns, &w).await
}

/// Creates `w` and waits for its one ready pod.
pub async fn deploy_workload(c: &Client, ns: &str, w: &Bind9Workload) -> (Bind9Workload, Pod) {
    w.apply(c, ns).await.expect("apply workload");
    let pod = one_ready_pod(c, ns, w).await;
    (w.clone(), pod)
}

/// Waits for exactly one ready pod of the workload, failing with the node's logs.
pub async fn one_ready_pod(c: &Client, ns: &str, w: &Bind9Workload) -> Pod {
    match rndc_warden_testkit::workload::wait_one_ready_pod(c, ns, &w.selector(), POD_WAIT).await {
        Ok(pod) => pod,
        Err(e) => panic!("{e}\npods: {}", describe_pods(c, ns, &w.selector()).await),
    }
}

/// Waits until the workload's one ready pod is not `old_uid` and returns it.
pub async fn wait_new_pod(c: &Client, ns: &str, w: &Bind9Workload, old_uid: &str) -> Pod {
    let selector = w.selector();
    let found = poll_until(
        &format!("a new ready pod for {}", w.name),
        POD_WAIT,
        Duration::from_millis(200),
        || {
            let selector = selector.clone();
            async move {
                let pods = live_pods(c, ns, &selector).await?;
                Ok::<_, rndc_warden_testkit::Error>(match pods.as_slice() {
                    [pod] if pod_ready(pod) && uid(pod) != old_uid => Some(pod.clone()),
                    _ => None,
                })
            }
        },
    )
    .await;
    match found {
        Ok(pod) => pod,
        Err(e) => panic!("{e}\npods: {}", describe_pods(c, ns, &selector).await),
    }
}

pub fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// A short description of the pods (phase, readiness, restarts, waiting reasons).
pub async fn describe_pods(c: &Client, ns: &str, selector: &str) -> String {
    match live_pods(c, ns, selector).await {
        Ok(pods) => pods
            .iter()
            .map(|p| {
                let status = p.status.clone().unwrap_or_default();
                let waiting: Vec<String> = status
                    .container_statuses
                    .iter()
                    .flatten()
                    .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
                    .map(|w| format!("{:?}: {:?}", w.reason, w.message))
                    .collect();
                format!(
                    "{} phase={:?} ready={} waiting={waiting:?}",
                    p.metadata.name.clone().unwrap_or_default(),
                    status.phase,
                    pod_ready(p)
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(e) => format!("listing pods failed: {e}"),
    }
}

/// Whether named in the workload's pod accepts the key of `secret` (`rndc status`).
pub async fn accepts(w: &Bind9Workload, secret: &Secret) -> bool {
    rndc_status_at(w.rndc_port, &rndc_key_file(secret))
        .await
        .expect("rndc reaches named in the pod")
}

/// Waits until named accepts `new` and refuses `old`.
pub async fn wait_new_key_only(w: &Bind9Workload, new: &Secret, old: &Secret) {
    let new_file = rndc_key_file(new);
    let old_file = rndc_key_file(old);
    poll_until(
        &format!("named of {} on the new key only", w.name),
        POD_WAIT,
        Duration::from_millis(200),
        || {
            let (new_file, old_file) = (new_file.clone(), old_file.clone());
            async move {
                let new_ok = rndc_status_at(w.rndc_port, &new_file).await?;
                let old_ok = rndc_status_at(w.rndc_port, &old_file).await?;
                Ok::<_, rndc_warden_testkit::Error>((new_ok && !old_ok).then_some(()))
            }
        },
    )
    .await
    .expect("the new key accepted and the old one refused");
}

/// The logs of the bind9 container of `pod`.
pub async fn logs(c: &Client, ns: &str, pod: &Pod) -> String {
    bind9_logs(c, ns, pod.metadata.name.as_deref().unwrap_or_default())
        .await
        .expect("pod logs (through the kubelet)")
}

/// The current pod of the workload (exactly one, ready).
pub async fn current_pod(c: &Client, ns: &str, w: &Bind9Workload) -> Pod {
    one_ready_pod(c, ns, w).await
}

/// The Secret named `name`.
pub async fn secret(c: &Client, ns: &str, name: &str) -> Secret {
    Api::<Secret>::namespaced(c.clone(), ns)
        .get(name)
        .await
        .expect("secret")
}

/// A series of the rotator's metrics (`name{labels} ` with the trailing space), 0 when absent.
pub fn rotator_metric(rotator: &Rotator, series: &str) -> u64 {
    rotator
        .metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// A managed instance with a key that is not due, and its pod.
pub async fn managed(t: &RotationEnv, name: &str) -> (Bind9Workload, Pod, Secret) {
    let (c, ns) = (t.client(), t.ns());
    let secret_name = format!("{name}-rndc-key");
    let s0 = create_key_secret(
        c,
        ns,
        &secret_name,
        Algorithm::HmacSha256,
        Utc::now() - TimeDelta::days(2),
        TimeDelta::days(30),
    )
    .await;
    create_instance(
        c,
        ns,
        name,
        standalone(Some(rndc_key(true, "720h", "hmac-sha256"))),
    )
    .await;
    let (w, pod) = deploy(c, ns, name, &secret_name).await;
    (w, pod, s0)
}

/// One signal reload: the same pod (UID, restartCount 0) takes the new key after SIGHUP.
pub async fn signal_round(t: &RotationEnv, name: &str) {
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let secret_name = format!("{name}-rndc-key");
    let (w, pod0, s0) = managed(t, name).await;
    let args = RotationArgs {
        reload_strategy: ReloadStrategy::Signal,
        reload_signal_deadline: Duration::from_secs(180),
        // Longer than every wait below: the rotator's own write is reloaded without a debounce.
        reload_debounce: Duration::from_secs(600),
        resync_period: Duration::from_secs(5),
        ..t.args()
    };
    let rotator = t.start_with(args);
    // The rotator records the running revision first, then the back-dated key rotates.
    tokio::time::sleep(Duration::from_secs(2)).await;
    back_date(&c, &ns, &secret_name, Utc::now() - TimeDelta::days(400)).await;
    let s1 = wait_secret(&c, &ns, &secret_name, "rotated", |s| count(s) == 1).await;
    wait_new_key_only(&w, &s1, &s0).await;
    let pod = current_pod(&c, &ns, &w).await;
    assert_eq!(uid(&pod), uid(&pod0), "the same pod");
    assert_eq!(
        rndc_warden_testkit::workload::restart_count(&pod),
        0,
        "named was not restarted"
    );
    let log = logs(&c, &ns, &pod).await;
    assert!(
        log.contains("reloading configuration succeeded"),
        "named logged the reload:\n{log}"
    );
    let reloaded = events(&c, &ns, name, EVENT_RNDC_SECRET_RELOADED).await;
    assert!(
        reloaded
            .iter()
            .any(|e| e.note.as_deref().unwrap_or_default().contains("SIGHUP")),
        "{reloaded:?}"
    );
    assert!(
        events(&c, &ns, name, EVENT_RNDC_SECRET_RELOAD_FAILED)
            .await
            .is_empty()
    );
    assert_eq!(
        rotator_metric(
            &rotator,
            "bind9_rndc_secret_reloads_total{status=\"success\"} "
        ),
        1
    );
    rotator.stop().await;
}
