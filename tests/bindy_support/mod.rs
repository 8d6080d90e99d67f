//! Both operators side by side: the real Bindy operator (testkit `BindyOperator`) and
//! rndc-warden installed by the chart with its default values, for the tests of
//! `tests/e2e_bindy.rs` and `tests/e2e_bindy_operator.rs`.

#![allow(dead_code)]

pub mod record;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{DynamicObject, ListParams};
use kube::{Api, Client, ResourceExt};
use rndc_warden_testkit::bindy::{
    self, BindyCrds, BindyKind, BindyOperator, BindyOptions, LEADER_LOG, OperatorSlot,
};
use rndc_warden_testkit::namespace::unique_name;
use rndc_warden_testkit::{Metrics, TestEnv, TestNamespace};

use crate::rotation_support::chart::ChartInstall;

/// Bindy's examples that validate against its CRDs and fit together: the provider
/// `production-dns` (its Bind9Cluster is created by the operator) and two instances of it.
pub const EXAMPLES: &[&str] = &["cluster-bind9-provider.yaml", "bind9-instance.yaml"];
/// Deadline for the operator's work in these tests.
pub const WAIT: Duration = Duration::from_secs(120);
/// The Secret data keys the operator writes.
pub const OPERATOR_DATA_KEYS: [&str; 4] = ["algorithm", "key-name", "rndc.key", "secret"];

/// Both operators and their namespaces. Fields drop in declaration order: the operator stops
/// first, then the chart is uninstalled (no webhook configuration is left to block anyone) and
/// rndc-warden stops, then the slot passes to the next test.
pub struct SideBySide {
    pub operator: BindyOperator,
    pub chart: ChartInstall,
    pub env: TestEnv,
    pub slot: OperatorSlot,
    /// Operator start to "Leadership acquired".
    pub leader_after: Duration,
}

impl SideBySide {
    pub async fn start(name: &str, crds: BindyCrds) -> SideBySide {
        Self::start_with(name, crds, "").await
    }

    /// [`SideBySide::start`] with more chart values (YAML, applied last).
    pub async fn start_with(name: &str, crds: BindyCrds, values: &str) -> SideBySide {
        let env = TestEnv::new(name).await.expect("test env");
        let slot = OperatorSlot::acquire(&env.client, crds)
            .await
            .expect("the operator slot and the CRDs");
        Self::start_in(env, slot, values).await
    }

    /// Both operators for `env` (its control plane and namespace), holding `slot`, with more
    /// chart values (YAML, applied last).
    pub async fn start_in(env: TestEnv, slot: OperatorSlot, values: &str) -> SideBySide {
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
            &format!("crds:\n  install: false\n{values}"),
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

    pub fn ns(&self) -> &str {
        self.env.ns.name()
    }

    pub fn client(&self) -> &Client {
        &self.env.client
    }

    pub fn kind(&self, kind: &str) -> &BindyKind {
        self.slot
            .kinds()
            .iter()
            .find(|k| k.resource.kind == kind)
            .expect("a Bindy kind")
    }

    /// Bindy objects of `kind` in the test namespace (cluster-wide for cluster-scoped kinds).
    pub async fn list(&self, kind: &str) -> Vec<DynamicObject> {
        let kind = self.kind(kind);
        let api: Api<DynamicObject> = if kind.namespaced {
            Api::namespaced_with(self.client().clone(), self.ns(), &kind.resource)
        } else {
            Api::all_with(self.client().clone(), &kind.resource)
        };
        api.list(&ListParams::default()).await.expect("list").items
    }

    /// Fails with the operator's log when it has exited.
    pub fn assert_operator_running(&mut self) {
        if let Err(e) = self.operator.check_running() {
            panic!("{e}");
        }
        self.chart.warden.assert_running();
    }

    /// Applies Bindy's examples (namespaces rewritten to the test's) as admin, through both
    /// webhooks; returns when kubectl did.
    pub async fn apply_examples(&self) {
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
    pub async fn wait_reconciled(&mut self) -> (Converged, Duration) {
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
    pub async fn converged(&self) -> Converged {
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
pub struct Converged {
    pub instances: BTreeMap<String, InstanceResources>,
    pub clusters: BTreeSet<String>,
    /// `<instance>-rndc-key` Secrets, described without key material.
    pub secrets: BTreeMap<String, SecretShape>,
    /// Other Secrets of the namespace (by name).
    pub other_secrets: Vec<String>,
    pub missing: Vec<String>,
}

#[derive(Debug)]
pub struct InstanceResources {
    pub uid: String,
    pub containers: Vec<String>,
    pub mounts: Mounts,
    pub secret: String,
}

/// Volumes of a Deployment's pod template.
#[derive(Debug, Default)]
pub struct Mounts {
    pub config_maps: Vec<String>,
    pub secrets: Vec<String>,
}

pub fn mounted(deployment: &Deployment) -> Mounts {
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
pub struct SecretShape {
    pub data_keys: Vec<String>,
    pub key_name: String,
    pub algorithm: String,
    pub key_bytes: usize,
    pub annotations: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub owners: Vec<(String, String, String)>,
}

pub fn describe_secret(secret: &Secret) -> SecretShape {
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
pub fn examples_manifest(files: &[&str], namespace: &str, kinds: &[BindyKind]) -> String {
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

/// `rndc_warden_admission_requests_total` for `kind`/`operation` on one endpoint.
pub fn admitted(metrics: &Metrics, endpoint: &str, kind: &str, operation: &str) -> f64 {
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
pub fn admission_table(metrics: &Metrics) -> Vec<String> {
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
pub fn lines_at(log: &str, level: &str) -> Vec<String> {
    let needle = format!("\"level\":\"{level}\"");
    log.lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_owned)
        .collect()
}
