//! The admission router in-process: AdmissionReview fixtures for every rule and kind (create,
//! update with oldObject, delete, dryRun, Secrets) and malformed input, each with its documented
//! response.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use chrono::{DateTime, TimeZone, Utc};
use http_body_util::BodyExt as _;
use rndc_warden::admission::{self, AdmissionPolicy, AdmissionState, RequestLimits};
use rndc_warden::api::{Bind9Cluster, Bind9Instance};
use rndc_warden::cache::ClusterCache;
use rndc_warden::metrics::Metrics;
use rndc_warden::policy::PolicyConfig;
use serde_json::{Value, json};
use tower::ServiceExt as _;

const ROTATOR: &str = "system:serviceaccount:rndc-warden:rndc-warden";

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
        .single()
        .expect("valid time")
}

fn router_with(cache: ClusterCache, config: PolicyConfig) -> axum::Router {
    let policy = AdmissionPolicy::with_clock(config, cache, Arc::new(now));
    admission::router(
        AdmissionState {
            policy: Arc::new(policy),
            metrics: Metrics::new(),
        },
        RequestLimits::default(),
    )
}

fn router() -> axum::Router {
    router_with(cache_with_cluster(), PolicyConfig::default())
}

/// A synced cache with cluster `prod` (primary block set, no secondary block) and instance `owner`.
fn cache_with_cluster() -> ClusterCache {
    let cluster: Bind9Cluster = serde_json::from_value(json!({
        "apiVersion": "bindy.firestoned.io/v1beta1", "kind": "Bind9Cluster",
        "metadata": {"name": "prod", "namespace": "dns"},
        "spec": {"primary": {"rndcKey": {"autoRotate": true, "rotateAfter": "720h", "algorithm": "hmac-sha512"}},
                 "secondary": {"replicas": 2}}
    }))
    .expect("cluster");
    let owner: Bind9Instance = serde_json::from_value(json!({
        "apiVersion": "bindy.firestoned.io/v1beta1", "kind": "Bind9Instance",
        "metadata": {"name": "owner", "namespace": "dns", "uid": "owner-uid"},
        "spec": {"clusterRef": "", "role": "primary",
                 "rndcKey": {"autoRotate": true, "rotateAfter": "720h", "algorithm": "hmac-sha256"}}
    }))
    .expect("instance");
    ClusterCache::from_objects(vec![owner], vec![cluster], vec![])
}

fn gvk(kind: &str) -> Value {
    match kind {
        "Secret" => json!({"group": "", "version": "v1", "kind": "Secret"}),
        "Pod" => json!({"group": "", "version": "v1", "kind": "Pod"}),
        other => json!({"group": "bindy.firestoned.io", "version": "v1beta1", "kind": other}),
    }
}

fn review(operation: &str, object: Option<Value>, old: Option<Value>, user: &str) -> Value {
    let source = object.as_ref().or(old.as_ref()).expect("an object");
    let kind = source["kind"].as_str().expect("kind").to_owned();
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": gvk(&kind),
            "resource": {"group": "", "version": "v1", "resource": "x"},
            "name": source["metadata"]["name"],
            "namespace": "dns",
            "operation": operation,
            "userInfo": {"username": user},
            "object": object,
            "oldObject": old,
            "dryRun": false
        }
    })
}

fn instance(spec: Value) -> Value {
    json!({"apiVersion": "bindy.firestoned.io/v1beta1", "kind": "Bind9Instance",
           "metadata": {"name": "dns-1", "namespace": "dns"}, "spec": spec})
}

struct Answer {
    status: StatusCode,
    body: Value,
    text: String,
}

impl Answer {
    fn response(&self) -> &Value {
        &self.body["response"]
    }
    fn allowed(&self) -> bool {
        self.response()["allowed"].as_bool().expect("allowed")
    }
    fn message(&self) -> String {
        self.response()["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
    fn warnings(&self) -> Vec<String> {
        self.response()["warnings"]
            .as_array()
            .map(|w| {
                w.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
    fn patch(&self) -> Vec<Value> {
        let Some(encoded) = self.response()["patch"].as_str() else {
            return Vec::new();
        };
        assert_eq!(self.response()["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("base64 patch");
        serde_json::from_slice(&bytes).expect("patch json")
    }
}

async fn send_raw(router: axum::Router, path: &str, content_type: &str, body: Vec<u8>) -> Answer {
    let request = Request::post(path)
        .header("content-type", content_type)
        .body(Body::from(body))
        .expect("request");
    let response = router.oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer { status, body, text }
}

async fn send(path: &str, review: &Value) -> Answer {
    send_with(router(), path, review).await
}

async fn send_with(router: axum::Router, path: &str, review: &Value) -> Answer {
    let answer = send_raw(
        router,
        path,
        "application/json",
        serde_json::to_vec(review).expect("json"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(answer.body["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer.body["kind"], "AdmissionReview");
    assert_eq!(
        answer.response()["uid"],
        review["request"]["uid"],
        "uid must be echoed"
    );
    answer
}

#[tokio::test]
async fn a_standalone_instance_without_rndc_key_gets_the_default_block() {
    let answer = send(
        "/mutate",
        &review(
            "CREATE",
            Some(instance(json!({"clusterRef": "", "role": "primary"}))),
            None,
            "alice",
        ),
    )
    .await;
    assert!(answer.allowed());
    let patch = answer.patch();
    assert_eq!(
        patch,
        vec![json!({"op": "add", "path": "/spec/rndcKey",
                    "value": {"autoRotate": false, "rotateAfter": "2160h", "algorithm": "hmac-sha256"}})]
    );
}

#[tokio::test]
async fn an_instance_whose_cluster_has_a_role_block_is_left_alone() {
    let object = instance(json!({"clusterRef": "prod", "role": "primary"}));
    let answer = send("/mutate", &review("CREATE", Some(object), None, "alice")).await;
    assert!(answer.allowed());
    assert!(answer.patch().is_empty(), "{:?}", answer.patch());
}

#[tokio::test]
async fn an_instance_whose_cluster_lacks_its_role_block_gets_no_block_that_could_shadow_one() {
    // SPEC 4: a block written now would win over a secondary block added to `prod` later.
    let object = instance(json!({"clusterRef": "prod", "role": "secondary"}));
    let answer = send("/mutate", &review("CREATE", Some(object), None, "alice")).await;
    assert!(answer.patch().is_empty(), "{:?}", answer.patch());
}

#[tokio::test]
async fn an_instance_of_an_unknown_cluster_gets_nothing_and_a_warning() {
    let object = instance(json!({"clusterRef": "elsewhere", "role": "primary"}));
    let answer = send("/mutate", &review("CREATE", Some(object), None, "alice")).await;
    assert!(answer.patch().is_empty());
    assert!(
        answer
            .warnings()
            .iter()
            .any(|w| w.contains("elsewhere") && w.contains("not known")),
        "{:?}",
        answer.warnings()
    );
}

#[tokio::test]
async fn role_case_is_normalised_and_partial_blocks_are_filled() {
    let object =
        instance(json!({"clusterRef": "", "role": "Primary", "rndcKey": {"autoRotate": true}}));
    let patch = send("/mutate", &review("CREATE", Some(object), None, "alice"))
        .await
        .patch();
    assert!(
        patch.contains(&json!({"op": "replace", "path": "/spec/role", "value": "primary"})),
        "{patch:?}"
    );
    assert!(
        patch
            .contains(&json!({"op": "add", "path": "/spec/rndcKey/rotateAfter", "value": "2160h"})),
        "{patch:?}"
    );
    assert!(
        patch.contains(
            &json!({"op": "add", "path": "/spec/rndcKey/algorithm", "value": "hmac-sha256"})
        ),
        "{patch:?}"
    );
}

#[tokio::test]
async fn weak_algorithms_are_denied_wherever_they_appear() {
    for (spec, path) in [
        (
            json!({"role": "primary", "rndcKey": {"algorithm": "hmac-md5"}}),
            "spec.rndcKey.algorithm",
        ),
        (
            json!({"role": "primary", "rndcKey": {"secretRef": {"name": "k", "algorithm": "hmac-sha1"}}}),
            "spec.rndcKey.secretRef.algorithm",
        ),
        (
            json!({"role": "primary", "rndcSecretRef": {"name": "k", "algorithm": "hmac-sha1"}}),
            "spec.rndcSecretRef.algorithm",
        ),
    ] {
        let answer = send(
            "/validate",
            &review("CREATE", Some(instance(spec)), None, "alice"),
        )
        .await;
        assert!(!answer.allowed());
        assert!(
            answer.message().contains(path),
            "{path}: {}",
            answer.message()
        );
        assert!(
            answer.message().contains("use hmac-sha512"),
            "{}",
            answer.message()
        );
    }
}

#[tokio::test]
async fn rotate_after_below_one_hour_is_denied_and_below_a_day_warns() {
    let denied = send(
        "/validate",
        &review(
            "CREATE",
            Some(instance(
                json!({"role": "primary", "rndcKey": {"autoRotate": true, "rotateAfter": "30m"}}),
            )),
            None,
            "alice",
        ),
    )
    .await;
    assert!(!denied.allowed());
    assert!(
        denied.message().contains("spec.rndcKey.rotateAfter")
            && denied.message().contains("\"30m\""),
        "{}",
        denied.message()
    );

    let warned = send("/validate", &review("CREATE", Some(instance(json!({"role": "primary", "rndcKey": {"autoRotate": true, "rotateAfter": "12h", "algorithm": "hmac-sha256"}}))), None, "alice")).await;
    assert!(warned.allowed(), "{}", warned.message());
    assert!(
        warned.warnings().iter().any(|w| w.contains("12h")),
        "{:?}",
        warned.warnings()
    );
}

#[tokio::test]
async fn updates_with_old_object_and_dry_run_are_decided_the_same_way() {
    let old = instance(
        json!({"role": "primary", "rndcKey": {"autoRotate": true, "rotateAfter": "720h", "algorithm": "hmac-sha256"}}),
    );
    let new = instance(
        json!({"role": "primary", "rndcKey": {"autoRotate": true, "rotateAfter": "720h", "algorithm": "hmac-sha1"}}),
    );
    let mut request = review("UPDATE", Some(new), Some(old), "alice");
    let wet = send("/validate", &request).await;
    request["request"]["dryRun"] = json!(true);
    let dry = send("/validate", &request).await;
    assert!(!wet.allowed());
    assert_eq!(wet.body, dry.body);
}

#[tokio::test]
async fn deletes_are_allowed_untouched() {
    let old = instance(json!({"role": "primary", "rndcKey": {"algorithm": "hmac-md5"}}));
    for path in ["/mutate", "/validate"] {
        let answer = send(path, &review("DELETE", None, Some(old.clone()), "alice")).await;
        assert!(answer.allowed());
        assert!(answer.patch().is_empty());
    }
}

#[tokio::test]
async fn clusters_and_providers_are_defaulted_and_validated() {
    let cluster = json!({"apiVersion": "bindy.firestoned.io/v1beta1", "kind": "Bind9Cluster",
        "metadata": {"name": "c", "namespace": "dns"},
        "spec": {"primary": {"rndcKey": {"autoRotate": true}}, "secondary": {"rndcKey": {"algorithm": "hmac-sha1"}}}});
    let mutated = send(
        "/mutate",
        &review("CREATE", Some(cluster.clone()), None, "alice"),
    )
    .await;
    assert!(mutated.patch().contains(
        &json!({"op": "add", "path": "/spec/primary/rndcKey/rotateAfter", "value": "2160h"})
    ));
    let validated = send("/validate", &review("CREATE", Some(cluster), None, "alice")).await;
    assert!(
        validated
            .message()
            .contains("spec.secondary.rndcKey.algorithm"),
        "{}",
        validated.message()
    );

    let provider = json!({"apiVersion": "bindy.firestoned.io/v1beta1", "kind": "ClusterBind9Provider",
        "metadata": {"name": "p"}, "spec": {"primary": {"rndcKey": {"rotateAfter": "1y"}}}});
    let validated = send(
        "/validate",
        &review("CREATE", Some(provider), None, "alice"),
    )
    .await;
    assert!(
        validated
            .message()
            .contains("spec.primary.rndcKey.rotateAfter"),
        "{}",
        validated.message()
    );
}

fn key_secret(annotations: Value, secret_b64_of_key: &str) -> Value {
    let rndc_key = format!(
        "key \"bindy-operator\" {{\n    algorithm hmac-sha256;\n    secret \"{secret_b64_of_key}\";\n}};\n"
    );
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "owner-rndc", "namespace": "dns",
                     "labels": {"bindy.firestoned.io/rndc-key": "true"},
                     "annotations": annotations,
                     "ownerReferences": [{"apiVersion": "bindy.firestoned.io/v1beta1", "kind": "Bind9Instance",
                                          "name": "owner", "uid": "owner-uid"}]},
        "type": "Opaque",
        "data": {"key-name": b64("bindy-operator"), "algorithm": b64("hmac-sha256"),
                 "secret": b64(secret_b64_of_key), "rndc.key": b64(&rndc_key)}})
}

const KEY_A: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";
const KEY_B: &str = "ASNFZ4mrze8BI0VniavN7wEjRWeJq83vASNFZ4mrze8=";

#[tokio::test]
async fn a_new_key_secret_gets_the_three_annotations() {
    let answer = send(
        "/mutate",
        &review("CREATE", Some(key_secret(json!({}), KEY_A)), None, "alice"),
    )
    .await;
    let patch = answer.patch();
    let text = serde_json::to_string(&patch).expect("json");
    assert!(
        text.contains("rndc-created-at") && text.contains("2026-11-23T12:00:00Z"),
        "{text}"
    );
    assert!(
        text.contains("rndc-rotation-count") && text.contains("\"0\""),
        "{text}"
    );
    assert!(
        text.contains("rndc-rotate-at") && text.contains("2026-12-23T12:00:00Z"),
        "{text}"
    );
    assert!(
        !text.contains(KEY_A),
        "key material must not appear in the patch"
    );
}

#[tokio::test]
async fn changing_the_key_outside_the_rotator_counts_as_a_rotation() {
    let annotations = json!({"bindy.firestoned.io/rndc-created-at": "2026-10-01T00:00:00Z",
                             "bindy.firestoned.io/rndc-rotation-count": "4",
                             "bindy.firestoned.io/rndc-rotate-at": "2026-10-31T00:00:00Z"});
    let old = key_secret(annotations.clone(), KEY_A);
    let new = key_secret(annotations, KEY_B);
    let answer = send(
        "/mutate",
        &review("UPDATE", Some(new.clone()), Some(old.clone()), "alice"),
    )
    .await;
    let text = serde_json::to_string(&answer.patch()).expect("json");
    assert!(text.contains("\"5\""), "count must rise: {text}");
    assert!(
        text.contains("2026-11-23T12:00:00Z"),
        "created-at must be now: {text}"
    );

    let by_rotator = send("/mutate", &review("UPDATE", Some(new), Some(old), ROTATOR)).await;
    let text = serde_json::to_string(&by_rotator.patch()).expect("json");
    assert!(
        !text.contains("\"5\""),
        "the rotator's own writes are not external rotations: {text}"
    );
}

#[tokio::test]
async fn lowering_the_rotation_count_is_denied_except_for_the_rotator() {
    let old = key_secret(
        json!({"bindy.firestoned.io/rndc-created-at": "2026-10-01T00:00:00Z",
                                "bindy.firestoned.io/rndc-rotation-count": "4"}),
        KEY_A,
    );
    let new = key_secret(
        json!({"bindy.firestoned.io/rndc-created-at": "2026-10-01T00:00:00Z",
                                "bindy.firestoned.io/rndc-rotation-count": "1"}),
        KEY_A,
    );
    let denied = send(
        "/validate",
        &review("UPDATE", Some(new.clone()), Some(old.clone()), "alice"),
    )
    .await;
    assert!(!denied.allowed());
    assert!(
        denied.message().contains("rndc-rotation-count"),
        "{}",
        denied.message()
    );
    let allowed = send(
        "/validate",
        &review("UPDATE", Some(new), Some(old), ROTATOR),
    )
    .await;
    assert!(allowed.allowed(), "{}", allowed.message());
}

#[tokio::test]
async fn an_unparsable_rndc_key_is_denied_without_echoing_the_key() {
    let mut secret = key_secret(json!({}), KEY_A);
    secret["data"]["rndc.key"] = json!(
        base64::engine::general_purpose::STANDARD
            .encode(format!("key \"x\" {{ secret \"{KEY_A}\""))
    );
    let answer = send("/validate", &review("CREATE", Some(secret), None, "alice")).await;
    assert!(!answer.allowed());
    assert!(
        answer.message().contains("rndc.key"),
        "{}",
        answer.message()
    );
    assert!(
        !answer.text.contains(KEY_A),
        "key material leaked: {}",
        answer.text
    );
}

#[tokio::test]
async fn malformed_requests_get_the_documented_responses() {
    let not_json = send_raw(
        router(),
        "/validate",
        "application/json",
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);
    assert!(not_json.text.contains("not JSON"), "{}", not_json.text);

    let wrong_type = send_raw(router(), "/validate", "text/plain", b"{}".to_vec()).await;
    assert_eq!(wrong_type.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let missing_request = send_raw(
        router(),
        "/validate",
        "application/json",
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
    )
    .await;
    assert_eq!(missing_request.status, StatusCode::BAD_REQUEST);
    assert!(
        missing_request.text.contains("no request"),
        "{}",
        missing_request.text
    );

    let not_a_review = send_raw(
        router(),
        "/mutate",
        "application/json",
        br#"{"kind":"Pod"}"#.to_vec(),
    )
    .await;
    assert_eq!(not_a_review.status, StatusCode::BAD_REQUEST);

    let mut old_version = review(
        "CREATE",
        Some(instance(json!({"role": "primary"}))),
        None,
        "alice",
    );
    old_version["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let answer = send_raw(
        router(),
        "/validate",
        "application/json",
        serde_json::to_vec(&old_version).expect("json"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["apiVersion"], "admission.k8s.io/v1beta1");
    assert_eq!(answer.response()["uid"], old_version["request"]["uid"]);
    assert_eq!(answer.response()["allowed"], false);
    assert!(
        answer.message().contains("admissionReviewVersions"),
        "{}",
        answer.message()
    );

    let pod =
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "dns"}});
    let answer = send("/validate", &review("CREATE", Some(pod), None, "alice")).await;
    assert!(!answer.allowed());
    assert!(
        answer.message().contains("does not handle"),
        "{}",
        answer.message()
    );

    let mut no_uid = review(
        "CREATE",
        Some(instance(json!({"role": "primary"}))),
        None,
        "alice",
    );
    no_uid["request"]
        .as_object_mut()
        .expect("object")
        .remove("operation");
    let answer = send_raw(
        router(),
        "/validate",
        "application/json",
        serde_json::to_vec(&no_uid).expect("json"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.response()["allowed"], false);
    assert!(
        answer.message().contains("malformed"),
        "{}",
        answer.message()
    );

    let broken_spec = instance(json!({"role": "primary", "rndcKey": "not an object"}));
    let answer = send(
        "/validate",
        &review("CREATE", Some(broken_spec), None, "alice"),
    )
    .await;
    assert!(!answer.allowed());
    assert!(answer.message().contains("schema"), "{}", answer.message());
}

#[tokio::test]
async fn a_body_over_seven_mebibytes_gets_413() {
    let mut body =
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","pad":""#.to_vec();
    body.extend(std::iter::repeat_n(b'x', 8 * 1024 * 1024));
    body.extend(br#""}"#);
    let answer = send_raw(router(), "/validate", "application/json", body).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn compliance_mode_denies_auto_rotate_false() {
    let config = PolicyConfig {
        require_auto_rotate: true,
        ..PolicyConfig::default()
    };
    let object = instance(
        json!({"role": "primary", "rndcKey": {"autoRotate": false, "rotateAfter": "720h", "algorithm": "hmac-sha256"}}),
    );
    let answer = send_with(
        router_with(cache_with_cluster(), config),
        "/validate",
        &review("CREATE", Some(object), None, "alice"),
    )
    .await;
    assert!(!answer.allowed());
    assert!(
        answer.message().contains("autoRotate"),
        "{}",
        answer.message()
    );
}

#[tokio::test]
async fn metrics_count_requests_by_kind_operation_and_decision() {
    let metrics = Metrics::new();
    let router = admission::router(
        AdmissionState {
            policy: Arc::new(AdmissionPolicy::with_clock(
                PolicyConfig::default(),
                cache_with_cluster(),
                Arc::new(now),
            )),
            metrics: metrics.clone(),
        },
        RequestLimits::default(),
    );
    let object = instance(json!({"role": "primary", "rndcKey": {"algorithm": "hmac-md5"}}));
    send_with(
        router,
        "/validate",
        &review("CREATE", Some(object), None, "alice"),
    )
    .await;
    let text = metrics.encode();
    assert!(text.contains(r#"rndc_warden_admission_requests_total{endpoint="validate",kind="Bind9Instance",operation="CREATE",decision="denied"} 1"#), "{text}");
    assert!(
        text.contains(r#"rndc_warden_admission_duration_seconds_count{endpoint="validate"} 1"#),
        "{text}"
    );
    assert!(text.contains("rndc_warden_admission_in_flight 0"), "{text}");
}
