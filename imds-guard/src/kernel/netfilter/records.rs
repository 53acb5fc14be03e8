//! The forward program's records (`imds_guard_common::ForwardEvent`), as
//! the agent reads them from its ring buffer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use imds_guard_common::{ForwardEvent, forward_verdict, fragment, nfproto};

/// A forwarded packet to a protected address the program dropped (or
/// audited).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    pub ifindex: u32,
    /// The interface's name as the kernel had it (printable as it is:
    /// `dev_valid_name` allows no control byte, but it is escaped where it
    /// is printed all the same).
    pub interface: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub port: u16,
    /// A fragment after the first (no port to read).
    pub later_fragment: bool,
    pub audited: bool,
    /// Packets of this source the program did not record since its last
    /// record.
    pub suppressed: u32,
}

impl Dropped {
    /// `None` for bytes that are no record (a short read, an unknown
    /// family).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<ForwardEvent>() {
            return None;
        }
        // SAFETY: at least `size_of::<ForwardEvent>()` bytes, read
        // unaligned; every bit pattern is a valid `ForwardEvent`.
        let r: ForwardEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let addr = |a: [u8; 16]| match r.family {
            nfproto::IPV4 => Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
            nfproto::IPV6 => Some(IpAddr::V6(Ipv6Addr::from(a))),
            _ => None,
        };
        let name_len = r
            .ifname
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(r.ifname.len());
        Some(Self {
            ifindex: r.ifindex,
            interface: String::from_utf8_lossy(&r.ifname[..name_len]).into_owned(),
            src: addr(r.src)?,
            dst: addr(r.dst)?,
            proto: r.proto,
            port: r.port,
            later_fragment: r.fragment == fragment::LATER,
            audited: r.verdict == forward_verdict::AUDITED,
            suppressed: r.suppressed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back() {
        let mut e = ForwardEvent {
            family: nfproto::IPV4,
            proto: 6,
            ifindex: 7,
            port: 80,
            suppressed: 3,
            ..ForwardEvent::default()
        };
        e.src[..4].copy_from_slice(&[10, 88, 1, 2]);
        e.dst[..4].copy_from_slice(&[169, 254, 169, 254]);
        e.ifname[..4].copy_from_slice(b"ctr1");
        // SAFETY: a plain `#[repr(C)]` value viewed as its bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const e).cast::<u8>(), size_of::<ForwardEvent>())
        };
        let d = Dropped::decode(bytes).expect("a record");
        assert_eq!(d.interface, "ctr1");
        assert_eq!(d.src, IpAddr::from([10, 88, 1, 2]));
        assert_eq!(
            (d.proto, d.port, d.suppressed, d.audited),
            (6, 80, 3, false)
        );
        assert!(Dropped::decode(&bytes[..10]).is_none());
    }
}
