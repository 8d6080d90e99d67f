//! Shared harness of the admission end-to-end tests: the real `rndc-warden serve` binary with
//! watch caches, registered by URL and caBundle as the chart does, and kubectl helpers.

#![allow(dead_code)]

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rndc_warden_testkit::{TestEnv, WebhookKind, WebhookRegistration, apply_crds, rule};
use serde_json::Value;

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The real binary, serving admission for one namespace; killed on drop.
pub struct Warden {
    child: std::process::Child,
    pub port: u16,
    pub ca_pem: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Warden {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Warden {
    pub async fn start(env: &TestEnv) -> Warden {
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, probe) = (free_port(), free_port());
        let log = dir.path().join("serve.log");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rndc-warden"))
            .args([
                "serve",
                "--rotation",
                "false",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .args(["--probe-listen", &format!("127.0.0.1:{probe}")])
            .arg("--generated-cert-dir")
            .arg(dir.path().join("certs"))
            .args(["--watch-namespace", env.ns.name(), "--log-format", "json"])
            .env("KUBECONFIG", env.cp.kubeconfig_path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn rndc-warden");
        let ready = format!("http://127.0.0.1:{probe}/readyz");
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "rndc-warden exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if let Ok(body) = http_get(&ready).await
                && body.starts_with("ok")
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "rndc-warden never became ready: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ca_pem =
            std::fs::read_to_string(dir.path().join("certs/ca.crt")).expect("generated CA");
        Warden {
            child,
            port,
            ca_pem,
            log,
            _dir: dir,
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A plain HTTP/1.0 GET against the probe port.
pub async fn http_get(url: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream
        .write_all(format!("GET /{path} HTTP/1.0\r\nhost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned())
}

/// Starts the binary for a fresh namespace with our CRDs and waits until both webhooks answer.
pub async fn setup(name: &str) -> (TestEnv, Warden) {
    let (env, warden, _) = setup_with_crds(name, &rndc_warden::api::crd_yaml()).await;
    (env, warden)
}

/// Like [`setup`], also returning the registered webhooks' names (mutating, validating).
pub async fn setup_named(name: &str) -> (TestEnv, Warden, Vec<(WebhookKind, String)>) {
    setup_with_crds(name, &rndc_warden::api::crd_yaml()).await
}

/// Like [`setup_named`] with the given CRDs installed (ours or the Bindy operator's).
pub async fn setup_with_crds(
    name: &str,
    crds: &str,
) -> (TestEnv, Warden, Vec<(WebhookKind, String)>) {
    let env = TestEnv::new(name).await.expect("test env");
    apply_crds(&env.client, crds, Duration::from_secs(60))
        .await
        .expect("CRDs established");
    let warden = Warden::start(&env).await;
    let rules = || {
        vec![
            rule(
                "bindy.firestoned.io",
                "v1beta1",
                &["bind9instances", "bind9clusters"],
                &["CREATE", "UPDATE"],
            ),
            rule("", "v1", &["secrets"], &["CREATE", "UPDATE"]),
        ]
    };
    let mut names = Vec::new();
    for (kind, path) in [
        (WebhookKind::Mutating, "mutate"),
        (WebhookKind::Validating, "validate"),
    ] {
        let url = format!("https://127.0.0.1:{}/{path}", warden.port);
        let registered = env
            .ns
            .register_webhook(
                &env.client,
                WebhookRegistration::new(kind, url, warden.ca_pem.clone(), rules()),
            )
            .await
            .expect("register webhook");
        names.push((kind, registered.webhook_name));
    }
    // Effective once a dry-run of a weak instance is denied by us and a bare one is defaulted.
    let probe = instance_yaml(
        &env,
        "probe",
        "role: primary\n  clusterRef: \"\"\n  rndcKey:\n    algorithm: hmac-sha1",
    );
    let started = Instant::now();
    loop {
        let out = kubectl_apply(&env, &probe, &["--dry-run=server"]).await;
        if !out.0 && out.2.contains("hmac-sha1 is not allowed") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "webhooks never became effective: {out:?}\n{}",
            warden.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (env, warden, names)
}

pub fn instance_yaml(env: &TestEnv, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: bindy.firestoned.io/v1beta1\nkind: Bind9Instance\nmetadata:\n  name: {name}\n  namespace: {}\nspec:\n  {spec}\n",
        env.ns.name()
    )
}

/// Runs `kubectl apply -f -` as admin: (success, stdout, stderr).
pub async fn kubectl_apply(
    env: &TestEnv,
    manifest: &str,
    extra: &[&str],
) -> (bool, String, String) {
    let mut args = vec!["apply", "-f", "-"];
    args.extend_from_slice(extra);
    let out = env
        .cp
        .kubectl_as(env.cp.kubeconfig_path(), args, Some(manifest.as_bytes()))
        .await
        .expect("run kubectl");
    (out.success(), out.stdout, out.stderr)
}

pub async fn get_json(env: &TestEnv, resource: &str, name: &str) -> Value {
    let out = env
        .cp
        .kubectl(["get", resource, name, "-n", env.ns.name(), "-o", "json"])
        .await
        .expect("kubectl get")
        .ok()
        .expect("kubectl get succeeded");
    serde_json::from_str(&out.stdout).expect("json")
}
