//! CPU time from /proc: of the whole machine, of one process, and of this process, so each load
//! run can say how the CPUs were shared between the server, the load generator and anything else.

use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Clock ticks per second of /proc/stat and /proc/<pid>/stat.
fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Busy CPU seconds of the whole machine since boot (all CPUs, everything but idle and iowait).
fn machine_busy_secs() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks = parse_machine_busy_ticks(&stat).context("no cpu line in /proc/stat")?;
    Ok(ticks as f64 / ticks_per_sec())
}

fn parse_machine_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already in user and nice).
    let busy = [0, 1, 2, 5, 6, 7];
    Some(busy.iter().filter_map(|&i| fields.get(i)).sum())
}

/// User + system CPU seconds of process `pid`.
pub fn process_cpu_secs(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = parse_process_ticks(&stat).with_context(|| format!("parsing {path}"))?;
    Ok(ticks as f64 / ticks_per_sec())
}

fn parse_process_ticks(stat: &str) -> Option<u64> {
    // "pid (comm) state ppid ... utime stime ...": utime and stime are fields 14 and 15, that is
    // the 12th and 13th after the parenthesised command name.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// User + system CPU seconds this process has used so far (all threads).
pub fn own_cpu_secs() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0.0;
        }
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// A point in time with the machine's and one server's CPU clocks.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    at: Instant,
    machine_secs: f64,
    server_secs: f64,
}

impl CpuSample {
    /// Samples the machine and the server process `pid`.
    pub fn take(pid: u32) -> Result<Self> {
        Ok(Self {
            at: Instant::now(),
            machine_secs: machine_busy_secs()?,
            server_secs: process_cpu_secs(pid)?,
        })
    }

    /// How the CPUs were used between `self` and `later`, given the load generator's own CPU
    /// seconds over the same interval.
    pub fn until(&self, later: &CpuSample, generator_secs: f64) -> CpuUse {
        let wall = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let machine = later.machine_secs - self.machine_secs;
        let server = later.server_secs - self.server_secs;
        CpuUse {
            server_secs: server,
            server_cores: server / wall,
            generator_cores: generator_secs / wall,
            other_cores: ((machine - server - generator_secs) / wall).max(0.0),
        }
    }
}

/// Average CPUs busy during a load run (1.0 = one CPU all the time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuUse {
    /// CPU seconds of the server under load.
    pub server_secs: f64,
    /// The server under load.
    pub server_cores: f64,
    /// The load generator.
    pub generator_cores: f64,
    /// Every other process on the machine (other servers, builds, ...).
    pub other_cores: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
        assert_eq!(
            parse_machine_busy_ticks(stat),
            Some(100 + 5 + 50 + 3 + 2 + 1)
        );
    }

    #[test]
    fn process_time_is_utime_plus_stime_even_with_spaces_in_the_name() {
        let stat = "42 (tokio (rt) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_process_ticks(stat), Some(325));
    }

    #[test]
    fn own_cpu_time_is_measured() {
        let spin = (0..2_000_000u64).fold(0u64, |a, b| a.wrapping_add(b * b));
        assert!(spin > 0);
        assert!(own_cpu_secs() > 0.0);
    }

    #[test]
    fn the_rest_of_the_machine_is_what_neither_side_used() {
        let start = Instant::now();
        let before = CpuSample {
            at: start,
            machine_secs: 10.0,
            server_secs: 1.0,
        };
        let after = CpuSample {
            at: start + std::time::Duration::from_secs(2),
            machine_secs: 14.0,
            server_secs: 3.0,
        };
        let used = before.until(&after, 1.5);
        assert!((used.server_secs - 2.0).abs() < 1e-9);
        assert!((used.server_cores - 1.0).abs() < 1e-9);
        assert!((used.generator_cores - 0.75).abs() < 1e-9);
        assert!((used.other_cores - 0.25).abs() < 1e-9);
    }
}
