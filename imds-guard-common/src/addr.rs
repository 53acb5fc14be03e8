//! Addresses as the programs see them.

/// An IPv6 address as four 32-bit words in the order and byte order of
/// `bpf_sock_addr.user_ip6`.
pub type Ipv6Key = [u32; 4];
