//! A workload endpoint in a test namespace (issue 20): an address a
//! workload preset protects (ECS's task credentials, 169.254.170.2:80),
//! made local to the namespace on its loopback, with a TCP listener the
//! kernel completes connections to. A connect that succeeds reached it.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::Path,
};

use crate::netns::{ip_at, try_in_netns_at};

/// ECS's task credentials endpoint (the `aws-ecs` preset's).
pub const ECS_CREDENTIALS: Ipv4Addr = Ipv4Addr::new(169, 254, 170, 2);

/// A listener at a workload endpoint in one namespace; closed on drop
/// (the address goes with the namespace).
#[derive(Debug)]
pub struct WorkloadEndpoint {
    _listener: TcpListener,
}

impl WorkloadEndpoint {
    /// Adds `ip` to the loopback of the namespace at `netns` and listens
    /// on `ip:port` there. Panics if either fails.
    pub fn start(netns: &Path, ip: Ipv4Addr, port: u16) -> Self {
        ip_at(netns, &["addr", "add", &format!("{ip}/32"), "dev", "lo"])
            .unwrap_or_else(|e| panic!("adding {ip} in {}: {e}", netns.display()));
        let addr = SocketAddr::from((ip, port));
        let listener = try_in_netns_at(netns, || TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("listening on {addr} in {}: {e}", netns.display()));
        Self {
            _listener: listener,
        }
    }
}
