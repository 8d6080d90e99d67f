//! The HTTPS admission server: AdmissionReview v1 endpoints `/mutate` and `/validate`, each
//! dispatching on the request's kind to the pure policy core through [`review`].
//!
//! Transport rules: a body over [`MAX_BODY_BYTES`] gets 413, a content type other than JSON or a
//! `Content-Encoding` other than `identity` 415, a body that is not an AdmissionReview at all 400. Everything else is answered with an
//! AdmissionReview whose `uid` echoes the request: malformed requests become denials that say
//! what is wrong, never a panic or a 500.

pub mod pki;
pub mod request;
pub mod review;
pub mod server;
pub mod serving_cert;
pub mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kube::core::admission::Operation;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceBuilder;
use tower::limit::ConcurrencyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::metrics::{AdmissionLabels, AdmissionOutcome, Endpoint, EndpointLabels, Metrics};
pub use request::{Malformed, ReviewRequest, V1, parse_body};
pub use review::AdmissionPolicy;

/// The largest request body accepted, as the apiserver's own webhook client allows (7 MiB).
pub const MAX_BODY_BYTES: usize = 7 * 1024 * 1024;

/// Bodies up to this size are read at once without drawing on the body budget, so that large
/// uploads waiting for the budget never hold up ordinary reviews (a few KiB each).
pub const SMALL_BODY_BYTES: usize = 64 * 1024;

/// Request-level limits of the admission router.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Requests handled at once; more wait in line.
    pub max_concurrency: usize,
    /// Time allowed for reading the body and answering.
    pub request_timeout: Duration,
    /// Bytes of request bodies over [`SMALL_BODY_BYTES`] held in memory at once (by their
    /// `Content-Length`, or [`MAX_BODY_BYTES`] without one); further large requests wait.
    /// Decoding needs about twice the body, so this bounds the memory large uploads can take.
    pub max_body_memory: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_concurrency: 256,
            request_timeout: Duration::from_secs(10),
            max_body_memory: 16 * 1024 * 1024,
        }
    }
}

/// The budget large bodies draw on, in KiB permits.
#[derive(Debug, Clone)]
struct BodyBudget {
    permits: Arc<Semaphore>,
    total_kib: u32,
}

impl BodyBudget {
    fn new(max_body_memory: usize) -> Self {
        // At least one whole maximal body, or such a request could never be served.
        let total_kib =
            u32::try_from(max_body_memory.max(MAX_BODY_BYTES) / 1024).unwrap_or(u32::MAX);
        Self {
            permits: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// Waits until `bytes` fit; `None` for small bodies, which never wait.
    async fn reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        if bytes <= SMALL_BODY_BYTES {
            return None;
        }
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(self.total_kib);
        // The semaphore is never closed, so acquiring only fails if it were.
        self.permits.clone().acquire_many_owned(kib).await.ok()
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
    let budget = BodyBudget::new(limits.max_body_memory);
    let endpoint = |endpoint: Endpoint| {
        let budget = budget.clone();
        post(
            move |State(state): State<AdmissionState>, request: Request| {
                let budget = budget.clone();
                async move { handle(&state, &budget, endpoint, request).await }
            },
        )
    };
    Router::new()
        .route("/mutate", endpoint(Endpoint::Mutate))
        .route("/validate", endpoint(Endpoint::Validate))
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

async fn handle(
    state: &AdmissionState,
    budget: &BodyBudget,
    endpoint: Endpoint,
    request: Request,
) -> Response {
    let started = Instant::now();
    let _in_flight = InFlight::start(&state.metrics);
    let content_type = request.headers().get(header::CONTENT_TYPE).cloned();
    let content_encoding = request.headers().get(header::CONTENT_ENCODING).cloned();
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES) {
        return too_large();
    }
    let _reserved = budget.reserve(declared.unwrap_or(MAX_BODY_BYTES)).await;
    let body = match read_body(request.into_body(), declared.unwrap_or(0)).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let (response, labels) = answer(
        state,
        endpoint,
        content_type.as_ref(),
        content_encoding.as_ref(),
        &body,
        started,
    );
    state
        .metrics
        .admission_duration
        .get_or_create(&EndpointLabels { endpoint })
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .admission_requests
        .get_or_create(&labels)
        .inc();
    response
}

/// Logs one decided request (never the object itself: it may hold a key).
fn log_decision(
    request: &ReviewRequest<'_>,
    endpoint: Endpoint,
    labels: &AdmissionLabels,
    reason: Option<&str>,
    started: Instant,
) {
    // Field values are evaluated only when the event is enabled: no clock read otherwise.
    let latency_us = || u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    // Names come from the client: cut to the longest the apiserver allows.
    let uid = request.uid.as_ref();
    let kind = clipped(&request.kind.kind);
    let namespace = clipped(request.namespace.as_deref().unwrap_or_default());
    let name = clipped(&request.name);
    let (operation, endpoint, decision) = (
        labels.operation,
        endpoint.as_str(),
        labels.decision.as_str(),
    );
    match reason {
        Some(reason) => {
            tracing::info!(
                uid,
                kind,
                namespace,
                name,
                operation,
                endpoint,
                decision,
                latency_us = latency_us(),
                reason,
                "admission"
            )
        }
        None => {
            tracing::debug!(
                uid,
                kind,
                namespace,
                name,
                operation,
                endpoint,
                decision,
                latency_us = latency_us(),
                "admission"
            )
        }
    }
}

/// `text` cut to at most 253 bytes (the longest Kubernetes name) at a character boundary.
fn clipped(text: &str) -> &str {
    let mut end = text.len().min(253);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn invalid_labels(endpoint: Endpoint) -> AdmissionLabels {
    AdmissionLabels {
        endpoint,
        kind: "unknown",
        operation: "unknown",
        decision: AdmissionOutcome::Invalid,
    }
}

fn too_large() -> Response {
    plain_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "request body is over the {} MiB limit of the apiserver's webhook client",
            MAX_BODY_BYTES / (1024 * 1024)
        ),
    )
}

/// Reads the body into one buffer sized by `Content-Length` (no copy when chunks are joined);
/// 413 past [`MAX_BODY_BYTES`].
async fn read_body(body: axum::body::Body, declared: usize) -> Result<Vec<u8>, Response> {
    use futures::StreamExt as _;
    let mut out = Vec::with_capacity(declared.min(MAX_BODY_BYTES));
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|error| {
            plain_error(
                StatusCode::BAD_REQUEST,
                format!("could not read the request body: {error}"),
            )
        })?;
        if out.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
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

fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case("application/json"))
}

/// A request header value as shown in an error message: at most 24 characters, then `…`.
fn shown_header(value: Option<&HeaderValue>) -> String {
    const MAX_CHARS: usize = 24;
    let text = value
        .map(|value| String::from_utf8_lossy(value.as_bytes()))
        .unwrap_or_default();
    match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.into_owned(),
    }
}

/// Whether the body is sent without a content coding (no `Content-Encoding`, or `identity`).
fn is_identity(content_encoding: Option<&HeaderValue>) -> bool {
    content_encoding.is_none_or(|value| {
        value.to_str().is_ok_and(|codings| {
            codings
                .split(',')
                .all(|coding| coding.trim().eq_ignore_ascii_case("identity"))
        })
    })
}

fn answer(
    state: &AdmissionState,
    endpoint: Endpoint,
    content_type: Option<&HeaderValue>,
    content_encoding: Option<&HeaderValue>,
    body: &[u8],
    started: Instant,
) -> (Response, AdmissionLabels) {
    if !is_json(content_type) {
        let shown = shown_header(content_type);
        let message = format!(
            "content type must be application/json, got {shown:?}; send an admission.k8s.io/v1 AdmissionReview"
        );
        return (
            plain_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, message),
            invalid_labels(endpoint),
        );
    }
    if !is_identity(content_encoding) {
        let shown = shown_header(content_encoding);
        let message = format!(
            "Content-Encoding {} is not supported; the apiserver sends identity-encoded AdmissionReviews: send the body uncompressed",
            shown.escape_debug()
        );
        let mut response = plain_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, message);
        // RFC 7694: name the codings that are accepted.
        response.headers_mut().insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        return (response, invalid_labels(endpoint));
    }
    let request = match parse_body(body) {
        Ok(request) => request,
        Err(Malformed::NotAReview(message)) => {
            return (
                plain_error(StatusCode::BAD_REQUEST, message),
                invalid_labels(endpoint),
            );
        }
        Err(Malformed::BadRequest {
            api_version,
            uid,
            message,
        }) => {
            tracing::info!(%uid, %message, "denied a malformed admission request");
            let response = ResponseBody::invalid(&uid, message);
            return (
                review_json(&api_version, &response),
                invalid_labels(endpoint),
            );
        }
    };
    let verdict = state.policy.review(endpoint, &request);
    let mut response = ResponseBody::allowed(&request.uid);
    let decision = if let Some(message) = verdict.denial {
        response.deny(message);
        AdmissionOutcome::Denied
    } else if let Some(patch) = verdict.patch {
        match serde_json::to_vec(&patch) {
            Ok(bytes) => {
                use base64::Engine as _;
                response.patch = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
                response.patch_type = Some("JSONPatch");
                AdmissionOutcome::Patched
            }
            Err(error) => {
                tracing::error!(uid = %request.uid, %error, "could not encode the JSON patch");
                response.deny("rndc-warden could not encode its patch; see its logs".to_owned());
                AdmissionOutcome::Denied
            }
        }
    } else {
        AdmissionOutcome::Allowed
    };
    if !verdict.warnings.is_empty() {
        response.warnings = Some(verdict.warnings);
    }
    let labels = AdmissionLabels {
        endpoint,
        kind: kind_label(&request.kind.kind),
        operation: operation_label(&request.operation),
        decision,
    };
    log_decision(
        &request,
        endpoint,
        &labels,
        response.status.message.as_deref(),
        started,
    );
    (review_json(V1, &response), labels)
}

/// The `kind` label: one of the kinds the webhook handles, else `other`, so that a misconfigured
/// rule cannot grow the metric without bound.
fn kind_label(kind: &str) -> &'static str {
    match kind {
        "Bind9Instance" => "Bind9Instance",
        "Bind9Cluster" => "Bind9Cluster",
        "ClusterBind9Provider" => "ClusterBind9Provider",
        "Secret" => "Secret",
        _ => "other",
    }
}

fn operation_label(operation: &Operation) -> &'static str {
    match operation {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
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
struct ResponseBody<'a> {
    uid: &'a str,
    allowed: bool,
    status: StatusBody,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: Option<Vec<String>>,
}

impl<'a> ResponseBody<'a> {
    fn allowed(uid: &'a str) -> Self {
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
    fn invalid(uid: &'a str, message: String) -> Self {
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
    response: &'a ResponseBody<'a>,
}

/// Encodes the response as an AdmissionReview of `api_version`.
fn review_json(api_version: &str, response: &ResponseBody<'_>) -> Response {
    let review = ReviewBody {
        api_version,
        kind: "AdmissionReview",
        response,
    };
    // Sized for a typical answer, so the buffer is written once; patches and messages grow it.
    let mut body = Vec::with_capacity(256);
    match serde_json::to_writer(&mut body, &review) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        // Strings, booleans and numbers always serialise; this is unreachable in practice.
        Err(error) => plain_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rndc-warden could not encode its answer: {error}"),
        ),
    }
}
