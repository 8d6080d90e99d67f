//! Which key an instance uses (docs/policy.md, "Which key an instance uses"): the whole winning block, no field merge.
//!
//! `Bind9Instance.spec.rndcKey` > `Bind9Cluster.spec.<role>.rndcKey` > the instance's deprecated
//! `rndcSecretRef` (where the Bindy operator puts it) > defaults.

use std::fmt;

use super::algorithm::Algorithm;
use super::duration::RotateAfter;
use super::key_data::DataKeys;
use super::settings::PolicyConfig;
use crate::api::{Bind9Cluster, Bind9Instance, RndcKeyConfig, RndcSecretRef, RoleSpec};

/// The role of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// `primary`
    Primary,
    /// `secondary`
    Secondary,
}

impl Role {
    /// The canonical (lower-case) spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        }
    }

    /// Parses a role in any letter case (`Primary` is accepted and normalised by the webhook).
    pub fn parse_any_case(value: &str) -> Option<Self> {
        if value.eq_ignore_ascii_case("primary") {
            Some(Role::Primary)
        } else if value.eq_ignore_ascii_case("secondary") {
            Some(Role::Secondary)
        } else {
            None
        }
    }

    /// The role's settings in a cluster spec.
    pub fn block_of(self, cluster: &Bind9Cluster) -> Option<&RoleSpec> {
        match self {
            Role::Primary => cluster.spec.primary.as_ref(),
            Role::Secondary => cluster.spec.secondary.as_ref(),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which level supplied an instance's key configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// `Bind9Instance.spec.rndcKey`.
    Instance,
    /// `Bind9Cluster.spec.<role>.rndcKey`.
    Role {
        /// Name of the cluster.
        cluster: String,
        /// The role.
        role: Role,
    },
    /// The instance's deprecated `spec.rndcSecretRef`.
    DeprecatedSecretRef,
    /// The policy defaults (no block applies).
    Defaults,
}

impl ConfigSource {
    /// Field path of the winning block, for messages.
    pub fn path(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::Instance => f.write_str("spec.rndcKey"),
            ConfigSource::Role { cluster, role } => {
                write!(f, "Bind9Cluster {cluster} spec.{role}.rndcKey")
            }
            ConfigSource::DeprecatedSecretRef => f.write_str("spec.rndcSecretRef"),
            ConfigSource::Defaults => f.write_str("the policy defaults"),
        }
    }
}

/// Who owns the key Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Management {
    /// rndc-warden generates the Secret (`<instance>-rndc` by default).
    Generated,
    /// rndc-warden creates the Secret from the inline `rndcKey.secret`.
    Inline,
    /// The user manages the Secret (`secretRef` or deprecated `rndcSecretRef`): never rotated,
    /// but watched and reloaded on change.
    UserManaged,
}

/// The key configuration an instance ends up with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectiveKeyConfig {
    /// Which level won.
    pub source: ConfigSource,
    /// `autoRotate` of the winning block (or the default).
    pub auto_rotate: bool,
    /// `rotateAfter` of the winning block (or the default).
    pub rotate_after: RotateAfter,
    /// Algorithm of generated keys (for user-managed keys: the declared algorithm).
    pub algorithm: Algorithm,
    /// Name of the Secret the instance uses.
    pub secret_name: String,
    /// Who owns that Secret.
    pub management: Management,
    /// Data keys holding the key name, algorithm and secret.
    pub data_keys: DataKeys,
}

impl EffectiveKeyConfig {
    /// Whether rndc-warden creates and owns the Secret.
    pub fn is_managed(&self) -> bool {
        self.management != Management::UserManaged
    }

    /// Whether the key rotates automatically (`autoRotate` on a managed Secret).
    pub fn rotates(&self) -> bool {
        self.auto_rotate && self.is_managed()
    }
}

/// Why an instance's effective configuration cannot be worked out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EffectiveConfigError {
    /// A value of the winning block is invalid (the webhook denies such objects).
    #[error("{path}: {message}")]
    Invalid {
        /// Field path.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The instance names a cluster that is not known.
    #[error(
        "spec.clusterRef: Bind9Cluster {} is not known, so its role-level rndcKey cannot be \
         resolved", super::shown::shown(.0)
    )]
    UnknownCluster(String),
    /// The instance has no usable role but its cluster needs one.
    #[error("spec.role: missing or invalid, so the cluster's role-level rndcKey cannot be chosen")]
    NoRole,
    /// A generated Secret needs the instance name.
    #[error("metadata.name: the instance has no name yet, so its Secret name is unknown")]
    Unnamed,
}

/// The winning block, before defaults are applied.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Winner<'a> {
    Block(&'a RndcKeyConfig),
    DeprecatedRef(&'a RndcSecretRef),
    Defaults,
}

/// Decides which level wins for an instance. `cluster` is the instance's cluster when known.
pub(crate) fn winning_block<'a>(
    instance: &'a Bind9Instance,
    cluster: Option<&'a Bind9Cluster>,
) -> Result<(ConfigSource, Winner<'a>), EffectiveConfigError> {
    let spec = &instance.spec;
    if let Some(block) = &spec.rndc_key {
        return Ok((ConfigSource::Instance, Winner::Block(block)));
    }
    let cluster_ref = spec.cluster_ref.as_deref().unwrap_or_default();
    if !cluster_ref.is_empty() {
        let cluster =
            cluster.ok_or_else(|| EffectiveConfigError::UnknownCluster(cluster_ref.to_owned()))?;
        let role = spec.role.as_deref().and_then(Role::parse_any_case);
        let has_any_block = [Role::Primary, Role::Secondary]
            .iter()
            .any(|r| r.block_of(cluster).is_some_and(|b| b.rndc_key.is_some()));
        match role {
            Some(role) => {
                if let Some(block) = role.block_of(cluster).and_then(|b| b.rndc_key.as_ref()) {
                    let source = ConfigSource::Role {
                        cluster: cluster_ref.to_owned(),
                        role,
                    };
                    return Ok((source, Winner::Block(block)));
                }
            }
            None if has_any_block => return Err(EffectiveConfigError::NoRole),
            None => {}
        }
    }
    if let Some(reference) = &spec.rndc_secret_ref {
        return Ok((
            ConfigSource::DeprecatedSecretRef,
            Winner::DeprecatedRef(reference),
        ));
    }
    Ok((ConfigSource::Defaults, Winner::Defaults))
}

fn data_keys(reference: &RndcSecretRef) -> DataKeys {
    let default = DataKeys::default();
    DataKeys {
        key_name: reference.key_name_key.clone().unwrap_or(default.key_name),
        algorithm: reference.algorithm_key.clone().unwrap_or(default.algorithm),
        secret: reference.secret_key.clone().unwrap_or(default.secret),
    }
}

/// The named algorithm, or the default when none is named; `path` is only formatted for an error.
fn algorithm_or_default(
    value: Option<&str>,
    path: fmt::Arguments<'_>,
    cfg: &PolicyConfig,
) -> Result<Algorithm, EffectiveConfigError> {
    match value {
        None => Ok(cfg.default_algorithm),
        Some(name) => Algorithm::parse(name).ok_or_else(|| EffectiveConfigError::Invalid {
            path: path.to_string(),
            message: format!("{} is not a supported algorithm", super::shown::shown(name)),
        }),
    }
}

/// Works out the key configuration of an instance: the whole winning block, with omitted fields
/// taken from the policy defaults (what the mutating webhook fills in).
pub fn effective_config(
    instance: &Bind9Instance,
    cluster: Option<&Bind9Cluster>,
    cfg: &PolicyConfig,
) -> Result<EffectiveKeyConfig, EffectiveConfigError> {
    let (source, winner) = winning_block(instance, cluster)?;
    let name = instance.metadata.name.as_deref().unwrap_or_default();
    let base = &source;
    let generated_name = || {
        if name.is_empty() {
            Err(EffectiveConfigError::Unnamed)
        } else {
            Ok(cfg.secret_name_template.render(name))
        }
    };
    match winner {
        Winner::Defaults => Ok(EffectiveKeyConfig {
            source,
            auto_rotate: cfg.default_auto_rotate,
            rotate_after: cfg.default_rotate_after,
            algorithm: cfg.default_algorithm,
            secret_name: generated_name()?,
            management: Management::Generated,
            data_keys: DataKeys::default(),
        }),
        Winner::DeprecatedRef(reference) => {
            let algorithm = algorithm_or_default(
                reference.algorithm.as_deref(),
                format_args!("{base}.algorithm"),
                cfg,
            )?;
            Ok(EffectiveKeyConfig {
                source,
                auto_rotate: false,
                rotate_after: cfg.default_rotate_after,
                algorithm,
                secret_name: reference.name.clone(),
                management: Management::UserManaged,
                data_keys: data_keys(reference),
            })
        }
        Winner::Block(block) => {
            let rotate_after = match block.rotate_after.as_deref() {
                None => cfg.default_rotate_after,
                Some(value) => {
                    RotateAfter::parse(value).map_err(|e| EffectiveConfigError::Invalid {
                        path: format!("{base}.rotateAfter"),
                        message: e.to_string(),
                    })?
                }
            };
            let auto_rotate = block.auto_rotate.unwrap_or(cfg.default_auto_rotate);
            if let Some(reference) = &block.secret_ref {
                let declared = reference
                    .algorithm
                    .as_deref()
                    .or(block.algorithm.as_deref());
                let algorithm = algorithm_or_default(
                    declared,
                    format_args!("{base}.secretRef.algorithm"),
                    cfg,
                )?;
                return Ok(EffectiveKeyConfig {
                    source,
                    auto_rotate,
                    rotate_after,
                    algorithm,
                    secret_name: reference.name.clone(),
                    management: Management::UserManaged,
                    data_keys: data_keys(reference),
                });
            }
            let algorithm = algorithm_or_default(
                block.algorithm.as_deref(),
                format_args!("{base}.algorithm"),
                cfg,
            )?;
            let (secret_name, management) = match &block.secret {
                Some(inline) => (inline.metadata.name.clone(), Management::Inline),
                None => (generated_name()?, Management::Generated),
            };
            Ok(EffectiveKeyConfig {
                source,
                auto_rotate,
                rotate_after,
                algorithm,
                secret_name,
                management,
                data_keys: DataKeys::default(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Bind9ClusterSpec, Bind9InstanceSpec, InlineSecret, InlineSecretMetadata};

    fn instance(cluster_ref: &str, role: &str, block: Option<RndcKeyConfig>) -> Bind9Instance {
        let mut instance = Bind9Instance::new(
            "dns-primary",
            Bind9InstanceSpec {
                cluster_ref: Some(cluster_ref.to_owned()),
                role: Some(role.to_owned()),
                rndc_key: block,
                ..Bind9InstanceSpec::default()
            },
        );
        instance.metadata.namespace = Some("dns".to_owned());
        instance
    }

    fn block(
        auto_rotate: Option<bool>,
        rotate_after: Option<&str>,
        algorithm: Option<&str>,
    ) -> RndcKeyConfig {
        RndcKeyConfig {
            auto_rotate,
            rotate_after: rotate_after.map(str::to_owned),
            algorithm: algorithm.map(str::to_owned),
            ..RndcKeyConfig::default()
        }
    }

    fn cluster(primary: Option<RndcKeyConfig>) -> Bind9Cluster {
        Bind9Cluster::new(
            "my-cluster",
            Bind9ClusterSpec {
                primary: Some(RoleSpec {
                    rndc_key: primary,
                    ..RoleSpec::default()
                }),
                ..Bind9ClusterSpec::default()
            },
        )
    }

    #[test]
    fn the_instance_block_wins_whole_without_merging_role_fields() {
        let cluster = cluster(Some(block(Some(true), Some("720h"), Some("hmac-sha512"))));
        let instance = instance(
            "my-cluster",
            "primary",
            Some(block(None, None, Some("hmac-sha384"))),
        );
        let effective = effective_config(&instance, Some(&cluster), &PolicyConfig::default());
        let effective = effective.expect("resolves");
        assert_eq!(effective.source, ConfigSource::Instance);
        assert!(
            !effective.auto_rotate,
            "autoRotate must not be merged from the role block"
        );
        assert_eq!(effective.rotate_after, RotateAfter::DEFAULT);
        assert_eq!(effective.algorithm, Algorithm::HmacSha384);
        assert_eq!(effective.secret_name, "dns-primary-rndc-key");
        assert_eq!(effective.management, Management::Generated);
    }

    #[test]
    fn the_role_block_applies_when_the_instance_has_none_whatever_the_role_case() {
        let cluster = cluster(Some(block(Some(true), Some("30d"), Some("hmac-sha512"))));
        let instance = instance("my-cluster", "Primary", None);
        let effective = effective_config(&instance, Some(&cluster), &PolicyConfig::default())
            .expect("resolves");
        assert_eq!(
            effective.source,
            ConfigSource::Role {
                cluster: "my-cluster".into(),
                role: Role::Primary
            }
        );
        assert!(effective.rotates());
        assert_eq!(effective.rotate_after.hours(), 720);
    }

    #[test]
    fn without_a_role_block_the_defaults_apply() {
        let cluster = cluster(None);
        let instance = instance("my-cluster", "primary", None);
        let cfg = PolicyConfig {
            default_auto_rotate: true,
            ..PolicyConfig::default()
        };
        let effective = effective_config(&instance, Some(&cluster), &cfg).expect("resolves");
        assert_eq!(effective.source, ConfigSource::Defaults);
        assert!(effective.rotates());
    }

    #[test]
    fn an_unknown_cluster_is_an_error_unless_the_instance_has_its_own_block() {
        let bare = instance("gone", "primary", None);
        assert_eq!(
            effective_config(&bare, None, &PolicyConfig::default()),
            Err(EffectiveConfigError::UnknownCluster("gone".into()))
        );
        let own = instance("gone", "primary", Some(block(Some(true), None, None)));
        assert!(effective_config(&own, None, &PolicyConfig::default()).is_ok());
    }

    #[test]
    fn a_standalone_instance_needs_no_cluster() {
        let standalone = instance("", "primary", None);
        let effective = effective_config(&standalone, None, &PolicyConfig::default());
        assert_eq!(effective.map(|e| e.source), Ok(ConfigSource::Defaults));
    }

    #[test]
    fn secret_ref_is_user_managed_and_never_rotates() {
        let mut with_ref = block(Some(true), None, None);
        with_ref.secret_ref = Some(RndcSecretRef {
            name: "vault-rndc".into(),
            algorithm: Some("hmac-sha512".into()),
            secret_key: Some("key".into()),
            ..RndcSecretRef::default()
        });
        let instance = instance("", "primary", Some(with_ref));
        let effective = effective_config(&instance, None, &PolicyConfig::default()).expect("ok");
        assert_eq!(effective.management, Management::UserManaged);
        assert_eq!(effective.secret_name, "vault-rndc");
        assert_eq!(effective.algorithm, Algorithm::HmacSha512);
        assert_eq!(effective.data_keys.secret, "key");
        assert!(effective.auto_rotate && !effective.rotates());
    }

    #[test]
    fn an_inline_secret_is_managed_under_its_own_name() {
        let mut inline = block(Some(true), None, None);
        inline.secret = Some(InlineSecret {
            metadata: InlineSecretMetadata {
                name: "custom-rndc".into(),
                ..Default::default()
            },
            ..InlineSecret::default()
        });
        let instance = instance("", "primary", Some(inline));
        let effective = effective_config(&instance, None, &PolicyConfig::default()).expect("ok");
        assert_eq!(effective.secret_name, "custom-rndc");
        assert_eq!(effective.management, Management::Inline);
        assert!(effective.rotates());
    }

    #[test]
    fn the_deprecated_reference_ranks_below_the_role_block_as_upstream_does() {
        let cluster = cluster(Some(block(Some(true), None, None)));
        let mut legacy = instance("my-cluster", "primary", None);
        legacy.spec.rndc_secret_ref = Some(RndcSecretRef {
            name: "legacy".into(),
            ..Default::default()
        });
        let effective =
            effective_config(&legacy, Some(&cluster), &PolicyConfig::default()).expect("ok");
        assert!(matches!(effective.source, ConfigSource::Role { .. }));
        let standalone = Bind9Instance {
            spec: Bind9InstanceSpec {
                cluster_ref: None,
                ..legacy.spec.clone()
            },
            ..legacy
        };
        let effective = effective_config(&standalone, None, &PolicyConfig::default()).expect("ok");
        assert_eq!(effective.source, ConfigSource::DeprecatedSecretRef);
        assert_eq!(effective.management, Management::UserManaged);
        assert_eq!(effective.secret_name, "legacy");
    }

    #[test]
    fn the_secret_name_template_is_configurable() {
        let cfg = PolicyConfig {
            secret_name_template: crate::policy::SecretNameTemplate::parse("{instance}-rndc-key")
                .expect("valid"),
            ..PolicyConfig::default()
        };
        let effective = effective_config(&instance("", "primary", None), None, &cfg).expect("ok");
        assert_eq!(effective.secret_name, "dns-primary-rndc-key");
    }

    #[test]
    fn an_invalid_winning_value_is_reported_not_silently_defaulted() {
        let bad = instance("", "primary", Some(block(Some(true), Some("30m"), None)));
        let err = effective_config(&bad, None, &PolicyConfig::default()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("spec.rndcKey.rotateAfter: \"30m\" is not a valid duration")
        );
    }
}
