//! The apiserver's audit log of writes, always on and cheap: one JSON line per write request
//! (create, update, patch, delete, deletecollection) at `Metadata` level, written when the
//! response is complete; reads, Leases and Events are not logged. Tests count who wrote what
//! with it (e.g. "no write by rndc-warden in this namespace for five minutes").

use std::path::{Path, PathBuf};

use crate::control_plane::ControlPlane;

/// The policy file's name in the control plane's run directory.
pub const POLICY_FILE: &str = "audit-policy.yaml";
/// The log's name in the control plane's run directory.
pub const LOG_FILE: &str = "audit.log";

/// Only writes, at `Metadata` level (no request or response bodies: no key material).
pub const POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  resources:
  - group: coordination.k8s.io
    resources: [leases]
  - group: \"\"
    resources: [events]
  - group: events.k8s.io
    resources: [events]
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
";

/// The kube-apiserver flags that turn the log on for the run directory `run_dir`.
pub(crate) fn apiserver_args(run_dir: &Path) -> Vec<String> {
    vec![
        format!(
            "--audit-policy-file={}",
            run_dir.join(POLICY_FILE).display()
        ),
        format!("--audit-log-path={}", run_dir.join(LOG_FILE).display()),
        "--audit-log-format=json".to_owned(),
        "--audit-log-mode=blocking".to_owned(),
    ]
}

/// One audited write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// `create`, `update`, `patch`, `delete`, `deletecollection`.
    pub verb: String,
    /// The requesting user's name.
    pub user: String,
    /// The object's namespace (empty for cluster-scoped objects).
    pub namespace: String,
    /// The resource (plural), e.g. `secrets`.
    pub resource: String,
    /// The subresource, e.g. `status` (empty for the object itself).
    pub subresource: String,
    /// The object's name (empty for a create by `generateName`).
    pub name: String,
    /// The response's HTTP status code.
    pub code: u16,
    /// When the request was received (RFC 3339, microseconds).
    pub received: String,
}

impl ControlPlane {
    /// The audit log file.
    pub fn audit_log_path(&self) -> PathBuf {
        self.run_dir().join(LOG_FILE)
    }

    /// Every write audited so far (lines that do not parse are skipped: the last one may be
    /// half written).
    pub fn audit_events(&self) -> Vec<AuditEvent> {
        let text = std::fs::read_to_string(self.audit_log_path()).unwrap_or_default();
        text.lines().filter_map(parse_line).collect()
    }
}

fn parse_line(line: &str) -> Option<AuditEvent> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let text = |pointer: &str| {
        v.pointer(pointer)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Some(AuditEvent {
        verb: text("/verb"),
        user: text("/user/username"),
        namespace: text("/objectRef/namespace"),
        resource: text("/objectRef/resource"),
        subresource: text("/objectRef/subresource"),
        name: text("/objectRef/name"),
        code: v
            .pointer("/responseStatus/code")
            .and_then(serde_json::Value::as_u64)
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(0),
        received: text("/requestReceivedTimestamp"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audit_line_is_parsed() {
        let line = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"x","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/a/secrets/b","verb":"patch","user":{"username":"system:serviceaccount:r:w","groups":[]},"objectRef":{"resource":"secrets","namespace":"a","name":"b","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":200},"requestReceivedTimestamp":"2026-12-02T06:00:00.000001Z"}"#;
        let event = parse_line(line).expect("parses");
        assert_eq!(
            event,
            AuditEvent {
                verb: "patch".into(),
                user: "system:serviceaccount:r:w".into(),
                namespace: "a".into(),
                resource: "secrets".into(),
                subresource: String::new(),
                name: "b".into(),
                code: 200,
                received: "2026-12-02T06:00:00.000001Z".into(),
            }
        );
        assert_eq!(parse_line("{\"verb\":"), None);
    }
}
