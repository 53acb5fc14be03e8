//! Whether packets to a metadata address arrived where the metadata service
//! lives, whatever made them and whether or not a socket there accepted
//! them: nftables counters in the prerouting hook of the "imds" namespace
//! of a [`Topology`](crate::Topology), one per address family and
//! protocol. Crafted packets rarely complete a handshake, and a routing
//! header or an MPTCP join may be dropped by the receiving stack after it
//! arrived; the counters see every packet before any of that.
//!
//! The hook runs at priority -350, ahead of conntrack (-200) and of
//! everything else in that namespace, which has no other rules.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;

use crate::{IMDS_V4, IMDS_V6};

const TABLE: &str = "imds_oracle";
/// `udplite` in /etc/protocols, which nft may not be able to read.
const IPPROTO_UDPLITE: u8 = 136;

/// Packets with a metadata address as their destination, of one family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Every packet.
    pub all: u64,
    /// TCP segments, and among them the SYNs that open a connection.
    pub tcp: u64,
    pub tcp_syn: u64,
    pub udp: u64,
    pub udplite: u64,
}

impl Counts {
    fn minus(self, before: Counts) -> Counts {
        Counts {
            all: self.all - before.all,
            tcp: self.tcp - before.tcp,
            tcp_syn: self.tcp_syn - before.tcp_syn,
            udp: self.udp - before.udp,
            udplite: self.udplite - before.udplite,
        }
    }
}

/// What arrived, per family: to 169.254.169.254 (`v4`) and to
/// fd00:ec2::254 (`v6`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Arrivals {
    pub v4: Counts,
    pub v6: Counts,
}

impl Arrivals {
    /// What arrived since `before` was read.
    pub fn since(self, before: Arrivals) -> Arrivals {
        Arrivals {
            v4: self.v4.minus(before.v4),
            v6: self.v6.minus(before.v6),
        }
    }

    /// Packets of both families.
    pub fn total(&self) -> u64 {
        self.v4.all + self.v6.all
    }
}

/// The counters, installed in a namespace given by path.
#[derive(Debug)]
pub struct Oracle {
    netns: PathBuf,
}

impl Oracle {
    /// Installs the counting table in the namespace at `netns`.
    pub fn install(netns: &Path) -> Result<Self, String> {
        let mut rules = String::new();
        for (family, daddr, name) in [
            ("ip", IMDS_V4.to_string(), "v4"),
            ("ip6", IMDS_V6.to_string(), "v6"),
        ] {
            let m = format!("{family} daddr {daddr}");
            for (what, expr) in [
                ("all", String::new()),
                ("tcp", "meta l4proto tcp".to_owned()),
                ("tcp_syn", "tcp flags & (syn | ack) == syn".to_owned()),
                ("udp", "meta l4proto udp".to_owned()),
                ("udplite", format!("meta l4proto {IPPROTO_UDPLITE}")),
            ] {
                rules.push_str(&format!(
                    "add rule inet {TABLE} prerouting {m} {expr} counter comment \"{name} {what}\"\n"
                ));
            }
        }
        nft_at(
            netns,
            &format!(
                "add table inet {TABLE}\n\
                 add chain inet {TABLE} prerouting {{ type filter hook prerouting priority -350; policy accept; }}\n\
                 {rules}"
            ),
        )?;
        Ok(Oracle {
            netns: netns.to_path_buf(),
        })
    }

    /// The counters now.
    pub fn read(&self) -> Arrivals {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .args(["nft", "-j", "list", "table", "inet", TABLE])
            .output()
            .unwrap_or_else(|e| panic!("running nft -j list: {e}"));
        assert!(
            out.status.success(),
            "nft -j list table inet {TABLE} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("nft -j printed no JSON ({e})"));
        parse_counters(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
    }
}

/// The counters in `nft -j list table` output, by rule comment.
fn parse_counters(json: &Value) -> Result<Arrivals, String> {
    let mut arrivals = Arrivals::default();
    let items = json
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("no nftables array")?;
    for rule in items.iter().filter_map(|i| i.get("rule")) {
        let Some(comment) = rule.get("comment").and_then(Value::as_str) else {
            continue;
        };
        let packets = rule
            .get("expr")
            .and_then(Value::as_array)
            .and_then(|e| {
                e.iter()
                    .find_map(|x| x.get("counter")?.get("packets")?.as_u64())
            })
            .ok_or_else(|| format!("rule {comment:?} has no counter"))?;
        let (family, what) = comment
            .split_once(' ')
            .ok_or_else(|| format!("unexpected comment {comment:?}"))?;
        let counts = match family {
            "v4" => &mut arrivals.v4,
            "v6" => &mut arrivals.v6,
            _ => return Err(format!("unexpected comment {comment:?}")),
        };
        *match what {
            "all" => &mut counts.all,
            "tcp" => &mut counts.tcp,
            "tcp_syn" => &mut counts.tcp_syn,
            "udp" => &mut counts.udp,
            "udplite" => &mut counts.udplite,
            _ => return Err(format!("unexpected comment {comment:?}")),
        } = packets;
    }
    Ok(arrivals)
}

/// Runs `nft -f -` with `script` in the namespace at `netns`.
pub(crate) fn nft_at(netns: &Path, script: &str) -> Result<(), String> {
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("writing to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft -f - in {} failed ({}): {}\n{script}",
            netns.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_by_comment() {
        let json: Value = serde_json::from_str(
            r#"{"nftables":[{"metainfo":{"version":"1.0.6"}},
            {"table":{"family":"inet","name":"imds_oracle","handle":1}},
            {"rule":{"family":"inet","table":"imds_oracle","chain":"prerouting","handle":2,
              "comment":"v4 tcp_syn","expr":[{"match":{}},{"counter":{"packets":3,"bytes":180}}]}},
            {"rule":{"family":"inet","table":"imds_oracle","chain":"prerouting","handle":3,
              "comment":"v6 udplite","expr":[{"counter":{"packets":1,"bytes":60}}]}}]}"#,
        )
        .unwrap();
        let a = parse_counters(&json).unwrap();
        assert_eq!(a.v4.tcp_syn, 3);
        assert_eq!(a.v6.udplite, 1);
        assert_eq!(a.total(), 0, "only the `all` counters make the total");
    }
}
