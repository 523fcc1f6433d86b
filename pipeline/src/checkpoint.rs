//! Checkpoints: input offsets recorded together with operator state, behind a small
//! interface. [`LocalDirStore`] keeps them in a local directory (atomic renames): a whole
//! snapshot of the engine state now and then, and between two of them only what changed
//! (incremental checkpoints, [`cbec_operators::tracked::Incremental`]). Several processes of
//! one consumer group need a store that moves state with its partitions (a Kafka changelog
//! topic or object storage): implement [`CheckpointStore`] for it; nothing else assumes one
//! process.

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
    /// The latest complete checkpoint, if any.
    fn load(&self) -> anyhow::Result<Option<Checkpoint>>;
    /// Saves a checkpoint atomically; returns its size in bytes. Changes continue the
    /// checkpoint saved last: a store without one refuses them.
    fn save(&self, offsets: &Offsets, state: StateSave<'_>) -> anyhow::Result<u64>;
}

/// Format 2: `invtNo` serials in use are kept with their declaration year (state
/// retention). A format-1 checkpoint is refused: its serials carry no year, and reading them
/// as format 2 would let new lists reuse their numbers.
const MAGIC: &[u8; 8] = b"CBECCP2\n";
const PREFIX: &[u8; 6] = b"CBECCP";
/// Changes files: what changed after the checkpoint numbered one less.
const CHANGES_MAGIC: &[u8; 8] = b"CBECCH2\n";

/// Checkpoints as files in a local directory: `checkpoint-N.bin` (the whole state) and
/// `changes-N.bin` (what changed since number N − 1), numbered in the order saved. Loading
/// takes the last whole checkpoint and the unbroken run of changes after it; saving a whole
/// one removes everything before the previous whole one (the last two are kept).
pub struct LocalDirStore {
    dir: PathBuf,
}

/// A file of the store: its number, whether it holds changes, its path.
type Entry = (u64, bool, PathBuf);

impl LocalDirStore {
    /// Uses (and creates) `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> anyhow::Result<LocalDirStore> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).with_context(|| format!("checkpoint dir {}", dir.display()))?;
        Ok(LocalDirStore { dir })
    }

    fn list(&self) -> anyhow::Result<Vec<Entry>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let p = e?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let Some(stem) = name.strip_suffix(".bin") else { continue };
            let (changes, n) = match (stem.strip_prefix("checkpoint-"), stem.strip_prefix("changes-")) {
                (Some(n), _) => (false, n),
                (_, Some(n)) => (true, n),
                _ => continue,
            };
            if let Ok(n) = n.parse() {
                v.push((n, changes, p));
            }
        }
        v.sort();
        Ok(v)
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

/// The sections of a checkpoint or changes file: offsets, the engine's state or changes,
/// summarize's state or changes.
fn read_file(p: &std::path::Path, magic: &[u8; 8]) -> anyhow::Result<(Offsets, Vec<u8>, Vec<u8>)> {
    let bytes = std::fs::read(p)?;
    if !bytes.starts_with(magic) {
        let version = bytes.strip_prefix(PREFIX.as_slice()).and_then(|b| b.first()).map(|b| char::from(*b));
        match version {
            Some(v) if magic == MAGIC => anyhow::bail!(
                "{} is a cbec checkpoint of format {v}; this cbec reads format {}: finish with the cbec that wrote it, or move the checkpoint directory away to rebuild the state from the start of the topics (outputs come again with the same identities)",
                p.display(),
                char::from(MAGIC[6])
            ),
            _ => anyhow::bail!("{} is not a cbec checkpoint", p.display()),
        }
    }
    let mut b = &bytes[magic.len()..];
    let offsets = serde_json::from_slice(read_section(&mut b)?)?;
    let engine = read_section(&mut b)?.to_vec();
    let summarize = read_section(&mut b)?.to_vec();
    Ok((offsets, engine, summarize))
}

impl CheckpointStore for LocalDirStore {
    fn load(&self) -> anyhow::Result<Option<Checkpoint>> {
        let files = self.list()?;
        let Some(w) = files.iter().rposition(|(_, changes, _)| !changes) else {
            anyhow::ensure!(files.is_empty(), "{}: changes without the checkpoint they change", self.dir.display());
            return Ok(None);
        };
        let (offsets, engine, summarize) = read_file(&files[w].2, MAGIC)?;
        let mut cp = Checkpoint { offsets, engine, summarize, changes: Vec::new() };
        // The unbroken run of changes after it (a gap ends it: what follows continues a
        // state that is not here).
        for (i, (n, changes, p)) in files[w + 1..].iter().enumerate() {
            if !changes || *n != files[w].0 + 1 + i as u64 {
                break;
            }
            let (offsets, engine, summarize) = read_file(p, CHANGES_MAGIC)?;
            cp.offsets = offsets;
            cp.changes.push(SavedChanges { engine, summarize });
        }
        Ok(Some(cp))
    }

    fn save(&self, offsets: &Offsets, state: StateSave<'_>) -> anyhow::Result<u64> {
        let existing = self.list()?;
        let n = existing.last().map_or(1, |(n, ..)| n + 1);
        let (magic, name, engine, summarize) = match state {
            StateSave::Whole { engine, summarize } => (MAGIC, format!("checkpoint-{n}.bin"), engine, summarize),
            StateSave::Changes { engine, summarize } => {
                anyhow::ensure!(
                    existing.iter().any(|(_, changes, _)| !changes),
                    "checkpoint changes saved before any whole checkpoint"
                );
                (CHANGES_MAGIC, format!("changes-{n}.bin"), engine, summarize)
            }
        };
        let mut out = magic.to_vec();
        section(&mut out, &serde_json::to_vec(offsets)?);
        section(&mut out, engine);
        section(&mut out, summarize);
        self.write(&name, &out)?;
        if matches!(state, StateSave::Whole { .. }) {
            // Keep the previous whole checkpoint and its changes; drop what is before it.
            let wholes: Vec<u64> = existing.iter().filter(|(_, c, _)| !c).map(|(n, ..)| *n).collect();
            if let Some(&keep_from) = wholes.last() {
                for (m, _, p) in &existing {
                    if *m < keep_from {
                        let _ = std::fs::remove_file(p);
                    }
                }
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
            Checkpoint { offsets: offsets(3), engine: b"{}".to_vec(), summarize: b"[]".to_vec(), changes: vec![] }
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
        let left: Vec<u64> = s.list().unwrap().iter().map(|(n, ..)| *n).collect();
        assert_eq!(left, [4, 5, 6]);
        // A missing changes file ends the run: what follows it changes a state not here.
        s.save(&offsets(7), changes(b"c7", b"s7")).unwrap();
        s.save(&offsets(8), changes(b"c8", b"s8")).unwrap();
        s.save(&offsets(9), changes(b"c9", b"s9")).unwrap();
        std::fs::remove_file(d.path().join("changes-8.bin")).unwrap();
        let cp = s.load().unwrap().unwrap();
        assert_eq!((cp.changes, cp.offsets), (vec![saved(b"c7", b"s7")], offsets(7)));
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
