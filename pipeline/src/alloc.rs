//! The allocator's one setting cbec changes: freed memory is kept for reuse instead of
//! being returned to the system (mimalloc's `purge_delay` −1; its default returns it after
//! a second). Returning it costs the thread that frees or later reuses it `madvise` calls
//! and the page faults of zeroed pages: with it, the in-process scan→decision p99 at 10,000
//! scans/s ranged from 0.16 to 85 ms between runs, without it 0.12–0.42 ms in eight runs
//! of nine and 1.1 ms in one (`BENCHMARKS.md`, eighth session). The price is a process
//! whose resident memory stays at its peak. `MIMALLOC_PURGE_DELAY` in the environment
//! (e.g. `1000`) takes precedence.

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
}
