//! Why the kernel refused the agent, when restarting cannot change it: a
//! capability the process lacks, a seccomp filter or a security module
//! refusing `bpf(2)`. The kernel answers all of them with EPERM; this names
//! the cause from what the process can see of itself
//! (`/proc/self/status`), and the fix.

use std::{error::Error, fmt, io};

/// The capabilities the agent uses, by number (linux/capability.h).
const NEEDED: [(u32, &str); 3] = [(39, "CAP_BPF"), (12, "CAP_NET_ADMIN"), (38, "CAP_PERFMON")];
/// Grants every one of them on kernels before 5.8 (no CAP_BPF there).
const CAP_SYS_ADMIN: u32 = 21;

/// What `/proc/self/status` says of the process's privileges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Privileges {
    /// `CapEff`.
    pub effective: u64,
    /// `Seccomp`: 0 none, 1 strict, 2 a filter.
    pub seccomp: u8,
}

impl Privileges {
    /// This process's. Unreadable fields read as nothing held and no
    /// filter, which only changes the advice.
    pub fn own() -> Self {
        std::fs::read_to_string("/proc/self/status")
            .map(|s| Self::parse(&s))
            .unwrap_or_default()
    }

    fn parse(status: &str) -> Self {
        let mut p = Self::default();
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("CapEff:") {
                p.effective = u64::from_str_radix(v.trim(), 16).unwrap_or(0);
            } else if let Some(v) = line.strip_prefix("Seccomp:") {
                p.seccomp = v.trim().parse().unwrap_or(0);
            }
        }
        p
    }

    fn has(self, cap: u32) -> bool {
        self.effective & (1 << cap) != 0
    }

    /// The needed capabilities not held (none when CAP_SYS_ADMIN is).
    fn missing(self) -> Vec<&'static str> {
        if self.has(CAP_SYS_ADMIN) {
            return Vec::new();
        }
        NEEDED
            .iter()
            .filter(|(cap, _)| !self.has(*cap))
            .map(|(_, name)| *name)
            .collect()
    }
}

/// A refusal no restart can change.
#[derive(Debug, PartialEq, Eq)]
pub enum Cause {
    Capabilities(Vec<&'static str>),
    Seccomp,
    /// Every capability held, no seccomp filter, still EPERM.
    SecurityModule,
}

/// The kernel refused the agent for good.
#[derive(Debug)]
pub struct Refused {
    pub cause: Cause,
    /// What the agent was doing, with the kernel's error.
    pub source: Box<dyn Error + Send + Sync>,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            Cause::Capabilities(missing) => write!(
                f,
                "the agent lacks {} (and CAP_SYS_ADMIN): run it as root with CAP_BPF \
                 CAP_NET_ADMIN CAP_PERFMON (the packaged unit's CapabilityBoundingSet=; in a \
                 container, --cap-add each of them); restarting cannot fix this",
                missing.join(", ")
            ),
            Cause::Seccomp => f.write_str(
                "bpf(2) is refused by a seccomp filter (Seccomp: 2 in /proc/self/status) although \
                 the agent holds the capabilities it needs: allow the bpf system call (systemd: \
                 SystemCallFilter= must list bpf, as the packaged unit does; a container \
                 runtime's default profile blocks it: use a profile that allows it); restarting \
                 cannot fix this",
            ),
            Cause::SecurityModule => f.write_str(
                "bpf(2) is refused although the agent holds CAP_BPF, CAP_NET_ADMIN and \
                 CAP_PERFMON and no seccomp filter is in force: a security module refuses it \
                 (kernel lockdown in confidentiality mode, an SELinux or AppArmor policy; see \
                 dmesg); restarting cannot fix this",
            ),
        }
    }
}

impl Error for Refused {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// Whether a helper the verifier would not let a program call
/// (`LoadError::MissingHelper`) is a refusal for good: while CAP_PERFMON
/// is missing, the verifier refuses the helpers that read the task.
pub fn missing_helper(privileges: Privileges) -> Option<Cause> {
    let missing = privileges.missing();
    missing
        .contains(&"CAP_PERFMON")
        .then_some(Cause::Capabilities(missing))
}

/// Whether `e` is the kernel refusing the agent for good, and why: an
/// EPERM in its chain.
pub fn diagnose(e: &(dyn Error + 'static), privileges: Privileges) -> Option<Cause> {
    let missing = privileges.missing();
    let eperm = chain(e).any(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EPERM))
    });
    if !eperm {
        return None;
    }
    Some(if !missing.is_empty() {
        Cause::Capabilities(missing)
    } else if privileges.seccomp == 2 {
        Cause::Seccomp
    } else {
        Cause::SecurityModule
    })
}

fn chain<'a>(e: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    let mut next = Some(e);
    std::iter::from_fn(move || {
        let e = next?;
        next = e.source();
        Some(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u64 = (1 << 39) | (1 << 12) | (1 << 38);

    #[derive(Debug)]
    struct Wrapped(io::Error);
    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot create map X")
        }
    }
    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    fn eperm() -> Wrapped {
        Wrapped(io::Error::from_raw_os_error(libc::EPERM))
    }

    fn with(effective: u64, seccomp: u8) -> Privileges {
        Privileges { effective, seccomp }
    }

    #[test]
    fn status_is_parsed() {
        let p = Privileges::parse("Name:\tx\nCapEff:\t000000c000001000\nSeccomp:\t2\n");
        assert_eq!(p, with(ALL, 2));
        assert!(p.missing().is_empty());
    }

    #[test]
    fn a_missing_capability_is_named() {
        let cause = diagnose(&eperm(), with(1 << 12, 0));
        assert_eq!(
            cause,
            Some(Cause::Capabilities(vec!["CAP_BPF", "CAP_PERFMON"]))
        );
    }

    #[test]
    fn cap_sys_admin_covers_the_others() {
        let cause = diagnose(&eperm(), with(1 << CAP_SYS_ADMIN, 0));
        assert_eq!(cause, Some(Cause::SecurityModule));
    }

    #[test]
    fn with_every_capability_a_filter_is_blamed_then_a_security_module() {
        assert_eq!(diagnose(&eperm(), with(ALL, 2)), Some(Cause::Seccomp));
        assert_eq!(
            diagnose(&eperm(), with(ALL, 0)),
            Some(Cause::SecurityModule)
        );
    }

    #[test]
    fn a_refused_helper_is_for_good_only_without_cap_perfmon() {
        assert_eq!(
            missing_helper(with((1 << 39) | (1 << 12), 0)),
            Some(Cause::Capabilities(vec!["CAP_PERFMON"]))
        );
        assert_eq!(missing_helper(with(ALL, 0)), None);
    }

    #[test]
    fn other_errors_are_not_diagnosed() {
        let other = Wrapped(io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(diagnose(&other, with(0, 2)), None);
    }

    #[test]
    fn the_message_names_the_fix() {
        let refused = Refused {
            cause: Cause::Capabilities(vec!["CAP_BPF"]),
            source: Box::new(eperm()),
        };
        let text = refused.to_string();
        assert!(text.contains("lacks CAP_BPF"), "{text}");
        assert!(text.contains("restarting cannot fix this"), "{text}");
    }
}
