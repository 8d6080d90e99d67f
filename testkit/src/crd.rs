//! Installing CustomResourceDefinitions and waiting until they are served.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::wait::{POLL_INTERVAL, poll_until};

/// Field manager used for server-side apply.
pub const FIELD_MANAGER: &str = "rndc-warden-testkit";

/// Server-side applies every CRD in `yaml` (one or more `---`-separated documents; other kinds
/// are rejected) and waits until each is `Established`. Returns their names.
pub async fn apply_crds(client: &Client, yaml: &str, timeout: Duration) -> Result<Vec<String>> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value = serde_yaml_ng::Value::deserialize(document)?;
        if value.is_null() {
            continue;
        }
        let crd: CustomResourceDefinition = serde_yaml_ng::from_value(value)?;
        let name = crd.metadata.name.clone().ok_or_else(|| Error::Invalid {
            what: "CRD",
            reason: "metadata.name is missing".into(),
        })?;
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await?;
        names.push(name);
    }
    for name in &names {
        wait_crd_established(client, name, timeout).await?;
    }
    Ok(names)
}

/// Waits until the CRD `name` has condition `Established=True`.
pub async fn wait_crd_established(client: &Client, name: &str, timeout: Duration) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    poll_until(
        &format!("CRD {name} to be Established"),
        timeout,
        POLL_INTERVAL,
        || async {
            let crd = api.get(name).await?;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            Ok::<_, kube::Error>(established.then_some(()))
        },
    )
    .await
}
