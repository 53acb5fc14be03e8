//! Section 8, what a decision costs against the supplementary groups the
//! caller holds: under a policy with a group rule, every decision reads the
//! caller's groups (`cred->group_info`) and looks each one up in the gid
//! rules, so the cost grows with the groups held, up to
//! `imds_guard_common::MAX_GROUPS`. Measured as the connect4 program's run
//! time per allowed connect, from the kernel's own accounting.

use anyhow::ensure;
use imds_guard_common::MAX_GROUPS;

use super::{
    cli::Settings,
    progstats::{StatsEnabled, guard_programs, pick},
    setup::{Kind, PolicyFile, Setup, verify},
    sink::IMDS4,
    stats::{Expect, Summary, check, interleave},
    worker::run_job,
};

/// The allowed uid.
const ALLOWED: u32 = 1001;

/// A group rule (the deny) makes every decision scan the groups; none of
/// the groups the caller holds is 666, so each is read and looked up.
pub const POLICY: &str = "[allow]\nuids = [1001]\n[deny]\ngids = [666]\n";

/// The groups held, per row: none, one, and up to the bound.
const HELD: [u32; 5] = [0, 1, 8, 32, MAX_GROUPS];

pub struct Row {
    pub groups: u32,
    /// run_time_ns / run_cnt of connect4, per round.
    pub ns: Summary,
    pub runs: u64,
}

pub struct GroupsResult {
    pub rows: Vec<Row>,
    pub rounds: usize,
}

/// `n` groups no policy names: 20000, 20001, ...
fn groups(n: u32) -> Vec<u32> {
    (20_000..20_000 + n).collect()
}

pub fn run(s: &Settings) -> anyhow::Result<GroupsResult> {
    let policy = PolicyFile::new(POLICY);
    let setup = Setup::new(Kind::ImdsGuard, &policy)?;
    verify(&[(&setup, ALLOWED, imds_guard_e2e::NOBODY)])?;
    let pin_dir = setup.pin_dir().unwrap_or_default();
    let progs = guard_programs(&setup.netns, &pin_dir)?;
    let prog = pick(&progs, "connect4")?;
    let stats = StatsEnabled::new()?;
    let samples = interleave("groups scanned", HELD.len(), s.rounds, |i| {
        let job = setup.job(ALLOWED, IMDS4, s.timing).groups(groups(HELD[i]));
        let before = prog.read()?;
        let t = run_job(&job)?;
        let after = prog.read()?;
        check("groups scanned", &t, Expect::Connected)?;
        let (dt, dn) = (after.time_ns - before.time_ns, after.count - before.count);
        ensure!(dn > 0, "connect4 did not run");
        Ok((dt as f64 / dn as f64, dn))
    })?;
    drop(stats);
    let rows = HELD
        .iter()
        .zip(&samples)
        .map(|(&groups, xs)| Row {
            groups,
            ns: Summary::of(&xs.iter().map(|x| x.0).collect::<Vec<_>>()),
            runs: xs.iter().map(|x| x.1).sum(),
        })
        .collect();
    Ok(GroupsResult {
        rows,
        rounds: s.rounds,
    })
}
