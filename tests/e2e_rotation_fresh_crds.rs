//! Issue 12 (11): `serve` started right after the CRDs were applied (a GitOps sync, two Helm
//! installs in a row) must become ready, not in 1 of 3 tries. The test environment installs the
//! CRDs into a control plane of this binary's own, and `serve` starts at once, with no list in
//! between that could warm the apiserver's watch cache. (Deleting and re-applying the CRDs for
//! more rounds was tried: on the local control plane a CRD deletion sometimes never finished
//! within 180 s, which failed the setup rather than the behaviour under test.)

mod rotation_support;

use std::time::Duration;

use rotation_support::binary::WardenProcess;
use rotation_support::*;

/// Readiness deadline (the hang in the issue lasted over 60 s).
const READY: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_started_right_after_the_crds_are_applied_becomes_ready() {
    let t = RotationEnv::for_binary("rot-fresh-crds").await;
    let mut warden = WardenProcess::beside_bindy("fresh", t.sa_kubeconfig(), t.ns(), &[]);
    if let Ok(filter) = std::env::var("E2E_LOG") {
        warden = warden.with_env("RUST_LOG", &filter);
    }
    warden.start();
    let took = warden.wait_ready(READY).await;
    eprintln!("ready after {took:?}");
    warden.kill();
}
