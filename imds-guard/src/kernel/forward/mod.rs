//! The forward path: packets the host forwards to a protected address.
//! They have no local socket (they come from a container's or a VM's own
//! network namespace, a TUN device, an `AF_PACKET` frame), so no program
//! of the cgroup ever sees them and no owner can be judged: the guard drops
//! them, unless `[forward]` names where they may come from.
//!
//! Where the kernel has BPF netfilter programs (6.4), the pinned `forward`
//! program holds the forward path (`kernel/netfilter/`). Elsewhere it is
//! this: nftables tables in the network namespace the agent runs in,
//! hooked at `forward` before every other chain. nftables because it
//! exists on every kernel the guard supports, it matches every interface
//! including those created later without the agent having to catch them
//! (tc/XDP would have to), and a table outlives the agent as the pinned
//! programs do. Two tables:
//! - this one, unowned (priority -300): it holds while the agent is dead,
//!   but `nft flush ruleset` (what Debian's `nftables.service` runs at
//!   stop, and the first line of its stock `/etc/nftables.conf`) deletes
//!   it; the agent puts it back as soon as nf_tables says so (`watch.rs`);
//! - the agent's own (`owned.rs`, `flags owner`, 5.12), which no one else
//!   can flush or change, and which goes with the agent.
//!
//! This table is replaced in one transaction (`nft -f`: create if missing,
//! delete, define): a restart or a reload changes it with no moment
//! without it, and there is never a second copy. `detach` deletes it.
//!
//! Each dropped packet is counted (named counters, read by `status`), and
//! logged to NFLOG group [`LOG_GROUP`] at a bounded rate per source (its
//! interface and address, in a dynamic set: one container's flood spends
//! its own budget, not every source's), which the agent reads
//! (`daemon/nflog.rs`).

use std::{
    io::Write as _,
    net::IpAddr,
    process::{Command, Stdio},
};

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::policy::{Mode, PolicySpec, forward::Prefix};

pub mod owned;
pub mod status;
pub mod watch;

/// The table's name (`table inet imds_guard_forward`); distinct from the
/// `imds_guard` table `render --nftables` writes.
pub const TABLE: &str = "imds_guard_forward";
/// The NFLOG group dropped packets are logged to.
pub const LOG_GROUP: u16 = 4269;
/// What the log lines carry as their prefix.
pub const LOG_PREFIX: &str = "imds-guard forward";
/// At most this many packets a second are logged per source (interface
/// and address); every one is counted.
const LOG_RATE: u32 = 5;
/// Sources whose log budget is tracked at once, per family (a source
/// silent for [`LOG_TIMEOUT`] is forgotten).
const LOG_SOURCES: u32 = 4096;
const LOG_TIMEOUT: &str = "60s";

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cannot run nft (install nftables): the forward path is not guarded")]
    Spawn(#[source] std::io::Error),
    #[error("nft refused the forward table: {0}")]
    Refused(String),
    #[error("nft printed what this agent cannot read: {0}")]
    Unreadable(String),
}

/// The counters of the table, as the kernel has them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardCounters {
    /// Packets dropped (enforce mode).
    pub dropped: u64,
    /// Packets that would have been dropped (audit mode).
    pub audited: u64,
}

/// The nftables script that puts the forward table for `spec` in force,
/// replacing any earlier one in one transaction.
pub fn ruleset(spec: &PolicySpec) -> String {
    let (v4, v6) = protected(spec);
    let (src4, src6): (Vec<Prefix>, Vec<Prefix>) = spec
        .forward
        .sources
        .iter()
        .map(|s| s.prefix)
        .partition(|p| p.addr.is_ipv4());
    let set = |name: &str, ty: &str, interval: bool, elements: &[String]| {
        let flags = if interval { " flags interval;" } else { "" };
        if elements.is_empty() {
            format!("\tset {name} {{ type {ty};{flags} }}\n")
        } else {
            format!(
                "\tset {name} {{ type {ty};{flags} elements = {{ {} }} }}\n",
                elements.join(", ")
            )
        }
    };
    let mut text = format!(
        "# imds-guard: forwarded packets to the instance metadata service (policy {}, mode {})\n\
         table inet {TABLE} {{}}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n",
        spec.path.display(),
        spec.mode
    );
    text += &set("protected4", "ipv4_addr", false, &v4);
    text += &set("protected6", "ipv6_addr", false, &v6);
    let ported = Ported::of(spec);
    if !ported.is_empty() {
        text += &set("ported4", "ipv4_addr", false, &ported.addrs4);
        text += &set("ported6", "ipv6_addr", false, &ported.addrs6);
        let by_port = |ty: &str| format!("{ty} . inet_proto . inet_service");
        text += &set("ports4", &by_port("ipv4_addr"), false, &ported.ports4);
        text += &set("ports6", &by_port("ipv6_addr"), false, &ported.ports6);
    }
    let strings = |ps: &[Prefix]| ps.iter().map(ToString::to_string).collect::<Vec<_>>();
    if !src4.is_empty() {
        text += &set("sources4", "ipv4_addr", true, &strings(&src4));
    }
    if !src6.is_empty() {
        text += &set("sources6", "ipv6_addr", true, &strings(&src6));
    }
    for (name, ty) in [("flood4", "ipv4_addr"), ("flood6", "ipv6_addr")] {
        text += &format!(
            "\tset {name} {{ type ifname . {ty}; size {LOG_SOURCES}; flags dynamic,timeout; \
             timeout {LOG_TIMEOUT}; }}\n"
        );
    }
    text += "\tcounter dropped {}\n\tcounter audited {}\n";
    text += "\tchain forward {\n\t\ttype filter hook forward priority -300; policy accept;\n";
    for rule in rules(spec, !src4.is_empty(), !src6.is_empty()) {
        text += &format!("\t\t{rule}\n");
    }
    text += "\t}\n}\n";
    text
}

/// The addresses protected on some ports only, and those ports, by
/// family (the IPv4 ones' mapped forms with the IPv6 ones), as nftables
/// set elements: `169.254.170.2`, `169.254.170.2 . tcp . 80`.
#[derive(Default)]
struct Ported {
    addrs4: Vec<String>,
    addrs6: Vec<String>,
    ports4: Vec<String>,
    ports6: Vec<String>,
}

impl Ported {
    fn of(spec: &PolicySpec) -> Self {
        let mut p = Self::default();
        for addr in spec.protected_addresses() {
            let Some(ports) = spec.ports_of(addr) else {
                continue;
            };
            let (mut forms4, mut forms6) = (Vec::new(), Vec::new());
            match addr {
                IpAddr::V4(a) => {
                    forms4.push(a.to_string());
                    forms6.push(a.to_ipv6_mapped().to_string());
                }
                IpAddr::V6(a) => forms6.push(a.to_string()),
            }
            for (forms, addrs, elements) in [
                (&forms4, &mut p.addrs4, &mut p.ports4),
                (&forms6, &mut p.addrs6, &mut p.ports6),
            ] {
                for form in forms {
                    addrs.push(form.clone());
                    for port in &ports {
                        for proto in port.protocol.each() {
                            elements.push(format!("{form} . {} . {}", proto.name(), port.number));
                        }
                    }
                }
            }
        }
        p
    }

    fn is_empty(&self) -> bool {
        self.addrs4.is_empty() && self.addrs6.is_empty()
    }
}

/// The protected addresses by family, the IPv4 ones' mapped forms with
/// the IPv6 ones: those protected on every port.
fn protected(spec: &PolicySpec) -> (Vec<String>, Vec<String>) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for e in spec.endpoints.iter().filter(|e| e.port.is_none()) {
        match e.addr {
            IpAddr::V4(a) => {
                v4.push(a.to_string());
                // A forwarded IPv6 packet to the mapped form goes nowhere
                // a router sends it, but costs nothing to refuse.
                v6.push(a.to_ipv6_mapped().to_string());
            }
            IpAddr::V6(a) => v6.push(a.to_string()),
        }
    }
    (v4, v6)
}

/// The forward chain's rules: what `[forward]` lets through, then, per
/// family, a rate-limited log and the counted verdict.
fn rules(spec: &PolicySpec, sources4: bool, sources6: bool) -> Vec<String> {
    let verdict = match spec.mode {
        Mode::Enforce => "drop",
        Mode::Audit => "",
    };
    let counter = match spec.mode {
        Mode::Enforce => "dropped",
        Mode::Audit => "audited",
    };
    let ported = !Ported::of(spec).is_empty();
    let mut sets = vec![("protected4", "protected6")];
    if ported {
        sets.push(("ported4", "ported6"));
    }
    let mut rules = Vec::new();
    for &(set4, set6) in &sets {
        for i in &spec.forward.interfaces {
            rules.push(format!("ip daddr @{set4} iifname \"{}\" accept", i.name));
            rules.push(format!("ip6 daddr @{set6} iifname \"{}\" accept", i.name));
        }
        if sources4 {
            rules.push(format!("ip daddr @{set4} ip saddr @sources4 accept"));
        }
        if sources6 {
            rules.push(format!("ip6 daddr @{set6} ip6 saddr @sources6 accept"));
        }
    }
    // What a packet to a protected port looks like, per family: its
    // address protected on every port; its address, protocol and port in
    // the ports set; or, of an address protected on some ports, a port
    // that cannot be read (an IPv4 fragment after the first, an IPv6
    // extension header; a protocol the programs do not know), which
    // counts as a protected one, as in the netfilter program.
    let mut matches = vec![
        ("ip", "flood4", "ip daddr @protected4".to_owned()),
        ("ip6", "flood6", "ip6 daddr @protected6".to_owned()),
    ];
    if ported {
        matches = vec![
            matches[0].clone(),
            (
                "ip",
                "flood4",
                "ip daddr . ip protocol . th dport @ports4".to_owned(),
            ),
            (
                "ip",
                "flood4",
                "ip daddr @ported4 ip frag-off & 0x1fff != 0".to_owned(),
            ),
            (
                "ip",
                "flood4",
                "ip daddr @ported4 ip protocol != { icmp, tcp, udp, udplite, sctp }".to_owned(),
            ),
            matches[1].clone(),
            // The next header right after the fixed one, as the netfilter
            // program reads it: an extension header (a fragment header
            // among them) leaves the port unread.
            (
                "ip6",
                "flood6",
                "ip6 daddr . ip6 nexthdr . th dport @ports6".to_owned(),
            ),
            (
                "ip6",
                "flood6",
                "ip6 daddr @ported6 ip6 nexthdr != { ipv6-icmp, tcp, udp, udplite, sctp, 59 }"
                    .to_owned(),
            ),
        ];
    }
    for (family, flood, what) in matches {
        rules.push(format!(
            "{what} update @{flood} {{ iifname . {family} saddr limit rate \
             {LOG_RATE}/second burst {} packets }} log group {LOG_GROUP} prefix \"{LOG_PREFIX}\"",
            LOG_RATE * 2
        ));
        rules.push(
            format!("{what} counter name {counter} {verdict}")
                .trim_end()
                .to_owned(),
        );
    }
    rules
}

/// Puts the forward table for `spec` in force in this network namespace.
pub fn apply(spec: &PolicySpec) -> Result<(), ForwardError> {
    apply_ruleset(&ruleset(spec))
}

/// Puts a [`ruleset`] in force in this network namespace.
pub fn apply_ruleset(ruleset: &str) -> Result<(), ForwardError> {
    nft(&["-f", "-"], Some(ruleset)).map(drop)
}

/// Deletes the forward table; `false` when there was none.
pub fn remove() -> Result<bool, ForwardError> {
    if counters()?.is_none() {
        return Ok(false);
    }
    nft(&["delete", "table", "inet", TABLE], None).map(|_| true)
}

/// The table's counters, or `None` when there is no table.
pub fn counters() -> Result<Option<ForwardCounters>, ForwardError> {
    let listing = match nft(&["-j", "list", "table", "inet", TABLE], None) {
        Ok(out) => out,
        // nft says "No such file or directory" for a missing table.
        Err(ForwardError::Refused(e)) if e.contains("No such file") => return Ok(None),
        Err(e) => return Err(e),
    };
    parse_counters(&listing).map(Some)
}

/// Whether table `inet NAME` is there.
pub fn table_exists(name: &str) -> Result<bool, ForwardError> {
    match nft(&["list", "table", "inet", name], None) {
        Ok(_) => Ok(true),
        Err(ForwardError::Refused(e)) if e.contains("No such file") => Ok(false),
        Err(e) => Err(e),
    }
}

/// A digest of the rules the kernel holds in the table (its chain, sets
/// and rules, as `nft -j list table` lists them, without handles or
/// counter values), or `None` when there is no table: what the agent
/// records once the table is in force, and what `status` and the agent's
/// repair compare it with. `nft flush table` or `flush chain` leaves the
/// table and changes this.
pub fn table_digest() -> Result<Option<[u8; 32]>, ForwardError> {
    let listing = match nft(&["-j", "list", "table", "inet", TABLE], None) {
        Ok(out) => out,
        Err(ForwardError::Refused(e)) if e.contains("No such file") => return Ok(None),
        Err(e) => return Err(e),
    };
    digest_listing(&listing).map(Some)
}

/// The digest of `nft -j list table` output (see [`table_digest`]).
fn digest_listing(json: &str) -> Result<[u8; 32], ForwardError> {
    let v: Value =
        serde_json::from_str(json).map_err(|e| ForwardError::Unreadable(e.to_string()))?;
    let items = v
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| ForwardError::Unreadable("no \"nftables\" array".to_owned()))?;
    let mut kept: Vec<Value> = items
        .iter()
        .filter(|i| i.get("metainfo").is_none())
        .cloned()
        .collect();
    for item in &mut kept {
        canonical(item);
    }
    // serde_json's maps are sorted by key: the text is canonical.
    let text = Value::Array(kept).to_string();
    Ok(Sha256::digest(text.as_bytes()).into())
}

/// Drops what changes without the rules changing: handles, a counter's
/// packets and bytes, the elements of a set with a timeout (the log
/// budgets of the sources seen); sorts a set's elements (a hash set lists them in
/// bucket order).
fn canonical(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("handle");
            // nft lists a dynamic set's flags as `timeout` alone: the log
            // budgets are the sets with a timeout, and no other set has one.
            let is_budget = |f: &Value| f == "dynamic" || f == "timeout";
            let dynamic = match map.get("flags") {
                Some(Value::Array(flags)) => flags.iter().any(is_budget),
                Some(flag) => is_budget(flag),
                None => false,
            };
            if dynamic {
                map.remove("elem");
            }
            if let Some(Value::Object(counter)) = map.get_mut("counter") {
                counter.remove("packets");
                counter.remove("bytes");
            }
            if let Some(Value::Array(elem)) = map.get_mut("elem") {
                elem.sort_by_key(ToString::to_string);
            }
            map.values_mut().for_each(canonical);
        }
        Value::Array(items) => items.iter_mut().for_each(canonical),
        _ => {}
    }
}

/// The named counters of `nft -j list table` output.
fn parse_counters(json: &str) -> Result<ForwardCounters, ForwardError> {
    let v: Value =
        serde_json::from_str(json).map_err(|e| ForwardError::Unreadable(e.to_string()))?;
    let items = v
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| ForwardError::Unreadable("no \"nftables\" array".to_owned()))?;
    let mut c = ForwardCounters::default();
    for counter in items.iter().filter_map(|i| i.get("counter")) {
        let packets = counter.get("packets").and_then(Value::as_u64).unwrap_or(0);
        match counter.get("name").and_then(Value::as_str) {
            Some("dropped") => c.dropped = packets,
            Some("audited") => c.audited = packets,
            _ => {}
        }
    }
    Ok(c)
}

/// Runs `nft ARGS`, with `input` on its stdin; its stdout.
fn nft(args: &[&str], input: Option<&str>) -> Result<String, ForwardError> {
    let mut child = Command::new(nft_path())
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(ForwardError::Spawn)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(ForwardError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(ForwardError::Spawn)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(ForwardError::Refused(
            stderr.lines().map(str::trim).collect::<Vec<_>>().join(" "),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `nft` from the usual places, whatever `PATH` the agent was started with.
fn nft_path() -> &'static str {
    ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nft")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn spec(toml: &str) -> PolicySpec {
        PolicySpec::parse(Path::new("p.toml"), toml).expect("valid")
    }

    #[test]
    fn a_port_scoped_endpoint_drops_its_ports_and_what_has_no_port_to_read() {
        let text = ruleset(&spec(
            "[endpoints]\naddresses = [\"169.254.169.254\", \"169.254.170.2:80/tcp\", \
             \"[fd00:ec2::23]:80\"]\n[allow]\nuids = [0]\n[forward]\n\
             allow_interfaces = [\"br-vm\"]\n",
        ));
        for line in [
            "set protected4 { type ipv4_addr; elements = { 169.254.169.254 } }",
            "set ported4 { type ipv4_addr; elements = { 169.254.170.2 } }",
            "set ported6 { type ipv6_addr; elements = { ::ffff:169.254.170.2, fd00:ec2::23 } }",
            "set ports4 { type ipv4_addr . inet_proto . inet_service; elements = { \
             169.254.170.2 . tcp . 80 } }",
            "set ports6 { type ipv6_addr . inet_proto . inet_service; elements = { \
             ::ffff:169.254.170.2 . tcp . 80, fd00:ec2::23 . tcp . 80, fd00:ec2::23 . udp . 80 } }",
            "ip daddr @ported4 iifname \"br-vm\" accept",
            "ip daddr . ip protocol . th dport @ports4 counter name dropped drop",
            "ip daddr @ported4 ip frag-off & 0x1fff != 0 counter name dropped drop",
            "ip daddr @ported4 ip protocol != { icmp, tcp, udp, udplite, sctp } counter name \
             dropped drop",
            "ip6 daddr . ip6 nexthdr . th dport @ports6 counter name dropped drop",
            "ip6 daddr @ported6 ip6 nexthdr != { ipv6-icmp, tcp, udp, udplite, sctp, 59 } \
             counter name dropped drop",
        ] {
            assert!(text.contains(&format!("{line}\n")), "{line}\n{text}");
        }
        // A policy without ports has none of it.
        let bare = ruleset(&spec("[allow]\nuids = [0]\n"));
        assert!(!bare.contains("ported"), "{bare}");
    }

    #[test]
    fn by_default_every_forwarded_packet_to_an_endpoint_is_dropped() {
        let text = ruleset(&spec("[allow]\nuids = [0]\n"));
        assert!(
            text.contains("table inet imds_guard_forward {}\ndelete table inet"),
            "{text}"
        );
        assert!(
            text.contains("set protected4 { type ipv4_addr; elements = { 169.254.169.254 } }"),
            "{text}"
        );
        assert!(
            text.contains(
                "set protected6 { type ipv6_addr; elements = { ::ffff:169.254.169.254, fd00:ec2::254 } }"
            ),
            "{text}"
        );
        assert!(text.contains("type filter hook forward priority -300; policy accept;"));
        assert!(
            text.contains("ip daddr @protected4 counter name dropped drop\n"),
            "{text}"
        );
        assert!(
            text.contains("ip6 daddr @protected6 counter name dropped drop\n"),
            "{text}"
        );
        assert!(
            text.contains("log group 4269 prefix \"imds-guard forward\""),
            "{text}"
        );
        assert!(
            text.contains(
                "ip daddr @protected4 update @flood4 { iifname . ip saddr limit rate 5/second"
            ),
            "a log budget per source: {text}"
        );
        assert!(!text.contains("accept\n"), "nothing is let through: {text}");
    }

    #[test]
    fn named_sources_are_let_through_before_the_drop() {
        let text = ruleset(&spec(
            "[allow]\nuids = [0]\n[forward]\nallow_interfaces = [\"br-vm*\"]\n\
             allow_sources = [\"10.8.0.0/16\", \"fd00:1::/64\"]\n",
        ));
        let accept = text
            .find("iifname \"br-vm*\" accept")
            .expect("interface accepted");
        let src = text
            .find("ip saddr @sources4 accept")
            .expect("v4 source accepted");
        let drop = text.find("counter name dropped drop").expect("drop");
        assert!(accept < drop && src < drop, "{text}");
        assert!(
            text.contains(
                "set sources4 { type ipv4_addr; flags interval; elements = { 10.8.0.0/16 } }"
            ),
            "{text}"
        );
        assert!(text.contains("ip6 saddr @sources6 accept"), "{text}");
    }

    #[test]
    fn audit_mode_counts_and_logs_without_dropping() {
        let text = ruleset(&spec("mode = \"audit\"\n[allow]\nuids = [0]\n"));
        assert!(
            text.contains("ip daddr @protected4 counter name audited\n"),
            "{text}"
        );
        assert!(!text.contains(" drop\n"), "{text}");
    }

    #[test]
    fn the_digest_ignores_handles_and_counts_and_sees_a_flushed_chain() {
        let listing = |packets: u64, handle: u64, rule: &str| {
            format!(
                r#"{{"nftables": [{{"metainfo": {{"version": "1.0.6"}}}},
                {{"table": {{"family": "inet", "name": "imds_guard_forward", "handle": {handle}}}}},
                {{"counter": {{"family": "inet", "name": "dropped", "table": "imds_guard_forward", "handle": 3, "packets": {packets}, "bytes": 420}}}},
                {{"set": {{"family": "inet", "name": "protected4", "elem": ["b", "a"], "handle": 2}}}}{rule}]}}"#
            )
        };
        let rule = r#",{"rule": {"family": "inet", "chain": "forward", "handle": 9, "expr": [{"drop": null}]}}"#;
        let a = digest_listing(&listing(0, 1, rule)).expect("readable");
        assert_eq!(a, digest_listing(&listing(7, 5, rule)).expect("readable"));
        let seen = |elem: &str| {
            format!(
                r#"{rule},{{"set": {{"name": "flood4", "flags": ["timeout"], "elem": [{elem}]}}}}"#
            )
        };
        assert_eq!(
            digest_listing(&listing(0, 1, &seen(""))).expect("readable"),
            digest_listing(&listing(0, 1, &seen(r#""ctr1 . 10.0.0.1""#))).expect("readable"),
            "the sources a dynamic set has seen are not rules"
        );
        assert_ne!(a, digest_listing(&listing(0, 1, "")).expect("readable"));
        assert!(digest_listing("{}").is_err());
    }

    #[test]
    fn counters_are_read_from_nft_json() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "imds_guard_forward", "handle": 1}},
            {"counter": {"family": "inet", "name": "dropped", "table": "imds_guard_forward", "handle": 3, "packets": 7, "bytes": 420}},
            {"counter": {"family": "inet", "name": "audited", "table": "imds_guard_forward", "handle": 4, "packets": 0, "bytes": 0}}]}"#;
        assert_eq!(
            parse_counters(json).expect("readable"),
            ForwardCounters {
                dropped: 7,
                audited: 0
            }
        );
        assert!(parse_counters("{}").is_err());
    }
}
