//! Reading the apiserver's `/metrics` (Prometheus text format) and its histograms.

use std::collections::BTreeMap;

use kube::Client;

use crate::error::{Error, Result};

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_bucket`/`_sum`/`_count` suffix for histograms).
    pub name: String,
    /// Label pairs.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

impl Sample {
    fn matches(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.name == name
            && labels
                .iter()
                .all(|(k, v)| self.labels.get(*k).is_some_and(|actual| actual == v))
    }
}

/// A histogram aggregated over every series whose labels include the requested ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Number of observations (`_count`).
    pub count: f64,
    /// Sum of observations (`_sum`).
    pub sum: f64,
    /// Cumulative bucket counts by upper bound (`le`), ascending, `+Inf` last.
    pub buckets: Vec<(f64, f64)>,
}

/// A parsed metrics exposition.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    samples: Vec<Sample>,
}

impl Metrics {
    /// Fetches `GET /metrics` with `client` (the admin client may; others need RBAC on the
    /// non-resource URL) and parses it.
    pub async fn fetch(client: &Client) -> Result<Metrics> {
        let request = http::Request::get("/metrics")
            .body(Vec::new())
            .map_err(|e| Error::Invalid {
                what: "metrics request",
                reason: e.to_string(),
            })?;
        Metrics::parse(&client.request_text(request).await?)
    }

    /// Parses the Prometheus text exposition format.
    pub fn parse(text: &str) -> Result<Metrics> {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(parse_line)
            .collect::<Result<Vec<_>>>()?;
        Ok(Metrics { samples })
    }

    /// All samples.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The sum of the samples named `name` whose labels include `labels` (0 when none match):
    /// the value of a counter or gauge across the selected series.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.matches(name, labels))
            .map(|s| s.value)
            .sum()
    }

    /// The histogram `name` summed over the series whose labels include `labels`; `None` if no
    /// series matches.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Option<Histogram> {
        let count_name = format!("{name}_count");
        let mut matched = false;
        let mut count = 0.0;
        for s in self
            .samples
            .iter()
            .filter(|s| s.matches(&count_name, labels))
        {
            matched = true;
            count += s.value;
        }
        if !matched {
            return None;
        }
        let sum = self.sum(&format!("{name}_sum"), labels);
        let mut buckets: BTreeMap<OrderedF64, f64> = BTreeMap::new();
        let bucket_name = format!("{name}_bucket");
        for s in self
            .samples
            .iter()
            .filter(|s| s.matches(&bucket_name, labels))
        {
            if let Some(le) = s.labels.get("le").and_then(|v| parse_value(v).ok()) {
                *buckets.entry(OrderedF64(le)).or_default() += s.value;
            }
        }
        Some(Histogram {
            count,
            sum,
            buckets: buckets.into_iter().map(|(le, n)| (le.0, n)).collect(),
        })
    }
}

/// f64 with a total order (bucket bounds are never NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrderedF64(f64);
impl Eq for OrderedF64 {}
impl PartialOrd for OrderedF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrderedF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

fn invalid(line: &str, reason: &str) -> Error {
    Error::Invalid {
        what: "metrics line",
        reason: format!("{reason}: {line}"),
    }
}

fn parse_value(v: &str) -> std::result::Result<f64, std::num::ParseFloatError> {
    match v {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        other => other.parse(),
    }
}

fn parse_line(line: &str) -> Result<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or_else(|| invalid(line, "no value"))?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let mut chars = after_brace.char_indices().peekable();
        let mut end = None;
        loop {
            // Skip separators.
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            match chars.peek() {
                Some((i, '}')) => {
                    end = Some(*i);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(invalid(line, "label value is not quoted"));
            }
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(other) => value.push(other),
                        None => break,
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    other => value.push(other),
                }
            }
            if !closed {
                return Err(invalid(line, "unterminated label value"));
            }
            labels.insert(key.trim().to_owned(), value);
        }
        let end = end.ok_or_else(|| invalid(line, "unterminated label set"))?;
        rest = &after_brace[end + 1..];
    }
    let value = rest
        .split_whitespace()
        .next()
        .ok_or_else(|| invalid(line, "no value"))?;
    let value = parse_value(value).map_err(|e| invalid(line, &e.to_string()))?;
    Ok(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
# HELP apiserver_admission_webhook_admission_duration_seconds [STABLE] Admission webhook latency
# TYPE apiserver_admission_webhook_admission_duration_seconds histogram
apiserver_admission_webhook_admission_duration_seconds_bucket{name="a.example.com",operation="CREATE",rejected="true",type="validating",le="0.005"} 1
apiserver_admission_webhook_admission_duration_seconds_bucket{name="a.example.com",operation="CREATE",rejected="true",type="validating",le="0.025"} 2
apiserver_admission_webhook_admission_duration_seconds_bucket{name="a.example.com",operation="CREATE",rejected="true",type="validating",le="+Inf"} 3
apiserver_admission_webhook_admission_duration_seconds_sum{name="a.example.com",operation="CREATE",rejected="true",type="validating"} 0.25
apiserver_admission_webhook_admission_duration_seconds_count{name="a.example.com",operation="CREATE",rejected="true",type="validating"} 3
apiserver_admission_webhook_admission_duration_seconds_bucket{name="a.example.com",operation="UPDATE",rejected="false",type="validating",le="0.005"} 0
apiserver_admission_webhook_admission_duration_seconds_bucket{name="a.example.com",operation="UPDATE",rejected="false",type="validating",le="0.025"} 1
apiserver_admission_webhook_admission_duration_seconds_bucket{name="a.example.com",operation="UPDATE",rejected="false",type="validating",le="+Inf"} 1
apiserver_admission_webhook_admission_duration_seconds_sum{name="a.example.com",operation="UPDATE",rejected="false",type="validating"} 0.01
apiserver_admission_webhook_admission_duration_seconds_count{name="a.example.com",operation="UPDATE",rejected="false",type="validating"} 1
weird_total{path="a,b=\"c\"\\d",code="200"} 7 1700000000000
plain 1.5e3
"#;

    #[test]
    fn aggregates_a_histogram_over_matching_series() {
        let m = Metrics::parse(TEXT).expect("parse");
        let name = "apiserver_admission_webhook_admission_duration_seconds";
        let all = m
            .histogram(name, &[("name", "a.example.com")])
            .expect("histogram");
        assert_eq!(all.count, 4.0);
        assert!((all.sum - 0.26).abs() < 1e-9);
        assert_eq!(
            all.buckets,
            vec![(0.005, 1.0), (0.025, 3.0), (f64::INFINITY, 4.0)]
        );
        let rejected = m
            .histogram(name, &[("name", "a.example.com"), ("rejected", "true")])
            .expect("rejected");
        assert_eq!(rejected.count, 3.0);
        assert!(m.histogram(name, &[("name", "other")]).is_none());
    }

    #[test]
    fn parses_escapes_timestamps_and_plain_samples() {
        let m = Metrics::parse(TEXT).expect("parse");
        assert_eq!(m.sum("weird_total", &[("path", "a,b=\"c\"\\d")]), 7.0);
        assert_eq!(m.sum("plain", &[]), 1500.0);
        assert_eq!(m.sum("absent", &[]), 0.0);
        assert!(Metrics::parse("x{a=\"unterminated} 1").is_err());
        assert!(Metrics::parse("novalue").is_err());
    }
}
