//! Certificate building, in one place: the CA and serving certificates that
//! [`tls::generate_self_signed`](super::tls::generate_self_signed) writes to files and the
//! self-managed loop ([`serving_cert`](super::serving_cert)) keeps in a Secret, and reading a
//! certificate's expiry back.

use std::net::IpAddr;

use chrono::{DateTime, TimeDelta, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate and its private key, as PEM text.
#[derive(Clone, PartialEq, Eq)]
pub struct PemPair {
    /// The certificate.
    pub cert: String,
    /// The private key (PKCS#8).
    pub key: String,
}

impl std::fmt::Debug for PemPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemPair")
            .field("cert", &self.cert.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Generates a CA valid from an hour before `now` until `now + lifetime`.
pub fn new_ca(
    common_name: &str,
    now: DateTime<Utc>,
    lifetime: TimeDelta,
) -> Result<PemPair, rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, now, lifetime);
    let cert = params.self_signed(&key)?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Signs a serving certificate for `dns_names` and `ips` with `ca`, valid from an hour before
/// `now` until `now + lifetime`.
pub fn sign_serving_cert(
    ca: &PemPair,
    dns_names: &[String],
    ips: &[IpAddr],
    now: DateTime<Utc>,
    lifetime: TimeDelta,
) -> Result<PemPair, rcgen::Error> {
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(dns_names.to_vec())?;
    leaf.subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    leaf.distinguished_name = distinguished_name(dns_names.first().map_or("rndc-warden", |n| n));
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    set_validity(&mut leaf, now, lifetime);
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// When the first certificate in `pem` expires, in Unix seconds; `None` when it does not parse.
pub fn not_after(pem: &[u8]) -> Option<i64> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = parsed.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp())
}

fn set_validity(params: &mut CertificateParams, now: DateTime<Utc>, lifetime: TimeDelta) {
    let now = time::OffsetDateTime::from_unix_timestamp(now.timestamp())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::seconds(lifetime.num_seconds());
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}
