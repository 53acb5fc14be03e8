//! The prefixes the programs compare every destination with before any
//! lookup (issue 21): the fewest bits that cover the protected addresses
//! in the slots the programs have ([`cover`]), and the order in which the
//! agent changes them ([`steps`]) so that a program reading the global
//! while it is written, even half-written, still covers every address
//! the old and the new prefixes both cover.
//!
//! The programs read [`Prefixes`] as it is in their global: a slot covers
//! `addr` when `(addr ^ net) & mask == 0`. A map update copies the value
//! byte by byte as far as a reader can tell, so a torn read mixes bytes
//! of two states. Clearing a mask first (any mix of its bytes with zeros
//! has fewer bits, and covers more), then changing the net under the
//! empty mask (which covers everything), then setting the new mask (any
//! mix with zeros again covers more than the new prefix) keeps every state
//! a reader can see a superset of what both ends cover.

use std::net::{Ipv4Addr, Ipv6Addr};

use imds_guard_common::{Prefix4, Prefix6, Prefixes, V4_SLOTS, V6_SLOTS};

/// A prefix: the top `len` bits of `bits`, an address `width` bits wide
/// as a number (most significant bit first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Net {
    bits: u128,
    len: u32,
}

impl Net {
    /// The mask of the top `len` of `width` bits.
    fn mask(len: u32, width: u32) -> u128 {
        let all = if width == 128 {
            u128::MAX
        } else {
            (1u128 << width) - 1
        };
        if len == 0 {
            0
        } else {
            all & !((1u128 << (width - len)) - 1) & all
        }
    }

    /// The longest prefix that holds both.
    fn join(self, other: Self, width: u32) -> Self {
        let differ = (self.bits ^ other.bits) << (128 - width);
        let len = differ
            .leading_zeros()
            .min(width)
            .min(self.len)
            .min(other.len);
        Self {
            bits: self.bits & Self::mask(len, width),
            len,
        }
    }

    /// Whether every address of `inner` is in this prefix.
    fn holds(self, inner: Self, width: u32) -> bool {
        inner.len >= self.len && inner.bits & Self::mask(self.len, width) == self.bits
    }
}

/// At most `slots` prefixes that hold every one of `addrs` (numbers
/// `width` bits wide): each address on its own, then, while there are too
/// many, the two whose join is longest are joined (and whatever the join
/// holds besides). Joining the closest pair first keeps what is covered
/// and not protected small: the presets' addresses, a few per cloud,
/// each keep a slot of their own.
fn cover_bits(addrs: &[u128], width: u32, slots: usize) -> Vec<Net> {
    let mut nets: Vec<Net> = addrs.iter().map(|&bits| Net { bits, len: width }).collect();
    nets.sort_by_key(|n| n.bits);
    nets.dedup();
    while nets.len() > slots {
        let mut best: Option<Net> = None;
        for (i, a) in nets.iter().enumerate() {
            for b in &nets[i + 1..] {
                let joined = a.join(*b, width);
                if best.is_none_or(|best| joined.len > best.len) {
                    best = Some(joined);
                }
            }
        }
        let Some(joined) = best else { break };
        nets.retain(|n| !joined.holds(*n, width));
        nets.push(joined);
    }
    nets
}

/// The prefixes of the programs' global for these protected addresses
/// (IPv4-mapped IPv6 forms are covered by the IPv4 slots, as the programs
/// compare them). A family without addresses gets slots that cover only
/// an address no policy protects (the broadcast address, the all-ones
/// IPv6 multicast address): one compare more for those, never a miss.
pub fn cover(v4: &[Ipv4Addr], v6: &[Ipv6Addr]) -> Prefixes {
    let v4_bits: Vec<u128> = v4.iter().map(|a| u128::from(a.to_bits())).collect();
    let v6_bits: Vec<u128> = v6.iter().map(|a| a.to_bits()).collect();
    let mut out = Prefixes::ALL;
    let never4 = Net {
        bits: u128::from(u32::MAX),
        len: 32,
    };
    let never6 = Net {
        bits: u128::MAX,
        len: 128,
    };
    let nets4 = cover_bits(&v4_bits, 32, V4_SLOTS);
    let nets6 = cover_bits(&v6_bits, 128, V6_SLOTS);
    for (i, slot) in out.v4.iter_mut().enumerate() {
        // Slots past the prefixes repeat the first.
        let net = nets4.get(i).or(nets4.first()).copied().unwrap_or(never4);
        *slot = prefix4(net);
    }
    for (i, slot) in out.v6.iter_mut().enumerate() {
        let net = nets6.get(i).or(nets6.first()).copied().unwrap_or(never6);
        *slot = prefix6(net);
    }
    out
}

/// An IPv4 prefix as the programs compare it, in network byte order.
fn prefix4(net: Net) -> Prefix4 {
    let word = |bits: u128| u32::from_ne_bytes(Ipv4Addr::from_bits(bits as u32).octets());
    Prefix4 {
        net: word(net.bits),
        mask: word(Net::mask(net.len, 32)),
    }
}

/// An IPv6 prefix as the programs compare it: the words of `user_ip6`.
fn prefix6(net: Net) -> Prefix6 {
    let words = |bits: u128| {
        let octets = bits.to_be_bytes();
        let mut out = [0u32; 4];
        for (word, chunk) in out.iter_mut().zip(octets.chunks_exact(4)) {
            *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        out
    };
    Prefix6 {
        net: words(net.bits),
        mask: words(Net::mask(net.len, 128)),
    }
}

/// The states to write, in order, to go from `from` to `to`: the masks of
/// the slots that change cleared, then their nets changed, then their
/// masks set (see the module's doc). Each state differs from the one
/// before; none when nothing changes.
pub fn steps(from: &Prefixes, to: &Prefixes) -> Vec<Prefixes> {
    let mut cleared = *from;
    let mut moved = *from;
    for i in 0..V4_SLOTS {
        if from.v4[i] != to.v4[i] {
            cleared.v4[i].mask = 0;
            moved.v4[i] = Prefix4 {
                net: to.v4[i].net,
                mask: 0,
            };
        }
    }
    for i in 0..V6_SLOTS {
        if from.v6[i] != to.v6[i] {
            cleared.v6[i].mask = [0; 4];
            moved.v6[i] = Prefix6 {
                net: to.v6[i].net,
                mask: [0; 4],
            };
        }
    }
    let mut out: Vec<Prefixes> = Vec::new();
    for state in [cleared, moved, *to] {
        if out.last().unwrap_or(from) != &state {
            out.push(state);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the programs answer (`may_be_protected_v4` / `_v6`).
    fn covers4(p: &Prefixes, a: Ipv4Addr) -> bool {
        let addr = u32::from_ne_bytes(a.octets());
        p.v4.iter().any(|s| s.covers(addr))
    }

    fn covers6(p: &Prefixes, a: Ipv6Addr) -> bool {
        if let Some(v4) = a.to_ipv4_mapped() {
            return covers4(p, v4);
        }
        let words = prefix6(Net {
            bits: a.to_bits(),
            len: 128,
        })
        .net;
        p.v6.iter().any(|s| s.covers(&words))
    }

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().expect("an IPv4 address")
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().expect("an IPv6 address")
    }

    /// A small deterministic generator (no dependency for it).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 16
        }
    }

    #[test]
    fn the_programs_zeros_cover_everything() {
        let p = Prefixes::ALL;
        assert!(covers4(&p, v4("8.8.8.8")));
        assert!(covers6(&p, v6("2001:db8::1")));
    }

    #[test]
    fn the_defaults_get_a_slot_each_and_cover_nothing_else() {
        let p = cover(&[v4("169.254.169.254")], &[v6("fd00:ec2::254")]);
        assert!(covers4(&p, v4("169.254.169.254")));
        assert!(covers6(&p, v6("fd00:ec2::254")));
        assert!(covers6(&p, v6("::ffff:169.254.169.254")));
        for other in ["169.254.169.253", "10.0.0.1", "127.0.0.1", "0.0.0.0"] {
            assert!(!covers4(&p, v4(other)), "{other}");
        }
        for other in ["fd00:ec2::253", "::1", "fe80::1", "::ffff:10.0.0.1"] {
            assert!(!covers6(&p, v6(other)), "{other}");
        }
    }

    #[test]
    fn the_presets_addresses_fit_one_slot_each() {
        let p = cover(
            &[
                v4("169.254.169.254"),
                v4("168.63.129.16"),
                v4("100.100.100.200"),
                v4("169.254.170.2"),
            ],
            &[v6("fd00:ec2::254"), v6("fe80::a9fe:a9fe")],
        );
        for a in ["169.254.169.254", "168.63.129.16", "100.100.100.200"] {
            assert!(covers4(&p, v4(a)), "{a}");
        }
        assert!(!covers4(&p, v4("169.254.169.1")));
        assert!(!covers4(&p, v4("100.100.100.201")));
        assert!(covers6(&p, v6("fe80::a9fe:a9fe")));
        assert!(!covers6(&p, v6("fe80::1")));
    }

    #[test]
    fn more_addresses_than_slots_join_the_closest() {
        let p = cover(
            &[
                v4("169.254.169.254"),
                v4("169.254.169.123"),
                v4("169.254.170.2"),
                v4("168.63.129.16"),
                v4("100.100.100.200"),
            ],
            &[],
        );
        // The two in 169.254.169.0/24 share a slot (the longest join).
        assert!(covers4(&p, v4("169.254.169.1")));
        assert!(!covers4(&p, v4("169.254.171.1")));
        assert!(!covers4(&p, v4("100.100.100.201")));
        assert!(!covers4(&p, v4("10.0.0.1")));
    }

    #[test]
    fn a_family_without_addresses_covers_only_what_no_policy_protects() {
        let p = cover(&[], &[]);
        assert!(!covers4(&p, v4("169.254.169.254")));
        assert!(!covers6(&p, v6("fd00:ec2::254")));
        assert!(covers4(&p, Ipv4Addr::BROADCAST));
    }

    #[test]
    fn every_protected_address_is_covered_however_many() {
        let mut rng = Lcg(21);
        for round in 0..200 {
            let n = 1 + (rng.next() % 64) as usize;
            let v4s: Vec<Ipv4Addr> = (0..n)
                .map(|_| Ipv4Addr::from_bits(rng.next() as u32))
                .collect();
            let v6s: Vec<Ipv6Addr> = (0..n)
                .map(|_| {
                    let hi = u128::from(rng.next()) << 64;
                    Ipv6Addr::from_bits(hi | u128::from(rng.next()))
                })
                .filter(|a| a.to_ipv4_mapped().is_none())
                .collect();
            let p = cover(&v4s, &v6s);
            for a in &v4s {
                assert!(covers4(&p, *a), "round {round}: {a}");
            }
            for a in &v6s {
                assert!(covers6(&p, *a), "round {round}: {a}");
            }
        }
    }

    #[test]
    fn every_state_on_the_way_covers_what_both_ends_cover() {
        let mut rng = Lcg(4);
        let pick = |rng: &mut Lcg| {
            let n = (rng.next() % 8) as usize;
            let v4s: Vec<Ipv4Addr> = (0..n)
                .map(|_| Ipv4Addr::new(169, 254, rng.next() as u8, rng.next() as u8))
                .collect();
            let v6s: Vec<Ipv6Addr> = (0..n)
                .map(|_| Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, rng.next() as u16))
                .collect();
            (v4s, v6s)
        };
        for round in 0..200 {
            let (a4, a6) = pick(&mut rng);
            let (b4, b6) = pick(&mut rng);
            let from = cover(&a4, &a6);
            let to = cover(&b4, &b6);
            let path = steps(&from, &to);
            assert_eq!(path.last().unwrap_or(&from), &to, "round {round}");
            for state in &path {
                for a in a4.iter().chain(&b4) {
                    if covers4(&from, *a) && covers4(&to, *a) {
                        assert!(covers4(state, *a), "round {round}: {a}");
                    }
                }
                for a in a6.iter().chain(&b6) {
                    if covers6(&from, *a) && covers6(&to, *a) {
                        assert!(covers6(state, *a), "round {round}: {a}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_torn_read_covers_more_never_less() {
        // Any byte of a slot's mask taken from the state before or after
        // (the only bytes a step changes under a non-zero mask).
        let from = cover(&[v4("169.254.169.254")], &[]);
        let to = cover(&[v4("169.254.169.254"), v4("168.63.129.16")], &[]);
        let path = steps(&from, &to);
        let mut before = from;
        for after in &path {
            for choice in 0..16u32 {
                let mut torn = *after;
                for (i, slot) in torn.v4.iter_mut().enumerate() {
                    let mut bytes = after.v4[i].mask.to_ne_bytes();
                    let old = before.v4[i].mask.to_ne_bytes();
                    let net_same = before.v4[i].net == after.v4[i].net;
                    for (k, b) in bytes.iter_mut().enumerate() {
                        if choice & (1 << k) != 0 {
                            *b = old[k];
                        }
                    }
                    if net_same {
                        slot.mask = u32::from_ne_bytes(bytes);
                    }
                }
                assert!(covers4(&torn, v4("169.254.169.254")), "{torn:?}");
            }
            before = *after;
        }
    }

    #[test]
    fn nothing_to_write_when_nothing_changes() {
        let p = cover(&[v4("169.254.169.254")], &[v6("fd00:ec2::254")]);
        assert!(steps(&p, &p).is_empty());
    }
}
