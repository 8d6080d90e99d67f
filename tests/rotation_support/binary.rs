//! The real `rndc-warden serve` binary with the rotator on, as a child process that tests can
//! SIGKILL and start again with the same flags (fresh listen ports each time), or started exactly
//! as the Helm chart's Deployment runs it ([`WardenProcess::like_the_deployment`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `rndc-warden serve` replica; killed on drop.
pub struct WardenProcess {
    name: String,
    kubeconfig: PathBuf,
    args: Vec<String>,
    binary: PathBuf,
    envs: Vec<(String, String)>,
    dir: tempfile::TempDir,
    child: Option<Child>,
    probe: u16,
    /// The admission port of the current start.
    admission: u16,
    starts: u32,
    /// The admission port of every start (the port of the chart's `webhook.url`); `None`: a
    /// fresh port per start.
    listen: Option<u16>,
    /// Whether starts pass `--generated-cert-dir` (not with the chart's self-managed
    /// certificates, which live in a Secret).
    generated_cert: bool,
    /// Inherited variables to drop at each start.
    env_removed: Vec<String>,
}

impl WardenProcess {
    /// A replica named `name` (its Lease identity, so a restarted replica is the same holder)
    /// watching `namespace` with its Lease there, acting as `kubeconfig`, with `extra` flags, for
    /// standalone use (no Bindy operator: `--provision true`).
    pub fn new(name: &str, kubeconfig: &Path, namespace: &str, extra: &[&str]) -> WardenProcess {
        let mut process = Self::beside_bindy(name, kubeconfig, namespace, extra);
        process
            .args
            .extend(["--provision".to_owned(), "true".to_owned()]);
        process
    }

    /// [`WardenProcess::new`] with the default flags beside the Bindy operator (no
    /// provisioning).
    pub fn beside_bindy(
        name: &str,
        kubeconfig: &Path,
        namespace: &str,
        extra: &[&str],
    ) -> WardenProcess {
        let mut args: Vec<String> = [
            "serve",
            "--rotation",
            "true",
            "--watch-namespace",
            namespace,
            "--lease-namespace",
            namespace,
            "--identity",
            name,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        WardenProcess {
            name: name.to_owned(),
            kubeconfig: kubeconfig.to_owned(),
            args,
            binary: PathBuf::from(env!("CARGO_BIN_EXE_rndc-warden")),
            envs: Vec::new(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            probe: 0,
            admission: 0,
            starts: 0,
            listen: None,
            generated_cert: true,
            env_removed: Vec::new(),
        }
    }

    /// `rndc-warden serve` exactly as the chart's Deployment (`deployment`, as JSON from the
    /// apiserver) runs it: the container's args and env, downward-API fields resolved for pod
    /// `name` in `namespace`, acting as `kubeconfig` (the chart ServiceAccount's token). Only the
    /// listeners move to loopback: admission on `listen` (the port of the chart's `webhook.url`)
    /// and probes on a fresh port per start. Inherited `RNDC_WARDEN_*` variables are dropped.
    pub fn like_the_deployment(
        name: &str,
        deployment: &serde_json::Value,
        namespace: &str,
        kubeconfig: &Path,
        listen: u16,
    ) -> WardenProcess {
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let args = container["args"]
            .as_array()
            .expect("the chart's container has args")
            .iter()
            .map(|a| a.as_str().expect("string arg").to_owned())
            .collect();
        let mut envs = Vec::new();
        for var in container["env"].as_array().expect("the chart's env") {
            let key = var["name"].as_str().expect("env name");
            let value = match (
                &var["value"],
                var["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
            ) {
                (serde_json::Value::String(v), _) => v.clone(),
                (_, Some("metadata.namespace")) => namespace.to_owned(),
                (_, Some("metadata.name")) => name.to_owned(),
                other => panic!("env {key}: unsupported source {other:?}"),
            };
            envs.push((key.to_owned(), value));
        }
        let env_removed = std::env::vars_os()
            .map(|(key, _)| key.to_string_lossy().into_owned())
            .filter(|key| key.starts_with("RNDC_WARDEN_"))
            .collect();
        WardenProcess {
            name: name.to_owned(),
            kubeconfig: kubeconfig.to_owned(),
            args,
            binary: PathBuf::from(env!("CARGO_BIN_EXE_rndc-warden")),
            envs,
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            probe: 0,
            admission: 0,
            starts: 0,
            listen: Some(listen),
            generated_cert: false,
            env_removed,
        }
    }

    /// Turns the rotator off (`--rotation false`): admission and its watch caches only.
    pub fn without_rotation(mut self) -> WardenProcess {
        self.args[2] = "false".to_owned();
        self
    }

    /// Runs `binary` instead of the one Cargo built for this test (e.g. a release build).
    pub fn with_binary(mut self, binary: &Path) -> WardenProcess {
        self.binary = binary.to_owned();
        self
    }

    /// Sets an environment variable for every start.
    pub fn with_env(mut self, name: &str, value: &str) -> WardenProcess {
        self.envs.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Waits until `/readyz` answers `ok` (the admission caches have synced).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Duration {
        let started = Instant::now();
        loop {
            self.assert_running();
            let answer = http_get(self.probe, "/readyz").await;
            if answer.as_ref().is_ok_and(|b| b.starts_with("ok")) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < timeout,
                "{} not ready after {timeout:?} (/readyz: {}):\n{}",
                self.name,
                match &answer {
                    Ok(body) => body.trim().to_owned(),
                    Err(e) => e.to_string(),
                },
                self.logs_tail(4000)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts the process (again), logging to its own file per start.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let (listen, probe) = (self.listen.unwrap_or_else(free_port), free_port());
        self.starts += 1;
        let log = self.log_path(self.starts);
        let mut command = Command::new(&self.binary);
        command
            .args(&self.args)
            .args(["--listen", &format!("127.0.0.1:{listen}")])
            .args(["--probe-listen", &format!("127.0.0.1:{probe}")]);
        if self.generated_cert {
            command
                .arg("--generated-cert-dir")
                .arg(self.dir.path().join("certs"));
        }
        for key in &self.env_removed {
            command.env_remove(key);
        }
        let child = command
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("POD_NAMESPACE")
            .env_remove("RUST_LOG")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn rndc-warden");
        self.child = Some(child);
        self.probe = probe;
        self.admission = listen;
    }

    /// The admission (HTTPS) port of the current start.
    pub fn admission_port(&self) -> u16 {
        self.admission
    }

    /// The CA of the generated serving certificate (PEM file), with `--generated-cert-dir`.
    pub fn generated_ca(&self) -> PathBuf {
        self.dir.path().join("certs/ca.crt")
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.dir.path().join(format!("serve-{start}.log"))
    }

    /// SIGKILL (no graceful shutdown, no Lease release) and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The running process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Panics with the logs when the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!(
                "{} exited with {status}:\n{}",
                self.name,
                self.logs_tail(8000)
            );
        }
    }

    /// `/metrics` from the probe port.
    pub async fn metrics(&self) -> std::io::Result<String> {
        http_get(self.probe, "/metrics").await
    }

    /// Waits until the rotator has listed everything: the gauge `rndc_warden_rotation_seconds_until`
    /// has at least `series` series. Returns how long that took from now.
    pub async fn wait_series(&mut self, series: usize, timeout: Duration) -> Duration {
        let started = Instant::now();
        loop {
            self.assert_running();
            if let Ok(text) = self.metrics().await {
                let n = text
                    .lines()
                    .filter(|l| l.starts_with("rndc_warden_rotation_seconds_until{"))
                    .count();
                if n >= series {
                    return started.elapsed();
                }
            }
            assert!(
                started.elapsed() < timeout,
                "{}: fewer than {series} rotation_seconds_until series after {timeout:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The value of `rndc_warden_rotation_seconds_until` for `instance`, if exported.
    pub async fn seconds_until(&self, instance: &str) -> Option<f64> {
        let text = self.metrics().await.ok()?;
        let wanted = format!("instance=\"{instance}\"");
        text.lines()
            .filter(|l| l.starts_with("rndc_warden_rotation_seconds_until{") && l.contains(&wanted))
            .find_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()))
    }

    /// Whether the replica reports itself as the Lease holder (`rndc_warden_rotator_leader 1`).
    pub async fn is_leader(&self) -> bool {
        self.metrics()
            .await
            .is_ok_and(|t| t.lines().any(|l| l == "rndc_warden_rotator_leader 1"))
    }

    /// Every start's log, concatenated.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The last `bytes` of [`WardenProcess::logs`].
    pub fn logs_tail(&self, bytes: usize) -> String {
        let logs = self.logs();
        let mut cut = logs.len().saturating_sub(bytes);
        while !logs.is_char_boundary(cut) {
            cut += 1;
        }
        logs[cut..].to_owned()
    }

    /// How many log lines contain `text`.
    pub fn count_lines(&self, text: &str) -> usize {
        self.logs().lines().filter(|l| l.contains(text)).count()
    }
}

impl Drop for WardenProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `VmHWM` and `VmRSS` of a process, in KiB.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A plain HTTP/1.0 GET on 127.0.0.1 (the probe port); returns the body.
pub async fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nhost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "reading the probe"))??;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}

/// Runs the binary once (`rotate`, `audit`, …) with `KUBECONFIG`; returns (exit code, stdout,
/// stderr).
pub async fn run_cli(kubeconfig: &Path, args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_rndc-warden"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run rndc-warden");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
