//! The `serve` process as an operator meets it: it starts with no flags and no cluster, says where
//! its generated CA is, answers over TLS, flips readiness off on SIGTERM before draining and exits
//! 0, and refuses unusable TLS flags with a message naming the flag or file.

use std::io::Read as _;
use std::net::TcpListener as StdListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rndc-warden"));
    // No kubeconfig anywhere: the process must run admission-only.
    let home = std::env::temp_dir().join("rndc-warden-no-home");
    command
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("KUBECONFIG", home.join("missing-kubeconfig"))
        .env("HOME", &home);
    command
}

/// A blocking HTTP/1.0 GET: (status code, body).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nhost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        status,
        response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned(),
    ))
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_runs_without_flags_or_cluster_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, probe) = (free_port(), free_port());
    let log_path = dir.path().join("serve.log");
    let mut child = binary()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--probe-listen", &format!("127.0.0.1:{probe}")])
        .args(["--shutdown-delay", "1500ms"])
        .arg("--generated-cert-dir")
        .arg(dir.path().join("certs"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .spawn()
        .expect("spawn");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    wait_until("readiness", Duration::from_secs(30), || {
        get(probe, "/readyz").is_some_and(|(status, _)| status == 200)
    });
    assert!(log().contains("no cluster credentials found"), "{}", log());
    assert!(
        log().contains(&dir.path().join("certs/ca.crt").display().to_string()),
        "the CA path must be logged: {}",
        log()
    );
    assert_eq!(get(probe, "/healthz").map(|(s, _)| s), Some(200));
    let (status, metrics) = get(probe, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("rndc_warden_admission_in_flight"),
        "{metrics}"
    );

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    // During the shutdown delay the probe port still answers, with readiness off.
    wait_until("readiness off", Duration::from_secs(5), || {
        get(probe, "/readyz")
            .is_some_and(|(status, body)| status == 503 && body.contains("shutting down"))
    });
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "did not exit after SIGTERM: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit {exit}: {}", log());
    assert!(log().contains("stopped"), "{}", log());
}

#[test]
fn unusable_tls_flags_are_refused_with_the_flag_or_file_named() {
    let half = binary()
        .args(["serve", "--tls-cert", "/etc/hostname"])
        .output()
        .expect("run");
    assert_eq!(half.status.code(), Some(2), "usage error expected");
    let stderr = String::from_utf8_lossy(&half.stderr);
    assert!(stderr.contains("--tls-key"), "{stderr}");

    let missing = binary()
        .args([
            "serve",
            "--no-cluster",
            "--listen",
            "127.0.0.1:0",
            "--probe-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--tls-cert",
            "/nonexistent/tls.crt",
            "--tls-key",
            "/nonexistent/tls.key",
        ])
        .output()
        .expect("run");
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("/nonexistent/tls.crt"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// With `--tls-wait`, certificate files that appear after the start (cert-manager issuing into a
/// Secret volume) are waited for; a file still missing after the wait fails with its path.
#[test]
fn tls_wait_waits_for_certificate_files_that_appear_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, probe) = (free_port(), free_port());
    let (cert, key) = (
        dir.path().join("tls/tls.crt"),
        dir.path().join("tls/tls.key"),
    );
    let log_path = dir.path().join("serve.log");
    let mut child = binary()
        .args([
            "serve",
            "--no-cluster",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--probe-listen", &format!("127.0.0.1:{probe}")])
        .args(["--tls-wait", "60s", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .spawn()
        .expect("spawn");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_until("the wait to be logged", Duration::from_secs(30), || {
        log().contains("waiting for the serving certificate files")
    });
    assert!(
        child.try_wait().expect("wait").is_none(),
        "exited while waiting: {}",
        log()
    );
    // The files appear: generated elsewhere, then moved into place.
    let generated = dir.path().join("generated");
    let pair = rndc_warden::admission::tls::generate_self_signed(
        &generated,
        &["localhost".to_owned()],
        &["127.0.0.1".parse().expect("ip")],
        1,
    )
    .expect("certificate");
    std::fs::create_dir_all(cert.parent().expect("dir")).expect("tls dir");
    std::fs::rename(&pair.files.key, &key).expect("key in place");
    std::fs::rename(&pair.files.cert, &cert).expect("cert in place");
    wait_until("readiness", Duration::from_secs(30), || {
        get(probe, "/readyz").is_some_and(|(status, _)| status == 200)
    });
    let _ = child.kill();
    let _ = child.wait();

    let missing = binary()
        .args([
            "serve",
            "--no-cluster",
            "--listen",
            "127.0.0.1:0",
            "--probe-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--tls-wait",
            "1s",
            "--tls-cert",
            "/nonexistent/tls.crt",
            "--tls-key",
            "/nonexistent/tls.key",
        ])
        .output()
        .expect("run");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/tls.crt"));
}
