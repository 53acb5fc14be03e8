//! The status file: what `imds-guard status --json` says of the guard,
//! written by the agent where a monitor that is not root can read it
//! (`/run/imds-guard/status.json`, mode 0644; only root can read the pins).
//!
//! It is a snapshot, not the kernel's word: written at start, after every
//! reload (taken or refused), when the forward path changes, every
//! [`EVERY`] with the counters, and once more when the agent stops, saying
//! so. A dead agent's file is stale, and `updated_at` says since when;
//! `imds-guard status` as root reads the kernel.
//!
//! The snapshot reads the pins as `status` does ([`Status::read`], which
//! runs `nft`): on a thread of its own, so that the run loop never waits
//! for it, fed in order, so that the last file written is the last asked
//! for (the stop's).

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::mpsc,
    thread::JoinHandle,
};

use serde_json::{Value, json};
use tokio::time::Duration;

use crate::{
    chain::Chain,
    kernel::{
        inspect::{self, Status},
        pins::Pins,
        place::{NetNs, Placement},
    },
    text,
};

/// Where the agent writes its status file unless told otherwise; the
/// packaged unit's `RuntimeDirectory=imds-guard` makes the directory.
pub const DEFAULT_PATH: &str = "/run/imds-guard/status.json";

/// How often the file is written when nothing else changes it.
pub const EVERY: Duration = Duration::from_secs(10);

/// What the file is, said in it for whoever finds it.
const ABOUT: &str = "a snapshot of the guard written by the imds-guard agent; once the agent is \
                     not running it is stale (updated_at says when it was written); `imds-guard \
                     status` as root reads the kernel";

/// The file's layout: a monitor can refuse one it does not know.
const FORMAT: u32 = 1;

/// `--status-file`: a path, or `none`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    File(PathBuf),
    Off,
}

impl Target {
    /// Parses `--status-file`: `none`, or a path.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::Off),
            "" => Err("expected a path or none".to_owned()),
            path => Ok(Self::File(PathBuf::from(path))),
        }
    }
}

/// Why a snapshot is written (the file says it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    Started,
    Reloaded,
    ReloadRefused,
    ForwardChanged,
    Periodic,
    /// The agent stops on this signal; the guard stays pinned.
    Stopped(&'static str),
}

impl Why {
    fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Reloaded => "reloaded",
            Self::ReloadRefused => "reload refused",
            Self::ForwardChanged => "forward path changed",
            Self::Periodic => "periodic",
            Self::Stopped(_) => "stopped",
        }
    }
}

/// The writer thread and what feeds it; does nothing with [`Target::Off`].
pub(super) struct StatusFile {
    asks: Option<mpsc::Sender<Why>>,
    thread: Option<JoinHandle<()>>,
}

impl StatusFile {
    /// Starts the writer for the guard pinned at `pin_dir`, placed at
    /// `place`.
    pub(super) fn start(target: &Target, pin_dir: &Path, place: &Placement) -> Self {
        let Target::File(path) = target else {
            return Self {
                asks: None,
                thread: None,
            };
        };
        let (asks, asked) = mpsc::channel();
        let writer = Writer {
            path: path.clone(),
            pins: Pins::new(pin_dir),
            placement: placement_json(place),
            failing: false,
        };
        let thread = std::thread::Builder::new()
            .name("status-file".to_owned())
            .spawn(move || writer.serve(&asked));
        match thread {
            Ok(thread) => Self {
                asks: Some(asks),
                thread: Some(thread),
            },
            Err(e) => {
                tracing::warn!(
                    "cannot start the thread that writes {}: {e}",
                    path.display()
                );
                Self {
                    asks: None,
                    thread: None,
                }
            }
        }
    }

    /// Whether a file is written at all.
    pub(super) fn enabled(&self) -> bool {
        self.asks.is_some()
    }

    /// Asks for a snapshot; the run loop does not wait for it.
    pub(super) fn write(&self, why: Why) {
        if let Some(asks) = &self.asks {
            let _ = asks.send(why);
        }
    }

    /// Writes the last snapshot, that the agent stopped on `signal`, and
    /// waits for it to be written.
    pub(super) fn stop(mut self, signal: &'static str) {
        self.write(Why::Stopped(signal));
        drop(self.asks.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread's state.
struct Writer {
    path: PathBuf,
    pins: Pins,
    /// Where the agent placed the guard ([`placement_json`]).
    placement: Value,
    /// The last write failed (said once, at warning level, until one works).
    failing: bool,
}

impl Writer {
    /// Writes a snapshot per ask, in order, until the agent lets go of the
    /// sender; asks waiting behind one another are one write (the last
    /// one's), since each reads the guard anew.
    fn serve(mut self, asked: &mpsc::Receiver<Why>) {
        while let Ok(mut why) = asked.recv() {
            while let Ok(next) = asked.try_recv() {
                why = next;
            }
            self.write(why);
        }
    }

    fn write(&mut self, why: Why) {
        let status = Status::read(&self.pins).map_err(|e| Chain(&e).to_string());
        let agent = Agent {
            pid: std::process::id(),
            why,
        };
        let mut value = snapshot(status, agent, now_unix());
        value["agent"]["placement"] = self.placement.clone();
        let mut bytes = value.to_string();
        bytes.push('\n');
        match write_atomic(&self.path, bytes.as_bytes()) {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!("the status file {} is written again", self.path.display());
            }
            Ok(()) => {}
            Err(e) if !self.failing => {
                self.failing = true;
                tracing::warn!(
                    "cannot write the status file {} (monitors that read it see an old one, \
                     or none): {e}",
                    self.path.display()
                );
            }
            Err(e) => tracing::debug!("cannot write the status file: {e}"),
        }
    }
}

/// Where the agent placed the guard, in the agent's own words: how it
/// found the cgroup (`named` by --cgroup, the `host`'s hierarchy, or one it
/// `mounted`), its cgroup namespace (`host`, or `entered` from a
/// container's), whether systemd's cgroup layout is there, and the
/// namespaces "the host" of `[allow.host]` means.
pub fn placement_json(place: &Placement) -> Value {
    let net = match &place.net {
        NetNs::Pid1s => json!(true),
        NetNs::NotPid1s { .. } => json!(false),
        NetNs::Unknown(_) => Value::Null,
    };
    json!({
        "cgroup": place.cgroup,
        "cgroup_id": place.cgroup_id,
        "cgroup_root": place.at_root(),
        "hierarchy": place.hierarchy_name(),
        "hierarchy_mount": place.mount(),
        "mounted_by_agent": place.mounted(),
        "cgroup_ns": place.cgroup_ns_name(),
        "cgroup_layout": place.layout().as_str(),
        "pid_ns": place.pid_ns,
        "net_ns": place.net_ns,
        "net_ns_is_pid1s": net,
        "what": place.describe(),
        "host": place.host(),
    })
}

/// Who writes the snapshot, and why.
#[derive(Clone, Copy, Debug)]
struct Agent {
    pid: u32,
    why: Why,
}

/// The file's contents: every field of `status --json` (but the kernel's
/// features, read at start from BTF, and the options' comparisons), with
/// when, by whom and why it was written; or, when the pins could not be
/// read, why.
fn snapshot(status: Result<Status, String>, agent: Agent, now: u64) -> Value {
    let stopped = matches!(agent.why, Why::Stopped(_));
    let (mut value, note) = match status {
        Ok(mut status) => {
            // The agent holds the pins' lock until it exits: as it stops,
            // the guard is as a dead agent leaves it.
            if stopped {
                status.agent_alive = false;
            }
            let note = stopped.then(|| stop_note(&status, agent.why));
            (inspect::to_json(&status), note)
        }
        Err(e) => (json!({ "error": e }), None),
    };
    value["about"] = json!(ABOUT);
    value["format"] = json!(FORMAT);
    value["updated_at"] = json!(text::utc(now));
    value["updated_unix"] = json!(now);
    value["every_seconds"] = json!(EVERY.as_secs());
    value["agent"] = json!({
        "pid": agent.pid,
        "state": if stopped { "stopped" } else { "running" },
        "written_because": agent.why.as_str(),
        "stopped": note,
    });
    value
}

/// What the stopped agent leaves in force.
fn stop_note(status: &Status, why: Why) -> String {
    let signal = match why {
        Why::Stopped(signal) => signal,
        _ => "stopping",
    };
    if status.links.is_empty() {
        format!(
            "{signal}: the agent stopped; nothing is pinned at {}: the guard is off",
            status.pin_dir.display()
        )
    } else {
        format!(
            "{signal}: the agent stopped; the guard is still pinned and enforcing the last \
             policy ({}); nothing updates this file until an agent starts",
            status.mode_name()
        )
    }
}

fn now_unix() -> u64 {
    super::policies::now_unix()
}

/// Writes `bytes` to `path` as a reader never sees half of: a file beside
/// it, mode 0644 whatever the umask (the unit's is 0077), renamed over it.
/// Not synced: /run is a tmpfs, and a crash empties it anyway.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("the status file's path names no file"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        // Outside the unit, which makes it: readable by all, as the file.
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    }
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = dir.join(temp_name);
    // A leftover (or anything planted there) goes; the new one is made,
    // never opened through a link.
    match fs::remove_file(&temp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)?;
        file.set_permissions(fs::Permissions::from_mode(0o644))?;
        file.write_all(bytes)?;
        fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests;
