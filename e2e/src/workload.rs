//! A TCP service in a test namespace (issue 20): a workload endpoint a
//! preset protects (ECS's task credentials, 169.254.170.2:80; EKS Pod
//! Identity's), made local to the namespace on its loopback, or a
//! service on the loopback itself (the ECS agent's introspection API,
//! 127.0.0.1:51678). The kernel completes connections to its listener
//! unaccepted: a connect that succeeds reached it.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener},
    path::Path,
};

use crate::netns::{ip_at, try_in_netns_at};

/// ECS's task credentials endpoint (the `aws-ecs` preset's).
pub const ECS_CREDENTIALS: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)), 80);
/// EKS Pod Identity's IPv6 endpoint (the `aws-eks-pod-identity` preset's).
pub const EKS_POD_IDENTITY_V6: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)),
    80,
);
/// The ECS agent's introspection API, on the host's loopback.
pub const ECS_INTROSPECTION: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 51678);

/// A listener in one namespace; closed on drop (an address it added goes
/// with the namespace).
#[derive(Debug)]
pub struct TcpService {
    _listener: TcpListener,
}

impl TcpService {
    /// Listens on `addr` in the namespace at `netns`, first adding its
    /// address to the loopback there unless it is a loopback address or
    /// already there. Panics if either fails.
    pub fn start(netns: &Path, addr: SocketAddr) -> Self {
        let ip = addr.ip();
        let bind =
            || try_in_netns_at(netns, || TcpListener::bind(addr)).unwrap_or_else(|e| panic!("{e}"));
        if let Ok(listener) = bind() {
            return Self {
                _listener: listener,
            };
        }
        if !ip.is_loopback() {
            let added = match ip {
                IpAddr::V4(v4) => ip_at(netns, &["addr", "add", &format!("{v4}/32"), "dev", "lo"]),
                // nodad: a tentative address cannot be bound.
                IpAddr::V6(v6) => ip_at(
                    netns,
                    &[
                        "-6",
                        "addr",
                        "add",
                        &format!("{v6}/128"),
                        "dev",
                        "lo",
                        "nodad",
                    ],
                ),
            };
            added.unwrap_or_else(|e| panic!("adding {ip} in {}: {e}", netns.display()));
        }
        let listener =
            bind().unwrap_or_else(|e| panic!("listening on {addr} in {}: {e}", netns.display()));
        Self {
            _listener: listener,
        }
    }
}
