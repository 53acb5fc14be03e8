//! The IMDSv2 client of the probe: the requests an SDK makes to find and
//! fetch role credentials, over a plain TCP connection ([`http_flow`]),
//! over one kept-alive connection ([`KeptAlive`], as SDKs that pool
//! connections make them), or any transport that carries one request per
//! connection ([`imdsv2_flow`], which the hand-made TCP of `attack` uses
//! too).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use crate::{
    fake_imds::ROLE,
    outcome::{Failure, Outcome, Step, os_failure},
};

/// Connect, send and receive timeout: a rejected connect fails at once, so
/// anything slower is a harness problem, not a verdict.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(2);
/// Bounds a response a probe reads.
const MAX_RESPONSE: u64 = 1024 * 1024;
pub(crate) const TOKEN_PATH: &str = "/latest/api/token";
pub(crate) const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";

/// A TCP connection to `addr` with the probe's timeouts.
pub(crate) fn connect(addr: SocketAddr) -> Step<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|e| os_failure(format!("connect {addr}"), e))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| os_failure("setting socket timeouts", e))?;
    Ok(stream)
}

/// An HTTP/1.1 request with no body, closing the connection after it.
pub(crate) fn request(addr: SocketAddr, method: &str, path: &str, header: (&str, &str)) -> Vec<u8> {
    request_on(addr, method, path, header, "close")
}

/// An HTTP/1.1 request with no body and this `Connection` header.
fn request_on(
    addr: SocketAddr,
    method: &str,
    path: &str,
    header: (&str, &str),
    connection: &str,
) -> Vec<u8> {
    let host = match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    let port = if addr.port() == 80 {
        String::new()
    } else {
        format!(":{}", addr.port())
    };
    let (name, value) = header;
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}{port}\r\nUser-Agent: imds-probe\r\n\
         Accept: */*\r\nConnection: {connection}\r\n{name}: {value}\r\n\r\n"
    )
    .into_bytes()
}

/// Reads a whole `Connection: close` response; returns its status and body
/// as text.
pub(crate) fn read_response(stream: &mut TcpStream, what: &str) -> Step<(u16, String)> {
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(|e| os_failure(format!("{what}: reading the response"), e))?;
    parse_response(&raw, what)
}

/// The status and body of a whole response, as text.
pub(crate) fn parse_response(raw: &[u8], what: &str) -> Step<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let malformed = || Failure {
        errno: None,
        error: format!("{what}: malformed response {text:?}"),
        body: String::new(),
    };
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(malformed)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(malformed)?;
    Ok((status, body.to_owned()))
}

/// One connection kept for many requests (`Connection: keep-alive`), each
/// response read by its `Content-Length`.
pub(crate) struct KeptAlive {
    addr: SocketAddr,
    stream: TcpStream,
    /// Bytes read past the last response (none from a server that waits
    /// for each request).
    pending: Vec<u8>,
}

impl KeptAlive {
    /// Connects to `addr`, with the probe's timeouts.
    pub(crate) fn connect(addr: SocketAddr) -> Step<Self> {
        Ok(Self {
            addr,
            stream: connect(addr)?,
            pending: Vec::new(),
        })
    }

    /// The IMDSv2 flow, every request on this one connection.
    pub(crate) fn flow(&mut self) -> Step<Outcome> {
        imdsv2_flow(|method, path, header| self.exchange(method, path, header))
    }

    fn exchange(&mut self, method: &str, path: &str, header: (&str, &str)) -> Step<(u16, String)> {
        let what = format!("{method} {path} (kept-alive connection)");
        let req = request_on(self.addr, method, path, header, "keep-alive");
        self.stream
            .write_all(&req)
            .map_err(|e| os_failure(format!("{what}: sending"), e))?;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let length = content_length(&self.pending[..end]);
                if let Some(total) = length.map(|n| end + 4 + n)
                    && self.pending.len() >= total
                {
                    let raw: Vec<u8> = self.pending.drain(..total).collect();
                    return parse_response(&raw, &what);
                }
                if length.is_none() {
                    return Err(Failure {
                        errno: None,
                        error: format!("{what}: a response without Content-Length"),
                        body: String::new(),
                    });
                }
            }
            // The read timeout bounds the wait: a request the guard
            // dropped is never answered, and this fails with EAGAIN.
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(Failure {
                        errno: None,
                        error: format!("{what}: the server closed the connection"),
                        body: String::new(),
                    });
                }
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) => return Err(os_failure(format!("{what}: reading the response"), e)),
            }
            if self.pending.len() as u64 > MAX_RESPONSE {
                return Err(Failure {
                    errno: None,
                    error: format!("{what}: a response over {MAX_RESPONSE} bytes"),
                    body: String::new(),
                });
            }
        }
    }
}

/// The `Content-Length` of a response head.
fn content_length(head: &[u8]) -> Option<usize> {
    String::from_utf8_lossy(head)
        .split("\r\n")
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
}

/// The body of a 200 response, or a failure naming the status.
pub(crate) fn expect_200(what: &str, (status, body): (u16, String)) -> Step<String> {
    if status == 200 {
        Ok(body)
    } else {
        Err(Failure {
            errno: None,
            error: format!("{what}: HTTP {status}"),
            body,
        })
    }
}

/// One request on a new connection, as IMDS clients do: its status and
/// body.
fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    header: (&str, &str),
) -> Step<(u16, String)> {
    let what = format!("{method} {path}");
    let mut stream = connect(addr)?;
    stream
        .write_all(&request(addr, method, path, header))
        .map_err(|e| os_failure(format!("{what}: sending"), e))?;
    read_response(&mut stream, &what)
}

/// The IMDSv2 sequence an SDK follows to find and fetch role credentials.
pub(crate) fn http_flow(addr: SocketAddr) -> Step<Outcome> {
    imdsv2_flow(|method, path, header| exchange(addr, method, path, header))
}

/// [`http_flow`] over any transport: `exchange(method, path, header)`
/// makes one request on a new connection and returns the status and body.
pub(crate) fn imdsv2_flow(
    mut exchange: impl FnMut(&str, &str, (&str, &str)) -> Step<(u16, String)>,
) -> Step<Outcome> {
    let mut ok = |method: &str, path: &str, header: (&str, &str)| {
        let what = format!("{method} {path}");
        expect_200(&what, exchange(method, path, header)?)
    };
    let token = ok("PUT", TOKEN_PATH, (TTL_HEADER, "21600"))?;
    let auth = ("X-aws-ec2-metadata-token", token.as_str());
    ok("GET", "/latest/meta-data/", auth)?;
    let roles = ok("GET", "/latest/meta-data/iam/security-credentials/", auth)?;
    let role = roles.lines().next().unwrap_or(ROLE).trim();
    let path = format!("/latest/meta-data/iam/security-credentials/{role}");
    let body = ok("GET", &path, auth)?;
    Ok(Outcome {
        body,
        ..Outcome::default()
    })
}
