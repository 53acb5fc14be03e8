//! What `[endpoints] addresses` accepts: one unicast IP address per
//! string, bare (every port, every protocol) or with one port and
//! optionally its protocol: `169.254.170.2:80`, `[fd00:ec2::23]:80`,
//! `168.63.129.16:32526/tcp`. The kernel programs match a destination
//! address exactly, so anything that looks like more (a CIDR range, a host
//! name) is refused with a message that says what it was taken for, rather
//! than being half-honoured.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{DEFAULT_ADDRESSES, Endpoint, Port, Protocol};

/// [`DEFAULT_ADDRESSES`] as addresses (a test checks they agree).
const DEFAULTS: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

/// The endpoints of a policy that does not list any.
pub(super) fn default_endpoints() -> Vec<Endpoint> {
    DEFAULTS
        .iter()
        .map(|&addr| Endpoint {
            addr,
            port: None,
            at: None,
        })
        .collect()
}

/// The defaults as a policy file would spell them, for messages.
pub(super) fn defaults_spelled() -> String {
    DEFAULT_ADDRESSES.join(" and ")
}

/// Parses one entry of `addresses`: an address, and the port it names if
/// any. The error names the value and says what is expected, without the
/// `[endpoints] addresses:` context.
pub(super) fn parse_endpoint(text: &str) -> Result<(IpAddr, Option<Port>), String> {
    let (rest, protocol) = match text.rsplit_once('/') {
        Some((rest, "tcp")) => (rest, Some(Protocol::Tcp)),
        Some((rest, "udp")) => (rest, Some(Protocol::Udp)),
        _ => (text, None),
    };
    if let Ok(socket) = rest.parse::<SocketAddr>() {
        if socket.port() == 0 {
            return Err(format!(
                "{text:?} names port 0, expected a port from 1 to 65535"
            ));
        }
        if let SocketAddr::V6(v6) = socket {
            if v6.scope_id() != 0 || v6.flowinfo() != 0 {
                return Err(format!(
                    "{text:?} has a scope, expected \"[{}]:{}\"",
                    v6.ip(),
                    v6.port()
                ));
            }
        }
        let addr = check_unicast(text, socket.ip())?;
        let port = Port {
            number: socket.port(),
            protocol: protocol.unwrap_or(Protocol::Both),
        };
        return Ok((addr, Some(port)));
    }
    if protocol.is_some() && rest.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "{text:?} names a protocol without a port, expected \"{rest}\" (every port, \
             TCP and UDP) or a port as in \"{}/{}\"",
            with_port(rest, 80),
            &text[rest.len() + 1..]
        ));
    }
    Ok((parse(text)?, None))
}

/// `addr` with `port`, bracketed when it is IPv6.
fn with_port(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// Parses a bare address. The error names the value and says what is
/// expected.
pub(super) fn parse(text: &str) -> Result<IpAddr, String> {
    let Ok(addr) = text.parse::<IpAddr>() else {
        return Err(explain_malformed(text));
    };
    check_unicast(text, addr)
}

/// `addr` (written as `text`), if it can be a metadata service's.
fn check_unicast(text: &str, addr: IpAddr) -> Result<IpAddr, String> {
    if addr.is_unspecified() {
        return Err(format!(
            "{text:?} is the unspecified address, expected a unicast address"
        ));
    }
    if addr.is_multicast() {
        return Err(format!(
            "{text:?} is a multicast address, expected a unicast address"
        ));
    }
    if addr == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return Err(format!(
            "{text:?} is the broadcast address, expected a unicast address"
        ));
    }
    if let IpAddr::V6(v6) = addr {
        if let Some(v4) = v6.to_ipv4_mapped() {
            // Every IPv4 endpoint also covers its mapped form (a dual-stack
            // socket reaches 169.254.169.254 as ::ffff:169.254.169.254; see
            // `Policy::protects`), so this would only be a second spelling.
            return Err(format!(
                "{text:?} is an IPv4-mapped IPv6 address, expected the IPv4 form \"{v4}\" \
                 (mapped forms are protected automatically)"
            ));
        }
    }
    Ok(addr)
}

/// Says what a string that is not an IP address looks like instead.
fn explain_malformed(text: &str) -> String {
    let trimmed = text.trim();
    if trimmed != text && trimmed.parse::<IpAddr>().is_ok() {
        return format!("{text:?} has surrounding whitespace, expected \"{trimmed}\"");
    }
    if let Some((addr, prefix)) = text.split_once('/') {
        if addr.parse::<IpAddr>().is_ok() {
            return format!(
                "{text:?} is a CIDR range, expected a single address without \"/{prefix}\" \
                 (list each address to protect)"
            );
        }
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        if inner.parse::<IpAddr>().is_ok() {
            return format!("{text:?} has brackets, expected the bare address \"{inner}\"");
        }
    }
    if is_host_name(text) {
        return format!("{text:?} is a host name, expected an IP address (names are not resolved)");
    }
    format!("{text:?} is not an IP address, expected an IPv4 or IPv6 address")
}

/// Whether `text` reads as a DNS name (letters, digits, '-' and '.', with
/// at least one letter so `1.2.3` stays "not an IP address").
fn is_host_name(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && text.chars().any(|c| c.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> String {
        match parse_endpoint(text) {
            Ok(addr) => panic!("{text:?} was accepted as {addr:?}"),
            Err(message) => message,
        }
    }

    #[test]
    fn defaults_agree_with_the_documented_strings() {
        let parsed: Vec<IpAddr> = DEFAULT_ADDRESSES
            .iter()
            .map(|s| parse(s).unwrap_or_else(|e| panic!("default {s}: {e}")))
            .collect();
        assert_eq!(parsed, DEFAULTS);
        assert_eq!(defaults_spelled(), "169.254.169.254 and fd00:ec2::254");
    }

    #[test]
    fn accepts_bare_unicast_addresses() {
        for (text, expected) in [
            ("169.254.169.254", "169.254.169.254"),
            ("fd00:ec2::254", "fd00:ec2::254"),
            ("fd00:ec2:0::254", "fd00:ec2::254"),
            ("FD00:EC2::254", "fd00:ec2::254"),
            ("127.0.0.1", "127.0.0.1"),
        ] {
            let addr = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(addr.to_string(), expected);
        }
    }

    #[test]
    fn accepts_an_address_with_a_port_and_a_protocol() {
        for (text, addr, port, protocol) in [
            ("169.254.170.2:80", "169.254.170.2", 80, Protocol::Both),
            ("169.254.170.2:80/tcp", "169.254.170.2", 80, Protocol::Tcp),
            ("[fd00:ec2::23]:80/udp", "fd00:ec2::23", 80, Protocol::Udp),
            (
                "168.63.129.16:32526",
                "168.63.129.16",
                32526,
                Protocol::Both,
            ),
        ] {
            let (a, p) = parse_endpoint(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(a.to_string(), addr, "{text}");
            assert_eq!(
                p,
                Some(Port {
                    number: port,
                    protocol
                }),
                "{text}"
            );
            let e = Endpoint {
                addr: a,
                port: p,
                at: None,
            };
            assert_eq!(e.to_string(), text, "spelled back");
        }
        assert_eq!(
            parse_endpoint("169.254.169.254"),
            Ok(("169.254.169.254".parse().unwrap(), None))
        );
    }

    #[test]
    fn refuses_what_is_not_a_bare_address_and_says_what_it_is() {
        let cases = [
            (
                "169.254.169.254/32",
                "\"169.254.169.254/32\" is a CIDR range, expected a single address without \
                 \"/32\" (list each address to protect)",
            ),
            (
                "169.254.169.254/tcp",
                "\"169.254.169.254/tcp\" names a protocol without a port, expected \
                 \"169.254.169.254\" (every port, TCP and UDP) or a port as in \
                 \"169.254.169.254:80/tcp\"",
            ),
            (
                "169.254.169.254:0",
                "\"169.254.169.254:0\" names port 0, expected a port from 1 to 65535",
            ),
            (
                "169.254.169.254:80/sctp",
                "\"169.254.169.254:80/sctp\" is not an IP address, expected an IPv4 or IPv6 address",
            ),
            (
                "[fd00:ec2::254]",
                "\"[fd00:ec2::254]\" has brackets, expected the bare address \"fd00:ec2::254\"",
            ),
            (
                "metadata.google.internal",
                "\"metadata.google.internal\" is a host name, expected an IP address \
                 (names are not resolved)",
            ),
            (
                " 169.254.169.254",
                "\" 169.254.169.254\" has surrounding whitespace, expected \"169.254.169.254\"",
            ),
            (
                "169.254.169",
                "\"169.254.169\" is not an IP address, expected an IPv4 or IPv6 address",
            ),
            (
                "",
                "\"\" is not an IP address, expected an IPv4 or IPv6 address",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(refused(text), expected, "for {text:?}");
        }
    }

    #[test]
    fn refuses_addresses_that_cannot_be_a_metadata_service() {
        let cases = [
            (
                "0.0.0.0",
                "\"0.0.0.0\" is the unspecified address, expected a unicast address",
            ),
            (
                "::",
                "\"::\" is the unspecified address, expected a unicast address",
            ),
            (
                "224.0.0.1",
                "\"224.0.0.1\" is a multicast address, expected a unicast address",
            ),
            (
                "ff02::1",
                "\"ff02::1\" is a multicast address, expected a unicast address",
            ),
            (
                "255.255.255.255",
                "\"255.255.255.255\" is the broadcast address, expected a unicast address",
            ),
            (
                "::ffff:169.254.169.254",
                "\"::ffff:169.254.169.254\" is an IPv4-mapped IPv6 address, expected the IPv4 \
                 form \"169.254.169.254\" (mapped forms are protected automatically)",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(refused(text), expected, "for {text:?}");
        }
    }
}
