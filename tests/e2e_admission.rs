//! End to end through a real kube-apiserver: the real `rndc-warden serve` binary, registered by URL
//! and caBundle as the chart does, reached by `kubectl apply` (and `--dry-run=server`).

mod common;

use std::time::{Duration, Instant};

use common::{get_json, instance_yaml, kubectl_apply, setup, setup_named};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use rndc_warden_testkit::{Histogram, TestEnv, WebhookKind, poll_until};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_sees_our_denials_warnings_and_defaults() {
    let (env, warden) = setup("adm-kubectl").await;

    let weak = instance_yaml(
        &env,
        "weak",
        "role: primary\n  rndcKey:\n    algorithm: hmac-sha1",
    );
    let (ok, _, stderr) = kubectl_apply(&env, &weak, &[]).await;
    assert!(!ok);
    assert!(
        stderr.contains("denied the request")
            && stderr.contains("spec.rndcKey.algorithm: hmac-sha1 is not allowed"),
        "{stderr}"
    );

    let short = instance_yaml(
        &env,
        "short",
        "role: primary\n  rndcKey:\n    autoRotate: true\n    rotateAfter: 30m",
    );
    let (ok, _, stderr) = kubectl_apply(&env, &short, &[]).await;
    assert!(!ok);
    assert!(
        stderr.contains("spec.rndcKey.rotateAfter: \"30m\""),
        "{stderr}"
    );

    let twelve = instance_yaml(
        &env,
        "twelve",
        "role: primary\n  rndcKey:\n    autoRotate: true\n    rotateAfter: 12h",
    );
    let (ok, _, stderr) = kubectl_apply(&env, &twelve, &[]).await;
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("Warning:") && stderr.contains("12h"),
        "kubectl must print our warning: {stderr}"
    );

    let bare = instance_yaml(&env, "bare", "role: Primary\n  clusterRef: \"\"");
    let (ok, _, stderr) = kubectl_apply(&env, &bare, &[]).await;
    assert!(ok, "{stderr}");
    let stored = get_json(&env, "bind9instance", "bare").await;
    assert_eq!(stored["spec"]["role"], "primary", "role normalised");
    assert_eq!(
        stored["spec"]["rndcKey"],
        json!({"autoRotate": false, "rotateAfter": "2160h", "algorithm": "hmac-sha256"}),
        "default block injected"
    );

    // --dry-run=server gives the same answers and stores nothing.
    let (ok, _, stderr) = kubectl_apply(&env, &weak, &["--dry-run=server"]).await;
    assert!(
        !ok && stderr.contains("hmac-sha1 is not allowed"),
        "{stderr}"
    );
    let dry = instance_yaml(&env, "dry", "role: Primary\n  clusterRef: \"\"");
    let out = env
        .cp
        .kubectl_as(
            env.cp.kubeconfig_path(),
            ["apply", "-f", "-", "--dry-run=server", "-o", "json"],
            Some(dry.as_bytes()),
        )
        .await
        .expect("kubectl");
    assert!(out.success(), "{}", out.stderr);
    let shown: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(shown["spec"]["role"], "primary");
    assert_eq!(shown["spec"]["rndcKey"]["rotateAfter"], "2160h");
    let missing = env
        .cp
        .kubectl(["get", "bind9instance", "dry", "-n", env.ns.name()])
        .await
        .expect("kubectl");
    assert!(!missing.success(), "a dry run must not store the object");
    assert!(!warden.logs().contains("panicked"), "{}", warden.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_in_a_cluster_with_a_role_block_is_left_alone() {
    let (env, warden) = setup("adm-cluster").await;
    let cluster = format!(
        "apiVersion: bindy.firestoned.io/v1beta1\nkind: Bind9Cluster\nmetadata:\n  name: prod\n  namespace: {}\nspec:\n  primary:\n    rndcKey:\n      autoRotate: true\n",
        env.ns.name()
    );
    let (ok, _, stderr) = kubectl_apply(&env, &cluster, &[]).await;
    assert!(ok, "{stderr}");
    let stored = get_json(&env, "bind9cluster", "prod").await;
    assert_eq!(
        stored["spec"]["primary"]["rndcKey"]["rotateAfter"], "2160h",
        "role block defaulted"
    );

    // The watch cache learns of the cluster asynchronously: poll with dry runs until the
    // instance is left alone, then create it for real.
    let member = instance_yaml(&env, "member", "role: primary\n  clusterRef: prod");
    poll_until(
        "the cluster in the watch cache",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let env = &env;
            let member = member.clone();
            async move {
                let out = env
                    .cp
                    .kubectl_as(
                        env.cp.kubeconfig_path(),
                        ["apply", "-f", "-", "--dry-run=server", "-o", "json"],
                        Some(member.as_bytes()),
                    )
                    .await?;
                let shown: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
                Ok::<_, rndc_warden_testkit::Error>(
                    shown["spec"]
                        .is_object()
                        .then_some(())
                        .filter(|()| shown["spec"].get("rndcKey").is_none()),
                )
            }
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "the cluster never reached the cache: {e}\n{}",
            warden.logs()
        )
    });
    let (ok, _, stderr) = kubectl_apply(&env, &member, &[]).await;
    assert!(ok, "{stderr}");
    let stored = get_json(&env, "bind9instance", "member").await;
    assert!(
        stored["spec"].get("rndcKey").is_none(),
        "the role-level block must keep winning: {stored}"
    );
}

const KEY_A: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";
const KEY_B: &str = "ASNFZ4mrze8BI0VniavN7wEjRWeJq83vASNFZ4mrze8=";

fn key_secret_yaml(env: &TestEnv, name: &str, key: &str, annotations: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    bindy.firestoned.io/rndc-key: \"true\"\n  annotations:\n    placeholder: \"x\"\n{annotations}type: Opaque\nstringData:\n  key-name: bindy-operator\n  algorithm: hmac-sha256\n  secret: \"{key}\"\n  rndc.key: |\n    key \"bindy-operator\" {{\n        algorithm hmac-sha256;\n        secret \"{key}\";\n    }};\n",
        ns = env.ns.name()
    )
}

fn annotation(secret: &Secret, key: &str) -> Option<String> {
    secret.metadata.annotations.as_ref()?.get(key).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_secrets_are_stamped_and_guarded() {
    let (env, warden) = setup("adm-secret").await;
    let secrets: Api<Secret> = env.ns.api(&env.client);

    let (ok, _, stderr) =
        kubectl_apply(&env, &key_secret_yaml(&env, "dns-rndc", KEY_A, ""), &[]).await;
    assert!(ok, "{stderr}");
    let stored = secrets.get("dns-rndc").await.expect("secret");
    let created_at =
        annotation(&stored, "bindy.firestoned.io/rndc-created-at").expect("created-at stamped");
    assert!(created_at.ends_with('Z'), "{created_at}");
    assert_eq!(
        annotation(&stored, "bindy.firestoned.io/rndc-rotation-count").as_deref(),
        Some("0")
    );

    // New key material from someone other than the rotator is an external rotation.
    let (ok, _, stderr) =
        kubectl_apply(&env, &key_secret_yaml(&env, "dns-rndc", KEY_B, ""), &[]).await;
    assert!(ok, "{stderr}");
    let stored = secrets.get("dns-rndc").await.expect("secret");
    assert_eq!(
        annotation(&stored, "bindy.firestoned.io/rndc-rotation-count").as_deref(),
        Some("1"),
        "count bumped"
    );

    // A normal user (a ServiceAccount allowed to write Secrets) cannot lower the count.
    let user = env
        .ns
        .service_account_identity(env.cp, &env.client, "editor")
        .await
        .expect("identity");
    let grant = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: secret-editor\n  namespace: {ns}\nrules:\n- apiGroups: [\"\"]\n  resources: [\"secrets\"]\n  verbs: [\"get\", \"list\", \"create\", \"update\", \"patch\"]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: secret-editor\n  namespace: {ns}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: secret-editor\nsubjects:\n- kind: ServiceAccount\n  name: editor\n  namespace: {ns}\n",
        ns = env.ns.name()
    );
    let (ok, _, stderr) = kubectl_apply(&env, &grant, &[]).await;
    assert!(ok, "{stderr}");
    let lowered = env
        .cp
        .kubectl_as(
            &user.kubeconfig_path,
            [
                "annotate",
                "secret",
                "dns-rndc",
                "-n",
                env.ns.name(),
                "--overwrite",
                "bindy.firestoned.io/rndc-rotation-count=0",
            ],
            None,
        )
        .await
        .expect("kubectl");
    assert!(!lowered.success(), "lowering the count must be denied");
    assert!(
        lowered.stderr.contains("rndc-rotation-count"),
        "{}",
        lowered.stderr
    );

    // Back-dating created-at is the documented manual trigger and stays allowed.
    let backdated = env
        .cp
        .kubectl_as(
            &user.kubeconfig_path,
            [
                "annotate",
                "secret",
                "dns-rndc",
                "-n",
                env.ns.name(),
                "--overwrite",
                "bindy.firestoned.io/rndc-created-at=2020-01-01T00:00:00Z",
            ],
            None,
        )
        .await
        .expect("kubectl");
    assert!(backdated.success(), "{}", backdated.stderr);

    // A Secret whose rndc.key does not parse is denied; the key never shows in the message.
    let mut broken = key_secret_yaml(&env, "broken-rndc", KEY_A, "");
    broken = broken.replace("algorithm hmac-sha256;", "algorithm hmac-sha256");
    let (ok, _, stderr) = kubectl_apply(&env, &broken, &[]).await;
    assert!(!ok, "an unparsable rndc.key must be denied");
    assert!(stderr.contains("rndc.key"), "{stderr}");
    assert!(
        !stderr.contains(KEY_A) && !warden.logs().contains(KEY_A),
        "key material leaked"
    );

    // The managed-Secret path: owned by an instance that rotates, so rotate-at is stamped too.
    let owner = instance_yaml(
        &env,
        "owner",
        "role: primary\n  clusterRef: \"\"\n  rndcKey:\n    autoRotate: true\n    rotateAfter: 720h",
    );
    let (ok, _, stderr) = kubectl_apply(&env, &owner, &[]).await;
    assert!(ok, "{stderr}");
    let uid = get_json(&env, "bind9instance", "owner").await["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_owned();
    let owned: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "owner-rndc", "labels": {"bindy.firestoned.io/rndc-key": "true"},
            "ownerReferences": [{"apiVersion": "bindy.firestoned.io/v1beta1", "kind": "Bind9Instance", "name": "owner", "uid": uid}]},
        "stringData": {"key-name": "bindy-operator", "algorithm": "hmac-sha256", "secret": KEY_A,
            "rndc.key": format!("key \"bindy-operator\" {{ algorithm hmac-sha256; secret \"{KEY_A}\"; }};\n")}
    }))
    .expect("secret");
    // The instance reaches the watch cache asynchronously: retry until rotate-at is stamped.
    let stamped = poll_until(
        "rotate-at stamped",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let secrets = secrets.clone();
            let owned = owned.clone();
            async move {
                let created = secrets
                    .create(
                        &PostParams {
                            dry_run: true,
                            ..PostParams::default()
                        },
                        &owned,
                    )
                    .await?;
                Ok::<_, kube::Error>(annotation(&created, "bindy.firestoned.io/rndc-rotate-at"))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("rotate-at never stamped: {e}\n{}", warden.logs()));
    assert!(stamped.ends_with('Z'), "{stamped}");
}

/// Not a timing assertion: prints the apiserver's own view of our webhook latency during a burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_creates_reports_apiserver_webhook_latency() {
    let (env, _warden, webhooks) = setup_named("adm-burst").await;
    let instances: Api<rndc_warden::api::Bind9Instance> = env.ns.api(&env.client);
    let before = rndc_warden_testkit::Metrics::fetch(&env.client)
        .await
        .expect("metrics");
    let total = 1000;
    let started = Instant::now();
    let results = futures::stream::iter(0..total)
        .map(|i| {
            let instances = instances.clone();
            async move {
                let object: rndc_warden::api::Bind9Instance = serde_json::from_value(json!({
                    "apiVersion": "bindy.firestoned.io/v1beta1", "kind": "Bind9Instance",
                    "metadata": {"name": format!("burst-{i}")},
                    "spec": {"clusterRef": "", "role": "primary", "rndcKey": {"autoRotate": true, "rotateAfter": "720h"}}
                }))
                .expect("instance");
                instances.create(&PostParams::default(), &object).await.is_ok()
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<bool>>()
        .await;
    let elapsed = started.elapsed();
    assert_eq!(
        results.iter().filter(|ok| **ok).count(),
        total,
        "every create must be admitted"
    );
    let after = rndc_warden_testkit::Metrics::fetch(&env.client)
        .await
        .expect("metrics");
    for (kind, name) in &webhooks {
        let short = if *kind == WebhookKind::Mutating {
            "mutating"
        } else {
            "validating"
        };
        let labels = [
            ("name", name.as_str()),
            ("type", kind.metrics_type()),
            ("operation", "CREATE"),
            ("rejected", "false"),
        ];
        let hist_after = after
            .histogram(
                "apiserver_admission_webhook_admission_duration_seconds",
                &labels,
            )
            .expect("histogram after");
        let hist_before = before.histogram(
            "apiserver_admission_webhook_admission_duration_seconds",
            &labels,
        );
        let delta = delta(&hist_after, hist_before.as_ref());
        println!(
            "apiserver_admission_webhook_admission_duration_seconds {short}: {} calls, mean {:.2} ms, p99 <= {} s (bucket bound)",
            delta.count,
            1000.0 * delta.sum / delta.count.max(1.0),
            quantile_upper_bound(&delta, 0.99).map_or("n/a".to_owned(), |b| b.to_string()),
        );
        assert!(
            delta.count >= total as f64,
            "{short}: the apiserver counted {} calls",
            delta.count
        );
    }
    println!(
        "burst: {total} creates through both webhooks in {elapsed:?} ({:.0}/s)",
        total as f64 / elapsed.as_secs_f64()
    );
}

use futures::StreamExt as _;

/// `after - before`, bucket by bucket.
fn delta(after: &Histogram, before: Option<&Histogram>) -> Histogram {
    let Some(before) = before else {
        return after.clone();
    };
    Histogram {
        count: after.count - before.count,
        sum: after.sum - before.sum,
        buckets: after
            .buckets
            .iter()
            .map(|(le, n)| {
                let earlier = before
                    .buckets
                    .iter()
                    .find(|(b, _)| b == le)
                    .map_or(0.0, |(_, n)| *n);
                (*le, n - earlier)
            })
            .collect(),
    }
}

/// The smallest bucket bound under which at least `q` of the observations fall.
fn quantile_upper_bound(histogram: &Histogram, q: f64) -> Option<f64> {
    let wanted = histogram.count * q;
    histogram
        .buckets
        .iter()
        .find(|(_, n)| *n >= wanted)
        .map(|(le, _)| *le)
}
