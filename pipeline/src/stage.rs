//! Stages in separate processes (`stage = "engine"` and `stage = "summarize"`): the engine
//! stage (declare, clear, seal) hands the exited lists and event time over through the
//! topic `<group_id>.exited`, and summarize instances, each with some of its partitions,
//! build the summary declarations. The summarize work (a month's close summarizes every
//! list of the month) then runs on other machines, shared by as many instances as the
//! topic has partitions; each instance has its own lease, checkpoints and standbys
//! (`<group_id>.summarize-<n>.lease`, `….checkpoints`), and the engine stage those of the
//! group, as with `stage = "all"`.
//!
//! Same outputs as one process, on every run and replay:
//! * an exited list goes to the partition of its `ebcCode`, and a declaration form holds
//!   lists of one `ebcCode`, so every form is built whole by one instance; supplementary
//!   declarations are numbered per form ([`cbec_operators::summarize`]);
//! * each partition carries event time too: before an exit, the engine's watermark at that
//!   exit (when it moved), and the watermark to every partition at least once a second, at
//!   every checkpoint and at the end. An instance therefore sees every exit at the event
//!   time it had in the engine, and closes a period where one process would;
//! * the engine numbers its exits ([`Exited::seq`], checkpointed with it), so after the
//!   engine stage restarts from a checkpoint and sends again what followed it, an instance
//!   skips the exits it has applied (numbers are increasing per partition); an older
//!   watermark changes nothing.
//!
//! The hand-over records travel through the engine's sink like outputs, so a checkpoint of
//! the engine stage is saved only once everything before it is in the topic.

use crate::checkpoint::{Checkpoint, CheckpointStore, Offsets, StateSave};
use crate::config::Config;
use crate::lease::Lease;
use crate::metrics as m;
use crate::record::Record;
use crate::runner::{Progress, RunStats, SinkMsg};
use crate::sink::Sink;
use crate::summary_stage::{StageEnd, SumMsg};
use anyhow::Context;
use cbec_operators::Operator;
use cbec_operators::engine::Exited;
use cbec_operators::rules::Rules;
use cbec_operators::summarize::{Summarize, SummarizeChanges};
use cbec_operators::tracked::{Cut, Incremental};
use cbec_schemas::{EventTime, Summary};
use crossbeam_channel::{Sender, bounded};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
}

impl StageMsg {
    /// Kafka key: the `ebcCode` of an exit.
    pub fn key(&self) -> &str {
        match self {
            StageMsg::Exited(x) => &x.list.ebc_code,
            StageMsg::Watermark { .. } => "",
        }
    }

    /// Identity (for de-duplication by consumers other than the instances).
    pub fn id(&self, partition: i32) -> String {
        match self {
            StageMsg::Exited(x) => format!("exit/{}", x.seq),
            StageMsg::Watermark { time } => format!("watermark/{partition}/{}", time.0),
        }
    }
}

/// The partition of `<group_id>.exited` an exit goes to, of `partitions`.
pub fn partition_of(x: &Exited, partitions: usize) -> i32 {
    cbec_operators::partition_of(&x.list.ebc_code, partitions) as i32
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
/// `sink`. Its checkpoint state is an empty summarize state.
pub fn spawn_forwarder(
    partitions: usize,
    sink: Sender<SinkMsg>,
    cap: usize,
) -> (Sender<Vec<SumMsg>>, JoinHandle<anyhow::Result<StageEnd>>) {
    let (tx, rx) = bounded::<Vec<SumMsg>>(cap.max(1));
    let h = std::thread::Builder::new()
        .name("cbec-forward".into())
        .spawn(move || {
            let stopped = || anyhow::anyhow!("sink stopped");
            let n = partitions.max(1);
            let mut f = Forward {
                partitions: n,
                now: EventTime::MIN,
                sent: vec![EventTime::MIN; n],
                broadcast_at: Instant::now(),
                out: Vec::new(),
            };
            let mut nothing = Summarize::default();
            for batch in rx {
                for msg in batch {
                    match msg {
                        SumMsg::Exited(x) => {
                            let p = partition_of(&x, n);
                            f.watermark_to(p as usize);
                            f.out.push(Record::Stage(p, Box::new(StageMsg::Exited(x))));
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
            Ok(StageEnd::default())
        })
        .expect("spawn forwarder");
    (tx, h)
}

/// The state of one summarize instance: a summarize state per partition of
/// `<group_id>.exited` it holds, with the last exit applied and the event time reached.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Instance {
    parts: BTreeMap<i32, Part>,
    /// The rules in force (the first run's; a restore keeps them).
    rules: Rules,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Part {
    state: Summarize,
    applied: u64,
    watermark: EventTime,
}

impl Part {
    fn new() -> Part {
        let mut state = Summarize::default();
        state.track();
        Part { state, applied: 0, watermark: EventTime::MIN }
    }
}

/// What changed in an [`Instance`] since its previous cut, per partition.
#[derive(Debug, Serialize, Deserialize)]
pub struct InstanceChanges(BTreeMap<i32, PartChanges>);

#[derive(Debug, Serialize, Deserialize)]
struct PartChanges {
    steps: PartCut,
    applied: u64,
    watermark: EventTime,
}

#[derive(Debug, Serialize, Deserialize)]
enum PartCut {
    Whole(Summarize),
    Changes(SummarizeChanges),
}

impl Instance {
    /// A new instance under `rules`.
    pub fn new(rules: Rules) -> Instance {
        Instance { parts: BTreeMap::new(), rules }
    }

    /// Applies one record of partition `p`; the summaries of the periods it closes go to
    /// `out`. False when it was skipped: an exit applied before (sent again after the engine
    /// stage restarted).
    pub fn apply(&mut self, p: i32, msg: StageMsg, out: &mut Vec<Summary>) -> bool {
        let part = self.parts.entry(p).or_insert_with(Part::new);
        match msg {
            StageMsg::Exited(x) => {
                if x.seq <= part.applied {
                    return false;
                }
                part.applied = x.seq;
                part.state.process(&mut self.rules, x, &mut Vec::new());
            }
            StageMsg::Watermark { time } => {
                if time > part.watermark {
                    part.watermark = time;
                    part.state.on_watermark(&mut self.rules, time, out);
                }
            }
        }
        true
    }

    /// True when every one of `parts` reached the end of time (a finite input is done).
    pub fn at_end(&self, parts: &[i32]) -> bool {
        parts.iter().all(|p| self.parts.get(p).is_some_and(|x| x.watermark == EventTime::MAX))
    }

    /// Lists waiting in open periods.
    pub fn pending(&self) -> usize {
        self.parts.values().map(|p| p.state.pending()).sum()
    }

    /// What changed since the previous cut.
    pub fn cut(&mut self) -> InstanceChanges {
        InstanceChanges(
            self.parts
                .iter_mut()
                .map(|(p, part)| {
                    let steps = match part.state.cut() {
                        Cut::Whole(s) => PartCut::Whole(*s),
                        Cut::Changes(c) => PartCut::Changes(c),
                    };
                    (*p, PartChanges { steps, applied: part.applied, watermark: part.watermark })
                })
                .collect(),
        )
    }

    /// Applies the changes of a cut (restoring a checkpoint).
    pub fn apply_changes(&mut self, InstanceChanges(parts): InstanceChanges) -> anyhow::Result<()> {
        for (p, c) in parts {
            let part = self.parts.entry(p).or_insert_with(Part::new);
            match c.steps {
                PartCut::Whole(s) => part.state = s,
                PartCut::Changes(steps) => part.state.apply(steps).map_err(anyhow::Error::msg)?,
            }
            part.state.track();
            (part.applied, part.watermark) = (c.applied, c.watermark);
        }
        Ok(())
    }

    /// The instance of a checkpoint (its whole state and the changes after it).
    pub fn restore(cp: &Checkpoint) -> anyhow::Result<Instance> {
        anyhow::ensure!(
            cp.engine == MARK,
            "this checkpoint is not a summarize instance's (an engine's, or of another format)"
        );
        let mut i: Instance = serde_json::from_slice(&cp.summarize).context("summarize instance state")?;
        for part in i.parts.values_mut() {
            part.state.track();
        }
        for c in &cp.changes {
            i.apply_changes(serde_json::from_slice(&c.summarize).context("summarize instance changes")?)?;
        }
        Ok(i)
    }
}

/// What a summarize instance's checkpoint holds in place of an engine state.
const MARK: &[u8] = b"\"summarize instance\"";

/// Saves an instance's checkpoints: the changes, or the whole state when the changes since
/// the last whole one would outgrow it (and the first time).
#[derive(Default)]
struct Saver {
    whole: usize,
    changes: usize,
}

impl Saver {
    fn save(&mut self, inst: &mut Instance, store: &dyn CheckpointStore, offsets: &Offsets) -> anyhow::Result<u64> {
        let changes = serde_json::to_vec(&inst.cut())?;
        if self.whole > 0 && self.changes + changes.len() <= self.whole {
            self.changes += changes.len();
            return store.save(offsets, StateSave::Changes { engine: MARK, summarize: &changes });
        }
        let whole = serde_json::to_vec(inst)?;
        (self.whole, self.changes) = (whole.len(), 0);
        store.save(offsets, StateSave::Whole { engine: MARK, summarize: &whole })
    }
}

/// The partitions of `<group_id>.exited`, read from the brokers.
pub fn exited_partitions(cfg: &Config) -> anyhow::Result<Vec<i32>> {
    let meta: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &cfg.brokers).create()?;
    let topic = cfg.exited_topic();
    let md = meta.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
    let parts: Vec<i32> = md.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    anyhow::ensure!(!parts.is_empty(), "topic {topic} has no partitions");
    Ok(parts)
}

/// Runs one summarize instance (`stage = "summarize"`) against Kafka until stopped, or, when
/// `exit_when_idle`, until every partition it holds reached the end of time.
pub fn run_summarize(cfg: &Config, exit_when_idle: bool, mut progress: Option<Progress>) -> anyhow::Result<RunStats> {
    crate::kafka::ensure_topics(cfg).context("creating topics")?;
    let stop = Arc::new(AtomicBool::new(false));
    crate::kafka::stop_on_signals(stop.clone());
    let Some(_lease) = Lease::acquire(cfg, &stop, || {})? else {
        eprintln!("cbec: stopped while standing by");
        return Ok(RunStats::default());
    };
    let started = Instant::now();
    let (store, place) = crate::kafka::checkpoint_store(cfg)?;
    let cp = store.load().with_context(|| format!("loading the checkpoint from {place}"))?;
    let (mut inst, mut offsets) = match &cp {
        Some(cp) => {
            let inst = Instance::restore(cp).with_context(|| format!("restoring the checkpoint from {place}"))?;
            let differ = crate::runner::differing_fields(&inst.rules, &cfg.rules);
            if !differ.is_empty() {
                eprintln!(
                    "cbec: the rules in force are the checkpoint's; the configuration's differ in: {}",
                    differ.join(", ")
                );
            }
            eprintln!("cbec: restored checkpoint from {place} ({} lists waiting)", inst.pending());
            (inst, cp.offsets.clone())
        }
        None => (Instance::new(cfg.rules.clone()), Offsets::new()),
    };
    let topic = cfg.exited_topic();
    let owned: Vec<i32> = exited_partitions(cfg)?
        .into_iter()
        .filter(|p| *p as usize % cfg.summarize_instances == cfg.summarize_instance)
        .collect();
    anyhow::ensure!(
        !owned.is_empty(),
        "summarize instance {} of {}: topic {topic} has too few partitions for it",
        cfg.summarize_instance,
        cfg.summarize_instances
    );
    eprintln!(
        "cbec: summarize instance {} of {}: partitions {owned:?} of {topic}",
        cfg.summarize_instance, cfg.summarize_instances
    );
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("group.id", cfg.member_of())
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let at = offsets.entry(topic.clone()).or_default();
    for p in &owned {
        let from = at.get(p).map_or(Offset::Beginning, |o| Offset::Offset(*o));
        tpl.add_partition_offset(&topic, *p, from)?;
    }
    consumer.assign(&tpl)?;
    let mut sink = crate::kafka::KafkaSink::new(cfg)?;
    let mut saver = Saver::default();
    let every = Duration::from_millis(cfg.checkpoint_interval_ms.max(100));
    let (mut last_cp, mut last_progress) = (Instant::now(), Instant::now());
    let mut stats = RunStats::default();
    let (mut skipped, mut summaries) = (0u64, Vec::new());
    let mut checkpoint = |inst: &mut Instance, offsets: &Offsets, sink: &mut crate::kafka::KafkaSink| {
        let t = Instant::now();
        sink.flush()?;
        let bytes = saver.save(inst, &*store, offsets)?;
        m::CheckpointDone { seconds: t.elapsed().as_secs_f64(), bytes }.emit();
        anyhow::Ok(())
    };
    loop {
        if stop.load(Ordering::Relaxed) || (exit_when_idle && inst.at_end(&owned)) {
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => {
                let (p, offset) = (msg.partition(), msg.offset());
                let payload = msg.payload().unwrap_or_default();
                match serde_json::from_slice::<StageMsg>(payload) {
                    Ok(s) => {
                        *stats.input.entry("exited").or_default() += u64::from(matches!(s, StageMsg::Exited(_)));
                        if !inst.apply(p, s, &mut summaries) {
                            skipped += 1;
                        }
                    }
                    Err(e) => {
                        // Not what an engine stage of this version sends: said, kept, skipped.
                        let err = cbec_schemas::DecodeError::new(
                            cbec_schemas::ErrorCode::JsonInvalid,
                            format!("not a hand-over record of the engine stage: {e}"),
                        );
                        let d = cbec_schemas::DeadLetter::new(&topic, p, offset, msg.key(), &err, payload);
                        *stats.dead.entry(d.code.clone()).or_default() += 1;
                        m::DeadLetterEvent { code: &d.code }.emit();
                        sink.write(&Record::Dead(d))?;
                    }
                }
                for s in summaries.drain(..) {
                    *stats.output.entry("summaries").or_default() += 1;
                    sink.write(&Record::Summary(s))?;
                }
                m::SummariesOut { total: stats.output.get("summaries").copied().unwrap_or(0) }.emit();
                offsets.entry(topic.clone()).or_default().insert(p, offset + 1);
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => eprintln!("warning: consumer: {e}"),
        }
        if last_cp.elapsed() >= every {
            checkpoint(&mut inst, &offsets, &mut sink)?;
            stats.checkpoints += 1;
            last_cp = Instant::now();
        }
        if let Some(cb) = &mut progress
            && last_progress.elapsed() >= Duration::from_secs(1)
        {
            last_progress = Instant::now();
            stats.elapsed = started.elapsed();
            cb(&stats);
        }
    }
    checkpoint(&mut inst, &offsets, &mut sink)?;
    stats.checkpoints += 1;
    if skipped > 0 {
        eprintln!("cbec: skipped {skipped} exit(s) applied before (sent again after the engine stage restarted)");
    }
    stats.state_bytes = (0, 0, inst.parts.values().map(|p| p.state.state_size()).sum());
    stats.elapsed = started.elapsed();
    stats.input_elapsed = stats.elapsed;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cbec_schemas::{Decoded, Decoder, Entity, Topic};

    fn exited(n: u64, ebc: &str, seq: u64, summarizable: bool) -> Exited {
        let v = serde_json::json!({"orderNo": format!("O{n}"), "logisticsNo": format!("L{n}"), "logisticsCode": "LOG1", "ebpCode": "EBP1", "ebcCode": ebc, "ownerCode": ebc, "agentCode": "AG1", "customsCode": "5141", "portCode": "5141", "ieDate": "20261111", "statisticsFlag": "B", "tradeMode": "9610", "trafMode": "4", "country": "USA", "POD": "USLAX", "freight": "10", "insuredFee": "0", "packNo": 1, "grossWeight": "1.2", "netWeight": "1", "appType": "1", "appStatus": "1", "appTime": "20261111100000", "copNo": "C1",
            "items": [{"gnum": 1, "itemNo": "IT1", "gcode": "8517130000", "gname": "phone", "gmodel": "x", "country": "USA", "currency": "142", "qty": "1", "qty1": "1", "unit": "011", "unit1": "011", "price": "100", "totalPrice": "100"}]});
        let Decoded::One(Ok(Entity::List(l))) = Decoder::new().decode(Topic::Lists, &serde_json::to_vec(&v).unwrap())
        else {
            panic!("test list does not decode")
        };
        Exited { invt_no: format!("51412026E{n:011}").into(), summarizable, list: (*l).into(), seq }
    }

    fn wm(t: &str) -> StageMsg {
        StageMsg::Watermark { time: EventTime::parse_rfc3339(t).unwrap() }
    }

    /// What an instance makes of the records an engine stage sends when it restarts from a
    /// checkpoint and sends again what followed it: exits applied before are skipped (a
    /// list is neither declared twice nor revived after it left its summary), an older
    /// watermark changes nothing, and the result equals the run without the repeat.
    #[test]
    fn an_instance_skips_what_a_restarted_engine_stage_sends_again() {
        let first = [
            StageMsg::Exited(exited(1, "EBC1", 1, true)),
            StageMsg::Exited(exited(2, "EBC1", 2, true)),
            wm("2026-11-20T00:00:00+08:00"),
            StageMsg::Exited(exited(2, "EBC1", 3, false)),
            wm("2026-12-05T00:00:00+08:00"),
        ];
        let after = [StageMsg::Exited(exited(3, "EBC1", 4, true)), wm("2026-12-06T00:00:00+08:00")];
        // The engine restarted from a checkpoint after exit 1: it sends 2, 3 and the close again.
        let again = first[1..].to_vec();
        let run = |msgs: Vec<StageMsg>| {
            let mut i = Instance::new(Rules::default());
            let mut out = Vec::new();
            let skipped = msgs.into_iter().filter(|m| !i.apply(0, m.clone(), &mut out)).count();
            (out, skipped)
        };
        let (plain, none) = run(first.iter().chain(&after).cloned().collect());
        assert_eq!(none, 0);
        let ids: Vec<&str> = plain.iter().map(|s| s.summary_id.as_str()).collect();
        assert_eq!(plain.len(), 2, "November's declaration, then the late list's supplementary: {ids:?}");
        assert_eq!(plain[0].invt_nos, ["51412026E00000000001"], "list 2 left its summary before the close");
        assert!(plain[1].summary_id.ends_with("/2"), "{ids:?}");
        let (repeated, skipped) = run(first.iter().chain(&again).chain(&after).cloned().collect());
        assert_eq!(skipped, 2, "exits 2 and 3 are skipped");
        assert_eq!(repeated, plain);
    }

    /// An instance's checkpoints (the whole state, then changes) restore it as it was, each
    /// partition with its last exit and event time.
    #[test]
    fn an_instance_restores_from_its_whole_checkpoint_and_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::checkpoint::LocalDirStore::new(dir.path()).unwrap();
        let mut i = Instance::new(Rules::default());
        let mut saver = Saver::default();
        let mut out = Vec::new();
        let mut offsets = Offsets::new();
        for n in 1..=40u64 {
            let p = (n % 3) as i32;
            i.apply(p, StageMsg::Exited(exited(n, &format!("EBC{p}"), n, n % 7 != 0)), &mut out);
            if n % 5 == 0 {
                i.apply(p, wm("2026-11-20T00:00:00+08:00"), &mut out);
                offsets.entry("x".into()).or_default().insert(p, n as i64);
                saver.save(&mut i, &store, &offsets).unwrap();
            }
        }
        assert!(saver.changes > 0, "changes were saved after the whole state");
        let cp = store.load().unwrap().expect("a checkpoint");
        assert!(!cp.changes.is_empty());
        let back = Instance::restore(&cp).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&i).unwrap());
        assert_eq!(cp.offsets, offsets);
        assert!(back.pending() > 20);
        let not_ours = Checkpoint { engine: b"{}".to_vec(), ..cp };
        assert!(Instance::restore(&not_ours).is_err(), "an engine's checkpoint is refused");
    }
}
