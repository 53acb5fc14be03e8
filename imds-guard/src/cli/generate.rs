//! `imds-guard generate`: manual pages and shell completions made from the
//! command line's own definitions, as ripgrep's `--generate` does, so that
//! what the package ships cannot drift from what the binary accepts.
//!
//! The pages are in section 8 (system administration commands and daemons:
//! the agent runs as root under systemd), one per command as git and cargo
//! do: `imds-guard(8)` for the whole, with exit status, environment and
//! files, and `imds-guard-run(8)`, `imds-guard-validate(8)`, … for each
//! command's options, with the sections its source in `docs/man/` adds
//! (reload, stopping, pins and the journal fields for `run`; loading the
//! output for `render`). `imds-guard-policy(5)` is the policy format:
//! docs/policy.md and the packaged policy.

mod markdown;

use std::{
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use clap::{Args, Subcommand};
use clap_complete::{Generator as _, Shell};
use clap_mangen::{
    Man,
    roff::{Inline, Roff, bold, italic, roman},
};

use super::out::outln;

/// The manual section of every command's page.
pub const MAN_SECTION: &str = "8";

/// The sections each command's page adds after its options: one markdown
/// file per page in `docs/man/`, each `# TITLE` line a section (`.SH`).
/// They repeat what docs/operating.md and docs/render.md say, word for
/// word (a test holds them to it), so a page and the document cannot
/// drift apart.
const COMMAND_PAGES: &[(&str, &str)] = &[
    ("run", include_str!("../../../docs/man/imds-guard-run.8.md")),
    (
        "status",
        include_str!("../../../docs/man/imds-guard-status.8.md"),
    ),
    (
        "suggest",
        include_str!("../../../docs/man/imds-guard-suggest.8.md"),
    ),
    (
        "report",
        include_str!("../../../docs/man/imds-guard-report.8.md"),
    ),
    (
        "render",
        include_str!("../../../docs/man/imds-guard-render.8.md"),
    ),
];

/// The policy reference, whole: the DESCRIPTION of `imds-guard-policy(5)`.
const POLICY_REFERENCE: &str = include_str!("../../../docs/policy.md");

/// `imds-guard generate …`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(subcommand)]
    pub what: Generate,
}

#[derive(Debug, Subcommand)]
pub enum Generate {
    /// Write the manual pages into DIR: imds-guard.8 and one
    /// imds-guard-COMMAND.8 per command.
    Man {
        /// The directory to write into (created when missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Write a shell's completion script into DIR under the name the shell
    /// looks for (bash: imds-guard, zsh: _imds-guard, fish:
    /// imds-guard.fish), or on stdout without --out.
    Completions {
        /// The shell to complete for.
        #[arg(long, value_enum, value_name = "SHELL")]
        shell: Shell,
        /// The directory to write into (created when missing).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("cannot create the directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot render the manual page {name}")]
    Render {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// One rendered manual page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManPage {
    /// `imds-guard.8`, `imds-guard-run.8`, …
    pub file_name: String,
    /// roff source.
    pub roff: Vec<u8>,
}

/// Does what `args` asks, with `cmd` the top-level command
/// (`<Cli as clap::CommandFactory>::command()`). Prints each file written
/// on stdout, one per line.
pub fn run_generate(args: &GenerateArgs, cmd: clap::Command) -> Result<(), GenerateError> {
    match &args.what {
        Generate::Man { out } => {
            create_dir(out)?;
            for page in man_pages(cmd)? {
                write_file(&out.join(&page.file_name), &page.roff)?;
            }
        }
        Generate::Completions { shell, out } => {
            let script = completions(cmd, *shell);
            match out {
                Some(out) => {
                    create_dir(out)?;
                    write_file(&out.join(completion_file_name(*shell)), &script)?;
                }
                None => io::stdout()
                    .write_all(&script)
                    .map_err(|source| GenerateError::Write {
                        path: "stdout".into(),
                        source,
                    })?,
            }
        }
    }
    Ok(())
}

fn create_dir(path: &Path) -> Result<(), GenerateError> {
    fs::create_dir_all(path).map_err(|source| GenerateError::CreateDir {
        path: path.to_owned(),
        source,
    })
}

fn write_file(path: &Path, contents: &[u8]) -> Result<(), GenerateError> {
    fs::write(path, contents).map_err(|source| GenerateError::Write {
        path: path.to_owned(),
        source,
    })?;
    // The list is for whoever watches; a reader that went away must not
    // stop the pages being written.
    let _ = outln!("{}", path.display());
    Ok(())
}

/// The manual pages: the top command's first, then one per visible command,
/// recursively (clap_mangen's own layout, with our sections added to the
/// top page).
pub fn man_pages(cmd: clap::Command) -> Result<Vec<ManPage>, GenerateError> {
    // Built, the subcommands know their display names (`imds-guard-run`)
    // and bin names (`imds-guard run`) for their synopses.
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    // Every page names the package's version as its source, as the top
    // page does by default (a subcommand has no version of its own).
    let source = format!(
        "{} {}",
        cmd.get_name(),
        cmd.get_version().unwrap_or_default()
    );
    let mut pages = vec![top_page(&cmd, &source)?];
    let mut todo: Vec<clap::Command> = visible_subcommands(&cmd).cloned().collect();
    while let Some(sub) = todo.pop() {
        todo.extend(visible_subcommands(&sub).cloned());
        pages.push(page(&sub, &source)?);
    }
    pages[1..].sort_by(|a, b| a.file_name.cmp(&b.file_name));
    pages.push(policy_page(&source));
    Ok(pages)
}

fn visible_subcommands(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands().filter(|s| !s.is_hide_set())
}

fn man(cmd: &clap::Command, source: &str) -> Man {
    let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name());
    Man::new(cmd.clone())
        .section(MAN_SECTION)
        .source(source)
        .title(name.to_uppercase())
        .manual("System Administration")
}

fn page(cmd: &clap::Command, source: &str) -> Result<ManPage, GenerateError> {
    let man = man(cmd, source);
    let file_name = man.get_filename();
    let mut roff = Vec::new();
    let mut extra = Roff::new();
    let source = COMMAND_PAGES
        .iter()
        .find(|(name, _)| *name == cmd.get_name())
        .map_or("", |(_, source)| source);
    for (title, text) in markdown::sections(source) {
        extra.control("SH", [title]);
        markdown::to_roff(text, &mut extra);
    }
    man.render(&mut roff)
        .and_then(|()| extra.to_writer(&mut roff))
        .and_then(|()| {
            see_also(&[("imds-guard", MAN_SECTION), ("imds-guard-policy", "5")])
                .to_writer(&mut roff)
        })
        .map_err(|source| GenerateError::Render {
            name: file_name.clone(),
            source,
        })?;
    Ok(ManPage { file_name, roff })
}

/// The packaged policy, shown whole as the policy page's example.
const PACKAGED_POLICY: &str = include_str!("../../../config/imds-guard.toml");

/// `imds-guard-policy(5)`: the policy format.
fn policy_page(source: &str) -> ManPage {
    let mut r = Roff::new();
    r.control(
        "TH",
        ["IMDS-GUARD-POLICY", "5", "", source, "File Formats Manual"],
    );
    r.control("SH", ["NAME"]);
    r.text([roman(
        "imds-guard-policy - the policy file of imds-guard: who may reach the cloud instance \
         metadata service",
    )]);
    r.control("SH", ["SYNOPSIS"]);
    r.text([italic("/etc/imds-guard/policy.toml")]);
    r.control("SH", ["DESCRIPTION"]);
    // The document's own title (`# Policy reference`) is the page's NAME.
    for (_, text) in markdown::sections(POLICY_REFERENCE) {
        markdown::to_roff(text, &mut r);
    }
    r.control("SH", ["EXAMPLE"]);
    r.text([roman(
        "The packaged default (/usr/share/imds-guard/policy.toml), which documents every key:",
    )]);
    r.control("PP", []).control("RS", ["4"]).control("nf", []);
    for line in PACKAGED_POLICY.lines() {
        r.text([roman(line)]);
    }
    r.control("fi", []).control("RE", []);
    let mut roff = r.to_roff().into_bytes();
    roff.extend(
        see_also(&[("imds-guard", "8"), ("imds-guard-validate", "8")])
            .to_roff()
            .into_bytes(),
    );
    ManPage {
        file_name: "imds-guard-policy.5".to_owned(),
        roff,
    }
}

fn top_page(cmd: &clap::Command, source: &str) -> Result<ManPage, GenerateError> {
    let man = man(cmd, source);
    let file_name = man.get_filename();
    let mut w = Vec::new();
    let rendered = (|| {
        man.render_title(&mut w)?;
        man.render_name_section(&mut w)?;
        man.render_synopsis_section(&mut w)?;
        description().to_writer(&mut w)?;
        man.render_options_section(&mut w)?;
        man.render_subcommands_section(&mut w)?;
        reference().to_writer(&mut w)?;
        man.render_version_section(&mut w)
    })();
    rendered.map_err(|source| GenerateError::Render {
        name: file_name.clone(),
        source,
    })?;
    Ok(ManPage { file_name, roff: w })
}

fn description() -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["DESCRIPTION"]);
    r.text([roman(
        "imds-guard decides which local processes may connect to the cloud instance metadata \
         service (169.254.169.254 and fd00:ec2::254 by default), which hands out the \
         instance's credentials. eBPF programs attached to the cgroup v2 hierarchy reject a \
         connection or datagram to a protected address with EPERM unless the policy allows \
         the caller: by user or uid, by group or gid (primary or supplementary), by systemd \
         unit, cgroup or Kubernetes pod, or, in [allow.host], only as a process on the host, \
         not in a container. A [deny] entry wins over every allow. Every denial is logged \
         with who made it and which policy entry decided it.",
    )]);
    r.control("PP", []);
    r.text([
        roman("Root, and any process with CAP_SYS_ADMIN, CAP_BPF, CAP_NET_ADMIN or CAP_NET_RAW, is out of scope: it can remove the guard or go around it."),
    ]);
    r
}

/// Every exit code, for EXIT STATUS.
const EXIT_STATUS: &[(&str, &str)] = &[
    ("0", "Success."),
    (
        "1",
        "The policy is invalid: nothing was attached or changed, and a guard already pinned \
             keeps enforcing the policy last put in force (run exits, and the packaged unit \
             does not restart it). reload: the agent refused the policy. validate --strict: \
             the policy gives warnings.",
    ),
    ("2", "Bad command line."),
    (
        "3",
        "The guard could not be set up or run (for instance no cgroup v2, or another agent \
             runs it); status: only root can read the guard's pins; reload: no agent runs the \
             guard, or it did not answer.",
    ),
    (
        "4",
        "check: the process is denied (or would be, in audit mode). render --strict: the \
             rules cannot say everything the policy says.",
    ),
    (
        "5",
        "status: the guard is not enforcing, enforces the fallback, differs from --config \
             FILE, or is not in the --require mode.",
    ),
    (
        "6",
        "run: the kernel refuses the agent for good (a capability missing, a seccomp filter \
             or a security module refusing bpf(2), a kernel without a feature the guard \
             needs); the message names the cause and the fix. The packaged unit does not \
             restart on it.",
    ),
];

/// What the agent reads of its environment.
const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "IMDS_GUARD_LOG",
        "The log filter, in tracing's EnvFilter syntax; debug also logs allowed decisions \
             and turns on the programs' own diagnostics. Default: info.",
    ),
    (
        "JOURNAL_STREAM",
        "Set by systemd; when it names the agent's stderr, --log-format auto writes native \
             journal entries, one journal field per record field (EVENT, UID, USER, GID, PID, \
             COMM, DST, PORT, HOOK, REASON, ...).",
    ),
    (
        "NOTIFY_SOCKET",
        "Set by systemd for a Type=notify service; the agent reports readiness once the \
             guard is enforcing, and reloads and shutdown.",
    ),
];

/// The files the agent reads and writes.
const FILES: &[(&str, &str)] = &[
    (
        "/etc/imds-guard/policy.toml",
        "The policy read when --config is not given, when there is one. The packages never \
             install or replace it: write it before or after installing. run looks it up again at \
             each reload, so a file written after the agent started is read by systemctl reload \
             imds-guard.",
    ),
    (
        "/usr/share/imds-guard/policy.toml",
        "The packaged default, read when /etc/imds-guard/policy.toml does not exist: only \
             root on the host may reach the metadata service. It documents every key; copy it to /etc to \
             start a policy of your own, since an upgrade replaces it.",
    ),
    (
        "/sys/fs/bpf/imds-guard",
        "Where the agent pins its programs and maps, so that enforcement outlives the \
             process; imds-guard detach removes them.",
    ),
];

/// EXIT STATUS, ENVIRONMENT, FILES and SEE ALSO of the top page.
fn reference() -> Roff {
    let mut r = Roff::new();
    tagged(&mut r, "EXIT STATUS", EXIT_STATUS, |s| bold(s));
    tagged(&mut r, "ENVIRONMENT", ENVIRONMENT, |s| bold(s));
    tagged(&mut r, "FILES", FILES, |s| italic(s));
    r.control("SH", ["SEE ALSO"]);
    r.text([
        bold("systemctl"),
        roman("(1), "),
        bold("journalctl"),
        roman("(1), "),
        bold("systemd.service"),
        roman("(5), "),
        bold("bpf"),
        roman("(2)"),
    ]);
    r
}

/// A section of tagged paragraphs: each tag in `style`, its meaning in
/// roman.
fn tagged(r: &mut Roff, title: &str, rows: &[(&str, &str)], style: fn(&str) -> Inline) {
    r.control("SH", [title]);
    for (tag, meaning) in rows {
        r.control("TP", [])
            .text([style(tag)])
            .text([roman(*meaning)]);
    }
}

fn see_also(pages: &[(&str, &str)]) -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["SEE ALSO"]);
    let mut line = Vec::new();
    for (i, (name, section)) in pages.iter().enumerate() {
        if i > 0 {
            line.push(roman(", "));
        }
        line.push(bold(*name));
        line.push(roman(format!("({section})")));
    }
    r.text(line);
    r
}

/// The completion script for `shell`.
pub fn completions(mut cmd: clap::Command, shell: Shell) -> Vec<u8> {
    let name = cmd.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    script
}

/// The file name `shell` looks the script up by in its completion
/// directory: bash-completion loads `imds-guard` when `imds-guard` is first
/// completed; zsh wants `_imds-guard` on its fpath; fish `imds-guard.fish`.
pub fn completion_file_name(shell: Shell) -> String {
    match shell {
        Shell::Bash => "imds-guard".to_owned(),
        other => other.file_name("imds-guard"),
    }
}

#[cfg(test)]
mod tests;
