//! Decoding objects with errors that name the field and what was expected, never the value found.
//!
//! serde's own messages quote the offending value (`invalid type: string "<a whole key>",
//! expected …`), and a key pasted into the wrong field would be echoed in a denial and a log
//! line. Every decode of request or manifest input goes through here instead: the message is
//! built from the field path (map keys shown only when short, see
//! [`shown_key`](crate::policy::looks_like_key)) and fixed phrases for the found and expected
//! types.

use std::fmt;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::policy::{MAX_QUOTED_CHARS, looks_like_key};

/// Why an object does not decode: where, and what was expected there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct DecodeError {
    /// Field path such as `spec.rndcKey.secret` (empty: the whole object).
    pub path: String,
    /// What is wrong there, without the value.
    pub problem: String,
}

impl DecodeError {
    fn describe(&self) -> String {
        if self.path.is_empty() {
            self.problem.clone()
        } else {
            format!("{}: {}", self.path, self.problem)
        }
    }

    /// This error with its path under `prefix` (e.g. `request.object`).
    pub fn under(mut self, prefix: &str) -> Self {
        self.path = match self.path.as_str() {
            "" => prefix.to_owned(),
            path => format!("{prefix}.{path}"),
        };
        self
    }
}

/// Decodes JSON text as `T`.
pub fn from_json<T: DeserializeOwned>(json: &str) -> Result<T, DecodeError> {
    serde_json::from_str(json).map_err(|_| explain::<T>(json))
}

/// Why `json` does not decode as `T` (call it after a plain decode failed: it decodes again,
/// tracking the path).
pub fn explain<'de, T: Deserialize<'de>>(json: &'de str) -> DecodeError {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    match serde_path_to_error::deserialize::<_, T>(&mut deserializer) {
        Ok(_) => DecodeError {
            path: String::new(),
            problem: "could not be read".to_owned(),
        },
        Err(error) => from_path_error(error.path(), error.inner()),
    }
}

/// Decodes a JSON value as `T` (YAML input goes through a value).
pub fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, DecodeError> {
    serde_path_to_error::deserialize::<_, T>(value)
        .map_err(|error| from_path_error(error.path(), error.inner()))
}

/// A message for a serde error (any format) at `path`.
fn from_path_error(path: &serde_path_to_error::Path, error: &impl fmt::Display) -> DecodeError {
    DecodeError {
        path: path_text(path),
        problem: problem(&error.to_string()),
    }
}

/// The path as `a.b[3].c`, map keys shown only when short and not key-like.
fn path_text(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&safe_name(key));
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    out
}

fn safe_name(key: &str) -> String {
    if key.chars().count() <= MAX_QUOTED_CHARS
        && !looks_like_key(key)
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    {
        key.to_owned()
    } else {
        format!("<{}-character key>", key.chars().count())
    }
}

/// serde's message turned into fixed phrases: the found value is reduced to its JSON type.
fn problem(message: &str) -> String {
    let message = strip_position(message);
    let split = |rest: &str| match rest.split_once(", expected ") {
        Some((found, expected)) => (found_phrase(found), expected_phrase(expected)),
        None => (found_phrase(rest), "a value of another type".to_owned()),
    };
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        let (found, expected) = split(rest);
        return format!("expected {expected}, found {found}");
    }
    if let Some(rest) = message.strip_prefix("invalid value: ") {
        let (found, expected) = split(rest);
        return format!("{found} that is not valid here; expected {expected}");
    }
    if let Some(rest) = message.strip_prefix("invalid length ") {
        let (length, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
        let length: String = length.chars().filter(char::is_ascii_digit).collect();
        return format!(
            "has {length} entries; expected {}",
            expected_phrase(expected)
        );
    }
    for (prefix, before, after) in [
        ("missing field `", "missing field ", ""),
        ("duplicate field `", "field ", " appears twice"),
        ("unknown field `", "unknown field ", ""),
    ] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let field = rest.split('`').next().unwrap_or_default();
            return format!("{before}{}{after}", safe_name(field));
        }
    }
    if message.starts_with("unknown variant") {
        return match message.split_once(", expected ") {
            Some((_, expected)) if is_plain(expected) => {
                format!("is not an allowed value; expected {expected}")
            }
            _ => "is not an allowed value".to_owned(),
        };
    }
    let lower = message.to_ascii_lowercase();
    if lower.contains("recursion limit") {
        return "nests too deeply".to_owned();
    }
    if lower.contains("symbol") || lower.contains("padding") || lower.contains("remainder") {
        return "is not valid base64".to_owned();
    }
    if lower.starts_with("eof") {
        return "ends too early".to_owned();
    }
    "is not valid".to_owned()
}

fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(at)
            if message[at + " at line ".len()..]
                .chars()
                .all(|c| c.is_ascii_digit() || c == ' ' || c.is_ascii_alphabetic()) =>
        {
            &message[..at]
        }
        _ => message,
    }
}

/// The JSON type of a value as serde's `Unexpected` names it (the value itself is dropped).
fn found_phrase(found: &str) -> String {
    let word = found.split([' ', '`', '"']).next().unwrap_or_default();
    match word {
        "string" | "character" => "a string",
        "integer" | "floating" => "a number",
        "boolean" => "a boolean",
        "map" | "struct" => "an object",
        "sequence" | "tuple" => "an array",
        "unit" | "Option" | "null" => "null",
        _ => "a value of another type",
    }
    .to_owned()
}

/// What was expected: a type's own description (fixed text of the decoder, never input), or a
/// fixed phrase for serde's primitive names.
fn expected_phrase(expected: &str) -> String {
    let expected = expected.trim();
    match expected {
        "a string" | "a borrowed string" | "a string or null" => "a string".to_owned(),
        "a boolean" => "true or false".to_owned(),
        "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" | "isize" => {
            "a whole number".to_owned()
        }
        "f32" | "f64" => "a number".to_owned(),
        "a map" | "a map of strings" => "an object".to_owned(),
        "a sequence" => "an array".to_owned(),
        _ if expected.starts_with("struct ") => "an object".to_owned(),
        _ if is_plain(expected) => expected.to_owned(),
        _ => "a value of another type".to_owned(),
    }
}

/// Text made only of words and punctuation a type description uses (no quotes, no backticks).
fn is_plain(text: &str) -> bool {
    text.len() <= 120
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " ,.()-/".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Bind9InstanceSpec, InlineSecret};
    use k8s_openapi::api::core::v1::Secret;

    const KEY: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";

    #[test]
    fn a_key_in_a_field_of_the_wrong_type_is_never_echoed() {
        let json = format!(r#"{{"role":"primary","rndcKey":{{"secret":"{KEY}"}}}}"#);
        let error = from_json::<Bind9InstanceSpec>(&json).expect_err("wrong type");
        let message = error.to_string();
        assert_eq!(error.path, "rndcKey.secret");
        assert!(!message.contains(&KEY[..8]), "{message}");
        assert!(message.contains("found a string"), "{message}");
        assert!(message.contains("expected an inline Secret"), "{message}");
    }

    #[test]
    fn values_and_long_keys_vanish_from_every_kind_of_error() {
        let cases = [
            format!(r#"{{"metadata":{{"name":"x"}},"data":"{KEY}"}}"#),
            format!(r#"{{"metadata":{{"name":"x"}},"data":{{"{KEY}":5}}}}"#),
            format!(r#"{{"metadata":{{"name":"x"}},"type":["{KEY}"]}}"#),
            format!(r#"{{"metadata":{{"name":{{"{KEY}":1}}}}}}"#),
        ];
        for json in cases {
            let message = from_json::<InlineSecret>(&json)
                .expect_err("invalid")
                .to_string();
            assert!(!message.contains(&KEY[..8]), "{message}");
        }
        let secret = serde_json::json!({"data": {"secret": "not base64 !!"}});
        let message = from_value::<Secret>(&secret)
            .expect_err("bad base64")
            .to_string();
        assert_eq!(message, "data.secret: is not valid base64");
    }

    #[test]
    fn the_path_and_the_expected_type_are_named() {
        let error = from_json::<Bind9InstanceSpec>(r#"{"rndcKey":{"autoRotate":"yes"}}"#)
            .expect_err("wrong type");
        assert_eq!(
            error.to_string(),
            "rndcKey.autoRotate: expected true or false, found a string"
        );
        let error = from_json::<InlineSecret>(r#"{"type":"Opaque"}"#).expect_err("missing");
        assert_eq!(error.to_string(), "missing field metadata");
        assert_eq!(
            error.under("spec.rndcKey.secret").to_string(),
            "spec.rndcKey.secret: missing field metadata"
        );
    }
}
