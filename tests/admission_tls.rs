//! Real TLS against the admission listener: handshakes with the generated CA, certificate rotation
//! by the symlink swap Kubernetes uses for Secret volumes, a broken new certificate keeping the old
//! one serving, and client-certificate verification on and off.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use rndc_warden::admission::server::{ConnectionLimits, serve_tls};
use rndc_warden::admission::tls::{self, GeneratedTls, ReloadOutcome, ReloadingTls, TlsFiles};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn start(tls: Arc<ReloadingTls>) -> Server {
    start_with(tls, ConnectionLimits::default()).await
}

async fn start_with(tls: Arc<ReloadingTls>, limits: ConnectionLimits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = Router::new().route("/ping", get(|| async { "pong" }));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve_tls(listener, tls, router, limits, async move {
        let _ = stopped.await;
    }));
    Server {
        addr,
        stop: Some(stop),
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
