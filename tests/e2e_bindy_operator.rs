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
use rndc_warden::policy::{PolicyConfig, Verdict};
use rndc_warden_testkit::Metrics;
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

    /// rndc-warden's audited writes of Bind9Instances (any subresource) since `since`.
    fn instance_writes_by_warden(&self, since: &str) -> Vec<AuditEvent> {
        self.writes_by(&self.warden_user(), since)
            .into_iter()
            .filter(|e| e.resource == "bind9instances")
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
/// finds the Secret the pods mount, says OK, and the due-time gauge shows the real due time;
/// `rotate` finds it too, and one request gives one key change and one rollout.
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
    let record = Record::start(t.client(), &ns).await;
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
    assert_eq!(row.verdict, Verdict::Ok, "{row:?}");
    // The gauge is set when the rotator has evaluated the guarded Secret, which may come a moment
    // after the Secret shows the guard.
    let mut until = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while until.is_none() && Instant::now() < deadline {
        until = t.gauge("rndc_warden_rotation_seconds_until", "dns-a").await;
        if until.is_none() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let until = until.expect("due-time gauge for dns-a");
    assert!(
        (719.0 * 3600.0..=720.0 * 3600.0).contains(&until),
        "due in about 720h: {until}"
    );

    // `rotate` finds the same Secret without flags: one key change, one rollout.
    settle(&mut t, Duration::from_secs(3)).await;
    let templates = record.templates("dns-a");
    rndc_warden::rotate::request(
        t.client(),
        &ns,
        "dns-a",
        true,
        &PolicyConfig::default(),
        Utc::now(),
    )
    .await
    .expect("rotate finds Bindy's Secret");
    t.wait_secret("dns-a-rndc-key", "rotated by `rotate`", |s| {
        s.filter(|s| count_of(s) == 1).map(|_| ())
    })
    .await;
    settle(&mut t, Duration::from_secs(8)).await;
    let revisions = record.revisions("dns-a-rndc-key");
    assert_eq!(key_changes(&revisions), 1, "{revisions:?}");
    assert_eq!(
        record.templates("dns-a"),
        templates + 1,
        "{:?}",
        record.template_annotations("dns-a")
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

/// When a state of the instance was seen, and its `RndcSecretReloaded` condition then.
type ConditionSeen = (Instant, Option<serde_json::Value>);

/// The `RndcSecretReloaded` condition of an instance object, if any.
fn reloaded_condition(instance: &DynamicObject) -> Option<serde_json::Value> {
    instance.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == rndc_warden::api::CONDITION_RNDC_SECRET_RELOADED)
        .cloned()
}

/// Defect 8, the condition: Bindy's status writer replaces `status.conditions` (it wiped
/// rndc-warden's `RndcSecretReloaded` 16-133 ms after each write). With the operator running,
/// a user (`secretRef`) Secret's key changes: rndc-warden rolls the pods once, writes the
/// condition at most once for the revision and never writes it back once Bindy's writer has
/// replaced it (no fight over a shared field); every condition anyone sees is true or absent
/// (never the old revision once the pods were rolled); the reload is on record where Bindy's
/// writer cannot remove it (the Event and the Deployment's marker), so a restart of
/// rndc-warden after the wipe neither rolls again nor writes status again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_8_bindy_status_writer_and_the_reloaded_condition_never_fight() {
    use rndc_warden::policy::{Algorithm, key_revision, key_secret_from_bytes};
    use std::sync::{Arc, Mutex};

    let mut t = SideBySide::start("bindy-op-cond", BindyCrds::Upstream).await;
    let ns = t.ns().to_owned();
    let record = Record::start(t.client(), &ns).await;
    let user_secret = |byte: u8| Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("dns-c-user".into()),
            ..Default::default()
        },
        data: Some(
            key_secret_from_bytes("bindy-operator", Algorithm::HmacSha256, &[byte; 32])
                .expect("key")
                .into_data(),
        ),
        ..Secret::default()
    };
    let first = t
        .secrets()
        .create(&Default::default(), &user_secret(1))
        .await
        .expect("user Secret");
    t.apply(&instance_yaml(
        &ns,
        "dns-c",
        "",
        Some("secretRef:\n  name: dns-c-user\n  algorithm: hmac-sha256\n"),
    ))
    .await;
    t.wait_deployment("dns-c").await;
    settle(&mut t, Duration::from_secs(5)).await;
    let old_revision = key_revision(&first).expect("revision");

    // Every state of the instance from here on: (when, condition).
    let seen: Arc<Mutex<Vec<ConditionSeen>>> = Arc::default();
    let watch = {
        use futures::StreamExt as _;
        let seen = seen.clone();
        let api = t.instances();
        tokio::spawn(async move {
            let config = kube::runtime::watcher::Config::default().fields("metadata.name=dns-c");
            let mut stream = std::pin::pin!(kube::runtime::watcher(api, config));
            while let Some(event) = stream.next().await {
                if let Ok(
                    kube::runtime::watcher::Event::Apply(o)
                    | kube::runtime::watcher::Event::InitApply(o),
                ) = event
                {
                    let mut seen = seen.lock().expect("seen");
                    seen.push((Instant::now(), reloaded_condition(&o)));
                }
            }
        })
    };

    // The user rotates the key.
    let since = audit_now();
    let mut next = user_secret(2);
    let current = t.secrets().get("dns-c-user").await.expect("secret");
    next.metadata.resource_version = current.metadata.resource_version;
    let second = t
        .secrets()
        .replace("dns-c-user", &Default::default(), &next)
        .await
        .expect("user rotation");
    let new_revision = key_revision(&second).expect("revision");
    assert_ne!(new_revision, old_revision);
    let started = Instant::now();
    while record.templates("dns-c") < 2 {
        assert!(
            started.elapsed() < CONVERGE,
            "never rolled: {:?}",
            record.template_annotations("dns-c")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rolled = Instant::now();
    // Bindy's writer acts within a fraction of a second, and again on each reconcile.
    settle(&mut t, Duration::from_secs(15)).await;

    let reloaded = rotation_support::events(
        t.client(),
        &ns,
        "dns-c",
        rndc_warden::api::EVENT_RNDC_SECRET_RELOADED,
    )
    .await;
    assert!(
        reloaded
            .iter()
            .any(|e| e.note.as_deref().unwrap_or("").contains(&new_revision)),
        "the reload is on record as an Event: {reloaded:?}"
    );
    assert_eq!(
        record.templates("dns-c"),
        2,
        "one rollout: {:?}",
        record.template_annotations("dns-c")
    );
    let writes = t.instance_writes_by_warden(&since);
    assert!(
        writes.len() <= 1 && writes.iter().all(|e| e.subresource == "status"),
        "at most one instance write (the condition, once per revision): {:?}",
        summary(&writes)
    );

    let states = seen.lock().expect("seen").clone();
    let mut present_after_roll = 0;
    let mut wiped_after = None;
    for (at, condition) in &states {
        let Some(condition) = condition else {
            if present_after_roll > 0 && wiped_after.is_none() {
                wiped_after = Some(at.duration_since(rolled));
            }
            continue;
        };
        let message = condition["message"].as_str().unwrap_or("");
        assert_eq!(
            condition["status"],
            json!("True"),
            "true or absent: {condition}"
        );
        if *at > rolled + Duration::from_secs(2) {
            assert!(
                message.contains(&new_revision),
                "never stale once the pods were rolled: {condition}"
            );
        }
        if message.contains(&new_revision) {
            present_after_roll += 1;
        }
    }
    let last = states.last().and_then(|(_, c)| c.clone());
    println!(
        "defect 8: {} instance write(s) by rndc-warden ({:?}); condition seen in {present_after_roll} \
         state(s), replaced by Bindy's writer: {}; final condition: {}",
        writes.len(),
        summary(&writes),
        wiped_after.map_or("no".into(), |d| format!("after {} ms", d.as_millis())),
        last.as_ref()
            .map_or("absent".into(), |c| c["reason"].to_string())
    );

    // A restart after the wipe: what rndc-warden remembers is not in the wiped field.
    let restart = audit_now();
    t.chart.warden.kill();
    t.chart.warden.start();
    t.chart.warden.wait_ready(Duration::from_secs(120)).await;
    settle(&mut t, Duration::from_secs(15)).await;
    watch.abort();
    assert_eq!(
        record.templates("dns-c"),
        2,
        "no rollout after the restart: {:?}",
        record.template_annotations("dns-c")
    );
    let writes = t.instance_writes_by_warden(&restart);
    assert!(
        writes.is_empty(),
        "no instance write after the restart: {:?}",
        summary(&writes)
    );
    let revisions = record.revisions("dns-c-user");
    assert_eq!(
        key_changes(&revisions),
        1,
        "only the user's change: {revisions:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Defect 2 and Bindy's own rotation with hmac-sha512.

/// Prints the writes of `user` (verb, resource, name, code) for a report line.
fn summary(events: &[AuditEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {}{} {} -> {}",
                e.verb,
                e.resource,
                if e.subresource.is_empty() {
                    String::new()
                } else {
                    format!("/{}", e.subresource)
                },
                e.name,
                e.code
            )
        })
        .collect()
}

/// Defect 2: Bindy's own algorithm change to hmac-sha512 (it deletes the Secret and creates a
/// 32-byte key, count 0, no label): rndc-warden's remediation is not denied by its own webhook,
/// is one write, rolls the pods once, continues the count, and leaves audit OK and the
/// below-policy gauge at 0. Then Bindy's own rotation (due: `rndc-rotate-at` passed) goes
/// through rndc-warden's Secret webhook with hmac-sha512: one rotation, one rollout, a key of
/// the hash length at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_2_bindy_algorithm_change_to_sha512_is_remediated_in_one_write() {
    let mut t = SideBySide::start("bindy-op-sha512", BindyCrds::Upstream).await;
    let ns = t.ns().to_owned();
    let secret = "dns-s-rndc-key";
    let record = Record::start(t.client(), &ns).await;
    t.apply(&instance_yaml(
        &ns,
        "dns-s",
        "",
        Some(&key_block(true, "hmac-sha256")),
    ))
    .await;
    t.wait_deployment("dns-s").await;
    let before = t.wait_guarded("dns-s", "hmac-sha256").await;
    settle(&mut t, Duration::from_secs(3)).await;
    let templates_before = record.templates("dns-s");
    let warden_metrics_before = t.chart.metrics().await;

    // The user changes the algorithm; Bindy deletes and re-creates the Secret.
    let since = audit_now();
    t.apply(&instance_yaml(
        &ns,
        "dns-s",
        "",
        Some(&key_block(true, "hmac-sha512")),
    ))
    .await;
    let after = t.wait_guarded("dns-s", "hmac-sha512").await;
    settle(&mut t, Duration::from_secs(8)).await;
    let revisions = record.revisions(secret);
    let bindy = t.writes_by(t.operator.username(), &since);
    let warden = t.writes_by(&t.warden_user(), &since);
    println!("defect 2: revisions {revisions:?}");
    println!("defect 2: bindy wrote {:?}", summary(&bindy));
    println!("defect 2: rndc-warden wrote {:?}", summary(&warden));
    assert_ne!(
        after.uid(),
        before.uid(),
        "Bindy re-created the Secret (the case under test)"
    );
    let on_secret: Vec<_> = warden
        .iter()
        .filter(|e| e.resource == "secrets" && e.name == secret)
        .collect();
    assert_eq!(
        on_secret.len(),
        1,
        "one remediation write: {:?}",
        summary(&warden)
    );
    assert!(
        on_secret.iter().all(|e| e.code < 400),
        "never denied: {:?}",
        summary(&warden)
    );
    let new_uid: Vec<_> = revisions
        .iter()
        .filter(|r| Some(r.uid.as_str()) == after.uid().as_deref())
        .collect();
    assert_eq!(
        new_uid.iter().map(|r| r.key_bytes).collect::<Vec<_>>(),
        vec![32, 64],
        "Bindy's 32-byte key, then rndc-warden's 64-byte key: {revisions:?}"
    );
    assert_eq!(
        record.templates("dns-s"),
        templates_before + 1,
        "the pods roll once onto the remediated key: {:?}",
        record.template_annotations("dns-s")
    );
    assert_eq!(
        count_of(&after),
        count_of(&before) + 1,
        "the count continues"
    );
    let warden_metrics = t.chart.metrics().await;
    let denied = |m: &rndc_warden_testkit::Metrics| {
        m.sum(
            "rndc_warden_admission_requests_total",
            &[("kind", "Secret"), ("decision", "denied")],
        )
    };
    assert_eq!(denied(&warden_metrics), denied(&warden_metrics_before));
    assert_eq!(
        t.gauge("rndc_warden_key_below_policy", "dns-s").await,
        Some(0.0)
    );
    let rows = t.audit_rows().await;
    assert_eq!(rows["dns-s"].verdict, Verdict::Ok, "{:?}", rows["dns-s"]);

    // Bindy's own rotation: rotate-at passed and the key older than its 1 h rate limit. Whoever
    // acts first, the key changes once, the pods roll once, and the key ends the hash length.
    let templates_before = record.templates("dns-s");
    let revisions_before = record.revisions(secret).len();
    let since = audit_now();
    t.back_date(
        secret,
        Utc::now() - TimeDelta::hours(800),
        Some(Utc::now() - TimeDelta::hours(80)),
    )
    .await;
    let rotated = t
        .wait_secret(secret, "rotated", |s| {
            let s = s?;
            (count_of(s) > count_of(&after)).then(|| s.clone())
        })
        .await;
    settle(&mut t, Duration::from_secs(10)).await;
    let revisions = record.revisions(secret)[revisions_before - 1..].to_vec();
    let bindy = t.writes_by(t.operator.username(), &since);
    let warden = t.writes_by(&t.warden_user(), &since);
    println!("bindy rotation: revisions {revisions:?}");
    println!("bindy rotation: bindy wrote {:?}", summary(&bindy));
    println!("bindy rotation: rndc-warden wrote {:?}", summary(&warden));
    for line in lines_at(&t.operator.log(), "ERROR").iter().rev().take(2) {
        println!(
            "bindy rotation: bindy logged {}",
            &line[..line.len().min(600)]
        );
    }
    let last = t.secrets().get(secret).await.expect("secret");
    let shape = describe_secret(&last);
    assert_eq!(shape.key_bytes, 64, "{shape:?}");
    assert_eq!(
        shape.labels.get(LABEL_RNDC_KEY).map(String::as_str),
        Some("true")
    );
    assert_eq!(key_changes(&revisions), 1, "one rotation: {revisions:?}");
    assert_eq!(count_of(&last), count_of(&rotated), "no second rotation");
    assert_eq!(
        record.templates("dns-s"),
        templates_before + 1,
        "one rollout: {:?}",
        record.template_annotations("dns-s")
    );
}

// ---------------------------------------------------------------------------------------------
// Defect 4: defaults never shadow cluster or provider blocks.

/// A `Bind9Cluster` (or, with `provider_namespace`, a `ClusterBind9Provider` placing its cluster
/// there) with one primary and, when given, a primary `rndcKey` block.
fn cluster_yaml(ns: &str, name: &str, provider_namespace: bool, rndc_key: Option<&str>) -> String {
    let key = rndc_key
        .map(|k| format!("    rndcKey:\n{}", indent(k, 6)))
        .unwrap_or_default();
    if provider_namespace {
        format!(
            "apiVersion: bindy.firestoned.io/v1beta1\nkind: ClusterBind9Provider\nmetadata:\n  name: {name}\nspec:\n  namespace: {ns}\n  primary:\n    replicas: 1\n{key}"
        )
    } else {
        format!(
            "apiVersion: bindy.firestoned.io/v1beta1\nkind: Bind9Cluster\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  primary:\n    replicas: 1\n{key}"
        )
    }
}

impl SideBySide {
    /// Waits until rndc-warden's audit row of `instance` satisfies `check` (`what` names it).
    async fn wait_audit_row(
        &mut self,
        instance: &str,
        what: &str,
        check: impl Fn(&rndc_warden::audit::Row) -> bool,
    ) {
        let started = Instant::now();
        loop {
            self.assert_operator_running();
            let rows = self.audit_rows().await;
            let row = rows.get(instance);
            if row.is_some_and(&check) {
                return;
            }
            assert!(
                started.elapsed() < CONVERGE,
                "audit of {instance}: never {what}: {row:?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Waits until rndc-warden's audit row of `instance` mentions `detail`.
    async fn wait_audit(&mut self, instance: &str, detail: &str) {
        self.wait_audit_row(instance, &format!("said {detail:?}"), |r| {
            r.detail.contains(detail)
        })
        .await;
    }

    /// Waits until rndc-warden's gauge `name` of `instance` is `value`.
    async fn wait_gauge(&mut self, name: &str, instance: &str, value: f64) {
        let started = Instant::now();
        loop {
            self.assert_operator_running();
            let now = self.gauge(name, instance).await;
            if now == Some(value) {
                return;
            }
            assert!(
                started.elapsed() < CONVERGE,
                "{name}{{instance={instance}}} never became {value}: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Asserts that instance `name` carries no `rndcKey` (nothing injected that would shadow
    /// the cluster's or provider's block) and that rndc-warden's audit sees `policy`.
    async fn assert_effective(&self, name: &str, algorithm: &str, secret: &Secret) {
        let instance = self.instances().get(name).await.expect("instance");
        assert!(
            instance.data["spec"]["rndcKey"].is_null(),
            "{name}: no block injected: {}",
            instance.data["spec"]
        );
        let shape = describe_secret(secret);
        assert_eq!(shape.algorithm, algorithm, "{name}: {shape:?}");
        assert!(
            shape.annotations.contains_key(ANNOTATION_ROTATE_AT),
            "{name}: rotating (autoRotate from the block): {shape:?}"
        );
        let rows = self.audit_rows().await;
        let row = &rows[name];
        assert!(
            row.policy.starts_with("auto 720h"),
            "{name}: rndc-warden's audit sees the block: {row:?}"
        );
        assert_eq!(row.algorithm, algorithm, "{row:?}");
    }
}

/// Defect 4: the effective key configuration is the one precedence gives, whatever the order:
/// (a) a cluster with an `autoRotate: true, hmac-sha384` primary block whose instance Bindy
/// creates; (b) an instance created before its cluster; (c) a block changed later on a cluster
/// (hmac-sha512) and added later to a provider. Checked in what Bindy writes (the Secret's
/// algorithm, `rndc-rotate-at`), in the instance (no injected block) and in rndc-warden's view
/// (`audit`: policy and algorithm).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_4_defaults_never_shadow_cluster_or_provider_blocks() {
    let mut t = SideBySide::start("bindy-op-precedence", BindyCrds::Upstream).await;
    let ns = t.ns().to_owned();
    let sha384 = key_block(true, "hmac-sha384");

    // (a) cluster first: Bindy creates its instance.
    t.apply(&cluster_yaml(&ns, "c1", false, Some(&sha384)))
        .await;
    let secret = t.wait_guarded("c1-primary-0", "hmac-sha384").await;
    t.assert_effective("c1-primary-0", "hmac-sha384", &secret)
        .await;

    // (b) instance first, then its cluster.
    t.apply(&instance_yaml(&ns, "i2", "c2", None)).await;
    let created = t.instances().get("i2").await.expect("i2");
    assert!(
        created.data["spec"]["rndcKey"].is_null(),
        "nothing injected into a clustered instance: {}",
        created.data["spec"]
    );
    t.apply(&cluster_yaml(&ns, "c2", false, Some(&sha384)))
        .await;
    let secret = t.wait_guarded("i2", "hmac-sha384").await;
    t.assert_effective("i2", "hmac-sha384", &secret).await;

    // (c) later: the cluster's block changes. The key was rotated (repaired) minutes ago, so
    // the change waits for the end of rndc-warden's 1 h rate limit (docs/rotation.md) and for
    // Bindy's next requeue; meanwhile rndc-warden already governs by the new block (audit: the
    // stored key is below policy). A key older than the rate limit is replaced at once.
    t.apply(&cluster_yaml(
        &ns,
        "c1",
        false,
        Some(&key_block(true, "hmac-sha512")),
    ))
    .await;
    t.wait_audit("c1-primary-0", "asks for hmac-sha512").await;
    // While the key is below policy, `audit` fails it and the gauge says so (defect 9's "a key
    // below policy is never OK", with the operator's own objects).
    let rows = t.audit_rows().await;
    assert_eq!(
        rows["c1-primary-0"].verdict,
        Verdict::Fail,
        "{:?}",
        rows["c1-primary-0"]
    );
    t.wait_gauge("rndc_warden_key_below_policy", "c1-primary-0", 1.0)
        .await;
    let key = "c1-primary-0-rndc-key";
    t.back_date(key, Utc::now() - TimeDelta::hours(2), None)
        .await;
    let secret = t.wait_guarded("c1-primary-0", "hmac-sha512").await;
    t.assert_effective("c1-primary-0", "hmac-sha512", &secret)
        .await;
    t.wait_gauge("rndc_warden_key_below_policy", "c1-primary-0", 0.0)
        .await;

    // (c) later, on a provider: Bindy copies the provider's spec into its Bind9Cluster.
    let provider = rndc_warden_testkit::namespace::unique_name("p");
    t.apply(&cluster_yaml(&ns, &provider, true, None)).await;
    let instance = format!("{provider}-primary-0");
    let plain = t.wait_guarded(&instance, "hmac-sha256").await;
    assert!(
        !describe_secret(&plain)
            .annotations
            .contains_key(ANNOTATION_ROTATE_AT),
        "no block anywhere: Bindy's default, not rotating: {:?}",
        describe_secret(&plain)
    );
    t.apply(&cluster_yaml(&ns, &provider, true, Some(&sha384)))
        .await;
    // rndc-warden governs by the provider's block once Bindy copied it into its cluster; the
    // key may already have been replaced (Bindy re-creates it, rndc-warden repairs it) or wait
    // for the rate limit, which a key older than an hour does not.
    t.wait_audit_row(&instance, "governed by a rotating block", |r| {
        r.policy.starts_with("auto 720h")
    })
    .await;
    let key = format!("{instance}-rndc-key");
    if describe_secret(&t.secrets().get(&key).await.expect("secret")).algorithm != "hmac-sha384" {
        t.back_date(&key, Utc::now() - TimeDelta::hours(2), None)
            .await;
    }
    let secret = t.wait_guarded(&instance, "hmac-sha384").await;
    t.assert_effective(&instance, "hmac-sha384", &secret).await;
}

// ---------------------------------------------------------------------------------------------
// Defect 5: compliance mode never blocks the operator's bookkeeping.

/// Defect 5, with `policy.requireAutoRotate: true` (the compliance mode under test): Bindy
/// creates and updates the instances of a rotating cluster (finalizers, status, its own spec
/// edits when the cluster grows), and deletes instances (finalizer removal), with no request
/// denied; a new non-compliant instance is denied with a message naming autoRotate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_5_compliance_mode_lets_bindy_update_and_delete_its_instances() {
    let mut t = SideBySide::start_with(
        "bindy-op-compliance",
        BindyCrds::Upstream,
        "policy:\n  requireAutoRotate: true\n",
    )
    .await;
    let ns = t.ns().to_owned();
    let since = audit_now();
    let rotating = key_block(true, "hmac-sha256");
    t.apply(&cluster_yaml(&ns, "cc", false, Some(&rotating)))
        .await;
    t.wait_guarded("cc-primary-0", "hmac-sha256").await;
    t.apply(&instance_yaml(&ns, "cs", "", Some(&rotating)))
        .await;
    t.wait_guarded("cs", "hmac-sha256").await;

    // A new non-compliant instance is denied.
    let out = t
        .env
        .cp
        .kubectl_apply(&instance_yaml(
            &ns,
            "manual",
            "",
            Some(&key_block(false, "hmac-sha256")),
        ))
        .await
        .expect("kubectl runs");
    assert!(
        !out.success(),
        "a non-rotating key is denied: {}",
        out.stdout
    );
    assert!(out.stderr.contains("autoRotate"), "{}", out.stderr);

    // The cluster grows: Bindy creates and updates the instances it manages.
    t.apply(&cluster_yaml(&ns, "cc", false, Some(&rotating)).replace("replicas: 1", "replicas: 2"))
        .await;
    t.wait_guarded("cc-primary-1", "hmac-sha256").await;

    // Deletions: Bindy removes its finalizers, the instances go.
    t.instances()
        .delete("cs", &Default::default())
        .await
        .expect("delete cs");
    Api::<DynamicObject>::namespaced_with(
        t.client().clone(),
        &ns,
        &t.kind("Bind9Cluster").resource,
    )
    .delete("cc", &Default::default())
    .await
    .expect("delete cc");
    let started = Instant::now();
    loop {
        t.assert_operator_running();
        let left: Vec<String> = t
            .instances()
            .list(&ListParams::default())
            .await
            .expect("instances")
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < CONVERGE,
            "instances stay Terminating: {left:?}\n{}",
            t.operator.log_tail(3000)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let bindy = t.writes_by(t.operator.username(), &since);
    let instance_writes: Vec<_> = bindy
        .iter()
        .filter(|e| e.resource == "bind9instances")
        .collect();
    println!("defect 5: bindy's instance writes {:?}", summary(&bindy));
    assert!(
        instance_writes
            .iter()
            .any(|e| matches!(e.verb.as_str(), "update" | "patch") && e.subresource.is_empty()),
        "Bindy updated instances (finalizers): {:?}",
        summary(&bindy)
    );
    let refused: Vec<_> = bindy
        .iter()
        .filter(|e| e.code >= 400 && e.code != 404 && e.code != 409)
        .collect();
    assert!(
        refused.is_empty(),
        "none of Bindy's writes refused: {:?}",
        summary(&bindy)
    );
    let metrics = t.chart.metrics().await;
    assert_eq!(
        metrics.sum(
            "rndc_warden_admission_requests_total",
            &[("kind", "Bind9Instance"), ("decision", "denied")],
        ),
        1.0,
        "only the user's non-compliant instance was denied: {:?}",
        admission_table(&metrics)
    );
}

// ---------------------------------------------------------------------------------------------
// Many keys at once, and restarts in the middle.

/// `count` standalone rotating instances `<prefix>-NN` in one manifest.
fn batch_yaml(ns: &str, prefix: &str, count: usize) -> String {
    (0..count)
        .map(|i| {
            instance_yaml(
                ns,
                &format!("{prefix}-{i:02}"),
                "",
                Some(&key_block(true, "hmac-sha256")),
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// What a batch looked like before a trigger, per instance: the Secret's uid and count, the
/// key revisions and pod templates seen so far.
struct Snapshot {
    uid: BTreeMap<String, String>,
    count: BTreeMap<String, u32>,
    revisions: BTreeMap<String, usize>,
    templates: BTreeMap<String, usize>,
}

impl SideBySide {
    /// Creates the batch and waits until Bindy made every Secret and Deployment and
    /// rndc-warden guards every Secret.
    async fn create_batch(&mut self, prefix: &str, count: usize) -> Vec<String> {
        let ns = self.ns().to_owned();
        self.apply(&batch_yaml(&ns, prefix, count)).await;
        let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i:02}")).collect();
        for name in &names {
            self.wait_deployment(name).await;
            self.wait_guarded(name, "hmac-sha256").await;
        }
        names
    }

    async fn snapshot(&self, record: &Record, names: &[String]) -> Snapshot {
        let mut s = Snapshot {
            uid: BTreeMap::new(),
            count: BTreeMap::new(),
            revisions: BTreeMap::new(),
            templates: BTreeMap::new(),
        };
        for name in names {
            let secret = self
                .secrets()
                .get(&format!("{name}-rndc-key"))
                .await
                .expect("secret");
            s.uid.insert(name.clone(), secret.uid().unwrap_or_default());
            s.count.insert(name.clone(), count_of(&secret));
            s.revisions.insert(
                name.clone(),
                record.revisions(&format!("{name}-rndc-key")).len(),
            );
            s.templates.insert(name.clone(), record.templates(name));
        }
        s
    }

    /// Makes every key of `names` due for both operators at once, as time does:
    /// `rndc-created-at` 800 h ago and `rndc-rotate-at` = created-at + 720 h.
    async fn make_due(&self, names: &[String]) {
        let created = Utc::now() - TimeDelta::hours(800);
        let secrets: Vec<String> = names.iter().map(|n| format!("{n}-rndc-key")).collect();
        let writes = secrets
            .iter()
            .map(|secret| self.back_date(secret, created, Some(created + TimeDelta::hours(720))));
        futures::future::join_all(writes).await;
    }

    /// Waits until every key of `names` has a count above its snapshot.
    async fn wait_all_rotated(&mut self, names: &[String], before: &Snapshot) {
        let started = Instant::now();
        loop {
            self.assert_operator_running();
            let mut left = Vec::new();
            for name in names {
                let secret = self
                    .secrets()
                    .get_opt(&format!("{name}-rndc-key"))
                    .await
                    .expect("get");
                if secret
                    .as_ref()
                    .is_none_or(|s| count_of(s) <= before.count[name])
                {
                    left.push(name.clone());
                }
            }
            if left.is_empty() {
                return;
            }
            assert!(
                started.elapsed() < CONVERGE * 2,
                "not rotated: {left:?}\nbindy:\n{}\nrndc-warden:\n{}",
                self.operator.log_tail(3000),
                self.chart.warden.logs_tail(3000)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Asserts, per instance since `before`: one key change, one rollout, the same Secret (uid),
    /// the count one higher.
    async fn assert_once_each(&self, record: &Record, names: &[String], before: &Snapshot) {
        let mut wrong = Vec::new();
        for name in names {
            let secret_name = format!("{name}-rndc-key");
            let secret = self.secrets().get(&secret_name).await.expect("secret");
            let revisions = record.revisions(&secret_name)[before.revisions[name] - 1..].to_vec();
            let rotations = key_changes(&revisions);
            let rollouts = record.templates(name) - before.templates[name];
            let same = secret.uid().unwrap_or_default() == before.uid[name];
            let count = count_of(&secret);
            if rotations != 1 || rollouts != 1 || !same || count != before.count[name] + 1 {
                wrong.push(format!(
                    "{name}: {rotations} key changes, {rollouts} rollouts, same Secret {same}, \
                     count {} -> {count}; templates {:?}",
                    before.count[name],
                    record.template_annotations(name)
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} of {} keys not rotated and rolled exactly once:\n{}",
            wrong.len(),
            names.len(),
            wrong.join("\n")
        );
    }
}

/// 50 instances whose keys fall due together with both operators running: each key is rotated
/// exactly once, each Deployment rolled exactly once, no Secret re-created (uid unchanged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_instances_rotate_together_once_each() {
    let mut t = SideBySide::start("bindy-op-batch", BindyCrds::Upstream).await;
    let record = Record::start(t.client(), t.ns()).await;
    let names = t.create_batch("b", 50).await;
    settle(&mut t, Duration::from_secs(5)).await;
    let before = t.snapshot(&record, &names).await;
    let since = audit_now();
    let started = Instant::now();
    t.make_due(&names).await;
    t.wait_all_rotated(&names, &before).await;
    println!(
        "batch: 50 keys rotated {:?} after they fell due",
        started.elapsed()
    );
    settle(&mut t, Duration::from_secs(10)).await;
    let bindy = t.writes_by(t.operator.username(), &since);
    let warden = t.writes_by(&t.warden_user(), &since);
    let count = |events: &[AuditEvent], resource: &str| {
        events.iter().filter(|e| e.resource == resource).count()
    };
    println!(
        "batch: writes since: bindy secrets {} deployments {}; rndc-warden secrets {} deployments {} status {}",
        count(&bindy, "secrets"),
        count(&bindy, "deployments"),
        count(&warden, "secrets"),
        count(&warden, "deployments"),
        warden.iter().filter(|e| e.subresource == "status").count()
    );
    t.assert_once_each(&record, &names, &before).await;
}

/// What Bindy logs when it starts rotating a key.
const BINDY_ROTATING_LOG: &str = "rotation is due, rotating";

/// A restart of each operator during a rotation: the keys of 10 instances fall due, Bindy is
/// killed (SIGKILL) right away and started again; then they fall due again and rndc-warden is
/// killed right away and started again. Each time every key is rotated once and rolled once, and
/// nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_of_either_operator_during_a_rotation_converges_to_once_each() {
    let mut t = SideBySide::start("bindy-op-restart", BindyCrds::Upstream).await;
    let record = Record::start(t.client(), t.ns()).await;
    let names = t.create_batch("r", 10).await;
    settle(&mut t, Duration::from_secs(3)).await;

    // Bindy killed during the rotation: as soon as it logs that it is rotating a key (or after
    // 10 s if it never gets there first; printed either way).
    let before = t.snapshot(&record, &names).await;
    t.make_due(&names).await;
    let caught = t
        .operator
        .wait_for_log(BINDY_ROTATING_LOG, Duration::from_secs(10))
        .await
        .is_ok();
    t.operator.kill().await;
    println!("restart bindy: killed while rotating: {caught}");
    let rotated_at_kill = t.snapshot(&record, &names).await;
    t.operator.start_again().await.expect("Bindy again");
    t.wait_all_rotated(&names, &before).await;
    settle(&mut t, Duration::from_secs(10)).await;
    println!(
        "restart bindy: {} of 10 rotated when it was killed",
        names
            .iter()
            .filter(|n| rotated_at_kill.count[*n] > before.count[*n])
            .count()
    );
    t.assert_once_each(&record, &names, &before).await;

    // rndc-warden killed during the rotation.
    let before = t.snapshot(&record, &names).await;
    t.make_due(&names).await;
    t.chart.warden.kill();
    let rotated_at_kill = t.snapshot(&record, &names).await;
    t.chart.warden.start();
    t.chart.warden.wait_ready(Duration::from_secs(120)).await;
    t.wait_all_rotated(&names, &before).await;
    settle(&mut t, Duration::from_secs(10)).await;
    println!(
        "restart rndc-warden: {} of 10 rotated when it was killed",
        names
            .iter()
            .filter(|n| rotated_at_kill.count[*n] > before.count[*n])
            .count()
    );
    t.assert_once_each(&record, &names, &before).await;
}

// ---------------------------------------------------------------------------------------------
// The quiet period.

/// Bindy's requeue period after a successful reconcile (`REQUEUE_WHEN_READY_SECS`,
/// reference/upstream-bindy.md §4.1).
const BINDY_REQUEUE: Duration = Duration::from_secs(300);
/// rndc-warden's resync period in this test (`rotation.resyncPeriod`; the chart's default is 5m).
const RESYNC: Duration = Duration::from_secs(30);

/// Both operators with nothing to do for one full Bindy requeue period plus one rndc-warden
/// resync (and 10 s): rndc-warden writes nothing in the namespace, counted from the apiserver's
/// audit log. Bindy's examples and a rotating standalone instance, everything settled first.
/// A control plane of its own, so it runs beside the other tests of this file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_to_do_for_a_bindy_requeue_and_a_resync_means_no_write_by_rndc_warden() {
    let cp: &'static rndc_warden_testkit::ControlPlane = Box::leak(Box::new(
        rndc_warden_testkit::ControlPlane::start()
            .await
            .expect("a control plane of this test's own"),
    ));
    let client = cp.client().expect("client");
    let ns = rndc_warden_testkit::TestNamespace::create(&client, "bindy-quiet")
        .await
        .expect("namespace");
    let slot = rndc_warden_testkit::bindy::OperatorSlot::private(&client, BindyCrds::Upstream)
        .await
        .expect("CRDs");
    let env = rndc_warden_testkit::TestEnv { cp, client, ns };
    let mut t = SideBySide::start_in(
        env,
        slot,
        &format!("rotation:\n  resyncPeriod: {}s\n", RESYNC.as_secs()),
    )
    .await;
    let ns = t.ns().to_owned();
    t.apply_examples().await;
    t.apply(&instance_yaml(
        &ns,
        "quiet",
        "",
        Some(&key_block(true, "hmac-sha256")),
    ))
    .await;
    let (found, _) = t.wait_reconciled().await;
    // Settled: every key guarded, at the length its configured algorithm wants.
    for name in found.instances.keys() {
        let rows = t.audit_rows().await;
        let algorithm = rows[name].algorithm.clone();
        t.wait_guarded(name, &algorithm).await;
        t.wait_audit(name, "next rotation").await;
    }
    settle(&mut t, Duration::from_secs(10)).await;

    let since = audit_now();
    let bindy_before = Metrics::parse(&t.operator.metrics().await.expect("bindy metrics"))
        .expect("parse")
        .sum("bindy_firestoned_io_reconciliations_total", &[]);
    let window = BINDY_REQUEUE + RESYNC + Duration::from_secs(10);
    settle(&mut t, window).await;
    let bindy_after = Metrics::parse(&t.operator.metrics().await.expect("bindy metrics"))
        .expect("parse")
        .sum("bindy_firestoned_io_reconciliations_total", &[]);
    let warden = t.writes_by(&t.warden_user(), &since);
    let bindy = t.writes_by(t.operator.username(), &since);
    println!(
        "quiet {window:?} with {} instances: rndc-warden wrote {:?}; bindy wrote {} times ({:?}); bindy reconciliations {} -> {}",
        found.instances.len(),
        summary(&warden),
        bindy.len(),
        summary(&bindy).into_iter().take(8).collect::<Vec<_>>(),
        bindy_before,
        bindy_after
    );
    assert!(
        bindy_after > bindy_before,
        "Bindy requeued in the window (the quiet period covers one)"
    );
    assert!(
        warden.is_empty(),
        "rndc-warden wrote with nothing to do: {:?}",
        summary(&warden)
    );
    t.assert_operator_running();
    cp.stop();
}
