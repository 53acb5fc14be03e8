//! `imds-guard-bench`: what the guard costs, measured against no guard and
//! against the iptables and nftables rules `imds-guard render` emits for the
//! same policy (issue 5). Run it as root, after `cargo build --release
//! --bins`:
//!
//! ```text
//! cargo run --release -p imds-guard-e2e --bin imds-guard-bench -- [--quick]
//! ```
//!
//! Everything runs in network namespaces and child cgroups the bench makes
//! (see `imds_guard_e2e`), like the privileged tests: no traffic ever leaves
//! for the host's own metadata service. The results go to stdout and, for a
//! full run, to `docs/BENCHMARKS.md` and `docs/bench-scale.svg`.

#[path = "../bench/mod.rs"]
mod bench;

fn main() -> std::process::ExitCode {
    bench::main()
}
