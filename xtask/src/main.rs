//! Project tasks cargo alone cannot do: install the eBPF toolchain, run the
//! privileged tests, run the demo.
//!
//! `xtask` depends on nothing of the project, so that it builds on a bare
//! machine before the eBPF toolchain exists.

mod setup;
mod tasks;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "imds-guard project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build and tests need (Debian packages, bpf-linker,
    /// the `bpf-debian` toolchain link) unless it is there already.
    Setup,
    /// Set up, build, and run every test: unit tests, then the privileged
    /// end-to-end tests one at a time (as root).
    Test {
        /// Extra arguments for the privileged test run (e.g. a test name).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Set up, build, and show the guard at work in a sandbox: its own
    /// network namespace with a fake IMDS, its own child cgroup.
    Demo,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::setup().map(drop),
        Command::Test { args } => tasks::test(&args),
        Command::Demo => tasks::demo(),
    }
}
