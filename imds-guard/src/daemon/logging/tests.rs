//! Tests of the journal detection and of the journal layer's output. The
//! layer's socket path is fixed (`/run/systemd/journal/socket`), so its test
//! mounts a tmpfs on `/run` in a mount namespace of its own thread (needs
//! `CAP_SYS_ADMIN`; the host's `/run` is never touched).

use std::{
    collections::BTreeMap,
    io::Write as _,
    os::{fd::AsFd as _, unix::net::UnixDatagram},
    time::Duration,
};

use super::*;
use crate::testing::in_private_run;

fn temp_file() -> (std::path::PathBuf, File) {
    let path = std::env::temp_dir().join(format!(
        "imds-guard-journal-stream-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut file = File::create(&path).expect("temporary file");
    file.write_all(b"x").expect("write");
    (path, file)
}

#[test]
fn journal_stream_matches_only_the_named_device_and_inode() {
    let (path, file) = temp_file();
    let meta = file.metadata().expect("metadata");
    let fd = file.as_fd();
    let value = format!("{}:{}", meta.dev(), meta.ino());
    assert!(journal_stream_is(Some(OsStr::new(&value)), fd), "{value}");

    let other_inode = format!("{}:{}", meta.dev(), meta.ino() + 1);
    let other_device = format!("{}:{}", meta.dev() + 1, meta.ino());
    for wrong in [
        other_inode.as_str(),
        other_device.as_str(),
        "",
        "garbage",
        "12",
        "12:",
        ":34",
        "-1:5",
    ] {
        assert!(!journal_stream_is(Some(OsStr::new(wrong)), fd), "{wrong:?}");
    }
    assert!(!journal_stream_is(None, fd), "unset");
    std::fs::remove_file(path).expect("removing the temporary file");
}

/// Parses journald's native protocol: `NAME=value\n`, or `NAME\n`, a
/// 64-bit little-endian length, the value and `\n`.
fn parse_native(mut buf: &[u8]) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    while !buf.is_empty() {
        let end = buf
            .iter()
            .position(|&b| b == b'=' || b == b'\n')
            .expect("a field name ends with '=' or a newline");
        let name = String::from_utf8(buf[..end].to_vec()).expect("UTF-8 name");
        let value;
        if buf[end] == b'=' {
            let rest = &buf[end + 1..];
            let nl = rest.iter().position(|&b| b == b'\n').expect("newline");
            value = rest[..nl].to_vec();
            buf = &rest[nl + 1..];
        } else {
            let rest = &buf[end + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")) as usize;
            value = rest[8..8 + len].to_vec();
            assert_eq!(rest[8 + len], b'\n', "a binary value ends with a newline");
            buf = &rest[8 + len + 1..];
        }
        let value = String::from_utf8(value).expect("UTF-8 value");
        assert!(
            fields.insert(name.clone(), value).is_none(),
            "field {name} sent twice"
        );
    }
    fields
}

#[test]
fn journal_layer_fails_without_journald_and_sends_plain_upper_case_fields() {
    in_private_run(|| {
        let Err(err) = journald_layer() else {
            panic!("no journald listens in the private /run, yet the layer was made");
        };
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");

        std::fs::create_dir_all("/run/systemd/journal").expect("mkdir /run/systemd/journal");
        let journal =
            UnixDatagram::bind("/run/systemd/journal/socket").expect("binding a fake journald");
        journal
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let layer = journald_layer().expect("the layer reaches the fake journald");
        let mut buf = vec![0u8; 65536];
        // The layer checks the socket with an empty datagram.
        assert_eq!(journal.recv(&mut buf).expect("the probe datagram"), 0);

        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let user: Option<&str> = Some("alice");
            tracing::warn!(
                event = "deny",
                uid = 1000u32,
                user = user,
                gid = 1000u32,
                pid = 4242u32,
                tid = 4243u32,
                comm = %"curl",
                dst = %"169.254.169.254",
                port = 80u16,
                hook = "connect4",
                cgroup_id = 77u64,
                reason = "neither uid 1000 nor gid 1000 is in [allow]",
                "denied connection to 169.254.169.254:80\nby pid 4242"
            );
            tracing::info!(ready = true, mode = "enforce", "guard attached");
        });

        let n = journal.recv(&mut buf).expect("the deny record");
        let deny = parse_native(&buf[..n]);
        let expected = [
            ("EVENT", "deny"),
            ("UID", "1000"),
            ("USER", "alice"),
            ("GID", "1000"),
            ("PID", "4242"),
            ("TID", "4243"),
            ("COMM", "curl"),
            ("DST", "169.254.169.254"),
            ("PORT", "80"),
            ("HOOK", "connect4"),
            ("CGROUP_ID", "77"),
            ("REASON", "neither uid 1000 nor gid 1000 is in [allow]"),
            (
                "MESSAGE",
                "denied connection to 169.254.169.254:80\nby pid 4242",
            ),
            ("PRIORITY", "4"),
            ("SYSLOG_IDENTIFIER", "imds-guard"),
        ];
        for (name, value) in expected {
            assert_eq!(
                deny.get(name).map(String::as_str),
                Some(value),
                "{name} in {deny:#?}"
            );
        }
        assert!(
            !deny.keys().any(|k| k.starts_with("F_")),
            "no field prefix: {deny:#?}"
        );

        let n = journal.recv(&mut buf).expect("the ready record");
        let ready = parse_native(&buf[..n]);
        assert_eq!(ready.get("READY").map(String::as_str), Some("true"));
        assert_eq!(ready.get("MODE").map(String::as_str), Some("enforce"));
        assert_eq!(ready.get("PRIORITY").map(String::as_str), Some("6"));
    });
}

#[test]
fn colours_only_on_a_terminal_without_no_color() {
    assert!(colour(true, None));
    assert!(colour(true, Some(OsStr::new(""))));
    assert!(!colour(true, Some(OsStr::new("1"))));
    assert!(!colour(false, None));
}
