//! `rndc-warden audit` and `rndc-warden rotate` through the real binary with `KUBECONFIG`, as a
//! user with exactly the rights `docs/security.md` lists for them (get/list on instances, clusters
//! and Secrets; `rotate` also patch on Secrets), next to the real `serve` binary whose rotator
//! carries out the requested rotations.

mod rotation_support;

use std::collections::BTreeMap;

use chrono::{TimeDelta, Utc};
use kube::Api;
use kube::api::DeleteParams;
use rndc_warden::api::{Bind9Instance, RndcKeyConfig, RndcSecretRef};
use rndc_warden::policy::Algorithm;
use rotation_support::binary::{WardenProcess, run_cli};
use rotation_support::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_and_rotate_through_the_binary_report_verdicts_exit_codes_and_rotate_for_real() {
    let t = RotationEnv::for_binary("rot-cli").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let user = t
        .identity_with_rules(
            "dns-admin",
            vec![
                rule(
                    &["bindy.firestoned.io"],
                    &["bind9instances", "bind9clusters"],
                    &["get", "list"],
                ),
                rule(&[""], &["secrets"], &["get", "list", "patch"]),
            ],
        )
        .await;
    let kubeconfig = user.kubeconfig_path.clone();
    let day = TimeDelta::hours(24);
    let auto = || standalone(Some(rndc_key(true, "24h", "hmac-sha256")));
    let cases: [Case; 5] = [
        (
            "ok",
            auto,
            Some((Algorithm::HmacSha256, TimeDelta::hours(2))),
        ),
        (
            "overdue",
            auto,
            Some((Algorithm::HmacSha256, TimeDelta::hours(26))),
        ),
        (
            "manual",
            || standalone(Some(rndc_key(false, "24h", "hmac-sha256"))),
            Some((Algorithm::HmacSha256, TimeDelta::hours(2))),
        ),
        (
            "weak",
            auto,
            Some((Algorithm::HmacSha1, TimeDelta::hours(2))),
        ),
        (
            "user",
            || {
                standalone(Some(RndcKeyConfig {
                    secret_ref: Some(RndcSecretRef {
                        name: "my-own-key".into(),
                        ..RndcSecretRef::default()
                    }),
                    ..RndcKeyConfig::default()
                }))
            },
            None,
        ),
    ];
    for (name, spec, secret) in &cases {
        create_deployment(&c, &ns, name).await;
        if let Some((algorithm, age)) = secret {
            create_key_secret(
                &c,
                &ns,
                &format!("{name}-rndc-key"),
                *algorithm,
                Utc::now() - *age,
                day,
            )
            .await;
        }
        create_instance(&c, &ns, name, spec()).await;
    }
    create_key_secret(
        &c,
        &ns,
        "my-own-key",
        Algorithm::HmacSha256,
        Utc::now() - TimeDelta::days(400),
        day,
    )
    .await;

    // Audit before any rotator runs: every verdict once.
    let (code, out, err) = run_cli(&kubeconfig, &["audit", "-n", &ns, "--output", "json"]).await;
    assert_eq!(
        code, 1,
        "OVERDUE, NOT-ROTATING and WEAK rows fail the audit: {err}"
    );
    let rows: Vec<Value> = serde_json::from_str(&out).expect("audit JSON");
    let verdicts: BTreeMap<&str, &str> = rows
        .iter()
        .map(|r| {
            (
                r["instance"].as_str().expect("instance"),
                r["verdict"].as_str().expect("verdict"),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        BTreeMap::from([
            ("manual", "NOT-ROTATING"),
            ("ok", "OK"),
            ("overdue", "OVERDUE"),
            ("user", "USER-MANAGED"),
            ("weak", "WEAK-ALGORITHM"),
        ]),
        "{out}"
    );
    let ok_row = rows.iter().find(|r| r["instance"] == "ok").expect("ok row");
    assert_eq!(ok_row["secret"], "ok-rndc-key");
    assert_eq!(ok_row["rotations"], "0");
    assert_eq!(ok_row["algorithm"], "hmac-sha256");

    let (code, table, _) = run_cli(&kubeconfig, &["audit", "-n", &ns, "--output", "table"]).await;
    assert_eq!(code, 1);
    let header = table.lines().next().unwrap_or_default();
    for column in [
        "NAMESPACE",
        "INSTANCE",
        "SECRET",
        "POLICY",
        "VERDICT",
        "ROTATIONS",
    ] {
        assert!(header.contains(column), "{table}");
    }
    for (name, verdict) in &verdicts {
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(name) && l.ends_with(verdict)),
            "table row {name} … {verdict}:\n{table}"
        );
    }
    let (code, csv, _) = run_cli(&kubeconfig, &["audit", "-n", &ns, "--output", "csv"]).await;
    assert_eq!(code, 1);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 6, "header and five rows:\n{csv}");
    assert!(lines[0].to_ascii_lowercase().contains("verdict"), "{csv}");
    assert!(
        lines[1..].iter().any(|l| l.contains("WEAK-ALGORITHM")),
        "{csv}"
    );

    // The rotator: the overdue key is rotated at once.
    let mut warden = WardenProcess::new(
        "cli-replica",
        t.sa_kubeconfig(),
        &ns,
        &["--resync-period", "5s"],
    );
    warden.start();
    wait_secret(&c, &ns, "overdue-rndc-key", "overdue rotated", |s| {
        count(s) == 1
    })
    .await;

    // rotate: requested, then carried out by the running rotator.
    let (code, out, err) = run_cli(&kubeconfig, &["rotate", "ok", "-n", &ns]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("Requested rotation of Secret {ns}/ok-rndc-key")),
        "{out}"
    );
    let names = vec!["ok".to_owned()];
    wait_converged(&c, &ns, &names, Algorithm::HmacSha256, 1, WAIT).await;

    // The fresh key is under an hour old: refused (exit 1) unless --force.
    let (code, _, err) = run_cli(&kubeconfig, &["rotate", "ok", "-n", &ns]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--force"),
        "the refusal says how to override: {err}"
    );
    assert_eq!(
        count(&get_secret(&c, &ns, "ok-rndc-key").await.expect("secret")),
        1
    );
    let (code, out, err) = run_cli(&kubeconfig, &["rotate", "ok", "-n", &ns, "--force"]).await;
    assert_eq!(code, 0, "{out}{err}");
    wait_converged(&c, &ns, &names, Algorithm::HmacSha256, 2, WAIT).await;

    // A deleted Secret is re-provisioned as the next rotation: the count goes on from the
    // instance status instead of restarting at 0.
    let before = get_secret(&c, &ns, "ok-rndc-key").await.expect("secret");
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(c.clone(), &ns)
        .delete("ok-rndc-key", &DeleteParams::default())
        .await
        .expect("delete Secret");
    let again = wait_secret(&c, &ns, "ok-rndc-key", "re-provisioned", |s| {
        s.metadata.uid != before.metadata.uid && created_at(s).is_some()
    })
    .await;
    assert_eq!(
        count(&again),
        3,
        "the count continues after re-provisioning"
    );
    wait_converged(&c, &ns, &names, Algorithm::HmacSha256, 3, WAIT).await;

    // Refusals (exit 1) and usage/connection errors (exit 2).
    for (instance, expect) in [
        ("manual", "autoRotate is off"),
        ("user", "managed by its owner"),
        ("missing", "not found"),
    ] {
        let (code, _, err) = run_cli(&kubeconfig, &["rotate", instance, "-n", &ns]).await;
        assert_eq!(code, 1, "rotate {instance}: {err}");
        assert!(err.contains(expect), "rotate {instance}: {err}");
    }
    let (code, _, _) = run_cli(&kubeconfig, &["rotate", "-n", &ns]).await;
    assert_eq!(code, 2, "a missing instance argument is a usage error");
    let dead = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(
        dead.path(),
        t.env
            .cp
            .token_kubeconfig_yaml("nobody", "x")
            .replace(t.env.cp.server_url(), "https://127.0.0.1:1"),
    )
    .expect("kubeconfig");
    let (code, _, err) = run_cli(dead.path(), &["audit", "-n", &ns]).await;
    assert_eq!(code, 2, "an unreachable apiserver: {err}");
    let (code, _, err) = run_cli(dead.path(), &["rotate", "ok", "-n", &ns]).await;
    assert_eq!(code, 2, "an unreachable apiserver: {err}");

    // Once only OK and USER-MANAGED rows remain, the audit passes.
    let instances: Api<Bind9Instance> = Api::namespaced(c.clone(), &ns);
    for name in ["manual", "weak"] {
        instances
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete instance");
    }
    let (code, out, err) = run_cli(&kubeconfig, &["audit", "-n", &ns]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.lines()
            .skip(1)
            .all(|l| l.ends_with("OK") || l.ends_with("USER-MANAGED")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().nth(1) == Some("ok")
                && l.split_whitespace().nth_back(1) == Some("3")),
        "the ok row shows 3 rotations:\n{out}"
    );
    warden.assert_running();
}

/// An instance name, its spec and, when it has a key Secret, the key's algorithm and age.
type Case = (
    &'static str,
    fn() -> rndc_warden::api::Bind9InstanceSpec,
    Option<(Algorithm, TimeDelta)>,
);
