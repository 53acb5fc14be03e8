//! What a probe does and what it reports: the contract between the
//! [`Probe`](crate::Probe) runner and the `imds-probe` binary, kept in one
//! place so the command line and the JSON line cannot drift apart.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
};

use serde::{Deserialize, Serialize};

use crate::{Attack, Evasion, Script, Trick};

/// One network action of a probe. Each is a single, distinct way for a
/// process to reach an address, so each exercises one kernel hook path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The IMDSv2 flow over TCP: `PUT` a token, `GET` `meta-data/`, list the
    /// role, `GET` its credentials. The body is the credentials document.
    Http(SocketAddr),
    /// The IMDSv2 flow with every request on one connection kept alive
    /// (`Connection: keep-alive`). `imds-probe` connects once and runs the
    /// flow on that connection each time it reads a line on stdin, printing
    /// one result each, until end of file ([`Probe::hold`](crate::Probe::hold)).
    HttpKeepAlive(SocketAddr),
    /// A TCP `connect()` only.
    Connect(SocketAddr),
    /// A TCP `connect()` from an `AF_INET6` socket to `::ffff:<v4>`: the
    /// kernel runs the connect6 hook with the mapped address and then
    /// connects over IPv4, so a guard that only checks connect4 misses it.
    ConnectMapped(SocketAddrV4),
    /// One datagram with `sendto()` on an unconnected UDP socket (the
    /// sendmsg4/sendmsg6 hooks).
    UdpSend(SocketAddr),
    /// One datagram with `sendto()` from an `AF_INET6` UDP socket to
    /// `::ffff:<v4>`.
    UdpSendMapped(SocketAddrV4),
    /// `connect()` on a UDP socket (the connect hooks), then one datagram
    /// with `send()`, which the sendmsg hooks do not see because the socket
    /// is connected.
    UdpConnect(SocketAddr),
    /// TCP Fast Open: `sendto(MSG_FASTOPEN)` of an IMDSv2 token request, so
    /// the connect happens inside sendmsg. The body is the token.
    Tfo(SocketAddr),
    /// One of the packet-path attacks (see [`Attack`]).
    Attack(Attack),
    /// A [`Script`] of requests on one connection (`send ADDR PORT NAME`).
    Send(SocketAddr, Script),
    /// A [`Trick`] against request-level judgement (`trick ADDR PORT NAME`).
    Trick(SocketAddr, Trick),
    /// An [`Evasion`] of request judgement on one connection (`evade ADDR
    /// PORT NAME`).
    Evade(SocketAddr, Evasion),
    /// A local service on the address, as an IMDS emulator on a host where
    /// the address is local: `imds-probe` listens, reports once, and
    /// answers every connection with an HTTP 200 until stdin ends
    /// ([`Probe::serve`](crate::Probe::serve)).
    Listen(SocketAddr),
}

impl Action {
    pub fn http(ip: impl Into<IpAddr>, port: u16) -> Self {
        Action::Http(SocketAddr::new(ip.into(), port))
    }
    pub fn http_keep_alive(ip: impl Into<IpAddr>, port: u16) -> Self {
        Action::HttpKeepAlive(SocketAddr::new(ip.into(), port))
    }
    pub fn connect(ip: impl Into<IpAddr>, port: u16) -> Self {
        Action::Connect(SocketAddr::new(ip.into(), port))
    }
    pub fn connect_mapped(ip: Ipv4Addr, port: u16) -> Self {
        Action::ConnectMapped(SocketAddrV4::new(ip, port))
    }
    pub fn udp_send(ip: impl Into<IpAddr>, port: u16) -> Self {
        Action::UdpSend(SocketAddr::new(ip.into(), port))
    }
    pub fn udp_send_mapped(ip: Ipv4Addr, port: u16) -> Self {
        Action::UdpSendMapped(SocketAddrV4::new(ip, port))
    }
    pub fn udp_connect(ip: impl Into<IpAddr>, port: u16) -> Self {
        Action::UdpConnect(SocketAddr::new(ip.into(), port))
    }
    pub fn tfo(ip: impl Into<IpAddr>, port: u16) -> Self {
        Action::Tfo(SocketAddr::new(ip.into(), port))
    }
    pub fn attack(attack: Attack) -> Self {
        Action::Attack(attack)
    }

    /// The command-line verb.
    pub fn verb(&self) -> &'static str {
        match self {
            Action::Http(_) => "http",
            Action::HttpKeepAlive(_) => "http-keepalive",
            Action::Connect(_) => "connect",
            Action::ConnectMapped(_) => "connect-mapped",
            Action::UdpSend(_) => "udp-send",
            Action::UdpSendMapped(_) => "udp-send-mapped",
            Action::UdpConnect(_) => "udp-connect",
            Action::Tfo(_) => "tfo",
            Action::Attack(a) => a.verb(),
            Action::Send(..) => "send",
            Action::Trick(..) => "trick",
            Action::Evade(..) => "evade",
            Action::Listen(_) => "listen",
        }
    }

    /// The address the action names on its command line (for the mapped
    /// actions the IPv4 address, not the `::ffff:` form the socket uses).
    pub fn addr(&self) -> SocketAddr {
        match *self {
            Action::Http(a)
            | Action::HttpKeepAlive(a)
            | Action::Connect(a)
            | Action::UdpSend(a)
            | Action::UdpConnect(a)
            | Action::Tfo(a)
            | Action::Send(a, _)
            | Action::Trick(a, _)
            | Action::Evade(a, _)
            | Action::Listen(a) => a,
            Action::ConnectMapped(a) | Action::UdpSendMapped(a) => SocketAddr::V4(a),
            Action::Attack(a) => a.addr(),
        }
    }

    /// `VERB ADDR PORT`, as `imds-probe` takes it, then what an attack
    /// needs besides.
    pub fn to_args(&self) -> Vec<String> {
        let addr = self.addr();
        let mut args = vec![
            self.verb().to_owned(),
            addr.ip().to_string(),
            addr.port().to_string(),
        ];
        if let Action::Attack(a) = self {
            args.extend(a.extra_args());
        }
        if let Action::Send(_, script) = self {
            args.push(script.name().to_owned());
        }
        if let Action::Trick(_, trick) = self {
            args.push(trick.name().to_owned());
        }
        if let Action::Evade(_, evasion) = self {
            args.push(evasion.name());
        }
        args
    }

    /// Parses `VERB ADDR PORT [EXTRA...]`.
    pub fn from_args(args: &[String]) -> Result<Self, String> {
        let [verb, ip, port, extra @ ..] = args else {
            return Err(format!("expected ACTION ADDR PORT, got {args:?}"));
        };
        let ip: IpAddr = ip.parse().map_err(|e| format!("address {ip:?}: {e}"))?;
        let port: u16 = port.parse().map_err(|e| format!("port {port:?}: {e}"))?;
        if Attack::is_verb(verb) {
            return Attack::from_args(verb, SocketAddr::new(ip, port), extra).map(Action::Attack);
        }
        if verb == "send" {
            let [name] = extra else {
                return Err(format!("send takes ADDR PORT SCRIPT, got {args:?}"));
            };
            let script =
                Script::from_name(name).ok_or_else(|| format!("unknown script {name:?}"))?;
            return Ok(Action::Send(SocketAddr::new(ip, port), script));
        }
        if verb == "trick" {
            let [name] = extra else {
                return Err(format!("trick takes ADDR PORT NAME, got {args:?}"));
            };
            let trick = Trick::from_name(name).ok_or_else(|| format!("unknown trick {name:?}"))?;
            return Ok(Action::Trick(SocketAddr::new(ip, port), trick));
        }
        if verb == "evade" {
            let [name] = extra else {
                return Err(format!("evade takes ADDR PORT EVASION, got {args:?}"));
            };
            let evasion =
                Evasion::from_name(name).ok_or_else(|| format!("unknown evasion {name:?}"))?;
            return Ok(Action::Evade(SocketAddr::new(ip, port), evasion));
        }
        if !extra.is_empty() {
            return Err(format!("{verb} takes ADDR PORT only, got {args:?}"));
        }
        let v4 = || match ip {
            IpAddr::V4(v4) => Ok(v4),
            IpAddr::V6(_) => Err(format!("{verb} takes an IPv4 address, got {ip}")),
        };
        Ok(match verb.as_str() {
            "http" => Action::http(ip, port),
            "http-keepalive" => Action::http_keep_alive(ip, port),
            "connect" => Action::connect(ip, port),
            "connect-mapped" => Action::connect_mapped(v4()?, port),
            "udp-send" => Action::udp_send(ip, port),
            "udp-send-mapped" => Action::udp_send_mapped(v4()?, port),
            "udp-connect" => Action::udp_connect(ip, port),
            "tfo" => Action::tfo(ip, port),
            "listen" => Action::Listen(SocketAddr::new(ip, port)),
            other => return Err(format!("unknown action {other:?}")),
        })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.verb(), self.addr())
    }
}

/// The one JSON line a probe prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// Whether the action did what it set out to (for `http` and `tfo`: got
    /// HTTP 200 at every step).
    pub ok: bool,
    /// The `errno` of the failing system call (`EPERM` is what a cgroup hook
    /// that rejects gives), or `None` when it did not fail in a system call.
    pub errno: Option<i32>,
    /// What failed, empty when `ok`.
    pub error: String,
    /// The last HTTP response body, or empty.
    pub body: String,
    /// The probe's pid and comm, to match the agent's log records.
    pub pid: u32,
    pub comm: String,
    /// The real uid, real gid and supplementary groups the kernel reports
    /// for the probe (`/proc/self/status`) when it acted.
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub groups: Vec<u32>,
    /// Its cgroup v2 path relative to the hierarchy's root
    /// (`/proc/self/cgroup`), e.g. `/imds-guard-test-123-4`.
    #[serde(default)]
    pub cgroup: String,
    /// For `tfo`: whether the server acknowledged data in the SYN
    /// (`TCPI_OPT_SYN_DATA`), i.e. the request left before any `connect()`.
    #[serde(default)]
    pub syn_data: Option<bool>,
    /// For `raw-tcp`: whether the destination answered the hand-made SYN.
    #[serde(default)]
    pub syn_ack: Option<bool>,
    /// For `mptcp-add-addr`: the remote address of every subflow of the
    /// connection, the initial one first.
    #[serde(default)]
    pub subflows: Vec<SocketAddr>,
    /// A fact about how the action went (which routing header type the
    /// kernel took, for instance), or empty.
    #[serde(default)]
    pub note: String,
    /// How many times the action was performed (`Probe::repeat`).
    #[serde(default)]
    pub attempts: u32,
    /// How many of those attempts failed with `EPERM`.
    #[serde(default)]
    pub eperm: u32,
}

impl ProbeResult {
    /// Panics, with the whole result, unless the action succeeded.
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert!(self.ok, "probe failed: {self:?}");
        self
    }

    /// Panics unless the action failed with `errno` (for example
    /// `libc::EPERM` for a rejected connect or sendmsg).
    #[track_caller]
    pub fn assert_errno(&self, errno: i32) -> &Self {
        assert!(
            !self.ok && self.errno == Some(errno),
            "expected errno {errno} ({}), got {self:?}",
            nix::errno::Errno::from_raw(errno)
        );
        self
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    #[test]
    fn args_round_trip() {
        let v6 = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
        let v4 = Ipv4Addr::new(169, 254, 169, 254);
        for action in [
            Action::http(v4, 80),
            Action::http(v6, 80),
            Action::http_keep_alive(v4, 80),
            Action::connect(Ipv4Addr::LOCALHOST, 8080),
            Action::connect_mapped(v4, 80),
            Action::udp_send(v6, 5353),
            Action::udp_send_mapped(v4, 5353),
            Action::udp_connect(v4, 5353),
            Action::tfo(v6, 80),
            Action::Evade(
                SocketAddr::new(v4.into(), 80),
                Evasion::Way(crate::Way::UringSendZc),
            ),
            Action::Evade(SocketAddr::new(v6.into(), 80), Evasion::Head(43)),
            Action::attack(Attack::udplite(SocketAddr::new(v6.into(), 5353))),
            Action::attack(Attack::packet(
                SocketAddr::new(v4.into(), 80),
                Ipv4Addr::new(10, 88, 1, 77),
                Ipv4Addr::new(10, 88, 1, 1),
            )),
        ] {
            assert_eq!(Action::from_args(&action.to_args()), Ok(action), "{action}");
        }
    }

    #[test]
    fn mapped_actions_take_ipv4_only() {
        let args = ["connect-mapped", "::1", "80"].map(String::from);
        let Err(err) = Action::from_args(&args) else {
            panic!("an IPv6 address must be refused");
        };
        assert!(err.contains("IPv4"), "{err}");
    }

    #[test]
    fn bad_arguments_are_refused() {
        for args in [
            &["connect", "127.0.0.1"][..],
            &["fly", "127.0.0.1", "80"],
            &["connect", "localhost", "80"],
            &["connect", "127.0.0.1", "65536"],
            &["connect", "127.0.0.1", "80", "extra"],
        ] {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            assert!(Action::from_args(&args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn result_without_syn_data_parses() {
        let line = r#"{"ok":false,"errno":1,"error":"connect: EPERM","body":"","pid":7,"comm":"imds-probe"}"#;
        let result: ProbeResult =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        result.assert_errno(libc::EPERM);
        assert_eq!(result.syn_data, None);
    }
}
