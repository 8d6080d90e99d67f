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

mod rotation_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{DynamicObject, ListParams};
use kube::{Api, Client, ResourceExt};
use rndc_warden_testkit::bindy::{
    self, BindyCrds, BindyKind, BindyOperator, BindyOptions, LEADER_LOG, OperatorSlot,
    RECONCILE_INSTANCE_LOG,
};
use rndc_warden_testkit::namespace::unique_name;
use rndc_warden_testkit::{Metrics, TestEnv, TestNamespace};
use rotation_support::chart::ChartInstall;

/// Bindy's examples that validate against its CRDs and fit together: the provider
/// `production-dns` (its Bind9Cluster is created by the operator) and two instances of it.
const EXAMPLES: &[&str] = &["cluster-bind9-provider.yaml", "bind9-instance.yaml"];
/// Deadline for the operator's work in these tests.
const WAIT: Duration = Duration::from_secs(120);
/// The Secret data keys the operator writes.
const OPERATOR_DATA_KEYS: [&str; 4] = ["algorithm", "key-name", "rndc.key", "secret"];

/// Both operators and their namespaces. Fields drop in declaration order: the operator stops
/// first, then the chart is uninstalled (no webhook configuration is left to block anyone) and
/// rndc-warden stops, then the slot passes to the next test.
struct SideBySide {
    operator: BindyOperator,
    chart: ChartInstall,
    env: TestEnv,
    slot: OperatorSlot,
    /// Operator start to "Leadership acquired".
    leader_after: Duration,
}

impl SideBySide {
    async fn start(name: &str, crds: BindyCrds) -> SideBySide {
        let env = TestEnv::new(name).await.expect("test env");
        let slot = OperatorSlot::acquire(&env.client, crds)
            .await
            .expect("the operator slot and the CRDs");
        let operator_ns = TestNamespace::create(&env.client, "bindy-system")
            .await
            .expect("operator namespace");
        let release_ns = TestNamespace::create(&env.client, "rndc-warden")
            .await
            .expect("release namespace");
        let workload = env.ns.name().to_owned();
        // The chart's defaults, except what a local install needs (`local_values`) and
        // `crds.install=false`: CRDs are cluster-wide, the slot installed the set under test
        // (rndc-warden's own set is the YAML the chart carries), and Helm cannot adopt CRDs that
        // another release or the operator installed.
        let chart = ChartInstall::install(
            &env,
            &unique_name("warden"),
            release_ns.name(),
            &[&workload],
            "crds:\n  install: false\n",
            &workload,
        )
        .await;
        let mut operator = BindyOperator::start(
            &slot,
            env.cp,
            &env.client,
            BindyOptions::new(operator_ns.name(), [workload.as_str()]),
        )
        .await
        .expect("the Bindy operator (scripts/bindy-bin.sh builds it; see docs/development.md)");
        let leader_after = operator
            .wait_for_log(LEADER_LOG, WAIT)
            .await
            .expect("the operator takes its Lease");
        println!(
            "bindy: slot waited {:?}; operator in {} leader {leader_after:?} after its start (log {})",
            slot.waited(),
            operator_ns.name(),
            operator.log_path().display()
        );
        SideBySide {
            operator,
            chart,
            env,
            slot,
            leader_after,
        }
    }

    fn ns(&self) -> &str {
        self.env.ns.name()
    }

    fn client(&self) -> &Client {
        &self.env.client
    }

    fn kind(&self, kind: &str) -> &BindyKind {
        self.slot
            .kinds()
            .iter()
            .find(|k| k.resource.kind == kind)
            .expect("a Bindy kind")
    }

    /// Bindy objects of `kind` in the test namespace (cluster-wide for cluster-scoped kinds).
    async fn list(&self, kind: &str) -> Vec<DynamicObject> {
        let kind = self.kind(kind);
        let api: Api<DynamicObject> = if kind.namespaced {
            Api::namespaced_with(self.client().clone(), self.ns(), &kind.resource)
        } else {
            Api::all_with(self.client().clone(), &kind.resource)
        };
        api.list(&ListParams::default()).await.expect("list").items
    }

    /// Fails with the operator's log when it has exited.
    fn assert_operator_running(&mut self) {
        if let Err(e) = self.operator.check_running() {
            panic!("{e}");
        }
        self.chart.warden.assert_running();
    }

    /// Applies Bindy's examples (namespaces rewritten to the test's) as admin, through both
    /// webhooks; returns when kubectl did.
    async fn apply_examples(&self) {
        let manifest = examples_manifest(EXAMPLES, self.ns(), self.slot.kinds());
        let out = self
            .env
            .cp
            .kubectl_apply(&manifest)
            .await
            .expect("kubectl runs");
        assert!(
            out.success(),
            "Bindy's examples are rejected:\n{}{}\n{}",
            out.stdout,
            out.stderr,
            self.chart.warden.logs_tail(4000)
        );
        print!("{}", out.stdout);
    }

    /// Waits until every Bind9Instance of the namespace (at least the examples' two) has the
    /// Deployment, the ConfigMaps it mounts and its `<instance>-rndc-key` Secret, and the set of
    /// instances has not changed for 3 s. Returns what was found and how long it took.
    async fn wait_reconciled(&mut self) -> (Converged, Duration) {
        let started = Instant::now();
        let mut last: Option<(BTreeSet<String>, Instant)> = None;
        loop {
            self.assert_operator_running();
            let found = self.converged().await;
            let names: BTreeSet<String> = found.instances.keys().cloned().collect();
            let complete = found.missing.is_empty()
                && ["primary-dns", "secondary-dns"]
                    .iter()
                    .all(|n| names.contains(*n))
                && found.clusters.contains("production-dns");
            if complete {
                match &last {
                    Some((previous, since))
                        if *previous == names && since.elapsed() >= Duration::from_secs(3) =>
                    {
                        return (found, started.elapsed());
                    }
                    Some((previous, _)) if *previous == names => {}
                    _ => last = Some((names, Instant::now())),
                }
            } else {
                last = None;
            }
            assert!(
                started.elapsed() < WAIT,
                "the operator did not create everything within {WAIT:?}; missing: {:?}\n{}",
                found.missing,
                self.operator.log_tail(6000)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// What exists now: per instance its Deployment, mounted ConfigMaps and key Secret.
    async fn converged(&self) -> Converged {
        let lp = ListParams::default();
        let deployments: BTreeMap<String, Deployment> =
            Api::<Deployment>::namespaced(self.client().clone(), self.ns())
                .list(&lp)
                .await
                .expect("deployments")
                .items
                .into_iter()
                .map(|d| (d.name_any(), d))
                .collect();
        let config_maps: BTreeSet<String> =
            Api::<ConfigMap>::namespaced(self.client().clone(), self.ns())
                .list(&lp)
                .await
                .expect("config maps")
                .items
                .iter()
                .map(ResourceExt::name_any)
                .collect();
        let secrets: BTreeMap<String, Secret> =
            Api::<Secret>::namespaced(self.client().clone(), self.ns())
                .list(&lp)
                .await
                .expect("secrets")
                .items
                .into_iter()
                .map(|s| (s.name_any(), s))
                .collect();
        let mut found = Converged {
            clusters: self
                .list("Bind9Cluster")
                .await
                .iter()
                .map(ResourceExt::name_any)
                .collect(),
            ..Converged::default()
        };
        for instance in self.list("Bind9Instance").await {
            let name = instance.name_any();
            let secret_name = format!("{name}-rndc-key");
            let Some(deployment) = deployments.get(&name) else {
                found.missing.push(format!("Deployment {name}"));
                continue;
            };
            let mounts = mounted(deployment);
            for cm in &mounts.config_maps {
                if !config_maps.contains(cm) {
                    found
                        .missing
                        .push(format!("ConfigMap {cm} (mounted by {name})"));
                }
            }
            if mounts.config_maps.is_empty() {
                found
                    .missing
                    .push(format!("a ConfigMap volume in Deployment {name}"));
            }
            match secrets.get(&secret_name) {
                Some(secret) => {
                    found
                        .secrets
                        .insert(secret_name.clone(), describe_secret(secret));
                }
                None => found.missing.push(format!("Secret {secret_name}")),
            }
            found.instances.insert(
                name,
                InstanceResources {
                    uid: instance.uid().unwrap_or_default(),
                    containers: deployment
                        .spec
                        .template
                        .spec
                        .as_ref()
                        .map(|p| p.containers.iter().map(|c| c.name.clone()).collect())
                        .unwrap_or_default(),
                    mounts,
                    secret: secret_name,
                },
            );
        }
        found.other_secrets = secrets
            .keys()
            .filter(|s| !found.secrets.contains_key(*s))
            .cloned()
            .collect();
        found
    }
}

/// What the operator made, per instance.
#[derive(Debug, Default)]
struct Converged {
    instances: BTreeMap<String, InstanceResources>,
    clusters: BTreeSet<String>,
    /// `<instance>-rndc-key` Secrets, described without key material.
    secrets: BTreeMap<String, SecretShape>,
    /// Other Secrets of the namespace (by name).
    other_secrets: Vec<String>,
    missing: Vec<String>,
}

#[derive(Debug)]
struct InstanceResources {
    uid: String,
    containers: Vec<String>,
    mounts: Mounts,
    secret: String,
}

/// Volumes of a Deployment's pod template.
#[derive(Debug, Default)]
struct Mounts {
    config_maps: Vec<String>,
    secrets: Vec<String>,
}

fn mounted(deployment: &Deployment) -> Mounts {
    let mut mounts = Mounts::default();
    let volumes = deployment
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.volumes.as_ref());
    for volume in volumes.into_iter().flatten() {
        if let Some(cm) = volume.config_map.as_ref() {
            mounts.config_maps.push(cm.name.clone());
        }
        if let Some(secret) = volume.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            mounts.secrets.push(secret);
        }
    }
    mounts
}

/// A key Secret without its key material: data keys, key name, algorithm, key length,
/// annotations, labels, owners.
#[derive(Debug)]
#[allow(dead_code, reason = "some fields are only printed, through Debug")]
struct SecretShape {
    data_keys: Vec<String>,
    key_name: String,
    algorithm: String,
    key_bytes: usize,
    annotations: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    owners: Vec<(String, String, String)>,
}

fn describe_secret(secret: &Secret) -> SecretShape {
    let data = secret.data.clone().unwrap_or_default();
    let text = |key: &str| {
        data.get(key)
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .unwrap_or_default()
    };
    SecretShape {
        data_keys: data.keys().cloned().collect(),
        key_name: text("key-name"),
        algorithm: text("algorithm"),
        key_bytes: base64::engine::general_purpose::STANDARD
            .decode(text("secret").trim())
            .map(|k| k.len())
            .unwrap_or(0),
        annotations: secret.annotations().clone(),
        labels: secret.labels().clone(),
        owners: secret
            .owner_references()
            .iter()
            .map(|o| (o.kind.clone(), o.name.clone(), o.uid.clone()))
            .collect(),
    }
}

/// Bindy's example files as one manifest: every namespaced object in `namespace`, and a
/// ClusterBind9Provider's `spec.namespace` (where it creates its Bind9Cluster) too.
fn examples_manifest(files: &[&str], namespace: &str, kinds: &[BindyKind]) -> String {
    use serde::Deserialize as _;
    let dir = bindy::source_dir().join("examples");
    let mut documents = Vec::new();
    for file in files {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let mut value = serde_yaml_ng::Value::deserialize(document).expect("example YAML");
            if value.is_null() {
                continue;
            }
            let kind = value["kind"].as_str().unwrap_or_default().to_owned();
            let namespaced = kinds
                .iter()
                .find(|k| k.resource.kind == kind)
                .is_none_or(|k| k.namespaced);
            if namespaced {
                value["metadata"]["namespace"] = namespace.into();
            }
            if kind == "ClusterBind9Provider" && !value["spec"]["namespace"].is_null() {
                value["spec"]["namespace"] = namespace.into();
            }
            documents.push(serde_yaml_ng::to_string(&value).expect("YAML"));
        }
    }
    documents.join("---\n")
}

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

/// `rndc_warden_admission_requests_total` for `kind`/`operation` on one endpoint.
fn admitted(metrics: &Metrics, endpoint: &str, kind: &str, operation: &str) -> f64 {
    metrics.sum(
        "rndc_warden_admission_requests_total",
        &[
            ("endpoint", endpoint),
            ("kind", kind),
            ("operation", operation),
        ],
    )
}

/// The rndc-warden admission counters of every Bindy kind and Secret, by endpoint, kind,
/// operation and decision (for the report).
fn admission_table(metrics: &Metrics) -> Vec<String> {
    metrics
        .samples()
        .iter()
        .filter(|s| s.name == "rndc_warden_admission_requests_total")
        .map(|s| {
            format!(
                "{}/{}/{}/{}={}",
                s.labels.get("endpoint").map_or("", String::as_str),
                s.labels.get("kind").map_or("", String::as_str),
                s.labels.get("operation").map_or("", String::as_str),
                s.labels.get("decision").map_or("", String::as_str),
                s.value
            )
        })
        .collect()
}

/// Log lines at `level` (JSON logs of both operators: `"level":"ERROR"`).
fn lines_at(log: &str, level: &str) -> Vec<String> {
    let needle = format!("\"level\":\"{level}\"");
    log.lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_owned)
        .collect()
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
