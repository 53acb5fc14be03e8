//! One bench at a time on a machine: two would measure each other (and
//! share the CPUs the client and the listeners are pinned to). The bench
//! holds an exclusive `flock` on a file in /run for its whole run; a second
//! one waits for it, for a bounded time, then gives up.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, Write},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

use super::interrupt;

const PATH: &str = "/run/imds-guard-bench.lock";
/// How long to wait for another bench to finish.
const WAIT: Duration = Duration::from_secs(15 * 60);

/// Held for the bench's whole run; released when dropped (or the process
/// ends).
pub struct Exclusive(#[expect(dead_code, reason = "held for its Drop")] Flock<File>);

pub fn exclusive() -> anyhow::Result<Exclusive> {
    let start = Instant::now();
    let mut told = false;
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(PATH)
            .with_context(|| format!("opening {PATH}"))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                // The holder's pid, for the next bench's message.
                lock.set_len(0)?;
                lock.rewind()?;
                write!(lock, "{}", std::process::id())?;
                return Ok(Exclusive(lock));
            }
            Err((mut file, Errno::EWOULDBLOCK)) => {
                if !told {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    eprintln!(
                        "another imds-guard-bench (pid {}) is running; waiting for it to finish",
                        holder.trim()
                    );
                    told = true;
                }
                if start.elapsed() > WAIT {
                    bail!("another imds-guard-bench held {PATH} for {WAIT:?}");
                }
                interrupt::sleep(Duration::from_secs(1))?;
            }
            Err((_, e)) => return Err(e).with_context(|| format!("locking {PATH}")),
        }
    }
}
