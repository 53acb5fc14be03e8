//! The agent's heap: one malloc arena for every thread, and the free
//! pages handed back after what start and reload free (parse trees, BTF,
//! the verifier's logs, the programs' objects as read), which is large
//! next to what the agent keeps.

/// One malloc arena for every thread. glibc gives each thread that
/// allocates its own arena and keeps what it frees there: a reload on the
/// blocking pool would leave a policy's worth of pages in an arena nobody
/// uses again. The agent's threads seldom allocate at once, so one arena
/// costs no waiting worth measuring.
pub fn one_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt sets a tunable; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns the heap's free pages to the kernel, and the pages the
/// programs' objects were read into (`kernel::loader::release_objects`).
/// glibc keeps freed memory for reuse, and what start and reload free
/// (parse trees, BTF) is large next to what the agent keeps.
pub fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; no pointer is touched.
    unsafe {
        libc::malloc_trim(0);
    }
    crate::kernel::loader::release_objects();
}
