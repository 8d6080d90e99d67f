//! The `signal` reload strategy (docs/reload.md, "Strategies"): SIGHUP to named in each of an instance's pods, only
//! once the pod sees the new key file.
//!
//! The steps that touch pods sit behind [`PodExec`], so the orchestration ([`signal_pods`]) is
//! tested with fakes and with a local `named`; [`KubeExec`] is the real implementation over the
//! `pods/exec` subresource. What runs in a pod: `sha256sum <key file>` (the digest is compared
//! with the Secret's `rndc.key`; the file itself never leaves the pod) and `kill -HUP 1`.

use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{AttachParams, ListParams};
use kube::{Api, Client, ResourceExt};
use tokio::io::AsyncReadExt;

/// Why a step in a pod failed. Messages name pods and commands, never file contents.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The API server refused the request (HTTP 403): the `pods/exec` or `pods` RBAC is missing.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Any other API or connection error (e.g. the kubelet could not be reached).
    #[error("{0}")]
    Api(String),
    /// The command ran but failed or printed something unexpected.
    #[error("{0}")]
    Command(String),
}

impl ExecError {
    fn from_kube(what: &str, error: kube::Error) -> ExecError {
        let forbidden = match &error {
            kube::Error::Api(s) => s.code == 403,
            // The exec upgrade request fails with the HTTP status as text.
            kube::Error::UpgradeConnection(e) => e.to_string().contains("403"),
            _ => false,
        };
        if forbidden {
            ExecError::Forbidden(format!("{what}: {error}"))
        } else {
            ExecError::Api(format!("{what}: {error}"))
        }
    }
}

/// The pod operations of the `signal` strategy.
pub trait PodExec: Send + Sync {
    /// Names of the running pods in `namespace` matching the label `selector`.
    fn list_pods<'a>(
        &'a self,
        namespace: &'a str,
        selector: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, ExecError>>;

    /// Lower-case hex SHA-256 of the file at `path` as container `container` of the pod sees it.
    fn file_digest<'a>(
        &'a self,
        namespace: &'a str,
        pod: &'a str,
        container: &'a str,
        path: &'a str,
    ) -> BoxFuture<'a, Result<String, ExecError>>;

    /// Sends SIGHUP to PID 1 of the container.
    fn hup<'a>(
        &'a self,
        namespace: &'a str,
        pod: &'a str,
        container: &'a str,
    ) -> BoxFuture<'a, Result<(), ExecError>>;
}

/// [`PodExec`] over the Kubernetes API: `list` on pods and `create` on `pods/exec`.
#[derive(Clone)]
pub struct KubeExec {
    client: Client,
    timeout: Duration,
}

impl KubeExec {
    /// Uses `client`; every exec is bounded by 30 seconds.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            timeout: Duration::from_secs(30),
        }
    }

    async fn run(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        command: &[&str],
    ) -> Result<String, ExecError> {
        let what = format!("exec {:?} in pod {namespace}/{pod}", command[0]);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let params = AttachParams::default()
            .container(container)
            .stdin(false)
            .stdout(true)
            .stderr(true);
        let work = async {
            let mut attached = api
                .exec(pod, command.iter().copied(), &params)
                .await
                .map_err(|e| ExecError::from_kube(&what, e))?;
            let mut stdout = String::new();
            if let Some(mut out) = attached.stdout() {
                out.read_to_string(&mut stdout)
                    .await
                    .map_err(|e| ExecError::Api(format!("{what}: reading output: {e}")))?;
            }
            let status = match attached.take_status() {
                Some(status) => status.await,
                None => None,
            };
            let _ = attached.join().await;
            match status {
                Some(s) if s.status.as_deref() != Some("Success") => {
                    Err(ExecError::Command(format!(
                        "{what} failed: {}",
                        s.message.unwrap_or_else(|| "no message".to_owned())
                    )))
                }
                _ => Ok(stdout),
            }
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| ExecError::Api(format!("{what}: timed out after {:?}", self.timeout)))?
    }
}

impl PodExec for KubeExec {
    fn list_pods<'a>(
        &'a self,
        namespace: &'a str,
        selector: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, ExecError>> {
        Box::pin(async move {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
            let pods = api
                .list(&ListParams::default().labels(selector))
                .await
                .map_err(|e| ExecError::from_kube(&format!("list pods {selector}"), e))?;
            let mut names: Vec<String> = pods
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| {
                    !matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Succeeded" | "Failed")
                    )
                })
                .map(|p| p.name_any())
                .collect();
            names.sort();
            Ok(names)
        })
    }

    fn file_digest<'a>(
        &'a self,
        namespace: &'a str,
        pod: &'a str,
        container: &'a str,
        path: &'a str,
    ) -> BoxFuture<'a, Result<String, ExecError>> {
        Box::pin(async move {
            let out = self
                .run(namespace, pod, container, &["sha256sum", path])
                .await?;
            parse_digest(&out).ok_or_else(|| {
                ExecError::Command(format!(
                    "sha256sum in pod {namespace}/{pod} printed no digest"
                ))
            })
        })
    }

    fn hup<'a>(
        &'a self,
        namespace: &'a str,
        pod: &'a str,
        container: &'a str,
    ) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(async move {
            self.run(namespace, pod, container, &["kill", "-HUP", "1"])
                .await
                .map(|_| ())
        })
    }
}

/// The digest in `sha256sum` output (`<64 hex>  <path>`).
pub fn parse_digest(output: &str) -> Option<String> {
    let first = output.split_whitespace().next()?;
    (first.len() == 64 && first.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| first.to_ascii_lowercase())
}

/// One signal reload.
#[derive(Clone, Debug)]
pub struct SignalRequest {
    /// Namespace of the pods.
    pub namespace: String,
    /// Label selector of the instance's pods.
    pub selector: String,
    /// Container that runs named.
    pub container: String,
    /// Path of the mounted `rndc.key` in the container.
    pub key_path: String,
    /// SHA-256 of the new `rndc.key` ([`super::reload::expected_key_digest`]).
    pub digest: String,
    /// How long pods may take to see the new file.
    pub deadline: Duration,
    /// How often pods that still show the old file are checked again. Constant, not a backoff:
    /// once the kubelet has projected the new file, every moment before SIGHUP is a window in
    /// which clients that read the mounted key (Bindy's sidecar) are refused by named.
    pub retry: Duration,
}

/// How a signal reload ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignalOutcome {
    /// Every pod saw the new key file and was sent SIGHUP.
    Reloaded {
        /// The pods signalled.
        pods: Vec<String>,
        /// How many digest checks found the old file (and were retried).
        stale_checks: u32,
    },
    /// No pod matched the selector.
    NoPods,
    /// Some pods did not see the new file before the deadline (the others were signalled).
    TimedOut {
        /// Pods still on the old file.
        stale: Vec<String>,
        /// Pods signalled.
        reloaded: Vec<String>,
    },
    /// A step failed for good.
    Failed {
        /// The pod (empty when listing failed).
        pod: String,
        /// The error.
        error: String,
    },
}

/// Signals every pod of the instance: for each pod, compare the digest of its key file with the
/// expected one, SIGHUP named when it matches, and check the pods that still show the old file
/// again every `retry` until `deadline`. Pods that appear while retrying are included.
pub async fn signal_pods(exec: &dyn PodExec, request: &SignalRequest) -> SignalOutcome {
    let started = tokio::time::Instant::now();
    let mut reloaded: Vec<String> = Vec::new();
    let mut stale_checks = 0u32;
    let delay = request.retry;
    loop {
        let pods = match exec.list_pods(&request.namespace, &request.selector).await {
            Ok(pods) => pods,
            Err(error) => {
                return SignalOutcome::Failed {
                    pod: String::new(),
                    error: error.to_string(),
                };
            }
        };
        if pods.is_empty() && reloaded.is_empty() {
            return SignalOutcome::NoPods;
        }
        let mut stale = Vec::new();
        let pending: Vec<String> = pods.into_iter().filter(|p| !reloaded.contains(p)).collect();
        for pod in &pending {
            let digest = match exec
                .file_digest(
                    &request.namespace,
                    pod,
                    &request.container,
                    &request.key_path,
                )
                .await
            {
                Ok(d) => d,
                Err(error) => {
                    return SignalOutcome::Failed {
                        pod: pod.clone(),
                        error: error.to_string(),
                    };
                }
            };
            if !digest.eq_ignore_ascii_case(&request.digest) {
                stale_checks += 1;
                tracing::info!(
                    pod = %format!("{}/{pod}", request.namespace),
                    "pod does not see the new RNDC key file yet; will retry"
                );
                stale.push(pod.clone());
                continue;
            }
            if let Err(error) = exec.hup(&request.namespace, pod, &request.container).await {
                return SignalOutcome::Failed {
                    pod: pod.clone(),
                    error: error.to_string(),
                };
            }
            tracing::info!("Sent SIGHUP to pod {}/{pod}", request.namespace);
            reloaded.push(pod.clone());
        }
        if stale.is_empty() {
            return SignalOutcome::Reloaded {
                pods: reloaded,
                stale_checks,
            };
        }
        if started.elapsed() + delay > request.deadline {
            return SignalOutcome::TimedOut { stale, reloaded };
        }
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// A fake cluster: pods with the digest of their key file; records every call.
    #[derive(Default)]
    struct FakeExec {
        pods: Vec<String>,
        digests: Mutex<HashMap<String, String>>,
        /// After this many digest checks of a pod, its file shows `new`.
        flips_after: HashMap<String, u32>,
        new: String,
        hup_fails: Vec<String>,
        checks: Mutex<HashMap<String, u32>>,
        hups: Mutex<Vec<String>>,
    }

    impl PodExec for FakeExec {
        fn list_pods<'a>(
            &'a self,
            _: &'a str,
            selector: &'a str,
        ) -> BoxFuture<'a, Result<Vec<String>, ExecError>> {
            Box::pin(async move {
                if selector == "forbidden" {
                    return Err(ExecError::Forbidden("list pods".into()));
                }
                Ok(self.pods.clone())
            })
        }

        fn file_digest<'a>(
            &'a self,
            _: &'a str,
            pod: &'a str,
            _: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<String, ExecError>> {
            Box::pin(async move {
                let mut checks = self.checks.lock().expect("lock");
                let n = checks.entry(pod.to_owned()).or_default();
                *n += 1;
                let mut digests = self.digests.lock().expect("lock");
                if self.flips_after.get(pod).is_some_and(|after| *n > *after) {
                    digests.insert(pod.to_owned(), self.new.clone());
                }
                Ok(digests.get(pod).cloned().unwrap_or_default())
            })
        }

        fn hup<'a>(
            &'a self,
            _: &'a str,
            pod: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<(), ExecError>> {
            Box::pin(async move {
                if self.hup_fails.iter().any(|p| p == pod) {
                    return Err(ExecError::Command(format!("kill in {pod}: exit 1")));
                }
                self.hups.lock().expect("lock").push(pod.to_owned());
                Ok(())
            })
        }
    }

    fn request() -> SignalRequest {
        SignalRequest {
            namespace: "dns".into(),
            selector: "app=bind9,instance=a".into(),
            container: "bind9".into(),
            key_path: "/etc/bind/keys/rndc.key".into(),
            digest: "new".into(),
            deadline: Duration::from_secs(30),
            retry: Duration::from_millis(500),
        }
    }

    fn fake(pods: &[&str], digest: &str) -> FakeExec {
        FakeExec {
            pods: pods.iter().map(|p| (*p).to_owned()).collect(),
            digests: Mutex::new(
                pods.iter()
                    .map(|p| ((*p).to_owned(), digest.to_owned()))
                    .collect(),
            ),
            new: "new".into(),
            ..FakeExec::default()
        }
    }

    #[tokio::test]
    async fn test_sighup_sent_to_all_pod_replicas() {
        let exec = fake(&["a-0", "a-1", "a-2"], "new");
        let outcome = signal_pods(&exec, &request()).await;
        assert_eq!(
            outcome,
            SignalOutcome::Reloaded {
                pods: vec!["a-0".into(), "a-1".into(), "a-2".into()],
                stale_checks: 0
            }
        );
        assert_eq!(*exec.hups.lock().expect("lock"), ["a-0", "a-1", "a-2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn pods_that_have_not_seen_the_new_file_are_retried_then_signalled() {
        let mut exec = fake(&["a-0", "a-1"], "old");
        exec.digests
            .lock()
            .expect("lock")
            .insert("a-0".into(), "new".into());
        exec.flips_after.insert("a-1".into(), 2);
        let outcome = signal_pods(&exec, &request()).await;
        assert_eq!(
            outcome,
            SignalOutcome::Reloaded {
                pods: vec!["a-0".into(), "a-1".into()],
                stale_checks: 2
            }
        );
        // a-0 was signalled once, before a-1 was ready; a-1 only after it saw the file.
        assert_eq!(*exec.hups.lock().expect("lock"), ["a-0", "a-1"]);
        assert_eq!(exec.checks.lock().expect("lock")["a-0"], 1);
    }

    #[tokio::test(start_paused = true)]
    async fn test_sighup_failure_handling() {
        // SIGHUP fails in one pod: the reload fails and names the pod.
        let mut exec = fake(&["a-0", "a-1"], "new");
        exec.hup_fails.push("a-1".into());
        match signal_pods(&exec, &request()).await {
            SignalOutcome::Failed { pod, error } => {
                assert_eq!(pod, "a-1");
                assert!(error.contains("exit 1"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        // A pod that never sees the new file: the deadline ends the retries.
        let exec = fake(&["a-0", "a-1"], "old");
        exec.digests
            .lock()
            .expect("lock")
            .insert("a-0".into(), "new".into());
        let started = tokio::time::Instant::now();
        let outcome = signal_pods(&exec, &request()).await;
        assert_eq!(
            outcome,
            SignalOutcome::TimedOut {
                stale: vec!["a-1".into()],
                reloaded: vec!["a-0".into()]
            }
        );
        assert!(started.elapsed() <= Duration::from_secs(30));
        // Checked every 0.5 s until the deadline, not with a growing backoff: a pod whose file
        // changes late is signalled within 0.5 s of the change.
        assert!(
            exec.checks.lock().expect("lock")["a-1"] >= 55,
            "retried every 0.5 s"
        );
        assert_eq!(
            *exec.hups.lock().expect("lock"),
            ["a-0"],
            "never the stale pod"
        );
        // Listing forbidden (no RBAC) and no pods at all.
        let exec = fake(&[], "new");
        let mut forbidden = request();
        forbidden.selector = "forbidden".into();
        assert!(matches!(
            signal_pods(&exec, &forbidden).await,
            SignalOutcome::Failed { error, .. } if error.contains("forbidden")
        ));
        assert_eq!(signal_pods(&exec, &request()).await, SignalOutcome::NoPods);
    }

    #[test]
    fn sha256sum_output_is_parsed() {
        let d = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
        assert_eq!(
            parse_digest(&format!("{d}  /etc/bind/keys/rndc.key\n")),
            Some(d.to_ascii_lowercase())
        );
        assert_eq!(parse_digest("sha256sum: /x: No such file"), None);
        assert_eq!(parse_digest(""), None);
    }
}
