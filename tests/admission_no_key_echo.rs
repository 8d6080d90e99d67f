//! No answer, warning, log line or `check` output ever contains key material (issue 11).
//!
//! A marker key is planted in every key-bearing place of the three Bindy kinds and of key
//! Secrets, in every wrong type and shape (testkit `leaks`), and looked for in what comes out:
//! - named regressions through the real HTTPS server (`serve --no-cluster`, logging at debug level
//!   in JSON and in text) and through the `check` binary (text and JSON);
//! - a property test over generated reviews through the in-process router, with every log line
//!   captured at debug level;
//! - bounded answers for hostile bodies, and valid deep objects allowed.

use std::io::Write as _;
use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rndc_warden::admission::{self, AdmissionPolicy, AdmissionState, RequestLimits};
use rndc_warden::api::Bind9Instance;
use rndc_warden::cache::ClusterCache;
use rndc_warden::metrics::Metrics;
use rndc_warden::policy::PolicyConfig;
use rndc_warden_testkit::leaks::{self, PlantKind, SHAPES, leak, marker, plant, review};
use rndc_warden_testkit::process::{Lifetime, ManagedProcess};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The real binary serving admission without a cluster, logging at debug level. It lives as
/// long as the test binary: it is spawned from a thread that never ends and gets SIGKILL when
/// the test process exits (`PR_SET_PDEATHSIG`), so no server outlives the tests.
struct Server {
    _process: ManagedProcess,
    port: u16,
    ca_pem: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(format: &str) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, probe) = (free_port(), free_port());
        let log = dir.path().join("serve.log");
        let certs = dir.path().join("certs");
        let home = dir.path().join("home");
        let mut command = Command::new(env!("CARGO_BIN_EXE_rndc-warden"));
        command
            .args(["serve", "--no-cluster", "--log-level", "debug"])
            .args(["--log-format", format])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--probe-listen", &format!("127.0.0.1:{probe}")])
            .arg("--generated-cert-dir")
            .arg(&certs)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("KUBECONFIG", home.join("none"))
            .env("HOME", &home);
        let process = ManagedProcess::spawn("rndc-warden", command, &log, Lifetime::TiedToParent)
            .expect("spawn rndc-warden");
        let started = Instant::now();
        while !std::net::TcpStream::connect(("127.0.0.1", probe)).is_ok_and(|mut s| {
            use std::io::Read as _;
            let _ = write!(s, "GET /readyz HTTP/1.0\r\n\r\n");
            let mut out = String::new();
            s.read_to_string(&mut out).is_ok() && out.contains(" 200 ")
        }) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "rndc-warden never became ready: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let ca_pem = std::fs::read_to_string(certs.join("ca.crt")).expect("generated CA");
        Server {
            _process: process,
            port,
            ca_pem,
            log,
            _dir: dir,
        }
    }

    /// POSTs `body` to `path` over TLS; the whole response (headers and body).
    async fn post(&self, path: &str, body: &[u8]) -> Vec<u8> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.expect("ca pem")).expect("root");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("handshake");
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await.expect("write head");
        tls.write_all(body).await.expect("write body");
        let mut response = Vec::new();
        tls.read_to_end(&mut response).await.expect("read");
        response
    }

    fn log(&self) -> Vec<u8> {
        std::fs::read(&self.log).unwrap_or_default()
    }
}

/// Both servers (JSON and text logs), started once for the named tests.
struct Servers {
    json: Server,
    text: Server,
}

fn servers() -> &'static Servers {
    static SERVERS: std::sync::OnceLock<Servers> = std::sync::OnceLock::new();
    SERVERS.get_or_init(|| {
        // Spawned from a thread that parks for the life of the process: the servers die with
        // the test binary, not with the test that happened to start them.
        let (sender, started) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let servers = Servers {
                json: Server::start("json"),
                text: Server::start("text"),
            };
            let _ = sender.send(servers);
            loop {
                std::thread::park();
            }
        });
        started.recv().expect("the servers start")
    })
}

/// The AdmissionReview answer inside an HTTP response, with the patch decoded.
fn answer(response: &[u8]) -> Value {
    let text = String::from_utf8_lossy(response);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|_| json!({"raw": body}))
}

fn assert_no_leak(what: &str, output: &[u8]) {
    if let Some(window) = leak(output) {
        panic!(
            "{what} contains the marker key ({window}); output was {} bytes",
            output.len()
        );
    }
}

/// Sends `review` to both endpoints of both servers; every answer and log line stays clean.
/// Returns the validating answer of the JSON server.
async fn send(review: &Value) -> Value {
    let body = serde_json::to_vec(review).expect("json");
    let mut validated = Value::Null;
    for server in [&servers().json, &servers().text] {
        for path in ["/mutate", "/validate"] {
            let response = server.post(path, &body).await;
            assert_no_leak(&format!("the {path} answer"), &response);
            let decoded = answer(&response);
            if let Some(patch) = decoded.pointer("/response/patch").and_then(Value::as_str) {
                use base64::Engine as _;
                let patch = base64::engine::general_purpose::STANDARD
                    .decode(patch)
                    .expect("patch is base64");
                assert_no_leak(&format!("the {path} patch"), &patch);
            }
            if path == "/validate" {
                validated = decoded;
            }
        }
    }
    validated
}

/// Every line the servers logged so far is clean (checked once per test: the logs grow).
fn assert_logs_clean() {
    for server in [&servers().json, &servers().text] {
        assert_no_leak("the server log", &server.log());
    }
}

/// Runs `check` on `manifest` in text and in JSON; neither output holds the marker.
fn check(manifest: &Value) -> String {
    let mut text_output = String::new();
    for format in ["text", "json"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rndc-warden"))
            .args(["check", "--output", format, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn check");
        let yaml = serde_yaml_ng::to_string(manifest).expect("yaml");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("write manifest");
        let output = child.wait_with_output().expect("check runs");
        assert_no_leak(&format!("check --output {format}"), &output.stdout);
        assert_no_leak(&format!("check --output {format} (stderr)"), &output.stderr);
        if format == "text" {
            text_output = String::from_utf8_lossy(&output.stdout).into_owned();
        }
    }
    text_output
}

fn denial(answer: &Value) -> String {
    assert_eq!(
        answer.pointer("/response/allowed"),
        Some(&json!(false)),
        "{answer}"
    );
    answer
        .pointer("/response/status/message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn planted(kind: PlantKind, place: &str, value: Value) -> Value {
    plant(kind.base_object(), place, value)
}

#[tokio::test]
async fn a_key_given_as_the_inline_secret_is_not_echoed_on_any_bindy_kind() {
    for (kind, place) in [
        (PlantKind::Instance, "/spec/rndcKey/secret"),
        (PlantKind::Cluster, "/spec/primary/rndcKey/secret"),
        (PlantKind::Provider, "/spec/primary/rndcKey/secret"),
    ] {
        let object = planted(kind, place, json!(marker()));
        let message = denial(&send(&review(kind, &object, None, "alice")).await);
        assert!(message.contains("rndcKey.secret: expected"), "{message}");
        assert!(message.contains("found a string"), "{message}");
        let report = check(&object);
        assert!(report.contains("rndcKey.secret: expected"), "{report}");
    }
    assert_logs_clean();
}

#[tokio::test]
async fn a_key_in_any_key_bearing_field_of_the_wrong_type_is_not_echoed() {
    for place in [
        "/spec/rndcKey",
        "/spec/rndcKey/secretRef",
        "/spec/rndcSecretRef",
        "/spec/rndcKey/secret/data",
        "/spec/rndcKey/secret/stringData",
        "/spec/rndcKey/secret/data/secret",
        "/spec/rndcKey/secret/stringData/rndc.key",
    ] {
        for shape in 0..SHAPES {
            let object = planted(
                PlantKind::Instance,
                place,
                leaks::shaped_marker(shape, false),
            );
            send(&review(PlantKind::Instance, &object, None, "alice")).await;
            check(&object);
        }
    }
    assert_logs_clean();
}

#[tokio::test]
async fn key_secret_data_of_the_wrong_type_is_not_echoed() {
    for place in ["/data", "/stringData", "/data/secret", "/stringData/secret"] {
        for shape in 0..SHAPES {
            for as_data in [false, true] {
                let object = planted(
                    PlantKind::Secret,
                    place,
                    leaks::shaped_marker(shape, as_data),
                );
                let old = PlantKind::Secret.base_object();
                send(&review(PlantKind::Secret, &object, None, "alice")).await;
                send(&review(PlantKind::Secret, &object, Some(&old), "alice")).await;
                if as_data {
                    check(&object);
                }
            }
        }
    }
    let object = planted(PlantKind::Secret, "/data", json!(marker()));
    let message = denial(&send(&review(PlantKind::Secret, &object, None, "alice")).await);
    assert!(
        message.contains("data: expected an object, found a string"),
        "{message}"
    );
    assert_logs_clean();
}

#[tokio::test]
async fn a_key_pasted_into_names_algorithms_roles_and_annotations_is_not_quoted() {
    for (kind, place) in [
        (PlantKind::Instance, "/spec/rndcKey/algorithm"),
        (PlantKind::Instance, "/spec/rndcKey/secretRef/algorithm"),
        (PlantKind::Instance, "/spec/rndcKey/rotateAfter"),
        (PlantKind::Instance, "/spec/role"),
        (PlantKind::Instance, "/spec/clusterRef"),
        (PlantKind::Instance, "/spec/rndcKey/secret/metadata/name"),
        (PlantKind::Instance, "/spec/rndcKey/secret/type"),
        (PlantKind::Cluster, "/spec/primary/rndcKey/algorithm"),
        (
            PlantKind::Secret,
            "/metadata/annotations/bindy.firestoned.io~1rndc-created-at",
        ),
        (
            PlantKind::Secret,
            "/metadata/annotations/bindy.firestoned.io~1rndc-rotation-count",
        ),
        (PlantKind::Secret, "/stringData/algorithm"),
        (PlantKind::Secret, "/stringData/key-name"),
    ] {
        for value in [
            marker(),
            format!("hmac-{}", marker()),
            marker()[..30].to_owned(),
        ] {
            let object = planted(kind, place, json!(value));
            send(&review(kind, &object, None, "alice")).await;
            check(&object);
        }
    }
    let object = planted(
        PlantKind::Instance,
        "/spec/rndcKey/algorithm",
        json!(marker()),
    );
    let message = denial(&send(&review(PlantKind::Instance, &object, None, "alice")).await);
    assert!(
        message.contains("spec.rndcKey.algorithm: a 44-character value is not"),
        "{message}"
    );
    assert_logs_clean();
}

#[tokio::test]
async fn renamed_data_keys_never_make_the_secret_check_quote_the_key() {
    // The owner's secretRef names the key's own entry as the algorithm (and as the key name).
    let owner: Bind9Instance = serde_json::from_value(json!({
        "apiVersion": "bindy.firestoned.io/v1beta1", "kind": "Bind9Instance",
        "metadata": {"name": "dns-0", "namespace": "dns", "uid": "u"},
        "spec": {"role": "primary", "clusterRef": "", "rndcKey": {"secretRef": {
            "name": "dns-0-rndc-key", "algorithmKey": "secret", "keyNameKey": "rndc.key"
        }}}
    }))
    .expect("instance");
    let router = admission::router(
        AdmissionState {
            policy: Arc::new(AdmissionPolicy::new(
                PolicyConfig::default(),
                ClusterCache::from_objects(vec![owner.clone()], vec![], vec![]),
            )),
            metrics: Metrics::new(),
        },
        RequestLimits::default(),
    );
    let secret = plant(
        PlantKind::Secret.base_object(),
        "/stringData/secret",
        json!(marker()),
    );
    let secret = plant(
        secret,
        "/stringData/rndc.key",
        leaks::shaped_marker(5, false),
    );
    for path in ["/mutate", "/validate"] {
        let body =
            serde_json::to_vec(&review(PlantKind::Secret, &secret, None, "alice")).expect("json");
        let (_, response) = in_process(&router, path, body).await;
        assert_no_leak(&format!("the in-process {path} answer"), &response);
        let decoded: Value = serde_json::from_slice(&response).expect("review");
        if path == "/validate" {
            let message = denial(&decoded);
            assert!(
                message.contains("stringData.secret: is not a supported algorithm"),
                "{message}"
            );
        }
    }
    let owner = serde_json::to_value(&owner).expect("owner");
    check(&json!({"apiVersion": "v1", "kind": "List", "items": [owner, secret]}));
}

#[tokio::test]
async fn decisions_are_logged_at_every_level_without_the_key() {
    let object = planted(PlantKind::Instance, "/spec/rndcKey/secret", json!(marker()));
    send(&review(PlantKind::Instance, &object, None, "alice")).await;
    for server in [&servers().json, &servers().text] {
        let log = String::from_utf8_lossy(&server.log()).into_owned();
        assert!(
            log.contains("rndcKey.secret: expected"),
            "the denial reason is logged: {log}"
        );
        assert_no_leak("the server log", log.as_bytes());
    }
}

async fn in_process(router: &axum::Router, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    let request = axum::http::Request::post(path)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(axum::body::Body::from(body))
        .expect("request");
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, bytes.to_vec())
}

fn router() -> axum::Router {
    admission::router(
        AdmissionState {
            policy: Arc::new(AdmissionPolicy::new(
                PolicyConfig::default(),
                ClusterCache::empty(),
            )),
            metrics: Metrics::new(),
        },
        RequestLimits::default(),
    )
}

#[tokio::test]
async fn a_huge_list_of_bad_entries_gets_a_small_answer() {
    let entries: serde_json::Map<String, Value> = (0..520_000)
        .map(|i| (format!("k{i}"), json!("!")))
        .collect();
    let object = planted(
        PlantKind::Instance,
        "/spec/rndcKey/secret/data",
        Value::Object(entries),
    );
    let body = serde_json::to_vec(&review(PlantKind::Instance, &object, None, "a")).expect("json");
    assert!(body.len() > 6_000_000, "{}", body.len());
    for path in ["/mutate", "/validate"] {
        let (status, response) = in_process(&router(), path, body.clone()).await;
        assert_eq!(status, 200);
        assert!(
            response.len() < 8 * 1024,
            "{path}: {} bytes",
            response.len()
        );
        if path == "/validate" {
            let message = denial(&serde_json::from_slice(&response).expect("review"));
            assert!(
                message.contains("entries more than the 64 read"),
                "{message}"
            );
        }
    }
}

#[tokio::test]
async fn valid_objects_nested_deeper_than_any_parser_limit_are_allowed() {
    let deep: Value = serde_json::from_str(&format!("{}1{}", "[".repeat(100), "]".repeat(100)))
        .expect("100 levels parse");
    // 1,000 levels as raw text: serde_json::Value itself cannot hold that many.
    let deep_text = format!("{}1{}", "[".repeat(1000), "]".repeat(1000));
    let instance = planted(PlantKind::Instance, "/spec/unmodelled", deep.clone());
    let zero_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let secret = plant(
        plant(
            PlantKind::Secret.base_object(),
            "/stringData/secret",
            json!(zero_key),
        ),
        "/stringData/rndc.key",
        json!(format!(
            "key \"bindy-operator\" {{\n    algorithm hmac-sha256;\n    secret \"{zero_key}\";\n}};\n"
        )),
    );
    let secret = plant(
        secret,
        "/metadata/managedFields",
        json!([{"manager": "kubectl", "fieldsV1": deep}]),
    );
    for (kind, object) in [(PlantKind::Instance, instance), (PlantKind::Secret, secret)] {
        let text = serde_json::to_string(&review(kind, &object, None, "a"))
            .expect("json")
            .replace(
                &format!("{}1{}", "[".repeat(100), "]".repeat(100)),
                &deep_text,
            );
        for path in ["/mutate", "/validate"] {
            let (status, response) = in_process(&router(), path, text.clone().into_bytes()).await;
            assert_eq!(status, 200);
            let decoded: Value = serde_json::from_slice(&response).expect("review");
            assert_eq!(
                decoded.pointer("/response/allowed"),
                Some(&json!(true)),
                "{:?} {path}: {decoded}",
                kind
            );
        }
    }
}

/// Every log line of this test binary, at debug level, as JSON and as text.
fn captured_logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        use tracing_subscriber::layer::SubscriberExt as _;
        #[derive(Clone)]
        struct Sink;
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                if let Ok(mut logs) = LOGS.lock() {
                    logs.extend_from_slice(buf);
                }
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new("debug"))
            .with(tracing_subscriber::fmt::layer().json().with_writer(|| Sink))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(|| Sink),
            );
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
    &LOGS
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Whatever the kind, the place, the shape and the operation: the marker is never in the
    /// answer, the decoded patch or any log line.
    #[test]
    fn the_marker_never_comes_out_of_the_router(
        kind in prop::sample::select(PlantKind::ALL.to_vec()),
        place in any::<prop::sample::Index>(),
        shape in 0..SHAPES,
        as_data in any::<bool>(),
        update in any::<bool>(),
        rotator in any::<bool>(),
        extra_places in prop::collection::vec((any::<prop::sample::Index>(), 0..SHAPES), 0..3),
    ) {
        let logs = captured_logs();
        let places = kind.places();
        let mut object = planted(kind, places[place.index(places.len())], leaks::shaped_marker(shape, as_data));
        for (place, shape) in extra_places {
            object = plant(object, places[place.index(places.len())], leaks::shaped_marker(shape, !as_data));
        }
        let old = update.then(|| kind.base_object());
        let user = if rotator { "system:serviceaccount:rndc-warden:rndc-warden" } else { "alice" };
        let body = serde_json::to_vec(&review(kind, &object, old.as_ref(), user)).expect("json");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        for path in ["/mutate", "/validate"] {
            let (status, response) = runtime.block_on(in_process(&router(), path, body.clone()));
            prop_assert!(status < 500, "{path} answered {status}");
            prop_assert_eq!(leak(&response), None, "{} answer", path);
            if let Ok(decoded) = serde_json::from_slice::<Value>(&response)
                && let Some(patch) = decoded.pointer("/response/patch").and_then(Value::as_str)
            {
                use base64::Engine as _;
                let patch = base64::engine::general_purpose::STANDARD.decode(patch).expect("b64");
                prop_assert_eq!(leak(&patch), None, "{} patch", path);
            }
        }
        let mut captured = logs.lock().expect("logs");
        prop_assert_eq!(leak(&captured), None, "log output");
        captured.clear();
    }
}

#[test]
fn check_never_prints_the_marker_for_any_place_and_shape() {
    // Every place of every kind, in each shape: the deterministic sweep of what the property
    // test samples, through the `check` binary.
    for kind in PlantKind::ALL {
        for (i, place) in kind.places().iter().enumerate() {
            let shape = i % SHAPES;
            check(&planted(
                kind,
                place,
                leaks::shaped_marker(shape, i % 2 == 0),
            ));
        }
    }
}
