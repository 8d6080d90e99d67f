//! Admission decisions for `Bind9Instance`, `Bind9Cluster` and `ClusterBind9Provider`: defaulting
//! as an RFC 6902 patch (never changing which level wins) and validation of every place an
//! algorithm, a duration or a key can appear.

use std::fmt;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::algorithm::Algorithm;
use super::duration::RotateAfter;
use super::effective::{
    ConfigSource, EffectiveConfigError, Management, Role, effective_config, winning_block,
};
use super::key_data::{
    DataKeys, Findings, KeyDataRules, check_algorithm_name, check_key_values, inline_values,
};
use super::names::is_dns_subdomain;
use super::settings::PolicyConfig;
use super::shown::{join_denials, shown, shown_key, shown_name};
use crate::api::{
    ANNOTATION_CREATED_AT, ANNOTATION_ROTATE_AT, ANNOTATION_ROTATION_COUNT, Bind9Cluster,
    Bind9Instance, ClusterBind9Provider, DATA_RNDC_KEY, DATA_SECRET, Extra, MAX_MAP_ENTRIES,
    RndcKeyConfig, RndcSecretRef, RoleBlocks,
};

/// At most this many bytes of warnings per response (the API server's limit).
pub const MAX_WARNINGS_BYTES: usize = 4096;
/// Each warning is cut to this many bytes (the API server truncates longer ones).
pub const MAX_WARNING_LEN: usize = 256;

/// What the mutating webhook returns: a JSON patch and warnings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mutation {
    /// RFC 6902 operations against the submitted object.
    pub patch: Patch,
    /// Warnings for the user.
    pub warnings: Vec<String>,
}

/// What the validating webhook returns: denials and warnings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validation {
    /// Reasons to deny; empty means allowed.
    pub denials: Vec<String>,
    /// Denials found but left out of `denials` to keep the answer small.
    pub denials_left_out: usize,
    /// Warnings for the user.
    pub warnings: Vec<String>,
}

impl Validation {
    /// Whether the object is allowed.
    pub fn allowed(&self) -> bool {
        self.denials.is_empty() && self.denials_left_out == 0
    }

    /// All denials in one message of at most [`MAX_MESSAGE_BYTES`](super::MAX_MESSAGE_BYTES)
    /// (for the admission answer).
    pub fn denial_message(&self) -> Option<String> {
        (!self.allowed()).then(|| join_denials(&self.denials, self.denials_left_out))
    }
}

impl From<Findings> for Validation {
    fn from(findings: Findings) -> Self {
        Self {
            denials: findings.denials,
            denials_left_out: findings.denials_left_out,
            warnings: limit_warnings(findings.warnings),
        }
    }
}

/// Mutation then validation of the mutated object: what the API server would end up with.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// Reasons to deny; empty means allowed.
    pub denials: Vec<String>,
    /// Denials found but left out of `denials` to keep the answer small.
    pub denials_left_out: usize,
    /// Warnings from both webhooks, within the API server's limits.
    pub warnings: Vec<String>,
    /// The mutating webhook's patch.
    pub patch: Patch,
}

impl Decision {
    /// Combines a mutation and the validation of its result.
    pub fn new(mutation: Mutation, validation: Validation) -> Self {
        let mut warnings = mutation.warnings;
        warnings.extend(validation.warnings);
        Self {
            denials: validation.denials,
            denials_left_out: validation.denials_left_out,
            warnings: limit_warnings(warnings),
            patch: mutation.patch,
        }
    }

    /// Whether the object is allowed.
    pub fn allowed(&self) -> bool {
        self.denials.is_empty() && self.denials_left_out == 0
    }

    /// All denials in one message of at most [`MAX_MESSAGE_BYTES`](super::MAX_MESSAGE_BYTES).
    pub fn denial_message(&self) -> Option<String> {
        (!self.allowed()).then(|| join_denials(&self.denials, self.denials_left_out))
    }
}

/// Removes duplicates, cuts each warning to [`MAX_WARNING_LEN`] bytes and keeps the total within
/// [`MAX_WARNINGS_BYTES`], saying how many were left out.
pub fn limit_warnings(warnings: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut total = 0;
    let mut dropped = 0;
    for warning in warnings {
        if out.contains(&warning) {
            continue;
        }
        let warning = truncate(warning, MAX_WARNING_LEN);
        // Reserve room for the "N more" note.
        if total + warning.len() + 64 > MAX_WARNINGS_BYTES {
            dropped += 1;
            continue;
        }
        total += warning.len();
        out.push(warning);
    }
    if dropped > 0 {
        out.push(format!(
            "{dropped} more warning(s) left out; run rndc-warden check to see all"
        ));
    }
    out
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max - '…'.len_utf8();
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push('…');
    text
}

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

pub(crate) fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: pointer(tokens),
        value,
    })
}

pub(crate) fn replace(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Replace(ReplaceOperation {
        path: pointer(tokens),
        value,
    })
}

/// Applies a patch to a typed object (how `check` sees what the API server would store).
pub fn apply_patch<T: Serialize + DeserializeOwned>(
    object: &T,
    patch: &Patch,
) -> Result<T, String> {
    let mut value = serde_json::to_value(object).map_err(|e| e.to_string())?;
    json_patch::patch(&mut value, patch).map_err(|e| e.to_string())?;
    serde_json::from_value(value).map_err(|e| e.to_string())
}

fn default_block(cfg: &PolicyConfig) -> Value {
    json!({
        "autoRotate": cfg.default_auto_rotate,
        "rotateAfter": cfg.default_rotate_after.to_string(),
        "algorithm": cfg.default_algorithm.name(),
    })
}

/// Fills the omitted fields of a present block.
fn fill_block(
    tokens: &[&str],
    block: &RndcKeyConfig,
    cfg: &PolicyConfig,
    ops: &mut Vec<PatchOperation>,
) {
    let with = |field: &'static str| {
        let mut path = tokens.to_vec();
        path.push(field);
        path
    };
    if block.auto_rotate.is_none() {
        ops.push(add(&with("autoRotate"), json!(cfg.default_auto_rotate)));
    }
    if block.rotate_after.is_none() {
        ops.push(add(
            &with("rotateAfter"),
            json!(cfg.default_rotate_after.to_string()),
        ));
    }
    if block.algorithm.is_none() {
        // A referenced Secret's declared algorithm is the block's, not the default.
        let algorithm = block
            .secret_ref
            .as_ref()
            .and_then(|r| r.algorithm.as_deref())
            .and_then(Algorithm::parse)
            .filter(|a| !cfg.is_denied(*a))
            .unwrap_or(cfg.default_algorithm);
        ops.push(add(&with("algorithm"), json!(algorithm.name())));
    }
}

/// Defaulting of a `Bind9Instance`. `cluster` is its cluster when known (`None` also for a
/// standalone instance).
pub fn mutate_instance(
    instance: &Bind9Instance,
    cluster: Option<&Bind9Cluster>,
    cfg: &PolicyConfig,
) -> Mutation {
    let spec = &instance.spec;
    let mut ops = Vec::new();
    let mut warnings = Vec::new();
    let role = spec.role.as_deref().and_then(Role::parse_any_case);
    if let (Some(written), Some(role)) = (spec.role.as_deref(), role)
        && written != role.as_str()
    {
        ops.push(replace(&["spec", "role"], json!(role.as_str())));
    }
    if let Some(block) = &spec.rndc_key {
        fill_block(&["spec", "rndcKey"], block, cfg, &mut ops);
    } else if spec.rndc_secret_ref.is_none() {
        // A whole default block is written only where no other level can ever apply: a
        // standalone instance. An instance of a cluster or provider gets none, even while its
        // role has no block: one written now would shadow a role block added later (the
        // defaults apply when the effective configuration is computed instead). A deprecated
        // rndcSecretRef is left to win as it does today.
        let cluster_ref = spec.cluster_ref.as_deref().unwrap_or_default();
        if cluster_ref.is_empty() {
            ops.push(add(&["spec", "rndcKey"], default_block(cfg)));
        } else if cluster.is_none() {
            warnings.push(format!(
                "spec.clusterRef: Bind9Cluster {} is not known yet; its spec.<role>.rndcKey or \
                 the defaults will apply",
                shown_name(cluster_ref)
            ));
        }
    }
    Mutation {
        patch: Patch(ops),
        warnings,
    }
}

fn mutate_role_blocks(blocks: RoleBlocks<'_>, cfg: &PolicyConfig) -> Mutation {
    let mut ops = Vec::new();
    for (name, role) in [("primary", blocks.primary), ("secondary", blocks.secondary)] {
        if let Some(block) = role.and_then(|r| r.rndc_key.as_ref()) {
            fill_block(&["spec", name, "rndcKey"], block, cfg, &mut ops);
        }
    }
    Mutation {
        patch: Patch(ops),
        warnings: Vec::new(),
    }
}

/// Defaulting of a `Bind9Cluster`: fills the omitted fields of its role-level blocks.
pub fn mutate_cluster(cluster: &Bind9Cluster, cfg: &PolicyConfig) -> Mutation {
    mutate_role_blocks(cluster.spec.role_blocks(), cfg)
}

/// Defaulting of a `ClusterBind9Provider`: fills the omitted fields of its role-level blocks.
pub fn mutate_provider(provider: &ClusterBind9Provider, cfg: &PolicyConfig) -> Mutation {
    mutate_role_blocks(provider.spec.role_blocks(), cfg)
}

fn deny_unknown_fields(path: &str, extra: &Extra, known: &str, findings: &mut Findings) {
    for key in extra.keys() {
        let hint = if key == "rndcKeys" {
            format!("did you mean {path}.rndcKey?")
        } else {
            format!("use {known}")
        };
        findings.deny(format!("{path}.{}: unknown field; {hint}", shown_key(key)));
    }
}

/// Denies `rndcKey` (or the `rndcKeys` typo) where the Bindy operator never reads one, e.g. a
/// cluster-level `spec.rndcKey`: silently ignored, it would leave weak or unrotated keys in place.
fn deny_misplaced_blocks(path: &str, extra: &Extra, instead: &str, findings: &mut Findings) {
    for key in extra
        .keys()
        .filter(|k| matches!(k.as_str(), "rndcKey" | "rndcKeys"))
    {
        findings.deny(format!(
            "{path}.{key}: not a field here, so the Bindy operator would ignore it; set {instead} \
             instead"
        ));
    }
}

fn check_secret_name(path: impl fmt::Display, name: &str, findings: &mut Findings) {
    if !is_dns_subdomain(name) {
        findings.deny(format!(
            "{path}: {} is not a valid Secret name; use lower-case letters, digits, '-' and '.' \
             (a DNS-1123 subdomain), e.g. \"dns-primary-rndc\"",
            shown(name)
        ));
    }
}

fn check_reference(
    path: &str,
    reference: &RndcSecretRef,
    cfg: &PolicyConfig,
    findings: &mut Findings,
) {
    deny_unknown_fields(
        path,
        &reference.extra,
        "name, algorithm, keyNameKey, algorithmKey or secretKey",
        findings,
    );
    check_secret_name(format_args!("{path}.name"), &reference.name, findings);
    if let Some(algorithm) = &reference.algorithm {
        check_algorithm_name(format_args!("{path}.algorithm"), algorithm, cfg, findings);
    }
}

/// Checks one `rndcKey` block at `path` (e.g. `spec.rndcKey`, `spec.primary.rndcKey`).
fn check_block(path: &str, block: &RndcKeyConfig, cfg: &PolicyConfig, findings: &mut Findings) {
    deny_unknown_fields(
        path,
        &block.extra,
        "autoRotate, rotateAfter, algorithm, secretRef or secret",
        findings,
    );
    if let Some(value) = &block.rotate_after {
        match RotateAfter::parse(value) {
            Err(error) => findings.deny(format!("{path}.rotateAfter: {error}")),
            Ok(interval) if interval.is_short() => findings.warn(format!(
                "{path}.rotateAfter: {interval} is under 24h and every rotation restarts the BIND \
                 pods; use at least 24h, e.g. \"720h\""
            )),
            Ok(_) => {}
        }
    }
    let algorithm = block
        .algorithm
        .as_deref()
        .map(|name| check_algorithm_name(format_args!("{path}.algorithm"), name, cfg, findings))
        .unwrap_or(Some(cfg.default_algorithm));
    if block.secret_ref.is_some() && block.secret.is_some() {
        findings.deny(format!(
            "{path}: secretRef and secret are both set; keep secretRef for a Secret you manage or \
             secret for one rndc-warden creates, not both"
        ));
    }
    if let Some(reference) = &block.secret_ref {
        check_reference(&format!("{path}.secretRef"), reference, cfg, findings);
        // Only two allowed algorithms can disagree; a denied one is reported on its own.
        let allowed = |name: Option<&str>| {
            name.and_then(Algorithm::parse)
                .filter(|a| !cfg.is_denied(*a))
        };
        if let (Some(block_algorithm), Some(declared)) = (
            allowed(block.algorithm.as_deref()),
            allowed(reference.algorithm.as_deref()),
        ) && block_algorithm != declared
        {
            findings.deny(format!(
                "{path}.algorithm: {block_algorithm} disagrees with {path}.secretRef.algorithm \
                 ({declared}); make them the same or remove {path}.algorithm"
            ));
        }
        if block.auto_rotate == Some(true) {
            findings.warn(format!(
                "{path}.autoRotate: ignored with secretRef; rndc-warden never rotates a Secret you \
                 manage, so rotate it yourself"
            ));
        }
    }
    if let Some(inline) = &block.secret {
        let prefix = format!("{path}.secret");
        deny_unknown_fields(
            &prefix,
            &inline.extra,
            "metadata, type, data or stringData",
            findings,
        );
        deny_unknown_fields(
            &format!("{prefix}.metadata"),
            &inline.metadata.extra,
            "name, labels or annotations",
            findings,
        );
        check_secret_name(
            format_args!("{prefix}.metadata.name"),
            &inline.metadata.name,
            findings,
        );
        if let Some(kind) = inline.type_.as_deref().filter(|t| *t != "Opaque") {
            findings.deny(format!(
                "{prefix}.type: {} is not supported for RNDC keys; use Opaque or leave it out",
                shown(kind)
            ));
        }
        for reserved in [
            ANNOTATION_CREATED_AT,
            ANNOTATION_ROTATE_AT,
            ANNOTATION_ROTATION_COUNT,
        ] {
            if inline
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(reserved))
            {
                findings.warn(format!(
                    "{prefix}.metadata.annotations: {reserved} is ignored; rndc-warden writes it"
                ));
            }
        }
        let has_data = inline.data.as_ref().is_some_and(|d| !d.is_empty())
            || inline.string_data.as_ref().is_some_and(|d| !d.is_empty());
        if has_data {
            findings.warn(format!(
                "{prefix}: inline key data is readable by anyone who can read this object; \
                 prefer secretRef to a Secret you manage"
            ));
        }
        if inline.left_out_entries > 0 {
            findings.deny(format!(
                "{prefix}: data and stringData hold {} entries more than the {MAX_MAP_ENTRIES} \
                 read; an RNDC key needs only key-name, algorithm, secret and rndc.key",
                inline.left_out_entries
            ));
        }
        let values = inline_values(inline, &prefix, findings);
        if block.auto_rotate == Some(true)
            && (values.contains_key(DATA_RNDC_KEY) || values.contains_key(DATA_SECRET))
        {
            findings.warn(format!(
                "{prefix}: the inline key is replaced at the first rotation since autoRotate is \
                 true"
            ));
        }
        let expected_path = format!("{path}.algorithm");
        let rules = KeyDataRules {
            keys: &DataKeys::default(),
            require_complete: false,
            prefix: &format!("{prefix}.data"),
            expected_algorithm: algorithm.map(|a: Algorithm| (a, expected_path.as_str())),
        };
        check_key_values(&values, &rules, cfg, findings);
    }
}

/// Warns (or, in compliance mode, denies) when a managed key never rotates.
fn check_rotation_required(subject: &str, path: &str, findings: &mut Findings, cfg: &PolicyConfig) {
    if cfg.require_auto_rotate {
        findings.deny(format!(
            "{path}: autoRotate is false but policy requires automatic rotation of {subject}; set \
             autoRotate: true"
        ));
    } else {
        findings.warn(format!(
            "{path}: autoRotate is false, so {subject} is never rotated; set autoRotate: true"
        ));
    }
}

/// Validation of a (mutated) `Bind9Instance`.
pub fn validate_instance(
    instance: &Bind9Instance,
    cluster: Option<&Bind9Cluster>,
    cfg: &PolicyConfig,
) -> Validation {
    let spec = &instance.spec;
    let mut findings = Findings::default();
    match spec.role.as_deref() {
        None => {
            findings.deny("spec.role: missing; set it to \"primary\" or \"secondary\"".to_owned())
        }
        Some(role) if Role::parse_any_case(role).is_none() => findings.deny(format!(
            "spec.role: {} is not a role; use \"primary\" or \"secondary\"",
            shown(role)
        )),
        Some(_) => {}
    }
    for key in spec.extra.keys().filter(|k| *k == "rndcKeys") {
        findings.deny(format!(
            "spec.{key}: unknown field; did you mean spec.rndcKey?"
        ));
    }
    if let Some(config) = &spec.config {
        deny_misplaced_blocks("spec.config", &config.extra, "spec.rndcKey", &mut findings);
    }
    if let Some(block) = &spec.rndc_key {
        check_block("spec.rndcKey", block, cfg, &mut findings);
    }
    if let Some(reference) = &spec.rndc_secret_ref {
        check_reference("spec.rndcSecretRef", reference, cfg, &mut findings);
        let winner = winning_block(instance, cluster).map(|(source, _)| source);
        findings.warn(match winner {
            Ok(ConfigSource::DeprecatedSecretRef) => {
                "spec.rndcSecretRef is deprecated; move it to spec.rndcKey.secretRef".to_owned()
            }
            Ok(other) => format!(
                "spec.rndcSecretRef is deprecated and ignored because {} is set; remove it",
                other.path()
            ),
            Err(_) => {
                "spec.rndcSecretRef is deprecated; move it to spec.rndcKey.secretRef".to_owned()
            }
        });
    }
    if let Some(reference) = spec
        .config
        .as_ref()
        .and_then(|c| c.rndc_secret_ref.as_ref())
    {
        check_reference("spec.config.rndcSecretRef", reference, cfg, &mut findings);
        findings.warn(
            "spec.config.rndcSecretRef is ignored by the Bindy operator; use spec.rndcKey.secretRef"
                .to_owned(),
        );
    }
    match effective_config(instance, cluster, cfg) {
        Ok(effective) => {
            if effective.is_managed() {
                if effective.management == Management::Generated {
                    check_secret_name(
                        format_args!("the Secret name from template {}", cfg.secret_name_template),
                        &effective.secret_name,
                        &mut findings,
                    );
                }
                if !effective.auto_rotate {
                    let path = match &effective.source {
                        ConfigSource::Defaults => {
                            "spec.rndcKey (none applies; the default)".to_owned()
                        }
                        source => format!("{}.autoRotate", source.path()),
                    };
                    check_rotation_required("this instance's RNDC key", &path, &mut findings, cfg);
                }
            }
        }
        // Invalid values are denied by the block checks above; an unknown cluster was warned
        // about by the mutation; a missing role or name is denied or harmless.
        Err(
            EffectiveConfigError::Invalid { .. }
            | EffectiveConfigError::UnknownCluster(_)
            | EffectiveConfigError::NoRole
            | EffectiveConfigError::Unnamed,
        ) => {}
    }
    findings.into()
}

fn validate_role_blocks(blocks: RoleBlocks<'_>, cfg: &PolicyConfig) -> Validation {
    let mut findings = Findings::default();
    let role_blocks = "spec.primary.rndcKey and spec.secondary.rndcKey";
    deny_misplaced_blocks("spec", blocks.extra, role_blocks, &mut findings);
    if let Some(global) = blocks.global {
        deny_misplaced_blocks("spec.global", &global.extra, role_blocks, &mut findings);
    }
    for (name, role) in [("primary", blocks.primary), ("secondary", blocks.secondary)] {
        let Some(role) = role else { continue };
        let base = format!("spec.{name}");
        for key in role.extra.keys().filter(|k| *k == "rndcKeys") {
            findings.deny(format!(
                "{base}.{key}: unknown field; did you mean {base}.rndcKey?"
            ));
        }
        if let Some(block) = &role.rndc_key {
            let path = format!("{base}.rndcKey");
            check_block(&path, block, cfg, &mut findings);
            let managed = block.secret_ref.is_none();
            if managed && !block.auto_rotate.unwrap_or(cfg.default_auto_rotate) {
                let subject = format!("the keys of {name} instances");
                check_rotation_required(
                    &subject,
                    &format!("{path}.autoRotate"),
                    &mut findings,
                    cfg,
                );
            }
        }
        if let Some(reference) = &role.rndc_secret_ref {
            let path = format!("{base}.rndcSecretRef");
            check_reference(&path, reference, cfg, &mut findings);
            findings.warn(format!(
                "{path} is ignored by the Bindy operator; use {base}.rndcKey.secretRef"
            ));
        }
    }
    if let Some(reference) = blocks.global.and_then(|g| g.rndc_secret_ref.as_ref()) {
        check_reference("spec.global.rndcSecretRef", reference, cfg, &mut findings);
        findings.warn(
            "spec.global.rndcSecretRef is ignored by the Bindy operator; use \
             spec.primary.rndcKey and spec.secondary.rndcKey"
                .to_owned(),
        );
    }
    for (i, reference) in blocks
        .rndc_secret_refs
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        check_reference(
            &format!("spec.rndcSecretRefs[{i}]"),
            reference,
            cfg,
            &mut findings,
        );
    }
    if blocks.rndc_secret_refs.is_some_and(|r| !r.is_empty()) {
        findings.warn(
            "spec.rndcSecretRefs is ignored by the Bindy operator for RNDC keys; use \
             spec.primary.rndcKey and spec.secondary.rndcKey"
                .to_owned(),
        );
    }
    findings.into()
}

/// Validation of an UPDATE of a (mutated) `Bind9Instance` against the stored one: when the update
/// leaves every field the rules read as it was (the operator removing its finalizer, editing
/// labels, status or fields of its own), problems the stored object already had become warnings,
/// so policy never blocks the operator's bookkeeping; a changed configuration is judged in full.
pub fn validate_instance_update(
    instance: &Bind9Instance,
    stored: &Bind9Instance,
    cluster: Option<&Bind9Cluster>,
    cfg: &PolicyConfig,
) -> Validation {
    let validation = validate_instance(instance, cluster, cfg);
    if validation.allowed() {
        return validation;
    }
    let stored = apply_patch(stored, &mutate_instance(stored, cluster, cfg).patch)
        .unwrap_or_else(|_| stored.clone());
    if instance_key_fields(instance) != instance_key_fields(&stored) {
        return validation;
    }
    keep_only_new_denials(validation, validate_instance(&stored, cluster, cfg))
}

/// What the rules read of an instance, to tell whether an update changed it.
fn instance_key_fields(instance: &Bind9Instance) -> Value {
    let spec = &instance.spec;
    let misplaced = |extra: &Extra| -> Vec<String> {
        extra
            .keys()
            .filter(|k| matches!(k.as_str(), "rndcKey" | "rndcKeys"))
            .cloned()
            .collect()
    };
    json!({
        "role": spec.role.as_deref().and_then(Role::parse_any_case).map(Role::as_str),
        "clusterRef": spec.cluster_ref,
        "rndcKey": spec.rndc_key,
        "rndcSecretRef": spec.rndc_secret_ref,
        "config": spec.config.as_ref().map(|c| (&c.rndc_secret_ref, misplaced(&c.extra))),
        "misplaced": misplaced(&spec.extra),
        "name": instance.metadata.name,
    })
}

/// What the rules read of a cluster or provider spec.
fn role_key_fields(blocks: RoleBlocks<'_>) -> Value {
    let role = |r: Option<&crate::api::RoleSpec>| {
        r.map(|r| {
            json!({
                "rndcKey": r.rndc_key,
                "rndcSecretRef": r.rndc_secret_ref,
                "misplaced": r.extra.keys().filter(|k| k.as_str() == "rndcKeys").collect::<Vec<_>>(),
            })
        })
    };
    json!({
        "primary": role(blocks.primary),
        "secondary": role(blocks.secondary),
        "global": blocks.global.map(|g| (&g.rndc_secret_ref, g.extra.keys().filter(|k| k.starts_with("rndcKey")).collect::<Vec<_>>())),
        "rndcSecretRefs": blocks.rndc_secret_refs,
        "misplaced": blocks.extra.keys().filter(|k| k.starts_with("rndcKey")).collect::<Vec<_>>(),
    })
}

/// `validation` with every denial the stored object already had turned into a warning.
fn keep_only_new_denials(validation: Validation, stored: Validation) -> Validation {
    let mut findings = Findings::default();
    for denial in validation.denials {
        if stored.denials.contains(&denial) {
            findings.warn(format!(
                "allowed because this update leaves the key configuration as stored, but it is \
                 not compliant: {denial}"
            ));
        } else {
            findings.deny(denial);
        }
    }
    for warning in validation.warnings {
        findings.warn(warning);
    }
    let mut kept: Validation = findings.into();
    kept.denials_left_out += validation
        .denials_left_out
        .saturating_sub(stored.denials_left_out);
    kept
}

/// Validation of an UPDATE of a role-block object against the stored one, with that kind's
/// mutation, validation and role blocks.
fn validate_roles_update<T: Serialize + DeserializeOwned + Clone>(
    object: &T,
    stored: &T,
    mutate: impl Fn(&T) -> Mutation,
    validate: impl Fn(&T) -> Validation,
    blocks: impl Fn(&T) -> Value,
) -> Validation {
    let validation = validate(object);
    if validation.allowed() {
        return validation;
    }
    let stored = apply_patch(stored, &mutate(stored).patch).unwrap_or_else(|_| stored.clone());
    if blocks(object) != blocks(&stored) {
        return validation;
    }
    keep_only_new_denials(validation, validate(&stored))
}

/// Validation of an UPDATE of a (mutated) `Bind9Cluster` against the stored one (see
/// [`validate_instance_update`]).
pub fn validate_cluster_update(
    cluster: &Bind9Cluster,
    stored: &Bind9Cluster,
    cfg: &PolicyConfig,
) -> Validation {
    validate_roles_update(
        cluster,
        stored,
        |c| mutate_cluster(c, cfg),
        |c| validate_cluster(c, cfg),
        |c| role_key_fields(c.spec.role_blocks()),
    )
}

/// Validation of an UPDATE of a (mutated) `ClusterBind9Provider` against the stored one.
pub fn validate_provider_update(
    provider: &ClusterBind9Provider,
    stored: &ClusterBind9Provider,
    cfg: &PolicyConfig,
) -> Validation {
    validate_roles_update(
        provider,
        stored,
        |p| mutate_provider(p, cfg),
        |p| validate_provider(p, cfg),
        |p| role_key_fields(p.spec.role_blocks()),
    )
}

/// Validation of a (mutated) `Bind9Cluster`.
pub fn validate_cluster(cluster: &Bind9Cluster, cfg: &PolicyConfig) -> Validation {
    validate_role_blocks(cluster.spec.role_blocks(), cfg)
}

/// Validation of a (mutated) `ClusterBind9Provider`.
pub fn validate_provider(provider: &ClusterBind9Provider, cfg: &PolicyConfig) -> Validation {
    validate_role_blocks(provider.spec.role_blocks(), cfg)
}

fn review<T: Serialize + DeserializeOwned>(
    object: &T,
    mutation: Mutation,
    validate: impl FnOnce(&T) -> Validation,
) -> Decision {
    match apply_patch(object, &mutation.patch) {
        Ok(mutated) => {
            let validation = validate(&mutated);
            Decision::new(mutation, validation)
        }
        Err(error) => Decision {
            denials: vec![format!(
                "internal error: the defaulting patch does not apply: {error}"
            )],
            patch: mutation.patch,
            ..Decision::default()
        },
    }
}

/// Mutation and validation of a `Bind9Instance`, as the API server would run them.
pub fn review_instance(
    instance: &Bind9Instance,
    cluster: Option<&Bind9Cluster>,
    cfg: &PolicyConfig,
) -> Decision {
    let mutation = mutate_instance(instance, cluster, cfg);
    review(instance, mutation, |mutated| {
        validate_instance(mutated, cluster, cfg)
    })
}

/// Mutation and validation of a `Bind9Cluster`.
pub fn review_cluster(cluster: &Bind9Cluster, cfg: &PolicyConfig) -> Decision {
    review(cluster, mutate_cluster(cluster, cfg), |mutated| {
        validate_cluster(mutated, cfg)
    })
}

/// Mutation and validation of a `ClusterBind9Provider`.
pub fn review_provider(provider: &ClusterBind9Provider, cfg: &PolicyConfig) -> Decision {
    review(provider, mutate_provider(provider, cfg), |mutated| {
        validate_provider(mutated, cfg)
    })
}

#[cfg(test)]
#[path = "review_tests.rs"]
mod tests;
