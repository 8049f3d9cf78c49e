//! CPU priority of the threads that read, parse and encode a load.
//!
//! Nexus usually shares its cores with the PostgreSQL it feeds and, in the
//! service, with the requests it answers. Parsing and encoding are the
//! work that can wait: a load's queue of encoded batches (tens of MiB)
//! lets them fall behind for a moment and catch up when a core is free.
//! Run at the default priority they took half a core from the file's hash
//! while a load starts — the hash decides when the first COPY may begin,
//! so the database waited ~80 ms longer for its first rows on 2 cores —
//! and from the database and the request handlers afterwards. A nice value
//! of 10 gives a runnable thread at the default priority ~90% of a shared
//! core (the kernel's weights 1024 : 110); the stages still get every
//! cycle no one else wants.

/// The nice value of a load's stage threads.
pub const STAGE_NICE: i32 = 10;

/// Lowers the calling thread's priority to `nice` (Linux schedules threads
/// one by one; elsewhere this does nothing). Raising it back needs a
/// privilege, so this is for threads that do nothing else.
pub fn lower_this_thread(nice: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: a plain system call on this thread's own id; no memory is shared.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// The calling thread's nice value (0 where threads have none of their own).
pub fn this_thread_nice() -> i32 {
    #[cfg(target_os = "linux")]
    // SAFETY: as above.
    unsafe {
        libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
    }
    #[cfg(not(target_os = "linux"))]
    0
}
