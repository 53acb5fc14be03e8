//! Locked memory for the maps: kernels before 5.11 charge BPF maps and
//! programs against `RLIMIT_MEMLOCK` (5.11 moved them to the memory
//! cgroup), and the guard's maps are far above the 64 KiB or 8 MiB a
//! process starts with. The packaged unit raises the limit itself
//! (`LimitMEMLOCK=infinity`), so the agent needs no capability for it; a
//! container has no unit, and the agent raises the limit itself, which
//! takes `CAP_SYS_RESOURCE` past the hard limit the runtime set.

use aya::util::KernelVersion;
use nix::{
    errno::Errno,
    sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit},
};

/// What [`raise`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Memlock {
    /// It was unlimited already (the packaged unit).
    Unlimited,
    /// It is unlimited now.
    Raised,
    /// Only as far as the hard limit (bytes): raising that takes
    /// `CAP_SYS_RESOURCE`.
    ToHard(u64),
}

/// Whether the running kernel charges the maps against `RLIMIT_MEMLOCK`
/// (before 5.11; an unknown version is taken as charging).
pub fn charged() -> bool {
    KernelVersion::current().map_or(true, |v| v < KernelVersion::new(5, 11, 0))
}

/// Raises `RLIMIT_MEMLOCK` as far as the agent may: unlimited, or up to
/// the hard limit.
pub fn raise() -> Result<Memlock, Errno> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_MEMLOCK)?;
    if soft == RLIM_INFINITY {
        return Ok(Memlock::Unlimited);
    }
    match setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY) {
        Ok(()) => Ok(Memlock::Raised),
        Err(Errno::EPERM) => {
            setrlimit(Resource::RLIMIT_MEMLOCK, hard, hard)?;
            Ok(if hard == RLIM_INFINITY {
                Memlock::Raised
            } else {
                Memlock::ToHard(hard)
            })
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether this process has CAP_SYS_RESOURCE (24) in effect (root in
    /// a container may not).
    fn sys_resource() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .is_some_and(|caps| caps & (1 << 24) != 0)
    }

    /// Run in a child process: the limit is the whole process's.
    #[test]
    fn a_low_limit_is_raised_as_far_as_the_process_may() {
        let may_go_past_hard = sys_resource();
        // SAFETY: the child only calls async-signal-safe functions
        // (getrlimit, setrlimit, _exit) before it exits.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                let code = (|| {
                    setrlimit(Resource::RLIMIT_MEMLOCK, 65_536, 1 << 20).ok()?;
                    let raised = raise().ok()?;
                    let (soft, hard) = getrlimit(Resource::RLIMIT_MEMLOCK).ok()?;
                    let as_said = match raised {
                        Memlock::Raised => soft == RLIM_INFINITY && hard == RLIM_INFINITY,
                        Memlock::ToHard(h) => soft == h && h == 1 << 20,
                        Memlock::Unlimited => false,
                    };
                    // CAP_SYS_RESOURCE goes past the hard limit.
                    Some(as_said && (!may_go_past_hard || raised == Memlock::Raised))
                })();
                // SAFETY: _exit ends the child without running the
                // parent's destructors or test harness.
                unsafe { libc::_exit(if code == Some(true) { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).expect("waitpid");
                assert_eq!(
                    status,
                    nix::sys::wait::WaitStatus::Exited(child, 0),
                    "the child's limit was not raised as said"
                );
            }
        }
    }
}
