//! The apiserver goes away in the middle and comes back (`ControlPlane::stop_apiserver` /
//! `start_apiserver`: same port, certificates and etcd): the real `rndc-warden serve` binary,
//! never restarted, recovers by itself. A key that falls due during the outage is rotated once the
//! apiserver is back, and the re-established watches see what changes afterwards (a back-dated
//! key, a new instance). A test binary of its own: the outage would disturb any test sharing the
//! control plane.

mod rotation_support;

use std::time::Instant;

use chrono::{TimeDelta, Utc};
use rndc_warden::policy::Algorithm;
use rndc_warden_testkit::wait_for;
use rotation_support::binary::WardenProcess;
use rotation_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rotator_recovers_by_itself_after_an_apiserver_restart() {
    let t = RotationEnv::for_binary("rot-apiserver-restart").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let day = TimeDelta::hours(24);
    // `due` is made to fall due during the outage, `later` is back-dated after the restart,
    // `fresh` is created after the restart.
    for name in ["due", "later"] {
        create_deployment(&c, &ns, name).await;
        create_key_secret(
            &c,
            &ns,
            &format!("{name}-rndc-key"),
            Algorithm::HmacSha256,
            Utc::now() - TimeDelta::hours(2),
            day,
        )
        .await;
        create_instance(
            &c,
            &ns,
            name,
            standalone(Some(rndc_key(true, "24h", "hmac-sha256"))),
        )
        .await;
    }
    let mut warden = WardenProcess::new(
        "restart-replica",
        t.sa_kubeconfig(),
        &ns,
        &["--resync-period", "5s"],
    );
    warden.start();
    warden.wait_series(2, WAIT).await;
    assert!(warden.is_leader().await, "{}", warden.logs_tail(4000));

    let due_at = Utc::now() + TimeDelta::seconds(6);
    back_date(&c, &ns, "due-rndc-key", due_at - day).await;
    let outage = Instant::now();
    t.env
        .cp
        .stop_apiserver()
        .await
        .expect("stop kube-apiserver");
    // Keep the apiserver down until `due` has fallen due (plus a margin), so the rotator's first
    // attempts fail against a dead endpoint.
    wait_for("due time passes", WAIT, || async move {
        Utc::now() > due_at + TimeDelta::seconds(2)
    })
    .await
    .expect("clock");
    warden.assert_running();
    t.env
        .cp
        .start_apiserver()
        .await
        .expect("start kube-apiserver");
    let down = outage.elapsed();
    println!(
        "APISERVER RESTART: apiserver down for {:.1}s",
        down.as_secs_f64()
    );

    let names = vec!["due".to_owned()];
    let took = wait_converged(&c, &ns, &names, Algorithm::HmacSha256, 1, WAIT).await;
    let rotated = get_secret(&c, &ns, "due-rndc-key").await.expect("secret");
    assert!(
        created_at(&rotated).is_some_and(|t| t >= due_at - TimeDelta::seconds(1)),
        "rotated after its due time, i.e. after the outage began"
    );
    println!(
        "APISERVER RESTART: the key that fell due during the outage rotated {:.1}s after the apiserver was back",
        took.as_secs_f64()
    );

    // The watches are live again: a back-dated key and a new instance are acted on.
    back_date(&c, &ns, "later-rndc-key", Utc::now() - TimeDelta::hours(25)).await;
    create_deployment(&c, &ns, "fresh").await;
    create_instance(
        &c,
        &ns,
        "fresh",
        standalone(Some(rndc_key(true, "24h", "hmac-sha256"))),
    )
    .await;
    let names = vec!["later".to_owned()];
    wait_converged(&c, &ns, &names, Algorithm::HmacSha256, 1, WAIT).await;
    let fresh = wait_secret(&c, &ns, "fresh-rndc-key", "fresh provisioned", |s| {
        created_at(s).is_some()
    })
    .await;
    assert_eq!(count(&fresh), 0);
    let created = annotation(&fresh, rndc_warden::api::ANNOTATION_CREATED_AT)
        .expect("created-at")
        .to_owned();
    wait_status(&c, &ns, "fresh", &created, 0).await;
    warden.assert_running();
    assert!(warden.is_leader().await, "{}", warden.logs_tail(4000));
    assert_eq!(
        warden.count_lines("Successfully rotated RNDC Secret"),
        2,
        "{}",
        warden.logs_tail(6000)
    );
    assert!(t.env.cp.is_running());
}
