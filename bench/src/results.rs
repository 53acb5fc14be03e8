//! Everything one run measured, as data: each section's result, the
//! machine, and how steady the machine was meanwhile. The goals (`goals`)
//! and the report (`report`) are read off it; nothing here formats.

use std::time::Duration;

use super::{
    agent::AgentResult, groups::GroupsResult, hotpath::HotResult, machine::Machine,
    packets::PacketsResult, quiet, runtime::RuntimeResult, scale::ScaleResult, storm::StormResult,
    validate::ValidateResult, worker,
};

/// Everything one run measured; a section not run is `None`.
pub struct Results {
    pub machine: Machine,
    /// Why iptables-legacy was left out, if it was.
    pub legacy: Option<String>,
    pub health: Health,
    pub hot: Option<HotResult>,
    pub runtime: Option<RuntimeResult>,
    pub scale: Option<ScaleResult>,
    pub storm: Option<StormResult>,
    pub agent: Option<AgentResult>,
    pub packets: Option<PacketsResult>,
    pub validate: Option<ValidateResult>,
    pub groups: Option<GroupsResult>,
}

/// How steady the machine was while the bench measured: the quiet gate's
/// and the workers' counts at the end of the run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Health {
    /// Timed loops the quiet gate saw, and those it let start on a busy
    /// machine (its wait ran out).
    pub gated: u64,
    pub busy: u64,
    /// What the gate waited in all, and its limits (per loop, in all).
    pub waited: Duration,
    pub gate_per_loop: Duration,
    pub gate_total: Duration,
    /// Timed loops, those in which a connect stalled on a retransmit, and
    /// those killed past their deadline and run again.
    pub timed: u64,
    pub stalled: u64,
    pub overran: u64,
    /// The load averages at the end.
    pub load_end: String,
}

impl Health {
    /// The counts so far.
    pub fn now() -> Self {
        let (gated, busy, waited) = quiet::totals();
        let (gate_per_loop, gate_total) = quiet::limits();
        let (timed, stalled) = worker::stalls();
        Health {
            gated,
            busy,
            waited,
            gate_per_loop,
            gate_total,
            timed,
            stalled,
            overran: worker::overran(),
            load_end: super::machine::load(),
        }
    }

    /// Why this run's figures are not to be trusted, if they are not: more
    /// than one loop in 50 stalled on a retransmit, or more than one in 10
    /// started on a busy machine.
    pub fn unreliable(&self) -> Option<String> {
        (self.stalled * 50 > self.timed || self.busy * 10 > self.gated).then(|| {
            format!(
                "{} of {} timed loops stalled on a retransmit, and {} of {} started on a busy \
                 machine",
                self.stalled, self.timed, self.busy, self.gated
            )
        })
    }
}

/// The exact checks of this run that failed: the kernel's run count
/// against the connects made, and the storm's accounting.
pub fn failed_checks(r: &Results) -> Vec<String> {
    let mut failed = Vec::new();
    if r.runtime.as_ref().is_some_and(|rt| !rt.counts_exact) {
        failed.push(
            "run_cnt did not grow by exactly the connects (datagrams, requests) made".to_owned(),
        );
    }
    for (i, run) in r.storm.iter().flat_map(|st| &st.runs).enumerate() {
        if run.denied_matches() == Some(false) {
            failed.push(format!(
                "storm {}: denied {:?} is not the {} EPERMs seen",
                i + 1,
                run.denied,
                run.eperm
            ));
        }
        if run.accounted() == Some(false) {
            failed.push(format!(
                "storm {}: events received {:?} + lost {:?} != denied {:?}",
                i + 1,
                run.received,
                run.lost,
                run.denied
            ));
        }
    }
    failed
}

/// A run with every section a goal reads, for the tests of `goals` and
/// `report`.
#[cfg(test)]
pub mod sample {
    use std::time::Duration;

    use super::{Health, Results};
    use crate::{
        agent::{AgentResult, Large},
        machine::Machine,
        packets::{self, PacketsResult},
        phases::{Phases, Start},
        runtime::{Caller, RequestRow, Route, Row, RuntimeResult},
        scale::{Cell, ScaleResult},
        setup::{Arm, Kind},
        stats::Summary,
        storm::{Run, StormResult},
        validate::{Size, ValidateResult},
    };

    /// Three samples: `median` and a spread of ±`spread`.
    pub fn about(median: f64, spread: f64) -> Summary {
        Summary {
            n: 3,
            median,
            min: median - spread,
            max: median + spread,
        }
    }

    pub fn runtime() -> RuntimeResult {
        let rows = Route::ALL
            .into_iter()
            .map(|route| {
                let ns = match route {
                    Route::Allowed4 => 968.0,
                    Route::Denied4 => 729.5,
                    _ => 80.0,
                };
                // The floor of the connect4 and egress routes.
                let floor = match route {
                    Route::Unprotected6
                    | Route::Allowed6
                    | Route::Denied6
                    | Route::Allowed4AgentStopped => None,
                    _ => Some(about(20.0, 1.0)),
                };
                Row {
                    route,
                    ns: about(ns, 10.0),
                    all_ns: about(ns * 1.5, 10.0),
                    share: about(0.05, 0.01),
                    runs: 1_000,
                    floor_ns: floor,
                }
            })
            .collect();
        let requests = Caller::ALL
            .into_iter()
            .map(|caller| {
                let judged = caller == Caller::Judged;
                RequestRow {
                    caller,
                    per_request_ns: about(if judged { 21_000.0 } else { 20_000.0 }, 500.0),
                    vs_whole: judged.then(|| about(1.05, 0.01)),
                    msg_ns: judged.then(|| about(450.0, 20.0)),
                    msg_per_request: about(if judged { 1.0 } else { 0.0 }, 0.0),
                    sockops_ns: about(60.0, 5.0),
                    sockops_runs: 9,
                    all_ns: about(if judged { 700.0 } else { 250.0 }, 20.0),
                    requests: 30_000,
                }
            })
            .collect();
        RuntimeResult {
            rows,
            requests,
            rounds: 3,
            counts_exact: true,
            stats_how: "`BPF_ENABLE_STATS`",
            programs: vec!["connect4".to_owned(), "egress".to_owned()],
        }
    }

    /// A start of `ready_ms` whose phases fill `start_ms` but 2 ms.
    fn start(ready_ms: f64, start_ms: f64) -> Start {
        let part = (start_ms - 2.0) / 5.0;
        // Parse and open, verifier and maps side by side: five parts on the
        // critical path.
        Start {
            ms: [part, part, part, part, part, part, part],
            start_ms,
            ready_ms,
        }
    }

    pub fn large() -> Large {
        Large {
            uids: 100_000,
            ready_ms: about(171.0, 5.0),
            phases: Phases::of(&[start(171.0, 160.0), start(176.0, 165.0)]),
            nft_ms: about(1_000.0, 50.0),
            reload_us: about(105_000.0, 5_000.0),
            reload_wall_ms: about(120.0, 5.0),
            idle_rss_kib: about(20.4 * 1024.0, 100.0),
            reloaded_rss_kib: about(21.9 * 1024.0, 100.0),
            hwm_kib: about(63.0 * 1024.0, 100.0),
            worst_during_ms: about(40.0, 5.0),
            outside_ms: about(20.0, 5.0),
            during: 10,
            delivered_during: 9,
            missing: 0,
        }
    }

    fn cell(n: u32, kind: Kind, ratio: f64) -> Cell {
        Cell {
            n,
            kind,
            load_time: Duration::from_millis(10),
            hot: about(50_000.0, 1_000.0),
            hot_ratio: about(1.0, 0.05),
            protected: about(50_000.0 * ratio, 1_000.0),
            protected_ratio: about(ratio, 0.05),
        }
    }

    pub fn results() -> Results {
        let storm_run = Run {
            secs: 10.0,
            window_s: 10.5,
            eperm: 3_000_000,
            denied: Some(3_000_000),
            received: Some(2_999_000),
            lost: Some(1_000),
            cpu_s: 0.85,
            idle_rss_kib: 9_700,
            hwm_kib: 33_000,
        };
        Results {
            machine: Machine {
                cpus: 2,
                model: "a CPU".to_owned(),
                mem_gib: 1.0,
                virtual_machine: true,
                kernel: "6.1".to_owned(),
                iptables: String::new(),
                iptables_legacy: String::new(),
                nft: String::new(),
                commit: "abc1234".to_owned(),
                date: "2026-01-01 00:00 UTC".to_owned(),
                load_start: "0.1 0.1 0.1".to_owned(),
            },
            legacy: None,
            health: Health {
                gated: 100,
                timed: 90,
                ..Health::default()
            },
            hot: None,
            runtime: Some(runtime()),
            scale: Some(ScaleResult {
                sizes: vec![1, 100_000],
                kinds: vec![Kind::ImdsGuard, Kind::Nftables],
                base_hot: about(50_000.0, 1_000.0),
                base_protected: about(50_000.0, 1_000.0),
                cells: vec![
                    cell(1, Kind::ImdsGuard, 0.806),
                    cell(1, Kind::Nftables, 0.917),
                    cell(100_000, Kind::ImdsGuard, 0.97),
                    cell(100_000, Kind::Nftables, 0.93),
                ],
                agents: Vec::new(),
                rounds: 3,
            }),
            storm: Some(StormResult {
                procs: 4,
                duration: Duration::from_secs(10),
                runs: vec![storm_run],
            }),
            agent: Some(AgentResult {
                runs: 2,
                reloads: 2,
                idle: Duration::from_secs(1),
                ready_ms: about(150.0, 5.0),
                reload_us: about(20_000.0, 1_000.0),
                reload_wall_ms: about(30.0, 2.0),
                idle_rss_kib: about(9.4 * 1024.0, 50.0),
                phases: Phases::of(&[start(150.0, 140.0)]),
                large: Some(large()),
            }),
            packets: Some(packets()),
            validate: Some(ValidateResult {
                sizes: vec![Size {
                    uids: 131_072,
                    wall_ms: about(98.0, 3.0),
                    net_ms: about(96.0, 3.0),
                }],
                base_ms: about(2.0, 0.1),
                exponent: Some(1.0),
                rounds: 3,
            }),
            groups: None,
        }
    }

    /// Section 6: the guard at 93% of the empty programs' datagram rate.
    pub fn packets() -> PacketsResult {
        let rows = packets::ARMS
            .into_iter()
            .map(|arm| {
                let (vs_none, vs_floor) = match arm {
                    Arm::Baseline => (1.0, Some(1.05)),
                    Arm::Control => (0.99, Some(1.04)),
                    Arm::Guarded(Kind::Floor) => (0.95, None),
                    _ => (0.88, Some(0.93)),
                };
                packets::Row {
                    arm,
                    dgram: about(500_000.0 * vs_none, 10_000.0),
                    dgram_ratio: about(vs_none, 0.02),
                    dgram_floor_ratio: vs_floor.map(|r| about(r, 0.02)),
                    stream: about(1e9, 1e7),
                    stream_ratio: about(1.0, 0.02),
                }
            })
            .collect();
        PacketsResult {
            rows,
            rounds: 3,
            datagram: 64,
        }
    }

    /// [`results`] with no section run.
    pub fn nothing() -> Results {
        Results {
            hot: None,
            runtime: None,
            scale: None,
            storm: None,
            agent: None,
            packets: None,
            validate: None,
            groups: None,
            ..results()
        }
    }
}
