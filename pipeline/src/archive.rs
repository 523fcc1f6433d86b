//! `cbec archive`: the Parquet tables of a Kafka deployment.
//!
//! In Kafka mode the pipeline writes its outputs to topics only; the analysts' tables
//! (`declared`, `declared_items`, `channels`, `sorting`, `returns`, `receipts`, `summaries`,
//! `summary_items`) are written from those topics by this consumer, in the same layout and
//! with the same rows as the embedded mode's (`<output>/tables/<table>/day=…/`), so
//! `cbec sql --data <output>` answers the same queries.
//!
//! Exactly once into files, without a store of its own: each (topic, partition) is read in
//! chunks, and a chunk's files are named after where it starts
//! (`part-k-<topic>-p<partition>-o<offset>-<n>.parquet`). On start the last chunk of each
//! partition (which a crash may have left half-written) is deleted and read again from its
//! start; every earlier chunk is complete. Records the pipeline produced twice (a replay
//! after its own crash, before its last checkpoint) are written once: the identities of each
//! partition's last [`DEDUP_WINDOW`] records are remembered, and on start they are read
//! again from the [`DEDUP_WINDOW`] offsets before the chunk written again (not written), so
//! a replay straddling a restart of the archiver is written once too.
//!
//! Partitions added to an output topic while it runs are looked for every
//! [`crate::kafka::PARTITION_CHECK`] and read from their beginning. Metrics (when an
//! endpoint is installed): `cbec_archive_records_total{topic}`,
//! `cbec_archive_duplicates_total{topic}`, `cbec_archive_unreadable_total{topic}`,
//! `cbec_archive_files_total`, `cbec_archive_redone_files_total` and
//! `cbec_consumer_lag{topic,partition}`.

use crate::config::Config;
use crate::parquet_out::ParquetOut;
use crate::record::Record;
use anyhow::Context;
use metrics::{Counter, counter};
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ffi::CString;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The output topics that have tables (short names): `releases` and `dlq` have none.
pub const ARCHIVED: [&str; 6] = ["declared", "receipts", "returns", "channels", "sorting", "summaries"];

/// Identities remembered per partition to write a record produced twice once.
pub const DEDUP_WINDOW: usize = 65_536;

/// A chunk is written after this long even when it is not full.
const CHUNK_AGE: Duration = Duration::from_secs(10);

/// What an archive run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ArchiveStats {
    /// Records written, per topic short name.
    pub records: BTreeMap<String, u64>,
    /// Records skipped as produced before (same identity).
    pub duplicates: u64,
    /// Records that are not what their topic carries (skipped, each said on stderr).
    pub unreadable: u64,
    /// Parquet files written.
    pub files: u64,
    /// Files of last chunks deleted at the start, to be written again.
    pub redone: u64,
    /// Offsets of a chunk to write again that the topic no longer held (retention deleted
    /// them before they were read again): (topic, partition) → (from, to), `to` excluded.
    /// Their rows are not in the tables.
    pub gaps: BTreeMap<(String, i32), (i64, i64)>,
}

/// The partitions read: topic → partition → its state (looked up by the topic name a
/// message carries, without a copy of it).
type Parts = BTreeMap<String, BTreeMap<i32, Part>>;

/// One partition's chunk being read, and the identities seen last.
struct Part {
    short: &'static str,
    partition: i32,
    /// The topic's name (for librdkafka's cached watermarks).
    cname: CString,
    /// Next offset to read.
    next: i64,
    /// Records before this offset were written by an earlier run: read only to fill the
    /// de-duplication window.
    write_from: i64,
    chunk: Option<Chunk>,
    seen: HashSet<u64>,
    order: VecDeque<u64>,
    counts: Counts,
}

/// A topic's counters (`cbec_archive_*_total{topic}`).
struct Counts {
    records: Counter,
    duplicates: Counter,
    unreadable: Counter,
}

impl Counts {
    fn of(short: &'static str) -> Counts {
        Counts {
            records: counter!("cbec_archive_records_total", "topic" => short),
            duplicates: counter!("cbec_archive_duplicates_total", "topic" => short),
            unreadable: counter!("cbec_archive_unreadable_total", "topic" => short),
        }
    }
}

struct Chunk {
    out: ParquetOut,
    opened: Instant,
}

fn id_hash(short: &str, id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (short, id).hash(&mut h);
    h.finish()
}

impl Part {
    /// True the first time an identity is seen within the window.
    fn first(&mut self, id: u64) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > DEDUP_WINDOW
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }

    fn write(&mut self, stats: &mut ArchiveStats) -> anyhow::Result<()> {
        if let Some(mut c) = self.chunk.take() {
            let before = c.out.files;
            c.out.flush().with_context(|| format!("writing a chunk of {} partition {}", self.short, self.partition))?;
            stats.files += c.out.files - before;
            counter!("cbec_archive_files_total").increment(c.out.files - before);
        }
        Ok(())
    }
}

/// The writer name of the chunk of `short`'s `partition` starting at `offset`.
fn chunk_name(short: &str, partition: i32, offset: i64) -> String {
    format!("k-{short}-p{partition}-o{offset:020}")
}

/// Where a chunk starts: (topic short name, partition, offset).
type ChunkStart = (String, i32, i64);

/// Where each partition's last chunk starts: (topic short name, partition) → offset.
pub type ResumePoints = BTreeMap<(String, i32), i64>;

/// Where the chunk of a chunk's file name starts.
fn parse_chunk_file(name: &str) -> Option<ChunkStart> {
    let rest = name.strip_prefix("part-k-")?.strip_suffix(".parquet")?;
    let (short, rest) = rest.split_once("-p")?;
    let (partition, rest) = rest.split_once("-o")?;
    let (offset, _n) = rest.split_once('-')?;
    Some((short.to_string(), partition.parse().ok()?, offset.parse().ok()?))
}

/// Every chunk file under `<output>/tables` with what its name says; half-written temporary
/// files of chunks are deleted.
fn chunk_files(tables: &Path) -> anyhow::Result<Vec<(PathBuf, ChunkStart)>> {
    let mut files = Vec::new();
    let Ok(tables_dir) = std::fs::read_dir(tables) else { return Ok(files) };
    for table in tables_dir.flatten() {
        for part in std::fs::read_dir(table.path())?.flatten() {
            for f in std::fs::read_dir(part.path())?.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.starts_with(".part-k-") && name.ends_with(".tmp") {
                    std::fs::remove_file(f.path())?;
                } else if let Some(c) = parse_chunk_file(&name) {
                    files.push((f.path(), c));
                }
            }
        }
    }
    Ok(files)
}

/// The files of each partition's last chunk, to delete before it is read again.
pub type Redo = BTreeMap<(String, i32), Vec<PathBuf>>;

/// Where each partition goes on from: the start of its last chunk, which a crash may have
/// cut short; and that chunk's files.
pub fn resume_points(output: &Path) -> anyhow::Result<(ResumePoints, Redo)> {
    let files = chunk_files(&output.join("tables"))?;
    let mut last = ResumePoints::new();
    for (_, (short, p, o)) in &files {
        let e = last.entry((short.clone(), *p)).or_insert(*o);
        *e = (*e).max(*o);
    }
    let mut redo = Redo::new();
    for (f, (short, p, o)) in files {
        if last.get(&(short.clone(), p)) == Some(&o) {
            redo.entry((short, p)).or_default().push(f);
        }
    }
    Ok((last, redo))
}

/// Deletes the files of the last chunk of `short`'s partition `p` (once the partition was
/// checked against it, in [`open_part`]), counting them in `stats`. Deleting it loses
/// nothing even if the run stops right after: the next one goes on from the chunk before.
fn redo_chunk(redo: &mut Redo, (short, p): (&str, i32), stats: &mut ArchiveStats) -> anyhow::Result<()> {
    for f in redo.remove(&(short.to_string(), p)).unwrap_or_default() {
        std::fs::remove_file(&f).with_context(|| format!("deleting {}", f.display()))?;
        stats.redone += 1;
        counter!("cbec_archive_redone_files_total").increment(1);
    }
    Ok(())
}

/// Decodes a record of output topic `short`.
fn decode(short: &str, payload: &[u8]) -> Result<Record, String> {
    let e = |e: serde_json::Error| e.to_string();
    Ok(match short {
        "declared" => Record::Declared(serde_json::from_slice(payload).map_err(e)?),
        "receipts" => Record::Receipt(serde_json::from_slice(payload).map_err(e)?),
        "returns" => Record::Return(Box::new(serde_json::from_slice(payload).map_err(e)?)),
        "channels" => Record::Channel(serde_json::from_slice(payload).map_err(e)?),
        "sorting" => Record::Sorting(serde_json::from_slice(payload).map_err(e)?),
        "summaries" => Record::Summary(serde_json::from_slice(payload).map_err(e)?),
        other => return Err(format!("{other} has no table")),
    })
}

/// Opens partition `p` of output topic `short` (`topic`) for reading into `tpl`: from the
/// start of its last chunk in the folder (`resume`), whose files it deletes once the
/// partition was checked against it, or from its beginning; before a resumed chunk, the
/// [`DEDUP_WINDOW`] offsets that fill the de-duplication window.
fn open_part(
    meta: &BaseConsumer,
    tpl: &mut TopicPartitionList,
    (short, topic, p): (&'static str, &str, i32),
    (resume, redo): (&ResumePoints, &mut Redo),
    stats: &mut ArchiveStats,
) -> anyhow::Result<Part> {
    let resume = resume.get(&(short.to_string(), p)).copied();
    let (low, high) = crate::kafka::patiently(|| meta.fetch_watermarks(topic, p, Duration::from_secs(10)))?;
    // Its last chunk started at a record the partition never had: these are not the
    // records the folder holds (the topic was deleted and made again, or another prefix's
    // or cluster's). Read on, the new records would be taken for the window, or written
    // over the old chunks' files.
    if let Some(from) = resume.filter(|f| *f >= high) {
        anyhow::bail!(
            "{topic} partition {p} ends at offset {high}, but the archive has a chunk of it from offset {from}: the topic is not the one archived there (made again, or another prefix's or cluster's); archive it into a new folder"
        );
    }
    if let Some(from) = resume.filter(|f| *f < low) {
        eprintln!(
            "cbec: archive: {topic} partition {p} no longer holds offsets {from}..{low} (retention): their rows are not in the tables"
        );
        stats.gaps.insert((topic.to_string(), p), (from, low));
    }
    redo_chunk(redo, (short, p), stats)?;
    let write_from = resume.map_or(low, |f| f.max(low));
    let read_from = if resume.is_some() { write_from.saturating_sub(DEDUP_WINDOW as i64).max(low) } else { write_from };
    tpl.add_partition_offset(topic, p, Offset::Offset(read_from))?;
    Ok(Part {
        short,
        partition: p,
        cname: CString::new(topic).context("topic name")?,
        next: read_from,
        write_from,
        chunk: None,
        seen: HashSet::new(),
        order: VecDeque::new(),
        counts: Counts::of(short),
    })
}

/// Partitions of the output topics that `parts` does not hold yet (added since they were
/// looked up), opened as at the start ([`open_part`]) and added to the consumer's
/// assignment. A topic whose metadata does not come within a second is looked at next time.
fn open_added_parts(
    cfg: &Config,
    (consumer, meta): (&BaseConsumer, &BaseConsumer),
    (parts, resume, redo): (&mut Parts, &ResumePoints, &mut Redo),
    stats: &mut ArchiveStats,
) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    let mut grown = Vec::new();
    for short in ARCHIVED {
        let topic = cfg.output_topic(short);
        let Ok(md) = meta.fetch_metadata(Some(&topic), Duration::from_secs(1)) else { continue };
        let held = parts.entry(topic.clone()).or_default();
        let added: Vec<i32> = partition_ids(&md).into_iter().filter(|p| !held.contains_key(p)).collect();
        if added.is_empty() {
            continue;
        }
        grown.push(format!("{topic} {} → {}", held.len(), held.len() + added.len()));
        for p in added {
            held.insert(p, open_part(meta, &mut tpl, (short, &topic, p), (resume, redo), stats)?);
        }
    }
    if !grown.is_empty() {
        consumer.incremental_assign(&tpl).context("assigning the added partitions")?;
        eprintln!(
            "cbec: archive: partitions added ({}), read from their beginning or their last chunk here",
            grown.join(", ")
        );
    }
    Ok(())
}

/// Archives the output topics of `cfg` into Parquet tables under `output` until `stop` is
/// set or, with `exit_when_idle`, once it has read every partition to the end it had when
/// last looked (nothing new for a second).
pub fn run(cfg: &Config, output: &Path, exit_when_idle: bool, stop: Arc<AtomicBool>) -> anyhow::Result<ArchiveStats> {
    if !crate::kafka::wait_for_brokers(&cfg.brokers, &stop, Duration::from_secs(30)) {
        return Ok(ArchiveStats::default());
    }
    let (resume, mut redo) = resume_points(output)?;
    let mut stats = ArchiveStats::default();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("group.id", format!("{}.archive", cfg.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A chunk to write again whose records the topic no longer holds: from the earliest
        // it holds (said in `open_part`), not from new records only.
        .set("auto.offset.reset", "earliest")
        // Fetches of up to 8 MiB per partition (1 MiB by default): 900,000 records archived
        // in 4.5 s instead of 7.1 s (BENCHMARKS, seventeenth session).
        .set("max.partition.fetch.bytes", "8388608")
        .create()
        .context("creating the archive consumer")?;
    // Metadata and watermarks through a client of their own: asked of the consumer, each
    // waited behind its fetch, which the broker holds up to `fetch.wait.max.ms` (500 ms)
    // when there is nothing new: 12 s to see that 24 partitions were read to their end.
    let meta: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .create()
        .context("creating the archive's metadata client")?;
    let mut parts = Parts::new();
    let mut tpl = TopicPartitionList::new();
    for short in ARCHIVED {
        let topic = cfg.output_topic(short);
        let Some(partitions) = topic_partitions(&meta, &topic, &stop)? else { return Ok(stats) };
        let held = parts.entry(topic.clone()).or_default();
        for p in partitions {
            held.insert(p, open_part(&meta, &mut tpl, (short, &topic, p), (&resume, &mut redo), &mut stats)?);
        }
    }
    consumer.assign(&tpl).context("assigning the output topics' partitions")?;
    eprintln!(
        "cbec: archiving {} partitions of {} topics into {} ({} files of last chunks written again)",
        parts.values().map(BTreeMap::len).sum::<usize>(),
        ARCHIVED.len(),
        output.join("tables").display(),
        stats.redone
    );
    let mut quiet_since: Option<Instant> = None;
    let mut last_error: Option<String> = None;
    let (mut checked, mut lags_at) = (Instant::now(), Instant::now());
    while !stop.load(Ordering::Relaxed) {
        if checked.elapsed() >= crate::kafka::PARTITION_CHECK {
            open_added_parts(cfg, (&consumer, &meta), (&mut parts, &resume, &mut redo), &mut stats)?;
            checked = Instant::now();
        }
        if lags_at.elapsed() >= Duration::from_secs(1) {
            for (topic, held) in &parts {
                for (p, part) in held {
                    if let Some(high) = crate::kafka::cached_watermarks(&consumer, &part.cname, *p).1 {
                        let lag = (high - part.next).max(0);
                        crate::metrics::ConsumerLag { topic, partition: *p, lag }.emit();
                    }
                }
            }
            lags_at = Instant::now();
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                quiet_since = None;
                let Some(part) = parts.get_mut(m.topic()).and_then(|h| h.get_mut(&m.partition())) else { continue };
                part.next = m.offset() + 1;
                let Some(payload) = m.payload() else { continue };
                let record = match decode(part.short, payload) {
                    Ok(r) => r,
                    // Said, and counted, by the run that wrote it.
                    Err(_) if m.offset() < part.write_from => continue,
                    Err(e) => {
                        stats.unreadable += 1;
                        part.counts.unreadable.increment(1);
                        eprintln!(
                            "cbec: archive: {} partition {} offset {} is not a {} record, skipped: {e}",
                            m.topic(),
                            m.partition(),
                            m.offset(),
                            part.short
                        );
                        continue;
                    }
                };
                let first = part.first(id_hash(part.short, &record.id()));
                if m.offset() < part.write_from {
                    continue;
                }
                if !first {
                    stats.duplicates += 1;
                    part.counts.duplicates.increment(1);
                    continue;
                }
                let (short, partition, offset) = (part.short, part.partition, m.offset());
                let chunk = part.chunk.get_or_insert_with(|| Chunk {
                    out: ParquetOut::named(output, chunk_name(short, partition, offset)),
                    opened: Instant::now(),
                });
                chunk.out.add(record)?;
                *stats.records.entry(short.to_string()).or_default() += 1;
                part.counts.records.increment(1);
                if chunk.out.buffered() >= cfg.parquet_rows {
                    part.write(&mut stats)?;
                }
            }
            Some(Err(e)) => {
                // Said once while it repeats (a broker away fails every poll alike).
                let e = e.to_string();
                if last_error.as_ref() != Some(&e) {
                    eprintln!("cbec: archive: {e}");
                    last_error = Some(e);
                }
            }
            None => {
                for part in parts.values_mut().flat_map(BTreeMap::values_mut) {
                    if part.chunk.as_ref().is_some_and(|c| c.opened.elapsed() >= CHUNK_AGE) {
                        part.write(&mut stats)?;
                    }
                }
                let quiet = *quiet_since.get_or_insert_with(Instant::now);
                if exit_when_idle && quiet.elapsed() >= Duration::from_secs(1) && caught_up(&meta, &parts)? {
                    break;
                }
            }
        }
    }
    for part in parts.values_mut().flat_map(BTreeMap::values_mut) {
        part.write(&mut stats)?;
    }
    Ok(stats)
}

/// The partition ids of the topics in `md`.
fn partition_ids(md: &rdkafka::metadata::Metadata) -> Vec<i32> {
    md.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect()
}

/// The partitions of `topic`, once it exists (the pipeline creates its output topics, with
/// their settings: the archiver waits for them, saying so once); `None` if `stop` is set
/// first.
fn topic_partitions(meta: &BaseConsumer, topic: &str, stop: &AtomicBool) -> anyhow::Result<Option<Vec<i32>>> {
    let mut said = false;
    while !stop.load(Ordering::Relaxed) {
        let md = crate::kafka::patiently(|| meta.fetch_metadata(Some(topic), Duration::from_secs(10)))?;
        let parts = partition_ids(&md);
        if !parts.is_empty() {
            return Ok(Some(parts));
        }
        if !said {
            eprintln!("cbec: archive: waiting for the topic {topic} (cbec run creates it)");
            said = true;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(None)
}

/// Whether every partition was read to its high watermark.
fn caught_up(meta: &BaseConsumer, parts: &Parts) -> anyhow::Result<bool> {
    for (topic, held) in parts {
        for (p, part) in held {
            let (_, high) = crate::kafka::patiently(|| meta.fetch_watermarks(topic, *p, Duration::from_secs(10)))?;
            if part.next < high {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// The run's report.
pub fn render(s: &ArchiveStats) -> String {
    let per: Vec<String> = s.records.iter().map(|(t, n)| format!("{t} {n}")).collect();
    let gaps: Vec<String> = s.gaps.iter().map(|((t, p), (a, b))| format!("; {t} partition {p} offsets {a}..{b} deleted by retention before they were read: their rows are missing")).collect();
    format!(
        "archived {} records ({}) into {} Parquet files; {} produced twice written once; {} unreadable skipped; {} files of unfinished chunks written again{}\n",
        s.records.values().sum::<u64>(),
        if per.is_empty() { "none".to_string() } else { per.join(", ") },
        s.files,
        s.duplicates,
        s.unreadable,
        s.redone,
        gaps.concat()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_file_name_says_its_topic_partition_and_start() {
        let name = format!("part-{}-{:06}.parquet", chunk_name("declared", 3, 1234), 2);
        assert_eq!(parse_chunk_file(&name), Some(("declared".into(), 3, 1234)));
        assert_eq!(parse_chunk_file("part-4242-17000-000001.parquet"), None, "an embedded run's file");
        assert_eq!(parse_chunk_file(".part-k-declared-p3-o00000000000000001234-000001.parquet.tmp"), None);
    }

    /// The last chunk of each partition is deleted (all its files, every table and day) and
    /// read again from its start; earlier chunks and other writers' files stay.
    #[test]
    fn the_last_chunk_of_each_partition_is_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let tables = dir.path().join("tables");
        let touch = |table: &str, day: &str, name: String| {
            let d = tables.join(table).join(day);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(&name), b"x").unwrap();
            d.join(name)
        };
        let f = |s: &str, p: i32, o: i64, n: u32| format!("part-{}-{n:06}.parquet", chunk_name(s, p, o));
        let keep = [
            touch("declared", "day=2026-11-11", f("declared", 0, 0, 1)),
            touch("declared_items", "day=2026-11-11", f("declared", 0, 0, 2)),
            touch("declared", "day=2026-11-11", f("declared", 1, 0, 1)),
            touch("receipts", "day=2026-11-11", "part-99-1-000001.parquet".into()),
        ];
        let gone = [
            touch("declared", "day=2026-11-11", f("declared", 0, 500, 1)),
            touch("declared_items", "day=2026-11-12", f("declared", 0, 500, 2)),
            touch("declared", "day=2026-11-12", f("declared", 1, 70, 1)),
            touch("declared", "day=2026-11-12", ".part-k-declared-p1-o00000000000000000090-000001.parquet.tmp".into()),
        ];
        let (at, mut redo) = resume_points(dir.path()).unwrap();
        assert_eq!(at, BTreeMap::from([(("declared".into(), 0), 500), (("declared".into(), 1), 70)]));
        assert!(redo.values().flatten().all(|p| p.exists()) && !gone[3].exists(), "a temporary file goes at once");
        let mut stats = ArchiveStats::default();
        redo_chunk(&mut redo, ("declared", 0), &mut stats).unwrap();
        assert_eq!(stats.redone, 2);
        assert!(!gone[0].exists() && !gone[1].exists() && gone[2].exists(), "only that partition's chunk");
        redo_chunk(&mut redo, ("declared", 1), &mut stats).unwrap();
        assert_eq!(stats.redone, 3, "the temporary file is not a chunk's file");
        assert!(keep.iter().all(|p| p.exists()) && gone.iter().all(|p| !p.exists()));
        assert_eq!(resume_points(&dir.path().join("nothing")).unwrap(), (BTreeMap::new(), Redo::new()));
    }

    #[test]
    fn an_identity_seen_within_the_window_is_a_duplicate() {
        let mut p = Part {
            short: "receipts",
            partition: 0,
            cname: CString::new("receipts").unwrap(),
            next: 0,
            write_from: 0,
            chunk: None,
            seen: HashSet::new(),
            order: VecDeque::new(),
            counts: Counts::of("receipts"),
        };
        assert!(p.first(1) && p.first(2) && !p.first(1));
        for i in 3..(DEDUP_WINDOW as u64 + 3) {
            assert!(p.first(i));
        }
        assert!(p.first(1), "forgotten past the window");
        assert!(!p.first(DEDUP_WINDOW as u64 + 2));
        assert_eq!(p.seen.len(), DEDUP_WINDOW);
    }
}
