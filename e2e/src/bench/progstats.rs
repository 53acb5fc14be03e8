//! The kernel's own accounting of program run time: with
//! `kernel.bpf_stats_enabled` set, each program's `run_time_ns` and
//! `run_cnt` grow on every run (kernel/bpf/syscall.c, shown in the fdinfo
//! of a program descriptor). The sysctl is turned on only for the sections
//! that read it (it costs two clock reads per run) and restored on drop.

use std::{
    collections::BTreeMap,
    fs,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    process::Command,
};

use anyhow::{Context, bail, ensure};
use imds_guard_e2e::imds_guard_bin;
use serde_json::Value;

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;

/// `kernel.bpf_stats_enabled=1` while it lives; the previous value after.
pub struct StatsEnabled {
    previous: String,
}

impl StatsEnabled {
    pub fn new() -> anyhow::Result<Self> {
        let previous = fs::read_to_string(SYSCTL).with_context(|| format!("reading {SYSCTL}"))?;
        let previous = previous.trim().to_owned();
        fs::write(SYSCTL, "1").with_context(|| format!("writing {SYSCTL}"))?;
        Ok(StatsEnabled { previous })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        if let Err(e) = fs::write(SYSCTL, &self.previous) {
            eprintln!(
                "could not restore {SYSCTL} to {}: {e}; restore it by hand",
                self.previous
            );
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
        // SAFETY: `attr` is the `#[repr(C)]` prefix of `union bpf_attr`
        // that BPF_PROG_GET_FD_BY_ID reads, valid for its size during the
        // call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_GET_FD_BY_ID,
                (&raw mut attr).cast::<libc::c_void>(),
                size_of::<Attr>() as libc::c_uint,
            )
        };
        if fd < 0 {
            bail!(
                "opening bpf program {id}: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: the call returned a new descriptor that nothing else owns.
        Ok(Prog {
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
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
/// `imds-guard status --json` (what a user would run).
pub fn guard_programs(pin_dir: &Path) -> anyhow::Result<BTreeMap<String, Prog>> {
    let bin = imds_guard_bin();
    let out = Command::new(&bin)
        .arg("status")
        .arg("--pin-dir")
        .arg(pin_dir)
        .arg("--json")
        .output()
        .with_context(|| format!("running {} status", bin.display()))?;
    let status: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "imds-guard status printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    let mut progs = BTreeMap::new();
    for link in status["links"].as_array().into_iter().flatten() {
        let (Some(name), Some(id)) = (link["program"].as_str(), link["prog_id"].as_u64()) else {
            continue;
        };
        progs.insert(name.to_owned(), Prog::by_id(id as u32)?);
    }
    ensure!(
        progs.len() == 4,
        "imds-guard status listed {} programs: {status}",
        progs.len()
    );
    Ok(progs)
}
