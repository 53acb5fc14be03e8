//! The forward path held by a BPF netfilter program (Linux 6.4): the
//! `forward` program of `imds-guard-ebpf/src/netfilter.rs`, loaded by the
//! agent itself and linked at netfilter's forward hook (`link.rs`), with
//! `[forward]`'s exceptions written per policy generation
//! (`exceptions.rs`).
//!
//! aya 0.14 has no netfilter program type and aya-obj 0.3 refuses a
//! `netfilter` section, so the program sits in a `socket/` section and is
//! loaded in two steps: aya loads the object (creating and filling every
//! map, `.rodata` with the offsets included) and never loads this program;
//! then the same object is parsed again with `aya_obj::Object::parse`, its
//! map references relocated against the maps aya created, its calls
//! linked, and its instructions loaded as `BPF_PROG_TYPE_NETFILTER`
//! (`sys::prog_load_netfilter`). No BTF is needed.

pub mod exceptions;
pub mod link;
pub mod records;

use std::{
    collections::HashSet,
    io,
    os::fd::{AsRawFd as _, OwnedFd},
};

use aya_obj::generated::{__BindgenBitfieldUnit, bpf_insn};
use imds_guard_common as common;

use super::sys::{self, LoadFailure};

/// The forward program could not be loaded or linked.
#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
    #[error("aya-obj cannot parse the eBPF object")]
    Parse(#[source] aya_obj::ParseError),
    #[error("cannot relocate the forward program")]
    Relocate(#[source] Box<aya_obj::relocation::EbpfRelocationError>),
    #[error("the eBPF object has no program {0}")]
    NoProgram(&'static str),
    #[error("aya created no map {0} for the forward program")]
    NoMap(String),
    #[error("this kernel has no netfilter programs (Linux 6.4, CONFIG_NETFILTER_BPF_LINK)")]
    Unsupported(#[source] io::Error),
    #[error("the kernel refused the forward program: {log}")]
    Refused {
        #[source]
        error: io::Error,
        log: String,
    },
    #[error("cannot link the forward program at the forward hook (family {pf})")]
    Link {
        pf: u32,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Pin(#[from] super::pins::PinError),
}

/// Whether the running kernel has netfilter programs: a two-instruction
/// program of the type is loaded and let go. A kernel without the type
/// refuses it with `EINVAL` before any verification (`find_prog_type` in
/// kernel/bpf/syscall.c: 6.1's `bpf_prog_types[]` ends at
/// `BPF_PROG_TYPE_SYSCALL`, 31; `BPF_PROG_TYPE_NETFILTER` is 32; a 6.4+
/// kernel built without `CONFIG_NETFILTER_BPF_LINK` has a hole there).
/// `Err` for any other refusal (no `CAP_BPF`), which says nothing.
pub fn available() -> io::Result<bool> {
    let insn = |code: u8, imm: i32| bpf_insn {
        code,
        _bitfield_align_1: [],
        // dst_reg r0, src_reg 0.
        _bitfield_1: __BindgenBitfieldUnit::new([0]),
        off: 0,
        imm,
    };
    // `r0 = 1 (NF_ACCEPT); exit`.
    let accept = [insn(0xb7, 1), insn(0x95, 0)];
    match sys::prog_load_netfilter(&accept, c"GPL", "imdsg_nf_probe", false) {
        // The descriptor closes here: nothing was linked.
        Ok(_fd) => Ok(true),
        Err(f) if f.error.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(f) => Err(f.error),
    }
}

/// Loads the forward program of `object`, its maps those aya created for
/// the same object (`maps`: each map's name and a descriptor of it).
pub fn load(object: &[u8], maps: &[(String, OwnedFd)]) -> Result<OwnedFd, NetfilterError> {
    let mut obj = aya_obj::Object::parse(object).map_err(NetfilterError::Parse)?;
    // As aya computes them (aya/src/bpf.rs): every section with code.
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
    let mut fds = Vec::with_capacity(obj.maps.len());
    for (name, map) in &obj.maps {
        let fd = maps
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, fd)| fd.as_raw_fd())
            .ok_or_else(|| NetfilterError::NoMap(name.clone()))?;
        fds.push((name.clone(), fd, map.clone()));
    }
    obj.relocate_maps(
        fds.iter().map(|(n, fd, m)| (n.as_str(), *fd, m)),
        &text_sections,
    )
    .map_err(|e| NetfilterError::Relocate(Box::new(e)))?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| NetfilterError::Relocate(Box::new(e)))?;
    let program = obj
        .programs
        .get(common::PROGRAM_FORWARD)
        .ok_or(NetfilterError::NoProgram(common::PROGRAM_FORWARD))?;
    let function = obj
        .functions
        .get(&program.function_key())
        .ok_or(NetfilterError::NoProgram(common::PROGRAM_FORWARD))?;
    load_instructions(&function.instructions, &program.license)
}

/// `BPF_PROG_LOAD` without a log first (the common case costs no 1 MiB
/// buffer), again with one to say why when the kernel refuses.
fn load_instructions(
    insns: &[bpf_insn],
    license: &std::ffi::CStr,
) -> Result<OwnedFd, NetfilterError> {
    let name = common::PROGRAM_FORWARD;
    let refused = |f: LoadFailure| NetfilterError::Refused {
        error: f.error,
        log: f.log,
    };
    match sys::prog_load_netfilter(insns, license, name, false) {
        Ok(fd) => Ok(fd),
        Err(_) => match sys::prog_load_netfilter(insns, license, name, true) {
            Ok(fd) => Ok(fd),
            // EINVAL with an empty log is how a kernel without the type
            // answers (see `available`).
            Err(f) if f.log.is_empty() && f.error.raw_os_error() == Some(libc::EINVAL) => {
                Err(NetfilterError::Unsupported(f.error))
            }
            Err(f) => Err(refused(f)),
        },
    }
}
