//! Who the caller is, as the kernel knows it (issue 9), end to end: the
//! supplementary groups of its credentials, the creators of its user
//! namespaces, and whether it runs on the host. The real agent and
//! programs, probes in the sandbox's network namespace; each bypass is
//! first shown to work without the guard.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    process::{Command, Stdio},
};

use imds_guard_e2e::{
    Action, FakeImds, IMDS_PORT, IMDS_V4, LOG, Netns, PrivateEtc, Probe, ProbeResult, Sandbox,
    TestCgroup, UserNamespace, field, imds_guard_bin, privileged_or_skip, probe_bin,
};
use serde_json::Value;

const EPERM: i32 = libc::EPERM;

fn http() -> Action {
    Action::http(std::net::IpAddr::V4(IMDS_V4), IMDS_PORT)
}

/// The probe read the credentials.
fn assert_reads(sb: &Sandbox, r: &ProbeResult, what: &str) {
    assert!(r.ok, "{what}: expected the credentials, got {r:?}");
    assert_eq!(r.body, sb.imds.credentials_body(), "{what}");
}

/// The build of the programs the agent loads on this kernel (the unrolled
/// one where the kernel has no `bpf_loop`, or where `IMDS_GUARD_PROGRAMS`
/// asks for it), as the kernel's own BTF says.
fn expected_build() -> imds_guard::kernel::features::Build {
    use imds_guard::kernel::{btf::Btf, features::Build, offsets::kernel_release};
    let btf = Btf::from_sys_fs().unwrap_or_else(|e| panic!("the kernel's BTF: {e}"));
    Build::for_kernel(&btf, &kernel_release())
        .unwrap_or_else(|e| panic!("no build of the programs loads here: {e}"))
}

/// The probe was refused at connect.
fn assert_refused(r: &ProbeResult, what: &str) {
    assert!(
        !r.ok && r.errno == Some(EPERM),
        "{what}: expected EPERM, got {r:?}"
    );
}

/// The agent's first record with `event` for uid `uid` that `pred` accepts.
fn record(sb: &Sandbox, event: &str, uid: u32, pred: impl Fn(&Value) -> bool) -> Value {
    sb.agent()
        .wait_for(
            |rec| {
                field(rec, "event").and_then(Value::as_str) == Some(event)
                    && field(rec, "uid").and_then(Value::as_u64) == Some(u64::from(uid))
                    && pred(rec)
            },
            LOG,
        )
        .unwrap_or_else(|| {
            panic!(
                "no matching {event} record for uid {uid}; agent output:\n{}",
                sb.agent().output()
            )
        })
}

fn text<'a>(rec: &'a Value, name: &str) -> &'a str {
    field(rec, name).and_then(Value::as_str).unwrap_or("")
}

#[test]
fn a_supplementary_member_of_an_allowed_group_is_allowed() {
    if !privileged_or_skip("a_supplementary_member_of_an_allowed_group_is_allowed") {
        return;
    }
    let sb = Sandbox::with_agent("[allow]\ngids = [1500]\n");
    // Not a member: refused, so the allow below is the group's doing.
    assert_refused(&sb.probe_as(2000, 2000).run(http()), "uid 2000 alone");
    // `usermod -aG imds`: the group is supplementary, the primary its own.
    let member = sb
        .probe_as(2000, 2000)
        .groups(&[10, 1500, 2000])
        .run(http());
    assert_eq!(member.groups, [10, 1500, 2000], "the kernel's view");
    assert_reads(&sb, &member, "a supplementary member of gid 1500");
    // Allowed decisions are logged at debug level only: the deny record of
    // the non-member explains by the default, and names no group.
    let denied = record(&sb, "deny", 2000, |_| true);
    assert!(
        text(&denied, "reason").starts_with("neither uid 2000 nor gid 2000 is in [allow]"),
        "{denied}"
    );
    assert_eq!(text(&denied, "place"), "host", "{denied}");
    // `status` says what the kernel was told: the bound, that this policy
    // makes it read groups, the host's namespaces and the offsets.
    let (_, status) = sb.status();
    let identity = &status["identity"];
    let build = expected_build();
    assert_eq!(identity["programs"], build.name(), "{status}");
    assert_eq!(identity["max_groups"], build.bounds().groups, "{status}");
    assert_eq!(
        identity["max_userns_depth"],
        build.bounds().userns_depth,
        "{status}"
    );
    assert_eq!(identity["scans_groups"], true, "{status}");
    assert_eq!(identity["checks_userns_owners"], false, "{status}");
    let net = fs::metadata(sb.netns_path()).map(|m| m.ino());
    assert_eq!(
        identity["host_namespaces"]["net"].as_u64(),
        net.ok(),
        "the agent's network namespace is the sandbox's: {status}"
    );
    for member in [
        "cred.group_info",
        "user_namespace.owner",
        "sock.__sk_common.skc_net.net",
    ] {
        assert!(
            identity["offsets"][member].as_u64().is_some_and(|o| o > 0),
            "{member} in {status}"
        );
    }
}

#[test]
fn a_supplementary_member_of_a_denied_group_is_denied_also_after_sg() {
    if !privileged_or_skip("a_supplementary_member_of_a_denied_group_is_denied_also_after_sg") {
        return;
    }
    // Without the guard, the path works: a member of group 666 reads the
    // credentials.
    {
        let sb = Sandbox::new();
        let r = sb.probe_as(2000, 2000).groups(&[666]).run(http());
        assert_reads(&sb, &r, "no guard, member of gid 666");
    }
    let sb = Sandbox::with_agent("[allow]\nuids = [2000]\ngids = [1500]\n[deny]\ngids = [666]\n");
    assert_reads(
        &sb,
        &sb.probe_as(2000, 2000).groups(&[2000]).run(http()),
        "uid 2000, in no denied group",
    );
    let r = sb.probe_as(2000, 2000).groups(&[2000, 666]).run(http());
    assert_refused(&r, "uid 2000 holding gid 666 as a supplementary group");
    let rec = record(&sb, "deny", 2000, |rec| {
        field(rec, "group").and_then(Value::as_u64) == Some(666)
    });
    assert!(
        text(&rec, "reason").starts_with("supplementary group 666 is denied by [deny] gids 666"),
        "{rec}"
    );
    // `sg imds` (or `newgrp`): the primary gid becomes the allowed group
    // and the old groups stay supplementary, as newgrp leaves them. The
    // denied group still counts.
    let after_sg = sb
        .probe_as(3000, 1500)
        .groups(&[666, 3000, 1500])
        .run(http());
    assert_eq!(
        (after_sg.gid, after_sg.groups.clone()),
        (1500, vec![666, 1500, 3000])
    );
    assert_refused(&after_sg, "after sg to the allowed group");
    // And the allowed group alone, as primary, still allows.
    assert_reads(
        &sb,
        &sb.probe_as(3000, 1500).groups(&[3000]).run(http()),
        "primary gid 1500, no denied group",
    );
}

#[test]
fn more_supplementary_groups_than_the_guard_reads_are_refused_under_group_rules() {
    if !privileged_or_skip(
        "more_supplementary_groups_than_the_guard_reads_are_refused_under_group_rules",
    ) {
        return;
    }
    let sb = Sandbox::with_agent("[allow]\nuids = [2000]\n[deny]\ngids = [666]\n");
    // 64 with bpf_loop, 16 in the unrolled build (5.10 to 5.16).
    let max = expected_build().bounds().groups;
    let at_bound: Vec<u32> = (10_000..10_000 + max).collect();
    assert_reads(
        &sb,
        &sb.probe_as(2000, 2000).groups(&at_bound).run(http()),
        "exactly as many groups as the bound",
    );
    let over: Vec<u32> = (10_000..10_000 + max + 1).collect();
    assert_refused(
        &sb.probe_as(2000, 2000).groups(&over).run(http()),
        "one group past the bound",
    );
    let rec = record(&sb, "deny", 2000, |_| true);
    assert!(
        text(&rec, "reason").contains(&format!("holds {} supplementary groups", max + 1)),
        "{rec}"
    );
}

#[test]
fn a_caller_nested_deeper_than_the_guard_reads_is_refused_under_deny_rules() {
    if !privileged_or_skip(
        "a_caller_nested_deeper_than_the_guard_reads_is_refused_under_deny_rules",
    ) {
        return;
    }
    // A deny rule makes the programs check every creator up the chain.
    let sb = Sandbox::with_agent("[allow]\nuids = [2000]\n[deny]\nuids = [4321]\n");
    let nested = |depth: u32| {
        let owners = vec![(2000, 2000); depth as usize];
        let nest = UserNamespace::nested(&sb.cgroup, &owners);
        let inner = nest.last().expect("one namespace at least");
        sb.probe_as(2000, 2000).userns(inner.path()).run(http())
    };
    // 33 (the kernel's own limit) with bpf_loop, 8 in the unrolled build.
    let depth = expected_build().bounds().userns_depth;
    assert_reads(&sb, &nested(depth), "nested as deep as the guard reads");
    if depth >= imds_guard_common::MAX_USERNS_DEPTH {
        return;
    }
    assert_refused(&nested(depth + 1), "one user namespace deeper");
    let rec = record(&sb, "deny", 2000, |_| true);
    assert!(
        text(&rec, "reason").starts_with(
            "the guard could not read the caller's groups or user \
             namespaces"
        ),
        "{rec}"
    );
}

/// Runs `probe` doing `action` in a new pid namespace (`unshare --pid
/// --fork`): the probe is pid 1 there, so its result names that pid.
fn run_in_new_pid_ns(probe: &Probe, action: Action) -> ProbeResult {
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child", "--"])
        .arg(probe_bin())
        .args(probe.args(&action))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running unshare: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe in a new pid namespace failed as a harness ({}): {}{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("probe printed {stdout:?}: {e}"))
}

#[test]
fn root_in_a_container_is_denied_by_root_on_the_host_only_while_host_root_is_allowed() {
    if !privileged_or_skip(
        "root_in_a_container_is_denied_by_root_on_the_host_only_while_host_root_is_allowed",
    ) {
        return;
    }
    // A second network namespace with its own metadata service: a
    // container's, in the guarded cgroup.
    let other = Netns::new();
    let other_imds = FakeImds::start(&other);
    let container_probe = |sb: &Sandbox| Probe::at(other.path(), sb.cgroup.path()).uid(0).gid(0);
    // Without the host-only limit (today's `[allow] uids = [0]`), root in a
    // new pid namespace and root in another network namespace both read
    // the credentials.
    {
        let sb = Sandbox::with_agent("[allow]\nuids = [0]\n");
        let r = run_in_new_pid_ns(&sb.probe_as(0, 0), http());
        assert_eq!(r.pid, 1, "the probe is pid 1 of its own namespace");
        assert_reads(&sb, &r, "[allow] root in a new pid namespace");
        let r = container_probe(&sb).run(http());
        assert!(r.ok, "[allow] root in another network namespace: {r:?}");
        assert_eq!(r.body, other_imds.credentials_body());
    }
    let sb = Sandbox::with_agent("[allow.host]\nuids = [0]\n");
    // Host root: the agent's pid, network and user namespaces.
    assert_reads(&sb, &sb.probe_as(0, 0).run(http()), "root on the host");
    let r = run_in_new_pid_ns(&sb.probe_as(0, 0), http());
    assert_refused(&r, "root in a new pid namespace");
    let rec = record(&sb, "deny", 0, |rec| {
        text(rec, "reason").contains("pid namespace")
    });
    assert_eq!(text(&rec, "place"), "container", "{rec}");
    assert!(
        text(&rec, "reason")
            .starts_with("uid 0 is allowed on the host only by [allow.host] uids 0"),
        "{rec}"
    );
    let r = container_probe(&sb).run(http());
    assert_refused(&r, "root in another network namespace");
    let rec = record(&sb, "deny", 0, |rec| {
        text(rec, "reason").contains("network namespace")
    });
    assert_eq!(text(&rec, "place"), "container", "{rec}");
    // Both at once, the usual container: still refused.
    let r = run_in_new_pid_ns(&container_probe(&sb), http());
    assert_refused(&r, "root in new pid and network namespaces");
    // The host's root still reads after all that.
    assert_reads(
        &sb,
        &sb.probe_as(0, 0).run(http()),
        "root on the host, again",
    );
}

/// Where a rootless user's containers run, outside: what `/etc/subuid`
/// gives them.
const SUBID_BASE: u32 = 100_000;

/// A user namespace `owner` created, its ids mapped to theirs from
/// [`SUBID_BASE`].
fn subid_namespace(owner: u32, cgroup: &TestCgroup) -> UserNamespace {
    UserNamespace::spawn(cgroup, owner, SUBID_BASE, false)
}

#[test]
fn a_user_with_subordinate_ids_is_denied_by_a_deny_on_that_user() {
    if !privileged_or_skip("a_user_with_subordinate_ids_is_denied_by_a_deny_on_that_user") {
        return;
    }
    const OWNER: u32 = 1234;
    let rootless = |sb: &Sandbox, ns: &UserNamespace| sb.probe().userns(ns.path()).uid(0).gid(0);
    // A deny on another user: the path works, and the process is uid
    // 100000 as the kernel sees it.
    {
        let sb = Sandbox::with_agent("[deny]\nuids = [4321]\n");
        let ns = subid_namespace(OWNER, &sb.cgroup);
        let r = rootless(&sb, &ns).run(http());
        assert_reads(&sb, &r, "rootless root, its creator not denied");
    }
    let sb = Sandbox::with_agent("[deny]\nuids = [1234]\n");
    let ns = subid_namespace(OWNER, &sb.cgroup);
    let r = rootless(&sb, &ns).run(http());
    assert_refused(&r, "root of a namespace created by the denied user");
    let rec = record(&sb, "deny", SUBID_BASE, |_| true);
    assert_eq!(
        field(&rec, "owner").and_then(Value::as_u64),
        Some(u64::from(OWNER)),
        "{rec}"
    );
    assert!(
        text(&rec, "reason").starts_with(
            "uid 100000 runs in a user namespace created by uid 1234, which is denied by [deny] \
             uids 1234"
        ),
        "{rec}"
    );
    // Any id inside, not only root.
    assert_refused(
        &rootless(&sb, &ns).uid(1000).gid(1000).run(http()),
        "uid 1000 inside (101000 outside)",
    );
    // uid 100000 outside any user namespace is someone else: allowed.
    assert_reads(
        &sb,
        &sb.probe_as(SUBID_BASE, SUBID_BASE).run(http()),
        "uid 100000 on the host",
    );
}

/// The user of the newgidmap test, made in a private /etc: its uid (and
/// its own group's gid), the group the policy denies, of which it is a
/// member, and its subordinate ids.
const NS_USER: &str = "imds-nsuser";
const NS_UID: u32 = 2345;
const DENIED_GROUP: &str = "imds-denied";
const DENIED_GID: u32 = 2666;
const NS_SUBIDS: u32 = 300_000;
const NS_SUBID_COUNT: u32 = 65_536;

#[test]
fn a_member_of_a_denied_group_cannot_shed_it_in_a_user_namespace_of_its_own() {
    if !privileged_or_skip(
        "a_member_of_a_denied_group_cannot_shed_it_in_a_user_namespace_of_its_own",
    ) {
        return;
    }
    // The user, its membership and its ranges exist in a private /etc
    // only: the agent, `validate` and newuidmap, started from the test's
    // thread, read them there.
    PrivateEtc::run(|etc| {
        etc.add_user(NS_USER, NS_UID);
        etc.add_group(DENIED_GROUP, DENIED_GID, &[NS_USER]);
        etc.add_subordinate_ids(NS_USER, NS_SUBIDS, NS_SUBID_COUNT);
        newgidmap_escape_is_refused();
    });
}

/// A namespace of the user's own, as its login session makes it with
/// newuidmap and newgidmap: the user holds the denied group outside.
fn users_namespace(sb: &Sandbox) -> UserNamespace {
    UserNamespace::by_newuidmap(
        &sb.cgroup,
        (NS_UID, NS_UID),
        &[NS_UID, DENIED_GID],
        NS_SUBIDS,
        NS_SUBID_COUNT,
    )
}

/// Inside: root of the namespace (the user outside), every group dropped
/// with setgroups, the primary gid a subordinate one (1 inside).
fn shed(sb: &Sandbox, ns: &UserNamespace) -> Probe {
    sb.probe().userns(ns.path()).uid(0).gid(1).groups(&[])
}

fn newgidmap_escape_is_refused() {
    // Without the group deny, the steps work: the group is gone inside,
    // and the credentials are read.
    {
        let sb = Sandbox::with_agent(&format!("[allow]\nusers = [\"{NS_USER}\"]\n"));
        let ns = users_namespace(&sb);
        let r = shed(&sb, &ns).run(http());
        assert_eq!((r.uid, r.gid, r.groups.clone()), (0, 1, vec![]), "{r:?}");
        assert_reads(&sb, &r, "no group deny: the member in its namespace");
    }
    let policy =
        format!("[allow]\nusers = [\"{NS_USER}\"]\n[deny]\ngroups = [\"{DENIED_GROUP}\"]\n");
    let sb = Sandbox::with_agent(&policy);
    // The deny is in force: holding the group, the user is refused.
    assert_refused(
        &sb.probe_as(NS_UID, NS_UID)
            .groups(&[NS_UID, DENIED_GID])
            .run(http()),
        "the member holding the group on the host",
    );
    let ns = users_namespace(&sb);
    let r = shed(&sb, &ns).run(http());
    assert_eq!((r.uid, r.gid, r.groups.clone()), (0, 1, vec![]), "{r:?}");
    assert_refused(&r, "the member in its namespace, the group dropped");
    let rec = record(&sb, "deny", NS_UID, |rec| {
        text(rec, "reason").contains("user namespace")
    });
    assert_eq!(
        field(&rec, "gid").and_then(Value::as_u64),
        Some(u64::from(NS_SUBIDS)),
        "the primary gid is a subordinate one: {rec}"
    );
    for (name, id) in [
        ("group", DENIED_GID),
        ("owner", NS_UID),
        ("userns_owner", NS_UID),
    ] {
        assert_eq!(
            field(&rec, name).and_then(Value::as_u64),
            Some(u64::from(id)),
            "{name}: {rec}"
        );
    }
    assert!(
        text(&rec, "reason").starts_with(&format!(
            "uid {NS_UID} runs in a user namespace created by uid {NS_UID}, who is a member of \
             group {DENIED_GID} in the group database"
        )),
        "{rec}"
    );
    // A subordinate uid too (1000 inside): the namespace is still the
    // member's.
    assert_refused(
        &shed(&sb, &ns).uid(1000).run(http()),
        "a subordinate uid in the member's namespace",
    );
    // The policy allows by uid a member of a group it denies: `validate`
    // says so, with the line, and the agent logged the same.
    let config = sb.policy_path();
    let out = Command::new(imds_guard_bin())
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .unwrap_or_else(|e| panic!("running validate: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let warning = format!(
        "{}:2:10: warning: [allow] users \"{NS_USER}\" allows uid {NS_UID}, which is a member of \
         gid {DENIED_GID}",
        config.display()
    );
    assert!(stderr.contains(&warning), "{stderr}");
    let logged = sb.agent().wait_for(
        |rec| {
            field(rec, "event").and_then(Value::as_str) == Some("policy_warning")
                && field(rec, "line").and_then(Value::as_u64) == Some(2)
        },
        LOG,
    );
    assert!(logged.is_some(), "{}", sb.agent().output());
}

/// The port of the emulator below: none of the fake IMDS's.
const EMULATOR_PORT: u16 = 10_080;

#[test]
fn a_local_imds_emulator_is_not_said_to_run_in_a_container() {
    if !privileged_or_skip("a_local_imds_emulator_is_not_said_to_run_in_a_container") {
        return;
    }
    // Root on the host only, and an emulator run by root on the host,
    // listening on the metadata address, which is local here: its client
    // connects from that address too, so the emulator's replies go to a
    // protected address, sent by the kernel while the client runs.
    let sb = Sandbox::with_agent("[allow.host]\nuids = [0]\n");
    let at = std::net::SocketAddr::new(IMDS_V4.into(), EMULATOR_PORT);
    let emulator = sb.probe_as(0, 0).serve(at);
    let client = sb
        .probe_as(0, 0)
        .run(Action::connect(IMDS_V4, EMULATOR_PORT));
    // The guard cannot tell the replies' sender is on the host: it
    // refuses them (fail closed), and says so, not that it runs in a
    // container.
    assert!(!client.ok, "{client:?}");
    let reply = record(&sb, "deny", 0, |rec| {
        text(rec, "hook") == "egress"
            && field(rec, "port").and_then(Value::as_u64) != Some(u64::from(EMULATOR_PORT))
    });
    let reason = text(&reply, "reason");
    assert_eq!(text(&reply, "place"), "unknown", "{reply}");
    assert!(!reason.contains("container"), "{reason}");
    assert!(
        reason.contains("the guard cannot tell that this process is on the host")
            && reason.contains("another task than the socket's owner")
            && reason.contains("allow its unit or cgroup in [allow]"),
        "{reason}"
    );
    drop(emulator);
    // What the record advises: the emulator's cgroup in [allow] lets its
    // replies through, and root on the host connects to it.
    let cgroup = sb.cgroup.child("emulator");
    let emulator = sb.probe_as(0, 0).cgroup_dir(cgroup.path()).serve(at);
    let relative = cgroup
        .path()
        .strip_prefix(imds_guard_e2e::cgroup2_root())
        .unwrap_or_else(|e| panic!("{}: {e}", cgroup.path().display()));
    sb.policy(&format!(
        "[allow.host]\nuids = [0]\n[allow]\ncgroups = [\"/{}/**\"]\n",
        relative.display()
    ));
    sb.agent().sighup();
    sb.agent()
        .wait_for(
            |rec| text(rec, "event") == "reload" && text(rec, "outcome") == "applied",
            LOG,
        )
        .unwrap_or_else(|| panic!("no reload: {}", sb.agent().output()));
    sb.probe_as(0, 0)
        .run(Action::connect(IMDS_V4, EMULATOR_PORT))
        .assert_ok();
    drop(emulator);
    drop(cgroup);
}
