//! `rndc-warden rotate <instance>`: request an immediate rotation of an instance's key.
//!
//! The request is the documented manual trigger: `rndc-created-at` is back-dated by the effective
//! `rotateAfter`, so the rotator finds the key due and replaces it at once (and rolls the pods).
//! The 1h rate limit holds: a key created less than an hour ago is left alone unless `--force`.

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::Args;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::api::{ANNOTATION_CREATED_AT, Bind9Cluster, Bind9Instance};
use crate::config::PolicyArgs;
use crate::policy::{
    KeyAnnotations, PolicyConfig, Verdict, audit, back_dated_created_at, effective_config,
    format_time, rate_limit_end,
};
use crate::rotation::naming::{self, mounted_rndc_secret};

/// Flags of `rotate`.
#[derive(Debug, Clone, Args)]
pub struct RotateArgs {
    /// The `Bind9Instance` whose key should be rotated.
    pub instance: String,
    /// Namespace of the instance (default: the kubeconfig's namespace).
    #[arg(short, long, env = "RNDC_WARDEN_NAMESPACE")]
    pub namespace: Option<String>,
    /// Rotate even if the key is less than an hour old (the rate limit).
    #[arg(long, env = "RNDC_WARDEN_FORCE", default_value_t = false)]
    pub force: bool,
    /// Name of the Deployment an instance runs in (`{instance}` is replaced), as the rotator's
    /// flag of the same name: its RNDC key volume names the Secret a generated key lives in.
    #[arg(
        long,
        env = "RNDC_WARDEN_DEPLOYMENT_NAME_TEMPLATE",
        default_value = "{instance}"
    )]
    pub deployment_name_template: String,
    /// Defaults and policy (must match the rotator's).
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// What a rotation request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// `rndc-created-at` was back-dated to this value; the rotator rotates the key now.
    Triggered {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        secret: String,
        /// The back-dated `rndc-created-at`.
        created_at: String,
    },
}

/// Why a rotation request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// The instance does not exist.
    #[error("Bind9Instance {0} not found")]
    NoInstance(String),
    /// The effective configuration cannot be worked out.
    #[error("Bind9Instance {instance}: {reason}")]
    Config {
        /// The instance.
        instance: String,
        /// Why.
        reason: String,
    },
    /// The key Secret belongs to the user (`secretRef`).
    #[error(
        "Secret {0} is managed by its owner (secretRef); rndc-warden never rotates it — replace the key \
         in the Secret yourself and the pods are reloaded"
    )]
    UserManaged(String),
    /// `autoRotate` is off, so the rotator would not act on the request.
    #[error(
        "autoRotate is off for Bind9Instance {0} (see its rndcKey), so the rotator does not rotate its key; \
         set autoRotate: true first"
    )]
    NotRotating(String),
    /// The Secret does not exist yet.
    #[error(
        "Secret {0} does not exist yet; the Bindy operator creates it (or the rotator, when it runs \
         with --provision true), with a fresh key"
    )]
    NoSecret(String),
    /// The stored key is below policy: the rotator replaces it on its own, whatever its age, so
    /// back-dating cannot help; when it stays, the rotator's replacement keeps failing.
    #[error(
        "the key in Secret {secret} is below policy ({reason}); the rotator replaces such a key at \
         once without a request. If it is still there, the replacement keeps failing: see \
         `kubectl get events -n {namespace} --field-selector reason=RndcKeyRotationFailed` and the \
         rotator's log"
    )]
    BelowPolicy {
        /// The Secret.
        secret: String,
        /// Its namespace.
        namespace: String,
        /// Why (fields and rules, never key material).
        reason: String,
    },
    /// The rate limit refuses the request.
    #[error(
        "the key in Secret {secret} was created at {created_at}, less than an hour ago; rotations are \
         rate-limited to one per hour — retry after {retry_after} or pass --force"
    )]
    RateLimited {
        /// The Secret.
        secret: String,
        /// Its `rndc-created-at`.
        created_at: String,
        /// When the rate limit ends.
        retry_after: String,
    },
    /// An API call failed (a 409 means the Secret changed meanwhile; retry).
    #[error("{0}")]
    Kube(#[from] kube::Error),
}

/// Requests an immediate rotation of `instance`'s key in `namespace` (its Deployment named
/// `{instance}`).
pub async fn request(
    client: &Client,
    namespace: &str,
    instance: &str,
    force: bool,
    policy: &PolicyConfig,
    now: DateTime<Utc>,
) -> Result<Requested, RotateError> {
    request_with(
        client,
        namespace,
        instance,
        force,
        policy,
        now,
        "{instance}",
    )
    .await
}

/// [`request`] with the Deployment name template of the rotator.
pub async fn request_with(
    client: &Client,
    namespace: &str,
    instance: &str,
    force: bool,
    policy: &PolicyConfig,
    now: DateTime<Utc>,
    deployment_name_template: &str,
) -> Result<Requested, RotateError> {
    let qualified = format!("{namespace}/{instance}");
    let instances: Api<Bind9Instance> = Api::namespaced(client.clone(), namespace);
    let object = instances
        .get_opt(instance)
        .await?
        .ok_or_else(|| RotateError::NoInstance(qualified.clone()))?;
    let cluster = match object.spec.cluster_ref.as_deref().filter(|c| !c.is_empty()) {
        Some(name) => {
            Api::<Bind9Cluster>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await?
        }
        None => None,
    };
    let config =
        effective_config(&object, cluster.as_ref(), policy).map_err(|e| RotateError::Config {
            instance: qualified.clone(),
            reason: e.to_string(),
        })?;
    // The Secret the rotator works on: the one the instance's Deployment mounts, if readable.
    let deployment_name = deployment_name_template.replace("{instance}", instance);
    let deployment = match Api::<Deployment>::namespaced(client.clone(), namespace)
        .get_opt(&deployment_name)
        .await
    {
        Ok(d) => d,
        Err(error) => {
            tracing::debug!(%error, "reading the Deployment failed; using the Secret name template");
            None
        }
    };
    let config = naming::resolve(config, deployment.as_ref().and_then(mounted_rndc_secret));
    let secret_name = format!("{namespace}/{}", config.secret_name);
    if !config.is_managed() {
        return Err(RotateError::UserManaged(secret_name));
    }
    if !config.auto_rotate {
        return Err(RotateError::NotRotating(qualified));
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    // The write carries the resourceVersion it decided on; when the rotator (or anyone) wrote
    // the Secret in between, re-read and decide again.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let secret = secrets
            .get_opt(&config.secret_name)
            .await?
            .ok_or_else(|| RotateError::NoSecret(secret_name.clone()))?;
        let finding = audit(&config, Some(&secret), now, policy);
        if finding.verdict == Verdict::Fail {
            return Err(RotateError::BelowPolicy {
                secret: secret_name,
                namespace: namespace.to_owned(),
                reason: finding.detail,
            });
        }
        let created = KeyAnnotations::of(&secret).created_at;
        if let Some(created) = created
            && !force
            && let Some(retry_after) = rate_limit_end(created, now)
        {
            return Err(RotateError::RateLimited {
                secret: secret_name,
                created_at: format_time(created),
                retry_after: format_time(retry_after),
            });
        }
        let back_dated = format_time(back_dated_created_at(
            now,
            config.rotate_after.as_time_delta(),
        ));
        let patch = json!({
            "metadata": {
                "resourceVersion": secret.metadata.resource_version,
                "annotations": { ANNOTATION_CREATED_AT: back_dated },
            }
        });
        let written = secrets
            .patch(
                &config.secret_name,
                &PatchParams {
                    field_manager: Some("rndc-warden-rotate".to_owned()),
                    ..PatchParams::default()
                },
                &Patch::Merge(&patch),
            )
            .await;
        match written {
            Ok(_) => {
                return Ok(Requested::Triggered {
                    namespace: namespace.to_owned(),
                    secret: config.secret_name,
                    created_at: back_dated,
                });
            }
            Err(kube::Error::Api(status)) if status.code == 409 && attempts < 5 => continue,
            Err(error) => return Err(error.into()),
        }
    }
}

/// Runs `rotate` with `client`; exit code 0 on success, 1 when refused, 2 on connection errors.
pub async fn run(client: &Client, policy: &PolicyConfig, args: &RotateArgs) -> ExitCode {
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    match request_with(
        client,
        &namespace,
        &args.instance,
        args.force,
        policy,
        Utc::now(),
        &args.deployment_name_template,
    )
    .await
    {
        Ok(Requested::Triggered {
            namespace,
            secret,
            created_at,
        }) => {
            println!(
                "Requested rotation of Secret {namespace}/{secret} (rndc-created-at back-dated to \
                 {created_at}); the rotator replaces the key and rolls the pods now"
            );
            ExitCode::SUCCESS
        }
        Err(RotateError::Kube(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
