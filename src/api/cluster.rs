//! `Bind9Cluster` and `ClusterBind9Provider`: role-level RNDC key configuration.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::Serialize;

use super::instance::Bind9Config;
use super::raw::deserialize_keeping_extra;
use super::rndc_key::{Extra, RndcKeyConfig, RndcSecretRef};
use super::status::PreservedStatus;

/// Specification of a `Bind9Cluster`; only the RNDC-related fields are modelled.
// kube's derive takes repeated `shortname`/`printcolumn` arguments by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Default, Debug, PartialEq, Serialize, JsonSchema)]
#[kube(
    group = "bindy.firestoned.io",
    version = "v1beta1",
    kind = "Bind9Cluster",
    plural = "bind9clusters",
    shortname = "b9c",
    shortname = "b9cs",
    namespaced,
    status = "PreservedStatus",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version"),
    printcolumn(
        name = "Primary",
        type_ = "integer",
        json_path = ".spec.primary.replicas"
    ),
    printcolumn(
        name = "Secondary",
        type_ = "integer",
        json_path = ".spec.secondary.replicas"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type=='Ready')].status"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct Bind9ClusterSpec {
    /// Settings of the primary instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<RoleSpec>,
    /// Settings of the secondary instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<RoleSpec>,
    /// Cluster-wide BIND9 configuration; its `rndcSecretRef` is ignored by the Bindy operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<Bind9Config>,
    /// TSIG key references; ignored for RNDC, their algorithms are still checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rndc_secret_refs: Option<Vec<RndcSecretRef>>,
    /// Fields this version does not model.
    #[serde(flatten)]
    #[schemars(skip)]
    pub extra: Extra,
}

/// Specification of a cluster-scoped `ClusterBind9Provider`: a `Bind9Cluster` spec plus the
/// namespace its cluster is created in.
// kube's derive takes repeated `shortname`/`printcolumn` arguments by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Default, Debug, PartialEq, Serialize, JsonSchema)]
#[kube(
    group = "bindy.firestoned.io",
    version = "v1beta1",
    kind = "ClusterBind9Provider",
    plural = "clusterbind9providers",
    shortname = "cb9p",
    shortname = "cb9ps",
    status = "PreservedStatus",
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct ClusterBind9ProviderSpec {
    /// Settings of the primary instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<RoleSpec>,
    /// Settings of the secondary instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<RoleSpec>,
    /// Cluster-wide BIND9 configuration; its `rndcSecretRef` is ignored by the Bindy operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<Bind9Config>,
    /// TSIG key references; ignored for RNDC, their algorithms are still checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rndc_secret_refs: Option<Vec<RndcSecretRef>>,
    /// Fields this version does not model (among them `namespace`).
    #[serde(flatten)]
    #[schemars(skip)]
    pub extra: Extra,
}

/// Settings of one role (`spec.primary` or `spec.secondary`).
#[derive(Clone, Default, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct RoleSpec {
    /// RNDC key configuration of every instance of this role that has none of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rndc_key: Option<RndcKeyConfig>,
    /// Deprecated and ignored by the Bindy operator; its algorithm is still checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rndc_secret_ref: Option<RndcSecretRef>,
    /// Fields this version does not model.
    #[serde(flatten)]
    #[schemars(skip)]
    pub extra: Extra,
}

/// The role-related parts shared by `Bind9ClusterSpec` and `ClusterBind9ProviderSpec`, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct RoleBlocks<'a> {
    /// `spec.primary`.
    pub primary: Option<&'a RoleSpec>,
    /// `spec.secondary`.
    pub secondary: Option<&'a RoleSpec>,
    /// `spec.global`.
    pub global: Option<&'a Bind9Config>,
    /// `spec.rndcSecretRefs`.
    pub rndc_secret_refs: Option<&'a [RndcSecretRef]>,
    /// Unmodelled spec fields (to spot typos such as `rndcKeys`).
    pub extra: &'a Extra,
}

impl Bind9ClusterSpec {
    /// The role-related parts of this spec.
    pub fn role_blocks(&self) -> RoleBlocks<'_> {
        RoleBlocks {
            primary: self.primary.as_ref(),
            secondary: self.secondary.as_ref(),
            global: self.global.as_ref(),
            rndc_secret_refs: self.rndc_secret_refs.as_deref(),
            extra: &self.extra,
        }
    }
}

impl ClusterBind9ProviderSpec {
    /// The role-related parts of this spec.
    pub fn role_blocks(&self) -> RoleBlocks<'_> {
        RoleBlocks {
            primary: self.primary.as_ref(),
            secondary: self.secondary.as_ref(),
            global: self.global.as_ref(),
            rndc_secret_refs: self.rndc_secret_refs.as_deref(),
            extra: &self.extra,
        }
    }
}

deserialize_keeping_extra!(Bind9ClusterSpec, "a Bind9Cluster spec",
optional {
    primary => "primary",
    secondary => "secondary",
    global => "global",
    rndc_secret_refs => "rndcSecretRefs",
});

deserialize_keeping_extra!(ClusterBind9ProviderSpec, "a ClusterBind9Provider spec",
optional {
    primary => "primary",
    secondary => "secondary",
    global => "global",
    rndc_secret_refs => "rndcSecretRefs",
});

deserialize_keeping_extra!(RoleSpec, "a role block (spec.primary or spec.secondary)",
optional {
    rndc_key => "rndcKey",
    rndc_secret_ref => "rndcSecretRef",
});
