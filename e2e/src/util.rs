//! Small helpers the harness modules share: unique names, randomness,
//! running commands, and lock handling.

use std::{
    fs::File,
    io::Read,
    process::Command,
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU32, Ordering},
    },
};

/// One counter for every kind of named resource, so names never repeat within
/// a test process; the pid keeps them apart across processes.
static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// `<prefix>-<pid>-<counter>`, unique on this machine while the process lives.
pub(crate) fn unique_name(prefix: &str) -> String {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// `len` random bytes as lowercase hex, from the kernel's CSPRNG (no `rand`
/// dependency for a few tokens).
pub(crate) fn random_hex(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .unwrap_or_else(|e| panic!("reading /dev/urandom: {e}"));
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs a command to completion; on failure the error names the command and
/// carries its stderr, which is what explains an `ip` failure.
pub(crate) fn run(cmd: &mut Command) -> Result<(), String> {
    let output = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Locks a mutex, ignoring poisoning: a panicking test thread must not turn
/// every later cleanup into a second panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reports a cleanup failure: a panic when the test is otherwise passing (a
/// leak is a defect), only a message when it is already unwinding (a panic in
/// `Drop` during unwinding would abort and hide the first failure).
pub(crate) fn cleanup_failed(what: &str) {
    if std::thread::panicking() {
        eprintln!("cleanup failed: {what}");
    } else {
        panic!("cleanup failed: {what}");
    }
}
