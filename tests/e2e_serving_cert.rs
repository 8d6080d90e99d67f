//! Self-managed serving certificates through a real kube-apiserver: the binary creates the CA and
//! serving certificate in a Secret, injects the caBundle into webhook configurations registered
//! with none, and renews both (CA with an old+new overlap) under continuous admission traffic
//! without a single failed call. Lifetimes are shortened to seconds to stand in for months.

use std::collections::BTreeSet;
use std::net::TcpListener as StdListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use rndc_warden::api::Bind9Instance;
use rndc_warden_testkit::{TestEnv, WebhookKind, WebhookRegistration, apply_crds, rule};
use serde_json::json;

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn data(secret: &Secret, key: &str) -> String {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_injected_and_renewed_without_failed_admission_calls() {
    let env = TestEnv::new("serving-cert").await.expect("env");
    apply_crds(
        &env.client,
        &rndc_warden::api::crd_yaml(),
        Duration::from_secs(60),
    )
    .await
    .expect("CRDs");
    let port = free_port();
    let rules = || {
        vec![rule(
            "bindy.firestoned.io",
            "v1beta1",
            &["bind9instances"],
            &["CREATE", "UPDATE"],
        )]
    };
    let mut configs = Vec::new();
    for (kind, path) in [
        (WebhookKind::Mutating, "mutate"),
        (WebhookKind::Validating, "validate"),
    ] {
        // Registered with no caBundle, as the chart does in self-managed mode.
        let registered = env
            .ns
            .register_webhook(
                &env.client,
                WebhookRegistration::new(
                    kind,
                    format!("https://127.0.0.1:{port}/{path}"),
                    "",
                    rules(),
                ),
            )
            .await
            .expect("register");
        configs.push(registered.configuration_name);
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("serve.log");
    let _warden = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_rndc-warden"))
            .args([
                "serve",
                "--rotation",
                "false",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .args(["--probe-listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--watch-namespace", env.ns.name()])
            .args([
                "--cert-secret",
                "serving-cert",
                "--cert-namespace",
                env.ns.name(),
            ])
            .args(["--webhook-config", &configs.join(",")])
            .args(["--cert-dns-name", "localhost,127.0.0.1"])
            .args(["--cert-ca-lifetime", "40s", "--cert-lifetime", "15s"])
            .args([
                "--cert-propagation-delay",
                "2s",
                "--cert-check-interval",
                "1s",
            ])
            .env("KUBECONFIG", env.cp.kubeconfig_path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn"),
    );
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();

    let instances: Api<Bind9Instance> = env.ns.api(&env.client);
    let secrets: Api<Secret> = env.ns.api(&env.client);
    let instance: Bind9Instance = serde_json::from_value(json!({
        "apiVersion": "bindy.firestoned.io/v1beta1", "kind": "Bind9Instance",
        "metadata": {"name": "probe"}, "spec": {"clusterRef": "", "role": "Primary"}
    }))
    .expect("instance");
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let admitted = |result: &Result<Bind9Instance, kube::Error>| {
        // Our mutating webhook normalises the role: proof the call went through us.
        result
            .as_ref()
            .is_ok_and(|created| created.spec.role.as_deref() == Some("primary"))
    };

    // The caBundle is injected: calls start to succeed.
    let started = Instant::now();
    while !admitted(&instances.create(&dry_run, &instance).await) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "caBundle never injected:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Continuous traffic across at least one CA rotation and several leaf renewals.
    let (mut calls, mut failures) = (0_u32, Vec::new());
    let (mut leaves, mut signing_cas, mut max_bundle) = (BTreeSet::new(), BTreeSet::new(), 0);
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(55) {
        let result = instances.create(&dry_run, &instance).await;
        calls += 1;
        if !admitted(&result) {
            failures.push(format!("{:?}: {:?}", window.elapsed(), result.err()));
        }
        if let Ok(secret) = secrets.get("serving-cert").await {
            leaves.insert(data(&secret, "tls.crt"));
            signing_cas.insert(data(&secret, "ca-signing.crt"));
            max_bundle =
                max_bundle.max(data(&secret, "ca.crt").matches("BEGIN CERTIFICATE").count());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{calls} admission calls, {} serving certificates, {} signing CAs, up to {max_bundle} CAs trusted at once",
        leaves.len(),
        signing_cas.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed during renewal: {failures:#?}\n{}",
        failures.len(),
        logs()
    );
    assert!(
        signing_cas.len() >= 2,
        "the CA was never rotated:\n{}",
        logs()
    );
    assert!(
        leaves.len() >= 3,
        "the serving certificate was renewed only {} times",
        leaves.len()
    );
    assert_eq!(max_bundle, 2, "old and new CA must overlap in the bundle");
    assert!(!logs().contains("PRIVATE KEY"), "key material in logs");
}
