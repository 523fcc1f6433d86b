//! Checkpoints: input offsets recorded together with operator state, behind a small
//! interface. [`LocalDirStore`] keeps them in a local directory (atomic rename, last two
//! kept). Several processes of one consumer group need a store that moves state with its
//! partitions (a Kafka changelog topic or object storage): implement [`CheckpointStore`]
//! for it; nothing else assumes one process.

use anyhow::Context;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

/// One consistent cut: resume offsets per topic and partition, and operator state.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Next offset to consume, per topic and partition.
    pub offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Engine snapshot (declare, clear, seals, broadcast tables).
    pub engine: Vec<u8>,
    /// Summarize snapshot.
    pub summarize: Vec<u8>,
}

/// Where checkpoints live.
pub trait CheckpointStore: Send + Sync {
    /// The latest complete checkpoint, if any.
    fn load(&self) -> anyhow::Result<Option<Checkpoint>>;
    /// Saves a checkpoint atomically; returns its size in bytes.
    fn save(&self, cp: &Checkpoint) -> anyhow::Result<u64>;
}

/// Format 2: `invtNo` serials in use are kept with their declaration year (state
/// retention). A format-1 checkpoint is refused: its serials carry no year, and reading them
/// as format 2 would let new lists reuse their numbers.
const MAGIC: &[u8; 8] = b"CBECCP2\n";
const PREFIX: &[u8; 6] = b"CBECCP";

/// Checkpoints as files in a local directory.
pub struct LocalDirStore {
    dir: PathBuf,
}

impl LocalDirStore {
    /// Uses (and creates) `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> anyhow::Result<LocalDirStore> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).with_context(|| format!("checkpoint dir {}", dir.display()))?;
        Ok(LocalDirStore { dir })
    }

    fn list(&self) -> anyhow::Result<Vec<(u64, PathBuf)>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let p = e?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some(n) = name.strip_prefix("checkpoint-").and_then(|s| s.strip_suffix(".bin"))
                && let Ok(n) = n.parse()
            {
                v.push((n, p));
            }
        }
        v.sort();
        Ok(v)
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

impl CheckpointStore for LocalDirStore {
    fn load(&self) -> anyhow::Result<Option<Checkpoint>> {
        let Some((_, p)) = self.list()?.pop() else { return Ok(None) };
        let bytes = std::fs::read(&p)?;
        if !bytes.starts_with(MAGIC) {
            let version = bytes.strip_prefix(PREFIX.as_slice()).and_then(|b| b.first()).map(|b| char::from(*b));
            match version {
                Some(v) => anyhow::bail!(
                    "{} is a cbec checkpoint of format {v}; this cbec reads format {}: finish with the cbec that wrote it, or move the checkpoint directory away to rebuild the state from the start of the topics (outputs come again with the same identities)",
                    p.display(),
                    char::from(MAGIC[6])
                ),
                None => anyhow::bail!("{} is not a cbec checkpoint", p.display()),
            }
        }
        let mut b = &bytes[MAGIC.len()..];
        let offsets = serde_json::from_slice(read_section(&mut b)?)?;
        let engine = read_section(&mut b)?.to_vec();
        let summarize = read_section(&mut b)?.to_vec();
        Ok(Some(Checkpoint { offsets, engine, summarize }))
    }

    fn save(&self, cp: &Checkpoint) -> anyhow::Result<u64> {
        let existing = self.list()?;
        let n = existing.last().map_or(1, |(n, _)| n + 1);
        let mut out = MAGIC.to_vec();
        section(&mut out, &serde_json::to_vec(&cp.offsets)?);
        section(&mut out, &cp.engine);
        section(&mut out, &cp.summarize);
        let tmp = self.dir.join(format!(".checkpoint-{n}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&out)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(format!("checkpoint-{n}.bin")))?;
        for (_, p) in existing.iter().rev().skip(1) {
            let _ = std::fs::remove_file(p);
        }
        Ok(out.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_the_latest() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalDirStore::new(d.path()).unwrap();
        assert!(s.load().unwrap().is_none());
        let mut cp = Checkpoint { offsets: BTreeMap::new(), engine: b"{}".to_vec(), summarize: b"[]".to_vec() };
        for i in 0..4 {
            cp.offsets.entry("cbec.orders".into()).or_default().insert(0, i);
            s.save(&cp).unwrap();
        }
        assert_eq!(s.load().unwrap().unwrap(), cp);
        assert!(s.list().unwrap().len() <= 2);
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
