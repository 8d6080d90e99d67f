//! `rndc-warden check` end to end: the built binary on the examples, the seed guide's YAML, stdin,
//! JSON output, policy flags and exit codes. The text format is pinned by golden files; run with
//! `UPDATE_GOLDEN=1` to rewrite them after an intended change.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const NOW: &str = "2026-03-01T00:00:00Z";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The binary with a clean policy environment, run from the crate root.
fn check(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rndc-warden"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("RNDC_WARDEN_") {
            command.env_remove(key);
        }
    }
    command
        .env_remove("NO_COLOR")
        .current_dir(root())
        .arg("check")
        .args(args);
    command
}

fn run(args: &[&str]) -> Output {
    check(args).output().expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("utf-8 output")
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("utf-8 output")
}

fn assert_golden(name: &str, actual: &str) {
    let path = root().join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("golden file written");
    }
    let expected = std::fs::read_to_string(&path).expect("golden file exists");
    assert_eq!(actual, expected, "output differs from {}", path.display());
}

#[test]
fn the_examples_produce_the_pinned_text_report() {
    let output = run(&["--color", "never", "--now", NOW, "examples"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_golden("examples.txt", &stdout(&output));
}

#[test]
fn the_good_examples_pass_and_every_bad_example_fails() {
    let good = run(&["--now", NOW, "examples/good"]);
    assert_eq!(good.status.code(), Some(0), "{}", stdout(&good));
    assert!(stdout(&good).contains("0 denied"));
    let bad_dir = root().join("examples/bad");
    let mut bad: Vec<PathBuf> = std::fs::read_dir(&bad_dir)
        .expect("examples/bad exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    bad.sort();
    assert!(bad.len() >= 5);
    for file in bad {
        let output = run(&["--now", NOW, file.to_str().expect("utf-8 path")]);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{} was not denied",
            file.display()
        );
        assert!(stdout(&output).contains("deny: "), "{}", stdout(&output));
    }
}

#[test]
fn the_seed_guide_examples_pass_or_fail_with_the_message_a_user_needs() {
    let output = run(&["--color", "never", "tests/fixtures/seed"]);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert_golden("seed.txt", &text);
    // Every complete seed object but the inline-secret one is allowed; fragments are skipped.
    assert!(
        text.contains("6 object(s) checked: 5 allowed, 1 denied; 3 skipped"),
        "{text}"
    );
    assert!(text.contains(
        "07-mode3-inline-secret.yaml:1: Bind9Instance dns-primary: DENIED\n  deny: \
         spec.rndcKey.secret.data.secret: the value is not valid base64 (data values must be \
         base64-encoded); base64-encode it or move it to spec.rndcKey.secret.stringData\n"
    ));
    // `role: Primary` from the guide is normalised, not rejected.
    assert!(text.contains("01-basic-auto-rotation.yaml:1: Bind9Instance dns-system/dns-primary: allowed\n  patch: replace /spec/role \"primary\"\n"));
}

#[test]
fn stdin_is_read_with_a_dash() {
    let mut child = check(&["--color", "never", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(
            b"apiVersion: bindy.firestoned.io/v1beta1\nkind: Bind9Instance\nmetadata: {name: a}\n\
              spec: {role: primary, rndcKey: {autoRotate: true, rotateAfter: 90d, algorithm: \
              hmac-sha384}}\n",
        )
        .expect("stdin accepts the manifest");
    let output = child.wait_with_output().expect("the binary finishes");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        stdout(&output),
        "-:1: Bind9Instance a: allowed\n1 object(s) checked: 1 allowed, 0 denied; 0 skipped (not \
         rndc-warden's)\n"
    );
}

#[test]
fn json_output_holds_every_object_skip_and_summary() {
    let output = run(&[
        "--output",
        "json",
        "--now",
        NOW,
        "examples",
        "tests/fixtures/seed",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("valid JSON");
    let summary = &report["summary"];
    assert_eq!(summary["checked"], 21);
    assert_eq!(summary["denied"], 8);
    assert_eq!(summary["skipped"], 3);
    assert_eq!(summary["errors"], 0);
    let first = &report["objects"][0];
    for field in [
        "source",
        "line",
        "apiVersion",
        "kind",
        "name",
        "allowed",
        "denials",
        "warnings",
        "patch",
    ] {
        assert!(first.get(field).is_some(), "missing {field} in {first}");
    }
    assert!(report["skipped"][0]["reason"].is_string());
}

#[test]
fn unreadable_input_is_exit_code_2_with_file_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "apiVersion: v1\nkind: ConfigMap\n---\nkind: [unclosed\nmetadata: {}\n",
    )
    .expect("written");
    let output = run(&[broken.to_str().expect("utf-8 path")]);
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(
        err.contains(&format!("error: {}:5:", broken.display())),
        "{err}"
    );
    let missing = run(&["no/such/file.yaml"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).starts_with("error: no/such/file.yaml: cannot read:"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn usage_errors_are_exit_code_2() {
    assert_eq!(run(&[]).status.code(), Some(2));
    assert_eq!(run(&["--output", "xml", "examples"]).status.code(), Some(2));
    let bad_policy = run(&["--default-algorithm", "hmac-md5", "examples/good"]);
    assert_eq!(bad_policy.status.code(), Some(2));
    assert!(stderr(&bad_policy).contains("the default algorithm hmac-md5 is on the deny list"));
}

#[test]
fn compliance_mode_comes_from_a_flag_or_the_environment() {
    let file = "examples/good/instance-secret-ref.yaml";
    let inline = "tests/fixtures/seed/03-role-level-cluster.yaml";
    assert_eq!(
        run(&["--require-auto-rotate", file, inline]).status.code(),
        Some(0)
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let manual = dir.path().join("manual.yaml");
    std::fs::write(
        &manual,
        "apiVersion: bindy.firestoned.io/v1beta1\nkind: Bind9Instance\nmetadata: {name: m}\nspec: \
         {clusterRef: \"\", role: primary}\n",
    )
    .expect("written");
    let path = manual.to_str().expect("utf-8 path");
    assert_eq!(run(&[path]).status.code(), Some(0));
    assert_eq!(run(&["--require-auto-rotate", path]).status.code(), Some(1));
    let via_env = check(&[path])
        .env("RNDC_WARDEN_REQUIRE_AUTO_ROTATE", "true")
        .output()
        .expect("runs");
    assert_eq!(via_env.status.code(), Some(1));
    assert!(stdout(&via_env).contains("policy requires automatic rotation"));
}

#[test]
fn color_is_used_only_when_asked_or_on_a_terminal() {
    let colored = run(&["--color", "always", "examples/bad/cluster-typo.yaml"]);
    assert!(stdout(&colored).contains("\x1b[1;31mDENIED\x1b[0m"));
    // Under the test harness stdout is a pipe, so `auto` means no color.
    let auto = run(&["examples/bad/cluster-typo.yaml"]);
    assert!(!stdout(&auto).contains('\x1b'));
}

#[test]
fn skipped_objects_are_counted_not_judged() {
    let output = run(&[
        "--color",
        "never",
        Path::new("tests/fixtures/seed/02-algorithm-selection.yaml")
            .to_str()
            .expect("utf-8"),
    ]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        stdout(&output),
        "0 object(s) checked: 0 allowed, 0 denied; 1 skipped (not rndc-warden's)\n"
    );
}
