//! The real Bindy operator (0.6.0 at ac9ea2a, built once by `scripts/bindy-bin.sh`) running beside
//! rndc-warden installed as users install it: `helm install` of the chart with its default values,
//! then the binary run as the chart's Deployment runs it (SPEC §11). Infrastructure for issue 12.
//!
//! - Bindy's examples (namespaces rewritten): the operator creates the Deployments, ConfigMaps and
//!   `<instance>-rndc-key` Secrets, and rndc-warden's webhooks see every Bindy object, the
//!   operator's own writes included; with Bindy's CRDs and with rndc-warden's.
//! - Both operators side by side for 30 s after that: no error loop, no write ping-pong.
//!
//! The operator watches every namespace, so these tests take turns (`OperatorSlot`), each with
//! its own operator, chart release and namespaces. There is no kubelet: Deployments never get
//! pods. Figures (start-up, first reconcile) are printed with `--nocapture`.

mod bindy_support;
mod rotation_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bindy_support::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use rndc_warden_testkit::Metrics;
use rndc_warden_testkit::bindy::{BindyCrds, LEADER_LOG, RECONCILE_INSTANCE_LOG};

/// Writes what both operators made in the namespace as JSON files into `dir` (`BINDY_E2E_DUMP`,
/// for looking at the shapes): Bindy objects, Deployments, ConfigMaps, Services,
/// ServiceAccounts, and Secrets with every data value replaced by its length.
async fn dump_objects(t: &SideBySide, dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("dump directory");
    let ns = t.ns();
    for (file, args) in [
        ("bind9instances", vec!["bind9instances", "-n", ns]),
        ("bind9clusters", vec!["bind9clusters", "-n", ns]),
        ("clusterbind9providers", vec!["clusterbind9providers"]),
        ("deployments", vec!["deployments", "-n", ns]),
        ("configmaps", vec!["configmaps", "-n", ns]),
        ("services", vec!["services", "-n", ns]),
        ("serviceaccounts", vec!["serviceaccounts", "-n", ns]),
        ("secrets", vec!["secrets", "-n", ns]),
    ] {
        let mut list = rotation_support::chart::get_json(&t.env, &args).await;
        if file == "secrets" {
            for item in list["items"].as_array_mut().into_iter().flatten() {
                for value in item["data"]
                    .as_object_mut()
                    .into_iter()
                    .flat_map(|d| d.values_mut())
                {
                    let len = value.as_str().map_or(0, str::len);
                    *value = format!("<redacted: {len} base64 characters>").into();
                }
            }
        }
        let path = dir.join(format!("{file}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&list).expect("JSON")).expect("dump");
    }
    println!("bindy: objects dumped to {}", dir.display());
}

/// The examples, end to end: applied through rndc-warden's webhooks, reconciled by the operator
/// into Deployments, ConfigMaps and `<instance>-rndc-key` Secrets, every Bindy write seen by the
/// webhooks; then the operator restarted (start-up to first reconcile measured).
async fn examples_are_reconciled_and_seen_by_the_webhooks(name: &str, crds: BindyCrds) {
    let mut t = SideBySide::start(name, crds).await;
    let before = t.chart.metrics().await;
    let applied = Instant::now();
    t.apply_examples().await;
    let first_reconcile = t
        .operator
        .wait_for_log(RECONCILE_INSTANCE_LOG, WAIT)
        .await
        .expect("the operator reconciles an instance")
        .saturating_sub(applied.duration_since(t.operator.started_at()));
    let (found, reconciled_after) = t.wait_reconciled().await;
    println!(
        "bindy: first instance reconcile {first_reconcile:?} after the examples were applied; \
         everything created {reconciled_after:?} after"
    );

    // What the operator made (no key material).
    println!("bindy: clusters {:?}", found.clusters);
    for (name, instance) in &found.instances {
        println!(
            "bindy: instance {name}: containers {:?}, ConfigMaps {:?}, Secret volumes {:?}",
            instance.containers, instance.mounts.config_maps, instance.mounts.secrets
        );
    }
    for (name, shape) in &found.secrets {
        println!("bindy: Secret {name}: {shape:?}");
    }
    println!("bindy: other Secrets {:?}", found.other_secrets);
    for (name, instance) in &found.instances {
        let shape = &found.secrets[&instance.secret];
        for key in OPERATOR_DATA_KEYS {
            assert!(
                shape.data_keys.iter().any(|k| k == key),
                "Secret {} lacks data key {key}: {shape:?}",
                instance.secret
            );
        }
        assert_eq!(shape.key_name, "bindy-operator", "{}", instance.secret);
        assert!(
            shape
                .owners
                .iter()
                .any(|(kind, owner, uid)| kind == "Bind9Instance"
                    && owner == name
                    && *uid == instance.uid),
            "Secret {} is owned by its instance: {shape:?}",
            instance.secret
        );
        assert!(
            instance.mounts.secrets.contains(&instance.secret),
            "Deployment {name} mounts {}: {:?}",
            instance.secret,
            instance.mounts.secrets
        );
        assert!(
            instance.containers.iter().any(|c| c == "bind9"),
            "Deployment {name} runs bind9: {:?}",
            instance.containers
        );
    }

    if let Some(dir) = std::env::var_os("BINDY_E2E_DUMP").filter(|d| !d.is_empty()) {
        dump_objects(&t, std::path::Path::new(&dir)).await;
    }

    // rndc-warden's webhooks saw every Bindy object, the operator's writes included: the
    // examples create one provider and two instances; the operator creates the provider's
    // Bind9Cluster (and any instances of it) and adds finalizers with UPDATEs.
    let after = t.chart.metrics().await;
    let delta = |kind: &str, operation: &str| {
        admitted(&after, "mutate", kind, operation) - admitted(&before, "mutate", kind, operation)
    };
    println!(
        "rndc-warden admission counters: {:?}",
        admission_table(&after)
    );
    assert!(
        delta("ClusterBind9Provider", "CREATE") >= 1.0,
        "{:?}",
        admission_table(&after)
    );
    assert!(
        delta("Bind9Cluster", "CREATE") >= 1.0,
        "the operator's Bind9Cluster reached the webhook: {:?}",
        admission_table(&after)
    );
    assert!(
        delta("Bind9Instance", "CREATE") >= found.instances.len() as f64,
        "every instance ({}) reached the webhook: {:?}",
        found.instances.len(),
        admission_table(&after)
    );
    assert!(
        delta("Bind9Instance", "UPDATE") >= 1.0,
        "the operator's instance updates (finalizers) reached the webhook: {:?}",
        admission_table(&after)
    );
    for endpoint in ["mutate", "validate"] {
        assert!(
            admitted(&after, endpoint, "Bind9Instance", "CREATE") >= 1.0,
            "{endpoint}: {:?}",
            admission_table(&after)
        );
    }

    // The operator's metrics listener is the test build's: loopback, the chosen port.
    let metrics = t.operator.metrics().await.expect("operator /metrics");
    let metrics = Metrics::parse(&metrics).expect("operator metrics parse");
    println!(
        "bindy: reconciliations {:?}",
        metrics
            .samples()
            .iter()
            .filter(|s| s.name == "bindy_firestoned_io_reconciliations_total")
            .map(|s| format!("{:?}={}", s.labels, s.value))
            .collect::<Vec<_>>()
    );

    // Restart: the Lease is released on SIGTERM, so the new process leads at once and
    // reconciles every instance at start-up (drift detection).
    let stopped = Instant::now();
    t.operator.restart().await.expect("restart");
    let leader = t
        .operator
        .wait_for_log(LEADER_LOG, WAIT)
        .await
        .expect("leader again");
    let first = t
        .operator
        .wait_for_log(RECONCILE_INSTANCE_LOG, WAIT)
        .await
        .expect("first reconcile after the restart");
    println!(
        "bindy: restart (stop + start) took {:?}; after the start: leader {leader:?}, first \
         instance reconcile {first:?} (first start: leader {:?})",
        t.operator.started_at().duration_since(stopped),
        t.leader_after
    );
    let (again, _) = t.wait_reconciled().await;
    assert_eq!(
        again.instances.keys().collect::<Vec<_>>(),
        found.instances.keys().collect::<Vec<_>>(),
        "the restarted operator keeps the same instances"
    );
    t.assert_operator_running();
    let errors = lines_at(&t.operator.logs(), "ERROR");
    println!(
        "bindy: {} ERROR lines over {} starts{}",
        errors.len(),
        t.operator.starts(),
        errors
            .first()
            .map(|l| format!(", first: {l}"))
            .unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindy_examples_with_bindy_crds_are_reconciled_and_seen_by_the_webhooks() {
    examples_are_reconciled_and_seen_by_the_webhooks("bindy-examples-up", BindyCrds::Upstream)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindy_examples_with_rndc_warden_crds_are_reconciled_and_seen_by_the_webhooks() {
    examples_are_reconciled_and_seen_by_the_webhooks(
        "bindy-examples-own",
        BindyCrds::Replacing(rndc_warden::api::crd_yaml()),
    )
    .await;
}

/// Resource versions of everything both operators write in the namespace.
async fn versions(t: &SideBySide) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let lp = ListParams::default();
    let ns = t.ns();
    let c = t.client();
    for s in Api::<Secret>::namespaced(c.clone(), ns)
        .list(&lp)
        .await
        .expect("secrets")
        .items
    {
        out.insert(
            format!("Secret/{}", s.name_any()),
            s.resource_version().unwrap_or_default(),
        );
    }
    for d in Api::<Deployment>::namespaced(c.clone(), ns)
        .list(&lp)
        .await
        .expect("deployments")
        .items
    {
        out.insert(
            format!("Deployment/{}", d.name_any()),
            d.resource_version().unwrap_or_default(),
        );
    }
    for m in Api::<ConfigMap>::namespaced(c.clone(), ns)
        .list(&lp)
        .await
        .expect("config maps")
        .items
    {
        out.insert(
            format!("ConfigMap/{}", m.name_any()),
            m.resource_version().unwrap_or_default(),
        );
    }
    for kind in ["Bind9Instance", "Bind9Cluster", "ClusterBind9Provider"] {
        for o in t.list(kind).await {
            out.insert(
                format!("{kind}/{}", o.name_any()),
                o.resource_version().unwrap_or_default(),
            );
        }
    }
    out
}

/// Sums of the counters that grow in an error loop.
fn error_counters(bindy: &Metrics, warden: &Metrics) -> BTreeMap<&'static str, f64> {
    BTreeMap::from([
        (
            "bindy errors_total",
            bindy.sum("bindy_firestoned_io_errors_total", &[]),
        ),
        (
            "bindy reconciliations (error)",
            bindy.sum(
                "bindy_firestoned_io_reconciliations_total",
                &[("status", "error")],
            ),
        ),
        (
            "bindy reconciliations",
            bindy.sum("bindy_firestoned_io_reconciliations_total", &[]),
        ),
        (
            "bindy requeues",
            bindy.sum("bindy_firestoned_io_requeues_total", &[]),
        ),
        (
            "rndc-warden rotator API errors",
            warden.sum("rndc_warden_rotator_api_errors_total", &[]),
        ),
        (
            "rndc-warden denials",
            warden.sum(
                "rndc_warden_admission_requests_total",
                &[("decision", "denied")],
            ),
        ),
        (
            "rndc-warden rotations",
            warden.sum("rndc_warden_rotations_total", &[]),
        ),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindy_and_rndc_warden_run_side_by_side_for_30s_without_error_loops() {
    let mut t = SideBySide::start("bindy-smoke", BindyCrds::Upstream).await;
    t.apply_examples().await;
    t.wait_reconciled().await;

    let window = Duration::from_secs(30);
    let bindy_log_start = t.operator.log().len();
    let warden_log_start = t.chart.warden.logs().len();
    let metrics_of = |text: String| Metrics::parse(&text).expect("metrics parse");
    let bindy_before = metrics_of(t.operator.metrics().await.expect("operator /metrics"));
    let warden_before = t.chart.metrics().await;
    let mut last = versions(&t).await;
    let mut changes: BTreeMap<String, u32> = BTreeMap::new();
    let started = Instant::now();
    while started.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(500)).await;
        t.assert_operator_running();
        let now = versions(&t).await;
        for (object, version) in &now {
            if last.get(object) != Some(version) {
                *changes.entry(object.clone()).or_default() += 1;
            }
        }
        last = now;
    }
    let bindy_after = metrics_of(t.operator.metrics().await.expect("operator /metrics"));
    let warden_after = t.chart.metrics().await;
    let (before, after) = (
        error_counters(&bindy_before, &warden_before),
        error_counters(&bindy_after, &warden_after),
    );
    let bindy_log = t.operator.log();
    let warden_log = t.chart.warden.logs();
    let window_lines = |log: &str, from: usize, level: &str| lines_at(&log[from..], level);
    let bindy_errors = window_lines(&bindy_log, bindy_log_start, "ERROR");
    let bindy_warnings = window_lines(&bindy_log, bindy_log_start, "WARN");
    let warden_errors = window_lines(&warden_log, warden_log_start, "ERROR");
    let warden_warnings = window_lines(&warden_log, warden_log_start, "WARN");
    println!("side by side for {window:?}: objects written {changes:?}");
    for (name, value) in &after {
        // `+ 0.0`: an empty sum is -0.
        println!("  {name}: {} -> {}", before[name] + 0.0, value + 0.0);
    }
    for (who, metrics, name) in [
        ("bindy", &bindy_after, "bindy_firestoned_io_errors_total"),
        (
            "rndc-warden",
            &warden_after,
            "rndc_warden_rotator_api_errors_total",
        ),
    ] {
        for sample in metrics.samples().iter().filter(|s| s.name == name) {
            println!(
                "  {who} {name}{:?} = {} (so far)",
                sample.labels, sample.value
            );
        }
    }
    println!(
        "  log lines in the window: bindy {} ERROR, {} WARN; rndc-warden {} ERROR, {} WARN",
        bindy_errors.len(),
        bindy_warnings.len(),
        warden_errors.len(),
        warden_warnings.len()
    );
    for line in bindy_errors
        .iter()
        .chain(&bindy_warnings)
        .chain(&warden_errors)
        .chain(&warden_warnings)
        .take(10)
    {
        println!("  | {line}");
    }

    // No error loop: neither operator reports errors in the quiet window, and no object is
    // rewritten over and over (the operator requeues every 300 s, rndc-warden resyncs every 5 m).
    // The counters looked at are the ones exported (a renamed metric would make these checks
    // vacuous; a labelled family without series is not exported at all, so only the busy
    // ones can be checked): the operator's reconciliations and rndc-warden's admissions.
    assert!(after["bindy reconciliations"] > 0.0, "{after:?}");
    assert!(
        warden_after.sum("rndc_warden_admission_requests_total", &[]) > 0.0,
        "rndc-warden counts admissions"
    );
    let grew = |name: &str| after[name] - before[name];
    assert_eq!(
        grew("bindy errors_total"),
        0.0,
        "the operator reports errors"
    );
    assert_eq!(
        grew("bindy reconciliations (error)"),
        0.0,
        "the operator's reconciles fail"
    );
    assert_eq!(
        grew("rndc-warden rotator API errors"),
        0.0,
        "rndc-warden's rotator gets API errors"
    );
    assert_eq!(
        grew("rndc-warden denials"),
        0.0,
        "rndc-warden denies writes (of the operator?)"
    );
    assert!(
        bindy_errors.is_empty() && warden_errors.is_empty(),
        "ERROR lines in the window: bindy {bindy_errors:?}, rndc-warden {warden_errors:?}"
    );
    let looping: Vec<_> = changes.iter().filter(|(_, n)| **n > 2).collect();
    assert!(
        looping.is_empty(),
        "objects rewritten more than twice in {window:?}: {looping:?}"
    );
    t.assert_operator_running();
}
