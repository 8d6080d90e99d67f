//! `rndc-warden audit`: a compliance report with one row per instance (policy, algorithm, key
//! created, next rotation, rotations, verdict), from the cluster through the normal kubeconfig.

use std::collections::BTreeMap;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

use crate::api::{Bind9Cluster, Bind9Instance, EVENT_RNDC_KEY_ROTATION_FAILED};
use crate::config::PolicyArgs;
use crate::policy::{
    AuditFinding, KeyAnnotations, PolicyConfig, Verdict, audit, effective_config, format_time,
    key_facts,
};
use crate::rotation::naming::{self, mounted_rndc_secret};

/// Output formats of `audit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// A JSON array of rows.
    Json,
    /// Comma-separated values with a header.
    Csv,
}

/// Flags of `audit`.
#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// Namespace to audit (default: the kubeconfig's namespace).
    #[arg(
        short,
        long,
        env = "RNDC_WARDEN_NAMESPACE",
        conflicts_with = "all_namespaces"
    )]
    pub namespace: Option<String>,
    /// Audit every namespace.
    #[arg(short = 'A', long, default_value_t = false)]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(
        short,
        long,
        value_enum,
        env = "RNDC_WARDEN_AUDIT_OUTPUT",
        default_value = "table"
    )]
    pub output: Output,
    /// Name of the Deployment an instance runs in (`{instance}` is replaced), as the rotator's
    /// flag of the same name: its RNDC key volume names the Secret a generated key lives in.
    #[arg(
        long,
        env = "RNDC_WARDEN_DEPLOYMENT_NAME_TEMPLATE",
        default_value = "{instance}"
    )]
    pub deployment_name_template: String,
    /// Defaults and policy (must match the rotator's).
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// What the cluster holds for the report, besides the policy.
#[derive(Debug, Default, Clone)]
pub struct Inventory {
    /// Every `Bind9Instance`.
    pub instances: Vec<Bind9Instance>,
    /// Every `Bind9Cluster`.
    pub clusters: Vec<Bind9Cluster>,
    /// Every Secret (the key Secrets among them are found by name).
    pub secrets: Vec<Secret>,
    /// Every Deployment (an instance's RNDC volume names its generated key's Secret).
    pub deployments: Vec<Deployment>,
    /// The latest `RndcKeyRotationFailed` Event per instance (namespace, name): when and why.
    pub failures: BTreeMap<(String, String), (DateTime<Utc>, String)>,
    /// `{instance}` template of Deployment names.
    pub deployment_name_template: String,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// Namespace.
    pub namespace: String,
    /// Instance name.
    pub instance: String,
    /// Key Secret name.
    pub secret: String,
    /// `auto <rotateAfter>`, `manual` or `user-managed`, with the level it came from.
    pub policy: String,
    /// Algorithm of the stored key (or the configured one if there is none).
    pub algorithm: String,
    /// `rndc-created-at`.
    pub key_created: String,
    /// Due time for rotating keys.
    pub next_rotation: String,
    /// `rndc-rotation-count`.
    pub rotations: String,
    /// `OK`, `OVERDUE`, `NOT-ROTATING`, `WEAK-ALGORITHM`, `USER-MANAGED` or `FAIL`.
    pub verdict: Verdict,
    /// One sentence of detail.
    pub detail: String,
}

/// Builds the report rows (pure: the objects, the policy and `now` are passed in). Each
/// instance's Secret is found as the rotator finds it ([`crate::rotation::naming`]); a stored key
/// below policy, or a rotation failure reported after the current key was created, is `FAIL`.
pub fn rows(inventory: &Inventory, policy: &PolicyConfig, now: DateTime<Utc>) -> Vec<Row> {
    let clusters: BTreeMap<(String, String), &Bind9Cluster> = inventory
        .clusters
        .iter()
        .map(|c| ((c.namespace().unwrap_or_default(), c.name_any()), c))
        .collect();
    let secrets: BTreeMap<(String, String), &Secret> = inventory
        .secrets
        .iter()
        .map(|s| ((s.namespace().unwrap_or_default(), s.name_any()), s))
        .collect();
    let deployments: BTreeMap<(String, String), &Deployment> = inventory
        .deployments
        .iter()
        .map(|d| ((d.namespace().unwrap_or_default(), d.name_any()), d))
        .collect();
    let template = if inventory.deployment_name_template.is_empty() {
        "{instance}"
    } else {
        inventory.deployment_name_template.as_str()
    };
    let mut out = Vec::new();
    for instance in &inventory.instances {
        let namespace = instance.namespace().unwrap_or_default();
        let name = instance.name_any();
        let cluster = instance
            .spec
            .cluster_ref
            .as_deref()
            .and_then(|c| clusters.get(&(namespace.clone(), c.to_owned())).copied());
        let deployment_name = template.replace("{instance}", &name);
        let mounted = deployments
            .get(&(namespace.clone(), deployment_name))
            .and_then(|d| mounted_rndc_secret(d));
        let config = match effective_config(instance, cluster, policy) {
            Ok(c) => naming::resolve(c, mounted),
            Err(e) => {
                out.push(Row {
                    namespace,
                    instance: name,
                    secret: "-".into(),
                    policy: "unknown".into(),
                    algorithm: "-".into(),
                    key_created: "-".into(),
                    next_rotation: "-".into(),
                    rotations: "-".into(),
                    verdict: Verdict::NotRotating,
                    detail: e.to_string(),
                });
                continue;
            }
        };
        let secret = secrets
            .get(&(namespace.clone(), config.secret_name.clone()))
            .copied();
        let mut finding = audit(&config, secret, now, policy);
        let key_created = secret.and_then(|s| KeyAnnotations::of(s).created_at);
        if finding.verdict != Verdict::Fail
            && config.is_managed()
            && let Some((at, note)) = inventory.failures.get(&(namespace.clone(), name.clone()))
            && key_created.is_none_or(|created| *at >= created)
        {
            finding = AuditFinding {
                verdict: Verdict::Fail,
                due_at: finding.due_at,
                detail: format!(
                    "rotation failing since the key was created ({}): {note}",
                    format_time(*at)
                ),
            };
        }
        if secret.is_none() && config.is_managed() && finding.verdict == Verdict::Overdue {
            finding.detail = format!(
                "Secret {} does not exist (the Bindy operator creates it; or run the rotator with \
                 provision enabled)",
                config.secret_name
            );
        }
        let annotations = secret.map(KeyAnnotations::of);
        let algorithm = secret
            .and_then(|s| key_facts(s, policy).0.algorithm)
            .unwrap_or(config.algorithm);
        let policy_text = if !config.is_managed() {
            "user-managed".to_owned()
        } else if config.auto_rotate {
            format!("auto {} ({})", config.rotate_after, config.source.path())
        } else {
            format!("manual ({})", config.source.path())
        };
        out.push(Row {
            namespace,
            instance: name,
            secret: config.secret_name.clone(),
            policy: policy_text,
            algorithm: algorithm.to_string(),
            key_created: annotations
                .as_ref()
                .and_then(|a| a.created_at)
                .map_or_else(|| "-".to_owned(), format_time),
            next_rotation: finding
                .due_at
                .filter(|_| config.rotates())
                .map_or_else(|| "-".to_owned(), format_time),
            rotations: annotations
                .as_ref()
                .filter(|_| secret.is_some())
                .map_or_else(|| "-".to_owned(), |a| a.rotation_count.to_string()),
            verdict: finding.verdict,
            detail: finding.detail,
        });
    }
    out.sort_by(|a, b| (&a.namespace, &a.instance).cmp(&(&b.namespace, &b.instance)));
    out
}

const HEADERS: [&str; 9] = [
    "NAMESPACE",
    "INSTANCE",
    "SECRET",
    "POLICY",
    "ALGORITHM",
    "KEY CREATED",
    "NEXT ROTATION",
    "ROTATIONS",
    "VERDICT",
];

fn fields(row: &Row) -> [&str; 9] {
    [
        &row.namespace,
        &row.instance,
        &row.secret,
        &row.policy,
        &row.algorithm,
        &row.key_created,
        &row.next_rotation,
        &row.rotations,
        row.verdict.as_str(),
    ]
}

/// Renders the rows in the chosen format.
pub fn render(rows: &[Row], output: Output) -> String {
    match output {
        Output::Json => {
            serde_json::to_string_pretty(rows).unwrap_or_else(|_| "[]".to_owned()) + "\n"
        }
        Output::Csv => {
            let quote = |v: &str| {
                if v.contains([',', '"', '\n']) {
                    format!("\"{}\"", v.replace('"', "\"\""))
                } else {
                    v.to_owned()
                }
            };
            let mut out = HEADERS
                .map(|h| h.to_lowercase().replace(' ', "_"))
                .join(",");
            out.push_str(",detail\n");
            for row in rows {
                let mut line: Vec<String> = fields(row).iter().map(|v| quote(v)).collect();
                line.push(quote(&row.detail));
                out.push_str(&line.join(","));
                out.push('\n');
            }
            out
        }
        Output::Table => {
            let mut widths = HEADERS.map(str::len);
            for row in rows {
                for (w, v) in widths.iter_mut().zip(fields(row)) {
                    *w = (*w).max(v.len());
                }
            }
            let line = |values: [&str; 9]| {
                let cells: Vec<String> = values
                    .iter()
                    .zip(widths)
                    .map(|(v, w)| format!("{v:<w$}"))
                    .collect();
                cells.join("  ").trim_end().to_owned() + "\n"
            };
            let mut out = line(HEADERS);
            for row in rows {
                out.push_str(&line(fields(row)));
            }
            out
        }
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The latest `RndcKeyRotationFailed` Event of each instance (best effort: an identity that
/// may not list Events gets none).
async fn failures(
    client: &Client,
    namespace: Option<&str>,
) -> BTreeMap<(String, String), (DateTime<Utc>, String)> {
    let events = match api::<Event>(client, namespace)
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list.items,
        Err(error) => {
            tracing::debug!(%error, "listing Events failed; rotation failures are not reported");
            return BTreeMap::new();
        }
    };
    let mut out: BTreeMap<(String, String), (DateTime<Utc>, String)> = BTreeMap::new();
    for event in events {
        if event.reason.as_deref() != Some(EVENT_RNDC_KEY_ROTATION_FAILED) {
            continue;
        }
        let Some(regarding) = event.regarding.as_ref() else {
            continue;
        };
        if regarding.kind.as_deref() != Some("Bind9Instance") {
            continue;
        }
        let at = event
            .series
            .as_ref()
            .map(|s| s.last_observed_time.0)
            .or(event.event_time.as_ref().map(|t| t.0))
            .or(event.deprecated_last_timestamp.as_ref().map(|t| t.0))
            .and_then(|t| {
                DateTime::<Utc>::from_timestamp(t.as_second(), t.subsec_nanosecond() as u32)
            });
        let (Some(at), Some(ns), Some(name)) =
            (at, regarding.namespace.clone(), regarding.name.clone())
        else {
            continue;
        };
        let note = event.note.clone().unwrap_or_default();
        let entry = out.entry((ns, name)).or_insert((at, note.clone()));
        if at > entry.0 {
            *entry = (at, note);
        }
    }
    out
}

/// Lists what the report needs from the cluster.
pub async fn collect(
    client: &Client,
    namespace: Option<&str>,
    policy: &PolicyConfig,
    deployment_name_template: &str,
) -> Result<Vec<Row>, kube::Error> {
    let lp = ListParams::default();
    let inventory = Inventory {
        instances: api::<Bind9Instance>(client, namespace)
            .list(&lp)
            .await?
            .items,
        clusters: api::<Bind9Cluster>(client, namespace)
            .list(&lp)
            .await?
            .items,
        secrets: api::<Secret>(client, namespace).list(&lp).await?.items,
        deployments: match api::<Deployment>(client, namespace).list(&lp).await {
            Ok(list) => list.items,
            Err(error) => {
                eprintln!(
                    "warning: cannot list Deployments ({error}); key Secrets are named by the \
                     template, not by the Secret each instance's pods mount"
                );
                Vec::new()
            }
        },
        failures: failures(client, namespace).await,
        deployment_name_template: deployment_name_template.to_owned(),
    };
    Ok(rows(&inventory, policy, Utc::now()))
}

/// Runs `audit` with `client`; exit code 0 when every row is OK or USER-MANAGED, 1 otherwise, 2
/// on errors.
pub async fn run(client: &Client, policy: &PolicyConfig, args: &AuditArgs) -> ExitCode {
    let namespace = if args.all_namespaces {
        None
    } else {
        Some(
            args.namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_owned()),
        )
    };
    match collect(
        client,
        namespace.as_deref(),
        policy,
        &args.deployment_name_template,
    )
    .await
    {
        Ok(rows) => {
            print!("{}", render(&rows, args.output));
            if rows.iter().all(|r| r.verdict.is_clean()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Bind9InstanceSpec, RndcKeyConfig, RndcSecretRef};
    use crate::policy::{Algorithm, key_secret_from_bytes, rotation_annotations};
    use chrono::{TimeDelta, TimeZone};

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .single()
            .expect("valid")
    }

    fn instance(name: &str, block: Option<RndcKeyConfig>) -> Bind9Instance {
        let mut i = Bind9Instance::new(
            name,
            Bind9InstanceSpec {
                rndc_key: block,
                ..Default::default()
            },
        );
        i.metadata.namespace = Some("dns".into());
        i
    }

    fn secret(name: &str, algorithm: Algorithm, created: DateTime<Utc>, count: u32) -> Secret {
        let data = key_secret_from_bytes(
            "bindy-operator",
            algorithm,
            &vec![1; algorithm.output_len()],
        )
        .expect("key")
        .into_data();
        let mut s = Secret {
            data: Some(data),
            ..Default::default()
        };
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("dns".into());
        s.metadata.annotations = Some(rotation_annotations(created, count, None));
        s.metadata.labels = Some(BTreeMap::from([(
            crate::api::LABEL_RNDC_KEY.to_owned(),
            crate::api::LABEL_RNDC_KEY_VALUE.to_owned(),
        )]));
        s
    }

    fn inventory(instances: &[Bind9Instance], secrets: &[Secret]) -> Inventory {
        Inventory {
            instances: instances.to_vec(),
            secrets: secrets.to_vec(),
            ..Inventory::default()
        }
    }

    fn rotating(after: &str) -> Option<RndcKeyConfig> {
        Some(RndcKeyConfig {
            auto_rotate: Some(true),
            rotate_after: Some(after.into()),
            ..Default::default()
        })
    }

    #[test]
    fn each_instance_gets_a_row_with_its_verdict() {
        let by_ref = RndcKeyConfig {
            secret_ref: Some(RndcSecretRef {
                name: "mine".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let instances = [
            instance("ok", rotating("30d")),
            instance("late", rotating("1d")),
            instance("manual", None),
            instance("user", Some(by_ref)),
        ];
        let secrets = [
            secret(
                "ok-rndc-key",
                Algorithm::HmacSha256,
                now() - TimeDelta::days(1),
                3,
            ),
            secret(
                "late-rndc-key",
                Algorithm::HmacSha256,
                now() - TimeDelta::days(3),
                0,
            ),
            secret("manual-rndc-key", Algorithm::HmacSha256, now(), 0),
            secret("mine", Algorithm::HmacSha256, now(), 0),
        ];
        let rows = rows(
            &inventory(&instances, &secrets),
            &PolicyConfig::default(),
            now(),
        );
        let verdicts: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.instance.as_str(), r.verdict.as_str()))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("late", "OVERDUE"),
                ("manual", "NOT-ROTATING"),
                ("ok", "OK"),
                ("user", "USER-MANAGED")
            ]
        );
        let ok = rows.iter().find(|r| r.instance == "ok").expect("row");
        assert_eq!(ok.rotations, "3");
        assert_eq!(ok.next_rotation, "2026-03-30T12:00:00Z");
        assert!(ok.policy.starts_with("auto 30d"), "{}", ok.policy);
    }

    #[test]
    fn a_weak_stored_algorithm_is_flagged() {
        let rows = rows(
            &inventory(
                &[instance("old", rotating("30d"))],
                &[secret("old-rndc-key", Algorithm::HmacSha1, now(), 0)],
            ),
            &PolicyConfig::default(),
            now(),
        );
        assert_eq!(rows[0].verdict, Verdict::WeakAlgorithm);
        assert_eq!(rows[0].algorithm, "hmac-sha1");
    }

    #[test]
    fn renderings_carry_every_row() {
        let rows = rows(
            &inventory(&[instance("a", rotating("30d"))], &[]),
            &PolicyConfig::default(),
            now(),
        );
        let table = render(&rows, Output::Table);
        assert!(
            table.starts_with("NAMESPACE") && table.contains("OVERDUE"),
            "{table}"
        );
        let csv = render(&rows, Output::Csv);
        assert_eq!(csv.lines().count(), 2);
        let json: serde_json::Value =
            serde_json::from_str(&render(&rows, Output::Json)).expect("json");
        assert_eq!(json[0]["verdict"], "OVERDUE");
        assert_eq!(json[0]["keyCreated"], "-");
    }
}
