//! Secret change detection and reload (issue 6, SPEC §8) against a real kube-apiserver, with the
//! rotator running as a ServiceAccount with the chart's RBAC. There is no kubelet: Deployments
//! have no pods, so the `rollout` strategy is observed on the pod-template marker, the real
//! `pods/exec` client as far as the apiserver goes, and the whole `signal` path against a local
//! `named` through a [`PodExec`] that runs the same commands on this machine.

mod rotation_support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Secret};
use k8s_openapi::api::rbac::v1::PolicyRule;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use rndc_warden::api::{
    Bind9Instance, Bind9InstanceStatus, CONDITION_RNDC_SECRET_RELOADED, Condition,
    EVENT_RNDC_SECRET_RELOAD_FAILED, EVENT_RNDC_SECRET_RELOADED, LABEL_RNDC_KEY, RndcSecretRef,
};
use rndc_warden::metrics::Metrics;
use rndc_warden::policy::{Algorithm, key_revision, key_secret_from_bytes};
use rndc_warden::rotation::exec::{ExecError, parse_digest};
use rndc_warden::rotation::reload::ANNOTATION_RELOAD_STRATEGY;
use rndc_warden::rotation::{self, KubeExec, PodExec, ReloadStrategy, RotationArgs};
use rndc_warden_testkit::{Named, poll_until};
use rotation_support::*;

/// A rotator started with a chosen [`PodExec`]; stopped on drop.
struct Reloader {
    metrics: Arc<Metrics>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), rotation::Error>>,
}

impl Reloader {
    fn start(client: Client, args: RotationArgs, exec: Option<Arc<dyn PodExec>>) -> Reloader {
        let metrics = Metrics::new();
        let mut parts = rotation::Parts::real(&client);
        if let Some(exec) = exec {
            parts.exec = exec;
        }
        let (stop, task) = rotation_support::spawn_rotator(client, args, metrics.clone(), parts);
        Reloader {
            metrics,
            stop,
            task,
        }
    }

    /// `bind9_rndc_secret_reloads_total{status=...}`.
    fn reloads(&self, status: &str) -> u64 {
        let prefix = format!("bind9_rndc_secret_reloads_total{{status=\"{status}\"}} ");
        self.metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    }

    async fn wait_reloads(&self, status: &str, n: u64) {
        poll_until(
            &format!("{n} {status} reloads"),
            WAIT,
            Duration::from_millis(100),
            || async move {
                let got = self.reloads(status);
                assert!(got <= n, "more {status} reloads than expected: {got} > {n}");
                Ok::<_, String>((got == n).then_some(()))
            },
        )
        .await
        .expect("reload metric");
    }

    async fn stop(mut self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn args(t: &RotationEnv, debounce: Duration) -> RotationArgs {
    RotationArgs {
        reload_debounce: debounce,
        resync_period: Duration::from_secs(5),
        reload_signal_deadline: Duration::from_secs(5),
        ..t.args()
    }
}

/// A user key Secret without annotations (its revision is a fingerprint of the key data).
fn user_secret(name: &str, byte: u8, labelled: bool) -> Secret {
    let data = key_secret_from_bytes("bindy-operator", Algorithm::HmacSha256, &[byte; 32])
        .expect("key")
        .into_data();
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: labelled.then(|| BTreeMap::from([(LABEL_RNDC_KEY.into(), "true".into())])),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..Secret::default()
    }
}

fn revision(secret: &Secret) -> String {
    key_revision(secret).expect("revision")
}

async fn put_secret(c: &Client, ns: &str, secret: &Secret) -> Secret {
    let api: Api<Secret> = Api::namespaced(c.clone(), ns);
    let name = secret.metadata.name.clone().expect("name");
    match api.get_opt(&name).await.expect("get") {
        Some(current) => {
            let mut next = secret.clone();
            next.metadata.resource_version = current.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &next)
                .await
                .expect("replace secret")
        }
        None => api
            .create(&PostParams::default(), secret)
            .await
            .expect("create secret"),
    }
}

async fn instance_on(c: &Client, ns: &str, name: &str, secret: &str, strategy: Option<&str>) {
    let mut block = rndc_key(false, "720h", "hmac-sha256");
    block.secret_ref = Some(RndcSecretRef {
        name: secret.to_owned(),
        ..RndcSecretRef::default()
    });
    let api: Api<Bind9Instance> = Api::namespaced(c.clone(), ns);
    let mut instance = Bind9Instance::new(name, standalone(Some(block)));
    instance.metadata.namespace = Some(ns.to_owned());
    if let Some(s) = strategy {
        instance.metadata.annotations = Some(BTreeMap::from([(
            ANNOTATION_RELOAD_STRATEGY.to_owned(),
            s.to_owned(),
        )]));
    }
    api.create(&PostParams::default(), &instance)
        .await
        .expect("create instance");
}

fn reload_condition(status: &Bind9InstanceStatus) -> Option<&Condition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == CONDITION_RNDC_SECRET_RELOADED)
}

/// Waits until the instance status satisfies `pred` and returns it.
async fn wait_instance(
    c: &Client,
    ns: &str,
    name: &str,
    what: &str,
    pred: impl Fn(&Bind9InstanceStatus) -> bool,
) -> Bind9InstanceStatus {
    let api: Api<Bind9Instance> = Api::namespaced(c.clone(), ns);
    poll_until(what, WAIT, Duration::from_millis(100), || {
        let api = api.clone();
        let pred = &pred;
        async move {
            let i = api.get(name).await?;
            Ok::<_, kube::Error>(i.status.filter(|s| pred(s)))
        }
    })
    .await
    .expect(what)
}

async fn wait_version(c: &Client, ns: &str, name: &str, version: &str) -> Bind9InstanceStatus {
    wait_instance(c, ns, name, &format!("{name} on {version}"), |s| {
        s.rndc_secret_version.as_deref() == Some(version)
    })
    .await
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

/// How many times an Event was recorded (the recorder folds repeats into a series).
fn occurrences(event: &k8s_openapi::api::events::v1::Event) -> usize {
    event
        .series
        .as_ref()
        .map_or(1, |s| usize::try_from(s.count).unwrap_or(1))
}

/// Waits until Events with `reason` on `instance` were recorded at least `n` times; returns the
/// total and their notes.
async fn wait_events(
    c: &Client,
    ns: &str,
    instance: &str,
    reason: &str,
    n: usize,
) -> (usize, Vec<String>) {
    poll_until(
        &format!("{n} {reason} events on {instance}"),
        WAIT,
        Duration::from_millis(200),
        || async move {
            let found = events(c, ns, instance, reason).await;
            let total: usize = found.iter().map(occurrences).sum();
            let notes = found
                .into_iter()
                .map(|e| e.note.unwrap_or_default())
                .collect();
            Ok::<_, String>((total >= n).then_some((total, notes)))
        },
    )
    .await
    .expect("events")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_ref_change_reloads_exactly_the_instances_using_it_once() {
    let t = RotationEnv::new("rel-select").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    // "shared" is unlabelled (a plain Vault/ESO Secret); "other" carries the key label.
    let shared = put_secret(&c, &ns, &user_secret("shared", 1, false)).await;
    let other = put_secret(&c, &ns, &user_secret("other", 2, true)).await;
    for (name, secret) in [("dns-a", "shared"), ("dns-b", "shared"), ("dns-c", "other")] {
        create_deployment(&c, &ns, name).await;
        instance_on(&c, &ns, name, secret, None).await;
    }
    let reloader = Reloader::start(
        t.sa.client().expect("sa"),
        args(&t, Duration::from_secs(2)),
        None,
    );
    // First sight: the revisions are recorded, nothing is rolled.
    for (name, secret) in [("dns-a", &shared), ("dns-b", &shared), ("dns-c", &other)] {
        wait_version(&c, &ns, name, &revision(secret)).await;
        assert_eq!(marker(&c, &ns, name).await, None, "{name} not rolled");
    }

    // Five writes in two seconds (a secret manager syncing field by field).
    let mut tick = tokio::time::interval(Duration::from_millis(400));
    let mut last = shared.clone();
    for byte in 11..=15u8 {
        tick.tick().await;
        last = put_secret(&c, &ns, &user_secret("shared", byte, false)).await;
    }
    let final_revision = revision(&last);
    for name in ["dns-a", "dns-b"] {
        wait_marker(&c, &ns, name, &final_revision).await;
        let status = wait_version(&c, &ns, name, &final_revision).await;
        let condition = reload_condition(&status).expect("condition");
        assert_eq!(condition.status, "True");
    }
    reloader.wait_reloads("success", 2).await;
    for name in ["dns-a", "dns-b"] {
        assert_eq!(generation(&c, &ns, name).await, 2, "{name} rolled once");
        let (total, notes) = wait_events(&c, &ns, name, EVENT_RNDC_SECRET_RELOADED, 1).await;
        assert_eq!(total, 1, "{name}: {notes:?}");
        assert!(notes[0].contains(&final_revision), "{notes:?}");
    }
    // The instance on the other Secret is untouched.
    assert_eq!(marker(&c, &ns, "dns-c").await, None);
    assert_eq!(generation(&c, &ns, "dns-c").await, 1);
    assert!(
        events(&c, &ns, "dns-c", EVENT_RNDC_SECRET_RELOADED)
            .await
            .is_empty()
    );
    assert_eq!(reloader.reloads("failed"), 0);
    reloader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_while_stopped_is_reloaded_after_start_and_an_unchanged_restart_reloads_nothing()
 {
    let t = RotationEnv::new("rel-restart").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let first = put_secret(&c, &ns, &user_secret("vault-rndc", 1, true)).await;
    let canary = put_secret(&c, &ns, &user_secret("canary-rndc", 2, false)).await;
    create_deployment(&c, &ns, "dns-s").await;
    instance_on(&c, &ns, "dns-s", "vault-rndc", None).await;
    create_deployment(&c, &ns, "dns-canary").await;
    instance_on(&c, &ns, "dns-canary", "canary-rndc", None).await;
    let start = || {
        Reloader::start(
            t.sa.client().expect("sa"),
            args(&t, Duration::from_millis(500)),
            None,
        )
    };

    let one = start();
    wait_version(&c, &ns, "dns-s", &revision(&first)).await;
    wait_version(&c, &ns, "dns-canary", &revision(&canary)).await;
    one.stop().await;

    // Changed while no rotator runs.
    let second = put_secret(&c, &ns, &user_secret("vault-rndc", 3, true)).await;
    let two = start();
    wait_marker(&c, &ns, "dns-s", &revision(&second)).await;
    wait_version(&c, &ns, "dns-s", &revision(&second)).await;
    two.wait_reloads("success", 1).await;
    two.stop().await;

    // Restart with nothing changed: only the canary, changed after the start, is reloaded.
    let three = start();
    let canary2 = put_secret(&c, &ns, &user_secret("canary-rndc", 4, false)).await;
    wait_marker(&c, &ns, "dns-canary", &revision(&canary2)).await;
    three.wait_reloads("success", 1).await;
    assert_eq!(generation(&c, &ns, "dns-s").await, 2, "dns-s rolled once");
    let (total, _) = wait_events(&c, &ns, "dns-s", EVENT_RNDC_SECRET_RELOADED, 1).await;
    assert_eq!(total, 1, "dns-s reloaded once");
    three.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_key_is_not_rolled_out_and_shows_in_status_event_and_metric_until_fixed() {
    let t = RotationEnv::new("rel-invalid").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let good = put_secret(&c, &ns, &user_secret("ext-rndc", 1, false)).await;
    let material =
        String::from_utf8(good.data.as_ref().expect("data")["secret"].0.clone()).expect("utf8");
    create_deployment(&c, &ns, "dns-m").await;
    instance_on(&c, &ns, "dns-m", "ext-rndc", None).await;
    let reloader = Reloader::start(
        t.sa.client().expect("sa"),
        args(&t, Duration::from_millis(500)),
        None,
    );
    wait_version(&c, &ns, "dns-m", &revision(&good)).await;

    let broken: [(&str, &str, &[u8], &str); 3] = [
        ("bad base64", "secret", b"%%% not base64 %%%", "base64"),
        ("wrong algorithm", "algorithm", b"hmac-md5", "hmac-md5"),
        (
            "unparsable rndc.key",
            "rndc.key",
            b"key \"bindy-operator\" { algorithm",
            "rndc.key",
        ),
    ];
    for (n, (case, key, value, hint)) in broken.iter().enumerate() {
        let mut bad = user_secret("ext-rndc", 1, false);
        bad.data
            .as_mut()
            .expect("data")
            .insert((*key).to_owned(), k8s_openapi::ByteString(value.to_vec()));
        let written = put_secret(&c, &ns, &bad).await;
        let status = wait_instance(&c, &ns, "dns-m", case, |s| {
            reload_condition(s).is_some_and(|c| {
                c.status == "False"
                    && c.reason.as_deref() == Some("InvalidSecret")
                    && c.message
                        .as_deref()
                        .is_some_and(|m| m.contains(&revision(&written)))
            })
        })
        .await;
        let message = reload_condition(&status)
            .and_then(|c| c.message.clone())
            .unwrap_or_default();
        assert!(message.contains(hint), "{case}: {message}");
        assert!(!message.contains(material.trim()), "no key material");
        reloader.wait_reloads("failed", n as u64 + 1).await;
        let (_, notes) =
            wait_events(&c, &ns, "dns-m", EVENT_RNDC_SECRET_RELOAD_FAILED, n + 1).await;
        assert!(notes.iter().all(|n| !n.contains(material.trim())));
        assert_eq!(
            marker(&c, &ns, "dns-m").await,
            None,
            "{case}: not rolled out"
        );
        assert_eq!(
            status.rndc_secret_version.as_deref(),
            Some(revision(&good).as_str())
        );
    }

    // Deleted: reported, still not rolled.
    Api::<Secret>::namespaced(c.clone(), &ns)
        .delete("ext-rndc", &DeleteParams::default())
        .await
        .expect("delete");
    wait_instance(&c, &ns, "dns-m", "SecretNotFound", |s| {
        reload_condition(s).is_some_and(|c| c.reason.as_deref() == Some("SecretNotFound"))
    })
    .await;
    reloader.wait_reloads("failed", 4).await;

    // Fixed: rolled out.
    let fixed = put_secret(&c, &ns, &user_secret("ext-rndc", 9, false)).await;
    wait_marker(&c, &ns, "dns-m", &revision(&fixed)).await;
    let status = wait_version(&c, &ns, "dns-m", &revision(&fixed)).await;
    assert_eq!(
        reload_condition(&status).map(|c| c.status.as_str()),
        Some("True")
    );
    reloader.wait_reloads("success", 1).await;
    assert_eq!(reloader.reloads("failed"), 4);
    reloader.stop().await;
}

/// Runs the `signal` commands on this machine against a local `named`: `sha256sum` of its key
/// file and `kill -HUP` of its process, for one "pod".
struct LocalExec {
    key_file: PathBuf,
    pid: u32,
    stale: AtomicU32,
    expected: std::sync::Mutex<Option<String>>,
    hups: AtomicU32,
}

impl PodExec for LocalExec {
    fn list_pods<'a>(
        &'a self,
        _: &'a str,
        selector: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, ExecError>> {
        Box::pin(async move {
            assert_eq!(selector, "app=bind9,instance=dns-h");
            Ok(vec!["dns-h-0".to_owned()])
        })
    }

    fn file_digest<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        container: &'a str,
        path: &'a str,
    ) -> BoxFuture<'a, Result<String, ExecError>> {
        Box::pin(async move {
            assert_eq!((container, path), ("bind9", "/etc/bind/keys/rndc.key"));
            let out = tokio::process::Command::new("sha256sum")
                .arg(&self.key_file)
                .output()
                .await
                .map_err(|e| ExecError::Command(e.to_string()))?;
            let digest = parse_digest(&String::from_utf8_lossy(&out.stdout))
                .ok_or_else(|| ExecError::Command("no digest".into()))?;
            if self.expected.lock().expect("lock").as_deref() != Some(digest.as_str()) {
                self.stale.fetch_add(1, Ordering::SeqCst);
            }
            Ok(digest)
        })
    }

    fn hup<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(async move {
            let status = tokio::process::Command::new("kill")
                .args(["-HUP", &self.pid.to_string()])
                .status()
                .await
                .map_err(|e| ExecError::Command(e.to_string()))?;
            if !status.success() {
                return Err(ExecError::Command(format!("kill exited with {status}")));
            }
            self.hups.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

fn rndc_file(secret: &Secret) -> String {
    rndc_key_file(secret)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_reloads_a_real_named_only_after_it_sees_the_new_key_file() {
    let t = RotationEnv::new("rel-signal").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let first = put_secret(&c, &ns, &user_secret("hup-rndc", 1, false)).await;
    let named = Named::start(&rndc_file(&first))
        .await
        .expect("named with the first key");
    let exec = Arc::new(LocalExec {
        key_file: named.key_file().to_owned(),
        pid: named.pid().expect("pid"),
        stale: AtomicU32::new(0),
        expected: std::sync::Mutex::new(None),
        hups: AtomicU32::new(0),
    });
    create_deployment(&c, &ns, "dns-h").await;
    instance_on(&c, &ns, "dns-h", "hup-rndc", Some("signal")).await;
    let reloader = Reloader::start(
        t.sa.client().expect("sa"),
        RotationArgs {
            reload_signal_deadline: Duration::from_secs(60),
            ..args(&t, Duration::from_millis(500))
        },
        Some(exec.clone()),
    );
    wait_version(&c, &ns, "dns-h", &revision(&first)).await;

    // The Secret changes, but the "kubelet" has not updated the mounted file yet.
    let second = put_secret(&c, &ns, &user_secret("hup-rndc", 2, false)).await;
    let new_file = rndc_file(&second);
    *exec.expected.lock().expect("lock") = Some(rndc_warden::rotation::reload::hex_sha256(
        new_file.as_bytes(),
    ));
    poll_until(
        "stale file detected twice",
        WAIT,
        Duration::from_millis(100),
        || {
            let exec = exec.clone();
            async move { Ok::<_, String>((exec.stale.load(Ordering::SeqCst) >= 2).then_some(())) }
        },
    )
    .await
    .expect("retried");
    assert_eq!(
        exec.hups.load(Ordering::SeqCst),
        0,
        "no SIGHUP before the file changed"
    );
    assert!(
        named
            .rndc_status_with(&rndc_file(&first))
            .await
            .expect("rndc")
    );

    // The file is swapped; the next check sees it and named is signalled.
    named.swap_key(&new_file).expect("swap");
    let status = wait_version(&c, &ns, "dns-h", &revision(&second)).await;
    let message = reload_condition(&status)
        .and_then(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("SIGHUP to 1 pod"), "{message}");
    assert_eq!(exec.hups.load(Ordering::SeqCst), 1);
    poll_until("named accepts the new key", WAIT, Duration::from_millis(200), || {
        let named = &named;
        let new_file = &new_file;
        async move { Ok::<_, String>(named.rndc_status_with(new_file).await.ok().filter(|ok| *ok)) }
    })
    .await
    .expect("new key accepted");
    assert!(
        !named
            .rndc_status_with(&rndc_file(&first))
            .await
            .expect("rndc"),
        "the old key is refused"
    );
    assert_eq!(marker(&c, &ns, "dns-h").await, None, "no rollout");
    assert_eq!(reloader.reloads("success"), 1);
    reloader.stop().await;
}

/// The rotator's rules plus what `reload.strategy=signal` needs: pods get/list and `exec_verbs`
/// on `pods/exec`.
fn pod_rules(exec_verbs: &[&str]) -> Vec<PolicyRule> {
    let mut rules = rotator_rules();
    rules.push(PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["pods".into()]),
        verbs: vec!["get".into(), "list".into()],
        ..PolicyRule::default()
    });
    if !exec_verbs.is_empty() {
        rules.push(PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["pods/exec".into()]),
            verbs: exec_verbs.iter().map(|v| (*v).to_owned()).collect(),
            ..PolicyRule::default()
        });
    }
    rules
}

/// Whether the client may `verb` `pods/exec` in `ns` (SelfSubjectAccessReview).
async fn can_i(client: &Client, ns: &str, verb: &str) -> Result<bool, kube::Error> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ns.to_owned()),
                verb: Some(verb.to_owned()),
                resource: Some("pods".to_owned()),
                subresource: Some("exec".to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

async fn create_pod(c: &Client, ns: &str, name: &str, instance: &str) {
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([
                ("app".to_owned(), "bind9".to_owned()),
                ("instance".to_owned(), instance.to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "bind9".into(),
                image: Some("bind9:test".into()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: None,
    };
    Api::<Pod>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_pod_exec_selects_pods_by_label_needs_rbac_and_falls_back_to_a_rollout() {
    let t = RotationEnv::with_rules("rel-exec", pod_rules(&[])).await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    for (pod, instance) in [
        ("dns-x-0", "dns-x"),
        ("dns-x-1", "dns-x"),
        ("dns-y-0", "dns-y"),
    ] {
        create_pod(&c, &ns, pod, instance).await;
    }
    let exec = KubeExec::new(t.sa.client().expect("sa"));
    let pods = exec
        .list_pods(&ns, "app=bind9,instance=dns-x")
        .await
        .expect("list");
    assert_eq!(pods, ["dns-x-0", "dns-x-1"]);
    let denied = exec
        .file_digest(&ns, "dns-x-0", "bind9", "/etc/bind/keys/rndc.key")
        .await
        .expect_err("no pods/exec");
    assert!(matches!(denied, ExecError::Forbidden(_)), "{denied}");

    // `create` alone is not enough: exec over WebSocket is an upgraded GET, and the apiserver
    // authorizes both verbs.
    t.set_rules(pod_rules(&["create"])).await;
    let sa = t.sa.client().expect("sa");
    poll_until(
        "create on pods/exec granted",
        WAIT,
        Duration::from_millis(200),
        || {
            let sa = sa.clone();
            let ns = ns.clone();
            async move {
                let allowed = can_i(&sa, &ns, "create").await?;
                Ok::<_, kube::Error>(allowed.then_some(()))
            }
        },
    )
    .await
    .expect("rules applied");
    let create_only = exec.hup(&ns, "dns-x-0", "bind9").await;
    assert!(
        matches!(&create_only, Err(ExecError::Forbidden(e)) if e.contains("get resource")),
        "{create_only:?}"
    );

    // With get and create on pods/exec the request passes authorization and fails at the
    // kubelet step (no node runs the pod).
    t.set_rules(pod_rules(&["get", "create"])).await;
    let allowed = poll_until(
        "pods/exec allowed",
        WAIT,
        Duration::from_millis(200),
        || {
            let exec = exec.clone();
            let ns = ns.clone();
            async move {
                match exec.hup(&ns, "dns-x-0", "bind9").await {
                    Err(ExecError::Forbidden(e)) => Err::<Option<Result<(), ExecError>>, _>(e),
                    other => Ok(Some(other)),
                }
            }
        },
    )
    .await
    .expect("authorized");
    assert!(
        matches!(allowed, Err(ExecError::Api(_))),
        "fails after authorization: {allowed:?}"
    );

    // The rotator with the signal strategy falls back to a rollout, and says so.
    let first = put_secret(&c, &ns, &user_secret("x-rndc", 1, false)).await;
    create_deployment(&c, &ns, "dns-x").await;
    instance_on(&c, &ns, "dns-x", "x-rndc", None).await;
    let reloader = Reloader::start(
        t.sa.client().expect("sa"),
        RotationArgs {
            reload_strategy: ReloadStrategy::Signal,
            ..args(&t, Duration::from_millis(500))
        },
        None,
    );
    wait_version(&c, &ns, "dns-x", &revision(&first)).await;
    let second = put_secret(&c, &ns, &user_secret("x-rndc", 2, false)).await;
    wait_marker(&c, &ns, "dns-x", &revision(&second)).await;
    let (_, failed) = wait_events(&c, &ns, "dns-x", EVENT_RNDC_SECRET_RELOAD_FAILED, 1).await;
    assert!(
        failed
            .iter()
            .any(|n| n.contains("falling back to a rollout")),
        "{failed:?}"
    );
    let (_, done) = wait_events(&c, &ns, "dns-x", EVENT_RNDC_SECRET_RELOADED, 1).await;
    assert!(done[0].contains("fallback from signal"), "{done:?}");
    reloader.wait_reloads("success", 1).await;
    reloader.stop().await;
}
