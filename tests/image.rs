//! The container image (`Dockerfile`): it cannot be built on the development machine (no
//! container engine), so this checks what it is made of: the build stage runs exactly
//! `cargo build --release --locked --bin rndc-warden`, the runtime stage is a static, non-root
//! base without a shell, and the release binary it copies starts (`--version`, `serve --help`).
//! The binary's size is printed as the image-size estimate (run with `--nocapture`).
//!
//! The image the node tests run (`scripts/warden-image.sh`, assembled without a container
//! engine) is compared with the Dockerfile's final stage: entrypoint, command, user, environment,
//! ports, and the files in its one layer (the static binary and the distroless base's files, no
//! shell, nothing else).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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

/// The image `scripts/warden-image.sh` assembles (`WARDEN_IMAGE_DIR`, or the script's output):
/// the static release binary, `image.tar` (OCI layout) and `image.name`.
fn assembled_image() -> PathBuf {
    rndc_warden_testkit::bins::built_by_script("scripts/warden-image.sh", "WARDEN_IMAGE_DIR")
        .unwrap_or_else(|error| panic!("the assembled image is needed: {error}"))
}

#[test]
fn the_release_binary_the_image_copies_runs() {
    let binary = assembled_image().join("rndc-warden");
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

/// The final stage of the Dockerfile: its `ENV`, `USER`, `EXPOSE`, `ENTRYPOINT` and `CMD`.
#[derive(Debug, Default)]
struct FinalStage {
    env: BTreeMap<String, String>,
    user: String,
    exposed: Vec<String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    copied: Vec<String>,
}

fn final_stage(dockerfile: &str) -> FinalStage {
    let last = dockerfile
        .rsplit_once("\nFROM ")
        .map(|(_, stage)| stage)
        .expect("a final stage");
    let mut stage = FinalStage::default();
    let exec_form = |rest: &str| -> Vec<String> {
        serde_json::from_str(rest.trim()).expect("exec-form (JSON array) instruction")
    };
    for line in last.lines() {
        let Some((instruction, rest)) = line.split_once(' ') else {
            continue;
        };
        match instruction {
            "ENV" => {
                for pair in rest.split_whitespace() {
                    let (k, v) = pair.split_once('=').expect("ENV key=value");
                    stage.env.insert(k.to_owned(), v.to_owned());
                }
            }
            "USER" => stage.user = rest.trim().to_owned(),
            "EXPOSE" => stage
                .exposed
                .extend(rest.split_whitespace().map(|p| format!("{p}/tcp"))),
            "ENTRYPOINT" => stage.entrypoint = exec_form(rest),
            "CMD" => stage.cmd = exec_form(rest),
            "COPY" => stage.copied.push(
                rest.split_whitespace()
                    .last()
                    .unwrap_or_default()
                    .to_owned(),
            ),
            _ => {}
        }
    }
    stage
}

fn untar(tar: &Path, into: &Path) {
    std::fs::create_dir_all(into).expect("directory");
    let out = Command::new("tar")
        .arg("-xf")
        .arg(tar)
        .arg("-C")
        .arg(into)
        .output()
        .expect("tar runs");
    assert!(out.status.success(), "tar -xf {}: {:?}", tar.display(), out);
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("readable")).expect("JSON")
}

/// Whether an ELF file asks for a program interpreter (a dynamic loader).
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF", "an ELF file");
    assert_eq!(elf[4], 2, "64-bit ELF");
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    (0..count).any(|i| {
        let at = phoff + i * size;
        u32::from_le_bytes(elf[at..at + 4].try_into().expect("4 bytes")) == PT_INTERP
    })
}

#[test]
fn the_assembled_image_agrees_with_the_dockerfile() {
    let dir = assembled_image();
    let stage = final_stage(&dockerfile());
    let work = tempfile::tempdir().expect("temporary directory");
    let layout = work.path().join("layout");
    untar(&dir.join("image.tar"), &layout);

    let index = json(&layout.join("index.json"));
    let manifest_ref = &index["manifests"][0];
    let name = std::fs::read_to_string(dir.join("image.name")).expect("image.name");
    assert_eq!(
        manifest_ref["annotations"]["io.containerd.image.name"],
        name.trim(),
        "the image imports under the name the script reports"
    );
    let manifest = json(&blob(
        &layout,
        manifest_ref["digest"].as_str().expect("digest"),
    ));
    let config = json(&blob(
        &layout,
        manifest["config"]["digest"].as_str().expect("digest"),
    ));
    let runtime = &config["config"];
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        strings(&runtime["Entrypoint"]),
        stage.entrypoint,
        "ENTRYPOINT"
    );
    assert_eq!(strings(&runtime["Cmd"]), stage.cmd, "CMD");
    assert_eq!(runtime["User"], stage.user.as_str(), "USER");
    let env: BTreeMap<String, String> = strings(&runtime["Env"])
        .iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    for (key, value) in &stage.env {
        assert_eq!(env.get(key), Some(value), "ENV {key}");
    }
    let mut exposed: Vec<String> = runtime["ExposedPorts"]
        .as_object()
        .map(|ports| ports.keys().cloned().collect())
        .unwrap_or_default();
    exposed.sort();
    let mut expected = stage.exposed.clone();
    expected.sort();
    assert_eq!(exposed, expected, "EXPOSE");

    // One layer: the copied binary and distroless/static's own files, nothing that runs a shell.
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "one layer");
    let rootfs = work.path().join("rootfs");
    untar(
        &blob(&layout, layers[0]["digest"].as_str().expect("digest")),
        &rootfs,
    );
    let mut files = Vec::new();
    for entry in walk(&rootfs) {
        let relative = entry.strip_prefix(&rootfs).expect("under the root");
        files.push(format!("/{}", relative.display()));
    }
    files.sort();
    let base = [
        "/etc/group",
        "/etc/passwd",
        "/etc/ssl/certs/ca-certificates.crt",
    ];
    for file in &files {
        assert!(
            stage.copied.contains(file) || base.contains(&file.as_str()),
            "{file} is neither copied by the Dockerfile nor part of distroless/static"
        );
    }
    for copied in &stage.copied {
        assert!(files.contains(copied), "the image lacks {copied}");
    }
    for shell in ["/bin/sh", "/bin/bash", "/usr/bin/sh", "/bin/busybox"] {
        assert!(
            !rootfs.join(&shell[1..]).exists(),
            "{shell} is in the image"
        );
    }
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).expect("passwd");
    let (uid, gid) = stage.user.split_once(':').expect("USER uid:gid");
    assert!(
        passwd
            .lines()
            .any(|l| l.split(':').nth(2) == Some(uid) && l.split(':').nth(3) == Some(gid)),
        "/etc/passwd has the user {uid}:{gid}:\n{passwd}"
    );
    let binary = std::fs::read(rootfs.join("rndc-warden")).expect("the binary");
    assert!(
        !has_interpreter(&binary),
        "/rndc-warden is static (no program interpreter), as on distroless/static"
    );
    assert_eq!(
        binary,
        std::fs::read(dir.join("rndc-warden")).expect("the built binary"),
        "the image holds the binary the other tests ran"
    );
}

/// Every regular file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readable").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
