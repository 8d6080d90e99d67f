//! Checks of key Secret data (a real Secret or an inline `rndcKey.secret`): `rndc.key` parses, the
//! `key-name`/`algorithm`/`secret` data keys agree with it, and the key is long enough.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Secret;

use super::algorithm::{Algorithm, Strength};
use super::names::data_path;
use super::rndc_key::{KeyMaterial, parse_rndc_key};
use super::settings::PolicyConfig;
use super::shown::shown;
use crate::api::{
    DATA_ALGORITHM, DATA_KEY_NAME, DATA_RNDC_KEY, DATA_SECRET, DEFAULT_KEY_NAME, InlineSecret,
};

/// Denials and warnings collected by a check. Denial text is kept up to
/// [`MAX_MESSAGE_BYTES`](super::shown::MAX_MESSAGE_BYTES) and warnings up to
/// [`MAX_WARNINGS_BYTES`](super::review::MAX_WARNINGS_BYTES); beyond that findings are only
/// counted, so one object with a million problems costs no more memory than one with a hundred.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Findings {
    /// Reasons to deny.
    pub denials: Vec<String>,
    /// Denials found but not kept (over the size cap).
    pub denials_left_out: usize,
    /// Warnings for the user.
    pub warnings: Vec<String>,
    denial_bytes: usize,
    warning_bytes: usize,
}

impl Findings {
    pub(crate) fn deny(&mut self, message: String) {
        if self.denial_bytes + message.len() > super::shown::MAX_MESSAGE_BYTES {
            self.denials_left_out += 1;
        } else {
            self.denial_bytes += message.len();
            self.denials.push(message);
        }
    }

    pub(crate) fn warn(&mut self, message: String) {
        // Twice the response cap: `limit_warnings` cuts them to size and counts what it drops.
        if self.warning_bytes <= 2 * super::review::MAX_WARNINGS_BYTES {
            self.warning_bytes += message.len();
            self.warnings.push(message);
        }
    }
}

/// Which data keys hold the key name, algorithm and secret (a `secretRef` may rename them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataKeys {
    /// Data key of the key name (`key-name`).
    pub key_name: String,
    /// Data key of the algorithm (`algorithm`).
    pub algorithm: String,
    /// Data key of the base64 key (`secret`).
    pub secret: String,
}

impl Default for DataKeys {
    fn default() -> Self {
        Self {
            key_name: DATA_KEY_NAME.to_owned(),
            algorithm: DATA_ALGORITHM.to_owned(),
            secret: DATA_SECRET.to_owned(),
        }
    }
}

/// One data value and the field path it came from.
#[derive(Clone)]
pub(crate) struct DataValue {
    pub bytes: Vec<u8>,
    pub path: String,
}

/// The effective data of a Secret: `data` overlaid by `stringData`, as the API server merges them.
pub(crate) fn secret_values(secret: &Secret) -> BTreeMap<String, DataValue> {
    let mut values = BTreeMap::new();
    for (key, value) in secret.data.iter().flatten() {
        let path = data_path("data", key);
        values.insert(
            key.clone(),
            DataValue {
                bytes: value.0.clone(),
                path,
            },
        );
    }
    for (key, value) in secret.string_data.iter().flatten() {
        let path = data_path("stringData", key);
        values.insert(
            key.clone(),
            DataValue {
                bytes: value.clone().into_bytes(),
                path,
            },
        );
    }
    values
}

/// The effective data of an inline Secret; `data` values that are not base64 are denied.
pub(crate) fn inline_values(
    inline: &InlineSecret,
    prefix: &str,
    findings: &mut Findings,
) -> BTreeMap<String, DataValue> {
    let mut values = BTreeMap::new();
    for (key, value) in inline.data.iter().flatten() {
        let path = data_path(&format!("{prefix}.data"), key);
        match KeyMaterial::from_base64(value) {
            Some(bytes) => {
                values.insert(
                    key.clone(),
                    DataValue {
                        bytes: bytes.as_bytes().to_vec(),
                        path,
                    },
                );
            }
            None => findings.deny(format!(
                "{path}: the value is not valid base64 (data values must be base64-encoded); \
                 base64-encode it or move it to {prefix}.stringData"
            )),
        }
    }
    for (key, value) in inline.string_data.iter().flatten() {
        let path = data_path(&format!("{prefix}.stringData"), key);
        values.insert(
            key.clone(),
            DataValue {
                bytes: value.clone().into_bytes(),
                path,
            },
        );
    }
    values
}

/// What the data says about the key, for callers that compare or audit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyFacts {
    /// Algorithm (from `rndc.key`, else from the algorithm data key).
    pub algorithm: Option<Algorithm>,
    /// Key name (from `rndc.key`, else from the key-name data key).
    pub name: Option<String>,
    /// Key bytes (from `rndc.key`, else from the secret data key).
    pub secret: Option<KeyMaterial>,
}

/// What the check needs beyond the data.
pub(crate) struct KeyDataRules<'a> {
    pub keys: &'a DataKeys,
    /// A real Secret mounted by pods needs `rndc.key` (named), `algorithm` and `secret` (bindcar).
    pub require_complete: bool,
    /// Where the data lives, for messages about missing keys (`data`).
    pub prefix: &'a str,
    /// The algorithm the configuration asks for, with its field path.
    pub expected_algorithm: Option<(Algorithm, &'a str)>,
}

/// A message naming an algorithm as denied, with the reason and the fix.
pub(crate) fn denied_algorithm_message(
    path: &str,
    algorithm: Algorithm,
    cfg: &PolicyConfig,
) -> String {
    let why = match algorithm.strength() {
        Strength::Deprecated => "it is deprecated by RFC 8945 §10",
        _ => "it is on the deny list",
    };
    format!(
        "{path}: {algorithm} is not allowed by policy ({why}); use {}",
        cfg.allowed_algorithms_hint()
    )
}

/// A warning about `hmac-sha224`.
pub(crate) fn weak_algorithm_warning(path: &str) -> String {
    format!("{path}: hmac-sha224 is weaker than hmac-sha256; prefer hmac-sha256 or stronger")
}

/// Checks an algorithm name of a spec field; returns it when it parses.
pub(crate) fn check_algorithm_name(
    path: impl fmt::Display,
    name: &str,
    cfg: &PolicyConfig,
    findings: &mut Findings,
) -> Option<Algorithm> {
    check_algorithm(path, name, Some(shown(name)), cfg, findings)
}

/// Checks an algorithm name; `quoted` is how the message shows the value (`None`: not at all,
/// for values read from Secret data, which may be key material under a renamed data key).
fn check_algorithm(
    path: impl fmt::Display,
    name: &str,
    quoted: Option<String>,
    cfg: &PolicyConfig,
    findings: &mut Findings,
) -> Option<Algorithm> {
    let Some(algorithm) = Algorithm::parse(name) else {
        let value = quoted.map(|q| format!("{q} ")).unwrap_or_default();
        findings.deny(format!(
            "{path}: {value}is not a supported algorithm; use {}",
            cfg.allowed_algorithms_hint()
        ));
        return None;
    };
    if cfg.is_denied(algorithm) {
        findings.deny(denied_algorithm_message(&path.to_string(), algorithm, cfg));
    } else if algorithm.strength() == Strength::Weak {
        findings.warn(weak_algorithm_warning(&path.to_string()));
    }
    Some(algorithm)
}

fn text<'a>(value: &'a DataValue, findings: &mut Findings, what: &str) -> Option<&'a str> {
    match std::str::from_utf8(&value.bytes) {
        Ok(text) => Some(text),
        Err(_) => {
            findings.deny(format!(
                "{}: is not UTF-8 text; store {what} as text",
                value.path
            ));
            None
        }
    }
}

/// Checks key data and reports what it holds.
pub(crate) fn check_key_values(
    values: &BTreeMap<String, DataValue>,
    rules: &KeyDataRules<'_>,
    cfg: &PolicyConfig,
    findings: &mut Findings,
) -> KeyFacts {
    let rndc_value = values.get(DATA_RNDC_KEY);
    let algorithm_value = values.get(&rules.keys.algorithm);
    let secret_value = values.get(&rules.keys.secret);
    let name_value = values.get(&rules.keys.key_name);

    let mut facts = KeyFacts::default();
    let rndc = rndc_value.and_then(|value| {
        let text = text(value, findings, "the BIND key statement")?;
        match parse_rndc_key(text) {
            Ok(key) => Some((key, value.path.as_str())),
            Err(error) => {
                findings.deny(format!(
                    "{}: {error}; write it as key \"{DEFAULT_KEY_NAME}\" {{ algorithm {}; secret \
                     \"<base64>\"; }};",
                    value.path, cfg.default_algorithm
                ));
                None
            }
        }
    });
    if let Some((key, path)) = &rndc {
        if cfg.is_denied(key.algorithm) {
            findings.deny(denied_algorithm_message(path, key.algorithm, cfg));
        } else if key.algorithm.strength() == Strength::Weak {
            findings.warn(weak_algorithm_warning(path));
        }
    }

    let data_algorithm = algorithm_value.and_then(|value| {
        let name = text(value, findings, "the algorithm name")?.trim();
        check_algorithm(&value.path, name, None, cfg, findings).map(|a| (a, value.path.as_str()))
    });
    let data_secret = secret_value.and_then(|value| {
        let encoded = text(value, findings, "the base64 key")?;
        let material = KeyMaterial::from_base64(encoded);
        if material.is_none() {
            findings.deny(format!(
                "{}: the key is not valid base64; store it as standard base64, e.g. the output \
                 of \"openssl rand -base64 32\"",
                value.path
            ));
        }
        material.map(|m| (m, value.path.as_str()))
    });
    let data_name = name_value
        .and_then(|value| text(value, findings, "the key name").map(|n| (n.trim(), value)));

    if let Some((key, rndc_path)) = &rndc {
        if let Some((algorithm, path)) = &data_algorithm
            && *algorithm != key.algorithm
        {
            findings.deny(format!(
                "{path}: {algorithm} disagrees with {rndc_path} ({}); make them the same",
                key.algorithm
            ));
        }
        if let Some((secret, path)) = &data_secret
            && *secret != key.secret
        {
            findings.deny(format!(
                "{path}: differs from the secret in {rndc_path}; store the same key in both"
            ));
        }
        if let Some((name, value)) = &data_name
            && *name != key.name
        {
            findings.deny(format!(
                "{}: disagrees with the key name in {rndc_path}; make them the same",
                value.path,
            ));
        }
    }

    facts.algorithm = rndc
        .as_ref()
        .map(|(k, _)| k.algorithm)
        .or(data_algorithm.map(|(a, _)| a));
    facts.name = rndc
        .as_ref()
        .map(|(k, _)| k.name.clone())
        .or(data_name.map(|(n, _)| n.to_owned()));
    let secret_path = rndc
        .as_ref()
        .map(|(_, p)| *p)
        .or(data_secret.as_ref().map(|(_, p)| *p));
    facts.secret = rndc
        .as_ref()
        .map(|(k, _)| k.secret.clone())
        .or(data_secret.as_ref().map(|(s, _)| s.clone()));

    if let Some((expected, config_path)) = rules.expected_algorithm
        && let Some(actual) = facts.algorithm
        && actual != expected
    {
        let path = rndc
            .as_ref()
            .map(|(_, p)| *p)
            .or(data_algorithm.map(|(_, p)| p))
            .unwrap_or(rules.prefix);
        findings.deny(format!(
            "{path}: {actual} disagrees with {config_path} ({expected}); make them the same"
        ));
    }
    if let (Some(algorithm), Some(secret), Some(path)) =
        (facts.algorithm, &facts.secret, secret_path)
        && secret.len() < algorithm.output_len()
    {
        let needed = algorithm.output_len();
        findings.deny(format!(
            "{path}: the key is {} bytes, shorter than the {needed}-byte output of {algorithm}; \
             generate a new one with \"tsig-keygen -a {algorithm}\" or \"openssl rand -base64 \
             {needed}\"",
            secret.len()
        ));
    }
    if let Some(name) = &facts.name
        && name != DEFAULT_KEY_NAME
    {
        let path = rndc
            .as_ref()
            .map(|(_, p)| *p)
            .or(data_name.map(|(_, v)| v.path.as_str()));
        findings.warn(format!(
            "{}: the key name is not \"{DEFAULT_KEY_NAME}\", the name Bindy's named.conf expects",
            path.unwrap_or(rules.prefix),
        ));
    }

    if rules.require_complete {
        let missing =
            |key: &str, why: &str| format!("{} is missing; {why}", data_path(rules.prefix, key));
        if rndc_value.is_none() {
            findings.deny(missing(
                DATA_RNDC_KEY,
                "named includes it: add key \"bindy-operator\" { algorithm <alg>; secret \
                 \"<base64>\"; };",
            ));
        }
        if algorithm_value.is_none() {
            findings.deny(missing(
                &rules.keys.algorithm,
                "bindcar reads it: add the key's algorithm, e.g. hmac-sha256",
            ));
        }
        if secret_value.is_none() {
            findings.deny(missing(
                &rules.keys.secret,
                "bindcar reads it: add the base64 key from rndc.key",
            ));
        }
    }
    facts
}

/// Reads what a Secret's data says about its key, ignoring problems (for audit and planning).
pub fn key_facts(secret: &Secret, cfg: &PolicyConfig) -> (KeyFacts, Findings) {
    let mut findings = Findings::default();
    let keys = DataKeys::default();
    let rules = KeyDataRules {
        keys: &keys,
        require_complete: true,
        prefix: "data",
        expected_algorithm: None,
    };
    let facts = check_key_values(&secret_values(secret), &rules, cfg, &mut findings);
    (facts, findings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rndc_key::{RndcKey, key_secret_from_bytes};
    use k8s_openapi::ByteString;

    fn secret_with(data: &[(&str, &[u8])]) -> Secret {
        Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    fn generated(algorithm: Algorithm, len: usize) -> BTreeMap<String, ByteString> {
        let data = crate::policy::rndc_key::KeySecretData::from_key(RndcKey {
            name: "bindy-operator".to_owned(),
            algorithm,
            secret: KeyMaterial::new(vec![3; len]),
        });
        data.into_data()
    }

    fn check(secret: &Secret) -> Findings {
        key_facts(secret, &PolicyConfig::default()).1
    }

    #[test]
    fn a_generated_secret_passes() {
        let data = key_secret_from_bytes("bindy-operator", Algorithm::HmacSha256, &[1; 32])
            .expect("enough bytes");
        let secret = Secret {
            data: Some(data.into_data()),
            ..Secret::default()
        };
        assert_eq!(check(&secret), Findings::default());
    }

    #[test]
    fn missing_data_keys_are_each_denied_with_the_reason() {
        let findings = check(&secret_with(&[("key-name", b"bindy-operator")]));
        assert_eq!(
            findings.denials,
            [
                "data[\"rndc.key\"] is missing; named includes it: add key \"bindy-operator\" { \
                 algorithm <alg>; secret \"<base64>\"; };",
                "data.algorithm is missing; bindcar reads it: add the key's algorithm, e.g. \
                 hmac-sha256",
                "data.secret is missing; bindcar reads it: add the base64 key from rndc.key",
            ]
        );
    }

    #[test]
    fn data_keys_that_disagree_with_rndc_key_are_denied() {
        let mut data = generated(Algorithm::HmacSha256, 32);
        data.insert("algorithm".into(), ByteString(b"hmac-sha512".to_vec()));
        data.insert(
            "secret".into(),
            ByteString(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_vec()),
        );
        data.insert("key-name".into(), ByteString(b"other".to_vec()));
        let secret = Secret {
            data: Some(data),
            ..Secret::default()
        };
        let denials = check(&secret).denials;
        assert_eq!(
            denials,
            [
                "data.algorithm: hmac-sha512 disagrees with data[\"rndc.key\"] (hmac-sha256); \
                 make them the same",
                "data.secret: differs from the secret in data[\"rndc.key\"]; store the same key \
                 in both",
                "data[\"key-name\"]: disagrees with the key name in data[\"rndc.key\"]; make them \
                 the same",
            ]
        );
    }

    #[test]
    fn a_key_shorter_than_the_hash_output_is_denied() {
        let secret = Secret {
            data: Some(generated(Algorithm::HmacSha512, 32)),
            ..Secret::default()
        };
        assert_eq!(
            check(&secret).denials,
            [
                "data[\"rndc.key\"]: the key is 32 bytes, shorter than the 64-byte output of \
              hmac-sha512; generate a new one with \"tsig-keygen -a hmac-sha512\" or \"openssl \
              rand -base64 64\""
            ]
        );
    }

    #[test]
    fn a_denied_algorithm_inside_the_secret_is_denied() {
        let secret = Secret {
            data: Some(generated(Algorithm::HmacSha1, 20)),
            ..Secret::default()
        };
        let denials = check(&secret).denials;
        assert!(
            denials.contains(
                &"data[\"rndc.key\"]: hmac-sha1 is not allowed by policy (it is deprecated by RFC \
              8945 §10); use hmac-sha512, hmac-sha384 or hmac-sha256"
                    .to_owned()
            )
        );
        assert!(
            denials
                .iter()
                .any(|d| d.starts_with("data.algorithm: hmac-sha1 is not allowed"))
        );
    }

    #[test]
    fn an_unparsable_rndc_key_is_denied_with_its_line_and_no_key_material() {
        let secret = secret_with(&[
            (
                "rndc.key",
                b"key \"bindy-operator\" {\n algorithm hmac-sha256;\n secret TOPSECRET;\n};",
            ),
            ("algorithm", b"hmac-sha256"),
            ("secret", b"VE9QU0VDUkVULVRPUFNFQ1JFVC1UT1BTRUNSRVQtVE9Q"),
        ]);
        let denials = check(&secret).denials;
        assert_eq!(denials.len(), 1, "{denials:?}");
        assert!(denials[0].starts_with(
            "data[\"rndc.key\"]: line 3: the secret must be a quoted base64 string; write it as"
        ));
        assert!(!denials[0].contains("TOPSECRET") && !denials[0].contains("VE9QU0VDUkVU"));
        assert_eq!(
            key_facts(&secret, &PolicyConfig::default())
                .0
                .secret
                .map(|s| s.len()),
            Some(33)
        );
    }

    #[test]
    fn string_data_overrides_data_and_is_named_in_messages() {
        let mut secret = Secret {
            data: Some(generated(Algorithm::HmacSha256, 32)),
            ..Secret::default()
        };
        secret.string_data = Some([("algorithm".to_owned(), "sha256".to_owned())].into());
        assert_eq!(
            check(&secret).denials,
            [
                "stringData.algorithm: is not a supported algorithm; use hmac-sha512, \
              hmac-sha384 or hmac-sha256"
            ]
        );
    }

    #[test]
    fn sha224_and_a_foreign_key_name_draw_warnings() {
        let mut data = generated(Algorithm::HmacSha224, 28);
        let rndc = RndcKey {
            name: "rndc-key".into(),
            algorithm: Algorithm::HmacSha224,
            secret: KeyMaterial::new(vec![3; 28]),
        };
        data.insert("rndc.key".into(), ByteString(rndc.to_bind().into_bytes()));
        data.remove("key-name");
        let findings = check(&Secret {
            data: Some(data),
            ..Secret::default()
        });
        assert_eq!(findings.denials, Vec::<String>::new());
        assert_eq!(
            findings.warnings,
            [
                "data[\"rndc.key\"]: hmac-sha224 is weaker than hmac-sha256; prefer hmac-sha256 \
                 or stronger",
                "data.algorithm: hmac-sha224 is weaker than hmac-sha256; prefer hmac-sha256 or \
                 stronger",
                "data[\"rndc.key\"]: the key name is not \"bindy-operator\", the name Bindy's \
                 named.conf expects",
            ]
        );
    }

    #[test]
    fn non_utf8_values_are_denied() {
        let findings = check(&secret_with(&[
            ("rndc.key", &[0xff, 0xfe]),
            ("algorithm", b"hmac-sha256"),
            ("secret", &[0xff]),
        ]));
        assert_eq!(
            findings.denials,
            [
                "data[\"rndc.key\"]: is not UTF-8 text; store the BIND key statement as text",
                "data.secret: is not UTF-8 text; store the base64 key as text",
            ]
        );
    }
}
