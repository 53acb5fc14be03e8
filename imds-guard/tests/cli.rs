//! The command line as an operator meets it (no privileges needed):
//! `validate` exit codes and messages, and `run` refusing a bad policy
//! before it touches the kernel.

#![expect(
    clippy::expect_used,
    reason = "test helpers panic with a message, like the tests"
)]

use std::{
    fs,
    path::PathBuf,
    process::{Command, Output},
};

fn imds_guard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imds-guard"))
        .args(args)
        .output()
        .expect("run imds-guard")
}

fn policy_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("imds-guard-cli-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    fs::write(&path, text).expect("write policy");
    path
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn validate_accepts_the_shipped_policy() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/imds-guard.toml");
    let out = imds_guard(&["validate", "--config", shipped]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("valid"), "{stdout}");
}

#[test]
fn validate_reports_every_problem_with_its_position_and_exits_1() {
    let path = policy_file(
        "bad.toml",
        "mode = \"enforcing\"\n[endpoints]\naddresses = [\"169.254.169.254/32\"]\n[allow]\nuids = [1001]\n",
    );
    let out = imds_guard(&[
        "validate",
        "--offline",
        "--config",
        path.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let p = path.display();
    assert!(
        err.contains(&format!("{p}:1:8: mode: expected \"enforce\" or \"audit\"")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{p}:3:14: [endpoints] addresses:")),
        "{err}"
    );
    assert!(err.contains("CIDR"), "{err}");
}

#[test]
fn validate_offline_does_not_resolve_names() {
    let path = policy_file(
        "names.toml",
        "[allow]\nusers = [\"no-such-user-imds-cli\"]\n",
    );
    let p = path.to_str().expect("utf-8");
    let offline = imds_guard(&["validate", "--offline", "--config", p]);
    assert_eq!(offline.status.code(), Some(0), "{}", stderr(&offline));
    let online = imds_guard(&["validate", "--config", p]);
    assert_eq!(online.status.code(), Some(1));
    assert!(
        stderr(&online).contains(&format!(
            "{}:2:10: user \"no-such-user-imds-cli\" does not exist on this host",
            path.display()
        )),
        "{}",
        stderr(&online)
    );
}

#[test]
fn a_missing_policy_file_is_an_error_that_names_it() {
    let out = imds_guard(&["validate", "--config", "/nonexistent/imds-guard.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent/imds-guard.toml: cannot read the policy file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_refuses_a_bad_policy_before_touching_the_kernel() {
    // As any user: the policy is checked before anything is loaded, so the
    // answer is the same with or without privileges, and exit code 1.
    let path = policy_file("run.toml", "[allow]\nuids = [-1]\n");
    let out = imds_guard(&[
        "run",
        "--config",
        path.to_str().expect("utf-8"),
        "--cgroup",
        "/nonexistent",
        "--fallback",
        "none",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{}:2:9:", path.display())),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("nothing was attached"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_with_the_fallback_that_cannot_attach_exits_with_the_policy_error() {
    // The fallback (built in) is tried, but the cgroup does not exist:
    // the policy's error is the one to exit with, and nothing is left.
    let path = policy_file("fallback.toml", "[allow]\nuids = [-1]\n");
    let pin_dir = std::env::temp_dir().join(format!("imds-guard-cli-pins-{}", std::process::id()));
    let out = imds_guard(&[
        "run",
        "--config",
        path.to_str().expect("utf-8"),
        "--cgroup",
        "/nonexistent",
        "--pin-dir",
        pin_dir.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{}:2:9:", path.display())),
        "{}",
        stderr(&out)
    );
    assert!(
        !pin_dir.exists(),
        "a start that failed left {}",
        pin_dir.display()
    );
}

#[test]
fn bad_command_lines_exit_2() {
    assert_eq!(
        imds_guard(&["run", "--log-format", "xml"]).status.code(),
        Some(2)
    );
    assert_eq!(imds_guard(&["frobnicate"]).status.code(), Some(2));
}

#[test]
fn check_gives_the_verdict_and_the_rule_without_the_kernel() {
    let path = policy_file(
        "check.toml",
        "[allow]\nusers = [\"root\"]\ngids = [1500]\n[deny]\nuids = [4242]\n",
    );
    let p = path.to_str().expect("utf-8");
    let run = |args: &[&str]| {
        let mut all = vec!["check", "--config", p];
        all.extend_from_slice(args);
        imds_guard(&all)
    };
    let stdout = |o: &Output| String::from_utf8_lossy(&o.stdout).into_owned();

    let root = run(&["--user", "root", "--dst", "169.254.169.254"]);
    assert_eq!(root.status.code(), Some(0), "{}", stderr(&root));
    assert!(
        stdout(&root).starts_with(
            "allowed: uid 0 gid 0 groups 0 (a login session's) on the host to 169.254.169.254: \
             uid 0 is allowed by [allow] users \"root\""
        ),
        "{}",
        stdout(&root)
    );

    let other = run(&["--uid", "1000", "--gid", "1000", "--dst", "fd00:ec2::254"]);
    assert_eq!(other.status.code(), Some(4));
    assert!(
        stdout(&other).contains("denied: uid 1000 gid 1000"),
        "{}",
        stdout(&other)
    );
    assert!(
        stdout(&other).contains("neither uid 1000 nor gid 1000 is in [allow]"),
        "{}",
        stdout(&other)
    );

    // Deny wins over an allowed gid, and the rule is cited with its place.
    let denied = run(&[
        "--uid",
        "4242",
        "--gid",
        "1500",
        "--dst",
        "::ffff:169.254.169.254",
        "--json",
    ]);
    assert_eq!(denied.status.code(), Some(4));
    let json: serde_json::Value = serde_json::from_slice(&denied.stdout).expect("json");
    assert_eq!(json["verdict"], "deny");
    assert_eq!(json["protected"], true, "the mapped form is protected");
    assert_eq!(
        json["reason"],
        format!(
            "uid 4242 is denied by [deny] uids 4242 at {}:5:9",
            path.display()
        )
    );

    // A supplementary group counts, named or numbered, and is named back.
    let member = run(&[
        "--uid",
        "1000",
        "--gid",
        "1000",
        "--groups",
        "10,1500",
        "--dst",
        "169.254.169.254",
    ]);
    assert_eq!(member.status.code(), Some(0), "{}", stdout(&member));
    assert!(
        stdout(&member).contains(
            "allowed: uid 1000 gid 1000 groups 10,1500 on the host to 169.254.169.254: \
             supplementary group 1500 is allowed by [allow] gids 1500"
        ),
        "{}",
        stdout(&member)
    );

    // Root in a container, under root on the host only.
    let host_only = policy_file("host.toml", "[allow.host]\nuids = [0]\n");
    let host_only = host_only.to_str().expect("utf-8");
    let in_container = imds_guard(&[
        "check",
        "--config",
        host_only,
        "--uid",
        "0",
        "--gid",
        "0",
        "--container",
        "--dst",
        "169.254.169.254",
        "--json",
    ]);
    assert_eq!(
        in_container.status.code(),
        Some(4),
        "{}",
        stdout(&in_container)
    );
    let json: serde_json::Value = serde_json::from_slice(&in_container.stdout).expect("json");
    assert_eq!(json["place"], "container");
    assert!(
        json["reason"].as_str().is_some_and(|r| r
            .starts_with("uid 0 is allowed on the host only by [allow.host] uids 0")
            && r.contains("runs in a container")),
        "{json}"
    );
    let on_host = imds_guard(&[
        "check",
        "--config",
        host_only,
        "--uid",
        "0",
        "--gid",
        "0",
        "--dst",
        "169.254.169.254",
    ]);
    assert_eq!(on_host.status.code(), Some(0), "{}", stdout(&on_host));

    // A destination that is not protected is allowed for everyone.
    let elsewhere = run(&["--uid", "4242", "--gid", "4242", "--dst", "192.0.2.1"]);
    assert_eq!(elsewhere.status.code(), Some(0));
    assert!(stdout(&elsewhere).contains("192.0.2.1 is not a protected address"));

    // Without --dst: the protected endpoints, named; groups by name.
    let endpoints = run(&["--user", "root", "--groups", "root,7"]);
    assert_eq!(endpoints.status.code(), Some(0), "{}", stderr(&endpoints));
    assert!(
        stdout(&endpoints).starts_with(
            "allowed: uid 0 gid 0 groups 0,7 on the host to the protected endpoints \
             (169.254.169.254, fd00:ec2::254):"
        ),
        "{}",
        stdout(&endpoints)
    );
    let no_group = run(&["--user", "root", "--groups", "no-such-group-imds-cli"]);
    assert_eq!(no_group.status.code(), Some(2), "{}", stderr(&no_group));

    // Without a passwd entry the primary gid must be given: a usage error.
    let unknown = run(&["--uid", "54321", "--dst", "169.254.169.254"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("--gid"), "{}", stderr(&unknown));

    // A user that does not exist is a usage error too, and says so.
    let nobody = run(&[
        "--user",
        "no-such-user-imds-cli",
        "--dst",
        "169.254.169.254",
    ]);
    assert_eq!(nobody.status.code(), Some(2));
    assert!(
        stderr(&nobody).contains("user \"no-such-user-imds-cli\" does not exist on this host"),
        "{}",
        stderr(&nobody)
    );
}

#[test]
fn status_without_a_guard_says_so_and_exits_5() {
    let out = imds_guard(&["status", "--pin-dir", "/nonexistent/imds-guard"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not attached"));
}

#[test]
fn render_takes_iptables_and_ip6tables_together_and_no_other_pair() {
    let policy = policy_file("both-families.toml", "[allow]\nusers = [\"root\"]\n");
    let policy = policy.to_str().expect("utf-8 path");
    // Both default endpoints: each tool alone warns about the other's
    // address, and fails --strict for it.
    let alone = imds_guard(&["render", "--config", policy, "--iptables", "--strict"]);
    assert_eq!(alone.status.code(), Some(4), "{}", stderr(&alone));
    assert!(stderr(&alone).contains("render --ip6tables as well"));
    let both = imds_guard(&[
        "render",
        "--config",
        policy,
        "--iptables",
        "--ip6tables",
        "--strict",
    ]);
    assert_eq!(both.status.code(), Some(0), "{}", stderr(&both));
    let text = String::from_utf8_lossy(&both.stdout);
    assert!(text.contains("iptables --insert OUTPUT 1 "), "{text}");
    assert!(text.contains("ip6tables --insert OUTPUT 1 "), "{text}");
    // A restore file holds one family: two in one stream half-load.
    let file = imds_guard(&[
        "render",
        "--config",
        policy,
        "--iptables",
        "--ip6tables",
        "--format",
        "file",
    ]);
    assert_eq!(file.status.code(), Some(2), "{}", stderr(&file));
    assert!(
        file.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&file.stdout)
    );
    assert!(
        stderr(&file).contains("imds-guard render --ip6tables --format file > imds-guard.v6"),
        "{}",
        stderr(&file)
    );
    for pair in [["--iptables", "--nftables"], ["--pf", "--ipfw"]] {
        let out = imds_guard(&["render", "--config", policy, pair[0], pair[1]]);
        assert_eq!(out.status.code(), Some(2), "{pair:?}: {}", stderr(&out));
    }
}

#[test]
fn validate_notes_an_ipv6_endpoint_left_out() {
    let policy = policy_file(
        "v4-only.toml",
        "[endpoints]\naddresses = [\"169.254.169.254\"]\n[allow]\nuids = [0]\n",
    );
    let out = imds_guard(&[
        "validate",
        "--offline",
        "--config",
        policy.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("note: fd00:ec2::254 is not protected"),
        "{stdout}"
    );
}

#[test]
fn validate_warns_of_a_policy_that_means_something_else_and_strict_refuses_it() {
    // Root of every container is gid 0; a child cgroup escapes a deny of
    // its parent alone. Both valid, both warned of, each at its line.
    let policy = policy_file(
        "foot-guns.toml",
        "[allow.host]\nusers = [\"root\"]\n[allow]\ngroups = [\"root\"]\n[deny]\ncgroups = \
         [\"/user.slice/user-1000.slice\"]\n",
    );
    let p = policy.to_str().expect("utf-8");
    let out = imds_guard(&["validate", "--config", p]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{p}:4:11: warning: [allow] groups \"root\" lets in from anywhere what [allow.host] \
             users \"root\" at line 2, column 10 keeps to the host"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{p}:6:12: warning: [deny] cgroups \"/user.slice/user-1000.slice\" names that one \
             cgroup"
        )),
        "{err}"
    );
    assert!(err.contains("\"/user.slice/user-1000.slice/**\""), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("valid"),
        "a warning is no refusal"
    );
    // Offline, what needs no user database.
    let offline = imds_guard(&["validate", "--offline", "--config", p]);
    assert_eq!(offline.status.code(), Some(0), "{}", stderr(&offline));
    assert!(stderr(&offline).contains(&format!("{p}:6:12: warning: ")));
    // --strict refuses it, as an invalid policy.
    let strict = imds_guard(&["validate", "--strict", "--config", p]);
    assert_eq!(strict.status.code(), Some(1), "{}", stderr(&strict));
    let err = stderr(&strict);
    assert!(
        err.contains(&format!(
            "{p}:4:11: refused by --strict: [allow] groups \"root\""
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{p}:6:12: refused by --strict: [deny] cgroups")),
        "{err}"
    );
    // A policy without warnings passes --strict.
    let clean = policy_file("clean.toml", "[allow.host]\nusers = [\"root\"]\n");
    let out = imds_guard(&[
        "validate",
        "--strict",
        "--config",
        clean.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}

#[test]
fn check_places_the_process_by_unit_or_cgroup_and_names_the_rule() {
    // A systemctl that knows one unit, so that the result does not depend
    // on the units of the machine running the test.
    let systemctl = policy_file(
        "systemctl",
        "#!/bin/sh\ncase \"$4\" in\n  evil.service) printf \
         'LoadState=loaded\\nControlGroup=\\nSlice=system.slice\\n' ;;\n  *) printf \
         'LoadState=not-found\\nControlGroup=\\nSlice=\\n' ;;\nesac\n",
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&systemctl, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let path = policy_file(
        "cgroups.toml",
        "[allow]\nuids = [0]\ncgroups = [\"/system.slice/docker-*.scope\"]\n[deny]\nunits = \
         [\"evil.service\"]\n",
    );
    let p = path.to_str().expect("utf-8");
    let check = |args: &[&str]| {
        let mut all = vec!["check", "--config", p, "--dst", "169.254.169.254"];
        all.extend_from_slice(args);
        Command::new(env!("CARGO_BIN_EXE_imds-guard"))
            .args(&all)
            .env("IMDS_GUARD_SYSTEMCTL", &systemctl)
            .output()
            .expect("run imds-guard")
    };
    let stdout = |o: &Output| String::from_utf8_lossy(&o.stdout).into_owned();

    let docker = check(&[
        "--uid",
        "65534",
        "--cgroup",
        "/system.slice/docker-1a2b.scope",
    ]);
    assert_eq!(docker.status.code(), Some(0), "{}", stderr(&docker));
    let text = stdout(&docker);
    assert!(text.starts_with("allowed:"), "{text}");
    assert!(
        text.contains("in cgroup /system.slice/docker-1a2b.scope"),
        "{text}"
    );
    assert!(
        text.contains("[allow] cgroups \"/system.slice/docker-*.scope\""),
        "{text}"
    );

    // Root is allowed by uid, but not in the denied unit (a stopped unit
    // is placed below its slice).
    let evil = check(&["--uid", "0", "--unit", "evil.service"]);
    assert_eq!(evil.status.code(), Some(4), "{}", stderr(&evil));
    let text = stdout(&evil);
    assert!(
        text.contains("in cgroup /system.slice/evil.service"),
        "{text}"
    );
    assert!(text.contains("[deny] units \"evil.service\""), "{text}");

    let unknown = check(&["--uid", "0", "--unit", "nope.service"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("does not exist"),
        "{}",
        stderr(&unknown)
    );
    let relative = check(&["--uid", "0", "--cgroup", "system.slice"]);
    assert_eq!(relative.status.code(), Some(2));
    assert!(
        stderr(&relative).contains("starts with /"),
        "{}",
        stderr(&relative)
    );
}

#[test]
fn check_names_the_pod_a_pattern_matched_and_the_rule_as_written() {
    let path = policy_file(
        "pods.toml",
        "[allow]\npods = [\"kube-system/aws-node-*\"]\n",
    );
    let kubelet = path.with_file_name("pods");
    for entry in [
        "kube-system_aws-node-7xk2p_0001",
        "default_aws-node-7xk2p_0002",
    ] {
        fs::create_dir_all(kubelet.join(entry)).expect("mkdir");
    }
    let (p, dir) = (
        path.to_str().expect("utf-8"),
        kubelet.to_str().expect("utf-8"),
    );
    let check = |uid: &str| {
        imds_guard(&[
            "check",
            "--config",
            p,
            "--uid",
            "65534",
            "--gid",
            "65534",
            "--kubelet-pods-dir",
            dir,
            "--cgroup",
            &format!("/kubepods/besteffort/pod{uid}/0123abc"),
        ])
    };
    let ours = check("0001");
    let text = String::from_utf8_lossy(&ours.stdout);
    assert_eq!(ours.status.code(), Some(0), "{text}{}", stderr(&ours));
    assert!(text.contains("(pod kube-system/aws-node-7xk2p)"), "{text}");
    assert!(
        text.contains("allowed by [allow] pods \"kube-system/aws-node-*\""),
        "{text}"
    );
    // The same name in another namespace.
    let theirs = check("0002");
    let text = String::from_utf8_lossy(&theirs.stdout);
    assert_eq!(theirs.status.code(), Some(4), "{text}{}", stderr(&theirs));
    assert!(text.contains("(pod default/aws-node-7xk2p)"), "{text}");
}

/// `imds-guard ARGS` with stdout a pipe whose reader is gone, as after
/// `| head -c 10`: the read end is closed before the command starts, so
/// its first write meets a closed pipe whatever the timing.
fn into_closed_pipe(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_imds-guard"))
        .args(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run imds-guard")
}

#[test]
fn a_closed_pipe_ends_every_command_quietly_with_exit_0() {
    let policy = policy_file("pipe.toml", "[allow]\nuids = [0]\n");
    let policy = policy.to_str().expect("utf-8 path");
    for args in [
        &["status", "--json", "--pin-dir", "/nonexistent/imds-guard"][..],
        &["status", "--pin-dir", "/nonexistent/imds-guard"],
        &["render", "--config", policy, "--iptables", "--ip6tables"],
        &[
            "render",
            "--config",
            policy,
            "--nftables",
            "--format",
            "file",
        ],
        &["validate", "--offline", "--config", policy],
        &["check", "--config", policy, "--uid", "0"],
    ] {
        let out = into_closed_pipe(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?} said: {err}");
    }
}

#[test]
fn validate_notes_an_allow_unit_this_host_lacks_as_the_agent_leaves_it_out() {
    // A fleet's policy: a unit of another distribution's agent. (A .socket:
    // without a running systemd only services and slices have a known
    // cgroup, so this one is unknown with systemd or without.)
    let path = policy_file(
        "fleet.toml",
        "[allow]\nuids = [0]\nunits = [\"no-such-unit-imds-cli.socket\"]\n",
    );
    let out = imds_guard(&["validate", "--config", path.to_str().expect("utf-8")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", stderr(&out));
    assert!(
        stdout.contains(&format!(
            "{}:3:10: note: unit \"no-such-unit-imds-cli.socket\"",
            path.display()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("the agent leaves it out"), "{stdout}");
    assert!(stdout.contains("valid (2 entries"), "{stdout}");
}

#[test]
fn check_takes_a_port_and_a_protocol_for_endpoints_with_ports() {
    let path = policy_file(
        "check-ports.toml",
        "[endpoints]\naddresses = [\"169.254.169.254\", \"169.254.170.2:80/tcp\", \
         \"[fd00:ec2::23]:80\"]\n[allow]\nuids = [0]\n",
    );
    let p = path.to_str().expect("utf-8");
    let run = |dst: &str| {
        let out = imds_guard(&["check", "--config", p, "--uid", "1000", "--dst", dst]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // The protected port, TCP by default: denied.
    for dst in [
        "169.254.170.2:80",
        "169.254.170.2:80/tcp",
        "[fd00:ec2::23]:80/udp",
        "169.254.169.254:53/udp",
        // Without a port: what the address protects.
        "169.254.170.2",
    ] {
        let (code, out) = run(dst);
        assert_eq!(code, Some(4), "{dst}: {out}");
        assert!(out.starts_with("denied: uid 1000"), "{dst}: {out}");
    }
    // A neighbouring port or protocol: allowed, and why.
    let (code, out) = run("169.254.170.2:53/udp");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(
            "169.254.170.2:53/udp is not a protected port (the policy protects \
             169.254.170.2:80/tcp)"
        ),
        "{out}"
    );
    let (code, out) = run("169.254.170.2:80/udp");
    assert_eq!(code, Some(0), "{out}");
    // A malformed destination is a usage error.
    let bad = imds_guard(&[
        "check",
        "--config",
        p,
        "--uid",
        "1000",
        "--dst",
        "169.254.170.2:x",
    ]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}

#[test]
fn check_opens_a_workload_endpoint_to_containers_and_judges_the_host() {
    let path = policy_file(
        "check-workload.toml",
        "[endpoints]\npresets = [\"aws-ec2\", \"aws-ecs\"]\n[allow]\nuids = [0]\n\
         [deny]\nuids = [3003]\n",
    );
    let p = path.to_str().expect("utf-8");
    let run = |args: &[&str]| {
        let mut all = vec!["check", "--config", p];
        all.extend_from_slice(args);
        let out = imds_guard(&all);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // A container at ECS's task credentials: allowed, and why.
    let (code, out) = run(&[
        "--uid",
        "1000",
        "--gid",
        "1000",
        "--container",
        "--dst",
        "169.254.170.2:80",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("workload endpoint"), "{out}");
    // The same container at the metadata service, a host caller at the
    // workload endpoint, and a denied uid in a container: denied.
    for args in [
        &[
            "--uid",
            "1000",
            "--container",
            "--dst",
            "169.254.169.254:80",
        ][..],
        &["--uid", "1000", "--dst", "169.254.170.2:80"][..],
        &[
            "--uid",
            "3003",
            "--gid",
            "3003",
            "--container",
            "--dst",
            "169.254.170.2:80",
        ][..],
    ] {
        let (code, out) = run(args);
        assert_eq!(code, Some(4), "{args:?}: {out}");
    }
}

const REQUEST_POLICY: &str = "[allow]\nuids = [0]\n[requests.monitoring]\nuids = [900]\n\
     rules = [\"GET /latest/meta-data/placement/\", \"PUT /latest/api/token\"]\n\
     [imdsv2]\nrequired = true\nexempt = { uids = [0] }\n";

#[test]
fn check_request_names_the_longest_rule_or_the_refusal() {
    let path = policy_file("check-request.toml", REQUEST_POLICY);
    let p = path.to_str().expect("utf-8");
    let run = |extra: &[&str]| {
        let mut args = vec!["check", "--config", p, "--uid", "900", "--gid", "900"];
        args.extend_from_slice(extra);
        let out = imds_guard(&args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("uid 900 is allowed by [requests.monitoring] uids 900 at"),
        "{out}"
    );
    assert!(
        out.contains("only the requests of [requests.monitoring] (2 rules"),
        "{out}"
    );
    let (code, out) = run(&[
        "--request",
        "GET /latest/meta-data/placement/region",
        "--token",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(
            "request \"GET /latest/meta-data/placement/region\" with the token header: allowed: \
             IMDSv2: rule 1 \"GET /latest/meta-data/placement/\" of [requests.monitoring] at 5:10"
        ),
        "{out}"
    );
    let (code, out) = run(&["--request", "GET /latest/meta-data/iam/info", "--token"]);
    assert_eq!(code, Some(4), "{out}");
    assert!(
        out.contains("refused: IMDSv2: no rule of [requests.monitoring] matches"),
        "{out}"
    );
    let (code, out) = run(&["--request", "GET /latest/meta-data/placement/region"]);
    assert_eq!(code, Some(4), "{out}");
    assert!(out.contains("refused: IMDSv1: an IMDSv1 request"), "{out}");
    let (code, out) = run(&["--request", "GET /latest/meta-data/%2e%2e/", "--json"]);
    assert_eq!(code, Some(4), "{out}");
    assert!(out.contains("\"verdict\":\"refused\""), "{out}");
}

#[test]
fn render_strict_fails_on_request_tables() {
    let path = policy_file("render-requests.toml", REQUEST_POLICY);
    let out = imds_guard(&[
        "render",
        "--config",
        path.to_str().expect("utf-8"),
        "--iptables",
        "--strict",
    ]);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot express request paths"),
        "{}",
        stderr(&out)
    );
}
