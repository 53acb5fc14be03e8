//! The agent's side of request-level judgement (issue 23), beside the
//! policy maps (`policy_maps.rs` writes each generation's rules and entry
//! scopes): the `sk_msg` programs attached to their sockhash for good, the
//! refusal of request tables where those programs cannot run, the
//! sockhash's size, and direct writes of the maps for tests.

use aya::{
    Ebpf,
    maps::{
        HashMap as AyaHashMap, SockHash,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{ProgramError, SkMsg},
};
use imds_guard_common::{self as common, EntryFlags, EntryKey, ReqKey, ReqRule};

use super::{
    features,
    maps::{self, MapError},
    offsets, programs,
};
use crate::policy::Policy;

/// Request-level judgement could not be set up, or is not available.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(
        "request-level rules ([requests.*], [imdsv2], [attribution]) need bpf_loop \
         (Linux 5.17), and the programs loaded on this kernel ({release}) are the unrolled build \
         without it (the kernel lacks it, or IMDS_GUARD_PROGRAMS asked for that build): the \
         programs that judge requests cannot run here, so the policy is refused rather than \
         let these callers reach the whole service"
    )]
    NeedLoop { release: String },
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("cannot attach program {name} to map {map}")]
    SkMsg {
        name: &'static str,
        map: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error(transparent)]
    Map(#[from] MapError),
}

/// The environment variable that lowers the sockhash of judged sockets'
/// size, for tests that fill it (`IMDS_GUARD_TEST_REQ_SOCKS=N`, at least
/// 1, at most the default [`REQ_SOCKS`]).
pub const REQ_SOCKS_ENV: &str = "IMDS_GUARD_TEST_REQ_SOCKS";
/// How many judged sockets the sockhash holds (`REQ_SOCKS` in the
/// programs): sockets to a protected address of callers allowed some
/// requests, a handful on a host; one that finds it full cannot send.
pub const REQ_SOCKS: u32 = 65_536;

pub(super) fn req_socks() -> u32 {
    std::env::var(REQ_SOCKS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .map_or(REQ_SOCKS, |n| n.clamp(1, REQ_SOCKS))
}

/// Refuses a policy with request-level tables where the programs that
/// judge requests are not loaded (the build without `bpf_loop`).
pub(super) fn supported(build: features::Build, policy: &Policy) -> Result<(), RequestError> {
    if build == features::Build::Loop || policy.spec.requests.is_empty() {
        return Ok(());
    }
    Err(RequestError::NeedLoop {
        release: offsets::kernel_release(),
    })
}

/// Attaches each `sk_msg` program of `ebpf` to its sockhash, for good:
/// aya's link would detach it as it drops (`SkMsgLink`'s `Drop`), so it is
/// taken and forgotten; the attachment then lasts as long as the map has a
/// user reference (the agent, or its pin). None in the build without
/// `bpf_loop`.
pub(super) fn attach_sk_msgs(ebpf: &mut Ebpf, build: features::Build) -> Result<(), RequestError> {
    if build != features::Build::Loop {
        return Ok(());
    }
    for (row, map_name) in programs::sk_msgs() {
        let name = row.name;
        let map = ebpf.map(map_name).ok_or(MapError::Missing(map_name))?;
        let fd = SockHash::<_, u64>::try_from(map)
            .map_err(maps::access(map_name))?
            .fd()
            .try_clone()
            .map_err(maps::write(map_name))?;
        let err = |source| RequestError::SkMsg {
            name,
            map: map_name,
            source,
        };
        let program: &mut SkMsg = ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or(RequestError::MissingProgram(name))?;
        let id = program.attach(&fd).map_err(err)?;
        let link = program.take_link(id).map_err(err)?;
        std::mem::forget(link);
    }
    Ok(())
}

/// Writes the scope of policy entry `entry` of `generation` into
/// `ENTRY_FLAGS`, outside any policy: for tests.
pub(super) fn write_entry_flags(
    ebpf: &mut Ebpf,
    generation: u32,
    entry: u32,
    flags: EntryFlags,
) -> Result<(), MapError> {
    let name = common::MAP_ENTRY_FLAGS;
    let map = ebpf.map_mut(name).ok_or(MapError::Missing(name))?;
    let mut map: AyaHashMap<_, EntryKey, EntryFlags> =
        AyaHashMap::try_from(map).map_err(maps::access(name))?;
    map.insert(EntryKey { generation, entry }, flags, 0)
        .map_err(maps::access(name))
}

/// Writes one request rule of rule set `ruleset` into `generation` of
/// `REQ_RULES` (`method` one of `imds_guard_common::req_method`; a `path`
/// ending in `/` is a subtree), numbered `rule` for records, outside any
/// policy: for tests.
pub(super) fn write_request_rule(
    ebpf: &mut Ebpf,
    generation: u32,
    ruleset: u16,
    method: u8,
    path: &str,
    rule: u32,
) -> Result<(), MapError> {
    let name = common::MAP_REQ_RULES;
    let (prefix_len, key) = ReqKey::rule(generation as u8, ruleset, method, path.as_bytes())
        .ok_or(MapError::Write {
            name,
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
    let map = ebpf.map_mut(name).ok_or(MapError::Missing(name))?;
    let mut map: LpmTrie<_, ReqKey, ReqRule> =
        LpmTrie::try_from(map).map_err(maps::access(name))?;
    map.insert(&Key::new(prefix_len, key), ReqRule { rule, flags: 0 }, 0)
        .map_err(maps::access(name))
}

/// How many sockets `REQ_SOCKS` holds now.
pub(super) fn judged_sockets(ebpf: &Ebpf) -> Result<usize, MapError> {
    let name = common::MAP_REQ_SOCKS;
    let map = ebpf.map(name).ok_or(MapError::Missing(name))?;
    let map = SockHash::<_, u64>::try_from(map).map_err(maps::access(name))?;
    Ok(map.keys().filter(Result::is_ok).count())
}
