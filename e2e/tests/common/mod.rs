//! A ready sandbox for the guard tests: namespace, fake IMDS, child cgroup,
//! policy file, and the agent attached to that cgroup.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::time::Duration;

use imds_guard_e2e::{Agent, FakeImds, Netns, Probe, TempDir, TestCgroup, write_policy};

pub const READY: Duration = Duration::from_secs(30);
pub const LOG: Duration = Duration::from_secs(10);

/// Field order matters for drop: the agent detaches before the cgroup and
/// the namespace go away.
pub struct Sandbox {
    pub agent: Agent,
    pub imds: FakeImds,
    pub cgroup: TestCgroup,
    pub netns: Netns,
    pub dir: TempDir,
}

impl Sandbox {
    /// Starts the agent with `policy` and waits until it is enforcing.
    pub fn start(policy: &str) -> Self {
        Self::start_with(policy, &[])
    }

    pub fn start_with(policy: &str, extra_args: &[&str]) -> Self {
        let netns = Netns::new();
        let cgroup = TestCgroup::new();
        let imds = FakeImds::start(&netns);
        let dir = TempDir::new();
        let config = write_policy(dir.path(), policy);
        let agent = Agent::start(&config, &cgroup, extra_args);
        agent.wait_ready(READY);
        Self {
            agent,
            imds,
            cgroup,
            netns,
            dir,
        }
    }

    /// A probe in the sandbox as `uid`/`gid`.
    pub fn probe(&self, uid: u32, gid: u32) -> Probe {
        Probe::new(&self.netns, &self.cgroup).uid(uid).gid(gid)
    }
}
