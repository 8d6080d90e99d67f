//! Parsing an AdmissionReview v1 body in one pass. The request borrows its strings from the body,
//! and a Bindy object is decoded straight into its type while the body is read, because the
//! apiserver sends `kind` before `object`: nothing is scanned twice and the parts no rule reads
//! (`managedFields`, kubectl's last-applied copy, `options`) are skipped, never built.
//!
//! When that fast path fails, the body is read again with the objects kept raw, so that a broken
//! object becomes a denial that names the schema error, and a broken review a precise message.

use std::borrow::Cow;
use std::fmt;

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::core::admission::Operation;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::api::decode::{self, DecodeError};
use crate::api::raw::set_once;
use crate::api::{
    Bind9Cluster, Bind9ClusterSpec, Bind9Instance, Bind9InstanceSpec, ClusterBind9Provider,
    ClusterBind9ProviderSpec, GROUP,
};
use crate::policy::shown;

/// The AdmissionReview version served.
pub const V1: &str = "admission.k8s.io/v1";

/// The parts of an AdmissionReview v1 request rndc-warden reads, borrowed from the request body.
/// The fields no rule reads (`resource`, `options`, the user's groups) are skipped.
#[derive(Debug)]
pub struct ReviewRequest<'a> {
    /// Echoed in the response.
    pub uid: Cow<'a, str>,
    /// Kind of the object.
    pub kind: ReviewKind<'a>,
    /// Name of the object (empty for `generateName` creates).
    pub name: Cow<'a, str>,
    /// Namespace of the object.
    pub namespace: Option<Cow<'a, str>>,
    /// CREATE, UPDATE, DELETE or CONNECT.
    pub operation: Operation,
    /// Who sent the request.
    pub user_info: ReviewUser<'a>,
    /// The submitted object (CREATE, UPDATE).
    pub object: Option<RequestObject<'a>>,
    /// The stored object (UPDATE, DELETE).
    pub old_object: Option<RequestObject<'a>>,
}

/// `request.kind` of an AdmissionReview: the object's group, version and kind.
#[derive(Debug, Deserialize)]
pub struct ReviewKind<'a> {
    /// API group (empty for the core group).
    #[serde(default, borrow)]
    pub group: Cow<'a, str>,
    /// API version.
    #[serde(default, borrow)]
    pub version: Cow<'a, str>,
    /// Kind.
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
}

/// `request.userInfo` of an AdmissionReview, as far as the rules read it.
#[derive(Debug, Default, Deserialize)]
pub struct ReviewUser<'a> {
    /// The requesting user's name (the rotator's ServiceAccount is recognised by it).
    #[serde(default, borrow)]
    pub username: Option<Cow<'a, str>>,
}

/// The kinds the webhook handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandledKind {
    /// `bindy.firestoned.io` Bind9Instance.
    Instance,
    /// `bindy.firestoned.io` Bind9Cluster.
    Cluster,
    /// `bindy.firestoned.io` ClusterBind9Provider.
    Provider,
    /// Core v1 Secret.
    Secret,
}

impl ReviewKind<'_> {
    /// Which handled kind this is, if any.
    pub fn handled(&self) -> Option<HandledKind> {
        match (self.group.as_ref(), self.kind.as_ref()) {
            (GROUP, "Bind9Instance") => Some(HandledKind::Instance),
            (GROUP, "Bind9Cluster") => Some(HandledKind::Cluster),
            (GROUP, "ClusterBind9Provider") => Some(HandledKind::Provider),
            ("", "Secret") if self.version == "v1" => Some(HandledKind::Secret),
            _ => None,
        }
    }
}

/// An object of a request: a Bindy object already decoded for admission, or raw JSON (Secrets,
/// kinds not handled, and every object on the slow path) to be decoded by the reviewer.
#[derive(Debug)]
pub enum RequestObject<'a> {
    /// A Bind9Instance, metadata cut down to its name and namespace.
    Instance(Box<Bind9Instance>),
    /// A Bind9Cluster, metadata cut down to its name and namespace.
    Cluster(Box<Bind9Cluster>),
    /// A ClusterBind9Provider, metadata cut down to its name and namespace.
    Provider(Box<ClusterBind9Provider>),
    /// Not decoded yet.
    Raw(&'a RawValue),
}

impl RequestObject<'_> {
    /// The object as a Bind9Instance, decoding it if it is still raw.
    pub fn instance(&self) -> Result<Cow<'_, Bind9Instance>, String> {
        let decoded = if let Self::Instance(instance) = self {
            Some(&**instance)
        } else {
            None
        };
        self.typed(decoded, "Bind9Instance", |metadata, spec| Bind9Instance {
            metadata,
            spec,
            status: None,
        })
    }

    /// The object as a Bind9Cluster, decoding it if it is still raw.
    pub fn cluster(&self) -> Result<Cow<'_, Bind9Cluster>, String> {
        let decoded = if let Self::Cluster(cluster) = self {
            Some(&**cluster)
        } else {
            None
        };
        self.typed(decoded, "Bind9Cluster", |metadata, spec| Bind9Cluster {
            metadata,
            spec,
            status: None,
        })
    }

    /// The object as a ClusterBind9Provider, decoding it if it is still raw.
    pub fn provider(&self) -> Result<Cow<'_, ClusterBind9Provider>, String> {
        let decoded = if let Self::Provider(provider) = self {
            Some(&**provider)
        } else {
            None
        };
        self.typed(decoded, "ClusterBind9Provider", |metadata, spec| {
            ClusterBind9Provider {
                metadata,
                spec,
                status: None,
            }
        })
    }

    /// `decoded` when the object was decoded while the body was read, else the raw object
    /// decoded now and put together by `build`.
    fn typed<'s, T: Clone, S: DeserializeOwned>(
        &'s self,
        decoded: Option<&'s T>,
        kind: &str,
        build: impl FnOnce(ObjectMeta, S) -> T,
    ) -> Result<Cow<'s, T>, String> {
        match (decoded, self) {
            (Some(object), _) => Ok(Cow::Borrowed(object)),
            (None, Self::Raw(raw)) => {
                decode_admitted(raw, kind).map(|(metadata, spec)| Cow::Owned(build(metadata, spec)))
            }
            (None, _) => Err(self.mismatch(kind)),
        }
    }

    /// The object as a Secret: the fields the rules read, `managedFields` and other metadata
    /// skipped unread, so their depth and size never matter.
    pub fn secret(&self, what: &str) -> Result<Secret, String> {
        match self {
            Self::Raw(raw) => {
                let secret = decode::from_json::<AdmittedSecret>(raw.get())
                    .map_err(|error| schema_error(what, &error))?;
                check_type(
                    secret.api_version.as_deref(),
                    secret.kind.as_deref(),
                    "",
                    "Secret",
                )?;
                Ok(secret.into_secret())
            }
            _ => Err(self.mismatch(what)),
        }
    }

    fn mismatch(&self, wanted: &str) -> String {
        let found = match self {
            Self::Instance(_) => "Bind9Instance",
            Self::Cluster(_) => "Bind9Cluster",
            Self::Provider(_) => "ClusterBind9Provider",
            Self::Raw(_) => "raw object",
        };
        format!(
            "the request's object is a {found}, not a {wanted}; request.kind must name the object's kind"
        )
    }
}

/// The metadata the policy reads of a Bindy object: its name and namespace.
#[derive(Deserialize, Default)]
struct AdmittedMetadata {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

/// A Bindy object as admission decodes it: the cut-down metadata and the whole spec. The status
/// is never read by a rule, so it is skipped too.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdmittedObject<S> {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: AdmittedMetadata,
    spec: S,
}

impl<S> AdmittedObject<S> {
    /// The parts the policy reads, or why the object is not the `expected` kind it was sent as.
    fn into_parts(self, expected: &str) -> Result<(ObjectMeta, S), String> {
        check_type(
            self.api_version.as_deref(),
            self.kind.as_deref(),
            GROUP,
            expected,
        )?;
        let AdmittedMetadata { name, namespace } = self.metadata;
        let metadata = ObjectMeta {
            name,
            namespace,
            ..ObjectMeta::default()
        };
        Ok((metadata, self.spec))
    }
}

/// An object states its own `apiVersion` and `kind`; they must be the ones the request names,
/// or rules for one kind would be applied to another.
fn check_type(
    api_version: Option<&str>,
    kind: Option<&str>,
    group: &str,
    expected: &str,
) -> Result<(), String> {
    fn group_of(api_version: &str) -> &str {
        api_version.rsplit_once('/').map_or("", |(g, _)| g)
    }
    let kind_differs = kind.is_some_and(|kind| kind != expected);
    let group_differs = api_version.is_some_and(|v| group_of(v) != group);
    if kind_differs || group_differs {
        return Err(format!(
            "request.kind is {expected} ({}), but the object is {} {}; the object must be of the \
             kind the request names",
            if group.is_empty() { "core/v1" } else { group },
            shown(api_version.unwrap_or("(no apiVersion)")),
            shown(kind.unwrap_or("(no kind)"))
        ));
    }
    Ok(())
}

fn decode_admitted<S: DeserializeOwned>(
    object: &RawValue,
    kind: &str,
) -> Result<(ObjectMeta, S), String> {
    decode::from_json::<AdmittedObject<S>>(object.get())
        .map_err(|error| schema_error(kind, &error))?
        .into_parts(kind)
}

/// A decode error as a denial: the field path and what was expected, never the value.
fn schema_error(kind: &str, error: &DecodeError) -> String {
    let schema = if kind.contains("Secret") {
        "core/v1 Secret"
    } else {
        "bindy.firestoned.io/v1beta1"
    };
    format!("the {kind} does not match the {schema} schema: {error}")
}

/// A Secret as admission decodes it: what the rules read. Unknown fields (among them
/// `managedFields`) are skipped by the derived decoder without being built.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdmittedSecret {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: AdmittedSecretMetadata,
    #[serde(default, rename = "type")]
    type_: Option<String>,
    #[serde(default)]
    data: Option<BTreeMap<String, ByteString>>,
    #[serde(default)]
    string_data: Option<BTreeMap<String, String>>,
    #[serde(default)]
    immutable: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AdmittedSecretMetadata {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    generate_name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    owner_references: Option<Vec<OwnerReference>>,
}

impl AdmittedSecret {
    fn into_secret(self) -> Secret {
        let m = self.metadata;
        Secret {
            metadata: ObjectMeta {
                name: m.name,
                generate_name: m.generate_name,
                namespace: m.namespace,
                uid: m.uid,
                resource_version: m.resource_version,
                labels: m.labels,
                annotations: m.annotations,
                owner_references: m.owner_references,
                ..ObjectMeta::default()
            },
            type_: self.type_,
            data: self.data,
            string_data: self.string_data,
            immutable: self.immutable,
        }
    }
}

/// How objects are read while the request is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ObjectMode {
    /// Bindy objects straight into their types (the fast path).
    Typed,
    /// Every object kept raw (the slow path, for precise errors).
    Raw,
}

/// Reads `object`/`oldObject` as the request's kind (seen earlier in the body) says.
struct ObjectSeed {
    mode: ObjectMode,
    kind: Option<HandledKind>,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed {
    type Value = Option<RequestObject<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed {
    type Value = Option<RequestObject<'de>>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an object or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        /// A kind mismatch fails the fast path; the slow path then names it in a denial.
        fn typed<'de, S: Deserialize<'de>, D: Deserializer<'de>>(
            deserializer: D,
            kind: &str,
        ) -> Result<(ObjectMeta, S), D::Error> {
            AdmittedObject::<S>::deserialize(deserializer)?
                .into_parts(kind)
                .map_err(de::Error::custom)
        }
        let object = match (self.mode, self.kind) {
            (ObjectMode::Typed, Some(HandledKind::Instance)) => {
                let (metadata, spec) =
                    typed::<Bind9InstanceSpec, D>(deserializer, "Bind9Instance")?;
                RequestObject::Instance(Box::new(Bind9Instance {
                    metadata,
                    spec,
                    status: None,
                }))
            }
            (ObjectMode::Typed, Some(HandledKind::Cluster)) => {
                let (metadata, spec) = typed::<Bind9ClusterSpec, D>(deserializer, "Bind9Cluster")?;
                RequestObject::Cluster(Box::new(Bind9Cluster {
                    metadata,
                    spec,
                    status: None,
                }))
            }
            (ObjectMode::Typed, Some(HandledKind::Provider)) => {
                let (metadata, spec) =
                    typed::<ClusterBind9ProviderSpec, D>(deserializer, "ClusterBind9Provider")?;
                RequestObject::Provider(Box::new(ClusterBind9Provider {
                    metadata,
                    spec,
                    status: None,
                }))
            }
            _ => RequestObject::Raw(<&RawValue>::deserialize(deserializer)?),
        };
        Ok(Some(object))
    }
}

/// Reads a request, its objects as `mode` says.
struct RequestVisitor {
    mode: ObjectMode,
}

impl<'de> Visitor<'de> for RequestVisitor {
    type Value = ReviewRequest<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an AdmissionReview request")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut uid, mut kind, mut name, mut namespace) = (None, None, None, None);
        let (mut operation, mut user_info) = (None, None);
        let (mut object, mut old_object) = (None, None);
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match key.as_ref() {
                "uid" => set_once(&mut uid, &mut map, "uid")?,
                "kind" => set_once(&mut kind, &mut map, "kind")?,
                "name" => set_once(&mut name, &mut map, "name")?,
                "namespace" => set_once(&mut namespace, &mut map, "namespace")?,
                "operation" => set_once(&mut operation, &mut map, "operation")?,
                "userInfo" => set_once(&mut user_info, &mut map, "userInfo")?,
                "object" | "oldObject" => {
                    let slot = if key == "object" {
                        &mut object
                    } else {
                        &mut old_object
                    };
                    if slot.is_some() {
                        return Err(de::Error::duplicate_field(if key == "object" {
                            "object"
                        } else {
                            "oldObject"
                        }));
                    }
                    let seed = ObjectSeed {
                        mode: self.mode,
                        kind: kind.as_ref().and_then(ReviewKind::handled),
                    };
                    *slot = Some(map.next_value_seed(seed)?);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(ReviewRequest {
            uid: uid.ok_or_else(|| de::Error::missing_field("uid"))?,
            kind: kind.ok_or_else(|| de::Error::missing_field("kind"))?,
            name: name.unwrap_or_default(),
            namespace: namespace.flatten(),
            operation: operation.ok_or_else(|| de::Error::missing_field("operation"))?,
            user_info: user_info.unwrap_or_default(),
            object: object.flatten(),
            old_object: old_object.flatten(),
        })
    }
}

/// The request of an AdmissionReview, read as `MODE_TYPED` says (true: the fast path).
struct Request<'a, const MODE_TYPED: bool>(ReviewRequest<'a>);

impl<'de: 'a, 'a, const MODE_TYPED: bool> Deserialize<'de> for Request<'a, MODE_TYPED> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mode = if MODE_TYPED {
            ObjectMode::Typed
        } else {
            ObjectMode::Raw
        };
        deserializer
            .deserialize_map(RequestVisitor { mode })
            .map(Request)
    }
}

/// An AdmissionReview as sent by the apiserver.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewEnvelope<'a, const MODE_TYPED: bool> {
    #[serde(default, borrow)]
    api_version: Cow<'a, str>,
    #[serde(default, borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    request: Option<Request<'a, MODE_TYPED>>,
}

/// Why a body could not be turned into an admission request.
#[derive(Debug)]
pub enum Malformed {
    /// Not an AdmissionReview at all: answered with 400.
    NotAReview(String),
    /// An AdmissionReview whose request is unusable: answered with a denial.
    BadRequest {
        /// The review's apiVersion, answered in kind.
        api_version: String,
        /// The request uid, echoed.
        uid: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// Parses a request body into the admission request it carries, or says what is wrong with it.
pub fn parse_body(body: &[u8]) -> Result<ReviewRequest<'_>, Malformed> {
    if body.starts_with(&[0x1f, 0x8b]) {
        return Err(Malformed::NotAReview(
            "request body is gzip-compressed; send it uncompressed (no Content-Encoding): the \
             apiserver sends plain JSON AdmissionReviews"
                .to_owned(),
        ));
    }
    if body.starts_with(b"\xEF\xBB\xBF") {
        return Err(Malformed::NotAReview(
            "request body starts with a UTF-8 byte order mark; send JSON without one".to_owned(),
        ));
    }
    // One UTF-8 check of the whole body is cheaper than one per string while parsing.
    let body = std::str::from_utf8(body).map_err(|error| {
        Malformed::NotAReview(format!(
            "request body is not JSON (not UTF-8 at byte {}); send an admission.k8s.io/v1 \
             AdmissionReview",
            error.valid_up_to()
        ))
    })?;
    if let Ok(request) = parse_v1::<true>(body) {
        return checked_uid(request);
    }
    // The slow path: objects raw, so that a broken object is the reviewer's to deny by name.
    let failed = match parse_v1::<false>(body) {
        Ok(request) => return checked_uid(request),
        Err(error) => error.is_some(),
    };
    if !body.trim_start().starts_with('{') && serde_json::from_str::<IgnoredAny>(body).is_ok() {
        return Err(Malformed::NotAReview(
            "request body is not a JSON object; send an admission.k8s.io/v1 AdmissionReview"
                .to_owned(),
        ));
    }
    // Only the envelope is read here: objects are skipped, never built into trees.
    match serde_json::from_str::<ReviewOutline<'_>>(body) {
        Ok(outline) => Err(diagnose(
            &outline,
            failed.then(|| decode::explain::<ReviewEnvelope<'_, false>>(body)),
        )),
        Err(error) => Err(Malformed::NotAReview(format!(
            "request body is not JSON ({}); send an admission.k8s.io/v1 AdmissionReview",
            syntax_error(&error)
        ))),
    }
}

/// A request whose uid is longer than any the apiserver sends is not answered in kind: echoing
/// it would let a client make every answer and log line as large as it likes.
fn checked_uid(request: ReviewRequest<'_>) -> Result<ReviewRequest<'_>, Malformed> {
    if request.uid.len() > MAX_UID_LEN {
        return Err(Malformed::BadRequest {
            api_version: V1.to_owned(),
            uid: String::new(),
            message: format!(
                "request.uid is {} characters long; the apiserver sends 36-character UUIDs",
                request.uid.len()
            ),
        });
    }
    Ok(request)
}

/// A JSON syntax error without the text around it: its kind and position.
fn syntax_error(error: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match error.classify() {
        Category::Eof => "it ends too early",
        Category::Syntax => "invalid syntax",
        Category::Data => "not an object",
        Category::Io => "it could not be read",
    };
    format!("{what} at line {} column {}", error.line(), error.column())
}

/// The envelope of a body that did not parse as a v1 AdmissionReview, read leniently to say why:
/// fields of the wrong type read as absent, the last of duplicate fields wins, and everything
/// else (the objects among it) is skipped unread.
#[derive(Default)]
struct ReviewOutline<'a> {
    api_version: Option<Cow<'a, str>>,
    kind: Option<Cow<'a, str>>,
    /// `Some` when `request` is an object; its uid when that is a string.
    request: Option<Option<Cow<'a, str>>>,
    /// `uid`, when this outline is of the request itself.
    uid: Option<Cow<'a, str>>,
}

impl<'de> Deserialize<'de> for ReviewOutline<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(OutlineVisitor { request: false })
    }
}

/// Reads the envelope (`request: false`) or the request in it (`request: true`, only `uid`).
struct OutlineVisitor {
    request: bool,
}

impl<'de> Visitor<'de> for OutlineVisitor {
    type Value = ReviewOutline<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut outline = ReviewOutline::default();
        while let Some(key) = map.next_key::<crate::api::raw::Key<'de>>()? {
            match (self.request, key.0.as_ref()) {
                (false, "apiVersion") => outline.api_version = map.next_value::<Lenient<'de>>()?.0,
                (false, "kind") => outline.kind = map.next_value::<Lenient<'de>>()?.0,
                (false, "request") => {
                    outline.request = map.next_value::<LenientRequest<'de>>()?.0;
                }
                (true, "uid") => outline.uid = map.next_value::<Lenient<'de>>()?.0,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(outline)
    }
}

/// A string, or `None` for a value of any other type (skipped unread).
struct Lenient<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for Lenient<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LenientVisitor;
        impl<'de> Visitor<'de> for LenientVisitor {
            type Value = Lenient<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("any value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Lenient(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Lenient(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
        }
        deserializer.deserialize_any(LenientVisitor)
    }
}

/// `request` of an outline: `Some(uid)` when it is an object, `None` otherwise.
struct LenientRequest<'a>(Option<Option<Cow<'a, str>>>);

impl<'de> Deserialize<'de> for LenientRequest<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RequestOutlineVisitor;
        impl<'de> Visitor<'de> for RequestOutlineVisitor {
            type Value = LenientRequest<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("any value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let outline = OutlineVisitor { request: true }.visit_map(map)?;
                Ok(LenientRequest(Some(outline.uid)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LenientRequest(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(LenientRequest(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(LenientRequest(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(LenientRequest(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LenientRequest(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(LenientRequest(None))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LenientRequest(None))
            }
        }
        deserializer.deserialize_any(RequestOutlineVisitor)
    }
}

/// The longest uid echoed (the apiserver's are 36-character UUIDs).
const MAX_UID_LEN: usize = 128;

/// A v1 AdmissionReview with a request, or why the body is not one (`None`: it parsed, but is
/// not a v1 review with a request).
fn parse_v1<const MODE_TYPED: bool>(
    body: &str,
) -> Result<ReviewRequest<'_>, Option<serde_json::Error>> {
    let review: ReviewEnvelope<'_, MODE_TYPED> = serde_json::from_str(body).map_err(Some)?;
    match review.request {
        Some(Request(request)) if review.api_version == V1 && review.kind == "AdmissionReview" => {
            Ok(request)
        }
        _ => Err(None),
    }
}

/// Says what is wrong with a JSON body that is not a usable v1 AdmissionReview; `error` is why
/// parsing it as one failed, if it did. Nothing of the body is echoed beyond short, known values.
fn diagnose(outline: &ReviewOutline<'_>, error: Option<DecodeError>) -> Malformed {
    let kind = outline.kind.as_deref().unwrap_or_default();
    if kind != "AdmissionReview" {
        return Malformed::NotAReview(format!(
            "request body has kind {}, expected \"AdmissionReview\" (admission.k8s.io/v1)",
            shown(kind)
        ));
    }
    let Some(uid) = &outline.request else {
        return Malformed::NotAReview(
            "AdmissionReview has no request; the apiserver always sends one".to_owned(),
        );
    };
    let uid = uid
        .as_deref()
        .filter(|uid| uid.len() <= MAX_UID_LEN)
        .unwrap_or_default()
        .to_owned();
    let api_version = outline.api_version.as_deref().unwrap_or_default();
    if api_version != V1 {
        // Answered in the version asked for only when it is one the apiserver knows.
        let answered = if api_version == "admission.k8s.io/v1beta1" {
            api_version
        } else {
            V1
        };
        return Malformed::BadRequest {
            api_version: answered.to_owned(),
            uid,
            message: format!(
                "AdmissionReview apiVersion {} is not supported; set admissionReviewVersions: \
                 [\"v1\"] in the webhook configuration",
                shown(api_version)
            ),
        };
    }
    let reason = error.map_or_else(
        || "it could not be read".to_owned(),
        |error| error.to_string(),
    );
    Malformed::BadRequest {
        api_version: V1.to_owned(),
        uid,
        message: format!("AdmissionReview request is malformed: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn review(request: Value) -> Vec<u8> {
        serde_json::to_vec(
            &json!({"apiVersion": V1, "kind": "AdmissionReview", "request": request}),
        )
        .expect("json")
    }

    fn instance_request(object_first: bool) -> Vec<u8> {
        let object = json!({
            "apiVersion": "bindy.firestoned.io/v1beta1", "kind": "Bind9Instance",
            "metadata": {"name": "dns-0", "namespace": "dns",
                         "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"role": "primary", "rndcKey": {"algorithm": "hmac-sha256"}}
        });
        let kind = json!({"group": GROUP, "version": "v1beta1", "kind": "Bind9Instance"});
        // serde_json keeps object keys sorted, so the order is set by hand here.
        let (first, second) = if object_first {
            (("object", object), ("kind", kind))
        } else {
            (("kind", kind), ("object", object))
        };
        format!(
            r#"{{"apiVersion":"{V1}","kind":"AdmissionReview","request":{{"uid":"u-1","{}":{},"{}":{},"operation":"CREATE","namespace":"dns","userInfo":{{"username":"alice","groups":["g"]}}}}}}"#,
            first.0, first.1, second.0, second.1
        )
        .into_bytes()
    }

    #[test]
    fn a_bindy_object_after_its_kind_is_decoded_while_the_body_is_read() {
        let body = instance_request(false);
        let request = parse_body(&body).expect("parses");
        assert_eq!(request.uid, "u-1");
        assert_eq!(request.user_info.username.as_deref(), Some("alice"));
        let Some(RequestObject::Instance(instance)) = &request.object else {
            panic!("not decoded: {:?}", request.object);
        };
        assert_eq!(instance.metadata.name.as_deref(), Some("dns-0"));
        assert_eq!(instance.metadata.managed_fields, None);
        assert_eq!(instance.spec.role.as_deref(), Some("primary"));
    }

    #[test]
    fn an_object_before_its_kind_stays_raw_and_still_decodes() {
        let body = instance_request(true);
        let request = parse_body(&body).expect("parses");
        let object = request.object.as_ref().expect("an object");
        assert!(matches!(object, RequestObject::Raw(_)));
        let instance = object.instance().expect("decodes");
        assert_eq!(instance.spec.role.as_deref(), Some("primary"));
    }

    #[test]
    fn a_broken_object_is_left_raw_for_the_reviewer_to_deny_by_name() {
        let body = review(json!({
            "uid": "u-2", "operation": "CREATE",
            "kind": {"group": GROUP, "version": "v1beta1", "kind": "Bind9Instance"},
            "object": {"metadata": {"name": "x"}, "spec": {"rndcKey": "not an object"}}
        }));
        let request = parse_body(&body).expect("the review itself is fine");
        let error = request
            .object
            .as_ref()
            .expect("an object")
            .instance()
            .expect_err("the spec is broken");
        assert!(error.contains("Bind9Instance does not match"), "{error}");
        assert!(
            error.contains("rndcKey") || error.contains("invalid type"),
            "{error}"
        );
    }

    #[test]
    fn secrets_and_null_objects() {
        let body = review(json!({
            "uid": "u-3", "operation": "DELETE",
            "kind": {"group": "", "version": "v1", "kind": "Secret"},
            "object": null,
            "oldObject": {"metadata": {"name": "s"}, "data": {}}
        }));
        let request = parse_body(&body).expect("parses");
        assert!(request.object.is_none());
        assert!(matches!(request.old_object, Some(RequestObject::Raw(_))));
        assert_eq!(request.kind.handled(), Some(HandledKind::Secret));
    }

    #[test]
    fn duplicate_and_missing_fields_are_named() {
        let duplicate = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"a","uid":"b","kind":{"kind":"Secret"},"operation":"CREATE"}}"#;
        let Err(Malformed::BadRequest { uid, message, .. }) = parse_body(duplicate) else {
            panic!("accepted a duplicate uid");
        };
        assert_eq!(uid, "b");
        assert!(message.contains("field uid appears twice"), "{message}");

        let missing = review(json!({"uid": "u-4", "kind": {"kind": "Secret"}}));
        let Err(Malformed::BadRequest { message, .. }) = parse_body(&missing) else {
            panic!("accepted a request without an operation");
        };
        assert!(message.contains("missing field operation"), "{message}");
    }

    #[test]
    fn bodies_that_are_not_reviews_get_precise_messages() {
        let message = |body: &[u8]| match parse_body(body) {
            Err(Malformed::NotAReview(message)) => message,
            other => panic!("{other:?}"),
        };
        assert!(message(b"{not json").contains("not JSON"));
        assert!(message(b"[1]").contains("not a JSON object"));
        assert!(message(br#"{"kind":"Pod"}"#).contains("expected \"AdmissionReview\""));
        assert!(
            message(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#)
                .contains("no request")
        );
        let old = review(json!({"uid": "u-5", "kind": {"kind": "Secret"}, "operation": "CREATE"}));
        let old = String::from_utf8(old)
            .expect("utf-8")
            .replace("admission.k8s.io/v1", "admission.k8s.io/v1beta1");
        let Err(Malformed::BadRequest {
            api_version,
            uid,
            message,
        }) = parse_body(old.as_bytes())
        else {
            panic!("accepted v1beta1");
        };
        assert_eq!(
            (api_version.as_str(), uid.as_str()),
            ("admission.k8s.io/v1beta1", "u-5")
        );
        assert!(message.contains("admissionReviewVersions"), "{message}");
    }

    #[test]
    fn compressed_bodies_and_byte_order_marks_are_named() {
        let message = |body: &[u8]| match parse_body(body) {
            Err(Malformed::NotAReview(message)) => message,
            other => panic!("{other:?}"),
        };
        assert!(message(&[0x1f, 0x8b, 8, 0]).contains("gzip-compressed"));
        let mut bom = b"\xEF\xBB\xBF".to_vec();
        bom.extend(review(
            json!({"uid": "u", "kind": {"kind": "Secret"}, "operation": "CREATE"}),
        ));
        assert!(message(&bom).contains("byte order mark"));
    }

    #[test]
    fn an_oversized_uid_is_not_echoed() {
        let uid = "u".repeat(10_000);
        let body = review(json!({"uid": uid, "kind": {"kind": "Secret"}, "operation": "CREATE"}));
        let Err(Malformed::BadRequest { uid, message, .. }) = parse_body(&body) else {
            panic!("accepted a 10,000-character uid");
        };
        assert!(uid.is_empty());
        assert!(message.contains("10000 characters"), "{message}");
    }

    #[test]
    fn an_object_of_another_kind_than_the_request_names_is_denied_by_name() {
        let body = review(json!({
            "uid": "u-6", "operation": "CREATE",
            "kind": {"group": GROUP, "version": "v1beta1", "kind": "Bind9Instance"},
            "object": {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"},
                       "spec": {"role": "primary"}}
        }));
        let request = parse_body(&body).expect("the review itself is fine");
        let error = request
            .object
            .as_ref()
            .expect("object")
            .instance()
            .expect_err("kind mismatch");
        assert!(
            error.contains("request.kind is Bind9Instance") && error.contains("\"Secret\""),
            "{error}"
        );
        let body = review(json!({
            "uid": "u-7", "operation": "CREATE",
            "kind": {"group": "", "version": "v1", "kind": "Secret"},
            "object": {"apiVersion": "bindy.firestoned.io/v1beta1", "kind": "Bind9Instance",
                       "metadata": {"name": "x"}}
        }));
        let request = parse_body(&body).expect("parses");
        let error = request
            .object
            .as_ref()
            .expect("object")
            .secret("Secret")
            .expect_err("kind mismatch");
        assert!(error.contains("request.kind is Secret"), "{error}");
    }

    #[test]
    fn a_wrong_type_in_the_review_is_described_without_its_value() {
        let key = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";
        let body = review(json!({"uid": "u-8", "kind": {"kind": key}, "operation": [key]}));
        let Err(Malformed::BadRequest { message, .. }) = parse_body(&body) else {
            panic!("accepted a broken review");
        };
        assert!(!message.contains(&key[..8]), "{message}");
        assert!(message.contains("request."), "{message}");
    }
}
