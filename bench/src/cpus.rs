//! Where things run: on a machine with two CPUs or more, the measuring
//! client gets the last CPU to itself, and the bench's listeners and the
//! agents share the first. Left to the scheduler, a client and its listener
//! land on one CPU in some loops and on two in others, which moves the
//! connect rate by tens of percent from one loop to the next.

use std::fs;

use nix::{
    sched::{CpuSet, sched_setaffinity},
    unistd::Pid,
};

fn count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The client's CPU, when there is one to spare.
pub fn client() -> Option<usize> {
    let n = count();
    (n >= 2).then(|| n - 1)
}

/// The CPU of listeners and agents, when the client has its own.
pub fn services() -> Option<usize> {
    client().map(|_| 0)
}

/// Pins the calling thread (`tid` 0) or thread `tid` to `cpu`.
pub fn pin(tid: i32, cpu: usize) -> nix::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(tid), &set)
}

/// Pins every thread of process `pid` to the services' CPU (threads it
/// starts later inherit the affinity of the one that starts them).
pub fn pin_process(pid: u32) {
    let Some(cpu) = services() else { return };
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for task in tasks.flatten() {
        if let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) {
            // A thread that just exited is no loss.
            let _ = pin(tid, cpu);
        }
    }
}
