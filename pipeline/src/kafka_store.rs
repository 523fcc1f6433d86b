//! Checkpoints in a Kafka topic (`checkpoint_store = "kafka"`): the state goes with the
//! lease ([`crate::lease`]) to whichever process of the group takes over, on any machine,
//! with no shared disk.
//!
//! The topic `<group_id>.checkpoints` has two partitions and keeps its records until cbec
//! deletes them (`retention.ms` and `retention.bytes` −1):
//! * partition 0 holds *claims*: a store claims its epoch by producing one, and the
//!   epoch is that record's offset + 1, greater than any claimed before;
//! * partition 1 holds the checkpoints, each the same bytes as a [`LocalDirStore`] file
//!   (`checkpoint::encode`) cut into chunks of at most [`CHUNK`] bytes, each behind a
//!   head: `CBECK1`, whole (1) or changes (2), epoch, number, chunk index, chunk count.
//!
//! Loading reads the heads of partition 1, keeps the checkpoints whose chunks are all there
//! (a writer that died mid-way leaves an incomplete one: it is skipped and ends its run),
//! chooses what to load exactly like the directory store (`checkpoint::chain`: the newest
//! epoch's last whole checkpoint and its unbroken run of changes), then reads those
//! checkpoints' chunks. Saving a whole checkpoint deletes the records before the previous
//! whole one (`DeleteRecords`), unless a newer epoch has been claimed since: a writer that
//! lost its lease deletes nothing of its successor's.
//!
//! [`LocalDirStore`]: crate::checkpoint::LocalDirStore

use crate::checkpoint::{self, CheckpointStore, Offsets, Seq, Since, StateSave};
use crate::config::Config;
use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes of checkpoint per record (under the brokers' default `message.max.bytes`).
pub const CHUNK: usize = 900_000;
const HEAD: &[u8; 6] = b"CBECK1";
const HEAD_LEN: usize = 6 + 1 + 8 + 8 + 4 + 4;
const CLAIMS: i32 = 0;
const CHUNKS: i32 = 1;
const TIMEOUT: Duration = Duration::from_secs(60);

/// The checkpoint topic of a configuration: `<group_id>.checkpoints`.
pub fn topic(cfg: &Config) -> String {
    format!("{}.checkpoints", cfg.group_id)
}

/// A chunk's head: (changes, epoch, number, chunk index, chunk count).
type Head = (bool, u64, u64, u32, u32);

fn head(changes: bool, (epoch, n): Seq, i: u32, count: u32) -> Vec<u8> {
    let mut h = HEAD.to_vec();
    h.push(if changes { 2 } else { 1 });
    h.extend_from_slice(&epoch.to_le_bytes());
    h.extend_from_slice(&n.to_le_bytes());
    h.extend_from_slice(&i.to_le_bytes());
    h.extend_from_slice(&count.to_le_bytes());
    h
}

fn parse_head(b: &[u8]) -> Option<Head> {
    if b.len() < HEAD_LEN || !b.starts_with(HEAD) {
        return None;
    }
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
    let changes = match b[6] {
        1 => false,
        2 => true,
        _ => return None,
    };
    Some((changes, u64_at(7), u64_at(15), u32_at(23), u32_at(27)))
}

/// A checkpoint of the topic as its heads say: holds changes, chunk count, chunks' offsets
/// by index.
#[derive(Clone)]
struct Seen {
    changes: bool,
    count: u32,
    chunks: BTreeMap<u32, i64>,
}

/// Checkpoints in a Kafka topic (see the module doc).
pub struct KafkaTopicStore {
    brokers: String,
    topic: String,
    epoch: u64,
    producer: FutureProducer,
    rt: tokio::runtime::Runtime,
    /// Complete checkpoints known (loaded or saved): place, holds changes, first offset.
    known: Mutex<Vec<(Seq, bool, i64)>>,
    /// The heads read so far.
    heads: Mutex<Heads>,
}

/// The checkpoints' heads read so far, and the offset to read from next: a follower reads
/// only what is new.
#[derive(Default)]
struct Heads {
    seen: BTreeMap<Seq, Seen>,
    next: i64,
}

impl KafkaTopicStore {
    /// Connects to the topic (which must exist with its two partitions, see
    /// [`crate::kafka::ensure_topics`]) and claims a new epoch in it.
    pub fn new(brokers: &str, topic: &str) -> anyhow::Result<KafkaTopicStore> {
        let mut store = KafkaTopicStore::reader(brokers, topic)?;
        let claim = store
            .rt
            .block_on(
                store.producer.send(FutureRecord::<(), [u8]>::to(topic).partition(CLAIMS).payload(b"claim"), TIMEOUT),
            )
            .map_err(|(e, _)| e)
            .with_context(|| format!("claiming an epoch in {topic}"))?;
        store.epoch = claim.offset as u64 + 1;
        Ok(store)
    }

    /// Connects to the topic without claiming an epoch (a standby following the active
    /// process's checkpoints); it saves nothing.
    pub fn reader(brokers: &str, topic: &str) -> anyhow::Result<KafkaTopicStore> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .create()
            .context("checkpoint producer")?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let md = crate::kafka::patiently(|| producer.client().fetch_metadata(Some(topic), TIMEOUT))
            .with_context(|| format!("metadata of {topic}"))?;
        let parts = md.topics().first().map_or(0, |t| t.partitions().len());
        anyhow::ensure!(parts == 2, "checkpoint topic {topic} has {parts} partitions; cbec keeps checkpoints in 2");
        Ok(KafkaTopicStore {
            brokers: brokers.into(),
            topic: topic.into(),
            epoch: 0,
            producer,
            rt,
            known: Mutex::new(Vec::new()),
            heads: Mutex::default(),
        })
    }

    /// The epoch this store writes under (0: a reader).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn consumer(&self) -> anyhow::Result<BaseConsumer> {
        Ok(ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            // Assigned partitions, no commits: the group id is only required by librdkafka.
            .set("group.id", format!("{}.reader", self.topic))
            .set("enable.auto.commit", "false")
            .set("fetch.max.bytes", "67108864")
            .create()?)
    }

    /// Reads partition `p` from `from` to its end (as its high watermark was when called),
    /// handing each record's offset and payload to `f`, until `f` says it has enough.
    /// Returns the partition's low and high watermarks.
    fn read(
        &self,
        p: i32,
        from: i64,
        mut f: impl FnMut(i64, &[u8]) -> anyhow::Result<bool>,
    ) -> anyhow::Result<(i64, i64)> {
        let c = self.consumer()?;
        // Asked again while the broker does not lead the partition yet (a topic just
        // created, a broker just started): it said NotLeaderForPartition once in CI.
        let (low, high) = crate::kafka::patiently(|| c.fetch_watermarks(&self.topic, p, TIMEOUT))?;
        let from = from.max(low);
        if from >= high {
            return Ok((low, high));
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, p, Offset::Offset(from))?;
        c.assign(&tpl)?;
        // Times out when nothing comes for a while, however long the whole read takes.
        let mut deadline = Instant::now() + TIMEOUT;
        loop {
            anyhow::ensure!(Instant::now() < deadline, "timed out reading checkpoints from {}", self.topic);
            let Some(m) = c.poll(Duration::from_millis(500)) else { continue };
            let m = m?;
            deadline = Instant::now() + TIMEOUT;
            if !f(m.offset(), m.payload().unwrap_or_default())? || m.offset() + 1 >= high {
                return Ok((low, high));
            }
        }
    }

    /// Whether an epoch newer than this store's has been claimed.
    fn superseded(&self) -> anyhow::Result<bool> {
        let c = self.consumer()?;
        let (_, high) = crate::kafka::patiently(|| c.fetch_watermarks(&self.topic, CLAIMS, TIMEOUT))?;
        Ok(high as u64 > self.epoch)
    }

    fn send_all(&self, records: Vec<Vec<u8>>) -> anyhow::Result<Vec<i64>> {
        self.rt.block_on(async {
            let mut pending: std::collections::VecDeque<DeliveryFuture> = Default::default();
            let mut offsets = Vec::new();
            for r in &records {
                loop {
                    match self
                        .producer
                        .send_result(FutureRecord::<(), [u8]>::to(&self.topic).partition(CHUNKS).payload(r))
                    {
                        Ok(f) => {
                            pending.push_back(f);
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                            let f = pending.pop_front().context("producer queue full with nothing in flight")?;
                            offsets.push(delivered(f.await)?);
                        }
                        Err((e, _)) => return Err(e.into()),
                    }
                }
            }
            for f in pending {
                offsets.push(delivered(f.await)?);
            }
            Ok(offsets)
        })
    }
}

fn delivered<E>(r: Result<rdkafka::producer::future_producer::OwnedDeliveryResult, E>) -> anyhow::Result<i64> {
    match r {
        Ok(Ok(d)) => Ok(d.offset),
        Ok(Err((e, _))) => Err(anyhow::Error::from(e).context("saving a checkpoint chunk")),
        Err(_) => anyhow::bail!("checkpoint producer closed"),
    }
}

impl KafkaTopicStore {
    /// The complete checkpoints of the topic, in the order saved: the heads read before
    /// (by this store) and those of the records saved since.
    fn complete(&self) -> anyhow::Result<Vec<(Seq, Seen)>> {
        let mut h = self.heads.lock().unwrap_or_else(|e| e.into_inner());
        let Heads { seen, next } = &mut *h;
        let (low, _) = self.read(CHUNKS, *next, |offset, payload| {
            if let Some((changes, e, n, i, count)) = parse_head(payload) {
                let s = seen.entry((e, n)).or_insert(Seen { changes, count, chunks: BTreeMap::new() });
                s.chunks.insert(i, offset);
            }
            *next = offset + 1;
            Ok(true)
        })?;
        // What was deleted is gone.
        seen.retain(|_, s| s.chunks.values().all(|o| *o >= low));
        let complete: Vec<(Seq, Seen)> = seen
            .iter()
            .filter(|(_, s)| s.count > 0 && s.chunks.len() == s.count as usize)
            .map(|(p, s)| (*p, s.clone()))
            .collect();
        *self.known.lock().unwrap_or_else(|e| e.into_inner()) =
            complete.iter().map(|(p, s)| (*p, s.changes, s.chunks.values().copied().min().unwrap_or(0))).collect();
        Ok(complete)
    }

    /// Reads and decodes these checkpoints' chunks.
    fn checkpoints(&self, wanted: &[(Seq, Seen)]) -> anyhow::Result<Vec<checkpoint::Sections>> {
        // Which checkpoint, and which chunk of it, each needed offset holds.
        let mut at: BTreeMap<i64, (usize, u32)> = BTreeMap::new();
        for (k, (_, s)) in wanted.iter().enumerate() {
            for (i, o) in &s.chunks {
                at.insert(*o, (k, *i));
            }
        }
        let mut bytes: Vec<Vec<u8>> = vec![Vec::new(); wanted.len()];
        let mut next: Vec<u32> = vec![0; wanted.len()];
        let (first, last) = (*at.keys().next().unwrap_or(&0), *at.keys().next_back().unwrap_or(&0));
        self.read(CHUNKS, first, |offset, payload| {
            if let Some(&(k, i)) = at.get(&offset) {
                anyhow::ensure!(next[k] == i, "checkpoint chunks of {} out of order", self.topic);
                next[k] += 1;
                bytes[k].extend_from_slice(&payload[HEAD_LEN..]);
            }
            Ok(offset < last)
        })?;
        anyhow::ensure!(
            next.iter().zip(wanted).all(|(n, (_, s))| *n == s.count),
            "checkpoint chunks of {} vanished while read",
            self.topic
        );
        let name = |(e, n): Seq| format!("{} checkpoint {e}-{n}", self.topic);
        wanted.iter().zip(&bytes).map(|((p, s), b)| checkpoint::decode(b, s.changes, &name(*p))).collect()
    }
}

impl CheckpointStore for KafkaTopicStore {
    fn since(&self, after: Option<Seq>) -> anyhow::Result<Since> {
        let complete = self.complete()?;
        let places: Vec<(Seq, bool)> = complete.iter().map(|(p, s)| (*p, s.changes)).collect();
        checkpoint::since_from(&places, after, |run| self.checkpoints(&complete[run]))
            .with_context(|| self.topic.clone())
    }

    fn save(&self, offsets: &Offsets, state: StateSave<'_>) -> anyhow::Result<u64> {
        anyhow::ensure!(self.epoch > 0, "a checkpoint reader saves nothing");
        let changes = matches!(state, StateSave::Changes { .. });
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let places: Vec<(Seq, bool)> = known.iter().map(|(p, c, _)| (*p, *c)).collect();
        let at = checkpoint::next_place(&places, self.epoch, changes)?;
        let out = checkpoint::encode(offsets, state)?;
        let count = out.len().div_ceil(CHUNK).max(1) as u32;
        let records = (0..count)
            .map(|i| {
                let mut r = head(changes, at, i, count);
                r.extend_from_slice(
                    &out[(i as usize * CHUNK).min(out.len())..((i as usize + 1) * CHUNK).min(out.len())],
                );
                r
            })
            .collect();
        let first = *self.send_all(records)?.iter().min().context("no chunk delivered")?;
        if !changes
            && let Some(keep) = checkpoint::keep_from(&places, at)
            && let Some(&(_, _, from)) = known.iter().find(|(p, ..)| *p == keep)
        {
            // Housekeeping once the checkpoint is saved: a failure (a broker just restarted
            // and not yet leading the partition) is said, and the next whole checkpoint
            // deletes them.
            match self.delete_before(from) {
                Ok(true) => known.retain(|(p, ..)| *p >= keep),
                Ok(false) => {}
                Err(e) => eprintln!(
                    "warning: old checkpoints of {} not deleted ({e:#}): the next whole checkpoint deletes them",
                    self.topic
                ),
            }
        }
        known.push((at, changes, first));
        Ok(out.len() as u64)
    }
}

impl KafkaTopicStore {
    /// Deletes the checkpoint records before offset `from`, unless a later writer claimed
    /// the topic (it decides what it keeps); whether they were deleted.
    fn delete_before(&self, from: i64) -> anyhow::Result<bool> {
        if self.superseded()? {
            return Ok(false);
        }
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &self.brokers).create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, CHUNKS, Offset::Offset(from))?;
        for r in self.rt.block_on(admin.delete_records(&tpl, &AdminOptions::new()))?.elements() {
            r.error().with_context(|| format!("deleting old checkpoints from {}", self.topic))?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_read_back() {
        let h = head(true, (7, 9), 3, 4);
        assert_eq!(h.len(), HEAD_LEN);
        assert_eq!(parse_head(&h), Some((true, 7, 9, 3, 4)));
        assert_eq!(parse_head(&head(false, (1, 2), 0, 1)), Some((false, 1, 2, 0, 1)));
        assert_eq!(parse_head(b"claim"), None);
    }

    fn brokers() -> Option<String> {
        let b = std::env::var("CBEC_TEST_BROKERS").ok().filter(|b| !b.is_empty());
        if b.is_none() {
            eprintln!("SKIPPED: CBEC_TEST_BROKERS is not set (scripts/test.sh starts a broker)");
        }
        b
    }

    fn offsets(i: i64) -> Offsets {
        [("cbec.orders".to_string(), [(0, i)].into())].into()
    }

    fn whole<'a>(engine: &'a [u8], summarize: &'a [u8]) -> StateSave<'a> {
        StateSave::Whole { engine, summarize }
    }

    fn changes<'a>(engine: &'a [u8], summarize: &'a [u8]) -> StateSave<'a> {
        StateSave::Changes { engine, summarize }
    }

    /// What a load gives: engine state, each change's engine bytes, offsets.
    fn loaded(s: &KafkaTopicStore) -> (Vec<u8>, Vec<Vec<u8>>, Offsets) {
        let cp = s.load().unwrap().expect("a checkpoint");
        (cp.engine, cp.changes.into_iter().map(|c| c.engine).collect(), cp.offsets)
    }

    /// Against the test broker: checkpoints of several chunks load back whole; a process
    /// that takes over claims a newer epoch and from its first save on is never mixed with
    /// the one it replaced; an incomplete checkpoint ends the run; old records are deleted.
    #[test]
    fn checkpoints_in_a_topic_load_back_and_writers_never_mix() {
        let Some(b) = brokers() else { return };
        let cfg = Config {
            brokers: b.clone(),
            group_id: format!("store{}.{}", std::process::id(), cbec_schemas::time::wall_clock().0 % 1_000_000_000),
            checkpoint_store: crate::config::StoreKind::Kafka,
            ..Config::default()
        };
        crate::kafka::ensure_topics(&cfg).unwrap();
        let t = topic(&cfg);
        let big: Vec<u8> = (0..CHUNK * 2 + 12_345).map(|i| (i * 7 % 251) as u8).collect();
        let reader = KafkaTopicStore::reader(&b, &t).unwrap();
        assert!(reader.save(&offsets(0), whole(b"w", b"s")).is_err(), "a reader saves nothing");
        let old = KafkaTopicStore::new(&b, &t).unwrap();
        assert!(old.load().unwrap().is_none());
        assert!(old.save(&offsets(0), changes(b"c0", b"s")).is_err(), "nothing to change yet");
        old.save(&offsets(1), whole(&big, b"s1")).unwrap();
        old.save(&offsets(2), changes(b"c2", b"s2")).unwrap();
        assert_eq!(loaded(&old), (big.clone(), vec![b"c2".to_vec()], offsets(2)));
        // A reader follows: the whole chain, then only what continues it.
        let Since::Other(cp) = reader.since(None).unwrap() else { panic!("the whole chain") };
        assert_eq!((cp.place, cp.engine.len(), cp.changes.len()), ((old.epoch(), 2), big.len(), 1));
        assert_eq!(reader.since(Some(cp.place)).unwrap(), Since::Nothing);
        old.save(&offsets(3), changes(b"c3", b"s3")).unwrap();
        let Since::More { place, changes: more, .. } = reader.since(Some(cp.place)).unwrap() else {
            panic!("the changes after it")
        };
        assert_eq!((place, more.len(), more[0].engine.as_slice()), ((old.epoch(), 3), 1, &b"c3"[..]));
        // A process takes over, saves, and dies while saving its second checkpoint.
        let dead = KafkaTopicStore::new(&b, &t).unwrap();
        assert!(dead.epoch() > old.epoch());
        assert_eq!(loaded(&dead), (big.clone(), vec![b"c2".to_vec(), b"c3".to_vec()], offsets(3)));
        dead.save(&offsets(3), whole(b"W3", b"S3")).unwrap();
        let mut partial = head(true, (dead.epoch(), 2), 0, 2);
        partial.extend_from_slice(b"half");
        dead.send_all(vec![partial]).unwrap();
        // The next one loads without the incomplete checkpoint, whatever the first process
        // (stalled, not noticing it lost its lease) still saves.
        let new = KafkaTopicStore::new(&b, &t).unwrap();
        old.save(&offsets(4), changes(b"c4", b"s4")).unwrap();
        assert_eq!(loaded(&new), (b"W3".to_vec(), vec![], offsets(3)));
        new.save(&offsets(5), whole(b"W5", b"S5")).unwrap();
        old.save(&offsets(6), whole(b"old", b"old")).unwrap();
        old.save(&offsets(7), whole(b"old", b"old")).unwrap();
        new.save(&offsets(6), changes(b"C6", b"S6")).unwrap();
        // (Had the superseded writer deleted what is before its previous whole checkpoint,
        // W5 would be gone.)
        assert_eq!(loaded(&new), (b"W5".to_vec(), vec![b"C6".to_vec()], offsets(6)));
        // The new writer's second whole checkpoint deletes what is before its first.
        let low = |s: &KafkaTopicStore| {
            let c = s.consumer().unwrap();
            crate::kafka::patiently(|| c.fetch_watermarks(&t, CHUNKS, TIMEOUT)).unwrap().0
        };
        let before = low(&new);
        new.save(&offsets(7), whole(b"W7", b"S7")).unwrap();
        assert!(low(&new) > before, "old checkpoints deleted");
        new.save(&offsets(8), changes(b"C8", b"S8")).unwrap();
        let fresh = KafkaTopicStore::new(&b, &t).unwrap();
        assert_eq!(loaded(&fresh), (b"W7".to_vec(), vec![b"C8".to_vec()], offsets(8)));
    }
}
