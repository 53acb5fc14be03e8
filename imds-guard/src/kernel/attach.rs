//! Attaching the programs of the guarded cgroup ([`programs::guarding`]),
//! or adopting the links an earlier agent pinned.
//!
//! Attaching is planned, then executed: every pinned link is checked before
//! any is touched, so a problem leaves the guard as it was rather than half
//! old, half new (bpfman's manager works the same way).

use std::{
    fs::File,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, ProgramError, ProgramFd,
        SockOps,
        links::{FdLink, LinkError},
    },
    util::KernelVersion,
};

use super::{
    cgroup::{self, CgroupError},
    pins::{PinError, Pins},
    programs::{self, Kind, Row},
    sys,
};

/// A program that could not be attached, or a pinned link not ours to
/// adopt.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("cannot load program {name} into the kernel")]
    NotLoaded {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("cannot attach program {name} to {cgroup}")]
    Attach {
        name: &'static str,
        cgroup: PathBuf,
        #[source]
        source: ProgramError,
    },
    #[error("cannot pin the link of program {name}: it is not a bpf_link")]
    NotALink {
        name: &'static str,
        #[source]
        source: LinkError,
    },
    #[error(
        "the guard pinned at {pin} is attached to another cgroup (id {pinned}) than {cgroup} \
         (id {wanted}); run `{detach}` first to move it"
    )]
    OtherCgroup {
        pin: PathBuf,
        cgroup: PathBuf,
        pinned: u64,
        wanted: u64,
        /// The command that detaches it.
        detach: String,
    },
    #[error("cannot link program {name} to {cgroup}")]
    Link {
        name: &'static str,
        cgroup: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot replace the program of the pinned link {path}")]
    Update {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How [`attach`] found each program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttachReport {
    /// Programs whose pinned link now runs ours (an earlier agent's).
    pub adopted: usize,
    /// Programs attached anew.
    pub attached: usize,
    /// Whether an earlier agent's judged sockets were retired
    /// (`retire.rs`).
    pub retired: bool,
}

/// What [`attach`] does for one program.
enum Step {
    /// Swap our program into this pinned link (`BPF_LINK_UPDATE`).
    Adopt { path: PathBuf, link: OwnedFd },
    /// Attach anew (and pin, when pinning).
    Attach,
}

/// Attaches the programs of `ebpf` (loaded) to the cgroup v2 directory
/// `cgroup`, adopting the links pinned in `pins` (see `Guard::attach`).
/// Links made here that aya does not hold and nothing pins are pushed
/// onto `held`: they last as long as the caller keeps them.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    cgroup: &Path,
    pins: Option<&Pins>,
    held: &mut Vec<OwnedFd>,
) -> Result<AttachReport, AttachError> {
    let file = cgroup::open(cgroup)?;
    let cgroup_id = cgroup::id(&file, cgroup)?;
    let plan = match pins {
        Some(pins) => plan(pins, cgroup, cgroup_id)?,
        None => programs::guarding().map(|_| Step::Attach).collect(),
    };
    let mut report = AttachReport::default();
    for ((row, _), step) in programs::guarding().zip(plan) {
        match step {
            Step::Adopt { path, link } => {
                adopt(ebpf, row, path, &link)?;
                report.adopted += 1;
            }
            Step::Attach => {
                if let Some(link) = attach_new(ebpf, row, &file, cgroup, pins)? {
                    held.push(link);
                }
                report.attached += 1;
            }
        }
    }
    Ok(report)
}

/// What to do for each program on the cgroup, in the order of
/// [`programs::guarding`], given what is pinned: every pinned link is
/// checked before anything changes.
fn plan(pins: &Pins, cgroup: &Path, cgroup_id: u64) -> Result<Vec<Step>, AttachError> {
    let mut plan = Vec::with_capacity(programs::GUARDING);
    for (row, _) in programs::guarding() {
        let Some((path, link)) = pins.open_link(row.name)? else {
            plan.push(Step::Attach);
            continue;
        };
        let info = sys::link_info(link.as_fd())
            .map_err(|e| PinError::new("read the pinned link", &path, e))?;
        if info.cgroup_id == 0 {
            // Detached (its cgroup was removed, or `BPF_LINK_DETACH`): it
            // guards nothing; attach anew in its place.
            std::fs::remove_file(&path)
                .map_err(|e| PinError::new("remove the stale pinned link", &path, e))?;
            plan.push(Step::Attach);
            continue;
        }
        if info.cgroup_id != cgroup_id {
            return Err(AttachError::OtherCgroup {
                pin: path,
                cgroup: cgroup.to_owned(),
                pinned: info.cgroup_id,
                wanted: cgroup_id,
                detach: pins.command("detach"),
            });
        }
        plan.push(Step::Adopt { path, link });
    }
    Ok(plan)
}

/// Swaps our program of `row` into the pinned `link`.
fn adopt(ebpf: &mut Ebpf, row: &Row, path: PathBuf, link: &OwnedFd) -> Result<(), AttachError> {
    let name = row.name;
    let program = program(ebpf, row)?;
    let prog_fd = program
        .fd()
        .map_err(|source| AttachError::NotLoaded { name, source })?;
    sys::link_update(link.as_fd(), prog_fd.as_fd())
        .map_err(|source| AttachError::Update { path, source })
}

/// Attaches our program of `row` to `file` (the cgroup at `path`), and
/// pins its link when pinning. A link that neither aya nor a pin holds is
/// returned, for the caller to keep.
fn attach_new(
    ebpf: &mut Ebpf,
    row: &Row,
    file: &File,
    path: &Path,
    pins: Option<&Pins>,
) -> Result<Option<OwnedFd>, AttachError> {
    let name = row.name;
    let attach_err = |source| AttachError::Attach {
        name,
        cgroup: path.to_owned(),
        source,
    };
    let not_a_link = |source| AttachError::NotALink { name, source };
    // Without pins, the link stays with the program (and goes with it).
    let link: Option<FdLink> = match program(ebpf, row)? {
        Program::SockAddr(p) => {
            let id = p.attach(file, attach_mode()).map_err(attach_err)?;
            match pins {
                Some(_) => Some(
                    p.take_link(id)
                        .map_err(attach_err)?
                        .try_into()
                        .map_err(not_a_link)?,
                ),
                None => None,
            }
        }
        Program::Skb(p) => {
            let id = p
                .attach(file, CgroupSkbAttachType::Egress, attach_mode())
                .map_err(attach_err)?;
            match pins {
                Some(_) => Some(
                    p.take_link(id)
                        .map_err(attach_err)?
                        .try_into()
                        .map_err(not_a_link)?,
                ),
                None => None,
            }
        }
        Program::SockOps(p) => {
            let prog = p.fd().map_err(attach_err)?;
            let link = sys::link_create_cgroup(
                prog.as_fd(),
                file.as_fd(),
                aya_obj::generated::bpf_attach_type::BPF_CGROUP_SOCK_OPS,
            )
            .map_err(|source| AttachError::Link {
                name,
                cgroup: path.to_owned(),
                source,
            })?;
            return match pins {
                Some(pins) => {
                    pins.pin_link_fd(name, link.as_fd())?;
                    Ok(None)
                }
                None => Ok(Some(link)),
            };
        }
    };
    if let (Some(pins), Some(link)) = (pins, link) {
        pins.pin_link(name, link)?;
    }
    Ok(None)
}

/// A cgroup program, as its type.
enum Program<'a> {
    SockAddr(&'a mut CgroupSockAddr),
    Skb(&'a mut CgroupSkb),
    SockOps(&'a mut SockOps),
}

impl Program<'_> {
    fn fd(&self) -> Result<&ProgramFd, ProgramError> {
        match self {
            Self::SockAddr(p) => p.fd(),
            Self::Skb(p) => p.fd(),
            Self::SockOps(p) => p.fd(),
        }
    }
}

/// The cgroup program of `row`, as the type its kind says.
fn program<'a>(ebpf: &'a mut Ebpf, row: &Row) -> Result<Program<'a>, AttachError> {
    let program = ebpf.program_mut(row.name);
    let typed = match row.kind {
        Kind::SockAddr(_) => program
            .and_then(|p| p.try_into().ok())
            .map(Program::SockAddr),
        Kind::SkbEgress => program.and_then(|p| p.try_into().ok()).map(Program::Skb),
        Kind::SockOps => program
            .and_then(|p| p.try_into().ok())
            .map(Program::SockOps),
        Kind::RawTracepoint(_) | Kind::Netfilter(_) | Kind::SkMsg(_) | Kind::Map => None,
    };
    typed.ok_or(AttachError::MissingProgram(row.name))
}

/// From 5.7 aya attaches through a bpf_link, which the kernel always
/// attaches with BPF_F_ALLOW_MULTI and which takes no attach flags
/// (`cgroup_bpf_link_attach` in kernel/bpf/cgroup.c): `Single` means "no
/// flags" there. Measured on 6.18: BPF_F_ALLOW_MULTI fails with EINVAL.
/// Before 5.7 it is BPF_PROG_ATTACH, and the flag is needed.
fn attach_mode() -> CgroupAttachMode {
    let links = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 7, 0));
    if links {
        CgroupAttachMode::Single
    } else {
        CgroupAttachMode::AllowMultiple
    }
}
