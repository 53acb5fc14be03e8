//! The HTTP side of the fake IMDS: just enough HTTP/1.1 (one request per
//! connection, `Connection: close`, unless the client asks for
//! `Connection: keep-alive`, as EC2's service allows) and the IMDSv2 token
//! flow of EC2's service, as documented in the EC2 user guide ("Use the
//! Instance Metadata Service to access instance metadata").

use std::{
    collections::HashSet,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::util::random_hex;

/// The only IAM role the fake instance has.
pub const ROLE: &str = "imds-guard-test-role";
/// The instance id the fake IMDS serves, with or without a token (as an
/// instance that still allows IMDSv1 serves it).
pub const INSTANCE_ID: &str = "i-0imdsguardtest0";
/// Paths served without a token (IMDSv1); the rest want one.
const PUBLIC: [(&str, &str); 2] = [
    ("/latest/meta-data/instance-id", INSTANCE_ID),
    ("/latest/meta-data/placement/region", "us-east-1"),
];

const TOKEN_PATH: &str = "/latest/api/token";
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// EC2 accepts token lifetimes from one second to six hours.
const MAX_TTL: u32 = 21_600;
/// Bounds what one connection may make the server read.
const MAX_HEAD: usize = 16 * 1024;

/// A parsed request head. The body, if any, is not needed by any route.
#[derive(Debug)]
pub(crate) struct Request {
    pub method: String,
    pub path: String,
    headers: Vec<(String, String)>,
}

impl Request {
    /// Whether the client asked to keep the connection for more requests.
    pub fn keep_alive(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("keep-alive"))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Takes one whole request head off the front of `buf`, if it holds one
/// (the connection is read as bytes arrive); a head too large to be one is
/// an error.
pub(crate) fn take_request(buf: &mut Vec<u8>) -> Option<Result<Request, String>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (buf.len() > MAX_HEAD).then(|| Err("request head too large".into()));
    };
    let request = parse_head(&buf[..end]);
    buf.drain(..end + 4);
    Some(request)
}

fn parse_head(head: &[u8]) -> Result<Request, String> {
    let head = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(path), Some(version), None) = (
        request_line.next(),
        request_line.next(),
        request_line.next(),
        request_line.next(),
    ) else {
        return Err("malformed request line".into());
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("unsupported version {version}"));
    }
    let headers = lines
        .map(|l| {
            l.split_once(':')
                .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| format!("malformed header {l:?}"))
        })
        .collect::<Result<_, _>>()?;
    Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        headers,
    })
}

/// A response, with `Connection: close` unless it keeps the connection.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: u16,
    extra_header: Option<(&'static str, String)>,
    pub body: String,
    /// `Connection: keep-alive`: the server reads the next request.
    pub keep_alive: bool,
}

impl Response {
    fn new(status: u16, body: impl Into<String>) -> Self {
        Response {
            status,
            extra_header: None,
            body: body.into(),
            keep_alive: false,
        }
    }

    pub fn bad_request(why: &str) -> Self {
        Response::new(400, format!("bad request: {why}"))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Unknown",
        };
        let extra = self
            .extra_header
            .as_ref()
            .map(|(n, v)| format!("{n}: {v}\r\n"))
            .unwrap_or_default();
        format!(
            "HTTP/1.1 {} {reason}\r\nServer: EC2ws\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\n{extra}Connection: {}\r\n\r\n{}",
            self.status,
            self.body.len(),
            if self.keep_alive {
                "keep-alive"
            } else {
                "close"
            },
            self.body
        )
        .into_bytes()
    }
}

/// The metadata service's state: issued tokens and the one credentials
/// document.
#[derive(Debug)]
pub(crate) struct Imds {
    credentials: String,
    marker: String,
    /// Token lifetimes are not enforced: no test outlives the shortest one a
    /// probe asks for.
    tokens: HashSet<String>,
}

impl Imds {
    pub fn new() -> Self {
        let marker = random_hex(16);
        Imds {
            credentials: credentials_document(&marker, now_secs()),
            marker,
            tokens: HashSet::new(),
        }
    }

    pub fn credentials(&self) -> &str {
        &self.credentials
    }

    pub fn marker(&self) -> &str {
        &self.marker
    }

    pub fn handle(&mut self, req: &Request) -> Response {
        Response {
            keep_alive: req.keep_alive(),
            ..self.route(req)
        }
    }

    fn route(&mut self, req: &Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("PUT", TOKEN_PATH) => self.issue_token(req),
            ("GET", path) if PUBLIC.iter().any(|(p, _)| *p == path) => self.get(path),
            ("GET", path) => {
                let authorized = req
                    .header(TOKEN_HEADER)
                    .is_some_and(|t| self.tokens.contains(t));
                if authorized {
                    self.get(path)
                } else {
                    Response::new(401, "")
                }
            }
            ("PUT", _) => Response::new(404, "not found"),
            _ => Response::new(405, "method not allowed"),
        }
    }

    fn issue_token(&mut self, req: &Request) -> Response {
        let Some(ttl) = req.header(TTL_HEADER) else {
            return Response::bad_request("missing token TTL");
        };
        match ttl.parse::<u32>() {
            Ok(ttl @ 1..=MAX_TTL) => {
                let token = format!("AQAEA{}", random_hex(24));
                self.tokens.insert(token.clone());
                Response {
                    extra_header: Some(("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", ttl.to_string())),
                    ..Response::new(200, token)
                }
            }
            _ => Response::bad_request("token TTL out of range"),
        }
    }

    fn get(&self, path: &str) -> Response {
        const CREDENTIALS: &str = "/latest/meta-data/iam/security-credentials/";
        match path {
            "/latest/meta-data/" => Response::new(
                200,
                "ami-id\nhostname\niam/\ninstance-id\ninstance-type\nlocal-ipv4\nplacement/",
            ),
            CREDENTIALS => Response::new(200, ROLE),
            p if PUBLIC.iter().any(|(public, _)| *public == p) => Response::new(
                200,
                PUBLIC
                    .iter()
                    .find(|(public, _)| *public == p)
                    .map_or("", |(_, body)| *body),
            ),
            p if p.strip_prefix(CREDENTIALS) == Some(ROLE) => {
                Response::new(200, self.credentials.clone())
            }
            _ => Response::new(404, "not found"),
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A credentials document shaped like EC2's, field order and `" : "`
/// spacing included. `marker` is in the key id and the token, so a test can
/// tell this server's body from any other.
fn credentials_document(marker: &str, now: u64) -> String {
    let key_id = format!("ASIA{}", marker[..16].to_ascii_uppercase());
    format!(
        "{{\n  \"Code\" : \"Success\",\n  \"LastUpdated\" : \"{}\",\n  \
         \"Type\" : \"AWS-HMAC\",\n  \"AccessKeyId\" : \"{key_id}\",\n  \
         \"SecretAccessKey\" : \"{}\",\n  \"Token\" : \"IQoJb3JpZ2luX2VjEimds-guard-test-{marker}\",\n  \
         \"Expiration\" : \"{}\"\n}}",
        rfc3339(now),
        random_hex(20),
        rfc3339(now + 6 * 3600),
    )
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time, with Howard Hinnant's
/// days-to-civil algorithm (no date crate for two timestamps).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Request {
        let head = text.strip_suffix("\r\n\r\n").unwrap_or(text);
        parse_head(head.as_bytes()).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn token(imds: &mut Imds) -> String {
        let resp = imds.handle(&request(
            "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600",
        ));
        assert_eq!(resp.status, 200, "{resp:?}");
        resp.body
    }

    fn get(imds: &mut Imds, path: &str, token: &str) -> Response {
        imds.handle(&request(&format!(
            "GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token: {token}"
        )))
    }

    #[test]
    fn token_flow_reaches_the_credentials() {
        let mut imds = Imds::new();
        let token = token(&mut imds);
        let listing = get(&mut imds, "/latest/meta-data/", &token);
        assert_eq!(listing.status, 200);
        assert!(listing.body.lines().any(|l| l == "iam/"), "{listing:?}");
        let roles = get(
            &mut imds,
            "/latest/meta-data/iam/security-credentials/",
            &token,
        );
        assert_eq!((roles.status, roles.body.as_str()), (200, ROLE));
        let creds = get(
            &mut imds,
            &format!("/latest/meta-data/iam/security-credentials/{ROLE}"),
            &token,
        );
        assert_eq!(creds.status, 200);
        assert_eq!(creds.body, imds.credentials());
        let doc: serde_json::Value = serde_json::from_str(&creds.body)
            .unwrap_or_else(|e| panic!("credentials are not JSON: {e}: {}", creds.body));
        assert_eq!(doc["Code"], "Success");
        assert!(
            doc["AccessKeyId"]
                .as_str()
                .is_some_and(|k| k.starts_with("ASIA"))
        );
        assert!(
            doc["Token"]
                .as_str()
                .is_some_and(|t| t.contains(imds.marker()))
        );
    }

    #[test]
    fn get_without_a_valid_token_is_unauthorized() {
        let mut imds = Imds::new();
        let none = imds.handle(&request("GET /latest/meta-data/ HTTP/1.1\r\nHost: x"));
        assert_eq!(none.status, 401);
        assert_eq!(get(&mut imds, "/latest/meta-data/", "forged").status, 401);
    }

    #[test]
    fn token_ttl_is_checked() {
        let mut imds = Imds::new();
        for ttl in ["0", "21601", "soon"] {
            let resp = imds.handle(&request(&format!(
                "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: {ttl}"
            )));
            assert_eq!(resp.status, 400, "ttl {ttl}");
        }
        let missing = imds.handle(&request("PUT /latest/api/token HTTP/1.1\r\nHost: x"));
        assert_eq!(missing.status, 400);
    }

    #[test]
    fn unknown_paths_are_not_found() {
        let mut imds = Imds::new();
        let token = token(&mut imds);
        assert_eq!(get(&mut imds, "/latest/user-data", &token).status, 404);
        let other_role = "/latest/meta-data/iam/security-credentials/admin";
        assert_eq!(get(&mut imds, other_role, &token).status, 404);
    }

    #[test]
    fn takes_a_whole_request_and_refuses_an_endless_head() {
        let mut buf = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        let req = take_request(&mut buf).and_then(Result::ok);
        assert_eq!(req.map(|r| r.path), Some("/".to_owned()));
        assert!(buf.is_empty());
        let mut endless = vec![b'x'; MAX_HEAD + 1];
        assert!(matches!(take_request(&mut endless), Some(Err(_))));
    }

    #[test]
    fn a_kept_alive_request_is_answered_keeping_the_connection() {
        let mut imds = Imds::new();
        let mut buf = b"PUT /latest/api/token HTTP/1.1\r\nConnection: keep-alive\r\n\
                        X-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\nGET /"
            .to_vec();
        let req = take_request(&mut buf)
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("a whole head"));
        assert_eq!(buf, b"GET /", "the next request's start stays");
        assert!(take_request(&mut buf).is_none(), "not whole yet");
        let resp = imds.handle(&req);
        assert_eq!(resp.status, 200);
        let text = String::from_utf8(resp.to_bytes()).expect("utf-8");
        assert!(text.contains("\r\nConnection: keep-alive\r\n"), "{text}");
        let plain = imds.handle(&request("GET / HTTP/1.1\r\nHost: a"));
        let text = String::from_utf8(plain.to_bytes()).expect("utf-8");
        assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
    }

    #[test]
    fn formats_timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
