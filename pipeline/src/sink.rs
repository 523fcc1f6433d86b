//! Where output records go: JSON-lines files named after the output topics plus Parquet
//! (embedded mode), or Kafka topics (see `kafka`). Sinks run on their own thread behind a
//! bounded queue, so a slow sink slows the engine, which slows the sources.

use crate::parquet_out::ParquetOut;
use crate::record::Record;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// An output destination.
pub trait Sink: Send {
    /// Writes one record.
    fn write(&mut self, r: &Record) -> anyhow::Result<()>;
    /// Makes everything written so far durable (called before a checkpoint completes).
    fn flush(&mut self) -> anyhow::Result<()>;
    /// Before a checkpoint: makes everything written so far durable, or returns a wait for
    /// it that the checkpoint writer thread runs before it saves the checkpoint, so that the
    /// sink thread goes on writing meanwhile (a Kafka producer's deliveries: a flush on the
    /// sink thread held every sorting decision behind it for the broker's round trip).
    fn durable(&mut self) -> anyhow::Result<Option<Durable>> {
        self.flush().map(|()| None)
    }
}

/// A wait until what a sink wrote before a checkpoint is durable ([`Sink::durable`]).
pub type Durable = Box<dyn FnOnce() -> anyhow::Result<()> + Send>;

/// `cbec.<topic>.jsonl` files in a directory, plus Parquet tables.
pub struct FileSink {
    dir: PathBuf,
    prefix: String,
    files: HashMap<&'static str, BufWriter<File>>,
    parquet: Option<ParquetOut>,
}

impl FileSink {
    /// Creates `dir` and truncates the output files.
    pub fn new(dir: &Path, prefix: &str, parquet_rows: Option<usize>) -> anyhow::Result<FileSink> {
        std::fs::create_dir_all(dir)?;
        Ok(FileSink {
            dir: dir.to_path_buf(),
            prefix: prefix.to_string(),
            files: HashMap::new(),
            parquet: parquet_rows.map(|n| ParquetOut::new(dir, n)),
        })
    }
}

impl Sink for FileSink {
    fn write(&mut self, r: &Record) -> anyhow::Result<()> {
        let topic = r.topic();
        if !self.files.contains_key(topic) {
            let f = File::create(self.dir.join(format!("{}{topic}.jsonl", self.prefix)))?;
            self.files.insert(topic, BufWriter::with_capacity(1 << 20, f));
        }
        let w = self.files.get_mut(topic).expect("just inserted");
        w.write_all(&r.to_json())?;
        w.write_all(b"\n")?;
        if let Some(p) = &mut self.parquet {
            p.add(r.clone())?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        for w in self.files.values_mut() {
            w.flush()?;
        }
        if let Some(p) = &mut self.parquet {
            p.flush()?;
        }
        Ok(())
    }
}

/// Collects records in memory (tests, benches).
#[derive(Default)]
pub struct MemorySink {
    /// Records written, in order.
    pub records: std::sync::Arc<std::sync::Mutex<Vec<Record>>>,
}

impl Sink for MemorySink {
    fn write(&mut self, r: &Record) -> anyhow::Result<()> {
        self.records.lock().expect("not poisoned").push(r.clone());
        Ok(())
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Discards records (load tests of the engine alone).
pub struct NullSink;

impl Sink for NullSink {
    fn write(&mut self, _r: &Record) -> anyhow::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}
