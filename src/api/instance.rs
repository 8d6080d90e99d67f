//! `Bind9Instance`: one BIND9 server.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::Serialize;

use super::raw::deserialize_keeping_extra;
use super::rndc_key::{Extra, RndcKeyConfig, RndcSecretRef};
use super::status::Bind9InstanceStatus;

/// Specification of a `Bind9Instance`; only the RNDC-related fields are modelled, every other
/// field is kept verbatim.
// kube's derive takes repeated `shortname`/`printcolumn` arguments by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Default, Debug, PartialEq, Serialize, JsonSchema)]
#[kube(
    group = "bindy.firestoned.io",
    version = "v1beta1",
    kind = "Bind9Instance",
    plural = "bind9instances",
    shortname = "b9",
    shortname = "b9s",
    namespaced,
    status = "Bind9InstanceStatus",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.clusterRef"),
    printcolumn(name = "Role", type_ = "string", json_path = ".spec.role"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(
        name = "Key rotated",
        type_ = "string",
        json_path = ".status.rndcKeyRotationStatus.createdAt"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type=='Ready')].status"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct Bind9InstanceSpec {
    /// Name of the `Bind9Cluster` (or `ClusterBind9Provider`) this instance belongs to; empty for
    /// a standalone instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ref: Option<String>,
    /// `primary` or `secondary` (the mutating webhook lower-cases `Primary`/`Secondary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["primary", "secondary"]))]
    pub role: Option<String>,
    /// RNDC key configuration; wins over the cluster's role-level block as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rndc_key: Option<RndcKeyConfig>,
    /// Deprecated: use `rndcKey.secretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rndc_secret_ref: Option<RndcSecretRef>,
    /// BIND9 configuration; only its deprecated `rndcSecretRef` is modelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Bind9Config>,
    /// Fields this version does not model.
    #[serde(flatten)]
    #[schemars(skip)]
    pub extra: Extra,
}

/// A BIND9 configuration block (`spec.config` of an instance, `spec.global` of a cluster).
#[derive(Clone, Default, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct Bind9Config {
    /// Deprecated and ignored by the Bindy operator; its algorithm is still checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rndc_secret_ref: Option<RndcSecretRef>,
    /// Fields this version does not model.
    #[serde(flatten)]
    #[schemars(skip)]
    pub extra: Extra,
}

deserialize_keeping_extra!(Bind9InstanceSpec, "a Bind9Instance spec",
optional {
    cluster_ref => "clusterRef",
    role => "role",
    rndc_key => "rndcKey",
    rndc_secret_ref => "rndcSecretRef",
    config => "config",
});

deserialize_keeping_extra!(Bind9Config, "a BIND9 configuration block",
    optional { rndc_secret_ref => "rndcSecretRef" });
