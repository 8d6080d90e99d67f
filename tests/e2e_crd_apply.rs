//! `kubectl apply` of the generated CRDs, with the real kubectl against the real kube-apiserver,
//! prints no warning (an unknown schema `format` made it print
//! `Warning: unrecognized format "uint32"` on every apply).
//!
//! The control plane is shared and its Bindy CRDs belong to other tests, so the CRDs are applied
//! (server-side dry run, which validates like a real create) under a group of this test's own:
//! an update of an unchanged CRD would send nothing and prove nothing.

use rndc_warden::api::crd_yaml;
use rndc_warden_testkit::TestEnv;

mod common;

/// `kubectl apply --dry-run=server` of `manifest`: whether it passed, and its stderr.
async fn dry_run(env: &TestEnv, manifest: &str) -> (bool, String) {
    let (ok, _, stderr) = common::kubectl_apply(env, manifest, &["--dry-run=server"]).await;
    (ok, stderr)
}

/// The generated CRDs under another API group, so that creating them never collides.
fn renamed(yaml: &str) -> String {
    yaml.replace("bindy.firestoned.io", "crd-apply.rndc-warden.test")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_the_generated_crds_prints_no_warning() {
    let env = TestEnv::new("crd-apply").await.expect("test env");
    let manifest = renamed(&crd_yaml());

    // The check sees warnings at all: the same CRDs with the format schemars used to emit.
    let with_unknown_format = manifest.replacen("format: int64", "format: uint32", 1);
    assert_ne!(
        with_unknown_format, manifest,
        "the CRDs carry an int64 format"
    );
    let (ok, stderr) = dry_run(&env, &with_unknown_format).await;
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("Warning") && stderr.contains("uint32"),
        "kubectl reports an unknown format as a warning: {stderr:?}"
    );

    let (ok, stderr) = dry_run(&env, &manifest).await;
    assert!(ok, "the generated CRDs are accepted: {stderr}");
    assert!(
        !stderr.contains("Warning"),
        "kubectl printed a warning for the generated CRDs:\n{stderr}"
    );
}
