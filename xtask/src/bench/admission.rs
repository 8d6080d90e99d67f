//! The procedure of `cargo xtask bench admission`: build release binaries, start `rndc-warden
//! serve` (which generates the CA and serving certificate) and the floor server with the same
//! certificate, then floor peak → our peak → our latency at half the floor's peak → our memory.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use rndc_warden_testkit::Lifetime;
use rndc_warden_testkit::process::{ManagedProcess, free_ports, log_tail};

use super::cpu::CpuSample;
use super::load::{LoadReport, Mode};
use super::report::{Machine, Memory, Outcome, Run, Runs};

/// Arguments of `cargo xtask bench admission`.
#[derive(Debug, Args)]
pub struct AdmissionArgs {
    /// Keep-alive connections of the load generator.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds of load before each measured window.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// Seconds measured in each run.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Open-loop rate in requests/s (default: half of the floor's closed-loop peak).
    #[arg(long)]
    rate: Option<f64>,
    /// Runtime threads of the load generator (1: single-threaded, leaving the most CPU to the
    /// server on a small machine).
    #[arg(long, default_value_t = 1)]
    load_threads: usize,
    /// Where certificates, logs and JSON reports go (default: `<target>/xtask-bench`).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

/// How long a server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(10);
/// Time a load run may take beyond its warm-up and measured window (connection set-up, drain).
const LOAD_SLACK: Duration = Duration::from_secs(30);
/// The bytes of a log shown when something fails.
pub(super) const LOG_TAIL: u64 = 4000;

/// Runs the whole benchmark and prints the results.
pub fn run(args: AdmissionArgs) -> Result<ExitCode> {
    let machine = Machine::detect();
    let bins = build_release(&["rndc-warden", "xtask"])?;
    let work = prepare_work_dir(args.work_dir.clone())?;
    let [ours_port, probe_port, floor_port] = <[u16; 3]>::try_from(free_ports(3)?)
        .map_err(|_| anyhow::anyhow!("free_ports returned the wrong number of ports"))?;
    let ours_addr = SocketAddr::from(([127, 0, 0, 1], ours_port));
    let floor_addr = SocketAddr::from(([127, 0, 0, 1], floor_port));

    let server = Server {
        binary: &bins.rndc_warden,
        args: &[],
        cert_dir: cert_dir(&work),
        log: work.join("rndc-warden.log"),
    };
    let mut ours = server.start(ours_addr, probe_port)?;
    let idle = Memory::of(ours.pid())?;
    let mut floor = start_floor(&bins, &work, floor_addr)?;
    let bench = LoadRunner {
        xtask: &bins.xtask,
        work: &work,
        args: &args,
    };

    let runs = measure(&bench, (&ours, ours_addr), (&floor, floor_addr))?;

    let ours_memory = Memory::of(ours.pid())?;
    let floor_memory = Memory::of(floor.pid())?;
    for server in [&mut ours, &mut floor] {
        if let Some(status) = server.exit_status() {
            bail!(
                "{} exited during the benchmark ({status})\n{}",
                server.name(),
                log_tail(server.log(), LOG_TAIL)
            );
        }
    }
    ours.stop(STOP_GRACE);
    floor.stop(STOP_GRACE);

    let outcome = Outcome {
        machine,
        runs,
        ours_idle: idle,
        ours_memory,
        floor_memory,
        work_dir: work.clone(),
    };
    print!("{}", outcome.render());
    Ok(if outcome.errors() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The procedure: floor peak, our peak, both at half the floor's peak (or `--rate`), and ours at
/// half its own peak.
fn measure(
    bench: &LoadRunner<'_>,
    (ours, ours_addr): (&ManagedProcess, SocketAddr),
    (floor, floor_addr): (&ManagedProcess, SocketAddr),
) -> Result<Runs> {
    let floor_peak = bench.run("floor, closed loop", floor, floor_addr, Mode::Closed, None)?;
    let ours_peak = bench.run("ours, closed loop", ours, ours_addr, Mode::Closed, None)?;
    let rate = bench
        .args
        .rate
        .unwrap_or(floor_peak.report.requests_per_sec / 2.0);
    let own_rate = ours_peak.report.requests_per_sec / 2.0;
    anyhow::ensure!(
        rate > 0.0 && own_rate > 0.0,
        "a server answered nothing in the closed loop: no rate for the open loop"
    );
    let open = |who: &str, rate: f64| format!("{who}, open loop at {rate:.0}/s");
    Ok(Runs {
        ours_at_half_floor: bench.run(
            &open("ours", rate),
            ours,
            ours_addr,
            Mode::Open,
            Some(rate),
        )?,
        floor_at_half_floor: bench.run(
            &open("floor", rate),
            floor,
            floor_addr,
            Mode::Open,
            Some(rate),
        )?,
        ours_at_half_own: bench.run(
            &open("ours", own_rate),
            ours,
            ours_addr,
            Mode::Open,
            Some(own_rate),
        )?,
        floor_peak,
        ours_peak,
    })
}

/// The release binaries of this tree (those that were built).
pub(super) struct ReleaseBins {
    /// `rndc-warden`.
    pub rndc_warden: PathBuf,
    /// `xtask` (the floor server, the load generator, the attacks).
    pub xtask: PathBuf,
}

/// `cargo build --release -p <package>...` for the packages named (of `rndc-warden` and `xtask`),
/// then the paths of the two binaries; those built must exist.
pub(super) fn build_release(packages: &[&str]) -> Result<ReleaseBins> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut args = vec!["build", "--release"];
    for package in packages {
        args.extend(["-p", package]);
    }
    println!("==> cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(&args)
        .current_dir(rndc_warden_testkit::bins::workspace_root())
        .status()
        .context("running cargo build --release")?;
    if !status.success() {
        bail!("cargo build --release failed ({status})");
    }
    let release = crate::cluster::target_dir().join("release");
    let bins = ReleaseBins {
        rndc_warden: release.join("rndc-warden"),
        xtask: release.join("xtask"),
    };
    for (package, bin) in [("rndc-warden", &bins.rndc_warden), ("xtask", &bins.xtask)] {
        anyhow::ensure!(
            !packages.contains(&package) || bin.is_file(),
            "{} is missing after the build",
            bin.display()
        );
    }
    Ok(bins)
}

/// Empties (or creates) the work directory, by default `<target>/xtask-bench`.
pub(super) fn prepare_work_dir(chosen: Option<PathBuf>) -> Result<PathBuf> {
    let work = chosen.unwrap_or_else(|| crate::cluster::target_dir().join("xtask-bench"));
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    Ok(work)
}

/// Where `serve` writes the CA (`ca.crt`) and serving certificate it generates.
pub(super) fn cert_dir(work: &Path) -> PathBuf {
    work.join("certs")
}

/// The allocator settings the Helm chart's Deployment and the image (`Dockerfile`, `ENV`) give
/// `serve`, so that memory is measured as deployed.
pub(super) const DEPLOYED_ALLOCATOR_ENV: [(&str, &str); 2] = [
    ("MIMALLOC_ARENA_EAGER_COMMIT", "0"),
    ("MIMALLOC_PURGE_DELAY", "0"),
];

/// How to start one `rndc-warden serve --no-cluster`.
pub(super) struct Server<'a> {
    /// The `rndc-warden` binary.
    pub binary: &'a Path,
    /// Extra arguments after the ones every run gets.
    pub args: &'a [String],
    /// Where it generates its CA and serving certificate.
    pub cert_dir: PathBuf,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
}

impl Server<'_> {
    /// Starts `serve --no-cluster` (admission only, generated certificate) on `listen`, with the
    /// probe port on 127.0.0.1, and waits for `/readyz`.
    pub fn start(&self, listen: SocketAddr, probe_port: u16) -> Result<ManagedProcess> {
        let probe = SocketAddr::from(([127, 0, 0, 1], probe_port));
        let mut command = Command::new(self.binary);
        command
            .arg("serve")
            .arg("--no-cluster")
            .arg(format!("--listen={listen}"))
            .arg(format!("--probe-listen={probe}"))
            .arg("--generated-cert-dir")
            .arg(&self.cert_dir)
            .args(self.args);
        for var in ["RUST_LOG", "RNDC_WARDEN_TLS_CERT", "RNDC_WARDEN_TLS_KEY"] {
            command.env_remove(var);
        }
        command.envs(DEPLOYED_ALLOCATOR_ENV);
        let mut process = ManagedProcess::spawn(
            "rndc-warden serve",
            command,
            &self.log,
            Lifetime::TiedToParent,
        )?;
        wait_until(&mut process, || http_status(probe, "/readyz") == Some(200))?;
        println!(
            "==> {} serve ready on https://{listen} (pid {})",
            self.binary.display(),
            process.pid()
        );
        Ok(process)
    }
}

/// Starts the floor server with our generated certificate and waits until it accepts connections.
fn start_floor(bins: &ReleaseBins, work: &Path, listen: SocketAddr) -> Result<ManagedProcess> {
    let certs = cert_dir(work);
    let mut command = Command::new(&bins.xtask);
    command
        .args(["bench", "floor-server"])
        .arg(format!("--listen={listen}"))
        .arg("--tls-cert")
        .arg(certs.join("tls.crt"))
        .arg("--tls-key")
        .arg(certs.join("tls.key"));
    let mut process = ManagedProcess::spawn(
        "floor server",
        command,
        &work.join("floor.log"),
        Lifetime::TiedToParent,
    )?;
    wait_until(&mut process, || TcpStream::connect(listen).is_ok())?;
    println!(
        "==> floor server ready on https://{listen} (pid {})",
        process.pid()
    );
    Ok(process)
}

/// Polls `ready` until it holds; fails with the log when the process exits or time runs out.
pub(super) fn wait_until(
    process: &mut ManagedProcess,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if ready() {
            return Ok(());
        }
        if let Some(status) = process.exit_status() {
            bail!(
                "{} exited before it was ready ({status})\n{}",
                process.name(),
                log_tail(process.log(), LOG_TAIL)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "{} was not ready within {READY_TIMEOUT:?}\n{}",
                process.name(),
                log_tail(process.log(), LOG_TAIL)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The status code of a plain `GET path` on `addr`, or `None` when there is no answer.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    http_get(addr, path, 64).map(|(status, _)| status)
}

/// A plain-HTTP `GET path` on `addr` (`Connection: close`): the status code and up to
/// `max_bytes` of the response (head and body), or `None` when there is no answer.
pub(super) fn http_get(addr: SocketAddr, path: &str, max_bytes: usize) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    while response.len() < max_bytes {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n.min(max_bytes - response.len())]),
            // Enough for a status line at least; the rest timed out or failed.
            Err(_) if !response.is_empty() => break,
            Err(_) => return None,
        }
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    Some((status, text))
}

/// Runs the release load generator as a child process, one run at a time.
struct LoadRunner<'a> {
    xtask: &'a Path,
    work: &'a Path,
    args: &'a AdmissionArgs,
}

impl LoadRunner<'_> {
    /// One load run against `server` at `addr`, labelled `label`; the generator's report is
    /// read back from a JSON file in the work directory.
    fn run(
        &self,
        label: &str,
        server: &ManagedProcess,
        addr: SocketAddr,
        mode: Mode,
        rate: Option<f64>,
    ) -> Result<Run> {
        let args = self.args;
        let name = file_name(label);
        println!(
            "==> {label}: {} connections, {} s warm-up + {} s measured{}",
            args.connections,
            args.warmup_secs,
            args.duration_secs,
            rate.map(|r| format!(", {r:.0} requests/s scheduled"))
                .unwrap_or_default()
        );
        let output = self.work.join(format!("{name}.json"));
        let mut command = Command::new(self.xtask);
        command
            .args(["bench", "load"])
            .arg(format!("--addr={addr}"))
            .arg("--ca")
            .arg(cert_dir(self.work).join("ca.crt"))
            .arg(format!("--mode={}", mode_name(mode)))
            .arg(format!("--connections={}", args.connections))
            .arg(format!("--warmup-secs={}", args.warmup_secs))
            .arg(format!("--duration-secs={}", args.duration_secs))
            .arg(format!("--threads={}", args.load_threads))
            .arg("--output")
            .arg(&output);
        if let Some(rate) = rate {
            command.arg(format!("--rate={rate}"));
        }
        let before = CpuSample::take(server.pid())?;
        let mut process = ManagedProcess::spawn(
            "load generator",
            command,
            &self.work.join(format!("{name}.log")),
            Lifetime::TiedToParent,
        )?;
        let deadline = Instant::now()
            + Duration::from_secs_f64(args.warmup_secs + args.duration_secs)
            + LOAD_SLACK;
        let status = wait_for_exit(&mut process, deadline, label)?;
        let after = CpuSample::take(server.pid())?;
        if !status.success() {
            bail!(
                "the load run {label} failed ({status})\n{}",
                log_tail(process.log(), LOG_TAIL)
            );
        }
        let text = std::fs::read_to_string(&output)
            .with_context(|| format!("reading {}", output.display()))?;
        let report: LoadReport =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", output.display()))?;
        let cpu = before.until(&after, report.cpu_secs);
        println!(
            "    {:.0} requests/s, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms{}, {} errors; \
             CPUs busy: server {:.2}, load generator {:.2}, others {:.2}",
            report.requests_per_sec,
            report.latency.p50_ms,
            report.latency.p99_ms,
            report.latency.p999_ms,
            report
                .lateness
                .map(|late| format!(" (sent late by p99 {:.3} ms)", late.p99_ms))
                .unwrap_or_default(),
            report.errors,
            cpu.server_cores,
            cpu.generator_cores,
            cpu.other_cores
        );
        Ok(Run::new(label, report, cpu))
    }
}

/// Waits for `process` to exit by `deadline`; stops it and fails with its log after that.
pub(super) fn wait_for_exit(
    process: &mut ManagedProcess,
    deadline: Instant,
    label: &str,
) -> Result<std::process::ExitStatus> {
    loop {
        if let Some(status) = process.exit_status() {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            process.stop(STOP_GRACE);
            bail!(
                "the run {label} did not finish in time\n{}",
                log_tail(process.log(), LOG_TAIL)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `ours, open loop at 5000/s` → `ours-open-loop-at-5000-s`.
pub(super) fn file_name(label: &str) -> String {
    let mut name = String::new();
    for c in label.chars() {
        if c.is_ascii_alphanumeric() {
            name.push(c);
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    name.trim_end_matches('-').to_owned()
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Closed => "closed",
        Mode::Open => "open",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_benchmarked_allocator_settings_are_the_charts_and_the_images() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let chart =
            std::fs::read_to_string(root.join("charts/rndc-warden/templates/deployment.yaml"))
                .expect("the chart's Deployment template");
        let chart: Vec<&str> = chart.lines().map(str::trim).collect();
        let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("the Dockerfile");
        for (name, value) in DEPLOYED_ALLOCATOR_ENV {
            let entry = [format!("- name: {name}"), format!("value: \"{value}\"")];
            assert!(
                chart.windows(2).any(|pair| pair == entry),
                "the chart does not set {name}={value}"
            );
            assert!(
                dockerfile.contains(&format!("{name}={value}")),
                "the Dockerfile does not set {name}={value}"
            );
        }
    }
}
