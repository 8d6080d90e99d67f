//! Serving certificates for the admission listener: load from files or generate a self-signed
//! pair, reload on change (including the symlink swap Kubernetes uses for Secret volumes), keep the
//! last good configuration when a new one is broken, and optionally require client certificates.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};

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
    let now = time_now();
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = distinguished_name("rndc-warden webhook CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now - rcgen_days(1);
    ca_params.not_after = now + rcgen_days(days);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(dns_names.to_vec())?;
    leaf.subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    leaf.distinguished_name = distinguished_name(dns_names.first().map_or("rndc-warden", |n| n));
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.not_before = now - rcgen_days(1);
    leaf.not_after = now + rcgen_days(days);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let ca_pem = ca_cert.pem();
    let ca_path = dir.join("ca.crt");
    let files = TlsFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
        client_ca: None,
    };
    write_file(&ca_path, ca_pem.as_bytes(), 0o644)?;
    write_file(&files.cert, leaf_cert.pem().as_bytes(), 0o644)?;
    write_file(&files.key, leaf_key.serialize_pem().as_bytes(), 0o600)?;
    Ok(GeneratedTls {
        files,
        ca_path,
        ca_pem,
    })
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn rcgen_days(days: i64) -> time::Duration {
    time::Duration::days(days)
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

/// Reads the files and builds a rustls server configuration (TLS 1.2 and 1.3 only).
fn load(files: &TlsFiles) -> Result<(ServerConfig, Fingerprint), TlsError> {
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let client_ca_pem = files.client_ca.as_deref().map(read).transpose()?;
    let mut digest = Sha256::new();
    digest.update(&cert_pem);
    digest.update(&key_pem);
    if let Some(ca) = &client_ca_pem {
        digest.update(ca);
    }
    let fingerprint = Fingerprint(digest.finalize().into());

    let chain = parse_certs(&files.cert, &cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|err| TlsError::Pem {
        path: files.key.clone(),
        problem: format!("no usable private key ({err})"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| TlsError::Config(err.to_string()))?;
    let builder = match (&files.client_ca, client_ca_pem) {
        (Some(path), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for cert in parse_certs(path, &pem)? {
                roots
                    .add(cert)
                    .map_err(|err| TlsError::Config(err.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|err| TlsError::Config(err.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|err| TlsError::Config(err.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, fingerprint))
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

/// The current TLS configuration, swapped atomically when the files change.
#[derive(Debug)]
pub struct ReloadingTls {
    files: TlsFiles,
    current: RwLock<(Arc<ServerConfig>, Fingerprint)>,
}

impl ReloadingTls {
    /// Loads the files once; fails when they are missing or invalid (checked before binding).
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let (config, fingerprint) = load(&files)?;
        Ok(Self {
            files,
            current: RwLock::new((Arc::new(config), fingerprint)),
        })
    }

    /// The configuration new connections use.
    pub fn config(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(guard) => guard.0.clone(),
            Err(poisoned) => poisoned.into_inner().0.clone(),
        }
    }

    /// Re-reads the files (following symlinks) and swaps the configuration when their content
    /// changed and is valid.
    pub fn reload(&self) -> ReloadOutcome {
        let previous = match self.current.read() {
            Ok(guard) => guard.1.clone(),
            Err(poisoned) => poisoned.into_inner().1.clone(),
        };
        match load(&self.files) {
            Ok((_, fingerprint)) if fingerprint == previous => ReloadOutcome::Unchanged,
            Ok((config, fingerprint)) => {
                let mut guard = match self.current.write() {
                    Ok(guard) => guard,
                    Err(poisoned) => poisoned.into_inner(),
                };
                *guard = (Arc::new(config), fingerprint);
                tracing::info!(cert = %self.files.cert.display(), "reloaded the serving certificate");
                ReloadOutcome::Reloaded
            }
            Err(error) => {
                // Half-written files during a swap look broken too: log and try again next tick.
                if self.files_changed_since(&previous) {
                    tracing::warn!(%error, "new TLS material is invalid; still serving the previous certificate");
                    ReloadOutcome::KeptPrevious
                } else {
                    ReloadOutcome::Unchanged
                }
            }
        }
    }

    fn files_changed_since(&self, previous: &Fingerprint) -> bool {
        let mut digest = Sha256::new();
        for path in [
            Some(&self.files.cert),
            Some(&self.files.key),
            self.files.client_ca.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            match std::fs::read(path) {
                Ok(bytes) => digest.update(&bytes),
                Err(_) => return true,
            }
        }
        Fingerprint(digest.finalize().into()) != *previous
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

        let good = reloading.config();
        std::fs::write(&tls.files.cert, "garbage").expect("write");
        assert_eq!(reloading.reload(), ReloadOutcome::KeptPrevious);
        assert!(Arc::ptr_eq(&good, &reloading.config()));
    }
}
