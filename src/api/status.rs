//! Status types written by the rotator.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::raw::deserialize_keeping_extra;
use super::rndc_key::Extra;

/// Status of a `Bind9Instance`.
#[derive(Clone, Default, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct Bind9InstanceStatus {
    /// Key rotation state (rndc-warden's field, as the Bindy guide documents it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rndc_key_rotation_status: Option<RndcKeyRotationStatus>,
    /// Key rotation state under the name the upstream operator's CRD uses; written as well when
    /// the upstream CRDs are installed so that `kubectl get` shows the truth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rndc_key_rotation: Option<RndcKeyRotationStatus>,
    /// `resourceVersion` of the key Secret the pods were last reloaded onto.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rndc_secret_version: Option<String>,
    /// Conditions, among them `RndcSecretReloaded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    /// Fields this version does not model (written by the Bindy operator).
    #[serde(flatten)]
    #[schemars(skip)]
    pub extra: Extra,
}

/// Rotation state of an instance's key, copied from its Secret's annotations.
#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RndcKeyRotationStatus {
    /// When the current key was created (RFC 3339).
    pub created_at: String,
    /// When the current key is due (RFC 3339); absent when it does not rotate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_at: Option<String>,
    /// When the key was last rotated (RFC 3339); only when `rotationCount` > 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotated_at: Option<String>,
    /// How many times the key was rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_count: Option<u32>,
}

/// A status condition (the shape the Bindy operator writes; every field but `type` and `status`
/// optional).
#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Ready` or `RndcSecretReloaded`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason of the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the status last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// Generation the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Status of a `Bind9Cluster` or `ClusterBind9Provider`: written by the Bindy operator only, kept
/// verbatim.
#[derive(Clone, Default, Debug, PartialEq, Serialize, JsonSchema)]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct PreservedStatus {
    /// Every status field, unmodelled.
    #[serde(flatten)]
    #[schemars(skip)]
    pub fields: Extra,
}

impl<'de> Deserialize<'de> for PreservedStatus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Extra::deserialize(deserializer).map(|fields| Self { fields })
    }
}

deserialize_keeping_extra!(Bind9InstanceStatus, "a Bind9Instance status",
optional {
    rndc_key_rotation_status => "rndcKeyRotationStatus",
    rndc_key_rotation => "rndcKeyRotation",
    rndc_secret_version => "rndcSecretVersion",
    conditions => "conditions",
});
