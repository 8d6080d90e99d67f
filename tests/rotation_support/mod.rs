//! Shared setup of the rotator end-to-end tests: CRDs, the rotator's RBAC (exactly what
//! `docs/security.md` lists), a rotator running as that ServiceAccount, and object builders.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rndc_warden::api::{
    ANNOTATION_CREATED_AT, ANNOTATION_ROTATED_AT, ANNOTATION_ROTATION_COUNT, Bind9Instance,
    Bind9InstanceSpec, DATA_RNDC_KEY, DATA_SECRET, RndcKeyConfig,
};
use rndc_warden::metrics::Metrics;
use rndc_warden::policy::{PolicyConfig, format_time, parse_time};
use rndc_warden::rotation::{self, RotationArgs};
use rndc_warden_testkit::{Identity, TestEnv, apply_crds, poll_until};
use serde_json::json;
use tokio::sync::oneshot;

/// Deadline of every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(60);

/// The rules the chart grants the rotator (cluster-wide); `docs/security.md` explains each.
pub fn rotator_rules() -> Vec<PolicyRule> {
    let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(groups.iter().map(|s| (*s).to_owned()).collect()),
        resources: Some(resources.iter().map(|s| (*s).to_owned()).collect()),
        verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
        ..PolicyRule::default()
    };
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
        let env = TestEnv::new(name).await.expect("test env");
        apply_crds(&env.client, &rndc_warden::api::crd_yaml(), WAIT)
            .await
            .expect("CRDs");
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

    pub fn ns(&self) -> &str {
        self.env.ns.name()
    }

    pub fn client(&self) -> &Client {
        &self.env.client
    }

    pub fn args(&self) -> RotationArgs {
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
    stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Result<(), rotation::Error>>,
}

impl Rotator {
    pub fn start(client: Client, args: RotationArgs) -> Rotator {
        let metrics = Metrics::new();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(rotation::run(
            client,
            args,
            PolicyConfig::default(),
            metrics.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        Rotator {
            metrics,
            stop: Some(stop),
            task,
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
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

pub async fn create_deployment(client: &Client, ns: &str, name: &str) -> Deployment {
    let labels = BTreeMap::from([
        ("app".to_owned(), "bind9".to_owned()),
        ("instance".to_owned(), name.to_owned()),
    ]);
    let deployment = Deployment {
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
    };
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
