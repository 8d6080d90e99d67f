//! rndc-warden installed the way users install it: `helm install` of `charts/rndc-warden`, then
//! the binary run exactly as the chart's Deployment runs it (its args and env, its ServiceAccount's
//! token) — there is no kubelet here to run the chart's pods, so the webhook configurations point
//! at loopback (`webhook.url`), as `cargo xtask dev` does. Uninstalled on drop.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rndc_warden_testkit::namespace::mint_token;
use rndc_warden_testkit::{Identity, Metrics, TestEnv};
use serde_json::Value;

use super::binary::{WardenProcess, free_port};

/// A chart release and the one replica serving it.
pub struct ChartInstall {
    /// The Helm release name.
    pub release: String,
    /// The release namespace (the chart's ServiceAccount, Lease and certificate Secret).
    pub namespace: String,
    /// The admission port (`webhook.url` is `https://127.0.0.1:<port>`).
    pub port: u16,
    /// The replica, run as the chart's Deployment runs it.
    pub warden: WardenProcess,
    /// The chart's ServiceAccount identity the replica uses.
    pub identity: Identity,
    /// What `helm install` printed (the NOTES).
    pub notes: String,
    helm: PathBuf,
    helm_home: PathBuf,
    kubeconfig: PathBuf,
    installed: bool,
}

/// Values that a local install cannot do without: the webhooks go to the replica on loopback
/// and only see `namespaces` (the control plane is shared by the tests of a binary, and
/// `failurePolicy: Fail` would block every other test's namespace once this replica stops).
pub fn local_values(port: u16, namespaces: &[&str]) -> String {
    format!(
        "webhook:\n  url: https://127.0.0.1:{port}\n  namespaceSelector:\n    matchExpressions:\n    - key: {}\n      operator: In\n      values: [{}]\n",
        rndc_warden_testkit::TEST_ID_LABEL,
        namespaces.join(", ")
    )
}

impl ChartInstall {
    /// `helm install <release> charts/rndc-warden --namespace <namespace>` with the chart's
    /// defaults, [`local_values`] for `webhook_namespaces`, and `extra_values` (YAML, applied
    /// last); then one replica started like the Deployment, waited for until `/readyz` answers
    /// and the mutating webhook has defaulted a dry-run instance in `probe_namespace` (so the
    /// self-managed CA is injected and every configuration is served).
    pub async fn install(
        env: &TestEnv,
        release: &str,
        namespace: &str,
        webhook_namespaces: &[&str],
        extra_values: &str,
        probe_namespace: &str,
    ) -> ChartInstall {
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let local = dir.path().join("local-values.yaml");
        let extra = dir.path().join("values.yaml");
        std::fs::write(&local, local_values(port, webhook_namespaces)).expect("values");
        std::fs::write(&extra, extra_values).expect("values");
        let chart = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts/rndc-warden");
        let out = env
            .cp
            .helm([
                OsStr::new("install"),
                OsStr::new(release),
                chart.as_os_str(),
                OsStr::new("--namespace"),
                OsStr::new(namespace),
                OsStr::new("--values"),
                local.as_os_str(),
                OsStr::new("--values"),
                extra.as_os_str(),
            ])
            .await
            .expect("helm runs");
        assert!(
            out.success(),
            "`{}` failed:\n{}\n{}",
            out.command,
            out.stdout,
            out.stderr
        );
        let helm_home = env.cp.run_dir().join("helm");
        let fullname = format!("{release}-rndc-warden");
        let deployment = get_json(env, &["deployment", &fullname, "-n", namespace]).await;
        let account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .expect("the chart's Deployment names its ServiceAccount")
            .to_owned();
        let username = format!("system:serviceaccount:{namespace}:{account}");
        let token = mint_token(&env.client, namespace, &account, 24 * 3600)
            .await
            .expect("TokenRequest for the chart's ServiceAccount");
        let identity =
            Identity::from_token(env.cp, &format!("{namespace}-{release}"), &username, &token)
                .await
                .expect("identity");
        let mut warden = WardenProcess::like_the_deployment(
            &format!("{fullname}-0"),
            &deployment,
            namespace,
            &identity.kubeconfig_path,
            port,
        );
        warden.start();
        let mut install = ChartInstall {
            release: release.to_owned(),
            namespace: namespace.to_owned(),
            port,
            warden,
            identity,
            notes: out.stdout,
            helm: env.cp.binaries().helm.clone(),
            helm_home,
            kubeconfig: env.cp.kubeconfig_path().to_owned(),
            installed: true,
        };
        install.warden.wait_ready(Duration::from_secs(120)).await;
        install.wait_webhooks(env, probe_namespace).await;
        install
    }

    /// Waits until a dry-run create of a standalone instance in `namespace` comes back mutated
    /// (`role: Primary` normalised to `primary`): both configurations are served with the
    /// injected CA (with `failurePolicy: Fail`, a create fails until then). The probe rotates
    /// its key, so compliance mode (`policy.requireAutoRotate`) admits it too.
    pub async fn wait_webhooks(&mut self, env: &TestEnv, namespace: &str) {
        let manifest = format!(
            "apiVersion: bindy.firestoned.io/v1beta1\nkind: Bind9Instance\nmetadata:\n  name: webhook-probe\n  namespace: {namespace}\nspec:\n  role: Primary\n  clusterRef: \"\"\n  rndcKey:\n    autoRotate: true\n"
        );
        let started = Instant::now();
        loop {
            self.warden.assert_running();
            let out = env
                .cp
                .kubectl_as(
                    env.cp.kubeconfig_path(),
                    ["create", "--dry-run=server", "-o", "json", "-f", "-"],
                    Some(manifest.as_bytes()),
                )
                .await
                .expect("kubectl runs");
            if out.success() {
                let object: Value = serde_json::from_str(&out.stdout).expect("JSON");
                if object["spec"]["role"] == "primary" {
                    return;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the chart's webhooks never defaulted an instance: {}{}\n{}",
                out.stdout,
                out.stderr,
                self.warden.logs_tail(4000)
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The replica's `/metrics`, parsed.
    pub async fn metrics(&self) -> Metrics {
        let text = self.warden.metrics().await.expect("rndc-warden /metrics");
        Metrics::parse(&text).expect("rndc-warden metrics parse")
    }

    /// `helm uninstall` (the webhook configurations go first, so nothing stays blocked).
    /// Idempotent; also done on drop.
    pub fn uninstall(&mut self) {
        if !std::mem::take(&mut self.installed) {
            return;
        }
        let output = Command::new(&self.helm)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["uninstall", &self.release, "--namespace", &self.namespace])
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", self.helm_home.join("cache"))
            .env("HELM_CONFIG_HOME", self.helm_home.join("config"))
            .env("HELM_DATA_HOME", self.helm_home.join("data"))
            .stdin(Stdio::null())
            .output();
        match output {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "helm uninstall {} failed: {}",
                self.release,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("helm uninstall {} did not run: {e}", self.release),
        }
    }
}

impl Drop for ChartInstall {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "rndc-warden replica log (last 8000 bytes):\n{}",
                self.warden.logs_tail(8000)
            );
        }
        // The operator's logs are kept on request (testkit `bindy::KEEP_LOGS_ENV`); the
        // replica's too, beside them in the temporary directory.
        let keep = std::env::var_os(rndc_warden_testkit::bindy::KEEP_LOGS_ENV)
            .is_some_and(|v| !v.is_empty() && v != "0");
        if keep {
            let path = std::env::temp_dir().join(format!("rndc-warden-{}.log", self.release));
            match std::fs::write(&path, self.warden.logs()) {
                Ok(()) => eprintln!(
                    "rndc-warden: the replica's log is kept in {}",
                    path.display()
                ),
                Err(e) => eprintln!("rndc-warden: keeping the log in {}: {e}", path.display()),
            }
        }
        self.uninstall();
    }
}

/// `kubectl get <args> -o json` as admin.
pub async fn get_json(env: &TestEnv, args: &[&str]) -> Value {
    let mut full = vec!["get"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-o", "json"]);
    let out = env.cp.kubectl(full).await.expect("kubectl runs");
    assert!(out.success(), "{}: {}", out.command, out.stderr);
    serde_json::from_str(&out.stdout).expect("JSON")
}
