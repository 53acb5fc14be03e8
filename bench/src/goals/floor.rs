//! The goals of issue 21 against the floor: the guard's run time on
//! traffic it does not protect, next to an empty program's of the same
//! type in the same rounds (section 2), and the small-datagram rate next
//! to the empty programs' cgroup's (section 6, reported, not judged);
//! and what request-level judgement costs a request (section 2,
//! reported).

use super::{
    Bound, DATAGRAM_RATE_MIN, Goal, GoalId, HOT_OVER_FLOOR_NS, Judged, PACKET_OVER_FLOOR_NS, Unit,
    figure,
};
use crate::{
    results::Results,
    runtime::{Caller, Route},
    setup::{Arm, Kind},
    stats::{ns, ns_diff, pct},
};

/// Whose figure the floor's is, in a shortfall line.
const EMPTY: &str = "the empty program's";

/// [`GoalId::HotConnectFloor`] or [`GoalId::PacketFloor`]: the route's
/// program within its margin of the empty program's.
pub(super) fn run_time_row(id: GoalId, r: &Results) -> Judged {
    let rt = r.runtime.as_ref().ok_or("section 2 did not run")?;
    let (route, by) = match id {
        GoalId::HotConnectFloor => (Route::Unprotected4, HOT_OVER_FLOOR_NS),
        GoalId::PacketFloorRequests => (Route::Datagram4Requests, PACKET_OVER_FLOOR_NS),
        _ => (Route::Datagram4, PACKET_OVER_FLOOR_NS),
    };
    let row = rt.row(route).ok_or("the route was not timed")?;
    let floor = row.floor_ns.ok_or("the empty program was not timed")?;
    Ok(Goal {
        id,
        measured: format!(
            "{} {}; {EMPTY} {}: {}",
            route.program(),
            row.ns.show(ns),
            floor.show(ns),
            ns_diff(row.ns.median - floor.median)
        ),
        checks: vec![figure(
            route.program(),
            row.ns,
            Unit::Ns,
            Bound::Over {
                whose: EMPTY,
                figure: floor,
                by,
            },
        )],
    })
}

/// [`GoalId::DatagramRate`]: the guard's datagram rate against the empty
/// programs', with the A/A control's ratio for this machine's noise.
pub(super) fn datagram_rate_row(r: &Results) -> Judged {
    let p = r.packets.as_ref().ok_or("section 6 did not run")?;
    let guard = p
        .row(Arm::Guarded(Kind::ImdsGuard))
        .ok_or("imds-guard not measured")?;
    let ratio = guard
        .dgram_floor_ratio
        .ok_or("the empty programs were not measured")?;
    let control = p.row(Arm::Control).map(|c| c.dgram_ratio);
    Ok(Goal {
        id: GoalId::DatagramRate,
        measured: format!(
            "{}; against no program {}; A/A control {}",
            ratio.show(pct),
            guard.dgram_ratio.show(pct),
            control.map_or_else(|| "not measured".to_owned(), |c| c.show(pct))
        ),
        checks: vec![figure(
            "datagram rate against the empty programs'",
            ratio,
            Unit::Share,
            Bound::AtLeast(DATAGRAM_RATE_MIN),
        )],
    })
}

/// [`GoalId::RequestCost`]: the path-judged request's time against the
/// whole-service one's in the same rounds, and `req_msg`'s run time per
/// request; reported with no bound (the issue gives none).
pub(super) fn request_row(r: &Results) -> Judged {
    let rt = r.runtime.as_ref().ok_or("section 2 did not run")?;
    let judged = rt
        .request(Caller::Judged)
        .ok_or("no path-judged request timed")?;
    let whole = rt
        .request(Caller::WholeService)
        .ok_or("no whole-service request timed")?;
    let ratio = judged
        .vs_whole
        .ok_or("no ratio to the whole-service request")?;
    let msg = judged.msg_ns.ok_or("req_msg never ran")?;
    Ok(Goal {
        id: GoalId::RequestCost,
        measured: format!(
            "{} of the whole-service request's time ({} against {}); req_msg {} per run, \
             req_sockops {} per run",
            ratio.show(pct),
            judged.per_request_ns.show(ns),
            whole.per_request_ns.show(ns),
            msg.show(ns),
            judged.sockops_ns.show(ns)
        ),
        checks: vec![
            figure(
                "time per request against the whole-service request's",
                ratio,
                Unit::Share,
                Bound::Reported,
            ),
            figure("req_msg per run", msg, Unit::Ns, Bound::Reported),
        ],
    })
}
