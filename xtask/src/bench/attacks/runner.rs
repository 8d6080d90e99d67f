//! The hidden `bench attack`: one scenario against one running server, from the release `xtask`
//! binary. It sends the small fixture review at a fixed rate from connections of its own (the
//! open loop of [`super::super::load`], in-process), runs the attack inside that window, samples
//! the server's VmRSS every few milliseconds, and writes the figures as JSON.
//!
//! Nothing read from an answer is printed or stored but sizes, counts, status codes and the
//! decision: the bodies carry no key material, and the report must not either.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use clap::Args;
use hyper::StatusCode;
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::super::cpu::{self, CpuSample};
use super::super::load::{self, LoadArgs, LoadReport, Mode, RunControl, Target};
use super::super::report::Memory;
use super::procfs;
use super::{AttackParams, AttackReport, Figure, Scenario, bodies};

/// Arguments of the hidden `bench attack` command.
#[derive(Debug, Args)]
pub struct AttackRunArgs {
    /// The scenario.
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// The server's HTTPS address (loopback).
    #[arg(long)]
    addr: SocketAddr,
    /// The server's probe address (plain HTTP, `/metrics`).
    #[arg(long)]
    metrics_addr: SocketAddr,
    /// The CA certificate (PEM) the server's certificate chains to.
    #[arg(long)]
    ca: PathBuf,
    /// The server's process id (for /proc).
    #[arg(long)]
    server_pid: u32,
    /// Where the JSON report goes.
    #[arg(long)]
    output: PathBuf,
    /// Sizes of the attacks and of the small reviews.
    #[command(flatten)]
    params: AttackParams,
}

/// How long one attack request may take (an 85 MB answer on a busy machine included).
const ATTACK_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a small review may take before it counts as an error: long enough that a stall
/// shows as latency rather than as a lost request.
const REVIEW_TIMEOUT_SECS: f64 = 60.0;
/// The small reviews' warm-up before the attack starts.
const REVIEW_WARMUP_SECS: f64 = 1.0;
/// The longest the small reviews' window may last (the attack ends it much earlier).
const REVIEW_WINDOW_SECS: f64 = 3600.0;
/// How long the small reviews may take to open their connections.
const REVIEW_SETUP: Duration = Duration::from_secs(30);
/// How often the server's VmRSS is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// Connection attempts (TCP connect and TLS handshake) in flight at once when opening idle
/// connections: below the listen backlog, so the kernel never drops a SYN.
const OPENING_AT_ONCE: usize = 64;
/// Time allowed for one TCP connect, and for one TLS handshake, of an idle connection.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening all idle connections of a group may take.
const OPEN_ALL_TIMEOUT: Duration = Duration::from_secs(180);
/// Receive buffer of the non-reading client: small, so the server's writes stall at once.
const NON_READER_RCVBUF: u32 = 4096;
/// How often the non-reading client's connection is looked up in /proc/net/tcp.
const NON_READER_POLL: Duration = Duration::from_millis(100);

/// Runs one scenario and writes its report.
pub fn run(args: AttackRunArgs) -> Result<ExitCode> {
    let wanted = args.params.open_files_wanted();
    let limit = procfs::raise_open_file_limit(wanted)?;
    let mut report = attack(&args)?;
    if limit < wanted {
        report.notes.push(format!(
            "the runner's open-file limit is {limit}, under the {wanted} wanted: connections may \
             have failed for want of descriptors"
        ));
    }
    let json = serde_json::to_string_pretty(&report).context("serialising the report")?;
    std::fs::write(&args.output, json + "\n")
        .with_context(|| format!("writing {}", args.output.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// What a scenario works with.
struct Attack<'a> {
    target: Arc<Target>,
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    pid: u32,
    params: &'a AttackParams,
    sampler: &'a Sampler,
    notes: Vec<String>,
}

fn attack(args: &AttackRunArgs) -> Result<AttackReport> {
    let pid = args.server_pid;
    let quiet = (args.params.quiet_secs > 0.0)
        .then(|| load::measure(&small_reviews(args, args.params.quiet_secs, None)))
        .transpose()
        .context("the small reviews before the attack")?;
    let idle = Memory::of(pid)?;
    let sampler = Sampler::start(pid)?;
    let control = Arc::new(RunControl::default());
    let reviews = start_small_reviews(args, control.clone())?;
    let Some(start) = control.wait_for_window(REVIEW_SETUP) else {
        let outcome = reviews
            .join()
            .map_err(|_| anyhow!("the small reviews panicked"))?;
        return Err(outcome
            .err()
            .unwrap_or_else(|| anyhow!("the small reviews never started")))
        .context("starting the small reviews");
    };
    std::thread::sleep(start.saturating_duration_since(Instant::now()));

    let load_before = procfs::load_average();
    let cpu_before = CpuSample::take(pid)?;
    let own_before = cpu::own_cpu_secs();
    sampler.take_peak();
    let mut attack = Attack {
        target: Arc::new(Target::new(
            args.addr,
            &args.ca,
            Bytes::new(),
            ATTACK_TIMEOUT,
        )?),
        addr: args.addr,
        metrics_addr: args.metrics_addr,
        pid,
        params: &args.params,
        sampler: &sampler,
        notes: Vec::new(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a tokio runtime")?;
    let attacked = runtime.block_on(async {
        match args.scenario {
            Scenario::HugeDenial => huge_denial(&mut attack).await,
            Scenario::UploadsArray => uploads(&mut attack, bodies::flat_array()?).await,
            Scenario::UploadsNested => {
                uploads(&mut attack, bodies::nested_arrays(args.params.depth)?).await
            }
            Scenario::IdleTls => idle_connections(&mut attack).await,
            Scenario::NonReader => non_reader(&mut attack).await,
        }
    });
    control.stop();
    let cpu_after = CpuSample::take(pid)?;
    let own = cpu::own_cpu_secs() - own_before;
    let load_after = procfs::load_average();
    let small = reviews
        .join()
        .map_err(|_| anyhow!("the small reviews panicked"))?
        .context("the small reviews")?;
    let mut figures = attacked?;
    let mut notes = attack.notes;

    let used = cpu_before.until(&cpu_after, own);
    figures.extend(small_review_figures(&small, &mut notes));
    if let Some(quiet) = &quiet {
        figures.extend([
            Figure::number("small reviews p99, quiet", quiet.latency.p99_ms, "ms"),
            Figure::number("small reviews max, quiet", quiet.latency.max_ms, "ms"),
            Figure::number(
                "small reviews failed, quiet",
                (quiet.errors + quiet.unsent) as f64,
                "",
            ),
        ]);
    }
    let memory = Memory::of(pid).ok();
    figures.extend([
        Figure::number("server VmRSS before the attack", idle.rss_mib, "MiB"),
        Figure::number(
            "server VmRSS peak during the attack (sampled)",
            sampler.overall_peak_mib(),
            "MiB",
        ),
        Figure::maybe(
            "server VmHWM after the attack",
            memory.map(|m| m.hwm_mib),
            "MiB",
        ),
        Figure::maybe(
            "server VmRSS after the attack",
            memory.map(|m| m.rss_mib),
            "MiB",
        ),
        Figure::number("server CPU over the attack", used.server_secs, "s"),
        Figure::number("CPUs busy with other processes", used.other_cores, "CPUs"),
        Figure::text("load average at the start (1/5/15 min)", load_before),
        Figure::text("load average at the end (1/5/15 min)", load_after),
        Figure::maybe(
            "server open-file limit",
            procfs::open_file_limit(pid).map(|l| l as f64),
            "",
        ),
    ]);
    if memory.is_none() {
        notes.push("the server process is gone after the attack".into());
    }
    Ok(AttackReport {
        scenario: args.scenario,
        figures,
        notes,
    })
}

/// The small reviews: the open loop of the load generator at `--review-rate` for `secs` after
/// the warm-up (or until `control` ends it).
fn small_reviews(args: &AttackRunArgs, secs: f64, control: Option<Arc<RunControl>>) -> LoadArgs {
    LoadArgs {
        addr: args.addr,
        ca: args.ca.clone(),
        mode: Mode::Open,
        connections: args.params.review_connections,
        warmup_secs: REVIEW_WARMUP_SECS,
        duration_secs: secs,
        rate: Some(args.params.review_rate),
        threads: 1,
        output: None,
        request_timeout_secs: REVIEW_TIMEOUT_SECS,
        control,
    }
}

/// Starts the small reviews on a thread of their own, ended through `control` when the attack
/// is over.
fn start_small_reviews(
    args: &AttackRunArgs,
    control: Arc<RunControl>,
) -> Result<std::thread::JoinHandle<Result<LoadReport>>> {
    let load = small_reviews(args, REVIEW_WINDOW_SECS, Some(control));
    std::thread::Builder::new()
        .name("small-reviews".into())
        .spawn(move || load::measure(&load))
        .context("starting the small reviews")
}

fn small_review_figures(report: &LoadReport, notes: &mut Vec<String>) -> Vec<Figure> {
    for sample in &report.error_samples {
        notes.push(format!("small review failed: {sample}"));
    }
    let l = &report.latency;
    vec![
        Figure::number(
            "small reviews answered in the window",
            report.requests as f64,
            "",
        ),
        Figure::number("small reviews p50", l.p50_ms, "ms"),
        Figure::number("small reviews p99", l.p99_ms, "ms"),
        Figure::number("small reviews max", l.max_ms, "ms"),
        Figure::number(
            "small reviews failed or never sent",
            (report.errors + report.unsent) as f64,
            "",
        ),
        Figure::number(
            "attack window (small reviews measured)",
            report.seconds,
            "s",
        ),
    ]
}

/// The server's VmRSS, sampled on a thread of its own: the peak since the last
/// [`Sampler::take_peak`] and over the whole run.
struct Sampler {
    pid: u32,
    peak_kib: Arc<AtomicU64>,
    overall_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    fn start(pid: u32) -> Result<Self> {
        let sampler = Self {
            pid,
            peak_kib: Arc::default(),
            overall_kib: Arc::default(),
            stop: Arc::default(),
        };
        let (peak, overall, stop) = (
            sampler.peak_kib.clone(),
            sampler.overall_kib.clone(),
            sampler.stop.clone(),
        );
        std::thread::Builder::new()
            .name("rss-sampler".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(memory) = Memory::of(pid) else { break };
                    let kib = (memory.rss_mib * 1024.0) as u64;
                    peak.fetch_max(kib, Ordering::Relaxed);
                    overall.fetch_max(kib, Ordering::Relaxed);
                    std::thread::sleep(SAMPLE_EVERY);
                }
            })
            .context("starting the RSS sampler")?;
        Ok(sampler)
    }

    /// The peak VmRSS (MiB) since the last call, or the current VmRSS when that is higher (a
    /// period shorter than the sampling interval); starts a new period.
    fn take_peak(&self) -> f64 {
        let sampled = self.peak_kib.swap(0, Ordering::Relaxed) as f64 / 1024.0;
        let now = Memory::of(self.pid).map_or(0.0, |m| m.rss_mib);
        sampled.max(now)
    }

    fn overall_peak_mib(&self) -> f64 {
        self.overall_kib.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The parts of an answer that are counted (never printed).
#[derive(Debug, Default, Deserialize)]
struct Answer {
    response: AnswerResponse,
}

#[derive(Debug, Default, Deserialize)]
struct AnswerResponse {
    allowed: bool,
    #[serde(default)]
    status: Option<AnswerStatus>,
    #[serde(default)]
    warnings: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AnswerStatus {
    #[serde(default)]
    message: String,
}

/// What one attack request got back.
#[derive(Debug)]
enum Outcome {
    /// An HTTP answer: its status, size, and the decision when it is an AdmissionReview.
    Answered {
        status: StatusCode,
        bytes: usize,
        answer: Option<AnswerResponse>,
    },
    /// No answer: the error, without any body.
    Failed(String),
}

impl Outcome {
    fn of(result: Result<(StatusCode, Bytes)>) -> Self {
        match result {
            Ok((status, body)) => Self::Answered {
                status,
                bytes: body.len(),
                answer: serde_json::from_slice::<Answer>(&body)
                    .ok()
                    .map(|a| a.response),
            },
            Err(error) => Self::Failed(format!("{error:#}")),
        }
    }

    /// `HTTP 200, denied`, `HTTP 413`, `no answer`.
    fn summary(&self) -> String {
        match self {
            Self::Answered {
                status,
                answer: Some(answer),
                ..
            } => format!(
                "HTTP {}, {}",
                status.as_u16(),
                if answer.allowed { "allowed" } else { "denied" }
            ),
            Self::Answered { status, .. } => format!("HTTP {}, not a review", status.as_u16()),
            Self::Failed(_) => "no answer".into(),
        }
    }
}

/// Scenario 1: the 520k-entry denial to /validate, then to /mutate, each on a new connection.
async fn huge_denial(attack: &mut Attack<'_>) -> Result<Vec<Figure>> {
    let body = Bytes::from(bodies::huge_denial(attack.params.entries)?);
    let mut figures = vec![Figure::number(
        "request body",
        body.len() as f64 / 1e6,
        "MB",
    )];
    for path in ["/validate", "/mutate"] {
        let (mut sender, _) = attack.target.connect().await?;
        attack.sampler.take_peak();
        let cpu_before = cpu::process_cpu_secs(attack.pid)?;
        let sent = Instant::now();
        let outcome = Outcome::of(attack.target.post(&mut sender, path, body.clone()).await);
        let latency = sent.elapsed();
        let cpu = cpu::process_cpu_secs(attack.pid)? - cpu_before;
        let peak = attack.sampler.take_peak();
        figures.push(Figure::text(&format!("{path}: answer"), outcome.summary()));
        match &outcome {
            Outcome::Answered { bytes, answer, .. } => {
                figures.push(Figure::number(
                    &format!("{path}: response size"),
                    *bytes as f64 / 1e6,
                    "MB",
                ));
                if let Some(answer) = answer {
                    let message = answer.status.as_ref().map_or(0, |s| s.message.len());
                    let warnings: usize = answer.warnings.iter().map(String::len).sum();
                    figures.extend([
                        Figure::number(
                            &format!("{path}: status message"),
                            message as f64 / 1e3,
                            "kB",
                        ),
                        Figure::number(
                            &format!("{path}: warnings"),
                            answer.warnings.len() as f64,
                            "",
                        ),
                        Figure::number(
                            &format!("{path}: warnings size"),
                            warnings as f64 / 1e3,
                            "kB",
                        ),
                    ]);
                }
            }
            Outcome::Failed(error) => attack.notes.push(format!("{path}: {error}")),
        }
        figures.extend([
            Figure::number(&format!("{path}: server CPU"), cpu, "s"),
            Figure::number(&format!("{path}: latency"), latency.as_secs_f64(), "s"),
            Figure::number(&format!("{path}: server VmRSS peak (sampled)"), peak, "MiB"),
        ]);
    }
    Ok(figures)
}

/// Scenario 2: `--clients` connections each POST the 7 MiB `body` at once (even clients to
/// /validate, odd ones to /mutate), `--rounds` times. Every answer must be HTTP 200 and allowed.
async fn uploads(attack: &mut Attack<'_>, body: Vec<u8>) -> Result<Vec<Figure>> {
    let body = Bytes::from(body);
    let mut senders = Vec::with_capacity(attack.params.clients);
    for _ in 0..attack.params.clients {
        senders.push(Some(attack.target.connect().await?.0));
    }
    let cpu_before = cpu::process_cpu_secs(attack.pid)?;
    let mut outcomes = Vec::new();
    let mut slowest_round = Duration::ZERO;
    for _ in 0..attack.params.rounds {
        let started = Instant::now();
        let mut round = JoinSet::new();
        for (i, sender) in std::mem::take(&mut senders).into_iter().enumerate() {
            let path = if i % 2 == 0 { "/validate" } else { "/mutate" };
            round.spawn(upload(attack.target.clone(), sender, path, body.clone()));
        }
        while let Some(joined) = round.join_next().await {
            let (sender, outcome) = joined.context("an upload panicked")?;
            senders.push(sender);
            outcomes.push(outcome);
        }
        slowest_round = slowest_round.max(started.elapsed());
    }
    let cpu = cpu::process_cpu_secs(attack.pid)? - cpu_before;
    drop(senders);

    let mut allowed = 0;
    let mut denied = 0;
    let mut other = std::collections::BTreeMap::<String, usize>::new();
    for outcome in &outcomes {
        match outcome {
            Outcome::Answered {
                status,
                answer: Some(answer),
                ..
            } if *status == StatusCode::OK => {
                if answer.allowed {
                    allowed += 1;
                } else {
                    denied += 1;
                }
            }
            Outcome::Failed(error) => {
                if attack.notes.len() < 5 {
                    attack.notes.push(format!("upload failed: {error}"));
                }
                *other.entry(outcome.summary()).or_default() += 1;
            }
            Outcome::Answered { .. } => *other.entry(outcome.summary()).or_default() += 1,
        }
    }
    let requests = outcomes.len();
    let non_200 = if other.is_empty() {
        "none".to_owned()
    } else {
        other
            .iter()
            .map(|(what, n)| format!("{n}x {what}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Ok(vec![
        Figure::number("request body", body.len() as f64 / 1e6, "MB"),
        Figure::number("uploads sent", requests as f64, ""),
        Figure::number("answered 200, allowed", allowed as f64, ""),
        Figure::number("answered 200, DENIED (must be allowed)", denied as f64, ""),
        Figure::text("other answers", non_200),
        Figure::maybe(
            "server CPU per upload",
            (requests > 0).then(|| cpu / requests as f64 * 1e3),
            "ms",
        ),
        Figure::number("slowest round", slowest_round.as_secs_f64(), "s"),
    ])
}

/// One upload on `sender` (a new connection when there is none); hands back the connection
/// unless it failed.
async fn upload(
    target: Arc<Target>,
    sender: Option<load::Sender>,
    path: &'static str,
    body: Bytes,
) -> (Option<load::Sender>, Outcome) {
    let mut sender = match sender {
        Some(sender) => sender,
        None => match target.connect().await {
            Ok((sender, _)) => sender,
            Err(error) => return (None, Outcome::of(Err(error))),
        },
    };
    let result = target.post(&mut sender, path, body).await;
    let kept = result.is_ok().then_some(sender);
    (kept, Outcome::of(result))
}

/// How one idle connection ended.
#[derive(Debug, Clone)]
enum Held {
    /// The TCP connect failed (refused, timed out).
    ConnectFailed(String),
    /// Connected, but the TLS handshake failed or timed out.
    HandshakeFailed(String),
    /// Open; closed by the server after this long, or still open when released (`None`).
    Open(Option<Duration>),
}

/// One idle connection: connect, complete the TLS handshake when `tls`, count itself as settled,
/// then wait for the server to close it (EOF, reset, or an unexpected byte) or for `release`.
async fn hold_one(
    target: Arc<Target>,
    addr: SocketAddr,
    tls: bool,
    opening: Arc<Semaphore>,
    settled: Arc<AtomicUsize>,
    mut release: watch::Receiver<bool>,
) -> Held {
    let permit = opening.acquire_owned().await;
    let opened = async {
        let tcp = match tokio::time::timeout(OPEN_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(error)) => return Err(Held::ConnectFailed(error.kind().to_string())),
            Err(_) => return Err(Held::ConnectFailed("connect timed out".into())),
        };
        if !tls {
            return Ok(Idle::Tcp(tcp));
        }
        match tokio::time::timeout(OPEN_TIMEOUT, target.handshake(tcp)).await {
            Ok(Ok(stream)) => Ok(Idle::Tls(Box::new(stream))),
            Ok(Err(error)) => Err(Held::HandshakeFailed(format!("{error:#}"))),
            Err(_) => Err(Held::HandshakeFailed("handshake timed out".into())),
        }
    }
    .await;
    drop(permit);
    settled.fetch_add(1, Ordering::Relaxed);
    let mut idle = match opened {
        Ok(idle) => idle,
        Err(failed) => return failed,
    };
    let since = Instant::now();
    let mut byte = [0u8; 1];
    tokio::select! {
        _ = idle.read(&mut byte) => Held::Open(Some(since.elapsed())),
        _ = release.wait_for(|released| *released) => Held::Open(None),
    }
}

/// An idle connection of either kind.
enum Idle {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Idle {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Tcp(tcp) => tcp.read(buf).await,
            Self::Tls(tls) => tls.read(buf).await,
        }
    }
}

/// Waits until `settled` reaches `count` or `timeout` passes; returns how long it took.
async fn until_settled(settled: &AtomicUsize, count: usize, timeout: Duration) -> Duration {
    let started = Instant::now();
    while settled.load(Ordering::Relaxed) < count && started.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Scenario 3: `--idle-tls` connections that complete the handshake, then `--idle-tcp` that never
/// send a ClientHello, all left idle; held until the server has closed them all or for
/// `--idle-hold-secs` after the last one opened.
async fn idle_connections(attack: &mut Attack<'_>) -> Result<Vec<Figure>> {
    let params = attack.params;
    let opening = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let settled = Arc::new(AtomicUsize::new(0));
    let (release, released) = watch::channel(false);
    let mut figures = Vec::new();
    let mut groups: Vec<(&str, JoinSet<Held>)> = Vec::new();
    let mut expected = 0;
    for (name, tls, count) in [
        ("TLS", true, params.idle_tls),
        ("no ClientHello", false, params.idle_tcp),
    ] {
        let mut tasks = JoinSet::new();
        for _ in 0..count {
            tasks.spawn(hold_one(
                attack.target.clone(),
                attack.addr,
                tls,
                opening.clone(),
                settled.clone(),
                released.clone(),
            ));
        }
        expected += count;
        let took = until_settled(&settled, expected, OPEN_ALL_TIMEOUT).await;
        figures.push(Figure::number(
            &format!("{name}: time to open {count}"),
            took.as_secs_f64(),
            "s",
        ));
        groups.push((name, tasks));
    }
    let all_open = Instant::now();
    let peak = snapshot(attack, "with all open");
    figures.extend(peak);

    // Hold until the server has closed every connection or the bound has passed.
    let hold = Duration::from_secs_f64(params.idle_hold_secs);
    let port = attack.addr.port();
    loop {
        let (server, _) = procfs::server_side(&procfs::tcp_sockets()?, port);
        let open = server.iter().filter(|s| s.held()).count();
        if open <= params.review_connections || all_open.elapsed() >= hold {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    figures.push(Figure::number(
        "held for (after all were open)",
        all_open.elapsed().as_secs_f64(),
        "s",
    ));
    figures.extend(snapshot(attack, "at the end of the hold"));
    let _ = release.send(true);

    for (name, mut tasks) in groups {
        let mut outcomes = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            outcomes.push(joined.context("an idle connection panicked")?);
        }
        figures.extend(held_figures(name, &outcomes, &mut attack.notes));
    }
    Ok(figures)
}

/// The server's VmRSS, the connections it holds and its `connection` metrics, now.
fn snapshot(attack: &Attack<'_>, when: &str) -> Vec<Figure> {
    let mut figures = vec![Figure::maybe(
        &format!("server VmRSS {when}"),
        Memory::of(attack.pid).ok().map(|m| m.rss_mib),
        "MiB",
    )];
    if let Ok(sockets) = procfs::tcp_sockets() {
        let (server, backlog) = procfs::server_side(&sockets, attack.addr.port());
        let held = server.iter().filter(|s| s.held()).count();
        figures.extend([
            Figure::number(
                &format!("connections the server holds {when}"),
                held as f64,
                "",
            ),
            Figure::number(
                &format!("connections waiting to be accepted {when}"),
                backlog as f64,
                "",
            ),
        ]);
    }
    match procfs::connection_metrics(attack.metrics_addr) {
        Some(series) if series.is_empty() => figures.push(Figure::text(
            &format!("/metrics 'connection' series {when}"),
            "none".into(),
        )),
        Some(series) => figures.extend(
            series
                .into_iter()
                .map(|(name, value)| Figure::number(&format!("{name} {when}"), value, "")),
        ),
        None => figures.push(Figure::text(
            &format!("/metrics 'connection' series {when}"),
            "no answer".into(),
        )),
    }
    figures
}

/// Counts of one group of idle connections: failed, closed by the server (and when), still open.
fn held_figures(name: &str, outcomes: &[Held], notes: &mut Vec<String>) -> Vec<Figure> {
    let mut connect_failed = 0;
    let mut handshake_failed = 0;
    let mut still_open = 0;
    let mut closed = Vec::new();
    for outcome in outcomes {
        match outcome {
            Held::ConnectFailed(error) => {
                if connect_failed == 0 {
                    notes.push(format!("{name}: first failed connect: {error}"));
                }
                connect_failed += 1;
            }
            Held::HandshakeFailed(error) => {
                if handshake_failed == 0 {
                    notes.push(format!("{name}: first failed handshake: {error}"));
                }
                handshake_failed += 1;
            }
            Held::Open(Some(after)) => closed.push(after.as_secs_f64()),
            Held::Open(None) => still_open += 1,
        }
    }
    closed.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        (!closed.is_empty()).then(|| closed[((closed.len() - 1) as f64 * q).round() as usize])
    };
    let mut figures = vec![Figure::number(
        &format!("{name}: connect failed"),
        connect_failed as f64,
        "",
    )];
    if name == "TLS" {
        figures.push(Figure::number(
            &format!("{name}: handshake failed"),
            handshake_failed as f64,
            "",
        ));
    }
    figures.extend([
        Figure::number(
            &format!("{name}: closed by the server"),
            closed.len() as f64,
            "",
        ),
        Figure::maybe(
            &format!("{name}: open for, median of those closed"),
            quantile(0.5),
            "s",
        ),
        Figure::maybe(
            &format!("{name}: open for, longest of those closed"),
            quantile(1.0),
            "s",
        ),
        Figure::number(
            &format!("{name}: still open at the end"),
            still_open as f64,
            "",
        ),
    ]);
    figures
}

/// Scenario 4: the scenario-1 request to /validate from a client with a tiny receive buffer that
/// never reads; watched in /proc/net/tcp until the server lets go of its socket or the bound.
async fn non_reader(attack: &mut Attack<'_>) -> Result<Vec<Figure>> {
    let body = bodies::huge_denial(attack.params.entries)?;
    let socket = tokio::net::TcpSocket::new_v4().context("creating a socket")?;
    socket
        .set_recv_buffer_size(NON_READER_RCVBUF)
        .context("setting SO_RCVBUF")?;
    let tcp = socket
        .connect(attack.addr)
        .await
        .with_context(|| format!("connecting to {}", attack.addr))?;
    let client_port = tcp.local_addr().context("local address")?.port();
    let mut tls = attack.target.handshake(tcp).await?;
    let head = format!(
        "POST /validate HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        attack.addr,
        body.len()
    );
    let started = Instant::now();
    let write = async {
        tls.write_all(head.as_bytes()).await?;
        tls.write_all(&body).await?;
        tls.flush().await
    };
    // A server that stops reading (a smaller body limit) may close before all is sent: that is
    // a result, not a failure of the benchmark.
    let written = match tokio::time::timeout(ATTACK_TIMEOUT, write).await {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error.to_string()),
        Err(_) => Some("timed out".to_owned()),
    };
    let sent = Instant::now();
    let mut figures = vec![
        Figure::number("request body", body.len() as f64 / 1e6, "MB"),
        Figure::number(
            "request sent in",
            sent.duration_since(started).as_secs_f64(),
            "s",
        )
        .noted(written.as_deref().map(|_| "not all of it")),
    ];
    if let Some(error) = written {
        attack
            .notes
            .push(format!("sending the request failed: {error}"));
    }
    drop(body);

    let bound = Duration::from_secs_f64(attack.params.non_reader_bound_secs);
    let port = attack.addr.port();
    let mut queued = 0u64;
    let mut unread = 0u64;
    let released = loop {
        let sockets = procfs::tcp_sockets()?;
        let server = sockets
            .iter()
            .find(|s| s.local_port == port && s.remote_port == client_port);
        if let Some(client) = sockets
            .iter()
            .find(|s| s.local_port == client_port && s.remote_port == port)
        {
            unread = unread.max(client.rx_queue);
        }
        match server {
            Some(server) if server.held() => queued = queued.max(server.tx_queue),
            // Closed by the server (orphaned with unsent data, or gone).
            _ => break Some(sent.elapsed()),
        }
        if sent.elapsed() >= bound {
            break None;
        }
        tokio::time::sleep(NON_READER_POLL).await;
    };
    figures.extend([
        Figure::text(
            "how it ended",
            match released {
                Some(_) => "the server closed the connection".into(),
                None => "bound reached: the client gave up".into(),
            },
        ),
        Figure::number(
            "server held the connection (after the request was sent)",
            released.unwrap_or_else(|| sent.elapsed()).as_secs_f64(),
            "s",
        )
        .noted(released.is_none().then_some("bound reached")),
        Figure::number("server send queue, largest seen", queued as f64 / 1e3, "kB"),
        Figure::number(
            "client receive queue, largest seen",
            unread as f64 / 1e3,
            "kB",
        ),
        Figure::number(
            "server VmRSS peak while held (sampled)",
            attack.sampler.take_peak(),
            "MiB",
        ),
    ]);
    drop(tls);
    Ok(figures)
}
