//! Parsing an AdmissionReview v1 body in one pass. The request borrows its strings from the body,
//! and a Bindy object is decoded straight into its type while the body is read, because the
//! apiserver sends `kind` before `object`: nothing is scanned twice and the parts no rule reads
//! (`managedFields`, kubectl's last-applied copy, `options`) are skipped, never built.
//!
//! When that fast path fails, the body is read again with the objects kept raw, so that a broken
//! object becomes a denial that names the schema error, and a broken review a precise message.

use std::borrow::Cow;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::admission::Operation;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::api::{
    Bind9Cluster, Bind9ClusterSpec, Bind9Instance, Bind9InstanceSpec, ClusterBind9Provider,
    ClusterBind9ProviderSpec, GROUP,
};

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

    /// The object decoded whole as `T` (Secrets: every field of them matters).
    pub fn decode<T: DeserializeOwned>(&self, kind: &str) -> Result<T, String> {
        match self {
            Self::Raw(raw) => {
                serde_json::from_str(raw.get()).map_err(|error| schema_error(kind, &error))
            }
            _ => Err(self.mismatch(kind)),
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
struct AdmittedObject<S> {
    #[serde(default)]
    metadata: AdmittedMetadata,
    spec: S,
}

impl<S> AdmittedObject<S> {
    fn into_parts(self) -> (ObjectMeta, S) {
        let AdmittedMetadata { name, namespace } = self.metadata;
        let metadata = ObjectMeta {
            name,
            namespace,
            ..ObjectMeta::default()
        };
        (metadata, self.spec)
    }
}

fn decode_admitted<S: DeserializeOwned>(
    object: &RawValue,
    kind: &str,
) -> Result<(ObjectMeta, S), String> {
    serde_json::from_str::<AdmittedObject<S>>(object.get())
        .map(AdmittedObject::into_parts)
        .map_err(|error| schema_error(kind, &error))
}

fn schema_error(kind: &str, error: &serde_json::Error) -> String {
    format!("the {kind} does not match the bindy.firestoned.io/v1beta1 schema: {error}")
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
        fn typed<'de, S: Deserialize<'de>, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<(ObjectMeta, S), D::Error> {
            AdmittedObject::<S>::deserialize(deserializer).map(AdmittedObject::into_parts)
        }
        let object = match (self.mode, self.kind) {
            (ObjectMode::Typed, Some(HandledKind::Instance)) => {
                let (metadata, spec) = typed::<Bind9InstanceSpec, D>(deserializer)?;
                RequestObject::Instance(Box::new(Bind9Instance {
                    metadata,
                    spec,
                    status: None,
                }))
            }
            (ObjectMode::Typed, Some(HandledKind::Cluster)) => {
                let (metadata, spec) = typed::<Bind9ClusterSpec, D>(deserializer)?;
                RequestObject::Cluster(Box::new(Bind9Cluster {
                    metadata,
                    spec,
                    status: None,
                }))
            }
            (ObjectMode::Typed, Some(HandledKind::Provider)) => {
                let (metadata, spec) = typed::<ClusterBind9ProviderSpec, D>(deserializer)?;
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

/// A field of the request, read once: a second occurrence is an error, as with derived types.
fn set_once<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
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
    // One UTF-8 check of the whole body is cheaper than one per string while parsing.
    let body = std::str::from_utf8(body).map_err(|error| {
        Malformed::NotAReview(format!(
            "request body is not JSON (not UTF-8: {error}); send an admission.k8s.io/v1 AdmissionReview"
        ))
    })?;
    if let Ok(request) = parse_v1::<true>(body) {
        return Ok(request);
    }
    // The slow path: objects raw, so that a broken object is the reviewer's to deny by name.
    let error = match parse_v1::<false>(body) {
        Ok(request) => return Ok(request),
        Err(error) => error,
    };
    match serde_json::from_str::<Value>(body) {
        Ok(raw) => Err(diagnose(&raw, error)),
        Err(error) => Err(Malformed::NotAReview(format!(
            "request body is not JSON ({error}); send an admission.k8s.io/v1 AdmissionReview"
        ))),
    }
}

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
/// parsing it as one failed, if it did.
fn diagnose(raw: &Value, error: Option<serde_json::Error>) -> Malformed {
    let field = |value: &Value, key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    if !raw.is_object() {
        return Malformed::NotAReview(
            "request body is not a JSON object; send an admission.k8s.io/v1 AdmissionReview"
                .to_owned(),
        );
    }
    let kind = field(raw, "kind");
    if kind != "AdmissionReview" {
        return Malformed::NotAReview(format!(
            "request body has kind {kind:?}, expected \"AdmissionReview\" (admission.k8s.io/v1)"
        ));
    }
    let api_version = field(raw, "apiVersion");
    let Some(request) = raw.get("request").filter(|request| !request.is_null()) else {
        return Malformed::NotAReview(
            "AdmissionReview has no request; the apiserver always sends one".to_owned(),
        );
    };
    let uid = field(request, "uid");
    if api_version != V1 {
        return Malformed::BadRequest {
            api_version: if api_version.is_empty() {
                V1.to_owned()
            } else {
                api_version.clone()
            },
            uid,
            message: format!(
                "AdmissionReview apiVersion {api_version:?} is not supported; set admissionReviewVersions: [\"v1\"] in the webhook configuration"
            ),
        };
    }
    let reason = error.map_or_else(
        || "it could not be read".to_owned(),
        |error| error.to_string(),
    );
    Malformed::BadRequest {
        api_version,
        uid,
        message: format!("AdmissionReview request is malformed: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        assert!(message.contains("duplicate field `uid`"), "{message}");

        let missing = review(json!({"uid": "u-4", "kind": {"kind": "Secret"}}));
        let Err(Malformed::BadRequest { message, .. }) = parse_body(&missing) else {
            panic!("accepted a request without an operation");
        };
        assert!(message.contains("missing field `operation`"), "{message}");
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
}
