//! The listeners workers connect to: accept and close, nothing else, so a
//! connect loop measures the connect path and not a server.
//!
//! One thread per namespace polls its listeners, then drains them every
//! millisecond for as long as connections keep coming (see [`spin`]). The backlog is large (`SOMAXCONN`, 4096, also the
//! namespace's default `net.core.somaxconn`) because a full accept queue drops SYNs, and a dropped SYN
//! costs the client a one-second retransmit.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener},
    os::fd::{AsFd, AsRawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use imds_guard_e2e::{IMDS_V4, IMDS_V6, Netns};
use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt,
        socket, sockopt,
    },
};

use super::cpus;

/// The port on loopback: a destination no policy protects.
pub const PLAIN_PORT: u16 = 8080;
/// The port on the metadata addresses.
pub const IMDS_PORT: u16 = 80;

/// Not protected, over IPv4.
pub const PLAIN_V4: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), PLAIN_PORT);
/// Not protected, over IPv6.
pub const PLAIN_V6: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V6(Ipv6Addr::LOCALHOST), PLAIN_PORT);
/// Protected, over IPv4 (inside the bench namespace only).
pub const IMDS4: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(IMDS_V4), IMDS_PORT);
/// Protected, over IPv6 (inside the bench namespace only).
pub const IMDS6: SocketAddr = SocketAddr::new(std::net::IpAddr::V6(IMDS_V6), IMDS_PORT);

/// How often the thread looks at its stop flag when idle.
const POLL_MS: u16 = 100;
/// How long the thread keeps draining after the last connection, before
/// it waits in poll again.
const ACTIVE: Duration = Duration::from_millis(20);
/// How long it naps between two drains.
const NAP: Duration = Duration::from_millis(1);

/// The running listeners of one namespace; stopped on drop.
pub struct Sink {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    /// Listens on the four bench addresses inside `netns`.
    pub fn start(netns: &Netns) -> anyhow::Result<Self> {
        let listeners = netns.in_netns(|| {
            [PLAIN_V4, PLAIN_V6, IMDS4, IMDS6]
                .into_iter()
                .map(listener)
                .collect::<anyhow::Result<Vec<_>>>()
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::Builder::new()
            .name(format!("sink-{}", netns.name()))
            .spawn({
                let stop = Arc::clone(&stop);
                move || serve(&listeners, &stop)
            })?;
        Ok(Sink {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn listener(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))
        .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
    listen(&fd, Backlog::MAXCONN)?;
    Ok(TcpListener::from(fd))
}

fn serve(listeners: &[TcpListener], stop: &AtomicBool) {
    if let Some(cpu) = cpus::services() {
        // Only a less steady measurement if it fails.
        let _ = cpus::pin(0, cpu);
    }
    while !stop.load(Ordering::Acquire) {
        let mut fds: Vec<PollFd<'_>> = listeners
            .iter()
            .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN))
            .collect();
        // A timeout, or EINTR, only means another look at the stop flag:
        // spinning then would burn the services' CPU for nothing, once per
        // idle namespace.
        if poll(&mut fds, PollTimeout::from(POLL_MS)).is_ok_and(|n| n > 0) {
            drop(fds);
            spin(listeners);
        }
    }
}

/// Accepts in short naps until no connection has come for [`ACTIVE`].
///
/// While a client loop runs, a connection arrives every ten microseconds
/// or so. Draining the queue every [`NAP`] keeps this thread off the
/// listeners' wait queues (so a client's connect never has to wake it: a
/// cross-CPU wake-up, which on a virtual machine is an exit to the
/// hypervisor) without spinning on a CPU that may share a core with the
/// client's. A nap's worth of connections is far below the backlog.
fn spin(listeners: &[TcpListener]) {
    let mut idle_since = Instant::now();
    while idle_since.elapsed() < ACTIVE {
        for l in listeners {
            // Dropping the stream closes it; the client has usually sent
            // its RST already.
            while let Ok((stream, _)) = l.accept() {
                drop(stream);
                idle_since = Instant::now();
            }
        }
        thread::sleep(NAP);
    }
}
