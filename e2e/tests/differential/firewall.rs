//! Loading `imds-guard render` output into a test namespace with the real
//! tools, and reading it back.
//!
//! Every command runs through `nsenter --net=` into the test's own network
//! namespace (never `ip netns exec`, which remounts /sys), after a check
//! that the namespace is not the host's: the host's firewall is never read
//! or written, and deleting the namespace drops whatever was loaded.

use std::{
    collections::BTreeSet,
    fs::{self, File},
    io::Write,
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::Path,
    process::{Command, Stdio},
};

use imds_guard::{
    policy::PolicySpec,
    render::{Format, Target, render},
};
use imds_guard_e2e::{Netns, TempDir};

/// Where the rules under test came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    /// `iptables-restore --noflush` and `ip6tables-restore --noflush` of
    /// `--format file`, plus the OUTPUT hook command its header gives.
    XtablesFile,
    /// `--format commands` of both, through `sh`.
    XtablesCommands,
    /// `nft -f` of `--format file`.
    NftablesFile,
}

impl Side {
    /// The target that decides for `dst`.
    pub(super) fn target(self, dst: SocketAddr) -> Target {
        match (self, dst) {
            (Self::NftablesFile, _) => Target::Nftables,
            (_, SocketAddr::V4(_)) => Target::Iptables,
            (_, SocketAddr::V6(_)) => Target::Ip6tables,
        }
    }
}

/// Panics unless `netns` is another namespace than the test's own: the
/// firewall commands must never reach the host's rules.
fn refuse_host_namespace(netns: &Netns) {
    let id = |p: &Path| {
        let m = fs::metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
        (m.dev(), m.ino())
    };
    assert_ne!(
        id(netns.path()),
        id(Path::new("/proc/self/ns/net")),
        "{} is the host's network namespace",
        netns.path().display()
    );
}

/// Runs `program args` in `netns` with `nsenter --net` (setns only),
/// feeding it `stdin`; returns its stdout, or panics with its stderr.
pub(super) fn in_netns(netns: &Netns, program: &str, args: &[&str], stdin: Option<&str>) -> String {
    refuse_host_namespace(netns);
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns.path().display()))
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning nsenter {program}: {e}"));
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("writing to {program}: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {program}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{program} {args:?} failed in the test namespace ({}): {stderr}\ninput:\n{}",
        out.status,
        stdin.unwrap_or("")
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An ACCEPT for everything in OUTPUT, before the rules are loaded, as
/// ufw's stock ruleset has (OUTPUT jumps to its chains, which accept new
/// outgoing connections): rules appended after it would never see a packet,
/// and every verdict of a denied caller would differ from the guard's. The
/// rendered rules go first in OUTPUT, so they decide anyway.
fn accept_first(netns: &Netns) {
    for tool in ["iptables", "ip6tables"] {
        let command = format!(
            "{tool} --check OUTPUT --jump ACCEPT 2>/dev/null || {tool} --append OUTPUT --jump ACCEPT"
        );
        in_netns(netns, "sh", &["-e", "-c", &command], None);
    }
}

pub(super) fn rendered(spec: &PolicySpec, target: Target, format: Format) -> String {
    let out = render(spec, target, format);
    // Both protected addresses are in every policy, so iptables warns
    // about the IPv6 one and ip6tables about the IPv4 one; nftables warns
    // about each group entry, whose supplementary members it cannot see
    // (the documented difference the matrix checks); nothing else.
    for warning in &out.warnings {
        assert!(
            warning.contains("render --ip6tables as well")
                || warning.contains("render --iptables as well")
                || (target == Target::Nftables
                    && warning.contains("nftables matches only the primary gid")),
            "unexpected warning for --{target} --format {format}: {warning}"
        );
    }
    out.text
}

/// `iptables-save` and `ip6tables-save` output, or `nft list ruleset`.
pub(super) fn ruleset(netns: &Netns, side: Side) -> String {
    match side {
        Side::NftablesFile => in_netns(netns, "nft", &["list", "ruleset"], None),
        Side::XtablesFile | Side::XtablesCommands => {
            in_netns(netns, "iptables-save", &[], None)
                + &in_netns(netns, "ip6tables-save", &[], None)
        }
    }
}

/// `*-save` output without its dated comments and chain counters, which a
/// reload may change without changing any rule.
fn normalized(save: &str) -> String {
    save.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match (l.starts_with(':'), l.rfind(" [")) {
            (true, Some(at)) => &l[..at],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The rules of `save` (`-A` lines), panicking on a duplicate.
fn rules(save: &str, what: &str) -> usize {
    let rules: Vec<&str> = save.lines().filter(|l| l.starts_with("-A ")).collect();
    let unique: BTreeSet<&str> = rules.iter().copied().collect();
    assert_eq!(
        unique.len(),
        rules.len(),
        "{what}: duplicate rules in\n{save}"
    );
    rules.len()
}

/// Loads the rules of `side` for `spec` into `netns`, twice, checking that
/// the second load changes nothing; returns the text that was loaded.
pub(super) fn load(netns: &Netns, side: Side, spec: &PolicySpec) -> String {
    let mut loaded = String::new();
    if side != Side::NftablesFile {
        accept_first(netns);
    }
    match side {
        Side::XtablesFile => {
            for target in [Target::Iptables, Target::Ip6tables] {
                let text = rendered(spec, target, Format::File);
                let appends = text.lines().filter(|l| l.starts_with("--append ")).count();
                let restore = format!("{target}-restore");
                let hook = text
                    .lines()
                    .find_map(|l| l.strip_prefix("# Then hook the chain into OUTPUT, once: "))
                    .unwrap_or_else(|| panic!("no OUTPUT hook command in\n{text}"));
                let save = format!("{target}-save");
                let mut saves = Vec::new();
                for _ in 0..2 {
                    in_netns(netns, &restore, &["--noflush"], Some(&text));
                    in_netns(netns, "sh", &["-e", "-c", hook], None);
                    saves.push(normalized(&in_netns(netns, &save, &[], None)));
                }
                assert_eq!(
                    saves[0], saves[1],
                    "{restore} --noflush plus `{hook}`, loaded twice, changed the rules"
                );
                // The file's rules, the one hook on OUTPUT, and the ACCEPT
                // it was inserted before.
                assert_eq!(
                    rules(&saves[1], &save),
                    appends + 2,
                    "{save} after loading\n{text}\nshows\n{}",
                    saves[1]
                );
                loaded += &text;
            }
        }
        Side::XtablesCommands => {
            for target in [Target::Iptables, Target::Ip6tables] {
                let text = rendered(spec, target, Format::Commands);
                let save = format!("{target}-save");
                let mut saves = Vec::new();
                // `-e`: a failing command fails the test (the `--check ... ||`
                // and `--new-chain ... ||` guards are lists, which `-e` lets
                // fail on their left).
                for _ in 0..2 {
                    in_netns(netns, "sh", &["-e", "-c", &text], None);
                    saves.push(normalized(&in_netns(netns, &save, &[], None)));
                }
                assert_eq!(
                    saves[0], saves[1],
                    "the commands, run twice, changed the rules:\n{text}"
                );
                assert!(
                    rules(&saves[1], &save) > 0,
                    "the commands loaded no rule:\n{text}"
                );
                loaded += &text;
            }
        }
        Side::NftablesFile => {
            let text = rendered(spec, Target::Nftables, Format::File);
            let dir = TempDir::new();
            let file = dir.path().join("imds-guard.nft");
            File::create(&file)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
            let file = file.to_string_lossy();
            let mut lists = Vec::new();
            for _ in 0..2 {
                in_netns(netns, "nft", &["-f", &file], None);
                lists.push(in_netns(netns, "nft", &["list", "ruleset"], None));
            }
            assert_eq!(
                lists[0], lists[1],
                "nft -f, loaded twice, changed the ruleset:\n{text}"
            );
            assert!(
                lists[1].contains("table inet imds_guard"),
                "nft -f loaded no table:\n{text}\nruleset:\n{}",
                lists[1]
            );
            loaded = text;
        }
    }
    loaded
}

/// `iptables --version`, which names the backend (`nf_tables` or
/// `legacy`).
pub(super) fn xtables_backend() -> String {
    let netns = Netns::new();
    in_netns(&netns, "iptables", &["--version"], None)
        .trim()
        .to_owned()
}

/// Says `skipping:` (a failure with `CI=true`, as the harness does) when a
/// tool this test loads rules with is missing.
pub(super) fn tools_or_skip(test: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = [
        "nsenter",
        "sh",
        "iptables",
        "iptables-restore",
        "iptables-save",
        "ip6tables-restore",
        "ip6tables-save",
        "nft",
    ]
    .into_iter()
    .filter(|tool| !std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
    .collect();
    if missing.is_empty() {
        return true;
    }
    let reason = format!("not installed: {}", missing.join(", "));
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {reason} (CI=true: a skip is a failure)");
    }
    eprintln!("skipping: {test}: {reason}");
    false
}

/// The LOG packet counts of `*-save -c` output: one per would-deny SYN.
pub(super) fn logged(save: &str) -> u64 {
    save.lines()
        .filter(|l| l.contains(" -j LOG "))
        .map(|l| {
            let counts = l
                .strip_prefix('[')
                .and_then(|l| l.split_once(':'))
                .unwrap_or_else(|| panic!("no counters on {l:?}"));
            counts
                .0
                .parse::<u64>()
                .unwrap_or_else(|e| panic!("packet count of {l:?}: {e}"))
        })
        .sum()
}
