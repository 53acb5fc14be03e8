//! imds-guard: decides which local processes may reach the cloud instance
//! metadata service. The binary (`main.rs`) is a thin shell over [`cli`].
//!
//! The folders are the layers, and imports only go down:
//! - [`policy`] and [`render`]: pure policy logic (TOML to a validated,
//!   resolved policy; the same policy as firewall rules). They import
//!   nothing of this crate.
//! - [`learn`]: pure too: the agent's decision records read back, as a
//!   suggested policy (`suggest`) or counts (`report`). Imports `policy`.
//! - [`kernel`]: the eBPF programs, their maps, pins and links. Imports
//!   `policy`.
//! - [`daemon`]: the agent's run loop, reloads, the decision log, metrics,
//!   systemd. Imports `kernel` and `policy`.
//! - [`cli`]: the commands. Imports everything.
//!
//! [`chain`] and [`text`] are leaves every layer may use.

// No function in the agent over 80 lines (clippy.toml sets the bound):
// a longer one is asking to be split.
#![warn(clippy::too_many_lines)]

pub mod chain;
pub mod cli;
pub mod daemon;
pub mod kernel;
pub mod learn;
pub mod policy;
pub mod render;
#[cfg(test)]
mod testing;
pub mod text;
