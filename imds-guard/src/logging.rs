//! Log output: human text or one JSON object per line on stderr, with
//! aya-log records from the programs bridged in through the `log` crate.

use tracing_subscriber::EnvFilter;

/// How records are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The environment variable that overrides the log filter (tracing's
/// `EnvFilter` syntax, e.g. `debug` to see allowed decisions too).
pub const FILTER_ENV: &str = "IMDS_GUARD_LOG";

/// Installs the global subscriber. Records from the `log` crate (aya-log's
/// bridge from the eBPF programs) are forwarded to it.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env(FILTER_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // `try_init` also installs the log → tracing bridge; failing means a
    // subscriber exists already (tests), which is fine.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
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
