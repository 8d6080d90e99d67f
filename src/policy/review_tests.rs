use super::*;
use crate::policy::effective::effective_config;

fn instance(spec: &str) -> Bind9Instance {
    let yaml = format!(
        "apiVersion: bindy.firestoned.io/v1beta1\nkind: Bind9Instance\nmetadata:\n  name: dns-primary\n  \
         namespace: dns\nspec:\n{}",
        indent(spec)
    );
    yaml_object(&yaml).expect("test instance parses")
}

fn cluster(spec: &str) -> Bind9Cluster {
    let yaml = format!(
        "apiVersion: bindy.firestoned.io/v1beta1\nkind: Bind9Cluster\nmetadata:\n  name: my-cluster\n  \
         namespace: dns\nspec:\n{}",
        indent(spec)
    );
    yaml_object(&yaml).expect("test cluster parses")
}

/// YAML goes through a JSON value, as `check` reads it (unmodelled fields are kept as JSON text).
fn yaml_object<T: serde::de::DeserializeOwned>(yaml: &str) -> Result<T, String> {
    let value: serde_json::Value = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
    serde_json::from_value(value).map_err(|e| e.to_string())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn ops(patch: &Patch) -> Vec<String> {
    patch
        .0
        .iter()
        .map(|op| serde_json::to_string(op).expect("patch serialises"))
        .collect()
}

fn cfg() -> PolicyConfig {
    PolicyConfig::default()
}

#[test]
fn role_case_is_normalised() {
    let m = mutate_instance(
        &instance(
            "clusterRef: \"\"\nrole: Primary\nrndcKey: {autoRotate: true, rotateAfter: 720h, algorithm: hmac-sha256}",
        ),
        None,
        &cfg(),
    );
    assert_eq!(
        ops(&m.patch),
        [r#"{"op":"replace","path":"/spec/role","value":"primary"}"#]
    );
}

#[test]
fn missing_fields_of_a_present_block_are_filled_from_the_defaults() {
    let m = mutate_instance(
        &instance("role: primary\nrndcKey:\n  autoRotate: true"),
        None,
        &cfg(),
    );
    assert_eq!(
        ops(&m.patch),
        [
            r#"{"op":"add","path":"/spec/rndcKey/rotateAfter","value":"2160h"}"#,
            r#"{"op":"add","path":"/spec/rndcKey/algorithm","value":"hmac-sha256"}"#,
        ]
    );
}

#[test]
fn configured_defaults_are_what_gets_filled() {
    let cfg = PolicyConfig {
        default_auto_rotate: true,
        default_rotate_after: RotateAfter::parse("30d").expect("valid"),
        default_algorithm: Algorithm::HmacSha512,
        ..PolicyConfig::default()
    };
    let m = mutate_instance(&instance("role: primary\nrndcKey: {}"), None, &cfg);
    assert_eq!(
        ops(&m.patch),
        [
            r#"{"op":"add","path":"/spec/rndcKey/autoRotate","value":true}"#,
            r#"{"op":"add","path":"/spec/rndcKey/rotateAfter","value":"30d"}"#,
            r#"{"op":"add","path":"/spec/rndcKey/algorithm","value":"hmac-sha512"}"#,
        ]
    );
}

#[test]
fn a_standalone_instance_gets_a_whole_default_block() {
    let m = mutate_instance(&instance("clusterRef: \"\"\nrole: primary"), None, &cfg());
    assert_eq!(
        ops(&m.patch),
        [
            r#"{"op":"add","path":"/spec/rndcKey","value":{"algorithm":"hmac-sha256","autoRotate":false,"rotateAfter":"2160h"}}"#
        ]
    );
}

#[test]
fn nothing_is_injected_when_the_role_block_applies() {
    let c = cluster("primary:\n  rndcKey: {autoRotate: true}");
    let m = mutate_instance(
        &instance("clusterRef: my-cluster\nrole: Primary"),
        Some(&c),
        &cfg(),
    );
    assert_eq!(
        ops(&m.patch),
        [r#"{"op":"replace","path":"/spec/role","value":"primary"}"#]
    );
    assert!(m.warnings.is_empty());
}

#[test]
fn an_unknown_cluster_means_no_injection_and_a_warning() {
    let m = mutate_instance(
        &instance("clusterRef: elsewhere\nrole: primary"),
        None,
        &cfg(),
    );
    assert!(m.patch.0.is_empty());
    assert_eq!(
        m.warnings,
        [
            "spec.clusterRef: Bind9Cluster elsewhere is not known yet; its spec.<role>.rndcKey or \
             the defaults will apply"
        ]
    );
}

#[test]
fn a_deprecated_reference_is_not_overridden_by_an_injected_block() {
    let m = mutate_instance(
        &instance("role: primary\nrndcSecretRef: {name: legacy}"),
        None,
        &cfg(),
    );
    assert!(m.patch.0.is_empty());
}

#[test]
fn defaulting_never_changes_which_level_wins() {
    let c = cluster("primary:\n  rndcKey: {autoRotate: true, rotateAfter: 720h}");
    let empty = cluster("replicas: 1");
    let cases = [
        (instance("clusterRef: my-cluster\nrole: Primary"), Some(&c)),
        (
            instance("clusterRef: my-cluster\nrole: primary\nrndcKey: {algorithm: hmac-sha512}"),
            Some(&c),
        ),
        (
            instance("clusterRef: my-cluster\nrole: secondary"),
            Some(&c),
        ),
        (
            instance("clusterRef: my-cluster\nrole: primary"),
            Some(&empty),
        ),
        (
            instance("role: primary\nrndcSecretRef: {name: legacy}"),
            None,
        ),
        (instance("role: primary"), None),
    ];
    for (object, cluster) in cases {
        let before = effective_config(&object, cluster, &cfg()).expect("resolves");
        let patched = apply_patch(&object, &mutate_instance(&object, cluster, &cfg()).patch)
            .expect("patch applies");
        let after = effective_config(&patched, cluster, &cfg()).expect("resolves");
        let same_level = match (&before.source, &after.source) {
            // An injected default block is the defaults, written down.
            (ConfigSource::Defaults, ConfigSource::Instance) => true,
            (b, a) => b == a,
        };
        assert!(same_level, "{:?} became {:?}", before.source, after.source);
        assert_eq!(
            (
                before.auto_rotate,
                before.rotate_after,
                before.algorithm,
                &before.secret_name
            ),
            (
                after.auto_rotate,
                after.rotate_after,
                after.algorithm,
                &after.secret_name
            )
        );
    }
}

#[test]
fn an_invalid_rotate_after_is_denied_with_the_path_value_and_a_valid_example() {
    let d = review_instance(
        &instance("role: primary\nrndcKey: {rotateAfter: 30m}"),
        None,
        &cfg(),
    );
    assert_eq!(
        d.denials,
        [
            "spec.rndcKey.rotateAfter: \"30m\" is not a valid duration; use a whole number of hours, \
          days or weeks between 1h and 8760h, e.g. \"720h\", \"30d\" or \"12w\""
        ]
    );
    let d = review_instance(
        &instance("role: primary\nrndcKey: {rotateAfter: 1y}"),
        None,
        &cfg(),
    );
    assert!(!d.allowed());
}

#[test]
fn a_rotate_after_under_a_day_is_allowed_with_a_warning() {
    let d = review_instance(
        &instance("role: primary\nrndcKey: {autoRotate: true, rotateAfter: 12h}"),
        None,
        &cfg(),
    );
    assert!(d.allowed());
    assert_eq!(
        d.warnings,
        [
            "spec.rndcKey.rotateAfter: 12h is under 24h and every rotation restarts the BIND pods; \
          use at least 24h, e.g. \"720h\""
        ]
    );
}

#[test]
fn denied_algorithms_are_caught_at_every_instance_path() {
    let d = review_instance(
        &instance(
            "role: primary\nrndcKey:\n  algorithm: hmac-sha1\n  secretRef: {name: s, algorithm: \
             hmac-md5}\nrndcSecretRef: {name: legacy, algorithm: hmac-sha1}\nconfig:\n  \
             rndcSecretRef: {name: cfg, algorithm: hmac-md5}",
        ),
        None,
        &cfg(),
    );
    let paths: Vec<&str> = d
        .denials
        .iter()
        .filter_map(|m| m.split(':').next())
        .collect();
    assert_eq!(
        paths,
        [
            "spec.rndcKey.algorithm",
            "spec.rndcKey.secretRef.algorithm",
            "spec.rndcSecretRef.algorithm",
            "spec.config.rndcSecretRef.algorithm",
        ]
    );
    assert_eq!(
        d.denials[0],
        "spec.rndcKey.algorithm: hmac-sha1 is not allowed by policy (it is deprecated by RFC 8945 \
         §10); use hmac-sha512, hmac-sha384 or hmac-sha256"
    );
}

#[test]
fn denied_algorithms_are_caught_at_every_cluster_path() {
    let c = cluster(
        "global:\n  rndcSecretRef: {name: g, algorithm: hmac-sha1}\nprimary:\n  rndcKey: \
         {algorithm: hmac-md5}\n  rndcSecretRef: {name: p, algorithm: hmac-sha1}\nsecondary:\n  \
         rndcKey:\n    secretRef: {name: s, algorithm: hmac-sha1}\nrndcSecretRefs:\n  - {name: t, \
         algorithm: hmac-sha256}\n  - {name: u, algorithm: hmac-md5}",
    );
    let d = review_cluster(&c, &cfg());
    let paths: Vec<&str> = d
        .denials
        .iter()
        .filter_map(|m| m.split(':').next())
        .collect();
    assert_eq!(
        paths,
        [
            "spec.primary.rndcKey.algorithm",
            "spec.primary.rndcSecretRef.algorithm",
            "spec.secondary.rndcKey.secretRef.algorithm",
            "spec.global.rndcSecretRef.algorithm",
            "spec.rndcSecretRefs[1].algorithm",
        ]
    );
}

#[test]
fn the_deny_list_is_configurable() {
    let strict = PolicyConfig {
        denied_algorithms: [
            Algorithm::HmacMd5,
            Algorithm::HmacSha1,
            Algorithm::HmacSha224,
        ]
        .into(),
        ..PolicyConfig::default()
    };
    let object = instance("role: primary\nrndcKey: {autoRotate: true, algorithm: hmac-sha224}");
    assert!(!review_instance(&object, None, &strict).allowed());
    let lax = PolicyConfig {
        denied_algorithms: Default::default(),
        ..PolicyConfig::default()
    };
    let object = instance("role: primary\nrndcKey: {autoRotate: true, algorithm: hmac-md5}");
    assert!(review_instance(&object, None, &lax).allowed());
}

#[test]
fn sha224_is_allowed_with_a_warning() {
    let d = review_instance(
        &instance("role: primary\nrndcKey: {autoRotate: true, algorithm: hmac-sha224}"),
        None,
        &cfg(),
    );
    assert!(d.allowed());
    assert_eq!(
        d.warnings,
        [
            "spec.rndcKey.algorithm: hmac-sha224 is weaker than hmac-sha256; prefer hmac-sha256 or \
          stronger"
        ]
    );
}

#[test]
fn an_unknown_algorithm_is_denied() {
    let d = review_instance(
        &instance("role: primary\nrndcKey: {algorithm: HMAC-SHA256}"),
        None,
        &cfg(),
    );
    assert_eq!(
        d.denials,
        [
            "spec.rndcKey.algorithm: \"HMAC-SHA256\" is not a supported algorithm; use hmac-sha512, \
          hmac-sha384 or hmac-sha256"
        ]
    );
}

#[test]
fn secret_ref_and_inline_secret_together_are_denied() {
    let d = review_instance(
        &instance(
            "role: primary\nrndcKey:\n  secretRef: {name: mine}\n  secret:\n    metadata: {name: theirs}",
        ),
        None,
        &cfg(),
    );
    assert_eq!(
        d.denials,
        [
            "spec.rndcKey: secretRef and secret are both set; keep secretRef for a Secret you manage \
          or secret for one rndc-warden creates, not both"
        ]
    );
}

#[test]
fn malformed_secret_names_are_denied() {
    let d = review_instance(
        &instance(
            "role: primary\nrndcKey:\n  autoRotate: true\n  secret:\n    metadata: {name: My_Secret}",
        ),
        None,
        &cfg(),
    );
    assert_eq!(
        d.denials,
        [
            "spec.rndcKey.secret.metadata.name: \"My_Secret\" is not a valid Secret name; use \
          lower-case letters, digits, '-' and '.' (a DNS-1123 subdomain), e.g. \"dns-primary-rndc\""
        ]
    );
    let d = review_instance(
        &instance("role: primary\nrndcKey:\n  secretRef: {name: \"\"}"),
        None,
        &cfg(),
    );
    assert!(
        d.denials[0].starts_with("spec.rndcKey.secretRef.name: \"\" is not a valid Secret name")
    );
}

#[test]
fn inline_key_data_is_checked_and_warned_about() {
    let d = review_instance(
        &instance(
            "role: primary\nrndcKey:\n  autoRotate: true\n  algorithm: hmac-sha256\n  secret:\n    \
             metadata: {name: custom-rndc}\n    data:\n      key-name: YmluZHktb3BlcmF0b3I=\n      \
             algorithm: aG1hYy1zaGEyNTY=\n      secret: <base64-encoded-secret>",
        ),
        None,
        &cfg(),
    );
    assert_eq!(
        d.denials,
        [
            "spec.rndcKey.secret.data.secret: the value is not valid base64 (data values must be \
          base64-encoded); base64-encode it or move it to spec.rndcKey.secret.stringData"
        ]
    );
    assert_eq!(
        d.warnings,
        [
            "spec.rndcKey.secret: inline key data is readable by anyone who can read this object; \
          prefer secretRef to a Secret you manage"
        ]
    );
}

#[test]
fn an_inline_key_must_match_the_block_algorithm_and_be_long_enough() {
    let d = review_instance(
        &instance(
            "role: primary\nrndcKey:\n  autoRotate: false\n  algorithm: hmac-sha512\n  secret:\n    \
             metadata: {name: custom-rndc}\n    stringData:\n      algorithm: hmac-sha256\n      \
             secret: c2hvcnQ=",
        ),
        None,
        &cfg(),
    );
    assert_eq!(
        d.denials,
        [
            "spec.rndcKey.secret.stringData.algorithm: hmac-sha256 disagrees with \
             spec.rndcKey.algorithm (hmac-sha512); make them the same",
            "spec.rndcKey.secret.stringData.secret: the key is 5 bytes, shorter than the 32-byte \
             output of hmac-sha256; generate a new one with \"tsig-keygen -a hmac-sha256\" or \
             \"openssl rand -base64 32\"",
        ]
    );
}

#[test]
fn auto_rotate_with_secret_ref_is_warned_as_ignored() {
    let d = review_instance(
        &instance("role: primary\nrndcKey:\n  autoRotate: true\n  secretRef: {name: vault-rndc}"),
        None,
        &cfg(),
    );
    assert!(d.allowed());
    assert_eq!(
        d.warnings,
        [
            "spec.rndcKey.autoRotate: ignored with secretRef; rndc-warden never rotates a Secret you \
          manage, so rotate it yourself"
        ]
    );
}

#[test]
fn the_deprecated_reference_is_warned_about() {
    let d = review_instance(
        &instance("role: primary\nrndcSecretRef: {name: legacy}"),
        None,
        &cfg(),
    );
    assert_eq!(
        d.warnings,
        ["spec.rndcSecretRef is deprecated; move it to spec.rndcKey.secretRef"]
    );
    let c = cluster("primary:\n  rndcKey: {autoRotate: true}");
    let d = review_instance(
        &instance("clusterRef: my-cluster\nrole: primary\nrndcSecretRef: {name: legacy}"),
        Some(&c),
        &cfg(),
    );
    assert_eq!(
        d.warnings,
        [
            "spec.rndcSecretRef is deprecated and ignored because Bind9Cluster my-cluster \
          spec.primary.rndcKey is set; remove it"
        ]
    );
}

#[test]
fn a_key_that_never_rotates_is_warned_about_or_denied_in_compliance_mode() {
    let object = instance("clusterRef: \"\"\nrole: primary");
    let d = review_instance(&object, None, &cfg());
    assert!(d.allowed());
    assert_eq!(
        d.warnings,
        [
            "spec.rndcKey.autoRotate: autoRotate is false, so this instance's RNDC key is never \
          rotated; set autoRotate: true"
        ]
    );
    let compliance = PolicyConfig {
        require_auto_rotate: true,
        ..PolicyConfig::default()
    };
    let d = review_instance(&object, None, &compliance);
    assert_eq!(
        d.denials,
        [
            "spec.rndcKey.autoRotate: autoRotate is false but policy requires automatic rotation of \
          this instance's RNDC key; set autoRotate: true"
        ]
    );
    let c = cluster("primary:\n  rndcKey: {autoRotate: false}");
    let d = review_cluster(&c, &compliance);
    assert_eq!(
        d.denials,
        [
            "spec.primary.rndcKey.autoRotate: autoRotate is false but policy requires automatic \
          rotation of the keys of primary instances; set autoRotate: true"
        ]
    );
    let inherited = review_instance(
        &instance("clusterRef: my-cluster\nrole: primary"),
        Some(&c),
        &compliance,
    );
    assert_eq!(
        inherited.denials,
        [
            "Bind9Cluster my-cluster spec.primary.rndcKey.autoRotate: autoRotate is false but policy \
          requires automatic rotation of this instance's RNDC key; set autoRotate: true"
        ]
    );
}

#[test]
fn compliance_mode_leaves_user_managed_keys_alone() {
    let compliance = PolicyConfig {
        require_auto_rotate: true,
        ..PolicyConfig::default()
    };
    let d = review_instance(
        &instance("role: primary\nrndcKey:\n  secretRef: {name: vault-rndc}"),
        None,
        &compliance,
    );
    assert!(d.allowed(), "{:?}", d.denials);
}

#[test]
fn the_documented_rndc_keys_typo_and_unknown_block_fields_are_denied() {
    let d = review_instance(
        &instance("role: primary\nrndcKeys: {autoRotate: true}"),
        None,
        &cfg(),
    );
    assert!(
        d.denials
            .contains(&"spec.rndcKeys: unknown field; did you mean spec.rndcKey?".to_owned())
    );
    let d = review_instance(
        &instance("role: primary\nrndcKey: {autoRotate: true, rotateEvery: 30d}"),
        None,
        &cfg(),
    );
    assert_eq!(
        d.denials,
        [
            "spec.rndcKey.rotateEvery: unknown field; use autoRotate, rotateAfter, algorithm, \
          secretRef or secret"
        ]
    );
    let d = review_cluster(&cluster("rndcKeys: {autoRotate: true}"), &cfg());
    assert!(!d.allowed());
}

#[test]
fn a_missing_or_unknown_role_is_denied() {
    let d = review_instance(
        &instance("clusterRef: \"\"\nrndcKey: {autoRotate: true}"),
        None,
        &cfg(),
    );
    assert_eq!(
        d.denials,
        ["spec.role: missing; set it to \"primary\" or \"secondary\""]
    );
    let d = review_instance(
        &instance("role: master\nrndcKey: {autoRotate: true}"),
        None,
        &cfg(),
    );
    assert_eq!(
        d.denials,
        ["spec.role: \"master\" is not a role; use \"primary\" or \"secondary\""]
    );
}

#[test]
fn cluster_level_references_are_warned_as_ignored() {
    let d = review_cluster(
        &cluster("global:\n  rndcSecretRef: {name: g}\nprimary:\n  rndcSecretRef: {name: p}"),
        &cfg(),
    );
    assert_eq!(
        d.warnings,
        [
            "spec.primary.rndcSecretRef is ignored by the Bindy operator; use \
             spec.primary.rndcKey.secretRef",
            "spec.global.rndcSecretRef is ignored by the Bindy operator; use spec.primary.rndcKey \
             and spec.secondary.rndcKey",
        ]
    );
}

#[test]
fn cluster_blocks_are_defaulted_field_by_field() {
    let m = mutate_cluster(
        &cluster("primary:\n  rndcKey: {autoRotate: true}\nsecondary:\n  replicas: 2"),
        &cfg(),
    );
    assert_eq!(
        ops(&m.patch),
        [
            r#"{"op":"add","path":"/spec/primary/rndcKey/rotateAfter","value":"2160h"}"#,
            r#"{"op":"add","path":"/spec/primary/rndcKey/algorithm","value":"hmac-sha256"}"#,
        ]
    );
}

#[test]
fn providers_are_checked_like_clusters() {
    let provider: ClusterBind9Provider = yaml_object(
        "apiVersion: bindy.firestoned.io/v1beta1\nkind: ClusterBind9Provider\nmetadata: {name: \
         p}\nspec:\n  namespace: dns\n  primary:\n    rndcKey: {rotateAfter: 2m}",
    )
    .expect("parses");
    let d = review_provider(&provider, &cfg());
    assert!(
        d.denials[0]
            .starts_with("spec.primary.rndcKey.rotateAfter: \"2m\" is not a valid duration")
    );
    assert_eq!(d.patch.0.len(), 2);
}

#[test]
fn warnings_stay_within_the_api_server_limits() {
    let many: Vec<String> = (0..200)
        .map(|i| format!("warning {i}: {}", "x".repeat(300)))
        .collect();
    let limited = limit_warnings(many);
    let total: usize = limited.iter().map(String::len).sum();
    assert!(total <= MAX_WARNINGS_BYTES, "{total}");
    assert!(limited.iter().all(|w| w.len() <= MAX_WARNING_LEN));
    assert!(limited.last().is_some_and(|w| {
        w.ends_with("more warning(s) left out; run rndc-warden check to see all")
    }));
    assert_eq!(limit_warnings(vec!["a".into(), "a".into()]), ["a"]);
}

#[test]
fn every_policy_warning_is_short() {
    let d = review_instance(
        &instance(
            "role: primary\nrndcKey:\n  autoRotate: true\n  rotateAfter: 2h\n  algorithm: hmac-sha224\n  \
             secret:\n    metadata:\n      name: custom\n      annotations: \
             {bindy.firestoned.io/rndc-created-at: x}\n    stringData:\n      rndc.key: |\n        key \
             \"other\" { algorithm hmac-sha224; secret \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\"; };\n\
             rndcSecretRef: {name: legacy}\nconfig:\n  rndcSecretRef: {name: cfg}",
        ),
        None,
        &cfg(),
    );
    assert!(d.warnings.len() >= 7, "{:?}", d.warnings);
    for warning in &d.warnings {
        assert!(warning.len() <= 200, "{} bytes: {warning}", warning.len());
    }
}

#[test]
fn denial_messages_join_every_reason() {
    let d = review_instance(
        &instance("role: master\nrndcKey: {rotateAfter: 0h}"),
        None,
        &cfg(),
    );
    let message = d.denial_message().expect("denied");
    assert!(message.contains("spec.role") && message.contains("; spec.rndcKey.rotateAfter"));
}

mod properties {
    use super::*;
    use crate::api::{Bind9ClusterSpec, Bind9InstanceSpec, RndcSecretRef, RoleSpec};
    use proptest::prelude::*;

    fn block() -> impl Strategy<Value = Option<RndcKeyConfig>> {
        let field = |values: &'static [&'static str]| {
            proptest::option::of(proptest::sample::select(values).prop_map(str::to_owned))
        };
        proptest::option::of(
            (
                proptest::option::of(any::<bool>()),
                field(&["1h", "720h", "30d", "12w"]),
                field(&["hmac-sha256", "hmac-sha384", "hmac-sha512"]),
                any::<bool>(),
            )
                .prop_map(|(auto_rotate, rotate_after, algorithm, by_ref)| {
                    RndcKeyConfig {
                        auto_rotate,
                        rotate_after,
                        algorithm,
                        secret_ref: by_ref.then(|| RndcSecretRef {
                            name: "mine".into(),
                            ..RndcSecretRef::default()
                        }),
                        ..RndcKeyConfig::default()
                    }
                }),
        )
    }

    proptest! {
        #[test]
        fn the_defaulting_patch_applies_and_never_changes_the_winning_level(
            own in block(),
            primary in block(),
            secondary in block(),
            role in proptest::sample::select(&["primary", "Primary", "secondary", "SECONDARY"][..]),
            cluster_ref in proptest::sample::select(&["", "my-cluster"][..]),
            deprecated in any::<bool>(),
            known in any::<bool>(),
        ) {
            let mut object = Bind9Instance::new("dns", Bind9InstanceSpec {
                cluster_ref: Some(cluster_ref.to_owned()),
                role: Some(role.to_owned()),
                rndc_key: own,
                rndc_secret_ref: deprecated.then(|| RndcSecretRef {
                    name: "legacy".into(),
                    ..RndcSecretRef::default()
                }),
                ..Bind9InstanceSpec::default()
            });
            object.metadata.namespace = Some("dns".into());
            let cluster = Bind9Cluster::new("my-cluster", Bind9ClusterSpec {
                primary: Some(RoleSpec { rndc_key: primary, ..RoleSpec::default() }),
                secondary: Some(RoleSpec { rndc_key: secondary, ..RoleSpec::default() }),
                ..Bind9ClusterSpec::default()
            });
            let cluster = (known || cluster_ref.is_empty()).then_some(&cluster);
            let cfg = PolicyConfig::default();
            let mutation = mutate_instance(&object, cluster, &cfg);
            let patched = apply_patch(&object, &mutation.patch);
            prop_assert!(patched.is_ok(), "{:?}", patched);
            let patched = patched.unwrap_or_default();
            prop_assert!(patched.spec.role.as_deref().is_some_and(|r| r == r.to_lowercase()));
            let before = effective_config(&object, cluster, &cfg);
            let after = effective_config(&patched, cluster, &cfg);
            match (before, after) {
                (Ok(before), Ok(after)) => {
                    let same = before.source == after.source
                        || (before.source == ConfigSource::Defaults
                            && after.source == ConfigSource::Instance);
                    prop_assert!(same, "{:?} -> {:?}", before.source, after.source);
                    prop_assert_eq!(before.auto_rotate, after.auto_rotate);
                    prop_assert_eq!(before.rotate_after, after.rotate_after);
                    prop_assert_eq!(before.algorithm, after.algorithm);
                    prop_assert_eq!(before.secret_name, after.secret_name);
                    prop_assert_eq!(before.management, after.management);
                }
                (Err(before), Err(after)) => prop_assert_eq!(before, after),
                (before, after) => prop_assert!(false, "{:?} became {:?}", before, after),
            }
            // Mutation is idempotent: the stored object needs no further patch.
            prop_assert!(mutate_instance(&patched, cluster, &cfg).patch.0.is_empty());
        }
    }
}

#[test]
fn rndc_key_where_bindy_never_reads_one_is_denied() {
    let c = cluster("rndcKey: {algorithm: hmac-md5}\nglobal:\n  rndcKey: {autoRotate: true}");
    let d = review_cluster(&c, &cfg());
    assert_eq!(
        d.denials,
        [
            "spec.rndcKey: not a field here, so the Bindy operator would ignore it; set \
             spec.primary.rndcKey and spec.secondary.rndcKey instead",
            "spec.global.rndcKey: not a field here, so the Bindy operator would ignore it; set \
             spec.primary.rndcKey and spec.secondary.rndcKey instead",
        ]
    );
    let i = instance("role: primary\nconfig:\n  rndcKey: {autoRotate: true}");
    let d = review_instance(&i, None, &cfg());
    assert!(
        d.denials
            .iter()
            .any(|m| m.starts_with("spec.config.rndcKey: not a field here")),
        "{:?}",
        d.denials
    );
}

#[test]
fn a_block_algorithm_that_disagrees_with_its_secret_ref_is_denied_and_never_defaulted_against_it() {
    let i = instance(
        "role: primary\nrndcKey:\n  algorithm: hmac-sha256\n  secretRef: {name: k, algorithm: \
         hmac-sha512}",
    );
    let d = review_instance(&i, None, &cfg());
    assert_eq!(
        d.denials,
        [
            "spec.rndcKey.algorithm: hmac-sha256 disagrees with spec.rndcKey.secretRef.algorithm \
          (hmac-sha512); make them the same or remove spec.rndcKey.algorithm"
        ]
    );
    let i = instance("role: primary\nrndcKey:\n  secretRef: {name: k, algorithm: hmac-sha512}");
    let d = review_instance(&i, None, &cfg());
    assert!(d.allowed(), "{:?}", d.denials);
    let patch = serde_json::to_string(&d.patch).expect("patch");
    assert!(
        patch.contains(r#""path":"/spec/rndcKey/algorithm","value":"hmac-sha512""#),
        "{patch}"
    );
}

#[test]
fn a_million_problems_make_a_bounded_denial() {
    let refs: String = (0..2000)
        .map(|i| format!("  - {{name: r{i}, algorithm: hmac-md5}}\n"))
        .collect();
    let c = cluster(&format!("rndcSecretRefs:\n{refs}"));
    let d = review_cluster(&c, &cfg());
    let message = d.denial_message().expect("denied");
    assert!(
        message.len() <= crate::policy::MAX_MESSAGE_BYTES,
        "{}",
        message.len()
    );
    assert!(message.ends_with("more problems"), "{message}");
    assert!(d.denials_left_out > 1900, "{}", d.denials_left_out);
}

#[test]
fn a_clustered_instance_never_gets_a_block_that_could_shadow_its_role() {
    // Known cluster without a block for the role, and a cluster not known yet: no block.
    let c = cluster("secondary:\n  rndcKey: {autoRotate: true}");
    for cluster in [Some(&c), None] {
        let m = mutate_instance(
            &instance("clusterRef: my-cluster\nrole: primary"),
            cluster,
            &cfg(),
        );
        assert!(m.patch.0.is_empty(), "{:?}", ops(&m.patch));
    }
    // A role block added later therefore wins, and until then the defaults apply.
    let i = instance("clusterRef: my-cluster\nrole: primary");
    let later = cluster("primary:\n  rndcKey: {autoRotate: true, algorithm: hmac-sha384}");
    let effective = effective_config(&i, Some(&later), &cfg()).expect("effective");
    assert!(effective.auto_rotate);
    assert_eq!(effective.algorithm, Algorithm::HmacSha384);
    // A standalone instance has no other level: it gets the whole default block.
    let m = mutate_instance(&instance("clusterRef: \"\"\nrole: primary"), None, &cfg());
    assert_eq!(ops(&m.patch).len(), 1);
}

#[test]
fn compliance_mode_denies_what_an_update_changes_never_the_operators_bookkeeping() {
    let strict = PolicyConfig {
        require_auto_rotate: true,
        ..cfg()
    };
    let stored = instance("role: primary\nrndcKey: {autoRotate: false}");
    // The operator removes its finalizer or edits a field of its own: allowed, with a warning.
    let mut edited = stored.clone();
    edited.metadata.finalizers = None;
    edited.spec.extra.insert(
        "replicas".into(),
        crate::api::RawJson::from_json("3").expect("json"),
    );
    // The validating webhook sees the object as the mutating one left it.
    let edited =
        apply_patch(&edited, &mutate_instance(&edited, None, &strict).patch).expect("patch");
    let v = validate_instance_update(&edited, &stored, None, &strict);
    assert!(v.allowed(), "{:?}", v.denials);
    assert!(
        v.warnings
            .iter()
            .any(|w| w.contains("leaves the key configuration as stored")),
        "{:?}",
        v.warnings
    );
    // A changed configuration that is still not compliant is denied.
    let changed = instance("role: primary\nrndcKey: {autoRotate: false, rotateAfter: 720h}");
    assert!(!validate_instance_update(&changed, &stored, None, &strict).allowed());
    // A new non-compliant object is denied.
    assert!(!validate_instance(&stored, None, &strict).allowed());
    // Clusters alike: labels change, role blocks do not.
    let c = cluster("primary:\n  rndcKey: {autoRotate: false}");
    let mut relabelled = c.clone();
    relabelled.metadata.labels = Some([("a".to_owned(), "b".to_owned())].into());
    let relabelled =
        apply_patch(&relabelled, &mutate_cluster(&relabelled, &strict).patch).expect("patch");
    assert!(validate_cluster_update(&relabelled, &c, &strict).allowed());
    assert!(!validate_cluster(&c, &strict).allowed());
}
