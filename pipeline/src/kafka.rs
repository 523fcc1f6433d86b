//! Kafka mode: rdkafka consumers for the input topics and idempotent producers for the
//! outputs, around the same engine as the embedded mode.
//!
//! * Offsets are owned by the pipeline: partitions are assigned explicitly and consumption
//!   starts from the last checkpoint's offsets (else the beginning); consumer-group commits
//!   follow each checkpoint (for lag monitoring).
//! * Each partition has its own librdkafka queue; the consumer thread reads the partition
//!   the engine's sequencer waits for (lowest event time), so the sequencer stays small and
//!   the order is canonical whatever the backlog. A partition is idle (does not hold the
//!   others back) once read up to librdkafka's cached high watermark or its reported end.
//! * A checkpoint first flushes the producers (every output of what was processed is
//!   acknowledged by the broker), then saves offsets + state atomically. After a crash the
//!   replay from those offsets reproduces the same records with the same identities.
//! * Sorting decisions go through their own producer with `linger.ms=0`; other outputs are
//!   batched (`linger.ms=5`). A full producer queue blocks the sink (backpressure).
//! * SIGINT/SIGTERM: stop consuming, checkpoint, exit 0.
//!
//! * Several processes of one group: the one holding the group's lease ([`crate::lease`])
//!   consumes every partition (explicit assignment); the others stand by and take over with
//!   the state it checkpointed. Splitting the partitions between processes is not done.
//! * Explicitly assigned, input partitions added while running would go unread until a
//!   restart: a watcher looks up the partition counts every [`PARTITION_CHECK`], and when
//!   one grew the consumer takes the new partitions in from their first offset while the
//!   run goes on (its state stays where it is: no checkpoint reloaded, no pause).

use crate::checkpoint::{CheckpointStore, LocalDirStore, Offsets};
use crate::config::{Config, Stage, StoreKind};
use crate::generator::Generated;
use crate::kafka_store::KafkaTopicStore;
use crate::lease::Lease;
use crate::record::{OUTPUTS, Record};
use crate::runner::{
    Batch, Batcher, EngineMsg, EngineRun, Restored, RunStats, Sent, batches_for, decode_message, run_engine, spawn_sink,
};
use crate::sequencer::{SourceId, rank};
use crate::sink::Sink;
use crate::standby::Standby;
use anyhow::Context;
use cbec_schemas::hs::Nomenclature;
use cbec_schemas::{Decoder, Topic};
use crossbeam_channel::{Receiver, Sender, bounded};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, DefaultConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The largest output record cbec produces, and the `max.message.bytes` it creates
/// `cbec.summaries` with: a month's summary declaration lists every `invtNo` it covers
/// (23 bytes each in JSON), so one company's month on one route passes the 1 MB that
/// librdkafka and the broker allow by default at about 45,000 lists; 64 MiB holds about
/// 2.9 million, and stays below the broker's `socket.request.max.bytes` (100 MiB).
pub const MAX_RECORD_BYTES: usize = 64 << 20;

/// How to let `topic` take cbec's largest records.
fn raise_limit(topic: &str) -> String {
    format!(
        "raise it to {MAX_RECORD_BYTES} (kafka-configs.sh --alter --entity-type topics --entity-name {topic} --add-config max.message.bytes={MAX_RECORD_BYTES})"
    )
}

/// Epochs whose records may be in flight at once ([`Deliveries::mark`] waits beyond).
const EPOCHS: usize = 32;

/// Counts delivery failures so a flush can report them (nothing lost silently), and the
/// records in flight by epoch (the records produced between two [`Deliveries::mark`]s, a
/// checkpoint interval), so that a checkpoint can wait for the deliveries of what was
/// produced before it on another thread while the producing thread goes on.
#[derive(Default, Clone)]
pub struct Deliveries {
    failed: Arc<AtomicU64>,
    flight: Arc<InFlight>,
}

#[derive(Default)]
struct InFlight {
    /// Records produced and neither delivered nor failed yet, by epoch modulo [`EPOCHS`].
    pending: [AtomicI64; EPOCHS],
    /// The epoch records are produced in.
    current: AtomicU64,
    /// Every epoch below it is delivered.
    confirmed: AtomicU64,
}

impl Deliveries {
    /// Records that could not be delivered so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Counts a record about to be produced; its delivery report brings back the epoch.
    fn open(&self) -> usize {
        let e = self.flight.current.load(Ordering::Relaxed) as usize;
        self.flight.pending[e % EPOCHS].fetch_add(1, Ordering::Relaxed);
        e
    }

    /// A record of epoch `e` delivered, or failed.
    fn close(&self, e: usize) {
        self.flight.pending[e % EPOCHS].fetch_sub(1, Ordering::Release);
    }

    /// Ends the epoch records are produced in and returns it. Called by the one thread that
    /// produces (its `open`s come before); waits while [`EPOCHS`] epochs are unconfirmed.
    pub(crate) fn mark(&self) -> u64 {
        let e = self.flight.current.load(Ordering::Relaxed);
        while e + 1 - self.flight.confirmed.load(Ordering::Acquire) >= EPOCHS as u64 {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.flight.current.store(e + 1, Ordering::Relaxed);
        e
    }

    /// Waits until every record produced in epoch `upto` and before it was delivered or
    /// failed, for at most `limit`; fails if any record could not be delivered.
    pub(crate) fn wait_delivered(&self, upto: u64, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut e = self.flight.confirmed.load(Ordering::Acquire);
        while e <= upto {
            if self.flight.pending[e as usize % EPOCHS].load(Ordering::Acquire) == 0 {
                e += 1;
                continue;
            }
            anyhow::ensure!(
                started.elapsed() < limit,
                "output records produced before a checkpoint were not delivered within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        self.flight.confirmed.fetch_max(upto + 1, Ordering::Release);
        let failed = self.failed();
        anyhow::ensure!(failed == 0, "{failed} output records were not delivered");
        Ok(())
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;
    fn delivery(&self, r: &DeliveryResult<'_>, epoch: usize) {
        self.close(epoch);
        if let Err((e, m)) = r {
            if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) {
                let size = m.payload().map_or(0, <[u8]>::len);
                eprintln!(
                    "error: delivery to {} failed: {e}: the record has {size} bytes, more than the topic's max.message.bytes allows; {}",
                    m.topic(),
                    raise_limit(m.topic())
                );
            } else {
                eprintln!("error: delivery failed: {e}");
            }
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// An idempotent producer (`acks=all`, lz4, records up to [`MAX_RECORD_BYTES`]) that counts
/// delivery failures in `ctx`.
pub fn producer(brokers: &str, linger_ms: u32, ctx: Deliveries) -> anyhow::Result<ThreadedProducer<Deliveries>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger_ms.to_string())
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "200000")
        .set("message.max.bytes", MAX_RECORD_BYTES.to_string())
        .create_with_context(ctx)?)
}

/// Sends one record, waiting while librdkafka's queue is full (backpressure, not loss).
pub fn send_blocking(p: &ThreadedProducer<Deliveries>, topic: &str, key: &str, payload: &[u8]) -> anyhow::Result<()> {
    send_to(p, topic, None, key, payload)
}

/// [`send_blocking`] to a given partition (`None`: by key).
pub fn send_to(
    p: &ThreadedProducer<Deliveries>,
    topic: &str,
    partition: Option<i32>,
    key: &str,
    payload: &[u8],
) -> anyhow::Result<()> {
    let epoch = p.context().open();
    let mut rec = BaseRecord::with_opaque_to(topic, epoch).key(key).payload(payload);
    rec.partition = partition;
    loop {
        match p.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                rec = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => {
                p.context().close(epoch);
                if let KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge) = e {
                    anyhow::bail!(
                        "a record of {} bytes for {topic} is larger than cbec produces ({MAX_RECORD_BYTES} bytes)",
                        payload.len()
                    )
                }
                return Err(e.into());
            }
        }
    }
}

/// Waits until everything `p` was given is delivered (or failed), for at most `limit`,
/// looking every millisecond. rdkafka's own `flush` waits for librdkafka's events in
/// steps of 100 ms, and a threaded producer's polling thread takes those events, so each
/// step lasts its full 100 ms: every flush with a record in flight took ≥ 100 ms
/// (`BENCHMARKS.md`, twenty-first session).
fn flush_promptly(p: &ThreadedProducer<Deliveries>, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        // A flush that does not wait: librdkafka sends what lingers at once, and says
        // whether anything is still in flight.
        match p.flush(Duration::ZERO) {
            Ok(()) => return Ok(()),
            Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) if started.elapsed() < limit => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("flushing the outputs (waited {limit:?} at most)")));
            }
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
            topics: OUTPUTS.iter().map(|t| (*t, cfg.output_topic(t))).chain([("exited", cfg.exited_topic())]).collect(),
        })
    }
}

impl Sink for KafkaSink {
    fn write(&mut self, r: &Record) -> anyhow::Result<()> {
        let p = if matches!(r, Record::Sorting(_)) { &self.fast } else { &self.batched };
        let partition = if let Record::Stage(p, _) = r { Some(*p) } else { None };
        send_to(p, &self.topics[r.topic()], partition, r.key(), &r.to_json())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        flush_promptly(&self.fast, Duration::from_secs(60))?;
        flush_promptly(&self.batched, Duration::from_secs(60))?;
        let failed = self.ctx.failed.load(Ordering::Relaxed);
        anyhow::ensure!(failed == 0, "{failed} output records were not delivered");
        Ok(())
    }

    /// The deliveries of what was produced so far, waited for by the checkpoint writer:
    /// the sink thread goes on producing (sorting decisions do not wait for the broker's
    /// acknowledgement of everything before a checkpoint).
    fn durable(&mut self) -> anyhow::Result<Option<crate::sink::Durable>> {
        let upto = self.ctx.mark();
        let ctx = self.ctx.clone();
        Ok(Some(Box::new(move || ctx.wait_delivered(upto, Duration::from_secs(60)))))
    }
}

/// Creates the input and output topics, the lease topic of the group and the topic to the
/// summarize instances (stages in separate processes), if missing.
pub fn ensure_topics(cfg: &Config) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &cfg.brokers).create()?;
    let inputs: Vec<String> = Topic::ALL.iter().map(|t| cfg.input_topic(*t)).collect();
    let outputs: Vec<String> = OUTPUTS.iter().map(|t| cfg.output_topic(t)).collect();
    let parts = cfg.partitions.min(64) as i32;
    let lease = crate::lease::topic(cfg);
    let summaries = cfg.output_topic("summaries");
    let max_record = MAX_RECORD_BYTES.to_string();
    // When a message was sent bounds its event time (`max_lead_ms`): on input topics the
    // broker's clock at append, not the producer's, which may run behind.
    let mut new: Vec<NewTopic<'_>> = inputs
        .iter()
        .map(|n| NewTopic::new(n, parts, TopicReplication::Fixed(1)).set("message.timestamp.type", "LogAppendTime"))
        .collect();
    new.extend(outputs.iter().map(|n| {
        let t = NewTopic::new(n, parts, TopicReplication::Fixed(1));
        if *n == summaries { t.set("max.message.bytes", &max_record) } else { t }
    }));
    new.push(NewTopic::new(&lease, 1, TopicReplication::Fixed(1)));
    let exited = cfg.exited_topic();
    if cfg.stage != Stage::All {
        new.push(NewTopic::new(&exited, cfg.exited_partitions.min(1024) as i32, TopicReplication::Fixed(1)));
    }
    let checkpoints = crate::kafka_store::topic(cfg);
    if cfg.checkpoint_store == StoreKind::Kafka && cfg.stage != Stage::Summarize {
        new.push(checkpoint_topic(&checkpoints));
    }
    create_topics(&admin, &new)?;
    match record_limit_warning(&admin, &summaries) {
        Ok(Some(w)) => eprintln!("warning: {w}"),
        Ok(None) => {}
        Err(e) => eprintln!("warning: could not read the record limit of {summaries}: {e:#}"),
    }
    Ok(())
}

/// A warning when `topic` (created before, by someone else) takes records smaller than
/// [`MAX_RECORD_BYTES`]: a summary declaration larger than its limit would not be
/// delivered (the run stops with an error at that month's close, and again on every
/// restart until the limit is raised). An error when its configuration cannot be read.
pub fn record_limit_warning(admin: &AdminClient<DefaultClientContext>, topic: &str) -> anyhow::Result<Option<String>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let res = rt.block_on(admin.describe_configs(
        &[ResourceSpecifier::Topic(topic)],
        &AdminOptions::new().request_timeout(Some(Duration::from_secs(30))),
    ))?;
    let resource =
        res.into_iter().next().context("no answer")?.map_err(|e| anyhow::anyhow!("describing {topic}: {e}"))?;
    let limit = resource
        .get("max.message.bytes")
        .and_then(|e| e.value.as_deref()?.parse::<usize>().ok())
        .with_context(|| format!("{topic} has no max.message.bytes"))?;
    Ok((limit < MAX_RECORD_BYTES).then(|| {
        format!(
            "{topic} takes records of at most {limit} bytes (max.message.bytes): a summary declaration larger than that (about {} lists) cannot be delivered; {}",
            limit / 23,
            raise_limit(topic)
        )
    }))
}

/// A checkpoint topic: two partitions, kept until cbec deletes what it no longer needs.
fn checkpoint_topic(name: &str) -> NewTopic<'_> {
    NewTopic::new(name, 2, TopicReplication::Fixed(1))
        .set("retention.ms", "-1")
        .set("retention.bytes", "-1")
        .set("cleanup.policy", "delete")
}

/// Creates the checkpoint topic `name` if missing.
pub(crate) fn create_checkpoint_topic(brokers: &str, name: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    create_topics(&admin, &[checkpoint_topic(name)])
}

/// Creates `new`; topics that exist already are fine. Returns once every partition of
/// them has a leader: a topic just created (here or by another process) refuses reads and
/// metadata for a moment (`NotLeaderForPartition`).
fn create_topics(admin: &AdminClient<DefaultClientContext>, new: &[NewTopic<'_>]) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let res =
        rt.block_on(admin.create_topics(new, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))))?;
    for r in res {
        if let Err((t, e)) = r
            && e != RDKafkaErrorCode::TopicAlreadyExists
        {
            anyhow::bail!("creating topic {t}: {e}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for t in new {
        while !has_leaders(admin, t.name) {
            anyhow::ensure!(Instant::now() < deadline, "topic {} has no leader after 30 s", t.name);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Whether every partition of `topic` has a leader (and it has partitions).
fn has_leaders(admin: &AdminClient<DefaultClientContext>, topic: &str) -> bool {
    let Ok(md) = admin.inner().fetch_metadata(Some(topic), Duration::from_secs(10)) else { return false };
    md.topics().iter().all(|t| {
        t.error().is_none()
            && !t.partitions().is_empty()
            && t.partitions().iter().all(|p| p.leader() >= 0 && p.error().is_none())
    })
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

/// The (low, high) watermarks librdkafka cached from its latest fetch response for a
/// partition (no broker round trip), each if it has one.
#[allow(unsafe_code)]
pub(crate) fn cached_watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &CStr,
    partition: i32,
) -> (Option<i64>, Option<i64>) {
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid while `consumer` is borrowed; `topic` is a valid
    // NUL-terminated string for the call; `low` and `high` are valid for writes. The
    // function only reads librdkafka's cached partition state under its own lock.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    if err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return (None, None);
    }
    ((low >= 0).then_some(low), (high >= 0).then_some(high))
}

/// The offsets a consumer skipped from `next` to the message at `offset` that the topic
/// deleted before they were read: below the first offset librdkafka's latest fetch of the
/// partition reported. Other skips are transaction markers or compaction.
pub(crate) fn deleted_gap<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &CStr,
    partition: i32,
    next: i64,
    offset: i64,
) -> Option<(i64, i64)> {
    if offset <= next {
        return None;
    }
    let low = cached_watermarks(consumer, topic, partition).0.filter(|low| *low > next)?;
    Some((next, low.min(offset)))
}

/// The dead letter of offsets `from..to` of a partition the topic deleted before cbec read
/// them (with a warning on stderr).
pub(crate) fn deleted_unread(topic: &str, partition: i32, from: i64, to: i64) -> cbec_schemas::DeadLetter {
    let err = cbec_schemas::DecodeError::new(
        cbec_schemas::ErrorCode::DeletedUnread,
        format!(
            "offsets {from}..{to} ({} offsets) of {topic} partition {partition} were deleted (the topic's retention) before cbec read them",
            to - from
        ),
    );
    eprintln!("warning: {}", err.reason);
    cbec_schemas::DeadLetter::new(topic, partition, from, None, &err, &[])
}

/// What the consumer knows about one assigned input partition.
struct PartState {
    topic: Topic,
    name: String,
    cname: CString,
    partition: i32,
    /// Next offset to read.
    next: i64,
    /// Highest high watermark seen (only grows: a partition not fetched yet may report a
    /// stale one, which must not make it look caught up too early).
    high: i64,
    /// Caught up with `high`, as last told to the engine.
    idle: bool,
    /// Latest event time read from it.
    time: i64,
    /// Since when it has been waited for without delivering.
    stalled_since: Option<Instant>,
    /// (next offset, high watermark) when librdkafka last reported the end of the
    /// partition: offsets below the high watermark that hold no deliverable message
    /// (transaction markers) do not make it look behind.
    eof: Option<(i64, i64)>,
    /// `max_lead_ms`: how far after a record's timestamp its event times may lie.
    max_lead_ms: u64,
    /// Offsets the topic deleted before they were read, found at the start (the
    /// checkpoint's offset below the partition's first): dead-lettered before reading.
    deleted: Option<(i64, i64)>,
}

/// Whether a partition is caught up: read up to the high watermark, or at the end
/// librdkafka reported with nothing new since.
fn caught_up(next: i64, high: i64, eof: Option<(i64, i64)>) -> bool {
    next >= high || eof == Some((next, high))
}

impl PartState {
    /// Partition `partition` of input topic `name` (of `topic`), read from `next`, its high
    /// watermark `high` when looked up; `deleted`: offsets the topic deleted before they
    /// were read, found at the start.
    fn new(
        (topic, name, partition): (Topic, String, i32),
        (next, high): (i64, i64),
        max_lead_ms: u64,
        deleted: Option<(i64, i64)>,
    ) -> anyhow::Result<PartState> {
        Ok(PartState {
            topic,
            cname: CString::new(name.as_str()).context("topic name")?,
            name,
            partition,
            next,
            high,
            idle: false,
            time: i64::MIN,
            stalled_since: None,
            eof: None,
            max_lead_ms,
            deleted,
        })
    }

    /// The dead letter of offsets `from..to` deleted before they were read.
    fn deleted_unread(&self, from: i64, to: i64) -> EngineMsg {
        let d = deleted_unread(&self.name, self.partition, from, to);
        // Placed at the range's last offset: once it is released, a checkpoint resumes
        // after the range (not inside it, which would report the rest again).
        EngineMsg::Dead((self.topic, self.partition), to - 1, Box::new(d))
    }

    /// Takes in librdkafka's cached high watermark (it only grows here).
    fn observe_high(&mut self, consumer: &BaseConsumer) {
        if let Some(h) = cached_watermarks(consumer, &self.cname, self.partition).1 {
            self.high = self.high.max(h);
        }
    }

    /// Re-reads the cached high watermark; tells the engine when idleness changes.
    fn refresh(&mut self, consumer: &BaseConsumer, batcher: &mut Batcher) {
        self.observe_high(consumer);
        self.set_idle(caught_up(self.next, self.high, self.eof), batcher);
    }

    /// librdkafka reached the end of the partition (in queue order, after its last message).
    /// If its high watermark moved since we last looked, messages fetched after that end
    /// wait behind it in the queue: not at the end then.
    fn at_end(&mut self, consumer: &BaseConsumer, batcher: &mut Batcher) {
        let before = self.high;
        self.observe_high(consumer);
        if self.high == before {
            self.eof = Some((self.next, self.high));
        }
        self.set_idle(caught_up(self.next, self.high, self.eof), batcher);
    }

    fn set_idle(&mut self, idle: bool, batcher: &mut Batcher) {
        if idle != self.idle {
            self.idle = idle;
            batcher.push(EngineMsg::Idle((self.topic, self.partition), idle));
        }
    }

    /// Takes one message of this partition: offset, idleness and event-time bookkeeping,
    /// then decoding into the batch.
    ///
    /// Idleness is decided per message ([`caught_up`]): the last message of a fetch leaves
    /// its partition idle at once instead of holding the engine's watermark until a
    /// periodic check.
    fn take(
        &mut self,
        consumer: &BaseConsumer,
        m: &rdkafka::message::BorrowedMessage<'_>,
        dec: &mut Decoder,
        batcher: &mut Batcher,
    ) {
        // Offsets the topic deleted before they were read (librdkafka then resumed at the
        // partition's first offset) are dead-lettered, not skipped silently.
        if let Some((from, to)) = deleted_gap(consumer, &self.cname, self.partition, self.next, m.offset()) {
            let d = self.deleted_unread(from, to);
            batcher.push(d);
        }
        self.next = m.offset() + 1;
        self.stalled_since = None;
        self.eof = None;
        if self.next >= self.high {
            self.refresh(consumer, batcher);
        } else {
            self.set_idle(false, batcher);
        }
        let time = &mut self.time;
        let mut send = |x: EngineMsg| {
            if let EngineMsg::Event(e) = &x {
                *time = (*time).max(e.time.0);
            }
            batcher.push(x)
        };
        // The record's timestamp (the producer's CreateTime, or the broker's LogAppendTime)
        // is when it was sent; none (or not after 1970) leaves the event time unbounded.
        let at = m.timestamp().to_millis().filter(|t| *t > 0);
        decode_message(
            dec,
            self.topic,
            &self.name,
            (self.topic, self.partition),
            m.offset(),
            m.key(),
            m.payload().unwrap_or(&[]),
            Sent::new(at, "its Kafka timestamp", self.max_lead_ms),
            Instant::now(),
            &mut send,
        );
    }
}

/// The assigned input partitions, each with its own librdkafka queue, read in event-time
/// order: always from the partition the engine's watermark waits for. The engine's
/// sequencer then holds only a few messages per partition, whatever the backlog, and never
/// has to release anything early; a partition that is ahead waits in librdkafka's bounded
/// prefetch (`queued.max.messages.kbytes` per partition), which stops fetching it.
struct Parts {
    queues: Vec<PartitionQueue<DefaultConsumerContext>>,
    state: Vec<PartState>,
}

/// Where a partition stands in the sequencer's order: (latest event time, topic rank,
/// partition).
type Position = (i64, u8, i32);

/// A partition the engine waits for but that delivers nothing, not even its end, for this
/// long is treated as idle (as in Flink's source idleness): a safety net, so a stuck fetch
/// cannot stall the pipeline for ever.
const STALL: Duration = Duration::from_secs(5);

/// Partition `partition` of `topic` on a queue of its own, waking the consumer thread
/// (`wake`) when it receives messages.
fn partition_queue(
    consumer: &Arc<BaseConsumer>,
    topic: &str,
    partition: i32,
    wake: &Sender<()>,
) -> anyhow::Result<PartitionQueue<DefaultConsumerContext>> {
    let mut q = consumer
        .split_partition_queue(topic, partition)
        .with_context(|| format!("partition queue of {topic} {partition}"))?;
    let w = wake.clone();
    q.set_nonempty_callback(move || {
        let _ = w.try_send(());
    });
    Ok(q)
}

/// Input partitions added to a topic while running, found by the watcher
/// ([`watch_partitions`]): read from `low`, `high` their high watermark when found.
struct Added {
    topic: Topic,
    name: String,
    partition: i32,
    low: i64,
    high: i64,
}

impl Parts {
    /// Takes partitions added while running in: each gets its own queue (split before it is
    /// assigned, so that no message of it reaches the consumer's main queue) and is assigned
    /// at its first offset; the engine's sequencer learns of it at once (active, not seen:
    /// the watermark waits for its first message or its end).
    fn add(
        &mut self,
        consumer: &Arc<BaseConsumer>,
        added: Vec<Added>,
        wake: &Sender<()>,
        max_lead_ms: u64,
        batcher: &mut Batcher,
    ) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for a in added {
            let q = partition_queue(consumer, &a.name, a.partition, wake)?;
            tpl.add_partition_offset(&a.name, a.partition, Offset::Offset(a.low))?;
            batcher.push(EngineMsg::Idle((a.topic, a.partition), false));
            self.queues.push(q);
            self.state.push(PartState::new((a.topic, a.name, a.partition), (a.low, a.high), max_lead_ms, None)?);
        }
        consumer.incremental_assign(&tpl).context("assigning the added partitions")?;
        Ok(())
    }

    fn order(&self, i: usize) -> Position {
        (self.state[i].time, rank(self.state[i].topic), self.state[i].partition)
    }

    /// The partition the engine's watermark waits for — not caught up, lowest (event time,
    /// topic rank, partition), the sequencer's own order — and the next one's position.
    fn laggard(&self) -> Option<(usize, Option<Position>)> {
        let mut first: Option<usize> = None;
        let mut second: Option<Position> = None;
        for i in (0..self.state.len()).filter(|&i| !self.state[i].idle) {
            let o = self.order(i);
            match first {
                Some(f) if self.order(f) <= o => {
                    if second.is_none_or(|s| o < s) {
                        second = Some(o);
                    }
                }
                _ => {
                    second = first.map(|f| self.order(f));
                    first = Some(i);
                }
            }
        }
        first.map(|f| (f, second))
    }

    /// Reads one message of partition `i`, waiting up to `wait`; true when one was read.
    fn read_one(
        &mut self,
        i: usize,
        consumer: &BaseConsumer,
        dec: &mut Decoder,
        batcher: &mut Batcher,
        wait: Duration,
    ) -> bool {
        match self.queues[i].poll(wait) {
            Some(Ok(m)) => {
                self.state[i].take(consumer, &m, dec, batcher);
                true
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {
                self.state[i].at_end(consumer, batcher);
                false
            }
            None => false,
            Some(Err(e)) => {
                eprintln!("warning: consumer ({} {}): {e}", self.state[i].name, self.state[i].partition);
                false
            }
        }
    }

    /// Refreshes every partition's idleness; true when all are idle.
    fn refresh_all(&mut self, consumer: &BaseConsumer, batcher: &mut Batcher, lag_metrics: bool) -> bool {
        let mut all_idle = true;
        for part in &mut self.state {
            part.refresh(consumer, batcher);
            all_idle &= part.idle;
            if lag_metrics {
                let lag = (part.high - part.next).max(0);
                crate::metrics::ConsumerLag { topic: &part.name, partition: part.partition, lag }.emit();
            }
        }
        all_idle
    }

    /// One step: a message from the partition the engine waits for, else (everything
    /// caught up) whatever arrived anywhere. True when something was read.
    fn step(&mut self, consumer: &BaseConsumer, dec: &mut Decoder, batcher: &mut Batcher, wake: &Receiver<()>) -> bool {
        if let Some((i, next)) = self.laggard() {
            // Read it until it passes the next partition in line (a bounded run).
            let mut read = 0;
            while read < 256
                && next.is_none_or(|n| self.order(i) <= n)
                && self.read_one(i, consumer, dec, batcher, Duration::ZERO)
            {
                read += 1;
            }
            if read > 0 {
                return true;
            }
            // Its queue is empty: caught up by now, or its messages are on their way.
            batcher.flush();
            self.state[i].refresh(consumer, batcher);
            if self.state[i].idle {
                return false;
            }
            if self.read_one(i, consumer, dec, batcher, Duration::from_millis(5)) {
                return true;
            }
            let since = *self.state[i].stalled_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= STALL {
                let p = &self.state[i];
                eprintln!(
                    "warning: {} partition {} delivered nothing for {STALL:?} while behind its high watermark ({} < {}); treated as idle",
                    p.name, p.partition, p.next, p.high
                );
                // As if librdkafka had reported the end here: idle until something new.
                self.state[i].eof = Some((p.next, p.high));
                self.state[i].set_idle(true, batcher);
            }
            return false;
        }
        let mut any = false;
        for i in 0..self.queues.len() {
            any |= self.read_one(i, consumer, dec, batcher, Duration::ZERO);
        }
        if !any {
            batcher.flush();
            // Woken by librdkafka when a partition queue receives messages.
            let _ = wake.recv_timeout(Duration::from_millis(50));
        }
        any
    }
}

/// librdkafka's queue limit (KiB) and fetch size (bytes) per partition for a prefetch
/// budget of `mb` MiB over `partitions` input partitions: two thirds queue, one third
/// fetch, capped at 8 MiB and 4 MiB (more did not help) and at least 256 KiB and 64 KiB.
fn prefetch_per_partition(mb: usize, partitions: usize) -> (usize, usize) {
    let per = mb * 1024 / partitions.max(1);
    ((per * 2 / 3).clamp(256, 8192), (per / 3 * 1024).clamp(64 * 1024, 4 << 20))
}

/// Commits a checkpoint's offsets to the consumer group (for lag monitoring; the pipeline
/// restarts from its checkpoint, not from these).
fn commit(consumer: &BaseConsumer, offsets: Offsets, mode: CommitMode) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    for (t, ps) in offsets {
        for (p, o) in ps {
            tpl.add_partition_offset(&t, p, Offset::Offset(o))?;
        }
    }
    if let Err(e) = consumer.commit(&tpl, mode) {
        eprintln!("warning: consumer-group commit failed: {e}");
    }
    Ok(())
}

/// The consumer thread's inputs besides its partitions: wake-ups from the partition queues
/// (and the sender, for partitions added later), partitions added while running, the
/// checkpoints' offsets to commit.
struct ConsumerIn {
    wake: (Sender<()>, Receiver<()>),
    added: Receiver<Vec<Added>>,
    commits: Arc<std::sync::Mutex<Option<Offsets>>>,
    max_lead_ms: u64,
}

fn consumer_thread(
    consumer: Arc<BaseConsumer>,
    mut parts: Parts,
    input: ConsumerIn,
    tx: Sender<Batch>,
    stop: Arc<AtomicBool>,
    exit_when_idle: bool,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    let ConsumerIn { wake: (wake_tx, wake), added, commits, max_lead_ms } = input;
    std::thread::Builder::new()
        .name("cbec-consumer".into())
        .spawn(move || {
            let mut dec = Decoder::new();
            let mut last_check = Instant::now();
            let mut idle_since: Option<Instant> = None;
            let mut batcher = Batcher::new(tx, 256);
            for part in &mut parts.state {
                if let Some((from, to)) = part.deleted.take() {
                    let d = part.deleted_unread(from, to);
                    batcher.push(d);
                }
            }
            let mut steps = 0u64;
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Some(offsets) = commits.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    commit(&consumer, offsets, CommitMode::Async)?;
                }
                while let Ok(a) = added.try_recv() {
                    parts.add(&consumer, a, &wake_tx, max_lead_ms, &mut batcher)?;
                }
                // Serves librdkafka's callbacks and errors (messages come on the partition
                // queues), not on every message.
                steps += 1;
                if steps.is_multiple_of(256) {
                    match consumer.poll(Duration::ZERO) {
                        Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                        // Every partition's messages come on its own queue (split off before
                        // its first fetch): one here would be lost, so it is said, never
                        // dropped silently.
                        Some(Ok(m)) => eprintln!(
                            "warning: consumer: a message of {} partition {} at offset {} came on the main queue, not its partition's: not processed (please report)",
                            m.topic(),
                            m.partition(),
                            m.offset()
                        ),
                        Some(Err(e)) => eprintln!("warning: consumer: {e}"),
                    }
                }
                if parts.step(&consumer, &mut dec, &mut batcher, &wake) {
                    idle_since = None;
                }
                // A periodic sweep catches partitions whose high watermark moved without a
                // message reaching us yet, and reports consumer lag.
                if last_check.elapsed() >= Duration::from_millis(100) {
                    last_check = Instant::now();
                    let all_idle = parts.refresh_all(&consumer, &mut batcher, true);
                    if exit_when_idle && all_idle {
                        let since = *idle_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= Duration::from_secs(2) {
                            break;
                        }
                    }
                }
            }
            for part in &parts.state {
                batcher.push(EngineMsg::Done((part.topic, part.partition)));
            }
            batcher.flush();
            Ok(())
        })
        .expect("spawn consumer")
}

/// What a pipeline process does on SIGINT or SIGTERM.
pub const PIPELINE_STOPPING: &str = "draining, checkpointing, exiting";

/// Sets `stop` on SIGINT or SIGTERM, saying on stderr what the process does then (`doing`:
/// "draining, checkpointing, exiting" for a pipeline).
pub fn stop_on_signals(stop: Arc<AtomicBool>, doing: &'static str) {
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
            eprintln!("cbec: signal received: {doing}");
            stop.store(true, Ordering::Relaxed);
        });
    });
}

/// `ask` (a metadata or watermark request), asked again for up to 30 s while it fails: a
/// broker that just started or restarted may not lead a partition yet
/// (NotLeaderForPartition). The last error after that.
pub(crate) fn patiently<T>(mut ask: impl FnMut() -> rdkafka::error::KafkaResult<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ask() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Waits until `brokers` answer a metadata request (a broker restarting, a stack starting
/// up), saying so at once and every `say_every` while they do not; false if `stop` is set
/// first.
pub(crate) fn wait_for_brokers(brokers: &str, stop: &AtomicBool, say_every: Duration) -> bool {
    let client: Result<BaseConsumer, _> = ClientConfig::new().set("bootstrap.servers", brokers).create();
    let Ok(client) = client else { return true }; // a bad setting: the next step says what
    let mut said: Option<Instant> = None;
    loop {
        match client.fetch_metadata(None, Duration::from_secs(2)) {
            Ok(_) => {
                if said.is_some() {
                    eprintln!("cbec: the brokers at {brokers} answer");
                }
                return true;
            }
            Err(e) => {
                if said.is_none_or(|t| t.elapsed() >= say_every) {
                    eprintln!("cbec: waiting for the brokers at {brokers} ({e})");
                    said = Some(Instant::now());
                }
            }
        }
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Opens the configured checkpoint store (claiming a new epoch in it), and says where it is.
pub fn checkpoint_store(cfg: &Config) -> anyhow::Result<(Arc<dyn CheckpointStore>, String)> {
    Ok(match cfg.checkpoint_store {
        StoreKind::Kafka => {
            let topic = crate::kafka_store::topic(cfg);
            (Arc::new(KafkaTopicStore::new(&cfg.brokers, &topic)?), format!("topic {topic}"))
        }
        StoreKind::Dir => (Arc::new(LocalDirStore::new(&cfg.checkpoint_dir)?), cfg.checkpoint_dir.clone()),
    })
}

/// Runs the pipeline against Kafka.
pub fn run(
    cfg: &Config,
    hs: Nomenclature,
    exit_when_idle: bool,
    progress: Option<crate::runner::Progress>,
) -> anyhow::Result<RunStats> {
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signals(stop.clone(), PIPELINE_STOPPING);
    if !wait_for_brokers(&cfg.brokers, &stop, Duration::from_secs(30)) {
        eprintln!("cbec: stopped while waiting for the brokers");
        return Ok(RunStats::default());
    }
    ensure_topics(cfg).context("creating topics")?;
    // One process of the group is active: the one holding the lease. It is dropped (and
    // the lease passes on) when this function returns, after the final checkpoint. While
    // it waits, it keeps the state of the active process's last checkpoint up to date (a
    // warm standby), so that taking over does not wait for the whole state to be read.
    let mut standby = Standby::new(cfg, hs.clone())?;
    let interval = Duration::from_millis(cfg.checkpoint_interval_ms.max(100));
    let mut followed = Instant::now();
    let Some(_lease) = Lease::acquire(cfg, &stop, || {
        if followed.elapsed() >= interval {
            standby.follow_or_say();
            followed = Instant::now();
        }
    })?
    else {
        eprintln!("cbec: stopped while standing by");
        return Ok(RunStats::default());
    };
    let (store, place) = checkpoint_store(cfg)?;
    let load_last = || -> anyhow::Result<Option<Restored>> {
        let cp = store.load().with_context(|| format!("loading the checkpoint from {place}"))?;
        cp.map(|cp| Restored::from_checkpoint(&cp, hs.clone())).transpose()
    };
    // Catch up with what was saved last, or (when following failed) read it all.
    let restored = match standby.follow() {
        Ok(()) => standby.state.map(|(r, _)| r),
        Err(e) => {
            eprintln!("cbec: could not catch up with the checkpoints ({e:#}); reading the last one whole");
            load_last()?
        }
    };
    if standby.applied > 0 {
        eprintln!(
            "cbec: the restored state was kept up to date while standing by ({} checkpoint(s) applied as they were saved)",
            standby.applied
        );
    }
    run_partitions(cfg, &hs, restored, store, &place, &stop, exit_when_idle, progress)
}

/// How often the input topics' partition counts are looked up while running.
pub const PARTITION_CHECK: Duration = Duration::from_secs(2);

/// Ends a run (sets `run_stop`) when `stop` is set (a signal), and hands the consumer
/// (`added`) the partitions an input topic gained since `counts` (its topic and partition
/// count; looked up every [`PARTITION_CHECK`]): explicitly assigned, a partition added
/// while running would otherwise not be read until a restart.
fn watch_partitions(
    brokers: String,
    mut counts: BTreeMap<String, (Topic, usize)>,
    stop: Arc<AtomicBool>,
    run_stop: Arc<AtomicBool>,
    added: Sender<Vec<Added>>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("cbec-partitions".into())
        .spawn(move || {
            let meta: Option<BaseConsumer> = ClientConfig::new().set("bootstrap.servers", &brokers).create().ok();
            let mut checked = Instant::now();
            loop {
                if run_stop.load(Ordering::Relaxed) {
                    return;
                }
                if stop.load(Ordering::Relaxed) {
                    run_stop.store(true, Ordering::Relaxed);
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
                if checked.elapsed() < PARTITION_CHECK {
                    continue;
                }
                checked = Instant::now();
                let Some(meta) = &meta else { continue };
                // A short timeout per topic, and a signal looked at between them: a broker
                // that does not answer must not hold up a stop.
                let mut grown = Vec::new();
                let mut new = Vec::new();
                for (name, (topic, n)) in counts.iter_mut() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(md) = meta.fetch_metadata(Some(name), Duration::from_secs(1)) else { continue };
                    let Some(now) = md.topics().iter().find(|t| t.name() == name).map(|t| t.partitions().len()) else {
                        continue;
                    };
                    if now <= *n {
                        continue;
                    }
                    // Where each new partition starts and ends now (the consumer's cached
                    // high watermark of a partition not fetched yet could be stale, and make
                    // it look caught up before its first message); a partition not answering
                    // yet is tried again at the next look.
                    let ends: Option<Vec<(i64, i64)>> =
                        (*n..now).map(|p| meta.fetch_watermarks(name, p as i32, Duration::from_secs(2)).ok()).collect();
                    let Some(ends) = ends else { continue };
                    grown.push(format!("{name} {n} → {now}"));
                    for (p, (low, high)) in (*n..now).zip(ends) {
                        new.push(Added { topic: *topic, name: name.clone(), partition: p as i32, low, high });
                    }
                    *n = now;
                }
                if !new.is_empty() {
                    eprintln!(
                        "cbec: input partitions added ({}): read from their first offset while the run goes on",
                        grown.join(", ")
                    );
                    if added.send(new).is_err() {
                        return; // the consumer has ended
                    }
                }
            }
        })
        .expect("spawn partition watcher")
}

/// Says that the run starts with no checkpoint, every input partition from its first
/// offset; with a warning when the consumer group has committed offsets (commits follow
/// checkpoints: its checkpoints are elsewhere, another `checkpoint_store` or
/// `checkpoint_dir`, or were deleted), since everything is then read and sent again.
fn say_no_checkpoint(consumer: &BaseConsumer, tpl: &TopicPartitionList, group: &str, place: &str) {
    let committed = consumer
        .committed_offsets(tpl.clone(), Duration::from_secs(10))
        .map(|c| c.elements().iter().filter(|e| matches!(e.offset(), Offset::Offset(o) if o > 0)).count());
    match committed {
        Ok(n) if n > 0 => eprintln!(
            "warning: no checkpoint in {place}, but the consumer group {group} has committed offsets on {n} input partitions: its checkpoints are elsewhere (another checkpoint_store or checkpoint_dir?) or were deleted. Reading every input partition from its first offset: outputs sent before are sent again (with the same identities), and input the topics deleted meanwhile is dead-lettered"
        ),
        _ => eprintln!("cbec: no checkpoint in {place}: every input partition from its first offset"),
    }
}

/// The run over the input partitions, from `restored`, until the input ends
/// (`exit_when_idle`) or a signal; partitions added meanwhile are taken in as they come.
#[allow(clippy::too_many_arguments)]
fn run_partitions(
    cfg: &Config,
    hs: &Nomenclature,
    mut restored: Option<Restored>,
    store: Arc<dyn CheckpointStore>,
    place: &str,
    stop: &Arc<AtomicBool>,
    exit_when_idle: bool,
    progress: Option<crate::runner::Progress>,
) -> anyhow::Result<RunStats> {
    // The input partitions and where to start, read with a short-lived client: the
    // consumer's prefetch is sized by their number.
    let mut tpl = TopicPartitionList::new();
    let mut state = Vec::new();
    {
        let meta: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &cfg.brokers).create()?;
        for t in Topic::ALL {
            let name = cfg.input_topic(t);
            let md = patiently(|| meta.fetch_metadata(Some(&name), Duration::from_secs(10)))?;
            for mt in md.topics() {
                for p in mt.partitions() {
                    let (low, high) = patiently(|| meta.fetch_watermarks(&name, p.id(), Duration::from_secs(10)))?;
                    let restored_at =
                        restored.as_mut().and_then(|c| c.offsets.get_mut(&name)).and_then(|m| m.get_mut(&p.id()));
                    let from = match restored_at {
                        // A checkpoint's offset past the partition's end: the topic was
                        // recreated (or the broker lost what it had acknowledged). Read from
                        // its first offset, said: what it holds is new input (or, if lost and
                        // resent, outputs again with the same identities), never skipped; and
                        // the next checkpoints record where it is read now, not the old offset.
                        Some(f) if *f > high => {
                            eprintln!(
                                "warning: {name} partition {}: the checkpoint's offset {f} is past the partition's end ({high}): the topic was recreated, or the broker lost messages it had acknowledged; reading it from its first offset ({low})",
                                p.id()
                            );
                            *f = low;
                            Some(low)
                        }
                        f => f.map(|f| *f),
                    };
                    let start = from.unwrap_or(low).max(low);
                    let deleted = from.filter(|f| *f < low).map(|f| (f, low));
                    tpl.add_partition_offset(&name, p.id(), Offset::Offset(start))?;
                    state.push(PartState::new((t, name.clone(), p.id()), (start, high), cfg.max_lead_ms, deleted)?);
                }
            }
        }
    }
    let (queue_kb, fetch_bytes) = prefetch_per_partition(cfg.input_prefetch_mb, state.len());
    let consumer: Arc<BaseConsumer> = Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", &cfg.brokers)
            .set("group.id", &cfg.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A fetch position the topic deleted meanwhile (its retention, while cbec was
            // behind) resumes at the partition's first offset; `take` dead-letters the gap.
            .set("auto.offset.reset", "earliest")
            // End-of-partition events (on each partition's own queue) say a partition is
            // caught up even when transaction markers keep it below its high watermark.
            .set("enable.partition.eof", "true")
            // Prefetch per partition: the bound on what waits in memory for its turn.
            .set("queued.max.messages.kbytes", queue_kb.to_string())
            .set("queued.min.messages", "20000")
            // The partition the engine waits for must not run dry: refetch a partition soon
            // after its queue drops below the thresholds (librdkafka's default waits 1 s)
            // and bring more of it per fetch. Measured: the consumer waited 3.1-4.1 s of a
            // 16 s run for empty queues before, 0.4-0.6 s after.
            .set("fetch.queue.backoff.ms", "10")
            .set("max.partition.fetch.bytes", fetch_bytes.to_string())
            .create()?,
    );
    let sources: Vec<SourceId> = state.iter().map(|p| (p.topic, p.partition)).collect();
    let mut counts: BTreeMap<String, (Topic, usize)> = BTreeMap::new();
    for p in &state {
        counts.entry(p.name.clone()).or_insert((p.topic, 0)).1 += 1;
    }
    let run_stop = Arc::new(AtomicBool::new(false));
    let (added_tx, added) = bounded(16);
    let watcher = watch_partitions(cfg.brokers.clone(), counts, stop.clone(), run_stop.clone(), added_tx);
    consumer.assign(&tpl)?;
    // One queue per partition (after `assign`, before the first poll), each waking the
    // consumer thread when it receives messages.
    let (wake_tx, wake) = bounded::<()>(1);
    let mut queues = Vec::new();
    for p in &state {
        queues.push(partition_queue(&consumer, &p.name, p.partition, &wake_tx)?);
    }
    if restored.is_some() {
        eprintln!("cbec: restored checkpoint from {place}");
    } else {
        say_no_checkpoint(&consumer, &tpl, &cfg.group_id, place);
    }
    let (tx, rx) = bounded(batches_for(cfg.queue_capacity, 256));
    let commits = Arc::new(std::sync::Mutex::new(None));
    let committer = consumer.clone();
    let input = ConsumerIn { wake: (wake_tx, wake), added, commits: commits.clone(), max_lead_ms: cfg.max_lead_ms };
    let h = consumer_thread(consumer, Parts { queues, state }, input, tx, run_stop.clone(), exit_when_idle);
    let (sink_tx, sink_h) = spawn_sink(Box::new(KafkaSink::new(cfg)?), cfg.queue_capacity);
    // Stages in separate processes: exits go to the summarize instances' topic.
    let exits_to = match cfg.stage {
        Stage::All => None,
        _ => Some((cfg.exited_topic(), crate::stage::exited_partitions(cfg)?.len())),
    };
    let run = EngineRun {
        exits_to,
        end_of_time_when_done: exit_when_idle,
        checkpoint: Some((store, Duration::from_millis(cfg.checkpoint_interval_ms))),
        commits: Some(commits.clone()),
        stop: run_stop.clone(),
        progress,
        ..EngineRun::new(cfg, hs.clone(), vec![(sources, rx)], sink_tx)
    };
    let stats = run_engine(run, restored);
    run_stop.store(true, Ordering::Relaxed);
    watcher.join().map_err(|_| anyhow::anyhow!("partition watcher panicked"))?;
    h.join().map_err(|_| anyhow::anyhow!("consumer panicked"))??;
    let timed = sink_h.join().map_err(|_| anyhow::anyhow!("sink panicked"))??;
    // The final checkpoint comes after the consumer thread ended: its offsets are
    // committed here, before the process exits.
    if let Some(offsets) = commits.lock().unwrap_or_else(|e| e.into_inner()).take() {
        commit_final(committer, offsets);
    }
    stats.map(|s| s.timed(timed))
}

/// Commits the final checkpoint's offsets, waiting for the group coordinator at most 10 s
/// (librdkafka's synchronous commit has no timeout of its own: a broker that went away
/// must not hold up the exit; the checkpoint holds the offsets anyway).
fn commit_final(consumer: Arc<BaseConsumer>, offsets: Offsets) {
    let (tx, rx) = bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(commit(&consumer, offsets, CommitMode::Sync));
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => {}
        // (A commit the broker refused was said by `commit`.)
        Ok(Err(e)) => eprintln!("warning: the final checkpoint's offsets were not committed: {e:#}"),
        Err(_) => eprintln!(
            "warning: the final checkpoint's offsets were not committed to the consumer group within 10 s (its lag shows the previous checkpoint's; the checkpoint itself is saved)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::caught_up;

    /// A checkpoint's wait covers the records produced before its mark, not those after;
    /// a record of an earlier epoch still in flight holds every later mark's wait; a failed
    /// delivery fails the wait.
    #[test]
    fn a_checkpoint_waits_for_the_deliveries_of_what_was_produced_before_it() {
        use super::{Deliveries, EPOCHS};
        use std::time::Duration;
        let d = Deliveries::default();
        let short = Duration::from_millis(30);
        let (a, b) = (d.open(), d.open());
        let first = d.mark();
        let c = d.open();
        let second = d.mark();
        assert_eq!((a, b, c), (0, 0, 1), "records carry the epoch they were produced in");
        assert_eq!((first, second), (0, 1));
        d.close(c);
        assert!(d.wait_delivered(second, short).is_err(), "epoch 0 is still in flight");
        d.close(a);
        assert!(d.wait_delivered(first, short).is_err(), "one record of epoch 0 is still in flight");
        d.close(b);
        d.wait_delivered(first, short).unwrap();
        d.wait_delivered(second, short).unwrap();
        // Records after the mark do not hold it, from any slot the epochs wrap around to.
        for _ in 0..EPOCHS * 2 {
            let e = d.open();
            let m = d.mark();
            let later = d.open();
            d.close(e);
            d.wait_delivered(m, short).unwrap();
            d.close(later);
        }
        let lost = d.open();
        let m = d.mark();
        d.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        d.close(lost);
        let err = d.wait_delivered(m, short).unwrap_err();
        assert!(format!("{err}").contains("1 output records were not delivered"), "{err}");
    }

    #[test]
    fn the_prefetch_budget_is_shared_by_the_partitions() {
        use super::prefetch_per_partition as per;
        assert_eq!(per(512, 40), (8192, 4 << 20), "the measured setting for 40 partitions");
        assert_eq!(per(512, 160), (2184, 1092 * 1024));
        let (q, f) = per(512, 400);
        assert!(400 * (q * 1024 + f) <= 512 << 20, "within the budget");
        assert_eq!(per(1, 1000), (256, 64 * 1024), "floors");
    }

    #[test]
    fn a_partition_is_caught_up_at_its_high_watermark_or_at_a_reported_end() {
        assert!(!caught_up(10, 12, None), "two messages behind");
        assert!(caught_up(12, 12, None));
        assert!(caught_up(11, 12, Some((11, 12))), "the end reported at 11 (a transaction marker at 11)");
        assert!(!caught_up(11, 14, Some((11, 12))), "the high watermark moved since: new messages");
        assert!(!caught_up(11, 12, Some((10, 12))), "read on since the end was reported");
    }
}
