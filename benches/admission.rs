//! The admission request path in-process, without TLS and HTTP/1.1: the router answering the same
//! 2.2 KB validating AdmissionReview that `cargo xtask bench admission` sends over the wire, and
//! the parts of it (parsing the review, deciding it). Run with `cargo bench --bench admission`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, header};
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt as _;
use rndc_warden::admission::{self, AdmissionPolicy, AdmissionState, RequestLimits};
use rndc_warden::cache::ClusterCache;
use rndc_warden::metrics::{Endpoint, Metrics};
use rndc_warden::policy::PolicyConfig;
use tower::ServiceExt as _;

const REVIEW: &str = include_str!("fixtures/validating-review.json");

fn state() -> AdmissionState {
    AdmissionState {
        policy: Arc::new(AdmissionPolicy::new(
            PolicyConfig::default(),
            ClusterCache::default(),
        )),
        metrics: Metrics::new(),
    }
}

fn bench(c: &mut Criterion) {
    let body = serde_json::to_vec(
        &serde_json::from_str::<serde_json::Value>(REVIEW).expect("the fixture is JSON"),
    )
    .expect("re-encodes");
    let state = state();

    c.bench_function("admission: parse the review", |b| {
        b.iter(|| admission::parse_body(&body).expect("the fixture is a review"))
    });
    let request = admission::parse_body(&body).expect("the fixture is a review");
    c.bench_function("admission: decide the parsed review (validate)", |b| {
        b.iter(|| state.policy.review(Endpoint::Validate, &request))
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let router = admission::router(state.clone(), RequestLimits::default());
    let bytes = axum::body::Bytes::from(body.clone());
    c.bench_function("admission: POST /validate through the router", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let request = Request::post("/validate")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(bytes.clone()))
                    .expect("a request");
                let response = router.clone().oneshot(request).await.expect("infallible");
                response
                    .into_body()
                    .collect()
                    .await
                    .expect("a body")
                    .to_bytes()
            })
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
