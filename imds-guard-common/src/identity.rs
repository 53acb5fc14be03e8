//! Who a caller is beyond its uid and primary gid (issue 9): the groups it
//! holds, the owners of its user namespaces, and whether it runs on the
//! host, that is in the agent's own pid, network and user namespaces.
//! The bounds the programs scan within, the agent's namespaces as it hands
//! them to the programs, and the bits a record carries about them.

use core::mem::size_of;

use crate::Offsets;

/// Supplementary groups a decision reads at most. A caller holding more,
/// under a policy with any group rule, is denied (`reason::TOO_MANY_GROUPS`):
/// a group past the bound could be a denied one. 64 keeps the worst case
/// to 64 map lookups per decision, and covers what a login session holds
/// on all but directory-joined hosts (`id -G | wc -w`).
pub const MAX_GROUPS: u32 = 64;

/// User namespaces nest at most 33 deep below the initial one
/// (`create_user_ns` refuses a parent whose level is above 32:
/// kernel/user_namespace.c), so a walk from a caller's namespace up to the
/// initial one meets at most this many owners.
pub const MAX_USERNS_DEPTH: u32 = 33;

/// How far the programs read a caller's groups and user namespaces, which
/// depends on the build of the programs the kernel can load
/// ([`Bounds::LOOP`] or [`Bounds::UNROLLED`]). Past either bound the
/// decision fails closed: more groups than `groups`, under a policy with
/// a group rule, deny (`reason::TOO_MANY_GROUPS`); a chain of user
/// namespaces deeper than `userns_depth` is unreadable, which denies
/// under a policy with a uid or gid deny rule (`reason::UNREADABLE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub groups: u32,
    pub userns_depth: u32,
}

impl Bounds {
    /// With `bpf_loop` (Linux 5.17): the verifier checks each walk's body
    /// once, so the bounds are the kernel's own for user namespaces and
    /// [`MAX_GROUPS`] for groups.
    pub const LOOP: Self = Self {
        groups: MAX_GROUPS,
        userns_depth: MAX_USERNS_DEPTH,
    };
    /// Without it (5.10 to 5.16): loops the verifier walks step by step,
    /// every step of every path, within its million instructions per
    /// program; as much as the largest program (connect6) verifies on
    /// Debian 11's 5.10 with room left.
    pub const UNROLLED: Self = Self {
        groups: 16,
        userns_depth: 8,
    };

    /// The build whose group bound is `groups` (what
    /// `Resolved::max_groups` records), if one is.
    pub const fn from_groups(groups: u32) -> Option<Self> {
        if groups == Self::LOOP.groups {
            Some(Self::LOOP)
        } else if groups == Self::UNROLLED.groups {
            Some(Self::UNROLLED)
        } else {
            None
        }
    }
}

/// Pid namespaces nest at most this deep (`MAX_PID_NS_LEVEL`,
/// include/linux/pid_namespace.h): the bound of `pid.level`.
pub const MAX_PID_NS_LEVEL: u32 = 32;

/// The namespaces the agent runs in, by inode number (`stat
/// /proc/self/ns/{pid,net,user}`, which is `ns_common.inum`): a caller whose
/// namespaces are all these is on the host. Written by the agent into the
/// programs before they load, beside [`Offsets`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostNamespaces {
    /// [`HostNamespaces::VALID`] once the agent wrote the rest: without it
    /// no caller is on the host, and allow-on-host rules match nobody.
    pub valid: u32,
    pub pid: u32,
    pub net: u32,
    pub user: u32,
}
const _: () = assert!(size_of::<HostNamespaces>() == 16);

impl HostNamespaces {
    /// The value of [`HostNamespaces::valid`] when the rest is written.
    pub const VALID: u32 = 0x0005_7a7e;

    /// Nothing written: what a program loaded without the agent's
    /// namespaces holds.
    pub const UNSET: Self = Self {
        valid: 0,
        pid: 0,
        net: 0,
        user: 0,
    };
}

/// What a record says of the caller's namespaces (`Event::namespaces`):
/// which are not the agent's, and which could not be read. A caller is on
/// the host when [`ns::CHECKED`] is set and no other bit is.
pub mod ns {
    /// The pid namespace differs from the agent's.
    pub const PID: u8 = 1;
    /// The socket's network namespace differs.
    pub const NET: u8 = 2;
    /// The user namespace differs.
    pub const USER: u8 = 4;
    /// The pid namespace is unknown: a packet sent by a task other than
    /// the socket's owner (`egress`), or a read that failed.
    pub const PID_UNKNOWN: u8 = 8;
    /// The network namespace is unknown (no socket, or a read failed).
    pub const NET_UNKNOWN: u8 = 16;
    /// The user namespace is unknown (a read failed).
    pub const USER_UNKNOWN: u8 = 32;
    /// The namespaces were read: without it the other bits mean nothing
    /// (no caller to read them of).
    pub const CHECKED: u8 = 128;
    /// Every bit that keeps a caller off the host.
    pub const NOT_HOST: u8 = PID | NET | USER | PID_UNKNOWN | NET_UNKNOWN | USER_UNKNOWN;
}

/// What the agent resolved and handed to the programs, kept in
/// [`crate::MAP_RESOLVED`] (the programs never read it) so that
/// `imds-guard status` can report it from the kernel after the agent is
/// gone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    pub offsets: Offsets,
    pub host: HostNamespaces,
    /// [`Bounds::groups`] of the programs that were loaded, which also
    /// tells which build they are ([`Bounds::from_groups`]).
    pub max_groups: u32,
}
const _: () = assert!(size_of::<Resolved>() == 128);
