//! `imds-guard`: parse the command line, run the command, and turn its
//! result into the documented exit code (see `cli/exit.rs`), printing an
//! error once.

use std::process::ExitCode;

use imds_guard::cli;

fn main() -> ExitCode {
    match cli::execute(cli::parse()) {
        Ok(outcome) => outcome.exit_code(),
        Err(e) => {
            cli::report(&e);
            e.exit_code()
        }
    }
}
