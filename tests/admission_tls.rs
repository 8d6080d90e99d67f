//! Real TLS against the admission listener: handshakes with the generated CA, certificate rotation
//! by the symlink swap Kubernetes uses for Secret volumes, a broken new certificate keeping the old
//! one serving, client-certificate verification on and off, and the connection limits (handshake,
//! header, idle and write timeouts, the connection cap, handshake floods, content codings).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use rndc_warden::admission::server::{ConnectionLimits, serve_tls};
use rndc_warden::admission::tls::{self, GeneratedTls, ReloadOutcome, ReloadingTls, TlsFiles};
use rndc_warden::admission::{self, AdmissionPolicy, AdmissionState, RequestLimits};
use rndc_warden::cache::ClusterCache;
use rndc_warden::metrics::Metrics;
use rndc_warden::policy::PolicyConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Size of the `/big` response: far more than the socket buffers of both ends can hold.
const BIG: usize = 16 * 1024 * 1024;

struct Server {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Server {
    fn open_connections(&self) -> i64 {
        self.metrics.admission_connections_open.get()
    }

    /// The Prometheus text the probe port's `/metrics` serves.
    async fn metrics_text(&self) -> String {
        use tower::ServiceExt as _;
        let readiness = Arc::new(rndc_warden::probe::Readiness::default());
        let request = axum::http::Request::get("/metrics")
            .body(axum::body::Body::empty())
            .expect("request");
        let response = rndc_warden::probe::router(readiness, self.metrics.clone())
            .oneshot(request)
            .await
            .expect("infallible");
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("metrics body");
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

async fn start(tls: Arc<ReloadingTls>) -> Server {
    start_with(tls, ConnectionLimits::default()).await
}

/// The real admission router (no cluster: every referenced cluster is unknown) plus `/ping` and
/// `/big`, served by [`serve_tls`] exactly as `serve` runs it.
async fn start_with(tls: Arc<ReloadingTls>, limits: ConnectionLimits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let metrics = Metrics::new();
    let state = AdmissionState {
        policy: Arc::new(AdmissionPolicy::new(
            PolicyConfig::default(),
            ClusterCache::empty(),
        )),
        metrics: metrics.clone(),
    };
    let router = admission::router(state, RequestLimits::default()).merge(
        Router::new()
            .route("/ping", get(|| async { "pong" }))
            .route("/big", get(|| async { vec![b'x'; BIG] })),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve_tls(
        listener,
        tls,
        router,
        limits,
        metrics.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        addr,
        metrics,
        stop: Some(stop),
    }
}

/// Polls `check` every 20 ms until it holds; panics with `what` after `timeout`.
async fn wait_for(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < timeout,
            "not within {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn generate(dir: &Path) -> GeneratedTls {
    tls::generate_self_signed(
        dir,
        &["localhost".to_owned()],
        &["127.0.0.1".parse().expect("ip")],
        30,
    )
    .expect("generate")
}

fn roots(ca_pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("ca pem")).expect("add root");
    }
    roots
}

fn client_config(
    ca_pem: &str,
    client_identity: Option<(&Path, &Path)>,
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots(ca_pem));
    let config = match client_identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .expect("cert")
                .collect::<Result<Vec<_>, _>>()
                .expect("chain");
            let key = PrivateKeyDer::from_pem_file(key).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
    };
    Arc::new(config)
}

/// Connects, sends `GET /ping`, and returns the served leaf certificate and the response body.
async fn ping(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<(Vec<u8>, String), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").expect("name");
    let mut stream = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|cert| cert.as_ref().to_vec())
        .unwrap_or_default();
    stream
        .write_all(b"GET /ping HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok((leaf, response))
}

fn leaf_der(cert_path: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(cert_path)
        .expect("cert")
        .next()
        .expect("one cert")
        .expect("pem")
        .as_ref()
        .to_vec()
}

/// Lays out files like a Kubernetes Secret volume: `tls.crt -> ..data/tls.crt`, `..data -> <rev>`.
fn secret_volume(root: &Path, revision: &str, source: &TlsFiles) -> TlsFiles {
    let rev_dir = root.join(revision);
    std::fs::create_dir_all(&rev_dir).expect("rev dir");
    std::fs::copy(&source.cert, rev_dir.join("tls.crt")).expect("copy cert");
    std::fs::copy(&source.key, rev_dir.join("tls.key")).expect("copy key");
    let tmp_link = root.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(revision, &tmp_link).expect("symlink");
    std::fs::rename(&tmp_link, root.join("..data")).expect("atomic swap");
    for file in ["tls.crt", "tls.key"] {
        let link = root.join(file);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(PathBuf::from("..data").join(file), &link).expect("link");
        }
    }
    TlsFiles {
        cert: root.join("tls.crt"),
        key: root.join("tls.key"),
        client_ca: None,
    }
}

#[tokio::test]
async fn handshake_succeeds_with_the_generated_ca_and_fails_without_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let generated = generate(dir.path());
    let server = start(Arc::new(
        ReloadingTls::load(generated.files.clone()).expect("load"),
    ))
    .await;

    let (leaf, body) = ping(server.addr, client_config(&generated.ca_pem, None))
        .await
        .expect("trusted handshake");
    assert_eq!(leaf, leaf_der(&generated.files.cert));
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.ends_with("pong"), "{body}");

    let stranger = generate(tempfile::tempdir().expect("tempdir").path());
    let error = ping(server.addr, client_config(&stranger.ca_pem, None))
        .await
        .expect_err("an unknown CA must fail");
    assert!(error.contains("handshake"), "{error}");
}

#[tokio::test]
async fn a_symlink_swap_is_served_to_new_connections_and_a_broken_swap_keeps_the_old_cert() {
    let volume = tempfile::tempdir().expect("tempdir");
    let first_dir = tempfile::tempdir().expect("tempdir");
    let first = generate(first_dir.path());
    let files = secret_volume(volume.path(), "..rev1", &first.files);
    let reloading = Arc::new(ReloadingTls::load(files.clone()).expect("load"));
    let server = start(reloading.clone()).await;
    let (leaf, _) = ping(server.addr, client_config(&first.ca_pem, None))
        .await
        .expect("first");
    assert_eq!(leaf, leaf_der(&first.files.cert));

    let second_dir = tempfile::tempdir().expect("tempdir");
    let second = generate(second_dir.path());
    secret_volume(volume.path(), "..rev2", &second.files);
    assert_eq!(reloading.reload(), ReloadOutcome::Reloaded);
    let (leaf, body) = ping(server.addr, client_config(&second.ca_pem, None))
        .await
        .expect("rotated certificate served without restart");
    assert_eq!(leaf, leaf_der(&second.files.cert));
    assert!(body.ends_with("pong"));

    // A new revision whose certificate is garbage: the previous certificate stays in service.
    let broken_dir = tempfile::tempdir().expect("tempdir");
    let broken = TlsFiles {
        cert: broken_dir.path().join("tls.crt"),
        key: broken_dir.path().join("tls.key"),
        client_ca: None,
    };
    std::fs::write(
        &broken.cert,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    std::fs::copy(&second.files.key, &broken.key).expect("copy");
    secret_volume(volume.path(), "..rev3", &broken);
    assert_eq!(reloading.reload(), ReloadOutcome::KeptPrevious);
    let (leaf, _) = ping(server.addr, client_config(&second.ca_pem, None))
        .await
        .expect("previous certificate still served");
    assert_eq!(leaf, leaf_der(&second.files.cert));
}

#[tokio::test]
async fn client_certificates_are_required_when_a_client_ca_is_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let serving = generate(dir.path());
    // A second generated pair doubles as a client CA and client certificate: its leaf is signed
    // by its CA. Client auth needs the clientAuth usage, so build a dedicated one.
    let client_dir = tempfile::tempdir().expect("tempdir");
    let (client_ca, client_cert, client_key) = client_identity(client_dir.path());
    let files = TlsFiles {
        client_ca: Some(client_ca.clone()),
        ..serving.files.clone()
    };
    let server = start(Arc::new(
        ReloadingTls::load(files).expect("load with client CA"),
    ))
    .await;

    let (_, body) = ping(
        server.addr,
        client_config(&serving.ca_pem, Some((&client_cert, &client_key))),
    )
    .await
    .expect("a client with a trusted certificate is served");
    assert!(body.ends_with("pong"), "{body}");
    let refused = ping(server.addr, client_config(&serving.ca_pem, None)).await;
    assert!(
        refused.is_err()
            || !refused
                .as_ref()
                .is_ok_and(|(_, body)| body.ends_with("pong")),
        "a client without a certificate must not be served: {refused:?}"
    );

    // Off: the same server config without a client CA serves clients without certificates.
    let open = start(Arc::new(
        ReloadingTls::load(serving.files.clone()).expect("load"),
    ))
    .await;
    let (_, body) = ping(open.addr, client_config(&serving.ca_pem, None))
        .await
        .expect("no mTLS");
    assert!(body.ends_with("pong"));
}

fn client_identity(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let mut leaf = CertificateParams::new(Vec::<String>::new()).expect("params");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &issuer).expect("leaf");
    let paths = (
        dir.join("client-ca.crt"),
        dir.join("client.crt"),
        dir.join("client.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).expect("write");
    std::fs::write(&paths.1, cert.pem()).expect("write");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write");
    paths
}

#[tokio::test]
async fn a_slow_client_is_disconnected_after_the_header_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let generated = generate(dir.path());
    let limits = ConnectionLimits {
        header_timeout: Duration::from_millis(300),
        handshake_timeout: Duration::from_millis(300),
        ..ConnectionLimits::default()
    };
    let server = start_with(
        Arc::new(ReloadingTls::load(generated.files.clone()).expect("load")),
        limits,
    )
    .await;

    // Half a request line, then silence: the server must hang up, not wait forever.
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let mut stream = TlsConnector::from(client_config(&generated.ca_pem, None))
        .connect(name, tcp)
        .await
        .expect("handshake");
    stream
        .write_all(b"POST /validate HTTP/1.1\r\nhost: loc")
        .await
        .expect("write");
    let started = Instant::now();
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buffer)).await;
    assert!(
        read.is_ok(),
        "the server kept a stalled connection open for 10 s"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    // A client that never starts the TLS handshake is dropped too.
    let mut raw = TcpStream::connect(server.addr).await.expect("connect");
    let mut byte = [0_u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), raw.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "stalled handshake not dropped: {read:?}"
    );
}

async fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    handshake(tcp, config).await.expect("handshake")
}

async fn handshake(
    tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from("localhost").expect("name");
    TlsConnector::from(config).connect(name, tcp).await
}

/// One response read off a kept-alive connection.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// The status line and headers, lower-cased.
    head: String,
    body: String,
}

/// Sends `request` and reads exactly one response (by its `content-length`).
async fn exchange(stream: &mut TlsStream<TcpStream>, request: &[u8]) -> Result<Reply, String> {
    stream
        .write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buffer = Vec::new();
    let mut chunk = [0_u8; 16 * 1024];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) => return Err(format!("closed after {} bytes", buffer.len())),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| format!("no content-length in {head:?}"))?;
    while buffer.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) => return Err("closed in the body".to_owned()),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let body = String::from_utf8_lossy(&buffer[head_end..head_end + length]).into_owned();
    Ok(Reply { status, head, body })
}

fn post(path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\n{headers}content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

const JSON: &str = "content-type: application/json\r\n";
const UID: &str = "7c1d3e0a-5b1f-4a53-9d55-0d0c4a1f0e11";

/// A valid AdmissionReview of a standalone instance with settings that pass the policy.
fn review_body() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": {"group": "bindy.firestoned.io", "version": "v1beta1", "kind": "Bind9Instance"},
            "resource": {"group": "bindy.firestoned.io", "version": "v1beta1", "resource": "bind9instances"},
            "name": "dns-1",
            "namespace": "dns",
            "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": {
                "apiVersion": "bindy.firestoned.io/v1beta1", "kind": "Bind9Instance",
                "metadata": {"name": "dns-1", "namespace": "dns"},
                "spec": {"role": "primary", "rndcKey": {"autoRotate": true, "rotateAfter": "720h", "algorithm": "hmac-sha256"}}
            },
            "dryRun": false
        }
    }))
    .expect("json")
}

/// Asserts `reply` is the allowed AdmissionReview for [`review_body`].
fn assert_allowed(reply: &Reply) {
    assert_eq!(reply.status, 200, "{reply:?}");
    let review: serde_json::Value = serde_json::from_str(&reply.body).expect("review json");
    assert_eq!(review["response"]["uid"], UID, "{}", reply.body);
    assert_eq!(review["response"]["allowed"], true, "{}", reply.body);
}

#[tokio::test]
async fn a_client_that_never_reads_the_response_is_disconnected_within_the_write_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let generated = generate(dir.path());
    let limits = ConnectionLimits {
        write_timeout: Duration::from_secs(1),
        ..ConnectionLimits::default()
    };
    let server = start_with(
        Arc::new(ReloadingTls::load(generated.files.clone()).expect("load")),
        limits,
    )
    .await;

    // A small receive buffer, so the response cannot hide in the client's kernel buffers.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
    let tcp = socket.connect(server.addr).await.expect("connect");
    let mut stream = handshake(tcp, client_config(&generated.ca_pem, None))
        .await
        .expect("handshake");
    stream
        .write_all(b"GET /big HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .expect("request");
    // Never read. Without a write timeout the server waits on this write for ever (no other
    // timer runs while a response is being written).
    wait_for(
        "the server closes the connection of a client that does not read",
        Duration::from_secs(10),
        async || server.open_connections() == 0,
    )
    .await;
    let text = server.metrics_text().await;
    assert!(
        text.contains(r#"rndc_warden_admission_connection_timeouts_total{phase="write"} 1"#),
        "{text}"
    );
    // What the client can still read is the part that was in flight, not the response.
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut received))
        .await
        .expect("the connection is closed");
    assert!(
        received.len() < BIG,
        "the whole response arrived ({} bytes)",
        received.len()
    );
}

#[tokio::test]
async fn an_idle_kept_alive_connection_outlives_the_header_timeout_and_closes_after_the_idle_timeout()
 {
    let dir = tempfile::tempdir().expect("tempdir");
    let generated = generate(dir.path());
    let limits = ConnectionLimits {
        header_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(2),
        ..ConnectionLimits::default()
    };
    let server = start_with(
        Arc::new(ReloadingTls::load(generated.files.clone()).expect("load")),
        limits,
    )
    .await;
    let mut stream = connect(server.addr, client_config(&generated.ca_pem, None)).await;
    let reply = exchange(
        &mut stream,
        b"GET /ping HTTP/1.1\r\nhost: localhost\r\n\r\n",
    )
    .await
    .expect("first request");
    assert_eq!(reply.body, "pong");
    assert!(!reply.head.contains("connection: close"), "{}", reply.head);

    // Idle for longer than the header timeout: still open, the next request is answered (the
    // apiserver reuses idle connections for up to 90 s; a close from the server while it sends
    // failed its webhook call). The header timeout times headers, not idleness.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let reply = exchange(
        &mut stream,
        b"GET /ping HTTP/1.1\r\nhost: localhost\r\n\r\n",
    )
    .await
    .expect("a request after an idle spell longer than the header timeout");
    assert_eq!(reply.body, "pong");

    // Kept alive, then idle past the idle timeout: the server hangs up instead of keeping it
    // for ever.
    let mut byte = [0_u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "idle connection not closed: {read:?}"
    );
    wait_for(
        "the server counts the idle connection as closed",
        Duration::from_secs(10),
        async || server.open_connections() == 0,
    )
    .await;
}

#[tokio::test]
async fn connections_beyond_the_cap_are_refused_and_counted_in_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let generated = generate(dir.path());
    let config = client_config(&generated.ca_pem, None);
    let limits = ConnectionLimits {
        max_connections: 4,
        // Long enough that the held connections cannot time out during the test.
        header_timeout: Duration::from_secs(120),
        ..ConnectionLimits::default()
    };
    let server = start_with(
        Arc::new(ReloadingTls::load(generated.files.clone()).expect("load")),
        limits,
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = connect(server.addr, config.clone()).await;
        let reply = exchange(
            &mut stream,
            b"GET /ping HTTP/1.1\r\nhost: localhost\r\n\r\n",
        )
        .await
        .expect("under the cap");
        assert_eq!(reply.body, "pong");
        held.push(stream);
    }

    let refused = ping(server.addr, config.clone()).await;
    assert!(
        refused.is_err(),
        "a fifth connection was served: {refused:?}"
    );
    wait_for(
        "the refusal is counted in /metrics",
        Duration::from_secs(10),
        async || {
            let text = server.metrics_text().await;
            text.contains("rndc_warden_admission_connections_refused_total 1\n")
                && text.contains("rndc_warden_admission_connections_open 4\n")
        },
    )
    .await;
    // The held connections still work.
    let reply = exchange(
        &mut held[0],
        b"GET /ping HTTP/1.1\r\nhost: localhost\r\n\r\n",
    )
    .await
    .expect("a held connection");
    assert_eq!(reply.body, "pong");

    // A closed connection frees its place.
    drop(held.pop());
    wait_for(
        "a closed connection leaves the count",
        Duration::from_secs(10),
        async || server.open_connections() == 3,
    )
    .await;
    let (_, body) = ping(server.addr, config)
        .await
        .expect("served again once under the cap");
    assert!(body.ends_with("pong"), "{body}");
    let text = server.metrics_text().await;
    assert!(
        text.contains("rndc_warden_admission_connections_refused_total 1\n"),
        "{text}"
    );
}

/// Connects and sends a real ClientHello, then never reads the server's answer nor finishes.
async fn half_open_handshake(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let mut client = rustls::ClientConnection::new(config, name).expect("client");
    let mut hello = Vec::new();
    client.write_tls(&mut hello).expect("client hello");
    tcp.write_all(&hello).await.expect("send the client hello");
    tcp
}

#[tokio::test]
async fn half_open_handshakes_and_idle_connections_do_not_delay_a_review() {
    const HALF_OPEN: usize = 300;
    const IDLE: usize = 50;
    let dir = tempfile::tempdir().expect("tempdir");
    let generated = generate(dir.path());
    let config = client_config(&generated.ca_pem, None);
    let limits = ConnectionLimits {
        // The flood must still be pending when the reviews are answered, however slow the
        // machine: nothing times out during the test.
        handshake_timeout: Duration::from_secs(120),
        header_timeout: Duration::from_secs(120),
        ..ConnectionLimits::default()
    };
    let server = start_with(
        Arc::new(ReloadingTls::load(generated.files.clone()).expect("load")),
        limits,
    )
    .await;
    // The apiserver's kept-alive connection, established before the flood.
    let mut apiserver = connect(server.addr, config.clone()).await;
    let reply = exchange(&mut apiserver, &post("/validate", JSON, &review_body()))
        .await
        .expect("review before the flood");
    assert_allowed(&reply);

    let mut flood = Vec::new();
    for _ in 0..HALF_OPEN {
        flood.push(half_open_handshake(server.addr, config.clone()).await);
    }
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        idle.push(connect(server.addr, config.clone()).await);
    }
    let expected = i64::try_from(1 + HALF_OPEN + IDLE).expect("count");
    wait_for(
        "the server holds every flood connection",
        Duration::from_secs(30),
        async || server.open_connections() == expected,
    )
    .await;

    // Reviews on the kept-alive connection and on a new one are answered while the flood is
    // pending; the bound is generous on purpose (a 2-core machine shared with other work).
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        exchange(&mut apiserver, &post("/validate", JSON, &review_body())),
    )
    .await
    .expect("the review on the kept-alive connection was delayed by the flood")
    .expect("review during the flood");
    assert_allowed(&reply);
    let reply = tokio::time::timeout(Duration::from_secs(5), async {
        let mut fresh = connect(server.addr, config.clone()).await;
        exchange(&mut fresh, &post("/validate", JSON, &review_body())).await
    })
    .await
    .expect("a review on a new connection was delayed by the flood")
    .expect("review on a new connection during the flood");
    assert_allowed(&reply);
    assert!(
        server.open_connections() >= expected,
        "the flood was no longer pending: {}",
        server.open_connections()
    );
    drop(flood);
    drop(idle);
}

#[tokio::test]
async fn an_unsupported_content_encoding_gets_415_and_long_header_values_are_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let generated = generate(dir.path());
    let server = start(Arc::new(
        ReloadingTls::load(generated.files.clone()).expect("load"),
    ))
    .await;
    let mut stream = connect(server.addr, client_config(&generated.ca_pem, None)).await;

    let reply = exchange(
        &mut stream,
        &post(
            "/validate",
            "content-type: application/json\r\ncontent-encoding: gzip\r\n",
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00",
        ),
    )
    .await
    .expect("gzip");
    assert_eq!(reply.status, 415, "{reply:?}");
    assert!(
        reply.body.contains(
            "Content-Encoding gzip is not supported; the apiserver sends identity-encoded AdmissionReviews"
        ),
        "{}",
        reply.body
    );
    assert!(
        reply.head.contains("\r\naccept-encoding: identity\r\n"),
        "{}",
        reply.head
    );

    // `identity` is no coding at all: reviewed as usual, on the same connection.
    let reply = exchange(
        &mut stream,
        &post(
            "/validate",
            "content-type: application/json\r\ncontent-encoding: identity\r\n",
            &review_body(),
        ),
    )
    .await
    .expect("identity");
    assert_allowed(&reply);

    // Header values are shown cut to 24 characters.
    let long_type = format!("application/{}", "x".repeat(200));
    let reply = exchange(
        &mut stream,
        &post(
            "/validate",
            &format!("content-type: {long_type}\r\n"),
            b"{}",
        ),
    )
    .await
    .expect("long content type");
    assert_eq!(reply.status, 415, "{reply:?}");
    assert!(
        reply.body.contains("\"application/xxxxxxxxxxxx…\""),
        "{}",
        reply.body
    );
    assert!(!reply.body.contains(&"x".repeat(13)), "{}", reply.body);
    let long_coding = "br, ".repeat(50);
    let reply = exchange(
        &mut stream,
        &post(
            "/mutate",
            &format!("{JSON}content-encoding: {}\r\n", long_coding.trim_end()),
            b"{}",
        ),
    )
    .await
    .expect("long content encoding");
    assert_eq!(reply.status, 415, "{reply:?}");
    assert!(
        reply
            .body
            .contains("Content-Encoding br, br, br, br, br, br, … is not supported"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn a_request_head_of_48_kib_is_served_and_one_of_256_kib_gets_431() {
    let dir = tempfile::tempdir().expect("tempdir");
    let generated = generate(dir.path());
    let server = start(Arc::new(
        ReloadingTls::load(generated.files.clone()).expect("load"),
    ))
    .await;
    let config = client_config(&generated.ca_pem, None);

    // A 48 KiB header (more than any apiserver sends): the review is answered as usual.
    let mut stream = connect(server.addr, config.clone()).await;
    let padding = format!("x-padding: {}\r\n", "a".repeat(48 * 1024));
    let headers = format!("content-type: application/json\r\n{padding}");
    let reply = exchange(&mut stream, &post("/validate", &headers, &review_body()))
        .await
        .expect("48 KiB head");
    assert_allowed(&reply);

    // Well past the 64 KiB read buffer (one read may take up to twice that): refused before any
    // body is read.
    // The server answers and closes while the client still writes, so the client reads while it
    // writes (its write may then fail with a reset).
    let stream = connect(server.addr, config).await;
    let padding = format!("x-padding: {}\r\n", "a".repeat(256 * 1024));
    let headers = format!("content-type: application/json\r\n{padding}");
    let request = post("/validate", &headers, &review_body());
    let (mut reader, mut writer) = tokio::io::split(stream);
    let writing = tokio::spawn(async move { writer.write_all(&request).await.is_ok() });
    let mut answer = Vec::new();
    let mut chunk = [0_u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
    let _ = writing.await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer:?}");
}
