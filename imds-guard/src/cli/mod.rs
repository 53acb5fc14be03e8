//! The command line: its definitions (kept apart from `main` so that the
//! man pages and shell completions are generated from them), one module
//! per command with its `execute`, and the one exit path (`exit.rs`).
//!
//! Imports: everything (`policy`, `render`, `kernel`, `daemon`); nothing
//! imports this but `main`.

mod check;
mod detach;
mod exit;
pub mod generate;
mod imdsv1;
mod out;
mod records;
mod reload;
mod render;
mod report;
mod rules;
mod run;
mod snapshot;
mod state;
mod status;
mod suggest;
mod validate;

use std::path::{Path, PathBuf};

use clap::{ArgGroup, Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

pub use self::exit::{CliError, Outcome, report};
use crate::{
    daemon::logging::LogFormat,
    policy::PolicySource,
    render::{Format, Target},
};

/// Parses the command line. `--version` also says what the running kernel
/// offers of what the guard needs (read only then: it costs a BTF read).
pub fn parse() -> Cli {
    let mut command = Cli::command();
    if std::env::args_os().any(|a| a == "--version") {
        // Printed once, then the process exits: leaking it is free.
        command = command.long_version(&*Box::leak(long_version().into_boxed_str()));
    }
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// The version, and the kernel's features as `status` reports them.
fn long_version() -> String {
    let kernel = status::kernel_report();
    format!("{}\n{}", env!("CARGO_PKG_VERSION"), kernel.summary())
}

/// Runs the command `cli` names.
pub fn execute(cli: Cli) -> Result<Outcome, CliError> {
    match cli.command {
        Command::Run(args) => run::execute(args),
        Command::Validate(args) => validate::execute(&args),
        Command::Render(args) => render::execute(&args),
        Command::Detach(args) => detach::execute(&args),
        Command::Status(args) => status::execute(&args),
        Command::Reload(args) => reload::execute(&args),
        Command::Check(args) => check::execute(&args),
        Command::Suggest(args) => suggest::execute(&args),
        Command::Report(ReportArgs {
            what: Some(ReportCommand::Imdsv1(args)),
            ..
        }) => imdsv1::execute(&args),
        Command::Report(args) => report::execute(&args),
        Command::Generate(args) => generate::run_generate(&args, Cli::command())
            .map(|()| Outcome::Success)
            .map_err(CliError::runtime),
    }
}

/// The policy file `--config` names, or else the default one:
/// /etc/imds-guard/policy.toml when there is one, the packaged
/// /usr/share/imds-guard/policy.toml otherwise ([`PolicySource`]).
fn policy_file(config: Option<&Path>) -> PathBuf {
    PolicySource::new(config.map(Path::to_owned)).path()
}

/// Decides which local processes may reach the cloud instance metadata
/// service.
#[derive(Debug, Parser)]
#[command(name = "imds-guard", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the policy, attach the guard and log every decision on a
    /// protected address until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Check a policy without touching the kernel: exit 0 when valid, 1 with
    /// `FILE:LINE:COL: what is wrong` when not.
    Validate(ValidateArgs),
    /// Print the policy as firewall rules (iptables, ip6tables, nftables,
    /// PF, IPFW), for hosts that cannot run the eBPF guard. Names are
    /// written as the policy spells them, not resolved.
    Render(RenderArgs),
    /// Detach the guard and remove everything it pinned; stops a running
    /// agent too. The only way to turn the guard off on purpose.
    Detach(DetachArgs),
    /// Whether the guard is enforcing, where, since when, with which policy,
    /// and its counters, read from the kernel. Exit 0 only when enforcing
    /// (or auditing as configured).
    Status(StatusArgs),
    /// Ask the running agent to reload its policy, and wait for its answer:
    /// exit 0 when it put the policy in force, 1 when it refused a policy
    /// that does not validate (the one in force stays), 3 when it could not
    /// be asked or did not answer. What the packaged unit's ExecReload runs.
    Reload(ReloadArgs),
    /// The verdict a policy gives a process, and the rule that decides it,
    /// without the kernel. Exit 0 when allowed, 4 when denied.
    Check(CheckArgs),
    /// Learn a policy from the audit phase: the entries that would let
    /// through what the agent refused.
    ///
    /// The refusals the agent logged (the journal, or a JSON log with
    /// --from), grouped by the narrowest identity that explains them, each
    /// with its counts, first and last seen and what else it would admit,
    /// on stderr; the policy that lets them through (or, with --against,
    /// the change to a policy file) on stdout.
    Suggest(SuggestArgs),
    /// How many denials, by whom, for what, from the agent's records.
    ///
    /// Counts by verdict, identity, hook and destination, what the rate
    /// limiter suppressed included.
    Report(ReportArgs),
    /// Write the man pages or shell completions (for packaging).
    Generate(generate::GenerateArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The policy file [default: /etc/imds-guard/policy.toml if there is
    /// one, else the packaged /usr/share/imds-guard/policy.toml, looked up
    /// again at each reload]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The cgroup v2 directory to attach to (default: the root of the
    /// cgroup v2 hierarchy, found in /proc/self/mountinfo, or mounted at
    /// /run/imds-guard/cgroup2 when none is mounted whole, as on a host
    /// that boots cgroup v1 only).
    #[arg(long, value_name = "DIR", env = "IMDS_GUARD_CGROUP")]
    pub cgroup: Option<PathBuf>,
    /// The host's cgroup namespace, entered when the agent runs in another
    /// (a container's): pid 1's is the host's when the agent shares the
    /// host's pid namespace (Kubernetes: hostPID). Entering takes
    /// CAP_SYS_ADMIN, and opening another process's namespace
    /// CAP_SYS_PTRACE. An agent that cannot enter it refuses to start.
    #[arg(long, value_name = "FILE", default_value = crate::kernel::place::HOST_CGROUP_NS)]
    pub host_cgroupns: PathBuf,
    /// Run in a container on purpose and guard only the cgroup --cgroup
    /// names: the container's pid namespace is "the host" of
    /// [allow.host], and its cgroup namespace is kept rather than left.
    /// Without it an agent in a container's pid namespace, or in a cgroup
    /// namespace it cannot leave, refuses to start.
    #[arg(long, requires = "cgroup")]
    pub container: bool,
    /// How to write log records: `auto` is the journal when stderr is
    /// connected to it (under systemd), text on stderr otherwise.
    #[arg(long, value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
    /// The bpf filesystem directory where the guard pins its links and
    /// maps, so that it outlives the agent.
    #[arg(
        long,
        value_name = "DIR",
        default_value = DEFAULT_PIN_DIR,
        env = "IMDS_GUARD_PIN_DIR"
    )]
    pub pin_dir: PathBuf,
    /// What to put in force when the policy cannot be used at start and
    /// nothing is pinned (a host booting with a broken policy): `builtin`
    /// (root on the host only), a policy FILE, or `none` (exit instead, leaving the
    /// host unguarded). The real policy goes in force at the first reload
    /// that validates.
    #[arg(long, value_name = "builtin|none|FILE", default_value = "builtin", value_parser = crate::daemon::fallback::Fallback::parse)]
    pub fallback: crate::daemon::fallback::Fallback,
    /// Serve Prometheus metrics on this address (`PORT` alone means
    /// 127.0.0.1:PORT). Off unless given. Under systemd, set it in a
    /// drop-in (`systemctl edit imds-guard`):
    /// `Environment=IMDS_GUARD_METRICS_LISTEN=9100` with
    /// `RestrictAddressFamilies=AF_INET AF_INET6`, which the packaged
    /// unit's sandbox otherwise refuses.
    #[arg(
        long,
        value_name = "ADDR",
        env = "IMDS_GUARD_METRICS_LISTEN",
        value_parser = crate::daemon::metrics::parse_listen
    )]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where the kubelet keeps its pod log directories
    /// (`<namespace>_<name>_<uid>`), for `pods` rules.
    #[arg(long, value_name = "DIR", default_value = crate::policy::cgroups::pods::DEFAULT_PODS_DIR)]
    pub kubelet_pods_dir: PathBuf,
    /// What holds the forward path: `auto` (the pinned netfilter program
    /// where the kernel has it, 6.4, nftables elsewhere) or `nftables`.
    /// Hidden: for tests of the older kernels' mechanism on a newer one.
    #[arg(long, value_name = "auto|nftables", default_value = "auto", hide = true, value_parser = parse_forward)]
    pub forward_path: crate::daemon::ForwardChoice,
    /// Write the guard's state for monitors that are not root to this
    /// file, mode 0644 (`none`: write none): what `status --json` says,
    /// with `updated_at`, at start, after each reload, when the forward
    /// path changes, every 10 seconds, and when the agent stops. A
    /// snapshot: a dead agent's is stale.
    #[arg(
        long,
        value_name = "PATH|none",
        default_value = crate::daemon::status_file::DEFAULT_PATH,
        value_parser = crate::daemon::status_file::Target::parse
    )]
    pub status_file: crate::daemon::status_file::Target,
    /// Reload the policy when its file changes, as on SIGHUP: the
    /// directory it is in is watched (a ConfigMap's `..data` swap, an
    /// editor's rename and a write in place are all seen), and the file is
    /// read once left alone for half a second. A policy that does not
    /// validate is refused, and the one in force stays. Off unless given:
    /// on a host, the policy goes in force when you reload it.
    #[arg(long, env = "IMDS_GUARD_WATCH_CONFIG")]
    pub watch_config: bool,
}

/// `--forward-path`.
fn parse_forward(text: &str) -> Result<crate::daemon::ForwardChoice, String> {
    match text {
        "auto" => Ok(crate::daemon::ForwardChoice::Auto),
        "nftables" => Ok(crate::daemon::ForwardChoice::Nftables),
        other => Err(format!("{other:?}: expected auto or nftables")),
    }
}

/// Where the guard pins its links and maps by default.
pub const DEFAULT_PIN_DIR: &str = crate::kernel::pins::DEFAULT_DIR;

#[derive(Debug, Args)]
pub struct DetachArgs {
    /// The pin directory of the guard to remove.
    #[arg(
        long,
        value_name = "DIR",
        default_value = DEFAULT_PIN_DIR,
        env = "IMDS_GUARD_PIN_DIR"
    )]
    pub pin_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The pin directory of the guard to report on.
    #[arg(
        long,
        value_name = "DIR",
        default_value = DEFAULT_PIN_DIR,
        env = "IMDS_GUARD_PIN_DIR"
    )]
    pub pin_dir: PathBuf,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also compare the policy in force with this file's (by digest): exit
    /// 5 when they differ.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Exit 5 unless the mode in force is this one (`--require enforce`
    /// fails a health check on a host left in audit mode).
    #[arg(long, value_name = "MODE", value_parser = ["enforce", "audit"])]
    pub require: Option<String>,
    /// One line instead: what is in force (the mode and the policy file,
    /// the FALLBACK policy and why, or that nothing is), said of --config
    /// or else the policy file the agent reads.
    #[arg(long, conflicts_with = "json")]
    pub short: bool,
    /// Also say who is allowed right now, from the kernel's maps: the uid
    /// and gid rules of the policy in force, the cgroups its units,
    /// patterns and pods classify, and what everyone else gets.
    #[arg(long, conflicts_with = "short")]
    pub rules: bool,
    /// Where the kubelet keeps its pod log directories: `--rules` names
    /// the pod of each cgroup a `pods` rule classifies.
    #[arg(long, value_name = "DIR", default_value = crate::policy::cgroups::pods::DEFAULT_PODS_DIR)]
    pub kubelet_pods_dir: PathBuf,
    /// The agent's status file, printed (labelled as such) when the pins
    /// cannot be read: run as another user than root.
    #[arg(long, value_name = "PATH", default_value = crate::daemon::status_file::DEFAULT_PATH)]
    pub status_file: PathBuf,
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// The pin directory of the guard whose agent to ask.
    #[arg(
        long,
        value_name = "DIR",
        default_value = DEFAULT_PIN_DIR,
        env = "IMDS_GUARD_PIN_DIR"
    )]
    pub pin_dir: PathBuf,
    /// The policy file the agent reads, to say why a reload was refused
    /// [default: /etc/imds-guard/policy.toml if there is one, else the
    /// packaged /usr/share/imds-guard/policy.toml]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// How long to wait for the answer, in seconds (a policy of 100,000
    /// uids takes about one).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("who").required(true).args(["user", "uid"])))]
pub struct CheckArgs {
    /// The policy file [default: /etc/imds-guard/policy.toml if there is
    /// one, else the packaged /usr/share/imds-guard/policy.toml]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The process's user (its uid, and its primary gid unless --gid).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// The process's real uid.
    #[arg(long, value_name = "N")]
    pub uid: Option<u32>,
    /// The process's real primary gid (default: the user's primary group).
    #[arg(long, value_name = "N")]
    pub gid: Option<u32>,
    /// The process's supplementary groups, by name or number (default
    /// with --user: those a login session of the user holds, from the
    /// group database; with --uid: none). `--groups ''` for none.
    #[arg(long, value_name = "G,...", value_delimiter = ',')]
    pub groups: Option<Vec<String>>,
    /// The process runs in a container: its pid, network or user
    /// namespace is not the agent's, so `[allow.host]` entries do not
    /// allow it.
    #[arg(long)]
    pub container: bool,
    /// The destination: an address, or ADDR:PORT ([ADDR]:PORT for IPv6)
    /// with an optional /tcp or /udp (TCP when absent), for endpoints that
    /// protect some ports only (default: the policy's protected endpoints,
    /// which all get the same verdict).
    #[arg(long, value_name = "ADDR[:PORT[/PROTO]]")]
    pub dst: Option<crate::policy::Destination>,
    /// The process runs in this systemd unit's cgroup (where systemd puts
    /// it, running or not).
    #[arg(long, value_name = "UNIT", conflicts_with = "cgroup")]
    pub unit: Option<String>,
    /// The process runs in this cgroup, a path from the cgroup v2 root
    /// (`/system.slice/foo.service`, as /proc/PID/cgroup shows it after
    /// `0::`). Without --unit or --cgroup, no cgroup rule applies.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    /// Where the kubelet keeps its pod log directories, for `pods` rules.
    #[arg(long, value_name = "DIR", default_value = crate::policy::cgroups::pods::DEFAULT_PODS_DIR)]
    pub kubelet_pods_dir: PathBuf,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// A request to judge on the connection ("GET /latest/meta-data/"),
    /// as the kernel judges each request of a caller a [requests.*] table
    /// or [imdsv2] names.
    #[arg(long, value_name = "METHOD PATH")]
    pub request: Option<String>,
    /// The request carries the IMDSv2 token header.
    #[arg(long, requires = "request")]
    pub token: bool,
}

/// Where `suggest` and `report` read the agent's decision records.
#[derive(Debug, Args)]
pub struct RecordsArgs {
    /// Read the records from FILE: the agent's `--log-format json` output,
    /// or `journalctl -o json` saved; `-` for stdin. Other lines are
    /// skipped.
    #[arg(long, value_name = "FILE|-", conflicts_with = "journal")]
    pub from: Option<PathBuf>,
    /// Read the journal of imds-guard.service through `journalctl -o
    /// json` (the default).
    #[arg(long)]
    pub journal: bool,
    /// Only the records since then: a duration back from now (`1h`,
    /// `30m`, `2d`, `1h30m`, `1w`) or a time (`2026-12-07T03:00:00Z`, with
    /// `Z` or an offset; `@SECONDS`) [default: every record of the input]
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
}

#[derive(Debug, Args)]
pub struct SuggestArgs {
    #[command(flatten)]
    pub records: RecordsArgs,
    /// Print the change to this policy file (the one in force) as a
    /// unified diff, its comments kept, instead of a whole policy.
    #[arg(long, value_name = "FILE")]
    pub against: Option<PathBuf>,
    /// Ask for each proposal: accept, refuse, widen (or narrow back) its
    /// form, as aa-logprof does; answers are lines on stdin.
    #[arg(long)]
    pub interactive: bool,
    /// Write `mode = "audit"` in the policy, to audit it in turn
    /// [default: enforce].
    #[arg(long)]
    pub audit: bool,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ReportArgs {
    #[command(subcommand)]
    pub what: Option<ReportCommand>,
    #[command(flatten)]
    pub records: RecordsArgs,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Which units, pods and users still send IMDSv1 requests (no token
    /// header), from the census the guard keeps in the kernel.
    ///
    /// Read from the pinned census: works with the agent stopped. Counts
    /// the callers whose requests the guard parses ([requests.*] tables,
    /// IMDSv2 required, [attribution] whole_service = true), since the
    /// agent that made the census loaded its programs.
    Imdsv1(Imdsv1Args),
}

#[derive(Debug, Args)]
pub struct Imdsv1Args {
    /// The pin directory of the guard to report on.
    #[arg(
        long,
        value_name = "DIR",
        default_value = DEFAULT_PIN_DIR,
        env = "IMDS_GUARD_PIN_DIR"
    )]
    pub pin_dir: PathBuf,
    /// Where the kubelet keeps its pod log directories, to name pods.
    #[arg(long, value_name = "DIR", default_value = crate::policy::cgroups::pods::DEFAULT_PODS_DIR)]
    pub kubelet_pods_dir: PathBuf,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The policy file [default: /etc/imds-guard/policy.toml if there is
    /// one, else the packaged /usr/share/imds-guard/policy.toml]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Do not resolve user and group names (for hosts that do not have
    /// them, such as a config-management CI runner).
    #[arg(long)]
    pub offline: bool,
    /// Refuse (exit 1) a policy that validates but likely says something
    /// else than meant: each warning becomes an error.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("target")
        .required(true)
        .multiple(true)
        .args(["iptables", "ip6tables", "nftables", "pf", "ipfw"]),
))]
pub struct RenderArgs {
    /// The policy file [default: /etc/imds-guard/policy.toml if there is
    /// one, else the packaged /usr/share/imds-guard/policy.toml]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// iptables rules (IPv4 endpoints); with --ip6tables, both (as
    /// commands: a restore file holds one family, so --format file takes
    /// one at a time).
    #[arg(long)]
    pub iptables: bool,
    /// ip6tables rules (IPv6 endpoints); with --iptables, both.
    #[arg(long)]
    pub ip6tables: bool,
    /// nftables rules (both families, one `table inet`).
    #[arg(long, conflicts_with_all = ["iptables", "ip6tables", "pf", "ipfw"])]
    pub nftables: bool,
    /// PF rules (pf.conf; the last matching rule wins).
    #[arg(long, conflicts_with_all = ["iptables", "ip6tables", "ipfw"])]
    pub pf: bool,
    /// IPFW rules (the first matching rule wins).
    #[arg(long, conflicts_with_all = ["iptables", "ip6tables"])]
    pub ipfw: bool,
    /// `commands`: shell commands like the AWS documentation; `file`: what
    /// the firewall's loader reads.
    #[arg(long, value_name = "FORMAT", default_value = "commands")]
    pub format: Format,
    /// Exit non-zero when the rules cannot say everything the policy says.
    #[arg(long)]
    pub strict: bool,
}

impl RenderArgs {
    /// What to render, in order: clap lets only --iptables and
    /// --ip6tables come together.
    pub fn targets(&self) -> Vec<Target> {
        [
            (self.iptables, Target::Iptables),
            (self.ip6tables, Target::Ip6tables),
            (self.nftables, Target::Nftables),
            (self.pf, Target::Pf),
            (self.ipfw, Target::Ipfw),
        ]
        .into_iter()
        .filter_map(|(asked, target)| asked.then_some(target))
        .collect()
    }
}
