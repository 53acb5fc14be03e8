//! The request counters (issue 23) in the exposition: requests judged by
//! version and verdict, refusals by reason, records lost.

use std::fmt::{self, Write as _};

use imds_guard_common::req_version;

use super::{Exposition, header};
use crate::policy::requests::{REASONS, reason_name};

/// Versions as the `version` label writes them.
const VERSIONS: [(u8, &str); 4] = [
    (req_version::UNPARSED, "unparsed"),
    (req_version::V1, "v1"),
    (req_version::V2, "v2"),
    (req_version::TOKEN_PUT, "token_put"),
];

impl Exposition<'_> {
    pub(super) fn requests(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.0.requests;
        header(
            f,
            "imds_guard_requests_total",
            "counter",
            "Requests to a protected address judged by the request programs (callers allowed some requests, IMDSv2 required, or attributed), by kind (v1: no token header, v2: with it, token_put: PUT /latest/api/token, unparsed: not read as a canonical request) and verdict.",
        )?;
        for (version, name) in VERSIONS {
            for (refused, verdict) in [(0, "allowed"), (1, "refused")] {
                let n = c.by_version[usize::from(version)][refused];
                writeln!(
                    f,
                    "imds_guard_requests_total{{version=\"{name}\",verdict=\"{verdict}\"}} {n}"
                )?;
            }
        }
        header(
            f,
            "imds_guard_request_refusals_total",
            "counter",
            "Requests refused, by reason.",
        )?;
        for &reason in REASONS.iter().filter(|&&r| r != 0) {
            let n = c.by_reason[usize::from(reason)];
            let name = reason_name(reason);
            writeln!(
                f,
                "imds_guard_request_refusals_total{{reason=\"{name}\"}} {n}"
            )?;
        }
        header(
            f,
            "imds_guard_request_records_lost_total",
            "counter",
            "Request records dropped because the ring buffer was full; the requests are still judged and counted.",
        )?;
        let mut line = String::new();
        write!(
            line,
            "imds_guard_request_records_lost_total {}",
            c.records_lost
        )?;
        writeln!(f, "{line}")
    }
}
