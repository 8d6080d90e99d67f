//! The HTTPS admission server: AdmissionReview v1 endpoints `/mutate` and `/validate`, each
//! dispatching on the request's kind to the pure policy core through [`review`].
//!
//! Transport rules: a body over [`MAX_BODY_BYTES`] gets 413, a content type other than JSON 415,
//! a body that is not an AdmissionReview at all 400. Everything else is answered with an
//! AdmissionReview whose `uid` echoes the request: malformed requests become denials that say
//! what is wrong, never a panic or a 500.

pub mod review;
pub mod server;
pub mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tower::ServiceBuilder;
use tower::limit::ConcurrencyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::metrics::{AdmissionLabels, Decision, Endpoint, EndpointLabels, Metrics};
pub use review::{AdmissionPolicy, ReviewRequest};

/// The largest request body accepted, as the apiserver's own webhook client allows (7 MiB).
pub const MAX_BODY_BYTES: usize = 7 * 1024 * 1024;

/// Request-level limits of the admission router.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Requests handled at once; more wait in line.
    pub max_concurrency: usize,
    /// Time allowed for reading the body and answering.
    pub request_timeout: Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_concurrency: 256,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AdmissionState {
    /// The policy adapter that decides each request.
    pub policy: Arc<AdmissionPolicy>,
    /// Process metrics.
    pub metrics: Arc<Metrics>,
}

/// The admission router (`POST /mutate`, `POST /validate`), callable in-process from tests.
pub fn router(state: AdmissionState, limits: RequestLimits) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/validate", post(validate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(
            ServiceBuilder::new()
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    limits.request_timeout,
                ))
                .layer(ConcurrencyLimitLayer::new(limits.max_concurrency)),
        )
        .with_state(state)
}

async fn mutate(State(state): State<AdmissionState>, headers: HeaderMap, body: Bytes) -> Response {
    handle(&state, Endpoint::Mutate, &headers, &body)
}

async fn validate(
    State(state): State<AdmissionState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&state, Endpoint::Validate, &headers, &body)
}

/// Counts the request as in flight for as long as it lives.
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn start(metrics: &'a Metrics) -> Self {
        metrics.admission_in_flight.inc();
        Self(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.admission_in_flight.dec();
    }
}

fn handle(
    state: &AdmissionState,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let started = Instant::now();
    let _in_flight = InFlight::start(&state.metrics);
    let (response, labels, summary) = answer(state, endpoint, headers, body);
    let elapsed = started.elapsed();
    if let Some(summary) = summary {
        summary.log(endpoint, labels.decision, elapsed);
    }
    state
        .metrics
        .admission_duration
        .get_or_create(&EndpointLabels { endpoint })
        .observe(elapsed.as_secs_f64());
    state
        .metrics
        .admission_requests
        .get_or_create(&labels)
        .inc();
    response
}

/// What one decided request is logged with (never the object itself: it may hold a key).
struct RequestSummary {
    uid: String,
    kind: String,
    namespace: String,
    name: String,
    operation: String,
    reason: Option<String>,
}

impl RequestSummary {
    fn log(&self, endpoint: Endpoint, decision: Decision, elapsed: Duration) {
        let latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let Self {
            uid,
            kind,
            namespace,
            name,
            operation,
            reason,
        } = self;
        let (endpoint, decision) = (endpoint.as_str(), decision.as_str());
        match reason {
            Some(reason) => {
                tracing::info!(%uid, %kind, %namespace, %name, %operation, endpoint, decision, latency_us, %reason, "admission")
            }
            None => {
                tracing::debug!(%uid, %kind, %namespace, %name, %operation, endpoint, decision, latency_us, "admission")
            }
        }
    }
}

fn invalid_labels(endpoint: Endpoint) -> AdmissionLabels {
    AdmissionLabels {
        endpoint,
        kind: "unknown".to_owned(),
        operation: "unknown".to_owned(),
        decision: Decision::Invalid,
    }
}

fn plain_error(status: StatusCode, message: String) -> Response {
    tracing::info!(%status, %message, "rejected a malformed admission request");
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

fn answer(
    state: &AdmissionState,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: &[u8],
) -> (Response, AdmissionLabels, Option<RequestSummary>) {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        let message = format!(
            "content type must be application/json, got {:?}; send an admission.k8s.io/v1 AdmissionReview",
            content_type
        );
        return (
            plain_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, message),
            invalid_labels(endpoint),
            None,
        );
    }
    let parsed = match fast_parse(body) {
        Some(request) => Ok(request),
        None => match serde_json::from_slice::<Value>(body) {
            Ok(raw) => parse_review(raw),
            Err(error) => Err(Malformed::NotAReview(format!(
                "request body is not JSON ({error}); send an admission.k8s.io/v1 AdmissionReview"
            ))),
        },
    };
    let request = match parsed {
        Ok(request) => request,
        Err(Malformed::NotAReview(message)) => {
            return (
                plain_error(StatusCode::BAD_REQUEST, message),
                invalid_labels(endpoint),
                None,
            );
        }
        Err(Malformed::BadRequest {
            api_version,
            uid,
            message,
        }) => {
            tracing::info!(%uid, %message, "denied a malformed admission request");
            let response = ResponseBody::invalid(uid, message);
            return (
                review_json(&api_version, &response),
                invalid_labels(endpoint),
                None,
            );
        }
    };
    let verdict = state.policy.review(endpoint, &request);
    let kind = request.kind.kind.clone();
    let operation = operation_name(&request);
    let namespace = request.namespace.clone().unwrap_or_default();
    let mut response = ResponseBody::allowed(request.uid.clone());
    let mut reason = None;
    let decision = if let Some(message) = verdict.denial {
        reason = Some(message.clone());
        response.deny(message);
        Decision::Denied
    } else if let Some(patch) = verdict.patch {
        match serde_json::to_vec(&patch) {
            Ok(bytes) => {
                use base64::Engine as _;
                response.patch = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
                response.patch_type = Some("JSONPatch");
                Decision::Patched
            }
            Err(error) => {
                tracing::error!(uid = %request.uid, %error, "could not encode the JSON patch");
                response.deny("rndc-warden could not encode its patch; see its logs".to_owned());
                Decision::Denied
            }
        }
    } else {
        Decision::Allowed
    };
    if !verdict.warnings.is_empty() {
        response.warnings = Some(verdict.warnings);
    }
    let summary = RequestSummary {
        uid: request.uid.clone(),
        kind: kind.clone(),
        namespace,
        name: request.name.clone(),
        operation: operation.clone(),
        reason,
    };
    let labels = AdmissionLabels {
        endpoint,
        kind,
        operation,
        decision,
    };
    (
        review_json("admission.k8s.io/v1", &response),
        labels,
        Some(summary),
    )
}

fn operation_name(request: &ReviewRequest) -> String {
    serde_json::to_value(&request.operation)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `response.status` of an AdmissionReview: a `meta/v1` Status, of which only these fields are used.
#[derive(Debug, Default, Serialize)]
struct StatusBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
}

/// `response` of an AdmissionReview v1.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseBody {
    uid: String,
    allowed: bool,
    status: StatusBody,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: Option<Vec<String>>,
}

impl ResponseBody {
    fn allowed(uid: String) -> Self {
        Self {
            uid,
            allowed: true,
            status: StatusBody::default(),
            patch: None,
            patch_type: None,
            warnings: None,
        }
    }

    /// An unusable request: denied with a Failure status, as kube-core's `invalid` does.
    fn invalid(uid: String, message: String) -> Self {
        Self {
            allowed: false,
            status: StatusBody {
                status: Some("Failure"),
                message: Some(message),
                reason: Some("InvalidRequest"),
                code: Some(400),
            },
            ..Self::allowed(uid)
        }
    }

    fn deny(&mut self, message: String) {
        self.allowed = false;
        self.status.message = Some(message);
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewBody<'a> {
    api_version: &'a str,
    kind: &'static str,
    response: &'a ResponseBody,
}

/// Encodes the response as an AdmissionReview of `api_version`.
fn review_json(api_version: &str, response: &ResponseBody) -> Response {
    Json(ReviewBody {
        api_version,
        kind: "AdmissionReview",
        response,
    })
    .into_response()
}

/// Why a body could not be turned into an admission request.
enum Malformed {
    /// Not an AdmissionReview at all: answered with 400.
    NotAReview(String),
    /// An AdmissionReview whose request is unusable: answered with a denial.
    BadRequest {
        api_version: String,
        uid: String,
        message: String,
    },
}

/// An AdmissionReview as sent by the apiserver.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewEnvelope {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<ReviewRequest>,
}

/// The common case in one pass: a well-formed v1 AdmissionReview with a request. Anything else
/// returns `None` and goes through [`parse_review`] for a precise message.
fn fast_parse(body: &[u8]) -> Option<ReviewRequest> {
    let review: ReviewEnvelope = serde_json::from_slice(body).ok()?;
    if review.api_version != "admission.k8s.io/v1" || review.kind != "AdmissionReview" {
        return None;
    }
    review.request
}

/// Works out what is wrong with a body that [`fast_parse`] refused, or parses it after all.
fn parse_review(raw: Value) -> Result<ReviewRequest, Malformed> {
    let field = |value: &Value, key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    if !raw.is_object() {
        return Err(Malformed::NotAReview(
            "request body is not a JSON object; send an admission.k8s.io/v1 AdmissionReview"
                .to_owned(),
        ));
    }
    let kind = field(&raw, "kind");
    if kind != "AdmissionReview" {
        return Err(Malformed::NotAReview(format!(
            "request body has kind {kind:?}, expected \"AdmissionReview\" (admission.k8s.io/v1)"
        )));
    }
    let api_version = field(&raw, "apiVersion");
    let Some(request) = raw.get("request").filter(|request| !request.is_null()) else {
        return Err(Malformed::NotAReview(
            "AdmissionReview has no request; the apiserver always sends one".to_owned(),
        ));
    };
    let uid = field(request, "uid");
    if api_version != "admission.k8s.io/v1" {
        return Err(Malformed::BadRequest {
            api_version: if api_version.is_empty() {
                "admission.k8s.io/v1".to_owned()
            } else {
                api_version.clone()
            },
            uid,
            message: format!(
                "AdmissionReview apiVersion {api_version:?} is not supported; set admissionReviewVersions: [\"v1\"] in the webhook configuration"
            ),
        });
    }
    let text = request.to_string();
    serde_json::from_str::<ReviewRequest>(&text).map_err(|error| Malformed::BadRequest {
        api_version,
        uid,
        message: format!("AdmissionReview request is malformed: {error}"),
    })
}
