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
    let (n, forward) = pins.detach_all().map_err(CliError::runtime)?;
    let _ = outln!(
        "detached {n} link(s) and removed {}: connections to the metadata service are no longer decided",
        pins.dir().display()
    );
    if forward > 0 {
        let _ = outln!(
            "detached the forward program's {forward} link(s): forwarded packets to the metadata \
             service are no longer dropped"
        );
    }
    if let Some(pid) = agent {
        // It would otherwise keep running with nothing to guard, and put
        // back the forward table removed below as soon as nf_tables said
        // so: it goes first (its own table goes with it).
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        if wait_gone(pid) {
            let _ = outln!("stopped the agent (pid {pid})");
        } else {
            let _ = outln!("asked the agent (pid {pid}) to stop; it is still running");
        }
    }
    remove_forward()?;
    Ok(Outcome::Success)
}

/// Waits up to ten seconds for the agent `pid` to be gone (exited, if
/// not yet reaped by its parent); whether it is.
fn wait_gone(pid: u32) -> bool {
    let running = || {
        is_agent(pid)
            && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // `pid (comm) STATE ...`: a zombie has exited.
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with(['Z', 'X']))
            })
    };
    for _ in 0..200 {
        if !running() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    !running()
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
