//! Fault tests of the rotator with the real `rndc-warden serve` binary, running as the
//! ServiceAccount with exactly the chart's RBAC (`RotationEnv::for_binary`): SIGKILL at random
//! points of a batch of rotations, and two replicas at once with leader election.

mod rotation_support;

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use futures::{StreamExt, stream};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::ListParams;
use rand::{Rng, SeedableRng};
use rndc_warden::policy::Algorithm;
use rotation_support::binary::WardenProcess;
use rotation_support::*;

/// Creates `n` instances `<prefix>NNNN` (autoRotate every 24h, sha256), their Deployments and
/// Secrets whose keys are 25h old, i.e. all due.
async fn due_batch(t: &RotationEnv, prefix: &str, n: usize) -> Vec<String> {
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i:04}")).collect();
    let created = Utc::now() - TimeDelta::hours(25);
    stream::iter(names.clone())
        .for_each_concurrent(16, |name| {
            let (c, ns) = (c.clone(), ns.clone());
            async move {
                create_deployment(&c, &ns, &name).await;
                create_key_secret(
                    &c,
                    &ns,
                    &format!("{name}-rndc-key"),
                    Algorithm::HmacSha256,
                    created,
                    TimeDelta::hours(24),
                )
                .await;
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
    names
}

async fn rotated_so_far(c: &kube::Client, ns: &str) -> usize {
    Api::<Secret>::namespaced(c.clone(), ns)
        .list(&ListParams::default())
        .await
        .map(|l| l.items.iter().filter(|s| count(s) > 0).count())
        .unwrap_or(0)
}

/// How far the batch got: keys rotated, and of those how many are rolled out and mirrored in
/// status (a kill between the steps leaves the later ones behind).
async fn progress(c: &kube::Client, ns: &str, names: &[String]) -> String {
    let problems = all_converged_problems(c, ns, names, Algorithm::HmacSha256, 1)
        .await
        .unwrap_or_default();
    let behind = |what: &str| {
        problems
            .iter()
            .filter(|p| p.contains(what) && !p.contains("rotation count"))
            .count()
    };
    let rotated = rotated_so_far(c, ns).await;
    format!(
        "{rotated}/{} keys rotated, Deployment markers behind: {}, statuses behind: {}",
        names.len(),
        behind("Deployment marker").saturating_sub(names.len() - rotated),
        behind("status.rndcKeyRotationStatus").saturating_sub(names.len() - rotated),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_of_a_batch_still_rotates_every_key_exactly_once() {
    const N: usize = 200;
    const KILLS: usize = 5;
    let seed: u64 = std::env::var("ROTATION_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("ROTATION FAULTS: kill-timing seed {seed} (rerun with ROTATION_FAULT_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let t = RotationEnv::for_binary("rot-crash").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let names = due_batch(&t, "k", N).await;

    // A low QPS stretches the batch (about 4 requests per key) over the kills; a fixed identity
    // makes the restarted process the Lease holder again at once, as a restarted pod would be.
    let mut warden = WardenProcess::new(
        "crash-replica",
        t.sa_kubeconfig(),
        &ns,
        &[
            "--client-qps",
            "30",
            "--client-burst",
            "30",
            "--resync-period",
            "5s",
        ],
    );
    let started = Instant::now();
    for kill in 1..=KILLS {
        warden.start();
        let delay = Duration::from_millis(rng.random_range(800..=4000));
        // Fault injection, not synchronisation: the kill lands wherever the batch is by then.
        tokio::time::sleep(delay).await;
        warden.assert_running();
        warden.kill();
        println!(
            "kill {kill}/{KILLS} after {:.2}s: {}",
            delay.as_secs_f64(),
            progress(&c, &ns, &names).await
        );
    }
    warden.start();
    let took = wait_converged(
        &c,
        &ns,
        &names,
        Algorithm::HmacSha256,
        1,
        Duration::from_secs(180),
    )
    .await;
    let rotating = warden.count_lines("Rotating RNDC Secret");
    let rotated = warden.count_lines("Successfully rotated RNDC Secret");
    println!(
        "ROTATION FAULTS: seed {seed}: {N} keys converged {:.1}s after the last restart ({:.1}s in all); \
         log lines: {rotating} 'Rotating', {rotated} 'Successfully rotated'",
        took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    // The end state holds on later passes too (a resync period later nothing moved).
    let before = rotated_so_far(&c, &ns).await;
    wait_converged(
        &c,
        &ns,
        &names,
        Algorithm::HmacSha256,
        1,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(before, N);
    assert!(
        !warden.logs().contains("panicked"),
        "{}",
        warden.logs_tail(4000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_with_leader_election_rotate_each_due_key_once_and_one_holds_the_lease() {
    const N: usize = 40;
    let t = RotationEnv::for_binary("rot-replicas").await;
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let names = due_batch(&t, "r", N).await;
    let flags = [
        "--lease-duration",
        "4s",
        "--lease-grace",
        "2s",
        "--resync-period",
        "5s",
    ];
    let mut a = WardenProcess::new("replica-a", t.sa_kubeconfig(), &ns, &flags);
    let mut b = WardenProcess::new("replica-b", t.sa_kubeconfig(), &ns, &flags);
    a.start();
    b.start();
    let took = wait_converged(
        &c,
        &ns,
        &names,
        Algorithm::HmacSha256,
        1,
        Duration::from_secs(120),
    )
    .await;
    let leases: Api<Lease> = Api::namespaced(c.clone(), &ns);
    let holder = leases
        .get(rndc_warden::rotation::DEFAULT_LEASE_NAME)
        .await
        .expect("Lease")
        .spec
        .and_then(|s| s.holder_identity)
        .expect("a Lease holder");
    let leaders = [a.is_leader().await, b.is_leader().await];
    assert_eq!(
        leaders.iter().filter(|l| **l).count(),
        1,
        "exactly one replica reports rndc_warden_rotator_leader 1: {leaders:?}"
    );
    let (leader, follower) = if leaders[0] {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert!(
        ["replica-a", "replica-b"].contains(&holder.as_str()),
        "{holder}"
    );
    assert_eq!(
        follower.count_lines("Successfully rotated RNDC Secret"),
        0,
        "the follower wrote nothing:\n{}",
        follower.logs_tail(4000)
    );
    assert_eq!(
        leader.count_lines("Successfully rotated RNDC Secret"),
        N,
        "{}",
        leader.logs_tail(4000)
    );
    println!(
        "TWO REPLICAS: {N} keys rotated once each in {:.1}s by the Lease holder {holder}",
        took.as_secs_f64()
    );

    // The holder dies without releasing the Lease: the other replica takes over once it expires
    // and rotates what becomes due.
    leader.kill();
    let handed_over = Instant::now();
    for name in names.iter().take(5) {
        back_date(
            &c,
            &ns,
            &format!("{name}-rndc-key"),
            Utc::now() - TimeDelta::hours(25),
        )
        .await;
    }
    wait_converged(
        &c,
        &ns,
        &names[..5],
        Algorithm::HmacSha256,
        2,
        Duration::from_secs(60),
    )
    .await;
    assert!(follower.is_leader().await, "the survivor holds the Lease");
    println!(
        "TWO REPLICAS: the survivor rotated 5 keys {:.1}s after the holder was killed",
        handed_over.elapsed().as_secs_f64()
    );
    wait_converged(
        &c,
        &ns,
        &names[5..],
        Algorithm::HmacSha256,
        1,
        Duration::from_secs(1),
    )
    .await;
}
