//! Request-level rules (issue 23): the `[requests.NAME]` rule sets, the
//! `[imdsv2]` switch and `[attribution]`, as a validated policy holds them;
//! their compilation into the kernel's maps ([`Requests::compile`]); and the
//! userspace twin of the kernel's judgement of one request
//! ([`Policy::judge_request`]), which `check --request` explains.
//!
//! A `[requests.NAME]` identity is an allow entry (it is in
//! [`super::PolicySpec::entries`], after `[allow]`'s and before
//! `[deny]`'s): the decision at connect is unchanged, and the deciding
//! entry also decides what the caller may send ([`RequestScope`]). Rules
//! are allow-only; the verdict does not depend on their order, and the
//! longest matching rule names the record (what the kernel's LPM trie
//! answers in one lookup).
//!
//! Paths are checked by the parser the `sk_msg` program runs
//! ([`imds_guard_common::Parser`]): a rule is valid only if the parser
//! accepts it as it is written, so every rule is a path some request can
//! carry, and no rule is written in a form the kernel would refuse.

use std::collections::{BTreeMap, BTreeSet};

use imds_guard_common::{
    ENTRY_ANY, EntryFlags, EntryKey, Parser, ReqKey, ReqRule, entry_flags, req_method, req_reason,
};

use super::{Location, PolicySpec};

/// The request-level part of a policy. Empty ([`Requests::is_empty`]) for
/// every policy written before it: those keep their meaning and digest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requests {
    /// The `[requests.NAME]` tables in file order; set number = index + 1.
    pub sets: Vec<RuleSet>,
    /// Index into [`PolicySpec::entries`] of each entry a set names → the
    /// set's index.
    pub members: BTreeMap<usize, usize>,
    pub imdsv2: Imdsv2,
    /// `[attribution] whole_service`: record every request of callers
    /// allowed the whole service.
    pub whole_service: bool,
    /// Where the first request-level table is written (for the refusal of
    /// an agent that does not enforce them).
    pub at: Option<Location>,
}

/// One `[requests.NAME]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSet {
    pub name: String,
    /// The table's header.
    pub at: Location,
    /// `host = true`: its identities are allowed on the host only.
    pub host: bool,
    /// `imdsv2 = "required"` (`Some(true)`) or `"optional"` (`Some(false)`);
    /// `None`: as `[imdsv2]` says.
    pub imdsv2: Option<bool>,
    pub rules: Vec<Rule>,
}

/// One rule: a method and a canonical path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// [`req_method`].
    pub method: u8,
    pub path: String,
    pub at: Location,
    /// 1-based, in file order over every set: what records name.
    pub number: u32,
}

impl Rule {
    /// `GET /latest/meta-data/`, as written.
    pub fn text(&self) -> String {
        format!("{} {}", method_name(self.method), self.path)
    }

    /// Whether the rule is a subtree (its path ends in `/`).
    pub fn subtree(&self) -> bool {
        self.path.ends_with('/')
    }
}

/// `[imdsv2]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Imdsv2 {
    /// `required = true`: every caller must send the token header.
    pub required: bool,
    /// Entries (indexes) `exempt` names (with `required = true`).
    pub exempt: BTreeSet<usize>,
    /// Entries (indexes) `require` names (with `required = false`).
    pub require: BTreeSet<usize>,
}

/// What a deciding entry lets its callers send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestScope {
    /// `Some(index)` of the rule set judging the paths; `None`: the whole
    /// service.
    pub set: Option<usize>,
    /// Requests without the token header are refused (but the token PUT).
    pub v2_required: bool,
    /// Every request is recorded.
    pub attribute: bool,
}

impl RequestScope {
    /// The kernel's value for it.
    pub fn flags(self) -> EntryFlags {
        let mut flags = 0;
        let mut ruleset = 0;
        if let Some(set) = self.set {
            flags |= entry_flags::JUDGE;
            ruleset = u16::try_from(set + 1).unwrap_or(u16::MAX);
        }
        if self.v2_required {
            flags |= entry_flags::V2_REQUIRED;
        }
        if self.attribute {
            flags |= entry_flags::ATTRIBUTE;
        }
        EntryFlags {
            ruleset,
            flags,
            _pad: 0,
        }
    }

    /// Whether the kernel judges the requests of such a caller (the socket
    /// goes into the sockhash).
    pub fn judged(self) -> bool {
        self.set.is_some() || self.v2_required || self.attribute
    }
}

/// One rule compiled: the trie key (prefix length in bits, data) and value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompiledRule {
    pub prefix_len: u32,
    pub key: ReqKey,
    pub value: ReqRule,
}

/// What one generation of the kernel's request maps holds for a policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// [`imds_guard_common::MAP_REQ_RULES`]'s entries.
    pub rules: Vec<CompiledRule>,
    /// [`imds_guard_common::MAP_ENTRY_FLAGS`]'s rows: one per entry whose
    /// flags differ from the generation's default, and the
    /// [`ENTRY_ANY`] row when that default is not zero.
    pub flags: Vec<(EntryKey, EntryFlags)>,
}

/// A method's name.
pub fn method_name(method: u8) -> &'static str {
    match method {
        req_method::GET => "GET",
        req_method::HEAD => "HEAD",
        req_method::PUT => "PUT",
        _ => "?",
    }
}

/// A method by name (as written: case-sensitive).
pub fn method_of(name: &str) -> Option<u8> {
    match name {
        "GET" => Some(req_method::GET),
        "HEAD" => Some(req_method::HEAD),
        "PUT" => Some(req_method::PUT),
        _ => None,
    }
}

/// What a reason code says, for messages and records.
pub fn reason_text(reason: u8) -> &'static str {
    use req_reason::*;
    match reason {
        NONE => "not refused",
        METHOD => "a method other than GET, HEAD, PUT",
        H2_PREFACE => "the HTTP/2 preface",
        TARGET_FORM => "a target that is not a path (absolute, authority or asterisk form)",
        PATH_BYTE => {
            "a byte outside [A-Za-z0-9._~-] in the path (':' is allowed inside a segment only)"
        }
        PERCENT => "percent-encoding ('%'), which is never decoded",
        QUERY => "a query ('?') or fragment ('#')",
        PARAM => "a ';' parameter",
        EMPTY_SEGMENT => "an empty segment ('//')",
        DOT_SEGMENT => "a segment ending in '.' ('.', '..', 'name.')",
        NON_ASCII => "a byte that is not ASCII",
        CONTROL => "a control byte or NUL",
        VERSION => "no version, or one other than HTTP/1.0 and HTTP/1.1",
        BARE_LF => "a line ending in LF without CR",
        BARE_CR => "a CR not followed by LF",
        FOLDED => "a folded header line",
        HEADER_NAME => "a malformed header name",
        HEADER_VALUE => "a header value byte other than VCHAR, SP, HTAB",
        CONTENT_LENGTH => "a Content-Length other than one '0'",
        TRANSFER_ENCODING => "a Transfer-Encoding header",
        UPGRADE => "an Upgrade header",
        EXPECT => "an Expect header",
        TOKEN_REPEATED => "the token header twice",
        TOKEN_EMPTY => "an empty token header",
        TRAILING => "bytes after the request head (a body, a pipelined request)",
        LINE_TOO_LONG => "a request line longer than the parser reads",
        PATH_TOO_LONG => "a path longer than 240 bytes",
        HEADER_TOO_LONG => "a header line longer than the parser reads",
        TOO_MANY_HEADERS => "more than 32 header lines",
        HEAD_TOO_LONG => "a request head longer than 2048 bytes",
        INCOMPLETE => "an incomplete request head",
        NOT_IN_RULES => "no rule of the caller's rule set matches",
        V1_REFUSED => "an IMDSv1 request (no token header) from a caller that must use IMDSv2",
        STALE => "judged under a policy no longer in force",
        TAINTED => "bytes reached the connection by a path the verdict did not see",
        WRITE_PENDING => "a writer was waiting when the connection was established",
        SOCKHASH_FULL => "the sockhash is full",
        ULP => "an upper layer protocol (MPTCP, kTLS) on the socket",
        POISONED => "an earlier request on the connection was refused",
        PULL_FAILED => "the message could not be read whole",
        MEMORY => "the socket's send buffer is too full",
        FAST_OPEN => "TCP Fast Open",
        REPAIR => "TCP_REPAIR",
        NOT_TCP => "not a TCP stream",
        NOT_IN_SOCKHASH => "the socket could not be judged",
        NOT_KEPT => "what it let through could not be kept to check what leaves",
        _ => "an unknown reason",
    }
}

/// Every reason code the programs give, in order.
pub const REASONS: &[u8] = &{
    let mut all = [0u8; 31 + 15];
    let mut i = 0;
    while i < 31 {
        all[i] = i as u8;
        i += 1;
    }
    while i < all.len() {
        all[i] = req_reason::NOT_IN_RULES + (i - 31) as u8;
        i += 1;
    }
    all
};

/// A reason code's name, for metrics labels and reports: `v1_refused`.
pub fn reason_name(reason: u8) -> &'static str {
    use req_reason::*;
    match reason {
        NONE => "none",
        METHOD => "method",
        H2_PREFACE => "h2_preface",
        TARGET_FORM => "target_form",
        PATH_BYTE => "path_byte",
        PERCENT => "percent",
        QUERY => "query",
        PARAM => "param",
        EMPTY_SEGMENT => "empty_segment",
        DOT_SEGMENT => "dot_segment",
        NON_ASCII => "non_ascii",
        CONTROL => "control",
        VERSION => "version",
        BARE_LF => "bare_lf",
        BARE_CR => "bare_cr",
        FOLDED => "folded",
        HEADER_NAME => "header_name",
        HEADER_VALUE => "header_value",
        CONTENT_LENGTH => "content_length",
        TRANSFER_ENCODING => "transfer_encoding",
        UPGRADE => "upgrade",
        EXPECT => "expect",
        TOKEN_REPEATED => "token_repeated",
        TOKEN_EMPTY => "token_empty",
        TRAILING => "trailing",
        LINE_TOO_LONG => "line_too_long",
        PATH_TOO_LONG => "path_too_long",
        HEADER_TOO_LONG => "header_too_long",
        TOO_MANY_HEADERS => "too_many_headers",
        HEAD_TOO_LONG => "head_too_long",
        INCOMPLETE => "incomplete",
        NOT_IN_RULES => "not_in_rules",
        V1_REFUSED => "v1_refused",
        STALE => "stale",
        TAINTED => "tainted",
        WRITE_PENDING => "write_pending",
        SOCKHASH_FULL => "sockhash_full",
        ULP => "ulp",
        POISONED => "poisoned",
        PULL_FAILED => "pull_failed",
        MEMORY => "memory",
        FAST_OPEN => "fast_open",
        REPAIR => "repair",
        NOT_TCP => "not_tcp",
        NOT_IN_SOCKHASH => "not_in_sockhash",
        NOT_KEPT => "not_kept",
        _ => "unknown",
    }
}

/// Checks a rule as written (`METHOD /path`) with the kernel's parser.
/// `Err` says why it is not canonical.
pub fn parse_rule(text: &str) -> Result<(u8, String), String> {
    let Some((method, path)) = text.split_once(' ') else {
        return Err(format!(
            "{text:?} is not a rule: expected a method and a path separated by one space, \
             like \"GET /latest/meta-data/instance-id\""
        ));
    };
    if method_of(method).is_none() {
        return Err(format!(
            "{text:?}: the method must be GET, HEAD or PUT (uppercase), found {method:?}"
        ));
    }
    // The request the rule describes, as a client would send it; a path
    // the parser refuses (or changes, which it never does) is no rule.
    let head = format!("{method} {path} HTTP/1.1\r\n\r\n");
    let mut parser = Parser::new();
    match parser.parse(head.as_bytes()) {
        Ok(parsed) if parser.path() == path.as_bytes() => Ok((parsed.method, path.to_owned())),
        Ok(_) => Err(format!("{text:?}: the path is not canonical")),
        Err(reason) => Err(format!(
            "{text:?}: the path is not canonical: {} (requests are judged only in their plain \
             canonical form; write the path the service serves, byte for byte)",
            reason_text(reason)
        )),
    }
}

/// Whether `path` is in the service's documented tree: `/latest/api/token`,
/// `/latest/meta-data/...`, `/latest/user-data`, `/latest/dynamic/...`,
/// and the same under a dated version (`/2021-03-23/...`); a directory of
/// the tree itself (`/`, `/latest/`) counts.
pub fn documented(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let (version, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let dated = version.len() == 10
        && version.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    if version != "latest" && !dated {
        return false;
    }
    if rest.is_empty() {
        return true;
    }
    let first = rest.split('/').next().unwrap_or("");
    match first {
        "meta-data" | "dynamic" => true,
        "user-data" => rest == "user-data",
        "api" => version == "latest" && (rest == "api/token" || rest == "api/"),
        _ => false,
    }
}

impl Requests {
    /// Whether the policy has no request-level table at all.
    pub fn is_empty(&self) -> bool {
        self.at.is_none()
    }

    /// What entry `index` (`None`: the policy's default) lets its callers
    /// send. Precedence for IMDSv2: the rule set's own `imdsv2`, then
    /// `[imdsv2] exempt`/`require`, then `[imdsv2] required`.
    pub fn scope(&self, index: Option<usize>) -> RequestScope {
        let set = index.and_then(|i| self.members.get(&i).copied());
        let listed = |list: &BTreeSet<usize>| index.is_some_and(|i| list.contains(&i));
        let by_switch = if listed(&self.imdsv2.exempt) {
            false
        } else if listed(&self.imdsv2.require) {
            true
        } else {
            self.imdsv2.required
        };
        let v2_required = set
            .and_then(|s| self.sets.get(s))
            .and_then(|s| s.imdsv2)
            .unwrap_or(by_switch);
        RequestScope {
            set,
            v2_required,
            attribute: set.is_none() && self.whole_service,
        }
    }

    /// What `check` adds to an allowed decision: nothing for the whole
    /// service, else which requests.
    pub fn scope_words(&self, scope: RequestScope) -> String {
        let mut words = String::new();
        if let Some(set) = scope.set.and_then(|s| self.sets.get(s)) {
            words.push_str(&format!(
                "; only the requests of [requests.{}] ({} rules; --request judges one)",
                set.name,
                set.rules.len()
            ));
        }
        if scope.v2_required {
            words.push_str(
                "; IMDSv2 required (the token header on every request but the token PUT)",
            );
        }
        if scope.attribute {
            words.push_str("; every request recorded ([attribution] whole_service)");
        }
        words
    }

    /// The maps' content for generation `generation` of `spec` (whose
    /// `requests` this is): the rules, and the flags of every entry that
    /// differ from the generation's default (entry numbers 1-based, as
    /// [`imds_guard_common::IdRule::entry`]).
    pub fn compile(&self, spec: &PolicySpec, generation: u8) -> Compiled {
        let mut out = Compiled::default();
        for (s, set) in self.sets.iter().enumerate() {
            let ruleset = u16::try_from(s + 1).unwrap_or(u16::MAX);
            for rule in &set.rules {
                // Validated: every rule fits.
                if let Some((prefix_len, key)) =
                    ReqKey::rule(generation, ruleset, rule.method, rule.path.as_bytes())
                {
                    out.rules.push(CompiledRule {
                        prefix_len,
                        key,
                        value: ReqRule {
                            rule: rule.number,
                            flags: 0,
                        },
                    });
                }
            }
        }
        let default = self.scope(None).flags();
        if default != EntryFlags::default() {
            out.flags.push((
                EntryKey {
                    generation: u32::from(generation),
                    entry: ENTRY_ANY,
                },
                default,
            ));
        }
        for (index, entry) in spec.entries.iter().enumerate() {
            if entry.action != super::Action::Allow {
                continue;
            }
            let flags = self.scope(Some(index)).flags();
            if flags != default {
                out.flags.push((
                    EntryKey {
                        generation: u32::from(generation),
                        entry: u32::try_from(index + 1).unwrap_or(u32::MAX),
                    },
                    flags,
                ));
            }
        }
        out
    }

    /// The digest's lines: each set's rules and switches (sorted, by set
    /// name), the identities each set names, `[imdsv2]` and
    /// `[attribution]`. None for a policy without request-level tables.
    pub(super) fn write_digest(&self, spec: &PolicySpec, text: &mut String) {
        use std::fmt::Write as _;
        if self.is_empty() {
            return;
        }
        let mut lines = Vec::new();
        for set in &self.sets {
            let imdsv2 = match set.imdsv2 {
                Some(true) => "required",
                Some(false) => "optional",
                None => "default",
            };
            lines.push(format!(
                "requests {} host {} imdsv2 {imdsv2}",
                set.name, set.host
            ));
            for rule in &set.rules {
                lines.push(format!("requests {} rule {}", set.name, rule.text()));
            }
        }
        for (&index, &set) in &self.members {
            if let (Some(e), Some(set)) = (spec.entries.get(index), self.sets.get(set)) {
                lines.push(format!("requests {} names {}", set.name, e.identity));
            }
        }
        for (word, list) in [
            ("exempt", &self.imdsv2.exempt),
            ("require", &self.imdsv2.require),
        ] {
            for &index in list {
                if let Some(e) = spec.entries.get(index) {
                    lines.push(format!("imdsv2 {word} {} {}", e.table(), e.identity));
                }
            }
        }
        lines.push(format!("imdsv2 required {}", self.imdsv2.required));
        lines.push(format!("attribution whole_service {}", self.whole_service));
        lines.sort();
        lines.dedup();
        for line in lines {
            let _ = writeln!(text, "{line}");
        }
    }

    /// The longest rule of set `set` matching `method` and `path`, as the
    /// trie answers.
    pub fn longest_match(&self, set: usize, method: u8, path: &[u8]) -> Option<&Rule> {
        let ruleset = u16::try_from(set + 1).ok()?;
        let (lookup_len, lookup) = ReqKey::lookup(0, ruleset, method, path)?;
        self.sets
            .get(set)?
            .rules
            .iter()
            .filter_map(|rule| {
                let (len, key) = ReqKey::rule(0, ruleset, rule.method, rule.path.as_bytes())?;
                key.covers(len, lookup_len, &lookup).then_some((len, rule))
            })
            .max_by_key(|&(len, _)| len)
            .map(|(_, rule)| rule)
    }
}

mod judge;

pub use self::judge::{RequestVerdict, request_message};

#[cfg(test)]
mod tests;
