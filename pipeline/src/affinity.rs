//! `pin_engine`: the engine thread on a CPU of its own, every other thread of the process
//! on the others.
//!
//! On a small machine the engine thread shares its CPU with the decoding, sink and
//! summarize threads; when it is woken for the next scan and its CPU is taken, the scan
//! waits out the other thread's time slice, and a backlog builds behind it. Pinned, the
//! engine never queues behind them (BENCHMARKS.md, thirteenth session: at 50,000 scans/s a
//! steady-window p99 of 0.54–1.97 ms in nine runs, against 1.19–33 ms unpinned, at 5–15 %
//! less throughput).
//! Off by default: two cbec processes pinned on one machine would share the same CPU. The pin
//! holds while input arrives; at the end of the input every thread gets every CPU back (the
//! month's close after the last input took 1.02 s pinned against 0.65 s unpinned while the
//! pin held to the end: sixteenth session, BENCHMARKS.md).

/// The CPUs this process may run on (its calling thread's).
pub fn allowed_cpus() -> Vec<usize> {
    cpus_of(0).unwrap_or_default()
}

/// The CPUs thread `tid` (0: the calling thread) may run on; `None` when it cannot be
/// asked (it ended).
fn cpus_of(tid: libc::pid_t) -> Option<Vec<usize>> {
    #[allow(unsafe_code)]
    // SAFETY: `set` is a plain bit set of the size passed; the call only writes into it.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        set
    };
    #[allow(unsafe_code)]
    // SAFETY: reads bits of an initialized set, within its size.
    Some((0..libc::CPU_SETSIZE as usize).filter(|c| unsafe { libc::CPU_ISSET(*c, &set) }).collect())
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

/// Sets every thread the process has now, but `except`, to `cpus` (threads started later
/// inherit their starter's CPUs). A thread may have ended since the listing: nothing to set
/// then.
fn set_all(cpus: &[usize], except: libc::pid_t) -> Result<(), String> {
    let tasks = std::fs::read_dir("/proc/self/task").map_err(|e| format!("/proc/self/task: {e}"))?;
    for t in tasks.flatten() {
        if let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<libc::pid_t>().ok())
            && tid != except
        {
            let _ = set_affinity(tid, cpus);
        }
    }
    Ok(())
}

/// Pins the calling thread (the engine) to the last allowed CPU and every other thread the
/// process has now to the rest. Returns the engine's CPU; an error when the process may use
/// fewer than two CPUs.
pub fn pin_engine() -> Result<usize, String> {
    let cpus = BEFORE.get_or_init(allowed_cpus).clone();
    let (engine, others) =
        split(&cpus).ok_or_else(|| format!("needs two CPUs or more, this process may use {}", cpus.len()))?;
    #[allow(unsafe_code)]
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    set_all(&others, me)?;
    set_affinity(0, &[engine]).map_err(|e| format!("engine thread to CPU {engine}: {e}"))?;
    Ok(engine)
}

/// Gives every thread of the process back the CPUs it had before [`pin_engine`] when
/// dropped: at the end of the input (the decisions are made; what remains — the timers due at
/// the end of time, the month's close — is throughput work for every CPU), or when the
/// engine's run ends otherwise.
pub struct Unpin;

impl Drop for Unpin {
    fn drop(&mut self) {
        if let Some(cpus) = BEFORE.get() {
            let _ = set_all(cpus, 0);
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

    /// The CPUs of every thread of the process.
    fn cpus_of_threads() -> Vec<(libc::pid_t, Vec<usize>)> {
        let tids = std::fs::read_dir("/proc/self/task").unwrap().flatten();
        let tids = tids.map(|t| t.file_name().to_str().unwrap().parse::<libc::pid_t>().unwrap());
        tids.filter_map(|tid| Some((tid, cpus_of(tid)?))).collect()
    }

    /// Pinned, the engine thread has its CPU alone and a thread started before has the
    /// others; once unpinned (the end of the input), every thread has every CPU again.
    #[test]
    fn pinning_splits_the_cpus_and_unpinning_gives_every_thread_all_of_them_back() {
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            #[allow(unsafe_code)]
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            (tid, wait.recv())
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        let before = BEFORE.get_or_init(allowed_cpus).clone();
        let Some((engine, others)) = split(&before) else {
            assert!(pin_engine().is_err(), "one CPU: nothing to pin");
            return;
        };
        assert_eq!(pin_engine(), Ok(engine));
        assert_eq!(allowed_cpus(), vec![engine], "the engine thread on its CPU alone");
        let pinned = cpus_of_threads();
        let unpin = Unpin;
        drop(unpin);
        go.send(()).unwrap();
        let (other_tid, _) = other.join().unwrap();
        let of = |all: &[(libc::pid_t, Vec<usize>)]| all.iter().find(|(t, _)| *t == other_tid).map(|(_, c)| c.clone());
        assert_eq!(of(&pinned), Some(others), "a thread started before: the other CPUs");
        let unpinned = cpus_of_threads();
        assert!(unpinned.iter().all(|(_, c)| *c == before), "every thread has every CPU back: {unpinned:?}");
        assert_eq!(allowed_cpus(), before);
    }
}
