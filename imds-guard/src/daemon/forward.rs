//! The agent's side of the forward path (`kernel/forward.rs`): the table
//! put in force at start and on every reload, the packets it logs read
//! from NFLOG, its counters into the metrics, and the table put back when
//! it is removed behind the agent's back.
//!
//! A table that cannot be put in force (no `nft`, a kernel without
//! nftables) leaves the socket guard in force and the forward path open:
//! the agent keeps running and says so everywhere it can (the log at error
//! level, systemd's status line, `status`, which then exits 5, and the
//! `imds_guard_forward_guarded` metric), rather than exit and leave the
//! forward path just as open with nobody saying it.

use std::{io, time::Instant};

use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};

use super::{
    events::EventLog,
    metrics::Metrics,
    nflog::{self, NflogSocket},
    rings,
};
use crate::{
    chain::Chain,
    kernel::forward::{self, ForwardCounters, LOG_GROUP},
    policy::{Mode, PolicySpec},
};

/// Ticks (seconds) between two reads of the forward table's counters:
/// each is a run of `nft`.
const COUNTERS_EVERY: u32 = 10;

/// NFLOG messages one read takes at most (a run-loop turn's share; each
/// holds a few packets): a flood of forwarded packets is read on in later
/// turns, after whatever else is ready.
pub(super) const READS_PER_TURN: usize = 64;

/// Whether the forward table is in force.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ForwardState {
    Guarded,
    /// Why not.
    Unguarded(String),
}

/// The forward table as last put in force (or not): what the reload thread
/// is lent and hands back.
#[derive(Clone, Debug)]
pub(super) struct ForwardTable {
    state: ForwardState,
    /// The ruleset in force, when it is.
    ruleset: Option<String>,
}

impl ForwardTable {
    /// Puts the forward table of `spec` in force, and says how it went.
    /// Nothing is run when `self` has that ruleset in force already (most
    /// reloads change no forward setting; a table removed behind the
    /// agent's back is put back at the next read of its counters).
    pub(super) fn apply(&self, spec: &PolicySpec) -> Self {
        Self::apply_over(spec, self.ruleset.as_deref())
    }

    fn apply_over(spec: &PolicySpec, in_force: Option<&str>) -> Self {
        let ruleset = forward::ruleset(spec);
        if in_force == Some(ruleset.as_str()) {
            return Self::guarded(ruleset);
        }
        match forward::apply_ruleset(&ruleset) {
            Ok(()) => Self::guarded(ruleset),
            Err(e) => Self::unguarded(&e),
        }
    }

    fn guarded(ruleset: String) -> Self {
        Self {
            state: ForwardState::Guarded,
            ruleset: Some(ruleset),
        }
    }

    /// Said at error level: the forward path is open.
    fn unguarded(e: &forward::ForwardError) -> Self {
        let why = Chain(e).to_string();
        tracing::error!(
            forward = "unguarded",
            "forwarded packets to the metadata service are NOT dropped: {why}"
        );
        Self {
            state: ForwardState::Unguarded(why),
            ruleset: None,
        }
    }

    pub(super) fn is_guarded(&self) -> bool {
        self.state == ForwardState::Guarded
    }

    /// For systemd's status line and the records: empty when guarded.
    pub(super) fn note(&self) -> &'static str {
        match self.state {
            ForwardState::Guarded => "",
            ForwardState::Unguarded(_) => "; forward path NOT guarded",
        }
    }
}

/// The forward path: its table, the NFLOG socket it logs to, and the clock
/// of its counters.
pub(super) struct ForwardPath {
    table: ForwardTable,
    /// `None` when NFLOG cannot be read (see [`listen`]).
    nflog: Option<AsyncFd<NflogSocket>>,
    /// Ticks since the counters were last read.
    ticks: u32,
}

impl ForwardPath {
    /// Puts the forward table of `spec` in force and listens to its log.
    pub(super) fn start(spec: &PolicySpec) -> Self {
        let table = ForwardTable::apply_over(spec, None);
        Self {
            table,
            nflog: listen(),
            ticks: 0,
        }
    }

    /// The table in force, for a reload to start from.
    pub(super) fn table(&self) -> &ForwardTable {
        &self.table
    }

    /// The table a reload put in force.
    pub(super) fn adopt(&mut self, table: ForwardTable) {
        self.table = table;
    }

    /// Readiness of the NFLOG socket; never, when there is none.
    pub(super) async fn readable(&self) -> io::Result<AsyncFdReadyGuard<'_, NflogSocket>> {
        rings::readable(self.nflog.as_ref()).await
    }

    /// Logs the packets waiting on the NFLOG socket, up to
    /// [`READS_PER_TURN`] messages, dropped (or audited) under a policy in
    /// `mode`. The socket stays ready while some are left.
    pub(super) fn read_log(
        mut ready: AsyncFdReadyGuard<'_, NflogSocket>,
        log: &mut EventLog,
        mode: Mode,
    ) {
        match read(ready.get_inner(), log, mode) {
            Ok(true) => {}
            Ok(false) => ready.clear_ready(),
            Err(e) => {
                tracing::warn!("cannot read NFLOG: {e}");
                ready.clear_ready();
            }
        }
    }

    /// About once a second: every [`COUNTERS_EVERY`] ticks, the table's
    /// counters into `metrics`. A table gone while the agent had it in
    /// force (someone ran `nft flush ruleset`) is put back, the ruleset of
    /// `spec`, and said at error level.
    pub(super) fn tick(&mut self, spec: Option<&PolicySpec>, metrics: &Metrics) {
        self.ticks += 1;
        if !self.ticks.is_multiple_of(COUNTERS_EVERY) {
            return;
        }
        match forward::counters() {
            Ok(None) if self.table.is_guarded() => {
                if let Some(spec) = spec {
                    self.put_back(spec, metrics);
                }
            }
            Ok(c) => metrics.set_forward(c, self.table.is_guarded() && c.is_some()),
            Err(e) => tracing::debug!("cannot read the forward table's counters: {}", Chain(&e)),
        }
    }

    fn put_back(&mut self, spec: &PolicySpec, metrics: &Metrics) {
        self.table = ForwardTable::apply_over(spec, None);
        let counters: Option<ForwardCounters> = forward::counters().ok().flatten();
        let guarded = self.table.is_guarded() && counters.is_some();
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
        metrics.set_forward(counters, guarded);
    }
}

/// The NFLOG socket the forward table logs to, or `None` (with a warning)
/// when it cannot be read: the packets are still dropped and counted.
fn listen() -> Option<AsyncFd<NflogSocket>> {
    let bound = NflogSocket::bind(LOG_GROUP).and_then(rings::pollable);
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

/// Logs the packets waiting on `socket`, up to [`READS_PER_TURN`]
/// messages; whether some may be left.
fn read(socket: &NflogSocket, log: &mut EventLog, mode: Mode) -> io::Result<bool> {
    let mut buf = vec![0u8; 64 * 1024];
    let now = Instant::now();
    for _ in 0..READS_PER_TURN {
        match socket.recv(&mut buf) {
            Ok(n) => {
                for packet in nflog::parse(&buf[..n]) {
                    log.record_forward(&packet, mode, now);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
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
    Ok(true)
}
