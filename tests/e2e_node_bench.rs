//! Issue 13's benchmark (printed, not asserted; `cargo xtask bench reload` runs it with 20
//! rounds for each kubelet sync period and `docs/benchmarks.md` has the figures): on a real node,
//! for the `rollout` and the `signal` strategy, the time from a key falling due (back-dated) to
//! the new key being accepted by every pod, and the management gap: the time during which a
//! client that runs `rndc status` every 100 ms with the key currently mounted in the pod (as
//! Bindy's sidecar does) fails.
//!
//! `RELOAD_BENCH_ROUNDS` (default 2, so that `cargo test` exercises it) rounds per strategy;
//! `RELOAD_BENCH_SYNC_SECONDS` the kubelet's syncFrequency (default 10). The rotator runs with
//! the release defaults (`--reload-debounce 10s`, `--reload-signal-deadline 2m`).

mod node_support;
mod rotation_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use node_support::*;
use rndc_warden::rotation::{ReloadStrategy, RotationArgs};
use rndc_warden_testkit::workload::{live_pods, pod_ready};
use rndc_warden_testkit::{Bind9Workload, Node, rndc_status_at};
use rotation_support::*;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}

/// One `rndc status` of the sidecar-like client: when, and whether it succeeded.
#[derive(Clone, Copy)]
struct Call {
    at: Instant,
    ok: bool,
}

/// Every 100 ms: for each ready pod, read the key file the kubelet projected into it and run
/// `rndc status` with it. No ready pod counts as a failed call.
fn start_client(
    node: &'static Node,
    client: kube::Client,
    ns: String,
    w: Bind9Workload,
) -> (Arc<Mutex<Vec<Call>>>, tokio::task::JoinHandle<()>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let log = calls.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let at = Instant::now();
            let pods = live_pods(&client, &ns, &w.selector())
                .await
                .unwrap_or_default();
            let ready: Vec<_> = pods.iter().filter(|p| pod_ready(p)).collect();
            let mut ok = !ready.is_empty();
            for pod in ready {
                let file = node.secret_volume_file(&uid(pod), "rndc-key", "rndc.key");
                let accepted = match std::fs::read_to_string(&file) {
                    Ok(key) => rndc_status_at(w.rndc_port, &key).await.unwrap_or(false),
                    Err(_) => false,
                };
                ok &= accepted;
            }
            if let Ok(mut calls) = log.lock() {
                calls.push(Call { at, ok });
            }
        }
    });
    (calls, task)
}

/// The time covered by failed calls in `[from, to]`: each failed call until the next call.
fn gap(calls: &[Call], from: Instant, to: Instant) -> Duration {
    let window: Vec<&Call> = calls
        .iter()
        .filter(|c| c.at >= from && c.at <= to)
        .collect();
    window
        .windows(2)
        .filter(|pair| !pair[0].ok)
        .map(|pair| pair[1].at - pair[0].at)
        .sum()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(mut values: Vec<Duration>) -> String {
    values.sort();
    format!(
        "p50 {:.1} s, p99 {:.1} s, max {:.1} s",
        percentile(&values, 50.0).as_secs_f64(),
        percentile(&values, 99.0).as_secs_f64(),
        values.last().copied().unwrap_or_default().as_secs_f64()
    )
}

async fn bench(node: &'static Node, t: &RotationEnv, strategy: ReloadStrategy, rounds: u64) {
    let (c, ns) = (t.client().clone(), t.ns().to_owned());
    let name = format!("bench-{}", format!("{strategy:?}").to_lowercase());
    let secret_name = format!("{name}-rndc-key");
    let (w, _, _) = managed(t, &name).await;
    let rotator = t.start_with(RotationArgs {
        reload_strategy: strategy,
        resync_period: Duration::from_secs(30),
        ..t.args()
    });
    let (calls, client) = start_client(node, c.clone(), ns.clone(), w.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut accepted, mut gaps) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let old = secret(&c, &ns, &secret_name).await;
        let due = Instant::now();
        back_date(&c, &ns, &secret_name, Utc::now() - TimeDelta::days(400)).await;
        let new = wait_secret(&c, &ns, &secret_name, "rotated", |s| {
            count(s) == round as u32
        })
        .await;
        wait_new_key_only(&w, &new, &old).await;
        let took = due.elapsed();
        // Steady again: the client's calls succeed for a second.
        let steady = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let calls = calls.lock().expect("calls").clone();
            let recent: Vec<&Call> = calls
                .iter()
                .filter(|c| c.at > Instant::now() - Duration::from_secs(1))
                .collect();
            if recent.len() >= 5 && recent.iter().all(|c| c.ok) {
                break;
            }
            assert!(
                steady.elapsed() < POD_WAIT,
                "the client's calls keep failing after round {round}"
            );
        }
        let calls = calls.lock().expect("calls").clone();
        let g = gap(&calls, due, Instant::now());
        println!(
            "reload-bench sync={}s strategy={strategy:?} round={round}: due -> accepted {:.1} s, gap {:.1} s",
            node.sync_frequency().as_secs(),
            took.as_secs_f64(),
            g.as_secs_f64()
        );
        accepted.push(took);
        gaps.push(g);
    }
    client.abort();
    rotator.stop().await;
    println!(
        "reload-bench RESULT sync={}s strategy={strategy:?} rounds={rounds}: due -> new key accepted by every pod: {}; management gap: {}",
        node.sync_frequency().as_secs(),
        summary(accepted),
        summary(gaps)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_benchmark_due_to_accepted_and_management_gap_per_strategy() {
    let rounds = env_u64("RELOAD_BENCH_ROUNDS", 2);
    let sync = Duration::from_secs(env_u64("RELOAD_BENCH_SYNC_SECONDS", 10));
    let (node, t) = node_env("node-bench", sync, true).await;
    bench(node, &t, ReloadStrategy::Rollout, rounds).await;
    bench(node, &t, ReloadStrategy::Signal, rounds).await;
}
