//! Kafka mode: rdkafka consumers for the input topics and idempotent producers for the
//! outputs, around the same engine as the embedded mode.
//!
//! * Offsets are owned by the pipeline: partitions are assigned explicitly and consumption
//!   starts from the last checkpoint's offsets (else the beginning); consumer-group commits
//!   follow each checkpoint (for lag monitoring).
//! * A checkpoint first flushes the producers (every output of what was processed is
//!   acknowledged by the broker), then saves offsets + state atomically. After a crash the
//!   replay from those offsets reproduces the same records with the same identities.
//! * Sorting decisions go through their own producer with `linger.ms=0`; other outputs are
//!   batched (`linger.ms=5`). A full producer queue blocks the sink (backpressure).
//! * SIGINT/SIGTERM: stop consuming, checkpoint, exit 0.
//!
//! Limitation: one process consumes every partition (explicit assignment); running several
//! processes of one group needs partition-aware state movement (see `checkpoint`).

use crate::checkpoint::{CheckpointStore, LocalDirStore};
use crate::config::Config;
use crate::generator::Generated;
use crate::record::{OUTPUTS, Record};
use crate::runner::{
    Batch, Batcher, EngineMsg, EngineRun, RunStats, batches_for, decode_message, run_engine, spawn_sink,
};
use crate::sequencer::SourceId;
use crate::sink::Sink;
use anyhow::Context;
use cbec_schemas::hs::Nomenclature;
use cbec_schemas::{Decoder, Topic};
use crossbeam_channel::{Receiver, Sender, bounded};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counts delivery failures so a flush can report them (nothing lost silently).
#[derive(Default, Clone)]
pub struct Deliveries {
    failed: Arc<AtomicU64>,
}

impl Deliveries {
    /// Records that could not be delivered so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r {
            eprintln!("error: delivery failed: {e}");
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// An idempotent producer (`acks=all`, lz4) that counts delivery failures in `ctx`.
pub fn producer(brokers: &str, linger_ms: u32, ctx: Deliveries) -> anyhow::Result<ThreadedProducer<Deliveries>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger_ms.to_string())
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "200000")
        .create_with_context(ctx)?)
}

/// Sends one record, waiting while librdkafka's queue is full (backpressure, not loss).
pub fn send_blocking(p: &ThreadedProducer<Deliveries>, topic: &str, key: &str, payload: &[u8]) -> anyhow::Result<()> {
    let mut rec = BaseRecord::to(topic).key(key).payload(payload);
    loop {
        match p.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                rec = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

/// Output records to Kafka topics, keyed per CONTRACT §3.
pub struct KafkaSink {
    batched: ThreadedProducer<Deliveries>,
    fast: ThreadedProducer<Deliveries>,
    ctx: Deliveries,
    topics: HashMap<&'static str, String>,
}

impl KafkaSink {
    /// Producers for `cfg`'s output topics.
    pub fn new(cfg: &Config) -> anyhow::Result<KafkaSink> {
        let ctx = Deliveries::default();
        Ok(KafkaSink {
            batched: producer(&cfg.brokers, 5, ctx.clone())?,
            fast: producer(&cfg.brokers, 0, ctx.clone())?,
            ctx,
            topics: OUTPUTS.iter().map(|t| (*t, cfg.output_topic(t))).collect(),
        })
    }
}

impl Sink for KafkaSink {
    fn write(&mut self, r: &Record) -> anyhow::Result<()> {
        let p = if matches!(r, Record::Sorting(_)) { &self.fast } else { &self.batched };
        send_blocking(p, &self.topics[r.topic()], r.key(), &r.to_json())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.fast.flush(Duration::from_secs(60))?;
        self.batched.flush(Duration::from_secs(60))?;
        let failed = self.ctx.failed.load(Ordering::Relaxed);
        anyhow::ensure!(failed == 0, "{failed} output records were not delivered");
        Ok(())
    }
}

/// Creates the input and output topics if missing.
pub fn ensure_topics(cfg: &Config) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &cfg.brokers).create()?;
    let mut names: Vec<String> = Topic::ALL.iter().map(|t| cfg.input_topic(*t)).collect();
    names.extend(OUTPUTS.iter().map(|t| cfg.output_topic(t)));
    let parts = cfg.partitions.min(64) as i32;
    let new: Vec<NewTopic<'_>> = names.iter().map(|n| NewTopic::new(n, parts, TopicReplication::Fixed(1))).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let res =
        rt.block_on(admin.create_topics(&new, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))))?;
    for r in res {
        if let Err((t, e)) = r
            && e != RDKafkaErrorCode::TopicAlreadyExists
        {
            anyhow::bail!("creating topic {t}: {e}");
        }
    }
    Ok(())
}

/// Produces a generated story to the input topics (`rate` messages/s, 0 = unthrottled),
/// with a progress line on stderr about once a second when `progress` is set.
pub fn produce_story(brokers: &str, cfg: &Config, story: &Generated, rate: u64, progress: bool) -> anyhow::Result<u64> {
    let total: usize = story.topics.values().map(Vec::len).sum();
    let mut last = Instant::now();
    let mut c = cfg.clone();
    c.brokers = brokers.to_string();
    ensure_topics(&c)?;
    let ctx = Deliveries::default();
    let p = producer(brokers, 5, ctx.clone())?;
    // Interleave topics in story order so consumers see a realistic mix.
    let mut cursors: Vec<(Topic, usize)> = story.topics.keys().map(|t| (*t, 0)).collect();
    let started = Instant::now();
    let mut sent = 0u64;
    loop {
        let mut any = false;
        for (t, i) in cursors.iter_mut() {
            let msgs = &story.topics[t];
            for _ in 0..64 {
                let Some((key, payload)) = msgs.get(*i) else { break };
                send_blocking(&p, &c.input_topic(*t), key, payload)?;
                *i += 1;
                sent += 1;
                any = true;
                if progress && last.elapsed() >= Duration::from_secs(1) {
                    last = Instant::now();
                    let secs = started.elapsed().as_secs_f64();
                    eprintln!("cbec gen: {sent}/{total} produced ({:.0}/s)", sent as f64 / secs);
                }
                if rate > 0 {
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
        }
        if !any {
            break;
        }
    }
    p.flush(Duration::from_secs(60))?;
    anyhow::ensure!(ctx.failed.load(Ordering::Relaxed) == 0, "some messages were not delivered");
    Ok(sent)
}

/// Keeps the high watermark of every partition from librdkafka's statistics (no broker
/// round trip), to tell which partitions are at their end (idle).
#[derive(Default, Clone)]
pub struct HighWatermarks {
    hi: Arc<std::sync::Mutex<HashMap<(String, i32), i64>>>,
}

impl ClientContext for HighWatermarks {
    fn stats(&self, st: rdkafka::Statistics) {
        let mut hi = self.hi.lock().expect("not poisoned");
        for (t, topic) in st.topics {
            for (p, part) in topic.partitions {
                // High watermarks only grow: a partition not fetched yet may report a stale
                // or zero one, which must not make it look caught up (idle) too early.
                if p >= 0 && part.hi_offset >= 0 {
                    let e = hi.entry((t.clone(), p)).or_insert(part.hi_offset);
                    *e = (*e).max(part.hi_offset);
                }
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for HighWatermarks {}

struct ConsumerLoop {
    consumer: BaseConsumer<HighWatermarks>,
    marks: HighWatermarks,
    topics: HashMap<String, Topic>,
    next: HashMap<(String, i32), i64>,
    idle: HashMap<(String, i32), bool>,
}

/// Takes one consumed message: offset and idleness bookkeeping, then decoding into the
/// batch. False when the topic is not an input.
fn accept(
    topics: &HashMap<String, Topic>,
    next: &mut HashMap<(String, i32), i64>,
    idle: &mut HashMap<(String, i32), bool>,
    m: &rdkafka::message::BorrowedMessage<'_>,
    dec: &mut Decoder,
    batcher: &mut Batcher,
) -> bool {
    let topic_name = m.topic();
    let Some(topic) = topics.get(topic_name).copied() else { return false };
    let src: SourceId = (topic, m.partition());
    let k = (topic_name.to_string(), m.partition());
    next.insert(k.clone(), m.offset() + 1);
    if idle.insert(k, false) == Some(true) {
        batcher.push(EngineMsg::Idle(src, false));
    }
    let mut send = |x: EngineMsg| batcher.push(x);
    decode_message(
        dec,
        topic,
        topic_name,
        src,
        m.offset(),
        m.key(),
        m.payload().unwrap_or(&[]),
        Instant::now(),
        &mut send,
    );
    true
}

fn consumer_thread(
    mut cl: ConsumerLoop,
    tx: Sender<Batch>,
    commits: Receiver<BTreeMap<String, BTreeMap<i32, i64>>>,
    stop: Arc<AtomicBool>,
    exit_when_idle: bool,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    std::thread::Builder::new()
        .name("cbec-consumer".into())
        .spawn(move || {
            let mut dec = Decoder::new();
            let mut last_check = Instant::now();
            let mut idle_since: Option<Instant> = None;
            let mut batcher = Batcher::new(tx, 256);
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                while let Ok(offsets) = commits.try_recv() {
                    let mut tpl = TopicPartitionList::new();
                    for (t, ps) in offsets {
                        for (p, o) in ps {
                            tpl.add_partition_offset(&t, p, Offset::Offset(o))?;
                        }
                    }
                    if let Err(e) = cl.consumer.commit(&tpl, CommitMode::Async) {
                        eprintln!("warning: consumer-group commit failed: {e}");
                    }
                }
                let polled = match cl.consumer.poll(Duration::ZERO) {
                    // Nothing buffered by librdkafka: hand over what we have, then wait.
                    None => {
                        batcher.flush();
                        cl.consumer.poll(Duration::from_millis(50))
                    }
                    other => other,
                };
                match polled {
                    None => {}
                    Some(Ok(m)) if accept(&cl.topics, &mut cl.next, &mut cl.idle, &m, &mut dec, &mut batcher) => {
                        idle_since = None;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(KafkaError::PartitionEOF(_))) => {}
                    Some(Err(e)) => eprintln!("warning: consumer: {e}"),
                }
                if last_check.elapsed() >= Duration::from_millis(100) {
                    last_check = Instant::now();
                    let mut all_idle = true;
                    let marks = cl.marks.hi.lock().expect("not poisoned").clone();
                    for ((t, p), next) in cl.next.clone() {
                        let high = marks.get(&(t.clone(), p)).copied().unwrap_or(i64::MAX);
                        crate::metrics::ConsumerLag { topic: &t, partition: p, lag: (high - next).max(0) }.emit();
                        let now_idle = next >= high;
                        all_idle &= now_idle;
                        let k = (t.clone(), p);
                        if cl.idle.get(&k).copied() != Some(now_idle) {
                            cl.idle.insert(k, now_idle);
                            batcher.push(EngineMsg::Idle((cl.topics[&t], p), now_idle));
                        }
                    }
                    if exit_when_idle && all_idle {
                        let since = *idle_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= Duration::from_secs(2) {
                            break;
                        }
                    }
                }
            }
            for (t, p) in cl.next.keys() {
                batcher.push(EngineMsg::Done((cl.topics[t], *p)));
            }
            batcher.flush();
            Ok(())
        })
        .expect("spawn consumer")
}

fn stop_on_signals(stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            eprintln!("cbec: signal received: draining, checkpointing, exiting");
            stop.store(true, Ordering::Relaxed);
        });
    });
}

/// Runs the pipeline against Kafka.
pub fn run(
    cfg: &Config,
    hs: Nomenclature,
    exit_when_idle: bool,
    progress: Option<crate::runner::Progress>,
) -> anyhow::Result<RunStats> {
    ensure_topics(cfg).context("creating topics")?;
    let store = LocalDirStore::new(&cfg.checkpoint_dir)?;
    let restored = store.load()?;
    let marks = HighWatermarks::default();
    let consumer: BaseConsumer<HighWatermarks> = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("statistics.interval.ms", "100")
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("queued.max.messages.kbytes", "65536")
        .create_with_context(marks.clone())?;
    let mut tpl = TopicPartitionList::new();
    let mut topics = HashMap::new();
    let mut next = HashMap::new();
    let mut sources = Vec::new();
    for t in Topic::ALL {
        let name = cfg.input_topic(t);
        topics.insert(name.clone(), t);
        let md = consumer.fetch_metadata(Some(&name), Duration::from_secs(10))?;
        for mt in md.topics() {
            for p in mt.partitions() {
                let from = restored.as_ref().and_then(|c| c.offsets.get(&name)).and_then(|m| m.get(&p.id())).copied();
                let (low, high) = consumer.fetch_watermarks(&name, p.id(), Duration::from_secs(10))?;
                marks.hi.lock().expect("not poisoned").insert((name.clone(), p.id()), high);
                let start = from.unwrap_or(low).max(low);
                tpl.add_partition_offset(&name, p.id(), Offset::Offset(start))?;
                next.insert((name.clone(), p.id()), start);
                sources.push((t, p.id()));
            }
        }
    }
    consumer.assign(&tpl)?;
    if restored.is_some() {
        eprintln!("cbec: restored checkpoint from {}", cfg.checkpoint_dir);
    }
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signals(stop.clone());
    let (tx, rx) = bounded(batches_for(cfg.queue_capacity, 256));
    let (ctx, crx) = bounded(4);
    let idle = next.keys().map(|k| (k.clone(), false)).collect();
    let h =
        consumer_thread(ConsumerLoop { consumer, marks, topics, next, idle }, tx, crx, stop.clone(), exit_when_idle);
    let (sink_tx, sink_h) = spawn_sink(Box::new(KafkaSink::new(cfg)?), cfg.queue_capacity);
    let run = EngineRun {
        end_of_time_when_done: exit_when_idle,
        checkpoint: Some((Arc::new(store), Duration::from_millis(cfg.checkpoint_interval_ms))),
        commits: Some(ctx),
        stop: stop.clone(),
        progress,
        ..EngineRun::new(cfg, hs, vec![(sources, rx)], sink_tx)
    };
    let stats = run_engine(run, restored);
    stop.store(true, Ordering::Relaxed);
    h.join().map_err(|_| anyhow::anyhow!("consumer panicked"))??;
    sink_h.join().map_err(|_| anyhow::anyhow!("sink panicked"))??;
    stats
}
