//! Section 6, per-packet cost: the `cgroup_skb/egress` program runs for
//! every packet a socket of the guarded cgroup sends, so it is measured
//! where packets are many and cheap: small UDP datagrams on one connected
//! socket (packets per second), and where they are few and large: one TCP
//! connection streaming (bytes per second). Both go to loopback addresses
//! no policy protects, as uid 65534, with and without the guard, in
//! rounds like every other comparison, with a second unguarded namespace
//! as the A/A control.
//!
//! The agent's nftables table in the forward hook is not measured: it
//! matches only forwarded packets to protected destinations, and no packet
//! here is forwarded.

use imds_guard_e2e::NOBODY;

use super::{
    cli::Settings,
    flowsink::{DGRAM_V4, FlowSink, STREAM_V4},
    hotpath,
    job::{Mode, Tally},
    setup::{Arm, Kind, PolicyFile, Setup, verify},
    stats::{Expect, Summary, check, interleave, paired},
    worker::run_job,
};

/// Bytes per write() of the stream.
pub const CHUNK: usize = 128 * 1024;

pub struct Row {
    pub arm: Arm,
    /// Datagrams per second, and against no guard in the same round.
    pub dgram: Summary,
    pub dgram_ratio: Summary,
    /// Stream bytes per second, and against no guard in the same round.
    pub stream: Summary,
    pub stream_ratio: Summary,
}

pub struct PacketsResult {
    pub rows: Vec<Row>,
    pub rounds: usize,
    pub datagram: usize,
}

pub fn run(s: &Settings) -> anyhow::Result<PacketsResult> {
    let policy = PolicyFile::new(hotpath::POLICY);
    let arms = [Arm::Baseline, Arm::Control, Arm::Guarded(Kind::ImdsGuard)];
    // (receivers, configuration): a tuple drops in field order, so the
    // receivers' sockets close before their namespace goes.
    let mut setups = Vec::new();
    for arm in arms {
        let setup = Setup::new(arm.kind(), &policy)?;
        setups.push((FlowSink::start(&setup.netns)?, setup));
    }
    let checks: Vec<_> = setups.iter().map(|(_, st)| (st, 0, NOBODY)).collect();
    verify(&checks)?;
    // Case 2i: datagrams in setup i; 2i + 1: the stream.
    let tallies = interleave("packets", 2 * setups.len(), s.rounds, |case| {
        let (_, setup) = &setups[case / 2];
        let job = if case % 2 == 0 {
            setup
                .job(NOBODY, DGRAM_V4, s.timing)
                .mode(Mode::Datagrams { size: s.datagram })
        } else {
            setup
                .job(NOBODY, STREAM_V4, s.timing)
                .mode(Mode::Stream { chunk: CHUNK })
        };
        let t = run_job(&job)?;
        check(arms[case / 2].label(), &t, Expect::Connected)?;
        Ok(t)
    })?;
    let per =
        |case: usize, f: fn(&Tally) -> f64| -> Vec<f64> { tallies[case].iter().map(f).collect() };
    let (base_dgram, base_stream) = (per(0, Tally::rate), per(1, Tally::byte_rate));
    let rows = (0..setups.len())
        .zip(arms)
        .map(|(i, arm)| {
            let dgram = per(2 * i, Tally::rate);
            let stream = per(2 * i + 1, Tally::byte_rate);
            Row {
                arm,
                dgram: Summary::of(&dgram),
                dgram_ratio: paired(&dgram, &base_dgram),
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
