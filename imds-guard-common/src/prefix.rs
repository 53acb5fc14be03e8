//! The prefixes that cover every protected address (issue 21): what a
//! program compares a destination with before it looks anything up, so
//! that traffic to an address no prefix covers costs a few loads and
//! compares, no map lookup and no helper call.
//!
//! A slot covers `addr` when `(addr ^ net) & mask == 0`, word by word. A
//! zeroed slot covers every address: the programs' copy is all zeros until
//! the agent writes it, so a program running before then judges every
//! destination (fails closed), never none.

use core::mem::size_of;

/// IPv4 slots: four cover the addresses a preset names (169.254.0.0/16,
/// 168.63.129.16, 100.100.100.200) and one more.
pub const V4_SLOTS: usize = 4;
/// IPv6 slots (fd00::/8, fe80::a9fe:a9fe and two more).
pub const V6_SLOTS: usize = 4;

/// One IPv4 prefix, in network byte order as `user_ip4` holds an address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prefix4 {
    pub net: u32,
    pub mask: u32,
}
const _: () = assert!(size_of::<Prefix4>() == 8);

/// One IPv6 prefix, as four words in the order and byte order of
/// `user_ip6` ([`crate::Ipv6Key`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prefix6 {
    pub net: [u32; 4],
    pub mask: [u32; 4],
}
const _: () = assert!(size_of::<Prefix6>() == 32);

/// The programs' global [`crate::MAP_PREFIXES`]: every protected address
/// of the policies a program may be deciding under is covered by one of
/// its slots (an IPv4-mapped IPv6 address by an IPv4 slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prefixes {
    pub v4: [Prefix4; V4_SLOTS],
    pub v6: [Prefix6; V6_SLOTS],
}
const _: () = assert!(size_of::<Prefixes>() == 160);

impl Prefixes {
    /// Every slot covers every address: what the programs hold until the
    /// agent writes its prefixes.
    pub const ALL: Self = Self {
        v4: [Prefix4 { net: 0, mask: 0 }; V4_SLOTS],
        v6: [Prefix6 {
            net: [0; 4],
            mask: [0; 4],
        }; V6_SLOTS],
    };
}

impl Prefix4 {
    /// Whether `addr` (network byte order) is in this prefix.
    #[inline(always)]
    pub const fn covers(&self, addr: u32) -> bool {
        (addr ^ self.net) & self.mask == 0
    }
}

impl Prefix6 {
    /// Whether `addr` (the words of `user_ip6`) is in this prefix.
    #[inline(always)]
    pub const fn covers(&self, addr: &[u32; 4]) -> bool {
        let mut i = 0;
        while i < 4 {
            if (addr[i] ^ self.net[i]) & self.mask[i] != 0 {
                return false;
            }
            i += 1;
        }
        true
    }
}
