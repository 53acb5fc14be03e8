//! `imds-guard detach`: the only way to turn the guard off on purpose.

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::{CliError, DetachArgs, Outcome, out::outln};
use crate::kernel::{
    forward,
    inspect::{Status, is_agent},
    pins::Pins,
};

/// What it says is printed for whoever reads it; a reader that went away
/// (`detach | head -n 1`) must not stop it half-way, so printing errors
/// are ignored here.
pub fn execute(args: &DetachArgs) -> Result<Outcome, CliError> {
    let pins = Pins::new(&args.pin_dir);
    if !pins.dir().exists() {
        let _ = outln!(
            "nothing is pinned at {}: no guard to detach",
            pins.dir().display()
        );
        // The forward table has one name per network namespace, whatever
        // the pin directory: the guard it belongs to may run from another
        // (a --pin-dir with a typo must not open its forward path).
        if matches!(forward::counters(), Ok(Some(_))) {
            let _ = outln!("{}", forward_left(pins.dir()));
        }
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
    let _ = outln!(
        "detached {n} link(s) and removed {}: connections to the metadata service are no longer decided",
        pins.dir().display()
    );
    remove_forward()?;
    if let Some(pid) = agent {
        // It would otherwise keep running with nothing to guard.
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        let _ = outln!("stopped the agent (pid {pid})");
    }
    Ok(Outcome::Success)
}

/// Deletes the forward table of this network namespace, if there is one.
fn remove_forward() -> Result<(), CliError> {
    if forward::remove().map_err(CliError::runtime)? {
        let _ = outln!(
            "removed the forward table (table inet {}): forwarded packets to the metadata \
             service are no longer dropped",
            forward::TABLE
        );
    }
    Ok(())
}

/// Why the forward table stays when nothing is pinned at `dir`, and how
/// to remove it.
fn forward_left(dir: &std::path::Path) -> String {
    format!(
        "the forward table (table inet {table}) of this network namespace is left in place: \
         nothing pinned at {dir} owns it, and a guard pinned elsewhere may run here; detach that \
         guard with its --pin-dir (the default is {default}), or, if no guard runs here, remove \
         the table with: nft delete table inet {table}",
        table = forward::TABLE,
        dir = dir.display(),
        default = super::DEFAULT_PIN_DIR,
    )
}
