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
    /// [`MAX_GROUPS`] of the programs that were loaded.
    pub max_groups: u32,
}
const _: () = assert!(size_of::<Resolved>() == 128);
