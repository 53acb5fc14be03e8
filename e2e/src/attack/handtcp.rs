//! A TCP client made of hand-built segments over a [`Link`]: just enough
//! for one HTTP request and its `Connection: close` response from the
//! fake IMDS (one request segment, in-order delivery with cumulative
//! acknowledgements, retransmission of what is not acknowledged, our FIN
//! after theirs). With it a packet-level path shows more than a SYN
//! arriving: the whole IMDSv2 credential flow completing.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::{
    links::Link,
    wire::{ACK, FIN, PSH, RST, SYN, Segment},
};
use crate::util::random_hex;

/// How long one exchange (handshake, request, response) may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(3);
/// Retransmission interval for the SYN and the request.
const RTO: Duration = Duration::from_millis(400);

/// A random ephemeral port and initial sequence number.
fn port_and_isn() -> (u16, u32) {
    let hex = random_hex(6);
    let n = u64::from_str_radix(&hex, 16).unwrap_or(0x1234_5678_9abc);
    (40_000 + (n % 20_000) as u16, (n >> 16) as u32)
}

/// What the handshake produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handshake {
    /// SYN-ACK received.
    Answered,
    /// A reset instead (no listener).
    Refused,
    /// Nothing came back.
    Silent,
}

/// Sends one SYN from `src` to `dst` and reports the answer, without
/// completing the handshake.
pub(crate) fn syn(
    link: &mut dyn Link,
    src_ip: std::net::IpAddr,
    dst: SocketAddr,
) -> Result<Handshake, String> {
    let (port, iss) = port_and_isn();
    let src = SocketAddr::new(src_ip, port);
    let mut conn = Conn {
        link,
        src,
        dst,
        snd_nxt: iss,
        rcv_nxt: 0,
    };
    conn.handshake(iss)
}

/// Opens a connection from `src_ip` to `dst`, sends `request` and returns
/// everything the server sent until its FIN.
pub(crate) fn exchange(
    link: &mut dyn Link,
    src_ip: std::net::IpAddr,
    dst: SocketAddr,
    request: &[u8],
) -> Result<Vec<u8>, String> {
    let (port, iss) = port_and_isn();
    let src = SocketAddr::new(src_ip, port);
    let mut conn = Conn {
        link,
        src,
        dst,
        snd_nxt: iss,
        rcv_nxt: 0,
    };
    match conn.handshake(iss)? {
        Handshake::Answered => {}
        Handshake::Refused => return Err(format!("{dst} reset the connection")),
        Handshake::Silent => return Err(format!("no SYN-ACK from {dst}")),
    }
    conn.transfer(request)
}

struct Conn<'a> {
    link: &'a mut dyn Link,
    src: SocketAddr,
    dst: SocketAddr,
    snd_nxt: u32,
    rcv_nxt: u32,
}

impl Conn<'_> {
    fn send(&mut self, flags: u8, seq: u32, payload: &[u8]) -> Result<(), String> {
        let seg = Segment {
            src: self.src,
            dst: self.dst,
            seq,
            ack: if flags & ACK != 0 { self.rcv_nxt } else { 0 },
            flags,
            payload: payload.to_vec(),
        };
        self.link
            .send(&seg.to_packet())
            .map_err(|e| format!("sending to {}: {e}", self.dst))
    }

    /// The next segment of this connection, or `None` at `deadline`.
    fn recv(&mut self, deadline: Instant) -> Result<Option<Segment>, String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let Some(packet) = self
                .link
                .recv(left.min(RTO))
                .map_err(|e| format!("receiving from {}: {e}", self.dst))?
            else {
                return Ok(None);
            };
            match Segment::parse(&packet) {
                Some(seg) if seg.src == self.dst && seg.dst == self.src => return Ok(Some(seg)),
                _ => continue,
            }
        }
    }

    fn handshake(&mut self, iss: u32) -> Result<Handshake, String> {
        let deadline = Instant::now() + EXCHANGE_TIMEOUT;
        while Instant::now() < deadline {
            self.send(SYN, iss, &[])?;
            let retry = (Instant::now() + RTO).min(deadline);
            while let Some(seg) = self.recv(retry)? {
                if seg.flags & RST != 0 {
                    return Ok(Handshake::Refused);
                }
                if seg.flags & (SYN | ACK) == SYN | ACK && seg.ack == iss.wrapping_add(1) {
                    self.snd_nxt = iss.wrapping_add(1);
                    self.rcv_nxt = seg.seq.wrapping_add(1);
                    return Ok(Handshake::Answered);
                }
            }
        }
        Ok(Handshake::Silent)
    }

    fn transfer(&mut self, request: &[u8]) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + EXCHANGE_TIMEOUT;
        let seq = self.snd_nxt;
        let end = seq.wrapping_add(request.len() as u32);
        self.snd_nxt = end;
        let mut acked = false;
        let mut response = Vec::new();
        let mut resend_at = Instant::now();
        loop {
            if !acked && Instant::now() >= resend_at {
                self.send(PSH | ACK, seq, request)?;
                resend_at = Instant::now() + RTO;
            }
            let wait = if acked {
                deadline
            } else {
                resend_at.min(deadline)
            };
            let Some(seg) = self.recv(wait)? else {
                if Instant::now() >= deadline {
                    return Err(format!(
                        "{}: no complete response within {EXCHANGE_TIMEOUT:?} ({} bytes so far)",
                        self.dst,
                        response.len()
                    ));
                }
                continue;
            };
            if seg.flags & RST != 0 {
                return Err(format!("{} reset the connection", self.dst));
            }
            // Sequence space comparisons, modulo 2^32.
            if seg.flags & ACK != 0 && seg.ack.wrapping_sub(end) as i32 >= 0 {
                acked = true;
            }
            if seg.seq != self.rcv_nxt {
                // A retransmission or a gap: say what we expect.
                self.send(ACK, self.snd_nxt, &[])?;
                continue;
            }
            response.extend_from_slice(&seg.payload);
            self.rcv_nxt = self.rcv_nxt.wrapping_add(seg.payload.len() as u32);
            if seg.flags & FIN != 0 {
                self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
                // Close our side at once: the fake IMDS waits for our FIN
                // before it serves the next connection.
                self.send(FIN | ACK, self.snd_nxt, &[])?;
                self.snd_nxt = self.snd_nxt.wrapping_add(1);
                return Ok(response);
            }
            if !seg.payload.is_empty() {
                self.send(ACK, self.snd_nxt, &[])?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::VecDeque, io};

    use super::*;

    /// A peer that answers a SYN, acknowledges the request and sends a
    /// response in two segments with a FIN on the second.
    struct Scripted {
        inbox: VecDeque<Vec<u8>>,
        sent: Vec<Segment>,
    }

    impl Link for Scripted {
        fn send(&mut self, packet: &[u8]) -> io::Result<()> {
            let seg = Segment::parse(packet).expect("a TCP packet");
            let reply = |flags, seq, payload: &[u8]| Segment {
                src: seg.dst,
                dst: seg.src,
                seq,
                ack: seg.seq.wrapping_add(seg.payload.len() as u32),
                flags,
                payload: payload.to_vec(),
            };
            if seg.flags & SYN != 0 {
                let mut r = reply(SYN | ACK, 1000, b"");
                r.ack = seg.seq.wrapping_add(1);
                self.inbox.push_back(r.to_packet());
            } else if !seg.payload.is_empty() {
                self.inbox
                    .push_back(reply(ACK, 1001, b"HTTP/1.1 200 OK\r\n").to_packet());
                self.inbox
                    .push_back(reply(FIN | ACK, 1018, b"\r\nbody").to_packet());
            }
            self.sent.push(seg);
            Ok(())
        }

        fn recv(&mut self, _: Duration) -> io::Result<Option<Vec<u8>>> {
            Ok(self.inbox.pop_front())
        }
    }

    #[test]
    fn one_exchange_collects_the_response_and_closes() {
        let mut peer = Scripted {
            inbox: VecDeque::new(),
            sent: Vec::new(),
        };
        let dst: SocketAddr = "169.254.169.254:80".parse().unwrap();
        let got = exchange(
            &mut peer,
            "10.0.0.2".parse().unwrap(),
            dst,
            b"GET / HTTP/1.1\r\n\r\n",
        )
        .unwrap();
        assert_eq!(got, b"HTTP/1.1 200 OK\r\n\r\nbody");
        let last = peer.sent.last().unwrap();
        assert_eq!(last.flags, FIN | ACK);
        assert_eq!(last.ack, 1018 + 6 + 1);
    }
}
