//! The guard's life beyond one agent: it stays when the agent dies, a new
//! agent takes it over without a gap, reloads never show a mixed policy,
//! `status` tells the truth from the kernel, and `detach` removes it all.

#![expect(
    clippy::expect_used,
    reason = "test helpers panic with a message, like the tests"
)]

use std::{
    os::fd::AsFd as _,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::Duration,
};

use imds_guard::kernel::{inspect, programs, sys};
use imds_guard_e2e::{
    Action, Agent, IMDS_PORT, IMDS_V4, IMDS_V6, Probe, Sandbox, UDP_PORT, field,
    privileged_or_skip, slowdown,
};
use serde_json::Value;

const EPERM: i32 = libc::EPERM;
const READY: Duration = Duration::from_secs(30);

/// X = uid 1001 and Y = uid 2002 get the same verdicts under both policies
/// (X allowed, Y denied), by a rule under one and by the default under the
/// other. Any mix of one policy's rules with the other's default, or a
/// moment with no rules, gives X a deny or Y an allow: a wrong verdict.
const P1: &str = "[allow]\nuids = [1001]\n";
const P2: &str = "[deny]\nuids = [2002]\n";
const X: u32 = 1001;
const Y: u32 = 2002;
/// Z = uid 3003 tells the two policies apart: denied by P1, allowed by P2.
const Z: u32 = 3003;

/// The test's identity for `uid`: its own uid and gid.
fn probe(w: &Sandbox, uid: u32) -> Probe {
    w.probe_as(uid, uid)
}

/// Programs attached to the test cgroup itself, per program of ours on it.
fn attachments(w: &Sandbox) -> Vec<usize> {
    inspect::attached_per_hook(w.cgroup.path()).expect("query the cgroup's programs")
}

fn expect_p1(w: &Sandbox) {
    probe(w, X)
        .run(Action::connect(IMDS_V4, IMDS_PORT))
        .assert_ok();
    for ip in [std::net::IpAddr::from(IMDS_V4), IMDS_V6.into()] {
        probe(w, Y)
            .run(Action::connect(ip, IMDS_PORT))
            .assert_errno(EPERM);
    }
    probe(w, Z)
        .run(Action::connect(IMDS_V4, IMDS_PORT))
        .assert_errno(EPERM);
}

fn kill9(agent: &Agent) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL the agent");
    agent
        .wait_exit(Duration::from_secs(10))
        .expect("the agent dies");
}

fn reloads(agent: &Agent, outcome: &str) -> usize {
    agent
        .records()
        .iter()
        .filter(|r| {
            field(r, "event").and_then(Value::as_str) == Some("reload")
                && field(r, "outcome").and_then(Value::as_str) == Some(outcome)
        })
        .count()
}

/// Waits for a reload record with `outcome`.
fn reloaded(agent: &Agent, outcome: &str) -> Value {
    agent
        .wait_for(
            |r| field(r, "outcome").and_then(Value::as_str) == Some(outcome),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("no {outcome} reload:\n{}", agent.output()))
}

/// UDP datagrams to the protected address from `uid`, in rounds, until
/// `stop`: (attempts, refused with EPERM).
fn hammer(world: &Sandbox, uid: u32, stop: &AtomicBool) -> (u64, u64) {
    let attempts = AtomicU64::new(0);
    let eperm = AtomicU64::new(0);
    let probe = probe(world, uid).repeat(2_000);
    loop {
        let r = probe.run(Action::udp_send(IMDS_V4, UDP_PORT));
        attempts.fetch_add(u64::from(r.attempts), Ordering::Relaxed);
        eperm.fetch_add(u64::from(r.eperm), Ordering::Relaxed);
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    (attempts.into_inner(), eperm.into_inner())
}

#[test]
fn killed_with_sigkill_the_agent_leaves_the_guard_enforcing() {
    if !privileged_or_skip("killed_with_sigkill_the_agent_leaves_the_guard_enforcing") {
        return;
    }
    let w = Sandbox::new();
    w.policy(P1);
    let agent = w.start_agent(&[]);
    expect_p1(&w);
    kill9(&agent);
    expect_p1(&w);
    let r = probe(&w, X).run(Action::http(IMDS_V4, IMDS_PORT));
    assert_eq!(r.assert_ok().body, w.imds.credentials_body());
    assert_eq!(attachments(&w), vec![1; programs::GUARDING]);
    let (code, status) = w.status();
    assert_eq!(code, Some(0), "{status}");
    assert_eq!(status["enforcing"], true, "{status}");
    assert_eq!(status["agent_alive"], false, "{status}");
    assert_eq!(status["policy"]["agent_pid"], agent.pid(), "{status}");
    assert!(
        status["counters"]["denied"].as_u64().unwrap_or(0) >= 4,
        "{status}"
    );
}

#[test]
fn a_restarted_agent_takes_over_without_a_gap_or_a_second_attachment() {
    if !privileged_or_skip("a_restarted_agent_takes_over_without_a_gap_or_a_second_attachment") {
        return;
    }
    let w = Sandbox::new();
    w.policy(P1);
    let first = w.start_agent(&[]);
    let (_, before) = w.status();
    let stop = AtomicBool::new(false);
    let ((x_attempts, x_eperm), (y_attempts, y_eperm), second) = thread::scope(|s| {
        let x = s.spawn(|| hammer(&w, X, &stop));
        let y = s.spawn(|| hammer(&w, Y, &stop));
        thread::sleep(Duration::from_millis(200));
        kill9(&first);
        thread::sleep(Duration::from_millis(100));
        let second = w.start_agent(&[]);
        thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        (
            x.join().expect("x hammer"),
            y.join().expect("y hammer"),
            second,
        )
    });
    assert_eq!(
        x_eperm, 0,
        "allowed uid refused {x_eperm} of {x_attempts} times"
    );
    assert_eq!(
        y_eperm,
        y_attempts,
        "denied uid got through {} of {y_attempts} times",
        y_attempts - y_eperm
    );
    // The hammers ran from before the kill until after the new agent was
    // ready, in rounds of 2,000.
    assert!(
        y_attempts >= slowdown::floor(6_000),
        "the hammer ran: {y_attempts}"
    );
    let ready = second
        .wait_for(|r| field(r, "ready") == Some(&Value::Bool(true)), READY)
        .expect("ready");
    assert_eq!(
        field(&ready, "adopted"),
        Some(&Value::from(programs::GUARDING)),
        "{ready}"
    );
    assert_eq!(
        attachments(&w),
        vec![1; programs::GUARDING],
        "exactly one attachment per hook"
    );
    let (code, after) = w.status();
    assert_eq!(code, Some(0), "{after}");
    assert_eq!(after["agent_alive"], true);
    assert_eq!(after["policy"]["agent_pid"], second.pid());
    assert_eq!(
        after["policy"]["attached_unix"], before["policy"]["attached_unix"],
        "the guard has been attached since the first agent attached it"
    );
    for (b, a) in before["links"]
        .as_array()
        .expect("links")
        .iter()
        .zip(after["links"].as_array().expect("links"))
    {
        assert_eq!(b["link_id"], a["link_id"], "the same link, adopted");
        assert_ne!(b["prog_id"], a["prog_id"], "with the new agent's program");
    }
    expect_p1(&w);
}

#[test]
fn a_reload_with_a_broken_file_keeps_the_policy_in_force() {
    if !privileged_or_skip("a_reload_with_a_broken_file_keeps_the_policy_in_force") {
        return;
    }
    let w = Sandbox::new();
    let config = w.policy(P1);
    let agent = w.start_agent(&[]);
    let (_, before) = w.status();
    w.policy("[allow]\nuids = [1001, \"x\"]\n");
    agent.sighup();
    let expected = format!("{}:2:15:", config.display());
    let invalid = agent
        .wait_for(
            |r| {
                field(r, "outcome").and_then(Value::as_str) == Some("invalid")
                    && field(r, "message")
                        .and_then(Value::as_str)
                        .is_some_and(|m| m.starts_with(&expected))
            },
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("no {expected} record:\n{}", agent.output()));
    assert_eq!(
        field(&invalid, "level").and_then(Value::as_str),
        Some("WARN")
    );
    expect_p1(&w);
    let (_, after) = w.status();
    assert_eq!(before["policy"]["digest"], after["policy"]["digest"]);
    // Nothing applied, so no new epoch: nothing open is judged again.
    let epoch = before["policy"]["epoch"].as_u64().expect("an epoch");
    assert!(epoch >= 1, "{before}");
    assert_eq!(after["policy"]["epoch"], epoch, "{after}");

    // A good file is taken.
    w.policy(P2);
    agent.sighup();
    reloaded(&agent, "applied");
    probe(&w, Z)
        .run(Action::connect(IMDS_V4, IMDS_PORT))
        .assert_ok();
    probe(&w, Y)
        .run(Action::connect(IMDS_V6, IMDS_PORT))
        .assert_errno(EPERM);
    let (_, reloaded) = w.status();
    assert_ne!(before["policy"]["digest"], reloaded["policy"]["digest"]);
    assert_eq!(reloaded["policy"]["epoch"], epoch + 1, "{reloaded}");
}

#[test]
fn reload_waits_for_the_agent_and_says_whether_the_policy_was_taken() {
    if !privileged_or_skip("reload_waits_for_the_agent_and_says_whether_the_policy_was_taken") {
        return;
    }
    let w = Sandbox::new();
    let config = w.policy(P1);
    let agent = w.start_agent(&[]);
    let reload = || {
        let out = w.cli(&["reload", "--config", config.to_str().expect("utf-8")]);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), said)
    };
    let epoch = |w: &Sandbox| w.status().1["policy"]["epoch"].as_u64().expect("an epoch");
    let first = epoch(&w);
    // Taken: exit 0 once it is in force, and the line says what is.
    w.policy(P2);
    let (code, said) = reload();
    assert_eq!(code, Some(0), "{said}");
    assert!(said.starts_with("reloaded (policy epoch "), "{said}");
    assert!(
        said.contains(&format!("enforcing {}", config.display())),
        "{said}"
    );
    assert_eq!(epoch(&w), first + 1);
    probe(&w, Z)
        .run(Action::connect(IMDS_V4, IMDS_PORT))
        .assert_ok();
    // Refused, twice in a row (the flag is set already the second time):
    // exit 1 with the file's problem, the policy in force unchanged.
    w.policy("[allow]\nuids = [1001, \"x\"]\n");
    for _ in 0..2 {
        let (code, said) = reload();
        assert_eq!(code, Some(1), "{said}");
        assert!(said.contains("reload refused"), "{said}");
        assert!(
            said.contains(&format!("{}:2:15:", config.display())),
            "{said}"
        );
        assert_eq!(epoch(&w), first + 1);
    }
    let refusals = agent
        .records()
        .iter()
        .filter(|r| {
            field(r, "message")
                .and_then(Value::as_str)
                .is_some_and(|m| m.starts_with("reload refused"))
        })
        .count();
    assert_eq!(refusals, 2, "{}", agent.output());
    probe(&w, Z)
        .run(Action::connect(IMDS_V4, IMDS_PORT))
        .assert_ok();
    // Taken again.
    w.policy(P1);
    let (code, said) = reload();
    assert_eq!(code, Some(0), "{said}");
    expect_p1(&w);
    // No agent: nothing to ask, exit 3, and the pinned guard stays.
    kill9(&agent);
    let (code, said) = reload();
    assert_eq!(code, Some(3), "{said}");
    assert!(said.contains("no agent runs the guard pinned at"), "{said}");
    expect_p1(&w);
}

#[test]
fn reloading_under_load_never_gives_a_wrong_verdict() {
    if !privileged_or_skip("reloading_under_load_never_gives_a_wrong_verdict") {
        return;
    }
    let w = Sandbox::new();
    w.policy(P1);
    let agent = w.start_agent(&[]);
    let stop = AtomicBool::new(false);
    const RELOADS: usize = 60;
    let ((x_attempts, x_eperm), (y_attempts, y_eperm)) = thread::scope(|s| {
        let x = s.spawn(|| hammer(&w, X, &stop));
        let y = s.spawn(|| hammer(&w, Y, &stop));
        for i in 0..RELOADS {
            w.policy(if i % 2 == 0 { P2 } else { P1 });
            agent.sighup();
            // Let each reload land before the next (signals coalesce).
            let want = i + 1;
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while reloads(&agent, "applied") < want && std::time::Instant::now() < deadline {
                thread::sleep(Duration::from_millis(2));
            }
        }
        stop.store(true, Ordering::Relaxed);
        (x.join().expect("x"), y.join().expect("y"))
    });
    assert_eq!(reloads(&agent, "applied"), RELOADS, "{}", agent.output());
    assert_eq!(reloads(&agent, "failed"), 0);
    let wrong = x_eperm + (y_attempts - y_eperm);
    assert_eq!(
        wrong,
        0,
        "{x_eperm} of {x_attempts} allowed sends refused, {} of {y_attempts} denied sends let \
         through, across {RELOADS} reloads",
        y_attempts - y_eperm
    );
    let floor = slowdown::floor(10_000);
    assert!(
        x_attempts > floor && y_attempts > floor,
        "{x_attempts} and {y_attempts} sends, want more than {floor} each"
    );
}

#[test]
fn detach_leaves_nothing_pinned_or_attached() {
    if !privileged_or_skip("detach_leaves_nothing_pinned_or_attached") {
        return;
    }
    let w = Sandbox::new();
    w.policy(P1);
    let agent = w.start_agent(&[]);
    assert_eq!(attachments(&w), vec![1; programs::GUARDING]);
    let out = w.cli(&["detach"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("detached {} link(s)", programs::GUARDING)),
        "{stdout}"
    );
    // It stops the agent, which has nothing left to guard.
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .expect("the agent stops");
    assert_eq!(status.code(), Some(0));
    assert_eq!(attachments(&w), vec![0; programs::GUARDING]);
    assert!(!w.pin_dir().exists(), "the pin directory is gone");
    // Only bpffs's own `maps.debug` and `progs.debug` remain.
    let left: Vec<String> = std::fs::read_dir(w.bpffs.path())
        .expect("read the bpffs")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".debug"))
        .collect();
    assert!(left.is_empty(), "left pinned: {left:?}");
    probe(&w, Y)
        .run(Action::connect(IMDS_V4, IMDS_PORT))
        .assert_ok();
    let (code, status) = w.status();
    assert_eq!(code, Some(5), "{status}");
    assert_eq!(status["attached"], false);
    // Detaching twice is fine.
    assert_eq!(w.cli(&["detach"]).status.code(), Some(0));
}

#[test]
fn detach_with_a_pin_dir_nothing_is_pinned_at_leaves_the_running_guard_alone() {
    if !privileged_or_skip(
        "detach_with_a_pin_dir_nothing_is_pinned_at_leaves_the_running_guard_alone",
    ) {
        return;
    }
    let w = Sandbox::with_agent(P1);
    let (code, status) = w.status();
    assert_eq!(code, Some(0), "{status}");
    assert_eq!(status["forward"]["guarded"], true, "{status}");
    // A typo of the pin directory, in the guard's network namespace.
    let typo = w.pin_dir().with_extension("typo");
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", w.netns_path().display()))
        .arg("--")
        .arg(imds_guard_e2e::imds_guard_bin())
        .arg("detach")
        .arg("--pin-dir")
        .arg(&typo)
        .output()
        .expect("run imds-guard detach");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("nothing is pinned at"), "{stdout}");
    // Where nftables holds the forward path, its table has one name per
    // network namespace: it is left, with how to remove it were it stale.
    // The netfilter program's links are pinned with the guard they belong
    // to, which the typo does not name: nothing to say of them.
    let table = status["forward"]["mechanism"] == "nftables";
    assert_eq!(
        stdout.contains("nft delete table inet imds_guard_forward"),
        table,
        "it says how to remove the table only when there is one: {stdout}"
    );
    // The guard pinned elsewhere still holds its forward path, and runs.
    let (code, status) = w.status();
    assert_eq!(code, Some(0), "{status}");
    assert_eq!(status["forward"]["guarded"], true, "{status}");
    expect_p1(&w);
}

/// `imds-guard ARGS` in the sandbox's network namespace with the pin
/// directory given only by `IMDS_GUARD_PIN_DIR`, as in the DaemonSet's pod
/// (`kubectl exec ... imds-guard status`), where the site ConfigMap sets it.
fn cli_by_env(w: &Sandbox, args: &[&str]) -> std::process::Output {
    std::process::Command::new("nsenter")
        .arg(format!("--net={}", w.netns_path().display()))
        .arg("--")
        .arg(imds_guard_e2e::imds_guard_bin())
        .args(args)
        .env("IMDS_GUARD_PIN_DIR", w.pin_dir())
        .output()
        .unwrap_or_else(|e| panic!("running imds-guard {args:?}: {e}"))
}

#[test]
fn status_reload_and_detach_take_the_pin_dir_from_the_environment() {
    if !privileged_or_skip("status_reload_and_detach_take_the_pin_dir_from_the_environment") {
        return;
    }
    let w = Sandbox::new();
    w.policy(P1);
    let agent = w.start_agent(&[]);
    let out = cli_by_env(&w, &["status", "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).expect("status prints JSON");
    assert_eq!(out.status.code(), Some(0), "{status}");
    assert_eq!(status["attached"], true, "{status}");
    assert_eq!(
        status["pin_dir"].as_str(),
        w.pin_dir().to_str(),
        "status read the guard the variable names: {status}"
    );
    let out = cli_by_env(
        &w,
        &[
            "reload",
            "--config",
            w.policy_path().to_str().expect("UTF-8"),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "reload reached the agent: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli_by_env(&w, &["detach"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!("detached {} link(s)", programs::GUARDING)),
        "detach removed the guard the variable names: {stdout}"
    );
    agent
        .wait_exit(Duration::from_secs(10))
        .expect("the agent stops");
    assert_eq!(attachments(&w), vec![0; programs::GUARDING]);
}

#[test]
fn sigterm_leaves_the_guard_pinned() {
    if !privileged_or_skip("sigterm_leaves_the_guard_pinned") {
        return;
    }
    let w = Sandbox::new();
    w.policy(P1);
    let agent = w.start_agent(&[]);
    let status = agent.terminate();
    assert_eq!(status.code(), Some(0));
    let last = agent.records().into_iter().last().expect("a last record");
    let message = field(&last, "message")
        .and_then(Value::as_str)
        .unwrap_or("");
    assert!(message.contains("imds-guard detach"), "{last}");
    expect_p1(&w);
    assert_eq!(attachments(&w), vec![1; programs::GUARDING]);
}

#[test]
fn status_reads_what_is_in_force_from_the_kernel() {
    if !privileged_or_skip("status_reads_what_is_in_force_from_the_kernel") {
        return;
    }
    let w = Sandbox::new();
    let config = w.policy("mode = \"audit\"\n[allow]\nuids = [1001]\n");
    let agent = w.start_agent(&[]);
    probe(&w, Y)
        .run(Action::connect(IMDS_V4, IMDS_PORT))
        .assert_ok();
    let (code, s) = w.status();
    assert_eq!(code, Some(0), "auditing as configured counts: {s}");
    assert_eq!(s["mode"], "audit");
    assert_eq!(s["enforcing"], true);
    assert_eq!(s["cgroup"], w.cgroup.path().to_str().expect("utf-8"));
    assert_eq!(
        s["links"].as_array().map(Vec::len),
        Some(programs::GUARDING)
    );
    assert_eq!(s["counters"]["audited"], 1, "{s}");
    assert_eq!(s["agent_alive"], true);
    let digest = imds_guard::policy::PolicySpec::load(&config)
        .and_then(|p| p.resolve(&imds_guard::policy::SystemResolver))
        .map(|p| imds_guard::policy::hex(&p.digest()))
        .expect("policy");
    assert_eq!(s["policy"]["digest"], digest.as_str());
    // `validate` prints the digest `status` shows, so that config
    // management can compare what it shipped with what is in force.
    let validated = std::process::Command::new(imds_guard_e2e::imds_guard_bin())
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .expect("validate");
    let validated = String::from_utf8_lossy(&validated.stdout);
    assert!(
        validated.contains(&format!("sha256 {digest}")),
        "{validated}"
    );
    // `--config FILE` compares; `--require MODE` makes audit fail a health
    // check that wants enforce.
    let config_arg = config.to_str().expect("utf-8");
    let same = w.cli(&["status", "--config", config_arg]);
    assert_eq!(
        same.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&same.stdout)
    );
    let other = w.dir.path().join("other.toml");
    std::fs::write(&other, "mode = \"audit\"\n[allow]\nuids = [1002]\n").expect("write");
    let differs = w.cli(&["status", "--config", other.to_str().expect("utf-8")]);
    let text = String::from_utf8_lossy(&differs.stdout);
    assert_eq!(differs.status.code(), Some(5), "{text}");
    assert!(text.contains("DIFFERS from the policy in force"), "{text}");
    assert_eq!(
        w.cli(&["status", "--require", "enforce"]).status.code(),
        Some(5)
    );
    assert_eq!(
        w.cli(&["status", "--require", "audit"]).status.code(),
        Some(0)
    );
    let ready = agent
        .wait_for(|r| field(r, "ready").is_some(), READY)
        .expect("ready");
    assert_eq!(
        field(&ready, "digest").and_then(Value::as_str),
        Some(digest.as_str())
    );
    let text = w.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("auditing (mode audit)") && text.contains(&digest),
        "{text}"
    );
    // What the kernel offers, asked of the kernel.
    let features = s["kernel"]["features"].as_array().expect("features listed");
    assert!(!features.is_empty(), "{s}");
    assert!(features.iter().all(|f| f["present"] == true), "{s}");
    assert!(text.contains("has every feature the guard needs"), "{text}");
    // And which build of the programs it takes: the one that is loaded.
    let programs = s["identity"]["programs"].as_str().expect("a known build");
    assert_eq!(s["kernel"]["programs"], programs, "{s}");
    assert!(
        text.contains(&format!("; the {programs} build loads")),
        "{text}"
    );
    // Another user cannot read the pins: it is told so, with an exit code
    // of its own, never "not attached" (5) while the guard enforces. The
    // bpf filesystem is root's alone, as systemd mounts /sys/fs/bpf.
    let bpffs = w
        .pin_dir()
        .parent()
        .expect("the pins are in a bpffs")
        .to_owned();
    std::fs::set_permissions(&bpffs, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod the test's bpffs");
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", w.netns.path().display()))
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
        ])
        .arg(imds_guard_e2e::imds_guard_bin())
        .args(["status", "--pin-dir"])
        .arg(w.pin_dir())
        .output()
        .expect("status as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("only root can read the guard's pins"),
        "{stderr}"
    );
    drop(agent);
}

#[test]
fn metrics_count_decisions_and_reloads() {
    if !privileged_or_skip("metrics_count_decisions_and_reloads") {
        return;
    }
    let w = Sandbox::new();
    w.policy(P1);
    let port = w.free_port();
    let agent = Agent::start_pinned(
        &w.netns,
        &w.dir.path().join("policy.toml"),
        &w.cgroup,
        &w.pin_dir(),
        &["--metrics-listen", &port.to_string()],
    );
    agent.wait_ready(READY);
    probe(&w, Y)
        .run(Action::connect(IMDS_V6, IMDS_PORT))
        .assert_errno(EPERM);
    w.policy("[allow]\nuids = [1001, \"x\"]\n");
    agent.sighup();
    reloaded(&agent, "invalid");
    // The refusal is in the pinned state, for `status`...
    let (_, refused) = w.status();
    assert_eq!(refused["last_reload_refused"], true, "{refused}");
    w.policy(P2);
    agent.sighup();
    reloaded(&agent, "applied");
    // ...until a reload succeeds.
    let (_, applied) = w.status();
    assert_eq!(applied["last_reload_refused"], false, "{applied}");
    // Counters reach the metrics on the agent's one-second tick.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let body = w.scrape_metrics(port);
        if body.contains("imds_guard_decisions_total{verdict=\"denied\",hook=\"connect6\"} 1")
            || std::time::Instant::now() > deadline
        {
            break body;
        }
        thread::sleep(Duration::from_millis(200));
    };
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    for line in [
        "imds_guard_decisions_total{verdict=\"denied\",hook=\"connect6\"} 1",
        "imds_guard_decisions_total{verdict=\"denied\",hook=\"connect4\"} 0",
        "imds_guard_enforcing 1",
        "imds_guard_reloads_total{outcome=\"applied\"} 1",
        "imds_guard_reloads_total{outcome=\"invalid\"} 1",
        "imds_guard_reloads_total{outcome=\"failed\"} 0",
    ] {
        assert!(body.lines().any(|l| l == line), "no {line:?} in:\n{body}");
    }
    let (_, status) = w.status();
    let digest = status["policy"]["digest"].as_str().expect("digest");
    assert!(
        body.contains(digest),
        "the digest in force, as status reads it: {body}"
    );
}

#[test]
fn systemd_is_told_when_the_guard_is_ready_reloading_and_stopping() {
    if !privileged_or_skip("systemd_is_told_when_the_guard_is_ready_reloading_and_stopping") {
        return;
    }
    let w = Sandbox::new();
    w.policy(P1);
    let socket = w.dir.path().join("notify.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&socket).expect("bind the notify socket");
    listener
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let next = || {
        let mut buf = [0u8; 4096];
        let n = listener.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let agent = Agent::start_pinned_env(
        &w.netns,
        &w.dir.path().join("policy.toml"),
        &w.cgroup,
        &w.pin_dir(),
        &[],
        &[("NOTIFY_SOCKET", socket.to_str().expect("utf-8"))],
    );
    let ready = next();
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    assert!(
        ready.contains("STATUS=enforce, policy sha256 "),
        "{ready:?}"
    );
    // READY=1 comes once the guard is in force: it is already enforcing.
    expect_p1(&w);

    w.policy(P2);
    agent.sighup();
    let reloading = next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    let ready_again = next();
    assert!(ready_again.starts_with("READY=1\n"), "{ready_again:?}");
    assert!(!ready_again.contains("refused"), "{ready_again:?}");

    w.policy("mode = 3\n");
    agent.sighup();
    assert!(next().starts_with("RELOADING=1"));
    assert!(next().contains("(last reload refused)"));

    agent.terminate();
    assert_eq!(next(), "STOPPING=1");
}

#[test]
fn a_second_agent_refuses_to_take_over_from_a_live_one() {
    if !privileged_or_skip("a_second_agent_refuses_to_take_over_from_a_live_one") {
        return;
    }
    let w = Sandbox::new();
    w.policy(P1);
    let first = w.start_agent(&[]);
    let second = Agent::start_pinned(
        &w.netns,
        &w.dir.path().join("policy.toml"),
        &w.cgroup,
        &w.pin_dir(),
        &[],
    );
    let status = second
        .wait_exit(Duration::from_secs(30))
        .expect("the second agent exits");
    assert_eq!(status.code(), Some(3), "{}", second.output());
    assert!(
        second
            .output()
            .contains(&format!("another imds-guard agent (pid {})", first.pid())),
        "{}",
        second.output()
    );
    let (_, s) = w.status();
    assert_eq!(
        s["policy"]["agent_pid"],
        first.pid(),
        "the first keeps the guard"
    );
    assert_eq!(attachments(&w), vec![1; programs::GUARDING]);
}

#[test]
fn a_pinned_link_that_was_detached_is_replaced_not_trusted() {
    if !privileged_or_skip("a_pinned_link_that_was_detached_is_replaced_not_trusted") {
        return;
    }
    let w = Sandbox::new();
    w.policy(P1);
    let first = w.start_agent(&[]);
    kill9(&first);
    // Someone detached one hook's link (BPF_LINK_DETACH) but left its pin.
    let pin = w.pin_dir().join("link_connect6");
    let link = sys::obj_get(&pin).expect("open the pinned link");
    sys::link_detach(link.as_fd()).expect("detach it");
    assert_eq!(attachments(&w), vec![1, 0, 1, 1, 1, 1]);
    let (code, _) = w.status();
    assert_eq!(code, Some(5), "a detached hook is not enforcing");

    let second = w.start_agent(&[]);
    let ready = second
        .wait_for(|r| field(r, "ready") == Some(&Value::Bool(true)), READY)
        .expect("ready");
    assert_eq!(
        field(&ready, "adopted"),
        Some(&Value::from(programs::GUARDING - 1)),
        "{ready}"
    );
    assert_eq!(attachments(&w), vec![1; programs::GUARDING]);
    probe(&w, Y)
        .run(Action::connect(IMDS_V6, IMDS_PORT))
        .assert_errno(EPERM);
    assert_eq!(w.status().0, Some(0));
}

#[test]
fn a_second_guard_on_the_same_cgroup_is_named_by_both() {
    if !privileged_or_skip("a_second_guard_on_the_same_cgroup_is_named_by_both") {
        return;
    }
    let w = Sandbox::new();
    w.policy("[allow]\nuids = [1001]\n");
    let first = w.start_agent(&[]);
    let (_, alone) = w.status();
    assert_eq!(alone["other_guards"], serde_json::json!([]), "{alone}");
    // Another agent, pinning in a bpffs of its own, on the same cgroup.
    let second = Agent::start(&w.netns, &w.policy_path(), &w.cgroup, &[]);
    second.wait_ready(READY);
    let said = second
        .records()
        .into_iter()
        .find(|r| field(r, "other_guard").is_some());
    let said = said.unwrap_or_else(|| panic!("no record names the first guard"));
    let message = field(&said, "message")
        .and_then(Value::as_str)
        .unwrap_or("");
    assert!(message.contains("another imds-guard guard"), "{message}");
    let (_, both) = w.status();
    let others = both["other_guards"].as_array().expect("listed");
    assert_eq!(others.len(), programs::GUARDING, "{both}");
    drop(second);
    drop(first);
}

/// What runs in the agent's process before it execs.
type PreExec = fn() -> std::io::Result<()>;

/// `imds-guard run` in the sandbox's namespace, on its cgroup and pins, with
/// `pre_exec` run in the child first (it restricts what the agent may do).
fn run_restricted(w: &Sandbox, wrapper: &[&str], pre_exec: PreExec) -> std::process::Output {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = std::process::Command::new("nsenter");
    cmd.arg(format!("--net={}", w.netns.path().display()))
        .arg("--")
        .args(wrapper)
        .arg(imds_guard_e2e::imds_guard_bin())
        .arg("run")
        .arg("--config")
        .arg(w.policy_path())
        .arg("--cgroup")
        .arg(w.cgroup.path())
        .arg("--pin-dir")
        .arg(w.pin_dir())
        .args(["--status-file", "none"])
        .args(["--log-format", "text"])
        .stdin(std::process::Stdio::null());
    // SAFETY: `pre_exec` calls prctl(2) only, which is async-signal-safe.
    unsafe { cmd.pre_exec(pre_exec) };
    cmd.output().expect("run the agent")
}

/// A classic BPF seccomp filter that fails bpf(2) with EPERM, as a container
/// runtime's default profile or a unit's SystemCallFilter= does.
fn refuse_bpf_syscall() -> std::io::Result<()> {
    const RET_ERRNO_EPERM: u32 = 0x0005_0000 | libc::EPERM as u32;
    const RET_ALLOW: u32 = 0x7fff_0000;
    let filter = [
        // A = seccomp_data.nr
        libc::sock_filter {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: 0,
        },
        // if A == SYS_bpf: EPERM
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: libc::SYS_bpf as u32,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: RET_ERRNO_EPERM,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: plain prctl(2) calls with a filter that outlives them.
    let rc = unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            -1
        } else {
            libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog)
        }
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A refusal no restart can change exits 6 (the packaged unit's
/// RestartPreventExitStatus=) and names its cause and fix, and a start that
/// fails so leaves no pin directory behind. The same command without the
/// restriction starts, so the refusal is the restriction's.
#[test]
fn a_kernel_refusal_for_good_names_the_cause_and_exits_6() {
    if !privileged_or_skip("a_kernel_refusal_for_good_names_the_cause_and_exits_6") {
        return;
    }
    let w = Sandbox::new();
    w.policy("[allow]\nusers = [\"root\"]\n");
    let baseline = w.start_agent(&[]);
    baseline.wait_ready(READY);
    assert_eq!(
        baseline.terminate().code(),
        Some(0),
        "{}",
        baseline.output()
    );
    assert_eq!(w.cli(&["detach"]).status.code(), Some(0));
    assert!(!w.pin_dir().exists(), "detach removed the pins");

    let no_caps = [
        "capsh",
        "--drop=cap_bpf,cap_perfmon,cap_sys_admin",
        "--",
        "-c",
        "exec \"$0\" \"$@\"",
    ];
    let cases: [(&str, &[&str], PreExec, &str); 2] = [
        (
            "without CAP_BPF",
            &no_caps,
            || Ok(()),
            "the agent lacks CAP_BPF, CAP_PERFMON (and CAP_SYS_ADMIN)",
        ),
        (
            "under a seccomp filter",
            &[],
            refuse_bpf_syscall,
            "bpf(2) is refused by a seccomp filter",
        ),
    ];
    for (what, wrapper, pre_exec, says) in cases {
        let out = run_restricted(&w, wrapper, pre_exec);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "{what}: {stderr}");
        assert!(stderr.contains(says), "{what}: {stderr}");
        assert!(
            stderr.contains("restarting cannot fix this"),
            "{what}: {stderr}"
        );
        assert!(
            !stderr.contains("\u{1b}["),
            "{what}: no colour without a terminal: {stderr}"
        );
        assert!(
            !w.pin_dir().exists(),
            "{what}: a failed start left {}",
            w.pin_dir().display()
        );
    }
}

/// The phases of the start the `ready` record gives, in milliseconds.
const PHASES: [&str; 7] = [
    "parse_ms",
    "open_ms",
    "verifier_ms",
    "maps_ms",
    "classify_ms",
    "attach_ms",
    "forward_ms",
];

/// The phases of `ready`, checked: each a number of milliseconds, within
/// the start (`start_ms`), which is within `wall` (spawn to the record,
/// as the test saw it). Returns (phase, ms) in [`PHASES`]' order.
fn start_phases(ready: &Value, wall: Duration) -> Vec<(&'static str, f64)> {
    let number = |name: &str| {
        field(ready, name)
            .and_then(Value::as_f64)
            .unwrap_or_else(|| panic!("no {name} in the ready record: {ready}"))
    };
    let phases: Vec<(&str, f64)> = PHASES.iter().map(|&p| (p, number(p))).collect();
    let start = number("start_ms");
    let of = |name: &str| phases.iter().find(|(p, _)| *p == name).map_or(0.0, |p| p.1);
    // Parse and open run side by side, so do the verifier and the map
    // writes; the rest one after the other.
    let critical = of("parse_ms").max(of("open_ms"))
        + of("verifier_ms").max(of("maps_ms"))
        + of("classify_ms")
        + of("attach_ms")
        + of("forward_ms");
    assert!(
        phases.iter().all(|(_, ms)| *ms >= 0.0),
        "a negative phase: {ready}"
    );
    // Each figure is rounded to the microsecond.
    assert!(
        critical <= start + 0.01,
        "the phases ({critical} ms) do not fit in the start ({start} ms): {ready}"
    );
    let wall_ms = wall.as_secs_f64() * 1e3;
    assert!(
        start <= wall_ms,
        "the start ({start} ms) is longer than spawn to ready ({wall_ms} ms): {ready}"
    );
    phases
}

#[test]
fn the_ready_record_takes_the_start_apart() {
    if !privileged_or_skip("the_ready_record_takes_the_start_apart") {
        return;
    }
    let w = Sandbox::new();
    w.policy(P1);
    let spawned = std::time::Instant::now();
    let first = w.start_agent(&[]);
    let wall = spawned.elapsed();
    let ready = first.wait_ready(READY);
    let phases = start_phases(&ready, wall);
    // The verifier always has work; so has reading BTF for the offsets.
    for name in ["verifier_ms", "open_ms"] {
        assert!(
            phases.iter().any(|(p, ms)| *p == name && *ms > 0.0),
            "{name} is 0: {ready}"
        );
    }
    // The record's other fields are still there.
    assert_eq!(field(&ready, "mode"), Some(&Value::from("enforce")));
    assert_eq!(field(&ready, "adopted"), Some(&Value::from(0)));
    assert_eq!(field(&ready, "uid_rules"), Some(&Value::from(1)));
    assert!(
        field(&ready, "digest").is_some_and(Value::is_string),
        "{ready}"
    );
    // An agent that takes over the pinned guard times its start the same.
    kill9(&first);
    let spawned = std::time::Instant::now();
    let second = w.start_agent(&[]);
    let wall = spawned.elapsed();
    let ready = second.wait_ready(READY);
    assert_eq!(
        field(&ready, "adopted"),
        Some(&Value::from(programs::GUARDING)),
        "{ready}"
    );
    start_phases(&ready, wall);
    expect_p1(&w);
}
