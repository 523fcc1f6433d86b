//! Stages in separate processes (`stage = "engine"` and `stage = "summarize"`): the engine
//! stage (declare, clear, seal) hands the exited lists and event time over through the
//! topic `<group_id>.exited`, and summarize instances build the summary declarations. The
//! summarize work (a month's close summarizes every list of the month) then runs on other
//! machines, shared by as many instances as the topic has partitions. The instances are
//! one consumer group, `<group_id>.summarize`: the group spreads the partitions over them,
//! and the summarize state is kept per partition, with the partition's own checkpoints, so
//! that it moves with its partition when the group moves it (an instance joins, leaves or
//! dies). The engine stage keeps the group's lease, checkpoints and standbys, as with
//! `stage = "all"`.
//!
//! Same outputs as one process, on every run and replay:
//! * an exited list goes to the partition of its `ebcCode`, and a declaration form holds
//!   lists of one `ebcCode`, so every form is built whole in one partition (over the
//!   partition count the group's first engine-stage run found, pinned in the engine's
//!   checkpoints: [`handover_route`]); supplementary
//!   declarations are numbered per form ([`cbec_operators::summarize`]);
//! * each partition carries event time too: before an exit, the engine's watermark at that
//!   exit (when it moved), and the watermark to every partition at least once a second, at
//!   every checkpoint and at the end. A partition's summarize state therefore sees every
//!   exit at the event time it had in the engine, and closes a period where one process
//!   would;
//! * the engine numbers its exits ([`Exited::seq`], checkpointed with it), so after the
//!   engine stage restarts from a checkpoint and sends again what followed it, a partition
//!   skips the exits it has applied (numbers are increasing per partition); an older
//!   watermark changes nothing.
//!
//! The hand-over records travel through the engine's sink like outputs, so a checkpoint of
//! the engine stage is saved only once everything before it is in the topic.

use crate::checkpoint::{Checkpoint, CheckpointStore, LocalDirStore, Offsets, StateSave};
use crate::config::{Config, StoreKind};
use crate::kafka_store::KafkaTopicStore;
use crate::metrics as m;
use crate::record::Record;
use crate::runner::{Progress, RunStats, SinkMsg};
use crate::sink::Sink;
use crate::summary_stage::{StageEnd, SumMsg, spawn_stage};
use anyhow::Context;
use cbec_operators::Operator;
use cbec_operators::engine::Exited;
use cbec_operators::rules::Rules;
use cbec_operators::summarize::{Summarize, SummarizeChanges};
use cbec_operators::tracked::{Cut, Incremental};
use cbec_schemas::{EventTime, Summary};
use crossbeam_channel::Sender;
use rdkafka::bindings::rd_kafka_resp_err_t as RDKafkaRespErr;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One record of `<group_id>.exited`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StageMsg {
    /// A list that exited (or left its summary again: returned after it exited).
    Exited(Exited),
    /// The engine's event time reached `time`.
    Watermark {
        /// The watermark.
        time: EventTime,
    },
    /// The engine's rules for summarizing (after a restore, its checkpoint's), the first
    /// record to every partition each time the engine stage starts: a partition summarizes
    /// under them, whatever the configuration of the instance that holds it.
    Rules {
        /// Hours of grace after a month ends before its declarations close.
        summary_grace_hours: u32,
        /// `summaryFlag`: 1 one declaration per company, 2 also per owner.
        summary_flag: u8,
    },
}

impl StageMsg {
    /// Kafka key: the `ebcCode` of an exit.
    pub fn key(&self) -> &str {
        match self {
            StageMsg::Exited(x) => &x.list.ebc_code,
            StageMsg::Watermark { .. } | StageMsg::Rules { .. } => "",
        }
    }

    /// Identity (for de-duplication by consumers other than the instances).
    pub fn id(&self, partition: i32) -> String {
        match self {
            StageMsg::Exited(x) => format!("exit/{}", x.seq),
            StageMsg::Watermark { time } => format!("watermark/{partition}/{}", time.0),
            StageMsg::Rules { summary_grace_hours, summary_flag } => {
                format!("rules/{partition}/{summary_grace_hours}/{summary_flag}")
            }
        }
    }
}

/// The partition of `<group_id>.exited` an exit goes to, of `partitions`.
pub fn partition_of(x: &Exited, partitions: usize) -> i32 {
    cbec_operators::partition_of(&x.list.ebc_code, partitions) as i32
}

/// The partitions of `<group_id>.exited` (which has `topic_has` now) exits are routed over:
/// those the engine pinned in its first run as an engine stage (kept in its checkpoints),
/// else all of them, pinned now. Each company's forms are built whole in one partition, so
/// the routing never changes within a group: partitions added to the topic since get event
/// time but no exits (said); fewer than pinned is an error.
pub fn handover_route(
    engine: &mut cbec_operators::engine::Engine,
    topic: &str,
    topic_has: usize,
) -> anyhow::Result<usize> {
    let route = engine.handover().map_or(topic_has, |n| n as usize);
    anyhow::ensure!(
        route <= topic_has,
        "topic {topic} has {topic_has} partitions, fewer than the {route} this group's exits go to (each company's forms are built whole in one partition): give it {route} again, or start a new group"
    );
    if topic_has > route {
        eprintln!(
            "cbec: topic {topic} has {topic_has} partitions; exits go to the first {route}, as since this group started (each company's forms are built whole in one partition), the others get event time only: more summarize instances need a new group with exited_partitions = {topic_has}"
        );
    }
    Ok(engine.pin_handover(route as u32) as usize)
}

/// Event time is sent to every partition at least this often while it moves.
const WATERMARK_EVERY: Duration = Duration::from_secs(1);

struct Forward {
    partitions: usize,
    now: EventTime,
    sent: Vec<EventTime>,
    broadcast_at: Instant,
    out: Vec<Record>,
}

impl Forward {
    fn watermark_to(&mut self, p: usize) {
        if self.sent[p] < self.now {
            self.sent[p] = self.now;
            self.out.push(Record::Stage(p as i32, Box::new(StageMsg::Watermark { time: self.now })));
        }
    }

    fn broadcast(&mut self) {
        for p in 0..self.partitions {
            self.watermark_to(p);
        }
        self.broadcast_at = Instant::now();
    }

    fn ship(&mut self, sink: &Sender<SinkMsg>) -> anyhow::Result<()> {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            sink.send(SinkMsg::Records(out)).map_err(|_| anyhow::anyhow!("sink stopped"))?;
        }
        Ok(())
    }
}

/// In place of the summarize stage ([`crate::summary_stage::spawn`], same messages): hands
/// exits and event time over to `<group_id>.exited` with `partitions` partitions, through
/// `sink`, the engine's event time being `from` and its rules `rules` (restored) at the
/// start. Exits go by `ebcCode` to the first `route` partitions (the count the group's
/// first run found: [`handover_route`]); rules and event time go to every partition. Its
/// checkpoint state is an empty summarize state.
pub fn spawn_forwarder(
    (partitions, route): (usize, usize),
    from: EventTime,
    rules: &Rules,
    sink: Sender<SinkMsg>,
    cap: usize,
) -> (Sender<Vec<SumMsg>>, JoinHandle<anyhow::Result<StageEnd>>) {
    let n = partitions.max(1);
    let route = route.clamp(1, n);
    let (summary_grace_hours, summary_flag) = (rules.summary_grace_hours, rules.summary_flag);
    let first =
        (0..n).map(|p| Record::Stage(p as i32, Box::new(StageMsg::Rules { summary_grace_hours, summary_flag })));
    let out: Vec<Record> = first.collect();
    spawn_stage("cbec-forward", cap, move |rx| {
        let stopped = || anyhow::anyhow!("sink stopped");
        let mut f =
            Forward { partitions: n, now: from, sent: vec![EventTime::MIN; n], broadcast_at: Instant::now(), out };
        let mut nothing = Summarize::default();
        let mut end = StageEnd::default();
        for batch in rx {
            for msg in batch {
                match msg {
                    SumMsg::Exited(x) => {
                        let p = partition_of(&x, route);
                        f.watermark_to(p as usize);
                        f.out.push(Record::Stage(p, Box::new(StageMsg::Exited(x))));
                        end.handed += 1;
                    }
                    SumMsg::Watermark(wm) => {
                        f.now = f.now.max(wm);
                        if wm == EventTime::MAX || f.broadcast_at.elapsed() >= WATERMARK_EVERY {
                            f.broadcast();
                        }
                    }
                    SumMsg::Cut(cut) => {
                        f.broadcast();
                        f.ship(&sink)?;
                        sink.send(cut(nothing.cut())).map_err(|_| stopped())?;
                    }
                    SumMsg::Flush(ack) => {
                        f.broadcast();
                        f.ship(&sink)?;
                        sink.send(SinkMsg::Flush(ack)).map_err(|_| stopped())?;
                    }
                }
            }
            f.ship(&sink)?;
        }
        f.broadcast();
        f.ship(&sink)?;
        Ok(end)
    })
}

/// The summarize state of one partition of `<group_id>.exited`: the lists of its open
/// periods, the last exit applied and the event time reached. It moves with its partition
/// from instance to instance, through the partition's own checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartState {
    state: Summarize,
    applied: u64,
    watermark: EventTime,
    /// The rules in force (the first run's; a restore keeps them).
    rules: Rules,
}

/// What changed in a [`PartState`] since its previous cut.
#[derive(Debug, Serialize, Deserialize)]
pub struct PartChanges {
    steps: PartCut,
    applied: u64,
    watermark: EventTime,
    /// The rules summarized under ([`PartState::summary_rules`]; absent from checkpoints
    /// of versions before the engine stage sent its rules).
    #[serde(default)]
    rules: Option<(u32, u8)>,
}

#[derive(Debug, Serialize, Deserialize)]
enum PartCut {
    Whole(Summarize),
    Changes(SummarizeChanges),
}

impl PartState {
    /// A new partition state under `rules`.
    pub fn new(rules: Rules) -> PartState {
        let mut state = Summarize::default();
        state.track();
        PartState { state, applied: 0, watermark: EventTime::MIN, rules }
    }

    /// Applies one record of the partition; the summaries of the periods it closes (and a
    /// withdrawal, for a list returned after its declaration was made) go to `out`. False
    /// when it was skipped: an exit applied before (sent again after the engine stage
    /// restarted).
    pub fn apply(&mut self, msg: StageMsg, out: &mut Vec<Summary>) -> bool {
        match msg {
            StageMsg::Exited(x) => {
                if x.seq <= self.applied {
                    return false;
                }
                self.applied = x.seq;
                self.state.process(&mut self.rules, x, out);
            }
            StageMsg::Watermark { time } => {
                if time > self.watermark {
                    self.watermark = time;
                    self.state.on_watermark(&mut self.rules, time, out);
                }
            }
            StageMsg::Rules { summary_grace_hours, summary_flag } => {
                self.set_summary_rules((summary_grace_hours, summary_flag))
            }
        }
        true
    }

    /// The rules it summarizes under: hours of grace, `summaryFlag`.
    pub fn summary_rules(&self) -> (u32, u8) {
        (self.rules.summary_grace_hours, self.rules.summary_flag)
    }

    fn set_summary_rules(&mut self, (grace, flag): (u32, u8)) {
        (self.rules.summary_grace_hours, self.rules.summary_flag) = (grace, flag);
    }

    /// True when the partition reached the end of time (a finite input is done).
    pub fn at_end(&self) -> bool {
        self.watermark == EventTime::MAX
    }

    /// Lists waiting in open periods.
    pub fn pending(&self) -> usize {
        self.state.pending()
    }

    /// What changed since the previous cut.
    pub fn cut(&mut self) -> PartChanges {
        let steps = match self.state.cut() {
            Cut::Whole(s) => PartCut::Whole(*s),
            Cut::Changes(c) => PartCut::Changes(c),
        };
        PartChanges { steps, applied: self.applied, watermark: self.watermark, rules: Some(self.summary_rules()) }
    }

    /// Applies the changes of a cut (restoring a checkpoint).
    pub fn apply_changes(&mut self, c: PartChanges) -> anyhow::Result<()> {
        match c.steps {
            PartCut::Whole(s) => self.state = s,
            PartCut::Changes(steps) => self.state.apply(steps).map_err(anyhow::Error::msg)?,
        }
        self.state.track();
        (self.applied, self.watermark) = (c.applied, c.watermark);
        if let Some(rules) = c.rules {
            self.set_summary_rules(rules);
        }
        Ok(())
    }

    /// Whether the partition had reached the end of time when `cp` was saved, read from the
    /// event time its last part (changes, else the whole state) carries: nothing restored.
    pub fn reached_end(cp: &Checkpoint) -> anyhow::Result<bool> {
        /// The one field read; serde skips the rest without building it.
        #[derive(Deserialize)]
        struct Reached {
            watermark: EventTime,
        }
        anyhow::ensure!(cp.engine == MARK, "this checkpoint is not a summarize partition's");
        let last = cp.changes.last().map_or(&cp.summarize, |c| &c.summarize);
        let r: Reached = serde_json::from_slice(last).context("summarize partition event time")?;
        Ok(r.watermark == EventTime::MAX)
    }

    /// The state of a checkpoint (its whole state and the changes after it).
    pub fn restore(cp: &Checkpoint) -> anyhow::Result<PartState> {
        anyhow::ensure!(
            cp.engine == MARK,
            "this checkpoint is not a summarize partition's (an engine's, or of another format)"
        );
        let mut s: PartState = serde_json::from_slice(&cp.summarize).context("summarize partition state")?;
        s.state.track();
        for c in &cp.changes {
            s.apply_changes(serde_json::from_slice(&c.summarize).context("summarize partition changes")?)?;
        }
        Ok(s)
    }
}

/// What a summarize partition's checkpoint holds in place of an engine state.
const MARK: &[u8] = b"\"summarize partition\"";

/// Saves a partition's checkpoints: the changes, or the whole state when the changes since
/// the last whole one would outgrow it (and the first time).
#[derive(Default)]
struct Saver {
    whole: usize,
    changes: usize,
}

impl Saver {
    fn save(&mut self, part: &mut PartState, store: &dyn CheckpointStore, offsets: &Offsets) -> anyhow::Result<u64> {
        let changes = serde_json::to_vec(&part.cut())?;
        if self.whole > 0 && self.changes + changes.len() <= self.whole {
            self.changes += changes.len();
            return store.save(offsets, StateSave::Changes { engine: MARK, summarize: &changes });
        }
        let whole = serde_json::to_vec(part)?;
        (self.whole, self.changes) = (whole.len(), 0);
        store.save(offsets, StateSave::Whole { engine: MARK, summarize: &whole })
    }
}

/// The partitions of `<group_id>.exited`, read from the brokers (after
/// [`crate::kafka::ensure_topics`], which waits for their leaders).
pub fn exited_partitions(cfg: &Config) -> anyhow::Result<Vec<i32>> {
    let meta: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &cfg.brokers).create()?;
    let topic = cfg.exited_topic();
    let md = crate::kafka::patiently(|| meta.fetch_metadata(Some(&topic), Duration::from_secs(10)))?;
    let parts: Vec<i32> = md.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    anyhow::ensure!(!parts.is_empty(), "topic {topic} has no partitions");
    Ok(parts)
}

/// The checkpoint store of partition `p` of `<group_id>.exited`, claiming a new epoch in it
/// (a former holder's later saves never mix with this one's), and where it is: the topic
/// `<group_id>.summarize-<p>.checkpoints`, or the directory `<checkpoint_dir>/summarize-<p>`.
pub fn part_store(cfg: &Config, p: i32) -> anyhow::Result<(Arc<dyn CheckpointStore>, String)> {
    Ok(match cfg.checkpoint_store {
        StoreKind::Kafka => {
            let topic = part_store_topic(cfg, p);
            crate::kafka::create_checkpoint_topic(&cfg.brokers, &topic)?;
            (Arc::new(KafkaTopicStore::new(&cfg.brokers, &topic)?), format!("topic {topic}"))
        }
        StoreKind::Dir => {
            let dir = part_store_dir(cfg, p);
            (Arc::new(LocalDirStore::new(&dir)?), dir)
        }
    })
}

/// Whether partition `p` of `<group_id>.exited` reached the end of time in its last
/// checkpoint (read without claiming an epoch: its holder's saves go on undisturbed).
fn part_finished(cfg: &Config, p: i32) -> anyhow::Result<bool> {
    let store: Box<dyn CheckpointStore> = match cfg.checkpoint_store {
        StoreKind::Kafka => Box::new(KafkaTopicStore::reader(&cfg.brokers, &part_store_topic(cfg, p))?),
        StoreKind::Dir => Box::new(LocalDirStore::reader(part_store_dir(cfg, p))),
    };
    Ok(match store.load()? {
        Some(cp) => PartState::reached_end(&cp)?,
        None => false,
    })
}

/// The checkpoint directory of partition `p` of `<group_id>.exited` (`checkpoint_store = "dir"`).
fn part_store_dir(cfg: &Config, p: i32) -> String {
    format!("{}/summarize-{p}", cfg.checkpoint_dir)
}

/// The checkpoint topic of partition `p` of `<group_id>.exited` (`checkpoint_store = "kafka"`).
pub fn part_store_topic(cfg: &Config, p: i32) -> String {
    format!("{}.summarize-{p}.checkpoints", cfg.group_id)
}

/// A partition this instance holds.
struct Held {
    part: PartState,
    store: Arc<dyn CheckpointStore>,
    saver: Saver,
    /// Next offset to read (`None`: nothing read yet, from the start).
    next: Option<i64>,
}

/// What an instance holds, shared between its loop and the consumer's rebalance callback.
struct Owned {
    cfg: Config,
    topic: String,
    parts: BTreeMap<i32, Held>,
    sink: crate::kafka::KafkaSink,
    /// A failure in the rebalance callback, for the loop to return.
    error: Option<anyhow::Error>,
    /// The final checkpoint is saved: leaving the group saves nothing more.
    closed: bool,
    held_any: bool,
    empty_since: Option<Instant>,
    /// When [`Owned::all_finished`] last looked, and whether it said it waits.
    finished_checked: Option<Instant>,
    said_unfinished: bool,
    skipped: u64,
    stats: RunStats,
}

impl Owned {
    /// Takes partition `p` with the state of its last checkpoint; returns where to read it
    /// from.
    fn take(&mut self, p: i32) -> anyhow::Result<Offset> {
        let (store, place) = part_store(&self.cfg, p)?;
        let cp = store.load().with_context(|| format!("loading the checkpoint from {place}"))?;
        let topic = &self.topic;
        let (part, next) = match &cp {
            Some(cp) => {
                let part = PartState::restore(cp).with_context(|| format!("restoring the checkpoint from {place}"))?;
                crate::runner::say_rules_in_force(&part.rules, &self.cfg.rules, "");
                let next = cp.offsets.get(topic).and_then(|m| m.get(&p)).copied();
                eprintln!(
                    "cbec: took partition {p} of {topic} with its checkpoint from {place} ({} lists waiting)",
                    part.pending()
                );
                (part, next)
            }
            None => {
                eprintln!("cbec: took partition {p} of {topic} (no checkpoint yet: from its start)");
                (PartState::new(self.cfg.rules.clone()), None)
            }
        };
        self.parts.insert(p, Held { part, store, saver: Saver::default(), next });
        m::PartitionsHeld { count: self.parts.len() }.emit();
        self.held_any = true;
        Ok(next.map_or(Offset::Beginning, Offset::Offset))
    }

    /// Makes the outputs durable, then saves a checkpoint of each of `parts`.
    fn save(&mut self, parts: &[i32]) -> anyhow::Result<()> {
        self.sink.flush()?;
        for p in parts {
            let Some(h) = self.parts.get_mut(p) else { continue };
            let t = Instant::now();
            let mut offsets = Offsets::new();
            if let Some(n) = h.next {
                offsets.entry(self.topic.clone()).or_default().insert(*p, n);
            }
            let bytes = h.saver.save(&mut h.part, &*h.store, &offsets)?;
            m::CheckpointDone { seconds: t.elapsed().as_secs_f64(), bytes }.emit();
        }
        self.stats.checkpoints += 1;
        Ok(())
    }

    /// Gives partition `p` up (the group gave it to another instance), after saving its
    /// checkpoint when `save` (not when the assignment was lost: another holds it already).
    fn give_up(&mut self, p: i32, save: bool) {
        if save
            && !self.closed
            && let Err(e) = self.save(&[p])
        {
            self.error.get_or_insert(e.context(format!("checkpointing partition {p} before handing it over")));
        }
        if self.parts.remove(&p).is_some() {
            eprintln!("cbec: handed partition {p} of {} over", self.topic);
            m::PartitionsHeld { count: self.parts.len() }.emit();
        }
    }

    /// Writes a dead letter, counted.
    fn dead(&mut self, d: cbec_schemas::DeadLetter) -> anyhow::Result<()> {
        *self.stats.dead.entry(d.code.clone()).or_default() += 1;
        m::DeadLetterEvent { code: &d.code }.emit();
        self.sink.write(&Record::Dead(d))
    }

    /// Applies one record of partition `p` at `offset`, writing the summaries it closes.
    fn handle(&mut self, p: i32, offset: i64, key: Option<&[u8]>, payload: &[u8]) -> anyhow::Result<()> {
        let Some(h) = self.parts.get_mut(&p) else { return Ok(()) };
        h.next = Some(offset + 1);
        let mut summaries = Vec::new();
        match serde_json::from_slice::<StageMsg>(payload) {
            Ok(s) => {
                *self.stats.input.entry("exited").or_default() += u64::from(matches!(s, StageMsg::Exited(_)));
                if let StageMsg::Rules { summary_grace_hours, summary_flag } = s
                    && (summary_grace_hours, summary_flag) != h.part.summary_rules()
                {
                    let (grace, flag) = h.part.summary_rules();
                    eprintln!(
                        "cbec: partition {p} summarizes under the engine stage's rules from here on: summary_grace_hours {summary_grace_hours} (was {grace}), summary_flag {summary_flag} (was {flag})"
                    );
                }
                if !h.part.apply(s, &mut summaries) {
                    self.skipped += 1;
                }
            }
            Err(e) => {
                // Not what an engine stage of this version sends: kept in the DLQ, skipped.
                let err = cbec_schemas::DecodeError::new(
                    cbec_schemas::ErrorCode::JsonInvalid,
                    format!("not a hand-over record of the engine stage: {e}"),
                );
                self.dead(cbec_schemas::DeadLetter::new(&self.topic, p, offset, key, &err, payload))?;
            }
        }
        if summaries.is_empty() {
            return Ok(());
        }
        self.stats.withdrawals += summaries.iter().filter(|s| s.withdrawal).count() as u64;
        let total = self.stats.output.entry("summaries").or_default();
        *total += summaries.len() as u64;
        m::SummariesOut { total: *total }.emit();
        for s in summaries {
            self.sink.write(&Record::Summary(s))?;
        }
        Ok(())
    }

    /// A finite input is done here: every partition held reached the end of time; or none
    /// has been held for 5 s after some were (or 30 s after the start) and every partition
    /// of the topic reached the end of time in its last checkpoint (the instances holding
    /// them finished). Without that last condition, instances that all lost their partitions
    /// at once (a broker restarting ends every session) would all leave, with the month's
    /// summaries still to be made.
    fn done(&mut self, started: Instant) -> bool {
        if self.parts.is_empty() {
            let since = *self.empty_since.get_or_insert_with(Instant::now);
            since.elapsed() >= Duration::from_secs(5)
                && (self.held_any || started.elapsed() >= Duration::from_secs(30))
                && self.all_finished()
        } else {
            self.empty_since = None;
            self.parts.values().all(|h| h.part.at_end())
        }
    }

    /// Whether every partition of the topic reached the end of time in its last checkpoint,
    /// looked up at most every 2 s (false in between); said once when not.
    fn all_finished(&mut self) -> bool {
        if self.finished_checked.is_some_and(|t| t.elapsed() < Duration::from_secs(2)) {
            return false;
        }
        self.finished_checked = Some(Instant::now());
        let finished = exited_partitions(&self.cfg)
            .and_then(|parts| parts.into_iter().try_fold(true, |all, p| Ok(all && part_finished(&self.cfg, p)?)));
        match finished {
            Ok(true) => true,
            Ok(false) | Err(_) => {
                if !self.said_unfinished {
                    self.said_unfinished = true;
                    let why = finished.err().map(|e| format!(" ({e:#})")).unwrap_or_default();
                    eprintln!(
                        "cbec: holding no partition of {}, but not all of them are finished{why}: waiting",
                        self.topic
                    );
                }
                false
            }
        }
    }
}

/// The consumer context of an instance: partitions move in and out with their state.
struct Rebalancing(Arc<Mutex<Owned>>);

impl ClientContext for Rebalancing {}

impl ConsumerContext for Rebalancing {
    fn rebalance(&self, c: &BaseConsumer<Rebalancing>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let Ok(mut owned) = self.0.lock() else { return };
        let parts: Vec<(String, i32)> = tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                for (t, p) in parts {
                    match owned.take(p).and_then(|at| Ok(tpl.set_partition_offset(&t, p, at)?)) {
                        Ok(()) => {}
                        Err(e) => {
                            owned.error.get_or_insert(e.context(format!("taking partition {p} of {t}")));
                        }
                    }
                }
                if let Err(e) = c.incremental_assign(tpl) {
                    owned.error.get_or_insert(anyhow::Error::from(e).context("assigning partitions"));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = c.assignment_lost();
                for (_, p) in parts {
                    owned.give_up(p, !lost);
                }
                if let Err(e) = c.incremental_unassign(tpl) {
                    owned.error.get_or_insert(anyhow::Error::from(e).context("giving partitions up"));
                }
            }
            e => eprintln!("warning: summarize group: rebalance error {e:?}"),
        }
    }
}

/// Runs a summarize instance (`stage = "summarize"`) against Kafka until stopped, or, when
/// `exit_when_idle`, until every partition it holds reached the end of time. The instances
/// form the consumer group `<group_id>.summarize` on `<group_id>.exited`: the group spreads
/// the partitions over them (`cooperative-sticky`), and a partition moves with its state —
/// the instance giving it up saves its checkpoint, the one taking it loads it and reads on
/// from its offset. An instance that dies loses its partitions when its session ends
/// (`lease_session_ms`); the others take them from their last checkpoints.
pub fn run_summarize(cfg: &Config, exit_when_idle: bool, mut progress: Option<Progress>) -> anyhow::Result<RunStats> {
    let stop = Arc::new(AtomicBool::new(false));
    crate::kafka::stop_on_signals(stop.clone(), crate::kafka::PIPELINE_STOPPING);
    if !crate::kafka::wait_for_brokers(&cfg.brokers, &stop, Duration::from_secs(30)) {
        eprintln!("cbec: stopped while waiting for the brokers");
        return Ok(RunStats { summarize_instance: true, ..RunStats::default() });
    }
    crate::kafka::ensure_topics(cfg).context("creating topics")?;
    let started = Instant::now();
    let topic = cfg.exited_topic();
    let ctopic = std::ffi::CString::new(topic.as_str()).context("topic name")?;
    let owned = Arc::new(Mutex::new(Owned {
        cfg: cfg.clone(),
        topic: topic.clone(),
        parts: BTreeMap::new(),
        sink: crate::kafka::KafkaSink::new(cfg)?,
        error: None,
        closed: false,
        held_any: false,
        empty_since: None,
        finished_checked: None,
        said_unfinished: false,
        skipped: 0,
        stats: RunStats { summarize_instance: true, ..RunStats::default() },
    }));
    let lock = || owned.lock().map_err(|_| anyhow::anyhow!("summarize state poisoned"));
    let mut client = crate::lease::member_of(cfg, &cfg.summarize_group());
    client.set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer<Rebalancing> = client.create_with_context(Rebalancing(owned.clone()))?;
    consumer.subscribe(&[&topic])?;
    eprintln!("cbec: summarize instance of group {} on {topic}", cfg.summarize_group());
    let every = Duration::from_millis(cfg.checkpoint_interval_ms.max(100));
    let (mut last_cp, mut last_progress) = (Instant::now(), Instant::now());
    loop {
        {
            let mut o = lock()?;
            if let Some(e) = o.error.take() {
                return Err(e);
            }
            if stop.load(Ordering::Relaxed) || (exit_when_idle && o.done(started)) {
                break;
            }
        }
        // Not holding the lock: a rebalance runs inside `poll`.
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => {
                let payload = msg.payload().unwrap_or_default();
                let mut o = lock()?;
                // Exits the topic deleted before they were read (no instance read this
                // partition within its retention) are reported, not skipped silently.
                let read_to = o.parts.get(&msg.partition()).map(|h| h.next.unwrap_or(0));
                if let Some(next) = read_to
                    && let Some((from, to)) =
                        crate::kafka::deleted_gap(&consumer, &ctopic, msg.partition(), next, msg.offset())
                {
                    o.dead(crate::kafka::deleted_unread(&topic, msg.partition(), from, to))?;
                }
                o.handle(msg.partition(), msg.offset(), msg.key(), payload)?;
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => eprintln!("warning: summarize consumer: {e}"),
        }
        if last_cp.elapsed() >= every {
            let mut o = lock()?;
            let parts: Vec<i32> = o.parts.keys().copied().collect();
            o.save(&parts)?;
            // For lag monitoring; an instance taking a partition reads on from its checkpoint.
            let mut tpl = TopicPartitionList::new();
            for (p, h) in &o.parts {
                if let Some(n) = h.next {
                    tpl.add_partition_offset(&topic, *p, Offset::Offset(n))?;
                }
            }
            m::MessageCounts { input: &o.stats.input, output: &o.stats.output }.emit();
            let bytes = o.parts.values().map(|h| h.part.state.state_size()).sum();
            m::StateSize { operator: "summarize", bytes }.emit();
            let positions: Vec<(i32, i64)> = o.parts.iter().filter_map(|(p, h)| Some((*p, h.next?))).collect();
            drop(o);
            if tpl.count() > 0
                && let Err(e) = consumer.commit(&tpl, CommitMode::Async)
            {
                eprintln!("warning: consumer-group commit failed: {e}");
            }
            // The high watermarks of the latest fetch responses: asked of the broker, each
            // would wait behind the consumer's fetch (up to 500 ms when nothing is new).
            for (p, next) in positions {
                if let Some(high) = crate::kafka::cached_watermarks(&consumer, &ctopic, p).1 {
                    m::ConsumerLag { topic: &topic, partition: p, lag: (high - next).max(0) }.emit();
                }
            }
            last_cp = Instant::now();
        }
        if let Some(cb) = &mut progress
            && last_progress.elapsed() >= Duration::from_secs(1)
        {
            last_progress = Instant::now();
            let mut o = lock()?;
            o.stats.elapsed = started.elapsed();
            cb(&o.stats);
        }
    }
    let mut o = lock()?;
    let parts: Vec<i32> = o.parts.keys().copied().collect();
    o.save(&parts)?;
    o.closed = true;
    if o.skipped > 0 {
        eprintln!("cbec: skipped {} exit(s) applied before (sent again after the engine stage restarted)", o.skipped);
    }
    let mut stats = std::mem::take(&mut o.stats);
    stats.state_bytes = (0, 0, o.parts.values().map(|h| h.part.state.state_size()).sum());
    drop(o);
    // Leaving the group hands the partitions over (their checkpoints are saved).
    drop(consumer);
    stats.elapsed = started.elapsed();
    stats.input_elapsed = stats.elapsed;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::summary_stage::test_exited as exited;
    use crossbeam_channel::bounded;

    fn wm(t: &str) -> StageMsg {
        StageMsg::Watermark { time: EventTime::parse_rfc3339(t).unwrap() }
    }

    /// The forwarder sends the engine's rules to every partition first, then each exit to
    /// its `ebcCode`'s partition behind the engine's event time at that exit (from the
    /// restored time on), and the event time to every partition before a checkpoint cut,
    /// which follows them.
    #[test]
    fn the_forwarder_sends_exits_behind_their_event_time_and_every_partition_the_cut_time() {
        let (sink, got) = bounded(64);
        let restored = EventTime::parse_rfc3339("2026-11-11T00:00:00+08:00").unwrap();
        let (tx, h) = spawn_forwarder((3, 3), restored, &Rules::default(), sink, 4);
        let (a, b) = (exited(1, "EBC1", 1, true), exited(2, "EBC2", 2, true));
        let (pa, pb) = (partition_of(&a, 3), partition_of(&b, 3));
        let later = EventTime::parse_rfc3339("2026-11-12T00:00:00+08:00").unwrap();
        let cut = |_: cbec_operators::summarize::SummarizeCut| SinkMsg::AfterDurable(Box::new(|| Ok(())));
        tx.send(vec![SumMsg::Exited(a), SumMsg::Watermark(later), SumMsg::Exited(b), SumMsg::Cut(Box::new(cut))])
            .unwrap();
        drop(tx);
        assert_eq!(h.join().unwrap().unwrap().handed, 2);
        let mut seen = Vec::new();
        for m in got.iter() {
            match m {
                SinkMsg::Decided(..) => panic!("the forwarder makes no sorting decision"),
                SinkMsg::Records(rs) => seen.extend(rs.into_iter().map(|r| match r {
                    Record::Stage(p, m) => match *m {
                        StageMsg::Exited(x) => format!("{p}: exit {}", x.seq),
                        StageMsg::Watermark { time } => {
                            format!("{p}: time {}", if time == restored { "restored" } else { "later" })
                        }
                        StageMsg::Rules { .. } => format!("{p}: rules"),
                    },
                    other => panic!("not a hand-over record: {other:?}"),
                })),
                SinkMsg::AfterDurable(_) => seen.push("cut".into()),
                SinkMsg::Flush(_) => seen.push("flush".into()),
            }
        }
        // The engine's rules first, to every partition.
        let mut want: Vec<String> = (0..3).map(|p| format!("{p}: rules")).collect();
        want.extend([format!("{pa}: time restored"), format!("{pa}: exit 1")]);
        want.push(format!("{pb}: time later"));
        want.push(format!("{pb}: exit 2"));
        // At the cut, every partition not yet at the engine's time gets it, then the cut.
        for p in 0..3 {
            if p != pb {
                want.push(format!("{p}: time later"));
            }
        }
        want.push("cut".into());
        assert_eq!(seen, want);
    }

    /// Exits go to the partitions the group's first run found, pinned in the engine; the
    /// topic grown since gets event time and rules everywhere, exits only where they went
    /// before; a topic with fewer partitions than pinned is refused.
    #[test]
    fn exits_keep_the_partitions_they_were_routed_over_when_the_topic_grows() {
        use cbec_operators::engine::Engine;
        let mut engine = Engine::new(Rules::default(), cbec_schemas::hs::Nomenclature::structural(), 1);
        assert_eq!(handover_route(&mut engine, "g.exited", 2).unwrap(), 2, "the first run pins what it finds");
        assert_eq!(handover_route(&mut engine, "g.exited", 3).unwrap(), 2, "grown: still 2");
        let e = handover_route(&mut engine, "g.exited", 1).unwrap_err().to_string();
        assert!(e.contains("g.exited has 1 partitions, fewer than the 2"), "{e}");
        let (sink, got) = bounded(64);
        let (tx, h) = spawn_forwarder((3, 2), EventTime::MIN, &Rules::default(), sink, 4);
        let exits: Vec<Exited> = (1..=40).map(|i| exited(i, &format!("EBC{i}"), i, true)).collect();
        assert!(exits.iter().any(|x| partition_of(x, 3) == 2), "some would go to partition 2 over 3");
        let mut msgs: Vec<SumMsg> = exits.iter().cloned().map(SumMsg::Exited).collect();
        msgs.push(SumMsg::Watermark(EventTime::MAX));
        tx.send(msgs).unwrap();
        drop(tx);
        assert_eq!(h.join().unwrap().unwrap().handed, 40);
        let mut by_part: BTreeMap<i32, (usize, usize, bool)> = BTreeMap::new();
        for m in got.iter() {
            if let SinkMsg::Records(rs) = m {
                for r in rs {
                    let Record::Stage(p, m) = r else { panic!("not a hand-over record") };
                    let e = by_part.entry(p).or_default();
                    match *m {
                        StageMsg::Exited(x) => {
                            assert_eq!(p, partition_of(&x, 2), "routed over 2");
                            e.0 += 1;
                        }
                        StageMsg::Watermark { time } => e.2 |= time == EventTime::MAX,
                        StageMsg::Rules { .. } => e.1 += 1,
                    }
                }
            }
        }
        assert_eq!(by_part.values().map(|v| v.0).sum::<usize>(), 40);
        assert_eq!(by_part[&2], (0, 1, true), "partition 2: rules and the end of time, no exit");
        assert!(by_part[&0].0 > 0 && by_part[&1].0 > 0, "{by_part:?}");
    }

    /// What a partition's summarize state makes of the records an engine stage sends when it
    /// restarts from a checkpoint and sends again what followed it: exits applied before are
    /// skipped (a list is neither declared twice nor revived after it left its summary), an
    /// older watermark changes nothing, and the result equals the run without the repeat. A
    /// list returned after its declaration was made is withdrawn from it.
    #[test]
    fn a_partition_skips_what_a_restarted_engine_stage_sends_again() {
        let first = [
            StageMsg::Exited(exited(1, "EBC1", 1, true)),
            StageMsg::Exited(exited(2, "EBC1", 2, true)),
            wm("2026-11-20T00:00:00+08:00"),
            StageMsg::Exited(exited(2, "EBC1", 3, false)),
            wm("2026-12-05T00:00:00+08:00"),
        ];
        // List 1 is returned after November's declaration: withdrawn from it.
        let returned = Exited { was_summarizable: true, ..exited(1, "EBC1", 5, false) };
        let after =
            [StageMsg::Exited(exited(3, "EBC1", 4, true)), StageMsg::Exited(returned), wm("2026-12-06T00:00:00+08:00")];
        // The engine restarted from a checkpoint after exit 1: it sends 2, 3 and the close again.
        let again = first[1..].to_vec();
        let run = |msgs: Vec<StageMsg>| {
            let mut i = PartState::new(Rules::default());
            let mut out = Vec::new();
            let skipped = msgs.into_iter().filter(|m| !i.apply(m.clone(), &mut out)).count();
            (out, skipped)
        };
        let (plain, none) = run(first.iter().chain(&after).cloned().collect());
        assert_eq!(none, 0);
        let ids: Vec<&str> = plain.iter().map(|s| s.summary_id.as_str()).collect();
        assert_eq!(
            plain.len(),
            3,
            "November's declaration, list 1's withdrawal, the late list's supplementary: {ids:?}"
        );
        assert_eq!(plain[0].invt_nos, ["51412026E00000000001"], "list 2 left its summary before the close");
        assert_eq!(plain[1].summary_id, format!("{}/w1", plain[0].summary_id));
        assert!(plain[1].withdrawal && plain[1].invt_nos == plain[0].invt_nos && plain[1].list_count == -1);
        assert!(plain[2].summary_id.ends_with("/2"), "{ids:?}");
        let (repeated, skipped) = run(first.iter().chain(&again).chain(&after).cloned().collect());
        assert_eq!(skipped, 2, "exits 2 and 3 are skipped");
        assert_eq!(repeated, plain);
    }

    /// A partition summarizes under the rules the engine stage sends, not those of the
    /// instance that created it: a grace of 0 hours closes November on 1 December, where the
    /// instance's 72 hours would wait until the 4th.
    #[test]
    fn a_partition_summarizes_under_the_engine_stages_rules() {
        let run = |first: Option<StageMsg>| {
            let mut i = PartState::new(Rules::default());
            let mut out = Vec::new();
            let msgs = [StageMsg::Exited(exited(1, "EBC1", 1, true)), wm("2026-12-01T01:00:00+08:00")];
            for m in first.into_iter().chain(msgs) {
                assert!(i.apply(m, &mut out));
            }
            (out.len(), i.summary_rules())
        };
        assert_eq!(run(None), (0, (72, 1)), "the instance's own rules: November still open");
        let engine = StageMsg::Rules { summary_grace_hours: 0, summary_flag: 2 };
        assert_eq!(run(Some(engine)), (1, (0, 2)), "the engine's rules: November closed");
    }

    /// A new partition state under the default rules, with a checkpoint store in a
    /// temporary directory (kept while the directory lives) and its saver.
    fn fresh_part() -> (tempfile::TempDir, crate::checkpoint::LocalDirStore, PartState, Saver) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::checkpoint::LocalDirStore::new(dir.path()).unwrap();
        (dir, store, PartState::new(Rules::default()), Saver::default())
    }

    /// Rules the engine stage sent after a partition's whole checkpoint come back from the
    /// changes saved after it.
    #[test]
    fn rules_adopted_after_a_whole_checkpoint_come_back_from_its_changes() {
        let (_dir, store, mut i, mut saver) = fresh_part();
        let mut out = Vec::new();
        for n in 1..=3 {
            i.apply(StageMsg::Exited(exited(n, "EBC1", n, true)), &mut out);
        }
        saver.save(&mut i, &store, &Offsets::new()).unwrap();
        i.apply(StageMsg::Rules { summary_grace_hours: 0, summary_flag: 2 }, &mut out);
        saver.save(&mut i, &store, &Offsets::new()).unwrap();
        let cp = store.load().unwrap().expect("a checkpoint");
        assert_eq!(cp.changes.len(), 1, "the second save is changes");
        assert_eq!(PartState::restore(&cp).unwrap().summary_rules(), (0, 2));
    }

    /// A partition's checkpoints (the whole state, then changes) restore it as it was, with
    /// its last exit and event time.
    #[test]
    fn a_partition_restores_from_its_whole_checkpoint_and_changes() {
        let (_dir, store, mut i, mut saver) = fresh_part();
        let mut out = Vec::new();
        let mut offsets = Offsets::new();
        for n in 1..=40u64 {
            i.apply(StageMsg::Exited(exited(n, &format!("EBC{}", n % 3), n, n % 7 != 0)), &mut out);
            if n % 5 == 0 {
                i.apply(wm(&format!("2026-11-{:02}T00:00:00+08:00", 10 + n / 5)), &mut out);
                offsets.entry("x".into()).or_default().insert(0, n as i64);
                saver.save(&mut i, &store, &offsets).unwrap();
            }
        }
        assert!(saver.changes > 0, "changes were saved after the whole state");
        let cp = store.load().unwrap().expect("a checkpoint");
        assert!(!cp.changes.is_empty());
        let back = PartState::restore(&cp).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&i).unwrap());
        assert_eq!(cp.offsets, offsets);
        assert!(back.pending() > 20);
        let not_ours = Checkpoint { engine: b"{}".to_vec(), ..cp };
        assert!(PartState::restore(&not_ours).is_err(), "an engine's checkpoint is refused");
        assert!(PartState::reached_end(&not_ours).is_err(), "an engine's checkpoint is refused");
    }

    /// Whether a partition reached the end of time is read from its last checkpoint's last
    /// part alone, and says what a whole restore says: after a whole state only, after
    /// changes, before and after the end.
    #[test]
    fn a_partitions_end_is_read_from_its_last_checkpoint_without_a_restore() {
        let (_dir, store, mut i, mut saver) = fresh_part();
        let mut out = Vec::new();
        let offsets = Offsets::new();
        let read = |store: &crate::checkpoint::LocalDirStore| {
            let cp = store.load().unwrap().expect("a checkpoint");
            let end = PartState::reached_end(&cp).unwrap();
            assert_eq!(end, PartState::restore(&cp).unwrap().at_end(), "as a restore says");
            (end, cp.changes.len())
        };
        i.apply(StageMsg::Exited(exited(1, "EBC1", 1, true)), &mut out);
        saver.save(&mut i, &store, &offsets).unwrap();
        assert_eq!(read(&store), (false, 0), "a whole state only, not at the end");
        for n in 2..=6u64 {
            i.apply(StageMsg::Exited(exited(n, "EBC1", n, true)), &mut out);
            i.apply(wm(&format!("2026-11-{:02}T00:00:00+08:00", 10 + n)), &mut out);
            saver.save(&mut i, &store, &offsets).unwrap();
        }
        let (end, changes) = read(&store);
        assert!(!end && changes > 0, "changes after the whole state, not at the end");
        i.apply(StageMsg::Watermark { time: EventTime::MAX }, &mut out);
        saver.save(&mut i, &store, &offsets).unwrap();
        let (end, changes) = read(&store);
        assert!(end && changes > 0, "the end of time, in the last changes");
        let (_dir2, store2, mut j, mut saver2) = fresh_part();
        j.apply(StageMsg::Watermark { time: EventTime::MAX }, &mut out);
        saver2.save(&mut j, &store2, &offsets).unwrap();
        assert_eq!(read(&store2), (true, 0), "the end of time, in a whole state");
    }
}
