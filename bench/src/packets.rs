//! Section 6, per-packet cost: the `cgroup_skb/egress` program runs for
//! every packet a socket of the guarded cgroup sends, so it is measured
//! where packets are many and cheap: small UDP datagrams on one connected
//! socket (packets per second), and where they are few and large: one TCP
//! connection streaming (bytes per second). Both go out of a device (a
//! veth pair, `wire`) to an address no policy protects, as uid 65534, with
//! the guard, with the empty programs of the floor (`floor`) and with no
//! program at all, in rounds like every other comparison, with a second
//! unguarded namespace as the A/A control. The egress program's run time
//! per packet on the same datagrams is section 2's (the accounting it
//! needs would slow the programmed configurations and not the others).
//!
//! The agent's nftables table in the forward hook is not measured: it
//! matches only forwarded packets to protected destinations, and no packet
//! here is forwarded.

use imds_guard_e2e::NOBODY;

use super::{
    cli::Settings,
    flowsink::{DGRAM_V4, STREAM_V4},
    hotpath,
    job::{Mode, Tally},
    setup::{Arm, Kind, PolicyFile, Setup, verify},
    stats::{Expect, Summary, check, interleave, paired},
    wire::{self, Wire},
    worker::run_job,
};

/// Bytes per write() of the stream.
pub const CHUNK: usize = 128 * 1024;

pub struct Row {
    pub arm: Arm,
    /// Datagrams per second, and against no guard in the same round.
    pub dgram: Summary,
    pub dgram_ratio: Summary,
    /// Datagrams per second against the empty programs' in the same round
    /// (the floor's own row has none).
    pub dgram_floor_ratio: Option<Summary>,
    /// Stream bytes per second, and against no guard in the same round.
    pub stream: Summary,
    pub stream_ratio: Summary,
}

pub struct PacketsResult {
    pub rows: Vec<Row>,
    pub rounds: usize,
    pub datagram: usize,
}

impl PacketsResult {
    /// The row of `arm`.
    pub fn row(&self, arm: Arm) -> Option<&Row> {
        self.rows.iter().find(|r| r.arm == arm)
    }
}

/// The configurations, in the table's order: the baseline first (every
/// ratio is to it), the floor before the guard.
pub const ARMS: [Arm; 4] = [
    Arm::Baseline,
    Arm::Control,
    Arm::Guarded(Kind::Floor),
    Arm::Guarded(Kind::ImdsGuard),
];

pub fn run(s: &Settings) -> anyhow::Result<PacketsResult> {
    let policy = PolicyFile::new(hotpath::POLICY);
    // (wire, configuration): a tuple drops in field order, so the far
    // side's receivers close before the configuration goes.
    let mut setups = Vec::new();
    for arm in ARMS {
        let setup = Setup::new(arm.kind(), &policy)?;
        setups.push((Wire::new(&setup.netns)?, setup));
    }
    let checks: Vec<_> = setups.iter().map(|(_, st)| (st, 0, NOBODY)).collect();
    verify(&checks)?;
    // Case 2i: datagrams in setup i; 2i + 1: the stream.
    let tallies = interleave("packets", 2 * setups.len(), s.rounds, |case| {
        let (_, setup) = &setups[case / 2];
        let label = ARMS[case / 2].label();
        if case % 2 == 0 {
            let job = setup
                .job(NOBODY, DGRAM_V4, s.timing)
                .mode(Mode::Datagrams { size: s.datagram });
            let before = wire::sent(&setup.netns)?;
            let t = run_job(&job)?;
            let sent = wire::sent(&setup.netns)? - before;
            check(label, &t, Expect::Connected)?;
            anyhow::ensure!(
                sent >= t.connects,
                "{label}: {} datagrams sent, but {sent} packets went out of the wire's device",
                t.connects
            );
            Ok(t)
        } else {
            let job = setup
                .job(NOBODY, STREAM_V4, s.timing)
                .mode(Mode::Stream { chunk: CHUNK });
            let t = run_job(&job)?;
            check(label, &t, Expect::Connected)?;
            Ok(t)
        }
    })?;
    let per =
        |case: usize, f: fn(&Tally) -> f64| -> Vec<f64> { tallies[case].iter().map(f).collect() };
    let (base_dgram, base_stream) = (per(0, Tally::rate), per(1, Tally::byte_rate));
    let floor = ARMS
        .iter()
        .position(|a| *a == Arm::Guarded(Kind::Floor))
        .map(|i| per(2 * i, Tally::rate));
    let rows = ARMS
        .into_iter()
        .enumerate()
        .map(|(i, arm)| {
            let dgram = per(2 * i, Tally::rate);
            let stream = per(2 * i + 1, Tally::byte_rate);
            Row {
                arm,
                dgram: Summary::of(&dgram),
                dgram_ratio: paired(&dgram, &base_dgram),
                dgram_floor_ratio: floor
                    .as_ref()
                    .filter(|_| arm != Arm::Guarded(Kind::Floor))
                    .map(|f| paired(&dgram, f)),
                stream: Summary::of(&stream),
                stream_ratio: paired(&stream, &base_stream),
            }
        })
        .collect();
    Ok(PacketsResult {
        rows,
        rounds: s.rounds,
        datagram: s.datagram,
    })
}
