//! The load generator: HTTP/1.1 keep-alive connections over rustls to a loopback webhook, each
//! sending the validating AdmissionReview of [`super::review`] and checking every answer.
//!
//! - Closed loop: every connection sends its next request as soon as the previous answer is in;
//!   this finds the peak throughput.
//! - Open loop: a timer thread schedules requests at a fixed rate and idle connections take them in
//!   order; latency is measured from the *scheduled* time, so a stalled server is charged for the
//!   requests it delayed (no coordinated omission).
//!
//! Both run a warm-up, then a measured window, and stop by themselves. The report is JSON.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
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
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use super::review;

/// How long one request, or one connection set-up, may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long queued open-loop requests may still be sent after the measured window.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
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
    /// Runtime threads of the load generator (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Write the JSON report to this file instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
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
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(
        args.duration_secs > 0.0 && args.warmup_secs >= 0.0,
        "--duration-secs must be positive and --warmup-secs not negative"
    );
    if let Some(rate) = args.rate {
        anyhow::ensure!(rate > 0.0, "--rate must be positive");
    }
    let target = Arc::new(Target::new(&args)?);
    let mut report = runtime(args.threads)?.block_on(drive(target, &args))?;
    report.cpu_secs = super::cpu::own_cpu_secs();
    let json = serde_json::to_string_pretty(&report).context("serialising the report")?;
    match &args.output {
        Some(path) => std::fs::write(path, json + "\n")
            .with_context(|| format!("writing {}", path.display()))?,
        None => println!("{json}"),
    }
    Ok(ExitCode::SUCCESS)
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

type Sender = SendRequest<Full<Bytes>>;

/// Where and what to send.
struct Target {
    addr: SocketAddr,
    connector: TlsConnector,
    server_name: ServerName<'static>,
    host: HeaderValue,
    body: Bytes,
}

impl Target {
    fn new(args: &LoadArgs) -> Result<Self> {
        let body = serde_json::to_vec(&review::validating_request())
            .context("serialising the AdmissionReview")?;
        Ok(Self {
            addr: args.addr,
            connector: TlsConnector::from(super::tls::client_config(&args.ca)?),
            server_name: ServerName::from(args.addr.ip()),
            host: HeaderValue::from_str(&args.addr.to_string()).context("building Host")?,
            body: Bytes::from(body),
        })
    }

    /// Opens a keep-alive connection; returns it with a description of the TLS session.
    async fn connect(&self) -> Result<(Sender, String)> {
        let setup = async {
            let tcp = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connecting to {}", self.addr))?;
            tcp.set_nodelay(true).context("setting TCP_NODELAY")?;
            let tls = self
                .connector
                .connect(self.server_name.clone(), tcp)
                .await
                .context("TLS handshake")?;
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
        tokio::time::timeout(REQUEST_TIMEOUT, setup)
            .await
            .context("connection set-up timed out")?
    }

    /// Sends one AdmissionReview and returns the answer body; anything but an HTTP 200 that allows
    /// the object is an error.
    async fn exchange(&self, sender: &mut Sender) -> Result<Bytes> {
        let request = Request::post(PATH)
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(self.body.clone()))
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
        };
        tokio::time::timeout(REQUEST_TIMEOUT, answer)
            .await
            .context("no answer within the request timeout")?
    }
}

/// Whether a compact JSON answer contains `"allowed":true` (full parsing is left to the preflight).
fn allows(body: &[u8]) -> bool {
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
            requests: 0,
            answered: 0,
            errors: 0,
            error_samples: Vec::new(),
            unsent: 0,
        })
    }

    fn success(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record(micros.max(1));
        self.requests += 1;
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
        let h = &self.latency_us;
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
}

/// Checks one answer in full, opens the connections, then runs the load.
async fn drive(target: Arc<Target>, args: &LoadArgs) -> Result<LoadReport> {
    let tls = preflight(&target).await?;
    let mut senders = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        senders.push(target.connect().await?.0);
    }
    let window = Window::after_now(args);
    let tally = match (args.mode, args.rate) {
        (Mode::Closed, _) => closed_loop(&target, senders, window).await?,
        (Mode::Open, Some(rate)) => open_loop(&target, senders, window, rate).await?,
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

/// Collects the tallies of all workers.
async fn collect(mut workers: JoinSet<Result<Tally>>) -> Result<Tally> {
    let mut total = Tally::new()?;
    while let Some(joined) = workers.join_next().await {
        total.merge(joined.context("a load worker panicked")??)?;
    }
    Ok(total)
}

async fn closed_loop(target: &Arc<Target>, senders: Vec<Sender>, window: Window) -> Result<Tally> {
    let mut workers = JoinSet::new();
    for sender in senders {
        workers.spawn(closed_worker(target.clone(), sender, window));
    }
    collect(workers).await
}

/// Reconnects after an error; returns `None` (after a short pause) when that fails too.
async fn reconnect(target: &Target, tally: &mut Tally) -> Option<Sender> {
    match target.connect().await {
        Ok((sender, _)) => Some(sender),
        Err(error) => {
            tally.error(&error);
            tokio::time::sleep(Duration::from_millis(10)).await;
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

async fn open_loop(
    target: &Arc<Target>,
    senders: Vec<Sender>,
    window: Window,
    rate: f64,
) -> Result<Tally> {
    let (tickets, queue) = mpsc::unbounded_channel();
    let queue = Arc::new(Mutex::new(queue));
    let dispatcher = std::thread::Builder::new()
        .name("dispatch".into())
        .spawn(move || dispatch(&tickets, window, rate))
        .context("starting the dispatch thread")?;
    let mut workers = JoinSet::new();
    for sender in senders {
        workers.spawn(open_worker(target.clone(), sender, queue.clone(), window));
    }
    let tally = collect(workers).await;
    if dispatcher.join().is_err() {
        bail!("the dispatch thread panicked");
    }
    tally
}

/// Sends the scheduled time of every request, `rate` per second from `window.start` to
/// `window.end`, on time or as soon after as possible; closes the queue at the end.
fn dispatch(tickets: &mpsc::UnboundedSender<Instant>, window: Window, rate: f64) {
    precise_sleeps();
    for i in 0u64.. {
        let due = window.start + Duration::from_secs_f64(i as f64 / rate);
        if due >= window.end {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if tickets.send(due).is_err() {
            break;
        }
    }
}

/// Lowers this thread's timer slack from the default 50 µs so sleeps end close to the schedule.
fn precise_sleeps() {
    // SAFETY: PR_SET_TIMERSLACK only changes the calling thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0);
    }
}

async fn open_worker(
    target: Arc<Target>,
    sender: Sender,
    queue: Arc<Mutex<mpsc::UnboundedReceiver<Instant>>>,
    window: Window,
) -> Result<Tally> {
    let mut tally = Tally::new()?;
    let mut sender = Some(sender);
    let give_up = window.end + DRAIN_GRACE;
    loop {
        let next = queue.lock().await.recv().await;
        let Some(due) = next else { break };
        if Instant::now() >= give_up {
            tally.unsent += 1;
            continue;
        }
        if sender.is_none() {
            sender = reconnect(&target, &mut tally).await;
        }
        let Some(connection) = sender.as_mut() else {
            continue;
        };
        match target.exchange(connection).await {
            Ok(_) => {
                tally.answered += 1;
                if due >= window.measure_from {
                    tally.success(due.elapsed());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_finds_the_compact_decision() {
        assert!(allows(review::FLOOR_RESPONSE.as_bytes()));
        assert!(!allows(br#"{"response":{"allowed":false}}"#));
    }

    #[test]
    fn the_dispatcher_schedules_at_the_rate_and_closes_the_queue() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = Instant::now();
        let window = Window {
            start,
            measure_from: start,
            end: start + Duration::from_millis(50),
        };
        dispatch(&tx, window, 1000.0);
        drop(tx);
        let mut dues = Vec::new();
        while let Ok(due) = rx.try_recv() {
            dues.push(due);
        }
        assert_eq!(dues.len(), 50);
        assert_eq!(dues[1] - dues[0], Duration::from_millis(1));
        assert!(start.elapsed() >= Duration::from_millis(49));
    }

    #[test]
    fn tallies_merge_and_report_percentiles() {
        let mut a = Tally::new().expect("tally");
        let mut b = Tally::new().expect("tally");
        for ms in 1..=100 {
            a.success(Duration::from_millis(ms));
        }
        b.error(&anyhow::anyhow!("boom"));
        a.merge(b).expect("merge");
        assert_eq!(a.requests, 100);
        assert_eq!(a.errors, 1);
        assert_eq!(a.error_samples, vec!["boom".to_owned()]);
        let latency = a.latency();
        assert!((latency.p50_ms - 50.0).abs() < 0.1, "{latency:?}");
        assert!((latency.max_ms - 100.0).abs() < 0.1, "{latency:?}");
    }
}
