//! `rndc-warden check`: the admission decision for manifests, offline, for CI and GitOps pipelines.
//!
//! Reads YAML or JSON files, directories (recursively) and stdin, every document of every stream,
//! in any order: all clusters are read before any instance is judged, so a `Bind9Cluster` later in
//! the input still informs the instances before it. For every object it prints whether the webhook
//! would allow it, why not, the warnings and the patch. Objects that are not rndc-warden's are
//! skipped and counted. Exit code: 0 all allowed, 1 any denial, 2 usage or unreadable input.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use k8s_openapi::api::core::v1::Secret;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::api::{API_VERSION, Bind9Cluster, Bind9Instance, ClusterBind9Provider, GROUP};
use crate::config::PolicyArgs;
use crate::policy::{
    self, Decision, EffectiveKeyConfig, PolicyConfig, SecretChange, apply_patch,
    is_rndc_key_secret, shown,
};

/// Output format of `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// One block per object, then a summary line.
    Text,
    /// One JSON document with every object, skipped object and error.
    Json,
}

/// When to color text output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// Color when stdout is a terminal and `NO_COLOR` is unset.
    Auto,
    /// Always color.
    Always,
    /// Never color.
    Never,
}

/// Arguments of `rndc-warden check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Files or directories to check (directories recursively: *.yaml, *.yml, *.json); `-` reads
    /// stdin.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Output format.
    #[arg(
        long,
        short,
        value_enum,
        env = "RNDC_WARDEN_OUTPUT",
        default_value = "text"
    )]
    pub output: OutputFormat,
    /// Color text output.
    #[arg(long, value_enum, env = "RNDC_WARDEN_COLOR", default_value = "auto")]
    pub color: ColorChoice,
    /// Judge Secrets as of this time (RFC 3339) instead of now, for reproducible output.
    #[arg(long, env = "RNDC_WARDEN_CHECK_NOW", value_parser = parse_now, value_name = "TIME")]
    pub now: Option<DateTime<Utc>>,
    /// Policy settings (the same flags `serve` takes).
    #[command(flatten)]
    pub policy: PolicyArgs,
}

fn parse_now(value: &str) -> Result<DateTime<Utc>, String> {
    policy::parse_time(value)
        .ok_or_else(|| format!("{value:?} is not an RFC 3339 time, e.g. 2026-01-01T00:00:00Z"))
}

/// The user making requests in `check`: never the rotator.
const CHECK_USERNAME: &str = "rndc-warden-check";

/// Input that could not be read or parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}", self.describe())]
pub struct InputError {
    /// File path, or `-` for stdin.
    pub file: String,
    /// 1-based line (0 when not known).
    pub line: usize,
    /// 1-based column (0 when not known).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl InputError {
    fn describe(&self) -> String {
        match (self.line, self.column) {
            (0, _) => format!("{}: {}", self.file, self.message),
            (line, 0) => format!("{}:{line}: {}", self.file, self.message),
            (line, column) => format!("{}:{line}:{column}: {}", self.file, self.message),
        }
    }
}

/// One document of the input.
#[derive(Debug, Clone)]
struct Document {
    source: String,
    line: usize,
    value: Value,
}

/// Where an object came from and what it is.
#[derive(Debug, Clone, Serialize)]
struct Origin {
    source: String,
    line: usize,
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    name: String,
}

impl Origin {
    fn of(doc: &Document) -> Self {
        let text = |pointer: &str| doc.value.pointer(pointer).and_then(Value::as_str);
        Self {
            source: doc.source.clone(),
            line: doc.line,
            api_version: text("/apiVersion").unwrap_or_default().to_owned(),
            kind: text("/kind").unwrap_or_default().to_owned(),
            namespace: text("/metadata/namespace").map(str::to_owned),
            name: text("/metadata/name")
                .or(text("/metadata/generateName"))
                .unwrap_or_default()
                .to_owned(),
        }
    }

    fn label(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// The result for one object.
#[derive(Debug, Clone, Serialize)]
struct ObjectReport {
    #[serde(flatten)]
    origin: Origin,
    allowed: bool,
    denials: Vec<String>,
    warnings: Vec<String>,
    patch: Value,
}

/// An object that is not rndc-warden's.
#[derive(Debug, Clone, Serialize)]
struct Skipped {
    #[serde(flatten)]
    origin: Origin,
    reason: String,
}

/// Everything `check` found.
#[derive(Debug, Default, Serialize)]
struct Report {
    objects: Vec<ObjectReport>,
    skipped: Vec<Skipped>,
    errors: Vec<InputError>,
}

impl Report {
    fn denied(&self) -> usize {
        self.objects.iter().filter(|o| !o.allowed).count()
    }

    fn exit_code(&self) -> ExitCode {
        if !self.errors.is_empty() {
            ExitCode::from(2)
        } else if self.denied() > 0 {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        }
    }
}

/// Runs `check` and returns the exit code (0 all allowed, 1 any denial, 2 usage or input error).
pub fn run(args: &CheckArgs) -> ExitCode {
    let cfg = match args.policy.to_config() {
        Ok(cfg) => cfg,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for path in &args.paths {
        read_path(path, &mut documents, &mut errors);
    }
    let now = args.now.unwrap_or_else(Utc::now);
    let mut report = evaluate(&documents, &cfg, now);
    report.errors = errors;

    let color = match args.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
        }
    };
    let rendered = match args.output {
        OutputFormat::Text => render_text(&report, color),
        OutputFormat::Json => match serde_json::to_string_pretty(&report_json(&report)) {
            Ok(json) => json + "\n",
            Err(error) => {
                eprintln!("error: cannot encode the report: {error}");
                return ExitCode::from(2);
            }
        },
    };
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(rendered.as_bytes())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::from(2);
    }
    for error in &report.errors {
        eprintln!("error: {error}");
    }
    report.exit_code()
}

fn read_path(path: &Path, documents: &mut Vec<Document>, errors: &mut Vec<InputError>) {
    let error = |source: String, message: String| InputError {
        file: source,
        line: 0,
        column: 0,
        message,
    };
    if path == Path::new("-") {
        let mut text = String::new();
        match std::io::stdin().read_to_string(&mut text) {
            Ok(_) => split_documents("-", &text, documents, errors),
            Err(e) => errors.push(error("-".into(), format!("cannot read stdin: {e}"))),
        }
        return;
    }
    let shown = path.display().to_string();
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) => return errors.push(error(shown, format!("cannot read: {e}"))),
    };
    if metadata.is_dir() {
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(path) {
            Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => return errors.push(error(shown, format!("cannot list directory: {e}"))),
        };
        entries.sort();
        for entry in entries {
            let hidden = entry
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            let manifest = entry
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            if !hidden && (entry.is_dir() || manifest) {
                read_path(&entry, documents, errors);
            }
        }
        return;
    }
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => split_documents(&shown, &text, documents, errors),
            Err(e) => {
                let offset = e.utf8_error().valid_up_to();
                let (line, column) = position(&String::from_utf8_lossy(e.as_bytes()), offset);
                errors.push(InputError {
                    file: shown,
                    line,
                    column,
                    message: "not UTF-8 text".into(),
                });
            }
        },
        Err(e) => errors.push(error(shown, format!("cannot read: {e}"))),
    }
}

/// 1-based line and column of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    (line, column)
}

/// Splits a stream into documents: JSON values, or YAML documents separated by `---` lines.
fn split_documents(
    source: &str,
    text: &str,
    documents: &mut Vec<Document>,
    errors: &mut Vec<InputError>,
) {
    let trimmed = text.trim_start_matches('\u{feff}');
    if trimmed.trim_start().starts_with(['{', '[']) {
        let mut stream = serde_json::Deserializer::from_str(trimmed).into_iter::<Value>();
        loop {
            let start = stream.byte_offset();
            match stream.next() {
                None => break,
                Some(Ok(value)) => {
                    let skipped = trimmed[start..].len() - trimmed[start..].trim_start().len();
                    let (line, _) = position(trimmed, start + skipped);
                    push_document(source, line, value, documents);
                }
                Some(Err(e)) => {
                    errors.push(InputError {
                        file: source.into(),
                        line: e.line(),
                        column: e.column(),
                        message: strip_position(&e.to_string()),
                    });
                    break;
                }
            }
        }
        return;
    }
    let mut chunks: Vec<(usize, String)> = vec![(1, String::new())];
    for (i, line) in trimmed.lines().enumerate() {
        let separator =
            line.starts_with("---") && line[3..].chars().next().is_none_or(char::is_whitespace);
        if separator && i > 0 {
            chunks.push((i + 1, String::new()));
        }
        if let Some((_, chunk)) = chunks.last_mut() {
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    for (start, chunk) in chunks {
        // Objects are reported at their first line of content, past comments and markers.
        let content = chunk
            .lines()
            .position(|l| {
                let l = l.trim();
                !(l.is_empty() || l.starts_with('#') || l.starts_with("---"))
            })
            .map_or(start, |offset| start + offset);
        match serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&chunk) {
            Ok(serde_yaml_ng::Value::Null) => {}
            Ok(yaml) => match serde_json::to_value(&yaml) {
                Ok(value) => push_document(source, content, value, documents),
                Err(e) => errors.push(InputError {
                    file: source.into(),
                    line: start,
                    column: 0,
                    message: format!("cannot convert the document to JSON: {e}"),
                }),
            },
            Err(e) => {
                let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
                errors.push(InputError {
                    file: source.into(),
                    line: start + line.saturating_sub(1),
                    column,
                    message: strip_position(&e.to_string()),
                });
            }
        }
    }
}

/// Removes parser positions (`at line 3 column 7`), which refer to the split document.
fn strip_position(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(" at line ") {
        out.push_str(&rest[..at]);
        let tail = &rest[at + " at line ".len()..];
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        let tail = &tail[digits..];
        rest = match tail.strip_prefix(" column ") {
            Some(t) => &t[t.bytes().take_while(u8::is_ascii_digit).count()..],
            None => tail,
        };
    }
    out.push_str(rest);
    out
}

/// Adds a document, expanding `kind: List`.
fn push_document(source: &str, line: usize, value: Value, documents: &mut Vec<Document>) {
    let is_list = value
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k.ends_with("List"))
        && value.get("items").is_some_and(Value::is_array);
    if is_list {
        if let Some(Value::Array(items)) = value.get("items") {
            for item in items {
                push_document(source, line, item.clone(), documents);
            }
        }
    } else {
        documents.push(Document {
            source: source.into(),
            line,
            value,
        });
    }
}

/// What an object is, for `check`.
enum Item<'a> {
    Instance(&'a Document),
    Cluster(&'a Document),
    Provider(&'a Document),
    Secret(&'a Document),
}

fn classify(doc: &Document) -> Result<Item<'_>, String> {
    let api_version = doc.value.get("apiVersion").and_then(Value::as_str);
    let kind = doc.value.get("kind").and_then(Value::as_str);
    let (Some(api_version), Some(kind)) = (api_version, kind) else {
        return Err("not a Kubernetes object (no apiVersion and kind)".into());
    };
    let group = api_version.split_once('/').map_or("", |(g, _)| g);
    match (api_version, kind) {
        (API_VERSION, "Bind9Instance") => Ok(Item::Instance(doc)),
        (API_VERSION, "Bind9Cluster") => Ok(Item::Cluster(doc)),
        (API_VERSION, "ClusterBind9Provider") => Ok(Item::Provider(doc)),
        ("v1", "Secret") => {
            let labelled = serde_json::from_value::<Secret>(doc.value.clone())
                .is_ok_and(|s| is_rndc_key_secret(&s));
            if labelled {
                Ok(Item::Secret(doc))
            } else {
                Err("Secret without the bindy.firestoned.io/rndc-key=true label".into())
            }
        }
        (_, "Bind9Instance" | "Bind9Cluster" | "ClusterBind9Provider") if group == GROUP => Err(
            format!("{} is not served; use {API_VERSION}", clipped(api_version)),
        ),
        _ => Err(format!(
            "{} ({}) is not checked by rndc-warden",
            clipped(kind),
            clipped(api_version)
        )),
    }
}

/// A kind or apiVersion as the report names it: in full unless absurdly long.
fn clipped(text: &str) -> String {
    if text.chars().count() <= 63 {
        text.to_owned()
    } else {
        shown(text)
    }
}

/// Parses a document into its type, naming the field that does not fit (never its value).
fn typed<T: DeserializeOwned>(doc: &Document) -> Result<T, String> {
    crate::api::decode::from_value(&doc.value).map_err(|e| e.to_string())
}

type ClusterKey = (Option<String>, String);

fn evaluate(documents: &[Document], cfg: &PolicyConfig, now: DateTime<Utc>) -> Report {
    let mut report = Report::default();
    let mut results: Vec<Option<Result<ObjectReport, Skipped>>> = vec![None; documents.len()];
    let mut clusters: BTreeMap<ClusterKey, Bind9Cluster> = BTreeMap::new();
    let mut items = Vec::new();
    for (index, doc) in documents.iter().enumerate() {
        match classify(doc) {
            Ok(item) => items.push((index, item)),
            Err(reason) => {
                results[index] = Some(Err(Skipped {
                    origin: Origin::of(doc),
                    reason,
                }));
            }
        }
    }

    // Clusters first, so instances anywhere in the input see them (defaulted, as stored).
    for (index, item) in &items {
        let (doc, decision) = match item {
            Item::Cluster(doc) => match typed::<Bind9Cluster>(doc) {
                Ok(cluster) => {
                    let decision = policy::review_cluster(&cluster, cfg);
                    let stored = apply_patch(&cluster, &decision.patch).unwrap_or(cluster);
                    let key = (
                        stored.metadata.namespace.clone(),
                        stored.metadata.name.clone().unwrap_or_default(),
                    );
                    clusters.insert(key, stored);
                    (doc, Ok(decision))
                }
                Err(e) => (doc, Err(e)),
            },
            Item::Provider(doc) => match typed::<ClusterBind9Provider>(doc) {
                Ok(provider) => {
                    let decision = policy::review_provider(&provider, cfg);
                    let stored = apply_patch(&provider, &decision.patch).unwrap_or(provider);
                    // The Bindy operator copies a provider into a namespaced Bind9Cluster.
                    if let Some(namespace) = stored
                        .spec
                        .extra
                        .get("namespace")
                        .and_then(|raw| raw.decode::<String>())
                    {
                        let name = stored.metadata.name.clone().unwrap_or_default();
                        let spec = serde_json::to_value(&stored.spec)
                            .and_then(serde_json::from_value)
                            .unwrap_or_default();
                        let mut cluster = Bind9Cluster::new(&name, spec);
                        cluster.metadata.namespace = Some(namespace.clone());
                        clusters.entry((Some(namespace), name)).or_insert(cluster);
                    }
                    (doc, Ok(decision))
                }
                Err(e) => (doc, Err(e)),
            },
            _ => continue,
        };
        results[*index] = Some(Ok(object_report(doc, decision)));
    }

    let mut owners: BTreeMap<(Option<String>, String), EffectiveKeyConfig> = BTreeMap::new();
    for (index, item) in &items {
        let Item::Instance(doc) = item else { continue };
        let decision = typed::<Bind9Instance>(doc).map(|instance| {
            let cluster_ref = instance.spec.cluster_ref.clone().unwrap_or_default();
            let cluster = clusters.get(&(instance.metadata.namespace.clone(), cluster_ref));
            let decision = policy::review_instance(&instance, cluster, cfg);
            let stored = apply_patch(&instance, &decision.patch).unwrap_or(instance);
            if let Ok(effective) = policy::effective_config(&stored, cluster, cfg) {
                let key = (
                    stored.metadata.namespace.clone(),
                    effective.secret_name.clone(),
                );
                owners.entry(key).or_insert(effective);
            }
            decision
        });
        results[*index] = Some(Ok(object_report(doc, decision)));
    }

    for (index, item) in &items {
        let Item::Secret(doc) = item else { continue };
        let decision = typed::<Secret>(doc).map(|secret| {
            let key = (
                secret.metadata.namespace.clone(),
                secret.metadata.name.clone().unwrap_or_default(),
            );
            let change = SecretChange {
                new: &secret,
                old: None,
                username: CHECK_USERNAME,
                owner: owners.get(&key),
                now,
            };
            policy::review_secret(&change, cfg)
        });
        results[*index] = Some(Ok(object_report(doc, decision)));
    }

    for result in results.into_iter().flatten() {
        match result {
            Ok(object) => report.objects.push(object),
            Err(skipped) => report.skipped.push(skipped),
        }
    }
    report
}

fn object_report(doc: &Document, decision: Result<Decision, String>) -> ObjectReport {
    let origin = Origin::of(doc);
    match decision {
        Ok(decision) => {
            let mut denials = decision.denials.clone();
            if decision.denials_left_out > 0 {
                denials.push(format!(
                    "… and {} more problems of the same object",
                    decision.denials_left_out
                ));
            }
            ObjectReport {
                origin,
                allowed: decision.allowed(),
                patch: serde_json::to_value(&decision.patch).unwrap_or(Value::Null),
                denials,
                warnings: decision.warnings,
            }
        }
        Err(message) => ObjectReport {
            origin,
            allowed: false,
            denials: vec![format!("{message} (the API server rejects this object)")],
            warnings: Vec::new(),
            patch: json!([]),
        },
    }
}

fn report_json(report: &Report) -> Value {
    json!({
        "objects": report.objects,
        "skipped": report.skipped,
        "errors": report.errors,
        "summary": {
            "checked": report.objects.len(),
            "allowed": report.objects.len() - report.denied(),
            "denied": report.denied(),
            "skipped": report.skipped.len(),
            "errors": report.errors.len(),
        },
    })
}

struct Paint {
    on: bool,
}

impl Paint {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

fn render_text(report: &Report, color: bool) -> String {
    let paint = Paint { on: color };
    let mut out = String::new();
    for object in &report.objects {
        let verdict = if object.allowed {
            paint.paint("32", "allowed")
        } else {
            paint.paint("1;31", "DENIED")
        };
        let _ = writeln!(
            out,
            "{}:{}: {}: {verdict}",
            object.origin.source,
            object.origin.line,
            object.origin.label()
        );
        for denial in &object.denials {
            let _ = writeln!(out, "  {} {denial}", paint.paint("31", "deny:"));
        }
        for warning in &object.warnings {
            let _ = writeln!(out, "  {} {warning}", paint.paint("33", "warn:"));
        }
        for op in object.patch.as_array().into_iter().flatten() {
            let text = |field: &str| op.get(field).and_then(Value::as_str).unwrap_or_default();
            let value = op.get("value").map(Value::to_string).unwrap_or_default();
            let _ = writeln!(
                out,
                "  {} {} {} {value}",
                paint.paint("36", "patch:"),
                text("op"),
                text("path")
            );
        }
    }
    let denied = report.denied();
    let _ = writeln!(
        out,
        "{} object(s) checked: {} allowed, {denied} denied; {} skipped (not rndc-warden's){}",
        report.objects.len(),
        report.objects.len() - denied,
        report.skipped.len(),
        if report.errors.is_empty() {
            String::new()
        } else {
            format!("; {} input error(s)", report.errors.len())
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(source: &str, text: &str) -> (Vec<Document>, Vec<InputError>) {
        let (mut documents, mut errors) = (Vec::new(), Vec::new());
        split_documents(source, text, &mut documents, &mut errors);
        (documents, errors)
    }

    fn now() -> DateTime<Utc> {
        policy::parse_time("2026-03-01T00:00:00Z").expect("valid")
    }

    #[test]
    fn yaml_streams_split_on_document_markers_and_keep_start_lines() {
        let (documents, errors) = docs(
            "a.yaml",
            "# comment\nkind: A\n---\n---\nkind: B\n--- # c\nkind: C\n...\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let lines: Vec<usize> = documents.iter().map(|d| d.line).collect();
        assert_eq!(lines, [2, 5, 7]);
    }

    #[test]
    fn broken_yaml_reports_file_line_and_column_and_later_documents_still_count() {
        let (documents, errors) = docs("b.yaml", "kind: A\n---\nkind: B\n  bad: [\n---\nkind: C\n");
        assert_eq!(documents.len(), 2);
        assert_eq!(errors.len(), 1);
        let error = &errors[0];
        assert_eq!((error.file.as_str(), error.line), ("b.yaml", 4));
        assert!(!error.message.contains("at line"), "{}", error.message);
    }

    #[test]
    fn json_streams_and_lists_are_read() {
        let (documents, errors) = docs(
            "c.json",
            "{\"kind\":\"List\",\"items\":[{\"kind\":\"A\"},{\"kind\":\"B\"}]}\n\n{\"kind\":\"C\"}",
        );
        assert!(errors.is_empty());
        let lines: Vec<(usize, &str)> = documents
            .iter()
            .map(|d| (d.line, d.value["kind"].as_str().unwrap_or_default()))
            .collect();
        assert_eq!(lines, [(1, "A"), (1, "B"), (3, "C")]);
        let (_, errors) = docs("d.json", "{\"kind\": }");
        assert_eq!((errors[0].line, errors[0].column), (1, 10));
    }

    #[test]
    fn a_cluster_later_in_the_stream_informs_earlier_instances() {
        let (documents, _) = docs(
            "s.yaml",
            "apiVersion: bindy.firestoned.io/v1beta1\nkind: Bind9Instance\nmetadata: {name: i, \
             namespace: dns}\nspec: {clusterRef: c, role: primary}\n---\napiVersion: \
             bindy.firestoned.io/v1beta1\nkind: Bind9Cluster\nmetadata: {name: c, namespace: \
             dns}\nspec:\n  primary:\n    rndcKey: {autoRotate: true, rotateAfter: 720h, \
             algorithm: hmac-sha512}\n",
        );
        let report = evaluate(&documents, &PolicyConfig::default(), now());
        let instance = &report.objects[0];
        assert_eq!(instance.origin.kind, "Bind9Instance");
        assert!(
            instance.allowed && instance.warnings.is_empty(),
            "{:?}",
            instance.warnings
        );
        assert_eq!(instance.patch, json!([]));
    }

    #[test]
    fn objects_that_are_not_ours_are_skipped_with_a_reason() {
        let (documents, _) = docs(
            "s.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\napiVersion: v1\nkind: \
             Secret\nmetadata: {name: y}\n---\nrndcKey: {algorithm: hmac-sha512}\n",
        );
        let report = evaluate(&documents, &PolicyConfig::default(), now());
        assert!(report.objects.is_empty());
        let reasons: Vec<&str> = report.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "ConfigMap (v1) is not checked by rndc-warden",
                "Secret without the bindy.firestoned.io/rndc-key=true label",
                "not a Kubernetes object (no apiVersion and kind)",
            ]
        );
    }

    #[test]
    fn a_field_of_the_wrong_type_is_a_denial_naming_the_field() {
        let (documents, _) = docs(
            "t.yaml",
            "apiVersion: bindy.firestoned.io/v1beta1\nkind: Bind9Instance\nmetadata: {name: i}\n\
             spec: {role: primary, rndcKey: {autoRotate: \"yes\"}}\n",
        );
        let report = evaluate(&documents, &PolicyConfig::default(), now());
        assert_eq!(
            report.objects[0].denials,
            [
                "spec.rndcKey.autoRotate: expected true or false, found a string (the API server \
                 rejects this object)"
            ]
        );
    }

    #[test]
    fn exit_codes_follow_errors_then_denials() {
        let mut report = Report::default();
        assert_eq!(report.exit_code(), ExitCode::SUCCESS);
        report.objects.push(ObjectReport {
            origin: Origin {
                source: "-".into(),
                line: 1,
                api_version: API_VERSION.into(),
                kind: "Bind9Instance".into(),
                namespace: None,
                name: "i".into(),
            },
            allowed: false,
            denials: vec!["no".into()],
            warnings: vec![],
            patch: json!([]),
        });
        assert_eq!(report.exit_code(), ExitCode::from(1));
        report.errors.push(InputError {
            file: "-".into(),
            line: 1,
            column: 1,
            message: "bad".into(),
        });
        assert_eq!(report.exit_code(), ExitCode::from(2));
    }

    #[test]
    fn positions_are_stripped_from_parser_messages() {
        assert_eq!(
            strip_position(
                "did not find expected key at line 3 column 7, while parsing a block mapping at line 1 column 1"
            ),
            "did not find expected key, while parsing a block mapping"
        );
    }
}
