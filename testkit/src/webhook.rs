//! Admission webhooks in tests: registering one by `clientConfig.url` + `caBundle` scoped to a
//! test namespace, waiting until the apiserver uses it, and a tiny HTTPS stub server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ValidatingWebhook,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::{Api, Client};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::task::JoinHandle;

use crate::error::{Error, IoContext, Result};
use crate::namespace::TestNamespace;
use crate::pki::TestCa;
use crate::wait::wait_for;

/// Validating or mutating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookKind {
    /// A `ValidatingWebhookConfiguration`.
    Validating,
    /// A `MutatingWebhookConfiguration`.
    Mutating,
}

impl WebhookKind {
    fn short(self) -> &'static str {
        match self {
            WebhookKind::Validating => "validating",
            WebhookKind::Mutating => "mutating",
        }
    }

    /// The `type` label the apiserver's admission metrics use for this kind.
    pub fn metrics_type(self) -> &'static str {
        match self {
            WebhookKind::Validating => "validating",
            WebhookKind::Mutating => "admit",
        }
    }
}

/// A rule: `operations` on `resources` of `api_group`/`api_version`, namespaced scope.
pub fn rule(
    api_group: &str,
    api_version: &str,
    resources: &[&str],
    operations: &[&str],
) -> RuleWithOperations {
    let owned = |items: &[&str]| Some(items.iter().map(|s| (*s).to_owned()).collect());
    RuleWithOperations {
        api_groups: owned(&[api_group]),
        api_versions: owned(&[api_version]),
        operations: owned(operations),
        resources: owned(resources),
        scope: Some("Namespaced".into()),
    }
}

/// What to register: one webhook calling `url`, trusted through `ca_pem`.
#[derive(Debug, Clone)]
pub struct WebhookRegistration {
    /// Validating or mutating.
    pub kind: WebhookKind,
    /// `https://127.0.0.1:<port>/<path>`.
    pub url: String,
    /// PEM CA bundle that signed the server's certificate.
    pub ca_pem: String,
    /// Which requests are sent.
    pub rules: Vec<RuleWithOperations>,
    /// `Fail` (default) or `Ignore`.
    pub failure_policy: String,
    /// Seconds the apiserver waits (default 10).
    pub timeout_seconds: i32,
    /// Optional object selector (the namespace selector is always the test namespace).
    pub object_selector: Option<LabelSelector>,
}

impl WebhookRegistration {
    /// A registration with `failurePolicy: Fail` and a 10 s timeout.
    pub fn new(
        kind: WebhookKind,
        url: impl Into<String>,
        ca_pem: impl Into<String>,
        rules: Vec<RuleWithOperations>,
    ) -> Self {
        Self {
            kind,
            url: url.into(),
            ca_pem: ca_pem.into(),
            rules,
            failure_policy: "Fail".into(),
            timeout_seconds: 10,
            object_selector: None,
        }
    }
}

/// A webhook configuration created by [`TestNamespace::register_webhook`].
#[derive(Debug, Clone)]
pub struct RegisteredWebhook {
    /// Validating or mutating.
    pub kind: WebhookKind,
    /// The configuration object's name (cluster-scoped).
    pub configuration_name: String,
    /// The webhook's fully qualified name (the `name` label of the admission metrics).
    pub webhook_name: String,
}

impl RegisteredWebhook {
    /// Polls `probe` (typically a dry-run create whose outcome shows the webhook at work) until
    /// it returns true: configuration changes reach the apiserver asynchronously.
    pub async fn wait_effective<F, Fut>(&self, timeout: Duration, probe: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        wait_for(
            &format!("webhook {} to take effect", self.webhook_name),
            timeout,
            probe,
        )
        .await
    }

    /// Deletes the configuration.
    pub async fn delete(&self, client: &Client) -> Result<()> {
        let dp = DeleteParams::default();
        match self.kind {
            WebhookKind::Validating => {
                Api::<ValidatingWebhookConfiguration>::all(client.clone())
                    .delete(&self.configuration_name, &dp)
                    .await?;
            }
            WebhookKind::Mutating => {
                Api::<MutatingWebhookConfiguration>::all(client.clone())
                    .delete(&self.configuration_name, &dp)
                    .await?;
            }
        }
        Ok(())
    }
}

impl TestNamespace {
    /// Creates a webhook configuration named `<namespace>-<kind>-<n>` whose single webhook
    /// (`<kind>-<n>.<namespace>.e2e.rndc-warden.test`) is scoped to this namespace by
    /// `namespaceSelector`, so parallel tests never see each other's.
    /// Wait with [`RegisteredWebhook::wait_effective`] before relying on it.
    pub async fn register_webhook(
        &self,
        client: &Client,
        registration: WebhookRegistration,
    ) -> Result<RegisteredWebhook> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let configuration_name = format!("{}-{}-{n}", self.name(), registration.kind.short());
        let webhook_name = format!(
            "{}-{n}.{}.e2e.rndc-warden.test",
            registration.kind.short(),
            self.name()
        );
        let client_config = WebhookClientConfig {
            url: Some(registration.url),
            ca_bundle: Some(ByteString(registration.ca_pem.into_bytes())),
            service: None,
        };
        let metadata = ObjectMeta {
            name: Some(configuration_name.clone()),
            ..ObjectMeta::default()
        };
        let pp = PostParams::default();
        match registration.kind {
            WebhookKind::Validating => {
                let config = ValidatingWebhookConfiguration {
                    metadata,
                    webhooks: Some(vec![ValidatingWebhook {
                        name: webhook_name.clone(),
                        client_config,
                        rules: Some(registration.rules),
                        namespace_selector: Some(self.selector()),
                        object_selector: registration.object_selector,
                        admission_review_versions: vec!["v1".into()],
                        side_effects: "None".into(),
                        failure_policy: Some(registration.failure_policy),
                        timeout_seconds: Some(registration.timeout_seconds),
                        ..ValidatingWebhook::default()
                    }]),
                };
                Api::<ValidatingWebhookConfiguration>::all(client.clone())
                    .create(&pp, &config)
                    .await?;
            }
            WebhookKind::Mutating => {
                let config = MutatingWebhookConfiguration {
                    metadata,
                    webhooks: Some(vec![MutatingWebhook {
                        name: webhook_name.clone(),
                        client_config,
                        rules: Some(registration.rules),
                        namespace_selector: Some(self.selector()),
                        object_selector: registration.object_selector,
                        admission_review_versions: vec!["v1".into()],
                        side_effects: "None".into(),
                        failure_policy: Some(registration.failure_policy),
                        timeout_seconds: Some(registration.timeout_seconds),
                        ..MutatingWebhook::default()
                    }]),
                };
                Api::<MutatingWebhookConfiguration>::all(client.clone())
                    .create(&pp, &config)
                    .await?;
            }
        }
        Ok(RegisteredWebhook {
            kind: registration.kind,
            configuration_name,
            webhook_name,
        })
    }
}

type Handler = dyn Fn(&AdmissionRequest<DynamicObject>) -> AdmissionResponse + Send + Sync;

/// A minimal HTTPS admission server on 127.0.0.1 with its own CA: every AdmissionReview it
/// receives goes to the handler. It stops when dropped.
pub struct StubWebhookServer {
    addr: SocketAddr,
    ca_pem: String,
    calls: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for StubWebhookServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StubWebhookServer")
            .field("addr", &self.addr)
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

impl StubWebhookServer {
    /// Starts serving on a free loopback port (on the current tokio runtime).
    pub async fn start<F>(handler: F) -> Result<StubWebhookServer>
    where
        F: Fn(&AdmissionRequest<DynamicObject>) -> AdmissionResponse + Send + Sync + 'static,
    {
        let ca = TestCa::new("e2e-webhook-ca")?;
        let leaf = ca.server_cert(&[])?;
        let certs = CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Invalid {
                what: "webhook certificate",
                reason: e.to_string(),
            })?;
        let key =
            PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).map_err(|e| Error::Invalid {
                what: "webhook key",
                reason: e.to_string(),
            })?;
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .ctx(|| "binding the stub webhook server".into())?;
        let addr = listener
            .local_addr()
            .ctx(|| "reading the stub webhook address".into())?;
        let calls = Arc::new(AtomicUsize::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        let task = tokio::spawn(accept_loop(listener, acceptor, handler, calls.clone()));
        Ok(StubWebhookServer {
            addr,
            ca_pem: ca.cert_pem(),
            calls,
            task,
        })
    }

    /// A server that denies every request with `message`.
    pub async fn deny_all(message: &str) -> Result<StubWebhookServer> {
        let message = message.to_owned();
        Self::start(move |req| AdmissionResponse::from(req).deny(&message)).await
    }

    /// `https://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// The CA that signed the server's certificate (the `caBundle`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// How many AdmissionReviews it has answered.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// A registration of this server at `path` for `rules`.
    pub fn registration(
        &self,
        kind: WebhookKind,
        path: &str,
        rules: Vec<RuleWithOperations>,
    ) -> WebhookRegistration {
        WebhookRegistration::new(kind, self.url(path), self.ca_pem.clone(), rules)
    }
}

impl Drop for StubWebhookServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handler: Arc<Handler>,
    calls: Arc<AtomicUsize>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        let calls = calls.clone();
        connections.spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let handler = handler.clone();
                let calls = calls.clone();
                async move {
                    let body = req.into_body().collect().await.map(|b| b.to_bytes());
                    Ok::<_, std::convert::Infallible>(respond(body.ok(), &*handler, &calls))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
}

fn respond(
    body: Option<Bytes>,
    handler: &Handler,
    calls: &AtomicUsize,
) -> hyper::Response<Full<Bytes>> {
    let review =
        body.and_then(|b| serde_json::from_slice::<AdmissionReview<DynamicObject>>(&b).ok());
    let request: Option<AdmissionRequest<DynamicObject>> = review.and_then(|r| r.try_into().ok());
    let (status, body) = match request {
        Some(request) => {
            calls.fetch_add(1, Ordering::SeqCst);
            let review = handler(&request).into_review();
            match serde_json::to_vec(&review) {
                Ok(json) => (hyper::StatusCode::OK, json),
                Err(e) => (
                    hyper::StatusCode::INTERNAL_SERVER_ERROR,
                    e.to_string().into_bytes(),
                ),
            }
        }
        None => (
            hyper::StatusCode::BAD_REQUEST,
            b"not an AdmissionReview".to_vec(),
        ),
    };
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
