//! The policy as the maps hold it: keys, values and switches, in two
//! generations (the one in force and the one a reload writes).

use core::mem::size_of;

use crate::Ipv6Key;

/// Number of policy generations: the one in force and the one a reload
/// writes.
pub const GENERATIONS: u32 = 2;
/// Protected addresses per policy (the maps hold two generations).
pub const MAX_ENDPOINTS: u32 = 64;
/// Rules per identity map per policy. The maps hold twice as many ids: a
/// policy's and the one it replaces may name none in common.
pub const MAX_ID_RULES: u32 = 1 << 17;

/// Ports a port-scoped endpoint may list per address.
pub const MAX_PORTS: usize = 8;

/// Bits of [`PortRule::protocols`] and [`Ports::every_port`].
pub mod proto_bits {
    /// TCP (and MPTCP, whose sockets say TCP).
    pub const TCP: u8 = 1;
    /// UDP.
    pub const UDP: u8 = 2;
    /// Every protocol, whatever it is (a bare address protects them all).
    pub const ALL: u8 = 0xff;
}

/// What a protected destination's transport is, as a program read it.
pub mod transport {
    /// A protocol without ports the policy can name (ICMP, ICMPv6,
    /// UDP-Lite, SCTP), or none: a port-scoped endpoint lets it through.
    pub const OTHER: u8 = 0;
    /// TCP, the port read.
    pub const TCP: u8 = 1;
    /// UDP, the port read.
    pub const UDP: u8 = 2;
    /// The port could not be read (a fragment after the first, an IPv6
    /// extension header before the transport, a protocol the programs do
    /// not know, a short packet): it counts as going to a protected port.
    pub const UNKNOWN: u8 = 0xff;
}

/// One protected port of a port-scoped endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRule {
    /// Host byte order; 0 for an unused slot.
    pub port: u16,
    /// [`proto_bits`]: the protocols protected on this port.
    pub protocols: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<PortRule>() == 4);

/// The value of a protected address in [`crate::MAP_PROTECTED_V4`] and
/// [`crate::MAP_PROTECTED_V6`]: which of its traffic the policy judges.
/// A bare address has `every_port` [`proto_bits::ALL`] and no port rule:
/// everything sent to it is judged, as before endpoints had ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ports {
    /// [`proto_bits`] protected on every port.
    pub every_port: u8,
    /// [`endpoint_kind`] of the address.
    pub kind: u8,
    pub _pad: [u8; 2],
    /// The protected ports, in the first slots; port 0 ends them.
    pub rules: [PortRule; MAX_PORTS],
}
const _: () = assert!(size_of::<Ports>() == 36);

/// [`Ports::kind`]: whose secrets an endpoint hands out.
pub mod endpoint_kind {
    /// The host's own secrets (IMDS, WireServer): every caller is judged.
    pub const HOST: u8 = 0;
    /// Each workload's own credentials (ECS task credentials, EKS Pod
    /// Identity): a caller not on the host (a container, a pod) that no
    /// `[deny]` rule refuses is let through (`reason::WORKLOAD`); the
    /// host's callers are judged as at a host endpoint.
    pub const WORKLOAD: u8 = 1;
}

impl Ports {
    /// Every port, every protocol: a bare address.
    pub const EVERY: Self = Self {
        every_port: proto_bits::ALL,
        kind: endpoint_kind::HOST,
        _pad: [0; 2],
        rules: [PortRule {
            port: 0,
            protocols: 0,
            _pad: 0,
        }; MAX_PORTS],
    };

    /// Whether traffic of `transport` ([`transport`]) to `port` (host byte
    /// order) is judged. An unreadable port is: fail closed.
    #[inline(always)]
    pub fn covers(&self, transport: u8, port: u16) -> bool {
        if self.every_port == proto_bits::ALL || transport == transport::UNKNOWN {
            return true;
        }
        if transport == transport::OTHER {
            return false;
        }
        if self.every_port & transport != 0 {
            return true;
        }
        let mut i = 0;
        while i < MAX_PORTS {
            let r = self.rules[i];
            if r.port == port && r.protocols & transport != 0 {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// Key of [`crate::MAP_PROTECTED_V4`]: the generation and the address as
/// the kernel stores it in `user_ip4` (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct V4Key {
    pub generation: u32,
    pub addr: u32,
}
const _: () = assert!(size_of::<V4Key>() == 8);

/// Key of [`crate::MAP_PROTECTED_V6`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct V6Key {
    pub generation: u32,
    pub addr: Ipv6Key,
}
const _: () = assert!(size_of::<V6Key>() == 20);

/// The value of [`crate::MAP_DECIDED`], a socket's own storage: what was
/// let through on it, under which policy, and, for a caller the policy
/// allows only some requests (issue 23), how far its byte stream was
/// judged. Written where a protected destination is let through (a
/// `sock_addr` hook, or `egress` after it judged a packet); `egress` lets a
/// packet go unjudged only when `addr` is its destination and `epoch` the
/// [`Config::epoch`] in force, so a reload (or the switch from audit to
/// enforce) has the next packet of every connection judged again by the
/// new policy. The request fields (`flags` to `tgid`) are kept when
/// `egress` re-stamps the epoch (a merge, not an overwrite): only the
/// `sk_msg` program moves `judged_end`, only `sock_ops` sets `base_seq`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockState {
    /// The protected destination let through, as an IPv6 address (an IPv4
    /// one in its mapped form, `::ffff:a.b.c.d`), in network byte order.
    pub addr: [u8; 16],
    /// The [`Config::epoch`] of the policy that let it through.
    pub epoch: u32,
    /// [`sock_state::ALLOWED`] or [`sock_state::AUDITED`].
    pub verdict: u8,
    /// [`crate::entry_flags`] of the deciding entry, as the connect found
    /// them.
    pub flags: u8,
    /// The request rule set of a caller allowed some requests (part of the
    /// rule lookup's key); 0 for the others.
    pub ruleset: u16,
    /// [`stage`]: what `sock_ops` and `sk_msg` did with the socket.
    pub stage: u8,
    /// [`crate::ns`] bits of the connector, for records.
    pub ns: u8,
    /// Requests `sk_msg` let through (saturating): the record budget.
    pub requests: u16,
    /// The sequence number of the first byte after the handshake
    /// (`tcp_sock.write_seq` at `ACTIVE_ESTABLISHED`), set by `sock_ops`.
    pub base_seq: u32,
    /// One past the last byte `sk_msg` let through; `egress` lets payload
    /// leave only within `[base_seq, judged_end)`.
    pub judged_end: u32,
    /// The deciding policy entry (1-based, 0 for none).
    pub entry: u32,
    /// The connector's uid and gid.
    pub uid: u32,
    pub gid: u32,
    /// The connector's cgroup id (unit, pod).
    pub cgroup_id: u64,
    /// The connector's tgid.
    pub tgid: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<SockState>() == 64);

/// [`SockState::verdict`]: how the socket was let through.
pub mod sock_state {
    /// The policy allows its owner.
    pub const ALLOWED: u8 = 1;
    /// The policy refuses its owner, and audit mode let it through: the
    /// switch to enforce changes the epoch, and its next packet is judged
    /// (and dropped) then.
    pub const AUDITED: u8 = 2;
}

/// Bits of [`SockState::stage`].
pub mod stage {
    /// `sock_ops` put the socket in the sockhash and set `base_seq`.
    pub const IN_SOCKHASH: u8 = 1;
    /// `sk_msg` refused a request on it: every later one is refused too.
    pub const POISONED: u8 = 2;
    /// Bytes reached the stream other than through `sk_msg`'s verdict
    /// (`write_seq` moved under it): nothing more leaves.
    pub const TAINTED: u8 = 4;
    /// `sock_ops` could not put it in the sockhash (full, a ULP, a writer
    /// already waiting): its payload never leaves.
    pub const REFUSED: u8 = 8;
}

/// Where the request programs read a TCP socket's state, resolved by the
/// agent from the kernel's BTF (as [`crate::Offsets`]), each from the start
/// of `struct sock` (a `tcp_sock` starts with it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestOffsets {
    /// [`RequestOffsets::VALID`] once written.
    pub valid: u32,
    /// `tcp_sock.write_seq`: one past the last byte queued.
    pub tcp_write_seq: u32,
    /// `sock.sk_wmem_queued`.
    pub sk_wmem_queued: u32,
    /// `sock.sk_sndbuf`.
    pub sk_sndbuf: u32,
    /// `sock.sk_write_pending`: writers waiting for the connect.
    pub sk_write_pending: u32,
    /// `inet_connection_sock.icsk_ulp_ops`: MPTCP subflows, kTLS.
    pub icsk_ulp_ops: u32,
    /// `tcp_sock.fastopen_req`: `sendto(MSG_FASTOPEN)`'s data.
    pub tcp_fastopen_req: u32,
    /// The byte of `tcp_sock` holding the one-bit `repair` (`TCP_REPAIR`),
    /// and its mask there.
    pub tcp_repair: u32,
    pub tcp_repair_mask: u32,
    /// The same for `fastopen_connect` (`TCP_FASTOPEN_CONNECT`).
    pub tcp_fastopen_connect: u32,
    pub tcp_fastopen_connect_mask: u32,
    /// `tcp_sock.notsent_lowat` (`TCP_NOTSENT_LOWAT`; 0: the namespace's).
    pub tcp_notsent_lowat: u32,
    /// `net.ipv4.sysctl_tcp_notsent_lowat`, from the start of `struct net`
    /// (reached through [`crate::Offsets::sock_net`]).
    pub net_tcp_notsent_lowat: u32,
    /// `tcp_sock.snd_una`: the first byte the peer has not acknowledged.
    pub tcp_snd_una: u32,
}
const _: () = assert!(size_of::<RequestOffsets>() == 56);

impl RequestOffsets {
    /// The value of [`RequestOffsets::valid`] once resolved.
    pub const VALID: u32 = 0x2e9_0ff5;
    /// Nothing resolved: the request programs refuse everything.
    pub const UNSET: Self = Self {
        valid: 0,
        tcp_write_seq: 0,
        sk_wmem_queued: 0,
        sk_sndbuf: 0,
        sk_write_pending: 0,
        icsk_ulp_ops: 0,
        tcp_fastopen_req: 0,
        tcp_repair: 0,
        tcp_repair_mask: 0,
        tcp_fastopen_connect: 0,
        tcp_fastopen_connect_mask: 0,
        tcp_notsent_lowat: 0,
        net_tcp_notsent_lowat: 0,
        tcp_snd_una: 0,
    };
}

/// What a rule or a default says.
pub mod action {
    /// No rule: the slot of a generation whose policy does not name the id.
    pub const NONE: u32 = 0;
    /// Let the connection through.
    pub const ALLOW: u32 = 1;
    /// Reject the connection with EPERM.
    pub const DENY: u32 = 2;
    /// Let the connection through when the caller is on the host (its pid,
    /// network and user namespaces are the agent's); otherwise no rule
    /// matched, and the record says why (`reason::HOST_ONLY`).
    pub const ALLOW_ON_HOST: u32 = 3;
}

/// Enforcement mode. A zeroed [`Config`] (the agent has not written it
/// yet) has neither, and the programs deny protected destinations with it:
/// they fail closed.
pub mod mode {
    /// Denied connections fail with EPERM.
    pub const ENFORCE: u32 = 1;
    /// Denied connections go through and are recorded as audited.
    pub const AUDIT: u32 = 2;
}

/// The rule stored for one uid or gid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdRule {
    /// [`action::ALLOW`] or [`action::DENY`].
    pub action: u32,
    /// The number (1-based) of the policy entry that produced this rule;
    /// 0 for none.
    pub entry: u32,
}
const _: () = assert!(size_of::<IdRule>() == 8);

/// The value of [`crate::MAP_UID_RULES`] and [`crate::MAP_GID_RULES`], keyed
/// by the id itself: its rule in each generation ([`action::NONE`] where
/// that generation's policy does not name it). A reload writes one slot and
/// only the ids whose rule there changes; the other slot, the one in force,
/// is written back as it was, and a hash map update replaces a value whole,
/// so no reader sees a mix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdRules {
    pub by_generation: [IdRule; GENERATIONS as usize],
}
const _: () = assert!(size_of::<IdRules>() == 16);

/// A user's membership in a denied group, for one generation: the lowest
/// denied gid it is a member of in the group database (its primary group
/// in passwd, or a group that lists it), and the number (1-based) of the
/// policy entry that denies that gid; entry 0 for none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub gid: u32,
    pub entry: u32,
}
const _: () = assert!(size_of::<Membership>() == 8);

/// The value of [`crate::MAP_MEMBERS`], keyed by uid: its [`Membership`]
/// in each generation, written as [`IdRules`] are (one slot per reload,
/// only the uids whose slot changes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memberships {
    pub by_generation: [Membership; GENERATIONS as usize],
}
const _: () = assert!(size_of::<Memberships>() == 16);

/// One generation's run-time switches, in [`crate::MAP_CONFIG`]. The
/// programs read `mode`, `default_action`, `flags` and `epoch`; the rest
/// records what is in force, so that `imds-guard status` reads it from the
/// kernel rather than trusting a file.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// One of [`mode`].
    pub mode: u32,
    /// The [`action`] for identities no rule names.
    pub default_action: u32,
    /// SHA-256 of the resolved policy.
    pub digest: [u8; 32],
    /// When this generation was written (Unix seconds).
    pub applied_unix: u64,
    /// When the programs were first attached (Unix seconds).
    pub attached_unix: u64,
    /// The agent that wrote it.
    pub agent_pid: u32,
    /// [`config_flags`]: what `status` should know of this generation.
    pub flags: u32,
    /// Strictly increasing with every apply (start, reload, fallback) for
    /// the life of the maps, never 0 once written: a socket let through
    /// under another epoch ([`SockState::epoch`]) is judged again on its
    /// next packet. A new agent makes new maps, so it starts again at 1.
    pub epoch: u32,
    /// Reloads the agent has answered since it made these maps, taken or
    /// refused (the programs do not read it): `imds-guard reload` sends
    /// SIGHUP and waits for it to move, then reads the answer
    /// ([`config_flags::RELOAD_REFUSED`], the epoch).
    pub answered: u32,
}

/// Bits of [`Config::flags`].
pub mod config_flags {
    /// The agent's built-in (or `--fallback`) policy is in force because
    /// the configured one could not be used.
    pub const FALLBACK: u32 = 1;
    /// Allowed decisions are events too (the agent logs them at debug
    /// level); otherwise only their counter counts them.
    pub const LOG_ALLOWED: u32 = 2;
    /// The last reload was refused (the policy did not validate, or could
    /// not be written): this generation stays in force. For `status`; the
    /// programs do not read it.
    pub const RELOAD_REFUSED: u32 = 4;
    /// Some `[allow]` names did not resolve and are left out (they stay
    /// denied); the agent retries them. For `status`.
    pub const PARTIAL: u32 = 8;
    /// A reload has started and is not answered yet: set on the generation
    /// in force before the policy file is read, gone once the reload is
    /// taken (a new generation) or refused. For `imds-guard reload`, which
    /// must not take the answer of a reload that read the file before it
    /// was asked for one.
    pub const RELOADING: u32 = 16;
    // Bits 8 and up: what a decision must read of the caller (issue 9), so
    // that a policy that does not need it costs nothing.
    /// The policy has a gid rule: read the caller's supplementary groups.
    pub const SCAN_GROUPS: u32 = 1 << 8;
    /// The policy has a uid or a gid deny rule: walk the user namespaces
    /// the caller is in, looking up each one's creator (its uid rule, its
    /// memberships in denied groups) and the gid it was created with.
    pub const CHECK_OWNERS: u32 = 1 << 9;
    // Bits 16 and up: the caller's cgroup (units, cgroups, pods).
    /// The policy has unit, cgroup or pod rules: a decision looks the
    /// caller's cgroup up in [`crate::MAP_CGROUP_CLASS`].
    pub const CGROUP_RULES: u32 = 1 << 16;
    /// The policy denies some cgroups: a cgroup without a classification
    /// is denied.
    pub const CGROUP_DENY: u32 = 1 << 17;
}
const _: () = assert!(size_of::<Config>() == 72);
