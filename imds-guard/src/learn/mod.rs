//! Learning from the agent's own records: `suggest` turns the refusals of
//! an audit phase into a policy that lets those callers through, and
//! `report` says how many refusals there were, whose and for what.
//!
//! - `records.rs`: JSON lines (the agent's `--log-format json` or
//!   `journalctl -o json`) to decisions, with the rate limiter's
//!   suppressed counts added to the record they follow;
//! - `origin.rs`: whom a decision is about, as narrowly as the policy can
//!   name it (a pod, a unit, a scope, then a uid);
//! - `suggest.rs`: decisions to proposals, each with its forms, narrowest
//!   first, and what else each admits; `directory.rs` the user database
//!   it asks for groups;
//! - `write.rs`: chosen forms to policy text; `merge.rs`: the same as a
//!   change to a policy file; `ask.rs`: accept, refuse or widen, one
//!   proposal at a time;
//! - `report.rs`: decisions to counts by identity, hook, destination and
//!   verdict;
//! - `time.rs`: the times in records and `--since`.
//!
//! Imports: `policy` only (a pure layer beside `render`); the commands
//! are in `cli/`.

pub mod ask;
pub mod directory;
pub mod merge;
pub mod origin;
pub mod records;
pub mod report;
pub mod suggest;
pub mod time;
pub mod write;

#[cfg(test)]
mod tests;

use thiserror::Error;

pub use self::{
    directory::{Directory, SystemDirectory},
    records::{Decision, Records},
    suggest::{Suggestion, suggest},
};

/// Why records could not be read or a policy not be written.
#[derive(Debug, Error)]
pub enum LearnError {
    #[error("cannot read the records")]
    Input(#[source] std::io::Error),
    #[error(transparent)]
    Since(#[from] time::SinceError),
    #[error("no answer for proposal {0}: the input ended")]
    Unanswered(usize),
    #[error("cannot write the questions")]
    Prompt(#[source] std::io::Error),
    #[error("the policy to compare with does not validate")]
    Against(#[source] crate::policy::PolicyError),
    #[error("the suggested policy does not validate (a bug: please report it)")]
    Invalid(#[source] crate::policy::PolicyError),
    #[error("the change to {path} does not validate; add these entries by hand:\n{entries}")]
    Merge {
        path: std::path::PathBuf,
        entries: String,
        #[source]
        source: crate::policy::PolicyError,
    },
}
