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
use parquet::schema::types::ColumnPath;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn day(t: EventTime) -> String {
    let s = t.to_rfc3339();
    format!("day={}", s.get(..10).unwrap_or("unknown"))
}

/// Columns whose values are (nearly) all different: identities and keys. A dictionary for
/// them is built value by value (a hash and a comparison each) and then given up when it
/// outgrows its page; they are written plain.
const UNIQUE: &[&str] = &["id", "invtNo", "logisticsNo", "orderNo", "scanId", "contentHash", "copNo", "summaryId"];

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

/// The day of `t` in China Standard Time (UTC+8), as a number: what [`day`] names.
fn cst_day(t: EventTime) -> i64 {
    t.0.saturating_add(8 * 3_600_000).div_euclid(86_400_000)
}

/// The rows of `v` by partition key (moved, not copied); the caller names each partition
/// from its rows (a key per row is a number, not a formatted name).
fn by<T, K: Ord>(v: Vec<T>, part: impl Fn(&T) -> K) -> BTreeMap<K, Vec<T>> {
    let mut m: BTreeMap<K, Vec<T>> = BTreeMap::new();
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
        let mut props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::default()));
        for c in UNIQUE {
            props = props.set_column_dictionary_enabled(ColumnPath::from(*c), false);
        }
        let props = props.build();
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
        for (_, v) in by(declared, |d| cst_day(d.decl_time)) {
            let p = day(v[0].decl_time);
            self.write("declared", &p, tables::declared_batch(&v))?;
            self.write("declared_items", &p, tables::declared_items_batch(&v))?;
        }
        let channels = std::mem::take(&mut self.channels);
        for (_, v) in by(channels, |d| cst_day(d.time)) {
            self.write("channels", &day(v[0].time), tables::channels_batch(&v))?;
        }
        let sorting = std::mem::take(&mut self.sorting);
        for (_, v) in by(sorting, |d| cst_day(d.scan_time)) {
            self.write("sorting", &day(v[0].scan_time), tables::sorting_batch(&v))?;
        }
        let returns = std::mem::take(&mut self.returns);
        for (_, v) in by(returns, |d| cst_day(d.time)) {
            self.write("returns", &day(v[0].time), tables::returns_batch(&v))?;
        }
        let receipts = std::mem::take(&mut self.receipts);
        for (_, v) in by(receipts, |d| cst_day(d.return_time)) {
            self.write("receipts", &day(v[0].return_time), tables::receipts_batch(&v))?;
        }
        let summaries = std::mem::take(&mut self.summaries);
        for (period, v) in by(summaries, |d| d.period) {
            let p = format!("period={period}");
            self.write("summaries", &p, tables::summaries_batch(&v))?;
            self.write("summary_items", &p, tables::summary_items_batch(&v))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows are grouped by a day number and the partition is named from a row's time: the
    /// two must agree, around midnight in China (UTC+8) and before 1970 too.
    #[test]
    fn the_day_number_and_the_partition_name_agree() {
        let midnight = EventTime::parse_rfc3339("2026-11-11T00:00:00+08:00").unwrap().0;
        let times = [midnight - 1, midnight, midnight + 86_399_999, midnight + 86_400_000, -1, 0, -86_400_001];
        for a in times {
            for b in times {
                let (a, b) = (EventTime(a), EventTime(b));
                assert_eq!(cst_day(a) == cst_day(b), day(a) == day(b), "{a:?} {b:?}: {} {}", day(a), day(b));
            }
        }
        assert_eq!(day(EventTime(midnight - 1)), "day=2026-11-10");
        assert_eq!(day(EventTime(midnight)), "day=2026-11-11");
    }

    /// Identities and keys are written without a dictionary; the other text columns keep
    /// theirs.
    #[test]
    fn keys_are_written_plain_and_repeated_texts_with_a_dictionary() {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let dir = tempfile::tempdir().unwrap();
        let mut out = ParquetOut::new(dir.path(), 1_000);
        for i in 0..500i64 {
            out.add(Record::Receipt(Receipt {
                id: format!("5141{i:012}/120").into(),
                invt_no: Some(format!("51412026E{i:010}").into()),
                order_no: Some(format!("ORDER{i}").into()),
                logistics_no: Some(format!("LP{i:010}").into()),
                return_status: 120,
                return_info: "declared: list activated by logistics collection".into(),
                return_time: EventTime(1_794_355_200_000 + i),
                control_ids: Vec::new(),
                pay_code: None,
            }))
            .unwrap();
        }
        out.flush().unwrap();
        let part = dir.path().join("tables/receipts/day=2026-11-11");
        let file = std::fs::read_dir(&part)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "parquet"))
            .unwrap();
        let reader = SerializedFileReader::new(std::fs::File::open(file).unwrap()).unwrap();
        let rg = reader.metadata().row_group(0);
        let dictionary = |name: &str| {
            let c = rg.columns().iter().find(|c| c.column_path().string() == name).unwrap_or_else(|| panic!("{name}"));
            c.dictionary_page_offset().is_some()
        };
        for key in ["id", "invtNo", "orderNo", "logisticsNo"] {
            assert!(!dictionary(key), "{key} is written plain");
        }
        assert!(dictionary("returnInfo"), "a repeated text keeps its dictionary");
    }
}
