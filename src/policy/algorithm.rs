//! HMAC algorithms: names, strength and key sizes.

use std::fmt;
use std::str::FromStr;

/// An HMAC algorithm an RNDC key can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// `hmac-md5` (broken; denied by default).
    HmacMd5,
    /// `hmac-sha1` (deprecated by RFC 8945; denied by default).
    HmacSha1,
    /// `hmac-sha224` (allowed with a warning).
    HmacSha224,
    /// `hmac-sha256` (the default).
    HmacSha256,
    /// `hmac-sha384`.
    HmacSha384,
    /// `hmac-sha512`.
    HmacSha512,
}

/// How much an algorithm can be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Strength {
    /// Must not be used (md5, sha1: RFC 8945 §10).
    Deprecated,
    /// Acceptable but short (sha224): warned about.
    Weak,
    /// Recommended.
    Strong,
}

impl Algorithm {
    /// Every algorithm, weakest first.
    pub const ALL: [Algorithm; 6] = [
        Algorithm::HmacMd5,
        Algorithm::HmacSha1,
        Algorithm::HmacSha224,
        Algorithm::HmacSha256,
        Algorithm::HmacSha384,
        Algorithm::HmacSha512,
    ];

    /// The name used in manifests, Secrets and `rndc.key`.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::HmacMd5 => "hmac-md5",
            Algorithm::HmacSha1 => "hmac-sha1",
            Algorithm::HmacSha224 => "hmac-sha224",
            Algorithm::HmacSha256 => "hmac-sha256",
            Algorithm::HmacSha384 => "hmac-sha384",
            Algorithm::HmacSha512 => "hmac-sha512",
        }
    }

    /// Hash output length in bytes: the size of generated keys and the minimum key length.
    pub const fn output_len(self) -> usize {
        match self {
            Algorithm::HmacMd5 => 16,
            Algorithm::HmacSha1 => 20,
            Algorithm::HmacSha224 => 28,
            Algorithm::HmacSha256 => 32,
            Algorithm::HmacSha384 => 48,
            Algorithm::HmacSha512 => 64,
        }
    }

    /// How much the algorithm can be trusted.
    pub const fn strength(self) -> Strength {
        match self {
            Algorithm::HmacMd5 | Algorithm::HmacSha1 => Strength::Deprecated,
            Algorithm::HmacSha224 => Strength::Weak,
            _ => Strength::Strong,
        }
    }

    /// Parses the exact manifest spelling (`hmac-sha256`).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Parses an algorithm as `named` reads it in a `key` statement: case-insensitive, with the
    /// legacy `hmac-md5.sig-alg.reg.int` spelling.
    pub fn parse_bind(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        if lower == "hmac-md5.sig-alg.reg.int" {
            return Some(Algorithm::HmacMd5);
        }
        Self::parse(&lower)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An algorithm name that is not one of the six HMAC algorithms.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0} is not an HMAC algorithm; use one of hmac-sha256, hmac-sha384, hmac-sha512, \
     hmac-sha224, hmac-sha1, hmac-md5"
)]
pub struct UnknownAlgorithm(pub String);

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| UnknownAlgorithm(super::shown::shown(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_sizes_are_the_hash_output_lengths() {
        let sizes: Vec<_> = Algorithm::ALL.iter().map(|a| a.output_len()).collect();
        assert_eq!(sizes, [16, 20, 28, 32, 48, 64]);
    }

    #[test]
    fn names_round_trip_and_only_exact_spellings_parse() {
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::parse(a.name()), Some(a));
            assert_eq!(a.to_string().parse::<Algorithm>(), Ok(a));
        }
        for bad in ["HMAC-SHA256", "sha256", "hmacSha256", "hmac-sha3", ""] {
            assert_eq!(Algorithm::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn bind_spelling_is_case_insensitive_and_knows_the_legacy_md5_name() {
        assert_eq!(
            Algorithm::parse_bind("HMAC-SHA512"),
            Some(Algorithm::HmacSha512)
        );
        assert_eq!(
            Algorithm::parse_bind("hmac-md5.sig-alg.reg.int"),
            Some(Algorithm::HmacMd5)
        );
        assert_eq!(Algorithm::parse_bind("hmac-sha256-128"), None);
    }

    #[test]
    fn md5_and_sha1_are_deprecated_and_sha224_is_weak() {
        assert_eq!(Algorithm::HmacMd5.strength(), Strength::Deprecated);
        assert_eq!(Algorithm::HmacSha1.strength(), Strength::Deprecated);
        assert_eq!(Algorithm::HmacSha224.strength(), Strength::Weak);
        assert_eq!(Algorithm::HmacSha256.strength(), Strength::Strong);
    }

    #[test]
    fn unknown_names_get_a_message_listing_the_algorithms() {
        let err = "sha256".parse::<Algorithm>().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("\"sha256\" is not an HMAC algorithm; use one of")
        );
    }
}
