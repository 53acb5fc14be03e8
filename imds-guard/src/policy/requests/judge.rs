//! The userspace twin of the kernel's judgement of one request
//! ([`Policy::judge_request`]), and its explanation for `check --request`.

use imds_guard_common::{Head, Parser, req_method, req_reason, req_version};

use super::{Rule, reason_text};
use crate::policy::{Decision, Policy};

/// The judgement of one request, as the kernel gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestVerdict {
    /// The caller has the whole service: not judged (`recorded` when
    /// `[attribution] whole_service` records it).
    Whole { head: Head, recorded: bool },
    /// Allowed: IMDSv2 satisfied, and the rule (for a rule set) that
    /// matched, the longest.
    Allowed { head: Head, rule: Option<Rule> },
    /// Refused for this [`req_reason`].
    Refused { head: Option<Head>, reason: u8 },
}

impl Policy {
    /// What the programs do with `message` (one whole write) on a
    /// connection that `decision` let through: the twin of the `sk_msg`
    /// program's verdict. A connection refused at connect sends nothing:
    /// `None`.
    pub fn judge_request(&self, decision: &Decision, message: &[u8]) -> Option<RequestVerdict> {
        if decision.action != crate::policy::Action::Allow {
            return None;
        }
        let scope = self.spec.requests.scope(decision.index);
        let mut parser = Parser::new();
        let parsed = parser.parse(message);
        // A caller with the whole service is never refused: with
        // attribution on, the programs record what they parse (an
        // unparsed head as such) and let everything through.
        if scope.set.is_none() && !scope.v2_required {
            let head = parsed.unwrap_or(Head {
                method: req_method::NONE,
                version: req_version::UNPARSED,
                http_minor: 0,
                path_len: 0,
            });
            return Some(RequestVerdict::Whole {
                head,
                recorded: scope.attribute,
            });
        }
        // Judged (paths, or IMDSv2 required): what is not canonical is
        // refused, whatever it would have asked.
        let head = match parsed {
            Ok(head) => head,
            Err(reason) => return Some(RequestVerdict::Refused { head: None, reason }),
        };
        if scope.v2_required && head.version == req_version::V1 {
            return Some(RequestVerdict::Refused {
                head: Some(head),
                reason: req_reason::V1_REFUSED,
            });
        }
        let Some(set) = scope.set else {
            return Some(RequestVerdict::Allowed { head, rule: None });
        };
        match self
            .spec
            .requests
            .longest_match(set, head.method, parser.path())
        {
            Some(rule) => Some(RequestVerdict::Allowed {
                head,
                rule: Some(rule.clone()),
            }),
            None => Some(RequestVerdict::Refused {
                head: Some(head),
                reason: req_reason::NOT_IN_RULES,
            }),
        }
    }
}

impl Policy {
    /// `check --request`: whether `request` (`METHOD PATH`, with the token
    /// header when `token`) passes on a connection `decision` let through,
    /// and why: the rule set and the rule (the longest match), or the
    /// refusal reason.
    pub fn explain_request(
        &self,
        decision: &Decision,
        request: &str,
        token: bool,
    ) -> (bool, String) {
        let message = request_message(request, token);
        let Some(verdict) = self.judge_request(decision, &message) else {
            return (false, "the connection itself is refused".to_owned());
        };
        let set_name = |d: &Decision| {
            let set = self.spec.requests.scope(d.index).set?;
            self.spec
                .requests
                .sets
                .get(set)
                .map(|s| format!("[requests.{}]", s.name))
        };
        let kind = |head: &Head| match head.version {
            req_version::TOKEN_PUT => "the token PUT",
            req_version::V2 => "IMDSv2",
            req_version::V1 => "IMDSv1",
            _ => "unparsed",
        };
        match verdict {
            RequestVerdict::Whole { recorded, .. } => (
                true,
                format!(
                    "the caller has the whole service: its requests are not judged{}",
                    if recorded {
                        " (recorded: [attribution] whole_service)"
                    } else {
                        ""
                    }
                ),
            ),
            RequestVerdict::Allowed { head, rule: None } => (
                true,
                format!(
                    "{}: IMDSv2 is required of this caller, and satisfied",
                    kind(&head)
                ),
            ),
            RequestVerdict::Allowed {
                head,
                rule: Some(rule),
            } => (
                true,
                format!(
                    "{}: rule {} {:?} of {} at {} (the longest matching rule)",
                    kind(&head),
                    rule.number,
                    rule.text(),
                    set_name(decision).unwrap_or_default(),
                    rule.at
                ),
            ),
            RequestVerdict::Refused { head, reason } => {
                let mut why = reason_text(reason).to_owned();
                if reason == req_reason::NOT_IN_RULES {
                    if let Some(name) = set_name(decision) {
                        why = format!("no rule of {name} matches");
                    }
                }
                let kind = head.as_ref().map_or("", kind);
                (
                    false,
                    if kind.is_empty() {
                        why
                    } else {
                        format!("{kind}: {why}")
                    },
                )
            }
        }
    }
}

/// The request `check --request "GET /path" [--token]` describes, as a
/// client sends it.
pub fn request_message(request: &str, token: bool) -> Vec<u8> {
    let mut text = format!("{request} HTTP/1.1\r\nHost: 169.254.169.254\r\n");
    if token {
        text.push_str("X-aws-ec2-metadata-token: (token)\r\n");
    }
    text.push_str("\r\n");
    text.into_bytes()
}
