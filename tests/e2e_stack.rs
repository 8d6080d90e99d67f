//! The whole stack on the real node, as users run it: the rndc-warden image
//! (`scripts/warden-image.sh`, assembled like the Dockerfile's final stage) imported into the
//! node, the chart installed with its default values (2 replicas in pods, the self-managed
//! certificate, leader election), the apiserver calling the pods through the chart's Service.
//!
//! The node runs inside a network namespace this test creates (`unshare --net`), so pods have
//! addresses of their own on a bridge there (`testkit::pod_network`): the apiserver calls a
//! Service at its endpoints (`--enable-aggregator-routing`, there is no kube-proxy) and the pods
//! reach the apiserver at the `kubernetes` Service's address. Nothing listens or dials outside
//! that namespace. Shown here:
//! - `helm install` → both pods Ready, the caBundle injected, the Lease held by one pod, the pods
//!   running as the chart's ServiceAccount, whose `kubectl auth can-i --list` equals
//!   docs/security.md;
//! - `kubectl apply` of every example goes through the pods with the denials, warnings and
//!   defaults `rndc-warden check` reports for it (and the pods count the calls);
//! - zero failed admissions in a `kubectl apply` loop while `helm upgrade` rolls the pods, while
//!   a pod is deleted, and while a node drain's evictions take them one by one (the PDB refuses
//!   the second eviction until the first pod's replacement is Ready);
//! - leader failover: the leader pod is deleted as 50 keys fall due; the other pod takes the
//!   Lease and every key is rotated exactly once, every Deployment rolled once.

mod rbac_support;
mod rotation_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use futures::{StreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use rndc_warden::api::ANNOTATION_ROTATED_AT;
use rndc_warden::policy::Algorithm;
use rndc_warden_testkit::bins::built_by_script;
use rndc_warden_testkit::node::{Node, NodeOptions};
use rndc_warden_testkit::pod_network::in_private_netns;
use rndc_warden_testkit::workload::pod_ready;
use rndc_warden_testkit::{CommandOutput, ControlPlane, ControlPlaneOptions, Metrics, poll_until};
use rotation_support::{
    back_date, bind9_deployment, count, create_instance, create_key_secret, instances_with_status,
    rndc_key, standalone,
};
use serde_json::Value;

const RELEASE: &str = "warden";
const RELEASE_NS: &str = "rndc-warden";
const FULLNAME: &str = "warden-rndc-warden";
const SELECTOR: &str = "app.kubernetes.io/instance=warden,app.kubernetes.io/name=rndc-warden";
/// Instances whose keys fall due while the leader is deleted.
const DUE_KEYS: usize = 50;
const POD_WAIT: Duration = Duration::from_secs(300);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The image directory `scripts/warden-image.sh` prints (`WARDEN_IMAGE_DIR`).
fn warden_image() -> PathBuf {
    built_by_script("scripts/warden-image.sh", "WARDEN_IMAGE_DIR")
        .unwrap_or_else(|error| panic!("the rndc-warden image is needed: {error}"))
}

fn elapsed(since: Instant) -> String {
    format!("{:.1} s", since.elapsed().as_secs_f64())
}

/// The output of a kubectl or helm run that must succeed.
fn succeeded(run: rndc_warden_testkit::Result<CommandOutput>) -> CommandOutput {
    let out = run.expect("the tool runs");
    assert!(
        out.success(),
        "{}:\n{}\n{}",
        out.command,
        out.stdout,
        out.stderr
    );
    out
}

async fn kubectl(cp: &ControlPlane, args: &[&str]) -> String {
    succeeded(cp.kubectl(args).await).stdout
}

async fn get_json(cp: &ControlPlane, args: &[&str]) -> Value {
    let mut full = vec!["get"];
    full.extend(args);
    full.extend(["-o", "json"]);
    serde_json::from_str(&kubectl(cp, &full).await).expect("kubectl prints JSON")
}

async fn helm(cp: &ControlPlane, args: &[&str]) {
    succeeded(cp.helm(args).await);
}

/// The chart's pods that are not being deleted.
async fn warden_pods(client: &Client) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NS);
    pods.list(&ListParams::default().labels(SELECTOR))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

async fn wait_ready_pods(client: &Client, n: usize, what: &str) -> Vec<Pod> {
    poll_until(what, POD_WAIT, Duration::from_millis(500), || {
        let client = client.clone();
        async move {
            let pods = warden_pods(&client).await;
            let ready = pods.iter().filter(|p| pod_ready(p)).count();
            Ok::<_, kube::Error>((pods.len() == n && ready == n).then_some(pods))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{what}: {e}"))
}

async fn lease_holder(client: &Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), RELEASE_NS);
    leases
        .get_opt(&format!("{FULLNAME}-rotator"))
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
}

/// `GET /metrics` of a pod, at its own address (port 8080, the chart's probe port).
async fn pod_metrics(pod: &Pod) -> Metrics {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("the pod has an address");
    let mut stream = tokio::net::TcpStream::connect((ip.as_str(), 8080))
        .await
        .expect("connect to the pod's probe port");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: pod\r\n\r\n")
        .await
        .expect("request");
    let mut body = String::new();
    stream.read_to_string(&mut body).await.expect("response");
    let text = body.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Metrics::parse(text).expect("Prometheus text")
}

async fn admissions_counted(client: &Client) -> f64 {
    let mut total = 0.0;
    for pod in warden_pods(client).await {
        total += pod_metrics(&pod)
            .await
            .sum("rndc_warden_admission_requests_total", &[]);
    }
    total
}

/// What `rndc-warden check --output json` (the same binary, offline) says of a file.
fn check_report(binary: &Path, file: &Path) -> Value {
    let out = std::process::Command::new(binary)
        .args(["check", "--output", "json"])
        .arg(file)
        .output()
        .expect("rndc-warden check runs");
    serde_json::from_slice(&out.stdout).expect("check prints JSON")
}

/// `kubectl apply -f <file>` of every example: each object is admitted or denied as `check`
/// reports, kubectl shows check's warnings and denials, and admitted objects carry the
/// defaults check's patch adds. Returns how many objects went through the webhooks.
async fn apply_examples(cp: &ControlPlane, binary: &Path) -> usize {
    let mut files: Vec<PathBuf> = ["good", "bad"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(root().join("examples").join(dir)).expect("examples"))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "json"))
        .collect();
    files.sort();
    let mut objects = 0;
    for file in &files {
        let report = check_report(binary, file);
        let checked = report["objects"].as_array().cloned().unwrap_or_default();
        objects += checked.len();
        let out = cp
            .kubectl(["apply", "-f", &file.display().to_string()])
            .await
            .expect("kubectl runs");
        let all_allowed = checked.iter().all(|o| o["allowed"] == true);
        assert_eq!(
            out.success(),
            all_allowed,
            "kubectl apply -f {}: admitted as check says\n{}\n{}",
            file.display(),
            out.stdout,
            out.stderr
        );
        for object in &checked {
            let label = format!("{} {}", object["kind"], object["name"]);
            for text in object["warnings"].as_array().into_iter().flatten() {
                let text = text.as_str().unwrap_or_default();
                assert!(
                    out.stderr.contains(&format!("Warning: {text}")),
                    "{}: kubectl shows the warning {text:?} for {label}:\n{}",
                    file.display(),
                    out.stderr
                );
            }
            for text in object["denials"].as_array().into_iter().flatten() {
                // The apiserver merges a Secret's `stringData` into `data` before admission, so
                // the webhook names `data` where check, reading the file, names `stringData`.
                let text = text.as_str().unwrap_or_default();
                let text = if object["kind"] == "Secret" {
                    text.replace("stringData", "data")
                } else {
                    text.to_owned()
                };
                let text = text.as_str();
                assert!(
                    out.stderr.contains(text),
                    "{}: kubectl shows the denial {text:?} for {label}:\n{}",
                    file.display(),
                    out.stderr
                );
            }
            if object["allowed"] == true {
                assert_defaults_applied(cp, object).await;
            }
        }
        println!(
            "  {}: {} object(s), kubectl exit {}",
            file.strip_prefix(root()).unwrap_or(file).display(),
            checked.len(),
            if out.success() { 0 } else { 1 }
        );
    }
    assert!(objects >= files.len(), "every example holds an object");
    objects
}

/// Every value check's JSON patch adds is in the stored object. Only paths are reported, never
/// values (a Secret's object holds key material); timestamps the webhook stamps at admission
/// time are checked for presence.
async fn assert_defaults_applied(cp: &ControlPlane, object: &Value) {
    let patch = object["patch"].as_array().cloned().unwrap_or_default();
    if patch.is_empty() {
        return;
    }
    let kind = object["kind"].as_str().unwrap_or_default().to_lowercase();
    let name = object["name"].as_str().unwrap_or_default();
    let mut args = vec![kind.as_str(), name];
    let namespace = object["namespace"].as_str().map(str::to_owned);
    if let Some(ns) = &namespace {
        args.extend(["-n", ns.as_str()]);
    }
    let stored = get_json(cp, &args).await;
    let mut missing = Vec::new();
    for op in &patch {
        if op["op"] != "add" && op["op"] != "replace" {
            continue;
        }
        let path = op["path"].as_str().unwrap_or_default();
        match stored.pointer(path) {
            Some(value) => not_covered(value, &op["value"], path, &mut missing),
            None => missing.push(path.to_owned()),
        }
    }
    assert!(
        missing.is_empty(),
        "{kind} {name}: the webhook's defaults are not stored at {missing:?}"
    );
}

/// The paths under `path` where `stored` lacks or differs from `expected` (an object may hold
/// more; an admission timestamp only has to be there).
fn not_covered(stored: &Value, expected: &Value, path: &str, out: &mut Vec<String>) {
    match expected {
        Value::Object(fields) => {
            for (key, value) in fields {
                let child = format!("{path}/{}", key.replace('~', "~0").replace('/', "~1"));
                match stored.get(key) {
                    Some(stored) => not_covered(stored, value, &child, out),
                    None => out.push(child),
                }
            }
        }
        _ if path.ends_with("-at") => {}
        _ if stored != expected => out.push(path.to_owned()),
        _ => {}
    }
}

/// What a failed wait needs: the chart's pods, the Lease, the namespace's objects (names only)
/// and the tail of each rndc-warden pod's log (which never holds key material).
async fn diagnostics(cp: &ControlPlane, ns: &str) {
    for args in [
        vec!["get", "pods", "-A", "-o", "wide"],
        vec!["get", "lease", "-n", RELEASE_NS],
        vec!["get", "secrets,deployments,bind9instances", "-n", ns],
    ] {
        if let Ok(out) = cp.kubectl(&args).await {
            println!("$ kubectl {}\n{}{}", args.join(" "), out.stdout, out.stderr);
        }
    }
    if let Ok(out) = cp
        .kubectl([
            "logs",
            "-n",
            RELEASE_NS,
            "-l",
            SELECTOR,
            "--tail=40",
            "--prefix",
        ])
        .await
    {
        println!("$ kubectl logs\n{}{}", out.stdout, out.stderr);
    }
}

/// How instance `name`'s key and Deployment got where they are: its ReplicaSets' templates, its
/// Events, its Secret's annotations, every audited write of them (metadata only, with the pod
/// that made it) and what the rndc-warden pods logged about it. Never a key.
async fn rollout_diagnostics(cp: &ControlPlane, ns: &str, name: &str) {
    for args in [
        vec![
            "get",
            "replicasets",
            "-n",
            ns,
            "-l",
            &format!("instance={name}"),
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.metadata.annotations.deployment\\.kubernetes\\.io/revision} {.spec.template.metadata.annotations}{\"\\n\"}{end}",
        ],
        vec![
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            &format!("involvedObject.name={name}"),
            "-o",
            "wide",
        ],
        vec![
            "get",
            "secret",
            &format!("{name}-rndc-key"),
            "-n",
            ns,
            "-o",
            "jsonpath={.metadata.annotations}",
        ],
    ] {
        if let Ok(out) = cp.kubectl(&args).await {
            println!("$ kubectl {}\n{}{}", args.join(" "), out.stdout, out.stderr);
        }
    }
    let audit = std::fs::read_to_string(cp.audit_log_path()).unwrap_or_default();
    for line in audit.lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let object = &event["objectRef"];
        if object["namespace"] == ns && object["name"].as_str().is_some_and(|n| n.starts_with(name))
        {
            println!(
                "audit: {} {} {}/{} {} by {} ({})",
                event["requestReceivedTimestamp"],
                event["verb"],
                object["resource"],
                object["subresource"],
                event["responseStatus"]["code"],
                event["user"]["username"],
                event["user"]["extra"]["authentication.kubernetes.io/pod-name"]
            );
        }
    }
    if let Ok(out) = cp
        .kubectl([
            "logs",
            "-n",
            RELEASE_NS,
            "-l",
            SELECTOR,
            "--prefix",
            "--tail=-1",
        ])
        .await
    {
        for line in out.stdout.lines().filter(|l| l.contains(name)) {
            println!("{line}");
        }
    }
}

/// The Eviction API for `pod` (what `kubectl drain` calls), through `kubectl create --raw`: the
/// apiserver's 429 from a PodDisruptionBudget comes back as it is (kube's client would retry it).
async fn evict(cp: &ControlPlane, pod: &str) -> CommandOutput {
    let eviction = serde_json::json!({
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": { "name": pod, "namespace": RELEASE_NS },
    })
    .to_string();
    cp.kubectl_as(
        cp.kubeconfig_path(),
        [
            "create",
            "--raw",
            &format!("/api/v1/namespaces/{RELEASE_NS}/pods/{pod}/eviction"),
            "-f",
            "-",
        ],
        Some(eviction.as_bytes()),
    )
    .await
    .expect("kubectl runs")
}

/// A loop of `kubectl apply --dry-run=server` of a Bind9Instance (mutating and validating
/// webhooks both called) until `stop`; counts attempts and failures.
struct AdmissionLoop {
    attempts: Arc<AtomicUsize>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl AdmissionLoop {
    fn start(cp: Arc<ControlPlane>, namespace: &str) -> Self {
        let attempts = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, f, s, ns) = (
            attempts.clone(),
            failures.clone(),
            stop.clone(),
            namespace.to_owned(),
        );
        let task = tokio::spawn(async move {
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                let manifest = format!(
                    "apiVersion: bindy.firestoned.io/v1beta1\nkind: Bind9Instance\nmetadata:\n  name: loop-{i}\n  namespace: {ns}\nspec:\n  role: primary\n  rndcKey:\n    autoRotate: true\n    rotateAfter: 720h\n"
                );
                let out = cp
                    .kubectl_as(
                        cp.kubeconfig_path(),
                        ["apply", "--dry-run=server", "-f", "-"],
                        Some(manifest.as_bytes()),
                    )
                    .await;
                a.fetch_add(1, Ordering::Relaxed);
                match out {
                    Ok(out) if out.success() => {}
                    Ok(out) => f
                        .lock()
                        .expect("failures")
                        .push(format!("apply {i}: {}", out.stderr.trim())),
                    Err(e) => f.lock().expect("failures").push(format!("apply {i}: {e}")),
                }
            }
        });
        Self {
            attempts,
            failures,
            stop,
            task,
        }
    }

    /// Stops the loop; asserts that it ran at least `min_attempts` times during `what` and that
    /// no admission failed.
    async fn assert_none_failed(self, what: &str, min_attempts: usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the loop ends");
        let failures = self.failures.lock().expect("failures").clone();
        let attempts = self.attempts.load(Ordering::Relaxed);
        println!("{what}: {attempts} applies, {} failed", failures.len());
        assert!(
            attempts >= min_attempts,
            "the loop ran through {what} ({attempts} applies)"
        );
        assert!(
            failures.is_empty(),
            "admissions failed during {what}: {failures:#?}"
        );
    }
}

/// A Deployment named like the instance with no replicas: a rollout shows in its pod template.
async fn create_idle_deployment(client: &Client, ns: &str, name: &str) {
    let mut deployment = bind9_deployment(name);
    deployment.spec.replicas = Some(0);
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create deployment");
}

/// (rotation count, rollout marker set) of each due instance.
async fn rotation_state(client: &Client, ns: &str) -> BTreeMap<String, (u32, bool)> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let counts: BTreeMap<String, u32> = secrets
        .list(&ListParams::default())
        .await
        .expect("secrets")
        .items
        .iter()
        .filter_map(|s| {
            let name = s.metadata.name.as_deref()?.strip_suffix("-rndc-key")?;
            Some((name.to_owned(), count(s)))
        })
        .collect();
    deployments
        .list(&ListParams::default())
        .await
        .expect("deployments")
        .items
        .iter()
        .filter_map(|d| {
            let name = d.metadata.name.clone()?;
            let count = counts.get(&name).copied().unwrap_or(0);
            Some((name, (count, template_marker(d).is_some())))
        })
        .collect()
}

/// The rollout marker in a Deployment's pod template.
fn template_marker(deployment: &Deployment) -> Option<String> {
    deployment
        .spec
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(ANNOTATION_ROTATED_AT)
        .cloned()
}

/// Every change of each Deployment's pod-template marker in a namespace, from a watch (which
/// sees every revision; a generation count would also count rndc-warden's metadata-only
/// records, and the Deployment controller may fold quick template changes into one
/// ReplicaSet).
struct RolloutWatch {
    rollouts: Arc<std::sync::Mutex<BTreeMap<String, Vec<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RolloutWatch {
    async fn start(client: &Client, ns: &str) -> Self {
        let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
        let list = api.list(&ListParams::default()).await.expect("deployments");
        let mut markers: BTreeMap<String, Option<String>> = list
            .items
            .iter()
            .filter_map(|d| Some((d.metadata.name.clone()?, template_marker(d))))
            .collect();
        let version = list.metadata.resource_version.unwrap_or_default();
        let rollouts = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let seen = rollouts.clone();
        let task = tokio::spawn(async move {
            let mut stream = api
                .watch(&kube::api::WatchParams::default().timeout(290), &version)
                .await
                .expect("watch deployments")
                .boxed();
            while let Some(Ok(event)) = stream.next().await {
                let kube::api::WatchEvent::Modified(d) = event else {
                    continue;
                };
                let Some(name) = d.metadata.name.clone() else {
                    continue;
                };
                let marker = template_marker(&d);
                let before = markers.insert(name.clone(), marker.clone());
                if let Some(marker) = marker
                    && before.flatten().as_ref() != Some(&marker)
                {
                    seen.lock()
                        .expect("rollouts")
                        .entry(name)
                        .or_insert_with(Vec::new)
                        .push(marker);
                }
            }
        });
        Self { rollouts, task }
    }

    /// The markers each Deployment was rolled onto, in order.
    fn finish(self) -> BTreeMap<String, Vec<String>> {
        self.task.abort();
        self.rollouts.lock().expect("rollouts").clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_runs_in_pods_behind_its_service() {
    if !in_private_netns("the_chart_runs_in_pods_behind_its_service") {
        return;
    }
    let started = Instant::now();
    let image = warden_image();
    let image_name = std::fs::read_to_string(image.join("image.name")).expect("image.name");
    let cp = Arc::new(
        ControlPlane::start_with(ControlPlaneOptions {
            node: true,
            pod_network: true,
            ..ControlPlaneOptions::default()
        })
        .await
        .expect("control plane"),
    );
    let node = Node::start(
        &cp,
        NodeOptions {
            pod_network: true,
            ..NodeOptions::default()
        },
    )
    .await
    .expect("a real node with a pod network (docs/development.md, \"The node\")");
    node.import_image(&image.join("image.tar"), image_name.trim())
        .await
        .expect("import the rndc-warden image");
    let client = cp.client().expect("client");
    println!("control plane, node and image: {}", elapsed(started));

    // helm install with the chart's default values: the image is already on the node under
    // the chart's default name (pullPolicy IfNotPresent).
    let chart = root().join("charts/rndc-warden");
    let install = Instant::now();
    helm(
        &cp,
        &[
            "install",
            RELEASE,
            &chart.display().to_string(),
            "--namespace",
            RELEASE_NS,
            "--create-namespace",
        ],
    )
    .await;
    let pods = wait_ready_pods(&client, 2, "both rndc-warden pods Ready").await;
    println!("helm install → 2 pods Ready: {}", elapsed(install));
    for pod in &pods {
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some(FULLNAME),
            "the pods run as the chart's ServiceAccount"
        );
        assert!(
            spec.host_network != Some(true),
            "the pods have their own addresses"
        );
    }
    for kind in [
        "mutatingwebhookconfiguration",
        "validatingwebhookconfiguration",
    ] {
        let suffix = if kind.starts_with("mutating") {
            "mutating"
        } else {
            "validating"
        };
        let config = get_json(&cp, &[kind, &format!("{FULLNAME}-{suffix}")]).await;
        for hook in config["webhooks"].as_array().expect("webhooks") {
            let client_config = &hook["clientConfig"];
            assert!(client_config["url"].is_null(), "{kind}: no webhook.url");
            assert_eq!(client_config["service"]["name"], FULLNAME, "{kind}");
            assert_eq!(client_config["service"]["namespace"], RELEASE_NS, "{kind}");
            assert!(
                !client_config["caBundle"]
                    .as_str()
                    .unwrap_or_default()
                    .is_empty(),
                "{kind}: the self-managed certificate's CA is injected"
            );
        }
    }
    let names: Vec<String> = pods.iter().map(pod_name).collect();
    let holder = poll_until(
        "the Lease held by a pod",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let (client, names) = (client.clone(), names.clone());
            async move {
                Ok::<_, kube::Error>(lease_holder(&client).await.filter(|h| names.contains(h)))
            }
        },
    )
    .await
    .expect("the rotator's Lease");
    println!("Lease {FULLNAME}-rotator held by {holder}");

    // RBAC: the chart's ServiceAccount may do what docs/security.md says, nothing more.
    kubectl(&cp, &["create", "namespace", "dns-system"]).await;
    kubectl(&cp, &["create", "namespace", "bindy-system"]).await;
    kubectl(
        &cp,
        &["create", "serviceaccount", "nobody", "-n", RELEASE_NS],
    )
    .await;
    rbac_support::assert_can_i_matches_docs(
        &cp,
        RELEASE_NS,
        &format!("system:serviceaccount:{RELEASE_NS}:{FULLNAME}"),
        FULLNAME,
        &["rotation.enabled", "certificates.mode=self-managed"],
        "dns-system",
    )
    .await;

    // The examples, through the pods.
    let before = admissions_counted(&client).await;
    let objects = apply_examples(&cp, &image.join("rndc-warden")).await;
    let after = admissions_counted(&client).await;
    println!(
        "examples: {objects} objects applied, {} admission reviews counted by the pods",
        after - before
    );
    assert!(
        after - before >= objects as f64,
        "every example object was reviewed by the pods ({before} → {after} for {objects})"
    );

    // helm upgrade rolls both pods while kubectl applies in a loop: no admission fails.
    let upgrade = Instant::now();
    let admissions = AdmissionLoop::start(cp.clone(), "dns-system");
    tokio::time::sleep(Duration::from_secs(3)).await;
    helm(
        &cp,
        &[
            "upgrade",
            RELEASE,
            &chart.display().to_string(),
            "--namespace",
            RELEASE_NS,
            "--reuse-values",
            "--set",
            "podAnnotations.rolled=upgrade",
        ],
    )
    .await;
    kubectl(
        &cp,
        &[
            "rollout",
            "status",
            &format!("deployment/{FULLNAME}"),
            "-n",
            RELEASE_NS,
            "--timeout=300s",
        ],
    )
    .await;
    let rolled = wait_ready_pods(&client, 2, "2 upgraded pods Ready").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("helm upgrade: pods rolled in {}", elapsed(upgrade));
    assert!(
        rolled.iter().all(|p| !names.contains(&pod_name(p))),
        "helm upgrade replaced both pods"
    );
    admissions.assert_none_failed("helm upgrade", 10).await;

    // A pod deleted (graceful drain) while the loop runs: no admission fails.
    let admissions = AdmissionLoop::start(cp.clone(), "dns-system");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let victim = pod_name(&rolled[0]);
    kubectl(
        &cp,
        &["delete", "pod", &victim, "-n", RELEASE_NS, "--wait=true"],
    )
    .await;
    let replaced = wait_ready_pods(&client, 2, "2 pods Ready after the delete").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    admissions.assert_none_failed("a pod delete", 5).await;

    // A node drain's evictions: the PodDisruptionBudget (minAvailable 1) refuses the second
    // eviction until the first pod's replacement is Ready; no admission fails meanwhile.
    let admissions = AdmissionLoop::start(cp.clone(), "dns-system");
    let (first, second) = (pod_name(&replaced[0]), pod_name(&replaced[1]));
    let out = evict(&cp, &first).await;
    assert!(
        out.success(),
        "the first eviction is allowed: {}",
        out.stderr
    );
    let out = evict(&cp, &second).await;
    assert!(
        !out.success() && out.stderr.contains("disruption budget"),
        "the PDB refuses the second eviction while the first pod's replacement is not Ready:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    println!("second eviction refused: {}", out.stderr.trim());
    wait_ready_pods(&client, 2, "the evicted pod's replacement Ready").await;
    poll_until(
        "the second eviction, once the PDB allows it",
        POD_WAIT,
        Duration::from_millis(500),
        || {
            let (cp, second) = (cp.clone(), second.clone());
            async move {
                let out = evict(&cp, &second).await;
                if out.success() {
                    Ok(Some(()))
                } else if out.stderr.contains("disruption budget") {
                    Ok(None)
                } else {
                    Err(out.stderr)
                }
            }
        },
    )
    .await
    .expect("the second eviction");
    let replaced = wait_ready_pods(&client, 2, "2 pods Ready after the drain").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    admissions.assert_none_failed("the evictions", 5).await;

    // Leader failover while keys fall due.
    let ns = "failover";
    kubectl(&cp, &["create", "namespace", ns]).await;
    let due: Vec<String> = (0..DUE_KEYS).map(|i| format!("due-{i:02}")).collect();
    // The key Secrets as the Bindy operator creates them (the chart's default leaves creating
    // them to it, rotation.provision=false): rndc-warden takes them over.
    stream::iter(due.clone())
        .for_each_concurrent(8, |name| {
            let client = client.clone();
            async move {
                create_idle_deployment(&client, ns, &name).await;
                create_key_secret(
                    &client,
                    ns,
                    &format!("{name}-rndc-key"),
                    Algorithm::HmacSha256,
                    Utc::now(),
                    TimeDelta::hours(24),
                )
                .await;
                create_instance(
                    &client,
                    ns,
                    &name,
                    standalone(Some(rndc_key(true, "24h", "hmac-sha256"))),
                )
                .await;
            }
        })
        .await;
    let taken_over = poll_until(
        "every key taken over (status written)",
        Duration::from_secs(120),
        Duration::from_millis(500),
        || {
            let client = client.clone();
            async move {
                let done = instances_with_status(&client, ns).await?;
                Ok::<_, kube::Error>((done == DUE_KEYS).then_some(()))
            }
        },
    )
    .await;
    if let Err(e) = taken_over {
        diagnostics(&cp, ns).await;
        panic!("taken over: {e}");
    }
    let leader = lease_holder(&client).await.expect("a leader");
    assert!(
        replaced.iter().any(|p| pod_name(p) == leader),
        "the Lease is held by a live pod ({leader})"
    );
    // The leader dies (SIGKILL, no chance to release the Lease) as every key falls due: what it
    // rotated before it died must not be rotated again by the pod that takes over.
    let past = Utc::now() - TimeDelta::hours(25);
    let rollout_watch = RolloutWatch::start(&client, ns).await;
    let failover = Instant::now();
    kubectl(
        &cp,
        &[
            "delete",
            "pod",
            &leader,
            "-n",
            RELEASE_NS,
            "--grace-period=0",
            "--force",
            "--wait=false",
        ],
    )
    .await;
    stream::iter(due.clone())
        .for_each_concurrent(16, |name| {
            let client = client.clone();
            async move { back_date(&client, ns, &format!("{name}-rndc-key"), past).await }
        })
        .await;
    let rotated = |state: &BTreeMap<String, (u32, bool)>| {
        state
            .values()
            .filter(|(count, marked)| *count >= 1 && *marked)
            .count()
    };
    let new_leader = poll_until(
        "another pod takes the Lease",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || {
            let (client, leader) = (client.clone(), leader.clone());
            async move {
                Ok::<_, kube::Error>(lease_holder(&client).await.filter(|h| *h != leader))
            }
        },
    )
    .await
    .expect("a new leader");
    let at_handover = rotated(&rotation_state(&client, ns).await);
    let handover = elapsed(failover);
    poll_until(
        "every due key rotated and rolled",
        POD_WAIT,
        Duration::from_millis(500),
        || {
            let client = client.clone();
            async move {
                let done = rotated(&rotation_state(&client, ns).await);
                Ok::<_, kube::Error>((done == DUE_KEYS).then_some(()))
            }
        },
    )
    .await
    .expect("rotated after the failover");
    println!(
        "failover: leader {leader} killed; {new_leader} took the Lease after {handover} with \
         {at_handover} of {DUE_KEYS} keys rotated; all rotated and rolled after {}",
        elapsed(failover)
    );
    // Settle: a second rotation or rollout would show within a few resyncs.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let state = rotation_state(&client, ns).await;
    let rollouts = rollout_watch.finish();
    let wrong: Vec<_> = state
        .iter()
        .map(|(name, (count, _))| {
            let rolled = rollouts.get(name).map_or(0, Vec::len);
            (name.clone(), *count, rolled)
        })
        .filter(|(_, count, rolled)| *count != 1 || *rolled != 1)
        .collect();
    for (name, _, _) in &wrong {
        rollout_diagnostics(&cp, ns, name).await;
    }
    assert!(
        wrong.is_empty(),
        "every key rotated exactly once and every Deployment rolled once \
         (instance, rotations, rollouts): {wrong:?}"
    );
    wait_ready_pods(&client, 2, "2 pods Ready after the failover").await;
    println!("whole stack: {}", elapsed(started));
    drop(node);
}
