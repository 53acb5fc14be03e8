//! One sandbox for every privileged test: a network namespace with the
//! metadata addresses and a fake IMDS behind them, a child cgroup for the
//! guard and the probes, a private bpf filesystem for pins, and a
//! directory for the policy. Built with [`Sandbox::new`] (no agent) or
//! [`Sandbox::with_agent`] (the agent attached and enforcing); everything
//! is removed on drop, in field order, even when the test panics.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use serde_json::Value;

use crate::{
    Agent, FakeImds, Netns, Probe, TempDir, TestBpffs, TestCgroup, imds_guard_bin, write_policy,
};

/// How long an agent may take to say it is enforcing.
pub const READY: Duration = Duration::from_secs(30);
/// How long a decision record may take to reach the agent's log.
pub const LOG: Duration = Duration::from_secs(10);

/// Field order is drop order: the agent stops before the pins, the server
/// before the namespace it lives in, the cgroup and namespace last.
#[derive(Debug)]
pub struct Sandbox {
    agent: Option<Agent>,
    pub imds: FakeImds,
    pub bpffs: TestBpffs,
    pub cgroup: TestCgroup,
    pub netns: Netns,
    pub dir: TempDir,
}

impl Sandbox {
    /// A sandbox with nothing guarding it.
    pub fn new() -> Self {
        Self::in_cgroup(TestCgroup::new())
    }

    /// [`Sandbox::new`] whose guard and probes are in `cgroup` (one the
    /// test made, such as [`TestCgroup::kubepods`]).
    pub fn in_cgroup(cgroup: TestCgroup) -> Self {
        let netns = Netns::new();
        let imds = FakeImds::start(&netns);
        Self {
            agent: None,
            imds,
            bpffs: TestBpffs::new(),
            cgroup,
            netns,
            dir: TempDir::new(),
        }
    }

    /// A sandbox whose agent enforces `policy`.
    pub fn with_agent(policy: &str) -> Self {
        Self::with_agent_args(policy, &[])
    }

    /// [`Sandbox::with_agent`] with extra `run` arguments.
    pub fn with_agent_args(policy: &str, extra_args: &[&str]) -> Self {
        let mut sb = Self::new();
        sb.policy(policy);
        let agent = sb.start_agent(extra_args);
        sb.agent = Some(agent);
        sb
    }

    /// Starts an agent on the sandbox's policy (as [`Sandbox::start_agent`])
    /// and keeps it as the one [`Sandbox::agent`] returns: for a test that
    /// shows a path works before it guards it.
    pub fn guard(&mut self, extra_args: &[&str]) {
        let agent = self.start_agent(extra_args);
        self.agent = Some(agent);
    }

    /// The agent [`Sandbox::with_agent`] started.
    pub fn agent(&self) -> &Agent {
        self.agent
            .as_ref()
            .unwrap_or_else(|| panic!("this sandbox was built without an agent"))
    }

    /// Writes `toml` as the sandbox's policy file and returns its path.
    pub fn policy(&self, toml: &str) -> PathBuf {
        write_policy(self.dir.path(), toml)
    }

    /// The policy file [`Sandbox::policy`] writes.
    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.toml")
    }

    /// The pin directory in the sandbox's own bpf filesystem.
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.pin_dir()
    }

    /// Starts an agent on the sandbox's policy, cgroup and pins, and waits
    /// until it is enforcing. The caller holds it: declare it after the
    /// sandbox, so that it stops first.
    pub fn start_agent(&self, extra_args: &[&str]) -> Agent {
        let agent = self.spawn_agent(extra_args, &[]);
        agent.wait_ready(READY);
        agent
    }

    /// Starts an agent without waiting for it, with extra environment
    /// variables.
    pub fn spawn_agent(&self, extra_args: &[&str], env: &[(&str, &str)]) -> Agent {
        Agent::start_pinned_env(
            &self.netns,
            &self.policy_path(),
            &self.cgroup,
            &self.pin_dir(),
            extra_args,
            env,
        )
    }

    /// A probe in the sandbox, as `nobody` unless told otherwise.
    pub fn probe(&self) -> Probe {
        Probe::new(&self.netns, &self.cgroup)
    }

    /// A probe as `uid`, with `gid` as its group.
    pub fn probe_as(&self, uid: u32, gid: u32) -> Probe {
        self.probe().uid(uid).gid(gid)
    }

    /// Runs `imds-guard ARGS --pin-dir PINS` in the sandbox's network
    /// namespace (where `detach` removes the agent's forward table) and
    /// returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.netns.path().display()))
            .arg("--")
            .arg(imds_guard_bin())
            .args(args)
            .arg("--pin-dir")
            .arg(self.pin_dir())
            .output()
            .unwrap_or_else(|e| panic!("running imds-guard {args:?}: {e}"))
    }

    /// `imds-guard status --json`: its exit code and its report.
    pub fn status(&self) -> (Option<i32>, Value) {
        let out = self.cli(&["status", "--json"]);
        let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status printed no JSON ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code(), json)
    }

    /// A free loopback port of the sandbox's namespace (bound and released;
    /// an agent, which runs there, binds it next: `--metrics-listen`).
    pub fn free_port(&self) -> u16 {
        self.netns.in_netns(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap_or_else(|e| panic!("a free loopback port: {e}"))
        })
    }

    /// `GET /metrics` from the agent's endpoint on `port`, on the loopback
    /// of the sandbox's namespace (no metadata address): the whole
    /// response, status line first.
    pub fn scrape_metrics(&self, port: u16) -> String {
        use std::io::{Read as _, Write as _};
        self.netns.in_netns(|| {
            let mut out = String::new();
            std::net::TcpStream::connect(("127.0.0.1", port))
                .and_then(|mut s| {
                    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
                    s.read_to_string(&mut out)
                })
                .unwrap_or_else(|e| panic!("scraping the metrics on port {port}: {e}"));
            out
        })
    }

    /// The sandbox's namespace, as `nsenter --net=` takes it.
    pub fn netns_path(&self) -> &Path {
        self.netns.path()
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}
