//! Issue 12 (11): `serve` started a few seconds after Bindy's CRDs were applied (a GitOps sync,
//! two Helm installs in a row) becomes ready, every time. Each round gets a control plane of its
//! own (no other test's lists can warm the apiserver's watch caches, and no CRD has to be
//! deleted), applies Bindy's twelve CRDs, waits until they are Established, waits a few seconds
//! more, then starts `serve` with nothing in between that lists the new kinds.
//!
//! The cause was not the apiserver: every list answered at once, but admission's readiness
//! waited on the same kube `Store`s as the rotator, and kube wakes only the last of several
//! waiters (`src/cache.rs`, `Synced`; the unit test there is deterministic). `E2E_LOG=<filter>`
//! sets the replicas' log filter.

mod rotation_support;

use std::time::Duration;

use kube::Api;
use kube::api::PostParams;
use rndc_warden_testkit::{ControlPlane, bindy};
use rotation_support::binary::WardenProcess;

/// Rounds, and the pause after the CRDs are Established in each (the issue: "a few seconds").
const PAUSES: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(3),
    Duration::from_secs(4),
    Duration::from_secs(6),
];
/// Readiness deadline (the hang in the issue lasted over 60 s and never ended on its own).
const READY: Duration = Duration::from_secs(45);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_started_seconds_after_bindy_crds_are_applied_becomes_ready_every_time() {
    let crds = bindy::upstream_crd_documents()
        .expect("Bindy's CRDs")
        .join("\n---\n");
    for (round, pause) in PAUSES.iter().enumerate() {
        let cp = ControlPlane::start().await.expect("a control plane");
        let client = cp.client().expect("client");
        let ns = "rndc-warden";
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))
                    .expect("namespace"),
            )
            .await
            .expect("namespace");
        rndc_warden_testkit::apply_crds(&client, &crds, Duration::from_secs(60))
            .await
            .expect("Bindy's CRDs are Established");
        tokio::time::sleep(*pause).await;
        let mut warden =
            WardenProcess::beside_bindy(&format!("ready-{round}"), cp.kubeconfig_path(), ns, &[]);
        if let Ok(filter) = std::env::var("E2E_LOG") {
            warden = warden.with_env("RNDC_WARDEN_LOG_LEVEL", &filter);
        }
        warden.start();
        let took = warden.wait_ready(READY).await;
        eprintln!(
            "round {round}: started {pause:?} after the CRDs were Established; ready after {took:?}"
        );
        let log = warden.logs();
        warden.kill();
        // Nothing was listed again to get there: the first list of every kind was enough.
        let restarts: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("initial list not complete"))
            .collect();
        assert!(restarts.is_empty(), "round {round}: {restarts:?}");
        cp.stop();
    }
}
