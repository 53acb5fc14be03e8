//! The forward path held by a BPF netfilter program (Linux 6.4): what the
//! `forward` program and the agent share besides the policy maps it reads
//! (`ACTIVE`, `CONFIG`, `PROTECTED_V4`/`V6`, keyed by generation like the
//! other programs'): the offsets it reads the packet and the hook state at,
//! the keys of `[forward]`'s exceptions, its records and counters, and
//! what the agent records of the mechanism in force for `status`.

use core::mem::size_of;

/// The priorities a netfilter link takes at the forward hook, the first
/// free one wins: ahead of every other hook (`NF_IP_PRI_FIRST` itself,
/// `i32::MIN`, is refused to BPF links with `ERANGE`), so that no foreign
/// hook can queue a packet to userspace and have it reinjected past the
/// program. A BPF link refuses a priority another hook holds (`EBUSY`), so
/// an upgrade links the new program at the next free one before it lets
/// the old link go (a netfilter link's program cannot be replaced,
/// `BPF_LINK_UPDATE` is `EOPNOTSUPP`), and the two alternate.
pub const FORWARD_PRIORITIES: [i32; 4] = [i32::MIN + 1, i32::MIN + 2, i32::MIN + 3, i32::MIN + 4];

/// Byte offsets of the kernel fields the `forward` program reads, each
/// from the start of the structure named in its name, resolved by the
/// agent from the kernel's BTF (Rust emits no CO-RE relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardOffsets {
    /// [`ForwardOffsets::VALID`] once the agent wrote the rest: a program
    /// loaded without them cannot read a packet and drops every one.
    pub valid: u32,
    /// `sk_buff.head` (`unsigned char *`).
    pub skb_head: u32,
    /// `sk_buff.network_header` (`__u16`, from `head`).
    pub skb_network_header: u32,
    /// `sk_buff.len` (from `data`, the network header at this hook).
    pub skb_len: u32,
    /// `sk_buff.data_len` (the bytes not in the linear part).
    pub skb_data_len: u32,
    /// `nf_hook_state.pf` (`u8`).
    pub state_pf: u32,
    /// `nf_hook_state.in` (`struct net_device *`).
    pub state_in: u32,
    /// `net_device.ifindex` (`int`).
    pub dev_ifindex: u32,
    /// `net_device.name` (`char[IFNAMSIZ]`).
    pub dev_name: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<ForwardOffsets>() == 40);

impl ForwardOffsets {
    /// The value of [`ForwardOffsets::valid`] when the offsets are resolved.
    pub const VALID: u32 = 0x0f0f_5e75;

    /// Nothing resolved: the program drops every packet to a protected
    /// address and counts it unreadable.
    pub const UNSET: Self = Self {
        valid: 0,
        skb_head: 0,
        skb_network_header: 0,
        skb_len: 0,
        skb_data_len: 0,
        state_pf: 0,
        state_in: 0,
        dev_ifindex: 0,
        dev_name: 0,
        _pad: 0,
    };
}

/// `IFNAMSIZ`: an interface name with its NUL.
pub const IFNAME_LEN: usize = 16;
/// `[forward]` entries (interfaces, and source prefixes of each family)
/// per policy; the maps hold two generations.
pub const MAX_FORWARD_EXCEPTIONS: u32 = 256;

/// The data of a key of [`crate::MAP_FORWARD_INTERFACES`], an LPM trie:
/// the generation, then the interface name as `net_device.name` holds it
/// (NUL padded). An exact name is stored with its NUL counted in the
/// prefix length, so it matches only itself; a name ending in `*` without,
/// so it matches every name it starts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterfaceKey {
    pub generation: u32,
    pub name: [u8; IFNAME_LEN],
}
const _: () = assert!(size_of::<InterfaceKey>() == 20);

/// The data of a key of [`crate::MAP_FORWARD_SOURCES_V4`]: the generation,
/// then the address in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Source4Key {
    pub generation: u32,
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<Source4Key>() == 8);

/// The data of a key of [`crate::MAP_FORWARD_SOURCES_V6`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Source6Key {
    pub generation: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<Source6Key>() == 20);

/// Bits of an LPM key's prefix length that the generation takes: a lookup
/// matches only entries of its own generation.
pub const GENERATION_BITS: u32 = 32;

/// `NFPROTO_IPV4` and `NFPROTO_IPV6` (include/uapi/linux/netfilter.h), as
/// `nf_hook_state.pf` and [`ForwardEvent::family`] hold them.
pub mod nfproto {
    pub const IPV4: u8 = 2;
    pub const IPV6: u8 = 10;
}

/// Where a packet stands among the fragments of its datagram. Nothing
/// reassembles before the program (`BPF_F_NETFILTER_IP_DEFRAG` is 6.6's),
/// so each fragment is judged on its own, by the addresses it carries.
pub mod fragment {
    /// A whole datagram.
    pub const NONE: u8 = 0;
    /// The first fragment: the one with the ports.
    pub const FIRST: u8 = 1;
    /// A fragment after the first: no transport header, no port.
    pub const LATER: u8 = 2;
}

/// What the program did with a packet to a protected address.
pub mod forward_verdict {
    pub const DROPPED: u8 = 0;
    /// Audit mode: recorded and let through.
    pub const AUDITED: u8 = 1;
}

/// One packet to a protected address, within its source's record budget,
/// sent through [`crate::MAP_FORWARD_EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardEvent {
    /// An [`nfproto`] value: 2 puts the addresses in the first four bytes.
    pub family: u8,
    /// A [`fragment`] value.
    pub fragment: u8,
    /// The IP protocol (of the fixed header: an IPv6 extension header's
    /// number when one follows it).
    pub proto: u8,
    /// A [`forward_verdict`] value.
    pub verdict: u8,
    /// The interface the packet came in on, 0 when unknown.
    pub ifindex: u32,
    /// Network byte order.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// The interface's name as the kernel had it, NUL padded.
    pub ifname: [u8; IFNAME_LEN],
    /// The destination port (host order), 0 when there is none to read.
    pub port: u16,
    /// The policy generation that judged it.
    pub generation: u8,
    pub _pad: u8,
    /// Packets of this source the program did not record since its last
    /// record (over its budget).
    pub suppressed: u32,
}
const _: () = assert!(size_of::<ForwardEvent>() == 64);

/// A source, as the program's per-source record budget keys it: the
/// interface and the address, so that one source's flood spends its own
/// budget, not the ring every source shares.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BudgetKey {
    pub ifindex: u32,
    pub family: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<BudgetKey>() == 24);

/// A source's budget in the current window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub window_start_ns: u64,
    pub records: u32,
    pub suppressed: u32,
}
const _: () = assert!(size_of::<Budget>() == 16);

/// Records per source per window the program writes; the rest are
/// counted, and the source's next record carries the count.
pub const FORWARD_RECORD_BURST: u32 = 5;
/// The window of the per-source record budget.
pub const FORWARD_BUDGET_WINDOW_NS: u64 = 1_000_000_000;
/// Sources the budget tracks (an LRU: a flood of spoofed sources evicts
/// entries, which only gives the evicted a fresh budget).
pub const FORWARD_SOURCES: u32 = 4096;
/// Size of the record ring buffer in bytes (a power of two, a multiple of
/// the page size).
pub const FORWARD_EVENTS_BYTE_SIZE: u32 = 1 << 18;

/// Indexes of [`crate::MAP_FORWARD_COUNTERS`], per CPU.
pub mod forward_counter {
    /// Packets to a protected address dropped (enforce mode).
    pub const DROPPED: u32 = 0;
    /// Packets to a protected address let through (audit mode).
    pub const AUDITED: u32 = 1;
    /// Packets to a protected address `[forward]` let through.
    pub const EXCEPTED: u32 = 2;
    /// Records not written: over their source's budget.
    pub const SUPPRESSED: u32 = 3;
    /// Records not written: the ring buffer was full.
    pub const LOST: u32 = 4;
    /// Packets dropped because the packet, the offsets or the
    /// configuration could not be read (fail closed).
    pub const UNREADABLE: u32 = 5;
    pub const LEN: u32 = 6;
}

/// What holds the forward path, as [`ForwardState::mechanism`] records it.
pub mod mechanism {
    /// Nothing: the agent could put neither in force.
    pub const NONE: u32 = 0;
    /// The pinned `forward` program, one netfilter link per family.
    pub const NETFILTER: u32 = 1;
    /// nftables: the agent's own table (`flags owner`) while it lives, and
    /// an unowned copy it puts back from nf_tables' notifications.
    pub const NFTABLES: u32 = 2;
}

/// Bits of [`ForwardState::flags`].
pub mod forward_flags {
    /// The kernel refused `flags owner` (before 5.12): only the unowned
    /// copy holds, put back from notifications while the agent runs.
    pub const NO_OWNER: u32 = 1;
    /// The agent was told to use nftables where the netfilter program
    /// exists (tests).
    pub const FORCED: u32 = 2;
}

/// What the agent records of the forward path in force, in the one entry
/// of [`crate::MAP_FORWARD_STATE`], for `status` to compare with what the
/// kernel holds. The programs never read it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardState {
    /// A [`mechanism`] value.
    pub mechanism: u32,
    /// [`forward_flags`].
    pub flags: u32,
    /// SHA-256 of the unowned table's rules as the kernel listed them once
    /// they were put in force (nftables only).
    pub table_digest: [u8; 32],
}
const _: () = assert!(size_of::<ForwardState>() == 40);
