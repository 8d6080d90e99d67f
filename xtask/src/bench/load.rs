//! The load generator: HTTP/1.1 keep-alive connections over rustls to a loopback webhook, each
//! sending the validating AdmissionReview of [`super::review`] and checking every answer.
//!
//! - Closed loop: every connection sends its next request as soon as the previous answer is in;
//!   this finds the peak throughput.
//! - Open loop: request `j` is due at `start + j / rate`. Each generator thread runs its own
//!   single-threaded runtime with its share of the connections and of the schedule, wakes on a
//!   `timerfd` (nanosecond resolution, not tokio's 1 ms timer wheel) and sends every due request on
//!   an idle connection of its own; requests that find none wait in order. Latency is measured
//!   from the *scheduled* time, so a stalled server is charged for the requests it delayed (no
//!   coordinated omission); how late each request actually left (the generator's own error plus
//!   any wait for a connection) is reported separately.
//!
//! Both run a warm-up, then a measured window, and stop by themselves. The report is JSON.
//!
//! Run in-process (`bench attack` sends small reviews alongside an attack this way), an open loop
//! can be bracketed by another thread through a [`RunControl`]: it learns when the measured window
//! starts and can end the window early.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use super::review;

/// How long queued open-loop requests may still be sent after the measured window.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How long to wait before trying again after a failed reconnect.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);
/// Error messages kept for the report.
const MAX_ERROR_SAMPLES: usize = 5;
/// The highest latency the histograms hold, in microseconds.
const MAX_LATENCY_US: u64 = 60_000_000;
/// The path of the validating endpoint on both servers.
const PATH: &str = "/validate";

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each connection sends again as soon as it has its answer (peak throughput).
    Closed,
    /// Requests are scheduled at `--rate` per second across the connections.
    Open,
}

/// Arguments of the hidden `bench load` command.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// The server (loopback), e.g. 127.0.0.1:8443.
    #[arg(long)]
    pub addr: SocketAddr,
    /// The CA certificate (PEM) the server's certificate chains to.
    #[arg(long)]
    pub ca: PathBuf,
    /// Closed or open loop.
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// Keep-alive connections (each carries one request at a time).
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds of load before the measured window.
    #[arg(long, default_value_t = 2.0)]
    pub warmup_secs: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Requests per second (open loop only).
    #[arg(long, required_if_eq("mode", "open"))]
    pub rate: Option<f64>,
    /// Threads of the load generator (1: a single-threaded runtime). In the open loop each thread
    /// runs its own single-threaded runtime with a share of the connections and of the schedule.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Write the JSON report to this file instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Seconds one request, or one connection set-up, may take before it counts as an error.
    #[arg(long, default_value_t = 5.0)]
    pub request_timeout_secs: f64,
    /// In-process only: lets another thread learn when the measured window starts and end it
    /// early (open loop).
    #[arg(skip)]
    pub control: Option<Arc<RunControl>>,
}

/// Brackets an in-process open-loop run from another thread: the run publishes the start of its
/// measured window, and [`RunControl::stop`] ends the window early (nothing is scheduled after
/// that; requests in flight still finish).
#[derive(Debug, Default)]
pub struct RunControl {
    measuring_from: OnceLock<Instant>,
    stop_at: OnceLock<Instant>,
}

impl RunControl {
    /// Waits up to `timeout` until the run has opened its connections and fixed its measured
    /// window; returns the window's start (possibly still in the future: the warm-up), or `None`
    /// when the run did not get that far in time.
    pub fn wait_for_window(&self, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(&at) = self.measuring_from.get() {
                return Some(at);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Ends the measured window now (if it has not ended already).
    pub fn stop(&self) {
        let _ = self.stop_at.set(Instant::now());
    }

    fn stopped_at(&self) -> Option<Instant> {
        self.stop_at.get().copied()
    }

    /// `window` with its end moved to the stop, if that came first.
    fn cut(&self, window: Window) -> Window {
        match self.stopped_at() {
            Some(at) if at < window.end => Window {
                end: at.max(window.measure_from),
                ..window
            },
            _ => window,
        }
    }
}

/// What one load run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    /// How requests were paced.
    pub mode: Mode,
    /// Keep-alive connections used.
    pub connections: usize,
    /// The scheduled rate (open loop).
    pub rate: Option<f64>,
    /// The negotiated TLS version and cipher suite.
    pub tls: String,
    /// Length of the measured window in seconds.
    pub seconds: f64,
    /// Successful answers in the measured window.
    pub requests: u64,
    /// Successful answers over the whole run, warm-up included.
    pub answered: u64,
    /// `requests / seconds`.
    pub requests_per_sec: f64,
    /// Failed requests and connections during the whole run, warm-up included.
    pub errors: u64,
    /// The first few error messages.
    pub error_samples: Vec<String>,
    /// Open-loop requests still queued when the drain grace ran out, never sent.
    pub unsent: u64,
    /// Latency of the successful answers in the measured window.
    pub latency: Latency,
    /// Open loop: how late the requests of the measured window were sent after their scheduled
    /// time (timer and generator error, plus any wait for an idle connection).
    #[serde(default)]
    pub lateness: Option<Latency>,
    /// CPU seconds (user + system) the load generator used over its whole life.
    pub cpu_secs: f64,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

/// Runs the load described by `args` and writes its report.
pub fn run(args: LoadArgs) -> Result<ExitCode> {
    let mut report = measure(&args)?;
    report.cpu_secs = super::cpu::own_cpu_secs();
    let json = serde_json::to_string_pretty(&report).context("serialising the report")?;
    match &args.output {
        Some(path) => std::fs::write(path, json + "\n")
            .with_context(|| format!("writing {}", path.display()))?,
        None => println!("{json}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks `args`, runs the load and returns its report (without the generator's CPU time, which
/// only the caller can attribute).
pub fn measure(args: &LoadArgs) -> Result<LoadReport> {
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(
        args.duration_secs > 0.0 && args.warmup_secs >= 0.0 && args.request_timeout_secs > 0.0,
        "--duration-secs and --request-timeout-secs must be positive and --warmup-secs not negative"
    );
    if let Some(rate) = args.rate {
        anyhow::ensure!(rate > 0.0, "--rate must be positive");
    }
    anyhow::ensure!(
        args.control.is_none() || args.mode == Mode::Open,
        "a run control works with the open loop only"
    );
    let body = serde_json::to_vec(&review::validating_request())
        .context("serialising the AdmissionReview")?;
    let target = Arc::new(Target::new(
        args.addr,
        &args.ca,
        Bytes::from(body),
        Duration::from_secs_f64(args.request_timeout_secs),
    )?);
    drive(&target, args)
}

/// A tokio runtime with `threads` workers; one means a current-thread runtime (no cross-thread
/// wake-ups, the cheapest on a small machine).
fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder
        .enable_all()
        .build()
        .context("building a tokio runtime")
}

/// The sending half of one HTTP/1.1 client connection.
pub type Sender = SendRequest<Full<Bytes>>;

/// Where and what to send.
pub struct Target {
    addr: SocketAddr,
    connector: TlsConnector,
    server_name: ServerName<'static>,
    host: HeaderValue,
    body: Bytes,
    timeout: Duration,
}

impl Target {
    /// The webhook at `addr` (its certificate chains to the PEM CA in `ca`), sent `body` by
    /// [`Target::exchange`]; `timeout` bounds every connection set-up and every exchange.
    pub fn new(
        addr: SocketAddr,
        ca: &std::path::Path,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Self> {
        Ok(Self {
            addr,
            connector: TlsConnector::from(super::tls::client_config(ca)?),
            server_name: ServerName::from(addr.ip()),
            host: HeaderValue::from_str(&addr.to_string()).context("building Host")?,
            body,
            timeout,
        })
    }

    /// A TLS session over `tcp`, a fresh connection to the server.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
        self.connector
            .connect(self.server_name.clone(), tcp)
            .await
            .context("TLS handshake")
    }

    /// Opens a keep-alive connection; returns it with a description of the TLS session.
    pub async fn connect(&self) -> Result<(Sender, String)> {
        let setup = async {
            let tcp = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connecting to {}", self.addr))?;
            tcp.set_nodelay(true).context("setting TCP_NODELAY")?;
            let tls = self.handshake(tcp).await?;
            let (_, session) = tls.get_ref();
            let description = format!(
                "{:?} {:?}",
                session.protocol_version().context("no TLS version")?,
                session
                    .negotiated_cipher_suite()
                    .context("no cipher suite")?
                    .suite()
            );
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .context("HTTP/1.1 handshake")?;
            tokio::spawn(connection);
            Ok((sender, description))
        };
        tokio::time::timeout(self.timeout, setup)
            .await
            .context("connection set-up timed out")?
    }

    /// POSTs `body` as JSON to `path` and returns the status and the whole answer body, within
    /// the timeout.
    pub async fn post(
        &self,
        sender: &mut Sender,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes)> {
        let request = Request::post(path)
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(body))
            .context("building the request")?;
        let answer = async {
            sender.ready().await.context("connection closed")?;
            let response = sender
                .send_request(request)
                .await
                .context("sending the request")?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .context("reading the answer")?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, answer)
            .await
            .context("no answer within the request timeout")?
    }

    /// Sends one AdmissionReview and returns the answer body; anything but an HTTP 200 that allows
    /// the object is an error.
    async fn exchange(&self, sender: &mut Sender) -> Result<Bytes> {
        let (status, body) = self.post(sender, PATH, self.body.clone()).await?;
        if status != StatusCode::OK {
            let shown = &body[..body.len().min(200)];
            bail!("HTTP {status}: {}", String::from_utf8_lossy(shown));
        }
        if !allows(&body) {
            bail!(
                "the answer does not allow: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(body)
    }
}

/// Whether a compact JSON answer contains `"allowed":true` (full parsing is left to the preflight).
pub fn allows(body: &[u8]) -> bool {
    const NEEDLE: &[u8] = br#""allowed":true"#;
    body.windows(NEEDLE.len()).any(|w| w == NEEDLE)
}

/// The warm-up start, the start of the measured window and its end.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

impl Window {
    fn after_now(args: &LoadArgs) -> Self {
        let start = Instant::now();
        let measure_from = start + Duration::from_secs_f64(args.warmup_secs);
        Self {
            start,
            measure_from,
            end: measure_from + Duration::from_secs_f64(args.duration_secs),
        }
    }

    fn contains(&self, at: Instant) -> bool {
        at >= self.measure_from && at <= self.end
    }
}

/// What one connection counted.
struct Tally {
    latency_us: Histogram<u64>,
    lateness_us: Histogram<u64>,
    requests: u64,
    answered: u64,
    errors: u64,
    error_samples: Vec<String>,
    unsent: u64,
}

impl Tally {
    fn new() -> Result<Self> {
        Ok(Self {
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .context("creating a latency histogram")?,
            lateness_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .context("creating a lateness histogram")?,
            requests: 0,
            answered: 0,
            errors: 0,
            error_samples: Vec::new(),
            unsent: 0,
        })
    }

    fn success(&mut self, latency: Duration) {
        self.latency_us.saturating_record(micros(latency).max(1));
        self.requests += 1;
    }

    /// Records how late a request was sent after its scheduled time.
    fn late(&mut self, lateness: Duration) {
        self.lateness_us.saturating_record(micros(lateness));
    }

    fn error(&mut self, error: &anyhow::Error) {
        self.errors += 1;
        if self.error_samples.len() < MAX_ERROR_SAMPLES {
            self.error_samples.push(format!("{error:#}"));
        }
    }

    fn merge(&mut self, other: Tally) -> Result<()> {
        self.latency_us
            .add(&other.latency_us)
            .context("merging latency histograms")?;
        self.lateness_us
            .add(&other.lateness_us)
            .context("merging lateness histograms")?;
        self.requests += other.requests;
        self.answered += other.answered;
        self.errors += other.errors;
        self.unsent += other.unsent;
        let room = MAX_ERROR_SAMPLES.saturating_sub(self.error_samples.len());
        self.error_samples
            .extend(other.error_samples.into_iter().take(room));
        Ok(())
    }

    fn latency(&self) -> Latency {
        percentiles(&self.latency_us)
    }

    fn lateness(&self) -> Latency {
        percentiles(&self.lateness_us)
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// The percentiles of a histogram of microseconds, in milliseconds.
fn percentiles(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
        mean_ms: h.mean() / 1000.0,
    }
}

/// Checks one answer in full, runs the load, and reports.
fn drive(target: &Arc<Target>, args: &LoadArgs) -> Result<LoadReport> {
    let tls = runtime(1)?.block_on(preflight(target))?;
    let (tally, window) = match (args.mode, args.rate) {
        (Mode::Closed, _) => runtime(args.threads)?.block_on(closed_loop(target, args))?,
        (Mode::Open, Some(rate)) => open_loop(target, args, rate)?,
        (Mode::Open, None) => bail!("the open loop needs --rate"),
    };
    let seconds = window.end.duration_since(window.measure_from).as_secs_f64();
    Ok(LoadReport {
        mode: args.mode,
        connections: args.connections,
        rate: args.rate,
        tls,
        seconds,
        requests: tally.requests,
        answered: tally.answered,
        requests_per_sec: tally.requests as f64 / seconds,
        errors: tally.errors,
        error_samples: tally.error_samples.clone(),
        unsent: tally.unsent,
        latency: tally.latency(),
        lateness: (args.mode == Mode::Open).then(|| tally.lateness()),
        cpu_secs: 0.0,
    })
}

/// Sends one request and checks the answer as kube-apiserver would; returns the TLS session
/// description.
async fn preflight(target: &Target) -> Result<String> {
    let (mut sender, tls) = target.connect().await?;
    let body = target
        .exchange(&mut sender)
        .await
        .context("the first request failed")?;
    review::check_answer(&body).map_err(|problem| anyhow::anyhow!("preflight: {problem}"))?;
    Ok(tls)
}

/// Opens `count` keep-alive connections on the current runtime.
async fn connect_all(target: &Target, count: usize) -> Result<Vec<Sender>> {
    let mut senders = Vec::with_capacity(count);
    for _ in 0..count {
        senders.push(target.connect().await?.0);
    }
    Ok(senders)
}

/// Opens the connections, then lets every one of them send again as soon as it has its answer.
async fn closed_loop(target: &Arc<Target>, args: &LoadArgs) -> Result<(Tally, Window)> {
    let senders = connect_all(target, args.connections).await?;
    let window = Window::after_now(args);
    let mut workers = JoinSet::new();
    for sender in senders {
        workers.spawn(closed_worker(target.clone(), sender, window));
    }
    let mut total = Tally::new()?;
    while let Some(joined) = workers.join_next().await {
        total.merge(joined.context("a load worker panicked")??)?;
    }
    Ok((total, window))
}

/// Reconnects after an error; returns `None` (after a short pause) when that fails too.
async fn reconnect(target: &Target, tally: &mut Tally) -> Option<Sender> {
    match target.connect().await {
        Ok((sender, _)) => Some(sender),
        Err(error) => {
            tally.error(&error);
            tokio::time::sleep(RECONNECT_PAUSE).await;
            None
        }
    }
}

async fn closed_worker(target: Arc<Target>, sender: Sender, window: Window) -> Result<Tally> {
    let mut tally = Tally::new()?;
    let mut sender = Some(sender);
    while Instant::now() < window.end {
        if sender.is_none() {
            sender = reconnect(&target, &mut tally).await;
        }
        let Some(connection) = sender.as_mut() else {
            continue;
        };
        let sent = Instant::now();
        match target.exchange(connection).await {
            Ok(_) => {
                tally.answered += 1;
                let done = Instant::now();
                if window.contains(done) {
                    tally.success(done - sent);
                }
            }
            Err(error) => {
                tally.error(&error);
                sender = None;
            }
        }
    }
    Ok(tally)
}

/// The open loop: `threads` generator threads, each with a single-threaded runtime that owns its
/// share of the connections and of the schedule (request `j` is due at `start + j / rate`; thread
/// `i` sends those with `j % threads == i`). Nothing crosses threads per request.
fn open_loop(target: &Arc<Target>, args: &LoadArgs, rate: f64) -> Result<(Tally, Window)> {
    let threads = args.threads.max(1);
    anyhow::ensure!(
        threads <= args.connections,
        "--threads ({threads}) must not exceed --connections ({})",
        args.connections
    );
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut starts = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    for offset in 0..threads {
        let (start_tx, start_rx) = std::sync::mpsc::channel();
        let shared = Shared {
            target: target.clone(),
            connections: share(args.connections, threads, offset),
            stride: threads as u64,
            offset: offset as u64,
            rate,
            control: args.control.clone(),
        };
        let ready = ready_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("load-{offset}"))
            .spawn(move || generator_thread(&shared, &ready, &start_rx))
            .context("starting a load generator thread")?;
        starts.push(start_tx);
        handles.push(handle);
    }
    drop(ready_tx);
    // Every thread has opened its connections (or failed) before the clock starts.
    let mut failure = None;
    for _ in 0..threads {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                failure.get_or_insert(error);
            }
            Err(_) => {
                failure.get_or_insert_with(|| anyhow::anyhow!("a load thread ended early"));
            }
        }
    }
    let window = Window::after_now(args);
    if failure.is_none() {
        if let Some(control) = &args.control {
            let _ = control.measuring_from.set(window.measure_from);
        }
        for start in &starts {
            // A thread that is gone has already reported why.
            let _ = start.send(window);
        }
    }
    drop(starts);
    let mut total = Tally::new()?;
    for handle in handles {
        let tally = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a load generator thread panicked"))?;
        if failure.is_none() {
            total.merge(tally?)?;
        }
    }
    let window = match &args.control {
        Some(control) => control.cut(window),
        None => window,
    };
    match failure {
        Some(error) => Err(error),
        None => Ok((total, window)),
    }
}

/// What one open-loop generator thread gets.
struct Shared {
    target: Arc<Target>,
    connections: usize,
    stride: u64,
    offset: u64,
    rate: f64,
    control: Option<Arc<RunControl>>,
}

/// The connections of thread `index` when `total` are shared by `threads`.
fn share(total: usize, threads: usize, index: usize) -> usize {
    total / threads + usize::from(index < total % threads)
}

/// One open-loop generator thread: opens its connections, says so on `ready`, waits for the
/// window on `start` (none: another thread failed), then runs its schedule.
fn generator_thread(
    shared: &Shared,
    ready: &std::sync::mpsc::Sender<Result<()>>,
    start: &std::sync::mpsc::Receiver<Window>,
) -> Result<Tally> {
    precise_sleeps();
    let prepared = runtime(1).and_then(|runtime| {
        let senders = runtime.block_on(connect_all(&shared.target, shared.connections))?;
        Ok((runtime, senders))
    });
    let (runtime, senders) = match prepared {
        Ok(prepared) => {
            let _ = ready.send(Ok(()));
            prepared
        }
        Err(error) => {
            let _ = ready.send(Err(error));
            bail!("connection set-up failed");
        }
    };
    let Ok(window) = start.recv() else {
        return Tally::new();
    };
    let schedule = Schedule {
        start: window.start,
        end: window.end,
        rate: shared.rate,
        stride: shared.stride,
        offset: shared.offset,
    };
    runtime.block_on(run_schedule(
        &shared.target,
        senders,
        schedule,
        window,
        shared.control.as_deref(),
    ))
}

/// The requests of one generator thread: of the requests due at `start + j / rate` before `end`,
/// those with `j % stride == offset`, numbered `k = 0, 1, …` in this thread.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    start: Instant,
    end: Instant,
    rate: f64,
    stride: u64,
    offset: u64,
}

/// What to do about the next request of a [`Schedule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// It is due (since the given time): send it.
    Send(Instant),
    /// It is due later: wait until then.
    WaitUntil(Instant),
    /// The schedule is over.
    Done,
}

impl Schedule {
    /// When this thread's request `k` is due, or `None` when that is past the end.
    fn due(&self, k: u64) -> Option<Instant> {
        let j = k * self.stride + self.offset;
        // Whole nanoseconds, rounded: exact for rates that divide a second evenly.
        let due = self.start + Duration::from_nanos((j as f64 * 1e9 / self.rate).round() as u64);
        (due < self.end).then_some(due)
    }

    /// What to do at `now` about request `k`.
    fn step(&self, k: u64, now: Instant) -> Step {
        match self.due(k) {
            None => Step::Done,
            Some(due) if due <= now => Step::Send(due),
            Some(due) => Step::WaitUntil(due),
        }
    }

    /// How many requests from `k` on are still to be sent.
    fn remaining(&self, k: u64) -> u64 {
        let elapsed = self.end.duration_since(self.start).as_secs_f64();
        // Global requests before the end, then this thread's share of them, from k on.
        let global = (elapsed * self.rate).ceil() as u64;
        let mut own = global.saturating_sub(self.offset).div_ceil(self.stride);
        // Correct the rounding of the float estimate against `due` itself.
        while own > 0 && self.due(own - 1).is_none() {
            own -= 1;
        }
        while self.due(own).is_some() {
            own += 1;
        }
        own.saturating_sub(k)
    }
}

/// What an open-loop task hands back to its thread's driver.
enum Done {
    /// An answer came back at `finished` for the request due at `due`.
    Answered {
        sender: Sender,
        due: Instant,
        finished: Instant,
    },
    /// The exchange failed; the connection is gone.
    Failed(anyhow::Error),
    /// A replacement connection.
    Reconnected(Sender),
    /// Reconnecting failed (after a short pause).
    ReconnectFailed(anyhow::Error),
}

async fn send_one(target: Arc<Target>, mut sender: Sender, due: Instant) -> Done {
    match target.exchange(&mut sender).await {
        Ok(_) => Done::Answered {
            sender,
            due,
            finished: Instant::now(),
        },
        Err(error) => Done::Failed(error),
    }
}

async fn connect_again(target: Arc<Target>) -> Done {
    match target.connect().await {
        Ok((sender, _)) => Done::Reconnected(sender),
        Err(error) => {
            tokio::time::sleep(RECONNECT_PAUSE).await;
            Done::ReconnectFailed(error)
        }
    }
}

/// Runs one thread's schedule on its connections. Whenever it wakes (timer or answer) it sends
/// every due request it has an idle connection for; requests without one wait, in order, and are
/// charged from their scheduled time. The backlog is implicit: it is the requests from `next` up
/// to the current time. A `control` that is stopped ends the schedule (and the window) early.
async fn run_schedule(
    target: &Arc<Target>,
    senders: Vec<Sender>,
    mut schedule: Schedule,
    mut window: Window,
    control: Option<&RunControl>,
) -> Result<Tally> {
    let mut timer = PreciseTimer::new()?;
    let mut tally = Tally::new()?;
    let mut idle = senders;
    let mut tasks = JoinSet::new();
    let mut give_up = window.end + DRAIN_GRACE;
    let mut next = 0;
    let mut stopped = false;
    loop {
        if let Some(control) = control {
            let cut = control.cut(window);
            if cut.end < window.end {
                window = cut;
                schedule.end = schedule.end.min(cut.end);
                give_up = window.end + DRAIN_GRACE;
            }
        }
        let now = Instant::now();
        if !stopped && now >= give_up {
            // The drain grace is over: what is left is never sent.
            let unsent = schedule.remaining(next);
            tally.unsent += unsent;
            next += unsent;
            stopped = true;
        }
        let mut wake_at = None;
        // Send what is due while there are idle connections.
        loop {
            match schedule.step(next, now) {
                Step::Done => break,
                Step::WaitUntil(due) => {
                    wake_at = (!idle.is_empty()).then_some(due);
                    break;
                }
                Step::Send(due) => {
                    let Some(sender) = idle.pop() else { break };
                    if due >= window.measure_from {
                        tally.late(Instant::now().saturating_duration_since(due));
                    }
                    next += 1;
                    tasks.spawn(send_one(target.clone(), sender, due));
                }
            }
        }
        if tasks.is_empty() && wake_at.is_none() {
            // Everything was sent, or no connection is left.
            tally.unsent += schedule.remaining(next);
            return Ok(tally);
        }
        if let Some(at) = wake_at {
            timer.arm(at)?;
        }
        tokio::select! {
            biased;
            joined = tasks.join_next(), if !tasks.is_empty() => {
                let done = joined
                    .context("the task set is empty")?
                    .context("an open-loop task panicked")?;
                match done {
                    Done::Answered { sender, due, finished } => {
                        tally.answered += 1;
                        if due >= window.measure_from {
                            tally.success(finished.saturating_duration_since(due));
                        }
                        idle.push(sender);
                    }
                    Done::Reconnected(sender) => idle.push(sender),
                    Done::Failed(error) | Done::ReconnectFailed(error) => {
                        tally.error(&error);
                        if !stopped {
                            tasks.spawn(connect_again(target.clone()));
                        }
                    }
                }
            }
            fired = timer.wait(), if wake_at.is_some() => fired?,
        }
    }
}

/// A one-shot timer on `CLOCK_MONOTONIC` (the clock of [`Instant`] on Linux) with nanosecond
/// resolution: a `timerfd` armed at an absolute time and awaited through tokio's reactor, instead
/// of tokio's timer wheel and its 1 ms granularity.
struct PreciseTimer {
    fd: AsyncFd<OwnedFd>,
    /// The same moment as an [`Instant`] and as a `CLOCK_MONOTONIC` reading.
    base: (Instant, Duration),
    /// Where the timer is armed, if it has not fired yet.
    armed: Option<Instant>,
}

impl PreciseTimer {
    fn new() -> Result<Self> {
        // SAFETY: timerfd_create takes no pointers; a non-negative result is a new descriptor.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("timerfd_create");
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let base_instant = Instant::now();
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own.
        if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
            return Err(std::io::Error::last_os_error()).context("clock_gettime");
        }
        let base_clock = Duration::new(
            u64::try_from(now.tv_sec).context("negative monotonic clock")?,
            u32::try_from(now.tv_nsec).context("bad nanoseconds")?,
        );
        // SAFETY: the OwnedFd keeps the descriptor open, and the same, for the AsyncFd's life.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|error| error.into_parts().1)
            .context("registering the timerfd")?;
        Ok(Self {
            fd,
            base: (base_instant, base_clock),
            armed: None,
        })
    }

    /// Arms the timer to fire at `at` (at once if that has passed); replaces any earlier setting.
    fn arm(&mut self, at: Instant) -> Result<()> {
        if self.armed == Some(at) {
            return Ok(());
        }
        let (base_instant, base_clock) = self.base;
        // One nanosecond at least: an all-zero it_value would disarm the timer.
        let clock =
            (base_clock + at.saturating_duration_since(base_instant)).max(Duration::from_nanos(1));
        let setting = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(clock.as_secs()).context("time out of range")?,
                tv_nsec: clock.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: the descriptor is ours and `setting` is a valid itimerspec; no old value wanted.
        let result = unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &setting,
                std::ptr::null_mut(),
            )
        };
        if result != 0 {
            return Err(std::io::Error::last_os_error()).context("timerfd_settime");
        }
        self.armed = Some(at);
        Ok(())
    }

    /// Waits until the armed time has come.
    async fn wait(&mut self) -> Result<()> {
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .context("waiting for the timerfd")?;
            let read = guard.try_io(|fd| {
                let mut expirations = 0u64;
                // SAFETY: reads 8 bytes into the u64 we own.
                let n = unsafe {
                    libc::read(
                        fd.as_raw_fd(),
                        (&raw mut expirations).cast(),
                        std::mem::size_of::<u64>(),
                    )
                };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            match read {
                Ok(result) => {
                    result.context("reading the timerfd")?;
                    self.armed = None;
                    return Ok(());
                }
                // Readiness was stale (the timer was re-armed since): wait again.
                Err(_would_block) => {}
            }
        }
    }
}

/// Lowers this thread's timer slack from the default 50 µs so that its waits in the kernel end
/// close to the requested time.
fn precise_sleeps() {
    // SAFETY: PR_SET_TIMERSLACK only changes the calling thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_finds_the_compact_decision() {
        assert!(allows(review::FLOOR_RESPONSE.as_bytes()));
        assert!(!allows(br#"{"response":{"allowed":false}}"#));
    }

    fn schedule(stride: u64, offset: u64) -> (Schedule, Instant) {
        let start = Instant::now();
        let schedule = Schedule {
            start,
            end: start + Duration::from_millis(50),
            rate: 1000.0,
            stride,
            offset,
        };
        (schedule, start)
    }

    #[test]
    fn the_schedule_is_due_at_the_rate_until_the_end() {
        let (schedule, start) = schedule(1, 0);
        let ms = Duration::from_millis;
        assert_eq!(schedule.due(0), Some(start));
        assert_eq!(schedule.due(1), Some(start + ms(1)));
        assert_eq!(schedule.due(49), Some(start + ms(49)));
        assert_eq!(schedule.due(50), None, "due at the end: not in the window");
        assert_eq!(schedule.remaining(0), 50);
        assert_eq!(schedule.remaining(48), 2);
        assert_eq!(schedule.remaining(50), 0);
    }

    #[test]
    fn a_step_sends_what_is_due_and_waits_for_the_rest() {
        let (schedule, start) = schedule(1, 0);
        let now = start + Duration::from_micros(2500);
        // Requests 0, 1 and 2 are due at 2.5 ms: sent in order, each charged from its own time.
        let due: Vec<Step> = (0..4).map(|k| schedule.step(k, now)).collect();
        assert_eq!(
            due,
            vec![
                Step::Send(start),
                Step::Send(start + Duration::from_millis(1)),
                Step::Send(start + Duration::from_millis(2)),
                Step::WaitUntil(start + Duration::from_millis(3)),
            ]
        );
        assert_eq!(schedule.step(50, now), Step::Done);
        // Late requests stay due until they are sent.
        assert_eq!(
            schedule.step(1, start + Duration::from_secs(1)),
            Step::Send(start + Duration::from_millis(1))
        );
    }

    #[test]
    fn threads_split_the_schedule_without_gaps_or_overlaps() {
        let mut all = Vec::new();
        let mut start = None;
        for offset in 0..3 {
            let (mut schedule, own_start) = schedule(3, offset);
            let start = *start.get_or_insert(own_start);
            schedule.start = start;
            schedule.end = start + Duration::from_millis(50);
            let count = schedule.remaining(0);
            all.extend((0..count).map(|k| schedule.due(k).expect("due in the window")));
            assert_eq!(schedule.due(count), None);
        }
        all.sort();
        let expected: Vec<Instant> = (0..50)
            .map(|j| start.expect("start") + Duration::from_millis(j))
            .collect();
        assert_eq!(all, expected);
    }

    #[test]
    fn connections_are_shared_between_threads() {
        assert_eq!(
            (0..3).map(|i| share(32, 3, i)).collect::<Vec<_>>(),
            [11, 11, 10]
        );
        assert_eq!(share(32, 1, 0), 32);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_precise_timer_fires_at_the_armed_time() -> Result<()> {
        precise_sleeps();
        let mut timer = PreciseTimer::new()?;
        let mut lateness = Vec::new();
        for _ in 0..20 {
            let at = Instant::now() + Duration::from_micros(300);
            timer.arm(at)?;
            timer.wait().await?;
            let now = Instant::now();
            assert!(now >= at, "fired early");
            lateness.push(now - at);
        }
        // Re-arming replaces a pending setting; a time in the past fires at once.
        timer.arm(Instant::now() + Duration::from_secs(3600))?;
        timer.arm(Instant::now() - Duration::from_millis(1))?;
        timer.wait().await?;
        lateness.sort();
        println!(
            "timerfd lateness: median {:?}, max {:?}",
            lateness[10], lateness[19]
        );
        Ok(())
    }

    #[test]
    fn tallies_merge_and_report_percentiles() {
        let mut a = Tally::new().expect("tally");
        let mut b = Tally::new().expect("tally");
        for ms in 1..=100 {
            a.success(Duration::from_millis(ms));
        }
        b.error(&anyhow::anyhow!("boom"));
        b.late(Duration::ZERO);
        b.late(Duration::from_micros(250));
        a.merge(b).expect("merge");
        assert_eq!(a.requests, 100);
        assert_eq!(a.errors, 1);
        assert_eq!(a.error_samples, vec!["boom".to_owned()]);
        let latency = a.latency();
        assert!((latency.p50_ms - 50.0).abs() < 0.1, "{latency:?}");
        assert!((latency.max_ms - 100.0).abs() < 0.1, "{latency:?}");
        let lateness = a.lateness();
        assert_eq!(lateness.p50_ms, 0.0, "{lateness:?}");
        assert!((lateness.max_ms - 0.25).abs() < 0.001, "{lateness:?}");
    }
}
