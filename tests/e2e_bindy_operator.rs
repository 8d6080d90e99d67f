//! Issue 12 against the running Bindy operator (0.6.0, `testkit::bindy`): each defect as a named
//! regression test, a batch of 50 instances rotating together, a restart of each operator during
//! a rotation, and a quiet period of one Bindy requeue (300 s) plus one rndc-warden resync with no
//! write by rndc-warden. rndc-warden is installed by the chart with its default values
//! (`bindy_support::SideBySide`); a test that needs another value says which and why.
//!
//! Counting: `Record` watches the namespace's Secrets (key fingerprints and uids, never key
//! material) and Deployments (pod templates); the apiserver's audit log (testkit `audit`) says
//! who wrote what. The operator watches every namespace, so the tests take turns
//! (`OperatorSlot`), except the quiet period, which has a control plane of its own and runs
//! beside them.

mod bindy_support;
mod rotation_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bindy_support::record::{KeyRevision, Record};
use bindy_support::*;
use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use rndc_warden::api::{ANNOTATION_CREATED_AT, ANNOTATION_ROTATE_AT, LABEL_RNDC_KEY};
use rndc_warden::policy::PolicyConfig;
use rndc_warden_testkit::audit::AuditEvent;
use rndc_warden_testkit::bindy::BindyCrds;
use serde_json::json;

/// How long a condition may take to come true (the operators act within a second or two; the
/// machine is shared).
const CONVERGE: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// Helpers

/// A `Bind9Instance` as a user writes it for Bindy's CRDs.
fn instance_yaml(ns: &str, name: &str, cluster_ref: &str, rndc_key: Option<&str>) -> String {
    let key = rndc_key
        .map(|k| format!("  rndcKey:\n{}", indent(k, 4)))
        .unwrap_or_default();
    format!(
        "apiVersion: bindy.firestoned.io/v1beta1\nkind: Bind9Instance\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  clusterRef: \"{cluster_ref}\"\n  role: primary\n  replicas: 1\n{key}"
    )
}

/// An `rndcKey` block.
fn key_block(auto_rotate: bool, algorithm: &str) -> String {
    format!("autoRotate: {auto_rotate}\nrotateAfter: \"720h\"\nalgorithm: {algorithm}\n")
}

fn indent(text: &str, by: usize) -> String {
    text.lines()
        .map(|l| format!("{}{l}\n", " ".repeat(by)))
        .collect()
}

impl SideBySide {
    /// `kubectl apply` as admin (through both webhooks); panics with kubectl's answer.
    async fn apply(&self, yaml: &str) {
        let out = self.env.cp.kubectl_apply(yaml).await.expect("kubectl runs");
        assert!(
            out.success(),
            "kubectl apply failed:\n{}{}\n{}",
            out.stdout,
            out.stderr,
            self.chart.warden.logs_tail(3000)
        );
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client().clone(), self.ns())
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client().clone(), self.ns())
    }

    fn instances(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client().clone(),
            self.ns(),
            &self.kind("Bind9Instance").resource,
        )
    }

    /// Polls until `check` of Secret `name` (None: absent) gives `Some`, failing with both
    /// operators' log tails after [`CONVERGE`].
    async fn wait_secret<T>(
        &mut self,
        name: &str,
        what: &str,
        check: impl Fn(Option<&Secret>) -> Option<T>,
    ) -> T {
        let started = Instant::now();
        loop {
            self.assert_operator_running();
            let secret = self.secrets().get_opt(name).await.expect("get secret");
            if let Some(found) = check(secret.as_ref()) {
                return found;
            }
            assert!(
                started.elapsed() < CONVERGE,
                "Secret {name}: {what} did not happen within {CONVERGE:?}; now {:?}\nbindy:\n{}\nrndc-warden:\n{}",
                secret.as_ref().map(describe_secret),
                self.operator.log_tail(3000),
                self.chart.warden.logs_tail(3000)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until Bindy made `<instance>-rndc-key` and rndc-warden took it over (its label),
    /// with a key of `algorithm` at least as long as the hash output.
    async fn wait_guarded(&mut self, instance: &str, algorithm: &str) -> Secret {
        let bytes = hash_len(algorithm);
        self.wait_secret(
            &format!("{instance}-rndc-key"),
            &format!("guarded by rndc-warden with a {bytes}-byte {algorithm} key"),
            |s| {
                let s = s?;
                let shape = describe_secret(s);
                (shape.labels.get(LABEL_RNDC_KEY).map(String::as_str) == Some("true")
                    && shape.algorithm == algorithm
                    && shape.key_bytes >= bytes)
                    .then(|| s.clone())
            },
        )
        .await
    }

    /// Waits until Deployment `name` exists.
    async fn wait_deployment(&mut self, name: &str) -> Deployment {
        let started = Instant::now();
        loop {
            self.assert_operator_running();
            if let Some(d) = self.deployments().get_opt(name).await.expect("get") {
                return d;
            }
            assert!(
                started.elapsed() < CONVERGE,
                "Deployment {name} never came\n{}",
                self.operator.log_tail(3000)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The audited writes in this test's namespace by `user` since `since` (RFC 3339 text
    /// compares in time order: both are UTC with microseconds).
    fn writes_by(&self, user: &str, since: &str) -> Vec<AuditEvent> {
        self.env
            .cp
            .audit_events()
            .into_iter()
            .filter(|e| e.user == user && e.namespace == self.ns() && e.received.as_str() >= since)
            .collect()
    }

    fn warden_user(&self) -> String {
        self.chart.identity.username.clone()
    }

    /// rndc-warden's audit rows of this namespace, as `audit` prints them.
    async fn audit_rows(&self) -> BTreeMap<String, rndc_warden::audit::Row> {
        rndc_warden::audit::collect(
            self.client(),
            Some(self.ns()),
            &PolicyConfig::default(),
            "{instance}",
        )
        .await
        .expect("audit")
        .into_iter()
        .map(|r| (r.instance.clone(), r))
        .collect()
    }

    /// Sets `rndc-created-at` (and `rndc-rotate-at` when given) of Secret `name` as a user
    /// back-dating a key does.
    async fn back_date(&self, name: &str, created: DateTime<Utc>, rotate: Option<DateTime<Utc>>) {
        let mut annotations = json!({ ANNOTATION_CREATED_AT: created.to_rfc3339() });
        if let Some(rotate) = rotate {
            annotations[ANNOTATION_ROTATE_AT] = json!(rotate.to_rfc3339());
        }
        self.secrets()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
            )
            .await
            .expect("back-date");
    }

    /// The gauge `name` for `instance` in rndc-warden's metrics (None: no series).
    async fn gauge(&self, name: &str, instance: &str) -> Option<f64> {
        let metrics = self.chart.metrics().await;
        metrics
            .samples()
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.get("instance").map(String::as_str) == Some(instance)
                    && s.labels.get("namespace").map(String::as_str) == Some(self.ns())
            })
            .map(|s| s.value)
    }
}

/// The hash output length of an HMAC algorithm (the key length rndc-warden's policy wants).
fn hash_len(algorithm: &str) -> usize {
    match algorithm {
        "hmac-sha384" => 48,
        "hmac-sha512" => 64,
        "hmac-sha224" => 28,
        _ => 32,
    }
}

/// Now as the audit log writes it.
fn audit_now() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn count_of(secret: &Secret) -> u32 {
    secret
        .annotations()
        .get("bindy.firestoned.io/rndc-rotation-count")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Key changes in `revisions` (a new fingerprint; a new uid alone is not a key change).
fn key_changes(revisions: &[KeyRevision]) -> usize {
    revisions
        .windows(2)
        .filter(|w| w[0].fingerprint != w[1].fingerprint)
        .count()
}

/// Holds for `settle` and returns; the quiet time after a change in which a second rotation or
/// rollout would show (both operators react to a change within about a second).
async fn settle(t: &mut SideBySide, settle: Duration) {
    let started = Instant::now();
    while started.elapsed() < settle {
        t.assert_operator_running();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Defects 1, 6, 9, 10: the default install guards the Secret the pods mount, creates none.

/// Defect 10: a plain `helm install` (the chart's defaults, `crds.install` included) on a
/// cluster that has Bindy's CRDs works. Defect 1: rndc-warden guards `<instance>-rndc-key`, the
/// Secret Bindy's Deployment mounts. Defect 6: it creates no Secret (provision is off by
/// default), also while Bindy deletes the instance, and leaves none behind. Defect 9: `audit`
/// finds the Secret the pods mount, says OK, and the due-time gauge shows the real due time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defects_1_6_9_10_default_install_guards_the_mounted_secret_and_creates_none() {
    // `crds.install: true` is the chart's default: the plain install of the README.
    let mut t = SideBySide::start_with(
        "bindy-op-default",
        BindyCrds::Upstream,
        "crds:\n  install: true\n",
    )
    .await;
    let since = audit_now();
    let ns = t.ns().to_owned();
    t.apply(&instance_yaml(
        &ns,
        "dns-a",
        "",
        Some(&key_block(true, "hmac-sha256")),
    ))
    .await;
    let deployment = t.wait_deployment("dns-a").await;
    let mounts = mounted(&deployment);
    assert_eq!(mounts.secrets, vec!["dns-a-rndc-key".to_owned()]);
    let secret = t.wait_guarded("dns-a", "hmac-sha256").await;
    let owners: Vec<_> = secret
        .owner_references()
        .iter()
        .map(|o| o.kind.clone())
        .collect();
    assert_eq!(
        owners,
        vec!["Bind9Instance"],
        "Bindy's Secret, Bindy's owner"
    );

    // Only the mounted Secret exists: no `<instance>-rndc`, nothing created by rndc-warden.
    let names: Vec<String> = t
        .secrets()
        .list(&ListParams::default())
        .await
        .expect("secrets")
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    assert_eq!(names, vec!["dns-a-rndc-key".to_owned()]);

    // Defect 9: the CLI finds the same Secret and says OK; the gauge shows ~720 h.
    let rows = t.audit_rows().await;
    let row = &rows["dns-a"];
    assert_eq!(row.secret, "dns-a-rndc-key", "{row:?}");
    assert_eq!(row.verdict, "OK", "{row:?}");
    let until = t
        .gauge("rndc_warden_rotation_seconds_until", "dns-a")
        .await
        .expect("due-time gauge for dns-a");
    assert!(
        (719.0 * 3600.0..=720.0 * 3600.0).contains(&until),
        "due in about 720h: {until}"
    );

    // Bindy deletes the instance: its finalizer goes, the Secret goes, rndc-warden re-creates
    // nothing.
    t.instances()
        .delete("dns-a", &Default::default())
        .await
        .expect("delete instance");
    t.wait_secret("dns-a-rndc-key", "deleted by Bindy", |s| {
        s.is_none().then_some(())
    })
    .await;
    let started = Instant::now();
    while t.instances().get_opt("dns-a").await.expect("get").is_some() {
        assert!(
            started.elapsed() < CONVERGE,
            "the instance stays Terminating"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    settle(&mut t, Duration::from_secs(5)).await;
    assert!(
        t.secrets()
            .get_opt("dns-a-rndc-key")
            .await
            .expect("get")
            .is_none(),
        "no orphan"
    );
    let creates: Vec<_> = t
        .writes_by(&t.warden_user(), &since)
        .into_iter()
        .filter(|e| e.resource == "secrets" && e.verb == "create")
        .collect();
    assert!(
        creates.is_empty(),
        "rndc-warden created Secrets: {creates:?}"
    );
    let all = t.env.cp.audit_events();
    assert!(
        all.iter()
            .any(|e| e.namespace == ns && e.resource == "secrets"),
        "the audit log sees this namespace's Secret writes"
    );
}

// ---------------------------------------------------------------------------------------------
// Defects 3, 7, 8: one trigger, one rotation, one rollout; status in Bindy's format.

/// Defect 3: a new `autoRotate: true` key Bindy created is not rotated again. Defect 7: one
/// manual trigger (back-dating `rndc-created-at`) gives one key change and one rollout, with the
/// real operator running. Defect 8: the instance status says what the Secret says, in Bindy's
/// field, and nobody rewrites it in a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defects_3_7_8_one_trigger_one_rotation_one_rollout_with_the_operator() {
    let mut t = SideBySide::start("bindy-op-trigger", BindyCrds::Upstream).await;
    let ns = t.ns().to_owned();
    let record = Record::start(t.client(), &ns).await;
    t.apply(&instance_yaml(
        &ns,
        "dns-t",
        "",
        Some(&key_block(true, "hmac-sha256")),
    ))
    .await;
    t.wait_deployment("dns-t").await;
    let guarded = t.wait_guarded("dns-t", "hmac-sha256").await;
    settle(&mut t, Duration::from_secs(5)).await;
    // Defect 3: the key Bindy made is the key (no second key), count 0, no rollout.
    let revisions = record.revisions("dns-t-rndc-key");
    assert_eq!(key_changes(&revisions), 0, "{revisions:?}");
    assert_eq!(count_of(&guarded), 0);
    assert_eq!(
        record.templates("dns-t"),
        1,
        "{:?}",
        record.template_annotations("dns-t")
    );

    // Defect 7: back-date created-at by 800 h: due for rndc-warden (720 h), one rotation.
    t.back_date("dns-t-rndc-key", Utc::now() - TimeDelta::hours(800), None)
        .await;
    let rotated = t
        .wait_secret("dns-t-rndc-key", "rotated once", |s| {
            let s = s?;
            (count_of(s) == 1).then(|| s.clone())
        })
        .await;
    settle(&mut t, Duration::from_secs(8)).await;
    let revisions = record.revisions("dns-t-rndc-key");
    assert_eq!(key_changes(&revisions), 1, "one key change: {revisions:?}");
    assert!(
        revisions.iter().all(|r| r.uid == revisions[0].uid),
        "never re-created: {revisions:?}"
    );
    assert_eq!(
        record.templates("dns-t"),
        2,
        "one rollout: {:?}",
        record.template_annotations("dns-t")
    );
    let now = t.secrets().get("dns-t-rndc-key").await.expect("secret");
    assert_eq!(count_of(&now), 1, "no second rotation");

    // Defect 8: Bindy's status field says the Secret's count and created-at (as instants).
    let instance = t.instances().get("dns-t").await.expect("instance");
    let status = &instance.data["status"]["rndcKeyRotation"];
    assert_eq!(status["rotationCount"], json!(1), "{status}");
    let created = |s: &str| DateTime::parse_from_rfc3339(s).expect("time").to_utc();
    assert_eq!(
        created(status["createdAt"].as_str().expect("createdAt")),
        created(&rotated.annotations()[ANNOTATION_CREATED_AT]),
        "{status}"
    );
    let rv = instance.resource_version();
    settle(&mut t, Duration::from_secs(5)).await;
    assert_eq!(
        t.instances()
            .get("dns-t")
            .await
            .expect("instance")
            .resource_version(),
        rv,
        "no status write ping-pong"
    );
}
