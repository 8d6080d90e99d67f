//! Test support for rndc-warden, in the spirit of controller-runtime's envtest: a real
//! kube-apiserver + etcd control plane on loopback ports (no containers), the matching kubectl
//! and helm, a real BIND9 `named`, and helpers for webhooks, identities and metrics.
//!
//! ```no_run
//! # async fn example() -> rndc_warden_testkit::Result<()> {
//! use rndc_warden_testkit::TestEnv;
//! use k8s_openapi::api::core::v1::Secret;
//!
//! let env = TestEnv::new("my-test").await?;           // shared control plane, fresh namespace
//! let secrets = env.ns.api::<Secret>(&env.client);     // admin client, this test's namespace
//! let out = env.cp.kubectl(["get", "secrets", "-n", env.ns.name()]).await?.ok()?;
//! # let _ = (secrets, out); Ok(()) }
//! ```
//!
//! Binaries come from `$E2E_BIN_DIR` or are built once by `scripts/e2e-bins.sh` (needs Go).
//!
//! Layout:
//! - [`bins`]: finding/building kube-apiserver, etcd, kubectl, helm;
//! - [`bindy`]: the real Bindy operator (built once by `scripts/bindy-bin.sh`);
//! - [`control_plane`]: [`ControlPlane`] and the per-binary [`shared_control_plane`];
//! - [`namespace`]: [`TestNamespace`], ServiceAccount [`Identity`];
//! - [`webhook`]: registration by URL + caBundle, [`StubWebhookServer`];
//! - [`metrics`]: `/metrics` parsing; [`crd`]: CRDs; [`tools`]: kubectl/helm;
//! - [`node`]: a real node (kubelet, containerd, runc) for BIND9 pods; [`workload`]: a
//!   Bindy-shaped BIND9 Deployment for it; [`pod_network`]: pods with addresses of their own,
//!   inside a network namespace the test creates;
//! - [`named`]: BIND9; [`pki`]: certificates; [`process`]: child processes; [`wait`]: polling;
//! - [`leaks`]: a marker key planted in requests, and looked for in what comes out.

pub mod audit;
pub mod bindy;
pub mod bins;
pub mod control_plane;
pub mod crd;
mod error;
pub mod leaks;
pub mod metrics;
pub mod named;
pub mod namespace;
pub mod node;
pub mod pki;
pub mod pod_network;
pub mod process;
pub mod tools;
pub mod wait;
pub mod webhook;
pub mod workload;

pub use bins::Binaries;
pub use control_plane::{
    ControlPlane, ControlPlaneInfo, ControlPlaneOptions, shared_control_plane,
};
pub use crd::{apply_crds, wait_crd_established};
pub use error::{Error, Result};
pub use metrics::{Histogram, Metrics};
pub use named::{Named, rndc_status_at};
pub use namespace::{Identity, TEST_ID_LABEL, TestNamespace};
pub use node::{Node, NodeOptions, shared_node};
pub use pki::TestCa;
pub use process::Lifetime;
pub use tools::CommandOutput;
pub use wait::{poll_until, wait_for};
pub use webhook::{RegisteredWebhook, StubWebhookServer, WebhookKind, WebhookRegistration, rule};
pub use workload::Bind9Workload;

/// What most end-to-end tests start with: the shared control plane, an admin client bound to the
/// test's runtime, and a fresh namespace.
pub struct TestEnv {
    /// The control plane shared by the test binary.
    pub cp: &'static ControlPlane,
    /// An admin client (`system:masters`) for this test.
    pub client: kube::Client,
    /// This test's namespace.
    pub ns: TestNamespace,
}

impl TestEnv {
    /// Starts (once per test binary) or reuses the control plane and creates a namespace named
    /// after `test_name`.
    pub async fn new(test_name: &str) -> Result<TestEnv> {
        let cp = shared_control_plane().await?;
        let client = cp.client()?;
        let ns = TestNamespace::create(&client, test_name).await?;
        Ok(TestEnv { cp, client, ns })
    }
}

impl std::fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEnv")
            .field("cp", &self.cp)
            .field("ns", &self.ns)
            .finish_non_exhaustive()
    }
}
