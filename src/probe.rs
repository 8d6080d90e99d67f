//! The plain-HTTP probe port: `/healthz` (the process is alive), `/readyz` (admission can answer
//! correctly: TLS loaded, watch caches synced, not shutting down) and `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// Readiness of the admission side, flipped by the components as they come up and go down.
#[derive(Debug, Default)]
pub struct Readiness {
    caches_synced: AtomicBool,
    shutting_down: AtomicBool,
}

impl Readiness {
    /// Marks the watch caches as synced (or as not needed when there is no cluster).
    pub fn set_caches_synced(&self) {
        self.caches_synced.store(true, Ordering::SeqCst);
    }

    /// Marks the process as draining: readiness turns false so endpoints stop sending traffic.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Whether admission should receive traffic, and if not why.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err("shutting down");
        }
        if !self.caches_synced.load(Ordering::SeqCst) {
            return Err("watch caches are not synced yet");
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct ProbeState {
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
}

/// The probe router.
pub fn router(readiness: Arc<Readiness>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(ProbeState { readiness, metrics })
}

async fn readyz(State(state): State<ProbeState>) -> impl IntoResponse {
    match state.readiness.check() {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

/// OpenMetrics to scrapers that ask for it (Prometheus does), the classic text format otherwise.
async fn metrics_text(
    State(state): State<ProbeState>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            state.metrics.encode(),
        )
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            state.metrics.encode_classic(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_synced_caches_and_ends_on_shutdown() {
        let readiness = Readiness::default();
        assert_eq!(readiness.check(), Err("watch caches are not synced yet"));
        readiness.set_caches_synced();
        assert_eq!(readiness.check(), Ok(()));
        readiness.set_shutting_down();
        assert_eq!(readiness.check(), Err("shutting down"));
    }
}
