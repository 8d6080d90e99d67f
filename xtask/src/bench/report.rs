//! What `cargo xtask bench admission` prints: the machine, one line per load run, memory, and the
//! targets of issue 4 with whether each was met. Informational: only errors fail the benchmark.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::cpu::CpuUse;
use super::load::LoadReport;

/// Our throughput must be at least this fraction of the floor's.
const TARGET_RATIO: f64 = 0.8;
/// Our p99 at half the floor's peak rate must be under this.
const TARGET_P99_MS: f64 = 1.0;
/// Our peak resident memory must be under this.
const TARGET_RSS_MIB: f64 = 30.0;
/// CPUs used by other processes during a run above which its figures are flagged as disturbed.
const DISTURBED_CORES: f64 = 0.2;

/// The machine the figures come from.
#[derive(Debug, Clone)]
pub struct Machine {
    /// CPUs available to this process (`nproc`).
    pub cpus: usize,
    /// `model name` of the first CPU in /proc/cpuinfo.
    pub cpu_model: String,
    /// The kernel release.
    pub kernel: String,
}

impl Machine {
    /// Reads the CPU count, CPU model and kernel release; unknown parts say so.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown CPU".into()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned()),
        }
    }
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
        .map(|(_, model)| model.trim().to_owned())
}

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Memory {
    /// Peak resident set (VmHWM), MiB.
    pub hwm_mib: f64,
    /// Current resident set (VmRSS), MiB.
    pub rss_mib: f64,
}

impl Memory {
    /// Reads VmHWM and VmRSS of `pid`.
    pub fn of(pid: u32) -> Result<Self> {
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        Self::parse(&status).with_context(|| format!("no VmHWM/VmRSS in {path}"))
    }

    fn parse(status: &str) -> Option<Self> {
        let kib = |key: &str| -> Option<f64> {
            let line = status.lines().find(|l| l.starts_with(key))?;
            let value = line.split_once(':')?.1.trim().strip_suffix("kB")?;
            value.trim().parse::<f64>().ok()
        };
        Some(Self {
            hwm_mib: kib("VmHWM")? / 1024.0,
            rss_mib: kib("VmRSS")? / 1024.0,
        })
    }
}

/// One load run and its label.
#[derive(Debug, Clone)]
pub struct Run {
    /// What was measured, e.g. "ours, closed loop".
    pub label: String,
    /// The load generator's report.
    pub report: LoadReport,
    /// How the CPUs were used during the run.
    pub cpu: CpuUse,
}

impl Run {
    /// Labels a report.
    pub fn new(label: &str, report: LoadReport, cpu: CpuUse) -> Self {
        Self {
            label: label.to_owned(),
            report,
            cpu,
        }
    }

    /// Server CPU microseconds per answered request (warm-up included); independent of how busy
    /// the rest of the machine was, as long as the server did not wait for a CPU while holding
    /// nothing.
    pub fn server_us_per_request(&self) -> Option<f64> {
        per_request(self.cpu.server_secs, self.report.answered)
    }

    /// Load generator CPU microseconds per answered request.
    pub fn generator_us_per_request(&self) -> Option<f64> {
        per_request(self.report.cpu_secs, self.report.answered)
    }
}

fn per_request(cpu_secs: f64, requests: u64) -> Option<f64> {
    (requests > 0).then(|| cpu_secs / requests as f64 * 1e6)
}

/// The load runs of one benchmark, in the order they ran.
#[derive(Debug, Clone)]
pub struct Runs {
    /// Floor, closed loop: the peak.
    pub floor_peak: Run,
    /// Ours, closed loop: our peak.
    pub ours_peak: Run,
    /// Ours, open loop at half the floor's peak (the latency target).
    pub ours_at_half_floor: Run,
    /// Floor, open loop at the same rate: what the machine and the generator allow.
    pub floor_at_half_floor: Run,
    /// Ours, open loop at half our own peak: our latency at 50 % utilisation.
    pub ours_at_half_own: Run,
}

impl Runs {
    /// All runs, in order.
    pub fn all(&self) -> [&Run; 5] {
        [
            &self.floor_peak,
            &self.ours_peak,
            &self.ours_at_half_floor,
            &self.floor_at_half_floor,
            &self.ours_at_half_own,
        ]
    }
}

/// Everything one benchmark measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Where it ran.
    pub machine: Machine,
    /// The load runs.
    pub runs: Runs,
    /// Our server's memory after start-up, before any load.
    pub ours_idle: Memory,
    /// Our server's memory after all runs.
    pub ours_memory: Memory,
    /// The floor server's memory after all runs.
    pub floor_memory: Memory,
    /// Where logs and JSON reports are.
    pub work_dir: PathBuf,
}

impl Outcome {
    /// Failed requests over all runs.
    pub fn errors(&self) -> u64 {
        self.runs.all().iter().map(|r| r.report.errors).sum()
    }

    /// The printed result: runs, memory, targets, and errors if any.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_header(&mut out);
        self.render_runs(&mut out);
        self.render_memory(&mut out);
        self.render_targets(&mut out);
        self.render_errors(&mut out);
        out
    }

    fn render_header(&self, out: &mut String) {
        let m = &self.machine;
        let r = &self.runs.floor_peak.report;
        let _ = writeln!(
            out,
            "\nadmission benchmark: POST /validate, Bind9Instance CREATE"
        );
        let _ = writeln!(
            out,
            "machine: {} CPUs, {}, Linux {}",
            m.cpus, m.cpu_model, m.kernel
        );
        let _ = writeln!(
            out,
            "load: {} keep-alive HTTP/1.1 connections on 127.0.0.1, {}, {:.0} s measured per run \
             (load generator and servers share the CPUs)",
            r.connections, r.tls, r.seconds
        );
    }

    fn render_runs(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\n{:<30} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>6}  {:<18} CPU µs/req srv/load",
            "run",
            "req/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "late p99",
            "errors",
            "CPUs srv/load/oth"
        );
        for run in self.runs.all() {
            let (r, c) = (&run.report, &run.cpu);
            let l = &r.latency;
            let cores = format!(
                "{:.2}/{:.2}/{:.2}",
                c.server_cores, c.generator_cores, c.other_cores
            );
            // How late the open loop sent its requests: the instrument's own error.
            let late = r
                .lateness
                .map_or_else(|| "-".into(), |late| format!("{:.3}", late.p99_ms));
            let _ = writeln!(
                out,
                "{:<30} {:>8.0} {:>8.3} {:>8.3} {:>9.3} {:>8.3} {late:>8} {:>6}  {cores:<18} {}/{}",
                run.label,
                r.requests_per_sec,
                l.p50_ms,
                l.p99_ms,
                l.p999_ms,
                l.max_ms,
                r.errors,
                micros(run.server_us_per_request()),
                micros(run.generator_us_per_request()),
            );
            if r.unsent > 0 {
                let _ = writeln!(
                    out,
                    "  !! {} scheduled requests were never sent: the server fell far behind",
                    r.unsent
                );
            }
            if c.other_cores > DISTURBED_CORES {
                let _ = writeln!(
                    out,
                    "  !! other processes kept {:.2} CPUs busy during this run: figures disturbed",
                    c.other_cores
                );
            }
        }
    }

    fn render_memory(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\nmemory: rndc-warden serve VmHWM {:.1} MiB, VmRSS {:.1} MiB (idle before load: VmRSS {:.1} MiB); \
             floor VmHWM {:.1} MiB, VmRSS {:.1} MiB",
            self.ours_memory.hwm_mib,
            self.ours_memory.rss_mib,
            self.ours_idle.rss_mib,
            self.floor_memory.hwm_mib,
            self.floor_memory.rss_mib
        );
    }

    fn render_targets(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\n{:<40} {:>12} {:>10}  result",
            "target (issue 4)", "measured", "target"
        );
        let mut line = |name: &str, measured: String, target: String, met: Option<bool>| {
            let verdict = match met {
                Some(true) => "met",
                Some(false) => "NOT MET",
                None => "not measured",
            };
            let _ = writeln!(out, "{name:<40} {measured:>12} {target:>10}  {verdict}");
        };
        let runs = &self.runs;
        let floor_rps = runs.floor_peak.report.requests_per_sec;
        let ratio = (floor_rps > 0.0).then(|| runs.ours_peak.report.requests_per_sec / floor_rps);
        line(
            "throughput ours / floor (closed loop)",
            ratio.map_or_else(|| "-".into(), |r| format!("{r:.2}x")),
            format!(">= {TARGET_RATIO:.1}x"),
            ratio.map(|r| r >= TARGET_RATIO),
        );
        let p99 = runs.ours_at_half_floor.report.latency.p99_ms;
        line(
            "p99 of ours at half the floor's peak",
            format!("{p99:.3} ms"),
            format!("< {TARGET_P99_MS:.0} ms"),
            Some(p99 < TARGET_P99_MS),
        );
        let hwm = self.ours_memory.hwm_mib;
        line(
            "peak RSS of ours (VmHWM)",
            format!("{hwm:.1} MiB"),
            format!("< {TARGET_RSS_MIB:.0} MiB"),
            Some(hwm < TARGET_RSS_MIB),
        );
        if let (Some(ours), Some(floor)) = (
            runs.ours_peak.server_us_per_request(),
            runs.floor_peak.server_us_per_request(),
        ) {
            let _ = writeln!(
                out,
                "\nserver CPU per request at peak: ours {ours:.1} µs, floor {floor:.1} µs \
                 (floor / ours = {:.2}: the throughput ratio on a machine where the server is the \
                 only CPU-bound process)",
                floor / ours
            );
        }
        let _ = writeln!(out, "logs and JSON reports: {}", self.work_dir.display());
    }

    fn render_errors(&self, out: &mut String) {
        let errors = self.errors();
        if errors == 0 {
            let _ = writeln!(out, "all requests answered HTTP 200 and allowed: no errors");
            return;
        }
        let _ = writeln!(
            out,
            "\n!!!!!!!! {errors} REQUESTS FAILED: the figures above are not valid !!!!!!!!"
        );
        for run in self.runs.all().iter().filter(|r| r.report.errors > 0) {
            let _ = writeln!(out, "{}: {} errors", run.label, run.report.errors);
            for sample in &run.report.error_samples {
                let _ = writeln!(out, "    {sample}");
            }
        }
    }
}

fn micros(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |us| format!("{us:.1}"))
}

#[cfg(test)]
mod tests {
    use super::super::load::{Latency, Mode};
    use super::*;

    fn report(rps: f64, p99_ms: f64, errors: u64) -> LoadReport {
        LoadReport {
            mode: Mode::Closed,
            connections: 32,
            rate: None,
            tls: "TLSv1_3 TLS13_AES_256_GCM_SHA384".into(),
            seconds: 10.0,
            requests: (rps * 10.0) as u64,
            answered: (rps * 12.0) as u64,
            requests_per_sec: rps,
            errors,
            error_samples: if errors > 0 {
                vec!["HTTP 500 Internal Server Error: boom".into()]
            } else {
                Vec::new()
            },
            unsent: 0,
            latency: Latency {
                p99_ms,
                ..Latency::default()
            },
            lateness: None,
            cpu_secs: 10.0,
        }
    }

    fn outcome(ours_rps: f64, p99_ms: f64, hwm_mib: f64, errors: u64) -> Outcome {
        let memory = Memory {
            hwm_mib,
            rss_mib: hwm_mib,
        };
        let cpu = CpuUse {
            server_secs: 12.0,
            server_cores: 1.0,
            generator_cores: 0.9,
            other_cores: 0.0,
        };
        Outcome {
            machine: Machine {
                cpus: 2,
                cpu_model: "Test CPU".into(),
                kernel: "6.0".into(),
            },
            runs: Runs {
                floor_peak: Run::new("floor, closed loop", report(10_000.0, 2.0, 0), cpu),
                ours_peak: Run::new("ours, closed loop", report(ours_rps, 2.0, errors), cpu),
                ours_at_half_floor: Run::new(
                    "ours, open at 5000/s",
                    LoadReport {
                        lateness: Some(Latency {
                            p99_ms: 0.042,
                            ..Latency::default()
                        }),
                        ..report(5000.0, p99_ms, 0)
                    },
                    cpu,
                ),
                floor_at_half_floor: Run::new("floor, open at 5000/s", report(5000.0, 0.3, 0), cpu),
                ours_at_half_own: Run::new("ours, open at 4500/s", report(4500.0, 0.4, 0), cpu),
            },
            ours_idle: memory,
            ours_memory: memory,
            floor_memory: memory,
            work_dir: PathBuf::from("/tmp/bench"),
        }
    }

    fn verdict<'a>(text: &'a str, target: &str) -> &'a str {
        let line = text
            .lines()
            .find(|l| l.starts_with(target))
            .expect("target line");
        line.rsplit("  ").next().expect("verdict").trim()
    }

    #[test]
    fn targets_met_are_reported_as_met() {
        let text = outcome(9000.0, 0.5, 12.0, 0).render();
        assert_eq!(verdict(&text, "throughput ours / floor"), "met", "{text}");
        assert_eq!(verdict(&text, "p99 of ours"), "met", "{text}");
        assert_eq!(verdict(&text, "peak RSS"), "met", "{text}");
        assert!(text.contains("0.90x"), "{text}");
        assert!(
            text.contains("ours 111.1 µs, floor 100.0 µs (floor / ours = 0.90"),
            "{text}"
        );
        assert!(text.contains("no errors"), "{text}");
        let open = text
            .lines()
            .find(|l| l.starts_with("ours, open at 5000/s"))
            .expect("open-loop row");
        assert!(open.contains(" 0.042 "), "late p99 shown: {open}");
        let closed = text
            .lines()
            .find(|l| l.starts_with("ours, closed loop"))
            .expect("closed-loop row");
        assert!(
            closed.contains(" - "),
            "no lateness in the closed loop: {closed}"
        );
    }

    #[test]
    fn targets_missed_are_reported_without_failing() {
        let result = outcome(7000.0, 1.5, 31.0, 0);
        let text = result.render();
        assert_eq!(
            verdict(&text, "throughput ours / floor"),
            "NOT MET",
            "{text}"
        );
        assert_eq!(verdict(&text, "p99 of ours"), "NOT MET", "{text}");
        assert_eq!(verdict(&text, "peak RSS"), "NOT MET", "{text}");
        assert_eq!(result.errors(), 0);
    }

    #[test]
    fn errors_are_loud() {
        let result = outcome(9000.0, 0.5, 12.0, 3);
        let text = result.render();
        assert_eq!(result.errors(), 3);
        assert!(text.contains("3 REQUESTS FAILED"), "{text}");
        assert!(
            text.contains("HTTP 500 Internal Server Error: boom"),
            "{text}"
        );
    }

    #[test]
    fn memory_and_cpu_model_are_parsed_from_proc() {
        let status =
            "Name:\trndc-warden\nVmPeak:\t  100 kB\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(
            Memory::parse(status),
            Some(Memory {
                hwm_mib: 20.0,
                rss_mib: 10.0
            })
        );
        assert_eq!(Memory::parse("Name:\tx\n"), None);
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nprocessor\t: 1\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("AMD EPYC 7B13"));
    }
}
