//! `imds-guard render`: the same policy as iptables, ip6tables, nftables, PF
//! or IPFW rules, for hosts that cannot run the eBPF guard and for a second
//! layer where they can.
//!
//! The output mirrors the AWS documentation ("Limit access to the instance
//! metadata service"): a policy with a single identity renders as exactly
//! the lines AWS prints, with `#` comments around them (and, for iptables,
//! a `--check ... ||` line before each, so that a re-run adds nothing).
//! Larger policies keep
//! the eBPF guard's order of evaluation (`plan.rs`) in each firewall's own
//! idiom: a dedicated chain for iptables, sets in one `table inet` for
//! nftables, last-match-wins for PF, first-match-wins for IPFW.
//!
//! Rendering never fails: what a target cannot express becomes a warning in
//! [`Rendered::warnings`] (the CLI prints them to stderr and, with
//! `--strict`, exits non-zero), never a silently different rule. Names are
//! written as the policy spells them, unresolved: the firewall's loader
//! resolves them on the host that loads the rules.
//!
//! Loading an output twice leaves the same rules as loading it once (PF and
//! IPFW rule lines: when loaded as their comments say). The target modules
//! say how; `docs/render-notes.md` explains the choices and where a firewall
//! rule cannot mean exactly what the eBPF guard does.

mod cgroups;
mod ipfw;
mod iptables;
mod names;
mod nftables;
mod pf;
mod plan;

use std::{fmt, str::FromStr};

pub use self::cgroups::{UnitPath, default_unit_path};
use self::{
    cgroups::CgroupMatch,
    names::Syntax,
    plan::{Owner, Plan},
};
use crate::policy::{Action, Identity, Location, Mode, PolicySpec, Scope};

/// A firewall to render the policy for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Linux iptables (IPv4 endpoints).
    Iptables,
    /// Linux ip6tables (IPv6 endpoints).
    Ip6tables,
    /// Linux nftables: one `table inet` for both families.
    Nftables,
    /// OpenBSD/FreeBSD/macOS PF, as pf.conf rules.
    Pf,
    /// FreeBSD IPFW.
    Ipfw,
}

impl Target {
    /// Every target, in the order the CLI lists them.
    pub const ALL: [Target; 5] = [
        Self::Iptables,
        Self::Ip6tables,
        Self::Nftables,
        Self::Pf,
        Self::Ipfw,
    ];

    /// The name of the CLI flag without its dashes (`iptables`, `pf`...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Iptables => "iptables",
            Self::Ip6tables => "ip6tables",
            Self::Nftables => "nftables",
            Self::Pf => "pf",
            Self::Ipfw => "ipfw",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What kind of text to print.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Format {
    /// Lines to paste, as the AWS documentation prints them: shell commands
    /// for iptables, ip6tables and nftables, rule lines for PF and IPFW.
    #[default]
    Commands,
    /// What the target's loader reads: `iptables-restore --noflush`,
    /// `nft -f`, `pfctl -a imds-guard -f`, `ipfw /absolute/path`.
    File,
}

impl Format {
    /// The value of `--format`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Commands => "commands",
            Self::File => "file",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `--format` value that is neither `commands` nor `file`.
#[derive(Debug, thiserror::Error)]
#[error("unknown render format {0:?}: expected commands or file")]
pub struct UnknownFormat(String);

impl FromStr for Format {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "commands" => Ok(Self::Commands),
            "file" => Ok(Self::File),
            other => Err(UnknownFormat(other.to_owned())),
        }
    }
}

/// The rules, and what they could not say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    /// The output, one line per rule or comment, ending with a newline.
    pub text: String,
    /// `FILE:LINE:COL: what the rules do not express`, one per problem.
    pub warnings: Vec<String>,
}

/// Renders `spec` for `target` in `format`, with units where systemd puts
/// them by default.
pub fn render(spec: &PolicySpec, target: Target, format: Format) -> Rendered {
    render_all(spec, &[target], format)
}

/// [`render`], with units where `unit_path` says.
pub fn render_with(
    spec: &PolicySpec,
    target: Target,
    format: Format,
    unit_path: &dyn Fn(&str) -> UnitPath,
) -> Rendered {
    render_all_with(spec, &[target], format, unit_path)
}

/// Renders `spec` for each of `targets`, one after the other (iptables and
/// ip6tables together: neither warns about the other family's addresses,
/// which the other covers). A warning both give is given once.
pub fn render_all(spec: &PolicySpec, targets: &[Target], format: Format) -> Rendered {
    render_all_with(spec, targets, format, &default_unit_path)
}

/// [`render_all`], with units where `unit_path` says.
pub fn render_all_with(
    spec: &PolicySpec,
    targets: &[Target],
    format: Format,
    unit_path: &dyn Fn(&str) -> UnitPath,
) -> Rendered {
    let mut all = Rendered::default();
    for &target in targets {
        let mut out = Out::new(spec, target, format, unit_path);
        out.together = targets.to_vec();
        render_one(&mut out);
        let one = out.finish();
        all.text.push_str(&one.text);
        for warning in one.warnings {
            if !all.warnings.contains(&warning) {
                all.warnings.push(warning);
            }
        }
    }
    all
}

fn render_one(out: &mut Out<'_>) {
    match out.target {
        Target::Iptables => iptables::render(out, plan::Family::V4),
        Target::Ip6tables => iptables::render(out, plan::Family::V6),
        Target::Nftables => nftables::render(out),
        Target::Pf => pf::render(out),
        Target::Ipfw => ipfw::render(out),
    }
}

/// The prefix of every log line the audit rules write, where the target
/// lets us choose one (iptables, nftables). Short enough for iptables' 29
/// characters.
const LOG_PREFIX: &str = "imds-guard audit: ";

/// A rule of the plan with its identity already written in the target's
/// syntax.
#[derive(Clone, Debug)]
struct Written {
    action: Action,
    /// User or group.
    group: bool,
    /// The name, quoted if the syntax needs it, or the number.
    text: String,
}

/// The output being built, shared by the target modules.
struct Out<'a> {
    plan: Plan<'a>,
    target: Target,
    format: Format,
    /// The plan's rules in first-match order, minus those whose names the
    /// target cannot write.
    rules: Vec<Written>,
    /// The unit and cgroup entries the target can write, in entry order.
    cgroups: Vec<CgroupMatch>,
    text: String,
    warnings: Vec<String>,
    /// Every target rendered in the same output, this one included.
    together: Vec<Target>,
}

impl<'a> Out<'a> {
    fn new(
        spec: &'a PolicySpec,
        target: Target,
        format: Format,
        unit_path: &dyn Fn(&str) -> UnitPath,
    ) -> Self {
        let plan = Plan::new(spec);
        let mut out = Self {
            plan,
            target,
            format,
            rules: Vec::new(),
            cgroups: Vec::new(),
            text: String::new(),
            warnings: Vec::new(),
            together: vec![target],
        };
        out.header();
        out.write_rules();
        out.identity_warnings();
        out.write_cgroups(unit_path);
        out
    }

    /// What the guard decides by that this target cannot match: the
    /// supplementary groups (nftables, PF), and the host versus a
    /// container (every target). One warning per entry concerned.
    fn identity_warnings(&mut self) {
        let entries = &self.plan.spec.entries;
        let suppl = !matches!(
            self.target,
            Target::Iptables | Target::Ip6tables | Target::Ipfw
        );
        let mut warnings = Vec::new();
        for e in entries {
            let group = matches!(e.identity, Identity::Group(_) | Identity::Gid(_));
            if group && suppl {
                let (who, effect) = match e.action {
                    Action::Deny => ("denied", "gets through these rules"),
                    Action::Allow => ("allowed", "is refused by these rules"),
                };
                warnings.push((
                    e.at,
                    format!(
                        "{} matches only the primary gid: a process holding this {who} {} as \
                         a supplementary group {effect}, while the eBPF guard matches it",
                        self.target, e.identity
                    ),
                ));
            }
            if e.scope == Scope::Host {
                warnings.push((
                    e.at,
                    format!(
                        "{} cannot tell the host from a container: this [allow.host] entry is \
                         rendered as an allow, so {} in a container that shares the host's \
                         network namespace (or its own pid or user namespace) is allowed too, \
                         while the eBPF guard refuses it",
                        self.target, e.identity
                    ),
                ));
            }
        }
        let requests = &self.plan.spec.requests;
        for (&index, &set) in &requests.members {
            let (Some(e), Some(set)) = (entries.get(index), requests.sets.get(set)) else {
                continue;
            };
            warnings.push((
                e.at,
                format!(
                    "{} cannot express request paths: {} of [requests.{}] is rendered as denied \
                     (the eBPF guard lets it send the rule set's requests)",
                    self.target, e.identity, set.name
                ),
            ));
        }
        if requests.imdsv2.required || !requests.imdsv2.require.is_empty() {
            self.warn(
                None,
                format!(
                    "{} cannot require IMDSv2 ([imdsv2]): it does not read requests; set \
                     HttpTokens=required on the instance when every caller can use IMDSv2",
                    self.target
                ),
            );
        }
        for (at, message) in warnings {
            self.warn(Some(at), message);
        }
    }

    fn finish(self) -> Rendered {
        Rendered {
            text: self.text,
            warnings: self.warnings,
        }
    }

    /// The syntax names are written in.
    fn syntax(&self) -> Syntax {
        match (self.target, self.format) {
            (Target::Iptables | Target::Ip6tables, Format::Commands) => Syntax::Shell,
            (Target::Iptables | Target::Ip6tables, Format::File) => Syntax::Restore,
            (Target::Nftables, _) => Syntax::Nft,
            (Target::Pf, _) => Syntax::Pf,
            (Target::Ipfw, _) => Syntax::Ipfw,
        }
    }

    /// Writes every identity once, so that a name that needs a warning gets
    /// one warning however many addresses repeat it.
    fn write_rules(&mut self) {
        let syntax = self.syntax();
        let rules = self.plan.rules.clone();
        for rule in rules {
            let (kind, id, group) = match rule.owner {
                Owner::User(id) => ("user", id, false),
                Owner::Group(id) => ("group", id, true),
            };
            let text = match id.name() {
                None => Some(id.to_string()),
                Some(name) => self.write_name(kind, name, syntax, rule.action, rule.at),
            };
            if let Some(text) = text {
                self.rules.push(Written {
                    action: rule.action,
                    group,
                    text,
                });
            }
        }
    }

    /// `name` in `syntax`, with a warning when it is unusual; `None`, with
    /// a warning and a comment, when the syntax cannot carry it.
    fn write_name(
        &mut self,
        kind: &str,
        name: &str,
        syntax: Syntax,
        action: Action,
        at: Location,
    ) -> Option<String> {
        let Some(text) = names::write(name, syntax) else {
            let entry = match action {
                Action::Allow => "allow",
                Action::Deny => "deny",
            };
            self.warn(
                Some(at),
                format!(
                    "{kind} name {name:?} cannot be written for {}; \
                     its {entry} entry is left out of these rules",
                    self.target
                ),
            );
            self.comment(&format!(
                "left out: {kind} {name:?} (see the warnings on stderr)"
            ));
            return None;
        };
        if !names::is_plain(name) {
            self.warn(
                Some(at),
                format!(
                    "{kind} name {name:?} is unusual (not [A-Za-z_][A-Za-z0-9._-]*); \
                     check that {} reads it as written before loading the rules",
                    self.target
                ),
            );
        }
        Some(text)
    }

    /// The comment lines every output starts with.
    fn header(&mut self) {
        let spec = self.plan.spec;
        self.comment(&format!(
            "imds-guard render --{} --format {}",
            self.target, self.format
        ));
        let mode = match spec.mode {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit: would-deny connections are logged and let through",
        };
        self.comment(&format!(
            "policy: {}, mode {mode}",
            names::comment_safe(&spec.path.display().to_string())
        ));
        self.comment(
            "TCP only, like the AWS examples: UDP to these addresses is not filtered here \
             (the eBPF guard filters both)",
        );
        if spec.endpoints.iter().any(|e| e.port.is_some()) {
            self.comment(
                "Ports: an address with ports is filtered on those ports, for the protocols \
                 named (UDP too), and a fragment after the first to it (no port to read) is \
                 judged as going to a protected port.",
            );
        }
    }

    /// The rules in first-match order (iptables, nftables, IPFW): the
    /// plan's order.
    fn first_match(&self) -> impl Iterator<Item = &Written> {
        self.rules.iter()
    }

    /// The rules in last-match order (PF): allows, then denies, so that a
    /// deny wins as it does in the eBPF guard.
    fn last_match(&self) -> impl Iterator<Item = &Written> {
        let allows = self.rules.iter().filter(|r| r.action == Action::Allow);
        allows.chain(self.rules.iter().filter(|r| r.action == Action::Deny))
    }

    /// Whether the policy makes any rule at all for this target: an entry
    /// it can write, or a default that denies. An [allow] entry that cannot
    /// be written still makes the default deny, so leaving it out fails
    /// closed for that identity.
    fn has_rules(&self) -> bool {
        !self.rules.is_empty() || !self.cgroups.is_empty() || self.plan.default == Action::Deny
    }

    fn audit(&self) -> bool {
        self.plan.spec.mode == Mode::Audit
    }

    fn line(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
    }

    fn comment(&mut self, text: &str) {
        self.text.push_str("# ");
        self.text.push_str(text);
        self.text.push('\n');
    }

    /// Records a warning at `at` (or at the file when unknown).
    fn warn(&mut self, at: Option<Location>, message: String) {
        let path = self.plan.spec.path.display();
        self.warnings.push(match at {
            Some(at) => format!("{path}:{at}: {message}"),
            None => format!("{path}: {message}"),
        });
    }

    /// Says, as a comment and a warning, that the policy yields no rule for
    /// this target.
    fn nothing_to_render(&mut self, why: &str) {
        self.comment(&format!("nothing to render: {why}"));
        self.warn(
            None,
            format!("nothing to render for {}: {why}", self.target),
        );
    }

    /// Whether there is anything to enforce; when there is not, says why
    /// in a comment and a warning.
    fn ready(&mut self) -> bool {
        if self.plan.spec.entries.is_empty() {
            self.nothing_to_render("the policy has no [allow] or [deny] entry");
            return false;
        }
        if !self.has_rules() {
            self.nothing_to_render("no entry of the policy can be written for this target");
            return false;
        }
        true
    }
}

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
