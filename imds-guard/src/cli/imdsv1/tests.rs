use imds_guard_common::{req_version, verdict};

use super::*;
use crate::kernel::usage::UsageRow;

struct Fake;

impl Names for Fake {
    fn cgroup_path(&self, id: u64) -> Option<String> {
        match id {
            10 => Some("/system.slice/legacy.service".to_owned()),
            11 => Some("/user.slice/user-1000.slice/session-3.scope".to_owned()),
            12 => Some("/kubepods.slice/kubepods-pod1234.slice/cri-containerd-ab.scope".to_owned()),
            _ => None,
        }
    }

    fn pod(&self, path: &str) -> Option<String> {
        path.contains("pod1234").then(|| "default/web".to_owned())
    }

    fn user(&self, uid: u32) -> Option<String> {
        (uid == 1001).then(|| "legacy".to_owned())
    }
}

fn row(cgroup_id: u64, uid: u32, version: u8, v: u8, count: u64, last_ns: u64) -> UsageRow {
    UsageRow {
        cgroup_id,
        uid,
        entry: 1,
        version,
        verdict: v,
        count,
        last_ns,
    }
}

const SEC: u64 = 1_000_000_000;
/// 2026-12-07T18:00:00Z.
const WALL: Micros = 1_796_666_400_000_000;

fn census(rows: Vec<UsageRow>, capacity: u32) -> Census {
    Census { rows, capacity }
}

#[test]
fn names_the_v1_callers_by_unit_pod_and_user_and_leaves_out_the_v2_ones() {
    let c = census(
        vec![
            row(10, 1001, req_version::V1, verdict::ALLOWED, 5, 100 * SEC),
            row(10, 1001, req_version::V1, verdict::DENIED, 2, 150 * SEC),
            row(10, 1001, req_version::V2, verdict::ALLOWED, 7, 190 * SEC),
            row(11, 1002, req_version::V2, verdict::ALLOWED, 3, 100 * SEC),
            row(
                11,
                1002,
                req_version::TOKEN_PUT,
                verdict::ALLOWED,
                1,
                100 * SEC,
            ),
            row(12, 0, req_version::V1, verdict::DENIED, 9, 190 * SEC),
            row(99, 1003, req_version::V1, verdict::ALLOWED, 1, 200 * SEC),
        ],
        4096,
    );
    let r = build(&c, &Fake, 200 * SEC, WALL, Some(WALL - 3_600_000_000));
    assert_eq!(r.callers.len(), 3, "{r:?}");
    assert_eq!(r.others, 1, "the v2-only caller is counted, not named");
    assert!(!r.full);
    // The most IMDSv1 first: the pod (9), the unit (7), the gone cgroup.
    assert_eq!(r.callers[0].pod.as_deref(), Some("default/web"));
    let unit = &r.callers[1];
    assert_eq!(unit.unit.as_deref(), Some("legacy.service"));
    assert_eq!((unit.v1_allowed, unit.v1_refused, unit.v2), (5, 2, 7));
    // Its last IMDSv1 request 50 s before now.
    assert_eq!(format_rfc3339(unit.last_v1), "2026-12-07T17:59:10Z");
    let text = r.text();
    assert!(
        text.contains(
            "  legacy.service (/system.slice/legacy.service) as legacy (uid 1001): IMDSv1 7 (5 \
             allowed, 2 refused), IMDSv2 7, last IMDSv1 at 2026-12-07T17:59:10Z"
        ),
        "{text}"
    );
    assert!(text.contains("pod default/web (/kubepods.slice/"), "{text}");
    assert!(text.contains("cgroup id 99 (gone) as uid 1003"), "{text}");
    assert!(!text.contains("1002"), "the v2 caller is not named: {text}");
    assert!(text.contains("since 2026-12-07T17:00:00Z"), "{text}");
    assert!(!text.contains("census is full"), "{text}");
    assert_eq!(r.status_line(), "3 (imds-guard report imdsv1 names them)");
    let json = r.json();
    assert_eq!(json["callers"][1]["unit"], "legacy.service");
    assert_eq!(json["callers"][1]["user"], "legacy");
    assert_eq!(json["callers"][1]["v1"], 7);
    assert_eq!(json["others"], 1);
}

#[test]
fn says_none_was_seen_and_when_the_census_is_full() {
    let c = census(
        vec![row(11, 1002, req_version::V2, verdict::ALLOWED, 3, SEC)],
        1,
    );
    let r = build(&c, &Fake, 2 * SEC, WALL, Some(WALL));
    assert!(r.callers.is_empty());
    assert!(r.full);
    let text = r.text();
    assert!(
        text.starts_with(
            "No caller has sent an IMDSv1 request (one without the token header) since \
             2026-12-07T18:00:00Z."
        ),
        "{text}"
    );
    assert!(text.contains("The census is full (1 entries)"), "{text}");
    assert_eq!(
        r.status_line(),
        "none seen since 2026-12-07T18:00:00Z (census full: a rare caller may be missing)"
    );
}

#[test]
fn the_unit_is_the_deepest_service_or_scope() {
    assert_eq!(
        unit_of("/system.slice/docker.service/ctr").as_deref(),
        Some("docker.service")
    );
    assert_eq!(
        unit_of("/user.slice/user-1000.slice/session-3.scope").as_deref(),
        Some("session-3.scope")
    );
    assert_eq!(unit_of("/test-cgroup/child"), None);
}
