//! Serving certificates for the admission listener: load from files or generate a self-signed
//! pair, reload on change (including the symlink swap Kubernetes uses for Secret volumes), keep the
//! last good configuration when a new one is broken, and optionally require client certificates.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};

use super::pki::{self, PemPair};

/// Why TLS material could not be loaded or generated.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The PEM content is not usable.
    #[error("{path}: {problem}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// rustls refused the certificate, key or client CA.
    #[error("invalid TLS configuration: {0}")]
    Config(String),
    /// Certificate generation failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Where the serving certificate and key come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA bundle that client certificates must chain to; `None` disables client auth.
    pub client_ca: Option<PathBuf>,
}

/// A freshly generated CA and serving certificate, written to a directory.
#[derive(Debug, Clone)]
pub struct GeneratedTls {
    /// The files to serve from.
    pub files: TlsFiles,
    /// The CA certificate (PEM) that clients must trust: the webhook `caBundle`.
    pub ca_path: PathBuf,
    /// The CA certificate as PEM text.
    pub ca_pem: String,
}

/// Generates a CA and a serving certificate for `dns_names` and `ips` (valid for `days`), and
/// writes `ca.crt`, `tls.crt` and `tls.key` into `dir` (the key with mode 0600).
pub fn generate_self_signed(
    dir: &Path,
    dns_names: &[String],
    ips: &[IpAddr],
    days: i64,
) -> Result<GeneratedTls, TlsError> {
    let lifetime = TimeDelta::days(days);
    let now = Utc::now();
    let ca = pki::new_ca("rndc-warden webhook CA", now, lifetime)?;
    let leaf = pki::sign_serving_cert(&ca, dns_names, ips, now, lifetime)?;
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let ca_path = dir.join("ca.crt");
    let files = TlsFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
        client_ca: None,
    };
    write_file(&ca_path, ca.cert.as_bytes(), 0o644)?;
    write_file(&files.cert, leaf.cert.as_bytes(), 0o644)?;
    write_file(&files.key, leaf.key.as_bytes(), 0o600)?;
    Ok(GeneratedTls {
        files,
        ca_path,
        ca_pem: ca.cert,
    })
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .and_then(|mut file| file.write_all(contents));
    result.map_err(|source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The bytes of the TLS files as last read, used to notice changes cheaply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint([u8; 32]);

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn fingerprint(parts: &[&[u8]]) -> Fingerprint {
    let mut digest = Sha256::new();
    for part in parts {
        digest.update((part.len() as u64).to_le_bytes());
        digest.update(part);
    }
    Fingerprint(digest.finalize().into())
}

/// PEM material read from the files, with its fingerprint.
struct Material {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<(PathBuf, Vec<u8>)>,
}

impl Material {
    fn read(files: &TlsFiles) -> Result<Self, TlsError> {
        Ok(Self {
            cert: read(&files.cert)?,
            key: read(&files.key)?,
            client_ca: match &files.client_ca {
                Some(path) => Some((path.clone(), read(path)?)),
                None => None,
            },
        })
    }

    /// When the leaf (first) certificate expires, in Unix seconds; `None` when it does not parse.
    fn not_after(&self) -> Option<i64> {
        pki::not_after(&self.cert)
    }

    fn fingerprint(&self) -> Fingerprint {
        let ca = self
            .client_ca
            .as_ref()
            .map_or(&[][..], |(_, pem)| pem.as_slice());
        fingerprint(&[&self.cert, &self.key, ca])
    }

    /// Builds a rustls server configuration (TLS 1.2 and 1.3 only). `origin` names where the
    /// certificate and key came from, for messages.
    fn build(&self, cert_origin: &Path, key_origin: &Path) -> Result<ServerConfig, TlsError> {
        let chain = parse_certs(cert_origin, &self.cert)?;
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|err| TlsError::Pem {
            path: key_origin.to_path_buf(),
            problem: format!("no usable private key ({err})"),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|err| TlsError::Config(err.to_string()))?;
        let builder = match &self.client_ca {
            Some((path, pem)) => {
                let mut roots = RootCertStore::empty();
                for cert in parse_certs(path, pem)? {
                    roots
                        .add(cert)
                        .map_err(|err| TlsError::Config(err.to_string()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|err| TlsError::Config(err.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|err| TlsError::Config(err.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// A built configuration with what identifies and dates its material.
struct Loaded {
    config: Arc<ServerConfig>,
    fingerprint: Fingerprint,
    not_after: Option<i64>,
}

impl Material {
    fn loaded(&self, cert_origin: &Path, key_origin: &Path) -> Result<Loaded, TlsError> {
        Ok(Loaded {
            config: Arc::new(self.build(cert_origin, key_origin)?),
            fingerprint: self.fingerprint(),
            not_after: self.not_after(),
        })
    }
}

/// Reads the files and builds a rustls server configuration.
fn load(files: &TlsFiles) -> Result<Loaded, TlsError> {
    Material::read(files)?.loaded(&files.cert, &files.key)
}

fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::Pem {
            path: path.to_path_buf(),
            problem: format!("unreadable certificate PEM ({err})"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            problem: "no CERTIFICATE block found".to_owned(),
        });
    }
    Ok(certs)
}

/// The outcome of one reload check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The files did not change.
    Unchanged,
    /// New material was loaded and is served to new connections.
    Reloaded,
    /// The files changed but are broken; the previous configuration is still served.
    KeptPrevious,
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
enum Source {
    /// Files, re-read by [`ReloadingTls::reload`].
    Files(TlsFiles),
    /// PEM handed over in memory by [`ReloadingTls::set_pem`] (self-managed certificates); an
    /// optional client CA still comes from a file.
    Memory { client_ca: Option<PathBuf> },
}

/// The current TLS configuration, swapped atomically when the files change.
#[derive(Debug)]
pub struct ReloadingTls {
    source: Source,
    current: RwLock<Loaded>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl ReloadingTls {
    /// Loads the files once; fails when they are missing or invalid (checked before binding).
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let loaded = load(&files)?;
        Ok(Self {
            source: Source::Files(files),
            current: RwLock::new(loaded),
        })
    }

    /// Serves `pair` from memory; later changes come through [`ReloadingTls::set_pem`].
    pub fn from_pem(pair: &PemPair, client_ca: Option<PathBuf>) -> Result<Self, TlsError> {
        let loaded = Self::build_pem(pair, client_ca.as_deref())?;
        Ok(Self {
            source: Source::Memory { client_ca },
            current: RwLock::new(loaded),
        })
    }

    fn build_pem(pair: &PemPair, client_ca: Option<&Path>) -> Result<Loaded, TlsError> {
        let material = Material {
            cert: pair.cert.as_bytes().to_vec(),
            key: pair.key.as_bytes().to_vec(),
            client_ca: match client_ca {
                Some(path) => Some((path.to_path_buf(), read(path)?)),
                None => None,
            },
        };
        let origin = Path::new("<in-memory serving certificate>");
        material.loaded(origin, origin)
    }

    /// Serves `pair` to new connections if it differs from the current material and is valid;
    /// otherwise keeps the current configuration.
    pub fn set_pem(&self, pair: &PemPair) -> ReloadOutcome {
        let client_ca = match &self.source {
            Source::Memory { client_ca } => client_ca.as_deref(),
            Source::Files(files) => files.client_ca.as_deref(),
        };
        match Self::build_pem(pair, client_ca) {
            Ok(loaded) if loaded.fingerprint == self.fingerprint() => ReloadOutcome::Unchanged,
            Ok(loaded) => {
                self.swap(loaded);
                tracing::info!("now serving the renewed self-managed certificate");
                ReloadOutcome::Reloaded
            }
            Err(error) => {
                tracing::warn!(%error, "the new serving certificate is invalid; still serving the previous one");
                ReloadOutcome::KeptPrevious
            }
        }
    }

    fn read_current<T>(&self, field: impl FnOnce(&Loaded) -> T) -> T {
        match self.current.read() {
            Ok(guard) => field(&guard),
            Err(poisoned) => field(&poisoned.into_inner()),
        }
    }

    fn fingerprint(&self) -> Fingerprint {
        self.read_current(|loaded| loaded.fingerprint.clone())
    }

    fn swap(&self, loaded: Loaded) {
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = loaded;
    }

    /// The configuration new connections use.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.read_current(|loaded| loaded.config.clone())
    }

    /// When the served leaf certificate expires, in Unix seconds (`None` if it does not parse as
    /// X.509, which rustls would have refused anyway).
    pub fn not_after(&self) -> Option<i64> {
        self.read_current(|loaded| loaded.not_after)
    }

    /// Re-reads the files (following symlinks) and swaps the configuration when their content
    /// changed and is valid.
    pub fn reload(&self) -> ReloadOutcome {
        let Source::Files(files) = &self.source else {
            return ReloadOutcome::Unchanged;
        };
        let previous = self.fingerprint();
        match load(files) {
            Ok(loaded) if loaded.fingerprint == previous => ReloadOutcome::Unchanged,
            Ok(loaded) => {
                self.swap(loaded);
                tracing::info!(cert = %files.cert.display(), "reloaded the serving certificate");
                ReloadOutcome::Reloaded
            }
            Err(error) => {
                // Half-written files during a swap look broken too: log and try again next tick.
                if Material::read(files).map_or(true, |m| m.fingerprint() != previous) {
                    tracing::warn!(%error, "new TLS material is invalid; still serving the previous certificate");
                    ReloadOutcome::KeptPrevious
                } else {
                    ReloadOutcome::Unchanged
                }
            }
        }
    }

    /// Checks the files every `interval` until `shutdown` resolves, reporting each outcome.
    pub async fn watch(
        self: Arc<Self>,
        interval: Duration,
        mut on_outcome: impl FnMut(ReloadOutcome) + Send,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = ticker.tick() => {
                    let this = self.clone();
                    let outcome = tokio::task::spawn_blocking(move || this.reload())
                        .await
                        .unwrap_or(ReloadOutcome::KeptPrevious);
                    on_outcome(outcome);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generated(dir: &Path) -> GeneratedTls {
        generate_self_signed(
            dir,
            &["localhost".to_owned()],
            &["127.0.0.1".parse().expect("ip")],
            30,
        )
        .expect("generate")
    }

    #[test]
    fn generated_material_loads_and_the_key_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = generated(dir.path());
        assert!(ReloadingTls::load(tls.files.clone()).is_ok());
        let mode = std::fs::metadata(&tls.files.key)
            .expect("key")
            .permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
        assert!(tls.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn missing_files_name_the_path() {
        let files = TlsFiles {
            cert: "/nonexistent/tls.crt".into(),
            key: "/nonexistent/tls.key".into(),
            client_ca: None,
        };
        let error = ReloadingTls::load(files).expect_err("must fail");
        assert!(
            error.to_string().contains("/nonexistent/tls.crt"),
            "{error}"
        );
    }

    #[test]
    fn a_key_file_without_a_key_is_rejected_with_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = generated(dir.path());
        std::fs::write(&tls.files.key, "not a key").expect("write");
        let error = ReloadingTls::load(tls.files).expect_err("must fail");
        assert!(error.to_string().contains("tls.key"), "{error}");
    }

    #[test]
    fn reload_swaps_on_change_and_keeps_the_previous_config_when_broken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = generated(dir.path());
        let reloading = ReloadingTls::load(tls.files.clone()).expect("load");
        assert_eq!(reloading.reload(), ReloadOutcome::Unchanged);
        let before = reloading.config();

        let other = tempfile::tempdir().expect("tempdir");
        let fresh = generated(other.path());
        std::fs::copy(&fresh.files.cert, &tls.files.cert).expect("copy");
        std::fs::copy(&fresh.files.key, &tls.files.key).expect("copy");
        assert_eq!(reloading.reload(), ReloadOutcome::Reloaded);
        assert!(!Arc::ptr_eq(&before, &reloading.config()));
        let expected = Utc::now() + TimeDelta::days(30);
        let not_after = reloading.not_after().expect("leaf expiry");
        assert!((not_after - expected.timestamp()).abs() < 60, "{not_after}");

        let good = reloading.config();
        std::fs::write(&tls.files.cert, "garbage").expect("write");
        assert_eq!(reloading.reload(), ReloadOutcome::KeptPrevious);
        assert!(Arc::ptr_eq(&good, &reloading.config()));
    }
}
