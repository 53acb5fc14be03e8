//! Reading the destination out of `bpf_sock_addr`, the prefixes every
//! destination is compared with first ([`may_be_protected_v4`]), and the
//! protected-address lookups that the few they cover go through.

use aya_ebpf::programs::SockAddrContext;
use imds_guard_common::{
    Ports, Prefix4, Prefixes, V4_SLOTS, V4Key, V6_SLOTS, V6Key, endpoint_kind, family, transport,
};

use crate::maps::{ACTIVE, PROTECTED_V4, PROTECTED_V6};

/// `::ffff:0:0/96` as the third word of `user_ip6` (network byte order).
const MAPPED_PREFIX_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// Written by the agent at every apply (a whole-value update of the
/// one-entry array aya makes of this section), read here with plain loads:
/// every address a policy in force protects is in one of its prefixes
/// (`imds_guard::kernel::prefixes` computes them, and changes them so that
/// every state a program can read, even half-written, covers both the old
/// and the new addresses). All zero until then, which covers every
/// address: a program that runs before the agent wrote it judges
/// everything, as before the prefixes existed.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data.prefixes")]
static PREFIXES: Prefixes = Prefixes::ALL;

/// Whether an IPv4 destination (network byte order) is in one of the
/// protected prefixes: the first thing every program asks of a
/// destination, before any lookup or helper. `false` lets it go.
#[inline(always)]
pub fn may_be_protected_v4(ip4: u32) -> bool {
    let mut i = 0;
    while i < V4_SLOTS {
        // SAFETY: plain reads of our own global. Volatile: the agent
        // writes it after load, so LLVM must not fold the zeros above.
        let slot = unsafe {
            let slot = &raw const PREFIXES.v4[i];
            Prefix4 {
                net: core::ptr::read_volatile(&raw const (*slot).net),
                mask: core::ptr::read_volatile(&raw const (*slot).mask),
            }
        };
        if slot.covers(ip4) {
            return true;
        }
        i += 1;
    }
    false
}

/// [`may_be_protected_v4`] for an IPv6 destination (the words of
/// `user_ip6`); an IPv4-mapped one (`::ffff:a.b.c.d`) is compared with the
/// IPv4 prefixes, as [`protected_v6`] looks it up among the IPv4
/// addresses. Word by word, so that most addresses leave each slot at its
/// first word (`Prefix6::covers` would load all eight words of a slot
/// first).
#[inline(always)]
pub fn may_be_protected_v6(ip6: &[u32; 4]) -> bool {
    if ip6[0] == 0 && ip6[1] == 0 && ip6[2] == MAPPED_PREFIX_WORD {
        return may_be_protected_v4(ip6[3]);
    }
    let mut i = 0;
    while i < V6_SLOTS {
        let mut w = 0;
        let mut inside = true;
        while w < 4 {
            // SAFETY: as in `may_be_protected_v4`.
            let (net, mask) = unsafe {
                let slot = &raw const PREFIXES.v6[i];
                (
                    core::ptr::read_volatile(&raw const (*slot).net[w]),
                    core::ptr::read_volatile(&raw const (*slot).mask[w]),
                )
            };
            if (ip6[w] ^ net) & mask != 0 {
                inside = false;
                break;
            }
            w += 1;
        }
        if inside {
            return true;
        }
        i += 1;
    }
    false
}

/// A destination the programs decided is protected.
pub struct Dst {
    pub family: u8,
    /// Network byte order; IPv4 uses the first four bytes.
    pub addr: [u8; 16],
    /// Host byte order; 0 when there is none (a raw packet, ICMP).
    pub port: u16,
    /// The IP protocol, for packets; 0 for the `sock_addr` hooks.
    pub proto: u8,
    /// [`imds_guard_common::event_flags`] for its record: what `egress`
    /// knew of the socket before judging the packet.
    pub flags: u8,
    /// [`endpoint_kind`] of the address ([`Found::kind`]).
    pub kind: u8,
}

/// What [`protected_v4`] and [`protected_v6`] found: 0 not protected,
/// else the address's kind. A kind the agent never writes counts as a
/// host endpoint (every caller judged): fail closed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Found(u8);

impl Found {
    pub const NOT: Self = Self(0);
    const HOST: u8 = 1;
    const WORKLOAD: u8 = 2;

    /// The [`endpoint_kind`] of a protected address.
    #[inline(always)]
    pub fn kind(self) -> u8 {
        if self.0 == Self::WORKLOAD {
            endpoint_kind::WORKLOAD
        } else {
            endpoint_kind::HOST
        }
    }
}

/// `user_ip4`, as the kernel stores it (network byte order).
#[inline(always)]
pub fn user_ip4(ctx: &SockAddrContext) -> u32 {
    // SAFETY: the kernel hands cgroup/sock_addr programs a valid context.
    // The verifier only accepts 4-byte loads of this field's words; a
    // volatile read keeps LLVM from widening or merging it.
    unsafe { core::ptr::read_volatile(&raw const (*ctx.sock_addr).user_ip4) }
}

/// `user_ip6`, one 32-bit word at a time: the verifier rejects the wider
/// loads LLVM would otherwise emit for a 16-byte copy of a context field
/// (`invalid bpf_context access`).
#[inline(always)]
pub fn user_ip6(ctx: &SockAddrContext) -> [u32; 4] {
    // SAFETY: as in `user_ip4`; each read is one aligned u32 of the context.
    unsafe {
        let p = &raw const (*ctx.sock_addr).user_ip6;
        [
            core::ptr::read_volatile(&raw const (*p)[0]),
            core::ptr::read_volatile(&raw const (*p)[1]),
            core::ptr::read_volatile(&raw const (*p)[2]),
            core::ptr::read_volatile(&raw const (*p)[3]),
        ]
    }
}

/// The destination port in host byte order (`user_port` holds it in network
/// byte order in its low 16 bits).
#[inline(always)]
pub fn user_port(ctx: &SockAddrContext) -> u16 {
    // SAFETY: as in `user_ip4`.
    let raw = unsafe { core::ptr::read_volatile(&raw const (*ctx.sock_addr).user_port) };
    u16::from_be(raw as u16)
}

/// The policy generation in force. Read once per decision and passed to
/// every lookup, so a decision never mixes two policies during a reload.
/// `& 1` keeps any value a valid generation; the single-entry array always
/// has index 0, so the fallback is only there for the verifier.
#[inline(always)]
pub fn active_generation() -> u32 {
    ACTIVE.get(0).map_or(0, |g| *g & 1)
}

/// What a program passes for a packet whose port it could not read (a
/// fragment after the first, a header too short): `IPPROTO_RAW`, which
/// no transport with ports is, and which [`transport_of`] says is
/// unknown.
pub const UNREADABLE: u8 = 255;

/// Is this IPv4 destination protected for traffic of IP protocol `proto`
/// ([`UNREADABLE`] when its port could not be read) to `port` (host byte
/// order)? Asked only of one
/// [`may_be_protected_v4`] lets through: the address's
/// [`imds_guard_common::Ports`] say which of its ports are (a bare
/// address: all of them).
///
/// A subprogram, as [`protected_v6`] is: the port rules are a loop whose
/// every way through (which slot matched, what the loads left in
/// registers and on the stack) would otherwise reach the decision as a
/// state of its own for 6.1's verifier to walk again. The caller knows
/// only the answer.
#[inline(always)]
pub fn protected_v4(generation: u32, ip4: u32, proto: u8, port: u16) -> Found {
    Found(lookup_v4(query(generation, proto, port), ip4))
}

/// The generation (0 or 1) in the low byte, the protocol in the next,
/// the port in the high half: a subprogram takes at most five arguments,
/// all in registers. What the protocol means for the ports is worked out
/// in the subprogram, so that the caller does not branch on it: each way
/// would be a state of its own for the verifier.
#[inline(always)]
fn query(generation: u32, proto: u8, port: u16) -> u32 {
    generation | u32::from(proto) << 8 | u32::from(port) << 16
}

#[inline(never)]
fn lookup_v4(query: u32, ip4: u32) -> u8 {
    ports_cover_v4(query, ip4)
}

/// [`lookup_v4`]'s body, shared with the mapped form of [`lookup_v6`].
#[inline(always)]
fn ports_cover_v4(query: u32, ip4: u32) -> u8 {
    let ports = PROTECTED_V4.get_ptr(V4Key {
        generation: query & 0xff,
        addr: ip4,
    });
    covers(ports, query)
}

/// Is this IPv6 destination protected, as [`protected_v4`] says? An
/// IPv4-mapped address (`::ffff:a.b.c.d`) is protected when its IPv4 form
/// is: an AF_INET6 socket connecting to it runs connect6, not connect4,
/// and reaches the IPv4 service, a known bypass of connect4-only guards.
///
/// A function of its own (a BPF-to-BPF call, on the path of the few
/// destinations the prefixes cover): the two spellings look up different
/// maps with keys of different sizes, and what each leaves behind (the
/// first three words known for a mapped address, stack slots written or
/// not) would make two states of all that follows, which 6.1's verifier
/// walked once each, twice as far as connect4. The callee's frame goes
/// at its return, and the caller knows only the answer.
#[inline(always)]
pub fn protected_v6(generation: u32, ip6: &[u32; 4], proto: u8, port: u16) -> Found {
    Found(lookup_v6(
        query(generation, proto, port),
        ip6[0],
        ip6[1],
        ip6[2],
        ip6[3],
    ))
}

/// [`protected_v6`]'s lookup, word by word; `query` as [`query`] makes it.
#[inline(never)]
fn lookup_v6(query: u32, w0: u32, w1: u32, w2: u32, w3: u32) -> u8 {
    if w0 == 0 && w1 == 0 && w2 == MAPPED_PREFIX_WORD {
        return ports_cover_v4(query, w3);
    }
    let ports = PROTECTED_V6.get_ptr(V6Key {
        generation: query & 0xff,
        addr: [w0, w1, w2, w3],
    });
    covers(ports, query)
}

/// Whether a protected address's ports (none: not protected) cover the
/// traffic [`query`] describes, as [`Found`] says it: 0 when they do not,
/// else the address's kind.
#[inline(always)]
fn covers(ports: Option<*const Ports>, query: u32) -> u8 {
    let (transport, port) = (transport_of((query >> 8) as u8), (query >> 16) as u16);
    let Some(p) = ports else {
        return 0;
    };
    // SAFETY: a value of our own map, valid for this run of the program.
    let (covered, kind) = unsafe { ((*p).covers(transport, port), (*p).kind) };
    if !covered {
        0
    } else if kind == endpoint_kind::WORKLOAD {
        Found::WORKLOAD
    } else {
        Found::HOST
    }
}

/// The [`transport`] of an IP protocol as a program read it: the port is
/// a TCP or UDP one only for those; ICMP, ICMPv6, UDP-Lite, SCTP and "no
/// next header" have none an endpoint names; anything else (an IPv6
/// extension header, [`UNREADABLE`]) leaves the port unknown, and an
/// unknown port counts as a protected one. The `sock_addr` hooks pass
/// the socket's protocol (`sk_protocol`'s low byte: MPTCP's 262 is 6
/// there, TCP, as its subflows are); `egress` judges every packet again
/// from its own headers whatever a hook let through.
#[inline(always)]
fn transport_of(proto: u8) -> u8 {
    match proto {
        6 => transport::TCP,
        17 => transport::UDP,
        1 | 58 | 59 | 132 | 136 => transport::OTHER,
        _ => transport::UNKNOWN,
    }
}

impl Dst {
    #[inline(always)]
    pub fn v4(ip4: u32, port: u16) -> Self {
        let b = ip4.to_ne_bytes();
        Self {
            family: family::INET,
            addr: [b[0], b[1], b[2], b[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port,
            proto: 0,
            flags: 0,
            kind: endpoint_kind::HOST,
        }
    }

    #[inline(always)]
    pub fn v6(ip6: &[u32; 4], port: u16) -> Self {
        let mut addr = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let b = ip6[i].to_ne_bytes();
            addr[i * 4] = b[0];
            addr[i * 4 + 1] = b[1];
            addr[i * 4 + 2] = b[2];
            addr[i * 4 + 3] = b[3];
            i += 1;
        }
        Self {
            family: family::INET6,
            addr,
            port,
            proto: 0,
            flags: 0,
            kind: endpoint_kind::HOST,
        }
    }

    /// The address as two words (in memory order), to hand to a
    /// function that takes scalars only ([`Dst::from_words`]).
    #[inline(always)]
    pub fn addr_words(&self) -> (u64, u64) {
        let a = self.addr;
        (
            u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
            u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
        )
    }

    /// The destination of `family` at the address [`Dst::addr_words`]
    /// gave, with nothing else known of it.
    #[inline(always)]
    pub fn from_words(family: u8, lo: u64, hi: u64) -> Self {
        let (lo, hi) = (lo.to_ne_bytes(), hi.to_ne_bytes());
        Self {
            family,
            addr: [
                lo[0], lo[1], lo[2], lo[3], lo[4], lo[5], lo[6], lo[7], hi[0], hi[1], hi[2], hi[3],
                hi[4], hi[5], hi[6], hi[7],
            ],
            port: 0,
            proto: 0,
            flags: 0,
            kind: 0,
        }
    }

    /// The destination as [`imds_guard_common::SockState`] keeps it:
    /// IPv6, an IPv4 address in its mapped form.
    #[inline(always)]
    pub fn stored_addr(&self) -> [u8; 16] {
        let a = self.addr;
        if self.family == family::INET {
            [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
            ]
        } else {
            a
        }
    }
}
