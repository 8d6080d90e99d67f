//! The chart's `certificates.mode=cert-manager` against the real cert-manager: its controller and
//! cainjector (v1.21.2, built from the Go module proxy by `scripts/cert-manager-bins.sh`, or
//! `CERT_MANAGER_BIN_DIR`) run as local processes against the local control plane with
//! cert-manager's CRDs.
//!
//! `helm install` in cert-manager mode; cert-manager issues the chart's self-signed root, CA and
//! serving Certificate; cainjector injects the CA into both webhook configurations; the real
//! binary, run as the chart's Deployment runs it and started before anything is issued, waits for
//! and then serves the Secret cert-manager wrote. There is
//! no kubelet, so a stand-in syncs the Secret into files the way a Secret volume is updated (a
//! new timestamped directory, then an atomic `..data` symlink swap). Admission is called through
//! the apiserver in a loop across a renewal (short `duration`), which the server's file watch
//! picks up; no call may fail.

mod common;
mod rotation_support;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use rndc_warden_testkit::bins::built_by_script;
use rndc_warden_testkit::namespace::mint_token;
use rndc_warden_testkit::{Identity, TestEnv, TestNamespace, apply_crds};
use rotation_support::binary::{WardenProcess, free_port};
use rotation_support::chart::{get_json, local_values};
use serde_json::Value;

const RELEASE: &str = "cm";
const FULLNAME: &str = "cm-rndc-warden";

/// cert-manager's controller and cainjector, killed on drop.
struct CertManager {
    children: Vec<(String, Child)>,
    dir: tempfile::TempDir,
}

impl CertManager {
    async fn start(env: &TestEnv) -> CertManager {
        let bins = built_by_script("scripts/cert-manager-bins.sh", "CERT_MANAGER_BIN_DIR")
            .unwrap_or_else(|error| {
                panic!("cert-manager is needed (scripts/cert-manager-bins.sh builds it with Go): {error}")
            });
        let crds = std::fs::read_to_string(bins.join("crds.yaml"))
            .expect("crds.yaml beside the cert-manager binaries");
        apply_crds(&env.client, &crds, Duration::from_secs(60))
            .await
            .expect("cert-manager's CRDs");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut children = Vec::new();
        for name in ["controller", "cainjector"] {
            let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).expect("log");
            let child = Command::new(bins.join(name))
                .arg("--kubeconfig")
                .arg(env.cp.kubeconfig_path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|error| panic!("starting cert-manager {name}: {error}"));
            children.push((name.to_owned(), child));
        }
        CertManager { children, dir }
    }

    /// Fails if a process died; otherwise nothing.
    fn assert_running(&mut self) {
        for (name, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "cert-manager {name} exited ({status}):\n{}",
                    tail(&self.dir.path().join(format!("{name}.log")))
                );
            }
        }
    }

    fn logs(&self) -> String {
        ["controller", "cainjector"]
            .iter()
            .map(|name| {
                format!(
                    "--- cert-manager {name}:\n{}",
                    tail(&self.dir.path().join(format!("{name}.log")))
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for CertManager {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(6000);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

/// The kubelet's part for one Secret volume: every change of the Secret is written to a new
/// directory and published with an atomic `..data` symlink swap, the files being symlinks into
/// `..data` (what the server's reload must cope with).
struct SecretVolume {
    dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl SecretVolume {
    fn start(api: Api<Secret>, name: &str) -> SecretVolume {
        let dir = tempfile::tempdir().expect("volume dir");
        let root = dir.path().to_owned();
        let name = name.to_owned();
        let task = tokio::spawn(async move {
            let mut last: Option<BTreeMap<String, Vec<u8>>> = None;
            for generation in 0u64.. {
                if let Ok(Some(secret)) = api.get_opt(&name).await {
                    let data: BTreeMap<String, Vec<u8>> = secret
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    if !data.is_empty() && last.as_ref() != Some(&data) {
                        publish(&root, generation, &data);
                        last = Some(data);
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        SecretVolume { dir, task }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.path().join(key)
    }
}

impl Drop for SecretVolume {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn publish(root: &Path, generation: u64, data: &BTreeMap<String, Vec<u8>>) {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let version = format!("..{generation}");
    let target = root.join(&version);
    std::fs::create_dir(&target).expect("version dir");
    for (key, value) in data {
        let file = target.join(key);
        std::fs::write(&file, value).expect("volume file");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o440)).expect("mode");
    }
    let staged = root.join("..data_tmp");
    let _ = std::fs::remove_file(&staged);
    symlink(&version, &staged).expect("staged symlink");
    std::fs::rename(&staged, root.join("..data")).expect("swap ..data");
    for key in data.keys() {
        let link = root.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(key), &link).expect("key symlink");
        }
    }
}

fn condition_true(object: &Value, kind: &str) -> bool {
    object["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == kind && c["status"] == "True"))
}

fn not_after(pem: &[u8]) -> i64 {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem).expect("PEM");
    let cert = parsed.parse_x509().expect("X.509");
    cert.validity().not_after.timestamp()
}

fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_manager_issues_injects_and_renews_without_a_failed_admission_call() {
    let env = TestEnv::new("cert-manager").await.expect("test env");
    let mut cert_manager = CertManager::start(&env).await;
    // The Bindy CRDs, so that the watch caches sync and /readyz answers.
    apply_crds(
        &env.client,
        &rndc_warden::api::crd_yaml(),
        Duration::from_secs(60),
    )
    .await
    .expect("Bindy CRDs");
    let workload = TestNamespace::create(&env.client, "cm-workload")
        .await
        .expect("workload namespace");
    let release_ns = env.ns.name().to_owned();
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let local = dir.path().join("local.yaml");
    let values = dir.path().join("values.yaml");
    std::fs::write(&local, local_values(port, &[workload.name()])).expect("values");
    // Renewed 40 s after each issuance; the server checks its files every second.
    std::fs::write(
        &values,
        concat!(
            "crds:\n  install: false\nrotation:\n  enabled: false\n",
            "server:\n  tlsReloadInterval: 1s\n",
            "certificates:\n  mode: cert-manager\n  certManager:\n    duration: 2m\n    renewBefore: 80s\n",
        ),
    )
    .expect("values");
    let chart = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts/rndc-warden");
    let out = env
        .cp
        .helm([
            OsStr::new("install"),
            OsStr::new(RELEASE),
            chart.as_os_str(),
            OsStr::new("--namespace"),
            OsStr::new(&release_ns),
            OsStr::new("--values"),
            local.as_os_str(),
            OsStr::new("--values"),
            values.as_os_str(),
        ])
        .await
        .expect("helm runs");
    assert!(
        out.success(),
        "helm install:\n{}\n{}",
        out.stdout,
        out.stderr
    );

    // The server, as the Deployment runs it, on the files of the Secret volume, started before
    // cert-manager has issued anything: it waits for the files (RNDC_WARDEN_TLS_WAIT).
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &release_ns);
    let secret_name = format!("{FULLNAME}-tls");
    let volume = SecretVolume::start(secrets.clone(), &secret_name);
    let deployment = get_json(&env, &["deployment", FULLNAME, "-n", &release_ns]).await;
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let env_value = |name: &str| {
        container["env"]
            .as_array()
            .and_then(|e| e.iter().find(|v| v["name"] == name))
            .and_then(|v| v["value"].as_str())
            .map(str::to_owned)
    };
    assert_eq!(
        env_value("RNDC_WARDEN_TLS_CERT").as_deref(),
        Some("/etc/rndc-warden/tls/tls.crt")
    );
    assert_eq!(
        env_value("RNDC_WARDEN_TLS_KEY").as_deref(),
        Some("/etc/rndc-warden/tls/tls.key")
    );
    assert_eq!(env_value("RNDC_WARDEN_TLS_WAIT").as_deref(), Some("50s"));
    assert_eq!(
        deployment["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == "tls"))
            .map(|v| v["secret"]["secretName"].clone()),
        Some(Value::from(secret_name.clone())),
        "the Deployment mounts the Secret cert-manager writes"
    );
    let account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .expect("service account")
        .to_owned();
    let token = mint_token(&env.client, &release_ns, &account, 3600)
        .await
        .expect("TokenRequest");
    let username = format!("system:serviceaccount:{release_ns}:{account}");
    let identity = Identity::from_token(env.cp, &format!("{release_ns}-cm"), &username, &token)
        .await
        .expect("identity");
    let mut warden = WardenProcess::like_the_deployment(
        &format!("{FULLNAME}-0"),
        &deployment,
        &release_ns,
        &identity.kubeconfig_path,
        port,
    )
    .with_env(
        "RNDC_WARDEN_TLS_CERT",
        &volume.path("tls.crt").display().to_string(),
    )
    .with_env(
        "RNDC_WARDEN_TLS_KEY",
        &volume.path("tls.key").display().to_string(),
    );
    warden.start();
    // cert-manager issues the chart's Certificates.
    let started = Instant::now();
    let serving = format!("{FULLNAME}-serving");
    loop {
        cert_manager.assert_running();
        let ca = get_json(
            &env,
            &["certificate", &format!("{FULLNAME}-ca"), "-n", &release_ns],
        )
        .await;
        let leaf = get_json(&env, &["certificate", &serving, "-n", &release_ns]).await;
        if condition_true(&ca, "Ready") && condition_true(&leaf, "Ready") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the Certificates never became Ready:\nCA: {}\nserving: {}\n{}",
            ca["status"],
            leaf["status"],
            cert_manager.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let secret = secrets.get(&secret_name).await.expect("the serving Secret");
    let data = secret.data.clone().unwrap_or_default();
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(
            data.contains_key(key),
            "cert-manager wrote {key} into {secret_name}"
        );
    }
    let ca_b64 = base64::engine::general_purpose::STANDARD.encode(&data["ca.crt"].0);

    // cainjector puts that CA into both webhook configurations.
    let started = Instant::now();
    loop {
        let mut bundles = Vec::new();
        for (kind, name) in [
            (
                "mutatingwebhookconfiguration",
                format!("{FULLNAME}-mutating"),
            ),
            (
                "validatingwebhookconfiguration",
                format!("{FULLNAME}-validating"),
            ),
        ] {
            let config = get_json(&env, &[kind, &name]).await;
            for hook in config["webhooks"].as_array().expect("webhooks") {
                bundles.push(
                    hook["clientConfig"]["caBundle"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                );
            }
        }
        if !bundles.is_empty() && bundles.iter().all(|b| *b == ca_b64) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "cainjector did not inject the CA into every webhook ({} of {} match)\n{}",
            bundles.iter().filter(|b| **b == ca_b64).count(),
            bundles.len(),
            cert_manager.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    warden.wait_ready(Duration::from_secs(120)).await;

    // Admission through the apiserver with cainjector's caBundle.
    let bad_secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: broken\n  namespace: {}\n  labels:\n    bindy.firestoned.io/rndc-key: \"true\"\nstringData:\n  rndc.key: not a key\n",
        workload.name()
    );
    let denied =
        |output: &str| output.contains("denied the request") && output.contains("rndc.key");
    let started = Instant::now();
    loop {
        let (ok, output) = dry_run(&env, &bad_secret).await;
        if !ok && denied(&output) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the webhook never answered through cert-manager's CA: {output}\n{}",
            warden.logs_tail(4000)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let metrics = warden.metrics().await.expect("/metrics");
    let first_expiry = metric(
        &metrics,
        "rndc_warden_serving_cert_expiry_timestamp_seconds ",
    )
    .expect("the serving certificate expiry metric");
    let first_crt = data["tls.crt"].0.clone();
    assert_eq!(
        first_expiry as i64,
        not_after(&first_crt),
        "the server serves cert-manager's certificate"
    );

    // Admission calls across a renewal: cert-manager writes a new certificate and key, the volume
    // swaps, the server reloads; no call may fail.
    let (mut calls, mut failures) = (0, Vec::new());
    let mut renewed_at: Option<Instant> = None;
    let started = Instant::now();
    loop {
        let (ok, output) = dry_run(&env, &bad_secret).await;
        calls += 1;
        if ok || !denied(&output) {
            failures.push(output);
        }
        let metrics = warden.metrics().await.unwrap_or_default();
        let expiry = metric(
            &metrics,
            "rndc_warden_serving_cert_expiry_timestamp_seconds ",
        )
        .unwrap_or(0.0);
        let reloads = metric(
            &metrics,
            r#"rndc_warden_tls_reloads_total{result="success"}"#,
        )
        .unwrap_or(0.0);
        if renewed_at.is_none() && expiry > first_expiry && reloads >= 1.0 {
            renewed_at = Some(Instant::now());
        }
        // Keep calling for a few seconds after the reload.
        if renewed_at.is_some_and(|at| at.elapsed() > Duration::from_secs(5)) && calls > 20 {
            break;
        }
        cert_manager.assert_running();
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "no renewal reloaded within 150 s ({calls} calls; expiry {expiry} vs first {first_expiry}, {reloads} reloads)\n{}\n{}",
            warden.logs_tail(4000),
            cert_manager.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let renewed = secrets.get(&secret_name).await.expect("Secret");
    let renewed_crt = renewed.data.unwrap_or_default()["tls.crt"].0.clone();
    assert_ne!(
        renewed_crt, first_crt,
        "cert-manager renewed the certificate"
    );
    let metrics = warden.metrics().await.expect("/metrics");
    let served = metric(
        &metrics,
        "rndc_warden_serving_cert_expiry_timestamp_seconds ",
    )
    .expect("expiry");
    assert!(
        served as i64 >= not_after(&renewed_crt) - 1 && served > first_expiry,
        "the server serves the renewed certificate (expiry {served}, Secret {})",
        not_after(&renewed_crt)
    );
    assert!(
        failures.is_empty(),
        "{} of {calls} admission calls failed across the renewal, e.g.:\n{}\n{}",
        failures.len(),
        failures[0],
        warden.logs_tail(4000)
    );
    println!(
        "CERT-MANAGER: {calls} admission calls across a renewal, none failed; reload seen {:.1}s into the loop",
        renewed_at.map_or(0.0, |at| at.duration_since(started).as_secs_f64())
    );
    drop(warden);
    drop(volume);
    let out = env
        .cp
        .helm(["uninstall", RELEASE, "--namespace", &release_ns])
        .await
        .expect("helm runs");
    assert!(out.success(), "helm uninstall: {}", out.stderr);
}

/// `kubectl apply --dry-run=server` of `manifest`: whether it passed, and its output.
async fn dry_run(env: &TestEnv, manifest: &str) -> (bool, String) {
    let (ok, stdout, stderr) = common::kubectl_apply(env, manifest, &["--dry-run=server"]).await;
    (ok, format!("{stdout}{stderr}"))
}
