//! `cargo xtask bench attacks`: the resource attacks of issue 11 replayed against the real
//! `rndc-warden serve --no-cluster` release binary, each scenario against a fresh server process,
//! every dial to 127.0.0.1. Figures are printed, never asserted.
//!
//! 1. `huge-denial`: one 7 MiB Bind9Instance review whose inline `spec.rndcKey.secret` has
//!    520,000 data entries that are not base64, to /validate and then /mutate.
//! 2. `uploads-array` / `uploads-nested`: 32 clients at once POST a 7 MiB valid review with an
//!    unmodelled `spec.junk` (a flat array of zeros, or arrays nested 200 deep), a few rounds;
//!    every answer must be 200 and allowed.
//! 3. `idle-tls`: 2,000 connections that complete the TLS handshake and 2,000 that never send a
//!    ClientHello, all left idle.
//! 4. `non-reader`: the scenario-1 request from a client that never reads the answer.
//!
//! During every attack the small fixture review (2.2 KB) goes out at a fixed rate on connections
//! of its own, and the server's VmRSS is sampled. With `--baseline-binary` every scenario also
//! runs against that binary and the table shows both columns and their ratio.
//!
//! The orchestrator (this module) builds what is needed, starts the servers and runs the hidden
//! `bench attack` ([`runner`]) from the release `xtask` binary for each run; the runner writes
//! its figures as JSON.

mod bodies;
mod procfs;
mod runner;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::{Args, ValueEnum};
use rndc_warden_testkit::Lifetime;
use rndc_warden_testkit::process::{ManagedProcess, free_ports, log_tail};
use serde::{Deserialize, Serialize};

use super::admission::{self, LOG_TAIL, STOP_GRACE, Server};
use super::report::Machine;

pub use runner::{AttackRunArgs, run as run_attack};

/// Arguments of `cargo xtask bench attacks`.
#[derive(Debug, Args)]
pub struct AttacksArgs {
    /// The `rndc-warden` binary to attack (default: this tree's, built with `cargo build
    /// --release`).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// A second binary to attack the same way, e.g. one built from the commit before the
    /// hardening; the table then shows both and their ratio.
    #[arg(long)]
    baseline_binary: Option<PathBuf>,
    /// An extra argument of `serve` for `--binary` (repeat for more), e.g.
    /// `--server-arg=--max-connections=1024`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// An extra argument of `serve` for `--baseline-binary` (repeat for more).
    #[arg(long = "baseline-server-arg", allow_hyphen_values = true)]
    baseline_server_args: Vec<String>,
    /// The scenarios to run, comma-separated (default: all, in order).
    #[arg(long = "scenario", value_enum, value_delimiter = ',')]
    scenarios: Vec<Scenario>,
    /// Where certificates, logs and JSON reports go (default: `<target>/xtask-bench-attacks`).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Sizes of the attacks and of the small reviews.
    #[command(flatten)]
    params: AttackParams,
}

/// One attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// A 7 MiB review with 520,000 invalid inline key data entries, to /validate and /mutate.
    HugeDenial,
    /// 32 parallel 7 MiB uploads with a flat unmodelled array, a few rounds.
    UploadsArray,
    /// 32 parallel 7 MiB uploads with arrays nested 200 deep in an unmodelled field.
    UploadsNested,
    /// 2,000 idle TLS connections and 2,000 that never send a ClientHello.
    IdleTls,
    /// The huge-denial request from a client that never reads the answer.
    NonReader,
}

impl Scenario {
    const ALL: [Scenario; 5] = [
        Scenario::HugeDenial,
        Scenario::UploadsArray,
        Scenario::UploadsNested,
        Scenario::IdleTls,
        Scenario::NonReader,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::HugeDenial => "huge-denial",
            Self::UploadsArray => "uploads-array",
            Self::UploadsNested => "uploads-nested",
            Self::IdleTls => "idle-tls",
            Self::NonReader => "non-reader",
        }
    }

    fn describe(self, p: &AttackParams) -> String {
        match self {
            Self::HugeDenial => format!(
                "1. huge denial: one Bind9Instance review whose inline spec.rndcKey.secret \
                 (metadata.name x) has {} data entries that are not base64, POSTed to /validate, \
                 then to /mutate",
                p.entries
            ),
            Self::UploadsArray => format!(
                "2a. {} clients at once POST a 7 MiB valid review with spec.junk: [0,0,…] \
                 (even clients /validate, odd /mutate), {} round(s); all must be 200 and allowed",
                p.clients, p.rounds
            ),
            Self::UploadsNested => format!(
                "2b. {} clients at once POST a 7 MiB valid review with spec.junk: arrays nested \
                 {} deep (even clients /validate, odd /mutate), {} round(s); all must be 200 \
                 and allowed",
                p.clients, p.depth, p.rounds
            ),
            Self::IdleTls => format!(
                "3. {} connections complete the TLS handshake and sit idle, then {} connect and \
                 never send a ClientHello; held until the server has closed them all or {} s \
                 after the last opened",
                p.idle_tls, p.idle_tcp, p.idle_hold_secs
            ),
            Self::NonReader => format!(
                "4. the scenario-1 request to /validate from a client (4 KiB receive buffer) that \
                 never reads the answer; watched until the server lets go of its socket or {} s",
                p.non_reader_bound_secs
            ),
        }
    }

    /// The longest one run may take before it is stopped.
    fn bound(self, p: &AttackParams) -> Duration {
        let secs = match self {
            Self::HugeDenial => 2 * 120,
            Self::UploadsArray | Self::UploadsNested => 120 * p.rounds as u64 + 60,
            Self::IdleTls => 2 * 180 + p.idle_hold_secs as u64,
            Self::NonReader => 120 + p.non_reader_bound_secs as u64,
        };
        Duration::from_secs(secs + 120 + p.quiet_secs as u64)
    }
}

/// The sizes of the attacks and of the small reviews sent alongside (shared by the orchestrator
/// and the runner, which gets them on its command line).
#[derive(Debug, Clone, Args)]
pub struct AttackParams {
    /// Small fixture reviews per second sent during every attack (open loop).
    #[arg(long, default_value_t = 200.0)]
    review_rate: f64,
    /// Keep-alive connections of the small reviews.
    #[arg(long, default_value_t = 4)]
    review_connections: usize,
    /// Seconds of small reviews alone before each attack, measured apart: what the machine
    /// allows without an attack (0: none).
    #[arg(long, default_value_t = 5.0)]
    quiet_secs: f64,
    /// Data entries (not base64) of the huge denial.
    #[arg(long, default_value_t = 520_000)]
    entries: usize,
    /// Clients uploading 7 MiB at once.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Rounds of uploads.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Nesting depth of the arrays of `uploads-nested`.
    #[arg(long, default_value_t = 200)]
    depth: usize,
    /// Idle connections that complete the TLS handshake.
    #[arg(long, default_value_t = 2000)]
    idle_tls: usize,
    /// Idle connections that never send a ClientHello.
    #[arg(long, default_value_t = 2000)]
    idle_tcp: usize,
    /// Seconds the idle connections are held at most after the last one opened.
    #[arg(long, default_value_t = 30.0)]
    idle_hold_secs: f64,
    /// Seconds the non-reading client waits at most for the server to let go.
    #[arg(long, default_value_t = 120.0)]
    non_reader_bound_secs: f64,
}

impl AttackParams {
    /// The same parameters as command-line arguments of the runner.
    fn to_args(&self) -> Vec<String> {
        vec![
            format!("--review-rate={}", self.review_rate),
            format!("--review-connections={}", self.review_connections),
            format!("--quiet-secs={}", self.quiet_secs),
            format!("--entries={}", self.entries),
            format!("--clients={}", self.clients),
            format!("--rounds={}", self.rounds),
            format!("--depth={}", self.depth),
            format!("--idle-tls={}", self.idle_tls),
            format!("--idle-tcp={}", self.idle_tcp),
            format!("--idle-hold-secs={}", self.idle_hold_secs),
            format!("--non-reader-bound-secs={}", self.non_reader_bound_secs),
        ]
    }

    /// Descriptors the runner and the server need: every idle connection, with room to spare.
    fn open_files_wanted(&self) -> u64 {
        (self.idle_tls + self.idle_tcp + self.clients + self.review_connections) as u64 + 1024
    }

    fn check(&self) -> Result<()> {
        ensure!(
            self.review_rate > 0.0 && self.review_connections > 0,
            "--review-rate and --review-connections must be positive"
        );
        ensure!(
            self.clients > 0 && self.rounds > 0 && self.depth > 0,
            "--clients, --rounds and --depth must be positive"
        );
        ensure!(
            self.idle_hold_secs >= 0.0
                && self.non_reader_bound_secs >= 0.0
                && self.quiet_secs >= 0.0,
            "--quiet-secs, --idle-hold-secs and --non-reader-bound-secs must not be negative"
        );
        Ok(())
    }
}

/// One measured figure of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// What it is, e.g. `/validate: response size`; the row of the table.
    pub name: String,
    /// The figure.
    pub value: Value,
    /// Shown after the figure, e.g. `bound reached`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A number with its unit, or a text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Value {
    /// A measurement; ratios are taken between these.
    Number {
        /// The value.
        value: f64,
        /// Its unit (`MiB`, `s`, `ms`, or empty for a count).
        unit: String,
    },
    /// Anything else (an answer's status, a load average).
    Text(String),
    /// Not measured (e.g. the process was gone).
    Missing,
}

impl Figure {
    fn new(name: &str, value: Value) -> Self {
        Self {
            name: name.to_owned(),
            value,
            note: None,
        }
    }

    /// A number in `unit`.
    pub fn number(name: &str, value: f64, unit: &str) -> Self {
        Self::new(
            name,
            Value::Number {
                value,
                unit: unit.to_owned(),
            },
        )
    }

    /// A number in `unit`, or missing.
    pub fn maybe(name: &str, value: Option<f64>, unit: &str) -> Self {
        match value {
            Some(value) => Self::number(name, value, unit),
            None => Self::new(name, Value::Missing),
        }
    }

    /// A text.
    pub fn text(name: &str, text: String) -> Self {
        Self::new(name, Value::Text(text))
    }

    /// The same figure with `note` (if any) shown after it.
    pub fn noted(mut self, note: Option<&str>) -> Self {
        self.note = note.map(str::to_owned);
        self
    }

    fn number_value(&self) -> Option<f64> {
        match self.value {
            Value::Number { value, .. } => Some(value),
            _ => None,
        }
    }

    fn shown(&self) -> String {
        let value = match &self.value {
            Value::Number { value, unit } => {
                let number = format_number(*value);
                if unit.is_empty() {
                    number
                } else {
                    format!("{number} {unit}")
                }
            }
            Value::Text(text) => text.clone(),
            Value::Missing => "-".into(),
        };
        match &self.note {
            Some(note) => format!("{value} ({note})"),
            None => value,
        }
    }
}

/// Whole numbers as they are, others with four significant digits or so (at least three).
fn format_number(value: f64) -> String {
    let magnitude = value.abs();
    if (value.fract() == 0.0 && magnitude < 1e15) || magnitude >= 1000.0 {
        format!("{value:.0}")
    } else if magnitude >= 100.0 {
        format!("{value:.1}")
    } else if magnitude >= 10.0 {
        format!("{value:.2}")
    } else if magnitude >= 0.01 {
        format!("{value:.3}")
    } else {
        // Three significant digits: 0.000441, not 0.000.
        let decimals = (2.0 - magnitude.log10().floor()).clamp(3.0, 12.0) as usize;
        format!("{value:.decimals$}")
    }
}

/// What one run of one scenario measured (the runner's JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttackReport {
    /// The scenario.
    pub scenario: Scenario,
    /// The figures, in the order they are shown.
    pub figures: Vec<Figure>,
    /// Things worth knowing: failures, the server gone, limits not raised.
    pub notes: Vec<String>,
}

/// A binary under attack and the extra arguments of its `serve`.
struct Subject {
    label: &'static str,
    binary: PathBuf,
    args: Vec<String>,
}

/// Runs every chosen scenario against every binary and prints the table.
pub fn run(args: AttacksArgs) -> Result<ExitCode> {
    args.params.check()?;
    let machine = Machine::detect();
    // Inherited by the servers and the runners started below.
    let wanted = args.params.open_files_wanted();
    let limit = procfs::raise_open_file_limit(wanted)?;
    let bins = admission::build_release(if args.binary.is_some() {
        &["xtask"]
    } else {
        &["rndc-warden", "xtask"]
    })?;
    let mut subjects = Vec::new();
    if let Some(binary) = &args.baseline_binary {
        subjects.push(Subject {
            label: "baseline",
            binary: binary.clone(),
            args: args.baseline_server_args.clone(),
        });
    }
    subjects.push(Subject {
        label: "candidate",
        binary: args.binary.clone().unwrap_or(bins.rndc_warden),
        args: args.server_args.clone(),
    });
    for subject in &subjects {
        ensure!(
            subject.binary.is_file(),
            "{} is not a file",
            subject.binary.display()
        );
    }
    let work = admission::prepare_work_dir(Some(
        args.work_dir
            .clone()
            .unwrap_or_else(|| crate::cluster::target_dir().join("xtask-bench-attacks")),
    ))?;
    let scenarios = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenarios.clone()
    };

    let mut results = Vec::new();
    for &scenario in &scenarios {
        let mut runs = Vec::new();
        for subject in &subjects {
            println!("==> {} against the {}", scenario.name(), subject.label);
            let run = run_one(&bins.xtask, subject, scenario, &args.params, &work);
            if let Err(error) = &run {
                println!("    failed: {error:#}");
            }
            runs.push(run.map_err(|error| format!("{error:#}")));
        }
        results.push((scenario, runs));
    }

    let out = render(&machine, limit, &subjects, &args.params, &results, &work);
    print!("{out}");
    let failed = results
        .iter()
        .flat_map(|(_, runs)| runs)
        .any(Result::is_err);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// One scenario against one fresh server.
fn run_one(
    xtask: &Path,
    subject: &Subject,
    scenario: Scenario,
    params: &AttackParams,
    work: &Path,
) -> Result<AttackReport> {
    let dir = work.join(format!("{}-{}", scenario.name(), subject.label));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let [port, probe_port] = <[u16; 2]>::try_from(free_ports(2)?)
        .map_err(|_| anyhow::anyhow!("free_ports returned the wrong number of ports"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let server = Server {
        binary: &subject.binary,
        args: &subject.args,
        cert_dir: admission::cert_dir(&dir),
        log: dir.join("rndc-warden.log"),
    };
    let mut process = server.start(addr, probe_port)?;
    let output = dir.join("report.json");
    let mut command = Command::new(xtask);
    command
        .args(["bench", "attack"])
        .arg(format!("--scenario={}", scenario.name()))
        .arg(format!("--addr={addr}"))
        .arg(format!("--metrics-addr=127.0.0.1:{probe_port}"))
        .arg("--ca")
        .arg(admission::cert_dir(&dir).join("ca.crt"))
        .arg(format!("--server-pid={}", process.pid()))
        .arg("--output")
        .arg(&output)
        .args(params.to_args());
    let mut runner = ManagedProcess::spawn(
        "attack runner",
        command,
        &dir.join("attack.log"),
        Lifetime::TiedToParent,
    )?;
    let label = format!("{} against the {}", scenario.name(), subject.label);
    let finished =
        admission::wait_for_exit(&mut runner, Instant::now() + scenario.bound(params), &label);
    let server_exit = process.exit_status();
    process.stop(STOP_GRACE);
    let status = finished?;
    ensure!(
        status.success(),
        "the runner failed ({status})\n{}",
        log_tail(runner.log(), LOG_TAIL)
    );
    let text = std::fs::read_to_string(&output)
        .with_context(|| format!("reading {}", output.display()))?;
    let mut report: AttackReport =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", output.display()))?;
    if let Some(status) = server_exit {
        report.notes.push(format!(
            "the server exited during the attack ({status}); its log: {}",
            process.log().display()
        ));
    }
    Ok(report)
}

/// The printed result: the machine, then one table per scenario.
fn render(
    machine: &Machine,
    open_files: u64,
    subjects: &[Subject],
    params: &AttackParams,
    results: &[(Scenario, Vec<Result<AttackReport, String>>)],
    work: &Path,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nresource attacks (issue 11) on rndc-warden serve --no-cluster, 127.0.0.1"
    );
    let _ = writeln!(
        out,
        "machine: {} CPUs, {}, Linux {}; open-file limit {open_files} (inherited by servers \
         and runners)",
        machine.cpus, machine.cpu_model, machine.kernel
    );
    for subject in subjects {
        let _ = writeln!(
            out,
            "{}: {}{}",
            subject.label,
            subject.binary.display(),
            if subject.args.is_empty() {
                String::new()
            } else {
                format!(" serve {}", subject.args.join(" "))
            }
        );
    }
    let _ = writeln!(
        out,
        "small reviews alongside every attack: the 2.2 KB fixture, {}/s open loop on {} \
         connections of their own, latency from the scheduled send time; 'quiet': the same for \
         {} s on the fresh server before the attack",
        params.review_rate, params.review_connections, params.quiet_secs
    );
    for (scenario, runs) in results {
        let _ = writeln!(out, "\n{}", scenario.describe(params));
        render_table(&mut out, subjects, runs);
    }
    let _ = writeln!(
        out,
        "\nlogs and JSON reports: {} (timings are noisy on a shared machine: read them with the \
         load average and the CPUs other processes kept busy)",
        work.display()
    );
    out
}

fn render_table(out: &mut String, subjects: &[Subject], runs: &[Result<AttackReport, String>]) {
    let reports: Vec<Option<&AttackReport>> = runs.iter().map(|r| r.as_ref().ok()).collect();
    // Rows: every figure name, in the order first seen.
    let mut names: Vec<&str> = Vec::new();
    for report in reports.iter().flatten() {
        for figure in &report.figures {
            if !names.contains(&figure.name.as_str()) {
                names.push(&figure.name);
            }
        }
    }
    let width = names
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(10)
        .max(10);
    let compare = subjects.len() == 2;
    let mut header = format!("{:<width$}", "figure");
    for subject in subjects {
        let _ = write!(header, "  {:>22}", subject.label);
    }
    if compare {
        let _ = write!(header, "  {:>10}", "cand/base");
    }
    let _ = writeln!(out, "{}", header.trim_end());
    for name in names {
        let cells: Vec<Option<&Figure>> = reports
            .iter()
            .map(|r| r.and_then(|r| r.figures.iter().find(|f| f.name == name)))
            .collect();
        let mut line = format!("{name:<width$}");
        for cell in &cells {
            let shown = cell.map_or_else(|| "-".to_owned(), |f| f.shown());
            let _ = write!(line, "  {shown:>22}");
        }
        if compare {
            let _ = write!(line, "  {:>10}", ratio(cells[0], cells[1]));
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    for (subject, run) in subjects.iter().zip(runs) {
        match run {
            Ok(report) => {
                for note in &report.notes {
                    let _ = writeln!(out, "  note ({}): {note}", subject.label);
                }
            }
            Err(error) => {
                let _ = writeln!(out, "  !! the {} run failed: {error}", subject.label);
            }
        }
    }
}

/// `candidate / baseline` of two numbers, as `0.12x`.
fn ratio(baseline: Option<&Figure>, candidate: Option<&Figure>) -> String {
    match (
        baseline.and_then(Figure::number_value),
        candidate.and_then(Figure::number_value),
    ) {
        (Some(base), Some(cand)) if base != 0.0 => format!("{:.2}x", cand / base),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(figures: Vec<Figure>) -> AttackReport {
        AttackReport {
            scenario: Scenario::HugeDenial,
            figures,
            notes: vec!["a note".into()],
        }
    }

    fn subject(label: &'static str) -> Subject {
        Subject {
            label,
            binary: PathBuf::from(format!("/bin/{label}")),
            args: Vec::new(),
        }
    }

    #[test]
    fn the_table_shows_both_columns_and_their_ratio() {
        let runs = vec![
            Ok(report(vec![
                Figure::number("/validate: response size", 85.7, "MB"),
                Figure::text("/validate: answer", "HTTP 200, denied".into()),
                Figure::number("small reviews p99", 3900.0, "ms"),
            ])),
            Ok(report(vec![
                Figure::number("/validate: response size", 0.004, "MB"),
                Figure::text("/validate: answer", "HTTP 200, denied".into()),
                Figure::number("small reviews p99", 39.0, "ms"),
                Figure::number("rndc_warden_connections_refused_total", 3.0, ""),
            ])),
        ];
        let mut out = String::new();
        render_table(
            &mut out,
            &[subject("baseline"), subject("candidate")],
            &runs,
        );
        let row = |name: &str| {
            out.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no row {name}:\n{out}"))
                .to_owned()
        };
        assert!(
            row("/validate: response size").contains("85.70 MB"),
            "{out}"
        );
        assert!(row("/validate: response size").ends_with("0.00x"), "{out}");
        assert!(row("small reviews p99").ends_with("0.01x"), "{out}");
        assert!(
            !row("/validate: answer").ends_with('x'),
            "no ratio of texts: {out}"
        );
        let only_new = row("rndc_warden_connections_refused_total");
        assert!(
            only_new.contains(" - "),
            "missing in the baseline: {only_new}"
        );
        assert!(out.contains("note (baseline): a note"), "{out}");
    }

    #[test]
    fn a_failed_run_is_loud_and_the_other_is_still_shown() {
        let runs = vec![
            Err("the server did not start".to_owned()),
            Ok(report(vec![Figure::number("x", 1.5, "s")])),
        ];
        let mut out = String::new();
        render_table(
            &mut out,
            &[subject("baseline"), subject("candidate")],
            &runs,
        );
        assert!(
            out.contains("!! the baseline run failed: the server did not start"),
            "{out}"
        );
        assert!(
            out.lines()
                .any(|l| l.starts_with('x') && l.contains("1.500 s")),
            "{out}"
        );
    }

    #[test]
    fn figures_round_trip_through_json_and_show_their_notes() {
        let figures = vec![
            Figure::number("held", 120.0, "s").noted(Some("bound reached")),
            Figure::maybe("gone", None, "MiB"),
            Figure::text("answer", "HTTP 413".into()),
        ];
        let json = serde_json::to_string(&report(figures.clone())).expect("json");
        let back: AttackReport = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.figures, figures);
        assert_eq!(figures[0].shown(), "120 s (bound reached)");
        assert_eq!(figures[1].shown(), "-");
        assert_eq!(format_number(0.0123), "0.012");
        assert_eq!(format_number(0.000441), "0.000441");
        assert_eq!(format_number(0.0051), "0.00510");
        assert_eq!(format_number(454.25), "454.2");
        assert_eq!(format_number(2000.0), "2000");
    }

    #[test]
    fn the_runner_gets_the_same_parameters() {
        use clap::Parser as _;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            params: AttackParams,
        }
        let cli = Cli::parse_from(["x", "--entries=10", "--idle-hold-secs=2.5"]);
        let again = Cli::parse_from(std::iter::once("x".to_owned()).chain(cli.params.to_args()));
        assert_eq!(again.params.to_args(), cli.params.to_args());
        assert_eq!(again.params.entries, 10);
        assert_eq!(again.params.idle_hold_secs, 2.5);
    }
}
