//! An MPTCP server for the `mptcp-add-addr` attack: it listens on every
//! address of its namespace (the "imds" namespace of a
//! [`Topology`](crate::Topology)), so a client connects to it on an
//! unprotected address, and the namespace's path manager announces the
//! metadata addresses (`ip mptcp endpoint ... signal`) to that client. The
//! joins that follow arrive on the same listener.

use std::{
    io::{self, Read},
    net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
};

use nix::{
    poll::{PollFd, PollFlags, poll},
    sys::socket::{SockaddrLike, SockaddrStorage, setsockopt, sockopt},
};

use crate::{Netns, util::cleanup_failed};

const IPPROTO_MPTCP: libc::c_int = 262;

/// The running server; stops on drop.
#[derive(Debug)]
pub struct MptcpServer {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl MptcpServer {
    /// Listens on `[::]:port` (dual stack) in `netns`.
    pub fn start(netns: &Netns, port: u16) -> Self {
        let listener = netns
            .in_netns(|| listen(port))
            .unwrap_or_else(|e| panic!("MPTCP listener on port {port} in {}: {e}", netns.name()));
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let thread = thread::Builder::new()
            .name(format!("mptcp-server-{}", netns.name()))
            .spawn({
                let (stop, accepted) = (Arc::clone(&stop), Arc::clone(&accepted));
                move || serve(&listener, &stop, &accepted)
            })
            .unwrap_or_else(|e| panic!("spawning the MPTCP server thread: {e}"));
        MptcpServer {
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// MPTCP connections accepted so far (joins are not connections).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Acquire)
    }
}

impl Drop for MptcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                cleanup_failed("the MPTCP server thread panicked");
            }
        }
    }
}

fn listen(port: u16) -> io::Result<TcpListener> {
    // SAFETY: socket(2) takes no pointers; a non-negative result is a new
    // descriptor that nothing else owns.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            IPPROTO_MPTCP,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned here only.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    let addr = SockaddrStorage::from(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port));
    // SAFETY: `addr` outlives the call and the length passed is its own.
    if unsafe { libc::bind(fd.as_raw_fd(), addr.as_ptr(), addr.len()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) takes no pointers.
    if unsafe { libc::listen(fd.as_raw_fd(), 16) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpListener::from(fd))
}

/// Accepts connections and reads (and discards) what they send, holding
/// them open so their subflows live, until told to stop.
fn serve(listener: &TcpListener, stop: &AtomicBool, accepted: &AtomicUsize) {
    let mut conns: Vec<TcpStream> = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Acquire) {
        let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        fds.extend(
            conns
                .iter()
                .map(|c| PollFd::new(c.as_fd(), PollFlags::POLLIN)),
        );
        // The timeout bounds how long a stop waits; EINTR is another pass.
        let _ = poll(&mut fds, 100u16);
        drop(fds);
        while let Ok((conn, _)) = listener.accept() {
            if conn.set_nonblocking(true).is_ok() {
                accepted.fetch_add(1, Ordering::AcqRel);
                conns.push(conn);
            }
        }
        conns.retain_mut(|c| {
            loop {
                match c.read(&mut buf) {
                    Ok(0) => break false,
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                    Err(_) => break false,
                }
            }
        });
    }
}
