//! `imds-guard detach`: the only way to turn the guard off on purpose.

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::{CliError, DetachArgs, Outcome};
use crate::kernel::{
    forward,
    inspect::{Status, is_agent},
    pins::Pins,
};

pub fn execute(args: &DetachArgs) -> Result<Outcome, CliError> {
    let pins = Pins::new(&args.pin_dir);
    if !pins.dir().exists() {
        println!(
            "nothing is pinned at {}: no guard to detach",
            pins.dir().display()
        );
        remove_forward()?;
        return Ok(Outcome::Success);
    }
    // Read who runs it before its pins go: the pid the live agent wrote,
    // if an agent holds the lock and that pid is an imds-guard process.
    let agent = pins
        .locked()
        .then(|| Status::read(&pins).ok().and_then(|s| s.config))
        .flatten()
        .map(|(_, c)| c.agent_pid)
        .filter(|&pid| is_agent(pid));
    let n = pins.detach_all().map_err(CliError::runtime)?;
    println!(
        "detached {n} link(s) and removed {}: connections to the metadata service are no longer decided",
        pins.dir().display()
    );
    remove_forward()?;
    if let Some(pid) = agent {
        // It would otherwise keep running with nothing to guard.
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        println!("stopped the agent (pid {pid})");
    }
    Ok(Outcome::Success)
}

/// Deletes the forward table of this network namespace, if there is one.
fn remove_forward() -> Result<(), CliError> {
    if forward::remove().map_err(CliError::runtime)? {
        println!(
            "removed the forward table (table inet {}): forwarded packets to the metadata \
             service are no longer dropped",
            forward::TABLE
        );
    }
    Ok(())
}
