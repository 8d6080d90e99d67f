//! A real BIND9 `named` with an rndc control channel on a loopback port, for checking which RNDC
//! key it accepts.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::bins::which;
use crate::control_plane::write_file;
use crate::error::{Error, IoContext, Result};
use crate::process::{Lifetime, ManagedProcess, free_ports, log_tail};
use crate::wait::POLL_INTERVAL;

/// How long `named` gets to start answering rndc, and to pick up a reloaded key.
pub const NAMED_TIMEOUT: Duration = Duration::from_secs(30);

const INSTALL_HINT: &str =
    "install BIND9: `apt-get install bind9 bind9-utils` (Debian/Ubuntu; named is in /usr/sbin)";

/// Generates an RNDC key file (`key "<name>" { algorithm <alg>; secret "<b64>"; };`) with a
/// random secret as long as the hash output, like `tsig-keygen`/`rndc-confgen` do.
pub fn generate_key(name: &str, algorithm: &str) -> Result<String> {
    let len = match algorithm {
        "hmac-md5" => 16,
        "hmac-sha1" => 20,
        "hmac-sha224" => 28,
        "hmac-sha256" => 32,
        "hmac-sha384" => 48,
        "hmac-sha512" => 64,
        other => {
            return Err(Error::Invalid {
                what: "algorithm",
                reason: other.to_owned(),
            });
        }
    };
    let mut secret = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .ctx(|| "reading /dev/urandom".into())?;
    Ok(format!(
        "key \"{name}\" {{\n\talgorithm {algorithm};\n\tsecret \"{}\";\n}};\n",
        B64.encode(secret)
    ))
}

/// The name of the (first) key in a BIND key file.
pub fn key_name(key_file: &str) -> Result<String> {
    let invalid = || Error::Invalid {
        what: "rndc key file",
        reason: "no `key \"<name>\" { ... };` statement".into(),
    };
    let mut rest = key_file;
    loop {
        let at = rest.find("key").ok_or_else(invalid)?;
        let before_ok = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace() || c == ';' || c == '}');
        let after = rest[at + 3..].trim_start();
        if before_ok && rest[at + 3..].starts_with(char::is_whitespace) {
            let name = if let Some(quoted) = after.strip_prefix('"') {
                quoted.split('"').next().unwrap_or_default()
            } else {
                after
                    .split(|c: char| c.is_whitespace() || c == '{')
                    .next()
                    .unwrap_or_default()
            };
            if name.is_empty() {
                return Err(invalid());
            }
            return Ok(name.to_owned());
        }
        rest = &rest[at + 3..];
    }
}

/// A running `named -g` whose only job is its rndc control channel on 127.0.0.1:`port`
/// (`listen-on { none; }`: it serves no DNS). Runs as the current user; everything lives in a
/// temporary directory removed on drop.
pub struct Named {
    dir: tempfile::TempDir,
    port: u16,
    conf: PathBuf,
    key_file: PathBuf,
    process: Option<ManagedProcess>,
    rndc: PathBuf,
}

impl std::fmt::Debug for Named {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Named")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Named {
    /// Starts `named` with `key_file_contents` as its rndc key and waits (polling `rndc status`)
    /// until the control channel accepts that key.
    pub async fn start(key_file_contents: &str) -> Result<Named> {
        let named = which("named").ok_or_else(|| Error::ProgramMissing {
            program: "named".into(),
            hint: INSTALL_HINT.into(),
        })?;
        let rndc = which("rndc").ok_or_else(|| Error::ProgramMissing {
            program: "rndc".into(),
            hint: INSTALL_HINT.into(),
        })?;
        let dir = tempfile::Builder::new()
            .prefix("rndc-warden-named-")
            .tempdir()
            .ctx(|| "creating named's directory".into())?;
        let port = free_ports(1)?[0];
        let mut this = Named {
            conf: dir.path().join("named.conf"),
            key_file: dir.path().join("rndc.key"),
            dir,
            port,
            process: None,
            rndc,
        };
        this.swap_key(key_file_contents)?;
        let mut command = Command::new(named);
        command.arg("-g").arg("-c").arg(&this.conf);
        let log = this.dir.path().join("named.log");
        this.process = Some(ManagedProcess::spawn(
            "named",
            command,
            &log,
            Lifetime::TiedToParent,
        )?);
        this.wait_current_key_accepted("named to accept rndc")
            .await?;
        Ok(this)
    }

    /// The rndc control port on 127.0.0.1.
    pub fn control_port(&self) -> u16 {
        self.port
    }

    /// The key file named includes (what a reload re-reads).
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// named's process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ManagedProcess::pid)
    }

    /// Replaces the key file (and the configuration, if the key's name changed). named does not
    /// notice until [`Named::reload`].
    pub fn swap_key(&self, key_file_contents: &str) -> Result<()> {
        let name = key_name(key_file_contents)?;
        let dir = self.dir.path().display();
        let conf = format!(
            r#"options {{
    directory "{dir}";
    pid-file "{dir}/named.pid";
    session-keyfile "{dir}/session.key";
    managed-keys-directory "{dir}";
    listen-on {{ none; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
}};
include "{key}";
controls {{
    inet 127.0.0.1 port {port} allow {{ 127.0.0.1; }} keys {{ "{name}"; }};
}};
"#,
            key = self.key_file.display(),
            port = self.port,
        );
        write_file(&self.key_file, key_file_contents, true)?;
        write_file(&self.conf, &conf, false)
    }

    /// Sends SIGHUP and waits until the key now in [`Named::key_file`] is accepted.
    pub async fn reload(&mut self) -> Result<()> {
        if let Some(p) = self.process.as_mut() {
            p.signal(libc::SIGHUP);
        }
        self.wait_current_key_accepted("named to reload its rndc key")
            .await
    }

    /// Runs `rndc status` against this named with the key in `key_file`: `Ok(true)` if accepted,
    /// `Ok(false)` if refused, an error if named is not reachable at all.
    pub async fn rndc_status(&self, key_file: &Path) -> Result<bool> {
        rndc_status_in(&self.rndc, self.dir.path(), key_file, self.port).await
    }

    /// [`Named::rndc_status`] with a key given by its file contents.
    pub async fn rndc_status_with(&self, key_file_contents: &str) -> Result<bool> {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = self
            .dir
            .path()
            .join(format!("probe-{}.key", N.fetch_add(1, Ordering::Relaxed)));
        write_file(&path, key_file_contents, true)?;
        let result = self.rndc_status(&path).await;
        let _ = std::fs::remove_file(&path);
        result
    }

    /// named's log (stderr of `-g`).
    pub fn logs(&self) -> String {
        log_tail(&self.dir.path().join("named.log"), 8 * 1024)
    }

    /// Stops named (SIGTERM, then SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop(Duration::from_secs(10));
        }
    }

    async fn wait_current_key_accepted(&mut self, what: &str) -> Result<()> {
        let deadline = Instant::now() + NAMED_TIMEOUT;
        let mut last;
        loop {
            if let Some(status) = self.process.as_mut().and_then(|p| p.exit_status()) {
                return Err(Error::NotReady {
                    what: "named".into(),
                    reason: format!("it exited ({status})"),
                    logs: self.logs(),
                });
            }
            match self.rndc_status(&self.key_file).await {
                Ok(true) => return Ok(()),
                Ok(false) => last = "the key was refused".into(),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    what: what.into(),
                    reason: format!("timed out after {NAMED_TIMEOUT:?}: {last}"),
                    logs: self.logs(),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

/// Runs `rndc status` against a `named` on 127.0.0.1:`port` (e.g. in a hostNetwork pod) with
/// the key file `key_file_contents`: `Ok(true)` if accepted, `Ok(false)` if refused, an error if
/// nothing answers. The key is written to a private temporary file, never printed.
pub async fn rndc_status_at(port: u16, key_file_contents: &str) -> Result<bool> {
    let rndc = which("rndc").ok_or_else(|| Error::ProgramMissing {
        program: "rndc".into(),
        hint: INSTALL_HINT.into(),
    })?;
    let dir = tempfile::Builder::new()
        .prefix("rndc-warden-rndc-")
        .tempdir()
        .ctx(|| "creating a directory for rndc".into())?;
    let key = dir.path().join("rndc.key");
    write_file(&key, key_file_contents, true)?;
    rndc_status_in(&rndc, dir.path(), &key, port).await
}

async fn rndc_status_in(rndc: &Path, dir: &Path, key_file: &Path, port: u16) -> Result<bool> {
    static N: AtomicU64 = AtomicU64::new(0);
    let contents =
        std::fs::read_to_string(key_file).ctx(|| format!("reading {}", key_file.display()))?;
    let name = key_name(&contents)?;
    // An explicit rndc.conf: `-k` alone is ignored when /etc/bind/rndc.conf exists.
    let conf = dir.join(format!("rndc-{}.conf", N.fetch_add(1, Ordering::Relaxed)));
    write_file(
        &conf,
        &format!(
            "include \"{}\";\noptions {{ default-key \"{name}\"; default-server 127.0.0.1; default-port {port}; }};\n",
            key_file.display(),
        ),
        true,
    )?;
    let run = tokio::process::Command::new(rndc)
        .arg("-c")
        .arg(&conf)
        .arg("status")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .map_err(|_| Error::Timeout {
            what: "rndc status".into(),
            seconds: 20,
            detail: String::new(),
        })?
        .ctx(|| "running rndc".into());
    let _ = std::fs::remove_file(&conf);
    let output = output?;
    if output.status.success() {
        return Ok(true);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("connection refused") || stderr.contains("connect failed") {
        return Err(Error::Command {
            command: format!("rndc -c {} status", conf.display()),
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: stderr.into_owned(),
        });
    }
    Ok(false)
}

impl Drop for Named {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_key_names() {
        let generated = generate_key("rndc-key", "hmac-sha256").expect("key");
        assert_eq!(key_name(&generated).expect("name"), "rndc-key");
        assert_eq!(
            key_name("# monkey business\nkey bindy-operator {\n algorithm hmac-sha512; };")
                .expect("unquoted"),
            "bindy-operator"
        );
        assert!(key_name("options { };").is_err());
        let secret = generated
            .split('"')
            .nth(3)
            .expect("secret between the 3rd and 4th quotes");
        assert_eq!(B64.decode(secret).expect("base64").len(), 32);
        assert!(generate_key("k", "hmac-sha3").is_err());
    }
}
