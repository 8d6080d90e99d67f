//! Planting a marker key in every key-bearing place of admission requests and manifests, and
//! finding it again in anything rndc-warden answers, logs or prints.
//!
//! The marker is 32 fixed random-looking bytes. It is planted as its base64 text (how keys are
//! written in `stringData`, `rndc.key` and pasted fields) or as base64 of that text (how Secret
//! `data` carries it), in every wrong type and shape. [`leak`] reports any 8-character window of
//! either text, or any 8-byte window of the raw bytes, found in an output.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

/// The marker's raw key bytes.
pub const MARKER_BYTES: [u8; 32] = [
    0x9d, 0x3b, 0x71, 0xe2, 0x05, 0xc8, 0x4a, 0xf6, 0x13, 0x8e, 0xb7, 0x2c, 0x60, 0xd9, 0x47, 0xaa,
    0x1f, 0x95, 0x3e, 0xc4, 0x7b, 0x02, 0xe8, 0x56, 0xbd, 0x21, 0x9a, 0x6f, 0xd3, 0x38, 0x84, 0x0c,
];

/// How many characters of the marker may appear together before it counts as a leak.
pub const WINDOW: usize = 8;

/// The marker as base64 text (44 characters).
pub fn marker() -> String {
    STANDARD.encode(MARKER_BYTES)
}

/// The marker text base64-encoded again (a Secret `data` value holding it).
pub fn marker_data() -> String {
    STANDARD.encode(marker())
}

/// The first window of the marker found in `output`, if any: of its text, of its `data` form, or
/// of its raw bytes.
pub fn leak(output: &[u8]) -> Option<String> {
    static WINDOWS: std::sync::OnceLock<std::collections::HashSet<[u8; WINDOW]>> =
        std::sync::OnceLock::new();
    let windows = WINDOWS.get_or_init(|| {
        let (text, data) = (marker(), marker_data());
        [text.as_bytes(), data.as_bytes(), &MARKER_BYTES[..]]
            .into_iter()
            .flat_map(|form| form.windows(WINDOW))
            .filter_map(|w| <[u8; WINDOW]>::try_from(w).ok())
            .collect()
    });
    // One pass over the output, whatever its size.
    output
        .windows(WINDOW)
        .filter_map(|w| <[u8; WINDOW]>::try_from(w).ok())
        .find(|w| windows.contains(w))
        .map(|w| {
            if w.iter().all(u8::is_ascii_graphic) {
                String::from_utf8_lossy(&w).into_owned()
            } else {
                format!("raw bytes {w:02x?}")
            }
        })
}

/// The kinds a marker is planted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantKind {
    /// `bindy.firestoned.io/v1beta1` Bind9Instance.
    Instance,
    /// `bindy.firestoned.io/v1beta1` Bind9Cluster.
    Cluster,
    /// `bindy.firestoned.io/v1beta1` ClusterBind9Provider.
    Provider,
    /// A core/v1 Secret labelled as an RNDC key.
    Secret,
}

impl PlantKind {
    /// Every kind.
    pub const ALL: [PlantKind; 4] = [Self::Instance, Self::Cluster, Self::Provider, Self::Secret];

    /// The kind's name.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Instance => "Bind9Instance",
            Self::Cluster => "Bind9Cluster",
            Self::Provider => "ClusterBind9Provider",
            Self::Secret => "Secret",
        }
    }

    /// The request's `kind` (group, version, kind).
    pub fn group_version_kind(self) -> Value {
        match self {
            Self::Secret => json!({"group": "", "version": "v1", "kind": "Secret"}),
            _ => json!({"group": "bindy.firestoned.io", "version": "v1beta1", "kind": self.kind()}),
        }
    }

    /// A valid object of this kind, before planting.
    pub fn base_object(self) -> Value {
        match self {
            Self::Instance => json!({
                "apiVersion": "bindy.firestoned.io/v1beta1", "kind": "Bind9Instance",
                "metadata": {"name": "dns-0", "namespace": "dns"},
                "spec": {"role": "primary", "clusterRef": "", "rndcKey": {
                    "autoRotate": true,
                    "secret": {"metadata": {"name": "dns-0-rndc-key"}}
                }}
            }),
            Self::Cluster | Self::Provider => json!({
                "apiVersion": "bindy.firestoned.io/v1beta1", "kind": self.kind(),
                "metadata": {"name": "dns", "namespace": "dns"},
                "spec": {"primary": {"rndcKey": {
                    "autoRotate": true,
                    "secret": {"metadata": {"name": "dns-primary-rndc-key"}}
                }}}
            }),
            Self::Secret => json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "dns-0-rndc-key", "namespace": "dns",
                             "labels": {"bindy.firestoned.io/rndc-key": "true"}},
                "type": "Opaque",
                "stringData": {"key-name": "bindy-operator", "algorithm": "hmac-sha256"}
            }),
        }
    }

    /// JSON pointers of the places a key is held or pasted by mistake in this kind.
    pub fn places(self) -> &'static [&'static str] {
        const INSTANCE: &[&str] = &[
            "/spec/rndcKey",
            "/spec/rndcKey/secret",
            "/spec/rndcKey/secret/data",
            "/spec/rndcKey/secret/data/secret",
            "/spec/rndcKey/secret/data/rndc.key",
            "/spec/rndcKey/secret/stringData",
            "/spec/rndcKey/secret/stringData/secret",
            "/spec/rndcKey/secret/stringData/rndc.key",
            "/spec/rndcKey/secret/stringData/algorithm",
            "/spec/rndcKey/secret/stringData/key-name",
            "/spec/rndcKey/secret/metadata",
            "/spec/rndcKey/secret/metadata/name",
            "/spec/rndcKey/secret/metadata/annotations",
            "/spec/rndcKey/secret/type",
            "/spec/rndcKey/secretRef",
            "/spec/rndcKey/secretRef/name",
            "/spec/rndcKey/secretRef/algorithm",
            "/spec/rndcKey/algorithm",
            "/spec/rndcKey/rotateAfter",
            "/spec/rndcKey/autoRotate",
            "/spec/rndcSecretRef",
            "/spec/rndcSecretRef/algorithm",
            "/spec/config/rndcSecretRef",
            "/spec/role",
            "/spec/clusterRef",
            "/spec/rndcKeys",
        ];
        const CLUSTER: &[&str] = &[
            "/spec/primary/rndcKey",
            "/spec/primary/rndcKey/secret",
            "/spec/primary/rndcKey/secret/data",
            "/spec/primary/rndcKey/secret/data/secret",
            "/spec/primary/rndcKey/secret/stringData",
            "/spec/primary/rndcKey/secret/stringData/secret",
            "/spec/primary/rndcKey/secret/stringData/rndc.key",
            "/spec/primary/rndcKey/secretRef",
            "/spec/primary/rndcKey/algorithm",
            "/spec/primary/rndcKey/rotateAfter",
            "/spec/primary/rndcSecretRef",
            "/spec/secondary",
            "/spec/secondary/rndcKey",
            "/spec/rndcKey",
            "/spec/global/rndcSecretRef",
            "/spec/rndcSecretRefs",
        ];
        const SECRET: &[&str] = &[
            "/data",
            "/data/secret",
            "/data/rndc.key",
            "/data/algorithm",
            "/data/key-name",
            "/stringData",
            "/stringData/secret",
            "/stringData/rndc.key",
            "/stringData/algorithm",
            "/stringData/key-name",
            "/metadata/annotations",
            "/metadata/annotations/bindy.firestoned.io~1rndc-created-at",
            "/metadata/annotations/bindy.firestoned.io~1rndc-rotate-at",
            "/metadata/annotations/bindy.firestoned.io~1rndc-rotation-count",
            "/metadata/labels",
            "/type",
        ];
        match self {
            Self::Instance => INSTANCE,
            Self::Cluster | Self::Provider => CLUSTER,
            Self::Secret => SECRET,
        }
    }
}

/// The shapes the marker is planted in (the right type and every wrong one).
pub const SHAPES: usize = 9;

/// The marker in shape `shape` (modulo [`SHAPES`]); `as_data` plants its `data` form.
pub fn shaped_marker(shape: usize, as_data: bool) -> Value {
    let text = if as_data { marker_data() } else { marker() };
    let rndc_key = format!(
        "key \"bindy-operator\" {{\n    algorithm hmac-sha512;\n    secret \"{}\";\n}};\n",
        marker()
    );
    match shape % SHAPES {
        0 => Value::String(text),
        1 => json!([text]),
        2 => json!({ text.clone(): text }),
        3 => json!({ "secret": text, "rndc.key": rndc_key }),
        4 => json!({ "nested": [{ "deeper": text }] }),
        5 => Value::String(rndc_key),
        6 => json!([[text.clone()], {"k": text}]),
        7 => Value::String(format!("hmac-{text}")),
        _ => json!({ "metadata": { "name": text.clone() }, "stringData": { "secret": text } }),
    }
}

/// `object` with `value` set at the JSON pointer `place`, creating objects on the way (a part
/// that is not an object is replaced by one).
pub fn plant(mut object: Value, place: &str, value: Value) -> Value {
    let tokens: Vec<String> = place
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    let mut at = &mut object;
    for (i, token) in tokens.iter().enumerate() {
        if !at.is_object() {
            *at = json!({});
        }
        let Some(map) = at.as_object_mut() else {
            break;
        };
        if i + 1 == tokens.len() {
            map.insert(token.clone(), value);
            break;
        }
        at = map.entry(token.clone()).or_insert_with(|| json!({}));
    }
    object
}

/// An AdmissionReview v1 request for `object` of `kind` (CREATE, or UPDATE with `old`).
pub fn review(kind: PlantKind, object: &Value, old: Option<&Value>, username: &str) -> Value {
    let mut request = json!({
        "uid": "00000000-0000-0000-0000-00000000beef",
        "kind": kind.group_version_kind(),
        "resource": {"group": "", "version": "v1", "resource": "x"},
        "name": object.pointer("/metadata/name").cloned().unwrap_or(Value::Null),
        "namespace": "dns",
        "operation": if old.is_some() { "UPDATE" } else { "CREATE" },
        "userInfo": {"username": username},
        "object": object,
    });
    if let Some(old) = old {
        request["oldObject"] = old.clone();
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_found_in_each_of_its_forms_and_not_elsewhere() {
        assert!(leak(marker().as_bytes()).is_some());
        assert!(leak(format!("x{}y", &marker()[10..18]).as_bytes()).is_some());
        assert!(leak(&marker_data().as_bytes()[20..28]).is_some());
        assert!(leak(&MARKER_BYTES[3..11]).is_some());
        assert!(leak(b"spec.rndcKey.secret: expected an inline Secret, found a string").is_none());
    }

    #[test]
    fn planting_creates_and_replaces_parts_on_the_way() {
        let object = plant(
            json!({"spec": {"role": "primary"}}),
            "/spec/rndcKey/secret",
            json!(1),
        );
        assert_eq!(
            object,
            json!({"spec": {"role": "primary", "rndcKey": {"secret": 1}}})
        );
        let object = plant(json!({"spec": "x"}), "/spec/a~1b", json!(2));
        assert_eq!(object, json!({"spec": {"a/b": 2}}));
    }
}
