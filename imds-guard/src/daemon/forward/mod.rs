//! The agent's side of the forward path: which mechanism holds it, what
//! it logs, and keeping it in force.
//!
//! - Where the kernel has BPF netfilter programs (6.4), the pinned
//!   `forward` program (`kernel/netfilter/`): nothing a foreign `nft`
//!   does touches it, and it stays when the agent dies. A reload writes
//!   its exceptions with the rest of the policy (a generation flip); its
//!   records come through a ring buffer.
//! - Elsewhere, nftables (`kernel/forward/`): the unowned table, put back
//!   as soon as nf_tables notifies a change to it (`watch.rs`), and the
//!   agent's own table, which no one else can flush and which closes the
//!   window while the agent lives. Its records come through NFLOG.
//!
//! Every reload puts the nftables tables in force again, whatever changed
//! (a table flushed behind the agent's back is not skipped as "unchanged"):
//! `table.rs` is what a reload is lent and runs.
//!
//! A forward path that cannot be put in force (no `nft`, a kernel without
//! nftables) leaves the socket guard in force and the forward path open:
//! the agent keeps running and says so everywhere it can (the log at error
//! level, systemd's status line, `status`, which then exits 5, and the
//! `imds_guard_forward_guarded` metric), rather than exit and leave the
//! forward path just as open with nobody saying it.

use std::{
    io,
    os::fd::{AsFd as _, OwnedFd},
    sync::{Arc, Mutex},
    time::Instant,
};

use aya::maps::{Map, MapData, RingBuf};
use imds_guard_common as common;
use tokio::io::unix::AsyncFd;

mod table;

pub use self::table::Choice;
pub(super) use self::table::ForwardTable;
use self::table::{Mechanism, own};
use super::{
    events::EventLog,
    metrics::Metrics,
    nflog::{self, Logged, NflogSocket},
    rings,
};
use crate::{
    chain::Chain,
    kernel::{
        Guard,
        forward::{
            self, ForwardCounters, LOG_GROUP,
            owned::OwnedTable,
            status::{counters_map, program_counters_of, record},
            watch::TableWatch,
        },
        netfilter::{self, link, records::Dropped},
        pins::Pins,
    },
    policy::{Mode, PolicySpec},
};

/// Ticks (seconds) between two reads of the forward path's counters (and,
/// for nftables, a check of the table besides the notifications).
const COUNTERS_EVERY: u32 = 10;

/// NFLOG messages one read takes at most (a run-loop turn's share; each
/// holds a few packets), and forward program records: a flood of
/// forwarded packets is read on in later turns, after whatever else is
/// ready.
pub(super) const READS_PER_TURN: usize = 64;
const RECORDS_PER_TURN: usize = 1024;

/// Where the forward path's records come from.
enum Log {
    /// The forward program's ring buffer.
    Ring(AsyncFd<RingBuf<MapData>>),
    /// NFLOG, `None` when it cannot be read (see [`listen`]).
    Nflog(Option<AsyncFd<NflogSocket>>),
}

/// What woke the forward path.
pub(super) enum Ready {
    Log,
    Tables,
}

/// The forward path: what holds it, where its records come from, what
/// says it changed, and the clock of its counters.
pub(super) struct ForwardPath {
    table: ForwardTable,
    log: Log,
    /// nf_tables' notifications (nftables only).
    watch: Option<AsyncFd<TableWatch>>,
    /// The agent's `FWD_STATE`, to record the mechanism in (pinned).
    state: Option<OwnedFd>,
    /// A reload has the tables: a repair now would put back the ruleset
    /// it is replacing. Its own table holds meanwhile; the reload's end
    /// checks the unowned one ([`ForwardPath::adopt`]).
    lent: bool,
    /// The forward program's counters (netfilter only).
    counters: Option<Map>,
    /// The last read stopped at its bound with records left.
    more: bool,
    ticks: u32,
    /// The table was found changed behind the agent's back since the last
    /// [`ForwardPath::take_changed`] (put back or not).
    changed: bool,
}

impl ForwardPath {
    /// Puts the forward path of `spec` in force with the mechanism
    /// `choice` allows, and listens to its records.
    pub(super) fn start(spec: &PolicySpec, guard: &mut Guard, pins: &Pins, choice: Choice) -> Self {
        let state = guard
            .map_descriptor(common::MAP_FORWARD_STATE)
            .map_err(|e| tracing::warn!("cannot record the forward path for status: {}", Chain(&e)))
            .ok();
        let mut path = if netfilter_wanted(choice) {
            match Self::start_netfilter(guard, pins) {
                Ok(path) => path,
                Err(why) => {
                    tracing::warn!(
                        "the forward program cannot hold the forward path ({why}); nftables \
                         holds it instead"
                    );
                    Self::start_nftables(spec, pins, false)
                }
            }
        } else {
            Self::start_nftables(spec, pins, choice == Choice::Nftables)
        };
        path.state = state;
        path.record_state();
        path
    }

    /// The pinned forward program, linked for both families; the nftables
    /// table an earlier agent left goes once the links are in force.
    fn start_netfilter(guard: &mut Guard, pins: &Pins) -> Result<Self, String> {
        let text = |e: crate::kernel::GuardError| Chain(&e).to_string();
        let ring = guard.take_forward_events().map_err(text)?;
        let counters = guard
            .map_descriptor(common::MAP_FORWARD_COUNTERS)
            .map_err(text)
            .and_then(|fd| counters_map(fd).map_err(|e| Chain(&e).to_string()))?;
        let linked = guard.attach_forward(pins).map_err(text)?;
        for l in &linked {
            tracing::debug!(pf = l.pf, priority = l.priority, replaced = ?l.replaced, "forward linked");
        }
        match forward::remove() {
            Ok(true) => tracing::info!(
                "removed the forward table inet {} an earlier agent left: the forward program \
                 holds the forward path now",
                forward::TABLE
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!("cannot remove the old forward table: {}", Chain(&e)),
        }
        let ring = rings::pollable(ring).map_err(|e| e.to_string())?;
        Ok(Self {
            table: ForwardTable {
                mechanism: Mechanism::Netfilter,
                unguarded: None,
                ruleset: None,
                digest: None,
            },
            log: Log::Ring(ring),
            watch: None,
            state: None,
            lent: false,
            counters: Some(counters),
            more: false,
            ticks: 0,
            changed: false,
        })
    }

    /// Both nftables tables, the notifications that say when to put the
    /// unowned one back, and NFLOG; then the forward program's links an
    /// earlier agent pinned go.
    fn start_nftables(spec: &PolicySpec, pins: &Pins, forced: bool) -> Self {
        let (owner, no_owner) = match OwnedTable::open() {
            Ok(t) => (Some(Arc::new(Mutex::new(t))), false),
            Err(e) => {
                tracing::warn!("cannot open a socket to nf_tables: {}", Chain(&e));
                (None, false)
            }
        };
        let mut table = ForwardTable {
            mechanism: Mechanism::Nftables {
                owner: owner.clone(),
                no_owner,
                forced,
            },
            unguarded: None,
            ruleset: None,
            digest: None,
        };
        table.put_tables(spec, None);
        let owned = owner.and_then(|o| own(&o, spec).then_some(o));
        if let Mechanism::Nftables {
            owner, no_owner, ..
        } = &mut table.mechanism
        {
            *no_owner = owned.is_none();
            *owner = owned;
        }
        let watch = TableWatch::subscribe()
            .and_then(rings::pollable)
            .map_err(|e| {
                tracing::error!(
                    "cannot listen to nf_tables' notifications: {e}; a flushed forward table is \
                     put back only at the next check (every {COUNTERS_EVERY} s)"
                );
            })
            .ok();
        if table.is_guarded() {
            match link::detach(pins) {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    "detached the forward program's {n} link(s): nftables holds the forward path now"
                ),
                Err(e) => {
                    tracing::warn!("cannot detach the forward program's links: {}", Chain(&e))
                }
            }
        }
        Self {
            table,
            log: Log::Nflog(listen()),
            watch,
            state: None,
            lent: false,
            counters: None,
            more: false,
            ticks: 0,
            changed: false,
        }
    }

    /// The forward path in force.
    pub(super) fn table(&self) -> &ForwardTable {
        &self.table
    }

    /// The forward path in force, for a reload to start from; no repair
    /// runs until it is handed back ([`ForwardPath::adopt`]).
    pub(super) fn lend(&mut self) -> ForwardTable {
        self.lent = true;
        self.table.clone()
    }

    /// A reload that put nothing in force hands the forward path back as it
    /// was; a change notified while it ran is put right now.
    pub(super) fn keep(&mut self) {
        self.lent = false;
        self.repair("after a refused reload");
    }

    /// The forward path a reload put in force; a change notified while it
    /// ran is put right now.
    pub(super) fn adopt(&mut self, table: ForwardTable) {
        self.table = table;
        self.lent = false;
        self.record_state();
        self.repair("after a reload");
    }

    /// Readiness of the record source or of the notifications; never when
    /// there is neither.
    pub(super) async fn ready(&self) -> io::Result<Ready> {
        if self.more {
            // Yields first: whatever else is ready is served before.
            tokio::task::yield_now().await;
            return Ok(Ready::Log);
        }
        let log = async {
            match &self.log {
                Log::Ring(ring) => ring.readable().await.map(|mut g| g.clear_ready()),
                Log::Nflog(socket) => rings::readable(socket.as_ref())
                    .await
                    .map(|mut g| g.clear_ready()),
            }
        };
        tokio::select! {
            r = log => r.map(|()| Ready::Log),
            r = rings::readable(self.watch.as_ref()) => r.map(|mut g| {
                g.clear_ready();
                Ready::Tables
            }),
        }
    }

    /// Reads what woke it: the records into `log`, under a policy in
    /// `mode`; or the notifications, putting the unowned table back when
    /// they touched it.
    pub(super) fn on_ready(&mut self, ready: Ready, log: &mut EventLog, mode: Mode) {
        match ready {
            Ready::Log => self.read_log(log, mode),
            Ready::Tables => {
                let touched = self.watch.as_ref().map(|w| w.get_ref().drain());
                match touched {
                    Some(Ok(true)) => self.repair("nf_tables said it changed"),
                    Some(Ok(false)) | None => {}
                    Some(Err(e)) => tracing::warn!("cannot read nf_tables' notifications: {e}"),
                }
            }
        }
    }

    /// Reads at most a turn's share of records ([`READS_PER_TURN`] NFLOG
    /// messages, [`RECORDS_PER_TURN`] program records); `more` says some
    /// may be left, so that the next turn reads on without waiting for the
    /// descriptor (whose readiness was cleared) to wake again.
    fn read_log(&mut self, log: &mut EventLog, mode: Mode) {
        let now = Instant::now();
        self.more = match &mut self.log {
            Log::Ring(ring) => {
                let ring = ring.get_mut();
                let mut read = 0;
                while read < RECORDS_PER_TURN {
                    let Some(item) = ring.next() else { break };
                    read += 1;
                    if let Some(d) = Dropped::decode(&item) {
                        let mode = if d.audited {
                            Mode::Audit
                        } else {
                            Mode::Enforce
                        };
                        log.record_forward(&logged(&d), mode, now);
                    }
                }
                read == RECORDS_PER_TURN
            }
            Log::Nflog(Some(socket)) => match read_nflog(socket.get_ref(), log, mode) {
                Ok(more) => more,
                Err(e) => {
                    tracing::warn!("cannot read NFLOG: {e}");
                    false
                }
            },
            Log::Nflog(None) => false,
        };
    }

    /// About once a second: every [`COUNTERS_EVERY`] ticks, the counters
    /// into `metrics`, and, for nftables, the unowned table checked (the
    /// notifications may have been lost) and put back if it changed.
    pub(super) fn tick(&mut self, metrics: &Metrics) {
        self.ticks += 1;
        if !self.ticks.is_multiple_of(COUNTERS_EVERY) {
            return;
        }
        if let Some(map) = &self.counters {
            match program_counters_of(map) {
                Ok(c) => metrics.set_forward(Some(c), self.table.is_guarded()),
                Err(e) => {
                    tracing::debug!("cannot read the forward program's counters: {}", Chain(&e))
                }
            }
            return;
        }
        self.repair("at the periodic check");
        let counters: Option<ForwardCounters> = forward::counters().ok().flatten();
        metrics.set_forward(counters, self.table.is_guarded() && counters.is_some());
    }

    /// Puts the unowned table back when its rules are not those the agent
    /// put in force (nftables only), and says so at error level.
    fn repair(&mut self, when: &str) {
        let (Some(ruleset), Some(want)) = (&self.table.ruleset, self.table.digest) else {
            return;
        };
        if self.lent {
            return;
        }
        let started = Instant::now();
        match forward::table_digest() {
            Ok(Some(digest)) if digest == want => return,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!("cannot list the forward table: {}", Chain(&e));
                return;
            }
        }
        self.changed = true;
        let put = forward::apply_ruleset(ruleset).and_then(|()| forward::table_digest());
        let outcome = match put {
            Ok(digest) => {
                self.table.digest = digest;
                self.record_state();
                "put back"
            }
            Err(e) => {
                self.table.fail(&Chain(&e).to_string());
                "it could not be put back"
            }
        };
        tracing::error!(
            forward = "removed",
            micros = started.elapsed().as_micros() as u64,
            "the forward table inet {} was flushed, removed or changed behind the agent's back \
             ({when}): {outcome}",
            forward::TABLE
        );
    }

    /// Whether the table was found changed (and put back, or not) since
    /// the last call.
    pub(super) fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Records the mechanism in force for `status`.
    fn record_state(&self) {
        if let Some(fd) = &self.state {
            if let Err(e) = record(fd.as_fd(), &self.table.state()) {
                tracing::warn!("cannot record the forward path for status: {e}");
            }
        }
    }
}

/// Whether the netfilter program should hold the forward path.
fn netfilter_wanted(choice: Choice) -> bool {
    if choice == Choice::Nftables {
        return false;
    }
    match netfilter::available() {
        Ok(true) => true,
        Ok(false) => {
            tracing::info!(
                "this kernel has no BPF netfilter programs (Linux 6.4): nftables holds the \
                 forward path"
            );
            false
        }
        Err(e) => {
            tracing::warn!(
                "cannot probe for BPF netfilter programs: {e}; nftables holds the forward path"
            );
            false
        }
    }
}

/// A forward program's record as the log takes a forwarded packet.
fn logged(d: &Dropped) -> Logged {
    Logged {
        interface: crate::text::printable(&d.interface),
        src: d.src,
        dst: d.dst,
        proto: d.proto,
        port: if d.later_fragment { 0 } else { d.port },
        prefix: String::new(),
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
fn read_nflog(socket: &NflogSocket, log: &mut EventLog, mode: Mode) -> io::Result<bool> {
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
