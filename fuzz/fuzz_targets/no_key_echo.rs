//! A marker key planted in fuzzer-chosen key-bearing places, shapes and objects never comes out:
//! not in an admission denial, warning or patch (the webhook's decisions), nor in a parse error,
//! nor in what `check` reports (decode errors and policy decisions).
#![no_main]

#[path = "../../testkit/src/leaks.rs"]
#[allow(dead_code)]
mod leaks;

use libfuzzer_sys::fuzz_target;
use leaks::{PlantKind, SHAPES, leak, plant, review, shaped_marker};
use rndc_warden::admission::{AdmissionPolicy, Malformed, parse_body};
use rndc_warden::api::{Bind9Cluster, Bind9Instance, ClusterBind9Provider, decode};
use rndc_warden::cache::ClusterCache;
use rndc_warden::metrics::Endpoint;
use rndc_warden::policy::{self, PolicyConfig};
use serde_json::Value;

fn assert_clean(what: &str, text: &str) {
    if let Some(window) = leak(text.as_bytes()) {
        panic!("{what} leaks the marker ({window})");
    }
}

fn decision_clean(decision: &policy::Decision) {
    for text in decision.denials.iter().chain(&decision.warnings) {
        assert_clean("a check decision", text);
    }
    let patch = serde_json::to_string(&decision.patch).unwrap_or_default();
    assert_clean("a check patch", &patch);
}

fn check_clean(kind: PlantKind, object: &Value) {
    let cfg = PolicyConfig::default();
    let result = match kind {
        PlantKind::Instance => decode::from_value::<Bind9Instance>(object)
            .map(|i| decision_clean(&policy::review_instance(&i, None, &cfg))),
        PlantKind::Cluster => decode::from_value::<Bind9Cluster>(object)
            .map(|c| decision_clean(&policy::review_cluster(&c, &cfg))),
        PlantKind::Provider => decode::from_value::<ClusterBind9Provider>(object)
            .map(|p| decision_clean(&policy::review_provider(&p, &cfg))),
        PlantKind::Secret => Ok(()),
    };
    if let Err(error) = result {
        assert_clean("a check decode error", &error.to_string());
    }
}

fn admission_clean(body: &[u8]) {
    let policy = AdmissionPolicy::new(PolicyConfig::default(), ClusterCache::empty());
    match parse_body(body) {
        Ok(request) => {
            for endpoint in [Endpoint::Mutate, Endpoint::Validate] {
                let verdict = policy.review(endpoint, &request);
                assert_clean("a denial", verdict.denial.as_deref().unwrap_or_default());
                for warning in &verdict.warnings {
                    assert_clean("a warning", warning);
                }
                let patch = serde_json::to_string(&verdict.patch).unwrap_or_default();
                assert_clean("a patch", &patch);
            }
        }
        Err(Malformed::NotAReview(message)) => assert_clean("a 400 message", &message),
        Err(Malformed::BadRequest { message, uid, .. }) => {
            assert_clean("a malformed-request message", &message);
            assert_clean("an echoed uid", &uid);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let kind = PlantKind::ALL[usize::from(first) % PlantKind::ALL.len()];
    let places = kind.places();
    // The fuzzer's bytes choose places and shapes; what follows a 0xff byte, when it is JSON,
    // is planted too (arbitrary values of its own, in a fuzzer-chosen place).
    let (choices, tail) = match rest.iter().position(|&b| b == 0xff) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let mut object = kind.base_object();
    for pair in choices.chunks(2).take(6) {
        let place = places[usize::from(pair[0]) % places.len()];
        let shape = usize::from(pair.get(1).copied().unwrap_or(0));
        object = plant(object, place, shaped_marker(shape % SHAPES, shape >= SHAPES));
    }
    if let Ok(value) = serde_json::from_slice::<Value>(tail) {
        let place = places[tail.len() % places.len()];
        object = plant(object, place, value);
    }
    let update = first & 0x10 != 0;
    let old = update.then(|| kind.base_object());
    let user = if first & 0x20 != 0 {
        "system:serviceaccount:rndc-warden:rndc-warden"
    } else {
        "fuzzer"
    };
    let body = serde_json::to_vec(&review(kind, &object, old.as_ref(), user)).unwrap_or_default();
    admission_clean(&body);
    check_clean(kind, &object);
});
