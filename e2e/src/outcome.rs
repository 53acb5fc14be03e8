//! What one probe action reports on the way: an [`Outcome`] when it
//! worked, a [`Failure`] with the `errno` of the system call that failed
//! when it did. Shared by the plain socket actions (`client`), the
//! IMDSv2 flow (`imdsv2`) and the packet-path attacks (`attack`).

use std::{fmt::Display, io, net::SocketAddr};

/// What a successful action produced.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub body: String,
    pub syn_data: Option<bool>,
    /// `raw-tcp`: whether the destination answered the SYN.
    pub syn_ack: Option<bool>,
    /// `mptcp-add-addr`: the remote address of every subflow.
    pub subflows: Vec<SocketAddr>,
    /// A fact worth reporting about how the action went.
    pub note: String,
}

/// Why an action failed.
#[derive(Debug)]
pub(crate) struct Failure {
    pub errno: Option<i32>,
    pub error: String,
    pub body: String,
}

pub(crate) type Step<T> = Result<T, Failure>;

/// A failed system call, with its errno (a timeout from std's
/// `connect_timeout` carries none, so it gets `ETIMEDOUT`).
pub(crate) fn os_failure(what: impl Display, e: io::Error) -> Failure {
    let errno = e
        .raw_os_error()
        .or((e.kind() == io::ErrorKind::TimedOut).then_some(libc::ETIMEDOUT));
    Failure {
        errno,
        error: format!("{what}: {e}"),
        body: String::new(),
    }
}
