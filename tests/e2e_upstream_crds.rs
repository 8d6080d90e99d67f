//! Admission with the Bindy operator's own CRDs installed (SPEC §11): the same denials, warnings
//! and defaults as with ours. Its schema enumerates lower-case roles, defaults some fields and has
//! no pattern on `rotateAfter`, so these tests show the webhook filling exactly those gaps. A test
//! binary of its own, because CRDs are cluster-wide and the other binaries install ours.

mod common;

use common::{get_json, instance_yaml, kubectl_apply, setup_with_crds};
use serde_json::json;

fn upstream_crds() -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/upstream-crds");
    ["bind9instances.crd.yaml", "bind9clusters.crd.yaml"]
        .iter()
        .map(|file| std::fs::read_to_string(format!("{dir}/{file}")).expect("upstream CRD"))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_crds_get_the_same_admission_rules() {
    let (env, warden, _) = setup_with_crds("upstream-crds", &upstream_crds()).await;

    // The upstream schema accepts hmac-sha1 and any rotateAfter string; the webhook does not.
    let sha1 = instance_yaml(
        &env,
        "sha1",
        "clusterRef: \"\"\n  role: primary\n  rndcKey:\n    algorithm: hmac-sha1",
    );
    let (ok, _, stderr) = kubectl_apply(&env, &sha1, &[]).await;
    assert!(
        !ok && stderr.contains("spec.rndcKey.algorithm: hmac-sha1 is not allowed"),
        "{stderr}"
    );
    let yearly = instance_yaml(
        &env,
        "yearly",
        "clusterRef: \"\"\n  role: primary\n  rndcKey:\n    autoRotate: true\n    rotateAfter: 1y",
    );
    let (ok, _, stderr) = kubectl_apply(&env, &yearly, &[]).await;
    assert!(
        !ok && stderr.contains("spec.rndcKey.rotateAfter: \"1y\""),
        "{stderr}"
    );

    // Upstream's enum rejects `Primary`; the mutating webhook runs first and lower-cases it.
    let bare = instance_yaml(&env, "bare", "clusterRef: \"\"\n  role: Primary");
    let (ok, _, stderr) = kubectl_apply(&env, &bare, &[]).await;
    assert!(ok, "{stderr}");
    let stored = get_json(&env, "bind9instance", "bare").await;
    assert_eq!(stored["spec"]["role"], "primary");
    assert_eq!(
        stored["spec"]["rndcKey"],
        json!({"autoRotate": false, "rotateAfter": "2160h", "algorithm": "hmac-sha256"})
    );

    // A short interval passes with kubectl's warning, as with our CRDs.
    let twelve = instance_yaml(
        &env,
        "twelve",
        "clusterRef: \"\"\n  role: primary\n  rndcKey:\n    autoRotate: true\n    rotateAfter: 12h\n    algorithm: hmac-sha512",
    );
    let (ok, _, stderr) = kubectl_apply(&env, &twelve, &[]).await;
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("Warning:") && stderr.contains("12h"),
        "{stderr}"
    );

    // Role-level blocks on an upstream Bind9Cluster are defaulted and validated too.
    let cluster = format!(
        "apiVersion: bindy.firestoned.io/v1beta1\nkind: Bind9Cluster\nmetadata:\n  name: prod\n  namespace: {}\nspec:\n  secondary:\n    rndcKey:\n      autoRotate: true\n      algorithm: hmac-sha1\n",
        env.ns.name()
    );
    let (ok, _, stderr) = kubectl_apply(&env, &cluster, &[]).await;
    assert!(
        !ok && stderr.contains("spec.secondary.rndcKey.algorithm"),
        "{stderr}"
    );
    assert!(!warden.logs().contains("panicked"), "{}", warden.logs());
}
