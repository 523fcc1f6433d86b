//! Parquet output for SQL analytics: one folder per table (`declared`, `declared_items`,
//! `channels`, `sorting`, `returns`, `receipts`, `summaries`, `summary_items`) under
//! `<output>/tables/`, partitioned `day=YYYY-MM-DD` (summaries: `period=YYYYMM`). A file is
//! written under a hidden temporary name and renamed when complete, so a reader (another
//! `cbec sql` process) never sees a half-written file.

use crate::record::Record;
use arrow::record_batch::RecordBatch;
use cbec_schemas::arrow_schema as tables;
use cbec_schemas::{ChannelDecision, DeclaredList, EventTime, Receipt, Return, SortingDecision, Summary};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn day(t: EventTime) -> String {
    let s = t.to_rfc3339();
    format!("day={}", s.get(..10).unwrap_or("unknown"))
}

/// Buffers records per table and writes Parquet files.
pub struct ParquetOut {
    dir: PathBuf,
    rows: usize,
    writer: String,
    seq: u64,
    declared: Vec<DeclaredList>,
    channels: Vec<ChannelDecision>,
    sorting: Vec<SortingDecision>,
    returns: Vec<Return>,
    receipts: Vec<Receipt>,
    summaries: Vec<Summary>,
    /// Files written.
    pub files: u64,
}

/// The rows of `v` by partition (moved, not copied).
fn by<T>(v: Vec<T>, part: impl Fn(&T) -> String) -> BTreeMap<String, Vec<T>> {
    let mut m: BTreeMap<String, Vec<T>> = BTreeMap::new();
    for x in v {
        m.entry(part(&x)).or_default().push(x);
    }
    m
}

impl ParquetOut {
    /// Writes under `<output>/tables`, closing a file every `rows` buffered rows.
    pub fn new(output: &Path, rows: usize) -> ParquetOut {
        let writer = format!("{}-{}", std::process::id(), cbec_schemas::time::wall_clock().0);
        ParquetOut::with_writer(output, rows.max(1), writer)
    }

    /// Writes under `<output>/tables` only when flushed, every file named
    /// `part-<writer>-<n>.parquet` (`n` counting from 1): [`crate::archive`]'s chunks.
    pub fn named(output: &Path, writer: String) -> ParquetOut {
        ParquetOut::with_writer(output, usize::MAX, writer)
    }

    fn with_writer(output: &Path, rows: usize, writer: String) -> ParquetOut {
        ParquetOut {
            dir: output.join("tables"),
            rows,
            writer,
            seq: 0,
            declared: Vec::new(),
            channels: Vec::new(),
            sorting: Vec::new(),
            returns: Vec::new(),
            receipts: Vec::new(),
            summaries: Vec::new(),
            files: 0,
        }
    }

    /// Records buffered, not written yet.
    pub fn buffered(&self) -> usize {
        self.declared.len()
            + self.channels.len()
            + self.sorting.len()
            + self.returns.len()
            + self.receipts.len()
            + self.summaries.len()
    }

    /// Buffers a record (taken: a caller that keeps it passes a copy); writes when a table
    /// is full.
    pub fn add(&mut self, r: Record) -> std::io::Result<()> {
        let n = match r {
            Record::Declared(x) => {
                self.declared.push(x);
                self.declared.len()
            }
            Record::Channel(x) => {
                self.channels.push(x);
                self.channels.len()
            }
            Record::Sorting(x) => {
                self.sorting.push(x);
                self.sorting.len()
            }
            Record::Return(x) => {
                self.returns.push(*x);
                self.returns.len()
            }
            Record::Receipt(x) => {
                self.receipts.push(x);
                self.receipts.len()
            }
            Record::Summary(x) => {
                self.summaries.push(x);
                self.summaries.len()
            }
            Record::Release(_) | Record::Dead(_) | Record::Stage(..) => 0,
        };
        if n >= self.rows {
            self.flush()?;
        }
        Ok(())
    }

    fn write(&mut self, table: &str, part: &str, batch: arrow::error::Result<RecordBatch>) -> std::io::Result<()> {
        let batch = batch.map_err(std::io::Error::other)?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let dir = self.dir.join(table).join(part);
        std::fs::create_dir_all(&dir)?;
        self.seq += 1;
        let name = format!("part-{}-{:06}.parquet", self.writer, self.seq);
        let tmp = dir.join(format!(".{name}.tmp"));
        let file = std::fs::File::create(&tmp)?;
        let props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::default())).build();
        let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(std::io::Error::other)?;
        w.write(&batch).map_err(std::io::Error::other)?;
        w.close().map_err(std::io::Error::other)?;
        std::fs::rename(&tmp, dir.join(name))?;
        self.files += 1;
        Ok(())
    }

    /// Writes everything buffered.
    pub fn flush(&mut self) -> std::io::Result<()> {
        let declared = std::mem::take(&mut self.declared);
        for (p, v) in by(declared, |d| day(d.decl_time)) {
            self.write("declared", &p, tables::declared_batch(&v))?;
            self.write("declared_items", &p, tables::declared_items_batch(&v))?;
        }
        let channels = std::mem::take(&mut self.channels);
        for (p, v) in by(channels, |d| day(d.time)) {
            self.write("channels", &p, tables::channels_batch(&v))?;
        }
        let sorting = std::mem::take(&mut self.sorting);
        for (p, v) in by(sorting, |d| day(d.scan_time)) {
            self.write("sorting", &p, tables::sorting_batch(&v))?;
        }
        let returns = std::mem::take(&mut self.returns);
        for (p, v) in by(returns, |d| day(d.time)) {
            self.write("returns", &p, tables::returns_batch(&v))?;
        }
        let receipts = std::mem::take(&mut self.receipts);
        for (p, v) in by(receipts, |d| day(d.return_time)) {
            self.write("receipts", &p, tables::receipts_batch(&v))?;
        }
        let summaries = std::mem::take(&mut self.summaries);
        for (p, v) in by(summaries, |d| format!("period={}", d.period)) {
            self.write("summaries", &p, tables::summaries_batch(&v))?;
            self.write("summary_items", &p, tables::summary_items_batch(&v))?;
        }
        Ok(())
    }
}
