//! Telling systemd how the service is doing (`Type=notify`), without
//! libsystemd: readiness once the guard is enforcing, reloads, shutdown.
//! By hand rather than with the `sd-notify` crate, which does not reach
//! abstract socket names (CONTRIBUTING.md, "What we write by hand").
//!
//! The protocol (sd_notify(3), <https://systemd.io/NOTIFY/>) is a set of
//! newline-separated `VARIABLE=value` assignments sent as one datagram on the
//! `AF_UNIX` socket named by `$NOTIFY_SOCKET`: a file system path, or an
//! abstract socket name when it starts with `@`. Outside systemd the
//! variable is unset and every function here returns `Ok(())` at once.
//!
//! Each function returns an error rather than logging it, so that the caller
//! says what the notification was for. None is fatal to the guard: a lost
//! `READY=1` makes systemd time the start out, which the caller should log.

use std::{
    ffi::OsStr,
    io,
    os::{
        linux::net::SocketAddrExt as _,
        unix::{
            ffi::OsStrExt as _,
            net::{SocketAddr, UnixDatagram},
        },
    },
    path::Path,
};

use nix::time::{ClockId, clock_gettime};

/// The variable systemd sets for a `Type=notify` service.
pub const SOCKET_ENV: &str = "NOTIFY_SOCKET";

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(
        "{SOCKET_ENV}={0:?} is neither an absolute path nor an abstract socket name (\"@name\")"
    )]
    Address(String),
    #[error("cannot read CLOCK_MONOTONIC for the reload notification")]
    Clock(#[source] nix::Error),
    #[error("cannot send {state} to the service manager on {socket:?}")]
    Send {
        socket: String,
        /// The first assignment of the message, e.g. `READY=1`.
        state: String,
        #[source]
        source: io::Error,
    },
}

/// `READY=1`: the guard is enforcing. `status` is shown by
/// `systemctl status` (newlines become spaces: they would end the
/// assignment). Send it again after a reload, which ends the reload.
pub fn ready(status: &str) -> Result<(), NotifyError> {
    notify_env(&ready_message(status))
}

/// `RELOADING=1` with the `MONOTONIC_USEC` systemd 253 and later require: a
/// reload has begun. [`ready`] ends it.
pub fn reloading() -> Result<(), NotifyError> {
    notify_env(&reloading_message(monotonic_usec()?))
}

/// `STOPPING=1`: the agent is shutting down.
pub fn stopping() -> Result<(), NotifyError> {
    notify_env(STOPPING)
}

const STOPPING: &str = "STOPPING=1";

/// Logs what a notification's failure was: notifications are best effort.
/// Without systemd they do nothing, and a failure to send one is worth a
/// line, not an exit.
pub fn best_effort(result: Result<(), NotifyError>) {
    if let Err(e) = result {
        tracing::warn!("cannot notify systemd: {:#}", anyhow::Error::from(e));
    }
}

fn ready_message(status: &str) -> String {
    format!("READY=1\nSTATUS={}", one_line(status))
}

fn reloading_message(monotonic_usec: u64) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares the reload
/// notification against.
fn monotonic_usec() -> Result<u64, NotifyError> {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).map_err(NotifyError::Clock)?;
    // The monotonic clock starts at boot: both parts are non-negative.
    let secs = u64::try_from(now.tv_sec()).unwrap_or_default();
    let nanos = u64::try_from(now.tv_nsec()).unwrap_or_default();
    Ok(secs * 1_000_000 + nanos / 1_000)
}

fn notify_env(message: &str) -> Result<(), NotifyError> {
    notify_to(std::env::var_os(SOCKET_ENV).as_deref(), message)
}

/// Sends `message` to `socket` (the value of `$NOTIFY_SOCKET`); nothing when
/// there is none. The environment is read only by the public functions, so
/// that tests running in parallel threads need not touch it.
fn notify_to(socket: Option<&OsStr>, message: &str) -> Result<(), NotifyError> {
    let Some(socket) = socket.filter(|s| !s.is_empty()) else {
        return Ok(());
    };
    let send_error = |source| NotifyError::Send {
        socket: socket.to_string_lossy().into_owned(),
        state: message.lines().next().unwrap_or_default().to_owned(),
        source,
    };
    let addr = notify_addr(socket)?.map_err(send_error)?;
    let sock = UnixDatagram::unbound().map_err(send_error)?;
    sock.send_to_addr(message.as_bytes(), &addr)
        .map_err(send_error)?;
    Ok(())
}

/// The socket address `$NOTIFY_SOCKET` names. The outer error is a value that
/// is not an address; the inner one, an address the kernel refuses (too long).
fn notify_addr(socket: &OsStr) -> Result<io::Result<SocketAddr>, NotifyError> {
    let bytes = socket.as_bytes();
    match bytes.first() {
        // An abstract name's first byte is NUL on the wire; systemd writes it
        // as '@' in the variable.
        Some(b'@') => Ok(SocketAddr::from_abstract_name(&bytes[1..])),
        Some(b'/') => Ok(SocketAddr::from_pathname(Path::new(socket))),
        // systemd 254 and later may also hand a VM a `vsock:CID:PORT`
        // address; that is for a guest's own service manager, not ours.
        _ => Err(NotifyError::Address(socket.to_string_lossy().into_owned())),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        ffi::OsString,
        path::PathBuf,
        sync::atomic::{AtomicU32, Ordering},
        time::Duration,
    };

    use super::*;

    /// A bound datagram socket standing in for systemd's, removed on drop.
    struct Listener {
        sock: UnixDatagram,
        path: Option<PathBuf>,
        name: OsString,
    }

    fn unique(what: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "imds-guard-notify-test-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    impl Listener {
        fn path() -> Self {
            let path = std::env::temp_dir().join(unique("path"));
            let sock = UnixDatagram::bind(&path)
                .unwrap_or_else(|e| panic!("binding {}: {e}", path.display()));
            Self::ready(sock, Some(path.clone()), path.into_os_string())
        }

        fn abstract_name() -> Self {
            let name = unique("abstract");
            let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
            let sock = UnixDatagram::bind_addr(&addr).expect("binding an abstract socket");
            Self::ready(sock, None, format!("@{name}").into())
        }

        fn ready(sock: UnixDatagram, path: Option<PathBuf>, name: OsString) -> Self {
            sock.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("read timeout");
            Self { sock, path, name }
        }

        fn recv(&self) -> String {
            let mut buf = [0u8; 4096];
            let n = self
                .sock
                .recv(&mut buf)
                .expect("no notification arrived within 5 s");
            String::from_utf8(buf[..n].to_vec()).expect("notification is UTF-8")
        }
    }

    impl Drop for Listener {
        fn drop(&mut self) {
            if let Some(path) = &self.path {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    #[test]
    fn ready_reaches_a_path_socket_as_one_datagram() {
        let l = Listener::path();
        notify_to(Some(&l.name), &ready_message("enforcing on /sys/fs/cgroup"))
            .expect("sending READY=1");
        assert_eq!(l.recv(), "READY=1\nSTATUS=enforcing on /sys/fs/cgroup");
    }

    #[test]
    fn an_at_sign_names_an_abstract_socket() {
        let l = Listener::abstract_name();
        notify_to(Some(&l.name), STOPPING).expect("sending STOPPING=1");
        assert_eq!(l.recv(), "STOPPING=1");
    }

    #[test]
    fn reloading_carries_the_monotonic_clock_in_microseconds() {
        let l = Listener::path();
        let before = monotonic_usec().expect("clock");
        let message = reloading_message(monotonic_usec().expect("clock"));
        let after = monotonic_usec().expect("clock");
        notify_to(Some(&l.name), &message).expect("sending RELOADING=1");
        let got = l.recv();
        let usec: u64 = got
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("unexpected reload message {got:?}"))
            .parse()
            .unwrap_or_else(|e| panic!("MONOTONIC_USEC in {got:?}: {e}"));
        assert!(
            (before..=after).contains(&usec),
            "{usec} not in {before}..={after}"
        );
        // Microseconds, not nanoseconds or seconds: the same order as
        // /proc/uptime (seconds since boot) times a million.
        let uptime: f64 = std::fs::read_to_string("/proc/uptime")
            .expect("/proc/uptime")
            .split(' ')
            .next()
            .and_then(|s| s.parse().ok())
            .expect("uptime");
        let ratio = usec as f64 / (uptime * 1e6);
        assert!(
            (0.5..2.0).contains(&ratio),
            "{usec} µs vs {uptime} s uptime"
        );
    }

    #[test]
    fn a_status_is_kept_on_one_line() {
        assert_eq!(ready_message("a\nb\r\nc"), "READY=1\nSTATUS=a b  c");
    }

    #[test]
    fn no_socket_means_nothing_to_do() {
        notify_to(None, STOPPING).expect("no socket is not an error");
        notify_to(Some(OsStr::new("")), STOPPING).expect("an empty variable is no socket");
    }

    #[test]
    fn a_relative_or_vsock_address_is_refused_by_name() {
        for bad in ["run/notify", "vsock:2:1234"] {
            let err = notify_to(Some(OsStr::new(bad)), STOPPING).expect_err(bad);
            assert_eq!(
                err.to_string(),
                format!(
                    "NOTIFY_SOCKET={bad:?} is neither an absolute path nor an abstract socket name (\"@name\")"
                )
            );
        }
    }

    #[test]
    fn a_missing_socket_is_an_error_naming_it_and_the_state() {
        let path = std::env::temp_dir().join(unique("missing"));
        let err = notify_to(Some(path.as_os_str()), &ready_message("x")).expect_err("no listener");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot send READY=1 to the service manager on {:?}",
                path.display().to_string()
            )
        );
        let source = std::error::Error::source(&err).expect("the io error is the source");
        assert!(source.to_string().contains("No such file"), "{source}");
    }
}
