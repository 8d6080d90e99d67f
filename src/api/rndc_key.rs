//! The `rndcKey` block (three modes), the `secretRef` and deprecated `rndcSecretRef` references,
//! and the inline Secret specification.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Fields this version does not model, kept verbatim so that objects round-trip unchanged.
pub type Extra = BTreeMap<String, serde_json::Value>;

/// RNDC key configuration of an instance or of a cluster role.
///
/// Exactly one mode applies: `secretRef` (a Secret the user manages), inline `secret` (a Secret
/// rndc-warden creates from this specification) or neither (a generated Secret).
#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RndcKeyConfig {
    /// Rotate the key automatically every `rotateAfter`. Ignored with `secretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_rotate: Option<bool>,
    /// Rotation interval: a whole number of hours, days or weeks (`720h`, `30d`, `12w`), between
    /// 1h and 8760h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_after: Option<String>,
    /// HMAC algorithm of generated keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = algorithm_names()))]
    pub algorithm: Option<String>,
    /// Use an existing Secret that you manage (never rotated by rndc-warden).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<RndcSecretRef>,
    /// Create the Secret from this specification (managed, rotated when `autoRotate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<InlineSecret>,
    /// Fields this version does not model.
    #[serde(flatten)]
    #[schemars(skip)]
    pub extra: Extra,
}

/// A reference to a key Secret in the same namespace (`rndcKey.secretRef`, and the deprecated
/// `rndcSecretRef`).
#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RndcSecretRef {
    /// Name of the Secret.
    pub name: String,
    /// HMAC algorithm of the key in the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = algorithm_names()))]
    pub algorithm: Option<String>,
    /// Data key holding the key name (default `key-name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name_key: Option<String>,
    /// Data key holding the algorithm (default `algorithm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm_key: Option<String>,
    /// Data key holding the base64 key material (default `secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<String>,
    /// Fields this version does not model.
    #[serde(flatten)]
    #[schemars(skip)]
    pub extra: Extra,
}

/// An inline Secret specification (`rndcKey.secret`).
///
/// `Debug` lists data keys only: values may hold key material.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InlineSecret {
    /// Name, labels and annotations of the Secret to create.
    pub metadata: InlineSecretMetadata,
    /// Secret type (`Opaque` when omitted).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Base64-encoded values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<BTreeMap<String, String>>,
    /// Plain-text values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_data: Option<BTreeMap<String, String>>,
    /// Fields this version does not model.
    #[serde(flatten)]
    #[schemars(skip)]
    pub extra: Extra,
}

impl fmt::Debug for InlineSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = |m: &Option<BTreeMap<String, String>>| {
            m.as_ref().map(|m| m.keys().cloned().collect::<Vec<_>>())
        };
        f.debug_struct("InlineSecret")
            .field("metadata", &self.metadata)
            .field("type_", &self.type_)
            .field("data_keys", &keys(&self.data))
            .field("string_data_keys", &keys(&self.string_data))
            .finish_non_exhaustive()
    }
}

/// Metadata of an inline Secret.
#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InlineSecretMetadata {
    /// Secret name (a DNS-1123 subdomain).
    pub name: String,
    /// Labels to set on the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations to set on the Secret (the rotation annotations are reserved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Fields this version does not model.
    #[serde(flatten)]
    #[schemars(skip)]
    pub extra: Extra,
}

/// The algorithm names the schema accepts (the policy decides which are allowed).
fn algorithm_names() -> serde_json::Value {
    serde_json::json!([
        "hmac-md5",
        "hmac-sha1",
        "hmac-sha224",
        "hmac-sha256",
        "hmac-sha384",
        "hmac-sha512"
    ])
}
