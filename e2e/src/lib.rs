//! Harness for the privileged end-to-end tests.
//!
//! Every test builds its own world and tears it down on drop, even when it
//! panics:
//!
//! - [`Netns`]: a network namespace whose loopback carries the metadata
//!   addresses, so no test traffic ever reaches the real metadata service of
//!   the machine running the tests;
//! - [`TestCgroup`]: a child cgroup for the agent to guard and probes to join;
//! - [`FakeImds`]: an IMDSv2 look-alike served inside the namespace;
//! - [`Probe`]: the `imds-probe` binary, one action as a given uid/gid;
//! - [`Agent`]: the `imds-guard` binary, with its JSON log collected.
//!
//! ```no_run
//! use imds_guard_e2e::{Action, FakeImds, IMDS_V4, Netns, Probe, TestCgroup};
//!
//! if !imds_guard_e2e::privileged_or_skip("example") {
//!     return;
//! }
//! let netns = Netns::new();
//! let cgroup = TestCgroup::new();
//! let imds = FakeImds::start(&netns);
//! let result = Probe::new(&netns, &cgroup).run(Action::http(IMDS_V4, 80));
//! assert_eq!(result.assert_ok().body, imds.credentials_body());
//! ```

use std::net::{Ipv4Addr, Ipv6Addr};

mod action;
mod agent;
mod bins;
mod bpffs;
mod cgroup;
pub mod client;
mod fake_imds;
mod files;
mod netns;
mod probe;
mod skip;
pub mod slowdown;
mod util;

pub use self::{
    action::{Action, ProbeResult},
    agent::{Agent, field},
    bins::{imds_guard_bin, probe_bin},
    bpffs::TestBpffs,
    cgroup::{TestCgroup, cgroup2_root},
    fake_imds::{FakeImds, IMDS_PORT, PLAIN_PORT, ROLE, UDP_PORT, tcp_addrs, udp_addrs},
    files::{TempDir, write_policy},
    netns::Netns,
    probe::{NOBODY, Probe},
    skip::privileged_or_skip,
};

/// The IPv4 instance metadata address.
pub const IMDS_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The IPv6 instance metadata address (EC2 Nitro instances).
pub const IMDS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
