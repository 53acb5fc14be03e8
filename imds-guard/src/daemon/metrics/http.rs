//! The HTTP side of the metrics: a deliberately small HTTP/1.1 server,
//! one request per connection, `GET`/`HEAD` only, bounded in everything a
//! client controls (request size, time, concurrent connections).

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
    time::{sleep, timeout},
};

use super::Metrics;

/// The agent's metrics, and the server that serves them when asked for.
#[derive(Default)]
pub struct Exporter {
    metrics: Arc<Metrics>,
    server: Option<JoinHandle<()>>,
}

impl Exporter {
    /// What the run loop keeps current.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Starts the server on `listen`, if asked for. Metrics that cannot be
    /// served are worth an error record, never a reason to leave the host
    /// unguarded: start it with the guard in force.
    pub async fn serve(&mut self, listen: Option<SocketAddr>) {
        let Some(addr) = listen else {
            return;
        };
        match TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(metrics = %addr, "serving Prometheus metrics on http://{addr}/metrics");
                self.server = Some(tokio::spawn(serve(l, Arc::clone(&self.metrics))));
            }
            Err(e) => tracing::error!(
                metrics = %addr,
                "cannot listen for metrics on {addr}: {e}{}; the guard runs without them",
                sandbox_hint(&e, addr)
            ),
        }
    }

    /// Stops the server, closing the connections in progress.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// What one client may cost the server.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// Connections served at once; more wait in the listen backlog.
    pub(super) connections: usize,
    /// Bytes of request line and headers.
    pub(super) request: usize,
    /// For reading the request, and again for writing the response.
    pub(super) io: Duration,
    /// For draining what the client sent after the response.
    pub(super) linger: Duration,
}

pub(super) const LIMITS: Limits = Limits {
    connections: 16,
    request: 8 * 1024,
    io: Duration::from_secs(5),
    linger: Duration::from_secs(1),
};

/// Bytes drained on close before giving up on a graceful close.
const LINGER_BYTES: usize = 64 * 1024;

/// What to add to an error binding the metrics listener when a sandbox
/// refused the socket's address family: systemd's
/// `RestrictAddressFamilies=` fails `socket(2)` with EAFNOSUPPORT, and the
/// packaged unit allows only AF_UNIX and AF_NETLINK.
pub fn sandbox_hint(e: &io::Error, addr: SocketAddr) -> String {
    if e.raw_os_error() != Some(libc::EAFNOSUPPORT) {
        return String::new();
    }
    let family = if addr.is_ipv4() {
        "AF_INET"
    } else {
        "AF_INET6"
    };
    format!(
        " (the service's sandbox refuses {family} sockets: add \
         `RestrictAddressFamilies=AF_INET AF_INET6` beside the address in a drop-in, \
         systemctl edit imds-guard)"
    )
}

/// Serves `GET /metrics` (and `/`, a pointer to it) on `listener` until
/// the future is dropped; dropping it also closes the connections in
/// progress. Spawn it: `tokio::spawn(serve(..))`, and abort the handle on
/// shutdown.
///
/// The run loop keeps `metrics` current (the counters once a second).
///
/// Accept errors (out of file descriptors, say) are logged and retried
/// after a pause; the server never gives up on its own.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    serve_with(listener, metrics, LIMITS).await;
}

pub(super) async fn serve_with(listener: TcpListener, metrics: Arc<Metrics>, limits: Limits) {
    // Owning the connection tasks means dropping the server drops them too.
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        if connections.len() >= limits.connections {
            // Stop accepting rather than accept and refuse: the kernel's
            // backlog holds the rest at no cost to us, and they are served
            // as slots free.
            connections.join_next().await;
            continue;
        }
        match listener.accept().await {
            Ok((stream, _)) => {
                connections.spawn(exchange(stream, Arc::clone(&metrics), limits));
            }
            Err(e) => {
                // Mostly EMFILE/ENFILE, which do not clear at once; retrying
                // straight away would spin.
                tracing::warn!(error = %e, "metrics: cannot accept a connection");
                sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One request, one response, then close.
async fn exchange(mut stream: TcpStream, metrics: Arc<Metrics>, limits: Limits) {
    let response = match timeout(limits.io, read_head(&mut stream, limits.request)).await {
        Err(_) => Response::error(408, "Request Timeout"),
        // The client went away (or reset) before finishing its request:
        // there is no one to answer.
        Ok(Err(_)) => return,
        Ok(Ok(None)) => Response::error(431, "Request Header Fields Too Large"),
        Ok(Ok(Some(head))) => respond(&head, &metrics),
    };
    // Bounded too: a client that never reads must not keep its slot.
    if let Ok(Ok(())) = timeout(limits.io, stream.write_all(&response.to_bytes())).await {
        // Half-close and drain before closing: closing with unread request
        // bytes (a body we ignored) sends a reset, which can destroy the
        // response before the client reads it (RFC 9112, section 9.6).
        let _ = stream.shutdown().await;
        let _ = timeout(limits.linger, drain(&mut stream)).await;
    }
}

/// Reads up to the blank line ending the headers. `None` when `max` bytes
/// come without one.
async fn read_head(stream: &mut TcpStream, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0; max];
    let mut len = 0;
    while len < max {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        // Only the new bytes, plus the three before them that could start
        // the terminator.
        let from = len.saturating_sub(3);
        len += n;
        if let Some(end) = head_end(&buf[from..len]) {
            buf.truncate(from + end);
            return Ok(Some(buf));
        }
    }
    Ok(None)
}

/// The length up to and including the empty line after the headers. A bare
/// LF is taken as a line end, as RFC 9112 section 2.2 allows.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.iter().enumerate().find_map(|(i, &b)| {
        if b != b'\n' {
            return None;
        }
        match buf.get(i + 1..) {
            Some([b'\n', ..]) => Some(i + 2),
            Some([b'\r', b'\n', ..]) => Some(i + 3),
            _ => None,
        }
    })
}

async fn drain(stream: &mut TcpStream) {
    let mut buf = [0; 1024];
    let mut total = 0;
    while total < LINGER_BYTES {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

/// The response to a complete request head.
fn respond(head: &[u8], metrics: &Metrics) -> Response {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return Response::error(400, "Bad Request");
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Response::error(400, "Bad Request");
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return if version.starts_with("HTTP/") {
            Response::error(505, "HTTP Version Not Supported")
        } else {
            Response::error(400, "Bad Request")
        };
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        // Nothing here accepts anything else, whatever the path.
        _ => return Response::error(405, "Method Not Allowed"),
    };
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let mut response = match path {
        "/metrics" => Response::ok(METRICS_TYPE, metrics.render()),
        "/" => Response::ok(HTML_TYPE, INDEX.to_owned()),
        _ => Response::error(404, "Not Found"),
    };
    response.head_only = head_only;
    response
}

/// What Prometheus's own client libraries send for format 0.0.4.
const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const HTML_TYPE: &str = "text/html; charset=utf-8";
const TEXT_TYPE: &str = "text/plain; charset=utf-8";

const INDEX: &str = "<!DOCTYPE html>\n<html><head><title>imds-guard</title></head>\n\
                     <body><h1>imds-guard</h1><p><a href=\"/metrics\">Metrics</a></p></body></html>\n";

#[derive(Debug)]
struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    /// A `HEAD` response: the headers of the `GET` one, no body.
    head_only: bool,
}

impl Response {
    fn ok(content_type: &'static str, body: String) -> Self {
        Self {
            status: 200,
            reason: "OK",
            content_type,
            body,
            head_only: false,
        }
    }

    fn error(status: u16, reason: &'static str) -> Self {
        Self {
            status,
            reason,
            content_type: TEXT_TYPE,
            body: format!("{}\n", reason.to_lowercase()),
            head_only: false,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        if !self.head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}
