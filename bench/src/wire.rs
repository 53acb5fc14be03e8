//! A device to send through: a veth pair from a configuration's namespace
//! to a namespace of its own (the far side), where the packet loops'
//! receivers are ([`FlowSink`]). A packet to the far address is routed out
//! of a device, as a host's traffic is, not looped back: it takes the
//! output path through the neighbour layer and a driver's transmit.
//!
//! The addresses are RFC 2544's benchmarking range (198.18.0.0/15), which
//! no policy protects and no host routes; both ends are in namespaces the
//! bench made, and deleting the far namespace deletes the pair.

use std::net::Ipv4Addr;

use anyhow::Context;
use imds_guard_e2e::Netns;

use super::{flowsink::FlowSink, nsexec};

/// The sender's end of the pair, in the configuration's namespace.
pub const NEAR_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The far end, where the receivers listen.
pub const FAR_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Both ends' prefix length: a point-to-point /30.
const PREFIX: u8 = 30;
/// The device's name at each end (each in its own namespace).
const NEAR_DEV: &str = "bench0";
const FAR_DEV: &str = "bench1";

/// The pair and the far side's receivers. Field order is drop order: the
/// receivers' sockets close before the far namespace goes (and the pair
/// with it).
pub struct Wire {
    _sink: FlowSink,
    _far: Netns,
}

impl Wire {
    /// A veth pair from `near` to a new namespace, addressed and up, with
    /// [`FlowSink`]'s receivers on the far address.
    pub fn new(near: &Netns) -> anyhow::Result<Self> {
        let far = Netns::bare();
        let ip = |netns: &Netns, args: &[&str]| -> anyhow::Result<()> {
            nsexec::run(netns, "ip", args, None).map(drop)
        };
        let near_addr = format!("{NEAR_V4}/{PREFIX}");
        let far_addr = format!("{FAR_V4}/{PREFIX}");
        ip(
            near,
            &[
                "link",
                "add",
                NEAR_DEV,
                "type",
                "veth",
                "peer",
                "name",
                FAR_DEV,
                "netns",
                far.name(),
            ],
        )?;
        ip(near, &["addr", "add", &near_addr, "dev", NEAR_DEV])?;
        ip(near, &["link", "set", NEAR_DEV, "up"])?;
        ip(&far, &["addr", "add", &far_addr, "dev", FAR_DEV])?;
        ip(&far, &["link", "set", FAR_DEV, "up"])?;
        let sink = FlowSink::start(&far)
            .with_context(|| format!("the receivers on {FAR_V4}, across {NEAR_DEV}"))?;
        Ok(Wire {
            _sink: sink,
            _far: far,
        })
    }
}

/// Packets `near`'s end of the wire has sent so far (`ip -s -j link`):
/// that a loop's packets went out of the device, not through loopback.
pub fn sent(near: &Netns) -> anyhow::Result<u64> {
    let out = nsexec::run(
        near,
        "ip",
        &["-s", "-j", "link", "show", "dev", NEAR_DEV],
        None,
    )?;
    tx_packets(&out).with_context(|| format!("no tx packet count of {NEAR_DEV} in {out:?}"))
}

/// `stats64.tx.packets` of the one device `ip -s -j link show` lists.
fn tx_packets(json: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v.get(0)?
        .get("stats64")?
        .get("tx")?
        .get("packets")?
        .as_u64()
}

#[cfg(test)]
mod tests {
    use super::tx_packets;

    #[test]
    fn the_tx_count_is_read_from_ip_json() {
        // Trimmed from iproute2 6.1's `ip -s -j link show dev bench0`.
        let json = r#"[{"ifindex":2,"ifname":"bench0","stats64":{"rx":{"bytes":42,"packets":1},
            "tx":{"bytes":9000,"packets":123,"errors":0,"dropped":0}}}]"#;
        assert_eq!(tx_packets(json), Some(123));
        assert_eq!(tx_packets("[]"), None);
        assert_eq!(tx_packets("not json"), None);
    }
}
