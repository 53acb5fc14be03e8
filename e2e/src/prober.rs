//! Traffic from inside a container's network namespace that the host
//! forwards, for the forward-path tests: a [`Prober`] that polls the
//! metadata service throughout a test and counts every answer, a UDP
//! [`flood`], and a lone IPv4 fragment that is not the first
//! ([`send_later_fragment`]).
//!
//! They run on threads of the test process that joined the container's
//! namespace (never the machine's own), outside the guarded cgroup: what
//! they send has no socket the cgroup programs judge, only the forward
//! path sees it.

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use nix::sched::{CloneFlags, setns};

use crate::netns::try_in_netns_at;

/// How long one connection attempt waits for an answer.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(150);

/// Polls `targets` with TCP connections from a namespace, counting those
/// that were answered, until dropped.
#[derive(Debug)]
pub struct Prober {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    attempts: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Prober {
    /// Starts polling from the namespace at `netns`.
    pub fn start(netns: &Path, targets: Vec<SocketAddr>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let attempts = Arc::new(AtomicU64::new(0));
        let file = File::open(netns).unwrap_or_else(|e| panic!("opening {}: {e}", netns.display()));
        let (s, a, n) = (stop.clone(), answered.clone(), attempts.clone());
        let thread = thread::Builder::new()
            .name("forward-prober".to_owned())
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("joining the prober's namespace: {e}"));
                while !s.load(Ordering::Relaxed) {
                    for target in &targets {
                        n.fetch_add(1, Ordering::Relaxed);
                        if TcpStream::connect_timeout(target, CONNECT_TIMEOUT).is_ok() {
                            a.fetch_add(1, Ordering::Relaxed);
                        } else {
                            thread::sleep(Duration::from_millis(5));
                        }
                    }
                }
            })
            .unwrap_or_else(|e| panic!("spawning the prober: {e}"));
        Self {
            stop,
            answered,
            attempts,
            thread: Some(thread),
        }
    }

    /// Connections answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Connections tried so far.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout` for more than `than` answers; whether there
    /// were.
    pub fn answered_beyond(&self, than: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.answered() > than {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.answered() > than
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends UDP datagrams to `dst` from the namespace at `netns` as fast as
/// one thread can for `duration`; how many.
pub fn flood(netns: &Path, dst: SocketAddr, duration: Duration) -> u64 {
    let netns: PathBuf = netns.to_owned();
    try_in_netns_at(&netns, move || {
        let bind: SocketAddr = if dst.is_ipv4() {
            "0.0.0.0:0".parse().unwrap_or_else(|e| panic!("{e}"))
        } else {
            "[::]:0".parse().unwrap_or_else(|e| panic!("{e}"))
        };
        let socket = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("a UDP socket: {e}"));
        let end = Instant::now() + duration;
        let mut sent = 0;
        while Instant::now() < end {
            if socket.send_to(&[0u8; 64], dst).is_ok() {
                sent += 1;
            }
        }
        sent
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Sends one IPv4 fragment that is not the first (offset 1480, no more
/// fragments) of a UDP datagram from `src` to `dst`, with IP id `id`, from
/// the namespace at `netns`.
pub fn send_later_fragment(netns: &Path, src: Ipv4Addr, dst: Ipv4Addr, id: u16) {
    try_in_netns_at(netns, move || {
        let mut pkt = [0u8; 36];
        pkt[0] = 0x45;
        pkt[2..4].copy_from_slice(&36u16.to_be_bytes());
        pkt[4..6].copy_from_slice(&id.to_be_bytes());
        pkt[6..8].copy_from_slice(&(1480u16 / 8).to_be_bytes());
        pkt[8] = 64;
        pkt[9] = 17;
        pkt[12..16].copy_from_slice(&src.octets());
        pkt[16..20].copy_from_slice(&dst.octets());
        // SAFETY: plain socket calls on a descriptor this closure owns,
        // with a buffer and an address of its own.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(dst.octets()),
                },
                sin_zero: [0; 8],
            };
            let n = libc::sendto(
                fd,
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            );
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            assert_eq!(n, 36, "sendto: {err}");
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
}
