//! Prometheus metrics of the whole process, exposed as text on the plain-HTTP probe port.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Which admission endpoint served a request.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Endpoint {
    /// `/mutate`
    Mutate,
    /// `/validate`
    Validate,
}

/// The outcome of one admission request.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum AdmissionOutcome {
    /// Allowed without a patch.
    Allowed,
    /// Allowed with a JSON patch.
    Patched,
    /// Denied by policy.
    Denied,
    /// The request itself was malformed.
    Invalid,
}

impl Endpoint {
    /// The label value: `mutate` or `validate`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mutate => "mutate",
            Self::Validate => "validate",
        }
    }
}

impl AdmissionOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Patched => "patched",
            Self::Denied => "denied",
            Self::Invalid => "invalid",
        }
    }
}

impl EncodeLabelValue for Endpoint {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for AdmissionOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Labels of the admission request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// `/mutate` or `/validate`.
    pub endpoint: Endpoint,
    /// The object kind (`Bind9Instance`, `Bind9Cluster`, `ClusterBind9Provider`, `Secret`,
    /// `other`, or `unknown` for a malformed request).
    pub kind: &'static str,
    /// `CREATE`, `UPDATE`, `DELETE`, `CONNECT` or `unknown`.
    pub operation: &'static str,
    /// The outcome (label `decision`).
    pub decision: AdmissionOutcome,
}

/// Labels for a result that either succeeded or failed.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success` or `failure`.
    pub result: String,
}

/// Labels of the admission latency histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// `/mutate` or `/validate`.
    pub endpoint: Endpoint,
}

/// Labels of the admission connection timeout counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// `handshake` (TLS), `headers` (waiting for a request's headers, idle kept-alive
    /// connections included) or `write` (the client did not take the response).
    pub phase: &'static str,
}

/// Labels of per-instance rotator gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    /// Namespace of the instance.
    pub namespace: String,
    /// Name of the `Bind9Instance`.
    pub instance: String,
}

/// Labels of the Secret reload counter (seed 000's `bind9_rndc_secret_reloads_total`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `success` or `failed`.
    pub status: String,
}

/// Labels of the rotator's API error counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiErrorLabels {
    /// `get`, `create`, `update` or `patch`.
    pub verb: String,
}

/// Every metric the process exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Admission requests by endpoint, kind, operation and decision.
    pub admission_requests: Family<AdmissionLabels, Counter>,
    /// Admission handling latency in seconds, from body read to response encoded.
    pub admission_duration: Family<EndpointLabels, Histogram>,
    /// Admission requests being handled right now.
    pub admission_in_flight: Gauge,
    /// Admission connections open (handshaking or established).
    pub admission_connections_open: Gauge,
    /// Admission connections refused because `--max-connections` were open.
    pub admission_connections_refused: Counter,
    /// Admission connections closed by a timeout, by phase.
    pub admission_connection_timeouts: Family<PhaseLabels, Counter>,
    /// Serving certificate reloads by result.
    pub tls_reloads: Family<ResultLabels, Counter>,
    /// Key rotations by result (`success` or `failure`).
    pub rotations: Family<ResultLabels, Counter>,
    /// Seconds until each rotating instance's key is due (negative when overdue).
    pub rotation_seconds_until: Family<InstanceLabels, Gauge<f64, AtomicU64>>,
    /// 1 while the instance's stored key is below policy (too short, missing data keys or
    /// label, another algorithm than configured), 0 otherwise.
    pub key_below_policy: Family<InstanceLabels, Gauge>,
    /// When each rotating instance's stored key was created (Unix seconds, from the Secret's
    /// `rndc-created-at`): the key's age is `time() - this`.
    pub key_created: Family<InstanceLabels, Gauge<f64, AtomicU64>>,
    /// When the certificate served to the apiserver expires (Unix seconds).
    pub serving_cert_expiry: Gauge<f64, AtomicU64>,
    /// 1 while this replica holds the rotator Lease.
    pub rotator_leader: Gauge,
    /// Failed rotator API requests by verb.
    pub rotator_api_errors: Family<ApiErrorLabels, Counter>,
    /// Reloads of pods onto a changed key Secret, by status (`success` or `failed`).
    pub secret_reloads: Family<ReloadLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0,
    ])
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let admission_requests = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "rndc_warden_admission_requests",
            "Admission requests by endpoint, kind, operation and decision",
            admission_requests.clone(),
        );
        let admission_duration = Family::<EndpointLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "rndc_warden_admission_duration_seconds",
            "Time spent handling one admission request",
            admission_duration.clone(),
        );
        let admission_in_flight = Gauge::default();
        registry.register(
            "rndc_warden_admission_in_flight",
            "Admission requests being handled",
            admission_in_flight.clone(),
        );
        let admission_connections_open = Gauge::default();
        registry.register(
            "rndc_warden_admission_connections_open",
            "Admission connections open (handshaking or established)",
            admission_connections_open.clone(),
        );
        let admission_connections_refused = Counter::default();
        registry.register(
            "rndc_warden_admission_connections_refused",
            "Admission connections refused because --max-connections were open",
            admission_connections_refused.clone(),
        );
        let admission_connection_timeouts = Family::<PhaseLabels, Counter>::default();
        registry.register(
            "rndc_warden_admission_connection_timeouts",
            "Admission connections closed by a timeout, by phase (handshake, headers, write)",
            admission_connection_timeouts.clone(),
        );
        let tls_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "rndc_warden_tls_reloads",
            "Serving certificate reloads by result",
            tls_reloads.clone(),
        );
        let rotations = Family::<ResultLabels, Counter>::default();
        registry.register(
            "rndc_warden_rotations",
            "RNDC key rotations by result",
            rotations.clone(),
        );
        let rotation_seconds_until = Family::<InstanceLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "rndc_warden_rotation_seconds_until",
            "Seconds until the instance's RNDC key is due for rotation (negative when overdue)",
            rotation_seconds_until.clone(),
        );
        let key_below_policy = Family::<InstanceLabels, Gauge>::default();
        registry.register(
            "rndc_warden_key_below_policy",
            "Whether the instance's stored RNDC key is below policy (1) or not (0)",
            key_below_policy.clone(),
        );
        let key_created = Family::<InstanceLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "rndc_warden_key_created_timestamp_seconds",
            "When the instance's stored RNDC key was created, in Unix seconds",
            key_created.clone(),
        );
        let serving_cert_expiry = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "rndc_warden_serving_cert_expiry_timestamp_seconds",
            "When the serving certificate expires, in Unix seconds",
            serving_cert_expiry.clone(),
        );
        let rotator_leader = Gauge::default();
        registry.register(
            "rndc_warden_rotator_leader",
            "Whether this replica holds the rotator Lease (1) or not (0)",
            rotator_leader.clone(),
        );
        let rotator_api_errors = Family::<ApiErrorLabels, Counter>::default();
        registry.register(
            "rndc_warden_rotator_api_errors",
            "Failed rotator API requests by verb",
            rotator_api_errors.clone(),
        );
        let secret_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "bind9_rndc_secret_reloads",
            "Reloads of BIND9 pods onto a changed RNDC key Secret, by status",
            secret_reloads.clone(),
        );
        // Known label values start at 0, so that the first failure is an increase that
        // `increase()`/`rate()` (and so the alerts) can see, and every series is there to graph.
        for result in ["success", "failure"] {
            let labels = ResultLabels {
                result: result.to_owned(),
            };
            let _ = rotations.get_or_create(&labels);
            let _ = tls_reloads.get_or_create(&labels);
        }
        for status in ["success", "failed"] {
            let _ = secret_reloads.get_or_create(&ReloadLabels {
                status: status.to_owned(),
            });
        }
        for verb in ["get", "create", "update", "patch"] {
            let _ = rotator_api_errors.get_or_create(&ApiErrorLabels {
                verb: verb.to_owned(),
            });
        }
        for phase in ["handshake", "headers", "write"] {
            let _ = admission_connection_timeouts.get_or_create(&PhaseLabels { phase });
        }
        for endpoint in [Endpoint::Mutate, Endpoint::Validate] {
            let _ = admission_duration.get_or_create(&EndpointLabels { endpoint });
        }
        Arc::new(Self {
            registry,
            secret_reloads,
            rotations,
            rotation_seconds_until,
            key_below_policy,
            key_created,
            serving_cert_expiry,
            rotator_leader,
            rotator_api_errors,
            admission_requests,
            admission_duration,
            admission_in_flight,
            admission_connections_open,
            admission_connections_refused,
            admission_connection_timeouts,
            tls_reloads,
        })
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The metrics in the classic Prometheus text format (0.0.4), for scrapers and tools that do
    /// not ask for OpenMetrics (`promtool check metrics`, curl): a counter's `HELP` and `TYPE`
    /// name its `_total` samples, and there is no `# UNIT` or `# EOF`.
    pub fn encode_classic(&self) -> String {
        openmetrics_to_classic(&self.encode())
    }
}

/// Rewrites OpenMetrics text as prometheus-client writes it (HELP, TYPE, samples per family) into
/// the classic text format.
fn openmetrics_to_classic(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    let mut help: Option<(&str, &str)> = None;
    let flush = |out: &mut String, help: &mut Option<(&str, &str)>| {
        if let Some((name, text)) = help.take() {
            let _ = writeln!(out, "# HELP {name} {text}");
        }
    };
    for line in open.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush(&mut out, &mut help);
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), kind),
                "unknown" => (name.to_owned(), "untyped"),
                _ => (name.to_owned(), kind),
            };
            if let Some((help_name, text)) = help.take() {
                let help_name = if name.starts_with(help_name) {
                    &name
                } else {
                    help_name
                };
                let _ = writeln!(out, "# HELP {help_name} {text}");
            }
            let _ = writeln!(out, "# TYPE {name} {kind}");
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else {
            flush(&mut out, &mut help);
            out.push_str(line);
            out.push('\n');
        }
    }
    flush(&mut out, &mut help);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_format_names_counters_by_their_samples() {
        let metrics = Metrics::new();
        metrics.rotator_leader.set(1);
        let text = metrics.encode_classic();
        assert!(
            text.contains("# HELP rndc_warden_rotations_total RNDC key rotations by result.\n# TYPE rndc_warden_rotations_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "# TYPE rndc_warden_rotator_leader gauge\nrndc_warden_rotator_leader 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE rndc_warden_admission_duration_seconds histogram\n"));
        assert!(!text.contains("# EOF"), "{text}");
        let samples = |t: &str| t.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples(&text), samples(&metrics.encode()));
    }

    #[test]
    fn encoded_metrics_carry_names_and_labels() {
        let metrics = Metrics::new();
        metrics
            .admission_requests
            .get_or_create(&AdmissionLabels {
                endpoint: Endpoint::Validate,
                kind: "Bind9Instance",
                operation: "CREATE",
                decision: AdmissionOutcome::Denied,
            })
            .inc();
        let text = metrics.encode();
        for series in [
            r#"rndc_warden_rotations_total{result="failure"} 0"#,
            r#"bind9_rndc_secret_reloads_total{status="failed"} 0"#,
            r#"rndc_warden_tls_reloads_total{result="failure"} 0"#,
            r#"rndc_warden_rotator_api_errors_total{verb="patch"} 0"#,
            r#"rndc_warden_admission_connection_timeouts_total{phase="handshake"} 0"#,
            r#"rndc_warden_admission_duration_seconds_count{endpoint="mutate"} 0"#,
        ] {
            assert!(text.contains(series), "{series} starts at 0:\n{text}");
        }
        assert!(
            text.contains(
                r#"rndc_warden_admission_requests_total{endpoint="validate",kind="Bind9Instance",operation="CREATE",decision="denied"} 1"#
            ),
            "{text}"
        );
    }
}
