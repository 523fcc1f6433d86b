//! The memory settings cbec changes, first thing in `main` (the `cbec` binary and the
//! end-to-end bench alike):
//!
//! * Freed memory is kept for reuse instead of being returned to the system (mimalloc's
//!   `purge_delay` −1; its default returns it after a second). Returning it costs the thread
//!   that frees or later reuses it `madvise` calls and the page faults of zeroed pages: with
//!   it, the in-process scan→decision p99 at 10,000 scans/s ranged from 0.16 to 85 ms between
//!   runs, without it 0.12–0.42 ms in eight runs of nine and 1.1 ms in one (`BENCHMARKS.md`,
//!   eighth session). The price is a process whose resident memory stays at its peak.
//!   `MIMALLOC_PURGE_DELAY` in the environment (e.g. `1000`) takes precedence.
//! * Transparent huge pages are off for the process (`prctl(PR_SET_THP_DISABLE)`, as Redis
//!   does by default for the same reason). mimalloc asks for them on its arenas, and the first
//!   touch of a huge page zeroes 2 MiB at once on the faulting thread: on the virtual machines
//!   measured here ≈ 5.7 ms each (the host backs the page afresh), on the engine thread a stall
//!   every decision behind it waits out. With them off, at 10,000 scans/s the p99.9 went from
//!   2.8–12.7 ms to 0.56–6.2 ms (seven runs of eight at most 1.9 ms) and the worst decision
//!   from 7.2–15.6 ms to 2.1–10.1 ms, for ≈ 8 % more engine time per message (TLB misses;
//!   `BENCHMARKS.md`, twelfth session). `MIMALLOC_ALLOW_THP` in the environment (e.g. `1`)
//!   leaves the system's setting in force.

/// mimalloc's `mi_option_purge_delay` (the 16th option of `mi_option_e` in mimalloc v3, the
/// version `libmimalloc-sys` builds by default; a test checks its built-in default).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory for reuse unless `MIMALLOC_PURGE_DELAY` is set; true when it did.
/// Called first thing in `main`.
pub fn keep_freed_memory() -> bool {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return false;
    }
    // SAFETY: sets an integer option of the allocator; mimalloc reads it when it schedules
    // a purge, from any thread.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, -1)
    };
    true
}

/// Every memory setting of this module, as `main` makes them (the `cbec` binary and the
/// end-to-end bench call this one function, so they run with the same settings).
pub fn set_up() {
    keep_freed_memory();
    no_transparent_huge_pages();
}

/// Turns transparent huge pages off for this process (and the processes it starts) unless
/// `MIMALLOC_ALLOW_THP` is set; true when it did. Called first thing in `main`; it applies to
/// memory mapped before the call too (the kernel checks the process's flag at each fault).
pub fn no_transparent_huge_pages() -> bool {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return false;
    }
    #[cfg(target_os = "linux")]
    return thp_prctl(libc::PR_SET_THP_DISABLE, 1) == 0;
    #[cfg(not(target_os = "linux"))]
    false
}

/// True when transparent huge pages are off for this process (never, off Linux).
pub fn thp_disabled() -> bool {
    #[cfg(target_os = "linux")]
    return thp_prctl(libc::PR_GET_THP_DISABLE, 0) == 1;
    #[cfg(not(target_os = "linux"))]
    false
}

/// `prctl(op, arg, 0, 0, 0)` for the process's transparent-huge-page flag.
#[cfg(target_os = "linux")]
fn thp_prctl(op: libc::c_int, arg: libc::c_ulong) -> libc::c_int {
    // SAFETY: `PR_SET_THP_DISABLE` / `PR_GET_THP_DISABLE` set or read a flag of the calling
    // process; neither reads nor writes memory of ours.
    #[allow(unsafe_code)]
    unsafe {
        libc::prctl(op, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong)
    }
}

/// The allocator's purge delay now (ms; −1: never).
#[allow(clippy::useless_conversion)] // `c_long` is 32 bits on some targets
pub fn purge_delay() -> i64 {
    // SAFETY: reads an integer option of the allocator.
    #[allow(unsafe_code)]
    let v = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
    i64::from(v)
}

#[cfg(test)]
mod tests {
    /// The option set is the purge delay: before, it has mimalloc v3's default for that
    /// option alone (1000 ms); after, −1.
    #[test]
    fn freed_memory_is_kept_unless_the_environment_says_otherwise() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            eprintln!("SKIPPED: MIMALLOC_PURGE_DELAY is set");
            return;
        }
        assert_eq!(super::purge_delay(), 1000, "not mimalloc v3's purge delay");
        assert!(super::keep_freed_memory());
        assert_eq!(super::purge_delay(), -1);
    }

    /// Off after the call (the flag is the process's, so this test owns it in its process:
    /// the pipeline's tests run threads of one process, and none of them reads it).
    #[cfg(target_os = "linux")]
    #[test]
    fn transparent_huge_pages_are_turned_off_unless_the_environment_says_otherwise() {
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
            eprintln!("SKIPPED: MIMALLOC_ALLOW_THP is set");
            return;
        }
        assert!(super::no_transparent_huge_pages());
        assert!(super::thp_disabled());
    }
}
