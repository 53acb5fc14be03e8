//! What the packet loops of `flow` send to, in the far namespace of a
//! [`Wire`](super::wire::Wire), across a device from the sender:
//!
//! - a UDP socket on [`DGRAM_V4`] that nothing reads: once its receive
//!   buffer is full (a few hundred small datagrams), each further datagram
//!   still travels the whole way up to the socket and is dropped there, in
//!   every configuration alike, and no reader competes for a CPU with the
//!   sender;
//! - a TCP listener on [`STREAM_V4`] whose connections one thread reads to
//!   the end, on the services' CPU (see `cpus`).
//!
//! Both are on the far address of the wire, which no policy protects.

use std::{
    io::Read,
    net::{SocketAddr, TcpListener, UdpSocket},
    os::fd::AsFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::Context;
use imds_guard_e2e::Netns;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::{cpus, wire::FAR_V4};

/// The datagrams' destination.
pub const DGRAM_V4: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(FAR_V4), 9000);
/// The stream's destination.
pub const STREAM_V4: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(FAR_V4), 9001);

/// How often the reader looks at its stop flag.
const TICK: Duration = Duration::from_millis(100);
/// One read of the stream.
const READ_BYTES: usize = 256 * 1024;

/// The receivers of one namespace; stopped on drop.
pub struct FlowSink {
    _dgram: UdpSocket,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FlowSink {
    /// Listens on [`DGRAM_V4`] and [`STREAM_V4`] inside `netns`, which has
    /// the address.
    pub fn start(netns: &Netns) -> anyhow::Result<Self> {
        let (dgram, listener) = netns.in_netns(|| -> anyhow::Result<_> {
            let dgram = UdpSocket::bind(DGRAM_V4).with_context(|| format!("binding {DGRAM_V4}"))?;
            let listener =
                TcpListener::bind(STREAM_V4).with_context(|| format!("binding {STREAM_V4}"))?;
            listener.set_nonblocking(true)?;
            Ok((dgram, listener))
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::Builder::new()
            .name(format!("flows-{}", netns.name()))
            .spawn({
                let stop = Arc::clone(&stop);
                move || read_streams(&listener, &stop)
            })?;
        Ok(FlowSink {
            _dgram: dgram,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for FlowSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Accepts one connection at a time and reads it to its end.
fn read_streams(listener: &TcpListener, stop: &AtomicBool) {
    if let Some(cpu) = cpus::services() {
        // Only a less steady measurement if it fails.
        let _ = cpus::pin(0, cpu);
    }
    let mut buf = vec![0u8; READ_BYTES];
    let timeout = PollTimeout::from(TICK.as_millis() as u16);
    while !stop.load(Ordering::Acquire) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        // A timeout, or EINTR, only means another look at the stop flag.
        if !poll(&mut fds, timeout).is_ok_and(|n| n > 0) {
            continue;
        }
        let Ok((mut conn, _)) = listener.accept() else {
            continue;
        };
        // Blocking reads, with a timeout so that a stop is not missed.
        if conn.set_nonblocking(false).is_err() || conn.set_read_timeout(Some(TICK)).is_err() {
            continue;
        }
        while !stop.load(Ordering::Acquire) {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => break,
            }
        }
    }
}
