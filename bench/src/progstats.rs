//! The kernel's own accounting of program run time: while it is on, each
//! program's `run_time_ns` and `run_cnt` grow on every run
//! (kernel/bpf/syscall.c, shown in the fdinfo of a program descriptor). It
//! is turned on only for the sections that read it (it costs two clock
//! reads per run), and off again afterwards, even on failure.
//!
//! It is turned on with `BPF_ENABLE_STATS`, which enables the same
//! accounting as `kernel.bpf_stats_enabled` through a descriptor: the
//! kernel counts its users and turns the accounting off when the last
//! descriptor closes, even if the bench is killed, and the sysctl is never
//! written. Saving and restoring the sysctl instead races with anyone else
//! who does the same (each restores what it saw, and the last one wins),
//! so it is only the fallback for kernels without `BPF_ENABLE_STATS`
//! (before 5.8).

use std::{
    collections::BTreeMap,
    fs,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    process::Stdio,
};

use anyhow::{Context, ensure};
use imds_guard_e2e::{Netns, imds_guard_bin};
use serde_json::Value;

use super::nsexec;

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
/// `BPF_SK_MSG_VERDICT` (include/uapi/linux/bpf.h `enum bpf_attach_type`).
const BPF_SK_MSG_VERDICT: u32 = 7;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

/// `bpf(cmd, attr)`, returning the new descriptor it makes.
pub fn bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is the `#[repr(C)]` prefix of `union bpf_attr` that
    // `cmd` reads, valid for its size during the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            size_of::<T>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the call returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Run-time accounting on while it lives, off (as it was) after.
pub enum StatsEnabled {
    /// Holds the `BPF_ENABLE_STATS` descriptor; closing it ends our share.
    Fd { _held: OwnedFd },
    /// The fallback: the sysctl's previous value, written back on drop.
    Sysctl(String),
}

impl StatsEnabled {
    pub fn new() -> anyhow::Result<Self> {
        #[repr(C)]
        struct Attr {
            type_: u32,
        }
        let mut attr = Attr {
            type_: BPF_STATS_RUN_TIME,
        };
        match bpf_fd(BPF_ENABLE_STATS, &mut attr) {
            Ok(fd) => Ok(Self::Fd { _held: fd }),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let previous = fs::read_to_string(SYSCTL)
                    .with_context(|| format!("reading {SYSCTL}"))?
                    .trim()
                    .to_owned();
                fs::write(SYSCTL, "1").with_context(|| format!("writing {SYSCTL}"))?;
                Ok(Self::Sysctl(previous))
            }
            Err(e) => Err(e).context("BPF_ENABLE_STATS"),
        }
    }
}

impl StatsEnabled {
    /// How the accounting was turned on, for the report.
    pub fn how(&self) -> &'static str {
        match self {
            // Held by a descriptor: off again when it closes, even if the
            // bench is killed; the sysctl itself is never written.
            Self::Fd { .. } => "`BPF_ENABLE_STATS`",
            Self::Sysctl(_) => "`kernel.bpf_stats_enabled=1` (restored afterwards)",
        }
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        if let Self::Sysctl(previous) = self {
            if let Err(e) = fs::write(SYSCTL, &*previous) {
                eprintln!("could not restore {SYSCTL} to {previous}: {e}; restore it by hand");
            }
        }
    }
}

/// A program, by the id the kernel gave it.
pub struct Prog {
    fd: OwnedFd,
}

/// Cumulative counters of one program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Run {
    pub time_ns: u64,
    pub count: u64,
}

impl Prog {
    /// The program `fd` refers to (one the bench loaded itself).
    pub fn from_fd(fd: OwnedFd) -> Self {
        Prog { fd }
    }

    pub fn by_id(id: u32) -> anyhow::Result<Self> {
        #[repr(C)]
        struct Attr {
            prog_id: u32,
            next_id: u32,
            open_flags: u32,
        }
        let mut attr = Attr {
            prog_id: id,
            next_id: 0,
            open_flags: 0,
        };
        let fd = bpf_fd(BPF_PROG_GET_FD_BY_ID, &mut attr)
            .with_context(|| format!("opening bpf program {id}"))?;
        Ok(Prog { fd })
    }

    /// The counters now, from this descriptor's fdinfo.
    pub fn read(&self) -> anyhow::Result<Run> {
        let path = format!("/proc/self/fdinfo/{}", self.fd.as_raw_fd());
        let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |key: &str| -> anyhow::Result<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("no {key} in {path}"))
        };
        Ok(Run {
            time_ns: field("run_time_ns:")?,
            count: field("run_cnt:")?,
        })
    }
}

/// The programs of the guard pinned in `pin_dir`, by hook name, from
/// `imds-guard status --json` (what a user would run), run in the agent's
/// own namespace: status also reports the forward table of the namespace
/// it runs in, and says the guard is not enforcing without it.
pub fn guard_programs(netns: &Netns, pin_dir: &Path) -> anyhow::Result<BTreeMap<String, Prog>> {
    let bin = imds_guard_bin();
    let out = nsexec::command(netns, &bin)?
        .arg("status")
        .arg("--pin-dir")
        .arg(pin_dir)
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} status", bin.display()))?;
    let status: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "imds-guard status ({}) printed {:?}; stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    let mut progs = BTreeMap::new();
    for (name, id) in status_programs(&status)? {
        progs.insert(name, Prog::by_id(id)?);
    }
    Ok(progs)
}

/// The (hook, program id) pairs of a `status --json` report, in its
/// order. The hooks are whatever the guard attached (their number grows
/// with the guard), but every one must be attached and the guard
/// enforcing, or the figures would be of a guard that is not the real one.
pub fn status_programs(status: &Value) -> anyhow::Result<Vec<(String, u32)>> {
    ensure!(
        status["enforcing"] == Value::Bool(true),
        "imds-guard status says the guard is not enforcing: {status}"
    );
    let links = status["links"]
        .as_array()
        .with_context(|| format!("imds-guard status lists no links: {status}"))?;
    let mut out = Vec::new();
    for link in links {
        let (Some(name), Some(id)) = (link["program"].as_str(), link["prog_id"].as_u64()) else {
            anyhow::bail!("a link without program or prog_id in imds-guard status: {link}");
        };
        ensure!(
            link["cgroup_id"].as_u64().is_some_and(|c| c != 0),
            "imds-guard status: {name} is detached: {link}"
        );
        let id = u32::try_from(id).with_context(|| format!("program id {id} of {name}"))?;
        out.push((name.to_owned(), id));
    }
    ensure!(
        !out.is_empty(),
        "imds-guard status lists no links: {status}"
    );
    Ok(out)
}

/// The `sk_msg` program attached to the sockhash pinned at `map_pin` (the
/// guard's `req_msg` on `REQ_SOCKS`): it has no cgroup link for `status`
/// to list, so it is found through the map the agent pinned
/// (`BPF_PROG_QUERY` on a sockmap, Linux 5.19 and later). Exactly one
/// program, or an error.
pub fn sk_msg_program(map_pin: &Path) -> anyhow::Result<Prog> {
    use std::os::unix::ffi::OsStrExt as _;
    #[repr(C)]
    struct GetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    #[repr(C)]
    struct QueryAttr {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
    }
    let path = std::ffi::CString::new(map_pin.as_os_str().as_bytes())
        .with_context(|| format!("{} has a NUL", map_pin.display()))?;
    let mut get = GetAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let map = bpf_fd(BPF_OBJ_GET, &mut get)
        .with_context(|| format!("opening the pinned map {}", map_pin.display()))?;
    let mut ids = [0_u32; 4];
    let mut query = QueryAttr {
        target_fd: map.as_raw_fd() as u32,
        attach_type: BPF_SK_MSG_VERDICT,
        query_flags: 0,
        attach_flags: 0,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
    };
    // SAFETY: `query` is the `#[repr(C)]` prefix of `union bpf_attr` that
    // BPF_PROG_QUERY reads and writes (the count back into `prog_cnt`),
    // and `ids` outlives the call with room for `prog_cnt` ids.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            (&raw mut query).cast::<libc::c_void>(),
            size_of::<QueryAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| {
            format!(
                "BPF_PROG_QUERY on {} (a sockmap answers it from Linux 5.19)",
                map_pin.display()
            )
        });
    }
    ensure!(
        query.prog_cnt == 1,
        "{} has {} sk_msg programs attached, not one",
        map_pin.display(),
        query.prog_cnt
    );
    Prog::by_id(ids[0])
}

/// The program `name` of [`guard_programs`], or an error that says which
/// programs status did list.
pub fn pick<'a>(progs: &'a BTreeMap<String, Prog>, name: &str) -> anyhow::Result<&'a Prog> {
    progs.get(name).with_context(|| {
        format!(
            "imds-guard status lists no {name} program (it lists {:?})",
            progs.keys().collect::<Vec<_>>()
        )
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::status_programs;

    fn link(program: &str, prog_id: u32, cgroup_id: u64) -> serde_json::Value {
        json!({"program": program, "link_id": 1, "prog_id": prog_id, "cgroup_id": cgroup_id})
    }

    #[test]
    fn every_hook_status_lists_is_taken() {
        let status = json!({
            "enforcing": true,
            "links": [link("connect4", 10, 7), link("connect6", 11, 7), link("sendmsg4", 12, 7),
                      link("sendmsg6", 13, 7), link("egress", 14, 7)],
        });
        let progs = status_programs(&status).expect("parses");
        let names: Vec<&str> = progs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["connect4", "connect6", "sendmsg4", "sendmsg6", "egress"]
        );
        assert_eq!(progs[4].1, 14);
    }

    #[test]
    fn a_guard_that_does_not_enforce_is_refused() {
        // What status says when run outside the agent's namespace: no
        // forward table there.
        let status = json!({
            "enforcing": false,
            "forward": {"guarded": false},
            "links": [link("connect4", 10, 7)],
        });
        let err = status_programs(&status).expect_err("not enforcing");
        assert!(err.to_string().contains("not enforcing"), "{err}");
    }

    #[test]
    fn a_detached_link_or_none_at_all_is_refused() {
        let detached = json!({"enforcing": true, "links": [link("connect4", 10, 0)]});
        assert!(status_programs(&detached).is_err());
        let none = json!({"enforcing": true, "links": []});
        assert!(status_programs(&none).is_err());
    }
}
