//! The agent's side of the forward path (`kernel/forward.rs`): the table
//! put in force at start and on every reload, the packets it logs read
//! from NFLOG, its counters into the metrics.
//!
//! A table that cannot be put in force (no `nft`, a kernel without
//! nftables) leaves the socket guard in force and the forward path open:
//! the agent keeps running and says so everywhere it can (the log at error
//! level, systemd's status line, `status`, which then exits 5, and the
//! `imds_guard_forward_guarded` metric), rather than exit and leave the
//! forward path just as open with nobody saying it.

use std::{io, time::Instant};

use tokio::io::unix::AsyncFd;

use super::{Daemon, nflog::NflogSocket};
use crate::{
    chain::Chain,
    kernel::forward::{self, LOG_GROUP},
    policy::{Mode, PolicySpec},
};

/// Whether the forward table is in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForwardState {
    Guarded,
    /// Why not.
    Unguarded(String),
}

impl ForwardState {
    /// Puts the forward table of `spec` in force, and says how it went;
    /// with the ruleset then in force. Nothing is run when `in_force` is
    /// that ruleset already (most reloads change no forward setting; a
    /// table removed behind the agent's back is put back at the next
    /// read of its counters).
    pub(super) fn apply(spec: &PolicySpec, in_force: Option<&str>) -> (Self, Option<String>) {
        let ruleset = forward::ruleset(spec);
        if in_force == Some(ruleset.as_str()) {
            return (Self::Guarded, Some(ruleset));
        }
        match forward::apply_ruleset(&ruleset) {
            Ok(()) => (Self::Guarded, Some(ruleset)),
            Err(e) => (Self::unguarded(&e), None),
        }
    }

    /// Said at error level: the forward path is open.
    fn unguarded(e: &forward::ForwardError) -> Self {
        let why = Chain(e).to_string();
        tracing::error!(
            forward = "unguarded",
            "forwarded packets to the metadata service are NOT dropped: {why}"
        );
        Self::Unguarded(why)
    }

    /// For systemd's status line: empty when guarded.
    pub(super) fn note(&self) -> &'static str {
        match self {
            Self::Guarded => "",
            Self::Unguarded(_) => "; forward path NOT guarded",
        }
    }
}

/// The NFLOG socket the forward table logs to, or `None` (with a warning)
/// when it cannot be read: the packets are still dropped and counted.
pub(super) fn listen() -> Option<AsyncFd<NflogSocket>> {
    let bound = NflogSocket::bind(LOG_GROUP).and_then(super::pollable);
    match bound {
        Ok(fd) => Some(fd),
        Err(e) => {
            tracing::warn!(
                "cannot read NFLOG group {LOG_GROUP}: {e}; forwarded packets the guard drops are \
                 counted but not logged"
            );
            None
        }
    }
}

impl Daemon {
    /// Logs every packet waiting on the NFLOG socket.
    pub(super) fn on_nflog(&mut self, socket: &NflogSocket) -> io::Result<()> {
        let mode = self.policy().map_or(Mode::Enforce, |p| p.spec.mode);
        let mut buf = vec![0u8; 64 * 1024];
        let now = Instant::now();
        loop {
            match socket.recv(&mut buf) {
                Ok(n) => {
                    for packet in super::nflog::parse(&buf[..n]) {
                        self.log.record_forward(&packet, mode, now);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // The kernel dropped log messages (the socket's buffer was
                // full): the packets were still dropped and counted.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    tracing::warn!(
                        event = "lost",
                        "forwarded-packet log messages lost: the NFLOG buffer was full (the \
                         packets were still dropped and counted)"
                    );
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The forward table's counters into the metrics. A table gone while
    /// the agent had it in force (someone ran `nft flush ruleset`) is put
    /// back, and said at error level.
    pub(super) fn refresh_forward_counters(&mut self) {
        match forward::counters() {
            Ok(None) if self.forward == ForwardState::Guarded => {
                let Some(policy) = self.policy() else {
                    return;
                };
                (self.forward, self.forward_ruleset) = ForwardState::apply(&policy.spec, None);
                let counters = forward::counters().ok().flatten();
                let guarded = self.forward == ForwardState::Guarded && counters.is_some();
                tracing::error!(
                    forward = "removed",
                    "the forward table {} was removed behind the agent's back: {}",
                    forward::TABLE,
                    if guarded {
                        "put back"
                    } else {
                        "it could not be put back"
                    }
                );
                self.metrics.set_forward(counters, guarded);
            }
            Ok(c) => self
                .metrics
                .set_forward(c, self.forward == ForwardState::Guarded && c.is_some()),
            Err(e) => tracing::debug!("cannot read the forward table's counters: {}", Chain(&e)),
        }
    }
}
