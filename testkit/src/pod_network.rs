//! Pods with addresses of their own, for a node that runs inside a network namespace the test
//! created (`NodeOptions::pod_network`): the CNI bridge plugin puts every pod on a bridge with an
//! address from [`POD_SUBNET`], and a small TCP forwarder stands in for kube-proxy's one rule the
//! pods need, the `kubernetes` Service ([`KUBERNETES_SERVICE_IP`]:443 → the apiserver on
//! 127.0.0.1). The apiserver calls Services at their endpoints
//! (`ControlPlaneOptions::pod_network`). Nothing of it touches the host's own network: the bridge,
//! the addresses and every listener live in the test's namespace, which dies with the test.
//!
//! [`in_private_netns`] re-executes the calling test inside a fresh network namespace
//! (`unshare --net`) with only loopback up; the test body runs in that child.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::{Error, IoContext, Result};

/// The `kubernetes` Service's ClusterIP (the first address of the apiserver's
/// `--service-cluster-ip-range=10.0.0.0/24`); the apiserver's certificate names it.
pub const KUBERNETES_SERVICE_IP: &str = "10.0.0.1";
/// The pods' addresses (the bridge has the first one, `10.88.0.1`).
pub const POD_SUBNET: &str = "10.88.0.0/24";
/// The node's own address (its InternalIP, on loopback in the test's namespace): the kubelet
/// needs one that is not 127.0.0.1 to report any address at all, and the apiserver still calls it
/// by its Hostname address, `localhost`.
pub const NODE_IP: &str = "10.89.0.1";
/// The bridge the CNI plugin creates in the test's network namespace.
pub const BRIDGE: &str = "warden-pods0";
/// Set in the child [`in_private_netns`] starts, to the parent's network namespace, so the test
/// body knows it runs inside a namespace of its own.
pub const INSIDE_ENV: &str = "RNDC_WARDEN_PRIVATE_NETNS";

/// This process's network namespace (`net:[inode]`).
fn own_netns() -> Option<String> {
    std::fs::read_link("/proc/self/ns/net")
        .ok()
        .map(|p| p.display().to_string())
}

/// Whether this process runs in the network namespace [`in_private_netns`] made for it: one
/// other than its parent test's, which the parent records in [`INSIDE_ENV`].
pub fn private_netns() -> bool {
    match (std::env::var(INSIDE_ENV).ok(), own_netns()) {
        (Some(parent), Some(own)) => parent != own,
        _ => false,
    }
}

/// Runs the test `test_name` of the current test binary again inside a new network namespace
/// (loopback up, nothing else) and returns `false` after it passed (panicking with its output
/// when it failed); returns `true` when already inside, meaning: run the body now. Usage:
/// `if !in_private_netns("my_test") { return; }` as the first line of the test.
pub fn in_private_netns(test_name: &str) -> bool {
    if std::env::var_os(INSIDE_ENV).is_some() {
        assert!(
            private_netns(),
            "{INSIDE_ENV} is set but this process shares its parent's network namespace"
        );
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new("unshare")
        .args([
            "--net",
            "--",
            "sh",
            "-c",
            "ip link set lo up && exec \"$@\"",
            "sh",
        ])
        .arg(&exe)
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(
            INSIDE_ENV,
            own_netns().expect("/proc/self/ns/net is readable"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("running the test in a new network namespace needs `unshare` and `ip`: {e}")
        });
    let stdout = child.stdout.take().expect("piped stdout");
    let mut ran = false;
    for line in BufReader::new(stdout)
        .lines()
        .map_while(std::io::Result::ok)
    {
        // The one test's own summary (its name and "ok" may be split by what it prints).
        ran |= line.starts_with("test result: ok. 1 passed");
        println!("{line}");
    }
    let status = child.wait().expect("waiting for the test's child");
    assert!(
        status.success() && ran,
        "{test_name} failed inside its network namespace ({status}); its output is above"
    );
    false
}

/// The CNI configuration: one bridge, addresses from [`POD_SUBNET`] kept under `ipam_dir`, the
/// bridge as the pods' default gateway (inside the test's namespace there is nothing beyond it),
/// no masquerading.
pub fn cni_conflist(ipam_dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "warden-pods",
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "isDefaultGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": POD_SUBNET }]],
                "dataDir": ipam_dir.display().to_string(),
            },
        }],
    })
    .to_string()
}

/// The namespace's side of the pod network: the node's address ([`NODE_IP`]) and kube-proxy's
/// rule for the `kubernetes` Service, for pods only: [`KUBERNETES_SERVICE_IP`]:443 forwarded to
/// the apiserver at 127.0.0.1:`api_port`. The forwarder stops when this is dropped.
#[derive(Debug)]
pub struct PodNetwork {
    stop: Arc<AtomicBool>,
}

impl PodNetwork {
    /// Adds [`KUBERNETES_SERVICE_IP`] and [`NODE_IP`] to loopback and starts forwarding. Refuses to run outside a
    /// private network namespace (it would change the host's network).
    pub fn start(api_port: u16) -> Result<Self> {
        if !private_netns() {
            return Err(Error::Once(
                "pod networking changes the network namespace it runs in: run the test inside \
                 its own (testkit::pod_network::in_private_netns)"
                    .into(),
            ));
        }
        for address in [KUBERNETES_SERVICE_IP, NODE_IP] {
            let status = Command::new("ip")
                .args(["addr", "replace", &format!("{address}/32"), "dev", "lo"])
                .status()
                .ctx(|| "running `ip addr replace` (iproute2)".into())?;
            if !status.success() {
                return Err(Error::Once(format!(
                    "adding {address} to loopback failed ({status})"
                )));
            }
        }
        let ip: Ipv4Addr = KUBERNETES_SERVICE_IP
            .parse()
            .map_err(|e| Error::Once(format!("{KUBERNETES_SERVICE_IP}: {e}")))?;
        let listener = TcpListener::bind(SocketAddr::from((ip, 443)))
            .ctx(|| format!("listening on {KUBERNETES_SERVICE_IP}:443"))?;
        listener
            .set_nonblocking(true)
            .ctx(|| "making the forwarder's listener non-blocking".into())?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, api_port));
        std::thread::Builder::new()
            .name("testkit-kubernetes-service".into())
            .spawn(move || accept_loop(&listener, target, &stopped))
            .ctx(|| "starting the forwarder thread".into())?;
        Ok(Self { stop })
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn accept_loop(listener: &TcpListener, target: SocketAddr, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, _)) => {
                let _ = client.set_nonblocking(false);
                std::thread::spawn(move || forward(client, target));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                tracing::warn!(error = %e, "the kubernetes Service forwarder stopped accepting");
                return;
            }
        }
    }
}

/// Copies both directions until either side closes.
fn forward(client: TcpStream, target: SocketAddr) {
    let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
        return;
    };
    let (Ok(mut client_read), Ok(mut server_write)) = (client.try_clone(), server.try_clone())
    else {
        return;
    };
    let upstream = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_read, &mut server_write);
        let _ = server_write.shutdown(std::net::Shutdown::Write);
    });
    let (mut server_read, mut client_write) = (server, client);
    let _ = std::io::copy(&mut server_read, &mut client_write);
    let _ = client_write.shutdown(std::net::Shutdown::Write);
    let _ = upstream.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conflist_keeps_addresses_in_the_test_range_and_state_in_the_run_dir() {
        let text = cni_conflist(Path::new("/tmp/node/cni"));
        let config: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let bridge = &config["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["ipMasq"], false, "nothing is masqueraded out");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], POD_SUBNET);
        assert_eq!(bridge["ipam"]["dataDir"], "/tmp/node/cni");
    }

    #[test]
    fn the_forwarder_refuses_the_hosts_network_namespace() {
        if private_netns() {
            return;
        }
        let err = PodNetwork::start(1).expect_err("outside a private namespace");
        assert!(err.to_string().contains("in_private_netns"), "{err}");
    }
}
