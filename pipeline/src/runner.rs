//! The runtime core shared by the embedded and Kafka modes.
//!
//! ```text
//! source threads (read + decode, one per topic or consumer) ─bounded─▶ engine thread
//!   (sequencer → declare/clear/seal engine) ─bounded─▶ sink thread
//!                                  └─bounded─▶ summarize thread ─▶ sink thread
//! ```
//! The engine thread pulls from the source that holds the watermark back, so the
//! sequencer's buffer stays bounded with in-order sources; if it still exceeds
//! `queue_capacity * 8` items (a badly lagging partition), the oldest items are released
//! early and counted (`cbec_sequencer_forced_total`). Sorting decisions are handed to the
//! sink as soon as the scan is processed; their latency (source read → decision) is
//! measured here.

use crate::checkpoint::{Checkpoint, CheckpointStore, Offsets, SavedChanges, StateSave};
use crate::metrics as m;
use crate::record::Record;
use crate::sequencer::{Sequencer, SourceId};
use crate::sink::Sink;
use crate::summary_stage::{self, SumMsg};
use anyhow::Context;
use cbec_operators::engine::{Engine, EngineChanges, EngineCut, Out};
use cbec_operators::rules::Rules;
use cbec_operators::summarize::{Summarize, SummarizeCut};
use cbec_operators::tracked::{Cut, Incremental};
use cbec_schemas::hs::Nomenclature;
use cbec_schemas::{DeadLetter, Decoded, Decoder, Entity, EventTime, Topic};
use crossbeam_channel::{Receiver, RecvTimeoutError, Select, Sender, TrySendError, bounded};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A decoded input entity with where it came from.
#[derive(Debug)]
pub struct Event {
    /// Topic the entity came from.
    pub topic: Topic,
    /// Source (topic, partition) as the sequencer orders it.
    pub source: SourceId,
    /// Offset in the source (Kafka offset, or message number in a file).
    pub offset: i64,
    /// Entity index inside an XML document.
    pub sub: u8,
    /// Event time.
    pub time: EventTime,
    /// The entity.
    pub entity: Entity,
    /// When the source read it (latency measurement).
    pub read_at: Instant,
}

/// What sources send to the engine thread.
#[derive(Debug)]
pub enum EngineMsg {
    /// A decoded entity.
    Event(Event),
    /// A rejected message (already a dead letter), with its source and offset.
    Dead(SourceId, i64, Box<DeadLetter>),
    /// A source reached its end for now (idle) or has data again.
    Idle(SourceId, bool),
    /// A source will send nothing more.
    Done(SourceId),
}

/// Messages from a source travel in batches (one channel operation per batch, not per
/// message); a batch of 1 for paced, latency-measuring sources.
pub type Batch = Vec<EngineMsg>;

/// Collects a source's messages into batches for its bounded queue.
pub struct Batcher {
    tx: Sender<Batch>,
    buf: Batch,
    max: usize,
}

impl Batcher {
    /// Batches of up to `max` messages.
    pub fn new(tx: Sender<Batch>, max: usize) -> Batcher {
        Batcher { tx, buf: Vec::with_capacity(max.max(1)), max: max.max(1) }
    }

    /// Adds a message; sends the batch when full (blocking while the queue is full).
    pub fn push(&mut self, m: EngineMsg) {
        self.buf.push(m);
        if self.buf.len() >= self.max {
            self.flush();
        }
    }

    /// Sends what is buffered.
    pub fn flush(&mut self) {
        if !self.buf.is_empty() {
            let b = std::mem::replace(&mut self.buf, Vec::with_capacity(self.max));
            let _ = self.tx.send(b);
        }
    }
}

/// Batches in flight per source queue for a capacity of `messages`.
pub fn batches_for(messages: usize, batch: usize) -> usize {
    (messages / batch.max(1)).max(4)
}

/// What the engine thread sends to the sink thread.
pub enum SinkMsg {
    /// Records to write, in order (one channel operation per batch; a sorting decision
    /// ends its batch at once, as [`SinkMsg::Decided`]).
    Records(Vec<Record>),
    /// Records ending with a sorting decision, and when its scan was read: the decision's
    /// latency is taken once the sink has written it (handed it to the producer or the
    /// file), not when the engine made it.
    Decided(Vec<Record>, Instant),
    /// Flush, then acknowledge (after any pending [`SinkMsg::AfterDurable`] work is done).
    Flush(Sender<anyhow::Result<()>>),
    /// Work to run once every record sent before this message is durable (a checkpoint
    /// save): the sink thread makes them durable or hands a wait for it ([`Sink::durable`])
    /// with the work to a writer thread, so neither the engine nor the records behind it
    /// wait for the save (nor, with Kafka, for the deliveries).
    AfterDurable(Box<dyn FnOnce() -> anyhow::Result<()> + Send>),
}

/// What the checkpoint writer thread is given.
enum WriterJob {
    Run(Box<dyn FnOnce() -> anyhow::Result<()> + Send>),
    Barrier(Sender<()>),
}

fn spawn_writer() -> (Sender<WriterJob>, Receiver<anyhow::Error>, std::thread::JoinHandle<()>) {
    // One job in flight and one waiting: a slow store slows the sink, and so the engine.
    let (tx, rx) = bounded::<WriterJob>(1);
    let (etx, erx) = bounded::<anyhow::Error>(1);
    let h = std::thread::Builder::new()
        .name("cbec-checkpoint".into())
        .spawn(move || {
            // After a failed save the writer runs no further saves (a later checkpoint must
            // not commit past a lost one) but keeps answering barriers until the sink hangs
            // up: a barrier queued behind the failing job must not wait forever.
            let mut failed = false;
            for job in rx {
                match job {
                    WriterJob::Run(f) if !failed => {
                        if let Err(e) = f() {
                            failed = true;
                            let _ = etx.send(e);
                        }
                    }
                    WriterJob::Run(_) => {}
                    WriterJob::Barrier(ack) => {
                        let _ = ack.send(());
                    }
                }
            }
        })
        .expect("spawn checkpoint writer");
    (tx, erx, h)
}

/// When a message was sent, as its source records it, and how far after that its event
/// times may lie (`max_lead_ms`). A message dated further ahead is dead-lettered
/// (`future_time`): released in event-time order it would move event time there for every
/// key (payment waits fire, the retention drops state, later messages count as expired).
/// The reference travels with the message (a Kafka record's timestamp, a file's
/// modification time, a generated message's arrival), so a replay decides alike.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    /// When the message was sent.
    pub at: EventTime,
    /// What `at` is, for the dead letter's reason.
    pub by: &'static str,
    /// The largest lead of event time over `at`, in milliseconds.
    pub max_lead_ms: i64,
}

impl Sent {
    /// The reference of a message sent at `at` (Unix milliseconds, `by` saying what that
    /// is), or `None` when there is no bound (`max_lead_ms` 0) or no time.
    pub fn new(at: Option<i64>, by: &'static str, max_lead_ms: u64) -> Option<Sent> {
        let max_lead_ms = i64::try_from(max_lead_ms).ok().filter(|m| *m > 0)?;
        Some(Sent { at: EventTime(at?), by, max_lead_ms })
    }

    /// The time a file was last written, as a reference for its messages.
    pub fn file_written(path: &std::path::Path, max_lead_ms: u64) -> Option<Sent> {
        let ms = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_millis()).ok());
        Sent::new(ms, "the file's modification time", max_lead_ms)
    }

    /// The reference of a generated message that arrived at `at` (Unix milliseconds).
    pub fn arrived(at: i64, max_lead_ms: u64) -> Option<Sent> {
        Sent::new(Some(at), "its arrival in the generated story", max_lead_ms)
    }

    /// `future_time` when `t` lies more than the bound after the sending.
    pub fn check(&self, t: EventTime) -> Result<(), cbec_schemas::DecodeError> {
        if t.0 <= self.at.0.saturating_add(self.max_lead_ms) {
            return Ok(());
        }
        Err(cbec_schemas::DecodeError::new(
            cbec_schemas::ErrorCode::FutureTime,
            format!(
                "event time {} is more than max_lead_ms ({} ms) after the message was sent ({}, {}): taken as given it would move event time there for every key",
                t.to_rfc3339(),
                self.max_lead_ms,
                self.by,
                self.at.to_rfc3339()
            ),
        ))
    }
}

/// Decodes one message and hands its entities or dead letters to `send`; `sent` bounds
/// how far ahead its event times may lie ([`Sent`]).
#[allow(clippy::too_many_arguments)]
pub fn decode_message(
    decoder: &mut Decoder,
    topic: Topic,
    topic_name: &str,
    source: SourceId,
    offset: i64,
    key: Option<&[u8]>,
    payload: &[u8],
    sent: Option<Sent>,
    read_at: Instant,
    send: &mut dyn FnMut(EngineMsg),
) {
    let dead = |e: &cbec_schemas::DecodeError, idx: Option<u32>| {
        let mut d = DeadLetter::new(topic_name, source.1, offset, key, e, payload);
        d.entity_index = idx;
        EngineMsg::Dead(source, offset, Box::new(d))
    };
    let check = |e: Entity| -> Result<Entity, cbec_schemas::DecodeError> {
        if matches!(e, Entity::WayBill(_)) {
            return Err(cbec_schemas::DecodeError::new(
                cbec_schemas::ErrorCode::WrongEntity,
                "CEB607 is not an input of any cbec topic",
            ));
        }
        if let Some(s) = &sent {
            s.check(e.event_time())?;
        }
        Ok(e)
    };
    match decoder.decode(topic, payload) {
        Decoded::One(r) => match r.and_then(check) {
            Ok(e) => send(EngineMsg::Event(Event {
                topic,
                source,
                offset,
                sub: 0,
                time: e.event_time(),
                entity: e,
                read_at,
            })),
            Err(e) => send(dead(&e, None)),
        },
        Decoded::Document(doc) => {
            for (i, r) in doc.entities.into_iter().enumerate() {
                match r.and_then(check) {
                    Ok(e) => send(EngineMsg::Event(Event {
                        topic,
                        source,
                        offset,
                        sub: i as u8,
                        time: e.event_time(),
                        entity: e,
                        read_at,
                    })),
                    Err(e) => send(dead(&e, Some(i as u32))),
                }
            }
        }
        Decoded::Rejected(e) => send(dead(&e, None)),
    }
}

/// A progress callback, called about once a second with the counts so far.
pub type Progress = Box<dyn FnMut(&RunStats) + Send>;

/// The `p` quantile (0..=1) of sorted values: the nearest rank, `None` when empty.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    Some(sorted[((last as f64 * p.clamp(0.0, 1.0)).round() as usize).min(last)])
}

/// Latencies held per run at most (16 MiB): a run's first 4,194,304 decisions exactly, after
/// that a uniform sample of them. Held whole, they grew by 4 bytes a decision for as long as
/// a Kafka-mode process ran.
pub const LATENCIES_KEPT: usize = 1 << 22;

/// Appends the `seen`-th value `x` to `kept` when it falls on the stride (`*stride` 0 counts
/// as 1); when `kept` reaches `cap`, every other value is dropped and the stride doubles, so
/// `kept` holds the values whose position is a multiple of the stride, in order.
fn keep_sampled(kept: &mut Vec<u32>, stride: &mut u32, seen: &mut u64, cap: usize, x: u32) {
    *stride = (*stride).max(1);
    if (*seen).is_multiple_of(u64::from(*stride)) {
        kept.push(x);
    }
    *seen += 1;
    if kept.len() >= cap.max(2) {
        let mut i = 0;
        kept.retain(|_| {
            i += 1;
            i % 2 == 1
        });
        *stride = stride.saturating_mul(2);
    }
}

/// Scan → decision latencies in microseconds, in decision order: every decision's until
/// [`LATENCIES_KEPT`] are held, then every `stride`-th (see [`Latencies::record`]), so a
/// process that runs for days holds a bounded sample.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    /// The latencies held.
    pub us: Vec<u32>,
    /// 1 while every decision's latency is in `us`; 2, 4, … once it holds every 2nd, 4th, …
    /// (a uniform sample in order).
    pub stride: u32,
    /// Decisions whose latency was measured (all of them, sampled or not).
    pub timed: u64,
}

impl Latencies {
    /// Records one decision's latency (µs): every one until [`LATENCIES_KEPT`], then a
    /// uniform sample.
    pub fn record(&mut self, us: u32) {
        keep_sampled(&mut self.us, &mut self.stride, &mut self.timed, LATENCIES_KEPT, us);
    }

    /// Percentile (over the sample once it is one).
    pub fn pct(&self, p: f64) -> Option<u32> {
        let mut v = self.us.clone();
        v.sort_unstable();
        percentile(&v, p)
    }
}

/// Counts and latencies of a run.
#[derive(Debug, Default, Clone)]
pub struct RunStats {
    /// Input entities per topic.
    pub input: BTreeMap<&'static str, u64>,
    /// Output records per topic.
    pub output: BTreeMap<&'static str, u64>,
    /// Dead letters per code.
    pub dead: BTreeMap<String, u64>,
    /// Sorting decisions per port.
    pub ports: BTreeMap<String, u64>,
    /// Channel decisions (red, total).
    pub red: (u64, u64),
    /// Scan → decision latencies up to when the sink thread wrote the decision (handed it
    /// to the producer or the file).
    pub latencies: Latencies,
    /// The same decisions' latencies up to when the engine thread made them, before the
    /// hand-over to the sink thread: where a decision's time went.
    pub made: Latencies,
    /// The input was read as fast as it decoded (embedded files or generated messages, not
    /// paced): a scan's latency includes its wait behind the input read before it.
    pub read_ahead: bool,
    /// A summarize instance's run (stages in separate processes): it reads only the exited
    /// lists handed over and builds summaries; an instance that held no partition read nothing.
    pub summarize_instance: bool,
    /// Items released early by the sequencer bound.
    pub forced: u64,
    /// Keyed state bytes at the end: (declare, clear, summarize).
    pub state_bytes: (usize, usize, usize),
    /// Keys with state at the end: (orders, parcels).
    pub keys: (usize, usize),
    /// Keys whose state the retention dropped: (orders, parcels).
    pub expired: (u64, u64),
    /// Officer controls held at the end: (all, aimed at one list, order or parcel).
    pub controls: (usize, usize),
    /// Of the records on `cbec.summaries`, withdrawals of lists returned after their
    /// declaration was made.
    pub withdrawals: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// The longest the engine thread stopped to copy its state for a checkpoint.
    pub checkpoint_pause: Duration,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Wall time until the last input was processed: the run without what follows the end
    /// of a finite input (every timer due, the closing of open periods: a month's summary
    /// declarations at once) and the final flush. The sustained input rate divides by it.
    pub input_elapsed: Duration,
}

impl RunStats {
    /// Messages in.
    pub fn total_in(&self) -> u64 {
        self.input.values().sum::<u64>() + self.dead.values().sum::<u64>()
    }

    /// The run's stats with the decision latencies its sink thread took.
    pub fn timed(self, latencies: Latencies) -> RunStats {
        RunStats { latencies, ..self }
    }
}

/// The sink thread's loop: records to the sink; checkpoint work to the writer once what
/// precedes it is flushed; a flush request answered after the writer has caught up.
fn sink_loop(
    rx: Receiver<SinkMsg>,
    sink: &mut dyn Sink,
    jobs: &Sender<WriterJob>,
    errors: &Receiver<anyhow::Error>,
    (timed, histogram): (&mut Latencies, &m::DecisionLatency),
) -> anyhow::Result<()> {
    let writer_failed = || errors.try_recv().ok().map(|e| e.context("checkpoint writer"));
    let mut poll = Poll::new();
    while let Some(msg) = poll.next(&rx) {
        if let Some(e) = writer_failed() {
            // A flush waiting here is answered with the failure (not with a hang-up, which
            // its caller could only report as "sink stopped").
            if let SinkMsg::Flush(ack) = msg {
                let _ = ack.send(Err(anyhow::anyhow!("{e:#}")));
            }
            return Err(e);
        }
        match msg {
            SinkMsg::Records(rs) => {
                for r in &rs {
                    sink.write(r)?;
                }
            }
            SinkMsg::Decided(rs, read_at) => {
                for r in &rs {
                    sink.write(r)?;
                }
                let us = read_at.elapsed().as_micros().min(u32::MAX as u128) as u32;
                timed.record(us);
                histogram.record(us as f64 / 1e6);
            }
            SinkMsg::AfterDurable(f) => {
                let job = match sink.durable()? {
                    None => f,
                    Some(wait) => Box::new(move || {
                        wait()?;
                        f()
                    }),
                };
                jobs.send(WriterJob::Run(job)).map_err(|_| anyhow::anyhow!("checkpoint writer stopped"))?;
            }
            SinkMsg::Flush(ack) => {
                let mut res = sink.flush();
                let (btx, brx) = bounded(1);
                if jobs.send(WriterJob::Barrier(btx)).is_ok() {
                    let _ = brx.recv();
                }
                if let (Ok(()), Some(e)) = (&res, writer_failed()) {
                    res = Err(e);
                }
                let failed = res.as_ref().err().map(|e| format!("{e:#}"));
                let _ = ack.send(res);
                if let Some(e) = failed {
                    anyhow::bail!("sink flush failed: {e}");
                }
            }
        }
    }
    sink.flush()
}

/// How the sink thread waits for records. While they come fast (at least
/// [`Poll::BUSY_RATE`] messages a second over the last [`Poll::WINDOW`]), it looks every
/// [`Poll::NAP`] without being woken, and after [`Poll::IDLE`] without any it blocks until
/// the engine's next send wakes it. While they come slower, it blocks at once. A thread
/// blocked in a channel's receive is woken by every send, a system call on the engine
/// thread (and on a virtual machine an inter-processor interrupt): at 50,000 sorting
/// decisions a second, each shipped alone, that was ≈ 18 % of the engine thread's time
/// (`BENCHMARKS.md`, eighteenth session). At low rates the wake-ups cost little and the
/// nap (≈ 90 µs with Linux's default timer slack) would be most of a decision's latency.
struct Poll {
    idle_since: Option<Instant>,
    /// Start of the window messages are counted over.
    window: Instant,
    /// Messages received in it.
    seen: u64,
    /// The last window's rate was at least [`Poll::BUSY_RATE`]: poll, do not block.
    busy: bool,
}

impl Poll {
    const NAP: Duration = Duration::from_micros(20);
    const IDLE: Duration = Duration::from_millis(2);
    const WINDOW: Duration = Duration::from_millis(10);
    /// Messages a second from which the sink polls. The engine ships what a round of input
    /// produced after each round, so the sink receives about 35,000 messages a second at
    /// 10,000 scans/s (55,000 input messages a second with the rest of the flow), where
    /// blocking costs little, 50,000–70,000 at 20,000 scans/s, 80,000–100,000 at 30,000,
    /// and 110,000–130,000 and 130,000–160,000 at 40,000 and 50,000, where polling holds
    /// the tail (`BENCHMARKS.md`, twenty-first session).
    const BUSY_RATE: u64 = 100_000;

    fn new() -> Poll {
        Poll { idle_since: None, window: Instant::now(), seen: 0, busy: false }
    }

    /// At the end of a window (`now` at least [`Poll::WINDOW`] after its start): whether
    /// its messages came at the busy rate decides how to wait until the next one ends.
    fn observe(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window);
        if elapsed >= Self::WINDOW {
            self.busy = self.seen as u128 * 1_000_000 >= Self::BUSY_RATE as u128 * elapsed.as_micros();
            self.window = now;
            self.seen = 0;
        }
    }

    /// The next message; `None` once every sender is gone.
    fn next<T>(&mut self, rx: &Receiver<T>) -> Option<T> {
        loop {
            match rx.try_recv() {
                Ok(m) => {
                    self.idle_since = None;
                    self.seen += 1;
                    return Some(m);
                }
                Err(crossbeam_channel::TryRecvError::Disconnected) => return None,
                Err(crossbeam_channel::TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            self.observe(now);
            let since = *self.idle_since.get_or_insert(now);
            if self.busy && now.duration_since(since) < Self::IDLE {
                std::thread::sleep(Self::NAP);
            } else {
                let m = rx.recv().ok();
                self.idle_since = None;
                self.seen += u64::from(m.is_some());
                return m;
            }
        }
    }
}

/// Starts the sink thread (and the checkpoint writer thread behind it). It ends with the
/// latencies of the decisions it wrote ([`RunStats::timed`]).
pub fn spawn_sink(
    mut sink: Box<dyn Sink>,
    cap: usize,
) -> (Sender<SinkMsg>, std::thread::JoinHandle<anyhow::Result<Latencies>>) {
    let (tx, rx) = bounded::<SinkMsg>(cap);
    let histogram = m::DecisionLatency::register();
    let h = std::thread::Builder::new()
        .name("cbec-sink".into())
        .spawn(move || {
            let (jobs, errors, writer) = spawn_writer();
            let mut timed = Latencies::default();
            let res = sink_loop(rx, sink.as_mut(), &jobs, &errors, (&mut timed, &histogram));
            drop(jobs);
            let _ = writer.join();
            match (res, errors.try_recv()) {
                (Err(e), _) => Err(e),
                (Ok(()), Ok(e)) => Err(e.context("checkpoint writer")),
                (Ok(()), Err(_)) => Ok(timed),
            }
        })
        .expect("spawn sink thread");
    (tx, h)
}

/// The engine thread's inputs and policies.
pub struct EngineRun {
    /// Rules.
    pub rules: Rules,
    /// HS nomenclature.
    pub hs: Nomenclature,
    /// Partitions.
    pub partitions: usize,
    /// Allowed lateness across sources.
    pub lateness_ms: i64,
    /// Sequencer bound before forcing.
    pub max_buffered: usize,
    /// Keys the keyed state is sized for up front.
    pub state_capacity: usize,
    /// One receiver per source group, with the sources it carries.
    pub inputs: Vec<(Vec<SourceId>, Receiver<Batch>)>,
    /// Output.
    pub sink: Sender<SinkMsg>,
    /// When every source is done: advance event time to the end (finite input).
    pub end_of_time_when_done: bool,
    /// Checkpointing, with its interval.
    pub checkpoint: Option<(Arc<dyn CheckpointStore>, Duration)>,
    /// Where each checkpoint leaves its offsets, to commit to the consumer group: the
    /// latest only (an older one not committed yet is replaced).
    pub commits: Option<Arc<Mutex<Option<Offsets>>>>,
    /// Stop request (SIGINT/SIGTERM): drain, checkpoint, return.
    pub stop: Arc<AtomicBool>,
    /// Progress callback, about once a second.
    pub progress: Option<Progress>,
    /// Topic names for checkpoints.
    pub topic_names: HashMap<Topic, String>,
    /// Summarize in other processes: exits and event time go to the sink for the topic
    /// `<group_id>.exited` (named here) with this many partitions ([`crate::stage`]).
    pub exits_to: Option<(String, usize)>,
    /// Pin the engine thread to a CPU of its own ([`crate::affinity`]).
    pub pin_engine: bool,
}

impl EngineRun {
    /// A run of `inputs` into `sink` with the configuration's settings: finite input
    /// (end of time when every source is done), no checkpoints, no progress callback.
    pub fn new(
        cfg: &crate::config::Config,
        hs: Nomenclature,
        inputs: Vec<(Vec<SourceId>, Receiver<Batch>)>,
        sink: Sender<SinkMsg>,
    ) -> EngineRun {
        EngineRun {
            rules: cfg.rules.clone(),
            hs,
            partitions: cfg.partitions,
            lateness_ms: cfg.lateness_ms,
            max_buffered: cfg.queue_capacity * 8,
            state_capacity: cfg.state_capacity,
            pin_engine: cfg.pin_engine,
            inputs,
            sink,
            end_of_time_when_done: true,
            checkpoint: None,
            commits: None,
            stop: Arc::new(AtomicBool::new(false)),
            progress: None,
            topic_names: Topic::ALL.iter().map(|t| (*t, cfg.input_topic(*t))).collect(),
            exits_to: None,
        }
    }
}

struct State {
    engine: Engine,
    /// The summarize stage's queue, and what goes into it next (see [`State::ship`]).
    summarize: Sender<Vec<SumMsg>>,
    to_summarize: Vec<SumMsg>,
    /// When `to_summarize` was last handed over.
    summarized_at: Instant,
    stats: RunStats,
    consumed: HashMap<SourceId, i64>,
    /// Records not yet handed to the sink thread (see [`State::ship`]).
    outbox: Vec<Record>,
    /// Input topic names (for dead letters).
    topic_names: HashMap<Topic, String>,
    /// The checkpoint writer's copy of the engine state, kept up to date with the changes
    /// each checkpoint takes ([`Incremental::cut`]); empty until the first.
    copy: Arc<Mutex<WriterCopy>>,
    /// The changes of the last checkpoint while the engine still owes entries to them
    /// ([`Engine::begin_cut`]), and where they go once complete (the checkpoint writer's
    /// job waits for them).
    owed: Option<(EngineChanges, Sender<EngineChanges>)>,
}

/// Records handed to the sink thread at most this many at a time.
const OUT_BATCH: usize = 256;

/// Entries a checkpoint still owes that the engine copies after each round of input: a
/// bounded delay per round (a few µs each) instead of the whole copy in one pause.
const OWED_PER_ROUND: usize = 32;

/// Messages for the summarize stage kept on the engine thread while the stage is busy,
/// before the engine waits for it.
const SUMMARIZE_PENDING: usize = 65_536;

/// Exits and event time go to the summarize stage when this long has passed since the
/// last hand-over, or [`SUMMARIZE_BATCH`] messages wait (and at every checkpoint, flush and
/// the end). Neither is urgent: a month closes days after its end. Handed over after every
/// event, as before, they woke the stage's thread for each message (the watermark moves
/// with almost every one): tens of thousands of wake-ups a second, on the cores the
/// decisions need.
const SUMMARIZE_EVERY: Duration = Duration::from_millis(5);

/// See [`SUMMARIZE_EVERY`].
const SUMMARIZE_BATCH: usize = 1024;

impl State {
    fn emit(&mut self, out: Vec<Out>, read_at: Option<Instant>, sink: &Sender<SinkMsg>) -> anyhow::Result<()> {
        for o in out {
            if let Out::Exited(x) = o {
                self.to_summarize.push(SumMsg::Exited(x));
                continue;
            }
            let Some(r) = Record::from_out(o) else { continue };
            self.send(r, read_at, sink)?;
        }
        Ok(())
    }

    fn send(&mut self, r: Record, read_at: Option<Instant>, sink: &Sender<SinkMsg>) -> anyhow::Result<()> {
        match &r {
            Record::Sorting(s) => {
                match self.stats.ports.get_mut(s.port.as_str()) {
                    Some(n) => *n += 1,
                    None => {
                        self.stats.ports.insert(s.port.to_string(), 1);
                    }
                }
                if let Some(t) = read_at {
                    self.stats.made.record(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                }
            }
            Record::Channel(c) => {
                self.stats.red.1 += 1;
                if c.channel == "red" {
                    self.stats.red.0 += 1;
                }
            }
            Record::Dead(d) => {
                *self.stats.dead.entry(d.code.clone()).or_default() += 1;
                m::DeadLetterEvent { code: &d.code }.emit();
            }
            _ => {}
        }
        *self.stats.output.entry(r.topic()).or_default() += 1;
        let decision = matches!(r, Record::Sorting(_));
        self.outbox.push(r);
        // A sorting decision never waits for a batch; other records go together.
        if decision {
            self.ship_decided(sink, read_at)
        } else if self.outbox.len() >= OUT_BATCH {
            self.ship(sink)
        } else {
            Ok(())
        }
    }

    /// Hands the buffered records to the sink thread (blocking while its queue is full: a
    /// slow sink slows the engine). Called when a batch is full, after a sorting decision,
    /// and before the engine waits for input, checkpoints or flushes.
    fn ship(&mut self, sink: &Sender<SinkMsg>) -> anyhow::Result<()> {
        self.ship_decided(sink, None)
    }

    /// [`State::ship`], the outbox ending with a sorting decision whose scan was read at
    /// `read_at` (the sink thread takes its latency once it wrote it).
    fn ship_decided(&mut self, sink: &Sender<SinkMsg>, read_at: Option<Instant>) -> anyhow::Result<()> {
        if !self.outbox.is_empty() {
            // The next batch is sized like this one: full batches under load, a few records
            // when decisions go out one by one (a full batch's allocation per decision costs
            // more than the decision).
            let next = self.outbox.len().next_power_of_two().clamp(8, OUT_BATCH);
            let batch = std::mem::replace(&mut self.outbox, Vec::with_capacity(next));
            let msg = match read_at {
                Some(read_at) => SinkMsg::Decided(batch, read_at),
                None => SinkMsg::Records(batch),
            };
            sink.send(msg).map_err(|_| anyhow::anyhow!("sink stopped"))?;
        }
        if !self.to_summarize.is_empty()
            && (self.to_summarize.len() >= SUMMARIZE_BATCH || self.summarized_at.elapsed() >= SUMMARIZE_EVERY)
        {
            // While the stage is busy (a period close), the engine goes on: what is due for it
            // waits here, watermarks coalesced, up to a bound; past it, backpressure.
            let batch = std::mem::take(&mut self.to_summarize);
            match self.summarize.try_send(batch) {
                Ok(()) => self.summarized_at = Instant::now(),
                Err(TrySendError::Full(batch)) if batch.len() < SUMMARIZE_PENDING => self.to_summarize = batch,
                Err(TrySendError::Full(batch)) => {
                    self.summarize.send(batch).map_err(|_| anyhow::anyhow!("summarize stage stopped"))?
                }
                Err(TrySendError::Disconnected(_)) => anyhow::bail!("summarize stage stopped"),
            }
        }
        Ok(())
    }

    /// Copies up to `budget` entries the last checkpoint's changes still owe; sends them to
    /// the checkpoint writer once complete.
    fn copy_owed(&mut self, budget: usize) {
        if self.owed.is_some() && self.engine.copy_owed(budget) {
            self.finish_owed();
        }
    }

    /// Completes the last checkpoint's changes now and sends them to the checkpoint writer
    /// (before the engine waits for the writer, or cuts again).
    fn finish_owed(&mut self) {
        if let Some((mut changes, to_writer)) = self.owed.take() {
            self.engine.finish_cut(&mut changes);
            // The writer's job may be gone (a failed save): the failure is reported there.
            let _ = to_writer.send(changes);
        }
    }

    /// Ships what is buffered, then `msg` through the summarize stage to the sink (behind
    /// every record before it).
    fn control(&mut self, msg: SumMsg, sink: &Sender<SinkMsg>) -> anyhow::Result<()> {
        self.ship(sink)?;
        let mut batch = std::mem::take(&mut self.to_summarize);
        batch.push(msg);
        self.summarize.send(batch).map_err(|_| anyhow::anyhow!("summarize stage stopped"))
    }

    fn watermark(&mut self, wm: EventTime, sink: &Sender<SinkMsg>) -> anyhow::Result<()> {
        if wm <= self.engine.watermark() {
            return Ok(());
        }
        let mut out = Vec::new();
        self.engine.advance(wm, &mut out);
        self.emit(out, None, sink)?;
        match self.to_summarize.last_mut() {
            Some(SumMsg::Watermark(last)) => *last = wm,
            _ => self.to_summarize.push(SumMsg::Watermark(wm)),
        }
        Ok(())
    }
}

/// What waits in the sequencer: an entity, or a dead letter (kept in source order too, so the
/// output sequence does not depend on thread timing).
pub enum Item {
    /// A decoded entity.
    Event(Event),
    /// A rejected message.
    Dead(Box<DeadLetter>),
}

/// Processes the next item in canonical order at sequencer time `at`: timers due strictly
/// before it fire first, so their outcome never depends on how far the watermark had moved.
fn process_item(st: &mut State, at: i64, item: Item, sink: &Sender<SinkMsg>) -> anyhow::Result<()> {
    st.watermark(EventTime(at.saturating_sub(1)), sink)?;
    match item {
        Item::Event(ev) => process_event(st, ev, sink),
        Item::Dead(d) => st.send(Record::Dead(*d), None, sink),
    }
}

fn process_event(st: &mut State, ev: Event, sink: &Sender<SinkMsg>) -> anyhow::Result<()> {
    if st.engine.expired(&ev.entity) {
        return st.send(Record::Dead(expired_letter(&st.topic_names, &ev)), None, sink);
    }
    *st.stats.input.entry(ev.topic.short()).or_default() += 1;
    let mut out = Vec::new();
    st.engine.process(ev.entity, &mut out);
    st.emit(out, Some(ev.read_at), sink)
}

/// The dead letter of a message too old for the state retention. Decided after decoding,
/// so its payload is the entity as JSON (not the original bytes).
fn expired_letter(names: &HashMap<Topic, String>, ev: &Event) -> DeadLetter {
    let err = cbec_schemas::DecodeError::new(
        cbec_schemas::ErrorCode::Expired,
        format!(
            "event time {} is older than the state retention before the watermark: its key's state may be gone",
            ev.time.to_rfc3339()
        ),
    );
    let payload = serde_json::to_vec(&ev.entity).unwrap_or_default();
    let name = names.get(&ev.topic).cloned().unwrap_or_else(|| ev.topic.default_name());
    let mut d = DeadLetter::new(&name, ev.source.1, ev.offset, None, &err, &payload);
    d.entity_index = (ev.sub > 0).then_some(u32::from(ev.sub));
    d
}

/// The resume offsets of a checkpoint as consumed positions per source.
fn restored_positions(offsets: &Offsets, names: &HashMap<Topic, String>) -> HashMap<SourceId, i64> {
    let by_name: HashMap<&str, Topic> = names.iter().map(|(t, n)| (n.as_str(), *t)).collect();
    let mut m = HashMap::new();
    for (name, parts) in offsets {
        if let Some(t) = by_name.get(name.as_str()) {
            for (p, o) in parts {
                m.insert((*t, *p), *o);
            }
        }
    }
    m
}

/// Runs the engine thread until every source is done (or a stop is requested).
pub fn run_engine(mut run: EngineRun, restored: Option<Restored>) -> anyhow::Result<RunStats> {
    let started = Instant::now();
    let all_sources: Vec<SourceId> = run.inputs.iter().flat_map(|(s, _)| s.iter().copied()).collect();
    let mut seq: Sequencer<Item> = Sequencer::new(all_sources.iter().copied(), run.lateness_ms);
    let (mut summarize_state, mut engine, offsets) = match restored {
        Some(r) => {
            say_rules_in_force(r.engine.rules(), &run.rules, " (controls change inspection_rate)");
            (r.summarize, r.engine, Some(r.offsets))
        }
        None => (Summarize::default(), Engine::new(run.rules.clone(), run.hs.clone(), run.partitions), None),
    };
    // After a restore the writer's copy starts from the restored state (copied now, before
    // any input, instead of at the first checkpoint on the decision path); its first
    // checkpoint is whole (`whole` 0): a new run of changes files starts from this state.
    let mut copy = WriterCopy::default();
    if run.checkpoint.is_some() && offsets.is_some() {
        copy.engine = Some(engine.clone());
        copy.summarize = Some(summarize_state.clone());
        engine.track();
        summarize_state.track();
    }
    let cap = batches_for(run.max_buffered / 8, 256);
    let (summarize, summarize_h) = match run.exits_to {
        Some((ref topic, n)) => {
            anyhow::ensure!(
                differing_fields(&summarize_state, &Summarize::default()).is_empty(),
                "the checkpoint holds summarize state (saved by a process of stage \"all\"): an engine stage would lose it; finish with stage \"all\" or start a new group"
            );
            let route = crate::stage::handover_route(&mut engine, topic, n)?;
            crate::stage::spawn_forwarder((n, route), engine.watermark(), engine.rules(), run.sink.clone(), cap)
        }
        // The engine's rules: after a restore, the checkpoint's (a replay summarizes as the
        // first run did, whatever the configuration says now).
        None => summary_stage::spawn(summarize_state, engine.rules().clone(), run.sink.clone(), cap),
    };
    // Every thread of the run is started now (the summarize stage just before): the
    // engine thread takes a CPU of its own, the others share the rest.
    let pinned = run.pin_engine
        && match crate::affinity::pin_engine() {
            Ok(cpu) => {
                eprintln!("cbec: engine thread pinned to CPU {cpu}, the process's other threads to the others");
                true
            }
            Err(e) => {
                eprintln!("cbec: pin_engine: {e}; the engine thread is not pinned");
                false
            }
        };
    let mut unpin = pinned.then_some(crate::affinity::Unpin);
    let mut st = State {
        engine,
        summarize,
        to_summarize: Vec::new(),
        summarized_at: Instant::now(),
        stats: RunStats::default(),
        // The restored positions carry into the next checkpoint: a partition that sees
        // nothing new before it must not lose its offset (and be replayed from the start).
        consumed: offsets.as_ref().map(|o| restored_positions(o, &run.topic_names)).unwrap_or_default(),
        outbox: Vec::new(),
        topic_names: run.topic_names.clone(),
        copy: Arc::new(Mutex::new(copy)),
        owed: None,
    };
    st.engine.reserve(run.state_capacity);
    let mut done: HashMap<usize, bool> = HashMap::new();
    let mut group_time: Vec<i64> = vec![i64::MIN; run.inputs.len()];
    let mut last_cp = Instant::now();
    let mut last_progress = Instant::now();
    let mut last_counts = Instant::now();
    loop {
        // Release what the watermark allows.
        while let Some(p) = seq.pop() {
            process_item(&mut st, p.key.0, p.item, &run.sink)?;
        }
        while seq.len() > run.max_buffered {
            let Some(p) = seq.drain() else { break };
            st.stats.forced += 1;
            m::SequencerForced.emit();
            process_item(&mut st, p.key.0, p.item, &run.sink)?;
        }
        if let Some(wm) = seq.watermark() {
            // Strictly below the watermark: an item exactly at it may still arrive.
            st.watermark(EventTime(wm.0.saturating_sub(1)), &run.sink)?;
        }
        // What this round produced goes to the sink before the engine may wait for input.
        st.ship(&run.sink)?;
        // A few entries the last checkpoint still owes (a bounded delay for this round).
        st.copy_owed(OWED_PER_ROUND);
        // Under load a round is one message: one clock read for the periodic work, the
        // metrics set once a second (a gauge set builds its key: an allocation each time).
        let now = Instant::now();
        if now.duration_since(last_counts) >= Duration::from_secs(1) {
            last_counts = now;
            m::QueueDepth { queue: "sequencer", depth: seq.len() }.emit();
            m::MessageCounts { input: &st.stats.input, output: &st.stats.output }.emit();
            let (orders, parcels) = st.engine.expired_keys();
            m::StateExpired { orders, parcels }.emit();
            let (all, aimed) = st.engine.controls_held();
            m::ControlsHeld { all, aimed }.emit();
        }
        if let Some(cb) = &mut run.progress
            && now.duration_since(last_progress) >= Duration::from_secs(1)
        {
            last_progress = now;
            st.stats.elapsed = started.elapsed();
            cb(&st.stats);
        }
        if let Some((store, every)) = &run.checkpoint
            && now.duration_since(last_cp) >= *every
        {
            checkpoint(&mut st, &seq, store, &run, false)?;
            last_cp = Instant::now();
        }
        let stopping = run.stop.load(Ordering::Relaxed);
        if done.len() == run.inputs.len() || stopping {
            break;
        }
        let open = || (0..run.inputs.len()).filter(|i| !done.contains_key(i));
        // Pull from the input group that lags most (it holds the watermark back); while the
        // sequencer has room, take from whichever group is ready so no source waits on another.
        let g = open().min_by_key(|i| group_time[*i]).expect("non-empty");
        let (g, res) = match run.inputs[g].1.try_recv() {
            Ok(m) => (g, Ok(m)),
            Err(_) if st.owed.is_some() => {
                // No input waiting: time to complete the checkpoint's copies.
                st.finish_owed();
                continue;
            }
            Err(_) if seq.len() < run.max_buffered / 2 => {
                let open: Vec<usize> = open().collect();
                let mut sel = Select::new();
                for &o in &open {
                    sel.recv(&run.inputs[o].1);
                }
                match sel.select_timeout(Duration::from_millis(50)) {
                    Ok(op) => {
                        let o = open[op.index()];
                        (o, op.recv(&run.inputs[o].1).map_err(|_| RecvTimeoutError::Disconnected))
                    }
                    Err(_) => continue,
                }
            }
            Err(_) => (g, run.inputs[g].1.recv_timeout(Duration::from_millis(50))),
        };
        let msg = match res {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => {
                done.insert(g, true);
                for s in &run.inputs[g].0 {
                    seq.set_idle(*s, true);
                }
                continue;
            }
        };
        handle(&mut st, &mut seq, &mut group_time, &mut done, g, msg);
    }
    let stopping = run.stop.load(Ordering::Relaxed);
    if !stopping {
        while let Some(p) = seq.drain() {
            process_item(&mut st, p.key.0, p.item, &run.sink)?;
        }
        st.stats.input_elapsed = started.elapsed();
        // The input is over: every CPU for what remains.
        unpin.take();
        if run.end_of_time_when_done {
            st.watermark(EventTime::MAX, &run.sink)?;
        }
    }
    // Both ship what is buffered first (`State::control`).
    if let Some((store, _)) = &run.checkpoint {
        checkpoint(&mut st, &seq, store, &run, true)?;
    } else {
        flush_through(&mut st, &run.sink)?;
    }
    drop(st.summarize); // the stage ends once it has done what was sent
    let stage = summarize_h.join().map_err(|_| anyhow::anyhow!("summarize stage panicked"))??;
    if stage.summaries > 0 {
        *st.stats.output.entry("summaries").or_default() += stage.summaries;
    }
    st.stats.withdrawals += stage.withdrawals;
    if stage.handed > 0 {
        *st.stats.output.entry("exited").or_default() += stage.handed;
    }
    m::MessageCounts { input: &st.stats.input, output: &st.stats.output }.emit();
    m::QueueDepth { queue: "sequencer", depth: seq.len() }.emit();
    let (d, c) = st.engine.state_size();
    st.stats.state_bytes = (d, c, stage.state_bytes);
    st.stats.keys = st.engine.keys();
    st.stats.expired = st.engine.expired_keys();
    m::StateExpired { orders: st.stats.expired.0, parcels: st.stats.expired.1 }.emit();
    st.stats.controls = st.engine.controls_held();
    m::ControlsHeld { all: st.stats.controls.0, aimed: st.stats.controls.1 }.emit();
    st.stats.elapsed = started.elapsed();
    Ok(st.stats)
}

fn handle(
    st: &mut State,
    seq: &mut Sequencer<Item>,
    group_time: &mut [i64],
    done: &mut HashMap<usize, bool>,
    g: usize,
    batch: Batch,
) {
    for msg in batch {
        handle_one(st, seq, group_time, done, g, msg);
    }
}

fn handle_one(
    st: &mut State,
    seq: &mut Sequencer<Item>,
    group_time: &mut [i64],
    done: &mut HashMap<usize, bool>,
    g: usize,
    msg: EngineMsg,
) {
    match msg {
        EngineMsg::Event(ev) => {
            group_time[g] = group_time[g].max(ev.time.0);
            let c = st.consumed.entry(ev.source).or_insert(0);
            *c = (*c).max(ev.offset + 1);
            let key_offset = ev.offset * 128 + ev.sub as i64;
            seq.push(ev.source, key_offset, ev.time, Item::Event(ev));
        }
        EngineMsg::Dead(src, offset, d) => {
            let c = st.consumed.entry(src).or_insert(0);
            *c = (*c).max(offset + 1);
            let key_offset = offset * 128 + d.entity_index.unwrap_or(0).min(127) as i64;
            // No event time: it takes its source's current time.
            seq.push(src, key_offset, EventTime::MIN, Item::Dead(d));
        }
        EngineMsg::Idle(s, idle) => {
            seq.set_idle(s, idle);
            if idle {
                group_time[g] = i64::MAX;
            }
        }
        EngineMsg::Done(s) => {
            seq.set_idle(s, true);
            done.insert(g, true);
        }
    }
}

/// Flushes the sink behind everything the engine and the summarize stage have sent, and
/// waits for the checkpoint writer.
fn flush_through(st: &mut State, sink: &Sender<SinkMsg>) -> anyhow::Result<()> {
    // The writer may be waiting for the last checkpoint's changes.
    st.finish_owed();
    let (tx, rx) = bounded(1);
    st.control(SumMsg::Flush(tx), sink)?;
    rx.recv().map_err(|_| anyhow::anyhow!("sink stopped"))?
}

#[cfg(test)]
fn flush(sink: &Sender<SinkMsg>) -> anyhow::Result<()> {
    let (tx, rx) = bounded(1);
    sink.send(SinkMsg::Flush(tx)).map_err(|_| anyhow::anyhow!("sink stopped"))?;
    rx.recv().map_err(|_| anyhow::anyhow!("sink stopped"))?
}

/// Operator state to start from, and the input offsets to resume at: a checkpoint's,
/// restored, and kept up to date with the changes saved after it (a standby).
pub struct Restored {
    /// The engine's state.
    pub engine: Engine,
    /// Summarize's state.
    pub summarize: Summarize,
    /// Next offset to consume, per topic and partition.
    pub offsets: Offsets,
}

impl Restored {
    /// The state of a checkpoint.
    pub fn from_checkpoint(cp: &Checkpoint, hs: Nomenclature) -> anyhow::Result<Restored> {
        let (engine, summarize) = restored_state(cp, hs)?;
        Ok(Restored { engine, summarize, offsets: cp.offsets.clone() })
    }

    /// Applies the changes saved after the checkpoint this state is, up to the one with
    /// `offsets`.
    pub fn apply(&mut self, changes: &[SavedChanges], offsets: Offsets) -> anyhow::Result<()> {
        for c in changes {
            replay(&mut self.engine, &c.engine).context("checkpoint changes (engine)")?;
            replay(&mut self.summarize, &c.summarize).context("checkpoint changes (summarize)")?;
        }
        self.offsets = offsets;
        Ok(())
    }
}

/// The operator state of a checkpoint: its whole snapshots with the changes saved after
/// them.
fn restored_state(cp: &Checkpoint, hs: Nomenclature) -> anyhow::Result<(Engine, Summarize)> {
    let mut engine = Engine::restore(&cp.engine, hs)?;
    let mut summarize: Summarize = serde_json::from_slice(&cp.summarize)?;
    let n = cp.changes.len();
    for (i, c) in cp.changes.iter().enumerate() {
        replay(&mut engine, &c.engine).with_context(|| format!("checkpoint changes {} of {n} (engine)", i + 1))?;
        replay(&mut summarize, &c.summarize)
            .with_context(|| format!("checkpoint changes {} of {n} (summarize)", i + 1))?;
    }
    Ok((engine, summarize))
}

/// Says on stderr in which fields the configuration's rules differ from those of the
/// checkpoint restored, which stay in force (a replay must decide as the first run did);
/// `aside` follows the list.
pub(crate) fn say_rules_in_force(checkpoint: &Rules, config: &Rules, aside: &str) {
    let differ = differing_fields(checkpoint, config);
    if !differ.is_empty() {
        eprintln!(
            "cbec: the rules in force are the checkpoint's (a replay must decide as the first run did); the configuration's differ in: {}{aside}",
            differ.join(", ")
        );
    }
}

/// The top-level fields in which two values serialize differently.
fn differing_fields<T: serde::Serialize>(a: &T, b: &T) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return Vec::new();
    };
    a.iter().filter(|(k, v)| b.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect()
}

/// Applies serialized changes to `state`.
fn replay<S: Incremental>(state: &mut S, changes: &[u8]) -> anyhow::Result<()> {
    state.apply(serde_json::from_slice(changes)?).map_err(anyhow::Error::msg)
}

/// The serialized changes of a cut (`None` for a whole one).
fn encoded<S: Incremental>(cut: &Cut<S, S::Changes>) -> anyhow::Result<Option<Vec<u8>>> {
    Ok(match cut {
        Cut::Whole(_) => None,
        Cut::Changes(c) => Some(serde_json::to_vec(c)?),
    })
}

/// The checkpoint writer's copy of the operator state, and what its checkpoint files hold.
#[derive(Default)]
struct WriterCopy {
    engine: Option<Engine>,
    summarize: Option<Summarize>,
    /// Bytes of the last whole checkpoint saved (0: the next one is whole).
    whole: u64,
    /// Bytes of the changes saved since.
    changes: u64,
}

impl WriterCopy {
    /// Brings the copy up to date with the engine's and summarize's changes and saves a
    /// checkpoint: the changes, or the whole state when the changes since the last whole
    /// checkpoint would outgrow it (loading reads the whole one and every change after it).
    /// Returns the bytes saved.
    fn save(
        &mut self,
        engine: EngineCut,
        summarize: SummarizeCut,
        store: &dyn CheckpointStore,
        offsets: &crate::checkpoint::Offsets,
    ) -> anyhow::Result<u64> {
        let (engine_delta, summarize_delta) = (encoded(&engine)?, encoded(&summarize)?);
        engine.apply_to(&mut self.engine).map_err(anyhow::Error::msg)?;
        summarize.apply_to(&mut self.summarize).map_err(anyhow::Error::msg)?;
        let (Some(engine), Some(summarize)) = (&self.engine, &self.summarize) else {
            anyhow::bail!("no state to checkpoint");
        };
        match (engine_delta, summarize_delta) {
            (Some(e), Some(s)) if self.whole > 0 && self.changes + (e.len() + s.len()) as u64 <= self.whole => {
                let n = store.save(offsets, StateSave::Changes { engine: &e, summarize: &s })?;
                self.changes += (e.len() + s.len()) as u64;
                Ok(n)
            }
            _ => {
                let (e, s) = (engine.snapshot(), serde_json::to_vec(summarize)?);
                let n = store.save(offsets, StateSave::Whole { engine: &e, summarize: &s })?;
                (self.whole, self.changes) = ((e.len() + s.len()) as u64, 0);
                Ok(n)
            }
        }
    }
}

/// The engine's part of a checkpoint as the writer gets it: ready at the cut (a whole
/// copy), or changes the engine completes after it ([`State::finish_owed`]).
enum ForWriter {
    Ready(EngineCut),
    Owed(Receiver<EngineChanges>),
}

/// Takes a checkpoint: the state is copied here, on the engine thread (a consistent cut);
/// the sink thread flushes the outputs that precede it, and the writer thread serializes
/// and saves the copy and then lets the consumer group commit its offsets. When `wait`,
/// returns after the save (end of run).
fn checkpoint(
    st: &mut State,
    seq: &Sequencer<Item>,
    store: &Arc<dyn CheckpointStore>,
    run: &EngineRun,
    wait: bool,
) -> anyhow::Result<()> {
    let t = Instant::now();
    let pending = seq.min_pending_offsets();
    let mut offsets: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    for (src, consumed) in &st.consumed {
        let resume = pending.get(src).map_or(*consumed, |k| (*consumed).min(k / 128));
        let name = run.topic_names.get(&src.0).cloned().unwrap_or_else(|| src.0.default_name());
        offsets.entry(name).or_default().insert(src.1, resume);
    }
    // What changed in the engine's state since the last checkpoint (all of it the first
    // time) is the consistent cut: a copy of the changed entries, applied to the writer's
    // copy of the state on the writer thread (the summarize stage copies its own when the
    // cut reaches it). Applying and serializing happen there, not here on the decision path.
    // The changed entries are copied after the cut, a few per round of input
    // (`OWED_PER_ROUND`) or all at once when no input waits; here only their keys.
    st.finish_owed();
    let changes = st.engine.begin_cut();
    let pause = t.elapsed();
    m::CheckpointSnapshot { seconds: pause.as_secs_f64(), whole: changes.is_whole() }.emit();
    let changes = match changes {
        Cut::Changes(c) => {
            let (tx, rx) = bounded(1);
            st.owed = Some((c, tx));
            ForWriter::Owed(rx)
        }
        whole => ForWriter::Ready(whole),
    };
    st.stats.checkpoints += 1;
    st.stats.checkpoint_pause = st.stats.checkpoint_pause.max(pause);
    let (d, c) = st.engine.state_size();
    m::StateSize { operator: "declare", bytes: d }.emit();
    m::StateSize { operator: "clear", bytes: c }.emit();
    let (store, commits, copy) = (store.clone(), run.commits.clone(), st.copy.clone());
    let cut = move |summarize: SummarizeCut| -> SinkMsg {
        SinkMsg::AfterDurable(Box::new(move || {
            let changes = match changes {
                ForWriter::Ready(cut) => cut,
                ForWriter::Owed(owed) => Cut::Changes(
                    owed.recv().map_err(|_| anyhow::anyhow!("the engine stopped before completing a checkpoint"))?,
                ),
            };
            let mut copy = copy.lock().map_err(|_| anyhow::anyhow!("checkpoint copy poisoned"))?;
            let bytes = copy.save(changes, summarize, &*store, &offsets)?;
            drop(copy);
            m::CheckpointDone { seconds: t.elapsed().as_secs_f64(), bytes }.emit();
            if let Some(latest) = commits {
                *latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(offsets);
            }
            Ok(())
        }))
    };
    // The records that precede the cut reach the sink's queue before the cut does.
    st.control(SumMsg::Cut(Box::new(cut)), &run.sink)?;
    if wait {
        flush_through(st, &run.sink)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::LocalDirStore;
    use crate::config::Config;
    use cbec_schemas::hs::Nomenclature;

    /// A message is dead-lettered `future_time` when its event time lies more than
    /// `max_lead_ms` after it was sent (each entity of a CEB document on its own), kept at
    /// the bound exactly, and never judged without a reference or with the bound at 0.
    #[test]
    fn messages_dated_too_far_after_their_sending_are_dead_lettered() {
        let scan =
            |t: &str| format!(r#"{{"logisticsNo":"LP1","lineId":"L1","scanId":"S1","scanTime":"{t}","xray":null}}"#);
        let sent_at = EventTime::parse_rfc3339("2026-11-11T12:00:00Z").unwrap().0;
        let decode = |topic: Topic, payload: &[u8], sent: Option<Sent>| {
            let mut got = Vec::new();
            let mut dec = Decoder::new();
            decode_message(&mut dec, topic, "in", (topic, 0), 7, None, payload, sent, Instant::now(), &mut |m| {
                got.push(match m {
                    EngineMsg::Event(e) => format!("event {}", e.time.to_rfc3339()),
                    EngineMsg::Dead(_, _, d) => format!("dead {} {:?}", d.code, d.entity_index),
                    other => format!("{other:?}"),
                })
            });
            got
        };
        let hour = Sent::new(Some(sent_at), "test", 3_600_000);
        let one = |t: &str, sent| decode(Topic::Scans, scan(t).as_bytes(), sent);
        assert_eq!(one("2026-11-11T13:00:00Z", hour), ["event 2026-11-11T21:00:00.000+08:00"]);
        assert_eq!(one("2026-11-11T13:00:00.001Z", hour), ["dead future_time None"]);
        assert_eq!(one("2126-11-11T12:00:00Z", hour), ["dead future_time None"]);
        // Earlier than its sending is what late messages are: no bound.
        assert_eq!(one("2016-11-11T12:00:00Z", hour), ["event 2016-11-11T20:00:00.000+08:00"]);
        assert!(Sent::new(Some(sent_at), "test", 0).is_none() && Sent::new(None, "test", 3_600_000).is_none());
        assert_eq!(one("2126-11-11T12:00:00Z", None), ["event 2126-11-11T20:00:00.000+08:00"]);
        // A CEB document: the second payment is dated ahead, the first is not.
        let receipt = |no: &str, at: &str| {
            format!(
                "<ceb:Receipts><ceb:guid>4CDE1CFD-EDED-46B1-946C-B8022E42FC9{}</ceb:guid><ceb:appType>1</ceb:appType><ceb:appTime>{at}</ceb:appTime><ceb:appStatus>2</ceb:appStatus><ceb:ebpCode>EBP1</ceb:ebpCode><ceb:ebpName>p</ceb:ebpName><ceb:orderNo>{no}</ceb:orderNo><ceb:payCode>PAY1</ceb:payCode><ceb:payName>pay</ceb:payName><ceb:payNo>PN{no}</ceb:payNo><ceb:charge>100</ceb:charge><ceb:currency>142</ceb:currency><ceb:accountingDate>{at}</ceb:accountingDate><ceb:ebcCode>EBC1</ceb:ebcCode><ceb:ebcName>c</ceb:ebcName><ceb:note></ceb:note></ceb:Receipts>",
                &no[no.len() - 1..]
            )
        };
        let doc = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><ceb:CEB403Message guid="4CDE1CFD-EDED-46B1-946C-B8022E42FC9A" version="1.0" xmlns:ceb="http://www.chinaport.gov.cn/ceb"><ceb:BaseTransfer><ceb:copCode>C1</ceb:copCode><ceb:copName>c</ceb:copName><ceb:dxpMode>DXP</ceb:dxpMode><ceb:dxpId>DXPENT0000000001</ceb:dxpId></ceb:BaseTransfer>{}{}</ceb:CEB403Message>"#,
            receipt("O1", "20261111200000"),
            receipt("O2", "21261111200000")
        );
        assert_eq!(
            decode(Topic::Payments, doc.as_bytes(), hour),
            ["event 2026-11-11T20:00:00.000+08:00", "dead future_time Some(1)"]
        );
    }

    /// Under the bound every latency is kept in order; past it the held values are those at
    /// positions that are multiples of the stride (a uniform sample in order), never more
    /// than the bound, and every decision is counted.
    #[test]
    fn latencies_are_held_whole_up_to_the_bound_then_as_a_uniform_sample() {
        let (mut kept, mut stride, mut seen) = (Vec::new(), 0, 0);
        for x in 0..7u32 {
            keep_sampled(&mut kept, &mut stride, &mut seen, 8, x);
        }
        assert_eq!((kept.clone(), stride, seen), ((0..7).collect::<Vec<u32>>(), 1, 7));
        for x in 7..1000u32 {
            keep_sampled(&mut kept, &mut stride, &mut seen, 8, x);
            assert!(kept.len() < 8, "{} held", kept.len());
        }
        assert_eq!(seen, 1000);
        assert_eq!(stride, 256, "1,000 values held in fewer than 8");
        let want: Vec<u32> = (0..1000).filter(|x| x % stride == 0).collect();
        assert_eq!(kept, want);
        // Through `Latencies` into `RunStats`: the count, the stride and the percentiles of
        // the sample.
        let mut l = Latencies::default();
        for x in 0..100u32 {
            l.record(x);
        }
        let st = RunStats::default().timed(l);
        assert_eq!((st.latencies.timed, st.latencies.stride, st.latencies.us.len()), (100, 1, 100));
        assert_eq!(st.latencies.pct(0.5), Some(50));
    }

    /// The checkpoint files of a run — whole checkpoints and the changes between them, as
    /// the writer chooses — load back into the engine's and summarize's state of the last
    /// checkpoint.
    #[test]
    fn checkpoint_files_load_back_into_the_state_they_saved() {
        use cbec_operators::Operator;
        let hs = Nomenclature::default();
        let rules = Rules::default();
        let g = crate::generator::generate(
            &crate::generator::GenConfig { orders: 1500, malformed: 0.0, ..Default::default() },
            &rules,
            &hs,
        );
        let mut decoder = Decoder::new();
        let feed: Vec<Entity> = crate::generator::merged(&g)
            .into_iter()
            .filter_map(|(t, _, m)| match decoder.decode(t, &m) {
                Decoded::One(Ok(e)) => Some(e),
                _ => None,
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::new(dir.path()).unwrap();
        let mut engine = Engine::new(rules, hs.clone(), 2);
        let mut writer = WriterCopy::default();
        let value = |e: &Engine| -> serde_json::Value {
            let mut v: serde_json::Value = serde_json::from_slice(&e.snapshot()).unwrap();
            if let Some(serde_json::Value::Array(s)) = v.pointer_mut("/shared/serials") {
                s.sort_by_key(|x| x.as_u64());
            }
            v
        };
        let (mut out, mut kinds) = (Vec::new(), Vec::new());
        let (mut summarize, mut summaries, mut r) = (Summarize::default(), Vec::new(), Rules::default());
        let mut with_exits = 0;
        // Most of the story, then small slices of it with the parcels exiting: checkpoints
        // after each; at the end the month closes (summarize's state empties).
        let mut at = 0usize;
        let first = feed.len() * 9 / 10;
        let mut slices = vec![first];
        slices.extend(std::iter::repeat_n(100, (feed.len() - first) / 100 + 1));
        slices.extend([0, usize::MAX]);
        for len in slices {
            for e in &feed[at..at.saturating_add(len).min(feed.len())] {
                engine.advance(EventTime(e.event_time().0 - 1), &mut out);
                engine.process(e.clone(), &mut out);
            }
            if len == usize::MAX {
                engine.advance(EventTime::MAX, &mut out);
            }
            for o in out.drain(..) {
                if let Out::Exited(x) = o {
                    summarize.process(&mut r, x, &mut summaries);
                }
            }
            summarize.on_watermark(&mut r, engine.watermark(), &mut summaries);
            at = at.saturating_add(len).min(feed.len());
            let offsets = [("cbec.orders".to_string(), [(0, at as i64)].into())].into();
            writer.save(engine.cut(), summarize.cut(), &store, &offsets).unwrap();
            let cp = store.load().unwrap().unwrap();
            kinds.push(cp.changes.len());
            with_exits += usize::from(cp.changes.last().is_some_and(|c| c.summarize.len() > 2));
            assert_eq!(cp.offsets, offsets);
            let (e, s) = restored_state(&cp, hs.clone()).unwrap();
            assert!(value(&e) == value(&engine), "engine state after {at} inputs");
            assert_eq!(
                serde_json::to_value(&s).unwrap(),
                serde_json::to_value(&summarize).unwrap(),
                "after {at} inputs"
            );
        }
        assert!(!summaries.is_empty() && summarize.pending() == 0, "the month closed");
        assert!(with_exits > 3, "changes files carry exited lists to summarize: {with_exits}");
        assert!(kinds.iter().any(|n| *n >= 2), "some checkpoints load with their changes: {kinds:?}");
        assert!(
            kinds.contains(&0) && kinds.iter().skip(1).any(|n| *n == 0),
            "and a large change is saved whole: {kinds:?}"
        );
    }

    #[test]
    fn rules_that_differ_are_named() {
        let a = Rules::default();
        let b = Rules { instance: 3, payment_wait_hours: 12, ..Rules::default() };
        assert_eq!(differing_fields(&a, &b), ["instance", "payment_wait_hours"]);
        assert!(differing_fields(&a, &a.clone()).is_empty());
    }

    #[test]
    fn a_restored_offset_survives_a_checkpoint_of_a_run_that_read_nothing_new() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::default();
        let (tx, rx) = bounded::<Batch>(4);
        let src: SourceId = (Topic::Orders, 0);
        tx.send(vec![EngineMsg::Done(src)]).unwrap();
        drop(tx);
        let engine = Engine::new(cfg.rules.clone(), Nomenclature::default(), 1);
        let restored = Checkpoint {
            place: (1, 1),
            offsets: [(cfg.input_topic(Topic::Orders), [(0, 42)].into())].into(),
            engine: engine.snapshot(),
            summarize: serde_json::to_vec(&Summarize::default()).unwrap(),
            changes: Vec::new(),
        };
        let (sink_tx, sink_h) = spawn_sink(Box::new(crate::sink::NullSink), 16);
        let store: Arc<dyn CheckpointStore> = Arc::new(LocalDirStore::new(dir.path()).unwrap());
        let run = EngineRun {
            checkpoint: Some((store.clone(), Duration::from_secs(3600))),
            ..EngineRun::new(&cfg, Nomenclature::default(), vec![(vec![src], rx)], sink_tx)
        };
        run_engine(run, Some(Restored::from_checkpoint(&restored, Nomenclature::default()).unwrap())).unwrap();
        sink_h.join().unwrap().unwrap();
        let cp = store.load().unwrap().expect("a final checkpoint");
        assert_eq!(cp.offsets[&cfg.input_topic(Topic::Orders)][&0], 42);
    }

    /// After a restore the summarize stage runs under the checkpoint's rules, as the engine
    /// does, not the configuration's: a month restored under a grace of 0 hours closes at
    /// the month's end although the configuration now says 72 hours.
    #[test]
    fn a_restored_run_summarizes_under_the_checkpoints_rules() {
        let cfg = Config::default();
        assert_eq!(cfg.rules.summary_grace_hours, 72);
        let first = Rules { summary_grace_hours: 0, ..cfg.rules.clone() };
        let mut summarize = Summarize::default();
        cbec_operators::Operator::process(
            &mut summarize,
            &mut first.clone(),
            crate::summary_stage::test_exited(1, "EBC1", 1, true),
            &mut Vec::new(),
        );
        let restored = Checkpoint {
            place: (1, 1),
            offsets: Offsets::new(),
            engine: Engine::new(first, Nomenclature::default(), 1).snapshot(),
            summarize: serde_json::to_vec(&summarize).unwrap(),
            changes: Vec::new(),
        };
        // Event time moves to 1 December, 01:00: past November's end, not past its 72 hours.
        let goods = serde_json::json!({"ebcCode": "EBC1", "itemNo": "IT1", "itemName": "phone", "gcode": "8517130000", "gname": "phone", "gmodel": "x", "unit": "011", "appType": "1", "appTime": "20261201010000"});
        let Decoded::One(Ok(entity)) = Decoder::new().decode(Topic::Goods, &serde_json::to_vec(&goods).unwrap()) else {
            panic!("test goods do not decode")
        };
        let src: SourceId = (Topic::Goods, 0);
        let ev = Event {
            topic: Topic::Goods,
            source: src,
            offset: 0,
            sub: 0,
            time: entity.event_time(),
            entity,
            read_at: Instant::now(),
        };
        let (tx, rx) = bounded::<Batch>(4);
        tx.send(vec![EngineMsg::Event(ev), EngineMsg::Done(src)]).unwrap();
        drop(tx);
        let sink = crate::sink::MemorySink::default();
        let records = sink.records.clone();
        let (sink_tx, sink_h) = spawn_sink(Box::new(sink), 16);
        let run = EngineRun {
            end_of_time_when_done: false,
            ..EngineRun::new(&cfg, Nomenclature::default(), vec![(vec![src], rx)], sink_tx)
        };
        run_engine(run, Some(Restored::from_checkpoint(&restored, Nomenclature::default()).unwrap())).unwrap();
        sink_h.join().unwrap().unwrap();
        let summaries: Vec<String> = records
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| if let Record::Summary(s) = r { Some(s.summary_id.clone()) } else { None })
            .collect();
        assert_eq!(summaries.len(), 1, "November closed under the checkpoint's grace: {summaries:?}");
    }

    /// A message about keyed state whose event time is older than the retention before the
    /// watermark goes to the dead-letter topic as `expired` (its key's state may be gone);
    /// a current one is processed, and so is reference data (goods) of any age.
    #[test]
    fn a_message_older_than_the_retention_is_dead_lettered_as_expired() {
        let cfg = Config::default();
        let (summarize, _stage) = bounded(64);
        let mut st = State {
            engine: Engine::new(cfg.rules.clone(), Nomenclature::default(), 1),
            summarize,
            to_summarize: Vec::new(),
            summarized_at: Instant::now(),
            stats: RunStats::default(),
            consumed: HashMap::new(),
            outbox: Vec::new(),
            topic_names: Topic::ALL.iter().map(|t| (*t, cfg.input_topic(*t))).collect(),
            copy: Arc::default(),
            owed: None,
        };
        let (tx, rx) = bounded(64);
        st.watermark(EventTime::parse_ceb("20261231000000").unwrap(), &tx).unwrap();
        let order = |no: &str, t: &str| {
            serde_json::json!({"orderNo": no, "orderType": "E", "ebpCode": "EBP1", "ebcCode": "EBC1", "goodsValue": "100", "freight": "10", "currency": "142", "appTime": t,
                "items": [{"gnum": 1, "itemNo": "IT1", "itemName": "phone", "unit": "011", "currency": "142", "qty": "1", "price": "100", "totalPrice": "100"}]})
        };
        let goods = serde_json::json!({"ebcCode": "EBC1", "itemNo": "IT1", "itemName": "phone", "gcode": "8517130000", "gname": "phone", "gmodel": "x", "unit": "011", "appType": "1", "appTime": "20261101000000"});
        let msgs = [
            (Topic::Orders, order("OLD", "20261111000000")),
            (Topic::Orders, order("NEW", "20261230000000")),
            (Topic::Goods, goods),
        ];
        for (offset, (topic, v)) in msgs.into_iter().enumerate() {
            let Decoded::One(Ok(entity)) = Decoder::new().decode(topic, &serde_json::to_vec(&v).unwrap()) else {
                panic!("test message does not decode: {v}")
            };
            let time = entity.event_time();
            let ev = Event {
                topic,
                source: (topic, 0),
                offset: offset as i64,
                sub: 0,
                time,
                entity,
                read_at: Instant::now(),
            };
            process_item(&mut st, time.0, Item::Event(ev), &tx).unwrap();
        }
        st.ship(&tx).unwrap();
        drop(tx);
        let dead: Vec<DeadLetter> = rx
            .iter()
            .flat_map(|m| match m {
                SinkMsg::Records(rs) | SinkMsg::Decided(rs, _) => rs,
                _ => Vec::new(),
            })
            .filter_map(|r| if let Record::Dead(d) = r { Some(d) } else { None })
            .collect();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(
            (dead[0].code.as_str(), dead[0].source_topic.as_str(), dead[0].offset),
            ("expired", "cbec.orders", 0)
        );
        assert!(dead[0].payload.contains("\"OLD\""), "the entity rides along: {}", dead[0].payload);
        assert_eq!(st.stats.input.get("orders"), Some(&1));
        assert_eq!(st.stats.input.get("goods"), Some(&1));
        assert_eq!(st.stats.dead.get("expired"), Some(&1));
    }

    /// The sink's receive: messages in order while they come, the ones sent after it went
    /// idle (blocked in the channel's receive) too, and the end once every sender is gone.
    #[test]
    fn the_sink_poll_receives_in_order_across_idleness_and_ends_with_its_senders() {
        let (tx, rx) = bounded::<u32>(4);
        let sender = std::thread::spawn(move || {
            for i in 0..3 {
                tx.send(i).unwrap();
            }
            // Past the idle bound: the receiver blocks until this send wakes it.
            std::thread::sleep(Poll::IDLE * 5);
            for i in 3..6 {
                tx.send(i).unwrap();
            }
        });
        // Polling from the start (as after a busy window), so the naps are on the way too.
        let mut poll = Poll { busy: true, ..Poll::new() };
        let got: Vec<u32> = std::iter::from_fn(|| poll.next(&rx)).collect();
        sender.join().unwrap();
        assert_eq!(got, (0..6).collect::<Vec<u32>>());
    }

    /// The sink polls after a window of messages at the busy rate and blocks again after a
    /// slower one; a window is judged only once it has lasted [`Poll::WINDOW`].
    #[test]
    fn the_sink_polls_only_while_messages_come_at_the_busy_rate() {
        let mut poll = Poll::new();
        let t0 = poll.window;
        assert!(!poll.busy, "a new sink blocks until it has seen a busy window");
        let per_window = Poll::BUSY_RATE * Poll::WINDOW.as_micros() as u64 / 1_000_000;
        poll.seen = per_window;
        poll.observe(t0 + Poll::WINDOW / 2);
        assert!(!poll.busy, "judged before the window ended");
        poll.observe(t0 + Poll::WINDOW);
        assert!(poll.busy, "{per_window} messages in a window are the busy rate");
        assert_eq!(poll.seen, 0, "the next window counts afresh");
        poll.seen = per_window - 1;
        poll.observe(t0 + Poll::WINDOW * 2);
        assert!(!poll.busy, "one message fewer is not");
        // A long wait blocked in the receive dilutes the rate over the time it took.
        poll.seen = per_window * 2;
        poll.observe(t0 + Poll::WINDOW * 5);
        assert!(!poll.busy, "twice a window's messages over three windows");
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        assert_eq!(percentile::<u32>(&[], 0.5), None);
        assert_eq!(percentile(&[7u64], 0.99), Some(7));
        let v: Vec<u32> = (1..=101).collect();
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&v, 0.5), Some(51));
        assert_eq!(percentile(&v, 0.99), Some(100));
        assert_eq!(percentile(&v, 1.0), Some(101));
    }

    struct Failing;
    impl CheckpointStore for Failing {
        fn load(&self) -> anyhow::Result<Option<Checkpoint>> {
            Ok(None)
        }
        fn save(&self, _: &crate::checkpoint::Offsets, _: StateSave<'_>) -> anyhow::Result<u64> {
            anyhow::bail!("disk full")
        }
        fn since(&self, _: Option<crate::checkpoint::Seq>) -> anyhow::Result<crate::checkpoint::Since> {
            Ok(crate::checkpoint::Since::Nothing)
        }
    }

    #[test]
    fn a_failed_checkpoint_save_fails_the_run() {
        let cfg = Config::default();
        let (tx, rx) = bounded::<Batch>(4);
        let src: SourceId = (Topic::Orders, 0);
        tx.send(vec![EngineMsg::Done(src)]).unwrap();
        drop(tx);
        let (sink_tx, sink_h) = spawn_sink(Box::new(crate::sink::NullSink), 16);
        let run = EngineRun {
            checkpoint: Some((Arc::new(Failing), Duration::from_secs(3600))),
            ..EngineRun::new(&cfg, Nomenclature::default(), vec![(vec![src], rx)], sink_tx)
        };
        let res = run_engine(run, None);
        assert!(format!("{:#}", res.unwrap_err()).contains("disk full"), "the final checkpoint could not be saved");
        let sink = sink_h.join().unwrap();
        assert!(format!("{:#}", sink.unwrap_err()).contains("disk full"));
    }

    /// A flush that reaches the sink after the writer has already failed gets that failure
    /// (it was dropped unanswered, so the engine reported only "sink stopped"; CI saw it
    /// once under load in `a_failed_checkpoint_save_fails_the_run`).
    #[test]
    fn a_flush_after_a_failed_save_gets_the_failure() {
        let (sink_tx, sink_h) = spawn_sink(Box::new(crate::sink::NullSink), 16);
        let fail: Box<dyn FnOnce() -> anyhow::Result<()> + Send> = Box::new(|| anyhow::bail!("disk full"));
        sink_tx.send(SinkMsg::AfterDurable(fail)).unwrap();
        // Let the writer run and fail before the flush arrives (the case under test; if it
        // were slower the flush would meet the failure through its barrier instead).
        std::thread::sleep(Duration::from_millis(300));
        let err = flush(&sink_tx).unwrap_err();
        assert!(format!("{err:#}").contains("disk full"), "{err:#}");
        drop(sink_tx);
        assert!(format!("{:#}", sink_h.join().unwrap().unwrap_err()).contains("disk full"));
    }

    /// A sink whose durability is a wait ([`crate::sink::Sink::durable`], Kafka's
    /// deliveries): the checkpoint's save runs only after the wait, on the writer thread,
    /// and the sink thread writes the records sent after the checkpoint meanwhile.
    #[test]
    fn a_checkpoint_waits_for_the_sinks_durability_while_the_sink_writes_on() {
        type Log = Arc<Mutex<Vec<String>>>;
        struct Gated(Log, Option<Receiver<()>>);
        impl crate::sink::Sink for Gated {
            fn write(&mut self, r: &Record) -> anyhow::Result<()> {
                let Record::Dead(d) = r else { unreachable!() };
                self.0.lock().unwrap().push(format!("write {}", d.offset));
                Ok(())
            }
            fn flush(&mut self) -> anyhow::Result<()> {
                Ok(())
            }
            fn durable(&mut self) -> anyhow::Result<Option<crate::sink::Durable>> {
                let (log, gate) = (self.0.clone(), self.1.take().expect("one checkpoint"));
                Ok(Some(Box::new(move || {
                    gate.recv()?;
                    log.lock().unwrap().push("durable".into());
                    Ok(())
                })))
            }
        }
        let log: Log = Arc::default();
        let (gate_tx, gate) = bounded::<()>(1);
        let (sink_tx, sink_h) = spawn_sink(Box::new(Gated(log.clone(), Some(gate))), 16);
        let record = |i: i64| Record::Dead(crate::kafka::deleted_unread("in", 0, i, i + 1));
        sink_tx.send(SinkMsg::Records(vec![record(1)])).unwrap();
        let saved = log.clone();
        let save = move || {
            saved.lock().unwrap().push("saved".into());
            Ok(())
        };
        sink_tx.send(SinkMsg::AfterDurable(Box::new(save))).unwrap();
        sink_tx.send(SinkMsg::Records(vec![record(2)])).unwrap();
        let written = |n: usize| log.lock().unwrap().iter().filter(|l| l.starts_with("write")).count() == n;
        let started = Instant::now();
        while !written(2) {
            assert!(started.elapsed() < Duration::from_secs(60), "the record after the checkpoint waits: {log:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(*log.lock().unwrap(), ["write 1", "write 2"], "nothing saved before the sink was durable");
        gate_tx.send(()).unwrap();
        flush(&sink_tx).unwrap();
        assert_eq!(*log.lock().unwrap(), ["write 1", "write 2", "durable", "saved"]);
        drop(sink_tx);
        sink_h.join().unwrap().unwrap();
    }

    /// The CI deadlock: a flush's barrier queued behind a save that then fails must still be
    /// answered (the flush reports the failure instead of waiting forever).
    #[test]
    fn a_flush_queued_behind_a_failing_save_is_answered() {
        let (sink_tx, sink_h) = spawn_sink(Box::new(crate::sink::NullSink), 16);
        let (started_tx, started) = bounded::<()>(1);
        let (gate_tx, gate) = bounded::<()>(1);
        let save = move || {
            started_tx.send(()).unwrap();
            gate.recv().unwrap();
            anyhow::bail!("disk full")
        };
        sink_tx.send(SinkMsg::AfterDurable(Box::new(save))).unwrap();
        started.recv().unwrap();
        let (ack_tx, ack) = bounded(1);
        sink_tx.send(SinkMsg::Flush(ack_tx)).unwrap();
        // Give the sink thread time to queue its barrier behind the running save (if it has
        // not, the test still passes through the other path; it cannot fail spuriously).
        std::thread::sleep(Duration::from_millis(100));
        gate_tx.send(()).unwrap();
        // A generous bound turns a deadlock into a failure instead of a hung CI job.
        let res = ack.recv_timeout(Duration::from_secs(60)).expect("the flush is answered");
        assert!(format!("{:#}", res.unwrap_err()).contains("disk full"));
        drop(sink_tx);
        assert!(format!("{:#}", sink_h.join().unwrap().unwrap_err()).contains("disk full"));
    }
}
