//! The kernel side: loading the eBPF programs (`loader.rs`), writing
//! policies into their maps (`policy_maps.rs`), attaching or adopting them
//! and pinning (`pins.rs`), and reading back what is in force (`inspect.rs`)
//! and what they report (`records.rs`). `programs.rs` is the one table of
//! programs and pinned maps; `sys.rs` the `bpf(2)` commands aya does not
//! wrap; `offsets.rs`
//! and `identity.rs` what the programs are told of the kernel's layout and
//! of the host's namespaces. `classify/` keeps every cgroup's rule for unit,
//! cgroup and pod entries.
//!
//! Imports: `policy` only. Nothing here logs decisions, talks to systemd or
//! prints for the operator: that is `daemon` and `cli`, which import this.

pub mod batch;
pub mod btf;
pub mod cgroup;
pub mod classify;
pub mod features;
pub mod forward;
mod id_rules;
pub mod identity;
pub mod inspect;
pub mod loader;
pub mod offsets;
pub mod pins;
mod policy_maps;
pub mod programs;
pub mod records;
pub mod refused;
pub mod sys;

pub use self::loader::{AttachReport, Counters, Guard, GuardError, Stamp};
