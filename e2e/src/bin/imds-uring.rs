//! `imds-uring`: a TCP connect submitted through io_uring, to show whose
//! credentials the kernel acts with.
//!
//! ```text
//! imds-uring --netns PATH --cgroup DIR --uid N --gid N MODE ADDR PORT
//! ```
//!
//! It joins the cgroup and the namespace as root, sets up a ring **as
//! root**, drops to `--uid`/`--gid` (every id, no capabilities, no
//! supplementary groups), then submits `IORING_OP_CONNECT`:
//! - `plain`: an ordinary ring; the connect runs with the submitter's
//!   (the dropped ids') credentials;
//! - `personality`: the submission names a personality registered while
//!   still root (`IORING_REGISTER_PERSONALITY`): the kernel acts with those
//!   credentials, whoever submits;
//! - `sqpoll`: the ring was created with `IORING_SETUP_SQPOLL` while root:
//!   its polling thread acts with the creator's credentials.
//!
//! It prints one JSON line `{"ok": bool, "errno": N|null, "uid": N}` and
//! exits 0 whatever the connect did (2: bad command line, 3: setup failed).

use std::{
    env, fs,
    net::SocketAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use io_uring::{IoUring, opcode, types};
use nix::{
    sched::{CloneFlags, setns},
    unistd::{Gid, Uid, setgroups, setresgid, setresuid},
};

const USAGE: &str = "usage: imds-uring --netns PATH --cgroup DIR --uid N --gid N \
                     plain|personality|sqpoll ADDR PORT";

struct Options {
    netns: PathBuf,
    cgroup: PathBuf,
    uid: u32,
    gid: u32,
    mode: String,
    dst: SocketAddr,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let (mut netns, mut cgroup, mut uid, mut gid) = (None, None, None, None);
    let mut rest = args;
    while let [flag, value, tail @ ..] = rest {
        if !flag.starts_with("--") {
            break;
        }
        let id = || value.parse::<u32>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--netns" => netns = Some(PathBuf::from(value)),
            "--cgroup" => cgroup = Some(PathBuf::from(value)),
            "--uid" => uid = Some(id()?),
            "--gid" => gid = Some(id()?),
            other => return Err(format!("unknown option {other}")),
        }
        rest = tail;
    }
    let [mode, ip, port] = rest else {
        return Err(format!("expected MODE ADDR PORT, got {rest:?}"));
    };
    if !matches!(mode.as_str(), "plain" | "personality" | "sqpoll") {
        return Err(format!("unknown mode {mode:?}"));
    }
    let ip = ip.parse().map_err(|e| format!("address {ip:?}: {e}"))?;
    let port = port.parse().map_err(|e| format!("port {port:?}: {e}"))?;
    Ok(Options {
        // A probe must never act from the host namespace.
        netns: netns.ok_or("--netns is required")?,
        cgroup: cgroup.ok_or("--cgroup is required")?,
        uid: uid.ok_or("--uid is required")?,
        gid: gid.ok_or("--gid is required")?,
        mode: mode.clone(),
        dst: SocketAddr::new(ip, port),
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("imds-uring: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("imds-uring: {e}");
            ExitCode::from(3)
        }
    }
}

fn run(opts: &Options) -> Result<String, String> {
    imds_guard_e2e::cgroup::join(&opts.cgroup)?;
    let before = fs::metadata("/proc/thread-self/ns/net").map_err(|e| e.to_string())?;
    let ns = fs::File::open(&opts.netns).map_err(|e| format!("{}: {e}", opts.netns.display()))?;
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
    let after = fs::metadata("/proc/thread-self/ns/net").map_err(|e| e.to_string())?;
    use std::os::unix::fs::MetadataExt as _;
    if (before.dev(), before.ino()) == (after.dev(), after.ino()) {
        return Err("refusing to run outside a test namespace".to_owned());
    }
    // The ring, and what it remembers of root, before the ids drop.
    let mut ring = if opts.mode == "sqpoll" {
        IoUring::builder().setup_sqpoll(2_000).build(8)
    } else {
        IoUring::new(8)
    }
    .map_err(|e| format!("io_uring_setup: {e}"))?;
    let personality = if opts.mode == "personality" {
        Some(
            ring.submitter()
                .register_personality()
                .map_err(|e| format!("registering a personality: {e}"))?,
        )
    } else {
        None
    };
    let domain = if opts.dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2); the descriptor is owned below.
    let raw = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    let (gid, uid) = (Gid::from_raw(opts.gid), Uid::from_raw(opts.uid));
    setresgid(gid, gid, gid).map_err(|e| format!("setresgid: {e}"))?;
    setresuid(uid, uid, uid).map_err(|e| format!("setresuid: {e}"))?;

    let addr = nix::sys::socket::SockaddrStorage::from(opts.dst);
    let mut entry = opcode::Connect::new(
        types::Fd(socket.as_raw_fd()),
        nix::sys::socket::SockaddrLike::as_ptr(&addr).cast(),
        nix::sys::socket::SockaddrLike::len(&addr),
    )
    .build();
    if let Some(id) = personality {
        entry = entry.personality(id);
    }
    // SAFETY: `addr` and `socket` outlive the submission: it completes
    // before this function returns.
    unsafe { ring.submission().push(&entry) }.map_err(|e| format!("queueing: {e}"))?;
    ring.submit_and_wait(1)
        .map_err(|e| format!("io_uring_enter: {e}"))?;
    let result = ring
        .completion()
        .next()
        .map(|c| c.result())
        .ok_or("no completion")?;
    // Let the SQPOLL thread go idle before the process exits.
    std::thread::sleep(Duration::from_millis(10));
    let (ok, errno) = if result >= 0 {
        (true, "null".to_owned())
    } else {
        (false, (-result).to_string())
    };
    Ok(format!(
        "{{\"ok\":{ok},\"errno\":{errno},\"uid\":{}}}",
        Uid::current().as_raw()
    ))
}
