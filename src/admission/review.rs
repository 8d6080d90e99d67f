//! The adapter between AdmissionReview requests and the pure policy core: decode the object, look
//! up what the rules need in the watch caches (never the API), call the policy, and say what to
//! answer. No I/O here either, so every rule is testable in-process.

use json_patch::Patch;
use k8s_openapi::api::core::v1::Secret;
use kube::core::admission::Operation;

use super::request::{HandledKind, RequestObject, ReviewRequest};

use crate::api::{Bind9Cluster, Bind9ClusterSpec, Bind9Instance, ClusterBind9Provider, GROUP};
use crate::cache::{ClusterCache, ClusterRefTarget, Lookup};
use crate::clock::{self, Clock};
use crate::metrics::Endpoint;
use crate::policy::{
    self, EffectiveKeyConfig, Mutation, PolicyConfig, SecretChange, Validation, shown,
};

/// What to answer one admission request with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdmissionVerdict {
    /// Why the request is denied; `None` allows it.
    pub denial: Option<String>,
    /// Warnings shown by kubectl.
    pub warnings: Vec<String>,
    /// The JSON patch of the mutating endpoint, when it changes anything.
    pub patch: Option<Patch>,
}

impl AdmissionVerdict {
    fn deny(message: String) -> Self {
        Self {
            denial: Some(message),
            ..Self::default()
        }
    }

    /// Warnings are held to the same limits on both endpoints.
    fn from_mutation(mutation: Mutation) -> Self {
        Self {
            denial: None,
            warnings: policy::limit_warnings(mutation.warnings),
            patch: (!mutation.patch.0.is_empty()).then_some(mutation.patch),
        }
    }

    fn from_validation(validation: Validation) -> Self {
        Self {
            denial: validation.denial_message(),
            warnings: validation.warnings,
            patch: None,
        }
    }
}

/// Policy, caches and clock: everything a request is decided with.
pub struct AdmissionPolicy {
    config: PolicyConfig,
    cache: ClusterCache,
    clock: Clock,
}

impl std::fmt::Debug for AdmissionPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmissionPolicy")
            .field("config", &self.config)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl AdmissionPolicy {
    /// A policy reading lookups from `cache` and the time from the system clock.
    pub fn new(config: PolicyConfig, cache: ClusterCache) -> Self {
        Self::with_clock(config, cache, clock::system())
    }

    /// A policy with an injected clock (tests).
    pub fn with_clock(config: PolicyConfig, cache: ClusterCache, clock: Clock) -> Self {
        Self {
            config,
            cache,
            clock,
        }
    }

    /// Decides one request for `endpoint`.
    pub fn review(&self, endpoint: Endpoint, request: &ReviewRequest<'_>) -> AdmissionVerdict {
        let Some(kind) = request.kind.handled() else {
            return AdmissionVerdict::deny(format!(
                "rndc-warden does not handle {}/{} {}; limit the webhook rules to Bind9Instance, \
                 Bind9Cluster, ClusterBind9Provider (bindy.firestoned.io) and Secrets",
                shown(display_group(&request.kind.group)),
                shown(&request.kind.version),
                shown(&request.kind.kind)
            ));
        };
        if !matches!(request.operation, Operation::Create | Operation::Update) {
            // DELETE and CONNECT carry nothing to default or validate.
            return AdmissionVerdict::default();
        }
        let Some(object) = &request.object else {
            return AdmissionVerdict::deny(format!(
                "{} request for {} has no object; the apiserver always sends one on CREATE and UPDATE",
                operation_text(&request.operation),
                request.kind.kind
            ));
        };
        let namespace = request.namespace.as_deref().unwrap_or_default();
        // The stored object of an UPDATE, when it decodes: denials then apply to what changes.
        let stored = request.old_object.as_ref();
        match kind {
            HandledKind::Instance => self.instance(endpoint, object, stored, namespace),
            HandledKind::Cluster => {
                object
                    .cluster()
                    .map_or_else(AdmissionVerdict::deny, |cluster| match endpoint {
                        Endpoint::Mutate => AdmissionVerdict::from_mutation(
                            policy::mutate_cluster(&cluster, &self.config),
                        ),
                        Endpoint::Validate => AdmissionVerdict::from_validation(
                            match stored.and_then(|s| s.cluster().ok()) {
                                Some(stored) => {
                                    policy::validate_cluster_update(&cluster, &stored, &self.config)
                                }
                                None => policy::validate_cluster(&cluster, &self.config),
                            },
                        ),
                    })
            }
            HandledKind::Provider => {
                object
                    .provider()
                    .map_or_else(AdmissionVerdict::deny, |provider| match endpoint {
                        Endpoint::Mutate => AdmissionVerdict::from_mutation(
                            policy::mutate_provider(&provider, &self.config),
                        ),
                        Endpoint::Validate => AdmissionVerdict::from_validation(
                            match stored.and_then(|s| s.provider().ok()) {
                                Some(stored) => policy::validate_provider_update(
                                    &provider,
                                    &stored,
                                    &self.config,
                                ),
                                None => policy::validate_provider(&provider, &self.config),
                            },
                        ),
                    })
            }
            HandledKind::Secret => self.secret(endpoint, request, object, namespace),
        }
    }

    /// The cluster an instance refers to, as far as the caches know it.
    fn cluster_of(&self, instance: &Bind9Instance, namespace: &str) -> Option<Bind9Cluster> {
        let name = instance
            .spec
            .cluster_ref
            .as_deref()
            .filter(|name| !name.is_empty())?;
        match self.cache.cluster(namespace, name) {
            Lookup::Found(target) => Some(match target.as_ref() {
                ClusterRefTarget::Cluster(cluster) => cluster.as_ref().clone(),
                ClusterRefTarget::Provider(provider) => provider_as_cluster(name, provider),
            }),
            Lookup::Missing | Lookup::Unknown => None,
        }
    }

    fn instance(
        &self,
        endpoint: Endpoint,
        object: &RequestObject<'_>,
        stored: Option<&RequestObject<'_>>,
        namespace: &str,
    ) -> AdmissionVerdict {
        let instance = match object.instance() {
            Ok(instance) => instance,
            Err(message) => return AdmissionVerdict::deny(message),
        };
        let cluster = self.cluster_of(&instance, namespace);
        match endpoint {
            Endpoint::Mutate => AdmissionVerdict::from_mutation(policy::mutate_instance(
                &instance,
                cluster.as_ref(),
                &self.config,
            )),
            Endpoint::Validate => {
                AdmissionVerdict::from_validation(match stored.and_then(|s| s.instance().ok()) {
                    Some(stored) => policy::validate_instance_update(
                        &instance,
                        &stored,
                        cluster.as_ref(),
                        &self.config,
                    ),
                    None => policy::validate_instance(&instance, cluster.as_ref(), &self.config),
                })
            }
        }
    }

    /// The key configuration of the instance that uses `secret`: its owner, or else an instance
    /// in the namespace whose effective Secret name is this one (`secretRef`).
    fn owner_config(&self, secret: &Secret, namespace: &str) -> Option<EffectiveKeyConfig> {
        let name = secret.metadata.name.as_deref()?;
        let config_of = |instance: &Bind9Instance| {
            let cluster = self.cluster_of(instance, namespace);
            policy::effective_config(instance, cluster.as_ref(), &self.config).ok()
        };
        let owner = secret
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|owner| {
                owner.kind == "Bind9Instance" && owner.api_version.starts_with(&format!("{GROUP}/"))
            });
        if let Some(owner) = owner
            && let Lookup::Found(instance) = self.cache.instance(namespace, &owner.name)
            && let Some(config) = config_of(&instance)
        {
            return Some(config);
        }
        self.cache
            .instances_in(namespace)
            .iter()
            .filter_map(|instance| config_of(instance))
            .find(|config| config.secret_name == name)
    }

    fn secret(
        &self,
        endpoint: Endpoint,
        request: &ReviewRequest<'_>,
        object: &RequestObject<'_>,
        namespace: &str,
    ) -> AdmissionVerdict {
        let new = match object.secret("Secret") {
            Ok(secret) => secret,
            Err(message) => return AdmissionVerdict::deny(message),
        };
        let old = match request
            .old_object
            .as_ref()
            .map(|old| old.secret("stored Secret"))
        {
            Some(Ok(old)) => Some(old),
            Some(Err(message)) => return AdmissionVerdict::deny(message),
            None => None,
        };
        let owner = self.owner_config(&new, namespace);
        let labelled = policy::is_rndc_key_secret(&new)
            || old.as_ref().is_some_and(policy::is_rndc_key_secret);
        if !labelled && owner.is_none() {
            // Not a key Secret: the object selector should not have sent it.
            return AdmissionVerdict::default();
        }
        let username = request.user_info.username.as_deref().unwrap_or_default();
        let change = SecretChange {
            new: &new,
            old: old.as_ref(),
            username,
            owner: owner.as_ref(),
            now: (self.clock)(),
        };
        match endpoint {
            Endpoint::Mutate => {
                AdmissionVerdict::from_mutation(policy::mutate_secret(&change, &self.config))
            }
            Endpoint::Validate => {
                AdmissionVerdict::from_validation(policy::validate_secret(&change, &self.config))
            }
        }
    }
}

fn provider_as_cluster(name: &str, provider: &ClusterBind9Provider) -> Bind9Cluster {
    let spec = &provider.spec;
    Bind9Cluster::new(
        name,
        Bind9ClusterSpec {
            primary: spec.primary.clone(),
            secondary: spec.secondary.clone(),
            global: spec.global.clone(),
            rndc_secret_refs: spec.rndc_secret_refs.clone(),
            extra: Default::default(),
        },
    )
}

fn display_group(group: &str) -> &str {
    if group.is_empty() { "core" } else { group }
}

fn operation_text(operation: &Operation) -> &'static str {
    match operation {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}
