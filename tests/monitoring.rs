//! The chart's alerts (`templates/prometheusrule.yaml`) and Grafana dashboard
//! (`deploy/monitoring/rndc-warden-dashboard.json`, the chart's copy in `files/`), checked with the
//! real promtool (built from the Go module proxy by `scripts/promtool-bin.sh`, or `PROMTOOL`):
//!
//! - `promtool check rules` on the rules the chart renders;
//! - `promtool test rules` with `tests/monitoring/alerts_test.yaml`, which has a firing and a
//!   not-firing case for every alert; every alert links to its runbook in `docs/operations.md`;
//! - after an end-to-end rotation by the real binary, every metric the rules and the dashboard
//!   name is in its `/metrics` with the type the name implies, and `promtool check metrics` is
//!   clean on that output.

mod rotation_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use rndc_warden::policy::Algorithm;
use rndc_warden_testkit::Binaries;
use rndc_warden_testkit::bins::built_by_script;
use rotation_support::binary::WardenProcess;
use rotation_support::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn promtool() -> PathBuf {
    built_by_script("scripts/promtool-bin.sh", "PROMTOOL").unwrap_or_else(|error| {
        panic!("promtool is needed (scripts/promtool-bin.sh builds it with Go): {error}")
    })
}

struct Run {
    ok: bool,
    out: String,
}

fn run(command: &mut Command, stdin: Option<&[u8]>) -> Run {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("command starts");
    if let Some(mut pipe) = child.stdin.take() {
        use std::io::Write;
        pipe.write_all(stdin.unwrap_or_default()).expect("stdin");
    }
    let output = child.wait_with_output().expect("command ends");
    Run {
        ok: output.status.success(),
        out: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// `helm template rel` of the chart in `dns-system` with `args` (`--set`, `--set-json`), offline.
fn helm_template(args: &[&str], show_only: &str) -> String {
    let bins = Binaries::locate().expect("helm (see docs/development.md)");
    let home = tempfile::tempdir().expect("helm home");
    let mut command = Command::new(&bins.helm);
    command
        .args(["template", "rel"])
        .arg(root().join("charts/rndc-warden"))
        .args(["--namespace", "dns-system", "--show-only", show_only])
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .env("KUBECONFIG", "/dev/null");
    command.args(args);
    let out = run(&mut command, None);
    assert!(out.ok, "helm template failed:\n{}", out.out);
    out.out
}

/// The PrometheusRule the chart renders with `args`, as JSON.
fn rendered_rule(args: &[&str]) -> Value {
    let mut all = vec!["--set", "prometheusRule.enabled=true"];
    all.extend_from_slice(args);
    let yaml = helm_template(&all, "templates/prometheusrule.yaml");
    let rule: Value = serde_yaml_ng::from_str(&yaml).expect("the PrometheusRule is YAML");
    assert_eq!(rule["kind"], "PrometheusRule", "{yaml}");
    rule
}

/// The rule's `spec` (a Prometheus rule file) written as `rules.yaml` into `dir`.
fn write_rule_file(rule: &Value, dir: &Path) -> PathBuf {
    let path = dir.join("rules.yaml");
    let spec = serde_yaml_ng::to_string(&rule["spec"]).expect("spec as YAML");
    std::fs::write(&path, spec).expect("rules.yaml");
    path
}

fn rules(rule: &Value) -> Vec<&Value> {
    rule["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .collect()
}

fn alert_names(rule: &Value) -> Vec<String> {
    rules(rule)
        .iter()
        .map(|r| r["alert"].as_str().expect("alert name").to_owned())
        .collect()
}

#[test]
fn promtool_check_rules_accepts_the_rendered_rules() {
    for sets in [&[][..], &["--set", "rotation.enabled=false"][..]] {
        let rule = rendered_rule(sets);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write_rule_file(&rule, dir.path());
        let out = run(
            Command::new(promtool()).args(["check", "rules"]).arg(&file),
            None,
        );
        let count = rules(&rule).len();
        assert!(
            out.ok && out.out.contains(&format!("SUCCESS: {count} rules found")),
            "promtool check rules ({sets:?}):\n{}",
            out.out
        );
    }
}

/// The rules as a plain Prometheus rule file for release `rndc-warden` (job `rndc-warden`), for
/// users without the Prometheus Operator.
#[test]
fn the_plain_rule_file_in_deploy_is_up_to_date() {
    let yaml = helm_template(
        &["--set", "prometheusRule.enabled=true"],
        "templates/prometheusrule.yaml",
    )
    .replace("rel-rndc-warden", "rndc-warden");
    let rule: Value = serde_yaml_ng::from_str(&yaml).expect("the PrometheusRule is YAML");
    let generated = format!(
        "# The alerts of charts/rndc-warden (prometheusRule.*) as a Prometheus rule file, for release\n\
         # `rndc-warden` (job=\"rndc-warden\") with the default thresholds; runbooks: docs/operations.md.\n\
         # Generated; do not edit. Regenerate: UPDATE_MANIFESTS=1 cargo test --test monitoring\n{}",
        serde_yaml_ng::to_string(&rule["spec"]).expect("spec as YAML")
    );
    let path = root().join("deploy/monitoring/rndc-warden-rules.yaml");
    if std::env::var_os("UPDATE_MANIFESTS").is_some() {
        std::fs::write(&path, &generated).expect("rule file written");
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "deploy/monitoring/rndc-warden-rules.yaml is stale; UPDATE_MANIFESTS=1 cargo test --test monitoring"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rules.yaml");
    std::fs::write(&file, &on_disk).expect("copy");
    let out = run(
        Command::new(promtool()).args(["check", "rules"]).arg(&file),
        None,
    );
    assert!(out.ok, "promtool check rules:\n{}", out.out);
}

#[test]
fn without_the_rotator_only_the_rotator_alerts_are_left_out() {
    let all = alert_names(&rendered_rule(&[]));
    let admission_only = alert_names(&rendered_rule(&["--set", "rotation.enabled=false"]));
    let left_out: Vec<&String> = all.iter().filter(|a| !admission_only.contains(a)).collect();
    assert_eq!(
        left_out,
        [
            "RndcWardenKeyOverdue",
            "RndcWardenKeyDueSoonRotationFailing",
            "RndcWardenRotationsFailing",
            "RndcWardenReloadsFailing",
            "RndcWardenNoRotatorLeader"
        ]
    );
}

#[test]
fn thresholds_are_values() {
    let rule = rendered_rule(&[
        "--set",
        "prometheusRule.keyOverdueSeconds=7200",
        "--set",
        "prometheusRule.noLeaderFor=3m",
        "--set-json",
        "prometheusRule.webhookLatencySeconds=0.5",
        "--set",
        "prometheusRule.alertLabels.team=dns",
    ]);
    let by_name = |name: &str| {
        rules(&rule)
            .into_iter()
            .find(|r| r["alert"] == name)
            .unwrap_or_else(|| panic!("{name} rendered"))
            .clone()
    };
    let overdue = by_name("RndcWardenKeyOverdue");
    assert!(
        overdue["expr"]
            .as_str()
            .is_some_and(|e| e.ends_with("> 7200")),
        "{overdue}"
    );
    assert_eq!(overdue["labels"]["team"], "dns");
    assert_eq!(by_name("RndcWardenNoRotatorLeader")["for"], "3m");
    let latency = by_name("RndcWardenWebhookLatencyHigh");
    assert!(
        latency["expr"]
            .as_str()
            .is_some_and(|e| e.trim_end().ends_with("> 0.5")),
        "{latency}"
    );
}

/// The `(alertname, fires)` cases of the promtool unit-test file.
fn unit_test_cases(tests: &Value) -> BTreeSet<(String, bool)> {
    tests["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().expect("alert_rule_test"))
        .map(|case| {
            let fires = case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
            (
                case["alertname"].as_str().expect("alertname").to_owned(),
                fires,
            )
        })
        .collect()
}

#[test]
fn promtool_unit_tests_cover_every_alert_firing_and_not_firing() {
    let rule = rendered_rule(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    write_rule_file(&rule, dir.path());
    let source = root().join("tests/monitoring/alerts_test.yaml");
    let test_file = dir.path().join("alerts_test.yaml");
    std::fs::copy(&source, &test_file).expect("test file copied");

    let text = std::fs::read_to_string(&source).expect("alerts_test.yaml");
    let tests: Value = serde_yaml_ng::from_str(&text).expect("alerts_test.yaml is YAML");
    let cases = unit_test_cases(&tests);
    let names = alert_names(&rule);
    let unique: BTreeSet<&String> = names.iter().collect();
    assert_eq!(
        unique.len(),
        names.len(),
        "alert names are unique: {names:?}"
    );
    for name in &names {
        for fires in [true, false] {
            assert!(
                cases.contains(&(name.clone(), fires)),
                "tests/monitoring/alerts_test.yaml has no case where {name} {}",
                if fires { "fires" } else { "does not fire" }
            );
        }
    }

    let out = run(
        Command::new(promtool())
            .args(["test", "rules", "alerts_test.yaml"])
            .current_dir(dir.path()),
        None,
    );
    assert!(
        out.ok && out.out.contains("SUCCESS"),
        "promtool test rules:\n{}",
        out.out
    );
}

#[test]
fn every_alert_links_to_its_runbook_section() {
    let operations =
        std::fs::read_to_string(root().join("docs/operations.md")).expect("docs/operations.md");
    let anchors: BTreeSet<String> = operations
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(|h| h.trim().to_lowercase())
        .collect();
    for rule in rules(&rendered_rule(&[])) {
        let name = rule["alert"].as_str().expect("alert");
        let url = rule["annotations"]["runbook_url"].as_str().unwrap_or("");
        let anchor = url.rsplit_once('#').map(|(_, a)| a).unwrap_or("");
        assert!(
            url.contains("docs/operations.md#") && anchor == name.to_lowercase(),
            "{name}: runbook_url {url:?} does not point at its own section"
        );
        assert!(
            anchors.contains(anchor),
            "{name}: docs/operations.md has no '### {name}' section"
        );
        for key in ["summary", "description"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{name} has a {key}"
            );
        }
        assert!(
            rule["labels"]["severity"].is_string(),
            "{name} has a severity"
        );
    }
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(root().join("deploy/monitoring/rndc-warden-dashboard.json"))
        .expect("dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] != "row")
        .flat_map(|p| {
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
            targets
        })
        .map(|t| t["expr"].as_str().expect("a PromQL expr").to_owned())
        .collect()
}

#[test]
fn the_chart_ships_the_dashboard_of_deploy_as_a_sidecar_configmap() {
    let deploy =
        std::fs::read_to_string(root().join("deploy/monitoring/rndc-warden-dashboard.json"))
            .expect("deploy copy");
    let chart =
        std::fs::read_to_string(root().join("charts/rndc-warden/files/rndc-warden-dashboard.json"))
            .expect("chart copy");
    assert!(
        deploy == chart,
        "charts/rndc-warden/files/rndc-warden-dashboard.json differs from deploy/monitoring/; copy it"
    );
    let yaml = helm_template(
        &["--set", "grafanaDashboard.enabled=true"],
        "templates/grafana-dashboard.yaml",
    );
    let map: Value = serde_yaml_ng::from_str(&yaml).expect("ConfigMap YAML");
    assert_eq!(map["kind"], "ConfigMap");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    let embedded: Value = serde_json::from_str(
        map["data"]["rndc-warden-dashboard.json"]
            .as_str()
            .expect("dashboard key"),
    )
    .expect("embedded JSON");
    assert_eq!(embedded, dashboard());
    for title in [
        "Next rotation per instance",
        "Key age per instance",
        "Rotator leader",
        "Admission decisions",
        "Admission latency",
        "Rotations",
        "BIND9 reloads",
    ] {
        assert!(
            dashboard()["panels"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["title"] == title)),
            "the dashboard has a {title:?} panel"
        );
    }
}

/// The metric names (ours: `rndc_warden_*`, `bind9_rndc_*`) a PromQL expression uses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut current = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            current.push(c);
        } else {
            if current.starts_with("rndc_warden_") || current.starts_with("bind9_rndc_") {
                names.insert(std::mem::take(&mut current));
            }
            current.clear();
        }
    }
    names
}

/// The `# TYPE` of each metric family in an exposition.
fn family_types(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.trim().to_owned()))
        .collect()
}

/// Why `name` (as written in a query) is not a series of the exposition (classic text format:
/// a counter's family is named by its `_total` samples), if it is not.
fn missing(
    name: &str,
    types: &std::collections::BTreeMap<String, String>,
    text: &str,
) -> Option<String> {
    let histogram = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        name.strip_suffix(suffix)
            .filter(|family| types.get(*family).is_some_and(|t| t == "histogram"))
    });
    let (family, wanted) = match histogram {
        Some(family) => (family.to_owned(), "histogram"),
        None if name.ends_with("_total") => (name.to_owned(), "counter"),
        None => (name.to_owned(), "gauge"),
    };
    match types.get(&family) {
        None => Some(format!("{name}: no family {family} in /metrics")),
        Some(kind) if kind != wanted => {
            Some(format!("{name}: {family} is a {kind}, not a {wanted}"))
        }
        Some(_) => {
            let has_sample = text
                .lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")));
            (!has_sample).then(|| format!("{name}: no sample in /metrics"))
        }
    }
}

/// Sends one allowed AdmissionReview to `/validate` over TLS, trusting `ca`.
async fn admission_call(port: u16, ca: &Path) -> String {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA PEM")).expect("CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let body = serde_json::to_vec(&serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "5a0c2f5e-3a47-4f0e-9d1b-8b3c1c2f6a10",
            "kind": {"group": "bindy.firestoned.io", "version": "v1beta1", "kind": "Bind9Instance"},
            "resource": {"group": "bindy.firestoned.io", "version": "v1beta1", "resource": "bind9instances"},
            "name": "probe", "namespace": "dns", "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": {
                "apiVersion": "bindy.firestoned.io/v1beta1", "kind": "Bind9Instance",
                "metadata": {"name": "probe", "namespace": "dns"},
                "spec": {"role": "primary", "rndcKey": {"autoRotate": true, "rotateAfter": "720h", "algorithm": "hmac-sha256"}}
            }
        }
    }))
    .expect("review");
    let mut request = format!(
        "POST /validate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    tls.write_all(&request).await.expect("request sent");
    let mut reply = Vec::new();
    let _ = tls.read_to_end(&mut reply).await;
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_rules_and_dashboard_is_exported_after_a_rotation_and_lints_clean() {
    let t = RotationEnv::for_binary("monitoring-names").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let day = TimeDelta::hours(24);
    create_deployment(&c, &ns, "dns-a").await;
    // Created 25 hours ago with a 24h rotateAfter: due at once.
    create_key_secret(
        &c,
        &ns,
        "dns-a-rndc-key",
        Algorithm::HmacSha256,
        Utc::now() - day - TimeDelta::hours(1),
        day,
    )
    .await;
    create_instance(
        &c,
        &ns,
        "dns-a",
        standalone(Some(rndc_key(true, "24h", "hmac-sha256"))),
    )
    .await;
    let mut warden = WardenProcess::new("monitoring-replica", t.sa_kubeconfig(), &ns, &[]);
    warden.start();
    warden.wait_series(1, WAIT).await;
    let names = vec!["dns-a".to_owned()];
    wait_converged(&c, &ns, &names, Algorithm::HmacSha256, 1, WAIT).await;
    let reply = admission_call(warden.admission_port(), &warden.generated_ca()).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "admission call: {reply}");

    let text = warden.metrics().await.expect("/metrics");
    let types = family_types(&text);
    let mut wanted = BTreeSet::new();
    for rule in rules(&rendered_rule(&[])) {
        wanted.extend(metric_names(rule["expr"].as_str().expect("expr")));
    }
    let from_rules = wanted.len();
    for expr in dashboard_exprs(&dashboard()) {
        wanted.extend(metric_names(&expr));
    }
    assert!(
        from_rules >= 10 && wanted.len() > from_rules,
        "the rules and the dashboard name our metrics: {wanted:?}"
    );
    let problems: Vec<String> = wanted
        .iter()
        .filter_map(|name| missing(name, &types, &text))
        .collect();
    assert!(
        problems.is_empty(),
        "metrics named by the rules or the dashboard but not exported after a rotation:\n{}\n\n/metrics:\n{text}",
        problems.join("\n")
    );
    // The rotation itself shows: the key is fresh, its creation time recent, this replica leads.
    let line_value = |prefix: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse().ok())
    };
    assert_eq!(
        line_value(r#"rndc_warden_rotations_total{result="success"}"#),
        Some(1.0)
    );
    assert_eq!(line_value("rndc_warden_rotator_leader "), Some(1.0));
    let created = line_value("rndc_warden_key_created_timestamp_seconds{").expect("key created");
    assert!(
        (Utc::now().timestamp() as f64 - created).abs() < 120.0,
        "{created}"
    );
    let until = line_value("rndc_warden_rotation_seconds_until{").expect("seconds until");
    assert!(until > day.num_seconds() as f64 - 300.0, "{until}");
    let expiry = line_value("rndc_warden_serving_cert_expiry_timestamp_seconds ").expect("expiry");
    assert!(expiry > Utc::now().timestamp() as f64, "{expiry}");

    let lint = run(
        Command::new(promtool()).args(["check", "metrics"]),
        Some(text.as_bytes()),
    );
    assert!(
        lint.ok && lint.out.trim().is_empty(),
        "promtool check metrics is not clean:\n{}",
        lint.out
    );
}
