//! The one error type of the testkit.

use std::path::PathBuf;
use std::process::ExitStatus;

/// Everything that can go wrong while preparing or driving the local test environment.
///
/// `Debug` prints the same text as `Display` (multi-line logs stay readable in `expect` panics).
#[derive(thiserror::Error)]
pub enum Error {
    /// Go is needed to build the Kubernetes binaries and is not on PATH.
    #[error(
        "Go is not installed (no `go` on PATH). The end-to-end tests build kube-apiserver, etcd, \
         kubectl and helm from the Go module proxy and need Go >= 1.26: install it \
         (https://go.dev/doc/install, or /usr/local/go/bin on PATH), or set E2E_BIN_DIR to a \
         directory that already holds those binaries"
    )]
    GoMissing,

    /// A required program (named, rndc, ...) is not installed.
    #[error("`{program}` was not found: {hint}")]
    ProgramMissing {
        /// The program looked for.
        program: String,
        /// What to install.
        hint: String,
    },

    /// `scripts/e2e-bins.sh` failed.
    #[error("building the e2e binaries with {script} failed ({status}); its output is above")]
    BinaryBuild {
        /// The script that was run.
        script: PathBuf,
        /// How it ended.
        status: ExitStatus,
    },

    /// The binary directory lacks an expected binary.
    #[error("{0} is missing or not executable (check E2E_BIN_DIR or run scripts/e2e-bins.sh)")]
    MissingBinary(PathBuf),

    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Certificate generation failed.
    #[error("generating certificates: {0}")]
    Cert(#[from] rcgen::Error),

    /// TLS configuration failed.
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),

    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    /// A kubeconfig could not be loaded.
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),

    /// (De)serialising JSON failed.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),

    /// (De)serialising YAML failed.
    #[error("YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),

    /// A control-plane process did not become ready in time or exited early.
    #[error("{what} did not become ready: {reason}\n{logs}")]
    NotReady {
        /// Which process.
        what: String,
        /// Why it is considered failed.
        reason: String,
        /// The tails of the relevant log files.
        logs: String,
    },

    /// A condition polled for did not come true before the deadline.
    #[error("timed out after {seconds} s waiting for {what}{detail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The timeout.
        seconds: u64,
        /// The last observation, if any (starts with a separator).
        detail: String,
    },

    /// A command exited unsuccessfully where success was required.
    #[error("`{command}` failed ({status}):\nstdout:\n{stdout}\nstderr:\n{stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// Its standard output.
        stdout: String,
        /// Its standard error.
        stderr: String,
    },

    /// Input (a key file, a metrics exposition, ...) could not be understood.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was parsed.
        what: &'static str,
        /// Why it is invalid.
        reason: String,
    },

    /// A once-per-process step (locating the binaries, starting the shared control plane)
    /// failed; the message is remembered and every later caller gets it.
    #[error("{0}")]
    Once(String),
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The testkit's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Adds context to I/O results.
pub(crate) trait IoContext<T> {
    /// Maps an I/O error to [`Error::Io`] with a lazily built context.
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}
