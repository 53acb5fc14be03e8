//! Where `suggest` and `report` read the agent's records: a file of JSON
//! lines (`--from FILE`, `-` for stdin), or the journal through
//! `journalctl -u imds-guard.service -o json` (the default), since
//! `--since`; and how they print, ending quietly on a closed pipe.

use std::{
    fs::File,
    io::{self, BufReader, Write as _},
    path::PathBuf,
    process::{Command, Stdio},
};

use thiserror::Error;

use super::{CliError, RecordsArgs};
use crate::learn::{
    LearnError, Records, records,
    time::{self, Micros},
};

/// The unit whose journal holds the records.
const UNIT: &str = "imds-guard.service";

/// Why the records could not be read.
#[derive(Debug, Error)]
pub enum RecordsError {
    #[error("cannot open {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot run journalctl")]
    Journal(#[source] io::Error),
    #[error("journalctl failed ({0}); read a file instead with --from")]
    JournalFailed(std::process::ExitStatus),
    #[error(transparent)]
    Learn(#[from] LearnError),
}

impl From<RecordsError> for CliError {
    fn from(e: RecordsError) -> Self {
        match e {
            RecordsError::Learn(LearnError::Since(e)) => CliError::Usage(e.to_string()),
            other => CliError::runtime(other),
        }
    }
}

/// `--since` as a time; `None` for every record.
pub fn since(args: &RecordsArgs) -> Result<Option<Micros>, RecordsError> {
    args.since
        .as_deref()
        .map(|s| time::parse_since(s, time::now()).map_err(|e| LearnError::Since(e).into()))
        .transpose()
}

/// The records `args` names, since `since`.
pub fn read(args: &RecordsArgs, since: Option<Micros>) -> Result<Records, RecordsError> {
    match args.from.as_deref() {
        Some(path) if path.as_os_str() == "-" => Ok(records::read(io::stdin().lock(), since)?),
        Some(path) => {
            let file = File::open(path).map_err(|source| RecordsError::Open {
                path: path.to_owned(),
                source,
            })?;
            Ok(records::read(BufReader::new(file), since)?)
        }
        None => journal(since),
    }
}

/// `journalctl -u imds-guard.service -o json`, read as it prints.
fn journal(since: Option<Micros>) -> Result<Records, RecordsError> {
    let mut command = Command::new("journalctl");
    command.args(journal_args(since));
    run_journal(command, since)
}

/// What `journalctl` is asked: the unit's entries as JSON, since `since`.
fn journal_args(since: Option<Micros>) -> Vec<String> {
    let mut args: Vec<String> = ["--unit", UNIT, "--output", "json", "--no-pager", "--quiet"]
        .map(str::to_owned)
        .into();
    if let Some(since) = since {
        // `@SECONDS` is a time every journalctl takes (systemd.time(7)).
        args.push(format!("--since=@{}", since.div_euclid(1_000_000)));
    }
    args
}

/// Runs `command` and reads its output as records, as it prints them.
fn run_journal(mut command: Command, since: Option<Micros>) -> Result<Records, RecordsError> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(RecordsError::Journal)?;
    let read = match child.stdout.take() {
        Some(stdout) => records::read(BufReader::new(stdout), since),
        None => Ok(Records::default()),
    };
    let status = child.wait().map_err(RecordsError::Journal)?;
    let records = read?;
    if !status.success() {
        return Err(RecordsError::JournalFailed(status));
    }
    Ok(records)
}

/// Writes `text` to stdout; a closed pipe (`| head`) ends it quietly.
pub fn print(text: &str) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(CliError::runtime(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sh -c SCRIPT`, standing in for journalctl.
    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    #[test]
    fn the_journal_is_asked_for_the_unit_as_json_since_a_time() {
        assert_eq!(
            journal_args(Some(1_796_616_691_123_456)),
            [
                "--unit",
                "imds-guard.service",
                "--output",
                "json",
                "--no-pager",
                "--quiet",
                "--since=@1796616691"
            ]
        );
        assert!(!journal_args(None).iter().any(|a| a.starts_with("--since")));
    }

    #[test]
    fn the_journal_s_lines_are_read_and_its_failure_said() {
        let line = r#"{"__REALTIME_TIMESTAMP":"1796616691000000","EVENT":"deny","UID":"1000","DST":"169.254.169.254","PORT":"80","HOOK":"connect4","PLACE":"host"}"#;
        let found = run_journal(sh(&format!("echo '{line}'; echo '{line}'")), None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(found.decisions.len(), 2);
        assert_eq!(found.decisions[0].uid, Some(1000));
        assert_eq!(found.decisions[0].port, Some(80));
        let failed = run_journal(sh("echo '{}'; exit 1"), None);
        assert!(
            matches!(failed, Err(RecordsError::JournalFailed(_))),
            "{failed:?}"
        );
        let missing = run_journal(Command::new("/nonexistent/journalctl"), None);
        assert!(
            matches!(missing, Err(RecordsError::Journal(_))),
            "{missing:?}"
        );
    }
}
