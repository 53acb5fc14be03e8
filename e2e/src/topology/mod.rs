//! A container host in namespaces, for the packet-path attacks (see
//! [`Attack`](crate::Attack)):
//!
//! ```text
//!   container c1 (netns)         ──veth──┐
//!   container u1 (userns+netns)  ──veth──┤  host (netns)  ──veth "up0"──  imds (netns)
//!   TUN device of an unprivileged user ──┘  forwards v4+v6                169.254.169.254, fd00:ec2::254
//!                                           routes the two metadata        on lo, fake IMDS, MPTCP server,
//!                                           addresses via up0              the oracle's counters
//! ```
//!
//! - "host" is where the agent runs ([`TopologyBuilder::agent`] starts it
//!   there with `nsenter --net`). It forwards (IPv4 and IPv6, with strict
//!   reverse-path filtering, as container hosts do) and routes
//!   169.254.169.254/32 and fd00:ec2::254/128 to its uplink.
//! - "imds" holds the metadata addresses and the [`FakeImds`] behind them,
//!   and the [`Oracle`] counting every packet that arrives for them.
//! - Each container has its own namespace, a veth to the host, addresses
//!   in 10.88.N.0/24 and fd42:88:N::/64 and its default routes via the
//!   host. A [`ContainerKind::Userns`] container's namespace is owned by a
//!   user namespace whose root is uid 100000 outside (LXC unprivileged,
//!   podman `--userns=auto`, Kubernetes `hostUsers: false`): its root has
//!   `CAP_NET_ADMIN` and `CAP_NET_RAW` over that namespace and nothing
//!   else. A helper process (`sleep`, in the guarded cgroup) holds both
//!   namespaces; probes join them through `/proc/PID/ns/*`
//!   ([`container`]).
//! - A TUN device in the host namespace may be owned by an unprivileged
//!   user ([`TopologyBuilder::tun`]), like a VPN client's ([`tun`]).
//!
//! Every packet to a metadata address stays inside these namespaces: none
//! of them is the machine's own, and the host's routes to the metadata
//! addresses point at "imds". Everything is removed on drop, in field
//! order, even when the test panics.

mod container;
mod ready;
mod tun;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use self::ready::{no_dad, wait_until_up};
pub use self::{
    container::{Container, ContainerKind, USERNS_ROOT, UserNamespace},
    tun::TunDevice,
};
use crate::{
    Action, Agent, FakeImds, IMDS_V4, IMDS_V6, Netns, Probe, ProbeResult, READY, TempDir,
    TestBpffs, TestCgroup,
    mptcp_server::MptcpServer,
    netns::ip_at,
    oracle::{Arrivals, Oracle},
    write_policy,
};

/// The port of the MPTCP server in the imds namespace (not one the fake
/// IMDS uses, so that it can listen on every address).
pub const MPTCP_PORT: u16 = 8000;
/// An unprotected destination for the `nat` attack to name (TEST-NET-1,
/// RFC 5737; the IPv6 documentation prefix, RFC 3849).
pub const UNPROTECTED_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);
pub const UNPROTECTED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x80);
/// The host's and the imds namespace's ends of the uplink.
pub const UPLINK_HOST_V4: Ipv4Addr = Ipv4Addr::new(10, 254, 0, 1);
pub const UPLINK_IMDS_V4: Ipv4Addr = Ipv4Addr::new(10, 254, 0, 2);
pub const UPLINK_HOST_V6: Ipv6Addr = Ipv6Addr::new(0xfd42, 0x254, 0, 0, 0, 0, 0, 1);
pub const UPLINK_IMDS_V6: Ipv6Addr = Ipv6Addr::new(0xfd42, 0x254, 0, 0, 0, 0, 0, 2);
/// How long counters must stay still before an attempt is over, and how
/// long an attempt may wait for them to.
const QUIET: Duration = Duration::from_millis(150);
const SETTLE_MAX: Duration = Duration::from_secs(3);

/// Runs `ip CMD` (split on whitespace) in the namespace at `netns`.
fn ip(netns: &Path, cmd: &str) -> Result<(), String> {
    ip_at(netns, &cmd.split_whitespace().collect::<Vec<_>>())
}

/// What [`Topology::builder`] will build.
#[derive(Debug, Default)]
pub struct TopologyBuilder {
    containers: Vec<(String, ContainerKind)>,
    tun_owner: Option<u32>,
    mptcp: bool,
    policy: Option<String>,
    agent_args: Vec<String>,
}

impl TopologyBuilder {
    /// Adds a container named `name` (numbered from 1 in the order added).
    #[must_use]
    pub fn container(mut self, name: &str, kind: ContainerKind) -> Self {
        self.containers.push((name.to_owned(), kind));
        self
    }

    /// Adds a TUN device in the host namespace owned by `uid`.
    #[must_use]
    pub fn tun(mut self, uid: u32) -> Self {
        self.tun_owner = Some(uid);
        self
    }

    /// Starts an MPTCP server in the imds namespace, which announces both
    /// metadata addresses to its clients (`ip mptcp endpoint add ADDR
    /// signal`).
    #[must_use]
    pub fn mptcp_server(mut self) -> Self {
        self.mptcp = true;
        self
    }

    /// Starts the agent in the host namespace, enforcing `policy` on the
    /// guarded cgroup, and waits until it is ready.
    #[must_use]
    pub fn agent(mut self, policy: &str) -> Self {
        self.policy = Some(policy.to_owned());
        self
    }

    /// [`TopologyBuilder::agent`] with more arguments for `run`.
    #[must_use]
    pub fn agent_with(mut self, policy: &str, args: &[&str]) -> Self {
        self.agent_args = args.iter().map(|&a| a.to_owned()).collect();
        self.agent(policy)
    }

    pub fn build(self) -> Topology {
        Topology::build(self)
    }
}

/// What one attempt did: what the oracle counted, what the fake IMDS
/// served, and what the probe reported.
#[derive(Debug, Clone)]
pub struct Reached {
    pub arrived: Arrivals,
    /// HTTP requests the fake IMDS answered during the attempt.
    pub served: usize,
    /// Whether the probe came back with the fake IMDS's credentials.
    pub credentials: bool,
    pub probe: ProbeResult,
}

impl Reached {
    /// Packets that arrived for 169.254.169.254.
    pub fn packets_v4(&self) -> u64 {
        self.arrived.v4.all
    }
    /// Packets that arrived for fd00:ec2::254.
    pub fn packets_v6(&self) -> u64 {
        self.arrived.v6.all
    }
    /// Whether anything at all arrived for a metadata address.
    pub fn reached(&self) -> bool {
        self.arrived.total() > 0 || self.served > 0
    }
}

/// The container host; see the module doc. Field order is drop order.
#[derive(Debug)]
pub struct Topology {
    agent: Option<Agent>,
    mptcp: Option<MptcpServer>,
    tun: Option<TunDevice>,
    containers: Vec<Container>,
    pub imds: FakeImds,
    pub oracle: Oracle,
    pub bpffs: TestBpffs,
    /// The cgroup the agent guards, which every probe and container joins.
    pub cgroup: TestCgroup,
    pub imds_ns: Netns,
    pub host: Netns,
    pub dir: TempDir,
}

impl Topology {
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    fn build(spec: TopologyBuilder) -> Self {
        let dir = TempDir::new();
        let host = Netns::bare();
        let imds_ns = Netns::new();
        let cgroup = TestCgroup::new();
        let bpffs = TestBpffs::new();
        configure_host_and_uplink(&host, &imds_ns).unwrap_or_else(|e| panic!("{e}"));
        let oracle = Oracle::install(imds_ns.path()).unwrap_or_else(|e| panic!("{e}"));
        let imds = FakeImds::start(&imds_ns);
        let mut topo = Topology {
            agent: None,
            mptcp: None,
            tun: None,
            containers: Vec::new(),
            imds,
            oracle,
            bpffs,
            cgroup,
            imds_ns,
            host,
            dir,
        };
        for (i, (name, kind)) in spec.containers.iter().enumerate() {
            let index = u8::try_from(i + 1).unwrap_or_else(|_| panic!("too many containers"));
            let container = topo.add_container(name, *kind, index);
            topo.containers.push(container);
        }
        if let Some(owner) = spec.tun_owner {
            topo.tun = Some(TunDevice::create(topo.host.path(), owner));
        }
        if spec.mptcp {
            for addr in [IpAddr::from(IMDS_V4), IMDS_V6.into()] {
                ip(
                    topo.imds_ns.path(),
                    &format!("mptcp endpoint add {addr} signal"),
                )
                .unwrap_or_else(|e| panic!("{e}"));
            }
            topo.mptcp = Some(MptcpServer::start(&topo.imds_ns, MPTCP_PORT));
        }
        if let Some(policy) = spec.policy {
            let args: Vec<&str> = spec.agent_args.iter().map(String::as_str).collect();
            topo.agent = Some(topo.start_agent_with(&policy, &args));
        }
        topo
    }

    fn add_container(&self, name: &str, kind: ContainerKind, index: u8) -> Container {
        let container = Container::new(name, kind, index, &self.cgroup);
        self.wire_container(&container)
            .unwrap_or_else(|e| panic!("wiring container {name}: {e}"));
        container
    }

    /// A veth from the host (`ctrN`) to the container (`eth0`), addresses
    /// and default routes.
    fn wire_container(&self, c: &Container) -> Result<(), String> {
        let (host, inside) = (self.host.path(), c.netns_path());
        no_dad(&inside)?;
        let end = format!("ctr{}", c.index());
        ip(
            host,
            &format!(
                "link add {end} type veth peer name eth0 netns {}",
                inside.display()
            ),
        )?;
        ip(host, &format!("addr add {}/24 dev {end}", c.gateway_v4()))?;
        ip(
            host,
            &format!("-6 addr add {}/64 dev {end} nodad", c.gateway_v6()),
        )?;
        ip(host, &format!("link set {end} up"))?;
        ip(&inside, &format!("addr add {}/24 dev eth0", c.addr_v4()))?;
        ip(
            &inside,
            &format!("-6 addr add {}/64 dev eth0 nodad", c.addr_v6()),
        )?;
        ip(&inside, "link set eth0 up")?;
        ip(
            &inside,
            &format!("route add default via {}", c.gateway_v4()),
        )?;
        ip(
            &inside,
            &format!("-6 route add default via {}", c.gateway_v6()),
        )?;
        wait_until_up(host, &end, c.gateway_v6())?;
        wait_until_up(&inside, "eth0", c.addr_v6())
    }

    /// Starts another agent in the host namespace on the topology's pins
    /// and cgroup with `policy`, and waits until it is enforcing. The
    /// caller holds it (a restart, after [`Topology::kill_agent`]).
    pub fn start_agent(&self, policy: &str) -> Agent {
        self.start_agent_with(policy, &[])
    }

    /// [`Topology::start_agent`] with more arguments for `run`.
    pub fn start_agent_with(&self, policy: &str, args: &[&str]) -> Agent {
        let config = write_policy(self.dir.path(), policy);
        let agent = Agent::start_in_netns(
            &config,
            &self.cgroup,
            &self.bpffs.pin_dir(),
            self.host.path(),
            args,
        );
        agent.wait_ready(READY);
        agent
    }

    /// Rewrites the policy file the agents of this topology read (for a
    /// reload: then [`Agent::sighup`]).
    pub fn rewrite_policy(&self, policy: &str) {
        write_policy(self.dir.path(), policy);
    }

    /// Kills the agent the builder started with SIGKILL and waits for it:
    /// what it pinned and installed stays.
    pub fn kill_agent(&mut self) {
        if let Some(agent) = self.agent.take() {
            agent.kill();
        }
    }

    /// The container named `name`.
    pub fn container(&self, name: &str) -> &Container {
        self.containers
            .iter()
            .find(|c| c.name() == name)
            .unwrap_or_else(|| panic!("no container {name} in this topology"))
    }

    /// The TUN device [`TopologyBuilder::tun`] asked for.
    pub fn tun(&self) -> &TunDevice {
        self.tun
            .as_ref()
            .unwrap_or_else(|| panic!("this topology was built without a TUN device"))
    }

    /// The MPTCP server [`TopologyBuilder::mptcp_server`] started.
    pub fn mptcp(&self) -> &MptcpServer {
        self.mptcp
            .as_ref()
            .unwrap_or_else(|| panic!("this topology was built without an MPTCP server"))
    }

    /// The agent [`TopologyBuilder::agent`] started.
    pub fn agent(&self) -> &Agent {
        self.agent
            .as_ref()
            .unwrap_or_else(|| panic!("this topology was built without an agent"))
    }

    /// A process of the host itself, in the guarded cgroup, as `nobody`.
    pub fn host_probe(&self) -> Probe {
        Probe::new(&self.host, &self.cgroup)
    }

    /// Lets the in-kernel MPTCP path manager of the namespace at `netns`
    /// accept one announced address and open one subflow to it (`ip mptcp
    /// limits set add_addr_accepted 1 subflows 1`; both are 0 and 2 by
    /// default, so a host accepts no announcement until configured to).
    pub fn accept_add_addr(&self, netns: &Path) {
        ip(netns, "mptcp limits set add_addr_accepted 1 subflows 1")
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Runs `action` with `probe` and reports what reached the metadata
    /// addresses meanwhile. Waits until the counters have been still for
    /// a moment, so packets a kworker sends after the probe exits count.
    pub fn attempt(&self, probe: &Probe, action: Action) -> Reached {
        let before = self.oracle.read();
        let served_before = self.imds.requests_served();
        let result = probe.run(action);
        let deadline = Instant::now() + SETTLE_MAX;
        let mut last = self.oracle.read();
        loop {
            thread::sleep(QUIET);
            let now = self.oracle.read();
            let still = now == last;
            last = now;
            if still || Instant::now() >= deadline {
                break;
            }
        }
        let served = self.imds.requests_served() - served_before;
        Reached {
            arrived: last.since(before),
            served,
            credentials: result.ok && result.body == self.imds.credentials_body(),
            probe: result,
        }
    }
}

/// Makes `host` a router with an uplink to `imds` that carries the routes
/// to the metadata addresses. Sysctls are per namespace: these change the
/// test's namespaces only.
fn configure_host_and_uplink(host: &Netns, imds: &Netns) -> Result<(), String> {
    no_dad(host.path())?;
    no_dad(imds.path())?;
    for (key, value) in [
        ("net/ipv4/ip_forward", "1"),
        ("net/ipv6/conf/all/forwarding", "1"),
        // Strict reverse-path filtering, as many container hosts have: the
        // spoofed sources the attacks use are on the right side anyway.
        ("net/ipv4/conf/all/rp_filter", "1"),
        ("net/ipv4/conf/default/rp_filter", "1"),
    ] {
        host.write_sysctl(key, value)?;
    }
    let (h, i) = (host.path(), imds.path());
    ip(
        h,
        &format!(
            "link add up0 type veth peer name eth0 netns {}",
            i.display()
        ),
    )?;
    ip(h, &format!("addr add {UPLINK_HOST_V4}/30 dev up0"))?;
    ip(h, &format!("-6 addr add {UPLINK_HOST_V6}/64 dev up0 nodad"))?;
    ip(h, "link set up0 up")?;
    ip(i, &format!("addr add {UPLINK_IMDS_V4}/30 dev eth0"))?;
    ip(
        i,
        &format!("-6 addr add {UPLINK_IMDS_V6}/64 dev eth0 nodad"),
    )?;
    ip(i, "link set eth0 up")?;
    ip(i, &format!("route add default via {UPLINK_HOST_V4}"))?;
    ip(i, &format!("-6 route add default via {UPLINK_HOST_V6}"))?;
    ip(h, &format!("route add {IMDS_V4}/32 via {UPLINK_IMDS_V4}"))?;
    ip(
        h,
        &format!("-6 route add {IMDS_V6}/128 via {UPLINK_IMDS_V6}"),
    )?;
    wait_until_up(h, "up0", UPLINK_HOST_V6)?;
    wait_until_up(i, "eth0", UPLINK_IMDS_V6)
}
