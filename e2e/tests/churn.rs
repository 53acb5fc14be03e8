//! What one unprivileged user can do to the agent with the cgroups of a
//! subtree delegated to it (as systemd delegates `user@.service` to every
//! user with a session): cgroups made and removed as fast as the kernel
//! allows, paths past the 1,023 bytes the kernel's tracepoints format,
//! the classification map filled. Nothing of it may delay a reload, the
//! forward table's repair or the denial records past the bounds
//! docs/operating.md states, and the user may take only its share of the map: a unit
//! restarted meanwhile is classified, and what the map refused is
//! classified as soon as room is freed, without a reload.
//!
//! Time bounds are asserted natively only (`IMDS_GUARD_TEST_SLOWDOWN` is 1);
//! under emulation the same behaviour is asserted with scaled waits.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use imds_guard_e2e::{
    Action, Agent, IMDS_PORT, IMDS_V4, LOG, NOBODY, PrivateEtc, ProbeResult, READY, Sandbox,
    TestCgroup, TestUser, cgroup_path, cgroup2_root, churn_bin, fake_systemctl, field,
    privileged_or_skip,
    slowdown::{floor, scaled, slowdown},
};
use serde_json::Value;

const EPERM: i32 = libc::EPERM;
/// A uid no uid rule names, which only a unit rule allows.
const APP_UID: u32 = 1001;

/// The bounds docs/operating.md states, on the development machine: a reload in
/// force after its SIGHUP with this many cgroups on the host, a forward
/// table put back after a flush (as nf_tables says so, and checked every
/// 10 s besides), a denial
/// record written.
const HELD: u64 = 20_000;
const RELOAD_BOUND: Duration = Duration::from_secs(3);
const REPAIR_BOUND: Duration = Duration::from_secs(12);
const RECORD_BOUND: Duration = Duration::from_secs(1);

fn connect() -> Action {
    Action::connect(IMDS_V4, IMDS_PORT)
}

fn denied(r: &ProbeResult) -> bool {
    !r.ok && r.errno == Some(EPERM)
}

/// Asserts `took` within `bound`, natively only.
fn within(what: &str, took: Duration, bound: Duration) {
    eprintln!("{what}: {took:?} (bound {bound:?})");
    if slowdown() == 1 {
        assert!(took <= bound, "{what} took {took:?}, past {bound:?}");
    }
}

fn is(r: &Value, event: &str) -> bool {
    field(r, "event").and_then(Value::as_str) == Some(event)
}

fn number(r: &Value, name: &str) -> u64 {
    field(r, name)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no {name} in {r}"))
}

/// `imds-churn` as `user`, in `dir`, with `args`.
fn churn(user: &TestUser, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(churn_bin());
    cmd.args([
        "--uid",
        &user.uid.to_string(),
        "--gid",
        &user.gid.to_string(),
    ])
    .arg("--dir")
    .arg(dir)
    .args(args)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd
}

/// Runs `cmd` to its end; its JSON line.
fn finish(mut cmd: Command) -> Value {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{cmd:?} printed no JSON: {e}"))
}

/// Churners that stop when their file is made, on drop too.
struct Churners {
    stop: PathBuf,
    children: Vec<Child>,
}

impl Churners {
    /// `n` churners as `user` in `dir`. Their stop file is named in
    /// `/tmp`, where the user can see it (the sandbox's directory is
    /// root's alone).
    fn start(user: &TestUser, dir: &Path, n: usize) -> Self {
        let stop = std::env::temp_dir().join(format!("{}.stop", user.name()));
        let _ = std::fs::remove_file(&stop);
        let children = (0..n)
            .map(|_| {
                churn(
                    user,
                    dir,
                    &[
                        "--chain",
                        "4",
                        "--name-len",
                        "200",
                        "churn",
                        &stop.to_string_lossy(),
                    ],
                )
                .spawn()
                .unwrap_or_else(|e| panic!("starting imds-churn: {e}"))
            })
            .collect();
        Self { stop, children }
    }

    /// Stops them; how many cgroups they made in all.
    fn stop(&mut self) -> u64 {
        let _ = std::fs::write(&self.stop, b"");
        let mut made = 0;
        for mut child in self.children.drain(..) {
            let deadline = Instant::now() + scaled(Duration::from_secs(10));
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            // Ours to stop, by pid, should the file not have stopped it.
            let _ = child.kill();
            let out = child
                .wait_with_output()
                .unwrap_or_else(|e| panic!("waiting for imds-churn: {e}"));
            assert!(
                out.status.success(),
                "imds-churn: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let line: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            made += line["made"].as_u64().unwrap_or(0);
        }
        let _ = std::fs::remove_file(&self.stop);
        made
    }
}

impl Drop for Churners {
    fn drop(&mut self) {
        if !self.children.is_empty() {
            self.stop();
        }
    }
}

/// A denied probe as `uid` in `cgroup`, and the time its record took.
/// (Each uid's records are limited to 5 in 10 s: a test that wants more
/// takes another uid.)
fn denial(sb: &Sandbox, agent: &Agent, uid: u32, cgroup: &Path) -> (Value, Duration) {
    let r = sb.probe_as(uid, uid).cgroup_dir(cgroup).run(connect());
    assert!(denied(&r), "{r:?}");
    let refused = Instant::now();
    let pid = u64::from(r.pid);
    let record = agent
        .wait_for(
            |rec| is(rec, "deny") && field(rec, "pid").and_then(Value::as_u64) == Some(pid),
            LOG,
        )
        .unwrap_or_else(|| panic!("no deny record for pid {pid}:\n{}", agent.output()));
    (record, refused.elapsed())
}

/// `nft` in the sandbox's network namespace.
fn nft(sb: &Sandbox, args: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net={}", sb.netns_path().display()))
        .arg("--")
        .arg("nft")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running nft {args:?}: {e}"))
}

#[test]
fn a_user_churning_long_paths_delays_no_reload_repair_or_record() {
    if !privileged_or_skip("a_user_churning_long_paths_delays_no_reload_repair_or_record") {
        return;
    }
    // The user exists in a private /etc only; what the test starts from
    // its thread (the agent, which names it in records) reads it there.
    PrivateEtc::run(|etc| churning(&TestUser::new(etc, "imds-churner", 42_701)));
}

fn churning(user: &TestUser) {
    let sb = Sandbox::new();
    let subtree = sb.cgroup.child("user");
    user.delegate(&subtree);
    let held = floor(HELD);
    // Made before the agent starts: its first listing finds them.
    let made = finish(churn(
        user,
        subtree.path(),
        &["--chain", "4", "make", &held.to_string()],
    ));
    let deep = made["dir"].as_str().unwrap_or_default().to_owned();
    assert!(
        deep.len() - cgroup2_root().as_os_str().len() > 1023,
        "the user's cgroups have paths past 1,023 bytes: {deep}"
    );
    sb.policy(&format!(
        "mode = \"enforce\"\n[allow]\nuids = [{}]\n",
        user.uid
    ));
    // nftables holds the forward path (as before 6.4), so that its repair
    // is measured: the netfilter program needs none.
    let agent = sb.spawn_agent(&["--forward-path", "nftables"], &[]);
    agent.wait_ready(scaled(READY));
    sb.probe_as(user.uid, user.gid).run(connect()).assert_ok();

    let mut churners = Churners::start(user, subtree.path(), 2);
    std::thread::sleep(scaled(Duration::from_secs(1)));

    // A reload that revokes the user, while it churns.
    let seen = agent.records().len();
    sb.policy("mode = \"enforce\"\n[allow]\nuids = [1001]\n");
    let asked = Instant::now();
    agent.sighup();
    let record = agent
        .wait_for_after(
            seen,
            |r| is(r, "reload") && field(r, "outcome").is_some(),
            Duration::from_secs(60),
        )
        .unwrap_or_else(|| panic!("no reload record:\n{}", agent.output()));
    let took = asked.elapsed();
    assert_eq!(
        field(&record, "outcome").and_then(Value::as_str),
        Some("applied"),
        "{record}"
    );
    within("the reload, signal to record", took, RELOAD_BOUND);
    let micros = Duration::from_micros(number(&record, "micros"));
    within("the reload, as its record says", micros, RELOAD_BOUND);
    assert!(
        micros <= took,
        "the record counts from the signal: {record}"
    );
    let r = sb.probe_as(user.uid, user.gid).run(connect());
    assert!(denied(&r), "the reload revoked the user: {r:?}");

    // The forward table, flushed with everything else, is put back.
    let out = nft(&sb, &["flush", "ruleset"]);
    assert!(out.status.success(), "{out:?}");
    let flushed = Instant::now();
    let repaired = agent
        .wait_for(
            |r| field(r, "forward").and_then(Value::as_str) == Some("removed"),
            Duration::from_secs(60),
        )
        .unwrap_or_else(|| panic!("the forward table was not put back:\n{}", agent.output()));
    within(
        "the forward table's repair",
        flushed.elapsed(),
        REPAIR_BOUND,
    );
    assert!(
        field(&repaired, "message")
            .and_then(Value::as_str)
            .is_some_and(|m| m.contains("put back")),
        "{repaired}"
    );
    let out = nft(&sb, &["list", "table", "inet", "imds_guard_forward"]);
    assert!(out.status.success(), "the table is back: {out:?}");

    // Denial records keep coming.
    for _ in 0..3 {
        let (_, took) = denial(&sb, &agent, NOBODY, sb.cgroup.path());
        within("a denial record", took, RECORD_BOUND);
    }

    let probes = lose_events(&sb, &agent);
    let churned = churners.stop();
    assert!(
        churned >= floor(20_000),
        "the churners made {churned} cgroups: too few to have tested anything"
    );
    for (uid, cg) in (70_001..).zip(&probes) {
        let (record, _) = denial(&sb, &agent, uid, cg.path());
        assert_eq!(
            field(&record, "cgroup").and_then(Value::as_str),
            Some(cgroup_path(cg).as_str()),
            "a cgroup made while its event was lost is named: {record}"
        );
    }
    let (_, status) = sb.status();
    assert!(
        status["cgroups"]["events_lost"].as_u64() > Some(0),
        "{status}"
    );
    drop(probes);
}

/// Stops the agent (SIGSTOP) while the user churns, long enough to fill
/// the cgroup ring, makes cgroups whose events are then lost, and lets it
/// go on: the loss is said, and a rescan learns the cgroups. Those
/// cgroups, to probe from.
fn lose_events(sb: &Sandbox, agent: &Agent) -> Vec<TestCgroup> {
    let pid = nix::unistd::Pid::from_raw(agent.pid() as i32);
    let signal = |s| nix::sys::signal::kill(pid, s).unwrap_or_else(|e| panic!("{s}: {e}"));
    let seen = agent.records().len();
    signal(nix::sys::signal::Signal::SIGSTOP);
    std::thread::sleep(scaled(Duration::from_millis(1500)));
    let probes: Vec<TestCgroup> = (0..5).map(|i| sb.cgroup.child(&format!("p{i}"))).collect();
    std::thread::sleep(scaled(Duration::from_millis(500)));
    signal(nix::sys::signal::Signal::SIGCONT);
    let lost = agent
        .wait_for_after(
            seen,
            |r| is(r, "lost") && field(r, "ring").and_then(Value::as_str) == Some("cgroups"),
            LOG,
        )
        .unwrap_or_else(|| panic!("no lost cgroup events reported:\n{}", agent.output()));
    assert!(number(&lost, "lost") > 0, "{lost}");
    // A listing already under way when the agent was stopped (after
    // events lost earlier) may end first without the probes: the events
    // lost meanwhile call for another, which must learn them.
    let rescanned = agent
        .wait_for_after(
            seen,
            |r| is(r, "rescan") && number(r, "learned") >= probes.len() as u64,
            LOG,
        )
        .unwrap_or_else(|| {
            panic!(
                "no rescan learned the {} cgroups whose events were lost:\n{}",
                probes.len(),
                agent.output()
            )
        });
    assert!(number(&rescanned, "cgroups") >= floor(HELD), "{rescanned}");
    probes
}

/// A capacity for the test's classification map: what the host holds now
/// and room for the test's own.
fn small_map() -> u32 {
    let mut count = 0u32;
    let mut stack = vec![cgroup2_root()];
    while let Some(dir) = stack.pop() {
        count += 1;
        if let Ok(entries) = std::fs::read_dir(&dir) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    count + 1024
}

/// The sandbox's agent on a classification map of `capacity`, with a
/// policy that allows the user by uid and `app.service` by unit, and
/// denies a cgroup (so that an unclassified cgroup is denied).
fn small_map_agent(sb: &Sandbox, uid: u32, capacity: u32) -> Agent {
    let systemctl = fake_systemctl(sb, &["app.service"]);
    let base = cgroup_path(&sb.cgroup);
    sb.policy(&format!(
        "mode = \"enforce\"\n[allow]\nuids = [{uid}]\nunits = [\"app.service\"]\n[deny]\ncgroups \
         = [\"{base}/nothing/**\"]\n"
    ));
    let capacity = capacity.to_string();
    let agent = sb.spawn_agent(
        &[],
        &[
            ("IMDS_GUARD_SYSTEMCTL", &systemctl.to_string_lossy()),
            ("IMDS_GUARD_TEST_MAX_CGROUPS", &capacity),
        ],
    );
    agent.wait_ready(scaled(READY));
    agent
}

/// Probes `connect()` as `uid` in `dir` until `pred` holds of the result,
/// for up to `LOG` (scaled); the last result.
fn until(sb: &Sandbox, uid: u32, dir: &Path, pred: impl Fn(&ProbeResult) -> bool) -> ProbeResult {
    let deadline = Instant::now() + scaled(LOG);
    loop {
        let r = sb.probe_as(uid, uid).cgroup_dir(dir).run(connect());
        if pred(&r) || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn one_user_takes_only_its_share_of_the_map_and_its_refused_cgroups_are_classified_once_freed() {
    if !privileged_or_skip(
        "one_user_takes_only_its_share_of_the_map_and_its_refused_cgroups_are_classified_once_freed",
    ) {
        return;
    }
    PrivateEtc::run(|etc| filling(&TestUser::new(etc, "imds-filler", 42_702)));
}

fn filling(user: &TestUser) {
    let sb = Sandbox::new();
    let subtree = sb.cgroup.child("user");
    user.delegate(&subtree);
    let capacity = small_map();
    let agent = small_map_agent(&sb, user.uid, capacity);
    let (_, status) = sb.status();
    let map = &status["cgroups"]["map"];
    assert_eq!(
        map["capacity"].as_u64(),
        Some(u64::from(capacity)),
        "{status}"
    );
    let quota = map["quota_per_creator"].as_u64().unwrap_or(0);
    assert_eq!(quota, u64::from(capacity / 16), "{status}");

    // The user tries to fill the map.
    let tries = quota + 50;
    let made = finish(churn(user, subtree.path(), &["make", &tries.to_string()]));
    assert_eq!(made["made"].as_u64(), Some(tries), "{made}");
    let dir = |i: u64| subtree.path().join(format!("c{i}"));
    let (_, status) = sb.status();
    let cgroups = &status["cgroups"];
    assert_eq!(
        cgroups["map"]["largest_creator"],
        serde_json::json!({"uid": user.uid, "entries": quota}),
        "the user holds its share and no more: {status}"
    );
    assert!(cgroups["over_quota"].as_u64() >= Some(50), "{status}");
    assert!(
        cgroups["map"]["entries"].as_u64() < Some(u64::from(capacity)),
        "the map is not full: {status}"
    );
    sb.probe_as(user.uid, user.gid)
        .cgroup_dir(dir(0))
        .run(connect())
        .assert_ok();
    let refused = dir(quota + 10);
    let r = sb
        .probe_as(user.uid, user.gid)
        .cgroup_dir(&refused)
        .run(connect());
    assert!(
        denied(&r),
        "past its share the user's cgroups are unclassified, which the cgroup deny refuses: {r:?}"
    );

    // A unit started meanwhile is classified: root's creations have room.
    let app = sb.cgroup.child("app.service");
    sb.probe_as(APP_UID, APP_UID)
        .cgroup_dir(app.path())
        .run(connect())
        .assert_ok();

    // The user frees some of its share: what was refused is classified,
    // without a reload.
    let reloads = agent.records().iter().filter(|r| is(r, "reload")).count();
    for i in 0..20 {
        std::fs::remove_dir(dir(i)).unwrap_or_else(|e| panic!("rmdir c{i}: {e}"));
    }
    let r = until(&sb, user.uid, &refused, |r| r.ok);
    assert!(
        r.ok,
        "refused before, classified once room was freed: {r:?}"
    );
    assert_eq!(
        agent.records().iter().filter(|r| is(r, "reload")).count(),
        reloads,
        "without a reload"
    );
    drop(app);
}

#[test]
fn a_unit_refused_by_a_full_map_is_classified_as_soon_as_room_is_freed() {
    if !privileged_or_skip("a_unit_refused_by_a_full_map_is_classified_as_soon_as_room_is_freed") {
        return;
    }
    let sb = Sandbox::new();
    let capacity = small_map();
    let agent = small_map_agent(&sb, NOBODY, capacity);
    let app = sb.cgroup.child("app.service");
    sb.probe_as(APP_UID, APP_UID)
        .cgroup_dir(app.path())
        .run(connect())
        .assert_ok();
    drop(app);

    // Root fills the map (root's cgroups have no share to exceed), as one
    // user could before shares.
    let fill = sb.cgroup.child("fill");
    let (_, status) = sb.status();
    let held = status["cgroups"]["map"]["entries"].as_u64().unwrap_or(0);
    let extra = 50;
    let n = u64::from(capacity).saturating_sub(held) + extra;
    for i in 0..n {
        let dir = fill.path().join(format!("f{i}"));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    }
    let (_, status) = sb.status();
    assert!(
        status["cgroups"]["not_stored"].as_u64() >= Some(1),
        "{status}"
    );

    // The unit starts on a full map: unclassified, refused.
    let app = sb.cgroup.child("app.service");
    let r = sb
        .probe_as(APP_UID, APP_UID)
        .cgroup_dir(app.path())
        .run(connect());
    assert!(denied(&r), "a full map leaves the unit unclassified: {r:?}");

    // Room freed: the unit is classified without a reload.
    let reloads = agent.records().iter().filter(|r| is(r, "reload")).count();
    for i in 0..4 * extra {
        let dir = fill.path().join(format!("f{i}"));
        std::fs::remove_dir(&dir).unwrap_or_else(|e| panic!("rmdir {}: {e}", dir.display()));
    }
    let r = until(&sb, APP_UID, app.path(), |r| r.ok);
    assert!(r.ok, "classified once room was freed: {r:?}");
    assert_eq!(
        agent.records().iter().filter(|r| is(r, "reload")).count(),
        reloads,
        "without a reload"
    );
    drop(app);
    drop(fill);
}
