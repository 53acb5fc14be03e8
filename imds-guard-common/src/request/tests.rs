//! The parser held to the design's tables (docs/design/request-level.md §5
//! and §7 rows 13-18): every vector as bytes → reason, accepted heads →
//! method, path, version; and held to an independent statement of the
//! canonical form on random paths.

extern crate std;

use std::{format, string::String, vec::Vec};

use super::*;

fn parse(message: &[u8]) -> Result<Head, u8> {
    Parser::new().parse(message)
}

fn head(request_line: &str, headers: &str) -> Vec<u8> {
    format!("{request_line}\r\n{headers}\r\n").into_bytes()
}

fn get(path: &str) -> Vec<u8> {
    head(&format!("GET {path} HTTP/1.1"), "Host: 169.254.169.254\r\n")
}

#[track_caller]
fn refused(message: &[u8], reason: u8) {
    assert_eq!(
        parse(message),
        Err(reason),
        "{:?}",
        String::from_utf8_lossy(message)
    );
}

#[track_caller]
fn accepted(message: &[u8], method: u8, path: &str, version: u8) {
    let mut p = Parser::new();
    let h = p
        .parse(message)
        .unwrap_or_else(|r| panic!("{:?} refused: {r}", String::from_utf8_lossy(message)));
    assert_eq!(h.method, method);
    assert_eq!(h.version, version);
    assert_eq!(p.path(), path.as_bytes());
    assert_eq!(h.path_len as usize, path.len());
    assert_eq!(p.lookup.key.method, method);
    assert_eq!(p.lookup.key.path[path.len()], 0, "the terminator");
    assert_eq!(p.lookup.prefix_len, (4 + path.len() as u32 + 1) * 8);
}

#[test]
fn canonical_heads_are_accepted() {
    use req_method::*;
    use req_version::*;
    accepted(&get("/latest/meta-data/"), GET, "/latest/meta-data/", V1);
    accepted(&get("/"), GET, "/", V1);
    accepted(
        &get("/latest/meta-data/iam/security-credentials/my_role-1.x"),
        GET,
        "/latest/meta-data/iam/security-credentials/my_role-1.x",
        V1,
    );
    accepted(
        &get("/latest/meta-data/network/interfaces/macs/0e:49:61:0f:c3:11/subnet-id"),
        GET,
        "/latest/meta-data/network/interfaces/macs/0e:49:61:0f:c3:11/subnet-id",
        V1,
    );
    accepted(
        b"HEAD /2021-03-23/meta-data/~x HTTP/1.0\r\n\r\n",
        HEAD,
        "/2021-03-23/meta-data/~x",
        V1,
    );
    accepted(
        &head(
            "PUT /latest/api/token HTTP/1.1",
            "Host: x\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\nContent-Length: 0\r\n",
        ),
        PUT,
        "/latest/api/token",
        TOKEN_PUT,
    );
    accepted(
        &head(
            "GET /latest/meta-data/instance-id HTTP/1.1",
            "X-AWS-EC2-Metadata-Token:\tAQAE==  \r\nAccept: */*\r\n",
        ),
        GET,
        "/latest/meta-data/instance-id",
        V2,
    );
    // The token path with GET, or PUT elsewhere, is not the token request.
    accepted(&get("/latest/api/token"), GET, "/latest/api/token", V1);
    accepted(
        b"PUT /latest/api/tokens HTTP/1.1\r\n\r\n",
        PUT,
        "/latest/api/tokens",
        V1,
    );
    accepted(
        b"PUT /latest/api/toke HTTP/1.1\r\n\r\n",
        PUT,
        "/latest/api/toke",
        V1,
    );
    // Content-Length 0 with OWS; header names case-insensitive; a name
    // that only starts like a watched one is any header.
    accepted(
        &head(
            "GET /a HTTP/1.1",
            "content-length:  0 \r\nExpected: x\r\nUpgrades: y\r\n",
        ),
        GET,
        "/a",
        V1,
    );
    // Segments with dots inside, a trailing `~`, a leading dot.
    accepted(&get("/a.b/.c/~/x-"), GET, "/a.b/.c/~/x-", V1);
}

#[test]
fn http_minor_is_read() {
    assert_eq!(
        parse(b"GET / HTTP/1.0\r\n\r\n").map(|h| h.http_minor),
        Ok(0)
    );
    assert_eq!(
        parse(b"GET / HTTP/1.1\r\n\r\n").map(|h| h.http_minor),
        Ok(1)
    );
}

/// §7 row 13: pipelining, and a body.
#[test]
fn bytes_after_the_head_are_refused() {
    let mut two = get("/latest/meta-data/placement/");
    two.extend_from_slice(&get("/latest/meta-data/iam/security-credentials/r"));
    refused(&two, req_reason::TRAILING);
    let mut same = get("/a");
    same.extend_from_slice(&get("/a"));
    refused(&same, req_reason::TRAILING);
    let mut one_more = get("/a");
    one_more.push(b'\r');
    refused(&one_more, req_reason::TRAILING);
}

/// §7 row 14: bodies and framing.
#[test]
fn framing_is_refused() {
    use req_reason::*;
    refused(
        &head("PUT /a HTTP/1.1", "Content-Length: 5\r\n"),
        CONTENT_LENGTH,
    );
    refused(
        &head("PUT /a HTTP/1.1", "Content-Length: 00\r\n"),
        CONTENT_LENGTH,
    );
    refused(
        &head("PUT /a HTTP/1.1", "Content-Length: 0 0\r\n"),
        CONTENT_LENGTH,
    );
    refused(
        &head("PUT /a HTTP/1.1", "Content-Length: +0\r\n"),
        CONTENT_LENGTH,
    );
    refused(
        &head("PUT /a HTTP/1.1", "Content-Length:\r\n"),
        CONTENT_LENGTH,
    );
    refused(
        &head(
            "PUT /a HTTP/1.1",
            "Content-Length: 0\r\ncontent-length: 0\r\n",
        ),
        CONTENT_LENGTH,
    );
    refused(
        &head("GET /a HTTP/1.1", "Transfer-Encoding: chunked\r\n"),
        TRANSFER_ENCODING,
    );
    refused(
        &head("GET /a HTTP/1.1", "transfer-encoding: identity\r\n"),
        TRANSFER_ENCODING,
    );
    refused(&head("GET /a HTTP/1.1", "Upgrade: h2c\r\n"), UPGRADE);
    refused(&head("PUT /a HTTP/1.1", "Expect: 100-continue\r\n"), EXPECT);
}

/// §7 row 15 and §5: encodings, dot segments, separators, case, non-ASCII.
#[test]
fn non_canonical_paths_are_refused() {
    use req_reason::*;
    for p in [
        "/latest%2Fmeta-data",
        "/latest%2fmeta-data",
        "/latest%252Fmeta-data",
        "/latest/meta-data%3F",
        "/latest/%2E%2E/x",
        "/latest/%C0%AF",
    ] {
        refused(&get(p), PERCENT);
    }
    for p in [
        "/latest/./meta-data",
        "/latest/../x",
        "/latest/api/token./",
        "/a/..",
        "/a/.",
        "/a/b.",
    ] {
        refused(&get(p), DOT_SEGMENT);
    }
    refused(&get("/latest//meta-data"), EMPTY_SEGMENT);
    refused(&get("//latest"), EMPTY_SEGMENT);
    refused(&get("/latest/meta-data;x=1"), PARAM);
    refused(&get("/latest/meta-data?q"), QUERY);
    refused(&get("/latest/meta-data#f"), QUERY);
    for p in [
        "/a+b", "/a@b", "/a\\b", "/a,b", "/a=b", "/a!b", "/a*", "/a\"", "/a'b", "/a(b)", "/:x",
        "/a/:",
    ] {
        refused(&get(p), PATH_BYTE);
    }
    refused(b"GET /a\tb HTTP/1.1\r\n\r\n", PATH_BYTE);
    refused(b"GET /a b HTTP/1.1\r\n\r\n", VERSION);
    refused(&get("/metadata/\u{131}dentity"), NON_ASCII);
    refused(b"GET /a\x00b HTTP/1.1\r\n\r\n", CONTROL);
    // Case: not refused by the parser, not folded either: the rules match
    // bytes (see `exact_and_subtree_rules`).
    assert_eq!(
        Parser::new()
            .parse(&get("/Latest/Meta-Data/"))
            .map(|h| h.path_len),
        Ok(18)
    );
}

/// §7 row 16: targets that are not origin-form, methods, versions.
#[test]
fn other_forms_methods_and_versions_are_refused() {
    use req_reason::*;
    refused(
        &get("http://169.254.169.254/latest/meta-data/"),
        TARGET_FORM,
    );
    refused(&get("http://user@169.254.169.254/latest/"), TARGET_FORM);
    refused(&get("http://0xa9fea9fe/latest/"), TARGET_FORM);
    refused(&get("http://2852039166/latest/"), TARGET_FORM);
    refused(b"CONNECT 169.254.169.254:80 HTTP/1.1\r\n\r\n", METHOD);
    refused(b"GET 169.254.169.254:80 HTTP/1.1\r\n\r\n", TARGET_FORM);
    refused(b"OPTIONS * HTTP/1.1\r\n\r\n", METHOD);
    refused(b"GET * HTTP/1.1\r\n\r\n", TARGET_FORM);
    for m in [
        "TRACE", "POST", "DELETE", "PATCH", "get", "Get", "GETS", "G", "GE T",
    ] {
        refused(format!("{m} /a HTTP/1.1\r\n\r\n").as_bytes(), METHOD);
    }
    refused(b" GET /a HTTP/1.1\r\n\r\n", METHOD);
    refused(b"GET  /a HTTP/1.1\r\n\r\n", TARGET_FORM);
    refused(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", H2_PREFACE);
    refused(b"GET /a HTTP/9.9\r\n\r\n", VERSION);
    refused(b"GET /a HTTP/2.0\r\n\r\n", VERSION);
    refused(b"GET /a HTTP/1.2\r\n\r\n", VERSION);
    refused(b"GET /a http/1.1\r\n\r\n", VERSION);
    refused(b"GET /a HTTP/1.1 \r\n\r\n", VERSION);
    refused(b"GET /a  HTTP/1.1\r\n\r\n", VERSION);
    refused(b"GET /a\r\n\r\n", VERSION);
    refused(b"GET /a HTTP/1.10\r\n\r\n", VERSION);
}

/// §7 row 17: what the parser does not read.
#[test]
fn overlong_heads_are_refused() {
    use req_reason::*;
    let path240 = format!("/{}", "a".repeat(239));
    accepted(&get(&path240), req_method::GET, &path240, req_version::V1);
    refused(&get(&format!("/{}", "a".repeat(240))), PATH_TOO_LONG);
    // GPA A3: a 65 KB URI.
    refused(&get(&format!("/{}", "a/".repeat(32 * 1024))), PATH_TOO_LONG);
    // A request line of 257 bytes whose path fits.
    let method_pad = "GET ".len() + " HTTP/1.1\r\n".len();
    let long = format!("/{}", "a".repeat(239));
    assert!(method_pad + long.len() < 257);
    // Lines are bounded by the path first; a long line needs a long
    // version part, which is refused as a version: the line bound still
    // holds on its own.
    let mut p = Parser::new();
    let mut line = format!("GET {long} HTTP/1.1").into_bytes();
    line.resize(LINE_MAX as usize + 1, b'1');
    let mut r = Step::Continue;
    for &b in &line {
        r = p.step(b);
        if r != Step::Continue {
            break;
        }
    }
    assert_eq!(r, Step::Refused(VERSION));

    // A header line of 1025 bytes, CRLF included.
    let value = "v".repeat(HEADER_LINE_MAX as usize - "X: \r\n".len());
    assert!(parse(&head("GET /a HTTP/1.1", &format!("X: {value}\r\n"))).is_ok());
    refused(
        &head("GET /a HTTP/1.1", &format!("X: {value}v\r\n")),
        HEADER_TOO_LONG,
    );
    // 32 header lines, then 33.
    let lines = "A: b\r\n".repeat(HEADERS_MAX as usize);
    assert!(parse(&head("GET /a HTTP/1.1", &lines)).is_ok());
    refused(
        &head("GET /a HTTP/1.1", &format!("{lines}A: b\r\n")),
        TOO_MANY_HEADERS,
    );
    // A head of 2048 bytes, then 2049.
    let fill = |n: usize| {
        let mut h = String::new();
        let mut left = n;
        while left > 0 {
            let take = left.min(1000);
            h.push_str(&format!("X: {}\r\n", "v".repeat(take - 5)));
            left -= take;
        }
        h
    };
    let base = head("GET /a HTTP/1.1", "").len();
    let exact = head("GET /a HTTP/1.1", &fill(HEAD_MAX as usize - base));
    assert_eq!(exact.len(), HEAD_MAX as usize);
    assert!(parse(&exact).is_ok());
    let over = head("GET /a HTTP/1.1", &fill(HEAD_MAX as usize - base + 6));
    refused(&over, HEAD_TOO_LONG);
}

/// The request line's own bound, reached with a path that fits.
#[test]
fn request_line_bound() {
    // The longest line a canonical head can have is 4 + 240 + 11 = 255
    // ("HEAD " is 5: 256): the bound is never the one that refuses a
    // canonical line, and is checked first for anything longer.
    let path = format!("/{}", "a".repeat(239));
    let line = format!("HEAD {path} HTTP/1.1\r\n");
    assert_eq!(line.len(), LINE_MAX as usize);
    assert!(parse(format!("{line}\r\n").as_bytes()).is_ok());
}

/// §7 row 18: line ends, folding, header names, values.
#[test]
fn malformed_lines_are_refused() {
    use req_reason::*;
    refused(b"GET /a HTTP/1.1\n\r\n", BARE_LF);
    refused(b"GET /a HTTP/1.1\r\nHost: x\n\r\n", BARE_LF);
    refused(b"GET /a HTTP/1.1\r\n\n", BARE_LF);
    refused(b"GET /a HTTP/1.1\r\nHost: x\r\n\n", BARE_LF);
    refused(b"GET /a HTTP/1.1\rX\n\r\n", BARE_CR);
    refused(b"GET /a HTTP/1.1\r\nHost: x\rY: z\r\n\r\n", BARE_CR);
    refused(b"GET /a HTTP/1.1\r\n\rX", BARE_CR);
    refused(b"GET /a HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", FOLDED);
    refused(b"GET /a HTTP/1.1\r\nHost: x\r\n\tfolded\r\n\r\n", FOLDED);
    refused(b"GET /a HTTP/1.1\r\nHost : x\r\n\r\n", HEADER_NAME);
    refused(b"GET /a HTTP/1.1\r\nHost\t: x\r\n\r\n", HEADER_NAME);
    refused(b"GET /a HTTP/1.1\r\n: x\r\n\r\n", HEADER_NAME);
    refused(b"GET /a HTTP/1.1\r\nHo(st: x\r\n\r\n", HEADER_NAME);
    refused(b"GET /a HTTP/1.1\r\nHost\r\n\r\n", HEADER_NAME);
    refused(b"GET /a HTTP/1.1\r\nHost: a\x00b\r\n\r\n", CONTROL);
    refused(b"GET /a HTTP/1.1\r\nHost: a\x7fb\r\n\r\n", CONTROL);
    refused(b"GET /a HTTP/1.1\r\nHost: a\xffb\r\n\r\n", NON_ASCII);
    refused(
        &head(
            "GET /a HTTP/1.1",
            "X-aws-ec2-metadata-token: a\r\nx-aws-ec2-metadata-token: b\r\n",
        ),
        TOKEN_REPEATED,
    );
    refused(
        &head("GET /a HTTP/1.1", "X-aws-ec2-metadata-token: \r\n"),
        TOKEN_EMPTY,
    );
    refused(
        &head("GET /a HTTP/1.1", "X-aws-ec2-metadata-token:\r\n"),
        TOKEN_EMPTY,
    );
}

/// A head cut anywhere is incomplete (the kernel corks it), never accepted
/// or refused for being cut; byte by byte, `step` agrees with `parse`.
#[test]
fn every_prefix_of_a_head_is_incomplete() {
    let full = head(
        "GET /latest/meta-data/instance-id HTTP/1.1",
        "Host: 169.254.169.254\r\nX-aws-ec2-metadata-token: T\r\nContent-Length: 0\r\n",
    );
    for n in 0..full.len() {
        assert_eq!(parse(&full[..n]), Err(req_reason::INCOMPLETE), "prefix {n}");
    }
    let mut p = Parser::new();
    let last = full.len() - 1;
    for (i, &b) in full.iter().enumerate() {
        let s = p.step(b);
        if i < last {
            assert_eq!(s, Step::Continue, "byte {i}");
        } else {
            assert!(matches!(s, Step::Done(_)));
        }
    }
    assert!(matches!(p.finish(), Finish::Head(h) if h.version == req_version::V2));
    // Refusals stick; a byte after the head refuses.
    assert_eq!(p.step(b'G'), Step::Refused(req_reason::TRAILING));
    assert_eq!(p.step(b'G'), Step::Refused(req_reason::TRAILING));
    assert_eq!(p.finish(), Finish::Refused(req_reason::TRAILING));
}

/// `reset` starts again: no state of a refused or passed head leaks into
/// the next one, and stale path bytes are never covered by the prefix.
#[test]
fn reset_forgets_the_last_head() {
    let mut p = Parser::new();
    assert!(
        p.parse(&get("/latest/meta-data/iam/security-credentials/"))
            .is_ok()
    );
    assert_eq!(p.parse(&get("/x%")), Err(req_reason::PERCENT));
    let h = p.parse(&get("/a")).expect("accepted");
    assert_eq!(p.path(), b"/a");
    assert_eq!(p.lookup.key.path[2], 0);
    assert_eq!(p.lookup.prefix_len, (KEY_HEAD_LEN + 3) * 8);
    assert_eq!(h.version, req_version::V1);
    assert!(
        p.parse(&head("GET /a HTTP/1.1", "X-aws-ec2-metadata-token: t\r\n"))
            .is_ok()
    );
    assert_eq!(p.parse(&get("/a")).map(|h| h.version), Ok(req_version::V1));
}

/// The canonical form, stated independently of the state machine: what
/// the parser must accept, and nothing else.
fn canonical(path: &[u8]) -> bool {
    let Some(rest) = path.strip_prefix(b"/") else {
        return false;
    };
    if path.len() > PATH_MAX as usize {
        return false;
    }
    let segments: Vec<&[u8]> = rest.split(|&b| b == b'/').collect();
    let last = segments.len() - 1;
    segments.iter().enumerate().all(|(i, s)| {
        if s.is_empty() {
            return i == last;
        }
        s[0] != b':'
            && !s.ends_with(b".")
            && s.iter().all(|&b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-' | b':')
            })
    })
}

/// Every accepted path is a fixed point: the parser keeps it byte for byte
/// (nothing decoded, folded or collapsed), it is canonical by the
/// independent statement, and parsing a rule made of it gives it back.
/// Every canonical path is accepted. Random paths over an alphabet rich in
/// the bytes that matter.
#[test]
fn accepted_paths_are_fixed_points() {
    const ALPHABET: &[u8] = b"/////...aZ09-_~:%;?#+@\\ \t,=\x00\x80A";
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut yes, mut no) = (0, 0);
    for _ in 0..200_000 {
        let len = (next() % 12) as usize;
        let mut path = Vec::from(&b"/"[..]);
        for _ in 0..len {
            path.push(ALPHABET[(next() % ALPHABET.len() as u64) as usize]);
        }
        let mut message = Vec::from(&b"GET "[..]);
        message.extend_from_slice(&path);
        message.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        let mut p = Parser::new();
        let got = p.parse(&message);
        assert_eq!(
            got.is_ok(),
            canonical(&path),
            "{:?}: {got:?}",
            String::from_utf8_lossy(&path)
        );
        if got.is_ok() {
            yes += 1;
            assert_eq!(p.path(), &path[..]);
            let mut again = Parser::new();
            let mut rule = Vec::from(&b"PUT "[..]);
            rule.extend_from_slice(p.path());
            rule.extend_from_slice(b" HTTP/1.0\r\n\r\n");
            assert!(again.parse(&rule).is_ok());
            assert_eq!(again.path(), p.path());
        } else {
            no += 1;
        }
    }
    // The generator reaches both sides often.
    assert!(yes > 10_000 && no > 10_000, "{yes} accepted, {no} refused");
}

/// Rules in the trie: a subtree rule covers its subtree, an exact rule its
/// own path only (segment-aligned: no `instance-idX`), methods and rule
/// sets and generations apart, bytes compared as they are (case).
#[test]
fn exact_and_subtree_rules() {
    use req_method::*;
    let rule = |set, m, p: &str| ReqKey::rule(0, set, m, p.as_bytes()).expect("fits");
    let matches = |(len, key): (u32, ReqKey), set, m, p: &str| {
        let (l, k) = ReqKey::lookup(0, set, m, p.as_bytes()).expect("fits");
        key.covers(len, l, &k)
    };
    let exact = rule(1, GET, "/latest/meta-data/instance-id");
    assert!(matches(exact, 1, GET, "/latest/meta-data/instance-id"));
    assert!(!matches(exact, 1, GET, "/latest/meta-data/instance-idX"));
    assert!(!matches(exact, 1, GET, "/latest/meta-data/instance-id/"));
    assert!(!matches(exact, 1, GET, "/latest/meta-data/instance-i"));
    assert!(!matches(exact, 1, HEAD, "/latest/meta-data/instance-id"));
    assert!(!matches(exact, 2, GET, "/latest/meta-data/instance-id"));
    assert!(!matches(exact, 1, GET, "/latest/meta-data/Instance-id"));
    let tree = rule(1, GET, "/latest/meta-data/placement/");
    assert!(matches(tree, 1, GET, "/latest/meta-data/placement/"));
    assert!(matches(tree, 1, GET, "/latest/meta-data/placement/region"));
    assert!(matches(tree, 1, GET, "/latest/meta-data/placement/a/b"));
    assert!(!matches(tree, 1, GET, "/latest/meta-data/placement"));
    assert!(!matches(tree, 1, GET, "/latest/meta-data/placementX/"));
    // A rule set number above 255 is two bytes, big-endian.
    let high = rule(0x0102, GET, "/");
    assert_eq!(high.1.ruleset, [1, 2]);
    assert!(matches(high, 0x0102, GET, "/x"));
    assert!(!matches(high, 0x0201, GET, "/x"));
    // The prefix lengths: head and path bytes, plus the terminator when
    // exact.
    assert_eq!(exact.0, (KEY_HEAD_LEN + 29 + 1) * 8);
    assert_eq!(tree.0, (KEY_HEAD_LEN + 28) * 8);
    assert!(ReqKey::rule(0, 1, GET, b"").is_none());
    assert!(ReqKey::rule(0, 1, GET, &[b'a'; PATH_MAX as usize + 1]).is_none());
}

/// The parser's own lookup key is the one `ReqKey::lookup` builds.
#[test]
fn parser_key_is_the_lookup_key() {
    let mut p = Parser::new();
    p.parse(&get("/latest/meta-data/placement/region"))
        .expect("accepted");
    p.set_scope(1, 7);
    let (len, key) =
        ReqKey::lookup(1, 7, req_method::GET, b"/latest/meta-data/placement/region").expect("fits");
    assert_eq!(p.lookup.prefix_len, len);
    let n = (len / 8) as usize;
    assert_eq!(p.lookup.key.as_bytes()[..n], key.as_bytes()[..n]);
}
