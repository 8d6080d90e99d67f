//! The HTTPS admission server, on two threads of its own:
//!
//! - `admission-tls` accepts TCP connections, refuses those beyond the connection cap, and runs
//!   each rustls handshake under the handshake timeout;
//! - `admission` serves the established connections: HTTP/1.1 with a header read timeout, a write
//!   timeout, and a graceful drain of open connections on shutdown.
//!
//! Why threads of their own: one core answers tens of thousands of reviews a second, far above
//! what an apiserver sends; what the `admission` thread buys is isolation. The rotator's bursts
//! and the watch caches' lists run on the process's multi-threaded runtime and cannot delay an
//! answer the apiserver is waiting for, and no request hops between worker threads.
//!
//! Why handshakes are not on that thread: a handshake costs a key exchange and a signature, and
//! anyone who can reach the port can start thousands of them. On the `admission` thread such a
//! flood stalled reviews in flight for seconds; on the rotator's runtime it would compete with,
//! and be delayed by, the rotator. So handshakes get a thread of their own, and an established
//! connection moves to the `admission` thread with its socket re-registered there
//! ([`io::HandoffStream`]): from then on its readiness events come from the `admission` thread's
//! own reactor, whatever the handshake thread is busy with.

mod io;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1::Builder;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use self::io::{HandoffStream, HeaderDeadline, WriteDeadline, is_header_timeout, is_write_timeout};
use super::tls::ReloadingTls;
use crate::metrics::{Metrics, PhaseLabels};

/// The most a connection buffers of what it reads before the handler takes it (hyper's default
/// is about 400 KiB). Large uploads wait for the body budget with their headers read; each kept
/// its grown read buffer meanwhile, so 30 waiting 7 MiB uploads held about 17 MiB. 64 KiB still
/// takes any request head the apiserver sends in one buffer.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Connection-level limits of the HTTPS listener (flags of `serve`; docs/security.md,
/// "Connection and request limits", says how to size them).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time allowed for the TLS handshake, from accept to the client's Finished.
    pub handshake_timeout: Duration,
    /// Time allowed for a request's headers to arrive: from the end of the handshake for the
    /// first request, from the request's first byte for later ones on a kept-alive connection.
    pub header_timeout: Duration,
    /// How long a kept-alive connection may wait idle for its next request. Longer than the
    /// apiserver client's own idle timeout (90 s), so the client, not this server, closes idle
    /// connections: a close from this side races with the client sending on the connection,
    /// and the apiserver does not retry a webhook POST whose write failed (the call fails, and
    /// with `failurePolicy: Fail` so does the user's request).
    pub idle_timeout: Duration,
    /// Longest a response may wait for the client to take it: from the moment the socket first
    /// refuses data until everything written has been handed to the kernel. Beyond it the
    /// connection is closed.
    pub write_timeout: Duration,
    /// Connections open at once (handshaking or established); new ones beyond it are accepted and
    /// closed at once, and counted in `rndc_warden_admission_connections_refused_total`.
    pub max_connections: usize,
    /// Time allowed for open connections to finish after shutdown starts.
    pub drain_timeout: Duration,
}

/// The default [`ConnectionLimits::idle_timeout`].
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: IDLE_TIMEOUT,
            write_timeout: Duration::from_secs(10),
            max_connections: 1024,
            drain_timeout: Duration::from_secs(25),
        }
    }
}

/// A place under the connection cap, held from accept until the connection closes, on whichever
/// thread it is; counted in `rndc_warden_admission_connections_open`.
struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl ConnectionSlot {
    fn new(permit: OwnedSemaphorePermit, metrics: Arc<Metrics>) -> Self {
        metrics.admission_connections_open.inc();
        Self {
            _permit: permit,
            metrics,
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.metrics.admission_connections_open.dec();
    }
}

/// A connection whose handshake is done, on its way to the `admission` thread.
struct Established {
    stream: TlsStream<HandoffStream>,
    peer: SocketAddr,
    slot: ConnectionSlot,
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves, then drains open
/// connections (bounded by `limits.drain_timeout`), on the two threads described in the module
/// documentation. Resolves when serving has ended: after the drain, or as soon as the `admission`
/// thread cannot start or dies, so that `serve` sees the component stop and exits.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    router: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    // A listener belongs to the runtime that registered it: hand it over as a std socket.
    let listener = match listener.into_std() {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "cannot hand the admission listener to its thread");
            return;
        }
    };
    let (established, incoming) = mpsc::unbounded_channel::<Established>();
    let (finished, on_finished) = tokio::sync::oneshot::channel::<()>();
    let serving_metrics = metrics.clone();
    let serving = on_own_thread("admission", move || async move {
        serve_established(incoming, router, limits, serving_metrics).await;
        let _ = finished.send(());
    });
    if let Err(error) = serving {
        tracing::error!(%error, "cannot start the admission thread");
        return;
    }
    // If this thread cannot start, `established` is dropped with its closure: the admission
    // thread sees no more connections coming, drains and ends, and so does this future.
    let accepting = on_own_thread("admission-tls", move || async move {
        match TcpListener::from_std(listener) {
            Ok(listener) => {
                accept_and_handshake(listener, tls, limits, metrics, established, shutdown).await;
            }
            Err(error) => tracing::error!(%error, "cannot register the admission listener"),
        }
    });
    if let Err(error) = accepting {
        tracing::error!(%error, "cannot start the admission handshake thread");
    }
    // Resolves when the admission thread sends, or drops the sender by ending in any other way.
    let _ = on_finished.await;
}

/// Runs the future `make` returns on a new OS thread with a single-threaded runtime. The runtime
/// is dropped when the future ends, and with it every task still spawned on it.
fn on_own_thread<F, Fut>(name: &str, make: F) -> std::io::Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let thread_name = name.to_owned();
    std::thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(make()),
                Err(error) => {
                    tracing::error!(%error, thread = %thread_name, "cannot start a runtime");
                }
            }
        })
        .map(drop)
}

/// The `admission-tls` thread: accepts, applies the connection cap, and hands each connection
/// whose handshake completes in time to the `admission` thread. Ends on `shutdown` or when the
/// `admission` thread is gone; handshakes still running then are dropped with the runtime.
async fn accept_and_handshake(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    established: mpsc::UnboundedSender<Established>,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(
        limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let mut refusals = RefusalLog::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            () = established.closed() => {
                tracing::error!("the admission thread is gone: no longer accepting");
                break;
            }
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Accepted and closed at once: the client sees the connection end instead of
            // waiting in the listen backlog, and the refusal is counted.
            drop(stream);
            metrics.admission_connections_refused.inc();
            refusals.note(peer, limits.max_connections);
            continue;
        };
        let slot = ConnectionSlot::new(permit, metrics.clone());
        let _ = stream.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.config());
        let established = established.clone();
        let metrics = metrics.clone();
        let handshake_timeout = limits.handshake_timeout;
        tokio::spawn(async move {
            let handshake = acceptor.accept(HandoffStream::new(stream));
            let mut stream = match tokio::time::timeout(handshake_timeout, handshake).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    count_timeout(&metrics, "handshake");
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            if let Err(error) = stream.get_mut().0.detach() {
                tracing::debug!(%peer, %error, "cannot hand the connection to the admission thread");
                return;
            }
            // Fails only when the admission thread is gone; the accept loop stops then too.
            let _ = established.send(Established { stream, peer, slot });
        });
    }
}

/// Warns when the connection cap refuses connections: at once, then at most every 10 s with the
/// number refused since, so a flood cannot flood the logs too.
#[derive(Debug, Default)]
struct RefusalLog {
    last_warned: Option<Instant>,
    unreported: u64,
}

impl RefusalLog {
    const INTERVAL: Duration = Duration::from_secs(10);

    fn note(&mut self, peer: SocketAddr, max_connections: usize) {
        self.unreported += 1;
        tracing::debug!(%peer, "connection refused: the connection cap is reached");
        if self
            .last_warned
            .is_none_or(|last| last.elapsed() >= Self::INTERVAL)
        {
            tracing::warn!(
                refused = self.unreported,
                max_connections,
                "admission connection cap reached: refusing new connections (--max-connections)"
            );
            self.last_warned = Some(Instant::now());
            self.unreported = 0;
        }
    }
}

fn count_timeout(metrics: &Metrics, phase: &'static str) {
    metrics
        .admission_connection_timeouts
        .get_or_create(&PhaseLabels { phase })
        .inc();
}

/// The `admission` thread: serves every connection handed over until the handshake thread stops
/// sending (shutdown), then drains.
async fn serve_established(
    mut incoming: mpsc::UnboundedReceiver<Established>,
    router: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
) {
    let graceful = GracefulShutdown::new();
    // HTTP/1.1 only (what the apiserver speaks to webhooks), without protocol detection. hyper
    // starts its header timer as soon as it waits for a request, so it is the idle timeout of
    // kept-alive connections; `HeaderDeadline` times the headers themselves.
    let mut http = Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout.max(limits.header_timeout))
        .max_buf_size(READ_BUFFER_BYTES)
        .keep_alive(true);
    while let Some(Established {
        mut stream,
        peer,
        slot,
    }) = incoming.recv().await
    {
        // Registers the socket with this thread's reactor.
        if let Err(error) = stream.get_mut().0.attach() {
            tracing::debug!(%peer, %error, "cannot take over the connection");
            continue;
        }
        let io = TokioIo::new(WriteDeadline::new(
            HeaderDeadline::new(stream, limits.header_timeout),
            limits.write_timeout,
        ));
        let service = TowerToHyperService::new(router.clone());
        let connection = http.serve_connection(io, service);
        let watcher = graceful.watcher();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(error) = watcher.watch(connection).await {
                if is_write_timeout(&error) {
                    count_timeout(&metrics, "write");
                } else if error.is_timeout() || is_header_timeout(&error) {
                    count_timeout(&metrics, "headers");
                }
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open connections did not finish within the drain timeout");
    }
}
