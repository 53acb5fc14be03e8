//! The command line as an operator meets it (no privileges needed):
//! `validate` exit codes and messages, and `run` refusing a bad policy
//! before it touches the kernel.

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
fn bad_command_lines_exit_2() {
    assert_eq!(
        imds_guard(&["run", "--log-format", "xml"]).status.code(),
        Some(2)
    );
    assert_eq!(imds_guard(&["frobnicate"]).status.code(), Some(2));
}
