//! `imds-probe`: one network action, as one identity, from inside a test's
//! network namespace and cgroup.
//!
//! ```text
//! imds-probe --netns PATH --cgroup DIR --uid N --gid N [--groups G1,G2] ACTION ADDR PORT
//! ```
//!
//! It joins the cgroup and the namespace while still root, then drops to the
//! given ids (groups, then gid, then uid: each step needs the privilege the
//! next one removes), performs the action and prints one JSON line (see
//! `imds_guard_e2e::ProbeResult`). The exit status is 0 whatever the action
//! did; 2 means a bad command line, 3 a failure to set the process up.

use std::{
    env, fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::ExitCode,
};

use imds_guard_e2e::{Action, client};
use nix::{
    sched::{CloneFlags, setns},
    unistd::{Gid, Uid, getresgid, getresuid, setgroups, setresgid, setresuid},
};

const USAGE: &str = "usage: imds-probe --netns PATH --cgroup DIR --uid N --gid N \
                     [--groups G1,G2] [--repeat N] ACTION ADDR PORT\n\
                     actions: http connect connect-mapped udp-send udp-send-mapped udp-connect tfo";

#[derive(Debug)]
struct Options {
    netns: PathBuf,
    cgroup: PathBuf,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    /// How many times to perform the action (one process, one pid).
    repeat: u32,
    action: Action,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        let (mut netns, mut cgroup, mut uid, mut gid, mut groups) = (None, None, None, None, None);
        let mut repeat = 1;
        let mut rest = args;
        while let [flag, value, tail @ ..] = rest {
            if !flag.starts_with("--") {
                break;
            }
            let id = || {
                value
                    .parse::<u32>()
                    .map_err(|e| format!("{flag} {value:?}: {e}"))
            };
            match flag.as_str() {
                "--netns" => netns = Some(PathBuf::from(value)),
                "--cgroup" => cgroup = Some(PathBuf::from(value)),
                "--uid" => uid = Some(id()?),
                "--repeat" => repeat = id()?.max(1),
                "--gid" => gid = Some(id()?),
                "--groups" => {
                    groups = Some(
                        value
                            .split(',')
                            .filter(|g| !g.is_empty())
                            .map(|g| g.parse().map_err(|e| format!("--groups {g:?}: {e}")))
                            .collect::<Result<_, _>>()?,
                    );
                }
                other => return Err(format!("unknown option {other}")),
            }
            rest = tail;
        }
        // Both are required: a probe must never act from the host namespace,
        // where a metadata address would reach the real service.
        Ok(Options {
            netns: netns.ok_or("--netns is required")?,
            cgroup: cgroup.ok_or("--cgroup is required")?,
            uid: uid.ok_or("--uid is required")?,
            gid: gid.ok_or("--gid is required")?,
            groups: groups.unwrap_or_default(),
            repeat,
            action: Action::from_args(rest)?,
        })
    }
}

/// (device, inode) of a namespace file: equal pairs are the same namespace.
fn ns_id(path: &Path) -> Result<(u64, u64), String> {
    fs::metadata(path)
        .map(|m| (m.dev(), m.ino()))
        .map_err(|e| format!("stat {}: {e}", path.display()))
}

/// Joins the cgroup and the namespace, then drops privileges.
fn enter(opts: &Options) -> Result<(), String> {
    let procs = opts.cgroup.join("cgroup.procs");
    // "0" moves the writing process itself.
    fs::write(&procs, "0").map_err(|e| format!("joining {}: {e}", procs.display()))?;

    let own = Path::new("/proc/thread-self/ns/net");
    let before = ns_id(own)?;
    let ns = fs::File::open(&opts.netns)
        .map_err(|e| format!("opening {}: {e}", opts.netns.display()))?;
    setns(&ns, CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("setns into {}: {e}", opts.netns.display()))?;
    let after = ns_id(own)?;
    // The probe starts in the test runner's (host) namespace, so joining
    // must change it; otherwise a wrong path would send to the real service.
    if after == before {
        return Err(format!(
            "refusing to run: {} is not a separate test namespace",
            opts.netns.display()
        ));
    }

    let groups: Vec<Gid> = opts.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    let (uid, gid) = (Uid::from_raw(opts.uid), Gid::from_raw(opts.gid));
    setgroups(&groups).map_err(|e| format!("setgroups {:?}: {e}", opts.groups))?;
    setresgid(gid, gid, gid).map_err(|e| format!("setresgid {gid}: {e}"))?;
    setresuid(uid, uid, uid).map_err(|e| format!("setresuid {uid}: {e}"))?;

    let ids = getresuid().map_err(|e| format!("getresuid: {e}"))?;
    let gids = getresgid().map_err(|e| format!("getresgid: {e}"))?;
    if [ids.real, ids.effective, ids.saved] != [uid; 3]
        || [gids.real, gids.effective, gids.saved] != [gid; 3]
    {
        return Err(format!("ids did not change: {ids:?} {gids:?}"));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let opts = match Options::parse(&args) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("imds-probe: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = enter(&opts) {
        eprintln!("imds-probe: {e}");
        return ExitCode::from(3);
    }
    let result = client::perform_repeatedly(&opts.action, opts.repeat);
    match serde_json::to_string(&result) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("imds-probe: encoding the result: {e}");
            ExitCode::from(3)
        }
    }
}
