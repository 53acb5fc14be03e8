//! The agent's own nftables table (`flags owner`, `NFT_TABLE_F_OWNER`,
//! Linux 5.12), where the netfilter program is missing: written over the
//! agent's own nf_tables netlink socket, so that the kernel ties the table
//! to it. `nft flush ruleset` skips an owned table, and every other writer
//! (`nft delete table`, `flush table`, `add rule`) gets `EPERM`; when the
//! socket closes (the agent exits or is killed), the kernel deletes it.
//! The unowned copy (`mod.rs`) holds after that.
//!
//! Why a socket of our own rather than a long-lived `nft -i` child: the
//! owner is then the agent itself, so the table lives exactly as long as
//! the agent (no helper process to watch, restart, or outlive); every
//! message of a transaction is acknowledged with the kernel's own errno
//! (an interactive `nft` on a pipe says nothing a program can wait on);
//! and what matters is the kernel's support, not the `nft` binary's
//! (Debian 11's nft 0.9.8 has no `flags owner`).
//!
//! The chain only drops: it hooks at `forward` priority -299, just after
//! the unowned copy (-300), which logs and counts what it drops. While the
//! copy is in force nothing reaches this chain; when a foreign flush has
//! removed it, this one drops until the agent puts it back. In audit mode
//! it has no rule (audit drops nothing).

use std::{io, net::IpAddr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, NLMSG_ERROR, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterProtoFamily,
    nftables::{
        Bitwise, ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute,
        Expressions, Hook, Immediate, InetHookNumber, ListAttribute, Meta, MetaKey,
        NfTablesMessage, Operator, Payload, Register, RuleAttribute, RuleMessage, TableAttribute,
        TableFlags, TableMessage, Verdict, VerdictAttribute,
    },
    none::ControlMessage,
};
use netlink_sys::{Socket, SocketAddr, constants::NETLINK_NETFILTER};

use crate::policy::{Mode, PolicySpec, Port, Protocol, forward::Prefix};

/// The owned table's name, beside the unowned copy's.
pub const OWNED_TABLE: &str = "imds_guard_forward_owned";
/// Its chain's priority: just after the unowned copy's.
const PRIORITY: i32 = -299;
/// `NFNL_SUBSYS_NFTABLES`, the resource id of a batch's delimiters.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFT_PAYLOAD_NETWORK_HEADER` and `NFT_PAYLOAD_TRANSPORT_HEADER`.
const NETWORK_HEADER: u32 = 1;
const TRANSPORT_HEADER: u32 = 2;
/// `IPPROTO_TCP` and `IPPROTO_UDP`.
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// `NF_DROP` and `NF_ACCEPT` as verdict codes.
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
/// `NFPROTO_IPV4` and `NFPROTO_IPV6`, as `meta nfproto` loads them.
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

/// The owned table could not be put in force.
#[derive(Debug, thiserror::Error)]
pub enum OwnedError {
    #[error("cannot talk to nf_tables over netlink")]
    Socket(#[source] io::Error),
    /// The kernel has no `NFT_TABLE_F_OWNER` (before 5.12).
    #[error("this kernel cannot give a table an owner (NFT_TABLE_F_OWNER, Linux 5.12)")]
    Unsupported,
    #[error("nf_tables refused the owned forward table (message {index} of {count})")]
    Refused {
        index: usize,
        count: usize,
        #[source]
        source: io::Error,
    },
}

/// The agent's socket to nf_tables, owner of [`OWNED_TABLE`] once
/// [`OwnedTable::put`] wrote it.
pub struct OwnedTable {
    socket: Socket,
    sequence: u32,
}

impl OwnedTable {
    pub fn open() -> Result<Self, OwnedError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(OwnedError::Socket)?;
        socket.bind_auto().map_err(OwnedError::Socket)?;
        Ok(Self {
            socket,
            sequence: 1,
        })
    }

    /// Puts the owned table for `spec` in force, replacing the one this
    /// socket wrote before in the same transaction: no moment without it.
    pub fn put(&mut self, spec: &PolicySpec) -> Result<(), OwnedError> {
        let mut messages = vec![
            // Created if missing, so that the delete below finds it.
            nft(NfTablesMessage::NewTable(table(true)), NLM_F_CREATE),
            nft(NfTablesMessage::DeleteTable(table(false)), 0),
            nft(NfTablesMessage::NewTable(table(true)), NLM_F_CREATE),
            nft(NfTablesMessage::NewChain(chain()), NLM_F_CREATE),
        ];
        for expressions in rules(spec) {
            // Appended: without NLM_F_APPEND a rule goes first in its chain.
            messages.push(nft(
                NfTablesMessage::NewRule(rule(expressions)),
                NLM_F_CREATE | NLM_F_APPEND,
            ));
        }
        self.send(messages)
    }

    /// Sends `messages` as one transaction and waits for each one's
    /// acknowledgement: the kernel applies all or none.
    fn send(&mut self, messages: Vec<NetlinkMessage<NetfilterMessage>>) -> Result<(), OwnedError> {
        let count = messages.len();
        let first = self.sequence;
        let mut batch = Vec::new();
        let delimiter = |message: ControlMessage, sequence: u32| {
            let header =
                NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES);
            let mut m = NetlinkMessage::new(
                request(0, sequence),
                NetlinkPayload::InnerMessage(NetfilterMessage::new(header, message)),
            );
            m.header.flags = NLM_F_REQUEST;
            m
        };
        append(&mut batch, delimiter(ControlMessage::BatchBegin, first));
        for (i, mut m) in messages.into_iter().enumerate() {
            m.header.sequence_number = first + 1 + i as u32;
            append(&mut batch, m);
        }
        append(
            &mut batch,
            delimiter(ControlMessage::BatchEnd, first + count as u32 + 1),
        );
        self.sequence = first + count as u32 + 2;
        self.socket
            .send_to(&batch, &SocketAddr::new(0, 0), 0)
            .map_err(OwnedError::Socket)?;
        self.acknowledged(first + 1, count)
    }

    /// Reads the acknowledgement of each of `count` messages numbered from
    /// `first`; the first refusal's errno, by the message it refused.
    fn acknowledged(&self, first: u32, count: usize) -> Result<(), OwnedError> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut seen = 0;
        while seen < count {
            let n = self
                .socket
                .recv(&mut &mut buf[..], 0)
                .map_err(OwnedError::Socket)?
                .min(buf.len());
            for (sequence, code) in errors(&buf[..n]) {
                seen += 1;
                if code == 0 {
                    continue;
                }
                let index = sequence.wrapping_sub(first) as usize;
                let source = io::Error::from_raw_os_error(-code);
                // The first message creates the owned table: refused as
                // unsupported by a kernel that knows no owner flag.
                if index == 0 && code == -libc::EOPNOTSUPP {
                    return Err(OwnedError::Unsupported);
                }
                return Err(OwnedError::Refused {
                    index,
                    count,
                    source,
                });
            }
        }
        Ok(())
    }
}

/// The `(sequence, error)` of each `NLMSG_ERROR` in a datagram (0 is an
/// acknowledgement).
fn errors(datagram: &[u8]) -> Vec<(u32, i32)> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while rest.len() >= 20 {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let ty = u16::from_ne_bytes([rest[4], rest[5]]);
        let sequence = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
        if len < 20 || len > rest.len() {
            break;
        }
        if ty == NLMSG_ERROR {
            let code = i32::from_ne_bytes([rest[16], rest[17], rest[18], rest[19]]);
            out.push((sequence, code));
        }
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    out
}

fn request(flags: u16, sequence: u32) -> NetlinkHeader {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = sequence;
    header
}

/// An nf_tables message on the `inet` family, acknowledged.
fn nft(message: NfTablesMessage, flags: u16) -> NetlinkMessage<NetfilterMessage> {
    let header = NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0);
    NetlinkMessage::new(
        request(NLM_F_ACK | flags, 0),
        NetlinkPayload::InnerMessage(NetfilterMessage::new(header, message)),
    )
}

fn append(batch: &mut Vec<u8>, mut message: NetlinkMessage<NetfilterMessage>) {
    message.finalize();
    let at = batch.len();
    batch.resize(at + message.buffer_len(), 0);
    message.serialize(&mut batch[at..]);
}

fn table(owned: bool) -> TableMessage {
    let mut attributes = vec![TableAttribute::Name(OWNED_TABLE.to_owned())];
    if owned {
        attributes.push(TableAttribute::Flags(TableFlags::Owner));
    }
    TableMessage { attributes }
}

fn chain() -> ChainMessage {
    ChainMessage {
        attributes: vec![
            ChainAttribute::Table(OWNED_TABLE.to_owned()),
            ChainAttribute::Name("forward".to_owned()),
            ChainAttribute::Hook(vec![
                Hook::Number(InetHookNumber::Forward.into()),
                Hook::Priority(PRIORITY as u32),
            ]),
            ChainAttribute::Policy(NF_ACCEPT),
            ChainAttribute::Type("filter".to_owned()),
        ],
    }
}

fn rule(expressions: Vec<Expressions>) -> RuleMessage {
    RuleMessage {
        attributes: vec![
            RuleAttribute::Table(OWNED_TABLE.to_owned()),
            RuleAttribute::Chain("forward".to_owned()),
            RuleAttribute::Expressions(
                expressions
                    .into_iter()
                    .map(ListAttribute::<ExpressionAttribute>::from)
                    .collect(),
            ),
        ],
    }
}

/// The chain's rules, each as its expressions: what `[forward]` lets
/// through (accepted here; the copy has its own exceptions), then a drop
/// per protected address (and the IPv4-mapped form of each IPv4 one, as
/// the copy has). None in audit mode.
fn rules(spec: &PolicySpec) -> Vec<Vec<Expressions>> {
    if spec.mode == Mode::Audit {
        return Vec::new();
    }
    let mut rules = Vec::new();
    for i in &spec.forward.interfaces {
        let mut name = i.name.clone().into_bytes();
        if name.last() == Some(&b'*') {
            name.pop();
        } else {
            // The NUL too: the name and nothing longer.
            name.push(0);
        }
        rules.push(vec![
            load_meta(MetaKey::Iifname),
            equal(name),
            verdict(NF_ACCEPT),
        ]);
    }
    for s in &spec.forward.sources {
        rules.push(source(s.prefix));
    }
    for addr in spec.protected_addresses() {
        let forms = match addr {
            IpAddr::V4(a) => vec![
                (NFPROTO_IPV4, a.octets().to_vec()),
                (NFPROTO_IPV6, a.to_ipv6_mapped().octets().to_vec()),
            ],
            IpAddr::V6(a) => vec![(NFPROTO_IPV6, a.octets().to_vec())],
        };
        for (family, a) in forms {
            match spec.ports_of(addr) {
                None => rules.push(to(family, a)),
                Some(ports) => rules.extend(to_ports(family, &a, &ports)),
            }
        }
    }
    rules
}

/// The drops for an address protected on `ports` only, as the netfilter
/// program decides: a packet whose protocol (IPv6: the next header right
/// after the fixed header) is not one it knows, an IPv4 fragment after the
/// first (no port to read), and each protected port.
fn to_ports(family: u8, addr: &[u8], ports: &[Port]) -> Vec<Vec<Expressions>> {
    let (daddr, proto_at) = if family == NFPROTO_IPV4 {
        (16, 9)
    } else {
        (24, 6)
    };
    let base = || {
        vec![
            load_meta(MetaKey::Nfproto),
            equal(vec![family]),
            load_payload(daddr, addr.len() as u32),
            equal(addr.to_vec()),
            load_payload(proto_at, 1),
        ]
    };
    let icmp = if family == NFPROTO_IPV4 { 1 } else { 58 };
    let mut known = vec![icmp, IPPROTO_TCP, IPPROTO_UDP, 132, 136];
    if family == NFPROTO_IPV6 {
        // "No next header".
        known.push(59);
    }
    let mut unknown = base();
    unknown.extend(
        known
            .into_iter()
            .map(|p| compare(Operator::NotEqual, vec![p])),
    );
    unknown.push(verdict(NF_DROP));
    let mut rules = vec![unknown];
    if family == NFPROTO_IPV4 {
        let mut later = base();
        later.pop();
        later.extend([
            load_payload(6, 2),
            Expressions::Bitwise(vec![
                Bitwise::SourceRegister(Register::Reg1),
                Bitwise::DestinationRegister(Register::Reg1),
                Bitwise::Length(2),
                Bitwise::Mask(DataAttribute::Value(vec![0x1f, 0xff])),
                Bitwise::Xor(DataAttribute::Value(vec![0, 0])),
            ]),
            compare(Operator::NotEqual, vec![0, 0]),
            verdict(NF_DROP),
        ]);
        rules.push(later);
    }
    for port in ports {
        for protocol in port.protocol.each() {
            let number = match protocol {
                Protocol::Udp => IPPROTO_UDP,
                _ => IPPROTO_TCP,
            };
            let mut rule = base();
            rule.push(equal(vec![number]));
            // IPv4: the transport header, wherever options end it (a
            // fragment after the first has none, and the rule above drops
            // it); IPv6: right after the fixed header, as the next header
            // checked says.
            rule.push(if family == NFPROTO_IPV4 {
                load(TRANSPORT_HEADER, 2, 2)
            } else {
                load_payload(42, 2)
            });
            rule.push(equal(port.number.to_be_bytes().to_vec()));
            rule.push(verdict(NF_DROP));
            rules.push(rule);
        }
    }
    rules
}

/// `meta nfproto FAMILY DADDR == addr drop`.
fn to(family: u8, addr: Vec<u8>) -> Vec<Expressions> {
    let offset = if family == NFPROTO_IPV4 { 16 } else { 24 };
    vec![
        load_meta(MetaKey::Nfproto),
        equal(vec![family]),
        load_payload(offset, addr.len() as u32),
        equal(addr),
        verdict(NF_DROP),
    ]
}

/// `meta nfproto FAMILY SADDR & mask == network accept`.
fn source(prefix: Prefix) -> Vec<Expressions> {
    let (family, offset, network) = match prefix.addr {
        IpAddr::V4(a) => (NFPROTO_IPV4, 12, a.octets().to_vec()),
        IpAddr::V6(a) => (NFPROTO_IPV6, 8, a.octets().to_vec()),
    };
    let len = network.len();
    let mask: Vec<u8> = (0..len)
        .map(|byte| {
            let bits = usize::from(prefix.len).saturating_sub(byte * 8).min(8);
            if bits == 0 { 0 } else { 0xffu8 << (8 - bits) }
        })
        .collect();
    vec![
        load_meta(MetaKey::Nfproto),
        equal(vec![family]),
        load_payload(offset, len as u32),
        Expressions::Bitwise(vec![
            Bitwise::SourceRegister(Register::Reg1),
            Bitwise::DestinationRegister(Register::Reg1),
            Bitwise::Length(len as u32),
            Bitwise::Mask(DataAttribute::Value(mask)),
            Bitwise::Xor(DataAttribute::Value(vec![0; len])),
        ]),
        equal(network),
        verdict(NF_ACCEPT),
    ]
}

fn load_meta(key: MetaKey) -> Expressions {
    Expressions::Meta(vec![
        Meta::Key(key),
        Meta::DestinationRegister(Register::Reg1),
    ])
}

fn load_payload(offset: u32, len: u32) -> Expressions {
    load(NETWORK_HEADER, offset, len)
}

fn load(base: u32, offset: u32, len: u32) -> Expressions {
    Expressions::Payload(vec![
        Payload::DestinationRegister(Register::Reg1),
        Payload::Base(base),
        Payload::Offset(offset),
        Payload::Len(len),
    ])
}

fn equal(value: Vec<u8>) -> Expressions {
    compare(Operator::Equal, value)
}

fn compare(op: Operator, value: Vec<u8>) -> Expressions {
    Expressions::Cmp(vec![
        Cmp::SourceRegister(Register::Reg1),
        Cmp::Op(op),
        Cmp::Data(DataAttribute::Value(value)),
    ])
}

fn verdict(code: u32) -> Expressions {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Verdict),
        Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(
            Verdict::Other(code),
        )])),
    ])
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn spec(toml: &str) -> PolicySpec {
        PolicySpec::parse(Path::new("p.toml"), toml).expect("valid")
    }

    #[test]
    fn one_drop_per_protected_address_after_the_exceptions() {
        let r = rules(&spec(
            "[allow]\nuids = [0]\n[forward]\nallow_interfaces = [\"br-vm*\", \"tun0\"]\n\
             allow_sources = [\"10.8.0.0/13\"]\n",
        ));
        // Two interfaces, one source, then v4 + its mapped form + v6.
        assert_eq!(r.len(), 2 + 1 + 3);
        assert_eq!(r[0][1], equal(b"br-vm".to_vec()), "a prefix, no NUL");
        assert_eq!(r[1][1], equal(b"tun0\0".to_vec()), "the name and its NUL");
        let Expressions::Bitwise(b) = &r[2][3] else {
            panic!("{:?}", r[2]);
        };
        assert!(b.contains(&Bitwise::Mask(DataAttribute::Value(vec![255, 248, 0, 0]))));
        assert_eq!(r[3][3], equal(vec![169, 254, 169, 254]));
        assert_eq!(r[3][4], verdict(NF_DROP));
        assert_eq!(r[4][1], equal(vec![NFPROTO_IPV6]));
    }

    #[test]
    fn a_port_scoped_address_drops_its_ports_unknown_protocols_and_later_fragments() {
        let r = rules(&spec(
            "[endpoints]\naddresses = [\"169.254.170.2:80/tcp\"]\n[allow]\nuids = [0]\n",
        ));
        // IPv4: unknown protocol, later fragment, 80/tcp; the mapped
        // IPv6 form: unknown next header, 80/tcp.
        assert_eq!(r.len(), 3 + 2, "{r:#?}");
        assert_eq!(r[0][3], equal(vec![169, 254, 170, 2]));
        assert!(r[0].contains(&compare(Operator::NotEqual, vec![IPPROTO_TCP])));
        assert_eq!(r[1][4], load_payload(6, 2));
        assert_eq!(r[2][5], equal(vec![IPPROTO_TCP]));
        assert_eq!(r[2][6], load(TRANSPORT_HEADER, 2, 2));
        assert_eq!(r[2][7], equal(vec![0, 80]));
        assert_eq!(r[2][8], verdict(NF_DROP));
        assert_eq!(r[3][1], equal(vec![NFPROTO_IPV6]));
        assert!(r[3].contains(&compare(Operator::NotEqual, vec![59])));
        assert_eq!(r[4][6], load_payload(42, 2));
    }

    #[test]
    fn audit_mode_drops_nothing() {
        assert!(rules(&spec("mode = \"audit\"\n[allow]\nuids = [0]\n")).is_empty());
    }

    #[test]
    fn acknowledgements_are_read_by_sequence() {
        let mut d = Vec::new();
        for (seq, code) in [(7u32, 0i32), (8, -libc::EPERM)] {
            d.extend_from_slice(&36u32.to_ne_bytes());
            d.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            d.extend_from_slice(&[0, 0]);
            d.extend_from_slice(&seq.to_ne_bytes());
            d.extend_from_slice(&[0; 4]);
            d.extend_from_slice(&code.to_ne_bytes());
            d.extend_from_slice(&[0; 16]);
        }
        assert_eq!(errors(&d), [(7, 0), (8, -libc::EPERM)]);
    }
}
