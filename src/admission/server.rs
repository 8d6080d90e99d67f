//! The TLS accept loop: one rustls handshake per connection with the current certificate, HTTP/1.1
//! with a header read timeout, and a graceful drain of open connections on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1::Builder;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::tls::ReloadingTls;

/// Connection-level limits of the HTTPS listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed for the request headers to arrive.
    pub header_timeout: Duration,
    /// Time allowed for open connections to finish after shutdown starts.
    pub drain_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(25),
        }
    }
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves, then drains open connections
/// (bounded by `limits.drain_timeout`).
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    // HTTP/1.1 only (what the apiserver speaks to webhooks), without protocol detection.
    let mut http = Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
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
        let _ = stream.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.config());
        let service = TowerToHyperService::new(router.clone());
        let http = http.clone();
        let watcher = graceful.watcher();
        let handshake_timeout = limits.handshake_timeout;
        tokio::spawn(async move {
            let tls_stream =
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => tls_stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let connection = http.serve_connection(TokioIo::new(tls_stream), service);
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open connections did not finish within the drain timeout");
    }
}

/// Runs [`serve_tls`] on an OS thread of its own with a single-threaded runtime, and resolves
/// when it has finished. One core answers tens of thousands of reviews a second, far above what
/// an apiserver sends; what the thread buys is isolation: the rotator's bursts and the watch
/// caches' lists run on the other runtime and cannot delay an answer the apiserver is waiting
/// for, and no request hops between worker threads. If the thread cannot start or dies, this
/// future resolves too, so `serve` sees the component stop and exits.
pub async fn serve_tls_on_own_thread(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    router: Router,
    limits: ConnectionLimits,
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
    let (finished, on_finished) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("admission".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::error!(%error, "cannot start the admission runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => serve_tls(listener, tls, router, limits, shutdown).await,
                    Err(error) => tracing::error!(%error, "cannot register the admission listener"),
                }
            });
            let _ = finished.send(());
        });
    if let Err(error) = thread {
        tracing::error!(%error, "cannot start the admission thread");
        return;
    }
    // Resolves when the thread sends, or drops the sender by ending in any other way.
    let _ = on_finished.await;
}
