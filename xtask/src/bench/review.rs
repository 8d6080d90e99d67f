//! The AdmissionReview the load generator sends and the fixed answer of the floor server.

use serde_json::Value;

/// The request uid; the floor answers with it, and the preflight checks that both servers echo it.
pub const REQUEST_UID: &str = "6f1c2d8e-3b4a-4e5f-9a7b-1c2d3e4f5a6b";

/// The floor server's whole answer: allowed, with the fixed uid.
pub const FLOOR_RESPONSE: &str = concat!(
    r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":"#,
    r#"{"uid":"6f1c2d8e-3b4a-4e5f-9a7b-1c2d3e4f5a6b","allowed":true}}"#
);

/// A validating AdmissionReview as kube-apiserver sends it for `kubectl apply` of a typical
/// Bind9Instance (CREATE, primary, auto-rotated hmac-sha256 key, with kubectl's last-applied
/// annotation and managedFields). The same file drives the in-process `cargo bench --bench
/// admission`, so both measure the same request.
pub const VALIDATING_REQUEST: &str =
    include_str!("../../../benches/fixtures/validating-review.json");

/// [`VALIDATING_REQUEST`] as JSON.
pub fn validating_request() -> Value {
    serde_json::from_str(VALIDATING_REQUEST).expect("the benchmark fixture is JSON")
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
