//! A fresh namespace per test, and identities (ServiceAccount tokens) inside it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::control_plane::{ControlPlane, config_from_yaml, write_file};
use crate::error::{Error, IoContext, Result};

/// The label every test namespace carries; its value is the namespace's unique id (= name).
pub const TEST_ID_LABEL: &str = "e2e.test/id";

/// A namespace created for one test, with a unique name that is also the value of its
/// [`TEST_ID_LABEL`] label (so cluster-scoped objects such as webhook configurations can be
/// scoped to it).
///
/// It is not deleted on drop: this control plane has no namespace controller, so deletion never
/// finishes anyway, and names are never reused.
#[derive(Debug, Clone)]
pub struct TestNamespace {
    name: String,
}

impl TestNamespace {
    /// Creates `<prefix>-<unique suffix>` (a valid DNS label) labelled with its own name.
    pub async fn create(client: &Client, prefix: &str) -> Result<TestNamespace> {
        let name = unique_name(prefix);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(TEST_ID_LABEL.to_owned(), name.clone())])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(TestNamespace { name })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The unique id (the value of [`TEST_ID_LABEL`]; equal to the name).
    pub fn id(&self) -> &str {
        &self.name
    }

    /// A selector matching exactly this namespace (for `namespaceSelector`).
    pub fn selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: Some(BTreeMap::from([(
                TEST_ID_LABEL.to_owned(),
                self.name.clone(),
            )])),
            match_expressions: None,
        }
    }

    /// A namespaced API handle in this namespace.
    pub fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(client.clone(), &self.name)
    }

    /// Starts deleting the namespace (it stays `Terminating`: there is no namespace controller).
    pub async fn delete(&self, client: &Client) -> Result<()> {
        Api::<Namespace>::all(client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await?;
        Ok(())
    }

    /// Creates the ServiceAccount `name` (if missing) and returns an [`Identity`] acting as it,
    /// with a token minted through the TokenRequest API (valid one hour). It has no RBAC rights
    /// until the test grants some.
    pub async fn service_account_identity(
        &self,
        cp: &ControlPlane,
        client: &Client,
        name: &str,
    ) -> Result<Identity> {
        let accounts: Api<ServiceAccount> = self.api(client);
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        match accounts.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        let token = mint_token(client, &self.name, name, 3600).await?;
        let username = format!("system:serviceaccount:{}:{name}", self.name);
        Identity::from_token(cp, &format!("{}-{name}", self.name), &username, &token).await
    }
}

/// Mints a token for ServiceAccount `namespace/name` with the TokenRequest API.
pub async fn mint_token(
    client: &Client,
    namespace: &str,
    name: &str,
    expiration_seconds: i64,
) -> Result<String> {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(expiration_seconds),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let minted = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await?;
    minted
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::Invalid {
            what: "TokenRequest response",
            reason: "no token in status".into(),
        })
}

/// A non-admin identity: a bearer token with its own kubeconfig file (for kubectl/helm) and
/// `kube::Config` (for clients).
pub struct Identity {
    /// The Kubernetes user name, e.g. `system:serviceaccount:<ns>:<sa>`.
    pub username: String,
    /// The bearer token.
    pub token: String,
    /// A kubeconfig file acting as this identity.
    pub kubeconfig_path: PathBuf,
    config: kube::Config,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("username", &self.username)
            .field("kubeconfig_path", &self.kubeconfig_path)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Builds an identity from a bearer token; `file_stem` names its kubeconfig in the run dir.
    pub async fn from_token(
        cp: &ControlPlane,
        file_stem: &str,
        username: &str,
        token: &str,
    ) -> Result<Identity> {
        let yaml = cp.token_kubeconfig_yaml(username, token);
        let dir = cp.run_dir().join("identities");
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let kubeconfig_path = dir.join(format!("{file_stem}.kubeconfig"));
        write_file(&kubeconfig_path, &yaml, true)?;
        Ok(Identity {
            username: username.to_owned(),
            token: token.to_owned(),
            kubeconfig_path,
            config: config_from_yaml(&yaml).await?,
        })
    }

    /// A new client acting as this identity (bound to the current tokio runtime).
    pub fn client(&self) -> Result<Client> {
        Ok(Client::try_from(self.config.clone())?)
    }

    /// The `kube::Config` of this identity.
    pub fn config(&self) -> &kube::Config {
        &self.config
    }
}

/// `<prefix>-<suffix>`: lower-case, at most 63 characters, unique within and across processes.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut clean: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    clean.truncate(40);
    let clean = clean.trim_matches('-');
    let clean = if clean.is_empty() { "t" } else { clean };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Mix pid, counter and time so two test binaries never collide.
    let mixed = (u64::from(std::process::id()) << 32 ^ u64::from(nanos))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(count);
    format!("{clean}-{:010x}", mixed & 0xff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_dns_labels_and_distinct() {
        let a = unique_name("Webhook_Denies ALL!!");
        let b = unique_name("Webhook_Denies ALL!!");
        assert_ne!(a, b);
        for name in [&a, &b, &unique_name(&"x".repeat(100)), &unique_name("--")] {
            assert!(name.len() <= 63, "{name} too long");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name} has invalid characters"
            );
            assert!(!name.starts_with('-') && !name.ends_with('-'), "{name}");
        }
        assert!(a.starts_with("webhook-denies-all-"), "{a}");
    }
}
