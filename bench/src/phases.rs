//! An agent's start taken apart: the phases its `ready` record gives, in
//! milliseconds (`parse_ms`, `open_ms`, ...: see the agent's
//! `daemon/phases.rs`), and what the start spent outside them.
//!
//! Reading the policy and opening the object run side by side in the
//! agent, as do the verifier and the policy's writes; the rest follow one
//! another. So the phases' critical path is the longer of each pair plus
//! the others, and "within the start, outside the phases" is the agent's
//! own `start_ms` less that path; "before the start" is spawn to `ready`,
//! as the bench timed it, less `start_ms` (exec, the runtime, logging).

use imds_guard_e2e::field;
use serde_json::Value;

use super::stats::Summary;

/// One phase of the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Parse,
    Open,
    Verifier,
    Maps,
    Classify,
    Attach,
    Forward,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Self::Parse,
        Self::Open,
        Self::Verifier,
        Self::Maps,
        Self::Classify,
        Self::Attach,
        Self::Forward,
    ];

    /// The `ready` record's field.
    pub fn field(self) -> &'static str {
        match self {
            Self::Parse => "parse_ms",
            Self::Open => "open_ms",
            Self::Verifier => "verifier_ms",
            Self::Maps => "maps_ms",
            Self::Classify => "classify_ms",
            Self::Attach => "attach_ms",
            Self::Forward => "forward_ms",
        }
    }

    /// The row's label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Parse => "read, parse, validate and resolve the policy",
            Self::Open => "… beside it: read BTF, create the maps",
            Self::Verifier => "load the programs (the verifier)",
            Self::Maps => "… beside it: write the policy into the maps",
            Self::Classify => "classify the cgroups",
            Self::Attach => "attach and pin",
            Self::Forward => "write the forward table",
        }
    }
}

/// One start, from its `ready` record and the bench's spawn-to-ready.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Start {
    /// In [`Phase::ALL`]'s order.
    pub ms: [f64; 7],
    /// The agent's own `start_ms`.
    pub start_ms: f64,
    /// Spawn to `ready`, as the bench saw it.
    pub ready_ms: f64,
}

impl Start {
    /// The phases of `ready`; `None` when it does not give them all.
    pub fn of(ready: &Value, ready_ms: f64) -> Option<Self> {
        let number = |name: &str| field(ready, name).and_then(Value::as_f64);
        let mut ms = [0.0; 7];
        for (slot, phase) in ms.iter_mut().zip(Phase::ALL) {
            *slot = number(phase.field())?;
        }
        Some(Start {
            ms,
            start_ms: number("start_ms")?,
            ready_ms,
        })
    }

    pub fn phase(&self, phase: Phase) -> f64 {
        Phase::ALL
            .iter()
            .position(|p| *p == phase)
            .map_or(0.0, |i| self.ms[i])
    }

    /// The phases' critical path: the longer of each pair that runs side
    /// by side, and the others.
    pub fn critical_ms(&self) -> f64 {
        let p = |phase| self.phase(phase);
        p(Phase::Parse).max(p(Phase::Open))
            + p(Phase::Verifier).max(p(Phase::Maps))
            + p(Phase::Classify)
            + p(Phase::Attach)
            + p(Phase::Forward)
    }
}

/// The phases of several starts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Phases {
    /// In [`Phase::ALL`]'s order.
    pub by_phase: Vec<(Phase, Summary)>,
    /// Within the agent's start, outside the phases' critical path.
    pub unphased: Summary,
    /// Spawn to `ready` less the agent's `start_ms`.
    pub before: Summary,
}

impl Phases {
    pub fn of(starts: &[Start]) -> Self {
        let summary =
            |f: &dyn Fn(&Start) -> f64| Summary::of(&starts.iter().map(f).collect::<Vec<_>>());
        Phases {
            by_phase: Phase::ALL
                .into_iter()
                .map(|phase| (phase, summary(&|s| s.phase(phase))))
                .collect(),
            unphased: summary(&|s| s.start_ms - s.critical_ms()),
            before: summary(&|s| s.ready_ms - s.start_ms),
        }
    }

    pub fn phase(&self, phase: Phase) -> Option<Summary> {
        self.by_phase
            .iter()
            .find(|(p, _)| *p == phase)
            .map(|(_, s)| *s)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record() -> Value {
        json!({"fields": {"ready": true, "parse_ms": 30.0, "open_ms": 40.0,
            "verifier_ms": 60.0, "maps_ms": 50.0, "classify_ms": 1.0, "attach_ms": 5.0,
            "forward_ms": 4.0, "start_ms": 115.0}})
    }

    #[test]
    fn a_start_is_taken_apart_along_its_critical_path() {
        let s = Start::of(&record(), 125.0).expect("every phase");
        assert_eq!(s.phase(Phase::Maps), 50.0);
        // 40 (open, beside parse) + 60 (verifier, beside the writes) + 1 + 5 + 4.
        assert_eq!(s.critical_ms(), 110.0);
        let p = Phases::of(&[s]);
        assert_eq!(p.unphased.median, 5.0);
        assert_eq!(p.before.median, 10.0);
        assert_eq!(p.phase(Phase::Verifier).map(|s| s.median), Some(60.0));
        assert_eq!(p.by_phase.len(), Phase::ALL.len());
    }

    #[test]
    fn a_record_without_every_phase_gives_none() {
        let mut r = record();
        r["fields"]
            .as_object_mut()
            .expect("fields")
            .remove("classify_ms");
        assert_eq!(Start::of(&r, 1.0), None);
        assert_eq!(Start::of(&json!({"ready": true}), 1.0), None);
    }
}
