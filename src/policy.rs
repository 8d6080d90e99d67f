//! The pure policy core: every decision rndc-warden makes, with no I/O, no clock and no
//! randomness (`now`, random bytes and a [`PolicyConfig`] are passed in).
//!
//! Front ends:
//! - admission: [`mutate_instance`]/[`validate_instance`] (and the cluster, provider and Secret
//!   variants) give a JSON patch, denials and warnings;
//! - `check`: [`review_instance`] and friends run mutation then validation, as the API server would;
//! - the rotator: [`effective_config`] then [`plan_rotation`] give a [`RotationPlan`];
//! - `audit`: [`audit`] gives a [`Verdict`].

mod algorithm;
mod duration;
mod effective;
mod key_data;
mod names;
mod review;
mod rndc_key;
mod schedule;
mod settings;
mod shown;
mod stamp;

pub use algorithm::{Algorithm, Strength, UnknownAlgorithm};
pub use duration::{
    DURATION_HINT, DurationError, DurationErrorKind, MAX_HOURS, MIN_HOURS, RotateAfter, Unit,
    WARN_BELOW_HOURS,
};
pub use effective::{
    ConfigSource, EffectiveConfigError, EffectiveKeyConfig, Management, Role, effective_config,
};
pub use key_data::{DataKeys, Findings, KeyFacts, key_facts};
pub use names::{data_path, is_dns_subdomain};
pub use review::{
    Decision, MAX_WARNING_LEN, MAX_WARNINGS_BYTES, Mutation, Validation, apply_patch,
    limit_warnings, mutate_cluster, mutate_instance, mutate_provider, review_cluster,
    review_instance, review_provider, validate_cluster, validate_cluster_update, validate_instance,
    validate_instance_update, validate_provider, validate_provider_update,
};
pub use rndc_key::{
    KeyMaterial, KeySecretData, RndcKey, RndcKeyError, RndcKeyProblem, ShortKey,
    key_secret_from_bytes, parse_rndc_key,
};
pub use schedule::{
    AuditFinding, KeyAnnotations, OVERDUE_GRACE, RATE_LIMIT, RotateReason, RotationPlan,
    SecretAction, Verdict, audit, back_dated_created_at, format_time, key_revision, parse_time,
    plan_rotation, plan_rotation_continuing, rate_limit_end, rotation_annotations, rotation_status,
    same_revision,
};
pub use settings::{
    ConfigError, DEFAULT_ROTATOR_USERNAME, DEFAULT_SECRET_NAME_TEMPLATE, PolicyConfig,
    SecretNameTemplate,
};
pub use shown::{MAX_MESSAGE_BYTES, MAX_QUOTED_CHARS, Shown, join_denials, looks_like_key, shown};
pub use stamp::{
    MAX_CLOCK_SKEW, SecretChange, is_rndc_key_secret, mutate_secret, review_secret, validate_secret,
};
