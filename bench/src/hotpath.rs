//! Section 1, the hot path: what every connect on a guarded host pays when
//! its destination is not protected (loopback in the bench namespace), for
//! no guard, imds-guard, AWS's iptables rule and the nftables rules.
//!
//! The policy is the shipped default, root only: for it `imds-guard render
//! --iptables --format commands` prints exactly the line of the AWS
//! documentation (`--match owner ! --uid-owner root --jump REJECT`).

use std::time::Duration;

use imds_guard_e2e::NOBODY;

use super::{
    cli::Settings,
    firewall::Xt,
    setup::{Arm, DeniedConnect, Form, Kind, PolicyFile, Setup, verify},
    sink::PLAIN_V4,
    stats::{Expect, Summary, check, interleave, paired, rates},
    worker::run_job,
};

pub const POLICY: &str = "[allow]\nusers = [\"root\"]\n";

pub struct Row {
    pub arm: Arm,
    pub rate: Summary,
    /// To "no guard", paired by round.
    pub ratio: Summary,
    pub load_time: Duration,
    /// What a denied connect (uid 65534 to 169.254.169.254:80) did.
    pub denied: DeniedConnect,
}

pub struct HotResult {
    pub rows: Vec<Row>,
    pub rounds: usize,
}

pub fn run(s: &Settings, legacy: bool) -> anyhow::Result<HotResult> {
    let policy = PolicyFile::new(POLICY);
    // A second "no guard", measured like the others: its ratio to the
    // first is this machine's noise floor (an A/A test).
    let mut arms = vec![
        Arm::Baseline,
        Arm::Control,
        Arm::Guarded(Kind::ImdsGuard),
        Arm::Guarded(Kind::Iptables(Xt::Nft, Form::Commands)),
        Arm::Guarded(Kind::Nftables),
    ];
    if legacy {
        arms.push(Arm::Guarded(Kind::Iptables(Xt::Legacy, Form::Commands)));
    }
    let setups = arms
        .iter()
        .map(|arm| Setup::new(arm.kind(), &policy))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let checks: Vec<_> = setups.iter().map(|st| (st, 0, NOBODY)).collect();
    let denied = verify(&checks)?;
    let tallies = interleave("hot path", setups.len(), s.rounds, |i| {
        let t = run_job(&setups[i].job(NOBODY, PLAIN_V4, s.timing))?;
        check(setups[i].kind.name(), &t, Expect::Connected)?;
        Ok(t)
    })?;
    let rates = rates(&tallies);
    let rows = setups
        .iter()
        .zip(arms)
        .zip(&rates)
        .zip(denied)
        .map(|(((setup, arm), r), denied)| Row {
            denied,
            arm,
            rate: Summary::of(r),
            ratio: paired(r, &rates[0]),
            load_time: setup.load_time,
        })
        .collect();
    Ok(HotResult {
        rows,
        rounds: s.rounds,
    })
}
