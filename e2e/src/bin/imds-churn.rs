//! `imds-churn`: cgroups made (and removed) as an unprivileged user in a
//! subtree delegated to it, as a user with a systemd session can.
//!
//! ```text
//! imds-churn --uid N --gid N --dir DIR [--chain DEPTH] [--name-len N] make COUNT
//! imds-churn --uid N --gid N --dir DIR [--chain DEPTH] [--name-len N] churn STOP_FILE
//! ```
//!
//! It drops to `--uid`/`--gid` (every id, no supplementary groups) first;
//! then, below `DIR`, it makes a chain of `DEPTH` nested cgroups of
//! 250-byte names (so that whatever it makes below has a path past the
//! 1,023 bytes the kernel's cgroup tracepoints format), and in the last
//! one:
//! - `make COUNT`: `COUNT` cgroups `c0`, `c1`, ... (names padded with `x`
//!   to `--name-len` bytes), and exits; they stay;
//! - `churn STOP_FILE`: makes and removes a cgroup of its own (`--name-len`
//!   bytes) over and over until `STOP_FILE` exists.
//!
//! It prints one line, `{"made": N, "removed": N, "dir": "..."}`, and exits
//! 0 (2: bad command line, 3: a mkdir or rmdir failed).

use std::{
    env, fs,
    io::ErrorKind,
    path::{Path, PathBuf},
    process::ExitCode,
};

use nix::unistd::{Gid, Uid, getpid, setgroups, setresgid, setresuid};

const USAGE: &str = "usage: imds-churn --uid N --gid N --dir DIR [--chain DEPTH] [--name-len N] \
                     make COUNT | churn STOP_FILE";

/// The length of each name in the chain: 4 of them (with their slashes)
/// make 1,004 bytes.
const CHAIN_NAME: usize = 250;

enum Mode {
    Make(u64),
    Churn(PathBuf),
}

struct Options {
    uid: u32,
    gid: u32,
    dir: PathBuf,
    chain: usize,
    name_len: usize,
    mode: Mode,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let (mut uid, mut gid, mut dir) = (None, None, None);
    let (mut chain, mut name_len) = (0, 0);
    let mut rest = args;
    while let [flag, value, tail @ ..] = rest {
        if !flag.starts_with("--") {
            break;
        }
        let n = || value.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--uid" => uid = Some(n()? as u32),
            "--gid" => gid = Some(n()? as u32),
            "--dir" => dir = Some(PathBuf::from(value)),
            "--chain" => chain = n()? as usize,
            "--name-len" => name_len = (n()? as usize).min(255),
            _ => return Err(format!("unknown option {flag}")),
        }
        rest = tail;
    }
    let mode = match rest {
        [mode, arg] if mode == "make" => Mode::Make(arg.parse().map_err(|e| format!("{e}"))?),
        [mode, arg] if mode == "churn" => Mode::Churn(PathBuf::from(arg)),
        _ => return Err(USAGE.to_owned()),
    };
    Ok(Options {
        uid: uid.ok_or("--uid is required")?,
        gid: gid.ok_or("--gid is required")?,
        dir: dir.ok_or("--dir is required")?,
        chain,
        name_len,
        mode,
    })
}

fn drop_to(uid: u32, gid: u32) -> Result<(), String> {
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    setresgid(gid, gid, gid).map_err(|e| format!("setresgid {gid}: {e}"))?;
    setresuid(uid, uid, uid).map_err(|e| format!("setresuid {uid}: {e}"))
}

/// `base` padded with `x` to `len` bytes (never shorter than `base`).
fn name(base: &str, len: usize) -> String {
    let mut s = base.to_owned();
    while s.len() < len {
        s.push('x');
    }
    s
}

/// The chain below `dir`, made as far as it is missing.
fn chain(dir: &Path, depth: usize) -> Result<PathBuf, String> {
    let mut at = dir.to_path_buf();
    for level in 0..depth {
        let letter = char::from(b'a' + (level % 26) as u8);
        at.push(letter.to_string().repeat(CHAIN_NAME));
        match fs::create_dir(&at) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("mkdir {}: {e}", at.display())),
        }
    }
    Ok(at)
}

fn run(opts: &Options) -> Result<(u64, u64, PathBuf), String> {
    drop_to(opts.uid, opts.gid)?;
    let at = chain(&opts.dir, opts.chain)?;
    let (mut made, mut removed) = (0u64, 0u64);
    match &opts.mode {
        Mode::Make(count) => {
            for i in 0..*count {
                let dir = at.join(name(&format!("c{i}"), opts.name_len));
                fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
                made += 1;
            }
        }
        Mode::Churn(stop) => {
            let dir = at.join(name(&format!("churn{}", getpid()), opts.name_len));
            while !stop.exists() {
                for _ in 0..100 {
                    fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
                    made += 1;
                    fs::remove_dir(&dir).map_err(|e| format!("rmdir {}: {e}", dir.display()))?;
                    removed += 1;
                }
            }
        }
    }
    Ok((made, removed, at))
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let opts = match parse(&args) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("imds-churn: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok((made, removed, at)) => {
            println!(
                "{}",
                serde_json::json!({"made": made, "removed": removed, "dir": at})
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("imds-churn: {e}");
            ExitCode::from(3)
        }
    }
}
