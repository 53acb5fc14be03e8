//! Harness for the privileged end-to-end tests.
//!
//! Every test builds its own world and tears it down on drop, even when it
//! panics. [`Sandbox`] puts the pieces together (with or without the agent);
//! the pieces are:
//!
//! - [`Netns`]: a network namespace whose loopback carries the metadata
//!   addresses, so no test traffic ever reaches the real metadata service of
//!   the machine running the tests;
//! - [`TestCgroup`]: a child cgroup for the agent to guard and probes to join;
//! - [`FakeImds`]: an IMDSv2 look-alike served inside the namespace;
//! - [`Probe`]: the `imds-probe` binary, one action as a given uid/gid (or
//!   [`HeldProbe`]: one kept-alive connection, a fetch on it when asked);
//! - [`Agent`]: the `imds-guard` binary, with its JSON log collected;
//! - [`TestUser`]: a user of the test's own (in a [`PrivateEtc`]), with a
//!   cgroup subtree delegated to it;
//! - [`fake_systemctl`]: a `systemctl` that knows the test's units.
//!
//! [`Topology`] builds a container host instead (a host namespace that
//! forwards, containers behind it, the metadata service one hop away), for
//! the packet-path [`Attack`]s, with an [`Oracle`] that counts what
//! arrives at the metadata addresses.
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
mod attack;
mod bins;
mod bpffs;
pub mod cgroup;
pub mod client;
mod etc;
mod evasion;
mod failed_push;
mod fake_imds;
mod files;
mod imdsv2;
mod mptcp_server;
mod netns;
mod oracle;
mod outcome;
mod probe;
mod prober;
mod requests;
mod sandbox;
mod skip;
pub mod slowdown;
mod stall;
mod systemctl;
mod topology;
mod tricks;
mod user;
mod util;
mod workload;

pub use self::{
    action::{Action, ProbeResult},
    agent::{Agent, field},
    attack::{Attack, IfName, tun_node},
    bins::{churn_bin, imds_guard_bin, probe_bin},
    bpffs::TestBpffs,
    cgroup::{TestCgroup, cgroup2_root},
    etc::PrivateEtc,
    evasion::{Evasion, HEAD_CASES, VMSPLICE_MARK, Way, allowed_prefix, head_case},
    failed_push::{FailedPush, Pushed},
    fake_imds::{
        FakeImds, IMDS_PORT, INSTANCE_ID, PLAIN_PORT, ROLE, UDP_PORT, tcp_addrs, udp_addrs,
    },
    files::{TempDir, configmap_write, write_policy},
    mptcp_server::MptcpServer,
    netns::Netns,
    oracle::{Arrivals, Counts, Oracle},
    probe::{HeldProbe, NOBODY, Probe},
    prober::{Prober, flood, send_later_fragment},
    requests::{INSTANCE_ID_PATH, Script, credentials_path},
    sandbox::{LOG, READY, Sandbox},
    skip::privileged_or_skip,
    stall::{
        FILLER_LEN, STALL_PORT, STALLED_BODY, STALLED_LEN, STALLED_PATH, Serving, Stalled,
        StalledListener, filler_request, next_request, stalled_request,
    },
    systemctl::{cgroup_path, fake_systemctl},
    topology::{
        Container, ContainerKind, MPTCP_PORT, Reached, Topology, TopologyBuilder, TunDevice,
        UNPROTECTED_V4, UNPROTECTED_V6, UPLINK_HOST_V4, UPLINK_HOST_V6, UPLINK_IMDS_V4,
        UPLINK_IMDS_V6, USERNS_ROOT, UserNamespace,
    },
    tricks::Trick,
    user::TestUser,
    workload::{ECS_CREDENTIALS, ECS_INTROSPECTION, EKS_POD_IDENTITY_V6, TcpService},
};

/// The IPv4 instance metadata address.
pub const IMDS_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The IPv6 instance metadata address (EC2 Nitro instances).
pub const IMDS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
