//! `[forward]`: which forwarded packets to a protected address the guard
//! lets through. By default none: a packet the host forwards (from a
//! container's or a VM's own network namespace, a TUN device, an
//! `AF_PACKET` frame) has no local socket, so no owner the policy could
//! judge, and is dropped. A host that must let some of them through names
//! where they come from: an interface they arrive on, or a source prefix.

use std::{fmt, net::IpAddr};

use super::Location;

/// The forwarded traffic the policy lets through.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Forward {
    /// Interfaces whose forwarded packets may reach protected addresses
    /// (`*` at the end matches any suffix, as nftables' `iifname` does).
    pub interfaces: Vec<Interface>,
    /// Source prefixes whose forwarded packets may reach them.
    pub sources: Vec<Source>,
}

impl Forward {
    /// Whether every forwarded packet to a protected address is dropped.
    pub fn drops_all(&self) -> bool {
        self.interfaces.is_empty() && self.sources.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub at: Location,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub prefix: Prefix,
    pub at: Location,
}

/// An IP prefix, `10.8.0.0/16` or `fd00:1::/64`, with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Linux's `IFNAMSIZ` less the terminating NUL.
const IFNAME_MAX: usize = 15;

/// Checks an interface name as the kernel would (`dev_valid_name`), plus
/// what the nftables rules can carry: no quote or backslash, and a `*`
/// only at the end.
pub(super) fn parse_interface(text: &str) -> Result<String, String> {
    let stem = text.strip_suffix('*').unwrap_or(text);
    if text.is_empty() || text == "*" {
        return Err(format!(
            "{text:?} names no interface (to let every forwarded packet through, list the \
             sources \"0.0.0.0/0\" and \"::/0\")"
        ));
    }
    if text.len() > IFNAME_MAX {
        return Err(format!(
            "{text:?} is {} bytes long, and an interface name has at most {IFNAME_MAX}",
            text.len()
        ));
    }
    if stem == "." || stem == ".." {
        return Err(format!("{text:?} is not a valid interface name"));
    }
    if let Some(bad) = stem.chars().find(|&c| {
        c == '/' || c == ':' || c == '"' || c == '\\' || c == '*' || !c.is_ascii_graphic()
    }) {
        return Err(format!(
            "{text:?} has {bad:?}, which no interface name can have (a `*` only at the end)"
        ));
    }
    Ok(text.to_owned())
}

/// Parses `ADDR/LEN`, refusing host bits, a missing length and the
/// IPv4-mapped form.
pub(super) fn parse_prefix(text: &str) -> Result<Prefix, String> {
    let Some((addr, len)) = text.split_once('/') else {
        return match text.parse::<IpAddr>() {
            Ok(addr) => {
                let full = if addr.is_ipv4() { 32 } else { 128 };
                Err(format!(
                    "{text:?} has no prefix length, expected \"{addr}/{full}\" for that one \
                     address"
                ))
            }
            Err(_) => Err(format!(
                "{text:?} is not a prefix, expected ADDRESS/LENGTH such as \"10.8.0.0/16\""
            )),
        };
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{text:?}: {addr:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u8 = len
        .parse()
        .ok()
        .filter(|&l| l <= max)
        .ok_or_else(|| format!("{text:?}: the length must be a number from 0 to {max}"))?;
    if let IpAddr::V6(v6) = addr {
        if v6.to_ipv4_mapped().is_some() {
            return Err(format!(
                "{text:?} is an IPv4-mapped prefix, expected the IPv4 form"
            ));
        }
    }
    let masked = mask(addr, len);
    if masked != addr {
        return Err(format!(
            "{text:?} has host bits set, expected \"{masked}/{len}\""
        ));
    }
    Ok(Prefix { addr, len })
}

/// `addr` with every bit past `len` cleared.
fn mask(addr: IpAddr, len: u8) -> IpAddr {
    let len = u32::from(len);
    match addr {
        IpAddr::V4(v4) => {
            let keep = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & keep).into())
        }
        IpAddr::V6(v6) => {
            let keep = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & keep).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_checked_for_host_bits_and_length() {
        assert_eq!(
            parse_prefix("10.8.0.0/16").map(|p| p.to_string()),
            Ok("10.8.0.0/16".to_owned())
        );
        assert_eq!(
            parse_prefix("0.0.0.0/0").map(|p| p.to_string()),
            Ok("0.0.0.0/0".to_owned())
        );
        assert_eq!(
            parse_prefix("fd00:1::/64").map(|p| p.to_string()),
            Ok("fd00:1::/64".to_owned())
        );
        assert_eq!(
            parse_prefix("::/0").map(|p| p.to_string()),
            Ok("::/0".to_owned())
        );
        assert_eq!(
            parse_prefix("10.8.0.1/16"),
            Err("\"10.8.0.1/16\" has host bits set, expected \"10.8.0.0/16\"".to_owned())
        );
        assert_eq!(
            parse_prefix("10.8.0.1"),
            Err(
                "\"10.8.0.1\" has no prefix length, expected \"10.8.0.1/32\" for that one address"
                    .to_owned()
            )
        );
        assert!(parse_prefix("10.8.0.0/33").is_err());
        assert!(parse_prefix("::ffff:10.0.0.0/104").is_err());
        assert!(parse_prefix("docker0").is_err());
    }

    #[test]
    fn interface_names_are_checked_as_the_kernel_does() {
        assert_eq!(parse_interface("docker0"), Ok("docker0".to_owned()));
        assert_eq!(parse_interface("br-*"), Ok("br-*".to_owned()));
        assert!(parse_interface("").is_err());
        assert!(parse_interface("*").is_err());
        assert!(parse_interface("a-very-long-interface").is_err());
        assert!(parse_interface("eth0:1").is_err());
        assert!(parse_interface("a*b").is_err());
        assert!(parse_interface("tap\"0").is_err());
        assert!(parse_interface("..").is_err());
    }
}
