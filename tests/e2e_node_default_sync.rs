//! Issue 13: the `signal` strategy on a real node whose kubelet refreshes Secret volumes with its
//! default `syncFrequency` (1m): rndc-warden waits (retrying `sha256sum` through `pods/exec`)
//! until the pod sees the new file, then SIGHUPs named in the same pod.

mod node_support;
mod rotation_support;

use node_support::*;
use rndc_warden_testkit::node::DEFAULT_SYNC_FREQUENCY;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_reloads_named_in_the_same_pod_with_the_default_kubelet_sync_period() {
    let (node, t) = node_env("node-default-sync", DEFAULT_SYNC_FREQUENCY, true).await;
    assert_eq!(node.sync_frequency(), DEFAULT_SYNC_FREQUENCY);
    signal_round(&t, "slow").await;
}
