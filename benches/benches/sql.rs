//! The example queries of `cbec sql` over synthetic tables of 10 million declared lists
//! (declared, declared_items, channels, sorting, returns, receipts, summaries,
//! summary_items), written as Parquet in the pipeline's layout, then queried with
//! DataFusion through the same session `cbec sql` uses.
//!
//! Run: `cargo bench -p cbec-benches --bench sql`
//! Size: `CBEC_BENCH_LISTS` (default 10000000).

use arrow::array::{
    ArrayRef, BooleanArray, Decimal128Array, Int32Array, Int64Array, ListBuilder, StringArray, StringBuilder,
    TimestampMillisecondArray, UInt32Array,
};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use cbec_benches::{machine, peak_rss_mib};
use cbec_pipeline::sql::{EXAMPLES, context, query};
use cbec_schemas::arrow_schema::{TABLES, schema};
use cbec_schemas::hs::Nomenclature;
use parquet::arrow::ArrowWriter;
use std::sync::Arc;
use std::time::Instant;

// The allocator of the `cbec` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const GCODES: [&str; 8] =
    ["8517130000", "6204430000", "9503009000", "3004909000", "0902101000", "6403990000", "8518300000", "7202110000"];
const COUNTRIES: [&str; 6] = ["502", "303", "304", "116", "601", "132"];

/// A synthetic value for column `name` of row `i` (list `l`), consistent across tables.
fn column(name: &str, ty: &DataType, rows: &[(u64, u64)]) -> ArrayRef {
    let s = |f: &dyn Fn(u64, u64) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(|(l, k)| f(*l, *k))))
    };
    let t0 = 1_794_398_400_000i64; // 2026-11-11T20:00:00+08:00
    match (name, ty) {
        ("invtNo", _) => s(&|l, _| format!("51412026E{l:011}")),
        ("logisticsNo", _) => s(&|l, _| format!("LP{l:010}")),
        ("orderNo", _) => s(&|l, _| format!("O{l:09}")),
        ("ebcCode", _) | ("listEbcCode", _) | ("ownerCode", _) => s(&|l, _| format!("EBC{:05}", (l * 7919) % 2000)),
        ("gcode", _) => s(&|l, k| GCODES[((l + k) % 8) as usize].to_string()),
        ("country", _) => s(&|l, _| COUNTRIES[(l % 6) as usize].to_string()),
        ("portCode", _) | ("customsCode", _) => s(&|l, _| ["5141", "2244", "2233"][(l % 3) as usize].to_string()),
        ("channel", _) => s(&|l, _| if l % 20 == 0 { "red" } else { "green" }.to_string()),
        ("port", _) => s(&|l, _| if l % 20 == 0 { "inspect" } else { "release" }.to_string()),
        ("reasons", _) => s(&|l, _| if l % 20 == 0 { "sampled,xray_suspect" } else { "" }.to_string()),
        ("lineId", _) => s(&|l, _| format!("LINE{}", l % 4)),
        ("id", _) | ("summaryId", _) | ("scanId", _) => s(&|l, k| format!("{l}/{k}")),
        ("payCode", _) => s(&|l, _| format!("PAY{:04}", l % 17)),
        (_, DataType::Utf8) => s(&|l, k| format!("{}", (l + k) % 997)),
        ("sampled", DataType::Boolean) => {
            Arc::new(rows.iter().map(|(l, _)| Some(l % 20 == 0)).collect::<BooleanArray>())
        }
        ("manualControl", DataType::Boolean) => {
            Arc::new(rows.iter().map(|(l, _)| Some(l % 97 == 0)).collect::<BooleanArray>())
        }
        (_, DataType::Boolean) => Arc::new(rows.iter().map(|_| Some(false)).collect::<BooleanArray>()),
        ("returnStatus", DataType::Int32) => {
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|(l, _)| if l % 50 == 0 { 800 } else { 899 })))
        }
        (_, DataType::Int32) => Arc::new(Int32Array::from_iter_values(rows.iter().map(|_| 0))),
        ("period", DataType::UInt32) => Arc::new(UInt32Array::from_iter_values(rows.iter().map(|_| 202611))),
        (_, DataType::UInt32) => Arc::new(UInt32Array::from_iter_values(rows.iter().map(|(_, k)| *k as u32 + 1))),
        (_, DataType::Int64) => Arc::new(Int64Array::from_iter_values(rows.iter().map(|_| 1))),
        (_, DataType::Decimal128(p, sc)) => Arc::new(
            Decimal128Array::from_iter_values(rows.iter().map(|(l, k)| ((l * 31 + k) % 50_000) as i128 * 100_000))
                .with_precision_and_scale(*p, *sc)
                .expect("decimal"),
        ),
        (_, DataType::Timestamp(_, tz)) => Arc::new(
            TimestampMillisecondArray::from_iter_values(rows.iter().map(|(l, _)| t0 + (*l as i64 % 3_600_000)))
                .with_timezone_opt(tz.clone()),
        ),
        (_, DataType::List(_)) => {
            let mut b = ListBuilder::new(StringBuilder::new());
            for (l, _) in rows {
                b.values().append_value(format!("51412026E{l:011}"));
                b.append(true);
            }
            Arc::new(b.finish())
        }
        (n, t) => panic!("no synthetic values for {n}: {t:?}"),
    }
}

fn batch(s: &SchemaRef, rows: &[(u64, u64)]) -> RecordBatch {
    let cols: Vec<ArrayRef> = s.fields().iter().map(|f| column(f.name(), f.data_type(), rows)).collect();
    RecordBatch::try_new(s.clone(), cols).expect("batch")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("sql: bench");
        return;
    }
    let lists: u64 = std::env::var("CBEC_BENCH_LISTS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000_000);
    println!("machine: {}", machine());
    println!("command: cargo bench -p cbec-benches --bench sql  (CBEC_BENCH_LISTS={lists})");
    let dir = std::env::temp_dir().join(format!("cbec-sql-bench-{}", std::process::id()));
    let t = Instant::now();
    let chunk = 1_000_000u64;
    for table in TABLES {
        let s = schema(table).expect("table");
        let d = dir.join("tables").join(table).join("day=2026-11-11");
        std::fs::create_dir_all(&d).expect("dir");
        // Rows per list: 2 items, 1 sorting decision, 3 receipts; 1 % returns; summaries per 1,000 lists.
        let (per, keep): (u64, fn(u64) -> bool) = match table {
            "declared_items" => (2, |_| true),
            "receipts" => (3, |_| true),
            "returns" => (1, |l| l % 100 == 0),
            "summaries" | "summary_items" => (1, |l| l % 1000 == 0),
            _ => (1, |_| true),
        };
        let mut start = 0;
        let mut part = 0;
        while start < lists {
            let end = (start + chunk).min(lists);
            let rows: Vec<(u64, u64)> =
                (start..end).filter(|l| keep(*l)).flat_map(|l| (0..per).map(move |k| (l, k))).collect();
            if !rows.is_empty() {
                let f = std::fs::File::create(d.join(format!("part-{part:04}.parquet"))).expect("file");
                let mut w = ArrowWriter::try_new(f, s.clone(), None).expect("writer");
                for c in rows.chunks(65_536) {
                    w.write(&batch(&s, c)).expect("write");
                }
                w.close().expect("close");
                part += 1;
            }
            start = end;
        }
    }
    println!("wrote synthetic tables for {lists} declared lists in {:.1} s", t.elapsed().as_secs_f64());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let ctx = context(&dir, Arc::new(Nomenclature::structural())).await.expect("context");
        for (name, _, q) in EXAMPLES {
            let t = Instant::now();
            let b = query(&ctx, q).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            let rows: usize = b.iter().map(RecordBatch::num_rows).sum();
            println!("query {name}: {:.2} s, {rows} rows", t.elapsed().as_secs_f64());
        }
    });
    println!("peak RSS: {} MiB", peak_rss_mib());
    let _ = std::fs::remove_dir_all(&dir);
}
