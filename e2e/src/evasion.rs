//! The evasions of request-level judgement (issue 23,
//! docs/design/request-level.md §7 rows 4-6, 10, 12, 14-18): each is one
//! [`Evasion`], performed by `imds-probe` on one connection, so that a test
//! can show what reached the fake IMDS ([`crate::FakeImds::received`]) and
//! what the sender was told.
//!
//! - [`Way`]: another way of handing bytes to TCP than `write` (`sendfile`,
//!   `splice`, `vmsplice`, io_uring, `MSG_ZEROCOPY`, `TCP_REPAIR` after
//!   the connect, a writer waiting in a connect). The flow is the
//!   scripts' ([`crate::Script::Credentials`]): the token `PUT`, then the
//!   instance id `GET` (allowed) and the credentials `GET` (not), both
//!   sent that way.
//! - [`Evasion::Head`]: one request head of [`head_case`]'s table, which
//!   a proxy would have to normalise or could read two ways, sent in one
//!   write after an allowed `GET` (its exact bytes: [`allowed_prefix`]).
//! - [`Evasion::FailedPush`]: an allowed head whose push fails after the
//!   verdict, then a forbidden head of the same length
//!   ([`crate::failed_push`]).

use std::{
    io::Write as _,
    net::{SocketAddr, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use io_uring::{IoUring, opcode, types};

use crate::{
    failed_push::{self, FailedPush},
    fake_imds::ROLE,
    imdsv2::{TIMEOUT, TOKEN_PATH, TTL_HEADER, connect},
    outcome::{Failure, Outcome, Step, os_failure},
    requests::{
        INSTANCE_ID_PATH, TOKEN_HEADER, credentials_path, exchange, head, set_int, transcribed,
    },
};

/// A way of handing a request head to TCP other than `write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// `sendfile` from a file (a memfd) holding the head.
    Sendfile,
    /// `splice` from a pipe the head was written into.
    Splice,
    /// `vmsplice` of a user page holding the head into a pipe, `splice`
    /// to the socket, then the page overwritten: the instance id's path
    /// becomes `iam/secrets` ([`VMSPLICE_MARK`]), which must never be on
    /// the wire.
    Vmsplice,
    /// io_uring `IORING_OP_SEND`.
    UringSend,
    /// io_uring `IORING_OP_SENDMSG`.
    UringSendmsg,
    /// io_uring `IORING_OP_WRITEV`.
    UringWritev,
    /// io_uring `IORING_OP_SPLICE` from a pipe.
    UringSplice,
    /// io_uring `IORING_OP_SEND_ZC` (zero copy).
    UringSendZc,
    /// io_uring `IORING_OP_SENDMSG_ZC`.
    UringSendmsgZc,
    /// `send(MSG_ZEROCOPY)` on a socket with `SO_ZEROCOPY`.
    ZeroCopy,
    /// `TCP_REPAIR` turned on after the connect (needs `CAP_NET_ADMIN`),
    /// the send queue chosen, the head written (repair mode queues it as
    /// sent without sending it), repair turned off: the retransmission
    /// timer then sends it.
    RepairAfterConnect,
    /// A non-blocking connect made blocking, then the credentials `GET`
    /// written at once: the writer waits in the connect
    /// (`sk_stream_wait_connect`) and writes when the handshake completes.
    /// Only this head is sent (no token, no allowed request first).
    WritePending,
}

/// The bytes [`Way::Vmsplice`] writes over the instance id's path in its
/// page after the splice returned.
pub const VMSPLICE_MARK: &[u8] = b"iam/secrets";

impl Way {
    pub const ALL: [Self; 12] = [
        Self::Sendfile,
        Self::Splice,
        Self::Vmsplice,
        Self::UringSend,
        Self::UringSendmsg,
        Self::UringWritev,
        Self::UringSplice,
        Self::UringSendZc,
        Self::UringSendmsgZc,
        Self::ZeroCopy,
        Self::RepairAfterConnect,
        Self::WritePending,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Sendfile => "sendfile",
            Self::Splice => "splice",
            Self::Vmsplice => "vmsplice",
            Self::UringSend => "uring-send",
            Self::UringSendmsg => "uring-sendmsg",
            Self::UringWritev => "uring-writev",
            Self::UringSplice => "uring-splice",
            Self::UringSendZc => "uring-send-zc",
            Self::UringSendmsgZc => "uring-sendmsg-zc",
            Self::ZeroCopy => "msg-zerocopy",
            Self::RepairAfterConnect => "repair-after-connect",
            Self::WritePending => "write-pending",
        }
    }

    /// The io_uring zero-copy sends, which a judged socket may refuse
    /// (`EOPNOTSUPP`) rather than judge.
    pub fn zero_copy_ring(self) -> bool {
        matches!(self, Self::UringSendZc | Self::UringSendmsgZc)
    }
}

/// One evasion, as `imds-probe evade ADDR PORT NAME` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evasion {
    /// The scripts' flow with both `GET`s sent this way.
    Way(Way),
    /// Case `n` of [`head_case`], after [`allowed_prefix`].
    Head(u8),
    /// The token, an allowed head whose push fails this way, then the
    /// credentials head in the judged range it left.
    FailedPush(FailedPush),
}

impl Evasion {
    pub fn name(self) -> String {
        match self {
            Self::Way(way) => way.name().to_owned(),
            Self::Head(n) => format!("head-{n}"),
            Self::FailedPush(push) => push.name().to_owned(),
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        if let Some(n) = name.strip_prefix("head-") {
            let n: u8 = n.parse().ok()?;
            return (usize::from(n) < HEAD_CASES).then_some(Self::Head(n));
        }
        if let Some(push) = FailedPush::ALL.into_iter().find(|p| p.name() == name) {
            return Some(Self::FailedPush(push));
        }
        Way::ALL
            .into_iter()
            .find(|w| w.name() == name)
            .map(Self::Way)
    }
}

/// The allowed request a [`Evasion::Head`] case follows on its
/// connection (the region, under the tests' allowed placement subtree),
/// exactly as sent.
pub fn allowed_prefix(addr: SocketAddr) -> Vec<u8> {
    head(addr, "GET", REGION, ("Accept", "*/*"))
}

const REGION: &str = "/latest/meta-data/placement/region";
/// How many cases [`head_case`] has.
pub const HEAD_CASES: usize = 44;

/// Case `n` of the request heads a caller judged by the tests' rules
/// (the token, the instance id, the placement subtree) must never get
/// through, by row of the design's §7 (14: what follows the head; 15:
/// path encodings; 16: request forms, methods and versions; 17: sizes;
/// 18: line and header syntax): its name and its bytes. Every path is in
/// or next to the allowed placement subtree, so that only the parser
/// stands between it and a rule that would allow it.
pub fn head_case(addr: SocketAddr, n: usize) -> Option<(&'static str, Vec<u8>)> {
    let host = match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    let get = |path: &str| -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n")
            .into_bytes()
    };
    let with = |lines: &str| -> Vec<u8> {
        format!("GET {REGION} HTTP/1.1\r\nHost: {host}\r\n{lines}\r\n").into_bytes()
    };
    let line = |request_line: &str| -> Vec<u8> {
        format!("{request_line}\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n").into_bytes()
    };
    let creds = format!("iam/security-credentials/{ROLE}");
    let p = "/latest/meta-data/placement";
    let case: (&'static str, Vec<u8>) = match n {
        // Row 14: what follows the head.
        0 => (
            "body",
            [with("Content-Length: 5\r\n"), b"hello".to_vec()].concat(),
        ),
        1 => (
            "transfer-encoding",
            [
                with("Transfer-Encoding: chunked\r\n"),
                b"0\r\n\r\n".to_vec(),
            ]
            .concat(),
        ),
        2 => (
            "upgrade-h2c",
            with(
                "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n",
            ),
        ),
        3 => (
            "expect",
            format!(
                "PUT {TOKEN_PATH} HTTP/1.1\r\nHost: {host}\r\n{TTL_HEADER}: 60\r\n\
                 Expect: 100-continue\r\n\r\n"
            )
            .into_bytes(),
        ),
        // Row 15: encodings and dot segments a proxy would normalise.
        4 => (
            "%2F",
            get(&format!("{p}/..%2F..%2F{}", creds.replace('/', "%2F"))),
        ),
        5 => (
            "%2f",
            get(&format!("{p}/..%2f..%2f{}", creds.replace('/', "%2f"))),
        ),
        6 => ("%252F", get(&format!("{p}/..%252F..%252F{creds}"))),
        7 => ("%3F", get(&format!("{p}/region%3Fx"))),
        8 => ("%2E", get(&format!("{p}/%2E%2E/%2E%2E/{creds}"))),
        9 => ("%C0%AF", get(&format!("{p}/..%C0%AF..%C0%AF{creds}"))),
        10 => ("./", get(&format!("{p}/./region"))),
        11 => ("../", get(&format!("{p}/../{creds}"))),
        12 => ("trailing-dot", get(&format!("{p}/region."))),
        13 => ("//", get(&format!("{p}//region"))),
        14 => (";x=1", get(&format!("{p}/region;x=1"))),
        15 => ("?q", get(&format!("{p}/region?q"))),
        16 => ("#f", get(&format!("{p}/region#f"))),
        17 => ("case", get("/latest/meta-data/Placement/region")),
        18 => ("non-ascii", get(&format!("{p}/reg\u{131}on"))),
        // Row 16: request forms, methods, versions.
        19 => (
            "absolute-form",
            line(&format!("GET http://169.254.169.254{REGION} HTTP/1.1")),
        ),
        20 => (
            "absolute-form-hex-host",
            line(&format!("GET http://0xa9fea9fe{REGION} HTTP/1.1")),
        ),
        21 => (
            "absolute-form-userinfo",
            line(&format!(
                "GET http://user:pw@169.254.169.254{REGION} HTTP/1.1"
            )),
        ),
        22 => ("connect", line("CONNECT 169.254.169.254:80 HTTP/1.1")),
        23 => ("options-asterisk", line("OPTIONS * HTTP/1.1")),
        24 => ("trace", line(&format!("TRACE {REGION} HTTP/1.1"))),
        25 => ("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        26 => ("http-9.9", line(&format!("GET {REGION} HTTP/9.9"))),
        27 => ("no-version", format!("GET {REGION}\r\n\r\n").into_bytes()),
        28 => ("lowercase-method", line(&format!("get {REGION} HTTP/1.1"))),
        29 => ("post", line(&format!("POST {REGION} HTTP/1.1"))),
        // Row 17: longer than the parser reads.
        30 => {
            // "GET " + path + " HTTP/1.1" = 257 bytes.
            let pad = 257 - 4 - 9 - p.len() - 1;
            ("request-line-257", get(&format!("{p}/{}", "a".repeat(pad))))
        }
        31 => {
            // Header lines of at most 1000 bytes, to 2049 bytes in all.
            let mut extra = 2049 - with("").len();
            let mut lines = String::new();
            let mut i = 0;
            while extra > 0 {
                let len = extra.min(1000);
                let name = format!("X-Pad{i}: ");
                let value = "a".repeat(len - name.len() - 2);
                lines.push_str(&format!("{name}{value}\r\n"));
                extra -= len;
                i += 1;
            }
            ("head-2049", with(&lines))
        }
        32 => ("uri-65k", get(&format!("{p}/{}", "a".repeat(65 * 1024)))),
        // Row 18: line and header syntax.
        33 => (
            "bare-lf",
            format!("GET {REGION} HTTP/1.1\nHost: {host}\n\n").into_bytes(),
        ),
        34 => (
            "bare-cr",
            format!("GET {REGION} HTTP/1.1\rHost: {host}\r\n\r\n").into_bytes(),
        ),
        35 => ("folded-header", with("X-A: a\r\n b\r\n")),
        36 => ("space-before-colon", with("X-A : a\r\n")),
        37 => ("nul-in-value", with("X-A: a\0b\r\n")),
        38 => (
            "repeated-token-header",
            with(&format!("{TOKEN_HEADER}: AAAA\r\n{TOKEN_HEADER}: AAAA\r\n")),
        ),
        39 => ("empty-header-name", with(": a\r\n")),
        40 => (
            "content-length-twice",
            with("Content-Length: 0\r\nContent-Length: 0\r\n"),
        ),
        41 => ("tab-separator", line(&format!("GET\t{REGION} HTTP/1.1"))),
        42 => ("two-spaces", line(&format!("GET  {REGION} HTTP/1.1"))),
        43 => (
            "pipelined-after-allowed",
            [get(REGION), get(&format!("/latest/meta-data/{creds}"))].concat(),
        ),
        _ => return None,
    };
    Some(case)
}

/// Runs `evasion` against `addr`. The body is every response read, in
/// order (status line, then body), also when a later step fails.
pub(crate) fn run(addr: SocketAddr, evasion: Evasion) -> Step<Outcome> {
    let mut transcript = String::new();
    let done = match evasion {
        Evasion::Way(way) => via(addr, way, &mut transcript),
        Evasion::Head(n) => head_after_allowed(addr, usize::from(n), &mut transcript),
        Evasion::FailedPush(push) => failed_push::run(addr, push, &mut transcript),
    };
    transcribed(transcript, done)
}

fn failure(error: impl Into<String>) -> Failure {
    Failure {
        errno: None,
        error: error.into(),
        body: String::new(),
    }
}

fn last_os(what: impl std::fmt::Display) -> Failure {
    os_failure(what, std::io::Error::last_os_error())
}

fn head_after_allowed(addr: SocketAddr, n: usize, transcript: &mut String) -> Step<()> {
    let (_, case) = head_case(addr, n).ok_or_else(|| failure(format!("no head case {n}")))?;
    let mut stream = connect(addr)?;
    stream
        .write_all(&allowed_prefix(addr))
        .map_err(|e| os_failure("send the allowed request", e))?;
    exchange(&mut stream, transcript)?;
    stream
        .write_all(&case)
        .map_err(|e| os_failure("send the case", e))?;
    // Sent: the server answers, or closes at our end of input (a head it
    // cannot read), whichever comes first.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = exchange(&mut stream, transcript);
    Ok(())
}

fn via(addr: SocketAddr, way: Way, transcript: &mut String) -> Step<()> {
    if way == Way::WritePending {
        return write_pending(addr, transcript);
    }
    let mut stream = connect(addr)?;
    if way == Way::ZeroCopy {
        set_int(stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ZEROCOPY, 1)?;
    }
    stream
        .write_all(&head(addr, "PUT", TOKEN_PATH, (TTL_HEADER, "60")))
        .map_err(|e| os_failure("send the token request", e))?;
    let token = exchange(&mut stream, transcript)?;
    let with_token = |path: &str| head(addr, "GET", path, (TOKEN_HEADER, &token));
    let instance_id = with_token(INSTANCE_ID_PATH);
    let credentials = with_token(&credentials_path());
    if way == Way::RepairAfterConnect {
        stream
            .write_all(&instance_id)
            .map_err(|e| os_failure("send", e))?;
        exchange(&mut stream, transcript)?;
        repair_send(stream.as_raw_fd(), &credentials)?;
    } else {
        send_via(&stream, way, &instance_id)?;
        exchange(&mut stream, transcript)?;
        send_via(&stream, way, &credentials)?;
    }
    exchange(&mut stream, transcript)?;
    Ok(())
}

/// Hands `bytes` to the socket `way`, whole, or fails with the errno.
fn send_via(stream: &TcpStream, way: Way, bytes: &[u8]) -> Step<()> {
    let fd = stream.as_raw_fd();
    let sent = match way {
        Way::Sendfile => sendfile(fd, bytes)?,
        Way::Splice => {
            let (r, _w) = pipe_with(bytes)?;
            splice(&r, fd, bytes.len())?
        }
        Way::Vmsplice => vmsplice(fd, bytes)?,
        Way::ZeroCopy => {
            // SAFETY: `bytes` outlives the call.
            let n =
                unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_ZEROCOPY) };
            check(n, "send(MSG_ZEROCOPY)")?
        }
        Way::UringSend
        | Way::UringSendmsg
        | Way::UringWritev
        | Way::UringSplice
        | Way::UringSendZc
        | Way::UringSendmsgZc => uring(fd, way, bytes)?,
        Way::RepairAfterConnect | Way::WritePending => {
            return Err(failure(format!("{} is not a way to send", way.name())));
        }
    };
    if sent != bytes.len() {
        return Err(failure(format!(
            "{} sent {sent} of {} bytes",
            way.name(),
            bytes.len()
        )));
    }
    Ok(())
}

fn check(n: isize, what: &str) -> Step<usize> {
    if n < 0 {
        Err(last_os(what))
    } else {
        Ok(n as usize)
    }
}

/// A pipe: its read end, then its write end.
fn pipe() -> Step<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(last_os("pipe2"));
    }
    // SAFETY: just opened, owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `splice` of `len` bytes from the pipe `from` to the socket `to`.
fn splice(from: &OwnedFd, to: RawFd, len: usize) -> Step<usize> {
    let null = std::ptr::null_mut();
    // SAFETY: both descriptors are open; no offsets.
    let n = unsafe { libc::splice(from.as_raw_fd(), null, to, null, len, 0) };
    check(n, "splice")
}

/// A pipe holding `bytes` (at most a page: the pipe takes them at once).
fn pipe_with(bytes: &[u8]) -> Step<(OwnedFd, OwnedFd)> {
    let (r, w) = pipe()?;
    // SAFETY: `bytes` outlives the call.
    let n = unsafe { libc::write(w.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    if check(n, "write to the pipe")? != bytes.len() {
        return Err(failure("short write to the pipe"));
    }
    Ok((r, w))
}

fn sendfile(fd: RawFd, bytes: &[u8]) -> Step<usize> {
    // SAFETY: a NUL-terminated name.
    let file = unsafe { libc::memfd_create(c"imds-evasion".as_ptr(), libc::MFD_CLOEXEC) };
    if file < 0 {
        return Err(last_os("memfd_create"));
    }
    // SAFETY: just opened, owned here.
    let file = unsafe { OwnedFd::from_raw_fd(file) };
    let mut f = std::fs::File::from(file);
    f.write_all(bytes)
        .map_err(|e| os_failure("write the file", e))?;
    let mut offset: libc::off_t = 0;
    // SAFETY: both descriptors are open; `offset` outlives the call.
    let n = unsafe { libc::sendfile(fd, f.as_raw_fd(), &raw mut offset, bytes.len()) };
    check(n, "sendfile")
}

/// `vmsplice` of a page holding `bytes` into a pipe, `splice` to `fd`,
/// then the page overwritten where the instance id's path was.
fn vmsplice(fd: RawFd, bytes: &[u8]) -> Step<usize> {
    const PAGE: usize = 4096;
    if bytes.len() > PAGE {
        return Err(failure("a head longer than a page"));
    }
    // SAFETY: an anonymous private mapping of one page, unmapped below.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return Err(last_os("mmap"));
    }
    struct Unmap(*mut libc::c_void);
    impl Drop for Unmap {
        fn drop(&mut self) {
            // SAFETY: the mapping made above, of one page.
            unsafe { libc::munmap(self.0, PAGE) };
        }
    }
    let _unmap = Unmap(page);
    // SAFETY: the page is ours, writable, and a page long.
    let buf = unsafe { std::slice::from_raw_parts_mut(page.cast::<u8>(), PAGE) };
    buf[..bytes.len()].copy_from_slice(bytes);
    let (r, w) = pipe()?;
    let iov = libc::iovec {
        iov_base: page,
        iov_len: bytes.len(),
    };
    // SAFETY: `iov` names our page, which outlives the pipe's use of it
    // (the pipe is drained by the splice below, and closed before the
    // unmap).
    let n = unsafe { libc::vmsplice(w.as_raw_fd(), &raw const iov, 1, 0) };
    if check(n, "vmsplice")? != bytes.len() {
        return Err(failure("short vmsplice"));
    }
    let sent = splice(&r, fd, bytes.len());
    // What the page says now is not what was judged.
    if let Some(at) = buf[..bytes.len()]
        .windows(b"instance-id".len())
        .position(|w| w == b"instance-id")
    {
        buf[at..at + VMSPLICE_MARK.len()].copy_from_slice(VMSPLICE_MARK);
    }
    drop((r, w));
    sent
}

/// One io_uring submission of `way` sending `bytes` on `fd`, and its
/// completion (for the zero-copy sends, also their notification). An
/// opcode the running kernel does not know is a failure.
fn uring(fd: RawFd, way: Way, bytes: &[u8]) -> Step<usize> {
    let mut ring = IoUring::new(8).map_err(|e| os_failure("io_uring_setup", e))?;
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| os_failure("IORING_REGISTER_PROBE", e))?;
    let code = match way {
        Way::UringSend => opcode::Send::CODE,
        Way::UringSendmsg => opcode::SendMsg::CODE,
        Way::UringWritev => opcode::Writev::CODE,
        Way::UringSplice => opcode::Splice::CODE,
        Way::UringSendZc => opcode::SendZc::CODE,
        _ => opcode::SendMsgZc::CODE,
    };
    if !probe.is_supported(code) {
        return Err(failure(format!(
            "io_uring op {} ({code}) is not supported by this kernel",
            way.name()
        )));
    }
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: all zeros is a valid msghdr (no name, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    let mut pipe = None;
    let target = types::Fd(fd);
    let sqe = match way {
        Way::UringSend => opcode::Send::new(target, bytes.as_ptr(), bytes.len() as u32).build(),
        Way::UringSendmsg => opcode::SendMsg::new(target, &raw const msg).build(),
        Way::UringWritev => opcode::Writev::new(target, &raw const iov, 1)
            .offset(u64::MAX)
            .build(),
        Way::UringSplice => {
            let (r, w) = pipe_with(bytes)?;
            let sqe =
                opcode::Splice::new(types::Fd(r.as_raw_fd()), -1, target, -1, bytes.len() as u32)
                    .build();
            pipe = Some((r, w));
            sqe
        }
        Way::UringSendZc => opcode::SendZc::new(target, bytes.as_ptr(), bytes.len() as u32).build(),
        _ => opcode::SendMsgZc::new(target, &raw const msg).build(),
    };
    // SAFETY: every buffer the entry names (`bytes`, `iov`, `msg`, the
    // pipe) lives until the completions are reaped below.
    unsafe { ring.submission().push(&sqe.user_data(1)) }
        .map_err(|_| failure("io_uring submission queue full"))?;
    let mut result = None;
    let mut more = true;
    while more {
        ring.submit_and_wait(1)
            .map_err(|e| os_failure("io_uring_enter", e))?;
        for cqe in ring.completion() {
            if result.is_none() {
                result = Some(cqe.result());
                more = io_uring::cqueue::more(cqe.flags());
            } else if io_uring::cqueue::notif(cqe.flags()) {
                more = false;
            }
        }
    }
    drop(pipe);
    let _ = (&iov, &msg);
    match result {
        Some(n) if n >= 0 => Ok(n as usize),
        Some(n) => Err(os_failure(
            format!("io_uring {}", way.name()),
            std::io::Error::from_raw_os_error(-n),
        )),
        None => Err(failure("no io_uring completion")),
    }
}

/// `TCP_REPAIR` on (with the send queue chosen), `bytes` written, repair
/// off: the kernel queued them as sent, and retransmits them.
fn repair_send(fd: RawFd, bytes: &[u8]) -> Step<()> {
    const TCP_REPAIR: libc::c_int = 19;
    const TCP_REPAIR_QUEUE: libc::c_int = 20;
    const TCP_SEND_QUEUE: libc::c_int = 2;
    set_int(fd, libc::IPPROTO_TCP, TCP_REPAIR, 1)?;
    set_int(fd, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
    // SAFETY: `bytes` outlives the call.
    let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), 0) };
    let sent = check(n, "send in repair mode");
    set_int(fd, libc::IPPROTO_TCP, TCP_REPAIR, 0)?;
    if sent? != bytes.len() {
        return Err(failure("short send in repair mode"));
    }
    Ok(())
}

/// How long [`Way::WritePending`]'s write may wait for the handshake.
const PENDING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(8);

/// A non-blocking connect made blocking, and the credentials `GET`
/// written at once (the writer waits for the handshake in the kernel).
fn write_pending(addr: SocketAddr, transcript: &mut String) -> Step<()> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: a plain socket(2) call; the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(last_os("socket"));
    }
    // SAFETY: a descriptor we just opened and nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let dest = nix::sys::socket::SockaddrStorage::from(addr);
    use nix::sys::socket::SockaddrLike as _;
    // SAFETY: `dest` outlives the call; its length is its own.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), dest.as_ptr(), dest.len()) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(os_failure(format!("connect {addr}"), e));
        }
    }
    // Blocking from here: the write below waits for the handshake.
    // SAFETY: plain fcntl calls on our descriptor.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
    }
    let mut stream = TcpStream::from(fd);
    // The write waits for the handshake, which the test delays by a SYN
    // retransmission or more (1 s, then 3 s, on a slow guest).
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(PENDING_TIMEOUT)))
        .map_err(|e| os_failure("setting socket timeouts", e))?;
    let credentials = head(addr, "GET", &credentials_path(), ("Accept", "*/*"));
    stream
        .write_all(&credentials)
        .map_err(|e| os_failure("send while connecting", e))?;
    exchange(&mut stream, transcript)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    #[test]
    fn every_head_case_is_there_and_sized_as_named() {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)), 80);
        let mut names = std::collections::HashSet::new();
        for n in 0..HEAD_CASES {
            let (name, bytes) = head_case(addr, n).unwrap_or_else(|| panic!("case {n}"));
            assert!(names.insert(name), "{name} twice");
            assert!(!bytes.is_empty(), "{name}");
            match name {
                "head-2049" => assert_eq!(bytes.len(), 2049),
                "request-line-257" => {
                    let line = bytes.split(|&b| b == b'\r').next().unwrap_or_default();
                    assert_eq!(line.len(), 257);
                }
                "uri-65k" => assert!(bytes.len() > 65 * 1024),
                _ => {}
            }
        }
        assert!(head_case(addr, HEAD_CASES).is_none());
    }

    #[test]
    fn evasions_round_trip_by_name() {
        let all = Way::ALL
            .map(Evasion::Way)
            .into_iter()
            .chain((0..HEAD_CASES as u8).map(Evasion::Head))
            .chain(FailedPush::ALL.map(Evasion::FailedPush));
        for e in all {
            assert_eq!(Evasion::from_name(&e.name()), Some(e));
        }
        assert_eq!(Evasion::from_name(&format!("head-{HEAD_CASES}")), None);
        assert_eq!(Evasion::from_name("write"), None);
    }
}
