//! Decoding without building trees: fields this version does not model are kept as the JSON text
//! they arrived as ([`RawJson`]), never parsed into a `serde_json::Value`. So the nesting depth or
//! size of a field rndc-warden does not read never matters (no recursion limit, no 45x memory
//! blow-up of a value tree), and full upstream objects still round-trip byte for byte.
//!
//! `#[serde(flatten)]` cannot do this (it buffers every unknown field as a tree first), so the
//! types with unmodelled fields get their `Deserialize` from [`deserialize_keeping_extra!`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// One unmodelled JSON value, kept as text. Decoding it needs a `serde_json` deserializer (or a
/// `serde_json::Value`); YAML goes through `serde_json::Value` first.
#[derive(Clone)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// A raw value from JSON text (`None` if it is not JSON).
    pub fn from_json(text: &str) -> Option<Self> {
        RawValue::from_string(text.to_owned()).ok().map(Self)
    }

    /// The value decoded as `T`, if it is one (e.g. a string).
    pub fn decode<T: de::DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_str(self.get()).ok()
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl fmt::Debug for RawJson {
    /// Unmodelled fields are not shown: they may be large, and nothing says what they hold.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawJson({} bytes)", self.get().len())
    }
}

impl Serialize for RawJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(Self)
    }
}

/// Fields this version does not model, kept verbatim so that objects round-trip unchanged.
pub type Extra = BTreeMap<String, RawJson>;

/// A map key, borrowed from the input when it can be.
pub(crate) struct Key<'de>(pub Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The most entries read of a map of key data, labels or annotations inside an `rndcKey` block;
/// an RNDC key needs four. The rest are skipped unread and counted.
pub const MAX_MAP_ENTRIES: usize = 64;

/// A string map read up to [`MAX_MAP_ENTRIES`] entries; `.1` counts the entries skipped.
pub(crate) struct BoundedStrings(pub BTreeMap<String, String>, pub usize);

impl<'de> Deserialize<'de> for BoundedStrings {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = BoundedStrings;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut kept = BTreeMap::new();
                let mut skipped = 0;
                while let Some(Key(key)) = map.next_key()? {
                    if kept.len() < MAX_MAP_ENTRIES {
                        let value: String = map.next_value()?;
                        kept.insert(key.into_owned(), value);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                        skipped += 1;
                    }
                }
                Ok(BoundedStrings(kept, skipped))
            }
        }
        deserializer.deserialize_map(MapVisitor)
    }
}

/// Reads one field value into `slot`, failing on a second occurrence as derived types do.
pub(crate) fn set_once<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
    slot: &mut Option<T>,
    map: &mut A,
    name: &'static str,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::duplicate_field(name));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

/// `Deserialize` for a struct of optional modelled fields plus `extra: Extra`: modelled fields by
/// their JSON names, everything else kept raw in `extra`. `required` fields fail when missing.
macro_rules! deserialize_keeping_extra {
    (
        $ty:ident, $expecting:literal,
        optional { $($field:ident => $json:literal),* $(,)? }
        $(, required { $($req:ident => $rjson:literal),* $(,)? })?
    ) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct FieldsVisitor;
                impl<'de> serde::de::Visitor<'de> for FieldsVisitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<$ty, A::Error> {
                        $(let mut $field = None;)*
                        $($(let mut $req = None;)*)?
                        let mut extra = $crate::api::Extra::new();
                        while let Some($crate::api::raw::Key(key)) = map.next_key()? {
                            match key.as_ref() {
                                $($json => $crate::api::raw::set_once(&mut $field, &mut map, $json)?,)*
                                $($($rjson => $crate::api::raw::set_once(&mut $req, &mut map, $rjson)?,)*)?
                                _ => {
                                    extra.insert(key.into_owned(), map.next_value()?);
                                }
                            }
                        }
                        Ok($ty {
                            $($field: $field.unwrap_or_default(),)*
                            $($($req: $req.ok_or_else(|| {
                                <A::Error as serde::de::Error>::missing_field($rjson)
                            })?,)*)?
                            extra,
                        })
                    }
                }
                deserializer.deserialize_map(FieldsVisitor)
            }
        }
    };
}
pub(crate) use deserialize_keeping_extra;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Bind9InstanceSpec, InlineSecret, RndcKeyConfig};

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn unmodelled_fields_of_any_depth_are_kept_verbatim() {
        let deep = nested(10_000);
        let json = format!(r#"{{"role":"primary","junk":{deep},"n":1}}"#);
        let spec: Bind9InstanceSpec = serde_json::from_str(&json).expect("decodes");
        assert_eq!(spec.role.as_deref(), Some("primary"));
        assert_eq!(spec.extra["junk"].get(), deep);
        assert_eq!(serde_json::to_string(&spec).expect("encodes"), json);
    }

    #[test]
    fn decoding_from_a_value_works_too() {
        let value = serde_json::json!({"autoRotate": true, "future": {"a": [1, 2]}});
        let block: RndcKeyConfig = serde_json::from_value(value).expect("decodes");
        assert_eq!(block.auto_rotate, Some(true));
        assert_eq!(block.extra["future"].get(), r#"{"a":[1,2]}"#);
    }

    #[test]
    fn duplicate_and_missing_fields_are_errors() {
        let duplicate =
            serde_json::from_str::<RndcKeyConfig>(r#"{"algorithm":"a","algorithm":"b"}"#);
        assert!(duplicate.is_err());
        let missing = serde_json::from_str::<InlineSecret>(r#"{"type":"Opaque"}"#);
        assert!(
            missing
                .expect_err("metadata is required")
                .to_string()
                .contains("missing field `metadata`")
        );
    }

    #[test]
    fn inline_key_data_is_read_up_to_the_bound_and_the_rest_counted() {
        let entries: Vec<String> = (0..1000).map(|i| format!(r#""k{i}":"v""#)).collect();
        let json = format!(
            r#"{{"metadata":{{"name":"x"}},"data":{{{}}}}}"#,
            entries.join(",")
        );
        let inline: InlineSecret = serde_json::from_str(&json).expect("decodes");
        assert_eq!(
            inline.data.as_ref().map(BTreeMap::len),
            Some(MAX_MAP_ENTRIES)
        );
        assert_eq!(inline.left_out_entries, 1000 - MAX_MAP_ENTRIES);
    }
}
