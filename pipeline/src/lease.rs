//! The lease that makes one `cbec` process of a consumer group the active one.
//!
//! The engine runs every input partition in one canonical order (see the README's
//! *Architecture*), so the partitions cannot yet be split between processes. Several
//! processes of one group are one active process and standbys: each joins the group
//! `<group_id>.lease` on the one-partition topic `<group_id>.lease`, and the consumer group
//! gives that partition — the lease — to exactly one member (`cooperative-sticky`: a member
//! that joins later does not take it from the holder). The holder restores the last
//! checkpoint and runs; the others wait. When the holder stops (it leaves the group after
//! its final checkpoint) or dies (its session ends after `lease_session_ms` of silence), the
//! group gives the lease to a standby, which goes on from the checkpoint the holder saved
//! last — the state moves with the partitions; a standby keeps it up to date while it
//! waits — and resumes from its offsets: outputs are again identical to an uninterrupted
//! run after de-duplication by identity.
//!
//! A holder that learns it lost the lease (its session ended: it was stalled, or the
//! brokers could not be reached, say while one restarted) stops at once, saving nothing
//! more, and starts again as a standby: the process replaces itself with a fresh run of the
//! same command (`exec`, same arguments and environment), which waits for the lease and goes
//! on from the last checkpoint, as a restarted process does. Nothing it produced after that
//! checkpoint is lost (the replay produces it again, identical) and the checkpoint store's
//! epochs ([`crate::checkpoint::LocalDirStore`]) keep what it may have saved before noticing
//! apart from the new holder's checkpoints. If the fresh run cannot be started (the binary
//! was replaced on disk), it exits with status 3 instead.

use crate::config::Config;
use crate::metrics::LeaseHeld;
use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Exit status of a process that lost its lease while active and could not start again as
/// a standby.
pub const LOST_EXIT_CODE: i32 = 3;

/// Stops this process at once and starts the same command afresh in its place (same
/// process id, arguments and environment; nothing of this run carried over): the fresh run
/// stands by for the lease and goes on from the last checkpoint. Exits with
/// [`LOST_EXIT_CODE`] if it cannot be started.
fn restart_as_standby() -> ! {
    use std::os::unix::process::CommandExt;
    let err = match std::env::current_exe() {
        Ok(exe) => std::process::Command::new(exe).args(std::env::args_os().skip(1)).exec(),
        Err(e) => e,
    };
    eprintln!("cbec: could not start again as a standby ({err}): exiting");
    std::process::exit(LOST_EXIT_CODE);
}

/// The lease topic (and group) of a configuration: `<group_id>.lease`.
pub fn topic(cfg: &Config) -> String {
    format!("{}.lease", cfg.group_id)
}

/// A client of consumer group `group` as cbec's groups join them: sessions of
/// `lease_session_ms`, `cooperative-sticky` (a member joining later does not take what
/// another holds), static membership with `instance_id`, no automatic commits. The lease
/// group, and the summarize instances' group ([`crate::stage`]).
pub fn member_of(cfg: &Config, group: &str) -> ClientConfig {
    let session = cfg.lease_session_ms.max(1);
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &cfg.brokers)
        .set("group.id", group)
        .set("session.timeout.ms", session.to_string())
        .set("heartbeat.interval.ms", (session / 4).max(50).to_string())
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false");
    if !cfg.instance_id.is_empty() {
        client.set("group.instance.id", &cfg.instance_id);
    }
    client
}

/// A held lease. Dropping it leaves the lease group, so that a standby takes over at once
/// (a static member, `instance_id`, stays in the group until its session ends).
pub struct Lease {
    quit: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Lease {
    /// Joins the lease group and waits until this process holds the lease, saying so on
    /// stderr, calling `while_waiting` every 20 ms meanwhile (a standby keeps its state up
    /// to date there); `None` if `stop` is set first (a signal while standing by).
    pub fn acquire(cfg: &Config, stop: &AtomicBool, mut while_waiting: impl FnMut()) -> anyhow::Result<Option<Lease>> {
        let consumer: BaseConsumer = member_of(cfg, &topic(cfg)).create().context("lease consumer")?;
        let name = topic(cfg);
        consumer.subscribe(&[&name]).with_context(|| format!("subscribing to the lease topic {name}"))?;
        eprintln!(
            "cbec: waiting for the lease of group {} (topic {name}): standing by while another process holds it",
            cfg.group_id
        );
        let held = Arc::new(AtomicBool::new(false));
        let quit = Arc::new(AtomicBool::new(false));
        let (h, q) = (held.clone(), quit.clone());
        let thread = std::thread::Builder::new()
            .name("cbec-lease".into())
            .spawn(move || {
                // Polling serves the group protocol (assignments, heartbeats' results); the
                // lease topic carries no messages. Errors (a session timeout the broker
                // refuses, an unreachable coordinator) are said, each once in a row.
                let mut said = String::new();
                LeaseHeld { held: false }.emit();
                while !q.load(Ordering::Relaxed) {
                    if let Some(Err(e)) = consumer.poll(Duration::from_millis(50)) {
                        let e = e.to_string();
                        if e != said {
                            eprintln!("cbec: lease group: {e}");
                            said = e;
                        }
                    }
                    // A fatal error (another process joined with this `instance_id`) fences
                    // this member: it holds nothing any more.
                    let holds = consumer.client().fatal_error().is_none()
                        && !consumer.assignment_lost()
                        && consumer.assignment().is_ok_and(|a| a.elements().iter().any(|e| e.partition() == 0));
                    if holds {
                        if !h.swap(true, Ordering::AcqRel) {
                            LeaseHeld { held: true }.emit();
                        }
                    } else if h.load(Ordering::Acquire) {
                        let why = if said.is_empty() { String::new() } else { format!("; last error: {said}") };
                        eprintln!(
                            "cbec: lost the lease (its session ended: the group may have given it to another process{why}): stopping at once, starting again as a standby"
                        );
                        restart_as_standby();
                    }
                }
                // Dropping the consumer leaves the group: the lease passes on.
                drop(consumer);
            })
            .context("spawning the lease thread")?;
        let lease = Lease { quit, thread: Some(thread) };
        while !held.load(Ordering::Acquire) {
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            while_waiting();
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("cbec: holding the lease of group {}: active", cfg.group_id);
        Ok(Some(lease))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.quit.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
