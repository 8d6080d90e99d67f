//! The floor: the cheapest possible HTTPS webhook. axum + rustls with the same certificate and the
//! same HTTP/1.1 keep-alive as `rndc-warden serve`; `POST /validate` reads the body and returns a
//! fixed AdmissionReview. Whatever our server costs above this is our own overhead.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::post;
use clap::Args;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::review::FLOOR_RESPONSE;

/// Arguments of the hidden `bench floor-server` command.
#[derive(Debug, Args)]
pub struct FloorArgs {
    /// Address of the HTTPS listener.
    #[arg(long)]
    listen: SocketAddr,
    /// PEM serving certificate chain.
    #[arg(long)]
    tls_cert: PathBuf,
    /// PEM private key of the serving certificate.
    #[arg(long)]
    tls_key: PathBuf,
    /// Exit by itself after this many seconds, should nobody stop it.
    #[arg(long, default_value_t = 900)]
    max_lifetime_secs: u64,
}

/// Serves until killed or until the maximum lifetime has passed.
pub fn run(args: FloorArgs) -> Result<ExitCode> {
    let tls = super::tls::server_config(&args.tls_cert, &args.tls_key)?;
    super::runtime()?.block_on(async {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        eprintln!("floor server listening on https://{}", args.listen);
        let lifetime = Duration::from_secs(args.max_lifetime_secs);
        if tokio::time::timeout(lifetime, serve(listener, TlsAcceptor::from(tls)))
            .await
            .is_err()
        {
            eprintln!("floor server: maximum lifetime reached, exiting");
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn validate(body: Bytes) -> impl IntoResponse {
    drop(body);
    ([(CONTENT_TYPE, "application/json")], FLOOR_RESPONSE)
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor) {
    let router = Router::new().route("/validate", post(validate));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(true);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                eprintln!("accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let http = http.clone();
        tokio::spawn(async move {
            if let Ok(tls) = acceptor.accept(stream).await {
                let _ = http.serve_connection(TokioIo::new(tls), service).await;
            }
        });
    }
}
