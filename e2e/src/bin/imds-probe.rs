//! `imds-probe`: one network action, as one identity, from inside a test's
//! network namespace and cgroup.
//!
//! ```text
//! imds-probe --netns PATH --cgroup DIR [--userns PATH] --uid N --gid N [--groups G1,G2]
//!            [--caps net_raw,net_admin] ACTION ADDR PORT [EXTRA...]
//! ```
//!
//! It joins the cgroup and the namespace while still root, then drops to the
//! given ids (groups, then gid, then uid: each step needs the privilege the
//! next one removes), performs the action and prints one JSON line (see
//! `imds_guard_e2e::ProbeResult`). The exit status is 0 whatever the action
//! did; 2 means a bad command line, 3 a failure to set the process up.
//!
//! `http-keepalive` holds one connection instead: it connects at once, and
//! runs the IMDSv2 flow on that connection each time it reads a line on
//! stdin, printing one JSON line each, until stdin ends. `listen` is a
//! local service on the address instead (an IMDS emulator): it prints one
//! line once it listens, and answers every connection until stdin ends.
//!
//! With `--userns` it also joins that user namespace (after the network
//! namespace, while it still has the privilege to), and the ids are then
//! ids *inside* it: `--userns /proc/PID/ns/user --uid 0 --gid 0` is root of
//! a user-namespaced container, with every capability over the namespaces
//! that user namespace owns and none elsewhere. `--caps` keeps exactly
//! these capabilities after the ids change (for example a non-root process
//! with `CAP_NET_RAW`).

use std::{
    env, fs,
    io::{self, BufRead as _},
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::ExitCode,
};

use imds_guard_e2e::{Action, ProbeResult, client};
use nix::{
    sched::{CloneFlags, setns},
    unistd::{Gid, Uid, getresgid, getresuid, setgroups, setresgid, setresuid},
};

const USAGE: &str = "usage: imds-probe --netns PATH --cgroup DIR [--userns PATH] --uid N --gid N \
                     [--groups G1,G2] [--caps CAP,...] [--repeat N] ACTION ADDR PORT [EXTRA...]\n\
                     actions: http http-keepalive connect connect-mapped udp-send \
                     udp-send-mapped udp-connect tfo listen\n\
                     attacks: nat ADDR PORT TO_ADDR TO_PORT | raw-tcp ADDR PORT SRC | \
                     packet ADDR PORT SRC GATEWAY | tun ADDR PORT SRC DEV | udplite ADDR PORT | \
                     rthdr ADDR PORT SEGMENT | mptcp-add-addr ADDR PORT";

/// The capabilities `--caps` may keep (include/uapi/linux/capability.h).
const CAPS: &[(&str, u32)] = &[("net_admin", 12), ("net_raw", 13)];

#[derive(Debug)]
struct Options {
    netns: PathBuf,
    cgroup: PathBuf,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    /// The user namespace to join, if any; the ids are then inside it.
    userns: Option<PathBuf>,
    /// The capability mask to keep after the ids change, if any.
    caps: Option<u64>,
    /// How many times to perform the action (one process, one pid).
    repeat: u32,
    action: Action,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        let (mut netns, mut cgroup, mut uid, mut gid, mut groups) = (None, None, None, None, None);
        let (mut userns, mut caps) = (None, None);
        let mut repeat = 1;
        let mut rest = args;
        while let [flag, value, tail @ ..] = rest {
            if !flag.starts_with("--") {
                break;
            }
            let id = || {
                value
                    .parse::<u32>()
                    .map_err(|e| format!("{flag} {value:?}: {e}"))
            };
            match flag.as_str() {
                "--netns" => netns = Some(PathBuf::from(value)),
                "--userns" => userns = Some(PathBuf::from(value)),
                "--caps" => {
                    let mut mask = 0u64;
                    for name in value.split(',').filter(|c| !c.is_empty()) {
                        let bit = CAPS
                            .iter()
                            .find(|(n, _)| *n == name)
                            .map(|&(_, bit)| bit)
                            .ok_or_else(|| format!("--caps: unknown capability {name:?}"))?;
                        mask |= 1 << bit;
                    }
                    caps = Some(mask);
                }
                "--cgroup" => cgroup = Some(PathBuf::from(value)),
                "--uid" => uid = Some(id()?),
                "--repeat" => repeat = id()?.max(1),
                "--gid" => gid = Some(id()?),
                "--groups" => {
                    groups = Some(
                        value
                            .split(',')
                            .filter(|g| !g.is_empty())
                            .map(|g| g.parse().map_err(|e| format!("--groups {g:?}: {e}")))
                            .collect::<Result<_, _>>()?,
                    );
                }
                other => return Err(format!("unknown option {other}")),
            }
            rest = tail;
        }
        // Both are required: a probe must never act from the host namespace,
        // where a metadata address would reach the real service.
        Ok(Options {
            netns: netns.ok_or("--netns is required")?,
            cgroup: cgroup.ok_or("--cgroup is required")?,
            uid: uid.ok_or("--uid is required")?,
            gid: gid.ok_or("--gid is required")?,
            groups: groups.unwrap_or_default(),
            userns,
            caps,
            repeat,
            action: Action::from_args(rest)?,
        })
    }
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> Result<(), String> {
    // SAFETY: PR_SET_KEEPCAPS takes an integer argument and no pointers.
    if unsafe { libc::prctl(option, arg, 0, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(format!("prctl({option}): {}", io::Error::last_os_error()))
    }
}

/// Makes `mask` the permitted and effective capability sets (none
/// inheritable), then checks what the kernel reports.
fn keep_caps(mask: u64) -> Result<(), String> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    // _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set.
    let header = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let word = |i: u32| Data {
        effective: (mask >> (32 * i)) as u32,
        permitted: (mask >> (32 * i)) as u32,
        inheritable: 0,
    };
    let data = [word(0), word(1)];
    // SAFETY: capset reads one header and two data structs, which these are.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw const header, data.as_ptr()) };
    if rc != 0 {
        return Err(format!("capset {mask:#x}: {}", io::Error::last_os_error()));
    }
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("reading /proc/self/status: {e}"))?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    if effective != Some(mask) {
        return Err(format!(
            "capabilities did not change: CapEff {effective:?}, wanted {mask:#x}"
        ));
    }
    Ok(())
}

/// (device, inode) of a namespace file: equal pairs are the same namespace.
fn ns_id(path: &Path) -> Result<(u64, u64), String> {
    fs::metadata(path)
        .map(|m| (m.dev(), m.ino()))
        .map_err(|e| format!("stat {}: {e}", path.display()))
}

/// Joins the cgroup and the namespace, then drops privileges.
fn enter(opts: &Options) -> Result<(), String> {
    imds_guard_e2e::cgroup::join(&opts.cgroup)?;

    let own = Path::new("/proc/thread-self/ns/net");
    let before = ns_id(own)?;
    let ns = fs::File::open(&opts.netns)
        .map_err(|e| format!("opening {}: {e}", opts.netns.display()))?;
    setns(&ns, CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("setns into {}: {e}", opts.netns.display()))?;
    let after = ns_id(own)?;
    // The probe starts in the test runner's (host) namespace, so joining
    // must change it; otherwise a wrong path would send to the real service.
    if after == before {
        return Err(format!(
            "refusing to run: {} is not a separate test namespace",
            opts.netns.display()
        ));
    }
    if let Some(userns) = &opts.userns {
        // Joining a user namespace drops every capability outside it, so
        // it comes after the cgroup and the network namespace. It needs a
        // single-threaded process, which this still is.
        let ns =
            fs::File::open(userns).map_err(|e| format!("opening {}: {e}", userns.display()))?;
        setns(&ns, CloneFlags::CLONE_NEWUSER)
            .map_err(|e| format!("setns into {}: {e}", userns.display()))?;
    }

    let groups: Vec<Gid> = opts.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    let (uid, gid) = (Uid::from_raw(opts.uid), Gid::from_raw(opts.gid));
    setgroups(&groups).map_err(|e| format!("setgroups {:?}: {e}", opts.groups))?;
    setresgid(gid, gid, gid).map_err(|e| format!("setresgid {gid}: {e}"))?;
    if opts.caps.is_some() {
        // Keep the permitted set across the uid change; `keep_caps` then
        // narrows it to the mask and makes that effective.
        prctl(libc::PR_SET_KEEPCAPS, 1)?;
    }
    setresuid(uid, uid, uid).map_err(|e| format!("setresuid {uid}: {e}"))?;
    if let Some(mask) = opts.caps {
        keep_caps(mask)?;
        prctl(libc::PR_SET_KEEPCAPS, 0)?;
    }

    let ids = getresuid().map_err(|e| format!("getresuid: {e}"))?;
    let gids = getresgid().map_err(|e| format!("getresgid: {e}"))?;
    if [ids.real, ids.effective, ids.saved] != [uid; 3]
        || [gids.real, gids.effective, gids.saved] != [gid; 3]
    {
        return Err(format!("ids did not change: {ids:?} {gids:?}"));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let opts = match Options::parse(&args) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("imds-probe: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = enter(&opts) {
        eprintln!("imds-probe: {e}");
        return ExitCode::from(3);
    }
    if let Action::HttpKeepAlive(addr) = opts.action {
        return hold(addr);
    }
    if let Action::Listen(addr) = opts.action {
        return serve(addr);
    }
    print(&client::perform_repeatedly(&opts.action, opts.repeat))
}

/// `http-keepalive`: one connection, the flow on it once per line read.
fn hold(addr: SocketAddr) -> ExitCode {
    let mut held = client::Held::connect(addr);
    for line in io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
        let code = print(&held.fetch());
        if code != ExitCode::SUCCESS {
            return code;
        }
    }
    ExitCode::SUCCESS
}

/// `listen`: a local service on `addr`, answering until stdin ends.
fn serve(addr: SocketAddr) -> ExitCode {
    let (result, listening) = client::listen(addr);
    let code = print(&result);
    if listening {
        for line in io::stdin().lock().lines() {
            if line.is_err() {
                break;
            }
        }
    }
    code
}

/// Prints `result` as one JSON line (flushed: stdout is line-buffered).
fn print(result: &ProbeResult) -> ExitCode {
    match serde_json::to_string(result) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("imds-probe: encoding the result: {e}");
            ExitCode::from(3)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Options::parse(&args)
    }

    const BASE: [&str; 8] = [
        "--netns", "/n", "--cgroup", "/c", "--uid", "0", "--gid", "0",
    ];

    #[test]
    fn caps_become_a_mask_and_userns_a_path() {
        let mut args = BASE.to_vec();
        args.extend(["--userns", "/proc/1/ns/user", "--caps", "net_raw,net_admin"]);
        args.extend(["udplite", "169.254.169.254", "5353"]);
        let opts = parse(&args).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(opts.caps, Some((1 << 13) | (1 << 12)));
        assert_eq!(opts.userns, Some(PathBuf::from("/proc/1/ns/user")));
    }

    #[test]
    fn an_unknown_capability_is_refused() {
        let mut args = BASE.to_vec();
        args.extend(["--caps", "sys_admin", "connect", "127.0.0.1", "80"]);
        let Err(e) = parse(&args) else {
            panic!("sys_admin must be refused");
        };
        assert!(e.contains("sys_admin"), "{e}");
    }
}
