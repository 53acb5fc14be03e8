//! Runs the `imds-guard` agent as a black box and collects its log.
//!
//! The agent always runs inside a network namespace the test made (through
//! `nsenter --net=`, which only calls setns, then execs the agent: the pid
//! is the agent's): whatever it does per network namespace (its forward
//! table of nftables rules, NFLOG) happens there, never in the machine's
//! own. Every way to start one takes that namespace. Its JSON log lines
//! (stderr, and stdout for good measure) become `serde_json::Value` records
//! that tests wait on and assert against.

use std::{
    ffi::OsString,
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

use crate::{Netns, TestBpffs, TestCgroup, bins::imds_guard_bin, slowdown::scaled, util::lock};

/// How long [`Agent::terminate`] waits after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for the last lines after the agent exits.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// `record[name]`, or `record["fields"][name]`: tracing-subscriber's JSON
/// format nests an event's fields under `fields` unless it is told to
/// flatten them, and tests should not care which.
pub fn field<'a>(record: &'a Value, name: &str) -> Option<&'a Value> {
    record
        .get(name)
        .or_else(|| record.get("fields").and_then(|f| f.get(name)))
}

#[derive(Debug, Default)]
struct LogState {
    records: Vec<Value>,
    /// Output streams not yet at end of file; 0 means no more records.
    open: usize,
}

#[derive(Debug, Default)]
struct Log {
    state: Mutex<LogState>,
    changed: Condvar,
}

/// `--pin-dir PIN_DIR EXTRA_ARGS...`.
fn pinned_in<'a>(pin_dir: &'a Path, extra_args: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--pin-dir",
        pin_dir
            .to_str()
            .unwrap_or_else(|| panic!("non UTF-8 pin dir")),
    ];
    args.extend_from_slice(extra_args);
    args
}

/// A running agent; terminated on drop.
#[derive(Debug)]
pub struct Agent {
    child: Mutex<Child>,
    pid: u32,
    log: Arc<Log>,
    /// The private bpffs the agent pins in, when the test gave none. Dropped
    /// after the agent is stopped, which detaches whatever it pinned.
    _own_pins: Option<TestBpffs>,
}

impl Agent {
    /// Starts `imds-guard run --config CONFIG --cgroup CGROUP --log-format
    /// json --pin-dir DIR EXTRA_ARGS...` ([`imds_guard_bin`] finds the
    /// binary), pinning in a private bpffs of its own.
    pub fn start(netns: &Netns, config: &Path, cgroup: &TestCgroup, extra_args: &[&str]) -> Self {
        Self::start_bin(netns, &imds_guard_bin(), config, cgroup, extra_args)
    }

    /// [`Agent::start`] pinning in `pin_dir` (inside a [`TestBpffs`] the test
    /// holds), for tests that stop and start agents on the same pins.
    pub fn start_pinned(
        netns: &Netns,
        config: &Path,
        cgroup: &TestCgroup,
        pin_dir: &Path,
        extra_args: &[&str],
    ) -> Self {
        Self::start_pinned_env(netns, config, cgroup, pin_dir, extra_args, &[])
    }

    /// [`Agent::start_pinned`] with extra environment variables (for
    /// example a `NOTIFY_SOCKET` the test listens on).
    pub fn start_pinned_env(
        netns: &Netns,
        config: &Path,
        cgroup: &TestCgroup,
        pin_dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let args = pinned_in(pin_dir, extra_args);
        Self::spawn_agent(
            &[],
            netns.path(),
            &imds_guard_bin(),
            config,
            Some(cgroup.path()),
            &args,
            env,
        )
    }

    /// [`Agent::start_pinned`] in the network namespace at `netns` (a
    /// [`Topology`](crate::Topology)'s "host", which is not a [`Netns`]).
    pub fn start_in_netns(
        config: &Path,
        cgroup: &TestCgroup,
        pin_dir: &Path,
        netns: &Path,
        extra_args: &[&str],
    ) -> Self {
        let args = pinned_in(pin_dir, extra_args);
        Self::spawn_agent(
            &[],
            netns,
            &imds_guard_bin(),
            config,
            Some(cgroup.path()),
            &args,
            &[],
        )
    }

    /// [`Agent::start`] with an explicit binary (a stand-in, or a build the
    /// harness would not find).
    pub fn start_bin(
        netns: &Netns,
        bin: &Path,
        config: &Path,
        cgroup: &TestCgroup,
        extra_args: &[&str],
    ) -> Self {
        Self::spawn_agent(
            &[],
            netns.path(),
            bin,
            config,
            Some(cgroup.path()),
            extra_args,
            &[],
        )
    }

    /// [`Agent::start_pinned`] run through `wrapper` (a command that ends
    /// by exec'ing its arguments, so that the pid stays the agent's: `bash
    /// -c '...; exec "$@"'` (the guest's `sh` is busybox's, which runs its
    /// own `unshare` and `nsenter`), `unshare` without `--fork`), for tests that
    /// start the agent in namespaces of their own. `cgroup`, when given, is
    /// passed as `--cgroup`; without it the agent looks for the root, so
    /// the wrapper must make sure that what it finds is the test's (a
    /// cgroup namespace rooted at a test cgroup, with a mount made in it):
    /// never let an agent attach at this machine's real root.
    pub fn start_wrapped(
        wrapper: &[OsString],
        netns: &Path,
        config: &Path,
        cgroup: Option<&TestCgroup>,
        pin_dir: &Path,
        extra_args: &[&str],
    ) -> Self {
        let args = pinned_in(pin_dir, extra_args);
        Self::spawn_agent(
            wrapper,
            netns,
            &imds_guard_bin(),
            config,
            cgroup.map(TestCgroup::path),
            &args,
            &[],
        )
    }

    fn spawn_agent(
        wrapper: &[OsString],
        netns: &Path,
        bin: &Path,
        config: &Path,
        cgroup: Option<&Path>,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        // Never let an agent under test pin in the host's /sys/fs/bpf, nor
        // write the host's /run/imds-guard/status.json.
        let own_pins = (!extra_args.contains(&"--pin-dir")).then(TestBpffs::new);
        let no_status_file = (!extra_args.contains(&"--status-file"))
            .then_some(["--status-file", "none"])
            .into_iter()
            .flatten();
        let own_pin_dir = own_pins.as_ref().map(TestBpffs::pin_dir);
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut cmd = Command::new(first);
                cmd.args(rest).arg("nsenter");
                cmd
            }
            None => Command::new("nsenter"),
        };
        cmd.arg(format!("--net={}", netns.display()))
            .arg("--")
            .arg(bin)
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(
                cgroup
                    .iter()
                    .flat_map(|c| [std::ffi::OsStr::new("--cgroup"), c.as_os_str()]),
            )
            .args(["--log-format", "json"])
            .args(
                own_pin_dir
                    .iter()
                    .flat_map(|d| [std::ffi::OsStr::new("--pin-dir"), d.as_os_str()]),
            )
            .args(no_status_file)
            .args(extra_args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn(&mut cmd);
        let pid = child.id();
        let log = Arc::new(Log::default());
        let streams: [Option<Box<dyn Read + Send>>; 2] = [
            child.stderr.take().map(|s| Box::new(s) as _),
            child.stdout.take().map(|s| Box::new(s) as _),
        ];
        for (name, stream) in ["stderr", "stdout"].into_iter().zip(streams) {
            let Some(stream) = stream else { continue };
            lock(&log.state).open += 1;
            let log = Arc::clone(&log);
            thread::Builder::new()
                .name(format!("imds-guard-{pid}-{name}"))
                .spawn(move || collect(stream, &log, pid))
                .unwrap_or_else(|e| panic!("spawning the agent's {name} reader: {e}"));
        }
        Agent {
            child: Mutex::new(child),
            pid,
            log,
            _own_pins: own_pins,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends SIGHUP: reload the policy file.
    pub fn sighup(&self) {
        kill(Pid::from_raw(self.pid as i32), Signal::SIGHUP)
            .unwrap_or_else(|e| panic!("SIGHUP the agent: {e}"));
    }

    /// Every record so far, in arrival order.
    pub fn records(&self) -> Vec<Value> {
        lock(&self.log.state).records.clone()
    }

    /// Every line so far, one per line, for failure messages.
    pub fn output(&self) -> String {
        lock(&self.log.state)
            .records
            .iter()
            .map(|r| match r {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The first record, from the start of the log, that satisfies `pred`;
    /// waits up to `timeout` (times [`slowdown`](crate::slowdown): the
    /// agent verifies its programs at start, which an emulated guest does
    /// far slower) for it. `None` on timeout, or as soon as the agent has
    /// closed its output without one.
    pub fn wait_for(&self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + scaled(timeout);
        let mut state = lock(&self.log.state);
        loop {
            if let Some(found) = state.records.iter().find(|r| pred(r)) {
                return Some(found.clone());
            }
            let now = Instant::now();
            if state.open == 0 || now >= deadline {
                return None;
            }
            state = self
                .log
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits for the record with `"ready": true` and returns it. Panics, with
    /// everything the agent printed, if it exits or times out first.
    pub fn wait_ready(&self, timeout: Duration) -> Value {
        let ready = |r: &Value| field(r, "ready") == Some(&Value::Bool(true));
        self.wait_for(ready, timeout).unwrap_or_else(|| {
            // An agent that closed its output is about to exit: give it a
            // moment so the message has its status.
            let status = self.wait_exit(Duration::from_millis(500));
            panic!(
                "agent {} not ready within {:?} (exit status: {status:?}); output:\n{}",
                self.pid,
                scaled(timeout),
                self.output()
            )
        })
    }

    /// The exit status, if the agent has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        lock(&self.child)
            .try_wait()
            .unwrap_or_else(|e| panic!("waiting for agent {}: {e}", self.pid))
    }

    /// Waits up to `timeout` (stretched by the slowdown factor, as every
    /// wait here) for the agent to exit on its own.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + scaled(timeout);
        loop {
            if let Some(status) = self.exit_status() {
                self.wait_drained();
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the agent: SIGTERM, then SIGKILL after 5 s. Returns its exit
    /// status once its last lines are collected.
    pub fn terminate(&self) -> ExitStatus {
        if let Some(status) = self.exit_status() {
            self.wait_drained();
            return status;
        }
        // Not yet reaped, so the pid is still our child's.
        let pid = Pid::from_raw(self.pid as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let status = self.wait_exit(TERM_GRACE).unwrap_or_else(|| {
            eprintln!(
                "agent {} ignored SIGTERM for {TERM_GRACE:?}; killing it",
                self.pid
            );
            let mut child = lock(&self.child);
            let _ = child.kill();
            child
                .wait()
                .unwrap_or_else(|e| panic!("waiting for agent {}: {e}", self.pid))
        });
        self.wait_drained();
        status
    }

    /// Kills the agent with SIGKILL (no chance to clean anything up) and
    /// waits for it.
    pub fn kill(&self) -> ExitStatus {
        let mut child = lock(&self.child);
        let _ = child.kill();
        let status = child
            .wait()
            .unwrap_or_else(|e| panic!("waiting for agent {}: {e}", self.pid));
        drop(child);
        self.wait_drained();
        status
    }

    /// The first record after the first `seen` that satisfies `pred`;
    /// waits up to `timeout` (times the slowdown) for it.
    pub fn wait_for_after(
        &self,
        seen: usize,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<Value> {
        let deadline = Instant::now() + scaled(timeout);
        let mut state = lock(&self.log.state);
        loop {
            if let Some(found) = state.records.iter().skip(seen).find(|r| pred(r)) {
                return Some(found.clone());
            }
            let now = Instant::now();
            if state.open == 0 || now >= deadline {
                return None;
            }
            state = self
                .log
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Gives the readers a moment to collect what the agent wrote last.
    fn wait_drained(&self) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut state = lock(&self.log.state);
        while state.open > 0 {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            state = self
                .log
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Spawns `cmd`, retrying briefly on ETXTBSY: a binary written moments ago
/// (a stand-in script) stays "busy" while any process forked meanwhile by
/// another test thread still holds the writing descriptor, until that
/// process execs and its close-on-exec descriptors go.
fn spawn(cmd: &mut Command) -> Child {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match cmd.spawn() {
            Ok(child) => return child,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("spawning {cmd:?}: {e}"),
        }
    }
}

/// Turns an output stream into records, echoing each line to the test's
/// stderr (shown when the test fails).
fn collect(stream: impl Read, log: &Log, pid: u32) {
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        eprintln!("[imds-guard {pid}] {line}");
        let record = match serde_json::from_str::<Value>(&line) {
            Ok(value @ Value::Object(_)) => value,
            _ => Value::String(line),
        };
        lock(&log.state).records.push(record);
        log.changed.notify_all();
    }
    lock(&log.state).open -= 1;
    log.changed.notify_all();
}
