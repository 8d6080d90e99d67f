//! Running kubectl and helm against the control plane.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};

use tokio::io::AsyncWriteExt;

use crate::control_plane::ControlPlane;
use crate::error::{Error, IoContext, Result};

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    /// The command line, for messages.
    pub command: String,
    /// How it ended.
    pub status: ExitStatus,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
}

impl CommandOutput {
    /// Whether it exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// `Ok(self)` if it succeeded, else [`Error::Command`] with both outputs.
    pub fn ok(self) -> Result<Self> {
        if self.success() {
            Ok(self)
        } else {
            Err(Error::Command {
                command: self.command,
                status: self.status,
                stdout: self.stdout,
                stderr: self.stderr,
            })
        }
    }
}

/// Runs `program args…` with extra environment, optional stdin, and returns its output
/// (whatever the exit status; see [`CommandOutput::ok`]).
pub async fn run<I, S>(
    program: &Path,
    args: I,
    envs: &[(&str, &OsStr)],
    stdin: Option<&[u8]>,
) -> Result<CommandOutput>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let command_line = std::iter::once(program.as_os_str())
        .chain(args.iter().map(|a| a.as_os_str()))
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let mut command = tokio::process::Command::new(program);
    command
        .args(&args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in envs {
        command.env(key, value);
    }
    let mut child = command
        .spawn()
        .ctx(|| format!("starting `{command_line}`"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input)
            .await
            .ctx(|| format!("writing stdin of `{command_line}`"))?;
        drop(pipe);
    }
    let output = child
        .wait_with_output()
        .await
        .ctx(|| format!("waiting for `{command_line}`"))?;
    Ok(CommandOutput {
        command: command_line,
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

impl ControlPlane {
    /// Runs the built `kubectl` as admin (`--kubeconfig admin.kubeconfig`).
    pub async fn kubectl<I, S>(&self, args: I) -> Result<CommandOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kubectl_as(self.kubeconfig_path(), args, None).await
    }

    /// Runs `kubectl` with the given kubeconfig (e.g. an [`crate::Identity`]'s) and stdin
    /// (for `apply -f -`).
    pub async fn kubectl_as<I, S>(
        &self,
        kubeconfig: &Path,
        args: I,
        stdin: Option<&[u8]>,
    ) -> Result<CommandOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut full: Vec<std::ffi::OsString> =
            vec!["--kubeconfig".into(), kubeconfig.as_os_str().to_owned()];
        full.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        run(
            &self.binaries().kubectl,
            full,
            &[("KUBECONFIG", kubeconfig.as_os_str())],
            stdin,
        )
        .await
    }

    /// `kubectl apply -f -` of `manifest` as admin.
    pub async fn kubectl_apply(&self, manifest: &str) -> Result<CommandOutput> {
        self.kubectl_as(
            self.kubeconfig_path(),
            ["apply", "-f", "-"],
            Some(manifest.as_bytes()),
        )
        .await
    }

    /// Runs the built `helm` as admin, with `HELM_CACHE_HOME`/`HELM_CONFIG_HOME`/`HELM_DATA_HOME`
    /// in the run directory (never the developer's own helm state).
    pub async fn helm<I, S>(&self, args: I) -> Result<CommandOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let helm_home = self.run_dir().join("helm");
        let dirs = ["cache", "config", "data"].map(|d| helm_home.join(d));
        for dir in &dirs {
            std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        }
        let mut full: Vec<std::ffi::OsString> = vec![
            "--kubeconfig".into(),
            self.kubeconfig_path().as_os_str().to_owned(),
        ];
        full.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        run(
            &self.binaries().helm,
            full,
            &[
                ("KUBECONFIG", self.kubeconfig_path().as_os_str()),
                ("HELM_CACHE_HOME", dirs[0].as_os_str()),
                ("HELM_CONFIG_HOME", dirs[1].as_os_str()),
                ("HELM_DATA_HOME", dirs[2].as_os_str()),
            ],
            None,
        )
        .await
    }
}
