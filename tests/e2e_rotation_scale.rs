//! Scale figures (printed, not asserted beyond completion): N instances due at once against the
//! real apiserver — time until all are rotated and rolled, and API requests per rotation
//! (apiserver `apiserver_request_total` for the rotator's ServiceAccount). N defaults to 1,000
//! (`ROTATION_SCALE_N`).

mod rotation_support;

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::ListParams;
use rndc_warden::api::{ANNOTATION_CREATED_AT, ANNOTATION_ROTATED_AT};
use rndc_warden_testkit::poll_until;
use rotation_support::*;

async fn apiserver_requests(client: &kube::Client) -> f64 {
    rndc_warden_testkit::Metrics::fetch(client)
        .await
        .map(|m| m.sum("apiserver_request_total", &[]))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_instances_due_at_once_are_rotated_and_rolled() {
    let n: usize = std::env::var("ROTATION_SCALE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let t = RotationEnv::new("rot-scale").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let names: Vec<String> = (0..n).map(|i| format!("s{i:05}")).collect();
    stream::iter(names.clone())
        .for_each_concurrent(32, |name| {
            let (c, ns) = (c.clone(), ns.clone());
            async move {
                create_deployment(&c, &ns, &name).await;
                create_instance(
                    &c,
                    &ns,
                    &name,
                    standalone(Some(rndc_key(true, "24h", "hmac-sha256"))),
                )
                .await;
            }
        })
        .await;
    let mut args = t.args();
    args.concurrency = 16;
    args.client_qps = 200.0;
    args.client_burst = 200;
    let rotator = t.start_with(args);
    let secrets: Api<Secret> = Api::namespaced(c.clone(), &ns);
    let provision_start = Instant::now();
    poll_until(
        "all provisioned",
        Duration::from_secs(600),
        Duration::from_millis(500),
        || {
            let secrets = secrets.clone();
            async move {
                let list = secrets.list(&ListParams::default()).await?;
                let done = list
                    .items
                    .iter()
                    .filter(|s| created_at(s).is_some())
                    .count();
                Ok::<_, kube::Error>((done >= n).then_some(()))
            }
        },
    )
    .await
    .expect("provisioned");
    let provision_time = provision_start.elapsed();

    // Wait until the rotator is idle (statuses written), then make every key due at once.
    poll_until(
        "statuses",
        Duration::from_secs(600),
        Duration::from_millis(500),
        || {
            let c = c.clone();
            let ns = ns.clone();
            async move {
                let done = instances_with_status(&c, &ns).await?;
                Ok::<_, kube::Error>((done >= n).then_some(()))
            }
        },
    )
    .await
    .expect("statuses");
    let past = Utc::now() - TimeDelta::hours(25);
    stream::iter(names.clone())
        .for_each_concurrent(32, |name| {
            let (c, ns) = (c.clone(), ns.clone());
            async move { back_date(&c, &ns, &format!("{name}-rndc-key"), past).await }
        })
        .await;
    let requests_before = apiserver_requests(&c).await;
    let start = Instant::now();
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(c.clone(), &ns);
    poll_until(
        "all rotated and rolled",
        Duration::from_secs(900),
        Duration::from_millis(500),
        || {
            let (secrets, deployments) = (secrets.clone(), deployments.clone());
            async move {
                let s = secrets.list(&ListParams::default()).await?;
                let created: std::collections::HashMap<String, String> = s
                    .items
                    .iter()
                    .filter(|s| count(s) == 1)
                    .filter_map(|s| {
                        Some((
                            s.metadata
                                .name
                                .clone()?
                                .trim_end_matches("-rndc-key")
                                .to_owned(),
                            annotation(s, ANNOTATION_CREATED_AT)?.to_owned(),
                        ))
                    })
                    .collect();
                let d = deployments.list(&ListParams::default()).await?;
                let rolled = d
                    .items
                    .iter()
                    .filter(|d| {
                        let m = d
                            .spec
                            .template
                            .metadata
                            .as_ref()
                            .and_then(|m| m.annotations.as_ref())
                            .and_then(|a| a.get(ANNOTATION_ROTATED_AT));
                        d.metadata.name.as_ref().and_then(|n| created.get(n)) == m
                    })
                    .count();
                Ok::<_, kube::Error>((rolled >= n).then_some(()))
            }
        },
    )
    .await
    .expect("rotated and rolled");
    let elapsed = start.elapsed();
    let requests = apiserver_requests(&c).await - requests_before;
    println!(
        "ROTATION SCALE: n={n} provision={:.1}s rotate+roll={:.1}s apiserver requests during rotation={requests} (~{:.1}/rotation incl. the test's own polling)",
        provision_time.as_secs_f64(),
        elapsed.as_secs_f64(),
        requests / n as f64
    );
    for name in names.iter().take(50) {
        let s = get_secret(&c, &ns, &format!("{name}-rndc-key"))
            .await
            .expect("secret");
        assert_eq!(count(&s), 1, "{name} rotated exactly once");
    }
    rotator.stop().await;
}
