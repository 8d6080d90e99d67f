//! What the attack runner reads about the machine and the server from outside: TCP sockets from
//! `/proc/net/tcp`, the load average, the server's open-file limit, the `connection` metrics of
//! its probe port; and the open-file limit of this process.

use std::net::SocketAddr;

use anyhow::{Context, Result};

/// `/proc/net/tcp` state of a listening socket.
const TCP_LISTEN: u8 = 0x0A;

/// One IPv4 TCP socket of `/proc/net/tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocket {
    /// Local port.
    pub local_port: u16,
    /// Remote port.
    pub remote_port: u16,
    /// Kernel TCP state (1 established, 0x0A listening, …).
    pub state: u8,
    /// Bytes in the send queue (unacknowledged or unsent).
    pub tx_queue: u64,
    /// Bytes received and not yet read (for a listener: connections waiting to be accepted).
    pub rx_queue: u64,
    /// Inode of the socket; 0 when no process holds it any more (closed, orphaned) or has not
    /// accepted it yet.
    pub inode: u64,
}

impl TcpSocket {
    /// Whether a process holds this socket (it is not closed, orphaned or waiting to be accepted).
    pub fn held(&self) -> bool {
        self.inode != 0
    }
}

/// The IPv4 TCP sockets of this network namespace.
pub fn tcp_sockets() -> Result<Vec<TcpSocket>> {
    let text = std::fs::read_to_string("/proc/net/tcp").context("reading /proc/net/tcp")?;
    Ok(parse_tcp(&text))
}

fn parse_tcp(text: &str) -> Vec<TcpSocket> {
    text.lines().skip(1).filter_map(parse_tcp_line).collect()
}

fn parse_tcp_line(line: &str) -> Option<TcpSocket> {
    // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
    let fields: Vec<&str> = line.split_whitespace().collect();
    let port = |address: &str| u16::from_str_radix(address.rsplit_once(':')?.1, 16).ok();
    let (tx, rx) = fields.get(4)?.split_once(':')?;
    Some(TcpSocket {
        local_port: port(fields.get(1)?)?,
        remote_port: port(fields.get(2)?)?,
        state: u8::from_str_radix(fields.get(3)?, 16).ok()?,
        tx_queue: u64::from_str_radix(tx, 16).ok()?,
        rx_queue: u64::from_str_radix(rx, 16).ok()?,
        inode: fields.get(9)?.parse().ok()?,
    })
}

/// The server's side of its connections on `port` (everything on that local port but the
/// listener), and how many connections wait in the listener's accept queue.
pub fn server_side(sockets: &[TcpSocket], port: u16) -> (Vec<TcpSocket>, u64) {
    let mut connections = Vec::new();
    let mut backlog = 0;
    for socket in sockets.iter().filter(|s| s.local_port == port) {
        if socket.state == TCP_LISTEN {
            backlog += socket.rx_queue;
        } else {
            connections.push(*socket);
        }
    }
    (connections, backlog)
}

/// `/proc/loadavg`'s 1, 5 and 15 minute load averages, as printed there.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The soft open-file limit of process `pid` (`/proc/<pid>/limits`).
pub fn open_file_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Raises this process's soft open-file limit to at least `wanted` (and the hard limit with it,
/// when allowed); returns the soft limit now in force. Children inherit it.
pub fn raise_open_file_limit(wanted: u64) -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if limit.rlim_cur >= wanted {
        return Ok(limit.rlim_cur);
    }
    let set = |cur: u64, max: u64| {
        let new = libc::rlimit {
            rlim_cur: cur,
            rlim_max: max,
        };
        // SAFETY: setrlimit reads the struct we own.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) == 0 }
    };
    // Raising the hard limit needs privileges; without them, go as far as the hard limit allows.
    if set(wanted, limit.rlim_max.max(wanted)) {
        return Ok(wanted);
    }
    let reachable = wanted.min(limit.rlim_max);
    if set(reachable, limit.rlim_max) {
        return Ok(reachable);
    }
    Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)")
}

/// The series of `/metrics` on `addr` whose metric name contains `connection`, with their values
/// (`None`: no answer).
pub fn connection_metrics(addr: SocketAddr) -> Option<Vec<(String, f64)>> {
    let (status, response) = super::super::admission::http_get(addr, "/metrics", 1 << 20)?;
    (status == 200).then(|| parse_connection_metrics(&response))
}

fn parse_connection_metrics(exposition: &str) -> Vec<(String, f64)> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.trim().rsplit_once(' ')?;
            let name = series.split('{').next()?;
            let value = value.parse().ok()?;
            name.contains("connection")
                .then(|| (series.to_owned(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:20FB 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:20FB 0100007F:C350 01 00040000:00000000 01:00000014 00000000     0        0 5151 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:C350 0100007F:20FB 01 00000000:0001F000 00:00000000 00000000     0        0 6161 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:20FB 0100007F:C351 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn sockets_are_parsed_from_proc_net_tcp() {
        let sockets = parse_tcp(NET_TCP);
        assert_eq!(sockets.len(), 4);
        assert_eq!(
            sockets[1],
            TcpSocket {
                local_port: 8443,
                remote_port: 50000,
                state: 1,
                tx_queue: 0x40000,
                rx_queue: 0,
                inode: 5151,
            }
        );
        assert_eq!(sockets[2].rx_queue, 0x1F000);
        let (server, backlog) = server_side(&sockets, 8443);
        assert_eq!(backlog, 3);
        assert_eq!(server.len(), 2);
        assert!(server[0].held());
        assert!(!server[1].held(), "not accepted yet, or orphaned");
    }

    #[test]
    fn connection_metrics_are_picked_by_name() {
        let text = "# HELP rndc_warden_connections_open Open connections.\n\
                    # TYPE rndc_warden_connections_open gauge\n\
                    rndc_warden_connections_open 12\n\
                    rndc_warden_connections_refused_total{reason=\"cap\"} 3\n\
                    rndc_warden_admission_in_flight 1\n\
                    # EOF\n";
        assert_eq!(
            parse_connection_metrics(text),
            vec![
                ("rndc_warden_connections_open".to_owned(), 12.0),
                (
                    "rndc_warden_connections_refused_total{reason=\"cap\"}".to_owned(),
                    3.0
                ),
            ]
        );
    }

    #[test]
    fn the_open_file_limit_can_be_read_and_kept() {
        let own = open_file_limit(std::process::id()).expect("own limit");
        assert_eq!(raise_open_file_limit(own).expect("no change"), own);
        assert!(!load_average().is_empty());
    }
}
