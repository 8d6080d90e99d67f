//! Evaluating `check`'s documents against the policy, as the API server would call the webhook.

use std::collections::BTreeMap;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::input::{Document, InputError};
use crate::api::{API_VERSION, Bind9Cluster, Bind9Instance, ClusterBind9Provider, GROUP};
use crate::policy::{
    self, Decision, EffectiveKeyConfig, PolicyConfig, SecretChange, apply_patch,
    is_rndc_key_secret, shown,
};

/// The user making requests in `check`: never the rotator.
const CHECK_USERNAME: &str = "rndc-warden-check";

/// Where an object came from and what it is.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Origin {
    pub(super) source: String,
    pub(super) line: usize,
    #[serde(rename = "apiVersion")]
    pub(super) api_version: String,
    pub(super) kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) namespace: Option<String>,
    pub(super) name: String,
}

impl Origin {
    fn of(doc: &Document) -> Self {
        let text = |pointer: &str| doc.value.pointer(pointer).and_then(Value::as_str);
        Self {
            source: doc.source.clone(),
            line: doc.line,
            api_version: text("/apiVersion").unwrap_or_default().to_owned(),
            kind: text("/kind").unwrap_or_default().to_owned(),
            namespace: text("/metadata/namespace").map(str::to_owned),
            name: text("/metadata/name")
                .or(text("/metadata/generateName"))
                .unwrap_or_default()
                .to_owned(),
        }
    }

    /// `Kind namespace/name`, or `Kind name` for a cluster-scoped object.
    pub(super) fn label(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// The result for one object.
#[derive(Debug, Clone, Serialize)]
pub(super) struct ObjectReport {
    #[serde(flatten)]
    pub(super) origin: Origin,
    pub(super) allowed: bool,
    pub(super) denials: Vec<String>,
    pub(super) warnings: Vec<String>,
    pub(super) patch: Value,
}

/// An object that is not rndc-warden's.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Skipped {
    #[serde(flatten)]
    pub(super) origin: Origin,
    pub(super) reason: String,
}

/// Everything `check` found.
#[derive(Debug, Default, Serialize)]
pub(super) struct Report {
    pub(super) objects: Vec<ObjectReport>,
    pub(super) skipped: Vec<Skipped>,
    pub(super) errors: Vec<InputError>,
}

impl Report {
    /// How many objects were denied.
    pub(super) fn denied(&self) -> usize {
        self.objects.iter().filter(|o| !o.allowed).count()
    }

    /// 2 on any input error, else 1 on any denial, else 0.
    pub(super) fn exit_code(&self) -> ExitCode {
        if !self.errors.is_empty() {
            ExitCode::from(2)
        } else if self.denied() > 0 {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        }
    }
}

/// What an object is, for `check`.
enum Item<'a> {
    Instance(&'a Document),
    Cluster(&'a Document),
    Provider(&'a Document),
    Secret(&'a Document),
}

fn classify(doc: &Document) -> Result<Item<'_>, String> {
    let api_version = doc.value.get("apiVersion").and_then(Value::as_str);
    let kind = doc.value.get("kind").and_then(Value::as_str);
    let (Some(api_version), Some(kind)) = (api_version, kind) else {
        return Err("not a Kubernetes object (no apiVersion and kind)".into());
    };
    let group = api_version.split_once('/').map_or("", |(g, _)| g);
    match (api_version, kind) {
        (API_VERSION, "Bind9Instance") => Ok(Item::Instance(doc)),
        (API_VERSION, "Bind9Cluster") => Ok(Item::Cluster(doc)),
        (API_VERSION, "ClusterBind9Provider") => Ok(Item::Provider(doc)),
        ("v1", "Secret") => {
            let labelled = serde_json::from_value::<Secret>(doc.value.clone())
                .is_ok_and(|s| is_rndc_key_secret(&s));
            if labelled {
                Ok(Item::Secret(doc))
            } else {
                Err("Secret without the bindy.firestoned.io/rndc-key=true label".into())
            }
        }
        (_, "Bind9Instance" | "Bind9Cluster" | "ClusterBind9Provider") if group == GROUP => Err(
            format!("{} is not served; use {API_VERSION}", clipped(api_version)),
        ),
        _ => Err(format!(
            "{} ({}) is not checked by rndc-warden",
            clipped(kind),
            clipped(api_version)
        )),
    }
}

/// A kind or apiVersion as the report names it: in full unless absurdly long.
fn clipped(text: &str) -> String {
    if text.chars().count() <= 63 {
        text.to_owned()
    } else {
        shown(text)
    }
}

/// Parses a document into its type, naming the field that does not fit (never its value).
fn typed<T: DeserializeOwned>(doc: &Document) -> Result<T, String> {
    crate::api::decode::from_value(&doc.value).map_err(|e| e.to_string())
}

type ClusterKey = (Option<String>, String);

/// Judges every document as the API server would (mutation, then validation): clusters and
/// providers first, then instances, then Secrets, reported in input order.
pub(super) fn evaluate(documents: &[Document], cfg: &PolicyConfig, now: DateTime<Utc>) -> Report {
    let mut report = Report::default();
    let mut results: Vec<Option<Result<ObjectReport, Skipped>>> = vec![None; documents.len()];
    let mut clusters: BTreeMap<ClusterKey, Bind9Cluster> = BTreeMap::new();
    let mut items = Vec::new();
    for (index, doc) in documents.iter().enumerate() {
        match classify(doc) {
            Ok(item) => items.push((index, item)),
            Err(reason) => {
                results[index] = Some(Err(Skipped {
                    origin: Origin::of(doc),
                    reason,
                }));
            }
        }
    }

    // Clusters first, so instances anywhere in the input see them (defaulted, as stored).
    for (index, item) in &items {
        let (doc, decision) = match item {
            Item::Cluster(doc) => match typed::<Bind9Cluster>(doc) {
                Ok(cluster) => {
                    let decision = policy::review_cluster(&cluster, cfg);
                    let stored = apply_patch(&cluster, &decision.patch).unwrap_or(cluster);
                    let key = (
                        stored.metadata.namespace.clone(),
                        stored.metadata.name.clone().unwrap_or_default(),
                    );
                    clusters.insert(key, stored);
                    (doc, Ok(decision))
                }
                Err(e) => (doc, Err(e)),
            },
            Item::Provider(doc) => match typed::<ClusterBind9Provider>(doc) {
                Ok(provider) => {
                    let decision = policy::review_provider(&provider, cfg);
                    let stored = apply_patch(&provider, &decision.patch).unwrap_or(provider);
                    // The Bindy operator copies a provider into a namespaced Bind9Cluster.
                    if let Some(namespace) = stored
                        .spec
                        .extra
                        .get("namespace")
                        .and_then(|raw| raw.decode::<String>())
                    {
                        let name = stored.metadata.name.clone().unwrap_or_default();
                        let spec = serde_json::to_value(&stored.spec)
                            .and_then(serde_json::from_value)
                            .unwrap_or_default();
                        let mut cluster = Bind9Cluster::new(&name, spec);
                        cluster.metadata.namespace = Some(namespace.clone());
                        clusters.entry((Some(namespace), name)).or_insert(cluster);
                    }
                    (doc, Ok(decision))
                }
                Err(e) => (doc, Err(e)),
            },
            _ => continue,
        };
        results[*index] = Some(Ok(object_report(doc, decision)));
    }

    let mut owners: BTreeMap<(Option<String>, String), EffectiveKeyConfig> = BTreeMap::new();
    for (index, item) in &items {
        let Item::Instance(doc) = item else { continue };
        let decision = typed::<Bind9Instance>(doc).map(|instance| {
            let cluster_ref = instance.spec.cluster_ref.clone().unwrap_or_default();
            let cluster = clusters.get(&(instance.metadata.namespace.clone(), cluster_ref));
            let decision = policy::review_instance(&instance, cluster, cfg);
            let stored = apply_patch(&instance, &decision.patch).unwrap_or(instance);
            if let Ok(effective) = policy::effective_config(&stored, cluster, cfg) {
                let key = (
                    stored.metadata.namespace.clone(),
                    effective.secret_name.clone(),
                );
                owners.entry(key).or_insert(effective);
            }
            decision
        });
        results[*index] = Some(Ok(object_report(doc, decision)));
    }

    for (index, item) in &items {
        let Item::Secret(doc) = item else { continue };
        let decision = typed::<Secret>(doc).map(|secret| {
            let key = (
                secret.metadata.namespace.clone(),
                secret.metadata.name.clone().unwrap_or_default(),
            );
            let change = SecretChange {
                new: &secret,
                old: None,
                username: CHECK_USERNAME,
                owner: owners.get(&key),
                now,
            };
            policy::review_secret(&change, cfg)
        });
        results[*index] = Some(Ok(object_report(doc, decision)));
    }

    for result in results.into_iter().flatten() {
        match result {
            Ok(object) => report.objects.push(object),
            Err(skipped) => report.skipped.push(skipped),
        }
    }
    report
}

fn object_report(doc: &Document, decision: Result<Decision, String>) -> ObjectReport {
    let origin = Origin::of(doc);
    match decision {
        Ok(decision) => {
            let mut denials = decision.denials.clone();
            if decision.denials_left_out > 0 {
                denials.push(format!(
                    "… and {} more problems of the same object",
                    decision.denials_left_out
                ));
            }
            ObjectReport {
                origin,
                allowed: decision.allowed(),
                patch: serde_json::to_value(&decision.patch).unwrap_or(Value::Null),
                denials,
                warnings: decision.warnings,
            }
        }
        Err(message) => ObjectReport {
            origin,
            allowed: false,
            denials: vec![format!("{message} (the API server rejects this object)")],
            warnings: Vec::new(),
            patch: json!([]),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::input::documents as docs;

    fn now() -> DateTime<Utc> {
        policy::parse_time("2026-03-01T00:00:00Z").expect("valid")
    }

    #[test]
    fn a_cluster_later_in_the_stream_informs_earlier_instances() {
        let (documents, _) = docs(
            "s.yaml",
            "apiVersion: bindy.firestoned.io/v1beta1\nkind: Bind9Instance\nmetadata: {name: i, \
             namespace: dns}\nspec: {clusterRef: c, role: primary}\n---\napiVersion: \
             bindy.firestoned.io/v1beta1\nkind: Bind9Cluster\nmetadata: {name: c, namespace: \
             dns}\nspec:\n  primary:\n    rndcKey: {autoRotate: true, rotateAfter: 720h, \
             algorithm: hmac-sha512}\n",
        );
        let report = evaluate(&documents, &PolicyConfig::default(), now());
        let instance = &report.objects[0];
        assert_eq!(instance.origin.kind, "Bind9Instance");
        assert!(
            instance.allowed && instance.warnings.is_empty(),
            "{:?}",
            instance.warnings
        );
        assert_eq!(instance.patch, json!([]));
    }

    #[test]
    fn objects_that_are_not_ours_are_skipped_with_a_reason() {
        let (documents, _) = docs(
            "s.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\napiVersion: v1\nkind: \
             Secret\nmetadata: {name: y}\n---\nrndcKey: {algorithm: hmac-sha512}\n",
        );
        let report = evaluate(&documents, &PolicyConfig::default(), now());
        assert!(report.objects.is_empty());
        let reasons: Vec<&str> = report.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "ConfigMap (v1) is not checked by rndc-warden",
                "Secret without the bindy.firestoned.io/rndc-key=true label",
                "not a Kubernetes object (no apiVersion and kind)",
            ]
        );
    }

    #[test]
    fn a_field_of_the_wrong_type_is_a_denial_naming_the_field() {
        let (documents, _) = docs(
            "t.yaml",
            "apiVersion: bindy.firestoned.io/v1beta1\nkind: Bind9Instance\nmetadata: {name: i}\n\
             spec: {role: primary, rndcKey: {autoRotate: \"yes\"}}\n",
        );
        let report = evaluate(&documents, &PolicyConfig::default(), now());
        assert_eq!(
            report.objects[0].denials,
            [
                "spec.rndcKey.autoRotate: expected true or false, found a string (the API server \
                 rejects this object)"
            ]
        );
    }

    #[test]
    fn exit_codes_follow_errors_then_denials() {
        let mut report = Report::default();
        assert_eq!(report.exit_code(), ExitCode::SUCCESS);
        report.objects.push(ObjectReport {
            origin: Origin {
                source: "-".into(),
                line: 1,
                api_version: API_VERSION.into(),
                kind: "Bind9Instance".into(),
                namespace: None,
                name: "i".into(),
            },
            allowed: false,
            denials: vec!["no".into()],
            warnings: vec![],
            patch: json!([]),
        });
        assert_eq!(report.exit_code(), ExitCode::from(1));
        report.errors.push(InputError {
            file: "-".into(),
            line: 1,
            column: 1,
            message: "bad".into(),
        });
        assert_eq!(report.exit_code(), ExitCode::from(2));
    }
}
