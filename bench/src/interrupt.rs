//! Ctrl-C and SIGTERM end the bench between two runs, through the normal
//! error path, so that every guard type drops: namespaces, cgroups, agents,
//! bpffs mounts, and the bpf run-time accounting are all put back.
//! The default action would kill the process and leak all of them.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::bail;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the handlers (workers and agents, being exec'd, get the
/// default action back: they die or stop, and the bench sees it).
pub fn install() -> anyhow::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe, and replaces no handler anything relies on.
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

/// Fails once a signal asked the bench to stop.
pub fn check() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps up to `d`, in small steps, failing as soon as interrupted.
pub fn sleep(d: std::time::Duration) -> anyhow::Result<()> {
    let until = std::time::Instant::now() + d;
    loop {
        check()?;
        let now = std::time::Instant::now();
        if now >= until {
            return Ok(());
        }
        std::thread::sleep((until - now).min(std::time::Duration::from_millis(50)));
    }
}
