//! `imds-guard generate`: manual pages and shell completions made from the
//! command line's own definitions, as ripgrep's `--generate` does, so that
//! what the package ships cannot drift from what the binary accepts.
//!
//! The pages are in section 8 (system administration commands and daemons:
//! the agent runs as root under systemd), one per command as git and cargo
//! do: `imds-guard(8)` for the whole, with exit status, environment and
//! files, and `imds-guard-run(8)`, `imds-guard-validate(8)`, … for each
//! command's options.

use std::{
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use clap::{Args, Subcommand};
use clap_complete::{Generator as _, Shell};
use clap_mangen::{
    Man,
    roff::{Roff, bold, italic, roman},
};

/// The manual section of every page.
pub const MAN_SECTION: &str = "8";

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
    println!("{}", path.display());
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
    man.render(&mut roff)
        .and_then(|()| see_also(&[("imds-guard", MAN_SECTION)]).to_writer(&mut roff))
        .map_err(|source| GenerateError::Render {
            name: file_name.clone(),
            source,
        })?;
    Ok(ManPage { file_name, roff })
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
         the caller's real uid or real primary gid. Every denial is logged with who made it \
         and which policy entry decided it.",
    )]);
    r.control("PP", []);
    r.text([
        roman("Root, and any process with CAP_SYS_ADMIN, CAP_BPF, CAP_NET_ADMIN or CAP_NET_RAW, is out of scope: it can remove the guard or go around it."),
    ]);
    r
}

/// EXIT STATUS, ENVIRONMENT, FILES and SEE ALSO of the top page.
fn reference() -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in [
        ("0", "Success."),
        ("1", "The policy is invalid; nothing was attached."),
        ("2", "Bad command line."),
        (
            "3",
            "The guard could not be set up or run (for instance not root, or no cgroup v2).",
        ),
    ] {
        r.control("TP", [])
            .text([bold(code)])
            .text([roman(meaning)]);
    }

    r.control("SH", ["ENVIRONMENT"]);
    for (var, meaning) in [
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
    ] {
        r.control("TP", []).text([bold(var)]).text([roman(meaning)]);
    }

    r.control("SH", ["FILES"]);
    for (path, meaning) in [
        (
            "/etc/imds-guard/policy.toml",
            "The policy read when --config is not given; the shipped one allows root only and \
             documents every key.",
        ),
        (
            "/sys/fs/bpf/imds-guard",
            "Where the agent pins its programs and maps, so that enforcement outlives the \
             process; imds-guard detach removes them.",
        ),
    ] {
        r.control("TP", [])
            .text([italic(path)])
            .text([roman(meaning)]);
    }

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
