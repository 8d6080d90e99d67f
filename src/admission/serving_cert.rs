//! Self-managed serving certificates: a CA and a serving certificate kept in a Kubernetes Secret,
//! the webhook configurations' `caBundle` patched to trust it, and renewal before expiry with the
//! old and new CA both trusted during the overlap, so no admission call fails while it happens.
//!
//! Every replica runs the same loop; each write carries a resourceVersion precondition, so two
//! replicas never overwrite each other and a conflict just waits for the next tick. The decision
//! of what to do is pure ([`next_step`]) and derived from the Secret alone.
//!
//! CA rotation happens in three steps, one per tick at the earliest:
//! 1. stage: a new CA is generated and added to the trusted bundle (`ca.crt`) next to the current
//!    one, and the bundle is written into every webhook configuration;
//! 2. promote: once every webhook configuration trusts the new CA and the propagation delay has
//!    passed, the serving certificate is re-signed by the new CA;
//! 3. prune: CAs that have expired leave the bundle.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use clap::Args;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, PostParams};

use super::pki::{self, PemPair};
use super::tls::{ReloadOutcome, ReloadingTls, TlsError};
use crate::clock::Clock;

const TLS_CRT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";
const CA_BUNDLE: &str = "ca.crt";
const SIGNING_CRT: &str = "ca-signing.crt";
const SIGNING_KEY: &str = "ca-signing.key";
const NEXT_CRT: &str = "ca-next.crt";
const NEXT_KEY: &str = "ca-next.key";
/// Annotation recording when the next CA was added to the bundle.
pub const ANNOTATION_NEXT_CA_STAGED_AT: &str = "rndc-warden/next-ca-staged-at";

/// Flags of the self-managed certificate mode.
#[derive(Debug, Clone, Args)]
pub struct SelfManagedCertArgs {
    /// Keep the serving certificate in this Secret (in `--cert-namespace`), patch the caBundle of
    /// the webhook configurations and renew before expiry. Off when unset.
    #[arg(long, env = "RNDC_WARDEN_CERT_SECRET")]
    pub cert_secret: Option<String>,
    /// Namespace of the certificate Secret (default: the pod's namespace, else the client's
    /// default).
    #[arg(long, env = "RNDC_WARDEN_CERT_NAMESPACE")]
    pub cert_namespace: Option<String>,
    /// Mutating and validating webhook configurations whose caBundle is kept current.
    #[arg(
        long = "webhook-config",
        env = "RNDC_WARDEN_WEBHOOK_CONFIGS",
        value_delimiter = ','
    )]
    pub webhook_configs: Vec<String>,
    /// DNS names (or IPs) of the serving certificate, e.g. `<service>.<namespace>.svc`.
    #[arg(
        long = "cert-dns-name",
        env = "RNDC_WARDEN_CERT_DNS_NAMES",
        value_delimiter = ','
    )]
    pub cert_dns_names: Vec<String>,
    /// Lifetime of a generated CA.
    #[arg(long, env = "RNDC_WARDEN_CERT_CA_LIFETIME", default_value = "730d", value_parser = crate::config::parse_duration)]
    pub cert_ca_lifetime: Duration,
    /// Lifetime of a serving certificate (capped at its CA's expiry).
    #[arg(long, env = "RNDC_WARDEN_CERT_LIFETIME", default_value = "90d", value_parser = crate::config::parse_duration)]
    pub cert_lifetime: Duration,
    /// How long a newly trusted CA must sit in the caBundle before serving from it.
    #[arg(long, env = "RNDC_WARDEN_CERT_PROPAGATION_DELAY", default_value = "30s", value_parser = crate::config::parse_duration)]
    pub cert_propagation_delay: Duration,
    /// How often the Secret and the webhook configurations are checked.
    #[arg(long, env = "RNDC_WARDEN_CERT_CHECK_INTERVAL", default_value = "60s", value_parser = crate::config::parse_duration)]
    pub cert_check_interval: Duration,
}

/// Why the certificate Secret or the webhook configurations could not be managed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A Kubernetes API call failed.
    #[error("{action}: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The API error.
        source: kube::Error,
    },
    /// Generating or loading a certificate failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Settings are unusable.
    #[error("{0}")]
    Settings(String),
}

/// Lifetimes and names the planner works with.
#[derive(Debug, Clone)]
pub struct CertSettings {
    /// CA lifetime.
    pub ca_lifetime: TimeDelta,
    /// Serving certificate lifetime.
    pub leaf_lifetime: TimeDelta,
    /// Delay between trusting a new CA and serving from it.
    pub propagation_delay: TimeDelta,
    /// DNS names of the serving certificate.
    pub dns_names: Vec<String>,
    /// IP addresses of the serving certificate.
    pub ips: Vec<IpAddr>,
}

/// A CA or serving certificate with its expiry.
#[derive(Debug, Clone, PartialEq)]
pub struct Dated {
    /// PEM certificate and key.
    pub pair: PemPair,
    /// When the certificate expires.
    pub not_after: DateTime<Utc>,
}

/// What the certificate Secret holds.
#[derive(Debug, Clone, PartialEq)]
pub struct CertState {
    /// The CA that signs serving certificates now.
    pub signing: Dated,
    /// The serving certificate.
    pub leaf: Dated,
    /// Every CA clients trust (PEM blocks with their expiry).
    pub trusted: Vec<(String, DateTime<Utc>)>,
    /// The staged next CA and when it was staged.
    pub next: Option<(Dated, DateTime<Utc>)>,
}

/// What one pass should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStep {
    /// No usable Secret: generate a CA and a serving certificate.
    Create,
    /// Add a new CA to the trusted bundle (the current CA nears expiry).
    StageNextCa,
    /// Re-sign the serving certificate with the staged CA.
    PromoteNextCa,
    /// Renew the serving certificate with the current CA.
    RenewLeaf,
    /// Drop expired CAs from the bundle.
    PruneExpired,
    /// Nothing to change.
    Nothing,
}

/// Whether less than a third of `lifetime` is left before `not_after`.
fn nearly_expired(not_after: DateTime<Utc>, lifetime: TimeDelta, now: DateTime<Utc>) -> bool {
    not_after - now < lifetime / 3
}

/// Decides the next step from the Secret's state. `webhooks_trust_next` says whether every webhook
/// configuration's caBundle already holds the staged CA.
pub fn next_step(
    state: Option<&CertState>,
    settings: &CertSettings,
    webhooks_trust_next: bool,
    now: DateTime<Utc>,
) -> CertStep {
    let Some(state) = state else {
        return CertStep::Create;
    };
    if state.signing.not_after <= now {
        // Everything expired (the cluster was off for long): start over.
        return CertStep::Create;
    }
    if let Some((_, staged_at)) = &state.next {
        if webhooks_trust_next && now - *staged_at >= settings.propagation_delay {
            return CertStep::PromoteNextCa;
        }
    } else if nearly_expired(state.signing.not_after, settings.ca_lifetime, now) {
        return CertStep::StageNextCa;
    }
    if nearly_expired(state.leaf.not_after, settings.leaf_lifetime, now) {
        return CertStep::RenewLeaf;
    }
    if state.trusted.iter().any(|(_, not_after)| *not_after <= now) {
        return CertStep::PruneExpired;
    }
    CertStep::Nothing
}

fn not_after_of(pem: &str) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(pki::not_after(pem.as_bytes())?, 0)
}

/// Splits a PEM bundle into its certificate blocks.
fn pem_blocks(bundle: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    bundle
        .split_inclusive(END)
        .filter_map(|block| {
            let start = block.find("-----BEGIN CERTIFICATE-----")?;
            block
                .ends_with(END)
                .then(|| format!("{}\n", &block[start..]))
        })
        .collect()
}

fn dated(cert: Option<String>, key: Option<String>) -> Option<Dated> {
    let (cert, key) = (cert?, key?);
    let not_after = not_after_of(&cert)?;
    Some(Dated {
        pair: PemPair { cert, key },
        not_after,
    })
}

/// Reads the state from the Secret's data; `None` when anything essential is missing or broken.
pub fn read_state(secret: &Secret) -> Option<CertState> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
    };
    let signing = dated(text(SIGNING_CRT), text(SIGNING_KEY))?;
    let leaf = dated(text(TLS_CRT), text(TLS_KEY))?;
    let trusted = pem_blocks(&text(CA_BUNDLE)?)
        .into_iter()
        .filter_map(|pem| not_after_of(&pem).map(|t| (pem, t)))
        .collect::<Vec<_>>();
    let staged_at = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_NEXT_CA_STAGED_AT))
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let next = dated(text(NEXT_CRT), text(NEXT_KEY)).zip(staged_at);
    Some(CertState {
        signing,
        leaf,
        trusted,
        next,
    })
}

/// The trusted bundle as one PEM text (the webhooks' caBundle).
pub fn bundle_pem(state: &CertState) -> String {
    state.trusted.iter().map(|(pem, _)| pem.as_str()).collect()
}

fn std_to_delta(duration: Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
}

/// At least one second, so a certificate never expires as it is issued.
fn at_least_a_second(delta: TimeDelta) -> TimeDelta {
    delta.max(TimeDelta::seconds(1))
}

fn new_leaf(ca: &Dated, settings: &CertSettings, now: DateTime<Utc>) -> Result<Dated, TlsError> {
    let lifetime = settings.leaf_lifetime.min(ca.not_after - now);
    let pair = pki::sign_serving_cert(
        &ca.pair,
        &settings.dns_names,
        &settings.ips,
        now,
        at_least_a_second(lifetime),
    )?;
    let not_after = not_after_of(&pair.cert).unwrap_or(now + lifetime);
    Ok(Dated { pair, not_after })
}

fn new_ca(settings: &CertSettings, now: DateTime<Utc>) -> Result<Dated, TlsError> {
    let pair = pki::new_ca(
        "rndc-warden webhook CA",
        now,
        at_least_a_second(settings.ca_lifetime),
    )?;
    let not_after = not_after_of(&pair.cert).unwrap_or(now + settings.ca_lifetime);
    Ok(Dated { pair, not_after })
}

/// Applies `step` to `state`, generating what it needs.
pub fn apply_step(
    step: CertStep,
    state: Option<CertState>,
    settings: &CertSettings,
    now: DateTime<Utc>,
) -> Result<Option<CertState>, TlsError> {
    let Some(mut state) = state.filter(|_| step != CertStep::Create) else {
        if step != CertStep::Create {
            return Ok(None);
        }
        let signing = new_ca(settings, now)?;
        let leaf = new_leaf(&signing, settings, now)?;
        let trusted = vec![(signing.pair.cert.clone(), signing.not_after)];
        return Ok(Some(CertState {
            signing,
            leaf,
            trusted,
            next: None,
        }));
    };
    match step {
        CertStep::Create | CertStep::Nothing => return Ok(None),
        CertStep::StageNextCa => {
            let next = new_ca(settings, now)?;
            state.trusted.push((next.pair.cert.clone(), next.not_after));
            state.next = Some((next, now));
        }
        CertStep::PromoteNextCa => {
            let Some((next, _)) = state.next.take() else {
                return Ok(None);
            };
            state.leaf = new_leaf(&next, settings, now)?;
            state.signing = next;
        }
        CertStep::RenewLeaf => state.leaf = new_leaf(&state.signing, settings, now)?,
        CertStep::PruneExpired => state.trusted.retain(|(_, not_after)| *not_after > now),
    }
    Ok(Some(state))
}

/// Writes `state` into `secret` (data and the staging annotation), keeping everything else.
pub fn write_state(secret: &mut Secret, state: &CertState) {
    let data = secret.data.get_or_insert_with(Default::default);
    let mut put = |key: &str, value: &str| {
        data.insert(key.to_owned(), ByteString(value.as_bytes().to_vec()));
    };
    put(TLS_CRT, &state.leaf.pair.cert);
    put(TLS_KEY, &state.leaf.pair.key);
    put(SIGNING_CRT, &state.signing.pair.cert);
    put(SIGNING_KEY, &state.signing.pair.key);
    put(CA_BUNDLE, &bundle_pem(state));
    let annotations = secret
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    match &state.next {
        Some((next, staged_at)) => {
            put(NEXT_CRT, &next.pair.cert);
            put(NEXT_KEY, &next.pair.key);
            annotations.insert(
                ANNOTATION_NEXT_CA_STAGED_AT.to_owned(),
                staged_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            );
        }
        None => {
            data.remove(NEXT_CRT);
            data.remove(NEXT_KEY);
            annotations.remove(ANNOTATION_NEXT_CA_STAGED_AT);
        }
    }
    // Only a new Secret gets the TLS type: the type of an existing one cannot change, and a
    // chart may pre-create it as Opaque.
    secret
        .type_
        .get_or_insert_with(|| "kubernetes.io/tls".to_owned());
}

/// The self-managed certificate loop's handles.
pub struct SelfManagedCerts {
    secrets: Api<Secret>,
    mutating: Api<MutatingWebhookConfiguration>,
    validating: Api<ValidatingWebhookConfiguration>,
    secret_name: String,
    webhook_configs: Vec<String>,
    settings: CertSettings,
    check_interval: Duration,
    clock: Clock,
}

impl std::fmt::Debug for SelfManagedCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfManagedCerts")
            .field("secret_name", &self.secret_name)
            .field("webhook_configs", &self.webhook_configs)
            .finish_non_exhaustive()
    }
}

fn api_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> CertError {
    let action = action.into();
    move |source| CertError::Api { action, source }
}

impl SelfManagedCerts {
    /// Prepares the loop from the flags; `None` when the mode is off. The Secret lives in
    /// `--cert-namespace`, else `pod_namespace`, else the client's default namespace; `clock`
    /// dates every decision and certificate.
    pub fn from_args(
        client: &Client,
        args: &SelfManagedCertArgs,
        pod_namespace: Option<&str>,
        clock: Clock,
    ) -> Result<Option<Self>, CertError> {
        let Some(secret_name) = args.cert_secret.clone() else {
            return Ok(None);
        };
        let namespace = args
            .cert_namespace
            .clone()
            .or_else(|| pod_namespace.map(str::to_owned))
            .unwrap_or_else(|| client.default_namespace().to_owned());
        if args.cert_dns_names.is_empty() {
            return Err(CertError::Settings(
                "--cert-secret needs at least one --cert-dns-name (e.g. rndc-warden.rndc-warden.svc)".to_owned(),
            ));
        }
        let (mut dns_names, mut ips) = (Vec::new(), Vec::new());
        for name in &args.cert_dns_names {
            match name.parse::<IpAddr>() {
                Ok(ip) => ips.push(ip),
                Err(_) => dns_names.push(name.clone()),
            }
        }
        Ok(Some(Self {
            secrets: Api::namespaced(client.clone(), &namespace),
            mutating: Api::all(client.clone()),
            validating: Api::all(client.clone()),
            secret_name,
            webhook_configs: args.webhook_configs.clone(),
            settings: CertSettings {
                ca_lifetime: std_to_delta(args.cert_ca_lifetime),
                leaf_lifetime: std_to_delta(args.cert_lifetime),
                propagation_delay: std_to_delta(args.cert_propagation_delay),
                dns_names,
                ips,
            },
            check_interval: args.cert_check_interval,
            clock,
        }))
    }

    /// Runs passes until a serving certificate exists and returns it (first start).
    pub async fn initial(&self, deadline: Duration) -> Result<PemPair, CertError> {
        let started = std::time::Instant::now();
        loop {
            match self.pass().await {
                Ok(state) => return Ok(state.leaf.pair),
                Err(error) if started.elapsed() < deadline => {
                    tracing::warn!(%error, "self-managed certificate not ready yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Keeps the certificate current and hands renewals to `tls`, until `stop` resolves.
    pub async fn run(
        self,
        tls: Arc<ReloadingTls>,
        mut on_reload: impl FnMut(ReloadOutcome) + Send,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(self.check_interval) => {}
            }
            match self.pass().await {
                Ok(state) => {
                    let outcome = tls.set_pem(&state.leaf.pair);
                    if outcome != ReloadOutcome::Unchanged {
                        on_reload(outcome);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "self-managed certificate pass failed; retrying next tick")
                }
            }
        }
    }

    /// One pass: read, decide, write the Secret (with a resourceVersion precondition), then make
    /// every webhook configuration trust the bundle. Returns the state now in the Secret.
    async fn pass(&self) -> Result<CertState, CertError> {
        let now = (self.clock)();
        let existing = self
            .secrets
            .get_opt(&self.secret_name)
            .await
            .map_err(api_error(format!("reading Secret {}", self.secret_name)))?;
        let current = existing.as_ref().and_then(read_state);
        let trust_next = match current.as_ref().and_then(|s| s.next.as_ref()) {
            Some((next, _)) => self.webhooks_trust(&next.pair.cert).await?,
            None => false,
        };
        let step = next_step(current.as_ref(), &self.settings, trust_next, now);
        let state = match apply_step(step, current.clone(), &self.settings, now)? {
            None => {
                current.ok_or_else(|| CertError::Settings("no certificate state".to_owned()))?
            }
            Some(state) => {
                tracing::info!(?step, secret = %self.secret_name, "updating the self-managed serving certificate");
                self.store(existing, &state).await?;
                state
            }
        };
        self.ensure_webhooks_trust(&bundle_pem(&state)).await?;
        Ok(state)
    }

    async fn store(&self, existing: Option<Secret>, state: &CertState) -> Result<(), CertError> {
        let pp = PostParams::default();
        match existing {
            Some(mut secret) => {
                // Keeps metadata.resourceVersion: a concurrent writer gets 409 and re-reads.
                write_state(&mut secret, state);
                self.secrets
                    .replace(&self.secret_name, &pp, &secret)
                    .await
                    .map_err(api_error(format!("updating Secret {}", self.secret_name)))?;
            }
            None => {
                let mut secret = Secret::default();
                secret.metadata.name = Some(self.secret_name.clone());
                secret.metadata.labels = Some(
                    [(
                        "app.kubernetes.io/name".to_owned(),
                        "rndc-warden".to_owned(),
                    )]
                    .into(),
                );
                write_state(&mut secret, state);
                self.secrets
                    .create(&pp, &secret)
                    .await
                    .map_err(api_error(format!("creating Secret {}", self.secret_name)))?;
            }
        }
        Ok(())
    }

    async fn webhooks_trust(&self, ca_pem: &str) -> Result<bool, CertError> {
        for name in &self.webhook_configs {
            for bundle in self.bundles_of(name).await? {
                if !pem_blocks(&bundle)
                    .iter()
                    .any(|block| block.trim() == ca_pem.trim())
                {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Every caBundle under the configurations called `name` (mutating and validating).
    async fn bundles_of(&self, name: &str) -> Result<Vec<String>, CertError> {
        let text = |b: Option<&ByteString>| {
            b.map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .unwrap_or_default()
        };
        let mut bundles = Vec::new();
        if let Some(config) = get_config(&self.mutating, name).await? {
            let hooks = config.webhooks.iter().flatten();
            bundles.extend(hooks.map(|w| text(w.client_config.ca_bundle.as_ref())));
        }
        if let Some(config) = get_config(&self.validating, name).await? {
            let hooks = config.webhooks.iter().flatten();
            bundles.extend(hooks.map(|w| text(w.client_config.ca_bundle.as_ref())));
        }
        Ok(bundles)
    }

    /// Sets every webhook's caBundle to `bundle` where it differs (replace with resourceVersion),
    /// in the mutating and the validating configuration of each name.
    async fn ensure_webhooks_trust(&self, bundle: &str) -> Result<(), CertError> {
        let wanted = ByteString(bundle.as_bytes().to_vec());
        let pp = PostParams::default();
        for name in &self.webhook_configs {
            let action = || format!("updating the caBundle of webhook configuration {name}");
            let mut found = false;
            if let Some(mut config) = get_config(&self.mutating, name).await? {
                found = true;
                let hooks = config.webhooks.iter_mut().flatten();
                if set_bundles(hooks.map(|w| &mut w.client_config.ca_bundle), &wanted) {
                    self.mutating
                        .replace(name, &pp, &config)
                        .await
                        .map_err(api_error(action()))?;
                    tracing::info!(configuration = %name, kind = "mutating", "patched caBundle");
                }
            }
            if let Some(mut config) = get_config(&self.validating, name).await? {
                found = true;
                let hooks = config.webhooks.iter_mut().flatten();
                if set_bundles(hooks.map(|w| &mut w.client_config.ca_bundle), &wanted) {
                    self.validating
                        .replace(name, &pp, &config)
                        .await
                        .map_err(api_error(action()))?;
                    tracing::info!(configuration = %name, kind = "validating", "patched caBundle");
                }
            }
            if !found {
                tracing::warn!(configuration = %name, "webhook configuration not found; its caBundle cannot be kept current");
            }
        }
        Ok(())
    }
}

/// Reads a webhook configuration; missing, or not readable because RBAC grants the name only
/// for the other kind, both mean "not this kind".
async fn get_config<K>(api: &Api<K>, name: &str) -> Result<Option<K>, CertError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get_opt(name).await {
        Ok(config) => Ok(config),
        Err(kube::Error::Api(status)) if status.code == 403 => Ok(None),
        Err(source) => Err(CertError::Api {
            action: format!("reading webhook configuration {name}"),
            source,
        }),
    }
}

/// Sets each bundle to `wanted`; returns whether anything changed.
fn set_bundles<'a>(
    bundles: impl Iterator<Item = &'a mut Option<ByteString>>,
    wanted: &ByteString,
) -> bool {
    let mut changed = false;
    for bundle in bundles {
        if bundle.as_ref() != Some(wanted) {
            *bundle = Some(wanted.clone());
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock;

    /// The clock the tests start from.
    fn start() -> Clock {
        clock::fixed(
            DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z")
                .expect("time")
                .with_timezone(&Utc),
        )
    }

    fn settings() -> CertSettings {
        CertSettings {
            ca_lifetime: TimeDelta::days(30),
            leaf_lifetime: TimeDelta::days(9),
            propagation_delay: TimeDelta::seconds(30),
            dns_names: vec!["svc.ns.svc".to_owned()],
            ips: vec![],
        }
    }

    fn state_at(now: DateTime<Utc>) -> CertState {
        apply_step(CertStep::Create, None, &settings(), now)
            .expect("create")
            .expect("state")
    }

    #[test]
    fn a_missing_secret_is_created_with_a_leaf_signed_by_a_trusted_ca() {
        let now = start()();
        assert_eq!(next_step(None, &settings(), false, now), CertStep::Create);
        let state = state_at(now);
        assert_eq!(state.trusted.len(), 1);
        assert_eq!(state.trusted[0].0, state.signing.pair.cert);
        assert!(state.leaf.not_after <= state.signing.not_after);
        assert_eq!(
            next_step(Some(&state), &settings(), false, now),
            CertStep::Nothing
        );
    }

    #[test]
    fn the_state_round_trips_through_a_secret() {
        let now = start()();
        let staged = apply_step(CertStep::StageNextCa, Some(state_at(now)), &settings(), now)
            .expect("stage")
            .expect("state");
        let mut secret = Secret::default();
        write_state(&mut secret, &staged);
        let read = read_state(&secret).expect("readable");
        assert_eq!(read.trusted.len(), 2);
        assert_eq!(read.signing, staged.signing);
        assert_eq!(
            read.next.as_ref().map(|(d, _)| d),
            staged.next.as_ref().map(|(d, _)| d)
        );
    }

    #[test]
    fn ca_rotation_stages_then_waits_for_trust_and_delay_then_promotes_then_prunes() {
        let start = start()();
        let s = settings();
        let state = state_at(start);
        let late = state.signing.not_after - TimeDelta::days(9);
        assert_eq!(
            next_step(Some(&state), &s, false, late),
            CertStep::StageNextCa
        );
        let staged = apply_step(CertStep::StageNextCa, Some(state), &s, late)
            .expect("ok")
            .expect("state");
        // Not trusted by the webhooks yet, or trusted too recently: keep serving the old leaf.
        assert_ne!(
            next_step(Some(&staged), &s, false, late + TimeDelta::minutes(5)),
            CertStep::PromoteNextCa
        );
        assert_ne!(
            next_step(Some(&staged), &s, true, late + TimeDelta::seconds(5)),
            CertStep::PromoteNextCa
        );
        let later = late + TimeDelta::minutes(1);
        assert_eq!(
            next_step(Some(&staged), &s, true, later),
            CertStep::PromoteNextCa
        );
        let old_ca = staged.signing.clone();
        let promoted = apply_step(CertStep::PromoteNextCa, Some(staged), &s, later)
            .expect("ok")
            .expect("state");
        assert_ne!(promoted.signing, old_ca);
        assert!(promoted.next.is_none());
        assert_eq!(
            promoted.trusted.len(),
            2,
            "the old CA stays trusted until it expires"
        );
        let after_old = old_ca.not_after + TimeDelta::seconds(1);
        // The leaf signed at promotion may be due for renewal first; renewal comes before pruning.
        let mut current = promoted;
        if next_step(Some(&current), &s, false, after_old) == CertStep::RenewLeaf {
            current = apply_step(CertStep::RenewLeaf, Some(current), &s, after_old)
                .expect("ok")
                .expect("state");
        }
        assert_eq!(
            next_step(Some(&current), &s, false, after_old),
            CertStep::PruneExpired
        );
        let pruned = apply_step(CertStep::PruneExpired, Some(current), &s, after_old)
            .expect("ok")
            .expect("state");
        assert_eq!(pruned.trusted.len(), 1);
        assert_eq!(pruned.trusted[0].0, pruned.signing.pair.cert);
    }

    #[test]
    fn a_leaf_nearing_expiry_is_renewed_by_the_same_ca() {
        let now = start()();
        let state = state_at(now);
        let late = state.leaf.not_after - TimeDelta::days(2);
        assert_eq!(
            next_step(Some(&state), &settings(), false, late),
            CertStep::RenewLeaf
        );
        let renewed = apply_step(CertStep::RenewLeaf, Some(state.clone()), &settings(), late)
            .expect("ok")
            .expect("state");
        assert_eq!(renewed.signing, state.signing);
        assert_ne!(renewed.leaf, state.leaf);
    }

    #[test]
    fn pem_bundles_split_into_blocks() {
        let now = start()();
        let a = state_at(now).signing.pair.cert;
        let b = state_at(now).signing.pair.cert;
        let blocks = pem_blocks(&format!("{a}{b}"));
        assert_eq!(blocks, vec![a, b]);
        assert!(pem_blocks("garbage").is_empty());
    }

    #[test]
    fn keys_are_redacted_in_debug_output() {
        let state = state_at(start()());
        let text = format!("{state:?}");
        assert!(!text.contains("PRIVATE KEY"), "{text}");
    }

    #[test]
    fn the_leaf_is_renewed_once_a_third_of_its_lifetime_is_left_and_an_expired_ca_starts_over() {
        let s = settings();
        let state = state_at(start()());
        let renew_at = state.leaf.not_after - s.leaf_lifetime / 3;
        let step_at = |at: DateTime<Utc>| next_step(Some(&state), &s, false, at);
        assert_eq!(step_at(renew_at - TimeDelta::seconds(1)), CertStep::Nothing);
        assert_eq!(
            step_at(renew_at + TimeDelta::seconds(1)),
            CertStep::RenewLeaf
        );
        assert_eq!(step_at(state.signing.not_after), CertStep::Create);
    }
}
