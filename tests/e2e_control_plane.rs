//! End-to-end checks of the local control plane itself (issue 2, "Must show"): the binaries and
//! their versions, CRDs and optimistic concurrency, RBAC for a ServiceAccount token, a webhook
//! registered by URL and the apiserver's admission metrics, and BIND9 accepting exactly the
//! configured rndc key across a reload. Everything runs against real processes.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ObjectMeta, PostParams,
};
use rndc_warden_testkit::named::generate_key;
use rndc_warden_testkit::{
    Metrics, Named, StubWebhookServer, TestEnv, TestNamespace, WebhookKind, rule,
    wait_crd_established, wait_for,
};

const K8S_VERSION: &str = "v1.37.2";
const HELM_VERSION: &str = "v3.22.0";
const WAIT: Duration = Duration::from_secs(60);

fn api_status(result: Result<impl std::fmt::Debug, kube::Error>) -> u16 {
    match result {
        Err(kube::Error::Api(status)) => status.code,
        other => panic!("expected an API error status, got {other:?}"),
    }
}

#[tokio::test]
async fn kubectl_and_helm_report_the_pinned_versions() {
    let env = TestEnv::new("versions").await.expect("test environment");
    eprintln!(
        "control plane started in {:?} ({})",
        env.cp.startup_time(),
        env.cp.server_url()
    );

    let out = env
        .cp
        .kubectl(["version", "-o", "json"])
        .await
        .expect("run kubectl")
        .ok()
        .expect("kubectl version against the apiserver");
    let version: serde_json::Value = serde_json::from_str(&out.stdout).expect("version JSON");
    assert_eq!(
        version["clientVersion"]["gitVersion"], K8S_VERSION,
        "{version}"
    );
    assert_eq!(
        version["serverVersion"]["gitVersion"], K8S_VERSION,
        "{version}"
    );
    let info = env.client.apiserver_version().await.expect("/version");
    assert_eq!(info.git_version, K8S_VERSION);
    assert_eq!((info.major.as_str(), info.minor.as_str()), ("1", "37"));

    let helm = env
        .cp
        .helm(["version", "--short"])
        .await
        .expect("run helm")
        .ok()
        .expect("helm version");
    assert!(helm.stdout.starts_with(HELM_VERSION), "{}", helm.stdout);

    // helm against the live server: the chart requires Kubernetes >= 1.37, which only passes
    // because the apiserver reports its real (stamped) version.
    let chart = tempfile::tempdir().expect("chart dir");
    std::fs::create_dir(chart.path().join("templates")).expect("templates dir");
    std::fs::write(
        chart.path().join("Chart.yaml"),
        "apiVersion: v2\nname: probe\nversion: 0.1.0\nkubeVersion: \">=1.37.0-0 <1.38.0-0\"\n",
    )
    .expect("Chart.yaml");
    std::fs::write(
        chart.path().join("templates/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\ndata:\n  \
         kube: {{ .Capabilities.KubeVersion.Version | quote }}\n",
    )
    .expect("template");
    let chart_dir = chart.path().to_str().expect("utf-8 path");
    env.cp
        .helm([
            "install",
            "probe",
            chart_dir,
            "-n",
            env.ns.name(),
            "--wait=false",
        ])
        .await
        .expect("run helm install")
        .ok()
        .expect("helm install against the apiserver");
    let cm = env
        .ns
        .api::<ConfigMap>(&env.client)
        .get("probe")
        .await
        .expect("the chart's ConfigMap");
    let data = cm.data.unwrap_or_default();
    assert_eq!(data.get("kube").map(String::as_str), Some(K8S_VERSION));
}

#[tokio::test]
async fn crd_applied_with_kubectl_supports_crud_with_optimistic_concurrency() {
    let env = TestEnv::new("crd-crud").await.expect("test environment");
    let crd = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.e2e.rndc-warden.test
spec:
  group: e2e.rndc-warden.test
  scope: Namespaced
  names: { plural: widgets, singular: widget, kind: Widget }
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: { type: integer }
"#;
    env.cp
        .kubectl_apply(crd)
        .await
        .expect("run kubectl")
        .ok()
        .expect("kubectl apply of the CRD");
    wait_crd_established(&env.client, "widgets.e2e.rndc-warden.test", WAIT)
        .await
        .expect("CRD Established");

    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "e2e.rndc-warden.test",
        "v1",
        "Widget",
    ));
    let widgets: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), env.ns.name(), &resource);
    let mut widget = DynamicObject::new("w1", &resource).data(serde_json::json!({
        "spec": { "size": 1 }
    }));
    widget.metadata.namespace = Some(env.ns.name().to_owned());
    let created = widgets
        .create(&PostParams::default(), &widget)
        .await
        .expect("create a Widget");
    let read = widgets.get("w1").await.expect("read the Widget");
    assert_eq!(read.data["spec"]["size"], 1);
    assert_eq!(read.metadata.uid, created.metadata.uid);

    let stale_version = read.metadata.resource_version.clone();
    let mut update = read.clone();
    update.data["spec"]["size"] = 2.into();
    let updated = widgets
        .replace("w1", &PostParams::default(), &update)
        .await
        .expect("update with the current resourceVersion");
    assert_eq!(updated.data["spec"]["size"], 2);
    assert_ne!(updated.metadata.resource_version, stale_version);

    let mut stale = read;
    stale.metadata.resource_version = stale_version;
    stale.data["spec"]["size"] = 3.into();
    let conflict = widgets.replace("w1", &PostParams::default(), &stale).await;
    assert_eq!(
        api_status(conflict),
        409,
        "a stale resourceVersion must conflict"
    );
    assert_eq!(
        widgets.get("w1").await.expect("re-read").data["spec"]["size"],
        2,
        "the conflicting write must not have landed"
    );

    let listed = env
        .cp
        .kubectl(["get", "widgets", "-n", env.ns.name(), "-o", "name"])
        .await
        .expect("run kubectl")
        .ok()
        .expect("kubectl get widgets");
    assert_eq!(listed.stdout.trim(), "widget.e2e.rndc-warden.test/w1");

    widgets
        .delete("w1", &DeleteParams::default())
        .await
        .expect("delete the Widget");
    assert_eq!(api_status(widgets.get("w1").await), 404);
}

#[tokio::test]
async fn service_account_token_needs_rbac_to_read_secrets() {
    let env = TestEnv::new("sa-rbac").await.expect("test environment");
    let identity = env
        .ns
        .service_account_identity(env.cp, &env.client, "reader")
        .await
        .expect("ServiceAccount identity");
    assert_eq!(
        identity.username,
        format!("system:serviceaccount:{}:reader", env.ns.name())
    );
    let as_reader: Api<Secret> = env.ns.api(&identity.client().expect("identity client"));

    assert_eq!(
        api_status(as_reader.list(&Default::default()).await),
        403,
        "a token without RBAC must be refused"
    );
    let kubectl = env
        .cp
        .kubectl_as(
            &identity.kubeconfig_path,
            ["get", "secrets", "-n", env.ns.name()],
            None,
        )
        .await
        .expect("run kubectl");
    assert!(!kubectl.success());
    assert!(kubectl.stderr.contains("forbidden"), "{}", kubectl.stderr);

    let role = Role {
        metadata: ObjectMeta {
            name: Some("secret-reader".into()),
            ..ObjectMeta::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".into()]),
            verbs: vec!["get".into(), "list".into()],
            ..PolicyRule::default()
        }]),
    };
    env.ns
        .api::<Role>(&env.client)
        .create(&PostParams::default(), &role)
        .await
        .expect("create Role");
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("secret-reader".into()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: "secret-reader".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "reader".into(),
            namespace: Some(env.ns.name().into()),
            ..Subject::default()
        }]),
    };
    env.ns
        .api::<RoleBinding>(&env.client)
        .create(&PostParams::default(), &binding)
        .await
        .expect("create RoleBinding");

    // The RBAC authorizer learns about the binding through its informer: poll.
    wait_for("the RoleBinding to take effect", WAIT, || async {
        as_reader.list(&Default::default()).await.is_ok()
    })
    .await
    .expect("list Secrets after the RoleBinding");
    let other = TestNamespace::create(&env.client, "sa-rbac-other")
        .await
        .expect("second namespace");
    let elsewhere: Api<Secret> = other.api(&identity.client().expect("identity client"));
    assert_eq!(
        api_status(elsewhere.list(&Default::default()).await),
        403,
        "the Role grants nothing outside its namespace"
    );
}

#[tokio::test]
async fn webhook_registered_by_url_is_called_and_measured() {
    const MESSAGE: &str = "denied by the e2e stub webhook";
    const METRIC: &str = "apiserver_admission_webhook_admission_duration_seconds";
    let env = TestEnv::new("webhook").await.expect("test environment");
    let server = StubWebhookServer::deny_all(MESSAGE)
        .await
        .expect("stub webhook server");
    let webhook = env
        .ns
        .register_webhook(
            &env.client,
            server.registration(
                WebhookKind::Validating,
                "/validate",
                vec![rule("", "v1", &["configmaps"], &["CREATE", "UPDATE"])],
            ),
        )
        .await
        .expect("register the webhook");

    let configmaps: Api<ConfigMap> = env.ns.api(&env.client);
    let probe = ConfigMap {
        metadata: ObjectMeta {
            name: Some("probe".into()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    webhook
        .wait_effective(WAIT, || async {
            configmaps
                .create(
                    &PostParams {
                        dry_run: true,
                        ..PostParams::default()
                    },
                    &probe,
                )
                .await
                .is_err_and(|e| e.to_string().contains(MESSAGE))
        })
        .await
        .expect("the webhook takes effect");

    let labels = [
        ("name", webhook.webhook_name.as_str()),
        ("type", WebhookKind::Validating.metrics_type()),
        ("operation", "CREATE"),
        ("rejected", "true"),
    ];
    let before = Metrics::fetch(&env.client)
        .await
        .expect("metrics")
        .histogram(METRIC, &labels)
        .map_or(0.0, |h| h.count);
    let calls_before = server.calls();

    let manifest = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: denied\n  namespace: {}\ndata:\n  a: b\n",
        env.ns.name()
    );
    let out = env.cp.kubectl_apply(&manifest).await.expect("run kubectl");
    assert!(!out.success(), "kubectl apply must fail: {}", out.stdout);
    assert!(out.stderr.contains(MESSAGE), "{}", out.stderr);
    assert!(out.stderr.contains(&webhook.webhook_name), "{}", out.stderr);
    assert!(server.calls() > calls_before, "the stub was not called");

    let after = Metrics::fetch(&env.client)
        .await
        .expect("metrics")
        .histogram(METRIC, &labels)
        .expect("the webhook's latency histogram");
    assert!(
        after.count > before,
        "histogram count did not grow: {before} -> {after:?}"
    );
    assert!(after.sum > 0.0, "{after:?}");
    let inf = after.buckets.last().expect("buckets");
    assert!(inf.0.is_infinite() && inf.1 == after.count, "{after:?}");

    // Scoped by namespaceSelector: other namespaces are not affected.
    let other = TestNamespace::create(&env.client, "webhook-unaffected")
        .await
        .expect("second namespace");
    other
        .api::<ConfigMap>(&env.client)
        .create(&PostParams::default(), &probe)
        .await
        .expect("ConfigMaps elsewhere are not sent to the webhook");
}

#[tokio::test]
async fn named_accepts_exactly_the_configured_rndc_key_across_a_reload() {
    let key_a = generate_key("rndc-key", "hmac-sha256").expect("key A");
    let key_b = generate_key("rndc-key", "hmac-sha256").expect("key B");
    let started = Instant::now();
    let mut named = Named::start(&key_a).await.expect("start named with key A");
    eprintln!("named answered rndc after {:?}", started.elapsed());

    assert!(named.rndc_status_with(&key_a).await.expect("rndc with A"));
    assert!(!named.rndc_status_with(&key_b).await.expect("rndc with B"));

    named.swap_key(&key_b).expect("swap the key file to B");
    assert!(
        named.rndc_status_with(&key_a).await.expect("rndc with A"),
        "named must keep key A until it is reloaded"
    );
    named.reload().await.expect("SIGHUP reload");
    assert!(named.rndc_status_with(&key_b).await.expect("rndc with B"));
    assert!(!named.rndc_status_with(&key_a).await.expect("rndc with A"));
}
