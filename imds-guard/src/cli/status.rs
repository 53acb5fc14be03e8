//! `imds-guard status`: what the kernel enforces, as text or JSON.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use imds_guard_common::{Bounds, forward_flags};
use serde_json::{Value, json};

use super::{
    CliError, Outcome, StatusArgs,
    out::{out, outln},
};
use crate::{
    chain::Chain,
    kernel::{
        btf::Btf,
        features::{self, Build, Found},
        forward::{self, status::Mechanism},
        inspect::{self, CgroupStatus, Status},
        offsets::{self, kernel_release},
        pins::Pins,
        place, programs,
        rules::InForce,
    },
    policy::{
        Mode, PolicySpec, SystemResolver,
        cgroups::{Pods, pods},
        hex,
    },
    text,
};

/// What the running kernel offers of what the guard needs.
pub struct KernelReport {
    pub release: String,
    /// Every feature, or why they could not be checked.
    pub features: Result<Vec<Found>, String>,
    /// The build of the programs the agent loads on this kernel, when it
    /// can be told.
    pub build: Option<Build>,
}

/// Reads the running kernel's BTF for [`features::FEATURES`], and for
/// `bpf_loop`, which chooses the build of the programs.
pub fn kernel_report() -> KernelReport {
    let release = kernel_release();
    let (features, build) = match Btf::from_sys_fs() {
        Ok(btf) => (
            features::check(&btf).map_err(|e| Chain(&e).to_string()),
            Build::for_kernel(&btf, &release).ok(),
        ),
        Err(e) => (Err(Chain(&e).to_string()), None),
    };
    KernelReport {
        release,
        features,
        build,
    }
}

impl KernelReport {
    /// One line: the release, and what is missing if anything.
    pub fn summary(&self) -> String {
        let what = match &self.features {
            Ok(found) => {
                let missing: Vec<String> = found
                    .iter()
                    .filter(|f| !f.present)
                    .map(|f| format!("{} ({})", f.name, f.missing.join(", ")))
                    .collect();
                if missing.is_empty() {
                    let build = match self.build {
                        Some(b @ Build::Loop) => format!("; the {} build loads", b.name()),
                        Some(b @ Build::Unrolled) => format!(
                            "; the {} build loads ({} supplementary groups, {} user namespaces \
                             deep at most)",
                            b.name(),
                            b.bounds().groups,
                            b.bounds().userns_depth
                        ),
                        None => String::new(),
                    };
                    format!(
                        "has every feature the guard needs ({} checked){build}",
                        found.len()
                    )
                } else {
                    format!("LACKS {}", missing.join("; "))
                }
            }
            Err(e) => format!("features unknown: {e}"),
        };
        format!("kernel {}: {what}", self.release)
    }

    fn to_json(&self) -> Value {
        let features = match &self.features {
            Ok(found) => json!(
                found
                    .iter()
                    .map(|f| json!({"feature": f.name, "present": f.present, "missing": f.missing}))
                    .collect::<Vec<_>>()
            ),
            Err(e) => json!({ "error": e }),
        };
        json!({
            "release": self.release,
            "features": features,
            "programs": self.build.map(Build::name),
        })
    }
}

pub fn execute(args: &StatusArgs) -> Result<Outcome, CliError> {
    let status = match Status::read(&Pins::new(&args.pin_dir)) {
        Ok(status) => status,
        // Not root: what the agent last wrote, said to be that, and still
        // exit 3 (the kernel was not read).
        Err(e) if e.permission_denied() => {
            super::snapshot::print(&args.status_file, args.json)?;
            return Err(CliError::runtime(e));
        }
        Err(e) => return Err(CliError::runtime(e)),
    };
    if args.short {
        let config = super::policy_file(args.config.as_deref());
        outln!("{}", super::state::line(&status, &config))?;
        let healthy = status.enforcing()
            && !status.in_fallback()
            && args
                .config
                .as_deref()
                .is_none_or(|file| compare(&status, file).matches());
        return Ok(if healthy {
            Outcome::Success
        } else {
            Outcome::NotEnforcing
        });
    }
    let kernel = kernel_report();
    let compared = args.config.as_deref().map(|file| compare(&status, file));
    let required = args
        .require
        .as_deref()
        .map(|mode| status.mode_name() == mode);
    let (rules, listed) = rules_of(args)?;
    // The request census, when the guard keeps one; a census that cannot
    // be read leaves the line out rather than the status.
    let imdsv1 = super::imdsv1::read(&args.pin_dir, &args.kubelet_pods_dir)
        .ok()
        .flatten();
    if args.json {
        let mut value = inspect::to_json(&status);
        value["kernel"] = kernel.to_json();
        if let Some(c) = &compared {
            value["compared"] = c.to_json();
        }
        if let (Some(mode), Some(met)) = (&args.require, required) {
            value["required"] = json!({ "mode": mode, "met": met });
        }
        if let Some(r) = &rules {
            value["rules"] = super::rules::to_json(r.as_ref(), &listed);
        }
        if let Some(r) = &imdsv1 {
            value["imdsv1"] = r.json();
        }
        outln!("{value}")?;
    } else {
        out!("{}", to_text(&status))?;
        if let Some(r) = &imdsv1 {
            outln!("  callers still using IMDSv1: {}", r.status_line())?;
        }
        outln!("  {}", kernel.summary())?;
        if let Some(c) = &compared {
            outln!("  {}", c.summary())?;
        }
        if let (Some(mode), Some(false)) = (&args.require, required) {
            outln!(
                "  REQUIRED mode {mode}: not met (mode {})",
                status.mode_name()
            )?;
        }
        if let Some(r) = &rules {
            out!("{}", super::rules::to_text(r.as_ref(), &listed))?;
        }
    }
    // The fallback decides, but not by the policy configured: a health
    // check must see it. So must a policy other than the one asked about,
    // and a mode other than the one required.
    let healthy = status.enforcing()
        && !status.in_fallback()
        && compared.as_ref().is_none_or(|c| c.matches())
        && required.is_none_or(|met| met);
    Ok(if healthy {
        Outcome::Success
    } else {
        Outcome::NotEnforcing
    })
}

/// What `--rules` reads: the rules in force, and the pods to name the
/// cgroups they classify (none when the kubelet's directory cannot be
/// read).
fn rules_of(args: &StatusArgs) -> Result<(Option<Option<InForce>>, Pods), CliError> {
    if !args.rules {
        return Ok((None, Pods::new()));
    }
    let rules = super::rules::read(&Pins::new(&args.pin_dir))?;
    let listed = pods::list(&args.kubelet_pods_dir).unwrap_or_default();
    Ok((Some(rules), listed))
}

/// The policy in force compared with a file's.
struct Compared {
    file: PathBuf,
    /// The file's digest, or why it has none.
    digest: Result<String, String>,
    in_force: Option<String>,
}

impl Compared {
    fn matches(&self) -> bool {
        matches!((&self.digest, &self.in_force), (Ok(a), Some(b)) if a == b)
    }

    fn summary(&self) -> String {
        let file = self.file.display();
        match (&self.digest, &self.in_force) {
            (Err(e), _) => format!("policy {file}: cannot be compared: {e}"),
            (Ok(_), None) => format!("policy {file}: no policy is in force to compare with"),
            (Ok(a), Some(_)) if self.matches() => format!("policy {file}: in force (sha256 {a})"),
            (Ok(a), Some(b)) => {
                format!(
                    "policy {file}: DIFFERS from the policy in force (file sha256 {a}, in force {b})"
                )
            }
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "config": self.file,
            "digest": self.digest.as_ref().ok(),
            "error": self.digest.as_ref().err(),
            "matches": self.matches(),
        })
    }
}

/// Validates and resolves `file` as the agent would, for its digest.
fn compare(status: &Status, file: &Path) -> Compared {
    let digest = PolicySpec::load(file)
        .and_then(|spec| spec.resolve(&SystemResolver))
        .map(|policy| hex(&policy.digest()))
        .map_err(|e| e.to_string().lines().next().unwrap_or_default().to_owned());
    Compared {
        file: file.to_owned(),
        digest,
        in_force: status.config.map(|(_, c)| hex(&c.digest)),
    }
}

/// The text form of [`identity_json`].
fn identity_text(status: &Status) -> Option<String> {
    let r = status.resolved?;
    let (groups, owners) = status.reads();
    let scan = if groups {
        format!(
            "up to {} supplementary groups per decision (a caller holding more is denied)",
            r.max_groups
        )
    } else {
        format!(
            "no supplementary group (no group rule; the bound is {})",
            r.max_groups
        )
    };
    let initial = |kind, ino: u32| match place::initial(kind, ino.into()) {
        Some(true) => "",
        _ => " (NOT the initial one)",
    };
    let net = if place::own_net_ns_is(r.host.net.into()) {
        " (this command's)"
    } else {
        " (not this command's)"
    };
    let build = match Bounds::from_groups(r.max_groups).and_then(Build::of) {
        Some(build @ Build::Loop) => format!("the {} build", build.name()),
        Some(build @ Build::Unrolled) => format!(
            "the {} build (no bpf_loop on this kernel, or IMDS_GUARD_PROGRAMS asked for it), \
             user namespaces read {} deep at most (a caller deeper is unreadable)",
            build.name(),
            build.bounds().userns_depth
        ),
        None => "an unknown build".to_owned(),
    };
    Some(format!(
        "  identity: {build}; reads {scan}; {} the creators of user namespaces; host is \
         pid:[{}]{} net:[{}]{net} user:[{}]{}; {} kernel offsets resolved from BTF (--json lists \
         them)",
        if owners { "checks" } else { "does not check" },
        r.host.pid,
        initial("pid", r.host.pid),
        r.host.net,
        r.host.user,
        initial("user", r.host.user),
        offsets::named(&r.offsets).len()
    ))
}

pub fn to_text(status: &Status) -> String {
    let mut s = String::new();
    let mode = status.mode_name();
    let state = if status.enforcing() {
        let doing = if status.mode() == Some(Mode::Audit) {
            "auditing"
        } else {
            "enforcing"
        };
        format!("{doing} (mode {mode})")
    } else if status.links.is_empty() {
        "not attached".to_owned()
    } else if status.live_links() == programs::GUARDING && status.mode().is_some() {
        format!("NOT enforcing (the forward path is open, mode {mode})")
    } else {
        format!(
            "NOT enforcing ({} of {} hooks attached, mode {mode})",
            status.live_links(),
            programs::GUARDING,
        )
    };
    let _ = writeln!(s, "imds-guard: {state}");
    where_and_what(status, &mut s);
    warnings(status, &mut s);
    if let Some(c) = status.counters {
        let _ = writeln!(
            s,
            "  counters: allowed {} denied {} audited {} events lost {} internal errors {}",
            c.allowed, c.denied, c.audited, c.events_lost, c.errors
        );
    }
    if let Some(c) = status.cgroups {
        let tracking = if c.tracking {
            "new cgroups classified as they are created"
        } else {
            "NOT tracking new cgroups (no pinned cgroup_mkdir link)"
        };
        let _ = writeln!(
            s,
            "  cgroups:  {} unit/cgroup/pod patterns, {} cgroups classified; {tracking}; since \
             loaded: classified {} unclassified {} not stored {} over quota {} events lost {}",
            c.patterns,
            c.cgroups,
            c.classified,
            c.unclassified,
            c.not_stored,
            c.over_quota,
            c.events_lost
        );
        let _ = writeln!(s, "  cgroup map: {}", map_text(&c));
    }
    let _ = writeln!(s, "  forward:  {}", forward_text(status));
    s
}

/// The forward path in one line: what holds it, whether it holds as the
/// agent left it, and its counts.
fn forward_text(status: &Status) -> String {
    let f = match &status.forward {
        Ok(f) => f,
        Err(e) => return format!("unknown: {e}"),
    };
    let by = match f.mechanism() {
        Mechanism::Netfilter => {
            let links: Vec<String> = f
                .links
                .iter()
                .map(|l| format!("{} link {} priority {}", l.name, l.link_id, l.priority))
                .collect();
            format!(
                "the pinned forward program (netfilter, {}; a detached link cannot be told \
                 from a live one)",
                links.join(", ")
            )
        }
        Mechanism::Nftables => {
            let owner = if f
                .state
                .is_some_and(|s| s.flags & forward_flags::NO_OWNER != 0)
            {
                "no owned table (this kernel has no NFT_TABLE_F_OWNER, 5.12, or the agent \
                 could not write it: see its log); put back from nf_tables' notifications \
                 while the agent runs"
            } else if f.owned == Ok(true) {
                "and the agent's own table"
            } else {
                "the agent's own table goes with it"
            };
            let forced = if f
                .state
                .is_some_and(|s| s.flags & forward_flags::FORCED != 0)
            {
                ", chosen over the netfilter program by the agent's options"
            } else {
                ""
            };
            format!("nftables (table inet {}; {owner}{forced})", forward::TABLE)
        }
        Mechanism::Nothing => "nothing".to_owned(),
    };
    let counts = f.counters().map_or_else(String::new, |c| {
        format!(": dropped {} audited {}", c.dropped, c.audited)
    });
    match status.forward_problem() {
        None => format!("forwarded packets to protected addresses dropped by {by}{counts}"),
        Some(why) => format!("NOT guarded: {why}; held by {by}{counts}"),
    }
}

/// The pins, the cgroup, the links, the policy in force and the agent.
fn where_and_what(status: &Status, s: &mut String) {
    if status.in_fallback() {
        let _ = writeln!(
            s,
            "  FALLBACK: the configured policy could not be used when the agent started; the \
             agent's fallback policy is in force until a reload brings one that validates"
        );
    }
    let _ = writeln!(s, "  pins:     {}", status.pin_dir.display());
    if let Some(line) = identity_text(status) {
        let _ = writeln!(s, "{line}");
    }
    if let Some(l) = status.links.first() {
        let path = status.cgroup.as_ref().map_or_else(
            || "(path not found)".to_owned(),
            |p| p.display().to_string(),
        );
        let _ = writeln!(s, "  cgroup:   {path} (id {})", l.cgroup_id);
    }
    if let Some(g) = &status.guards {
        let _ = writeln!(s, "  guards:   {}", g.describe());
    }
    for l in &status.links {
        let _ = writeln!(
            s,
            "  {} link {} program {}{}",
            l.program,
            l.link_id,
            l.prog_id,
            if l.cgroup_id == 0 { " (detached)" } else { "" }
        );
    }
    if let Some((generation, c)) = status.config {
        let _ = writeln!(
            s,
            "  policy:   sha256 {} (generation {generation}, epoch {})",
            hex(&c.digest),
            c.epoch
        );
        if let Some(endpoints) = &status.endpoints {
            let _ = writeln!(s, "  protects: {}", endpoints.join(", "));
        }
        let _ = writeln!(
            s,
            "  since:    {} (attached), policy applied {}",
            text::utc(c.attached_unix),
            text::utc(c.applied_unix)
        );
        let _ = writeln!(
            s,
            "  agent:    pid {} {}",
            c.agent_pid,
            if status.agent_alive {
                "running"
            } else {
                "not running (enforcement continues)"
            }
        );
    }
}

/// What an operator must act on: names left out, a refused reload,
/// another guard.
/// How full the classification map is, and who holds most of it.
fn map_text(c: &CgroupStatus) -> String {
    let percent = |n: u64, of: u32| n * 100 / u64::from(of.max(1));
    let mut text = format!(
        "{} of {} entries ({}%); each creator but root on the host may hold {}, all of them \
         {}",
        c.cgroups,
        c.capacity,
        percent(c.cgroups, c.capacity),
        c.quota,
        c.shared
    );
    if let Some(charged) = c.charged {
        let _ = write!(text, "; they hold {charged}");
    }
    if let Some((uid, n)) = c.largest {
        let _ = write!(text, ", most of it uid {uid} ({n})");
    }
    text
}

fn warnings(status: &Status, s: &mut String) {
    if status.names_left_out() {
        let _ = writeln!(
            s,
            "  NAMES LEFT OUT: some [allow] users or groups did not resolve and cannot connect \
             until they do; the agent retries (see its log)"
        );
    }
    if status.reload_refused() {
        let _ = writeln!(
            s,
            "  LAST RELOAD REFUSED: the policy file did not validate or could not be written; \
             the policy in force is the one before (see the agent's log)"
        );
    }
    if !status.other_guards.is_empty() {
        let list: Vec<String> = status
            .other_guards
            .iter()
            .map(|o| format!("{} (program id {})", o.program, o.prog_id))
            .collect();
        let _ = writeln!(
            s,
            "  WARNING: another guard is attached to this cgroup, pinned elsewhere: {}",
            list.join(", ")
        );
    }
}
