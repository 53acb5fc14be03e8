//! The command line, kept apart from `main` so that the man page and shell
//! completions can be generated from the same definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::logging::LogFormat;

/// The policy file read when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/imds-guard/policy.toml";

/// Decides which local processes may reach the cloud instance metadata
/// service.
#[derive(Debug, Parser)]
#[command(name = "imds-guard", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the policy, attach the guard and log every decision on a
    /// protected address until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Check a policy without touching the kernel: exit 0 when valid, 1 with
    /// `FILE:LINE:COL: what is wrong` when not.
    Validate(ValidateArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The policy file.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The cgroup v2 directory to attach to (default: the root of the
    /// cgroup v2 hierarchy, found in /proc/self/mountinfo).
    #[arg(long, value_name = "DIR")]
    pub cgroup: Option<PathBuf>,
    /// How to write log records on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The policy file.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Do not resolve user and group names (for hosts that do not have
    /// them, such as a config-management CI runner).
    #[arg(long)]
    pub offline: bool,
}
