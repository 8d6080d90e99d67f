//! Which Secret an instance's key lives in (docs/install.md, "Beside the Bindy operator"): the one place the rotator, the
//! reloader, `audit` and `rotate` derive it, so they always agree.
//!
//! For a generated key (neither `secretRef` nor an inline `secret`) the truth is what the pods
//! mount: the Secret of the instance Deployment's RNDC volume (volume `rndc-key`, or the Secret
//! volume mounted at `/etc/bind/keys`, which is what the Bindy operator builds). Without such a
//! Deployment, the configured template names it (default `{instance}-rndc-key`, the operator's
//! naming). `secretRef` and inline names are what the operator mounts too, so they are used as
//! configured.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodSpec;

use crate::policy::{EffectiveKeyConfig, Management};

/// Name of the Bindy operator's RNDC key volume.
pub const RNDC_KEY_VOLUME: &str = "rndc-key";
/// Where the Bindy operator mounts the RNDC key Secret.
pub const RNDC_KEYS_DIR: &str = "/etc/bind/keys";

/// The Secret a pod spec mounts as its RNDC key: the Secret volume mounted at
/// [`RNDC_KEYS_DIR`] by any container, else the Secret volume named [`RNDC_KEY_VOLUME`].
pub fn mounted_rndc_secret_of(spec: &PodSpec) -> Option<&str> {
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    let secret_of = |volume_name: &str| {
        volumes
            .iter()
            .find(|v| v.name == volume_name)
            .and_then(|v| v.secret.as_ref())
            .and_then(|s| s.secret_name.as_deref())
            .filter(|name| !name.is_empty())
    };
    let mounted_at_keys_dir = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .filter(|m| m.mount_path.trim_end_matches('/') == RNDC_KEYS_DIR)
        .find_map(|m| secret_of(&m.name));
    mounted_at_keys_dir.or_else(|| secret_of(RNDC_KEY_VOLUME))
}

/// The Secret a Deployment's pods mount as their RNDC key (see [`mounted_rndc_secret_of`]).
pub fn mounted_rndc_secret(deployment: &Deployment) -> Option<&str> {
    deployment
        .spec
        .template
        .spec
        .as_ref()
        .and_then(mounted_rndc_secret_of)
}

/// The Secret name an instance's key lives in: for a generated key the Secret its Deployment
/// mounts (`mounted`, from [`mounted_rndc_secret`]) when there is one, else the configured name.
pub fn key_secret_name<'a>(config: &'a EffectiveKeyConfig, mounted: Option<&'a str>) -> &'a str {
    match (&config.management, mounted) {
        (Management::Generated, Some(mounted)) => mounted,
        _ => &config.secret_name,
    }
}

/// `config` with its Secret name resolved by [`key_secret_name`].
pub fn resolve(mut config: EffectiveKeyConfig, mounted: Option<&str>) -> EffectiveKeyConfig {
    let name = key_secret_name(&config, mounted);
    if name != config.secret_name {
        config.secret_name = name.to_owned();
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Bind9Instance, Bind9InstanceSpec, RndcKeyConfig, RndcSecretRef};
    use crate::policy::{PolicyConfig, effective_config};
    use k8s_openapi::api::apps::v1::DeploymentSpec;
    use k8s_openapi::api::core::v1::{
        Container, PodTemplateSpec, SecretVolumeSource, Volume, VolumeMount,
    };

    fn bindy_deployment(volume: &str, secret: &str, path: &str) -> Deployment {
        Deployment {
            spec: DeploymentSpec {
                template: PodTemplateSpec {
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "bind9".into(),
                            volume_mounts: Some(vec![VolumeMount {
                                name: volume.into(),
                                mount_path: path.into(),
                                read_only: Some(true),
                                ..VolumeMount::default()
                            }]),
                            ..Container::default()
                        }],
                        volumes: Some(vec![
                            Volume {
                                name: "config".into(),
                                ..Volume::default()
                            },
                            Volume {
                                name: volume.into(),
                                secret: Some(SecretVolumeSource {
                                    secret_name: Some(secret.into()),
                                    ..SecretVolumeSource::default()
                                }),
                                ..Volume::default()
                            },
                        ]),
                        ..PodSpec::default()
                    }),
                    ..PodTemplateSpec::default()
                },
                ..DeploymentSpec::default()
            },
            ..Deployment::default()
        }
    }

    fn config(block: Option<RndcKeyConfig>) -> EffectiveKeyConfig {
        let mut i = Bind9Instance::new(
            "dns-a",
            Bind9InstanceSpec {
                rndc_key: block,
                ..Bind9InstanceSpec::default()
            },
        );
        i.metadata.namespace = Some("dns".into());
        effective_config(&i, None, &PolicyConfig::default()).expect("config")
    }

    #[test]
    fn the_secret_mounted_at_the_keys_dir_or_the_rndc_key_volume_is_found() {
        let d = bindy_deployment("rndc-key", "dns-a-rndc-key", "/etc/bind/keys");
        assert_eq!(mounted_rndc_secret(&d), Some("dns-a-rndc-key"));
        let d = bindy_deployment("keys", "other", "/etc/bind/keys/");
        assert_eq!(mounted_rndc_secret(&d), Some("other"));
        let d = bindy_deployment("rndc-key", "by-volume-name", "/somewhere");
        assert_eq!(mounted_rndc_secret(&d), Some("by-volume-name"));
        let d = bindy_deployment("unrelated", "x", "/var/x");
        assert_eq!(mounted_rndc_secret(&d), None);
        assert_eq!(mounted_rndc_secret(&Deployment::default()), None);
    }

    #[test]
    fn a_generated_key_lives_in_the_mounted_secret_else_in_the_operators_naming() {
        let generated = config(None);
        assert_eq!(key_secret_name(&generated, None), "dns-a-rndc-key");
        assert_eq!(key_secret_name(&generated, Some("mounted")), "mounted");
        assert_eq!(resolve(generated, Some("mounted")).secret_name, "mounted");
        let by_ref = config(Some(RndcKeyConfig {
            secret_ref: Some(RndcSecretRef {
                name: "vault".into(),
                ..RndcSecretRef::default()
            }),
            ..RndcKeyConfig::default()
        }));
        assert_eq!(key_secret_name(&by_ref, Some("mounted")), "vault");
    }
}
