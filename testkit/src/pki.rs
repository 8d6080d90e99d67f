//! Certificates for the control plane and for test TLS servers, generated with rcgen.

use std::net::{IpAddr, Ipv4Addr};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use crate::error::Result;

/// A PEM certificate and its PEM (PKCS#8) private key.
#[derive(Clone)]
pub struct CertPem {
    /// `-----BEGIN CERTIFICATE-----` ...
    pub cert: String,
    /// `-----BEGIN PRIVATE KEY-----` ...
    pub key: String,
}

impl std::fmt::Debug for CertPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertPem")
            .field("cert", &self.cert)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A throw-away certificate authority (ECDSA P-256) for tests.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    key_pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// Creates a self-signed CA with the given common name.
    pub fn new(common_name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(common_name, None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let issuer = CertifiedIssuer::self_signed(params, key)?;
        Ok(Self { issuer, key_pem })
    }

    /// The CA certificate (PEM): what goes into a `caBundle` or a kubeconfig.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate and key.
    pub fn pem(&self) -> CertPem {
        CertPem {
            cert: self.cert_pem(),
            key: self.key_pem.clone(),
        }
    }

    /// Issues a TLS server certificate for 127.0.0.1 and `localhost` plus `extra_names` (an
    /// address becomes an IP SAN, anything else a DNS SAN).
    pub fn server_cert(&self, extra_names: &[&str]) -> Result<CertPem> {
        let mut sans = vec![
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::DnsName("localhost".try_into()?),
        ];
        for name in extra_names {
            sans.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into()?),
            });
        }
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn("localhost", None);
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// Issues a client certificate: Kubernetes reads the user from the CN and the groups from
    /// the O entries.
    pub fn client_cert(&self, user: &str, groups: &[&str]) -> Result<CertPem> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut name = dn(user, None);
        for group in groups {
            name.push(DnType::OrganizationName, *group);
        }
        params.distinguished_name = name;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> Result<CertPem> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

fn dn(common_name: &str, org: Option<&str>) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    if let Some(org) = org {
        name.push(DnType::OrganizationName, org);
    }
    name
}

/// A key pair in PEM: the service-account signing key of the apiserver.
#[derive(Clone)]
pub struct KeyPairPem {
    /// PKCS#8 private key.
    pub private: String,
    /// SubjectPublicKeyInfo public key.
    pub public: String,
}

impl std::fmt::Debug for KeyPairPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPairPem")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// Generates an ECDSA P-256 key pair (used to sign service-account tokens).
pub fn signing_key_pair() -> Result<KeyPairPem> {
    let key = KeyPair::generate()?;
    Ok(KeyPairPem {
        private: key.serialize_pem(),
        public: key.public_key_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_pem_certificates_signed_by_the_ca() {
        let ca = TestCa::new("test-ca").expect("CA");
        let server = ca.server_cert(&["example.test"]).expect("server cert");
        let client = ca
            .client_cert("admin", &["system:masters"])
            .expect("client cert");
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(server.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(client.key.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_ne!(server.cert, client.cert);
        let pair = signing_key_pair().expect("key pair");
        assert!(pair.public.starts_with("-----BEGIN PUBLIC KEY-----"));
    }
}
