//! The AdmissionReview the load generator sends and the fixed answer of the floor server.

use serde_json::{Value, json};

/// The request uid; the floor answers with it, and the preflight checks that both servers echo it.
pub const REQUEST_UID: &str = "6f1c2d8e-3b4a-4e5f-9a7b-1c2d3e4f5a6b";

/// The floor server's whole answer: allowed, with the fixed uid.
pub const FLOOR_RESPONSE: &str = concat!(
    r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":"#,
    r#"{"uid":"6f1c2d8e-3b4a-4e5f-9a7b-1c2d3e4f5a6b","allowed":true}}"#
);

/// A validating AdmissionReview as kube-apiserver sends it for `kubectl apply` of a typical
/// Bind9Instance (CREATE, primary, auto-rotated hmac-sha256 key).
pub fn validating_request() -> Value {
    let object = json!({
        "apiVersion": "bindy.firestoned.io/v1beta1",
        "kind": "Bind9Instance",
        "metadata": {
            "name": "dns-primary-0",
            "namespace": "dns",
            "uid": "0b7c3f2e-9d41-4c55-8a63-5e0f1a2b3c4d",
            "generation": 1,
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "labels": {"app.kubernetes.io/name": "bind9", "app.kubernetes.io/instance": "dns"},
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": concat!(
                    r#"{"apiVersion":"bindy.firestoned.io/v1beta1","kind":"Bind9Instance","#,
                    r#""metadata":{"annotations":{},"name":"dns-primary-0","namespace":"dns"},"#,
                    r#""spec":{"clusterRef":"","replicas":1,"rndcKey":{"algorithm":"hmac-sha256","#,
                    r#""autoRotate":true,"rotateAfter":"720h"},"role":"primary","version":"9.18"}}"#,
                    "\n"
                )
            },
            "managedFields": [{
                "manager": "kubectl-client-side-apply",
                "operation": "Update",
                "apiVersion": "bindy.firestoned.io/v1beta1",
                "time": "2025-01-01T00:00:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {"f:annotations": {".": {}, "f:kubectl.kubernetes.io/last-applied-configuration": {}}},
                    "f:spec": {".": {}, "f:clusterRef": {}, "f:replicas": {}, "f:role": {}, "f:version": {},
                               "f:rndcKey": {".": {}, "f:algorithm": {}, "f:autoRotate": {}, "f:rotateAfter": {}}}
                }
            }]
        },
        "spec": {
            "clusterRef": "",
            "role": "primary",
            "replicas": 1,
            "version": "9.18",
            "rndcKey": {"autoRotate": true, "rotateAfter": "720h", "algorithm": "hmac-sha256"}
        }
    });
    let gvk =
        json!({"group": "bindy.firestoned.io", "version": "v1beta1", "kind": "Bind9Instance"});
    let gvr =
        json!({"group": "bindy.firestoned.io", "version": "v1beta1", "resource": "bind9instances"});
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": REQUEST_UID,
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "name": "dns-primary-0",
            "namespace": "dns",
            "operation": "CREATE",
            "userInfo": {
                "username": "kubernetes-admin",
                "uid": "aws-iam-authenticator:123456789012:AROAEXAMPLE",
                "groups": ["system:masters", "system:authenticated"]
            },
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {
                "apiVersion": "meta.k8s.io/v1",
                "kind": "CreateOptions",
                "fieldManager": "kubectl-client-side-apply",
                "fieldValidation": "Strict"
            }
        }
    })
}

/// Checks an answer the way kube-apiserver would: an AdmissionReview v1 that echoes our uid and
/// allows the object. Returns a description of the first problem.
pub fn check_answer(body: &[u8]) -> Result<(), String> {
    let answer: Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the answer is not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        )
    })?;
    if answer["apiVersion"] != "admission.k8s.io/v1" || answer["kind"] != "AdmissionReview" {
        return Err(format!("not an AdmissionReview v1: {answer}"));
    }
    let response = &answer["response"];
    if response["uid"] != REQUEST_UID {
        return Err(format!("the uid is not echoed: {answer}"));
    }
    if response["allowed"] != true {
        return Err(format!("the request was not allowed: {answer}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_answer_passes_the_check() {
        assert_eq!(check_answer(FLOOR_RESPONSE.as_bytes()), Ok(()));
    }

    #[test]
    fn a_denial_or_a_wrong_uid_fails_the_check() {
        let denied = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",
            "response":{"uid":"6f1c2d8e-3b4a-4e5f-9a7b-1c2d3e4f5a6b","allowed":false}}"#;
        assert!(check_answer(denied.as_bytes()).is_err());
        let wrong_uid = FLOOR_RESPONSE.replace("6f1c", "0000");
        assert!(check_answer(wrong_uid.as_bytes()).is_err());
        assert!(check_answer(b"not json").is_err());
    }

    #[test]
    fn the_request_is_the_size_of_a_real_one() {
        let size = serde_json::to_vec(&validating_request())
            .expect("json")
            .len();
        println!("request body: {size} bytes");
        assert!((1500..4000).contains(&size), "{size} bytes");
    }

    #[test]
    fn the_request_carries_the_uid_and_the_instance() {
        let review = validating_request();
        assert_eq!(review["request"]["uid"], REQUEST_UID);
        assert_eq!(review["request"]["operation"], "CREATE");
        assert_eq!(
            review["request"]["object"]["spec"]["rndcKey"]["algorithm"],
            "hmac-sha256"
        );
    }
}
