//! Checkpoints: input offsets recorded together with operator state, behind a small
//! interface. [`LocalDirStore`] keeps them in a local directory (atomic renames): a whole
//! snapshot of the engine state now and then, and between two of them only what changed
//! (incremental checkpoints, [`cbec_operators::tracked::Incremental`]);
//! [`crate::kafka_store::KafkaTopicStore`] keeps the same checkpoints in a Kafka topic, so
//! that a standby of the group ([`crate::lease`]) takes over with the state from anywhere.
//! Both claim a new epoch per writer and load the newest epoch's chain (`chain`), so the
//! checkpoints of a process that lost its lease never mix with its successor's. Object
//! storage would be a third implementation of [`CheckpointStore`].

use anyhow::Context;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

/// Next offset to consume, per topic and partition.
pub type Offsets = BTreeMap<String, BTreeMap<i32, i64>>;

/// One consistent cut, as loaded: resume offsets per topic and partition, and operator
/// state.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Where it sits in the store: the place of the last checkpoint it is made of.
    pub place: Seq,
    /// Next offset to consume, per topic and partition.
    pub offsets: Offsets,
    /// Engine snapshot (declare, clear, seals, broadcast tables): the whole state.
    pub engine: Vec<u8>,
    /// Summarize snapshot.
    pub summarize: Vec<u8>,
    /// The changes saved after those snapshots, oldest first, to apply to them.
    pub changes: Vec<SavedChanges>,
}

/// The changes of one checkpoint, serialized
/// ([`cbec_operators::tracked::Incremental::Changes`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SavedChanges {
    /// The engine's.
    pub engine: Vec<u8>,
    /// Summarize's.
    pub summarize: Vec<u8>,
}

/// The operator state of a checkpoint being saved: the engine's and summarize's.
#[derive(Debug, Clone, Copy)]
pub enum StateSave<'a> {
    /// Snapshots of the whole state.
    Whole {
        /// Engine snapshot.
        engine: &'a [u8],
        /// Summarize snapshot.
        summarize: &'a [u8],
    },
    /// What changed since the checkpoint saved last (whole or changes itself).
    Changes {
        /// Engine changes.
        engine: &'a [u8],
        /// Summarize changes.
        summarize: &'a [u8],
    },
}

/// Where checkpoints live.
pub trait CheckpointStore: Send + Sync {
    /// The latest complete checkpoint, if any: what a follower holding none is given.
    fn load(&self) -> anyhow::Result<Option<Checkpoint>> {
        Ok(match self.since(None)? {
            Since::Other(cp) => Some(cp),
            _ => None,
        })
    }
    /// Saves a checkpoint atomically; returns its size in bytes. Changes continue the
    /// checkpoint saved last: a store without one refuses them.
    fn save(&self, offsets: &Offsets, state: StateSave<'_>) -> anyhow::Result<u64>;
    /// For a follower (a standby keeping a restored state up to date): what was saved
    /// after the checkpoint it holds (at `after`; `None`: it holds none).
    fn since(&self, after: Option<Seq>) -> anyhow::Result<Since>;
}

/// What a store saved after the checkpoint a follower holds ([`CheckpointStore::since`]).
#[derive(Debug, PartialEq)]
pub enum Since {
    /// Nothing (or nothing complete) yet.
    Nothing,
    /// Changes that continue it, oldest first; the last is at `place`, with `offsets`.
    More {
        /// Place of the last.
        place: Seq,
        /// Its offsets.
        offsets: Offsets,
        /// The changes.
        changes: Vec<SavedChanges>,
    },
    /// A checkpoint that does not continue it (a whole one was saved since, or another
    /// writer's): the follower starts over from it.
    Other(Checkpoint),
}

/// [`CheckpointStore::since`] for a store whose complete checkpoints, in the order saved,
/// are `saved` (`(place, holds changes)`), and which reads and decodes a run of them with
/// `read` (indexes into `saved`): the chain a load takes, or only its changes after
/// `after` when `after` is on it.
pub(crate) fn since_from(
    saved: &[(Seq, bool)],
    after: Option<Seq>,
    read: impl FnOnce(std::ops::RangeInclusive<usize>) -> anyhow::Result<Vec<Sections>>,
) -> anyhow::Result<Since> {
    let Some((w, run)) = chain(saved)? else { return Ok(Since::Nothing) };
    let last = saved[w + run].0;
    Ok(match after.and_then(|a| saved[w..=w + run].iter().position(|(p, _)| *p == a)) {
        Some(k) if k == run => Since::Nothing,
        Some(k) => {
            let more = read(w + k + 1..=w + run)?;
            let offsets = more.last().map(|(o, ..)| o.clone()).unwrap_or_default();
            let changes = more.into_iter().map(|(_, engine, summarize)| SavedChanges { engine, summarize });
            Since::More { place: last, offsets, changes: changes.collect() }
        }
        None => {
            let mut decoded = read(w..=w + run)?.into_iter();
            let whole = decoded.next().context("no whole checkpoint")?;
            Since::Other(assemble(last, whole, decoded))
        }
    })
}

/// Format 2: `invtNo` serials in use are kept with their declaration year (state
/// retention). A format-1 checkpoint is refused: its serials carry no year, and reading them
/// as format 2 would let new lists reuse their numbers.
const MAGIC: &[u8; 8] = b"CBECCP2\n";
const PREFIX: &[u8; 6] = b"CBECCP";
/// Changes files: what changed after the checkpoint numbered one less.
const CHANGES_MAGIC: &[u8; 8] = b"CBECCH2\n";

/// Where a checkpoint sits in the order saved: (its writer's epoch, its number in it).
/// Every store claims a new epoch, greater than any before, for what it saves.
pub type Seq = (u64, u64);

/// Of the complete checkpoints of a store in the order saved (`(place, holds changes)`),
/// those a load takes: the last whole one, and the unbroken run of its writer's changes
/// after it (a gap ends it: what follows continues a state that is not there). Returns the
/// index of the whole one and how many changes follow it; an error for changes without
/// any whole checkpoint.
pub(crate) fn chain(saved: &[(Seq, bool)]) -> anyhow::Result<Option<(usize, usize)>> {
    let Some(w) = saved.iter().rposition(|(_, changes)| !changes) else {
        anyhow::ensure!(saved.is_empty(), "changes without the checkpoint they change");
        return Ok(None);
    };
    let (epoch, n) = saved[w].0;
    let run = saved[w + 1..]
        .iter()
        .enumerate()
        .take_while(|(i, ((e, m), changes))| *changes && *e == epoch && *m == n + 1 + *i as u64)
        .count();
    Ok(Some((w, run)))
}

/// The place of the next checkpoint a store of `epoch` saves, after `saved`; changes must
/// continue a whole checkpoint this writer saved.
pub(crate) fn next_place(saved: &[(Seq, bool)], epoch: u64, changes: bool) -> anyhow::Result<Seq> {
    let own = saved.iter().filter(|((e, _), _)| *e == epoch);
    anyhow::ensure!(
        !changes || own.clone().any(|(_, c)| !c),
        "checkpoint changes saved before a whole checkpoint of this writer"
    );
    Ok((epoch, own.map(|((_, n), _)| n + 1).max().unwrap_or(1)))
}

/// After a whole checkpoint saved at `at`: the place from which on checkpoints are kept
/// (the whole one before it, of any writer), if any. What is before it can go; a newer
/// writer's checkpoints, if any, come after `at` and stay.
pub(crate) fn keep_from(saved: &[(Seq, bool)], at: Seq) -> Option<Seq> {
    saved.iter().filter(|(s, c)| !c && *s < at).map(|(s, _)| *s).next_back()
}

fn section(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

fn read_section<'a>(b: &mut &'a [u8]) -> anyhow::Result<&'a [u8]> {
    anyhow::ensure!(b.len() >= 8, "truncated checkpoint");
    let n = u64::from_le_bytes(b[..8].try_into()?) as usize;
    anyhow::ensure!(b.len() >= 8 + n, "truncated checkpoint");
    let s = &b[8..8 + n];
    *b = &b[8 + n..];
    Ok(s)
}

/// A checkpoint's sections, decoded: offsets, the engine's state or changes, summarize's.
pub(crate) type Sections = (Offsets, Vec<u8>, Vec<u8>);

/// A checkpoint as bytes (a file, or the chunks of a Kafka store): its format's magic, then
/// offsets, the engine's state or changes, summarize's state or changes.
pub(crate) fn encode(offsets: &Offsets, state: StateSave<'_>) -> anyhow::Result<Vec<u8>> {
    let (magic, engine, summarize) = match state {
        StateSave::Whole { engine, summarize } => (MAGIC, engine, summarize),
        StateSave::Changes { engine, summarize } => (CHANGES_MAGIC, engine, summarize),
    };
    let mut out = magic.to_vec();
    section(&mut out, &serde_json::to_vec(offsets)?);
    section(&mut out, engine);
    section(&mut out, summarize);
    Ok(out)
}

/// The sections of a checkpoint's bytes (`changes` or whole), `name` saying where they
/// come from in errors.
pub(crate) fn decode(bytes: &[u8], changes: bool, name: &str) -> anyhow::Result<Sections> {
    let magic = if changes { CHANGES_MAGIC } else { MAGIC };
    if !bytes.starts_with(magic) {
        let version = bytes.strip_prefix(PREFIX.as_slice()).and_then(|b| b.first()).map(|b| char::from(*b));
        match version {
            Some(v) if !changes => anyhow::bail!(
                "{name} is a cbec checkpoint of format {v}; this cbec reads format {}: finish with the cbec that wrote it, or move the checkpoints away to rebuild the state from the start of the topics (outputs come again with the same identities)",
                char::from(MAGIC[6])
            ),
            _ => anyhow::bail!("{name} is not a cbec checkpoint"),
        }
    }
    let mut b = &bytes[magic.len()..];
    let offsets = serde_json::from_slice(read_section(&mut b)?)?;
    let engine = read_section(&mut b)?.to_vec();
    let summarize = read_section(&mut b)?.to_vec();
    Ok((offsets, engine, summarize))
}

/// A loaded checkpoint (ending at `place`) from the decoded whole one and its changes, in
/// order.
pub(crate) fn assemble(place: Seq, whole: Sections, changes: impl IntoIterator<Item = Sections>) -> Checkpoint {
    let (offsets, engine, summarize) = whole;
    let mut cp = Checkpoint { place, offsets, engine, summarize, changes: Vec::new() };
    for (offsets, engine, summarize) in changes {
        cp.offsets = offsets;
        cp.changes.push(SavedChanges { engine, summarize });
    }
    cp
}

/// Checkpoints as files in a local directory (or one shared by the processes that may take
/// over: NFS, a mounted bucket). Each process that opens the directory claims a new *epoch*
/// (`epoch-E`, one more than any there) and writes `checkpoint-E-N.bin` (the whole state)
/// and `changes-E-N.bin` (what changed since its number N − 1), numbered in the order saved.
/// Loading takes the last whole checkpoint of the newest epoch that has one, and the
/// unbroken run of changes after it in that epoch. So two writers — a process that lost its
/// lease and has not noticed yet, and the one that took over — never write the same file
/// nor continue each other's changes: the older one's files are ignored once the newer has
/// saved. Saving a whole checkpoint removes everything before the previous whole one (the
/// last two are kept). Files of the first format's names (`checkpoint-N.bin`) are epoch 0.
pub struct LocalDirStore {
    dir: PathBuf,
    epoch: u64,
}

/// A file of the store: its place, whether it holds changes, its path.
type Entry = (Seq, bool, PathBuf);

/// `E-N` (or `N`, epoch 0).
fn parse_seq(s: &str) -> Option<Seq> {
    match s.split_once('-') {
        Some((e, n)) => Some((e.parse().ok()?, n.parse().ok()?)),
        None => Some((0, s.parse().ok()?)),
    }
}

impl LocalDirStore {
    /// Uses (and creates) `dir`, and claims a new epoch in it for what this store saves.
    pub fn new(dir: impl Into<PathBuf>) -> anyhow::Result<LocalDirStore> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).with_context(|| format!("checkpoint dir {}", dir.display()))?;
        let mut store = LocalDirStore { dir, epoch: 0 };
        let (files, epochs) = store.scan()?;
        let mut epoch = files.iter().map(|((e, _), ..)| *e).chain(epochs).max().unwrap_or(0) + 1;
        // Claim it: creating the marker fails if another process claimed it first.
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(store.dir.join(format!("epoch-{epoch}")))
            {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => epoch += 1,
                Err(e) => return Err(e).with_context(|| format!("claiming an epoch in {}", store.dir.display())),
            }
        }
        store.epoch = epoch;
        Ok(store)
    }

    /// Reads `dir` without claiming an epoch (a standby following the active process's
    /// checkpoints); it saves nothing.
    pub fn reader(dir: impl Into<PathBuf>) -> LocalDirStore {
        LocalDirStore { dir: dir.into(), epoch: 0 }
    }

    /// The epoch this store writes under (0: a reader).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The checkpoint files in the order saved, and the epochs claimed.
    fn scan(&self) -> anyhow::Result<(Vec<Entry>, Vec<u64>)> {
        let (mut files, mut epochs) = (Vec::new(), Vec::new());
        for e in std::fs::read_dir(&self.dir)? {
            let p = e?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some(e) = name.strip_prefix("epoch-").and_then(|e| e.parse().ok()) {
                epochs.push(e);
                continue;
            }
            let Some(stem) = name.strip_suffix(".bin") else { continue };
            let (changes, seq) = match (stem.strip_prefix("checkpoint-"), stem.strip_prefix("changes-")) {
                (Some(s), _) => (false, s),
                (_, Some(s)) => (true, s),
                _ => continue,
            };
            if let Some(seq) = parse_seq(seq) {
                files.push((seq, changes, p));
            }
        }
        files.sort();
        epochs.sort();
        Ok((files, epochs))
    }

    fn list(&self) -> anyhow::Result<Vec<Entry>> {
        Ok(self.scan()?.0)
    }

    fn write(&self, name: &str, out: &[u8]) -> anyhow::Result<()> {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(out)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(name))?;
        Ok(())
    }
}

impl CheckpointStore for LocalDirStore {
    fn since(&self, after: Option<Seq>) -> anyhow::Result<Since> {
        if !self.dir.exists() {
            return Ok(Since::Nothing);
        }
        let files = self.list()?;
        let places: Vec<(Seq, bool)> = files.iter().map(|(s, c, _)| (*s, *c)).collect();
        let read = |(_, changes, p): &Entry| decode(&std::fs::read(p)?, *changes, &p.display().to_string());
        since_from(&places, after, |run| files[run].iter().map(read).collect())
            .with_context(|| self.dir.display().to_string())
    }

    fn save(&self, offsets: &Offsets, state: StateSave<'_>) -> anyhow::Result<u64> {
        anyhow::ensure!(self.epoch > 0, "a checkpoint reader saves nothing");
        let (existing, epochs) = self.scan()?;
        let places: Vec<(Seq, bool)> = existing.iter().map(|(s, c, _)| (*s, *c)).collect();
        let changes = matches!(state, StateSave::Changes { .. });
        let at = next_place(&places, self.epoch, changes)?;
        let out = encode(offsets, state)?;
        let kind = if changes { "changes" } else { "checkpoint" };
        self.write(&format!("{kind}-{}-{}.bin", at.0, at.1), &out)?;
        if let Some(keep) = keep_from(&places, at).filter(|_| !changes) {
            for (_, _, p) in existing.iter().filter(|(s, ..)| *s < keep) {
                let _ = std::fs::remove_file(p);
            }
            for e in epochs.iter().filter(|e| **e < keep.0) {
                let _ = std::fs::remove_file(self.dir.join(format!("epoch-{e}")));
            }
        }
        Ok(out.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole<'a>(engine: &'a [u8], summarize: &'a [u8]) -> StateSave<'a> {
        StateSave::Whole { engine, summarize }
    }

    fn changes<'a>(engine: &'a [u8], summarize: &'a [u8]) -> StateSave<'a> {
        StateSave::Changes { engine, summarize }
    }

    fn saved(engine: &[u8], summarize: &[u8]) -> SavedChanges {
        SavedChanges { engine: engine.to_vec(), summarize: summarize.to_vec() }
    }

    fn offsets(i: i64) -> Offsets {
        [("cbec.orders".to_string(), [(0, i)].into())].into()
    }

    #[test]
    fn saves_and_loads_the_latest() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalDirStore::new(d.path()).unwrap();
        assert!(s.load().unwrap().is_none());
        for i in 0..4 {
            s.save(&offsets(i), whole(b"{}", b"[]")).unwrap();
        }
        let cp = s.load().unwrap().unwrap();
        assert_eq!(
            cp,
            Checkpoint {
                place: (s.epoch(), 4),
                offsets: offsets(3),
                engine: b"{}".to_vec(),
                summarize: b"[]".to_vec(),
                changes: vec![]
            }
        );
        assert!(s.list().unwrap().len() <= 2);
    }

    /// Changes load with the whole checkpoint before them, in order, with the offsets of
    /// the last; a whole checkpoint later starts a new run, and the
    /// files before the previous whole one are removed.
    #[test]
    fn changes_load_on_top_of_the_whole_checkpoint_before_them() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalDirStore::new(d.path()).unwrap();
        assert!(s.save(&offsets(0), changes(b"c0", b"s0")).is_err(), "nothing to change yet");
        s.save(&offsets(1), whole(b"w1", b"s1")).unwrap();
        s.save(&offsets(2), changes(b"c2", b"s2")).unwrap();
        s.save(&offsets(3), changes(b"c3", b"s3")).unwrap();
        let cp = s.load().unwrap().unwrap();
        assert_eq!(
            cp,
            Checkpoint {
                place: (s.epoch(), 3),
                offsets: offsets(3),
                engine: b"w1".to_vec(),
                summarize: b"s1".to_vec(),
                changes: vec![saved(b"c2", b"s2"), saved(b"c3", b"s3")]
            }
        );
        s.save(&offsets(4), whole(b"w4", b"s4")).unwrap();
        s.save(&offsets(5), changes(b"c5", b"s5")).unwrap();
        let cp = s.load().unwrap().unwrap();
        assert_eq!((cp.engine, cp.changes, cp.offsets), (b"w4".to_vec(), vec![saved(b"c5", b"s5")], offsets(5)));
        assert_eq!(s.list().unwrap().len(), 5, "the previous whole checkpoint and its changes are kept");
        s.save(&offsets(6), whole(b"w6", b"s6")).unwrap();
        let left: Vec<u64> = s.list().unwrap().iter().map(|((_, n), ..)| *n).collect();
        assert_eq!(left, [4, 5, 6]);
        // A missing changes file ends the run: what follows it changes a state not here.
        s.save(&offsets(7), changes(b"c7", b"s7")).unwrap();
        s.save(&offsets(8), changes(b"c8", b"s8")).unwrap();
        s.save(&offsets(9), changes(b"c9", b"s9")).unwrap();
        std::fs::remove_file(d.path().join("changes-1-8.bin")).unwrap();
        let cp = s.load().unwrap().unwrap();
        assert_eq!((cp.changes, cp.offsets), (vec![saved(b"c7", b"s7")], offsets(7)));
    }

    /// A process that takes over claims a newer epoch: it loads what the previous one
    /// saved, and from its first save on, loading follows its files, whatever the previous
    /// writer (lost its lease, has not noticed yet) still saves; neither removes the
    /// other's current files.
    #[test]
    fn a_writer_that_took_over_is_never_mixed_with_the_one_it_replaced() {
        let d = tempfile::tempdir().unwrap();
        let old = LocalDirStore::new(d.path()).unwrap();
        old.save(&offsets(1), whole(b"w1", b"s1")).unwrap();
        old.save(&offsets(2), changes(b"c2", b"s2")).unwrap();
        let new = LocalDirStore::new(d.path()).unwrap();
        assert!(new.epoch() > old.epoch());
        let cp = new.load().unwrap().unwrap();
        assert_eq!((cp.engine.as_slice(), cp.changes.len(), &cp.offsets), (&b"w1"[..], 1, &offsets(2)));
        // Before the new writer saved, the old one's later changes still count …
        old.save(&offsets(3), changes(b"c3", b"s3")).unwrap();
        assert_eq!(new.load().unwrap().unwrap().offsets, offsets(3));
        // … after, they never do, even numbered after the new writer's files.
        assert!(new.save(&offsets(2), changes(b"x", b"x")).is_err(), "a writer starts with a whole checkpoint");
        new.save(&offsets(2), whole(b"W2", b"S2")).unwrap();
        for i in 4..9 {
            old.save(&offsets(i), changes(b"old", b"old")).unwrap();
        }
        old.save(&offsets(9), whole(b"old", b"old")).unwrap();
        old.save(&offsets(10), whole(b"old", b"old")).unwrap();
        new.save(&offsets(3), changes(b"C3", b"S3")).unwrap();
        let cp = new.load().unwrap().unwrap();
        assert_eq!(
            cp,
            Checkpoint {
                place: (new.epoch(), 2),
                offsets: offsets(3),
                engine: b"W2".to_vec(),
                summarize: b"S2".to_vec(),
                changes: vec![saved(b"C3", b"S3")]
            }
        );
        // The new writer's second whole checkpoint removes the old epoch and its marker.
        new.save(&offsets(4), whole(b"W4", b"S4")).unwrap();
        new.save(&offsets(5), whole(b"W5", b"S5")).unwrap();
        let names: Vec<String> =
            std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert!(names.iter().all(|n| !n.ends_with(&format!("-{}", old.epoch())) && !n.contains("-1-")), "{names:?}");
        // Two stores opened at once claim different epochs, and a third sees both claims.
        let (a, b) = (LocalDirStore::new(d.path()).unwrap(), LocalDirStore::new(d.path()).unwrap());
        assert!(a.epoch() != b.epoch() && LocalDirStore::new(d.path()).unwrap().epoch() > a.epoch().max(b.epoch()));
    }

    /// A reader (a standby) follows what a writer saves: the whole chain first, then only
    /// the changes that continue what it holds, and a whole chain again when a whole
    /// checkpoint (or another writer's) no longer continues it.
    #[test]
    fn a_reader_follows_the_checkpoints_as_they_are_saved() {
        let d = tempfile::tempdir().unwrap();
        let reader = LocalDirStore::reader(d.path().join("not-yet"));
        assert_eq!(reader.since(None).unwrap(), Since::Nothing);
        let reader = LocalDirStore::reader(d.path());
        assert!(reader.save(&offsets(0), whole(b"w", b"s")).is_err(), "a reader saves nothing");
        let w = LocalDirStore::new(d.path()).unwrap();
        let e = w.epoch();
        assert_eq!(reader.since(None).unwrap(), Since::Nothing);
        w.save(&offsets(1), whole(b"w1", b"s1")).unwrap();
        let Since::Other(cp) = reader.since(None).unwrap() else { panic!("the whole chain") };
        assert_eq!((cp.place, cp.engine, cp.changes.len()), ((e, 1), b"w1".to_vec(), 0));
        w.save(&offsets(2), changes(b"c2", b"s2")).unwrap();
        w.save(&offsets(3), changes(b"c3", b"s3")).unwrap();
        assert_eq!(
            reader.since(Some((e, 1))).unwrap(),
            Since::More { place: (e, 3), offsets: offsets(3), changes: vec![saved(b"c2", b"s2"), saved(b"c3", b"s3")] }
        );
        assert_eq!(reader.since(Some((e, 3))).unwrap(), Since::Nothing);
        w.save(&offsets(4), whole(b"w4", b"s4")).unwrap();
        let Since::Other(cp) = reader.since(Some((e, 3))).unwrap() else { panic!("a new whole chain") };
        assert_eq!((cp.place, cp.engine), ((e, 4), b"w4".to_vec()));
        let next = LocalDirStore::new(d.path()).unwrap();
        next.save(&offsets(5), whole(b"W5", b"S5")).unwrap();
        let Since::Other(cp) = reader.since(Some((e, 4))).unwrap() else { panic!("another writer's chain") };
        assert_eq!((cp.place, cp.offsets), ((next.epoch(), 1), offsets(5)));
    }

    /// Files named before epochs (`checkpoint-N.bin`) load as epoch 0.
    #[test]
    fn checkpoints_named_before_epochs_still_load() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalDirStore::new(d.path()).unwrap();
        s.save(&offsets(7), whole(b"w", b"s")).unwrap();
        s.save(&offsets(8), changes(b"c", b"s")).unwrap();
        std::fs::rename(d.path().join("checkpoint-1-1.bin"), d.path().join("checkpoint-4.bin")).unwrap();
        std::fs::rename(d.path().join("changes-1-2.bin"), d.path().join("changes-5.bin")).unwrap();
        let cp = LocalDirStore::new(d.path()).unwrap().load().unwrap().unwrap();
        assert_eq!((cp.changes.len(), cp.offsets), (1, offsets(8)));
    }

    #[test]
    fn a_checkpoint_of_another_format_is_refused_with_its_format_named() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalDirStore::new(d.path()).unwrap();
        std::fs::write(d.path().join("checkpoint-1.bin"), b"CBECCP1\n0000").unwrap();
        let e = format!("{:#}", s.load().unwrap_err());
        assert!(e.contains("format 1") && e.contains("reads format 2"), "{e}");
        std::fs::write(d.path().join("checkpoint-2.bin"), b"garbage").unwrap();
        assert!(format!("{:#}", s.load().unwrap_err()).contains("is not a cbec checkpoint"));
    }
}
