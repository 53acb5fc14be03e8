//! The loops a worker runs (see `worker` for the process around them):
//!
//! - [`connects`]: socket() + connect() + close() with a RST, over and
//!   over, the loop most sections time;
//! - [`datagrams`]: one connected UDP socket sending small datagrams, the
//!   path where a per-packet program costs the most relative to the rest;
//!   connected, so that `sendmsg4` does not run (the kernel skips the
//!   `sock_addr` hook for a send without an address on a connected
//!   socket, `udp_sendmsg`) and only the egress program is added per
//!   packet;
//! - [`stream`]: one TCP connection written to as fast as it goes (bulk
//!   throughput, where a packet carries up to 64 KiB on loopback);
//! - [`requests`]: one kept-alive connection to the fake IMDS, a `GET`
//!   and its whole response at a time (the cost of request-level
//!   judgement, issue 23, per request);
//! - [`paced`]: denied connects at a steady pace, each as its own real uid,
//!   so that every one is a log record of its own (the agent rate-limits
//!   records per uid and destination), with the time each was made.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    os::fd::AsRawFd,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    sys::{
        signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction},
        socket::{
            AddressFamily, SockFlag, SockType, SockaddrStorage, connect, send, setsockopt, socket,
            sockopt,
        },
    },
    unistd::{Gid, Uid, setresgid, setresuid, write},
};

use super::job::{Job, REQUEST_PATH, Tally, mono_ns};

fn family(job: &Job) -> AddressFamily {
    if job.dst.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// [`Mode::Connect`](super::job::Mode::Connect): untimed connects for the
/// warmup, then timed ones.
pub fn connects(job: &Job) -> Tally {
    let family = family(job);
    let addr = SockaddrStorage::from(job.dst);
    let mut tally = Tally::default();
    let warm_until = Instant::now() + Duration::from_millis(job.warmup_ms);
    while job.warmup_ms > 0 && Instant::now() < warm_until && tally.warmup < job.max_connects {
        let _ = connect_once(family, &addr);
        tally.warmup += 1;
    }
    let start = Instant::now();
    let until = start + Duration::from_millis(job.run_ms);
    let mut last = start;
    while tally.connects < job.max_connects {
        match connect_once(family, &addr) {
            Ok(()) => tally.ok += 1,
            Err(Errno::EPERM) => tally.eperm += 1,
            Err(e) => {
                tally.other += 1;
                tally.last_errno = Some(e as i32);
            }
        }
        tally.connects += 1;
        // Read every time, whatever the configuration, so the clock's cost
        // (tens of ns against microseconds per connect) is the same for all.
        let now = Instant::now();
        tally.slowest_ns = tally.slowest_ns.max((now - last).as_nanos() as u64);
        last = now;
        if now >= until {
            break;
        }
    }
    tally.elapsed_ns = start.elapsed().as_nanos() as u64;
    tally
}

/// socket(), connect(), close() with a RST.
fn connect_once(family: AddressFamily, addr: &SockaddrStorage) -> Result<(), Errno> {
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    let rst = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(&fd, sockopt::Linger, &rst)?;
    connect(fd.as_raw_fd(), addr)
}

/// `size`-byte datagrams on one connected socket: untimed for the warmup,
/// then timed.
pub fn datagrams(job: &Job, size: usize) -> Tally {
    let mut tally = Tally::default();
    let fd = match socket(
        family(job),
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .and_then(|fd| connect(fd.as_raw_fd(), &SockaddrStorage::from(job.dst)).map(|()| fd))
    {
        Ok(fd) => fd,
        Err(e) => {
            tally.other = 1;
            tally.last_errno = Some(e as i32);
            return tally;
        }
    };
    let buf = vec![0x5a_u8; size];
    let send_once = || send(fd.as_raw_fd(), &buf, nix::sys::socket::MsgFlags::empty());
    timed_loop(job, &mut tally, || send_once().map(|n| n as u64));
    tally
}

/// One TCP connection to the destination, written `chunk` bytes at a
/// time; closed (with a FIN, so the reader sees the end) afterwards.
pub fn stream(job: &Job, chunk: usize) -> Tally {
    let mut tally = Tally::default();
    let fd = match socket(family(job), SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .and_then(|fd| connect(fd.as_raw_fd(), &SockaddrStorage::from(job.dst)).map(|()| fd))
    {
        Ok(fd) => fd,
        Err(e) => {
            tally.other = 1;
            tally.last_errno = Some(e as i32);
            return tally;
        }
    };
    let buf = vec![0x5a_u8; chunk];
    timed_loop(job, &mut tally, || write(&fd, &buf).map(|n| n as u64));
    tally
}

/// [`Mode::Requests`](super::job::Mode::Requests): one TCP connection to
/// the destination, kept alive, the `GET` of [`REQUEST_PATH`] written in
/// one write and its response read to its last byte, over and over. A
/// request the guard refuses fails its write (`EACCES`), and a response
/// that is not a `200` is an error (`EPROTO`): either ends the loop.
pub fn requests(job: &Job) -> Tally {
    let mut tally = Tally::default();
    let mut conn = match TcpStream::connect(job.dst).and_then(|c| {
        c.set_nodelay(true)?;
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            tally.other = 1;
            tally.last_errno = e.raw_os_error();
            return tally;
        }
    };
    let host = match job.dst {
        std::net::SocketAddr::V4(a) => a.ip().to_string(),
        std::net::SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    let head = format!(
        "GET {REQUEST_PATH} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: imds-guard-bench\r\n\
         Connection: keep-alive\r\n\r\n"
    );
    let mut buf = vec![0_u8; 4096];
    timed_loop(job, &mut tally, || {
        request_once(&mut conn, head.as_bytes(), &mut buf)
    });
    tally
}

/// One request written and its response read whole (head, then as many
/// body bytes as its `Content-Length` says); the bytes written.
fn request_once(conn: &mut TcpStream, head: &[u8], buf: &mut [u8]) -> Result<u64, Errno> {
    let errno = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
    conn.write_all(head).map_err(errno)?;
    let mut have = 0;
    loop {
        let n = conn.read(&mut buf[have..]).map_err(errno)?;
        if n == 0 {
            return Err(Errno::ECONNRESET);
        }
        have += n;
        if let Some(whole) = response_len(&buf[..have])? {
            if have >= whole {
                return Ok(head.len() as u64);
            }
        }
        if have == buf.len() {
            return Err(Errno::EMSGSIZE);
        }
    }
}

/// The length of the response at the start of `bytes` (head and body),
/// once its head is complete; an error if it is not a `200` with a
/// `Content-Length`.
fn response_len(bytes: &[u8]) -> Result<Option<usize>, Errno> {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&bytes[..end]).map_err(|_| Errno::EPROTO)?;
    if !head.starts_with("HTTP/1.1 200 ") {
        return Err(Errno::EPROTO);
    }
    let body = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .ok_or(Errno::EPROTO)?;
    Ok(Some(end + 4 + body))
}

/// Runs `op` for the warmup, then for the timed loop, like the connect
/// loop; an operation that fails ends it (a socket that failed once will
/// fail again).
fn timed_loop(job: &Job, tally: &mut Tally, mut op: impl FnMut() -> Result<u64, Errno>) {
    let warm_until = Instant::now() + Duration::from_millis(job.warmup_ms);
    while job.warmup_ms > 0 && Instant::now() < warm_until && tally.warmup < job.max_connects {
        if op().is_err() {
            break;
        }
        tally.warmup += 1;
    }
    let start = Instant::now();
    let until = start + Duration::from_millis(job.run_ms);
    let mut last = start;
    while tally.connects < job.max_connects {
        let result = op();
        tally.connects += 1;
        match result {
            Ok(n) => {
                tally.ok += 1;
                tally.bytes += n;
            }
            Err(e) => {
                if e == Errno::EPERM {
                    tally.eperm += 1;
                } else {
                    tally.other += 1;
                    tally.last_errno = Some(e as i32);
                }
                break;
            }
        }
        // Every time, as in the connect loop: the clock's cost is the same
        // for every configuration.
        let now = Instant::now();
        tally.slowest_ns = tally.slowest_ns.max((now - last).as_nanos() as u64);
        last = now;
        if now >= until {
            break;
        }
    }
    tally.elapsed_ns = start.elapsed().as_nanos() as u64;
}

/// Set by SIGUSR1: a paced worker stops.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// The SIGUSR1 handler of a paced worker.
pub fn install_stop() -> Result<(), String> {
    let action = SigAction::new(
        SigHandler::Handler(on_stop),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe; nothing else in the worker handles SIGUSR1.
    unsafe { sigaction(Signal::SIGUSR1, &action) }
        .map(drop)
        .map_err(|e| format!("sigaction SIGUSR1: {e}"))
}

/// One connect every `every_us`, connect `i` as real uid and gid
/// `first_uid + i`, until SIGUSR1, `max_connects` or `run_ms`.
///
/// The guard judges a caller by its real uid and gid, so switching the
/// real ids (and keeping the effective and saved ones root, which keeps
/// the privilege to switch again) makes each connect a new caller.
pub fn paced(job: &Job, first_uid: u32, every_us: u64) -> Tally {
    let mut tally = Tally::default();
    let family = family(job);
    let addr = SockaddrStorage::from(job.dst);
    let start = Instant::now();
    let until = start + Duration::from_millis(job.run_ms);
    let root = (Uid::from_raw(0), Gid::from_raw(0));
    for i in 0..job.max_connects {
        if STOP.load(Ordering::SeqCst) {
            break;
        }
        let at = start + Duration::from_micros(every_us.saturating_mul(i));
        if at >= until {
            break;
        }
        let now = Instant::now();
        if at > now {
            // At most one pace: a stop is seen within one (the sleep
            // resumes after the signal).
            std::thread::sleep(at - now);
            if STOP.load(Ordering::SeqCst) {
                break;
            }
        }
        let Some(uid) = u32::try_from(i).ok().and_then(|i| first_uid.checked_add(i)) else {
            break;
        };
        if let Err(e) = setresgid(Gid::from_raw(uid), root.1, root.1)
            .and_then(|()| setresuid(Uid::from_raw(uid), root.0, root.0))
        {
            tally.other += 1;
            tally.last_errno = Some(e as i32);
            break;
        }
        let t = mono_ns();
        let began = Instant::now();
        match connect_once(family, &addr) {
            Ok(()) => tally.ok += 1,
            Err(Errno::EPERM) => tally.eperm += 1,
            Err(e) => {
                tally.other += 1;
                tally.last_errno = Some(e as i32);
            }
        }
        tally.slowest_ns = tally.slowest_ns.max(began.elapsed().as_nanos() as u64);
        tally.connects += 1;
        tally.events.push((uid, t));
    }
    tally.elapsed_ns = start.elapsed().as_nanos() as u64;
    tally
}
