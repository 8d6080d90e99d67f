//! Memory of the real `rndc-warden serve` binary with N instances and N key Secrets cached
//! (printed, not asserted; target < 100 MiB at N = 10,000). N defaults to 10,000
//! (`ROTATION_MEMORY_N`); `ROTATION_MEMORY_DEPLOYMENTS=1` also creates a Deployment per instance.
//! The binary has listed everything once `rndc_warden_rotation_seconds_until` has a series per
//! instance (set on the first pass after the caches sync). A test binary of its own so that the
//! object creation does not compete with other tests.
//!
//! The binary is the one Cargo built for this test (a debug build under `cargo test`) unless
//! `ROTATION_MEMORY_BINARY` names another, e.g. the release build that ships
//! (`cargo xtask bench rotation-memory` builds it and sets the variable). Every start gets the
//! allocator environment the Helm chart sets (`MIMALLOC_*` in the Deployment template), unless
//! the test's own environment already sets that variable (to compare settings).

mod rotation_support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use futures::{StreamExt, stream};
use kube::Api;
use kube::api::{Patch, PatchParams};
use rndc_warden::api::Bind9Instance;
use rndc_warden::policy::{Algorithm, format_time};
use rotation_support::binary::{WardenProcess, memory_kib};
use rotation_support::*;

/// The `MIMALLOC_*` variables the chart's Deployment sets, with the test's own environment
/// taking precedence.
fn allocator_env() -> Vec<(String, String)> {
    let template = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/rndc-warden/templates/deployment.yaml"
    );
    let text = std::fs::read_to_string(template).expect("chart Deployment template");
    let mut lines = text.lines().map(str::trim);
    let mut envs = Vec::new();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .strip_prefix("- name: ")
            .filter(|n| n.starts_with("MIMALLOC_"))
        else {
            continue;
        };
        let value = lines
            .next()
            .and_then(|l| l.strip_prefix("value: "))
            .map(|v| v.trim_matches('"'))
            .expect("a literal value after the env name");
        envs.push((name.to_owned(), value.to_owned()));
    }
    for (name, value) in std::env::vars().filter(|(k, _)| k.starts_with("MIMALLOC_")) {
        envs.retain(|(k, _)| *k != name);
        envs.push((name, value));
    }
    envs
}

/// A replica running the binary under test with the allocator environment.
fn replica(name: &str, t: &RotationEnv, extra: &[&str]) -> WardenProcess {
    let binary = std::env::var_os("ROTATION_MEMORY_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rndc-warden")));
    let mut process =
        WardenProcess::new(name, t.sa_kubeconfig(), t.ns(), extra).with_binary(&binary);
    for (k, v) in allocator_env() {
        process = process.with_env(&k, &v);
    }
    process
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_with_ten_thousand_instances_and_secrets_cached() {
    let n: usize = std::env::var("ROTATION_MEMORY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let deployments = std::env::var("ROTATION_MEMORY_DEPLOYMENTS").is_ok_and(|v| v == "1");
    let t = RotationEnv::for_binary("rot-memory").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let binary = std::env::var("ROTATION_MEMORY_BINARY")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_rndc-warden").to_owned());
    let envs: Vec<String> = allocator_env()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!(
        "ROTATION MEMORY: binary {binary}; allocator environment: {}",
        if envs.is_empty() {
            "none".to_owned()
        } else {
            envs.join(" ")
        }
    );

    // An idle binary first: the baseline. Both runs share one Lease identity, so the second
    // holds the Lease at once although the first was killed without releasing it.
    let mut idle = replica("memory-replica", &t, &[]);
    idle.start();
    idle.wait_series(0, WAIT).await;
    rndc_warden_testkit::wait_for("idle binary is the leader", WAIT, || idle.is_leader())
        .await
        .expect("leader");
    let (idle_hwm, idle_rss) = memory_kib(idle.pid());
    idle.kill();

    // Keys created an hour ago, rotating every 90 days: nothing is due, so the rotator only
    // lists, plans and writes statuses.
    let created = Utc::now() - TimeDelta::hours(1);
    let interval = TimeDelta::hours(2160);
    let started = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(48, |i| {
            let (c, ns) = (c.clone(), ns.clone());
            async move {
                let name = format!("m{i:05}");
                create_key_secret(
                    &c,
                    &ns,
                    &format!("{name}-rndc-key"),
                    Algorithm::HmacSha256,
                    created,
                    interval,
                )
                .await;
                create_instance(
                    &c,
                    &ns,
                    &name,
                    standalone(Some(rndc_key(true, "2160h", "hmac-sha256"))),
                )
                .await;
                if deployments {
                    create_deployment(&c, &ns, &name).await;
                }
            }
        })
        .await;
    let create_time = started.elapsed();

    let mut warden = replica("memory-replica", &t, &["--resync-period", "1m"]);
    warden.start();
    let listed = warden.wait_series(n, Duration::from_secs(300)).await;
    let (hwm, rss) = memory_kib(warden.pid());
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "ROTATION MEMORY: n={n} instances + {n} Secrets{} created in {:.1}s; listed and planned {:.1}s \
         after start; VmRSS {:.1} MiB, VmHWM {:.1} MiB (idle binary, empty namespace: VmRSS {:.1} MiB, \
         VmHWM {:.1} MiB)",
        if deployments { " + Deployments" } else { "" },
        create_time.as_secs_f64(),
        listed.as_secs_f64(),
        mib(rss),
        mib(hwm),
        mib(idle_rss),
        mib(idle_hwm),
    );
    warden.assert_running();
    warden.kill();
    println!(
        "ROTATION MEMORY: (that run had a status write queued for every instance; next, with every \
         status already in sync)"
    );

    // Steady state: every status already mirrors its Secret, so the rotator has nothing to do
    // and holds only its caches.
    let status = serde_json::json!({
        "createdAt": format_time(created),
        "rotateAt": format_time(created + interval),
        "lastRotatedAt": null,
        "rotationCount": 0,
    });
    let patch = serde_json::json!({
        "status": { "rndcKeyRotationStatus": status, "rndcKeyRotation": status }
    });
    let instances: Api<Bind9Instance> = Api::namespaced(c.clone(), &ns);
    stream::iter(0..n)
        .for_each_concurrent(48, |i| {
            let (instances, patch) = (instances.clone(), &patch);
            async move {
                instances
                    .patch_status(
                        &format!("m{i:05}"),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await
                    .expect("status");
            }
        })
        .await;
    warden.start();
    let listed = warden.wait_series(n, Duration::from_secs(300)).await;
    let (hwm, rss) = memory_kib(warden.pid());
    println!(
        "ROTATION MEMORY: steady state, n={n}: listed and planned {:.1}s after start; VmRSS {:.1} MiB, \
         VmHWM {:.1} MiB",
        listed.as_secs_f64(),
        mib(rss),
        mib(hwm),
    );
    warden.assert_running();
    warden.kill();

    // The same objects with the rotator off: what admission's own watch caches cost.
    let mut admission = replica("memory-admission", &t, &[]).without_rotation();
    admission.start();
    admission.wait_ready(Duration::from_secs(300)).await;
    let (admission_hwm, admission_rss) = memory_kib(admission.pid());
    println!(
        "ROTATION MEMORY: the same with --rotation false (admission caches only): VmRSS {:.1} MiB, \
         VmHWM {:.1} MiB",
        mib(admission_rss),
        mib(admission_hwm),
    );
}
