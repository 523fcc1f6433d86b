//! `pin_engine`: the engine thread on a CPU of its own, every other thread of the process
//! on the others.
//!
//! On a small machine the engine thread shares its CPU with the decoding, sink and
//! summarize threads; when it is woken for the next scan and its CPU is taken, the scan
//! waits out the other thread's time slice, and a backlog builds behind it. Pinned, the
//! engine never queues behind them (BENCHMARKS.md, thirteenth session: at 50,000 scans/s a
//! steady-window p99 of 0.54–1.97 ms in nine runs, against 1.19–33 ms unpinned, at 5–15 %
//! less throughput).
//! Off by default: two cbec processes pinned on one machine would share the same CPU.

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    #[allow(unsafe_code)]
    // SAFETY: `set` is a plain bit set of the size passed; the call only writes into it.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        set
    };
    #[allow(unsafe_code)]
    // SAFETY: reads bits of an initialized set, within its size.
    (0..libc::CPU_SETSIZE as usize).filter(|c| unsafe { libc::CPU_ISSET(*c, &set) }).collect()
}

/// The engine's CPU (the last one allowed) and the others, when there are at least two.
pub fn split(cpus: &[usize]) -> Option<(usize, Vec<usize>)> {
    let (engine, others) = cpus.split_last()?;
    (!others.is_empty()).then(|| (*engine, others.to_vec()))
}

/// Lets thread `tid` (0: the calling thread) run on `cpus` only.
fn set_affinity(tid: libc::pid_t, cpus: &[usize]) -> std::io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: `set` is a plain bit set of the size passed; CPU_SET stays within it for
    // CPUs the kernel reported.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in cpus {
            libc::CPU_SET(*c, &mut set);
        }
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// The CPUs the process could use before anything was pinned (a second run in the same
/// process, as in the benches, splits those again, not its pinned thread's one CPU).
static BEFORE: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();

/// Pins the calling thread (the engine) to the last allowed CPU and every other thread the
/// process has now to the rest (threads started later inherit their starter's CPUs).
/// Returns the engine's CPU; an error when the process may use fewer than two CPUs.
pub fn pin_engine() -> Result<usize, String> {
    let cpus = BEFORE.get_or_init(allowed_cpus).clone();
    let (engine, others) =
        split(&cpus).ok_or_else(|| format!("needs two CPUs or more, this process may use {}", cpus.len()))?;
    #[allow(unsafe_code)]
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    let tasks = std::fs::read_dir("/proc/self/task").map_err(|e| format!("/proc/self/task: {e}"))?;
    for t in tasks.flatten() {
        if let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<libc::pid_t>().ok())
            && tid != me
        {
            // A thread may have ended since the listing: nothing to pin then.
            let _ = set_affinity(tid, &others);
        }
    }
    set_affinity(0, &[engine]).map_err(|e| format!("engine thread to CPU {engine}: {e}"))?;
    Ok(engine)
}

/// Gives the thread that drops it back the CPUs the process had before [`pin_engine`]
/// (held by the engine's run: once it is over, what the thread does next is not the
/// engine's).
pub struct Unpin;

impl Drop for Unpin {
    fn drop(&mut self) {
        if let Some(cpus) = BEFORE.get() {
            let _ = set_affinity(0, cpus);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_takes_the_last_cpu_when_there_are_two_or_more() {
        assert_eq!(split(&[0, 1]), Some((1, vec![0])));
        assert_eq!(split(&[2, 5, 7]), Some((7, vec![2, 5])));
        assert_eq!(split(&[3]), None);
        assert_eq!(split(&[]), None);
        assert!(!allowed_cpus().is_empty());
    }
}
