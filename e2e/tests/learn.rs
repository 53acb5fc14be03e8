//! The audit phase, learned: the agent audits a policy that names none of
//! the test's callers, three identities call (root on the host, a uid
//! with a flood the rate limiter cuts short, nobody inside a unit), and
//! `imds-guard suggest` reads the agent's JSON log back (and writes the
//! same as a diff against the audit policy). The policy it prints
//! validates, and once in force in enforce mode lets exactly those callers
//! through: the same uids elsewhere, and other uids, are refused.
//! `status --rules` then shows, from the kernel's maps, who is allowed;
//! `imds-guard report` counts the same log, suppressed records included.

use std::{path::Path, process::Command, time::Duration};

use imds_guard_e2e::{
    Action, Agent, IMDS_PORT, IMDS_V4, LOG, NOBODY, ProbeResult, READY, Sandbox, cgroup_path,
    fake_systemctl, field, imds_guard_bin, privileged_or_skip,
};
use serde_json::Value;

/// A uid with no rule and, on a test machine, no name.
const APP_UID: u32 = 1001;
/// Another uid, never seen in the audit phase.
const OTHER_UID: u32 = 1002;
/// What the agent audits: a policy that names none of the callers.
const AUDIT_POLICY: &str = "mode = \"audit\"\n[allow]\nuids = [4242]\n";
/// Connects of the flood, one process: 5 are logged, the rest suppressed.
const FLOOD: u32 = 12;

fn http() -> Action {
    Action::http(IMDS_V4, IMDS_PORT)
}

fn start_agent(sb: &Sandbox, systemctl: &Path) -> Agent {
    let systemctl = systemctl
        .to_str()
        .unwrap_or_else(|| panic!("non UTF-8 path"));
    let agent = sb.spawn_agent(&[], &[("IMDS_GUARD_SYSTEMCTL", systemctl)]);
    agent.wait_ready(imds_guard_e2e::slowdown::scaled(READY));
    agent
}

/// Runs `imds-guard ARGS` (no pin directory: these commands read files).
fn cli(args: &[&str], systemctl: &Path) -> (bool, String, String) {
    let out = Command::new(imds_guard_bin())
        .args(args)
        .env("IMDS_GUARD_SYSTEMCTL", systemctl)
        .output()
        .unwrap_or_else(|e| panic!("running imds-guard {args:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits for the agent's record of `event` for the probe of pid `pid`.
fn record_of(agent: &Agent, event: &str, pid: u32, timeout: Duration) -> Value {
    let pid = u64::from(pid);
    agent
        .wait_for(
            |r| {
                field(r, "event").and_then(Value::as_str) == Some(event)
                    && field(r, "pid").and_then(Value::as_u64) == Some(pid)
            },
            timeout,
        )
        .unwrap_or_else(|| panic!("no {event} record for pid {pid}:\n{}", agent.output()))
}

/// Writes `policy` and waits until the agent has put it in force.
fn reload(sb: &Sandbox, agent: &Agent, policy: &str) {
    let applied = |r: &Value| {
        field(r, "event").and_then(Value::as_str) == Some("reload")
            && field(r, "outcome").and_then(Value::as_str) == Some("applied")
    };
    let seen = agent.records().len();
    sb.policy(policy);
    agent.sighup();
    agent
        .wait_for_after(seen, applied, LOG)
        .unwrap_or_else(|| panic!("the learned policy was not applied:\n{}", agent.output()));
}

fn denied(r: &ProbeResult) -> bool {
    !r.ok && r.errno == Some(libc::EPERM)
}

#[test]
fn a_policy_learned_from_the_audit_phase_admits_the_callers_seen_and_no_one_else() {
    if !privileged_or_skip(
        "a_policy_learned_from_the_audit_phase_admits_the_callers_seen_and_no_one_else",
    ) {
        return;
    }
    let sb = Sandbox::new();
    let app = sb.cgroup.child("app.service");
    let systemctl = fake_systemctl(&sb, &["app.service"]);
    sb.policy(AUDIT_POLICY);
    let agent = start_agent(&sb, &systemctl);

    // Auditing: every caller gets the credentials, and is recorded.
    let root = sb.probe_as(0, 0).run(http());
    assert_eq!(root.assert_ok().body, sb.imds.credentials_body());
    let flood = sb
        .probe_as(APP_UID, APP_UID)
        .repeat(FLOOD)
        .run(Action::connect(IMDS_V4, IMDS_PORT));
    assert!(flood.ok, "auditing refuses nothing: {flood:?}");
    let in_unit = sb
        .probe_as(NOBODY, NOBODY)
        .cgroup_dir(app.path())
        .run(http());
    assert_eq!(in_unit.assert_ok().body, sb.imds.credentials_body());
    record_of(&agent, "audit", root.pid, LOG);
    record_of(&agent, "audit", in_unit.pid, LOG);
    // The flood's summary comes when its 10 s window closes.
    record_of(&agent, "suppressed", flood.pid, Duration::from_secs(25));

    let log = sb.dir.path().join("audit.json");
    std::fs::write(&log, agent.output() + "\n")
        .unwrap_or_else(|e| panic!("writing {}: {e}", log.display()));
    let log = log.to_str().unwrap_or_else(|| panic!("non UTF-8 path"));
    let (ok, policy, proposals) = cli(&["suggest", "--from", log], &systemctl);
    assert!(ok, "suggest failed: {proposals}");
    eprintln!("proposals:\n{proposals}\nlearned policy:\n{policy}");
    assert!(policy.contains("mode = \"enforce\""), "{policy}");
    assert!(
        policy.contains("\"app.service\","),
        "the unit, not nobody: {policy}"
    );
    assert!(
        policy.contains("[allow.host]"),
        "root on the host only: {policy}"
    );
    assert!(
        proposals.contains(&format!("{FLOOD} audits ({} suppressed)", FLOOD - 5)),
        "the flood counted whole: {proposals}"
    );

    // The same as a change to the audit policy: a diff that keeps it.
    let audited = sb.dir.path().join("audited.toml");
    std::fs::write(&audited, AUDIT_POLICY)
        .unwrap_or_else(|e| panic!("writing {}: {e}", audited.display()));
    let audited = audited.to_str().unwrap_or_else(|| panic!("non UTF-8 path"));
    let (ok, diff, err) = cli(
        &["suggest", "--from", log, "--against", audited],
        &systemctl,
    );
    assert!(ok, "suggest --against failed: {err}");
    assert!(diff.starts_with(&format!("--- {audited}\n")), "{diff}");
    assert!(
        diff.contains(" uids = [4242]"),
        "the file's own entry stays: {diff}"
    );
    assert!(diff.contains("\n+    \"app.service\","), "{diff}");

    let file = sb.policy(&policy);
    let file = file.to_str().unwrap_or_else(|| panic!("non UTF-8 path"));
    let (ok, out, err) = cli(&["validate", "--config", file], &systemctl);
    assert!(ok, "the learned policy does not validate: {out}{err}");
    reload(&sb, &agent, &policy);

    // Enforcing what was learned: the callers seen get through...
    let root = sb.probe_as(0, 0).run(http());
    assert_eq!(root.assert_ok().body, sb.imds.credentials_body());
    sb.probe_as(APP_UID, APP_UID).run(http()).assert_ok();
    sb.probe_as(NOBODY, NOBODY)
        .cgroup_dir(app.path())
        .run(http())
        .assert_ok();
    // ...and no one else: nobody outside the unit, a uid never seen.
    let r = sb.probe_as(NOBODY, NOBODY).run(http());
    assert!(denied(&r), "nobody outside app.service: {r:?}");
    let r = sb.probe_as(OTHER_UID, OTHER_UID).run(http());
    assert!(denied(&r), "uid {OTHER_UID}, never seen: {r:?}");
    record_of(&agent, "deny", r.pid, LOG);

    // Who is allowed right now, from the kernel's maps: what was learned.
    let out = sb.cli(&["status", "--json", "--rules"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let rules = &status["rules"];
    assert_eq!(rules["mode"], "enforce", "{rules}");
    assert_eq!(rules["default"], "deny", "{rules}");
    let uids: Vec<(u64, &str)> = rules["uids"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["uid"].as_u64().unwrap_or(u64::MAX),
                r["action"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        uids,
        [(0, "allow_on_host"), (u64::from(APP_UID), "allow_on_host")],
        "{rules}"
    );
    let unit = format!("{}/app.service", cgroup_path(&sb.cgroup));
    let cgroups: Vec<(&str, &str)> = rules["cgroups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["path"].as_str().unwrap_or("?"),
                r["action"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(cgroups, [(unit.as_str(), "allow")], "{rules}");

    let (ok, json, err) = cli(&["report", "--from", log, "--json"], &systemctl);
    assert!(ok, "report failed: {err}");
    let report: Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("report printed {json:?}: {e}"));
    let rows = report["by_identity"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let app_row = rows
        .iter()
        .find(|r| r["identity"] == format!("uid {APP_UID}"))
        .unwrap_or_else(|| panic!("no row for uid {APP_UID}: {report}"));
    assert_eq!(app_row["audit"], u64::from(FLOOD), "{report}");
    assert_eq!(app_row["suppressed"], u64::from(FLOOD - 5), "{report}");
    assert_eq!(report["total"]["deny"], 0, "{report}");
    // Every audit the kernel counted is in the report, the suppressed ones
    // included (the log was taken before anything was enforced).
    agent.terminate();
    let last = agent
        .records()
        .into_iter()
        .rev()
        .find(|r| field(r, "audited").is_some())
        .unwrap_or_else(|| panic!("no final counters:\n{}", agent.output()));
    assert_eq!(
        Some(&report["total"]["audit"]),
        field(&last, "audited"),
        "{report}\n{last}"
    );
}
