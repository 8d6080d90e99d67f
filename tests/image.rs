//! The container image (`Dockerfile`): it cannot be built on the development machine (no
//! container engine), so this checks what it is made of: the build stage runs exactly
//! `cargo build --release --locked --bin rndc-warden`, the runtime stage is a static, non-root
//! base without a shell, and the release binary it copies starts (`--version`, `serve --help`).
//! The binary's size is printed as the image-size estimate (run with `--nocapture`).

use std::path::PathBuf;
use std::process::Command;

const BUILD: &str = "cargo build --release --locked --bin rndc-warden";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn dockerfile() -> String {
    std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile exists")
}

#[test]
fn the_dockerfile_builds_a_static_binary_into_a_non_root_image_without_a_shell() {
    let text = dockerfile();
    let stages: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(
        stages.len(),
        2,
        "a build stage and a runtime stage: {stages:?}"
    );
    assert!(
        stages[0].contains("rust:") && stages[0].contains("-alpine"),
        "the build stage is Rust on Alpine (musl, statically linked): {}",
        stages[0]
    );
    assert!(
        stages[1].contains("gcr.io/distroless/static") && stages[1].contains(":nonroot"),
        "the runtime is distroless/static:nonroot (no shell, no libc): {}",
        stages[1]
    );
    assert!(text.contains(BUILD), "the build stage runs `{BUILD}`");
    assert!(text.contains("USER 65532:65532"), "runs as non-root");
    assert!(text.contains("ENTRYPOINT [\"/rndc-warden\"]"));
    assert!(text.contains("CMD [\"serve\"]"));
    assert!(
        !text.contains("/bin/sh") && !text.contains("SHELL"),
        "nothing in the runtime needs a shell"
    );
    // The build context keeps what the workspace manifest needs and drops the heavy rest.
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    for excluded in ["target", ".git"] {
        assert!(
            ignore.lines().any(|l| l == excluded),
            "{excluded} is ignored"
        );
    }
    for needed in [
        "src",
        "testkit",
        "xtask",
        "benches",
        "Cargo.lock",
        "Cargo.toml",
    ] {
        assert!(
            !ignore.lines().any(|l| l == needed),
            "{needed} must stay in the build context (the workspace needs it)"
        );
    }
}

#[test]
fn the_release_binary_the_image_copies_runs() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let args: Vec<&str> = BUILD.split_whitespace().skip(1).collect();
    let build = Command::new(cargo)
        .args(&args)
        .current_dir(root())
        .output()
        .expect("cargo runs");
    assert!(
        build.status.success(),
        "`{BUILD}` failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|dir| !dir.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let binary = target.join("release/rndc-warden");
    let size = std::fs::metadata(&binary).expect("release binary").len();
    let mib = size as f64 / (1024.0 * 1024.0);
    println!(
        "release binary: {mib:.1} MiB; image ≈ {:.1} MiB (distroless/static is about 2 MiB)",
        mib + 2.0
    );
    assert!(
        mib < 40.0,
        "the release binary is {mib:.1} MiB; the image should stay small (strip, LTO)"
    );

    let version = Command::new(&binary)
        .arg("--version")
        .output()
        .expect("binary runs");
    let stdout = String::from_utf8_lossy(&version.stdout);
    assert!(version.status.success(), "--version failed");
    assert_eq!(
        stdout.trim(),
        format!("rndc-warden {}", env!("CARGO_PKG_VERSION")),
        "--version"
    );
    let help = Command::new(&binary)
        .args(["serve", "--help"])
        .output()
        .expect("binary runs");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success(), "serve --help failed");
    for flag in [
        "--listen",
        "--probe-listen",
        "--cert-secret",
        "RNDC_WARDEN_WEBHOOK_CONFIGS",
    ] {
        assert!(text.contains(flag), "serve --help lacks {flag}:\n{text}");
    }
}
