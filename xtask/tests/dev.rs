//! `cargo xtask dev` — the README's first command — brings the whole system up from the chart,
//! applies the examples with the webhook enforcing, runs (as root) a BIND9 pod per example
//! instance and `rndc status` against it, and `dev down` leaves nothing running.

use std::process::Command;

fn xtask(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env("CARGO", env!("CARGO"))
        .output()
        .expect("run xtask");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn dev_runs_the_chart_install_applies_the_examples_and_down_stops_everything() {
    let (ok, output) = xtask(&["dev"]);
    let pid = output
        .lines()
        .find_map(|line| line.strip_prefix("rndc-warden is running (pid "))
        .and_then(|rest| rest.split(')').next())
        .and_then(|pid| pid.parse::<u32>().ok());
    let (down_ok, down_output) = xtask(&["dev", "down"]);
    assert!(ok, "cargo xtask dev failed:\n{output}");
    assert!(
        output.contains("bind9instance.bindy.firestoned.io/dns-primary created"),
        "{output}"
    );
    assert!(
        output.contains("denied the request"),
        "the weak example must be denied:\n{output}"
    );
    assert!(
        output.contains("eval \"$(cargo xtask cluster env)\""),
        "{output}"
    );
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // As root it runs a node: each example instance has a BIND9 pod answering rndc with the
        // key from its Secret.
        for instance in ["dns-primary", "dns-vault", "dns-inline"] {
            assert!(
                output.contains(&format!(
                    "rndc status against the pod of dns-system/{instance}"
                )),
                "{output}"
            );
        }
        assert!(
            output.matches("server is up and running").count() >= 3,
            "{output}"
        );
    }
    assert!(down_ok, "cargo xtask dev down failed:\n{down_output}");
    let pid = pid.expect("the pid line");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z ")),
        "rndc-warden (pid {pid}) still runs after dev down"
    );
}
