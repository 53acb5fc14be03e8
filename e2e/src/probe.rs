//! Runs the `imds-probe` binary: one process, one identity, one action.
//!
//! A separate process is the only faithful subject: the agent decides by the
//! real uid/gid and cgroup of the task that connects, and the test process
//! itself must keep root and stay in the host namespace and cgroup.

use std::{
    ffi::OsString,
    io::{BufRead as _, BufReader, Read, Write as _},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::{Action, Netns, ProbeResult, TestCgroup, bins::probe_bin};

/// How long a probe may take before it is killed and the test fails
/// (times [`slowdown`](crate::slowdown)). Its own socket timeouts are 2 s
/// per step.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The uid and gid of `nobody`, the default identity: an unprivileged user
/// no policy is likely to allow by accident.
pub const NOBODY: u32 = 65_534;

/// A probe configuration; [`Probe::run`] may be called many times.
#[derive(Debug, Clone)]
pub struct Probe {
    netns: PathBuf,
    cgroup: PathBuf,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    userns: Option<PathBuf>,
    caps: Option<String>,
    repeat: u32,
    bin: Option<PathBuf>,
}

impl Probe {
    /// A probe that will run in `netns` and `cgroup` as uid and gid
    /// [`NOBODY`] with no supplementary groups.
    pub fn new(netns: &Netns, cgroup: &TestCgroup) -> Self {
        Self::at(netns.path(), cgroup.path())
    }

    /// [`Probe::new`] for a namespace given by path (for example
    /// `/proc/PID/ns/net` of a namespace no bind mount names) and a cgroup
    /// directory.
    pub fn at(netns: impl Into<PathBuf>, cgroup: impl Into<PathBuf>) -> Self {
        Probe {
            netns: netns.into(),
            cgroup: cgroup.into(),
            uid: NOBODY,
            gid: NOBODY,
            groups: Vec::new(),
            userns: None,
            caps: None,
            repeat: 1,
            bin: None,
        }
    }

    /// Joins this user namespace (`/proc/PID/ns/user`) after the network
    /// namespace; [`Probe::uid`] and [`Probe::gid`] are then ids inside it.
    #[must_use]
    pub fn userns(mut self, path: impl Into<PathBuf>) -> Self {
        self.userns = Some(path.into());
        self
    }

    /// Keeps exactly these capabilities (`"net_raw"`, `"net_admin"`) after
    /// the ids change, as the effective and permitted sets.
    #[must_use]
    pub fn caps(mut self, caps: &[&str]) -> Self {
        self.caps = Some(caps.join(","));
        self
    }

    /// The real, effective and saved uid.
    #[must_use]
    pub fn uid(mut self, uid: u32) -> Self {
        self.uid = uid;
        self
    }

    /// The real, effective and saved gid.
    #[must_use]
    pub fn gid(mut self, gid: u32) -> Self {
        self.gid = gid;
        self
    }

    /// The supplementary groups (empty by default).
    #[must_use]
    pub fn groups(mut self, groups: &[u32]) -> Self {
        self.groups = groups.to_vec();
        self
    }

    /// Runs in this cgroup directory instead of the test cgroup (for
    /// example a child of it the test made).
    #[must_use]
    pub fn cgroup_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cgroup = dir.into();
        self
    }

    /// Performs the action this many times from one process (one pid), for
    /// storms; the result is the last attempt's, with the counts.
    #[must_use]
    pub fn repeat(mut self, times: u32) -> Self {
        self.repeat = times.max(1);
        self
    }

    /// Runs this binary instead of [`probe_bin`] (for example
    /// `env!("CARGO_BIN_EXE_imds-probe")` in this package's tests).
    #[must_use]
    pub fn bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.bin = Some(path.into());
        self
    }

    /// The probe's command line after the binary.
    pub fn args(&self, action: &Action) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--netns".into(),
            self.netns.clone().into(),
            "--cgroup".into(),
            self.cgroup.clone().into(),
            "--uid".into(),
            self.uid.to_string().into(),
            "--gid".into(),
            self.gid.to_string().into(),
        ];
        if !self.groups.is_empty() {
            let groups: Vec<String> = self.groups.iter().map(u32::to_string).collect();
            args.extend(["--groups".into(), groups.join(",").into()]);
        }
        if let Some(userns) = &self.userns {
            args.extend(["--userns".into(), userns.clone().into()]);
        }
        if let Some(caps) = &self.caps {
            args.extend(["--caps".into(), caps.into()]);
        }
        if self.repeat > 1 {
            args.extend(["--repeat".into(), self.repeat.to_string().into()]);
        }
        args.extend(action.to_args().into_iter().map(OsString::from));
        args
    }

    /// Runs `action` in a new probe process and returns what it reported.
    /// Panics if the probe cannot run, fails as a harness (bad argument,
    /// setns, setuid...), or takes longer than 10 s (times the slowdown).
    pub fn run(&self, action: Action) -> ProbeResult {
        let bin = self.bin.clone().unwrap_or_else(probe_bin);
        let mut child = Command::new(&bin)
            .args(self.args(&action))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        // Read both pipes while waiting, so a large body cannot fill a pipe
        // and stall the probe.
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let timeout = crate::slowdown::scaled(PROBE_TIMEOUT);
        let status = wait_or_kill(&mut child, timeout);
        let (stdout, stderr) = (join(stdout), join(stderr));
        let Some(status) = status else {
            panic!("probe `{action}` timed out after {timeout:?} and was killed; stderr: {stderr}");
        };
        assert!(
            status.success(),
            "probe `{action}` failed as a harness ({status}); stderr: {stderr}"
        );
        let line = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        let result: ProbeResult = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!("probe `{action}` printed {stdout:?} (not a result: {e}); stderr: {stderr}")
        });
        assert_eq!(
            result.pid,
            child.id(),
            "probe `{action}` reported another pid"
        );
        result
    }
}

impl Probe {
    /// Starts a probe that connects to `addr` and holds the connection,
    /// kept alive ([`Action::HttpKeepAlive`]): each [`HeldProbe::fetch`]
    /// runs the IMDSv2 flow on it. The connect hooks decide it now.
    pub fn hold(&self, addr: SocketAddr) -> HeldProbe {
        self.spawn_held(Action::HttpKeepAlive(addr))
    }

    /// Starts a local service on `addr` as this identity, in this cgroup
    /// ([`Action::Listen`]: an IMDS emulator on a host where the address is
    /// local), and returns it once it listens. It answers until dropped.
    pub fn serve(&self, addr: SocketAddr) -> HeldProbe {
        let mut held = self.spawn_held(Action::Listen(addr));
        held.next_result().assert_ok();
        held
    }

    /// Starts `action` in a new probe process and returns at once, for a
    /// test that watches the probe while it acts (its pid, what it waits
    /// in); [`HeldProbe::result_within`] reads what it reported.
    pub fn start(&self, action: Action) -> HeldProbe {
        self.spawn_held(action)
    }

    fn spawn_held(&self, action: Action) -> HeldProbe {
        let bin = self.bin.clone().unwrap_or_else(probe_bin);
        let mut child = Command::new(&bin)
            .args(self.args(&action))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take();
        thread::spawn(move || {
            if let Some(stdout) = stdout {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        });
        HeldProbe {
            stdin: child.stdin.take(),
            stderr: Some(drain(child.stderr.take())),
            child,
            lines,
            action,
        }
    }
}

/// A probe holding one kept-alive connection ([`Probe::hold`]). Dropped, it
/// is told to end (its stdin closes) and killed if it does not.
#[derive(Debug)]
pub struct HeldProbe {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<String>>,
    action: Action,
}

impl HeldProbe {
    /// The probe's pid, which the agent's records name.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs the IMDSv2 flow on the held connection and returns what the
    /// probe reported. A request the guard drops is never answered: the
    /// probe's read times out (2 s) and reports the failure. Panics if the
    /// probe does not report within 10 s (times the slowdown).
    pub fn fetch(&mut self) -> ProbeResult {
        let action = self.action;
        let asked = self
            .stdin
            .as_mut()
            .map(|stdin| stdin.write_all(b"fetch\n").and_then(|()| stdin.flush()));
        if !matches!(asked, Some(Ok(()))) {
            panic!(
                "probe `{action}` cannot be asked for more: {asked:?}; {}",
                self.end()
            );
        }
        self.next_result()
    }

    /// The next line the probe prints, as a result. Panics if it prints
    /// none within 10 s (times the slowdown).
    fn next_result(&mut self) -> ProbeResult {
        self.result_within(crate::slowdown::scaled(PROBE_TIMEOUT))
    }

    /// The next line the probe prints, as a result. Panics if it prints
    /// none within `timeout`.
    pub fn result_within(&mut self, timeout: Duration) -> ProbeResult {
        let action = self.action;
        let line = match self.lines.recv_timeout(timeout) {
            Ok(line) => line,
            Err(e) => panic!("probe `{action}` reported nothing ({e}); {}", self.end()),
        };
        let result: ProbeResult = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "probe `{action}` printed {line:?} (not a result: {e}); {}",
                self.end()
            )
        });
        assert_eq!(
            result.pid,
            self.pid(),
            "probe `{action}` reported another pid"
        );
        result
    }

    /// Ends the probe (its stdin closes; killed after 5 s) and says how it
    /// went, for a panic message.
    fn end(&mut self) -> String {
        drop(self.stdin.take());
        let status = wait_or_kill(&mut self.child, Duration::from_secs(5));
        let stderr = self.stderr.take().map(join).unwrap_or_default();
        format!("exit status {status:?}, stderr: {stderr}")
    }
}

impl Drop for HeldProbe {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            self.end();
        }
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

fn join(reader: JoinHandle<String>) -> String {
    reader.join().unwrap_or_default()
}

/// Waits for `child`; after `timeout` kills it (it is our child and not yet
/// reaped, so the pid is still its own) and returns `None`.
fn wait_or_kill(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            Ok(None) => break,
            Err(e) => panic!("waiting for probe {}: {e}", child.id()),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userns_and_caps_reach_the_command_line() {
        let probe = Probe::at("/proc/42/ns/net", "/sys/fs/cgroup/t")
            .userns("/proc/42/ns/user")
            .uid(0)
            .gid(0)
            .caps(&["net_raw", "net_admin"]);
        let args: Vec<String> = probe
            .args(&Action::connect(std::net::Ipv4Addr::LOCALHOST, 80))
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("--netns /proc/42/ns/net"), "{joined}");
        assert!(joined.contains("--userns /proc/42/ns/user"), "{joined}");
        assert!(joined.contains("--uid 0 --gid 0"), "{joined}");
        assert!(joined.contains("--caps net_raw,net_admin"), "{joined}");
        assert!(joined.ends_with("connect 127.0.0.1 80"), "{joined}");
    }
}
