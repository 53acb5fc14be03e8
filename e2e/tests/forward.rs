//! The forward path held in the kernel (issue 18, item 1): what a host's
//! own nftables tooling does to the ruleset must not open the forward path
//! to the metadata service, with the agent running or killed.
//!
//! Each test builds a [`Topology`] (containers `c1` and `c2` behind a host
//! namespace that forwards, the fake IMDS one hop up), starts a
//! [`Prober`] in `c1`'s namespace that polls the metadata service over TCP
//! throughout, outside the guarded cgroup (only the forward path sees its
//! packets), and shows first that **without the guard it is answered**.
//! Then, with the agent running in the host namespace (`nsenter --net`:
//! every `nft` command below touches that namespace only), it does, one
//! after the other: `nft flush ruleset` (Debian's `nftables.service` at
//! stop); `nft -f` of a file that starts with `flush ruleset` (its start
//! and reload); `nft flush table`, `nft flush chain` and `nft delete table`
//! of the agent's table. The [`Oracle`](imds_guard_e2e::Oracle) in the
//! metadata service's namespace counts every packet that arrives there.
//!
//! What docs/operating.md promises ("The forward path"), and these assert:
//! - the netfilter program (6.4+; `auto` on such a kernel): nothing
//!   arrives, agent running or killed;
//! - nftables (`auto` before 6.4, `--forward-path nftables` anywhere):
//!   nothing arrives while the agent runs (its own table holds while the
//!   unowned one is put back); with the agent killed, a flush of the
//!   unowned table opens the path until the agent starts again, which
//!   closes it, and `status` says so meanwhile.
//!
//! And: fragments after the first to a protected address are dropped; a
//! flood from one container does not keep a second source's record out of
//! the log.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use imds_guard_e2e::{
    Agent, Arrivals, ContainerKind, IMDS_PORT, IMDS_V4, IMDS_V6, LOG, Prober, Topology, UDP_PORT,
    field, flood, imds_guard_bin, privileged_or_skip, send_later_fragment, slowdown,
};
use serde_json::Value;

/// Only root, on the host: nothing the containers send is allowed.
const ONLY_ROOT: &str = "mode = \"enforce\"\n[allow]\nuids = [0]\n";
/// [`ONLY_ROOT`] on TCP 80 of both metadata addresses only (issue 20):
/// their other ports stay open to forwarded packets too.
const TCP_80: &str = "mode = \"enforce\"\n[endpoints]\naddresses = [\"169.254.169.254:80/tcp\", \
                      \"[fd00:ec2::254]:80/tcp\"]\n[allow]\nuids = [0]\n";
/// The agent's unowned table.
const TABLE: &str = "imds_guard_forward";
/// How long a disruption is watched for packets getting through.
const WATCH: Duration = Duration::from_millis(1500);

/// What the host's nftables tooling does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Disruption {
    FlushRuleset,
    LoadFlushingFile,
    FlushOurTable,
    FlushOurChain,
    DeleteOurTable,
}

const ALL: [Disruption; 5] = [
    Disruption::FlushRuleset,
    Disruption::LoadFlushingFile,
    Disruption::FlushOurTable,
    Disruption::FlushOurChain,
    Disruption::DeleteOurTable,
];

/// The disruptions the agent-killed tests make: all of them natively; under
/// emulation (a guest ten times slower, where each costs a kill, a watch
/// and a start of about a minute) one that removes the unowned table and
/// one that leaves it empty, the two ways the path opens, so that the
/// suite fits in CI's time.
fn killed_disruptions() -> &'static [Disruption] {
    if slowdown::slowdown() > 1 {
        &[Disruption::FlushRuleset, Disruption::FlushOurChain]
    } else {
        &ALL
    }
}

/// The stock Debian `/etc/nftables.conf`, less its shebang: it flushes
/// everything, then defines its own table.
const NFTABLES_CONF: &str = "flush ruleset\n\
    table inet filter {\n\
    \tchain input { type filter hook input priority filter; }\n\
    \tchain forward { type filter hook forward priority filter; }\n\
    \tchain output { type filter hook output priority filter; }\n\
    }\n";

/// `nft ARGS` in the topology's host namespace.
fn nft(topo: &Topology, args: &[&str]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net={}", topo.host.path().display()))
        .arg("nft")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running nft {args:?}: {e}"))
}

/// Does `d` in the host namespace. A command about the agent's table
/// fails where there is none (the netfilter program holds the path): that
/// is said, not a failure.
fn disrupt(topo: &Topology, d: Disruption) {
    let out = match d {
        Disruption::FlushRuleset => nft(topo, &["flush", "ruleset"]),
        Disruption::LoadFlushingFile => {
            let conf = topo.dir.path().join("nftables.conf");
            std::fs::write(&conf, NFTABLES_CONF).unwrap_or_else(|e| panic!("{e}"));
            let conf = conf.to_str().unwrap_or_else(|| panic!("a UTF-8 path"));
            nft(topo, &["-f", conf])
        }
        Disruption::FlushOurTable => nft(topo, &["flush", "table", "inet", TABLE]),
        Disruption::FlushOurChain => nft(topo, &["flush", "chain", "inet", TABLE, "forward"]),
        Disruption::DeleteOurTable => nft(topo, &["delete", "table", "inet", TABLE]),
    };
    let about_ours = !matches!(d, Disruption::FlushRuleset | Disruption::LoadFlushingFile);
    assert!(
        out.status.success() || about_ours,
        "{d:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "{d:?}: nft exited {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// `imds-guard status --json` in the host namespace, and its exit code.
fn status(topo: &Topology) -> (Value, i32) {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", topo.host.path().display()))
        .arg("--")
        .arg(imds_guard_bin())
        .args(["status", "--json", "--pin-dir"])
        .arg(topo.bpffs.pin_dir())
        .output()
        .unwrap_or_else(|e| panic!("running status: {e}"));
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (json, out.status.code().unwrap_or(-1))
}

/// Whether the kernel has netfilter programs, which the `auto` variants
/// below are for: where it has none, `auto` is nftables, which each
/// test's `_nftables` twin covers already (on the slow guests the suite
/// runs once, not twice). Says so when it skips.
fn netfilter_or_skip(test: &str) -> bool {
    match imds_guard::kernel::netfilter::available() {
        Ok(true) => true,
        Ok(false) => {
            eprintln!(
                "{test}: this kernel has no netfilter programs, so `auto` is nftables: its \
                 _nftables twin covers it"
            );
            false
        }
        Err(e) => panic!("{test}: cannot tell whether this kernel has netfilter programs: {e}"),
    }
}

/// The two containers and the prober polling the service from `c1`,
/// shown answered before any guard.
struct World {
    /// `None` once [`World::quiet`] stopped it.
    prober: Option<Prober>,
    topo: Topology,
}

impl World {
    fn new() -> Self {
        let topo = Topology::builder()
            .container("c1", ContainerKind::Plain)
            .container("c2", ContainerKind::Plain)
            .build();
        let targets = vec![
            SocketAddr::new(IMDS_V4.into(), IMDS_PORT),
            SocketAddr::new(IMDS_V6.into(), IMDS_PORT),
        ];
        let prober = Prober::start(&topo.container("c1").netns_path(), targets);
        assert!(
            prober.answered_beyond(2, slowdown::scaled(Duration::from_secs(5))),
            "without the guard the prober must be answered ({} attempts): it could not see a \
             closed path otherwise",
            prober.attempts()
        );
        Self {
            prober: Some(prober),
            topo,
        }
    }

    /// Stops the prober, for a test that counts packets of its own.
    fn quiet(mut self) -> Self {
        self.prober = None;
        self
    }

    fn answered(&self) -> u64 {
        self.prober.as_ref().map_or(0, Prober::answered)
    }

    /// Starts the agent with `args`; the mechanism its `ready` record
    /// names.
    fn start(&self, args: &[&str]) -> (Agent, String) {
        self.start_with(ONLY_ROOT, args)
    }

    /// [`World::start`] with `policy`.
    fn start_with(&self, policy: &str, args: &[&str]) -> (Agent, String) {
        let agent = self.topo.start_agent_with(policy, args);
        let ready = agent.wait_ready(LOG);
        let mechanism = field(&ready, "forward_mechanism")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no forward_mechanism in {ready}"))
            .to_owned();
        assert_eq!(
            field(&ready, "forward").and_then(Value::as_str),
            Some("guarded"),
            "{ready}"
        );
        (agent, mechanism)
    }

    /// What arrived while `f` ran, once the packets already in flight
    /// have settled.
    fn arrivals_during(&self, f: impl FnOnce()) -> (Arrivals, u64) {
        thread::sleep(Duration::from_millis(300));
        let (before, answered) = (self.topo.oracle.read(), self.answered());
        f();
        thread::sleep(slowdown::scaled(WATCH));
        (
            self.topo.oracle.read().since(before),
            self.answered() - answered,
        )
    }
}

/// The agent running throughout: nothing any disruption does lets a
/// packet through, whatever holds the forward path.
fn running(args: &[&str]) {
    let world = World::new();
    let (agent, mechanism) = world.start(args);
    eprintln!("forward path held by {mechanism}");
    for d in ALL {
        let (arrived, answered) = world.arrivals_during(|| disrupt(&world.topo, d));
        assert_eq!(
            (arrived.total(), answered),
            (0, 0),
            "{d:?} with the agent running ({mechanism}): {arrived:?}"
        );
        if mechanism == "nftables" {
            // The agent put its unowned table back, as status says.
            let (json, code) = status(&world.topo);
            assert_eq!(code, 0, "{d:?}: {}", json["forward"]);
            assert_eq!(json["forward"]["table"]["intact"], true, "{json}");
        }
    }
    assert!(agent.exit_status().is_none(), "{}", agent.output());
}

/// The agent killed (SIGKILL) before each disruption, and started again
/// after it.
fn killed(args: &[&str]) {
    let world = World::new();
    let (mut agent, mechanism) = world.start(args);
    for &d in killed_disruptions() {
        agent.kill();
        let (arrived, answered) = world.arrivals_during(|| disrupt(&world.topo, d));
        if mechanism == "netfilter" {
            assert_eq!(
                (arrived.total(), answered),
                (0, 0),
                "{d:?} with the agent killed (netfilter): {arrived:?}"
            );
            let (json, code) = status(&world.topo);
            assert_eq!(code, 0, "{d:?}: {}", json["forward"]);
        } else {
            // docs/operating.md's bound: the unowned table gone, the path is open
            // until the agent starts again; status says so.
            assert!(
                arrived.total() > 0 && answered > 0,
                "{d:?} with the agent killed (nftables): the path should be open until the \
                 agent starts again, as docs/operating.md says; arrived {arrived:?}"
            );
            let (json, code) = status(&world.topo);
            assert_ne!(code, 0, "{d:?}: status must not say all is well: {json}");
            assert_eq!(json["forward"]["guarded"], false, "{json}");
        }
        let restarted = world.start(args);
        agent = restarted.0;
        let (arrived, answered) = world.arrivals_during(|| {});
        assert_eq!(
            (arrived.total(), answered),
            (0, 0),
            "after {d:?}, the agent started again ({mechanism}): {arrived:?}"
        );
    }
    drop(agent);
}

#[test]
fn the_forward_path_holds_through_nft_with_the_agent_running() {
    if !privileged_or_skip("the_forward_path_holds_through_nft_with_the_agent_running")
        || !netfilter_or_skip("the_forward_path_holds_through_nft_with_the_agent_running")
    {
        return;
    }
    running(&[]);
}

#[test]
fn the_forward_path_holds_through_nft_with_the_agent_killed() {
    if !privileged_or_skip("the_forward_path_holds_through_nft_with_the_agent_killed")
        || !netfilter_or_skip("the_forward_path_holds_through_nft_with_the_agent_killed")
    {
        return;
    }
    killed(&[]);
}

#[test]
fn nftables_holds_the_forward_path_while_the_agent_runs() {
    if !privileged_or_skip("nftables_holds_the_forward_path_while_the_agent_runs") {
        return;
    }
    running(&["--forward-path", "nftables"]);
}

#[test]
fn nftables_opens_on_a_flush_while_the_agent_is_dead_until_it_starts_again() {
    if !privileged_or_skip(
        "nftables_opens_on_a_flush_while_the_agent_is_dead_until_it_starts_again",
    ) {
        return;
    }
    killed(&["--forward-path", "nftables"]);
}

/// Fragments: a lone fragment after the first, and a datagram too large
/// for one packet, from each family.
fn fragments(args: &[&str]) {
    let world = World::new().quiet();
    let c1 = world.topo.container("c1");
    let lone = |id: u16| {
        world.arrivals_during(|| send_later_fragment(&c1.netns_path(), c1.addr_v4(), IMDS_V4, id))
    };
    let big = || {
        world.arrivals_during(|| {
            for dst in [IpAddr::from(IMDS_V4), IMDS_V6.into()] {
                datagram(&c1.netns_path(), SocketAddr::new(dst, UDP_PORT), 3000);
            }
        })
    };
    let (arrived, _) = lone(0x4241);
    assert_eq!(
        arrived.v4.all, 1,
        "without the guard a lone later fragment arrives"
    );
    let (arrived, _) = big();
    assert!(
        arrived.v4.all >= 2 && arrived.v6.all >= 2,
        "without the guard every fragment arrives: {arrived:?}"
    );
    let (agent, mechanism) = world.start(args);
    let (arrived, _) = lone(0x4242);
    assert_eq!(
        arrived.total(),
        0,
        "{mechanism}: a lone later fragment: {arrived:?}"
    );
    let (arrived, _) = big();
    assert_eq!(
        arrived.total(),
        0,
        "{mechanism}: 3000-byte datagrams: {arrived:?}"
    );
    drop(agent);
}

/// One UDP datagram of `len` bytes to `dst` (3000: two or three fragments
/// on a 1500-byte link), from the namespace at `netns`.
fn datagram(netns: &Path, dst: SocketAddr, len: usize) {
    let file = std::fs::File::open(netns).unwrap_or_else(|e| panic!("{e}"));
    thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("{e}"));
            let bind = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            let socket = std::net::UdpSocket::bind(bind).unwrap_or_else(|e| panic!("{e}"));
            socket
                .send_to(&vec![0u8; len], dst)
                .unwrap_or_else(|e| panic!("sending {len} bytes to {dst}: {e}"));
        });
    });
}

#[test]
fn fragments_to_a_protected_address_are_dropped() {
    if !privileged_or_skip("fragments_to_a_protected_address_are_dropped")
        || !netfilter_or_skip("fragments_to_a_protected_address_are_dropped")
    {
        return;
    }
    fragments(&[]);
}

#[test]
fn fragments_to_a_protected_address_are_dropped_by_nftables() {
    if !privileged_or_skip("fragments_to_a_protected_address_are_dropped_by_nftables") {
        return;
    }
    fragments(&["--forward-path", "nftables"]);
}

/// A port-scoped endpoint in the forward path: TCP 80 is dropped, a
/// datagram to UDP 5353 of the same addresses arrives, and a fragment
/// after the first (no port to read) is dropped.
fn ports(args: &[&str]) {
    let world = World::new();
    let c1 = world.topo.container("c1");
    let datagrams = || {
        world.arrivals_during(|| {
            for dst in [IpAddr::from(IMDS_V4), IMDS_V6.into()] {
                datagram(&c1.netns_path(), SocketAddr::new(dst, UDP_PORT), 16);
            }
        })
    };
    let (arrived, _) = datagrams();
    assert!(
        arrived.v4.udp >= 1 && arrived.v6.udp >= 1,
        "without the guard the datagrams arrive: {arrived:?}"
    );
    let (agent, mechanism) = world.start_with(TCP_80, args);
    // The prober's TCP 80: nothing arrives, nothing is answered.
    let (arrived, answered) = world.arrivals_during(|| {});
    assert_eq!(
        (arrived.v4.tcp + arrived.v6.tcp, answered),
        (0, 0),
        "{mechanism}: TCP 80 is protected: {arrived:?}"
    );
    // UDP 5353: a neighbouring port, open.
    let (arrived, _) = datagrams();
    assert!(
        arrived.v4.udp >= 1 && arrived.v6.udp >= 1,
        "{mechanism}: UDP 5353 is not protected: {arrived:?}"
    );
    // A lone later fragment names no port: dropped.
    let (arrived, _) = world
        .arrivals_during(|| send_later_fragment(&c1.netns_path(), c1.addr_v4(), IMDS_V4, 0x4343));
    assert_eq!(
        arrived.v4.all, 0,
        "{mechanism}: a later fragment: {arrived:?}"
    );
    drop(agent);
}

#[test]
fn the_forward_path_honours_ports() {
    if !privileged_or_skip("the_forward_path_honours_ports")
        || !netfilter_or_skip("the_forward_path_honours_ports")
    {
        return;
    }
    ports(&[]);
}

#[test]
fn the_forward_path_honours_ports_with_nftables() {
    if !privileged_or_skip("the_forward_path_honours_ports_with_nftables") {
        return;
    }
    ports(&["--forward-path", "nftables"]);
}

/// A flood from `c1` while `c2` tries: `c2`'s attempt is logged.
fn flood_hides_no_other_source(args: &[&str]) {
    let world = World::new().quiet();
    let (agent, mechanism) = world.start(args);
    let (c1, c2) = (world.topo.container("c1"), world.topo.container("c2"));
    let seen = agent.records().len();
    let started = Instant::now();
    let sent = thread::scope(|s| {
        let flooding = s.spawn(|| {
            flood(
                &c1.netns_path(),
                SocketAddr::new(IMDS_V4.into(), UDP_PORT),
                Duration::from_secs(2),
            )
        });
        thread::sleep(Duration::from_millis(700));
        // c2 tries while the flood goes on.
        flood(
            &c2.netns_path(),
            SocketAddr::new(IMDS_V4.into(), UDP_PORT),
            Duration::from_millis(1),
        );
        flooding
            .join()
            .unwrap_or_else(|_| panic!("the flood panicked"))
    });
    eprintln!(
        "{mechanism}: c1 sent {sent} datagrams in {:?}",
        started.elapsed()
    );
    assert!(sent > 5000, "the flood was no flood: {sent}");
    let from = |addr: std::net::Ipv4Addr| {
        move |r: &Value| {
            field(r, "hook").and_then(Value::as_str) == Some("forward")
                && field(r, "src").and_then(Value::as_str) == Some(&addr.to_string())
        }
    };
    assert!(
        agent
            .wait_for_after(seen, from(c2.addr_v4()), LOG)
            .is_some(),
        "{mechanism}: the second source's attempt was not logged under c1's flood"
    );
    let c1_records = agent.records()[seen..]
        .iter()
        .filter(|r| {
            from(c1.addr_v4())(r) && field(r, "event").and_then(Value::as_str) == Some("deny")
        })
        .count();
    assert!(
        c1_records <= 20,
        "{mechanism}: the flood's own records are limited: {c1_records}"
    );
}

#[test]
fn a_flood_from_one_container_leaves_another_sources_record() {
    if !privileged_or_skip("a_flood_from_one_container_leaves_another_sources_record")
        || !netfilter_or_skip("a_flood_from_one_container_leaves_another_sources_record")
    {
        return;
    }
    flood_hides_no_other_source(&[]);
}

#[test]
fn a_flood_from_one_container_leaves_another_sources_record_with_nftables() {
    if !privileged_or_skip("a_flood_from_one_container_leaves_another_sources_record_with_nftables")
    {
        return;
    }
    flood_hides_no_other_source(&["--forward-path", "nftables"]);
}

/// `detach` in the host namespace: the path opens again, and nothing of
/// the forward path is left (links, pins, tables).
fn detach_removes(args: &[&str]) {
    let world = World::new();
    let (agent, mechanism) = world.start(args);
    let (arrived, _) = world.arrivals_during(|| {});
    assert_eq!(arrived.total(), 0, "{mechanism}: guarded: {arrived:?}");
    let out = Command::new("nsenter")
        .arg(format!("--net={}", world.topo.host.path().display()))
        .arg("--")
        .arg(imds_guard_bin())
        .args(["detach", "--pin-dir"])
        .arg(world.topo.bpffs.pin_dir())
        .output()
        .unwrap_or_else(|e| panic!("running detach: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{mechanism}: {stdout}");
    assert!(
        agent
            .wait_exit(slowdown::scaled(Duration::from_secs(10)))
            .is_some(),
        "{mechanism}: detach stops the agent"
    );
    let before = world.answered();
    assert!(
        world
            .prober
            .as_ref()
            .is_some_and(|p| p.answered_beyond(before, slowdown::scaled(Duration::from_secs(5)))),
        "{mechanism}: detached, the forward path is open again: {stdout}"
    );
    let tables = nft(&world.topo, &["list", "tables"]);
    assert_eq!(
        String::from_utf8_lossy(&tables.stdout).trim(),
        "",
        "{mechanism}: no table is left"
    );
    assert!(
        !world.topo.bpffs.pin_dir().exists(),
        "{mechanism}: no pin is left"
    );
}

#[test]
fn detach_removes_every_mechanism() {
    if !privileged_or_skip("detach_removes_every_mechanism") {
        return;
    }
    detach_removes(&[]);
    detach_removes(&["--forward-path", "nftables"]);
}
