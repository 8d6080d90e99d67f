//! Issue 12 (11): `serve` started right after the CRDs were applied (a GitOps sync, two Helm
//! installs in a row) must become ready every time, not in 1 of 3 tries. Each round deletes the
//! CRDs, applies them again and starts `serve` at once, with no list in between that could warm
//! the apiserver's watch cache. A test binary of its own: CRDs are cluster-wide.

mod rotation_support;

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::DeleteParams;
use rndc_warden_testkit::{apply_crds, poll_until};
use rotation_support::binary::WardenProcess;
use rotation_support::*;

const ROUNDS: usize = 4;
/// Readiness deadline of each round (the hang in the issue lasted over 60 s).
const READY: Duration = Duration::from_secs(30);

async fn delete_crds(t: &RotationEnv, names: &[String]) {
    let api: Api<CustomResourceDefinition> = Api::all(t.client().clone());
    for name in names {
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
    for name in names {
        poll_until(
            &format!("CRD {name} gone"),
            // Deleting a CRD first deletes its objects; slow on a loaded machine.
            Duration::from_secs(180),
            Duration::from_millis(100),
            || {
                let api = api.clone();
                async move {
                    Ok::<_, kube::Error>(api.get_opt(name).await?.is_none().then_some(()))
                }
            },
        )
        .await
        .expect("CRD deleted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_started_right_after_the_crds_are_applied_becomes_ready_every_time() {
    let t = RotationEnv::for_binary("rot-fresh-crds").await;
    let crds = rndc_warden::api::crd_yaml();
    let names = apply_crds(t.client(), &crds, WAIT).await.expect("CRDs");
    for round in 1..=ROUNDS {
        delete_crds(&t, &names).await;
        apply_crds(t.client(), &crds, WAIT)
            .await
            .expect("CRDs again");
        let mut warden =
            WardenProcess::beside_bindy(&format!("fresh-{round}"), t.sa_kubeconfig(), t.ns(), &[]);
        if let Ok(filter) = std::env::var("E2E_LOG") {
            warden = warden.with_env("RUST_LOG", &filter);
        }
        warden.start();
        let took = warden.wait_ready(READY).await;
        eprintln!("round {round}: ready after {took:?}");
        warden.kill();
    }
}
