//! `forward`: packets the host forwards to a protected address, judged at
//! netfilter's forward hook by a `BPF_PROG_TYPE_NETFILTER` program (Linux
//! 6.4) the kernel holds through a pinned link per family. No `nft flush
//! ruleset`, no `nft -f` of a file that flushes and no dead agent removes
//! it. A packet to a protected address is dropped (audit mode: let
//! through), recorded and counted, unless `[forward]` names the interface
//! it came in on or its source prefix; every other packet is accepted
//! untouched.
//!
//! It sits in a `socket/` section: aya-obj 0.3 refuses a `netfilter` one,
//! which would fail the whole object. The agent never loads it through
//! aya; it loads the relocated instructions itself with the netfilter
//! program type (`kernel/netfilter.rs`).
//!
//! The context is `struct bpf_nf_ctx { const struct nf_hook_state *state;
//! struct sk_buff *skb; }` (include/linux/filter.h), both `PTR_TO_BTF_ID`:
//! the fields behind them are read with `bpf_probe_read_kernel` at offsets
//! the agent resolved from BTF.
//!
//! Fragments: nothing reassembles before this hook (unless conntrack or
//! 6.6's `BPF_F_NETFILTER_IP_DEFRAG` asked, and the agent asks for
//! neither), so a fragment after the first has no transport header: its
//! port is unknown, and it counts as going to a protected port. Every
//! fragment to a protected address is dropped on its own, and the record
//! says which one it was (with a port only for a whole datagram or a first
//! fragment). Of an address whose endpoint names ports, a whole packet or
//! a first fragment to another port (or of a protocol without ports, as
//! ICMP) is accepted.

use core::ffi::c_void;

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::lpm_trie::Key};
use imds_guard_common::{
    Budget, BudgetKey, FORWARD_BUDGET_WINDOW_NS, FORWARD_RECORD_BURST, ForwardEvent,
    ForwardOffsets, GENERATION_BITS, IFNAME_LEN, InterfaceKey, Source4Key, Source6Key,
    forward_counter, forward_verdict, fragment, mode, nfproto,
};

use crate::{
    dst::{
        Found, UNREADABLE, active_generation, may_be_protected_v4, may_be_protected_v6,
        protected_v4, protected_v6,
    },
    kernel::{address_of, read, read_ptr},
    maps::{
        CONFIG, FORWARD_BUDGETS, FORWARD_COUNTERS, FORWARD_EVENTS, FORWARD_INTERFACES,
        FORWARD_SOURCES_V4, FORWARD_SOURCES_V6,
    },
};

/// Written by the agent before the program loads (`set_global`); all
/// zero, hence not [`ForwardOffsets::VALID`], in a program loaded without
/// them, which then drops every packet it sees: fail closed.
#[unsafe(no_mangle)]
static FORWARD_OFFSETS: ForwardOffsets = ForwardOffsets::UNSET;

/// `struct bpf_nf_ctx`.
#[repr(C)]
pub struct NfCtx {
    state: *const c_void,
    skb: *const c_void,
}

/// What a netfilter program returns: `NF_DROP` (0) or `NF_ACCEPT` (1), the
/// only two values the verifier lets it return.
#[repr(i32)]
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Drop = 0,
    Accept = 1,
}

/// IP protocols whose header starts with the ports.
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_UDPLITE: u8 = 136;
const IPPROTO_SCTP: u8 = 132;
/// The IPv6 fragment header's number.
const NEXTHDR_FRAGMENT: u8 = 44;
/// `frag_off` of an IPv4 header (host order): more fragments, and the
/// offset in 8-byte units.
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// The entry point. Every way of not knowing (offsets not written, a read
/// that failed) ends in [`Verdict::Drop`], counted as unreadable: fail
/// closed. Those reads do not fail on a forwarded packet (its IP header is
/// in the linear part: `ip_rcv_core`/`ipv6_rcv` pulled it), so this drops
/// nothing it should not in practice.
#[unsafe(no_mangle)]
#[unsafe(link_section = "socket/forward")]
pub extern "C" fn forward(ctx: *const NfCtx) -> i32 {
    let verdict = try_forward(ctx).unwrap_or_else(|| {
        bump(forward_counter::UNREADABLE);
        Verdict::Drop
    });
    verdict as i32
}

/// What the program knows of a packet to a protected address.
struct Packet {
    family: u8,
    fragment: u8,
    proto: u8,
    port: u16,
    src: [u8; 16],
    dst: [u8; 16],
}

/// The offsets, if the agent wrote them.
#[inline(always)]
fn offsets() -> Option<&'static ForwardOffsets> {
    let slot: *const ForwardOffsets = &raw const FORWARD_OFFSETS;
    // SAFETY: reads a local. Volatile, so that LLVM reads what the agent
    // wrote into the object rather than folding the zeros above in.
    let p = unsafe { core::ptr::read_volatile(&raw const slot) };
    // SAFETY: `p` is the address of our own global, valid for the program.
    let off = unsafe { &*p };
    (off.valid == ForwardOffsets::VALID).then_some(off)
}

#[inline(always)]
fn try_forward(ctx: *const NfCtx) -> Option<Verdict> {
    let off = offsets()?;
    // SAFETY: the kernel hands the program a valid `bpf_nf_ctx`; each field
    // is read with one 8-byte load, the only size the verifier allows.
    let (state, skb) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx).state),
            core::ptr::read_volatile(&raw const (*ctx).skb),
        )
    };
    let (state, skb) = (address_of(state)?, address_of(skb)?);
    let pf: u8 = read(state, off.state_pf)?;
    let head = read_ptr(skb, off.skb_head)?;
    let network: u16 = read(skb, off.skb_network_header)?;
    let ip = head + u64::from(network);
    let packet = match pf {
        nfproto::IPV4 => v4(off, skb, ip)?,
        nfproto::IPV6 => v6(off, skb, ip)?,
        // Linked for IPv4 and IPv6 only.
        _ => return Some(Verdict::Accept),
    };
    let Some((packet, generation)) = packet else {
        return Some(Verdict::Accept);
    };
    let dev = read_ptr(state, off.state_in);
    let ifindex = dev
        .and_then(|d| read::<u32>(d, off.dev_ifindex))
        .unwrap_or(0);
    let ifname: [u8; IFNAME_LEN] = dev
        .and_then(|d| read(d, off.dev_name))
        .unwrap_or([0; IFNAME_LEN]);
    if excepted(generation, &packet, &ifname) {
        bump(forward_counter::EXCEPTED);
        return Some(Verdict::Accept);
    }
    // A generation without its config (zeroed: the agent has not written
    // it) drops: fail closed.
    let audit = CONFIG
        .get(generation)
        .is_some_and(|c| c.mode == mode::AUDIT);
    let (v, index, verdict) = if audit {
        (
            forward_verdict::AUDITED,
            forward_counter::AUDITED,
            Verdict::Accept,
        )
    } else {
        (
            forward_verdict::DROPPED,
            forward_counter::DROPPED,
            Verdict::Drop,
        )
    };
    bump(index);
    record(&packet, v, ifindex, &ifname, generation);
    Some(verdict)
}

/// Whether `[forward]` lets the packet through: its interface's name, or
/// its source, in the generation's tries.
#[inline(always)]
fn excepted(generation: u32, p: &Packet, ifname: &[u8; IFNAME_LEN]) -> bool {
    let by_name = Key::new(
        GENERATION_BITS + 8 * IFNAME_LEN as u32,
        InterfaceKey {
            generation,
            name: *ifname,
        },
    );
    if FORWARD_INTERFACES.get(&by_name).is_some() {
        return true;
    }
    if p.family == nfproto::IPV4 {
        let key = Key::new(
            GENERATION_BITS + 32,
            Source4Key {
                generation,
                addr: [p.src[0], p.src[1], p.src[2], p.src[3]],
            },
        );
        FORWARD_SOURCES_V4.get(&key).is_some()
    } else {
        let key = Key::new(
            GENERATION_BITS + 128,
            Source6Key {
                generation,
                addr: p.src,
            },
        );
        FORWARD_SOURCES_V6.get(&key).is_some()
    }
}

/// The IPv4 header's first 20 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    protocol: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}

/// `Some(None)` for a packet to an address that is not protected; else
/// the packet, and the policy generation it was found protected under. An
/// address outside the protected prefixes leaves before any lookup.
#[inline(always)]
fn v4(off: &ForwardOffsets, skb: u64, ip: u64) -> Option<Option<(Packet, u32)>> {
    let h: Ipv4Hdr = read(ip, 0)?;
    if !may_be_protected_v4(h.daddr) {
        return Some(None);
    }
    let frag = u16::from_be(h.frag_off);
    let fragment = if frag & IP_OFFSET != 0 {
        fragment::LATER
    } else if frag & IP_MF != 0 {
        fragment::FIRST
    } else {
        fragment::NONE
    };
    let ihl = u32::from(h.version_ihl & 0x0f) * 4;
    let (asked, port) = if fragment == fragment::LATER {
        (UNREADABLE, 0)
    } else {
        port(off, skb, ip, ihl, h.protocol)
    };
    let generation = active_generation();
    if protected_v4(generation, h.daddr, asked, port) == Found::NOT {
        return Some(None);
    }
    let (s, d) = (h.saddr.to_ne_bytes(), h.daddr.to_ne_bytes());
    let mut packet = Packet {
        family: nfproto::IPV4,
        fragment,
        proto: h.protocol,
        port,
        src: [0; 16],
        dst: [0; 16],
    };
    packet.src[..4].copy_from_slice(&s);
    packet.dst[..4].copy_from_slice(&d);
    Some(Some((packet, generation)))
}

/// The IPv6 fixed header.
#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6Hdr {
    vtc_flow: u32,
    payload_len: u16,
    nexthdr: u8,
    hop_limit: u8,
    saddr: [u32; 4],
    daddr: [u32; 4],
}

/// `Some(None)` for a packet to an address that is not protected. The
/// IPv4-mapped form of a protected IPv4 address is protected too
/// (`protected_v6`): no router turns it into IPv4, but it costs one
/// comparison to refuse, as the nftables table does. As [`v4`] for the
/// prefixes and the generation.
#[inline(always)]
fn v6(off: &ForwardOffsets, skb: u64, ip: u64) -> Option<Option<(Packet, u32)>> {
    let h: Ipv6Hdr = read(ip, 0)?;
    if !may_be_protected_v6(&h.daddr) {
        return Some(None);
    }
    // Only a fragment header right after the fixed header is seen; one
    // behind other extension headers leaves the record saying "whole",
    // and the port unknown: judged as a protected one.
    let (fragment, proto) = if h.nexthdr == NEXTHDR_FRAGMENT {
        // Next header (1), reserved (1), offset and M flag (2).
        let frag: [u8; 4] = read(ip, 40)?;
        let word = u16::from_be_bytes([frag[2], frag[3]]);
        let fragment = if word & 0xfff8 != 0 {
            fragment::LATER
        } else {
            fragment::FIRST
        };
        (fragment, frag[0])
    } else {
        (fragment::NONE, h.nexthdr)
    };
    // A first fragment's transport header follows the 8-byte fragment
    // header.
    let (asked, port) = match fragment {
        fragment::LATER => (UNREADABLE, 0),
        fragment::NONE => port(off, skb, ip, 40, proto),
        _ => port(off, skb, ip, 48, proto),
    };
    let generation = active_generation();
    if protected_v6(generation, &h.daddr, asked, port) == Found::NOT {
        return Some(None);
    }
    let mut packet = Packet {
        family: nfproto::IPV6,
        fragment,
        proto,
        port,
        src: [0; 16],
        dst: [0; 16],
    };
    let mut i = 0;
    while i < 4 {
        packet.src[i * 4..i * 4 + 4].copy_from_slice(&h.saddr[i].to_ne_bytes());
        packet.dst[i * 4..i * 4 + 4].copy_from_slice(&h.daddr[i].to_ne_bytes());
        i += 1;
    }
    Some(Some((packet, generation)))
}

/// The protocol to ask the protected addresses about and the destination
/// port (host order) of a transport header of protocol `proto`, `hlen`
/// bytes past the IP header: the port of a protocol that has one, when it
/// is in the linear part of the buffer, else [`UNREADABLE`] (which counts
/// as a protected port); 0 for the other protocols (`dst::transport_of`
/// says what each means).
#[inline(always)]
fn port(off: &ForwardOffsets, skb: u64, ip: u64, hlen: u32, proto: u8) -> (u8, u16) {
    if !matches!(
        proto,
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_SCTP
    ) {
        return (proto, 0);
    }
    let (Some(len), Some(data_len)) = (
        read::<u32>(skb, off.skb_len),
        read::<u32>(skb, off.skb_data_len),
    ) else {
        return (UNREADABLE, 0);
    };
    // `len` counts from `data`, the network header at this hook.
    if len.saturating_sub(data_len) < hlen + 4 {
        return (UNREADABLE, 0);
    }
    match read::<u16>(ip, hlen + 2) {
        Some(port) => (proto, u16::from_be(port)),
        None => (UNREADABLE, 0),
    }
}

/// Writes the packet's record, within its source's budget: a flood from
/// one source spends its own budget, not the ring buffer every source
/// shares. Budgets are updated without atomics: two CPUs racing on one
/// source may let one record more through, which is harmless.
#[inline(always)]
fn record(p: &Packet, v: u8, ifindex: u32, ifname: &[u8; IFNAME_LEN], generation: u32) {
    let key = BudgetKey {
        ifindex,
        family: u32::from(p.family),
        addr: p.src,
    };
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut suppressed = 0;
    match FORWARD_BUDGETS.get_ptr_mut(key) {
        Some(b) => {
            // SAFETY: a value of the map, valid while the program runs.
            let b = unsafe { &mut *b };
            if now.wrapping_sub(b.window_start_ns) >= FORWARD_BUDGET_WINDOW_NS {
                b.window_start_ns = now;
                b.records = 0;
            }
            if b.records >= FORWARD_RECORD_BURST {
                b.suppressed = b.suppressed.wrapping_add(1);
                bump(forward_counter::SUPPRESSED);
                return;
            }
            b.records += 1;
            suppressed = b.suppressed;
            b.suppressed = 0;
        }
        None => {
            let fresh = Budget {
                window_start_ns: now,
                records: 1,
                suppressed: 0,
            };
            // A failed insert (the map is an LRU: it does not fill) only
            // costs the budget: the record is still written.
            let _ = FORWARD_BUDGETS.insert(key, fresh, 0);
        }
    }
    let Some(mut entry) = FORWARD_EVENTS.reserve::<ForwardEvent>(0) else {
        bump(forward_counter::LOST);
        return;
    };
    entry.write(ForwardEvent {
        family: p.family,
        fragment: p.fragment,
        proto: p.proto,
        verdict: v,
        ifindex,
        src: p.src,
        dst: p.dst,
        ifname: *ifname,
        port: p.port,
        generation: generation as u8,
        _pad: 0,
        suppressed,
    });
    entry.submit(0);
}

/// Adds one to counter `index`.
#[inline(always)]
fn bump(index: u32) {
    if let Some(c) = FORWARD_COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, written by this CPU only, while this
        // program runs (preemption is off in netfilter hooks).
        unsafe { *c += 1 };
    }
}
