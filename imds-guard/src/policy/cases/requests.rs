//! The cases of request-level scope (issue 23): which entry decides at
//! connect, as in [`super::CASES`], and what that entry lets the caller
//! send ([`RequestScope`]). The unit tests hold [`Policy::decide_process`]
//! and [`Requests::compile`] to them (the flags row the programs look up
//! for the deciding entry is the expected scope's); the kernel side's
//! privileged test can drive them through the loaded programs.

use super::{Case, CgroupAt, Expected, allow, container, deny, host};
use crate::policy::{Reason, requests::RequestScope};

/// Rule sets beside whole-service allows, `[imdsv2]` and attribution.
/// Entries: 1 uid 1001, 2 gid 1500 (`[allow]`), 3 uid 2001 (host only,
/// `[allow.host]`), 4 uid 3001, 5 `{base}/agents/**` (`[requests.
/// monitoring]`), 6 gid 3500 (`[requests.legacy]`, IMDSv1 allowed), 7 uid
/// 4004 (`[deny]`). Default: deny. IMDSv2 required but for uid 1001.
pub const REQUESTS: &str = r#"
[allow]
uids = [1001]
gids = [1500]

[allow.host]
uids = [2001]

[requests.monitoring]
uids = [3001]
cgroups = ["{base}/agents/**"]
rules = ["GET /latest/meta-data/placement/", "PUT /latest/api/token"]

[requests.legacy]
gids = [3500]
imdsv2 = "optional"
rules = ["GET /latest/meta-data/instance-id"]

[deny]
uids = [4004]

[imdsv2]
required = true
exempt = { uids = [1001] }

[attribution]
whole_service = true
"#;

/// A case of [`REQUESTS`]: the decision, and the scope of its entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestCase {
    pub case: Case,
    /// `None` for a caller refused at connect.
    pub scope: Option<RequestScope>,
}

const fn case(name: &'static str, caller: super::Caller, expected: Expected) -> Case {
    Case {
        name,
        policy: REQUESTS,
        caller,
        expected,
    }
}

const fn whole(v2_required: bool) -> Option<RequestScope> {
    Some(RequestScope {
        set: None,
        v2_required,
        attribute: true,
    })
}

const fn set(index: usize, v2_required: bool) -> Option<RequestScope> {
    Some(RequestScope {
        set: Some(index),
        v2_required,
        attribute: false,
    })
}

pub const REQUEST_CASES: [RequestCase; 8] = [
    RequestCase {
        case: case(
            "an exempt uid has the whole service, recorded",
            host(1001, 1001),
            allow(Reason::UidAllowed, 1, Some(1001)),
        ),
        scope: whole(false),
    },
    RequestCase {
        case: case(
            "a gid of [allow] has the whole service, IMDSv2 required",
            host(1002, 1500),
            allow(Reason::GidAllowed, 2, Some(1500)),
        ),
        scope: whole(true),
    },
    RequestCase {
        case: case(
            "[allow.host] on the host: the whole service, IMDSv2 required",
            host(2001, 2001),
            allow(Reason::UidAllowed, 3, Some(2001)),
        ),
        scope: whole(true),
    },
    RequestCase {
        case: case(
            "a uid of a rule set has its requests only",
            host(3001, 3001),
            allow(Reason::UidAllowed, 4, Some(3001)),
        ),
        scope: set(0, true),
    },
    RequestCase {
        case: case(
            "a cgroup of a rule set, in a container, has its requests only",
            container(5000, 5000).cgroup(CgroupAt::Below("agents/cw")),
            allow(Reason::CgroupAllowed, 5, None),
        ),
        scope: set(0, true),
    },
    RequestCase {
        case: case(
            "a rule set's own imdsv2 wins over [imdsv2] required",
            host(5001, 3500),
            allow(Reason::GidAllowed, 6, Some(3500)),
        ),
        scope: set(1, false),
    },
    RequestCase {
        case: case(
            "the uid's rule set decides before a gid of [allow] (uids first)",
            host(3001, 1500),
            allow(Reason::UidAllowed, 4, Some(3001)),
        ),
        scope: set(0, true),
    },
    RequestCase {
        case: case(
            "a denied uid in a rule set's cgroup is refused at connect",
            host(4004, 4004).cgroup(CgroupAt::Below("agents/x")),
            deny(Reason::UidDenied, 7, Some(4004)),
        ),
        scope: None,
    },
];
