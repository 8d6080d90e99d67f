//! Shared setup of the rotator end-to-end tests: CRDs, the rotator's RBAC (exactly what
//! `docs/security.md` lists), a rotator running as that ServiceAccount, and object builders.
#![allow(dead_code)]

pub mod binary;
pub mod chart;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec, Secret};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rndc_warden::api::{
    ANNOTATION_CREATED_AT, ANNOTATION_ROTATED_AT, ANNOTATION_ROTATION_COUNT, Bind9Instance,
    Bind9InstanceSpec, DATA_RNDC_KEY, DATA_SECRET, DEFAULT_KEY_NAME, LABEL_RNDC_KEY,
    LABEL_RNDC_KEY_VALUE, RndcKeyConfig,
};
use rndc_warden::cache::{CacheTask, ClusterCache};
use rndc_warden::metrics::Metrics;
use rndc_warden::policy::{
    Algorithm, PolicyConfig, format_time, key_facts, key_secret_from_bytes, parse_rndc_key,
    parse_time, rotation_annotations,
};
use rndc_warden::probe::Readiness;
use rndc_warden::rotation::{self, RotationArgs};
use rndc_warden_testkit::{Identity, TestEnv, apply_crds, poll_until};
use serde_json::json;

/// Deadline of every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(60);

/// One RBAC rule.
pub fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(groups.iter().map(|s| (*s).to_owned()).collect()),
        resources: Some(resources.iter().map(|s| (*s).to_owned()).collect()),
        verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
        ..PolicyRule::default()
    }
}

/// The rules the chart grants the rotator (cluster-wide); `docs/security.md` explains each.
pub fn rotator_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &["bindy.firestoned.io"],
            &["bind9instances", "bind9clusters"],
            &["get", "list", "watch"],
        ),
        rule(
            &["bindy.firestoned.io"],
            &["bind9instances/status"],
            &["patch"],
        ),
        rule(
            &[""],
            &["secrets"],
            &["get", "list", "watch", "create", "update", "patch"],
        ),
        rule(
            &["apps"],
            &["deployments"],
            &["get", "list", "watch", "patch"],
        ),
        rule(&["events.k8s.io"], &["events"], &["create", "patch"]),
        rule(
            &["coordination.k8s.io"],
            &["leases"],
            &["get", "create", "update", "patch"],
        ),
    ]
}

/// A test environment with the CRDs installed and a rotator identity bound to `rules`.
pub struct RotationEnv {
    pub env: TestEnv,
    pub sa: Identity,
    pub role_name: String,
}

impl RotationEnv {
    pub async fn new(name: &str) -> RotationEnv {
        Self::with_rules(name, rotator_rules()).await
    }

    pub async fn with_rules(name: &str, rules: Vec<PolicyRule>) -> RotationEnv {
        Self::with_crds_and_rules(name, &rndc_warden::api::crd_yaml(), rules).await
    }

    /// A test environment with the given CRDs (e.g. upstream's) installed.
    pub async fn with_crds_and_rules(
        name: &str,
        crds: &str,
        rules: Vec<PolicyRule>,
    ) -> RotationEnv {
        if let Some(filter) = std::env::var_os("E2E_LOG") {
            // Logs of the in-process rotator, e.g. E2E_LOG=rndc_warden=debug.
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter.to_string_lossy()))
                .with_test_writer()
                .try_init();
        }
        let env = TestEnv::new(name).await.expect("test env");
        apply_crds(&env.client, crds, WAIT).await.expect("CRDs");
        let role_name = format!("rotator-{}", env.ns.name());
        set_role(&env.client, &role_name, rules).await;
        let bindings: Api<RoleBinding> = env.ns.api(&env.client);
        let sa = env
            .ns
            .service_account_identity(env.cp, &env.client, "rndc-warden")
            .await
            .expect("service account");
        let binding = RoleBinding {
            metadata: ObjectMeta {
                name: Some("rndc-warden-rotator".into()),
                ..ObjectMeta::default()
            },
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: role_name.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: "rndc-warden".into(),
                namespace: Some(env.ns.name().to_owned()),
                ..Subject::default()
            }]),
        };
        bindings
            .create(&PostParams::default(), &binding)
            .await
            .expect("role binding");
        RotationEnv { env, sa, role_name }
    }

    /// [`RotationEnv::new`] plus the chart's cluster-scoped read of `clusterbind9providers`
    /// (ClusterRole `<role>-cluster` and a ClusterRoleBinding), which the admission caches of the
    /// real binary need: with it the ServiceAccount has exactly what the chart grants with
    /// `rotation.enabled` and no signal reloads (`docs/security.md`).
    pub async fn for_binary(name: &str) -> RotationEnv {
        Self::for_binary_with_crds(name, &rndc_warden::api::crd_yaml()).await
    }

    /// [`RotationEnv::for_binary`] with the given CRDs installed instead of ours.
    pub async fn for_binary_with_crds(name: &str, crds: &str) -> RotationEnv {
        let t = Self::with_crds_and_rules(name, crds, rotator_rules()).await;
        let cluster_role = format!("{}-cluster", t.role_name);
        set_role(
            t.client(),
            &cluster_role,
            vec![PolicyRule {
                api_groups: Some(vec!["bindy.firestoned.io".into()]),
                resources: Some(vec!["clusterbind9providers".into()]),
                verbs: vec!["get".into(), "list".into(), "watch".into()],
                ..PolicyRule::default()
            }],
        )
        .await;
        let binding = ClusterRoleBinding {
            metadata: ObjectMeta {
                name: Some(cluster_role.clone()),
                ..ObjectMeta::default()
            },
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: cluster_role,
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: "rndc-warden".into(),
                namespace: Some(t.ns().to_owned()),
                ..Subject::default()
            }]),
        };
        Api::<ClusterRoleBinding>::all(t.client().clone())
            .create(&PostParams::default(), &binding)
            .await
            .expect("cluster role binding");
        t
    }

    /// Another ServiceAccount of this namespace with exactly `rules` in it (a Role and a
    /// RoleBinding named after it), e.g. a human user of `rndc-warden audit`/`rotate`.
    pub async fn identity_with_rules(
        &self,
        name: &str,
        rules: Vec<PolicyRule>,
    ) -> rndc_warden_testkit::Identity {
        let role = Role {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            rules: Some(rules),
        };
        Api::<Role>::namespaced(self.client().clone(), self.ns())
            .create(&PostParams::default(), &role)
            .await
            .expect("role");
        let binding = RoleBinding {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "Role".into(),
                name: name.to_owned(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: name.to_owned(),
                namespace: Some(self.ns().to_owned()),
                ..Subject::default()
            }]),
        };
        Api::<RoleBinding>::namespaced(self.client().clone(), self.ns())
            .create(&PostParams::default(), &binding)
            .await
            .expect("role binding");
        self.env
            .ns
            .service_account_identity(self.env.cp, self.client(), name)
            .await
            .expect("service account")
    }

    /// The ServiceAccount's kubeconfig (for the real binary).
    pub fn sa_kubeconfig(&self) -> &std::path::Path {
        &self.sa.kubeconfig_path
    }

    pub fn ns(&self) -> &str {
        self.env.ns.name()
    }

    pub fn client(&self) -> &Client {
        &self.env.client
    }

    /// The rotator's flags for standalone use (no Bindy operator): it provisions missing
    /// managed Secrets itself (`--provision true`).
    pub fn args(&self) -> RotationArgs {
        RotationArgs {
            provision: true,
            ..self.args_beside_bindy()
        }
    }

    /// The rotator's flags with the defaults (beside the Bindy operator: no provisioning).
    pub fn args_beside_bindy(&self) -> RotationArgs {
        RotationArgs {
            lease_namespace: self.ns().to_owned(),
            namespaces: vec![self.ns().to_owned()],
            identity: Some("rotator-a".into()),
            resync_period: Duration::from_secs(30),
            ..RotationArgs::default()
        }
    }

    /// Starts a rotator as the ServiceAccount.
    pub fn start(&self) -> Rotator {
        self.start_with(self.args())
    }

    pub fn start_with(&self, args: RotationArgs) -> Rotator {
        let client = self.sa.client().expect("sa client");
        Rotator::start(client, args)
    }

    pub async fn set_rules(&self, rules: Vec<PolicyRule>) {
        set_role(self.client(), &self.role_name, rules).await;
    }
}

async fn set_role(client: &Client, name: &str, rules: Vec<PolicyRule>) {
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let role = ClusterRole {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        rules: Some(rules),
        ..ClusterRole::default()
    };
    roles
        .patch(
            name,
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(&role),
        )
        .await
        .expect("cluster role");
}

/// A rotator task with its own metrics; stopped on drop.
pub struct Rotator {
    pub metrics: Arc<Metrics>,
    stop: tokio::sync::watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<Result<(), rotation::Error>>,
}

/// Runs the rotator as `serve` does: beside a `ClusterCache` of its own, whose instance and
/// cluster stores it reads, until `true` is sent on the returned channel.
pub fn spawn_rotator(
    client: Client,
    args: RotationArgs,
    metrics: Arc<Metrics>,
    parts: rotation::Parts,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<Result<(), rotation::Error>>,
) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let signal = move || -> CacheTask {
            let mut stopped = stopped.clone();
            Box::pin(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            })
        };
        let started = ClusterCache::start(
            client.clone(),
            &args.namespaces,
            Arc::new(Readiness::default()),
            &signal,
        )
        .await;
        // Dropped (and so stopped) with this task.
        let mut watches = tokio::task::JoinSet::new();
        for task in started.tasks {
            watches.spawn(task);
        }
        let shared = started.cache.shared().expect("a connected cache");
        rotation::run(
            client,
            args,
            PolicyConfig::default(),
            metrics,
            parts,
            shared,
            signal(),
        )
        .await
    });
    (stop, task)
}

impl Rotator {
    pub fn start(client: Client, args: RotationArgs) -> Rotator {
        let metrics = Metrics::new();
        let parts = rotation::Parts::real(&client);
        let (stop, task) = spawn_rotator(client, args, metrics.clone(), parts);
        Rotator {
            metrics,
            stop,
            task,
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}

impl Drop for Rotator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn rndc_key(auto_rotate: bool, rotate_after: &str, algorithm: &str) -> RndcKeyConfig {
    RndcKeyConfig {
        auto_rotate: Some(auto_rotate),
        rotate_after: Some(rotate_after.into()),
        algorithm: Some(algorithm.into()),
        ..RndcKeyConfig::default()
    }
}

pub async fn create_instance(
    client: &Client,
    ns: &str,
    name: &str,
    spec: Bind9InstanceSpec,
) -> Bind9Instance {
    let api: Api<Bind9Instance> = Api::namespaced(client.clone(), ns);
    let mut instance = Bind9Instance::new(name, spec);
    instance.metadata.namespace = Some(ns.to_owned());
    api.create(&PostParams::default(), &instance)
        .await
        .expect("create instance")
}

pub fn standalone(block: Option<RndcKeyConfig>) -> Bind9InstanceSpec {
    Bind9InstanceSpec {
        role: Some("primary".into()),
        rndc_key: block,
        ..Bind9InstanceSpec::default()
    }
}

/// A Deployment shaped like Bindy's for instance `name` (labels `app=bind9,instance=<name>`,
/// container `bind9`).
pub fn bind9_deployment(name: &str) -> Deployment {
    let labels = BTreeMap::from([
        ("app".to_owned(), "bind9".to_owned()),
        ("instance".to_owned(), name.to_owned()),
    ]);
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        spec: DeploymentSpec {
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "bind9".into(),
                        image: Some("bind9:test".into()),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    }
}

pub async fn create_deployment(client: &Client, ns: &str, name: &str) -> Deployment {
    let deployment = bind9_deployment(name);
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create deployment")
}

pub async fn get_secret(client: &Client, ns: &str, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .expect("get secret")
}

pub fn annotation<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret
        .metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

pub fn count(secret: &Secret) -> u32 {
    annotation(secret, ANNOTATION_ROTATION_COUNT)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

pub fn created_at(secret: &Secret) -> Option<DateTime<Utc>> {
    annotation(secret, ANNOTATION_CREATED_AT).and_then(parse_time)
}

pub fn key_bytes(secret: &Secret) -> Vec<u8> {
    use base64::Engine as _;
    let text = secret
        .data
        .as_ref()
        .and_then(|d| d.get(DATA_SECRET))
        .map(|b| b.0.clone())
        .unwrap_or_default();
    base64::engine::general_purpose::STANDARD
        .decode(String::from_utf8(text).unwrap_or_default().trim())
        .unwrap_or_default()
}

pub fn rndc_key_file(secret: &Secret) -> String {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(DATA_RNDC_KEY))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default()
}

/// Waits until the Secret exists and `pred` holds, and returns it.
pub async fn wait_secret(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    pred: impl Fn(&Secret) -> bool,
) -> Secret {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    poll_until(what, WAIT, Duration::from_millis(100), || {
        let api = api.clone();
        let pred = &pred;
        async move {
            let s = api.get_opt(name).await?;
            Ok::<_, kube::Error>(s.filter(|s| pred(s)))
        }
    })
    .await
    .expect(what)
}

pub async fn marker(client: &Client, ns: &str, name: &str) -> Option<String> {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("deployment");
    d.spec
        .template
        .metadata
        .and_then(|m| m.annotations)
        .and_then(|a| a.get(ANNOTATION_ROTATED_AT).cloned())
}

/// Waits until the Deployment's marker equals `value`.
pub async fn wait_marker(client: &Client, ns: &str, name: &str, value: &str) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    poll_until(
        &format!("Deployment {name} marker {value}"),
        WAIT,
        Duration::from_millis(100),
        || {
            let api = api.clone();
            async move {
                let d = api.get(name).await?;
                let m = d
                    .spec
                    .template
                    .metadata
                    .and_then(|m| m.annotations)
                    .and_then(|a| a.get(ANNOTATION_ROTATED_AT).cloned());
                Ok::<_, kube::Error>((m.as_deref() == Some(value)).then_some(()))
            }
        },
    )
    .await
    .expect("marker");
}

/// Waits until the instance status shows `count` rotations at `created`.
pub async fn wait_status(client: &Client, ns: &str, name: &str, created: &str, count: u32) {
    let api: Api<Bind9Instance> = Api::namespaced(client.clone(), ns);
    poll_until(
        &format!("status of {name}"),
        WAIT,
        Duration::from_millis(100),
        || {
            let api = api.clone();
            async move {
                let i = api.get(name).await?;
                let ok = i.status.as_ref().is_some_and(|s| {
                    [&s.rndc_key_rotation_status, &s.rndc_key_rotation]
                        .iter()
                        .all(|st| {
                            st.as_ref().is_some_and(|st| {
                                parse_time(&st.created_at) == parse_time(created)
                                    && st.rotation_count == Some(count)
                            })
                        })
                });
                Ok::<_, kube::Error>(ok.then_some(()))
            }
        },
    )
    .await
    .expect("status");
}

/// How many instances in `ns` carry a rotation status (the rotator has evaluated them).
pub async fn instances_with_status(client: &Client, ns: &str) -> Result<usize, kube::Error> {
    let instances: Api<Bind9Instance> = Api::namespaced(client.clone(), ns);
    Ok(instances
        .list(&kube::api::ListParams::default())
        .await?
        .items
        .iter()
        .filter(|i| {
            i.status
                .as_ref()
                .is_some_and(|s| s.rndc_key_rotation.is_some())
        })
        .count())
}

/// Back-dates `rndc-created-at` (the documented manual trigger) with a resourceVersion precondition.
pub async fn back_date(client: &Client, ns: &str, name: &str, to: DateTime<Utc>) {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let current = api.get(name).await.expect("secret");
    let patch = json!({"metadata": {
        "resourceVersion": current.metadata.resource_version,
        "annotations": { ANNOTATION_CREATED_AT: format_time(to) }
    }});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("back-date");
}

/// Events with `reason` about `instance`.
pub async fn events(
    client: &Client,
    ns: &str,
    instance: &str,
    reason: &str,
) -> Vec<k8s_openapi::api::events::v1::Event> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    api.list(&Default::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(instance)
        })
        .collect()
}

/// Creates a managed-looking key Secret (label, valid `algorithm` key, `rndc-created-at` =
/// `created`, count 0, `rndc-rotate-at`) for an instance, as the rotator would have provisioned
/// it, so tests can start from keys that are already due without a provisioning pass.
pub async fn create_key_secret(
    client: &Client,
    ns: &str,
    name: &str,
    algorithm: Algorithm,
    created: DateTime<Utc>,
    rotate_after: chrono::TimeDelta,
) -> Secret {
    let bytes: Vec<u8> = (0..algorithm.output_len())
        .map(|_| rand::random())
        .collect();
    let data = key_secret_from_bytes(DEFAULT_KEY_NAME, algorithm, &bytes).expect("key data");
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(
                LABEL_RNDC_KEY.to_owned(),
                LABEL_RNDC_KEY_VALUE.to_owned(),
            )])),
            annotations: Some(rotation_annotations(created, 0, Some(rotate_after))),
            ..ObjectMeta::default()
        },
        data: Some(data.into_data()),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create key secret")
}

/// What is wrong with instance `name` (Secret `<name>-rndc-key`, Deployment `<name>`) against the
/// end state of a rotation: a valid `algorithm` key, `count` rotations, the Deployment marker
/// equal to `rndc-created-at`, and both status blocks mirroring the Secret. Empty when all holds.
pub fn converged_problems(
    name: &str,
    secret: Option<&Secret>,
    deployment: Option<&Deployment>,
    instance: Option<&Bind9Instance>,
    algorithm: Algorithm,
    count_wanted: u32,
) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(secret) = secret else {
        return vec![format!("{name}: no Secret")];
    };
    let (facts, findings) = key_facts(secret, &PolicyConfig::default());
    if !findings.denials.is_empty() {
        problems.push(format!(
            "{name}: Secret fails the key checks ({} findings)",
            findings.denials.len()
        ));
    }
    if facts.algorithm != Some(algorithm) {
        problems.push(format!("{name}: algorithm {:?}", facts.algorithm));
    }
    if key_bytes(secret).len() != algorithm.output_len() {
        problems.push(format!(
            "{name}: key is {} bytes, not {}",
            key_bytes(secret).len(),
            algorithm.output_len()
        ));
    }
    if parse_rndc_key(&rndc_key_file(secret)).is_err() {
        problems.push(format!("{name}: rndc.key does not parse"));
    }
    if count(secret) != count_wanted {
        problems.push(format!(
            "{name}: rotation count {} (wanted {count_wanted})",
            count(secret)
        ));
    }
    let created = annotation(secret, ANNOTATION_CREATED_AT).unwrap_or_default();
    let marker = deployment
        .and_then(|d| d.spec.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(ANNOTATION_ROTATED_AT));
    if marker.map(String::as_str) != Some(created) {
        problems.push(format!(
            "{name}: Deployment marker {marker:?} != rndc-created-at {created}"
        ));
    }
    let status = instance.and_then(|i| i.status.as_ref());
    for (field, block) in [
        (
            "rndcKeyRotationStatus",
            status.and_then(|s| s.rndc_key_rotation_status.as_ref()),
        ),
        (
            "rndcKeyRotation",
            status.and_then(|s| s.rndc_key_rotation.as_ref()),
        ),
    ] {
        let ok = block.is_some_and(|b| {
            parse_time(&b.created_at) == parse_time(created)
                && b.rotation_count == Some(count(secret))
        });
        if !ok {
            problems.push(format!(
                "{name}: status.{field} {block:?} does not match the Secret ({created}, {})",
                count(secret)
            ));
        }
    }
    problems
}

/// Lists Secrets, Deployments and instances of `ns` and checks every name in `names` with
/// [`converged_problems`]; returns all problems.
pub async fn all_converged_problems(
    client: &Client,
    ns: &str,
    names: &[String],
    algorithm: Algorithm,
    count_wanted: u32,
) -> Result<Vec<String>, kube::Error> {
    use kube::ResourceExt as _;
    use std::collections::HashMap;
    let lp = kube::api::ListParams::default();
    let secrets: HashMap<String, Secret> = Api::<Secret>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .items
        .into_iter()
        .map(|s| (s.name_any(), s))
        .collect();
    let deployments: HashMap<String, Deployment> =
        Api::<Deployment>::namespaced(client.clone(), ns)
            .list(&lp)
            .await?
            .items
            .into_iter()
            .map(|d| (d.name_any(), d))
            .collect();
    let instances: HashMap<String, Bind9Instance> =
        Api::<Bind9Instance>::namespaced(client.clone(), ns)
            .list(&lp)
            .await?
            .items
            .into_iter()
            .map(|i| (i.name_any(), i))
            .collect();
    Ok(names
        .iter()
        .flat_map(|name| {
            converged_problems(
                name,
                secrets.get(&format!("{name}-rndc-key")),
                deployments.get(name),
                instances.get(name),
                algorithm,
                count_wanted,
            )
        })
        .collect())
}

/// Polls [`all_converged_problems`] until it is empty; panics with the remaining problems (at
/// most 20) after `timeout`. Returns how long it took.
pub async fn wait_converged(
    client: &Client,
    ns: &str,
    names: &[String],
    algorithm: Algorithm,
    count_wanted: u32,
    timeout: Duration,
) -> Duration {
    let started = std::time::Instant::now();
    loop {
        let problems = all_converged_problems(client, ns, names, algorithm, count_wanted)
            .await
            .unwrap_or_else(|e| vec![format!("listing: {e}")]);
        if problems.is_empty() {
            return started.elapsed();
        }
        if started.elapsed() > timeout {
            panic!(
                "not converged after {timeout:?}: {} problems, e.g.\n{}",
                problems.len(),
                problems
                    .iter()
                    .take(20)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
