//! One configuration under test, ready to take workers: its own network
//! namespace (metadata addresses on its loopback, a [`Sink`] behind every
//! address), its own child cgroup, and the guard of its kind: nothing, the
//! imds-guard agent attached to that cgroup, the empty programs of the
//! floor attached to it (`floor`), or rendered firewall rules loaded into
//! that namespace.
//!
//! Configurations live side by side for the whole comparison, so that the
//! rounds can alternate between them (A B C A B C ...) with no setup in
//! between: a cgroup's programs only run for its own processes, and a
//! namespace's rules only see its own packets.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use imds_guard_e2e::{Agent, FakeImds, Netns, TempDir, TestBpffs, TestCgroup, write_policy};
use nix::errno::Errno;
use serde_json::Value;

use super::{
    cli::Timing,
    cpus,
    firewall::{self, Xt},
    floor::Floor,
    job::{Job, Tally},
    sink::{IMDS4, PLAIN_V4, Sink},
    worker::{Running, spawn},
};

/// How long an agent may take to say it is enforcing (100,000 uids
/// included).
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How the rules of an iptables configuration are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// `--format commands`: for a one-identity policy, the AWS one-liner.
    Commands,
    /// `--format file`: the two chains, loaded with `iptables-restore`.
    File,
}

/// What guards a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    None,
    ImdsGuard,
    /// An empty program of each type the floor has (`floor`): what any
    /// cgroup program costs.
    Floor,
    Iptables(Xt, Form),
    Nftables,
}

impl Kind {
    /// The name in tables and the plot.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "no guard",
            Self::ImdsGuard => "imds-guard",
            Self::Floor => "empty programs (the floor)",
            Self::Iptables(Xt::Nft, _) => "iptables (nft)",
            Self::Iptables(Xt::Legacy, _) => "iptables-legacy",
            Self::Nftables => "nftables",
        }
    }

    /// Whether a denied connect fails with EPERM (the eBPF guard), with
    /// another error (a REJECT rule), or goes through (no guard).
    fn denies(self) -> Denial {
        match self {
            Self::None | Self::Floor => Denial::Passes,
            Self::ImdsGuard => Denial::Eperm,
            Self::Iptables(..) | Self::Nftables => Denial::Rejected,
        }
    }
}

/// A configuration's place in a comparison with an A/A control: the
/// baseline every ratio is taken against, a second unguarded namespace
/// measured the same way (its ratio to the baseline is this machine's
/// noise), or a guard. The key a row is found by; the label is only what
/// the table shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm {
    Baseline,
    Control,
    Guarded(Kind),
}

impl Arm {
    pub fn kind(self) -> Kind {
        match self {
            Self::Baseline | Self::Control => Kind::None,
            Self::Guarded(kind) => kind,
        }
    }

    /// The name in tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::Control => "no guard, again (A/A control)",
            arm => arm.kind().name(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Denial {
    Passes,
    Eperm,
    Rejected,
}

/// A policy file in a private directory.
pub struct PolicyFile {
    pub path: PathBuf,
    _dir: TempDir,
}

impl PolicyFile {
    pub fn new(toml: &str) -> Self {
        let dir = TempDir::new();
        let path = write_policy(dir.path(), toml);
        PolicyFile { path, _dir: dir }
    }

    /// `[allow] uids = [0, 100000, 100001, ...]`: `n` entries, root first
    /// (the firewalls need it: the listener's packets carry its owner),
    /// and [`last_allowed`] at the end.
    pub fn allow_n(n: u32) -> Self {
        let uids: Vec<String> = (0..n).map(|i| allowed_uid(i).to_string()).collect();
        Self::new(&format!("[allow]\nuids = [{}]\n", uids.join(", ")))
    }

    /// Rewrites the file with the same policy (for reloads).
    pub fn rewrite(&self) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&self.path)?;
        let dir = self
            .path
            .parent()
            .context("policy file without a directory")?;
        write_policy(dir, &text);
        Ok(())
    }
}

/// The `i`th uid of [`PolicyFile::allow_n`].
fn allowed_uid(i: u32) -> u32 {
    if i == 0 { 0 } else { 100_000 + i - 1 }
}

/// The last uid `allow_n(n)` lists: the worst case for a linear chain.
pub fn last_allowed(n: u32) -> u32 {
    allowed_uid(n - 1)
}

/// Field order is drop order: the agent stops before its bpffs goes (which
/// detaches its pinned links), the empty programs' links close before
/// their cgroup goes, the sink before the namespace.
pub struct Setup {
    pub kind: Kind,
    agent: Option<Agent>,
    pins: Option<TestBpffs>,
    floor: Option<Floor>,
    _server: Server,
    pub cgroup: TestCgroup,
    pub netns: Netns,
    /// Agent: spawn to its `ready` record. Floor: loading and attaching
    /// the empty programs. Firewalls: render excluded, loading the rules.
    pub load_time: Duration,
    /// The agent's `ready` record (with the phases of its start).
    pub ready: Option<Value>,
}

/// What answers behind the namespace's addresses.
enum Server {
    /// Accepts and closes: connect loops.
    Sink { _serving: Sink },
    /// The test harness's fake IMDS, which answers HTTP requests on kept-
    /// alive connections: request loops (`Mode::Requests`).
    Imds { _serving: FakeImds },
}

impl Setup {
    /// A configuration whose addresses accept and close ([`Sink`]).
    pub fn new(kind: Kind, policy: &PolicyFile) -> anyhow::Result<Self> {
        let netns = Netns::new();
        let server = Server::Sink {
            _serving: Sink::start(&netns)?,
        };
        Self::serving(kind, policy, netns, server)
    }

    /// A configuration whose addresses are served by the fake IMDS (the
    /// same addresses and ports as [`Sink`]'s), for request loops.
    pub fn with_imds(kind: Kind, policy: &PolicyFile) -> anyhow::Result<Self> {
        let netns = Netns::new();
        let server = Server::Imds {
            _serving: FakeImds::start(&netns),
        };
        Self::serving(kind, policy, netns, server)
    }

    fn serving(
        kind: Kind,
        policy: &PolicyFile,
        netns: Netns,
        server: Server,
    ) -> anyhow::Result<Self> {
        let cgroup = TestCgroup::new();
        let (mut agent, mut pins, mut floor, mut ready) = (None, None, None, None);
        let load_time = match kind {
            Kind::None => Duration::ZERO,
            Kind::ImdsGuard => {
                let bpffs = TestBpffs::new();
                let started = Instant::now();
                let a = Agent::start_pinned(&netns, &policy.path, &cgroup, &bpffs.pin_dir(), &[]);
                ready = Some(a.wait_ready(READY_TIMEOUT));
                let took = started.elapsed();
                cpus::pin_process(a.pid());
                agent = Some(a);
                pins = Some(bpffs);
                took
            }
            Kind::Floor => {
                let started = Instant::now();
                floor = Some(Floor::attach(cgroup.path())?);
                started.elapsed()
            }
            Kind::Iptables(xt, form) => {
                let format = match form {
                    Form::Commands => "commands",
                    Form::File => "file",
                };
                let text = firewall::render(&policy.path, "iptables", format)?;
                let started = Instant::now();
                match form {
                    Form::Commands => firewall::load_iptables_commands(&netns, xt, &text)?,
                    Form::File => firewall::load_iptables_file(&netns, xt, &text)?,
                }
                let took = started.elapsed();
                ensure!(
                    firewall::iptables_rules(&netns, xt)? > 0,
                    "{} loaded no rule",
                    xt.tool()
                );
                took
            }
            Kind::Nftables => {
                let text = firewall::render(&policy.path, "nftables", "file")?;
                let started = Instant::now();
                firewall::load_nft(&netns, &text)?;
                started.elapsed()
            }
        };
        Ok(Setup {
            kind,
            agent,
            pins,
            floor,
            _server: server,
            cgroup,
            netns,
            load_time,
            ready,
        })
    }

    /// A timed connect loop in this configuration.
    pub fn job(&self, uid: u32, dst: SocketAddr, timing: Timing) -> Job {
        Job::new(self.netns.path(), self.cgroup.path(), uid, dst, timing)
    }

    pub fn agent(&self) -> Option<&Agent> {
        self.agent.as_ref()
    }

    /// The empty programs, in a [`Kind::Floor`] configuration.
    pub fn floor(&self) -> Option<&Floor> {
        self.floor.as_ref()
    }

    pub fn pin_dir(&self) -> Option<PathBuf> {
        self.pins.as_ref().map(TestBpffs::pin_dir)
    }

    /// A one-connect probe in this configuration.
    fn probe(&self, uid: u32, dst: SocketAddr) -> Job {
        let once = Timing {
            warmup_ms: 0,
            run_ms: 0,
        };
        self.job(uid, dst, once).count(1, PROBE_TIMEOUT)
    }
}

/// How long a one-connect probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a configuration did with a denied connect, as [`verify`] saw it.
#[derive(Clone, Copy, Debug)]
pub struct DeniedConnect {
    /// The connect went through (no guard).
    pub connected: bool,
    /// The error it failed with.
    pub errno: Option<Errno>,
    /// From connect() to its return.
    pub took: Duration,
}

impl DeniedConnect {
    /// `EPERM after 0.01 ms`, for the report.
    pub fn show(&self) -> String {
        let how = match (self.connected, self.errno) {
            (true, _) => "connects".to_owned(),
            (false, Some(e)) => format!("{e:?}"),
            (false, None) => "fails".to_owned(),
        };
        let ms = self.took.as_secs_f64() * 1e3;
        if ms < 10.0 {
            format!("{how} after {ms:.2} ms")
        } else {
            format!("{how} after {ms:.0} ms")
        }
    }
}

/// Checks that each configuration does what it should before anything is
/// measured: `denied` connects to the unprotected destination, `allowed`
/// reaches the protected address, `denied` does not (unless nothing
/// guards). The probes of every configuration run at once, because a
/// REJECTed connect can take a second to fail. Returns what each denied
/// connect did.
pub fn verify(checks: &[(&Setup, u32, u32)]) -> anyhow::Result<Vec<DeniedConnect>> {
    let mut running = Vec::new();
    for &(setup, allowed, denied) in checks {
        for (uid, dst) in [(denied, PLAIN_V4), (allowed, IMDS4), (denied, IMDS4)] {
            running.push(spawn(&setup.probe(uid, dst))?);
        }
    }
    let tallies = running
        .into_iter()
        .map(Running::wait)
        .collect::<anyhow::Result<Vec<Tally>>>()?;
    let mut out = Vec::new();
    for (&(setup, allowed, denied), t) in checks.iter().zip(tallies.chunks(3)) {
        let what = setup.kind.name();
        let [plain, allowed_t, denied_t] = t else {
            bail!("{what}: missing probe results");
        };
        ensure!(
            plain.ok == 1,
            "{what}: uid {denied} cannot connect to {PLAIN_V4}: {plain:?}"
        );
        ensure!(
            allowed_t.ok == 1,
            "{what}: allowed uid {allowed} cannot connect to {IMDS4}: {allowed_t:?}"
        );
        let fine = match setup.kind.denies() {
            Denial::Passes => denied_t.ok == 1,
            Denial::Eperm => denied_t.eperm == 1,
            Denial::Rejected => denied_t.other == 1,
        };
        if !fine {
            bail!(
                "{what}: uid {denied} to {IMDS4} should be {:?}: {denied_t:?}",
                setup.kind.denies()
            );
        }
        out.push(DeniedConnect {
            connected: denied_t.ok == 1,
            errno: if denied_t.eperm == 1 {
                Some(Errno::EPERM)
            } else {
                denied_t.last_errno.map(Errno::from_raw)
            },
            took: Duration::from_nanos(denied_t.elapsed_ns),
        });
    }
    Ok(out)
}
