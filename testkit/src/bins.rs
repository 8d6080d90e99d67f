//! Locating (and building once) the Kubernetes binaries: kube-apiserver, etcd, kubectl, helm.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::error::{Error, IoContext, Result};

/// Environment variable naming a directory that already holds the binaries.
pub const BIN_DIR_ENV: &str = "E2E_BIN_DIR";

/// Paths of the binaries a control plane needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    /// The directory holding all of them (put it on PATH for a shell).
    pub dir: PathBuf,
    /// `kube-apiserver`.
    pub kube_apiserver: PathBuf,
    /// `etcd`.
    pub etcd: PathBuf,
    /// `kubectl`.
    pub kubectl: PathBuf,
    /// `helm`.
    pub helm: PathBuf,
}

impl Binaries {
    /// Uses the binaries in `dir`, checking that each one exists and is executable.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let bin = |name: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            if is_executable(&path) {
                Ok(path)
            } else {
                Err(Error::MissingBinary(path))
            }
        };
        Ok(Self {
            kube_apiserver: bin("kube-apiserver")?,
            etcd: bin("etcd")?,
            kubectl: bin("kubectl")?,
            helm: bin("helm")?,
            dir,
        })
    }

    /// Finds the binaries once per process: `$E2E_BIN_DIR` if set, otherwise runs
    /// `scripts/e2e-bins.sh` (which builds them on first use and caches them by version outside
    /// the work tree) under a file lock, so that parallel test binaries never build twice.
    ///
    /// Fails with [`Error::GoMissing`] when a build is needed and Go is not installed.
    pub fn locate() -> Result<Self> {
        static FOUND: OnceLock<Result<Binaries, String>> = OnceLock::new();
        FOUND
            .get_or_init(|| Self::locate_uncached().map_err(|e| e.to_string()))
            .clone()
            .map_err(Error::Once)
    }

    fn locate_uncached() -> Result<Self> {
        if let Some(dir) = std::env::var_os(BIN_DIR_ENV).filter(|d| !d.is_empty()) {
            return Self::in_dir(PathBuf::from(dir));
        }
        let script = workspace_root().join("scripts/e2e-bins.sh");
        let cache = cache_root();
        fs::create_dir_all(&cache).ctx(|| format!("creating {}", cache.display()))?;
        let lock_path = cache.join("e2e-bins.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .ctx(|| format!("opening {}", lock_path.display()))?;
        lock.lock()
            .ctx(|| format!("locking {}", lock_path.display()))?;
        let result = run_build_script(&script);
        // Unlocking also happens when `lock` is closed; do it explicitly to keep the order clear.
        let _ = lock.unlock();
        result
    }
}

/// A tool one of the project's build scripts makes and caches (`scripts/promtool-bin.sh`,
/// `scripts/cert-manager-bins.sh`): the path in `env_var` when it is set, else the path the
/// script prints on its last line (it builds once, under a lock, and reuses its cache after).
pub fn built_by_script(script: &str, env_var: &str) -> Result<PathBuf> {
    let script_path = workspace_root().join(script);
    let path = match std::env::var_os(env_var).filter(|v| !v.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => {
            let script = &script_path;
            let cache = cache_root();
            fs::create_dir_all(&cache).ctx(|| format!("creating {}", cache.display()))?;
            let stem = script.file_stem().unwrap_or_default().to_string_lossy();
            let lock_path = cache.join(format!("{stem}.lock"));
            let lock = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .ctx(|| format!("opening {}", lock_path.display()))?;
            lock.lock()
                .ctx(|| format!("locking {}", lock_path.display()))?;
            let printed = script_output(script);
            let _ = lock.unlock();
            PathBuf::from(printed?)
        }
    };
    if path.exists() {
        Ok(path)
    } else {
        Err(Error::ProgramMissing {
            program: path.display().to_string(),
            hint: format!("build it with {} or set {env_var}", script_path.display()),
        })
    }
}

/// Runs the build script (its progress goes to our stderr) and returns the binaries it printed.
fn run_build_script(script: &Path) -> Result<Binaries> {
    Binaries::in_dir(script_output(script)?)
}

/// Runs a build script (its progress goes to our stderr) and returns its last non-empty line.
fn script_output(script: &Path) -> Result<String> {
    if which("go").is_none() {
        return Err(Error::GoMissing);
    }
    let output = Command::new("bash")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .ctx(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        return Err(Error::BinaryBuild {
            script: script.to_owned(),
            status: output.status,
        });
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let dir = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| Error::Invalid {
            what: "build script output",
            reason: format!("{} printed no path", script.display()),
        })?;
    Ok(dir.trim().to_owned())
}

/// The workspace root (the directory holding `scripts/` and the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.to_path_buf(), Path::to_path_buf)
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/rndc-warden`, where the binaries are cached.
pub fn cache_root() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("rndc-warden")
}

/// Finds `program` on PATH (and, for system daemons, in the sbin directories that are often
/// missing from a non-root PATH).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
