//! Log output: human text or one JSON object per line on stderr, or native
//! journal entries with one field per record field under systemd; aya-log
//! records from the programs are bridged in through the `log` crate. The
//! text format escapes control characters in every field (`escaped.rs`).
//!
//! In the journal, every field of a record is a journal field of the same
//! name in upper case, without prefix (`EVENT=deny`, `UID=1000`, `DST=…`,
//! `REASON=…`), the text is `MESSAGE`, and the level is `PRIORITY`
//! (error 3, warn 4, info 6, debug and trace 7), so that
//! `journalctl -u imds-guard EVENT=deny UID=1000` and `-p warning` work.

use std::{
    ffi::OsStr,
    fs::File,
    io::{self, IsTerminal as _},
    os::{fd::BorrowedFd, unix::fs::MetadataExt as _},
};

use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// How records are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `journal` when stderr is connected to the systemd journal, `text`
    /// otherwise.
    #[default]
    Auto,
    /// Human-readable lines on stderr.
    Text,
    /// One JSON object per line on stderr.
    Json,
    /// Native journal entries with one field per record field; `text` on
    /// stderr, with a warning, when the journal cannot be reached.
    Journal,
}

/// The environment variable that overrides the log filter (tracing's
/// `EnvFilter` syntax, e.g. `debug` to see allowed decisions too).
pub const FILTER_ENV: &str = "IMDS_GUARD_LOG";

/// The variable systemd sets, as `DEVICE:INODE` in decimal, when it connects
/// a service's stdout or stderr to the journal (systemd.exec(5)).
pub const JOURNAL_STREAM_ENV: &str = "JOURNAL_STREAM";

/// What journal entries are tagged with (`journalctl -t imds-guard`).
const SYSLOG_IDENTIFIER: &str = "imds-guard";

/// Installs the global subscriber. Records from the `log` crate (aya-log's
/// bridge from the eBPF programs) are forwarded to it.
pub fn init(format: LogFormat) {
    let format = match format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journal,
        LogFormat::Auto => LogFormat::Text,
        other => other,
    };
    let journal_error = match format {
        LogFormat::Journal => match journald_layer() {
            // `try_init` also installs the log → tracing bridge; failing
            // means a subscriber exists already (tests), which is fine.
            Ok(layer) => {
                let _ = tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .try_init();
                return;
            }
            Err(e) => Some(e),
        },
        _ => None,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(io::stderr)
        .with_ansi(colour(
            io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        _ => builder.fmt_fields(escaped::EscapedFields).try_init(),
    };
    if let Some(e) = journal_error {
        tracing::warn!(
            error = %e,
            "cannot reach the journal at /run/systemd/journal/socket; logging text on stderr instead"
        );
    }
}

/// Colours only for a person at a terminal, and not when `NO_COLOR` is
/// set to anything but the empty string (no-color.org): a file, a pipe or
/// a log collector gets plain text.
fn colour(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn filter() -> EnvFilter {
    EnvFilter::try_from_env(FILTER_ENV).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The journal layer: fields without tracing-journald's default `F_` prefix,
/// levels mapped to syslog priorities by their names. Fails when nothing
/// listens on journald's socket.
fn journald_layer() -> io::Result<tracing_journald::Layer> {
    Ok(tracing_journald::layer()?
        .with_field_prefix(None)
        .with_syslog_identifier(SYSLOG_IDENTIFIER.to_owned())
        // tracing-journald maps info to notice (5) and debug to info (6) by
        // default; by name keeps `-p info` from showing debug records.
        .with_priority_mappings(PriorityMappings {
            error: Priority::Error,
            warn: Priority::Warning,
            info: Priority::Informational,
            debug: Priority::Debug,
            trace: Priority::Debug,
        }))
}

/// Whether stderr is the stream systemd connected to the journal: the
/// documented test, `$JOURNAL_STREAM` naming fd 2's device and inode. A
/// service whose stderr was redirected elsewhere inherits the variable, but
/// not the match.
pub fn stderr_is_journal() -> bool {
    journal_stream_is(
        std::env::var_os(JOURNAL_STREAM_ENV).as_deref(),
        std::os::fd::AsFd::as_fd(&io::stderr()),
    )
}

/// Whether `journal_stream` (a `$JOURNAL_STREAM` value) names `fd`.
fn journal_stream_is(journal_stream: Option<&OsStr>, fd: BorrowedFd<'_>) -> bool {
    let Some((dev, ino)) = journal_stream
        .and_then(OsStr::to_str)
        .and_then(|s| s.split_once(':'))
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
    else {
        return false;
    };
    // A duplicate, to get fstat through `File` without unsafe code.
    let Ok(meta) = fd
        .try_clone_to_owned()
        .map(File::from)
        .and_then(|f| f.metadata())
    else {
        return false;
    };
    meta.dev() == dev && meta.ino() == ino
}

/// The programs' aya-log level: off unless `debug` records are wanted, so
/// their diagnostics cost nothing by default. (Internal errors are also
/// counted and reported through the event ring buffer, which is always on.)
pub fn ebpf_log_level() -> u8 {
    if tracing::enabled!(tracing::Level::DEBUG) {
        aya_log::Level::Debug as u8
    } else {
        0
    }
}

#[cfg(test)]
pub(crate) mod captured;
mod escaped;
#[cfg(test)]
mod tests;
