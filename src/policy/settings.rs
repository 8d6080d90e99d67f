//! [`PolicyConfig`]: the knobs every front end passes to the policy.

use std::collections::BTreeSet;
use std::fmt;

use super::algorithm::Algorithm;
use super::duration::RotateAfter;
use super::names::is_dns_subdomain;

/// Placeholder of [`SecretNameTemplate`] replaced by the instance name.
pub const INSTANCE_PLACEHOLDER: &str = "{instance}";
/// Default managed Secret name template.
pub const DEFAULT_SECRET_NAME_TEMPLATE: &str = "{instance}-rndc-key";
/// Default identity of the rotator (the Helm chart's service account).
pub const DEFAULT_ROTATOR_USERNAME: &str = "system:serviceaccount:rndc-warden:rndc-warden";

/// Policy settings: defaults, deny list, compliance mode, naming and the rotator's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Algorithms that are denied wherever they appear.
    pub denied_algorithms: BTreeSet<Algorithm>,
    /// `autoRotate` filled into blocks that omit it.
    pub default_auto_rotate: bool,
    /// `rotateAfter` filled into blocks that omit it.
    pub default_rotate_after: RotateAfter,
    /// `algorithm` filled into blocks that omit it.
    pub default_algorithm: Algorithm,
    /// Compliance mode: an effective `autoRotate: false` on a managed key is denied.
    pub require_auto_rotate: bool,
    /// Name of generated Secrets.
    pub secret_name_template: SecretNameTemplate,
    /// Username of the rotator (exempt from the annotation tamper rules).
    pub rotator_username: String,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            denied_algorithms: [Algorithm::HmacMd5, Algorithm::HmacSha1].into(),
            default_auto_rotate: false,
            default_rotate_after: RotateAfter::DEFAULT,
            default_algorithm: Algorithm::HmacSha256,
            require_auto_rotate: false,
            secret_name_template: SecretNameTemplate::default(),
            rotator_username: DEFAULT_ROTATOR_USERNAME.to_owned(),
        }
    }
}

impl PolicyConfig {
    /// Checks that the settings agree with each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.denied_algorithms.contains(&self.default_algorithm) {
            return Err(ConfigError::DefaultAlgorithmDenied(self.default_algorithm));
        }
        if self.rotator_username.trim().is_empty() {
            return Err(ConfigError::EmptyRotatorUsername);
        }
        Ok(())
    }

    /// Whether an algorithm is denied.
    pub fn is_denied(&self, algorithm: Algorithm) -> bool {
        self.denied_algorithms.contains(&algorithm)
    }

    /// The allowed algorithms, strongest first, as a human list (`hmac-sha512, hmac-sha384 or
    /// hmac-sha256`); `hmac-sha224` is left out as it only draws a warning.
    pub fn allowed_algorithms_hint(&self) -> String {
        let allowed: Vec<&str> = Algorithm::ALL
            .iter()
            .rev()
            .filter(|a| !self.is_denied(**a) && **a != Algorithm::HmacSha224)
            .map(|a| a.name())
            .collect();
        match allowed.split_last() {
            None => "an algorithm the policy allows".to_owned(),
            Some((last, [])) => (*last).to_owned(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        }
    }
}

/// Inconsistent policy settings.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The default algorithm is on the deny list.
    #[error("the default algorithm {0} is on the deny list; choose another default or allow it")]
    DefaultAlgorithmDenied(Algorithm),
    /// The Secret name template is unusable.
    #[error(
        "secret name template {0:?} must contain {{instance}} once and otherwise only lower-case \
         letters, digits, '-' and '.', e.g. \"{{instance}}-rndc\""
    )]
    BadSecretNameTemplate(String),
    /// No rotator identity.
    #[error("the rotator username must not be empty, e.g. \"{DEFAULT_ROTATOR_USERNAME}\"")]
    EmptyRotatorUsername,
}

/// How generated Secrets are named, e.g. `{instance}-rndc` (upstream uses `{instance}-rndc-key`).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretNameTemplate {
    prefix: String,
    suffix: String,
}

impl SecretNameTemplate {
    /// Parses a template holding `{instance}` exactly once.
    pub fn parse(template: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::BadSecretNameTemplate(template.to_owned());
        let (prefix, suffix) = template.split_once(INSTANCE_PLACEHOLDER).ok_or_else(bad)?;
        let sample = format!("{prefix}x{suffix}");
        if suffix.contains(INSTANCE_PLACEHOLDER) || !is_dns_subdomain(&sample) {
            return Err(bad());
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        })
    }

    /// The Secret name of an instance.
    pub fn render(&self, instance: &str) -> String {
        let mut name =
            String::with_capacity(self.prefix.len() + instance.len() + self.suffix.len());
        name.push_str(&self.prefix);
        name.push_str(instance);
        name.push_str(&self.suffix);
        name
    }
}

impl Default for SecretNameTemplate {
    fn default() -> Self {
        let (prefix, suffix) = DEFAULT_SECRET_NAME_TEMPLATE
            .split_once(INSTANCE_PLACEHOLDER)
            .unwrap_or(("", ""));
        Self {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        }
    }
}

impl fmt::Display for SecretNameTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{INSTANCE_PLACEHOLDER}{}", self.prefix, self.suffix)
    }
}

impl fmt::Debug for SecretNameTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretNameTemplate({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_is_consistent_and_matches_the_spec() {
        let cfg = PolicyConfig::default();
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(cfg.default_rotate_after.to_string(), "2160h");
        assert_eq!(cfg.default_algorithm, Algorithm::HmacSha256);
        assert!(!cfg.default_auto_rotate);
        assert!(cfg.is_denied(Algorithm::HmacMd5) && cfg.is_denied(Algorithm::HmacSha1));
        assert_eq!(
            cfg.secret_name_template.render("dns-primary"),
            "dns-primary-rndc-key"
        );
    }

    #[test]
    fn a_denied_default_algorithm_is_a_config_error() {
        let cfg = PolicyConfig {
            default_algorithm: Algorithm::HmacSha1,
            ..PolicyConfig::default()
        };
        assert_eq!(
            cfg.validate(),
            Err(ConfigError::DefaultAlgorithmDenied(Algorithm::HmacSha1))
        );
    }

    #[test]
    fn templates_need_the_instance_placeholder_once_and_a_valid_name() {
        let upstream = SecretNameTemplate::parse("{instance}-rndc-key");
        assert_eq!(upstream.map(|t| t.render("a")), Ok("a-rndc-key".to_owned()));
        assert_eq!(
            SecretNameTemplate::parse("rndc-{instance}").map(|t| t.to_string()),
            Ok("rndc-{instance}".to_owned())
        );
        for bad in [
            "rndc",
            "{instance}-{instance}",
            "{instance}_RNDC",
            "{Instance}-rndc",
        ] {
            assert!(SecretNameTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_allowed_algorithm_hint_follows_the_deny_list() {
        let cfg = PolicyConfig::default();
        assert_eq!(
            cfg.allowed_algorithms_hint(),
            "hmac-sha512, hmac-sha384 or hmac-sha256"
        );
        let strict = PolicyConfig {
            denied_algorithms: [Algorithm::HmacSha256, Algorithm::HmacSha384].into(),
            ..PolicyConfig::default()
        };
        assert_eq!(
            strict.allowed_algorithms_hint(),
            "hmac-sha512, hmac-sha1 or hmac-md5"
        );
    }
}
