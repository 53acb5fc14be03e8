//! Reading the destination out of `bpf_sock_addr`, the prefixes every
//! destination is compared with first ([`may_be_protected_v4`]), and the
//! protected-address lookups that the few they cover go through.

use aya_ebpf::programs::SockAddrContext;
use imds_guard_common::{
    Ports, Prefix4, Prefixes, V4_SLOTS, V4Key, V6_SLOTS, V6Key, family, transport,
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

/// Is this IPv4 destination protected for traffic of `transport`
/// ([`transport`]) to `port` (host byte order)? Asked only of one
/// [`may_be_protected_v4`] lets through: the address's
/// [`imds_guard_common::Ports`] say which of its ports are (a bare
/// address: all of them).
#[inline(always)]
pub fn protected_v4(generation: u32, ip4: u32, transport: u8, port: u16) -> bool {
    let ports = PROTECTED_V4.get_ptr(V4Key {
        generation,
        addr: ip4,
    });
    covers(ports, transport, port)
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
pub fn protected_v6(generation: u32, ip6: &[u32; 4], transport: u8, port: u16) -> bool {
    // A subprogram takes at most five arguments, all in registers: the
    // generation (0 or 1), the transport and the port share one.
    let query = generation | u32::from(transport) << 8 | u32::from(port) << 16;
    lookup_v6(query, ip6[0], ip6[1], ip6[2], ip6[3])
}

/// [`protected_v6`]'s lookup, word by word; `query` is the generation in
/// its low byte, the transport in the next, the port in the high half.
#[inline(never)]
fn lookup_v6(query: u32, w0: u32, w1: u32, w2: u32, w3: u32) -> bool {
    let generation = query & 0xff;
    let transport = (query >> 8) as u8;
    let port = (query >> 16) as u16;
    if w0 == 0 && w1 == 0 && w2 == MAPPED_PREFIX_WORD {
        return protected_v4(generation, w3, transport, port);
    }
    let ports = PROTECTED_V6.get_ptr(V6Key {
        generation,
        addr: [w0, w1, w2, w3],
    });
    covers(ports, transport, port)
}

/// Whether a protected address's ports (none: not protected) cover the
/// traffic.
#[inline(always)]
fn covers(ports: Option<*const Ports>, transport: u8, port: u16) -> bool {
    // SAFETY: a value of our own map, valid for this run of the program.
    ports.is_some_and(|p| unsafe { (*p).covers(transport, port) })
}

/// The [`transport`] of a socket's protocol (`bpf_sock_addr.protocol`, as
/// `sk_protocol` holds it): the port a `sock_addr` hook reads is a TCP or
/// UDP port only for those; one the programs do not know is judged as an
/// unreadable port. The `egress` program judges every packet again from
/// its own headers, so what a socket claims here only decides whether
/// this hook judges its caller now.
#[inline(always)]
pub fn transport_of_socket(protocol: u32) -> u8 {
    match protocol {
        // IPPROTO_TCP; MPTCP sockets report it too.
        6 => transport::TCP,
        // IPPROTO_UDP.
        17 => transport::UDP,
        // ICMP and ICMPv6 ping sockets, UDP-Lite: no TCP or UDP port.
        1 | 58 | 136 => transport::OTHER,
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
