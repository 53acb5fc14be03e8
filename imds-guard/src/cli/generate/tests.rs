//! The pages and scripts are generated from the real command line, so a
//! command added to `cli.rs` is checked here without a change.

use std::process::Command as Process;

use clap::CommandFactory as _;

use super::*;
use crate::cli::Cli;

fn pages() -> Vec<ManPage> {
    man_pages(Cli::command()).expect("rendering the manual pages")
}

fn text(page: &ManPage) -> String {
    String::from_utf8(page.roff.clone()).expect("UTF-8 roff")
}

#[test]
fn one_page_for_the_whole_and_one_per_command() {
    // One page per visible command at every depth (`generate man` gets
    // `imds-guard-generate-man.8`).
    fn walk(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
        for s in cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            let name = format!("{prefix}-{}", s.get_name());
            out.push(format!("{name}.8"));
            walk(s, &name, out);
        }
    }
    let cmd = Cli::command();
    let mut expected = vec!["imds-guard.8".to_owned()];
    let mut subs = Vec::new();
    walk(&cmd, "imds-guard", &mut subs);
    subs.sort();
    expected.extend(subs);
    expected.push("imds-guard-policy.5".to_owned());
    let names: Vec<String> = pages().into_iter().map(|p| p.file_name).collect();
    assert_eq!(names, expected);
    assert!(names.contains(&"imds-guard-run.8".to_owned()), "{names:?}");
    assert!(
        names.contains(&"imds-guard-validate.8".to_owned()),
        "{names:?}"
    );
}

#[test]
fn the_top_page_has_the_reference_sections() {
    let pages = pages();
    let top = text(&pages[0]);
    assert!(top.contains("\n.TH IMDS-GUARD 8 "), "{top}");
    for section in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "SUBCOMMANDS",
        "\"EXIT STATUS\"",
        "ENVIRONMENT",
        "FILES",
        "\"SEE ALSO\"",
        "VERSION",
    ] {
        assert!(
            top.contains(&format!(".SH {section}\n")),
            "no {section}: {top}"
        );
    }
    assert!(
        top.contains("imds\\-guard\\-run(8)"),
        "run is referenced: {top}"
    );
    assert!(top.contains("/etc/imds\\-guard/policy.toml"), "{top}");
    assert!(top.contains("/usr/share/imds\\-guard/policy.toml"), "{top}");
}

#[test]
fn a_command_page_documents_its_options() {
    let pages = pages();
    let run = pages
        .iter()
        .find(|p| p.file_name == "imds-guard-run.8")
        .expect("a page for run");
    let run = text(run);
    assert!(run.contains("\n.TH IMDS-GUARD-RUN 8 "), "{run}");
    let source = format!(" \"imds-guard {}\" ", env!("CARGO_PKG_VERSION"));
    assert!(run.contains(&source), "the source is the package: {run}");
    assert!(
        run.contains("imds\\-guard run"),
        "synopsis names the command: {run}"
    );
    for option in ["config", "cgroup", "log\\-format"] {
        assert!(
            run.contains(&format!("\\-\\-{option}")),
            "--{option}: {run}"
        );
    }
    assert!(run.contains("journal"), "the log formats are listed: {run}");
    for default in [
        "/etc/imds\\-guard/policy.toml",
        "/usr/share/imds\\-guard/policy.toml",
    ] {
        assert!(run.contains(default), "--config says its default: {run}");
    }
}

/// groff, where installed, must render every page without a warning
/// (`-ww` turns them all on; `-z` discards the output).
#[test]
fn groff_renders_every_page_without_warnings() {
    if Process::new("groff").arg("--version").output().is_err() {
        eprintln!("skipping: groff is not installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("imds-guard-man-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temp dir");
    for page in pages() {
        let path = dir.join(&page.file_name);
        fs::write(&path, &page.roff).expect("writing the page");
        let out = Process::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&path)
            .output()
            .expect("running groff");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "groff on {}: {}\n{stderr}",
            page.file_name,
            out.status
        );
    }
    fs::remove_dir_all(&dir).expect("removing the temp dir");
}

#[test]
fn completions_name_every_command_and_bash_parses_its_script() {
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let script = String::from_utf8(completions(Cli::command(), shell)).expect("UTF-8");
        for word in ["imds-guard", "run", "validate", "config"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    let dir = std::env::temp_dir().join(format!("imds-guard-compl-{}", std::process::id()));
    let args = GenerateArgs {
        what: Generate::Completions {
            shell: Shell::Bash,
            out: Some(dir.clone()),
        },
    };
    run_generate(&args, Cli::command()).expect("writing the bash completions");
    let path = dir.join("imds-guard");
    let out = Process::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("running bash -n");
    assert!(
        out.status.success(),
        "bash -n {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::remove_dir_all(&dir).expect("removing the temp dir");
}

#[test]
fn completion_file_names_are_what_each_shell_looks_up() {
    assert_eq!(completion_file_name(Shell::Bash), "imds-guard");
    assert_eq!(completion_file_name(Shell::Zsh), "_imds-guard");
    assert_eq!(completion_file_name(Shell::Fish), "imds-guard.fish");
}

#[test]
fn man_writes_every_page_into_a_new_directory() {
    let dir = std::env::temp_dir()
        .join(format!("imds-guard-gen-{}", std::process::id()))
        .join("man8");
    let args = GenerateArgs {
        what: Generate::Man { out: dir.clone() },
    };
    run_generate(&args, Cli::command()).expect("writing the pages");
    for page in pages() {
        let written = fs::read(dir.join(&page.file_name))
            .unwrap_or_else(|e| panic!("{}: {e}", page.file_name));
        assert_eq!(written, page.roff, "{}", page.file_name);
    }
    fs::remove_dir_all(dir.parent().expect("parent")).expect("removing the temp dir");
}

#[test]
fn an_unwritable_directory_is_named_in_the_error() {
    let args = GenerateArgs {
        what: Generate::Man {
            out: "/proc/imds-guard-cannot-be-here".into(),
        },
    };
    let err = run_generate(&args, Cli::command()).expect_err("/proc refuses new directories");
    assert_eq!(
        err.to_string(),
        "cannot create the directory /proc/imds-guard-cannot-be-here"
    );
}

#[test]
fn the_pages_carry_their_sources_sections() {
    let pages = pages();
    let page = |name: &str| {
        text(
            pages
                .iter()
                .find(|p| p.file_name == name)
                .unwrap_or_else(|| panic!("no {name}")),
        )
    };
    let run = page("imds-guard-run.8");
    for section in [
        "\"RELOADING THE POLICY\"",
        "\"STOPPING IS NOT TURNING OFF\"",
        "\"JOURNAL FIELDS\"",
    ] {
        assert!(
            run.contains(&format!(".SH {section}\n")),
            "no {section}: {run}"
        );
    }
    assert!(run.contains("imds\\-guard detach"), "{run}");
    let render = page("imds-guard-render.8");
    assert!(render.contains(".SH \"LOADING THE OUTPUT\"\n"), "{render}");
    assert!(
        render.contains("iptables\\-restore \\-\\-noflush"),
        "{render}"
    );
    let policy = page("imds-guard-policy.5");
    assert!(policy.starts_with(".TH IMDS-GUARD-POLICY 5 "), "{policy}");
    assert!(policy.contains(".SH EXAMPLE\n"), "{policy}");
    assert!(policy.contains("[allow]"), "{policy}");
}

/// The documents a page's source repeats.
const DOCS: [&str; 3] = [
    include_str!("../../../../docs/operating.md"),
    include_str!("../../../../docs/render.md"),
    include_str!("../../../../docs/policy.md"),
];

/// `text` with every run of white space one space.
fn squeezed(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn every_page_source_says_what_the_documents_say() {
    let docs = squeezed(&DOCS.join("\n\n"));
    for (name, source) in COMMAND_PAGES {
        let sections = markdown::sections(source);
        assert!(!sections.is_empty(), "docs/man for {name} has no # TITLE");
        for (title, text) in sections {
            assert!(!text.trim().is_empty(), "{name}: {title} is empty");
            // Paragraph by paragraph: a page may gather sections the
            // documents keep apart, but not say anything else.
            for block in text.split("\n\n").map(squeezed) {
                assert!(
                    docs.contains(&block),
                    "{name}: {title}: the documents in docs/ do not say {block:?}"
                );
            }
        }
    }
}

#[test]
fn every_page_source_is_a_command() {
    let cmd = Cli::command();
    for (name, _) in COMMAND_PAGES {
        assert!(
            cmd.get_subcommands().any(|s| s.get_name() == *name),
            "docs/man has a page for {name}, which is no command"
        );
    }
}

#[test]
fn the_policy_page_is_the_policy_reference() {
    let pages = pages();
    let policy = pages
        .iter()
        .find(|p| p.file_name == "imds-guard-policy.5")
        .map(text)
        .expect("imds-guard-policy.5");
    // The reference's first table row and its last section.
    assert!(policy.contains(".TP\n\\fBmode\\fR\n"), "{policy}");
    assert!(policy.contains("config/imds\\-guard.toml"), "{policy}");
    assert!(
        !policy.contains("Policy reference"),
        "the title is NAME: {policy}"
    );
}
