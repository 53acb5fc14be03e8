//! The floor: what the kernel charges for running any cgroup program at
//! all. An empty `cgroup_skb/egress` and an empty `cgroup/connect4`
//! program (`r0 = 1; exit`: allow), attached to a configuration's own
//! cgroup like the guard to its own, so that each of the guard's programs
//! is timed beside a program of the same type that does nothing, in the
//! same rounds. Their `run_time_ns` include what the accounting itself
//! adds to every run (two clock reads), as the guard's do.
//!
//! Two instructions need no object: they are loaded with `BPF_PROG_LOAD`
//! and attached with `BPF_LINK_CREATE` by hand, because aya 0.14 loads
//! programs only from an object file (its `ProgramData` is private). The
//! numbers and layouts are `aya_obj::generated`'s. Nothing is pinned:
//! closing a link detaches it, so the programs go with the [`Floor`], even
//! when the bench fails.

use std::{
    ffi::CStr,
    fs::File,
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::Path,
};

use anyhow::{Context, ensure};
use aya_obj::generated::{
    BPF_ALU64, BPF_EXIT, BPF_JMP, BPF_K, BPF_MOV, bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn,
    bpf_prog_type,
};
use imds_guard_e2e::cgroup2_root;

use super::progstats::{Prog, bpf_fd};

/// One empty program: the guard's hook it stands for, and how it is
/// loaded and attached.
struct Hook {
    /// The name of the guard's program of the same type (what `status`
    /// lists), by which the sections find the floor of a program.
    guard: &'static str,
    /// The name the kernel shows (`bpftool prog`), up to 15 bytes.
    name: &'static CStr,
    prog_type: bpf_prog_type,
    attach_type: bpf_attach_type,
}

const HOOKS: [Hook; 2] = [
    Hook {
        guard: "egress",
        name: c"floor_egress",
        prog_type: bpf_prog_type::BPF_PROG_TYPE_CGROUP_SKB,
        attach_type: bpf_attach_type::BPF_CGROUP_INET_EGRESS,
    },
    Hook {
        guard: "connect4",
        name: c"floor_connect4",
        prog_type: bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        attach_type: bpf_attach_type::BPF_CGROUP_INET4_CONNECT,
    },
];

/// The empty programs, attached to one cgroup while this lives.
pub struct Floor {
    /// Dropped first: closing a link detaches its program.
    _links: Vec<OwnedFd>,
    /// By the guard's program each stands for, in [`HOOKS`]' order.
    progs: Vec<(&'static str, Prog)>,
}

impl Floor {
    /// Loads the empty programs and attaches them to `cgroup`, which must
    /// be a cgroup below the root of the cgroup2 hierarchy (what is
    /// attached to the root runs for every process of the machine).
    pub fn attach(cgroup: &Path) -> anyhow::Result<Self> {
        refuse_root(cgroup)?;
        let dir = File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
        let mut links = Vec::with_capacity(HOOKS.len());
        let mut progs = Vec::with_capacity(HOOKS.len());
        for hook in &HOOKS {
            let prog = load(hook).with_context(|| {
                format!("loading the empty {} program", hook.name.to_string_lossy())
            })?;
            let link = link(&prog, &dir, hook.attach_type).with_context(|| {
                format!(
                    "attaching the empty {} program to {}",
                    hook.name.to_string_lossy(),
                    cgroup.display()
                )
            })?;
            links.push(link);
            progs.push((hook.guard, Prog::from_fd(prog)));
        }
        Ok(Floor {
            _links: links,
            progs,
        })
    }

    /// The empty program of the same type as the guard's program `guard`
    /// (`egress`, `connect4`), if there is one.
    pub fn program(&self, guard: &str) -> Option<&Prog> {
        self.progs
            .iter()
            .find(|(name, _)| *name == guard)
            .map(|(_, p)| p)
    }
}

/// Fails unless `cgroup` is a directory strictly below the cgroup2 root.
fn refuse_root(cgroup: &Path) -> anyhow::Result<()> {
    let root = cgroup2_root();
    let id = |p: &Path| -> anyhow::Result<(u64, u64)> {
        let m = std::fs::metadata(p).with_context(|| format!("stat {}", p.display()))?;
        Ok((m.dev(), m.ino()))
    };
    ensure!(
        cgroup.starts_with(&root) && id(cgroup)? != id(&root)?,
        "{} is not a cgroup below the cgroup2 root {}: the empty programs are attached only \
         to a cgroup of the bench's own",
        cgroup.display(),
        root.display()
    );
    Ok(())
}

/// `r0 = 1; exit`: the connect goes on, the packet is let out.
fn empty() -> [bpf_insn; 2] {
    let insn = |code: u32, imm: i32| {
        // SAFETY: `struct bpf_insn` is plain integers (a bit field of
        // registers among them): all zeros is a valid value, and register
        // 0 (r0) is what zeros name.
        let mut i: bpf_insn = unsafe { std::mem::zeroed() };
        i.code = code as u8;
        i.imm = imm;
        i
    };
    [
        insn(BPF_ALU64 | BPF_MOV | BPF_K, 1),
        insn(BPF_JMP | BPF_EXIT, 0),
    ]
}

/// An attr of zeros: what the kernel takes for the fields a command does
/// not use.
fn zeroed_attr() -> bpf_attr {
    // SAFETY: `union bpf_attr` is made of integers, arrays and unions of
    // them: all zeros is a valid value.
    unsafe { std::mem::zeroed() }
}

/// `BPF_PROG_LOAD` of [`empty`] as `hook`'s type.
fn load(hook: &Hook) -> std::io::Result<OwnedFd> {
    let insns = empty();
    let license = c"GPL";
    let mut name = [0 as libc::c_char; 16];
    for (to, &from) in name.iter_mut().zip(hook.name.to_bytes().iter().take(15)) {
        *to = from as libc::c_char;
    }
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_3.prog_type = hook.prog_type as u32;
    attr.__bindgen_anon_3.insn_cnt = insns.len() as u32;
    attr.__bindgen_anon_3.insns = insns.as_ptr() as u64;
    attr.__bindgen_anon_3.license = license.as_ptr() as u64;
    attr.__bindgen_anon_3.prog_name = name;
    // connect4 requires it; for egress it is what the guard's says too.
    attr.__bindgen_anon_3.expected_attach_type = hook.attach_type as u32;
    bpf_fd(bpf_cmd::BPF_PROG_LOAD as libc::c_long, &mut attr)
}

/// `BPF_LINK_CREATE` of `prog` on the cgroup `dir` for `attach_type`.
fn link(prog: &OwnedFd, dir: &File, attach_type: bpf_attach_type) -> std::io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    attr.link_create.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
    attr.link_create.__bindgen_anon_2.target_fd = dir.as_fd().as_raw_fd() as u32;
    attr.link_create.attach_type = attach_type as u32;
    bpf_fd(bpf_cmd::BPF_LINK_CREATE as libc::c_long, &mut attr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_program_sets_r0_to_one_and_exits() {
        // The encoding of include/uapi/linux/bpf.h: `mov64 r0, 1` is 0xb7
        // with imm 1, `exit` is 0x95.
        let [mov, exit] = empty();
        assert_eq!(
            (mov.code, mov.dst_reg(), mov.src_reg(), mov.imm),
            (0xb7, 0, 0, 1)
        );
        assert_eq!((exit.code, exit.imm), (0x95, 0));
        assert_eq!(size_of::<bpf_insn>(), 8);
    }

    #[test]
    fn every_hook_stands_for_a_guard_program_and_fits_the_name_field() {
        let guards: Vec<&str> = HOOKS.iter().map(|h| h.guard).collect();
        assert_eq!(guards, ["egress", "connect4"]);
        assert!(HOOKS.iter().all(|h| h.name.to_bytes().len() <= 15));
    }
}
