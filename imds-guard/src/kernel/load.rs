//! Loading the programs of [`programs::TABLE`] into the kernel (the
//! verifier), and what the verifier said of each.

use std::{
    sync::{Mutex, PoisonError},
    time::Instant,
};

use aya::{Ebpf, programs::ProgramError};
use imds_guard_common as common;

use super::{features, offsets, programs};

/// A program the kernel would not load, or an object that is not ours.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("the eBPF object has a program {0} that is in no row of the agent's program table")]
    UnknownProgram(String),
    #[error(
        "this kernel ({release}) does not let program {program} call {helper}, which it needs; \
         the verifier refused it"
    )]
    MissingHelper {
        release: String,
        program: &'static str,
        helper: String,
    },
    #[error("cannot load program {name} into the kernel")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
}

/// Loads every program of [`programs::TABLE`] into the kernel. The
/// verifier is most of a start's time: two CPUs take the programs from
/// one queue. The build without `bpf_loop` has no request programs.
pub(super) fn load_all(ebpf: &mut Ebpf, build: features::Build) -> Result<(), LoadError> {
    let expected = || {
        programs::aya_loaded()
            .filter(move |row| build == features::Build::Loop || !row.kind.loop_only())
            .map(|row| row.name)
    };
    let mut found = Vec::with_capacity(expected().count());
    for (name, program) in ebpf.programs_mut() {
        if name == common::PROGRAM_FORWARD {
            // Loaded by `kernel/netfilter/`, as a netfilter program.
            continue;
        }
        let name = expected()
            .find(|p| *p == name)
            .ok_or(LoadError::UnknownProgram(name.to_owned()))?;
        found.push((name, program));
    }
    for name in expected() {
        if !found.iter().any(|(loaded, _)| *loaded == name) {
            return Err(LoadError::MissingProgram(name));
        }
    }
    // Heaviest first, then each CPU takes the next program when it is done
    // with one, so that both finish close together whatever order aya lists
    // them in (a hash map's, different at every start): a fixed half each
    // left one CPU with up to three quarters of the walk.
    found.sort_by_key(|(name, program)| (walk_rank(program), *name));
    let queue = Mutex::new(found.into_iter());
    let next = || queue.lock().unwrap_or_else(PoisonError::into_inner).next();
    let load = || -> Result<(), LoadError> {
        while let Some((name, program)) = next() {
            let started = Instant::now();
            load_one(program)
                .ok_or(LoadError::MissingProgram(name))?
                .map_err(|source| refused(name, source))?;
            tracing::debug!(
                program = name,
                micros = started.elapsed().as_micros() as u64,
                "loaded"
            );
        }
        Ok(())
    };
    std::thread::scope(|scope| {
        let other = scope.spawn(load);
        let here = load();
        let there = other
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        here.and(there)
    })?;
    for (program, insns) in verified_insns(ebpf) {
        tracing::debug!(program, insns, "verified");
    }
    Ok(())
}

/// Loads the programs one at a time, going on past a refusal: for each,
/// how many instructions the verifier walked (`None` before Linux 5.16),
/// or why it was refused.
pub(super) fn load_each(ebpf: &mut Ebpf) -> Vec<(String, Result<Option<u32>, String>)> {
    let mut report = Vec::new();
    for (name, program) in ebpf.programs_mut() {
        if name == common::PROGRAM_FORWARD {
            continue;
        }
        let outcome = match load_one(program) {
            None => Err("not a program of ours".to_owned()),
            Some(Ok(())) => Ok(verified(program)),
            Some(Err(e)) => Err(refusal(&e)),
        };
        report.push((name.to_owned(), outcome));
    }
    report
}

/// How many instructions the verifier walked for each loaded program.
pub(super) fn verified_insns(ebpf: &Ebpf) -> Vec<(String, Option<u32>)> {
    ebpf.programs()
        .filter(|(name, _)| *name != common::PROGRAM_FORWARD)
        .map(|(name, p)| (name.to_owned(), verified(p)))
        .collect()
}

/// A program the kernel refused: named for the helper it lacks when the
/// verifier says so, otherwise with the verifier's whole log.
fn refused(name: &'static str, source: ProgramError) -> LoadError {
    if let ProgramError::LoadError { verifier_log, .. } = &source {
        if let Some(helper) = features::missing_helper(&verifier_log.to_string()) {
            return LoadError::MissingHelper {
                release: offsets::kernel_release(),
                program: name,
                helper: helper.to_owned(),
            };
        }
    }
    LoadError::Program { name, source }
}

/// The error of a program the kernel refused, with the verifier log's last
/// lines (where it says why).
fn refusal(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(12)..].join("\n");
            format!("{io_error}: {tail}")
        }
        other => other.to_string(),
    }
}

/// How many instructions the verifier walked for a loaded program (`None`
/// before Linux 5.16).
fn verified(program: &aya::programs::Program) -> Option<u32> {
    program
        .info()
        .ok()
        .and_then(|i| i.verified_instruction_count())
}

/// Which programs the verifier walks longest, by kind (0 first): the
/// cgroup classifier's tracepoints (`cgroup_mkdir` walks 67,557 of the
/// 237,388 instructions of every program on 6.18), then `egress`, then
/// the sock_addr programs (about 33,000 each). Only the order of the
/// loads; a wrong rank costs time, never a decision.
fn walk_rank(program: &aya::programs::Program) -> u8 {
    match program {
        aya::programs::Program::RawTracePoint(_) => 0,
        aya::programs::Program::CgroupSkb(_) => 1,
        _ => 2,
    }
}

/// Loads one program of the kinds the guard has; `None` for any other.
fn load_one(program: &mut aya::programs::Program) -> Option<Result<(), ProgramError>> {
    match program {
        aya::programs::Program::CgroupSockAddr(p) => Some(p.load()),
        aya::programs::Program::CgroupSkb(p) => Some(p.load()),
        aya::programs::Program::RawTracePoint(p) => Some(p.load()),
        aya::programs::Program::SockOps(p) => Some(p.load()),
        aya::programs::Program::SkMsg(p) => Some(p.load()),
        _ => None,
    }
}
