//! What happens to the key Secrets and Deployments of a namespace, from a watch: every key
//! revision (a fingerprint of the key data, never the key) with the Secret's uid, and every pod
//! template change of each Deployment. "Rotated once, rolled once" is counted here.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use sha2::{Digest as _, Sha256};

/// One revision of a Secret's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRevision {
    /// The Secret's uid (a delete + create gives a new one).
    pub uid: String,
    /// SHA-256 of `data.secret`, first 12 hex digits.
    pub fingerprint: String,
    /// `data.algorithm`.
    pub algorithm: String,
    /// Decoded key length in bytes.
    pub key_bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    secrets: BTreeMap<String, Vec<KeyRevision>>,
    /// Per Deployment: the pod templates seen, in order (as JSON).
    templates: BTreeMap<String, Vec<String>>,
}

/// The record of one namespace, kept by two watch tasks until drop.
pub struct Record {
    state: Arc<Mutex<State>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Record {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn revision(secret: &Secret) -> KeyRevision {
    use base64::Engine as _;
    let data = secret.data.clone().unwrap_or_default();
    let text = |key: &str| {
        data.get(key)
            .map(|v| String::from_utf8_lossy(&v.0).trim().to_owned())
            .unwrap_or_default()
    };
    let key = text("secret");
    KeyRevision {
        uid: secret.uid().unwrap_or_default(),
        fingerprint: Sha256::digest(key.as_bytes())
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect(),
        algorithm: text("algorithm"),
        key_bytes: base64::engine::general_purpose::STANDARD
            .decode(&key)
            .map(|k| k.len())
            .unwrap_or(0),
    }
}

impl Record {
    /// Starts watching Secrets and Deployments in `namespace`; returns once both watches have
    /// listed (so every later change is seen).
    pub async fn start(client: &Client, namespace: &str) -> Record {
        let state = Arc::new(Mutex::new(State::default()));
        let (secrets_listed, secrets_rx) = tokio::sync::oneshot::channel();
        let (deployments_listed, deployments_rx) = tokio::sync::oneshot::channel();
        let s = state.clone();
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let secrets = tokio::spawn(async move {
            let mut listed = Some(secrets_listed);
            let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()));
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                        let rev = revision(&o);
                        let mut st = s.lock().expect("record");
                        let revs = st.secrets.entry(o.name_any()).or_default();
                        if revs.last() != Some(&rev) {
                            revs.push(rev);
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = listed.take() {
                            let _ = tx.send(());
                        }
                    }
                    _ => {}
                }
            }
        });
        let s = state.clone();
        let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
        let deployments = tokio::spawn(async move {
            let mut listed = Some(deployments_listed);
            let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()));
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                        let template = serde_json::to_string(&o.spec.template).unwrap_or_default();
                        let mut st = s.lock().expect("record");
                        let seen = st.templates.entry(o.name_any()).or_default();
                        if seen.last() != Some(&template) {
                            seen.push(template);
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = listed.take() {
                            let _ = tx.send(());
                        }
                    }
                    _ => {}
                }
            }
        });
        let _ = secrets_rx.await;
        let _ = deployments_rx.await;
        Record {
            state,
            tasks: vec![secrets, deployments],
        }
    }

    /// The key revisions of Secret `name` seen so far (the first is the one at the start, or
    /// the one it was created with).
    pub fn revisions(&self, name: &str) -> Vec<KeyRevision> {
        let st = self.state.lock().expect("record");
        st.secrets.get(name).cloned().unwrap_or_default()
    }

    /// How many pod templates of Deployment `name` were seen (1 + the rollouts).
    pub fn templates(&self, name: &str) -> usize {
        let st = self.state.lock().expect("record");
        st.templates.get(name).map_or(0, Vec::len)
    }

    /// The pod-template annotations of each template of Deployment `name` (for messages).
    pub fn template_annotations(&self, name: &str) -> Vec<serde_json::Value> {
        let st = self.state.lock().expect("record");
        st.templates
            .get(name)
            .into_iter()
            .flatten()
            .map(|t| {
                serde_json::from_str::<serde_json::Value>(t).unwrap_or_default()["metadata"]
                    ["annotations"]
                    .clone()
            })
            .collect()
    }
}
