//! The kernel side. `programs.rs` is the one table of programs and pinned
//! maps. `loader.rs` is the handle, [`Guard`], that opens the object, loads
//! the programs (`load.rs`), attaches them or adopts a pinned attachment
//! (`attach.rs`, pinned by `pins.rs`), and writes policies into their maps
//! (`policy_maps.rs`, with the prefixes every destination is compared with
//! first in `prefixes.rs`; `classify/` keeps every cgroup's rule for unit,
//! cgroup and pod entries). `inspect.rs` reads back what is in force,
//! `rules.rs` whom its rules name, `counters.rs` what the programs counted,
//! `records.rs` what they report; `requests.rs` the agent's side of
//! request-level judgement, `usage.rs` what it counted of requests.
//! `place.rs` settles where the guard goes (the cgroup, the hierarchy, a
//! namespace left for the host's) before anything else runs.
//! `btf.rs`, `offsets.rs`, `features.rs` and `identity.rs` are what the
//! programs are told of the kernel and the host; `sys.rs` and `batch.rs`
//! the `bpf(2)` commands aya does not wrap.
//!
//! Each part has its own error; [`GuardError`] wraps them (as aya's
//! `EbpfError` wraps `MapError`, `ProgramError` and `PinError`).
//! `loader.rs` imports the parts, and no part imports it.
//!
//! Imports: `policy` only. Nothing here logs decisions, talks to systemd or
//! prints for the operator: that is `daemon` and `cli`, which import this.

pub mod attach;
pub mod batch;
pub mod btf;
pub mod cgroup;
pub mod classify;
pub mod counters;
pub mod features;
pub mod forward;
mod id_rules;
pub mod identity;
pub mod inspect;
mod load;
pub mod loader;
mod maps;
pub mod memlock;
pub mod netfilter;
pub mod offsets;
pub mod pins;
pub mod place;
mod policy_maps;
mod prefixes;
pub mod programs;
pub mod records;
pub mod refused;
pub mod request_records;
pub mod requests;
mod retire;
pub mod rules;
pub mod sys;
pub mod usage;

pub use self::{
    attach::AttachReport,
    counters::Counters,
    load::LoadError,
    loader::{Guard, GuardError, LoadTimes},
    policy_maps::Stamp,
};
