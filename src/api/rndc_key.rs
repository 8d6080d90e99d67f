//! The `rndcKey` block (three modes), the `secretRef` and deprecated `rndcSecretRef` references,
//! and the inline Secret specification.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

pub use super::raw::Extra;
use super::raw::{BoundedStrings, Key, deserialize_keeping_extra, set_once};

/// RNDC key configuration of an instance or of a cluster role.
///
/// Exactly one mode applies: `secretRef` (a Secret the user manages), inline `secret` (a Secret
/// rndc-warden creates from this specification) or neither (a generated Secret).
#[derive(Clone, Default, Debug, PartialEq, Serialize, JsonSchema)]
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
#[derive(Clone, Default, Debug, PartialEq, Serialize, JsonSchema)]
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
#[derive(Clone, Default, PartialEq, Serialize, JsonSchema)]
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
    /// Entries of `data` and `stringData` beyond the first
    /// [`MAX_MAP_ENTRIES`](super::raw::MAX_MAP_ENTRIES) of each, skipped unread (the policy denies
    /// such a block).
    #[serde(skip)]
    #[schemars(skip)]
    pub left_out_entries: usize,
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
            .field("left_out_entries", &self.left_out_entries)
            .finish_non_exhaustive()
    }
}

impl<'de> Deserialize<'de> for InlineSecret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InlineVisitor;
        impl<'de> Visitor<'de> for InlineVisitor {
            type Value = InlineSecret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an inline Secret (metadata, type, data, stringData)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (mut metadata, mut type_) = (None, None::<Option<String>>);
                let (mut data, mut string_data) = (
                    None::<Option<BoundedStrings>>,
                    None::<Option<BoundedStrings>>,
                );
                let mut extra = Extra::new();
                while let Some(Key(key)) = map.next_key()? {
                    match key.as_ref() {
                        "metadata" => set_once(&mut metadata, &mut map, "metadata")?,
                        "type" => set_once(&mut type_, &mut map, "type")?,
                        "data" => set_once(&mut data, &mut map, "data")?,
                        "stringData" => set_once(&mut string_data, &mut map, "stringData")?,
                        _ => {
                            extra.insert(key.into_owned(), map.next_value()?);
                        }
                    }
                }
                let split = |map: Option<Option<BoundedStrings>>| match map.flatten() {
                    Some(BoundedStrings(kept, skipped)) => (Some(kept), skipped),
                    None => (None, 0),
                };
                let (data, data_skipped) = split(data);
                let (string_data, string_skipped) = split(string_data);
                Ok(InlineSecret {
                    metadata: metadata
                        .ok_or_else(|| serde::de::Error::missing_field("metadata"))?,
                    type_: type_.flatten(),
                    data,
                    string_data,
                    extra,
                    left_out_entries: data_skipped + string_skipped,
                })
            }
        }
        deserializer.deserialize_map(InlineVisitor)
    }
}

deserialize_keeping_extra!(RndcKeyConfig, "an rndcKey block (autoRotate, rotateAfter, algorithm, secretRef, secret)",
optional {
    auto_rotate => "autoRotate",
    rotate_after => "rotateAfter",
    algorithm => "algorithm",
    secret_ref => "secretRef",
    secret => "secret",
});

deserialize_keeping_extra!(RndcSecretRef, "a Secret reference (name, algorithm, keyNameKey, algorithmKey, secretKey)",
    optional {
        algorithm => "algorithm",
        key_name_key => "keyNameKey",
        algorithm_key => "algorithmKey",
        secret_key => "secretKey",
    },
    required { name => "name" });

deserialize_keeping_extra!(InlineSecretMetadata, "Secret metadata (name, labels, annotations)",
    optional {
        labels => "labels",
        annotations => "annotations",
    },
    required { name => "name" });

/// Metadata of an inline Secret.
#[derive(Clone, Default, Debug, PartialEq, Serialize, JsonSchema)]
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
