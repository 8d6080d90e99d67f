//! Child processes that are always cleaned up: SIGTERM, then SIGKILL after a grace period.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::{IoContext, Result};

/// How a spawned process is tied to its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// The child gets SIGKILL when the thread that spawned it exits (`PR_SET_PDEATHSIG`), so a
    /// crashed or killed test binary leaves nothing behind. Spawn from a long-lived thread.
    TiedToParent,
    /// The child runs in its own session and outlives its parent (`cargo xtask cluster up`).
    Detached,
}

/// A running child whose output goes to a log file.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl ManagedProcess {
    /// Spawns `command` with stdin closed and stdout+stderr appended to `log`.
    pub fn spawn(
        name: &str,
        mut command: Command,
        log: &Path,
        lifetime: Lifetime,
    ) -> Result<ManagedProcess> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .ctx(|| format!("opening log {}", log.display()))?;
        let err = out
            .try_clone()
            .ctx(|| format!("duplicating log {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        // SAFETY: the closures only call async-signal-safe functions (prctl, getppid, kill,
        // setsid) between fork and exec.
        unsafe {
            match lifetime {
                Lifetime::TiedToParent => {
                    let parent = libc::getpid();
                    command.pre_exec(move || {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        // The parent may have died before prctl took effect.
                        if libc::getppid() != parent {
                            libc::kill(libc::getpid(), libc::SIGKILL);
                        }
                        Ok(())
                    });
                }
                Lifetime::Detached => {
                    command.pre_exec(|| {
                        if libc::setsid() < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }
        }
        let child = command
            .spawn()
            .ctx(|| format!("starting {name} ({:?})", command.get_program()))?;
        Ok(ManagedProcess {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
            exited: None,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `Some(status)` once the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Sends `signal` (a `libc::SIG*` value) unless the process has already exited.
    pub fn signal(&mut self, signal: i32) {
        if self.exit_status().is_none() {
            // SAFETY: plain kill(2) on our own, not yet reaped, child.
            unsafe {
                libc::kill(self.pid() as libc::pid_t, signal);
            }
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; always reaps the child.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
        self.exited
    }

    /// Forgets the child without stopping it (it keeps running; used when detaching).
    pub fn into_pid(self) -> u32 {
        let pid = self.pid();
        std::mem::forget(self);
        pid
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// The last `max_bytes` of a log file (lossy UTF-8), for failure messages.
pub fn log_tail(path: &Path, max_bytes: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max_bytes);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let prefix = if start > 0 { "…" } else { "" };
    format!(
        "----- {} (last {} bytes) -----\n{prefix}{text}",
        path.display(),
        buf.len()
    )
}

/// Whether a process with this pid exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name: "pid (comm) S ...".
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The command line of a process (arguments joined by spaces), if it exists.
pub fn pid_cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Stops a process that is not our child (a detached control plane): SIGTERM, then SIGKILL after
/// `grace`; returns once it is gone. `expect_in_cmdline` guards against a recycled pid.
pub fn stop_pid(pid: u32, expect_in_cmdline: &str, grace: Duration) -> bool {
    let ours = || pid_cmdline(pid).is_some_and(|c| c.contains(expect_in_cmdline));
    if !pid_alive(pid) || !ours() {
        return true;
    }
    // SAFETY: kill(2) on a pid verified above to run our binary.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !pid_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if ours() {
        // SAFETY: as above.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !pid_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Picks `n` distinct free TCP ports on 127.0.0.1 (bound together, then released).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").ctx(|| "binding a free port".into()))
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .ctx(|| "reading a bound port".into())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_terminates_and_reaps_a_child() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("sleep.log");
        let mut command = Command::new("sleep");
        command.arg("600");
        let mut p = ManagedProcess::spawn("sleep", command, &log, Lifetime::TiedToParent)
            .expect("spawn sleep");
        let pid = p.pid();
        assert!(pid_alive(pid));
        let status = p.stop(Duration::from_secs(5)).expect("exit status");
        assert!(!status.success());
        assert!(!pid_alive(pid), "sleep {pid} still alive after stop");
    }

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let ports = free_ports(4).expect("ports");
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 4);
        for port in ports {
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("port is free again");
        }
    }
}
