//! The Helm chart (`charts/rndc-warden`) and what is generated from it, checked with the real
//! helm v3.22 and, for install/upgrade/uninstall, a real kube-apiserver (the testkit):
//!
//! - `helm lint --strict` and `helm template` for the defaults and for every option;
//! - values that violate `values.schema.json` are rejected with a message naming the value;
//! - `deploy/manifests/` and the chart's copy of the CRDs are up to date
//!   (`UPDATE_MANIFESTS=1 cargo test --test chart` rewrites them);
//! - every rendered option set is accepted by the apiserver (server-side dry run);
//! - `helm install`, then the real binary run as the chart's ServiceAccount and reached through the
//!   chart's webhook configurations (`webhook.url`), `kubectl auth can-i --list` against
//!   `docs/security.md`, `helm upgrade` keeping the injected caBundle, `helm uninstall` leaving no
//!   webhook configuration behind.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rndc_warden_testkit::namespace::mint_token;
use rndc_warden_testkit::{Binaries, Identity, TestEnv, TestNamespace};
use serde_json::{Value, json};

mod rbac_support;
use rbac_support::{Grant, documented};

const RELEASE_NS: &str = "dns-system";
/// The webhook configurations of release `rel`.
const WEBHOOK_CONFIGS: [(&str, &str); 2] = [
    ("MutatingWebhookConfiguration", "rel-rndc-warden-mutating"),
    (
        "ValidatingWebhookConfiguration",
        "rel-rndc-warden-validating",
    ),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart_dir() -> PathBuf {
    root().join("charts/rndc-warden")
}

fn binaries() -> &'static Binaries {
    static BINS: OnceLock<Binaries> = OnceLock::new();
    BINS.get_or_init(|| {
        Binaries::locate().expect("helm/kubectl binaries (see docs/development.md)")
    })
}

/// A private helm home so that the developer's repositories and plugins never matter.
fn helm_home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chart-helm-home");
        for dir in ["cache", "config", "data"] {
            std::fs::create_dir_all(home.join(dir)).expect("helm home");
        }
        home
    })
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs helm offline (no kubeconfig: `lookup` finds nothing, as in `helm template` for GitOps).
fn helm(args: &[&str]) -> Run {
    let home = helm_home();
    let output = Command::new(&binaries().helm)
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env("KUBECONFIG", "/dev/null")
        .stdin(Stdio::null())
        .output()
        .expect("helm runs");
    Run {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Writes `values` (YAML) to a file that lives as long as the returned guard.
fn values_file(values: &str) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("values file");
    std::fs::write(file.path(), values).expect("values written");
    file
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// `helm template` output for `values`, or helm's error.
fn try_render(release: &str, namespace: &str, values: &str) -> Result<String, String> {
    let file = values_file(values);
    let chart = chart_dir();
    let run = helm(&[
        "template",
        release,
        path_str(&chart),
        "--namespace",
        namespace,
        "--values",
        path_str(file.path()),
    ]);
    if run.ok {
        Ok(run.stdout)
    } else {
        Err(run.stderr)
    }
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("rendered YAML parses"))
        .filter(|doc: &Value| !doc.is_null())
        .collect()
}

/// The rendered objects of release `rel` in [`RELEASE_NS`].
fn render(values: &str) -> Rendered {
    let yaml = try_render("rel", RELEASE_NS, values)
        .unwrap_or_else(|e| panic!("helm template failed for values:\n{values}\n{e}"));
    Rendered(documents(&yaml))
}

struct Rendered(Vec<Value>);

impl Rendered {
    fn all(&self, kind: &str) -> Vec<&Value> {
        self.0.iter().filter(|d| d["kind"] == kind).collect()
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.0
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} rendered; have {:?}", self.names()))
    }

    fn has(&self, kind: &str) -> bool {
        self.0.iter().any(|d| d["kind"] == kind)
    }

    fn names(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|d| format!("{}/{}", d["kind"], d["metadata"]["name"]))
            .collect()
    }

    fn container(&self) -> &Value {
        &self.get("Deployment", "rel-rndc-warden")["spec"]["template"]["spec"]["containers"][0]
    }

    /// The container's plain `env` values (those set with `valueFrom` map to `None`).
    fn env(&self) -> BTreeMap<String, Option<String>> {
        self.container()["env"]
            .as_array()
            .expect("env list")
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().expect("env name").to_owned(),
                    e["value"].as_str().map(str::to_owned),
                )
            })
            .collect()
    }

    /// Every webhook of both configurations.
    fn webhooks(&self) -> Vec<&Value> {
        WEBHOOK_CONFIGS
            .iter()
            .flat_map(|(kind, name)| {
                self.get(kind, name)["webhooks"]
                    .as_array()
                    .expect("webhooks list")
            })
            .collect()
    }

    /// `(apiGroup, resource, verb)` of every RBAC rule of `kind/name`.
    fn rules(&self, kind: &str, name: &str) -> BTreeSet<(String, String, String)> {
        let mut out = BTreeSet::new();
        for rule in self.get(kind, name)["rules"].as_array().expect("rules") {
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        out.insert((group.clone(), resource.clone(), verb));
                    }
                }
            }
        }
        out
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn rule(group: &str, resource: &str, verb: &str) -> (String, String, String) {
    (group.to_owned(), resource.to_owned(), verb.to_owned())
}

/// A PEM CA for the `provided` certificate mode.
fn test_ca_pem() -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).expect("self-signed CA").pem()
}

/// Every option the chart has, one value set each (name, values YAML). All are linted, rendered,
/// checked below and dry-run against the apiserver.
fn option_sets() -> Vec<(&'static str, String)> {
    let ca = test_ca_pem().replace('\n', "\n      ");
    vec![
        ("defaults", String::new()),
        ("cert-manager", "certificates:\n  mode: cert-manager\n".into()),
        (
            "cert-manager-issuer",
            "certificates:\n  mode: cert-manager\n  certManager:\n    issuerRef:\n      name: corp-ca\n      kind: ClusterIssuer\n      group: cert-manager.io\n".into(),
        ),
        (
            "provided",
            format!(
                "certificates:\n  mode: provided\n  secretName: my-webhook-tls\n  provided:\n    caBundle: |\n      {ca}\n"
            ),
        ),
        (
            "signal",
            "reload:\n  strategy: signal\n  podSelector: app=dns,instance={instance}\n  container: named\n".into(),
        ),
        (
            "service-monitor",
            "serviceMonitor:\n  enabled: true\n  labels:\n    release: prometheus\n".into(),
        ),
        (
            "prometheus-rule",
            "prometheusRule:\n  enabled: true\n  labels:\n    release: prometheus\n  alertLabels:\n    team: dns\n".into(),
        ),
        (
            "grafana-dashboard",
            "grafanaDashboard:\n  enabled: true\n  annotations:\n    grafana_folder: DNS\n".into(),
        ),
        (
            "network-policy",
            "networkPolicy:\n  enabled: true\n  metricsFrom:\n    - namespaceSelector:\n        matchLabels:\n          kubernetes.io/metadata.name: monitoring\n".into(),
        ),
        ("crds-off", "crds:\n  install: false\n".into()),
        (
            "match-conditions",
            "webhook:\n  matchConditions:\n    - name: not-garbage-collector\n      expression: \"request.userInfo.username != 'system:serviceaccount:kube-system:generic-garbage-collector'\"\n".into(),
        ),
        (
            "url",
            "webhook:\n  url: https://127.0.0.1:8443/\n  failurePolicy: Ignore\n  timeoutSeconds: 3\n".into(),
        ),
        (
            "watch-namespaces",
            "watchNamespaces: [dns-a, dns-b]\nwebhook:\n  namespaceSelector:\n    matchLabels:\n      rndc-warden: enabled\n".into(),
        ),
        (
            "admission-only",
            "replicaCount: 1\nrotation:\n  enabled: false\n  leaderElection: false\npodDisruptionBudget:\n  enabled: false\n".into(),
        ),
        (
            "policy-and-scheduling",
            concat!(
                "policy:\n  denyAlgorithms: [hmac-md5, hmac-sha1, hmac-sha224]\n  defaultRotateAfter: 30d\n",
                "  defaultAlgorithm: hmac-sha512\n  defaultAutoRotate: true\n  requireAutoRotate: true\n",
                "  secretNameTemplate: \"{instance}-rndc-key\"\n",
                "image:\n  digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n",
                "imagePullSecrets: [{name: regcred}]\npriorityClassName: system-cluster-critical\n",
                "nodeSelector: {kubernetes.io/os: linux}\ntolerations: [{key: dedicated, operator: Exists}]\n",
                "affinity:\n  podAntiAffinity:\n    requiredDuringSchedulingIgnoredDuringExecution:\n",
                "      - topologyKey: kubernetes.io/hostname\n        labelSelector: {matchLabels: {app.kubernetes.io/name: rndc-warden}}\n",
                "podDisruptionBudget:\n  minAvailable: null\n  maxUnavailable: 1\n",
                "extraEnv: [{name: RNDC_WARDEN_CLIENT_QPS, value: \"20\"}]\n",
                "serviceAccount:\n  annotations: {eks.amazonaws.com/role-arn: arn:aws:iam::1:role/x}\n",
            )
            .into(),
        ),
        (
            "policy-allow-all",
            "policy:\n  allowAllAlgorithms: true\n  defaultAlgorithm: hmac-sha1\n".into(),
        ),
        (
            "connection-limits",
            "server:\n  maxConnections: 64\n  handshakeTimeout: 3s\n  headerTimeout: 30s\n  idleTimeout: 150s\n  writeTimeout: 2500ms\n".into(),
        ),
    ]
}

#[test]
fn helm_lint_is_clean_for_the_defaults_and_every_option() {
    let chart = chart_dir();
    for (name, values) in option_sets() {
        let file = values_file(&values);
        let run = helm(&[
            "lint",
            "--strict",
            path_str(&chart),
            "--values",
            path_str(file.path()),
        ]);
        let output = format!("{}{}", run.stdout, run.stderr);
        assert!(
            run.ok && !output.contains("[WARNING]") && !output.contains("[ERROR]"),
            "helm lint --strict with option set {name:?} is not clean:\n{output}"
        );
    }
}

#[test]
fn default_values_render_a_safe_highly_available_install() {
    let r = render("");
    let deployment = r.get("Deployment", "rel-rndc-warden");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    assert_eq!(pod["serviceAccountName"], "rel-rndc-warden");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = r.container();
    assert_eq!(container["image"], "ghcr.io/firestoned/rndc-warden:0.1.0");
    assert_eq!(container["args"], json!(["serve"]));
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "probes", "{probe}");
    }
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let anti = &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        [0]["podAffinityTerm"];
    assert_eq!(anti["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        anti["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"],
        "rel"
    );
    assert_eq!(
        r.get("PodDisruptionBudget", "rel-rndc-warden")["spec"]["minAvailable"],
        1
    );

    // Webhooks: safe defaults on all four (two per configuration).
    let webhooks = r.webhooks();
    assert_eq!(webhooks.len(), 4);
    for hook in &webhooks {
        let name = &hook["name"];
        assert_eq!(hook["sideEffects"], "None", "{name}");
        assert_eq!(hook["admissionReviewVersions"], json!(["v1"]), "{name}");
        assert_eq!(hook["failurePolicy"], "Fail", "{name}");
        assert_eq!(hook["timeoutSeconds"], 5, "{name}");
        assert_eq!(
            hook["namespaceSelector"]["matchExpressions"],
            json!([{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [RELEASE_NS, "kube-system"]}]),
            "{name}"
        );
        let service = &hook["clientConfig"]["service"];
        assert_eq!(service["name"], "rel-rndc-warden", "{name}");
        assert_eq!(service["namespace"], RELEASE_NS, "{name}");
        assert_eq!(service["port"], 443, "{name}");
        // No lookup under `helm template`: the leader injects it (self-managed).
        assert!(hook["clientConfig"].get("caBundle").is_none(), "{name}");
        assert!(hook.get("matchConditions").is_none(), "{name}");
    }
    let secret_hooks: Vec<_> = webhooks
        .iter()
        .filter(|h| h["rules"][0]["resources"] == json!(["secrets"]))
        .collect();
    assert_eq!(
        secret_hooks.len(),
        2,
        "one Secret webhook per configuration"
    );
    for hook in secret_hooks {
        assert_eq!(
            hook["objectSelector"],
            json!({"matchLabels": {"bindy.firestoned.io/rndc-key": "true"}})
        );
    }
    for ((kind, name), path) in WEBHOOK_CONFIGS.iter().zip(["/mutate", "/validate"]) {
        for hook in r.get(kind, name)["webhooks"].as_array().expect("webhooks") {
            assert_eq!(hook["clientConfig"]["service"]["path"], path, "{name}");
        }
    }

    // CRDs are installed and kept on uninstall.
    let crds = r.all("CustomResourceDefinition");
    assert_eq!(crds.len(), 3);
    for crd in crds {
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
    }

    // Least privilege: no exec, no cluster-wide write outside the rotator's needs.
    let workload = r.rules("ClusterRole", "rel-rndc-warden");
    assert!(!workload.contains(&rule("", "pods/exec", "create")));
    assert!(workload.contains(&rule("", "secrets", "update")));
    assert!(r.has("ClusterRoleBinding"));
    let cluster = &r.get("ClusterRole", "rel-rndc-warden-cluster")["rules"];
    assert_eq!(
        cluster[1]["resourceNames"],
        json!(["rel-rndc-warden-mutating", "rel-rndc-warden-validating"]),
        "webhook configurations only by name"
    );
    let role = &r.get("Role", "rel-rndc-warden")["rules"];
    assert_eq!(role[1]["resourceNames"], json!(["rel-rndc-warden-rotator"]));
    assert_eq!(role[3]["resourceNames"], json!(["rel-rndc-warden-tls"]));
}

#[test]
fn the_deployment_passes_the_self_managed_certificate_contract_to_the_binary() {
    let r = render("");
    let env = r.env();
    let expect = |name: &str, value: &str| {
        assert_eq!(
            env.get(name).cloned().flatten().as_deref(),
            Some(value),
            "env {name}; all: {env:?}"
        );
    };
    expect("RNDC_WARDEN_CERT_SECRET", "rel-rndc-warden-tls");
    expect(
        "RNDC_WARDEN_WEBHOOK_CONFIGS",
        "rel-rndc-warden-mutating,rel-rndc-warden-validating",
    );
    expect(
        "RNDC_WARDEN_CERT_DNS_NAMES",
        "rel-rndc-warden,rel-rndc-warden.dns-system,rel-rndc-warden.dns-system.svc,rel-rndc-warden.dns-system.svc.cluster.local",
    );
    expect("RNDC_WARDEN_CERT_CA_LIFETIME", "730d");
    expect("RNDC_WARDEN_CERT_LIFETIME", "90d");
    expect("RNDC_WARDEN_CERT_PROPAGATION_DELAY", "30s");
    expect("RNDC_WARDEN_CERT_CHECK_INTERVAL", "60s");
    expect(
        "RNDC_WARDEN_ROTATOR_USERNAME",
        "system:serviceaccount:dns-system:rel-rndc-warden",
    );
    expect("RNDC_WARDEN_LEASE_NAME", "rel-rndc-warden-rotator");
    expect("RNDC_WARDEN_RELOAD_STRATEGY", "rollout");
    for from_downward_api in [
        "RNDC_WARDEN_LEASE_NAMESPACE",
        "RNDC_WARDEN_CERT_NAMESPACE",
        "RNDC_WARDEN_IDENTITY",
    ] {
        assert_eq!(
            env.get(from_downward_api),
            Some(&None),
            "{from_downward_api}"
        );
    }
    // The certificate comes from the API, not from files: no TLS file flags, no volume.
    assert!(!env.contains_key("RNDC_WARDEN_TLS_CERT") && !env.contains_key("RNDC_WARDEN_TLS_KEY"));
    let pod = &r.get("Deployment", "rel-rndc-warden")["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"],
        json!([{"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}])
    );
    // The binary creates the Secret; a rendered one would be reset by every `helm upgrade`.
    assert!(!r.has("Secret"), "the certificate Secret is not rendered");
}

#[test]
fn the_connection_limits_reach_the_binary_with_its_defaults() {
    let env = render("").env();
    for (name, value) in [
        ("RNDC_WARDEN_MAX_BODY_MEMORY", "16MiB"),
        ("RNDC_WARDEN_MAX_CONNECTIONS", "1024"),
        ("RNDC_WARDEN_HANDSHAKE_TIMEOUT", "10s"),
        ("RNDC_WARDEN_HEADER_TIMEOUT", "10s"),
        ("RNDC_WARDEN_IDLE_TIMEOUT", "120s"),
        ("RNDC_WARDEN_WRITE_TIMEOUT", "10s"),
    ] {
        assert_eq!(
            env.get(name).cloned().flatten().as_deref(),
            Some(value),
            "env {name}; all: {env:?}"
        );
    }
}

#[test]
fn every_option_renders_what_it_promises() {
    for (name, values) in option_sets() {
        let r = render(&values);
        let env = r.env();
        let env_is =
            |key: &str, value: &str| env.get(key).cloned().flatten().as_deref() == Some(value);
        let webhooks = r.webhooks();
        let workload = r.rules("ClusterRole", "rel-rndc-warden");
        match name {
            "defaults" => {}
            "cert-manager" => {
                for hook in &webhooks {
                    assert!(hook["clientConfig"].get("caBundle").is_none(), "{name}");
                }
                for (kind, config) in WEBHOOK_CONFIGS {
                    let annotation = &r.get(kind, config)["metadata"]["annotations"]["cert-manager.io/inject-ca-from"];
                    assert_eq!(annotation, "dns-system/rel-rndc-warden-serving", "{name}");
                }
                let cert = r.get("Certificate", "rel-rndc-warden-serving");
                assert_eq!(cert["spec"]["secretName"], "rel-rndc-warden-tls");
                assert_eq!(cert["spec"]["issuerRef"]["name"], "rel-rndc-warden-ca");
                assert!(
                    strings(&cert["spec"]["dnsNames"])
                        .contains(&"rel-rndc-warden.dns-system.svc".to_owned())
                );
                assert_eq!(
                    r.get("Certificate", "rel-rndc-warden-ca")["spec"]["isCA"],
                    true
                );
                assert_eq!(r.all("Issuer").len(), 2, "self-signed root + CA issuer");
                assert!(!env.contains_key("RNDC_WARDEN_CERT_SECRET"));
                assert!(env_is(
                    "RNDC_WARDEN_TLS_CERT",
                    "/etc/rndc-warden/tls/tls.crt"
                ));
                let volume = &r.get("Deployment", "rel-rndc-warden")["spec"]["template"]["spec"]["volumes"]
                    [1]["secret"];
                assert_eq!(volume["secretName"], "rel-rndc-warden-tls");
                let cluster = r.rules("ClusterRole", "rel-rndc-warden-cluster");
                assert!(
                    cluster
                        .iter()
                        .all(|(g, _, _)| g != "admissionregistration.k8s.io"),
                    "no webhook-configuration rights without self-managed certificates"
                );
            }
            "cert-manager-issuer" => {
                assert!(!r.has("Issuer"), "{name}: the given issuer is used");
                let issuer = &r.get("Certificate", "rel-rndc-warden-serving")["spec"]["issuerRef"];
                assert_eq!(
                    issuer,
                    &json!({"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
                );
            }
            "provided" => {
                for hook in &webhooks {
                    let bundle = hook["clientConfig"]["caBundle"].as_str().expect("caBundle");
                    let pem = base64::engine::general_purpose::STANDARD
                        .decode(bundle)
                        .expect("base64 caBundle");
                    assert!(
                        String::from_utf8_lossy(&pem).starts_with("-----BEGIN CERTIFICATE-----"),
                        "{name}"
                    );
                }
                let volume = &r.get("Deployment", "rel-rndc-warden")["spec"]["template"]["spec"]["volumes"]
                    [1]["secret"];
                assert_eq!(volume["secretName"], "my-webhook-tls");
                assert!(env_is(
                    "RNDC_WARDEN_TLS_KEY",
                    "/etc/rndc-warden/tls/tls.key"
                ));
                assert!(
                    volume.get("optional").is_none(),
                    "a provided Secret must exist"
                );
                assert!(!r.has("Secret") && !r.has("Certificate"));
            }
            "signal" => {
                assert!(
                    workload.contains(&rule("", "pods/exec", "create")),
                    "{name}"
                );
                assert!(workload.contains(&rule("", "pods", "list")), "{name}");
                assert!(
                    workload.contains(&rule("", "pods/exec", "get")),
                    "{name}: exec over WebSocket is authorized as get too"
                );
                assert!(env_is(
                    "RNDC_WARDEN_RELOAD_KEY_PATH",
                    "/etc/bind/keys/rndc.key"
                ));
                assert!(env_is("RNDC_WARDEN_RELOAD_STRATEGY", "signal"));
                assert!(env_is(
                    "RNDC_WARDEN_RELOAD_POD_SELECTOR",
                    "app=dns,instance={instance}"
                ));
                assert!(env_is("RNDC_WARDEN_RELOAD_CONTAINER", "named"));
            }
            "service-monitor" => {
                let monitor = r.get("ServiceMonitor", "rel-rndc-warden");
                assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
                assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
                // The per-key series' namespace/instance labels are the Bind9Instance's.
                assert_eq!(monitor["spec"]["endpoints"][0]["honorLabels"], true);
                let service = r.get("Service", "rel-rndc-warden");
                assert!(
                    service["spec"]["ports"]
                        .as_array()
                        .expect("ports")
                        .iter()
                        .any(|p| p["name"] == "metrics"),
                    "the Service exposes the metrics port"
                );
            }
            "prometheus-rule" => {
                let rule = r.get("PrometheusRule", "rel-rndc-warden");
                assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
                let alerts: Vec<&Value> = rule["spec"]["groups"]
                    .as_array()
                    .expect("groups")
                    .iter()
                    .flat_map(|g| g["rules"].as_array().expect("rules"))
                    .collect();
                assert!(alerts.len() >= 10, "{alerts:?}");
                for alert in alerts {
                    assert_eq!(alert["labels"]["team"], "dns", "{alert}");
                    assert!(
                        alert["expr"]
                            .as_str()
                            .is_some_and(|e| e.contains(r#"job="rel-rndc-warden""#)),
                        "each rule selects the release's job: {alert}"
                    );
                }
            }
            "grafana-dashboard" => {
                let map = r.get("ConfigMap", "rel-rndc-warden-dashboard");
                assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
                assert_eq!(map["metadata"]["annotations"]["grafana_folder"], "DNS");
                let json = map["data"]["rndc-warden-dashboard.json"]
                    .as_str()
                    .expect("dashboard");
                let dashboard: Value = serde_json::from_str(json).expect("dashboard JSON");
                assert_eq!(dashboard["uid"], "rndc-warden");
            }
            "network-policy" => {
                let policy = r.get("NetworkPolicy", "rel-rndc-warden");
                let ingress = &policy["spec"]["ingress"];
                assert_eq!(ingress[0]["ports"][0]["port"], "https");
                assert!(ingress[0].get("from").is_none(), "the apiserver may call");
                assert_eq!(
                    ingress[1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
                    "monitoring"
                );
            }
            "crds-off" => {
                assert!(!r.has("CustomResourceDefinition"), "{name}");
            }
            "match-conditions" => {
                for hook in &webhooks {
                    assert_eq!(
                        hook["matchConditions"][0]["name"], "not-garbage-collector",
                        "{name}: on every webhook"
                    );
                }
            }
            "url" => {
                for ((kind, config), path) in
                    WEBHOOK_CONFIGS.into_iter().zip(["mutate", "validate"])
                {
                    for hook in r.get(kind, config)["webhooks"]
                        .as_array()
                        .expect("webhooks")
                    {
                        assert_eq!(
                            hook["clientConfig"],
                            json!({"url": format!("https://127.0.0.1:8443/{path}")}),
                            "{name}"
                        );
                        assert_eq!(hook["failurePolicy"], "Ignore");
                        assert_eq!(hook["timeoutSeconds"], 3);
                    }
                }
            }
            "watch-namespaces" => {
                assert!(env_is("RNDC_WARDEN_WATCH_NAMESPACES", "dns-a,dns-b"));
                let bindings: Vec<_> = r
                    .all("RoleBinding")
                    .into_iter()
                    .filter(|b| {
                        b["roleRef"]["name"] == "rel-rndc-warden"
                            && b["roleRef"]["kind"] == "ClusterRole"
                    })
                    .map(|b| {
                        b["metadata"]["namespace"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned()
                    })
                    .collect();
                assert_eq!(bindings, ["dns-a", "dns-b"], "{name}");
                assert!(
                    r.all("ClusterRoleBinding")
                        .iter()
                        .all(|b| b["roleRef"]["name"] != "rel-rndc-warden"),
                    "{name}: the workload role is not bound cluster-wide"
                );
                for hook in &webhooks {
                    assert_eq!(
                        hook["namespaceSelector"]["matchLabels"],
                        json!({"rndc-warden": "enabled"})
                    );
                    assert_eq!(
                        hook["namespaceSelector"]["matchExpressions"][0]["values"],
                        json!([RELEASE_NS, "kube-system"]),
                        "{name}: the exclusion stays"
                    );
                }
            }
            "admission-only" => {
                assert!(!r.has("PodDisruptionBudget"));
                assert!(env_is("RNDC_WARDEN_ROTATION", "false"));
                assert_eq!(
                    workload,
                    BTreeSet::from(["get", "list", "watch"].map(|v| rule(
                        "bindy.firestoned.io",
                        "bind9clusters",
                        v
                    )))
                    .union(&BTreeSet::from(["get", "list", "watch"].map(|v| rule(
                        "bindy.firestoned.io",
                        "bind9instances",
                        v
                    ))))
                    .cloned()
                    .collect(),
                    "{name}: read-only Bindy objects"
                );
                let role = r.rules("Role", "rel-rndc-warden");
                assert!(
                    role.iter().all(|(g, _, _)| g != "coordination.k8s.io"),
                    "{name}: no Lease"
                );
            }
            "policy-and-scheduling" => {
                assert!(env_is(
                    "RNDC_WARDEN_DENY_ALGORITHMS",
                    "hmac-md5,hmac-sha1,hmac-sha224"
                ));
                assert!(env_is("RNDC_WARDEN_DEFAULT_ROTATE_AFTER", "30d"));
                assert!(env_is("RNDC_WARDEN_DEFAULT_ALGORITHM", "hmac-sha512"));
                assert!(env_is("RNDC_WARDEN_DEFAULT_AUTO_ROTATE", "true"));
                assert!(env_is("RNDC_WARDEN_REQUIRE_AUTO_ROTATE", "true"));
                assert!(env_is(
                    "RNDC_WARDEN_SECRET_NAME_TEMPLATE",
                    "{instance}-rndc-key"
                ));
                assert!(
                    env_is("RNDC_WARDEN_CLIENT_QPS", "20"),
                    "extraEnv is appended"
                );
                let pod = &r.get("Deployment", "rel-rndc-warden")["spec"]["template"]["spec"];
                assert!(r.container()["image"].as_str().is_some_and(|i| i.ends_with(
                    "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
                )));
                assert_eq!(pod["priorityClassName"], "system-cluster-critical");
                assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
                assert_eq!(pod["nodeSelector"], json!({"kubernetes.io/os": "linux"}));
                assert!(pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"].is_array());
                let pdb = &r.get("PodDisruptionBudget", "rel-rndc-warden")["spec"];
                assert_eq!(pdb["maxUnavailable"], 1);
                assert!(pdb.get("minAvailable").is_none());
            }
            "policy-allow-all" => {
                assert!(env_is("RNDC_WARDEN_ALLOW_ALL_ALGORITHMS", "true"));
                assert!(
                    !env.contains_key("RNDC_WARDEN_DENY_ALGORITHMS"),
                    "the two flags conflict; only one is passed"
                );
            }
            "connection-limits" => {
                assert!(env_is("RNDC_WARDEN_MAX_CONNECTIONS", "64"), "{env:?}");
                assert!(env_is("RNDC_WARDEN_HANDSHAKE_TIMEOUT", "3s"), "{env:?}");
                assert!(env_is("RNDC_WARDEN_HEADER_TIMEOUT", "30s"), "{env:?}");
                assert!(env_is("RNDC_WARDEN_IDLE_TIMEOUT", "150s"), "{env:?}");
                assert!(env_is("RNDC_WARDEN_WRITE_TIMEOUT", "2500ms"), "{env:?}");
            }
            other => panic!("option set {other:?} has no checks"),
        }
    }
}

#[test]
fn values_that_violate_the_schema_are_rejected_with_a_clear_message() {
    let cases: &[(&str, &str)] = &[
        (
            "replicas: 3\n",
            "additional properties 'replicas' not allowed",
        ),
        ("replicaCount: 0\n", "/replicaCount"),
        (
            "webhook:\n  failurePolicy: Sometimes\n",
            "at '/webhook/failurePolicy': value must be one of 'Fail', 'Ignore'",
        ),
        (
            "webhook:\n  timeoutSeconds: 60\n",
            "at '/webhook/timeoutSeconds': maximum: got 60, want 30",
        ),
        (
            "webhook:\n  objectSelector:\n    matchLabels: null\n",
            "at '/webhook/objectSelector': minProperties",
        ),
        (
            "webhook:\n  url: http://insecure.example:80\n",
            "at '/webhook/url'",
        ),
        (
            "certificates:\n  mode: vault\n",
            "at '/certificates/mode': value must be one of 'self-managed', 'cert-manager', 'provided'",
        ),
        (
            "certificates:\n  mode: provided\n",
            "at '/certificates/secretName': minLength",
        ),
        (
            "certificates:\n  mode: provided\n  secretName: x\n  provided:\n    caBundle: not-a-pem\n",
            "at '/certificates/provided/caBundle'",
        ),
        (
            "reload:\n  strategy: kill\n",
            "at '/reload/strategy': value must be one of 'rollout', 'signal'",
        ),
        (
            "policy:\n  defaultRotateAfter: 30m\n",
            "at '/policy/defaultRotateAfter'",
        ),
        (
            "policy:\n  denyAlgorithms: [hmac-md4]\n",
            "at '/policy/denyAlgorithms/0'",
        ),
        (
            "policy:\n  secretNameTemplate: rndc\n",
            "at '/policy/secretNameTemplate'",
        ),
        (
            "rotation:\n  leaderElection: false\n",
            "at '/rotation/leaderElection': value must be true",
        ),
        (
            "watchNamespaces: [Not_A_Namespace]\n",
            "at '/watchNamespaces/0'",
        ),
        ("crds:\n  install: \"yes\"\n", "at '/crds/install'"),
        (
            "server:\n  maxConnections: 0\n",
            "at '/server/maxConnections': minimum",
        ),
        ("server:\n  writeTimeout: 0s\n", "at '/server/writeTimeout'"),
        (
            "server:\n  handshakeTimeout: 10\n",
            "at '/server/handshakeTimeout'",
        ),
        (
            "prometheusRule:\n  failureWindow: 15 minutes\n",
            "at '/prometheusRule/failureWindow'",
        ),
        (
            "prometheusRule:\n  webhookErrorRatio: 2\n",
            "at '/prometheusRule/webhookErrorRatio'",
        ),
        (
            "grafanaDashboard:\n  enable: true\n",
            "at '/grafanaDashboard'",
        ),
    ];
    for (values, expected) in cases {
        match try_render("rel", RELEASE_NS, values) {
            Ok(_) => panic!("values were accepted but must be rejected:\n{values}"),
            Err(message) => assert!(
                message.contains("values don't meet the specifications of the schema")
                    && message.contains(expected),
                "values:\n{values}\nexpected a message containing {expected:?}, got:\n{message}"
            ),
        }
    }
}

/// The plain manifests: file name and the values they are rendered with (release `rndc-warden`
/// in namespace `rndc-warden`).
const PLAIN_MANIFESTS: &[(&str, &str)] = &[
    ("rndc-warden.yaml", ""),
    ("rndc-warden-without-crds.yaml", "crds:\n  install: false\n"),
];

fn plain_manifest(values: &str) -> String {
    let rendered = try_render("rndc-warden", "rndc-warden", values)
        .unwrap_or_else(|e| panic!("helm template failed: {e}"));
    format!(
        "# Generated from charts/rndc-warden with `helm template rndc-warden charts/rndc-warden \
         --namespace rndc-warden`\n# ({}); do not edit. Regenerate: UPDATE_MANIFESTS=1 cargo test --test chart\n\
         ---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: rndc-warden\n{rendered}",
        if values.is_empty() {
            "default values".to_owned()
        } else {
            format!("values: {}", values.trim().replace('\n', " "))
        }
    )
}

#[test]
fn plain_manifests_and_the_chart_crds_are_up_to_date() {
    let update = std::env::var_os("UPDATE_MANIFESTS").is_some();
    let chart_crds = chart_dir().join("files/crds.yaml");
    let generated = rndc_warden::api::crd_yaml();
    if update {
        std::fs::write(&chart_crds, &generated).expect("chart CRDs written");
    }
    assert!(
        std::fs::read_to_string(&chart_crds).unwrap_or_default() == generated,
        "charts/rndc-warden/files/crds.yaml differs from `rndc-warden crdgen`; \
         regenerate with UPDATE_MANIFESTS=1 cargo test --test chart"
    );
    for (file, values) in PLAIN_MANIFESTS {
        let path = root().join("deploy/manifests").join(file);
        let expected = plain_manifest(values);
        if update {
            std::fs::create_dir_all(path.parent().expect("dir")).expect("deploy/manifests");
            std::fs::write(&path, &expected).expect("manifest written");
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == expected,
            "deploy/manifests/{file} is stale (the chart changed); regenerate with \
             UPDATE_MANIFESTS=1 cargo test --test chart"
        );
    }
}

// === Against the apiserver ===

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Runs `helm` against the test control plane and insists that it succeeds.
async fn cluster_helm(env: &TestEnv, args: &[&str]) -> String {
    let out = env.cp.helm(args).await.expect("helm runs");
    assert!(
        out.success(),
        "`{}` failed:\n{}\n{}",
        out.command,
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// Objects of one option set, minus kinds whose CRDs this control plane does not have.
fn servable(values: &str, namespace: &str) -> (String, Vec<String>) {
    let yaml = try_render("rel", namespace, values).expect("renders");
    let mut skipped = Vec::new();
    let kept: Vec<&str> = yaml
        .split("\n---\n")
        .filter(|doc| {
            let foreign = doc.contains("apiVersion: cert-manager.io/")
                || doc.contains("apiVersion: monitoring.coreos.com/");
            // The CRDs are the generated ones (tests/crd_fresh.rs); a concurrent `helm install`
            // in this control plane owns them.
            if doc.contains("kind: CustomResourceDefinition") {
                return false;
            }
            if foreign {
                skipped.push(
                    doc.lines()
                        .find(|l| l.starts_with("kind:"))
                        .unwrap_or("?")
                        .to_owned(),
                );
            }
            !foreign
        })
        .collect();
    (kept.join("\n---\n"), skipped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_option_set_is_accepted_by_the_apiserver() {
    let env = TestEnv::new("chart-dry-run").await.expect("test env");
    // The namespaces the "watch-namespaces" option set binds roles in.
    for namespace in ["dns-a", "dns-b"] {
        let out = env
            .cp
            .kubectl(["create", "namespace", namespace])
            .await
            .expect("kubectl runs");
        assert!(
            out.success() || out.stderr.contains("AlreadyExists"),
            "{}",
            out.stderr
        );
    }
    for (name, values) in option_sets() {
        let (manifest, skipped) = servable(&values, env.ns.name());
        let out = env
            .cp
            .kubectl_as(
                env.cp.kubeconfig_path(),
                ["apply", "--dry-run=server", "-f", "-"],
                Some(manifest.as_bytes()),
            )
            .await
            .expect("kubectl runs");
        assert!(
            out.success(),
            "option set {name:?} is rejected by the apiserver (skipped {skipped:?}):\n{}",
            out.stderr
        );
        if name == "cert-manager" {
            assert_eq!(
                skipped.len(),
                4,
                "only the cert-manager objects are left out: {skipped:?}"
            );
        }
    }
}

/// The real binary, started with the env of the installed Deployment; killed on drop.
struct Warden {
    child: std::process::Child,
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
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `rndc-warden serve` as the Deployment's container would: its env (downward API
    /// fields resolved for a pod in `namespace`), with the listeners on loopback. Returns once
    /// `wait_for` (`/readyz`, or `/healthz` when the watch caches cannot sync) answers 200.
    async fn start_like_the_deployment(
        deployment: &Value,
        namespace: &str,
        kubeconfig: &Path,
        (port, probe): (u16, u16),
        wait_for: &str,
    ) -> Warden {
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("serve.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_rndc-warden"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RNDC_WARDEN_") {
                command.env_remove(key);
            }
        }
        for var in container["env"].as_array().expect("env") {
            let name = var["name"].as_str().expect("name");
            let value = match (
                &var["value"],
                var["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
            ) {
                (Value::String(v), _) => v.clone(),
                (_, Some("metadata.namespace")) => namespace.to_owned(),
                (_, Some("metadata.name")) => "rndc-warden-local-0".to_owned(),
                other => panic!("env {name}: unsupported source {other:?}"),
            };
            command.env(name, value);
        }
        command
            .env("RNDC_WARDEN_LISTEN", format!("127.0.0.1:{port}"))
            .env("RNDC_WARDEN_PROBE_LISTEN", format!("127.0.0.1:{probe}"))
            .env("KUBECONFIG", kubeconfig)
            .args(strings(&container["args"]))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let child = command.spawn().expect("spawn rndc-warden");
        let warden = Warden {
            child,
            log,
            _dir: dir,
        };
        let ready = format!("127.0.0.1:{probe}");
        let started = Instant::now();
        while !http_get_ok(&ready, wait_for).await {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "rndc-warden never answered {wait_for}:\n{}",
                warden.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        warden
    }
}

/// Whether `GET path` on a plain-HTTP `host:port` answers 200.
async fn http_get_ok(host: &str, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(host).await else {
        return false;
    };
    let request = format!("GET {path} HTTP/1.0\r\nhost: {host}\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200")
}

async fn kubectl_apply(env: &TestEnv, manifest: &str, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["apply", "-f", "-"];
    args.extend_from_slice(extra);
    let out = env
        .cp
        .kubectl_as(env.cp.kubeconfig_path(), args, Some(manifest.as_bytes()))
        .await
        .expect("kubectl runs");
    (out.success(), format!("{}{}", out.stdout, out.stderr))
}

async fn get_json(env: &TestEnv, args: &[&str]) -> Value {
    let mut full = vec!["get"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-o", "json"]);
    let out = env.cp.kubectl(full).await.expect("kubectl runs");
    assert!(out.success(), "{}: {}", out.command, out.stderr);
    serde_json::from_str(&out.stdout).expect("JSON")
}

fn instance_yaml(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: bindy.firestoned.io/v1beta1\nkind: Bind9Instance\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  {spec}\n"
    )
}

fn weak_instance(namespace: &str) -> String {
    instance_yaml(
        namespace,
        "weak",
        "role: primary\n  clusterRef: \"\"\n  rndcKey:\n    algorithm: hmac-md5",
    )
}

/// The caBundle of every webhook of both configurations of release `warden`.
async fn ca_bundles(env: &TestEnv) -> Vec<String> {
    let mut bundles = Vec::new();
    for (kind, name) in [
        (
            "mutatingwebhookconfiguration",
            "warden-rndc-warden-mutating",
        ),
        (
            "validatingwebhookconfiguration",
            "warden-rndc-warden-validating",
        ),
    ] {
        let config = get_json(env, &[kind, name]).await;
        for hook in config["webhooks"].as_array().expect("webhooks") {
            bundles.push(
                hook["clientConfig"]["caBundle"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
    }
    bundles
}

/// The grants the chart renders, in the scopes of the document.
fn rendered_grants(r: &Rendered) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for (kind, name, scope) in [
        ("ClusterRole", "rel-rndc-warden", "watched namespaces"),
        ("ClusterRole", "rel-rndc-warden-cluster", "cluster"),
        ("Role", "rel-rndc-warden", "release namespace"),
    ] {
        if !r
            .0
            .iter()
            .any(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        {
            continue;
        }
        for rule in r.get(kind, name)["rules"].as_array().expect("rules") {
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    let mut names = strings(&rule["resourceNames"]);
                    if names.is_empty() {
                        names.push(String::new());
                    }
                    for verb in strings(&rule["verbs"]) {
                        for name in &names {
                            out.insert(Grant {
                                scope: scope.to_owned(),
                                group: group.clone(),
                                resource: resource.clone(),
                                name: name.clone(),
                                verb: verb.clone(),
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

#[test]
fn the_rendered_rbac_is_exactly_the_rbac_documented_in_security_md() {
    let cases: [(&str, &str, &[&str]); 4] = [
        (
            "defaults",
            "",
            &["rotation.enabled", "certificates.mode=self-managed"],
        ),
        (
            "signal",
            "reload:\n  strategy: signal\n",
            &[
                "rotation.enabled",
                "certificates.mode=self-managed",
                "reload.strategy=signal",
            ],
        ),
        (
            "admission only, cert-manager",
            "replicaCount: 1\nrotation:\n  enabled: false\n  leaderElection: false\ncertificates:\n  mode: cert-manager\n",
            &[],
        ),
        (
            "provided certificate",
            &format!(
                "certificates:\n  mode: provided\n  secretName: mine\n  provided:\n    caBundle: |\n      {}\n",
                test_ca_pem().replace('\n', "\n      ")
            ),
            &["rotation.enabled"],
        ),
    ];
    for (name, values, conditions) in cases {
        let rendered = rendered_grants(&render(values));
        let expected = documented("rel-rndc-warden", conditions);
        assert!(
            rendered == expected,
            "{name}: the chart's RBAC differs from docs/security.md\n  only in the chart: {:?}\n  only in the document: {:?}",
            rendered.difference(&expected).collect::<Vec<_>>(),
            expected.difference(&rendered).collect::<Vec<_>>()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_serves_admission_as_the_chart_service_account_and_upgrade_and_uninstall_leave_nothing_blocking()
 {
    let env = TestEnv::new("chart-install").await.expect("test env");
    let workload = TestNamespace::create(&env.client, "chart-workload")
        .await
        .expect("workload namespace");
    let release_ns = env.ns.name().to_owned();
    let (port, probe) = (free_port(), free_port());
    // Standalone (no Bindy operator here): the rotator creates the managed Secrets itself.
    let values = values_file(&format!(
        "webhook:\n  url: https://127.0.0.1:{port}\n  namespaceSelector:\n    matchLabels:\n      {}: {}\nrotation:\n  provision: true\n",
        rndc_warden_testkit::TEST_ID_LABEL,
        workload.name()
    ));
    let chart = chart_dir();

    // Install: every object is created (there is no kubelet, so no pod runs).
    let notes = cluster_helm(
        &env,
        &[
            "install",
            "warden",
            path_str(&chart),
            "--namespace",
            &release_ns,
            "--values",
            path_str(values.path()),
        ],
    )
    .await;
    assert!(notes.contains("STATUS: deployed"), "{notes}");
    assert!(notes.contains("WARNING: webhook.url is set"), "{notes}");
    assert_eq!(
        ca_bundles(&env).await,
        vec![String::new(); 4],
        "no caBundle before the binary injects it"
    );

    // The binary, as the chart's ServiceAccount, with the Deployment's own settings.
    let service_account = "warden-rndc-warden";
    let username = format!("system:serviceaccount:{release_ns}:{service_account}");
    let token = mint_token(&env.client, &release_ns, service_account, 3600)
        .await
        .expect("TokenRequest for the chart's ServiceAccount");
    let identity = Identity::from_token(env.cp, &format!("{release_ns}-warden"), &username, &token)
        .await
        .expect("identity");
    let deployment = get_json(
        &env,
        &["deployment", "warden-rndc-warden", "-n", &release_ns],
    )
    .await;
    let warden = Warden::start_like_the_deployment(
        &deployment,
        &release_ns,
        &identity.kubeconfig_path,
        (port, probe),
        "/readyz",
    )
    .await;

    // Self-managed certificate: the binary fills the chart's Secret and injects the CA.
    let started = Instant::now();
    loop {
        let (ok, output) =
            kubectl_apply(&env, &weak_instance(workload.name()), &["--dry-run=server"]).await;
        if !ok && output.contains("hmac-md5 is not allowed") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the chart's webhooks never denied a weak instance: {output}\n{}",
            warden.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let secret = get_json(
        &env,
        &["secret", "warden-rndc-warden-tls", "-n", &release_ns],
    )
    .await;
    let ca = secret["data"]["ca.crt"]
        .as_str()
        .expect("ca.crt in the certificate Secret")
        .to_owned();
    let tls_crt = secret["data"]["tls.crt"]
        .as_str()
        .expect("tls.crt")
        .to_owned();
    assert_eq!(
        ca_bundles(&env).await,
        vec![ca.clone(); 4],
        "every webhook trusts the CA"
    );

    // A default is injected through the mutating configuration.
    let (ok, output) = kubectl_apply(
        &env,
        &instance_yaml(workload.name(), "bare", "role: Primary\n  clusterRef: \"\""),
        &[],
    )
    .await;
    assert!(ok, "{output}");
    let bare = get_json(&env, &["bind9instance", "bare", "-n", workload.name()]).await;
    assert_eq!(bare["spec"]["role"], "primary", "role normalised");
    assert_eq!(
        bare["spec"]["rndcKey"]["algorithm"], "hmac-sha256",
        "{bare}"
    );
    // The rotator, elected through the chart's Lease, provisions the instance's managed key
    // Secret with the chart's RBAC.
    let started = Instant::now();
    let provisioned = loop {
        let out = env
            .cp
            .kubectl([
                "get",
                "secret",
                "bare-rndc-key",
                "-n",
                workload.name(),
                "-o",
                "json",
            ])
            .await
            .expect("kubectl runs");
        if out.success() {
            break serde_json::from_str::<Value>(&out.stdout).expect("JSON");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the rotator never provisioned bare-rndc-key: {}\n{}",
            out.stderr,
            warden.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(
        provisioned["metadata"]["labels"]["bindy.firestoned.io/rndc-key"], "true",
        "{provisioned}"
    );
    let lease = get_json(
        &env,
        &["lease", "warden-rndc-warden-rotator", "-n", &release_ns],
    )
    .await;
    assert_eq!(
        lease["spec"]["holderIdentity"], "rndc-warden-local-0",
        "the chart's Lease is held by the replica"
    );
    // Key Secrets reach the webhook only with the label (objectSelector).
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let secret_yaml = |name: &str, label: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {}\n  labels:\n    {label}\ntype: Opaque\nstringData:\n  key-name: bindy-operator\n  algorithm: hmac-sha256\n  secret: \"{key}\"\n  rndc.key: |\n    key \"bindy-operator\" {{ algorithm hmac-sha256; secret \"{key}\"; }};\n",
            workload.name()
        )
    };
    for (name, label) in [
        ("labelled", "bindy.firestoned.io/rndc-key: \"true\""),
        ("unlabelled", "team: dns"),
    ] {
        let (ok, output) = kubectl_apply(&env, &secret_yaml(name, label), &[]).await;
        assert!(ok, "{output}");
    }
    let stamped =
        |s: &Value| !s["metadata"]["annotations"]["bindy.firestoned.io/rndc-created-at"].is_null();
    let labelled = get_json(&env, &["secret", "labelled", "-n", workload.name()]).await;
    let unlabelled = get_json(&env, &["secret", "unlabelled", "-n", workload.name()]).await;
    assert!(
        stamped(&labelled),
        "a labelled key Secret is stamped: {labelled}"
    );
    assert!(
        !stamped(&unlabelled),
        "other Secrets never reach the webhook: {unlabelled}"
    );

    // RBAC: exactly what docs/security.md documents, nothing more (beyond what any
    // authenticated user may do, measured with a ServiceAccount that has no bindings).
    rbac_support::assert_can_i_matches_docs(
        env.cp,
        &release_ns,
        &username,
        "warden-rndc-warden",
        &["rotation.enabled", "certificates.mode=self-managed"],
        workload.name(),
    )
    .await;

    // Upgrade: settings change, the injected caBundle and the certificate stay.
    cluster_helm(
        &env,
        &[
            "upgrade",
            "warden",
            path_str(&chart),
            "--namespace",
            &release_ns,
            "--reuse-values",
            "--set",
            "webhook.timeoutSeconds=7",
        ],
    )
    .await;
    let mutating = get_json(
        &env,
        &[
            "mutatingwebhookconfiguration",
            "warden-rndc-warden-mutating",
        ],
    )
    .await;
    assert_eq!(
        mutating["webhooks"][0]["timeoutSeconds"], 7,
        "the upgrade applied"
    );
    assert_eq!(
        ca_bundles(&env).await,
        vec![ca.clone(); 4],
        "helm upgrade kept the caBundle"
    );
    let secret = get_json(
        &env,
        &["secret", "warden-rndc-warden-tls", "-n", &release_ns],
    )
    .await;
    assert_eq!(
        secret["data"]["tls.crt"],
        tls_crt.as_str(),
        "helm upgrade kept the certificate"
    );
    let (ok, output) =
        kubectl_apply(&env, &weak_instance(workload.name()), &["--dry-run=server"]).await;
    assert!(
        !ok && output.contains("hmac-md5 is not allowed"),
        "still enforced after the upgrade: {output}"
    );

    // Uninstall: no webhook configuration (or RBAC) is left to block anything; CRDs are kept.
    drop(warden);
    cluster_helm(
        &env,
        &["uninstall", "warden", "--namespace", &release_ns, "--wait"],
    )
    .await;
    let selector = "app.kubernetes.io/instance=warden";
    for kind in [
        "mutatingwebhookconfigurations",
        "validatingwebhookconfigurations",
        "clusterroles",
        "clusterrolebindings",
    ] {
        let left = get_json(&env, &[kind, "-l", selector]).await;
        assert_eq!(
            left["items"],
            json!([]),
            "{kind} left behind after helm uninstall"
        );
    }
    let crds = get_json(&env, &["crd", "bind9instances.bindy.firestoned.io"]).await;
    assert_eq!(
        crds["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let (ok, output) =
        kubectl_apply(&env, &weak_instance(workload.name()), &["--dry-run=server"]).await;
    assert!(
        ok,
        "nothing intercepts Bindy objects after uninstall: {output}"
    );
}

/// Issue 12 (10): the README's plain `helm install` on a cluster where the Bindy operator already
/// installed its CRDs. The default `crds.install: true` leaves CRDs that belong to no release of
/// this chart alone (it used to fail with "exists and cannot be imported into the current
/// release"), installs the ones that are missing, and uninstall leaves the operator's CRDs. A
/// control plane of its own: CRDs are cluster-wide and the other install test owns the shared
/// one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_helm_install_beside_bindys_crds_leaves_them_alone() {
    let cp = rndc_warden_testkit::ControlPlane::start()
        .await
        .expect("control plane");
    let fixtures = root().join("tests/fixtures/upstream-crds");
    for file in ["bind9instances.crd.yaml", "bind9clusters.crd.yaml"] {
        let out = cp
            .kubectl(["apply", "-f", path_str(&fixtures.join(file))])
            .await
            .expect("kubectl runs");
        assert!(out.success(), "{}", out.stderr);
    }
    let crd = |name: &'static str| {
        let cp = &cp;
        async move {
            let out = cp
                .kubectl(["get", "crd", name, "-o", "json"])
                .await
                .expect("kubectl runs");
            out.success()
                .then(|| serde_json::from_str::<Value>(&out.stdout).expect("JSON"))
        }
    };
    // The apiserver's own controllers write the CRDs' status until they are Established.
    let out = cp
        .kubectl([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/bind9instances.bindy.firestoned.io",
            "crd/bind9clusters.bindy.firestoned.io",
        ])
        .await
        .expect("kubectl runs");
    assert!(out.success(), "{}", out.stderr);
    // What a takeover would change: the spec (generation), labels and annotations.
    let owned_parts = |crd: &Value| {
        (
            crd["metadata"]["generation"].clone(),
            crd["metadata"]["labels"].clone(),
            crd["metadata"]["annotations"].clone(),
            crd["spec"].clone(),
        )
    };
    let before = crd("bind9instances.bindy.firestoned.io")
        .await
        .expect("Bindy's CRD");
    let out = cp
        .helm([
            "install",
            "rndc-warden",
            path_str(&chart_dir()),
            "--namespace",
            "rndc-warden",
            "--create-namespace",
        ])
        .await
        .expect("helm runs");
    assert!(
        out.success() && out.stdout.contains("STATUS: deployed"),
        "the plain helm install fails beside Bindy's CRDs:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    for name in [
        "bind9instances.bindy.firestoned.io",
        "bind9clusters.bindy.firestoned.io",
    ] {
        let now = crd(name).await.expect("still there");
        assert_eq!(
            now["metadata"]["annotations"]["meta.helm.sh/release-name"],
            Value::Null,
            "{name} was taken over by the release"
        );
    }
    assert!(
        owned_parts(
            &crd("bind9instances.bindy.firestoned.io")
                .await
                .expect("crd")
        ) == owned_parts(&before),
        "Bindy's CRD was modified by the release"
    );
    // The CRD Bindy's fixture set lacks is installed by the release.
    let provider = crd("clusterbind9providers.bindy.firestoned.io")
        .await
        .expect("missing CRD installed");
    assert_eq!(
        provider["metadata"]["annotations"]["meta.helm.sh/release-name"],
        "rndc-warden"
    );
    // Upgrade keeps leaving them alone; uninstall leaves Bindy's CRDs in place.
    let out = cp
        .helm([
            "upgrade",
            "rndc-warden",
            path_str(&chart_dir()),
            "--namespace",
            "rndc-warden",
        ])
        .await
        .expect("helm runs");
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    let out = cp
        .helm(["uninstall", "rndc-warden", "--namespace", "rndc-warden"])
        .await
        .expect("helm runs");
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(crd("bind9instances.bindy.firestoned.io").await.is_some());
}

#[test]
fn the_documented_command_line_for_the_secret_name_template_works() {
    // `--set` parses `{...}` as a list; the documented forms are --set-json and values files.
    let chart = chart_dir();
    let broken = helm(&[
        "template",
        "x",
        path_str(&chart),
        "--set",
        "policy.secretNameTemplate={instance}-rndc",
    ]);
    assert!(!broken.ok, "--set with braces is expected to fail");
    let out = helm(&[
        "template",
        "x",
        path_str(&chart),
        "--set-json",
        "policy.secretNameTemplate=\"{instance}-rndc\"",
    ]);
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("value: \"{instance}-rndc\""),
        "{}",
        out.stdout
    );
    // And the defaults need no setting at all.
    let defaults = render("");
    let env = defaults.env();
    assert_eq!(
        env.get("RNDC_WARDEN_SECRET_NAME_TEMPLATE")
            .cloned()
            .flatten()
            .as_deref(),
        Some("{instance}-rndc-key")
    );
    assert_eq!(
        env.get("RNDC_WARDEN_PROVISION")
            .cloned()
            .flatten()
            .as_deref(),
        Some("false")
    );
}

#[tokio::test]
async fn the_dev_certificate_script_makes_a_ca_and_a_certificate_that_serve_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new("bash")
        .arg(root().join("certs/make-dev-certs.sh"))
        .arg(dir.path())
        .args(["my-warden", "dns"])
        .env("EXTRA_SANS", "DNS:dev.example")
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "certs/make-dev-certs.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(dir.path().join("tls.crt"))
        .output()
        .expect("openssl runs");
    let sans = String::from_utf8_lossy(&text.stdout);
    for name in [
        "DNS:localhost",
        "IP Address:127.0.0.1",
        "DNS:my-warden.dns.svc",
        "DNS:my-warden.dns.svc.cluster.local",
        "DNS:dev.example",
    ] {
        assert!(sans.contains(name), "the certificate lacks {name}: {sans}");
    }
    // `serve` loads the pair (readiness requires a loaded certificate).
    let (port, probe) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_rndc-warden"))
        .args([
            "serve",
            "--no-cluster",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--probe-listen", &format!("127.0.0.1:{probe}")])
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .env_remove("KUBECONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rndc-warden");
    let started = Instant::now();
    let ready = loop {
        if http_get_ok(&format!("127.0.0.1:{probe}"), "/readyz").await {
            break true;
        }
        if started.elapsed() > Duration::from_secs(30) || child.try_wait().ok().flatten().is_some()
        {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = child.kill();
    let output = child.wait_with_output().expect("wait");
    assert!(
        ready,
        "serve did not become ready with the script's certificate:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_value_is_documented_in_the_chart_readme() {
    /// Values whose content is free-form Kubernetes (documented as a whole).
    const FREE_FORM: &[&str] = &[
        "podSecurityContext",
        "securityContext",
        "resources",
        "updateStrategy",
        "webhook.objectSelector",
        "grafanaDashboard.labels",
    ];
    fn leaves(prefix: &str, value: &serde_yaml_ng::Value, out: &mut Vec<String>) {
        match value.as_mapping() {
            Some(map) if !map.is_empty() && !FREE_FORM.contains(&prefix) => {
                for (key, child) in map {
                    let key = key.as_str().expect("string keys");
                    let path = if prefix.is_empty() {
                        key.to_owned()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    leaves(&path, child, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let values: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(chart_dir().join("values.yaml")).expect("values.yaml"),
    )
    .expect("values.yaml parses");
    let readme = std::fs::read_to_string(chart_dir().join("README.md")).expect("chart README");
    let mut paths = Vec::new();
    leaves("", &values, &mut paths);
    let missing: Vec<_> = paths
        .iter()
        .filter(|p| !readme.contains(&format!("| `{p}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "values not documented in charts/rndc-warden/README.md: {missing:?}"
    );
    assert!(paths.len() > 80, "found only {} values", paths.len());
}

/// PEM blocks in a base64-encoded `data` value of a Secret.
fn pem_count(secret: &Value, key: &str) -> usize {
    let data = secret["data"][key].as_str().unwrap_or_default();
    let pem = base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap_or_default();
    String::from_utf8_lossy(&pem)
        .matches("-----BEGIN CERTIFICATE-----")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_managed_certificates_renew_through_the_chart_without_a_failed_admission_call() {
    let env = TestEnv::new("chart-renewal").await.expect("test env");
    let workload = TestNamespace::create(&env.client, "chart-renewal-workload")
        .await
        .expect("workload namespace");
    let release_ns = env.ns.name().to_owned();
    let (port, probe) = (free_port(), free_port());
    // Short lifetimes: the CA is replaced (staged, promoted, pruned) within about 30 s. Only the
    // Secret webhook is exercised, so the CRDs are not needed (and stay with the install test).
    let values = values_file(&format!(
        concat!(
            "crds:\n  install: false\nrotation:\n  enabled: false\n",
            "webhook:\n  url: https://127.0.0.1:{port}\n  namespaceSelector:\n    matchLabels:\n      {label}: {ns}\n",
            "certificates:\n  selfManaged:\n    caLifetime: 30s\n    certLifetime: 12s\n",
            "    propagationDelay: 2s\n    checkInterval: 1s\n"
        ),
        port = port,
        label = rndc_warden_testkit::TEST_ID_LABEL,
        ns = workload.name()
    ));
    let chart = chart_dir();
    cluster_helm(
        &env,
        &[
            "install",
            "renew",
            path_str(&chart),
            "--namespace",
            &release_ns,
            "--values",
            path_str(values.path()),
        ],
    )
    .await;
    let service_account = "renew-rndc-warden";
    let username = format!("system:serviceaccount:{release_ns}:{service_account}");
    let token = mint_token(&env.client, &release_ns, service_account, 3600)
        .await
        .expect("TokenRequest");
    let identity = Identity::from_token(env.cp, &format!("{release_ns}-renew"), &username, &token)
        .await
        .expect("identity");
    let deployment = get_json(
        &env,
        &["deployment", "renew-rndc-warden", "-n", &release_ns],
    )
    .await;
    let warden = Warden::start_like_the_deployment(
        &deployment,
        &release_ns,
        &identity.kubeconfig_path,
        (port, probe),
        // No CRDs here, so the watch caches never sync; the Secret webhook needs none.
        "/healthz",
    )
    .await;

    // A labelled Secret whose rndc.key does not parse: every answered call denies it.
    let bad_secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: broken\n  namespace: {}\n  labels:\n    bindy.firestoned.io/rndc-key: \"true\"\nstringData:\n  rndc.key: not a key\n",
        workload.name()
    );
    let denied =
        |output: &str| output.contains("denied the request") && output.contains("rndc.key");
    let started = Instant::now();
    loop {
        let (ok, output) = kubectl_apply(&env, &bad_secret, &["--dry-run=server"]).await;
        if !ok && denied(&output) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the webhook never answered: {output}\n{}",
            warden.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Admission calls through at least one CA replacement; none may fail.
    let signing = |s: &Value| {
        s["data"]["ca-signing.crt"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let first = get_json(
        &env,
        &["secret", "renew-rndc-warden-tls", "-n", &release_ns],
    )
    .await;
    let (mut calls, mut failures, mut saw_overlap, mut promoted) = (0, Vec::new(), false, false);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(45) && !(saw_overlap && promoted && calls > 50) {
        let (ok, output) = kubectl_apply(&env, &bad_secret, &["--dry-run=server"]).await;
        calls += 1;
        if ok || !denied(&output) {
            failures.push(output);
        }
        let secret = get_json(
            &env,
            &["secret", "renew-rndc-warden-tls", "-n", &release_ns],
        )
        .await;
        saw_overlap |= pem_count(&secret, "ca.crt") >= 2;
        promoted |= signing(&secret) != signing(&first);
    }
    assert!(
        saw_overlap && promoted,
        "no CA replacement within 45 s (overlap seen: {saw_overlap}, new CA signing: {promoted})\n{}",
        warden.logs()
    );
    assert!(
        failures.is_empty(),
        "{} of {calls} admission calls failed during renewal, e.g.:\n{}\n{}",
        failures.len(),
        failures[0],
        warden.logs()
    );
    drop(warden);
    cluster_helm(&env, &["uninstall", "renew", "--namespace", &release_ns]).await;
}
