//! The one exit path: every command returns `Result<Outcome, CliError>`,
//! and `main` turns it into the documented exit code after [`report`]
//! printed the error once.
//!
//! Exit codes: 0 success; 1 the policy is invalid (nothing was attached or
//! changed; `validate --strict`: it gives warnings); 2 bad command line; 3 the guard could not be set up or run;
//! 4 `check`: the process is denied, or `render --strict`: the rules cannot
//! say everything the policy says; 5 `status`: the guard is not enforcing;
//! 6 `run`: the kernel refuses the agent for good (a capability, a seccomp
//! filter, a security module, a missing kernel feature): restarting cannot
//! help, and the packaged unit does not.

use std::{error::Error, fmt, path::PathBuf, process::ExitCode};

use crate::{chain::Chain, policy::PolicyError};

/// How a command that did its job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// `check`: the process is denied (or would be, in audit mode).
    Denied,
    /// `render --strict`: there were warnings.
    StrictWarnings,
    /// `status`: the guard is not enforcing.
    NotEnforcing,
}

impl Outcome {
    pub fn exit_code(self) -> ExitCode {
        ExitCode::from(match self {
            Self::Success => 0,
            Self::Denied | Self::StrictWarnings => 4,
            Self::NotEnforcing => 5,
        })
    }
}

/// Why a command could not do its job.
#[derive(Debug)]
pub enum CliError {
    /// The policy does not validate: nothing was attached or changed.
    Policy(PolicyError),
    /// `run`: the policy does not validate, and the guard pinned at
    /// `pin_dir` keeps enforcing the policy last put in force.
    PolicyKept {
        error: PolicyError,
        pin_dir: PathBuf,
    },
    /// The command line cannot be acted on (clap's own errors exit 2 too).
    Usage(String),
    /// The guard could not be set up, read or run.
    Runtime(Box<dyn Error + Send + Sync + 'static>),
    /// The kernel refuses the agent, and will again after a restart.
    Permanent(Box<dyn Error + Send + Sync + 'static>),
    /// Whoever read stdout closed it (`status | head`): the command stops
    /// quietly and exits 0, as ripgrep does; the reader had what it wanted.
    Closed,
}

impl CliError {
    pub fn runtime(e: impl Error + Send + Sync + 'static) -> Self {
        Self::Runtime(Box::new(e))
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Self::Closed => 0,
            Self::Policy(_) | Self::PolicyKept { .. } => 1,
            Self::Usage(_) => 2,
            Self::Runtime(_) => 3,
            Self::Permanent(_) => 6,
        })
    }
}

impl From<PolicyError> for CliError {
    fn from(e: PolicyError) -> Self {
        Self::Policy(e)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Policy(e) | Self::PolicyKept { error: e, .. } => Chain(e).fmt(f),
            Self::Usage(message) => f.write_str(message),
            Self::Runtime(e) | Self::Permanent(e) => Chain(e.as_ref()).fmt(f),
            Self::Closed => f.write_str("stdout was closed"),
        }
    }
}

/// Prints `e` once. A policy's diagnostics go to stderr as they are, one
/// `FILE:LINE:COL: what` per line, for the operator; other errors are
/// `imds-guard: what: why`. Once the agent's log is set up (`run`), errors
/// are log records instead, at error priority, so that the journal has
/// them where `journalctl -p warning` shows them, each diagnostic a record
/// of its own, followed by what is in force.
pub fn report(e: &CliError) {
    let logging = tracing::dispatcher::has_been_set();
    match e {
        CliError::Closed => {}
        CliError::Policy(_) | CliError::PolicyKept { .. } if logging => {
            for line in e.to_string().lines() {
                tracing::error!("{line}");
            }
            match e {
                CliError::PolicyKept { pin_dir, .. } => tracing::error!(
                    pin_dir = %pin_dir.display(),
                    "the policy is invalid and was not used; the guard pinned in {} keeps \
                     enforcing the policy last put in force (imds-guard status shows it): fix \
                     the file, then restart the agent (systemctl restart imds-guard)",
                    pin_dir.display()
                ),
                _ => tracing::error!("the policy is invalid; nothing was attached"),
            }
        }
        CliError::Policy(_) | CliError::PolicyKept { .. } => eprintln!("{e}"),
        _ if logging => tracing::error!("{e}"),
        _ => eprintln!("imds-guard: {e}"),
    }
}
