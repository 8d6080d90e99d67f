//! A BIND9 workload shaped like the one the Bindy operator generates, for a real node: a
//! Deployment (container `bind9`, labels `app=bind9,instance=<name>`, hostNetwork, `strategy:
//! Recreate`) that mounts the RNDC Secret at `/etc/bind/keys` and `named.conf` from a ConfigMap,
//! with the rndc control channel on its own 127.0.0.1 port.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{ListParams, LogParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

use crate::error::{Error, Result};
use crate::node::BIND9_IMAGE;
use crate::process::free_ports;
use crate::wait::poll_until;

/// Where the Secret volume is mounted (Bindy's `BIND_KEYS_PATH`).
pub const KEYS_DIR: &str = "/etc/bind/keys";
/// The rndc key name Bindy hard-codes in `controls`.
pub const KEY_NAME: &str = "bindy-operator";

/// One BIND9 instance's workload.
#[derive(Debug, Clone)]
pub struct Bind9Workload {
    /// The instance (and Deployment) name.
    pub name: String,
    /// The RNDC Secret the pods mount.
    pub secret: String,
    /// The rndc control port on 127.0.0.1 (distinct per instance: the pods share the host's
    /// network).
    pub rndc_port: u16,
    /// Mount `rndc.key` alone with `subPath` (the kubelet never updates such a file in a
    /// running pod) instead of the whole Secret as a directory.
    pub key_sub_path: bool,
}

impl Bind9Workload {
    /// A workload for instance `name` mounting `secret`, on a free port.
    pub fn new(name: &str, secret: &str) -> Result<Self> {
        Ok(Self {
            name: name.to_owned(),
            secret: secret.to_owned(),
            rndc_port: free_ports(1)?[0],
            key_sub_path: false,
        })
    }

    /// `app=bind9,instance=<name>`.
    pub fn selector(&self) -> String {
        format!("app=bind9,instance={}", self.name)
    }

    /// `named.conf`: the key from the Secret, the control channel on 127.0.0.1 only, no DNS
    /// listener (the pods share the host's ports).
    pub fn named_conf(&self) -> String {
        format!(
            r#"options {{
    directory "/var/cache/bind";
    listen-on {{ none; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
}};
include "{KEYS_DIR}/rndc.key";
controls {{
    inet 127.0.0.1 port {port} allow {{ 127.0.0.1; }} keys {{ "{KEY_NAME}"; }};
}};
"#,
            port = self.rndc_port
        )
    }

    /// The ConfigMap `<name>-config` holding `named.conf`.
    pub fn config_map(&self) -> Result<ConfigMap> {
        Ok(serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": { "name": format!("{}-config", self.name) },
            "data": { "named.conf": self.named_conf() },
        }))?)
    }

    /// The Deployment.
    pub fn deployment(&self) -> Result<Deployment> {
        let labels = serde_json::json!({ "app": "bind9", "instance": self.name });
        let key_mount = if self.key_sub_path {
            serde_json::json!({ "name": "rndc-key", "mountPath": format!("{KEYS_DIR}/rndc.key"),
                                "subPath": "rndc.key", "readOnly": true })
        } else {
            serde_json::json!({ "name": "rndc-key", "mountPath": KEYS_DIR, "readOnly": true })
        };
        Ok(serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": { "name": self.name, "labels": labels },
            "spec": {
                "replicas": 1,
                "strategy": { "type": "Recreate" },
                "selector": { "matchLabels": labels },
                "template": {
                    "metadata": { "labels": labels },
                    "spec": {
                        "hostNetwork": true,
                        "dnsPolicy": "Default",
                        "terminationGracePeriodSeconds": 2,
                        "enableServiceLinks": false,
                        "automountServiceAccountToken": false,
                        "containers": [{
                            "name": "bind9",
                            "image": BIND9_IMAGE,
                            "imagePullPolicy": "Never",
                            "command": ["/usr/sbin/named", "-g", "-c", "/etc/bind/named.conf"],
                            "volumeMounts": [
                                key_mount,
                                { "name": "config", "mountPath": "/etc/bind/named.conf",
                                  "subPath": "named.conf", "readOnly": true },
                            ],
                            "readinessProbe": {
                                "tcpSocket": { "host": "127.0.0.1", "port": self.rndc_port },
                                "periodSeconds": 1,
                            },
                        }],
                        "volumes": [
                            { "name": "rndc-key", "secret": { "secretName": self.secret } },
                            { "name": "config", "configMap": { "name": format!("{}-config", self.name) } },
                        ],
                    },
                },
            },
        }))?)
    }

    /// Creates (or updates) the ConfigMap and the Deployment in `namespace`.
    pub async fn apply(&self, client: &Client, namespace: &str) -> Result<()> {
        let params = PatchParams::apply("rndc-warden-testkit").force();
        let cm = self.config_map()?;
        Api::<ConfigMap>::namespaced(client.clone(), namespace)
            .patch(&cm.name_any(), &params, &Patch::Apply(&cm))
            .await?;
        let deployment = self.deployment()?;
        Api::<Deployment>::namespaced(client.clone(), namespace)
            .patch(&self.name, &params, &Patch::Apply(&deployment))
            .await?;
        Ok(())
    }
}

/// The pods matching `selector` that are not being deleted.
pub async fn live_pods(client: &Client, namespace: &str, selector: &str) -> Result<Vec<Pod>> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(selector))
        .await?;
    Ok(pods
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

/// Whether a pod is Running with every container ready.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status.as_ref().is_some_and(|s| {
        s.phase.as_deref() == Some("Running")
            && s.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// Waits until exactly one pod matches `selector` and it is ready; returns it. `what` names the
/// wait in the error, which carries the pods' state.
pub async fn wait_one_ready_pod(
    client: &Client,
    namespace: &str,
    selector: &str,
    timeout: Duration,
) -> Result<Pod> {
    poll_until(
        &format!("one ready pod {namespace}/{selector}"),
        timeout,
        Duration::from_millis(200),
        || async move {
            let pods = live_pods(client, namespace, selector).await?;
            Ok::<_, Error>(match pods.as_slice() {
                [pod] if pod_ready(pod) => Some(pod.clone()),
                _ => None,
            })
        },
    )
    .await
}

/// The logs of container `bind9` of a pod (named's `-g` output).
pub async fn bind9_logs(client: &Client, namespace: &str, pod: &str) -> Result<String> {
    Ok(Api::<Pod>::namespaced(client.clone(), namespace)
        .logs(
            pod,
            &LogParams {
                container: Some("bind9".into()),
                ..LogParams::default()
            },
        )
        .await?)
}

/// The restart count of container `bind9`.
pub fn restart_count(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == "bind9"))
        .map_or(0, |c| c.restart_count)
}

/// Labels `app=bind9,instance=<name>` as a map.
pub fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app".to_owned(), "bind9".to_owned()),
        ("instance".to_owned(), name.to_owned()),
    ])
}
