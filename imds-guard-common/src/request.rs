//! Request-level judgement (issue 23): the canonical HTTP/1.x request-head
//! parser, and the compiled request rules the kernel maps hold.
//!
//! The same parser runs in the `sk_msg` program (one [`Parser::step`] per
//! byte, from a `bpf_loop` callback, the state in a per-CPU map value) and
//! in the agent (`validate` checks rules with it, `check --request` explains
//! with it). It is a byte-step state machine with plain integer fields: no
//! allocation, no recursion, no slice of the input kept, every array index
//! masked or compared first, so the verifier sees bounded accesses.
//!
//! It accepts a request head only when it is plainly canonical, and refuses
//! everything else with a reason ([`req_reason`]); it never decodes or
//! normalises: `METHOD SP path SP HTTP/1.x CRLF`, then `name ":" OWS value
//! OWS CRLF` lines, then `CRLF`, ending exactly at the end of the message.
//! - method `GET`, `HEAD` or `PUT`, case-sensitive;
//! - path: `/`, then segments of `[A-Za-z0-9._~-]` (and `:` inside a
//!   segment, not as its first byte: MAC addresses in
//!   `/latest/meta-data/network/interfaces/macs/<mac>/`) separated by single
//!   `/`; no empty segment but a final one (`/latest/meta-data/`); no
//!   segment ending in `.` (so no `.` or `..`); at most [`PATH_MAX`] bytes;
//! - `HTTP/1.0` or `HTTP/1.1`; single SP separators; CRLF line ends;
//! - header names of RFC 9110 `tchar`, directly followed by `:`; values of
//!   VCHAR, SP and HTAB; `Content-Length` only `0`, once;
//!   `Transfer-Encoding`, `Upgrade`, `Expect` refused; the IMDSv2 token
//!   header (`X-aws-ec2-metadata-token`) at most once and not empty. Header
//!   names are matched case-insensitively, without copying their values.
//! - bounds: head ≤ [`HEAD_MAX`], request line ≤ [`LINE_MAX`], ≤
//!   [`HEADERS_MAX`] header lines of ≤ [`HEADER_LINE_MAX`] bytes each
//!   (CRLF included).
//!
//! What the parser cannot express, and the policy therefore cannot allow:
//! tag keys with spaces or other bytes outside the segment charset
//! (`/latest/meta-data/tags/instance/<key>`), role names with `+=,@`.
//!
//! Rules ([`ReqKey`]) are allow-only and live in an LPM trie: a rule path
//! ending in `/` is a subtree (its bytes are the prefix), any other is exact
//! (a `0x00` byte after the path is part of its prefix, and every lookup
//! carries one). The longest matching rule names the record.

use core::mem::size_of;

/// Longest request head (request line, header lines, final CRLF).
pub const HEAD_MAX: u16 = 2048;
/// The stream positions a judged socket keeps the bytes of: every byte
/// `req_msg` let through and the peer has not acknowledged yet must fit
/// (it refuses a message that would not), so that `egress` can compare
/// each byte of payload it sends, retransmissions included, with the one
/// judged at that position. A power of two.
pub const JUDGED_RING: u32 = 4096;

/// What a judged socket let through, by stream position: byte `p` of the
/// stream (counted from the judged range's start) at `bytes[p %
/// JUDGED_RING]`. The [`HEAD_MAX`] bytes past the ring are where a head
/// copied whole at the ring's end runs over (the program then copies the
/// wrapped part to the start again): they are never read.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct JudgedBytes {
    pub bytes: [u8; JUDGED_RING as usize + HEAD_MAX as usize],
}

/// Longest request line, CRLF included.
pub const LINE_MAX: u16 = 256;
/// Longest path: fits [`ReqKey::path`] with the exact-rule terminator.
pub const PATH_MAX: u16 = 240;
/// Most header lines (the final empty line not counted).
pub const HEADERS_MAX: u16 = 32;
/// Longest header line, CRLF included.
pub const HEADER_LINE_MAX: u16 = 1024;

/// Methods, as [`Head::method`], [`ReqKey::method`] and records spell them.
pub mod req_method {
    /// Not parsed (a refusal before the method was read).
    pub const NONE: u8 = 0;
    pub const GET: u8 = 1;
    pub const HEAD: u8 = 2;
    pub const PUT: u8 = 3;
}

/// What kind of metadata request a head is ([`Head::version`]).
pub mod req_version {
    /// Not parsed as far as that (a refusal).
    pub const UNPARSED: u8 = 0;
    /// No token header: IMDSv1.
    pub const V1: u8 = 1;
    /// A token header: IMDSv2.
    pub const V2: u8 = 2;
    /// `PUT /latest/api/token`: the request for an IMDSv2 token.
    pub const TOKEN_PUT: u8 = 3;
}

/// Why a request was refused. 1..=63: the parser ([`Parser::step`]); 64 and
/// up: the kernel side (rules, socket state, what a sockhash cannot hold).
pub mod req_reason {
    /// Not refused.
    pub const NONE: u8 = 0;
    /// A method other than `GET`, `HEAD`, `PUT` (lowercase included).
    pub const METHOD: u8 = 1;
    /// The HTTP/2 connection preface (`PRI * HTTP/2.0`).
    pub const H2_PREFACE: u8 = 2;
    /// A target that is not origin-form (absolute, authority, asterisk).
    pub const TARGET_FORM: u8 = 3;
    /// A path byte outside the segment charset (`+ @ \ ,` and the like, SP
    /// or HTAB inside, `:` starting a segment).
    pub const PATH_BYTE: u8 = 4;
    /// A `%` in the path: no percent-encoding is decoded.
    pub const PERCENT: u8 = 5;
    /// A query (`?`) or fragment (`#`).
    pub const QUERY: u8 = 6;
    /// A matrix parameter (`;`).
    pub const PARAM: u8 = 7;
    /// An empty segment (`//`).
    pub const EMPTY_SEGMENT: u8 = 8;
    /// A segment ending in `.`: `.`, `..`, `token.`.
    pub const DOT_SEGMENT: u8 = 9;
    /// A byte ≥ 0x80 anywhere in the head.
    pub const NON_ASCII: u8 = 10;
    /// NUL, DEL or a control byte other than CR, LF (line ends) and HTAB
    /// (in header values).
    pub const CONTROL: u8 = 11;
    /// No version, or one other than `HTTP/1.0` and `HTTP/1.1`.
    pub const VERSION: u8 = 12;
    /// A LF without the CR before it.
    pub const BARE_LF: u8 = 13;
    /// A CR not followed by LF.
    pub const BARE_CR: u8 = 14;
    /// A header line starting with SP or HTAB (obsolete line folding).
    pub const FOLDED: u8 = 15;
    /// An empty header name, a byte outside `tchar`, whitespace before `:`.
    pub const HEADER_NAME: u8 = 16;
    /// A header value byte other than VCHAR, SP, HTAB.
    pub const HEADER_VALUE: u8 = 17;
    /// `Content-Length` other than `0`, or twice.
    pub const CONTENT_LENGTH: u8 = 18;
    /// Any `Transfer-Encoding`.
    pub const TRANSFER_ENCODING: u8 = 19;
    /// Any `Upgrade`.
    pub const UPGRADE: u8 = 20;
    /// Any `Expect`.
    pub const EXPECT: u8 = 21;
    /// The token header twice.
    pub const TOKEN_REPEATED: u8 = 22;
    /// The token header with an empty value.
    pub const TOKEN_EMPTY: u8 = 23;
    /// Bytes after the head in the same message: a body, a second
    /// (pipelined) request.
    pub const TRAILING: u8 = 24;
    /// A request line longer than [`super::LINE_MAX`].
    pub const LINE_TOO_LONG: u8 = 25;
    /// A path longer than [`super::PATH_MAX`].
    pub const PATH_TOO_LONG: u8 = 26;
    /// A header line longer than [`super::HEADER_LINE_MAX`].
    pub const HEADER_TOO_LONG: u8 = 27;
    /// More than [`super::HEADERS_MAX`] header lines.
    pub const TOO_MANY_HEADERS: u8 = 28;
    /// A head longer than [`super::HEAD_MAX`].
    pub const HEAD_TOO_LONG: u8 = 29;
    /// The message ended inside a head (the kernel corks it; a head it
    /// cannot hold is refused with this).
    pub const INCOMPLETE: u8 = 30;

    // 64..: what the kernel side decides beyond the parser.
    /// No rule of the caller's rule set matches the method and path.
    pub const NOT_IN_RULES: u8 = 64;
    /// An IMDSv1 request from a caller that must use IMDSv2.
    pub const V1_REFUSED: u8 = 65;
    /// The socket was judged under a policy no longer in force.
    pub const STALE: u8 = 66;
    /// Bytes reached the stream by a path the verdict did not see.
    pub const TAINTED: u8 = 67;
    /// A writer was waiting on the socket when it was established.
    pub const WRITE_PENDING: u8 = 68;
    /// The sockhash is full.
    pub const SOCKHASH_FULL: u8 = 69;
    /// The socket has an upper layer protocol (MPTCP, kTLS, espintcp).
    pub const ULP: u8 = 70;
    /// An earlier request on the connection was refused.
    pub const POISONED: u8 = 71;
    /// The message could not be pulled into one buffer.
    pub const PULL_FAILED: u8 = 72;
    /// The socket's send buffer is too full to push a head without sleeping
    /// (the residual-race mitigation).
    pub const MEMORY: u8 = 73;
    /// TCP Fast Open data or a Fast Open connect.
    pub const FAST_OPEN: u8 = 74;
    /// A socket in `TCP_REPAIR`.
    pub const REPAIR: u8 = 75;
    /// Not a TCP stream (UDP, raw) from a caller whose requests are judged.
    pub const NOT_TCP: u8 = 76;
    /// The socket could not enter the sockhash for another reason.
    pub const NOT_IN_SOCKHASH: u8 = 77;
    /// The bytes let through could not be kept for `egress` to compare
    /// what leaves with (`JudgedBytes`).
    pub const NOT_KEPT: u8 = 78;
}

/// What a parsed head is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// [`req_method`].
    pub method: u8,
    /// [`req_version`]: V1, V2 or TOKEN_PUT.
    pub version: u8,
    /// 0 for `HTTP/1.0`, 1 for `HTTP/1.1`.
    pub http_minor: u8,
    /// Bytes of the path in [`Parser::lookup`]`.key.path`.
    pub path_len: u16,
}

/// What [`Parser::step`] says of one byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The head goes on.
    Continue,
    /// The byte ended the head (its final LF). Any byte after it is
    /// refused ([`req_reason::TRAILING`]); [`Parser::finish`] decides.
    Done(Head),
    /// Refused for this [`req_reason`]; every later step says so again.
    Refused(u8),
}

/// What [`Parser::finish`] says of a whole message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// One complete canonical head, ending exactly at the end of the
    /// message. [`Parser::lookup`] holds the path and its `0x00`, the
    /// method and the prefix length; the caller sets the generation and
    /// rule set ([`Parser::set_scope`]).
    Head(Head),
    /// The message ends inside a head that is canonical so far: wait for
    /// the rest (cork), or refuse with [`req_reason::INCOMPLETE`].
    Incomplete,
    /// Refused for this [`req_reason`].
    Refused(u8),
}

// Parser states.
const S_METHOD: u8 = 0;
const S_TARGET: u8 = 1;
const S_PATH: u8 = 2;
const S_VERSION: u8 = 3;
const S_LINE_LF: u8 = 4;
const S_LINE_START: u8 = 5;
const S_NAME: u8 = 6;
const S_VALUE: u8 = 7;
const S_HEADER_LF: u8 = 8;
const S_END_LF: u8 = 9;
const S_DONE: u8 = 10;
const S_REFUSED: u8 = 11;

// Byte classes ([`CLASS`] bits).
/// RFC 9110 `tchar`.
const C_TCHAR: u8 = 1;
/// Segment bytes `[A-Za-z0-9._~-]` (`:` is handled apart).
const C_SEGMENT: u8 = 2;
/// VCHAR (0x21..=0x7e).
const C_VCHAR: u8 = 4;
/// `A-Z`.
const C_UPPER: u8 = 8;
/// Control bytes refused wherever they are: every byte below 0x20 but CR,
/// LF and HTAB, and DEL.
const C_CONTROL: u8 = 16;

const fn class_of(b: u8) -> u8 {
    let mut c = 0;
    if (b < 0x20 && b != b'\r' && b != b'\n' && b != b'\t') || b == 0x7f {
        c |= C_CONTROL;
    }
    if b >= 0x21 && b <= 0x7e {
        c |= C_VCHAR;
    }
    let alnum = b.is_ascii_alphanumeric();
    if alnum || b == b'.' || b == b'_' || b == b'~' || b == b'-' {
        c |= C_SEGMENT;
    }
    if alnum
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
    {
        c |= C_TCHAR;
    }
    if b.is_ascii_uppercase() {
        c |= C_UPPER;
    }
    c
}

const fn classes() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = class_of(i as u8);
        i += 1;
    }
    t
}

/// The class of every byte, indexed by the byte itself.
static CLASS: [u8; 256] = classes();

// Header names the parser looks for, lowercase, padded to 32 so that a
// masked index is always in bounds.
const H_NONE: u8 = 0;
const H_CONTENT_LENGTH: u8 = 1;
const H_TRANSFER_ENCODING: u8 = 2;
const H_UPGRADE: u8 = 3;
const H_EXPECT: u8 = 4;
const H_TOKEN: u8 = 5;
const NAMES: usize = 5;
/// The IMDSv2 token header, lowercase.
pub const TOKEN_HEADER: &[u8] = b"x-aws-ec2-metadata-token";

const fn padded(name: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < name.len() {
        out[i] = name[i];
        i += 1;
    }
    out
}

static NAME_BYTES: [[u8; 32]; NAMES] = [
    padded(b"content-length"),
    padded(b"transfer-encoding"),
    padded(b"upgrade"),
    padded(b"expect"),
    padded(TOKEN_HEADER),
];
static NAME_LENS: [u16; NAMES] = [14, 17, 7, 6, 24];

/// The path of the token request (`PUT /latest/api/token`), padded.
const TOKEN_PATH: [u8; 32] = padded(b"/latest/api/token");
const TOKEN_PATH_LEN: u16 = 17;

const METHOD_GET: u32 = u32::from_be_bytes([0, b'G', b'E', b'T']);
const METHOD_HEAD: u32 = u32::from_be_bytes(*b"HEAD");
const METHOD_PUT: u32 = u32::from_be_bytes([0, b'P', b'U', b'T']);
const METHOD_PRI: u32 = u32::from_be_bytes([0, b'P', b'R', b'I']);
const VERSION_PREFIX: [u8; 8] = *b"HTTP/1.\0";

// Bits of `Parser::seen`.
const SEEN_CONTENT_LENGTH: u8 = 1;
const SEEN_TOKEN: u8 = 2;

/// The request-head parser. A zeroed value ([`Parser::new`],
/// [`Parser::reset`]) starts a head; feed each byte of a message to
/// [`Parser::step`], stop at a refusal, then call [`Parser::finish`].
///
/// `#[repr(C)]` of integers only, so that a program can keep it in a
/// per-CPU map value. The path is written into [`Parser::lookup`] as it is
/// read; nothing else of the input is kept (no header value: the token
/// never leaves the socket's buffer).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parser {
    /// The trie key of the path read so far; complete after a
    /// [`Finish::Head`] and [`Parser::set_scope`].
    pub lookup: ReqLookup,
    /// Keeps a masked index past [`ReqKey::path`] inside this value.
    spare: [u8; 8],
    state: u8,
    reason: u8,
    method: u8,
    http_minor: u8,
    /// The header being read ([`H_NONE`]...).
    header: u8,
    /// Headers seen (`SEEN_*`).
    seen: u8,
    /// Candidate header names still matching (bit `i` for `NAME_BYTES[i]`).
    candidates: u8,
    /// In a header value: 0 nothing yet, 1 a value byte, 2 OWS after a
    /// value (Content-Length: `0` then only OWS).
    value: u8,
    /// The method's bytes so far, big-endian; then the version byte index.
    word: u32,
    total: u16,
    line: u16,
    path_len: u16,
    segment_len: u16,
    name_len: u16,
    headers: u16,
    /// The last path byte.
    prev: u8,
    /// 1 while the path is a prefix of `/latest/api/token`.
    token_path: u8,
    _pad: [u8; 2],
}
const _: () = assert!(size_of::<Parser>() == 292);

impl Default for Parser {
    fn default() -> Self {
        Self::new()
    }
}

impl Parser {
    pub const fn new() -> Self {
        Self {
            lookup: ReqLookup {
                prefix_len: 0,
                key: ReqKey::ZERO,
            },
            spare: [0; 8],
            state: S_METHOD,
            reason: 0,
            method: 0,
            http_minor: 0,
            header: H_NONE,
            seen: 0,
            candidates: 0,
            value: 0,
            word: 0,
            total: 0,
            line: 0,
            path_len: 0,
            segment_len: 0,
            name_len: 0,
            headers: 0,
            prev: 0,
            token_path: 1,
            _pad: [0; 2],
        }
    }

    /// Starts a new head. The path bytes of the last one stay in the key
    /// (they are overwritten and the prefix length never covers them).
    #[inline(always)]
    pub fn reset(&mut self) {
        self.lookup.prefix_len = 0;
        self.state = S_METHOD;
        self.reason = 0;
        self.method = 0;
        self.http_minor = 0;
        self.header = H_NONE;
        self.seen = 0;
        self.candidates = 0;
        self.value = 0;
        self.word = 0;
        self.total = 0;
        self.line = 0;
        self.path_len = 0;
        self.segment_len = 0;
        self.name_len = 0;
        self.headers = 0;
        self.prev = 0;
        self.token_path = 1;
    }

    /// The method read so far ([`req_method`]); `NONE` before its SP.
    pub fn method(&self) -> u8 {
        self.method
    }

    /// The bytes of the path read so far.
    pub fn path_len(&self) -> u16 {
        self.path_len
    }

    /// The refusal reason, [`req_reason::NONE`] if not refused.
    pub fn reason(&self) -> u8 {
        self.reason
    }

    /// The path read so far (userspace and tests; a program reads
    /// [`Parser::lookup`] with its own bounds).
    pub fn path(&self) -> &[u8] {
        let n = (self.path_len as usize).min(KEY_PATH_LEN);
        &self.lookup.key.path[..n]
    }

    /// Sets the generation and rule set of the lookup key.
    #[inline(always)]
    pub fn set_scope(&mut self, generation: u8, ruleset: u16) {
        self.lookup.key.generation = generation;
        self.lookup.key.ruleset = ruleset.to_be_bytes();
    }

    #[inline(always)]
    fn refuse(&mut self, reason: u8) -> Step {
        self.state = S_REFUSED;
        self.reason = reason;
        Step::Refused(reason)
    }

    #[inline(always)]
    fn head(&self) -> Head {
        let version = if self.method == req_method::PUT
            && self.token_path != 0
            && self.path_len == TOKEN_PATH_LEN
        {
            req_version::TOKEN_PUT
        } else if self.seen & SEEN_TOKEN != 0 {
            req_version::V2
        } else {
            req_version::V1
        };
        Head {
            method: self.method,
            version,
            http_minor: self.http_minor,
            path_len: self.path_len,
        }
    }

    /// Appends a path byte, or refuses a path past [`PATH_MAX`].
    #[inline(always)]
    fn push_path(&mut self, b: u8) -> Step {
        let i = self.path_len;
        if i >= PATH_MAX {
            return self.refuse(req_reason::PATH_TOO_LONG);
        }
        let idx = (i & 0xff) as usize;
        if idx < KEY_PATH_LEN {
            self.lookup.key.path[idx] = b;
        }
        if self.token_path != 0 && (idx >= TOKEN_PATH.len() || TOKEN_PATH[idx & 31] != b) {
            self.token_path = 0;
        }
        self.path_len = i + 1;
        self.prev = b;
        Step::Continue
    }

    /// Reads one byte of a message.
    pub fn step(&mut self, b: u8) -> Step {
        match self.state {
            S_REFUSED => return Step::Refused(self.reason),
            S_DONE => return self.refuse(req_reason::TRAILING),
            _ => {}
        }
        self.total += 1;
        if self.total > HEAD_MAX {
            return self.refuse(req_reason::HEAD_TOO_LONG);
        }
        self.line += 1;
        let in_request_line = self.state <= S_LINE_LF;
        if in_request_line && self.line > LINE_MAX {
            return self.refuse(req_reason::LINE_TOO_LONG);
        }
        if !in_request_line && self.line > HEADER_LINE_MAX {
            return self.refuse(req_reason::HEADER_TOO_LONG);
        }
        if b >= 0x80 {
            return self.refuse(req_reason::NON_ASCII);
        }
        let class = CLASS[b as usize];
        if class & C_CONTROL != 0 {
            return self.refuse(req_reason::CONTROL);
        }
        match self.state {
            S_METHOD => self.method_byte(b, class),
            S_TARGET => {
                if b == b'/' {
                    self.state = S_PATH;
                    self.segment_len = 0;
                    self.push_path(b)
                } else if b == b'\r' || b == b'\n' {
                    self.refuse(req_reason::VERSION)
                } else {
                    self.refuse(req_reason::TARGET_FORM)
                }
            }
            S_PATH => self.path_byte(b, class),
            S_VERSION => self.version_byte(b),
            S_LINE_LF | S_HEADER_LF => {
                if b == b'\n' {
                    self.state = S_LINE_START;
                    self.line = 0;
                    Step::Continue
                } else {
                    self.refuse(req_reason::BARE_CR)
                }
            }
            S_LINE_START => self.line_start(b, class),
            S_NAME => self.name_byte(b, class),
            S_VALUE => self.value_byte(b, class),
            S_END_LF => {
                if b == b'\n' {
                    self.state = S_DONE;
                    Step::Done(self.head())
                } else {
                    self.refuse(req_reason::BARE_CR)
                }
            }
            _ => self.refuse(req_reason::INCOMPLETE),
        }
    }

    #[inline(always)]
    fn method_byte(&mut self, b: u8, class: u8) -> Step {
        if b == b' ' {
            let method = match self.word {
                METHOD_GET => req_method::GET,
                METHOD_HEAD => req_method::HEAD,
                METHOD_PUT => req_method::PUT,
                METHOD_PRI => return self.refuse(req_reason::H2_PREFACE),
                _ => return self.refuse(req_reason::METHOD),
            };
            self.method = method;
            self.lookup.key.method = method;
            self.state = S_TARGET;
            return Step::Continue;
        }
        // Four bytes hold the longest method; a fifth is refused before
        // the shift would lose one.
        if class & C_UPPER == 0 || self.word >= 1 << 24 {
            return self.refuse(req_reason::METHOD);
        }
        self.word = (self.word << 8) | b as u32;
        Step::Continue
    }

    #[inline(always)]
    fn path_byte(&mut self, b: u8, class: u8) -> Step {
        match b {
            b' ' | b'/' => {
                if self.segment_len > 0 && self.prev == b'.' {
                    return self.refuse(req_reason::DOT_SEGMENT);
                }
                if b == b' ' {
                    self.state = S_VERSION;
                    self.word = 0;
                    return Step::Continue;
                }
                if self.segment_len == 0 {
                    return self.refuse(req_reason::EMPTY_SEGMENT);
                }
                self.segment_len = 0;
                self.push_path(b)
            }
            b'%' => self.refuse(req_reason::PERCENT),
            b'?' | b'#' => self.refuse(req_reason::QUERY),
            b';' => self.refuse(req_reason::PARAM),
            b'\r' | b'\n' => self.refuse(req_reason::VERSION),
            b':' if self.segment_len > 0 => {
                self.segment_len += 1;
                self.push_path(b)
            }
            _ if class & C_SEGMENT != 0 => {
                self.segment_len += 1;
                self.push_path(b)
            }
            _ => self.refuse(req_reason::PATH_BYTE),
        }
    }

    #[inline(always)]
    fn version_byte(&mut self, b: u8) -> Step {
        let i = self.word;
        if i < 7 {
            if VERSION_PREFIX[(i & 7) as usize] != b {
                return self.refuse(req_reason::VERSION);
            }
        } else if i == 7 {
            match b {
                b'0' => self.http_minor = 0,
                b'1' => self.http_minor = 1,
                _ => return self.refuse(req_reason::VERSION),
            }
        } else {
            return match b {
                b'\r' => {
                    self.state = S_LINE_LF;
                    Step::Continue
                }
                b'\n' => self.refuse(req_reason::BARE_LF),
                _ => self.refuse(req_reason::VERSION),
            };
        }
        self.word = i + 1;
        Step::Continue
    }

    #[inline(always)]
    fn line_start(&mut self, b: u8, class: u8) -> Step {
        match b {
            b'\r' => {
                self.state = S_END_LF;
                return Step::Continue;
            }
            b'\n' => return self.refuse(req_reason::BARE_LF),
            b' ' | b'\t' => return self.refuse(req_reason::FOLDED),
            _ => {}
        }
        if class & C_TCHAR == 0 {
            return self.refuse(req_reason::HEADER_NAME);
        }
        if self.headers >= HEADERS_MAX {
            return self.refuse(req_reason::TOO_MANY_HEADERS);
        }
        self.headers += 1;
        self.state = S_NAME;
        self.name_len = 0;
        self.candidates = (1 << NAMES) - 1;
        self.match_name(b);
        Step::Continue
    }

    /// Drops the candidate names whose byte at `name_len` is not `b`
    /// (ASCII case-insensitive), then counts the byte.
    #[inline(always)]
    fn match_name(&mut self, b: u8) {
        let lower = if b.is_ascii_uppercase() { b | 0x20 } else { b };
        let i = self.name_len;
        let mut c = 0;
        while c < NAMES {
            let bit = 1u8 << c;
            if self.candidates & bit != 0
                && (i >= NAME_LENS[c] || NAME_BYTES[c][(i & 31) as usize] != lower)
            {
                self.candidates &= !bit;
            }
            c += 1;
        }
        self.name_len = i.saturating_add(1);
    }

    #[inline(always)]
    fn name_byte(&mut self, b: u8, class: u8) -> Step {
        if b != b':' {
            if class & C_TCHAR == 0 {
                return self.refuse(req_reason::HEADER_NAME);
            }
            self.match_name(b);
            return Step::Continue;
        }
        let mut header = H_NONE;
        let mut c = 0;
        while c < NAMES {
            if self.candidates & (1 << c) != 0 && NAME_LENS[c] == self.name_len {
                header = c as u8 + 1;
            }
            c += 1;
        }
        match header {
            H_CONTENT_LENGTH => {
                if self.seen & SEEN_CONTENT_LENGTH != 0 {
                    return self.refuse(req_reason::CONTENT_LENGTH);
                }
                self.seen |= SEEN_CONTENT_LENGTH;
            }
            H_TRANSFER_ENCODING => return self.refuse(req_reason::TRANSFER_ENCODING),
            H_UPGRADE => return self.refuse(req_reason::UPGRADE),
            H_EXPECT => return self.refuse(req_reason::EXPECT),
            H_TOKEN => {
                if self.seen & SEEN_TOKEN != 0 {
                    return self.refuse(req_reason::TOKEN_REPEATED);
                }
                self.seen |= SEEN_TOKEN;
            }
            _ => {}
        }
        self.header = header;
        self.value = 0;
        self.state = S_VALUE;
        Step::Continue
    }

    #[inline(always)]
    fn value_byte(&mut self, b: u8, class: u8) -> Step {
        match b {
            b'\r' => {
                if self.header == H_CONTENT_LENGTH && self.value == 0 {
                    return self.refuse(req_reason::CONTENT_LENGTH);
                }
                if self.header == H_TOKEN && self.value == 0 {
                    return self.refuse(req_reason::TOKEN_EMPTY);
                }
                self.state = S_HEADER_LF;
                Step::Continue
            }
            b'\n' => self.refuse(req_reason::BARE_LF),
            b' ' | b'\t' => {
                if self.value == 1 {
                    self.value = 2;
                }
                Step::Continue
            }
            _ if class & C_VCHAR != 0 => {
                if self.header == H_CONTENT_LENGTH && (self.value != 0 || b != b'0') {
                    return self.refuse(req_reason::CONTENT_LENGTH);
                }
                self.value = 1;
                Step::Continue
            }
            _ => self.refuse(req_reason::HEADER_VALUE),
        }
    }

    /// Ends a message: a complete head (its final CRLF was the message's
    /// last byte), a head that goes on, or a refusal. On a head, completes
    /// [`Parser::lookup`]: the `0x00` after the path and the prefix length
    /// of the lookup.
    pub fn finish(&mut self) -> Finish {
        match self.state {
            S_DONE => {
                let len = self.path_len;
                let idx = (len & 0xff) as usize;
                if idx < KEY_PATH_LEN {
                    self.lookup.key.path[idx] = 0;
                }
                self.lookup.prefix_len = (KEY_HEAD_LEN + len as u32 + 1) * 8;
                Finish::Head(self.head())
            }
            S_REFUSED => Finish::Refused(self.reason),
            _ => Finish::Incomplete,
        }
    }

    /// Parses one whole message (userspace and tests): a head, or the
    /// reason it is refused ([`req_reason::INCOMPLETE`] for a message that
    /// ends inside a head).
    pub fn parse(&mut self, message: &[u8]) -> Result<Head, u8> {
        self.reset();
        for &b in message {
            if let Step::Refused(reason) = self.step(b) {
                return Err(reason);
            }
        }
        match self.finish() {
            Finish::Head(head) => Ok(head),
            Finish::Incomplete => Err(req_reason::INCOMPLETE),
            Finish::Refused(reason) => Err(reason),
        }
    }
}

mod maps;

pub use self::maps::*;

#[cfg(test)]
mod tests;
