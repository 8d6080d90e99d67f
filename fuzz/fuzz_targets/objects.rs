//! Whole objects through every front-end entry point: review (mutate, apply, validate), the
//! effective configuration, the rotation plan and the audit. Never panics; the defaulting patch
//! always applies.
#![no_main]

use chrono::{TimeZone, Utc};
use k8s_openapi::api::core::v1::Secret;
use libfuzzer_sys::fuzz_target;
use rndc_warden::api::{Bind9Cluster, Bind9Instance, ClusterBind9Provider};
use rndc_warden::policy::{
    self, PolicyConfig, SecretChange, audit, effective_config, plan_rotation,
};

fn no_internal_error(decision: &policy::Decision) {
    assert!(
        !decision
            .denials
            .iter()
            .any(|d| d.starts_with("internal error")),
        "{:?}",
        decision.denials
    );
    let total: usize = decision.warnings.iter().map(String::len).sum();
    assert!(total <= policy::MAX_WARNINGS_BYTES);
}

fuzz_target!(|data: &[u8]| {
    let cfg = PolicyConfig::default();
    let now = Utc
        .with_ymd_and_hms(2026, 3, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let cluster = serde_json::from_value::<Bind9Cluster>(value.clone()).ok();
    if let Some(cluster) = &cluster {
        no_internal_error(&policy::review_cluster(cluster, &cfg));
    }
    if let Ok(provider) = serde_json::from_value::<ClusterBind9Provider>(value.clone()) {
        no_internal_error(&policy::review_provider(&provider, &cfg));
    }
    let secret = serde_json::from_value::<Secret>(value.clone()).ok();
    if let Ok(instance) = serde_json::from_value::<Bind9Instance>(value) {
        for cluster in [None, cluster.as_ref()] {
            no_internal_error(&policy::review_instance(&instance, cluster, &cfg));
            if let Ok(effective) = effective_config(&instance, cluster, &cfg) {
                let plan = plan_rotation(&effective, None, now, &cfg);
                let _ = plan.needs_roll(None);
                let _ = audit(&effective, None, now, &cfg);
            }
        }
    }
    if let Some(secret) = secret {
        let instance = Bind9Instance::new("fuzz", Default::default());
        let owner = effective_config(&instance, None, &cfg).ok();
        let change = SecretChange {
            new: &secret,
            old: Some(&secret),
            username: "fuzzer",
            owner: owner.as_ref(),
            now,
        };
        no_internal_error(&policy::review_secret(&change, &cfg));
        if let Some(owner) = &owner {
            let plan = plan_rotation(owner, Some(&secret), now, &cfg);
            let _ = plan.needs_roll(Some("2026-01-01T00:00:00Z"));
            let _ = audit(owner, Some(&secret), now, &cfg);
        }
    }
});
