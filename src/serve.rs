//! `rndc-warden serve`: the admission server, the probe port and (with cluster credentials) the
//! watch caches and the rotator, in one process with one shutdown.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admission::server::{ConnectionLimits, serve_tls};
use crate::admission::serving_cert::{SelfManagedCertArgs, SelfManagedCerts};
use crate::admission::tls::{self, ReloadOutcome, ReloadingTls, TlsFiles};
use crate::admission::{self, AdmissionPolicy, AdmissionState, RequestLimits};
use crate::cache::ClusterCache;
use crate::config::{PolicyArgs, parse_duration};
use crate::metrics::{Metrics, ResultLabels};
use crate::probe::{self, Readiness};
use crate::rotation::RotationArgs;

/// Flags of `serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the HTTPS admission listener.
    #[arg(long, env = "RNDC_WARDEN_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Address of the plain-HTTP probe listener (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, env = "RNDC_WARDEN_PROBE_LISTEN", default_value = "0.0.0.0:8080")]
    pub probe_listen: SocketAddr,
    /// PEM serving certificate chain; with `--tls-key`. Without both, a self-signed pair is generated.
    #[arg(long, env = "RNDC_WARDEN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the serving certificate.
    #[arg(long, env = "RNDC_WARDEN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle that client certificates must chain to (mTLS from the apiserver); off when unset.
    #[arg(long, env = "RNDC_WARDEN_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// How often the certificate files are checked for changes.
    #[arg(long, env = "RNDC_WARDEN_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,
    /// How long to wait at start for `--tls-cert`/`--tls-key` files that do not exist yet (a
    /// certificate cert-manager has not issued yet); 0s fails at once.
    #[arg(long, env = "RNDC_WARDEN_TLS_WAIT", default_value = "0s", value_parser = parse_duration)]
    pub tls_wait: Duration,
    /// Where a generated self-signed CA and serving certificate are written.
    #[arg(long, env = "RNDC_WARDEN_GENERATED_CERT_DIR")]
    pub generated_cert_dir: Option<PathBuf>,
    /// Extra DNS names or IPs for a generated serving certificate (localhost and 127.0.0.1 are always in).
    #[arg(
        long = "generated-cert-host",
        env = "RNDC_WARDEN_GENERATED_CERT_HOSTS",
        value_delimiter = ','
    )]
    pub generated_cert_hosts: Vec<String>,
    /// Admission requests handled at once; more wait in line.
    #[arg(long, env = "RNDC_WARDEN_MAX_CONCURRENCY", default_value_t = 256)]
    pub max_concurrency: usize,
    /// Bytes of large request bodies (over 64 KiB) held at once; more large requests wait.
    /// Peak memory is about twice this plus the base; at least one 7 MiB body.
    #[arg(long, env = "RNDC_WARDEN_MAX_BODY_MEMORY", default_value = "16MiB", value_parser = parse_bytes)]
    pub max_body_memory: usize,
    /// Time allowed to read and answer one admission request.
    #[arg(long, env = "RNDC_WARDEN_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Admission connections open at once (handshaking or established); new ones beyond it are
    /// closed at once and counted in `rndc_warden_admission_connections_refused_total`.
    #[arg(long, env = "RNDC_WARDEN_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// Time allowed for a client's TLS handshake.
    #[arg(long, env = "RNDC_WARDEN_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub handshake_timeout: Duration,
    /// Time allowed for a request's headers: from the end of the handshake for a connection's
    /// first request, from the first byte of each later one.
    #[arg(long, env = "RNDC_WARDEN_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub header_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request. Keep it above the
    /// apiserver's idle timeout (90 s), so the apiserver closes idle connections first.
    #[arg(long, env = "RNDC_WARDEN_IDLE_TIMEOUT", default_value = "120s", value_parser = parse_timeout)]
    pub idle_timeout: Duration,
    /// Longest a response may wait for the client to take it; the connection is closed beyond it.
    #[arg(long, env = "RNDC_WARDEN_WRITE_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub write_timeout: Duration,
    /// After SIGTERM: how long to keep serving while readiness is false, so endpoints update.
    #[arg(long, env = "RNDC_WARDEN_SHUTDOWN_DELAY", default_value = "2s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,
    /// After the delay: how long open connections may take to finish.
    #[arg(long, env = "RNDC_WARDEN_DRAIN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Namespaces to watch (comma-separated); all namespaces when empty.
    #[arg(
        long = "watch-namespace",
        env = "RNDC_WARDEN_WATCH_NAMESPACES",
        value_delimiter = ','
    )]
    pub watch_namespaces: Vec<String>,
    /// Serve admission only; do not connect to a cluster even when credentials are found.
    #[arg(long, env = "RNDC_WARDEN_NO_CLUSTER", default_value_t = false)]
    pub no_cluster: bool,
    /// Defaults and policy.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Self-managed serving certificates (Secret + caBundle).
    #[command(flatten)]
    pub certs: SelfManagedCertArgs,
    /// The rotator (leader-elected; runs when cluster credentials are found).
    #[command(flatten)]
    pub rotation: RotationArgs,
}

/// A byte size: a whole number with an optional `KiB`/`MiB`/`GiB` suffix.
fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        "GiB" => 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "unknown unit {other:?}; use a number of bytes or KiB, MiB, GiB, e.g. 16MiB"
            ));
        }
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{text:?} is not a size; use e.g. 16MiB"))
}

/// A connection timeout: a duration as [`parse_duration`] reads it, above zero (a zero timeout
/// would close every connection).
fn parse_timeout(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!(
            "{text:?} would close every connection; use e.g. 10s"
        )),
        timeout => Ok(timeout),
    }
}

type StopFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {},
                    _ = terminate.recv() => {},
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// Loads the serving certificate files, waiting up to `wait` while one of them does not exist yet;
/// any other problem (and a file still missing after `wait`) fails at once.
async fn load_when_present(files: TlsFiles, wait: Duration) -> Result<ReloadingTls, tls::TlsError> {
    let started = std::time::Instant::now();
    let mut logged = false;
    loop {
        match ReloadingTls::load(files.clone()) {
            Err(tls::TlsError::Read { path, source })
                if source.kind() == std::io::ErrorKind::NotFound && started.elapsed() < wait =>
            {
                if !logged {
                    tracing::info!(path = %path.display(), ?wait, "waiting for the serving certificate files");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            result => return result,
        }
    }
}

fn tls_files(args: &ServeArgs) -> anyhow::Result<TlsFiles> {
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        return Ok(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
        });
    }
    let dir = args
        .generated_cert_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("rndc-warden-certs"));
    let mut dns_names = vec!["localhost".to_owned()];
    let mut ips: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1])];
    for host in &args.generated_cert_hosts {
        match host.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns_names.push(host.clone()),
        }
    }
    if !args.listen.ip().is_unspecified() && !ips.contains(&args.listen.ip()) {
        ips.push(args.listen.ip());
    }
    let generated = tls::generate_self_signed(&dir, &dns_names, &ips, 365)
        .context("generating a self-signed serving certificate")?;
    tracing::info!(
        ca = %generated.ca_path.display(),
        "no --tls-cert/--tls-key given: generated a self-signed serving certificate; trust this CA (webhook caBundle)"
    );
    Ok(TlsFiles {
        client_ca: args.tls_client_ca.clone(),
        ..generated.files
    })
}

/// Runs `serve` until SIGTERM/SIGINT, then drains. Fails when a listener or the TLS material
/// cannot be set up, or when a component stops unexpectedly.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let readiness = Arc::new(Readiness::default());
    let policy_config = args.policy.to_config().context("invalid policy flags")?;
    // Every flag is checked before anything binds or talks to the cluster.
    if args.rotation.enabled && !args.no_cluster {
        args.rotation.validate().context("invalid rotation flags")?;
    }

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the admission listener --listen {}", args.listen))?;
    let probe_listener = TcpListener::bind(args.probe_listen)
        .await
        .with_context(|| {
            format!(
                "binding the probe listener --probe-listen {}",
                args.probe_listen
            )
        })?;
    tracing::info!(listen = %listener.local_addr()?, probe = %probe_listener.local_addr()?, "serving admission over HTTPS");

    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_signal = {
        let rx = stop_rx.clone();
        move || -> StopFuture { Box::pin(stopped(rx.clone())) }
    };

    // The environment and the clock, read once here for every component.
    let pod_namespace = std::env::var("POD_NAMESPACE").ok();
    let host = std::env::var("HOSTNAME").ok();
    let clock = crate::clock::system();

    let mut tasks = tokio::task::JoinSet::new();
    let client = if args.no_cluster {
        tracing::info!("--no-cluster: admission only, rotator off");
        None
    } else {
        match kube::Client::try_default().await {
            Ok(client) => Some(client),
            Err(error) => {
                tracing::info!(%error, "no cluster credentials found: admission only, rotator off");
                None
            }
        }
    };
    let self_managed = match &client {
        Some(client) => SelfManagedCerts::from_args(
            client,
            &args.certs,
            pod_namespace.as_deref(),
            clock.clone(),
        )
        .context("self-managed certificate settings")?,
        None if args.certs.cert_secret.is_some() => {
            anyhow::bail!("--cert-secret needs cluster credentials, and none were found")
        }
        None => None,
    };
    let tls = match &self_managed {
        Some(certs) => {
            let pair = certs
                .initial(Duration::from_secs(120))
                .await
                .context("obtaining the self-managed serving certificate")?;
            Arc::new(ReloadingTls::from_pem(&pair, args.tls_client_ca.clone())?)
        }
        None => {
            let files = tls_files(&args)?;
            Arc::new(
                load_when_present(files, args.tls_wait)
                    .await
                    .context("loading the serving certificate")?,
            )
        }
    };
    let cache = match &client {
        Some(client) => {
            tracing::info!("cluster credentials found: starting watch caches");
            let started = ClusterCache::start(
                client.clone(),
                &args.watch_namespaces,
                readiness.clone(),
                &stop_signal,
            )
            .await;
            for task in started.tasks {
                tasks.spawn(task);
            }
            started.cache
        }
        None => {
            readiness.set_caches_synced();
            ClusterCache::empty()
        }
    };

    if let (Some(client), Some(shared)) = (&client, cache.shared()) {
        if args.rotation.enabled {
            // The rotator reads admission's instance and cluster stores: one copy of each.
            let mut rotation = args.rotation.clone();
            rotation.namespaces = args.watch_namespaces.clone();
            rotation.resolve(
                pod_namespace.clone(),
                client.default_namespace(),
                host.clone(),
                rand::random(),
            );
            let parts = crate::rotation::Parts {
                clock: clock.clone(),
                ..crate::rotation::Parts::real(client)
            };
            let rotator = crate::rotation::run(
                client.clone(),
                rotation,
                policy_config.clone(),
                metrics.clone(),
                parts,
                shared,
                stop_signal(),
            );
            tasks.spawn(async move {
                match rotator.await {
                    Ok(()) => tracing::info!("rotator stopped"),
                    Err(error) => tracing::error!(%error, "the rotator failed"),
                }
            });
            tracing::info!("rotator started (leader-elected)");
        } else {
            tracing::info!("--rotation false: admission only, rotator off");
        }
    }
    let state = AdmissionState {
        policy: Arc::new(AdmissionPolicy::with_clock(
            policy_config,
            cache.clone(),
            clock.clone(),
        )),
        metrics: metrics.clone(),
    };
    let router = admission::router(
        state,
        RequestLimits {
            max_concurrency: args.max_concurrency,
            request_timeout: args.request_timeout,
            max_body_memory: args.max_body_memory,
        },
    );
    let limits = ConnectionLimits {
        handshake_timeout: args.handshake_timeout,
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
        write_timeout: args.write_timeout,
        max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
        drain_timeout: args.drain_timeout,
    };

    tasks.spawn(serve_tls(
        listener,
        tls.clone(),
        router,
        limits,
        metrics.clone(),
        stop_signal(),
    ));
    let expiry = |tls: &ReloadingTls| tls.not_after().map_or(0.0, |at| at as f64);
    metrics.serving_cert_expiry.set(expiry(&tls));
    let reload_metrics = metrics.clone();
    let reloaded_tls = tls.clone();
    let count_reload = move |outcome| {
        let result = match outcome {
            ReloadOutcome::Unchanged => return,
            ReloadOutcome::Reloaded => {
                reload_metrics
                    .serving_cert_expiry
                    .set(expiry(&reloaded_tls));
                "success"
            }
            ReloadOutcome::KeptPrevious => "failure",
        };
        reload_metrics
            .tls_reloads
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    };
    match self_managed {
        Some(certs) => {
            tasks.spawn(certs.run(tls.clone(), count_reload, stop_signal()));
        }
        None => {
            tasks.spawn(
                tls.clone()
                    .watch(args.tls_reload_interval, count_reload, stop_signal()),
            );
        }
    }
    let probe_router = probe::router(readiness.clone(), metrics.clone());
    let probe_stop = stop_signal();
    tasks.spawn(async move {
        if let Err(error) = axum::serve(probe_listener, probe_router)
            .with_graceful_shutdown(probe_stop)
            .await
        {
            tracing::error!(%error, "probe server failed");
        }
    });

    tokio::select! {
        () = shutdown_signal() => {
            tracing::info!(delay = ?args.shutdown_delay, "shutting down: readiness off, draining");
        }
        Some(ended) = tasks.join_next() => {
            let _ = stop_tx.send(true);
            anyhow::bail!("a component stopped unexpectedly ({ended:?}); exiting so the pod restarts");
        }
    }
    readiness.set_shutting_down();
    tokio::time::sleep(args.shutdown_delay).await;
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    #[tokio::test]
    async fn bad_rotation_flags_fail_before_anything_binds() {
        // The admission port is taken: had serve bound first, binding would be the error.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let listen = format!("127.0.0.1:{port}");
        let cli = crate::cli::Cli::try_parse_from([
            "rndc-warden",
            "serve",
            "--listen",
            listen.as_str(),
            "--lease-duration",
            "5s",
            "--lease-grace",
            "5s",
        ])
        .expect("parses");
        let crate::cli::Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        let error = format!("{:#}", super::run(*args).await.expect_err("refused"));
        assert!(error.contains("--lease-duration"), "{error}");
    }

    #[test]
    fn serve_parses_with_no_flags_so_every_default_is_valid() {
        let cli = crate::cli::Cli::try_parse_from(["rndc-warden", "serve"]);
        assert!(cli.is_ok(), "{:?}", cli.err());
    }

    #[test]
    fn connection_limits_refuse_values_that_would_close_every_connection() {
        for flags in [
            ["--max-connections", "0"],
            ["--handshake-timeout", "0s"],
            ["--header-timeout", "0ms"],
            ["--idle-timeout", "0s"],
            ["--write-timeout", "0s"],
        ] {
            let cli =
                crate::cli::Cli::try_parse_from(["rndc-warden", "serve"].into_iter().chain(flags));
            assert!(cli.is_err(), "{flags:?} was accepted");
        }
        let cli = crate::cli::Cli::try_parse_from([
            "rndc-warden",
            "serve",
            "--max-connections",
            "16",
            "--write-timeout",
            "500ms",
        ]);
        assert!(cli.is_ok(), "{:?}", cli.err());
    }
}
