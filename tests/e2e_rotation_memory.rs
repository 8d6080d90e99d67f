//! Memory of the real `rndc-warden serve` binary with N instances and N key Secrets cached
//! (printed, not asserted; target < 100 MiB at N = 10,000). N defaults to 10,000
//! (`ROTATION_MEMORY_N`); `ROTATION_MEMORY_DEPLOYMENTS=1` also creates a Deployment per instance.
//! The binary has listed everything once `rndc_warden_rotation_seconds_until` has a series per
//! instance (set on the first pass after the caches sync). A test binary of its own so that the
//! object creation does not compete with other tests.

mod rotation_support;

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use futures::{StreamExt, stream};
use kube::Api;
use kube::api::{Patch, PatchParams};
use rndc_warden::api::Bind9Instance;
use rndc_warden::policy::{Algorithm, format_time};
use rotation_support::binary::{WardenProcess, memory_kib};
use rotation_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_with_ten_thousand_instances_and_secrets_cached() {
    let n: usize = std::env::var("ROTATION_MEMORY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let deployments = std::env::var("ROTATION_MEMORY_DEPLOYMENTS").is_ok_and(|v| v == "1");
    let t = RotationEnv::for_binary("rot-memory").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());

    // An idle binary first: the baseline. Both runs share one Lease identity, so the second
    // holds the Lease at once although the first was killed without releasing it.
    let mut idle = WardenProcess::new("memory-replica", t.sa_kubeconfig(), &ns, &[]);
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
                    &format!("{name}-rndc"),
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

    let mut warden = WardenProcess::new(
        "memory-replica",
        t.sa_kubeconfig(),
        &ns,
        &["--resync-period", "1m"],
    );
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
    let mut admission =
        WardenProcess::new("memory-admission", t.sa_kubeconfig(), &ns, &[]).without_rotation();
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
